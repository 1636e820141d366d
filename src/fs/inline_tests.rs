//! Inline-data directories and files (`-O inline_data`) changed through the engine: entries added
//! until the directory spills into `system.data` and then into blocks (and an htree), entries
//! removed, inline directories renamed and removed, inline files truncated. After each scenario
//! e2fsck finds nothing to fix and the kernel's ext4 shows exactly the expected tree.

use super::testutil::*;
use super::*;
use crate::ondisk::inode::flags;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Block size 4 KiB and 1 KiB, metadata_csum on and off.
const CONFIGS: [(&str, &[&str]); 4] = [
    ("4k-csum", &["-b", "4096"]),
    ("4k-nocsum", &["-b", "4096", "-O", "^metadata_csum"]),
    ("1k-csum", &["-b", "1024"]),
    ("1k-nocsum", &["-b", "1024", "-O", "^metadata_csum"]),
];

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

/// The source tree every image starts from: two small directories mke2fs makes inline, inline
/// files of a few sizes (in `i_block` only, and spilling into `system.data`).
fn source_tree(src: &Path) {
    std::fs::create_dir_all(src.join("small")).unwrap();
    std::fs::write(src.join("small/f1"), b"one").unwrap();
    std::fs::write(src.join("small/f2"), b"two").unwrap();
    std::fs::create_dir_all(src.join("other")).unwrap();
    for n in ["a", "b", "c"] {
        std::fs::write(src.join("other").join(n), n.as_bytes()).unwrap();
    }
    std::fs::write(src.join("tiny.txt"), b"tiny\n").unwrap();
    std::fs::write(src.join("hundred.bin"), pattern(100, 1)).unwrap();
    std::fs::write(src.join("thirty.bin"), pattern(100, 2)).unwrap();
    std::fs::write(src.join("up.txt"), b"0123456789").unwrap();
    std::fs::write(src.join("up2.bin"), pattern(100, 3)).unwrap();
    std::fs::write(src.join("emptied.bin"), pattern(90, 4)).unwrap();
    std::fs::write(src.join("padded.bin"), pattern(100, 5)).unwrap();
}

/// `i_flags` of `path` as debugfs reads it from the image.
fn debugfs_flags(img: &Path, path: &str) -> u32 {
    let out = Command::new("debugfs")
        .args(["-R", &format!("stat {path}")])
        .arg(img)
        .output()
        .expect("debugfs (e2fsprogs) is required");
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text
        .split("Flags: 0x")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("debugfs stat {path}: no flags in {text}"));
    u32::from_str_radix(hex, 16).unwrap()
}

fn on_disk_inline(img: &Path, path: &str) -> bool {
    debugfs_flags(img, path) & flags::INLINE_DATA != 0
}

/// A fresh journal-less inline_data image; mke2fs must have made the small directories and
/// files inline, so no test can pass without touching inline data.
fn image(dir: &Path, tag: &str, extra: &[&str]) -> PathBuf {
    let src = dir.join(format!("src-{tag}"));
    source_tree(&src);
    let img = dir.join(format!("{tag}.img"));
    let mut opts = vec!["-t", "ext4", "-I", "256", "-O", "inline_data,^has_journal"];
    opts.extend_from_slice(extra);
    mkfs(&src, &img, &opts, "64M");
    for p in ["/small", "/other", "/tiny.txt", "/hundred.bin", "/up.txt"] {
        assert!(
            on_disk_inline(&img, p),
            "{tag}: mke2fs did not make {p} inline"
        );
    }
    img
}

/// A short, comparable description of file contents.
fn describe(data: &[u8]) -> String {
    if data.len() <= 64 {
        return format!("f:{}", String::from_utf8_lossy(data));
    }
    let h = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    format!("f:{}:{h:016x}", data.len())
}

/// The tree as the kernel sees it (path → "d" or file description); checks on the way that
/// every directory's ".." is its parent.
fn kernel_tree(img: &Path) -> BTreeMap<String, String> {
    let mnt = kernel_mount(img, "loop,ro");
    let out = walk_tree(&mnt, |p, rel, md| {
        if rel == "lost+found" || rel.starts_with("lost+found/") {
            return None;
        }
        if md.is_dir() {
            let parent = p.parent().unwrap();
            assert_eq!(
                std::fs::metadata(p.join("..")).unwrap().ino(),
                std::fs::metadata(parent).unwrap().ino(),
                "kernel: {rel}/.. is not its parent"
            );
            return Some("d".to_string());
        }
        Some(describe(&std::fs::read(p).unwrap()))
    });
    kernel_umount(&mnt);
    out
}

/// Link counts of directories as the kernel sees them.
fn kernel_nlinks(img: &Path, paths: &[&str]) -> Vec<u64> {
    let mnt = kernel_mount(img, "loop,ro");
    let v = paths
        .iter()
        .map(|p| std::fs::metadata(mnt.join(p)).unwrap().nlink())
        .collect();
    kernel_umount(&mnt);
    v
}

/// The tree as our engine sees it, in the same form as `kernel_tree`.
fn engine_tree(fs: &Fs) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(ROOT_INO, String::new())];
    while let Some((dir, path)) = stack.pop() {
        for (name, ino) in walk(fs, dir) {
            if name == b"." || name == b".." {
                continue;
            }
            let name = String::from_utf8(name).unwrap();
            let rel = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}/{name}")
            };
            if rel == "lost+found" {
                continue;
            }
            let a = fs.getattr(ino).unwrap();
            if a.mode & libc::S_IFMT == libc::S_IFDIR {
                assert_eq!(fs.lookup(ino, b"..").unwrap().ino, dir, "{rel}/..");
                stack.push((ino, rel.clone()));
                out.insert(rel, "d".to_string());
            } else {
                let data = fs.read(ino, 0, 0, a.size as u32 + 1).unwrap();
                assert_eq!(data.len() as u64, a.size, "{rel}: short read");
                out.insert(rel, describe(&data));
            }
        }
    }
    out
}

/// The tree the source directory gives before any change.
fn initial_tree() -> BTreeMap<String, String> {
    let mut t = BTreeMap::new();
    for d in ["small", "other"] {
        t.insert(d.to_string(), "d".to_string());
    }
    t.insert("small/f1".into(), describe(b"one"));
    t.insert("small/f2".into(), describe(b"two"));
    for n in ["a", "b", "c"] {
        t.insert(format!("other/{n}"), describe(n.as_bytes()));
    }
    t.insert("tiny.txt".into(), describe(b"tiny\n"));
    t.insert("hundred.bin".into(), describe(&pattern(100, 1)));
    t.insert("thirty.bin".into(), describe(&pattern(100, 2)));
    t.insert("up.txt".into(), describe(b"0123456789"));
    t.insert("up2.bin".into(), describe(&pattern(100, 3)));
    t.insert("emptied.bin".into(), describe(&pattern(90, 4)));
    t.insert("padded.bin".into(), describe(&pattern(100, 5)));
    t
}

/// Shut down, then: e2fsck clean, and the kernel and a fresh mount of ours both show `expect`.
fn finish(fs: Fs, img: &Path, expect: &BTreeMap<String, String>, tag: &str) {
    assert_eq!(
        &engine_tree(&fs),
        expect,
        "{tag}: engine view before shutdown"
    );
    fs.shutdown().unwrap();
    drop(fs);
    e2fsck_clean(img);
    assert_eq!(&kernel_tree(img), expect, "{tag}: kernel view");
    let fs = mount(img);
    assert_eq!(
        &engine_tree(&fs),
        expect,
        "{tag}: engine view after remount"
    );
}

fn lookup(fs: &Fs, dir: Ino, name: &str) -> Ino {
    fs.lookup(dir, name.as_bytes()).unwrap().ino
}

fn mkfile(fs: &Fs, dir: Ino, name: &str) -> Ino {
    fs.mknod(dir, name.as_bytes(), libc::S_IFREG | 0o644, 0, &ctx())
        .unwrap()
        .ino
}

/// Where an inline directory's entries are: i_block only, or also system.data.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
enum Stage {
    IBlock,
    Xattr,
    OneBlock,
    Blocks,
    Htree,
}

fn stage(fs: &Fs, ino: Ino) -> Stage {
    let i = fs.read_inode(ino).unwrap();
    if i.has_flag(flags::INLINE_DATA) {
        if i.size > 60 {
            Stage::Xattr
        } else {
            Stage::IBlock
        }
    } else if i.has_flag(flags::INDEX) {
        Stage::Htree
    } else if i.size == fs.block_size() as u64 {
        Stage::OneBlock
    } else {
        Stage::Blocks
    }
}

#[test]
fn inline_dir_grows_into_xattr_then_blocks_then_htree() {
    let t = tempfile::tempdir().unwrap();
    for (tag, extra) in CONFIGS {
        let img = image(t.path(), tag, extra);
        let fs = mount_rw(&img);
        let mut expect = initial_tree();
        let small = lookup(&fs, ROOT_INO, "small");
        assert_eq!(stage(&fs, small), Stage::IBlock, "{tag}");
        let mut seen = vec![Stage::IBlock];
        let n = if fs.block_size() == 4096 { 400 } else { 200 };
        for i in 0..n {
            let name = format!("entry-{i:04}");
            mkfile(&fs, small, &name);
            expect.insert(format!("small/{name}"), describe(b""));
            let s = stage(&fs, small);
            assert!(
                s >= *seen.last().unwrap(),
                "{tag}: stage went back to {s:?}"
            );
            if s != *seen.last().unwrap() {
                seen.push(s);
            }
            // Every name so far is still found (lookups go through the new layout).
            if i % 37 == 0 {
                for j in 0..=i {
                    lookup(&fs, small, &format!("entry-{j:04}"));
                }
                lookup(&fs, small, "f1");
            }
        }
        assert_eq!(
            seen,
            [Stage::IBlock, Stage::Xattr, Stage::OneBlock, Stage::Htree],
            "{tag}: the directory took the wrong path"
        );
        // A spilled inline directory made through mkdir (new dirs start inline), then emptied.
        let sub = fs.mkdir(small, b"sub", 0o755, &ctx()).unwrap().ino;
        expect.insert("small/sub".into(), "d".into());
        assert_eq!(
            stage(&fs, sub),
            Stage::IBlock,
            "{tag}: mkdir made a block dir"
        );
        for i in 0..6 {
            mkfile(&fs, sub, &format!("s{i}"));
            expect.insert(format!("small/sub/s{i}"), describe(b""));
        }
        assert_eq!(stage(&fs, sub), Stage::Xattr, "{tag}");
        for i in (0..n).step_by(3) {
            let name = format!("entry-{i:04}");
            fs.unlink(small, name.as_bytes()).unwrap();
            expect.remove(&format!("small/{name}"));
        }
        fs.unlink(small, b"f2").unwrap();
        expect.remove("small/f2");
        assert_eq!(fs.getattr(small).unwrap().nlink, 3, "{tag}");
        finish(fs, &img, &expect, tag);
        assert!(on_disk_inline(&img, "/small/sub"), "{tag}");
        assert!(!on_disk_inline(&img, "/small"), "{tag}");
        assert_ne!(debugfs_flags(&img, "/small") & flags::INDEX, 0, "{tag}");
    }
}

#[test]
fn inline_dir_entries_removed_in_both_regions() {
    let t = tempfile::tempdir().unwrap();
    for (tag, extra) in CONFIGS {
        let img = image(t.path(), tag, extra);
        let fs = mount_rw(&img);
        let mut expect = initial_tree();
        let other = lookup(&fs, ROOT_INO, "other");
        assert_eq!(stage(&fs, other), Stage::IBlock, "{tag}");
        // Fill i_block, then spill two names into system.data.
        let mut added = Vec::new();
        while stage(&fs, other) == Stage::IBlock {
            let name = format!("x{}", added.len());
            mkfile(&fs, other, &name);
            added.push(name);
        }
        mkfile(&fs, other, "spilled-second");
        added.push("spilled-second".into());
        for n in &added {
            expect.insert(format!("other/{n}"), describe(b""));
        }
        assert_eq!(stage(&fs, other), Stage::Xattr, "{tag}");
        // Remove the first entry of i_block, one in the middle, and the first of system.data.
        let spilled = added[added.len() - 2].clone();
        for n in ["a", "c", spilled.as_str()] {
            fs.unlink(other, n.as_bytes()).unwrap();
            expect.remove(&format!("other/{n}"));
        }
        assert_eq!(
            fs.unlink(other, spilled.as_bytes()),
            Err(Errno::ENOENT),
            "{tag}"
        );
        // Freed room is reused, in both regions, without leaving the inode.
        mkfile(&fs, other, "d");
        mkfile(&fs, other, "reused");
        for n in ["d", "reused"] {
            expect.insert(format!("other/{n}"), describe(b""));
        }
        assert_eq!(stage(&fs, other), Stage::Xattr, "{tag}");
        // Rename within the inline directory, over an existing name, and an exchange.
        fs.rename(other, b"b", other, b"b2", 0).unwrap();
        fs.rename(other, b"d", other, b"x0", 0).unwrap();
        fs.rename(other, b"b2", other, b"reused", RENAME_EXCHANGE)
            .unwrap();
        expect.remove("other/d");
        expect.remove("other/b");
        expect.insert("other/b2".into(), describe(b""));
        expect.insert("other/reused".into(), describe(b"b"));
        assert_eq!(stage(&fs, other), Stage::Xattr, "{tag}");
        finish(fs, &img, &expect, tag);
        assert!(on_disk_inline(&img, "/other"), "{tag}");
    }
}

#[test]
fn inline_dirs_renamed_between_parents_and_removed() {
    let t = tempfile::tempdir().unwrap();
    for (tag, extra) in CONFIGS {
        let img = image(t.path(), tag, extra);
        let fs = mount_rw(&img);
        let mut expect = initial_tree();
        let p1 = fs.mkdir(ROOT_INO, b"p1", 0o755, &ctx()).unwrap().ino;
        let p2 = fs.mkdir(ROOT_INO, b"p2", 0o755, &ctx()).unwrap().ino;
        let child = fs.mkdir(p1, b"child", 0o755, &ctx()).unwrap().ino;
        mkfile(&fs, child, "inside");
        for p in ["p1", "p2"] {
            expect.insert(p.into(), "d".into());
        }
        for d in [p1, p2, child] {
            assert_eq!(stage(&fs, d), Stage::IBlock, "{tag}");
        }
        // An inline directory moves to another inline parent: ".." in i_block follows.
        fs.rename(p1, b"child", p2, b"moved", 0).unwrap();
        expect.insert("p2/moved".into(), "d".into());
        expect.insert("p2/moved/inside".into(), describe(b""));
        assert_eq!(lookup(&fs, child, ".."), p2, "{tag}");
        assert_eq!(fs.getattr(p1).unwrap().nlink, 2, "{tag}");
        assert_eq!(fs.getattr(p2).unwrap().nlink, 3, "{tag}");
        // The mke2fs-made inline directory moves below a block directory and back out.
        let small = lookup(&fs, ROOT_INO, "small");
        let big = fs.mkdir(ROOT_INO, b"big", 0o755, &ctx()).unwrap().ino;
        for i in 0..40 {
            mkfile(&fs, big, &format!("filler-name-{i:03}"));
            expect.insert(format!("big/filler-name-{i:03}"), describe(b""));
        }
        assert!(stage(&fs, big) >= Stage::OneBlock, "{tag}");
        fs.rename(ROOT_INO, b"small", big, b"small-in-big", 0)
            .unwrap();
        assert_eq!(lookup(&fs, small, ".."), big, "{tag}");
        fs.rename(big, b"small-in-big", p1, b"small", 0).unwrap();
        assert_eq!(lookup(&fs, small, ".."), p1, "{tag}");
        assert_eq!(stage(&fs, small), Stage::IBlock, "{tag}");
        for (k, v) in initial_tree() {
            if let Some(rest) = k.strip_prefix("small") {
                expect.remove(&k);
                expect.insert(format!("p1/small{rest}"), v);
            }
        }
        expect.insert("big".into(), "d".into());
        // Exchange two inline directories across parents: both ".." change, nlinks stay.
        let other = lookup(&fs, ROOT_INO, "other");
        fs.rename(p2, b"moved", ROOT_INO, b"other", RENAME_EXCHANGE)
            .unwrap();
        assert_eq!(lookup(&fs, child, ".."), ROOT_INO, "{tag}");
        assert_eq!(lookup(&fs, other, ".."), p2, "{tag}");
        expect = expect
            .into_iter()
            .map(|(k, v)| {
                if let Some(rest) = k.strip_prefix("p2/moved") {
                    (format!("other{rest}"), v)
                } else if let Some(rest) = k.strip_prefix("other") {
                    (format!("p2/moved{rest}"), v)
                } else {
                    (k, v)
                }
            })
            .collect();
        // A file moves out of an inline directory into another one, over an existing name.
        let f1 = lookup(&fs, small, "f1");
        fs.rename(small, b"f1", p2, b"moved-f1", 0).unwrap();
        assert_eq!(lookup(&fs, p2, "moved-f1"), f1);
        expect.remove("p1/small/f1");
        expect.insert("p2/moved-f1".into(), describe(b"one"));
        fs.rename(p2, b"moved-f1", small, b"f2", 0).unwrap();
        expect.remove("p2/moved-f1");
        expect.insert("p1/small/f2".into(), describe(b"one"));
        // rmdir of emptied inline directories (one made by mkdir, one by mke2fs).
        let gone = fs.mkdir(p1, b"gone", 0o755, &ctx()).unwrap().ino;
        for i in 0..8 {
            mkfile(&fs, gone, &format!("g{i}"));
        }
        assert_eq!(fs.rmdir(p1, b"gone"), Err(Errno::ENOTEMPTY), "{tag}");
        for i in 0..8 {
            fs.unlink(gone, format!("g{i}").as_bytes()).unwrap();
        }
        assert_eq!(stage(&fs, gone), Stage::Xattr, "{tag}");
        fs.rmdir(p1, b"gone").unwrap();
        assert_eq!(fs.rmdir(p1, b"small"), Err(Errno::ENOTEMPTY), "{tag}");
        assert_eq!(fs.unlink(small, b"f1"), Err(Errno::ENOENT), "{tag}");
        fs.unlink(small, b"f2").unwrap();
        expect.remove("p1/small/f2");
        fs.rmdir(p1, b"small").unwrap();
        expect.remove("p1/small");
        assert_eq!(fs.lookup(p1, b"gone").unwrap_err(), Errno::ENOENT);
        assert_eq!(fs.getattr(p1).unwrap().nlink, 2, "{tag}");
        assert_eq!(fs.getattr(p2).unwrap().nlink, 3, "{tag}");
        finish(fs, &img, &expect, tag);
        assert_eq!(
            kernel_nlinks(&img, &["p1", "p2", "big", "other", "p2/moved"]),
            [2, 3, 2, 2, 2],
            "{tag}"
        );
        for p in ["/p1", "/p2", "/other", "/p2/moved"] {
            assert!(on_disk_inline(&img, p), "{tag}: {p} is not inline");
        }
    }
}

fn truncate(fs: &Fs, ino: Ino, size: u64) {
    let a = fs
        .setattr(
            ino,
            &SetAttr {
                size: Some(size),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(a.size, size);
}

#[test]
fn inline_files_truncated_down_and_up() {
    let t = tempfile::tempdir().unwrap();
    for (tag, extra) in CONFIGS {
        let img = image(t.path(), tag, extra);
        // A size past the stored inline bytes (as older kernels leave it): zeros there.
        debugfs_set(&img, "/padded.bin", "size", "200");
        let fs = mount_rw(&img);
        let mut expect = initial_tree();
        let inline = |ino: Ino| fs.read_inode(ino).unwrap().has_flag(flags::INLINE_DATA);
        let padded = lookup(&fs, ROOT_INO, "padded.bin");
        let mut v = pattern(100, 5);
        v.resize(200, 0);
        assert_eq!(fs.read(padded, 0, 90, 20).unwrap(), &v[90..110], "{tag}");
        truncate(&fs, padded, 150);
        assert!(inline(padded), "{tag}");
        truncate(&fs, padded, 5000);
        v.resize(5000, 0);
        expect.insert("padded.bin".into(), describe(&v));
        // Down within i_block, down within system.data, down from system.data into i_block.
        let tiny = lookup(&fs, ROOT_INO, "tiny.txt");
        truncate(&fs, tiny, 2);
        expect.insert("tiny.txt".into(), describe(b"ti"));
        let hundred = lookup(&fs, ROOT_INO, "hundred.bin");
        truncate(&fs, hundred, 80);
        expect.insert("hundred.bin".into(), describe(&pattern(80, 1)));
        let thirty = lookup(&fs, ROOT_INO, "thirty.bin");
        truncate(&fs, thirty, 30);
        expect.insert("thirty.bin".into(), describe(&pattern(30, 2)));
        for ino in [tiny, hundred, thirty] {
            assert!(inline(ino), "{tag}: a truncated-down file left inline data");
        }
        // Up: the data moves to a block; everything past it reads as zeros.
        let up = lookup(&fs, ROOT_INO, "up.txt");
        truncate(&fs, up, 5000);
        let mut v = b"0123456789".to_vec();
        v.resize(5000, 0);
        expect.insert("up.txt".into(), describe(&v));
        assert_eq!(fs.read(up, 0, 0, 16).unwrap(), &v[..16]);
        assert_eq!(fs.read(up, 0, 4090, 20).unwrap(), vec![0u8; 20]);
        let up2 = lookup(&fs, ROOT_INO, "up2.bin");
        truncate(&fs, up2, 101);
        let mut v = pattern(100, 3);
        v.push(0);
        expect.insert("up2.bin".into(), describe(&v));
        truncate(&fs, up2, 100_000);
        v.resize(100_000, 0);
        expect.insert("up2.bin".into(), describe(&v));
        // Down to nothing (still inline), then up: no data, so only a hole.
        let emptied = lookup(&fs, ROOT_INO, "emptied.bin");
        truncate(&fs, emptied, 0);
        assert!(inline(emptied), "{tag}");
        truncate(&fs, emptied, 3000);
        expect.insert("emptied.bin".into(), describe(&[0u8; 3000]));
        assert_eq!(fs.getattr(emptied).unwrap().blocks, 0, "{tag}");
        for ino in [up, up2, emptied] {
            assert!(!inline(ino), "{tag}: a grown file kept inline data");
        }
        // The converted files are ordinary files now: they shrink the ordinary way.
        truncate(&fs, up, 4);
        expect.insert("up.txt".into(), describe(b"0123"));
        finish(fs, &img, &expect, tag);
        for p in ["/tiny.txt", "/hundred.bin", "/thirty.bin", "/emptied.bin"] {
            let inl = on_disk_inline(&img, p);
            assert_eq!(inl, p != "/emptied.bin", "{tag}: {p}");
        }
    }
}

/// Change inode fields of `path` with debugfs (which keeps the inode checksum valid).
fn debugfs_set(img: &Path, path: &str, field: &str, value: &str) {
    let out = Command::new("debugfs")
        .args(["-w", "-R", &format!("sif {path} {field} {value}")])
        .arg(img)
        .output()
        .expect("debugfs (e2fsprogs) is required");
    assert!(out.status.success(), "debugfs sif {path} {field} {value}");
}

#[test]
fn corrupt_inline_dirs_and_files_are_euclean() {
    let t = tempfile::tempdir().unwrap();
    for (tag, extra) in [CONFIGS[0], CONFIGS[3]] {
        let img = image(t.path(), tag, extra);
        // /small: the first dirent's rec_len is 3. /other: the size disagrees with system.data.
        // /hundred.bin: inline flag without system.data.
        debugfs_set(&img, "/small", "block[2]", "0x3");
        debugfs_set(&img, "/other", "size", "64");
        let out = Command::new("debugfs")
            .args(["-w", "-R", "ea_rm /hundred.bin system.data"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(out.status.success());
        let fs = mount_rw(&img);
        let small = lookup(&fs, ROOT_INO, "small");
        let other = lookup(&fs, ROOT_INO, "other");
        let hundred = lookup(&fs, ROOT_INO, "hundred.bin");
        let mode = libc::S_IFREG | 0o644;
        assert_eq!(
            fs.mknod(small, b"new", mode, 0, &ctx()).unwrap_err(),
            Errno::EUCLEAN,
            "{tag}"
        );
        assert_eq!(
            fs.mknod(other, b"new", mode, 0, &ctx()).unwrap_err(),
            Errno::EUCLEAN,
            "{tag}"
        );
        assert_eq!(fs.unlink(other, b"a").unwrap_err(), Errno::EUCLEAN, "{tag}");
        assert_eq!(
            fs.rename(other, b"a", other, b"z", 0).unwrap_err(),
            Errno::EUCLEAN,
            "{tag}"
        );
        let grow = SetAttr {
            size: Some(5000),
            ..Default::default()
        };
        assert_eq!(
            fs.setattr(hundred, &grow).unwrap_err(),
            Errno::EUCLEAN,
            "{tag}"
        );
        assert_eq!(
            fs.read(hundred, 0, 0, 200).unwrap_err(),
            Errno::EUCLEAN,
            "{tag}"
        );
        // Nothing was changed: the corrupt inodes are as debugfs left them.
        assert_eq!(fs.getattr(other).unwrap().size, 64, "{tag}");
        assert_eq!(fs.getattr(hundred).unwrap().size, 100, "{tag}");
        fs.shutdown().unwrap();
    }
}

/// The most data a new file keeps inline in a 256-byte inode with 32 extra bytes and no other
/// attribute: 60 bytes of `i_block` and a `system.data` value of 68 (96 bytes of attribute
/// space less the magic, the "data" entry and the terminator) — where the kernel's ext4 stops.
const NEW_FILE_INLINE_MAX: usize = 128;

fn write_all(fs: &Fs, ino: Ino, offset: u64, data: &[u8]) {
    assert_eq!(fs.write(ino, offset, data, 0).unwrap() as usize, data.len());
}

/// New files are written inline as the kernel writes them: every size from 1 to 128 bytes in
/// the inode (`EXTENTS` cleared), empty files and larger ones in blocks; appends stay inline
/// until they outgrow the inode and then stay in blocks; a hole before the first write, a size
/// set before it, truncation, fallocate (before or after inline data), O_TMPFILE and an inode
/// read afresh behave as in the kernel.
#[test]
fn new_files_are_written_inline_while_they_fit() {
    let t = tempfile::tempdir().unwrap();
    for (tag, extra) in CONFIGS {
        let img = image(t.path(), tag, extra);
        let fs = mount_rw(&img);
        let mut expect = initial_tree();
        let inline = |ino: Ino| fs.read_inode(ino).unwrap().has_flag(flags::INLINE_DATA);
        let dir = fs.mkdir(ROOT_INO, b"new", 0o755, &ctx()).unwrap().ino;
        expect.insert("new".into(), "d".into());
        let mut sizes: Vec<usize> = (0..=200).collect();
        sizes.extend([1000, 4096, 5000, 12295]);
        for &n in &sizes {
            let name = format!("f{n}");
            let ino = mkfile(&fs, dir, &name);
            let data = pattern(n, n as u8);
            if n > 0 {
                write_all(&fs, ino, 0, &data);
            }
            let want = (1..=NEW_FILE_INLINE_MAX).contains(&n);
            assert_eq!(inline(ino), want, "{tag}: {name}");
            if want {
                let blocks = fs.read_inode(ino).unwrap().blocks_raw;
                assert_eq!(blocks, 0, "{tag}: {name}: an inline file with blocks");
            }
            expect.insert(format!("new/{name}"), describe(&data));
        }
        // Appends (an O_APPEND client writes at the size): inline up to 120 bytes, blocks from
        // 140 on, and a truncation back to a few bytes does not bring the data back.
        let app = mkfile(&fs, dir, "appended");
        let mut v = Vec::new();
        while v.len() < 300 {
            let piece = pattern(20, v.len() as u8);
            write_all(&fs, app, fs.getattr(app).unwrap().size, &piece);
            v.extend_from_slice(&piece);
            let want = v.len() <= NEW_FILE_INLINE_MAX;
            assert_eq!(inline(app), want, "{tag}: appended up to {}", v.len());
        }
        truncate(&fs, app, 10);
        v.truncate(10);
        write_all(&fs, app, 10, b"more");
        v.extend_from_slice(b"more");
        assert!(!inline(app), "{tag}: a file that had blocks went inline");
        expect.insert("new/appended".into(), describe(&v));
        // A first write past a hole: the hole is zeros in the inode.
        let hole = mkfile(&fs, dir, "hole");
        write_all(&fs, hole, 100, b"0123456789");
        assert!(inline(hole), "{tag}");
        let mut v = vec![0u8; 100];
        v.extend_from_slice(b"0123456789");
        expect.insert("new/hole".into(), describe(&v));
        // A size set before the first write: the write decides, as in the kernel, and a size
        // past the stored bytes reads as zeros.
        let mut up = Vec::new();
        for (name, size) in [("up50", 50u64), ("up5000", 5000)] {
            let ino = mkfile(&fs, dir, name);
            truncate(&fs, ino, size);
            write_all(&fs, ino, 0, b"zzzzzzzzzz");
            assert!(inline(ino), "{tag}: {name}");
            let mut v = b"zzzzzzzzzz".to_vec();
            v.resize(size as usize, 0);
            assert_eq!(fs.read(ino, 0, 0, 8192).unwrap(), v, "{tag}: {name}");
            expect.insert(format!("new/{name}"), describe(&v));
            up.push(ino);
        }
        // ...and a size set first, then a write past the inode: blocks.
        let upbig = mkfile(&fs, dir, "upbig");
        truncate(&fs, upbig, 50);
        write_all(&fs, upbig, 100, &pattern(100, 9));
        assert!(!inline(upbig), "{tag}");
        let mut v = vec![0u8; 100];
        v.extend_from_slice(&pattern(100, 9));
        expect.insert("new/upbig".into(), describe(&v));
        // An inline file shrinks in place and takes more writes inline.
        let f100 = lookup(&fs, dir, "f100");
        truncate(&fs, f100, 30);
        write_all(&fs, f100, 30, b"again");
        let mut v = pattern(100, 100)[..30].to_vec();
        v.extend_from_slice(b"again");
        assert!(inline(f100), "{tag}");
        expect.insert("new/f100".into(), describe(&v));
        // fallocate ends the state (ext4_fallocate converts first): small writes go to blocks.
        let fal = mkfile(&fs, dir, "fallocated");
        fs.fallocate(fal, 0, 10, 0).unwrap();
        write_all(&fs, fal, 0, b"0123456789");
        assert!(!inline(fal), "{tag}");
        expect.insert("new/fallocated".into(), describe(b"0123456789"));
        // fallocate on an inline file moves its data to a block first, as the kernel does.
        let f60 = lookup(&fs, dir, "f60");
        fs.fallocate(f60, 0, 8192, libc::FALLOC_FL_KEEP_SIZE as u32)
            .unwrap();
        assert!(!inline(f60), "{tag}");
        let f50 = lookup(&fs, dir, "f50");
        let punch = (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u32;
        fs.fallocate(f50, 10, 20, punch).unwrap();
        assert!(!inline(f50), "{tag}");
        let mut v = pattern(50, 50);
        v[10..30].fill(0);
        assert_eq!(fs.read(f50, 0, 0, 100).unwrap(), v, "{tag}");
        expect.insert("new/f50".into(), describe(&v));
        // Forgotten by the client and looked up again: read afresh, it starts without the state
        // (the kernel's iget sets it only on inline files).
        let again = mkfile(&fs, dir, "forgotten");
        fs.forget(again, 1);
        let again = lookup(&fs, dir, "forgotten");
        write_all(&fs, again, 0, b"0123456789");
        assert!(!inline(again), "{tag}");
        expect.insert("new/forgotten".into(), describe(b"0123456789"));
        // O_TMPFILE is a new file too.
        let tmp = fs.tmpfile(dir, 0o644, &ctx()).unwrap().ino;
        write_all(&fs, tmp, 0, &pattern(90, 7));
        assert!(inline(tmp), "{tag}");
        fs.link(tmp, dir, b"tmp").unwrap();
        expect.insert("new/tmp".into(), describe(&pattern(90, 7)));
        finish(fs, &img, &expect, tag);
        for (p, want) in [
            ("/new/f0", false),
            ("/new/f1", true),
            ("/new/f60", false),
            ("/new/f61", true),
            ("/new/f128", true),
            ("/new/f129", false),
            ("/new/f5000", false),
            ("/new/appended", false),
            ("/new/hole", true),
            ("/new/up5000", true),
            ("/new/tmp", true),
        ] {
            let f = debugfs_flags(&img, p);
            assert_eq!(f & flags::INLINE_DATA != 0, want, "{tag}: {p}");
            assert_eq!(f & flags::EXTENTS != 0, !want, "{tag}: {p}");
        }
    }
}

/// Map the first page of `ino` into a window (read-only) and let go of it.
fn map_and_unmap(fs: &Fs, ino: Ino) {
    let mut pin = None;
    fs.dax_pin(ino, 0, 4096, false, |p| {
        pin = Some(p);
        Ok(())
    })
    .unwrap();
    fs.dax_unpin(pin.unwrap());
}

/// A DAX window mapping of a new file moves its inline data to a block (the window maps the page
/// cache) and ends its inline state: later small writes go through the cache.
#[test]
fn a_window_mapping_moves_a_new_inline_file_to_a_block() {
    let t = tempfile::tempdir().unwrap();
    let (tag, extra) = CONFIGS[0];
    let img = image(t.path(), tag, extra);
    let fs = mount_rw(&img);
    let inline = |ino: Ino| fs.read_inode(ino).unwrap().has_flag(flags::INLINE_DATA);
    let mapped = mkfile(&fs, ROOT_INO, "mapped");
    write_all(&fs, mapped, 0, b"inline before the mapping");
    assert!(inline(mapped));
    map_and_unmap(&fs, mapped);
    assert!(!inline(mapped), "a mapped file kept inline data");
    write_all(&fs, mapped, 0, b"INLINE");
    assert!(!inline(mapped), "a mapped file went inline again");
    let fresh = mkfile(&fs, ROOT_INO, "fresh");
    map_and_unmap(&fs, fresh);
    write_all(&fs, fresh, 0, b"small");
    assert!(!inline(fresh), "a mapped new file went inline");
    let mut expect = initial_tree();
    expect.insert("mapped".into(), describe(b"INLINE before the mapping"));
    expect.insert("fresh".into(), describe(b"small"));
    finish(fs, &img, &expect, tag);
}
