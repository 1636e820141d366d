//! Extended attributes: in-inode and in-block entries, values stored in EA inodes, and POSIX ACLs
//! converted from ext4's on-disk form to the `system.posix_acl_*` xattr form.

use super::Fs;
use super::types::Ino;
use crate::errno::{Errno, Result};
use crate::ondisk::acl;
use crate::ondisk::inode::{Inode, flags};
use crate::ondisk::xattr::{self as xa, XattrEntry};

const INDEX_ACL_ACCESS: u8 = 2;
const INDEX_ACL_DEFAULT: u8 = 3;
const INDEX_SYSTEM: u8 = 7;

impl Fs {
    /// Every xattr entry of an inode: those in the inode body first, then the xattr block's.
    fn xattr_entries(&self, ino: Ino, inode: &Inode) -> Result<Vec<XattrEntry>> {
        let mut out = xa::parse_ibody(inode.ibody_xattr_region())
            .map_err(|e| crate::corrupt!("inode {ino}: in-inode xattrs: {e}"))?;
        if inode.file_acl != 0 {
            let blk = inode.file_acl;
            if blk < self.sb.first_data_block as u64 || blk >= self.sb.blocks_count {
                return Err(crate::corrupt!(
                    "inode {ino}: xattr block {blk} lies outside the file system"
                ));
            }
            let data = self.read_meta_block(blk)?;
            if self.sb.has_metadata_csum() && !xa::block_csum_verify(self.csum_seed, blk, &data) {
                return Err(crate::corrupt!(
                    "inode {ino}: xattr block {blk} checksum mismatch"
                ));
            }
            let (_hdr, entries) = xa::parse_block(&data)
                .map_err(|e| crate::corrupt!("inode {ino}: xattr block {blk}: {e}"))?;
            out.extend(entries);
        }
        Ok(out)
    }

    /// The value of one entry, fetching it from its EA inode when it lives there.
    fn xattr_value(&self, ino: Ino, e: &XattrEntry) -> Result<Vec<u8>> {
        if e.value_inum == 0 {
            return Ok(e.value.clone());
        }
        let vino = e.value_inum as Ino;
        let vinode = self.read_inode(vino)?;
        if !vinode.has_flag(flags::EA_INODE) || vinode.size != e.value_size as u64 {
            return Err(crate::corrupt!(
                "inode {ino}: xattr value inode {vino} is not a matching EA inode"
            ));
        }
        self.read_data(vino, &vinode, 0, e.value_size)
    }

    /// The `system.data` value of an inline-data inode (the part of the data past `i_block`).
    pub(super) fn inline_xattr(&self, ino: Ino, inode: &Inode) -> Result<Vec<u8>> {
        let entries = xa::parse_ibody(inode.ibody_xattr_region())
            .map_err(|e| crate::corrupt!("inode {ino}: in-inode xattrs: {e}"))?;
        match entries
            .into_iter()
            .find(|e| e.index == INDEX_SYSTEM && e.name == b"data")
        {
            Some(e) => Ok(e.value),
            None => Err(crate::corrupt!(
                "inode {ino}: inline data flag set but no system.data attribute"
            )),
        }
    }

    pub(super) fn get_xattr(&self, ino: Ino, inode: &Inode, name: &[u8]) -> Result<Vec<u8>> {
        let Some((index, suffix)) = xa::split_name(name) else {
            return Err(Errno::EOPNOTSUPP);
        };
        if index == INDEX_SYSTEM {
            // Internal attributes (system.data) are not visible, as in the kernel.
            return Err(Errno::EOPNOTSUPP);
        }
        for e in self.xattr_entries(ino, inode)? {
            if e.index == index && e.name == suffix {
                let v = self.xattr_value(ino, &e)?;
                if index == INDEX_ACL_ACCESS || index == INDEX_ACL_DEFAULT {
                    return acl::disk_to_xattr(&v)
                        .map_err(|m| crate::corrupt!("inode {ino}: ACL: {m}"));
                }
                return Ok(v);
            }
        }
        Err(Errno::ENODATA)
    }

    /// All visible names, NUL-terminated and concatenated.
    pub(super) fn list_xattr(&self, ino: Ino, inode: &Inode) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for e in self.xattr_entries(ino, inode)? {
            if e.index == INDEX_SYSTEM {
                continue;
            }
            if let Some(full) = xa::full_name(e.index, &e.name) {
                out.extend_from_slice(&full);
                out.push(0);
            }
        }
        Ok(out)
    }
}

impl Fs {
    /// Drop an inode's reference to its xattr block, freeing the block with the last one.
    pub(super) fn release_xattr_block(&self, ino: Ino, i: &mut Inode) -> Result<()> {
        let blk = i.file_acl;
        let mut data = self.block_for_write(blk)?;
        let refs = crate::ondisk::le::u32_at(&data, 4);
        if refs <= 1 {
            self.cache.revoke(blk);
            self.alloc.free_blocks(&self.vol, blk, 1)?;
        } else {
            crate::ondisk::le::put_u32(&mut data, 4, refs - 1);
            if self.sb.has_metadata_csum() {
                xa::block_csum_set(self.csum_seed, blk, &mut data);
            }
            self.put_block(blk, data);
        }
        let per = (self.block_size / 512) as u64;
        i.blocks_raw = i.blocks_raw.saturating_sub(per);
        i.file_acl = 0;
        let _ = ino;
        Ok(())
    }
}

/// An attribute to store: (name index, name suffix, value).
type NewEntry = (u8, Vec<u8>, Vec<u8>);

/// `setxattr` flags.
pub const XATTR_CREATE: u32 = 1;
pub const XATTR_REPLACE: u32 = 2;
/// Largest value Linux passes to setxattr.
const XATTR_SIZE_MAX: usize = 65536;

impl Fs {
    /// Set xattr `name` to `value` (flags: XATTR_CREATE / XATTR_REPLACE).
    pub fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], flags: u32) -> Result<()> {
        if value.len() > XATTR_SIZE_MAX {
            return Err(Errno::E2BIG);
        }
        self.change_xattr(ino, name, Some(value), flags, false)
    }

    /// `setxattr` of a `system.posix_acl_access` value that also clears the set-group-ID bit, in
    /// the same change: FUSE's `SETXATTR_ACL_KILL_SGID`, sent when the caller is not in the
    /// file's group (the kernel's `posix_acl_update_mode` rule).
    pub fn setxattr_kill_sgid(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        flags: u32,
    ) -> Result<()> {
        if value.len() > XATTR_SIZE_MAX {
            return Err(Errno::E2BIG);
        }
        self.change_xattr(ino, name, Some(value), flags, true)
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        self.change_xattr(ino, name, None, 0, false)
    }

    fn change_xattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: Option<&[u8]>,
        flags: u32,
        kill_sgid: bool,
    ) -> Result<()> {
        if self.is_read_only() {
            return Err(Errno::EROFS);
        }
        if name.is_empty() {
            return Err(Errno::EINVAL);
        }
        if name.len() > 255 {
            return Err(Errno::ERANGE);
        }
        let Some((index, suffix)) = xa::split_name(name) else {
            return Err(Errno::EOPNOTSUPP);
        };
        if index == INDEX_SYSTEM {
            return Err(Errno::EOPNOTSUPP);
        }
        // An access ACL also sets the permission bits, as the kernel's posix_acl_update_mode
        // does; one that says no more than the mode is not stored at all.
        let mut acl_mode: Option<u32> = None;
        let stored: Option<Vec<u8>> = match value {
            Some(v) if index == INDEX_ACL_ACCESS => {
                let entries = acl::parse_xattr(v).map_err(|_| Errno::EINVAL)?;
                acl::validate(&entries).map_err(|_| Errno::EINVAL)?;
                let perm = |tag: u16| {
                    entries
                        .iter()
                        .find(|e| e.0 == tag)
                        .map_or(0, |e| e.1 as u32 & 7)
                };
                let group = if entries.iter().any(|e| e.0 == acl::ACL_MASK) {
                    acl::ACL_MASK
                } else {
                    acl::ACL_GROUP_OBJ
                };
                acl_mode =
                    Some(perm(acl::ACL_USER_OBJ) << 6 | perm(group) << 3 | perm(acl::ACL_OTHER));
                if entries.len() == 3 {
                    None
                } else {
                    Some(acl::encode_disk(&entries))
                }
            }
            Some(v) if index == INDEX_ACL_DEFAULT => {
                Some(acl::xattr_to_disk(v).map_err(|_| Errno::EINVAL)?)
            }
            Some(v) => Some(v.to_vec()),
            None => None,
        };
        let _g = self.ns_write();
        let mut inode = self.read_inode(ino)?;
        if let Some(m) = acl_mode {
            let mut mode = (inode.mode as u32 & !0o777) | m;
            if kill_sgid {
                mode &= !libc::S_ISGID;
            }
            inode.mode = mode as u16;
        }
        if index == INDEX_ACL_DEFAULT && !inode.is_dir() && stored.is_some() {
            return Err(Errno::EACCES);
        }
        let mut list = self.xattr_list(ino, &inode)?;
        let pos = list.iter().position(|e| e.0 == index && e.1 == suffix);
        match (pos, stored) {
            (Some(_), Some(_)) if flags & XATTR_CREATE != 0 => return Err(Errno::EEXIST),
            (None, Some(_)) if flags & XATTR_REPLACE != 0 => return Err(Errno::ENODATA),
            (None, None) if acl_mode.is_some() => {}
            (None, None) => return Err(Errno::ENODATA),
            (Some(p), Some(v)) => list[p].2 = v,
            (None, Some(v)) => list.push((index, suffix.to_vec(), v)),
            (Some(p), None) => {
                list.remove(p);
            }
        }
        self.store_xattrs(ino, &mut inode, list)?;
        inode.ctime = crate::inode::blocks::now();
        self.store_inode(ino, &inode)
    }

    /// The inode's xattrs as a list to change and store again.
    fn xattr_list(&self, ino: Ino, inode: &Inode) -> Result<Vec<NewEntry>> {
        let current = self.xattr_entries(ino, inode)?;
        if current.iter().any(|e| e.value_inum != 0) {
            log::warn!("inode {ino}: changing xattrs stored in EA inodes is not supported");
            return Err(Errno::EOPNOTSUPP);
        }
        Ok(current
            .into_iter()
            .map(|e| (e.index, e.name, e.value))
            .collect())
    }

    /// Remove xattr (`index`, `suffix`) of an inode the caller holds under the namespace lock
    /// (written) and stores afterwards. False when it has no such xattr (nothing changed; an
    /// inode without xattrs costs no allocation).
    pub(super) fn remove_xattr_locked(
        &self,
        ino: Ino,
        inode: &mut Inode,
        index: u8,
        suffix: &[u8],
    ) -> Result<bool> {
        if !self
            .xattr_entries(ino, inode)?
            .iter()
            .any(|e| e.index == index && e.name == suffix)
        {
            return Ok(false);
        }
        let mut list = self.xattr_list(ino, inode)?;
        list.retain(|e| !(e.0 == index && e.1 == suffix));
        self.store_xattrs(ino, inode, list)?;
        Ok(true)
    }

    /// Place `list` in the inode body (first, `system.data` always) and the xattr block.
    pub(super) fn store_xattrs(
        &self,
        ino: Ino,
        inode: &mut Inode,
        list: Vec<NewEntry>,
    ) -> Result<()> {
        let start = 128 + inode.extra_isize as usize;
        let region_len = inode.raw.len().saturating_sub(start);
        let (mut body, mut rest): (Vec<NewEntry>, Vec<NewEntry>) =
            list.into_iter().partition(|e| e.0 == INDEX_SYSTEM);
        let mut spill = Vec::new();
        for e in rest.drain(..) {
            body.push(e);
            if xa::build_ibody(&body, region_len).is_err()
                && let Some(e) = body.pop()
            {
                spill.push(e);
            }
        }
        let region = xa::build_ibody(&body, region_len).map_err(|_| Errno::ENOSPC)?;
        if region_len > 0 {
            inode.raw[start..].copy_from_slice(&region);
        }
        let bs = self.block_size as usize;
        if spill.is_empty() {
            if inode.file_acl != 0 {
                self.release_xattr_block(ino, inode)?;
            }
            return Ok(());
        }
        let mut block = xa::build_block(&spill, bs, 1).map_err(|_| Errno::ENOSPC)?;
        let old = inode.file_acl;
        let reuse = old != 0 && crate::ondisk::le::u32_at(&self.read_meta_block(old)?, 4) == 1;
        let blk = if reuse {
            old
        } else {
            if old != 0 {
                self.release_xattr_block(ino, inode)?;
            }
            let goal = self
                .alloc
                .geo
                .group_first_block(((ino - 1) / self.sb.inodes_per_group as u64) as u32);
            let (b, _) = self.alloc.alloc_blocks(&self.vol, goal, 1)?;
            inode.blocks_raw += (self.block_size / 512) as u64;
            inode.file_acl = b;
            b
        };
        if self.sb.has_metadata_csum() {
            xa::block_csum_set(self.csum_seed, blk, &mut block);
        }
        self.put_block(blk, block);
        Ok(())
    }
}

impl Fs {
    /// Set (`Some`) or remove (`None`) the `system.data` attribute of an inline-data inode. Only
    /// the in-core inode changes (`inode.raw`, and the xattr block when other attributes move);
    /// the caller stores the inode.
    pub(super) fn set_system_data(
        &self,
        ino: Ino,
        inode: &mut Inode,
        value: Option<Vec<u8>>,
    ) -> Result<()> {
        let current = self.xattr_entries(ino, inode)?;
        if current.iter().any(|e| e.value_inum != 0) {
            log::warn!("inode {ino}: changing xattrs stored in EA inodes is not supported");
            return Err(Errno::EOPNOTSUPP);
        }
        let mut list: Vec<NewEntry> = current
            .into_iter()
            .filter(|e| !(e.index == INDEX_SYSTEM && e.name == b"data"))
            .map(|e| (e.index, e.name, e.value))
            .collect();
        if let Some(v) = value {
            list.insert(0, (INDEX_SYSTEM, b"data".to_vec(), v));
        }
        self.store_xattrs(ino, inode, list)
    }

    /// The largest `system.data` value the inode body can hold next to the other attributes
    /// already there (the kernel's `get_max_inline_xattr_value_size`); None when the body has
    /// no room for the attribute at all.
    pub(super) fn max_inline_xattr(&self, ino: Ino, inode: &Inode) -> Result<Option<usize>> {
        let start = 128 + inode.extra_isize as usize;
        let region_len = inode.raw.len().saturating_sub(start);
        let others = xa::parse_ibody(inode.ibody_xattr_region())
            .map_err(|e| crate::corrupt!("inode {ino}: in-inode xattrs: {e}"))?;
        let used: usize = others
            .iter()
            .filter(|e| !(e.index == INDEX_SYSTEM && e.name == b"data"))
            .map(|e| {
                xa::entry_len(e.name.len())
                    + if e.value_inum == 0 {
                        xa::value_len(e.value.len())
                    } else {
                        0
                    }
            })
            .sum();
        // Magic, the other entries and their values, the "data" entry, the terminator.
        let need = 4 + used + xa::entry_len(4) + 4;
        Ok(region_len.checked_sub(need).map(|free| free & !3))
    }
}

/// `posix_acl_create_masq`: restrict a new inode's access ACL (a copy of the directory's default
/// ACL) and its permission bits to each other. True when the ACL says more than the mode (named
/// entries or a mask), so it must be stored.
fn create_masq(entries: &mut [acl::AclEntry], mode: &mut u32) -> bool {
    let mut not_equiv = false;
    let (mut group_obj, mut mask_obj) = (None, None);
    for (k, e) in entries.iter_mut().enumerate() {
        match e.0 {
            acl::ACL_USER_OBJ => {
                e.1 &= ((*mode >> 6) & 7) as u16;
                *mode &= ((e.1 as u32) << 6) | !0o700;
            }
            acl::ACL_USER | acl::ACL_GROUP => not_equiv = true,
            acl::ACL_GROUP_OBJ => group_obj = Some(k),
            acl::ACL_OTHER => {
                e.1 &= (*mode & 7) as u16;
                *mode &= e.1 as u32 | !0o007;
            }
            acl::ACL_MASK => {
                mask_obj = Some(k);
                not_equiv = true;
            }
            _ => {}
        }
    }
    if let Some(k) = mask_obj.or(group_obj) {
        let e = &mut entries[k];
        e.1 &= ((*mode >> 3) & 7) as u16;
        *mode &= ((e.1 as u32) << 3) | !0o070;
    }
    not_equiv
}

impl Fs {
    /// What a new inode in directory `dir` starts with (ext4_init_acl / posix_acl_create): with a
    /// default ACL on `dir`, the mode restricted by it, and the ACLs to store (a directory also
    /// inherits the default ACL itself); without one, the mode less `umask`. Symlinks keep their
    /// mode and get no ACL.
    pub(super) fn inherit_acl(
        &self,
        dir: Ino,
        pdir: &Inode,
        mode: u32,
        umask: u32,
    ) -> Result<(u32, Vec<NewEntry>)> {
        let ft = mode & crate::ondisk::inode::S_IFMT;
        if ft == crate::ondisk::inode::S_IFLNK {
            return Ok((mode, Vec::new()));
        }
        let masked = mode & !(umask & 0o777);
        let default = match self.get_xattr(dir, pdir, b"system.posix_acl_default") {
            Ok(v) => v,
            Err(Errno::ENODATA) | Err(Errno::EOPNOTSUPP) => return Ok((masked, Vec::new())),
            Err(e) => return Err(e),
        };
        let entries = match acl::parse_xattr(&default) {
            Ok(e) if !e.is_empty() && acl::validate(&e).is_ok() => e,
            _ => return Ok((masked, Vec::new())),
        };
        let mut out = Vec::new();
        if ft == crate::ondisk::inode::S_IFDIR {
            out.push((INDEX_ACL_DEFAULT, Vec::new(), acl::encode_disk(&entries)));
        }
        let mut access = entries;
        let mut mode = mode;
        if create_masq(&mut access, &mut mode) {
            out.push((INDEX_ACL_ACCESS, Vec::new(), acl::encode_disk(&access)));
        }
        Ok((mode, out))
    }

    /// `posix_acl_chmod`: after a mode change, the access ACL's owner, group-class (the mask, or
    /// the owning group without one) and other entries follow the new permission bits. The
    /// caller holds the namespace lock and stores the inode.
    pub(super) fn acl_chmod(&self, ino: Ino, inode: &mut Inode) -> Result<()> {
        let current = self.xattr_entries(ino, inode)?;
        let Some(pos) = current
            .iter()
            .position(|e| e.index == INDEX_ACL_ACCESS && e.name.is_empty())
        else {
            return Ok(());
        };
        if current.iter().any(|e| e.value_inum != 0) {
            return Err(Errno::EOPNOTSUPP);
        }
        let mut entries = acl::parse_disk(&current[pos].value)
            .map_err(|m| crate::corrupt!("inode {ino}: ACL: {m}"))?;
        let mode = inode.mode as u32;
        let has_mask = entries.iter().any(|e| e.0 == acl::ACL_MASK);
        for e in entries.iter_mut() {
            match e.0 {
                acl::ACL_USER_OBJ => e.1 = ((mode >> 6) & 7) as u16,
                acl::ACL_MASK => e.1 = ((mode >> 3) & 7) as u16,
                acl::ACL_GROUP_OBJ if !has_mask => e.1 = ((mode >> 3) & 7) as u16,
                acl::ACL_OTHER => e.1 = (mode & 7) as u16,
                _ => {}
            }
        }
        let mut list: Vec<NewEntry> = current
            .into_iter()
            .map(|e| (e.index, e.name, e.value))
            .collect();
        list[pos].2 = acl::encode_disk(&entries);
        self.store_xattrs(ino, inode, list)
    }
}
