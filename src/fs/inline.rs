//! Changing inline-data inodes (`-O inline_data`), after the kernel's fs/ext4/inline.c.
//!
//! An inline directory keeps its parent in the first word of `i_block`, then dirents in the other
//! 56 bytes of `i_block` (region 1), then more dirents in the value of the in-inode `system.data`
//! attribute (region 2). Each region is a chain of dirents like a block without a checksum tail;
//! the directory's size is 60 plus the value's length. Adding an entry tries region 1, then region
//! 2, then grows region 2 to all the room the inode body has left, and finally converts the
//! directory to an ordinary one-block directory ("." and ".." first, then the entries).
//! New directories start inline on inline_data file systems, as the kernel makes them.
//!
//! An inline regular file holds its first 60 bytes in `i_block` and the rest in `system.data`.
//! Truncating down shortens it in place; growing it moves the data to block 0 of an extent (or
//! block-mapped) file, as the kernel does on any size increase.
//!
//! A new regular file on an inline_data file system starts "may inline" (the kernel's
//! EXT4_STATE_MAY_INLINE_DATA, kept in the in-core inode table): while that holds and the file
//! maps no block and has nothing in the page cache, a write whose result fits the inode makes it
//! inline (`EXTENTS` cleared, `INLINE_DATA` set, an empty or short `system.data`). The first write
//! that does not fit, fallocate, a DAX mapping and any move to a block end the state for good: a
//! file that had blocks never becomes inline again. An inode read back later (after the client
//! forgot it) starts without the state, as the kernel's iget sets it only on inline files.
//!
//! Every change is made to the in-core inode (`i_block`, and the in-inode xattr area in
//! `inode.raw`); the caller stores the inode, which refreshes its checksum.
//!
//! Locks: a directory's inline data changes under the namespace write lock. A regular file's
//! changes are data-path steps ([`Fs::inline_step`]): the file's data lock under the namespace
//! lock held for reading, so inline files are written at the same time as other files — unless
//! the inode has an xattr block, which other inodes may share (its reference count): then the
//! namespace write lock, as for setxattr.

use super::Fs;
use super::data::InodeData;
use super::types::Ino;
use crate::errno::{Errno, Result};
use crate::extent::ExtentTree;
use crate::ondisk::dirent::{self, RawDirent};
use crate::ondisk::inode::{I_BLOCK_LEN, Inode, flags};
use crate::ondisk::le::{put_u16, u16_at};
use crate::ondisk::superblock::incompat;

/// Bytes of `i_block` holding the parent's inode number.
const DOTDOT_SIZE: usize = 4;

/// Which part of an inline directory an entry lives in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Region {
    IBlock,
    Xattr,
}

impl Fs {
    /// The `system.data` value of an inline directory, checked against the directory's size and
    /// both regions parsed (refusing corrupt dirents).
    fn inline_dir_value(
        &self,
        dir: Ino,
        dinode: &Inode,
    ) -> Result<(Vec<u8>, Vec<RawDirent>, Vec<RawDirent>)> {
        let value = self.inline_xattr(dir, dinode)?;
        if dinode.size != (I_BLOCK_LEN + value.len()) as u64 {
            return Err(crate::corrupt!(
                "inode {dir}: inline directory size {} does not match its inline data ({} bytes)",
                dinode.size,
                I_BLOCK_LEN + value.len()
            ));
        }
        let ft = self.has_filetype();
        let first = dirent::parse_block(&dinode.block[DOTDOT_SIZE..], ft)
            .map_err(|e| crate::corrupt!("inode {dir}: inline directory: {e}"))?;
        let second = dirent::parse_block(&value, ft)
            .map_err(|e| crate::corrupt!("inode {dir}: inline directory (xattr part): {e}"))?;
        Ok((value, first, second))
    }

    /// Make a new directory inline: `..` in `i_block`, one empty dirent over the rest, and an
    /// empty `system.data`. False when the file system or the inode has no room for inline data.
    pub(super) fn try_init_inline_dir(
        &self,
        ino: Ino,
        inode: &mut Inode,
        parent: Ino,
    ) -> Result<bool> {
        if !self.sb.has_incompat(incompat::INLINE_DATA) {
            return Ok(false);
        }
        if self.max_inline_xattr(ino, inode)?.is_none() {
            return Ok(false);
        }
        let mut n = inode.clone();
        n.flags &= !flags::EXTENTS;
        n.flags |= flags::INLINE_DATA;
        n.block = [0; I_BLOCK_LEN];
        n.block[..DOTDOT_SIZE].copy_from_slice(&(parent as u32).to_le_bytes());
        dirent::init_empty_region(&mut n.block[DOTDOT_SIZE..], I_BLOCK_LEN - DOTDOT_SIZE);
        n.size = I_BLOCK_LEN as u64;
        match self.set_system_data(ino, &mut n, Some(Vec::new())) {
            Ok(()) => {}
            Err(Errno::ENOSPC) => return Ok(false),
            Err(e) => return Err(e),
        }
        // i_block now holds dirents, not a block map.
        self.es.forget_mapped(ino);
        *inode = n;
        Ok(true)
    }

    /// Add `name` → `target` to inline directory `dir`, converting it to a block directory when
    /// the inode is full.
    pub(super) fn inline_add_entry(
        &self,
        dir: Ino,
        dinode: &mut Inode,
        name: &[u8],
        target: Ino,
        ft: u8,
    ) -> Result<()> {
        let (mut value, _, _) = self.inline_dir_value(dir, dinode)?;
        let filetype = self.has_filetype();
        let corrupt = |e: String| crate::corrupt!("inode {dir}: inline directory: {e}");
        // Region 1: i_block after the parent.
        let mut block = dinode.block;
        let rl = I_BLOCK_LEN - DOTDOT_SIZE;
        if dirent::insert_entry(
            &mut block[DOTDOT_SIZE..],
            name,
            target as u32,
            ft,
            filetype,
            rl,
        )
        .map_err(corrupt)?
        {
            dinode.block = block;
            return Ok(());
        }
        // Region 2: the system.data value.
        if !value.is_empty() {
            let vl = value.len();
            if dirent::insert_entry(&mut value, name, target as u32, ft, filetype, vl)
                .map_err(corrupt)?
            {
                return self.set_system_data(dir, dinode, Some(value));
            }
        }
        // Grow region 2 to everything the inode body has left (ext4_update_inline_dir).
        let max = self.max_inline_xattr(dir, dinode)?.unwrap_or(0);
        if max >= value.len() + dirent::rec_len_for(1) {
            let mut grown = value.clone();
            let extra = max - value.len();
            grown.resize(max, 0);
            match dirent::parse_block(&value, filetype)
                .map_err(corrupt)?
                .last()
            {
                Some(last) => {
                    let rec = u16_at(&grown, last.offset + 4) as usize + extra;
                    put_u16(&mut grown, last.offset + 4, rec as u16);
                }
                None => dirent::init_empty_region(&mut grown, max),
            }
            if dirent::insert_entry(&mut grown, name, target as u32, ft, filetype, max)
                .map_err(corrupt)?
            {
                let mut n = dinode.clone();
                self.set_system_data(dir, &mut n, Some(grown))?;
                n.size = (I_BLOCK_LEN + max) as u64;
                *dinode = n;
                return Ok(());
            }
        }
        // The inode is full: move everything to a block and insert there.
        self.convert_inline_dir(dir, dinode)?;
        self.add_entry(dir, dinode, name, target, ft)
    }

    /// Turn inline directory `dir` into a one-block directory holding ".", ".." and its entries
    /// (ext4_convert_inline_dir). The in-core inode changes only when everything succeeded.
    fn convert_inline_dir(&self, dir: Ino, dinode: &mut Inode) -> Result<()> {
        let (_, first, second) = self.inline_dir_value(dir, dinode)?;
        let parent = dinode.block_word(0);
        let live: Vec<&RawDirent> = first
            .iter()
            .chain(second.iter())
            .filter(|d| d.inode != 0)
            .collect();
        let rl = self.leaf_region_len();
        let need: usize = 2 * dirent::rec_len_for(2)
            + live
                .iter()
                .map(|d| dirent::rec_len_for(d.name.len()))
                .sum::<usize>();
        if need > rl {
            return Err(crate::corrupt!(
                "inode {dir}: inline directory entries ({need} bytes) do not fit one block"
            ));
        }
        let mut n = dinode.clone();
        n.flags &= !flags::INLINE_DATA;
        n.block = [0; I_BLOCK_LEN];
        n.size = 0;
        if self.sb.has_incompat(incompat::EXTENTS) {
            n.flags |= flags::EXTENTS;
            ExtentTree::init_empty(&mut n.block);
        }
        let (_, pblk) = self.dir_append_block(dir, &mut n)?;
        if let Err(e) = self.set_system_data(dir, &mut n, None) {
            if let Err(e2) = self.truncate_blocks(dir, &mut n, 0) {
                log::error!("inode {dir}: releasing the block of a failed conversion: {e2}");
            }
            return Err(e);
        }
        let bs = self.block_size as usize;
        let ft = self.has_filetype();
        let mut b = self.new_block_buf();
        dirent::init_empty_region(&mut b[..rl], bs);
        let dots = [
            (b".".as_slice(), dir as u32, dirent::FT_DIR),
            (b"..".as_slice(), parent, dirent::FT_DIR),
        ];
        for (name, ino, t) in dots.into_iter().chain(
            live.iter()
                .map(|d| (d.name.as_slice(), d.inode, d.file_type)),
        ) {
            let ok = dirent::insert_entry(&mut b[..rl], name, ino, t, ft, bs)
                .map_err(|e| crate::corrupt!("inode {dir}: {e}"))?;
            if !ok {
                return Err(crate::corrupt!(
                    "inode {dir}: inline directory entries do not fit one block"
                ));
            }
        }
        self.finish_leaf(dir, &n, &mut b);
        self.put_block(pblk, b);
        // A block map replaces the inline data (map_new_block already dropped cached runs).
        self.es.forget_mapped(dir);
        *dinode = n;
        Ok(())
    }

    /// The region holding live entry `name`, with that region's bytes.
    fn inline_find(
        &self,
        dir: Ino,
        dinode: &Inode,
        name: &[u8],
    ) -> Result<(Region, Vec<u8>, usize)> {
        let (value, first, second) = self.inline_dir_value(dir, dinode)?;
        let hit = |v: &[RawDirent]| v.iter().any(|d| d.inode != 0 && d.name == name);
        if hit(&first) {
            Ok((
                Region::IBlock,
                dinode.block[DOTDOT_SIZE..].to_vec(),
                I_BLOCK_LEN - DOTDOT_SIZE,
            ))
        } else if hit(&second) {
            let len = value.len();
            Ok((Region::Xattr, value, len))
        } else {
            Err(Errno::ENOENT)
        }
    }

    /// Write a changed region back into the in-core inode.
    fn inline_put(&self, dir: Ino, dinode: &mut Inode, r: Region, bytes: Vec<u8>) -> Result<()> {
        match r {
            Region::IBlock => {
                dinode.block[DOTDOT_SIZE..].copy_from_slice(&bytes);
                Ok(())
            }
            Region::Xattr => self.set_system_data(dir, dinode, Some(bytes)),
        }
    }

    /// Remove `name` from inline directory `dir` (merged into the previous entry of its region,
    /// as in a block); returns the inode it named.
    pub(super) fn inline_remove_entry(
        &self,
        dir: Ino,
        dinode: &mut Inode,
        name: &[u8],
    ) -> Result<Ino> {
        let (r, mut bytes, len) = self.inline_find(dir, dinode, name)?;
        let removed = dirent::remove_entry(&mut bytes, name, self.has_filetype(), len)
            .map_err(|e| crate::corrupt!("inode {dir}: inline directory: {e}"))?
            .ok_or(Errno::ENOENT)?;
        self.inline_put(dir, dinode, r, bytes)?;
        Ok(removed as Ino)
    }

    /// Point entry `name` of inline directory `dir` at `target`.
    pub(super) fn inline_retarget_entry(
        &self,
        dir: Ino,
        dinode: &mut Inode,
        name: &[u8],
        target: Ino,
        ft: u8,
    ) -> Result<()> {
        let (r, mut bytes, _) = self.inline_find(dir, dinode, name)?;
        let found =
            dirent::retarget_entry(&mut bytes, name, target as u32, ft, self.has_filetype())
                .map_err(|e| crate::corrupt!("inode {dir}: inline directory: {e}"))?;
        if !found {
            return Err(Errno::ENOENT);
        }
        self.inline_put(dir, dinode, r, bytes)
    }

    /// A new regular file: let its first writes go inline when the file system has inline data
    /// (`__ext4_new_inode`). The caller holds the inode in core (its lookup reference).
    pub(super) fn mark_may_inline(&self, ino: Ino, inode: &Inode) {
        if inode.is_reg() && self.sb.has_incompat(incompat::INLINE_DATA) {
            self.inodes.set_may_inline(ino, true);
        }
    }

    /// `ino` will never go inline: its data is going to (or may) live in blocks.
    pub(super) fn end_may_inline(&self, ino: Ino) {
        self.inodes.set_may_inline(ino, false);
    }

    /// May a write now put the data of `ino` (not inline yet) into its inode? Only while the
    /// file is "may inline", maps no block and has no page (a cached page would outlive the
    /// move into the inode). The caller holds the file's rw lock.
    pub(super) fn may_start_inline(&self, ino: Ino, d: &InodeData, inode: &Inode) -> bool {
        if !self.inodes.may_inline(ino) || !inode.is_reg() || inode.has_flag(flags::INLINE_DATA) {
            return false;
        }
        let maps_nothing = if inode.has_flag(flags::EXTENTS) {
            // eh_entries of the root: an empty tree.
            u16_at(&inode.block, 2) == 0
        } else {
            inode.block.iter().all(|&b| b == 0)
        };
        let m = d.pages();
        maps_nothing && m.resident_pages() == 0 && m.pinned_chunks() == 0
    }

    /// Turn regular file `ino`, which maps nothing, into an inline-data file holding nothing yet
    /// (`ext4_create_inline_data`): the caller sets `system.data` and the size.
    pub(super) fn start_inline_file(&self, ino: Ino, inode: &mut Inode) {
        inode.flags &= !flags::EXTENTS;
        inode.flags |= flags::INLINE_DATA;
        inode.block = [0; I_BLOCK_LEN];
        // i_block now holds data, not a block map.
        self.es.forget_mapped(ino);
    }

    /// Change the size of inline regular file `ino`: shrink the data in place
    /// (ext4_inline_data_truncate), or, growing, move it to block 0 of an ordinary file whose
    /// rest reads as a hole. Sets `inode.size`.
    pub(super) fn inline_set_size(&self, ino: Ino, inode: &mut Inode, size: u64) -> Result<()> {
        let data = self.inline_data(ino, inode)?;
        if size < inode.size {
            let s = size as usize;
            let mut n = inode.clone();
            if s >= data.len() {
                // Only zeros (past the stored bytes) are cut off.
                n.size = size;
                *inode = n;
                return Ok(());
            }
            let has_tail = !self.inline_xattr(ino, inode)?.is_empty();
            if has_tail {
                let rest = if s > I_BLOCK_LEN {
                    data[I_BLOCK_LEN..s].to_vec()
                } else {
                    Vec::new()
                };
                self.set_system_data(ino, &mut n, Some(rest))?;
            }
            if s < I_BLOCK_LEN {
                n.block[s..].fill(0);
            }
            n.size = size;
            *inode = n;
            return Ok(());
        }
        let extents = self.sb.has_incompat(incompat::EXTENTS);
        if !extents && size > self.ind_max_bytes() {
            return Err(Errno::EFBIG);
        }
        let mut n = inode.clone();
        n.flags &= !flags::INLINE_DATA;
        n.block = [0; I_BLOCK_LEN];
        if extents {
            n.flags |= flags::EXTENTS;
            ExtentTree::init_empty(&mut n.block);
        }
        if data.len() > self.block_size as usize {
            return Err(crate::corrupt!(
                "inode {ino}: {} bytes of inline data exceed a block",
                data.len()
            ));
        }
        let mut placed = None;
        if !data.is_empty() {
            let goal = self
                .alloc
                .geo
                .group_first_block(((ino - 1) / self.sb.inodes_per_group as u64) as u32);
            let pblk = self.map_new_data_block(ino, &mut n, 0, goal, 0)?;
            placed = Some(pblk);
            let mut buf = self.new_block_buf();
            buf[..data.len()].copy_from_slice(&data);
            let bs = self.block_size as u64;
            if let Err(e) = self.dev.write_at(&buf, pblk * bs) {
                log::error!("inode {ino}: writing its inline data to block {pblk} failed: {e}");
                self.release_conversion(ino, &mut n);
                return Err(Errno::EIO);
            }
        }
        if let Err(e) = self.set_system_data(ino, &mut n, None) {
            if placed.is_some() {
                self.release_conversion(ino, &mut n);
            }
            return Err(e);
        }
        n.size = size;
        // A block map replaces the inline data (possibly without a block yet), for good.
        self.es.forget_mapped(ino);
        self.end_may_inline(ino);
        *inode = n;
        Ok(())
    }

    /// Give back the block a failed inline conversion mapped.
    fn release_conversion(&self, ino: Ino, n: &mut Inode) {
        if let Err(e) = self.truncate_blocks(ino, n, 0) {
            log::error!("inode {ino}: releasing the block of a failed conversion: {e}");
        }
    }
}

/// The locks of a change to a regular file's inline data (see the module comment).
pub(in crate::fs) enum InlineStep<'a> {
    Data(#[allow(dead_code)] crate::volume::DataStep<'a>),
    Namespace(#[allow(dead_code)] crate::volume::NsWrite<'a>),
}

impl Fs {
    /// Start a change of `ino`'s inline data (a regular file with in-core state `d`).
    pub(in crate::fs) fn inline_step<'a>(
        &'a self,
        ino: Ino,
        d: &'a crate::volume::incore::InodeData,
    ) -> Result<InlineStep<'a>> {
        let step = self.data_step(d);
        if self.read_inode(ino)?.file_acl == 0 {
            return Ok(InlineStep::Data(step));
        }
        drop(step);
        Ok(InlineStep::Namespace(self.ns_write()))
    }
}
