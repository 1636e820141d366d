//! Block group descriptors, 32-byte (classic) and 64-byte (`64bit`) forms, and their checksums.

use super::csum::{crc16, crc32c_raw};
use super::le::{put_u16, put_u32, u16_at, u32_at};

/// `bg_flags`
pub const BG_INODE_UNINIT: u16 = 0x1;
pub const BG_BLOCK_UNINIT: u16 = 0x2;
pub const BG_INODE_ZEROED: u16 = 0x4;

const CSUM_OFFSET: usize = 0x1E;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupDesc {
    pub block_bitmap: u64,
    pub inode_bitmap: u64,
    pub inode_table: u64,
    pub free_blocks_count: u32,
    pub free_inodes_count: u32,
    pub used_dirs_count: u32,
    pub flags: u16,
    pub itable_unused: u32,
    pub block_bitmap_csum: u32,
    pub inode_bitmap_csum: u32,
    pub checksum: u16,
}

impl GroupDesc {
    /// Decode a descriptor of `desc_size` bytes (32, or 64+ with `64bit`).
    pub fn parse(b: &[u8], desc_size: usize) -> GroupDesc {
        let wide = desc_size >= 64 && b.len() >= 64;
        let hi32 = |off: usize| {
            if wide {
                (u32_at(b, off) as u64) << 32
            } else {
                0
            }
        };
        let hi16 = |off: usize| {
            if wide {
                (u16_at(b, off) as u32) << 16
            } else {
                0
            }
        };
        GroupDesc {
            block_bitmap: u32_at(b, 0x0) as u64 | hi32(0x20),
            inode_bitmap: u32_at(b, 0x4) as u64 | hi32(0x24),
            inode_table: u32_at(b, 0x8) as u64 | hi32(0x28),
            free_blocks_count: u16_at(b, 0xC) as u32 | hi16(0x2C),
            free_inodes_count: u16_at(b, 0xE) as u32 | hi16(0x2E),
            used_dirs_count: u16_at(b, 0x10) as u32 | hi16(0x30),
            flags: u16_at(b, 0x12),
            itable_unused: u16_at(b, 0x1C) as u32 | hi16(0x32),
            block_bitmap_csum: u16_at(b, 0x18) as u32 | hi16(0x38),
            inode_bitmap_csum: u16_at(b, 0x1A) as u32 | hi16(0x3A),
            checksum: u16_at(b, CSUM_OFFSET),
        }
    }

    /// Write the fields this struct holds into a raw descriptor (other bytes are kept).
    /// The checksum is not touched: call `set_desc_checksum` afterwards.
    pub fn write_into(&self, b: &mut [u8], desc_size: usize) {
        let wide = desc_size >= 64 && b.len() >= 64;
        put_u32(b, 0x0, self.block_bitmap as u32);
        put_u32(b, 0x4, self.inode_bitmap as u32);
        put_u32(b, 0x8, self.inode_table as u32);
        put_u16(b, 0xC, self.free_blocks_count as u16);
        put_u16(b, 0xE, self.free_inodes_count as u16);
        put_u16(b, 0x10, self.used_dirs_count as u16);
        put_u16(b, 0x12, self.flags);
        put_u16(b, 0x18, self.block_bitmap_csum as u16);
        put_u16(b, 0x1A, self.inode_bitmap_csum as u16);
        put_u16(b, 0x1C, self.itable_unused as u16);
        if wide {
            put_u32(b, 0x20, (self.block_bitmap >> 32) as u32);
            put_u32(b, 0x24, (self.inode_bitmap >> 32) as u32);
            put_u32(b, 0x28, (self.inode_table >> 32) as u32);
            put_u16(b, 0x2C, (self.free_blocks_count >> 16) as u16);
            put_u16(b, 0x2E, (self.free_inodes_count >> 16) as u16);
            put_u16(b, 0x30, (self.used_dirs_count >> 16) as u16);
            put_u16(b, 0x32, (self.itable_unused >> 16) as u16);
            put_u16(b, 0x38, (self.block_bitmap_csum >> 16) as u16);
            put_u16(b, 0x3A, (self.inode_bitmap_csum >> 16) as u16);
        }
    }
}

/// Which checksum protects the group descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupCsum {
    None,
    /// `uninit_bg` / `gdt_csum`: crc16 over uuid, group number and descriptor.
    Crc16,
    /// `metadata_csum`: low 16 bits of crc32c from the fs checksum seed.
    Crc32c {
        seed: u32,
    },
}

/// The checksum a descriptor `raw` (exactly `desc_size` bytes) of group `group` should carry.
pub fn desc_checksum(kind: GroupCsum, uuid: &[u8; 16], group: u32, raw: &[u8]) -> Option<u16> {
    let le_group = group.to_le_bytes();
    match kind {
        GroupCsum::None => None,
        GroupCsum::Crc32c { seed } => {
            let mut c = crc32c_raw(seed, &le_group);
            c = crc32c_raw(c, &raw[..CSUM_OFFSET]);
            c = crc32c_raw(c, &[0, 0]);
            if raw.len() > CSUM_OFFSET + 2 {
                c = crc32c_raw(c, &raw[CSUM_OFFSET + 2..]);
            }
            Some((c & 0xFFFF) as u16)
        }
        GroupCsum::Crc16 => {
            let mut c = crc16(!0, uuid);
            c = crc16(c, &le_group);
            c = crc16(c, &raw[..CSUM_OFFSET]);
            // The 16-bit checksum covers the 64-bit tail too when the descriptor has one.
            if raw.len() > CSUM_OFFSET + 2 {
                c = crc16(c, &raw[CSUM_OFFSET + 2..]);
            }
            Some(c)
        }
    }
}

pub fn set_desc_checksum(kind: GroupCsum, uuid: &[u8; 16], group: u32, raw: &mut [u8]) {
    if let Some(c) = desc_checksum(kind, uuid, group, raw) {
        put_u16(raw, CSUM_OFFSET, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_into_round_trips() {
        for size in [32usize, 64] {
            let gd = GroupDesc {
                block_bitmap: 0x1_0000_0010,
                inode_bitmap: 20,
                inode_table: 30,
                free_blocks_count: 70000,
                free_inodes_count: 5,
                used_dirs_count: 2,
                flags: BG_INODE_ZEROED,
                itable_unused: 3,
                block_bitmap_csum: 0xAABB_CCDD,
                inode_bitmap_csum: 0x1122_3344,
                checksum: 0,
            };
            let mut raw = vec![0u8; size];
            gd.write_into(&mut raw, size);
            let back = GroupDesc::parse(&raw, size);
            if size == 64 {
                assert_eq!(back, gd);
            } else {
                assert_eq!(back.free_blocks_count, 70000 & 0xFFFF);
                assert_eq!(back.block_bitmap_csum, 0xCCDD);
            }
        }
    }

    #[test]
    fn checksum_round_trip_and_detects_change() {
        let uuid = [7u8; 16];
        for kind in [GroupCsum::Crc16, GroupCsum::Crc32c { seed: 0x1234 }] {
            for size in [32usize, 64] {
                let mut raw = vec![0u8; size];
                raw[0] = 9;
                raw[8] = 3;
                set_desc_checksum(kind, &uuid, 5, &mut raw);
                let gd = GroupDesc::parse(&raw, size);
                assert_eq!(Some(gd.checksum), desc_checksum(kind, &uuid, 5, &raw));
                raw[8] ^= 1;
                assert_ne!(
                    Some(GroupDesc::parse(&raw, size).checksum),
                    desc_checksum(kind, &uuid, 5, &raw)
                );
            }
        }
    }
}

/// Group layout rules that follow from the superblock alone.
pub mod layout {
    use crate::ondisk::le::{u16_at, u32_at};
    use crate::ondisk::superblock::{Superblock, compat, incompat, ro_compat};

    fn is_power_of(mut n: u32, base: u32) -> bool {
        while n > 1 && n.is_multiple_of(base) {
            n /= base;
        }
        n == 1
    }

    /// Whether `group` carries a superblock backup (and so group descriptor copies).
    pub fn has_super(sb: &Superblock, group: u32) -> bool {
        if group == 0 {
            return true;
        }
        if sb.has_compat(compat::SPARSE_SUPER2) {
            return group == u32_at(&sb.raw, 0x24C) || group == u32_at(&sb.raw, 0x250);
        }
        if !sb.has_ro_compat(ro_compat::SPARSE_SUPER) {
            return true;
        }
        group == 1 || is_power_of(group, 3) || is_power_of(group, 5) || is_power_of(group, 7)
    }

    pub fn descs_per_block(sb: &Superblock) -> u32 {
        sb.block_size() / sb.desc_size as u32
    }

    /// Number of group descriptor blocks in the whole table.
    pub fn gdt_blocks(sb: &Superblock) -> u32 {
        sb.group_count().div_ceil(descs_per_block(sb))
    }

    fn in_meta_bg_area(sb: &Superblock, group: u32) -> bool {
        sb.has_incompat(incompat::META_BG) && group / descs_per_block(sb) >= sb.first_meta_bg
    }

    /// Group descriptor blocks stored in `group` (the kernel's `ext4_bg_num_gdb`).
    pub fn gdt_blocks_in_group(sb: &Superblock, group: u32) -> u32 {
        if !in_meta_bg_area(sb, group) {
            if !has_super(sb, group) {
                0
            } else if sb.has_incompat(incompat::META_BG) {
                sb.first_meta_bg
            } else {
                gdt_blocks(sb)
            }
        } else {
            let per = descs_per_block(sb);
            let first = group / per * per;
            (group == first || group == first + 1 || group == first + per - 1) as u32
        }
    }

    /// Blocks at the start of `group` taken by the superblock copy, descriptors and reserved GDT.
    pub fn fixed_blocks(sb: &Superblock, group: u32) -> u32 {
        let sup = has_super(sb, group) as u32;
        if !in_meta_bg_area(sb, group) {
            if sup == 0 {
                return 0;
            }
            sup + gdt_blocks_in_group(sb, group) + u16_at(&sb.raw, 0xCE) as u32
        } else {
            sup + gdt_blocks_in_group(sb, group)
        }
    }

    /// Block holding descriptor block `nr` of the primary table (handles `meta_bg`).
    pub fn descriptor_block(sb: &Superblock, nr: u32) -> u64 {
        let first = sb.first_data_block as u64;
        if !sb.has_incompat(incompat::META_BG) || nr < sb.first_meta_bg {
            return first + 1 + nr as u64;
        }
        let group = nr * descs_per_block(sb);
        let mut sup = has_super(sb, group) as u64;
        if sb.block_size() == 1024 && nr == 0 && first == 0 {
            sup += 1;
        }
        first + group as u64 * sb.blocks_per_group as u64 + sup
    }

    #[cfg(test)]
    mod tests {
        use super::is_power_of;

        #[test]
        fn sparse_super_groups() {
            for g in [1u32, 3, 5, 7, 9, 25, 27, 49, 125, 343] {
                assert!(
                    is_power_of(g, 3) || is_power_of(g, 5) || is_power_of(g, 7),
                    "{g}"
                );
            }
            for g in [2u32, 4, 6, 8, 10, 15, 21, 35] {
                assert!(
                    !(is_power_of(g, 3) || is_power_of(g, 5) || is_power_of(g, 7)),
                    "{g}"
                );
            }
        }
    }
}
