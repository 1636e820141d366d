//! Freeing a large block map in steps. One transaction must fit the journal, but freeing a
//! big, fragmented file dirties a bitmap and a group descriptor for every group its blocks lie
//! in, and every extent leaf (or indirect block) of the range. As ext4 restarts its handle
//! inside a truncate, the caller frees the map from the end down in several transactions, each
//! small enough, while the inode sits on the orphan list (or already has its new size), so a
//! crash between two steps is finished by the next mount's orphan processing.

use crate::errno::Result;
use crate::ondisk::inode::{Inode, flags};
use crate::volume::{Ino, Volume};
use std::collections::HashSet;

/// Logical blocks a block map can address.
const MAX_LBLK: u64 = 1 << 32;

/// A piece of the map to free: `len` logical blocks from `lblk` whose physical blocks lie in
/// one block group.
#[derive(Clone, Copy, Debug)]
struct Piece {
    lblk: u64,
    len: u64,
    group: u64,
}

/// Metadata blocks one step is estimated to dirty.
#[derive(Default)]
struct StepCost {
    groups: HashSet<u64>,
    gdt_blocks: HashSet<u64>,
    runs: u64,
    blocks: u64,
}

impl StepCost {
    fn estimate(&self, extents: bool, per_node: u64) -> u64 {
        // Extent leaves may be half full; an indirect block maps `per_node` blocks. Three more
        // for the inode, the superblock and a tree's path.
        let map_blocks = if extents {
            self.runs.div_ceil(per_node / 2) + 1
        } else {
            self.blocks.div_ceil(per_node) + 2
        };
        self.groups.len() as u64 + self.gdt_blocks.len() as u64 + map_blocks + 3
    }
}

impl Volume {
    /// Metadata blocks one step of a truncate may dirty (its journal credits).
    pub(crate) fn truncate_step_credits(&self) -> usize {
        #[cfg(test)]
        {
            let n = self.step_credits.load(std::sync::atomic::Ordering::Relaxed);
            if n != 0 {
                return n;
            }
        }
        (self.max_transaction() / 2).max(16)
    }

    /// Where to cut `ino`'s block map so that freeing everything from `keep` on can go in
    /// steps of at most [`truncate_step_credits`](Self::truncate_step_credits) blocks each: the
    /// cut points, highest first (free `[cut, end)` for each in turn; the caller's last step frees
    /// `[keep, last cut)`). Empty when everything from `keep` fits one step.
    pub(crate) fn truncate_steps(&self, ino: Ino, inode: &Inode, keep: u64) -> Result<Vec<u64>> {
        if self.owns_no_block_map(inode) {
            return Ok(Vec::new());
        }
        let extents = inode.has_flag(flags::EXTENTS);
        let bs = self.block_size as u64;
        let per_node = if extents { (bs - 12) / 12 } else { bs / 4 };
        let bpg = self.sb.blocks_per_group.max(1) as u64;
        let first = self.sb.first_data_block as u64;
        let descs_per_block = (bs / self.sb.desc_size.max(32) as u64).max(1);
        // Every mapped run from `keep` on, cut at block group boundaries.
        let mut pieces = Vec::new();
        let mut lblk = keep;
        while lblk < MAX_LBLK {
            let m = self.map_block(ino, inode, lblk)?;
            if let Some(pblk) = m.status.pblk() {
                let end = lblk + m.len.min(MAX_LBLK - lblk);
                let (mut l, mut p) = (lblk, pblk);
                while l < end {
                    let group = p.saturating_sub(first) / bpg;
                    let group_end = first + (group + 1) * bpg;
                    let n = (group_end - p).min(end - l);
                    pieces.push(Piece {
                        lblk: l,
                        len: n,
                        group,
                    });
                    l += n;
                    p += n;
                }
            }
            lblk = lblk.saturating_add(m.len.max(1));
        }
        let budget = self.truncate_step_credits() as u64;
        let mut cuts = Vec::new();
        // A single piece lies in one group, so its own cost is small: each step holds at least one.
        let mut cost = StepCost::default();
        for piece in pieces.iter().rev() {
            cost.groups.insert(piece.group);
            cost.gdt_blocks.insert(piece.group / descs_per_block);
            cost.runs += 1;
            cost.blocks += piece.len;
            if cost.estimate(extents, per_node) > budget && cost.runs > 1 {
                // This piece starts the next step; the step so far ends above it.
                cuts.push(piece.lblk + piece.len);
                cost = StepCost::default();
                cost.groups.insert(piece.group);
                cost.gdt_blocks.insert(piece.group / descs_per_block);
                cost.runs = 1;
                cost.blocks = piece.len;
            }
        }
        Ok(cuts)
    }
}
