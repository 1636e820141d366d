//! The in-core inode table: one object per regular file with cached data — its i_rwsem, its
//! page-cache mapping, i_size beside i_disksize, and the writeback error fsync has not reported
//! yet. Reading an inode overlays i_size from here; storing one writes i_disksize.

use super::Ino;
use crate::errno::Errno;
use crate::pagecache::Mapping;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// What the inode's size is in memory and on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sizes {
    /// i_size: what users see.
    pub size: u64,
    /// i_disksize: what the on-disk inode says (moves at I/O completion).
    pub disksize: u64,
}

/// The in-core state of one regular file with cached data.
pub(crate) struct InodeData {
    /// i_rwsem: write/truncate/fallocate hold it exclusively; read and writeback planning
    /// share it (the writeback's device writes run without it, on blocks marked under
    /// writeback in `pages`).
    pub rw: RwLock<()>,
    /// i_data_sem: the file's block map, inline data and on-disk inode. The data path's
    /// metadata steps (which hold `ns` only for reading, so steps of different files run at
    /// once) change them holding it exclusively; readers of the map hold it shared. Taken
    /// after a journal handle is started, never around a handle start.
    data_sem: RwLock<()>,
    pub pages: Mutex<Mapping>,
    /// Signalled (with `pages`) when blocks leave writeback.
    wb_cv: Condvar,
    pub sizes: Mutex<Sizes>,
    /// A writeback error not yet reported by fsync (errseq-style: reported once).
    wb_err: Mutex<Option<Errno>>,
    /// Where the next sequential read would start (readahead).
    pub ra_next: AtomicU64,
}

impl InodeData {
    /// The in-core state of a file whose on-disk size is `size`.
    pub fn new(size: u64) -> InodeData {
        InodeData {
            rw: RwLock::new(()),
            data_sem: RwLock::new(()),
            pages: Mutex::new(Mapping::default()),
            wb_cv: Condvar::new(),
            sizes: Mutex::new(Sizes {
                size,
                disksize: size,
            }),
            wb_err: Mutex::new(None),
            ra_next: AtomicU64::new(u64::MAX),
        }
    }

    pub fn pages(&self) -> MutexGuard<'_, Mapping> {
        self.pages.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn sizes(&self) -> MutexGuard<'_, Sizes> {
        self.sizes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// i_data_sem shared: the block map does not change meanwhile.
    pub fn data_read(&self) -> RwLockReadGuard<'_, ()> {
        self.data_sem.read().unwrap_or_else(|e| e.into_inner())
    }

    /// i_data_sem exclusively: for a change of the block map or the on-disk inode.
    pub fn data_write(&self) -> RwLockWriteGuard<'_, ()> {
        self.data_sem.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn read_lock(&self) -> RwLockReadGuard<'_, ()> {
        self.rw.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The rw lock exclusively, with none of the file's writes in flight: for truncate,
    /// fallocate, freeing — what changes or frees blocks a write in flight may target, or drops
    /// pages. (No writeback starts while it is held: planning one needs the lock.)
    pub fn write_lock(&self) -> RwLockWriteGuard<'_, ()> {
        let g = self.rw.write().unwrap_or_else(|e| e.into_inner());
        self.wait_writeback(0, u64::MAX);
        g
    }

    /// The rw lock exclusively for a buffered write: writeback of the file goes on meanwhile;
    /// the writer waits only for the pages it changes ([`InodeData::wait_page_writeback`]).
    pub fn write_lock_for_write(&self) -> RwLockWriteGuard<'_, ()> {
        self.rw.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until no page of `[from, to)` is under writeback.
    pub fn wait_writeback(&self, from: u64, to: u64) {
        let mut m = self.pages();
        while m.writeback_in(from, to) {
            m = self.wb_cv.wait(m).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Page `idx` locked, once no block of it is under writeback (a writer changes it next).
    pub fn wait_page_writeback(&self, idx: u64) -> MutexGuard<'_, Mapping> {
        let mut m = self.pages();
        while m.state(idx).writeback != 0 {
            m = self.wb_cv.wait(m).unwrap_or_else(|e| e.into_inner());
        }
        m
    }

    /// Blocks left writeback: wake whoever waits for them.
    pub fn writeback_done(&self) {
        self.wb_cv.notify_all();
    }

    pub fn set_error(&self, e: Errno) {
        *self.wb_err.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
    }

    /// The writeback error since the last call, if any (reported once, as fsync does).
    pub fn take_error(&self) -> Option<Errno> {
        self.wb_err.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Every in-core inode, by number.
#[derive(Default)]
pub(crate) struct InodeTable {
    table: Mutex<HashMap<Ino, Arc<InodeData>>>,
}

impl InodeTable {
    fn table(&self) -> MutexGuard<'_, HashMap<Ino, Arc<InodeData>>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, ino: Ino) -> Option<Arc<InodeData>> {
        self.table().get(&ino).cloned()
    }

    /// The entry of `ino`, made by `make` when there is none.
    pub fn get_or_insert_with(&self, ino: Ino, make: impl FnOnce() -> InodeData) -> Arc<InodeData> {
        self.table()
            .entry(ino)
            .or_insert_with(|| Arc::new(make()))
            .clone()
    }

    /// Take `ino` out of the table (it is being freed).
    pub fn remove(&self, ino: Ino) -> Option<Arc<InodeData>> {
        self.table().remove(&ino)
    }

    /// Every file with in-core data state.
    pub fn all(&self) -> Vec<(Ino, Arc<InodeData>)> {
        self.table().iter().map(|(i, d)| (*i, d.clone())).collect()
    }

    /// Is `d` still the table's entry for `ino` (it was not freed meanwhile)?
    pub fn is_current(&self, ino: Ino, d: &Arc<InodeData>) -> bool {
        self.table().get(&ino).is_some_and(|x| Arc::ptr_eq(x, d))
    }

    /// Drop `d`, the entry of `ino`, when nobody but the table and the caller hold it and
    /// `idle()` says it has nothing pending (checked under the table lock).
    pub fn remove_if_idle(&self, ino: Ino, d: &Arc<InodeData>, idle: impl FnOnce() -> bool) {
        let mut t = self.table();
        if t.get(&ino).is_some_and(|x| Arc::ptr_eq(x, d)) && Arc::strong_count(d) == 2 && idle() {
            t.remove(&ino);
        }
    }

    /// The in-memory size of `ino` when it has in-core state (read_inode overlays it).
    pub fn size(&self, ino: Ino) -> Option<u64> {
        self.get(ino).map(|d| d.sizes().size)
    }

    /// The size the on-disk inode must carry (store_inode writes i_disksize).
    pub fn disksize(&self, ino: Ino) -> Option<u64> {
        self.get(ino).map(|d| d.sizes().disksize)
    }
}
