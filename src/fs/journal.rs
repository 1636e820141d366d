//! Writing metadata through the jbd2 journal (the file system's internal journal inode), in the
//! format the kernel and e2fsck replay.
//!
//! A commit logs the frozen transaction — descriptor blocks with tags, then the block images
//! (escaped when they begin with the jbd2 magic) — points the journal superblock at it, flushes,
//! writes the commit block and flushes again: from then on the transaction survives a crash. It
//! then writes the blocks home, flushes, and marks the log empty. Every transaction therefore
//! starts at `s_first`, the log never wraps, and no older transaction is ever replayed over newer
//! data, so no revoke records are needed.
//!
//! Lock order: callers hold the namespace write lock; the journal state mutex is taken inside.

use super::Fs;
use super::bmap::Target;
use crate::blockdev::BlockDevice;
use crate::errno::{Errno, Result};
use crate::ondisk::csum::crc32c_raw;
use std::sync::Arc;

pub const JBD2_MAGIC: u32 = 0xC03B_3998;
const BT_DESCRIPTOR: u32 = 1;
const BT_COMMIT: u32 = 2;
const BT_SUPERBLOCK_V2: u32 = 4;

/// Journal feature bits we know.
pub mod jfeature {
    pub const INCOMPAT_REVOKE: u32 = 0x1;
    pub const INCOMPAT_64BIT: u32 = 0x2;
    pub const INCOMPAT_ASYNC_COMMIT: u32 = 0x4;
    pub const INCOMPAT_CSUM_V2: u32 = 0x8;
    pub const INCOMPAT_CSUM_V3: u32 = 0x10;
    pub const COMPAT_CHECKSUM: u32 = 0x1;
}

const TAG_ESCAPE: u32 = 1;
const TAG_SAME_UUID: u32 = 2;
const TAG_LAST: u32 = 8;

fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn put_be32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}

fn put_be16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_be_bytes());
}

/// The journal superblock fields the writer uses.
#[derive(Clone, Debug)]
pub struct JournalSb {
    pub raw: Vec<u8>,
    pub block_size: u32,
    pub maxlen: u32,
    pub first: u32,
    pub sequence: u32,
    pub start: u32,
    pub incompat: u32,
    pub compat: u32,
    pub uuid: [u8; 16],
}

impl JournalSb {
    pub fn parse(b: &[u8]) -> std::result::Result<JournalSb, String> {
        if b.len() < 1024 || be32(b, 0) != JBD2_MAGIC {
            return Err("journal superblock has a bad magic number".into());
        }
        let t = be32(b, 4);
        if t != 3 && t != BT_SUPERBLOCK_V2 {
            return Err(format!("journal superblock has unknown block type {t}"));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[0x30..0x40]);
        let sb = JournalSb {
            raw: b[..1024].to_vec(),
            block_size: be32(b, 0xC),
            maxlen: be32(b, 0x10),
            first: be32(b, 0x14),
            sequence: be32(b, 0x18),
            start: be32(b, 0x1C),
            incompat: if t == BT_SUPERBLOCK_V2 {
                be32(b, 0x28)
            } else {
                0
            },
            compat: if t == BT_SUPERBLOCK_V2 {
                be32(b, 0x24)
            } else {
                0
            },
            uuid,
        };
        if sb.first == 0 || sb.first >= sb.maxlen {
            return Err(format!(
                "journal superblock has impossible s_first {} / s_maxlen {}",
                sb.first, sb.maxlen
            ));
        }
        Ok(sb)
    }

    pub fn csum_v3(&self) -> bool {
        self.incompat & jfeature::INCOMPAT_CSUM_V3 != 0
    }

    fn csum_any(&self) -> bool {
        self.incompat & (jfeature::INCOMPAT_CSUM_V2 | jfeature::INCOMPAT_CSUM_V3) != 0
    }

    fn is64(&self) -> bool {
        self.incompat & jfeature::INCOMPAT_64BIT != 0
    }

    /// Seed of the journal's block checksums.
    pub fn csum_seed(&self) -> u32 {
        crc32c_raw(!0, &self.uuid)
    }

    /// The raw superblock with `s_start` / `s_sequence` set and its checksum refreshed.
    fn encode(&self, start: u32, sequence: u32) -> Vec<u8> {
        let mut b = self.raw.clone();
        put_be32(&mut b, 0x18, sequence);
        put_be32(&mut b, 0x1C, start);
        if self.csum_any() {
            put_be32(&mut b, 0xFC, 0);
            let c = crc32c_raw(!0, &b[..1024]);
            put_be32(&mut b, 0xFC, c);
        }
        b
    }

    /// Bytes one descriptor tag takes.
    fn tag_bytes(&self) -> usize {
        if self.csum_v3() {
            16
        } else {
            let sz = 12
                + if self.incompat & jfeature::INCOMPAT_CSUM_V2 != 0 {
                    2
                } else {
                    0
                };
            if self.is64() { sz } else { sz - 4 }
        }
    }
}

/// The journal as the file system writes it.
pub(super) struct Journal {
    pub sb: JournalSb,
    /// Physical block of every journal block.
    map: Vec<u64>,
    next_tid: std::sync::Mutex<u32>,
}

impl Journal {
    /// Load the journal of inode `jino`: its superblock and block map.
    pub(super) fn load(fs: &Fs, jino: u64) -> Result<Journal> {
        let inode = fs.read_inode(jino)?;
        let bs = fs.block_size as u64;
        let nblocks = inode.size / bs;
        let mut map = Vec::with_capacity(nblocks as usize);
        let mut l = 0u64;
        while l < nblocks {
            let m = fs.map_block(jino, &inode, l)?;
            match m.target {
                Target::Data { pblk, .. } => {
                    for i in 0..m.len.min(nblocks - l) {
                        map.push(pblk + i);
                    }
                }
                Target::Hole => {
                    return Err(crate::corrupt!(
                        "journal inode {jino} has a hole at block {l}"
                    ));
                }
            }
            l += m.len;
        }
        let Some(&first) = map.first() else {
            return Err(crate::corrupt!("journal inode {jino} is empty"));
        };
        let mut b = vec![0u8; bs as usize];
        fs.dev.read_at(&mut b, first * bs).map_err(|e| {
            log::error!("reading the journal superblock failed: {e}");
            Errno::EIO
        })?;
        let sb = JournalSb::parse(&b).map_err(|e| crate::corrupt!("journal inode {jino}: {e}"))?;
        if sb.block_size != fs.block_size || sb.maxlen as usize > map.len() {
            return Err(crate::corrupt!(
                "journal superblock (block size {}, {} blocks) does not match its inode ({} blocks)",
                sb.block_size,
                sb.maxlen,
                map.len()
            ));
        }
        let next = sb.sequence;
        Ok(Journal {
            sb,
            map,
            next_tid: std::sync::Mutex::new(next),
        })
    }

    /// Physical block of every journal block (what recovery needs).
    pub(super) fn block_map(&self) -> &[u64] {
        &self.map
    }

    /// Blocks one transaction may use in the log (descriptors and commit block included).
    pub(super) fn capacity(&self) -> usize {
        (self.sb.maxlen - self.sb.first) as usize
    }

    /// True when the log holds a transaction that was not checkpointed.
    pub(super) fn needs_recovery(&self) -> bool {
        self.sb.start != 0
    }

    /// Can we write this journal's format?
    pub(super) fn writable_reason(&self) -> Option<&'static str> {
        let known = jfeature::INCOMPAT_REVOKE
            | jfeature::INCOMPAT_64BIT
            | jfeature::INCOMPAT_CSUM_V3
            | jfeature::INCOMPAT_ASYNC_COMMIT;
        if self.sb.compat & jfeature::COMPAT_CHECKSUM != 0 {
            return Some("the journal uses v1 checksums, which this engine does not write");
        }
        if self.sb.incompat & !known != 0 {
            return Some(
                "the journal uses features this engine does not write (csum v2 or fast commit)",
            );
        }
        None
    }

    fn write(&self, dev: &dyn BlockDevice, bs: u64, jblock: u32, data: &[u8]) -> Result<()> {
        let p = self.map[jblock as usize];
        dev.write_at(data, p * bs).map_err(|e| {
            log::error!("journal write at journal block {jblock} (block {p}) failed: {e}");
            Errno::EIO
        })
    }

    fn flush(dev: &dyn BlockDevice) -> Result<()> {
        dev.flush().map_err(|e| {
            log::error!("flushing the journal failed: {e}");
            Errno::EIO
        })
    }

    /// Mark the log empty (after recovery, at mount, after a checkpoint).
    pub(super) fn reset(&self, dev: &dyn BlockDevice, bs: u64) -> Result<()> {
        let next = *self.next_tid.lock().unwrap_or_else(|e| e.into_inner());
        let mut b = vec![0u8; bs as usize];
        b[..1024].copy_from_slice(&self.sb.encode(0, next));
        self.write(dev, bs, 0, &b)
    }

    /// Log `blocks` as one transaction and make it durable. The caller then writes them home.
    pub(super) fn commit(
        &self,
        dev: &dyn BlockDevice,
        bs: u64,
        blocks: &[(u64, Arc<[u8]>)],
    ) -> Result<()> {
        if blocks.is_empty() {
            return Ok(());
        }
        let tid = *self.next_tid.lock().unwrap_or_else(|e| e.into_inner());
        let sb = &self.sb;
        let seed = sb.csum_seed();
        let tag_bytes = sb.tag_bytes();
        let tail = if sb.csum_any() { 4 } else { 0 };
        let bsz = bs as usize;
        let mut pos = sb.first;
        let mut i = 0;
        let needed = blocks.len() + blocks.len().div_ceil((bsz - 12 - tail - 16) / tag_bytes) + 1;
        if needed > self.capacity() {
            log::error!(
                "transaction of {} blocks does not fit the journal ({} blocks)",
                blocks.len(),
                self.capacity()
            );
            return Err(Errno::ENOSPC);
        }
        while i < blocks.len() {
            let desc_pos = pos;
            pos += 1;
            let mut desc = vec![0u8; bsz];
            put_be32(&mut desc, 0, JBD2_MAGIC);
            put_be32(&mut desc, 4, BT_DESCRIPTOR);
            put_be32(&mut desc, 8, tid);
            let mut off = 12;
            let mut first = true;
            let mut last_tag_off = 0;
            while i < blocks.len() {
                let need = tag_bytes + if first { 16 } else { 0 };
                if off + need > bsz - tail {
                    break;
                }
                let (home, data) = &blocks[i];
                let mut logged = data.to_vec();
                let mut flags = if first { 0 } else { TAG_SAME_UUID };
                if be32(&logged, 0) == JBD2_MAGIC {
                    logged[..4].fill(0);
                    flags |= TAG_ESCAPE;
                }
                let csum = if sb.csum_any() {
                    let c = crc32c_raw(seed, &tid.to_be_bytes());
                    crc32c_raw(c, &logged)
                } else {
                    0
                };
                if sb.csum_v3() {
                    put_be32(&mut desc, off, *home as u32);
                    put_be32(&mut desc, off + 4, flags);
                    put_be32(&mut desc, off + 8, (*home >> 32) as u32);
                    put_be32(&mut desc, off + 12, csum);
                } else {
                    put_be32(&mut desc, off, *home as u32);
                    put_be16(&mut desc, off + 4, csum as u16);
                    put_be16(&mut desc, off + 6, flags as u16);
                    if sb.is64() {
                        put_be32(&mut desc, off + 8, (*home >> 32) as u32);
                    }
                }
                last_tag_off = off;
                off += tag_bytes;
                if first {
                    desc[off..off + 16].copy_from_slice(&sb.uuid);
                    off += 16;
                    first = false;
                }
                self.write(dev, bs, pos, &logged)?;
                pos += 1;
                i += 1;
            }
            // The last tag of this descriptor.
            if sb.csum_v3() {
                let f = be32(&desc, last_tag_off + 4);
                put_be32(&mut desc, last_tag_off + 4, f | TAG_LAST);
            } else {
                let f = u16::from_be_bytes([desc[last_tag_off + 6], desc[last_tag_off + 7]]);
                put_be16(&mut desc, last_tag_off + 6, f | TAG_LAST as u16);
            }
            if sb.csum_any() {
                let c = crc32c_raw(seed, &desc);
                put_be32(&mut desc, bsz - 4, c);
            }
            self.write(dev, bs, desc_pos, &desc)?;
        }
        // Point the superblock at this transaction, then seal it with the commit block.
        let mut jsb = vec![0u8; bsz];
        jsb[..1024].copy_from_slice(&sb.encode(sb.first, tid));
        self.write(dev, bs, 0, &jsb)?;
        Self::flush(dev)?;
        let mut commit = vec![0u8; bsz];
        put_be32(&mut commit, 0, JBD2_MAGIC);
        put_be32(&mut commit, 4, BT_COMMIT);
        put_be32(&mut commit, 8, tid);
        let now = super::blocks::now();
        commit[48..56].copy_from_slice(&(now.0 as u64).to_be_bytes());
        put_be32(&mut commit, 56, now.1);
        if sb.csum_any() {
            let c = crc32c_raw(seed, &commit);
            put_be32(&mut commit, 16, c);
        }
        self.write(dev, bs, pos, &commit)?;
        Self::flush(dev)?;
        *self.next_tid.lock().unwrap_or_else(|e| e.into_inner()) = tid.wrapping_add(1);
        Ok(())
    }
}
