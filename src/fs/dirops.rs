//! Directory changes: adding and removing entries in linear and htree directories, converting a
//! full one-block directory to an htree, splitting htree leaves and index nodes, and new
//! directories' first block.
//!
//! Lock order: the namespace write lock is held by the caller for the whole operation.

use super::Fs;
use super::types::Ino;
use crate::errno::{Errno, Result};
use crate::ondisk::dirent::{self, TAIL_LEN};
use crate::ondisk::htree::{self, DxEntries};
use crate::ondisk::inode::{Inode, flags};
use crate::ondisk::le::{put_u16, put_u32};
use crate::ondisk::superblock::{compat, incompat};

/// One level of an htree path: the index block's logical number, its entries and the slot taken.
struct Level {
    lblk: u64,
    entries: DxEntries,
    slot: usize,
}

impl Fs {
    fn csum_dirs(&self) -> bool {
        self.sb.has_metadata_csum()
    }

    /// Usable bytes of a leaf block (the checksum tail excluded).
    pub(super) fn leaf_region_len(&self) -> usize {
        self.block_size as usize - if self.csum_dirs() { TAIL_LEN } else { 0 }
    }

    pub(super) fn finish_leaf(&self, ino: Ino, inode: &Inode, block: &mut [u8]) {
        if self.csum_dirs() {
            dirent::set_leaf_tail(self.inode_seed(ino, inode), block);
        }
    }

    fn dir_pblk(&self, ino: Ino, inode: &Inode, lblk: u64) -> Result<u64> {
        match self.map_block(ino, inode, lblk)?.status.pblk() {
            Some(pblk) => Ok(pblk),
            None => Err(crate::corrupt!(
                "inode {ino}: directory has a hole at block {lblk}"
            )),
        }
    }

    /// Goal for a directory's next block: right after its last one.
    fn dir_goal(&self, ino: Ino, inode: &Inode) -> u64 {
        let n = inode.size / self.block_size as u64;
        if n == 0 {
            return self
                .alloc
                .geo
                .group_first_block(((ino - 1) / self.sb.inodes_per_group as u64) as u32);
        }
        self.dir_pblk(ino, inode, n - 1).map(|p| p + 1).unwrap_or(0)
    }

    /// Append a fresh block to a directory; returns (logical, physical) block.
    pub(super) fn dir_append_block(&self, ino: Ino, inode: &mut Inode) -> Result<(u64, u64)> {
        let lblk = inode.size / self.block_size as u64;
        let goal = self.dir_goal(ino, inode);
        let pblk = self.map_new_block(ino, inode, lblk as u32, goal)?;
        inode.size += self.block_size as u64;
        Ok((lblk, pblk))
    }

    /// Give a new directory its "." and "..": inline in the inode on inline_data file systems
    /// (as the kernel does), else a first block.
    pub(super) fn init_dir_block(&self, ino: Ino, inode: &mut Inode, parent: Ino) -> Result<()> {
        if self.try_init_inline_dir(ino, inode, parent)? {
            return Ok(());
        }
        let (_, pblk) = self.dir_append_block(ino, inode)?;
        let mut b = self.new_block_buf();
        let ft = self.has_filetype();
        let bs = self.block_size as usize;
        let rl = self.leaf_region_len();
        dirent::init_empty_region(&mut b[..rl], bs);
        let ok = dirent::insert_entry(&mut b[..rl], b".", ino as u32, dirent::FT_DIR, ft, bs)
            .and_then(|a| {
                Ok(a && dirent::insert_entry(
                    &mut b[..rl],
                    b"..",
                    parent as u32,
                    dirent::FT_DIR,
                    ft,
                    bs,
                )?)
            })
            .map_err(|e| crate::corrupt!("inode {ino}: {e}"))?;
        if !ok {
            return Err(Errno::EIO);
        }
        self.finish_leaf(ino, inode, &mut b);
        self.put_block(pblk, b);
        Ok(())
    }

    /// Insert `name` → `target` into leaf block `lblk` (physical `pblk`, contents `block`):
    /// the block is checked (checksum tail, every entry) and searched for room in place, and
    /// copied for writing only when the entry fits. False when it has no room.
    #[allow(clippy::too_many_arguments)]
    fn leaf_insert(
        &self,
        ino: Ino,
        inode: &Inode,
        lblk: u64,
        pblk: u64,
        block: &[u8],
        name: &[u8],
        target: Ino,
        ft: u8,
    ) -> Result<bool> {
        let filetype = self.has_filetype();
        let region = self.leaf_region(ino, inode, lblk, block)?;
        let Some(slot) = dirent::find_slot(region, name.len(), filetype)
            .map_err(|e| crate::corrupt!("inode {ino}: directory block {lblk}: {e}"))?
        else {
            return Ok(false);
        };
        // The namespace lock keeps the cached block as `block` was read.
        let mut b = self.block_for_write(pblk)?;
        debug_assert_eq!(&b[..], block);
        let rl = self.leaf_region_len();
        dirent::write_slot(
            &mut b[..rl],
            slot,
            name,
            target as u32,
            ft,
            filetype,
            self.block_size as usize,
        );
        self.finish_leaf(ino, inode, &mut b);
        self.put_block(pblk, b);
        Ok(true)
    }

    /// Insert into a leaf block this operation just wrote (already known to be well formed).
    #[allow(clippy::too_many_arguments)]
    fn leaf_insert_fresh(
        &self,
        ino: Ino,
        inode: &Inode,
        lblk: u64,
        pblk: u64,
        name: &[u8],
        target: Ino,
        ft: u8,
    ) -> Result<bool> {
        let block = self.read_meta_block(pblk)?;
        self.leaf_insert(ino, inode, lblk, pblk, &block, name, target, ft)
    }

    /// Add `name` → `target` (file type `ft`) to directory `dir`. The name must not exist yet.
    pub(super) fn add_entry(
        &self,
        dir: Ino,
        dinode: &mut Inode,
        name: &[u8],
        target: Ino,
        ft: u8,
    ) -> Result<()> {
        if dinode.has_flag(flags::INLINE_DATA) {
            return self.inline_add_entry(dir, dinode, name, target, ft);
        }
        if self.is_htree(dinode) {
            return self.dx_add(dir, dinode, name, target, ft);
        }
        let nblocks = self.dir_block_count(dir, dinode)?;
        for lblk in 0..nblocks {
            let (pblk, block) = self.dir_block_at(dir, dinode, lblk)?;
            if self.leaf_insert(dir, dinode, lblk, pblk, &block, name, target, ft)? {
                return Ok(());
            }
        }
        if nblocks == 1 && self.sb.has_compat(compat::DIR_INDEX) {
            self.make_indexed(dir, dinode)?;
            return self.dx_add(dir, dinode, name, target, ft);
        }
        let (lblk, pblk) = self.dir_append_block(dir, dinode)?;
        let mut b = self.new_block_buf();
        let rl = self.leaf_region_len();
        dirent::init_empty_region(&mut b[..rl], self.block_size as usize);
        self.finish_leaf(dir, dinode, &mut b);
        self.put_block(pblk, b);
        if self.leaf_insert_fresh(dir, dinode, lblk, pblk, name, target, ft)? {
            Ok(())
        } else {
            Err(Errno::ENAMETOOLONG)
        }
    }

    /// Remove `name` from directory `dir`; returns the inode it named.
    /// Inline directories change in the in-core inode, which the caller stores.
    pub(super) fn remove_entry(&self, dir: Ino, dinode: &mut Inode, name: &[u8]) -> Result<Ino> {
        if dinode.has_flag(flags::INLINE_DATA) {
            return self.inline_remove_entry(dir, dinode, name);
        }
        let loc = self.locate_entry(dir, dinode, name)?;
        let Some((lblk, pblk)) = loc.lblk else {
            return Err(Errno::EINVAL);
        };
        let mut b = self.block_for_write(pblk)?;
        let rl = self.leaf_region_len();
        let removed = dirent::remove_entry(
            &mut b[..rl],
            name,
            self.has_filetype(),
            self.block_size as usize,
        )
        .map_err(|e| crate::corrupt!("inode {dir}: directory block {lblk}: {e}"))?;
        if removed.is_none() {
            return Err(Errno::ENOENT);
        }
        self.finish_leaf(dir, dinode, &mut b);
        self.put_block(pblk, b);
        Ok(loc.ino)
    }

    /// Point existing entry `name` at `target` (rename over an existing name). Inline
    /// directories change in the in-core inode, which the caller stores.
    pub(super) fn retarget_entry(
        &self,
        dir: Ino,
        dinode: &mut Inode,
        name: &[u8],
        target: Ino,
        ft: u8,
    ) -> Result<()> {
        if dinode.has_flag(flags::INLINE_DATA) {
            return self.inline_retarget_entry(dir, dinode, name, target, ft);
        }
        let loc = self.locate_entry(dir, dinode, name)?;
        let Some((lblk, pblk)) = loc.lblk else {
            return Err(Errno::EINVAL);
        };
        let mut b = self.block_for_write(pblk)?;
        let rl = self.leaf_region_len();
        dirent::retarget_entry(&mut b[..rl], name, target as u32, ft, self.has_filetype())
            .map_err(|e| crate::corrupt!("inode {dir}: directory block {lblk}: {e}"))?;
        self.finish_leaf(dir, dinode, &mut b);
        self.put_block(pblk, b);
        Ok(())
    }

    /// Set a directory's ".." (second entry of block 0, at byte 12, in both layouts; the first
    /// word of `i_block` in an inline directory, which the caller stores).
    pub(super) fn set_dotdot(&self, dir: Ino, dinode: &mut Inode, parent: Ino) -> Result<()> {
        if dinode.has_flag(flags::INLINE_DATA) {
            put_u32(&mut dinode.block, 0, parent as u32);
            return Ok(());
        }
        let pblk = self.dir_pblk(dir, dinode, 0)?;
        let mut b = self.block_for_write(pblk)?;
        if &b[12 + 8..12 + 10] != b".." {
            return Err(crate::corrupt!(
                "inode {dir}: directory block 0 has no '..' entry"
            ));
        }
        put_u32(&mut b, 12, parent as u32);
        if self.is_htree(dinode) {
            let (_, e) = htree::parse_dx_root(&b)
                .map_err(|m| crate::corrupt!("inode {dir}: htree root: {m}"))?;
            self.dx_seal(dir, dinode, &mut b, &e);
        } else {
            self.finish_leaf(dir, dinode, &mut b);
        }
        self.put_block(pblk, b);
        Ok(())
    }

    fn dx_limit(&self, countlimit_offset: usize) -> u16 {
        let n = (self.block_size as usize - countlimit_offset) / 8;
        (n - if self.csum_dirs() { 1 } else { 0 }) as u16
    }

    /// Write `e`'s entries into index block `b` and refresh its checksum.
    fn dx_seal(&self, dir: Ino, dinode: &Inode, b: &mut [u8], e: &DxEntries) {
        htree::write_dx_entries(b, e.countlimit_offset, e.limit, &e.entries);
        if self.csum_dirs() {
            htree::dx_csum_set(
                self.inode_seed(dir, dinode),
                b,
                e.countlimit_offset,
                e.entries.len() as u16,
                e.limit,
            );
        }
    }

    fn dx_store(&self, dir: Ino, dinode: &Inode, lblk: u64, e: &DxEntries) -> Result<()> {
        let pblk = self.dir_pblk(dir, dinode, lblk)?;
        let mut b = self.block_for_write(pblk)?;
        self.dx_seal(dir, dinode, &mut b, e);
        self.put_block(pblk, b);
        Ok(())
    }

    /// Turn a full one-block directory into an htree: block 0 becomes the index root and its
    /// entries move to a new leaf, block 1.
    fn make_indexed(&self, dir: Ino, dinode: &mut Inode) -> Result<()> {
        let block0 = self.dir_block(dir, dinode, 0)?;
        let region0 = self.dir_leaf(dir, dinode, 0, &block0)?;
        let (_, leaf_pblk) = self.dir_append_block(dir, dinode)?;
        let bs = self.block_size as usize;
        let rl = self.leaf_region_len();
        let ft = self.has_filetype();
        let mut leaf = self.new_block_buf();
        dirent::init_empty_region(&mut leaf[..rl], bs);
        let mut dot = None;
        let mut dotdot = None;
        // The block was checked: the iterator yields no errors.
        for d in dirent::entries(region0, ft)
            .flatten()
            .filter(|d| d.inode != 0)
        {
            match d.name {
                b"." => dot = Some(d.inode),
                b".." => dotdot = Some(d.inode),
                _ => {
                    let ok =
                        dirent::insert_entry(&mut leaf[..rl], d.name, d.inode, d.file_type, ft, bs)
                            .map_err(|e| crate::corrupt!("inode {dir}: {e}"))?;
                    if !ok {
                        return Err(crate::corrupt!(
                            "inode {dir}: directory entries do not fit one block"
                        ));
                    }
                }
            }
        }
        self.finish_leaf(dir, dinode, &mut leaf);
        self.put_block(leaf_pblk, leaf);
        // The root: ".", ".." spanning the block, dx_root_info, one index entry → block 1.
        let mut root = self.new_block_buf();
        put_u32(&mut root, 0, dot.unwrap_or(dir as u32));
        put_u16(&mut root, 4, 12);
        root[6] = 1;
        root[7] = if ft { dirent::FT_DIR } else { 0 };
        root[8] = b'.';
        put_u32(&mut root, 12, dotdot.unwrap_or(dir as u32));
        put_u16(&mut root, 16, (bs - 12) as u16);
        root[18] = 2;
        root[19] = if ft { dirent::FT_DIR } else { 0 };
        root[20] = b'.';
        root[21] = b'.';
        root[28] = self.sb.def_hash_version; // hash_version
        root[29] = 8; // info_length
        root[30] = 0; // indirect_levels
        let e = DxEntries {
            limit: self.dx_limit(32),
            count: 1,
            entries: vec![(0, 1)],
            countlimit_offset: 32,
        };
        self.dx_seal(dir, dinode, &mut root, &e);
        let root_pblk = self.dir_pblk(dir, dinode, 0)?;
        self.put_block(root_pblk, root);
        dinode.flags |= flags::INDEX;
        Ok(())
    }

    fn dx_add(&self, dir: Ino, dinode: &mut Inode, name: &[u8], target: Ino, ft: u8) -> Result<()> {
        let root = self.dir_block(dir, dinode, 0)?;
        let Some((info, root_entries, version)) = self.dx_hash_params(&root) else {
            return Err(crate::corrupt!(
                "inode {dir}: htree root is invalid or uses an unsupported hash"
            ));
        };
        self.dx_check_csum(dir, dinode, 0, &root, &root_entries)?;
        let (hash, _) = htree::dirhash(name, version, &self.sb.hash_seed)
            .map_err(|e| crate::corrupt!("inode {dir}: {e}"))?;
        let nblocks = self.dir_block_count(dir, dinode)?;
        let depth = info.indirect_levels as usize + 1;
        let mut path: Vec<Level> = Vec::with_capacity(depth);
        let mut entries = root_entries;
        let mut lblk = 0u64;
        let leaf = loop {
            let slot = htree::dx_lookup_slot(&entries, hash);
            let child = entries.entries[slot].1 as u64;
            if child == 0 || child >= nblocks {
                return Err(crate::corrupt!(
                    "inode {dir}: htree points to block {child} outside the directory"
                ));
            }
            path.push(Level {
                lblk,
                entries,
                slot,
            });
            if path.len() == depth {
                break child;
            }
            lblk = child;
            entries = self.dx_node(dir, dinode, child)?;
        };
        let (leaf_pblk, block) = self.dir_block_at(dir, dinode, leaf)?;
        if self.leaf_insert(dir, dinode, leaf, leaf_pblk, &block, name, target, ft)? {
            return Ok(());
        }
        // Split the leaf by hash: the upper part moves to a new block.
        let (split_hash, new_lblk, new_pblk) =
            self.dx_split_leaf(dir, dinode, leaf, leaf_pblk, &block, version, &mut path)?;
        let (dest_lblk, dest) = if hash >= split_hash & !1 {
            (new_lblk, new_pblk)
        } else {
            (leaf, leaf_pblk)
        };
        if self.leaf_insert_fresh(dir, dinode, dest_lblk, dest, name, target, ft)? {
            Ok(())
        } else {
            Err(Errno::ENOSPC)
        }
    }

    /// Move the upper half (by hash) of a full leaf (contents `block`) into a new block and
    /// index it. Returns the new block's hash key, logical and physical block.
    #[allow(clippy::too_many_arguments)]
    fn dx_split_leaf(
        &self,
        dir: Ino,
        dinode: &mut Inode,
        leaf: u64,
        leaf_pblk: u64,
        block: &[u8],
        version: u8,
        path: &mut Vec<Level>,
    ) -> Result<(u32, u64, u64)> {
        let region = self.dir_leaf(dir, dinode, leaf, block)?;
        let mut live: Vec<(u32, u32, dirent::DirentRef)> = Vec::new();
        for d in dirent::entries(region, self.has_filetype())
            .flatten()
            .filter(|d| d.inode != 0)
        {
            let (h, m) = htree::dirhash(d.name, version, &self.sb.hash_seed)
                .map_err(|e| crate::corrupt!("inode {dir}: {e}"))?;
            live.push((h, m, d));
        }
        live.sort_by_key(|x| (x.0, x.1));
        if live.len() < 2 {
            return Err(Errno::ENOSPC);
        }
        let rl = self.leaf_region_len();
        let mut moved = 0usize;
        let mut split = live.len();
        for i in (1..live.len()).rev() {
            let sz = dirent::rec_len_for(live[i].2.name.len());
            if moved + sz / 2 > rl / 2 {
                break;
            }
            moved += sz;
            split = i;
        }
        if split == live.len() {
            split = live.len() - 1;
        }
        let hash2 = live[split].0;
        let continued = live[split - 1].0 == hash2;
        let bs = self.block_size as usize;
        let ft = self.has_filetype();
        let fill = |part: &[(u32, u32, dirent::DirentRef)]| -> Result<Vec<u8>> {
            let mut b = self.new_block_buf();
            dirent::init_empty_region(&mut b[..rl], bs);
            for (_, _, d) in part {
                let ok = dirent::insert_entry(&mut b[..rl], d.name, d.inode, d.file_type, ft, bs)
                    .map_err(|e| crate::corrupt!("inode {dir}: {e}"))?;
                if !ok {
                    return Err(crate::corrupt!("inode {dir}: split leaf overflow"));
                }
            }
            self.finish_leaf(dir, dinode, &mut b);
            Ok(b)
        };
        let low = fill(&live[..split])?;
        let high = fill(&live[split..])?;
        let (new_lblk, new_pblk) = self.dir_append_block(dir, dinode)?;
        self.put_block(leaf_pblk, low);
        self.put_block(new_pblk, high);
        let key = hash2 | continued as u32;
        let level = path.len() - 1;
        let pos = path[level].slot + 1;
        self.dx_insert_index(dir, dinode, path, level, pos, key, new_lblk)?;
        Ok((hash2, new_lblk, new_pblk))
    }

    /// Insert index entry (`hash`, `child`) at `pos` of index level `level`, splitting full nodes
    /// and growing the tree by a level when the root is full.
    #[allow(clippy::too_many_arguments)]
    fn dx_insert_index(
        &self,
        dir: Ino,
        dinode: &mut Inode,
        path: &mut Vec<Level>,
        level: usize,
        pos: usize,
        hash: u32,
        child: u64,
    ) -> Result<()> {
        let entry = (hash, child as u32);
        if path[level].entries.entries.len() < path[level].entries.limit as usize {
            let lv = &mut path[level];
            lv.entries.entries.insert(pos, entry);
            lv.entries.count = lv.entries.entries.len() as u16;
            return self.dx_store(dir, dinode, lv.lblk, &lv.entries);
        }
        if level == 0 {
            // Full root: push its entries down into a new node, if the tree may grow.
            let max_levels = if self.sb.has_incompat(incompat::LARGEDIR) {
                3
            } else {
                2
            };
            if path.len() >= max_levels {
                log::warn!("inode {dir}: directory index is full");
                return Err(Errno::ENOSPC);
            }
            let (node_lblk, node_pblk) = self.dir_append_block(dir, dinode)?;
            let mut node = self.new_block_buf();
            put_u16(&mut node, 4, self.block_size as u16);
            if self.block_size >= 65536 {
                put_u16(&mut node, 4, 0);
            }
            let mut ne = DxEntries {
                limit: self.dx_limit(8),
                count: 0,
                entries: path[0].entries.entries.clone(),
                countlimit_offset: 8,
            };
            ne.entries.insert(pos, entry);
            ne.count = ne.entries.len() as u16;
            self.dx_seal(dir, dinode, &mut node, &ne);
            self.put_block(node_pblk, node);
            // The root now has one entry and one more level.
            let root_pblk = self.dir_pblk(dir, dinode, 0)?;
            let mut root = self.block_for_write(root_pblk)?;
            root[30] += 1;
            let re = DxEntries {
                limit: path[0].entries.limit,
                count: 1,
                entries: vec![(0, node_lblk as u32)],
                countlimit_offset: path[0].entries.countlimit_offset,
            };
            self.dx_seal(dir, dinode, &mut root, &re);
            self.put_block(root_pblk, root);
            return Ok(());
        }
        // Full interior node: split it in two and index the new half in the parent.
        let (new_lblk, new_pblk) = self.dir_append_block(dir, dinode)?;
        let lv = &mut path[level];
        let mut all = lv.entries.entries.clone();
        all.insert(pos, entry);
        let half = all.len() / 2;
        let right: Vec<(u32, u32)> = all.split_off(half);
        let right_key = right[0].0;
        lv.entries.entries = all;
        lv.entries.count = lv.entries.entries.len() as u16;
        let left_lblk = lv.lblk;
        let left = lv.entries.clone();
        self.dx_store(dir, dinode, left_lblk, &left)?;
        let mut node = self.new_block_buf();
        put_u16(&mut node, 4, self.block_size as u16);
        let re = DxEntries {
            limit: left.limit,
            count: right.len() as u16,
            entries: right,
            countlimit_offset: 8,
        };
        self.dx_seal(dir, dinode, &mut node, &re);
        self.put_block(new_pblk, node);
        let ppos = path[level - 1].slot + 1;
        self.dx_insert_index(dir, dinode, path, level - 1, ppos, right_key, new_lblk)
    }

    /// The parent recorded in a directory's "..".
    pub(super) fn dotdot(&self, dir: Ino, dinode: &Inode) -> Result<Ino> {
        self.find_entry(dir, dinode, b"..")
    }
}
