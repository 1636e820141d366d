//! Block devices: the only layer that performs I/O on the image. Knows nothing about ext4.

mod file;
mod mem;
pub mod record;

pub use file::FileDevice;
pub use mem::MemDevice;
pub use record::RecordingDevice;

use std::io;
use vm_memory::VolatileSlice;

/// Bytes moved per device call by the default guest-memory copies (their bounce buffer).
const BOUNCE: usize = 1 << 20;

/// Byte-addressed storage under the file system.
pub trait BlockDevice: Send + Sync {
    /// Read exactly `buf.len()` bytes at `offset`; reading past the end is an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Write all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make every completed write durable (`fdatasync`).
    fn flush(&self) -> io::Result<()>;
    /// Size of the device in bytes.
    fn size(&self) -> u64;
    /// Tell the device a range is no longer used. The default does nothing.
    fn discard(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    /// Vectored read: fill `bufs` in order from `offset`.
    fn read_vectored_at(&self, bufs: &mut [&mut [u8]], offset: u64) -> io::Result<()> {
        let mut off = offset;
        for b in bufs.iter_mut() {
            self.read_at(b, off)?;
            off += b.len() as u64;
        }
        Ok(())
    }
    /// Vectored write: write `bufs` in order from `offset`.
    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        let mut off = offset;
        for b in bufs {
            self.write_at(b, off)?;
            off += b.len() as u64;
        }
        Ok(())
    }
    /// True when writes are refused.
    fn is_read_only(&self) -> bool {
        false
    }
    /// Read at `offset` into memory shared with a guest, which may change it at any time: `bufs`
    /// in order, all of each. No Rust reference to that memory is ever made (device files
    /// override this with a `preadv` straight into it); this default goes through a bounce
    /// buffer and volatile copies.
    fn read_to_guest(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<()> {
        bounce_read_to_guest(self, bufs, offset)
    }
    /// Write `bufs` (guest memory, see [`BlockDevice::read_to_guest`]) in order at `offset`.
    fn write_from_guest(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<()> {
        bounce_write_from_guest(self, bufs, offset)
    }
}

/// [`BlockDevice::read_to_guest`] through a bounce buffer: device reads into it, volatile
/// copies out of it.
pub fn bounce_read_to_guest<D: BlockDevice + ?Sized>(
    dev: &D,
    bufs: &[VolatileSlice<'_>],
    offset: u64,
) -> io::Result<()> {
    let mut tmp = vec![0u8; bufs.iter().map(|b| b.len()).max().unwrap_or(0).min(BOUNCE)];
    let mut off = offset;
    for b in bufs {
        let mut done = 0;
        while done < b.len() {
            let n = (b.len() - done).min(tmp.len());
            dev.read_at(&mut tmp[..n], off)?;
            b.offset(done)
                .map_err(io::Error::other)?
                .copy_from(&tmp[..n]);
            done += n;
            off += n as u64;
        }
    }
    Ok(())
}

/// [`BlockDevice::write_from_guest`] through a bounce buffer.
pub fn bounce_write_from_guest<D: BlockDevice + ?Sized>(
    dev: &D,
    bufs: &[VolatileSlice<'_>],
    offset: u64,
) -> io::Result<()> {
    let mut tmp = vec![0u8; bufs.iter().map(|b| b.len()).max().unwrap_or(0).min(BOUNCE)];
    let mut off = offset;
    for b in bufs {
        let mut done = 0;
        while done < b.len() {
            let n = (b.len() - done).min(tmp.len());
            b.offset(done)
                .map_err(io::Error::other)?
                .copy_to(&mut tmp[..n]);
            dev.write_at(&tmp[..n], off)?;
            done += n;
            off += n as u64;
        }
    }
    Ok(())
}

fn out_of_range(offset: u64, len: usize, size: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("access at {offset}+{len} is past the end of the device ({size} bytes)"),
    )
}
