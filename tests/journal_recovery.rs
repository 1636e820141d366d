//! Journal recovery against the real thing: the Linux kernel writes an ext4 image through a loop
//! mount, is shut down mid-flight (`xfs_io -x -c 'shutdown -f'`: the log is flushed, then the
//! file system stops, so the journal needs recovery), and the image is replayed twice — once by
//! e2fsck (the reference), once by `journal::recovery::recover`. Then:
//!
//! * the two replayed images must be identical block for block, journal superblock included,
//!   except the primary ext4 superblock (e2fsck's `-E journal_only` replay is the reference: it
//!   replays and fixes nothing else);
//! * `e2fsck -fn` must say the same about both, and be clean;
//! * `e2fsck -fy` on ours must find no journal to replay and make exactly the fixes it makes on
//!   the reference after its own replay;
//! * the kernel must mount both and show the same tree, and every byte that was synced before
//!   the crash must be there.
//!
//! Cases: 4 KiB and 1 KiB blocks, with metadata_csum (journal csum v3) and without (no journal
//! checksums, and the v1 crc32 of `-o journal_checksum`); a 1 MiB journal whose live log wraps
//! around its end; freed-and-reused metadata so revoke records are in the log; and a fast-commit
//! journal, which recovery must refuse.
//!
//! Needs root, loop devices, e2fsprogs and xfs_io (xfsprogs): without them the tests fail with a
//! message naming what is missing.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::hash::{DefaultHasher, Hasher};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use vhost_ext4::blockdev::{BlockDevice, FileDevice, MemDevice};
use vhost_ext4::journal::recovery::{RecoveryReport, recover, scan_log};
use vhost_ext4::ondisk::csum::crc32c_raw;
use vhost_ext4::ondisk::jbd2::{JournalSuperblock, feature_set_names};

// ---------------------------------------------------------------------------------------------
// Facilities

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/bin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Fails (never skips) when the machine lacks something these tests need.
fn require_facilities() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "journal recovery tests must run as root: they loop-mount ext4 images with the kernel"
    );
    assert!(
        Path::new("/dev/loop-control").exists(),
        "/dev/loop-control is missing: loop devices are needed to let the kernel write the test images (modprobe loop)"
    );
    let fss = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    assert!(
        fss.lines().any(|l| l.trim_end().ends_with("ext4")),
        "the kernel has no ext4 driver (/proc/filesystems lists no ext4): modprobe ext4"
    );
    for (tool, pkg) in [
        ("mke2fs", "e2fsprogs"),
        ("e2fsck", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
        ("dumpe2fs", "e2fsprogs"),
        ("xfs_io", "xfsprogs"),
        ("mount", "mount"),
        ("umount", "mount"),
    ] {
        assert!(
            which(tool).is_some(),
            "`{tool}` is not installed: install {pkg} (apt-get install {pkg})"
        );
    }
}

fn run(cmd: &mut Command) -> Output {
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

fn run_any(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Images and mounts

#[derive(Clone, Copy, Debug)]
struct Variant {
    name: &'static str,
    block_size: u32,
    metadata_csum: bool,
    /// `-J size=` in MiB.
    journal_mib: Option<u32>,
    extra_features: &'static str,
    mount_opts: &'static str,
}

fn mkfs(img: &Path, v: &Variant) {
    let f = fs::File::create(img).unwrap();
    f.set_len(64 << 20).unwrap();
    drop(f);
    let mut features = String::from(if v.metadata_csum {
        "metadata_csum"
    } else {
        "^metadata_csum"
    });
    if !v.extra_features.is_empty() {
        features.push(',');
        features.push_str(v.extra_features);
    }
    let mut cmd = Command::new("mke2fs");
    cmd.args(["-q", "-F", "-t", "ext4", "-b"])
        .arg(v.block_size.to_string())
        .args(["-O", &features]);
    if let Some(j) = v.journal_mib {
        cmd.arg("-J").arg(format!("size={j}"));
    }
    // Pin the hash seed and UUID-independent behaviour as far as mke2fs allows.
    cmd.args(["-E", "lazy_itable_init=0,lazy_journal_init=0"]);
    cmd.arg(img);
    run(&mut cmd);
}

/// A kernel loop mount, unmounted on drop (so a failing test leaves nothing mounted).
struct KernelMount {
    dir: PathBuf,
    mounted: bool,
}

impl KernelMount {
    fn new(img: &Path, dir: &Path, opts: &str) -> KernelMount {
        fs::create_dir_all(dir).unwrap();
        let mut o = String::from("loop");
        if !opts.is_empty() {
            o.push(',');
            o.push_str(opts);
        }
        // Loop devices are shared with every other test on the machine: setting one up can
        // lose a race, so try a few times.
        let mut last = None;
        for _ in 0..5 {
            let out = run_any(
                Command::new("mount")
                    .args(["-t", "ext4", "-o", &o])
                    .arg(img)
                    .arg(dir),
            );
            if out.status.success() {
                return KernelMount {
                    dir: dir.to_path_buf(),
                    mounted: true,
                };
            }
            last = Some(out);
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let out = last.unwrap();
        panic!(
            "mount -o {o} {} {} failed: {}\n{}",
            img.display(),
            dir.display(),
            text(&out.stdout),
            text(&out.stderr)
        );
    }

    /// Unmount, retrying: a process forked by another test thread can hold a file of this
    /// mount for a moment (until its exec closes it).
    fn try_umount(&mut self) -> bool {
        for _ in 0..20 {
            let ok = Command::new("umount")
                .arg(&self.dir)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                self.mounted = false;
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        false
    }

    fn umount(&mut self) {
        if self.mounted && !self.try_umount() {
            run(Command::new("umount").arg(&self.dir));
            self.mounted = false;
        }
    }

    /// Shut the file system down after flushing its log, as a crash right after a commit.
    fn crash(&mut self, flush_log: bool) {
        let cmd = if flush_log { "shutdown -f" } else { "shutdown" };
        run(Command::new("xfs_io")
            .args(["-x", "-c", cmd])
            .arg(&self.dir));
        self.umount();
    }
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        if self.mounted && !self.try_umount() {
            // Detach rather than leave the mount behind.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

fn dumpe2fs_header(img: &Path) -> String {
    text(&run(Command::new("dumpe2fs").arg("-h").arg(img)).stdout)
}

fn needs_recovery(img: &Path) -> bool {
    dumpe2fs_header(img)
        .lines()
        .any(|l| l.starts_with("Filesystem features:") && l.contains("needs_recovery"))
}

/// The journal inode's blocks, as debugfs lists them.
fn journal_blocks(img: &Path) -> Vec<u64> {
    let out = run(Command::new("debugfs").args(["-R", "blocks <8>"]).arg(img));
    let v: Vec<u64> = text(&out.stdout)
        .split_whitespace()
        .map(|w| {
            w.parse()
                .unwrap_or_else(|_| panic!("debugfs blocks <8>: unexpected word {w:?}"))
        })
        .collect();
    assert!(!v.is_empty(), "debugfs listed no journal blocks");
    v
}

fn fs_block_size(img: &[u8]) -> u32 {
    let log = u32::from_le_bytes(img[1024 + 24..1024 + 28].try_into().unwrap());
    1024 << log
}

/// Clear EXT4_FEATURE_INCOMPAT_RECOVER and refresh the superblock checksum, as the engine does
/// after its replay.
fn clear_recover_flag(dev: &dyn BlockDevice) {
    let mut sb = vec![0u8; 1024];
    dev.read_at(&mut sb, 1024).unwrap();
    let incompat = u32::from_le_bytes(sb[0x60..0x64].try_into().unwrap());
    assert!(incompat & 0x4 != 0, "the RECOVER flag was not set");
    sb[0x60..0x64].copy_from_slice(&(incompat & !0x4).to_le_bytes());
    let ro_compat = u32::from_le_bytes(sb[0x64..0x68].try_into().unwrap());
    if ro_compat & 0x400 != 0 {
        let c = crc32c_raw(!0, &sb[..0x3FC]);
        sb[0x3FC..0x400].copy_from_slice(&c.to_le_bytes());
    }
    dev.write_at(&sb, 1024).unwrap();
    dev.flush().unwrap();
}

fn replay_ours(img: &Path) -> RecoveryReport {
    let jb = journal_blocks(img);
    let bs = fs_block_size(&fs::read(img).unwrap()[..2048]);
    // One open for both steps: reopening could race with a fork in another test thread that
    // still holds the image lock's file description.
    let dev = FileDevice::open(img, false).unwrap();
    let r = recover(&dev, bs, &jb).unwrap_or_else(|e| panic!("recover failed: {e}"));
    clear_recover_flag(&dev);
    r
}

/// e2fsck in `dir` on the image named `name` there, so outputs of different copies compare.
fn e2fsck(dir: &Path, name: &str, args: &[&str]) -> (i32, String) {
    let out = run_any(Command::new("e2fsck").args(args).arg(name).current_dir(dir));
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code & 8 == 0,
        "e2fsck {args:?} failed to run ({code}):\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    (code, text(&out.stdout))
}

/// Journal superblock fields that matter after recovery.
fn journal_sb_fields(img: &Path) -> (u32, u32, i32) {
    let jb = journal_blocks(img);
    let data = fs::read(img).unwrap();
    let bs = fs_block_size(&data[..2048]) as usize;
    let off = jb[0] as usize * bs;
    let be = |o: usize| u32::from_be_bytes(data[off + o..off + o + 4].try_into().unwrap());
    (be(0x1C), be(0x18), be(0x20) as i32)
}

/// Blocks at which two images differ.
fn differing_blocks(a: &Path, b: &Path, bs: usize) -> Vec<u64> {
    let a = fs::read(a).unwrap();
    let b = fs::read(b).unwrap();
    assert_eq!(a.len(), b.len());
    a.chunks(bs)
        .zip(b.chunks(bs))
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(i, _)| i as u64)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Trees

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let path = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {name} on {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

fn remove_xattr(p: &Path, name: &str) {
    let path = CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings.
    let rc = unsafe { libc::lremovexattr(path.as_ptr(), n.as_ptr()) };
    assert_eq!(rc, 0, "removexattr {name} on {}", p.display());
}

fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let path = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 65536];
    // SAFETY: valid path and buffer.
    let n = unsafe { libc::llistxattr(path.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0, "listxattr {}", p.display());
    let mut out = BTreeMap::new();
    for name in names[..n as usize]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
    {
        let cname = CString::new(name).unwrap();
        let mut v = vec![0u8; 65536];
        // SAFETY: valid strings and buffer.
        let m = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                cname.as_ptr(),
                v.as_mut_ptr().cast(),
                v.len(),
            )
        };
        assert!(m >= 0, "getxattr on {}", p.display());
        v.truncate(m as usize);
        out.insert(text(name), v);
    }
    out
}

/// Every entry under `root`: type, mode, owner, size, links, times, target or content hash,
/// xattrs. Inode numbers are left out (they are equal anyway, but say nothing more).
fn listing(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if rel == "lost+found" {
                continue;
            }
            let m = fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let what = if ft.is_symlink() {
                format!("-> {}", fs::read_link(&p).unwrap().display())
            } else if ft.is_file() {
                let mut h = DefaultHasher::new();
                h.write(&fs::read(&p).unwrap());
                format!("data {:016x}", h.finish())
            } else {
                String::new()
            };
            out.insert(
                rel,
                format!(
                    "mode {:o} uid {} gid {} size {} nlink {} mtime {}.{} ctime {}.{} {what} xattrs {:?}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    if ft.is_dir() { 0 } else { m.size() },
                    m.nlink(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec(),
                    xattrs(&p)
                ),
            );
            if ft.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn diff_listings(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    let mut d = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => d.push(format!("only in reference: {k}")),
            Some(w) if w != v => d.push(format!("{k}:\n  reference {v}\n  ours      {w}")),
            _ => {}
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        d.push(format!("only in ours: {k}"));
    }
    d
}

/// Deterministic bytes.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

fn write_file(p: &Path, data: &[u8], fsync: bool) {
    let mut f = fs::File::create(p).unwrap();
    std::io::Write::write_all(&mut f, data).unwrap();
    if fsync {
        f.sync_all().unwrap();
    }
}

fn sync_all() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
}

/// Files whose content must survive the crash: (path relative to the mount, bytes).
type Durable = Vec<(String, Vec<u8>)>;

/// Creates, writes, xattrs, links, deletes and renames, in two phases around a `sync`, with
/// some metadata freed in the second phase and its blocks reused (so the log holds revoke
/// records), some files fsynced and some not.
fn workload(mnt: &Path, bs: usize) -> Durable {
    let mut durable: Durable = Vec::new();
    // Phase 1.
    for d in ["keep", "big-dir", "doomed", "xattr", "frag"] {
        fs::create_dir(mnt.join(d)).unwrap();
    }
    for i in 0..40u64 {
        let rel = format!("keep/file-{i:03}");
        let data = content(i, (i as usize * 977) % (5 * bs) + 1);
        write_file(&mnt.join(&rel), &data, false);
        durable.push((rel, data));
    }
    // A directory of many blocks (an htree) and one that will be removed whole.
    for i in 0..300u64 {
        let name = format!("big-dir/entry-with-a-rather-long-name-{i:05}");
        write_file(&mnt.join(&name), &content(1000 + i, 10), false);
        let name = format!("doomed/another-long-directory-entry-name-{i:05}");
        write_file(&mnt.join(&name), &content(2000 + i, 100), false);
    }
    // Fragmented files: one block every other block, so extent trees need their own blocks.
    for f in 0..4u64 {
        let p = mnt.join(format!("frag/sparse-{f}"));
        let file = fs::File::create(&p).unwrap();
        for k in 0..200u64 {
            std::os::unix::fs::FileExt::write_all_at(
                &file,
                &content(3000 + k, bs),
                2 * k * bs as u64,
            )
            .unwrap();
        }
    }
    // Xattrs in the inode and in blocks of their own.
    for i in 0..20u64 {
        let p = mnt.join(format!("xattr/x-{i}"));
        write_file(&p, b"x", false);
        set_xattr(&p, "user.small", &content(4000 + i, 20));
        set_xattr(&p, "user.big", &content(5000 + i, bs / 2 + 100));
    }
    std::os::unix::fs::symlink("keep/file-001", mnt.join("short-link")).unwrap();
    std::os::unix::fs::symlink("x".repeat(200), mnt.join("long-link")).unwrap();
    fs::hard_link(mnt.join("keep/file-002"), mnt.join("hard-link")).unwrap();
    fs::set_permissions(mnt.join("keep/file-003"), fs::Permissions::from_mode(0o600)).unwrap();
    sync_all();

    // Phase 2: fresh metadata, committed (fsync) but not written home, so the transactions
    // holding it stay in the log...
    fs::create_dir(mnt.join("fresh")).unwrap();
    for i in 0..200u64 {
        let name = format!("fresh/short-lived-entry-with-a-long-name-{i:05}");
        write_file(&mnt.join(&name), &content(8000 + i, 10), false);
    }
    for i in 0..10u64 {
        let p = mnt.join(format!("xattr/fresh-{i}"));
        write_file(&p, b"y", false);
        set_xattr(&p, "user.big", &content(9000 + i, bs / 2 + 100));
    }
    {
        let file = fs::File::create(mnt.join("frag/fresh")).unwrap();
        for k in 0..100u64 {
            std::os::unix::fs::FileExt::write_all_at(&file, &content(k, bs), 2 * k * bs as u64)
                .unwrap();
        }
        file.sync_all().unwrap();
    }
    // ... then freed, with metadata of phase 1 (directory blocks, extent tree blocks, xattr
    // blocks): revoke records...
    fs::remove_dir_all(mnt.join("fresh")).unwrap();
    fs::remove_file(mnt.join("frag/fresh")).unwrap();
    for i in 0..10u64 {
        fs::remove_file(mnt.join(format!("xattr/fresh-{i}"))).unwrap();
    }
    fs::remove_dir_all(mnt.join("doomed")).unwrap();
    for f in 0..2 {
        fs::remove_file(mnt.join(format!("frag/sparse-{f}"))).unwrap();
    }
    for i in 0..10u64 {
        remove_xattr(&mnt.join(format!("xattr/x-{i}")), "user.big");
    }
    for i in 0..10u64 {
        let rel = format!("keep/file-{i:03}");
        if i % 3 == 0 {
            fs::remove_file(mnt.join(&rel)).unwrap();
            durable.retain(|(r, _)| *r != rel);
        }
    }
    fs::rename(mnt.join("keep/file-010"), mnt.join("renamed")).unwrap();
    for d in durable.iter_mut() {
        if d.0 == "keep/file-010" {
            d.0 = "renamed".into();
        }
    }
    // ... commit the frees, then reuse the freed blocks for file data, fsynced.
    fs::File::open(mnt.join("keep"))
        .unwrap()
        .sync_all()
        .unwrap();
    fs::create_dir(mnt.join("reuse")).unwrap();
    for i in 0..60u64 {
        let rel = format!("reuse/data-{i:03}");
        let data = content(6000 + i, 3 * bs + 17);
        write_file(&mnt.join(&rel), &data, true);
        durable.push((rel, data));
    }
    // Unsynced work right before the crash: may or may not survive, identically in both.
    for i in 0..20u64 {
        write_file(
            &mnt.join(format!("reuse/unsynced-{i}")),
            &content(7000 + i, 2 * bs),
            false,
        );
    }
    fs::create_dir(mnt.join("late-dir")).unwrap();
    durable
}

/// Many small transactions (one fsync each) until the live log wraps around the end of the
/// journal; returns the files created.
fn wrap_workload(mnt: &Path, img: &Path, jblocks: &[u64], bs: u32) -> Durable {
    let mut durable: Durable = Vec::new();
    fs::create_dir(mnt.join("small")).unwrap();
    let mut n = 0u64;
    for batch in 0..400 {
        for _ in 0..8 {
            let rel = format!("small/f-{n:05}");
            let data = content(n, 100 + (n as usize * 37) % 3000);
            write_file(&mnt.join(&rel), &data, true);
            durable.push((rel, data));
            if n % 5 == 4 {
                // Deletes too, so blocks get freed and reused.
                let victim = format!("small/f-{:05}", n - 2);
                fs::remove_file(mnt.join(&victim)).unwrap();
                durable.retain(|(r, _)| *r != victim);
            }
            n += 1;
        }
        let dev = FileDevice::open(img, true).unwrap();
        if let Ok(s) = scan_log(&dev, bs, jblocks)
            && s.wraps
            && batch > 4
        {
            eprintln!(
                "log wraps after {n} transactions: start {} end {} ({} transactions in the log)",
                s.start, s.end, s.transactions
            );
            return durable;
        }
    }
    panic!("the live log never wrapped around the journal after {n} fsyncs");
}

// ---------------------------------------------------------------------------------------------
// The check

struct Case {
    variant: Variant,
    wrap: bool,
}

fn run_case(case: Case) -> RecoveryReport {
    require_facilities();
    let v = case.variant;
    let tmp = tempfile::Builder::new()
        .prefix(&format!("vhe-jrec-{}-", v.name))
        .tempdir_in("/tmp")
        .unwrap();
    let work = tmp.path();
    let img = work.join("crashed.img");
    mkfs(&img, &v);
    let jblocks = journal_blocks(&img);
    let bs = v.block_size;

    let mut m = KernelMount::new(&img, &work.join("mnt"), v.mount_opts);
    let durable = if case.wrap {
        wrap_workload(&m.dir, &img, &jblocks, bs)
    } else {
        workload(&m.dir, bs as usize)
    };
    m.crash(true);
    assert!(
        needs_recovery(&img),
        "after the shutdown the image does not need recovery:\n{}",
        dumpe2fs_header(&img)
    );
    // The journal has the checksum flavour this variant is about.
    let jsb = {
        let data = fs::read(&img).unwrap();
        let off = jblocks[0] as usize * bs as usize;
        JournalSuperblock::parse(&data[off..off + 1024]).unwrap()
    };
    let fmt = jsb.format();
    eprintln!(
        "[{}] journal features: {}",
        v.name,
        feature_set_names(jsb.compat(), jsb.incompat(), jsb.ro_compat())
    );
    assert_eq!(fmt.csum_v3(), v.metadata_csum);
    assert_eq!(
        fmt.compat_checksum(),
        v.mount_opts.contains("journal_checksum")
    );
    let before = {
        let dev = FileDevice::open(&img, true).unwrap();
        scan_log(&dev, bs, &jblocks).unwrap()
    };
    eprintln!("[{}] log before recovery: {before:?}", v.name);
    assert!(
        before.transactions > 0,
        "the crashed log holds no transaction"
    );
    if case.wrap {
        assert!(before.wraps, "the crashed log does not wrap: {before:?}");
    }

    // Three copies: e2fsck's journal-only replay, e2fsck's full repair, ours.
    let dirs: Vec<PathBuf> = ["ref-journal", "ref-full", "ours", "via-mount"]
        .iter()
        .map(|d| work.join(d))
        .collect();
    for d in &dirs {
        fs::create_dir(d).unwrap();
        fs::copy(&img, d.join("img")).unwrap();
    }
    let (ref_j, ref_full, ours) = (&dirs[0], &dirs[1], &dirs[2]);
    mount_replays(&dirs[3].join("img"), &work.join("m-via"), &durable, v.name);
    if !case.wrap {
        assert!(before.revoke_records > 0, "no revoke records in the log");
    }

    let (code, out) = e2fsck(ref_j, "img", &["-E", "journal_only", "-y"]);
    assert!(code <= 1, "e2fsck journal-only replay: {code}\n{out}");
    let report = replay_ours(&ours.join("img"));
    eprintln!("[{}] {report:?}", v.name);
    assert!(report.recovery_was_needed);
    assert_eq!(report.transactions_replayed, before.transactions);
    assert!(report.blocks_replayed > 0);
    assert_eq!(report.failed_commit, None);
    if !case.wrap {
        assert!(report.blocks_revoked > 0, "no logged block was revoked");
    }
    assert!(!needs_recovery(&ours.join("img")));
    assert!(!needs_recovery(&ref_j.join("img")));

    // Block for block, the replayed images agree but for the primary ext4 superblock (e2fsck
    // updates its counters and times): every replayed block, and the journal superblock too.
    let sb_block = if bs == 1024 { 1 } else { 0 };
    let diff = differing_blocks(&ref_j.join("img"), &ours.join("img"), bs as usize);
    eprintln!(
        "[{}] blocks differing from e2fsck's replay: {diff:?}",
        v.name
    );
    assert!(
        diff.iter().all(|&b| b == sb_block),
        "our replay differs from e2fsck's in blocks {diff:?} (journal superblock at {})",
        jblocks[0]
    );
    // Both journals restart empty, at the same transaction id.
    let (start_ref, seq_ref, _) = journal_sb_fields(&ref_j.join("img"));
    let (start_ours, seq_ours, _) = journal_sb_fields(&ours.join("img"));
    assert_eq!((start_ref, start_ours), (0, 0));
    assert_eq!(seq_ours, report.next_sequence);
    assert_eq!(seq_ours, seq_ref, "journals restart at different ids");

    // e2fsck -fn says the same about both, and finds them clean.
    let (code_ref, out_ref) = e2fsck(ref_j, "img", &["-fn"]);
    let (code_ours, out_ours) = e2fsck(ours, "img", &["-fn"]);
    assert_eq!(
        (code_ours, &out_ours),
        (code_ref, &out_ref),
        "e2fsck -fn differs: ours\n{out_ours}\nreference\n{out_ref}"
    );
    assert_eq!(
        code_ours, 0,
        "e2fsck -fn on the replayed image:\n{out_ours}"
    );

    // e2fsck -fy: the reference replays; ours must have nothing left to replay and need the
    // same fixes.
    let (code_full, out_full) = e2fsck(ref_full, "img", &["-fy"]);
    assert!(
        out_full.contains("recovering journal"),
        "e2fsck did not replay the reference:\n{out_full}"
    );
    let (code_fy, out_fy) = e2fsck(ours, "img", &["-fy"]);
    assert!(
        !out_fy.contains("journal"),
        "e2fsck -fy still found journal work on ours:\n{out_fy}"
    );
    let strip = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !l.contains("recovering journal"))
            .map(String::from)
            .collect()
    };
    assert_eq!(
        strip(&out_fy),
        strip(&out_full),
        "e2fsck -fy made different fixes"
    );
    assert!(code_fy <= 1 && code_full <= 1, "{code_fy} {code_full}");

    // The kernel shows the same tree in both, with every synced byte.
    let km_ref = KernelMount::new(&ref_full.join("img"), &work.join("m-ref"), "ro");
    let km_ours = KernelMount::new(&ours.join("img"), &work.join("m-ours"), "ro");
    let l_ref = listing(&km_ref.dir);
    let l_ours = listing(&km_ours.dir);
    let d = diff_listings(&l_ref, &l_ours);
    assert!(d.is_empty(), "trees differ:\n{}", d.join("\n"));
    for (rel, data) in &durable {
        let got = fs::read(km_ours.dir.join(rel))
            .unwrap_or_else(|e| panic!("synced file {rel} lost: {e}"));
        assert!(got == *data, "synced file {rel} has other content");
    }
    eprintln!(
        "[{}] {} entries compared, {} synced files verified",
        v.name,
        l_ours.len(),
        durable.len()
    );
    drop(km_ref);
    drop(km_ours);
    report
}

/// `vhost-ext4 mount` of the crashed image replays the kernel's journal itself: every synced file
/// reads back through our FUSE mount, and after unmounting e2fsck finds the image clean.
fn mount_replays(img: &Path, mnt: &Path, durable: &Durable, name: &str) {
    fs::create_dir_all(mnt).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vhost-ext4"))
        .arg("mount")
        .arg(img)
        .arg(mnt)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting vhost-ext4 mount");
    let mounted = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&format!(" {} ", mnt.display()))
    });
    if !mounted {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!(
            "[{name}] our mount of the crashed image did not come up:\n{}",
            text(&out.stderr)
        );
    }
    for (rel, data) in durable {
        let got = fs::read(mnt.join(rel))
            .unwrap_or_else(|e| panic!("[{name}] synced file {rel} lost after our replay: {e}"));
        assert!(
            got == *data,
            "[{name}] synced file {rel} has other content after our replay"
        );
    }
    // Retried: a process another test thread forks can hold a file of the mount for a moment.
    for _ in 0..20 {
        let ok = Command::new("umount")
            .arg(mnt)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if mnt_is_mounted(mnt) {
        run(Command::new("umount").arg(mnt));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "[{name}] vhost-ext4 mount exited with {:?}: {}",
        out.status,
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("replayed the journal"),
        "[{name}] our mount did not replay: {}",
        text(&out.stderr)
    );
    let dir = img.parent().unwrap();
    let (code, out) = e2fsck(dir, "img", &["-fn"]);
    assert_eq!(
        code, 0,
        "[{name}] e2fsck -fn after our mount replayed the kernel's journal:\n{out}"
    );
}

const V4K_CSUM: Variant = Variant {
    name: "4k-csum",
    block_size: 4096,
    metadata_csum: true,
    // Room for the whole workload, so no checkpoint moves the log tail while it runs.
    journal_mib: Some(16),
    extra_features: "",
    mount_opts: "",
};

#[test]
fn replay_4k_metadata_csum() {
    run_case(Case {
        variant: V4K_CSUM,
        wrap: false,
    });
}

#[test]
fn replay_4k_no_csum() {
    run_case(Case {
        variant: Variant {
            name: "4k-nocsum",
            metadata_csum: false,
            ..V4K_CSUM
        },
        wrap: false,
    });
}

#[test]
fn replay_4k_v1_journal_checksum() {
    run_case(Case {
        variant: Variant {
            name: "4k-v1csum",
            metadata_csum: false,
            mount_opts: "journal_checksum",
            ..V4K_CSUM
        },
        wrap: false,
    });
}

#[test]
fn replay_1k_metadata_csum() {
    run_case(Case {
        variant: Variant {
            name: "1k-csum",
            block_size: 1024,
            ..V4K_CSUM
        },
        wrap: false,
    });
}

#[test]
fn replay_1k_no_csum() {
    run_case(Case {
        variant: Variant {
            name: "1k-nocsum",
            block_size: 1024,
            metadata_csum: false,
            ..V4K_CSUM
        },
        wrap: false,
    });
}

#[test]
fn replay_wrapped_log_1k() {
    for csum in [true, false] {
        let r = run_case(Case {
            variant: Variant {
                name: if csum { "wrap-csum" } else { "wrap-nocsum" },
                block_size: 1024,
                metadata_csum: csum,
                journal_mib: Some(1),
                ..V4K_CSUM
            },
            wrap: true,
        });
        assert!(r.log_end < r.log_start, "{r:?}");
    }
}

/// The loop device behind a kernel mount ("loop3").
fn loop_device_of(mnt: &Path) -> String {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let dir = fs::canonicalize(mnt).unwrap();
    mounts
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?, w.next()?))
        })
        .find(|(_, d)| Path::new(d) == dir)
        .and_then(|(src, _)| src.strip_prefix("/dev/").map(String::from))
        .unwrap_or_else(|| panic!("{} is not mounted", mnt.display()))
}

/// First number on the line of `file` that contains `word`.
fn proc_number(file: &str, word: &str) -> u64 {
    let t = fs::read_to_string(file).unwrap_or_else(|e| panic!("{file}: {e}"));
    t.lines()
        .find(|l| l.contains(word))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{file} has no `{word}` count:\n{t}"))
}

/// Fast commits are logical records only ext4 (or e2fsck) can apply: recovery must refuse a
/// journal holding live ones, and write nothing.
#[test]
fn fast_commit_content_is_refused() {
    require_facilities();
    let v = Variant {
        name: "fast-commit",
        extra_features: "fast_commit",
        ..V4K_CSUM
    };
    let tmp = tempfile::Builder::new()
        .prefix("vhe-jrec-fc-")
        .tempdir_in("/tmp")
        .unwrap();
    let img = tmp.path().join("img");
    // A fast commit can be overtaken by a full commit (the periodic one, or a fallback when a
    // full commit is running): then there is nothing to refuse, and the attempt is repeated.
    let mut attempt = 0;
    loop {
        attempt += 1;
        assert!(
            attempt <= 5,
            "no attempt left a fast commit as the last record"
        );
        mkfs(&img, &v);
        let mut m = KernelMount::new(&img, &tmp.path().join("mnt"), "");
        let loopdev = loop_device_of(&m.dir);
        let fc_info = format!("/proc/fs/ext4/{loopdev}/fc_info");
        let jinfo = format!("/proc/fs/jbd2/{loopdev}-8/info");
        write_file(&m.dir.join("before"), b"full commit", false);
        sync_all();
        let fc0 = proc_number(&fc_info, "commits");
        let t0 = proc_number(&jinfo, "transactions");
        // fsync of a small append is a fast commit; shut down without flushing the log.
        let f = fs::OpenOptions::new()
            .append(true)
            .open(m.dir.join("before"))
            .unwrap();
        std::io::Write::write_all(&mut &f, b" and a fast one").unwrap();
        f.sync_all().unwrap();
        drop(f);
        let fc1 = proc_number(&fc_info, "commits");
        let t1 = proc_number(&jinfo, "transactions");
        m.crash(false);
        if fc1 != fc0 + 1 || t1 != t0 {
            eprintln!(
                "attempt {attempt}: fast commits {fc0} -> {fc1}, full commits {t0} -> {t1}: again"
            );
            continue;
        }
        assert!(needs_recovery(&img), "{}", dumpe2fs_header(&img));
        // Under load the fast commit may still not be the log's last record (a full commit
        // overtook it between the counters and the shutdown): then recovery has nothing to
        // refuse, and the attempt is repeated. Tried on a copy, so the image stays as it was.
        let copy = MemDevice::from_vec(fs::read(&img).unwrap());
        match recover(&copy, 4096, &journal_blocks(&img)) {
            Err(e) => {
                assert_eq!(
                    e,
                    "journal has fast-commit content, which this engine cannot replay; run e2fsck -fy"
                );
                break;
            }
            Ok(_) => eprintln!("attempt {attempt}: the log ends in a full commit: again"),
        }
    }
    let jb = journal_blocks(&img);
    let before = fs::read(&img).unwrap();
    let dev = FileDevice::open(&img, false).unwrap();
    assert!(recover(&dev, 4096, &jb).is_err());
    drop(dev);
    assert!(
        fs::read(&img).unwrap() == before,
        "recover wrote to the image"
    );
    // e2fsck can: the file has its appended bytes afterwards.
    let (code, out) = e2fsck(tmp.path(), "img", &["-fy"]);
    assert!(code <= 1, "{out}");
    let km = KernelMount::new(&img, &tmp.path().join("m2"), "ro");
    assert_eq!(
        fs::read(km.dir.join("before")).unwrap(),
        b"full commit and a fast one"
    );
}

/// Is `mnt` a mount point now (listed in /proc/self/mounts)?
fn mnt_is_mounted(mnt: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let want = mnt.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(want.as_ref()))
}
