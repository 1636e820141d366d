//! Where file data may be allocated. Data written straight to the device outside the
//! unwritten-extent path — ext3-style writeback and an inline file's conversion to a block —
//! never lands in a block freed by a transaction that has not committed yet (a crash would give
//! that block back to its old owner with our data in it), and data never takes the metadata
//! pool that writeback of reserved data may need.

use super::super::testutil::e2fsck_clean;
use super::super::*;
use super::tests::mkfs;
use std::collections::HashSet;
use std::path::Path;

fn mount_rw(img: &Path) -> Fs {
    let dev = crate::blockdev::FileDevice::open(img, false).unwrap();
    Fs::mount(Arc::new(dev), &MountOptions::rw()).unwrap()
}

fn ctx() -> Ctx {
    Ctx {
        uid: 0,
        gid: 0,
        pid: 1,
        umask: 0,
    }
}

/// The physical blocks of `ino`'s first `nblocks` logical blocks.
fn blocks_of(fs: &Fs, ino: Ino, nblocks: u64) -> HashSet<u64> {
    let _g = fs.ns_read();
    let i = fs.read_inode(ino).unwrap();
    let mut out = HashSet::new();
    let mut l = 0;
    while l < nblocks {
        let m = fs.map_block(ino, &i, l).unwrap();
        if let Some(pblk) = m.status.pblk() {
            out.extend((0..m.len.min(nblocks - l)).map(|k| pblk + k));
        }
        l += m.len.max(1);
    }
    out
}

/// A file of `len` bytes written and fsynced, then unlinked and freed in a transaction that
/// has not committed: its blocks are busy, and the lowest free blocks of the group.
fn freed_but_not_committed(fs: &Fs, name: &[u8], len: usize) -> HashSet<u64> {
    // Nothing busy yet: the file takes the lowest free blocks.
    fs.sync().unwrap();
    let a = fs
        .mknod(ROOT_INO, name, libc::S_IFREG | 0o644, 0, &ctx())
        .unwrap()
        .ino;
    fs.write(a, 0, &vec![0xAA; len], 0).unwrap();
    fs.fsync(a, false).unwrap();
    let bs = fs.block_size() as u64;
    let old = blocks_of(fs, a, (len as u64).div_ceil(bs));
    assert!(!old.is_empty());
    // A filler takes the free blocks before and after the file's, so the file's blocks are the
    // first free ones once it is gone.
    let f = fs
        .mknod(ROOT_INO, b"filler", libc::S_IFREG | 0o644, 0, &ctx())
        .unwrap()
        .ino;
    fs.write(f, 0, &vec![0xFF; 16 * 1024], 0).unwrap();
    fs.fsync(f, false).unwrap();
    fs.forget(a, fs.lookup_count(a));
    fs.unlink(ROOT_INO, name).unwrap();
    assert!(
        fs.alloc.busy_blocks() > 0,
        "the freed blocks should be busy"
    );
    old
}

#[test]
fn ext3_writeback_skips_blocks_freed_by_an_uncommitted_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ext3.img");
    mkfs(&img, &["-t", "ext3", "-b", "1024"], "16M");
    let fs = mount_rw(&img);
    let old = freed_but_not_committed(&fs, b"a", 64 * 1024);
    let b = fs
        .mknod(ROOT_INO, b"b", libc::S_IFREG | 0o644, 0, &ctx())
        .unwrap()
        .ino;
    fs.write(b, 0, &vec![0xBB; 64 * 1024], 0).unwrap();
    // fsync writes back (allocating) before it commits.
    fs.fsync(b, false).unwrap();
    let new = blocks_of(&fs, b, 64);
    assert_eq!(new.len(), 64);
    assert!(new.iter().all(|&b| !fs.alloc.is_busy(b)));
    assert!(
        new.is_disjoint(&old),
        "ext3-style writeback reused blocks freed by an uncommitted transaction"
    );
    fs.shutdown().unwrap();
    drop(fs);
    e2fsck_clean(&img);
}

#[test]
fn inline_conversion_skips_blocks_freed_by_an_uncommitted_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("inline.img");
    mkfs(
        &img,
        &["-t", "ext4", "-O", "inline_data", "-I", "256", "-b", "1024"],
        "16M",
    );
    let fs = mount_rw(&img);
    let c = fs
        .mknod(ROOT_INO, b"c", libc::S_IFREG | 0o644, 0, &ctx())
        .unwrap()
        .ino;
    // Inline while it fits.
    fs.write(c, 0, &[0xCC; 40], 0).unwrap();
    fs.fsync(c, false).unwrap();
    let old = freed_but_not_committed(&fs, b"a", 64 * 1024);
    // Outgrowing the inode moves the inline bytes to a block, written at once.
    fs.write(c, 40, &[0xCD; 2000], 0).unwrap();
    let new = blocks_of(&fs, c, 1);
    assert_eq!(new.len(), 1, "the file should have left its inode");
    assert!(
        new.iter().all(|&b| !fs.alloc.is_busy(b)),
        "the inline conversion took a busy block: {new:?}"
    );
    assert!(
        new.is_disjoint(&old),
        "the inline conversion reused a block freed by an uncommitted transaction"
    );
    fs.fsync(c, false).unwrap();
    let got = fs.read(c, 0, 0, 4096).unwrap();
    assert_eq!(got.len(), 2040);
    assert!(got[..40].iter().all(|&x| x == 0xCC) && got[40..].iter().all(|&x| x == 0xCD));
    fs.shutdown().unwrap();
    drop(fs);
    e2fsck_clean(&img);
}

/// Filling the file system with data near full (where writes allocate at once) stops at the
/// metadata pool: what is left is for the extent-tree blocks that writeback of reserved data
/// may still need.
#[test]
fn data_never_takes_the_metadata_pool() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("full.img");
    mkfs(&img, &["-t", "ext4", "-b", "1024"], "8M");
    let fs = mount_rw(&img);
    let pool = fs.alloc.metadata_pool();
    let mut full = false;
    for k in 0..1000u32 {
        let name = format!("f{k}");
        let ino = fs
            .mknod(ROOT_INO, name.as_bytes(), libc::S_IFREG | 0o644, 0, &ctx())
            .unwrap()
            .ino;
        match fs.write(ino, 0, &vec![k as u8; 64 * 1024], 0) {
            Ok(n) if n as usize == 64 * 1024 => {}
            Ok(_) | Err(Errno::ENOSPC) => {
                full = true;
                break;
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    assert!(full, "the file system never filled up");
    fs.syncfs().unwrap();
    let (free, _) = fs.alloc.free_counts();
    assert!(
        free + 16 >= pool,
        "data took the metadata pool: {free} blocks free, pool {pool}"
    );
    fs.shutdown().unwrap();
    drop(fs);
    e2fsck_clean(&img);
}
