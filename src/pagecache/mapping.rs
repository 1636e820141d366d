//! The pages of one file: which file pages are resident (and in which slab), and per block
//! whether it is uptodate (holds the file's data), dirty (newer than the disk) and under
//! writeback (its data is being written to the disk: nobody may change, drop or evict it until
//! the write completed). Knows nothing of extents or of how pages are filled or written back:
//! the data path (`fs::data`) drives it.
//!
//! Locking: a `Mapping` is owned by one file's `Mutex`; the [`PageCache`] counters are atomics.

use super::arena::{PAGE_SIZE, SLAB_PAGES, SlabId};
use super::limits::PageCache;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Index of a page in a file (file offset / 4096).
pub type PageIndex = u64;

/// The state of one resident page: bit *b* of a mask is the page's block *b* (a page holds
/// 4096 / block size blocks: one, two or four).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageState {
    pub resident: bool,
    pub uptodate: u8,
    pub dirty: u8,
    pub writeback: u8,
    /// Dropped (truncate, punch) while a window mapped its chunk: until someone writes it, its
    /// zeros are a hole, not data.
    pub cut: bool,
}

/// A 2 MiB-aligned chunk of the file and the slab that holds it.
#[derive(Debug)]
struct Chunk {
    slab: SlabId,
    pages: Box<[PageState]>,
    resident: u32,
    dirty: u32,
    /// Pages with a block under writeback.
    writeback: u32,
    last_use: u64,
    /// Window mappings of this chunk (a DAX window shows the slab to a guest): while any is
    /// live the chunk keeps its slab and no page of it is evicted.
    pins: u32,
    /// Of those, the writable ones (the guest may store into any page of the chunk).
    write_pins: u32,
}

#[derive(Debug, Default)]
pub struct Mapping {
    chunks: BTreeMap<u64, Chunk>,
    resident: usize,
    dirty: usize,
    writeback: usize,
    /// When the oldest dirty page of the file was dirtied (`None`: nothing dirty).
    dirty_since: Option<Instant>,
    /// Chunks with a window mapping, and those with a writable one.
    pinned: usize,
    write_pinned: usize,
    /// Since when writable window mappings hold data not written back (they count as dirty).
    write_mapped_since: Option<Instant>,
}

/// No slab was free: the caller must evict or write back first.
#[derive(Debug, PartialEq, Eq)]
pub struct NoSlab;

fn split(idx: PageIndex) -> (u64, usize) {
    (idx / SLAB_PAGES as u64, (idx % SLAB_PAGES as u64) as usize)
}

impl Mapping {
    pub fn resident_pages(&self) -> usize {
        self.resident
    }

    pub fn dirty_pages(&self) -> usize {
        self.dirty
    }

    /// Pages with a block under writeback.
    pub fn writeback_pages(&self) -> usize {
        self.writeback
    }

    /// True when a page of `[from, to)` has a block under writeback.
    pub fn writeback_in(&self, from: PageIndex, to: PageIndex) -> bool {
        if self.writeback == 0 {
            return false;
        }
        let (c0, _) = split(from);
        for (&c, ch) in self.chunks.range(c0..) {
            if c * SLAB_PAGES as u64 >= to {
                break;
            }
            if ch.writeback == 0 {
                continue;
            }
            let first = c * SLAB_PAGES as u64;
            let lo = from.max(first) - first;
            let hi = to.min(first + SLAB_PAGES as u64) - first;
            if ch.pages[lo as usize..hi as usize]
                .iter()
                .any(|pg| pg.writeback != 0)
            {
                return true;
            }
        }
        false
    }

    /// When the file's oldest unwritten data was dirtied: dirty pages, or a writable window
    /// mapping (whose pages count as dirty while mapped).
    pub fn dirty_since(&self) -> Option<Instant> {
        match (self.dirty_since, self.write_mapped_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Chunks with a live window mapping.
    pub fn pinned_chunks(&self) -> usize {
        self.pinned
    }

    /// Chunks (2 MiB file ranges, by index) with a writable window mapping.
    pub fn write_mapped_chunks(&self) -> Vec<u64> {
        if self.write_pinned == 0 {
            return Vec::new();
        }
        self.chunks
            .iter()
            .filter(|(_, ch)| ch.write_pins > 0)
            .map(|(&c, _)| c)
            .collect()
    }

    /// The writable mappings' pages were just written back: they count as dirty again from now.
    pub fn write_mapped_cleaned(&mut self) {
        self.write_mapped_since = (self.write_pinned > 0).then(Instant::now);
    }

    /// Pin chunk `c` for a window mapping (writable with `write`): it gets a slab if it has
    /// none, keeps it until the last [`Mapping::unpin`], and none of its pages is evicted
    /// meanwhile. Returns the slab.
    pub fn pin(&mut self, pc: &PageCache, c: u64, write: bool) -> Result<SlabId, NoSlab> {
        let tick = pc.tick.fetch_add(1, Ordering::Relaxed);
        let ch = chunk_or_new(&mut self.chunks, pc, c, tick)?;
        ch.last_use = tick;
        ch.pins += 1;
        if ch.pins == 1 {
            self.pinned += 1;
            pc.pinned_slabs.fetch_add(1, Ordering::Relaxed);
        }
        if write {
            ch.write_pins += 1;
            if ch.write_pins == 1 {
                self.write_pinned += 1;
            }
            self.write_mapped_since.get_or_insert_with(Instant::now);
        }
        Ok(ch.slab)
    }

    /// Undo one [`Mapping::pin`] of chunk `c`. A chunk left with no page and no pin gives its
    /// slab back. False when the chunk had no such pin (nothing changed).
    pub fn unpin(&mut self, pc: &PageCache, c: u64, write: bool) -> bool {
        let Some(ch) = self.chunks.get_mut(&c) else {
            return false;
        };
        if ch.pins == 0 || (write && ch.write_pins == 0) {
            return false;
        }
        ch.pins -= 1;
        if write {
            ch.write_pins -= 1;
            if ch.write_pins == 0 {
                self.write_pinned -= 1;
            }
        }
        if ch.pins == 0 {
            self.pinned -= 1;
            pc.pinned_slabs.fetch_sub(1, Ordering::Relaxed);
            if ch.resident == 0 {
                let slab = ch.slab;
                self.chunks.remove(&c);
                pc.arena.free_slab(slab);
            }
        }
        if self.write_pinned == 0 && self.write_mapped_since.is_some() {
            // The last writable mapping went: what it wrote is in dirty pages now.
            self.write_mapped_since = None;
        }
        true
    }

    /// Is chunk `c` mapped into a window?
    pub fn is_pinned(&self, c: u64) -> bool {
        self.chunks.get(&c).is_some_and(|ch| ch.pins > 0)
    }

    /// Is chunk `c` mapped writable into a window?
    pub fn is_write_pinned(&self, c: u64) -> bool {
        self.chunks.get(&c).is_some_and(|ch| ch.write_pins > 0)
    }

    /// Last use of any chunk (for LRU eviction across files).
    pub fn last_use(&self) -> u64 {
        self.chunks.values().map(|c| c.last_use).max().unwrap_or(0)
    }

    /// The state of page `idx` (all clear when not resident).
    pub fn state(&self, idx: PageIndex) -> PageState {
        let (c, p) = split(idx);
        self.chunks
            .get(&c)
            .map(|ch| ch.pages[p])
            .unwrap_or_default()
    }

    /// The first block in `[from, to)` (block numbers; `bpp` blocks per page) for which
    /// `has(page state, the block's bit)` is `want`. `has` must be false for a page that is
    /// not resident (all clear), so looking for `true` skips chunks that are not in the cache.
    pub fn find_block(
        &self,
        from: u64,
        to: u64,
        bpp: u64,
        want: bool,
        has: impl Fn(&PageState, u8) -> bool,
    ) -> Option<u64> {
        let chunk_blocks = SLAB_PAGES as u64 * bpp;
        let mut b = from;
        while b < to {
            let (c, _) = split(b / bpp);
            let Some(ch) = self.chunks.get(&c) else {
                if !want {
                    return Some(b);
                }
                // Not in the cache: on to the next chunk that is.
                let next = self.chunks.range(c + 1..).next()?.0;
                b = b.max(next * chunk_blocks);
                continue;
            };
            let chunk_end = to.min((c + 1) * chunk_blocks);
            while b < chunk_end {
                let pg = &ch.pages[((b / bpp) % SLAB_PAGES as u64) as usize];
                if has(pg, 1 << (b % bpp)) == want {
                    return Some(b);
                }
                b += 1;
            }
        }
        None
    }

    /// Where page `idx` lives, if its chunk has a slab.
    pub fn slab_of(&self, idx: PageIndex) -> Option<(SlabId, usize)> {
        let (c, p) = split(idx);
        self.chunks.get(&c).map(|ch| (ch.slab, p))
    }

    /// Make page `idx` resident (its chunk gets a slab if needed) and return where it lives.
    /// A new page reads as zeros with no block uptodate.
    pub fn get_or_create(
        &mut self,
        pc: &PageCache,
        idx: PageIndex,
    ) -> Result<(SlabId, usize), NoSlab> {
        let (c, p) = split(idx);
        let tick = pc.tick.fetch_add(1, Ordering::Relaxed);
        let ch = chunk_or_new(&mut self.chunks, pc, c, tick)?;
        ch.last_use = tick;
        if !ch.pages[p].resident {
            ch.pages[p].resident = true;
            ch.resident += 1;
            self.resident += 1;
            pc.resident.fetch_add(1, Ordering::Relaxed);
        }
        Ok((ch.slab, p))
    }

    /// Note a use of the chunk holding `idx` (reads keep chunks young).
    pub fn touch(&mut self, pc: &PageCache, idx: PageIndex) {
        let (c, _) = split(idx);
        if let Some(ch) = self.chunks.get_mut(&c) {
            ch.last_use = pc.tick.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Set the uptodate bits `mask` of a resident page.
    pub fn set_uptodate(&mut self, idx: PageIndex, mask: u8) {
        let (c, p) = split(idx);
        if let Some(ch) = self.chunks.get_mut(&c) {
            ch.pages[p].uptodate |= mask;
        }
    }

    /// Replace the uptodate bits of a resident page (blocks cut off by a truncate or punch).
    pub fn set_uptodate_mask(&mut self, idx: PageIndex, mask: u8) {
        let (c, p) = split(idx);
        if let Some(ch) = self.chunks.get_mut(&c) {
            ch.pages[p].uptodate = mask;
        }
    }

    /// Mark blocks `mask` of a resident page dirty (and uptodate).
    pub fn set_dirty(&mut self, pc: &PageCache, idx: PageIndex, mask: u8) {
        let (c, p) = split(idx);
        let Some(ch) = self.chunks.get_mut(&c) else {
            return;
        };
        let pg = &mut ch.pages[p];
        pg.uptodate |= mask;
        pg.cut = false;
        if pg.dirty == 0 && mask != 0 {
            ch.dirty += 1;
            self.dirty += 1;
            pc.dirty.fetch_add(1, Ordering::Relaxed);
            if self.dirty_since.is_none() {
                self.dirty_since = Some(Instant::now());
            }
        }
        pg.dirty |= mask;
    }

    /// Clear the dirty bits `mask` of a page (its data reached the disk).
    pub fn clear_dirty(&mut self, pc: &PageCache, idx: PageIndex, mask: u8) {
        let (c, p) = split(idx);
        let Some(ch) = self.chunks.get_mut(&c) else {
            return;
        };
        let pg = &mut ch.pages[p];
        if pg.dirty != 0 {
            pg.dirty &= !mask;
            if pg.dirty == 0 {
                ch.dirty -= 1;
                self.dirty -= 1;
                pc.dirty.fetch_sub(1, Ordering::Relaxed);
                if self.dirty == 0 {
                    self.dirty_since = None;
                }
            }
        }
    }

    /// Blocks `mask` of a dirty page go to the disk: they are clean and under writeback until
    /// [`Mapping::end_writeback`]. Dirty blocks already under writeback are left dirty (the
    /// next pass writes them).
    pub fn start_writeback(&mut self, pc: &PageCache, idx: PageIndex, mask: u8) -> u8 {
        let (c, p) = split(idx);
        let Some(ch) = self.chunks.get(&c) else {
            return 0;
        };
        let pg = ch.pages[p];
        let mask = mask & pg.dirty & !pg.writeback;
        if mask == 0 {
            return 0;
        }
        self.clear_dirty(pc, idx, mask);
        let Some(ch) = self.chunks.get_mut(&c) else {
            return 0;
        };
        let pg = &mut ch.pages[p];
        if pg.writeback == 0 {
            ch.writeback += 1;
            self.writeback += 1;
            pc.writeback.fetch_add(1, Ordering::Relaxed);
        }
        pg.writeback |= mask;
        mask
    }

    /// The write of blocks `mask` of page `idx` completed (or failed).
    pub fn end_writeback(&mut self, pc: &PageCache, idx: PageIndex, mask: u8) {
        let (c, p) = split(idx);
        let Some(ch) = self.chunks.get_mut(&c) else {
            return;
        };
        let pg = &mut ch.pages[p];
        if pg.writeback != 0 {
            pg.writeback &= !mask;
            if pg.writeback == 0 {
                ch.writeback -= 1;
                self.writeback -= 1;
                pc.writeback.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Dirty pages in `[from, to)` in file order: (page, dirty mask).
    pub fn dirty_in(&self, from: PageIndex, to: PageIndex) -> Vec<(PageIndex, u8)> {
        self.dirty_in_limited(from, to, usize::MAX)
    }

    /// The first `max` dirty pages in `[from, to)` in file order: (page, dirty mask).
    pub fn dirty_in_limited(
        &self,
        from: PageIndex,
        to: PageIndex,
        max: usize,
    ) -> Vec<(PageIndex, u8)> {
        let mut out = Vec::new();
        let (c0, _) = split(from);
        for (&c, ch) in self.chunks.range(c0..) {
            if c * SLAB_PAGES as u64 >= to {
                break;
            }
            if ch.dirty == 0 {
                continue;
            }
            for (p, pg) in ch.pages.iter().enumerate() {
                let idx = c * SLAB_PAGES as u64 + p as u64;
                if pg.dirty != 0 && idx >= from && idx < to {
                    out.push((idx, pg.dirty));
                    if out.len() >= max {
                        return out;
                    }
                }
            }
        }
        out
    }

    /// The last dirty page before `to`.
    pub fn last_dirty_before(&self, to: PageIndex) -> Option<PageIndex> {
        if self.dirty == 0 || to == 0 {
            return None;
        }
        let (c_last, _) = split(to - 1);
        for (&c, ch) in self.chunks.range(..=c_last).rev() {
            if ch.dirty == 0 {
                continue;
            }
            for (p, pg) in ch.pages.iter().enumerate().rev() {
                let idx = c * SLAB_PAGES as u64 + p as u64;
                if pg.dirty != 0 && idx < to {
                    return Some(idx);
                }
            }
        }
        None
    }

    /// Drop page `idx` whatever its state; returns the state it had.
    fn drop_page(&mut self, pc: &PageCache, c: u64, p: usize) -> PageState {
        let Some(ch) = self.chunks.get_mut(&c) else {
            return PageState::default();
        };
        let old = ch.pages[p];
        if !old.resident {
            return old;
        }
        debug_assert_eq!(old.writeback, 0, "a page under writeback is dropped");
        if old.dirty != 0 {
            ch.dirty -= 1;
            self.dirty -= 1;
            pc.dirty.fetch_sub(1, Ordering::Relaxed);
        }
        if old.writeback != 0 {
            ch.writeback -= 1;
            self.writeback -= 1;
            pc.writeback.fetch_sub(1, Ordering::Relaxed);
        }
        ch.pages[p] = PageState {
            cut: ch.pins > 0,
            ..PageState::default()
        };
        ch.resident -= 1;
        self.resident -= 1;
        pc.resident.fetch_sub(1, Ordering::Relaxed);
        pc.arena.punch(ch.slab, p, 1);
        if ch.resident == 0 && ch.pins == 0 {
            let slab = ch.slab;
            self.chunks.remove(&c);
            pc.arena.free_slab(slab);
        }
        if self.dirty == 0 {
            self.dirty_since = None;
        }
        old
    }

    /// Drop every page in `[from, to)`, dirty ones included (truncate, punch). Returns how many
    /// dirty pages were dropped.
    pub fn drop_range(&mut self, pc: &PageCache, from: PageIndex, to: PageIndex) -> usize {
        let (c0, _) = split(from);
        let keys: Vec<u64> = self
            .chunks
            .range(c0..)
            .map(|(&c, _)| c)
            .take_while(|&c| c * (SLAB_PAGES as u64) < to)
            .collect();
        let mut dirty = 0;
        for c in keys {
            let first = c * SLAB_PAGES as u64;
            let lo = from.max(first);
            let hi = to.min(first + SLAB_PAGES as u64);
            let pinned = self.chunks.get(&c).is_some_and(|ch| ch.pins > 0);
            if lo == first && hi == first + SLAB_PAGES as u64 && !pinned {
                // The whole chunk goes: one punch for the slab.
                if let Some(ch) = self.chunks.remove(&c) {
                    debug_assert_eq!(ch.writeback, 0, "a page under writeback is dropped");
                    dirty += ch.dirty as usize;
                    self.dirty -= ch.dirty as usize;
                    self.writeback -= ch.writeback as usize;
                    pc.writeback
                        .fetch_sub(ch.writeback as usize, Ordering::Relaxed);
                    self.resident -= ch.resident as usize;
                    pc.dirty.fetch_sub(ch.dirty as usize, Ordering::Relaxed);
                    pc.resident
                        .fetch_sub(ch.resident as usize, Ordering::Relaxed);
                    pc.arena.free_slab(ch.slab);
                }
                continue;
            }
            for idx in lo..hi {
                if self.drop_page(pc, c, (idx - first) as usize).dirty != 0 {
                    dirty += 1;
                }
            }
        }
        if self.dirty == 0 {
            self.dirty_since = None;
        }
        dirty
    }

    /// Evict up to `max` clean pages (not under writeback), least recently used chunks first.
    /// Returns pages evicted.
    pub fn evict_clean(&mut self, pc: &PageCache, max: usize) -> usize {
        let mut order: Vec<(u64, u64)> = self
            .chunks
            .iter()
            .map(|(&c, ch)| (ch.last_use, c))
            .collect();
        order.sort_unstable();
        let mut n = 0;
        for (_, c) in order {
            if n >= max {
                break;
            }
            let Some(ch) = self.chunks.get(&c) else {
                continue;
            };
            if ch.pins > 0 {
                // A window shows these pages: they stay.
                continue;
            }
            if ch.dirty == 0 && ch.writeback == 0 {
                let resident = ch.resident as usize;
                if let Some(ch) = self.chunks.remove(&c) {
                    self.resident -= resident;
                    pc.resident.fetch_sub(resident, Ordering::Relaxed);
                    pc.arena.free_slab(ch.slab);
                }
                n += resident;
                continue;
            }
            let clean: Vec<usize> = ch
                .pages
                .iter()
                .enumerate()
                .filter(|(_, pg)| pg.resident && pg.dirty == 0 && pg.writeback == 0)
                .map(|(p, _)| p)
                .collect();
            for p in clean {
                if n >= max {
                    break;
                }
                self.drop_page(pc, c, p);
                n += 1;
            }
        }
        n
    }

    /// Copy `dst.len()` bytes out of resident page `idx` from byte `off` of the page.
    pub fn read_page(&self, pc: &PageCache, idx: PageIndex, off: usize, dst: &mut [u8]) {
        debug_assert!(off + dst.len() <= PAGE_SIZE);
        match self.slab_of(idx) {
            Some((slab, p)) if self.state(idx).resident => pc.arena.read(slab, p, off, dst),
            _ => dst.fill(0),
        }
    }
}

/// Chunk `c`, given a free slab when it has none.
fn chunk_or_new<'a>(
    chunks: &'a mut BTreeMap<u64, Chunk>,
    pc: &PageCache,
    c: u64,
    tick: u64,
) -> Result<&'a mut Chunk, NoSlab> {
    Ok(match chunks.entry(c) {
        std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::btree_map::Entry::Vacant(e) => {
            let slab = pc.arena.alloc_slab().ok_or(NoSlab)?;
            e.insert(Chunk {
                slab,
                pages: vec![PageState::default(); SLAB_PAGES].into_boxed_slice(),
                resident: 0,
                dirty: 0,
                writeback: 0,
                last_use: tick,
                pins: 0,
                write_pins: 0,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_and_resident_counts_follow_every_change() {
        let pc = PageCache::new(4 << 20, 8).unwrap();
        let mut m = Mapping::default();
        let (s, p) = m.get_or_create(&pc, 5).unwrap();
        pc.arena.write(s, p, 0, b"abc");
        m.set_dirty(&pc, 5, 1);
        m.get_or_create(&pc, 600).unwrap();
        m.set_uptodate(600, 1);
        assert_eq!((m.resident_pages(), m.dirty_pages()), (2, 1));
        assert_eq!(pc.dirty_pages(), 1);
        assert_eq!(m.dirty_in(0, 1000), vec![(5, 1)]);
        assert!(m.dirty_since().is_some());
        // Eviction takes only the clean page.
        assert_eq!(m.evict_clean(&pc, 10), 1);
        assert_eq!(m.state(600), PageState::default());
        assert!(m.state(5).resident);
        m.clear_dirty(&pc, 5, 1);
        assert_eq!(pc.dirty_pages(), 0);
        assert!(m.dirty_since().is_none());
        let mut out = [0u8; 3];
        m.read_page(&pc, 5, 0, &mut out);
        assert_eq!(&out, b"abc");
        assert_eq!(m.drop_range(&pc, 0, u64::MAX), 0);
        assert_eq!(pc.resident_pages(), 0);
        assert_eq!(pc.arena.free_slabs(), pc.arena.slab_count() as usize);
    }

    #[test]
    fn drop_range_counts_dirty_pages_and_frees_slabs() {
        let pc = PageCache::new(4 << 20, 8).unwrap();
        let mut m = Mapping::default();
        for idx in [0u64, 1, 511, 512, 1030] {
            m.get_or_create(&pc, idx).unwrap();
            m.set_dirty(&pc, idx, 0b1111);
        }
        assert_eq!(m.drop_range(&pc, 1, 513), 3);
        assert_eq!(m.dirty_in(0, u64::MAX), vec![(0, 15), (1030, 15)]);
        assert_eq!(pc.dirty_pages(), 2);
        assert_eq!(pc.arena.free_slabs(), pc.arena.slab_count() as usize - 2);
    }

    #[test]
    fn writeback_blocks_are_clean_but_neither_evicted_nor_taken_twice() {
        let pc = PageCache::new(4 << 20, 8).unwrap();
        let mut m = Mapping::default();
        for idx in [3u64, 4, 700] {
            m.get_or_create(&pc, idx).unwrap();
            m.set_dirty(&pc, idx, 0b0011);
        }
        assert_eq!(m.last_dirty_before(700), Some(4));
        assert_eq!(m.last_dirty_before(u64::MAX), Some(700));
        assert_eq!(m.dirty_in_limited(0, u64::MAX, 2), vec![(3, 3), (4, 3)]);
        // Block 0 of page 3 goes to the disk; block 1 stays dirty.
        assert_eq!(m.start_writeback(&pc, 3, 0b0001), 0b0001);
        assert_eq!(m.state(3).dirty, 0b0010);
        assert_eq!(m.state(3).writeback, 0b0001);
        assert_eq!((pc.dirty_pages(), pc.writeback_pages()), (3, 1));
        assert_eq!(pc.unclean_pages(), 4);
        // Blocks already under writeback are not taken again, even when re-dirtied.
        m.set_dirty(&pc, 3, 0b0001);
        assert_eq!(m.start_writeback(&pc, 3, 0b0011), 0b0010);
        assert_eq!(m.state(3).dirty, 0b0001);
        assert_eq!(m.start_writeback(&pc, 4, 0b0011), 0b0011);
        assert!(m.writeback_in(0, 5) && m.writeback_in(4, 5) && !m.writeback_in(5, 700));
        // Page 4 is clean but under writeback: eviction leaves it.
        assert_eq!(m.evict_clean(&pc, 100), 0);
        m.end_writeback(&pc, 4, 0b0011);
        assert!(!m.writeback_in(4, 5));
        assert_eq!(m.evict_clean(&pc, 100), 1);
        m.end_writeback(&pc, 3, 0b0011);
        assert_eq!(pc.writeback_pages(), 0);
        assert_eq!(m.writeback_pages(), 0);
        assert_eq!(m.dirty_in(0, u64::MAX), vec![(3, 1), (700, 3)]);
    }

    #[test]
    fn pinned_chunks_keep_their_slab_and_pages() {
        let pc = PageCache::new(4 << 20, 8).unwrap();
        let mut m = Mapping::default();
        let (s, _) = m.get_or_create(&pc, 3).unwrap();
        m.set_uptodate(3, 1);
        assert_eq!(m.pin(&pc, 0, false), Ok(s), "the chunk's own slab");
        assert_eq!(pc.pinned_slabs(), 1);
        // Eviction leaves a pinned chunk alone.
        assert_eq!(m.evict_clean(&pc, 100), 0);
        assert!(m.state(3).resident);
        // Truncating every page keeps the slab while it is mapped; the pages read as zeros.
        pc.arena.write(s, 3, 0, b"x");
        assert_eq!(m.drop_range(&pc, 0, u64::MAX), 0);
        assert_eq!(m.slab_of(3), Some((s, 3)));
        let mut b = [1u8];
        pc.arena.read(s, 3, 0, &mut b);
        assert_eq!(b, [0]);
        let free = pc.arena.free_slabs();
        // A writable pin of a chunk with no page yet allocates its slab.
        let w = m.pin(&pc, 7, true).unwrap();
        assert_eq!(pc.arena.free_slabs(), free - 1);
        assert_eq!(m.write_mapped_chunks(), vec![7]);
        assert!(
            m.dirty_since().is_some(),
            "a writable mapping counts as dirty"
        );
        assert!(!m.unpin(&pc, 0, true), "no writable pin on chunk 0");
        assert!(m.unpin(&pc, 7, true));
        assert!(m.unpin(&pc, 0, false));
        assert!(m.dirty_since().is_none());
        assert_eq!(pc.pinned_slabs(), 0);
        assert_eq!(
            pc.arena.free_slabs(),
            pc.arena.slab_count() as usize,
            "{w} given back"
        );
    }
}
