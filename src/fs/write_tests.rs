//! Namespace changes on journal-less images: after a clean shutdown e2fsck finds nothing to fix
//! and the kernel's ext4 shows exactly the tree the workload expects.

use super::testutil::*;
use super::xattr::{XATTR_CREATE, XATTR_REPLACE};
use super::*;
use std::collections::BTreeMap;
use std::path::Path;

/// The tree as the kernel sees it: path → (kind, link target).
fn kernel_tree(img: &Path) -> BTreeMap<String, String> {
    let mnt = kernel_mount(img, "loop,ro");
    let out = walk_tree(&mnt, |p, _, md| {
        Some(kind_of(p, md, || {
            format!("f:{}", std::os::unix::fs::MetadataExt::nlink(md))
        }))
    });
    kernel_umount(&mnt);
    out
}

fn new_image(dir: &Path, opts: &[&str]) -> std::path::PathBuf {
    new_image_sized(dir, opts, "64M")
}

fn new_image_sized(dir: &Path, opts: &[&str], size: &str) -> std::path::PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let img = dir.join(format!(
        "img-{}",
        opts.join("_").replace(['/', ' ', ','], "-")
    ));
    let mut all = vec!["-O", "^has_journal"];
    all.extend_from_slice(opts);
    mkfs(&src, &img, &all, size);
    img
}

#[test]
fn namespace_workload_is_clean_and_kernel_readable() {
    let t = tempfile::tempdir().unwrap();
    for opts in [
        &["-t", "ext4", "-b", "4096"][..],
        &["-t", "ext4", "-b", "1024", "-O", "^metadata_csum,^64bit"],
        &["-t", "ext4", "-b", "1024", "-O", "large_dir"],
    ] {
        let img = new_image(t.path(), opts);
        let fs = mount_rw(&img);
        let mut expect: BTreeMap<String, String> = BTreeMap::new();
        expect.insert("lost+found".into(), "d".into());
        // A directory grown past one block (linear → htree, leaf and index splits).
        let big = fs.mkdir(ROOT_INO, b"big", 0o755, &ctx()).unwrap();
        expect.insert("big".into(), "d".into());
        let n = 3000;
        for i in 0..n {
            let name = format!("entry-with-a-fairly-long-name-{i:06}");
            fs.mknod(big.ino, name.as_bytes(), libc::S_IFREG | 0o644, 0, &ctx())
                .unwrap();
            expect.insert(format!("big/{name}"), "f:1".into());
        }
        for i in (0..n).step_by(3) {
            let name = format!("entry-with-a-fairly-long-name-{i:06}");
            fs.unlink(big.ino, name.as_bytes()).unwrap();
            expect.remove(&format!("big/{name}"));
        }
        assert_eq!(
            fs.mknod(
                big.ino,
                b"entry-with-a-fairly-long-name-000001",
                libc::S_IFREG,
                0,
                &ctx()
            ),
            Err(Errno::EEXIST)
        );
        // Deep tree, symlinks, hard links, renames.
        let mut parent = ROOT_INO;
        let mut path = String::new();
        for d in 0..20 {
            let name = format!("d{d}");
            parent = fs
                .mkdir(parent, name.as_bytes(), 0o700, &ctx())
                .unwrap()
                .ino;
            path = if path.is_empty() {
                name
            } else {
                format!("{path}/{name}")
            };
            expect.insert(path.clone(), "d".into());
        }
        let f = fs
            .mknod(ROOT_INO, b"file", libc::S_IFREG | 0o600, 0, &ctx())
            .unwrap();
        fs.link(f.ino, parent, b"hardlink").unwrap();
        expect.insert("file".into(), "f:2".into());
        expect.insert(format!("{path}/hardlink"), "f:2".into());
        fs.symlink(ROOT_INO, b"short", b"file", &ctx()).unwrap();
        let long = "t/".repeat(150);
        fs.symlink(ROOT_INO, b"long", long.as_bytes(), &ctx())
            .unwrap();
        expect.insert("short".into(), "l:file".into());
        expect.insert("long".into(), format!("l:{long}"));
        fs.rename(ROOT_INO, b"d0", big.ino, b"moved", 0).unwrap();
        let moved: Vec<(String, String)> = expect
            .iter()
            .filter(|(k, _)| k.as_str() == "d0" || k.starts_with("d0/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in moved {
            expect.remove(&k);
            expect.insert(format!("big/moved{}", &k[2..]), v);
        }
        // A directory cannot move below itself.
        let moved_ino = fs.lookup(big.ino, b"moved").unwrap().ino;
        let d1 = fs.lookup(moved_ino, b"d1").unwrap().ino;
        assert_eq!(
            fs.rename(big.ino, b"moved", d1, b"x", 0),
            Err(Errno::EINVAL)
        );
        // Exchange a file and a directory across directories.
        fs.mkdir(ROOT_INO, b"xdir", 0o755, &ctx()).unwrap();
        fs.rename(
            ROOT_INO,
            b"xdir",
            big.ino,
            b"entry-with-a-fairly-long-name-000002",
            RENAME_EXCHANGE,
        )
        .unwrap();
        expect.insert("xdir".into(), "f:1".into());
        expect.insert(
            "big/entry-with-a-fairly-long-name-000002".into(),
            "d".into(),
        );
        // Rename over an existing file, NOREPLACE refusal, rmdir rules.
        fs.rename(
            big.ino,
            b"entry-with-a-fairly-long-name-000004",
            big.ino,
            b"entry-with-a-fairly-long-name-000005",
            0,
        )
        .unwrap();
        expect.remove("big/entry-with-a-fairly-long-name-000004");
        assert_eq!(
            fs.rename(
                big.ino,
                b"entry-with-a-fairly-long-name-000005",
                big.ino,
                b"entry-with-a-fairly-long-name-000007",
                RENAME_NOREPLACE
            ),
            Err(Errno::EEXIST)
        );
        assert_eq!(fs.rmdir(ROOT_INO, b"big"), Err(Errno::ENOTEMPTY));
        fs.mkdir(ROOT_INO, b"gone", 0o755, &ctx()).unwrap();
        fs.rmdir(ROOT_INO, b"gone").unwrap();
        // setattr: mode, owner, times; truncate of an empty file up (a hole) and down.
        let a = fs
            .setattr(
                f.ino,
                &SetAttr {
                    mode: Some(0o4711),
                    uid: Some(1000),
                    gid: Some(100),
                    size: Some(1 << 20),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            (a.mode & 0o7777, a.uid, a.gid, a.size),
            (0o4711, 1000, 100, 1 << 20)
        );
        assert_eq!(fs.read(f.ino, 0, 4096, 16).unwrap(), vec![0u8; 16]);
        fs.setattr(
            f.ino,
            &SetAttr {
                size: Some(0),
                ..Default::default()
            },
        )
        .unwrap();
        // An unlinked file still looked up survives until its last forget.
        let held = fs
            .mknod(ROOT_INO, b"held", libc::S_IFREG | 0o644, 0, &ctx())
            .unwrap();
        fs.unlink(ROOT_INO, b"held").unwrap();
        assert_eq!(fs.getattr(held.ino).unwrap().nlink, 0);
        fs.forget(held.ino, 1);
        fs.shutdown().unwrap();
        drop(fs);
        e2fsck_clean(&img);
        let got = kernel_tree(&img);
        assert_eq!(got.len(), expect.len(), "{opts:?}: entry count");
        for (k, v) in &expect {
            assert_eq!(got.get(k), Some(v), "{opts:?}: {k}");
        }
        // Our own read path sees the same after a remount.
        let fs = mount(&img);
        let b = fs.lookup(ROOT_INO, b"big").unwrap();
        assert_eq!(
            walk(&fs, b.ino).len(),
            expect
                .keys()
                .filter(|k| k.starts_with("big/") && k.matches('/').count() == 1)
                .count()
                + 2
        );
    }
}

#[test]
fn filling_the_inode_table_gives_enospc_and_stays_clean() {
    let t = tempfile::tempdir().unwrap();
    let img = new_image(t.path(), &["-t", "ext4", "-N", "256"]);
    let fs = mount_rw(&img);
    let mut made = 0;
    loop {
        match fs.mknod(
            ROOT_INO,
            format!("f{made}").as_bytes(),
            libc::S_IFREG | 0o644,
            0,
            &ctx(),
        ) {
            Ok(_) => made += 1,
            Err(e) => {
                assert_eq!(e, Errno::ENOSPC);
                break;
            }
        }
    }
    assert!(made > 200, "only {made} inodes");
    assert_eq!(fs.statfs().unwrap().ffree, 0);
    fs.shutdown().unwrap();
    drop(fs);
    e2fsck_clean(&img);
}

#[test]
fn xattrs_move_between_inode_and_block_and_stay_clean() {
    let t = tempfile::tempdir().unwrap();
    for opts in [
        &["-t", "ext4", "-b", "4096"][..],
        &[
            "-t",
            "ext4",
            "-b",
            "1024",
            "-I",
            "256",
            "-O",
            "^metadata_csum",
        ],
    ] {
        let img = new_image(t.path(), opts);
        let fs = mount_rw(&img);
        let f = fs
            .mknod(ROOT_INO, b"f", libc::S_IFREG | 0o644, 0, &ctx())
            .unwrap();
        let g = fs
            .mknod(ROOT_INO, b"g", libc::S_IFREG | 0o644, 0, &ctx())
            .unwrap();
        fs.setxattr(f.ino, b"user.small", b"v", 0).unwrap();
        assert_eq!(
            fs.setxattr(f.ino, b"user.small", b"w", XATTR_CREATE),
            Err(Errno::EEXIST)
        );
        assert_eq!(
            fs.setxattr(f.ino, b"user.none", b"w", XATTR_REPLACE),
            Err(Errno::ENODATA)
        );
        // Enough values to spill from the inode body into a block.
        for i in 0..8 {
            fs.setxattr(
                f.ino,
                format!("user.k{i}").as_bytes(),
                &[b'a' + i as u8; 90],
                0,
            )
            .unwrap();
        }
        assert_ne!(
            fs.read_inode(f.ino).unwrap().file_acl,
            0,
            "{opts:?}: values spilled to a block"
        );
        assert_eq!(fs.getxattr(f.ino, b"user.k7").unwrap(), vec![b'h'; 90]);
        assert_eq!(
            fs.setxattr(f.ino, b"user.huge", &vec![0u8; 70_000], 0),
            Err(Errno::E2BIG)
        );
        assert_eq!(
            fs.setxattr(f.ino, b"user.toolarge", &vec![0u8; 8000], 0),
            Err(Errno::ENOSPC)
        );
        assert_eq!(
            fs.setxattr(f.ino, b"bogus.x", b"1", 0),
            Err(Errno::EOPNOTSUPP)
        );
        assert_eq!(
            fs.setxattr(f.ino, &[b'u'; 300], b"1", 0),
            Err(Errno::ERANGE)
        );
        // An ACL in xattr form round-trips through the on-disk form.
        let mut acl = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (1u16, 6u16, u32::MAX),
            (2, 7, 1000),
            (4, 4, u32::MAX),
            (0x10, 7, u32::MAX),
            (0x20, 0, u32::MAX),
        ] {
            acl.extend_from_slice(&tag.to_le_bytes());
            acl.extend_from_slice(&perm.to_le_bytes());
            acl.extend_from_slice(&id.to_le_bytes());
        }
        fs.setxattr(g.ino, b"system.posix_acl_access", &acl, 0)
            .unwrap();
        assert_eq!(fs.getxattr(g.ino, b"system.posix_acl_access").unwrap(), acl);
        assert_eq!(
            fs.setxattr(g.ino, b"system.posix_acl_default", &acl, 0),
            Err(Errno::EACCES)
        );
        // Removing everything gives the block back.
        for i in 0..8 {
            fs.removexattr(f.ino, format!("user.k{i}").as_bytes())
                .unwrap();
        }
        assert_eq!(fs.read_inode(f.ino).unwrap().file_acl, 0);
        assert_eq!(fs.removexattr(f.ino, b"user.k0"), Err(Errno::ENODATA));
        let list = fs.listxattr(f.ino).unwrap();
        assert_eq!(list, b"user.small\0");
        // A file with a block is freed with it.
        fs.setxattr(g.ino, b"user.big", &vec![1u8; 600], 0).unwrap();
        fs.unlink(ROOT_INO, b"g").unwrap();
        fs.forget(g.ino, 1);
        fs.shutdown().unwrap();
        drop(fs);
        e2fsck_clean(&img);
    }
}

#[test]
fn filling_the_blocks_gives_enospc_and_stays_clean() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let img = t.path().join("small.img");
    // 2 MiB of 1 KiB blocks with plenty of inodes: slow symlinks (one block each) run out of
    // blocks first.
    mkfs(
        &src,
        &img,
        &[
            "-t",
            "ext4",
            "-b",
            "1024",
            "-N",
            "2048",
            "-O",
            "^has_journal",
        ],
        "2M",
    );
    let fs = mount_rw(&img);
    let target = "t/".repeat(100);
    let mut made = Vec::new();
    let err = loop {
        match fs.symlink(
            ROOT_INO,
            format!("s{}", made.len()).as_bytes(),
            target.as_bytes(),
            &ctx(),
        ) {
            Ok(a) => made.push(a.ino),
            Err(e) => break e,
        }
    };
    let made_n = made.len();
    assert_eq!(err, Errno::ENOSPC);
    assert!(made_n > 100, "only {made_n} symlinks fit");
    // Full: at most one block is left, when the failing symlink also needed a directory split
    // (whether it does depends on the image's random hash seed).
    assert!(fs.statfs().unwrap().bfree <= 1);
    // The failed symlink left nothing behind; removing some frees room again.
    for (i, ino) in made.iter().enumerate().take(10) {
        fs.unlink(ROOT_INO, format!("s{i}").as_bytes()).unwrap();
        // The client's last reference goes: the inode and its block are freed.
        fs.forget(*ino, 1);
    }
    fs.symlink(ROOT_INO, b"again", target.as_bytes(), &ctx())
        .unwrap();
    fs.shutdown().unwrap();
    drop(fs);
    e2fsck_clean(&img);
}

#[test]
fn tmpfiles_are_orphans_until_linked_or_forgotten() {
    let t = tempfile::tempdir().unwrap();
    let img = new_image(t.path(), &["-t", "ext4", "-b", "4096"]);
    let fs = mount_rw(&img);
    let free = fs.statfs().unwrap().ffree;
    let kept = fs.tmpfile(ROOT_INO, 0o600, &ctx()).unwrap();
    let dropped = fs.tmpfile(ROOT_INO, 0o600, &ctx()).unwrap();
    assert_eq!((kept.nlink, dropped.nlink), (0, 0));
    assert_eq!(fs.statfs().unwrap().ffree, free - 2);
    fs.link(kept.ino, ROOT_INO, b"named").unwrap();
    assert_eq!(fs.lookup(ROOT_INO, b"named").unwrap().nlink, 1);
    fs.forget(dropped.ino, 1);
    assert_eq!(
        fs.statfs().unwrap().ffree,
        free - 1,
        "the forgotten tmpfile is freed"
    );
    // An ordinary unlinked file cannot be linked back.
    let f = fs
        .mknod(ROOT_INO, b"f", libc::S_IFREG | 0o644, 0, &ctx())
        .unwrap();
    fs.unlink(ROOT_INO, b"f").unwrap();
    assert_eq!(fs.link(f.ino, ROOT_INO, b"again"), Err(Errno::ENOENT));
    fs.forget(f.ino, 1);
    fs.shutdown().unwrap();
    drop(fs);
    e2fsck_clean(&img);
}

#[test]
fn dir_nlink_past_65000_subdirectories() {
    let t = tempfile::tempdir().unwrap();
    let img = new_image_sized(
        t.path(),
        &["-t", "ext4", "-b", "1024", "-N", "70000"],
        "200M",
    );
    let fs = mount_rw(&img);
    let big = fs.mkdir(ROOT_INO, b"big", 0o755, &ctx()).unwrap().ino;
    let n = 65_010u32;
    for i in 0..n {
        fs.mkdir(big, format!("d{i}").as_bytes(), 0o755, &ctx())
            .unwrap_or_else(|e| panic!("mkdir number {i}: {e}"));
        fs.forget(fs.lookup(big, format!("d{i}").as_bytes()).unwrap().ino, 2);
        if i == 64_997 {
            // 2 + 64,998 subdirectories: still counted exactly.
            assert_eq!(fs.getattr(big).unwrap().nlink, 65_000);
        }
    }
    assert_eq!(
        fs.getattr(big).unwrap().nlink,
        1,
        "past the limit: 1, 'many'"
    );
    for i in 0..10 {
        fs.rmdir(big, format!("d{i}").as_bytes()).unwrap();
    }
    assert_eq!(
        fs.getattr(big).unwrap().nlink,
        1,
        "stays 1 while many remain"
    );
    fs.shutdown().unwrap();
    drop(fs);
    e2fsck_clean(&img);
    let mnt = kernel_mount(&img, "loop,ro");
    let md = std::fs::metadata(mnt.join("big")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::nlink(&md), 1);
    let count = std::fs::read_dir(mnt.join("big")).unwrap().count();
    kernel_umount(&mnt);
    assert_eq!(count, (n - 10) as usize);
}

#[test]
fn many_open_unlinked_files_are_freed_in_any_order() {
    let t = tempfile::tempdir().unwrap();
    let img = new_image(t.path(), &["-t", "ext4"]);
    let fs = mount_rw(&img);
    let free_before = fs.statfs().unwrap().ffree;
    let n = 3000;
    let mut inos = Vec::new();
    for i in 0..n {
        let name = format!("held-{i}");
        let a = fs
            .mknod(ROOT_INO, name.as_bytes(), libc::S_IFREG | 0o644, 0, &ctx())
            .unwrap();
        inos.push(a.ino);
    }
    // Unlinked while the client still holds them: all on the orphan list.
    for i in 0..n {
        fs.unlink(ROOT_INO, format!("held-{i}").as_bytes()).unwrap();
    }
    // Let go of most of them in a scrambled order; the rest is freed at unmount.
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    for k in (1..inos.len()).rev() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        inos.swap(k, (rng % (k as u64 + 1)) as usize);
    }
    for ino in &inos[..n * 5 / 6] {
        fs.forget(*ino, 1);
    }
    fs.shutdown().unwrap();
    drop(fs);
    e2fsck_clean(&img);
    let fs = mount(&img);
    assert_eq!(fs.statfs().unwrap().ffree, free_before, "every inode freed");
    let sb = std::fs::read(&img).unwrap();
    assert_eq!(
        crate::ondisk::le::u32_at(&sb[1024..2048], 0xE8),
        0,
        "the orphan list is empty"
    );
}
