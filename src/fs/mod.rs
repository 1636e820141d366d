//! The operation API: mount an image and answer file operations with Linux semantics and errno.
//! This is the only layer the FUSE protocol layer talks to.
//!
//! Submodules: `mount` (superblock, groups, feature checks), `inode` (reading inodes), `bmap`
//! (logical → physical block mapping), `file` (data reads, SEEK_DATA/HOLE), `dir` (lookup, listing),
//! `xattr`, `ops` (the public operations).

mod atime;
mod blocks;
mod bmap;
mod commit;
mod data;
mod dir;
mod dirops;
mod errors;
mod file;
mod indirect;
mod inline;
mod inode;
mod journal;
mod mount;
mod namespace;
mod ops;
mod orphan;
mod types;
mod xattr;

pub use atime::{AtimeMode, AtimePolicy};
pub use data::{
    FALLOC_FL_COLLAPSE_RANGE, FALLOC_FL_INSERT_RANGE, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE, KILL_SUIDGID,
};
pub use types::*;

use crate::alloc::{Allocator, MetaIo};
use crate::blockdev::BlockDevice;
use crate::cache::BufferCache;
use crate::errno::{Errno, Result};
use crate::ondisk::superblock::Superblock;
use errors::SbLive;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A mounted ext4 file system.
pub struct Fs {
    dev: Arc<dyn BlockDevice>,
    sb: Superblock,
    /// Inode table location of each group (fixed for the life of the file system).
    itables: Vec<u64>,
    alloc: Allocator,
    block_size: u32,
    csum_seed: u32,
    read_only: bool,
    /// Set when a metadata write failed: the journal is aborted and the file system read-only.
    aborted: std::sync::atomic::AtomicBool,
    cache: BufferCache,
    /// Extent status trees: the read path's cache of each inode's block map (exact runs of the
    /// extent tree or indirect map). Every change of a block map drops the inode's cached runs
    /// (`forget_mapped`); freeing an inode drops its tree (`forget_inode`).
    es: crate::extent::ExtentStatusCache,
    /// FUSE lookup references per inode.
    lookups: Mutex<HashMap<Ino, u64>>,
    /// Open directory handles and the listing each one walks.
    dir_handles: Mutex<HashMap<u64, Arc<dir::Listing>>>,
    next_fh: AtomicU64,
    /// Namespace lock: operations that change metadata hold it for writing, readers for reading.
    ns: RwLock<()>,
    /// Unlinked inodes still referenced by the client; freed at their last forget.
    orphans: Mutex<HashSet<Ino>>,
    /// In-memory back links of the on-disk orphan list (inode → the inode before it).
    orphan_prev: Mutex<HashMap<Ino, Ino>>,
    /// O_TMPFILE inodes: unlinked, yet `link` may still give them a name.
    linkable: Mutex<HashSet<Ino>>,
    /// Superblock fields that change while mounted.
    sb_live: Mutex<SbLive>,
    /// The internal journal, when the image has one and it is written.
    journal: Option<crate::journal::commit::JournalWriter>,
    /// Serializes commits and checkpoints; holds the committed transactions whose blocks are
    /// not home yet (oldest first). Taken before `ns`, never while holding it.
    commit_lock: Mutex<Vec<crate::cache::Frozen>>,
    /// The home superblock says "clean" (an unmount finished): the next commit first writes it
    /// home with needs_recovery again.
    home_sb_clean: std::sync::atomic::AtomicBool,
    /// Wakes the commit thread early (a transaction filled up).
    commit_kick: Arc<commit::CommitKick>,
    /// File data: the page cache, the in-core inode table, delalloc (see `data`).
    data: data::DataState,
    /// How reads move atime ([`AtimePolicy`], encoded; see `atime`).
    atime: std::sync::atomic::AtomicU8,
}

impl Fs {
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Start an operation that changes metadata (a journal handle with the default credits):
    /// see [`Fs::start_handle`].
    fn ns_write(&self) -> RwLockWriteGuard<'_, ()> {
        self.start_handle(commit::DEFAULT_CREDITS)
    }

    fn ns_read(&self) -> RwLockReadGuard<'_, ()> {
        self.ns.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Read one metadata block through the cache.
    fn read_meta_block(&self, block: u64) -> Result<Arc<[u8]>> {
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
    fn read_blocks_into(&self, block: u64, buf: &mut [u8]) -> Result<()> {
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

#[cfg(test)]
mod crash_test_support;
#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod fstests_fixes_tests;
#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod indirect_tests;
#[cfg(test)]
mod inline_tests;
#[cfg(test)]
mod status_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;
#[cfg(test)]
mod write_tests;

impl MetaIo for Fs {
    fn read_meta(&self, block: u64) -> Result<Arc<[u8]>> {
        self.read_meta_block(block)
    }

    fn write_meta(&self, block: u64, data: Vec<u8>) {
        self.cache.put_dirty(block, Arc::from(data));
    }
}
