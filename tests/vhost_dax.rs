//! The virtio-fs DAX window, with the test frontend playing a VMM that exposes one: it acks the
//! vhost-user SHMEM protocol feature, answers SHMEM_MAP / SHMEM_UNMAP by mapping the daemon's
//! fd into its own window (PROT_NONE where nothing is mapped), and loads and stores through it
//! as a guest would. What the window shows is checked against FUSE READ/WRITE on the same
//! daemon, and the image afterwards against `e2fsck -fn` and the kernel's ext4.

mod common;
mod vhost_common;

use common::{KernelMount, assert_fsck_clean, debugfs, require_root_and_tools, run_any};
use std::path::PathBuf;
use std::process::Command;
use vhost_common::*;
use vhost_ext4::vhost::FsArgs;

const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;
const GETATTR: u32 = 3;
const SETATTR: u32 = 4;
const READ: u32 = 15;
const WRITE: u32 = 16;
const STATFS: u32 = 17;
const FSYNC: u32 = 20;
const INIT: u32 = 26;
const MKDIR: u32 = 9;
const CREATE: u32 = 35;
const FALLOCATE: u32 = 43;
const SETUPMAPPING: u32 = 48;
const REMOVEMAPPING: u32 = 49;
const ROOT: u64 = 1;
const MAP_R: u64 = 2;
const MAP_W: u64 = 1;
const MAP_ALIGNMENT: u32 = 1 << 26;
const CHUNK: u64 = 2 << 20;
const WINDOW: u64 = 16 << 20;
const EINVAL: i32 = -libc::EINVAL;

fn msg(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&((IN_HEADER + body.len()) as u32).to_le_bytes());
    m.extend_from_slice(&opcode.to_le_bytes());
    m.extend_from_slice(&unique.to_le_bytes());
    m.extend_from_slice(&nodeid.to_le_bytes());
    m.extend_from_slice(&[0u8; 8]); // uid, gid
    m.extend_from_slice(&1u32.to_le_bytes()); // pid
    m.extend_from_slice(&[0u8; 4]);
    m.extend_from_slice(body);
    m
}

fn le(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

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

/// A FUSE session over vhost-user-fs with a DAX window.
struct Guest {
    vmm: Vmm,
    unique: u64,
    /// The INIT reply's flags and map_alignment.
    init_flags: u32,
    init_flags2: u32,
    map_alignment: u16,
}

impl Guest {
    fn call(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> (i32, Vec<u8>) {
        self.unique += 1;
        let u = self.unique;
        let (used, reply) = self
            .vmm
            .roundtrip(1, &msg(opcode, u, nodeid, body), 1 << 20);
        assert!(used as usize >= OUT_HEADER, "{opcode}: short reply");
        assert_eq!(u64_at(&reply, 8), u, "unique echoed");
        let err = i32::from_le_bytes(reply[4..8].try_into().unwrap());
        (err, reply[OUT_HEADER..used as usize].to_vec())
    }

    fn ok(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> Vec<u8> {
        let (e, p) = self.call(opcode, nodeid, body);
        assert_eq!(e, 0, "opcode {opcode} on node {nodeid} failed");
        p
    }

    fn start(vmm: Vmm) -> Guest {
        let mut g = Guest {
            vmm,
            unique: 0,
            init_flags: 0,
            init_flags2: 0,
            map_alignment: 0,
        };
        g.init();
        g
    }

    /// FUSE INIT (again: the guest rebooted and mounts anew).
    fn init(&mut self) {
        let mut b = Vec::new();
        b.extend_from_slice(&7u32.to_le_bytes());
        b.extend_from_slice(&41u32.to_le_bytes());
        b.extend_from_slice(&(128u32 << 10).to_le_bytes());
        // ASYNC_READ | BIG_WRITES | MAX_PAGES | MAP_ALIGNMENT | INIT_EXT; flags2: HAS_INODE_DAX.
        let flags: u32 = 1 | 1 << 5 | 1 << 22 | MAP_ALIGNMENT | 1 << 30;
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&[0u8; 44]);
        let r = self.ok(INIT, 0, &b);
        self.init_flags = u32_at(&r, 12);
        self.map_alignment = u16::from_le_bytes(r[30..32].try_into().unwrap());
        self.init_flags2 = u32_at(&r, 32);
    }

    /// CREATE `name`: (node, file handle).
    fn create_open(&mut self, name: &str) -> (u64, u64) {
        let mut b = Vec::new();
        b.extend_from_slice(&(libc::O_RDWR as u32).to_le_bytes());
        b.extend_from_slice(&0o100644u32.to_le_bytes());
        b.extend_from_slice(&[0u8; 8]);
        b.extend_from_slice(name.as_bytes());
        b.push(0);
        let r = self.ok(CREATE, ROOT, &b);
        (u64_at(&r, 0), u64_at(&r, 128))
    }

    fn create(&mut self, name: &str) -> u64 {
        let mut b = Vec::new();
        b.extend_from_slice(&(libc::O_RDWR as u32).to_le_bytes());
        b.extend_from_slice(&0o100644u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(name.as_bytes());
        b.push(0);
        u64_at(&self.ok(CREATE, ROOT, &b), 0)
    }

    fn write(&mut self, node: u64, offset: u64, data: &[u8]) {
        let mut b = le(&[0, offset]);
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(&[0u8; 20]);
        b.extend_from_slice(data);
        let r = self.ok(WRITE, node, &b);
        assert_eq!(u32_at(&r, 0) as usize, data.len(), "whole write");
    }

    fn read(&mut self, node: u64, offset: u64, size: u32) -> Vec<u8> {
        let mut b = le(&[0, offset]);
        b.extend_from_slice(&size.to_le_bytes());
        b.extend_from_slice(&[0u8; 20]);
        self.ok(READ, node, &b)
    }

    fn truncate(&mut self, node: u64, size: u64) {
        let mut b = Vec::new();
        b.extend_from_slice(&8u32.to_le_bytes()); // FATTR_SIZE
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&le(&[0, size, 0, 0, 0, 0]));
        b.extend_from_slice(&[0u8; 32]);
        self.ok(SETATTR, node, &b);
    }

    fn size(&mut self, node: u64) -> u64 {
        u64_at(&self.ok(GETATTR, node, &[0u8; 16]), 16 + 8)
    }

    fn fsync(&mut self, node: u64) {
        self.ok(FSYNC, node, &[0u8; 16]);
    }

    fn fallocate(&mut self, node: u64, offset: u64, len: u64, mode: u32) -> i32 {
        let mut b = le(&[0, offset, len]);
        b.extend_from_slice(&mode.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        self.call(FALLOCATE, node, &b).0
    }

    /// Free blocks (statfs bfree).
    fn bfree(&mut self) -> u64 {
        u64_at(&self.ok(STATFS, ROOT, &[]), 8)
    }

    fn setup(&mut self, node: u64, foffset: u64, len: u64, flags: u64, moffset: u64) -> i32 {
        self.call(
            SETUPMAPPING,
            node,
            &le(&[u64::MAX, foffset, len, flags, moffset]),
        )
        .0
    }

    fn remove(&mut self, ranges: &[(u64, u64)]) -> i32 {
        let mut b = (ranges.len() as u32).to_le_bytes().to_vec();
        for &(m, l) in ranges {
            b.extend_from_slice(&le(&[m, l]));
        }
        self.call(REMOVEMAPPING, ROOT, &b).0
    }

    fn dax(&self) -> &DaxView {
        self.vmm.dax.as_ref().expect("a DAX window")
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    image: PathBuf,
}

impl Fixture {
    fn new(size_mb: u32, extra: &[&str]) -> Fixture {
        require_root_and_tools();
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        let image = dir.path().join("fs.img");
        mkfs(&tree, &image, size_mb, extra);
        Fixture { dir, image }
    }

    fn args(&self, window: u64) -> FsArgs {
        FsArgs {
            socket_path: Some(self.dir.path().join("fs.sock")),
            image: Some(self.image.clone()),
            dax_window: window,
            ..FsArgs::default()
        }
    }

    fn guest(&self) -> (Daemon, Guest) {
        let args = self.args(WINDOW);
        let sock = args.socket_path.clone().unwrap();
        let d = start_fs(args);
        let g = Guest::start(Vmm::connect_dax(&sock, 2));
        assert_ne!(g.init_flags & MAP_ALIGNMENT, 0, "INIT offers MAP_ALIGNMENT");
        (d, g)
    }

    /// Disconnect, wait for a clean exit, check the image with e2fsck and return a kernel
    /// mount of it.
    fn finish(&self, mut d: Daemon, g: Guest) -> KernelMount {
        drop(g);
        d.wait().expect("the daemon exits cleanly");
        assert_fsck_clean(&self.image);
        KernelMount::start(&self.image, &self.dir.path().join("kmnt"))
    }
}

/// Without a window, or with a frontend that does not ack SHMEM, nothing changes.
#[test]
fn dax_is_offered_only_when_the_frontend_takes_the_window() {
    let fx = Fixture::new(32, &[]);
    // A plain frontend (no SHMEM): INIT has no DAX and SETUPMAPPING is ENOSYS.
    let args = fx.args(WINDOW);
    let sock = args.socket_path.clone().unwrap();
    let mut d = start_fs(args);
    let mut g = Guest::start(Vmm::connect(&sock, 2, false));
    assert_eq!(
        g.init_flags & MAP_ALIGNMENT,
        0,
        "no MAP_ALIGNMENT without a window"
    );
    let f = g.create("f");
    g.write(f, 0, b"data");
    assert_eq!(g.setup(f, 0, CHUNK, MAP_R, 0), -libc::ENOSYS);
    assert_eq!(g.remove(&[(0, CHUNK)]), -libc::ENOSYS);
    drop(g);
    d.wait().unwrap();
    // --dax-window 0: the SHMEM protocol feature is not offered at all.
    let args = fx.args(0);
    let mut d = start_fs(args);
    let mut fe = vhost::vhost_user::Frontend::connect(&sock, 2).unwrap();
    use vhost::VhostBackend;
    use vhost::vhost_user::VhostUserFrontend;
    fe.set_owner().unwrap();
    fe.get_features().unwrap();
    let pf = fe.get_protocol_features().unwrap();
    assert!(
        !pf.contains(vhost::vhost_user::message::VhostUserProtocolFeatures::SHMEM),
        "{pf:?}"
    );
    drop(fe);
    d.wait().unwrap();
    // Give "f" the ext4 DAX flag (chattr +x), keeping its extents flag.
    let flags = debugfs(&fx.image, "stat /f");
    assert!(flags.contains("Flags: 0x80000"), "{flags}");
    let out = run_any(
        Command::new("debugfs")
            .args(["-w", "-R", "set_inode_field /f flags 0x2080000"])
            .arg(&fx.image),
    );
    assert!(out.status.success());
    // With the window: INIT announces 4 KiB alignment and per-inode DAX, and the DAX flag
    // shows as FUSE_ATTR_DAX.
    let (d, mut g) = fx.guest();
    assert_eq!(g.map_alignment, 12);
    assert_ne!(g.init_flags2 & 2, 0, "HAS_INODE_DAX");
    assert_eq!(g.dax().size, WINDOW, "GET_SHMEM_CONFIG reports the window");
    let mut name = b"f".to_vec();
    name.push(0);
    let e = g.ok(1, ROOT, &name);
    assert_eq!(
        u32_at(&e, 40 + 84) & 2,
        2,
        "FUSE_ATTR_DAX on the flagged file"
    );
    let mut name = b"plain".to_vec();
    name.push(0);
    let p = g.create("plain");
    let e = g.ok(1, ROOT, &name);
    assert_eq!(u64_at(&e, 0), p);
    assert_eq!(
        u32_at(&e, 40 + 84) & 2,
        0,
        "no FUSE_ATTR_DAX without the flag"
    );
    let km = fx.finish(d, g);
    km.unmount();
}

/// Data written by FUSE WRITE shows in READ mappings, data stored through WRITE mappings shows
/// in FUSE READ, and after REMOVEMAPPING + FSYNC (and a mapping still live at disconnect) it is
/// all in the image.
fn window_data_reaches_the_image(block_size: &str) {
    let fx = Fixture::new(64, &["-b", block_size]);
    let (d, mut g) = fx.guest();
    let f = g.create("file");
    let len = 5 * CHUNK as usize + 12345;
    let mut model = pattern(len, 1);
    g.write(f, 0, &model[..1 << 20]);
    for off in (1 << 20..len).step_by(1 << 20) {
        let end = (off + (1 << 20)).min(len);
        g.write(f, off as u64, &model[off..end]);
    }
    // READ mapping of chunk 0 at window slot 3: the guest sees what FUSE WRITE wrote.
    assert_eq!(g.setup(f, 0, CHUNK, MAP_R, 3 * CHUNK), 0);
    assert_eq!(
        g.dax().load(3 * CHUNK, CHUNK as usize),
        model[..CHUNK as usize]
    );
    // A later FUSE WRITE shows through the live mapping: one copy of the data.
    let later = pattern(5000, 2);
    g.write(f, 70_000, &later);
    model[70_000..75_000].copy_from_slice(&later);
    assert_eq!(g.dax().load(3 * CHUNK + 70_000, 5000), later);
    // WRITE mappings of chunks 1 and 5 (the last, partly past EOF).
    assert_eq!(g.setup(f, CHUNK, CHUNK, MAP_R | MAP_W, 0), 0);
    assert_eq!(g.setup(f, 5 * CHUNK, CHUNK, MAP_R | MAP_W, CHUNK), 0);
    let stores: [(u64, u64, usize); 4] = [
        (0, CHUNK, 4096),
        (100_003, CHUNK + 100_003, 70_000),
        (CHUNK - 10, 2 * CHUNK - 10, 10),
        (CHUNK, 5 * CHUNK, 12345),
    ];
    for (k, &(moff, foff, n)) in stores.iter().enumerate() {
        let data = pattern(n, 10 + k as u32);
        g.dax().store(moff, &data);
        model[foff as usize..foff as usize + n].copy_from_slice(&data);
    }
    // FUSE READ sees the stores at once.
    assert_eq!(
        g.read(f, CHUNK + 100_003, 70_000),
        model[(CHUNK + 100_003) as usize..(CHUNK + 170_003) as usize]
    );
    assert_eq!(g.read(f, 5 * CHUNK, 20_000), model[5 * CHUNK as usize..]);
    assert_eq!(g.size(f), len as u64, "window stores never move EOF");
    // Remove chunk 1's mapping and the read mapping; fsync.
    assert_eq!(g.remove(&[(0, CHUNK), (3 * CHUNK, CHUNK)]), 0);
    assert_eq!(g.dax().mappings().len(), 1);
    g.fsync(f);
    // Chunk 5 stays mapped: stores after the fsync are written back at disconnect.
    let tail = pattern(100, 99);
    g.dax().store(CHUNK + 12345 - 100, &tail);
    model[len - 100..].copy_from_slice(&tail);
    let counts = *g.dax().counts.lock().unwrap();
    assert_eq!(counts.2, 0, "the VMM refused no window request");
    let km = fx.finish(d, g);
    let got = std::fs::read(km.dir.join("file")).unwrap();
    assert_eq!(got.len(), model.len());
    assert!(got == model, "the kernel reads what the window wrote");
    km.unmount();
}

#[test]
fn dax_window_data_reaches_the_image() {
    window_data_reaches_the_image("4096");
}

#[test]
fn dax_window_data_reaches_a_1k_block_image() {
    window_data_reaches_the_image("1024");
}

/// Holes mapped for WRITE are reserved at SETUPMAPPING (statfs shows it) and become written
/// extents after writeback; with no room, SETUPMAPPING answers ENOSPC.
#[test]
fn dax_holes_are_reserved_at_setupmapping() {
    let fx = Fixture::new(32, &[]);
    let (d, mut g) = fx.guest();
    let f = g.create("sparse");
    g.truncate(f, 2 * CHUNK);
    let before = g.bfree();
    assert_eq!(g.setup(f, 0, CHUNK, MAP_R | MAP_W, 0), 0);
    let after = g.bfree();
    assert!(
        before - after >= CHUNK / 4096,
        "a writable mapping of a 2 MiB hole reserves it: {before} -> {after} free blocks"
    );
    // A read mapping of a hole reserves nothing.
    assert_eq!(g.setup(f, CHUNK, CHUNK, MAP_R, CHUNK), 0);
    assert_eq!(g.bfree(), after);
    assert_eq!(g.dax().load(CHUNK + 4096, 4096), vec![0u8; 4096]);
    let data = pattern(CHUNK as usize, 5);
    g.dax().store(0, &data);
    assert_eq!(g.remove(&[(0, CHUNK)]), 0);
    g.fsync(f);
    // A file larger than what is left: its writable mapping finds no room.
    let big = g.create("big");
    g.truncate(big, 64 * CHUNK);
    let mut refused = false;
    for c in 0..64 {
        match g.setup(
            big,
            c * CHUNK,
            CHUNK,
            MAP_R | MAP_W,
            2 * CHUNK + (c % 6) * CHUNK,
        ) {
            0 => {}
            e => {
                assert_eq!(e, -libc::ENOSPC, "chunk {c}");
                refused = true;
                break;
            }
        }
    }
    assert!(
        refused,
        "a 128 MiB hole cannot be reserved in a 32 MiB file system"
    );
    // Read mappings still work when space is short.
    assert_eq!(g.setup(big, 63 * CHUNK, CHUNK, MAP_R, 7 * CHUNK), 0);
    let km = fx.finish(d, g);
    let got = std::fs::read(km.dir.join("sparse")).unwrap();
    assert_eq!(&got[..CHUNK as usize], &data[..]);
    assert!(got[CHUNK as usize..].iter().all(|&b| b == 0));
    km.unmount();
    let ex = debugfs(&fx.image, "ex /sparse");
    assert!(
        !ex.contains("Uninit") && ex.lines().count() > 1,
        "the stored range is written extents:\n{ex}"
    );
}

/// A read-only mapping upgraded to writable (the guest resends SETUPMAPPING with WRITE) is
/// unmapped and mapped again; a truncate unmaps the window range over the pages it drops until
/// their blocks are freed, then maps it again (a Linux guest keeps using its mapping within the
/// new EOF, and after a regrow), the cut reading as zeros; a regrow reserves what comes inside
/// EOF; collapse unmaps for good.
#[test]
fn dax_upgrade_truncate_and_collapse_while_mapped() {
    let fx = Fixture::new(32, &[]);
    let (d, mut g) = fx.guest();
    let f = g.create("f");
    let mut model = pattern(3 * CHUNK as usize, 3);
    g.write(f, 0, &model[..1 << 20]);
    g.write(f, 1 << 20, &model[1 << 20..2 << 20]);
    g.write(f, 2 << 20, &model[2 << 20..3 << 20]);
    g.write(f, 3 << 20, &model[3 << 20..4 << 20]);
    g.write(f, 4 << 20, &model[4 << 20..5 << 20]);
    g.write(f, 5 << 20, &model[5 << 20..]);
    assert_eq!(g.setup(f, 0, CHUNK, MAP_R, 0), 0);
    assert!(!g.dax().mapped(0, 4096, true));
    assert_eq!(g.setup(f, 0, CHUNK, MAP_R | MAP_W, 0), 0);
    assert!(g.dax().mapped(0, CHUNK, true), "upgraded to writable");
    let (maps, unmaps, refused) = *g.dax().counts.lock().unwrap();
    assert_eq!(
        (maps, unmaps, refused),
        (2, 1, 0),
        "unmapped before remapping"
    );
    g.dax().store(10, b"upgraded");
    model[10..18].copy_from_slice(b"upgraded");
    // Truncate to 100 KiB + 5 while chunk 0 is mapped: unmapped while the blocks go, then
    // mapped again; the cut reads zero.
    let cut = 100 * 1024 + 5;
    g.truncate(f, cut);
    model.truncate(cut as usize);
    assert_eq!(
        *g.dax().counts.lock().unwrap(),
        (3, 2, 0),
        "unmapped during the truncate, mapped again after"
    );
    assert!(g.dax().mapped(0, CHUNK, true));
    assert_eq!(g.dax().load(cut, 4096 - 5), vec![0u8; 4096 - 5]);
    assert_eq!(g.dax().load(200 << 10, 4096), vec![0u8; 4096]);
    assert_eq!(g.dax().load(0, cut as usize), model);
    // The guest grows the file again and stores through its old mapping: the pages that came
    // inside EOF were reserved by the regrow (statfs shows it).
    let before = g.bfree();
    g.truncate(f, 1 << 20);
    let after = g.bfree();
    assert!(
        before - after >= ((1 << 20) - cut) / 4096,
        "the regrown range of a writable mapping is reserved: {before} -> {after}"
    );
    assert_eq!(
        g.dax().load(cut, 4096),
        vec![0u8; 4096],
        "zeros past the old EOF"
    );
    model.resize(1 << 20, 0);
    g.dax().store(512 << 10, b"after regrow");
    model[512 << 10..(512 << 10) + 12].copy_from_slice(b"after regrow");
    assert_eq!(g.read(f, 512 << 10, 12), b"after regrow");
    // Collapse (not sent by Linux guests, but legal FUSE): the window is unmapped first.
    assert_eq!(g.fallocate(f, 4096, 4096, 0x08), 0);
    model.drain(4096..8192);
    assert!(
        g.dax().mappings().is_empty(),
        "collapse unmapped the window"
    );
    assert_eq!(g.read(f, 0, 1 << 20), model);
    g.fsync(f);
    assert_eq!(g.dax().counts.lock().unwrap().2, 0);
    let km = fx.finish(d, g);
    assert!(std::fs::read(km.dir.join("f")).unwrap() == model);
    km.unmount();
}

/// Every malformed request gets EINVAL (or the errno of the file it names) and the daemon
/// carries on.
#[test]
fn dax_malformed_requests_get_einval() {
    let fx = Fixture::new(32, &[]);
    let (d, mut g) = fx.guest();
    let f = g.create("f");
    g.write(f, 0, &pattern(8192, 4));
    let rw = MAP_R | MAP_W;
    let bad_setups: &[(&str, u64, u64, u64, u64, i32)] = &[
        ("no flags", 0, CHUNK, 0, 0, EINVAL),
        ("write without read", 0, CHUNK, MAP_W, 0, EINVAL),
        ("unknown flag", 0, CHUNK, MAP_R | 4, 0, EINVAL),
        ("window offset unaligned", 0, CHUNK, MAP_R, 100, EINVAL),
        ("empty", 0, 0, MAP_R, 0, EINVAL),
        ("file offset unaligned", 17, 4096, MAP_R, 0, EINVAL),
        ("crosses a chunk", 4096, CHUNK, rw, 0, EINVAL),
        ("longer than a chunk", 0, 2 * CHUNK, MAP_R, 0, EINVAL),
        ("past the window", 0, CHUNK, MAP_R, WINDOW - 4096, EINVAL),
        (
            "window offset overflows",
            0,
            CHUNK,
            MAP_R,
            u64::MAX - 4095,
            EINVAL,
        ),
        (
            "file offset overflows",
            u64::MAX - 4095,
            8192,
            MAP_R,
            0,
            EINVAL,
        ),
    ];
    for &(what, foff, len, flags, moff, want) in bad_setups {
        assert_eq!(g.setup(f, foff, len, flags, moff), want, "{what}");
    }
    // Not a regular file.
    let mut b = 0o755u32.to_le_bytes().to_vec();
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(b"dir\0");
    let dir = u64_at(&g.ok(MKDIR, ROOT, &b), 0);
    assert_eq!(g.setup(dir, 0, CHUNK, MAP_R, 0), -libc::EISDIR);
    assert!(
        g.dax().mappings().is_empty(),
        "no refused request mapped anything"
    );
    // Two mappings, then removals that do not match them.
    assert_eq!(g.setup(f, 0, CHUNK, MAP_R, 0), 0);
    assert_eq!(g.setup(f, 0, 4096, MAP_R, 4 * CHUNK), 0);
    let bad_removes: &[(&str, &[(u64, u64)])] = &[
        ("unaligned", &[(100, 4096)]),
        ("empty", &[(0, 0)]),
        ("past the window", &[(WINDOW - 4096, 8192)]),
        ("overflows", &[(u64::MAX - 4095, 8192)]),
        ("overlapping entries", &[(0, CHUNK), (CHUNK - 4096, 8192)]),
        ("cuts a mapping", &[(0, 4096)]),
        ("cuts a mapping at its end", &[(CHUNK - 4096, CHUNK)]),
    ];
    for &(what, ranges) in bad_removes {
        assert_eq!(g.remove(ranges), EINVAL, "{what}");
    }
    assert_eq!(
        g.dax().mappings().len(),
        2,
        "refused removals unmapped nothing"
    );
    // A range with nothing mapped is fine; a range holding a whole mapping removes it.
    assert_eq!(g.remove(&[(6 * CHUNK, CHUNK)]), 0);
    assert_eq!(g.remove(&[(4 * CHUNK, CHUNK)]), 0);
    assert_eq!(g.dax().mappings().len(), 1);
    // A REMOVEMAPPING whose count disagrees with its length, and a huge count.
    for count in [3u32, 0x1_0001, u32::MAX] {
        let mut b = count.to_le_bytes().to_vec();
        b.extend_from_slice(&le(&[0, CHUNK]));
        assert_eq!(g.call(REMOVEMAPPING, ROOT, &b).0, EINVAL, "count {count}");
    }
    // No entries at all: nothing to do.
    assert_eq!(g.remove(&[]), 0);
    assert_eq!(g.dax().mappings().len(), 1);
    // A symlink, and a node that does not exist.
    let sym = u64_at(&g.ok(6, ROOT, b"sym\0f\0"), 0);
    assert_eq!(g.setup(sym, 0, CHUNK, MAP_R, 5 * CHUNK), EINVAL);
    // An unknown node: the answer every request naming it gets.
    let unknown = g.call(GETATTR, 999_999, &[0u8; 16]).0;
    assert!(unknown < 0);
    assert_eq!(g.setup(999_999, 0, CHUNK, MAP_R, 5 * CHUNK), unknown);
    // The directory again, named with its open handle (the handle is not what counts).
    let fh = u64_at(&g.ok(27, dir, &[0u8; 8]), 0);
    assert_eq!(
        g.call(SETUPMAPPING, dir, &le(&[fh, 0, CHUNK, MAP_R, 5 * CHUNK]))
            .0,
        -libc::EISDIR
    );
    assert_eq!(g.dax().mappings().len(), 1);
    // A short SETUPMAPPING.
    assert_eq!(g.call(SETUPMAPPING, f, &le(&[0, 0, CHUNK])).0, EINVAL);
    assert_eq!(
        g.dax().counts.lock().unwrap().2,
        0,
        "the VMM refused nothing"
    );
    assert_eq!(
        g.read(f, 0, 8192),
        pattern(8192, 4),
        "the daemon carries on"
    );
    // A new INIT (the guest rebooted): every mapping is dropped; the window still works.
    g.init();
    assert_ne!(g.init_flags & MAP_ALIGNMENT, 0);
    assert!(
        g.dax().mappings().is_empty(),
        "a new session drops the old mappings"
    );
    assert_eq!(g.setup(f, 0, CHUNK, MAP_R, 0), 0);
    let km = fx.finish(d, g);
    km.unmount();
}

/// The daemon killed with SIGKILL after stores through the window and an FSYNC: nothing
/// fsynced is lost once the log is replayed.
#[test]
fn dax_crash_after_fsync_loses_nothing() {
    let fx = Fixture::new(32, &[]);
    assert!(
        binary_has("fs"),
        "this test kills the daemon process: build the vhost-ext4 binary"
    );
    let (mut d, mut g) = fx.guest();
    let f = g.create("crash");
    g.truncate(f, 3 * CHUNK);
    let mut model = vec![0u8; 3 * CHUNK as usize];
    assert_eq!(g.setup(f, 0, CHUNK, MAP_R | MAP_W, 0), 0);
    assert_eq!(g.setup(f, 2 * CHUNK, CHUNK, MAP_R | MAP_W, CHUNK), 0);
    let a = pattern(CHUNK as usize, 21);
    let b = pattern(300_000, 22);
    g.dax().store(0, &a);
    model[..CHUNK as usize].copy_from_slice(&a);
    g.fsync(f);
    // Stores after a writeback cleaned the pages: still mapped, they count as dirty, and the
    // next fsync writes them back.
    g.dax().store(CHUNK + 5000, &b);
    g.dax().store(4096, b"second store");
    model[2 * CHUNK as usize + 5000..2 * CHUNK as usize + 305_000].copy_from_slice(&b);
    model[4096..4108].copy_from_slice(b"second store");
    g.fsync(f);
    let Daemon::Process(child) = &mut d else {
        panic!("the daemon runs as a process");
    };
    child.kill().unwrap();
    child.wait().unwrap();
    drop(g);
    let out = run_any(Command::new("e2fsck").args(["-fy"]).arg(&fx.image));
    assert!(
        out.status.code().is_some_and(|c| c <= 1),
        "e2fsck replay: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_fsck_clean(&fx.image);
    let km = KernelMount::start(&fx.image, &fx.dir.path().join("kmnt"));
    let got = std::fs::read(km.dir.join("crash")).unwrap();
    assert!(got == model, "fsynced window stores survive the kill");
    km.unmount();
}

/// Punching a hole in a mapped range shows zeros through the window and leaves a hole on disk;
/// freeing a file a window still maps (a guest that sends FORGET without REMOVEMAPPING) unmaps
/// it first.
#[test]
fn dax_punch_and_free_while_mapped() {
    let fx = Fixture::new(32, &[]);
    let (d, mut g) = fx.guest();
    let f = g.create("punched");
    let mut model = pattern(CHUNK as usize, 8);
    g.write(f, 0, &model[..1 << 20]);
    g.write(f, 1 << 20, &model[1 << 20..]);
    g.fsync(f);
    assert_eq!(g.setup(f, 0, CHUNK, MAP_R | MAP_W, 0), 0);
    // PUNCH_HOLE | KEEP_SIZE of [64 KiB, 192 KiB): unmapped while the blocks go, then mapped
    // again.
    let (maps, unmaps, _) = *g.dax().counts.lock().unwrap();
    assert_eq!(g.fallocate(f, 64 << 10, 128 << 10, 0x3), 0);
    assert_eq!(
        *g.dax().counts.lock().unwrap(),
        (maps + 1, unmaps + 1, 0),
        "the punch unmapped the range first"
    );
    assert!(g.dax().mapped(0, CHUNK, true));
    model[64 << 10..192 << 10].fill(0);
    assert_eq!(g.dax().load(64 << 10, 128 << 10), vec![0u8; 128 << 10]);
    assert_eq!(g.read(f, 0, 512 << 10), model[..512 << 10]);
    g.dax().store(4096, b"still mapped");
    model[4096..4108].copy_from_slice(b"still mapped");
    g.fsync(f);
    // The mapped-again range holds reservations for the punched blocks (the guest may store
    // there); nothing was stored, so the unmap gives them back and the hole stays.
    let punched = g.bfree();
    assert_eq!(g.remove(&[(0, CHUNK)]), 0);
    g.fsync(f);
    assert!(
        g.bfree() >= punched + (128 << 10) / 4096,
        "unused reservations go back at the unmap: {punched} -> {}",
        g.bfree()
    );

    // A file mapped twice (one chunk in two slots), unlinked, released and forgotten.
    let (victim, fh) = g.create_open("victim");
    g.write(victim, 0, &pattern(1 << 20, 9));
    assert_eq!(g.setup(victim, 0, CHUNK, MAP_R | MAP_W, 2 * CHUNK), 0);
    assert_eq!(g.setup(victim, 0, CHUNK, MAP_R, 3 * CHUNK), 0);
    g.ok(10, ROOT, b"victim\0"); // UNLINK
    let mut rel = fh.to_le_bytes().to_vec();
    rel.extend_from_slice(&[0u8; 16]);
    g.ok(18, victim, &rel); // RELEASE
    assert_eq!(
        g.dax().mappings().len(),
        2,
        "an open or looked-up file keeps its mappings"
    );
    g.unique += 1;
    let forget = msg(2, g.unique, victim, &1u64.to_le_bytes());
    let (used, _) = g.vmm.roundtrip(0, &forget, 0);
    assert_eq!(used, 0);
    let start = std::time::Instant::now();
    while !g.dax().mappings().is_empty() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "the freed file's mappings were never unmapped: {:?}",
            g.dax().mappings()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(
        g.dax().counts.lock().unwrap().2,
        0,
        "the VMM refused nothing"
    );
    let km = fx.finish(d, g);
    let path = km.dir.join("punched");
    assert!(std::fs::read(&path).unwrap() == model);
    let file = std::fs::File::open(&path).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: lseek on an open descriptor.
    let hole = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_HOLE) };
    assert_eq!(hole, 64 << 10, "the punched range stays a hole on disk");
    drop(file);
    assert!(!km.dir.join("victim").exists());
    km.unmount();
}

/// Mappings past EOF, as a Linux guest makes them (a 2 MiB range from a page inside the file;
/// a file truncated meanwhile by someone else leaves it wholly past EOF): a READ mapping shows
/// zeros, a WRITE mapping reserves nothing past EOF; when the file grows, what comes inside EOF
/// is reserved, and the guest's stores there reach the image.
#[test]
fn dax_mappings_past_eof() {
    let fx = Fixture::new(32, &[]);
    let (d, mut g) = fx.guest();
    let f = g.create("f");
    let mut model = pattern(8192, 30);
    g.write(f, 0, &model);
    g.fsync(f);
    assert_eq!(g.setup(f, 3 * CHUNK, CHUNK, MAP_R, 0), 0);
    assert_eq!(g.dax().load(4096, 4096), vec![0u8; 4096]);
    let before = g.bfree();
    assert_eq!(g.setup(f, 2 * CHUNK, CHUNK, MAP_R | MAP_W, CHUNK), 0);
    assert_eq!(g.setup(f, 0, CHUNK, MAP_R | MAP_W, 2 * CHUNK), 0);
    assert_eq!(g.bfree(), before, "nothing past EOF is reserved");
    assert_eq!(g.size(f), 8192, "mappings never move EOF");
    // The file grows into the mapped chunks: they are reserved now.
    let grown = 2 * CHUNK + 100_000;
    g.truncate(f, grown);
    let after = g.bfree();
    assert!(
        before - after >= (CHUNK - 8192 + 100_000) / 4096,
        "what came inside EOF of the writable mappings is reserved: {before} -> {after}"
    );
    model.resize(grown as usize, 0);
    let a = pattern(5000, 31);
    let b = pattern(90_000, 32);
    g.dax().store(2 * CHUNK + 100_000, &a);
    g.dax().store(CHUNK + 10_000, &b);
    model[100_000..105_000].copy_from_slice(&a);
    model[(2 * CHUNK + 10_000) as usize..(2 * CHUNK + 100_000) as usize].copy_from_slice(&b);
    assert_eq!(g.read(f, 2 * CHUNK + 10_000, 90_000), b);
    assert_eq!(g.remove(&[(0, 3 * CHUNK)]), 0);
    g.fsync(f);
    assert_eq!(
        g.dax().counts.lock().unwrap().2,
        0,
        "the VMM refused nothing"
    );
    let km = fx.finish(d, g);
    assert!(std::fs::read(km.dir.join("f")).unwrap() == model);
    km.unmount();
}
