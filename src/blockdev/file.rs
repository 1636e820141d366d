//! The image file on the host, held with an exclusive `flock` so that no second daemon (or a `blk`
//! export of the same image) can serve it at the same time.

use super::{BlockDevice, out_of_range};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

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
