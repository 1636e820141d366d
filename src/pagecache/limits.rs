//! The cache's bounds and counters: resident, dirty and under-writeback pages against the limit,
//! the LRU clock, and the slabs DAX window mappings pin. Shared by every file's mapping.
//!
//! It also decides what a freed slab's memory becomes. Every page of the memfd that holds memory
//! is counted in `held` (resident pages, and the pages kept slabs still hold). A freed slab keeps
//! its memory for the next owner while `held` stays within the cache size (plus the pinned
//! slabs); past it, the slab is punched. When new memory pushes `held` past the bound, the
//! least recently kept slabs are punched first. A slab a window mapped is always punched: the
//! guest may have stored into pages the cache never tracked.

use super::arena::{Arena, PAGE_SIZE, PageBits, SLAB_PAGES, SLAB_SIZE, SlabId};
use std::ops::Deref;
use std::time::Duration;

/// Kept slabs no writer took or freed for this long give their memory back.
const KEPT_IDLE: Duration = Duration::from_secs(30);
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A value alone on its cache line. The counters change per page, from different threads
/// (writers, the flusher, writeback's I/O threads): sharing one line would make every update
/// wait for the line to come over from another core.
#[repr(align(64))]
pub(super) struct Line<T>(T);

impl<T> Deref for Line<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

pub struct PageCache {
    pub arena: Arena,
    limit_pages: usize,
    pub(super) resident: Line<AtomicUsize>,
    pub(super) dirty: Line<AtomicUsize>,
    pub(super) writeback: Line<AtomicUsize>,
    pub(super) tick: Line<AtomicU64>,
    /// Slabs pinned by window mappings (their pages are not counted against the limit: a DAX
    /// window bounds them).
    pub(super) pinned_slabs: AtomicUsize,
    /// Pages of the memfd known to hold memory: those of live chunks (resident, or left in a
    /// reused slab by its last owner) and those of kept free slabs.
    held: Line<AtomicUsize>,
}

impl PageCache {
    /// A cache of `bytes` (at least 8 MiB) with `slab_factor` times as many slabs of address
    /// space as the size needs when every slab is full (sparse files touch slabs partly).
    pub fn new(bytes: u64, slab_factor: u32) -> std::io::Result<PageCache> {
        let bytes = bytes.max(8 << 20);
        let limit_pages = (bytes / PAGE_SIZE as u64) as usize;
        let slabs = (bytes.div_ceil(SLAB_SIZE as u64) * slab_factor.max(1) as u64).min(1 << 20);
        Ok(PageCache {
            arena: Arena::new(slabs as u32)?,
            limit_pages,
            resident: Line(AtomicUsize::new(0)),
            dirty: Line(AtomicUsize::new(0)),
            writeback: Line(AtomicUsize::new(0)),
            tick: Line(AtomicU64::new(1)),
            pinned_slabs: AtomicUsize::new(0),
            held: Line(AtomicUsize::new(0)),
        })
    }

    /// Pages of the memfd known to hold memory (live and kept slabs).
    pub fn held_pages(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// What `held` may reach: the cache size plus the pinned slabs.
    fn held_bound(&self) -> usize {
        self.limit_pages
            .saturating_add(self.pinned_slabs() * SLAB_PAGES)
    }

    /// A free slab for a new chunk, with the pages that still hold its last owner's bytes.
    pub(super) fn take_slab(&self) -> Option<(SlabId, PageBits)> {
        self.arena.alloc_slab()
    }

    /// A chunk gave its slab back; `held` are its pages holding memory. `punch`: its memory must
    /// go (a window mapped it).
    pub(super) fn release_slab(&self, slab: SlabId, held: PageBits, punch: bool) {
        if !punch && self.held_pages() <= self.held_bound() {
            self.arena.keep_slab(slab, held);
        } else {
            self.arena.free_slab(slab);
            self.held.fetch_sub(held.count(), Ordering::Relaxed);
        }
    }

    /// `n` pages got memory. Past the bound, kept slabs give theirs back.
    pub(super) fn note_held(&self, n: usize) {
        let now = self.held.fetch_add(n, Ordering::Relaxed) + n;
        let bound = self.held_bound();
        if now > bound && self.arena.kept_pages() > 0 {
            let gone = self.arena.trim_kept(now - bound);
            self.held.fetch_sub(gone, Ordering::Relaxed);
        }
    }

    /// `n` pages of live chunks were punched.
    pub(super) fn note_unheld(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::Relaxed);
    }

    /// Give back the memory of every kept slab (the cache went idle, or memory is short).
    pub fn release_kept(&self) -> usize {
        let gone = self.arena.trim_kept(usize::MAX);
        self.held.fetch_sub(gone, Ordering::Relaxed);
        gone
    }

    /// Give back the memory of the kept slabs once no writer has used them for a while (the
    /// writes stopped: the memory would only sit there). Returns the pages released.
    pub fn release_idle_kept(&self) -> usize {
        if self.arena.kept_idle(KEPT_IDLE) {
            self.release_kept()
        } else {
            0
        }
    }

    pub fn limit_pages(&self) -> usize {
        self.limit_pages
    }

    pub fn resident_pages(&self) -> usize {
        self.resident.load(Ordering::Relaxed)
    }

    pub fn dirty_pages(&self) -> usize {
        self.dirty.load(Ordering::Relaxed)
    }

    /// Pages with blocks under writeback (their write has not completed yet).
    pub fn writeback_pages(&self) -> usize {
        self.writeback.load(Ordering::Relaxed)
    }

    /// Dirty pages plus pages under writeback: what the dirty limits count.
    pub fn unclean_pages(&self) -> usize {
        self.dirty_pages() + self.writeback_pages()
    }

    /// Dirty pages past which writers write back before dirtying more (half the cache).
    pub fn dirty_limit(&self) -> usize {
        self.limit_pages / 2
    }

    /// Dirty pages past which background writeback starts (a quarter of the cache).
    pub fn background_limit(&self) -> usize {
        self.limit_pages / 4
    }

    /// Resident pages past the limit (what eviction should free).
    pub fn over_limit(&self) -> usize {
        let pinned = self.pinned_slabs() * SLAB_PAGES;
        self.resident_pages()
            .saturating_sub(self.limit_pages.saturating_add(pinned))
    }

    /// Slabs pinned by window mappings.
    pub fn pinned_slabs(&self) -> usize {
        self.pinned_slabs.load(Ordering::Relaxed)
    }
}
