//! Helpers shared by the engine's tests: images made by mke2fs, mounting, listing, e2fsck.

use super::*;
use crate::blockdev::FileDevice;
pub(super) use crate::test_support::e2fsck_clean;
use std::path::Path;
use std::process::Command;

pub(super) fn mkfs(src: &Path, img: &Path, opts: &[&str], size: &str) {
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

pub(super) fn mount(img: &Path) -> Fs {
    let dev = FileDevice::open(img, true).unwrap();
    Fs::mount(Arc::new(dev), &MountOptions::default()).unwrap()
}

pub(super) fn walk(fs: &Fs, dir: Ino) -> Vec<(Vec<u8>, Ino)> {
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
pub(super) fn mount_rw(img: &Path) -> Fs {
    let dev = FileDevice::open(img, false).unwrap();
    let fs = Fs::mount(Arc::new(dev), &MountOptions { read_only: false }).unwrap();
    assert!(!fs.is_read_only(), "the image should mount writable");
    fs
}

/// A root caller.
pub(super) fn ctx() -> Ctx {
    Ctx {
        uid: 0,
        gid: 0,
        pid: 1,
    }
}

/// Loop-mount `img` with the kernel at `img`.mnt with `opts` (e.g. "loop,ro"); returns the mountpoint.
pub(super) fn kernel_mount(img: &Path, opts: &str) -> std::path::PathBuf {
    let mnt = img.with_extension("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-o", opts])
        .arg(img)
        .arg(&mnt)
        .status()
        .expect("mount(8) is required");
    assert!(
        st.success(),
        "the kernel could not mount {} ({opts}): loop devices and root are required",
        img.display()
    );
    mnt
}

pub(super) fn kernel_umount(mnt: &Path) {
    assert!(
        Command::new("umount")
            .arg(mnt)
            .status()
            .expect("umount(8) is required")
            .success()
    );
}
