//! The in-core inode table: one object per regular file with cached data — its i_rwsem, its
//! page-cache mapping, i_size beside i_disksize, and the writeback error fsync has not reported
//! yet. Reading an inode overlays i_size from here; storing one writes i_disksize.

use super::Ino;
use crate::errno::Errno;
use crate::pagecache::Mapping;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

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
    /// i_rwsem: write/truncate/fallocate hold it exclusively; read and writeback share it.
    pub rw: RwLock<()>,
    pub pages: Mutex<Mapping>,
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
            pages: Mutex::new(Mapping::default()),
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

    pub fn read_lock(&self) -> RwLockReadGuard<'_, ()> {
        self.rw.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn write_lock(&self) -> RwLockWriteGuard<'_, ()> {
        self.rw.write().unwrap_or_else(|e| e.into_inner())
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
