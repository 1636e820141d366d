//! DAX window benchmark: 4 KiB random reads and writes of a 256 MiB file through the window
//! (loads and stores into the mapped page cache) against FUSE READ/WRITE requests on the same
//! daemon (one virtqueue round trip each), and the latency of one SETUPMAPPING. The test
//! frontend of `tests/` plays the VMM; the guest kernel's own costs (page faults, the FUSE
//! client) are not part of either number.
//!
//!     cargo bench --bench dax_window        (ci/bench-dax.sh runs it)
//!
//! `BENCH_OPS` changes the number of random operations (default 20000). Needs e2fsprogs and the
//! release binary.

#[path = "../tests/vhost_common/mod.rs"]
mod vhost_common;

use std::time::Instant;
use vhost_common::*;
use vhost_ext4::vhost::FsArgs;

const CHUNK: u64 = 2 << 20;
const FILE: u64 = 256 << 20;

fn msg(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&((40 + body.len()) as u32).to_le_bytes());
    m.extend_from_slice(&opcode.to_le_bytes());
    m.extend_from_slice(&unique.to_le_bytes());
    m.extend_from_slice(&nodeid.to_le_bytes());
    m.extend_from_slice(&[0u8; 8]);
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&[0u8; 4]);
    m.extend_from_slice(body);
    m
}

fn le(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

struct Guest {
    vmm: Vmm,
    unique: u64,
}

impl Guest {
    fn call(&mut self, opcode: u32, node: u64, body: &[u8], room: usize) -> Vec<u8> {
        self.unique += 1;
        let (used, r) = self
            .vmm
            .roundtrip(1, &msg(opcode, self.unique, node, body), room);
        let err = i32::from_le_bytes(r[4..8].try_into().unwrap());
        assert_eq!(err, 0, "opcode {opcode} failed");
        r[16..used as usize].to_vec()
    }

    fn io_body(offset: u64, size: u32) -> Vec<u8> {
        let mut b = le(&[0, offset]);
        b.extend_from_slice(&size.to_le_bytes());
        b.extend_from_slice(&[0u8; 20]);
        b
    }
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn main() {
    let ops: u64 = std::env::var("BENCH_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    assert!(
        binary_has("fs"),
        "build the release binary first (cargo build --release)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    let image = tmp.path().join("fs.img");
    mkfs(&tree, &image, 512, &["-b", "4096"]);
    let sock = tmp.path().join("fs.sock");
    let mut d = start_fs(FsArgs {
        socket_path: Some(sock.clone()),
        image: Some(image.clone()),
        cache_size: 1 << 30,
        dax_window: 512 << 20,
        ..FsArgs::default()
    });
    let mut g = Guest {
        vmm: Vmm::connect_dax(&sock, 2),
        unique: 0,
    };
    let mut init = Vec::new();
    init.extend_from_slice(&7u32.to_le_bytes());
    init.extend_from_slice(&41u32.to_le_bytes());
    init.extend_from_slice(&(128u32 << 10).to_le_bytes());
    init.extend_from_slice(&(1u32 | 1 << 5 | 1 << 22 | 1 << 26 | 1 << 30).to_le_bytes());
    init.extend_from_slice(&[0u8; 48]);
    g.call(26, 0, &init, 4096);
    let mut create = Vec::new();
    create.extend_from_slice(&(libc::O_RDWR as u32).to_le_bytes());
    create.extend_from_slice(&0o100644u32.to_le_bytes());
    create.extend_from_slice(&[0u8; 8]);
    create.extend_from_slice(b"bench\0");
    let r = g.call(35, 1, &create, 4096);
    let f = u64::from_le_bytes(r[..8].try_into().unwrap());
    // Fill the file (1 MiB writes), then fsync: every test starts from a cached, clean file.
    let mb: Vec<u8> = (0..1 << 20).map(|i| (i * 7 + 3) as u8).collect();
    for off in (0..FILE).step_by(1 << 20) {
        let mut b = Guest::io_body(off, mb.len() as u32);
        b.extend_from_slice(&mb);
        g.call(16, f, &b, 4096);
    }
    g.call(20, f, &[0u8; 16], 4096);

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let pages = FILE / 4096;
    let page = vec![0x5Au8; 4096];

    let t = Instant::now();
    for _ in 0..ops {
        let off = rng.below(pages) * 4096;
        let r = g.call(15, f, &Guest::io_body(off, 4096), 8192);
        assert_eq!(r.len(), 4096);
    }
    let fuse_read = t.elapsed().as_secs_f64() / ops as f64;

    let t = Instant::now();
    for _ in 0..ops {
        let off = rng.below(pages) * 4096;
        let mut b = Guest::io_body(off, 4096);
        b.extend_from_slice(&page);
        g.call(16, f, &b, 4096);
    }
    let fuse_write = t.elapsed().as_secs_f64() / ops as f64;

    // Map the whole file: 128 writable 2 MiB mappings, timing each SETUPMAPPING.
    let t = Instant::now();
    for c in 0..FILE / CHUNK {
        g.call(
            48,
            f,
            &le(&[u64::MAX, c * CHUNK, CHUNK, 3, c * CHUNK]),
            4096,
        );
    }
    let setup_rw = t.elapsed().as_secs_f64() / (FILE / CHUNK) as f64;
    // Remove and map again read-only (the cached, pinned-once case a reclaiming guest hits).
    let t = Instant::now();
    for c in 0..16 {
        let mut b = 1u32.to_le_bytes().to_vec();
        b.extend_from_slice(&le(&[c * CHUNK, CHUNK]));
        g.call(49, 1, &b, 4096);
        g.call(
            48,
            f,
            &le(&[u64::MAX, c * CHUNK, CHUNK, 2, c * CHUNK]),
            4096,
        );
    }
    let remap_ro = t.elapsed().as_secs_f64() / 16.0;
    for c in 0..16 {
        g.call(
            48,
            f,
            &le(&[u64::MAX, c * CHUNK, CHUNK, 3, c * CHUNK]),
            4096,
        );
    }

    let w = g.vmm.dax.as_ref().unwrap();
    assert!(
        (0..FILE / CHUNK).all(|c| w.mapped(c * CHUNK, CHUNK, true)),
        "the whole file is mapped writable"
    );
    let base = w.base as *mut u8;
    let mut buf = vec![0u8; 4096];
    let mut sink = 0u64;
    let t = Instant::now();
    for _ in 0..ops {
        let off = rng.below(pages) * 4096;
        // SAFETY: [0, FILE) of the window is mapped read-write (checked above).
        unsafe { std::ptr::copy_nonoverlapping(base.add(off as usize), buf.as_mut_ptr(), 4096) };
        sink = sink.wrapping_add(buf[17] as u64);
    }
    let dax_read = t.elapsed().as_secs_f64() / ops as f64;
    let t = Instant::now();
    for _ in 0..ops {
        let off = rng.below(pages) * 4096;
        // SAFETY: as above.
        unsafe { std::ptr::copy_nonoverlapping(page.as_ptr(), base.add(off as usize), 4096) };
    }
    let dax_write = t.elapsed().as_secs_f64() / ops as f64;
    let t = Instant::now();
    g.call(20, f, &[0u8; 16], 4096);
    let fsync_mapped = t.elapsed().as_secs_f64();

    drop(g);
    d.wait().expect("the daemon exits cleanly");
    let us = |s: f64| s * 1e6;
    println!("dax bench: {ops} random 4 KiB operations on a 256 MiB file ({sink})");
    println!("  FUSE READ      {:8.2} us/op", us(fuse_read));
    println!("  window load    {:8.2} us/op", us(dax_read));
    println!("  FUSE WRITE     {:8.2} us/op", us(fuse_write));
    println!("  window store   {:8.2} us/op", us(dax_write));
    println!(
        "  SETUPMAPPING   {:8.2} us (writable, 2 MiB, cached)",
        us(setup_rw)
    );
    println!("  REMOVE+SETUP   {:8.2} us (read-only remap)", us(remap_ro));
    println!(
        "  fsync with 256 MiB writably mapped: {:.3} s",
        fsync_mapped
    );
    println!(
        "ratios (FUSE / window, above 1: the window is faster): read {:.1}, write {:.1}",
        fuse_read / dax_read,
        fuse_write / dax_write
    );
}
