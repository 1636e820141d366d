//! The page cache: file data in shared memory. [`arena`] carves one sparse memfd into 2 MiB slabs;
//! [`mapping`] tracks one file's resident pages with per-block uptodate, dirty and writeback
//! bits. The cache
//! is bounded: [`PageCache::limit_pages`] resident pages, of which at most the dirty limit may be
//! dirty (writers past it write back first, balance_dirty_pages-style); background writeback
//! starts at the background threshold. Policy — what to evict, when to write back — belongs to
//! the data path, which knows the files; this layer knows folios, never extents.

pub mod arena;
mod limits;
pub mod mapping;
pub mod pressure;

pub use arena::{Arena, PAGE_SIZE, PageBits, SLAB_PAGES, SLAB_SIZE, SlabId};
pub use limits::PageCache;
pub use mapping::{Mapping, NoSlab, PageIndex, PageState};

/// Default cache size: 512 MiB.
pub const DEFAULT_CACHE_BYTES: u64 = 512 << 20;

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
