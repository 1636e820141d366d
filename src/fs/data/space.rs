//! Changing which bytes a file has: truncate (the page cache side), fallocate in the modes ext4
//! supports, and copy_file_range through the page cache.
//!
//! Partial blocks at the edge of a truncate or punch are zeroed in the cache and written back at
//! once (iomap's zero range), so the zeros are on disk before the transaction that frees the
//! blocks after them; never inside a handle.
//!
//! Lock order: the file's rw lock exclusively → ns (the block-map change) → the mapping mutex.

use super::InodeData;
use crate::errno::{Errno, Result};
use crate::extent::ExtentTree;
use crate::fs::Fs;
use crate::fs::types::Ino;
use crate::inode::blocks::{NodeIo, now};
use crate::iomap::Status;
use crate::ondisk::inode::flags;
use crate::pagecache::PAGE_SIZE;

pub const FALLOC_FL_KEEP_SIZE: u32 = 0x01;
pub const FALLOC_FL_PUNCH_HOLE: u32 = 0x02;
pub const FALLOC_FL_COLLAPSE_RANGE: u32 = 0x08;
pub const FALLOC_FL_ZERO_RANGE: u32 = 0x10;
pub const FALLOC_FL_INSERT_RANGE: u32 = 0x20;

impl Fs {
    /// The page cache side of a size change to `new_size` (the caller holds `d.rw`
    /// exclusively and changes the block map afterwards): pages past the new end go (dirty ones
    /// too, with their reservations), the partial block's tail is zeroed and written back, and
    /// both sizes become `new_size`.
    pub(in crate::fs) fn truncate_data(
        &self,
        ino: Ino,
        d: &InodeData,
        new_size: u64,
    ) -> Result<()> {
        let old = d.sizes().size;
        // Pages of writable window mappings that come inside EOF get their reservations.
        self.dax_grow(ino, d, old, new_size)?;
        if new_size < old && self.block_size as usize <= PAGE_SIZE {
            let bs = self.block_size as u64;
            self.zero_partial(ino, d, new_size, bs - new_size % bs)?;
            self.forget_blocks_from(ino, d, new_size.div_ceil(bs));
        }
        *d.sizes() = super::Sizes {
            size: new_size,
            disksize: new_size,
        };
        Ok(())
    }

    /// Drop the cache and delayed reservations of every block from `first` on.
    fn forget_blocks_from(&self, ino: Ino, d: &InodeData, first: u64) {
        self.forget_blocks(ino, d, first, u64::MAX / 2);
    }

    /// Drop the cached data and delayed reservations of blocks `[first, first + n)`.
    fn forget_blocks(&self, ino: Ino, d: &InodeData, first: u64, n: u64) {
        let pc = &self.data.pc;
        let bs = self.block_size as u64;
        let bpp = PAGE_SIZE as u64 / bs;
        let end = first.saturating_add(n);
        {
            let mut m = d.pages();
            let full_from = first.div_ceil(bpp);
            let full_to = end / bpp;
            if full_from < full_to {
                m.drop_range(pc, full_from, full_to);
            }
            // Pages cut by the range keep their other blocks.
            for idx in [first / bpp, end / bpp] {
                if idx >= full_from && idx < full_to {
                    continue;
                }
                let st = m.state(idx);
                if !st.resident {
                    continue;
                }
                let mut mask = 0u8;
                for b in 0..bpp {
                    let l = idx * bpp + b;
                    if l >= first && l < end {
                        mask |= 1 << b;
                    }
                }
                if mask == 0 {
                    continue;
                }
                m.clear_dirty(pc, idx, mask);
                m.set_uptodate_mask(idx, st.uptodate & !mask);
                if let Some((slab, p)) = m.slab_of(idx) {
                    for b in 0..bpp {
                        if mask & (1 << b) != 0 {
                            pc.arena.zero(slab, p, (b * bs) as usize, bs as usize);
                        }
                    }
                }
            }
        }
        let delayed = self.delayed_in(ino, first, end - first);
        self.es.remove(ino, first, end - first);
        self.alloc.release(delayed);
    }

    /// Zero `len` bytes at `pos` that lie within one block (the partial block at the edge of a
    /// truncate or punch): in the cache, reading the block in first when it has data on disk,
    /// then write it back now unless it has no block yet (delayed blocks stay dirty).
    fn zero_partial(&self, ino: Ino, d: &InodeData, pos: u64, len: u64) -> Result<()> {
        let room = |own: bool, attempt: u32| self.make_room(ino, d, own, attempt);
        let ops = self.iomap_ops(ino, d, &room);
        if self.file_io(ino, d).zero_partial(&ops, pos, len)? {
            let idx = pos / PAGE_SIZE as u64;
            self.writeback_inode(ino, d, idx, idx + 1)?;
        }
        Ok(())
    }

    /// fallocate(2): allocate (mode 0, KEEP_SIZE), PUNCH_HOLE, ZERO_RANGE, COLLAPSE_RANGE and
    /// INSERT_RANGE; with the kernel's answers for what ext4 refuses.
    pub fn fallocate(&self, ino: Ino, offset: u64, len: u64, mode: u32) -> Result<()> {
        if self.is_read_only() {
            return Err(Errno::EROFS);
        }
        let known = FALLOC_FL_KEEP_SIZE
            | FALLOC_FL_PUNCH_HOLE
            | FALLOC_FL_COLLAPSE_RANGE
            | FALLOC_FL_ZERO_RANGE
            | FALLOC_FL_INSERT_RANGE;
        if mode & !known != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        if len == 0 || (offset as i64) < 0 || (len as i64) < 0 {
            return Err(Errno::EINVAL);
        }
        // One operation at a time, as vfs_fallocate checks: punch needs KEEP_SIZE, collapse
        // and insert refuse it.
        match mode & !FALLOC_FL_KEEP_SIZE {
            0 | FALLOC_FL_ZERO_RANGE => {}
            FALLOC_FL_PUNCH_HOLE if mode & FALLOC_FL_KEEP_SIZE != 0 => {}
            FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE
                if mode & FALLOC_FL_KEEP_SIZE == 0 => {}
            _ => return Err(Errno::EOPNOTSUPP),
        }
        let d = self.inode_data(ino)?;
        let _w = d.write_lock();
        let inode = {
            let _g = self.ns_read();
            self.read_inode(ino)?
        };
        if offset
            .checked_add(len)
            .is_none_or(|e| e > self.max_file_bytes(&inode))
        {
            return Err(Errno::EFBIG);
        }
        if self.block_size as usize > PAGE_SIZE {
            return Err(Errno::EOPNOTSUPP);
        }
        // As ext4_fallocate does first: inline data moves to a block, and a new file's first
        // writes no longer go inline.
        self.end_may_inline(ino);
        let inode = if inode.has_flag(flags::INLINE_DATA) {
            self.inline_to_blocks(ino, &d)?
        } else {
            inode
        };
        if mode & FALLOC_FL_PUNCH_HOLE != 0 {
            self.punch(ino, &d, offset, len, inode.has_flag(flags::EXTENTS))?;
            return self.touch_times(ino, true);
        }
        if !inode.has_flag(flags::EXTENTS) {
            return Err(Errno::EOPNOTSUPP);
        }
        match mode & !FALLOC_FL_KEEP_SIZE {
            0 => {
                self.allocate_range(ino, &d, offset, len)?;
            }
            FALLOC_FL_ZERO_RANGE => {
                let size = d.sizes().size;
                if offset < size {
                    self.punch(ino, &d, offset, len.min(size - offset), true)?;
                }
                self.allocate_range(ino, &d, offset, len)?;
            }
            FALLOC_FL_COLLAPSE_RANGE => {
                self.collapse_range(ino, &d, offset, len)?;
                return self.touch_times(ino, true);
            }
            _ => {
                self.insert_range(ino, &d, offset, len, self.max_file_bytes(&inode))?;
                return self.touch_times(ino, true);
            }
        }
        let mut grew = false;
        if mode & FALLOC_FL_KEEP_SIZE == 0 {
            let old = d.sizes().size;
            self.dax_grow(ino, &d, old, offset + len)?;
            // The range now has blocks (unwritten or written): the on-disk size may cover it
            // (the kernel's ext4_update_inode_size with new_size = offset + len).
            let mut s = d.sizes();
            let end = offset + len;
            grew = end > s.size;
            s.size = s.size.max(end);
            s.disksize = s.disksize.max(end);
        }
        self.touch_times(ino, grew || mode & FALLOC_FL_ZERO_RANGE != 0)
    }

    /// COLLAPSE_RANGE (the kernel's ext4_collapse_range): remove `[offset, offset + len)` and
    /// move everything after it down; the file shrinks by `len`. Block-aligned, ending before
    /// EOF (EINVAL otherwise).
    fn collapse_range(&self, ino: Ino, d: &InodeData, offset: u64, len: u64) -> Result<()> {
        let bs = self.block_size as u64;
        if !offset.is_multiple_of(bs) || !len.is_multiple_of(bs) {
            return Err(Errno::EINVAL);
        }
        let size = d.sizes().size;
        if offset + len >= size {
            return Err(Errno::EINVAL);
        }
        let (first, n) = (offset / bs, len / bs);
        // Everything from `offset` on goes to disk and leaves the cache: the blocks move, so no
        // window may keep showing those pages.
        self.dax_revoke(ino, d, offset, u64::MAX);
        self.writeback_inode(ino, d, offset / PAGE_SIZE as u64, u64::MAX)?;
        self.forget_blocks_from(ino, d, first);
        self.unmap_range(ino, first, first + n)?;
        self.shift_extents(ino, first + n, -(n as i64))?;
        {
            let _g = self.ns_write();
            let mut inode = self.read_inode(ino)?;
            let io = NodeIo::new(self, ino, &inode);
            let mut root = inode.block;
            let r = ExtentTree::new(&mut root, &io, self.block_size, ino).merge_at(first as u32);
            self.es.forget_mapped(ino);
            inode.block = root;
            self.adjust_blocks(&mut inode, io.delta.get());
            *d.sizes() = super::Sizes {
                size: size - len,
                disksize: size - len,
            };
            self.store_inode(ino, &inode)?;
            r?;
        }
        self.commit_if_large()
    }

    /// INSERT_RANGE (the kernel's ext4_insert_range): move everything from `offset` on up by
    /// `len`, leaving a hole; the file grows by `len`. Block-aligned, inside the file (EINVAL
    /// otherwise), not past the maximum size (EFBIG).
    fn insert_range(
        &self,
        ino: Ino,
        d: &InodeData,
        offset: u64,
        len: u64,
        max_bytes: u64,
    ) -> Result<()> {
        let bs = self.block_size as u64;
        if !offset.is_multiple_of(bs) || !len.is_multiple_of(bs) {
            return Err(Errno::EINVAL);
        }
        let size = d.sizes().size;
        if offset >= size {
            return Err(Errno::EINVAL);
        }
        if len > max_bytes.saturating_sub(size) {
            return Err(Errno::EFBIG);
        }
        let (first, n) = (offset / bs, len / bs);
        {
            // Blocks allocated past EOF move too: they must stay addressable.
            let _g = self.map_read(d);
            let inode = self.read_inode(ino)?;
            let io = NodeIo::new(self, ino, &inode);
            let mut root = inode.block;
            let end = ExtentTree::new(&mut root, &io, self.block_size, ino).last_end()?;
            if end + n > u32::MAX as u64 {
                return Err(Errno::EFBIG);
            }
        }
        self.dax_revoke(ino, d, offset, u64::MAX);
        self.writeback_inode(ino, d, offset / PAGE_SIZE as u64, u64::MAX)?;
        self.forget_blocks_from(ino, d, first);
        {
            // Split the extent at the offset, and grow the size before anything moves, so a
            // commit while shifting never finds a moved block past EOF.
            let _g = self.ns_write();
            let mut inode = self.read_inode(ino)?;
            let io = NodeIo::new(self, ino, &inode);
            let mut root = inode.block;
            let r = ExtentTree::new(&mut root, &io, self.block_size, ino).split_at(first as u32);
            self.es.forget_mapped(ino);
            inode.block = root;
            self.adjust_blocks(&mut inode, io.delta.get());
            if r.is_ok() {
                let mut s = d.sizes();
                s.size += len;
                s.disksize += len;
            }
            self.store_inode(ino, &inode)?;
            r?;
        }
        self.shift_extents(ino, first, n as i64)?;
        self.commit_if_large()
    }

    /// Move every extent that starts at or after block `from` by `delta` blocks, a bounded batch
    /// of leaves per handle (lowest first when moving left, highest first when moving right), so
    /// each handle fits the log and the tree is valid at every commit point.
    fn shift_extents(&self, ino: Ino, from: u64, delta: i64) -> Result<()> {
        const LEAVES: usize = 8;
        let credits = LEAVES * (crate::ondisk::extent::MAX_DEPTH as usize + 1) + 8;
        let mut range = Some((from.min(u32::MAX as u64) as u32, 1u64 << 32));
        while let Some((lo, hi)) = range {
            let _g = self.ns_write_credits(credits);
            let mut inode = self.read_inode(ino)?;
            let io = NodeIo::new(self, ino, &inode);
            let mut root = inode.block;
            let r =
                ExtentTree::new(&mut root, &io, self.block_size, ino).shift(lo, hi, delta, LEAVES);
            self.es.forget_mapped(ino);
            inode.block = root;
            self.adjust_blocks(&mut inode, io.delta.get());
            self.store_inode(ino, &inode)?;
            range = r?;
        }
        Ok(())
    }

    /// ctime (and mtime when the contents or size changed) move.
    fn touch_times(&self, ino: Ino, mtime: bool) -> Result<()> {
        let _g = self.ns_write();
        let mut i = self.read_inode(ino)?;
        let t = now();
        i.ctime = t;
        if mtime {
            i.mtime = t;
        }
        self.store_inode(ino, &i)
    }

    /// A punch or zero that reaches EOF while i_disksize lags i_size (data there never written
    /// back, now dropped): the on-disk size moves to i_size first, or it would never move (the
    /// kernel's ext4_update_disksize_before_punch).
    fn disksize_before_punch(&self, d: &InodeData, offset: u64, len: u64) {
        let mut s = d.sizes();
        if offset <= s.size && offset.saturating_add(len) >= s.size && s.disksize < s.size {
            s.disksize = s.size;
        }
    }

    /// Unwritten blocks for every hole of `[offset, offset + len)`; dirty pages there are
    /// written back first, so no delayed block is left inside.
    fn allocate_range(&self, ino: Ino, d: &InodeData, offset: u64, len: u64) -> Result<()> {
        let bs = self.block_size as u64;
        let first = offset / bs;
        let end = (offset + len).div_ceil(bs);
        let p0 = offset / PAGE_SIZE as u64;
        let p1 = (offset + len).div_ceil(PAGE_SIZE as u64);
        self.writeback_inode(ino, d, p0, p1)?;
        let mut l = first;
        while l < end {
            let m = {
                let _g = self.map_read(d);
                let inode = self.read_inode(ino)?;
                self.map_block(ino, &inode, l)?
            };
            let run_end = end.min(m.lblk.saturating_add(m.len)).max(l + 1);
            if m.status == Status::Hole {
                let (_, got) = self.alloc_unwritten(ino, d, l, run_end - l)?;
                l += got.min(run_end - l).max(1);
            } else {
                l = run_end;
            }
        }
        self.commit_if_large()
    }

    /// Punch `[offset, offset + len)` (within the size): partial blocks zeroed, whole blocks
    /// unmapped and freed, cached data and reservations dropped.
    fn punch(&self, ino: Ino, d: &InodeData, offset: u64, len: u64, extents: bool) -> Result<()> {
        let size = d.sizes().size;
        if offset >= size {
            return Ok(());
        }
        self.disksize_before_punch(d, offset, len);
        let end = (offset + len).min(size);
        // No window shows the pages while they are cut and their blocks freed.
        let _cut = self.dax_cut(ino, d, offset, end);
        let bs = self.block_size as u64;
        let first_full = offset.div_ceil(bs);
        let end_full = end / bs;
        if first_full > end_full {
            // Inside one block.
            return self.zero_partial(ino, d, offset, end - offset);
        }
        self.zero_partial(ino, d, offset, first_full * bs - offset)?;
        if !end.is_multiple_of(bs) {
            self.zero_partial(ino, d, end_full * bs, end - end_full * bs)?;
        }
        if end_full > first_full {
            self.forget_blocks(ino, d, first_full, end_full - first_full);
            if extents {
                self.unmap_range(ino, first_full, end_full)?;
            } else {
                self.unmap_ind_range(ino, first_full, end_full)?;
            }
        }
        Ok(())
    }

    /// Free the blocks of `[first, end)` of an indirect-mapped file and the indirect blocks
    /// left empty, a bounded slice of the range per handle (so each fits the log).
    fn unmap_ind_range(&self, ino: Ino, first: u64, end: u64) -> Result<()> {
        // At most 16 leaf indirect blocks (and their parents) per handle.
        let step = (self.block_size as u64 / 4) * 16;
        let mut at = first;
        while at < end {
            let to = end.min((at / step + 1) * step);
            {
                let _g = self.ns_write();
                let mut inode = self.read_inode(ino)?;
                self.ind_unmap(ino, &mut inode, at, to)?;
                self.store_inode(ino, &inode)?;
            }
            self.commit_if_large()?;
            at = to;
        }
        Ok(())
    }

    /// Remove the extents of `[first, end)` and free their blocks, a bounded number of leaves
    /// per handle (so each fits the log).
    fn unmap_range(&self, ino: Ino, first: u64, end: u64) -> Result<()> {
        const LEAVES: usize = 4;
        let credits = LEAVES * (crate::ondisk::extent::MAX_DEPTH as usize + 1) + 32;
        let mut at = Some(first.min(u32::MAX as u64) as u32);
        while let Some(start) = at {
            {
                let _g = self.ns_write_credits(credits);
                let mut inode = self.read_inode(ino)?;
                let io = NodeIo::new(self, ino, &inode);
                let mut root = inode.block;
                let r = ExtentTree::new(&mut root, &io, self.block_size, ino).remove_leaves(
                    start,
                    end.min(1 << 32),
                    LEAVES,
                );
                self.es.forget_mapped(ino);
                inode.block = root;
                let (freed, next) = r?;
                let mut n = 0i64;
                for (p, len) in freed {
                    self.alloc.free_blocks(&self.vol, p, len)?;
                    n += len as i64;
                }
                self.adjust_blocks(&mut inode, io.delta.get() - n);
                self.store_inode(ino, &inode)?;
                at = next;
            }
            self.commit_if_large()?;
        }
        Ok(())
    }

    /// copy_file_range through the page cache: up to `len` bytes from `ino_in` at `off_in` to
    /// `ino_out` at `off_out`. Overlapping ranges of one file are refused (EINVAL), as the
    /// kernel does.
    pub fn copy_file_range(
        &self,
        ino_in: Ino,
        off_in: u64,
        ino_out: Ino,
        off_out: u64,
        len: u64,
    ) -> Result<u64> {
        if ino_in == ino_out
            && off_in < off_out.saturating_add(len)
            && off_out < off_in.saturating_add(len)
        {
            return Err(Errno::EINVAL);
        }
        const STEP: u64 = 1 << 20;
        // The length is cut at the source's size when the copy starts (the kernel's
        // generic_copy_file_checks), even when the copy grows the same file.
        let src_size = self.getattr(ino_in)?.size;
        let len = len.min(src_size.saturating_sub(off_in));
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(STEP) as u32;
            let buf = self.read(ino_in, 0, off_in + done, n)?;
            if buf.is_empty() {
                break;
            }
            let w = self.write(ino_out, off_out + done, &buf, 0)?;
            done += w as u64;
            if (w as usize) < buf.len() {
                break;
            }
        }
        Ok(done)
    }
}
