//! The page cache: file data in shared memory. [`arena`] carves one sparse memfd into 2 MiB slabs;
//! [`mapping`] tracks one file's resident pages with per-block uptodate and dirty bits. The cache
//! is bounded: [`PageCache::limit_pages`] resident pages, of which at most the dirty limit may be
//! dirty (writers past it write back first, balance_dirty_pages-style); background writeback
//! starts at the background threshold. Policy — what to evict, when to write back — belongs to
//! the data path, which knows the files; this layer knows folios, never extents.

pub mod arena;
pub mod mapping;

pub use arena::{Arena, PAGE_SIZE, SLAB_PAGES, SLAB_SIZE, SlabId};
pub use mapping::{Mapping, NoSlab, PageIndex, PageState};

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Default cache size: 512 MiB.
pub const DEFAULT_CACHE_BYTES: u64 = 512 << 20;

pub struct PageCache {
    pub arena: Arena,
    limit_pages: usize,
    resident: AtomicUsize,
    dirty: AtomicUsize,
    tick: AtomicU64,
    /// Slabs pinned by window mappings (their pages are not counted against the limit: a DAX
    /// window bounds them).
    pinned_slabs: AtomicUsize,
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

/// Parse a size such as `512M`, `4G`, `65536`, `1T` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = s[i..].to_ascii_uppercase();
            let m: u64 = match unit.trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => return Err(format!("unknown size unit in {s:?} (use K, M, G or T)")),
            };
            (&s[..i], m)
        }
        None => (s, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid size {s:?} (examples: 512M, 4G)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_parse_like_a_user_writes_them() {
        use super::parse_size;
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
