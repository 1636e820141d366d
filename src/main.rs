//! The `vhost-ext4` command line: serve an ext4 image to VMs (`fs`: vhost-user-fs, `blk`:
//! vhost-user-blk) and on the host over FUSE (`mount`).

use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use vhost_ext4::blockdev::{FileDevice, ImageIo};
use vhost_ext4::fs::{AtimePolicy, DataErr, Fs, MountOptions, OnError};
use vhost_ext4::fuse::{self, DispatchOptions, Dispatcher, MountConfig, Transport};

#[derive(Parser)]
#[command(
    name = "vhost-ext4",
    version,
    about = "A userspace ext4 engine for VMs and the host"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Arguments every vhost-user backend takes (the vhost-user backend program conventions).
#[derive(clap::Args)]
struct Backend {
    /// Unix socket to create and listen on (the VMM connects to it).
    #[arg(long, required_unless_present_any = ["fd", "print_capabilities"])]
    socket_path: Option<PathBuf>,
    /// An already listening Unix socket inherited from the launcher.
    #[arg(long, conflicts_with = "socket_path")]
    fd: Option<i32>,
    /// The ext4 image.
    #[arg(long, required_unless_present = "print_capabilities")]
    image: Option<PathBuf>,
    /// Serve the image read-only.
    #[arg(long)]
    readonly: bool,
    /// Request queues (fs: besides the high-priority queue).
    #[arg(long, default_value_t = 1)]
    queues: usize,
    /// Print the vhost-user backend capabilities as JSON and exit.
    #[arg(long)]
    print_capabilities: bool,
    /// Log filter: error, warn, info, debug, trace (or an env_logger filter string).
    #[arg(long, default_value = "warn")]
    log_level: String,
    /// Image I/O: `direct` (O_DIRECT: no copy of the image in the host's page cache; buffered
    /// when the image's file system refuses it) or `buffered`.
    #[arg(long, default_value = "direct")]
    image_io: ImageIo,
}

#[derive(Subcommand)]
enum Command {
    /// Serve IMAGE to a VM as a vhost-user-fs backend (the guest runs `mount -t virtiofs TAG /mnt`).
    Fs {
        #[command(flatten)]
        backend: Backend,
        /// The tag the guest mounts (at most 36 bytes).
        #[arg(long)]
        tag: Option<String>,
        /// Request worker threads (default: CPUs; 0 serves requests in the queue threads).
        #[arg(long)]
        thread_pool_size: Option<usize>,
        /// Page cache size (file data held in memory), e.g. 512M or 4G.
        #[arg(long, default_value = "512M", value_parser = vhost_ext4::pagecache::parse_size)]
        cache_size: u64,
        /// Let the guest kernel cache writes (FUSE_WRITEBACK_CACHE).
        #[arg(long)]
        writeback_cache: bool,
        /// How reads move access times (the guest's mount options do not reach us).
        #[arg(long, default_value = "relatime", value_parser = ["relatime", "strictatime", "noatime"])]
        atime: String,
        /// Listing a directory never moves its access time.
        #[arg(long)]
        nodiratime: bool,
        /// Size of the DAX window (virtio shared memory region 0) offered to a frontend that
        /// supports the vhost-user SHMEM protocol feature, e.g. 512M or 1G; a multiple of
        /// 2 MiB, at most four times --cache-size; 0 turns it off.
        #[arg(long, default_value = "512M", value_parser = vhost_ext4::pagecache::parse_size)]
        dax_window: u64,
        /// What finding corrupt metadata does: continue, remount-ro or panic (served as
        /// remount-ro); default: the image's own setting (tune2fs -e).
        #[arg(long, value_name = "POLICY")]
        errors: Option<OnError>,
        /// What a failed write of file data does: ignore (log it; the file's next fsync answers
        /// EIO) or abort (also abort the journal: the file system turns read-only).
        #[arg(long, value_name = "POLICY", default_value = "ignore")]
        data_err: DataErr,
    },
    /// Export IMAGE to a VM as a vhost-user-blk device (the guest runs its own ext4).
    Blk {
        #[command(flatten)]
        backend: Backend,
        /// Serial number the guest reads (at most 20 bytes).
        #[arg(long)]
        serial: Option<String>,
        /// Logical block size: 512 or 4096.
        #[arg(long, default_value_t = 512)]
        block_size: u32,
    },
    /// Mount an ext4 image on the host through FUSE and serve it in the foreground.
    Mount {
        /// The ext4 image (a file or a block device).
        image: PathBuf,
        /// Where to mount it.
        mountpoint: PathBuf,
        /// Serve the image read-only (the same as `-o ro`).
        #[arg(long)]
        read_only: bool,
        /// mount(8)-style options, comma-separated, with the kernel's meaning: ro, rw, noatime,
        /// relatime, strictatime, nodiratime, lazytime, dev/nodev, suid/nosuid, exec/noexec,
        /// sync, dirsync, fsname=NAME, subtype=NAME (empty: the type is plain `fuse`), and
        /// ext4's errors=continue|remount-ro|panic and data_err=ignore|abort.
        #[arg(short = 'o', value_name = "OPTIONS")]
        options: Vec<String>,
        /// Worker threads reading /dev/fuse (default: CPUs, at most 8).
        #[arg(long)]
        threads: Option<usize>,
        /// Seconds between commits of changed metadata.
        #[arg(long, default_value_t = 5)]
        commit_interval: u64,
        /// Page cache size (file data held in memory), e.g. 512M or 4G.
        #[arg(long, default_value = "512M", value_parser = vhost_ext4::pagecache::parse_size)]
        cache_size: u64,
        /// Let the kernel cache writes (FUSE_WRITEBACK_CACHE).
        #[arg(long)]
        writeback_cache: bool,
        /// Image I/O: `direct` (O_DIRECT: no copy of the image in the host's page cache;
        /// buffered when the image's file system refuses it) or `buffered`.
        #[arg(long, default_value = "direct")]
        image_io: ImageIo,
        /// Log filter: error, warn, info, debug, trace (or an env_logger filter string).
        #[arg(long, default_value = "warn")]
        log_level: String,
    },
}

/// An error message as one plain sentence: without the " (os error N)" the standard library adds.
fn sentence(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find(" (os error ") {
        out.push_str(&rest[..i]);
        let tail = &rest[i + " (os error ".len()..];
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && tail[digits..].starts_with(')') {
            rest = &tail[digits + 1..];
        } else {
            out.push_str(" (os error ");
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

fn init_logging(filter: &str) {
    env_logger::Builder::new()
        .parse_filters(filter)
        .format_timestamp_millis()
        .init();
}

/// Block SIGINT and SIGTERM in this thread (and every thread it spawns later), so that only the
/// signal thread's `sigwait` receives them.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initializes it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; SIGINT/SIGTERM are valid signal numbers; the old mask is
    // not requested (null).
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    set
}

/// On the first SIGINT/SIGTERM detach the mount (serving ends once the kernel lets go); on a
/// second one, flush and exit at once.
fn spawn_signal_thread(set: libc::sigset_t, mountpoint: PathBuf, fs: Arc<Fs>) {
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut count = 0;
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` is an initialized sigset_t and `sig` a writable int.
                let rc = unsafe { libc::sigwait(&set, &mut sig) };
                if rc != 0 {
                    continue;
                }
                count += 1;
                if count == 1 {
                    log::info!("signal {sig}: unmounting {}", mountpoint.display());
                    if let Err(e) = fuse::unmount(&mountpoint) {
                        log::warn!("unmounting {} failed: {e}", mountpoint.display());
                    }
                } else {
                    log::warn!("signal {sig} again: exiting now");
                    if let Err(e) = fs.shutdown() {
                        log::error!("flushing the file system failed: {e}");
                        std::process::exit(1);
                    }
                    std::process::exit(0);
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the signal thread: {e}");
    }
}

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8)
}

/// How file data is cached: our page cache's size, and whether the kernel caches writes too.
struct DataArgs {
    cache_size: u64,
    writeback_cache: bool,
    image_io: ImageIo,
}

fn run_mount(
    image: &Path,
    mountpoint: &Path,
    read_only: bool,
    options: &[String],
    threads: Option<usize>,
    commit_interval: u64,
    data: DataArgs,
) -> Result<(), String> {
    let mut cfg = MountConfig::new(image.to_string_lossy(), read_only);
    let mut fs_opts = MountOptions::rw();
    for o in options {
        fuse::options::apply(&mut cfg, &mut fs_opts, o)?;
    }
    if read_only {
        cfg.flags |= libc::MS_RDONLY;
    }
    let read_only = cfg.read_only();
    // Before any thread starts, so that only the signal thread ever sees SIGINT/SIGTERM.
    let sigset = block_signals();
    let dev = FileDevice::open_with(image, read_only, data.image_io)
        .map_err(|e| sentence(&e.to_string()))?;
    fs_opts.read_only = read_only;
    let fs = Fs::mount_with_cache(Arc::new(dev), &fs_opts, data.cache_size)
        .map_err(|e| format!("cannot mount image {}: {}", image.display(), sentence(&e)))?;
    let fs = Arc::new(fs);
    // noatime, relatime (the default) or strictatime, and nodiratime: reads move atime here.
    fs.set_atime_policy(AtimePolicy::from_mount_flags(cfg.flags));
    let ro = fs.is_read_only();
    if !ro {
        Fs::start_commit_thread(&fs, std::time::Duration::from_secs(commit_interval.max(1)))
            .map_err(|e| format!("cannot start the commit thread: {e}"))?;
    }
    // Read-only too: it gives cache memory back when the host runs short.
    Fs::start_flusher_thread(&fs).map_err(|e| format!("cannot start the flusher thread: {e}"))?;

    // We hold the image exclusively and every change comes through this mount: the kernel may
    // cache names, attributes and negative lookups for long.
    let mut dopts = DispatchOptions::exclusive(Transport::DevFuse);
    // sync and dirsync: every change is committed before it is answered, as ext4 does.
    dopts.sync_changes = cfg.flags & (libc::MS_SYNCHRONOUS | libc::MS_DIRSYNC) != 0;
    dopts.writeback_cache = data.writeback_cache;
    let dispatcher = Arc::new(Dispatcher::new(Arc::clone(&fs), dopts));
    if ro {
        cfg.flags |= libc::MS_RDONLY;
    }
    // As mountinfo names it (resolved before the mount: afterwards it is ours to answer).
    let canonical = mountpoint.canonicalize().ok();
    let session = fuse::mount(mountpoint, &cfg).map_err(|e| sentence(&e.to_string()))?;
    // `mount -o remount,...` changes the flags without telling us: follow them for atime.
    if let Some(m) = canonical
        && let Err(e) = fuse::mountwatch::watch(m, Arc::clone(&fs))
    {
        log::warn!("cannot follow the mount's flags after a remount: {e}");
    }
    spawn_signal_thread(sigset, mountpoint.to_path_buf(), Arc::clone(&fs));

    let served = session.serve(dispatcher, threads.unwrap_or_else(default_threads));
    let synced = fs.shutdown();
    served.map_err(|e| {
        format!(
            "serving {} failed: {}",
            mountpoint.display(),
            sentence(&e.to_string())
        )
    })?;
    synced.map_err(|e| format!("flushing {} failed: {e}", image.display()))?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Fs {
            backend: b,
            tag,
            thread_pool_size,
            cache_size,
            writeback_cache,
            atime,
            nodiratime,
            dax_window,
            errors,
            data_err,
        } => {
            init_logging(&b.log_level);
            let mut flags = match atime.as_str() {
                "strictatime" => libc::MS_STRICTATIME,
                "noatime" => libc::MS_NOATIME,
                _ => 0,
            };
            if nodiratime {
                flags |= libc::MS_NODIRATIME;
            }
            vhost_ext4::vhost::run_fs(vhost_ext4::vhost::FsArgs {
                dax_window,
                socket_path: b.socket_path,
                fd: b.fd,
                image: b.image,
                tag,
                thread_pool_size,
                readonly: b.readonly,
                print_capabilities: b.print_capabilities,
                queues: b.queues,
                cache_size,
                writeback_cache,
                image_io: b.image_io,
                atime: AtimePolicy::from_mount_flags(flags),
                errors,
                data_err,
            })
        }
        Command::Blk {
            backend: b,
            serial,
            block_size,
        } => {
            init_logging(&b.log_level);
            vhost_ext4::vhost::run_blk(vhost_ext4::vhost::BlkArgs {
                socket_path: b.socket_path,
                fd: b.fd,
                image: b.image,
                readonly: b.readonly,
                queues: b.queues,
                serial,
                block_size,
                print_capabilities: b.print_capabilities,
                image_io: b.image_io,
            })
        }
        Command::Mount {
            image,
            mountpoint,
            read_only,
            options,
            threads,
            commit_interval,
            cache_size,
            writeback_cache,
            image_io,
            log_level,
        } => {
            init_logging(&log_level);
            run_mount(
                &image,
                &mountpoint,
                read_only,
                &options,
                threads,
                commit_interval,
                DataArgs {
                    cache_size,
                    writeback_cache,
                    image_io,
                },
            )
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("vhost-ext4: {msg}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sentence;

    #[test]
    fn sentences_drop_os_error_numbers() {
        assert_eq!(
            sentence("cannot open image x.img: No such file or directory (os error 2)"),
            "cannot open image x.img: No such file or directory"
        );
        assert_eq!(sentence("a (os error x) b"), "a (os error x) b");
        assert_eq!(sentence("plain"), "plain");
    }
}
