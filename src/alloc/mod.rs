//! Block and inode allocation on the group bitmaps, with group descriptors, bitmap checksums and
//! free counters kept exact. All metadata goes through `MetaIo`, so every change joins the running
//! transaction.
//!
//! Locking: several journal handles allocate and free at once (writeback of different files), so
//! every allocation, free and reservation runs whole under the allocator's own mutex (`op`): the
//! room check, the bitmap's read-modify-write and the group descriptor's. The descriptor's GDT
//! block, which other groups' descriptors share, is changed under its buffer lock
//! ([`MetaIo::modify_meta`]). The group table has its own short mutex so readers (statfs, the
//! superblock's counters at commit) can look at it at any time. Lock order: `op` → the group
//! table / busy extents → buffer locks → the buffer cache.

mod bitmap;
mod blocks;
pub mod busy;
mod inodes;
mod reserve;

use crate::errno::Result;
use crate::ondisk::csum::crc32c_raw;
use crate::ondisk::group::{GroupCsum, GroupDesc, set_desc_checksum};
use crate::ondisk::superblock::{Superblock, incompat, ro_compat};
use std::sync::{Arc, Mutex, MutexGuard};

/// Metadata block access for the allocator: reads see the newest version, writes join the running
/// transaction.
pub trait MetaIo {
    fn read_meta(&self, block: u64) -> Result<Arc<[u8]>>;
    fn write_meta(&self, block: u64, data: Vec<u8>);

    /// Read-modify-write `block` atomically: no other change of the block may come between the
    /// read and the write (the file system holds the block's buffer lock meanwhile).
    fn modify_meta(&self, block: u64, f: &mut dyn FnMut(&mut [u8])) -> Result<()> {
        let mut data = self.read_meta(block)?.to_vec();
        f(&mut data);
        self.write_meta(block, data);
        Ok(())
    }
}

/// The fixed geometry the allocator works with.
#[derive(Clone, Debug)]
pub struct Geometry {
    pub block_size: u32,
    pub blocks_count: u64,
    pub first_data_block: u64,
    pub blocks_per_group: u32,
    pub inodes_per_group: u32,
    pub inode_size: u32,
    pub desc_size: usize,
    pub csum_seed: u32,
    pub metadata_csum: bool,
    pub group_csum: GroupCsum,
    pub uuid: [u8; 16],
    pub flex_bg_size: u32,
    pub first_ino: u32,
    /// Whether itable_unused / UNINIT flags are maintained (gdt_csum or metadata_csum).
    pub uninit_bg: bool,
}

impl Geometry {
    pub fn from_superblock(sb: &Superblock) -> Geometry {
        let metadata_csum = sb.has_metadata_csum();
        Geometry {
            block_size: sb.block_size(),
            blocks_count: sb.blocks_count,
            first_data_block: sb.first_data_block as u64,
            blocks_per_group: sb.blocks_per_group,
            inodes_per_group: sb.inodes_per_group,
            inode_size: sb.inode_size as u32,
            desc_size: sb.desc_size as usize,
            csum_seed: sb.csum_seed(),
            metadata_csum,
            group_csum: if metadata_csum {
                GroupCsum::Crc32c {
                    seed: sb.csum_seed(),
                }
            } else if sb.has_ro_compat(ro_compat::GDT_CSUM) {
                GroupCsum::Crc16
            } else {
                GroupCsum::None
            },
            uuid: sb.uuid,
            flex_bg_size: if sb.has_incompat(incompat::FLEX_BG) {
                1 << sb.log_groups_per_flex.min(31)
            } else {
                1
            },
            first_ino: sb.first_ino,
            uninit_bg: metadata_csum || sb.has_ro_compat(ro_compat::GDT_CSUM),
        }
    }

    pub fn group_count(&self) -> u32 {
        (self.blocks_count - self.first_data_block).div_ceil(self.blocks_per_group as u64) as u32
    }

    pub fn group_first_block(&self, g: u32) -> u64 {
        self.first_data_block + g as u64 * self.blocks_per_group as u64
    }

    /// Blocks in group `g` (the last group may be short).
    pub fn group_blocks(&self, g: u32) -> u32 {
        let start = self.group_first_block(g);
        (self.blocks_count - start).min(self.blocks_per_group as u64) as u32
    }

    pub fn group_of_block(&self, b: u64) -> u32 {
        ((b.max(self.first_data_block) - self.first_data_block) / self.blocks_per_group as u64)
            as u32
    }

    pub fn itable_blocks(&self) -> u64 {
        (self.inodes_per_group as u64 * self.inode_size as u64).div_ceil(self.block_size as u64)
    }
}

/// Where one group descriptor lives: (GDT block, byte offset in it).
pub type DescLocation = (u64, usize);

pub struct Allocator {
    pub geo: Geometry,
    groups: Mutex<Vec<GroupDesc>>,
    locations: Vec<DescLocation>,
    /// Blocks reserved at fixed places (superblock backups, GDT, reserved GDT) per group: used to
    /// initialize BLOCK_UNINIT bitmaps.
    fixed: Vec<u32>,
    /// Blocks freed by transactions not yet committed: data allocations avoid them.
    busy: Mutex<busy::Busy>,
    /// Blocks reserved by delayed allocation (see `reserve`).
    reserved: std::sync::atomic::AtomicU64,
    /// Held by every allocation, free and reservation from its room check to its last write.
    op: Mutex<()>,
}

impl Allocator {
    /// `locations[g]` is where descriptor `g` sits; `fixed[g]` the count of superblock/GDT blocks
    /// at the start of group `g`.
    pub fn new(
        geo: Geometry,
        groups: Vec<GroupDesc>,
        locations: Vec<DescLocation>,
        fixed: Vec<u32>,
    ) -> Allocator {
        Allocator {
            geo,
            groups: Mutex::new(groups),
            locations,
            fixed,
            busy: Mutex::new(busy::Busy::default()),
            reserved: std::sync::atomic::AtomicU64::new(0),
            op: Mutex::new(()),
        }
    }

    /// Serializes allocations, frees and reservations (see the module comment).
    fn op(&self) -> MutexGuard<'_, ()> {
        self.op.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, Vec<GroupDesc>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of group `g`'s descriptor.
    pub fn group(&self, g: u32) -> GroupDesc {
        self.lock()[g as usize].clone()
    }

    pub fn group_count(&self) -> u32 {
        self.geo.group_count()
    }

    /// Free blocks and free inodes summed over all groups.
    pub fn free_counts(&self) -> (u64, u64) {
        let g = self.lock();
        (
            g.iter().map(|d| d.free_blocks_count as u64).sum(),
            g.iter().map(|d| d.free_inodes_count as u64).sum(),
        )
    }

    fn busy(&self) -> MutexGuard<'_, busy::Busy> {
        self.busy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The running transaction was frozen for commit: its freed blocks stay busy until
    /// [`Allocator::busy_committed`].
    pub fn busy_freeze(&self) {
        self.busy().freeze();
    }

    /// Every frozen transaction is durable: blocks they freed may take data again.
    pub fn busy_committed(&self) {
        self.busy().committed();
    }

    /// Blocks freed by transactions not committed yet.
    pub fn busy_blocks(&self) -> u64 {
        self.busy().blocks()
    }

    /// Was `block` freed by a transaction not committed yet?
    pub fn is_busy(&self, block: u64) -> bool {
        self.busy().first_overlap(block, block + 1).is_some()
    }

    /// Directories counted over all groups.
    pub fn used_dirs(&self) -> u64 {
        self.lock().iter().map(|d| d.used_dirs_count as u64).sum()
    }

    /// Store a changed descriptor: in memory and, with a fresh checksum, in its GDT block.
    fn store_group(&self, io: &dyn MetaIo, g: u32, gd: GroupDesc) -> Result<()> {
        let (block, off) = self.locations[g as usize];
        let ds = self.geo.desc_size;
        io.modify_meta(block, &mut |data| {
            gd.write_into(&mut data[off..off + ds], ds);
            set_desc_checksum(
                self.geo.group_csum,
                &self.geo.uuid,
                g,
                &mut data[off..off + ds],
            );
        })?;
        self.lock()[g as usize] = gd;
        Ok(())
    }

    fn bitmap_csum(&self, bits: &[u8], nbits: u32) -> u32 {
        crc32c_raw(self.geo.csum_seed, &bits[..(nbits / 8) as usize])
    }
}

#[cfg(test)]
mod tests;
