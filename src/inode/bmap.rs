//! Logical → physical block mapping: extent trees of any depth and ext2/ext3 indirect block maps,
//! cached in the extent status tree (`extent::status`).
//!
//! Every walk also finds the *run* around the block: the extent, the hole between two extents
//! (bounded by index keys where the walk is), the missing indirect subtree, or the run of
//! contiguous (or zero) pointers in one indirect array — exactly the blocks for which the walk
//! takes the same path and reports the same end. That run is recorded, keyed by the inode's
//! `i_block` and generation, so a later lookup anywhere in it answers what the walk would have.
//! Changes below the root are covered by `Fs::map_new_block` / `truncate_blocks` dropping the
//! inode's runs, and freeing an inode drops its tree.
//!
//! Locking: callers hold the namespace lock (readers shared, block-map writers exclusive), so no
//! walk runs while a map changes; the status cache takes its own short shard lock inside.

use crate::errno::Result;
use crate::extent::{MapRoot, Status};
use crate::ondisk::extent::{self, Node};
use crate::ondisk::inode::{Inode, flags};
use crate::ondisk::le::u32_at;
use crate::volume::Ino;
use crate::volume::Volume;

pub(crate) use crate::iomap::Mapping;

/// Highest logical block + 1 a file can have.
const MAX_LBLK: u64 = 1 << 32;

/// A run of the on-disk map with the exact bounds every lookup inside it reports: the walk for
/// any block in `[start, start + len)` returns `status` (advanced by the offset) and the run's end.
/// Found along with a walk; cached in the extent status tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    start: u64,
    len: u64,
    status: Status,
}

/// Past the last block a block map can address: one hole to the end of the address space (a
/// corrupt, huge `i_size` must not make callers step through it block by block).
fn beyond_map(lblk: u64) -> Mapping {
    Mapping {
        lblk,
        len: (u64::MAX - lblk).max(1),
        status: Status::Hole,
    }
}

/// `lblk` lies in the hole `[start, end)`: the mapping from `lblk` on, and the whole hole as a
/// run to cache.
fn hole_run(lblk: u64, start: u64, end: u64) -> (Mapping, Option<Run>) {
    (
        Mapping {
            lblk,
            len: end.saturating_sub(lblk).max(1),
            status: Status::Hole,
        },
        Some(Run {
            start,
            len: end.saturating_sub(start),
            status: Status::Hole,
        }),
    )
}

/// The cache key of an inode's block map (see `extent::status`).
fn map_root(inode: &Inode) -> MapRoot {
    MapRoot {
        block: inode.block,
        extents: inode.has_flag(flags::EXTENTS),
        generation: inode.generation,
    }
}

impl Volume {
    /// Map the run of blocks starting at `lblk`: from the extent status tree when it holds the
    /// on-disk run containing `lblk` (read through the same `i_block`), else by walking the
    /// extent tree or indirect map, recording the run found. Both give the same answer.
    pub(crate) fn map_block(&self, ino: Ino, inode: &Inode, lblk: u64) -> Result<Mapping> {
        if lblk >= MAX_LBLK {
            return Ok(beyond_map(lblk));
        }
        let root = map_root(inode);
        let m = match self.es.lookup_mapping(ino, &root, lblk) {
            Some((start, len, status)) => {
                let off = lblk - start;
                Mapping {
                    lblk,
                    len: len - off,
                    // Only on-disk runs are recorded: never delayed.
                    status: status.advance(off),
                }
            }
            None => {
                let (m, run) = self.walk_map(ino, inode, lblk)?;
                if let Some(r) = run {
                    self.es.record_mapping(ino, &root, r.start, r.len, r.status);
                }
                m
            }
        };
        self.check_mapping(ino, lblk, m)
    }

    /// `map_block` without the extent status tree (tests compare the two).
    #[cfg(test)]
    pub(crate) fn map_block_uncached(&self, ino: Ino, inode: &Inode, lblk: u64) -> Result<Mapping> {
        if lblk >= MAX_LBLK {
            return Ok(beyond_map(lblk));
        }
        let (m, _) = self.walk_map(ino, inode, lblk)?;
        self.check_mapping(ino, lblk, m)
    }

    fn walk_map(&self, ino: Ino, inode: &Inode, lblk: u64) -> Result<(Mapping, Option<Run>)> {
        let (m, run) = if inode.has_flag(flags::EXTENTS) {
            self.map_extent(ino, inode, lblk)?
        } else {
            self.map_indirect(ino, inode, lblk)?
        };
        // The run must contain the mapping exactly as a lookup inside it would rebuild it.
        let run = run.filter(|r| {
            r.len > 0
                && r.start <= lblk
                && lblk - r.start < r.len
                && m.len == r.start + r.len - lblk
                && m.status == r.status.advance(lblk - r.start)
        });
        Ok((m, run))
    }

    /// Refuse a mapping to blocks outside the file system.
    fn check_mapping(&self, ino: Ino, lblk: u64, m: Mapping) -> Result<Mapping> {
        if let Some(pblk) = m.status.pblk()
            && (pblk < self.sb.first_data_block as u64
                || pblk
                    .checked_add(m.len)
                    .is_none_or(|e| e > self.sb.blocks_count))
        {
            return Err(crate::corrupt!(
                "inode {ino}: logical block {lblk} maps to blocks {pblk}+{} outside the file system",
                m.len
            ));
        }
        Ok(m)
    }

    fn map_extent(&self, ino: Ino, inode: &Inode, lblk: u64) -> Result<(Mapping, Option<Run>)> {
        let mut owned;
        let mut node: &[u8] = &inode.block;
        let mut expect_depth: Option<u16> = None;
        // The subtree we are in covers [lower, bound): its index key and the next index entry's
        // start. Every block in it is walked down the same path.
        let mut lower = 0u64;
        let mut bound = MAX_LBLK;
        let seed = self.inode_seed(ino, inode);
        loop {
            let parsed = extent::parse_node(node)
                .map_err(|e| crate::corrupt!("inode {ino}: extent tree: {e}"))?;
            match parsed {
                Node::Index(h, idx) => {
                    if expect_depth.is_some_and(|d| d != h.depth) {
                        return Err(crate::corrupt!(
                            "inode {ino}: extent tree depth is inconsistent"
                        ));
                    }
                    let pos = idx.partition_point(|x| (x.lblk as u64) <= lblk);
                    if pos == 0 {
                        let end = idx.first().map_or(bound, |x| x.lblk as u64).min(bound);
                        return Ok(hole_run(lblk, lower, end));
                    }
                    if let Some(next) = idx.get(pos) {
                        bound = bound.min(next.lblk as u64);
                    }
                    lower = lower.max(idx[pos - 1].lblk as u64);
                    let child = idx[pos - 1].child;
                    if child < self.sb.first_data_block as u64 || child >= self.sb.blocks_count {
                        return Err(crate::corrupt!(
                            "inode {ino}: extent index points to block {child} outside the file system"
                        ));
                    }
                    owned = self.read_meta_block(child)?;
                    if self.sb.has_metadata_csum() && !extent::checksum_ok(seed, &owned) {
                        return Err(crate::corrupt!(
                            "inode {ino}: extent block {child} checksum mismatch"
                        ));
                    }
                    node = &owned;
                    expect_depth = Some(h.depth - 1);
                }
                Node::Leaf(h, exts) => {
                    if expect_depth.is_some_and(|d| d != h.depth) {
                        return Err(crate::corrupt!(
                            "inode {ino}: extent tree depth is inconsistent"
                        ));
                    }
                    let pos = exts.partition_point(|e| (e.lblk as u64) <= lblk);
                    let mut hole_start = lower;
                    if pos > 0 {
                        let e = exts[pos - 1];
                        let end = e.lblk as u64 + e.len as u64;
                        if lblk < end {
                            let off = lblk - e.lblk as u64;
                            let status = if e.unwritten {
                                Status::Unwritten { pblk: e.pblk }
                            } else {
                                Status::Written { pblk: e.pblk }
                            };
                            // An extent sticking out of its subtree (a lenient index key) is not
                            // walked here for all of its blocks: do not record it.
                            let run = (e.lblk as u64 >= lower && end <= bound).then_some(Run {
                                start: e.lblk as u64,
                                len: e.len as u64,
                                status,
                            });
                            return Ok((
                                Mapping {
                                    lblk,
                                    len: end - lblk,
                                    status: status.advance(off),
                                },
                                run,
                            ));
                        }
                        hole_start = hole_start.max(end);
                    }
                    let end = exts.get(pos).map_or(bound, |e| e.lblk as u64).min(bound);
                    return Ok(hole_run(lblk, hole_start, end));
                }
            }
        }
    }

    fn map_indirect(&self, ino: Ino, inode: &Inode, lblk: u64) -> Result<(Mapping, Option<Run>)> {
        let apb = (self.block_size / 4) as u64;
        // Path of slot indexes from the inode's i_block down to the data pointer.
        let mut path: Vec<u64> = if lblk < 12 {
            vec![lblk]
        } else if lblk < 12 + apb {
            vec![12, lblk - 12]
        } else if lblk < 12 + apb + apb * apb {
            let r = lblk - 12 - apb;
            vec![13, r / apb, r % apb]
        } else {
            let r = lblk - 12 - apb - apb * apb;
            if r >= apb * apb * apb {
                return Ok((beyond_map(lblk), None));
            }
            vec![14, r / (apb * apb), (r / apb) % apb, r % apb]
        };
        let last = path.pop().unwrap_or(0) as usize;
        // Walk down to the array holding the data pointer.
        let mut array: Option<std::sync::Arc<[u8]>> = None;
        // Number of data blocks one slot covers at each level, for hole lengths.
        let depth = path.len();
        for (level, &slot) in path.iter().enumerate() {
            let ptr = match &array {
                None => inode.block_word(slot as usize),
                Some(a) => u32_at(a, slot as usize * 4),
            } as u64;
            if ptr == 0 {
                // A whole subtree is missing: its span is apb^(levels below).
                let below = (depth - level) as u32;
                let span = apb.pow(below);
                let pos_in_span = lblk_offset_in_span(lblk, apb, &path, level, last as u64);
                let start = lblk - pos_in_span;
                return Ok(hole_run(lblk, start, start + span));
            }
            if ptr >= self.sb.blocks_count || ptr < self.sb.first_data_block as u64 {
                return Err(crate::corrupt!(
                    "inode {ino}: indirect block pointer {ptr} lies outside the file system"
                ));
            }
            array = Some(self.read_meta_block(ptr)?);
        }
        let words = match &array {
            None => 12usize,
            Some(_) => apb as usize,
        };
        let word = |i: usize| -> u64 {
            match &array {
                None => inode.block_word(i) as u64,
                Some(a) => u32_at(a, i * 4) as u64,
            }
        };
        // Logical block of the array's first slot.
        let base = lblk - last as u64;
        let first = word(last);
        let mut n = 1usize;
        if first == 0 {
            while last + n < words && word(last + n) == 0 {
                n += 1;
            }
            let mut b = last;
            while b > 0 && word(b - 1) == 0 {
                b -= 1;
            }
            return Ok(hole_run(lblk, base + b as u64, lblk + n as u64));
        }
        while last + n < words && word(last + n) == first + n as u64 {
            n += 1;
        }
        // Where the physically contiguous run through `last` starts.
        let mut b = last;
        while b > 0 && word(b - 1) != 0 && word(b - 1) + 1 == word(b) {
            b -= 1;
        }
        Ok((
            Mapping {
                lblk,
                len: n as u64,
                status: Status::Written { pblk: first },
            },
            Some(Run {
                start: base + b as u64,
                len: (last + n - b) as u64,
                status: Status::Written { pblk: word(b) },
            }),
        ))
    }
}

/// Offset of `lblk` inside the span covered by the slot at `level` of an indirect path.
fn lblk_offset_in_span(_lblk: u64, apb: u64, path: &[u64], level: usize, last: u64) -> u64 {
    // The slots below `level` (path[level+1..] then `last`) form the offset in base apb.
    let mut off = 0u64;
    for &s in &path[level + 1..] {
        off = off * apb + s;
    }
    off * apb + last
}
