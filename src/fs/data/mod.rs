//! File data: the in-core inode table, the page cache's policy (eviction, dirty limits,
//! background writeback) and ext4's side of the data path — buffered write with delayed
//! allocation (`write`), cached reads with readahead (`read`), writeback through unwritten
//! extents converted at I/O completion (`writeback`), truncate, fallocate and copy
//! (`space`), fsync and syncfs, and giving memory back when the host runs short (`pressure`).
//!
//! The rules (they keep the image a valid ext4 at every crash point):
//! * No data=ordered: a block that gets data for the first time is allocated as an **unwritten**
//!   extent and becomes written only after the data write completed (`writeback`). A crash never
//!   exposes another file's old blocks.
//! * `i_disksize` (what the on-disk inode says) moves at I/O completion, to
//!   `min(end of completed I/O, i_size)`; `i_size` (what users see) moves at write time.
//! * A buffered write reserves its new blocks (delalloc) and records them as *delayed* in the
//!   extent status tree; a short or failed write releases what it did not use.
//! * Data never goes into a block freed by a transaction that has not committed yet
//!   (`alloc::busy`).
//!
//! Lock order: `InodeData::rw` (i_rwsem: writers, truncate and fallocate exclusive; reads and
//! writeback planning shared; writeback's device writes and completion run without it, on
//! blocks marked under writeback in the page map) → `ns` (read for the data path's metadata
//! steps, `Volume::data_step`, and block-map readers, `Volume::map_read`; write for namespace
//! operations and block-map changes outside the data path) → journal handle →
//! `InodeData::data_sem` (i_data_sem) → allocator → buffer locks → `InodeData::pages` (never
//! held across device I/O except to read a page in) → the page cache's counters. Eviction, and
//! writers writing back other files, take other files' `rw` only with `try_*`; a writer never
//! waits for the flusher while holding its own, so the flusher may block on it.

mod dax;
mod pressure;
mod read;
mod space;
mod write;
mod writeback;

pub(in crate::fs) use writeback::Hold;

pub use dax::{DaxPin, DaxRevoker, Revoked};
pub use read::ReadSink;
pub use space::{
    FALLOC_FL_COLLAPSE_RANGE, FALLOC_FL_INSERT_RANGE, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
};
pub use write::{KILL_SUIDGID, WriteSource};

use super::Fs;
use super::types::Ino;
use crate::errno::{Errno, Result};
use crate::pagecache::pressure::{HostMemory, MemorySource};
use crate::pagecache::{Mapping, PageCache};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Slabs of address space per slab the cache size needs when full: a small file takes a whole
/// 2 MiB slab for its few pages, so many small files need many slabs (address space only; a
/// slab costs memory only for the pages touched).
const SLAB_FACTOR: u32 = 32;

/// A page dirty this long is written back by the flusher (the kernel's dirty_expire).
const DIRTY_EXPIRE: Duration = Duration::from_secs(30);

pub(crate) use crate::volume::incore::{InodeData, Sizes};

/// Wakes the flusher thread.
#[derive(Default)]
struct Kick {
    kicked: Mutex<bool>,
    cv: Condvar,
    /// Writers waiting for dirty pages to go down.
    cleaned: Condvar,
}

/// The data path's shared state, one per mounted file system.
pub(super) struct DataState {
    pub pc: PageCache,
    kick: Arc<Kick>,
    /// The flusher thread should stop (unmount).
    stop: AtomicBool,
    /// Unlinked files with cached data, to free once the namespace lock is released.
    deferred: Mutex<Vec<Ino>>,
    /// The owner of a DAX window showing our pages, if any.
    revoker: RwLock<Option<std::sync::Weak<dyn DaxRevoker>>>,
    /// Where the host's memory state comes from (see `pressure`).
    memory: RwLock<Arc<dyn MemorySource>>,
    /// The host was short of memory at the last look (log once per episode).
    pressed: AtomicBool,
    /// When reads and writes last looked at the memory state (ms since `started`).
    last_look: AtomicU64,
    started: Instant,
}

impl DataState {
    pub fn new(cache_bytes: u64) -> std::io::Result<DataState> {
        Ok(DataState {
            pc: PageCache::new(cache_bytes, SLAB_FACTOR)?,
            kick: Arc::new(Kick::default()),
            stop: AtomicBool::new(false),
            deferred: Mutex::new(Vec::new()),
            revoker: RwLock::new(None),
            memory: RwLock::new(Arc::new(HostMemory::new())),
            pressed: AtomicBool::new(false),
            last_look: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    fn kick_flusher(&self) {
        *self.kick.kicked.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.kick.cv.notify_one();
    }
}

impl Fs {
    /// The in-core state of regular file `ino`, created (sizes read from the inode) on first use.
    pub(super) fn inode_data(&self, ino: Ino) -> Result<Arc<InodeData>> {
        if let Some(d) = self.inodes.get(ino) {
            return Ok(d);
        }
        let _g = self.ns_read();
        let inode = self.read_inode(ino)?;
        if inode.is_dir() {
            return Err(Errno::EISDIR);
        }
        if !inode.is_reg() {
            return Err(Errno::EINVAL);
        }
        Ok(self
            .inodes
            .get_or_insert_with(ino, || InodeData::new(inode.size)))
    }

    /// Free `ino` (orphaned, unreferenced, with cached data) once the caller released `ns`.
    pub(super) fn defer_reap(&self, ino: Ino) {
        self.data
            .deferred
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ino);
    }

    /// Free the files `defer_reap` queued. Called without the namespace lock.
    pub(super) fn reap_deferred(&self) {
        let list =
            std::mem::take(&mut *self.data.deferred.lock().unwrap_or_else(|e| e.into_inner()));
        for ino in list {
            if self.lookup_count(ino) == 0 {
                self.reap_if_orphan(ino);
            }
        }
    }

    /// The in-core state of `ino`, when it has one.
    pub(super) fn data_if_cached(&self, ino: Ino) -> Option<Arc<InodeData>> {
        self.inodes.get(ino)
    }

    /// Forget `ino`'s cached data and release its reservations: it is being freed. The caller
    /// holds `d.rw` exclusively (or knows no one else uses the inode).
    pub(super) fn drop_inode_data(&self, ino: Ino) {
        let Some(d) = self.inodes.get(ino) else {
            return;
        };
        // No window may show the pages of a file being freed.
        self.dax_revoke(ino, &d, 0, u64::MAX);
        self.inodes.remove(ino);
        d.pages().drop_range(&self.data.pc, 0, u64::MAX);
        if d.pages().pinned_chunks() > 0 {
            // Window ranges the transport already unmapped, their unpin on its way: the slabs
            // go back then (the pin names this in-core state, not the inode number).
            log::debug!("inode {ino}: freed with window pins in flight");
        }
        let delayed = self.es.delayed_blocks(ino);
        self.es.remove(ino, 0, u64::MAX);
        self.alloc.release(delayed);
    }

    /// fsync: write back the file's dirty pages, wait for their completion (unwritten
    /// conversion, i_disksize), then commit the journal (or flush the device when nothing is
    /// left to commit). A writeback error since the last fsync is reported once, as EIO.
    pub fn fsync(&self, ino: Ino, _datasync: bool) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        if let Some(d) = self.inodes.get(ino) {
            let r = self.writeback_file(ino, &d, 0, u64::MAX, Hold::Take);
            // Writes another thread started (the flusher's) must be down too.
            d.wait_writeback(0, u64::MAX);
            if let Some(e) = d.take_error() {
                return Err(e);
            }
            r?;
        }
        self.commit_or_flush()
    }

    /// syncfs: every file's data, then the journal.
    pub fn syncfs(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.writeback_all(false)?;
        self.commit_or_flush()
    }

    /// Commit the running transaction; when there is none, flush the device (data overwritten
    /// in place must still reach stable storage). An empty running transaction may mean that
    /// another thread's commit froze our changes and is still writing them to the log: wait
    /// for it (it holds the commit lock until its commit block is durable), as jbd2's fsync
    /// waits for the transaction that last changed the inode.
    fn commit_or_flush(&self) -> Result<()> {
        if self.is_read_only() {
            return Err(Errno::EIO);
        }
        if self.cache.running_len() > 0 {
            return self.sync();
        }
        drop(self.commit_guard());
        if self.is_read_only() {
            // That commit failed: what it held is not durable.
            return Err(Errno::EIO);
        }
        self.dev.flush().map_err(|e| {
            log::error!("flushing the device failed: {e}");
            Errno::EIO
        })
    }

    /// Write back every file's dirty pages. With `only_expired`, only files with pages dirty
    /// longer than the expiry, unless dirty memory is past the background threshold. Files
    /// busy with a writer are skipped when `only_expired` (the background case).
    pub(super) fn writeback_all(&self, only_expired: bool) -> Result<()> {
        let mut first_err = None;
        let over =
            self.data.pc.unclean_pages() > self.data.pc.background_limit() || self.slabs_short();
        let files = self.inodes.all();
        for (ino, d) in &files {
            let dirty_since = d.pages().dirty_since();
            let Some(since) = dirty_since else { continue };
            if only_expired && !over && since.elapsed() < DIRTY_EXPIRE {
                continue;
            }
            if !self.inodes.is_current(*ino, d) {
                continue;
            }
            // The rw lock is taken (blocking: no writer waits for us while holding it) only
            // to plan each batch; the writer goes on while the batch is written.
            if let Err(e) = self.writeback_file(*ino, d, 0, u64::MAX, Hold::Take) {
                first_err.get_or_insert(e);
            }
        }
        if !only_expired {
            for (_, d) in &files {
                d.wait_writeback(0, u64::MAX);
            }
        }
        self.data.kick.cleaned.notify_all();
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Before unmount: write back everything. (The flusher keeps running: a virtiofs guest may
    /// mount the file system again; it ends when the file system is dropped.)
    pub(super) fn data_shutdown(&self) -> Result<()> {
        self.writeback_all(false)
    }

    /// Stop the flusher thread (the file system is going away).
    pub fn stop_flusher(&self) {
        self.data.stop.store(true, Ordering::Release);
        self.data.kick_flusher();
    }

    /// Evict clean pages until the cache is under its limit (other files only when no writer
    /// holds them). `own` is a file whose lock the caller already holds.
    fn shrink_cache(&self, own: Option<(&InodeData, &mut Mapping)>) {
        let pc = &self.data.pc;
        let need = pc.over_limit();
        if need == 0 && !self.slabs_short() {
            return;
        }
        // Free an eighth of the cache at a time, so eviction is not paid per page.
        self.evict_lru(need.max(pc.limit_pages() / 8), own, false);
    }

    /// Evict up to `need` clean pages, least recently used files first (`own`, whose lock the
    /// caller holds, last). Other files only when no reader or writer holds them, unless
    /// `wait`: then wait for their rw lock (only for a caller that holds no file's lock: the
    /// memory-pressure path, which must not skip a file that is being read).
    /// Returns the pages evicted.
    fn evict_lru(&self, need: usize, own: Option<(&InodeData, &mut Mapping)>, wait: bool) -> usize {
        let pc = &self.data.pc;
        let want = need;
        let mut need = need;
        let own_ptr = own.as_ref().map(|(d, _)| *d as *const InodeData);
        // Least recently used first. Each key is read once: a file's last use moves while we
        // sort, and a sort needs keys that hold still.
        let mut files: Vec<(u64, Ino, Arc<InodeData>)> = self
            .inodes
            .all()
            .into_iter()
            .map(|(ino, d)| {
                let key = if Some(Arc::as_ptr(&d)) == own_ptr {
                    u64::MAX
                } else {
                    d.pages.try_lock().map(|m| m.last_use()).unwrap_or(u64::MAX)
                };
                (key, ino, d)
            })
            .collect();
        files.sort_unstable_by_key(|(key, ino, _)| (*key, *ino));
        for (_, ino, d) in files {
            if need == 0 {
                break;
            }
            if Some(Arc::as_ptr(&d)) == own_ptr {
                continue;
            }
            let _w = match d.rw.try_write() {
                Ok(w) => w,
                Err(_) if wait => d.rw.write().unwrap_or_else(|e| e.into_inner()),
                Err(_) => continue,
            };
            let mut m = d.pages();
            need = need.saturating_sub(m.evict_clean(pc, need));
            let empty = m.resident_pages() == 0 && m.pinned_chunks() == 0;
            drop(m);
            if empty {
                self.forget_idle(ino, &d);
            }
        }
        if need > 0
            && let Some((_, m)) = own
        {
            need = need.saturating_sub(m.evict_clean(pc, need));
        }
        want - need
    }

    /// Drop the table entry of a file with no cached pages and nothing pending, so the table
    /// does not grow with every file ever read. Only when nobody else holds it.
    fn forget_idle(&self, ino: Ino, d: &Arc<InodeData>) {
        self.inodes.remove_if_idle(ino, d, || {
            let s = *d.sizes();
            s.size == s.disksize && self.es.delayed_blocks(ino) == 0
        });
    }

    /// Few free slabs are left (many files with a few dirty pages each): time to write back
    /// so their slabs can be evicted.
    fn slabs_short(&self) -> bool {
        let a = &self.data.pc.arena;
        a.free_slabs() < a.slab_count() as usize / 8
    }

    /// Writers past the dirty limit (dirty plus under writeback) wait for the flusher to bring
    /// it down, as balance_dirty_pages does: a fast writer cannot grow the cache without bound.
    /// Called after the write, without the file's lock (the flusher needs it to plan). When
    /// the flusher makes no progress for a while, the writer writes its own file back.
    fn balance_dirty(&self, ino: Ino, d: &InodeData) {
        let pc = &self.data.pc;
        if pc.unclean_pages() > pc.background_limit() {
            self.data.kick_flusher();
        }
        let mut stalled = 0;
        let mut waits = 0;
        let mut last = pc.unclean_pages();
        while pc.unclean_pages() > pc.dirty_limit() && waits < 400 && !self.is_read_only() {
            self.data.kick_flusher();
            {
                let g = self
                    .data
                    .kick
                    .kicked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let _ = self
                    .data
                    .kick
                    .cleaned
                    .wait_timeout(g, Duration::from_millis(50));
            }
            waits += 1;
            let now = pc.unclean_pages();
            if now < last {
                stalled = 0;
            } else {
                stalled += 1;
            }
            last = now;
            if stalled >= 20 {
                // Errors are kept for fsync.
                let _ = self.writeback_file(ino, d, 0, u64::MAX, Hold::Take);
                stalled = 0;
            }
        }
        if self.slabs_short() {
            self.data.kick_flusher();
            if pc.arena.free_slabs() < pc.arena.slab_count() as usize / 32 {
                let _ = self.writeback_file(ino, d, 0, u64::MAX, Hold::Take);
                let _ = self.writeback_others(ino);
            }
        }
        if pc.over_limit() > 0 || self.slabs_short() {
            self.shrink_cache(None);
        }
    }

    /// Start the flusher thread: background writeback of expired or excess dirty pages,
    /// eviction when the cache is over its size, and giving memory back when the host runs
    /// short (read-only file systems too: their cache is clean, but it is memory).
    pub fn start_flusher_thread(fs: &Arc<Fs>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let weak = Arc::downgrade(fs);
        std::thread::Builder::new()
            .name("flusher".into())
            .spawn(move || {
                loop {
                    {
                        // Wait without keeping the file system alive.
                        let Some(k) = weak.upgrade().map(|fs| fs.data.kick.clone()) else {
                            return;
                        };
                        let g = k.kicked.lock().unwrap_or_else(|e| e.into_inner());
                        let (mut g, _) =
                            k.cv.wait_timeout_while(g, Duration::from_secs(1), |kicked| !*kicked)
                                .unwrap_or_else(|e| e.into_inner());
                        *g = false;
                    }
                    let Some(fs) = weak.upgrade() else { return };
                    if fs.data.stop.load(Ordering::Acquire) {
                        return;
                    }
                    // A read-only file system has only clean pages: nothing to write back, but
                    // memory to give back all the same.
                    if !fs.is_read_only()
                        && let Err(e) = fs.writeback_all(true)
                    {
                        log::warn!("background writeback: {e}");
                    }
                    if fs.data.pc.over_limit() > 0 || fs.slabs_short() {
                        fs.shrink_cache(None);
                    }
                    fs.relieve_memory_pressure();
                    fs.data.pc.release_idle_kept();
                }
            })
    }
}

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod data_alloc_tests;
#[cfg(test)]
mod pressure_tests;
#[cfg(test)]
mod tests;
