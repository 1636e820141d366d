//! File data: reads (extents, indirect maps, holes, unwritten extents, inline data) and
//! SEEK_DATA/SEEK_HOLE.

use super::Fs;
use super::types::{Ino, SEEK_DATA, SEEK_HOLE};
use crate::errno::{Errno, Result};
use crate::ondisk::inode::{I_BLOCK_LEN, Inode, flags};

impl Fs {
    /// The stored content of an inline-data inode: `i_block` then the `system.data` xattr, up to
    /// the size. A size past the stored bytes reads as zeros there, as in the kernel (e2fsck
    /// accepts it), so this may be shorter than the size.
    pub(super) fn inline_data(&self, ino: Ino, inode: &Inode) -> Result<Vec<u8>> {
        let size = inode.size.min(usize::MAX as u64) as usize;
        let mut out = inode.block[..size.min(I_BLOCK_LEN)].to_vec();
        if size > I_BLOCK_LEN {
            let extra = self.inline_xattr(ino, inode)?;
            let need = size - I_BLOCK_LEN;
            out.extend_from_slice(&extra[..need.min(extra.len())]);
        }
        Ok(out)
    }

    /// Read up to `size` bytes at `offset` of a regular file.
    pub(super) fn read_data(
        &self,
        ino: Ino,
        inode: &Inode,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>> {
        if inode.is_dir() {
            return Err(Errno::EISDIR);
        }
        if offset >= inode.size || size == 0 {
            return Ok(Vec::new());
        }
        let end = inode.size.min(offset + size as u64);
        if inode.has_flag(flags::INLINE_DATA) {
            let data = self.inline_data(ino, inode)?;
            let mut buf = vec![0u8; (end - offset) as usize];
            let stored = (data.len() as u64).min(end);
            if stored > offset {
                buf[..(stored - offset) as usize]
                    .copy_from_slice(&data[offset as usize..stored as usize]);
            }
            return Ok(buf);
        }
        let bs = self.block_size as u64;
        let mut buf = vec![0u8; (end - offset) as usize];
        let mut pos = offset;
        while pos < end {
            let m = self.map_block(ino, inode, pos / bs)?;
            let run_end = end.min((m.lblk + m.len).saturating_mul(bs));
            if let Some(pblk) = m.status.written_pblk() {
                let dev_off = pblk * bs + (pos - m.lblk * bs);
                let dst = &mut buf[(pos - offset) as usize..(run_end - offset) as usize];
                self.dev.read_at(dst, dev_off).map_err(|e| {
                    log::error!("inode {ino}: I/O error reading data at byte {dev_off}: {e}");
                    Errno::EIO
                })?;
            }
            pos = run_end;
        }
        Ok(buf)
    }

    /// SEEK_DATA / SEEK_HOLE from `offset`. Unwritten extents count as holes, as in the kernel.
    pub(super) fn seek_data_hole(
        &self,
        ino: Ino,
        inode: &Inode,
        offset: u64,
        whence: u32,
    ) -> Result<u64> {
        let isize = inode.size;
        if offset >= isize {
            return Err(Errno::ENXIO);
        }
        if inode.has_flag(flags::INLINE_DATA) {
            return Ok(if whence == SEEK_DATA { offset } else { isize });
        }
        let bs = self.block_size as u64;
        let mut pos = offset;
        while pos < isize {
            let m = self.map_block(ino, inode, pos / bs)?;
            let is_data = m.status.written_pblk().is_some();
            if (whence == SEEK_DATA) == is_data {
                return Ok(pos.max(m.lblk * bs).min(isize));
            }
            pos = (m.lblk + m.len).saturating_mul(bs);
        }
        match whence {
            SEEK_HOLE => Ok(isize),
            _ => Err(Errno::ENXIO),
        }
    }
}
