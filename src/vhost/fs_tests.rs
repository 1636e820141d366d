//! `serve_chain` on hand-built descriptor chains (virtio-queue's mock split queue): requests and
//! replies split across descriptors in every way a driver may lay them out, WRITE payloads copied
//! straight from the guest's buffers, READ data landing exactly in the guest's buffers, and
//! malformed or too-small chains answered with the right error.

use super::*;
use crate::blockdev::MemDevice;
use crate::fs::{Fs, MountOptions};
use crate::fuse::abi::{self, ReadIn, WriteIn, WriteOut};
use crate::fuse::request::build;
use crate::fuse::{DispatchOptions, Transport};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use vm_memory::{Bytes, GuestAddress};

const MEM_SIZE: usize = 16 << 20;
/// Guest buffers start here (the rings sit below).
const DATA: u64 = 0x10_0000;
const FILE_LEN: usize = 300_000;
const MAX_REQUEST: usize = 2 << 20;

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A guest with one request queue, and a writable file system holding `/data`.
struct Guest {
    mem: Arc<Mem>,
    fs: Arc<Fs>,
    dev: Arc<MemDevice>,
    d: Dispatcher,
    unique: u64,
    _dir: tempfile::TempDir,
}

/// One buffer of a chain: guest address, length, device-writable.
type Buf = (u64, u32, bool);

impl Guest {
    fn new() -> Guest {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("data"), pattern(FILE_LEN, 1)).unwrap();
        let img = dir.path().join("img");
        let st = Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-d"])
            .arg(&src)
            .arg(&img)
            .arg("32M")
            .stdout(Stdio::null())
            .status()
            .expect("mke2fs (e2fsprogs) is needed to build the test image");
        assert!(st.success(), "mke2fs failed");
        let dev = Arc::new(MemDevice::from_vec(std::fs::read(&img).unwrap()));
        let fs = Arc::new(
            Fs::mount(
                Arc::clone(&dev) as Arc<dyn crate::blockdev::BlockDevice>,
                &MountOptions::rw(),
            )
            .unwrap(),
        );
        let d = Dispatcher::new(
            Arc::clone(&fs),
            DispatchOptions::exclusive(Transport::Virtio),
        );
        let mem = Arc::new(Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap());
        let mut g = Guest {
            mem,
            fs,
            dev,
            d,
            unique: 0,
            _dir: dir,
        };
        let init = abi::InitIn {
            major: 7,
            minor: abi::KERNEL_MINOR_VERSION,
            max_readahead: 1 << 20,
            flags: abi::init_flags::MAX_PAGES | abi::init_flags::BIG_WRITES,
        };
        let mut body = Vec::new();
        init.encode(&mut body);
        let m = build(abi::opcode::INIT, g.next(), 0, &[&body]);
        let (err, _) = g.call(&m, 4096);
        assert_eq!(err, 0, "INIT");
        g
    }

    fn next(&mut self) -> u64 {
        self.unique += 1;
        self.unique
    }

    /// Serve one chain made of `bufs` (in order); the used length.
    fn serve(&self, bufs: &[Buf]) -> u32 {
        serve_chain(&self.d, &queue::mock_chain(&self.mem, bufs), MAX_REQUEST, 1)
    }

    fn put(&self, at: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(at)).unwrap();
    }

    fn get(&self, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }

    /// A request in one readable buffer, `room` writable bytes in one buffer: (error, payload).
    fn call(&mut self, msg: &[u8], room: u32) -> (i32, Vec<u8>) {
        let reply = DATA + 0x40_0000;
        self.put(DATA, msg);
        let used = self.serve(&[(DATA, msg.len() as u32, false), (reply, room, true)]);
        decode(&self.get(reply, used as usize), used)
    }

    fn lookup_open(&mut self, name: &str) -> (u64, u64) {
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        let m = build(abi::opcode::LOOKUP, self.next(), abi::ROOT_ID, &[&n]);
        let (err, p) = self.call(&m, 4096);
        assert_eq!(err, 0, "LOOKUP");
        let node = abi::EntryOut::decode(&p).unwrap().nodeid;
        let o = abi::OpenIn {
            flags: libc::O_RDWR as u32,
            open_flags: 0,
        };
        let mut body = Vec::new();
        o.encode(&mut body);
        let m = build(abi::opcode::OPEN, self.next(), node, &[&body]);
        let (err, p) = self.call(&m, 4096);
        assert_eq!(err, 0, "OPEN");
        (node, abi::OpenOut::decode(&p).unwrap().fh)
    }

    fn read_msg(&mut self, node: u64, fh: u64, offset: u64, size: u32) -> Vec<u8> {
        let r = ReadIn {
            fh,
            offset,
            size,
            read_flags: 0,
            lock_owner: 0,
            flags: 0,
            padding: 0,
        };
        let mut body = Vec::new();
        r.encode(&mut body);
        build(abi::opcode::READ, self.next(), node, &[&body])
    }

    /// The head (in header + write_in) of a WRITE of `len` bytes.
    fn write_head(&mut self, node: u64, fh: u64, offset: u64, len: usize) -> Vec<u8> {
        let w = WriteIn {
            fh,
            offset,
            size: len as u32,
            write_flags: 0,
            lock_owner: 0,
            flags: 0,
            padding: 0,
        };
        let mut body = Vec::new();
        w.encode(&mut body);
        let mut m = build(abi::opcode::WRITE, self.next(), node, &[&body]);
        let total = (m.len() + len) as u32;
        m[0..4].copy_from_slice(&total.to_le_bytes());
        m
    }

    /// READ through one readable and one writable buffer; the data.
    fn read(&mut self, node: u64, fh: u64, offset: u64, size: u32) -> Vec<u8> {
        let m = self.read_msg(node, fh, offset, size);
        let (err, data) = self.call(&m, size + 16);
        assert_eq!(err, 0, "READ");
        data
    }

    /// Unmount and check the image with e2fsck.
    fn finish(self) {
        drop(self.d);
        self.fs.shutdown().unwrap();
        let img = self._dir.path().join("after");
        std::fs::write(&img, self.dev.snapshot()).unwrap();
        let out = Command::new("e2fsck")
            .arg("-fn")
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "e2fsck: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// (error, payload) of a reply of `used` bytes, its header checked.
fn decode(reply: &[u8], used: u32) -> (i32, Vec<u8>) {
    assert!(used as usize >= 16, "a reply of {used} bytes");
    let h = abi::OutHeader::decode(reply).unwrap();
    assert_eq!(h.len, used, "the header's length is the used length");
    (h.error, reply[16..].to_vec())
}

#[test]
fn write_and_read_with_split_buffers() {
    let mut g = Guest::new();
    let (node, fh) = g.lookup_open("data");
    assert_eq!(g.read(node, fh, 0, FILE_LEN as u32), pattern(FILE_LEN, 1));

    // WRITE: header split inside the in header, payload starting in the head's descriptor and
    // spread over odd-sized descriptors.
    let data = pattern(200_003, 2);
    let off = 5_000u64;
    let mut msg = g.write_head(node, fh, off, data.len());
    msg.extend_from_slice(&data);
    g.put(DATA, &msg);
    let cuts = [0usize, 10, 80 + 100, 80 + 101, 80 + 70_000, msg.len()];
    let mut bufs: Vec<Buf> = cuts
        .windows(2)
        .map(|w| (DATA + w[0] as u64, (w[1] - w[0]) as u32, false))
        .collect();
    let reply = DATA + 0x40_0000;
    g.put(reply, &[0xA5; 64]);
    bufs.push((reply, 7, true));
    bufs.push((reply + 7, 57, true));
    let used = g.serve(&bufs);
    let (err, p) = decode(&g.get(reply, used as usize), used);
    assert_eq!((err, used as usize), (0, 16 + WriteOut::SIZE));
    assert_eq!(WriteOut::decode(&p).unwrap().size, data.len() as u32);
    assert_eq!(
        g.get(reply + u64::from(used), 64 - used as usize),
        vec![0xA5; 64 - used as usize]
    );

    let mut want = pattern(FILE_LEN, 1);
    want[off as usize..off as usize + data.len()].copy_from_slice(&data);

    // READ of N bytes into writable buffers split at odd places, the header's room split too:
    // exactly N bytes land, in order, and nothing past them.
    for (offset, size) in [(0u64, FILE_LEN), (4_095, 100_000), (7, 1)] {
        let m = g.read_msg(node, fh, offset, size as u32);
        g.put(DATA, &m);
        let room = 16 + size + 4096;
        g.put(reply, &vec![0xA5; room]);
        let cuts = [0usize, 3, 16, 16 + size / 3, room];
        let mut bufs: Vec<Buf> = vec![(DATA, m.len() as u32, false)];
        bufs.extend(
            cuts.windows(2)
                .filter(|w| w[1] > w[0])
                .map(|w| (reply + w[0] as u64, (w[1] - w[0]) as u32, true)),
        );
        let used = g.serve(&bufs);
        assert_eq!(used as usize, 16 + size, "READ {size} at {offset}");
        let (err, got) = decode(&g.get(reply, used as usize), used);
        assert_eq!(err, 0);
        assert!(
            got == want[offset as usize..offset as usize + size],
            "READ {size} at {offset}"
        );
        assert_eq!(g.get(reply + u64::from(used), 4096), vec![0xA5; 4096]);
    }
    // A READ past the end is short.
    let tail = g.read(node, fh, FILE_LEN as u64 - 10, 4096);
    assert_eq!(tail, want[FILE_LEN - 10..]);
    g.finish();
}

#[test]
fn too_small_and_malformed_chains_get_the_right_answer() {
    let mut g = Guest::new();
    let (node, fh) = g.lookup_open("data");
    let reply = DATA + 0x40_0000;

    // A READ reply larger than the writable room: EIO, and no data written.
    let m = g.read_msg(node, fh, 0, 4096);
    g.put(DATA, &m);
    g.put(reply, &[0xA5; 116]);
    let used = g.serve(&[(DATA, m.len() as u32, false), (reply, 116, true)]);
    let (err, _) = decode(&g.get(reply, used as usize), used);
    assert_eq!((err, used), (-libc::EIO, 16));
    assert_eq!(g.get(reply + 16, 100), vec![0xA5; 100]);

    // No room for even a header: the WRITE is not executed.
    let data = pattern(8192, 3);
    let mut msg = g.write_head(node, fh, 0, data.len());
    msg.extend_from_slice(&data);
    g.put(DATA, &msg);
    let used = g.serve(&[(DATA, msg.len() as u32, false), (reply, 8, true)]);
    assert_eq!(used, 0);
    assert_eq!(g.read(node, fh, 0, 8192), pattern(FILE_LEN, 1)[..8192]);

    // The header claims more than the readable buffers hold: EINVAL.
    g.put(DATA, &msg);
    let used = g.serve(&[(DATA, msg.len() as u32 - 1, false), (reply, 64, true)]);
    let (err, _) = decode(&g.get(reply, used as usize), used);
    assert_eq!(err, -libc::EINVAL);

    // write_in's size disagrees with the payload: EINVAL, nothing written.
    let mut bad = msg.clone();
    bad[40 + 16..40 + 20].copy_from_slice(&(data.len() as u32 - 1).to_le_bytes());
    g.put(DATA, &bad);
    let used = g.serve(&[(DATA, bad.len() as u32, false), (reply, 64, true)]);
    let (err, _) = decode(&g.get(reply, used as usize), used);
    assert_eq!(err, -libc::EINVAL);

    // Extensions longer than the payload: EINVAL.
    let mut bad = msg.clone();
    bad[36..38].copy_from_slice(&2000u16.to_le_bytes());
    g.put(DATA, &bad);
    let used = g.serve(&[(DATA, bad.len() as u32, false), (reply, 64, true)]);
    let (err, _) = decode(&g.get(reply, used as usize), used);
    assert_eq!(err, -libc::EINVAL);

    // A WRITE shorter than its head: EINVAL.
    let mut short = msg[..60].to_vec();
    short[0..4].copy_from_slice(&60u32.to_le_bytes());
    g.put(DATA, &short);
    let used = g.serve(&[(DATA, 60, false), (reply, 64, true)]);
    let (err, _) = decode(&g.get(reply, used as usize), used);
    assert_eq!(err, -libc::EINVAL);

    assert_eq!(g.read(node, fh, 0, 8192), pattern(FILE_LEN, 1)[..8192]);
    g.finish();
}

/// A guest rewriting its payload while the daemon copies it: the write lands (with whatever
/// bytes the guest had there at the time), nothing panics, and the image stays consistent.
#[test]
fn payload_changing_under_the_copy_is_harmless() {
    let mut g = Guest::new();
    let (node, fh) = g.lookup_open("data");
    let len = 256 << 10;
    let mut msg = g.write_head(node, fh, 0, len);
    msg.extend_from_slice(&vec![1u8; len]);
    g.put(DATA, &msg);
    let stop = Arc::new(AtomicBool::new(false));
    let scribbler = {
        let mem = Arc::clone(&g.mem);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut v = 2u8;
            while !stop.load(Ordering::Relaxed) {
                mem.write_slice(
                    &[v; 4096],
                    GuestAddress(DATA + 80 + 4096 * u64::from(v % 64)),
                )
                .unwrap();
                v = v.wrapping_add(1).max(2);
            }
        })
    };
    let reply = DATA + 0x40_0000;
    for _ in 0..20 {
        let used = g.serve(&[(DATA, msg.len() as u32, false), (reply, 64, true)]);
        let (err, p) = decode(&g.get(reply, used as usize), used);
        assert_eq!(err, 0);
        assert_eq!(WriteOut::decode(&p).unwrap().size, len as u32);
    }
    stop.store(true, Ordering::Relaxed);
    scribbler.join().unwrap();
    // Every page holds one value throughout or a mix of the guest's values; none is zero.
    let got = g.read(node, fh, 0, len as u32);
    assert!(got.iter().all(|&b| b != 0));
    g.finish();
}
