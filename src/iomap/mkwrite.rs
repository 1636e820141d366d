//! page_mkwrite for a guest's window mapping (the kernel's iomap_page_mkwrite, one 2 MiB chunk
//! at a time): the pages of the range within EOF are read in; for a writable mapping the file
//! system makes room for every block of it at once ([`WriteOps::begin`], its ops built for a
//! fault: a reservation, so the writeback of whatever the guest stores there cannot fail).
//! The caller pins the chunk and marks its pages dirty while the mapping lives.

use super::file::FileIo;
use super::ops::WriteOps;
use crate::errno::{Errno, Result};

impl FileIo<'_> {
    /// Fault in bytes `[from, to)` (one chunk) for a mapping, `write` for a writable one. The
    /// part past EOF is left alone: the guest treats it as a hole until the file grows into
    /// it. The caller holds the file's rw lock exclusively.
    pub fn page_mkwrite(
        &self,
        ops: &mut dyn WriteOps,
        from: u64,
        to: u64,
        write: bool,
    ) -> Result<()> {
        let size = self.d.sizes().size;
        let end = to.min(size);
        if end <= from {
            return Ok(());
        }
        if !self.cache_range(&*ops, from, end, size)? {
            return Err(Errno::ENOMEM);
        }
        if write {
            let bs = self.block_size;
            ops.begin(from / bs, end.div_ceil(bs))?;
        }
        Ok(())
    }
}
