//! The dispatcher: one request in, its reply out through a [`ReplySink`]. It negotiates INIT,
//! maps FUSE node ids onto ext4 inode numbers (FUSE root 1 ↔ ext4 inode 2, every other node id is
//! the inode number), and answers every opcode through `crate::fs::Fs`. It knows nothing of the
//! transport: `/dev/fuse` and the vhost-user-fs queues both call [`Dispatcher::dispatch_to`] from
//! many threads at once, each with its own sink (and, for a virtio WRITE, a payload reader over
//! the guest's buffers), so READ and WRITE data is copied once (see `fuse/io.rs`).

use super::abi::{self, init_flags, opcode};
use super::caller::{self, Caller, PrivDrop};
use super::io::ReplySink;
use super::reply;
use super::request::{self, Op, ParseConfig};
use crate::errno::Errno;
use crate::fs::{
    Attr, Ctx, DirEntry, Fs, Ino, ROOT_INO, ReadSink, SetAttr, TimeSet, Timespec, WriteSource,
};
use log::{debug, error, info, trace, warn};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Which transport carries the messages (changes a few INIT answers, e.g. DAX later).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// A host mount through `/dev/fuse`.
    #[default]
    DevFuse,
    /// A guest through vhost-user-fs virtqueues.
    Virtio,
}

/// Tunables of a FUSE session.
#[derive(Clone, Debug)]
pub struct DispatchOptions {
    /// The largest WRITE we accept (clamped to `MAX_PAGES` pages).
    pub max_write: u32,
    /// The readahead we allow (the kernel's own limit wins if smaller).
    pub max_readahead: u32,
    pub transport: Transport,
    /// How long the kernel may cache attributes.
    pub attr_timeout: Duration,
    /// How long the kernel may cache names.
    pub entry_timeout: Duration,
    /// How long the kernel may cache the absence of a name: a LOOKUP that finds nothing is
    /// answered with a negative entry (node id 0) valid this long. Zero answers ENOENT instead,
    /// and the kernel asks again next time.
    pub negative_timeout: Duration,
    /// Commit every change before answering it (the `sync` and `dirsync` mount options).
    pub sync_changes: bool,
    /// Check access in the daemon (as the client's VFS would) before each operation. Off for
    /// both of our clients: a host FUSE mount uses `default_permissions`, and the Linux
    /// virtiofs driver always mounts with `default_permissions` too, so the kernel has checked
    /// — with the caller's supplementary groups, which a request does not carry — before a
    /// request arrives. For clients that do not.
    pub check_permissions: bool,
    /// Negotiate FUSE_WRITEBACK_CACHE: the kernel keeps written data in its own page cache and
    /// sends it in large WRITEs later (it then owns i_size and mtime until it flushes them).
    pub writeback_cache: bool,
}

/// The cache timeouts of [`DispatchOptions::exclusive`].
pub const EXCLUSIVE_TIMEOUT: Duration = Duration::from_secs(3600);

impl Default for DispatchOptions {
    fn default() -> DispatchOptions {
        DispatchOptions {
            max_write: MAX_PAGES as u32 * PAGE_SIZE as u32,
            max_readahead: MAX_PAGES as u32 * PAGE_SIZE as u32,
            transport: Transport::DevFuse,
            attr_timeout: Duration::from_secs(1),
            entry_timeout: Duration::from_secs(1),
            negative_timeout: Duration::ZERO,
            sync_changes: false,
            writeback_cache: false,
            check_permissions: false,
        }
    }
}

impl DispatchOptions {
    /// Options for a client that is the image's only user — always the case: the image is
    /// locked (`flock`) while we serve it, and every change reaches the file system through the
    /// client's own requests, whose replies (and the kernel's own invalidation after each
    /// create, link, unlink, rename and setattr) keep its caches right. So the kernel may keep
    /// names, attributes and negative entries for a long time, as virtiofsd's `cache=always`
    /// lets it, instead of asking again every second.
    pub fn exclusive(transport: Transport) -> DispatchOptions {
        DispatchOptions {
            transport,
            attr_timeout: EXCLUSIVE_TIMEOUT,
            entry_timeout: EXCLUSIVE_TIMEOUT,
            negative_timeout: EXCLUSIVE_TIMEOUT,
            ..Default::default()
        }
    }
}

/// Pages per request we offer with `FUSE_MAX_PAGES`.
pub const MAX_PAGES: u16 = 256;
/// The page size the FUSE request limits are counted in.
pub const PAGE_SIZE: usize = 4096;

/// INIT flags we accept when the kernel offers them. With POSIX_ACL the kernel checks and caches
/// ACLs, and with DONT_MASK it leaves the umask to us (the engine applies it, or a directory's
/// default ACL instead); SETXATTR_EXT carries SETXATTR_ACL_KILL_SGID. With HANDLE_KILLPRIV_V2
/// we drop setuid, setgid and `security.capability` ourselves (`fs::killpriv`, by the rules of
/// `caller::dropped_mode`): a WRITE, a truncate and an OPEN with O_TRUNC carry a kill flag, a
/// chown always does, and the kernel's own drop before a fallocate or copy_file_range arrives as
/// a SETATTR that changes nothing. In return the kernel stops asking for `security.capability`
/// (a GETXATTR) before every write. SECURITY_CTX, … are not needed.
const WANTED_INIT_FLAGS: u64 = init_flags::ASYNC_READ
    | init_flags::HANDLE_KILLPRIV_V2
    | init_flags::POSIX_ACL
    | init_flags::DONT_MASK
    | init_flags::SETXATTR_EXT
    | init_flags::BIG_WRITES
    | init_flags::DO_READDIRPLUS
    | init_flags::READDIRPLUS_AUTO
    | init_flags::PARALLEL_DIROPS
    | init_flags::MAX_PAGES
    | init_flags::EXPORT_SUPPORT
    | init_flags::CACHE_SYMLINKS
    | init_flags::INIT_EXT;

/// log2 of the window alignment we announce with FUSE_MAP_ALIGNMENT (4 KiB pages).
pub const DAX_MAP_ALIGNMENT_LOG2: u16 = 12;

/// `open_flags` of OPEN and CREATE replies for a regular file.
/// * `KEEP_CACHE`: file data changes only through this client's own requests, so the kernel's
///   page cache stays valid across opens — except when a read would move atime (see
///   `file_open_flags`).
/// * `NOFLUSH`: there is nothing to do at close (no write-back state, no remote POSIX locks), so
///   the kernel need not send FLUSH — a round trip saved on every close. (With a writeback cache
///   the kernel ignores the flag and flushes anyway.)
const FILE_OPEN_FLAGS: u32 = abi::fopen::KEEP_CACHE | abi::fopen::NOFLUSH;

/// The FUSE node id of ext4 inode `ino`.
pub fn nodeid_of(ino: Ino) -> u64 {
    if ino == ROOT_INO { abi::ROOT_ID } else { ino }
}

/// The ext4 inode of FUSE node id `nodeid`.
pub fn ino_of(nodeid: u64) -> Ino {
    if nodeid == abi::ROOT_ID {
        ROOT_INO
    } else {
        nodeid
    }
}

/// What a handler produced: a reply, no reply, or an errno to reply with.
type Handled = Result<Option<Vec<u8>>, Errno>;

/// Serves FUSE requests on one mounted [`Fs`]. `Send + Sync`: call `dispatch` from any thread.
pub struct Dispatcher {
    fs: Arc<Fs>,
    opts: DispatchOptions,
    /// INIT succeeded (and no DESTROY since).
    initialized: AtomicBool,
    destroyed: AtomicBool,
    /// Negotiated minor version and INIT flags (valid while `initialized`).
    minor: AtomicU32,
    flags: AtomicU64,
    /// Serializes INIT and DESTROY.
    state: Mutex<()>,
    /// The DAX window, when the transport has one.
    dax: std::sync::OnceLock<Arc<dyn super::DaxWindow>>,
}

impl Dispatcher {
    pub fn new(fs: Arc<Fs>, opts: DispatchOptions) -> Dispatcher {
        Dispatcher {
            fs,
            opts,
            initialized: AtomicBool::new(false),
            destroyed: AtomicBool::new(false),
            minor: AtomicU32::new(0),
            flags: AtomicU64::new(0),
            state: Mutex::new(()),
            dax: std::sync::OnceLock::new(),
        }
    }

    /// Serve SETUPMAPPING / REMOVEMAPPING through `window` (set once, before the first INIT).
    pub fn set_dax_window(&self, window: Arc<dyn super::DaxWindow>) {
        if self.dax.set(window).is_err() {
            warn!("fuse: a DAX window was set twice; keeping the first");
        }
    }

    /// The DAX window, when it is usable.
    fn dax_window(&self) -> Option<&Arc<dyn super::DaxWindow>> {
        self.dax.get().filter(|w| w.active())
    }

    /// True once DESTROY was handled (until a new INIT starts another session).
    pub fn destroyed(&self) -> bool {
        self.destroyed.load(Ordering::Acquire)
    }

    /// The negotiated `(minor, flags)`, once INIT succeeded.
    pub fn negotiated(&self) -> Option<(u32, u64)> {
        if self.initialized.load(Ordering::Acquire) {
            Some((
                self.minor.load(Ordering::Acquire),
                self.flags.load(Ordering::Acquire),
            ))
        } else {
            None
        }
    }

    /// The largest WRITE payload we announce in INIT.
    pub fn max_write(&self) -> u32 {
        self.opts
            .max_write
            .clamp(PAGE_SIZE as u32, u32::from(MAX_PAGES) * PAGE_SIZE as u32)
    }

    /// A buffer this large holds any request the kernel may send us (a full WRITE, a maximal
    /// SETXATTR, …): what a transport should read requests into.
    pub fn request_buffer_size(&self) -> usize {
        (self.max_write() as usize)
            .max(abi::XATTR_SIZE_MAX + PAGE_SIZE)
            .max(abi::MIN_READ_BUFFER)
            + PAGE_SIZE
    }

    /// The most data one READ / READDIR reply carries.
    fn max_read(&self) -> usize {
        usize::from(MAX_PAGES) * PAGE_SIZE
    }

    /// Handle one complete request message; return the complete reply message (out header
    /// included, its len field set), or None when the opcode takes no reply (FORGET,
    /// BATCH_FORGET, INTERRUPT, NOTIFY_REPLY) or the message is too short to answer at all.
    /// (An adapter over [`Dispatcher::dispatch_to`] for tests and simple transports.)
    pub fn dispatch(&self, request: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.dispatch_to(request, None, &mut out);
        (!out.is_empty()).then_some(out)
    }

    /// Handle one request and send its reply, if it takes one, to `sink`. `msg` is the whole
    /// message, except for a WRITE whose payload the transport leaves in place: then `msg` is
    /// its head (in header and `fuse_write_in`, see [`request::WRITE_HEAD_SIZE`]) and `payload`
    /// holds the data, which is copied from there straight into the page cache. A READ's data
    /// goes from the page cache straight into `sink`.
    pub fn dispatch_to(
        &self,
        msg: &[u8],
        payload: Option<&mut dyn WriteSource>,
        sink: &mut dyn ReplySink,
    ) {
        let header = match request::parse_header(msg) {
            Ok(h) => h,
            Err(e) => {
                warn!("fuse: dropping a {}-byte message: {}", msg.len(), e.reason);
                return;
            }
        };
        let unique = header.unique;
        let no_reply = request::is_no_reply(header.opcode);
        let mut out = Replier { sink, sent: false };
        let result = self.handle(&header, msg, payload, &mut out);
        if let Err(e) = &result {
            // Corrupt metadata counts against the file system (its s_errors policy applies).
            self.fs.note_error(*e);
        }
        if no_reply {
            if let Err(e) = result {
                debug!(
                    "fuse: {} (unique {unique}) failed: {e:?}",
                    abi::opcode_name(header.opcode)
                );
            }
            return;
        }
        match result {
            Ok(Some(r)) => out.sink.send(&r),
            Ok(None) => {}
            Err(e) => {
                trace!(
                    "fuse: {} (unique {unique}, node {}) -> {e:?}",
                    abi::opcode_name(header.opcode),
                    header.nodeid
                );
                if !out.sent {
                    out.sink.send(&reply::error(unique, e));
                }
            }
        }
    }

    /// Ok(None) also when the reply was sent already (a READ's data reply).
    fn handle(
        &self,
        h: &abi::InHeader,
        msg: &[u8],
        payload: Option<&mut dyn WriteSource>,
        out: &mut Replier<'_>,
    ) -> Handled {
        if h.opcode != opcode::INIT && !self.initialized.load(Ordering::Acquire) {
            debug!("fuse: {} before INIT: EIO", abi::opcode_name(h.opcode));
            return Err(Errno::EIO);
        }
        let cfg = ParseConfig {
            setxattr_ext: self.flags.load(Ordering::Acquire) & init_flags::SETXATTR_EXT != 0,
        };
        let parsed = match &payload {
            Some(p) => request::parse_write_head(msg, p.len()),
            None => request::parse(msg, &cfg),
        };
        let req = parsed.map_err(|e| {
            warn!(
                "fuse: malformed {} request (unique {}): {}",
                abi::opcode_name(h.opcode),
                h.unique,
                e.reason
            );
            e.errno
        })?;
        trace!(
            "fuse: {} unique {} node {}",
            abi::opcode_name(h.opcode),
            h.unique,
            h.nodeid
        );
        let unique = h.unique;
        let ino = ino_of(h.nodeid);
        let fs = &*self.fs;
        if self.opts.check_permissions {
            // A client that does not check access itself: check as its VFS would.
            let ctx = Ctx {
                uid: h.uid,
                gid: h.gid,
                pid: h.pid,
                umask: 0,
            };
            super::permission::check(fs, ino, &req.op, &ctx, ino_of)?;
        }
        match &req.op {
            Op::Init(arg) => self.init(unique, arg),
            Op::Destroy => self.destroy(unique),

            Op::Lookup { name } => match fs.lookup(ino, name) {
                Ok(a) => Ok(Some(self.entry_reply(unique, &a))),
                Err(Errno::ENOENT) if !self.opts.negative_timeout.is_zero() => {
                    Ok(Some(self.negative_entry_reply(unique)))
                }
                Err(e) => Err(e),
            },
            Op::Forget(f) => {
                fs.forget(ino, f.nlookup);
                Ok(None)
            }
            Op::BatchForget(list) => {
                for f in list {
                    fs.forget(ino_of(f.nodeid), f.nlookup);
                }
                Ok(None)
            }
            Op::Getattr(_) => {
                let a = fs.getattr(ino)?;
                let out = reply::attr_out(&a, self.opts.attr_timeout);
                Ok(Some(reply::build(unique, abi::AttrOut::SIZE, |v| {
                    out.encode(v)
                })))
            }
            Op::Statx(_) => {
                let a = fs.getattr(ino)?;
                let out = reply::statx_out(&a, self.opts.attr_timeout);
                Ok(Some(reply::build(unique, abi::StatxOut::SIZE, |v| {
                    out.encode(v)
                })))
            }
            Op::Readlink => {
                let target = fs.readlink(ino)?;
                Ok(Some(reply::bytes(unique, &target)))
            }
            Op::Open(o) => {
                if fs.is_read_only() && wants_write(o.flags) {
                    return Err(Errno::EROFS);
                }
                let fh = fs.open(ino, o.flags)?;
                if o.flags & libc::O_TRUNC as u32 != 0 && o.open_flags & abi::OPEN_KILL_SUIDGID != 0
                {
                    self.kill_privs(h, ino)?;
                }
                Ok(Some(open_reply(unique, fh, self.file_open_flags(ino))))
            }
            Op::Read(r) => {
                let size = (r.size as usize).min(self.max_read());
                // The data goes from the page cache straight into the reply's destination.
                let mut data = DataReply { out, unique };
                fs.read_to(ino, r.fh, r.offset, size as u32, &mut data)?;
                Ok(None)
            }
            Op::Statfs => {
                let s = reply::kstatfs(&fs.statfs()?);
                Ok(Some(reply::build(unique, abi::Kstatfs::SIZE, |v| {
                    s.encode(v)
                })))
            }
            Op::Release(r) => {
                fs.release(ino, r.fh);
                Ok(Some(reply::empty(unique)))
            }
            Op::Flush(_) => Ok(Some(reply::empty(unique))),
            Op::Fsync(f) => {
                fs.fsync(ino, f.fsync_flags & FSYNC_FDATASYNC != 0)?;
                Ok(Some(reply::empty(unique)))
            }
            Op::Fsyncdir(_) => {
                fs.sync()?;
                Ok(Some(reply::empty(unique)))
            }
            Op::Syncfs(_) => {
                fs.syncfs()?;
                Ok(Some(reply::empty(unique)))
            }
            Op::Getxattr { arg, name } => {
                let value = fs.getxattr(ino, name)?;
                xattr_reply(unique, &value, arg.size).map(Some)
            }
            Op::Listxattr(arg) => {
                let names = fs.listxattr(ino)?;
                xattr_reply(unique, &names, arg.size).map(Some)
            }
            Op::Opendir(o) => {
                let fh = fs.opendir(ino, o.flags)?;
                Ok(Some(open_reply(unique, fh, 0)))
            }
            Op::Readdir(r) => self.readdir(unique, ino, r, false).map(Some),
            Op::Readdirplus(r) => self.readdir(unique, ino, r, true).map(Some),
            Op::Releasedir(r) => {
                fs.releasedir(ino, r.fh);
                Ok(Some(reply::empty(unique)))
            }
            Op::Access(a) => {
                let ctx = Ctx {
                    uid: h.uid,
                    gid: h.gid,
                    pid: h.pid,
                    umask: 0,
                };
                fs.access(ino, a.mask, &ctx)?;
                Ok(Some(reply::empty(unique)))
            }
            Op::Lseek(l) => {
                let offset = fs.lseek(ino, l.offset, l.whence)?;
                let out = abi::LseekOut { offset };
                Ok(Some(reply::build(unique, abi::LseekOut::SIZE, |v| {
                    out.encode(v)
                })))
            }
            // The kernel expects no answer to these.
            Op::Interrupt(_) | Op::NotifyReply { .. } => Ok(None),

            Op::Setattr(_)
            | Op::Symlink { .. }
            | Op::Mknod { .. }
            | Op::Mkdir { .. }
            | Op::Unlink { .. }
            | Op::Rmdir { .. }
            | Op::Rename { .. }
            | Op::Rename2 { .. }
            | Op::Link { .. }
            | Op::Write { .. }
            | Op::Setxattr { .. }
            | Op::Removexattr { .. }
            | Op::Create { .. }
            | Op::Fallocate(_)
            | Op::CopyFileRange(_)
            | Op::CopyFileRange64(_)
            | Op::Tmpfile { .. } => {
                let r = self.mutation(h, &req.op, payload)?;
                if self.opts.sync_changes {
                    match &req.op {
                        // Data changes reach the disk too (O_SYNC semantics).
                        Op::Write { .. } | Op::Fallocate(_) => fs.fsync(ino, false)?,
                        Op::CopyFileRange(c) | Op::CopyFileRange64(c) => {
                            fs.fsync(ino_of(c.nodeid_out), false)?
                        }
                        _ => fs.sync()?,
                    }
                }
                Ok(r)
            }

            // The DAX window (ENOSYS without one, as the kernel expects).
            Op::SetupMapping(arg) => {
                let w = self.dax_window().ok_or(Errno::ENOSYS)?;
                let write = arg.flags & abi::SETUPMAPPING_FLAG_WRITE != 0;
                if write && fs.is_read_only() {
                    return Err(Errno::EROFS);
                }
                w.setup(ino, arg)?;
                Ok(Some(reply::empty(unique)))
            }
            Op::RemoveMapping(list) => {
                let w = self.dax_window().ok_or(Errno::ENOSYS)?;
                w.remove(list)?;
                Ok(Some(reply::empty(unique)))
            }
            // ENOSYS makes the kernel fall back: local locks, no bmap, no ioctl, default poll.
            Op::Getlk(_)
            | Op::Setlk(_)
            | Op::Setlkw(_)
            | Op::Bmap(_)
            | Op::Ioctl { .. }
            | Op::Poll(_) => Err(Errno::ENOSYS),
            Op::Unknown(op) => {
                debug!("fuse: unknown opcode {op}: ENOSYS");
                Err(Errno::ENOSYS)
            }
        }
    }

    // ---- Mutating operations ------------------------------------------------------------------
    // Every opcode that changes the file system comes through here. They are answered EROFS on a
    // read-only file system; wiring them to the engine's mutations is the next issue, and each
    // arm below is where that goes.
    fn mutation(
        &self,
        h: &abi::InHeader,
        op: &Op<'_>,
        payload: Option<&mut dyn WriteSource>,
    ) -> Handled {
        if self.fs.is_read_only() {
            return Err(Errno::EROFS);
        }
        let fs = &*self.fs;
        let unique = h.unique;
        let ino = ino_of(h.nodeid);
        let umask = match op {
            _ if self.flags.load(Ordering::Acquire) & init_flags::DONT_MASK == 0 => 0,
            Op::Mknod { arg, .. } => arg.umask,
            Op::Mkdir { arg, .. } => arg.umask,
            Op::Create { arg, .. } | Op::Tmpfile { arg, .. } => arg.umask,
            _ => 0,
        };
        let ctx = Ctx {
            uid: h.uid,
            gid: h.gid,
            pid: h.pid,
            umask,
        };
        match op {
            Op::Setattr(s) => {
                trace!(
                    "fuse: SETATTR node {} valid {:#x} mode {:o} by uid {} gid {} pid {}",
                    h.nodeid, s.valid, s.mode, h.uid, h.gid, h.pid
                );
                let mut sa = setattr_of(s)?;
                if sa.mode.is_some_and(|m| m & libc::S_ISGID != 0) {
                    // Setgid stays only for a caller that may keep it (see `caller`).
                    let cur = fs.getattr(ino)?;
                    sa.mode = caller::setattr_mode(&cur, &sa, &self.caller(h));
                }
                // A truncate or a chown drops the file's privileges (a chown's setgid rule
                // looks at the group before it); so does a SETATTR that changes nothing.
                let kill = s.valid & abi::fattr::KILL_SUIDGID != 0;
                let chown = sa.uid.is_some() || sa.gid.is_some();
                let bare = s.valid & !(abi::fattr::FH | abi::fattr::LOCKOWNER) == 0;
                let before = if chown || bare || sa.size.is_some() {
                    Some(fs.getattr(ino)?)
                } else {
                    None
                };
                let mut a = fs.setattr(ino, &sa)?;
                if let Some(before) = before {
                    let c = self.caller(h);
                    a = fs.drop_privs(ino, |_, had_caps| {
                        let why = match (bare, kill, chown) {
                            (true, _, _) => PrivDrop::Bare { had_caps },
                            (false, false, _) => return None,
                            (false, true, true) => PrivDrop::Chown,
                            (false, true, false) => PrivDrop::Kill,
                        };
                        caller::dropped_mode(&before, &c, why)
                    })?;
                }
                let out = reply::attr_out(&a, self.opts.attr_timeout);
                Ok(Some(reply::build(unique, abi::AttrOut::SIZE, |v| {
                    out.encode(v)
                })))
            }
            Op::Symlink { name, target } => Ok(Some(
                self.entry_reply(unique, &fs.symlink(ino, name, target, &ctx)?),
            )),
            // With DONT_MASK the engine applies the umask (or the default ACL): ctx.umask.
            Op::Mknod { arg, name } => Ok(Some(
                self.entry_reply(unique, &fs.mknod(ino, name, arg.mode, arg.rdev, &ctx)?),
            )),
            Op::Mkdir { arg, name } => Ok(Some(
                self.entry_reply(unique, &fs.mkdir(ino, name, arg.mode, &ctx)?),
            )),
            Op::Unlink { name } => {
                fs.unlink(ino, name)?;
                Ok(Some(reply::empty(unique)))
            }
            Op::Rmdir { name } => {
                fs.rmdir(ino, name)?;
                Ok(Some(reply::empty(unique)))
            }
            Op::Rename { newdir, old, new } => {
                fs.rename(ino, old, ino_of(*newdir), new, 0)?;
                Ok(Some(reply::empty(unique)))
            }
            Op::Rename2 { arg, old, new } => {
                fs.rename_as(ino, old, ino_of(arg.newdir), new, arg.flags, &ctx)?;
                Ok(Some(reply::empty(unique)))
            }
            Op::Link { arg, name } => Ok(Some(
                self.entry_reply(unique, &fs.link(ino_of(arg.oldnodeid), ino, name)?),
            )),
            Op::Create { arg, name } => {
                let a = match fs.mknod(ino, name, arg.mode, 0, &ctx) {
                    Err(Errno::EEXIST) if arg.flags & libc::O_EXCL as u32 == 0 => {
                        let a = fs.lookup(ino, name)?;
                        if arg.flags & libc::O_TRUNC as u32 != 0
                            && arg.open_flags & abi::OPEN_KILL_SUIDGID != 0
                        {
                            self.kill_privs(h, a.ino)?;
                        }
                        a
                    }
                    other => other?,
                };
                let flags = arg.flags & !((libc::O_CREAT | libc::O_EXCL) as u32);
                self.open_created(unique, &a, flags).map(Some)
            }
            Op::Setxattr { arg, name, value } => {
                if arg.setxattr_flags & abi::SETXATTR_ACL_KILL_SGID != 0 {
                    fs.setxattr_kill_sgid(ino, name, value, arg.flags)?;
                } else {
                    fs.setxattr(ino, name, value, arg.flags)?;
                }
                Ok(Some(reply::empty(unique)))
            }
            Op::Removexattr { name } => {
                fs.removexattr(ino, name)?;
                Ok(Some(reply::empty(unique)))
            }
            Op::Tmpfile { arg, .. } => {
                let a = fs.tmpfile(ino, arg.mode, &ctx)?;
                let flags = arg.flags & !((libc::O_CREAT | libc::O_EXCL | libc::O_TMPFILE) as u32);
                self.open_created(unique, &a, flags).map(Some)
            }
            Op::Write { arg, data } => {
                let kill = if arg.write_flags & WRITE_KILL_SUIDGID != 0 {
                    crate::fs::KILL_SUIDGID
                } else {
                    0
                };
                let n = match payload {
                    Some(src) => {
                        let n = fs.write_from(ino, arg.offset, src, kill)?;
                        if src.failed() {
                            return Err(Errno::EIO);
                        }
                        n
                    }
                    None => fs.write(ino, arg.offset, data, kill)?,
                };
                let out = abi::WriteOut {
                    size: n,
                    padding: 0,
                };
                Ok(Some(reply::build(unique, abi::WriteOut::SIZE, |v| {
                    out.encode(v)
                })))
            }
            Op::Fallocate(f) => {
                // The kernel drops setuid/setgid itself first (a SETATTR), as it does for FUSE.
                fs.fallocate(ino, f.offset, f.length, f.mode)?;
                Ok(Some(reply::empty(unique)))
            }
            Op::CopyFileRange(c) | Op::CopyFileRange64(c) => {
                if c.flags != 0 {
                    return Err(Errno::EINVAL);
                }
                let wide = matches!(op, Op::CopyFileRange64(_));
                // The 32-bit reply cannot say more than u32::MAX bytes.
                let len = if wide {
                    c.len
                } else {
                    c.len.min(u32::MAX as u64 & !0xFFF)
                };
                let n = fs.copy_file_range(ino, c.off_in, ino_of(c.nodeid_out), c.off_out, len)?;
                if wide {
                    let out = abi::CopyFileRangeOut { bytes_copied: n };
                    Ok(Some(reply::build(
                        unique,
                        abi::CopyFileRangeOut::SIZE,
                        |v| out.encode(v),
                    )))
                } else {
                    let out = abi::WriteOut {
                        size: n as u32,
                        padding: 0,
                    };
                    Ok(Some(reply::build(unique, abi::WriteOut::SIZE, |v| {
                        out.encode(v)
                    })))
                }
            }
            _ => Err(Errno::ENOSYS),
        }
    }
    // ---- end of mutating operations -----------------------------------------------------------

    fn init(&self, unique: u64, arg: &abi::InitIn) -> Handled {
        let _guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if self.initialized.load(Ordering::Acquire) {
            if self.opts.transport != Transport::Virtio {
                warn!("fuse: second INIT in one session: EIO");
                return Err(Errno::EIO);
            }
            // A guest that rebooted without unmounting starts over: its old references are gone.
            info!(
                "fuse: new INIT on a live virtio session: the guest restarted; dropping its references"
            );
            self.fs.forget_all();
            self.initialized.store(false, Ordering::Release);
        }
        if let Some(w) = self.dax.get() {
            // A new session knows none of the old one's mappings.
            w.reset();
        }
        if arg.major > abi::KERNEL_VERSION {
            // The kernel speaks a newer major: tell it ours and wait for a new INIT.
            info!(
                "fuse: kernel offers protocol {}.{}; answering with {}",
                arg.major,
                arg.minor,
                abi::KERNEL_VERSION
            );
            let out = abi::InitOut {
                major: abi::KERNEL_VERSION,
                minor: abi::KERNEL_MINOR_VERSION,
                ..Default::default()
            };
            return Ok(Some(reply::build(unique, abi::InitOut::COMPAT_SIZE, |v| {
                let start = v.len();
                out.encode(v);
                v.truncate(start + abi::InitOut::COMPAT_SIZE);
            })));
        }
        if arg.major < abi::KERNEL_VERSION || arg.minor < abi::MIN_KERNEL_MINOR_VERSION {
            error!(
                "fuse: kernel FUSE protocol {}.{} is not supported (need {}.{} or newer)",
                arg.major,
                arg.minor,
                abi::KERNEL_VERSION,
                abi::MIN_KERNEL_MINOR_VERSION
            );
            return Err(Errno(libc::EPROTO));
        }
        let minor = arg.minor.min(abi::KERNEL_MINOR_VERSION);
        let wanted = if self.opts.writeback_cache {
            WANTED_INIT_FLAGS | init_flags::WRITEBACK_CACHE
        } else {
            WANTED_INIT_FLAGS
        };
        // DAX: 4 KiB window alignment (a mapping is any page-aligned part of a 2 MiB chunk), and
        // per-inode DAX (`dax=inode`) from the ext4 inode's DAX flag.
        let dax = self.dax_window().is_some();
        let wanted = if dax {
            wanted | init_flags::MAP_ALIGNMENT | init_flags::HAS_INODE_DAX
        } else {
            wanted
        };
        let mut flags = arg.flags & wanted;
        if flags & init_flags::INIT_EXT == 0 {
            // Without INIT_EXT there is no flags2 word.
            flags &= 0xffff_ffff;
        }
        let out = abi::InitOut {
            major: abi::KERNEL_VERSION,
            minor,
            max_readahead: arg.max_readahead.min(self.opts.max_readahead),
            flags,
            max_background: 64,
            congestion_threshold: 48,
            max_write: self.max_write(),
            time_gran: 1,
            max_pages: if flags & init_flags::MAX_PAGES != 0 {
                MAX_PAGES
            } else {
                0
            },
            map_alignment: if flags & init_flags::MAP_ALIGNMENT != 0 {
                DAX_MAP_ALIGNMENT_LOG2
            } else {
                0
            },
            max_stack_depth: 0,
            request_timeout: 0,
        };
        self.minor.store(minor, Ordering::Release);
        self.flags.store(flags, Ordering::Release);
        self.destroyed.store(false, Ordering::Release);
        self.initialized.store(true, Ordering::Release);
        info!(
            "fuse: session up: protocol 7.{minor} (kernel 7.{}), flags {flags:#x}, max_write {}, {:?}",
            arg.minor, out.max_write, self.opts.transport
        );
        let size = if minor >= 23 {
            abi::InitOut::SIZE
        } else {
            abi::InitOut::COMPAT_22_SIZE
        };
        Ok(Some(reply::build(unique, size, |v| {
            let start = v.len();
            out.encode(v);
            v.truncate(start + size);
        })))
    }

    /// CREATE / TMPFILE: open the inode just made and answer entry + open; if the open fails the
    /// reference the create counted is given back.
    fn open_created(&self, unique: u64, a: &Attr, flags: u32) -> Result<Vec<u8>, Errno> {
        let fh = match self.fs.open(a.ino, flags) {
            Ok(fh) => fh,
            Err(e) => {
                self.fs.forget(a.ino, 1);
                return Err(e);
            }
        };
        let e = reply::entry_out(
            nodeid_of(a.ino),
            a,
            self.opts.entry_timeout,
            self.opts.attr_timeout,
        );
        let o = abi::OpenOut {
            fh,
            open_flags: self.file_open_flags(a.ino),
            backing_id: 0,
        };
        Ok(reply::build(
            unique,
            abi::EntryOut::SIZE + abi::OpenOut::SIZE,
            |v| {
                e.encode(v);
                o.encode(v);
            },
        ))
    }

    /// The credentials of a request's caller: on a host mount its pid is a process here.
    /// Drop the privileges of `ino` for a kill flag of `h`'s request (see `fs::killpriv`).
    fn kill_privs(&self, h: &abi::InHeader, ino: Ino) -> Result<(), Errno> {
        let c = self.caller(h);
        self.fs
            .drop_privs(ino, |cur, _| caller::dropped_mode(cur, &c, PrivDrop::Kill))
            .map(|_| ())
    }

    fn caller(&self, h: &abi::InHeader) -> Caller {
        match self.opts.transport {
            Transport::DevFuse => Caller::from_host_process(h.uid, h.gid, h.pid),
            Transport::Virtio => Caller::from_header(h.uid, h.gid),
        }
    }

    /// The `open_flags` for an open of regular file `ino`: [`FILE_OPEN_FLAGS`], without
    /// KEEP_CACHE when a read now would move the file's atime — the kernel then drops its cached
    /// pages of the file, so the reads come to us and we can move it (atime is ours to keep).
    fn file_open_flags(&self, ino: Ino) -> u32 {
        match self.fs.atime_due(ino) {
            Ok(true) => FILE_OPEN_FLAGS & !abi::fopen::KEEP_CACHE,
            _ => FILE_OPEN_FLAGS,
        }
    }

    fn destroy(&self, unique: u64) -> Handled {
        let _guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self.fs.shutdown() {
            error!("fuse: DESTROY: flushing the file system failed: {e}");
        }
        self.initialized.store(false, Ordering::Release);
        self.destroyed.store(true, Ordering::Release);
        info!("fuse: session destroyed");
        Ok(Some(reply::empty(unique)))
    }

    /// "No such name, and there will be none for `negative_timeout`": node id 0 (the kernel
    /// then caches a negative dentry instead of asking again).
    fn negative_entry_reply(&self, unique: u64) -> Vec<u8> {
        let (entry_valid, entry_valid_nsec) = reply::timeout_parts(self.opts.negative_timeout);
        let e = abi::EntryOut {
            entry_valid,
            entry_valid_nsec,
            ..Default::default()
        };
        reply::build(unique, abi::EntryOut::SIZE, |v| e.encode(v))
    }

    fn entry_reply(&self, unique: u64, a: &Attr) -> Vec<u8> {
        let e = reply::entry_out(
            nodeid_of(a.ino),
            a,
            self.opts.entry_timeout,
            self.opts.attr_timeout,
        );
        reply::build(unique, abi::EntryOut::SIZE, |v| e.encode(v))
    }

    fn readdir(
        &self,
        unique: u64,
        ino: Ino,
        r: &abi::ReadIn,
        plus: bool,
    ) -> Result<Vec<u8>, Errno> {
        let limit = (r.size as usize).min(self.max_read());
        let record = |e: &DirEntry| {
            if plus {
                abi::direntplus_size(e.name.len())
            } else {
                abi::dirent_size(e.name.len())
            }
        };
        // Collect what fits first; READDIRPLUS looks entries up only after the engine's readdir
        // has returned, so the engine never sees a lookup while it is inside readdir.
        let mut entries: Vec<DirEntry> = Vec::new();
        let mut used = 0usize;
        let mut overflow = false;
        self.fs.readdir(ino, r.fh, r.offset, &mut |e: &DirEntry| {
            let need = record(e);
            if used + need > limit {
                overflow = true;
                return false;
            }
            used += need;
            entries.push(e.clone());
            true
        })?;
        if entries.is_empty() && overflow {
            // Not even one entry fits the caller's buffer.
            return Err(Errno::EINVAL);
        }
        let mut buf = reply::DirentBuf::new(limit);
        for e in &entries {
            let ok = if plus {
                let entry = if e.name == b"." || e.name == b".." {
                    // No attributes and no lookup reference for "." and "..".
                    abi::EntryOut::default()
                } else {
                    match self.fs.lookup(ino, &e.name) {
                        Ok(a) => reply::entry_out(
                            nodeid_of(a.ino),
                            &a,
                            self.opts.entry_timeout,
                            self.opts.attr_timeout,
                        ),
                        Err(err) => {
                            // Gone or unreadable: list the name without attributes.
                            debug!(
                                "fuse: READDIRPLUS: lookup of entry in inode {ino} failed: {err:?}"
                            );
                            abi::EntryOut::default()
                        }
                    }
                };
                buf.push_plus(&entry, e.ino, e.next_off, u32::from(e.kind), &e.name)
            } else {
                buf.push(e.ino, e.next_off, u32::from(e.kind), &e.name)
            };
            debug_assert!(ok, "sized before packing");
        }
        Ok(reply::bytes(unique, &buf.into_bytes()))
    }
}

/// The reply side of one request: whether something was sent already.
struct Replier<'a> {
    sink: &'a mut dyn ReplySink,
    sent: bool,
}

/// A READ's data reply: the engine hands the data over once, as slices of the page cache.
struct DataReply<'r, 'a> {
    out: &'r mut Replier<'a>,
    unique: u64,
}

impl ReadSink for DataReply<'_, '_> {
    fn put(&mut self, parts: &[&[u8]]) -> std::io::Result<()> {
        if self.out.sink.send_data(self.unique, parts) {
            self.out.sent = true;
            Ok(())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "the reply does not fit the reply buffer",
            ))
        }
    }
}

/// True when open(2) `flags` ask for write access or truncation.
/// `FUSE_WRITE_KILL_SUIDGID` in `fuse_write_in.write_flags`.
const WRITE_KILL_SUIDGID: u32 = 1 << 2;
/// `FUSE_FSYNC_FDATASYNC` in `fuse_fsync_in.fsync_flags`.
const FSYNC_FDATASYNC: u32 = 1;

fn wants_write(flags: u32) -> bool {
    let flags = flags as i32;
    (flags & libc::O_ACCMODE) != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

/// `fuse_setattr_in` → the engine's attribute changes.
fn setattr_of(s: &abi::SetattrIn) -> Result<SetAttr, Errno> {
    use abi::fattr;
    let ts = |sec: u64, nsec: u32| -> Result<Timespec, Errno> {
        if nsec >= 1_000_000_000 {
            return Err(Errno::EINVAL);
        }
        Ok(Timespec {
            sec: sec as i64,
            nsec,
        })
    };
    let time = |set: u32, now: u32, sec: u64, nsec: u32| -> Result<Option<TimeSet>, Errno> {
        Ok(if s.valid & now != 0 {
            Some(TimeSet::Now)
        } else if s.valid & set != 0 {
            Some(TimeSet::At(ts(sec, nsec)?))
        } else {
            None
        })
    };
    Ok(SetAttr {
        mode: (s.valid & fattr::MODE != 0).then_some(s.mode),
        uid: (s.valid & fattr::UID != 0).then_some(s.uid),
        gid: (s.valid & fattr::GID != 0).then_some(s.gid),
        size: (s.valid & fattr::SIZE != 0).then_some(s.size),
        atime: time(fattr::ATIME, fattr::ATIME_NOW, s.atime, s.atimensec)?,
        mtime: time(fattr::MTIME, fattr::MTIME_NOW, s.mtime, s.mtimensec)?,
        ctime: if s.valid & fattr::CTIME != 0 {
            Some(ts(s.ctime, s.ctimensec)?)
        } else {
            None
        },
    })
}

fn open_reply(unique: u64, fh: u64, open_flags: u32) -> Vec<u8> {
    let out = abi::OpenOut {
        fh,
        open_flags,
        backing_id: 0,
    };
    reply::build(unique, abi::OpenOut::SIZE, |v| out.encode(v))
}

/// GETXATTR / LISTXATTR: size 0 asks for the needed size; a too-small buffer is ERANGE.
fn xattr_reply(unique: u64, value: &[u8], size: u32) -> Result<Vec<u8>, Errno> {
    if size == 0 {
        let out = abi::GetxattrOut {
            size: u32::try_from(value.len()).map_err(|_| Errno::E2BIG)?,
            padding: 0,
        };
        Ok(reply::build(unique, abi::GetxattrOut::SIZE, |v| {
            out.encode(v)
        }))
    } else if value.len() > size as usize {
        Err(Errno::ERANGE)
    } else {
        Ok(reply::bytes(unique, value))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::blockdev::MemDevice;
    use crate::fs::{AtimePolicy, MountOptions};
    use crate::fuse::abi::{InitOut, OutHeader};
    use crate::fuse::request::build;
    use crate::fuse::request::tests::Rng;
    use std::process::Command;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn dispatcher_is_send_and_sync() {
        assert_send_sync::<Dispatcher>();
    }

    /// An ext4 image made by mke2fs from a small tree.
    pub(crate) fn make_image() -> Option<Vec<u8>> {
        let dir = tempfile::tempdir().ok()?;
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).ok()?;
        std::fs::write(src.join("hello"), b"hello, world\n").ok()?;
        std::fs::write(src.join("sub/inner"), vec![7u8; 10000]).ok()?;
        std::os::unix::fs::symlink("hello", src.join("link")).ok()?;
        let img = dir.path().join("img");
        let st = Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-d"])
            .arg(&src)
            .arg(&img)
            .arg("8M")
            .stdout(std::process::Stdio::null())
            .status()
            .ok()?;
        if !st.success() {
            return None;
        }
        std::fs::read(&img).ok()
    }

    fn fs_from_image() -> Arc<Fs> {
        let bytes = make_image().expect("mke2fs (e2fsprogs) is needed to build the test image");
        let dev = Arc::new(MemDevice::from_vec(bytes));
        let fs = Fs::mount(dev, &MountOptions::ro()).expect("mount test image");
        Arc::new(fs)
    }

    fn dispatcher() -> Dispatcher {
        Dispatcher::new(fs_from_image(), DispatchOptions::default())
    }

    fn init_msg(unique: u64, major: u32, minor: u32, flags: u64, ext: bool) -> Vec<u8> {
        let i = abi::InitIn {
            major,
            minor,
            max_readahead: 128 * 1024,
            flags,
        };
        let mut body = Vec::new();
        i.encode(&mut body);
        if !ext {
            body.truncate(abi::InitIn::MIN_SIZE);
        }
        build(opcode::INIT, unique, 0, &[&body])
    }

    /// Decode a reply, checking its header: (error, payload).
    fn decode(reply: &[u8], unique: u64) -> (i32, &[u8]) {
        let h = OutHeader::decode(reply).expect("reply has a header");
        assert_eq!(h.len as usize, reply.len(), "len field matches");
        assert_eq!(h.unique, unique, "unique echoed");
        assert!(h.error <= 0);
        if h.error != 0 {
            assert_eq!(reply.len(), OutHeader::SIZE, "errors carry no payload");
        }
        (h.error, &reply[OutHeader::SIZE..])
    }

    fn all_kernel_flags() -> u64 {
        // Everything a 6.x kernel offers, including flags2 bits.
        ((1u64 << 43) - 1) & !init_flags::INIT_RESERVED
    }

    fn do_init(d: &Dispatcher) -> InitOut {
        let r = d
            .dispatch(&init_msg(1, 7, 44, all_kernel_flags(), true))
            .unwrap();
        let (err, payload) = decode(&r, 1);
        assert_eq!(err, 0);
        InitOut::decode(payload).unwrap()
    }

    #[test]
    fn init_with_a_current_kernel() {
        let d = dispatcher();
        assert_eq!(d.negotiated(), None);
        let out = do_init(&d);
        assert_eq!(out.major, 7);
        assert_eq!(out.minor, abi::KERNEL_MINOR_VERSION);
        assert_eq!(out.flags, WANTED_INIT_FLAGS);
        // ACLs and the umask are ours; file handles work (EXPORT_SUPPORT).
        for f in [
            init_flags::POSIX_ACL,
            init_flags::DONT_MASK,
            init_flags::SETXATTR_EXT,
            init_flags::EXPORT_SUPPORT,
        ] {
            assert_ne!(out.flags & f, 0, "{f:#x}");
        }
        assert_eq!(out.flags & init_flags::WRITEBACK_CACHE, 0);
        assert_eq!(out.max_pages, 256);
        assert_eq!(out.max_write, 1 << 20);
        assert_eq!(out.max_readahead, 128 * 1024);
        assert_eq!(out.time_gran, 1);
        assert_eq!(
            d.negotiated(),
            Some((abi::KERNEL_MINOR_VERSION, WANTED_INIT_FLAGS))
        );
        // A second INIT in the same /dev/fuse session is refused.
        let r = d.dispatch(&init_msg(2, 7, 44, 0, true)).unwrap();
        assert_eq!(decode(&r, 2).0, -libc::EIO);
        // Over virtio it means the guest restarted: the session starts over.
        let v = Dispatcher::new(
            fs_from_image(),
            DispatchOptions {
                transport: Transport::Virtio,
                ..Default::default()
            },
        );
        do_init(&v);
        let r = v.dispatch(&init_msg(3, 7, 44, 0, true)).unwrap();
        assert_eq!(decode(&r, 3).0, 0);
    }

    #[test]
    fn init_with_7_31_negotiates_down() {
        let d = dispatcher();
        let offered = init_flags::ASYNC_READ
            | init_flags::BIG_WRITES
            | init_flags::MAX_PAGES
            | init_flags::POSIX_LOCKS
            | init_flags::DO_READDIRPLUS;
        let r = d.dispatch(&init_msg(9, 7, 31, offered, false)).unwrap();
        let (err, payload) = decode(&r, 9);
        assert_eq!(err, 0);
        assert_eq!(payload.len(), InitOut::SIZE);
        let out = InitOut::decode(payload).unwrap();
        assert_eq!((out.major, out.minor), (7, 31));
        assert_eq!(
            out.flags,
            init_flags::ASYNC_READ
                | init_flags::BIG_WRITES
                | init_flags::MAX_PAGES
                | init_flags::DO_READDIRPLUS
        );
        assert_eq!(out.flags >> 32, 0);
    }

    #[test]
    fn init_with_unsupported_versions() {
        let d = dispatcher();
        // Major 8: answer with our major only, stay uninitialized.
        let r = d.dispatch(&init_msg(3, 8, 0, 0, true)).unwrap();
        let (err, payload) = decode(&r, 3);
        assert_eq!(err, 0);
        assert_eq!(payload.len(), InitOut::COMPAT_SIZE);
        assert_eq!(&payload[0..4], &7u32.to_le_bytes());
        assert_eq!(d.negotiated(), None);
        let r = d
            .dispatch(&build(opcode::GETATTR, 4, 1, &[&[0u8; 16]]))
            .unwrap();
        assert_eq!(decode(&r, 4).0, -libc::EIO);
        // Major 6 and too-old minors: EPROTO.
        let r = d.dispatch(&init_msg(5, 6, 40, 0, false)).unwrap();
        assert_eq!(decode(&r, 5).0, -libc::EPROTO);
        let r = d.dispatch(&init_msg(6, 7, 30, 0, false)).unwrap();
        assert_eq!(decode(&r, 6).0, -libc::EPROTO);
        assert_eq!(d.negotiated(), None);
        // Then the retry with major 7 works.
        let r = d.dispatch(&init_msg(7, 7, 41, 0, true)).unwrap();
        assert_eq!(decode(&r, 7).0, 0);
        assert!(d.negotiated().is_some());
    }

    #[test]
    fn requests_before_init_get_eio() {
        let d = dispatcher();
        for (op, body) in [
            (opcode::LOOKUP, &b"x\0"[..]),
            (opcode::GETATTR, &[0u8; 16][..]),
            (opcode::STATFS, &[][..]),
            (9999, &[][..]),
        ] {
            let r = d.dispatch(&build(op, 11, 1, &[body])).unwrap();
            assert_eq!(decode(&r, 11).0, -libc::EIO);
        }
        // No-reply opcodes stay silent.
        assert_eq!(
            d.dispatch(&build(opcode::FORGET, 12, 5, &[&1u64.to_le_bytes()])),
            None
        );
        // A truncated INIT is EINVAL, not EIO.
        let r = d
            .dispatch(&build(opcode::INIT, 13, 0, &[&[7u8, 0, 0]]))
            .unwrap();
        assert_eq!(decode(&r, 13).0, -libc::EINVAL);
    }

    #[test]
    fn unknown_and_unsupported_opcodes_get_enosys() {
        let d = dispatcher();
        do_init(&d);
        let lk = [0u8; abi::LkIn::SIZE];
        let sm = [0u8; abi::SetupmappingIn::SIZE];
        let rm = 0u32.to_le_bytes();
        let bm = [0u8; abi::BmapIn::SIZE];
        let pl = [0u8; abi::PollIn::SIZE];
        for (op, body) in [
            (9999u32, &[][..]),
            (opcode::CUSE_INIT, &[][..]),
            (opcode::GETLK, &lk[..]),
            (opcode::SETLK, &lk[..]),
            (opcode::SETLKW, &lk[..]),
            (opcode::SETUPMAPPING, &sm[..]),
            (opcode::REMOVEMAPPING, &rm[..]),
            (opcode::BMAP, &bm[..]),
            (opcode::POLL, &pl[..]),
        ] {
            let r = d.dispatch(&build(op, 21, 1, &[body])).unwrap();
            assert_eq!(decode(&r, 21).0, -libc::ENOSYS, "{}", abi::opcode_name(op));
        }
    }

    #[test]
    fn malformed_requests() {
        let d = dispatcher();
        do_init(&d);
        // Truncated header: nothing to answer.
        assert_eq!(d.dispatch(&[0u8; 39]), None);
        assert_eq!(d.dispatch(&[]), None);
        // len field disagreeing with the buffer.
        let mut m = build(opcode::LOOKUP, 31, 1, &[b"a\0"]);
        m[0..4].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(decode(&d.dispatch(&m).unwrap(), 31).0, -libc::EINVAL);
        // Name without NUL, name with '/'.
        let r = d
            .dispatch(&build(opcode::LOOKUP, 32, 1, &[b"abc"]))
            .unwrap();
        assert_eq!(decode(&r, 32).0, -libc::EINVAL);
        let r = d
            .dispatch(&build(opcode::LOOKUP, 33, 1, &[b"a/b\0"]))
            .unwrap();
        assert_eq!(decode(&r, 33).0, -libc::EINVAL);
        // Truncated body.
        let r = d
            .dispatch(&build(opcode::READ, 34, 1, &[&[0u8; 20]]))
            .unwrap();
        assert_eq!(decode(&r, 34).0, -libc::EINVAL);
        // Huge batch forget: dropped, no reply.
        let mut body = u32::MAX.to_le_bytes().to_vec();
        body.extend_from_slice(&[0u8; 4 + 16]);
        assert_eq!(
            d.dispatch(&build(opcode::BATCH_FORGET, 35, 0, &[&body])),
            None
        );
        assert_eq!(
            d.dispatch(&build(opcode::INTERRUPT, 36, 0, &[&35u64.to_le_bytes()])),
            None
        );
    }

    #[test]
    fn mutations_get_erofs_on_a_read_only_fs() {
        let d = dispatcher();
        do_init(&d);
        let enc = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut v = Vec::new();
            f(&mut v);
            v
        };
        let setattr = enc(&|v| abi::SetattrIn::default().encode(v));
        let mknod = enc(&|v| abi::MknodIn::default().encode(v));
        let mkdir = enc(&|v| abi::MkdirIn::default().encode(v));
        let rename2 = enc(&|v| abi::Rename2In::default().encode(v));
        let write = enc(&|v| {
            abi::WriteIn {
                size: 2,
                ..Default::default()
            }
            .encode(v)
        });
        let create = enc(&|v| abi::CreateIn::default().encode(v));
        let falloc = enc(&|v| abi::FallocateIn::default().encode(v));
        let cfr = enc(&|v| abi::CopyFileRangeIn::default().encode(v));
        let cases: Vec<(u32, Vec<&[u8]>)> = vec![
            (opcode::SETATTR, vec![&setattr]),
            (opcode::MKNOD, vec![&mknod, b"n\0"]),
            (opcode::MKDIR, vec![&mkdir, b"d\0"]),
            (opcode::UNLINK, vec![b"f\0"]),
            (opcode::RMDIR, vec![b"d\0"]),
            (
                opcode::RENAME,
                vec![&[1, 0, 0, 0, 0, 0, 0, 0], b"a\0", b"b\0"],
            ),
            (opcode::RENAME2, vec![&rename2, b"a\0", b"b\0"]),
            (opcode::LINK, vec![&[2, 0, 0, 0, 0, 0, 0, 0], b"l\0"]),
            (opcode::SYMLINK, vec![b"s\0", b"target\0"]),
            (opcode::WRITE, vec![&write, b"hi"]),
            (
                opcode::SETXATTR,
                // SETXATTR_EXT is negotiated: the extended 16-byte header.
                vec![
                    &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    b"user.x\0",
                    b"v",
                ],
            ),
            (opcode::REMOVEXATTR, vec![b"user.x\0"]),
            (opcode::CREATE, vec![&create, b"c\0"]),
            (opcode::TMPFILE, vec![&create, b"/\0"]),
            (opcode::FALLOCATE, vec![&falloc]),
            (opcode::COPY_FILE_RANGE, vec![&cfr]),
            (opcode::COPY_FILE_RANGE_64, vec![&cfr]),
        ];
        for (op, body) in cases {
            let r = d.dispatch(&build(op, 41, 1, &body)).unwrap();
            assert_eq!(decode(&r, 41).0, -libc::EROFS, "{}", abi::opcode_name(op));
        }
        // OPEN for writing is EROFS too.
        let o = enc(&|v| {
            abi::OpenIn {
                flags: libc::O_RDWR as u32,
                open_flags: 0,
            }
            .encode(v)
        });
        let r = d.dispatch(&build(opcode::OPEN, 42, 1, &[&o])).unwrap();
        assert_eq!(decode(&r, 42).0, -libc::EROFS);
    }

    #[test]
    fn flush_destroy_and_reinit() {
        let d = dispatcher();
        do_init(&d);
        let r = d
            .dispatch(&build(opcode::FLUSH, 51, 1, &[&[0u8; abi::FlushIn::SIZE]]))
            .unwrap();
        assert_eq!(decode(&r, 51), (0, &[][..]));
        assert!(!d.destroyed());
        let r = d.dispatch(&build(opcode::DESTROY, 52, 0, &[])).unwrap();
        assert_eq!(decode(&r, 52), (0, &[][..]));
        assert!(d.destroyed());
        let r = d.dispatch(&build(opcode::STATFS, 53, 1, &[])).unwrap();
        assert_eq!(decode(&r, 53).0, -libc::EIO);
        do_init(&d);
        assert!(!d.destroyed());
    }

    #[test]
    fn fuzz_dispatch_never_panics() {
        let d = dispatcher();
        do_init(&d);
        let mut rng = Rng::new(0xfeed_beef);
        let skip = [
            opcode::FORGET,
            opcode::BATCH_FORGET,
            opcode::DESTROY,
            opcode::INIT,
        ];
        for i in 0..5000u64 {
            let op = rng.below(56) as u32;
            if skip.contains(&op) {
                continue;
            }
            let len = rng.below(200) as usize;
            let mut body = rng.bytes(len);
            if len > 0 && rng.below(2) == 0 {
                body[len - 1] = 0;
            }
            let nodeid = match rng.below(3) {
                0 => 1,
                1 => rng.below(20),
                _ => rng.next(),
            };
            let m = build(op, i, nodeid, &[&body]);
            if let Some(r) = d.dispatch(&m) {
                decode(&r, i);
            } else {
                assert!(
                    request::is_no_reply(op),
                    "{} got no reply",
                    abi::opcode_name(op)
                );
            }
        }
    }

    fn lookup(d: &Dispatcher, parent: u64, name: &str) -> abi::EntryOut {
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        let r = d
            .dispatch(&build(opcode::LOOKUP, 60, parent, &[&n]))
            .unwrap();
        let (err, payload) = decode(&r, 60);
        assert_eq!(err, 0, "lookup {name}");
        abi::EntryOut::decode(payload).unwrap()
    }

    fn read_in(fh: u64, offset: u64, size: u32) -> Vec<u8> {
        let mut v = Vec::new();
        abi::ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        }
        .encode(&mut v);
        v
    }

    fn open(d: &Dispatcher, op: u32, nodeid: u64) -> u64 {
        let r = d.dispatch(&build(op, 61, nodeid, &[&[0u8; 8]])).unwrap();
        let (err, payload) = decode(&r, 61);
        assert_eq!(err, 0);
        abi::OpenOut::decode(payload).unwrap().fh
    }

    #[test]
    fn engine_backed_reads() {
        let d = dispatcher();
        do_init(&d);
        // GETATTR of the root: node 1, ext4 inode 2.
        let r = d
            .dispatch(&build(opcode::GETATTR, 70, 1, &[&[0u8; 16]]))
            .unwrap();
        let (err, payload) = decode(&r, 70);
        assert_eq!(err, 0);
        let root = abi::AttrOut::decode(payload).unwrap();
        assert_eq!(root.attr.ino, ROOT_INO);
        assert_eq!(root.attr.mode & libc::S_IFMT, libc::S_IFDIR);
        assert_eq!(root.attr_valid, 1);

        // LOOKUP + READ.
        let hello = lookup(&d, 1, "hello");
        assert!(hello.nodeid > 2);
        assert_eq!(hello.attr.ino, hello.nodeid);
        assert_eq!(hello.attr.size, 13);
        let fh = open(&d, opcode::OPEN, hello.nodeid);
        let r = d
            .dispatch(&build(
                opcode::READ,
                71,
                hello.nodeid,
                &[&read_in(fh, 0, 4096)],
            ))
            .unwrap();
        assert_eq!(decode(&r, 71), (0, &b"hello, world\n"[..]));
        let r = d
            .dispatch(&build(
                opcode::READ,
                72,
                hello.nodeid,
                &[&read_in(fh, 7, 5)],
            ))
            .unwrap();
        assert_eq!(decode(&r, 72), (0, &b"world"[..]));

        // Missing name.
        let r = d
            .dispatch(&build(opcode::LOOKUP, 73, 1, &[b"nope\0"]))
            .unwrap();
        assert_eq!(decode(&r, 73).0, -libc::ENOENT);

        // READLINK.
        let link = lookup(&d, 1, "link");
        let r = d
            .dispatch(&build(opcode::READLINK, 74, link.nodeid, &[]))
            .unwrap();
        assert_eq!(decode(&r, 74), (0, &b"hello"[..]));

        // ".." of a subdirectory is the root: node 1.
        let sub = lookup(&d, 1, "sub");
        let up = lookup(&d, sub.nodeid, "..");
        assert_eq!(up.nodeid, 1);
        assert_eq!(up.attr.ino, ROOT_INO);

        // STATFS.
        let r = d.dispatch(&build(opcode::STATFS, 75, 1, &[])).unwrap();
        let (err, payload) = decode(&r, 75);
        assert_eq!(err, 0);
        let st = abi::Kstatfs::decode(payload).unwrap();
        assert_eq!(st.bsize, 4096);
        assert_eq!(st.namelen, 255);

        // LISTXATTR with size 0 answers the needed size (or an errno, never a malformed reply).
        let r = d
            .dispatch(&build(opcode::LISTXATTR, 76, hello.nodeid, &[&[0u8; 8]]))
            .unwrap();
        let (err, payload) = decode(&r, 76);
        if err == 0 {
            assert_eq!(payload.len(), abi::GetxattrOut::SIZE);
        }
    }

    /// With `exclusive` options a missing name is a negative entry (node id 0, valid for the
    /// negative timeout), names and attributes are cached long, and opened files need no FLUSH.
    #[test]
    fn exclusive_options_negative_entries_and_open_flags() {
        let opts = DispatchOptions::exclusive(Transport::DevFuse);
        let d = Dispatcher::new(fs_from_image(), opts.clone());
        do_init(&d);
        let r = d
            .dispatch(&build(opcode::LOOKUP, 90, 1, &[b"nope\0"]))
            .unwrap();
        let (err, payload) = decode(&r, 90);
        assert_eq!(err, 0);
        let neg = abi::EntryOut::decode(payload).unwrap();
        assert_eq!(neg.nodeid, 0);
        assert_eq!(
            (neg.entry_valid, neg.entry_valid_nsec),
            reply::timeout_parts(opts.negative_timeout)
        );
        assert_eq!(neg.attr, abi::FuseAttr::default());
        // Errors other than ENOENT stay errors.
        let r = d
            .dispatch(&build(opcode::LOOKUP, 91, 1, &[b"hello/x\0"]))
            .unwrap();
        assert_eq!(decode(&r, 91).0, -libc::EINVAL);
        let hello = lookup(&d, 1, "hello");
        let r = d
            .dispatch(&build(opcode::LOOKUP, 92, hello.nodeid, &[b"x\0"]))
            .unwrap();
        assert_eq!(decode(&r, 92).0, -libc::ENOTDIR);
        assert_eq!(
            hello.entry_valid,
            opts.entry_timeout.as_secs(),
            "long entry timeout"
        );
        assert_eq!(hello.attr_valid, opts.attr_timeout.as_secs());
        // OPEN of a file: keep the page cache, no FLUSH at close.
        let r = d
            .dispatch(&build(opcode::OPEN, 93, hello.nodeid, &[&[0u8; 8]]))
            .unwrap();
        let (err, payload) = decode(&r, 93);
        assert_eq!(err, 0);
        let o = abi::OpenOut::decode(payload).unwrap();
        assert_eq!(o.open_flags, abi::fopen::KEEP_CACHE | abi::fopen::NOFLUSH);
        // Default options keep answering ENOENT.
        let d = dispatcher();
        do_init(&d);
        let r = d
            .dispatch(&build(opcode::LOOKUP, 94, 1, &[b"nope\0"]))
            .unwrap();
        assert_eq!(decode(&r, 94).0, -libc::ENOENT);
    }

    #[test]
    fn engine_backed_readdir() {
        let d = dispatcher();
        do_init(&d);
        let fh = open(&d, opcode::OPENDIR, 1);
        let r = d
            .dispatch(&build(opcode::READDIR, 80, 1, &[&read_in(fh, 0, 4096)]))
            .unwrap();
        let (err, payload) = decode(&r, 80);
        assert_eq!(err, 0);
        let list = reply::parse_dirents(payload, false).unwrap();
        let mut names: Vec<&[u8]> = list.iter().map(|e| &e.name[..]).collect();
        names.sort();
        assert_eq!(
            names,
            vec![&b"."[..], b"..", b"hello", b"link", b"lost+found", b"sub"]
        );
        // Resume after the second entry: the rest, in the same order.
        let r = d
            .dispatch(&build(
                opcode::READDIR,
                81,
                1,
                &[&read_in(fh, list[1].off, 4096)],
            ))
            .unwrap();
        let rest = reply::parse_dirents(decode(&r, 81).1, false).unwrap();
        assert_eq!(rest, list[2..].to_vec());
        // A buffer too small for any entry.
        let r = d
            .dispatch(&build(opcode::READDIR, 82, 1, &[&read_in(fh, 0, 10)]))
            .unwrap();
        assert_eq!(decode(&r, 82).0, -libc::EINVAL);

        // READDIRPLUS: attributes for everything but "." and "..".
        let r = d
            .dispatch(&build(opcode::READDIRPLUS, 83, 1, &[&read_in(fh, 0, 4096)]))
            .unwrap();
        let plus = reply::parse_dirents(decode(&r, 83).1, true).unwrap();
        assert_eq!(plus.len(), list.len());
        for e in &plus {
            let entry = e.entry.unwrap();
            if e.name == b"." || e.name == b".." {
                assert_eq!(entry, abi::EntryOut::default());
            } else {
                assert_eq!(entry.nodeid, e.ino);
                assert_eq!(entry.attr.ino, e.ino);
            }
        }
        let mut rel = Vec::new();
        abi::ReleaseIn {
            fh,
            ..Default::default()
        }
        .encode(&mut rel);
        let r = d
            .dispatch(&build(opcode::RELEASEDIR, 84, 1, &[&rel]))
            .unwrap();
        assert_eq!(decode(&r, 84).0, 0);
    }

    fn writable_dispatcher(transport: Transport) -> Dispatcher {
        let bytes = make_image().expect("mke2fs (e2fsprogs) is needed to build the test image");
        let dev = Arc::new(MemDevice::from_vec(bytes));
        let fs = Fs::mount(dev, &MountOptions::rw()).expect("mount test image");
        assert!(!fs.is_read_only());
        let d = Dispatcher::new(Arc::new(fs), DispatchOptions::exclusive(transport));
        do_init(&d);
        d
    }

    /// A request from `uid`:`gid`, process `pid`.
    fn build_as(op: u32, unique: u64, node: u64, body: &[&[u8]], ids: (u32, u32, u32)) -> Vec<u8> {
        let mut m = build(op, unique, node, body);
        m[24..28].copy_from_slice(&ids.0.to_le_bytes());
        m[28..32].copy_from_slice(&ids.1.to_le_bytes());
        m[32..36].copy_from_slice(&ids.2.to_le_bytes());
        m
    }

    fn open_flags(d: &Dispatcher, node: u64) -> u32 {
        let r = d
            .dispatch(&build(opcode::OPEN, 95, node, &[&[0u8; 8]]))
            .unwrap();
        let (err, payload) = decode(&r, 95);
        assert_eq!(err, 0);
        abi::OpenOut::decode(payload).unwrap().open_flags
    }

    /// The kernel serves reads from its page cache without asking us; when a read would move
    /// atime, OPEN lets it keep nothing, so the READ comes and moves it.
    #[test]
    fn open_drops_the_kernel_cache_when_a_read_moves_atime() {
        let d = writable_dispatcher(Transport::DevFuse);
        let hello = lookup(&d, 1, "hello");
        let keep = abi::fopen::KEEP_CACHE | abi::fopen::NOFLUSH;
        // The engine's default policy is noatime.
        assert_eq!(open_flags(&d, hello.nodeid), keep);
        d.fs.set_atime_policy(AtimePolicy::from_mount_flags(0));
        // An atime older than mtime: the next read moves it (relatime).
        d.fs.setattr(
            hello.nodeid,
            &SetAttr {
                atime: Some(TimeSet::At(Timespec { sec: 1, nsec: 0 })),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(open_flags(&d, hello.nodeid), abi::fopen::NOFLUSH);
        let fh = open(&d, opcode::OPEN, hello.nodeid);
        let r = d
            .dispatch(&build(
                opcode::READ,
                96,
                hello.nodeid,
                &[&read_in(fh, 0, 4096)],
            ))
            .unwrap();
        assert_eq!(decode(&r, 96), (0, &b"hello, world\n"[..]));
        let a = d.fs.getattr(hello.nodeid).unwrap();
        assert!(a.atime > a.mtime && a.atime > a.ctime, "{a:?}");
        // Moved: the kernel may keep its cache again.
        assert_eq!(open_flags(&d, hello.nodeid), keep);
        // A new file (CREATE): atime equals mtime, so its first read is due.
        let mut body = Vec::new();
        abi::CreateIn {
            flags: libc::O_RDWR as u32,
            mode: libc::S_IFREG | 0o644,
            ..Default::default()
        }
        .encode(&mut body);
        body.extend_from_slice(b"new\0");
        let r = d.dispatch(&build(opcode::CREATE, 97, 1, &[&body])).unwrap();
        let (err, payload) = decode(&r, 97);
        assert_eq!(err, 0);
        let o = abi::OpenOut::decode(&payload[abi::EntryOut::SIZE..]).unwrap();
        assert_eq!(o.open_flags, abi::fopen::NOFLUSH);
    }

    /// The kernel's FUSE client drops setuid but keeps setgid of a file that is not
    /// group-executable when an unprivileged non-member writes it; the VFS drops both.
    #[test]
    fn a_privilege_drop_by_a_non_member_takes_setgid() {
        let setattr_mode = |mode: u32| {
            let mut v = Vec::new();
            abi::SetattrIn {
                valid: abi::fattr::MODE,
                mode,
                ..Default::default()
            }
            .encode(&mut v);
            v
        };
        for transport in [Transport::DevFuse, Transport::Virtio] {
            let d = writable_dispatcher(transport);
            let hello = lookup(&d, 1, "hello");
            let mode = |d: &Dispatcher| d.fs.getattr(hello.nodeid).unwrap().mode & 0o7777;
            let send = |d: &Dispatcher, m: u32, ids: (u32, u32, u32)| {
                let body = setattr_mode(libc::S_IFREG | m);
                let r = d
                    .dispatch(&build_as(opcode::SETATTR, 98, hello.nodeid, &[&body], ids))
                    .unwrap();
                assert_eq!(decode(&r, 98).0, 0);
            };
            // Root (the owner) sets both bits; they stay.
            send(&d, 0o6666, (0, 0, 1));
            assert_eq!(mode(&d), 0o6666);
            // The kernel's drop for user 1001 (not in group 0; a process that does not exist,
            // so only the header speaks): setgid goes too.
            send(&d, 0o2666, (1001, 1001, u32::MAX));
            assert_eq!(mode(&d), 0o666, "{transport:?}");
            // A caller in the file's group keeps setgid.
            send(&d, 0o6666, (0, 0, 1));
            send(&d, 0o2666, (1001, 0, u32::MAX));
            assert_eq!(mode(&d), 0o2666, "{transport:?}");
        }
        // On a host mount the caller's process tells its groups and capabilities: this test
        // runs as root with CAP_FSETID, so even as uid 1001 in the header it keeps setgid.
        let d = writable_dispatcher(Transport::DevFuse);
        let hello = lookup(&d, 1, "hello");
        let body = setattr_mode(libc::S_IFREG | 0o2666);
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() } as u32;
        let caps = std::fs::read_to_string(format!("/proc/{me}/status")).unwrap();
        let r = d
            .dispatch(&build_as(
                opcode::SETATTR,
                99,
                hello.nodeid,
                &[&body],
                (1001, 1001, me),
            ))
            .unwrap();
        assert_eq!(decode(&r, 99).0, 0);
        let fsetid = caps
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|c| u64::from_str_radix(c.trim(), 16).ok())
            .is_some_and(|c| c & (1 << 4) != 0);
        let expect = if fsetid { 0o2666 } else { 0o666 };
        assert_eq!(d.fs.getattr(hello.nodeid).unwrap().mode & 0o7777, expect);
    }

    /// With HANDLE_KILLPRIV_V2 the kernel leaves setuid, setgid and file capabilities to us:
    /// a write, a truncate, an OPEN with O_TRUNC and a chown drop them by the VFS's rules, and
    /// so does the kernel's bare SETATTR before a fallocate.
    #[test]
    fn killpriv_v2_drops_setuid_setgid_and_capabilities() {
        // Over virtio only the header speaks: uid 0 holds CAP_FSETID, uid 1001 does not and is
        // in no group but 1001.
        let d = writable_dispatcher(Transport::Virtio);
        assert_ne!(
            d.negotiated().unwrap().1 & init_flags::HANDLE_KILLPRIV_V2,
            0
        );
        let node = lookup(&d, 1, "hello").nodeid;
        let root = (0, 0, 1);
        let user = (1001, 1001, 1);
        let cap = b"security.capability";
        let reset = |mode: u32| {
            d.fs.setattr(
                node,
                &SetAttr {
                    mode: Some(mode),
                    ..Default::default()
                },
            )
            .unwrap();
            d.fs.setxattr(node, cap, &[1, 0, 0, 2], 0).unwrap();
        };
        let state = || {
            (
                d.fs.getattr(node).unwrap().mode & 0o7777,
                d.fs.getxattr(node, cap).is_ok(),
            )
        };
        let send = |op: u32, body: &[&[u8]], ids: (u32, u32, u32)| {
            let r = d.dispatch(&build_as(op, 70, node, body, ids)).unwrap();
            assert_eq!(decode(&r, 70).0, 0, "opcode {op}");
        };
        let write = |flags: u32| {
            let mut v = Vec::new();
            abi::WriteIn {
                size: 2,
                write_flags: flags,
                ..Default::default()
            }
            .encode(&mut v);
            v
        };
        let setattr = |valid: u32, size: u64, uid: u32| {
            let mut v = Vec::new();
            abi::SetattrIn {
                valid,
                size,
                uid,
                ..Default::default()
            }
            .encode(&mut v);
            v
        };
        // An unprivileged write: setuid, group-exec setgid and the capability go.
        reset(0o6676);
        send(
            opcode::WRITE,
            &[&write(abi::WRITE_KILL_SUIDGID), b"hi"],
            user,
        );
        assert_eq!(state(), (0o676, false));
        // A privileged write keeps the bits; the capability goes all the same.
        reset(0o6676);
        send(opcode::WRITE, &[&write(0), b"hi"], root);
        assert_eq!(state(), (0o6676, false));
        // The kernel's drop before a fallocate by a non-member: setgid goes even without
        // group-exec.
        reset(0o6666);
        send(opcode::SETATTR, &[&setattr(0, 0, 0)], user);
        assert_eq!(state(), (0o666, false));
        // By root it came for the capability: the mode stays. With no capability left, only a
        // chown to the same owner sends it, which drops setuid even for root.
        reset(0o6666);
        send(opcode::SETATTR, &[&setattr(0, 0, 0)], root);
        assert_eq!(state(), (0o6666, false));
        send(opcode::SETATTR, &[&setattr(0, 0, 0)], root);
        assert_eq!(state(), (0o2666, false));
        // Truncate: with the kill flag as for a write; without, only the capability goes.
        reset(0o6676);
        let kill = abi::fattr::KILL_SUIDGID;
        send(
            opcode::SETATTR,
            &[&setattr(abi::fattr::SIZE | kill, 5, 0)],
            user,
        );
        assert_eq!(state(), (0o676, false));
        assert_eq!(d.fs.getattr(node).unwrap().size, 5);
        reset(0o6676);
        send(opcode::SETATTR, &[&setattr(abi::fattr::SIZE, 3, 0)], root);
        assert_eq!(state(), (0o6676, false));
        // A chown by root: setuid goes, setgid without group-exec stays.
        reset(0o6666);
        send(
            opcode::SETATTR,
            &[&setattr(abi::fattr::UID | kill, 0, 5)],
            root,
        );
        assert_eq!(state(), (0o2666, false));
        assert_eq!(d.fs.getattr(node).unwrap().uid, 5);
        // OPEN with O_TRUNC and the kill flag.
        reset(0o6676);
        let mut open_in = Vec::new();
        abi::OpenIn {
            flags: (libc::O_WRONLY | libc::O_TRUNC) as u32,
            open_flags: abi::OPEN_KILL_SUIDGID,
        }
        .encode(&mut open_in);
        send(opcode::OPEN, &[&open_in], user);
        assert_eq!(state(), (0o676, false));
        // Directories keep their bits on a bare SETATTR.
        let before = d.fs.getattr(ino_of(1)).unwrap().mode;
        let r = d
            .dispatch(&build_as(
                opcode::SETATTR,
                71,
                1,
                &[&setattr(0, 0, 0)],
                user,
            ))
            .unwrap();
        assert_eq!(decode(&r, 71).0, 0);
        assert_eq!(d.fs.getattr(ino_of(1)).unwrap().mode, before);
    }
}
