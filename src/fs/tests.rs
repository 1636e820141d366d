//! Engine tests on images made by mke2fs from generated trees.

use super::testutil::*;
use super::*;
use crate::blockdev::FileDevice;
use std::path::Path;

#[test]
fn reads_small_tree_in_several_layouts() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("d/e")).unwrap();
    std::fs::write(src.join("a.txt"), b"hello world\n").unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(src.join("d/big"), &big).unwrap();
    std::os::unix::fs::symlink("a.txt", src.join("short")).unwrap();
    let long = "x/".repeat(100);
    std::os::unix::fs::symlink(&long, src.join("long")).unwrap();
    for (i, opts) in [
        &["-t", "ext4"][..],
        &["-t", "ext4", "-b", "1024", "-O", "^64bit,^metadata_csum"],
        &["-t", "ext3"],
        &["-t", "ext4", "-O", "inline_data"],
    ]
    .iter()
    .enumerate()
    {
        let img = t.path().join(format!("img{i}"));
        mkfs(&src, &img, opts, "32M");
        let fs = mount(&img);
        let names: Vec<Vec<u8>> = walk(&fs, ROOT_INO).into_iter().map(|x| x.0).collect();
        for n in [
            &b"."[..],
            b"..",
            b"a.txt",
            b"d",
            b"short",
            b"long",
            b"lost+found",
        ] {
            assert!(
                names.contains(&n.to_vec()),
                "{opts:?}: missing {:?} in {names:?}",
                String::from_utf8_lossy(n)
            );
        }
        let a = fs.lookup(ROOT_INO, b"a.txt").unwrap();
        assert_eq!(a.size, 12);
        assert_eq!(fs.read(a.ino, 0, 0, 100).unwrap(), b"hello world\n");
        let d = fs.lookup(ROOT_INO, b"d").unwrap();
        let b = fs.lookup(d.ino, b"big").unwrap();
        let mut got = Vec::new();
        while got.len() < big.len() {
            let chunk = fs.read(b.ino, 0, got.len() as u64, 65536).unwrap();
            assert!(!chunk.is_empty());
            got.extend(chunk);
        }
        assert_eq!(got, big, "{opts:?}");
        let s = fs.lookup(ROOT_INO, b"short").unwrap();
        assert_eq!(fs.readlink(s.ino).unwrap(), b"a.txt");
        let l = fs.lookup(ROOT_INO, b"long").unwrap();
        assert_eq!(fs.readlink(l.ino).unwrap(), long.as_bytes());
        assert_eq!(fs.lookup(ROOT_INO, b"nope"), Err(Errno::ENOENT));
        assert_eq!(fs.lookup(a.ino, b"x"), Err(Errno::ENOTDIR));
        let st = fs.statfs().unwrap();
        assert!(st.bfree > 0 && st.blocks > st.bfree);
    }
}

fn setfattr(path: &Path, name: &str, value: &[u8]) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings and a live value buffer for the duration of the call.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
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
        path.display(),
        std::io::Error::last_os_error()
    );
}

#[test]
fn htree_directory_lookup_and_listing() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let big = src.join("many");
    std::fs::create_dir_all(&big).unwrap();
    let n = 3000;
    for i in 0..n {
        std::fs::write(big.join(format!("file-with-a-longish-name-{i:05}")), b"").unwrap();
    }
    for (i, opts) in [
        &["-t", "ext4"][..],
        &[
            "hash=tea",
            "-t",
            "ext4",
            "-b",
            "1024",
            "-O",
            "^metadata_csum",
        ],
        &["hash=legacy", "-t", "ext4", "-b", "1024", "-O", "large_dir"],
        &["-t", "ext3"],
    ]
    .iter()
    .enumerate()
    {
        let img = t.path().join(format!("img{i}"));
        mkfs(&src, &img, opts, "64M");
        let fs = mount(&img);
        let d = fs.lookup(ROOT_INO, b"many").unwrap();
        for i in 0..n {
            let name = format!("file-with-a-longish-name-{i:05}");
            fs.lookup(d.ino, name.as_bytes())
                .unwrap_or_else(|e| panic!("{opts:?}: lookup {name}: {e:?}"));
        }
        assert_eq!(
            fs.lookup(d.ino, b"file-with-a-longish-name-99999"),
            Err(Errno::ENOENT)
        );
        let all = walk(&fs, d.ino);
        assert_eq!(all.len(), n + 2, "{opts:?}");
        // Resuming from every cookie continues exactly where the listing left off.
        let fh = fs.opendir(d.ino, 0).unwrap();
        let mut seen = Vec::new();
        let mut off = 0;
        loop {
            let mut batch = Vec::new();
            fs.readdir(d.ino, fh, off, &mut |e| {
                if batch.len() == 37 {
                    return false;
                }
                batch.push(e.clone());
                true
            })
            .unwrap();
            if batch.is_empty() {
                break;
            }
            off = batch.last().unwrap().next_off;
            seen.extend(batch.into_iter().map(|e| e.name));
        }
        assert_eq!(seen.len(), n + 2, "{opts:?}");
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), n + 2, "{opts:?}: duplicates while resuming");
    }
}

#[test]
fn xattrs_devices_links_and_holes() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let f = src.join("f");
    std::fs::write(&f, b"data").unwrap();
    setfattr(&f, "user.small", b"v");
    setfattr(&f, "user.big", &vec![b'z'; 2000]);
    setfattr(&f, "trusted.t", b"tt");
    std::fs::hard_link(&f, src.join("f2")).unwrap();
    let sparse = src.join("sparse");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut h = std::fs::File::create(&sparse).unwrap();
        h.seek(SeekFrom::Start(1 << 20)).unwrap();
        h.write_all(&[1u8; 5000]).unwrap();
        h.set_len(4 << 20).unwrap();
    }
    let c = std::ffi::CString::new(src.join("chr").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid path string; mknod has no memory side effects.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o644, libc::makedev(4, 67)) };
    assert_eq!(rc, 0, "mknod needs root");
    for (i, opts) in [
        &["-t", "ext4", "-b", "4096"][..],
        &[
            "-t",
            "ext4",
            "-b",
            "4096",
            "-I",
            "128",
            "-O",
            "^metadata_csum",
        ],
        &["-t", "ext3", "-b", "4096"],
    ]
    .iter()
    .enumerate()
    {
        let img = t.path().join(format!("img{i}"));
        mkfs(&src, &img, opts, "32M");
        let fs = mount(&img);
        let a = fs.lookup(ROOT_INO, b"f").unwrap();
        let b = fs.lookup(ROOT_INO, b"f2").unwrap();
        assert_eq!(a.ino, b.ino);
        assert_eq!(a.nlink, 2);
        assert_eq!(fs.getxattr(a.ino, b"user.small").unwrap(), b"v");
        assert_eq!(fs.getxattr(a.ino, b"user.big").unwrap(), vec![b'z'; 2000]);
        assert_eq!(fs.getxattr(a.ino, b"trusted.t").unwrap(), b"tt");
        assert_eq!(fs.getxattr(a.ino, b"user.none"), Err(Errno::ENODATA));
        let list = fs.listxattr(a.ino).unwrap();
        let mut names: Vec<&[u8]> = list.split(|&c| c == 0).filter(|s| !s.is_empty()).collect();
        names.sort();
        assert_eq!(
            names,
            vec![&b"trusted.t"[..], b"user.big", b"user.small"],
            "{opts:?}"
        );
        let s = fs.lookup(ROOT_INO, b"sparse").unwrap();
        assert_eq!(s.size, 4 << 20);
        assert_eq!(fs.lseek(s.ino, 0, SEEK_DATA).unwrap(), 1 << 20);
        assert_eq!(
            fs.lseek(s.ino, 1 << 20, SEEK_HOLE).unwrap(),
            (1 << 20) + 8192
        );
        assert_eq!(
            fs.lseek(s.ino, (1 << 20) + 8192, SEEK_DATA),
            Err(Errno::ENXIO)
        );
        assert_eq!(fs.read(s.ino, 0, 0, 8).unwrap(), vec![0u8; 8]);
        assert_eq!(
            fs.read(s.ino, 0, (1 << 20) + 4999, 2).unwrap(),
            vec![1u8, 0]
        );
        let d = fs.lookup(ROOT_INO, b"chr").unwrap();
        assert_eq!(d.rdev, crate::ondisk::inode::encode_dev(4, 67));
        assert_eq!(d.mode & 0o170000, libc::S_IFCHR);
    }
}

#[test]
fn corrupt_metadata_gives_euclean_not_panic() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    std::fs::write(src.join("d/file"), &data).unwrap();
    let img = t.path().join("img");
    mkfs(&src, &img, &["-t", "ext4", "-b", "4096"], "32M");
    let pristine = std::fs::read(&img).unwrap();
    let fs = mount(&img);
    let d = fs.lookup(ROOT_INO, b"d").unwrap();
    let f = fs.lookup(d.ino, b"file").unwrap();
    let (iblk, ioff) = fs.inode_location(f.ino).unwrap();
    let inode = fs.read_inode(d.ino).unwrap();
    let Some(dblk) = fs.map_block(d.ino, &inode, 0).unwrap().status.pblk() else {
        panic!("directory block 0 is a hole");
    };
    let bs = fs.block_size() as u64;
    drop(fs);
    // Flip one byte of the file's inode: checksum mismatch.
    let mut bad = pristine.clone();
    bad[(iblk * bs) as usize + ioff + 0x20] ^= 0x40;
    std::fs::write(&img, &bad).unwrap();
    let fs = mount(&img);
    assert_eq!(fs.lookup(d.ino, b"file").unwrap_err(), Errno::EUCLEAN);
    drop(fs);
    // Flip a byte in the directory block.
    let mut bad = pristine.clone();
    bad[(dblk * bs) as usize + 30] ^= 0xFF;
    std::fs::write(&img, &bad).unwrap();
    let fs = mount(&img);
    assert_eq!(fs.lookup(d.ino, b"file").unwrap_err(), Errno::EUCLEAN);
    assert_eq!(fs.opendir(d.ino, 0).unwrap_err(), Errno::EUCLEAN);
    drop(fs);
    // Superblock magic and checksum.
    let mut bad = pristine.clone();
    bad[1024 + 0x38] ^= 1;
    std::fs::write(&img, &bad).unwrap();
    let dev = FileDevice::open(&img, true).unwrap();
    let err = Fs::mount(Arc::new(dev), &MountOptions::default())
        .err()
        .unwrap();
    assert!(err.contains("magic"), "{err}");
    let mut bad = pristine.clone();
    bad[1024 + 0x10] ^= 1;
    std::fs::write(&img, &bad).unwrap();
    let dev = FileDevice::open(&img, true).unwrap();
    let err = Fs::mount(Arc::new(dev), &MountOptions::default())
        .err()
        .unwrap();
    assert!(err.contains("checksum"), "{err}");
    // Group descriptor checksum.
    let mut bad = pristine.clone();
    bad[4096 + 0x10] ^= 1;
    std::fs::write(&img, &bad).unwrap();
    let dev = FileDevice::open(&img, true).unwrap();
    let err = Fs::mount(Arc::new(dev), &MountOptions::default())
        .err()
        .unwrap();
    assert!(err.contains("group descriptor 0"), "{err}");
    // Random garbage over every metadata-looking block never panics.
    let mut rng = 0x1234_5678u64;
    for round in 0..40 {
        let mut bad = pristine.clone();
        for _ in 0..64 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let at = (rng % (bad.len() as u64 / 8)) as usize; // metadata lives early in the image
            bad[at] ^= (rng >> 32) as u8 | 1;
        }
        std::fs::write(&img, &bad).unwrap();
        let dev = FileDevice::open(&img, true).unwrap();
        if let Ok(fs) = Fs::mount(Arc::new(dev), &MountOptions::default()) {
            let _ = fs.statfs();
            if let Ok(fh) = fs.opendir(ROOT_INO, 0) {
                let mut names = Vec::new();
                let _ = fs.readdir(ROOT_INO, fh, 0, &mut |e| {
                    names.push(e.name.clone());
                    true
                });
                for n in names {
                    if let Ok(a) = fs.lookup(ROOT_INO, &n) {
                        let _ = fs.read(a.ino, 0, 0, 1 << 20);
                        let _ = fs.listxattr(a.ino);
                        let _ = fs.readlink(a.ino);
                        let _ = fs.lseek(a.ino, 0, SEEK_HOLE);
                    }
                }
            }
        }
        let _ = round;
    }
}
