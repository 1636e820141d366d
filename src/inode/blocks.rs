//! Changing which blocks an inode owns: mapping new blocks and truncating, with `i_blocks` kept
//! exact. Extent-mapped inodes go through the extent tree, the others through `indirect`.
//!
//! Lock order: callers hold the file system's namespace write lock; allocation and the buffer
//! cache take their own short internal locks below it.

use crate::alloc::MetaIo;
use crate::errno::{Errno, Result};
use crate::extent::{ExtentIo, ExtentTree};
use crate::ondisk::extent::{self, Extent};
use crate::ondisk::inode::{self, Inode, flags};
use crate::volume::Ino;
use crate::volume::Volume;
use std::cell::Cell;
use std::sync::Arc;

/// Extent node I/O for one inode: checksums with the inode's seed, allocation through the fs
/// allocator, and a count of node blocks gained or lost for `i_blocks`.
pub(crate) struct NodeIo<'a> {
    fs: &'a Volume,
    ino: Ino,
    seed: u32,
    pub delta: Cell<i64>,
}

impl<'a> NodeIo<'a> {
    pub(crate) fn new(fs: &'a Volume, ino: Ino, inode: &Inode) -> NodeIo<'a> {
        NodeIo {
            fs,
            ino,
            seed: fs.inode_seed(ino, inode),
            delta: Cell::new(0),
        }
    }
}

impl ExtentIo for NodeIo<'_> {
    fn read_node(&self, block: u64) -> Result<Vec<u8>> {
        let b = self.fs.read_meta_block(block)?;
        if self.fs.sb.has_metadata_csum() && !extent::checksum_ok(self.seed, &b) {
            return Err(crate::corrupt!(
                "inode {}: extent block {block} checksum mismatch",
                self.ino
            ));
        }
        Ok(b.to_vec())
    }

    fn write_node(&self, block: u64, mut data: Vec<u8>) -> Result<()> {
        if self.fs.sb.has_metadata_csum() {
            extent::set_checksum(self.seed, &mut data);
        }
        self.fs.write_meta(block, data);
        Ok(())
    }

    fn alloc_node(&self, goal: u64) -> Result<u64> {
        let (b, _) = self.fs.alloc.alloc_blocks(self.fs, goal, 1)?;
        self.delta.set(self.delta.get() + 1);
        Ok(b)
    }

    fn free_node(&self, block: u64) -> Result<()> {
        self.fs.cache.revoke(block);
        self.fs.alloc.free_blocks(self.fs, block, 1)?;
        self.delta.set(self.delta.get() - 1);
        Ok(())
    }
}

/// The current time as ext4 stores it.
pub(crate) fn now() -> (i64, u32) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos())
}

/// What a newly mapped block will hold, which decides where it may come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BlockUse {
    /// Metadata (directory, symlink blocks): written through the journal, so a block freed
    /// by the running transaction may be reused at once; may use the metadata reserve.
    Meta,
    /// File data written straight to the device: never a block freed by an uncommitted
    /// transaction, never the metadata pool unless a delayed-allocation reservation covers it
    /// (`reserved`, given back by the caller just before).
    Data { reserved: u32 },
}

impl Volume {
    /// Allocate up to `want` contiguous blocks near `goal` for `usage`.
    pub(crate) fn alloc_for(&self, usage: BlockUse, goal: u64, want: u32) -> Result<(u64, u32)> {
        match usage {
            BlockUse::Meta => self.alloc.alloc_blocks(self, goal, want),
            BlockUse::Data { reserved } => {
                self.alloc
                    .alloc_data_blocks(self, goal, want, reserved.min(want))
            }
        }
    }

    /// Write an in-core inode back into its inode table block (in the running transaction),
    /// under the block's buffer lock: the block holds other inodes that other handles may be
    /// storing at the same time.
    pub(crate) fn store_inode(&self, ino: Ino, inode: &Inode) -> Result<()> {
        let (block, off) = self.inode_location(ino)?;
        let isz = self.sb.inode_size as usize;
        // The in-inode xattr area travels in `inode.raw` (read with the inode, changed by setxattr).
        let ibody = 128 + inode.extra_isize as usize;
        // The on-disk size is i_disksize (it moves at I/O completion), not i_size.
        let on_disk = match self.inodes.disksize(ino) {
            Some(disksize) if inode.is_reg() && disksize != inode.size => {
                let mut on_disk = inode.clone();
                on_disk.size = disksize;
                std::borrow::Cow::Owned(on_disk)
            }
            _ => std::borrow::Cow::Borrowed(inode),
        };
        let seed = self
            .sb
            .has_metadata_csum()
            .then(|| self.inode_seed(ino, inode));
        self.modify_meta(block, &mut |data| {
            let raw = &mut data[off..off + isz];
            if inode.raw.len() == isz && isz > ibody {
                raw[ibody..].copy_from_slice(&inode.raw[ibody..]);
            }
            on_disk.write_into(raw);
            if let Some(seed) = seed {
                inode::set_inode_checksum(seed, raw);
            }
        })
    }

    pub(crate) fn adjust_blocks(&self, inode: &mut Inode, blocks: i64) {
        let per = (self.block_size / 512) as i64;
        inode.blocks_raw = (inode.blocks_raw as i64 + blocks * per).max(0) as u64;
    }

    /// True for an inode whose `i_block` holds no block map at all: device nodes, FIFOs,
    /// sockets, fast symlinks (the target text) and inline data.
    pub(crate) fn owns_no_block_map(&self, inode: &Inode) -> bool {
        if inode.has_flag(flags::INLINE_DATA) {
            return true;
        }
        if !(inode.is_reg() || inode.is_dir() || inode.is_symlink()) {
            return true;
        }
        if inode.is_symlink() && !inode.has_flag(flags::EXTENTS) {
            // A fast symlink owns no data blocks (an xattr block aside): the kernel's
            // ext4_inode_is_fast_symlink.
            let ea_blocks = if inode.file_acl != 0 {
                (self.block_size / 512) as u64
            } else {
                0
            };
            return inode.blocks_raw.saturating_sub(ea_blocks) == 0;
        }
        false
    }

    /// Allocate and map one block at `lblk` (which must be a hole). Returns the physical block.
    ///
    /// This and `truncate_blocks` are the only ways a block map changes: both drop the inode's
    /// cached runs in the extent status tree, whatever the outcome (a failure may have changed
    /// node blocks already). Any new way of changing a block map must do the same.
    pub(crate) fn map_new_block(
        &self,
        ino: Ino,
        inode: &mut Inode,
        lblk: u32,
        goal: u64,
    ) -> Result<u64> {
        let r = self.map_new_block_inner(ino, inode, lblk, goal, BlockUse::Meta);
        self.es.forget_mapped(ino);
        r
    }

    /// [`map_new_block`](Self::map_new_block) for a block that gets file data written straight
    /// to the device (an inline-data conversion, ext3-style writeback): it never reuses a block
    /// freed by a transaction that has not committed yet (`alloc::busy`), and it comes from
    /// unreserved space (or the `reserved` delalloc blocks the caller just released). ENOSPC
    /// may mean only such blocks are left: a commit frees them.
    pub(crate) fn map_new_data_block(
        &self,
        ino: Ino,
        inode: &mut Inode,
        lblk: u32,
        goal: u64,
        reserved: u32,
    ) -> Result<u64> {
        let r = self.map_new_block_inner(ino, inode, lblk, goal, BlockUse::Data { reserved });
        self.es.forget_mapped(ino);
        r
    }

    fn map_new_block_inner(
        &self,
        ino: Ino,
        inode: &mut Inode,
        lblk: u32,
        goal: u64,
        usage: BlockUse,
    ) -> Result<u64> {
        if inode.has_flag(flags::INLINE_DATA) {
            log::warn!("inode {ino} keeps its data inline; mapping blocks to it is not supported");
            return Err(Errno::EOPNOTSUPP);
        }
        if !inode.has_flag(flags::EXTENTS) {
            let (pblk, gained) = self.ind_map_new(ino, inode, lblk as u64, goal, usage)?;
            self.adjust_blocks(inode, gained);
            return Ok(pblk);
        }
        let (pblk, _) = self.alloc_for(usage, goal, 1)?;
        let io = NodeIo::new(self, ino, inode);
        let mut root = inode.block;
        let r = ExtentTree::new(&mut root, &io, self.block_size, ino).insert(Extent {
            lblk,
            len: 1,
            pblk,
            unwritten: false,
        });
        if let Err(e) = r {
            self.alloc.free_blocks(self, pblk, 1)?;
            return Err(e);
        }
        inode.block = root;
        self.adjust_blocks(inode, 1 + io.delta.get());
        Ok(pblk)
    }

    /// Free every block mapped at or after logical block `from` (truncate). Drops the inode's
    /// cached runs, and its delayed ranges from `from` on (the data path releases their
    /// reservations before truncating).
    pub(crate) fn truncate_blocks(&self, ino: Ino, inode: &mut Inode, from: u64) -> Result<()> {
        let r = self.truncate_blocks_inner(ino, inode, from);
        self.es.forget_mapped(ino);
        self.es.remove(ino, from, u64::MAX);
        r
    }

    fn truncate_blocks_inner(&self, ino: Ino, inode: &mut Inode, from: u64) -> Result<()> {
        if self.owns_no_block_map(inode) {
            return Ok(());
        }
        if !inode.has_flag(flags::EXTENTS) {
            let freed = self.ind_truncate(ino, inode, from)?;
            self.adjust_blocks(inode, -freed);
            return Ok(());
        }
        let io = NodeIo::new(self, ino, inode);
        let mut root = inode.block;
        let freed = ExtentTree::new(&mut root, &io, self.block_size, ino)
            .remove(from.min(u32::MAX as u64) as u32, 1 << 32)?;
        inode.block = root;
        let mut n = 0i64;
        for (p, len) in freed {
            for b in p..p + len as u64 {
                // Directory and symlink blocks are metadata: later replay must not resurrect them.
                self.cache.revoke(b);
            }
            self.alloc.free_blocks(self, p, len)?;
            n += len as i64;
        }
        self.adjust_blocks(inode, io.delta.get() - n);
        Ok(())
    }

    /// A fresh copy of a metadata block to modify.
    pub(crate) fn block_for_write(&self, block: u64) -> Result<Vec<u8>> {
        Ok(self.read_meta_block(block)?.to_vec())
    }

    /// A zeroed buffer for a block that is new metadata (its old contents do not matter).
    pub(crate) fn new_block_buf(&self) -> Vec<u8> {
        vec![0u8; self.block_size as usize]
    }

    pub(crate) fn put_block(&self, block: u64, data: Vec<u8>) {
        self.cache.put_dirty(block, Arc::from(data));
    }
}
