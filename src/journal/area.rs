//! The journal's blocks on the device: journal block `i` lives at physical fs block `map[i]`
//! (the journal inode's block list), and block 0 holds the journal superblock.

use crate::blockdev::BlockDevice;
use crate::ondisk::jbd2::{JournalSuperblock, SUPERBLOCK_SIZE};

/// A journal mapped onto a device.
pub struct JournalArea<'a> {
    dev: &'a dyn BlockDevice,
    block_size: usize,
    map: &'a [u64],
}

/// A journal superblock read from the device: decoded, and the whole raw block (written back
/// with only the fields that change, so every other byte survives).
#[derive(Clone, Debug)]
pub struct LoadedSuperblock {
    pub sb: JournalSuperblock,
    pub raw: Vec<u8>,
}

impl<'a> JournalArea<'a> {
    /// `map[i]` is the physical block (of `block_size` bytes) holding journal block `i`.
    pub fn new(
        dev: &'a dyn BlockDevice,
        block_size: u32,
        map: &'a [u64],
    ) -> Result<JournalArea<'a>, String> {
        if !block_size.is_power_of_two() || !(1024..=65536).contains(&block_size) {
            return Err(format!("invalid file system block size {block_size}"));
        }
        if map.is_empty() {
            return Err("the journal has no blocks".into());
        }
        Ok(JournalArea {
            dev,
            block_size: block_size as usize,
            map,
        })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks mapped (the journal inode's size in blocks).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn device(&self) -> &'a dyn BlockDevice {
        self.dev
    }

    /// Byte offset on the device of journal block `jblock`.
    pub fn offset_of(&self, jblock: u32) -> Result<u64, String> {
        let p = self.map.get(jblock as usize).ok_or_else(|| {
            format!(
                "journal block {jblock} is past the end of the journal ({} blocks)",
                self.map.len()
            )
        })?;
        p.checked_mul(self.block_size as u64)
            .filter(|o| o.saturating_add(self.block_size as u64) <= self.dev.size())
            .ok_or_else(|| {
                format!("journal block {jblock} maps to block {p}, past the end of the device")
            })
    }

    /// Read journal block `jblock` into `buf` (one block).
    pub fn read_block(&self, jblock: u32, buf: &mut [u8]) -> Result<(), String> {
        let off = self.offset_of(jblock)?;
        self.dev
            .read_at(&mut buf[..self.block_size], off)
            .map_err(|e| format!("reading journal block {jblock}: {e}"))
    }

    /// Write journal block `jblock` from `buf` (one block).
    pub fn write_block(&self, jblock: u32, buf: &[u8]) -> Result<(), String> {
        let off = self.offset_of(jblock)?;
        self.dev
            .write_at(&buf[..self.block_size], off)
            .map_err(|e| format!("writing journal block {jblock}: {e}"))
    }

    pub fn flush(&self) -> Result<(), String> {
        self.dev
            .flush()
            .map_err(|e| format!("flushing the device: {e}"))
    }

    /// Read, decode and validate the journal superblock the way the kernel does before using a
    /// journal: magic and type, block size equal to the file system's, a journal no longer than
    /// its inode, sane `s_first`/`s_start`, known features, and the superblock checksum.
    pub fn load_superblock(&self) -> Result<LoadedSuperblock, String> {
        let mut raw = vec![0u8; self.block_size];
        self.read_block(0, &mut raw)?;
        let sb = JournalSuperblock::parse(&raw[..SUPERBLOCK_SIZE])?;
        if sb.block_size as usize != self.block_size {
            return Err(format!(
                "journal block size {} differs from the file system's {}",
                sb.block_size, self.block_size
            ));
        }
        if sb.maxlen as usize > self.map.len() {
            return Err(format!(
                "journal superblock says {} blocks but the journal inode maps only {}",
                sb.maxlen,
                self.map.len()
            ));
        }
        sb.validate(&raw)?;
        Ok(LoadedSuperblock { sb, raw })
    }
}
