//! The jbd2 journal format: every block the log holds, parsed and built.
//!
//! Unlike the rest of ext4, jbd2 stores every field **big-endian**. A journal is a ring of
//! `s_maxlen` blocks; block 0 (of the journal) is the journal superblock, the log proper runs
//! from `s_first` to `s_maxlen` (or to `s_maxlen - fast-commit blocks` when the journal has the
//! FAST_COMMIT feature, the fast-commit area taking the tail). Every log block starts with a
//! 12-byte header (magic 0xC03B3998, block type, transaction id):
//!
//! * **descriptor** (type 1): an array of block tags naming where the data blocks that follow it
//!   in the log belong. The first tag of a descriptor is followed by the 16-byte journal UUID;
//!   later tags carry SAME_UUID instead. The last tag has LAST_TAG. With csum v2/v3 the block
//!   ends in a 4-byte tail checksum. Tag layout depends on the features (see
//!   [`JournalFormat::tag_bytes`]): csum v3 uses 16-byte tags with a 32-bit data checksum, the
//!   classic tag is 8 bytes (+4 for the high half of the block number with 64BIT, +2 for the
//!   16-bit data checksum with csum v2). A data block whose first four bytes equal the magic is
//!   logged with them zeroed and its tag marked ESCAPE.
//! * **commit** (type 2): ends a transaction; holds the v1 transaction checksum (crc32_be over
//!   the descriptors and data blocks) or, with csum v2/v3, the crc32c of the whole commit block,
//!   and the commit time.
//! * **revoke** (type 5): `r_count` (bytes used, header included) then 4- or 8-byte (64BIT)
//!   block numbers that must not be replayed from this or earlier transactions.
//!
//! Checksums (csum v2/v3) are the kernel's raw crc32c seeded with `crc32c(~0, s_uuid)`; the
//! superblock's own checksum is seeded with `~0`. Parsers here never panic on arbitrary bytes;
//! builders produce exactly what the kernel's commit code writes, so the kernel and e2fsck replay
//! our log. No I/O here.

use super::csum::crc32c_raw;
use super::superblock::feature_names;
use std::borrow::Cow;
use std::ops::Range;

/// `JBD2_MAGIC_NUMBER`, the first four bytes of every journal metadata block.
pub const JBD2_MAGIC: u32 = 0xC03B_3998;
/// Size of the common block header.
pub const HEADER_SIZE: usize = 12;
/// Size of the journal superblock structure.
pub const SUPERBLOCK_SIZE: usize = 1024;
/// Size of the checksum tail of descriptor and revoke blocks (csum v2/v3).
pub const TAIL_SIZE: usize = 4;
/// Size of a revoke block header (block header + `r_count`).
pub const REVOKE_HEADER_SIZE: usize = 16;
/// `sizeof(struct commit_header)` on 64-bit kernels (60 bytes of fields, padded to 64).
pub const COMMIT_HEADER_SIZE: usize = 64;
/// Size of the UUID stored after a tag without SAME_UUID.
pub const UUID_SIZE: usize = 16;
/// Number of 32-bit checksum slots in a commit block.
pub const COMMIT_CHECKSUM_SLOTS: usize = 8;
/// Fast-commit blocks a FAST_COMMIT journal reserves when `s_num_fc_blks` is zero.
pub const DEFAULT_FAST_COMMIT_BLOCKS: u32 = 256;
/// The smallest log (without the fast-commit area) the kernel accepts.
pub const MIN_JOURNAL_BLOCKS: u32 = 1024;

/// Journal block types (`h_blocktype`).
pub mod blocktype {
    pub const DESCRIPTOR: u32 = 1;
    pub const COMMIT: u32 = 2;
    pub const SUPERBLOCK_V1: u32 = 3;
    pub const SUPERBLOCK_V2: u32 = 4;
    pub const REVOKE: u32 = 5;
}

/// Journal feature flags (meaningful in a v2 superblock only).
pub mod feature {
    /// v1 checksums: a crc32 of the transaction in the commit block.
    pub const COMPAT_CHECKSUM: u32 = 0x1;
    pub const INCOMPAT_REVOKE: u32 = 0x1;
    pub const INCOMPAT_64BIT: u32 = 0x2;
    pub const INCOMPAT_ASYNC_COMMIT: u32 = 0x4;
    pub const INCOMPAT_CSUM_V2: u32 = 0x8;
    pub const INCOMPAT_CSUM_V3: u32 = 0x10;
    pub const INCOMPAT_FAST_COMMIT: u32 = 0x20;

    pub const KNOWN_COMPAT: u32 = COMPAT_CHECKSUM;
    pub const KNOWN_RO_COMPAT: u32 = 0;
    pub const KNOWN_INCOMPAT: u32 = INCOMPAT_REVOKE
        | INCOMPAT_64BIT
        | INCOMPAT_ASYNC_COMMIT
        | INCOMPAT_CSUM_V2
        | INCOMPAT_CSUM_V3
        | INCOMPAT_FAST_COMMIT;

    /// Names as e2fsprogs prints them.
    pub const COMPAT_NAMES: &[(u32, &str)] = &[(COMPAT_CHECKSUM, "journal_checksum")];
    pub const INCOMPAT_NAMES: &[(u32, &str)] = &[
        (INCOMPAT_REVOKE, "journal_incompat_revoke"),
        (INCOMPAT_64BIT, "journal_64bit"),
        (INCOMPAT_ASYNC_COMMIT, "journal_async_commit"),
        (INCOMPAT_CSUM_V2, "journal_checksum_v2"),
        (INCOMPAT_CSUM_V3, "journal_checksum_v3"),
        (INCOMPAT_FAST_COMMIT, "journal_fast_commit"),
    ];
    pub const RO_COMPAT_NAMES: &[(u32, &str)] = &[];
}

/// Descriptor tag flags (`t_flags`).
pub mod tag_flag {
    /// The logged copy had its first four bytes (the magic) zeroed.
    pub const ESCAPE: u32 = 0x1;
    /// No UUID follows this tag.
    pub const SAME_UUID: u32 = 0x2;
    /// Block deleted by this transaction (never written by Linux).
    pub const DELETED: u32 = 0x4;
    /// Last tag of this descriptor block.
    pub const LAST_TAG: u32 = 0x8;
}

/// Checksum algorithms (`s_checksum_type`, `h_chksum_type`).
pub mod checksum_type {
    pub const CRC32: u8 = 1;
    pub const MD5: u8 = 2;
    pub const SHA1: u8 = 3;
    pub const CRC32C: u8 = 4;
}

/// Size of the v1 (crc32) commit checksum.
pub const CRC32_CHECKSUM_SIZE: u8 = 4;

/// Human-readable names of a feature set (e2fsprogs spelling, unknown bits in hex).
pub fn feature_set_names(compat: u32, incompat: u32, ro_compat: u32) -> String {
    let parts = [
        feature_names(compat, feature::COMPAT_NAMES),
        feature_names(incompat, feature::INCOMPAT_NAMES),
        feature_names(ro_compat, feature::RO_COMPAT_NAMES),
    ];
    let parts: Vec<String> = parts.into_iter().filter(|s| !s.is_empty()).collect();
    if parts.is_empty() {
        "(none)".to_string()
    } else {
        parts.join(", ")
    }
}

// ---------------------------------------------------------------------------------------------
// Big-endian field access. Callers check lengths first; `get_*` return None on short slices.

fn get_be16(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

fn get_be32(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn get_be64(b: &[u8], off: usize) -> Option<u64> {
    let s = b.get(off..off.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_be_bytes(a))
}

fn be32(b: &[u8], off: usize) -> u32 {
    get_be32(b, off).unwrap_or(0)
}

fn put_be16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_be_bytes());
}

fn put_be32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}

fn put_be64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_be_bytes());
}

/// True when `a` is later than `b` in transaction-id order (ids wrap around at 2^32).
pub fn tid_gt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// True when `a` is `b` or later in transaction-id order.
pub fn tid_geq(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}

/// The kernel's `crc32_be`: CRC-32 (poly 0x04C11DB7) MSB-first, no inversions. jbd2's v1
/// transaction checksum (COMPAT_CHECKSUM) chains it from `~0` over descriptors and data blocks.
pub fn crc32_be(mut crc: u32, data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = (i as u32) << 24;
            for _ in 0..8 {
                c = if c & 0x8000_0000 != 0 {
                    (c << 1) ^ 0x04C1_1DB7
                } else {
                    c << 1
                };
            }
            *e = c;
        }
        t
    });
    for &b in data {
        crc = (crc << 8) ^ table[((crc >> 24) as u8 ^ b) as usize];
    }
    crc
}

// ---------------------------------------------------------------------------------------------
// Block header

/// The 12-byte header every journal metadata block starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockHeader {
    pub magic: u32,
    pub blocktype: u32,
    pub sequence: u32,
}

impl BlockHeader {
    pub fn new(blocktype: u32, sequence: u32) -> BlockHeader {
        BlockHeader {
            magic: JBD2_MAGIC,
            blocktype,
            sequence,
        }
    }

    /// Decode the header; None when the buffer is shorter than a header.
    pub fn parse(b: &[u8]) -> Option<BlockHeader> {
        Some(BlockHeader {
            magic: get_be32(b, 0)?,
            blocktype: get_be32(b, 4)?,
            sequence: get_be32(b, 8)?,
        })
    }

    /// Decode the header of a block that must be a jbd2 block: None without the magic.
    pub fn parse_jbd2(b: &[u8]) -> Option<BlockHeader> {
        BlockHeader::parse(b).filter(|h| h.magic == JBD2_MAGIC)
    }

    pub fn write(&self, b: &mut [u8]) {
        put_be32(b, 0, self.magic);
        put_be32(b, 4, self.blocktype);
        put_be32(b, 8, self.sequence);
    }
}

// ---------------------------------------------------------------------------------------------
// Journal format: the features that shape every log block

/// What a log block's layout depends on: block size, features and the checksum seed (the
/// kernel's `journal_t` fields the format reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalFormat {
    pub block_size: usize,
    pub compat: u32,
    pub incompat: u32,
    pub uuid: [u8; 16],
    /// `j_csum_seed = crc32c(~0, s_uuid)`.
    pub csum_seed: u32,
}

impl JournalFormat {
    pub fn new(block_size: usize, compat: u32, incompat: u32, uuid: [u8; 16]) -> JournalFormat {
        JournalFormat {
            block_size,
            compat,
            incompat,
            uuid,
            csum_seed: csum_seed(&uuid),
        }
    }

    pub fn csum_v2(&self) -> bool {
        self.incompat & feature::INCOMPAT_CSUM_V2 != 0
    }

    pub fn csum_v3(&self) -> bool {
        self.incompat & feature::INCOMPAT_CSUM_V3 != 0
    }

    /// Metadata blocks carry crc32c checksums (csum v2 or v3).
    pub fn csum_v2or3(&self) -> bool {
        self.csum_v2() || self.csum_v3()
    }

    /// v1 transaction checksums in the commit block.
    pub fn compat_checksum(&self) -> bool {
        self.compat & feature::COMPAT_CHECKSUM != 0
    }

    pub fn is_64bit(&self) -> bool {
        self.incompat & feature::INCOMPAT_64BIT != 0
    }

    pub fn async_commit(&self) -> bool {
        self.incompat & feature::INCOMPAT_ASYNC_COMMIT != 0
    }

    pub fn fast_commit(&self) -> bool {
        self.incompat & feature::INCOMPAT_FAST_COMMIT != 0
    }

    /// The kernel's `journal_tag_bytes()`: 16 with csum v3; otherwise 12 (block number, 16-bit
    /// checksum, 16-bit flags, high block number) + 2 with csum v2, minus 4 without 64BIT.
    pub fn tag_bytes(&self) -> usize {
        if self.csum_v3() {
            return 16;
        }
        let mut sz = 12;
        if self.csum_v2() {
            sz += 2;
        }
        if self.is_64bit() { sz } else { sz - 4 }
    }

    /// Bytes at the end of descriptor and revoke blocks reserved for their checksum.
    pub fn tail_size(&self) -> usize {
        if self.csum_v2or3() { TAIL_SIZE } else { 0 }
    }

    /// Bytes per revoke record.
    pub fn revoke_record_size(&self) -> usize {
        if self.is_64bit() { 8 } else { 4 }
    }

    /// Largest block number a tag or revoke record can hold.
    pub fn max_block(&self) -> u64 {
        if self.is_64bit() {
            u64::MAX
        } else {
            u32::MAX as u64
        }
    }
}

/// `j_csum_seed`: crc32c of the journal UUID from `~0`.
pub fn csum_seed(uuid: &[u8; 16]) -> u32 {
    crc32c_raw(!0, uuid)
}

// ---------------------------------------------------------------------------------------------
// Journal superblock

mod sb_off {
    pub const BLOCKSIZE: usize = 0x0C;
    pub const MAXLEN: usize = 0x10;
    pub const FIRST: usize = 0x14;
    pub const SEQUENCE: usize = 0x18;
    pub const START: usize = 0x1C;
    pub const ERRNO: usize = 0x20;
    pub const FEATURE_COMPAT: usize = 0x24;
    pub const FEATURE_INCOMPAT: usize = 0x28;
    pub const FEATURE_RO_COMPAT: usize = 0x2C;
    pub const UUID: usize = 0x30;
    pub const NR_USERS: usize = 0x40;
    pub const DYNSUPER: usize = 0x44;
    pub const MAX_TRANSACTION: usize = 0x48;
    pub const MAX_TRANS_DATA: usize = 0x4C;
    pub const CHECKSUM_TYPE: usize = 0x50;
    pub const NUM_FC_BLKS: usize = 0x54;
    pub const HEAD: usize = 0x58;
    pub const CHECKSUM: usize = 0xFC;
    pub const USERS: usize = 0x100;
}

/// `journal_superblock_t`, every field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalSuperblock {
    /// `h_blocktype`: [`blocktype::SUPERBLOCK_V1`] or [`blocktype::SUPERBLOCK_V2`].
    pub blocktype: u32,
    /// `h_sequence` of the header (unused by Linux).
    pub header_sequence: u32,
    /// `s_blocksize`.
    pub block_size: u32,
    /// `s_maxlen`: blocks in the journal, superblock included.
    pub maxlen: u32,
    /// `s_first`: first block of the log.
    pub first: u32,
    /// `s_sequence`: first transaction expected in the log.
    pub sequence: u32,
    /// `s_start`: journal block where the log starts; 0 when the journal is empty.
    pub start: u32,
    /// `s_errno`: the (negative) error the journal was aborted with, or 0.
    pub errno: i32,
    pub feature_compat: u32,
    pub feature_incompat: u32,
    pub feature_ro_compat: u32,
    pub uuid: [u8; 16],
    pub nr_users: u32,
    pub dynsuper: u32,
    pub max_transaction: u32,
    pub max_trans_data: u32,
    pub checksum_type: u8,
    /// `s_num_fc_blks` (0 means the default, [`DEFAULT_FAST_COMMIT_BLOCKS`]).
    pub num_fc_blks: u32,
    /// `s_head`: log head, meaningful only while the journal is clean.
    pub head: u32,
    /// `s_checksum` as stored.
    pub checksum: u32,
    /// `s_users`: ids of the file systems sharing the journal.
    pub users: [u8; 16 * 48],
}

impl JournalSuperblock {
    /// A fresh v2 superblock (as mke2fs writes one): empty log, `s_first` = 1.
    pub fn new(block_size: u32, maxlen: u32, uuid: [u8; 16]) -> JournalSuperblock {
        JournalSuperblock {
            blocktype: blocktype::SUPERBLOCK_V2,
            header_sequence: 0,
            block_size,
            maxlen,
            first: 1,
            sequence: 1,
            start: 0,
            errno: 0,
            feature_compat: 0,
            feature_incompat: 0,
            feature_ro_compat: 0,
            uuid,
            nr_users: 1,
            dynsuper: 0,
            max_transaction: 0,
            max_trans_data: 0,
            checksum_type: 0,
            num_fc_blks: 0,
            head: 0,
            checksum: 0,
            users: [0; 16 * 48],
        }
    }

    /// Decode the superblock: needs 1024 bytes, the magic and a superblock block type. Field
    /// values are not checked here (see [`JournalSuperblock::validate`]).
    pub fn parse(b: &[u8]) -> Result<JournalSuperblock, String> {
        if b.len() < SUPERBLOCK_SIZE {
            return Err(format!(
                "journal superblock is {} bytes, expected {SUPERBLOCK_SIZE}",
                b.len()
            ));
        }
        let h = BlockHeader::parse(b).ok_or("journal superblock too short")?;
        if h.magic != JBD2_MAGIC {
            return Err(format!(
                "journal superblock has a bad magic number 0x{:08x}",
                h.magic
            ));
        }
        if h.blocktype != blocktype::SUPERBLOCK_V1 && h.blocktype != blocktype::SUPERBLOCK_V2 {
            return Err(format!(
                "journal superblock has unknown block type {}",
                h.blocktype
            ));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[sb_off::UUID..sb_off::UUID + 16]);
        let mut users = [0u8; 16 * 48];
        users.copy_from_slice(&b[sb_off::USERS..sb_off::USERS + 16 * 48]);
        Ok(JournalSuperblock {
            blocktype: h.blocktype,
            header_sequence: h.sequence,
            block_size: be32(b, sb_off::BLOCKSIZE),
            maxlen: be32(b, sb_off::MAXLEN),
            first: be32(b, sb_off::FIRST),
            sequence: be32(b, sb_off::SEQUENCE),
            start: be32(b, sb_off::START),
            errno: be32(b, sb_off::ERRNO) as i32,
            feature_compat: be32(b, sb_off::FEATURE_COMPAT),
            feature_incompat: be32(b, sb_off::FEATURE_INCOMPAT),
            feature_ro_compat: be32(b, sb_off::FEATURE_RO_COMPAT),
            uuid,
            nr_users: be32(b, sb_off::NR_USERS),
            dynsuper: be32(b, sb_off::DYNSUPER),
            max_transaction: be32(b, sb_off::MAX_TRANSACTION),
            max_trans_data: be32(b, sb_off::MAX_TRANS_DATA),
            checksum_type: b[sb_off::CHECKSUM_TYPE],
            num_fc_blks: be32(b, sb_off::NUM_FC_BLKS),
            head: be32(b, sb_off::HEAD),
            checksum: be32(b, sb_off::CHECKSUM),
            users,
        })
    }

    /// Write every field into `raw` (at least 1024 bytes), leaving the padding bytes as they
    /// are. The stored `checksum` is written as is; call [`JournalSuperblock::seal`] after.
    pub fn write_into(&self, raw: &mut [u8]) {
        BlockHeader::new(self.blocktype, self.header_sequence).write(raw);
        put_be32(raw, sb_off::BLOCKSIZE, self.block_size);
        put_be32(raw, sb_off::MAXLEN, self.maxlen);
        put_be32(raw, sb_off::FIRST, self.first);
        put_be32(raw, sb_off::SEQUENCE, self.sequence);
        put_be32(raw, sb_off::START, self.start);
        put_be32(raw, sb_off::ERRNO, self.errno as u32);
        put_be32(raw, sb_off::FEATURE_COMPAT, self.feature_compat);
        put_be32(raw, sb_off::FEATURE_INCOMPAT, self.feature_incompat);
        put_be32(raw, sb_off::FEATURE_RO_COMPAT, self.feature_ro_compat);
        raw[sb_off::UUID..sb_off::UUID + 16].copy_from_slice(&self.uuid);
        put_be32(raw, sb_off::NR_USERS, self.nr_users);
        put_be32(raw, sb_off::DYNSUPER, self.dynsuper);
        put_be32(raw, sb_off::MAX_TRANSACTION, self.max_transaction);
        put_be32(raw, sb_off::MAX_TRANS_DATA, self.max_trans_data);
        raw[sb_off::CHECKSUM_TYPE] = self.checksum_type;
        put_be32(raw, sb_off::NUM_FC_BLKS, self.num_fc_blks);
        put_be32(raw, sb_off::HEAD, self.head);
        put_be32(raw, sb_off::CHECKSUM, self.checksum);
        raw[sb_off::USERS..sb_off::USERS + 16 * 48].copy_from_slice(&self.users);
    }

    /// The 1024 superblock bytes (padding zeroed), checksum refreshed when the journal has one.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut raw = vec![0u8; SUPERBLOCK_SIZE];
        self.write_into(&mut raw);
        JournalSuperblock::seal(&mut raw);
        raw
    }

    /// crc32c(~0) of the first 1024 bytes with `s_checksum` taken as zero; None if too short.
    pub fn checksum_of(raw: &[u8]) -> Option<u32> {
        let b = raw.get(..SUPERBLOCK_SIZE)?;
        let c = crc32c_raw(!0, &b[..sb_off::CHECKSUM]);
        let c = crc32c_raw(c, &[0u8; 4]);
        Some(crc32c_raw(c, &b[sb_off::CHECKSUM + 4..]))
    }

    /// Does the stored checksum match? True when the superblock carries no checksum (v1
    /// superblock or no csum v2/v3 feature).
    pub fn checksum_ok(raw: &[u8]) -> bool {
        let Ok(sb) = JournalSuperblock::parse(raw) else {
            return false;
        };
        if !sb.format().csum_v2or3() {
            return true;
        }
        JournalSuperblock::checksum_of(raw) == Some(sb.checksum)
    }

    /// Refresh `s_checksum` in `raw` when the superblock it holds has csum v2/v3.
    pub fn seal(raw: &mut [u8]) {
        let Ok(sb) = JournalSuperblock::parse(raw) else {
            return;
        };
        if sb.format().csum_v2or3()
            && let Some(c) = JournalSuperblock::checksum_of(raw)
        {
            put_be32(raw, sb_off::CHECKSUM, c);
        }
    }

    pub fn is_v2(&self) -> bool {
        self.blocktype == blocktype::SUPERBLOCK_V2
    }

    /// Feature words as the kernel sees them: a v1 superblock has none.
    pub fn compat(&self) -> u32 {
        if self.is_v2() { self.feature_compat } else { 0 }
    }

    pub fn incompat(&self) -> u32 {
        if self.is_v2() {
            self.feature_incompat
        } else {
            0
        }
    }

    pub fn ro_compat(&self) -> u32 {
        if self.is_v2() {
            self.feature_ro_compat
        } else {
            0
        }
    }

    /// The format the log blocks of this journal use.
    pub fn format(&self) -> JournalFormat {
        JournalFormat::new(
            self.block_size as usize,
            self.compat(),
            self.incompat(),
            self.uuid,
        )
    }

    /// `jbd2_journal_get_num_fc_blks()`: fast-commit blocks (0 without FAST_COMMIT).
    pub fn fast_commit_blocks(&self) -> u32 {
        if self.incompat() & feature::INCOMPAT_FAST_COMMIT == 0 {
            0
        } else if self.num_fc_blks == 0 {
            DEFAULT_FAST_COMMIT_BLOCKS
        } else {
            self.num_fc_blks
        }
    }

    /// `j_last`: one past the last block of the log ring (the fast-commit area follows it).
    pub fn log_end(&self) -> u32 {
        self.maxlen.saturating_sub(self.fast_commit_blocks())
    }

    /// The log ring `[s_first, j_last)`.
    pub fn log_range(&self) -> Range<u32> {
        self.first..self.log_end()
    }

    /// Journal blocks of the fast-commit area, `[j_last + 1, s_maxlen)` (empty without it).
    pub fn fast_commit_range(&self) -> Range<u32> {
        if self.fast_commit_blocks() == 0 {
            return 0..0;
        }
        self.log_end().saturating_add(1).min(self.maxlen)..self.maxlen
    }

    /// The checks the kernel makes before using a journal (`journal_check_superblock` and
    /// `jbd2_journal_load`). `raw` is the on-disk superblock (for its checksum).
    pub fn validate(&self, raw: &[u8]) -> Result<(), String> {
        if !matches!(
            self.block_size,
            1024 | 2048 | 4096 | 8192 | 16384 | 32768 | 65536
        ) {
            return Err(format!(
                "journal superblock has an invalid block size {}",
                self.block_size
            ));
        }
        if self.first == 0 || self.first >= self.maxlen {
            return Err(format!(
                "journal superblock has an invalid log start: s_first {} with s_maxlen {}",
                self.first, self.maxlen
            ));
        }
        if self.is_v2() {
            let unknown_incompat = self.feature_incompat & !feature::KNOWN_INCOMPAT;
            let unknown_ro = self.feature_ro_compat & !feature::KNOWN_RO_COMPAT;
            if unknown_incompat != 0 || unknown_ro != 0 {
                return Err(format!(
                    "journal has unknown incompatible features: {}",
                    feature_set_names(0, unknown_incompat, unknown_ro)
                ));
            }
        }
        let f = self.format();
        if f.csum_v2() && f.csum_v3() {
            return Err("journal has both checksum v2 and v3 features".into());
        }
        if f.compat_checksum() && f.csum_v2or3() {
            return Err("journal has both checksum v1 and v2/v3 features".into());
        }
        if f.csum_v2or3() {
            if self.checksum_type != checksum_type::CRC32C {
                return Err(format!(
                    "journal checksum type {} is not crc32c",
                    self.checksum_type
                ));
            }
            let computed = JournalSuperblock::checksum_of(raw);
            if computed != Some(self.checksum) {
                return Err(format!(
                    "journal superblock checksum mismatch (stored 0x{:08x}, computed 0x{:08x})",
                    self.checksum,
                    computed.unwrap_or(0)
                ));
            }
        }
        if f.fast_commit() {
            let fc = self.fast_commit_blocks();
            if self
                .maxlen
                .checked_sub(fc)
                .is_none_or(|l| l < MIN_JOURNAL_BLOCKS)
            {
                return Err(format!(
                    "journal has an invalid number of fast-commit blocks ({fc} of {})",
                    self.maxlen
                ));
            }
        }
        let last = self.log_end();
        if self.first >= last {
            return Err(format!(
                "journal log is empty: s_first {} >= end of log {last}",
                self.first
            ));
        }
        if self.start != 0 && (self.start < self.first || self.start >= last) {
            return Err(format!(
                "journal superblock has an invalid start block {} (log is {}..{last})",
                self.start, self.first
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Descriptor blocks

/// One descriptor tag, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockTag {
    /// Home block of the data block (high half only with 64BIT).
    pub blocknr: u64,
    /// [`tag_flag`] bits.
    pub flags: u32,
    /// Data checksum: 32 bits with csum v3, 16 bits with csum v2, 0 otherwise.
    pub checksum: u32,
    /// The UUID that follows a tag without SAME_UUID, when it fits in the block.
    pub uuid: Option<[u8; 16]>,
}

impl BlockTag {
    pub fn escaped(&self) -> bool {
        self.flags & tag_flag::ESCAPE != 0
    }
    pub fn is_last(&self) -> bool {
        self.flags & tag_flag::LAST_TAG != 0
    }
}

/// Decode one tag at `off` (the caller checked `off + tag_bytes` fits).
fn read_tag(fmt: &JournalFormat, b: &[u8], off: usize) -> Option<BlockTag> {
    let lo = get_be32(b, off)? as u64;
    let (flags, checksum, hi) = if fmt.csum_v3() {
        (
            get_be32(b, off + 4)?,
            get_be32(b, off + 12)?,
            get_be32(b, off + 8)?,
        )
    } else {
        // Classic tag: t_blocknr, be16 t_checksum, be16 t_flags, [t_blocknr_high]; the two
        // extra bytes csum v2 adds to the tag size are padding after these fields.
        let checksum = get_be16(b, off + 4)? as u32;
        let flags = get_be16(b, off + 6)? as u32;
        let hi = if fmt.is_64bit() {
            get_be32(b, off + 8)?
        } else {
            0
        };
        (flags, checksum, hi)
    };
    let blocknr = if fmt.is_64bit() {
        lo | (hi as u64) << 32
    } else {
        lo
    };
    Some(BlockTag {
        blocknr,
        flags,
        checksum,
        uuid: None,
    })
}

/// Walk the tags of a descriptor block exactly as the kernel does: tags start after the header,
/// a tag is read while it fits before the tail, 16 UUID bytes follow every tag without
/// SAME_UUID, and LAST_TAG ends the walk. A descriptor always describes at least one block.
pub fn descriptor_tags(fmt: &JournalFormat, block: &[u8]) -> Vec<BlockTag> {
    let tag_bytes = fmt.tag_bytes();
    let limit = block.len().saturating_sub(fmt.tail_size());
    let mut tags = Vec::new();
    let mut off = HEADER_SIZE;
    while off + tag_bytes <= limit {
        let Some(mut tag) = read_tag(fmt, block, off) else {
            break;
        };
        off += tag_bytes;
        if tag.flags & tag_flag::SAME_UUID == 0 {
            if let Some(u) = block.get(off..off + UUID_SIZE) {
                let mut a = [0u8; 16];
                a.copy_from_slice(u);
                tag.uuid = Some(a);
            }
            off += UUID_SIZE;
        }
        tags.push(tag);
        if tag.is_last() {
            break;
        }
    }
    tags
}

/// A decoded descriptor block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub sequence: u32,
    pub tags: Vec<BlockTag>,
    /// Does the csum v2/v3 tail match (true without checksums)?
    pub checksum_ok: bool,
}

impl Descriptor {
    /// Decode a descriptor block of `fmt.block_size` bytes.
    pub fn parse(fmt: &JournalFormat, block: &[u8]) -> Result<Descriptor, String> {
        let h = check_block(fmt, block, blocktype::DESCRIPTOR)?;
        Ok(Descriptor {
            sequence: h.sequence,
            tags: descriptor_tags(fmt, block),
            checksum_ok: block_tail_ok(fmt, block),
        })
    }
}

fn check_block(fmt: &JournalFormat, block: &[u8], want: u32) -> Result<BlockHeader, String> {
    if block.len() != fmt.block_size || block.len() < HEADER_SIZE + 4 {
        return Err(format!(
            "journal block is {} bytes, expected {}",
            block.len(),
            fmt.block_size
        ));
    }
    let h = BlockHeader::parse(block).ok_or("journal block too short")?;
    if h.magic != JBD2_MAGIC {
        return Err(format!("journal block has a bad magic 0x{:08x}", h.magic));
    }
    if h.blocktype != want {
        return Err(format!(
            "journal block has type {}, expected {want}",
            h.blocktype
        ));
    }
    Ok(h)
}

/// crc32c(seed) of a descriptor or revoke block with its tail taken as zero.
pub fn block_tail_checksum(fmt: &JournalFormat, block: &[u8]) -> u32 {
    let n = block.len().saturating_sub(TAIL_SIZE);
    let c = crc32c_raw(fmt.csum_seed, &block[..n]);
    crc32c_raw(c, &[0u8; TAIL_SIZE][..block.len() - n])
}

/// Does the tail checksum of a descriptor or revoke block match? True without csum v2/v3.
pub fn block_tail_ok(fmt: &JournalFormat, block: &[u8]) -> bool {
    if !fmt.csum_v2or3() {
        return true;
    }
    let Some(stored) = block
        .len()
        .checked_sub(TAIL_SIZE)
        .and_then(|o| get_be32(block, o))
    else {
        return false;
    };
    stored == block_tail_checksum(fmt, block)
}

/// Write the tail checksum of a descriptor or revoke block (csum v2/v3 only).
pub fn set_block_tail(fmt: &JournalFormat, block: &mut [u8]) {
    if fmt.csum_v2or3() && block.len() >= TAIL_SIZE {
        let c = block_tail_checksum(fmt, block);
        let n = block.len() - TAIL_SIZE;
        put_be32(block, n, c);
    }
}

/// Checksum of a logged data block for its tag: crc32c(seed, be32 sequence) then the block as
/// it sits in the log (escaped). csum v2 tags keep the low 16 bits.
pub fn data_block_checksum(fmt: &JournalFormat, sequence: u32, logged: &[u8]) -> u32 {
    let c = crc32c_raw(fmt.csum_seed, &sequence.to_be_bytes());
    crc32c_raw(c, logged)
}

/// Does a logged data block match its tag's checksum? True without csum v2/v3.
pub fn tag_checksum_ok(fmt: &JournalFormat, tag: &BlockTag, sequence: u32, logged: &[u8]) -> bool {
    if !fmt.csum_v2or3() {
        return true;
    }
    let c = data_block_checksum(fmt, sequence, logged);
    if fmt.csum_v3() {
        tag.checksum == c
    } else {
        tag.checksum == c & 0xFFFF
    }
}

/// Does a block need escaping (it starts with the jbd2 magic)?
pub fn needs_escape(data: &[u8]) -> bool {
    get_be32(data, 0) == Some(JBD2_MAGIC)
}

/// The copy of `data` to log: with its first four bytes zeroed when they are the magic (the
/// tag must then carry ESCAPE). Returns the bytes and whether they were escaped.
pub fn escape_block(data: &[u8]) -> (Cow<'_, [u8]>, bool) {
    if needs_escape(data) {
        let mut v = data.to_vec();
        v[..4].fill(0);
        (Cow::Owned(v), true)
    } else {
        (Cow::Borrowed(data), false)
    }
}

/// Restore a logged block read back from the log: put the magic back when its tag says ESCAPE.
pub fn unescape_block(data: &mut [u8], flags: u32) {
    if flags & tag_flag::ESCAPE != 0 && data.len() >= 4 {
        data[..4].copy_from_slice(&JBD2_MAGIC.to_be_bytes());
    }
}

/// Why a block could not be added to a descriptor or revoke block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddError {
    /// No room left: finish this block and start another.
    Full,
    /// The block number does not fit the journal (no 64BIT feature).
    BlockTooLarge(u64),
    /// The data is not one journal block.
    WrongSize(usize),
}

impl std::fmt::Display for AddError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddError::Full => write!(f, "journal block is full"),
            AddError::BlockTooLarge(b) => write!(
                f,
                "block {b} does not fit a journal without the 64bit feature"
            ),
            AddError::WrongSize(n) => write!(f, "data of {n} bytes is not one journal block"),
        }
    }
}

/// Builds one descriptor block, packing tags until it is full, as the kernel's commit does:
/// the first tag carries the journal UUID, the others SAME_UUID, the last LAST_TAG, and the
/// csum v2/v3 tail is set by [`DescriptorBuilder::finish`].
#[derive(Clone, Debug)]
pub struct DescriptorBuilder {
    fmt: JournalFormat,
    sequence: u32,
    block: Vec<u8>,
    off: usize,
    last_tag: Option<usize>,
    count: usize,
}

impl DescriptorBuilder {
    pub fn new(fmt: &JournalFormat, sequence: u32) -> DescriptorBuilder {
        let mut block = vec![0u8; fmt.block_size];
        BlockHeader::new(blocktype::DESCRIPTOR, sequence).write(&mut block);
        DescriptorBuilder {
            fmt: *fmt,
            sequence,
            block,
            off: HEADER_SIZE,
            last_tag: None,
            count: 0,
        }
    }

    /// Tags one descriptor block holds.
    pub fn capacity(fmt: &JournalFormat) -> usize {
        (fmt.block_size
            .saturating_sub(HEADER_SIZE + UUID_SIZE + fmt.tail_size()))
            / fmt.tag_bytes()
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn sequence(&self) -> u32 {
        self.sequence
    }

    fn room_for_next(&self) -> bool {
        let need = self.fmt.tag_bytes() + if self.count == 0 { UUID_SIZE } else { 0 };
        self.off + need <= self.fmt.block_size - self.fmt.tail_size()
    }

    pub fn is_full(&self) -> bool {
        !self.room_for_next()
    }

    /// Tag `data` (one block, going home to `blocknr`) and return the bytes to write to the log
    /// right after the blocks already tagged: the data itself, or an escaped copy.
    pub fn add<'a>(&mut self, blocknr: u64, data: &'a [u8]) -> Result<Cow<'a, [u8]>, AddError> {
        if data.len() != self.fmt.block_size {
            return Err(AddError::WrongSize(data.len()));
        }
        if blocknr > self.fmt.max_block() {
            return Err(AddError::BlockTooLarge(blocknr));
        }
        if !self.room_for_next() {
            return Err(AddError::Full);
        }
        let (logged, escaped) = escape_block(data);
        let mut flags = if escaped { tag_flag::ESCAPE } else { 0 };
        if self.count > 0 {
            flags |= tag_flag::SAME_UUID;
        }
        let csum = if self.fmt.csum_v2or3() {
            data_block_checksum(&self.fmt, self.sequence, &logged)
        } else {
            0
        };
        let off = self.off;
        let b = &mut self.block;
        put_be32(b, off, blocknr as u32);
        if self.fmt.csum_v3() {
            put_be32(b, off + 4, flags);
            put_be32(b, off + 8, (blocknr >> 32) as u32);
            put_be32(b, off + 12, csum);
        } else {
            put_be16(b, off + 4, csum as u16);
            put_be16(b, off + 6, flags as u16);
            if self.fmt.is_64bit() {
                put_be32(b, off + 8, (blocknr >> 32) as u32);
            }
        }
        self.off += self.fmt.tag_bytes();
        if self.count == 0 {
            b[self.off..self.off + UUID_SIZE].copy_from_slice(&self.fmt.uuid);
            self.off += UUID_SIZE;
        }
        self.last_tag = Some(off);
        self.count += 1;
        Ok(logged)
    }

    /// The finished descriptor block (LAST_TAG set, tail checksum written); None when no tag was
    /// added (a descriptor always describes at least one block).
    pub fn finish(mut self) -> Option<Vec<u8>> {
        let last = self.last_tag?;
        if self.fmt.csum_v3() {
            let f = be32(&self.block, last + 4);
            put_be32(&mut self.block, last + 4, f | tag_flag::LAST_TAG);
        } else {
            let f = get_be16(&self.block, last + 6).unwrap_or(0);
            put_be16(&mut self.block, last + 6, f | tag_flag::LAST_TAG as u16);
        }
        set_block_tail(&self.fmt, &mut self.block);
        Some(self.block)
    }
}

// ---------------------------------------------------------------------------------------------
// Commit blocks

mod commit_off {
    pub const CHKSUM_TYPE: usize = 0x0C;
    pub const CHKSUM_SIZE: usize = 0x0D;
    pub const CHKSUM: usize = 0x10;
    pub const COMMIT_SEC: usize = 0x30;
    pub const COMMIT_NSEC: usize = 0x38;
}

/// `struct commit_header`, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitBlock {
    pub sequence: u32,
    /// `h_chksum_type` (v1 checksums: [`checksum_type::CRC32`]; 0 with csum v2/v3).
    pub chksum_type: u8,
    pub chksum_size: u8,
    /// `h_chksum[]`: slot 0 holds the v1 transaction crc32 or the csum v2/v3 block checksum.
    pub chksum: [u32; COMMIT_CHECKSUM_SLOTS],
    pub commit_sec: u64,
    pub commit_nsec: u32,
}

impl CommitBlock {
    /// A commit record for transaction `sequence`, committed at `sec`.`nsec`.
    pub fn new(sequence: u32, commit_sec: u64, commit_nsec: u32) -> CommitBlock {
        CommitBlock {
            sequence,
            chksum_type: 0,
            chksum_size: 0,
            chksum: [0; COMMIT_CHECKSUM_SLOTS],
            commit_sec,
            commit_nsec,
        }
    }

    /// Record a v1 (COMPAT_CHECKSUM) transaction checksum: crc32_be from `~0` over every
    /// descriptor and logged data block of the transaction, in log order.
    pub fn with_v1_checksum(mut self, crc32_sum: u32) -> CommitBlock {
        self.chksum_type = checksum_type::CRC32;
        self.chksum_size = CRC32_CHECKSUM_SIZE;
        self.chksum[0] = crc32_sum;
        self
    }

    pub fn parse(fmt: &JournalFormat, block: &[u8]) -> Result<CommitBlock, String> {
        let h = check_block(fmt, block, blocktype::COMMIT)?;
        if block.len() < COMMIT_HEADER_SIZE {
            return Err("commit block too short".into());
        }
        let mut chksum = [0u32; COMMIT_CHECKSUM_SLOTS];
        for (i, c) in chksum.iter_mut().enumerate() {
            *c = be32(block, commit_off::CHKSUM + 4 * i);
        }
        Ok(CommitBlock {
            sequence: h.sequence,
            chksum_type: block[commit_off::CHKSUM_TYPE],
            chksum_size: block[commit_off::CHKSUM_SIZE],
            chksum,
            commit_sec: get_be64(block, commit_off::COMMIT_SEC).unwrap_or(0),
            commit_nsec: be32(block, commit_off::COMMIT_NSEC),
        })
    }

    /// The commit block as the kernel writes it: zeroed, header fields set, and with csum v2/v3
    /// `h_chksum[0]` = crc32c(seed) of the whole block.
    pub fn build(&self, fmt: &JournalFormat) -> Vec<u8> {
        let mut b = vec![0u8; fmt.block_size.max(COMMIT_HEADER_SIZE)];
        BlockHeader::new(blocktype::COMMIT, self.sequence).write(&mut b);
        b[commit_off::CHKSUM_TYPE] = self.chksum_type;
        b[commit_off::CHKSUM_SIZE] = self.chksum_size;
        for (i, c) in self.chksum.iter().enumerate() {
            put_be32(&mut b, commit_off::CHKSUM + 4 * i, *c);
        }
        put_be64(&mut b, commit_off::COMMIT_SEC, self.commit_sec);
        put_be32(&mut b, commit_off::COMMIT_NSEC, self.commit_nsec);
        if fmt.csum_v2or3() {
            put_be32(&mut b, commit_off::CHKSUM, 0);
            let c = crc32c_raw(fmt.csum_seed, &b);
            put_be32(&mut b, commit_off::CHKSUM, c);
        }
        b
    }
}

/// crc32c(seed) of a commit block with `h_chksum[0]` taken as zero.
fn commit_checksum(fmt: &JournalFormat, block: &[u8]) -> u32 {
    let c = crc32c_raw(fmt.csum_seed, &block[..commit_off::CHKSUM]);
    let c = crc32c_raw(c, &[0u8; 4]);
    crc32c_raw(c, &block[commit_off::CHKSUM + 4..])
}

/// Does the csum v2/v3 checksum of a commit block match? True without csum v2/v3.
pub fn commit_checksum_ok(fmt: &JournalFormat, block: &[u8]) -> bool {
    if !fmt.csum_v2or3() {
        return true;
    }
    if block.len() < COMMIT_HEADER_SIZE {
        return false;
    }
    be32(block, commit_off::CHKSUM) == commit_checksum(fmt, block)
}

/// The kernel's fallback for a commit block whose tail was not written: the checksum computed
/// over the commit header followed by zeroes.
pub fn commit_checksum_ok_partial(fmt: &JournalFormat, block: &[u8]) -> bool {
    if !fmt.csum_v2or3() {
        return true;
    }
    if block.len() < COMMIT_HEADER_SIZE {
        return false;
    }
    let mut tmp = vec![0u8; block.len()];
    tmp[..COMMIT_HEADER_SIZE].copy_from_slice(&block[..COMMIT_HEADER_SIZE]);
    be32(block, commit_off::CHKSUM) == commit_checksum(fmt, &tmp)
}

// ---------------------------------------------------------------------------------------------
// Revoke blocks

/// A decoded revoke block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokeBlock {
    pub sequence: u32,
    /// Revoked home block numbers.
    pub blocks: Vec<u64>,
    /// Does the csum v2/v3 tail match (true without checksums)?
    pub checksum_ok: bool,
}

impl RevokeBlock {
    /// Decode a revoke block. Like the kernel, an `r_count` larger than the block (less its
    /// tail) is an error; records are read from byte 16 while they fit within `r_count`.
    pub fn parse(fmt: &JournalFormat, block: &[u8]) -> Result<RevokeBlock, String> {
        let h = check_block(fmt, block, blocktype::REVOKE)?;
        let rcount = be32(block, HEADER_SIZE) as usize;
        if rcount > block.len() - fmt.tail_size() {
            return Err(format!(
                "revoke block of transaction {} has r_count {rcount}, larger than the block",
                h.sequence
            ));
        }
        let rec = fmt.revoke_record_size();
        let mut blocks = Vec::new();
        let mut off = REVOKE_HEADER_SIZE;
        while off + rec <= rcount {
            let b = if rec == 4 {
                be32(block, off) as u64
            } else {
                get_be64(block, off).unwrap_or(0)
            };
            blocks.push(b);
            off += rec;
        }
        Ok(RevokeBlock {
            sequence: h.sequence,
            blocks,
            checksum_ok: block_tail_ok(fmt, block),
        })
    }
}

/// Builds one revoke block: records are appended until the block (less its tail) is full.
#[derive(Clone, Debug)]
pub struct RevokeBuilder {
    fmt: JournalFormat,
    block: Vec<u8>,
    off: usize,
}

impl RevokeBuilder {
    pub fn new(fmt: &JournalFormat, sequence: u32) -> RevokeBuilder {
        let mut block = vec![0u8; fmt.block_size];
        BlockHeader::new(blocktype::REVOKE, sequence).write(&mut block);
        RevokeBuilder {
            fmt: *fmt,
            block,
            off: REVOKE_HEADER_SIZE,
        }
    }

    /// Records one revoke block holds.
    pub fn capacity(fmt: &JournalFormat) -> usize {
        fmt.block_size
            .saturating_sub(REVOKE_HEADER_SIZE + fmt.tail_size())
            / fmt.revoke_record_size()
    }

    pub fn len(&self) -> usize {
        (self.off - REVOKE_HEADER_SIZE) / self.fmt.revoke_record_size()
    }

    pub fn is_empty(&self) -> bool {
        self.off == REVOKE_HEADER_SIZE
    }

    pub fn is_full(&self) -> bool {
        self.off + self.fmt.revoke_record_size() > self.fmt.block_size - self.fmt.tail_size()
    }

    pub fn add(&mut self, blocknr: u64) -> Result<(), AddError> {
        if blocknr > self.fmt.max_block() {
            return Err(AddError::BlockTooLarge(blocknr));
        }
        if self.is_full() {
            return Err(AddError::Full);
        }
        if self.fmt.is_64bit() {
            put_be64(&mut self.block, self.off, blocknr);
        } else {
            put_be32(&mut self.block, self.off, blocknr as u32);
        }
        self.off += self.fmt.revoke_record_size();
        Ok(())
    }

    /// The finished block: `r_count` set, tail checksum written.
    pub fn finish(mut self) -> Vec<u8> {
        put_be32(&mut self.block, HEADER_SIZE, self.off as u32);
        set_block_tail(&self.fmt, &mut self.block);
        self.block
    }
}

// ---------------------------------------------------------------------------------------------
// Fast-commit area (ext4 structures, little-endian): only what recovery needs to tell an empty
// or stale area from one the kernel would replay.

/// ext4 fast-commit tag values (`ext4_fc_tl.fc_tag`).
pub mod fc_tag {
    pub const ADD_RANGE: u16 = 0x1;
    pub const DEL_RANGE: u16 = 0x2;
    pub const CREAT: u16 = 0x3;
    pub const LINK: u16 = 0x4;
    pub const UNLINK: u16 = 0x5;
    pub const INODE: u16 = 0x6;
    pub const PAD: u16 = 0x7;
    pub const TAIL: u16 = 0x8;
    pub const HEAD: u16 = 0x9;
}

/// What the first fast-commit block holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FastCommitHead {
    /// It does not start with a HEAD tag: no fast commit was written since the area was reset.
    None,
    /// A HEAD tag: its features and the transaction the fast commits follow.
    Head { features: u32, tid: u32 },
}

/// Decode the start of the first fast-commit block.
pub fn fast_commit_head(block: &[u8]) -> FastCommitHead {
    let tag = block.get(0..2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let len = block.get(2..4).map(|s| u16::from_le_bytes([s[0], s[1]]));
    match (tag, len, block.get(4..12)) {
        (Some(fc_tag::HEAD), Some(l), Some(v)) if l as usize >= 8 => FastCommitHead::Head {
            features: u32::from_le_bytes([v[0], v[1], v[2], v[3]]),
            tid: u32::from_le_bytes([v[4], v[5], v[6], v[7]]),
        },
        _ => FastCommitHead::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt_with(bs: usize, compat: u32, incompat: u32) -> JournalFormat {
        JournalFormat::new(bs, compat, incompat, *b"0123456789abcdef")
    }

    fn all_formats() -> Vec<JournalFormat> {
        let mut v = Vec::new();
        for bs in [1024, 4096] {
            for inc in [
                0,
                feature::INCOMPAT_64BIT,
                feature::INCOMPAT_CSUM_V2,
                feature::INCOMPAT_CSUM_V2 | feature::INCOMPAT_64BIT,
                feature::INCOMPAT_CSUM_V3,
                feature::INCOMPAT_CSUM_V3 | feature::INCOMPAT_64BIT,
            ] {
                v.push(fmt_with(bs, 0, inc | feature::INCOMPAT_REVOKE));
            }
            v.push(fmt_with(bs, feature::COMPAT_CHECKSUM, 0));
        }
        v
    }

    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 11
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    #[test]
    fn tag_bytes_matches_kernel_table() {
        let t = |inc| fmt_with(4096, 0, inc).tag_bytes();
        assert_eq!(t(0), 8);
        assert_eq!(t(feature::INCOMPAT_64BIT), 12);
        assert_eq!(t(feature::INCOMPAT_CSUM_V2), 10);
        assert_eq!(t(feature::INCOMPAT_CSUM_V2 | feature::INCOMPAT_64BIT), 14);
        assert_eq!(t(feature::INCOMPAT_CSUM_V3), 16);
        assert_eq!(t(feature::INCOMPAT_CSUM_V3 | feature::INCOMPAT_64BIT), 16);
    }

    #[test]
    fn crc32_be_check_value() {
        // CRC-32/MPEG-2 (MSB-first, init ~0, no final xor) of "123456789" is 0x0376E6E7.
        assert_eq!(crc32_be(!0, b"123456789"), 0x0376_E6E7);
        let a = crc32_be(!0, b"1234");
        assert_eq!(crc32_be(a, b"56789"), 0x0376_E6E7);
    }

    #[test]
    fn tid_order_wraps() {
        assert!(tid_gt(1, 0));
        assert!(tid_gt(0, u32::MAX));
        assert!(!tid_gt(5, 5));
        assert!(tid_geq(5, 5));
        assert!(!tid_geq(u32::MAX, 2));
    }

    #[test]
    fn superblock_round_trip_and_checksum() {
        let mut sb = JournalSuperblock::new(4096, 32768, [7; 16]);
        sb.feature_incompat = feature::INCOMPAT_64BIT | feature::INCOMPAT_CSUM_V3;
        sb.feature_compat = 0;
        sb.checksum_type = checksum_type::CRC32C;
        sb.sequence = 0x1234_5678;
        sb.start = 17;
        sb.errno = -5;
        sb.nr_users = 1;
        sb.dynsuper = 3;
        sb.max_transaction = 9;
        sb.max_trans_data = 10;
        sb.head = 33;
        sb.users[0] = 0xAA;
        sb.users[767] = 0xBB;
        let raw = sb.to_bytes();
        assert_eq!(raw.len(), 1024);
        assert_eq!(&raw[0..4], &JBD2_MAGIC.to_be_bytes());
        assert_eq!(&raw[0x1C..0x20], &17u32.to_be_bytes());
        assert!(JournalSuperblock::checksum_ok(&raw));
        let back = JournalSuperblock::parse(&raw).unwrap();
        assert_eq!(back.checksum, JournalSuperblock::checksum_of(&raw).unwrap());
        let mut expect = sb.clone();
        expect.checksum = back.checksum;
        assert_eq!(back, expect);
        assert!(back.validate(&raw).is_ok());
        // A flipped bit breaks the checksum, and validation says so.
        let mut bad = raw.clone();
        bad[0x200] ^= 1;
        assert!(!JournalSuperblock::checksum_ok(&bad));
        let e = JournalSuperblock::parse(&bad)
            .unwrap()
            .validate(&bad)
            .unwrap_err();
        assert!(e.contains("checksum"), "{e}");
        // Writing into an existing block keeps the padding bytes.
        let mut blk = vec![0x5Au8; 4096];
        sb.write_into(&mut blk);
        JournalSuperblock::seal(&mut blk);
        assert_eq!(blk[0x60], 0x5A);
        assert_eq!(blk[2000], 0x5A);
        assert!(JournalSuperblock::checksum_ok(&blk));
        assert_eq!(JournalSuperblock::parse(&blk).unwrap().start, 17);
    }

    #[test]
    fn superblock_v1_has_no_features_and_validation_catches_geometry() {
        let mut sb = JournalSuperblock::new(1024, 2048, [0; 16]);
        sb.blocktype = blocktype::SUPERBLOCK_V1;
        sb.feature_incompat = feature::INCOMPAT_CSUM_V3;
        let raw = sb.to_bytes();
        let p = JournalSuperblock::parse(&raw).unwrap();
        assert_eq!(p.incompat(), 0);
        assert!(!p.format().csum_v3());
        assert!(p.validate(&raw).is_ok());

        let check = |f: &dyn Fn(&mut JournalSuperblock)| {
            let mut s = JournalSuperblock::new(4096, 4096, [1; 16]);
            f(&mut s);
            let raw = s.to_bytes();
            JournalSuperblock::parse(&raw).unwrap().validate(&raw)
        };
        assert!(check(&|_| {}).is_ok());
        assert!(check(&|s| s.first = 0).is_err());
        assert!(check(&|s| s.first = 4096).is_err());
        assert!(check(&|s| s.block_size = 3000).is_err());
        assert!(check(&|s| s.start = 4096).is_err());
        assert!(check(&|s| s.feature_incompat = 0x100).is_err());
        assert!(check(&|s| s.feature_ro_compat = 1).is_err());
        assert!(
            check(&|s| {
                s.feature_incompat = feature::INCOMPAT_CSUM_V2 | feature::INCOMPAT_CSUM_V3;
                s.checksum_type = checksum_type::CRC32C;
            })
            .is_err()
        );
        assert!(check(&|s| s.feature_incompat = feature::INCOMPAT_CSUM_V3).is_err());
        assert!(
            check(&|s| {
                s.feature_incompat = feature::INCOMPAT_CSUM_V3;
                s.checksum_type = checksum_type::CRC32C;
                s.feature_compat = feature::COMPAT_CHECKSUM;
            })
            .is_err()
        );
        // Fast commit: the ring ends before the fast-commit area.
        let mut s = JournalSuperblock::new(4096, 4096, [1; 16]);
        s.feature_incompat = feature::INCOMPAT_FAST_COMMIT;
        assert_eq!(s.fast_commit_blocks(), 256);
        assert_eq!(s.log_range(), 1..3840);
        assert_eq!(s.fast_commit_range(), 3841..4096);
        s.num_fc_blks = 64;
        assert_eq!(s.log_end(), 4032);
        assert!(
            check(&|s| {
                s.feature_incompat = feature::INCOMPAT_FAST_COMMIT;
                s.num_fc_blks = 4000;
            })
            .is_err()
        );
        assert!(check(&|s| s.feature_incompat = feature::INCOMPAT_FAST_COMMIT).is_ok());
    }

    #[test]
    fn feature_names_read_like_dumpe2fs() {
        assert_eq!(
            feature_set_names(0, feature::INCOMPAT_64BIT | feature::INCOMPAT_CSUM_V3, 0),
            "journal_64bit, journal_checksum_v3"
        );
        assert_eq!(feature_set_names(0, 0, 0), "(none)");
        assert!(feature_set_names(1, 0x80, 0).contains("unknown bit 0x80"));
    }

    #[test]
    fn descriptor_round_trip_every_tag_form() {
        for fmt in all_formats() {
            let cap = DescriptorBuilder::capacity(&fmt);
            assert_eq!(
                cap,
                (fmt.block_size - 12 - 16 - fmt.tail_size()) / fmt.tag_bytes()
            );
            let mut rng = Lcg(fmt.incompat as u64 * 31 + fmt.block_size as u64);
            let mut d = DescriptorBuilder::new(&fmt, 77);
            let mut added = Vec::new();
            loop {
                let mut data = rng.bytes(fmt.block_size);
                if added.len() % 3 == 1 {
                    data[..4].copy_from_slice(&JBD2_MAGIC.to_be_bytes());
                }
                let blk = if fmt.is_64bit() {
                    (1u64 << 33) + added.len() as u64
                } else {
                    1000 + added.len() as u64
                };
                match d.add(blk, &data) {
                    Ok(logged) => {
                        let escaped = added.len() % 3 == 1;
                        assert_eq!(logged[..4] == [0; 4], escaped);
                        assert_eq!(&logged[4..], &data[4..]);
                        added.push((blk, data.clone(), logged.into_owned()));
                    }
                    Err(AddError::Full) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            assert_eq!(added.len(), cap, "{fmt:?}");
            assert!(d.is_full());
            let block = d.finish().unwrap();
            assert!(block_tail_ok(&fmt, &block));
            let p = Descriptor::parse(&fmt, &block).unwrap();
            assert_eq!(p.sequence, 77);
            assert!(p.checksum_ok);
            assert_eq!(p.tags.len(), cap);
            for (i, (tag, (blk, data, logged))) in p.tags.iter().zip(&added).enumerate() {
                assert_eq!(tag.blocknr, *blk);
                assert_eq!(tag.escaped(), i % 3 == 1);
                assert_eq!(tag.is_last(), i == cap - 1);
                assert_eq!(tag.flags & tag_flag::SAME_UUID != 0, i > 0);
                assert_eq!(tag.uuid.is_some(), i == 0);
                if i == 0 {
                    assert_eq!(tag.uuid, Some(fmt.uuid));
                }
                assert!(tag_checksum_ok(&fmt, tag, 77, logged));
                if fmt.csum_v2or3() {
                    assert!(!tag_checksum_ok(&fmt, tag, 78, logged));
                    let mut bad = logged.clone();
                    bad[100] ^= 0x40;
                    assert!(!tag_checksum_ok(&fmt, tag, 77, &bad));
                }
                let mut restored = logged.clone();
                unescape_block(&mut restored, tag.flags);
                assert_eq!(&restored, data);
            }
            if fmt.csum_v2or3() {
                let mut bad = block.clone();
                bad[20] ^= 1;
                assert!(!Descriptor::parse(&fmt, &bad).unwrap().checksum_ok);
            }
        }
    }

    #[test]
    fn descriptor_exact_bytes_classic_and_v3() {
        // csum v3 + 64bit: tag3 = blocknr, flags, blocknr_high, checksum (all be32).
        let fmt = fmt_with(1024, 0, feature::INCOMPAT_CSUM_V3 | feature::INCOMPAT_64BIT);
        let mut d = DescriptorBuilder::new(&fmt, 5);
        let data = vec![0x11u8; 1024];
        d.add(0x0000_0002_0000_0003, &data).unwrap();
        let b = d.finish().unwrap();
        assert_eq!(&b[0..12], &[0xC0, 0x3B, 0x39, 0x98, 0, 0, 0, 1, 0, 0, 0, 5]);
        assert_eq!(&b[12..16], &3u32.to_be_bytes());
        assert_eq!(&b[16..20], &tag_flag::LAST_TAG.to_be_bytes());
        assert_eq!(&b[20..24], &2u32.to_be_bytes());
        assert_eq!(
            &b[24..28],
            &data_block_checksum(&fmt, 5, &data).to_be_bytes()
        );
        assert_eq!(&b[28..44], &fmt.uuid);
        // Classic 32-bit tag without checksums: blocknr, be16 checksum (0), be16 flags.
        let fmt = fmt_with(1024, 0, 0);
        let mut d = DescriptorBuilder::new(&fmt, 5);
        d.add(9, &data).unwrap();
        d.add(10, &data).unwrap();
        let b = d.finish().unwrap();
        assert_eq!(&b[12..20], &[0, 0, 0, 9, 0, 0, 0, 0]);
        assert_eq!(&b[20..36], &fmt.uuid);
        assert_eq!(&b[36..44], &[0, 0, 0, 10, 0, 0, 0, 0x0A]);
        // csum v2 without 64bit: 8-byte tag + the 16-bit checksum in t_checksum (offset 4).
        let fmt = fmt_with(1024, 0, feature::INCOMPAT_CSUM_V2);
        assert_eq!(fmt.tag_bytes(), 10);
        let mut d = DescriptorBuilder::new(&fmt, 5);
        d.add(9, &data).unwrap();
        let b = d.finish().unwrap();
        let c = data_block_checksum(&fmt, 5, &data) as u16;
        assert_eq!(&b[16..18], &c.to_be_bytes());
        assert_eq!(&b[18..20], &(tag_flag::LAST_TAG as u16).to_be_bytes());
    }

    #[test]
    fn descriptor_builder_rejects_bad_input() {
        let fmt = fmt_with(1024, 0, 0);
        let mut d = DescriptorBuilder::new(&fmt, 1);
        assert_eq!(
            d.add(1 << 32, &[0; 1024]),
            Err(AddError::BlockTooLarge(1 << 32))
        );
        assert_eq!(d.add(1, &[0; 100]), Err(AddError::WrongSize(100)));
        assert!(d.finish().is_none());
    }

    #[test]
    fn commit_round_trip_and_checksums() {
        for fmt in all_formats() {
            let mut c = CommitBlock::new(99, 1_700_000_000, 123_456_789);
            if fmt.compat_checksum() {
                c = c.with_v1_checksum(0xDEAD_BEEF);
            }
            let b = c.build(&fmt);
            assert_eq!(b.len(), fmt.block_size);
            let p = CommitBlock::parse(&fmt, &b).unwrap();
            assert_eq!(p.sequence, 99);
            assert_eq!(p.commit_sec, 1_700_000_000);
            assert_eq!(p.commit_nsec, 123_456_789);
            if fmt.compat_checksum() {
                assert_eq!(p.chksum_type, checksum_type::CRC32);
                assert_eq!(p.chksum_size, 4);
                assert_eq!(p.chksum[0], 0xDEAD_BEEF);
            }
            assert!(commit_checksum_ok(&fmt, &b));
            assert!(commit_checksum_ok_partial(&fmt, &b));
            if fmt.csum_v2or3() {
                let mut bad = b.clone();
                bad[0x30] ^= 1;
                assert!(!commit_checksum_ok(&fmt, &bad));
                assert!(!commit_checksum_ok_partial(&fmt, &bad));
                // Garbage past the header: the full check fails, the partial one passes.
                let mut torn = b.clone();
                let n = torn.len();
                torn[n - 1] = 0xFF;
                assert!(!commit_checksum_ok(&fmt, &torn));
                assert!(commit_checksum_ok_partial(&fmt, &torn));
            }
        }
    }

    #[test]
    fn revoke_round_trip() {
        for fmt in all_formats() {
            let cap = RevokeBuilder::capacity(&fmt);
            let mut r = RevokeBuilder::new(&fmt, 42);
            let mut want = Vec::new();
            for i in 0.. {
                let blk = if fmt.is_64bit() {
                    (5u64 << 32) | i
                } else {
                    100 + i
                };
                match r.add(blk) {
                    Ok(()) => want.push(blk),
                    Err(AddError::Full) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            assert_eq!(want.len(), cap);
            assert_eq!(r.len(), cap);
            let b = r.finish();
            let p = RevokeBlock::parse(&fmt, &b).unwrap();
            assert_eq!(p.sequence, 42);
            assert_eq!(p.blocks, want);
            assert!(p.checksum_ok);
            assert_eq!(be32(&b, 12) as usize, 16 + cap * fmt.revoke_record_size());
            if fmt.csum_v2or3() {
                let mut bad = b.clone();
                bad[17] ^= 1;
                assert!(!RevokeBlock::parse(&fmt, &bad).unwrap().checksum_ok);
            }
            // r_count past the block is refused.
            let mut bad = b.clone();
            put_be32(&mut bad, 12, fmt.block_size as u32 + 1);
            assert!(RevokeBlock::parse(&fmt, &bad).is_err());
        }
        let fmt = fmt_with(1024, 0, 0);
        let mut r = RevokeBuilder::new(&fmt, 1);
        assert_eq!(r.add(1 << 32), Err(AddError::BlockTooLarge(1 << 32)));
        let b = RevokeBuilder::new(&fmt, 1).finish();
        assert!(RevokeBlock::parse(&fmt, &b).unwrap().blocks.is_empty());
    }

    #[test]
    fn header_and_escape_helpers() {
        let mut b = [0u8; 12];
        BlockHeader::new(blocktype::REVOKE, 9).write(&mut b);
        assert_eq!(
            BlockHeader::parse_jbd2(&b),
            Some(BlockHeader::new(blocktype::REVOKE, 9))
        );
        assert_eq!(BlockHeader::parse(&b[..11]), None);
        b[0] = 0;
        assert_eq!(BlockHeader::parse_jbd2(&b), None);
        let mut data = vec![0u8; 64];
        data[..4].copy_from_slice(&JBD2_MAGIC.to_be_bytes());
        let (e, escaped) = escape_block(&data);
        assert!(escaped);
        assert_eq!(&e[..4], &[0; 4]);
        let mut back = e.into_owned();
        unescape_block(&mut back, tag_flag::ESCAPE);
        assert_eq!(back, data);
        let plain = vec![1u8; 64];
        let (e, escaped) = escape_block(&plain);
        assert!(!escaped);
        assert!(matches!(e, Cow::Borrowed(_)));
    }

    #[test]
    fn fast_commit_head_decoding() {
        let mut b = vec![0u8; 1024];
        assert_eq!(fast_commit_head(&b), FastCommitHead::None);
        b[0..2].copy_from_slice(&fc_tag::HEAD.to_le_bytes());
        b[2..4].copy_from_slice(&8u16.to_le_bytes());
        b[4..8].copy_from_slice(&0u32.to_le_bytes());
        b[8..12].copy_from_slice(&77u32.to_le_bytes());
        assert_eq!(
            fast_commit_head(&b),
            FastCommitHead::Head {
                features: 0,
                tid: 77
            }
        );
        assert_eq!(fast_commit_head(&b[..6]), FastCommitHead::None);
    }

    #[test]
    fn parsers_never_panic_on_garbage() {
        let mut rng = Lcg(12345);
        for fmt in all_formats() {
            for round in 0..300 {
                let len = match round % 5 {
                    0 => (rng.next() % 40) as usize,
                    _ => fmt.block_size,
                };
                let mut b = rng.bytes(len);
                if round % 2 == 0 && b.len() >= 12 {
                    b[..4].copy_from_slice(&JBD2_MAGIC.to_be_bytes());
                    let t = (rng.next() % 6) as u32;
                    b[4..8].copy_from_slice(&t.to_be_bytes());
                }
                if round % 4 == 0 && b.len() >= 16 {
                    // Small r_count so revoke parsing walks records.
                    let rc = (rng.next() % fmt.block_size as u64) as u32;
                    b[12..16].copy_from_slice(&rc.to_be_bytes());
                }
                let _ = BlockHeader::parse(&b);
                let _ = JournalSuperblock::parse(&b).map(|s| s.validate(&b));
                let _ = JournalSuperblock::checksum_ok(&b);
                let _ = Descriptor::parse(&fmt, &b);
                let _ = descriptor_tags(&fmt, &b);
                let _ = CommitBlock::parse(&fmt, &b);
                let _ = commit_checksum_ok(&fmt, &b);
                let _ = commit_checksum_ok_partial(&fmt, &b);
                let _ = RevokeBlock::parse(&fmt, &b);
                let _ = block_tail_ok(&fmt, &b);
                let _ = fast_commit_head(&b);
                let mut s = b.clone();
                JournalSuperblock::seal(&mut s);
            }
            // Garbage that passes the superblock magic/type check.
            for _ in 0..50 {
                let mut b = rng.bytes(1024);
                b[..4].copy_from_slice(&JBD2_MAGIC.to_be_bytes());
                b[4..8].copy_from_slice(&4u32.to_be_bytes());
                let s = JournalSuperblock::parse(&b).unwrap();
                let _ = s.validate(&b);
                let _ = s.log_range();
                let _ = s.fast_commit_range();
            }
        }
    }
}
