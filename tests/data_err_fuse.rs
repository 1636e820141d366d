//! A real device write error under `vhost-ext4 mount`, with `-o data_err=abort` and with the
//! default (`data_err=ignore`). The image lives on a small tmpfs of its own; a first mount
//! writes what must survive, then the test punches holes into every free block of the image and
//! fills the tmpfs, so that writing a newly allocated data block fails (ENOSPC from the host,
//! EIO to the file system) while every metadata block, already backed, can still be written.
//!
//! Both policies: the fsync after the failed write answers EIO and the daemon's log names the
//! inode. `abort`: the file system turns read-only (a create answers EROFS), the journal records
//! the error, the image is consistent as it lies and everything fsynced before is intact.
//! `ignore`: the file system carries on; after unmounting, the image is clean and the kernel
//! reads every other file as written.

mod common;

use common::*;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

const IMAGE_MIB: u64 = 32;

/// A tmpfs mounted at `dir` (unmounted when dropped).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={}m", IMAGE_MIB + 8)])
            .arg("tmpfs")
            .arg(dir));
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = run_any(Command::new("umount").arg("-l").arg(&self.0));
    }
}

/// A 4 KiB-block image at `img`, every byte of it backed by tmpfs pages.
fn make_backed_image(img: &Path, fs_type: &str) {
    File::create(img).unwrap().set_len(IMAGE_MIB << 20).unwrap();
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", fs_type, "-b", "4096"])
        .args(["-E", "lazy_itable_init=0,lazy_journal_init=0"])
        .arg(img));
    // mke2fs zeroes the journal by punching it out of the file: back every byte again.
    let f = OpenOptions::new().write(true).open(img).unwrap();
    // SAFETY: fallocate on an open descriptor; no memory is passed.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, (IMAGE_MIB << 20) as i64) };
    assert_eq!(rc, 0, "fallocate: {}", std::io::Error::last_os_error());
}

/// The free blocks of `img`, as runs (first, count), from debugfs's `ffb`.
fn free_ranges(img: &Path) -> Vec<(u64, u64)> {
    let text = debugfs(img, "ffb 1000000");
    let list = text
        .split_once("Free blocks found:")
        .unwrap_or_else(|| panic!("debugfs ffb: {text}"))
        .1;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for b in list.split_whitespace().map(|w| w.parse::<u64>().unwrap()) {
        match runs.last_mut() {
            Some((first, count)) if *first + *count == b => *count += 1,
            _ => runs.push((b, 1)),
        }
    }
    assert!(!runs.is_empty(), "no free blocks: {text}");
    runs
}

/// Take the backing of every block in `ranges` away (4 KiB blocks), then fill the tmpfs: a
/// write into any of those blocks now fails with ENOSPC.
fn make_free_blocks_unwritable(img: &Path, ranges: &[(u64, u64)], tmpfs: &Path) {
    let f = OpenOptions::new().write(true).open(img).unwrap();
    for &(first, count) in ranges {
        // SAFETY: fallocate on an open descriptor; no memory is passed.
        let rc = unsafe {
            libc::fallocate(
                f.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                (first * 4096) as i64,
                (count * 4096) as i64,
            )
        };
        assert_eq!(
            rc,
            0,
            "punching {first}+{count}: {}",
            std::io::Error::last_os_error()
        );
    }
    let mut filler = File::create(tmpfs.join("filler")).unwrap();
    let chunk = vec![0xA5u8; 4096];
    loop {
        match filler.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling the tmpfs: {e}"),
        }
    }
}

fn write_file(p: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(p)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Copy the image off the tmpfs (the daemon has stopped).
fn image_copy(img: &Path, dir: &Path) -> PathBuf {
    let out = dir.join("after.img");
    std::fs::copy(img, &out).unwrap();
    out
}

struct Setup {
    _t: tempfile::TempDir,
    _tmpfs: Tmpfs,
    img: PathBuf,
    mnt: PathBuf,
    dir: PathBuf,
}

/// An image on its own tmpfs holding `kept` (written and unmounted), whose free blocks can no
/// longer be written.
fn setup(fs_type: &str) -> Setup {
    require_root_and_tools();
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_path_buf();
    let tmpfs = Tmpfs::mount(&dir.join("tmpfs"));
    let img = tmpfs.0.join("img");
    make_backed_image(&img, fs_type);
    let m = Mount::start(&img, &dir.join("mnt"), &[]);
    write_file(&dir.join("mnt/kept"), &kept_data()).unwrap();
    m.unmount();
    make_free_blocks_unwritable(&img, &free_ranges(&img), &tmpfs.0);
    Setup {
        mnt: dir.join("mnt"),
        _t: t,
        _tmpfs: tmpfs,
        img,
        dir,
    }
}

fn kept_data() -> Vec<u8> {
    (0..3 * 4096 + 123).map(|i| (i % 251) as u8).collect()
}

#[test]
fn data_err_abort_turns_the_mount_read_only() {
    for fs_type in ["ext4", "ext3"] {
        let s = setup(fs_type);
        let mut m = Mount::start(&s.img, &s.mnt, &["-o", "errors=continue,data_err=abort"]);

        let err = write_file(&s.mnt.join("bad"), &[7u8; 64 << 10]).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EIO),
            "{fs_type}: fsync after a failed write"
        );
        let err = File::create(s.mnt.join("after")).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EROFS),
            "{fs_type}: a create after the abort"
        );
        assert_eq!(std::fs::read(s.mnt.join("kept")).unwrap(), kept_data());
        // The daemon exits non-zero: what was dirty could not be flushed.
        let status = m.terminate();
        let log = m.stderr();
        assert!(
            !status.success(),
            "{fs_type}: exit status after the abort; log:\n{log}"
        );
        assert!(!log.contains("panicked"), "{log}");
        assert!(
            log.contains("I/O error writing blocks"),
            "{fs_type}: the log names the write: {log}"
        );
        assert!(
            log.contains("data_err=abort"),
            "{fs_type}: the log says why it aborted: {log}"
        );
        drop(m);

        let out = image_copy(&s.img, &s.dir);
        // Consistent as it lies, without replaying the journal.
        assert_fsck_clean(&out);
        let header =
            String::from_utf8_lossy(&run(Command::new("dumpe2fs").arg("-h").arg(&out)).stdout)
                .into_owned();
        assert!(
            header
                .lines()
                .any(|l| l.starts_with("Journal errno:") && l.contains("-5")),
            "{fs_type}: the journal records the abort:\n{header}"
        );
        let fix = run_any(Command::new("e2fsck").arg("-fy").arg(&out));
        assert!(
            fix.status.code().is_some_and(|c| c <= 1),
            "e2fsck -fy: {fix:?}"
        );
        assert_fsck_clean(&out);
        let k = KernelMount::start(&out, &s.dir.join("kmnt"));
        let back = std::fs::read(k.dir.join("kept"));
        k.unmount();
        assert_eq!(back.unwrap(), kept_data(), "{fs_type}: the fsynced file");
    }
}

#[test]
fn data_err_ignore_keeps_the_mount_writable() {
    for fs_type in ["ext4", "ext3"] {
        let s = setup(fs_type);
        let m = Mount::start(&s.img, &s.mnt, &[]);

        let err = write_file(&s.mnt.join("bad"), &[7u8; 64 << 10]).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EIO),
            "{fs_type}: fsync after a failed write"
        );
        // Changes that need no new block (the root directory has room) go on.
        File::create(s.mnt.join("after")).unwrap();
        std::fs::rename(s.mnt.join("kept"), s.mnt.join("renamed")).unwrap();
        let log = m.unmount();
        assert!(
            log.contains("I/O error writing blocks"),
            "{fs_type}: the log names the write: {log}"
        );
        assert!(!log.contains("aborting the journal"), "{fs_type}: {log}");

        let out = image_copy(&s.img, &s.dir);
        assert_fsck_clean(&out);
        let k = KernelMount::start(&out, &s.dir.join("kmnt"));
        let back = std::fs::read(k.dir.join("renamed"));
        let bad = std::fs::read(k.dir.join("bad"));
        k.unmount();
        assert_eq!(back.unwrap(), kept_data(), "{fs_type}: the renamed file");
        // The lost blocks read as zeros (unwritten or unmapped), never as whatever the disk held.
        assert!(
            bad.unwrap().iter().all(|&b| b == 0 || b == 7),
            "{fs_type}: bad holds foreign bytes"
        );
    }
}
