//! The page cache reuses the memory of freed slabs: a file that gets a slab another file left its
//! bytes in must never show them — not in reads of holes, of partial blocks or of pages past
//! EOF, not through a window mapping of the chunk, not on the disk.

use super::testutil::ctx;
use super::types::SetAttr;
use super::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_ZERO_RANGE, Fs, MountOptions, ROOT_INO};
use crate::pagecache::{PAGE_SIZE, SLAB_SIZE};
use crate::test_support::e2fsck_clean;
use std::path::Path;
use std::sync::Arc;

const SECRET: u8 = 0xA5;

fn mkfs(img: &Path, block: &str) {
    let out = std::process::Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-b", block])
        .arg(img)
        .arg("64M")
        .output()
        .expect("mke2fs (e2fsprogs) is required");
    assert!(out.status.success());
}

/// File `name` with 6 MiB of SECRET written, synced, then cut to nothing: its slabs go back
/// to the cache with the bytes still in them.
fn leave_secret(fs: &Fs, name: &[u8]) {
    let a = fs.mknod(ROOT_INO, name, 0o100644, 0, &ctx()).unwrap().ino;
    let buf = vec![SECRET; 1 << 20];
    for i in 0..6u64 {
        fs.write(a, i << 20, &buf, 0).unwrap();
    }
    fs.fsync(a, false).unwrap();
    let cut = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    fs.setattr(a, &cut).unwrap();
}

/// Map chunk 0 of `ino` for a window (as the transport does) and return the pin.
fn pin_chunk(fs: &Fs, ino: super::Ino, write: bool) -> super::DaxPin {
    let mut pin = None;
    fs.dax_pin(ino, 0, SLAB_SIZE as u64, write, |p| {
        pin = Some(p);
        Ok(())
    })
    .unwrap();
    pin.unwrap()
}

fn no_secret(what: &str, got: &[u8]) {
    if let Some(at) = got.iter().position(|&b| b == SECRET) {
        panic!("{what}: another file's old byte at {at}");
    }
}

fn check_reuse(block: &str) {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("img");
    mkfs(&img, block);
    let dev = crate::blockdev::FileDevice::open(&img, false).unwrap();
    let fs = Fs::mount_with_cache(Arc::new(dev), &MountOptions::rw(), 8 << 20).unwrap();
    let pc = &fs.data.pc;
    let mut b_model = Vec::new();
    let b = fs.mknod(ROOT_INO, b"b", 0o100644, 0, &ctx()).unwrap().ino;
    // 1. Sparse writes into fresh pages of reused slabs: the rest of each page, the holes
    // between and the tail past EOF read as zeros.
    leave_secret(&fs, b"a1");
    assert!(pc.arena.kept_pages() > 0, "freed slabs keep their memory");
    for (off, len) in [
        (100u64, 10usize),
        (5000, 3000),
        (3 * 4096, 4096),
        (70_000, 1),
    ] {
        let data = vec![0x11; len];
        fs.write(b, off, &data, 0).unwrap();
        let end = off as usize + len;
        if b_model.len() < end {
            b_model.resize(end, 0);
        }
        b_model[off as usize..end].copy_from_slice(&data);
    }
    let got = fs.read(b, 0, 0, 1 << 20).unwrap();
    assert_eq!(got, b_model);
    // 2. A bigger size over the holes: the pages between read as zeros.
    let grow = SetAttr {
        size: Some(3 << 20),
        ..SetAttr::default()
    };
    fs.setattr(b, &grow).unwrap();
    b_model.resize(3 << 20, 0);
    leave_secret(&fs, b"a2");
    for off in (0..(3u64 << 20)).step_by(1 << 20) {
        let got = fs.read(b, 0, off, 1 << 20).unwrap();
        assert_eq!(got, b_model[off as usize..][..1 << 20], "read at {off}");
    }
    // 3. Zero range and allocate over reused memory.
    leave_secret(&fs, b"a3");
    fs.fallocate(b, 8192, 20_000, FALLOC_FL_ZERO_RANGE).unwrap();
    b_model[8192..28_192].fill(0);
    fs.fallocate(b, 2 << 20, 100_000, FALLOC_FL_KEEP_SIZE)
        .unwrap();
    let got = fs.read(b, 0, 0, 3 << 20).unwrap();
    assert_eq!(got, b_model);
    // 4. A window mapping shows the chunk's whole slab: nothing but B's data and zeros.
    leave_secret(&fs, b"a4");
    let pin = pin_chunk(&fs, b, true);
    let off = pin.fd_offset;
    let mut slab = vec![0u8; SLAB_SIZE];
    // SAFETY: pread into a buffer we own from the cache's memfd.
    let n = unsafe {
        libc::pread(
            fs.dax_memfd(),
            slab.as_mut_ptr().cast(),
            SLAB_SIZE,
            off as libc::off_t,
        )
    };
    assert_eq!(n, SLAB_SIZE as isize);
    assert_eq!(slab, b_model[..SLAB_SIZE], "the mapped chunk");
    fs.dax_unpin(pin);
    // 5. A second file written in partial pages over reused memory.
    leave_secret(&fs, b"a5");
    let c = fs.mknod(ROOT_INO, b"c", 0o100644, 0, &ctx()).unwrap().ino;
    for i in 0..64u64 {
        fs.write(c, i * PAGE_SIZE as u64 + 1000, b"x", 0).unwrap();
    }
    let got = fs.read(c, 0, 0, 64 * PAGE_SIZE as u32).unwrap();
    no_secret("partial pages", &got);
    // 6. A window over a short file: the page past EOF shows zeros, not old bytes.
    leave_secret(&fs, b"a6");
    let d = fs.mknod(ROOT_INO, b"d", 0o100644, 0, &ctx()).unwrap().ino;
    fs.write(d, 0, &[0x22; 1000], 0).unwrap();
    let pin = pin_chunk(&fs, d, false);
    let off = pin.fd_offset;
    // SAFETY: as above.
    let n = unsafe {
        libc::pread(
            fs.dax_memfd(),
            slab.as_mut_ptr().cast(),
            SLAB_SIZE,
            off as libc::off_t,
        )
    };
    assert_eq!(n, SLAB_SIZE as isize);
    assert_eq!(slab[..1000], [0x22; 1000]);
    no_secret("a window over a short file", &slab);
    fs.dax_unpin(pin);
    fs.fsync(b, false).unwrap();
    fs.fsync(c, false).unwrap();
    fs.shutdown().unwrap();
    drop(fs);
    e2fsck_clean(&img);
    let mnt = super::testutil::kernel_mount(&img, "loop,ro");
    assert_eq!(std::fs::read(mnt.join("b")).unwrap(), b_model);
    no_secret("c on disk", &std::fs::read(mnt.join("c")).unwrap());
    super::testutil::kernel_umount(&mnt);
}

#[test]
fn reused_slabs_never_show_another_files_data_4k_blocks() {
    check_reuse("4096");
}

#[test]
fn reused_slabs_never_show_another_files_data_1k_blocks() {
    check_reuse("1024");
}
