//! Block devices: the only layer that performs I/O on the image. Knows nothing about ext4.

mod file;
mod mem;
pub mod record;

pub use file::{FileDevice, ImageIo};
pub use mem::MemDevice;
pub use record::RecordingDevice;

use std::io;

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
}

fn out_of_range(offset: u64, len: usize, size: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("access at {offset}+{len} is past the end of the device ({size} bytes)"),
    )
}
