//! The daemon seen from a VMM: a vhost-user frontend (tests/vhost_common) drives `vhost-ext4 fs`
//! and `vhost-ext4 blk` over their sockets, with memfd guest memory and hand-laid virtqueues.
//! Uses the built binary once it has the subcommands, otherwise runs the daemon in-process
//! (set VHOST_EXT4_TEST_INPROCESS=1 to force that).

mod vhost_common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vhost_common::*;
use vhost_ext4::vhost::{BlkArgs, FsArgs};

// ---------------------------------------------------------------------------------------------
// FUSE wire format, written independently of the crate's own encoder.

const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;
const LOOKUP: u32 = 1;
const FORGET: u32 = 2;
const GETATTR: u32 = 3;
const OPEN: u32 = 14;
const READ: u32 = 15;
const STATFS: u32 = 17;
const RELEASE: u32 = 18;
const INIT: u32 = 26;
const OPENDIR: u32 = 27;
const READDIR: u32 = 28;
const RELEASEDIR: u32 = 29;
const READLINK: u32 = 5;
const ROOT: u64 = 1;
const MAX_READ: usize = 1 << 20;

fn msg(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let len = (IN_HEADER + body.len()) as u32;
    let mut m = Vec::new();
    m.extend_from_slice(&len.to_le_bytes());
    m.extend_from_slice(&opcode.to_le_bytes());
    m.extend_from_slice(&unique.to_le_bytes());
    m.extend_from_slice(&nodeid.to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes()); // uid
    m.extend_from_slice(&0u32.to_le_bytes()); // gid
    m.extend_from_slice(&1u32.to_le_bytes()); // pid
    m.extend_from_slice(&0u16.to_le_bytes()); // total_extlen
    m.extend_from_slice(&0u16.to_le_bytes());
    m.extend_from_slice(body);
    m
}

fn init_msg(unique: u64) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&7u32.to_le_bytes());
    b.extend_from_slice(&41u32.to_le_bytes());
    b.extend_from_slice(&(128u32 << 10).to_le_bytes());
    // ASYNC_READ | BIG_WRITES | DO_READDIRPLUS | MAX_PAGES | INIT_EXT
    let flags: u32 = 1 | 1 << 5 | 1 << 13 | 1 << 22 | 1 << 30;
    b.extend_from_slice(&flags.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // flags2
    b.extend_from_slice(&[0u8; 44]);
    msg(INIT, unique, 0, &b)
}

fn name_msg(op: u32, unique: u64, parent: u64, name: &str) -> Vec<u8> {
    let mut b = name.as_bytes().to_vec();
    b.push(0);
    msg(op, unique, parent, &b)
}

fn getattr_msg(unique: u64, node: u64) -> Vec<u8> {
    msg(GETATTR, unique, node, &[0u8; 16])
}

fn open_msg(op: u32, unique: u64, node: u64) -> Vec<u8> {
    msg(op, unique, node, &[0u8; 8])
}

fn read_msg(op: u32, unique: u64, node: u64, fh: u64, offset: u64, size: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&fh.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    msg(op, unique, node, &b)
}

fn release_msg(op: u32, unique: u64, node: u64, fh: u64) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&fh.to_le_bytes());
    b.extend_from_slice(&[0u8; 16]);
    msg(op, unique, node, &b)
}

fn forget_msg(unique: u64, node: u64, nlookup: u64) -> Vec<u8> {
    msg(FORGET, unique, node, &nlookup.to_le_bytes())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Check a reply's header against the used length and `unique`; return (error, payload).
fn parse_reply(used: u32, reply: &[u8], unique: u64) -> (i32, Vec<u8>) {
    assert!(
        used as usize >= OUT_HEADER,
        "used length {used} cannot hold a reply"
    );
    let len = u32_at(reply, 0);
    let error = i32::from_le_bytes(reply[4..8].try_into().unwrap());
    assert_eq!(len, used, "out header len equals the used length");
    assert_eq!(u64_at(reply, 8), unique, "unique echoed");
    (error, reply[OUT_HEADER..used as usize].to_vec())
}

/// A FUSE session over one vhost-user-fs queue set.
struct Session {
    vmm: Vmm,
    unique: u64,
}

impl Session {
    fn next(&mut self) -> u64 {
        self.unique += 2;
        self.unique
    }

    /// Send on queue `q` with `room` writable bytes; returns (error, payload).
    fn call_on(&mut self, q: usize, m: &[u8], room: usize) -> (i32, Vec<u8>) {
        let unique = u64_at(m, 8);
        let (used, reply) = self.vmm.roundtrip(q, m, room);
        parse_reply(used, &reply, unique)
    }

    fn call(&mut self, m: &[u8], room: usize) -> (i32, Vec<u8>) {
        self.call_on(1, m, room)
    }

    fn init(&mut self) -> Vec<u8> {
        let u = self.next();
        let (err, out) = self.call(&init_msg(u), OUT_HEADER + 64);
        assert_eq!(err, 0, "INIT succeeds");
        assert_eq!(u32_at(&out, 0), 7, "major 7");
        assert!(u32_at(&out, 4) >= 31, "minor >= 31");
        out
    }

    /// LOOKUP → (nodeid, attr bytes).
    fn lookup(&mut self, parent: u64, name: &str) -> Result<(u64, Vec<u8>), i32> {
        let u = self.next();
        let (err, out) = self.call(&name_msg(LOOKUP, u, parent, name), OUT_HEADER + 128);
        if err != 0 {
            return Err(err);
        }
        assert_eq!(out.len(), 128, "fuse_entry_out");
        Ok((u64_at(&out, 0), out[40..128].to_vec()))
    }

    fn getattr(&mut self, node: u64) -> Vec<u8> {
        let u = self.next();
        let (err, out) = self.call(&getattr_msg(u, node), OUT_HEADER + 104);
        assert_eq!(err, 0, "GETATTR of node {node}");
        assert_eq!(out.len(), 104, "fuse_attr_out");
        out[16..].to_vec()
    }

    fn open(&mut self, op: u32, node: u64) -> u64 {
        let u = self.next();
        let (err, out) = self.call(&open_msg(op, u, node), OUT_HEADER + 16);
        assert_eq!(err, 0, "open of node {node}");
        u64_at(&out, 0)
    }

    fn read(&mut self, node: u64, fh: u64, offset: u64, size: u32) -> Vec<u8> {
        let u = self.next();
        let (err, out) = self.call(
            &read_msg(READ, u, node, fh, offset, size),
            OUT_HEADER + size as usize,
        );
        assert_eq!(err, 0, "READ");
        out
    }

    fn release(&mut self, op: u32, node: u64, fh: u64) {
        let u = self.next();
        let (err, _) = self.call(&release_msg(op, u, node, fh), OUT_HEADER);
        assert_eq!(err, 0);
    }

    fn readdir(&mut self, node: u64) -> BTreeSet<String> {
        let fh = self.open(OPENDIR, node);
        let mut names = BTreeSet::new();
        let mut off = 0u64;
        loop {
            let u = self.next();
            let (err, out) = self.call(
                &read_msg(READDIR, u, node, fh, off, 4096),
                OUT_HEADER + 4096,
            );
            assert_eq!(err, 0, "READDIR");
            if out.is_empty() {
                break;
            }
            let mut p = 0;
            while p + 24 <= out.len() {
                let next_off = u64_at(&out, p + 8);
                let namelen = u32_at(&out, p + 16) as usize;
                let name = String::from_utf8(out[p + 24..p + 24 + namelen].to_vec()).unwrap();
                names.insert(name);
                off = next_off;
                p += (24 + namelen + 7) & !7;
            }
        }
        self.release(RELEASEDIR, node, fh);
        names
    }

    /// The daemon still answers: GETATTR of the root works.
    fn alive(&mut self) {
        let attr = self.getattr(ROOT);
        assert_eq!(
            u32_at(&attr, 60) & 0o170000,
            0o040000,
            "root is a directory"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures.

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

const HELLO: &[u8] = b"hello from an ext4 image, through virtio-fs\n";
const BIG_LEN: usize = (3 << 20) / 2 + 1234;

struct Fixture {
    dir: tempfile::TempDir,
    image: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("sub/deeper")).unwrap();
        std::fs::write(tree.join("hello.txt"), HELLO).unwrap();
        std::fs::write(tree.join("big.bin"), pattern(BIG_LEN, 7)).unwrap();
        for i in 0..40 {
            std::fs::write(tree.join(format!("sub/file-{i:02}")), format!("{i}\n")).unwrap();
        }
        std::fs::write(tree.join("sub/deeper/leaf"), b"leaf").unwrap();
        std::os::unix::fs::symlink("hello.txt", tree.join("link")).unwrap();
        let image = dir.path().join("fs.img");
        mkfs(&tree, &image, 64, &[]);
        Fixture { dir, image }
    }

    fn socket(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn fs_args(&self, sock: &Path) -> FsArgs {
        FsArgs {
            socket_path: Some(sock.to_path_buf()),
            image: Some(self.image.clone()),
            tag: Some("testvol".into()),
            ..FsArgs::default()
        }
    }
}

fn fs_session(fx: &Fixture, args: FsArgs, event_idx: bool) -> (Daemon, Session) {
    let queues = 1 + args.queues;
    let sock = args.socket_path.clone().unwrap();
    let d = start_fs(args);
    let vmm = Vmm::connect(&sock, queues, event_idx);
    let _ = fx;
    (d, Session { vmm, unique: 0 })
}

/// Disconnect and check the daemon exits cleanly.
fn finish(mut d: Daemon, s: Session) {
    drop(s);
    d.wait()
        .expect("daemon exits cleanly after the frontend disconnects");
}

// ---------------------------------------------------------------------------------------------
// vhost-user-fs.

#[test]
fn fs_config_space_and_features() {
    let fx = Fixture::new();
    let sock = fx.socket("fs.sock");
    let mut args = fx.fs_args(&sock);
    args.queues = 3;
    let (d, mut s) = fs_session(&fx, args, true);
    let cfg = s.vmm.config(40);
    assert_eq!(&cfg[..7], b"testvol");
    assert!(cfg[7..36].iter().all(|&b| b == 0), "tag NUL padded");
    assert_eq!(u32_at(&cfg, 36), 3, "num_request_queues");
    // A frontend asking for more than the structure gets zeros past its end.
    let cfg = s.vmm.config(64);
    assert_eq!(cfg.len(), 64);
    assert!(cfg[40..].iter().all(|&b| b == 0));
    assert_ne!(s.vmm.features & VIRTIO_RING_F_EVENT_IDX, 0);
    s.init();
    s.alive();
    finish(d, s);
}

#[test]
fn fs_lookup_getattr_read_readdir() {
    let fx = Fixture::new();
    let sock = fx.socket("fs.sock");
    let (d, mut s) = fs_session(&fx, fx.fs_args(&sock), true);
    let init = s.init();
    let max_write = u32_at(&init, 20);
    assert!(max_write >= 4096, "max_write {max_write}");

    // Before anything else: an unknown name, answered with a negative entry (node 0) the
    // guest may cache.
    let (missing, _) = s.lookup(ROOT, "missing").unwrap();
    assert_eq!(missing, 0, "a negative entry");

    let (hello, attr) = s.lookup(ROOT, "hello.txt").unwrap();
    assert!(hello > 1);
    assert_eq!(u64_at(&attr, 8), HELLO.len() as u64, "size");
    assert_eq!(u32_at(&attr, 60) & 0o170000, 0o100000, "regular file");
    let attr2 = s.getattr(hello);
    assert_eq!(u64_at(&attr2, 0), u64_at(&attr, 0), "same inode");
    let fh = s.open(OPEN, hello);
    assert_eq!(s.read(hello, fh, 0, 4096), HELLO);
    assert_eq!(s.read(hello, fh, 6, 4), &HELLO[6..10]);
    assert!(s.read(hello, fh, 4096, 4096).is_empty(), "read past EOF");
    s.release(RELEASE, hello, fh);

    // A large file, read in maximal chunks across extent and chunk boundaries.
    let (big, battr) = s.lookup(ROOT, "big.bin").unwrap();
    assert_eq!(u64_at(&battr, 8), BIG_LEN as u64);
    let expect = pattern(BIG_LEN, 7);
    let fh = s.open(OPEN, big);
    let mut got = Vec::new();
    let mut off = 0u64;
    while (off as usize) < BIG_LEN {
        let chunk = s.read(big, fh, off, MAX_READ as u32);
        assert!(!chunk.is_empty());
        off += chunk.len() as u64;
        got.extend_from_slice(&chunk);
    }
    assert!(got == expect, "big.bin content");
    // Unaligned read straddling a block boundary.
    assert_eq!(s.read(big, fh, 4090, 100), &expect[4090..4190]);
    s.release(RELEASE, big, fh);

    let names = s.readdir(ROOT);
    for n in [
        ".",
        "..",
        "hello.txt",
        "big.bin",
        "sub",
        "link",
        "lost+found",
    ] {
        assert!(names.contains(n), "root lists {n}: {names:?}");
    }
    let (sub, _) = s.lookup(ROOT, "sub").unwrap();
    let names = s.readdir(sub);
    assert_eq!(names.len(), 2 + 40 + 1, "sub: {names:?}");
    let (deeper, _) = s.lookup(sub, "deeper").unwrap();
    let (leaf, lattr) = s.lookup(deeper, "leaf").unwrap();
    assert_eq!(u64_at(&lattr, 8), 4);
    let fh = s.open(OPEN, leaf);
    assert_eq!(s.read(leaf, fh, 0, 100), b"leaf");
    s.release(RELEASE, leaf, fh);

    let (link, _) = s.lookup(ROOT, "link").unwrap();
    let u = s.next();
    let (err, target) = s.call(&msg(READLINK, u, link, &[]), OUT_HEADER + 4096);
    assert_eq!(err, 0);
    assert_eq!(target, b"hello.txt");

    let u = s.next();
    let (err, st) = s.call(&msg(STATFS, u, ROOT, &[]), OUT_HEADER + 80);
    assert_eq!(err, 0);
    assert_eq!(st.len(), 80, "fuse_statfs_out");
    assert!(u64_at(&st, 0) > 0, "blocks");

    // FORGET on the high-priority queue: no reply, an empty used entry.
    let u = s.next();
    let (used, _) = s.vmm.roundtrip(0, &forget_msg(u, hello, 1), 0);
    assert_eq!(used, 0);
    s.alive();
    finish(d, s);
}

#[test]
fn fs_malformed_chains_never_stop_the_daemon() {
    let fx = Fixture::new();
    let sock = fx.socket("fs.sock");
    let (d, mut s) = fs_session(&fx, fx.fs_args(&sock), false);
    s.init();
    s.alive();
    let q = 1;

    // 1. No readable descriptor at all: nothing to answer, an empty used entry.
    let head = s.vmm.submit(q, &[], 64, 1);
    s.vmm.kick(q);
    let (id, len, _) = s.vmm.queues[q].wait_used(&s.vmm.mem);
    assert_eq!((id, len), (head, 0));
    s.vmm.queues[q].reset_data();
    s.alive();

    // 2. A request shorter than the FUSE header.
    let (used, _) = s.vmm.roundtrip(q, &[1u8; 20], 64);
    assert_eq!(used, 0);
    s.alive();

    // 3. The header claims more bytes than the readable part holds: EINVAL for that unique.
    let u = s.next();
    let mut m = getattr_msg(u, ROOT);
    m[0..4].copy_from_slice(&4000u32.to_le_bytes());
    let (err, _) = s.call(&m, 64);
    assert_eq!(err, -libc::EINVAL);
    // ... or fewer than a header.
    let u = s.next();
    let mut m = getattr_msg(u, ROOT);
    m[0..4].copy_from_slice(&8u32.to_le_bytes());
    let (err, _) = s.call(&m, 64);
    assert_eq!(err, -libc::EINVAL);
    // ... or absurdly many (never allocated).
    let u = s.next();
    let mut m = getattr_msg(u, ROOT);
    m.resize(256 << 10, 0);
    m[0..4].copy_from_slice(&(u32::MAX).to_le_bytes());
    let (err, _) = s.call(&m, 64);
    assert_eq!(err, -libc::EINVAL);
    s.alive();

    // 4. The header spread over several small readable descriptors is fine.
    let u = s.next();
    let m = getattr_msg(u, ROOT);
    let parts: Vec<&[u8]> = m.chunks(7).collect();
    let head = s.vmm.submit(q, &parts, OUT_HEADER + 104, 3);
    s.vmm.kick(q);
    let (id, len, _) = s.vmm.queues[q].wait_used(&s.vmm.mem);
    assert_eq!(id, head);
    let reply = s.vmm.read(s.vmm.last_reply_addr, len as usize);
    let (err, out) = parse_reply(len, &reply, u);
    assert_eq!((err, out.len()), (0, 104));
    s.vmm.queues[q].reset_data();

    // 5. A writable descriptor before the readable one: EINVAL (written to the writable part).
    let u = s.next();
    let m = getattr_msg(u, ROOT);
    let qv = &mut s.vmm.queues[q];
    let wr = qv.alloc(64);
    let rd = qv.alloc(m.len());
    s.vmm.write(rd, &m);
    let head = s.vmm.queues[q].build_chain(
        &s.vmm.mem,
        &[
            Desc {
                addr: wr,
                len: 64,
                write: true,
            },
            Desc {
                addr: rd,
                len: m.len() as u32,
                write: false,
            },
        ],
    );
    s.vmm.queues[q].publish(&s.vmm.mem, head);
    s.vmm.kick(q);
    let (id, len, _) = s.vmm.queues[q].wait_used(&s.vmm.mem);
    assert_eq!(id, head);
    let reply = s.vmm.read(wr, len as usize);
    assert_eq!(parse_reply(len, &reply, u).0, -libc::EINVAL);
    s.vmm.queues[q].reset_data();
    s.alive();

    // 6. Descriptors outside guest memory: readable → empty used entry; writable → empty too.
    let far = 1u64 << 40;
    let head = s.vmm.queues[q].build_chain(
        &s.vmm.mem,
        &[
            Desc {
                addr: far,
                len: 64,
                write: false,
            },
            Desc {
                addr: DATA_OK,
                len: 64,
                write: true,
            },
        ],
    );
    s.vmm.queues[q].publish(&s.vmm.mem, head);
    s.vmm.kick(q);
    let (id, len, _) = s.vmm.queues[q].wait_used(&s.vmm.mem);
    assert_eq!((id, len), (head, 0));
    let u = s.next();
    let m = getattr_msg(u, ROOT);
    let rd = s.vmm.queues[q].alloc(m.len());
    s.vmm.write(rd, &m);
    let head = s.vmm.queues[q].build_chain(
        &s.vmm.mem,
        &[
            Desc {
                addr: rd,
                len: m.len() as u32,
                write: false,
            },
            Desc {
                addr: (MEM_SIZE as u64) - 8,
                len: 200,
                write: true,
            },
        ],
    );
    s.vmm.queues[q].publish(&s.vmm.mem, head);
    s.vmm.kick(q);
    let (id, len, _) = s.vmm.queues[q].wait_used(&s.vmm.mem);
    assert_eq!((id, len), (head, 0));
    s.vmm.queues[q].reset_data();
    s.alive();

    // 7. A writable part too small for the reply: EIO in the 16 bytes we have; smaller: empty.
    let u = s.next();
    let (err, _) = s.call(&getattr_msg(u, ROOT), OUT_HEADER);
    assert_eq!(err, -libc::EIO);
    let u = s.next();
    let (used, _) = s.vmm.roundtrip(q, &getattr_msg(u, ROOT), 8);
    assert_eq!(used, 0);
    s.alive();

    // 8. A descriptor chain that loops on itself is cut at the queue size.
    let u = s.next();
    let m = getattr_msg(u, ROOT);
    let rd = s.vmm.queues[q].alloc(m.len());
    s.vmm.write(rd, &m);
    let slot = 200u16;
    s.vmm.queues[q].write_desc(
        &s.vmm.mem,
        slot,
        rd,
        m.len() as u32,
        VRING_DESC_F_NEXT,
        slot,
    );
    s.vmm.queues[q].publish(&s.vmm.mem, slot);
    s.vmm.kick(q);
    let (id, _len, _) = s.vmm.queues[q].wait_used(&s.vmm.mem);
    assert_eq!(id, slot);
    s.vmm.queues[q].reset_data();
    s.alive();

    // 9. An indirect descriptor pointing at garbage.
    let slot = 201u16;
    s.vmm.queues[q].write_desc(&s.vmm.mem, slot, far, 64, VRING_DESC_F_INDIRECT, 0);
    s.vmm.queues[q].publish(&s.vmm.mem, slot);
    s.vmm.kick(q);
    let (id, len, _) = s.vmm.queues[q].wait_used(&s.vmm.mem);
    assert_eq!((id, len), (slot, 0));
    s.alive();

    // 10. An unknown opcode: ENOSYS. A request before... (INIT was done) with garbage body:
    let u = s.next();
    let (err, _) = s.call(&msg(9999, u, ROOT, &[1, 2, 3]), 64);
    assert_eq!(err, -libc::ENOSYS);
    let u = s.next();
    let (err, _) = s.call(&msg(READ, u, ROOT, &[1, 2, 3]), 64);
    assert!(
        err == -libc::EINVAL || err == -libc::EIO,
        "short READ body: {err}"
    );
    s.alive();

    // 11. A head index beyond the queue: that entry is lost, the queue keeps working.
    s.vmm.queues[q].publish(&s.vmm.mem, 60000);
    s.vmm.kick(q);
    std::thread::sleep(Duration::from_millis(50));
    let u = s.next();
    let m = getattr_msg(u, ROOT);
    let head = s.vmm.submit(q, &[&m], OUT_HEADER + 104, 1);
    s.vmm.kick(q);
    let (id, len, _) = s.vmm.queues[q].wait_used(&s.vmm.mem);
    assert_eq!(id, head);
    assert_eq!(len as usize, OUT_HEADER + 104);
    s.vmm.queues[q].reset_data();
    finish(d, s);
}

/// A guest address inside the data area that no test allocation reaches.
const DATA_OK: u64 = (MEM_SIZE as u64) - 4096;

#[test]
fn fs_parallel_requests_on_several_queues_with_event_idx() {
    let fx = Fixture::new();
    let sock = fx.socket("fs.sock");
    let mut args = fx.fs_args(&sock);
    args.queues = 2;
    args.thread_pool_size = Some(4);
    let (d, mut s) = fs_session(&fx, args, true);
    s.init();
    let (big, _) = s.lookup(ROOT, "big.bin").unwrap();
    let fh = s.open(OPEN, big);
    let expect = pattern(BIG_LEN, 7);
    const N: usize = 48;
    const SZ: usize = 16 << 10;
    // Queue many READs on both request queues before kicking, then collect them all.
    let mut sent = Vec::new();
    for q in [1usize, 2] {
        for k in 0..N {
            let u = 1000 + (q * N + k) as u64 * 2;
            let off = ((q * N + k) * 7919 % (BIG_LEN - SZ)) as u64;
            let m = read_msg(READ, u, big, fh, off, SZ as u32);
            let head = s.vmm.submit(q, &[&m], OUT_HEADER + SZ, 2);
            sent.push((q, head, s.vmm.last_reply_addr, u, off));
        }
    }
    s.vmm.kick(1);
    s.vmm.kick(2);
    let mut signalled = 0;
    for q in [1usize, 2] {
        let mut done = std::collections::HashMap::new();
        for _ in 0..N {
            let (id, len, sig) = s.vmm.queues[q].wait_used(&s.vmm.mem);
            signalled += sig as usize;
            assert!(done.insert(id, len).is_none(), "chain {id} completed twice");
        }
        for &(sq, head, at, u, off) in sent.iter().filter(|e| e.0 == q) {
            let len = done[&head];
            let reply = s.vmm.read(at, len as usize);
            let (err, data) = parse_reply(len, &reply, u);
            assert_eq!(err, 0, "queue {sq}");
            assert!(
                data == expect[off as usize..off as usize + SZ],
                "READ at {off}"
            );
        }
        s.vmm.queues[q].reset_data();
    }
    assert!(signalled > 0, "the daemon signalled used buffers");
    // Nothing extra shows up.
    assert!(
        s.vmm.queues[1]
            .try_wait_used(&s.vmm.mem, Duration::from_millis(100))
            .is_none()
    );
    s.release(RELEASE, big, fh);
    finish(d, s);
}

#[test]
fn fs_interrupt_after_each_completion() {
    // Without a worker pool and with EVENT_IDX: every single request must raise the call fd
    // (the driver re-arms used_event before waiting).
    let fx = Fixture::new();
    let sock = fx.socket("fs.sock");
    let mut args = fx.fs_args(&sock);
    args.thread_pool_size = Some(0);
    let (d, mut s) = fs_session(&fx, args, true);
    s.init();
    for _ in 0..20 {
        let u = s.next();
        let m = getattr_msg(u, ROOT);
        let head = s.vmm.submit(1, &[&m], OUT_HEADER + 104, 1);
        s.vmm.kick(1);
        let (id, len, sig) = s.vmm.queues[1].wait_used(&s.vmm.mem);
        assert_eq!((id, len as usize), (head, OUT_HEADER + 104));
        assert!(
            sig || s.vmm.queues[1].wait_signal(Duration::from_secs(5)),
            "the call eventfd fired"
        );
        s.vmm.queues[1].reset_data();
    }
    finish(d, s);
}

#[test]
fn fs_stop_while_connected_and_fd_listener() {
    let fx = Fixture::new();
    // An inherited, already listening socket (--fd), served in-process.
    let path = fx.socket("inherited.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let fd = std::os::unix::io::IntoRawFd::into_raw_fd(listener);
    let args = FsArgs {
        socket_path: None,
        fd: Some(fd),
        ..fx.fs_args(&path)
    };
    let stop = vhost_ext4::vhost::Stopper::new();
    let s2 = stop.clone();
    let h = std::thread::spawn(move || vhost_ext4::vhost::serve_fs(args, &s2));
    let vmm = Vmm::connect(&path, 2, true);
    let mut s = Session { vmm, unique: 0 };
    s.init();
    s.alive();
    stop.stop();
    h.join()
        .unwrap()
        .expect("stopping while connected is a clean exit");
    drop(s);

    // A bogus fd is refused.
    let err = vhost_ext4::vhost::serve_fs(
        FsArgs {
            socket_path: None,
            fd: Some(0),
            ..fx.fs_args(&path)
        },
        &vhost_ext4::vhost::Stopper::new(),
    )
    .unwrap_err();
    assert!(
        err.contains("not a listening socket") || err.contains("not a Unix"),
        "{err}"
    );

    // Stopped before any frontend connects.
    let sock = fx.socket("idle.sock");
    let stop = vhost_ext4::vhost::Stopper::new();
    let s2 = stop.clone();
    let args = fx.fs_args(&sock);
    let h = std::thread::spawn(move || vhost_ext4::vhost::serve_fs(args, &s2));
    while !sock.exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.stop();
    h.join()
        .unwrap()
        .expect("stopping an idle daemon is a clean exit");
}

#[test]
fn sigterm_stops_the_daemon_cleanly() {
    if !binary_has("fs") {
        eprintln!("skipped: the binary has no `fs` subcommand yet");
        return;
    }
    let fx = Fixture::new();
    let sigterm = |d: &Daemon| {
        let Daemon::Process(c) = d else {
            unreachable!()
        };
        // SAFETY: signalling our own child process.
        assert_eq!(unsafe { libc::kill(c.id() as i32, libc::SIGTERM) }, 0);
    };
    // While a frontend is connected.
    let sock = fx.socket("fs.sock");
    let (mut d, mut s) = fs_session(&fx, fx.fs_args(&sock), true);
    s.init();
    s.alive();
    sigterm(&d);
    d.wait().expect("SIGTERM while connected: exit status 0");
    drop(s);
    // While waiting for a frontend: the socket file goes away too.
    let sock = fx.socket("idle.sock");
    let mut d = start_fs(fx.fs_args(&sock));
    sigterm(&d);
    d.wait().expect("SIGTERM while idle: exit status 0");
    assert!(!sock.exists(), "socket removed");
}

#[test]
fn capabilities_and_bad_arguments() {
    let fs = vhost_ext4::vhost::fs_capabilities();
    assert!(fs.contains("\"type\": \"fs\""), "{fs}");
    let blk = vhost_ext4::vhost::blk_capabilities();
    assert!(blk.contains("\"type\": \"block\""), "{blk}");
    if binary_has("fs") {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vhost-ext4"))
            .args(["fs", "--print-capabilities"])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), fs);
    }
    let fx = Fixture::new();
    let stop = vhost_ext4::vhost::Stopper::new();
    let sock = fx.socket("x.sock");
    let long_tag = FsArgs {
        tag: Some("x".repeat(37)),
        ..fx.fs_args(&sock)
    };
    assert!(
        vhost_ext4::vhost::serve_fs(long_tag, &stop)
            .unwrap_err()
            .contains("tag")
    );
    let no_queues = FsArgs {
        queues: 0,
        ..fx.fs_args(&sock)
    };
    assert!(vhost_ext4::vhost::serve_fs(no_queues, &stop).is_err());
    let no_socket = FsArgs {
        socket_path: None,
        ..fx.fs_args(&sock)
    };
    assert!(
        vhost_ext4::vhost::serve_fs(no_socket, &stop)
            .unwrap_err()
            .contains("socket")
    );
    let not_ext4 = FsArgs {
        image: Some(fx.socket("junk")),
        ..fx.fs_args(&sock)
    };
    std::fs::write(fx.socket("junk"), vec![0u8; 1 << 20]).unwrap();
    assert!(vhost_ext4::vhost::serve_fs(not_ext4, &stop).is_err());
    assert!(
        !sock.exists(),
        "no socket is created when the image cannot be served"
    );
}

// ---------------------------------------------------------------------------------------------
// vhost-user-blk.

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
const BLK_F_RO: u64 = 1 << 5;
const BLK_F_DISCARD: u64 = 1 << 13;
const BLK_F_WRITE_ZEROES: u64 = 1 << 14;
const BLK_F_FLUSH: u64 = 1 << 9;

fn outhdr(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&kind.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

fn segment(sector: u64, sectors: u32, flags: u32) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&sector.to_le_bytes());
    s.extend_from_slice(&sectors.to_le_bytes());
    s.extend_from_slice(&flags.to_le_bytes());
    s
}

/// One block request: readable `parts`, `room` writable data bytes plus the status byte.
/// Returns (status, data read back, used length).
fn blk_req(vmm: &mut Vmm, q: usize, parts: &[&[u8]], room: usize) -> (u8, Vec<u8>, u32) {
    let head = vmm.submit(q, parts, room + 1, 1);
    vmm.kick(q);
    let (id, len, _) = vmm.queues[q].wait_used(&vmm.mem);
    assert_eq!(id, head);
    let out = vmm.read(vmm.last_reply_addr, room + 1);
    vmm.queues[q].reset_data();
    (out[room], out[..room].to_vec(), len)
}

fn blk_fixture() -> (tempfile::TempDir, PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let data = pattern(8 << 20, 3);
    std::fs::write(&img, &data).unwrap();
    (dir, img, data)
}

fn blk_args(dir: &Path, img: &Path, readonly: bool) -> BlkArgs {
    BlkArgs {
        socket_path: Some(dir.join("blk.sock")),
        image: Some(img.to_path_buf()),
        readonly,
        serial: Some("VHOSTEXT4-SERIAL".into()),
        queues: 2,
        ..BlkArgs::default()
    }
}

#[test]
fn blk_reads_sectors_and_identifies() {
    let (dir, img, data) = blk_fixture();
    let mut d = start_blk(blk_args(dir.path(), &img, true));
    let mut vmm = Vmm::connect(&dir.path().join("blk.sock"), 2, true);
    assert_ne!(
        vmm.features & BLK_F_RO,
        0,
        "read-only export offers VIRTIO_BLK_F_RO"
    );
    assert_ne!(vmm.features & BLK_F_FLUSH, 0);
    assert_eq!(vmm.features & (BLK_F_DISCARD | BLK_F_WRITE_ZEROES), 0);
    let cfg = vmm.config(60);
    assert_eq!(u64_at(&cfg, 0), (8 << 20) / 512, "capacity in sectors");
    assert_eq!(u32_at(&cfg, 20), 512, "blk_size");
    assert_eq!(u16::from_le_bytes([cfg[34], cfg[35]]), 2, "num_queues");
    assert!(u32_at(&cfg, 12) >= 1, "seg_max");

    for (q, sector, len) in [
        (0, 0u64, 512usize),
        (1, 1, 4096),
        (0, 2047, 65536),
        (1, 16383, 512),
    ] {
        let (st, got, used) = blk_req(&mut vmm, q, &[&outhdr(T_IN, sector)], len);
        assert_eq!(st, S_OK);
        assert_eq!(used as usize, len + 1, "used = data + status");
        let at = sector as usize * 512;
        assert!(got == data[at..at + len], "sector {sector}");
    }
    // The last sector, then one past it (and a range crossing the end).
    let (st, _, _) = blk_req(&mut vmm, 0, &[&outhdr(T_IN, 16384)], 512);
    assert_eq!(st, S_IOERR);
    let (st, _, _) = blk_req(&mut vmm, 0, &[&outhdr(T_IN, 16383)], 1024);
    assert_eq!(st, S_IOERR);
    let (st, _, _) = blk_req(&mut vmm, 0, &[&outhdr(T_IN, u64::MAX)], 512);
    assert_eq!(st, S_IOERR, "sector overflow");
    let (st, _, _) = blk_req(&mut vmm, 0, &[&outhdr(T_IN, 0)], 100);
    assert_eq!(st, S_IOERR, "not a whole sector");

    let (st, id, _) = blk_req(&mut vmm, 1, &[&outhdr(T_GET_ID, 0)], 20);
    assert_eq!(st, S_OK);
    assert_eq!(&id[..16], b"VHOSTEXT4-SERIAL");
    assert!(id[16..].iter().all(|&b| b == 0));

    // Writes, discards and zeroing are refused on a read-only export.
    let (st, _, _) = blk_req(&mut vmm, 0, &[&outhdr(T_OUT, 0), &[0u8; 512]], 0);
    assert_eq!(st, S_IOERR);
    let (st, _, _) = blk_req(
        &mut vmm,
        0,
        &[&outhdr(T_WRITE_ZEROES, 0), &segment(0, 8, 0)],
        0,
    );
    assert_eq!(st, S_UNSUPP, "WRITE_ZEROES not negotiated");
    let (st, _, _) = blk_req(&mut vmm, 0, &[&outhdr(T_FLUSH, 0)], 0);
    assert_eq!(st, S_OK);
    let (st, _, _) = blk_req(&mut vmm, 0, &[&outhdr(77, 0)], 0);
    assert_eq!(st, S_UNSUPP);
    // Malformed: header cut short; no writable byte at all.
    let (st, _, _) = blk_req(&mut vmm, 0, &[&[0u8; 7]], 0);
    assert_eq!(st, S_IOERR);
    let (used, _) = vmm.roundtrip(0, &outhdr(T_IN, 0), 0);
    assert_eq!(used, 0);
    let (st, _, _) = blk_req(&mut vmm, 1, &[&outhdr(T_IN, 0)], 512);
    assert_eq!(st, S_OK, "still serving");
    drop(vmm);
    d.wait().expect("clean exit");
    assert!(std::fs::read(&img).unwrap() == data, "image untouched");
}

#[test]
fn blk_writes_discards_and_zeroes() {
    let (dir, img, mut data) = blk_fixture();
    let mut d = start_blk(blk_args(dir.path(), &img, false));
    let mut vmm = Vmm::connect(&dir.path().join("blk.sock"), 2, false);
    assert_eq!(vmm.features & BLK_F_RO, 0);
    assert_ne!(vmm.features & BLK_F_WRITE_ZEROES, 0);
    assert_ne!(vmm.features & BLK_F_DISCARD, 0);

    let payload = pattern(3 * 4096, 99);
    let parts: Vec<&[u8]> = payload.chunks(4096).collect();
    let mut all: Vec<&[u8]> = vec![];
    let hdr = outhdr(T_OUT, 100);
    all.push(&hdr);
    all.extend(parts);
    let (st, _, used) = blk_req(&mut vmm, 1, &all, 0);
    assert_eq!((st, used), (S_OK, 1));
    data[100 * 512..100 * 512 + payload.len()].copy_from_slice(&payload);
    let (st, got, _) = blk_req(&mut vmm, 0, &[&outhdr(T_IN, 100)], payload.len());
    assert_eq!(st, S_OK);
    assert!(got == payload);

    let (st, _, _) = blk_req(
        &mut vmm,
        0,
        &[
            &outhdr(T_WRITE_ZEROES, 0),
            &segment(200, 16, 0),
            &segment(5000, 1, 1),
        ],
        0,
    );
    assert_eq!(st, S_OK);
    data[200 * 512..216 * 512].fill(0);
    data[5000 * 512..5001 * 512].fill(0);
    let (st, _, _) = blk_req(
        &mut vmm,
        0,
        &[&outhdr(T_DISCARD, 0), &segment(300, 8, 0)],
        0,
    );
    assert_eq!(st, S_OK);
    let (st, _, _) = blk_req(
        &mut vmm,
        0,
        &[&outhdr(T_DISCARD, 0), &segment(300, 8, 1)],
        0,
    );
    assert_eq!(st, S_UNSUPP, "unmap flag on DISCARD");
    let (st, _, _) = blk_req(
        &mut vmm,
        0,
        &[&outhdr(T_WRITE_ZEROES, 0), &segment(16380, 8, 0)],
        0,
    );
    assert_eq!(st, S_IOERR, "segment past the end");
    let (st, _, _) = blk_req(&mut vmm, 0, &[&outhdr(T_OUT, 16384), &[1u8; 512]], 0);
    assert_eq!(st, S_IOERR, "write past the end");
    let (st, _, _) = blk_req(&mut vmm, 0, &[&outhdr(T_FLUSH, 0)], 0);
    assert_eq!(st, S_OK);
    drop(vmm);
    d.wait().expect("clean exit");
    assert!(
        std::fs::read(&img).unwrap() == data,
        "image holds exactly what was written"
    );
}

#[test]
fn blk_4k_logical_blocks() {
    let (dir, img, data) = blk_fixture();
    let args = BlkArgs {
        block_size: 4096,
        queues: 1,
        ..blk_args(dir.path(), &img, true)
    };
    let mut d = start_blk(args);
    let mut vmm = Vmm::connect(&dir.path().join("blk.sock"), 1, true);
    let cfg = vmm.config(60);
    assert_eq!(u32_at(&cfg, 20), 4096, "blk_size");
    let (st, got, _) = blk_req(&mut vmm, 0, &[&outhdr(T_IN, 8)], 8192);
    assert_eq!(st, S_OK);
    assert!(got == data[4096..4096 + 8192]);
    let (st, _, _) = blk_req(&mut vmm, 0, &[&outhdr(T_IN, 1)], 4096);
    assert_eq!(st, S_IOERR, "not aligned to the logical block");
    let (st, _, _) = blk_req(&mut vmm, 0, &[&outhdr(T_IN, 8)], 512);
    assert_eq!(st, S_IOERR, "not a whole logical block");
    drop(vmm);
    d.wait().expect("clean exit");
}

#[test]
fn fs_and_blk_never_serve_one_image_at_once() {
    let fx = Fixture::new();
    // fs is serving: a writable blk export of the same image is refused.
    let sock = fx.socket("fs.sock");
    let mut fs = start_fs(fx.fs_args(&sock));
    let blk = BlkArgs {
        socket_path: Some(fx.socket("blk.sock")),
        image: Some(fx.image.clone()),
        ..BlkArgs::default()
    };
    let err =
        vhost_ext4::vhost::serve_blk(blk.clone(), &vhost_ext4::vhost::Stopper::new()).unwrap_err();
    assert!(err.contains("in use"), "{err}");
    assert!(!fx.socket("blk.sock").exists());
    let vmm = Vmm::connect(&sock, 2, true);
    drop(vmm);
    fs.wait().unwrap();

    // blk is exporting it writable: fs is refused.
    let mut b = start_blk(blk);
    let err = vhost_ext4::vhost::serve_fs(
        fx.fs_args(&fx.socket("fs2.sock")),
        &vhost_ext4::vhost::Stopper::new(),
    )
    .unwrap_err();
    assert!(err.contains("in use"), "{err}");
    let vmm = Vmm::connect(&fx.socket("blk.sock"), 1, false);
    drop(vmm);
    b.wait().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Benchmark (not a test: ignored; `bash ci/bench-virtio.sh` runs it and prints the table).

/// Large sequential WRITE and READ through `vhost-ext4 fs`, and IN/OUT through `vhost-ext4 blk`,
/// driven by this frontend with several requests in flight: the daemon's data path (ring,
/// request parsing, copies between guest memory and the page cache or the image). The binary
/// is `VHOST_EXT4_BENCH_BIN` (default: the one built here), so an older build can be timed the
/// same way. Sizes: `VHOST_EXT4_BENCH_MB` MiB (default 256), 1 MiB per request.
/// Lay out `descs` as a chain in descriptors reserved for request slot `k` of queue `q` and
/// publish it; the head. (A slot is reused only after its chain completed, so a request that
/// stays in flight long, behind many others, never has its descriptors overwritten.)
fn slot_chain(vmm: &mut Vmm, q: usize, k: usize, descs: &[Desc]) -> u16 {
    let base = (QUEUE_SIZE as usize / 2 + 4 * k) as u16;
    assert!(descs.len() <= 4 && usize::from(base) + 4 <= QUEUE_SIZE as usize);
    for (i, d) in descs.iter().enumerate() {
        let mut flags = if d.write { VRING_DESC_F_WRITE } else { 0 };
        if i + 1 < descs.len() {
            flags |= VRING_DESC_F_NEXT;
        }
        let i = i as u16;
        vmm.queues[q].write_desc(&vmm.mem, base + i, d.addr, d.len, flags, base + i + 1);
    }
    vmm.queues[q].publish(&vmm.mem, base);
    base
}

/// CPU seconds (user + system, all threads) process `pid` has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 / hz
}

#[test]
#[ignore]
fn bench_virtio_data_path() {
    use std::process::{Command, Stdio};
    use std::time::Instant;
    let bin = std::env::var("VHOST_EXT4_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_vhost-ext4").to_string());
    let mb: usize = std::env::var("VHOST_EXT4_BENCH_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    const DEPTH: usize = 4;
    const CHUNK: usize = 1 << 20;
    // Guest buffers above the harness's own areas: per slot a request/payload area and a reply
    // area, each a little over 1 MiB.
    const SLOT_BASE: u64 = 24 << 20;
    const SLOT: u64 = 2 << 20;
    let slot_req = |k: usize| SLOT_BASE + 2 * SLOT * k as u64;
    let slot_reply = |k: usize| slot_req(k) + SLOT;
    assert!(slot_reply(DEPTH) <= MEM_SIZE as u64);

    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("f"), b"").unwrap();
    let img = dir.path().join("img");
    mkfs(&tree, &img, (mb * 2 + 256) as u32, &["-b", "4096"]);
    let sock = dir.path().join("fs.sock");
    let mut daemon = Command::new(&bin)
        .args(["fs", "--queues", "1", "--cache-size", "4G", "--socket-path"])
        .arg(&sock)
        .arg("--image")
        .arg(&img)
        .stdin(Stdio::null())
        .spawn()
        .expect("start the daemon");
    let start = Instant::now();
    while !sock.exists() {
        assert!(start.elapsed() < TIMEOUT, "no socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut s = Session {
        vmm: Vmm::connect(&sock, 2, true),
        unique: 0,
    };
    s.init();
    let (node, _) = s.lookup(ROOT, "f").expect("lookup f");
    let u = s.next();
    let mut open = Vec::new();
    open.extend_from_slice(&(libc::O_RDWR as u32).to_le_bytes());
    open.extend_from_slice(&0u32.to_le_bytes());
    let (err, p) = s.call(&msg(OPEN, u, node, &open), OUT_HEADER + 16);
    assert_eq!(err, 0, "OPEN");
    let fh = u64_at(&p, 0);
    let payload = pattern(CHUNK, 7);
    for k in 0..DEPTH {
        s.vmm.write(slot_req(k) + 80, &payload);
    }

    // Keep DEPTH chains in flight on queue 1; `build(k, i)` lays out request i in slot k.
    let run = |s: &mut Session, build: &dyn Fn(&mut Session, usize, usize) -> Vec<Desc>| {
        let q = 1;
        let mut slot_of = std::collections::HashMap::new();
        let mut next = 0;
        let mut done = 0;
        let t = Instant::now();
        for k in 0..DEPTH.min(mb) {
            let descs = build(s, k, next);
            let head = slot_chain(&mut s.vmm, q, k, &descs);
            slot_of.insert(head, k);
            next += 1;
        }
        s.vmm.kick(q);
        while done < mb {
            let (head, len, _) = s.vmm.queues[q].wait_used(&s.vmm.mem);
            let k = slot_of.remove(&head).expect("a chain we sent");
            let reply = s.vmm.read(slot_reply(k), OUT_HEADER);
            assert_eq!(u32_at(&reply, 0), len, "reply length");
            assert_eq!(u32_at(&reply, 4), 0, "no error");
            done += 1;
            if next < mb {
                let descs = build(s, k, next);
                let head = slot_chain(&mut s.vmm, q, k, &descs);
                slot_of.insert(head, k);
                next += 1;
                s.vmm.kick(q);
            }
        }
        t.elapsed().as_secs_f64()
    };
    let write = |s: &mut Session, k: usize, i: usize| {
        let u = s.next();
        let mut b = Vec::new();
        b.extend_from_slice(&fh.to_le_bytes());
        b.extend_from_slice(&((i * CHUNK) as u64).to_le_bytes());
        b.extend_from_slice(&(CHUNK as u32).to_le_bytes());
        b.extend_from_slice(&[0u8; 20]);
        let mut m = msg(16, u, node, &b);
        let total = (m.len() + CHUNK) as u32;
        m[0..4].copy_from_slice(&total.to_le_bytes());
        s.vmm.write(slot_req(k), &m);
        vec![
            Desc {
                addr: slot_req(k),
                len: 80,
                write: false,
            },
            Desc {
                addr: slot_req(k) + 80,
                len: CHUNK as u32,
                write: false,
            },
            Desc {
                addr: slot_reply(k),
                len: 64,
                write: true,
            },
        ]
    };
    let read = |s: &mut Session, k: usize, i: usize| {
        let u = s.next();
        let m = read_msg(READ, u, node, fh, (i * CHUNK) as u64, CHUNK as u32);
        s.vmm.write(slot_req(k), &m);
        vec![
            Desc {
                addr: slot_req(k),
                len: m.len() as u32,
                write: false,
            },
            Desc {
                addr: slot_reply(k),
                len: (OUT_HEADER + CHUNK) as u32,
                write: true,
            },
        ]
    };
    let mbs = |secs: f64| mb as f64 / secs;
    let pid = daemon.id();
    let timed = |s: &mut Session, f: &dyn Fn(&mut Session, usize, usize) -> Vec<Desc>| {
        let c = cpu_seconds(pid);
        let t = run(s, f);
        (t, cpu_seconds(pid) - c)
    };
    let (w1, cw1) = timed(&mut s, &write);
    let (w2, cw2) = timed(&mut s, &write);
    let (r1, cr1) = timed(&mut s, &read);
    let (r2, cr2) = timed(&mut s, &read);
    let got = s.vmm.read(slot_reply(0) + OUT_HEADER as u64, CHUNK);
    assert!(got == payload, "READ returns what was written");
    println!(
        "bench-virtio fs: WRITE {mb} MiB new {:.0} MB/s ({cw1:.2} s daemon CPU), overwrite {:.0} MB/s ({cw2:.2} s); READ cached {:.0} MB/s ({cr1:.2} s), again {:.0} MB/s ({cr2:.2} s)",
        mbs(w1),
        mbs(w2),
        mbs(r1),
        mbs(r2)
    );
    drop(s);
    let _ = daemon.kill();
    let _ = daemon.wait();

    // blk: the same sizes as IN/OUT on a raw image (in the host's page cache after the first
    // pass).
    let raw = dir.path().join("raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len((mb * CHUNK) as u64)
        .unwrap();
    let sock = dir.path().join("blk.sock");
    let mut daemon = Command::new(&bin)
        .args(["blk", "--queues", "1", "--socket-path"])
        .arg(&sock)
        .arg("--image")
        .arg(&raw)
        .stdin(Stdio::null())
        .spawn()
        .expect("start the daemon");
    let start = Instant::now();
    while !sock.exists() {
        assert!(start.elapsed() < TIMEOUT, "no socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut vmm = Vmm::connect(&sock, 1, true);
    for k in 0..DEPTH {
        vmm.write(slot_req(k) + 16, &payload);
    }
    let blk_run = |vmm: &mut Vmm, kind: u32| {
        let lay = |vmm: &mut Vmm, k: usize, i: usize| {
            let mut h = Vec::new();
            h.extend_from_slice(&kind.to_le_bytes());
            h.extend_from_slice(&0u32.to_le_bytes());
            h.extend_from_slice(&((i * CHUNK / 512) as u64).to_le_bytes());
            vmm.write(slot_req(k), &h);
            let descs = if kind == T_OUT {
                vec![
                    Desc {
                        addr: slot_req(k),
                        len: 16 + CHUNK as u32,
                        write: false,
                    },
                    Desc {
                        addr: slot_reply(k),
                        len: 1,
                        write: true,
                    },
                ]
            } else {
                vec![
                    Desc {
                        addr: slot_req(k),
                        len: 16,
                        write: false,
                    },
                    Desc {
                        addr: slot_reply(k),
                        len: CHUNK as u32 + 1,
                        write: true,
                    },
                ]
            };
            slot_chain(vmm, 0, k, &descs)
        };
        let mut slot_of = std::collections::HashMap::new();
        let (mut next, mut done) = (0, 0);
        let t = Instant::now();
        for k in 0..DEPTH.min(mb) {
            slot_of.insert(lay(vmm, k, next), k);
            next += 1;
        }
        vmm.kick(0);
        while done < mb {
            let (head, _, _) = vmm.queues[0].wait_used(&vmm.mem);
            let k = slot_of.remove(&head).expect("a chain we sent");
            let status_at = slot_reply(k) + if kind == T_OUT { 0 } else { CHUNK as u64 };
            assert_eq!(vmm.read(status_at, 1)[0], S_OK, "blk status");
            done += 1;
            if next < mb {
                slot_of.insert(lay(vmm, k, next), k);
                next += 1;
                vmm.kick(0);
            }
        }
        t.elapsed().as_secs_f64()
    };
    let pid = daemon.id();
    let timed = |vmm: &mut Vmm, kind: u32| {
        let c = cpu_seconds(pid);
        let t = blk_run(vmm, kind);
        (t, cpu_seconds(pid) - c)
    };
    let (bw1, cbw1) = timed(&mut vmm, T_OUT);
    let (bw2, cbw2) = timed(&mut vmm, T_OUT);
    let (br1, cbr1) = timed(&mut vmm, T_IN);
    let (br2, cbr2) = timed(&mut vmm, T_IN);
    println!(
        "bench-virtio blk: OUT {mb} MiB {:.0} MB/s ({cbw1:.2} s daemon CPU), again {:.0} MB/s ({cbw2:.2} s); IN {:.0} MB/s ({cbr1:.2} s), again {:.0} MB/s ({cbr2:.2} s)",
        mbs(bw1),
        mbs(bw2),
        mbs(br1),
        mbs(br2)
    );
    drop(vmm);
    let _ = daemon.kill();
    let _ = daemon.wait();
}
