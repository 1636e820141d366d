//! Writeback and I/O completion: dirty blocks go to the device in batches of at most
//! [`WB_BATCH_PAGES`] pages, one vectored write per run of the block map. Blocks with no block
//! yet (delayed) get **unwritten** extents — the whole delayed extent at once, contiguously
//! where the allocator can — and only after the data write completed are they converted to
//! written, with i_disksize raised to `min(end of completed I/O, i_size)`, in one short handle
//! per batch (sorted, merged ranges). Indirect-mapped (ext3-style) files have no unwritten
//! state: their blocks are allocated and written under the namespace lock, so no commit can
//! carry the map before the data.
//!
//! A batch has three steps. *Plan* (under the file's rw lock, shared): the batch's dirty blocks
//! become clean and **under writeback** in the page map, and get their device blocks. *Write*
//! (no file lock): the data goes to the device, from many threads when the batch has many
//! separate runs. *Complete* (the namespace lock, briefly): unwritten → written, i_disksize,
//! then the blocks leave writeback. While a block is under writeback nobody changes it (a
//! writer waits for that page), drops it (truncate, punch and the other block-map changes wait
//! for all of the file's writeback: see `InodeData::write_lock`) or evicts it. So writers keep
//! writing other pages of the file while its writeback runs, and a page re-dirtied after its
//! write started is simply dirty again for the next pass.
//!
//! A failed data write is logged once with the inode and range, its pages are dropped (the data
//! is lost, as the kernel loses it), and the next fsync answers EIO.
//!
//! Lock order: the file's rw lock (plan only) → ns (allocation, completion) → the mapping mutex
//! (never held across the data write).

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

/// Most pages one writeback batch takes (16 MiB): the unit of planning, writing and completion.
pub(super) const WB_BATCH_PAGES: usize = 4096;

/// Threads that issue a batch's writes when it has many separate runs (random overwrites):
/// several requests in flight keep the device busy.
const WB_IO_THREADS: usize = 8;

/// Whether the caller of a writeback holds the file's rw lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::fs) enum Hold {
    /// The caller holds it (shared or exclusive) throughout.
    Caller,
    /// Take it shared to plan each batch; the writes run without it.
    Take,
    /// As `Take`, but stop (leave the rest dirty) when a writer holds it.
    TryTake,
}

/// One device write of a batch: blocks `[l, l + n)` of the file to `pblk…`.
struct Io {
    l: u64,
    n: u64,
    pblk: u64,
    unwritten: bool,
}

/// A planned batch: every block of `runs` is under writeback.
#[derive(Default)]
struct Batch {
    runs: Vec<(u64, u64)>,
    ios: Vec<Io>,
    /// Ranges whose data is lost (mapping or writing them failed).
    failed: Vec<(u64, u64)>,
    err: Option<Errno>,
}

impl Fs {
    /// Write back the dirty pages of `[from, to)` (page indexes) of `ino` and wait for every
    /// write of that range in flight (ours or another thread's) to complete. The caller holds
    /// `d.rw` (shared or exclusive).
    pub(in crate::fs) fn writeback_inode(
        &self,
        ino: Ino,
        d: &InodeData,
        from: PageIndex,
        to: PageIndex,
    ) -> Result<()> {
        let r = self.writeback_file(ino, d, from, to, Hold::Caller);
        d.wait_writeback(from, to);
        r
    }

    /// Write back the dirty pages of `[from, to)` of `ino`, batch by batch, without waiting for
    /// writes other threads have in flight. Pages dirtied meanwhile past the last page that was
    /// dirty at the start are left for the next pass (a writer appending as fast as we write
    /// must not keep an fsync going forever).
    pub(in crate::fs) fn writeback_file(
        &self,
        ino: Ino,
        d: &InodeData,
        from: PageIndex,
        to: PageIndex,
        hold: Hold,
    ) -> Result<()> {
        // Pages a guest may have stored into through a writable window mapping.
        self.dax_redirty(d);
        let Some(last) = d.pages().last_dirty_before(to) else {
            return Ok(());
        };
        if last < from {
            return Ok(());
        }
        if self.is_read_only() {
            return Err(Errno::EROFS);
        }
        let end = last + 1;
        let mut cursor = from;
        let mut first_err = None;
        while cursor < end {
            let guard = match hold {
                Hold::Caller => None,
                Hold::Take => Some(d.read_lock()),
                Hold::TryTake => match d.rw.try_read() {
                    Ok(g) => Some(g),
                    Err(_) => break,
                },
            };
            let batch = self.plan_batch(ino, d, &mut cursor, end);
            drop(guard);
            let Some(batch) = batch else { break };
            if let Err(e) = self.run_batch(ino, d, batch) {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(_) => Err(Errno::EIO),
            None => Ok(()),
        }
    }

    /// Plan the next batch from `cursor` (below `end`): put its dirty blocks under writeback
    /// and map (allocate) them. `None` when nothing is dirty there. The file's rw lock is held.
    fn plan_batch(
        &self,
        ino: Ino,
        d: &InodeData,
        cursor: &mut PageIndex,
        end: PageIndex,
    ) -> Option<Batch> {
        let bpp = PAGE_SIZE as u64 / self.block_size as u64;
        let mut batch = Batch::default();
        {
            let mut m = d.pages();
            let dirty = m.dirty_in_limited(*cursor, end, WB_BATCH_PAGES);
            let (last, _) = *dirty.last()?;
            *cursor = last + 1;
            for (idx, mask) in dirty {
                let mask = m.start_writeback(&self.data.pc, idx, mask);
                for b in 0..bpp {
                    if mask & (1 << b) == 0 {
                        continue;
                    }
                    let l = idx * bpp + b;
                    match batch.runs.last_mut() {
                        Some((s, n)) if *s + *n == l => *n += 1,
                        _ => batch.runs.push((l, 1)),
                    }
                }
            }
        }
        for i in 0..batch.runs.len() {
            let (start, len) = batch.runs[i];
            let end_b = start + len;
            let mut l = start;
            while l < end_b {
                match self.map_for_writeback(ino, d, l, end_b, &mut batch.ios) {
                    Ok(n) => l += n,
                    Err(e) => {
                        log::error!(
                            "inode {ino}: writeback of blocks {l}..{end_b} failed ({e}): that data is lost"
                        );
                        batch.failed.push((l, end_b - l));
                        batch.err.get_or_insert(e);
                        break;
                    }
                }
            }
        }
        Some(batch)
    }

    /// Map the dirty blocks from `l` (below `end`) that one map run covers, allocating
    /// unwritten blocks for a hole; queue the write in `ios` and return how many blocks it
    /// covers (0: the hole was filled meanwhile, map again). Indirect-mapped files are
    /// allocated and written here, under the namespace lock.
    fn map_for_writeback(
        &self,
        ino: Ino,
        d: &InodeData,
        l: u64,
        end: u64,
        ios: &mut Vec<Io>,
    ) -> Result<u64> {
        let (inode, m) = {
            let _g = self.map_read(d);
            let inode = self.read_inode(ino)?;
            let m = self.map_block(ino, &inode, l)?;
            (inode, m)
        };
        let n = end.min(m.lblk.saturating_add(m.len)) - l;
        match m.target {
            Target::Data { pblk, unwritten } => {
                ios.push(Io {
                    l,
                    n,
                    pblk,
                    unwritten,
                });
                Ok(n)
            }
            Target::Hole if inode.has_flag(flags::EXTENTS) => {
                let (pblk, got) = self.alloc_unwritten(ino, d, l, end - l)?;
                if got == 0 {
                    return Ok(0);
                }
                #[cfg(test)]
                if self
                    .data
                    .commit_after_alloc
                    .load(std::sync::atomic::Ordering::Relaxed)
                {
                    self.sync()?;
                }
                let n = got.min(end - l);
                ios.push(Io {
                    l,
                    n,
                    pblk,
                    unwritten: true,
                });
                Ok(n)
            }
            Target::Hole => self.writeback_indirect(ino, d, l, n.min(end - l)),
        }
    }

    /// Write a planned batch, complete it, and take its blocks out of writeback (dropping the
    /// pages whose data could not be written).
    fn run_batch(&self, ino: Ino, d: &InodeData, mut batch: Batch) -> Result<()> {
        let bs = self.block_size as u64;
        let bpp = PAGE_SIZE as u64 / bs;
        let results = self.write_ios(ino, d, &batch.ios);
        let mut completed: Vec<(u64, u64)> = Vec::new();
        let mut io_end = 0u64;
        for (io, r) in batch.ios.iter().zip(results) {
            match r {
                Ok(()) => {
                    if io.unwritten {
                        completed.push((io.l, io.n));
                    }
                    io_end = io_end.max((io.l + io.n) * bs);
                }
                Err(e) => {
                    batch.failed.push((io.l, io.n));
                    batch.err.get_or_insert(e);
                }
            }
        }
        if let Err(e) = self.complete_writeback(ino, d, completed, io_end) {
            log::error!("inode {ino}: completing writeback failed: {e}");
            batch.err.get_or_insert(e);
        }
        let pc = &self.data.pc;
        {
            let mut m = d.pages();
            for &(l, n) in &batch.runs {
                let mut b = l;
                while b < l + n {
                    let idx = b / bpp;
                    let mut mask = 0u8;
                    while b < l + n && b / bpp == idx {
                        mask |= 1 << (b % bpp);
                        b += 1;
                    }
                    m.end_writeback(pc, idx, mask);
                }
            }
            // Pages no longer holding trustworthy data go; a later read refills them.
            for &(l, n) in &batch.failed {
                for idx in l / bpp..(l + n).div_ceil(bpp) {
                    if !m.writeback_in(idx, idx + 1) {
                        m.drop_range(pc, idx, idx + 1);
                    }
                }
            }
        }
        for &(l, n) in &batch.failed {
            let delayed = self.delayed_in(ino, l, n);
            self.es.remove(ino, l, n);
            self.alloc.release(delayed);
        }
        d.writeback_done();
        self.data.kick.cleaned.notify_all();
        match batch.err {
            Some(e) => {
                d.set_error(Errno::EIO);
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Issue a batch's writes; many separate runs are spread over a few threads.
    fn write_ios(&self, ino: Ino, d: &InodeData, ios: &[Io]) -> Vec<Result<()>> {
        let write = |io: &Io| self.write_blocks(ino, d, io.l, io.n, io.pblk);
        if ios.len() < 2 * WB_IO_THREADS {
            return ios.iter().map(write).collect();
        }
        let per = ios.len().div_ceil(WB_IO_THREADS);
        std::thread::scope(|s| {
            let parts: Vec<_> = ios
                .chunks(per)
                .map(|part| {
                    let h = std::thread::Builder::new()
                        .name("writeback-io".into())
                        .spawn_scoped(s, move || part.iter().map(write).collect::<Vec<_>>());
                    (part, h)
                })
                .collect();
            parts
                .into_iter()
                .flat_map(|(part, h)| match h {
                    Ok(h) => h
                        .join()
                        .unwrap_or_else(|_| part.iter().map(|_| Err(Errno::EIO)).collect()),
                    // No thread to spare: this part is written here.
                    Err(_) => part.iter().map(write).collect(),
                })
                .collect()
        })
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
                // SAFETY: these blocks are under writeback (or the caller holds the file's rw
                // lock exclusively, for ext3-style files): no writer changes them (writers wait
                // for a page's writeback), nothing drops or evicts them until `run_batch` takes
                // them out of writeback, after this write; readers fill only blocks that are
                // not uptodate, which these are.
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
    /// least `min_len` blocks), as contiguous as the allocator can. Returns (first block, count);
    /// the count is 0 when the block was mapped meanwhile (by a concurrent writeback).
    /// Delayed blocks it covers give their reservation back. When only blocks freed by
    /// uncommitted transactions are left, commit and retry (jbd2's rule).
    pub(in crate::fs) fn alloc_unwritten(
        &self,
        ino: Ino,
        d: &InodeData,
        lblk: u64,
        min_len: u64,
    ) -> Result<(u64, u64)> {
        let want = match self.es.lookup(ino, lblk) {
            Some((s, len, Status::Delayed)) => (s + len - lblk).max(min_len),
            _ => min_len,
        }
        .clamp(1, MAX_UNWRITTEN);
        for attempt in 0..2 {
            match self.alloc_unwritten_once(ino, d, lblk, want) {
                Err(Errno::ENOSPC) if attempt == 0 && self.alloc.busy_blocks() > 0 => {
                    self.sync()?;
                }
                r => return r,
            }
        }
        Err(Errno::ENOSPC)
    }

    fn alloc_unwritten_once(
        &self,
        ino: Ino,
        d: &InodeData,
        lblk: u64,
        want: u64,
    ) -> Result<(u64, u64)> {
        // The file's data lock, not the namespace lock: other files allocate at the same time.
        let _g = self.data_step(d);
        let mut inode = self.read_inode(ino)?;
        // The hole may be shorter than asked (a mapped block further on).
        let m = self.map_block(ino, &inode, lblk)?;
        if m.target != Target::Hole {
            // Another writeback of the file allocated it meanwhile.
            return Ok((0, 0));
        }
        let want = want.min(m.len).min(u32::MAX as u64);
        let reserved = self.delayed_in(ino, lblk, want);
        let goal = self.data_goal(ino, &inode, lblk);
        let (pblk, got) =
            self.alloc
                .alloc_data_blocks(&self.vol, goal, want as u32, reserved as u32)?;
        // The reservation of the delayed blocks just allocated is spent: give it back before
        // the extent tree grows, or the tree's new block would find these blocks counted twice
        // (taken and still reserved) and meet ENOSPC for data that was reserved.
        let delayed = self.delayed_in(ino, lblk, got as u64);
        self.alloc.release(delayed);
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
            // The blocks stay delayed: their reservation comes back with them.
            self.alloc.restore(delayed);
            self.alloc.free_blocks(&self.vol, pblk, got)?;
            return Err(e);
        }
        inode.block = root;
        self.adjust_blocks(&mut inode, got as i64 + io.delta.get());
        self.store_inode(ino, &inode)?;
        self.es.remove(ino, lblk, got as u64);
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
        // The file's data lock, not the namespace lock: other files complete at the same time.
        let _g = self.data_step(d);
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
