//! A small vhost-user frontend for tests: it plays the VMM. Guest memory is a memfd shared with
//! the daemon through SET_MEM_TABLE; split virtqueues are laid out in it by hand (descriptor
//! table, available ring, used ring), with kick and call eventfds; requests are written as
//! descriptor chains and completions read back from the used ring.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vhost::vhost_user::message::VhostUserMMap;
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{
    Frontend, FrontendReqHandler, VhostUserFrontend, VhostUserFrontendReqHandler,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;
pub const VRING_DESC_F_INDIRECT: u16 = 4;

/// Guest memory size and where data buffers start (rings live below).
pub const MEM_SIZE: usize = 64 << 20;
const RING_AREA: u64 = 0x10_0000;
const RING_STRIDE: u64 = 0x2_0000;
/// Per-queue data area.
const DATA_AREA: u64 = 0x40_0000;
const DATA_STRIDE: u64 = 0x60_0000;
pub const QUEUE_SIZE: u16 = 256;

pub const TIMEOUT: Duration = Duration::from_secs(20);

/// One descriptor of a chain to submit: a buffer in guest memory.
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

/// The driver side of one split virtqueue.
pub struct VirtQueue {
    pub index: usize,
    pub size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    pub kick: EventFd,
    pub call: EventFd,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
    data_base: u64,
    data_next: u64,
}

impl VirtQueue {
    /// Allocate `len` bytes (8-aligned) in this queue's data area.
    pub fn alloc(&mut self, len: usize) -> u64 {
        let a = self.data_next;
        self.data_next += ((len as u64) + 7) & !7;
        assert!(
            self.data_next <= self.data_base + DATA_STRIDE,
            "test data area full"
        );
        a
    }

    /// Forget every data buffer (all earlier requests must be complete).
    pub fn reset_data(&mut self) {
        self.data_next = self.data_base;
    }

    /// Descriptors in flight are never reused before completion: the harness allocates them
    /// round-robin and a queue never has more than `size` in flight.
    fn alloc_desc(&mut self) -> u16 {
        let d = self.next_desc;
        self.next_desc = (self.next_desc + 1) % self.size;
        d
    }

    pub fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = self.desc + 16 * u64::from(i);
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&raw, GuestAddress(at)).unwrap();
    }

    /// Write a chain into the descriptor table; returns its head index (not yet published).
    pub fn build_chain(&mut self, mem: &GuestMemoryMmap, descs: &[Desc]) -> u16 {
        let ids: Vec<u16> = descs.iter().map(|_| self.alloc_desc()).collect();
        for (k, d) in descs.iter().enumerate() {
            let mut flags = if d.write { VRING_DESC_F_WRITE } else { 0 };
            let next = if k + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT;
                ids[k + 1]
            } else {
                0
            };
            self.write_desc(mem, ids[k], d.addr, d.len, flags, next);
        }
        ids[0]
    }

    /// Publish head index `head` in the available ring (without kicking).
    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head.to_le(), GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        mem.write_obj(self.avail_idx.to_le(), GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// Overwrite the available index (to test a corrupt ring).
    pub fn set_avail_idx_raw(&self, mem: &GuestMemoryMmap, idx: u16) {
        mem.write_obj(idx.to_le(), GuestAddress(self.avail + 2))
            .unwrap();
    }

    pub fn kick(&self) {
        self.kick.write(1).unwrap();
    }

    /// Ask for an interrupt when the used index passes `self.used_seen` (EVENT_IDX's
    /// `used_event`; ignored by the device without EVENT_IDX).
    fn arm_used_event(&self, mem: &GuestMemoryMmap) {
        let at = self.avail + 4 + 2 * u64::from(self.size);
        mem.write_obj(self.used_seen.to_le(), GuestAddress(at))
            .unwrap();
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }

    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        u16::from_le(mem.read_obj(GuestAddress(self.used + 2)).unwrap())
    }

    /// Wait for the next used element: (head, len), and whether the call eventfd fired.
    pub fn wait_used(&mut self, mem: &GuestMemoryMmap) -> (u16, u32, bool) {
        self.try_wait_used(mem, TIMEOUT)
            .unwrap_or_else(|| panic!("queue {}: no completion within {TIMEOUT:?}", self.index))
    }

    pub fn try_wait_used(
        &mut self,
        mem: &GuestMemoryMmap,
        timeout: Duration,
    ) -> Option<(u16, u32, bool)> {
        // The driver's algorithm: arm used_event, look at the used index, and only then sleep
        // on the call eventfd, without polling: a device that fails to signal a completion the
        // driver asked for makes this time out.
        let start = Instant::now();
        let mut signalled = false;
        loop {
            self.arm_used_event(mem);
            if self.used_idx(mem) != self.used_seen {
                break;
            }
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return None;
            }
            if wait_readable(self.call.as_raw_fd(), left.as_millis().max(1) as i32)
                && self.call.read().is_ok()
            {
                signalled = true;
            }
        }
        // Drain a pending interrupt for this element.
        if wait_readable(self.call.as_raw_fd(), 0) && self.call.read().is_ok() {
            signalled = true;
        }
        let slot = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
        let id: u32 = u32::from_le(mem.read_obj(GuestAddress(slot)).unwrap());
        let len: u32 = u32::from_le(mem.read_obj(GuestAddress(slot + 4)).unwrap());
        self.used_seen = self.used_seen.wrapping_add(1);
        // Like a driver re-enabling callbacks: ask for an interrupt on the next completion.
        self.arm_used_event(mem);
        Some((id as u16, len, signalled))
    }

    /// Wait up to `timeout` for the call eventfd (the device stores the used index before it
    /// signals, so a completion can be visible a moment before its interrupt).
    pub fn wait_signal(&self, timeout: Duration) -> bool {
        wait_readable(self.call.as_raw_fd(), timeout.as_millis() as i32) && self.call.read().is_ok()
    }
}

fn wait_readable(fd: i32, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, bounded timeout.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

/// A connected frontend with its guest memory and queues.
pub struct Vmm {
    pub fe: Frontend,
    pub mem: GuestMemoryMmap,
    pub queues: Vec<VirtQueue>,
    pub features: u64,
    pub protocol: VhostUserProtocolFeatures,
    /// Where the writable part of the last chain built by [`Vmm::submit`] starts.
    pub last_reply_addr: u64,
    /// The DAX window, when connected with [`Vmm::connect_dax`].
    pub dax: Option<DaxView>,
    _memfd: File,
}

/// The VMM's side of a DAX window: an address range reserved PROT_NONE, into which SHMEM_MAP
/// maps the daemon's fd (read-only or read-write) and SHMEM_UNMAP puts PROT_NONE back. It
/// enforces the spec's rules: a map must not overlap a live mapping, an unmap must match one
/// exactly.
pub struct DaxView {
    pub base: usize,
    pub size: u64,
    pub maps: Arc<Mutex<BTreeMap<u64, (u64, bool)>>>,
    /// Map and unmap requests served (map, unmap), and refused ones.
    pub counts: Arc<Mutex<(u64, u64, u64)>>,
}

struct DaxHandler {
    base: usize,
    size: u64,
    maps: Arc<Mutex<BTreeMap<u64, (u64, bool)>>>,
    counts: Arc<Mutex<(u64, u64, u64)>>,
}

impl DaxHandler {
    fn refuse(&self, why: &str) -> io::Result<u64> {
        self.counts.lock().unwrap().2 += 1;
        eprintln!("test VMM: refusing a window request: {why}");
        Err(io::Error::other(why.to_string()))
    }
}

impl VhostUserFrontendReqHandler for DaxHandler {
    fn shmem_map(&self, req: &VhostUserMMap, fd: &dyn AsRawFd) -> io::Result<u64> {
        let (shmid, off, len, fd_off, flags) =
            (req.shmid, req.shm_offset, req.len, req.fd_offset, req.flags);
        if shmid != 0 {
            return self.refuse("SHMEM_MAP of a region other than 0");
        }
        if off % 4096 != 0 || len % 4096 != 0 || off + len > self.size || fd_off % 4096 != 0 {
            return self.refuse("SHMEM_MAP unaligned or outside the window");
        }
        let mut maps = self.maps.lock().unwrap();
        if maps
            .iter()
            .any(|(&m, &(l, _))| m < off + len && m + l > off)
        {
            return self.refuse("SHMEM_MAP over a live mapping");
        }
        let write = flags & 1 != 0;
        let prot = libc::PROT_READ | if write { libc::PROT_WRITE } else { 0 };
        // SAFETY: MAP_FIXED inside the window reservation this handler owns.
        let p = unsafe {
            libc::mmap(
                (self.base + off as usize) as *mut libc::c_void,
                len as usize,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd.as_raw_fd(),
                fd_off as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return self.refuse("mmap failed");
        }
        maps.insert(off, (len, write));
        self.counts.lock().unwrap().0 += 1;
        Ok(0)
    }

    fn shmem_unmap(&self, req: &VhostUserMMap) -> io::Result<u64> {
        let (off, len) = (req.shm_offset, req.len);
        let mut maps = self.maps.lock().unwrap();
        match maps.get(&off) {
            Some(&(l, _)) if l == len => {}
            _ => return self.refuse("SHMEM_UNMAP that matches no mapping"),
        }
        // SAFETY: MAP_FIXED inside the window reservation this handler owns.
        let p = unsafe {
            libc::mmap(
                (self.base + off as usize) as *mut libc::c_void,
                len as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        maps.remove(&off);
        self.counts.lock().unwrap().1 += 1;
        Ok(0)
    }
}

impl DaxView {
    fn new(size: u64) -> DaxView {
        // SAFETY: a fresh PROT_NONE reservation, never unmapped (tests are short-lived).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "reserve the DAX window");
        DaxView {
            base: p as usize,
            size,
            maps: Arc::new(Mutex::new(BTreeMap::new())),
            counts: Arc::new(Mutex::new((0, 0, 0))),
        }
    }

    /// Start serving backend requests; returns the socket end to hand to the daemon.
    fn serve(&self) -> std::os::unix::net::UnixStream {
        let h = Arc::new(DaxHandler {
            base: self.base,
            size: self.size,
            maps: self.maps.clone(),
            counts: self.counts.clone(),
        });
        let mut server = FrontendReqHandler::new(h).expect("backend request channel");
        server.set_reply_ack_flag(true);
        // SAFETY: dup of the handler's own socket; the duplicate is owned by the stream.
        let fd = unsafe { libc::dup(server.get_tx_raw_fd()) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor we own.
        let tx = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
        std::thread::spawn(move || {
            // Ends when the daemon closes its end.
            while server.handle_request().is_ok() {}
        });
        tx
    }

    /// Live mappings: window offset → (length, writable).
    pub fn mappings(&self) -> BTreeMap<u64, (u64, bool)> {
        self.maps.lock().unwrap().clone()
    }

    /// Is `[off, off + len)` inside one live mapping (writable if `write`)?
    pub fn mapped(&self, off: u64, len: u64, write: bool) -> bool {
        self.maps
            .lock()
            .unwrap()
            .iter()
            .any(|(&m, &(l, w))| m <= off && off + len <= m + l && (w || !write))
    }

    /// A guest load: `len` bytes at window offset `off` (must be mapped).
    pub fn load(&self, off: u64, len: usize) -> Vec<u8> {
        assert!(
            self.mapped(off, len as u64, false),
            "load from an unmapped window range"
        );
        let mut v = vec![0u8; len];
        // SAFETY: the range is inside a live mapping (checked above).
        unsafe {
            std::ptr::copy_nonoverlapping(
                (self.base + off as usize) as *const u8,
                v.as_mut_ptr(),
                len,
            )
        };
        v
    }

    /// A guest store at window offset `off` (must be mapped writable).
    pub fn store(&self, off: u64, data: &[u8]) {
        assert!(
            self.mapped(off, data.len() as u64, true),
            "store into a window range not mapped writable"
        );
        // SAFETY: the range is inside a live writable mapping (checked above).
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                (self.base + off as usize) as *mut u8,
                data.len(),
            )
        };
    }
}

pub fn memfd(size: usize) -> File {
    let name = c"vhost-ext4-test-guest";
    // SAFETY: a valid NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
    // SAFETY: a fresh fd we own.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size as u64).unwrap();
    f
}

impl Vmm {
    /// Connect to `socket`, negotiate (EVENT_IDX when `event_idx`), share memory, and set up
    /// `nqueues` queues (all of them enabled).
    pub fn connect(socket: &Path, nqueues: usize, event_idx: bool) -> Vmm {
        let fe = Frontend::connect(socket, nqueues as u64).expect("connect to the daemon");
        Vmm::setup(fe, nqueues, event_idx)
    }

    pub fn setup(fe: Frontend, nqueues: usize, event_idx: bool) -> Vmm {
        Vmm::setup_with_dax(fe, nqueues, event_idx, false)
    }

    /// Connect as a VMM that exposes a DAX window: it acks SHMEM (with BACKEND_REQ,
    /// BACKEND_SEND_FD and REPLY_ACK), asks GET_SHMEM_CONFIG and serves SHMEM_MAP/UNMAP into a
    /// window of its own ([`Vmm::dax`]).
    pub fn connect_dax(socket: &Path, nqueues: usize) -> Vmm {
        let fe = Frontend::connect(socket, nqueues as u64).expect("connect to the daemon");
        Vmm::setup_with_dax(fe, nqueues, false, true)
    }

    pub fn setup_with_dax(mut fe: Frontend, nqueues: usize, event_idx: bool, dax: bool) -> Vmm {
        fe.set_owner().unwrap();
        let offered = fe.get_features().unwrap();
        assert_ne!(offered & VIRTIO_F_VERSION_1, 0, "VERSION_1 offered");
        assert_ne!(
            offered & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
            0,
            "PROTOCOL_FEATURES offered"
        );
        let mut want = VIRTIO_F_VERSION_1 | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if event_idx {
            assert_ne!(offered & VIRTIO_RING_F_EVENT_IDX, 0, "EVENT_IDX offered");
            want |= VIRTIO_RING_F_EVENT_IDX;
        }
        // Device-specific feature bits (below 24) are all accepted.
        want |= offered & 0x00ff_ffff;
        let pf = fe.get_protocol_features().unwrap();
        let wanted_pf = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK;
        assert!(pf.contains(wanted_pf), "protocol features {pf:?}");
        let dax_pf = VhostUserProtocolFeatures::SHMEM
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::BACKEND_SEND_FD;
        let wanted_pf = if dax {
            assert!(
                pf.contains(dax_pf),
                "SHMEM protocol features offered: {pf:?}"
            );
            wanted_pf | dax_pf
        } else {
            wanted_pf
        };
        fe.set_protocol_features(wanted_pf).unwrap();
        let dax = dax.then(|| {
            let cfg = fe.get_shmem_config().expect("GET_SHMEM_CONFIG");
            assert_eq!(cfg.nregions, 1, "one shared memory region");
            let size = cfg.memory_sizes[0];
            assert!(size > 0, "region 0 has a size");
            let w = DaxView::new(size);
            let fd = w.serve();
            fe.set_backend_request_fd(&fd).expect("SET_BACKEND_REQ_FD");
            w
        });
        let qn = fe.get_queue_num().unwrap();
        assert!(qn as usize >= nqueues, "daemon offers {qn} queues");
        fe.set_features(want).unwrap();

        let file = memfd(MEM_SIZE);
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files(&[(
            GuestAddress(0),
            MEM_SIZE,
            Some(FileOffset::new(file.try_clone().unwrap(), 0)),
        )])
        .unwrap();
        let region = mem.find_region(GuestAddress(0)).unwrap();
        let hva = region.as_ptr() as u64;
        let info = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: hva,
            mmap_offset: 0,
            mmap_handle: file.as_raw_fd(),
        };
        fe.set_mem_table(&[info]).unwrap();

        let mut queues = Vec::new();
        for q in 0..nqueues {
            let base = RING_AREA + RING_STRIDE * q as u64;
            let size = QUEUE_SIZE;
            let desc = base;
            let avail = desc + 16 * u64::from(size);
            let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
            let vq = VirtQueue {
                index: q,
                size,
                desc,
                avail,
                used,
                kick: EventFd::new(EFD_NONBLOCK).unwrap(),
                call: EventFd::new(EFD_NONBLOCK).unwrap(),
                next_desc: 0,
                avail_idx: 0,
                used_seen: 0,
                data_base: DATA_AREA + DATA_STRIDE * q as u64,
                data_next: DATA_AREA + DATA_STRIDE * q as u64,
            };
            assert!(vq.data_base + DATA_STRIDE <= MEM_SIZE as u64);
            fe.set_vring_num(q, size).unwrap();
            fe.set_vring_addr(
                q,
                &VringConfigData {
                    queue_max_size: size,
                    queue_size: size,
                    flags: 0,
                    desc_table_addr: hva + desc,
                    used_ring_addr: hva + used,
                    avail_ring_addr: hva + avail,
                    log_addr: None,
                },
            )
            .unwrap();
            fe.set_vring_base(q, 0).unwrap();
            fe.set_vring_call(q, &vq.call).unwrap();
            fe.set_vring_kick(q, &vq.kick).unwrap();
            fe.set_vring_enable(q, true).unwrap();
            queues.push(vq);
        }
        Vmm {
            fe,
            mem,
            queues,
            features: want,
            protocol: wanted_pf,
            last_reply_addr: 0,
            dax,
            _memfd: file,
        }
    }

    pub fn config(&mut self, size: u32) -> Vec<u8> {
        let buf = vec![0u8; size as usize];
        let (_, payload) = self
            .fe
            .get_config(0, size, VhostUserConfigFlags::WRITABLE, &buf)
            .unwrap();
        payload
    }

    pub fn write(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// Place `request` in a readable buffer and `reply_room` bytes of writable buffer (split
    /// into `reply_parts` descriptors), submit on queue `q`, wait, and return (used len, reply
    /// bytes as written).
    pub fn roundtrip(&mut self, q: usize, request: &[u8], reply_room: usize) -> (u32, Vec<u8>) {
        let head = self.submit(q, &[request], reply_room, 1);
        self.kick(q);
        let (id, len, _) = self.queues[q].wait_used(&self.mem);
        assert_eq!(id, head, "completion for the chain we sent");
        let reply_at = self.last_reply_addr;
        let out = self.read(reply_at, (len as usize).min(reply_room));
        self.queues[q].reset_data();
        (len, out)
    }

    /// Write a chain: readable `parts` (one descriptor each), then `reply_room` writable bytes
    /// in `reply_parts` descriptors. Publishes it; does not kick. Returns the head.
    pub fn submit(
        &mut self,
        q: usize,
        parts: &[&[u8]],
        reply_room: usize,
        reply_parts: usize,
    ) -> u16 {
        let mut descs = Vec::new();
        for p in parts {
            let a = self.queues[q].alloc(p.len());
            self.write(a, p);
            descs.push(Desc {
                addr: a,
                len: p.len() as u32,
                write: false,
            });
        }
        let reply_at = self.queues[q].alloc(reply_room);
        self.write(reply_at, &vec![0xA5u8; reply_room]);
        self.last_reply_addr = reply_at;
        let n = reply_parts.max(1).min(reply_room.max(1));
        let mut off = 0usize;
        for k in 0..n {
            let len = if k + 1 == n {
                reply_room - off
            } else {
                reply_room / n
            };
            if len == 0 && reply_room == 0 {
                break;
            }
            descs.push(Desc {
                addr: reply_at + off as u64,
                len: len as u32,
                write: true,
            });
            off += len;
        }
        let head = self.queues[q].build_chain(&self.mem, &descs);
        self.queues[q].publish(&self.mem, head);
        head
    }

    pub fn kick(&self, q: usize) {
        self.queues[q].kick();
    }
}

/// The daemon under test: the built binary when it has the subcommand, else run in-process.
pub enum Daemon {
    Process(Child),
    Thread(
        Option<JoinHandle<Result<(), String>>>,
        vhost_ext4::vhost::Stopper,
    ),
}

impl Daemon {
    /// Wait for the daemon to end; Ok when it exited cleanly.
    pub fn wait(&mut self) -> Result<(), String> {
        let start = Instant::now();
        match self {
            Daemon::Process(child) => loop {
                if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
                    return if st.success() {
                        Ok(())
                    } else {
                        Err(format!("daemon exited with {st}"))
                    };
                }
                if start.elapsed() > TIMEOUT {
                    let _ = child.kill();
                    return Err("daemon did not exit".into());
                }
                std::thread::sleep(Duration::from_millis(20));
            },
            Daemon::Thread(handle, _) => {
                let h = handle.take().expect("waited twice");
                while !h.is_finished() {
                    if start.elapsed() > TIMEOUT {
                        return Err("daemon thread did not return".into());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                h.join().map_err(|_| "daemon thread panicked".to_string())?
            }
        }
    }

    /// Still serving?
    pub fn running(&mut self) -> bool {
        match self {
            Daemon::Process(c) => c.try_wait().ok().flatten().is_none(),
            Daemon::Thread(h, _) => h.as_ref().is_some_and(|h| !h.is_finished()),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        match self {
            Daemon::Process(c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
            Daemon::Thread(_, stop) => stop.stop(),
        }
    }
}

/// True when the built binary has the `SUB` subcommand (and VHOST_EXT4_TEST_INPROCESS is unset).
pub fn binary_has(sub: &str) -> bool {
    static FS: OnceLock<bool> = OnceLock::new();
    static BLK: OnceLock<bool> = OnceLock::new();
    let cell = if sub == "fs" { &FS } else { &BLK };
    *cell.get_or_init(|| {
        if std::env::var_os("VHOST_EXT4_TEST_INPROCESS").is_some() {
            return false;
        }
        Command::new(env!("CARGO_BIN_EXE_vhost-ext4"))
            .args([sub, "--help"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The daemon's log goes to the test output only when RUST_LOG is set.
fn child_stderr() -> Stdio {
    if std::env::var_os("RUST_LOG").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    }
}

/// Wait until `path` exists (the daemon listens) or the daemon died.
pub fn wait_for_socket(path: &Path, d: &mut Daemon) {
    let start = Instant::now();
    while !path.exists() {
        if !d.running() {
            let e = d.wait();
            panic!("daemon ended before listening: {e:?}");
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "socket {} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Log to the test output (RUST_LOG=debug cargo test -- --nocapture).
pub fn init_logging() {
    let _ = env_logger::builder().is_test(true).try_init();
}

/// Start `vhost-ext4 fs` on `image`, listening on `socket`.
pub fn start_fs(args: vhost_ext4::vhost::FsArgs) -> Daemon {
    init_logging();
    let socket = args.socket_path.clone();
    let mut d = if binary_has("fs") && args.fd.is_none() {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vhost-ext4"));
        cmd.arg("fs");
        if let Some(s) = &args.socket_path {
            cmd.arg("--socket-path").arg(s);
        }
        if let Some(i) = &args.image {
            cmd.arg("--image").arg(i);
        }
        if let Some(t) = &args.tag {
            cmd.arg("--tag").arg(t);
        }
        if let Some(n) = args.thread_pool_size {
            cmd.arg("--thread-pool-size").arg(n.to_string());
        }
        if args.readonly {
            cmd.arg("--readonly");
        }
        cmd.arg("--queues").arg(args.queues.to_string());
        cmd.arg("--cache-size").arg(args.cache_size.to_string());
        cmd.arg("--dax-window").arg(args.dax_window.to_string());
        Daemon::Process(
            cmd.stdin(Stdio::null())
                .stderr(child_stderr())
                .spawn()
                .expect("spawn vhost-ext4 fs"),
        )
    } else {
        let stop = vhost_ext4::vhost::Stopper::new();
        let s2 = stop.clone();
        let h = std::thread::spawn(move || vhost_ext4::vhost::serve_fs(args, &s2));
        Daemon::Thread(Some(h), stop)
    };
    if let Some(s) = socket {
        wait_for_socket(&s, &mut d);
    }
    d
}

/// Start `vhost-ext4 blk`.
pub fn start_blk(args: vhost_ext4::vhost::BlkArgs) -> Daemon {
    init_logging();
    let socket = args.socket_path.clone();
    let mut d = if binary_has("blk") && args.fd.is_none() {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vhost-ext4"));
        cmd.arg("blk");
        if let Some(s) = &args.socket_path {
            cmd.arg("--socket-path").arg(s);
        }
        if let Some(i) = &args.image {
            cmd.arg("--image").arg(i);
        }
        if args.readonly {
            cmd.arg("--readonly");
        }
        if let Some(s) = &args.serial {
            cmd.arg("--serial").arg(s);
        }
        if args.block_size != 512 {
            cmd.arg("--block-size").arg(args.block_size.to_string());
        }
        cmd.arg("--queues").arg(args.queues.to_string());
        Daemon::Process(
            cmd.stdin(Stdio::null())
                .stderr(child_stderr())
                .spawn()
                .expect("spawn vhost-ext4 blk"),
        )
    } else {
        let stop = vhost_ext4::vhost::Stopper::new();
        let s2 = stop.clone();
        let h = std::thread::spawn(move || vhost_ext4::vhost::serve_blk(args, &s2));
        Daemon::Thread(Some(h), stop)
    };
    if let Some(s) = socket {
        wait_for_socket(&s, &mut d);
    }
    d
}

/// Build an ext4 image of `size_mb` MiB from the directory `tree` with mke2fs.
pub fn mkfs(tree: &Path, img: &Path, size_mb: u32, extra: &[&str]) {
    let st = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4"])
        .args(extra)
        .arg("-d")
        .arg(tree)
        .arg(img)
        .arg(format!("{size_mb}M"))
        .stdout(Stdio::null())
        .status()
        .expect("run mke2fs");
    assert!(st.success(), "mke2fs failed");
}

pub fn socket_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
