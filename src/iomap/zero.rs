//! Zero range for partial blocks (the kernel's iomap_zero_range, for the block at the edge of
//! a truncate, a punch or a zeroed range): the bytes are zeroed in the page cache — the block
//! read in first when it has data on disk — and the block is left dirty. Never called inside a
//! journal handle: the caller writes the block back before the transaction that frees the
//! blocks after it.

use super::file::FileIo;
use super::mapping::Status;
use super::ops::IomapOps;
use crate::errno::{Errno, Result};
use crate::pagecache::PAGE_SIZE;

impl FileIo<'_> {
    /// Zero `len` bytes at `pos`, all within one block and not the whole block. Returns true
    /// when the block has a device block the zeros must reach now (the caller writes it back);
    /// false when there was nothing to zero (a hole not in the cache) or the block has none yet
    /// (it stays dirty). The caller holds the file's rw lock exclusively.
    pub fn zero_partial(&self, ops: &dyn IomapOps, pos: u64, len: u64) -> Result<bool> {
        let bs = self.block_size;
        if len == 0 || len >= bs || pos % bs + len > bs {
            return Ok(false);
        }
        let lblk = pos / bs;
        let bpp = PAGE_SIZE as u64 / bs;
        let idx = lblk / bpp;
        let b = lblk % bpp;
        let status = ops.map(lblk)?.status;
        let cached = self.d.pages().state(idx).uptodate & (1 << b) != 0;
        if !cached && status.written_pblk().is_none() {
            // Nothing on disk and nothing cached: the block reads as zeros already.
            return Ok(false);
        }
        let (slab, p) = {
            let got = self.d.pages().get_or_create(self.pc, idx);
            match got {
                Ok(x) => x,
                Err(_) => {
                    ops.make_room(false, 0)?;
                    self.d
                        .pages()
                        .get_or_create(self.pc, idx)
                        .map_err(|_| Errno::ENOMEM)?
                }
            }
        };
        if !cached {
            self.fill_block(ops, lblk, slab, p, (b * bs) as usize)?;
        }
        self.pc
            .arena
            .zero(slab, p, (b * bs + pos % bs) as usize, len as usize);
        self.d.pages().set_dirty(self.pc, idx, 1 << b);
        Ok(status != Status::Hole)
    }
}
