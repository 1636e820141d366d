//! Delayed-allocation reservations: blocks promised to buffered writes that have no block yet.
//! A reservation succeeds only while the free blocks cover every reservation plus a pool kept
//! for the metadata that writeback allocates (extent tree growth), the way ext4 keeps
//! `s_resv_clusters`. Ordinary allocations leave reserved blocks alone, so writeback never
//! meets ENOSPC for data it accepted.

use super::Allocator;
use std::sync::atomic::Ordering;

impl Allocator {
    /// Reserve `n` blocks for delayed allocation, keeping `pool` blocks free beside all
    /// reservations. False when they do not fit.
    pub fn reserve(&self, n: u64, pool: u64) -> bool {
        if n == 0 {
            return true;
        }
        // Against the allocations' room checks: both see the same free count.
        let _op = self.op();
        let (free, _) = self.free_counts();
        self.reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                (r + n + pool <= free).then_some(r + n)
            })
            .is_ok()
    }

    /// Give back `n` reserved blocks (allocated at writeback, or their data was dropped).
    pub fn release(&self, n: u64) {
        if n == 0 {
            return;
        }
        let r = self
            .reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                Some(r.saturating_sub(n))
            });
        if let Ok(before) = r
            && before < n
        {
            log::error!("delalloc reservation underflow: released {n} of {before}");
        }
    }

    /// Take back `n` reserved blocks [`Allocator::release`]d for an allocation that was then
    /// undone (its blocks are free again and still delayed).
    pub fn restore(&self, n: u64) {
        self.reserved.fetch_add(n, Ordering::AcqRel);
    }

    /// Blocks reserved for delayed allocation.
    pub fn reserved(&self) -> u64 {
        self.reserved.load(Ordering::Acquire)
    }

    /// Blocks kept free beside the delalloc reservations for the metadata writeback allocates
    /// (2% of the file system, at most 4096 blocks; the kernel's s_resv_clusters). Data that
    /// was not reserved never takes them.
    pub fn metadata_pool(&self) -> u64 {
        (self.geo.blocks_count / 50).min(4096)
    }

    /// Free blocks not promised to delayed allocation: what other allocations may take.
    pub fn unreserved_free(&self) -> u64 {
        self.free_counts().0.saturating_sub(self.reserved())
    }
}
