//! Directories: lookup (linear, htree, inline) and listings with stable cookies.
//!
//! Cookies: a linear directory's entry is keyed by its byte position (block × size + offset); an
//! htree directory's entries by their 63-bit hash (major << 32 | minor), listed in hash order, as
//! the kernel does, so a cookie stays valid while other entries come and go. "." and ".." are keys
//! 0 and 1 in every directory.

use super::Fs;
use super::types::{DirEntry, Ino};
use crate::errno::{Errno, Result};
use crate::ondisk::dirent::{self, DirentRef};
use crate::ondisk::htree;
use crate::ondisk::inode::{I_BLOCK_LEN, Inode, flags};
use crate::ondisk::superblock::{compat, incompat};
use std::sync::Arc;

/// A snapshot of a directory's entries, sorted by key, that one open handle walks.
pub(super) struct Listing {
    /// (key, entry); `entry.next_off` is the key of the following entry.
    entries: Vec<(u64, DirEntry)>,
}

/// What [`Fs::walk_dir`] calls for each entry: (cookie key, inode, file type, name).
type VisitEntry<'f> = dyn FnMut(u64, u32, u8, &[u8]) + 'f;

/// Where a directory entry was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Located {
    pub ino: Ino,
    /// The directory block holding the entry: (logical, physical).
    pub lblk: Option<(u64, u64)>,
}

/// Key after the last entry: resuming there yields nothing.
const END_KEY: u64 = i64::MAX as u64;
/// Keys below this are reserved for "." and "..".
const FIRST_KEY: u64 = 2;

impl Listing {
    fn new(mut entries: Vec<(u64, DirEntry)>) -> Listing {
        entries.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
        let n = entries.len();
        for i in 0..n {
            let next = if i + 1 < n { entries[i + 1].0 } else { END_KEY };
            entries[i].1.next_off = next;
        }
        Listing { entries }
    }

    /// Entries from cookie `offset` on.
    pub(super) fn from(&self, offset: u64) -> &[(u64, DirEntry)] {
        let start = self.entries.partition_point(|(k, _)| *k < offset);
        &self.entries[start..]
    }
}

fn entry(ino: u32, ft: u8, name: &[u8], filetype: bool) -> DirEntry {
    DirEntry {
        ino: ino as Ino,
        next_off: 0,
        kind: if filetype {
            dirent::ft_to_dt(ft)
        } else {
            libc::DT_UNKNOWN
        },
        name: name.to_vec(),
    }
}

impl Fs {
    pub(super) fn has_filetype(&self) -> bool {
        self.sb.has_incompat(incompat::FILETYPE)
    }

    pub(super) fn is_htree(&self, inode: &Inode) -> bool {
        inode.has_flag(flags::INDEX) && self.sb.has_compat(compat::DIR_INDEX)
    }

    /// The hash version and seed of an htree directory, or None when we cannot compute it.
    pub(super) fn dx_hash_params(
        &self,
        root: &[u8],
    ) -> Option<(htree::DxRootInfo, htree::DxEntries, u8)> {
        let (info, entries) = htree::parse_dx_root(root).ok()?;
        let version = self.sb.effective_hash_version(info.hash_version);
        if version > htree::DX_HASH_TEA_UNSIGNED {
            return None;
        }
        Some((info, entries, version))
    }

    /// Read directory block `lblk` (a metadata block), refusing holes.
    pub(super) fn dir_block(&self, ino: Ino, inode: &Inode, lblk: u64) -> Result<Arc<[u8]>> {
        self.dir_block_at(ino, inode, lblk).map(|(_, b)| b)
    }

    /// Read directory block `lblk`, refusing holes; returns its physical number too.
    pub(super) fn dir_block_at(
        &self,
        ino: Ino,
        inode: &Inode,
        lblk: u64,
    ) -> Result<(u64, Arc<[u8]>)> {
        let m = self.map_block(ino, inode, lblk)?;
        match m.status.pblk() {
            Some(pblk) => Ok((pblk, self.read_meta_block(pblk)?)),
            None => Err(crate::corrupt!(
                "inode {ino}: directory has a hole at block {lblk}"
            )),
        }
    }

    pub(super) fn dir_block_count(&self, ino: Ino, inode: &Inode) -> Result<u64> {
        let bs = self.block_size as u64;
        if !inode.size.is_multiple_of(bs) {
            return Err(crate::corrupt!(
                "inode {ino}: directory size {} is not a multiple of the block size",
                inode.size
            ));
        }
        Ok(inode.size / bs)
    }

    /// True when `block` is an htree interior node (a fake empty entry spanning the whole block).
    fn is_dx_node(&self, block: &[u8]) -> bool {
        dirent::is_dx_node_block(block)
    }

    /// The entry region of leaf block `lblk` (the checksum tail cut off), after checking the
    /// tail on metadata_csum file systems. The entries themselves are not checked here.
    pub(super) fn leaf_region<'b>(
        &self,
        ino: Ino,
        inode: &Inode,
        lblk: u64,
        block: &'b [u8],
    ) -> Result<&'b [u8]> {
        if !self.sb.has_metadata_csum() {
            return Ok(block);
        }
        match dirent::verify_leaf(self.inode_seed(ino, inode), block) {
            Ok(true) => Ok(&block[..block.len() - dirent::TAIL_LEN]),
            Ok(false) => Err(crate::corrupt!(
                "inode {ino}: directory block {lblk} checksum mismatch"
            )),
            Err(e) => Err(crate::corrupt!("inode {ino}: directory block {lblk}: {e}")),
        }
    }

    /// Check a leaf block (checksum tail, then every entry) and return its entry region.
    pub(super) fn dir_leaf<'b>(
        &self,
        ino: Ino,
        inode: &Inode,
        lblk: u64,
        block: &'b [u8],
    ) -> Result<&'b [u8]> {
        let region = self.leaf_region(ino, inode, lblk, block)?;
        dirent::check_block(region, self.has_filetype())
            .map_err(|e| crate::corrupt!("inode {ino}: directory block {lblk}: {e}"))?;
        Ok(region)
    }

    /// Check a leaf block (as [`Fs::dir_leaf`]) and find the live entry `name` in it, in place.
    pub(super) fn dir_leaf_find<'b>(
        &self,
        ino: Ino,
        inode: &Inode,
        lblk: u64,
        block: &'b [u8],
        name: &[u8],
    ) -> Result<Option<DirentRef<'b>>> {
        let region = self.leaf_region(ino, inode, lblk, block)?;
        dirent::find_entry(region, name, self.has_filetype())
            .map_err(|e| crate::corrupt!("inode {ino}: directory block {lblk}: {e}"))
    }

    /// The two regions of an inline directory: (parent, `i_block` after the parent word,
    /// `system.data`), both checked entry by entry.
    fn inline_dir_regions<'i>(
        &self,
        ino: Ino,
        inode: &'i Inode,
    ) -> Result<(u32, &'i [u8], Vec<u8>)> {
        let parent = inode.block_word(0);
        let first = &inode.block[4..I_BLOCK_LEN];
        dirent::check_block(first, self.has_filetype())
            .map_err(|e| crate::corrupt!("inode {ino}: inline directory: {e}"))?;
        let second = if inode.size as usize > I_BLOCK_LEN {
            let x = self.inline_xattr(ino, inode)?;
            dirent::check_block(&x, self.has_filetype())
                .map_err(|e| crate::corrupt!("inode {ino}: inline directory (xattr part): {e}"))?;
            x
        } else {
            Vec::new()
        };
        Ok((parent, first, second))
    }

    /// Build the listing of directory `ino`.
    pub(super) fn list_dir(&self, ino: Ino, inode: &Inode) -> Result<Listing> {
        let ft = self.has_filetype();
        let mut out: Vec<(u64, DirEntry)> = Vec::new();
        self.walk_dir(ino, inode, true, &mut |key, ino, t, name| {
            out.push((key, entry(ino, t, name, ft)));
        })?;
        Ok(Listing::new(out))
    }

    /// Visit every live entry of directory `ino` in place (name borrowed from the block), with
    /// "." and ".." first, checking every block as it goes; any corruption fails the whole walk.
    /// `f` gets (cookie key, inode, file type, name); the keys of an htree directory cost a hash
    /// per entry and are computed only when `keys` is set (else they are 0).
    fn walk_dir(&self, ino: Ino, inode: &Inode, keys: bool, f: &mut VisitEntry) -> Result<()> {
        if !inode.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let ft = self.has_filetype();
        if inode.has_flag(flags::INLINE_DATA) {
            let (parent, first, second) = self.inline_dir_regions(ino, inode)?;
            f(0, ino as u32, dirent::FT_DIR, b".");
            f(1, parent, dirent::FT_DIR, b"..");
            // Both regions were checked: the iterators yield no errors.
            for d in dirent::entries(first, ft)
                .flatten()
                .filter(|d| d.inode != 0)
            {
                f(
                    FIRST_KEY + 4 + d.offset as u64,
                    d.inode,
                    d.file_type,
                    d.name,
                );
            }
            for d in dirent::entries(&second, ft)
                .flatten()
                .filter(|d| d.inode != 0)
            {
                let key = FIRST_KEY + I_BLOCK_LEN as u64 + d.offset as u64;
                f(key, d.inode, d.file_type, d.name);
            }
            return Ok(());
        }
        let nblocks = self.dir_block_count(ino, inode)?;
        let bs = self.block_size as u64;
        let hashed = if self.is_htree(inode) && nblocks > 0 {
            let root = self.dir_block(ino, inode, 0)?;
            match self.dx_hash_params(&root) {
                Some((_, _, v)) => Some(v),
                None => {
                    return Err(crate::corrupt!(
                        "inode {ino}: htree root is invalid or uses an unsupported hash"
                    ));
                }
            }
        } else {
            None
        };
        for lblk in 0..nblocks {
            let block = self.dir_block(ino, inode, lblk)?;
            if hashed.is_some() && lblk == 0 {
                // The dx root: only "." and ".." are real entries.
                f(
                    0,
                    crate::ondisk::le::u32_at(&block, 0),
                    dirent::FT_DIR,
                    b".",
                );
                f(
                    1,
                    crate::ondisk::le::u32_at(&block, 12),
                    dirent::FT_DIR,
                    b"..",
                );
                continue;
            }
            if hashed.is_some() && self.is_dx_node(&block) {
                continue;
            }
            let region = self.dir_leaf(ino, inode, lblk, &block)?;
            // The block was checked: the iterator yields no errors.
            for d in dirent::entries(region, ft).flatten() {
                if d.inode == 0 {
                    continue;
                }
                let key = match hashed {
                    Some(_) if !keys => 0,
                    Some(v) => {
                        let (major, minor) = htree::dirhash(d.name, v, &self.sb.hash_seed)
                            .map_err(|e| crate::corrupt!("inode {ino}: {e}"))?;
                        ((major as u64) << 31 | minor as u64 >> 1).max(FIRST_KEY)
                    }
                    None if d.name == b"." => 0,
                    None if d.name == b".." => 1,
                    None => (lblk * bs + d.offset as u64).max(FIRST_KEY),
                };
                f(key, d.inode, d.file_type, d.name);
            }
        }
        Ok(())
    }

    /// True when a directory holds nothing but "." and "..". Checks the whole directory as a
    /// listing would, without building one.
    pub(super) fn dir_is_empty(&self, dir: Ino, dinode: &Inode) -> Result<bool> {
        let mut empty = true;
        self.walk_dir(dir, dinode, false, &mut |_, _, _, name| {
            empty &= name == b"." || name == b"..";
        })?;
        Ok(empty)
    }

    /// Find `name` in directory `ino`; returns the entry's inode number.
    pub(super) fn find_entry(&self, ino: Ino, inode: &Inode, name: &[u8]) -> Result<Ino> {
        self.locate_entry(ino, inode, name).map(|l| l.ino)
    }

    /// Find `name` in directory `ino`: the inode it names and the directory block holding it
    /// (None for inline directories and for "." / "..").
    pub(super) fn locate_entry(&self, ino: Ino, inode: &Inode, name: &[u8]) -> Result<Located> {
        if !inode.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        if name.is_empty() {
            return Err(Errno::ENOENT);
        }
        if inode.has_flag(flags::INLINE_DATA) {
            let (parent, first, second) = self.inline_dir_regions(ino, inode)?;
            if name == b"." {
                return Ok(Located { ino, lblk: None });
            }
            if name == b".." {
                return Ok(Located {
                    ino: parent as Ino,
                    lblk: None,
                });
            }
            let ft = self.has_filetype();
            return dirent::entries(first, ft)
                .chain(dirent::entries(&second, ft))
                .flatten()
                .find(|d| d.is_live(name))
                .map(|d| Located {
                    ino: d.inode as Ino,
                    lblk: None,
                })
                .ok_or(Errno::ENOENT);
        }
        let nblocks = self.dir_block_count(ino, inode)?;
        if self.is_htree(inode) && nblocks > 0 && name != b"." && name != b".." {
            let root = self.dir_block(ino, inode, 0)?;
            if let Some((info, entries, version)) = self.dx_hash_params(&root) {
                return self.dx_find(ino, inode, name, &root, &info, entries, version, nblocks);
            }
            return Err(crate::corrupt!(
                "inode {ino}: htree root is invalid or uses an unsupported hash"
            ));
        }
        for lblk in 0..nblocks {
            let (pblk, block) = self.dir_block_at(ino, inode, lblk)?;
            if self.is_htree(inode) && lblk == 0 {
                // "." / ".." in the dx root.
                let want = if name == b"." { 0 } else { 12 };
                return Ok(Located {
                    ino: crate::ondisk::le::u32_at(&block, want) as Ino,
                    lblk: None,
                });
            }
            if let Some(d) = self.dir_leaf_find(ino, inode, lblk, &block, name)? {
                return Ok(Located {
                    ino: d.inode as Ino,
                    lblk: Some((lblk, pblk)),
                });
            }
        }
        Err(Errno::ENOENT)
    }

    /// Read and check an htree index block (root or node) at `lblk`.
    pub(super) fn dx_check_csum(
        &self,
        ino: Ino,
        inode: &Inode,
        lblk: u64,
        block: &[u8],
        e: &htree::DxEntries,
    ) -> Result<()> {
        if self.sb.has_metadata_csum()
            && !htree::dx_csum_verify(
                self.inode_seed(ino, inode),
                block,
                e.countlimit_offset,
                e.count,
                e.limit,
            )
        {
            return Err(crate::corrupt!(
                "inode {ino}: htree index block {lblk} checksum mismatch"
            ));
        }
        Ok(())
    }

    /// Read, parse and verify an htree interior node.
    pub(super) fn dx_node(&self, ino: Ino, inode: &Inode, blk: u64) -> Result<htree::DxEntries> {
        let nb = self.dir_block(ino, inode, blk)?;
        let node = htree::parse_dx_node(&nb)
            .map_err(|e| crate::corrupt!("inode {ino}: htree node {blk}: {e}"))?;
        self.dx_check_csum(ino, inode, blk, &nb, &node)?;
        Ok(node)
    }

    /// Hashed lookup: descend the index to the leaf for `name`'s hash, then follow collision chains.
    #[allow(clippy::too_many_arguments)]
    fn dx_find(
        &self,
        ino: Ino,
        inode: &Inode,
        name: &[u8],
        root: &[u8],
        info: &htree::DxRootInfo,
        root_entries: htree::DxEntries,
        version: u8,
        nblocks: u64,
    ) -> Result<Located> {
        let max_levels = if self.sb.has_incompat(incompat::LARGEDIR) {
            3
        } else {
            2
        };
        if info.indirect_levels >= max_levels {
            return Err(crate::corrupt!(
                "inode {ino}: htree has {} levels",
                info.indirect_levels + 1
            ));
        }
        self.dx_check_csum(ino, inode, 0, root, &root_entries)?;
        let (hash, _minor) = htree::dirhash(name, version, &self.sb.hash_seed)
            .map_err(|e| crate::corrupt!("inode {ino}: {e}"))?;
        let check = |b: u32| -> Result<u64> {
            if b == 0 || (b as u64) >= nblocks {
                return Err(crate::corrupt!(
                    "inode {ino}: htree points to block {b} outside the directory"
                ));
            }
            Ok(b as u64)
        };
        let depth = info.indirect_levels as usize + 1;
        // (entries, chosen slot) per level, root first.
        let mut stack: Vec<(htree::DxEntries, usize)> = Vec::with_capacity(depth);
        let mut entries = root_entries;
        let mut leaf = loop {
            let slot = htree::dx_lookup_slot(&entries, hash);
            let blk = check(entries.entries[slot].1)?;
            stack.push((entries, slot));
            if stack.len() == depth {
                break blk;
            }
            entries = self.dx_node(ino, inode, blk)?;
        };
        loop {
            let (pblk, block) = self.dir_block_at(ino, inode, leaf)?;
            if let Some(d) = self.dir_leaf_find(ino, inode, leaf, &block, name)? {
                return Ok(Located {
                    ino: d.inode as Ino,
                    lblk: Some((leaf, pblk)),
                });
            }
            // Step to the next index slot, climbing as needed.
            loop {
                let Some((e, s)) = stack.last_mut() else {
                    return Err(Errno::ENOENT);
                };
                if *s + 1 < e.entries.len() {
                    *s += 1;
                    break;
                }
                stack.pop();
            }
            let Some((e, s)) = stack.last() else {
                return Err(Errno::ENOENT);
            };
            let (next_hash, next_blk) = e.entries[*s];
            // Only a block that starts at the same hash can hold more entries with it.
            if next_hash & !1 != hash {
                return Err(Errno::ENOENT);
            }
            let mut blk = check(next_blk)?;
            while stack.len() < depth {
                let node = self.dx_node(ino, inode, blk)?;
                blk = check(node.entries[0].1)?;
                stack.push((node, 0));
            }
            leaf = blk;
        }
    }
}
