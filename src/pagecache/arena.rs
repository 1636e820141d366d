//! The arena: one large *sparse* memfd, mapped once into the daemon, carved into 2 MiB slabs.
//! A slab holds the pages of one (inode, 2 MiB-aligned file range); page *i* of that range sits
//! at slab offset *i* × 4 KiB, so a whole chunk of a file is one contiguous piece of the memfd
//! (what a DAX window maps with one request). A page costs memory only once touched; punching it
//! (`fallocate(PUNCH_HOLE)`) gives the memory back.
//!
//! Free slabs are of two kinds. *Clean* ones were punched: every page reads as zeros. *Kept* ones
//! still hold their last owner's pages ([`PageBits`] says which), so a new owner writes into
//! memory that is already there instead of faulting in fresh zeroed pages; they are handed out
//! first, most recently freed first. A kept slab's old bytes belong to another file: its new
//! owner must write or zero a page before anything reads it (see `mapping`).
//!
//! This module owns the only `unsafe` of the page cache: the mapping and the raw copies in and
//! out of it. Callers serialize access to a page through the owning file's locks (see
//! `fs::data`); the arena itself only checks bounds.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bytes per page.
pub const PAGE_SIZE: usize = 4096;
/// Pages per slab.
pub const SLAB_PAGES: usize = 512;
/// Bytes per slab (2 MiB).
pub const SLAB_SIZE: usize = PAGE_SIZE * SLAB_PAGES;

/// Index of a slab in the arena.
pub type SlabId = u32;

/// One bit per page of a slab (bit *i*: page *i*).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageBits([u64; SLAB_PAGES / 64]);

impl PageBits {
    pub fn get(&self, page: usize) -> bool {
        self.0[page / 64] & (1 << (page % 64)) != 0
    }

    pub fn set(&mut self, page: usize) {
        self.0[page / 64] |= 1 << (page % 64);
    }

    pub fn clear(&mut self, page: usize) {
        self.0[page / 64] &= !(1 << (page % 64));
    }

    /// Pages set.
    pub fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }

    /// Runs of set pages: (first page, pages), in order.
    pub fn runs(&self) -> Vec<(usize, usize)> {
        let mut out: Vec<(usize, usize)> = Vec::new();
        for p in (0..SLAB_PAGES).filter(|&p| self.get(p)) {
            match out.last_mut() {
                Some((s, n)) if *s + *n == p => *n += 1,
                _ => out.push((p, 1)),
            }
        }
        out
    }
}

/// The free slabs.
#[derive(Default)]
struct FreeSlabs {
    /// Punched: every page reads as zeros.
    clean: Vec<SlabId>,
    /// Still holding their last owner's pages; the most recently freed at the back.
    kept: VecDeque<(SlabId, PageBits)>,
    /// Pages the kept slabs hold.
    kept_pages: usize,
    /// When a slab was last kept or taken from the kept ones.
    kept_used: Option<Instant>,
}

pub struct Arena {
    fd: OwnedFd,
    base: *mut u8,
    slabs: u32,
    free: Mutex<FreeSlabs>,
}

// SAFETY: the arena is a fixed MAP_SHARED mapping that lives as long as the value; the pointer is
// never reseated, and all access goes through bounds-checked methods.
unsafe impl Send for Arena {}
// SAFETY: as above; concurrent access to one page is serialized by the callers' locks.
unsafe impl Sync for Arena {}

impl Arena {
    /// An arena of `slabs` slabs (address space only: nothing is resident until touched).
    pub fn new(slabs: u32) -> io::Result<Arena> {
        let slabs = slabs.max(1);
        let name = c"vhost-ext4-pagecache";
        // SAFETY: memfd_create with a valid NUL-terminated name; the returned fd is owned below.
        let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let len = slabs as usize * SLAB_SIZE;
        // SAFETY: ftruncate on an owned descriptor; no memory is passed.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new shared mapping of the whole memfd; the kernel picks the address; the
        // result is checked for MAP_FAILED and unmapped in Drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Arena {
            fd,
            base: base as *mut u8,
            slabs,
            free: Mutex::new(FreeSlabs {
                clean: (0..slabs).rev().collect(),
                ..FreeSlabs::default()
            }),
        })
    }

    /// The memfd (a DAX window maps slabs of it).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn slab_count(&self) -> u32 {
        self.slabs
    }

    fn free_list(&self) -> std::sync::MutexGuard<'_, FreeSlabs> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Slabs not in use (clean and kept).
    pub fn free_slabs(&self) -> usize {
        let f = self.free_list();
        f.clean.len() + f.kept.len()
    }

    /// Pages the kept free slabs hold.
    pub fn kept_pages(&self) -> usize {
        self.free_list().kept_pages
    }

    /// Take a free slab, or `None` when all are in use: the most recently kept one first, with
    /// the pages that still hold its last owner's bytes; else a clean one (no page set: every
    /// page reads as zeros).
    pub fn alloc_slab(&self) -> Option<(SlabId, PageBits)> {
        let mut f = self.free_list();
        if let Some((slab, held)) = f.kept.pop_back() {
            f.kept_pages -= held.count();
            f.kept_used = Some(Instant::now());
            return Some((slab, held));
        }
        f.clean.pop().map(|s| (s, PageBits::default()))
    }

    /// Give a slab back; its memory is released.
    pub fn free_slab(&self, slab: SlabId) {
        self.punch(slab, 0, SLAB_PAGES);
        self.free_list().clean.push(slab);
    }

    /// Give a slab back but keep its memory (`held`: the pages that hold any) for the next
    /// [`Arena::alloc_slab`].
    pub fn keep_slab(&self, slab: SlabId, held: PageBits) {
        if held.is_empty() {
            self.free_list().clean.push(slab);
            return;
        }
        let mut f = self.free_list();
        f.kept_pages += held.count();
        f.kept.push_back((slab, held));
        f.kept_used = Some(Instant::now());
    }

    /// True when slabs are kept and none was kept or taken for `idle`.
    pub fn kept_idle(&self, idle: Duration) -> bool {
        let f = self.free_list();
        f.kept_pages > 0 && f.kept_used.is_none_or(|t| t.elapsed() >= idle)
    }

    /// Release the memory of kept slabs, the least recently kept first, until at least `pages`
    /// pages went (or none is left). Returns the pages released.
    pub fn trim_kept(&self, pages: usize) -> usize {
        let mut done = 0;
        while done < pages {
            let Some((slab, held)) = ({
                let mut f = self.free_list();
                let x = f.kept.pop_front();
                if let Some((_, h)) = &x {
                    f.kept_pages -= h.count();
                }
                x
            }) else {
                break;
            };
            done += held.count();
            self.free_slab(slab);
        }
        done
    }

    /// Byte offset of a page in the memfd.
    pub fn offset_of(&self, slab: SlabId, page: usize) -> u64 {
        slab as u64 * SLAB_SIZE as u64 + (page * PAGE_SIZE) as u64
    }

    fn ptr(&self, slab: SlabId, page: usize, off: usize, len: usize) -> *mut u8 {
        assert!(
            slab < self.slabs && page < SLAB_PAGES && off + len <= (SLAB_PAGES - page) * PAGE_SIZE,
            "arena access out of bounds: slab {slab} page {page} +{off} len {len}"
        );
        // SAFETY: bounds were checked just above against the mapping's length.
        unsafe {
            self.base
                .add(slab as usize * SLAB_SIZE + page * PAGE_SIZE + off)
        }
    }

    /// Release the memory of `n` pages from `page` (they read as zeros afterwards).
    pub fn punch(&self, slab: SlabId, page: usize, n: usize) {
        if n == 0 {
            return;
        }
        let _ = self.ptr(slab, page, 0, n * PAGE_SIZE);
        // SAFETY: fallocate on the owned memfd over a range inside it; no memory is passed.
        let rc = unsafe {
            libc::fallocate(
                self.fd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                self.offset_of(slab, page) as libc::off_t,
                (n * PAGE_SIZE) as libc::off_t,
            )
        };
        if rc != 0 {
            // The memory stays resident; zero it so a reused page never shows old data.
            log::warn!(
                "page cache: releasing pages failed: {}",
                io::Error::last_os_error()
            );
            self.zero(slab, page, 0, n * PAGE_SIZE);
        }
    }

    /// Give `n` pages from `page` their memory in one call, instead of one page fault each when
    /// they are first written (best effort: an old kernel without MADV_POPULATE_WRITE simply
    /// faults them one by one). Their content does not change.
    pub fn populate(&self, slab: SlabId, page: usize, n: usize) {
        if n == 0 {
            return;
        }
        let p = self.ptr(slab, page, 0, n * PAGE_SIZE);
        // SAFETY: madvise over a range inside the mapping (checked by `ptr`); populating
        // changes no byte of it.
        unsafe {
            libc::madvise(
                p as *mut libc::c_void,
                n * PAGE_SIZE,
                libc::MADV_POPULATE_WRITE,
            )
        };
    }

    /// Does page `page` of `slab` hold memory (was it written since it was last punched)? A
    /// window's user may store into pages the cache does not track.
    pub fn has_data(&self, slab: SlabId, page: usize) -> bool {
        let off = self.offset_of(slab, page) as libc::off_t;
        let _ = self.ptr(slab, page, 0, PAGE_SIZE);
        // SAFETY: lseek on the owned memfd; no memory is passed.
        let at = unsafe { libc::lseek(self.fd.as_raw_fd(), off, libc::SEEK_DATA) };
        // ENXIO (no data after `off`) and other errors: nothing there we can see.
        at >= 0 && at < off + PAGE_SIZE as libc::off_t
    }

    /// Copy out of the slab, starting `off` bytes into page `page` (may span pages).
    pub fn read(&self, slab: SlabId, page: usize, off: usize, dst: &mut [u8]) {
        let src = self.ptr(slab, page, off, dst.len());
        // SAFETY: `src` covers dst.len() bytes inside the mapping (checked by `ptr`); the
        // destination is a distinct Rust buffer, so the ranges cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) }
    }

    /// Copy into the slab, starting `off` bytes into page `page` (may span pages).
    pub fn write(&self, slab: SlabId, page: usize, off: usize, src: &[u8]) {
        let dst = self.ptr(slab, page, off, src.len());
        // SAFETY: `dst` covers src.len() bytes inside the mapping (checked by `ptr`); the source
        // is a distinct Rust buffer.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) }
    }

    /// Zero `len` bytes from `off` into page `page`.
    pub fn zero(&self, slab: SlabId, page: usize, off: usize, len: usize) {
        let dst = self.ptr(slab, page, off, len);
        // SAFETY: `dst` covers `len` bytes inside the mapping (checked by `ptr`).
        unsafe { std::ptr::write_bytes(dst, 0, len) }
    }

    /// `len` bytes from `off` into page `page` (may span pages of the slab), for device I/O.
    ///
    /// # Safety
    /// The caller must hold the owning file's lock so that no other thread writes these bytes
    /// while the slice lives, and must not keep the slice past that lock.
    pub unsafe fn bytes(&self, slab: SlabId, page: usize, off: usize, len: usize) -> &[u8] {
        let p = self.ptr(slab, page, off, len);
        // SAFETY: the range is inside the mapping (checked by `ptr`); exclusivity is the
        // caller's promise (see above).
        unsafe { std::slice::from_raw_parts(p, len) }
    }

    /// `len` bytes from `off` into page `page` as a mutable slice, for device reads.
    ///
    /// # Safety
    /// As for [`Arena::bytes`], and no other slice of these bytes may exist meanwhile.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn bytes_mut(&self, slab: SlabId, page: usize, off: usize, len: usize) -> &mut [u8] {
        let p = self.ptr(slab, page, off, len);
        // SAFETY: the range is inside the mapping (checked by `ptr`); exclusivity is the
        // caller's promise (see above).
        unsafe { std::slice::from_raw_parts_mut(p, len) }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `new`; no slice outlives the arena.
        unsafe {
            libc::munmap(
                self.base as *mut libc::c_void,
                self.slabs as usize * SLAB_SIZE,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rss_of_memfd(a: &Arena) -> u64 {
        // Allocated bytes of the memfd (st_blocks × 512).
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat into a zeroed stat struct on a valid descriptor.
        assert_eq!(unsafe { libc::fstat(a.fd(), &mut st) }, 0);
        st.st_blocks as u64 * 512
    }

    #[test]
    fn pages_cost_memory_only_while_touched() {
        let a = Arena::new(4).unwrap();
        assert_eq!(rss_of_memfd(&a), 0);
        let (s, _) = a.alloc_slab().unwrap();
        a.write(s, 3, 10, b"hello");
        let mut out = [0u8; 5];
        a.read(s, 3, 10, &mut out);
        assert_eq!(&out, b"hello");
        assert_eq!(rss_of_memfd(&a), PAGE_SIZE as u64);
        assert!(a.has_data(s, 3));
        assert!(!a.has_data(s, 4));
        a.punch(s, 3, 1);
        assert_eq!(rss_of_memfd(&a), 0);
        assert!(!a.has_data(s, 3));
        a.read(s, 3, 10, &mut out);
        assert_eq!(out, [0u8; 5]);
        a.free_slab(s);
        assert_eq!(a.free_slabs(), 4);
    }

    #[test]
    fn slabs_run_out_and_come_back() {
        let a = Arena::new(2).unwrap();
        let (x, _) = a.alloc_slab().unwrap();
        let (y, _) = a.alloc_slab().unwrap();
        assert_ne!(x, y);
        assert!(a.alloc_slab().is_none());
        a.write(y, 511, 4090, b"abcdef");
        a.free_slab(y);
        let (z, _) = a.alloc_slab().unwrap();
        let mut out = [1u8; 6];
        a.read(z, 511, 4090, &mut out);
        assert_eq!(out, [0u8; 6], "a reused slab reads as zeros");
    }

    #[test]
    fn kept_slabs_come_back_first_newest_first_with_their_memory() {
        let a = Arena::new(4).unwrap();
        let (x, hx) = a.alloc_slab().unwrap();
        let (y, _) = a.alloc_slab().unwrap();
        assert!(hx.is_empty(), "a clean slab has no page");
        a.write(x, 0, 0, b"x-data");
        a.write(y, 7, 0, b"y-data");
        let mut hy = PageBits::default();
        hy.set(7);
        hy.set(8);
        let mut hx = PageBits::default();
        hx.set(0);
        a.keep_slab(x, hx);
        a.keep_slab(y, hy);
        assert_eq!((a.kept_pages(), a.free_slabs()), (3, 4));
        // Just used: not idle yet.
        assert!(a.kept_idle(Duration::ZERO));
        assert!(!a.kept_idle(Duration::from_secs(3600)));
        // Last kept, first given out, with its bytes still there.
        assert_eq!(a.alloc_slab(), Some((y, hy)));
        let mut out = [0u8; 6];
        a.read(y, 7, 0, &mut out);
        assert_eq!(&out, b"y-data");
        assert!(a.has_data(y, 7));
        assert_eq!(a.kept_pages(), 1);
        // Trimming releases the oldest kept slab: it comes back clean, after the kept ones.
        a.keep_slab(y, hy);
        assert_eq!(a.trim_kept(1), 1);
        assert_eq!(a.kept_pages(), 2);
        assert!(!a.has_data(x, 0));
        assert_eq!(a.alloc_slab(), Some((y, hy)));
        let (z, hz) = a.alloc_slab().unwrap();
        assert!(hz.is_empty());
        a.read(z, 0, 0, &mut out);
        assert_eq!(out, [0u8; 6], "a clean slab reads as zeros");
        // A slab kept with no page is simply clean.
        a.keep_slab(z, PageBits::default());
        assert_eq!(a.kept_pages(), 0);
        assert_eq!(a.trim_kept(10), 0);
    }

    #[test]
    fn page_bits_count_and_find_runs() {
        let mut b = PageBits::default();
        for p in [0, 1, 2, 63, 64, 65, 511] {
            b.set(p);
        }
        b.clear(1);
        assert_eq!(b.count(), 6);
        assert_eq!(b.runs(), vec![(0, 1), (2, 1), (63, 3), (511, 1)]);
        assert!(b.get(64) && !b.get(1) && !b.is_empty());
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn access_past_the_slab_is_refused() {
        let a = Arena::new(1).unwrap();
        let mut out = [0u8; 2];
        a.read(0, 511, 4095, &mut out);
    }
}
