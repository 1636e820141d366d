//! The public operations, with Linux semantics and errno. Each one reads what it needs through the
//! engine's internal helpers; the FUSE layer calls only these.

use super::Fs;
use super::dir::Listing;
use super::types::{Attr, Ctx, DirEntry, Ino, ROOT_INO, SEEK_DATA, SEEK_HOLE, StatFs};
use crate::errno::{Errno, Result};
use crate::ondisk::group::layout;
use crate::ondisk::inode::{Inode, S_IFDIR, flags};
use crate::ondisk::le::u32_at;
use crate::ondisk::superblock::incompat;
use crate::pagecache::PAGE_SIZE;
use std::sync::Arc;
use std::sync::atomic::Ordering;

const O_ACCMODE: u32 = libc::O_ACCMODE as u32;

impl Fs {
    /// Find `name` in directory `parent`; counts one lookup reference on the result.
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        let _g = self.ns_read();
        if name == b"." {
            // An NFS-style file handle names an inode by number (FUSE EXPORT_SUPPORT): it must
            // still be in use, or the handle is stale (ENOENT, which the kernel answers ESTALE).
            let inode = self.read_live_inode(parent)?;
            self.count_lookup(parent);
            return Ok(self.attr_of(parent, &inode));
        }
        let dir = self.read_inode(parent)?;
        let ino = if name == b".." {
            // The parent of a directory found through a handle.
            let dir = self.read_live_inode(parent)?;
            if !dir.is_dir() {
                return Err(Errno::ENOTDIR);
            }
            self.dotdot(parent, &dir)?
        } else {
            self.find_entry(parent, &dir, name)?
        };
        let inode = self.read_inode(ino)?;
        self.count_lookup(ino);
        Ok(self.attr_of(ino, &inode))
    }

    /// An inode a client may name by number: allocated, and linked or still referenced.
    fn read_live_inode(&self, ino: Ino) -> Result<Inode> {
        let first = self.sb.first_ino as u64;
        if ino == 0 || ino > self.sb.inodes_count as u64 || (ino < first && ino != ROOT_INO) {
            return Err(Errno::ENOENT);
        }
        // Look at the raw mode and link count first: a free inode is no corruption here (the
        // checks in read_inode would call it one).
        let (block, off) = self.inode_location(ino)?;
        let data = self.read_meta_block(block)?;
        let raw = data.get(off..off + 0x1c).ok_or(Errno::EIO)?;
        let (mode, links) = (
            u16::from_le_bytes([raw[0], raw[1]]),
            u16::from_le_bytes([raw[0x1a], raw[0x1b]]),
        );
        if mode == 0 || (links == 0 && self.lookup_count(ino) == 0) {
            return Err(Errno::ENOENT);
        }
        self.read_inode(ino)
    }

    /// Count one more lookup reference (lookup and create-style operations return a
    /// looked-up entry).
    pub(super) fn count_lookup(&self, ino: Ino) {
        self.inodes.add_lookup(ino);
    }

    /// Look `name` up in `parent` without counting a reference (permission checks, tools).
    pub fn peek(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        let _g = self.ns_read();
        let dir = self.read_inode(parent)?;
        let ino = self.find_entry(parent, &dir, name)?;
        let inode = self.read_inode(ino)?;
        Ok(self.attr_of(ino, &inode))
    }

    /// Drop `nlookup` lookup references taken by lookup/create/readdirplus.
    pub fn forget(&self, ino: Ino, nlookup: u64) {
        if self.inodes.forget(ino, nlookup) {
            self.reap_if_orphan(ino);
        }
    }

    /// The client is gone (a guest restarted): drop every lookup reference it held, freeing
    /// unlinked inodes that were waiting for them.
    pub fn forget_all(&self) {
        for ino in self.inodes.forget_all() {
            self.reap_if_orphan(ino);
        }
    }

    /// How many lookup references the FUSE client holds on `ino`.
    pub fn lookup_count(&self, ino: Ino) -> u64 {
        self.inodes.lookup_count(ino)
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        let _g = self.ns_read();
        let inode = self.read_inode(ino)?;
        Ok(self.attr_of(ino, &inode))
    }

    /// Open a file; `flags` are the `open(2)` flags. Returns a file handle.
    pub fn open(&self, ino: Ino, flags: u32) -> Result<u64> {
        let _g = self.ns_read();
        let inode = self.read_inode(ino)?;
        if inode.is_dir() && flags & O_ACCMODE != libc::O_RDONLY as u32 {
            return Err(Errno::EISDIR);
        }
        let writes =
            flags & O_ACCMODE != libc::O_RDONLY as u32 || flags & libc::O_TRUNC as u32 != 0;
        if writes && self.is_read_only() {
            return Err(Errno::EROFS);
        }
        if flags & libc::O_TRUNC as u32 != 0 && inode.is_reg() && inode.size != 0 {
            drop(_g);
            self.setattr(
                ino,
                &super::types::SetAttr {
                    size: Some(0),
                    ..Default::default()
                },
            )?;
        }
        Ok(0)
    }

    pub fn release(&self, _ino: Ino, _fh: u64) {}

    /// Open a directory for listing. Returns a directory handle.
    pub fn opendir(&self, ino: Ino, _flags: u32) -> Result<u64> {
        let _g = self.ns_read();
        let inode = self.read_inode(ino)?;
        if !inode.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let listing = Arc::new(self.list_dir(ino, &inode)?);
        self.dir_handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, listing);
        Ok(fh)
    }

    /// List entries from cookie `offset` (0 = start, including "." and ".."). `emit` returns false
    /// when the caller's buffer is full; the entry it refused is not consumed.
    pub fn readdir(
        &self,
        ino: Ino,
        fh: u64,
        offset: u64,
        emit: &mut dyn FnMut(&DirEntry) -> bool,
    ) -> Result<()> {
        let held = self
            .dir_handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh)
            .cloned();
        let listing = match held {
            // A rewind re-reads the directory, as the kernel does.
            Some(l) if offset != 0 => l,
            _ => {
                let (inode, l) = {
                    let _g = self.ns_read();
                    let inode = self.read_inode(ino)?;
                    let l = Arc::new(self.list_dir(ino, &inode)?);
                    (inode, l)
                };
                self.dir_handles
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(fh, l.clone());
                // Listing from the start reads the directory: its atime may move.
                self.accessed(ino, &inode);
                l
            }
        };
        let listing: &Listing = &listing;
        for (_, e) in listing.from(offset) {
            if !emit(e) {
                break;
            }
        }
        Ok(())
    }

    pub fn releasedir(&self, _ino: Ino, fh: u64) {
        self.dir_handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh);
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let _g = self.ns_read();
        let inode = self.read_inode(ino)?;
        if !inode.is_symlink() {
            return Err(Errno::EINVAL);
        }
        let size = inode.size;
        if size == 0 || size >= self.block_size as u64 {
            return Err(crate::corrupt!(
                "inode {ino}: symlink length {size} is impossible"
            ));
        }
        if inode.has_flag(crate::ondisk::inode::flags::INLINE_DATA) {
            return self.inline_data(ino, &inode);
        }
        if self.is_fast_symlink(&inode) {
            return Ok(inode.block[..size as usize].to_vec());
        }
        // A slow symlink's block is metadata: read it through the buffer cache, which holds it
        // from creation until its transaction is written home.
        match self.map_block(ino, &inode, 0)?.status.written_pblk() {
            Some(pblk) => Ok(self.read_meta_block(pblk)?[..size as usize].to_vec()),
            _ => Err(crate::corrupt!(
                "inode {ino}: symlink target block is missing"
            )),
        }
    }

    /// A fast symlink keeps its target in `i_block` and owns no data blocks.
    fn is_fast_symlink(&self, inode: &Inode) -> bool {
        if inode.has_flag(crate::ondisk::inode::flags::EXTENTS) {
            return false;
        }
        let ea_blocks = if inode.file_acl != 0 {
            (self.block_size / 512) as u64
        } else {
            0
        };
        inode.size < crate::ondisk::inode::I_BLOCK_LEN as u64
            && inode.blocks_raw.saturating_sub(ea_blocks) == 0
    }

    pub fn statfs(&self) -> Result<StatFs> {
        let _g = self.ns_read();
        let bs = self.block_size as u64;
        let overhead = self.overhead_blocks()?;
        let (free_blocks, free_inodes) = self.alloc.free_counts();
        // Blocks promised to delayed allocation are as good as used.
        let free_blocks = free_blocks.saturating_sub(self.alloc.reserved()) << self.cluster_bits();
        let resv = if self.sb.has_incompat(incompat::EXTENTS) {
            ((self.sb.blocks_count >> self.cluster_bits()) / 50).min(4096) << self.cluster_bits()
        } else {
            0
        };
        let reserved = self.sb.r_blocks_count + resv;
        Ok(StatFs {
            blocks: self.sb.blocks_count.saturating_sub(overhead),
            bfree: free_blocks,
            bavail: free_blocks.saturating_sub(reserved),
            files: self.sb.inodes_count as u64,
            ffree: free_inodes,
            bsize: bs as u32,
            namelen: 255,
            frsize: bs as u32,
        })
    }

    fn cluster_bits(&self) -> u32 {
        self.sb
            .log_cluster_size
            .saturating_sub(self.sb.log_block_size)
    }

    /// Blocks used by file-system structures, as the kernel's statfs subtracts them.
    fn overhead_blocks(&self) -> Result<u64> {
        let stored = u32_at(&self.sb.raw, 0x248) as u64;
        if stored != 0 {
            return Ok(stored << self.cluster_bits());
        }
        let bs = self.block_size as u64;
        let itb = (self.sb.inodes_per_group as u64 * self.sb.inode_size as u64).div_ceil(bs);
        let mut overhead = self.sb.first_data_block as u64;
        for g in 0..self.alloc.group_count() {
            overhead += layout::has_super(&self.sb, g) as u64
                + layout::gdt_blocks_in_group(&self.sb, g) as u64
                + itb
                + 2;
        }
        if self.sb.journal_inum != 0
            && self
                .sb
                .has_compat(crate::ondisk::superblock::compat::HAS_JOURNAL)
        {
            let j = self.read_inode(self.sb.journal_inum as Ino)?;
            overhead += j.size / bs;
        }
        Ok(overhead)
    }

    /// The value of xattr `name` (full name, e.g. `user.foo`).
    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        let _g = self.ns_read();
        let inode = self.read_inode(ino)?;
        self.get_xattr(ino, &inode, name)
    }

    /// All xattr names, each NUL-terminated, concatenated.
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<u8>> {
        let _g = self.ns_read();
        let inode = self.read_inode(ino)?;
        self.list_xattr(ino, &inode)
    }

    /// SEEK_DATA / SEEK_HOLE; other whence values are the caller's business (EINVAL here).
    pub fn lseek(&self, ino: Ino, offset: u64, whence: u32) -> Result<u64> {
        if whence != SEEK_DATA && whence != SEEK_HOLE {
            return Err(Errno::EINVAL);
        }
        let inode = {
            let _g = self.ns_read();
            self.read_inode(ino)?
        };
        if inode.is_dir() {
            return Err(Errno::EINVAL);
        }
        if inode.is_reg() && self.block_size as usize <= PAGE_SIZE {
            // Data in the cache counts (see `iomap::seek`); the rw lock exclusively, so no
            // writeback starts while the cache and the map are looked at.
            let d = self.inode_data(ino)?;
            let _w = d.write_lock_for_write();
            let inode = {
                let _g = self.ns_read();
                self.read_inode(ino)?
            };
            if !inode.has_flag(flags::INLINE_DATA) {
                let size = d.sizes().size;
                let room = |own: bool, attempt: u32| self.make_room(ino, &d, own, attempt);
                let ops = self.iomap_ops(ino, &d, &room);
                return self
                    .file_io(ino, &d)
                    .seek(&ops, offset, size, whence == SEEK_DATA);
            }
            return self.seek_data_hole(ino, &inode, offset, whence);
        }
        self.seek_data_hole(ino, &inode, offset, whence)
    }

    /// `access(2)`: check `mask` (R_OK|W_OK|X_OK, or F_OK) for `ctx`, honouring POSIX ACLs.
    pub fn access(&self, ino: Ino, mask: u32, ctx: &Ctx) -> Result<()> {
        let _g = self.ns_read();
        let inode = self.read_inode(ino)?;
        let mask = mask & 7;
        if mask & libc::W_OK as u32 != 0 && self.is_read_only() {
            return Err(Errno::EROFS);
        }
        if mask == 0 {
            return Ok(());
        }
        let mode = inode.mode as u32;
        if ctx.uid == 0 {
            let is_dir = mode & 0o170000 == S_IFDIR;
            if mask & libc::X_OK as u32 != 0 && !is_dir && mode & 0o111 == 0 {
                return Err(Errno::EACCES);
            }
            return Ok(());
        }
        let granted = match self.acl_perm(ino, &inode, ctx)? {
            Some(p) => p,
            None if ctx.uid == inode.uid => (mode >> 6) & 7,
            None if ctx.gid == inode.gid => (mode >> 3) & 7,
            None => mode & 7,
        };
        if granted & mask == mask {
            Ok(())
        } else {
            Err(Errno::EACCES)
        }
    }

    /// Permission bits an access ACL grants `ctx`, or None when the inode has no ACL.
    fn acl_perm(&self, ino: Ino, inode: &Inode, ctx: &Ctx) -> Result<Option<u32>> {
        let acl = match self.get_xattr(ino, inode, b"system.posix_acl_access") {
            Ok(v) => v,
            Err(Errno::ENODATA) | Err(Errno::EOPNOTSUPP) => return Ok(None),
            Err(e) => return Err(e),
        };
        let entries: Vec<(u16, u32, u32)> = acl
            .get(4..)
            .unwrap_or(&[])
            .chunks_exact(8)
            .map(|c| {
                (
                    u16::from_le_bytes([c[0], c[1]]),
                    u16::from_le_bytes([c[2], c[3]]) as u32,
                    u32_at(c, 4),
                )
            })
            .collect();
        let find = |tag: u16| entries.iter().find(|e| e.0 == tag).map(|e| e.1);
        let mask = find(0x10).unwrap_or(7);
        if ctx.uid == inode.uid {
            return Ok(Some(find(0x01).unwrap_or(0)));
        }
        if let Some(e) = entries.iter().find(|e| e.0 == 0x02 && e.2 == ctx.uid) {
            return Ok(Some(e.1 & mask));
        }
        let mut group_match = None;
        if ctx.gid == inode.gid {
            group_match = find(0x04);
        }
        if let Some(e) = entries.iter().find(|e| e.0 == 0x08 && e.2 == ctx.gid) {
            group_match = Some(group_match.unwrap_or(0) | e.1);
        }
        if let Some(p) = group_match {
            return Ok(Some(p & mask));
        }
        Ok(Some(find(0x20).unwrap_or(0)))
    }
}
