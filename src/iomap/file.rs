//! The page-cache side of one file, as the generic data path sees it (the data part of the
//! kernel's `struct inode`): its i_rwsem, its page map, i_size beside i_disksize, readahead
//! state and the writeback error fsync has not reported yet. The file system's in-core inode
//! table (`volume::incore`) holds one per regular file with cached data.

use crate::blockdev::BlockDevice;
use crate::errno::Errno;
use crate::pagecache::{Mapping, PageCache};
use std::sync::atomic::AtomicU64;
use std::sync::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// What the inode's size is in memory and on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// i_size: what users see.
    pub size: u64,
    /// i_disksize: what the on-disk inode says (moves at I/O completion).
    pub disksize: u64,
}

/// The in-core state of one regular file with cached data.
pub struct InodeData {
    /// i_rwsem: write/truncate/fallocate hold it exclusively; read and writeback planning
    /// share it (the writeback's device writes run without it, on blocks marked under
    /// writeback in `pages`).
    pub rw: RwLock<()>,
    /// i_data_sem: the file's block map, inline data and on-disk inode. The data path's
    /// metadata steps (which hold the namespace lock only for reading, so steps of different
    /// files run at once) change them holding it exclusively; readers of the map hold it
    /// shared. Taken after a journal handle is started, never around a handle start.
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

/// One file's cache, with what the generic loops need around it.
pub struct FileIo<'a> {
    /// For log lines.
    pub ino: u64,
    pub d: &'a InodeData,
    pub pc: &'a PageCache,
    pub dev: &'a dyn BlockDevice,
    pub block_size: u64,
    /// Writers throttled for dirty memory wait on it: notified after every batch.
    pub cleaned: Option<&'a std::sync::Condvar>,
}
