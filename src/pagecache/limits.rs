//! The cache's bounds and counters: resident, dirty and under-writeback pages against the limit,
//! the LRU clock, and the slabs DAX window mappings pin. Shared by every file's mapping.

use super::arena::{Arena, PAGE_SIZE, SLAB_PAGES, SLAB_SIZE};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

pub struct PageCache {
    pub arena: Arena,
    limit_pages: usize,
    pub(super) resident: AtomicUsize,
    pub(super) dirty: AtomicUsize,
    pub(super) writeback: AtomicUsize,
    pub(super) tick: AtomicU64,
    /// Slabs pinned by window mappings (their pages are not counted against the limit: a DAX
    /// window bounds them).
    pub(super) pinned_slabs: AtomicUsize,
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
            resident: AtomicUsize::new(0),
            dirty: AtomicUsize::new(0),
            writeback: AtomicUsize::new(0),
            tick: AtomicU64::new(1),
            pinned_slabs: AtomicUsize::new(0),
        })
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
