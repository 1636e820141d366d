//! The `/dev/fuse` transport: mount a FUSE file system with mount(2) (we run as root, so no
//! fusermount helper), then serve it with a pool of worker threads that each read one request at a
//! time, hand it to the [`Dispatcher`] and write the reply back.
//!
//! Every worker gets its own clone of the device fd (`FUSE_DEV_IOC_CLONE`) when the kernel allows
//! it, so replies go back on the fd their request came from and the kernel's per-fd processing
//! lists are not shared; a worker whose clone fails shares the first fd, which is also correct.

use super::abi;
use super::dispatch::Dispatcher;
use super::io::{FdReply, ReplySink};
use log::{debug, error, info, warn};
use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::thread;

/// The file system subtype shown in /proc/mounts by default (the type is `fuse.vhost-ext4`).
pub const SUBTYPE: &str = "vhost-ext4";

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// The mount's source, shown in /proc/mounts and by df: the image path, or `fsname=`.
    pub source: String,
    /// The type is `fuse.SUBTYPE`, or plain `fuse` without one.
    pub subtype: Option<String>,
    /// mount(2) flags (`MS_RDONLY`, `MS_NOSUID`, `MS_NOATIME`, ...), from the `-o` options.
    pub flags: libc::c_ulong,
    /// Let users other than the mounter in (`allow_other`).
    pub allow_other: bool,
    /// Let the kernel check permissions from the file modes (`default_permissions`).
    pub default_permissions: bool,
}

impl MountConfig {
    pub fn new(source: impl Into<String>, read_only: bool) -> MountConfig {
        MountConfig {
            source: source.into(),
            subtype: Some(SUBTYPE.to_string()),
            flags: if read_only { libc::MS_RDONLY } else { 0 },
            allow_other: true,
            default_permissions: true,
        }
    }

    /// Mounted read-only (`MS_RDONLY`).
    pub fn read_only(&self) -> bool {
        self.flags & libc::MS_RDONLY != 0
    }

    /// The kernel file system type: `fuse` or `fuse.SUBTYPE`.
    pub fn fs_type(&self) -> String {
        match &self.subtype {
            Some(s) => format!("fuse.{s}"),
            None => "fuse".to_string(),
        }
    }

    /// The fuse mount data string for device fd `fd`.
    pub fn mount_data(&self, fd: RawFd) -> String {
        // SAFETY: geteuid/getegid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let mut s = format!("fd={fd},rootmode=40000,user_id={uid},group_id={gid}");
        if self.allow_other {
            s.push_str(",allow_other");
        }
        if self.default_permissions {
            s.push_str(",default_permissions");
        }
        s
    }
}

/// A mounted FUSE file system and its `/dev/fuse` connection.
#[derive(Debug)]
pub struct DevFuse {
    fd: Arc<OwnedFd>,
    mountpoint: PathBuf,
}

fn cstring(bytes: &[u8], what: &str) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} contains a NUL byte"),
        )
    })
}

/// The text of an OS error without the " (os error N)" suffix the standard library adds.
pub fn plain_error(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => {
            let s = io::Error::from_raw_os_error(code).to_string();
            match s.rfind(" (os error ") {
                Some(i) => s[..i].to_string(),
                None => s,
            }
        }
        None => e.to_string(),
    }
}

/// Open `/dev/fuse` and mount a FUSE file system on `mountpoint` that is served through it.
pub fn mount(mountpoint: &Path, opts: &MountConfig) -> io::Result<DevFuse> {
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open /dev/fuse: {}", plain_error(&e)),
            )
        })?;
    let fd: OwnedFd = dev.into();
    let data = cstring(opts.mount_data(fd.as_raw_fd()).as_bytes(), "mount data")?;
    let source = cstring(opts.source.as_bytes(), "the image path")?;
    let target = cstring(mountpoint.as_os_str().as_bytes(), "the mount point")?;
    let fstype = cstring(opts.fs_type().as_bytes(), "the file system type")?;
    let flags = opts.flags;
    // SAFETY: all four strings are valid NUL-terminated C strings that outlive the call; the data
    // argument is a C string, as the fuse file system expects.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("cannot mount {}: {}", mountpoint.display(), plain_error(&e)),
        ));
    }
    info!(
        "fuse: mounted {} on {} ({}, {})",
        opts.source,
        mountpoint.display(),
        opts.fs_type(),
        if opts.read_only() { "ro" } else { "rw" }
    );
    Ok(DevFuse {
        fd: Arc::new(fd),
        mountpoint: mountpoint.to_path_buf(),
    })
}

/// Detach the FUSE mount on `mountpoint` (`umount2(MNT_DETACH)`): it disappears from the namespace
/// now and the connection ends once nobody uses it, which ends [`DevFuse::serve`].
pub fn unmount(mountpoint: &Path) -> io::Result<()> {
    let target = cstring(mountpoint.as_os_str().as_bytes(), "the mount point")?;
    // SAFETY: `target` is a valid NUL-terminated C string that outlives the call.
    let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl DevFuse {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// A new fd on the same FUSE connection (`FUSE_DEV_IOC_CLONE`).
    fn clone_fd(&self) -> io::Result<OwnedFd> {
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/fuse")?;
        let fd: OwnedFd = dev.into();
        let master: u32 = self.fd.as_raw_fd() as u32;
        // SAFETY: the ioctl reads one u32 (the fd to clone) through the pointer, which points at a
        // live local; `fd` is an open /dev/fuse descriptor we own.
        let rc = unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                abi::DEV_IOC_CLONE as _,
                &master as *const u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }

    /// Serve requests with `threads` workers until the file system is unmounted (then `Ok`) or the
    /// device fails (then the mount is detached and the error returned).
    pub fn serve(&self, dispatcher: Arc<Dispatcher>, threads: usize) -> io::Result<()> {
        let threads = threads.max(1);
        let bufsize = dispatcher.request_buffer_size();
        let (tx, rx) = mpsc::channel::<io::Result<()>>();
        for i in 0..threads {
            let fd = if i == 0 {
                Arc::clone(&self.fd)
            } else {
                match self.clone_fd() {
                    Ok(fd) => Arc::new(fd),
                    Err(e) => {
                        debug!("fuse: cannot clone the device fd ({e}); sharing it");
                        Arc::clone(&self.fd)
                    }
                }
            };
            let d = Arc::clone(&dispatcher);
            let tx = tx.clone();
            thread::Builder::new()
                .name(format!("fuse-{i}"))
                .spawn(move || {
                    let r = worker(fd.as_raw_fd(), &d, bufsize);
                    drop(fd);
                    let _ = tx.send(r);
                })?;
        }
        drop(tx);
        // Ends when every worker has sent its result (and dropped its sender): the caller flushes
        // the file system next, so no worker may still be dispatching then.
        let mut failed = None;
        for r in rx {
            if let Err(e) = r
                && failed.is_none()
            {
                error!("fuse: serving {} failed: {e}", self.mountpoint.display());
                // Detach the mount so the others' reads end too. It may be gone already (EINVAL:
                // not a mount point any more), which is what we want anyway.
                match unmount(&self.mountpoint) {
                    Ok(()) => {}
                    Err(u) if u.raw_os_error() == Some(libc::EINVAL) => {}
                    Err(u) => warn!("fuse: detaching {} failed: {u}", self.mountpoint.display()),
                }
                failed = Some(e);
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        info!("fuse: {} unmounted", self.mountpoint.display());
        Ok(())
    }
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid writable region of `buf.len()` bytes for the duration of the call.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One worker: read a request, dispatch it, write the reply; until the connection goes away.
fn worker(fd: RawFd, d: &Dispatcher, bufsize: usize) -> io::Result<()> {
    let mut buf = vec![0u8; bufsize];
    loop {
        let n = match read_fd(fd, &mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) => match e.raw_os_error() {
                // Interrupted, or the request vanished (interrupted) before we read it.
                Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::ENOENT) => continue,
                // The file system was unmounted (ENODEV), or the connection was aborted
                // (ECONNABORTED: `umount -f`, the fusectl abort file, or the kernel's request
                // timeout): either way nothing more will come.
                Some(libc::ENODEV) | Some(libc::ECONNABORTED) => return Ok(()),
                _ => return Err(e),
            },
        };
        // A bug that panics in one request must not leave the kernel waiting for its reply
        // forever (the mount would hang): answer it EIO and go on. (The reply is sent straight
        // from the page cache for a READ, by one writev; a WRITE's payload is copied from this
        // buffer into the page cache.)
        let req = &buf[..n];
        let mut sink = FdReply::new(fd);
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            d.dispatch_to(req, None, &mut sink)
        }));
        if done.is_err() {
            let unique = super::abi::InHeader::decode(req).map_or(0, |h| h.unique);
            error!("fuse: request {unique} panicked; answered EIO");
            sink.send(&super::reply::error(unique, crate::errno::Errno::EIO));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_data_string() {
        let mut c = MountConfig::new("/img", true);
        let s = c.mount_data(5);
        assert!(s.starts_with("fd=5,rootmode=40000,user_id="));
        assert!(s.ends_with(",allow_other,default_permissions"));
        assert!(c.read_only());
        assert_eq!(c.fs_type(), "fuse.vhost-ext4");
        c.allow_other = false;
        assert!(c.mount_data(7).ends_with(",default_permissions"));
    }

    #[test]
    fn plain_error_text() {
        let e = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(plain_error(&e), "No such file or directory");
        let e = io::Error::other("custom");
        assert_eq!(plain_error(&e), "custom");
    }

    /// Mount a real FUSE file system through the kernel (root and /dev/fuse needed, else skipped),
    /// check the INIT handshake and a request round trip, then unmount and see `serve` return.
    #[test]
    fn kernel_round_trip() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/fuse").exists() {
            eprintln!("not root or no /dev/fuse: skipping");
            return;
        }
        let Some(image) = crate::fuse::dispatch::tests::make_image() else {
            eprintln!("no mke2fs: skipping");
            return;
        };
        let dev = Arc::new(crate::blockdev::MemDevice::from_vec(image));
        let fs = crate::fs::Fs::mount(dev, &crate::fs::MountOptions::ro())
            .expect("mount the test image");
        let d = Arc::new(Dispatcher::new(Arc::new(fs), Default::default()));
        let dir = tempfile::tempdir().unwrap();
        let mp = dir.path().to_path_buf();
        let fuse = match mount(&mp, &MountConfig::new("test-image", true)) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("cannot mount FUSE here ({e}): skipping");
                return;
            }
        };
        let server = {
            let d = Arc::clone(&d);
            thread::spawn(move || fuse.serve(d, 2))
        };
        // statfs goes to the server: it answers (ENOSYS from the placeholder engine is fine), and
        // the connection is alive, so the error is not ENOTCONN.
        let c = CString::new(mp.as_os_str().as_bytes()).unwrap();
        // SAFETY: statfs is plain old data; all-zero bytes are a valid value.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a valid C string; `st` is a properly sized, writable statfs buffer.
        let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            assert_ne!(e.raw_os_error(), Some(libc::ENOTCONN));
        }
        assert!(d.negotiated().is_some(), "the kernel's INIT was accepted");
        unmount(&mp).unwrap();
        server.join().unwrap().unwrap();
    }

    #[test]
    fn unmount_of_a_non_mount_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        assert!(unmount(dir.path()).is_err());
    }
}
