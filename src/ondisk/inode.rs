//! The on-disk inode (128 bytes plus `i_extra_isize` extra bytes) and its checksum.

use super::csum::crc32c_raw;
use super::le::{put_u16, put_u32, u16_at, u32_at};

pub const S_IFMT: u32 = 0o170000;
pub const S_IFSOCK: u32 = 0o140000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFBLK: u32 = 0o060000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFIFO: u32 = 0o010000;

/// `i_flags`
pub mod flags {
    pub const INDEX: u32 = 0x1000;
    pub const HUGE_FILE: u32 = 0x40000;
    pub const EXTENTS: u32 = 0x80000;
    pub const EA_INODE: u32 = 0x200000;
    pub const INLINE_DATA: u32 = 0x10000000;
    /// EXT4_DAX_FL: map the file's data directly (for us: through a virtiofs DAX window).
    pub const DAX: u32 = 0x02000000;
    pub const ENCRYPT: u32 = 0x800;
    pub const CASEFOLD: u32 = 0x40000000;
    pub const VERITY: u32 = 0x100000;
}

/// Size of `i_block`: 15 little-endian words.
pub const I_BLOCK_LEN: usize = 60;
const CSUM_LO: usize = 0x7C;
const CSUM_HI: usize = 0x82;
const GOOD_OLD_SIZE: usize = 128;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime: (i64, u32),
    pub ctime: (i64, u32),
    pub mtime: (i64, u32),
    pub crtime: (i64, u32),
    pub dtime: u32,
    pub links_count: u16,
    /// Raw `i_blocks` (lo | hi << 32), in the unit `HUGE_FILE` selects.
    pub blocks_raw: u64,
    pub flags: u32,
    pub block: [u8; I_BLOCK_LEN],
    pub generation: u32,
    pub file_acl: u64,
    pub extra_isize: u16,
    pub projid: u32,
    /// The raw bytes this inode was decoded from (inode_size long), for xattrs in the body.
    pub raw: Vec<u8>,
}

/// Decode a timestamp: 32-bit signed seconds plus an extra word carrying two epoch bits and the
/// nanoseconds in its upper 30 bits.
fn decode_time(secs: u32, extra: Option<u32>) -> (i64, u32) {
    let base = secs as i32 as i64;
    match extra {
        Some(x) => (base + (((x & 3) as i64) << 32), x >> 2),
        None => (base, 0),
    }
}

impl Default for Inode {
    fn default() -> Inode {
        Inode {
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            atime: (0, 0),
            ctime: (0, 0),
            mtime: (0, 0),
            crtime: (0, 0),
            dtime: 0,
            links_count: 0,
            blocks_raw: 0,
            flags: 0,
            block: [0; I_BLOCK_LEN],
            generation: 0,
            file_acl: 0,
            extra_isize: 0,
            projid: 0,
            raw: Vec::new(),
        }
    }
}

impl Inode {
    /// Decode an inode from `raw` (`s_inode_size` bytes). The error names the broken field.
    pub fn parse(raw: &[u8]) -> Result<Inode, String> {
        if raw.len() < GOOD_OLD_SIZE {
            return Err("inode record shorter than 128 bytes".into());
        }
        let extra_isize = if raw.len() > GOOD_OLD_SIZE {
            u16_at(raw, 0x80)
        } else {
            0
        };
        if raw.len() > GOOD_OLD_SIZE
            && (GOOD_OLD_SIZE + extra_isize as usize > raw.len() || extra_isize % 4 != 0)
        {
            return Err(format!("impossible i_extra_isize {extra_isize}"));
        }
        let has = |field_end: usize| GOOD_OLD_SIZE + extra_isize as usize >= field_end;
        let extra = |off: usize| {
            if has(off + 4) {
                Some(u32_at(raw, off))
            } else {
                None
            }
        };
        let mut block = [0u8; I_BLOCK_LEN];
        block.copy_from_slice(&raw[0x28..0x28 + I_BLOCK_LEN]);
        Ok(Inode {
            mode: u16_at(raw, 0x0),
            uid: u16_at(raw, 0x2) as u32 | (u16_at(raw, 0x78) as u32) << 16,
            gid: u16_at(raw, 0x18) as u32 | (u16_at(raw, 0x7A) as u32) << 16,
            size: u32_at(raw, 0x4) as u64 | (u32_at(raw, 0x6C) as u64) << 32,
            atime: decode_time(u32_at(raw, 0x8), extra(0x8C)),
            ctime: decode_time(u32_at(raw, 0xC), extra(0x84)),
            mtime: decode_time(u32_at(raw, 0x10), extra(0x88)),
            crtime: match extra(0x90) {
                Some(s) => decode_time(s, extra(0x94)),
                None => (0, 0),
            },
            dtime: u32_at(raw, 0x14),
            links_count: u16_at(raw, 0x1A),
            blocks_raw: u32_at(raw, 0x1C) as u64 | (u16_at(raw, 0x74) as u64) << 32,
            flags: u32_at(raw, 0x20),
            block,
            generation: u32_at(raw, 0x64),
            file_acl: u32_at(raw, 0x68) as u64 | (u16_at(raw, 0x76) as u64) << 32,
            extra_isize,
            projid: extra(0x9C).unwrap_or(0),
            raw: raw.to_vec(),
        })
    }

    pub fn file_type(&self) -> u32 {
        self.mode as u32 & S_IFMT
    }

    pub fn is_dir(&self) -> bool {
        self.file_type() == S_IFDIR
    }

    pub fn is_reg(&self) -> bool {
        self.file_type() == S_IFREG
    }

    pub fn is_symlink(&self) -> bool {
        self.file_type() == S_IFLNK
    }

    pub fn has_flag(&self, f: u32) -> bool {
        self.flags & f != 0
    }

    /// `i_block` as 15 little-endian words.
    pub fn block_word(&self, i: usize) -> u32 {
        u32_at(&self.block, i * 4)
    }

    /// The in-inode extended attribute area (after the extra fields), if any.
    pub fn ibody_xattr_region(&self) -> &[u8] {
        let start = GOOD_OLD_SIZE + self.extra_isize as usize;
        if self.raw.len() > GOOD_OLD_SIZE && start + 4 <= self.raw.len() {
            &self.raw[start..]
        } else {
            &[]
        }
    }

    /// `st_blocks` (512-byte units).
    pub fn blocks_512(&self, huge_file_fs: bool, block_size: u32) -> u64 {
        if huge_file_fs && self.has_flag(flags::HUGE_FILE) {
            self.blocks_raw * (block_size as u64 / 512)
        } else {
            self.blocks_raw
        }
    }

    /// Device number stored in `i_block` for char/block nodes, in `new_encode_dev` form.
    pub fn rdev(&self) -> u32 {
        let old = self.block_word(0);
        if old != 0 {
            // old_decode_dev: 8-bit major, 8-bit minor.
            let major = (old >> 8) & 0xFF;
            let minor = old & 0xFF;
            return encode_dev(major, minor);
        }
        let new = self.block_word(1);
        let major = (new & 0xFFF00) >> 8;
        let minor = (new & 0xFF) | ((new >> 12) & 0xFFF00);
        encode_dev(major, minor)
    }
}

/// Encode a timestamp into (seconds word, extra word with epoch bits and nanoseconds).
pub fn encode_time(t: (i64, u32)) -> (u32, u32) {
    let lo = t.0 as u32;
    let epoch = ((t.0 - lo as i32 as i64) >> 32) as u32 & 3;
    (lo, epoch | (t.1.min(999_999_999) << 2))
}

impl Inode {
    /// Write every field this struct holds into `raw` (an inode record of `s_inode_size` bytes);
    /// bytes it does not model (in-inode xattrs, reserved fields) are kept. The checksum is not
    /// updated: call `set_inode_checksum` afterwards.
    pub fn write_into(&self, raw: &mut [u8]) {
        let rawlen = raw.len();
        let has = |field_end: usize| {
            rawlen > GOOD_OLD_SIZE && GOOD_OLD_SIZE + self.extra_isize as usize >= field_end
        };
        put_u16(raw, 0x0, self.mode);
        put_u16(raw, 0x2, self.uid as u16);
        put_u32(raw, 0x4, self.size as u32);
        let (a, ax) = encode_time(self.atime);
        let (c, cx) = encode_time(self.ctime);
        let (m, mx) = encode_time(self.mtime);
        put_u32(raw, 0x8, a);
        put_u32(raw, 0xC, c);
        put_u32(raw, 0x10, m);
        put_u32(raw, 0x14, self.dtime);
        put_u16(raw, 0x18, self.gid as u16);
        put_u16(raw, 0x1A, self.links_count);
        put_u32(raw, 0x1C, self.blocks_raw as u32);
        put_u32(raw, 0x20, self.flags);
        raw[0x28..0x28 + I_BLOCK_LEN].copy_from_slice(&self.block);
        put_u32(raw, 0x64, self.generation);
        put_u32(raw, 0x68, self.file_acl as u32);
        put_u32(raw, 0x6C, (self.size >> 32) as u32);
        put_u16(raw, 0x74, (self.blocks_raw >> 32) as u16);
        put_u16(raw, 0x76, (self.file_acl >> 32) as u16);
        put_u16(raw, 0x78, (self.uid >> 16) as u16);
        put_u16(raw, 0x7A, (self.gid >> 16) as u16);
        if raw.len() > GOOD_OLD_SIZE {
            put_u16(raw, 0x80, self.extra_isize);
        }
        if has(0x88) {
            put_u32(raw, 0x84, cx);
        }
        if has(0x8C) {
            put_u32(raw, 0x88, mx);
        }
        if has(0x90) {
            put_u32(raw, 0x8C, ax);
        }
        if has(0x98) {
            let (r, rx) = encode_time(self.crtime);
            put_u32(raw, 0x90, r);
            put_u32(raw, 0x94, rx);
        }
        if has(0xA0) {
            put_u32(raw, 0x9C, self.projid);
        }
    }
}

/// The Linux `new_encode_dev` layout, which is what `st_rdev` carries over FUSE.
pub fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xFF) | (major << 8) | ((minor & !0xFF) << 12)
}

/// Seed for an inode's per-object checksums (extent blocks, directory blocks, its own checksum).
pub fn inode_csum_seed(fs_seed: u32, ino: u32, generation: u32) -> u32 {
    let c = crc32c_raw(fs_seed, &ino.to_le_bytes());
    crc32c_raw(c, &generation.to_le_bytes())
}

/// The checksum of a raw inode record; 16 bits for 128-byte inodes, 32 otherwise.
pub fn inode_checksum(inode_seed: u32, raw: &[u8]) -> u32 {
    let extra_isize = if raw.len() > GOOD_OLD_SIZE {
        u16_at(raw, 0x80) as usize
    } else {
        0
    };
    let has_hi = raw.len() > GOOD_OLD_SIZE && extra_isize >= 4;
    let mut c = crc32c_raw(inode_seed, &raw[..CSUM_LO]);
    c = crc32c_raw(c, &[0, 0]);
    c = crc32c_raw(c, &raw[CSUM_LO + 2..GOOD_OLD_SIZE]);
    if raw.len() > GOOD_OLD_SIZE {
        c = crc32c_raw(c, &raw[GOOD_OLD_SIZE..CSUM_HI]);
        if has_hi {
            c = crc32c_raw(c, &[0, 0]);
            c = crc32c_raw(c, &raw[CSUM_HI + 2..]);
        } else {
            c = crc32c_raw(c, &raw[CSUM_HI..]);
        }
    }
    if has_hi { c } else { c & 0xFFFF }
}

/// The checksum stored in a raw inode record.
pub fn stored_inode_checksum(raw: &[u8]) -> u32 {
    let lo = u16_at(raw, CSUM_LO) as u32;
    let extra_isize = if raw.len() > GOOD_OLD_SIZE {
        u16_at(raw, 0x80)
    } else {
        0
    };
    if raw.len() > GOOD_OLD_SIZE && extra_isize >= 4 {
        lo | (u16_at(raw, CSUM_HI) as u32) << 16
    } else {
        lo
    }
}

pub fn set_inode_checksum(inode_seed: u32, raw: &mut [u8]) {
    let c = inode_checksum(inode_seed, raw);
    put_u16(raw, CSUM_LO, c as u16);
    let extra_isize = if raw.len() > GOOD_OLD_SIZE {
        u16_at(raw, 0x80)
    } else {
        0
    };
    if raw.len() > GOOD_OLD_SIZE && extra_isize >= 4 {
        put_u16(raw, CSUM_HI, (c >> 16) as u16);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_decode_epoch_and_nanoseconds() {
        assert_eq!(decode_time(0xFFFF_FFFF, None), (-1, 0));
        assert_eq!(
            decode_time(0xFFFF_FFFF, Some(1 | (5 << 2))),
            ((1i64 << 32) - 1, 5)
        );
        assert_eq!(decode_time(100, Some(999_999_999 << 2)), (100, 999_999_999));
    }

    #[test]
    fn write_into_round_trips() {
        let mut raw = vec![0u8; 256];
        raw[0x80] = 32;
        let mut i = Inode::parse(&raw).unwrap();
        i.mode = 0o100644;
        i.uid = 0x12345;
        i.gid = 0x23456;
        i.size = 0x1_2345_6789;
        i.atime = (-5, 7);
        i.mtime = ((1i64 << 32) + 9, 999_999_999);
        i.ctime = (1_700_000_000, 1);
        i.crtime = (1_600_000_000, 2);
        i.links_count = 3;
        i.blocks_raw = 0x1_0000_0008;
        i.flags = flags::EXTENTS;
        i.block[7] = 9;
        i.generation = 77;
        i.file_acl = 0x1_0000_0001;
        i.projid = 5;
        i.write_into(&mut raw);
        let mut back = Inode::parse(&raw).unwrap();
        back.raw = i.raw.clone();
        assert_eq!(back, i);
    }

    #[test]
    fn checksum_round_trip() {
        let mut raw = vec![0u8; 256];
        raw[0x80] = 32;
        raw[0] = 0xA4;
        raw[1] = 0x81;
        set_inode_checksum(0xABCD, &mut raw);
        assert_eq!(stored_inode_checksum(&raw), inode_checksum(0xABCD, &raw));
        raw[5] ^= 1;
        assert_ne!(stored_inode_checksum(&raw), inode_checksum(0xABCD, &raw));
    }

    #[test]
    fn rejects_bad_extra_isize() {
        let mut raw = vec![0u8; 256];
        raw[0x80] = 200;
        assert!(Inode::parse(&raw).is_err());
        assert!(Inode::parse(&raw[..64]).is_err());
    }

    #[test]
    fn device_numbers() {
        let mut i = Inode::default();
        i.block[0..4].copy_from_slice(&((8u32 << 8) | 1).to_le_bytes());
        assert_eq!(i.rdev(), encode_dev(8, 1));
        let mut i = Inode::default();
        let (ma, mi) = (300u32, 70000u32);
        let new = (mi & 0xff) | (ma << 8) | ((mi & !0xff) << 12);
        i.block[4..8].copy_from_slice(&new.to_le_bytes());
        assert_eq!(i.rdev(), encode_dev(ma, mi));
    }
}
