//! The engine's side of a DAX window: a guest maps 2 MiB chunks of a file straight from the page
//! cache (the chunk's slab of the memfd), so its loads and stores hit the pages our buffered
//! I/O uses.
//!
//! * [`Fs::dax_pin`] is the fault path: the chunk is pinned (it keeps its slab and none of its
//!   pages is evicted), its missing pages within EOF are read in, and for a writable mapping it
//!   is **page_mkwrite**: holes get delalloc reservations (ENOSPC is answered here), the pages
//!   become dirty and the file's times move.
//! * While a writable mapping lives, the guest may store into any page of it without telling
//!   us, so every page within EOF of such a chunk counts as dirty: writeback marks them dirty
//!   again before it looks for dirty pages ([`Fs::dax_redirty`]), and so does the unpin.
//! * The transport owns the window (which slot shows which chunk); the engine calls it back
//!   through [`DaxRevoker`] when the file's pages move or go away for good (collapse, insert,
//!   the file is freed) — never while holding the page-map mutex. Truncate and punch keep the
//!   mappings: the pinned slab keeps its place and the cut pages are punched out of the memfd,
//!   so the guest reads zeros there, which is what the file now holds.
//!
//! Lock order: the file's rw lock → ns → the transport's slot table → the page-map mutex.

use super::InodeData;
use crate::errno::{Errno, Result};
use crate::extent::Status;
use crate::fs::Fs;
use crate::fs::types::Ino;
use crate::ondisk::inode::flags;
use crate::pagecache::{Mapping, PAGE_SIZE, SLAB_PAGES, SLAB_SIZE};
use std::os::fd::RawFd;
use std::sync::{Arc, Weak};

/// A window range that stopped showing a file's pages: `[offset, offset + len)` of the file,
/// writable or not (what its pin was).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Revoked {
    pub offset: u64,
    pub len: u64,
    pub write: bool,
}

/// The window's owner, as the engine sees it.
pub trait DaxRevoker: Send + Sync {
    /// Unmap every window range showing bytes `[from, to)` of `ino` and forget it; return what
    /// was unmapped, so the engine can unpin it.
    fn revoke(&self, ino: Ino, from: u64, to: u64) -> Vec<Revoked>;
}

/// The chunk a byte range of one mapping lies in, checked: page-aligned, not empty, inside one
/// 2 MiB chunk.
fn chunk_of(offset: u64, len: u64) -> Result<u64> {
    let page = PAGE_SIZE as u64;
    let slab = SLAB_SIZE as u64;
    if len == 0
        || !offset.is_multiple_of(page)
        || !len.is_multiple_of(page)
        || offset % slab + len > slab
    {
        return Err(Errno::EINVAL);
    }
    Ok(offset / slab)
}

fn page_is_zero(pc: &crate::pagecache::PageCache, slab: u32, p: usize) -> bool {
    let mut page = [0u8; PAGE_SIZE];
    pc.arena.read(slab, p, 0, &mut page);
    page.iter().all(|&b| b == 0)
}

impl Fs {
    /// The memfd a window maps chunks of.
    pub fn dax_memfd(&self) -> RawFd {
        self.data.pc.arena.fd()
    }

    /// Tell the engine who owns the window (the transport, once a frontend offers one).
    pub fn set_dax_revoker(&self, r: Weak<dyn DaxRevoker>) {
        *self.data.revoker.write().unwrap_or_else(|e| e.into_inner()) = Some(r);
    }

    fn dax_revoker(&self) -> Option<Arc<dyn DaxRevoker>> {
        self.data
            .revoker
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(Weak::upgrade)
    }

    /// Map `[offset, offset + len)` of `ino` (inside one 2 MiB chunk, page-aligned) for a
    /// window: pin its chunk, read in its missing pages within EOF, and with `write` do what
    /// page_mkwrite does. Returns the byte offset in the memfd where `offset` lives (the chunk's
    /// pages are contiguous there). Every successful call needs one [`Fs::dax_unpin`].
    pub fn dax_pin(&self, ino: Ino, offset: u64, len: u64, write: bool) -> Result<u64> {
        let c = chunk_of(offset, len)?;
        if write && self.is_read_only() {
            return Err(Errno::EROFS);
        }
        if self.block_size as usize > PAGE_SIZE {
            return Err(Errno::EOPNOTSUPP);
        }
        let d = self.inode_data(ino)?;
        let _w = d.write_lock();
        let mut inode = {
            let _g = self.ns_read();
            self.read_inode(ino)?
        };
        if !inode.is_reg() {
            return Err(Errno::EINVAL);
        }
        if inode.has_flag(flags::INLINE_DATA) {
            // Inline data lives in the inode, not in the page cache: move it to a block first.
            if self.is_read_only() {
                return Err(Errno::EOPNOTSUPP);
            }
            inode = self.inline_to_blocks(ino, &d)?;
        }
        // Pinned read-only until the reservations are made: a writeback meanwhile must not
        // count the chunk's pages as dirty before their blocks are reserved.
        let mut slab = self.pin_chunk(ino, &d, c, false)?;
        let r = self.dax_fault_in(ino, &d, &inode, offset, len, write);
        let mut m = d.pages();
        if let Err(e) = r {
            m.unpin(&self.data.pc, c, false);
            return Err(e);
        }
        if write {
            m.unpin(&self.data.pc, c, false);
            slab = m.pin(&self.data.pc, c, true).map_err(|_| Errno::ENOMEM)?;
            // Every page within EOF counts as dirty while the mapping lives.
            let size = d.sizes().size;
            self.redirty_chunk(&mut m, c, size);
        }
        drop(m);
        let page = (offset % SLAB_SIZE as u64) / PAGE_SIZE as u64;
        Ok(self.data.pc.arena.offset_of(slab, page as usize))
    }

    /// Pin chunk `c`, making room in the cache when no slab is free.
    fn pin_chunk(&self, ino: Ino, d: &InodeData, c: u64, write: bool) -> Result<u32> {
        self.with_slab_room(ino, d, "no slab left for a window mapping", |m| {
            m.pin(&self.data.pc, c, write)
        })
    }

    /// Read in the pages of the mapping within EOF; for a writable one, reserve its holes and
    /// dirty its pages (page_mkwrite). The chunk is pinned; the caller holds `d.rw`.
    fn dax_fault_in(
        &self,
        ino: Ino,
        d: &InodeData,
        inode: &crate::ondisk::inode::Inode,
        offset: u64,
        len: u64,
        write: bool,
    ) -> Result<()> {
        // The whole chunk within EOF: every page of a writable chunk counts as dirty.
        let _ = len;
        let slab = SLAB_SIZE as u64;
        let offset = offset - offset % slab;
        let size = d.sizes().size;
        let end = offset.saturating_add(slab).min(size);
        if end <= offset {
            // Wholly past EOF: the guest treats it as a hole and never touches it.
            return Ok(());
        }
        if !self.cache_range(ino, d, offset, end, size)? {
            return Err(Errno::ENOMEM);
        }
        if !write {
            return Ok(());
        }
        let bs = self.block_size as u64;
        let (first, end_blk) = (offset / bs, end.div_ceil(bs));
        let holes = self.unreserved_holes(ino, d, inode, first, end_blk)?;
        let need: u64 = holes.iter().map(|(_, l)| l).sum();
        // Always a reservation (never write()'s allocate-at-once switch): a reservation keeps
        // the metadata pool free, so the writeback of what the guest stores cannot fail.
        self.reserve_blocks(ino, d, need)?;
        for &(s, l) in &holes {
            self.es.insert(ino, s, l, Status::Delayed);
        }
        self.file_modified(ino, d, false)
    }

    /// Undo one [`Fs::dax_pin`]: a writable mapping's pages are dirty for normal writeback to
    /// take; the chunk's pages may be evicted again once no mapping pins it.
    pub fn dax_unpin(&self, ino: Ino, offset: u64, len: u64, write: bool) {
        let Ok(c) = chunk_of(offset, len) else {
            return;
        };
        let Some(d) = self.inodes.get(ino) else {
            return;
        };
        let _w = d.write_lock();
        self.unpin_locked(&d, c, write);
    }

    /// [`Fs::dax_unpin`] with `d.rw` held.
    fn unpin_locked(&self, d: &InodeData, c: u64, write: bool) {
        let size = d.sizes().size;
        let mut m = d.pages();
        if write {
            self.redirty_chunk(&mut m, c, size);
        }
        if !m.unpin(&self.data.pc, c, write) {
            log::warn!("window unmap of a chunk that was not pinned (chunk {c})");
        }
    }

    /// Every page within EOF of writable-mapped chunks is dirty again (the guest may have
    /// stored into it since the last writeback). Called by writeback with `d.rw` held.
    pub(super) fn dax_redirty(&self, d: &InodeData) {
        let size = d.sizes().size;
        let mut m = d.pages();
        let chunks = m.write_mapped_chunks();
        if chunks.is_empty() {
            return;
        }
        for c in chunks {
            self.redirty_chunk(&mut m, c, size);
        }
        m.write_mapped_cleaned();
    }

    /// Before a read or write of bytes `[from, to)` fills blocks from disk: pages of writable
    /// mapped chunks in that range hold what the guest stored, which is the file's data.
    pub(super) fn dax_redirty_range(&self, d: &InodeData, from: u64, to: u64) {
        let mut m = d.pages();
        if m.pinned_chunks() == 0 {
            return;
        }
        let chunks = m.write_mapped_chunks();
        if chunks.is_empty() {
            return;
        }
        let size = d.sizes().size;
        let slab = SLAB_SIZE as u64;
        for c in chunks {
            if c.saturating_mul(slab) < to && c.saturating_add(1).saturating_mul(slab) > from {
                self.redirty_chunk(&mut m, c, size);
            }
        }
    }

    /// Mark the pages of chunk `c` within `size` dirty. A page not resident (cut by a truncate
    /// or punch since the mapping was made) counts only if the guest stored something other
    /// than zeros there since, so a punched hole stays a hole.
    fn redirty_chunk(&self, m: &mut Mapping, c: u64, size: u64) {
        let pc = &self.data.pc;
        let bs = self.block_size as u64;
        let bpp = PAGE_SIZE as u64 / bs;
        let first = c * SLAB_PAGES as u64;
        let end_page = size
            .div_ceil(PAGE_SIZE as u64)
            .min(first + SLAB_PAGES as u64);
        for idx in first..end_page {
            let st = m.state(idx);
            if st.resident && st.cut && st.dirty == 0 {
                // Cut while mapped and refilled with zeros since: still a hole unless the guest
                // stored data there.
                if let Some((slab, p)) = m.slab_of(idx)
                    && page_is_zero(pc, slab, p)
                {
                    continue;
                }
            }
            if !st.resident {
                let Some((slab, p)) = m.slab_of(idx) else {
                    return;
                };
                if !pc.arena.has_data(slab, p) {
                    continue;
                }
                if page_is_zero(pc, slab, p) {
                    // Only read (a read fault fills a zero page) or stored zeros: a hole.
                    pc.arena.punch(slab, p, 1);
                    continue;
                }
                if m.get_or_create(pc, idx).is_err() {
                    continue;
                }
            }
            // Blocks of the page inside the file.
            let blocks = (size.div_ceil(bs) - idx * bpp).min(bpp);
            let mask = ((1u16 << blocks) - 1) as u8;
            m.set_dirty(pc, idx, mask);
        }
    }

    /// The file's pages at `[from, to)` move or go for good: unmap the window ranges showing
    /// them and drop their pins. The caller holds `d.rw` exclusively, not the page-map mutex.
    pub(super) fn dax_revoke(&self, ino: Ino, d: &InodeData, from: u64, to: u64) {
        if d.pages().pinned_chunks() == 0 {
            return;
        }
        let revoked = match self.dax_revoker() {
            Some(r) => r.revoke(ino, from, to),
            None => Vec::new(),
        };
        for r in revoked {
            if let Ok(c) = chunk_of(r.offset, r.len) {
                self.unpin_locked(d, c, r.write);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::chunk_of;
    use crate::errno::Errno;
    use crate::fs::testutil::ctx;
    use crate::fs::{Fs, MountOptions, ROOT_INO, SetAttr};
    use std::sync::Arc;

    const CHUNK: u64 = 2 << 20;

    fn mount(img: &std::path::Path) -> Fs {
        let dev = crate::blockdev::FileDevice::open(img, false).unwrap();
        Fs::mount_with_cache(Arc::new(dev), &MountOptions { read_only: false }, 64 << 20).unwrap()
    }

    /// Writable mappings of holes until the file system is full: the refused one answers
    /// ENOSPC and everything accepted is written back without error.
    #[test]
    fn mkwrite_reserves_until_enospc_and_writeback_never_fails() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        super::super::tests::mkfs(&img, &["-t", "ext4"], "32M");
        let fs = mount(&img);
        let ino = fs.mknod(ROOT_INO, b"big", 0o100644, 0, &ctx()).unwrap().ino;
        let sa = SetAttr {
            size: Some(64 * CHUNK),
            ..Default::default()
        };
        fs.setattr(ino, &sa).unwrap();
        let mut live = std::collections::VecDeque::new();
        let mut refused = None;
        for c in 0..64 {
            match fs.dax_pin(ino, c * CHUNK, CHUNK, true) {
                Ok(_) => live.push_back(c),
                Err(e) => {
                    refused = Some((c, e));
                    break;
                }
            }
            if live.len() > 6 {
                let old = live.pop_front().unwrap();
                fs.dax_unpin(ino, old * CHUNK, CHUNK, true);
            }
        }
        let (c, e) = refused.expect("64 MiB of holes do not fit 32 MiB");
        assert_eq!(e, Errno::ENOSPC, "refused at chunk {c}");
        fs.syncfs().expect("accepted mappings are written back");
        for old in live {
            fs.dax_unpin(ino, old * CHUNK, CHUNK, true);
        }
        fs.syncfs().expect("unmapped pages are written back");
        assert_eq!(fs.data.pc.pinned_slabs(), 0);
        fs.shutdown().unwrap();
        drop(fs);
        crate::test_support::e2fsck_clean(&img);
    }

    #[test]
    fn a_mapping_lies_in_one_chunk_and_is_page_aligned() {
        assert_eq!(chunk_of(0, 2 << 20), Ok(0));
        assert_eq!(chunk_of(6 << 20, 2 << 20), Ok(3));
        assert_eq!(chunk_of((2 << 20) + 4096, 8192), Ok(1));
        assert_eq!(chunk_of(0, 0), Err(Errno::EINVAL));
        assert_eq!(chunk_of(512, 4096), Err(Errno::EINVAL));
        assert_eq!(chunk_of(0, 4097), Err(Errno::EINVAL));
        assert_eq!(chunk_of(4096, 2 << 20), Err(Errno::EINVAL));
        assert_eq!(chunk_of(!4095u64, 4096), Ok((!4095u64) >> 21));
    }
}
