//! The engine's side of a DAX window: a guest maps 2 MiB chunks of a file straight from the page
//! cache (the chunk's slab of the memfd), so its loads and stores hit the pages our buffered
//! I/O uses.
//!
//! * [`Fs::dax_pin`] is the fault path: the chunk is pinned (it keeps its slab and none of its
//!   pages is evicted), its missing pages within EOF are read in, and for a writable mapping it
//!   is **page_mkwrite**: holes get delalloc reservations (ENOSPC is answered here), the pages
//!   become dirty and the file's times move. Mapping is reading: atime moves as for a read
//!   (the kernel's `file_accessed` at mmap time). The transport records and maps the window
//!   range in a callback run under the file's rw lock, so the freeing of the file (which takes
//!   that lock) either comes first and the request fails, or comes after and finds the range.
//! * A [`DaxPin`] is one mapping's hold on its chunk; it names the file's in-core state, so
//!   giving it back ([`Fs::dax_unpin`]) after the file was freed still releases its slab.
//! * While a writable mapping lives, the guest may store into any page of it without telling
//!   us, so every page within EOF of such a chunk counts as dirty: writeback marks them dirty
//!   again before it looks for dirty pages ([`Fs::dax_redirty`]), and so does the unpin. Every
//!   block within EOF of such a chunk has a block or a reservation: page_mkwrite reserves the
//!   holes, and so does a size increase ([`Fs::dax_grow`]) for the pages it brings inside EOF,
//!   so writeback never meets ENOSPC for what the guest stored.
//! * The engine calls the transport back through [`DaxRevoker`] before pages move or go:
//!   truncate, punch and zero range unmap the window ranges over the affected pages until the
//!   blocks are freed and map them again afterwards ([`Fs::dax_cut`]: a Linux guest keeps its
//!   mappings across a truncate and goes on using them within the new EOF); collapse, insert
//!   and freeing the file unmap them for good ([`Fs::dax_revoke`]).
//!
//! Lock order: the file's rw lock → ns → the transport's slot table → the page-map mutex.

use super::InodeData;
use crate::errno::{Errno, Result};
use crate::fs::Fs;
use crate::fs::types::Ino;
use crate::inode::iomap_ops::Ext4Write;
use crate::iomap::WriteOps;
use crate::ondisk::inode::{Inode, flags};
use crate::pagecache::{Mapping, PAGE_SIZE, SLAB_PAGES, SLAB_SIZE};
use std::os::fd::RawFd;
use std::sync::{Arc, Weak};

/// One window mapping's hold on a 2 MiB chunk of a file, made by [`Fs::dax_pin`]: the chunk keeps
/// its slab and its pages while it lives. Exactly one [`Fs::dax_unpin`] gives it back.
pub struct DaxPin {
    ino: Ino,
    /// The file's in-core state itself: a file freed meanwhile (its number maybe reused) still
    /// gets its slab back.
    d: Arc<InodeData>,
    /// File bytes `[offset, offset + len)`, inside one chunk.
    pub offset: u64,
    pub len: u64,
    pub write: bool,
    /// Where `offset` lives in the memfd.
    pub fd_offset: u64,
}

impl DaxPin {
    pub fn ino(&self) -> Ino {
        self.ino
    }

    fn chunk(&self) -> u64 {
        self.offset / SLAB_SIZE as u64
    }
}

impl std::fmt::Debug for DaxPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "inode {} {:#x}+{:#x} {}",
            self.ino,
            self.offset,
            self.len,
            if self.write { "rw" } else { "ro" }
        )
    }
}

/// A window range the engine took back: window bytes `[moffset, moffset + pin.len)` showed `pin`.
#[derive(Debug)]
pub struct Revoked {
    pub moffset: u64,
    pub pin: DaxPin,
}

/// The window's owner, as the engine sees it. Called with the file's rw lock held.
pub trait DaxRevoker: Send + Sync {
    /// Unmap every window range showing bytes `[from, to)` of `ino` and forget it; hand back
    /// their pins.
    fn revoke(&self, ino: Ino, from: u64, to: u64) -> Vec<Revoked>;
    /// Map a revoked range again, showing the same pin; the pin comes back when that window
    /// range was taken meanwhile or the map failed.
    fn reinstate(&self, r: Revoked) -> Option<DaxPin>;
}

/// The window ranges a truncate, punch or zero range unmapped while it drops pages and frees
/// blocks; dropping it maps them again (the file's rw lock is still held).
pub(in crate::fs) struct DaxCut<'a> {
    fs: &'a Fs,
    ino: Ino,
    d: &'a InodeData,
    revoked: Vec<Revoked>,
}

impl Drop for DaxCut<'_> {
    fn drop(&mut self) {
        for r in std::mem::take(&mut self.revoked) {
            self.fs.dax_reinstate(self.ino, self.d, r);
        }
    }
}

/// The chunk a byte range of one mapping lies in, checked: page-aligned, not empty, inside one
/// 2 MiB chunk.
fn chunk_of(offset: u64, len: u64) -> Result<u64> {
    let page = PAGE_SIZE as u64;
    let slab = SLAB_SIZE as u64;
    if len == 0
        || !offset.is_multiple_of(page)
        || !len.is_multiple_of(page)
        || offset % slab + len > slab
    {
        return Err(Errno::EINVAL);
    }
    Ok(offset / slab)
}

fn page_is_zero(pc: &crate::pagecache::PageCache, slab: u32, p: usize) -> bool {
    let mut page = [0u8; PAGE_SIZE];
    pc.arena.read(slab, p, 0, &mut page);
    page.iter().all(|&b| b == 0)
}

impl Fs {
    /// The memfd a window maps chunks of.
    pub fn dax_memfd(&self) -> RawFd {
        self.data.pc.arena.fd()
    }

    /// Tell the engine who owns the window (the transport, once a frontend offers one).
    pub fn set_dax_revoker(&self, r: Weak<dyn DaxRevoker>) {
        *self.data.revoker.write().unwrap_or_else(|e| e.into_inner()) = Some(r);
    }

    fn dax_revoker(&self) -> Option<Arc<dyn DaxRevoker>> {
        self.data
            .revoker
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(Weak::upgrade)
    }

    /// Pinned slabs of the page cache (window mappings hold them).
    pub fn dax_pinned_slabs(&self) -> usize {
        self.data.pc.pinned_slabs()
    }

    /// Map `[offset, offset + len)` of `ino` (inside one 2 MiB chunk, page-aligned) for a
    /// window: pin its chunk, read in its missing pages within EOF, and with `write` do what
    /// page_mkwrite does. Then `map` gets the pin, under the file's rw lock (the transport
    /// records and maps its window range there); when it fails it hands the pin back, with the
    /// error to answer, and the pin is undone. A freed file (or one being freed) is ENOENT.
    pub fn dax_pin(
        &self,
        ino: Ino,
        offset: u64,
        len: u64,
        write: bool,
        map: impl FnOnce(DaxPin) -> std::result::Result<(), (DaxPin, Errno)>,
    ) -> Result<()> {
        let c = chunk_of(offset, len)?;
        if write && self.is_read_only() {
            return Err(Errno::EROFS);
        }
        if self.block_size as usize > PAGE_SIZE {
            return Err(Errno::EOPNOTSUPP);
        }
        let d = self.inode_data(ino)?;
        let w = d.write_lock();
        let mut inode = {
            let _g = self.ns_read();
            self.read_inode(ino)?
        };
        if !inode.is_reg() {
            return Err(Errno::EINVAL);
        }
        if !self.inodes.is_current(ino, &d) || !self.dax_file_alive(ino, &inode) {
            // Freed while we waited for its lock (its last unlink and forget): a pin now would
            // outlive the file.
            drop(w);
            log::warn!("dax: inode {ino}: SETUPMAPPING of a freed file: ENOENT");
            self.forget_idle(ino, &d);
            return Err(Errno::ENOENT);
        }
        if inode.has_flag(flags::INLINE_DATA) {
            // Inline data lives in the inode, not in the page cache: move it to a block first.
            if self.is_read_only() {
                return Err(Errno::EOPNOTSUPP);
            }
            inode = self.inline_to_blocks(ino, &d)?;
        }
        // A mapped file's data lives in the page cache: a new file does not go inline later.
        self.end_may_inline(ino);
        // Pinned read-only until the reservations are made: a writeback meanwhile must not
        // count the chunk's pages as dirty before their blocks are reserved.
        let mut slab = self.pin_chunk(ino, &d, c, false)?;
        let r = self.dax_fault_in(ino, &d, offset, write);
        let mut m = d.pages();
        if let Err(e) = r {
            m.unpin(&self.data.pc, c, false);
            if write && !m.is_write_pinned(c) {
                // Holes reserved before the failure: no page of them is dirty.
                self.release_standby(ino, &m, c);
            }
            return Err(e);
        }
        if write {
            m.unpin(&self.data.pc, c, false);
            slab = match m.pin(&self.data.pc, c, true) {
                Ok(s) => s,
                Err(_) => {
                    if !m.is_write_pinned(c) {
                        self.release_standby(ino, &m, c);
                    }
                    return Err(Errno::ENOMEM);
                }
            };
            // Every page within EOF counts as dirty while the mapping lives.
            let size = d.sizes().size;
            self.redirty_chunk(&mut m, c, size);
        }
        drop(m);
        let page = (offset % SLAB_SIZE as u64) / PAGE_SIZE as u64;
        let pin = DaxPin {
            ino,
            d: Arc::clone(&d),
            offset,
            len,
            write,
            fd_offset: self.data.pc.arena.offset_of(slab, page as usize),
        };
        if let Err((pin, e)) = map(pin) {
            self.unpin_locked(pin);
            return Err(e);
        }
        // Mapping a file is reading it (mmap's file_accessed): the guest's loads never reach us.
        self.accessed(ino, &inode);
        Ok(())
    }

    /// A file a request may still name: linked, or unlinked but still referenced (an orphan
    /// not freed yet).
    fn dax_file_alive(&self, ino: Ino, inode: &Inode) -> bool {
        inode.links_count > 0 || self.inodes.is_orphan(ino)
    }

    /// Pin chunk `c`, making room in the cache when no slab is free.
    fn pin_chunk(&self, ino: Ino, d: &InodeData, c: u64, write: bool) -> Result<u32> {
        self.with_slab_room(ino, d, "no slab left for a window mapping", |m| {
            m.pin(&self.data.pc, c, write)
        })
    }

    /// Read in the pages of the chunk of `offset` within EOF; for a writable mapping, reserve
    /// its holes and move the file's times (page_mkwrite, `iomap::mkwrite`). The chunk is
    /// pinned; the caller holds `d.rw`.
    fn dax_fault_in(&self, ino: Ino, d: &InodeData, offset: u64, write: bool) -> Result<()> {
        // The whole chunk: every page of a writable chunk within EOF counts as dirty.
        let slab = SLAB_SIZE as u64;
        let offset = offset - offset % slab;
        self.with_fault_ops(ino, d, |io, ops| {
            io.page_mkwrite(ops, offset, offset.saturating_add(slab), write)
        })?;
        if write {
            self.file_modified(ino, d, false)?;
        }
        Ok(())
    }

    /// Reserve every hole of bytes `[from, to)` that has no reservation yet, as a page fault
    /// does (never write()'s allocate-at-once switch).
    fn dax_reserve(&self, ino: Ino, d: &InodeData, from: u64, to: u64) -> Result<()> {
        if to <= from {
            return Ok(());
        }
        let bs = self.block_size as u64;
        self.with_fault_ops(ino, d, |_, ops| ops.begin(from / bs, to.div_ceil(bs)))
    }

    /// Run `f` with the file's cache and ext4's write ops built for a page fault.
    fn with_fault_ops(
        &self,
        ino: Ino,
        d: &InodeData,
        f: impl FnOnce(&crate::iomap::FileIo<'_>, &mut dyn WriteOps) -> Result<()>,
    ) -> Result<()> {
        let inode = {
            let _g = self.ns_read();
            self.read_inode(ino)?
        };
        let room = |own: bool, attempt: u32| self.make_room(ino, d, own, attempt);
        let flush = || self.flush_for_space(ino, d);
        let mut ops = Ext4Write::for_fault(self.iomap_ops(ino, d, &room), &inode, &flush);
        f(&self.file_io(ino, d), &mut ops)
    }

    /// Undo one [`Fs::dax_pin`]: a writable mapping's pages are dirty for normal writeback to
    /// take; the chunk's pages may be evicted again once no mapping pins it.
    pub fn dax_unpin(&self, pin: DaxPin) {
        let d = Arc::clone(&pin.d);
        let _w = d.write_lock();
        self.unpin_locked(pin);
    }

    /// [`Fs::dax_unpin`] with the file's rw lock held.
    fn unpin_locked(&self, pin: DaxPin) {
        let c = pin.chunk();
        let d = &pin.d;
        // A file freed meanwhile has no pages or reservations left to care for (and its number
        // may belong to another file by now): only the slab goes back.
        let live = self.inodes.is_current(pin.ino, d);
        let size = d.sizes().size;
        let mut m = d.pages();
        if pin.write && live {
            self.redirty_chunk(&mut m, c, size);
        }
        if !m.unpin(&self.data.pc, c, pin.write) {
            log::warn!("window unmap of a chunk that was not pinned ({pin:?})");
        }
        if pin.write && live && !m.is_write_pinned(c) {
            self.release_standby(pin.ino, &m, c);
        }
    }

    /// The last writable mapping of chunk `c` went: delayed blocks of it whose pages are not
    /// dirty were reserved for stores that never came (pages cut by a punch or truncate, or
    /// brought inside EOF by a size increase); give their reservations back. (Outside the
    /// window, a delayed block always has a dirty page.)
    fn release_standby(&self, ino: Ino, m: &Mapping, c: u64) {
        let bs = self.block_size as u64;
        let bpp = PAGE_SIZE as u64 / bs;
        let first = c * SLAB_SIZE as u64 / bs;
        let end = first + SLAB_SIZE as u64 / bs;
        let mut unused = Vec::new();
        for (s, len, st) in self.es.ranges(ino, first, end - first) {
            if !st.is_delayed() {
                continue;
            }
            for b in s.max(first)..(s + len).min(end) {
                let ps = m.state(b / bpp);
                let bit = 1u8 << (b % bpp);
                if (ps.dirty | ps.writeback) & bit == 0 {
                    unused.push(b);
                }
            }
        }
        for &b in &unused {
            self.es.remove(ino, b, 1);
        }
        self.alloc.release(unused.len() as u64);
    }

    /// Every page within EOF of writable-mapped chunks is dirty again (the guest may have
    /// stored into it since the last writeback). Called by writeback with `d.rw` held.
    pub(super) fn dax_redirty(&self, d: &InodeData) {
        let size = d.sizes().size;
        let mut m = d.pages();
        let chunks = m.write_mapped_chunks();
        if chunks.is_empty() {
            return;
        }
        for c in chunks {
            self.redirty_chunk(&mut m, c, size);
        }
        m.write_mapped_cleaned();
    }

    /// Before a read or write of bytes `[from, to)` fills blocks from disk: pages of writable
    /// mapped chunks in that range hold what the guest stored, which is the file's data.
    pub(super) fn dax_redirty_range(&self, d: &InodeData, from: u64, to: u64) {
        let mut m = d.pages();
        if m.pinned_chunks() == 0 {
            return;
        }
        let chunks = m.write_mapped_chunks();
        if chunks.is_empty() {
            return;
        }
        let size = d.sizes().size;
        let slab = SLAB_SIZE as u64;
        for c in chunks {
            if c.saturating_mul(slab) < to && c.saturating_add(1).saturating_mul(slab) > from {
                self.redirty_chunk(&mut m, c, size);
            }
        }
    }
    /// Mark the pages of chunk `c` within `size` dirty. A page not resident (cut by a truncate
    /// or punch since the mapping was made) counts only if the guest stored something other
    /// than zeros there since, so a punched hole stays a hole.
    fn redirty_chunk(&self, m: &mut Mapping, c: u64, size: u64) {
        let pc = &self.data.pc;
        let bs = self.block_size as u64;
        let bpp = PAGE_SIZE as u64 / bs;
        let first = c * SLAB_PAGES as u64;
        let end_page = size
            .div_ceil(PAGE_SIZE as u64)
            .min(first + SLAB_PAGES as u64);
        for idx in first..end_page {
            let st = m.state(idx);
            if st.resident && st.cut && st.dirty == 0 {
                // Cut while mapped and refilled with zeros since: still a hole unless the guest
                // stored data there.
                if let Some((slab, p)) = m.slab_of(idx)
                    && page_is_zero(pc, slab, p)
                {
                    continue;
                }
            }
            if !st.resident {
                let Some((slab, p)) = m.slab_of(idx) else {
                    return;
                };
                if !pc.arena.has_data(slab, p) {
                    continue;
                }
                if page_is_zero(pc, slab, p) {
                    // Only read (a read fault fills a zero page) or stored zeros: a hole.
                    pc.arena.punch(slab, p, 1);
                    continue;
                }
                if m.get_or_create(pc, idx).is_err() {
                    continue;
                }
            }
            // Blocks of the page inside the file.
            let blocks = (size.div_ceil(bs) - idx * bpp).min(bpp);
            let mask = ((1u16 << blocks) - 1) as u8;
            m.set_dirty(pc, idx, mask);
        }
    }

    /// The file grows from `old` to `new` bytes (the caller holds `d.rw` and moves the size
    /// next): pages of writable-mapped chunks that come inside EOF may be stored into by the
    /// guest at once, so their holes are reserved now (ENOSPC is answered here, by the
    /// operation that grows the file). What the guest stored past the old EOF is dropped: the
    /// new range reads as zeros.
    pub(in crate::fs) fn dax_grow(
        &self,
        ino: Ino,
        d: &InodeData,
        old: u64,
        new: u64,
    ) -> Result<()> {
        if new <= old {
            return Ok(());
        }
        let slab = SLAB_SIZE as u64;
        let chunks: Vec<u64> = {
            let m = d.pages();
            if m.pinned_chunks() == 0 {
                return Ok(());
            }
            m.write_mapped_chunks()
                .into_iter()
                .filter(|&c| {
                    c.saturating_mul(slab) < new && c.saturating_add(1).saturating_mul(slab) > old
                })
                .collect()
        };
        for c in chunks {
            let from = old.max(c * slab);
            let to = new.min((c + 1) * slab);
            self.dax_clear_past_eof(d, c, old, to);
            self.dax_reserve(ino, d, from, to)?;
        }
        Ok(())
    }

    /// Zero what the memfd holds of chunk `c` at bytes `[old, to)`, past the file's EOF `old`:
    /// the tail of the page holding EOF, and every page after it the cache does not hold.
    fn dax_clear_past_eof(&self, d: &InodeData, c: u64, old: u64, to: u64) {
        let pc = &self.data.pc;
        let page = PAGE_SIZE as u64;
        let first_page = (c * SLAB_PAGES as u64).max(old / page);
        let end_page = to.div_ceil(page).min((c + 1) * SLAB_PAGES as u64);
        let m = d.pages();
        for idx in first_page..end_page {
            let Some((slab, p)) = m.slab_of(idx) else {
                return;
            };
            let start = idx * page;
            if start < old {
                let off = (old - start) as usize;
                pc.arena.zero(slab, p, off, PAGE_SIZE - off);
            } else if !m.state(idx).resident && pc.arena.has_data(slab, p) {
                pc.arena.punch(slab, p, 1);
            }
        }
    }

    /// A truncate (`to` = `u64::MAX`), punch or zero range of bytes `[from, to)` is about to drop
    /// pages and free blocks (the caller holds `d.rw` exclusively): the window ranges over the
    /// affected pages are unmapped first, until the returned guard is dropped, which maps them
    /// again over what the file then holds (a writable one reserving its holes within EOF
    /// anew). What the guest stored so far becomes dirty pages now; the pins stay, so each
    /// range maps the same slab again.
    pub(in crate::fs) fn dax_cut<'a>(
        &'a self,
        ino: Ino,
        d: &'a InodeData,
        from: u64,
        to: u64,
    ) -> DaxCut<'a> {
        let mut cut = DaxCut {
            fs: self,
            ino,
            d,
            revoked: Vec::new(),
        };
        if from >= d.sizes().size || d.pages().pinned_chunks() == 0 {
            return cut;
        }
        let Some(r) = self.dax_revoker() else {
            return cut;
        };
        cut.revoked = r.revoke(ino, from, to);
        let size = d.sizes().size;
        let mut m = d.pages();
        for r in &cut.revoked {
            if r.pin.write {
                self.redirty_chunk(&mut m, r.pin.chunk(), size);
            }
        }
        cut
    }

    /// Map a range [`Fs::dax_cut`] unmapped again; a writable one first reserves the holes the
    /// cut left within EOF (the guest may store there). When that fails, or the window range
    /// was taken meanwhile, the mapping is gone for good (its pin is undone).
    fn dax_reinstate(&self, ino: Ino, d: &InodeData, r: Revoked) {
        if r.pin.write {
            let slab = SLAB_SIZE as u64;
            let start = r.pin.chunk() * slab;
            let end = (start + slab).min(d.sizes().size);
            if let Err(e) = self.dax_reserve(ino, d, start, end) {
                log::error!(
                    "dax: inode {ino}: no room to map window {:#x} writable again after a truncate or punch ({e:?}): the guest loses that mapping",
                    r.moffset
                );
                self.unpin_locked(r.pin);
                return;
            }
        }
        let back = match self.dax_revoker() {
            Some(w) => w.reinstate(r),
            None => Some(r.pin),
        };
        if let Some(pin) = back {
            self.unpin_locked(pin);
        }
    }

    /// The file's pages at `[from, to)` move or go for good (collapse, insert, the file is
    /// freed): unmap the window ranges showing them and drop their pins. The caller holds
    /// `d.rw` exclusively, not the page-map mutex.
    pub(super) fn dax_revoke(&self, ino: Ino, d: &InodeData, from: u64, to: u64) {
        if d.pages().pinned_chunks() == 0 {
            return;
        }
        let revoked = match self.dax_revoker() {
            Some(r) => r.revoke(ino, from, to),
            None => Vec::new(),
        };
        for r in revoked {
            self.unpin_locked(r.pin);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{DaxPin, DaxRevoker, Revoked, chunk_of};
    use crate::errno::Errno;
    use crate::fs::testutil::ctx;
    use crate::fs::{Fs, MountOptions, ROOT_INO, SetAttr};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, Weak};

    const CHUNK: u64 = 2 << 20;

    /// Pin one whole chunk as a window would, keeping the pin.
    fn pin(fs: &Fs, ino: u64, offset: u64, write: bool) -> Result<DaxPin, Errno> {
        let mut got = None;
        fs.dax_pin(ino, offset, CHUNK, write, |p| {
            got = Some(p);
            Ok(())
        })?;
        Ok(got.unwrap())
    }

    fn mount(img: &std::path::Path) -> Fs {
        let dev = crate::blockdev::FileDevice::open(img, false).unwrap();
        Fs::mount_with_cache(Arc::new(dev), &MountOptions::rw(), 64 << 20).unwrap()
    }

    /// Writable mappings of holes until the file system is full: the refused one answers
    /// ENOSPC and everything accepted is written back without error.
    #[test]
    fn mkwrite_reserves_until_enospc_and_writeback_never_fails() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        super::super::tests::mkfs(&img, &["-t", "ext4"], "32M");
        let fs = mount(&img);
        let ino = fs.mknod(ROOT_INO, b"big", 0o100644, 0, &ctx()).unwrap().ino;
        let sa = SetAttr {
            size: Some(64 * CHUNK),
            ..Default::default()
        };
        fs.setattr(ino, &sa).unwrap();
        let mut live = std::collections::VecDeque::new();
        let mut refused = None;
        for c in 0..64 {
            match pin(&fs, ino, c * CHUNK, true) {
                Ok(p) => live.push_back(p),
                Err(e) => {
                    refused = Some((c, e));
                    break;
                }
            }
            if live.len() > 6 {
                fs.dax_unpin(live.pop_front().unwrap());
            }
        }
        let (c, e) = refused.expect("64 MiB of holes do not fit 32 MiB");
        assert_eq!(e, Errno::ENOSPC, "refused at chunk {c}");
        fs.syncfs().expect("accepted mappings are written back");
        for p in live {
            fs.dax_unpin(p);
        }
        fs.syncfs().expect("unmapped pages are written back");
        assert_eq!(fs.data.pc.pinned_slabs(), 0);
        fs.shutdown().unwrap();
        drop(fs);
        crate::test_support::e2fsck_clean(&img);
    }

    /// A window stand-in: the pins it holds by window offset, revoked and reinstated as the
    /// transport does.
    #[derive(Default)]
    struct FakeWindow {
        slots: Mutex<Vec<(u64, DaxPin)>>,
    }

    impl DaxRevoker for FakeWindow {
        fn revoke(&self, ino: u64, from: u64, to: u64) -> Vec<Revoked> {
            let mut slots = self.slots.lock().unwrap();
            let (hit, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut *slots)
                .into_iter()
                .partition(|(_, p)| p.ino() == ino && p.offset < to && p.offset + p.len > from);
            *slots = keep;
            hit.into_iter()
                .map(|(moffset, pin)| Revoked { moffset, pin })
                .collect()
        }

        fn reinstate(&self, r: Revoked) -> Option<DaxPin> {
            self.slots.lock().unwrap().push((r.moffset, r.pin));
            None
        }
    }

    /// A store by the guest through its mapping: straight into the memfd.
    fn guest_store(fs: &Fs, fd_offset: u64, data: &[u8]) {
        use std::os::unix::fs::FileExt;
        let memfd = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{}", fs.dax_memfd()))
            .unwrap();
        memfd.write_all_at(data, fd_offset).unwrap();
    }

    fn windowed(fs: &Fs) -> Arc<FakeWindow> {
        let w = Arc::new(FakeWindow::default());
        let weak: Weak<dyn DaxRevoker> = Arc::downgrade(&w) as _;
        fs.set_dax_revoker(weak);
        w
    }

    /// SETUPMAPPING (and REMOVEMAPPING) racing with the last unlink and forget of the file,
    /// many times: every pin is given back and no pinned slab is left behind.
    #[test]
    fn pins_racing_with_the_freeing_of_the_file_leak_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        super::super::tests::mkfs(&img, &["-t", "ext4"], "32M");
        let fs = Arc::new(mount(&img));
        let w = windowed(&fs);
        let current = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mapped = Arc::new(AtomicU64::new(0));
        let mapper = {
            let (fs, w, current, stop, mapped) = (
                fs.clone(),
                w.clone(),
                current.clone(),
                stop.clone(),
                mapped.clone(),
            );
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let ino = current.load(Ordering::Acquire);
                    if ino == 0 {
                        std::thread::yield_now();
                        continue;
                    }
                    n += 1;
                    let r = fs.dax_pin(ino, 0, CHUNK, n.is_multiple_of(2), |p| {
                        w.slots.lock().unwrap().push((n * CHUNK, p));
                        Ok(())
                    });
                    if r.is_ok() {
                        mapped.fetch_add(1, Ordering::Relaxed);
                    }
                    if n.is_multiple_of(3) {
                        // REMOVEMAPPING: unmapped first, unpinned after, as the transport does.
                        let gone = w.slots.lock().unwrap().pop();
                        if let Some((_, p)) = gone {
                            fs.dax_unpin(p);
                        }
                    }
                }
            })
        };
        for i in 0..300 {
            let name = format!("f{i}");
            let a = fs
                .mknod(ROOT_INO, name.as_bytes(), 0o100644, 0, &ctx())
                .unwrap();
            fs.write(a.ino, 0, &[i as u8; 8192], 0).unwrap();
            current.store(a.ino, Ordering::Release);
            for _ in 0..(i % 7) * 50 {
                std::thread::yield_now();
            }
            fs.unlink(ROOT_INO, name.as_bytes()).unwrap();
            fs.forget(a.ino, 1);
            current.store(0, Ordering::Release);
            assert!(
                w.slots
                    .lock()
                    .unwrap()
                    .iter()
                    .all(|(_, p)| p.ino() != a.ino),
                "no window shows the freed file"
            );
        }
        stop.store(true, Ordering::Release);
        mapper.join().unwrap();
        assert!(
            mapped.load(Ordering::Relaxed) > 0,
            "some mappings were made"
        );
        let left = std::mem::take(&mut *w.slots.lock().unwrap());
        for (_, p) in left {
            fs.dax_unpin(p);
        }
        assert_eq!(fs.dax_pinned_slabs(), 0, "every pinned slab came back");
        fs.shutdown().unwrap();
        drop(fs);
        crate::test_support::e2fsck_clean(&img);
    }

    /// A freed file cannot be mapped; a pin given back after the file was freed releases its
    /// slab all the same.
    #[test]
    fn a_freed_file_is_not_mapped_and_late_unpins_release_their_slab() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        super::super::tests::mkfs(&img, &["-t", "ext4"], "32M");
        let fs = mount(&img);
        let w = windowed(&fs);
        let a = fs.mknod(ROOT_INO, b"a", 0o100644, 0, &ctx()).unwrap();
        fs.write(a.ino, 0, &[7u8; 10000], 0).unwrap();
        let p = pin(&fs, a.ino, 0, true).unwrap();
        assert_eq!(fs.dax_pinned_slabs(), 1);
        // The transport took the slot out of its table (REMOVEMAPPING) but has not unpinned
        // yet when the file is freed.
        fs.unlink(ROOT_INO, b"a").unwrap();
        fs.forget(a.ino, 1);
        assert_eq!(pin(&fs, a.ino, 0, false).unwrap_err(), Errno::ENOENT);
        fs.dax_unpin(p);
        assert_eq!(fs.dax_pinned_slabs(), 0);
        // A mapping still in the window when the file goes is revoked.
        let b = fs.mknod(ROOT_INO, b"b", 0o100644, 0, &ctx()).unwrap();
        fs.write(b.ino, 0, &[8u8; 10000], 0).unwrap();
        let p = pin(&fs, b.ino, 0, true).unwrap();
        w.slots.lock().unwrap().push((0, p));
        fs.unlink(ROOT_INO, b"b").unwrap();
        fs.forget(b.ino, 1);
        assert!(w.slots.lock().unwrap().is_empty(), "revoked when freed");
        assert_eq!(fs.dax_pinned_slabs(), 0);
        fs.shutdown().unwrap();
        drop(fs);
        crate::test_support::e2fsck_clean(&img);
    }

    /// Truncate and regrow while a writable mapping lives: the regrown pages are reserved when
    /// the size moves (ENOSPC comes from the truncate that grows, never from writeback), what
    /// the guest stored past EOF does not come back, and the reservations nobody used go back
    /// at the unmap.
    #[test]
    fn regrow_under_a_writable_mapping_reserves_what_comes_inside_eof() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        super::super::tests::mkfs(&img, &["-t", "ext4"], "32M");
        let fs = mount(&img);
        let w = windowed(&fs);
        let f = fs.mknod(ROOT_INO, b"f", 0o100644, 0, &ctx()).unwrap().ino;
        fs.write(f, 0, &[1u8; 1 << 20], 0).unwrap();
        fs.fsync(f, false).unwrap();
        let p = pin(&fs, f, 0, true).unwrap();
        let slab_mem = p.fd_offset;
        w.slots.lock().unwrap().push((0, p));
        let size = |n| SetAttr {
            size: Some(n),
            ..Default::default()
        };
        let free0 = fs.statfs().unwrap().bfree;
        fs.setattr(f, &size(4096)).unwrap();
        assert_eq!(
            w.slots.lock().unwrap().len(),
            1,
            "mapped again after the cut"
        );
        assert_eq!(
            w.slots.lock().unwrap()[0].1.fd_offset,
            slab_mem,
            "same slab"
        );
        // The guest stores past EOF (it should not): the regrow must not show it.
        let stray = vec![0xEEu8; 4096];
        guest_store(&fs, slab_mem + (8 << 10), &stray);
        let free1 = fs.statfs().unwrap().bfree;
        assert!(free1 > free0, "the cut blocks are free");
        fs.setattr(f, &size(CHUNK)).unwrap();
        let free2 = fs.statfs().unwrap().bfree;
        assert!(
            free1 - free2 >= (CHUNK - 4096) / 4096,
            "the regrown range is reserved: {free1} -> {free2}"
        );
        assert_eq!(fs.read(f, 0, 8192, 4096).unwrap(), vec![0u8; 4096]);
        // The guest stores into the regrown range; writeback takes it without error.
        guest_store(&fs, slab_mem + (512 << 10), b"regrown");
        fs.syncfs().unwrap();
        assert_eq!(fs.read(f, 0, 512 << 10, 7).unwrap(), b"regrown");
        let (_, p) = w.slots.lock().unwrap().pop().unwrap();
        fs.dax_unpin(p);
        fs.syncfs().unwrap();
        assert_eq!(fs.es.delayed_blocks(f), 0, "no reservation is left behind");
        // Shrink again; with the file system full, the regrow answers ENOSPC.
        let p = pin(&fs, f, 0, true).unwrap();
        w.slots.lock().unwrap().push((0, p));
        fs.setattr(f, &size(0)).unwrap();
        let filler = fs
            .mknod(ROOT_INO, b"filler", 0o100644, 0, &ctx())
            .unwrap()
            .ino;
        let chunk = vec![3u8; 1 << 20];
        let mut off = 0;
        while fs.write(filler, off, &chunk, 0).is_ok() {
            off += 1 << 20;
        }
        assert_eq!(fs.setattr(f, &size(CHUNK)).unwrap_err(), Errno::ENOSPC);
        let (_, p) = w.slots.lock().unwrap().pop().unwrap();
        fs.dax_unpin(p);
        assert_eq!(fs.dax_pinned_slabs(), 0);
        fs.shutdown().unwrap();
        drop(fs);
        crate::test_support::e2fsck_clean(&img);
    }

    /// A mapping is a read of the file (mmap's file_accessed): atime moves as the mount says.
    #[test]
    fn a_mapping_moves_atime() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        super::super::tests::mkfs(&img, &["-t", "ext4"], "32M");
        let fs = mount(&img);
        fs.set_atime_policy(crate::fs::AtimePolicy::from_mount_flags(0));
        let f = fs.mknod(ROOT_INO, b"f", 0o100644, 0, &ctx()).unwrap().ino;
        fs.write(f, 0, b"data", 0).unwrap();
        let old = SetAttr {
            atime: Some(crate::fs::TimeSet::At(crate::fs::Timespec {
                sec: 1,
                nsec: 0,
            })),
            ..Default::default()
        };
        for write in [false, true] {
            fs.setattr(f, &old).unwrap();
            let p = pin(&fs, f, 0, write).unwrap();
            let a = fs.getattr(f).unwrap();
            assert!(a.atime.sec > 1, "write={write}: atime moved: {a:?}");
            fs.dax_unpin(p);
        }
        // noatime: it stays.
        fs.set_atime_policy(crate::fs::AtimePolicy::from_mount_flags(libc::MS_NOATIME));
        fs.setattr(f, &old).unwrap();
        let p = pin(&fs, f, 0, false).unwrap();
        assert_eq!(fs.getattr(f).unwrap().atime.sec, 1);
        fs.dax_unpin(p);
        fs.shutdown().unwrap();
        drop(fs);
        crate::test_support::e2fsck_clean(&img);
    }

    #[test]
    fn a_mapping_lies_in_one_chunk_and_is_page_aligned() {
        assert_eq!(chunk_of(0, 2 << 20), Ok(0));
        assert_eq!(chunk_of(6 << 20, 2 << 20), Ok(3));
        assert_eq!(chunk_of((2 << 20) + 4096, 8192), Ok(1));
        assert_eq!(chunk_of(0, 0), Err(Errno::EINVAL));
        assert_eq!(chunk_of(512, 4096), Err(Errno::EINVAL));
        assert_eq!(chunk_of(0, 4097), Err(Errno::EINVAL));
        assert_eq!(chunk_of(4096, 2 << 20), Err(Errno::EINVAL));
        assert_eq!(chunk_of(!4095u64, 4096), Ok((!4095u64) >> 21));
    }
}
