//! The extent status tree as the read path's mapping cache: after every step of mixed workloads
//! (directories grown, files mke2fs wrote truncated down and up, inodes freed and their numbers
//! reused, inline data moved to blocks) `map_block` through the cache answers exactly what an
//! uncached walk of the extent tree or indirect map answers, for every logical block of every
//! inode in play. Then a clean shutdown, e2fsck, and the kernel reads back the data.

use super::testutil::*;
use super::*;
use crate::ondisk::inode::flags;
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

/// Compare the cached and the uncached mapping of every block of `ino` up to its size (plus a
/// margin), then of every run to the end of the logical block space. The cached pass goes first
/// at each block, so runs recorded before the last change are what answers.
fn check_inode(fs: &Fs, ino: Ino, what: &str) {
    let Ok(inode) = fs.read_inode(ino) else {
        return;
    };
    if fs.owns_no_block_map(&inode) {
        return;
    }
    let bs = fs.block_size() as u64;
    let n = (inode.size.div_ceil(bs) + 16).min(1 << 16);
    for l in 0..n {
        let cached = fs.map_block(ino, &inode, l);
        let walked = fs.map_block_uncached(ino, &inode, l);
        assert_eq!(cached, walked, "{what}: inode {ino} block {l}");
    }
    // Whole runs to the end (holes up to 2^32, sparse tails), probing both ends of each.
    let mut l = 0u64;
    let mut runs = 0;
    while l < 1 << 32 && runs < 100_000 {
        let walked = fs.map_block_uncached(ino, &inode, l).unwrap();
        assert!(walked.len >= 1);
        let last = l + walked.len - 1;
        for probe in [last, l] {
            assert_eq!(
                fs.map_block(ino, &inode, probe),
                fs.map_block_uncached(ino, &inode, probe),
                "{what}: inode {ino} block {probe}"
            );
        }
        l += walked.len;
        runs += 1;
    }
}

struct World<'a> {
    fs: &'a Fs,
    /// Inodes in play (checked after every step), by name for the messages.
    inodes: BTreeMap<Ino, String>,
    steps: usize,
}

impl World<'_> {
    fn check(&mut self, step: &str) {
        self.steps += 1;
        for (&ino, name) in &self.inodes {
            check_inode(self.fs, ino, &format!("after {step} ({name})"));
        }
    }
}

fn read_all(fs: &Fs, ino: Ino, len: u64) -> Vec<u8> {
    let mut v = Vec::new();
    while (v.len() as u64) < len {
        let want = (len - v.len() as u64).min(1 << 20) as u32;
        let got = fs.read(ino, 0, v.len() as u64, want).unwrap();
        assert!(!got.is_empty(), "short read at {}", v.len());
        v.extend_from_slice(&got);
    }
    assert!(fs.read(ino, 0, len, 1).unwrap().is_empty());
    v
}

fn truncate(fs: &Fs, ino: Ino, size: u64) {
    fs.setattr(
        ino,
        &SetAttr {
            size: Some(size),
            ..Default::default()
        },
    )
    .unwrap();
}

/// Truncate `ino` and keep the expected content in step.
fn truncate_to(w: &mut World, ino: Ino, expect: &mut Vec<u8>, size: u64, step: &str) {
    truncate(w.fs, ino, size);
    expect.resize(size as usize, 0);
    w.check(step);
    assert_eq!(read_all(w.fs, ino, size), *expect, "content after {step}");
}

/// A source tree for mke2fs -d: a sparse file with one data block in every other block (many
/// extents: a tree of depth 1 at 4 KiB and depth 2 at 1 KiB), a dense file, a directory of small
/// files, and a small file (inline on inline_data images).
fn source(src: &Path, bs: u64) -> (u64, u64) {
    std::fs::create_dir_all(src.join("tree")).unwrap();
    let sparse_len = 800 * bs + 123;
    {
        let mut f = std::fs::File::create(src.join("sparse")).unwrap();
        for b in (0..800).step_by(2) {
            f.seek(SeekFrom::Start(b * bs)).unwrap();
            f.write_all(&pattern_range(b * bs, bs)).unwrap();
        }
        f.seek(SeekFrom::Start(sparse_len - 123)).unwrap();
        f.write_all(&pattern_range(sparse_len - 123, 123)).unwrap();
    }
    let dense_len = 3 * 1024 * 1024 + 77;
    std::fs::write(src.join("dense"), pattern_range(0, dense_len)).unwrap();
    for i in 0..40 {
        std::fs::write(src.join(format!("tree/f{i}")), pattern_range(i, 100 + i)).unwrap();
    }
    std::fs::write(src.join("small"), pattern_range(0, 50)).unwrap();
    (sparse_len, dense_len)
}

/// The sparse file's content as mke2fs wrote it.
fn sparse_content(bs: u64, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    for b in (0..800).step_by(2) {
        let o = (b * bs) as usize;
        v[o..o + bs as usize].copy_from_slice(&pattern_range(b * bs, bs));
    }
    let t = (len - 123) as usize;
    v[t..].copy_from_slice(&pattern_range(len - 123, 123));
    v
}

fn peek(fs: &Fs, dir: Ino, name: &str) -> Ino {
    fs.peek(dir, name.as_bytes()).unwrap().ino
}

/// Create a regular file and drop the lookup reference creation took (so unlink frees it).
fn mkfile(fs: &Fs, dir: Ino, name: &str) -> Ino {
    let a = fs
        .mknod(dir, name.as_bytes(), libc::S_IFREG | 0o644, 0, &ctx())
        .unwrap();
    fs.forget(a.ino, 1);
    a.ino
}

fn mkdir(fs: &Fs, dir: Ino, name: &str) -> Ino {
    let a = fs.mkdir(dir, name.as_bytes(), 0o755, &ctx()).unwrap();
    fs.forget(a.ino, 1);
    a.ino
}

fn workload(tag: &str, opts: &[&str], bs: u64) {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let (sparse_len, dense_len) = source(&src, bs);
    let img: PathBuf = t.path().join(format!("img-{tag}"));
    mkfs(&src, &img, opts, "64M");
    let fs = mount_rw(&img);
    assert_eq!(fs.block_size() as u64, bs);
    let extents = fs
        .sb
        .has_incompat(crate::ondisk::superblock::incompat::EXTENTS);
    let sparse = peek(&fs, ROOT_INO, "sparse");
    let dense = peek(&fs, ROOT_INO, "dense");
    let tree = peek(&fs, ROOT_INO, "tree");
    let small = peek(&fs, ROOT_INO, "small");
    let sparse_inode = fs.read_inode(sparse).unwrap();
    assert_eq!(
        sparse_inode.has_flag(flags::EXTENTS),
        extents,
        "{tag}: mke2fs mapped the file another way"
    );
    if extents {
        let depth = u16::from_le_bytes([sparse_inode.block[6], sparse_inode.block[7]]);
        assert!(depth >= 1, "{tag}: the sparse file should need index nodes");
    }
    let mut w = World {
        fs: &fs,
        inodes: BTreeMap::new(),
        steps: 0,
    };
    for (ino, name) in [
        (ROOT_INO, "/"),
        (sparse, "sparse"),
        (dense, "dense"),
        (tree, "tree"),
        (small, "small"),
    ] {
        w.inodes.insert(ino, name.to_string());
    }
    w.check("mount");
    let mut sparse_expect = sparse_content(bs, sparse_len);
    assert_eq!(read_all(&fs, sparse, sparse_len), sparse_expect);
    let mut dense_expect = pattern_range(0, dense_len);
    assert_eq!(read_all(&fs, dense, dense_len), dense_expect);
    assert!(
        fs.es.entries() > 0,
        "{tag}: reads should have filled the cache"
    );

    // Grow a directory block by block (linear, then htree with index splits).
    let grow = mkdir(&fs, ROOT_INO, "grow");
    w.inodes.insert(grow, "grow".into());
    for batch in 0..6 {
        for i in 0..120 {
            mkfile(
                &fs,
                grow,
                &format!("entry-with-a-fairly-long-name-{batch}-{i:04}"),
            );
        }
        w.check(&format!("growing grow, batch {batch}"));
    }

    // Two directories grown in turns: their blocks interleave, so each gets many extents (an
    // extent tree with a leaf block below the root at 4 KiB, as of writing) or indirect blocks.
    let (za, zb) = (mkdir(&fs, ROOT_INO, "zig"), mkdir(&fs, ROOT_INO, "zag"));
    w.inodes.insert(za, "zig".into());
    w.inodes.insert(zb, "zag".into());
    for i in 0..1200 {
        for d in [za, zb] {
            mkfile(&fs, d, &format!("interleaved-directory-entry-{i:06}"));
        }
        if i % 150 == 149 {
            w.check(&format!("zig-zag {i}"));
        }
    }

    // Truncate the sparse file down: inside a data block, inside a hole, across index nodes;
    // then up again (the cut part reads as zeros).
    for (i, cut) in [
        701 * bs + 17,
        400 * bs,
        399 * bs + 1,
        97 * bs,
        bs / 2,
        sparse_len,
        3 * bs,
    ]
    .into_iter()
    .enumerate()
    {
        truncate_to(
            &mut w,
            sparse,
            &mut sparse_expect,
            cut,
            &format!("sparse cut {i}"),
        );
    }
    for (i, cut) in [2 * 1024 * 1024 + 5, 8 * 1024 * 1024, 1024 * 1024 - 3]
        .into_iter()
        .enumerate()
    {
        truncate_to(
            &mut w,
            dense,
            &mut dense_expect,
            cut,
            &format!("dense cut {i}"),
        );
    }

    // Free inodes and reuse their numbers: the new owners must not see the old maps.
    let mut freed: Vec<Ino> = vec![sparse, tree];
    freed.extend((0..40).map(|i| peek(&fs, tree, &format!("f{i}"))));
    fs.unlink(ROOT_INO, b"sparse").unwrap();
    assert!(
        fs.es.ranges(sparse, 0, u64::MAX).is_empty(),
        "{tag}: a freed inode keeps cached runs"
    );
    for i in 0..40 {
        fs.unlink(tree, format!("f{i}").as_bytes()).unwrap();
    }
    fs.rmdir(ROOT_INO, b"tree").unwrap();
    w.inodes.remove(&sparse);
    w.inodes.remove(&tree);
    w.check("unlinking");
    let mut reused = Vec::new();
    let d = mkdir(&fs, ROOT_INO, "again");
    w.inodes.insert(d, "again".into());
    reused.push(d);
    for i in 0..300 {
        let f = mkfile(&fs, d, &format!("another-fairly-long-entry-name-{i:05}"));
        if i < 3 {
            w.inodes.insert(f, format!("again/{i}"));
            reused.push(f);
        }
    }
    let target = "x/".repeat(100);
    let sl = fs
        .symlink(ROOT_INO, b"slow", target.as_bytes(), &ctx())
        .unwrap()
        .ino;
    fs.forget(sl, 1);
    w.inodes.insert(sl, "slow".into());
    reused.push(sl);
    let d2 = mkdir(&fs, d, "sub");
    w.inodes.insert(d2, "again/sub".into());
    reused.push(d2);
    w.check("recreating");
    assert!(
        reused.iter().any(|i| freed.contains(i)),
        "{tag}: no inode number was reused ({reused:?}, freed {freed:?})"
    );
    assert_eq!(fs.readlink(sl).unwrap(), target.as_bytes());
    // Grow a reused file from a hole (truncate up) and back down.
    let f0 = reused[1];
    truncate(&fs, f0, 5 * bs);
    w.check("growing a reused file");
    truncate(&fs, f0, 0);
    w.check("emptying a reused file");
    // Shrink the grown directory's content (entries go, blocks stay) and remove it.
    for batch in 0..6 {
        for i in 0..120 {
            fs.unlink(
                grow,
                format!("entry-with-a-fairly-long-name-{batch}-{i:04}").as_bytes(),
            )
            .unwrap();
        }
    }
    fs.rmdir(ROOT_INO, b"grow").unwrap();
    w.inodes.remove(&grow);
    let d3 = mkdir(&fs, ROOT_INO, "third");
    w.inodes.insert(d3, "third".into());
    for i in 0..150 {
        mkfile(&fs, d3, &format!("third-dir-entry-number-{i:05}"));
    }
    w.check("third directory");

    // Inline data moved to blocks (inline_data images).
    let small_inode = fs.read_inode(small).unwrap();
    if small_inode.has_flag(flags::INLINE_DATA) {
        let mut expect = pattern_range(0, 50);
        truncate_to(&mut w, small, &mut expect, 3 * bs + 5, "inline file grown");
        assert!(!fs.read_inode(small).unwrap().has_flag(flags::INLINE_DATA));
        let idir = mkdir(&fs, ROOT_INO, "idir");
        w.inodes.insert(idir, "idir".into());
        assert!(fs.read_inode(idir).unwrap().has_flag(flags::INLINE_DATA));
        for i in 0..60 {
            mkfile(&fs, idir, &format!("inline-dir-entry-{i:03}"));
        }
        assert!(!fs.read_inode(idir).unwrap().has_flag(flags::INLINE_DATA));
        w.check("inline directory converted");
    } else {
        let mut expect = pattern_range(0, 50);
        truncate_to(&mut w, small, &mut expect, 3 * bs + 5, "small file grown");
    }
    let small_expect = {
        let mut v = pattern_range(0, 50);
        v.resize(3 * bs as usize + 5, 0);
        v
    };
    assert!(w.steps > 20);

    // A remount starts from an empty cache and must agree too.
    fs.shutdown().unwrap();
    let inodes = w.inodes.clone();
    drop(w);
    drop(fs);
    e2fsck_clean(&img);
    let fs = mount_rw(&img);
    for &ino in inodes.keys() {
        assert!(fs.es.ranges(ino, 0, u64::MAX).is_empty(), "fresh cache");
    }
    for (&ino, name) in &inodes {
        check_inode(&fs, ino, &format!("after remount ({name})"));
    }
    fs.shutdown().unwrap();
    drop(fs);
    e2fsck_clean(&img);

    let mnt = kernel_mount(&img, "loop,ro");
    let got = std::fs::read(mnt.join("dense"));
    let got_small = std::fs::read(mnt.join("small"));
    let again = std::fs::read_dir(mnt.join("again")).map(|d| d.count());
    let slow = std::fs::read_link(mnt.join("slow"));
    kernel_umount(&mnt);
    assert!(
        got.unwrap() == dense_expect,
        "{tag}: the kernel reads other data"
    );
    assert!(got_small.unwrap() == small_expect, "{tag}: small file");
    assert_eq!(again.unwrap(), 301);
    assert_eq!(slow.unwrap().to_string_lossy(), target);
}

#[test]
fn status_cache_matches_walk_extent_4k() {
    workload(
        "ext4-4k",
        &["-t", "ext4", "-b", "4096", "-O", "^has_journal"],
        4096,
    );
}

#[test]
fn status_cache_matches_walk_extent_1k_journal() {
    workload("ext4-1k-j", &["-t", "ext4", "-b", "1024"], 1024);
}

#[test]
fn status_cache_matches_walk_indirect_ext3() {
    workload("ext3-1k", &["-t", "ext3", "-b", "1024"], 1024);
}

#[test]
fn status_cache_matches_walk_indirect_4k_nocsum() {
    workload(
        "ext4-noextent-4k",
        &[
            "-t",
            "ext4",
            "-b",
            "4096",
            "-O",
            "^extent,^64bit,^metadata_csum,^has_journal",
        ],
        4096,
    );
}

#[test]
fn status_cache_matches_walk_inline_data() {
    workload(
        "ext4-inline",
        &[
            "-t",
            "ext4",
            "-b",
            "4096",
            "-I",
            "256",
            "-O",
            "inline_data,^has_journal",
        ],
        4096,
    );
}

/// Readers on many threads share the cache while a writer changes other inodes' maps.
#[test]
fn status_cache_concurrent_readers() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let (sparse_len, dense_len) = source(&src, 4096);
    let img = t.path().join("img");
    mkfs(
        &src,
        &img,
        &["-t", "ext4", "-b", "4096", "-O", "^has_journal"],
        "64M",
    );
    let fs = std::sync::Arc::new(mount_rw(&img));
    let sparse = peek(&fs, ROOT_INO, "sparse");
    let dense = peek(&fs, ROOT_INO, "dense");
    let sparse_expect = sparse_content(4096, sparse_len);
    let dense_expect = pattern_range(0, dense_len);
    let readers: Vec<_> = (0..4)
        .map(|k| {
            let fs = fs.clone();
            let (se, de) = (sparse_expect.clone(), dense_expect.clone());
            std::thread::spawn(move || {
                for i in 0..30u64 {
                    let off = (i * 7919 + k * 104729) % sparse_len;
                    let got = fs.read(sparse, 0, off, 70_000).unwrap();
                    assert_eq!(got, se[off as usize..(off as usize + got.len())]);
                    let off = (i * 15485863 + k) % dense_len;
                    let got = fs.read(dense, 0, off, 200_000).unwrap();
                    assert_eq!(got, de[off as usize..(off as usize + got.len())]);
                }
            })
        })
        .collect();
    let d = mkdir(&fs, ROOT_INO, "busy");
    for i in 0..400 {
        mkfile(&fs, d, &format!("concurrent-entry-{i:05}"));
    }
    for r in readers {
        r.join().unwrap();
    }
    check_inode(&fs, d, "busy");
    check_inode(&fs, sparse, "sparse");
    fs.shutdown().unwrap();
    e2fsck_clean(&img);
}
