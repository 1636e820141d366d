//! Engine behaviour fstests exercises through FUSE: default-ACL inheritance and the umask
//! (FUSE DONT_MASK), chmod updating the access ACL, setfacl clearing set-group-ID, lookups of
//! "." and ".." by inode number (file handles), and RENAME_WHITEOUT. Every image ends e2fsck-clean,
//! and the kernel's ext4 reads back what the engine wrote.

use super::testutil::*;
use super::*;
use crate::ondisk::acl;
use std::path::Path;

fn new_image(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let img = dir.join("img");
    mkfs(&src, &img, &["-O", "^has_journal", "-t", "ext4"], "32M");
    img
}

fn xattr_acl(entries: &[acl::AclEntry]) -> Vec<u8> {
    acl::encode_xattr(entries)
}

fn user(umask: u32) -> Ctx {
    Ctx {
        uid: 1000,
        gid: 1000,
        pid: 2,
        umask,
    }
}

const U: u32 = acl::ACL_UNDEFINED_ID;

#[test]
fn creates_apply_the_umask_or_inherit_the_default_acl() {
    let t = tempfile::tempdir().unwrap();
    let img = new_image(t.path());
    let fs = mount_rw(&img);
    // No default ACL: the umask applies (the daemon's job under DONT_MASK).
    let plain = fs.mkdir(ROOT_INO, b"plain", 0o777, &user(0o022)).unwrap();
    assert_eq!(plain.mode & 0o7777, 0o755);
    let f = fs
        .mknod(plain.ino, b"f", libc::S_IFREG | 0o666, 0, &user(0o027))
        .unwrap();
    assert_eq!(f.mode & 0o7777, 0o640);
    let l = fs.symlink(plain.ino, b"l", b"f", &user(0o077)).unwrap();
    assert_eq!(l.mode & 0o777, 0o777, "symlinks ignore the umask");

    // A default ACL with a named user and a mask: the umask is ignored, the mode is masked by
    // the ACL, the file gets an access ACL and a subdirectory the default ACL too.
    let d = fs.mkdir(ROOT_INO, b"acl", 0o755, &ctx()).unwrap();
    let default = [
        (acl::ACL_USER_OBJ, 7, U),
        (acl::ACL_USER, 5, 2000),
        (acl::ACL_GROUP_OBJ, 5, U),
        (acl::ACL_MASK, 5, U),
        (acl::ACL_OTHER, 0, U),
    ];
    fs.setxattr(d.ino, b"system.posix_acl_default", &xattr_acl(&default), 0)
        .unwrap();
    let f = fs
        .mknod(d.ino, b"f", libc::S_IFREG | 0o666, 0, &user(0o077))
        .unwrap();
    assert_eq!(
        f.mode & 0o7777,
        0o640,
        "0666 masked by u::rwx, m::r-x, o::---"
    );
    let got = fs.getxattr(f.ino, b"system.posix_acl_access").unwrap();
    let got = acl::parse_xattr(&got).unwrap();
    assert!(got.contains(&(acl::ACL_USER, 5, 2000)));
    assert!(got.contains(&(acl::ACL_USER_OBJ, 6, U)));
    assert!(got.contains(&(acl::ACL_MASK, 4, U)));
    assert_eq!(
        fs.getxattr(f.ino, b"system.posix_acl_default"),
        Err(Errno::ENODATA),
        "files get no default ACL"
    );
    let sub = fs.mkdir(d.ino, b"sub", 0o777, &user(0o077)).unwrap();
    assert_eq!(sub.mode & 0o777, 0o750);
    let inherited = fs.getxattr(sub.ino, b"system.posix_acl_default").unwrap();
    assert_eq!(acl::parse_xattr(&inherited).unwrap(), default.to_vec());

    // A default ACL without named entries: the mode alone says it all, no access ACL is stored.
    let d2 = fs.mkdir(ROOT_INO, b"min", 0o755, &ctx()).unwrap();
    let minimal = [
        (acl::ACL_USER_OBJ, 6, U),
        (acl::ACL_GROUP_OBJ, 4, U),
        (acl::ACL_OTHER, 4, U),
    ];
    fs.setxattr(d2.ino, b"system.posix_acl_default", &xattr_acl(&minimal), 0)
        .unwrap();
    let f2 = fs
        .mknod(d2.ino, b"f", libc::S_IFREG | 0o777, 0, &user(0o077))
        .unwrap();
    assert_eq!(f2.mode & 0o777, 0o644);
    assert_eq!(
        fs.getxattr(f2.ino, b"system.posix_acl_access"),
        Err(Errno::ENODATA)
    );

    // chmod rewrites the access ACL's owner, mask and other entries (posix_acl_chmod).
    let s = SetAttr {
        mode: Some(0o700),
        ..Default::default()
    };
    fs.setattr(f.ino, &s).unwrap();
    let got = acl::parse_xattr(&fs.getxattr(f.ino, b"system.posix_acl_access").unwrap()).unwrap();
    assert!(got.contains(&(acl::ACL_USER_OBJ, 7, U)));
    assert!(got.contains(&(acl::ACL_MASK, 0, U)));
    assert!(got.contains(&(acl::ACL_OTHER, 0, U)));
    assert!(
        got.contains(&(acl::ACL_USER, 5, 2000)),
        "named entries stay"
    );

    // setfacl by someone outside the group: the mode follows the ACL and SGID goes.
    let g = fs
        .mknod(ROOT_INO, b"sgid", libc::S_IFREG | 0o2755, 0, &ctx())
        .unwrap();
    let access = [
        (acl::ACL_USER_OBJ, 6, U),
        (acl::ACL_USER, 4, 1000),
        (acl::ACL_GROUP_OBJ, 4, U),
        (acl::ACL_MASK, 6, U),
        (acl::ACL_OTHER, 0, U),
    ];
    fs.setxattr_kill_sgid(g.ino, b"system.posix_acl_access", &xattr_acl(&access), 0)
        .unwrap();
    assert_eq!(fs.getattr(g.ino).unwrap().mode & 0o7777, 0o660);
    fs.shutdown().unwrap();
    drop(fs);
    e2fsck_clean(&img);

    // The kernel's ext4 reads the same ACLs and modes.
    let mnt = kernel_mount(&img, "loop,ro");
    let out = std::process::Command::new("getfacl")
        .args(["-cn", "acl/f"])
        .current_dir(&mnt)
        .output();
    let mode =
        std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(mnt.join("acl/sub")).unwrap());
    kernel_umount(&mnt);
    assert_eq!(mode & 0o777, 0o750);
    if let Ok(out) = out {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("user:2000:r-x"), "{text}");
        assert!(text.contains("mask::---"), "{text}");
    }
}

#[test]
fn dot_and_dotdot_lookups_by_inode_number() {
    let t = tempfile::tempdir().unwrap();
    let img = new_image(t.path());
    let fs = mount_rw(&img);
    let d = fs.mkdir(ROOT_INO, b"d", 0o755, &ctx()).unwrap();
    let f = fs
        .mknod(d.ino, b"f", libc::S_IFREG | 0o644, 0, &ctx())
        .unwrap();
    // "." on any inode answers the inode itself, with one more lookup reference.
    let before = fs.lookup_count(f.ino);
    let a = fs.lookup(f.ino, b".").unwrap();
    assert_eq!((a.ino, a.generation), (f.ino, f.generation));
    assert_eq!(fs.lookup_count(f.ino), before + 1);
    assert_eq!(fs.lookup(d.ino, b".").unwrap().ino, d.ino);
    // ".." answers a directory's parent; the root is its own.
    assert_eq!(fs.lookup(d.ino, b"..").unwrap().ino, ROOT_INO);
    assert_eq!(fs.lookup(ROOT_INO, b"..").unwrap().ino, ROOT_INO);
    assert_eq!(fs.lookup(f.ino, b".."), Err(Errno::ENOTDIR));
    // Numbers that name nothing in use: ENOENT (the kernel reports ESTALE).
    for bad in [0, 1, 7, 1 << 40] {
        assert_eq!(
            fs.lookup(bad, b".").map(|a| a.ino),
            Err(Errno::ENOENT),
            "{bad}"
        );
    }
    let unused = f.ino + 50;
    assert_eq!(fs.lookup(unused, b".").map(|a| a.ino), Err(Errno::ENOENT));
    // Unlinked and forgotten: stale.
    fs.forget(f.ino, fs.lookup_count(f.ino));
    fs.unlink(d.ino, b"f").unwrap();
    assert_eq!(fs.lookup(f.ino, b".").map(|a| a.ino), Err(Errno::ENOENT));
    fs.forget(d.ino, fs.lookup_count(d.ino));
    fs.shutdown().unwrap();
    drop(fs);
    e2fsck_clean(&img);
}

#[test]
fn rename_whiteout_leaves_a_character_device_0_0() {
    let t = tempfile::tempdir().unwrap();
    let img = new_image(t.path());
    let fs = mount_rw(&img);
    let a = fs.mkdir(ROOT_INO, b"a", 0o755, &ctx()).unwrap();
    let b = fs.mkdir(ROOT_INO, b"b", 0o755, &ctx()).unwrap();
    let f = fs
        .mknod(a.ino, b"f", libc::S_IFREG | 0o644, 0, &ctx())
        .unwrap();
    let sub = fs.mkdir(a.ino, b"sub", 0o755, &ctx()).unwrap();
    let who = user(0o022);
    // Across directories, a file and a directory.
    fs.rename_as(a.ino, b"f", b.ino, b"f2", RENAME_WHITEOUT, &who)
        .unwrap();
    fs.rename_as(
        a.ino,
        b"sub",
        b.ino,
        b"sub",
        RENAME_WHITEOUT | RENAME_NOREPLACE,
        &who,
    )
    .unwrap();
    // In one directory, over an existing name.
    fs.mknod(b.ino, b"victim", libc::S_IFREG | 0o644, 0, &ctx())
        .unwrap();
    fs.rename_as(b.ino, b"f2", b.ino, b"victim", RENAME_WHITEOUT, &who)
        .unwrap();
    for (dir, name) in [(a.ino, &b"f"[..]), (a.ino, b"sub"), (b.ino, b"f2")] {
        let w = fs.lookup(dir, name).unwrap();
        assert_eq!(w.mode, libc::S_IFCHR, "whiteout mode");
        assert_eq!(w.rdev, 0);
        assert_eq!((w.uid, w.gid), (1000, 1000));
        assert_ne!(w.ino, f.ino);
    }
    assert_eq!(fs.lookup(b.ino, b"victim").unwrap().ino, f.ino);
    assert_eq!(fs.lookup(b.ino, b"sub").unwrap().ino, sub.ino);
    assert_eq!(
        fs.getattr(a.ino).unwrap().nlink,
        2,
        "a lost its subdirectory"
    );
    assert_eq!(fs.getattr(b.ino).unwrap().nlink, 3);
    assert_eq!(
        fs.rename_as(
            b.ino,
            b"victim",
            a.ino,
            b"f",
            RENAME_WHITEOUT | RENAME_EXCHANGE,
            &who
        ),
        Err(Errno::EINVAL)
    );
    fs.shutdown().unwrap();
    drop(fs);
    e2fsck_clean(&img);
    let mnt = kernel_mount(&img, "loop,ro");
    let md = std::fs::symlink_metadata(mnt.join("a/f")).unwrap();
    let names: Vec<_> = std::fs::read_dir(mnt.join("b"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    kernel_umount(&mnt);
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    assert!(md.file_type().is_char_device());
    assert_eq!(md.rdev(), 0);
    assert_eq!(names.len(), 3, "{names:?}");
}

fn atime_of(fs: &Fs, ino: Ino) -> Timespec {
    fs.getattr(ino).unwrap().atime
}

fn read_all(fs: &Fs, ino: Ino) -> Vec<u8> {
    let mut out = Vec::new();
    fs.read_into(ino, 0, 0, 1 << 16, &mut out).unwrap();
    out
}

/// One listing of `dir` from the start, as a READDIR at offset 0 does.
fn list_once(fs: &Fs, dir: Ino) {
    let fh = fs.opendir(dir, 0).unwrap();
    fs.readdir(dir, fh, 0, &mut |_| true).unwrap();
    fs.releasedir(dir, fh);
}

#[test]
fn reads_move_atime_as_the_mount_option_says() {
    let t = tempfile::tempdir().unwrap();
    let img = new_image(t.path());
    let fs = mount_rw(&img);
    let d = fs.mkdir(ROOT_INO, b"d", 0o755, &ctx()).unwrap();
    let f = fs
        .mknod(d.ino, b"f", libc::S_IFREG | 0o644, 0, &ctx())
        .unwrap();
    fs.write(f.ino, 0, b"aaa\n", 0).unwrap();
    let written = atime_of(&fs, f.ino);

    // The engine's default: reads leave atime alone.
    assert_eq!(fs.atime_policy().mode, AtimeMode::Never);
    assert_eq!(read_all(&fs, f.ino), b"aaa\n");
    assert_eq!(atime_of(&fs, f.ino), written);
    assert!(!fs.atime_due(f.ino).unwrap());

    // relatime: the first read after a change moves atime past mtime, the next ones do not.
    fs.set_atime_policy(AtimePolicy::from_mount_flags(0));
    assert!(fs.atime_due(f.ino).unwrap(), "atime <= mtime: due");
    read_all(&fs, f.ino);
    let first = atime_of(&fs, f.ino);
    let a = fs.getattr(f.ino).unwrap();
    assert!(first > written && first > a.mtime && first > a.ctime);
    assert!(!fs.atime_due(f.ino).unwrap());
    std::thread::sleep(std::time::Duration::from_millis(10));
    read_all(&fs, f.ino);
    assert_eq!(atime_of(&fs, f.ino), first);
    // A write makes it due again.
    fs.write(f.ino, 4, b"bbb\n", 0).unwrap();
    assert!(fs.atime_due(f.ino).unwrap());
    read_all(&fs, f.ino);
    assert!(atime_of(&fs, f.ino) > fs.getattr(f.ino).unwrap().mtime);
    // A directory listed from the start after an entry was added: its atime moves.
    let before = atime_of(&fs, d.ino);
    list_once(&fs, d.ino);
    let listed = atime_of(&fs, d.ino);
    assert!(listed > before);
    // nodiratime: directories keep their atime, files do not.
    fs.set_atime_policy(AtimePolicy::from_mount_flags(
        libc::MS_STRICTATIME | libc::MS_NODIRATIME,
    ));
    std::thread::sleep(std::time::Duration::from_millis(10));
    list_once(&fs, d.ino);
    assert_eq!(atime_of(&fs, d.ino), listed);

    // strictatime: every read moves it.
    let mut last = atime_of(&fs, f.ino);
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(10));
        assert!(fs.atime_due(f.ino).unwrap());
        read_all(&fs, f.ino);
        let now = atime_of(&fs, f.ino);
        assert!(now > last, "strictatime: {now:?} after {last:?}");
        last = now;
    }
    // noatime wins over strictatime.
    fs.set_atime_policy(AtimePolicy::from_mount_flags(
        libc::MS_NOATIME | libc::MS_STRICTATIME,
    ));
    std::thread::sleep(std::time::Duration::from_millis(10));
    read_all(&fs, f.ino);
    assert_eq!(atime_of(&fs, f.ino), last);
    fs.shutdown().unwrap();
    drop(fs);
    e2fsck_clean(&img);

    // The kernel reads back the atime we stored, to the nanosecond.
    let mnt = kernel_mount(&img, "loop,ro,noatime");
    let md = std::fs::metadata(mnt.join("d/f")).unwrap();
    kernel_umount(&mnt);
    use std::os::unix::fs::MetadataExt;
    assert_eq!((md.atime(), md.atime_nsec() as u32), (last.sec, last.nsec));

    // A read-only mount never moves atime, whatever the option.
    let ro = mount(&img);
    assert!(ro.is_read_only());
    ro.set_atime_policy(AtimePolicy::from_mount_flags(libc::MS_STRICTATIME));
    let f = ro
        .lookup(ro.lookup(ROOT_INO, b"d").unwrap().ino, b"f")
        .unwrap();
    assert!(!ro.atime_due(f.ino).unwrap());
    std::thread::sleep(std::time::Duration::from_millis(10));
    assert_eq!(read_all(&ro, f.ino), b"aaa\nbbb\n");
    assert_eq!(atime_of(&ro, f.ino), last);
}

/// copy_file_range reads its source: the source's atime moves as for a read (the kernel's
/// splice read calls file_accessed); the destination's only when it is read.
#[test]
fn copy_file_range_moves_the_source_atime() {
    let t = tempfile::tempdir().unwrap();
    let img = new_image(t.path());
    let fs = mount_rw(&img);
    let src = fs
        .mknod(ROOT_INO, b"src", libc::S_IFREG | 0o644, 0, &ctx())
        .unwrap();
    let dst = fs
        .mknod(ROOT_INO, b"dst", libc::S_IFREG | 0o644, 0, &ctx())
        .unwrap();
    fs.write(src.ino, 0, &[5u8; 10000], 0).unwrap();
    fs.write(dst.ino, 0, b"x", 0).unwrap();
    // Both atimes older than their mtimes: a read of either would move it (relatime).
    fs.set_atime_policy(AtimePolicy::from_mount_flags(0));
    let (src_before, dst_before) = (atime_of(&fs, src.ino), atime_of(&fs, dst.ino));
    std::thread::sleep(std::time::Duration::from_millis(10));
    assert_eq!(fs.copy_file_range(src.ino, 0, dst.ino, 0, 0).unwrap(), 0);
    assert_eq!(
        atime_of(&fs, src.ino),
        src_before,
        "an empty copy reads nothing"
    );
    assert_eq!(
        fs.copy_file_range(src.ino, 0, dst.ino, 0, 10000).unwrap(),
        10000
    );
    assert!(atime_of(&fs, src.ino) > src_before, "the source was read");
    assert_eq!(
        atime_of(&fs, dst.ino),
        dst_before,
        "the destination was not"
    );
    fs.shutdown().unwrap();
    drop(fs);
    e2fsck_clean(&img);
}
