//! Writing transactions into the log, in the format the kernel and e2fsck replay.
//!
//! A commit logs the frozen transaction — descriptor blocks with tags, then the block images
//! (escaped when they begin with the jbd2 magic) — points the journal superblock at it, flushes,
//! writes the commit block and flushes again: from then on the transaction survives a crash. The
//! caller then writes the blocks home and calls [`JournalWriter::reset`], which marks the log
//! empty. Every transaction therefore starts at `s_first`, the log never wraps, and no older
//! transaction is ever replayed over newer data, so no revoke records are needed.
//!
//! Lock order: callers serialize commits (the file system's namespace write lock); the tid mutex
//! is taken inside.

use super::area::{JournalArea, LoadedSuperblock};
use crate::blockdev::BlockDevice;
use crate::ondisk::jbd2::{
    AddError, CommitBlock, DescriptorBuilder, JournalFormat, JournalSuperblock, feature,
};
use std::sync::{Arc, Mutex};

/// A journal the file system writes.
pub struct JournalWriter {
    sb: JournalSuperblock,
    raw: Vec<u8>,
    fmt: JournalFormat,
    /// Physical block of every journal block.
    map: Vec<u64>,
    block_size: u32,
    next_tid: Mutex<u32>,
}

impl JournalWriter {
    /// Load the journal mapped by `map` (journal block i → physical block `map[i]`).
    pub fn load(
        dev: &dyn BlockDevice,
        block_size: u32,
        map: Vec<u64>,
    ) -> Result<JournalWriter, String> {
        let LoadedSuperblock { sb, raw } =
            JournalArea::new(dev, block_size, &map)?.load_superblock()?;
        let fmt = sb.format();
        let next = sb.sequence;
        Ok(JournalWriter {
            sb,
            raw,
            fmt,
            map,
            block_size,
            next_tid: Mutex::new(next),
        })
    }

    /// The journal's block map (what recovery needs).
    pub fn block_map(&self) -> &[u64] {
        &self.map
    }

    /// True when the log holds a transaction that was not checkpointed.
    pub fn needs_recovery(&self) -> bool {
        self.sb.start != 0
    }

    /// Why this engine cannot write this journal, if it cannot.
    pub fn unwritable_reason(&self) -> Option<&'static str> {
        if self.fmt.compat_checksum() {
            return Some("the journal uses v1 checksums, which this engine does not write");
        }
        if self.fmt.csum_v2() && !self.fmt.csum_v3() {
            return Some("the journal uses v2 checksums, which this engine does not write");
        }
        if self.sb.feature_incompat & feature::INCOMPAT_FAST_COMMIT != 0 {
            return Some("the journal has fast commits enabled, which this engine does not write");
        }
        None
    }

    /// Blocks one transaction may use in the log (descriptors and commit block included).
    pub fn capacity(&self) -> usize {
        self.sb.log_range().len().saturating_sub(1)
    }

    fn area<'a>(&'a self, dev: &'a dyn BlockDevice) -> Result<JournalArea<'a>, String> {
        JournalArea::new(dev, self.block_size, &self.map)
    }

    fn write_superblock(
        &self,
        area: &JournalArea,
        start: u32,
        sequence: u32,
    ) -> Result<(), String> {
        let mut sb = self.sb.clone();
        sb.start = start;
        sb.sequence = sequence;
        let mut raw = self.raw.clone();
        sb.write_into(&mut raw);
        JournalSuperblock::seal(&mut raw);
        area.write_block(0, &raw)
    }

    /// Mark the log empty (after a checkpoint). Made durable by the next flush.
    pub fn reset(&self, dev: &dyn BlockDevice) -> Result<(), String> {
        let next = *self.next_tid.lock().unwrap_or_else(|e| e.into_inner());
        self.write_superblock(&self.area(dev)?, 0, next)
    }

    /// Log `blocks` (home block number, contents) as one transaction and make it durable.
    pub fn commit(&self, dev: &dyn BlockDevice, blocks: &[(u64, Arc<[u8]>)]) -> Result<(), String> {
        if blocks.is_empty() {
            return Ok(());
        }
        let per_desc = DescriptorBuilder::capacity(&self.fmt).max(1);
        let needed = blocks.len() + blocks.len().div_ceil(per_desc) + 1;
        if needed > self.capacity() {
            return Err(format!(
                "a transaction of {} blocks does not fit the journal ({} blocks)",
                blocks.len(),
                self.capacity()
            ));
        }
        let area = self.area(dev)?;
        let tid = *self.next_tid.lock().unwrap_or_else(|e| e.into_inner());
        let mut pos = self.sb.first;
        let mut desc_pos = pos;
        pos += 1;
        let mut desc = DescriptorBuilder::new(&self.fmt, tid);
        for (home, data) in blocks {
            let logged = match desc.add(*home, data) {
                Ok(l) => l,
                Err(AddError::Full) => {
                    let full = std::mem::replace(&mut desc, DescriptorBuilder::new(&self.fmt, tid));
                    area.write_block(desc_pos, &full.finish().ok_or("an empty descriptor block")?)?;
                    desc_pos = pos;
                    pos += 1;
                    desc.add(*home, data).map_err(|e| e.to_string())?
                }
                Err(e) => return Err(e.to_string()),
            };
            area.write_block(pos, &logged)?;
            pos += 1;
        }
        area.write_block(desc_pos, &desc.finish().ok_or("an empty descriptor block")?)?;
        // Point the superblock at this transaction, then seal it with the commit block.
        self.write_superblock(&area, self.sb.first, tid)?;
        area.flush()?;
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let commit = CommitBlock::new(tid, d.as_secs(), d.subsec_nanos()).build(&self.fmt);
        area.write_block(pos, &commit)?;
        area.flush()?;
        *self.next_tid.lock().unwrap_or_else(|e| e.into_inner()) = tid.wrapping_add(1);
        Ok(())
    }
}
