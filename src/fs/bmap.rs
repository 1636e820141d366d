//! Logical → physical block mapping: extent trees of any depth and ext2/ext3 indirect block maps.

use super::Fs;
use super::types::Ino;
use crate::errno::Result;
use crate::ondisk::extent::{self, Node};
use crate::ondisk::inode::{Inode, flags};
use crate::ondisk::le::u32_at;

/// What a run of logical blocks maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Target {
    Hole,
    Data { pblk: u64, unwritten: bool },
}

/// `len` logical blocks from `lblk` map uniformly to `target` (contiguously, for data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Mapping {
    pub lblk: u64,
    pub len: u64,
    pub target: Target,
}

/// Highest logical block + 1 a file can have.
const MAX_LBLK: u64 = 1 << 32;

impl Fs {
    /// Map the run of blocks starting at `lblk`.
    pub(super) fn map_block(&self, ino: Ino, inode: &Inode, lblk: u64) -> Result<Mapping> {
        if lblk >= MAX_LBLK {
            return Ok(Mapping {
                lblk,
                len: 1,
                target: Target::Hole,
            });
        }
        let m = if inode.has_flag(flags::EXTENTS) {
            self.map_extent(ino, inode, lblk)?
        } else {
            self.map_indirect(ino, inode, lblk)?
        };
        if let Target::Data { pblk, .. } = m.target
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

    fn map_extent(&self, ino: Ino, inode: &Inode, lblk: u64) -> Result<Mapping> {
        let mut owned;
        let mut node: &[u8] = &inode.block;
        let mut expect_depth: Option<u16> = None;
        // Upper bound of the subtree we are in: the next index entry's start.
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
                        return Ok(Mapping {
                            lblk,
                            len: end.saturating_sub(lblk).max(1),
                            target: Target::Hole,
                        });
                    }
                    if let Some(next) = idx.get(pos) {
                        bound = bound.min(next.lblk as u64);
                    }
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
                    if pos > 0 {
                        let e = exts[pos - 1];
                        let end = e.lblk as u64 + e.len as u64;
                        if lblk < end {
                            let off = lblk - e.lblk as u64;
                            return Ok(Mapping {
                                lblk,
                                len: end - lblk,
                                target: Target::Data {
                                    pblk: e.pblk + off,
                                    unwritten: e.unwritten,
                                },
                            });
                        }
                    }
                    let end = exts.get(pos).map_or(bound, |e| e.lblk as u64).min(bound);
                    return Ok(Mapping {
                        lblk,
                        len: end.saturating_sub(lblk).max(1),
                        target: Target::Hole,
                    });
                }
            }
        }
    }

    fn map_indirect(&self, ino: Ino, inode: &Inode, lblk: u64) -> Result<Mapping> {
        let apb = (self.block_size / 4) as u64;
        // Path of slot indexes from the inode's i_block down to the data pointer.
        let (mut path, level_start): (Vec<u64>, u64) = if lblk < 12 {
            (vec![lblk], 0)
        } else if lblk < 12 + apb {
            (vec![12, lblk - 12], 12)
        } else if lblk < 12 + apb + apb * apb {
            let r = lblk - 12 - apb;
            (vec![13, r / apb, r % apb], 12 + apb)
        } else {
            let r = lblk - 12 - apb - apb * apb;
            if r >= apb * apb * apb {
                return Ok(Mapping {
                    lblk,
                    len: 1,
                    target: Target::Hole,
                });
            }
            (
                vec![14, r / (apb * apb), (r / apb) % apb, r % apb],
                12 + apb + apb * apb,
            )
        };
        let _ = level_start;
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
                return Ok(Mapping {
                    lblk,
                    len: span - pos_in_span,
                    target: Target::Hole,
                });
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
        let first = word(last);
        let mut n = 1usize;
        if first == 0 {
            while last + n < words && word(last + n) == 0 {
                n += 1;
            }
            return Ok(Mapping {
                lblk,
                len: n as u64,
                target: Target::Hole,
            });
        }
        while last + n < words && word(last + n) == first + n as u64 {
            n += 1;
        }
        Ok(Mapping {
            lblk,
            len: n as u64,
            target: Target::Data {
                pblk: first,
                unwritten: false,
            },
        })
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
