//! Namespace micro-benchmark (run by hand): 20,000 creates into one directory, a rename of each,
//! then 20,000 unlinks, on a fresh journal-less image, timed in-process through the engine API.
//!
//! `cargo test --release --lib dir_bench -- --ignored --nocapture`
//! (`DIR_BENCH_N` changes the count, `DIR_BENCH_OPTS` the extra mke2fs options, e.g.
//! "-O ^metadata_csum").

use crate::fs::testutil::*;
use crate::fs::*;
use std::time::Instant;

fn run(opts: &[&str], n: usize) {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    let img = t.path().join("img");
    let mut all = vec!["-t", "ext4", "-O", "^has_journal", "-N", "65536"];
    all.extend_from_slice(opts);
    mkfs(&src, &img, &all, "256M");
    let fs = mount_rw(&img);
    let c = ctx();
    let dir = fs.lookup(ROOT_INO, b"d").unwrap().ino;
    let name = |p: &str, i: usize| format!("{p}-{i:06}-some-typical-length").into_bytes();
    let per_op = |t: Instant| t.elapsed().as_secs_f64() * 1e6 / n as f64;

    let t0 = Instant::now();
    let mut inos = Vec::with_capacity(n);
    for i in 0..n {
        inos.push(
            fs.mknod(dir, &name("file", i), 0o100644, 0, &c)
                .unwrap()
                .ino,
        );
    }
    let create = per_op(t0);
    // As the kernel eventually does: drop the lookup references, so that unlink frees the inodes
    // (instead of parking 20,000 of them on the orphan list until unmount).
    for ino in inos {
        fs.forget(ino, 1);
    }
    let t0 = Instant::now();
    for i in 0..n {
        fs.rename(dir, &name("file", i), dir, &name("moved", i), 0)
            .unwrap();
    }
    let rename = per_op(t0);
    let t0 = Instant::now();
    for i in 0..n {
        fs.unlink(dir, &name("moved", i)).unwrap();
    }
    let unlink = per_op(t0);
    println!(
        "dir_bench {opts:?} n={n}: create {create:.2} us/op, rename {rename:.2} us/op, unlink {unlink:.2} us/op"
    );
    fs.shutdown().unwrap();
    e2fsck_clean(&img);
}

#[test]
#[ignore = "benchmark; run by hand with --ignored --nocapture"]
fn dir_bench() {
    let n = std::env::var("DIR_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let extra = std::env::var("DIR_BENCH_OPTS").unwrap_or_default();
    let opts: Vec<&str> = extra.split_whitespace().collect();
    run(&opts, n);
}
