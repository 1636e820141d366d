//! Writing transactions into the log, in the format the kernel and e2fsck replay.
//!
//! A commit writes the frozen transaction at the ring's head — descriptor blocks with tags, the
//! block images (escaped when they begin with the jbd2 magic), then revoke blocks for blocks
//! freed since an older live transaction logged them — flushes, writes the commit block and
//! flushes again: from then on the transaction survives a crash. When the log was empty, the
//! journal superblock is pointed at the new transaction before the first flush.
//!
//! Transactions stay in the log until the file system writes their blocks home and calls
//! [`JournalWriter::checkpoint_done`], which marks the log empty (flushed before the ring space
//! is reused, so recovery never starts at a tail that was overwritten). A commit that does not
//! fit the free ring space is refused; the caller checkpoints first.
//!
//! Lock order: callers serialize commits and checkpoints (the file system's commit mutex); the
//! log state mutex is taken inside, briefly, and never across I/O that another caller waits on.

use super::area::{JournalArea, LoadedSuperblock};
use super::ring::Ring;
use crate::blockdev::BlockDevice;
use crate::ondisk::jbd2::{
    AddError, CommitBlock, DescriptorBuilder, JournalFormat, JournalSuperblock, RevokeBuilder,
    feature,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// A journal the file system writes.
pub struct JournalWriter {
    sb: JournalSuperblock,
    raw: Vec<u8>,
    fmt: JournalFormat,
    /// Physical block of every journal block.
    map: Vec<u64>,
    block_size: u32,
    log: Mutex<LogState>,
    #[cfg(test)]
    mutation: Mutex<Mutation>,
}

/// Test-only faults in the write protocol, each leaving out one flush: the crash tests run with
/// them to show that they catch the ordering bug that follows (a crash test that passes with one
/// of these on is blind to it).
#[cfg(test)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mutation {
    #[default]
    None,
    /// The commit block may reach the disk before the descriptors and block images it seals.
    NoFlushBeforeCommitBlock,
    /// A commit returns before its commit block is durable.
    NoFlushAfterCommitBlock,
    /// The log is marked empty without waiting for that to be durable.
    NoFlushAfterCheckpoint,
}

struct LogState {
    ring: Ring,
    next_tid: u32,
    /// Home blocks logged by live transactions: freeing one needs a revoke record.
    logged: HashMap<u64, u32>,
    /// `s_errno` to record in the journal superblock (set when the journal aborts).
    errno: i32,
    stats: JournalStats,
}

/// Counts of what the writer did since mount.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    pub commits: u64,
    pub checkpoints: u64,
    /// Transactions that ran past the end of the ring and continued at `s_first`.
    pub wraps: u64,
    pub revoke_records: u64,
}

/// What one commit wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    pub tid: u32,
    /// Journal blocks used (descriptors, images, revoke blocks, commit block).
    pub log_blocks: u32,
    pub revoke_records: usize,
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
        let state = LogState {
            ring: Ring::new(sb.log_range()),
            next_tid: sb.sequence,
            logged: HashMap::new(),
            errno: 0,
            stats: JournalStats::default(),
        };
        Ok(JournalWriter {
            sb,
            raw,
            fmt,
            map,
            block_size,
            log: Mutex::new(state),
            #[cfg(test)]
            mutation: Mutex::new(Mutation::None),
        })
    }

    /// Turn on a test-only protocol fault (see [`Mutation`]).
    #[cfg(test)]
    pub fn set_mutation(&self, m: Mutation) {
        *self.mutation.lock().unwrap_or_else(|e| e.into_inner()) = m;
    }

    /// True when a test turned on `m`.
    #[cfg(test)]
    fn mutated(&self, m: Mutation) -> bool {
        *self.mutation.lock().unwrap_or_else(|e| e.into_inner()) == m
    }

    fn state(&self) -> MutexGuard<'_, LogState> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The journal's block map (what recovery needs).
    pub fn block_map(&self) -> &[u64] {
        &self.map
    }

    /// `s_errno` as loaded: nonzero when a previous mount aborted the journal.
    pub fn recorded_errno(&self) -> i32 {
        self.sb.errno
    }

    /// True when the log (as loaded) holds a transaction that was not checkpointed.
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
        if self.sb.log_range().len() < 16 {
            return Some("the journal is too small to hold a transaction");
        }
        None
    }

    /// Blocks one transaction may use in the log (descriptors and commit block included).
    pub fn capacity(&self) -> usize {
        self.state().ring.capacity() as usize
    }

    /// Metadata blocks a running transaction should gather at most before it is committed:
    /// a quarter of the log, as jbd2 does, so a commit never waits for a whole-log checkpoint.
    pub fn max_transaction(&self) -> usize {
        let per_desc = DescriptorBuilder::capacity(&self.fmt).max(1);
        let quarter = self.capacity() / 4;
        (quarter - quarter.div_ceil(per_desc + 1)).max(1)
    }

    /// Log blocks currently held by live (committed, not checkpointed) transactions.
    pub fn used(&self) -> usize {
        self.state().ring.used() as usize
    }

    pub fn stats(&self) -> JournalStats {
        self.state().stats
    }

    /// True when nothing waits for a checkpoint.
    pub fn is_empty(&self) -> bool {
        self.state().ring.is_empty()
    }

    /// Journal blocks a transaction of `blocks` images and `revokes` revoke records takes.
    fn blocks_needed(&self, blocks: usize, revokes: usize) -> usize {
        let per_desc = DescriptorBuilder::capacity(&self.fmt).max(1);
        let per_revoke = RevokeBuilder::capacity(&self.fmt).max(1);
        blocks + blocks.div_ceil(per_desc) + revokes.div_ceil(per_revoke) + 1
    }

    /// The revoke records a commit of `revoked` would write: only blocks a live transaction
    /// logged (older copies recovery could otherwise write over the block's new use).
    fn revokes_for(&self, st: &LogState, revoked: &[u64]) -> Vec<u64> {
        revoked
            .iter()
            .copied()
            .filter(|b| st.logged.contains_key(b))
            .collect()
    }

    /// True when a commit of these blocks fits the free log space now.
    pub fn fits(&self, blocks: usize, revoked: &[u64]) -> bool {
        let st = self.state();
        let revokes = self.revokes_for(&st, revoked).len();
        self.blocks_needed(blocks, revokes) <= st.ring.free() as usize
    }

    /// True when a commit of these blocks could never fit, even into an empty log.
    pub fn too_large(&self, blocks: usize, revoked: usize) -> bool {
        self.blocks_needed(blocks, revoked) > self.capacity()
    }

    fn area<'a>(&'a self, dev: &'a dyn BlockDevice) -> Result<JournalArea<'a>, String> {
        JournalArea::new(dev, self.block_size, &self.map)
    }

    fn write_superblock(
        &self,
        area: &JournalArea,
        start: u32,
        sequence: u32,
        errno: i32,
    ) -> Result<(), String> {
        let mut sb = self.sb.clone();
        sb.start = start;
        sb.sequence = sequence;
        sb.errno = errno;
        let mut raw = self.raw.clone();
        sb.write_into(&mut raw);
        JournalSuperblock::seal(&mut raw);
        area.write_block(0, &raw)
    }

    /// Every live transaction's blocks are home and flushed: mark the log empty and flush, so the
    /// ring space can be reused.
    pub fn checkpoint_done(&self, dev: &dyn BlockDevice) -> Result<(), String> {
        let mut st = self.state();
        if st.ring.is_empty() {
            return Ok(());
        }
        let area = self.area(dev)?;
        self.write_superblock(&area, 0, st.next_tid, st.errno)?;
        #[cfg(test)]
        let skip = self.mutated(Mutation::NoFlushAfterCheckpoint);
        #[cfg(not(test))]
        let skip = false;
        if !skip {
            area.flush()?;
        }
        st.ring.clear();
        st.logged.clear();
        st.stats.checkpoints += 1;
        Ok(())
    }

    /// Record `errno` in the journal superblock (the journal aborted). Best effort: the device
    /// may be what failed.
    pub fn record_error(&self, dev: &dyn BlockDevice, errno: i32) {
        let mut st = self.state();
        st.errno = errno;
        let (start, seq) = match st.ring.tail() {
            Some(t) => (t.start, t.tid),
            None => (0, st.next_tid),
        };
        let r = self.area(dev).and_then(|a| {
            self.write_superblock(&a, start, seq, errno)
                .and_then(|_| a.flush())
        });
        if let Err(e) = r {
            log::error!("could not record the error in the journal superblock: {e}");
        }
    }

    /// Log `blocks` (home block number, contents) and revoke records for the `revoked` blocks
    /// that need them as one transaction, and make it durable.
    pub fn commit(
        &self,
        dev: &dyn BlockDevice,
        blocks: &[(u64, Arc<[u8]>)],
        revoked: &[u64],
    ) -> Result<Committed, String> {
        let mut st = self.state();
        let revokes = self.revokes_for(&st, revoked);
        if blocks.is_empty() && revokes.is_empty() {
            return Ok(Committed {
                tid: st.next_tid.wrapping_sub(1),
                log_blocks: 0,
                revoke_records: 0,
            });
        }
        let needed = self.blocks_needed(blocks.len(), revokes.len());
        if needed > st.ring.free() as usize {
            return Err(format!(
                "a transaction of {} blocks and {} revokes needs {needed} log blocks; {} are free",
                blocks.len(),
                revokes.len(),
                st.ring.free()
            ));
        }
        let area = self.area(dev)?;
        let tid = st.next_tid;
        let start = st.ring.head();
        let mut cur = Cursor {
            pos: start,
            used: 0,
        };
        if !blocks.is_empty() {
            let mut desc_pos = cur.next(&st.ring);
            let mut desc = DescriptorBuilder::new(&self.fmt, tid);
            for (home, data) in blocks {
                let logged = match desc.add(*home, data) {
                    Ok(l) => l,
                    Err(AddError::Full) => {
                        let full =
                            std::mem::replace(&mut desc, DescriptorBuilder::new(&self.fmt, tid));
                        let full = full.finish().ok_or("an empty descriptor block")?;
                        area.write_block(desc_pos, &full)?;
                        desc_pos = cur.next(&st.ring);
                        desc.add(*home, data).map_err(|e| e.to_string())?
                    }
                    Err(e) => return Err(e.to_string()),
                };
                area.write_block(cur.next(&st.ring), &logged)?;
            }
            let last = desc.finish().ok_or("an empty descriptor block")?;
            area.write_block(desc_pos, &last)?;
        }
        for chunk in revokes.chunks(RevokeBuilder::capacity(&self.fmt).max(1)) {
            let mut rb = RevokeBuilder::new(&self.fmt, tid);
            for b in chunk {
                rb.add(*b).map_err(|e| e.to_string())?;
            }
            area.write_block(cur.next(&st.ring), &rb.finish())?;
        }
        if st.ring.is_empty() {
            // Recovery starts here from now on.
            self.write_superblock(&area, start, tid, st.errno)?;
        }
        #[cfg(test)]
        let skip = self.mutated(Mutation::NoFlushBeforeCommitBlock);
        #[cfg(not(test))]
        let skip = false;
        if !skip {
            area.flush()?;
        }
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let commit = CommitBlock::new(tid, d.as_secs(), d.subsec_nanos()).build(&self.fmt);
        area.write_block(cur.next(&st.ring), &commit)?;
        #[cfg(test)]
        let skip = self.mutated(Mutation::NoFlushAfterCommitBlock);
        #[cfg(not(test))]
        let skip = false;
        if !skip {
            area.flush()?;
        }
        let len = cur.used;
        if cur.pos <= start && len > 0 {
            st.stats.wraps += 1;
        }
        st.stats.commits += 1;
        st.stats.revoke_records += revokes.len() as u64;
        st.ring.push(tid, len);
        for (home, _) in blocks {
            st.logged.insert(*home, tid);
        }
        st.next_tid = tid.wrapping_add(1);
        Ok(Committed {
            tid,
            log_blocks: len,
            revoke_records: revokes.len(),
        })
    }
}

/// The next journal block to write within one transaction.
struct Cursor {
    pos: u32,
    used: u32,
}

impl Cursor {
    fn next(&mut self, ring: &Ring) -> u32 {
        let p = self.pos;
        self.pos = ring.advance(p, 1);
        self.used += 1;
        p
    }
}
