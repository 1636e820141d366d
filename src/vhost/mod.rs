//! The vhost-user front doors: `fs` (vhost-user-fs over the ext4 engine) and `blk`
//! (vhost-user-blk over the raw image).
//!
//! Transport work is done by `vhost-user-backend` (protocol, vring setup, one epoll thread per
//! queue), `virtio-queue` (rings, descriptor chains) and `vm-memory` (guest memory); this module
//! supplies the devices ([`fs::FsDevice`], [`blk::BlkDevice`]) and the command entry points
//! [`run_fs`] / [`run_blk`].
//!
//! Lifetime of a daemon: open the image (taking its lock), listen, serve exactly one frontend
//! connection, and exit cleanly when that frontend disconnects or on SIGINT/SIGTERM: stop the
//! vring threads, finish the requests in flight, flush the file system. A second frontend is not
//! accepted (the listening socket is closed once the first one connects); to reconnect, start
//! the daemon again.

pub mod blk;
pub mod dax;
pub mod fs;
mod pool;
pub mod queue;

use crate::blockdev::{BlockDevice, FileDevice, ImageIo};
use crate::fs::{Fs, MountOptions};
use crate::fuse::{DispatchOptions, Dispatcher, Transport};
use log::{info, warn};
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use vhost::vhost_user::{Error as ProtocolError, Listener};
use vhost_user_backend::{Error as DaemonError, ShutdownHandle, VhostUserBackend, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

/// Default tag of the `fs` device (what the guest mounts: `mount -t virtiofs TAG /mnt`).
pub const DEFAULT_TAG: &str = "vhost-ext4";

/// `vhost-ext4 fs` arguments.
#[derive(Clone, Debug)]
pub struct FsArgs {
    /// `--socket-path PATH`: create and listen on this Unix socket (a stale file is replaced).
    pub socket_path: Option<PathBuf>,
    /// `--fd FD`: an already listening Unix socket inherited from the caller.
    pub fd: Option<RawFd>,
    /// `--image IMAGE` (required unless `print_capabilities`).
    pub image: Option<PathBuf>,
    /// `--tag TAG` (1 to 36 bytes; default [`DEFAULT_TAG`]).
    pub tag: Option<String>,
    /// `--thread-pool-size N`: request workers; `None` = number of CPUs; 0 = serve requests in
    /// the queue threads.
    pub thread_pool_size: Option<usize>,
    /// `--readonly`.
    pub readonly: bool,
    /// `--print-capabilities`: print the vhost-user backend capabilities (JSON) and exit.
    pub print_capabilities: bool,
    /// `--queues N`: request queues (default 1), besides the high-priority queue.
    pub queues: usize,
    /// `--cache-size SIZE`: the page cache's size in bytes.
    pub cache_size: u64,
    /// `--writeback-cache`: negotiate FUSE_WRITEBACK_CACHE (the guest caches writes).
    pub writeback_cache: bool,
    /// `--image-io direct|buffered`: how the image file is accessed.
    pub image_io: ImageIo,
    /// `--atime`, `--nodiratime`: how reads move access times (default relatime).
    pub atime: crate::fs::AtimePolicy,
    /// `--dax-window SIZE`: the DAX window offered as shared memory region 0 (a multiple of
    /// 2 MiB; 0 = none). Used only when the frontend negotiates SHMEM.
    pub dax_window: u64,
    /// `--errors continue|remount-ro|panic`: what finding corrupt metadata does (default: the
    /// superblock's setting).
    pub errors: Option<crate::fs::OnError>,
    /// `--data-err ignore|abort`: what a failed data write does (default ignore).
    pub data_err: crate::fs::DataErr,
}

impl Default for FsArgs {
    fn default() -> FsArgs {
        FsArgs {
            socket_path: None,
            fd: None,
            image: None,
            tag: None,
            thread_pool_size: None,
            readonly: false,
            print_capabilities: false,
            queues: 1,
            cache_size: crate::pagecache::DEFAULT_CACHE_BYTES,
            writeback_cache: false,
            image_io: ImageIo::Direct,
            atime: crate::fs::AtimePolicy::from_mount_flags(0),
            dax_window: dax::DEFAULT_WINDOW,
            errors: None,
            data_err: crate::fs::DataErr::Ignore,
        }
    }
}

/// `vhost-ext4 blk` arguments.
#[derive(Clone, Debug)]
pub struct BlkArgs {
    /// `--socket-path PATH`.
    pub socket_path: Option<PathBuf>,
    /// `--fd FD`: an already listening Unix socket.
    pub fd: Option<RawFd>,
    /// `--image IMAGE` (required unless `print_capabilities`).
    pub image: Option<PathBuf>,
    /// `--readonly`: offer VIRTIO_BLK_F_RO and take the image lock shared.
    pub readonly: bool,
    /// `--queues N` (default 1).
    pub queues: usize,
    /// `--serial ID`: what GET_ID returns (at most 20 bytes; default empty).
    pub serial: Option<String>,
    /// `--block-size N`: logical block size, 512 (default) or 4096.
    pub block_size: u32,
    /// `--print-capabilities`.
    pub print_capabilities: bool,
    /// `--image-io direct|buffered`: how the image file is accessed.
    pub image_io: ImageIo,
}

impl Default for BlkArgs {
    fn default() -> BlkArgs {
        BlkArgs {
            socket_path: None,
            fd: None,
            image: None,
            readonly: false,
            queues: 1,
            serial: None,
            block_size: 512,
            print_capabilities: false,
            image_io: ImageIo::Direct,
        }
    }
}

/// What `fs --print-capabilities` prints (vhost-user.rst, "Backend program conventions").
pub fn fs_capabilities() -> &'static str {
    "{\n  \"type\": \"fs\"\n}\n"
}

/// What `blk --print-capabilities` prints.
pub fn blk_capabilities() -> &'static str {
    "{\n  \"type\": \"block\"\n}\n"
}

/// Stops a running daemon from another thread (signal handler, tests).
#[derive(Clone, Default)]
pub struct Stopper(Arc<StopState>);

#[derive(Default)]
struct StopState {
    stopped: AtomicBool,
    connection: Mutex<Option<ShutdownHandle>>,
}

impl Stopper {
    pub fn new() -> Stopper {
        Stopper::default()
    }

    /// Ask the daemon to stop: stop waiting for a frontend, or drop the connected one. The
    /// daemon then finishes the requests in flight, flushes and returns.
    pub fn stop(&self) {
        self.0.stopped.store(true, Ordering::Release);
        if let Some(h) = self.lock().as_ref() {
            h.shutdown();
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.0.stopped.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ShutdownHandle>> {
        self.0.connection.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn connected(&self, h: ShutdownHandle) {
        let mut slot = self.lock();
        if self.is_stopped() {
            h.shutdown();
        }
        *slot = Some(h);
    }
}

/// `vhost-ext4 fs`: serve the image to one vhost-user-fs frontend. Blocks SIGINT/SIGTERM and
/// handles them (first: clean shutdown; second: exit at once). Call it from the main thread
/// before any other thread is started, after logging is set up.
pub fn run_fs(args: FsArgs) -> Result<(), String> {
    if args.print_capabilities {
        print!("{}", fs_capabilities());
        return Ok(());
    }
    let stop = Stopper::new();
    install_signal_handler(&stop)?;
    serve_fs(args, &stop)
}

/// `vhost-ext4 blk`: export the raw image to one vhost-user-blk frontend (signals as
/// [`run_fs`]).
pub fn run_blk(args: BlkArgs) -> Result<(), String> {
    if args.print_capabilities {
        print!("{}", blk_capabilities());
        return Ok(());
    }
    let stop = Stopper::new();
    install_signal_handler(&stop)?;
    serve_blk(args, &stop)
}

/// [`run_fs`] without the signal handling: returns when the frontend disconnects or `stop` is
/// used.
pub fn serve_fs(args: FsArgs, stop: &Stopper) -> Result<(), String> {
    let image = args
        .image
        .as_deref()
        .ok_or("an image is required (--image IMAGE)")?;
    let tag = args.tag.as_deref().unwrap_or(DEFAULT_TAG);
    fs::check_tag(tag)?;
    check_socket_args(args.socket_path.as_deref(), args.fd)?;
    let read_only = args.readonly;
    dax::check_window_size(args.dax_window)?;
    if args.dax_window > args.cache_size.saturating_mul(4) {
        return Err(format!(
            "the DAX window ({} MiB) cannot be more than four times the page cache ({} MiB): mapped chunks are pinned in its slabs",
            args.dax_window >> 20,
            args.cache_size >> 20
        ));
    }
    let dev = FileDevice::open_with(image, read_only, args.image_io).map_err(|e| e.to_string())?;
    let fs = Fs::mount_with_cache(
        Arc::new(dev),
        &MountOptions {
            read_only,
            errors: args.errors,
            data_err: args.data_err,
        },
        args.cache_size,
    )
    .map_err(|e| format!("cannot mount image {}: {e}", image.display()))?;
    let fs = Arc::new(fs);
    // The guest's mount options do not reach us: `--atime` (relatime, the Linux default).
    fs.set_atime_policy(args.atime);
    if !fs.is_read_only() {
        Fs::start_commit_thread(&fs, std::time::Duration::from_secs(5))
            .map_err(|e| format!("cannot start the commit thread: {e}"))?;
    }
    // Read-only too: it gives cache memory back when the host runs short.
    Fs::start_flusher_thread(&fs).map_err(|e| format!("cannot start the flusher thread: {e}"))?;
    let dispatcher = Arc::new(Dispatcher::new(
        Arc::clone(&fs),
        // The daemon holds the image exclusively and the guest is its only client, so the
        // guest may cache entries, attributes and negative entries for long (as virtiofsd's
        // cache=always).
        DispatchOptions {
            writeback_cache: args.writeback_cache,
            ..DispatchOptions::exclusive(Transport::Virtio)
        },
    ));
    let threads = args.thread_pool_size.unwrap_or_else(default_threads);
    let mut device = fs::FsDevice::new(Arc::clone(&dispatcher), tag, args.queues, threads)?;
    let window = (args.dax_window > 0).then(|| dax::Window::new(Arc::clone(&fs), args.dax_window));
    if let Some(w) = &window {
        dispatcher.set_dax_window(Arc::clone(w) as Arc<dyn crate::fuse::DaxWindow>);
        device = device.with_dax(Arc::clone(w));
    }
    let device = Arc::new(device);
    let served = listen(args.socket_path.as_deref(), args.fd).and_then(|listener| {
        info!(
            "vhost-user-fs: serving {} as tag {tag:?}{} with {} request queue(s) and {threads} worker(s)",
            image.display(),
            if fs.is_read_only() { " (read-only)" } else { "" },
            args.queues
        );
        serve_device("vhost-ext4-fs", Arc::clone(&device), listener, stop)
    });
    device.shutdown();
    if let Some(w) = &window {
        // The frontend is gone and its mappings with it; what they wrote is dirty in the cache.
        w.disconnect();
    }
    let synced = fs.shutdown();
    served?;
    synced.map_err(|e| format!("flushing {} failed: {e}", image.display()))?;
    info!("vhost-user-fs: {} closed cleanly", image.display());
    Ok(())
}

/// [`run_blk`] without the signal handling.
pub fn serve_blk(args: BlkArgs, stop: &Stopper) -> Result<(), String> {
    let image = args
        .image
        .as_deref()
        .ok_or("an image is required (--image IMAGE)")?;
    check_socket_args(args.socket_path.as_deref(), args.fd)?;
    let dev =
        FileDevice::open_with(image, args.readonly, args.image_io).map_err(|e| e.to_string())?;
    let dev: Arc<dyn BlockDevice> = Arc::new(dev);
    let cfg = blk::BlkConfig {
        read_only: args.readonly,
        queues: args.queues,
        serial: args.serial.unwrap_or_default().into_bytes(),
        block_size: args.block_size,
    };
    let device = Arc::new(blk::BlkDevice::new(Arc::clone(&dev), cfg)?);
    let served = listen(args.socket_path.as_deref(), args.fd).and_then(|listener| {
        info!(
            "vhost-user-blk: exporting {} ({} bytes{}) with {} queue(s)",
            image.display(),
            dev.size(),
            if args.readonly { ", read-only" } else { "" },
            args.queues
        );
        serve_device("vhost-ext4-blk", Arc::clone(&device), listener, stop)
    });
    device.shutdown();
    let synced = dev.flush();
    served?;
    synced.map_err(|e| format!("flushing {} failed: {e}", image.display()))?;
    info!("vhost-user-blk: {} closed cleanly", image.display());
    Ok(())
}

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn check_socket_args(path: Option<&Path>, fd: Option<RawFd>) -> Result<(), String> {
    match (path, fd) {
        (Some(_), Some(_)) => Err("--socket-path and --fd exclude each other".into()),
        (None, None) => Err("a socket is required (--socket-path PATH or --fd FD)".into()),
        _ => Ok(()),
    }
}

/// The listening socket: created at `path`, or the inherited listening socket `fd`.
fn listen(path: Option<&Path>, fd: Option<RawFd>) -> Result<Listener, String> {
    if let Some(path) = path {
        return Listener::new(path, true)
            .map_err(|e| format!("cannot listen on {}: {e}", path.display()));
    }
    let fd = fd.ok_or("a socket is required (--socket-path PATH or --fd FD)")?;
    let mut listening: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `listening`, a valid c_int; an invalid
    // fd only yields an error.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut listening as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 || listening == 0 {
        return Err(format!("file descriptor {fd} is not a listening socket"));
    }
    let mut domain: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: as above.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&mut domain as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 || domain != libc::AF_UNIX {
        return Err(format!("file descriptor {fd} is not a Unix domain socket"));
    }
    // SAFETY: the caller hands the daemon this inherited descriptor for its exclusive use; it
    // is a listening Unix socket (checked above) and is closed when the listener drops.
    Ok(unsafe { Listener::from_raw_fd(fd) })
}

/// Wait until the listener has a pending connection (true) or `stop` was used (false).
fn wait_for_frontend(listener: &Listener, stop: &Stopper) -> Result<bool, String> {
    loop {
        if stop.is_stopped() {
            return Ok(false);
        }
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; the timeout bounds the wait.
        let rc = unsafe { libc::poll(&mut pfd, 1, 200) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("waiting for a frontend failed: {e}"));
        }
        if rc > 0 {
            return Ok(true);
        }
    }
}

/// Serve one frontend connection with `backend`; Ok when the frontend disconnects or `stop` is
/// used. The caller stops the backend afterwards (its vring threads and requests in flight).
fn serve_device<T>(
    name: &str,
    backend: Arc<T>,
    mut listener: Listener,
    stop: &Stopper,
) -> Result<(), String>
where
    T: VhostUserBackend<Bitmap = (), Vring = queue::Vring> + 'static,
{
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::<()>::new());
    let mut daemon = VhostUserDaemon::new(name.to_string(), backend, mem)
        .map_err(|e| format!("cannot start the vhost-user daemon: {e}"))?;
    if !wait_for_frontend(&listener, stop)? {
        info!("{name}: stopped before a frontend connected");
        return Ok(());
    }
    daemon
        .start(&mut listener)
        .map_err(|e| format!("cannot accept the frontend: {e}"))?;
    // One frontend per daemon: later connection attempts are refused, not left hanging.
    drop(listener);
    info!("{name}: frontend connected");
    if let Some(h) = daemon.shutdown_handle() {
        stop.connected(h);
    }
    match daemon.wait() {
        Ok(()) => {}
        Err(DaemonError::HandleRequest(ProtocolError::Disconnected))
        | Err(DaemonError::HandleRequest(ProtocolError::PartialMessage)) => {}
        Err(e) if stop.is_stopped() => {
            warn!("{name}: while stopping: {e}");
        }
        Err(e) => return Err(format!("the vhost-user connection failed: {e}")),
    }
    info!(
        "{name}: {}",
        if stop.is_stopped() {
            "stopping on request"
        } else {
            "frontend disconnected"
        }
    );
    Ok(())
}

/// Route SIGINT and SIGTERM to a thread: the first stops the daemon cleanly, the second exits
/// at once. Blocks both signals in the calling thread and in every thread it starts later.
fn install_signal_handler(stop: &Stopper) -> Result<(), String> {
    // SAFETY: sigset_t is plain data, initialized by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the old mask is not requested.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let stop = stop.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut count = 0;
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` is an initialized sigset_t and `sig` a writable int.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    continue;
                }
                count += 1;
                if count == 1 {
                    info!("signal {sig}: stopping");
                    stop.stop();
                } else {
                    warn!("signal {sig} again: exiting without waiting for requests in flight");
                    std::process::exit(1);
                }
            }
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the signal thread: {e}"))
}
