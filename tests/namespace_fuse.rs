//! Namespace workloads through `vhost-ext4 mount` on a journaled image: the same operations run
//! on our mount and on the kernel's ext4 (a second, identical image); after unmounting, e2fsck
//! finds our image clean and the kernel's read-only mount of it shows exactly the tree the
//! kernel built (names, types, modes, link counts, sizes, link targets, xattrs).

mod common;

use common::*;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::Path;
use std::process::Command;

fn renameat2(from: &Path, to: &Path, flags: u32) -> std::io::Result<()> {
    let a = CString::new(from.as_os_str().as_bytes()).unwrap();
    let b = CString::new(to.as_os_str().as_bytes()).unwrap();
    // SAFETY: two valid NUL-terminated paths; AT_FDCWD for both directories.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The workload: a 50,000-entry directory grown and emptied, a deep tree, renames across
/// directories and RENAME_EXCHANGE, hard links, symlinks, xattrs, an ACL, truncates to holes.
fn workload(root: &Path) {
    let big = root.join("big");
    std::fs::create_dir(&big).unwrap();
    for i in 0..50_000 {
        std::fs::File::create(big.join(format!("entry-{i:06}"))).unwrap();
    }
    let keep = root.join("keep");
    std::fs::create_dir(&keep).unwrap();
    for i in (0..50_000).step_by(1000) {
        std::fs::rename(
            big.join(format!("entry-{i:06}")),
            keep.join(format!("moved-{i}")),
        )
        .unwrap();
    }
    for i in 0..50_000 {
        if i % 1000 != 0 {
            std::fs::remove_file(big.join(format!("entry-{i:06}"))).unwrap();
        }
    }
    std::fs::remove_dir(&big).unwrap();
    let mut deep = root.join("deep");
    for d in 0..30 {
        deep = deep.join(format!("d{d}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::File::create(deep.join("leaf")).unwrap();
    std::fs::hard_link(deep.join("leaf"), keep.join("leaf-link")).unwrap();
    symlink("../deep/d0/d1", keep.join("short")).unwrap();
    symlink("x/".repeat(200), keep.join("long")).unwrap();
    std::fs::create_dir(root.join("swap-a")).unwrap();
    std::fs::File::create(root.join("swap-b")).unwrap();
    renameat2(
        &root.join("swap-a"),
        &root.join("swap-b"),
        libc::RENAME_EXCHANGE,
    )
    .unwrap();
    assert_eq!(
        renameat2(
            &keep.join("moved-0"),
            &keep.join("moved-1000"),
            libc::RENAME_NOREPLACE
        )
        .unwrap_err()
        .raw_os_error(),
        Some(libc::EEXIST)
    );
    std::fs::rename(keep.join("moved-0"), keep.join("moved-1000")).unwrap();
    set_xattr(&keep.join("moved-2000"), "user.color", b"blue");
    set_xattr(&keep.join("moved-3000"), "user.big", &[7u8; 1500]);
    let st = Command::new("setfacl")
        .args(["-m", "u:1000:rwx"])
        .arg(keep.join("moved-4000"))
        .status()
        .unwrap();
    assert!(st.success(), "setfacl failed");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(keep.join("moved-5000"))
        .unwrap();
    f.set_len(10 << 20).unwrap();
    f.set_len(4096).unwrap();
    drop(f);
    std::fs::set_permissions(
        keep.join("moved-6000"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4750),
    )
    .unwrap();
    std::os::unix::fs::chown(keep.join("moved-7000"), Some(1234), Some(5678)).unwrap();
}

/// What must match: type+mode, nlink, uid/gid, size, link target, xattrs.
fn shape(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
            }
            let target = std::fs::read_link(&p)
                .map(|t| t.to_string_lossy().to_string())
                .unwrap_or_default();
            let size = if m.is_dir() { 0 } else { m.len() };
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
            if rel == "lost+found" {
                continue;
            }
            out.insert(
                rel,
                format!(
                    "{:o} n{} {}:{} {} {} {:?}",
                    m.mode(),
                    if m.is_dir() { 0 } else { m.nlink() },
                    m.uid(),
                    m.gid(),
                    size,
                    target,
                    xattrs(&p).unwrap()
                ),
            );
        }
    }
    out
}

#[test]
fn namespace_workload_matches_the_kernel() {
    require_root_and_tools();
    let work = tempfile::tempdir().unwrap();
    let ours = work.path().join("ours.img");
    let theirs = work.path().join("kernel.img");
    for img in [&ours, &theirs] {
        run(Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-b", "4096"])
            .arg(img)
            .arg("256M"));
    }
    // The kernel's result.
    let kdir = work.path().join("k");
    std::fs::create_dir_all(&kdir).unwrap();
    mount_loop(&theirs, &kdir, "loop");
    workload(&kdir);
    let expect = shape(&kdir);
    run(Command::new("umount").arg(&kdir));
    // Ours, through FUSE.
    let mnt = work.path().join("m");
    let m = Mount::start(&ours, &mnt, &[]);
    workload(&mnt);
    let live = shape(&mnt);
    let stderr = m.unmount();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_fsck_clean(&ours);
    // The kernel reads back our image.
    let back = KernelMount::start(&ours, &work.path().join("kro"));
    let got = shape(&back.dir);
    back.unmount();
    for (what, tree) in [
        ("through our mount", &live),
        ("kernel mount of our image", &got),
    ] {
        let missing: Vec<_> = expect
            .keys()
            .filter(|k| !tree.contains_key(*k))
            .take(5)
            .collect();
        let extra: Vec<_> = tree
            .keys()
            .filter(|k| !expect.contains_key(*k))
            .take(5)
            .collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{what}: missing {missing:?}, extra {extra:?}"
        );
        for (k, v) in &expect {
            assert_eq!(tree.get(k), Some(v), "{what}: {k}");
        }
    }
}
