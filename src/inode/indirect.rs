//! Growing and truncating ext2/ext3-style indirect block maps (inodes without the EXTENTS flag):
//! twelve direct pointers in `i_block[0..12]`, then one single, one double and one triple indirect
//! block. Indirect blocks are metadata (written through the buffer cache, revoked when freed) and
//! carry no checksum in the ext4 format. Reading these maps lives in `bmap`.
//!
//! The functions here return how many blocks the inode gained or lost; the caller keeps `i_blocks`
//! exact with that count.
//!
//! Lock order: callers hold the namespace write lock; allocation and the buffer cache take their
//! own short internal locks below it.

use crate::errno::{Errno, Result};
use crate::inode::blocks::BlockUse;
use crate::ondisk::inode::Inode;
use crate::ondisk::le::{put_u32, u32_at};
use crate::ondisk::superblock::ro_compat;
use crate::volume::Ino;
use crate::volume::Volume;

/// Direct pointers in `i_block`.
const NDIR: u64 = 12;

/// The slot path from `i_block` down to the pointer for logical block `lblk`: the first entry
/// indexes `i_block`, each later one an indirect block. `None` past the triple indirect range.
fn ind_path(apb: u64, lblk: u64) -> Option<Vec<usize>> {
    let mut r = lblk;
    if r < NDIR {
        return Some(vec![r as usize]);
    }
    r -= NDIR;
    if r < apb {
        return Some(vec![12, r as usize]);
    }
    r -= apb;
    if r < apb * apb {
        return Some(vec![13, (r / apb) as usize, (r % apb) as usize]);
    }
    r -= apb * apb;
    if r < apb * apb * apb {
        return Some(vec![
            14,
            (r / (apb * apb)) as usize,
            ((r / apb) % apb) as usize,
            (r % apb) as usize,
        ]);
    }
    None
}

/// What a truncate collected before changing anything: indirect blocks to rewrite, blocks to free.
#[derive(Default)]
struct Plan {
    writes: Vec<(u64, Vec<u8>)>,
    /// (block, is metadata) for every block to free.
    free: Vec<(u64, bool)>,
}

impl Volume {
    fn ind_apb(&self) -> u64 {
        (self.block_size / 4) as u64
    }

    /// A pointer read from `i_block` (`holder` None) or indirect block `holder`, checked to lie
    /// inside the file system.
    fn ind_check(&self, ino: Ino, holder: Option<u64>, p: u32) -> Result<u64> {
        let p = p as u64;
        if p < self.sb.first_data_block as u64 || p >= self.sb.blocks_count {
            return Err(match holder {
                None => crate::corrupt!(
                    "inode {ino}: i_block holds block pointer {p} outside the file system"
                ),
                Some(h) => crate::corrupt!(
                    "inode {ino}: indirect block {h} holds block pointer {p} outside the file system"
                ),
            });
        }
        Ok(p)
    }

    /// Largest size an indirect-mapped file may have (the kernel's `ext4_max_bitmap_size`):
    /// what the triple indirect tree addresses, capped so `i_blocks` (data plus indirect blocks)
    /// still fits its field.
    pub(crate) fn ind_max_bytes(&self) -> u64 {
        let bits = self.block_size.trailing_zeros() as u64;
        let ppb = self.ind_apb();
        let mut upper: u64 = if self.sb.has_ro_compat(ro_compat::HUGE_FILE) {
            (1u64 << 48) - 1
        } else {
            ((1u64 << 32) - 1) >> (bits - 9)
        };
        let mut res = NDIR + ppb + ppb * ppb + ppb * ppb * ppb;
        let meta = 1 + (1 + ppb) + (1 + ppb + ppb * ppb);
        if res + meta > upper {
            res = upper;
            upper -= NDIR;
            let mut meta = 1;
            upper = upper.saturating_sub(ppb);
            if upper < ppb * ppb {
                meta += 1 + upper.div_ceil(ppb);
            } else {
                meta += 1 + ppb;
                upper -= ppb * ppb;
                meta += 1 + upper.div_ceil(ppb) + upper.div_ceil(ppb * ppb);
            }
            res -= meta;
        }
        (res << bits).min(i64::MAX as u64)
    }

    /// Allocate one data block at `lblk` of an indirect-mapped inode (a hole), with any missing
    /// indirect blocks above it. `goal` 0 picks one near the previous pointer, like ext3.
    /// Returns (data block, blocks the inode gained, including new indirect blocks). `usage`
    /// applies to the data block; new indirect blocks are metadata.
    pub(crate) fn ind_map_new(
        &self,
        ino: Ino,
        inode: &mut Inode,
        lblk: u64,
        goal: u64,
        usage: BlockUse,
    ) -> Result<(u64, i64)> {
        let Some(path) = ind_path(self.ind_apb(), lblk) else {
            log::warn!("inode {ino}: logical block {lblk} is beyond what an indirect map reaches");
            return Err(Errno::EFBIG);
        };
        // Walk down while the pointers exist. `holder` is the indirect block holding slot
        // path[depth] (None: i_block).
        let mut holder: Option<u64> = None;
        let mut holder_data: Option<std::sync::Arc<[u8]>> = None;
        let mut depth = 0;
        while depth < path.len() {
            let slot = path[depth];
            let raw = match &holder_data {
                None => inode.block_word(slot),
                Some(d) => u32_at(d, slot * 4),
            };
            if raw == 0 {
                break;
            }
            let p = self.ind_check(ino, holder, raw)?;
            if depth + 1 == path.len() {
                log::error!("inode {ino}: logical block {lblk} is already mapped (to {p})");
                return Err(Errno::EEXIST);
            }
            holder = Some(p);
            holder_data = Some(self.read_meta_block(p)?);
            depth += 1;
        }
        let goal = if goal != 0 {
            goal
        } else {
            self.ind_goal(ino, inode, holder, holder_data.as_deref(), path[depth])
        };
        // Blocks to allocate: the missing indirect levels, then the data block.
        let need = path.len() - depth;
        let mut got: Vec<u64> = Vec::with_capacity(need);
        while got.len() < need {
            let g = got.last().map_or(goal, |b| b + 1);
            // The indirect levels are metadata (journaled); the last block takes the data.
            let (class, want) = if got.len() + 1 < need {
                (BlockUse::Meta, need - 1 - got.len())
            } else {
                (usage, 1)
            };
            let r = self.alloc_for(class, g, want as u32);
            match r {
                Ok((b, n)) if b + n as u64 <= u32::MAX as u64 + 1 => {
                    got.extend(b..b + n as u64);
                }
                other => {
                    let err = match other {
                        Ok((b, n)) => {
                            // An indirect map holds 32-bit block numbers only.
                            log::warn!(
                                "inode {ino}: allocated block {b} does not fit an indirect map"
                            );
                            if let Err(e) = self.alloc.free_blocks(self, b, n) {
                                log::error!("inode {ino}: releasing block {b}+{n} failed: {e}");
                            }
                            Errno::ENOSPC
                        }
                        Err(e) => e,
                    };
                    for &b in &got {
                        if let Err(e) = self.alloc.free_blocks(self, b, 1) {
                            log::error!("inode {ino}: releasing block {b} failed: {e}");
                        }
                    }
                    return Err(err);
                }
            }
        }
        // New indirect blocks: zeroed, each pointing at the next new block.
        for j in 0..need - 1 {
            let mut b = self.new_block_buf();
            put_u32(&mut b, path[depth + 1 + j] * 4, got[j + 1] as u32);
            self.put_block(got[j], b);
        }
        match holder {
            None => put_u32(&mut inode.block, path[depth] * 4, got[0] as u32),
            Some(h) => {
                let mut b = self.block_for_write(h)?;
                put_u32(&mut b, path[depth] * 4, got[0] as u32);
                self.put_block(h, b);
            }
        }
        Ok((got[need - 1], need as i64))
    }

    /// ext3's `find_near`: the nearest earlier pointer in the array that will hold the new one,
    /// else the indirect block itself, else the start of the inode's group.
    fn ind_goal(
        &self,
        ino: Ino,
        inode: &Inode,
        holder: Option<u64>,
        data: Option<&[u8]>,
        slot: usize,
    ) -> u64 {
        let earlier = (0..slot).rev().find_map(|i| {
            let w = match data {
                None => inode.block_word(i),
                Some(d) => u32_at(d, i * 4),
            };
            (w != 0).then_some(w as u64)
        });
        if let Some(p) = earlier.filter(|&p| p < self.sb.blocks_count) {
            return p;
        }
        if let Some(h) = holder {
            return h;
        }
        self.alloc
            .geo
            .group_first_block(((ino - 1) / self.sb.inodes_per_group as u64) as u32)
    }

    /// Free every block mapped at or after logical block `from`, and every indirect block left
    /// empty. Nothing changes when the map turns out corrupt. Returns the blocks freed (data and
    /// indirect), for `i_blocks`.
    pub(crate) fn ind_truncate(&self, ino: Ino, inode: &mut Inode, from: u64) -> Result<i64> {
        self.ind_free_range(ino, inode, from, u64::MAX)
    }

    /// [`Volume::ind_free_range`] on the in-memory `inode`, then forget its cached map and
    /// count the freed blocks out of `i_blocks` (the caller stores the inode).
    pub(crate) fn ind_unmap(&self, ino: Ino, inode: &mut Inode, from: u64, end: u64) -> Result<()> {
        let r = self.ind_free_range(ino, inode, from, end);
        self.es.forget_mapped(ino);
        self.adjust_blocks(inode, -r?);
        Ok(())
    }

    /// Free every block mapped in logical blocks `[from, end)`, and every indirect block the
    /// range leaves empty (a punched hole in the middle of the file, or a truncate with `end`
    /// at the maximum; the kernel's `ext4_ind_remove_space`). Nothing changes when the map
    /// turns out corrupt. Returns the blocks freed (data and indirect), for `i_blocks`.
    pub(crate) fn ind_free_range(
        &self,
        ino: Ino,
        inode: &mut Inode,
        from: u64,
        end: u64,
    ) -> Result<i64> {
        if from >= end {
            return Ok(0);
        }
        let apb = self.ind_apb();
        // Data blocks of directories and symlinks are metadata too.
        let data_is_meta = !inode.is_reg();
        let mut plan = Plan::default();
        let mut iblock = inode.block;
        for i in from.min(NDIR)..end.min(NDIR) {
            let w = u32_at(&iblock, i as usize * 4);
            if w != 0 {
                let p = self.ind_check(ino, None, w)?;
                plan.free.push((p, data_is_meta));
                put_u32(&mut iblock, i as usize * 4, 0);
            }
        }
        let mut base = NDIR;
        for (slot, levels) in [(12usize, 1u32), (13, 2), (14, 3)] {
            let span = apb.pow(levels);
            let w = u32_at(&iblock, slot * 4);
            if w != 0 && from < base + span && end > base {
                let p = self.ind_check(ino, None, w)?;
                let off = from.saturating_sub(base);
                let off_end = (end - base).min(span);
                if self.ind_free_block(ino, p, levels, off, off_end, data_is_meta, &mut plan)? {
                    put_u32(&mut iblock, slot * 4, 0);
                }
            }
            base += span;
        }
        let mut free = plan.free;
        free.sort_unstable();
        if let Some(w) = free.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(crate::corrupt!(
                "inode {ino}: block {} is mapped twice in its indirect map",
                w[0].0
            ));
        }
        // The walk succeeded: apply it.
        for (b, data) in plan.writes {
            self.put_block(b, data);
        }
        inode.block = iblock;
        let n = free.len() as i64;
        let mut i = 0;
        while i < free.len() {
            let start = free[i].0;
            let mut len = 0u32;
            while i < free.len() && free[i].0 == start + len as u64 && len < u32::MAX {
                if free[i].1 {
                    self.cache.revoke(free[i].0);
                }
                len += 1;
                i += 1;
            }
            self.alloc.free_blocks(self, start, len)?;
        }
        Ok(n)
    }

    /// Plan freeing everything in `[off, off_end)` (offsets inside the range it maps) below
    /// indirect block `blk`, which maps `apb^levels` logical blocks. Returns true when `blk`
    /// ends up empty and is freed too.
    #[allow(clippy::too_many_arguments)]
    fn ind_free_block(
        &self,
        ino: Ino,
        blk: u64,
        levels: u32,
        off: u64,
        off_end: u64,
        data_is_meta: bool,
        plan: &mut Plan,
    ) -> Result<bool> {
        let child_span = self.ind_apb().pow(levels - 1);
        let first = (off / child_span) as usize;
        let last = off_end.div_ceil(child_span) as usize;
        let mut b = self.block_for_write(blk)?;
        let mut changed = false;
        for i in first..last {
            let w = u32_at(&b, i * 4);
            if w == 0 {
                continue;
            }
            let p = self.ind_check(ino, Some(blk), w)?;
            let gone = if levels == 1 {
                plan.free.push((p, data_is_meta));
                true
            } else {
                let base = i as u64 * child_span;
                let sub = off.max(base) - base;
                let sub_end = off_end.min(base + child_span) - base;
                self.ind_free_block(ino, p, levels - 1, sub, sub_end, data_is_meta, plan)?
            };
            if gone {
                put_u32(&mut b, i * 4, 0);
                changed = true;
            }
        }
        if b.iter().all(|&x| x == 0) {
            plan.free.push((blk, true));
            return Ok(true);
        }
        if changed {
            plan.writes.push((blk, b));
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::ind_path;

    #[test]
    fn indirect_paths() {
        let apb = 256;
        assert_eq!(ind_path(apb, 0), Some(vec![0]));
        assert_eq!(ind_path(apb, 11), Some(vec![11]));
        assert_eq!(ind_path(apb, 12), Some(vec![12, 0]));
        assert_eq!(ind_path(apb, 12 + 255), Some(vec![12, 255]));
        assert_eq!(ind_path(apb, 12 + 256), Some(vec![13, 0, 0]));
        assert_eq!(ind_path(apb, 12 + 256 + 257), Some(vec![13, 1, 1]));
        let t = 12 + 256 + 65536;
        assert_eq!(ind_path(apb, t), Some(vec![14, 0, 0, 0]));
        assert_eq!(ind_path(apb, t + 65536 + 256 + 1), Some(vec![14, 1, 1, 1]));
        assert_eq!(
            ind_path(apb, t + 256 * 65536 - 1),
            Some(vec![14, 255, 255, 255])
        );
        assert_eq!(ind_path(apb, t + 256 * 65536), None);
    }
}
