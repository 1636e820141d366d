//! The ext4 superblock (1024 bytes at byte offset 1024) and feature flags.

use super::csum::crc32c_raw;
use super::le::{put_u32, u16_at, u32_at, u64_at};

pub const SUPERBLOCK_OFFSET: u64 = 1024;
pub const SUPERBLOCK_SIZE: usize = 1024;
pub const EXT4_MAGIC: u16 = 0xEF53;

pub mod compat {
    pub const HAS_JOURNAL: u32 = 0x4;
    pub const EXT_ATTR: u32 = 0x8;
    pub const RESIZE_INODE: u32 = 0x10;
    pub const DIR_INDEX: u32 = 0x20;
    pub const SPARSE_SUPER2: u32 = 0x200;
    pub const FAST_COMMIT: u32 = 0x400;
    pub const ORPHAN_FILE: u32 = 0x1000;
}

pub mod incompat {
    pub const COMPRESSION: u32 = 0x1;
    pub const FILETYPE: u32 = 0x2;
    pub const RECOVER: u32 = 0x4;
    pub const JOURNAL_DEV: u32 = 0x8;
    pub const META_BG: u32 = 0x10;
    pub const EXTENTS: u32 = 0x40;
    pub const BIT64: u32 = 0x80;
    pub const MMP: u32 = 0x100;
    pub const FLEX_BG: u32 = 0x200;
    pub const EA_INODE: u32 = 0x400;
    pub const DIRDATA: u32 = 0x1000;
    pub const CSUM_SEED: u32 = 0x2000;
    pub const LARGEDIR: u32 = 0x4000;
    pub const INLINE_DATA: u32 = 0x8000;
    pub const ENCRYPT: u32 = 0x10000;
    pub const CASEFOLD: u32 = 0x20000;

    /// Everything this engine reads correctly.
    pub const SUPPORTED: u32 = FILETYPE
        | RECOVER
        | META_BG
        | EXTENTS
        | BIT64
        | FLEX_BG
        | EA_INODE
        | CSUM_SEED
        | LARGEDIR
        | INLINE_DATA;

    pub const NAMES: &[(u32, &str)] = &[
        (COMPRESSION, "compression"),
        (FILETYPE, "filetype"),
        (RECOVER, "needs_recovery"),
        (JOURNAL_DEV, "journal_dev"),
        (META_BG, "meta_bg"),
        (EXTENTS, "extent"),
        (BIT64, "64bit"),
        (MMP, "mmp"),
        (FLEX_BG, "flex_bg"),
        (EA_INODE, "ea_inode"),
        (DIRDATA, "dirdata"),
        (CSUM_SEED, "metadata_csum_seed"),
        (LARGEDIR, "large_dir"),
        (INLINE_DATA, "inline_data"),
        (ENCRYPT, "encrypt"),
        (CASEFOLD, "casefold"),
    ];
}

pub mod ro_compat {
    pub const SPARSE_SUPER: u32 = 0x1;
    pub const LARGE_FILE: u32 = 0x2;
    pub const BTREE_DIR: u32 = 0x4;
    pub const HUGE_FILE: u32 = 0x8;
    pub const GDT_CSUM: u32 = 0x10;
    pub const DIR_NLINK: u32 = 0x20;
    pub const EXTRA_ISIZE: u32 = 0x40;
    pub const QUOTA: u32 = 0x100;
    pub const BIGALLOC: u32 = 0x200;
    pub const METADATA_CSUM: u32 = 0x400;
    pub const READONLY: u32 = 0x1000;
    pub const PROJECT: u32 = 0x2000;
    pub const VERITY: u32 = 0x8000;
    pub const ORPHAN_PRESENT: u32 = 0x10000;

    /// Everything this engine understands well enough to read.
    pub const SUPPORTED: u32 = SPARSE_SUPER
        | LARGE_FILE
        | BTREE_DIR
        | HUGE_FILE
        | GDT_CSUM
        | DIR_NLINK
        | EXTRA_ISIZE
        | QUOTA
        | BIGALLOC
        | METADATA_CSUM
        | READONLY
        | PROJECT
        | VERITY
        | ORPHAN_PRESENT;

    pub const NAMES: &[(u32, &str)] = &[
        (SPARSE_SUPER, "sparse_super"),
        (LARGE_FILE, "large_file"),
        (BTREE_DIR, "btree_dir"),
        (HUGE_FILE, "huge_file"),
        (GDT_CSUM, "uninit_bg"),
        (DIR_NLINK, "dir_nlink"),
        (EXTRA_ISIZE, "extra_isize"),
        (0x80, "snapshot"),
        (QUOTA, "quota"),
        (BIGALLOC, "bigalloc"),
        (METADATA_CSUM, "metadata_csum"),
        (0x800, "replica"),
        (READONLY, "read-only"),
        (PROJECT, "project"),
        (0x4000, "shared_blocks"),
        (VERITY, "verity"),
        (ORPHAN_PRESENT, "orphan_present"),
    ];
}

/// Names of the bits set in `bits`, for messages ("unsupported feature: casefold").
pub fn feature_names(bits: u32, table: &[(u32, &str)]) -> String {
    let mut out = Vec::new();
    for i in 0..32 {
        let bit = 1u32 << i;
        if bits & bit != 0 {
            match table.iter().find(|(b, _)| *b == bit) {
                Some((_, n)) => out.push(n.to_string()),
                None => out.push(format!("unknown bit 0x{bit:x}")),
            }
        }
    }
    out.join(", ")
}

/// The decoded superblock fields the engine uses, plus the raw bytes for writing back.
#[derive(Clone, Debug)]
pub struct Superblock {
    pub raw: Vec<u8>,
    pub inodes_count: u32,
    pub blocks_count: u64,
    pub r_blocks_count: u64,
    pub free_blocks_count: u64,
    pub free_inodes_count: u32,
    pub first_data_block: u32,
    pub log_block_size: u32,
    pub log_cluster_size: u32,
    pub blocks_per_group: u32,
    pub clusters_per_group: u32,
    pub inodes_per_group: u32,
    pub state: u16,
    pub errors: u16,
    pub rev_level: u32,
    pub first_ino: u32,
    pub inode_size: u16,
    pub feature_compat: u32,
    pub feature_incompat: u32,
    pub feature_ro_compat: u32,
    pub uuid: [u8; 16],
    pub journal_inum: u32,
    pub last_orphan: u32,
    pub hash_seed: [u32; 4],
    pub def_hash_version: u8,
    pub desc_size: u16,
    pub first_meta_bg: u32,
    pub min_extra_isize: u16,
    pub flags: u32,
    pub log_groups_per_flex: u8,
    pub checksum_type: u8,
    pub checksum_seed: u32,
    pub checksum: u32,
}

/// `s_flags`: the directory hash is signed / unsigned char.
pub const FLAGS_SIGNED_HASH: u32 = 0x1;
pub const FLAGS_UNSIGNED_HASH: u32 = 0x2;

impl Superblock {
    /// Decode and sanity-check a superblock. The error names the field that is wrong.
    pub fn parse(raw: &[u8]) -> Result<Superblock, String> {
        if raw.len() < SUPERBLOCK_SIZE {
            return Err("superblock is truncated".into());
        }
        let b = &raw[..SUPERBLOCK_SIZE];
        let magic = u16_at(b, 0x38);
        if magic != EXT4_MAGIC {
            return Err(format!(
                "bad superblock magic 0x{magic:04x} (not an ext2/3/4 file system)"
            ));
        }
        let incompat = u32_at(b, 0x60);
        let is64 = incompat & incompat::BIT64 != 0;
        let hi = |off: usize| {
            if is64 {
                (u32_at(b, off) as u64) << 32
            } else {
                0
            }
        };
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[0x68..0x78]);
        let rev_level = u32_at(b, 0x4C);
        let sb = Superblock {
            raw: b.to_vec(),
            inodes_count: u32_at(b, 0x0),
            blocks_count: u32_at(b, 0x4) as u64 | hi(0x150),
            r_blocks_count: u32_at(b, 0x8) as u64 | hi(0x154),
            free_blocks_count: u32_at(b, 0xC) as u64 | hi(0x158),
            free_inodes_count: u32_at(b, 0x10),
            first_data_block: u32_at(b, 0x14),
            log_block_size: u32_at(b, 0x18),
            log_cluster_size: u32_at(b, 0x1C),
            blocks_per_group: u32_at(b, 0x20),
            clusters_per_group: u32_at(b, 0x24),
            inodes_per_group: u32_at(b, 0x28),
            state: u16_at(b, 0x3A),
            errors: u16_at(b, 0x3C),
            rev_level,
            first_ino: if rev_level == 0 { 11 } else { u32_at(b, 0x54) },
            inode_size: if rev_level == 0 { 128 } else { u16_at(b, 0x58) },
            feature_compat: u32_at(b, 0x5C),
            feature_incompat: incompat,
            feature_ro_compat: u32_at(b, 0x64),
            uuid,
            journal_inum: u32_at(b, 0xE0),
            last_orphan: u32_at(b, 0xE8),
            hash_seed: [
                u32_at(b, 0xEC),
                u32_at(b, 0xF0),
                u32_at(b, 0xF4),
                u32_at(b, 0xF8),
            ],
            def_hash_version: b[0xFC],
            desc_size: if is64 { u16_at(b, 0xFE) } else { 32 },
            first_meta_bg: u32_at(b, 0x104),
            min_extra_isize: u16_at(b, 0x15C),
            flags: u32_at(b, 0x160),
            log_groups_per_flex: b[0x174],
            checksum_type: b[0x175],
            checksum_seed: u32_at(b, 0x270),
            checksum: u32_at(b, 0x3FC),
        };
        sb.validate()?;
        Ok(sb)
    }

    fn validate(&self) -> Result<(), String> {
        if self.log_block_size > 6 {
            return Err(format!(
                "impossible block size (s_log_block_size {})",
                self.log_block_size
            ));
        }
        let bs = self.block_size() as u64;
        if self.blocks_per_group == 0 || self.blocks_per_group as u64 > bs * 8 {
            return Err(format!(
                "impossible s_blocks_per_group {}",
                self.blocks_per_group
            ));
        }
        if self.inodes_per_group == 0 || self.inodes_per_group as u64 > bs * 8 {
            return Err(format!(
                "impossible s_inodes_per_group {}",
                self.inodes_per_group
            ));
        }
        let isz = self.inode_size as u64;
        if isz < 128 || isz > bs || !isz.is_power_of_two() {
            return Err(format!("impossible s_inode_size {}", self.inode_size));
        }
        if self.blocks_count == 0 || self.first_data_block as u64 >= self.blocks_count {
            return Err(format!(
                "impossible block count {} (first data block {})",
                self.blocks_count, self.first_data_block
            ));
        }
        if self.feature_incompat & incompat::BIT64 != 0
            && (self.desc_size < 64 || self.desc_size > 1024 || !self.desc_size.is_power_of_two())
        {
            return Err(format!("impossible s_desc_size {}", self.desc_size));
        }
        let groups = self.group_count() as u64;
        if groups * self.inodes_per_group as u64 != self.inodes_count as u64 {
            return Err(format!(
                "inode count {} does not match {} groups of {} inodes",
                self.inodes_count, groups, self.inodes_per_group
            ));
        }
        if self.first_ino < 11 || self.first_ino > self.inodes_count {
            return Err(format!("impossible s_first_ino {}", self.first_ino));
        }
        if self.has_ro_compat(ro_compat::METADATA_CSUM) && self.checksum_type != 1 {
            return Err(format!("unknown checksum type {}", self.checksum_type));
        }
        Ok(())
    }

    pub fn block_size(&self) -> u32 {
        1024 << self.log_block_size
    }

    pub fn group_count(&self) -> u32 {
        let data = self.blocks_count - self.first_data_block as u64;
        data.div_ceil(self.blocks_per_group as u64) as u32
    }

    pub fn has_incompat(&self, f: u32) -> bool {
        self.feature_incompat & f != 0
    }

    pub fn has_ro_compat(&self, f: u32) -> bool {
        self.feature_ro_compat & f != 0
    }

    pub fn has_compat(&self, f: u32) -> bool {
        self.feature_compat & f != 0
    }

    pub fn has_metadata_csum(&self) -> bool {
        self.has_ro_compat(ro_compat::METADATA_CSUM)
    }

    /// The seed every metadata checksum starts from.
    pub fn csum_seed(&self) -> u32 {
        if self.has_incompat(incompat::CSUM_SEED) {
            self.checksum_seed
        } else {
            crc32c_raw(!0, &self.uuid)
        }
    }

    pub fn compute_checksum(raw: &[u8]) -> u32 {
        crc32c_raw(!0, &raw[..0x3FC])
    }

    /// True when the stored checksum matches (or the image has no metadata_csum).
    pub fn checksum_ok(&self) -> bool {
        !self.has_metadata_csum() || Self::compute_checksum(&self.raw) == self.checksum
    }

    /// Refresh the checksum of a raw superblock before it is written.
    pub fn set_checksum(raw: &mut [u8]) {
        let c = Self::compute_checksum(raw);
        put_u32(raw, 0x3FC, c);
    }

    /// Hash version for directory indexes, with the unsigned variants applied per `s_flags`.
    pub fn effective_hash_version(&self, on_disk: u8) -> u8 {
        if on_disk <= 2 && self.flags & FLAGS_UNSIGNED_HASH != 0 {
            on_disk + 3
        } else {
            on_disk
        }
    }

    /// Blocks reserved in the first group for the superblock and descriptors; used by statfs.
    pub fn kbytes_written(&self) -> u64 {
        u64_at(&self.raw, 0x178)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> Vec<u8> {
        let mut b = vec![0u8; SUPERBLOCK_SIZE];
        b[0x38..0x3A].copy_from_slice(&EXT4_MAGIC.to_le_bytes());
        put_u32(&mut b, 0x0, 2048); // inodes
        put_u32(&mut b, 0x4, 8192); // blocks
        put_u32(&mut b, 0x18, 2); // 4 KiB
        put_u32(&mut b, 0x20, 32768);
        put_u32(&mut b, 0x28, 2048);
        put_u32(&mut b, 0x4C, 1);
        put_u32(&mut b, 0x54, 11);
        b[0x58..0x5A].copy_from_slice(&256u16.to_le_bytes());
        b
    }

    #[test]
    fn parses_minimal() {
        let sb = Superblock::parse(&minimal()).unwrap();
        assert_eq!(sb.block_size(), 4096);
        assert_eq!(sb.group_count(), 1);
    }

    #[test]
    fn rejects_bad_fields() {
        let mut b = minimal();
        b[0x38] = 0;
        assert!(Superblock::parse(&b).unwrap_err().contains("magic"));
        let mut b = minimal();
        put_u32(&mut b, 0x18, 40);
        assert!(Superblock::parse(&b).is_err());
        let mut b = minimal();
        put_u32(&mut b, 0x28, 0);
        assert!(Superblock::parse(&b).is_err());
        assert!(Superblock::parse(&b[..100]).is_err());
    }

    #[test]
    fn names_features() {
        let s = feature_names(incompat::CASEFOLD | 0x8000_0000, incompat::NAMES);
        assert_eq!(s, "casefold, unknown bit 0x80000000");
    }
}
