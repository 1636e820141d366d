//! Corrupted images: bytes flipped in the superblock, group descriptors, an inode, an extent
//! block, a directory block. `vhost-ext4 mount` must either refuse the image at once with a
//! one-line error naming the problem, or serve it and answer EUCLEAN (or EIO) for the damaged
//! object while everything else reads fine; it never panics, never repairs the image silently, and
//! exits 0 on umount.

mod common;

use common::*;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const SB: u64 = 1024;
// Superblock field offsets (from the start of the superblock).
const S_LOG_BLOCK_SIZE: u64 = 0x18;
const S_INODES_PER_GROUP: u64 = 0x28;
const S_MNT_COUNT: u64 = 0x34;
const S_MAGIC: u64 = 0x38;
const S_FEATURE_INCOMPAT: u64 = 0x60;
const S_CHECKSUM: u64 = 0x3FC;
// Group descriptor field offsets.
const BG_INODE_TABLE_LO: u64 = 0x08;
const BG_FREE_BLOCKS_LO: u64 = 0x0C;

/// A small image with the objects the corruptions aim at.
struct Fixture {
    _tmp: tempfile::TempDir,
    work: PathBuf,
    image: PathBuf,
    block_size: u64,
}

fn fixture(name: &str, features: Option<&'static str>) -> Fixture {
    require_root_and_tools();
    let tmp = tempfile::Builder::new()
        .prefix(&format!("vhe-corrupt-{name}-"))
        .tempdir_in("/tmp")
        .unwrap();
    let work = tmp.path().to_path_buf();
    let src = work.join("src");
    fs::create_dir_all(src.join("dir")).unwrap();
    fs::create_dir_all(src.join("other")).unwrap();
    for i in 0..300 {
        fs::write(
            src.join(format!("dir/file-with-a-longish-name-{i:03}")),
            format!("{i}\n"),
        )
        .unwrap();
    }
    fs::write(src.join("victim"), b"the damaged file\n").unwrap();
    fs::write(src.join("neighbour"), b"an intact file\n").unwrap();
    fs::write(src.join("other/intact"), vec![7u8; 100_000]).unwrap();
    // Twelve separate extents: more than the inode's four slots, so the tree has a leaf block.
    let mut f = File::create(src.join("fragmented")).unwrap();
    for i in 0..12u64 {
        f.seek(SeekFrom::Start(i * 65536)).unwrap();
        f.write_all(&[b'f'; 4096]).unwrap();
    }
    drop(f);
    // 1,500 extents: a depth-2 tree (inode → index block → leaf blocks).
    let mut f = File::create(src.join("deep-extents")).unwrap();
    for i in 0..1500u64 {
        f.seek(SeekFrom::Start(i * 8192)).unwrap();
        f.write_all(&[b'd'; 4096]).unwrap();
    }
    drop(f);
    let v = Variant {
        name: "corrupt",
        fs_type: "ext4",
        block_size: 4096,
        inode_size: 256,
        features,
        index_dirs: true,
        kernel_written: false,
    };
    let image = make_image(&work, &src, &v);
    assert_fsck_clean(&image);
    Fixture {
        _tmp: tmp,
        work,
        image,
        block_size: 4096,
    }
}

impl Fixture {
    fn read(&self, off: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        File::open(&self.image)
            .unwrap()
            .read_exact_at(&mut buf, off)
            .unwrap();
        buf
    }

    fn write(&self, off: u64, bytes: &[u8]) {
        let f = OpenOptions::new().write(true).open(&self.image).unwrap();
        f.write_all_at(bytes, off).unwrap();
        f.sync_all().unwrap();
    }

    fn xor(&self, off: u64, mask: u8) {
        let b = self.read(off, 1)[0];
        self.write(off, &[b ^ mask]);
    }

    fn put_u32(&self, off: u64, v: u32) {
        self.write(off, &v.to_le_bytes());
    }

    fn put_u16(&self, off: u64, v: u16) {
        self.write(off, &v.to_le_bytes());
    }

    /// Recomputes the superblock checksum (metadata_csum images), so a bad field is found by
    /// validation rather than by the checksum.
    fn fix_sb_checksum(&self) {
        let sb = self.read(SB, 1024);
        let raw = !crc32c::crc32c(&sb[..S_CHECKSUM as usize]);
        self.put_u32(SB + S_CHECKSUM, raw);
    }

    /// (block, byte offset in it) of a path's inode, from `debugfs imap`.
    fn inode_location(&self, path: &str) -> (u64, u64) {
        let out = debugfs(&self.image, &format!("imap {path}"));
        let block = out
            .split("located at block ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("cannot parse debugfs imap output: {out}"));
        let offset = out
            .split("offset 0x")
            .nth(1)
            .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
            .unwrap_or_else(|| panic!("cannot parse debugfs imap output: {out}"));
        (block, offset)
    }

    fn inode_number(&self, path: &str) -> u64 {
        let out = debugfs(&self.image, &format!("stat {path}"));
        out.split("Inode: ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("cannot parse debugfs stat output: {out}"))
    }

    /// The first extent tree block at `level` below the inode (0: the blocks the inode points
    /// to), from `debugfs stat`.
    fn extent_block(&self, path: &str, level: u32) -> u64 {
        let out = debugfs(&self.image, &format!("stat {path}"));
        out.split(&format!("(ETB{level}):"))
            .nth(1)
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{path} has no extent tree block:\n{out}"))
    }

    /// The data blocks of a file or directory, from `debugfs blocks`.
    fn blocks(&self, path: &str) -> Vec<u64> {
        debugfs(&self.image, &format!("blocks {path}"))
            .split_whitespace()
            .map(|s| s.parse().unwrap())
            .collect()
    }

    /// Keeps a copy of the corrupted image, to check later that nothing rewrote it.
    fn snapshot(&self) -> PathBuf {
        let copy = self.work.join("corrupted.copy");
        fs::copy(&self.image, &copy).unwrap();
        copy
    }

    fn assert_unchanged(&self, copy: &Path) {
        let mut a = File::open(copy).unwrap();
        let mut b = File::open(&self.image).unwrap();
        let mut ba = vec![0u8; 1 << 20];
        let mut bb = vec![0u8; 1 << 20];
        let mut pos = 0u64;
        loop {
            let n = a.read(&mut ba).unwrap();
            b.read_exact(&mut bb[..n]).unwrap();
            if ba[..n] != bb[..n] {
                let i = ba[..n]
                    .iter()
                    .zip(&bb[..n])
                    .position(|(x, y)| x != y)
                    .unwrap();
                panic!(
                    "the corrupted image was modified by a --read-only mount (first change at byte {})",
                    pos + i as u64
                );
            }
            if n == 0 {
                break;
            }
            pos += n as u64;
        }
    }
}

/// The mount must be refused promptly: exit status 1, one line on stderr that names the problem
/// (any of `words`), no panic.
fn expect_refused(fx: &Fixture, words: &[&str]) {
    let copy = fx.snapshot();
    let mnt = fx.work.join("mnt");
    match Mount::try_start(&fx.image, &mnt, &["--read-only"]) {
        Ok(m) => {
            let stderr = m.unmount();
            panic!(
                "vhost-ext4 mounted the corrupted image (expected a refusal naming one of {words:?}); stderr:\n{stderr}"
            );
        }
        Err(e) => {
            assert!(
                !e.stderr.contains("panicked"),
                "vhost-ext4 panicked on the corrupted image:\n{}",
                e.stderr
            );
            assert_eq!(
                e.code,
                Some(1),
                "vhost-ext4 should exit 1 on a corrupted image; stderr:\n{}",
                e.stderr
            );
            assert!(
                e.elapsed < Duration::from_secs(5),
                "refusing the image took {:?}",
                e.elapsed
            );
            let lines: Vec<&str> = e.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            assert!(
                lines.len() == 1,
                "expected a one-line error, got {} lines:\n{}",
                lines.len(),
                e.stderr
            );
            let lower = lines[0].to_lowercase();
            assert!(
                words.iter().any(|w| lower.contains(w)),
                "the error should name the problem (one of {words:?}): {}",
                lines[0]
            );
            eprintln!("refused as expected: {}", lines[0]);
        }
    }
    assert!(
        !is_mounted(&mnt, "fuse"),
        "a FUSE mount was left behind at {}",
        mnt.display()
    );
    fx.assert_unchanged(&copy);
}

fn is_corruption_errno(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EUCLEAN) | Some(libc::EIO))
}

/// Reads a whole file or lists a whole directory.
fn read_all(p: &Path) -> io::Result<()> {
    let md = fs::symlink_metadata(p)?;
    if md.is_dir() {
        for e in fs::read_dir(p)? {
            e?;
        }
        Ok(())
    } else {
        fs::read(p).map(drop)
    }
}

/// The mount comes up; `damaged` (relative path) fails with EUCLEAN or EIO; the intact files read
/// fine; the daemon survives and exits 0 on umount; the image is left as it was. `log_words`: what
/// the daemon's log must mention about the damage (an inode or block number).
fn expect_damaged_object(fx: &Fixture, damaged: &str, log_words: &[String]) {
    let copy = fx.snapshot();
    let mnt = fx.work.join("mnt");
    let mut m = Mount::start(&fx.image, &mnt, &["--read-only"]);
    let result = read_all(&mnt.join(damaged));
    // Twice: a cached failure must fail the same way.
    let again = read_all(&mnt.join(damaged));
    let mut intact = Vec::new();
    for p in ["neighbour", "other/intact", "other"] {
        if let Err(e) = read_all(&mnt.join(p)) {
            intact.push(format!("{p}: {e}"));
        }
    }
    let alive = m.alive();
    let log = m.stderr();
    let stderr = m.unmount();
    eprintln!("daemon log for {damaged}:\n{stderr}");
    assert!(alive, "the daemon died after reading {damaged}:\n{log}");
    match &result {
        Err(e) if is_corruption_errno(e) => eprintln!("{damaged}: {e} (as expected)"),
        Err(e) => panic!("reading the damaged {damaged}: expected EUCLEAN or EIO, got {e}"),
        Ok(()) => panic!("reading the damaged {damaged} succeeded; expected EUCLEAN or EIO"),
    }
    match &again {
        Err(e) if is_corruption_errno(e) => {}
        other => panic!(
            "reading the damaged {damaged} a second time: expected EUCLEAN or EIO, got {other:?}"
        ),
    }
    assert!(
        intact.is_empty(),
        "intact objects failed to read next to the damaged {damaged}:\n  {}",
        intact.join("\n  ")
    );
    assert!(
        log_words.iter().any(|w| stderr.contains(w.as_str())),
        "the daemon's log should name the damaged object (one of {log_words:?}); it was:\n{stderr}"
    );
    fx.assert_unchanged(&copy);
}

/// Descriptor size and location of group 0's descriptor.
fn group0_descriptor(fx: &Fixture) -> (u64, u64) {
    let sb = fx.read(SB, 1024);
    let incompat = u32::from_le_bytes(sb[0x60..0x64].try_into().unwrap());
    let desc_size = if incompat & 0x80 != 0 {
        u64::from(u16::from_le_bytes(sb[0xFE..0x100].try_into().unwrap()))
    } else {
        32
    };
    let first_data_block = u64::from(u32::from_le_bytes(sb[0x14..0x18].try_into().unwrap()));
    ((first_data_block + 1) * fx.block_size, desc_size)
}

#[test]
fn superblock_bad_magic() {
    let fx = fixture("sb-magic", None);
    fx.put_u16(SB + S_MAGIC, 0x1234);
    expect_refused(&fx, &["magic", "superblock", "not an ext"]);
}

#[test]
fn superblock_checksum_mismatch() {
    let fx = fixture("sb-csum", None);
    // A harmless field changed without updating s_checksum.
    fx.xor(SB + S_MNT_COUNT, 0x5A);
    expect_refused(&fx, &["checksum"]);
}

#[test]
fn superblock_impossible_block_size() {
    let fx = fixture("sb-bsize", None);
    fx.put_u32(SB + S_LOG_BLOCK_SIZE, 20);
    fx.fix_sb_checksum();
    expect_refused(
        &fx,
        &["block size", "blocksize", "block_size", "superblock"],
    );
}

#[test]
fn superblock_zero_inodes_per_group() {
    let fx = fixture("sb-ipg", Some("^metadata_csum"));
    fx.put_u32(SB + S_INODES_PER_GROUP, 0);
    expect_refused(&fx, &["inodes per group", "inodes_per_group", "superblock"]);
}

#[test]
fn superblock_unknown_incompat_feature() {
    let fx = fixture("sb-feature", None);
    let sb = fx.read(SB + S_FEATURE_INCOMPAT, 4);
    let incompat = u32::from_le_bytes(sb.try_into().unwrap());
    fx.put_u32(SB + S_FEATURE_INCOMPAT, incompat | 0x4000_0000);
    fx.fix_sb_checksum();
    expect_refused(&fx, &["feature", "incompat"]);
}

#[test]
fn group_descriptor_checksum_mismatch() {
    let fx = fixture("gd-csum", None);
    let (gd, _) = group0_descriptor(&fx);
    fx.xor(gd + BG_FREE_BLOCKS_LO, 0x01);
    // Like the kernel, refuse the mount; naming the group descriptor.
    expect_refused(&fx, &["group descriptor", "descriptor", "group 0"]);
}

#[test]
fn group_descriptor_inode_table_out_of_range() {
    let fx = fixture("gd-itable", Some("^metadata_csum"));
    let (gd, _) = group0_descriptor(&fx);
    fx.put_u32(gd + BG_INODE_TABLE_LO, 0xFFFF_FF00);
    // Group 0 holds the root inode: nothing can be served.
    expect_refused(
        &fx,
        &["inode table", "group descriptor", "descriptor", "group 0"],
    );
}

#[test]
fn inode_checksum_mismatch() {
    let fx = fixture("inode-csum", None);
    let ino = fx.inode_number("/victim");
    let (block, off) = fx.inode_location("/victim");
    // i_size_lo's low byte: the inode checksum no longer matches.
    fx.xor(block * fx.block_size + off + 4, 0x40);
    expect_damaged_object(&fx, "victim", &[format!("inode {ino}"), format!("{ino}")]);
}

#[test]
fn inode_impossible_extent_header() {
    let fx = fixture("inode-extent", Some("^metadata_csum"));
    let ino = fx.inode_number("/victim");
    let (block, off) = fx.inode_location("/victim");
    // i_block holds the extent header: eh_entries (at +2) far above eh_max (4).
    fx.put_u16(block * fx.block_size + off + 0x28 + 2, 200);
    expect_damaged_object(&fx, "victim", &[format!("inode {ino}"), format!("{ino}")]);
}

#[test]
fn extent_leaf_block_checksum_mismatch() {
    let fx = fixture("extent-csum", None);
    let ino = fx.inode_number("/fragmented");
    let etb = fx.extent_block("/fragmented", 0);
    // The first leaf entry's ee_block: the block's checksum tail no longer matches.
    fx.xor(etb * fx.block_size + 12, 0x01);
    expect_damaged_object(
        &fx,
        "fragmented",
        &[format!("{etb}"), format!("inode {ino}")],
    );
}

#[test]
fn extent_leaf_block_bad_magic() {
    let fx = fixture("extent-magic", Some("^metadata_csum"));
    let ino = fx.inode_number("/fragmented");
    let etb = fx.extent_block("/fragmented", 0);
    fx.put_u16(etb * fx.block_size, 0xBEEF);
    expect_damaged_object(
        &fx,
        "fragmented",
        &[format!("{etb}"), format!("inode {ino}")],
    );
}

#[test]
fn extent_index_block_checksum_mismatch() {
    let fx = fixture("extent-index-csum", None);
    let ino = fx.inode_number("/deep-extents");
    let idx = fx.extent_block("/deep-extents", 0);
    fx.extent_block("/deep-extents", 1); // a depth-2 tree: the level-0 block holds indexes
    // The second index entry's ei_block: the block's checksum tail no longer matches.
    fx.xor(idx * fx.block_size + 12 + 12, 0x01);
    expect_damaged_object(
        &fx,
        "deep-extents",
        &[format!("{idx}"), format!("inode {ino}")],
    );
}

#[test]
fn extent_index_block_pointer_out_of_range() {
    let fx = fixture("extent-index-range", Some("^metadata_csum"));
    let ino = fx.inode_number("/deep-extents");
    let idx = fx.extent_block("/deep-extents", 0);
    fx.extent_block("/deep-extents", 1);
    // The first index entry's ei_leaf_lo: a leaf far beyond the end of the file system.
    fx.put_u32(idx * fx.block_size + 12 + 4, 0xFFFF_FF00);
    expect_damaged_object(
        &fx,
        "deep-extents",
        &[
            format!("{idx}"),
            format!("inode {ino}"),
            "4294967040".into(),
        ],
    );
}

#[test]
fn directory_block_checksum_mismatch() {
    let fx = fixture("dir-csum", None);
    let ino = fx.inode_number("/dir");
    let blocks = fx.blocks("/dir");
    assert!(
        blocks.len() >= 3,
        "/dir should span several blocks: {blocks:?}"
    );
    // A byte inside a name in the third block (a leaf: the first is the htree root).
    fx.xor(blocks[2] * fx.block_size + 40, 0x20);
    expect_damaged_object(
        &fx,
        "dir",
        &[format!("{}", blocks[2]), format!("inode {ino}")],
    );
}

#[test]
fn directory_block_impossible_rec_len() {
    let fx = fixture("dir-reclen", Some("^metadata_csum"));
    let ino = fx.inode_number("/dir");
    let blocks = fx.blocks("/dir");
    assert!(
        blocks.len() >= 3,
        "/dir should span several blocks: {blocks:?}"
    );
    // The first entry's rec_len: 6 is below the minimum (12) and not a multiple of 4.
    fx.put_u16(blocks[2] * fx.block_size + 4, 6);
    expect_damaged_object(
        &fx,
        "dir",
        &[format!("{}", blocks[2]), format!("inode {ino}")],
    );
}

/// Runs `vhost-ext4 mount IMAGE DIR`, expecting exit status 1 and a one-line error containing
/// `word`, promptly and without a panic.
fn expect_bad_input(image: &Path, dir: &Path, word: &str) {
    let start = std::time::Instant::now();
    let out = run_any(
        std::process::Command::new(binary())
            .arg("mount")
            .arg(image)
            .arg(dir)
            .arg("--read-only"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "vhost-ext4 mount {} {}: expected exit 1; stderr:\n{stderr}",
        image.display(),
        dir.display()
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    assert!(!stderr.contains("panicked"), "panicked:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected a one-line error:\n{stderr}");
    assert!(
        lines[0].to_lowercase().contains(word),
        "the error should mention {word:?}: {}",
        lines[0]
    );
    assert!(
        !is_mounted(dir, "fuse"),
        "a mount was left at {}",
        dir.display()
    );
}

#[test]
fn bad_input_is_refused_with_one_line() {
    require_root_and_tools();
    let tmp = tempfile::Builder::new()
        .prefix("vhe-bad-input-")
        .tempdir_in("/tmp")
        .unwrap();
    let dir = tmp.path().join("mnt");
    fs::create_dir(&dir).unwrap();
    // No such image.
    expect_bad_input(&tmp.path().join("missing.img"), &dir, "missing.img");
    // Not an ext4 file system at all.
    let zeros = tmp.path().join("zeros.img");
    File::create(&zeros).unwrap().set_len(8 << 20).unwrap();
    expect_bad_input(&zeros, &dir, "superblock");
    // Too short to hold a superblock.
    let short = tmp.path().join("short.img");
    fs::write(&short, b"tiny").unwrap();
    expect_bad_input(&short, &dir, "short.img");
    // A good image, but the mountpoint is missing or not a directory.
    let fx = fixture("bad-input", None);
    expect_bad_input(&fx.image, &tmp.path().join("no-such-dir"), "no-such-dir");
    expect_bad_input(&fx.image, &zeros, "zeros.img");
}
