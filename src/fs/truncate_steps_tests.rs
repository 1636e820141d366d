//! Freeing a big block map in several transactions (`inode::truncate_steps`): a shrink, an
//! unlink and the unmount-time free of a fragmented file go in steps and the image stays clean;
//! a crash between two steps is finished by the next mount's orphan processing. The step size
//! is made small here so that a file of a few thousand extents takes many steps.

use super::testutil::*;
use super::*;
use std::sync::atomic::Ordering;

/// A 1 KiB-block image with a small journal, mounted writable with tiny truncate steps.
fn setup(name: &str) -> (tempfile::TempDir, std::path::PathBuf, Fs) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let img = dir.path().join(format!("{name}.img"));
    mkfs(
        &src,
        &img,
        &["-t", "ext4", "-b", "1024", "-J", "size=1"],
        "64M",
    );
    let fs = mount_rw(&img);
    fs.step_credits.store(12, Ordering::Relaxed);
    (dir, img, fs)
}

/// A file of `n` one-block extents (every other logical block), with data in the first block of
/// each run of 64. Returns its inode number.
fn fragmented(fs: &Fs, name: &[u8], n: u64) -> Ino {
    let ino = fs
        .mknod(ROOT_INO, name, libc::S_IFREG | 0o644, 0, &ctx())
        .unwrap()
        .ino;
    for k in 0..n {
        fs.fallocate(ino, 2 * k * 1024, 1024, 0).unwrap();
        if k % 64 == 0 {
            fs.write(ino, 2 * k * 1024, &[(k / 64) as u8 + 1; 1024], 0)
                .unwrap();
        }
    }
    fs.fsync(ino, false).unwrap();
    ino
}

fn steps(fs: &Fs, ino: Ino, keep: u64) -> usize {
    let _g = fs.ns_read();
    let i = fs.read_inode(ino).unwrap();
    fs.truncate_steps(ino, &i, keep).unwrap().len()
}

#[test]
fn shrink_unlink_and_unmount_free_big_maps_in_steps() {
    let (_dir, img, fs) = setup("steps");
    let a = fragmented(&fs, b"a", 3000);
    assert!(
        steps(&fs, a, 1000) > 4,
        "the shrink should take several steps"
    );
    let attr = fs
        .setattr(
            a,
            &SetAttr {
                size: Some(1000 * 1024),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(attr.size, 1000 * 1024);
    let buf = fs.read(a, 0, 128 * 1024, 1024).unwrap();
    assert_eq!(buf, vec![2u8; 1024], "kept data must survive the shrink");

    // Unlinked without a reference: freed after the namespace lock, in steps.
    let free_before = fs.statfs().unwrap().bfree;
    let b = fragmented(&fs, b"b", 2000);
    assert!(steps(&fs, b, 0) > 4);
    fs.forget(b, fs.lookup_count(b));
    fs.unlink(ROOT_INO, b"b").unwrap();
    assert_eq!(
        fs.statfs().unwrap().bfree,
        free_before,
        "inode b's blocks should be free"
    );
    assert_eq!(fs.lookup(ROOT_INO, b"b").unwrap_err(), Errno::ENOENT);

    // Unlinked while referenced: freed in steps at unmount.
    let free_before = fs.statfs().unwrap().bfree;
    let c = fragmented(&fs, b"c", 2000);
    fs.unlink(ROOT_INO, b"c").unwrap();
    assert!(fs.statfs().unwrap().bfree < free_before - 2000);
    fs.shutdown().unwrap();
    drop(fs);
    e2fsck_clean(&img);
    let fs = mount(&img);
    assert_eq!(
        fs.statfs().unwrap().bfree,
        free_before,
        "inode {c}'s blocks should be free"
    );
    assert_eq!(fs.getattr(a).unwrap().size, 1000 * 1024);
}

#[test]
fn a_crash_between_two_steps_is_finished_at_the_next_mount() {
    let (_dir, img, fs) = setup("crash");
    let a = fragmented(&fs, b"a", 3000);
    fs.shutdown().unwrap();
    drop(fs);
    let fs = mount_rw(&img);
    fs.step_credits.store(12, Ordering::Relaxed);
    // What a shrink to 500 blocks does before its last step, then a crash: the journal holds
    // the orphan-listed inode with its new size and part of its blocks freed.
    let d = fs.inode_data(a).unwrap();
    fs.truncate_data(a, &d, 500 * 1024).unwrap();
    {
        let _g = fs.ns_write();
        let mut i = fs.read_inode(a).unwrap();
        fs.orphan_add(a, &mut i).unwrap();
    }
    let keep = 500;
    let cuts = {
        let _g = fs.ns_read();
        let i = fs.read_inode(a).unwrap();
        fs.truncate_steps(a, &i, keep).unwrap()
    };
    assert!(cuts.len() > 4);
    for &cut in &cuts[..cuts.len() / 2] {
        let _h = fs.ns_write_credits(fs.truncate_step_credits());
        let mut i = fs.read_inode(a).unwrap();
        fs.truncate_blocks(a, &mut i, cut).unwrap();
        fs.store_inode(a, &i).unwrap();
    }
    fs.sync().unwrap();
    drop(fs); // the crash: no unmount

    let fs = mount_rw(&img);
    fs.shutdown().unwrap();
    drop(fs);
    e2fsck_clean(&img);
    let fs = mount(&img);
    let attr = fs.getattr(a).unwrap();
    assert_eq!(attr.size, 500 * 1024);
    // Blocks past the size are gone: 250 one-block extents remain (and an extent tree).
    assert!(
        attr.blocks * 512 < 300 * 1024,
        "blocks past i_size were not freed: {} sectors",
        attr.blocks
    );
}
