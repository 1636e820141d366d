//! The operation API: mount an image and answer file operations with Linux semantics and errno.
//! This is the only layer the FUSE protocol layer talks to. `Fs` is the shared
//! [`Volume`](crate::volume::Volume) (it derefs to it) plus what clients hold: lookup counts,
//! open directories, unlinked inodes still referenced, and the data path's page cache.
//!
//! Submodules: `mount` (superblock, groups, feature checks), `attr` (inode → `Attr`), `file`
//! (SEEK_DATA/HOLE), `data` (file data), `dir` (lookup, listing), `dirops`, `namespace`,
//! `inline`, `xattr`, `orphan`, `ops` (the public operations), `sync` (unmount, commit thread).

mod atime;
mod attr;
mod data;
mod dir;
mod dirops;
mod file;
mod inline;
mod killpriv;
mod mount;
mod namespace;
mod ops;
mod orphan;
mod sync;
mod types;
mod xattr;

pub use atime::{AtimeMode, AtimePolicy};
pub use data::{
    DaxPin, DaxRevoker, FALLOC_FL_COLLAPSE_RANGE, FALLOC_FL_INSERT_RANGE, FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, KILL_SUIDGID, ReadSink, Revoked, WriteSource,
};
pub use killpriv::killed_mode;
pub use types::*;

use crate::volume::Volume;
// What the tests inside `fs` take from `super::*`.
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
#[cfg(test)]
use {
    crate::blockdev::BlockDevice,
    crate::errno::{Errno, Result},
    std::sync::Arc,
};

/// A mounted ext4 file system: the shared [`Volume`] (with the in-core inode table: lookup
/// counts, orphans still referenced, page-cache sides) plus what the operation API keeps for
/// its clients (open directories) and the data path's page cache.
pub struct Fs {
    vol: Volume,
    /// Open directory handles and the listing each one walks.
    dir_handles: Mutex<HashMap<u64, std::sync::Arc<dir::Listing>>>,
    next_fh: AtomicU64,
    /// File data: the page cache, delalloc, writeback (see `data`).
    data: data::DataState,
    /// How reads move atime ([`AtimePolicy`], encoded; see `atime`).
    atime: std::sync::atomic::AtomicU8,
}

impl std::ops::Deref for Fs {
    type Target = Volume;
    fn deref(&self) -> &Volume {
        &self.vol
    }
}

impl std::ops::DerefMut for Fs {
    fn deref_mut(&mut self) -> &mut Volume {
        &mut self.vol
    }
}

#[cfg(test)]
mod crash_test_support;
#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod data_err_tests;
#[cfg(test)]
mod errors_policy_tests;
#[cfg(test)]
mod fstests_fixes_tests;
#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod handle_tests;
#[cfg(test)]
mod inline_tests;
#[cfg(test)]
mod slab_reuse_tests;
#[cfg(test)]
mod status_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;
#[cfg(test)]
mod truncate_steps_tests;
#[cfg(test)]
mod write_tests;
