//! fsx-style random data operations through `vhost-ext4 mount`, checked against an in-memory
//! model: unaligned writes that extend, appends, truncates up and down, every fallocate mode the
//! kernel's FUSE passes on (it refuses collapse and insert range itself, as EOPNOTSUPP), writes
//! through a shared mmap, copy_file_range, fsync and read-backs. Several image layouts (4 KiB
//! and 1 KiB blocks, with and without a journal, ext3-style indirect maps, which punch holes
//! and refuse the other fallocate modes as the kernel's ext4 does). After unmounting,
//! `e2fsck -fn` must find the image clean and the kernel's ext4 must read every file exactly as
//! the model has it.

mod common;

use common::*;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::process::Command;

const FILES: usize = 3;
const MAX: u64 = 2 << 20;

fn fallocate(f: &File, mode: i32, off: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: fallocate on an open descriptor; no memory is passed.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn copy_range(src: &File, off_in: u64, dst: &File, off_out: u64, len: u64) -> std::io::Result<u64> {
    let mut a = off_in as i64;
    let mut b = off_out as i64;
    // SAFETY: both descriptors are open; the offsets are valid pointers to i64s on the stack.
    let n = unsafe {
        libc::copy_file_range(
            src.as_raw_fd(),
            &mut a,
            dst.as_raw_fd(),
            &mut b,
            len as usize,
            0,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as u64)
    }
}

/// Write `data` at `off` through a shared mapping (the file must already be that long).
fn mmap_write(f: &File, off: u64, data: &[u8]) {
    let page = 4096u64;
    let start = off / page * page;
    let len = (off + data.len() as u64 - start) as usize;
    // SAFETY: a new shared mapping of an open file, checked for MAP_FAILED, unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            start as i64,
        )
    };
    assert_ne!(
        p,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the mapping covers [start, start + len), which contains the destination range.
    unsafe {
        std::ptr::copy_nonoverlapping(
            data.as_ptr(),
            (p as *mut u8).add((off - start) as usize),
            data.len(),
        );
        assert_eq!(libc::msync(p, len, libc::MS_SYNC), 0);
        libc::munmap(p, len);
    }
}

fn model_write(m: &mut Vec<u8>, off: u64, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let end = off as usize + data.len();
    if m.len() < end {
        m.resize(end, 0);
    }
    m[off as usize..end].copy_from_slice(data);
}

fn first_diff(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

fn run(name: &str, mkfs: &[&str], extents: bool, seed: u64, ops: usize, mount_args: &[&str]) {
    require_root_and_tools();
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("img");
    let out = Command::new("mke2fs")
        .args(["-q", "-F"])
        .args(mkfs)
        .arg(&img)
        .arg("64M")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mnt = t.path().join("mnt");
    let mut args = vec!["--cache-size", "16M"];
    args.extend_from_slice(mount_args);
    let m = Mount::start(&img, &mnt, &args);
    let mut rng = Rng::new(seed);
    let mut models: Vec<Vec<u8>> = vec![Vec::new(); FILES];
    let files: Vec<File> = (0..FILES)
        .map(|i| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(mnt.join(format!("f{i}")))
                .unwrap()
        })
        .collect();
    let mut history: Vec<String> = Vec::new();
    let (mut refused_shifts, mut passed_shifts) = (0usize, 0usize);
    for step in 0..ops {
        let i = rng.below(FILES as u64) as usize;
        let f = &files[i];
        let size = models[i].len() as u64;
        let ctx = format!(
            "{name} seed {seed} step {step} f{i} size {size}; last: {:?}",
            &history[history.len().saturating_sub(8)..]
        );
        match rng.below(100) {
            0..=34 => {
                let off = if rng.below(4) == 0 {
                    size
                } else {
                    rng.below(MAX)
                };
                let cap = if rng.below(6) == 0 { 200_000 } else { 7000 };
                let mut data = vec![0u8; 1 + rng.below(cap) as usize];
                rng.fill(&mut data);
                f.write_all_at(&data, off)
                    .unwrap_or_else(|e| panic!("{ctx}: write: {e}"));
                model_write(&mut models[i], off, &data);
                history.push(format!("f{i} write {off}+{}", data.len()));
            }
            35..=49 => {
                let off = rng.below(size + 3000);
                let mut buf = vec![0u8; rng.below(150_000) as usize];
                let n = f.read_at(&mut buf, off).unwrap();
                let end = (off + buf.len() as u64).min(size);
                let want = if off < size {
                    &models[i][off as usize..end as usize]
                } else {
                    &[][..]
                };
                assert_eq!(n, want.len(), "{ctx}: read length at {off}");
                assert!(
                    buf[..n] == *want,
                    "{ctx}: read {off}+{} differs at +{}",
                    buf.len(),
                    first_diff(&buf[..n], want)
                );
            }
            50..=58 => {
                let new = if rng.below(2) == 0 {
                    rng.below(size + 1)
                } else {
                    rng.below(MAX)
                };
                f.set_len(new).unwrap();
                models[i].resize(new as usize, 0);
                history.push(format!("f{i} truncate {new}"));
            }
            59..=74 => {
                let kind = rng.below(8);
                let (off, len, mode) = if kind < 6 {
                    let modes = [
                        0,
                        libc::FALLOC_FL_KEEP_SIZE,
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        libc::FALLOC_FL_ZERO_RANGE,
                        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                    ];
                    (rng.below(MAX), 1 + rng.below(200_000), modes[kind as usize])
                } else {
                    // Collapse or insert, 4 KiB-aligned (a multiple of every block size here).
                    let mode = if kind == 6 {
                        libc::FALLOC_FL_COLLAPSE_RANGE
                    } else {
                        libc::FALLOC_FL_INSERT_RANGE
                    };
                    let bs = 4096;
                    (
                        rng.below(size / bs + 1) * bs,
                        (1 + rng.below(32)) * bs,
                        mode,
                    )
                };
                let r = fallocate(f, mode, off, len);
                let shift = mode & (libc::FALLOC_FL_COLLAPSE_RANGE | libc::FALLOC_FL_INSERT_RANGE);
                if shift != 0 {
                    // The kernel's FUSE (fuse_file_fallocate, 6.18) passes only KEEP_SIZE,
                    // PUNCH_HOLE and ZERO_RANGE on: collapse and insert never reach the daemon.
                    // Should a kernel pass them, they must do what ext4 does.
                    let invalid = if shift == libc::FALLOC_FL_COLLAPSE_RANGE {
                        off + len >= size
                    } else {
                        off >= size
                    };
                    match r {
                        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                            refused_shifts += 1;
                        }
                        Err(e) if invalid && extents => {
                            assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{ctx}")
                        }
                        Ok(()) if !invalid && extents => {
                            passed_shifts += 1;
                            let (o, e) = (off as usize, (off + len) as usize);
                            if shift == libc::FALLOC_FL_COLLAPSE_RANGE {
                                models[i].drain(o..e);
                            } else {
                                models[i].splice(o..o, std::iter::repeat_n(0, e - o));
                            }
                            history.push(format!("f{i} fallocate {off}+{len} mode {mode:#x}"));
                        }
                        r => panic!("{ctx}: fallocate {off}+{len} mode {mode:#x}: {r:?}"),
                    }
                    continue;
                }
                if !extents && mode & libc::FALLOC_FL_PUNCH_HOLE == 0 {
                    let e = r.expect_err("indirect files refuse fallocate");
                    assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP), "{ctx}");
                    continue;
                }
                r.unwrap_or_else(|e| panic!("{ctx}: fallocate {off}+{len} mode {mode:#x}: {e}"));
                let end = off + len;
                if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
                    let zend = end.min(models[i].len() as u64);
                    if off < zend {
                        models[i][off as usize..zend as usize].fill(0);
                    }
                }
                if mode & libc::FALLOC_FL_KEEP_SIZE == 0 && end > models[i].len() as u64 {
                    models[i].resize(end as usize, 0);
                }
                history.push(format!("f{i} fallocate {off}+{len} mode {mode:#x}"));
            }
            75..=82 if size > 0 => {
                let off = rng.below(size);
                let len = 1 + rng.below((size - off).min(20_000));
                let mut data = vec![0u8; len as usize];
                rng.fill(&mut data);
                mmap_write(f, off, &data);
                model_write(&mut models[i], off, &data);
                history.push(format!("f{i} mmap write {off}+{len}"));
            }
            83..=89 => {
                let j = rng.below(FILES as u64) as usize;
                if j == i {
                    continue;
                }
                let src_size = models[j].len() as u64;
                let off_in = rng.below(src_size + 1);
                let len = rng.below(150_000);
                let off_out = rng.below(MAX);
                let n = copy_range(&files[j], off_in, f, off_out, len)
                    .unwrap_or_else(|e| panic!("{ctx}: copy_file_range: {e}"));
                assert_eq!(
                    n,
                    len.min(src_size - off_in),
                    "{ctx}: copy_file_range length"
                );
                let data = models[j][off_in as usize..(off_in + n) as usize].to_vec();
                model_write(&mut models[i], off_out, &data);
                history.push(format!("f{j}->f{i} copy {off_in}+{n} to {off_out}"));
            }
            90..=94 => f.sync_all().unwrap(),
            _ => {
                let md = f.metadata().unwrap();
                assert_eq!(md.len(), size, "{ctx}: size");
                let got = std::fs::read(mnt.join(format!("f{i}"))).unwrap();
                assert!(
                    got == models[i],
                    "{ctx}: whole file differs at {}",
                    first_diff(&got, &models[i])
                );
            }
        }
    }
    eprintln!(
        "{name}: collapse/insert refused by the kernel {refused_shifts}, passed on {passed_shifts}"
    );
    assert!(
        refused_shifts + passed_shifts > 0,
        "{name}: no collapse or insert ran"
    );
    assert!(
        refused_shifts == 0 || passed_shifts == 0,
        "{name}: the kernel passed some collapse/insert calls on and refused others"
    );
    drop(files);
    let stderr = m.unmount();
    assert!(
        !stderr.contains("ERROR"),
        "{name}: the daemon logged errors:\n{stderr}"
    );
    assert_fsck_clean(&img);
    let k = KernelMount::start(&img, &t.path().join("kmnt"));
    for (i, model) in models.iter().enumerate() {
        let got = std::fs::read(k.dir.join(format!("f{i}"))).unwrap();
        assert!(
            got == *model,
            "{name}: the kernel reads f{i} differently (at {})",
            first_diff(&got, model)
        );
    }
    k.unmount();
}

#[test]
fn fsx_4k_journal() {
    run(
        "4k-journal",
        &["-t", "ext4", "-b", "4096"],
        true,
        1,
        2500,
        &[],
    );
}

#[test]
fn fsx_1k_journal() {
    run(
        "1k-journal",
        &["-t", "ext4", "-b", "1024"],
        true,
        2,
        2500,
        &[],
    );
}

#[test]
fn fsx_4k_no_journal() {
    run(
        "4k-nojournal",
        &["-t", "ext4", "-O", "^has_journal"],
        true,
        3,
        2500,
        &[],
    );
}

#[test]
fn fsx_ext3_indirect() {
    run("ext3", &["-t", "ext3", "-b", "1024"], false, 4, 2000, &[]);
}

#[test]
fn fsx_4k_journal_writeback_cache() {
    run(
        "4k-writeback-cache",
        &["-t", "ext4", "-b", "4096"],
        true,
        5,
        2500,
        &["--writeback-cache"],
    );
}

#[test]
fn fsx_4k_inline_data() {
    run(
        "4k-inline-data",
        &["-t", "ext4", "-b", "4096", "-I", "256", "-O", "inline_data"],
        true,
        6,
        2500,
        &[],
    );
}

/// Small files written through the mount on an inline_data image land in their inodes as the
/// kernel's ext4 puts them (up to 128 bytes in a 256-byte inode), appends move out when they
/// outgrow it; e2fsck is clean and the kernel reads every file back.
#[test]
fn small_files_written_through_the_mount_go_inline() {
    require_root_and_tools();
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("img");
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-I", "256", "-O", "inline_data"])
        .arg(&img)
        .arg("32M")
        .output()
        .unwrap();
    assert!(out.status.success());
    let mnt = t.path().join("mnt");
    let m = Mount::start(&img, &mnt, &[]);
    let mut rng = Rng::new(7);
    let mut files = Vec::new();
    for n in [0usize, 1, 59, 60, 61, 127, 128, 129, 200, 3000] {
        let mut data = vec![0u8; n];
        rng.fill(&mut data);
        std::fs::write(mnt.join(format!("f{n}")), &data).unwrap();
        files.push((format!("f{n}"), data, (1..=128).contains(&n)));
    }
    // O_APPEND in pieces of 20 bytes: 120 fit the inode, 140 do not.
    for pieces in [6, 7] {
        let name = format!("app{}", pieces * 20);
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(mnt.join(&name))
            .unwrap();
        let mut all = Vec::new();
        for _ in 0..pieces {
            let mut piece = vec![0u8; 20];
            rng.fill(&mut piece);
            std::io::Write::write_all(&mut f, &piece).unwrap();
            all.extend_from_slice(&piece);
        }
        files.push((name, all, pieces * 20 <= 128));
    }
    for (name, data, _) in &files {
        assert_eq!(&std::fs::read(mnt.join(name)).unwrap(), data, "{name}");
    }
    let stderr = m.unmount();
    assert!(
        !stderr.contains("ERROR"),
        "the daemon logged errors:\n{stderr}"
    );
    assert_fsck_clean(&img);
    for (name, _, inline) in &files {
        let stat = debugfs(&img, &format!("stat /{name}"));
        let flags = stat
            .split("Flags: 0x")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .unwrap_or_else(|| panic!("{name}: no flags in {stat}"));
        assert_eq!(
            flags & 0x1000_0000 != 0,
            *inline,
            "{name}: flags {flags:#x}"
        );
    }
    let k = KernelMount::start(&img, &t.path().join("kmnt"));
    for (name, data, _) in &files {
        assert_eq!(
            &std::fs::read(k.dir.join(name)).unwrap(),
            data,
            "kernel: {name}"
        );
    }
    k.unmount();
}
