//! In-process namespace benchmark (no FUSE): 20,000 creates into one directory, a rename of
//! each, then 20,000 unlinks, on a fresh journal-less image, timed through the engine API.
//! The image is checked with `e2fsck -fn` afterwards.
//!
//!     cargo bench --bench engine_namespace
//!
//! `BENCH_N` changes the count, `BENCH_MKE2FS_OPTS` adds mke2fs options (e.g. "-b 4096" or
//! "-O ^metadata_csum"). Needs e2fsprogs.

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;
use vhost_ext4::blockdev::FileDevice;
use vhost_ext4::fs::{Ctx, Fs, MountOptions, ROOT_INO};

fn main() {
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let extra = std::env::var("BENCH_MKE2FS_OPTS").unwrap_or_default();
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("d")).expect("the source tree");
    let img = tmp.path().join("img");
    let out = Command::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-O",
            "^has_journal",
            "-N",
            "65536",
        ])
        .args(extra.split_whitespace())
        .arg("-d")
        .arg(&src)
        .arg(&img)
        .arg("256M")
        .output()
        .expect("mke2fs (e2fsprogs) is required");
    assert!(
        out.status.success(),
        "mke2fs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dev = FileDevice::open(&img, false).expect("opening the image");
    let fs = Fs::mount(Arc::new(dev), &MountOptions::rw()).expect("mounting");
    let c = Ctx {
        uid: 0,
        gid: 0,
        pid: 1,
        umask: 0,
    };
    let dir = fs.lookup(ROOT_INO, b"d").expect("the directory").ino;
    let name = |p: &str, i: usize| format!("{p}-{i:06}-some-typical-length").into_bytes();
    let per_op = |t: Instant| t.elapsed().as_secs_f64() * 1e6 / n as f64;

    let t0 = Instant::now();
    let mut inos = Vec::with_capacity(n);
    for i in 0..n {
        inos.push(
            fs.mknod(dir, &name("file", i), 0o100644, 0, &c)
                .expect("mknod")
                .ino,
        );
    }
    let create = per_op(t0);
    // Drop the lookup references as the kernel eventually does, so unlink frees the inodes.
    for ino in inos {
        fs.forget(ino, 1);
    }
    let t0 = Instant::now();
    for i in 0..n {
        fs.rename(dir, &name("file", i), dir, &name("moved", i), 0)
            .expect("rename");
    }
    let rename = per_op(t0);
    let t0 = Instant::now();
    for i in 0..n {
        fs.unlink(dir, &name("moved", i)).expect("unlink");
    }
    let unlink = per_op(t0);
    fs.shutdown().expect("unmount");
    drop(fs);
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(&img)
        .output()
        .expect("e2fsck");
    assert!(
        out.status.success(),
        "e2fsck -fn after the benchmark:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    println!(
        "engine_namespace [{extra}] n={n}: create {create:.2} us/op, rename {rename:.2} us/op, unlink {unlink:.2} us/op"
    );
}
