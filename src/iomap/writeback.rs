//! Writeback, the generic loop (the kernel's iomap_writepages): a file's dirty blocks go to the
//! device in batches of at most [`WB_BATCH_PAGES`] pages, one vectored write per mapped run. The
//! file system decides where the blocks go ([`WritebackOps::map_blocks`], its
//! `map_writeback_range`) and finishes the I/O ([`WritebackOps::complete`], the ioend worker:
//! unwritten → written, i_disksize).
//!
//! A batch has three steps. *Plan* (under the file's rw lock, shared): the batch's dirty blocks
//! become clean and **under writeback** in the page map, and get their device blocks. *Write*
//! (no file lock): the data goes to the device, from many threads when the batch has many
//! separate runs. *Complete*: the completed ranges, sorted and merged (`ioend`), are handed to
//! the file system in one call; then the blocks leave writeback. While a block is under
//! writeback nobody changes it (a writer waits for that page), drops it (truncate, punch and
//! the other block-map changes wait for all of the file's writeback: see
//! [`InodeData::write_lock`]) or evicts it. So writers keep writing other pages of the file
//! while its writeback runs, and a page re-dirtied after its write started is simply dirty
//! again for the next pass.
//!
//! A failed data write is logged once with the inode and range, the file system hears of it
//! before the batch completes ([`WritebackOps::write_failed`]: ext4's `data_err=abort` aborts the
//! journal there), its pages are dropped (the data is lost, as the kernel loses it),
//! [`WritebackOps::discard`] lets the file system release what it reserved for them, and the
//! next fsync answers EIO.
//!
//! Lock order: the file's rw lock (plan only) → whatever the ops take (a journal handle, the
//! block map) → the page map's mutex (never held across the data write).

use super::file::FileIo;
use super::ioend;
use super::ops::{WbMap, WritebackOps};
use crate::errno::{Errno, Result};
use crate::pagecache::{PAGE_SIZE, PageIndex, SLAB_PAGES};

/// Most pages one writeback batch takes (16 MiB): the unit of planning, writing and completion.
pub const WB_BATCH_PAGES: usize = 4096;

/// Threads that issue a batch's writes when it has many separate runs (random overwrites):
/// several requests in flight keep the device busy.
const WB_IO_THREADS: usize = 8;

/// Whether the caller of a writeback holds the file's rw lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
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

impl FileIo<'_> {
    fn blocks_per_page(&self) -> u64 {
        PAGE_SIZE as u64 / self.block_size
    }

    /// Write back the dirty pages of `[from, to)` (page indexes), batch by batch, without
    /// waiting for writes other threads have in flight. Pages dirtied meanwhile past the last
    /// page that was dirty at the start are left for the next pass (a writer appending as fast
    /// as we write must not keep an fsync going forever). Returns whether any batch failed
    /// (EIO; the error is also kept for the next fsync).
    pub fn writeback(
        &self,
        ops: &dyn WritebackOps,
        from: PageIndex,
        to: PageIndex,
        hold: Hold,
    ) -> Result<()> {
        let d = self.d;
        let Some(last) = d.pages().last_dirty_before(to) else {
            return Ok(());
        };
        if last < from {
            return Ok(());
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
            let batch = self.plan_batch(ops, &mut cursor, end);
            drop(guard);
            let Some(batch) = batch else { break };
            if let Err(e) = self.run_batch(ops, batch) {
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
        ops: &dyn WritebackOps,
        cursor: &mut PageIndex,
        end: PageIndex,
    ) -> Option<Batch> {
        let bpp = self.blocks_per_page();
        let mut batch = Batch::default();
        {
            let mut m = self.d.pages();
            let dirty = m.dirty_in_limited(*cursor, end, WB_BATCH_PAGES);
            let (last, _) = *dirty.last()?;
            *cursor = last + 1;
            for (idx, mask) in dirty {
                let mask = m.start_writeback(self.pc, idx, mask);
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
                match ops.map_blocks(self, l, end_b) {
                    Ok(WbMap::Io { n, pblk, unwritten }) => {
                        let n = n.clamp(1, end_b - l);
                        batch.ios.push(Io {
                            l,
                            n,
                            pblk,
                            unwritten,
                        });
                        l += n;
                    }
                    Ok(WbMap::Written { n }) => l += n.clamp(1, end_b - l),
                    Ok(WbMap::Again) => {}
                    Err(e) => {
                        log::error!(
                            "inode {}: writeback of blocks {l}..{end_b} failed ({e}): that data is lost",
                            self.ino
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

    /// Write a planned batch, complete it, and take its blocks out of writeback (dropping the
    /// pages whose data could not be written).
    fn run_batch(&self, ops: &dyn WritebackOps, mut batch: Batch) -> Result<()> {
        let d = self.d;
        let bs = self.block_size;
        let bpp = self.blocks_per_page();
        let results = self.write_ios(&batch.ios);
        let mut end = ioend::Ioend::default();
        let mut write_failed = false;
        for (io, r) in batch.ios.iter().zip(results) {
            match r {
                Ok(()) => end.add(io.l, io.n, io.unwritten, bs),
                Err(e) => {
                    batch.failed.push((io.l, io.n));
                    batch.err.get_or_insert(e);
                    write_failed = true;
                }
            }
        }
        if write_failed {
            ops.write_failed();
        }
        if let Err(e) = end.complete(d, ops) {
            log::error!("inode {}: completing writeback failed: {e}", self.ino);
            batch.err.get_or_insert(e);
        }
        let pc = self.pc;
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
            ops.discard(l, n);
        }
        d.writeback_done();
        if let Some(c) = self.cleaned {
            c.notify_all();
        }
        match batch.err {
            Some(e) => {
                d.set_error(Errno::EIO);
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Issue a batch's writes; many separate runs are spread over a few threads.
    fn write_ios(&self, ios: &[Io]) -> Vec<Result<()>> {
        let write = |io: &Io| self.write_blocks(io.l, io.n, io.pblk);
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
    /// The blocks are under writeback, or the caller holds the file's rw lock exclusively.
    pub fn write_blocks(&self, l: u64, n: u64, pblk: u64) -> Result<()> {
        let pc = self.pc;
        let bs = self.block_size;
        let bpp = self.blocks_per_page();
        let chunk_blocks = SLAB_PAGES as u64 * bpp;
        let mut slices: Vec<&[u8]> = Vec::new();
        {
            let m = self.d.pages();
            let mut b = l;
            while b < l + n {
                let e = (l + n).min((b / chunk_blocks + 1) * chunk_blocks);
                let Some((slab, p)) = m.slab_of(b / bpp) else {
                    return Err(crate::corrupt!(
                        "inode {}: dirty block {b} has no page in the cache",
                        self.ino
                    ));
                };
                let off = ((b % bpp) * bs) as usize;
                // SAFETY: these blocks are under writeback (or the caller holds the file's rw
                // lock exclusively, for block-mapped files): no writer changes them (writers wait
                // for a page's writeback), nothing drops or evicts them until `run_batch` takes
                // them out of writeback, after this write; readers fill only blocks that are
                // not uptodate, which these are.
                slices.push(unsafe { pc.arena.bytes(slab, p, off, ((e - b) * bs) as usize) });
                b = e;
            }
        }
        self.dev.write_vectored_at(&slices, pblk * bs).map_err(|e| {
            log::error!(
                "inode {}: I/O error writing blocks {l}..{} to block {pblk}: {e}",
                self.ino,
                l + n
            );
            Errno::EIO
        })
    }
}
