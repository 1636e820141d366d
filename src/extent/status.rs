//! The extent status tree (the kernel's fs/ext4/extent_status.c, in our terms): per inode, an
//! in-memory map of logical block ranges to what they are — written or unwritten blocks, a
//! *delayed* range (data accepted by a buffered write, no block allocated yet; the delalloc data
//! path records these) or a hole.
//!
//! A [`StatusTree`] is a `BTreeMap` keyed by the first logical block of each range; ranges never
//! overlap. [`StatusTree::insert`] overwrites whatever it covers (splitting ranges that stick out
//! at either end) and merges with neighbours of the same kind that continue it (for written and
//! unwritten ranges only when the physical blocks continue too).
//!
//! The tree also caches the on-disk block map for the read path (`fs::bmap`):
//! [`StatusTree::record`] stores a range with the *exact* bounds the extent tree or indirect map
//! gave (one extent, or one hole between extents), because `map_block` callers see those bounds
//! in the mapping's length. Such ranges are never merged with anything; when `insert` or `remove`
//! cuts one, its remaining pieces become ordinary ranges, which the mapping cache no longer
//! answers from.
//!
//! [`ExtentStatusCache`] holds the trees of all inodes, bounded in entries. Each tree remembers the
//! [`MapRoot`] (the inode's `i_block`, mapping kind and generation) its on-disk ranges were read
//! through; a lookup through a different root is a miss, so a changed `i_block` can never be
//! answered from stale ranges. Changes below the root (extent node blocks, indirect blocks) are
//! the callers' duty: every change of an inode's block map calls [`ExtentStatusCache::forget_mapped`]
//! (or `forget_inode` when the inode is freed: inode numbers are reused).
//!
//! Eviction: when the total passes the bound, whole trees of the least recently used inodes go,
//! until a quarter of the bound is free again. Trees holding any delayed range are skipped: those
//! ranges exist nowhere else (not on disk), so dropping them would lose data. The cache is split
//! into shards by inode number, each a `Mutex` held only for one short map operation.

pub use crate::iomap::Status;
use crate::ondisk::inode::I_BLOCK_LEN;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

#[derive(Clone, Copy, Debug)]
struct Entry {
    len: u64,
    status: Status,
    /// Recorded from the on-disk map with its exact bounds (see the module comment).
    on_disk: bool,
}

/// The extent status tree of one inode.
#[derive(Clone, Debug, Default)]
pub struct StatusTree {
    map: BTreeMap<u64, Entry>,
    /// Blocks in delayed ranges.
    delayed: u64,
}

impl StatusTree {
    pub fn new() -> StatusTree {
        StatusTree::default()
    }

    /// Number of ranges held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Blocks held in delayed ranges.
    pub fn delayed_blocks(&self) -> u64 {
        self.delayed
    }

    fn entry_at(&self, lblk: u64) -> Option<(u64, Entry)> {
        let (&s, e) = self.map.range(..=lblk).next_back()?;
        (lblk - s < e.len).then_some((s, *e))
    }

    /// The range containing `lblk`: (first block, length, status of the first block).
    pub fn lookup(&self, lblk: u64) -> Option<(u64, u64, Status)> {
        self.entry_at(lblk).map(|(s, e)| (s, e.len, e.status))
    }

    /// Like `lookup`, but only a range recorded from the on-disk map with its exact bounds.
    pub fn lookup_on_disk(&self, lblk: u64) -> Option<(u64, u64, Status)> {
        self.entry_at(lblk)
            .filter(|(_, e)| e.on_disk)
            .map(|(s, e)| (s, e.len, e.status))
    }

    /// Make `len` blocks from `start` have `status`, replacing whatever was there; merges with
    /// neighbours that continue the run.
    pub fn insert(&mut self, start: u64, len: u64, status: Status) {
        let end = start.saturating_add(len);
        if end <= start {
            return;
        }
        self.cut(start, end);
        self.put(
            start,
            Entry {
                len: end - start,
                status,
                on_disk: false,
            },
        );
        self.merge_around(start);
    }

    /// Record a range of the on-disk map with its exact bounds, if nothing overlaps it yet.
    /// Never merged with neighbours. Returns whether it was stored. Delayed is not on-disk state
    /// and is refused.
    pub fn record(&mut self, start: u64, len: u64, status: Status) -> bool {
        let end = start.saturating_add(len);
        if end <= start || status.is_delayed() {
            return false;
        }
        if self.entry_at(start).is_some() || self.map.range(start..end).next().is_some() {
            return false;
        }
        self.put(
            start,
            Entry {
                len: end - start,
                status,
                on_disk: true,
            },
        );
        true
    }

    /// Forget `len` blocks from `start` (ranges sticking out are split).
    pub fn remove(&mut self, start: u64, len: u64) {
        let end = start.saturating_add(len);
        if end > start {
            self.cut(start, end);
        }
    }

    /// Drop every range except the delayed ones (the on-disk map changed).
    pub fn forget_mapped(&mut self) {
        self.map.retain(|_, e| e.status.is_delayed());
    }

    /// The ranges overlapping `len` blocks from `start`, clipped to them, in order.
    pub fn iter_range(
        &self,
        start: u64,
        len: u64,
    ) -> impl Iterator<Item = (u64, u64, Status)> + '_ {
        let end = start.saturating_add(len);
        let first = self
            .map
            .range(..start)
            .next_back()
            .filter(|(s, e)| **s + e.len > start);
        first
            .into_iter()
            .chain(self.map.range(start..end.max(start)))
            .filter_map(move |(&s, e)| {
                let cs = s.max(start);
                let ce = (s + e.len).min(end);
                (ce > cs).then(|| (cs, ce - cs, e.status.advance(cs - s)))
            })
    }

    /// Every range, unclipped.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, Status)> + '_ {
        self.map.iter().map(|(&s, e)| (s, e.len, e.status))
    }

    fn put(&mut self, start: u64, e: Entry) {
        if e.status.is_delayed() {
            self.delayed += e.len;
        }
        self.map.insert(start, e);
    }

    fn take(&mut self, start: u64) -> Option<Entry> {
        let e = self.map.remove(&start)?;
        if e.status.is_delayed() {
            self.delayed -= e.len;
        }
        Some(e)
    }

    /// Range `e` (which started at `s`) was taken out: put back its part from `end` on, if it
    /// reaches past `end`, as an ordinary range. True when there was such a part.
    fn keep_tail(&mut self, s: u64, e: Entry, end: u64) -> bool {
        let eend = s + e.len;
        if eend <= end {
            return false;
        }
        self.put(
            end,
            Entry {
                len: eend - end,
                status: e.status.advance(end - s),
                on_disk: false,
            },
        );
        true
    }

    /// Empty `[start, end)`, keeping the parts of ranges outside it (as ordinary ranges).
    fn cut(&mut self, start: u64, end: u64) {
        let mut pieces: [Option<u64>; 2] = [None, None];
        if let Some((&s, &e)) = self.map.range(..start).next_back()
            && s + e.len > start
        {
            self.take(s);
            self.put(
                s,
                Entry {
                    len: start - s,
                    on_disk: false,
                    ..e
                },
            );
            pieces[0] = Some(s);
            if self.keep_tail(s, e, end) {
                pieces[1] = Some(end);
            }
        }
        while let Some((&s, _)) = self.map.range(start..end).next() {
            let Some(e) = self.take(s) else { break };
            if self.keep_tail(s, e, end) {
                pieces[1] = Some(end);
            }
        }
        // A piece of an on-disk range became ordinary: it may now continue a neighbour.
        for p in pieces.into_iter().flatten() {
            self.merge_around(p);
        }
    }

    /// Merge the ordinary range starting at `start` with ordinary neighbours that continue it.
    fn merge_around(&mut self, start: u64) {
        let Some(mut e) = self.map.get(&start).copied() else {
            return;
        };
        if e.on_disk {
            return;
        }
        let mut s = start;
        if let Some((&ls, &le)) = self.map.range(..start).next_back()
            && !le.on_disk
            && ls + le.len == start
            && le.status.continues(le.len, e.status)
        {
            self.take(ls);
            self.take(start);
            s = ls;
            e = Entry {
                len: le.len + e.len,
                status: le.status,
                on_disk: false,
            };
            self.put(s, e);
        }
        let end = s + e.len;
        if let Some(re) = self.map.get(&end).copied()
            && !re.on_disk
            && e.status.continues(e.len, re.status)
        {
            self.take(end);
            self.take(s);
            self.put(
                s,
                Entry {
                    len: e.len + re.len,
                    ..e
                },
            );
        }
    }

    #[cfg(test)]
    fn entries_debug(&self) -> Vec<(u64, u64, Status, bool)> {
        self.map
            .iter()
            .map(|(&s, e)| (s, e.len, e.status, e.on_disk))
            .collect()
    }
}

/// What an inode's on-disk ranges were read through: its block map root (`i_block`), whether that
/// root is an extent tree, and the inode generation. A lookup through any other root misses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapRoot {
    pub block: [u8; I_BLOCK_LEN],
    pub extents: bool,
    pub generation: u32,
}

struct Slot {
    tree: StatusTree,
    /// The root the on-disk ranges of `tree` belong to (None: it holds none).
    root: Option<MapRoot>,
    /// Last use, for eviction.
    used: u64,
}

struct Shard {
    trees: HashMap<u64, Slot>,
    /// Ranges held by all trees of the shard.
    entries: usize,
    tick: u64,
    max: usize,
    /// Do not try to shrink again below this many entries (the last try could not get under
    /// the bound because of delayed ranges).
    retry_at: usize,
}

impl Shard {
    fn touch(&mut self, ino: u64) -> Option<&mut Slot> {
        self.tick += 1;
        let t = self.tick;
        let slot = self.trees.get_mut(&ino)?;
        slot.used = t;
        Some(slot)
    }

    /// Run `f` on the tree of `ino` (created when `create`), keeping the entry count and
    /// dropping trees that end up empty.
    fn with_tree<R>(
        &mut self,
        ino: u64,
        create: bool,
        f: impl FnOnce(&mut Slot) -> R,
    ) -> Option<R> {
        self.tick += 1;
        let t = self.tick;
        if create {
            self.trees.entry(ino).or_insert_with(|| Slot {
                tree: StatusTree::new(),
                root: None,
                used: t,
            });
        }
        let slot = self.trees.get_mut(&ino)?;
        slot.used = t;
        let before = slot.tree.len();
        let r = f(slot);
        let after = slot.tree.len();
        if after == 0 {
            self.trees.remove(&ino);
        }
        self.entries = self.entries + after - before;
        if after > before {
            self.maybe_shrink();
        }
        Some(r)
    }

    fn maybe_shrink(&mut self) {
        if self.entries <= self.max || self.entries < self.retry_at {
            return;
        }
        let target = self.max - self.max / 4;
        self.shrink_to(target);
        self.retry_at = if self.entries > self.max {
            self.entries + self.max / 8 + 1
        } else {
            0
        };
    }

    /// Evict least recently used trees without delayed ranges until at most `target` entries
    /// remain (or no candidate is left). Returns the trees evicted.
    fn shrink_to(&mut self, target: usize) -> usize {
        if self.entries <= target {
            return 0;
        }
        let mut cand: Vec<(u64, u64)> = self
            .trees
            .iter()
            .filter(|(_, s)| s.tree.delayed_blocks() == 0)
            .map(|(&ino, s)| (s.used, ino))
            .collect();
        cand.sort_unstable();
        let mut n = 0;
        for (_, ino) in cand {
            if self.entries <= target {
                break;
            }
            if let Some(s) = self.trees.remove(&ino) {
                self.entries -= s.tree.len();
                n += 1;
            }
        }
        n
    }
}

/// Default bound on the ranges the cache holds (a few MiB).
pub const DEFAULT_MAX_ENTRIES: usize = 1 << 16;

const SHARDS: usize = 16;

/// The extent status trees of all inodes (see the module comment). Thread-safe.
pub struct ExtentStatusCache {
    shards: Box<[Mutex<Shard>]>,
}

impl Default for ExtentStatusCache {
    fn default() -> Self {
        ExtentStatusCache::new(DEFAULT_MAX_ENTRIES)
    }
}

impl ExtentStatusCache {
    /// A cache holding about `max_entries` ranges at most (delayed ranges aside).
    pub fn new(max_entries: usize) -> ExtentStatusCache {
        let per = max_entries.div_ceil(SHARDS).max(1);
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    trees: HashMap::new(),
                    entries: 0,
                    tick: 0,
                    max: per,
                    retry_at: 0,
                })
            })
            .collect();
        ExtentStatusCache { shards }
    }

    fn shard(&self, ino: u64) -> MutexGuard<'_, Shard> {
        self.shards[(ino % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The on-disk range containing `lblk` of `ino`, if cached for the same `root`.
    pub fn lookup_mapping(
        &self,
        ino: u64,
        root: &MapRoot,
        lblk: u64,
    ) -> Option<(u64, u64, Status)> {
        let mut sh = self.shard(ino);
        let slot = sh.touch(ino)?;
        if slot.root.as_ref() != Some(root) {
            return None;
        }
        slot.tree.lookup_on_disk(lblk)
    }

    /// Record a range of `ino`'s on-disk map, read through `root`, with its exact bounds. Ranges
    /// read through another root are dropped first. Returns whether it was stored (nothing may
    /// overlap it).
    pub fn record_mapping(
        &self,
        ino: u64,
        root: &MapRoot,
        start: u64,
        len: u64,
        status: Status,
    ) -> bool {
        self.shard(ino)
            .with_tree(ino, true, |slot| {
                if slot.root.as_ref() != Some(root) {
                    slot.tree.forget_mapped();
                    slot.root = Some(*root);
                }
                slot.tree.record(start, len, status)
            })
            .unwrap_or(false)
    }

    /// The range of `ino` containing `lblk`, whatever its kind.
    pub fn lookup(&self, ino: u64, lblk: u64) -> Option<(u64, u64, Status)> {
        let mut sh = self.shard(ino);
        sh.touch(ino)?.tree.lookup(lblk)
    }

    /// [`StatusTree::insert`] on the tree of `ino`.
    pub fn insert(&self, ino: u64, start: u64, len: u64, status: Status) {
        self.shard(ino)
            .with_tree(ino, true, |s| s.tree.insert(start, len, status));
    }

    /// [`StatusTree::remove`] on the tree of `ino`.
    pub fn remove(&self, ino: u64, start: u64, len: u64) {
        self.shard(ino)
            .with_tree(ino, false, |s| s.tree.remove(start, len));
    }

    /// Blocks of `ino` in delayed ranges.
    pub fn delayed_blocks(&self, ino: u64) -> u64 {
        self.shard(ino)
            .trees
            .get(&ino)
            .map_or(0, |s| s.tree.delayed_blocks())
    }

    /// The ranges of `ino` overlapping `len` blocks from `start`, clipped to them.
    pub fn ranges(&self, ino: u64, start: u64, len: u64) -> Vec<(u64, u64, Status)> {
        self.shard(ino)
            .trees
            .get(&ino)
            .map(|s| s.tree.iter_range(start, len).collect())
            .unwrap_or_default()
    }

    /// The block map of `ino` changed: drop everything but its delayed ranges.
    pub fn forget_mapped(&self, ino: u64) {
        self.shard(ino).with_tree(ino, false, |s| {
            s.tree.forget_mapped();
            s.root = None;
        });
    }

    /// `ino` was freed (its number will be reused) or reloaded: drop its whole tree.
    pub fn forget_inode(&self, ino: u64) {
        let mut sh = self.shard(ino);
        if let Some(s) = sh.trees.remove(&ino) {
            sh.entries -= s.tree.len();
        }
    }

    /// Drop every tree.
    pub fn clear(&self) {
        for m in self.shards.iter() {
            let mut sh = m.lock().unwrap_or_else(|e| e.into_inner());
            sh.trees.clear();
            sh.entries = 0;
            sh.retry_at = 0;
        }
    }

    /// Ranges held in all trees.
    pub fn entries(&self) -> usize {
        self.shards
            .iter()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).entries)
            .sum()
    }

    /// Inodes with a tree.
    pub fn inodes(&self) -> usize {
        self.shards
            .iter()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).trees.len())
            .sum()
    }

    /// Evict least recently used trees (never one holding delayed ranges) until at most
    /// `target` ranges remain, or nothing more can go. Returns the trees evicted.
    pub fn shrink_to(&self, target: usize) -> usize {
        let per = target / SHARDS;
        self.shards
            .iter()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).shrink_to(per))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const W: fn(u64) -> Status = |pblk| Status::Written { pblk };
    const U: fn(u64) -> Status = |pblk| Status::Unwritten { pblk };

    fn ranges(t: &StatusTree) -> Vec<(u64, u64, Status)> {
        t.iter().collect()
    }

    #[test]
    fn insert_lookup_and_split_both_ends() {
        let mut t = StatusTree::new();
        t.insert(10, 20, W(100));
        assert_eq!(t.lookup(9), None);
        assert_eq!(t.lookup(10), Some((10, 20, W(100))));
        assert_eq!(t.lookup(29), Some((10, 20, W(100))));
        assert_eq!(t.lookup(30), None);
        // Overwrite the middle: both ends split, physical blocks follow.
        t.insert(15, 5, Status::Hole);
        assert_eq!(
            ranges(&t),
            vec![(10, 5, W(100)), (15, 5, Status::Hole), (20, 10, W(110))]
        );
        // Overwrite across two ranges.
        t.insert(12, 10, Status::Delayed);
        assert_eq!(
            ranges(&t),
            vec![(10, 2, W(100)), (12, 10, Status::Delayed), (22, 8, W(112))]
        );
        assert_eq!(t.delayed_blocks(), 10);
        // Cover everything.
        t.insert(0, 100, Status::Hole);
        assert_eq!(ranges(&t), vec![(0, 100, Status::Hole)]);
        assert_eq!(t.delayed_blocks(), 0);
    }

    #[test]
    fn merges_only_contiguous_runs() {
        let mut t = StatusTree::new();
        t.insert(0, 4, W(100));
        t.insert(4, 4, W(104)); // physically contiguous: merges
        assert_eq!(ranges(&t), vec![(0, 8, W(100))]);
        t.insert(8, 4, W(200)); // not contiguous: stays apart
        assert_eq!(ranges(&t), vec![(0, 8, W(100)), (8, 4, W(200))]);
        t.insert(12, 4, U(204)); // other kind
        assert_eq!(t.len(), 3);
        t.insert(20, 2, Status::Delayed);
        t.insert(16, 4, Status::Delayed); // merges with the right neighbour
        assert_eq!(t.lookup(21), Some((16, 6, Status::Delayed)));
        t.insert(22, 3, Status::Hole);
        t.insert(25, 3, Status::Hole);
        assert_eq!(t.lookup(22), Some((22, 6, Status::Hole)));
        // Filling a gap merges both sides at once.
        let mut t = StatusTree::new();
        t.insert(0, 2, U(50));
        t.insert(4, 2, U(54));
        t.insert(2, 2, U(52));
        assert_eq!(ranges(&t), vec![(0, 6, U(50))]);
    }

    #[test]
    fn remove_splits() {
        let mut t = StatusTree::new();
        t.insert(0, 10, Status::Delayed);
        t.insert(10, 10, W(7));
        t.remove(5, 10);
        assert_eq!(ranges(&t), vec![(0, 5, Status::Delayed), (15, 5, W(12))]);
        assert_eq!(t.delayed_blocks(), 5);
        t.remove(0, u64::MAX);
        assert!(t.is_empty());
        assert_eq!(t.delayed_blocks(), 0);
    }

    #[test]
    fn iter_range_clips() {
        let mut t = StatusTree::new();
        t.insert(0, 10, W(100));
        t.insert(20, 10, Status::Delayed);
        let v: Vec<_> = t.iter_range(5, 20).collect();
        assert_eq!(v, vec![(5, 5, W(105)), (20, 5, Status::Delayed)]);
        assert_eq!(t.iter_range(10, 10).count(), 0);
        assert_eq!(t.iter_range(3, 0).count(), 0);
    }

    #[test]
    fn recorded_ranges_keep_exact_bounds() {
        let mut t = StatusTree::new();
        // Two extents physically and logically adjacent stay two ranges.
        assert!(t.record(0, 8, W(100)));
        assert!(t.record(8, 8, W(108)));
        assert!(t.record(16, 4, Status::Hole));
        assert!(!t.record(2, 1, W(5)), "overlap refused");
        assert!(!t.record(30, 1, Status::Delayed));
        assert_eq!(t.lookup_on_disk(9), Some((8, 8, W(108))));
        // An ordinary insert next to them does not merge into them.
        t.insert(20, 4, Status::Hole);
        assert_eq!(t.lookup_on_disk(17), Some((16, 4, Status::Hole)));
        assert_eq!(t.lookup(21), Some((20, 4, Status::Hole)));
        assert_eq!(t.lookup_on_disk(21), None);
        // Cutting one turns its pieces into ordinary ranges, which may then merge.
        t.insert(16, 1, Status::Delayed);
        assert_eq!(t.lookup_on_disk(18), None);
        assert_eq!(t.lookup(18), Some((17, 7, Status::Hole)));
        t.forget_mapped();
        assert_eq!(ranges(&t), vec![(16, 1, Status::Delayed)]);
    }

    fn root(b: u8) -> MapRoot {
        MapRoot {
            block: [b; I_BLOCK_LEN],
            extents: true,
            generation: 1,
        }
    }

    #[test]
    fn cache_roots_and_forgetting() {
        let c = ExtentStatusCache::new(1000);
        let r1 = root(1);
        assert!(c.record_mapping(5, &r1, 0, 10, W(100)));
        assert_eq!(c.lookup_mapping(5, &r1, 3), Some((0, 10, W(100))));
        assert_eq!(c.lookup_mapping(5, &root(2), 3), None, "other root misses");
        assert_eq!(c.lookup_mapping(6, &r1, 3), None, "other inode misses");
        let mut g = r1;
        g.generation = 2;
        assert_eq!(c.lookup_mapping(5, &g, 3), None, "other generation misses");
        // Recording through a new root drops the old ranges, not the delayed ones.
        c.insert(5, 50, 5, Status::Delayed);
        assert!(c.record_mapping(5, &root(2), 20, 5, Status::Hole));
        assert_eq!(c.lookup_mapping(5, &root(2), 3), None);
        assert_eq!(c.lookup(5, 3), None);
        assert_eq!(c.delayed_blocks(5), 5);
        c.forget_mapped(5);
        assert_eq!(c.lookup_mapping(5, &root(2), 21), None);
        assert_eq!(c.ranges(5, 0, 100), vec![(50, 5, Status::Delayed)]);
        assert_eq!(c.entries(), 1);
        c.forget_inode(5);
        assert_eq!(c.entries(), 0);
        assert_eq!(c.inodes(), 0);
        assert_eq!(c.delayed_blocks(5), 0);
    }

    #[test]
    fn shrinker_evicts_lru_and_keeps_delayed() {
        // One shard per inode class: use inode numbers in the same shard.
        let c = ExtentStatusCache::new(SHARDS * 10);
        let r = root(0);
        let ino = |i: u64| i * SHARDS as u64;
        c.insert(ino(0), 0, 1, Status::Delayed);
        for l in 0..4 {
            c.insert(ino(0), 10 + 2 * l, 1, Status::Delayed);
        }
        for i in 1..=3 {
            for l in 0..2 {
                assert!(c.record_mapping(ino(i), &r, 2 * l, 1, Status::Hole));
            }
        }
        // The shard bound (10) is passed: LRU trees without delayed ranges go until at most 8
        // remain (11 - 2 - 2 = 7): inodes 1 and 2.
        assert_eq!(c.entries(), 7);
        assert_eq!(c.lookup(ino(0), 0), Some((0, 1, Status::Delayed)));
        assert_eq!(c.inodes(), 2);
        assert_eq!(c.lookup_mapping(ino(1), &r, 0), None, "oldest tree evicted");
        assert_eq!(c.lookup_mapping(ino(2), &r, 0), None);
        assert!(c.lookup_mapping(ino(3), &r, 0).is_some());
        assert_eq!(c.delayed_blocks(ino(0)), 5);
        // Explicit shrinking never drops the delayed tree.
        assert_eq!(c.shrink_to(0), 1);
        assert_eq!(c.inodes(), 1);
        assert_eq!(c.delayed_blocks(ino(0)), 5);
    }

    #[test]
    fn cache_is_thread_safe() {
        let c = std::sync::Arc::new(ExtentStatusCache::new(256));
        let r = root(3);
        let hs: Vec<_> = (0..8u64)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..2000u64 {
                        let ino = (i + t) % 37;
                        let l = (i * 7) % 64;
                        c.record_mapping(ino, &r, l, 1, W(1000 + l));
                        if let Some((s, _, st)) = c.lookup_mapping(ino, &r, l) {
                            assert_eq!(st, W(1000 + s));
                        }
                        if i % 97 == 0 {
                            c.forget_mapped(ino);
                        }
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert!(c.entries() <= 256 + SHARDS);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u64, u64, u8, u64),
        Record(u64, u64, u8, u64),
        Remove(u64, u64),
        Lookup(u64),
    }

    const SPACE: u64 = 48;

    fn status_of(kind: u8, pblk: u64) -> Status {
        match kind % 4 {
            0 => W(pblk),
            1 => U(pblk),
            2 => Status::Delayed,
            _ => Status::Hole,
        }
    }

    fn op() -> impl Strategy<Value = Op> {
        // Small physical numbers so that contiguous (mergeable) runs happen often.
        let range = (0..SPACE, 1..12u64);
        prop_oneof![
            4 => (range.clone(), 0..4u8, 0..40u64).prop_map(|((s, l), k, p)| Op::Insert(s, l, k, p)),
            2 => (range.clone(), 0..4u8, 0..40u64).prop_map(|((s, l), k, p)| Op::Record(s, l, k, p)),
            2 => range.prop_map(|(s, l)| Op::Remove(s, l)),
            1 => (0..SPACE + 4).prop_map(Op::Lookup),
        ]
    }

    /// Per block: its status and the record it belongs to while untouched since.
    type Model = Vec<Option<(Status, Option<usize>)>>;

    fn check(t: &StatusTree, m: &Model) {
        let ents = t.entries_debug();
        // Non-overlapping, non-empty, ordered.
        for w in ents.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "overlap: {ents:?}");
        }
        // Ordinary neighbours that continue each other are merged.
        for w in ents.windows(2) {
            let (a, b) = (w[0], w[1]);
            assert!(
                a.3 || b.3 || a.0 + a.1 != b.0 || !a.2.continues(a.1, b.2),
                "unmerged neighbours: {ents:?}"
            );
        }
        // Every block agrees with the model.
        for l in 0..SPACE + 16 {
            let want = m.get(l as usize).copied().flatten().map(|x| x.0);
            let got = t.lookup(l).map(|(s, _, st)| st.advance(l - s));
            assert_eq!(got, want, "block {l}: {ents:?}");
        }
        // On-disk ranges are exactly the blocks of one untouched record.
        for &(s, len, _, on_disk) in &ents {
            if !on_disk {
                for l in s..s + len {
                    assert_eq!(m[l as usize].and_then(|x| x.1), None, "block {l}: {ents:?}");
                }
                continue;
            }
            let id = m[s as usize].and_then(|x| x.1);
            assert!(id.is_some(), "{ents:?}");
            let blocks: Vec<u64> = (0..m.len() as u64)
                .filter(|&l| m[l as usize].and_then(|x| x.1) == id)
                .collect();
            assert_eq!(blocks, (s..s + len).collect::<Vec<_>>(), "{ents:?}");
        }
        let delayed = m
            .iter()
            .filter(|x| matches!(x, Some((Status::Delayed, _))))
            .count() as u64;
        assert_eq!(t.delayed_blocks(), delayed);
    }

    /// Blocks [s, e) change: every record they belonged to is no longer exact anywhere.
    fn touch(m: &mut Model, s: u64, e: u64) {
        let ids: Vec<usize> = (s..e)
            .filter_map(|l| m[l as usize].and_then(|x| x.1))
            .collect();
        for b in m.iter_mut().flatten() {
            if b.1.is_some_and(|i| ids.contains(&i)) {
                b.1 = None;
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn status_tree_matches_block_model(ops in proptest::collection::vec(op(), 1..60)) {
            let mut t = StatusTree::new();
            let mut m: Model = vec![None; (SPACE + 12) as usize];
            for (n, o) in ops.into_iter().enumerate() {
                match o {
                    Op::Insert(s, l, k, p) => {
                        let st = status_of(k, p);
                        t.insert(s, l, st);
                        touch(&mut m, s, s + l);
                        for i in 0..l {
                            m[(s + i) as usize] = Some((st.advance(i), None));
                        }
                    }
                    Op::Record(s, l, k, p) => {
                        let st = status_of(k, p);
                        let vacant = (s..s + l).all(|b| m[b as usize].is_none());
                        let stored = t.record(s, l, st);
                        prop_assert_eq!(stored, vacant && !st.is_delayed());
                        if stored {
                            for i in 0..l {
                                m[(s + i) as usize] = Some((st.advance(i), Some(n)));
                            }
                        }
                    }
                    Op::Remove(s, l) => {
                        t.remove(s, l);
                        touch(&mut m, s, s + l);
                        for i in s..s + l {
                            m[i as usize] = None;
                        }
                    }
                    Op::Lookup(l) => {
                        let got = t.lookup(l);
                        if let Some((s, len, _)) = got {
                            prop_assert!(s <= l && l < s + len);
                        }
                        prop_assert_eq!(got.is_some(), m.get(l as usize).copied().flatten().is_some());
                    }
                }
                check(&t, &m);
            }
        }
    }
}
