//! Inode allocation: directories spread Orlov-style over groups with room and few directories;
//! files stay near their parent. INODE_UNINIT groups and itable_unused are maintained.

use super::bitmap;
use super::{Allocator, MetaIo};
use crate::errno::{Errno, Result};
use crate::ondisk::group::{BG_BLOCK_UNINIT, BG_INODE_UNINIT, GroupDesc};

impl Allocator {
    fn load_inode_bitmap(&self, io: &dyn MetaIo, g: u32, gd: &GroupDesc) -> Result<Vec<u8>> {
        let bs = self.geo.block_size as usize;
        if gd.flags & BG_INODE_UNINIT != 0 && self.geo.uninit_bg {
            let mut b = vec![0u8; bs];
            for i in self.geo.inodes_per_group as usize..bs * 8 {
                bitmap::set(&mut b, i);
            }
            return Ok(b);
        }
        let data = io.read_meta(gd.inode_bitmap)?;
        if self.geo.metadata_csum {
            let want = self.bitmap_csum(&data, self.geo.inodes_per_group);
            let mask = if self.geo.desc_size >= 64 {
                u32::MAX
            } else {
                0xFFFF
            };
            if want & mask != gd.inode_bitmap_csum & mask {
                return Err(crate::corrupt!(
                    "group {g}: inode bitmap {} checksum mismatch",
                    gd.inode_bitmap
                ));
            }
        }
        Ok(data.to_vec())
    }

    fn store_inode_bitmap(&self, io: &dyn MetaIo, gd: &mut GroupDesc, bits: Vec<u8>) {
        gd.inode_bitmap_csum = self.bitmap_csum(&bits, self.geo.inodes_per_group);
        gd.flags &= !BG_INODE_UNINIT;
        io.write_meta(gd.inode_bitmap, bits);
    }

    /// Pick the group for a new inode.
    fn choose_group(&self, parent_group: u32, is_dir: bool) -> Option<u32> {
        let groups = self.lock().clone();
        let n = groups.len() as u32;
        let has_room = |g: u32| groups[g as usize].free_inodes_count > 0;
        if is_dir {
            let avg_inodes = groups
                .iter()
                .map(|d| d.free_inodes_count as u64)
                .sum::<u64>()
                / n as u64;
            let avg_blocks = groups
                .iter()
                .map(|d| d.free_blocks_count as u64)
                .sum::<u64>()
                / n as u64;
            let best = (0..n)
                .map(|i| (parent_group + i) % n)
                .filter(|&g| {
                    let d = &groups[g as usize];
                    d.free_inodes_count as u64 >= avg_inodes.max(1)
                        && d.free_blocks_count as u64 >= avg_blocks
                })
                .min_by_key(|&g| groups[g as usize].used_dirs_count);
            if best.is_some() {
                return best;
            }
        } else {
            if has_room(parent_group) {
                return Some(parent_group);
            }
            // Quadratic probing away from the parent, as ext4 does for files.
            let mut step = 1u32;
            while step < n {
                let g = (parent_group + step) % n;
                if has_room(g) && groups[g as usize].free_blocks_count > 0 {
                    return Some(g);
                }
                step <<= 1;
            }
        }
        (0..n)
            .map(|i| (parent_group + i) % n)
            .find(|&g| has_room(g))
    }

    /// Allocate an inode number near `parent`. The caller then writes the inode itself.
    pub fn alloc_inode(&self, io: &dyn MetaIo, parent: u64, is_dir: bool) -> Result<u64> {
        let _op = self.op();
        let ipg = self.geo.inodes_per_group;
        let parent_group = ((parent.max(1) - 1) / ipg as u64) as u32;
        let mut tried = 0;
        let mut g = self
            .choose_group(parent_group, is_dir)
            .ok_or(Errno::ENOSPC)?;
        loop {
            let mut gd = self.group(g);
            let mut bits = self.load_inode_bitmap(io, g, &gd)?;
            let from = if g == 0 {
                self.geo.first_ino as usize - 1
            } else {
                0
            };
            if let Some(i) = bitmap::find_zero(&bits, from, ipg as usize) {
                bitmap::set(&mut bits, i);
                if gd.flags & BG_BLOCK_UNINIT != 0 && self.geo.uninit_bg {
                    // The inode table is now in use: give the group a real block bitmap.
                    let bb = self.load_block_bitmap(io, g, &gd)?;
                    gd.block_bitmap_csum = self.bitmap_csum(&bb, self.geo.blocks_per_group);
                    gd.flags &= !BG_BLOCK_UNINIT;
                    io.write_meta(gd.block_bitmap, bb);
                }
                gd.free_inodes_count -= 1;
                if is_dir {
                    gd.used_dirs_count += 1;
                }
                if self.geo.uninit_bg {
                    let used = ipg - gd.itable_unused.min(ipg);
                    if i as u32 + 1 > used {
                        gd.itable_unused = ipg - (i as u32 + 1);
                    }
                }
                self.store_inode_bitmap(io, &mut gd, bits);
                self.store_group(io, g, gd)?;
                return Ok(g as u64 * ipg as u64 + i as u64 + 1);
            }
            // The descriptor said there was room but the bitmap disagrees.
            if gd.free_inodes_count > 0 {
                return Err(crate::corrupt!(
                    "group {g}: free inode count {} but the bitmap is full",
                    gd.free_inodes_count
                ));
            }
            tried += 1;
            if tried >= self.group_count() {
                return Err(Errno::ENOSPC);
            }
            g = (g + 1) % self.group_count();
        }
    }

    /// Release inode `ino`. Freeing a free inode is corruption.
    pub fn free_inode(&self, io: &dyn MetaIo, ino: u64, is_dir: bool) -> Result<()> {
        let _op = self.op();
        let ipg = self.geo.inodes_per_group as u64;
        if ino < self.geo.first_ino as u64 || ino > ipg * self.group_count() as u64 {
            return Err(crate::corrupt!("freeing impossible inode {ino}"));
        }
        let g = ((ino - 1) / ipg) as u32;
        let i = ((ino - 1) % ipg) as usize;
        let mut gd = self.group(g);
        let mut bits = self.load_inode_bitmap(io, g, &gd)?;
        if !bitmap::test(&bits, i) {
            return Err(crate::corrupt!("inode {ino} is freed but was not in use"));
        }
        bitmap::clear(&mut bits, i);
        gd.free_inodes_count += 1;
        if is_dir {
            gd.used_dirs_count = gd.used_dirs_count.saturating_sub(1);
        }
        self.store_inode_bitmap(io, &mut gd, bits);
        self.store_group(io, g, gd)
    }
}
