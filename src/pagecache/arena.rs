//! The arena: one large *sparse* memfd, mapped once into the daemon, carved into 2 MiB slabs.
//! A slab holds the pages of one (inode, 2 MiB-aligned file range); page *i* of that range sits
//! at slab offset *i* × 4 KiB, so a whole chunk of a file is one contiguous piece of the memfd
//! (what a DAX window maps with one request). A page costs memory only once touched; dropping it
//! gives the memory back with `fallocate(PUNCH_HOLE)`.
//!
//! This module owns the only `unsafe` of the page cache: the mapping and the raw copies in and
//! out of it. Callers serialize access to a page through the owning file's locks (see
//! `fs::data`); the arena itself only checks bounds.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

/// Bytes per page.
pub const PAGE_SIZE: usize = 4096;
/// Pages per slab.
pub const SLAB_PAGES: usize = 512;
/// Bytes per slab (2 MiB).
pub const SLAB_SIZE: usize = PAGE_SIZE * SLAB_PAGES;

/// Index of a slab in the arena.
pub type SlabId = u32;

pub struct Arena {
    fd: OwnedFd,
    base: *mut u8,
    slabs: u32,
    free: Mutex<Vec<SlabId>>,
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
            free: Mutex::new((0..slabs).rev().collect()),
        })
    }

    /// The memfd (a DAX window maps slabs of it).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn slab_count(&self) -> u32 {
        self.slabs
    }

    /// Slabs not in use.
    pub fn free_slabs(&self) -> usize {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Take a free slab (its pages read as zeros), or `None` when all are in use.
    pub fn alloc_slab(&self) -> Option<SlabId> {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    /// Give a slab back; its memory is released.
    pub fn free_slab(&self, slab: SlabId) {
        self.punch(slab, 0, SLAB_PAGES);
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(slab);
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
        let s = a.alloc_slab().unwrap();
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
        let x = a.alloc_slab().unwrap();
        let y = a.alloc_slab().unwrap();
        assert_ne!(x, y);
        assert!(a.alloc_slab().is_none());
        a.write(y, 511, 4090, b"abcdef");
        a.free_slab(y);
        let z = a.alloc_slab().unwrap();
        let mut out = [1u8; 6];
        a.read(z, 511, 4090, &mut out);
        assert_eq!(out, [0u8; 6], "a reused slab reads as zeros");
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn access_past_the_slab_is_refused() {
        let a = Arena::new(1).unwrap();
        let mut out = [0u8; 2];
        a.read(0, 511, 4095, &mut out);
    }
}
