//! Buffered write, the generic loop (the kernel's iomap_write_iter with write_begin /
//! write_end): the file system makes room for the blocks first ([`WriteOps::begin`]: a delalloc
//! reservation, or unwritten blocks), then the payload is copied into the page cache once —
//! partial blocks read in (or zeroed) first — and the blocks are marked dirty; i_size moves,
//! i_disksize does not. A short or failed copy hands the blocks it did not reach back
//! ([`WriteOps::end_short`]), so no reservation is left without a dirty page over it.
//!
//! Lock order: the file's rw lock exclusively (the caller) → what the ops take → the page
//! map's mutex.

use super::file::FileIo;
use super::ops::{IomapOps, WriteOps};
use crate::errno::{Errno, Result};
use crate::pagecache::{Mapping as Pages, NoSlab, PAGE_SIZE, PageIndex, SLAB_PAGES, SlabId};

/// The payload of a write: [`WriteSource::len`] bytes, copied out front to back, each byte once,
/// straight into the page cache. A guest's descriptor memory or a slice of a request buffer.
pub trait WriteSource {
    /// The bytes the source holds.
    fn len(&self) -> usize;
    /// True when the source holds nothing.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copy the next `dst.len()` bytes into `dst`. The caller never asks for more than
    /// [`WriteSource::len`] in total, and every implementation holds that many bytes, so this
    /// cannot fail; an implementation that somehow comes up short fills the rest with zeros and
    /// says so in [`WriteSource::failed`] (the transport then answers the write with an error).
    fn copy_to(&mut self, dst: &mut [u8]);
    /// True when a copy came up short (see [`WriteSource::copy_to`]).
    fn failed(&self) -> bool {
        false
    }
}

impl WriteSource for &[u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn copy_to(&mut self, dst: &mut [u8]) {
        let n = dst.len().min(<[u8]>::len(self));
        let (head, rest) = self.split_at(n);
        dst[..n].copy_from_slice(head);
        dst[n..].fill(0);
        *self = rest;
    }
}

impl FileIo<'_> {
    /// Write `len` bytes of `src` at `offset` through the page cache. The caller holds the
    /// file's rw lock exclusively. Returns the bytes written (short only when a later part
    /// failed; the error when nothing was written).
    pub fn buffered_write(
        &self,
        ops: &mut dyn WriteOps,
        offset: u64,
        len: u64,
        src: &mut dyn WriteSource,
    ) -> Result<usize> {
        let bs = self.block_size;
        ops.begin(offset / bs, (offset + len).div_ceil(bs))?;
        let (done, err) = self.copy_into_pages(&*ops, offset, len as usize, src);
        if (done as u64) < len {
            ops.end_short((offset + done as u64).div_ceil(bs));
        }
        if done == 0 {
            return Err(err.unwrap_or(Errno::EIO));
        }
        let mut s = self.d.sizes();
        s.size = s.size.max(offset + done as u64);
        Ok(done)
    }

    /// Run `take` (which needs a slab) on the file's page map; when no slab is free, ask the
    /// file system to make room (see [`IomapOps::make_room`]) and try again, a few times. The
    /// caller holds the file's rw lock exclusively.
    pub fn with_room<T>(
        &self,
        ops: &dyn IomapOps,
        why: &str,
        mut take: impl FnMut(&mut Pages) -> std::result::Result<T, NoSlab>,
    ) -> Result<T> {
        for attempt in 0..3 {
            if let Ok(x) = take(&mut self.d.pages()) {
                return Ok(x);
            }
            ops.make_room(true, attempt)?;
        }
        log::error!("inode {}: {why}", self.ino);
        Err(Errno::ENOMEM)
    }

    /// Copy `len` bytes of `src` into the page cache at `offset`, filling partial blocks
    /// first. Returns the bytes copied and, when short, why. The caller holds the file's rw lock
    /// exclusively.
    fn copy_into_pages(
        &self,
        ops: &dyn IomapOps,
        offset: u64,
        len: usize,
        src: &mut dyn WriteSource,
    ) -> (usize, Option<Errno>) {
        let (d, pc) = (self.d, self.pc);
        let bs = self.block_size as usize;
        self.prefault(offset, len);
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let idx: PageIndex = pos / PAGE_SIZE as u64;
            let poff = (pos % PAGE_SIZE as u64) as usize;
            let n = (PAGE_SIZE - poff).min(len - done);
            let got = self.with_room(
                ops,
                "the page cache has no room left (every page is dirty or in use)",
                |m| m.get_or_create(pc, idx),
            );
            let (slab, p) = match got {
                Ok(x) => x,
                Err(e) => return (done, Some(e)),
            };
            let b0 = poff / bs;
            let b1 = (poff + n - 1) / bs;
            // A page being written to the disk is left alone until that write completed.
            let state = d.wait_page_writeback(idx).state(idx);
            // A block the write covers only partly must hold the file's data around it.
            for b in [b0, b1] {
                let partial = (b == b0 && !poff.is_multiple_of(bs))
                    || (b == b1 && !(poff + n).is_multiple_of(bs));
                if partial && state.uptodate & (1 << b) == 0 {
                    let lblk = (idx * PAGE_SIZE as u64) / bs as u64 + b as u64;
                    if let Err(e) = self.fill_block(ops, lblk, slab, p, b * bs) {
                        return (done, Some(e));
                    }
                    d.pages().set_uptodate(idx, 1 << b);
                }
            }
            // SAFETY: the caller holds the file's rw lock exclusively, and every reader, writer,
            // writeback and eviction of this page takes it, so nothing else touches these bytes
            // while the slice lives (to the end of this statement).
            src.copy_to(unsafe { pc.arena.bytes_mut(slab, p, poff, n) });
            let mask = (((1u16 << (b1 + 1)) - 1) & !((1u16 << b0) - 1)) as u8;
            d.pages().set_dirty(pc, idx, mask);
            done += n;
        }
        (done, None)
    }

    /// A large write into pages not yet in the cache: give them memory in one call per chunk
    /// rather than one page fault each.
    fn prefault(&self, offset: u64, len: usize) {
        let d = self.d;
        const MIN_PAGES: u64 = 16;
        let first = offset.div_ceil(PAGE_SIZE as u64);
        let end = (offset + len as u64) / PAGE_SIZE as u64;
        let mut a = first;
        while a + MIN_PAGES <= end {
            let chunk_end = (a / SLAB_PAGES as u64 + 1) * SLAB_PAGES as u64;
            let b = end.min(chunk_end);
            let mut m = d.pages();
            let fresh = (a..b).filter(|&i| !m.state(i).resident).count() as u64;
            if fresh >= MIN_PAGES
                && let Ok((slab, p)) = m.get_or_create(self.pc, a)
            {
                drop(m);
                self.pc.arena.populate(slab, p, (b - a) as usize);
            }
            a = b;
        }
    }

    /// Bring block `lblk` into its page at byte `boff`: the disk's data for a written block,
    /// zeros otherwise (holes, unwritten and delayed blocks not in the cache). The caller holds
    /// the file's rw lock.
    pub fn fill_block(
        &self,
        ops: &dyn IomapOps,
        lblk: u64,
        slab: SlabId,
        p: usize,
        boff: usize,
    ) -> Result<()> {
        let bs = self.block_size as usize;
        match ops.map(lblk)?.status.written_pblk() {
            Some(pblk) => {
                // SAFETY: the caller holds the file's rw lock, which every writer of this page
                // takes exclusively; the slice does not outlive this call.
                let block = unsafe { self.pc.arena.bytes_mut(slab, p, boff, bs) };
                self.dev.read_at(block, pblk * bs as u64).map_err(|e| {
                    log::error!("inode {}: I/O error reading block {pblk}: {e}", self.ino);
                    Errno::EIO
                })
            }
            None => {
                self.pc.arena.zero(slab, p, boff, bs);
                Ok(())
            }
        }
    }
}
