//! Making changes durable. Without a journal (images made with `^has_journal`, like the kernel's
//! no-journal mode) a commit writes the running transaction's blocks home and flushes; the
//! superblock's counters and state are refreshed first so e2fsck finds them exact.
//!
//! Lock order: `ns` write lock (so the transaction holds whole operations) → buffer cache.

use super::Fs;
use super::blocks::now;
use super::types::Ino;
use crate::alloc::MetaIo;
use crate::errno::{Errno, Result};
use crate::ondisk::le::{put_u16, put_u32};
use crate::ondisk::superblock::{SUPERBLOCK_OFFSET, Superblock, incompat};

const STATE_VALID: u16 = 0x1;

impl Fs {
    /// Block holding the primary superblock and the superblock's offset in it.
    fn superblock_location(&self) -> (u64, usize) {
        let bs = self.block_size as u64;
        (SUPERBLOCK_OFFSET / bs, (SUPERBLOCK_OFFSET % bs) as usize)
    }

    /// Refresh the superblock (free counts, orphan list head, state, write time) in the running
    /// transaction. `clean` marks the file system cleanly unmounted.
    pub(super) fn write_superblock(&self, clean: bool) -> Result<()> {
        let (block, off) = self.superblock_location();
        let mut data = self.read_meta_block(block)?.to_vec();
        let sb = &mut data[off..off + 1024];
        let (free_blocks, free_inodes) = self.alloc.free_counts();
        put_u32(sb, 0xC, free_blocks as u32);
        if self.sb.has_incompat(incompat::BIT64) {
            put_u32(sb, 0x158, (free_blocks >> 32) as u32);
        }
        put_u32(sb, 0x10, free_inodes as u32);
        let live = *self.sb_live.lock().unwrap_or_else(|e| e.into_inner());
        put_u32(sb, 0xE8, live.last_orphan);
        if self.journal.is_some() {
            // With a journal the file system stays "clean"; needs_recovery says a log may be live.
            put_u16(sb, 0x3A, self.sb.state | STATE_VALID);
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
            put_u16(sb, 0x3A, state);
        }
        put_u32(sb, 0x30, now().0 as u32);
        if self.sb.has_metadata_csum() {
            Superblock::set_checksum(sb);
        }
        self.write_meta(block, data);
        Ok(())
    }

    /// Write every change made so far to the device and flush it. A failure aborts: nothing more
    /// is written and the file system turns read-only (what was committed before stays valid).
    fn commit_locked(&self) -> Result<()> {
        if self.aborted.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Errno::EROFS);
        }
        let r = self.commit_inner();
        if let Err(e) = r {
            self.aborted
                .store(true, std::sync::atomic::Ordering::Release);
            log::error!(
                "metadata write failed ({e}): journal aborted, the file system is now read-only"
            );
        }
        r
    }

    fn commit_inner(&self) -> Result<()> {
        let frozen = self.cache.freeze();
        let bs = self.block_size as u64;
        if let Some(j) = &self.journal {
            j.commit(self.dev.as_ref(), &frozen.blocks).map_err(|e| {
                log::error!("journal commit failed: {e}");
                Errno::EIO
            })?;
        }
        for (b, d) in &frozen.blocks {
            self.dev.write_at(d, b * bs).map_err(|e| {
                log::error!("writing metadata block {b} failed: {e}");
                Errno::EIO
            })?;
        }
        self.dev.flush().map_err(|e| {
            log::error!("flushing the image failed: {e}");
            Errno::EIO
        })?;
        if let Some(j) = &self.journal
            && !frozen.blocks.is_empty()
        {
            // Checkpointed: the log is empty again (made durable by the next flush).
            j.reset(self.dev.as_ref()).map_err(|e| {
                log::error!("resetting the journal failed: {e}");
                Errno::EIO
            })?;
        }
        self.cache.checkpointed(&frozen);
        Ok(())
    }

    /// Flush everything to the device (FSYNC / SYNCFS / DESTROY).
    pub fn sync(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        if self.aborted.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Errno::EIO);
        }
        let _g = self.ns_write();
        self.write_superblock(false)?;
        self.commit_locked()
    }

    /// Clean unmount: free inodes still waiting on the orphan list, mark the file system clean
    /// and make it all durable.
    pub fn shutdown(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        if self.aborted.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Errno::EIO);
        }
        let pending: Vec<Ino> = self
            .orphans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        {
            let _g = self.ns_write();
            for ino in pending {
                let mut i = self.read_inode(ino)?;
                self.orphan_del(ino, &i)?;
                self.free_inode(ino, &mut i)?;
            }
            self.write_superblock(true)?;
            self.commit_locked()?;
            self.dev.flush().map_err(|e| {
                log::error!("flushing the image failed: {e}");
                Errno::EIO
            })
        }
    }
}

/// Blocks a running transaction may gather before the operation that grew it commits it.
const MAX_RUNNING_BLOCKS: usize = 8192;

impl Fs {
    /// Commit now if the running transaction grew large (called at the end of operations).
    pub(super) fn commit_if_large(&self) -> Result<()> {
        if self.cache.running_len() >= MAX_RUNNING_BLOCKS {
            self.write_superblock(false)?;
            self.commit_locked()?;
        }
        Ok(())
    }

    /// Commit every `interval` while there is something to commit, until the file system is
    /// dropped. Returns the thread's handle.
    pub fn start_commit_thread(
        fs: &std::sync::Arc<Fs>,
        interval: std::time::Duration,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let weak = std::sync::Arc::downgrade(fs);
        std::thread::Builder::new()
            .name("commit".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    let Some(fs) = weak.upgrade() else { return };
                    if fs.is_read_only() || fs.cache.running_len() == 0 {
                        continue;
                    }
                    if let Err(e) = fs.sync() {
                        log::error!("periodic commit failed: {e}");
                    }
                }
            })
    }
}

#[cfg(test)]
impl Fs {
    /// The whole device's bytes (tests over memory devices).
    pub(super) fn dev_snapshot(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.dev.size() as usize];
        self.dev
            .read_at(&mut v, 0)
            .expect("reading the device back");
        v
    }
}
