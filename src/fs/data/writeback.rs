//! Writeback of a file: the generic loop (`iomap::writeback`) with ext4's ops
//! (`inode::iomap_ops`). Pages a guest may have stored into through a writable window mapping
//! become dirty first (`dax`).

use super::InodeData;
use crate::errno::{Errno, Result};
use crate::fs::Fs;
use crate::fs::types::Ino;
use crate::inode::iomap_ops::Ext4Writeback;
use crate::iomap::FileIo;
pub(in crate::fs) use crate::iomap::writeback::Hold;
use crate::pagecache::PageIndex;

impl Fs {
    /// The generic data path's view of file `ino`.
    pub(in crate::fs) fn file_io<'a>(&'a self, ino: Ino, d: &'a InodeData) -> FileIo<'a> {
        FileIo {
            ino,
            d,
            pc: &self.data.pc,
            dev: &*self.dev,
            block_size: self.block_size as u64,
            cleaned: Some(&self.data.kick.cleaned),
        }
    }

    /// Write back the dirty pages of `[from, to)` (page indexes) of `ino` and wait for every
    /// write of that range in flight (ours or another thread's) to complete. The caller holds
    /// `d.rw` (shared or exclusive).
    pub(in crate::fs) fn writeback_inode(
        &self,
        ino: Ino,
        d: &InodeData,
        from: PageIndex,
        to: PageIndex,
    ) -> Result<()> {
        let r = self.writeback_file(ino, d, from, to, Hold::Caller);
        d.wait_writeback(from, to);
        r
    }

    /// Write back the dirty pages of `[from, to)` of `ino`, batch by batch, without waiting for
    /// writes other threads have in flight (see `iomap::writeback`).
    pub(in crate::fs) fn writeback_file(
        &self,
        ino: Ino,
        d: &InodeData,
        from: PageIndex,
        to: PageIndex,
        hold: Hold,
    ) -> Result<()> {
        // Pages a guest may have stored into through a writable window mapping.
        self.dax_redirty(d);
        if d.pages().last_dirty_before(to).is_none_or(|l| l < from) {
            return Ok(());
        }
        if self.is_read_only() {
            return Err(Errno::EROFS);
        }
        let ops = Ext4Writeback {
            vol: &self.vol,
            ino,
            d,
        };
        self.file_io(ino, d).writeback(&ops, from, to, hold)
    }
}
