//! WRITE: the generic buffered write (`iomap::write`) with ext4's ops (`inode::iomap_ops`:
//! delalloc reservation or unwritten allocation), inline-data files written in place while they
//! fit, mtime/ctime and the suid/sgid drop; and the mount's page-cache room policy the loops
//! call when no slab is free.
//!
//! Lock order: see `data/mod.rs`. `write` holds the file's rw lock exclusively throughout; the
//! namespace lock is taken shared to look at the block map, exclusively for the inode update.

use super::InodeData;
use crate::errno::{Errno, Result};
use crate::fs::Fs;
use crate::fs::types::Ino;
use crate::inode::blocks::now;
use crate::inode::iomap_ops::{Ext4Iomap, Ext4Write};
pub use crate::iomap::WriteSource;
use crate::ondisk::inode::{I_BLOCK_LEN, Inode, flags};
use crate::pagecache::{NoSlab, PAGE_SIZE};

/// FUSE_WRITE_KILL_SUIDGID: the writer is not privileged; drop suid/sgid as the kernel does.
pub const KILL_SUIDGID: u32 = 1;

/// A write changed the file: mtime and ctime move, and with `kill_suid` setuid goes (and setgid
/// when the file is group-executable), as the kernel drops them for an unprivileged writer. (The
/// caller also drops `security.capability`: see `fs::killpriv`.)
fn modified(inode: &mut Inode, kill_suid: bool) {
    let t = now();
    inode.mtime = t;
    inode.ctime = t;
    if kill_suid {
        inode.mode = crate::fs::killed_mode(inode.mode as u32) as u16;
    }
}

impl Fs {
    /// Write `data` at `offset` of regular file `ino`. Returns the bytes written (short only at
    /// the file size limit or when a later part failed).
    pub fn write(&self, ino: Ino, offset: u64, data: &[u8], flags_: u32) -> Result<u32> {
        self.write_from(ino, offset, &mut &data[..], flags_)
    }

    /// [`Fs::write`] of the bytes of `src`, copied from it straight into the page cache.
    pub fn write_from(
        &self,
        ino: Ino,
        offset: u64,
        src: &mut dyn WriteSource,
        flags_: u32,
    ) -> Result<u32> {
        if self.is_read_only() {
            return Err(Errno::EROFS);
        }
        let d = self.inode_data(ino)?;
        let r = {
            let _w = d.write_lock_for_write();
            self.write_locked(ino, &d, offset, src, flags_)
        };
        if r.is_ok() {
            self.balance_dirty(ino, &d);
            self.reclaim_if_short();
        }
        r
    }

    /// [`Fs::write`] under the file's rw lock.
    fn write_locked(
        &self,
        ino: Ino,
        d: &InodeData,
        offset: u64,
        src: &mut dyn WriteSource,
        flags_: u32,
    ) -> Result<u32> {
        let inode = {
            let _g = self.ns_read();
            self.read_inode(ino)?
        };
        if !inode.is_reg() {
            return Err(Errno::EINVAL);
        }
        if self.block_size as usize > PAGE_SIZE {
            log::warn!("inode {ino}: writing data with blocks larger than 4 KiB is not supported");
            return Err(Errno::EOPNOTSUPP);
        }
        let max = self.max_file_bytes(&inode);
        if offset >= max {
            return Err(Errno::EFBIG);
        }
        if src.is_empty() {
            return Ok(0);
        }
        let len = (src.len() as u64).min(max - offset);
        // Inline while the data fits the inode: files that are inline, and new files whose
        // first writes may make them so. Otherwise the data goes to blocks, for good.
        let inline = inode.has_flag(flags::INLINE_DATA);
        if (inline || self.may_start_inline(ino, d, &inode))
            && let Some(n) =
                self.inline_write(ino, d, offset, len, src, flags_ & KILL_SUIDGID != 0)?
        {
            return Ok(n);
        }
        self.end_may_inline(ino);
        let inode = if inline {
            self.inline_to_blocks(ino, d)?
        } else {
            inode
        };
        // Pages of writable window mappings that come inside EOF get their reservations.
        let old_size = d.sizes().size;
        self.dax_grow(ino, d, old_size, offset + len)?;
        self.dax_redirty_range(d, offset, offset + len);
        let room = |own: bool, attempt: u32| self.make_room(ino, d, own, attempt);
        let flush = || self.flush_for_space(ino, d);
        let map = Ext4Iomap {
            vol: self,
            ino,
            d,
            room: &room,
        };
        let mut ops = Ext4Write::new(map, &inode, &flush);
        let done = self
            .file_io(ino, d)
            .buffered_write(&mut ops, offset, len, src)?;
        self.file_modified(ino, d, flags_ & KILL_SUIDGID != 0)?;
        Ok(done as u32)
    }

    /// Write into an inline-data file — or a new file that may become one — while the result
    /// still fits the inode (`i_block` and the `system.data` attribute), as the kernel keeps
    /// small files inline: one handle, no page cache, i_disksize moves with i_size. `None` when
    /// it would not fit (the caller moves the data to a block); `src` is consumed only when it
    /// fits.
    fn inline_write(
        &self,
        ino: Ino,
        d: &InodeData,
        offset: u64,
        len: u64,
        src: &mut dyn WriteSource,
        kill_suid: bool,
    ) -> Result<Option<u32>> {
        let end = offset + len;
        let _g = self.inline_step(ino, d)?;
        let mut inode = self.read_inode(ino)?;
        let Some(room) = self.max_inline_xattr(ino, &inode)? else {
            return Ok(None);
        };
        // As the kernel judges it: the written range must fit; a size past the stored bytes
        // (a file truncated up) reads as zeros there.
        if end > (I_BLOCK_LEN + room) as u64 {
            return Ok(None);
        }
        let size = inode.size.max(end);
        let was_inline = inode.has_flag(flags::INLINE_DATA);
        let mut content = if was_inline {
            self.inline_data(ino, &inode)?
        } else {
            // A new file (holding nothing, or a hole up to its size) becomes inline.
            self.start_inline_file(ino, &mut inode);
            Vec::new()
        };
        if content.len() < end as usize {
            content.resize(end as usize, 0);
        }
        src.copy_to(&mut content[offset as usize..end as usize]);
        let head = content.len().min(I_BLOCK_LEN);
        inode.block[..head].copy_from_slice(&content[..head]);
        let tail = content.get(I_BLOCK_LEN..).unwrap_or(&[]).to_vec();
        match self.set_system_data(ino, &mut inode, Some(tail)) {
            Ok(()) => {}
            // The other attributes left no room after all: the new file takes blocks instead.
            Err(Errno::ENOSPC) if !was_inline => return Ok(None),
            Err(e) => return Err(e),
        }
        *d.sizes() = super::Sizes {
            size,
            disksize: size,
        };
        inode.size = size;
        modified(&mut inode, kill_suid);
        self.drop_caps_locked(ino, &mut inode)?;
        self.store_inode(ino, &inode)?;
        Ok(Some(len as u32))
    }

    /// An inline-data file is about to get data past what its inode holds: move the data to a
    /// block (written at once, before the map that points to it commits) and return the inode
    /// as it is now.
    pub(super) fn inline_to_blocks(&self, ino: Ino, d: &InodeData) -> Result<Inode> {
        let _g = self.inline_step(ino, d)?;
        let mut inode = self.read_inode(ino)?;
        if !inode.has_flag(flags::INLINE_DATA) {
            return Ok(inode);
        }
        let size = d.sizes().size;
        inode.size = size;
        self.inline_set_size(ino, &mut inode, size)?;
        self.store_inode(ino, &inode)?;
        Ok(inode)
    }

    /// The largest size a file can reach: extents address 2^32 blocks; indirect maps end where
    /// the triple indirect tree does.
    pub(in crate::fs) fn max_file_bytes(&self, inode: &Inode) -> u64 {
        let bs = self.block_size as u64;
        if inode.has_flag(flags::EXTENTS) || inode.has_flag(flags::INLINE_DATA) {
            ((1u64 << 32) - 1) * bs
        } else {
            self.ind_max_bytes()
        }
    }

    /// mtime and ctime move, suid (and sgid with group-exec) go when asked — the inode update of
    /// a write, in a short handle.
    pub(super) fn file_modified(&self, ino: Ino, d: &InodeData, kill_suid: bool) -> Result<()> {
        let _g = self.data_step(d);
        let mut i = self.read_inode(ino)?;
        modified(&mut i, kill_suid);
        self.drop_caps_locked(ino, &mut i)?;
        self.store_inode(ino, &i)
    }

    /// Free what a reservation waits for: write back this file and the others (delayed blocks
    /// hold reservations, and their metadata worst cases), then commit (freed blocks are busy
    /// until their transaction commits). The caller holds `d.rw`.
    pub(super) fn flush_for_space(&self, ino: Ino, d: &InodeData) -> Result<()> {
        self.writeback_inode(ino, d, 0, u64::MAX)?;
        let _ = self.writeback_others(ino);
        let _ = self.sync();
        Ok(())
    }

    /// The mount's answer when a file's loop finds no free slab (see `IomapOps::make_room`):
    /// evict clean pages — the file's own too when its caller holds it exclusively — and, on
    /// a second attempt, write back this file's dirty pages and other files' first.
    pub(in crate::fs) fn make_room(
        &self,
        ino: Ino,
        d: &InodeData,
        own: bool,
        attempt: u32,
    ) -> Result<()> {
        if !own {
            self.shrink_cache(None);
            return Ok(());
        }
        if attempt == 1 {
            // Every slab holds dirty pages: write them back, then evict.
            self.writeback_inode(ino, d, 0, u64::MAX)?;
            self.writeback_others(ino)?;
        }
        self.shrink_cache(Some((d, &mut d.pages())));
        Ok(())
    }

    /// Run `take` (which needs a slab) on the file's page map, making room as
    /// [`Fs::make_room`] does when no slab is free. The caller holds `d.rw` exclusively.
    pub(super) fn with_slab_room<T>(
        &self,
        ino: Ino,
        d: &InodeData,
        why: &str,
        take: impl FnMut(&mut crate::pagecache::Mapping) -> std::result::Result<T, NoSlab>,
    ) -> Result<T> {
        let room = |own: bool, attempt: u32| self.make_room(ino, d, own, attempt);
        let ops = self.iomap_ops(ino, d, &room);
        self.file_io(ino, d).with_room(&ops, why, take)
    }

    /// ext4's block mapping of `ino` for the generic loops, with `room` as the reclaim policy.
    pub(in crate::fs) fn iomap_ops<'a>(
        &'a self,
        ino: Ino,
        d: &'a InodeData,
        room: &'a dyn Fn(bool, u32) -> Result<()>,
    ) -> Ext4Iomap<'a> {
        Ext4Iomap {
            vol: self,
            ino,
            d,
            room,
        }
    }

    /// Write back other files (not `ino`, whose lock the caller holds), skipping those busy.
    pub(super) fn writeback_others(&self, ino: Ino) -> Result<()> {
        for (other, d) in self.inodes.all() {
            if other == ino {
                continue;
            }
            if self.inodes.is_current(other, &d) {
                self.writeback_file(other, &d, 0, u64::MAX, super::Hold::TryTake)?;
            }
        }
        Ok(())
    }
}
