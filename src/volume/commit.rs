//! Making changes durable: journal handles, commits, checkpoints, and the commit thread.
//!
//! An operation that changes metadata runs in a journal handle ([`Volume::start_handle`], the
//! machinery in `journal::handle`): the handle joins the running transaction (counted in its
//! `t_updates`, its credits reserved); when the transaction could outgrow its limit with the
//! blocks the operation may dirty, the transaction is committed first. A commit locks the
//! running transaction against new handles, waits until the open ones ended, freezes it (a new
//! one starts at once and the waiting handles join it), then — holding only the commit lock —
//! logs it in the journal with two flushes. Its blocks stay in the buffer cache as
//! committed-not-home until a checkpoint writes the newest copy of each home, flushes, and marks
//! the log empty; that happens when the log has no room for the next commit, in the commit
//! thread when the log is half full, and at unmount.
//!
//! Without a journal (images made with `^has_journal`, like the kernel's no-journal mode) a
//! commit writes the running transaction's blocks home and flushes; the superblock's counters
//! and state are refreshed first so e2fsck finds them exact.
//!
//! Lock order: commit lock → the running transaction locked (open handles drained) → buffer
//! cache → journal log state. A committer holds no handle and takes no namespace lock (a
//! handle starter that must commit may hold `ns`); handles never take the commit lock.

use super::{Volume, now};
use crate::alloc::MetaIo;
use crate::cache::Frozen;
use crate::errno::{Errno, Result};
use crate::journal::handle::{CommitLock, Handle, Start};
use crate::ondisk::le::{put_u16, put_u32};
use crate::ondisk::superblock::{SUPERBLOCK_OFFSET, Superblock, incompat};
use crate::volume::errors::STATE_ERROR;
use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex, MutexGuard};

const STATE_VALID: u16 = 0x1;

/// Blocks an ordinary operation may dirty (inode table blocks, directory blocks and htree
/// splits, bitmaps, group descriptors, extent nodes, the superblock).
pub(crate) const DEFAULT_CREDITS: usize = 64;

/// Without a journal: blocks a running transaction may gather before it is written home.
const MAX_RUNNING_BLOCKS: usize = 8192;

impl Volume {
    /// Block holding the primary superblock and the superblock's offset in it.
    fn superblock_location(&self) -> (u64, usize) {
        let bs = self.block_size as u64;
        (SUPERBLOCK_OFFSET / bs, (SUPERBLOCK_OFFSET % bs) as usize)
    }

    /// Refresh the superblock (free counts, orphan list head, state, write time) in the running
    /// transaction. `clean` marks the file system cleanly unmounted.
    pub(crate) fn write_superblock(&self, clean: bool) -> Result<()> {
        let (block, data) = self.superblock_image(clean)?;
        self.write_meta(block, data);
        Ok(())
    }

    /// The superblock's block with counters, orphan list head, state, error counts and write time
    /// brought up to date.
    fn superblock_image(&self, clean: bool) -> Result<(u64, Vec<u8>)> {
        let (block, off) = self.superblock_location();
        let mut data = self.read_meta_block(block)?.to_vec();
        let sb = &mut data[off..off + 1024];
        let (free_blocks, free_inodes) = self.alloc.free_counts();
        put_u32(sb, 0xC, free_blocks as u32);
        if self.sb.has_incompat(incompat::BIT64) {
            put_u32(sb, 0x158, (free_blocks >> 32) as u32);
        }
        put_u32(sb, 0x10, free_inodes as u32);
        let mut live = self.sb_live.lock().unwrap_or_else(|e| e.into_inner());
        put_u32(sb, 0xE8, live.last_orphan);
        live.stamp_errors(sb);
        let errors = if live.error_fs { STATE_ERROR } else { 0 };
        drop(live);
        if self.journal.is_some() {
            // With a journal the file system stays "clean"; needs_recovery says a log may be live.
            put_u16(sb, 0x3A, self.sb.state | STATE_VALID | errors);
            let mut inc = self.sb.feature_incompat;
            if clean {
                inc &= !incompat::RECOVER;
            } else {
                inc |= incompat::RECOVER;
            }
            put_u32(sb, 0x60, inc);
        } else {
            let state = if clean {
                self.sb.state | STATE_VALID
            } else {
                self.sb.state & !STATE_VALID
            };
            put_u16(sb, 0x3A, state | errors);
        }
        put_u32(sb, 0x30, now().0 as u32);
        if self.sb.has_metadata_csum() {
            Superblock::set_checksum(sb);
        }
        Ok((block, data))
    }

    /// errors=remount-ro: write the superblock (with the error recorded) straight home, then
    /// abort the journal. The running transaction is dropped, as jbd2 drops it on abort.
    pub(crate) fn error_remount_ro(&self) {
        let _live = self.commit_guard();
        let r = self.superblock_image(false).and_then(|(block, data)| {
            self.dev
                .write_at(&data, block * self.block_size as u64)
                .and_then(|_| self.dev.flush())
                .map_err(|e| Self::io_err("writing the superblock failed", e))
        });
        if let Err(e) = r {
            log::error!("could not record the error in the superblock: {e}");
        }
        self.abort(Errno::EUCLEAN);
    }

    /// Blocks the running transaction may hold before it must be committed.
    pub(crate) fn max_transaction(&self) -> usize {
        match &self.journal {
            Some(j) => j.max_transaction(),
            None => MAX_RUNNING_BLOCKS,
        }
    }

    /// Start a journal handle that may dirty up to `credits` metadata blocks: it joins the
    /// running transaction, after committing it first when it would outgrow its limit. Ends
    /// when dropped. A thread that holds one already gets a nested handle.
    pub(crate) fn start_handle(&self, credits: usize) -> Handle<'_> {
        let mut force = self.is_read_only();
        loop {
            match self.gate.try_start(
                credits,
                || self.cache.running_len(),
                self.max_transaction(),
                force,
            ) {
                Start::Joined(h) => return h,
                Start::Full { frozen } => {
                    if let Err(e) = self.commit_running_after(Some(frozen), || Ok(()), false) {
                        // The journal aborted; the operation sees a read-only file system.
                        log::error!("commit before a full transaction grew larger failed: {e}");
                        force = true;
                    }
                }
            }
        }
    }

    /// Lock the running transaction against new handles and wait for the open ones to end.
    fn lock_running(&self) -> Result<CommitLock<'_>> {
        self.gate.lock_for_commit().ok_or_else(|| {
            log::error!("internal error: a commit from inside a journal handle");
            Errno::EIO
        })
    }

    pub(crate) fn commit_guard(&self) -> MutexGuard<'_, Vec<Frozen>> {
        self.commit_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Abort: nothing more is written, the file system turns read-only, and the journal records
    /// the error for the next mount and e2fsck.
    pub(crate) fn abort(&self, e: Errno) {
        if self.aborted.swap(true, Ordering::AcqRel) {
            return;
        }
        log::error!("journal aborted ({e}): the file system is now read-only");
        if let Some(j) = &self.journal {
            j.record_error(self.dev.as_ref(), -libc::EIO);
        }
    }

    fn io_err(what: &str, e: impl std::fmt::Display) -> Errno {
        log::error!("{what}: {e}");
        Errno::EIO
    }

    /// Commit the running transaction: with it locked and its handles drained, run `prepare`
    /// (as part of it) and refresh the superblock, freeze, then log (or, without a journal,
    /// write home) with new handles joining the next transaction.
    pub(crate) fn commit_running(
        &self,
        prepare: impl FnOnce() -> Result<()>,
        clean: bool,
    ) -> Result<()> {
        self.commit_running_after(None, prepare, clean)
    }

    /// [`Volume::commit_running`]; with `Some(frozen)`, only when the transaction running after
    /// `frozen` commits is still running (a handle starter found it full, and another starter
    /// may have committed it meanwhile).
    fn commit_running_after(
        &self,
        frozen: Option<u64>,
        prepare: impl FnOnce() -> Result<()>,
        clean: bool,
    ) -> Result<()> {
        let mut live = self.commit_guard();
        if self.aborted.load(Ordering::Acquire) {
            return Err(Errno::EIO);
        }
        if frozen.is_some_and(|f| f != self.gate.frozen()) {
            return Ok(());
        }
        let frozen = {
            let mut locked = self.lock_running()?;
            prepare()?;
            if self.cache.running_len() == 0 && !clean {
                return Ok(());
            }
            self.write_superblock(clean)?;
            self.alloc.busy_freeze();
            locked.frozen();
            self.cache.freeze()
        };
        let r = self.log_transaction(&mut live, frozen);
        match r {
            // The commit block is durable: blocks the transaction freed may take data now.
            Ok(()) => self.alloc.busy_committed(),
            Err(e) => self.abort(e),
        }
        r
    }

    fn log_transaction(&self, live: &mut Vec<Frozen>, frozen: Frozen) -> Result<()> {
        let Some(j) = &self.journal else {
            self.write_home(std::slice::from_ref(&frozen))?;
            self.cache.checkpointed(&frozen);
            return Ok(());
        };
        if j.too_large(frozen.blocks.len(), frozen.revoked.len()) {
            log::error!(
                "a transaction of {} blocks does not fit the journal ({} blocks)",
                frozen.blocks.len(),
                j.capacity()
            );
            return Err(Errno::EIO);
        }
        if self.home_sb_clean.swap(false, Ordering::AcqRel) {
            // An unmount (DESTROY) left the home superblock clean and the file system is in use
            // again (a guest that mounts it anew): the home copy must say needs_recovery before
            // the log holds anything, or a crash would leave a log nobody replays.
            let (sb_block, _) = self.superblock_location();
            if let Some((b, d)) = frozen.blocks.iter().find(|(b, _)| *b == sb_block) {
                self.write_blocks_and_flush(std::iter::once((*b, d)))?;
            }
        }
        if !j.fits(frozen.blocks.len(), &frozen.revoked) {
            self.checkpoint_locked(live)?;
        }
        j.commit(self.dev.as_ref(), &frozen.blocks, &frozen.revoked)
            .map_err(|e| Self::io_err("journal commit failed", e))?;
        live.push(frozen);
        Ok(())
    }

    /// Write the newest copy of every block `txns` (oldest first) logged home, and flush. A
    /// block a later one of them freed is skipped (it may have a new owner). Copies a running or
    /// frozen-but-uncommitted transaction holds are not used: they are not durable yet.
    fn write_home(&self, txns: &[Frozen]) -> Result<()> {
        let mut newest: std::collections::BTreeMap<u64, &std::sync::Arc<[u8]>> =
            std::collections::BTreeMap::new();
        for f in txns {
            for (b, d) in &f.blocks {
                newest.insert(*b, d);
            }
            for b in &f.revoked {
                newest.remove(b);
            }
        }
        self.write_blocks_and_flush(newest.into_iter())
    }

    /// Write blocks home and flush.
    fn write_blocks_and_flush<'a>(
        &self,
        blocks: impl Iterator<Item = (u64, &'a std::sync::Arc<[u8]>)>,
    ) -> Result<()> {
        let bs = self.block_size as u64;
        for (b, d) in blocks {
            self.dev
                .write_at(d, b * bs)
                .map_err(|e| Self::io_err(&format!("writing metadata block {b} failed"), e))?;
        }
        self.dev
            .flush()
            .map_err(|e| Self::io_err("flushing the image failed", e))
    }

    /// Checkpoint every committed transaction: blocks home, flush, log empty.
    pub(crate) fn checkpoint_locked(&self, live: &mut Vec<Frozen>) -> Result<()> {
        let Some(j) = &self.journal else {
            return Ok(());
        };
        if live.is_empty() {
            return Ok(());
        }
        self.write_home(live)?;
        j.checkpoint_done(self.dev.as_ref())
            .map_err(|e| Self::io_err("marking the journal checkpointed failed", e))?;
        for f in live.drain(..) {
            self.cache.checkpointed(&f);
        }
        Ok(())
    }

    /// Checkpoint now (the commit thread, when the log fills up).
    pub(crate) fn checkpoint(&self) -> Result<()> {
        let mut live = self.commit_guard();
        if self.aborted.load(Ordering::Acquire) {
            return Err(Errno::EIO);
        }
        let r = self.checkpoint_locked(&mut live);
        if let Err(e) = r {
            self.abort(e);
        }
        r
    }

    /// What the journal writer did since mount (`None` without a journal).
    pub fn journal_stats(&self) -> Option<crate::journal::commit::JournalStats> {
        self.journal.as_ref().map(|j| j.stats())
    }

    /// Make every change so far durable (FSYNC / FSYNCDIR / SYNCFS): commit the running
    /// transaction; committed transactions are already durable.
    pub fn sync(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        if self.aborted.load(Ordering::Acquire) {
            return Err(Errno::EIO);
        }
        self.commit_running(|| Ok(()), false)
    }

    /// Write the superblock home directly, outside the log, and flush: at a writable mount (the
    /// kernel and e2fsck replay the log only when the home superblock says needs_recovery, so it
    /// must say so before the first commit) and at unmount, after the last checkpoint. Callers
    /// hold the commit lock or run before any operation. The superblock must go home alone:
    /// when a transaction is running, nothing is written and the answer is `false`.
    pub(crate) fn superblock_home(&self, clean: bool) -> Result<bool> {
        let frozen = {
            let mut locked = self.lock_running()?;
            if self.cache.running_len() != 0 {
                return Ok(false);
            }
            self.write_superblock(clean)?;
            locked.frozen();
            self.cache.freeze()
        };
        self.write_home_unjournaled(&frozen)?;
        self.cache.checkpointed(&frozen);
        Ok(true)
    }

    /// Write a transaction home without logging it (the log is empty, nothing else changes).
    fn write_home_unjournaled(&self, f: &Frozen) -> Result<()> {
        self.write_blocks_and_flush(f.blocks.iter().map(|(b, d)| (*b, d)))
    }

    /// Wake the commit thread when the running transaction is half full (called at the end of
    /// operations that may grow it a lot); the hard limit is enforced by [`Volume::start_handle`].
    pub(crate) fn commit_if_large(&self) -> Result<()> {
        if self.cache.running_len() >= self.max_transaction() / 2 {
            self.commit_kick.kick();
        }
        Ok(())
    }
}

/// Wakes the commit thread before its interval is up.
#[derive(Default)]
pub(crate) struct CommitKick {
    kicked: Mutex<bool>,
    cv: Condvar,
}

impl CommitKick {
    pub(crate) fn kick(&self) {
        *self.kicked.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_one();
    }

    /// Wait up to `interval` for a kick.
    pub(crate) fn wait(&self, interval: std::time::Duration) {
        let g = self.kicked.lock().unwrap_or_else(|e| e.into_inner());
        let (mut g, _) = self
            .cv
            .wait_timeout_while(g, interval, |kicked| !*kicked)
            .unwrap_or_else(|e| e.into_inner());
        *g = false;
    }
}
