//! Block allocation: goal-based, contiguous runs, BLOCK_UNINIT groups initialized on first use.

use super::bitmap;
use super::{Allocator, MetaIo};
use crate::errno::{Errno, Result};
use crate::ondisk::group::{BG_BLOCK_UNINIT, GroupDesc};

impl Allocator {
    /// The block bitmap of group `g`, computed when the group is still BLOCK_UNINIT.
    pub(super) fn load_block_bitmap(
        &self,
        io: &dyn MetaIo,
        g: u32,
        gd: &GroupDesc,
    ) -> Result<Vec<u8>> {
        let bs = self.geo.block_size as usize;
        if gd.flags & BG_BLOCK_UNINIT != 0 && self.geo.uninit_bg {
            let mut b = vec![0u8; bs];
            for i in 0..self.fixed[g as usize] as usize {
                bitmap::set(&mut b, i);
            }
            let first = self.geo.group_first_block(g);
            let groups = self.lock().clone();
            for h in &groups {
                for (start, len) in [
                    (h.block_bitmap, 1),
                    (h.inode_bitmap, 1),
                    (h.inode_table, self.geo.itable_blocks()),
                ] {
                    for x in start..start + len {
                        if x >= first && x < first + self.geo.group_blocks(g) as u64 {
                            bitmap::set(&mut b, (x - first) as usize);
                        }
                    }
                }
            }
            for i in self.geo.group_blocks(g) as usize..bs * 8 {
                bitmap::set(&mut b, i);
            }
            return Ok(b);
        }
        let data = io.read_meta(gd.block_bitmap)?;
        if self.geo.metadata_csum {
            let want = self.bitmap_csum(&data, self.geo.blocks_per_group);
            let mask = if self.geo.desc_size >= 64 {
                u32::MAX
            } else {
                0xFFFF
            };
            if want & mask != gd.block_bitmap_csum & mask {
                return Err(crate::corrupt!(
                    "group {g}: block bitmap {} checksum mismatch",
                    gd.block_bitmap
                ));
            }
        }
        Ok(data.to_vec())
    }

    fn store_block_bitmap(&self, io: &dyn MetaIo, gd: &mut GroupDesc, bits: Vec<u8>) {
        gd.block_bitmap_csum = self.bitmap_csum(&bits, self.geo.blocks_per_group);
        gd.flags &= !BG_BLOCK_UNINIT;
        io.write_meta(gd.block_bitmap, bits);
    }

    /// Allocate up to `want` contiguous blocks, as close after `goal` as possible.
    /// Returns (first block, count); `count` may be less than `want`.
    /// Blocks reserved by delayed allocation stay free for it: ENOSPC when only they are left.
    pub fn alloc_blocks(&self, io: &dyn MetaIo, goal: u64, want: u32) -> Result<(u64, u32)> {
        let _op = self.op();
        let room = self.unreserved_free();
        if room == 0 {
            return Err(Errno::ENOSPC);
        }
        self.alloc_run(io, goal, want.min(room.min(u32::MAX as u64) as u32), false)
    }

    /// Like [`Allocator::alloc_blocks`], for file data: blocks freed by a transaction that has
    /// not committed yet are skipped (see `busy`). ENOSPC may mean only busy blocks are left: a
    /// commit frees them. `reserved` blocks of the request are covered by a delayed-allocation
    /// reservation (the caller gives it back just before or right after): they may come from
    /// anywhere, even the metadata pool, as a reservation promised; the rest must come from
    /// unreserved space outside the pool.
    pub fn alloc_data_blocks(
        &self,
        io: &dyn MetaIo,
        goal: u64,
        want: u32,
        reserved: u32,
    ) -> Result<(u64, u32)> {
        let _op = self.op();
        // Unreserved data leaves the metadata pool alone: writeback of reserved data may need
        // it for extent tree blocks.
        let room = self.unreserved_free().saturating_sub(self.metadata_pool()) + reserved as u64;
        if room == 0 {
            return Err(Errno::ENOSPC);
        }
        self.alloc_run(io, goal, want.min(room.min(u32::MAX as u64) as u32), true)
    }

    /// In group `g` (first block `first`), the first free run at or after bit `from` (below
    /// `end`) that avoids busy blocks when `avoid_busy`, up to `want` long.
    fn free_run(
        &self,
        bits: &[u8],
        first: u64,
        from: usize,
        end: usize,
        want: usize,
        avoid_busy: bool,
    ) -> Option<(usize, usize)> {
        let busy = avoid_busy.then(|| self.busy());
        let mut from = from;
        while let Some(z) = bitmap::find_zero(bits, from, end) {
            let mut run = bitmap::zero_run(bits, z, end, want);
            if let Some(b) = &busy
                && let Some((bs, be)) = b.first_overlap(first + z as u64, first + (z + run) as u64)
            {
                if bs <= first + z as u64 {
                    from = (be - first) as usize;
                    continue;
                }
                run = (bs - first) as usize - z;
            }
            return Some((z, run));
        }
        None
    }

    fn alloc_run(
        &self,
        io: &dyn MetaIo,
        goal: u64,
        want: u32,
        avoid_busy: bool,
    ) -> Result<(u64, u32)> {
        let want = want.max(1);
        let ngroups = self.group_count();
        let goal = goal.clamp(self.geo.first_data_block, self.geo.blocks_count - 1);
        let g0 = self.geo.group_of_block(goal);
        // Two passes: first only groups with room for the whole run, then any free block.
        for pass in 0..2 {
            for i in 0..ngroups {
                let g = (g0 + i) % ngroups;
                let mut gd = self.group(g);
                if gd.free_blocks_count == 0
                    || (pass == 0 && gd.free_blocks_count < want.min(self.geo.blocks_per_group / 2))
                {
                    continue;
                }
                let mut bits = self.load_block_bitmap(io, g, &gd)?;
                let end = self.geo.group_blocks(g) as usize;
                let start = if i == 0 {
                    (goal - self.geo.group_first_block(g)) as usize
                } else {
                    0
                };
                let first = self.geo.group_first_block(g);
                let mut found = None;
                let mut from = start;
                // Prefer a free run of the full length; fall back to the first free block.
                while let Some((z, run)) =
                    self.free_run(&bits, first, from, end, want as usize, avoid_busy)
                {
                    if found.is_none() {
                        found = Some((z, run));
                    }
                    if run == want as usize || pass == 1 {
                        found = Some((z, run));
                        break;
                    }
                    from = z + run;
                }
                if found.is_none() && start > 0 {
                    found = self
                        .free_run(&bits, first, 0, start, want as usize, avoid_busy)
                        .map(|(z, _)| {
                            let run = bitmap::zero_run(&bits, z, end, want as usize);
                            let busy_end = self
                                .free_run(&bits, first, z, end, want as usize, avoid_busy)
                                .map_or(run, |(_, r)| r);
                            (z, run.min(busy_end))
                        });
                }
                let Some((z, run)) = found else { continue };
                for b in z..z + run {
                    bitmap::set(&mut bits, b);
                }
                gd.free_blocks_count -= run as u32;
                self.store_block_bitmap(io, &mut gd, bits);
                self.store_group(io, g, gd)?;
                return Ok((self.geo.group_first_block(g) + z as u64, run as u32));
            }
        }
        Err(Errno::ENOSPC)
    }

    /// Return `len` blocks from `start` to the free pool. Freeing a free block is corruption.
    pub fn free_blocks(&self, io: &dyn MetaIo, start: u64, len: u32) -> Result<()> {
        let _op = self.op();
        let mut b = start;
        let end = start + len as u64;
        if start < self.geo.first_data_block || end > self.geo.blocks_count {
            return Err(crate::corrupt!(
                "freeing blocks {start}+{len} outside the file system"
            ));
        }
        while b < end {
            let g = self.geo.group_of_block(b);
            let first = self.geo.group_first_block(g);
            let stop = end.min(first + self.geo.group_blocks(g) as u64);
            let mut gd = self.group(g);
            let mut bits = self.load_block_bitmap(io, g, &gd)?;
            for x in b..stop {
                let i = (x - first) as usize;
                if !bitmap::test(&bits, i) {
                    return Err(crate::corrupt!("block {x} is freed but was not in use"));
                }
                bitmap::clear(&mut bits, i);
            }
            gd.free_blocks_count += (stop - b) as u32;
            self.busy().add(b, stop - b);
            self.store_block_bitmap(io, &mut gd, bits);
            self.store_group(io, g, gd)?;
            b = stop;
        }
        Ok(())
    }
}
