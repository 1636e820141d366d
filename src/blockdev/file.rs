//! The image file on the host, held with an exclusive `flock` so that no second daemon (or a `blk`
//! export of the same image) can serve it at the same time.

use super::{BlockDevice, out_of_range};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use vm_memory::VolatileSlice;

pub struct FileDevice {
    file: File,
    size: u64,
    read_only: bool,
}

impl FileDevice {
    /// Open `path` and take the image lock: shared for read-only use, exclusive otherwise.
    /// Any writer excludes every other user; a second opener gets a clear error.
    pub fn open(path: &Path, read_only: bool) -> io::Result<FileDevice> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot open image {}: {e}", path.display()),
                )
            })?;
        let op = if read_only {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock on a valid, owned file descriptor; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "image {} is in use by another process (it holds the image lock)",
                        path.display()
                    ),
                ));
            }
            return Err(e);
        }
        let meta = file.metadata()?;
        let size = if meta.file_type().is_file() {
            meta.len()
        } else {
            // A block device: its size is where seeking to the end lands.
            use std::io::Seek;
            let mut f = &file;
            f.seek(io::SeekFrom::End(0))?
        };
        Ok(FileDevice {
            file,
            size,
            read_only,
        })
    }
}

impl BlockDevice for FileDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.size)
        {
            return Err(out_of_range(offset, buf.len(), self.size));
        }
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.size)
        {
            return Err(out_of_range(offset, buf.len(), self.size));
        }
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// One `preadv` per batch of buffers, straight into guest memory.
    fn read_to_guest(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<()> {
        self.guest_io(bufs, offset, false)
    }

    /// One `pwritev` per batch of buffers, straight from guest memory.
    fn write_from_guest(&self, bufs: &[VolatileSlice<'_>], offset: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        self.guest_io(bufs, offset, true)
    }
}

/// The most iovecs one `preadv`/`pwritev` takes (Linux's UIO_MAXIOV).
const IOV_MAX: usize = 1024;

impl FileDevice {
    /// `preadv` (or `pwritev` when `write`) of all of `bufs` at `offset`, resuming after short
    /// transfers.
    fn guest_io(&self, bufs: &[VolatileSlice<'_>], offset: u64, write: bool) -> io::Result<()> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if offset
            .checked_add(total as u64)
            .is_none_or(|e| e > self.size)
        {
            return Err(out_of_range(offset, total, self.size));
        }
        // The guards keep the guest pointers valid while the kernel uses them.
        let guards: Vec<_> = bufs.iter().map(|b| b.ptr_guard_mut()).collect();
        let mut iov: Vec<libc::iovec> = guards
            .iter()
            .filter(|g| g.len() > 0)
            .map(|g| libc::iovec {
                iov_base: g.as_ptr().cast(),
                iov_len: g.len(),
            })
            .collect();
        let mut first = 0;
        let mut off = offset;
        while first < iov.len() {
            let batch = &iov[first..iov.len().min(first + IOV_MAX)];
            // SAFETY: every iovec points into guest memory that `guards` keeps mapped, over the
            // length of its slice; the kernel reads or writes that memory itself and no Rust
            // reference to it exists, so a guest changing it meanwhile only changes the data.
            let n = unsafe {
                if write {
                    libc::pwritev(
                        self.file.as_raw_fd(),
                        batch.as_ptr(),
                        batch.len() as libc::c_int,
                        off as libc::off_t,
                    )
                } else {
                    libc::preadv(
                        self.file.as_raw_fd(),
                        batch.as_ptr(),
                        batch.len() as libc::c_int,
                        off as libc::off_t,
                    )
                }
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if e.raw_os_error() == Some(libc::EINVAL) && off == offset {
                    // Buffers the file cannot take as they are (direct I/O wants aligned
                    // memory): go through a bounce buffer and `read_at`/`write_at` instead.
                    return if write {
                        super::bounce_write_from_guest(self, bufs, offset)
                    } else {
                        super::bounce_read_to_guest(self, bufs, offset)
                    };
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the image ended at byte {off}"),
                ));
            }
            off += n as u64;
            // Skip what was transferred; a partly done iovec starts later.
            let mut left = n as usize;
            while left > 0 {
                let v = &mut iov[first];
                if left >= v.iov_len {
                    left -= v.iov_len;
                    first += 1;
                } else {
                    // SAFETY: advancing inside the same buffer, by less than its length.
                    v.iov_base = unsafe { v.iov_base.cast::<u8>().add(left).cast() };
                    v.iov_len -= left;
                    left = 0;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_writer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, vec![0u8; 8192]).unwrap();
        let a = FileDevice::open(&p, false).unwrap();
        let err = FileDevice::open(&p, false)
            .err()
            .expect("second open must fail");
        assert!(err.to_string().contains("in use"), "{err}");
        assert!(
            FileDevice::open(&p, true).is_err(),
            "a reader must not share with a writer"
        );
        drop(a);
        let r1 = FileDevice::open(&p, true).unwrap();
        let _r2 = FileDevice::open(&p, true).unwrap();
        assert!(FileDevice::open(&p, false).is_err());
        let mut b = [1u8; 16];
        r1.read_at(&mut b, 8192 - 16).unwrap();
        assert!(r1.read_at(&mut b, 8190).is_err());
        assert!(r1.write_at(&b, 0).is_err());
    }
}
