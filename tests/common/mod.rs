//! Helpers shared by the integration tests that mount real ext4 images through `vhost-ext4 mount`:
//! a check for the facilities they need (root, /dev/fuse, loop devices, e2fsprogs), a deterministic
//! tree generator, image builders (mke2fs -d, or the kernel writing through a loop mount), mount
//! guards for our daemon and for the kernel's ext4, and a tree comparison that reports every
//! difference it finds.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const MIB: u64 = 1 << 20;

/// Fails (never skips) when the machine lacks something these tests need.
pub fn require_root_and_tools() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these integration tests must run as root (they mount FUSE and loop devices); run them with sudo or `sudo bash .ci/run`"
    );
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        panic!(
            "/dev/fuse cannot be opened ({e}): load the fuse module (modprobe fuse) or give the container /dev/fuse"
        );
    }
    assert!(
        Path::new("/dev/loop-control").exists(),
        "/dev/loop-control is missing: loop devices are needed to let the kernel's ext4 mount the test images (modprobe loop)"
    );
    for tool in [
        "mke2fs", "e2fsck", "debugfs", "setfacl", "mount", "umount", "cp",
    ] {
        assert!(
            which(tool).is_some(),
            "`{tool}` is not installed: install e2fsprogs, acl, mount and coreutils (apt-get install e2fsprogs acl mount coreutils)"
        );
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Runs a command, panicking with its output when it fails.
/// Mount `image` at `dir` with the kernel's ext4 through a loop device (`opts` e.g. "loop,ro").
/// Test threads racing for the same free loop device make mount(8) fail now and then: mounts in
/// this process are serialized, and a failure is retried a few times before it counts.
pub fn mount_loop(image: &Path, dir: &Path, opts: &str) {
    static LOOP_SETUP: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let mut last = None;
    for _ in 0..5 {
        let out = {
            let _g = LOOP_SETUP.lock().unwrap_or_else(|e| e.into_inner());
            run_any(
                Command::new("mount")
                    .args(["-t", "ext4", "-o", opts])
                    .arg(image)
                    .arg(dir),
            )
        };
        if out.status.success() {
            return;
        }
        last = Some(out);
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = last.expect("at least one attempt");
    panic!(
        "mount -o {opts} {} {} failed: {}",
        image.display(),
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command and returns its output, whatever its status.
pub fn run_any(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Prints how long a phase took (shown with `cargo test -- --nocapture`).
pub struct Timer {
    name: String,
    start: Instant,
    last: Instant,
}

impl Timer {
    pub fn new(name: &str) -> Timer {
        let now = Instant::now();
        Timer {
            name: name.to_string(),
            start: now,
            last: now,
        }
    }
    pub fn lap(&mut self, phase: &str) {
        let now = Instant::now();
        eprintln!(
            "[{}] {phase}: {:.2}s (total {:.2}s)",
            self.name,
            (now - self.last).as_secs_f64(),
            (now - self.start).as_secs_f64()
        );
        self.last = now;
    }
}

// ---------------------------------------------------------------------------------------------
// Deterministic content

/// splitmix64: deterministic pseudo-random bytes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

fn seed_of(path: &Path) -> u64 {
    // FNV-1a of the path: every file gets its own stream.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.as_os_str().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Writes `len` pseudo-random bytes at `offset` of an open file.
fn write_random(f: &mut File, offset: u64, len: u64, rng: &mut Rng) {
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(MIB) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn check(rc: libc::c_int, what: &str, p: &Path) {
    if rc != 0 {
        panic!("{what} {}: {}", p.display(), io::Error::last_os_error());
    }
}

pub fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    if let Err(e) = try_set_xattr(p, name, value) {
        panic!("lsetxattr {name} {}: {e}", p.display());
    }
}

pub fn try_set_xattr(p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let n = CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let rc = unsafe {
        libc::lsetxattr(
            cstr(p).as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn mknod(p: &Path, mode: u32, major: u32, minor: u32) {
    // SAFETY: valid path; mknod has no memory preconditions.
    let rc = unsafe { libc::mknod(cstr(p).as_ptr(), mode, libc::makedev(major, minor)) };
    check(rc, "mknod", p);
}

/// Sets atime and mtime (with nanoseconds) without following symlinks.
pub fn set_times(p: &Path, atime: (i64, i64), mtime: (i64, i64)) {
    let ts = [
        libc::timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1,
        },
        libc::timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1,
        },
    ];
    // SAFETY: valid path and a two-element timespec array.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            cstr(p).as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    check(rc, "utimensat", p);
}

// ---------------------------------------------------------------------------------------------
// Tree generator

/// What to put in a generated tree.
#[derive(Clone, Debug)]
pub struct TreeSpec {
    /// The image's block size: bounds symlink length and xattr value size.
    pub block_size: u32,
    /// Entries in the big directory (20,000 in a few variants, 3,000 elsewhere: htree either way).
    pub big_dir_entries: usize,
    /// A dense 100 MiB file.
    pub huge_file: bool,
    /// Many tiny files and tiny directories (for inline_data images).
    pub tiny_things: bool,
    /// Times outside 1970..2038 (only images with 256-byte inodes can hold them).
    pub wide_times: bool,
    /// Files ending in a hole. mke2fs 1.47.0 -d with inline_data drops a trailing hole (the size
    /// is cut to the last data block), so inline_data variants go without.
    pub trailing_holes: bool,
}

/// Builds the test tree under `root` (which must not exist yet). Deterministic: the same spec gives
/// the same names, contents, owners, modes, xattrs and times.
pub fn generate_tree(root: &Path, spec: &TreeSpec) {
    fs::create_dir(root).unwrap();
    let mut g = Gen {
        root: root.to_path_buf(),
        timed: Vec::new(),
    };
    let bs = u64::from(spec.block_size);

    // Regular files of many sizes.
    g.dir("files", 0o755, 0, 0);
    let mut sizes = vec![
        0u64,
        1,
        59,
        60,
        61,
        100,
        4095,
        4096,
        4097,
        bs - 1,
        bs + 1,
        65536,
        MIB - 1,
        MIB,
        MIB + 1,
        3 * MIB + 12345,
        7 * MIB,
    ];
    sizes.sort_unstable();
    sizes.dedup();
    for size in sizes {
        g.file(&format!("files/size-{size}"), size, 0o644, 0, 0);
    }
    if spec.huge_file {
        g.file("files/huge-100MiB", 100 * MIB, 0o644, 0, 0);
    }

    // Sparse files: holes at the start, in the middle, at the end, only hole, and far offsets.
    g.dir("sparse", 0o755, 0, 0);
    g.sparse("sparse/hole-start", &[(3 * MIB, 64 * 1024 + 123)], None);
    g.sparse(
        "sparse/hole-middle",
        &[(0, 100 * 1024), (5 * MIB + 777, 50 * 1024)],
        None,
    );
    if spec.trailing_holes {
        g.sparse("sparse/hole-end", &[(0, 10 * 1024)], Some(8 * MIB));
        g.sparse("sparse/only-hole", &[], Some(16 * MIB + 5));
    }
    g.sparse(
        "sparse/many-holes",
        &(0..40u64)
            .map(|i| (i * 256 * 1024 + i * 13, 4096 + i * 100))
            .collect::<Vec<_>>(),
        None,
    );
    // 100 MiB apparent size with little data: deep indirect / multi-level extent lookups.
    g.sparse(
        "sparse/sparse-100MiB",
        &[(0, 8192), (37 * MIB + 5, 70_000), (100 * MIB - 3000, 3000)],
        None,
    );
    // Beyond 4 GiB: 64-bit offsets and block numbers past 2^22 (1 KiB blocks).
    g.sparse(
        "sparse/beyond-4GiB",
        &[(4 * 1024 * MIB - 4096, 12288), (5 * 1024 * MIB, 100)],
        spec.trailing_holes.then_some(5 * 1024 * MIB + 40960),
    );

    // The big directory (htree once indexed).
    g.dir("bigdir", 0o755, 0, 0);
    for i in 0..spec.big_dir_entries {
        let name = format!("entry-{i:05}-{}", "n".repeat(i % 37));
        let rel = format!("bigdir/{name}");
        if i % 1000 == 999 {
            g.dir(&rel, 0o750, 0, 0);
        } else if i % 97 == 0 {
            g.file(&rel, (i % 5000) as u64 + 1, 0o644, (i % 3) as u32, 0);
        } else {
            g.file(&rel, 0, 0o644, 0, 0);
        }
    }

    // Names: longest, odd bytes, unicode, dots.
    g.dir("names", 0o755, 0, 0);
    let long = "L".repeat(255);
    g.file(&format!("names/{long}"), 10, 0o644, 0, 0);
    g.file("names/with space", 3, 0o644, 0, 0);
    g.file("names/ünïcødé-名前", 5, 0o644, 0, 0);
    g.file("names/.hidden", 7, 0o644, 0, 0);
    g.file("names/..dots..", 7, 0o644, 0, 0);
    g.file("names/a", 1, 0o644, 0, 0);
    let odd = OsString::from_vec(b"names/bytes-\xff\xfe\x01".to_vec());
    g.file_os(Path::new(&odd), 11, 0o644, 0, 0);

    // Symlinks: fast (< 60 bytes, in the inode), slow (> 60 bytes, in a block), near the limit.
    g.dir("links", 0o755, 0, 0);
    g.symlink("links/short", "../files/size-1");
    g.symlink("links/exactly-59", &"s".repeat(59));
    g.symlink("links/exactly-60", &"s".repeat(60));
    g.symlink(
        "links/long",
        &format!("../files/{}/../size-4096", "x".repeat(100)),
    );
    let max = (spec.block_size as usize - 1).min(4000);
    let mut longest = String::new();
    while longest.len() + 11 < max {
        longest.push_str("component/");
    }
    while longest.len() < max {
        longest.push('z');
    }
    g.symlink("links/longest", &longest);
    g.symlink("links/dangling", "/nonexistent/target");
    g.symlink("links/to-dir", "../files");

    // Extended attributes: in the inode, in a block, binary, empty, trusted, on dirs and symlinks.
    g.dir("xattrs", 0o755, 0, 0);
    let p = g.file("xattrs/small", 20, 0o644, 0, 0);
    set_xattr(&p, "user.a", b"1");
    set_xattr(&p, "user.empty", b"");
    set_xattr(&p, "trusted.t", b"trusted value");
    let p = g.file("xattrs/big-value", 300, 0o644, 0, 0);
    let big = (spec.block_size as usize / 2).min(2048);
    let mut v = vec![0u8; big];
    Rng::new(7).fill(&mut v);
    set_xattr(&p, "user.big", &v);
    set_xattr(&p, "user.binary", b"\x00\x01\x02\xff\x00");
    let p = g.file("xattrs/many", 1, 0o644, 0, 0);
    let count = if spec.block_size >= 4096 { 24 } else { 10 };
    for i in 0..count {
        set_xattr(
            &p,
            &format!("user.attr-{i:02}"),
            format!("value number {i} {}", "v".repeat(i)).as_bytes(),
        );
    }
    let p = g.dir("xattrs/dir-with-xattrs", 0o755, 0, 0);
    set_xattr(&p, "user.on-dir", b"dir value");
    set_xattr(&p, "trusted.dir", b"x");
    let p = g.symlink("xattrs/link-with-xattr", "small");
    set_xattr(&p, "trusted.on-link", b"link value");
    // Same xattrs on two files (the kernel may share one block between them).
    for name in ["xattrs/shared-1", "xattrs/shared-2"] {
        let p = g.file(name, 2, 0o644, 0, 0);
        set_xattr(&p, "user.shared", &v[..big.min(900)]);
    }

    // POSIX ACLs: an access ACL, a default ACL, and a file inheriting it.
    g.dir("acl", 0o755, 0, 0);
    let p = g.file("acl/file", 5, 0o640, 0, 0);
    run(Command::new("setfacl")
        .arg("-m")
        .arg("u:1000:rwx,u:1001:r,g:2000:r-x,g::r,m::rwx,o::-")
        .arg(&p));
    let d = g.dir("acl/dir", 0o755, 0, 0);
    run(Command::new("setfacl")
        .arg("-d")
        .arg("-m")
        .arg("u:1000:rwx,g:2000:rx")
        .arg(&d));
    let child = d.join("inherits");
    fs::write(&child, b"inherited acl").unwrap();
    g.timed.push(child);

    // Special files.
    g.dir("dev", 0o755, 0, 0);
    g.node("dev/null-like", libc::S_IFCHR | 0o666, 1, 3);
    g.node("dev/block", libc::S_IFBLK | 0o660, 8, 1);
    g.node("dev/huge-numbers", libc::S_IFCHR | 0o600, 300, 70000);
    g.node("dev/fifo", libc::S_IFIFO | 0o644, 0, 0);
    let sock = g.root.join("dev/socket");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    g.timed.push(sock);

    // Hard links (across directories).
    g.dir("hard", 0o755, 0, 0);
    let a = g.file("hard/a", 5000, 0o644, 0, 0);
    fs::hard_link(&a, g.root.join("hard/b")).unwrap();
    fs::hard_link(&a, g.root.join("files/hard-a-again")).unwrap();
    let e = g.file("hard/empty", 0, 0o600, 0, 0);
    fs::hard_link(&e, g.root.join("hard/empty-2")).unwrap();

    // A 40-level deep path.
    let mut deep = String::from("deep");
    g.dir(&deep, 0o755, 0, 0);
    for i in 0..40 {
        deep.push_str(&format!("/level-{i:02}"));
        g.dir(&deep, 0o755, 0, 0);
    }
    g.file(&format!("{deep}/leaf"), 4097, 0o644, 0, 0);
    fs::hard_link(g.root.join("hard/a"), g.root.join(format!("{deep}/hard-a"))).unwrap();

    // Owners and modes.
    g.dir("owners", 0o755, 0, 0);
    g.file("owners/user-1000", 10, 0o644, 1000, 1000);
    g.file("owners/nobody", 10, 0o600, 65534, 65534);
    g.file("owners/mixed", 10, 0o640, 12345, 54321);
    g.file("owners/high-ids", 10, 0o644, 100_000, 200_000);
    g.file("owners/setuid", 10, 0o4755, 0, 0);
    g.file("owners/setgid", 10, 0o2755, 0, 50);
    g.file("owners/no-perms", 10, 0o000, 7, 7);
    g.file("owners/all-bits", 10, 0o7777, 1, 1);
    g.dir("owners/sticky", 0o1777, 0, 0);
    g.dir("owners/private-dir", 0o700, 1000, 1000);
    g.file("owners/private-dir/inside", 1, 0o644, 1000, 1000);
    g.dir("empty-dir", 0o755, 0, 0);

    // Tiny files and directories (inline data when the image has it).
    if spec.tiny_things {
        g.dir("tiny", 0o755, 0, 0);
        for i in 0..200u64 {
            g.file(&format!("tiny/f{i:03}"), i % 170, 0o644, 0, 0);
        }
        for i in 0..50 {
            let d = format!("tiny/d{i:02}");
            g.dir(&d, 0o755, 0, 0);
            for j in 0..(i % 6) {
                g.file(&format!("{d}/e{j}"), j as u64 * 9, 0o644, 0, 0);
            }
        }
        let p = g.file("tiny/with-xattr", 40, 0o644, 0, 0);
        set_xattr(&p, "user.tiny", b"t");
    }

    // Specific times, with nanoseconds. Directories last, as creating entries changes them.
    g.dir("times", 0o755, 0, 0);
    let edge = g.file("times/y2038-edge", 1, 0o644, 0, 0);
    let after = g.file("times/y2038-after", 1, 0o644, 0, 0);
    let zero = g.file("times/epoch", 1, 0o644, 0, 0);
    let mut special = vec![
        (edge, (i64::from(i32::MAX), 999_999_999)),
        (after, (1i64 << 31, 1)),
        (zero, (0, 0)),
    ];
    if spec.wide_times {
        let before = g.file("times/before-1970", 1, 0o644, 0, 0);
        let far = g.file("times/year-2100", 1, 0o644, 0, 0);
        special.push((before, (-123_456_789, 500_000_000)));
        special.push((far, (4_102_444_800 + 12345, 123_456_789)));
    }
    let mut timed = std::mem::take(&mut g.timed);
    timed.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in timed.iter().enumerate() {
        let i = i as i64;
        let mtime = (1_000_000_000 + i * 7919, (i * 123_456_789) % 1_000_000_000);
        let atime = (1_100_000_000 + i * 31, (i * 987_654_321) % 1_000_000_000);
        set_times(p, atime, mtime);
    }
    for (p, t) in special {
        set_times(&p, t, t);
    }
    set_times(root, (1_200_000_000, 1), (1_200_000_000, 2));
}

struct Gen {
    root: PathBuf,
    /// Everything created, to get its times set at the end.
    timed: Vec<PathBuf>,
}

impl Gen {
    fn dir(&mut self, rel: &str, mode: u32, uid: u32, gid: u32) -> PathBuf {
        let p = self.root.join(rel);
        fs::create_dir(&p).unwrap();
        chown(&p, uid, gid);
        chmod(&p, mode);
        self.timed.push(p.clone());
        p
    }

    fn file(&mut self, rel: &str, size: u64, mode: u32, uid: u32, gid: u32) -> PathBuf {
        self.file_os(Path::new(rel), size, mode, uid, gid)
    }

    fn file_os(&mut self, rel: &Path, size: u64, mode: u32, uid: u32, gid: u32) -> PathBuf {
        let p = self.root.join(rel);
        let mut f = File::create(&p).unwrap();
        write_random(&mut f, 0, size, &mut Rng::new(seed_of(rel)));
        drop(f);
        chown(&p, uid, gid);
        chmod(&p, mode);
        self.timed.push(p.clone());
        p
    }

    /// A file with data only at `extents` (offset, length); `size` extends it past the last one.
    fn sparse(&mut self, rel: &str, extents: &[(u64, u64)], size: Option<u64>) -> PathBuf {
        let p = self.root.join(rel);
        let mut f = File::create(&p).unwrap();
        let mut rng = Rng::new(seed_of(Path::new(rel)));
        for &(off, len) in extents {
            write_random(&mut f, off, len, &mut rng);
        }
        if let Some(size) = size {
            f.set_len(size).unwrap();
        }
        drop(f);
        self.timed.push(p.clone());
        p
    }

    fn symlink(&mut self, rel: &str, target: &str) -> PathBuf {
        let p = self.root.join(rel);
        std::os::unix::fs::symlink(target, &p).unwrap();
        self.timed.push(p.clone());
        p
    }

    fn node(&mut self, rel: &str, mode: u32, major: u32, minor: u32) -> PathBuf {
        let p = self.root.join(rel);
        mknod(&p, mode, major, minor);
        chmod(&p, mode & 0o7777);
        self.timed.push(p.clone());
        p
    }
}

// ---------------------------------------------------------------------------------------------
// Images

/// How to build one test image.
#[derive(Clone, Debug)]
pub struct Variant {
    pub name: &'static str,
    /// `mke2fs -t` type: ext4, ext3, ext2.
    pub fs_type: &'static str,
    pub block_size: u32,
    pub inode_size: u32,
    /// `-O` feature edits, e.g. "^64bit,^metadata_csum".
    pub features: Option<&'static str>,
    /// Run `e2fsck -fyD` after mke2fs so large directories become htree-indexed.
    pub index_dirs: bool,
    /// Let the kernel write the tree (loop mount, cp -a, umount) instead of mke2fs -d.
    pub kernel_written: bool,
}

impl Variant {
    pub fn ext4(name: &'static str, block_size: u32) -> Variant {
        Variant {
            name,
            fs_type: "ext4",
            block_size,
            inode_size: 256,
            features: None,
            index_dirs: true,
            kernel_written: false,
        }
    }

    fn mke2fs(&self, image: &Path, size: u64, inodes: u64, src: Option<&Path>) {
        let mut cmd = Command::new("mke2fs");
        cmd.arg("-q")
            .arg("-F")
            .arg("-t")
            .arg(self.fs_type)
            .arg("-b")
            .arg(self.block_size.to_string())
            .arg("-I")
            .arg(self.inode_size.to_string())
            .arg("-N")
            .arg(inodes.to_string())
            .arg("-E")
            .arg("root_owner=0:0");
        if let Some(f) = self.features {
            cmd.arg("-O").arg(f);
        }
        if let Some(src) = src {
            cmd.arg("-d").arg(src);
        }
        cmd.arg(image).arg(format!("{}k", size / 1024));
        run(&mut cmd);
    }
}

/// Sums the apparent size of a tree (data only; used to size images).
fn tree_bytes(root: &Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut count = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = fs::symlink_metadata(e.path()).unwrap();
            count += 1;
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file() {
                // Allocated bytes, not apparent size: sparse files stay sparse.
                bytes += std::os::unix::fs::MetadataExt::blocks(&md) * 512;
            }
        }
    }
    (bytes, count)
}

/// Builds `dir/<variant>.img` holding `src`, with mke2fs -d or through the kernel.
pub fn make_image(dir: &Path, src: &Path, v: &Variant) -> PathBuf {
    let image = dir.join(format!("{}.img", v.name));
    let (bytes, count) = tree_bytes(src);
    let bs = u64::from(v.block_size);
    // Data, plus a block per entry (directories, xattr blocks, indirect blocks), plus room for
    // the journal and metadata; the file is sparse, so generosity costs nothing.
    let size = ((bytes * 3 / 2 + count * bs * 2 + 256 * MIB) / MIB) * MIB;
    let inodes = count + 4096;
    if v.kernel_written {
        v.mke2fs(&image, size, inodes, None);
        let kmnt = dir.join("kernel-rw");
        fs::create_dir_all(&kmnt).unwrap();
        mount_loop(&image, &kmnt, "loop");
        let copied = run_any(
            Command::new("cp")
                .arg("-a")
                .arg(format!("{}/.", src.display()))
                .arg(&kmnt),
        );
        // cp -a keeps the source root's times; the kernel left lost+found as it is.
        let unmounted = run_any(Command::new("umount").arg(&kmnt));
        assert!(
            copied.status.success(),
            "cp -a into the kernel mount failed: {}",
            String::from_utf8_lossy(&copied.stderr)
        );
        assert!(
            unmounted.status.success(),
            "umount {} failed: {}",
            kmnt.display(),
            String::from_utf8_lossy(&unmounted.stderr)
        );
    } else {
        v.mke2fs(&image, size, inodes, Some(src));
        if v.index_dirs {
            // e2fsck -D exits 1 when it changed the file system, which is what it is asked to do.
            let out = run_any(Command::new("e2fsck").arg("-fyD").arg(&image));
            assert!(
                matches!(out.status.code(), Some(0 | 1)),
                "e2fsck -fyD {} failed: {}\n{}",
                image.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    image
}

/// `e2fsck -fn` must find the image clean.
pub fn assert_fsck_clean(image: &Path) {
    let out = run_any(Command::new("e2fsck").arg("-fn").arg(image));
    assert!(
        out.status.success(),
        "e2fsck -fn {} is not clean ({}):\n{}{}",
        image.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a debugfs request against an image (read-only) and returns its stdout.
pub fn debugfs(image: &Path, request: &str) -> String {
    let out = run(Command::new("debugfs").arg("-R").arg(request).arg(image));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Mounts

/// Is `dir` currently a mount point of a file system whose type starts with `fstype_prefix`?
pub fn is_mounted(dir: &Path, fstype_prefix: &str) -> bool {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let want = escape_mountinfo(dir.as_os_str());
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            return false;
        };
        fields.len() > sep + 1
            && fields.get(4) == Some(&want.as_str())
            && fields[sep + 1].starts_with(fstype_prefix)
    })
}

fn escape_mountinfo(s: &OsStr) -> String {
    let mut out = String::new();
    for &b in s.as_bytes() {
        match b {
            b' ' | b'\t' | b'\n' | b'\\' => out.push_str(&format!("\\{b:03o}")),
            _ => out.push(b as char),
        }
    }
    out
}

/// How `vhost-ext4 mount` ended before the mount came up.
#[derive(Debug)]
pub struct EarlyExit {
    pub code: Option<i32>,
    pub stderr: String,
    pub elapsed: Duration,
}

/// `vhost-ext4 mount IMAGE DIR` running in the foreground, mounted.
pub struct Mount {
    pub dir: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_vhost-ext4")
}

impl Mount {
    /// Starts the daemon and waits for the FUSE mount; panics (with the daemon's stderr) when it
    /// does not come up.
    pub fn start(image: &Path, dir: &Path, args: &[&str]) -> Mount {
        match Mount::try_start(image, dir, args) {
            Ok(m) => m,
            Err(e) => panic!(
                "vhost-ext4 mount {} {} {args:?} exited with {:?} before mounting; stderr:\n{}",
                image.display(),
                dir.display(),
                e.code,
                e.stderr
            ),
        }
    }

    /// Starts the daemon; Err when it exits before the mount appears.
    pub fn try_start(image: &Path, dir: &Path, args: &[&str]) -> Result<Mount, EarlyExit> {
        fs::create_dir_all(dir).unwrap();
        let log = dir.with_extension("stderr");
        let err = File::create(&log).unwrap();
        let out = err.try_clone().unwrap();
        let start = Instant::now();
        let child = Command::new(binary())
            .arg("mount")
            .arg(image)
            .arg(dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary()));
        let mut m = Mount {
            dir: dir.to_path_buf(),
            child: Some(child),
            log,
        };
        let deadline = start + Duration::from_secs(20);
        loop {
            if is_mounted(dir, "fuse") {
                return Ok(m);
            }
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                m.child = None;
                return Err(EarlyExit {
                    code: status.code(),
                    stderr: m.stderr(),
                    elapsed: start.elapsed(),
                });
            }
            if Instant::now() > deadline {
                let stderr = m.stderr();
                drop(m);
                panic!(
                    "vhost-ext4 mount {} {}: no FUSE mount after 20 s; stderr:\n{stderr}",
                    image.display(),
                    dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Is the daemon still running?
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// Sends SIGTERM and waits (at most 20 s) for the daemon to exit; returns its status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon already reaped");
        // SAFETY: kill with a valid pid of our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                self.child = Some(child);
                panic!(
                    "vhost-ext4 did not exit within 20 s of SIGTERM; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the daemon with SIGKILL (a crash: nothing is flushed or committed) and reaps it;
    /// dropping the `Mount` then detaches the dead mount.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("daemon already reaped");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Unmounts with `umount`, waits for the daemon, and asserts it exited 0 without a panic.
    /// Returns its stderr.
    pub fn unmount(mut self) -> String {
        let mut last = String::new();
        for _ in 0..50 {
            let out = run_any(Command::new("umount").arg(&self.dir));
            if out.status.success() {
                last.clear();
                break;
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            last.is_empty(),
            "umount {} failed: {last}; daemon stderr:\n{}",
            self.dir.display(),
            self.stderr()
        );
        let mut child = self.child.take().expect("daemon already reaped");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "vhost-ext4 did not exit within 20 s of umount {}; stderr:\n{}",
                    self.dir.display(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = self.stderr();
        assert!(
            !stderr.contains("panicked"),
            "vhost-ext4 panicked while serving {}:\n{stderr}",
            self.dir.display()
        );
        assert!(
            status.success(),
            "vhost-ext4 exited with {status} after umount {}; stderr:\n{stderr}",
            self.dir.display()
        );
        stderr
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.is_none() && is_mounted(&self.dir, "fuse") {
            // The daemon is gone but its mount is not (it died, or was signalled away).
            let _ = run_any(Command::new("umount").arg("-l").arg(&self.dir));
        }
        if let Some(mut child) = self.child.take() {
            // A test failed before unmounting: detach, stop the daemon, never leave a mount.
            let _ = run_any(Command::new("umount").arg("-l").arg(&self.dir));
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            eprintln!(
                "vhost-ext4 stderr for {}:\n{}",
                self.dir.display(),
                self.stderr()
            );
        }
    }
}

/// The kernel's ext4 mounting an image read-only through a loop device.
pub struct KernelMount {
    pub dir: PathBuf,
    mounted: bool,
}

impl KernelMount {
    pub fn start(image: &Path, dir: &Path) -> KernelMount {
        fs::create_dir_all(dir).unwrap();
        mount_loop(image, dir, "loop,ro");
        KernelMount {
            dir: dir.to_path_buf(),
            mounted: true,
        }
    }

    pub fn unmount(mut self) {
        self.mounted = false;
        let mut out = run_any(Command::new("umount").arg(&self.dir));
        for _ in 0..50 {
            if out.status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
            out = run_any(Command::new("umount").arg(&self.dir));
        }
        panic!(
            "umount {} failed: {}",
            self.dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = run_any(Command::new("umount").arg("-l").arg(&self.dir));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Comparison

/// What the expected tree is, and so which attributes it can be held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Truth {
    /// The directory mke2fs -d copied: names, types, modes, owners, sizes, contents, link targets,
    /// xattrs, device numbers, hard links, mtime seconds (within 1970..2038).
    MkfsSource,
    /// The directory the kernel copied (cp -a): as above, plus mtimes with nanoseconds.
    CopiedSource,
    /// The kernel's own mount of the same image: everything, including inode numbers, link
    /// counts, block counts, all timestamps, and the data/hole layout.
    Kernel,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ts(i64, u32);

impl std::fmt::Display for Ts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:09}", self.0, self.1)
    }
}

#[derive(Clone, Debug)]
pub struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    nlink: u32,
    ino: u64,
    dev: (u32, u32),
    blocks: u64,
    rdev: (u32, u32),
    atime: Ts,
    mtime: Ts,
    ctime: Ts,
    btime: Option<Ts>,
}

impl Meta {
    fn kind(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
}

pub fn statx(p: &Path) -> io::Result<Meta> {
    // SAFETY: statx is plain data; the kernel fills it.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: valid path, valid output buffer.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            cstr(p).as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_BASIC_STATS | libc::STATX_BTIME,
            &mut st,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let ts = |t: libc::statx_timestamp| Ts(t.tv_sec, t.tv_nsec);
    Ok(Meta {
        mode: u32::from(st.stx_mode),
        uid: st.stx_uid,
        gid: st.stx_gid,
        size: st.stx_size,
        nlink: st.stx_nlink,
        ino: st.stx_ino,
        dev: (st.stx_dev_major, st.stx_dev_minor),
        blocks: st.stx_blocks,
        rdev: (st.stx_rdev_major, st.stx_rdev_minor),
        atime: ts(st.stx_atime),
        mtime: ts(st.stx_mtime),
        ctime: ts(st.stx_ctime),
        btime: (st.stx_mask & libc::STATX_BTIME != 0).then(|| ts(st.stx_btime)),
    })
}

/// All xattrs of a path (not following symlinks), by name.
pub fn xattrs(p: &Path) -> io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let c = cstr(p);
    let mut names = vec![0u8; 65536];
    // SAFETY: valid path and buffer.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    names.truncate(n as usize);
    let mut out = BTreeMap::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).unwrap();
        let mut val = vec![0u8; 65536];
        // SAFETY: valid path, name and buffer.
        let n = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                val.as_mut_ptr().cast(),
                val.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::other(format!(
                "getxattr {}: {}",
                String::from_utf8_lossy(name),
                io::Error::last_os_error()
            )));
        }
        val.truncate(n as usize);
        out.insert(name.to_vec(), val);
    }
    Ok(out)
}

/// The data segments of a file as SEEK_DATA/SEEK_HOLE report them.
pub fn data_map(p: &Path) -> io::Result<Vec<(u64, u64)>> {
    let f = File::open(p)?;
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut off: i64 = 0;
    loop {
        // SAFETY: valid fd.
        let start = unsafe { libc::lseek(fd, off, libc::SEEK_DATA) };
        if start < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(e);
        }
        // SAFETY: valid fd.
        let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        if end < 0 {
            return Err(io::Error::last_os_error());
        }
        out.push((start as u64, end as u64));
        if end <= start {
            return Err(io::Error::other(format!(
                "SEEK_HOLE from {start} returned {end}"
            )));
        }
        off = end;
    }
    Ok(out)
}

/// Compares two files' contents. Files above 256 MiB are compared over the expected file's data
/// segments plus samples of its holes.
fn compare_contents(expected: &Path, got: &Path, size: u64) -> Result<(), String> {
    let mut a = File::open(expected).map_err(|e| format!("open expected: {e}"))?;
    let mut b = File::open(got).map_err(|e| format!("open: {e}"))?;
    let ranges: Vec<(u64, u64)> = if size <= 256 * MIB {
        vec![(0, size)]
    } else {
        let mut r = Vec::new();
        let mut pos = 0;
        let map = data_map(expected).map_err(|e| format!("expected SEEK_DATA: {e}"))?;
        let sample = |r: &mut Vec<(u64, u64)>, from: u64, to: u64| {
            let s = 65536;
            r.push((from, (from + s).min(to)));
            let mid = from + (to - from) / 2;
            r.push((mid, (mid + s).min(to)));
            r.push((to.saturating_sub(s).max(from), to));
        };
        for (s, e) in map {
            if s > pos {
                sample(&mut r, pos, s);
            }
            r.push((s, e.min(size)));
            pos = e;
        }
        if pos < size {
            sample(&mut r, pos, size);
        }
        r
    };
    let mut ba = vec![0u8; MIB as usize];
    let mut bb = vec![0u8; MIB as usize];
    for (start, end) in ranges {
        a.seek(SeekFrom::Start(start)).unwrap();
        b.seek(SeekFrom::Start(start))
            .map_err(|e| format!("seek: {e}"))?;
        let mut pos = start;
        while pos < end {
            let n = (end - pos).min(MIB) as usize;
            a.read_exact(&mut ba[..n])
                .map_err(|e| format!("read expected at {pos}: {e}"))?;
            read_full(&mut b, &mut bb[..n]).map_err(|e| format!("read at {pos}: {e}"))?;
            if ba[..n] != bb[..n] {
                let i = ba[..n]
                    .iter()
                    .zip(&bb[..n])
                    .position(|(x, y)| x != y)
                    .unwrap();
                return Err(format!(
                    "contents differ at byte {} (expected {:#04x}, got {:#04x})",
                    pos + i as u64,
                    ba[i],
                    bb[i]
                ));
            }
            pos += n as u64;
        }
    }
    // Nothing past the end.
    let mut extra = [0u8; 16];
    b.seek(SeekFrom::Start(size))
        .map_err(|e| format!("seek: {e}"))?;
    match b.read(&mut extra) {
        Ok(0) => Ok(()),
        Ok(n) => Err(format!("{n} bytes readable past the size {size}")),
        Err(e) => Err(format!("read at the end: {e}")),
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match f.read(&mut buf[done..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("short read: {done} of {} bytes", buf.len()),
                ));
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn kind_name(kind: u32) -> &'static str {
    match kind {
        libc::S_IFREG => "file",
        libc::S_IFDIR => "dir",
        libc::S_IFLNK => "symlink",
        libc::S_IFCHR => "chardev",
        libc::S_IFBLK => "blockdev",
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "socket",
        _ => "unknown",
    }
}

fn d_type_kind(ft: fs::FileType) -> u32 {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        libc::S_IFDIR
    } else if ft.is_symlink() {
        libc::S_IFLNK
    } else if ft.is_file() {
        libc::S_IFREG
    } else if ft.is_char_device() {
        libc::S_IFCHR
    } else if ft.is_block_device() {
        libc::S_IFBLK
    } else if ft.is_fifo() {
        libc::S_IFIFO
    } else if ft.is_socket() {
        libc::S_IFSOCK
    } else {
        0
    }
}

/// What a comparison found.
#[derive(Default)]
pub struct Report {
    pub problems: Vec<String>,
    pub entries: u64,
    pub bytes: u64,
}

impl Report {
    /// Panics listing the differences (the first 60), if any.
    pub fn assert_clean(&self, what: &str) {
        if self.problems.is_empty() {
            return;
        }
        if self.problems.len() > 60 {
            let all: Vec<&str> = self
                .problems
                .iter()
                .take(1000)
                .map(String::as_str)
                .collect();
            eprintln!(
                "{what}: the first 1000 differences:\n  {}",
                all.join("\n  ")
            );
        }
        let shown: Vec<&str> = self.problems.iter().take(60).map(String::as_str).collect();
        panic!(
            "{what}: {} differences in {} entries:\n  {}{}",
            self.problems.len(),
            self.entries,
            shown.join("\n  "),
            if self.problems.len() > 60 {
                "\n  ..."
            } else {
                ""
            }
        );
    }
}

struct Cmp {
    truth: Truth,
    report: Report,
    /// Source inode → our inode, to check hard links.
    links: HashMap<(u32, u32, u64), u64>,
}

/// Compares the tree `got` (our mount) with the tree `expected` held to `truth`.
pub fn compare_trees(expected: &Path, got: &Path, truth: Truth) -> Report {
    let mut c = Cmp {
        truth,
        report: Report::default(),
        links: HashMap::new(),
    };
    c.entry(expected, got, Path::new("/"), true);
    c.report
}

fn time_in_mkfs_range(t: Ts) -> bool {
    (0..(1i64 << 31)).contains(&t.0)
}

impl Cmp {
    fn problem(&mut self, rel: &Path, what: String) {
        self.report
            .problems
            .push(format!("{}: {what}", rel.display()));
    }

    fn entry(&mut self, exp: &Path, got: &Path, rel: &Path, is_root: bool) {
        self.report.entries += 1;
        let e = match statx(exp) {
            Ok(m) => m,
            Err(err) => return self.problem(rel, format!("expected side: stat failed: {err}")),
        };
        let g = match statx(got) {
            Ok(m) => m,
            Err(err) => return self.problem(rel, format!("stat failed: {err}")),
        };
        if e.kind() != g.kind() {
            return self.problem(
                rel,
                format!(
                    "type: expected {}, got {}",
                    kind_name(e.kind()),
                    kind_name(g.kind())
                ),
            );
        }
        self.attrs(rel, &e, &g, is_root);
        self.xattrs(exp, got, rel);
        match e.kind() {
            libc::S_IFREG => self.file(exp, got, rel, &e),
            libc::S_IFLNK => match (fs::read_link(exp), fs::read_link(got)) {
                (Ok(a), Ok(b)) if a == b => {}
                (Ok(a), Ok(b)) => self.problem(
                    rel,
                    format!(
                        "link target: expected {:?} ({} bytes), got {:?} ({} bytes)",
                        a,
                        a.as_os_str().len(),
                        b,
                        b.as_os_str().len()
                    ),
                ),
                (_, Err(err)) => self.problem(rel, format!("readlink failed: {err}")),
                (Err(err), _) => self.problem(rel, format!("expected side: readlink: {err}")),
            },
            libc::S_IFDIR => self.dir(exp, got, rel, is_root),
            _ => {}
        }
    }

    fn attrs(&mut self, rel: &Path, e: &Meta, g: &Meta, is_root: bool) {
        let kernel = self.truth == Truth::Kernel;
        // mke2fs -d and cp -a decide the root directory's attributes themselves.
        if is_root && !kernel {
            return;
        }
        let mut diffs = Vec::new();
        let mut cmp = |name: &str, a: String, b: String| {
            if a != b {
                diffs.push(format!("{name}: expected {a}, got {b}"));
            }
        };
        cmp("mode", format!("{:o}", e.mode), format!("{:o}", g.mode));
        cmp("uid", e.uid.to_string(), g.uid.to_string());
        cmp("gid", e.gid.to_string(), g.gid.to_string());
        if e.kind() != libc::S_IFDIR || kernel {
            cmp("size", e.size.to_string(), g.size.to_string());
        }
        cmp("nlink", e.nlink.to_string(), g.nlink.to_string());
        if matches!(e.kind(), libc::S_IFCHR | libc::S_IFBLK) {
            cmp("rdev", format!("{:?}", e.rdev), format!("{:?}", g.rdev));
        }
        match self.truth {
            Truth::Kernel => {
                cmp("st_ino", e.ino.to_string(), g.ino.to_string());
                cmp("st_blocks", e.blocks.to_string(), g.blocks.to_string());
                cmp("rdev", format!("{:?}", e.rdev), format!("{:?}", g.rdev));
                cmp("atime", e.atime.to_string(), g.atime.to_string());
                cmp("mtime", e.mtime.to_string(), g.mtime.to_string());
                cmp("ctime", e.ctime.to_string(), g.ctime.to_string());
                if let (Some(a), Some(b)) = (e.btime, g.btime) {
                    cmp("btime", a.to_string(), b.to_string());
                }
            }
            Truth::CopiedSource => {
                // cp -a sets the times of directories after filling them; symlink times too.
                cmp("mtime", e.mtime.to_string(), g.mtime.to_string());
            }
            Truth::MkfsSource => {
                // mke2fs -d copies seconds only, and only what fits 32 bits.
                if time_in_mkfs_range(e.mtime) {
                    cmp(
                        "mtime (seconds)",
                        e.mtime.0.to_string(),
                        g.mtime.0.to_string(),
                    );
                }
            }
        }
        for d in diffs {
            self.problem(rel, d);
        }
        // Hard links: paths sharing a source inode must share ours.
        if self.truth != Truth::Kernel && e.kind() != libc::S_IFDIR && e.nlink > 1 {
            let key = (e.dev.0, e.dev.1, e.ino);
            match self.links.get(&key) {
                None => {
                    self.links.insert(key, g.ino);
                }
                Some(&ino) if ino == g.ino => {}
                Some(&ino) => self.problem(
                    rel,
                    format!(
                        "hard link: expected inode {ino} (shared with another path), got {}",
                        g.ino
                    ),
                ),
            }
        }
    }

    fn xattrs(&mut self, exp: &Path, got: &Path, rel: &Path) {
        let (a, b) = match (xattrs(exp), xattrs(got)) {
            (Ok(a), Ok(b)) => (a, b),
            (_, Err(err)) => return self.problem(rel, format!("xattrs: {err}")),
            (Err(err), _) => return self.problem(rel, format!("expected side xattrs: {err}")),
        };
        let names = |m: &BTreeMap<Vec<u8>, Vec<u8>>| -> BTreeSet<String> {
            m.keys()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect()
        };
        if names(&a) != names(&b) {
            return self.problem(
                rel,
                format!("xattr names: expected {:?}, got {:?}", names(&a), names(&b)),
            );
        }
        for (k, v) in &a {
            let w = &b[k];
            if v != w {
                self.problem(
                    rel,
                    format!(
                        "xattr {}: expected {} bytes {:02x?}, got {} bytes {:02x?}",
                        String::from_utf8_lossy(k),
                        v.len(),
                        &v[..v.len().min(32)],
                        w.len(),
                        &w[..w.len().min(32)]
                    ),
                );
            }
        }
    }

    fn file(&mut self, exp: &Path, got: &Path, rel: &Path, e: &Meta) {
        self.report.bytes += e.size;
        if let Err(err) = compare_contents(exp, got, e.size) {
            self.problem(rel, err);
        }
        if self.truth == Truth::Kernel && e.size > 0 {
            match (data_map(exp), data_map(got)) {
                (Ok(a), Ok(b)) if a == b => {}
                (Ok(a), Ok(b)) => self.problem(
                    rel,
                    format!("SEEK_DATA/SEEK_HOLE segments: expected {a:?}, got {b:?}"),
                ),
                (_, Err(err)) => self.problem(rel, format!("SEEK_DATA/SEEK_HOLE: {err}")),
                (Err(err), _) => self.problem(rel, format!("expected side SEEK_DATA: {err}")),
            }
        }
    }

    fn dir(&mut self, exp: &Path, got: &Path, rel: &Path, is_root: bool) {
        let list = |p: &Path| -> io::Result<BTreeMap<OsString, u32>> {
            let mut m = BTreeMap::new();
            for e in fs::read_dir(p)? {
                let e = e?;
                m.insert(e.file_name(), d_type_kind(e.file_type()?));
            }
            Ok(m)
        };
        let mut a = match list(exp) {
            Ok(a) => a,
            Err(err) => return self.problem(rel, format!("expected side readdir: {err}")),
        };
        let b = match list(got) {
            Ok(b) => b,
            Err(err) => return self.problem(rel, format!("readdir failed: {err}")),
        };
        if is_root && self.truth != Truth::Kernel {
            // The image has lost+found; the source does not.
            if !b.contains_key(OsStr::new("lost+found")) {
                self.problem(rel, "lost+found missing".into());
            }
            a.insert("lost+found".into(), libc::S_IFDIR);
        }
        let missing: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).collect();
        let extra: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).collect();
        if !missing.is_empty() || !extra.is_empty() {
            self.problem(
                rel,
                format!(
                    "readdir names: {} missing {:?}, {} unexpected {:?} (of {} expected)",
                    missing.len(),
                    &missing[..missing.len().min(5)],
                    extra.len(),
                    &extra[..extra.len().min(5)],
                    a.len()
                ),
            );
        }
        for (name, kind) in &a {
            if is_root && self.truth != Truth::Kernel && name == "lost+found" {
                continue;
            }
            let Some(gkind) = b.get(name) else { continue };
            let child_rel = rel.join(name);
            if gkind != kind {
                self.problem(
                    &child_rel,
                    format!(
                        "readdir d_type: expected {}, got {}",
                        kind_name(*kind),
                        kind_name(*gkind)
                    ),
                );
            }
            self.entry(&exp.join(name), &got.join(name), &child_rel, false);
        }
    }
}

/// statvfs of a mounted file system.
pub fn statvfs(p: &Path) -> libc::statvfs {
    // SAFETY: plain data filled by the kernel.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and output buffer.
    let rc = unsafe { libc::statvfs(cstr(p).as_ptr(), &mut st) };
    check(rc, "statvfs", p);
    st
}

/// statfs through our mount must equal the kernel's for the same image.
pub fn compare_statfs(kernel: &Path, ours: &Path) -> Vec<String> {
    let k = statvfs(kernel);
    let o = statvfs(ours);
    let mut out = Vec::new();
    let fields: [(&str, u64, u64); 8] = [
        ("f_bsize", k.f_bsize, o.f_bsize),
        ("f_frsize", k.f_frsize, o.f_frsize),
        ("f_blocks", k.f_blocks, o.f_blocks),
        ("f_bfree", k.f_bfree, o.f_bfree),
        ("f_bavail", k.f_bavail, o.f_bavail),
        ("f_files", k.f_files, o.f_files),
        ("f_ffree", k.f_ffree, o.f_ffree),
        ("f_namemax", k.f_namemax, o.f_namemax),
    ];
    for (name, a, b) in fields {
        if a != b {
            out.push(format!("statfs {name}: kernel {a}, ours {b}"));
        }
    }
    out
}

/// Every kind of write through `mnt` must fail with EROFS: returns the attempts that did not.
/// `file` is an existing regular file and `dir` an existing empty directory, relative to `mnt`.
pub fn writes_not_refused(mnt: &Path, file: &str, dir: &str) -> Vec<String> {
    let f = mnt.join(file);
    let d = mnt.join(dir);
    let attempts: Vec<(&str, io::Result<()>)> = vec![
        (
            "create a file",
            File::create(mnt.join("new-file")).map(drop),
        ),
        (
            "open an existing file for writing",
            OpenOptions::new().write(true).open(&f).map(drop),
        ),
        (
            "open an existing file with O_TRUNC",
            OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&f)
                .map(drop),
        ),
        ("mkdir", fs::create_dir(mnt.join("new-dir"))),
        ("unlink", fs::remove_file(&f)),
        ("rmdir", fs::remove_dir(&d)),
        ("rename", fs::rename(&f, mnt.join("renamed"))),
        (
            "symlink",
            std::os::unix::fs::symlink("x", mnt.join("new-link")),
        ),
        ("link", fs::hard_link(&f, mnt.join("new-hard-link"))),
        (
            "chmod",
            fs::set_permissions(&f, fs::Permissions::from_mode(0o600)),
        ),
        ("truncate", truncate(&f)),
        ("setxattr", try_setxattr(&f)),
    ];
    let mut wrong = Vec::new();
    for (what, r) in attempts {
        match r {
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => {}
            Err(e) => wrong.push(format!("{what}: expected EROFS, got {e}")),
            Ok(()) => wrong.push(format!("{what}: expected EROFS, it succeeded")),
        }
    }
    wrong
}

fn truncate(p: &Path) -> io::Result<()> {
    // SAFETY: valid path.
    if unsafe { libc::truncate(cstr(p).as_ptr(), 1) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn try_setxattr(p: &Path) -> io::Result<()> {
    let name = CString::new("user.new").unwrap();
    // SAFETY: valid path, name and a 1-byte value.
    let rc =
        unsafe { libc::lsetxattr(cstr(p).as_ptr(), name.as_ptr(), b"v".as_ptr().cast(), 1, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
