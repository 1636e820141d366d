//! The image file on the host, held with an exclusive `flock` so that no second daemon (or a `blk`
//! export of the same image) can serve it at the same time.
//!
//! By default the image is read and written with `O_DIRECT` ([`ImageIo::Direct`]): our page
//! cache and metadata buffer cache are then the only host copies of the image's data, instead
//! of a second copy in the host's page cache. Direct I/O needs the file offset, the length and
//! the memory address aligned (the file system says how much, through `statx`); a request that
//! is aligned goes straight to the device, one whose memory is not goes through an aligned
//! bounce buffer, and one whose offset or length is not uses a second, buffered descriptor (the
//! kernel keeps the two coherent). An image on a file system that refuses `O_DIRECT` (ramfs,
//! some network file systems) is served with buffered I/O, with a log line.

use super::{BlockDevice, out_of_range};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use vm_memory::VolatileSlice;

/// How the image file is accessed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ImageIo {
    /// `O_DIRECT`: no copy of the image in the host's page cache (the default).
    #[default]
    Direct,
    /// Through the host's page cache.
    Buffered,
}

impl std::str::FromStr for ImageIo {
    type Err = String;
    fn from_str(s: &str) -> Result<ImageIo, String> {
        match s {
            "direct" => Ok(ImageIo::Direct),
            "buffered" => Ok(ImageIo::Buffered),
            _ => Err(format!(
                "unknown image I/O mode {s:?} (use direct or buffered)"
            )),
        }
    }
}

impl std::fmt::Display for ImageIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ImageIo::Direct => "direct",
            ImageIo::Buffered => "buffered",
        })
    }
}

/// The `O_DIRECT` descriptor and the alignment it needs.
struct Direct {
    file: File,
    /// Alignment of file offsets and lengths.
    off_align: u64,
    /// Alignment of memory addresses.
    mem_align: usize,
    /// Cleared when the file system refuses a direct request after all (then every request
    /// uses the buffered descriptor).
    usable: AtomicBool,
}

/// Most iovecs one `preadv`/`pwritev` takes.
const IOV_MAX: usize = 1024;

pub struct FileDevice {
    file: File,
    direct: Option<Direct>,
    size: u64,
    read_only: bool,
}

/// The direct I/O alignment of an open file (offset, memory) as the file system reports it;
/// `Some((0, 0))` when it reports that direct I/O is not supported, `None` when it does not say.
fn dio_align(file: &File) -> Option<(u64, usize)> {
    // SAFETY: statx with an empty path and AT_EMPTY_PATH on a valid descriptor writes into a
    // zeroed statx struct that lives for the call.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: see above; the path is a valid NUL-terminated empty string.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return None;
    }
    Some((
        stx.stx_dio_offset_align as u64,
        stx.stx_dio_mem_align as usize,
    ))
}

/// A zeroed buffer of `len` bytes whose address is a multiple of `align`.
fn aligned_buf(len: usize, align: usize) -> (Vec<u8>, usize) {
    let v = vec![0u8; len + align];
    let at = v.as_ptr().align_offset(align);
    (v, at)
}

impl FileDevice {
    /// Open `path` for direct I/O (see [`FileDevice::open_with`]).
    pub fn open(path: &Path, read_only: bool) -> io::Result<FileDevice> {
        FileDevice::open_with(path, read_only, ImageIo::Direct)
    }

    /// Open `path` and take the image lock: shared for read-only use, exclusive otherwise.
    /// Any writer excludes every other user; a second opener gets a clear error. With
    /// [`ImageIo::Direct`], a file system that refuses `O_DIRECT` gives buffered I/O (logged).
    pub fn open_with(path: &Path, read_only: bool, io: ImageIo) -> io::Result<FileDevice> {
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
        // A lock released a moment ago may still be held for a little while by a child the
        // previous holder's process forked (its copy of the descriptor lives until the child
        // execs): try for up to a second before calling the image busy.
        let mut tries = 0;
        let rc = loop {
            // SAFETY: flock on a valid, owned file descriptor; no memory is passed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
            if rc == 0
                || io::Error::last_os_error().raw_os_error() != Some(libc::EWOULDBLOCK)
                || tries == 20
            {
                break rc;
            }
            tries += 1;
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
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
        let direct = match io {
            ImageIo::Buffered => None,
            ImageIo::Direct => open_direct(path, &file, read_only, size),
        };
        Ok(FileDevice {
            file,
            direct,
            size,
            read_only,
        })
    }

    /// The I/O mode in use (buffered when direct I/O was asked for but refused).
    pub fn image_io(&self) -> ImageIo {
        match &self.direct {
            Some(d) if d.usable.load(Ordering::Relaxed) => ImageIo::Direct,
            _ => ImageIo::Buffered,
        }
    }

    /// The direct descriptor, when a request of `len` bytes at `offset` may use it.
    fn direct_for(&self, offset: u64, len: u64) -> Option<&Direct> {
        let d = self.direct.as_ref()?;
        (d.usable.load(Ordering::Relaxed)
            && offset.is_multiple_of(d.off_align)
            && len.is_multiple_of(d.off_align))
        .then_some(d)
    }

    /// A direct request failed with EINVAL: the file system does not take direct I/O after
    /// all. Every later request is buffered.
    fn give_up_direct(&self, d: &Direct, e: &io::Error) {
        if d.usable.swap(false, Ordering::Relaxed) {
            log::warn!("image: direct I/O refused ({e}); using buffered I/O from now on");
        }
    }

    fn check(&self, offset: u64, len: usize) -> io::Result<()> {
        if offset.checked_add(len as u64).is_none_or(|e| e > self.size) {
            return Err(out_of_range(offset, len, self.size));
        }
        Ok(())
    }
}

/// Open the `O_DIRECT` descriptor beside the buffered one, or say (in the log) why not.
fn open_direct(path: &Path, file: &File, read_only: bool, size: u64) -> Option<Direct> {
    let refused = |why: &str| {
        log::warn!(
            "image {}: {why}; using buffered I/O (the host's page cache keeps a copy of the image)",
            path.display()
        );
        None
    };
    let (off_align, mem_align) = match dio_align(file) {
        Some((0, _)) => return refused("its file system does not support direct I/O"),
        Some((o, m)) => (o, m.max(1)),
        // Not reported: assume the strictest alignment in common use.
        None => (4096, 4096),
    };
    let dfile = match OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => return refused(&format!("opening it with O_DIRECT failed ({e})")),
    };
    if size >= off_align {
        // Some file systems accept the flag but refuse the I/O: try one read.
        let (mut v, at) = aligned_buf(off_align as usize, mem_align);
        if let Err(e) = dfile.read_exact_at(&mut v[at..at + off_align as usize], 0) {
            return refused(&format!("a direct read failed ({e})"));
        }
    }
    log::info!(
        "image {}: direct I/O (offsets aligned to {off_align}, memory to {mem_align})",
        path.display()
    );
    Some(Direct {
        file: dfile,
        off_align,
        mem_align,
        usable: AtomicBool::new(true),
    })
}

fn is_einval(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

/// `preadv` until every buffer is full (an early end of file is an error).
fn preadv_all(file: &File, bufs: &mut [&mut [u8]], offset: u64) -> io::Result<()> {
    let mut iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .filter(|b| !b.is_empty())
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    vectored_all(file, &mut iov, offset, |fd, iov, n, off| {
        // SAFETY: the iovecs point into the caller's mutable slices, which outlive the call and
        // are not otherwise accessed meanwhile; preadv writes only inside them.
        unsafe { libc::preadv(fd, iov, n, off) }
    })
}

/// `pwritev` until every buffer is written.
fn pwritev_all(file: &File, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
    let mut iov: Vec<libc::iovec> = bufs
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    vectored_all(file, &mut iov, offset, |fd, iov, n, off| {
        // SAFETY: the iovecs point into the caller's slices, which outlive the call; pwritev
        // only reads them.
        unsafe { libc::pwritev(fd, iov, n, off) }
    })
}

/// Issue `op` (preadv or pwritev) over `iov` from `offset` until every byte is transferred,
/// at most `IOV_MAX` buffers per call, resuming after short transfers.
fn vectored_all(
    file: &File,
    iov: &mut [libc::iovec],
    mut offset: u64,
    op: impl Fn(i32, *const libc::iovec, i32, libc::off_t) -> isize,
) -> io::Result<()> {
    let mut i = 0;
    while i < iov.len() {
        let n = (iov.len() - i).min(IOV_MAX);
        let rc = op(
            file.as_raw_fd(),
            iov[i..].as_ptr(),
            n as i32,
            offset as libc::off_t,
        );
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if rc == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the image ended at byte {offset}"),
            ));
        }
        let mut done = rc as usize;
        offset += done as u64;
        while done > 0 {
            if done >= iov[i].iov_len {
                done -= iov[i].iov_len;
                i += 1;
            } else {
                // SAFETY: advancing inside the same buffer, `done` < its length.
                iov[i].iov_base = unsafe { (iov[i].iov_base as *mut u8).add(done) } as *mut _;
                iov[i].iov_len -= done;
                done = 0;
            }
        }
    }
    Ok(())
}

impl BlockDevice for FileDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check(offset, buf.len())?;
        if let Some(d) = self.direct_for(offset, buf.len() as u64) {
            let r = if (buf.as_ptr() as usize).is_multiple_of(d.mem_align) {
                d.file.read_exact_at(buf, offset)
            } else {
                let (mut v, at) = aligned_buf(buf.len(), d.mem_align);
                let r = d.file.read_exact_at(&mut v[at..at + buf.len()], offset);
                if r.is_ok() {
                    buf.copy_from_slice(&v[at..at + buf.len()]);
                }
                r
            };
            match r {
                Err(e) if is_einval(&e) => self.give_up_direct(d, &e),
                r => return r,
            }
        }
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        self.check(offset, buf.len())?;
        if let Some(d) = self.direct_for(offset, buf.len() as u64) {
            let r = if (buf.as_ptr() as usize).is_multiple_of(d.mem_align) {
                d.file.write_all_at(buf, offset)
            } else {
                let (mut v, at) = aligned_buf(buf.len(), d.mem_align);
                v[at..at + buf.len()].copy_from_slice(buf);
                d.file.write_all_at(&v[at..at + buf.len()], offset)
            };
            match r {
                Err(e) if is_einval(&e) => self.give_up_direct(d, &e),
                r => return r,
            }
        }
        self.file.write_all_at(buf, offset)
    }

    fn read_vectored_at(&self, bufs: &mut [&mut [u8]], offset: u64) -> io::Result<()> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        self.check(offset, total)?;
        if self.direct.is_some() {
            if let Some(d) = self.direct_for(offset, total as u64)
                && bufs.iter().all(|b| {
                    (b.as_ptr() as usize).is_multiple_of(d.mem_align)
                        && (b.len() as u64).is_multiple_of(d.off_align)
                })
            {
                match preadv_all(&d.file, bufs, offset) {
                    Err(e) if is_einval(&e) => self.give_up_direct(d, &e),
                    r => return r,
                }
            }
            if self.image_io() == ImageIo::Direct {
                // Unaligned pieces: one at a time, each by the rules of `read_at`.
                let mut off = offset;
                for b in bufs.iter_mut() {
                    self.read_at(b, off)?;
                    off += b.len() as u64;
                }
                return Ok(());
            }
        }
        preadv_all(&self.file, bufs, offset)
    }

    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        self.check(offset, total)?;
        if self.direct.is_some() {
            if let Some(d) = self.direct_for(offset, total as u64)
                && bufs.iter().all(|b| {
                    (b.as_ptr() as usize).is_multiple_of(d.mem_align)
                        && (b.len() as u64).is_multiple_of(d.off_align)
                })
            {
                match pwritev_all(&d.file, bufs, offset) {
                    Err(e) if is_einval(&e) => self.give_up_direct(d, &e),
                    r => return r,
                }
            }
            if self.image_io() == ImageIo::Direct {
                let mut off = offset;
                for b in bufs {
                    self.write_at(b, off)?;
                    off += b.len() as u64;
                }
                return Ok(());
            }
        }
        pwritev_all(&self.file, bufs, offset)
    }

    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        // One inode: this flushes what either descriptor wrote.
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
        // The direct descriptor when the request and every buffer are aligned for it (guest
        // buffers usually are: whole pages), else the buffered one (the kernel keeps the two
        // coherent).
        let fd = match self.direct_for(offset, total as u64) {
            Some(d)
                if iov.iter().all(|v| {
                    (v.iov_base as usize).is_multiple_of(d.mem_align.max(1))
                        && (v.iov_len as u64).is_multiple_of(d.off_align.max(1))
                }) =>
            {
                d.file.as_raw_fd()
            }
            _ => self.file.as_raw_fd(),
        };
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
                        fd,
                        batch.as_ptr(),
                        batch.len() as libc::c_int,
                        off as libc::off_t,
                    )
                } else {
                    libc::preadv(
                        fd,
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

    /// Every access path (direct, bounce buffer, buffered for unaligned offsets, vectored)
    /// reads back what any other wrote.
    #[test]
    fn direct_io_paths_agree_with_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
        let dev = FileDevice::open(&p, false).unwrap();
        assert_eq!(
            dev.image_io(),
            ImageIo::Direct,
            "the temporary directory's file system ({}) must support O_DIRECT for this test",
            dir.path().display()
        );
        // Aligned memory (a page-aligned piece of a larger buffer) and offset: the direct path.
        let (mut a, at) = aligned_buf(8192, 4096);
        a[at..at + 8192].fill(0xa5);
        dev.write_at(&a[at..at + 8192], 4096).unwrap();
        // Unaligned memory: the bounce buffer.
        let odd: Vec<u8> = (0..4097u32).map(|i| i as u8).collect();
        dev.write_at(&odd[1..], 65536).unwrap();
        // Unaligned offset and length: the buffered descriptor.
        dev.write_at(b"hello", 4096 + 100).unwrap();
        let mut back = vec![0u8; 8192];
        dev.read_at(&mut back, 4096).unwrap();
        assert_eq!(&back[100..105], b"hello");
        assert!(back[..100].iter().chain(&back[105..]).all(|&b| b == 0xa5));
        let mut small = [0u8; 3];
        dev.read_at(&mut small, 65536 + 1).unwrap();
        assert_eq!(small, [2, 3, 4]);
        // Vectored, aligned pieces, then read back unaligned.
        let (mut x, xa) = aligned_buf(8192, 4096);
        x[xa..xa + 4096].fill(1);
        x[xa + 4096..xa + 8192].fill(2);
        dev.write_vectored_at(&[&x[xa..xa + 4096], &x[xa + 4096..xa + 8192]], 1 << 19)
            .unwrap();
        let mut y = vec![0u8; 10];
        dev.read_at(&mut y, (1 << 19) + 4091).unwrap();
        assert_eq!(y, [1, 1, 1, 1, 1, 2, 2, 2, 2, 2]);
        let (mut r1, r1a) = aligned_buf(4096, 4096);
        let mut r2 = vec![0u8; 4096];
        {
            let (h, _) = r1.split_at_mut(r1a + 4096);
            let mut bufs: Vec<&mut [u8]> = vec![&mut h[r1a..], &mut r2[..]];
            dev.read_vectored_at(&mut bufs, 1 << 19).unwrap();
        }
        assert!(r1[r1a..r1a + 4096].iter().all(|&b| b == 1));
        assert!(r2.iter().all(|&b| b == 2));
        dev.flush().unwrap();
        drop(dev);
        // What the direct paths wrote is in the file as every other reader sees it.
        let raw = std::fs::read(&p).unwrap();
        assert_eq!(&raw[4196..4201], b"hello");
        assert_eq!(raw[65536 + 4095], 0);
        assert_eq!(raw[65536], 1);
        let buffered = FileDevice::open_with(&p, true, ImageIo::Buffered).unwrap();
        assert_eq!(buffered.image_io(), ImageIo::Buffered);
        let mut z = [0u8; 2];
        buffered.read_at(&mut z, (1 << 19) + 4095).unwrap();
        assert_eq!(z, [1, 2]);
    }

    /// An image on a file system that refuses O_DIRECT (ramfs) is served with buffered I/O.
    #[test]
    fn direct_io_refused_falls_back_to_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path();
        let out = std::process::Command::new("mount")
            .args(["-t", "ramfs", "ramfs"])
            .arg(mnt)
            .output()
            .expect("this test needs mount(8)");
        assert!(
            out.status.success(),
            "this test needs root to mount a ramfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(self.0).status();
            }
        }
        let _u = Unmount(mnt);
        let p = mnt.join("img");
        std::fs::write(&p, vec![7u8; 65536]).unwrap();
        let dev = FileDevice::open(&p, false).unwrap();
        assert_eq!(dev.image_io(), ImageIo::Buffered);
        let (mut a, at) = aligned_buf(4096, 4096);
        a[at..at + 4096].fill(9);
        dev.write_vectored_at(&[&a[at..at + 4096]], 8192).unwrap();
        let mut b = vec![0u8; 4098];
        dev.read_at(&mut b, 8191).unwrap();
        assert_eq!((b[0], b[1], b[4096], b[4097]), (7, 9, 9, 7));
        dev.flush().unwrap();
    }
}
