//! Namespace and attribute changes: mknod/create, mkdir, symlink, link, unlink, rmdir, rename
//! (NOREPLACE, EXCHANGE), setattr (incl. truncate), and freeing inodes whose last link and last
//! reference are gone (open-unlinked inodes wait on the orphan list).
//!
//! Lock order: `ns` write lock → allocator/buffer-cache internal locks. Every operation runs
//! entirely under the namespace write lock, so a concurrent reader never sees half of it.

use super::Fs;
use super::types::*;
use crate::errno::{Errno, Result};
use crate::extent::ExtentTree;
use crate::inode::blocks::now;
use crate::ondisk::dirent;
use crate::ondisk::inode::{self, I_BLOCK_LEN, Inode, flags};
use crate::ondisk::superblock::{incompat, ro_compat};

const EXT4_LINK_MAX: u16 = 65000;

fn ft_of(mode: u32) -> u8 {
    match mode & inode::S_IFMT {
        inode::S_IFREG => dirent::FT_REG_FILE,
        inode::S_IFDIR => dirent::FT_DIR,
        inode::S_IFCHR => dirent::FT_CHRDEV,
        inode::S_IFBLK => dirent::FT_BLKDEV,
        inode::S_IFIFO => dirent::FT_FIFO,
        inode::S_IFSOCK => dirent::FT_SOCK,
        inode::S_IFLNK => dirent::FT_SYMLINK,
        _ => dirent::FT_UNKNOWN,
    }
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(Errno::EINVAL);
    }
    if name.len() > 255 {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

impl Fs {
    fn writable(&self) -> Result<()> {
        if self.is_read_only() {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    /// A directory inode to change, refusing non-directories and removed directories.
    fn dir_for_change(&self, dir: Ino) -> Result<Inode> {
        let d = self.read_inode(dir)?;
        if !d.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if d.links_count == 0 {
            return Err(Errno::ENOENT);
        }
        Ok(d)
    }

    /// The directory `name` is about to be created in: it must exist and not hold `name` yet.
    fn dir_for_new_entry(&self, dir: Ino, name: &[u8]) -> Result<Inode> {
        let d = self.dir_for_change(dir)?;
        match self.find_entry(dir, &d, name) {
            Ok(_) => Err(Errno::EEXIST),
            Err(Errno::ENOENT) => Ok(d),
            Err(e) => Err(e),
        }
    }

    /// Allocate and initialize a new inode (not yet linked anywhere).
    fn new_inode(&self, parent: Ino, pdir: &Inode, mode: u32, ctx: &Ctx) -> Result<(Ino, Inode)> {
        let is_dir = mode & inode::S_IFMT == inode::S_IFDIR;
        let (mode, acls) = self.inherit_acl(parent, pdir, mode, ctx.umask)?;
        let ino = self.alloc.alloc_inode(&self.vol, parent, is_dir)?;
        // The number may be reused: nothing cached about a former owner may survive.
        self.es.forget_inode(ino);
        let t = now();
        let mut mode = mode;
        let mut gid = ctx.gid;
        if pdir.mode as u32 & libc::S_ISGID != 0 {
            // BSD group semantics on setgid directories; subdirectories inherit the bit.
            gid = pdir.gid;
            if is_dir {
                mode |= libc::S_ISGID;
            }
        }
        let extra = if self.sb.inode_size > 128 {
            32.min(self.sb.inode_size - 128)
        } else {
            0
        };
        let mut raw = vec![0u8; self.sb.inode_size as usize];
        if raw.len() > 128 {
            raw[0x80..0x82].copy_from_slice(&extra.to_le_bytes());
        }
        let mut i = Inode::parse(&raw).map_err(|e| crate::corrupt!("new inode {ino}: {e}"))?;
        i.mode = mode as u16;
        i.uid = ctx.uid;
        i.gid = gid;
        i.atime = t;
        i.mtime = t;
        i.ctime = t;
        i.crtime = t;
        i.links_count = 1;
        i.generation = self.next_generation();
        let ft = mode & inode::S_IFMT;
        if self.sb.has_incompat(incompat::EXTENTS)
            && (ft == inode::S_IFREG || ft == inode::S_IFDIR || ft == inode::S_IFLNK)
        {
            i.flags |= flags::EXTENTS;
            ExtentTree::init_empty(&mut i.block);
        }
        if !acls.is_empty()
            && let Err(e) = self.store_xattrs(ino, &mut i, acls)
        {
            return Err(self.undo_new_inode(ino, &mut i, e));
        }
        Ok((ino, i))
    }

    /// Write a new inode and name it in `parent`; on failure the inode (and any block it got) is
    /// released again, so an error leaves nothing allocated behind.
    fn link_new_inode(
        &self,
        parent: Ino,
        pdir: &mut Inode,
        name: &[u8],
        ino: Ino,
        i: &mut Inode,
        ft: u8,
    ) -> Result<()> {
        let r = self
            .store_inode(ino, i)
            .and_then(|_| self.add_entry(parent, pdir, name, ino, ft));
        if let Err(e) = r {
            // add_entry may have grown the directory before failing: keep its inode in step.
            if let Err(e2) = self.store_inode(parent, pdir) {
                log::error!(
                    "inode {parent}: storing the directory after a failed insert failed: {e2}"
                );
            }
            return Err(self.undo_new_inode(ino, i, e));
        }
        Ok(())
    }

    /// Release an inode created by a failing operation; returns the operation's error.
    fn undo_new_inode(&self, ino: Ino, i: &mut Inode, err: Errno) -> Errno {
        if let Err(e) = self.free_inode(ino, i) {
            log::error!("inode {ino}: releasing it after a failed create ({err}) failed: {e}");
        }
        err
    }

    fn next_generation(&self) -> u32 {
        use std::sync::atomic::Ordering;
        let n = self.next_fh.fetch_add(1, Ordering::Relaxed) as u32;
        let t = now();
        (t.1 ^ (t.0 as u32).rotate_left(13)).wrapping_add(n.wrapping_mul(0x9E37_79B9))
    }

    fn touch_dir(&self, d: &mut Inode) {
        let t = now();
        d.mtime = t;
        d.ctime = t;
    }

    fn inc_dir_links(&self, d: &mut Inode) {
        if d.links_count >= EXT4_LINK_MAX || d.links_count == 1 {
            // dir_nlink: past the limit a directory counts 1 ("many").
            d.links_count = 1;
        } else {
            d.links_count += 1;
        }
    }

    fn dec_dir_links(&self, d: &mut Inode) {
        if d.links_count > 2 {
            d.links_count -= 1;
        }
    }

    /// mknod/create: a new non-directory inode named `name` in `parent`.
    pub fn mknod(&self, parent: Ino, name: &[u8], mode: u32, rdev: u32, ctx: &Ctx) -> Result<Attr> {
        self.writable()?;
        check_name(name)?;
        let ft = mode & inode::S_IFMT;
        let mode = if ft == 0 { mode | inode::S_IFREG } else { mode };
        let ft = mode & inode::S_IFMT;
        if ft == inode::S_IFDIR || ft == inode::S_IFLNK {
            return Err(Errno::EINVAL);
        }
        let _g = self.ns_write();
        let mut pdir = self.dir_for_new_entry(parent, name)?;
        let (ino, mut i) = self.new_inode(parent, &pdir, mode, ctx)?;
        if ft == inode::S_IFCHR || ft == inode::S_IFBLK {
            let (major, minor) = (
                (rdev >> 8) & 0xFFF,
                (rdev & 0xFF) | ((rdev >> 12) & 0xFFF00),
            );
            i.block = [0; I_BLOCK_LEN];
            if major < 256 && minor < 256 {
                i.block[0..4].copy_from_slice(&((major << 8) | minor).to_le_bytes());
            } else {
                let new = (minor & 0xFF) | (major << 8) | ((minor & !0xFF) << 12);
                i.block[4..8].copy_from_slice(&new.to_le_bytes());
            }
        }
        self.link_new_inode(parent, &mut pdir, name, ino, &mut i, ft_of(mode))?;
        self.touch_dir(&mut pdir);
        self.store_inode(parent, &pdir)?;
        self.commit_if_large()?;
        self.count_lookup(ino);
        self.mark_may_inline(ino, &i);
        Ok(self.attr_of(ino, &i))
    }

    /// O_TMPFILE: a regular file with no name, on the orphan list until `link` names it or the
    /// client lets go of it.
    pub fn tmpfile(&self, parent: Ino, mode: u32, ctx: &Ctx) -> Result<Attr> {
        self.writable()?;
        let _g = self.ns_write();
        let pdir = self.dir_for_change(parent)?;
        let (ino, mut i) = self.new_inode(parent, &pdir, (mode & 0o7777) | inode::S_IFREG, ctx)?;
        i.links_count = 0;
        self.count_lookup(ino);
        self.mark_may_inline(ino, &i);
        self.inodes.set_linkable(ino, true);
        self.inodes.set_orphan(ino, true);
        if let Err(e) = self.orphan_add(ino, &mut i) {
            return Err(self.undo_new_inode(ino, &mut i, e));
        }
        Ok(self.attr_of(ino, &i))
    }

    pub fn mkdir(&self, parent: Ino, name: &[u8], mode: u32, ctx: &Ctx) -> Result<Attr> {
        self.writable()?;
        check_name(name)?;
        let _g = self.ns_write();
        let mut pdir = self.dir_for_new_entry(parent, name)?;
        if pdir.links_count >= EXT4_LINK_MAX && !self.sb.has_ro_compat(ro_compat::DIR_NLINK) {
            return Err(Errno::EMLINK);
        }
        let (ino, mut i) = self.new_inode(parent, &pdir, (mode & 0o7777) | inode::S_IFDIR, ctx)?;
        i.links_count = 2;
        if let Err(e) = self.init_dir_block(ino, &mut i, parent) {
            return Err(self.undo_new_inode(ino, &mut i, e));
        }
        self.link_new_inode(parent, &mut pdir, name, ino, &mut i, dirent::FT_DIR)?;
        self.inc_dir_links(&mut pdir);
        self.touch_dir(&mut pdir);
        self.store_inode(parent, &pdir)?;
        self.commit_if_large()?;
        self.count_lookup(ino);
        Ok(self.attr_of(ino, &i))
    }

    pub fn symlink(&self, parent: Ino, name: &[u8], target: &[u8], ctx: &Ctx) -> Result<Attr> {
        self.writable()?;
        check_name(name)?;
        if target.is_empty() || target.contains(&0) {
            return Err(Errno::EINVAL);
        }
        if target.len() >= self.block_size as usize || target.len() > 4095 {
            return Err(Errno::ENAMETOOLONG);
        }
        let _g = self.ns_write();
        let mut pdir = self.dir_for_new_entry(parent, name)?;
        let (ino, mut i) = self.new_inode(parent, &pdir, inode::S_IFLNK | 0o777, ctx)?;
        i.size = target.len() as u64;
        if target.len() < I_BLOCK_LEN {
            // Fast symlink: the target lives in i_block, no extents.
            i.flags &= !flags::EXTENTS;
            i.block = [0; I_BLOCK_LEN];
            i.block[..target.len()].copy_from_slice(target);
        } else {
            let goal = self
                .alloc
                .geo
                .group_first_block(((ino - 1) / self.sb.inodes_per_group as u64) as u32);
            let pblk = match self.map_new_block(ino, &mut i, 0, goal) {
                Ok(p) => p,
                Err(e) => return Err(self.undo_new_inode(ino, &mut i, e)),
            };
            let mut b = self.new_block_buf();
            b[..target.len()].copy_from_slice(target);
            self.put_block(pblk, b);
        }
        self.link_new_inode(parent, &mut pdir, name, ino, &mut i, dirent::FT_SYMLINK)?;
        self.touch_dir(&mut pdir);
        self.store_inode(parent, &pdir)?;
        self.commit_if_large()?;
        self.count_lookup(ino);
        Ok(self.attr_of(ino, &i))
    }

    pub fn link(&self, ino: Ino, newparent: Ino, newname: &[u8]) -> Result<Attr> {
        self.writable()?;
        check_name(newname)?;
        let _g = self.ns_write();
        let mut i = self.read_inode(ino)?;
        if i.is_dir() {
            return Err(Errno::EPERM);
        }
        let was_tmpfile = i.links_count == 0 && self.inodes.is_linkable(ino);
        if i.links_count == 0 && !was_tmpfile {
            return Err(Errno::ENOENT);
        }
        if i.links_count >= EXT4_LINK_MAX {
            return Err(Errno::EMLINK);
        }
        let mut pdir = self.dir_for_new_entry(newparent, newname)?;
        self.add_entry(newparent, &mut pdir, newname, ino, ft_of(i.mode as u32))?;
        if was_tmpfile {
            // An O_TMPFILE file gets its first name: it leaves the orphan list.
            self.inodes.set_linkable(ino, false);
            self.inodes.set_orphan(ino, false);
            self.orphan_del(ino, &i)?;
            i.dtime = 0;
        }
        self.touch_dir(&mut pdir);
        self.store_inode(newparent, &pdir)?;
        i.links_count += 1;
        i.ctime = now();
        self.store_inode(ino, &i)?;
        self.commit_if_large()?;
        self.count_lookup(ino);
        Ok(self.attr_of(ino, &i))
    }

    pub fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        let r = self.unlink_locked(parent, name);
        self.reap_deferred();
        r
    }

    fn unlink_locked(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.writable()?;
        check_name(name)?;
        let _g = self.ns_write();
        let mut pdir = self.dir_for_change(parent)?;
        let target = self.find_entry(parent, &pdir, name)?;
        let mut i = self.read_inode(target)?;
        if i.is_dir() {
            return Err(Errno::EISDIR);
        }
        self.remove_entry(parent, &mut pdir, name)?;
        self.touch_dir(&mut pdir);
        self.store_inode(parent, &pdir)?;
        i.links_count = i.links_count.saturating_sub(1);
        i.ctime = now();
        self.store_inode(target, &i)?;
        if i.links_count == 0 {
            self.drop_or_orphan(target, &mut i)?;
        }
        Ok(())
    }

    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        let r = self.rmdir_locked(parent, name);
        self.reap_deferred();
        r
    }

    fn rmdir_locked(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.writable()?;
        if name == b"." {
            return Err(Errno::EINVAL);
        }
        if name == b".." {
            return Err(Errno::ENOTEMPTY);
        }
        check_name(name)?;
        let _g = self.ns_write();
        let mut pdir = self.dir_for_change(parent)?;
        let target = self.find_entry(parent, &pdir, name)?;
        let mut d = self.read_inode(target)?;
        if !d.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if target == ROOT_INO {
            return Err(Errno::EBUSY);
        }
        if !self.dir_is_empty(target, &d)? {
            return Err(Errno::ENOTEMPTY);
        }
        self.remove_entry(parent, &mut pdir, name)?;
        self.dec_dir_links(&mut pdir);
        self.touch_dir(&mut pdir);
        self.store_inode(parent, &pdir)?;
        d.links_count = 0;
        d.ctime = now();
        self.store_inode(target, &d)?;
        self.drop_or_orphan(target, &mut d)
    }

    /// rename / renameat2 with NOREPLACE and EXCHANGE.
    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        newparent: Ino,
        newname: &[u8],
        flags_: u32,
    ) -> Result<()> {
        self.rename_as(parent, name, newparent, newname, flags_, &Ctx::default())
    }

    /// rename2 on behalf of `ctx`, who owns the whiteout `RENAME_WHITEOUT` leaves at the old
    /// name (a character device 0:0, made in the same change, as ext4 does).
    pub fn rename_as(
        &self,
        parent: Ino,
        name: &[u8],
        newparent: Ino,
        newname: &[u8],
        flags_: u32,
        ctx: &Ctx,
    ) -> Result<()> {
        let r = self.rename_locked(parent, name, newparent, newname, flags_, ctx);
        self.reap_deferred();
        r
    }

    fn rename_locked(
        &self,
        parent: Ino,
        name: &[u8],
        newparent: Ino,
        newname: &[u8],
        flags_: u32,
        ctx: &Ctx,
    ) -> Result<()> {
        self.writable()?;
        check_name(name)?;
        check_name(newname)?;
        if flags_ & !(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT) != 0 {
            return Err(Errno::EINVAL);
        }
        if flags_ & RENAME_EXCHANGE != 0 && flags_ & (RENAME_NOREPLACE | RENAME_WHITEOUT) != 0 {
            return Err(Errno::EINVAL);
        }
        let whiteout = flags_ & RENAME_WHITEOUT != 0;
        let _g = self.ns_write();
        let mut src_dir = self.dir_for_change(parent)?;
        let src = self.find_entry(parent, &src_dir, name)?;
        let mut src_i = self.read_inode(src)?;
        let same_dir = parent == newparent;
        let mut dst_dir = if same_dir {
            src_dir.clone()
        } else {
            self.dir_for_change(newparent)?
        };
        let existing = match self.find_entry(newparent, &dst_dir, newname) {
            Ok(x) => Some(x),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(e),
        };
        if flags_ & RENAME_NOREPLACE != 0 && existing.is_some() {
            return Err(Errno::EEXIST);
        }
        if flags_ & RENAME_EXCHANGE != 0 && existing.is_none() {
            return Err(Errno::ENOENT);
        }
        if existing == Some(src) {
            // Same inode under both names: nothing to do (POSIX).
            return Ok(());
        }
        // A directory may not move below itself.
        if src_i.is_dir() && !same_dir && self.is_ancestor(src, newparent)? {
            return Err(Errno::EINVAL);
        }
        if flags_ & RENAME_EXCHANGE != 0 {
            let dst = existing.ok_or(Errno::ENOENT)?;
            let mut dst_i = self.read_inode(dst)?;
            if dst_i.is_dir() && !same_dir && self.is_ancestor(dst, parent)? {
                return Err(Errno::EINVAL);
            }
            self.retarget_entry(parent, &mut src_dir, name, dst, ft_of(dst_i.mode as u32))?;
            // Both names in one directory: change the same (possibly inline) copy twice.
            let dst_dir_now = if same_dir { &mut src_dir } else { &mut dst_dir };
            self.retarget_entry(
                newparent,
                dst_dir_now,
                newname,
                src,
                ft_of(src_i.mode as u32),
            )?;
            if !same_dir {
                if src_i.is_dir() {
                    self.set_dotdot(src, &mut src_i, newparent)?;
                }
                if dst_i.is_dir() {
                    self.set_dotdot(dst, &mut dst_i, parent)?;
                }
                if src_i.is_dir() != dst_i.is_dir() {
                    if src_i.is_dir() {
                        self.inc_dir_links(&mut dst_dir);
                        self.dec_dir_links(&mut src_dir);
                    } else {
                        self.inc_dir_links(&mut src_dir);
                        self.dec_dir_links(&mut dst_dir);
                    }
                }
            }
            let t = now();
            src_i.ctime = t;
            dst_i.ctime = t;
            self.store_inode(src, &src_i)?;
            self.store_inode(dst, &dst_i)?;
            self.touch_dir(&mut src_dir);
            self.store_inode(parent, &src_dir)?;
            if !same_dir {
                self.touch_dir(&mut dst_dir);
                self.store_inode(newparent, &dst_dir)?;
            }
            return Ok(());
        }
        // Plain rename, maybe over an existing name.
        let mut victim = None;
        if let Some(dst) = existing {
            let dst_i = self.read_inode(dst)?;
            match (src_i.is_dir(), dst_i.is_dir()) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !self.dir_is_empty(dst, &dst_i)? => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
            self.retarget_entry(
                newparent,
                &mut dst_dir,
                newname,
                src,
                ft_of(src_i.mode as u32),
            )?;
            victim = Some((dst, dst_i));
        } else {
            self.add_entry(
                newparent,
                &mut dst_dir,
                newname,
                src,
                ft_of(src_i.mode as u32),
            )?;
        }
        // Remove the old name (from the newest copy of the source directory), or point it at a
        // new whiteout.
        {
            let cur = if same_dir { &mut dst_dir } else { &mut src_dir };
            if whiteout {
                let (wino, mut wi) = self.new_inode(parent, cur, inode::S_IFCHR, ctx)?;
                wi.block = [0; I_BLOCK_LEN];
                if let Err(e) = self.store_inode(wino, &wi) {
                    return Err(self.undo_new_inode(wino, &mut wi, e));
                }
                if let Err(e) = self.retarget_entry(parent, cur, name, wino, dirent::FT_CHRDEV) {
                    return Err(self.undo_new_inode(wino, &mut wi, e));
                }
            } else {
                self.remove_entry(parent, cur, name)?;
            }
        }
        if same_dir {
            src_dir = dst_dir.clone();
        }
        if src_i.is_dir() && !same_dir {
            self.set_dotdot(src, &mut src_i, newparent)?;
            self.dec_dir_links(&mut src_dir);
            if victim.is_none() {
                self.inc_dir_links(&mut dst_dir);
            }
        }
        src_i.ctime = now();
        self.store_inode(src, &src_i)?;
        if let Some((dst, mut dst_i)) = victim {
            if dst_i.is_dir() {
                dst_i.links_count = 0;
                if same_dir {
                    self.dec_dir_links(&mut src_dir);
                } else {
                    self.dec_dir_links(&mut dst_dir);
                }
            } else {
                dst_i.links_count = dst_i.links_count.saturating_sub(1);
            }
            dst_i.ctime = now();
            self.store_inode(dst, &dst_i)?;
            if dst_i.links_count == 0 {
                self.drop_or_orphan(dst, &mut dst_i)?;
            }
        }
        self.touch_dir(&mut src_dir);
        self.store_inode(parent, &src_dir)?;
        if !same_dir {
            self.touch_dir(&mut dst_dir);
            self.store_inode(newparent, &dst_dir)?;
        }
        Ok(())
    }

    /// True when `anc` is `ino` or one of its ancestors (walking "..").
    fn is_ancestor(&self, anc: Ino, mut ino: Ino) -> Result<bool> {
        for _ in 0..4096 {
            if ino == anc {
                return Ok(true);
            }
            if ino == ROOT_INO {
                return Ok(false);
            }
            let d = self.read_inode(ino)?;
            ino = self.dotdot(ino, &d)?;
        }
        Err(crate::corrupt!(
            "directory {ino}: '..' chain does not reach the root"
        ))
    }

    pub fn setattr(&self, ino: Ino, s: &SetAttr) -> Result<Attr> {
        self.writable()?;
        // A size change of a regular file: the page cache first, under the file's rw lock
        // (taken before the namespace lock).
        let data = s.size.and_then(|_| self.inode_data(ino).ok());
        let _dw = data.as_ref().map(|d| d.write_lock());
        // A shrink unmaps the window ranges over the pages it drops until its blocks are freed
        // (mapped again when this returns, the rw lock still held).
        let _cut = match (&data, s.size) {
            (Some(d), Some(size)) => Some(self.dax_cut(ino, d, size, u64::MAX)),
            _ => None,
        };
        let mut old_size = None;
        let mut old_sizes = None;
        if let (Some(d), Some(size)) = (&data, s.size) {
            let inode = {
                let _g = self.ns_read();
                self.read_inode(ino)?
            };
            if size > self.max_file_bytes(&inode) {
                return Err(Errno::EFBIG);
            }
            old_size = Some(inode.size);
            old_sizes = Some(*d.sizes());
            if inode.has_flag(flags::INLINE_DATA) {
                // No page cache over inline data: only the sizes move.
                *d.sizes() = crate::fs::data::Sizes {
                    size,
                    disksize: size,
                };
            } else {
                self.truncate_data(ino, d, size)?;
            }
        }
        // A shrink whose blocks outgrow one transaction: the inode goes on the orphan list with
        // its new size, the blocks go in steps, and setattr_locked frees the rest and takes the
        // inode off the list (a crash in between is finished by the next mount).
        let mut orphaned = false;
        if let (Some(_), Some(size), Some(old)) = (&data, s.size, old_size)
            && size < old
        {
            let keep = size.div_ceil(self.block_size as u64);
            let big = {
                let _g = self.ns_read();
                let i = self.read_inode(ino)?;
                !i.has_flag(flags::INLINE_DATA) && self.needs_steps(ino, &i, keep)?
            };
            if big {
                {
                    let _g = self.ns_write();
                    let mut i = self.read_inode(ino)?;
                    self.orphan_add(ino, &mut i)?;
                }
                orphaned = true;
                self.free_blocks_in_steps(ino, keep)?;
            }
        }
        let r = self.setattr_locked(ino, s, old_size, orphaned);
        if r.is_err()
            && let (Some(d), Some(old)) = (&data, old_sizes)
        {
            // The metadata step failed: the file keeps its old size.
            *d.sizes() = old;
        }
        r
    }

    fn setattr_locked(
        &self,
        ino: Ino,
        s: &SetAttr,
        old_size: Option<u64>,
        orphaned: bool,
    ) -> Result<Attr> {
        let _g = self.ns_write();
        let mut i = self.read_inode(ino)?;
        if orphaned {
            self.orphan_del(ino, &i)?;
            i.dtime = 0;
        }
        if let Some(old) = old_size {
            // The in-core size already moved; the block map still covers the old one.
            i.size = old;
        }
        let t = now();
        if let Some(size) = s.size {
            if i.is_dir() {
                return Err(Errno::EISDIR);
            }
            if !i.is_reg() {
                return Err(Errno::EINVAL);
            }
            if size > (1u64 << 32) * self.block_size as u64 {
                return Err(Errno::EFBIG);
            }
            // Indirect-mapped files end where the triple indirect tree (or i_blocks) does.
            if !i.has_flag(flags::EXTENTS)
                && !i.has_flag(flags::INLINE_DATA)
                && size > self.ind_max_bytes()
            {
                return Err(Errno::EFBIG);
            }
            if i.has_flag(flags::INLINE_DATA) && size != i.size {
                // Shrink the inline data in place, or move it out of the inode to grow.
                self.inline_set_size(ino, &mut i, size)?;
            }
            if size < i.size {
                let bs = self.block_size as u64;
                self.truncate_blocks(ino, &mut i, size.div_ceil(bs))?;
                // The tail of the last kept block past the new size must read as zeros later.
                self.zero_tail(ino, &i, size)?;
            }
            i.size = size;
            i.mtime = t;
            i.ctime = t;
        }
        if let Some(mode) = s.mode {
            i.mode = ((i.mode as u32 & inode::S_IFMT) | (mode & 0o7777)) as u16;
            i.ctime = t;
            self.acl_chmod(ino, &mut i)?;
        }
        if let Some(uid) = s.uid {
            i.uid = uid;
            i.ctime = t;
        }
        if let Some(gid) = s.gid {
            i.gid = gid;
            i.ctime = t;
        }
        let pick = |x: TimeSet| match x {
            TimeSet::Now => t,
            TimeSet::At(ts) => (ts.sec, ts.nsec),
        };
        if let Some(a) = s.atime {
            i.atime = pick(a);
            i.ctime = t;
        }
        if let Some(m) = s.mtime {
            i.mtime = pick(m);
            i.ctime = t;
        }
        if let Some(c) = s.ctime {
            i.ctime = (c.sec, c.nsec);
        }
        self.store_inode(ino, &i)?;
        Ok(self.attr_of(ino, &i))
    }

    /// Zero the bytes of the block holding `size` that lie past it (truncate to a partial block).
    fn zero_tail(&self, ino: Ino, i: &Inode, size: u64) -> Result<()> {
        let bs = self.block_size as u64;
        let off = size % bs;
        if off == 0 {
            return Ok(());
        }
        if let Some(pblk) = self.map_block(ino, i, size / bs)?.status.written_pblk() {
            let zeros = vec![0u8; (bs - off) as usize];
            self.dev.write_at(&zeros, pblk * bs + off).map_err(|e| {
                log::error!("inode {ino}: zeroing the tail of block {pblk} failed: {e}");
                Errno::EIO
            })?;
        }
        Ok(())
    }

    /// An inode lost its last link: free it now, or, while the client still references it,
    /// put it on the orphan list to free at the last forget.
    fn drop_or_orphan(&self, ino: Ino, i: &mut Inode) -> Result<()> {
        let referenced = self.lookup_count(ino) > 0;
        // A file with cached data is freed after the namespace lock is released, under its own
        // rw lock (writeback may be using it): orphaned now, reaped by `reap_deferred`.
        // So is a file whose blocks take more than one transaction to free.
        let has_data = self.data_if_cached(ino).is_some() || self.needs_steps(ino, i, 0)?;
        if has_data && !referenced {
            self.defer_reap(ino);
        }
        if referenced || has_data {
            self.inodes.set_orphan(ino, true);
            return self.orphan_add(ino, i);
        }
        self.free_inode(ino, i)
    }

    /// Release every block and the inode number of an unlinked inode. Its extent status tree
    /// goes too, whatever the outcome: the number will be reused.
    pub(super) fn free_inode(&self, ino: Ino, i: &mut Inode) -> Result<()> {
        let r = self.free_inode_inner(ino, i);
        self.es.forget_inode(ino);
        r
    }

    fn free_inode_inner(&self, ino: Ino, i: &mut Inode) -> Result<()> {
        self.drop_inode_data(ino);
        self.truncate_blocks(ino, i, 0)?;
        if i.file_acl != 0 {
            self.release_xattr_block(ino, i)?;
        }
        let is_dir = i.is_dir();
        let t = now();
        i.dtime = t.0 as u32;
        i.size = 0;
        i.links_count = 0;
        self.store_inode(ino, i)?;
        self.alloc.free_inode(&self.vol, ino, is_dir)
    }
}
