//! Cached reads: the blocks a read needs that are not uptodate in the page cache are read in —
//! with readahead, whole runs of the block map in one device request per 2 MiB chunk — then
//! the reply is copied out of the cache. Holes, unwritten and delayed blocks read as zeros
//! (delayed blocks are always in the cache, dirty). The data goes to a [`ReadSink`] as slices of
//! the cache, so it is copied once, from the cache to wherever the reader wants it.
//!
//! Lock order: the file's rw lock shared → ns shared (block map lookups) → the mapping mutex.

use super::InodeData;
use crate::errno::{Errno, Result};
use crate::fs::Fs;
use crate::fs::types::Ino;
use crate::inode::bmap::Target;
use crate::ondisk::inode::{Inode, flags};
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

impl Fs {
    /// Read up to `size` bytes at `offset`; short only at end of file.
    pub fn read(&self, ino: Ino, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.read_into(ino, fh, offset, size, &mut v)?;
        Ok(v)
    }

    /// [`Fs::read`], appending the bytes to `out`. On error `out` is left as it was.
    pub fn read_into(
        &self,
        ino: Ino,
        fh: u64,
        offset: u64,
        size: u32,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let start = out.len();
        let r = self.read_to(ino, fh, offset, size, out);
        if r.is_err() {
            out.truncate(start);
        }
        r.map(|_| ())
    }

    /// Read up to `size` bytes at `offset` into `sink` (see [`ReadSink`]): the data is copied
    /// once, from the page cache to the sink's destination. Returns the bytes read.
    pub fn read_to(
        &self,
        ino: Ino,
        _fh: u64,
        offset: u64,
        size: u32,
        sink: &mut dyn ReadSink,
    ) -> Result<usize> {
        let mut seen = None;
        let n = self.read_cached(ino, offset, size, sink, &mut seen)?;
        // A read moves atime as the mount's option says (see `atime`).
        if size != 0
            && let Some(inode) = seen
        {
            self.accessed(ino, &inode);
        }
        Ok(n)
    }

    /// The read itself; `seen` gets the inode as it was at the start (for the atime update).
    fn read_cached(
        &self,
        ino: Ino,
        offset: u64,
        size: u32,
        sink: &mut dyn ReadSink,
        seen: &mut Option<Inode>,
    ) -> Result<usize> {
        let put = |sink: &mut dyn ReadSink, parts: &[&[u8]]| -> Result<usize> {
            sink.put(parts).map_err(|e| {
                log::debug!("inode {ino}: the reader did not take the data: {e}");
                Errno::EIO
            })?;
            Ok(parts.iter().map(|p| p.len()).sum())
        };
        let inode = {
            let _g = self.ns_read();
            self.read_inode(ino)?
        };
        if inode.is_dir() {
            return Err(Errno::EISDIR);
        }
        *seen = Some(inode.clone());
        if !inode.is_reg()
            || inode.has_flag(flags::INLINE_DATA)
            || self.block_size as usize > PAGE_SIZE
        {
            let v = {
                let _g = self.ns_read();
                self.read_data(ino, &inode, offset, size)?
            };
            return put(sink, &[&v]);
        }
        let d = self.inode_data(ino)?;
        let _r = d.read_lock();
        let fsize = d.sizes().size;
        if offset >= fsize || size == 0 {
            return put(sink, &[]);
        }
        let end = fsize.min(offset + size as u64);
        self.dax_redirty_range(&d, offset, end);
        if !self.cache_range(ino, &d, offset, end, fsize)? {
            // No room in the cache at all: put the dirty data of the range on disk, then read
            // around the cache.
            let p0 = offset / PAGE_SIZE as u64;
            let p1 = end.div_ceil(PAGE_SIZE as u64);
            self.writeback_inode(ino, &d, p0, p1)?;
            let v = {
                let _g = self.map_read(&d);
                let mut inode = self.read_inode(ino)?;
                inode.size = fsize;
                self.read_data(ino, &inode, offset, size)?
            };
            return put(sink, &[&v]);
        }
        // Where the bytes are: runs of pages contiguous in one slab become one slice.
        let mut runs: Vec<(Option<PageAt>, usize)> = Vec::new();
        {
            let m = d.pages();
            let mut pos = offset;
            while pos < end {
                let idx = pos / PAGE_SIZE as u64;
                let poff = (pos % PAGE_SIZE as u64) as usize;
                let n = ((PAGE_SIZE - poff) as u64).min(end - pos) as usize;
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
        let pc = &self.data.pc;
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
        let n = put(sink, &parts)?;
        drop(parts);
        d.ra_next.store(end, Ordering::Relaxed);
        if self.data.pc.over_limit() > 0 {
            self.shrink_cache(None);
        }
        Ok(n)
    }

    /// Make the blocks of `[from, to)` uptodate in the cache, reading ahead past `to` (within
    /// the file size `fsize`). False when the cache has no slab to spare.
    pub(super) fn cache_range(
        &self,
        ino: Ino,
        d: &InodeData,
        from: u64,
        to: u64,
        fsize: u64,
    ) -> Result<bool> {
        let bs = self.block_size as u64;
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
                m.touch(&self.data.pc, first / bpp);
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
        let inode = {
            let _g = self.ns_read();
            self.read_inode(ino)?
        };
        let mut l = first;
        while l < last {
            // The run of the block map around `l`, cut at the chunk's end (one slab).
            let m = {
                let _g = self.map_read(d);
                self.map_block(ino, &inode, l)?
            };
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
                if !self.fill_run(ino, d, b, e, m.target, m.lblk)? {
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
        ino: Ino,
        d: &InodeData,
        b: u64,
        e: u64,
        target: Target,
        run_lblk: u64,
    ) -> Result<bool> {
        let pc = &self.data.pc;
        let bs = self.block_size as u64;
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
                        self.shrink_cache(None);
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
        match target {
            Target::Data {
                pblk,
                unwritten: false,
            } => {
                let dev_off = (pblk + (b - run_lblk)) * bs;
                // SAFETY: these blocks are not uptodate, so no writer or writeback touches
                // them; the file's rw lock is held (shared) so no truncate drops the pages;
                // concurrent readers fill them with the same bytes.
                let dst = unsafe { pc.arena.bytes_mut(slab, p0, off, len) };
                self.dev.read_at(dst, dev_off).map_err(|err| {
                    log::error!("inode {ino}: I/O error reading data at byte {dev_off}: {err}");
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
