//! The superblock's error policy (`volume::errors`) seen through the operation API: corrupt
//! metadata under `errors=continue` and `errors=remount-ro`, and errors that are not the file
//! system's.

use crate::errno::Errno;
use crate::fs::testutil::*;
use crate::fs::*;
use crate::ondisk::le::{u16_at, u32_at};
use crate::volume::errors::STATE_ERROR;
use std::path::Path;

/// An image whose directory `bad` has a corrupt block (checksum mismatch), made with
/// `errors=policy`; returns the image and the physical block that was damaged.
fn image_with_corrupt_dir(dir: &Path, policy: &str) -> std::path::PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("bad")).unwrap();
    std::fs::write(src.join("bad/file"), b"x").unwrap();
    let img = dir.join(format!("{policy}.img"));
    mkfs(
        &src,
        &img,
        &["-t", "ext4", "-b", "4096", "-e", policy],
        "16M",
    );
    let fs = mount(&img);
    let bad = fs.lookup(ROOT_INO, b"bad").unwrap();
    let inode = fs.read_inode(bad.ino).unwrap();
    let Some(pblk) = fs.map_block(bad.ino, &inode, 0).unwrap().status.pblk() else {
        panic!("the directory has a block");
    };
    drop(fs);
    // Change a byte of the "file" entry's name: the block checksum no longer matches.
    let mut bytes = std::fs::read(&img).unwrap();
    let block = &mut bytes[(pblk * 4096) as usize..][..4096];
    let at = block.windows(4).position(|w| w == b"file").unwrap();
    block[at] = b'F';
    std::fs::write(&img, &bytes).unwrap();
    img
}

fn superblock_state_and_errors(img: &Path) -> (u16, u32) {
    let bytes = std::fs::read(img).unwrap();
    let sb = &bytes[1024..2048];
    (u16_at(sb, 0x3A), u32_at(sb, 0x194))
}

#[test]
fn errors_continue_records_the_error_and_goes_on() {
    let t = tempfile::tempdir().unwrap();
    let img = image_with_corrupt_dir(t.path(), "continue");
    let fs = mount_rw(&img);
    let bad = fs.lookup(ROOT_INO, b"bad").unwrap();
    let e = fs.lookup(bad.ino, b"file").unwrap_err();
    assert_eq!(e, Errno::EUCLEAN);
    fs.note_error(e);
    assert!(
        !fs.is_read_only(),
        "errors=continue keeps the file system writable"
    );
    fs.mkdir(ROOT_INO, b"after", 0o755, &ctx()).unwrap();
    fs.shutdown().unwrap();
    drop(fs);
    let (state, count) = superblock_state_and_errors(&img);
    assert_eq!(state & STATE_ERROR, STATE_ERROR, "state says errors");
    assert_eq!(count, 1, "s_error_count");
    repaired_clean(&img);
    assert!(mount(&img).lookup(ROOT_INO, b"after").is_ok());
}

#[test]
fn errors_remount_ro_stops_writes_and_keeps_what_was_committed() {
    let t = tempfile::tempdir().unwrap();
    let img = image_with_corrupt_dir(t.path(), "remount-ro");
    let fs = mount_rw(&img);
    fs.mkdir(ROOT_INO, b"committed", 0o755, &ctx()).unwrap();
    fs.sync().unwrap();
    fs.mkdir(ROOT_INO, b"running", 0o755, &ctx()).unwrap();
    let bad = fs.lookup(ROOT_INO, b"bad").unwrap();
    let e = fs.lookup(bad.ino, b"file").unwrap_err();
    fs.note_error(e);
    assert!(fs.is_read_only(), "errors=remount-ro");
    assert_eq!(
        fs.mkdir(ROOT_INO, b"later", 0o755, &ctx()),
        Err(Errno::EROFS)
    );
    // Not-corruption errors change nothing.
    drop(fs);
    let (state, count) = superblock_state_and_errors(&img);
    assert_eq!(state & STATE_ERROR, STATE_ERROR, "written home at once");
    assert_eq!(count, 1);
    repaired_clean(&img);
    let fs = mount(&img);
    assert!(
        fs.lookup(ROOT_INO, b"committed").is_ok(),
        "committed work stays"
    );
    assert!(fs.lookup(ROOT_INO, b"later").is_err());
}

#[test]
fn other_errors_are_not_file_system_errors() {
    let t = tempfile::tempdir().unwrap();
    let img = image_with_corrupt_dir(t.path(), "remount-ro");
    let fs = mount_rw(&img);
    fs.note_error(Errno::ENOENT);
    fs.note_error(Errno::EIO);
    assert!(!fs.is_read_only());
    fs.shutdown().unwrap();
    drop(fs);
    assert_eq!(superblock_state_and_errors(&img), (1, 0));
    repaired_clean(&img);
}

/// The mount's `errors=` overrides the superblock's: an image made with `-e continue` mounted
/// with errors=remount-ro turns read-only at the first corruption, and one made with
/// `-e remount-ro` mounted with errors=continue carries on.
#[test]
fn the_mount_option_overrides_the_superblock() {
    let t = tempfile::tempdir().unwrap();
    for (made, mounted, read_only) in [
        ("continue", OnError::RemountRo, true),
        ("remount-ro", OnError::Continue, false),
        ("continue", OnError::Panic, true),
    ] {
        let img = image_with_corrupt_dir(&t.path().join(mounted.name()), made);
        let dev = crate::blockdev::FileDevice::open(&img, false).unwrap();
        let opts = MountOptions {
            errors: Some(mounted),
            ..MountOptions::rw()
        };
        let fs = Fs::mount(std::sync::Arc::new(dev), &opts).unwrap();
        let bad = fs.lookup(ROOT_INO, b"bad").unwrap();
        let e = fs.lookup(bad.ino, b"file").unwrap_err();
        fs.note_error(e);
        assert_eq!(
            fs.is_read_only(),
            read_only,
            "made {made}, mounted {mounted:?}"
        );
        if !read_only {
            fs.shutdown().unwrap();
        }
        drop(fs);
        let (state, count) = superblock_state_and_errors(&img);
        assert_eq!(
            state & STATE_ERROR,
            STATE_ERROR,
            "made {made}, mounted {mounted:?}"
        );
        assert_eq!(count, 1);
        repaired_clean(&img);
    }
}
