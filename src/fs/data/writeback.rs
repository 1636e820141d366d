//! Writeback and I/O completion: dirty blocks go to the device in runs, one vectored write per
//! run of the block map. Blocks with no block yet (delayed) get **unwritten** extents — the whole
//! delayed extent at once, contiguously where the allocator can — and only after the data write
//! completed are they converted to written, with i_disksize raised to
//! `min(end of completed I/O, i_size)`, in one short handle per pass (sorted, merged ranges).
//! Indirect-mapped (ext3-style) files have no unwritten state: their blocks are allocated and
//! written under the namespace lock, so no commit can carry the map before the data.
//!
//! A failed data write is logged once with the inode and range, its pages are dropped (the data
//! is lost, as the kernel loses it), and the next fsync answers EIO.
//!
//! Lock order: the caller holds the file's rw lock (shared or exclusive) → ns (allocation,
//! completion) → the mapping mutex (never held across the data write).

use super::InodeData;
use crate::errno::{Errno, Result};
use crate::extent::{ExtentTree, Status};
use crate::fs::Fs;
use crate::fs::types::Ino;
use crate::inode::blocks::NodeIo;
use crate::inode::bmap::Target;
use crate::ondisk::extent::Extent;
use crate::ondisk::inode::{Inode, flags};
use crate::pagecache::{PAGE_SIZE, PageIndex, SLAB_PAGES};

/// Longest unwritten extent one allocation asks for (the on-disk limit for unwritten extents).
const MAX_UNWRITTEN: u64 = 32767;

impl Fs {
    /// Write back the dirty pages of `[from, to)` (page indexes) of `ino`. The caller holds
    /// `d.rw` (shared or exclusive).
    pub(in crate::fs) fn writeback_inode(
        &self,
        ino: Ino,
        d: &InodeData,
        from: PageIndex,
        to: PageIndex,
    ) -> Result<()> {
        // Pages a guest may have stored into through a writable window mapping.
        self.dax_redirty(d);
        let dirty = d.pages().dirty_in(from, to);
        if dirty.is_empty() {
            return Ok(());
        }
        if self.is_read_only() {
            return Err(Errno::EROFS);
        }
        let bs = self.block_size as u64;
        let bpp = PAGE_SIZE as u64 / bs;
        // Runs of consecutive dirty blocks.
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (idx, mask) in dirty {
            for b in 0..bpp {
                if mask & (1 << b) == 0 {
                    continue;
                }
                let l = idx * bpp + b;
                match runs.last_mut() {
                    Some((s, n)) if *s + *n == l => *n += 1,
                    _ => runs.push((l, 1)),
                }
            }
        }
        let mut completed: Vec<(u64, u64)> = Vec::new();
        let mut io_end = 0u64;
        let mut first_err = None;
        for (start, len) in runs {
            let mut l = start;
            let end = start + len;
            while l < end {
                let r = self.writeback_step(ino, d, l, end, &mut completed);
                match r {
                    Ok(n) => {
                        self.clear_dirty_blocks(d, l, n);
                        io_end = io_end.max((l + n) * bs);
                        l += n;
                    }
                    Err(e) => {
                        log::error!(
                            "inode {ino}: writeback of blocks {l}..{end} failed ({e}): that data is lost"
                        );
                        self.discard_blocks(ino, d, l, end - l);
                        d.set_error(Errno::EIO);
                        first_err.get_or_insert(e);
                        break;
                    }
                }
            }
        }
        if let Err(e) = self.complete_writeback(ino, d, completed, io_end) {
            log::error!("inode {ino}: completing writeback failed: {e}");
            d.set_error(Errno::EIO);
            first_err.get_or_insert(e);
        }
        match first_err {
            Some(_) => Err(Errno::EIO),
            None => Ok(()),
        }
    }

    /// Write back the dirty blocks from `l` (below `end`) that one map run covers; returns how
    /// many blocks were written. Unwritten ranges written are added to `completed`.
    fn writeback_step(
        &self,
        ino: Ino,
        d: &InodeData,
        l: u64,
        end: u64,
        completed: &mut Vec<(u64, u64)>,
    ) -> Result<u64> {
        let (inode, m) = {
            let _g = self.ns_read();
            let inode = self.read_inode(ino)?;
            let m = self.map_block(ino, &inode, l)?;
            (inode, m)
        };
        let n = end.min(m.lblk.saturating_add(m.len)) - l;
        match m.target {
            Target::Data { pblk, unwritten } => {
                self.write_blocks(ino, d, l, n, pblk)?;
                if unwritten {
                    completed.push((l, n));
                }
                Ok(n)
            }
            Target::Hole if inode.has_flag(flags::EXTENTS) => {
                let (pblk, got) = self.alloc_unwritten(ino, l, end - l)?;
                #[cfg(test)]
                if self
                    .data
                    .commit_after_alloc
                    .load(std::sync::atomic::Ordering::Relaxed)
                {
                    self.sync()?;
                }
                let n = got.min(end - l);
                self.write_blocks(ino, d, l, n, pblk)?;
                completed.push((l, n));
                Ok(n)
            }
            Target::Hole => self.writeback_indirect(ino, d, l, n.min(end - l)),
        }
    }

    /// Write blocks `[l, l + n)` of the file from the cache to `pblk…` in one vectored write.
    fn write_blocks(&self, ino: Ino, d: &InodeData, l: u64, n: u64, pblk: u64) -> Result<()> {
        let pc = &self.data.pc;
        let bs = self.block_size as u64;
        let bpp = PAGE_SIZE as u64 / bs;
        let chunk_blocks = SLAB_PAGES as u64 * bpp;
        let mut slices: Vec<&[u8]> = Vec::new();
        {
            let m = d.pages();
            let mut b = l;
            while b < l + n {
                let e = (l + n).min((b / chunk_blocks + 1) * chunk_blocks);
                let Some((slab, p)) = m.slab_of(b / bpp) else {
                    return Err(crate::corrupt!(
                        "inode {ino}: dirty block {b} has no page in the cache"
                    ));
                };
                let off = ((b % bpp) * bs) as usize;
                // SAFETY: the caller holds the file's rw lock, so no writer changes these dirty
                // blocks while the slices live (they end with this function); readers only fill
                // blocks that are not uptodate, which dirty blocks are not.
                slices.push(unsafe { pc.arena.bytes(slab, p, off, ((e - b) * bs) as usize) });
                b = e;
            }
        }
        self.dev.write_vectored_at(&slices, pblk * bs).map_err(|e| {
            log::error!(
                "inode {ino}: I/O error writing blocks {l}..{} to block {pblk}: {e}",
                l + n
            );
            Errno::EIO
        })
    }

    fn clear_dirty_blocks(&self, d: &InodeData, l: u64, n: u64) {
        let bpp = PAGE_SIZE as u64 / self.block_size as u64;
        let mut m = d.pages();
        for b in l..l + n {
            m.clear_dirty(&self.data.pc, b / bpp, 1 << (b % bpp));
        }
    }

    /// A write failed: the blocks' data is gone from the cache (reads show the disk again) and
    /// delayed blocks lose their reservation.
    fn discard_blocks(&self, ino: Ino, d: &InodeData, l: u64, n: u64) {
        let bpp = PAGE_SIZE as u64 / self.block_size as u64;
        {
            let mut m = d.pages();
            for b in l..l + n {
                m.clear_dirty(&self.data.pc, b / bpp, 1 << (b % bpp));
            }
            // Pages no longer holding trustworthy data go; a later read refills them.
            m.drop_range(&self.data.pc, l / bpp, (l + n).div_ceil(bpp));
        }
        let delayed = self.delayed_in(ino, l, n);
        self.es.remove(ino, l, n);
        self.alloc.release(delayed);
    }

    /// Delayed blocks of `ino` in `[l, l + n)`.
    pub(in crate::fs) fn delayed_in(&self, ino: Ino, l: u64, n: u64) -> u64 {
        self.es
            .ranges(ino, l, n)
            .iter()
            .filter(|(_, _, s)| s.is_delayed())
            .map(|(_, len, _)| len)
            .sum()
    }

    /// Where new blocks for `lblk` should go: after the block before it, else in the inode's
    /// group.
    fn data_goal(&self, ino: Ino, inode: &Inode, lblk: u64) -> u64 {
        if lblk > 0
            && let Ok(m) = self.map_block(ino, inode, lblk - 1)
            && let Target::Data { pblk, .. } = m.target
        {
            return pblk + 1;
        }
        self.alloc
            .geo
            .group_first_block(((ino - 1) / self.sb.inodes_per_group as u64) as u32)
    }

    /// Allocate unwritten blocks for the hole at `lblk`: the whole delayed extent there (at
    /// least `min_len` blocks), as contiguous as the allocator can. Returns (first block, count).
    /// Delayed blocks it covers give their reservation back. When only blocks freed by
    /// uncommitted transactions are left, commit and retry (jbd2's rule).
    pub(in crate::fs) fn alloc_unwritten(
        &self,
        ino: Ino,
        lblk: u64,
        min_len: u64,
    ) -> Result<(u64, u64)> {
        let want = match self.es.lookup(ino, lblk) {
            Some((s, len, Status::Delayed)) => (s + len - lblk).max(min_len),
            _ => min_len,
        }
        .clamp(1, MAX_UNWRITTEN);
        for attempt in 0..2 {
            match self.alloc_unwritten_once(ino, lblk, want) {
                Err(Errno::ENOSPC) if attempt == 0 && self.alloc.busy_blocks() > 0 => {
                    self.sync()?;
                }
                r => return r,
            }
        }
        Err(Errno::ENOSPC)
    }

    fn alloc_unwritten_once(&self, ino: Ino, lblk: u64, want: u64) -> Result<(u64, u64)> {
        let _g = self.ns_write();
        let mut inode = self.read_inode(ino)?;
        // The hole may be shorter than asked (a mapped block further on).
        let m = self.map_block(ino, &inode, lblk)?;
        if m.target != Target::Hole {
            return Err(crate::corrupt!(
                "inode {ino}: block {lblk} was to be allocated but is mapped"
            ));
        }
        let want = want.min(m.len).min(u32::MAX as u64);
        let reserved = self.delayed_in(ino, lblk, want);
        let goal = self.data_goal(ino, &inode, lblk);
        let (pblk, got) =
            self.alloc
                .alloc_data_blocks(&self.vol, goal, want as u32, reserved as u32)?;
        let io = NodeIo::new(self, ino, &inode);
        let mut root = inode.block;
        let r = ExtentTree::new(&mut root, &io, self.block_size, ino).insert(Extent {
            lblk: lblk as u32,
            len: got,
            pblk,
            unwritten: true,
        });
        self.es.forget_mapped(ino);
        if let Err(e) = r {
            self.alloc.free_blocks(&self.vol, pblk, got)?;
            return Err(e);
        }
        inode.block = root;
        self.adjust_blocks(&mut inode, got as i64 + io.delta.get());
        self.store_inode(ino, &inode)?;
        let delayed = self.delayed_in(ino, lblk, got as u64);
        self.es.remove(ino, lblk, got as u64);
        self.alloc.release(delayed);
        Ok((pblk, got as u64))
    }

    /// Indirect-mapped file: allocate, map and write blocks `[l, l + n)` (a hole) under the
    /// namespace lock, so the map cannot commit before the data is on the device. Returns how
    /// many blocks from `l` went home. When only blocks freed by uncommitted transactions are
    /// left, commit and retry (jbd2's rule), as `alloc_unwritten` does.
    fn writeback_indirect(&self, ino: Ino, d: &InodeData, l: u64, n: u64) -> Result<u64> {
        for attempt in 0..2 {
            match self.writeback_indirect_once(ino, d, l, n) {
                Err(Errno::ENOSPC) if attempt == 0 && self.alloc.busy_blocks() > 0 => {
                    self.sync()?;
                }
                r => return r,
            }
        }
        Err(Errno::ENOSPC)
    }

    fn writeback_indirect_once(&self, ino: Ino, d: &InodeData, l: u64, n: u64) -> Result<u64> {
        let _g = self.ns_write();
        let mut inode = self.read_inode(ino)?;
        let mut done = 0;
        let mut goal = 0;
        let mut failed = None;
        while done < n {
            let b = l + done;
            // The block's reservation turns into the allocation.
            let delayed = self.delayed_in(ino, b, 1);
            self.es.remove(ino, b, 1);
            self.alloc.release(delayed);
            let pblk =
                match self.map_new_data_block(ino, &mut inode, b as u32, goal, delayed as u32) {
                    Ok(p) => p,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                };
            goal = pblk + 1;
            if let Err(e) = self.write_blocks(ino, d, b, 1, pblk) {
                self.store_inode(ino, &inode)?;
                return Err(e);
            }
            done += 1;
        }
        // What was mapped and written stays (the inode holds its new pointers).
        if done > 0 {
            let bs = self.block_size as u64;
            let mut s = d.sizes();
            s.disksize = s.disksize.max(((l + done) * bs).min(s.size));
        }
        self.store_inode(ino, &inode)?;
        match failed {
            Some(e) if done == 0 => Err(e),
            _ => Ok(done),
        }
    }

    /// I/O completion: convert the written unwritten ranges (sorted, merged) and raise
    /// i_disksize to min(end of completed I/O, i_size), in one handle.
    fn complete_writeback(
        &self,
        ino: Ino,
        d: &InodeData,
        mut done: Vec<(u64, u64)>,
        io_end: u64,
    ) -> Result<()> {
        done.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (s, n) in done {
            match merged.last_mut() {
                Some((ps, pn)) if *ps + *pn >= s => *pn = (*pn).max(s + n - *ps),
                _ => merged.push((s, n)),
            }
        }
        let new_disksize = {
            let s = d.sizes();
            s.disksize.max(io_end.min(s.size))
        };
        if merged.is_empty() && new_disksize == d.sizes().disksize {
            return Ok(());
        }
        let _g = self.ns_write();
        let mut inode = self.read_inode(ino)?;
        let mut r = Ok(());
        for (s, n) in merged {
            r = self.convert_written(ino, &mut inode, s, n);
            if r.is_err() {
                break;
            }
        }
        d.sizes().disksize = new_disksize;
        self.store_inode(ino, &inode)?;
        r
    }

    /// Mark `[l, l + n)` (unwritten, fully mapped) written.
    fn convert_written(&self, ino: Ino, inode: &mut Inode, l: u64, n: u64) -> Result<()> {
        let io = NodeIo::new(self, ino, inode);
        let mut root = inode.block;
        let r = (|| {
            let mut tree = ExtentTree::new(&mut root, &io, self.block_size, ino);
            let runs = tree.remove(l as u32, l + n)?;
            let total: u64 = runs.iter().map(|(_, len)| *len as u64).sum();
            if total != n {
                return Err(crate::corrupt!(
                    "inode {ino}: blocks {l}..{} were written but only {total} are mapped",
                    l + n
                ));
            }
            let mut at = l;
            for (pblk, len) in runs {
                tree.insert(Extent {
                    lblk: at as u32,
                    len,
                    pblk,
                    unwritten: false,
                })?;
                at += len as u64;
            }
            Ok(())
        })();
        self.es.forget_mapped(ino);
        inode.block = root;
        self.adjust_blocks(inode, io.delta.get());
        r
    }
}
