//! Buffered write (iomap's write_begin / write_end in our terms): reserve the new blocks as
//! delayed, fill partial blocks (read or zero), copy the payload into the page cache once, mark
//! the blocks dirty, move i_size. A short or failed copy releases the reservations it did not
//! use, so no delayed block is ever left without a dirty page over it.
//!
//! Lock order: see `data/mod.rs`. `write` holds the file's rw lock exclusively throughout; the
//! namespace lock is taken shared to look at the block map, exclusively for the inode update.

use super::InodeData;
use crate::errno::{Errno, Result};
use crate::extent::Status;
use crate::fs::Fs;
use crate::fs::types::Ino;
use crate::inode::blocks::now;
use crate::inode::bmap::Target;
use crate::ondisk::inode::{I_BLOCK_LEN, Inode, flags};
use crate::pagecache::{NoSlab, PAGE_SIZE, PageIndex, SLAB_PAGES, SlabId};

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

/// FUSE_WRITE_KILL_SUIDGID: the writer is not privileged; drop suid/sgid as the kernel does.
pub const KILL_SUIDGID: u32 = 1;

/// A write changed the file: mtime and ctime move, and with `kill_suid` setuid goes (and setgid
/// when the file is group-executable), as the kernel drops them for an unprivileged writer.
fn modified(inode: &mut Inode, kill_suid: bool) {
    let t = now();
    inode.mtime = t;
    inode.ctime = t;
    if kill_suid {
        let mut mode = inode.mode as u32 & !libc::S_ISUID;
        if mode & libc::S_IXGRP != 0 {
            mode &= !libc::S_ISGID;
        }
        inode.mode = mode as u16;
    }
}

impl Fs {
    /// Write `data` at `offset` of regular file `ino`. Returns the bytes written (short only at
    /// the file size limit or when a later part failed).
    pub fn write(&self, ino: Ino, offset: u64, data: &[u8], flags_: u32) -> Result<u32> {
        self.write_from(ino, offset, &mut &data[..], flags_)
    }

    /// [`Fs::write`] of the bytes of `src`, copied from it straight into the page cache.
    pub fn write_from(
        &self,
        ino: Ino,
        offset: u64,
        src: &mut dyn WriteSource,
        flags_: u32,
    ) -> Result<u32> {
        if self.is_read_only() {
            return Err(Errno::EROFS);
        }
        let d = self.inode_data(ino)?;
        let r = {
            let _w = d.write_lock_for_write();
            self.write_locked(ino, &d, offset, src, flags_)
        };
        if r.is_ok() {
            self.balance_dirty(ino, &d);
        }
        r
    }

    /// [`Fs::write`] under the file's rw lock.
    fn write_locked(
        &self,
        ino: Ino,
        d: &InodeData,
        offset: u64,
        src: &mut dyn WriteSource,
        flags_: u32,
    ) -> Result<u32> {
        let inode = {
            let _g = self.ns_read();
            self.read_inode(ino)?
        };
        if !inode.is_reg() {
            return Err(Errno::EINVAL);
        }
        if self.block_size as usize > PAGE_SIZE {
            log::warn!("inode {ino}: writing data with blocks larger than 4 KiB is not supported");
            return Err(Errno::EOPNOTSUPP);
        }
        let max = self.max_file_bytes(&inode);
        if offset >= max {
            return Err(Errno::EFBIG);
        }
        if src.is_empty() {
            return Ok(0);
        }
        let len = (src.len() as u64).min(max - offset);
        if inode.has_flag(flags::INLINE_DATA)
            && let Some(n) =
                self.inline_write(ino, d, offset, len, src, flags_ & KILL_SUIDGID != 0)?
        {
            return Ok(n);
        }
        let inode = if inode.has_flag(flags::INLINE_DATA) {
            self.inline_to_blocks(ino, d)?
        } else {
            inode
        };
        let bs = self.block_size as u64;
        let first = offset / bs;
        let end_blk = (offset + len).div_ceil(bs);
        let mut holes = self.unreserved_holes(ino, d, &inode, first, end_blk)?;
        let need: u64 = holes.iter().map(|(_, l)| l).sum();
        if need > 0 && inode.has_flag(flags::EXTENTS) && self.nearly_full() {
            // Little room left: allocate unwritten blocks now (ext4's nonda switch), so the
            // space is taken for certain and ENOSPC comes from here; writeback converts them.
            for &(s, l) in &holes {
                let mut at = s;
                while at < s + l {
                    let (_, got) = self.alloc_unwritten(ino, d, at, s + l - at)?;
                    at += got.max(1);
                }
            }
            holes.clear();
        } else {
            self.reserve_blocks(ino, d, need)?;
        }
        for &(s, l) in &holes {
            self.es.insert(ino, s, l, Status::Delayed);
        }
        self.dax_redirty_range(d, offset, offset + len);
        let (done, err) = self.copy_into_pages(ino, d, offset, len as usize, src);
        if (done as u64) < len {
            // Release the delayed blocks no byte of this write reached.
            // (A writeback may have allocated some of them meanwhile, giving their
            // reservation back: only what is still delayed is released.)
            let keep_to = (offset + done as u64).div_ceil(bs);
            let mut unused = 0;
            for &(s, l) in &holes {
                let from = s.max(keep_to);
                if from < s + l {
                    unused += self.delayed_in(ino, from, s + l - from);
                    self.es.remove(ino, from, s + l - from);
                }
            }
            self.alloc.release(unused);
        }
        if done == 0 {
            return Err(err.unwrap_or(Errno::EIO));
        }
        {
            let mut s = d.sizes();
            s.size = s.size.max(offset + done as u64);
        }
        self.file_modified(ino, d, flags_ & KILL_SUIDGID != 0)?;
        Ok(done as u32)
    }

    /// Write into an inline-data file while the result still fits the inode (`i_block` and the
    /// `system.data` attribute), as the kernel keeps small files inline: one handle, no page
    /// cache. `None` when it would not fit (the caller moves the data to a block); `src` is
    /// consumed only when it fits.
    fn inline_write(
        &self,
        ino: Ino,
        d: &InodeData,
        offset: u64,
        len: u64,
        src: &mut dyn WriteSource,
        kill_suid: bool,
    ) -> Result<Option<u32>> {
        let end = offset + len;
        let _g = self.inline_step(ino, d)?;
        let mut inode = self.read_inode(ino)?;
        let Some(room) = self.max_inline_xattr(ino, &inode)? else {
            return Ok(None);
        };
        if end > (I_BLOCK_LEN + room) as u64 {
            return Ok(None);
        }
        let size = inode.size.max(end);
        let mut content = self.inline_data(ino, &inode)?;
        content.resize(size as usize, 0);
        src.copy_to(&mut content[offset as usize..end as usize]);
        let head = content.len().min(I_BLOCK_LEN);
        inode.block[..head].copy_from_slice(&content[..head]);
        let tail = content.get(I_BLOCK_LEN..).unwrap_or(&[]).to_vec();
        self.set_system_data(ino, &mut inode, Some(tail))?;
        *d.sizes() = super::Sizes {
            size,
            disksize: size,
        };
        inode.size = size;
        modified(&mut inode, kill_suid);
        self.store_inode(ino, &inode)?;
        Ok(Some(len as u32))
    }

    /// An inline-data file is about to get data past what its inode holds: move the data to a
    /// block (written at once, before the map that points to it commits) and return the inode
    /// as it is now.
    pub(super) fn inline_to_blocks(&self, ino: Ino, d: &InodeData) -> Result<Inode> {
        let _g = self.inline_step(ino, d)?;
        let mut inode = self.read_inode(ino)?;
        if !inode.has_flag(flags::INLINE_DATA) {
            return Ok(inode);
        }
        let size = d.sizes().size;
        inode.size = size;
        self.inline_set_size(ino, &mut inode, size)?;
        self.store_inode(ino, &inode)?;
        Ok(inode)
    }

    /// The largest size a file can reach: extents address 2^32 blocks; indirect maps end where
    /// the triple indirect tree does.
    pub(in crate::fs) fn max_file_bytes(&self, inode: &Inode) -> u64 {
        let bs = self.block_size as u64;
        if inode.has_flag(flags::EXTENTS) || inode.has_flag(flags::INLINE_DATA) {
            ((1u64 << 32) - 1) * bs
        } else {
            self.ind_max_bytes()
        }
    }

    /// mtime and ctime move, suid (and sgid with group-exec) go when asked — the inode update of
    /// a write, in a short handle.
    pub(super) fn file_modified(&self, ino: Ino, d: &InodeData, kill_suid: bool) -> Result<()> {
        let _g = self.data_step(d);
        let mut i = self.read_inode(ino)?;
        modified(&mut i, kill_suid);
        self.store_inode(ino, &i)
    }

    /// Blocks in `[first, end)` that are holes on disk and not delayed yet: the write must
    /// reserve them.
    pub(super) fn unreserved_holes(
        &self,
        ino: Ino,
        d: &InodeData,
        inode: &Inode,
        first: u64,
        end: u64,
    ) -> Result<Vec<(u64, u64)>> {
        let _g = self.map_read(d);
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut push = |s: u64, l: u64| {
            if l == 0 {
                return;
            }
            match out.last_mut() {
                Some((ps, pl)) if *ps + *pl == s => *pl += l,
                _ => out.push((s, l)),
            }
        };
        let mut l = first;
        while l < end {
            let m = self.map_block(ino, inode, l)?;
            let run_end = end.min(m.lblk.saturating_add(m.len)).max(l + 1);
            if m.target == Target::Hole {
                let mut pos = l;
                for (s, len, st) in self.es.ranges(ino, l, run_end - l) {
                    if st.is_delayed() {
                        push(pos, s.saturating_sub(pos));
                        pos = s + len;
                    }
                }
                push(pos, run_end.saturating_sub(pos));
            }
            l = run_end;
        }
        Ok(out)
    }

    /// Reserve `n` blocks for delayed allocation. When they do not fit: write back and commit
    /// (the kernel's retry after a forced commit), then try once more; ENOSPC is answered here,
    /// by write(), never later at writeback.
    pub(super) fn reserve_blocks(&self, ino: Ino, d: &InodeData, n: u64) -> Result<()> {
        let pool = self.metadata_pool();
        if self.alloc.reserve(n, pool) {
            return Ok(());
        }
        self.writeback_inode(ino, d, 0, u64::MAX)?;
        let _ = self.writeback_others(ino);
        let _ = self.sync();
        if self.alloc.reserve(n, pool) {
            return Ok(());
        }
        Err(Errno::ENOSPC)
    }

    /// True when free space is short enough that new writes should allocate at once rather
    /// than reserve (the kernel's ext4_nonda_switch: free below twice the reserved blocks, or
    /// below a watermark).
    fn nearly_full(&self) -> bool {
        let free = self.alloc.unreserved_free();
        let reserved = self.alloc.reserved();
        free < 2 * reserved || free < self.metadata_pool() + 1024
    }

    /// Blocks kept free beside the delalloc reservations for the metadata writeback allocates
    /// (2% of the file system, at most 4096 blocks; the kernel's s_resv_clusters).
    pub(in crate::fs) fn metadata_pool(&self) -> u64 {
        self.alloc.metadata_pool()
    }

    /// Copy `len` bytes of `src` into the page cache at `offset`, filling partial blocks
    /// first. Returns the bytes copied and, when short, why. The caller holds the file's rw lock
    /// exclusively.
    fn copy_into_pages(
        &self,
        ino: Ino,
        d: &InodeData,
        offset: u64,
        len: usize,
        src: &mut dyn WriteSource,
    ) -> (usize, Option<Errno>) {
        let pc = &self.data.pc;
        let bs = self.block_size as usize;
        self.prefault(d, offset, len);
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let idx: PageIndex = pos / PAGE_SIZE as u64;
            let poff = (pos % PAGE_SIZE as u64) as usize;
            let n = (PAGE_SIZE - poff).min(len - done);
            let (slab, p) = match self.page_for_write(ino, d, idx) {
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
                    if let Err(e) = self.fill_block(ino, d, lblk, slab, p, b * bs) {
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
    fn prefault(&self, d: &InodeData, offset: u64, len: usize) {
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
                && let Ok((slab, p)) = m.get_or_create(&self.data.pc, a)
            {
                drop(m);
                self.data.pc.arena.populate(slab, p, (b - a) as usize);
            }
            a = b;
        }
    }

    /// The page `idx` of the file, resident, for a write (see [`Fs::with_slab_room`]).
    fn page_for_write(&self, ino: Ino, d: &InodeData, idx: PageIndex) -> Result<(SlabId, usize)> {
        self.with_slab_room(
            ino,
            d,
            "the page cache has no room left (every page is dirty or in use)",
            |m| m.get_or_create(&self.data.pc, idx),
        )
    }

    /// Run `take` (which needs a slab) on the file's mapping; when no slab is free, evict clean
    /// pages (ours too) and, failing that, write back our dirty pages and other files' first.
    pub(super) fn with_slab_room<T>(
        &self,
        ino: Ino,
        d: &InodeData,
        why: &str,
        mut take: impl FnMut(&mut crate::pagecache::Mapping) -> std::result::Result<T, NoSlab>,
    ) -> Result<T> {
        for attempt in 0..3 {
            let mut m = d.pages();
            match take(&mut m) {
                Ok(x) => return Ok(x),
                Err(NoSlab) => {
                    if attempt == 1 {
                        // Every slab holds dirty pages: write them back, then evict.
                        drop(m);
                        self.writeback_inode(ino, d, 0, u64::MAX)?;
                        self.writeback_others(ino)?;
                        m = d.pages();
                    }
                    self.shrink_cache(Some((d, &mut m)));
                }
            }
        }
        log::error!("inode {ino}: {why}");
        Err(Errno::ENOMEM)
    }

    /// Bring block `lblk` into its page at byte `boff`: the disk's data for a written block,
    /// zeros otherwise (holes, unwritten and delayed blocks not in the cache). The caller holds
    /// the file's rw lock.
    pub(super) fn fill_block(
        &self,
        ino: Ino,
        d: &InodeData,
        lblk: u64,
        slab: SlabId,
        p: usize,
        boff: usize,
    ) -> Result<()> {
        let bs = self.block_size as usize;
        let target = {
            let _g = self.map_read(d);
            let inode = self.read_inode(ino)?;
            self.map_block(ino, &inode, lblk)?.target
        };
        match target {
            Target::Data {
                pblk,
                unwritten: false,
            } => {
                // SAFETY: the caller holds the file's rw lock, which every writer of this page
                // takes exclusively; the slice does not outlive this call.
                let block = unsafe { self.data.pc.arena.bytes_mut(slab, p, boff, bs) };
                self.dev.read_at(block, pblk * bs as u64).map_err(|e| {
                    log::error!("inode {ino}: I/O error reading block {pblk}: {e}");
                    Errno::EIO
                })
            }
            _ => {
                self.data.pc.arena.zero(slab, p, boff, bs);
                Ok(())
            }
        }
    }

    /// Write back other files (not `ino`, whose lock the caller holds), skipping those busy.
    pub(super) fn writeback_others(&self, ino: Ino) -> Result<()> {
        for (other, d) in self.inodes.all() {
            if other == ino {
                continue;
            }
            if self.inodes.is_current(other, &d) {
                self.writeback_file(other, &d, 0, u64::MAX, super::Hold::TryTake)?;
            }
        }
        Ok(())
    }
}
