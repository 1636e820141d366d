//! Indirect-mapped (ext2/ext3-style) inodes: directories grown through the direct, single and
//! double indirect ranges, slow symlinks, truncate up/down of files mke2fs wrote, and freeing
//! maps down to the triple indirect level. After each clean shutdown e2fsck finds nothing to fix
//! and the kernel's ext4 reads back exactly what we expect.

use crate::errno::Errno;
use crate::fs::testutil::*;
use crate::fs::*;
use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The byte at `off` of the test files' data.
fn pattern(off: u64) -> u8 {
    (off.wrapping_mul(2654435761) >> 13) as u8 | 1
}

fn pattern_range(start: u64, len: u64) -> Vec<u8> {
    (start..start + len).map(pattern).collect()
}

/// The tree under the kernel's read-only mount: path → kind ("d", "f:<nlink>:<size>", "l:<target>").
fn kernel_tree(mnt: &Path) -> BTreeMap<String, String> {
    walk_tree(mnt, |p, _, md| {
        Some(kind_of(p, md, || {
            format!(
                "f:{}:{}",
                std::os::unix::fs::MetadataExt::nlink(md),
                md.len()
            )
        }))
    })
}

fn make_image(dir: &Path, tag: &str, opts: &[&str], size: &str) -> PathBuf {
    let img = dir.join(format!("img-{tag}"));
    mkfs(&dir.join("src"), &img, opts, size);
    img
}

fn flag_extents(fs: &Fs, ino: Ino) -> bool {
    fs.read_inode(ino)
        .unwrap()
        .has_flag(crate::ondisk::inode::flags::EXTENTS)
}

fn read_all(fs: &Fs, ino: Ino, off: u64, len: u64) -> Vec<u8> {
    let mut v = Vec::new();
    while (v.len() as u64) < len {
        let want = (len - v.len() as u64).min(1 << 20) as u32;
        let got = fs.read(ino, 0, off + v.len() as u64, want).unwrap();
        assert!(!got.is_empty(), "short read at {}", off + v.len() as u64);
        v.extend_from_slice(&got);
    }
    v
}

fn truncate(fs: &Fs, ino: Ino, size: u64) -> Attr {
    fs.setattr(
        ino,
        &SetAttr {
            size: Some(size),
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn indirect_dirs_symlinks_and_truncate_are_clean_and_kernel_readable() {
    for (tag, opts) in [
        ("ext3-1k", &["-t", "ext3", "-b", "1024"][..]),
        ("ext3-4k", &["-t", "ext3", "-b", "4096"]),
        (
            "ext4-noextent-1k",
            &["-t", "ext4", "-b", "1024", "-O", "^extent,^64bit"],
        ),
        (
            "ext4-noextent-4k-nocsum",
            &[
                "-t",
                "ext4",
                "-b",
                "4096",
                "-O",
                "^extent,^64bit,^metadata_csum",
            ],
        ),
    ] {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        // A file reaching the double indirect range at both block sizes (4 KiB: > 1036 blocks).
        let data_len: u64 = 4 * 1024 * 1024 + 700 * 1024 + 123;
        std::fs::write(src.join("data"), pattern_range(0, data_len)).unwrap();
        let img = make_image(t.path(), tag, opts, "64M");
        let fs = mount_rw(&img);
        let bs = fs.block_size() as u64;
        let apb = bs / 4;
        let bfree0 = fs.statfs().unwrap().bfree;
        let data = fs.lookup(ROOT_INO, b"data").unwrap();
        assert!(
            !flag_extents(&fs, data.ino),
            "{tag}: mke2fs made an extent file"
        );
        assert_eq!(
            read_all(&fs, data.ino, 0, data_len),
            pattern_range(0, data_len)
        );
        let data_blocks0 = data.blocks / (bs / 512);
        let mut expect: BTreeMap<String, String> = BTreeMap::new();
        expect.insert("lost+found".into(), "d".into());

        // A directory through the direct, single and double indirect ranges (hard links to one
        // file, so the inode table does not limit it).
        let target = fs
            .mknod(ROOT_INO, b"target", libc::S_IFREG | 0o644, 0, &ctx())
            .unwrap();
        let big = fs.mkdir(ROOT_INO, b"big", 0o755, &ctx()).unwrap();
        assert!(!flag_extents(&fs, big.ino));
        expect.insert("big".into(), "d".into());
        let want_blocks = NDIR_TEST + apb + 3;
        let mut names = Vec::new();
        let mut n = 0;
        while fs.getattr(big.ino).unwrap().size / bs < want_blocks {
            let name = format!("{n:06}-{}", "x".repeat(240));
            fs.link(target.ino, big.ino, name.as_bytes()).unwrap();
            names.push(name);
            n += 1;
        }
        let links = names.len() + 1;
        expect.insert("target".into(), format!("f:{links}:0"));
        for name in &names {
            expect.insert(format!("big/{name}"), format!("f:{links}:0"));
        }
        for name in names.iter().step_by(97) {
            assert_eq!(fs.lookup(big.ino, name.as_bytes()).unwrap().ino, target.ino);
        }
        // i_blocks counts the indirect blocks: 1 single + 1 double + its children.
        let dir_blocks = fs.getattr(big.ino).unwrap().size / bs;
        let ind = 1 + 1 + (dir_blocks - NDIR_TEST - apb).div_ceil(apb);
        assert_eq!(
            fs.getattr(big.ino).unwrap().blocks,
            (dir_blocks + ind) * (bs / 512),
            "{tag}: i_blocks of the big directory"
        );

        // Subdirectories, a slow symlink (a mapped block) and a fast one.
        let sub = fs.mkdir(ROOT_INO, b"sub", 0o700, &ctx()).unwrap();
        fs.mkdir(sub.ino, b"inner", 0o700, &ctx()).unwrap();
        expect.insert("sub".into(), "d".into());
        expect.insert("sub/inner".into(), "d".into());
        let long = "long/".repeat(60);
        let slow = fs
            .symlink(sub.ino, b"slow", long.as_bytes(), &ctx())
            .unwrap();
        assert_eq!(slow.blocks, bs / 512);
        assert_eq!(fs.readlink(slow.ino).unwrap(), long.as_bytes());
        fs.symlink(ROOT_INO, b"fast", b"sub/inner", &ctx()).unwrap();
        expect.insert("sub/slow".into(), format!("l:{long}"));
        expect.insert("fast".into(), "l:sub/inner".into());

        // Truncate down into the double indirect range (partial block), up (a hole), down into
        // the direct blocks, up again.
        let s1 = (NDIR_TEST + apb + 5) * bs + 100;
        truncate(&fs, data.ino, s1);
        assert_eq!(read_all(&fs, data.ino, 0, s1), pattern_range(0, s1));
        let up1 = s1 + 3 * apb * bs + 17;
        truncate(&fs, data.ino, up1);
        assert_eq!(
            read_all(&fs, data.ino, s1, up1 - s1),
            vec![0; (up1 - s1) as usize]
        );
        assert_eq!(
            read_all(&fs, data.ino, s1 - 500, 500),
            pattern_range(s1 - 500, 500)
        );
        let kept = NDIR_TEST + apb + 6;
        assert_eq!(
            fs.getattr(data.ino).unwrap().blocks,
            (kept + 3) * (bs / 512),
            "{tag}: i_blocks after truncating into the double indirect range"
        );
        let s2 = 7 * bs + 33;
        truncate(&fs, data.ino, s2);
        assert_eq!(fs.getattr(data.ino).unwrap().blocks, 8 * (bs / 512));
        let up2 = 20 * bs;
        truncate(&fs, data.ino, up2);
        let mut want_data = pattern_range(0, s2);
        want_data.resize(up2 as usize, 0);
        assert_eq!(read_all(&fs, data.ino, 0, up2), want_data);
        expect.insert("data".into(), format!("f:1:{up2}"));
        fs.shutdown().unwrap();
        drop(fs);
        e2fsck_clean(&img);
        let mnt = kernel_mount(&img, "loop,ro");
        let seen = kernel_tree(&mnt);
        let kdata = std::fs::read(mnt.join("data")).unwrap();
        kernel_umount(&mnt);
        assert_eq!(seen, expect, "{tag}: the kernel sees another tree");
        assert!(kdata == want_data, "{tag}: the kernel reads other data");

        // Remove everything again.
        let fs = mount_rw(&img);
        let big = fs.lookup(ROOT_INO, b"big").unwrap();
        for name in &names {
            fs.unlink(big.ino, name.as_bytes()).unwrap();
        }
        fs.rmdir(ROOT_INO, b"big").unwrap();
        let sub = fs.lookup(ROOT_INO, b"sub").unwrap();
        fs.unlink(sub.ino, b"slow").unwrap();
        fs.rmdir(sub.ino, b"inner").unwrap();
        fs.rmdir(ROOT_INO, b"sub").unwrap();
        for name in [&b"fast"[..], b"target", b"data"] {
            fs.unlink(ROOT_INO, name).unwrap();
        }
        fs.forget_all();
        let bfree = fs.statfs().unwrap().bfree;
        fs.shutdown().unwrap();
        drop(fs);
        assert_eq!(
            bfree,
            bfree0 + data_blocks0,
            "{tag}: every block came back (the file's {data_blocks0} included)"
        );
        e2fsck_clean(&img);
        let mnt = kernel_mount(&img, "loop,ro");
        let seen = kernel_tree(&mnt);
        kernel_umount(&mnt);
        let only: BTreeMap<String, String> = [("lost+found".to_string(), "d".to_string())].into();
        assert_eq!(seen, only, "{tag}: the kernel still sees files");
    }
}

/// Direct pointers of an indirect map (test-local copy).
const NDIR_TEST: u64 = 12;

/// Write `len` pattern bytes at `off` of `f`.
fn put_chunk(f: &mut std::fs::File, off: u64, len: u64) {
    f.seek(SeekFrom::Start(off)).unwrap();
    f.write_all(&pattern_range(off, len)).unwrap();
}

#[test]
fn indirect_triple_maps_truncate_and_free_exactly() {
    for (tag, opts) in [
        ("ext3-1k", &["-t", "ext3", "-b", "1024"][..]),
        (
            "ext4-noextent-4k",
            &["-t", "ext4", "-b", "4096", "-O", "^extent,^64bit"],
        ),
    ] {
        let bs: u64 = if tag.ends_with("1k") { 1024 } else { 4096 };
        let apb = bs / 4;
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        // Chunks in each range: direct, single, double, and the triple indirect range under two
        // different top-level and middle slots.
        let single = NDIR_TEST;
        let double = single + apb;
        let triple = double + apb * apb;
        let chunks: Vec<(u64, u64)> = vec![
            (0, 3 * bs + 10),
            (single * bs + 5, 2 * bs),
            ((double + apb + 3) * bs, 3 * bs),
            ((triple + 2) * bs, 2 * bs),
            ((triple + apb + 7) * bs + 1, bs),
            ((triple + apb * apb + 2 * apb) * bs, 2 * bs + 99),
        ];
        let size = chunks.last().map(|&(o, l)| o + l).unwrap();
        {
            let mut f = std::fs::File::create(src.join("sparse")).unwrap();
            for &(o, l) in &chunks {
                put_chunk(&mut f, o, l);
            }
            f.set_len(size).unwrap();
        }
        let img = make_image(t.path(), tag, opts, "64M");
        let fs = mount_rw(&img);
        assert_eq!(fs.block_size() as u64, bs);
        let bfree0 = fs.statfs().unwrap().bfree;
        let f = fs.lookup(ROOT_INO, b"sparse").unwrap();
        assert!(!flag_extents(&fs, f.ino));
        assert_eq!(f.size, size);
        let blocks0 = f.blocks / (bs / 512);
        for &(o, l) in &chunks {
            assert_eq!(
                read_all(&fs, f.ino, o, l),
                pattern_range(o, l),
                "{tag}: chunk at {o}"
            );
        }
        // Cut inside the triple range, between the second and third triple chunks: the first
        // top-level subtree stays, the second goes.
        let cut1 = (triple + apb * apb) * bs - 3;
        let a = truncate(&fs, f.ino, cut1);
        assert_eq!(a.size, cut1);
        // Kept data: 4 direct, 3 single, 3 double, 2 + 2 in the first triple subtree. Indirect:
        // the single; the double and its one leaf; the triple, its child 0 and that child's two
        // leaves. The second top-level subtree (child, leaf, 3 data blocks) is gone.
        let kept_data = 4 + 3 + 3 + 2 + 2;
        let kept_ind = 1 + (1 + 1) + (1 + 1 + 2);
        assert_eq!(
            a.blocks,
            (kept_data + kept_ind) * (bs / 512),
            "{tag}: i_blocks after the first cut"
        );
        for &(o, l) in &chunks[..5] {
            assert_eq!(read_all(&fs, f.ino, o, l), pattern_range(o, l));
        }
        // Grow it back over the removed chunk: a hole now.
        let (o5, l5) = chunks[5];
        truncate(&fs, f.ino, size);
        assert_eq!(read_all(&fs, f.ino, o5, l5), vec![0; l5 as usize]);
        // Cut inside the first triple leaf: the block holding triple+2 stays, partially.
        let cut2 = (triple + 2) * bs + 10;
        let a = truncate(&fs, f.ino, cut2);
        // Kept: 4 + 3 + 3 data and one in the triple range; the single, the double and its leaf,
        // the triple, its child 0 and leaf 0 (leaf 1 went with its blocks).
        assert_eq!(a.blocks, (4 + 3 + 3 + 1 + 1 + 2 + 3) * (bs / 512));
        assert_eq!(
            read_all(&fs, f.ino, (triple + 2) * bs, 10),
            pattern_range((triple + 2) * bs, 10)
        );
        fs.shutdown().unwrap();
        drop(fs);
        e2fsck_clean(&img);
        let mnt = kernel_mount(&img, "loop,ro");
        let kernel = {
            let mut file = std::fs::File::open(mnt.join("sparse")).unwrap();
            let mut out = Vec::new();
            for &(o, l) in &chunks[..4] {
                let l = l.min(cut2 - o);
                let mut buf = vec![0u8; l as usize];
                file.seek(SeekFrom::Start(o)).unwrap();
                std::io::Read::read_exact(&mut file, &mut buf).unwrap();
                out.push((buf == pattern_range(o, l), o));
            }
            let len = file.metadata().unwrap().len();
            (out, len)
        };
        kernel_umount(&mnt);
        assert_eq!(kernel.1, cut2);
        for (ok, o) in kernel.0 {
            assert!(ok, "{tag}: the kernel reads other data at {o}");
        }

        // Truncate to 0 on our mount, then unlink: every block back.
        let fs = mount_rw(&img);
        let f = fs.lookup(ROOT_INO, b"sparse").unwrap();
        let a = truncate(&fs, f.ino, 0);
        assert_eq!(a.blocks, 0);
        assert_eq!(fs.statfs().unwrap().bfree, bfree0 + blocks0);
        fs.unlink(ROOT_INO, b"sparse").unwrap();
        fs.forget_all();
        assert_eq!(fs.statfs().unwrap().bfree, bfree0 + blocks0);
        fs.shutdown().unwrap();
        drop(fs);
        e2fsck_clean(&img);

        // A fresh copy: unlinking the whole map at once frees it all, too.
        let img2 = make_image(t.path(), &format!("{tag}-unlink"), opts, "64M");
        let fs = mount_rw(&img2);
        let bfree0 = fs.statfs().unwrap().bfree;
        let f = fs.lookup(ROOT_INO, b"sparse").unwrap();
        let blocks0 = f.blocks / (bs / 512);
        fs.forget_all();
        fs.unlink(ROOT_INO, b"sparse").unwrap();
        assert_eq!(fs.statfs().unwrap().bfree, bfree0 + blocks0);
        fs.shutdown().unwrap();
        drop(fs);
        e2fsck_clean(&img2);
        let mnt = kernel_mount(&img2, "loop,ro");
        let seen = kernel_tree(&mnt);
        kernel_umount(&mnt);
        let only: BTreeMap<String, String> = [("lost+found".to_string(), "d".to_string())].into();
        assert_eq!(seen, only);
    }
}

#[test]
fn indirect_truncate_refuses_sizes_the_map_cannot_reach() {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("src")).unwrap();
    std::fs::write(t.path().join("src/f"), b"hello").unwrap();
    let img = make_image(t.path(), "ext3", &["-t", "ext3", "-b", "1024"], "16M");
    let fs = mount_rw(&img);
    let f = fs.lookup(ROOT_INO, b"f").unwrap();
    let max = fs.ind_max_bytes();
    // 1 KiB blocks: the triple indirect tree is the limit (12 + 256 + 256² + 256³ blocks).
    assert_eq!(max, (12 + 256 + 65536 + 16777216) * 1024);
    assert_eq!(
        fs.setattr(
            f.ino,
            &SetAttr {
                size: Some(max + 1),
                ..Default::default()
            }
        ),
        Err(Errno::EFBIG)
    );
    assert_eq!(truncate(&fs, f.ino, max).size, max);
    truncate(&fs, f.ino, 3);
    assert_eq!(fs.read(f.ino, 0, 0, 100).unwrap(), b"hel");
    fs.shutdown().unwrap();
    drop(fs);
    e2fsck_clean(&img);
}
