//! The traits through which the generic loops ask the file system: how a block maps and how to
//! make room in the cache (reads, writes, zeroing), how to make room for a write's blocks, and
//! where dirty blocks go and how their I/O finishes (writeback).

use super::file::FileIo;
use super::mapping::Mapping;
use crate::errno::Result;

/// What the read, write and zero loops ask the file system (the kernel's `iomap_begin` for
/// reads, plus the page cache's reclaim policy, which belongs to the mount).
pub trait IomapOps {
    /// The run of the file's blocks from `lblk` as its block map has it: written, unwritten or
    /// a hole (delayed ranges live in the page cache, dirty).
    fn map(&self, lblk: u64) -> Result<Mapping>;
    /// No slab is free for the file's pages: make room in the cache. With `own`, the caller
    /// holds the file's rw lock exclusively and the file's own clean pages may go too.
    /// `attempt` counts from 0; a later attempt may write dirty pages back first.
    fn make_room(&self, own: bool, attempt: u32) -> Result<()>;
}

/// The file system's side of a buffered write (the kernel's `iomap_begin` / `iomap_end` for
/// writes).
pub trait WriteOps: IomapOps {
    /// write_begin for blocks `[first, end)`: make sure each has a block or a reservation, so
    /// the data accepted can always be written back (ENOSPC is answered here, never later).
    fn begin(&mut self, first: u64, end: u64) -> Result<()>;
    /// The write stopped short: blocks from `keep_to` on got no data; release what
    /// [`WriteOps::begin`] reserved for them.
    fn end_short(&mut self, keep_to: u64);
}

/// Where the dirty blocks from some logical block go, as the file system maps them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WbMap {
    /// `n` blocks to device blocks from `pblk`; `unwritten` when the completion must convert them.
    Io { n: u64, pblk: u64, unwritten: bool },
    /// The file system wrote `n` blocks itself (with [`FileIo::write_blocks`]), inside its own
    /// block-map change: maps without an unwritten state must not commit before their data.
    Written { n: u64 },
    /// The blocks were mapped by someone else meanwhile: map again.
    Again,
}

/// The file system's side of writeback (the kernel's `iomap_writeback_ops` plus the ioend
/// completion).
pub trait WritebackOps {
    /// Map the dirty blocks from `l` (below `end`): an existing mapping, or new **unwritten**
    /// blocks for a delayed range — the whole delayed extent where it can, not one block at a
    /// time. `io` writes blocks from the cache, for [`WbMap::Written`].
    fn map_blocks(&self, io: &FileIo<'_>, l: u64, end: u64) -> Result<WbMap>;
    /// I/O completion: the unwritten ranges in `converted` (sorted, merged) hold their data now
    /// and become written; i_disksize becomes `disksize` when given. One metadata update.
    fn complete(&self, converted: &[(u64, u64)], disksize: Option<u64>) -> Result<()>;
    /// The data of `[l, l + n)` is lost (mapping or writing it failed): release what the file
    /// system reserved for it.
    fn discard(&self, l: u64, n: u64);
    /// The device refused a write of the file's data (logged already with the range), before
    /// the batch completes: the file system applies its policy (ext4's `data_err=`).
    fn write_failed(&self);
}
