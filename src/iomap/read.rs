//! Buffered read, the generic loop (the kernel's iomap buffered read and readahead): the blocks
//! a read needs that are not uptodate in the page cache are read in — with readahead, whole
//! runs of the block map in one device request per 2 MiB chunk — then the reply is handed out
//! of the cache. Holes, unwritten and delayed blocks read as zeros (delayed blocks are always in
//! the cache, dirty). The data goes to a [`ReadSink`] as slices of the cache, so it is copied
//! once, from the cache to wherever the reader wants it.
//!
//! Lock order: the file's rw lock shared (the caller) → what [`IomapOps::map`] takes → the page
//! map's mutex.

use super::file::FileIo;
use super::mapping::Status;
use super::ops::IomapOps;
use crate::errno::{Errno, Result};
use crate::pagecache::{NoSlab, PAGE_SIZE, SLAB_PAGES, SlabId};
use std::sync::atomic::Ordering;

/// Readahead for a read that does not continue the previous one.
const RA_RANDOM: u64 = 128 << 10;
/// Readahead for sequential reads: a whole chunk.
const RA_SEQUENTIAL: u64 = 2 << 20;

/// Where a read's data goes. The engine hands over the whole result in one call, as slices in
/// file order — of the page cache itself where the data is cached, so the sink copies it once,
/// straight to its destination (a guest's buffers, a `writev` to `/dev/fuse`). The slices are
/// valid only during the call: the file's pages are pinned (its rw lock held shared) meanwhile.
pub trait ReadSink {
    /// Take the data read; `parts` may be empty (end of file). Called at most once per read,
    /// and not at all when the read fails before. An error here fails the read with EIO.
    fn put(&mut self, parts: &[&[u8]]) -> std::io::Result<()>;
}

/// Collects the data (appends it to the vector).
impl ReadSink for Vec<u8> {
    fn put(&mut self, parts: &[&[u8]]) -> std::io::Result<()> {
        for p in parts {
            self.extend_from_slice(p);
        }
        Ok(())
    }
}

/// Zeros for pages that are not resident (never the case after `cache_range`, but a sink must
/// get exactly the bytes the read covers).
static ZEROS: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

/// A byte of the cache: slab, page within it, offset within the page.
type PageAt = (SlabId, usize, usize);

impl FileIo<'_> {
    /// Hand `[from, to)` of the file, which [`FileIo::cache_range`] made uptodate, to `sink` as
    /// slices of the cache (runs of pages contiguous in a slab as one slice), and remember
    /// where a sequential read would continue. Returns the bytes handed over. The caller holds
    /// the file's rw lock shared until this returns.
    pub fn read_cached(&self, from: u64, to: u64, sink: &mut dyn ReadSink) -> Result<usize> {
        let d = self.d;
        // Where the bytes are: runs of pages contiguous in one slab become one slice.
        let mut runs: Vec<(Option<PageAt>, usize)> = Vec::new();
        {
            let m = d.pages();
            let mut pos = from;
            while pos < to {
                let idx = pos / PAGE_SIZE as u64;
                let poff = (pos % PAGE_SIZE as u64) as usize;
                let n = ((PAGE_SIZE - poff) as u64).min(to - pos) as usize;
                let at = match m.slab_of(idx) {
                    Some((slab, p)) if m.state(idx).resident => Some((slab, p, poff)),
                    _ => None,
                };
                match (runs.last_mut(), at) {
                    (Some((Some((s0, p0, o0)), len)), Some((slab, p, poff)))
                        if *s0 == slab && *p0 * PAGE_SIZE + *o0 + *len == p * PAGE_SIZE + poff =>
                    {
                        *len += n
                    }
                    _ => runs.push((at, n)),
                }
                pos += n as u64;
            }
        }
        let pc = self.pc;
        let mut parts: Vec<&[u8]> = Vec::with_capacity(runs.len());
        for &(at, len) in &runs {
            match at {
                // SAFETY: the file's rw lock is held shared until the sink has returned: the
                // writers of these pages (write, truncate, fallocate) and eviction all take it
                // exclusively, so nothing changes or frees them while the slices live; they are
                // uptodate, so no reader fills them either.
                Some((slab, p, poff)) => parts.push(unsafe { pc.arena.bytes(slab, p, poff, len) }),
                None => parts.push(&ZEROS[..len]),
            }
        }
        let n = put(self.ino, sink, &parts)?;
        drop(parts);
        d.ra_next.store(to, Ordering::Relaxed);
        Ok(n)
    }

    /// Make the blocks of `[from, to)` uptodate in the cache, reading ahead past `to` (within
    /// the file size `fsize`). False when the cache has no slab to spare.
    pub fn cache_range(&self, ops: &dyn IomapOps, from: u64, to: u64, fsize: u64) -> Result<bool> {
        let d = self.d;
        let bs = self.block_size;
        let bpp = PAGE_SIZE as u64 / bs;
        let first = from / bs;
        let need_end = to.div_ceil(bs);
        // Quick check: everything needed is already there.
        let missing = |l: u64, m: &crate::pagecache::Mapping| {
            m.state(l / bpp).uptodate & (1 << (l % bpp)) == 0
        };
        {
            let mut m = d.pages();
            if !(first..need_end).any(|l| missing(l, &m)) {
                m.touch(self.pc, first / bpp);
                return Ok(true);
            }
        }
        let window = if d.ra_next.load(Ordering::Relaxed) == from {
            RA_SEQUENTIAL
        } else {
            RA_RANDOM
        };
        let last = fsize
            .div_ceil(bs)
            .min(need_end.max((from + window).div_ceil(bs)));
        let mut l = first;
        while l < last {
            // The run of the block map around `l`, cut at the chunk's end (one slab).
            let m = ops.map(l)?;
            let chunk_end = (l / bpp / SLAB_PAGES as u64 + 1) * SLAB_PAGES as u64 * bpp;
            let run_end = last
                .min(m.lblk.saturating_add(m.len))
                .min(chunk_end)
                .max(l + 1);
            // Blocks of the run not uptodate, in sub-runs.
            let mut b = l;
            while b < run_end {
                let pages = d.pages();
                if !missing(b, &pages) {
                    drop(pages);
                    b += 1;
                    continue;
                }
                let mut e = b + 1;
                while e < run_end && missing(e, &pages) {
                    e += 1;
                }
                drop(pages);
                // Past what the caller needs, readahead stops at the first cached block.
                if !self.fill_run(ops, b, e, m.status, m.lblk)? {
                    return Ok(b >= need_end);
                }
                b = e;
            }
            l = run_end;
        }
        Ok(true)
    }

    /// Read blocks `[b, e)` (one chunk, one map run starting at `run_lblk` with `target`) into
    /// their pages and mark them uptodate. False when no slab is free.
    fn fill_run(
        &self,
        ops: &dyn IomapOps,
        b: u64,
        e: u64,
        status: Status,
        run_lblk: u64,
    ) -> Result<bool> {
        let (d, pc) = (self.d, self.pc);
        let bs = self.block_size;
        let bpp = PAGE_SIZE as u64 / bs;
        let (slab, p0) = {
            let mut m = d.pages();
            let mut first = None;
            for idx in b / bpp..=(e - 1) / bpp {
                match m.get_or_create(pc, idx) {
                    Ok(x) => {
                        first.get_or_insert(x);
                    }
                    Err(NoSlab) => {
                        drop(m);
                        // Other files' clean pages only: readers of this file may hold
                        // slices of its pages.
                        ops.make_room(false, 0)?;
                        m = d.pages();
                        match m.get_or_create(pc, idx) {
                            Ok(x) => {
                                first.get_or_insert(x);
                            }
                            Err(NoSlab) => return Ok(false),
                        }
                    }
                }
            }
            match first {
                Some(x) => x,
                None => return Ok(false),
            }
        };
        let off = ((b % bpp) * bs) as usize;
        let len = ((e - b) * bs) as usize;
        match status.written_pblk() {
            Some(pblk) => {
                let dev_off = (pblk + (b - run_lblk)) * bs;
                // SAFETY: these blocks are not uptodate, so no writer or writeback touches
                // them; the file's rw lock is held (shared) so no truncate drops the pages;
                // concurrent readers fill them with the same bytes.
                let dst = unsafe { pc.arena.bytes_mut(slab, p0, off, len) };
                self.dev.read_at(dst, dev_off).map_err(|err| {
                    log::error!(
                        "inode {}: I/O error reading data at byte {dev_off}: {err}",
                        self.ino
                    );
                    Errno::EIO
                })?;
            }
            _ => pc.arena.zero(slab, p0, off, len),
        }
        let mut m = d.pages();
        for l in b..e {
            m.set_uptodate(l / bpp, 1 << (l % bpp));
        }
        Ok(true)
    }
}

/// Give `parts` to the sink; its failure is the read's EIO.
pub fn put(ino: u64, sink: &mut dyn ReadSink, parts: &[&[u8]]) -> Result<usize> {
    sink.put(parts).map_err(|e| {
        log::debug!("inode {ino}: the reader did not take the data: {e}");
        Errno::EIO
    })?;
    Ok(parts.iter().map(|p| p.len()).sum())
}
