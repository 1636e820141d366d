//! The operation API: mount an image and answer file operations with Linux semantics and errno.
//! This is the only layer the FUSE protocol layer talks to.

mod types;

pub use types::*;

use crate::blockdev::BlockDevice;
use crate::errno::{Errno, Result};
use std::sync::Arc;

/// A mounted ext4 file system.
pub struct Fs {
    #[allow(dead_code)]
    dev: Arc<dyn BlockDevice>,
}

impl Fs {
    /// Mount the image on `dev`. The error is a sentence for the user.
    pub fn mount(
        dev: Arc<dyn BlockDevice>,
        _opts: &MountOptions,
    ) -> std::result::Result<Fs, String> {
        Ok(Fs { dev })
    }

    /// True when every mutating operation answers `EROFS`.
    pub fn is_read_only(&self) -> bool {
        true
    }

    /// Find `name` in directory `parent`; counts one lookup reference on the result.
    pub fn lookup(&self, _parent: Ino, _name: &[u8]) -> Result<Attr> {
        Err(Errno::ENOSYS)
    }

    /// Drop `nlookup` lookup references taken by lookup/create/readdirplus.
    pub fn forget(&self, _ino: Ino, _nlookup: u64) {}

    pub fn getattr(&self, _ino: Ino) -> Result<Attr> {
        Err(Errno::ENOSYS)
    }

    /// Open a file; `flags` are the `open(2)` flags. Returns a file handle.
    pub fn open(&self, _ino: Ino, _flags: u32) -> Result<u64> {
        Err(Errno::ENOSYS)
    }

    pub fn release(&self, _ino: Ino, _fh: u64) {}

    /// Read up to `size` bytes at `offset`; short only at end of file.
    pub fn read(&self, _ino: Ino, _fh: u64, _offset: u64, _size: u32) -> Result<Vec<u8>> {
        Err(Errno::ENOSYS)
    }

    /// Open a directory for listing. Returns a directory handle.
    pub fn opendir(&self, _ino: Ino, _flags: u32) -> Result<u64> {
        Err(Errno::ENOSYS)
    }

    /// List entries from cookie `offset` (0 = start, including "." and ".."). `emit` returns false
    /// when the caller's buffer is full; the entry it refused is not consumed.
    pub fn readdir(
        &self,
        _ino: Ino,
        _fh: u64,
        _offset: u64,
        _emit: &mut dyn FnMut(&DirEntry) -> bool,
    ) -> Result<()> {
        Err(Errno::ENOSYS)
    }

    pub fn releasedir(&self, _ino: Ino, _fh: u64) {}

    pub fn readlink(&self, _ino: Ino) -> Result<Vec<u8>> {
        Err(Errno::ENOSYS)
    }

    pub fn statfs(&self) -> Result<StatFs> {
        Err(Errno::ENOSYS)
    }

    /// The value of xattr `name` (full name, e.g. `user.foo`).
    pub fn getxattr(&self, _ino: Ino, _name: &[u8]) -> Result<Vec<u8>> {
        Err(Errno::ENOSYS)
    }

    /// All xattr names, each NUL-terminated, concatenated.
    pub fn listxattr(&self, _ino: Ino) -> Result<Vec<u8>> {
        Err(Errno::ENOSYS)
    }

    /// SEEK_DATA / SEEK_HOLE (and SEEK_SET/SEEK_CUR/SEEK_END for completeness).
    pub fn lseek(&self, _ino: Ino, _offset: u64, _whence: u32) -> Result<u64> {
        Err(Errno::ENOSYS)
    }

    /// `access(2)`: check `mask` (R_OK|W_OK|X_OK, or F_OK) for `ctx`.
    pub fn access(&self, _ino: Ino, _mask: u32, _ctx: &Ctx) -> Result<()> {
        Err(Errno::ENOSYS)
    }

    /// Flush everything to the device (unmount / DESTROY).
    pub fn sync(&self) -> Result<()> {
        Ok(())
    }
}
