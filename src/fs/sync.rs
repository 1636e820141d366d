//! Unmount and the commit thread: the operation API's side of making changes durable (the
//! commit machinery itself is `volume::commit`).

use super::Fs;
use super::types::Ino;
use crate::errno::{Errno, Result};
use std::sync::atomic::Ordering;

impl Fs {
    /// Clean unmount: free inodes still waiting on the orphan list, commit, checkpoint, and mark
    /// the file system clean (the superblock written home last, as the kernel does).
    pub fn shutdown(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        if self.aborted.load(Ordering::Acquire) {
            return Err(Errno::EIO);
        }
        // File data first: everything dirty goes home and converts before the last commits.
        self.data_shutdown()?;
        self.reap_deferred();
        let pending: Vec<Ino> = self.inodes.take_orphans();
        // A big map is freed in steps first, each its own transaction.
        for ino in &pending {
            self.free_blocks_in_steps(*ino, 0)?;
        }
        let free_orphans = || {
            for ino in pending {
                let mut i = self.read_inode(ino)?;
                self.orphan_del(ino, &i)?;
                self.free_inode(ino, &mut i)?;
            }
            Ok(())
        };
        if self.journal.is_none() {
            return self.commit_running(free_orphans, true);
        }
        self.commit_running(free_orphans, false)?;
        // An operation racing the unmount (a FORGET handled by another worker) may start a new
        // transaction: commit that too, until the checkpointed log has nothing running beside it.
        for _ in 0..8 {
            let mut live = self.commit_guard();
            let r = self
                .checkpoint_locked(&mut live)
                .and_then(|_| self.superblock_home(true));
            drop(live);
            match r {
                Ok(true) => {
                    self.home_sb_clean.store(true, Ordering::Release);
                    return Ok(());
                }
                Ok(false) => self.commit_running(|| Ok(()), false)?,
                Err(e) => {
                    self.abort(e);
                    return Err(e);
                }
            }
        }
        log::error!(
            "unmount: operations kept arriving; the journal stays live and is replayed at the next mount"
        );
        Err(Errno::EBUSY)
    }

    /// Commit every `interval` (or sooner when kicked) while there is something to commit, and
    /// checkpoint when the log is half full, until the file system is dropped.
    pub fn start_commit_thread(
        fs: &std::sync::Arc<Fs>,
        interval: std::time::Duration,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let weak = std::sync::Arc::downgrade(fs);
        std::thread::Builder::new()
            .name("commit".into())
            .spawn(move || {
                loop {
                    // Wait without keeping the file system alive.
                    let Some(kick) = weak.upgrade().map(|fs| fs.commit_kick.clone()) else {
                        return;
                    };
                    kick.wait(interval);
                    let Some(fs) = weak.upgrade() else { return };
                    if fs.is_read_only() {
                        continue;
                    }
                    if fs.cache.running_len() > 0
                        && let Err(e) = fs.sync()
                    {
                        log::error!("periodic commit failed: {e}");
                    }
                    if let Some(j) = &fs.journal
                        && j.used() * 2 > j.capacity()
                        && let Err(e) = fs.checkpoint()
                    {
                        log::error!("checkpoint failed: {e}");
                    }
                }
            })
    }
}

#[cfg(test)]
impl Fs {
    /// The whole device's bytes (tests over memory devices).
    pub(crate) fn dev_snapshot(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.dev.size() as usize];
        self.dev
            .read_at(&mut v, 0)
            .expect("reading the device back");
        v
    }
}
