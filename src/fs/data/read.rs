//! READ: the generic buffered read with readahead (`iomap::read`) with ext4's block mapping;
//! inline-data files, symlinks and images with blocks larger than a page are read straight from
//! the image. Reads move atime as the mount says (`atime`).
//!
//! Lock order: the file's rw lock shared → ns shared (block map lookups) → the mapping mutex.

use super::InodeData;
use crate::errno::{Errno, Result};
use crate::fs::Fs;
use crate::fs::types::Ino;
pub use crate::iomap::ReadSink;
use crate::iomap::read::put;
use crate::ondisk::inode::{Inode, flags};
use crate::pagecache::PAGE_SIZE;

/// A read's sink that moves the file's atime just before the data goes out: the reply reaches
/// the client at once, and a stat it sends right after must already see the new atime.
struct AtimeFirst<'a> {
    fs: &'a Fs,
    ino: Ino,
    /// The inode as the read found it; taken at the first put.
    inode: Option<Inode>,
    inner: &'a mut dyn ReadSink,
}

impl ReadSink for AtimeFirst<'_> {
    fn put(&mut self, parts: &[&[u8]]) -> std::io::Result<()> {
        if let Some(inode) = self.inode.take() {
            self.fs.accessed(self.ino, &inode);
        }
        self.inner.put(parts)
    }
}

impl Fs {
    /// Read up to `size` bytes at `offset`; short only at end of file.
    pub fn read(&self, ino: Ino, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.read_into(ino, fh, offset, size, &mut v)?;
        Ok(v)
    }

    /// [`Fs::read`], appending the bytes to `out`. On error `out` is left as it was.
    pub fn read_into(
        &self,
        ino: Ino,
        fh: u64,
        offset: u64,
        size: u32,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let start = out.len();
        let r = self.read_to(ino, fh, offset, size, out);
        if r.is_err() {
            out.truncate(start);
        }
        r.map(|_| ())
    }

    /// Read up to `size` bytes at `offset` into `sink` (see [`ReadSink`]): the data is copied
    /// once, from the page cache to the sink's destination. Returns the bytes read. A read
    /// moves atime as the mount's option says (see `atime`), before the data goes out.
    pub fn read_to(
        &self,
        ino: Ino,
        _fh: u64,
        offset: u64,
        size: u32,
        sink: &mut dyn ReadSink,
    ) -> Result<usize> {
        let inode = {
            let _g = self.ns_read();
            self.read_inode(ino)?
        };
        if inode.is_dir() {
            return Err(Errno::EISDIR);
        }
        let mut sink = AtimeFirst {
            fs: self,
            ino,
            inode: (size != 0).then(|| inode.clone()),
            inner: sink,
        };
        let sink: &mut dyn ReadSink = &mut sink;
        if !inode.is_reg()
            || inode.has_flag(flags::INLINE_DATA)
            || self.block_size as usize > PAGE_SIZE
        {
            let v = {
                let _g = self.ns_read();
                self.read_data(ino, &inode, offset, size)?
            };
            return put(ino, sink, &[&v]);
        }
        let d = self.inode_data(ino)?;
        let n = self.read_regular(ino, &d, offset, size, sink);
        // Without the file's lock: reclaim may take this file's clean pages too.
        self.reclaim_if_short();
        n
    }

    /// [`Fs::read_to`] of a regular file's data through the page cache.
    fn read_regular(
        &self,
        ino: Ino,
        d: &InodeData,
        offset: u64,
        size: u32,
        sink: &mut dyn ReadSink,
    ) -> Result<usize> {
        let _r = d.read_lock();
        let fsize = d.sizes().size;
        if offset >= fsize || size == 0 {
            return put(ino, sink, &[]);
        }
        let end = fsize.min(offset + size as u64);
        self.dax_redirty_range(d, offset, end);
        if !self.cache_range(ino, d, offset, end, fsize)? {
            // No room in the cache at all: put the dirty data of the range on disk, then read
            // around the cache.
            let p0 = offset / PAGE_SIZE as u64;
            let p1 = end.div_ceil(PAGE_SIZE as u64);
            self.writeback_inode(ino, d, p0, p1)?;
            let v = {
                let _g = self.map_read(d);
                let mut inode = self.read_inode(ino)?;
                inode.size = fsize;
                self.read_data(ino, &inode, offset, size)?
            };
            return put(ino, sink, &[&v]);
        }
        let n = self.file_io(ino, d).read_cached(offset, end, sink)?;
        if self.data.pc.over_limit() > 0 {
            self.shrink_cache(None);
        }
        Ok(n)
    }

    /// Make the blocks of `[from, to)` of `ino` uptodate in the cache, reading ahead past `to`
    /// (within the file size `fsize`); see `iomap::read`. False when the cache has no slab to
    /// spare. The caller holds `d.rw`.
    pub(super) fn cache_range(
        &self,
        ino: Ino,
        d: &InodeData,
        from: u64,
        to: u64,
        fsize: u64,
    ) -> Result<bool> {
        let room = |own: bool, attempt: u32| self.make_room(ino, d, own, attempt);
        self.file_io(ino, d)
            .cache_range(&self.iomap_ops(ino, d, &room), from, to, fsize)
    }
}
