//! Helpers shared by the engine's tests: images made by mke2fs, mounting, listing, e2fsck.

use super::*;
use crate::blockdev::FileDevice;
pub(crate) use crate::test_support::e2fsck_clean;
use std::path::Path;
use std::process::Command;

pub(crate) fn mkfs(src: &Path, img: &Path, opts: &[&str], size: &str) {
    // An optional leading "hash=ALG" picks the directory hash through a private mke2fs.conf.
    let (conf, opts) = match opts.first().and_then(|o| o.strip_prefix("hash=")) {
        Some(alg) => {
            let conf = img.with_extension("conf");
            std::fs::write(&conf, format!("[defaults]\n\thash_alg = {alg}\n")).unwrap();
            (Some(conf), &opts[1..])
        }
        None => (None, opts),
    };
    let mut cmd = Command::new("mke2fs");
    if let Some(c) = &conf {
        cmd.env("MKE2FS_CONFIG", c);
    }
    let out = cmd
        .args(["-q", "-F"])
        .args(opts)
        .arg("-d")
        .arg(src)
        .arg(img)
        .arg(size)
        .output()
        .expect("mke2fs (e2fsprogs) is required for these tests");
    assert!(
        out.status.success(),
        "mke2fs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // mke2fs -d writes linear directories; e2fsck -D indexes every directory larger than a block.
    let out = Command::new("e2fsck")
        .args(["-fyD"])
        .arg(img)
        .output()
        .expect("e2fsck is required");
    assert!(
        out.status.code().is_some_and(|c| c <= 1),
        "e2fsck -fyD: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = Command::new("e2fsck")
        .args(["-fn"])
        .arg(img)
        .output()
        .expect("e2fsck is required");
    assert!(
        out.status.success(),
        "e2fsck -fn: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// mke2fs `opts` on `img` of `size`, with nothing in it (e2fsprogs required).
pub(crate) fn mkfs_blank(img: &Path, opts: &[&str], size: &str) {
    let out = Command::new("mke2fs")
        .args(["-q", "-F"])
        .args(opts)
        .arg(img)
        .arg(size)
        .output()
        .expect("mke2fs (e2fsprogs) is required");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) fn mount(img: &Path) -> Fs {
    let dev = FileDevice::open(img, true).unwrap();
    Fs::mount(Arc::new(dev), &MountOptions::default()).unwrap()
}

pub(crate) fn walk(fs: &Fs, dir: Ino) -> Vec<(Vec<u8>, Ino)> {
    let fh = fs.opendir(dir, 0).unwrap();
    let mut v = Vec::new();
    fs.readdir(dir, fh, 0, &mut |e| {
        v.push((e.name.clone(), e.ino));
        true
    })
    .unwrap();
    fs.releasedir(dir, fh);
    v
}

/// Mount writable (the image must be made without a journal).
pub(crate) fn mount_rw(img: &Path) -> Fs {
    let dev = FileDevice::open(img, false).unwrap();
    let fs = Fs::mount(Arc::new(dev), &MountOptions::rw()).unwrap();
    assert!(!fs.is_read_only(), "the image should mount writable");
    fs
}

/// A root caller.
pub(crate) fn ctx() -> Ctx {
    Ctx {
        uid: 0,
        gid: 0,
        pid: 1,
        umask: 0,
    }
}

/// Loop-mount `img` with the kernel at `img`.mnt with `opts` (e.g. "loop,ro"); returns the mountpoint.
/// Mounts are serialized (test threads racing for the same free loop device make mount(8)
/// fail now and then) and a failure is retried a few times before it counts.
pub(crate) fn kernel_mount(img: &Path, opts: &str) -> std::path::PathBuf {
    static LOOP_SETUP: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let mnt = img.with_extension("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut last = String::new();
    for _ in 0..5 {
        let out = {
            let _g = LOOP_SETUP.lock().unwrap_or_else(|e| e.into_inner());
            Command::new("mount")
                .args(["-o", opts])
                .arg(img)
                .arg(&mnt)
                .output()
                .expect("mount(8) is required")
        };
        if out.status.success() {
            return mnt;
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!(
        "the kernel could not mount {} ({opts}): {last} (loop devices and root are required)",
        img.display()
    );
}

/// Unmount, retrying for a while: a child another test thread is forking can hold a copy of
/// a descriptor into the mount until its exec, which makes umount fail with EBUSY.
pub(crate) fn kernel_umount(mnt: &Path) {
    for _ in 0..50 {
        let out = Command::new("umount")
            .arg(mnt)
            .output()
            .expect("umount(8) is required");
        if out.status.success() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("umount {} keeps failing", mnt.display());
}

/// Every path under `root` (a kernel mount), relative to it, with what `describe` says of it;
/// directories are walked into. `describe` returns `None` to leave a path out.
pub(crate) fn walk_tree(
    root: &Path,
    mut describe: impl FnMut(&Path, &str, &std::fs::Metadata) -> Option<String>,
) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p.clone());
            }
            if let Some(k) = describe(&p, &rel, &md) {
                out.insert(rel, k);
            }
        }
    }
    out
}

/// "d", "l:<target>", or `file` for anything else: the usual kinds in a tree comparison.
pub(crate) fn kind_of(p: &Path, md: &std::fs::Metadata, file: impl FnOnce() -> String) -> String {
    if md.is_dir() {
        "d".to_string()
    } else if md.file_type().is_symlink() {
        format!("l:{}", std::fs::read_link(p).unwrap().to_string_lossy())
    } else {
        file()
    }
}

/// What [`FailMarked`] refuses to write: a write whose buffer starts with these bytes.
pub(crate) const FAIL_MARK: &[u8] = b"FAIL-THIS-WRITE!";

/// An in-memory device that fails (EIO) every write whose data starts with [`FAIL_MARK`]: a
/// file written with the mark at a block's start gets an I/O error on that block's writeback,
/// and nothing else does.
pub(crate) struct FailMarked(pub crate::blockdev::MemDevice);

impl FailMarked {
    pub(crate) fn new(bytes: Vec<u8>) -> FailMarked {
        FailMarked(crate::blockdev::MemDevice::from_vec(bytes))
    }
}

impl crate::blockdev::BlockDevice for FailMarked {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        if buf.starts_with(FAIL_MARK) {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        self.0.write_at(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.0.flush()
    }
    fn size(&self) -> u64 {
        self.0.size()
    }
}

/// e2fsck -fy repairs what there is to repair (damage, a recorded error, a journal to replay)
/// and exits 0 or 1; then -fn finds the image clean.
pub(crate) fn repaired_clean(img: &Path) {
    let out = Command::new("e2fsck").arg("-fy").arg(img).output().unwrap();
    assert!(
        out.status.code().is_some_and(|c| c <= 1),
        "e2fsck -fy: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    crate::test_support::e2fsck_clean(img);
}
