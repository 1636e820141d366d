//! `data_err=`: what a failed write of file data does. The device fails every write of a block
//! that starts with [`FAIL_MARK`]; the image's free blocks hold a marker first, so a block that
//! was allocated but never got its data would show it.
//!
//! * `abort`: the next fsync answers EIO, the journal aborts and the file system turns
//!   read-only; everything fsynced before stays, and the image is consistent once e2fsck has
//!   seen the journal's error.
//! * `ignore` (the default): the file system carries on; an ext3-style (indirect-mapped) file
//!   whose block write failed has that block unmapped again, so it never shows stale data.

use super::crash_test_support::{MARKER, fill_free_blocks};
use crate::errno::Errno;
use crate::fs::testutil::{
    FAIL_MARK, FailMarked, ctx, kernel_mount, kernel_umount, mkfs_blank, repaired_clean,
};
use crate::fs::{DataErr, Fs, MountOptions, ROOT_INO};
use crate::test_support::e2fsck_clean;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// A blank image made with `opts`, its free blocks filled with the marker.
fn marked_image(dir: &Path, name: &str, opts: &[&str]) -> PathBuf {
    let img = dir.join(name);
    mkfs_blank(&img, opts, "32M");
    assert!(fill_free_blocks(&img) > 0);
    img
}

fn mount_failing(img: &Path, data_err: DataErr) -> (Arc<FailMarked>, Fs) {
    let dev = Arc::new(FailMarked::new(std::fs::read(img).unwrap()));
    let opts = MountOptions {
        data_err,
        ..MountOptions::rw()
    };
    let fs = Fs::mount(dev.clone(), &opts).unwrap();
    assert!(!fs.is_read_only());
    (dev, fs)
}

/// 16 KiB whose first block fails to write.
fn failing_data() -> Vec<u8> {
    let mut data = vec![7u8; 16384];
    data[..FAIL_MARK.len()].copy_from_slice(FAIL_MARK);
    data
}

fn has_marker(data: &[u8]) -> bool {
    data.windows(MARKER.len()).any(|w| w == MARKER)
}

fn create(fs: &Fs, name: &[u8]) -> u64 {
    fs.mknod(ROOT_INO, name, 0o100644, 0, &ctx()).unwrap().ino
}

/// The image is consistent as it lies (e2fsck -fn, which does not replay the journal), the
/// journal superblock records the abort (`Journal errno`, as jbd2 writes it), and after e2fsck
/// has replayed the journal and cleared the error the image is clean again.
fn journal_error_then_clean(img: &Path) {
    e2fsck_clean(img);
    let out = Command::new("dumpe2fs")
        .arg("-h")
        .arg(img)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("Journal errno:") && l.contains("-5")),
        "the journal records EIO: {text}"
    );
    repaired_clean(img);
}

/// data_err=abort on a journaled image (`-t ext4`: extents, blocks unwritten until their data
/// is down; `-t ext3`: indirect maps, data written before the map commits).
fn abort_case(mkfs_type: &str) {
    let t = tempfile::tempdir().unwrap();
    let img = marked_image(t.path(), "img", &["-t", mkfs_type, "-b", "4096"]);
    let (dev, fs) = mount_failing(&img, DataErr::Abort);
    let kept = create(&fs, b"kept");
    fs.write(kept, 0, &[3u8; 8192], 0).unwrap();
    fs.fsync(kept, false).unwrap();
    let bad = create(&fs, b"bad");
    let later = create(&fs, b"later");
    fs.write(bad, 0, &failing_data(), 0).unwrap();
    fs.write(later, 0, &[9u8; 8192], 0).unwrap();
    assert_eq!(fs.fsync(bad, false), Err(Errno::EIO));
    assert!(
        fs.is_read_only(),
        "{mkfs_type}: data_err=abort turned the file system read-only"
    );
    assert_eq!(
        fs.mknod(ROOT_INO, b"after", 0o100644, 0, &ctx())
            .map(|_| ()),
        Err(Errno::EROFS)
    );
    assert_eq!(fs.write(kept, 0, b"x", 0).map(|_| ()), Err(Errno::EROFS));
    // Its data can never go home now (the kernel answers EROFS too).
    assert_eq!(fs.fsync(later, false), Err(Errno::EROFS));
    assert_eq!(fs.read(kept, 0, 0, 8192).unwrap(), vec![3u8; 8192]);
    let _ = fs.shutdown();
    drop(fs);
    let out = t.path().join("after.img");
    std::fs::write(&out, dev.0.snapshot()).unwrap();
    journal_error_then_clean(&out);

    // Everything fsynced before the failure is there; nothing shows a stale block.
    let mnt = kernel_mount(&out, "loop,ro");
    let kept_back = std::fs::read(mnt.join("kept"));
    let names: Vec<_> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut stale = Vec::new();
    for n in &names {
        let p = mnt.join(n);
        if p.is_file() && has_marker(&std::fs::read(&p).unwrap()) {
            stale.push(n.clone());
        }
    }
    kernel_umount(&mnt);
    assert_eq!(
        kept_back.unwrap(),
        vec![3u8; 8192],
        "{mkfs_type}: the fsynced file"
    );
    assert!(stale.is_empty(), "{mkfs_type}: stale blocks in {stale:?}");
}

#[test]
fn data_err_abort_aborts_the_journal_on_an_extent_image() {
    abort_case("ext4");
}

#[test]
fn data_err_abort_aborts_the_journal_on_an_ext3_image() {
    abort_case("ext3");
}

/// The default on an ext3-style image: the failed block is unmapped again (it would show the
/// marker otherwise), the file system stays writable, the rest of the file and other files
/// keep their data, and the image is clean.
#[test]
fn data_err_ignore_unmaps_a_failed_indirect_block() {
    let t = tempfile::tempdir().unwrap();
    let img = marked_image(t.path(), "img", &["-t", "ext3", "-b", "4096"]);
    let (dev, fs) = mount_failing(&img, DataErr::Ignore);
    let bad = create(&fs, b"bad");
    let good = create(&fs, b"good");
    fs.write(bad, 0, &failing_data(), 0).unwrap();
    fs.write(good, 0, &[9u8; 8192], 0).unwrap();
    assert_eq!(fs.fsync(bad, false), Err(Errno::EIO));
    assert!(
        !fs.is_read_only(),
        "data_err=ignore keeps the file system writable"
    );
    fs.fsync(bad, false).unwrap();
    fs.fsync(good, false).unwrap();
    let back = fs.read(bad, 0, 0, 16384).unwrap();
    assert!(!has_marker(&back), "the failed block shows stale data");
    assert_eq!(
        &back[..4096],
        &[0u8; 4096][..],
        "the failed block reads as a hole"
    );
    fs.mkdir(ROOT_INO, b"after", 0o755, &ctx()).unwrap();
    fs.shutdown().unwrap();
    drop(fs);
    let out = t.path().join("after.img");
    std::fs::write(&out, dev.0.snapshot()).unwrap();
    e2fsck_clean(&out);
    let mnt = kernel_mount(&out, "loop,ro");
    let bad_back = std::fs::read(mnt.join("bad"));
    let good_back = std::fs::read(mnt.join("good"));
    kernel_umount(&mnt);
    let bad_back = bad_back.unwrap();
    assert!(!has_marker(&bad_back), "stale data on disk");
    assert_eq!(good_back.unwrap(), vec![9u8; 8192]);
}
