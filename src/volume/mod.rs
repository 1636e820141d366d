//! The mounted image's shared state: the device, the superblock and group geometry, the metadata
//! buffer cache, the allocator, the extent status trees, the in-core inode table and the journal
//! with its commit machinery. Every layer above takes it as `&Volume` (the operation API's `Fs`
//! derefs to it); it knows nothing of FUSE, lookups or file handles.
//!
//! Submodules: `incore` (the in-core inode table), `commit` (journal handles, commits,
//! checkpoints, the commit thread), `errors` (the superblock's error policy). Loading the
//! internal journal maps its inode: `inode::journal_map`.
//!
//! Lock order (ARCHITECTURE.md, "Lock order", has the whole list):
//! the file's rw lock (i_rwsem) → the page map (only around page state, never across a handle
//! start) → `ns` (write for namespace operations, read for the data path's metadata steps) →
//! journal handle start → the inode's data lock (i_data_sem) → the allocator → buffer locks →
//! the buffer cache → journal log state. The commit lock is taken by committers, which hold no
//! handle; they lock the running transaction against new handles and wait for the open ones.
//!
//! Metadata changes run in journal handles ([`Volume::start_handle`]); what keeps two of them
//! apart: `ns` held for writing (namespace operations, and every change of a block map that is
//! not a regular file's data path), the inode's data lock (the data path's steps on one file,
//! under `ns` held for reading, so no namespace operation runs beside them), the allocator's
//! own lock, and buffer locks for blocks that several inodes share (inode table blocks, GDT
//! blocks).

pub(crate) mod commit;
pub(crate) mod errors;
pub(crate) mod incore;

use crate::alloc::{Allocator, MetaIo};
use crate::blockdev::BlockDevice;
use crate::cache::BufferCache;
use crate::errno::{Errno, Result};
use crate::ondisk::superblock::Superblock;
use errors::SbLive;
pub use errors::{DataErr, OnError};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// An inode number.
pub type Ino = u64;

/// The state every layer of a mounted ext4 image shares.
pub struct Volume {
    pub(crate) dev: Arc<dyn BlockDevice>,
    pub(crate) sb: Superblock,
    /// Inode table location of each group (fixed for the life of the file system).
    pub(crate) itables: Vec<u64>,
    pub(crate) alloc: Allocator,
    pub(crate) block_size: u32,
    pub(crate) csum_seed: u32,
    pub(crate) read_only: bool,
    /// Set when a metadata write failed: the journal is aborted and the file system read-only.
    pub(crate) aborted: AtomicBool,
    /// `errors=`: what finding corrupt metadata does (the superblock's default unless the
    /// mount said otherwise).
    pub(crate) on_error: OnError,
    /// `data_err=`: what a failed data write does.
    pub(crate) data_err: DataErr,
    pub(crate) cache: BufferCache,
    /// Extent status trees: the cache of each inode's block map (exact runs of the extent tree or
    /// indirect map) and the delayed (delalloc) ranges. Every change of a block map drops the
    /// inode's cached runs (`forget_mapped`); freeing an inode drops its tree (`forget_inode`).
    pub(crate) es: crate::extent::ExtentStatusCache,
    /// The in-core inodes of regular files with cached data (sizes, locks, page-cache mapping).
    pub(crate) inodes: incore::InodeTable,
    /// Namespace lock: namespace operations (and block-map changes outside a regular file's
    /// data path) hold it for writing, the data path's metadata steps and readers for reading.
    pub(crate) ns: RwLock<()>,
    /// The running transaction's open handles (see `journal::handle`).
    pub(crate) gate: crate::journal::handle::HandleGate,
    /// Superblock fields that change while mounted.
    pub(crate) sb_live: Mutex<SbLive>,
    /// The internal journal, when the image has one and it is written.
    pub(crate) journal: Option<crate::journal::commit::JournalWriter>,
    /// Serializes commits and checkpoints; holds the committed transactions whose blocks are
    /// not home yet (oldest first). A handle starter that finds the transaction full takes it
    /// while holding `ns`; a committer takes no namespace lock and holds no handle.
    pub(crate) commit_lock: Mutex<Vec<crate::cache::Frozen>>,
    /// The home superblock says "clean" (an unmount finished): the next commit first writes it
    /// home with needs_recovery again.
    pub(crate) home_sb_clean: AtomicBool,
    /// Wakes the commit thread early (a transaction filled up).
    pub(crate) commit_kick: Arc<commit::CommitKick>,
    /// Tests: the journal credits of one truncate step, when not 0 (see
    /// `inode::truncate_steps`), so a test can make a small file take several steps.
    #[cfg(test)]
    pub(crate) step_credits: std::sync::atomic::AtomicUsize,
    /// Tests: commit the journal right after every writeback allocation, before the data
    /// write (the widest window a commit thread could hit).
    #[cfg(test)]
    pub(crate) commit_after_alloc: AtomicBool,
}

impl Volume {
    /// A volume over `dev` whose superblock and group geometry were read and checked by the
    /// caller. The journal is opened separately (`open_journal`).
    pub(crate) fn new(
        dev: Arc<dyn BlockDevice>,
        sb: Superblock,
        itables: Vec<u64>,
        alloc: Allocator,
        read_only: bool,
        cache_blocks: usize,
    ) -> Volume {
        Volume {
            csum_seed: sb.csum_seed(),
            block_size: sb.block_size(),
            dev,
            itables,
            alloc,
            read_only,
            aborted: AtomicBool::new(false),
            on_error: OnError::from_superblock(sb.errors),
            data_err: DataErr::Ignore,
            cache: BufferCache::new(cache_blocks),
            es: Default::default(),
            inodes: Default::default(),
            ns: RwLock::new(()),
            gate: Default::default(),
            sb_live: Mutex::new(SbLive::new(&sb)),
            journal: None,
            commit_lock: Mutex::new(Vec::new()),
            home_sb_clean: AtomicBool::new(false),
            commit_kick: Default::default(),
            #[cfg(test)]
            step_credits: Default::default(),
            #[cfg(test)]
            commit_after_alloc: AtomicBool::new(false),
            sb,
        }
    }

    /// Set the mount's error policies: `errors=` (`None` keeps the superblock's) and
    /// `data_err=`.
    pub(crate) fn with_policies(mut self, errors: Option<OnError>, data_err: DataErr) -> Volume {
        if let Some(e) = errors {
            self.on_error = e;
        }
        self.data_err = data_err;
        self
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Is the file system read-only (mounted so, or turned so by an error)?
    pub fn is_read_only(&self) -> bool {
        self.read_only || self.aborted.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Start a namespace operation: the namespace lock for writing, then a journal handle with
    /// the default credits.
    pub(crate) fn ns_write(&self) -> NsWrite<'_> {
        self.ns_write_credits(commit::DEFAULT_CREDITS)
    }

    /// [`Volume::ns_write`] for an operation that may dirty `credits` blocks.
    pub(crate) fn ns_write_credits(&self, credits: usize) -> NsWrite<'_> {
        let ns = self.ns.write().unwrap_or_else(|e| e.into_inner());
        NsWrite {
            _handle: self.start_handle(credits),
            _ns: ns,
        }
    }

    /// Start a metadata step of a regular file's data path (allocating at writeback, converting
    /// at completion, fallocate, inline data, times and i_disksize): the namespace lock for
    /// reading (no namespace operation runs meanwhile), a journal handle, then the inode's data
    /// lock exclusively. Steps on different files run at once. The handle has the default
    /// credits.
    pub(crate) fn data_step<'a>(&'a self, d: &'a incore::InodeData) -> DataStep<'a> {
        let ns = self.ns_read();
        let handle = self.start_handle(commit::DEFAULT_CREDITS);
        DataStep {
            _data: d.data_write(),
            _handle: handle,
            _ns: ns,
        }
    }

    /// Read a regular file's block map or inline data: the namespace lock for reading and the
    /// inode's data lock shared (no data-path step of the file changes them meanwhile).
    pub(crate) fn map_read<'a>(&'a self, d: &'a incore::InodeData) -> MapRead<'a> {
        let ns = self.ns_read();
        MapRead {
            _data: d.data_read(),
            _ns: ns,
        }
    }

    pub(crate) fn ns_read(&self) -> RwLockReadGuard<'_, ()> {
        self.ns.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Read one metadata block through the cache.
    pub(crate) fn read_meta_block(&self, block: u64) -> Result<Arc<[u8]>> {
        if let Some(b) = self.cache.get(block) {
            return Ok(b);
        }
        let mut buf = vec![0u8; self.block_size as usize];
        self.read_blocks_into(block, &mut buf)?;
        let data: Arc<[u8]> = Arc::from(buf);
        self.cache.insert_clean(block, data.clone());
        Ok(data)
    }

    /// Read whole blocks starting at `block` straight from the device into `buf`.
    pub(crate) fn read_blocks_into(&self, block: u64, buf: &mut [u8]) -> Result<()> {
        let nblocks = buf.len().div_ceil(self.block_size as usize) as u64;
        if block
            .checked_add(nblocks)
            .is_none_or(|end| end > self.sb.blocks_count)
        {
            return Err(crate::corrupt!(
                "block {block} (+{nblocks}) is beyond the end of the file system ({} blocks)",
                self.sb.blocks_count
            ));
        }
        self.dev
            .read_at(buf, block * self.block_size as u64)
            .map_err(|e| {
                log::error!("I/O error reading block {block}: {e}");
                Errno::EIO
            })
    }
}

impl MetaIo for Volume {
    fn read_meta(&self, block: u64) -> Result<Arc<[u8]>> {
        self.read_meta_block(block)
    }

    fn write_meta(&self, block: u64, data: Vec<u8>) {
        self.cache.put_dirty(block, Arc::from(data));
    }

    fn modify_meta(&self, block: u64, f: &mut dyn FnMut(&mut [u8])) -> Result<()> {
        let _l = self.cache.lock_block(block);
        let mut data = self.read_meta_block(block)?.to_vec();
        f(&mut data);
        self.cache.put_dirty(block, Arc::from(data));
        Ok(())
    }
}

/// A namespace operation's locks: the handle ends first, then `ns` is released.
pub(crate) struct NsWrite<'a> {
    _handle: crate::journal::handle::Handle<'a>,
    _ns: RwLockWriteGuard<'a, ()>,
}

/// A data-path step's locks, released innermost first.
pub(crate) struct DataStep<'a> {
    _data: RwLockWriteGuard<'a, ()>,
    _handle: crate::journal::handle::Handle<'a>,
    _ns: RwLockReadGuard<'a, ()>,
}

/// A reader's locks on a regular file's block map.
pub(crate) struct MapRead<'a> {
    _data: RwLockReadGuard<'a, ()>,
    _ns: RwLockReadGuard<'a, ()>,
}

/// The current time as (seconds, nanoseconds) since the epoch.
pub(crate) fn now() -> (i64, u32) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos())
}
