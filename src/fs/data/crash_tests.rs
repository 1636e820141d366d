//! Crash tests with file data. The starting image's free blocks are first filled with a marker
//! (a real disk's free space holds old data); a workload then writes, overwrites, appends,
//! truncates, punches and fsyncs files on a recording device. Crash states are rebuilt at every
//! flush and at random cuts, keeping a random subset of the writes issued since the last flush
//! (a disk may reorder them). After our replay every state must be a consistent file system in
//! which:
//! * **no file shows a single marker byte**: blocks are unwritten until their data is down, and
//!   i_disksize never covers data that is not on the disk;
//! * every file whose last change before the crash was followed by a completed fsync reads back
//!   exactly as it was fsynced.
//!
//! A sample of states also goes through e2fsck's replay and `e2fsck -fn`, and a few through the
//! kernel's.

use super::tests::mkfs;
use crate::blockdev::record::{CrashModel, CrashRng, CrashState, Event, durable_prefix};
use crate::blockdev::{MemDevice, RecordingDevice};
use crate::fs::crash_test_support::{
    check_tree, files_with_marker, fill_free_blocks, replay_in_memory,
};
use crate::fs::testutil::{ctx, kernel_mount, kernel_umount};
use crate::fs::{
    FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, Fs, Ino, MountOptions, ROOT_INO, SetAttr,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

/// Deterministic non-zero content for `file` at `version`.
fn content(file: usize, version: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let x = (i as u64)
                .wrapping_mul(2654435761)
                .wrapping_add(file as u64 * 97 + version as u64 * 31);
            (x >> 7) as u8 | 1
        })
        .collect()
}

/// One file of the workload: its inode, its current content, and the log positions of its
/// changes and of its completed fsyncs (with the content then).
#[derive(Default)]
struct Tracked {
    ino: Ino,
    name: String,
    now: Vec<u8>,
    changes: Vec<usize>,
    synced: Vec<(usize, Vec<u8>)>,
}

struct Workload<'a> {
    fs: &'a Fs,
    dev: &'a RecordingDevice<MemDevice>,
    files: Vec<Tracked>,
}

impl Workload<'_> {
    fn at(&self) -> usize {
        self.dev.events().len()
    }

    fn create(&mut self, name: &str) -> usize {
        let a = self
            .fs
            .mknod(ROOT_INO, name.as_bytes(), 0o100644, 0, &ctx())
            .unwrap();
        self.files.push(Tracked {
            ino: a.ino,
            name: name.into(),
            ..Default::default()
        });
        self.files.len() - 1
    }

    fn write(&mut self, f: usize, off: usize, len: usize, version: u32) {
        let data = content(f, version, len);
        let ino = self.files[f].ino;
        let start = self.at();
        assert_eq!(
            self.fs.write(ino, off as u64, &data, 0).unwrap() as usize,
            len
        );
        let t = &mut self.files[f];
        if t.now.len() < off + len {
            t.now.resize(off + len, 0);
        }
        t.now[off..off + len].copy_from_slice(&data);
        t.changes.push(start);
    }

    fn truncate(&mut self, f: usize, size: usize) {
        let start = self.at();
        let ino = self.files[f].ino;
        self.fs
            .setattr(
                ino,
                &SetAttr {
                    size: Some(size as u64),
                    ..Default::default()
                },
            )
            .unwrap();
        let t = &mut self.files[f];
        t.now.resize(size, 0);
        t.changes.push(start);
    }

    fn punch(&mut self, f: usize, off: usize, len: usize) {
        let start = self.at();
        let ino = self.files[f].ino;
        self.fs
            .fallocate(
                ino,
                off as u64,
                len as u64,
                FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
            )
            .unwrap();
        let t = &mut self.files[f];
        let end = (off + len).min(t.now.len());
        if off < end {
            t.now[off..end].fill(0);
        }
        t.changes.push(start);
    }

    fn fsync(&mut self, f: usize) {
        self.fs.fsync(self.files[f].ino, false).unwrap();
        let done = self.at();
        let t = &mut self.files[f];
        t.synced.push((done, t.now.clone()));
    }
}

fn run_workload(fs: &Fs, dev: &RecordingDevice<MemDevice>) -> Vec<Tracked> {
    let mut w = Workload {
        fs,
        dev,
        files: Vec::new(),
    };
    let a = w.create("a");
    let b = w.create("b");
    let c = w.create("c");
    w.write(a, 0, 300_000, 1);
    w.write(b, 5000, 77_777, 1);
    w.fsync(a);
    w.write(c, 0, 1_500_000, 1);
    w.write(a, 4096 * 10 + 13, 20_000, 2);
    w.fsync(c);
    w.write(b, 200_000, 9000, 2);
    w.fsync(b);
    w.truncate(c, 700_001);
    w.write(a, 300_000, 123_456, 3);
    w.fsync(a);
    w.punch(c, 100_000, 250_000);
    w.write(c, 650_000, 200_000, 2);
    w.fsync(c);
    let d = w.create("d");
    for i in 0..20 {
        w.write(d, i * 10_000, 10_000, i as u32);
    }
    w.truncate(b, 1000);
    w.write(b, 1_000_000, 4096, 3);
    w.fsync(d);
    w.fsync(b);
    // A sparse file filled in from the middle: new blocks inside i_size.
    let e = w.create("e");
    w.truncate(e, 3_000_000);
    w.fsync(e);
    for i in 0..12 {
        w.write(e, 2_900_000 - i * 230_000, 60_000 + i * 1000, i as u32);
        if i % 4 == 3 {
            w.fsync(e);
        }
    }
    w.write(a, 0, 50_000, 4);
    w.write(c, 0, 2_000_000, 3);
    fs.sync().unwrap();
    w.write(d, 7, 333, 99);
    w.files
}

fn e2fsck(img: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("e2fsck").args(args).arg(img).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Check one replayed crash state; errors describe the first problem.
fn check_state(fs: &Fs, files: &[Tracked], state: &CrashState) -> Result<(), String> {
    let tree = check_tree(fs)?;
    let marked = files_with_marker(fs, &tree)?;
    if let Some((path, off, blk)) = marked.first() {
        return Err(format!(
            "/{path} shows stale data (a free block's marker, block {blk}) at byte {off}"
        ));
    }
    for t in files {
        // The last completed fsync before the durable point, with no change after it (up to
        // the cut): the file must read exactly as then.
        let Some((at, want)) = t.synced.iter().rev().find(|(at, _)| *at <= state.durable) else {
            continue;
        };
        if t.changes.iter().any(|&c| c >= *at && c < state.cut) {
            continue;
        }
        let Some(attr) = tree.paths.get(&t.name) else {
            return Err(format!("/{} was fsynced at event {at} and is gone", t.name));
        };
        let got = fs
            .read(attr.ino, 0, 0, want.len() as u32 + 1)
            .map_err(|e| format!("read /{}: {e}", t.name))?;
        if got != *want {
            let i = got.iter().zip(want).position(|(x, y)| x != y);
            return Err(format!(
                "/{} differs from what was fsynced at event {at}: {} bytes vs {}, first difference at {i:?}",
                t.name,
                got.len(),
                want.len()
            ));
        }
    }
    Ok(())
}

/// Three threads each write, overwrite, extend and fsync their own files (created by the
/// thread, beside the others' writeback) while a fourth creates, renames and unlinks files: the
/// log interleaves their handles, so cuts land in the middle of concurrent handles.
fn run_concurrent_workload(fs: &Fs, dev: &RecordingDevice<MemDevice>) -> Vec<Tracked> {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|sc| {
        let ns = sc.spawn(|| {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = format!("ns{n}");
                let a = fs
                    .mknod(ROOT_INO, name.as_bytes(), 0o100644, 0, &ctx())
                    .unwrap();
                fs.rename(ROOT_INO, name.as_bytes(), ROOT_INO, b"ns-last", 0)
                    .unwrap();
                if n.is_multiple_of(3) {
                    fs.unlink(ROOT_INO, b"ns-last").unwrap();
                    fs.forget(a.ino, 1);
                }
                n += 1;
            }
        });
        let writers: Vec<_> = (0..3usize)
            .map(|k| {
                sc.spawn(move || {
                    let mut w = Workload {
                        fs,
                        dev,
                        files: Vec::new(),
                    };
                    let a = w.create(&format!("t{k}a"));
                    let b = w.create(&format!("t{k}b"));
                    for round in 0..6u32 {
                        let off = (round as usize * 70_000 + k * 3000) % 400_000;
                        w.write(a, off, 90_000 + k * 1111, round + 1);
                        w.write(b, off / 2, 30_000, round + 1);
                        if round % 2 == k as u32 % 2 {
                            w.fsync(a);
                        }
                        w.fsync(b);
                    }
                    w.write(a, 0, 10_000, 50);
                    w.fsync(a);
                    w.files
                })
            })
            .collect();
        let files: Vec<Tracked> = writers
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        ns.join().unwrap();
        files
    })
}

fn crash_data(opts: &[&str], seed: u64) {
    crash_data_with(opts, seed, run_workload);
}

/// Flush points a crash test rebuilds at most (each with four reordered subsets).
const MAX_FLUSH_POINTS: usize = 400;

fn crash_data_with(
    opts: &[&str],
    seed: u64,
    workload: fn(&Fs, &RecordingDevice<MemDevice>) -> Vec<Tracked>,
) {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("base.img");
    mkfs(&img, opts, "32M");
    assert!(fill_free_blocks(&img) > 1000);
    let base = std::fs::read(&img).unwrap();
    let dev = Arc::new(RecordingDevice::new(MemDevice::from_vec(base.clone())));
    let files = {
        let fs = Arc::new(Fs::mount_with_cache(dev.clone(), &MountOptions::rw(), 8 << 20).unwrap());
        // Transactions close at any point of a writeback: right after each allocation, before
        // its data write (the hook), and whenever a committer beside the workload runs.
        fs.commit_after_alloc
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let committer = {
            let (fs, stop) = (fs.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    fs.sync().unwrap();
                    std::thread::yield_now();
                }
            })
        };
        let files = workload(&fs, &dev);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        committer.join().unwrap();
        // No unmount: the crash comes before it.
        files
    };
    let log = dev.events();
    let flushes: Vec<usize> = log
        .iter()
        .enumerate()
        .filter(|(_, e)| **e == Event::Flush)
        .map(|(i, _)| i + 1)
        .collect();
    assert!(flushes.len() > 10, "the workload should flush often");
    let mut rng = CrashRng::new(seed);
    let mut states: Vec<CrashState> = Vec::new();
    // A concurrent workload's flush count depends on how its threads interleave (hundreds to
    // thousands): past MAX_FLUSH_POINTS, an evenly spread subset (the last flush always), so a
    // run's length does not swing with the schedule.
    let step = flushes.len().div_ceil(MAX_FLUSH_POINTS);
    let last = *flushes.last().unwrap();
    let picked: Vec<usize> = flushes
        .iter()
        .copied()
        .enumerate()
        .filter(|&(i, f)| i % step == 0 || f == last)
        .map(|(_, f)| f)
        .collect();
    for &f in &picked {
        states.push(CrashState::prefix(&log, f));
        // Just before the flush: the writes it was about to make durable, in any subset.
        for _ in 0..4 {
            states.push(CrashState::random(
                &log,
                f - 1,
                &mut rng,
                CrashModel::default(),
            ));
        }
    }
    for _ in 0..300 {
        let cut = rng.below(log.len() as u64 + 1) as usize;
        states.push(CrashState::random(
            &log,
            cut,
            &mut rng,
            CrashModel::default(),
        ));
    }
    let sample_every = states.len() / 25 + 1;
    let mut kernel_left = 2;
    let cut_img = t.path().join("cut.img");
    for (n, state) in states.iter().enumerate() {
        assert_eq!(state.durable, durable_prefix(&log, state.cut));
        let mut image = base.clone();
        state.apply(&mut image, &log);
        let what = format!(
            "{opts:?} state {n} (cut {} of {}, durable {}, {} of {} pending writes landed)",
            state.cut,
            log.len(),
            state.durable,
            state.landed.len(),
            state.pending(&log)
        );
        if n % sample_every == 0 {
            // e2fsck replays the journal and must find the result clean.
            std::fs::write(&cut_img, &image).unwrap();
            let (ok, out) = e2fsck(&cut_img, &["-fy", "-E", "journal_only"]);
            assert!(
                ok || out.is_empty() || out.contains("recovering"),
                "{what}: e2fsck replay: {out}"
            );
            let (clean, out) = e2fsck(&cut_img, &["-fn"]);
            assert!(clean, "{what}: e2fsck -fn after e2fsck's replay:\n{out}");
            let replayed = std::fs::read(&cut_img).unwrap();
            let fs = replay_in_memory(replayed).unwrap_or_else(|e| panic!("{what}: {e}"));
            check_state(&fs, &files, state)
                .unwrap_or_else(|e| panic!("{what}, e2fsck's replay: {e}"));
            if kernel_left > 0 && n % (sample_every * 5) == 0 {
                kernel_left -= 1;
                std::fs::write(&cut_img, &image).unwrap();
                let mnt = kernel_mount(&cut_img, "loop");
                kernel_umount(&mnt);
                let (clean, out) = e2fsck(&cut_img, &["-fn"]);
                assert!(
                    clean,
                    "{what}: e2fsck -fn after the kernel's replay:\n{out}"
                );
                let fs = replay_in_memory(std::fs::read(&cut_img).unwrap())
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                check_state(&fs, &files, state)
                    .unwrap_or_else(|e| panic!("{what}, the kernel's replay: {e}"));
            }
        }
        let fs = replay_in_memory(image).unwrap_or_else(|e| panic!("{what}: {e}"));
        check_state(&fs, &files, state).unwrap_or_else(|e| panic!("{what}, our replay: {e}"));
        if n % sample_every == 0 {
            // Our replay is also clean for e2fsck.
            let snap = {
                let mut v = vec![0u8; 32 << 20];
                fs.dev.read_at(&mut v, 0).unwrap();
                v
            };
            std::fs::write(&cut_img, &snap).unwrap();
            let (clean, out) = e2fsck(&cut_img, &["-fn"]);
            assert!(clean, "{what}: e2fsck -fn after our replay:\n{out}");
        }
    }
    let tracked: BTreeMap<&str, usize> = files
        .iter()
        .map(|f| (f.name.as_str(), f.synced.len()))
        .collect();
    assert!(
        tracked.values().all(|&n| n > 0),
        "every file was fsynced at least once: {tracked:?}"
    );
}

#[test]
fn data_survives_crashes_without_stale_blocks_4k() {
    crash_data(&["-t", "ext4", "-b", "4096"], 5);
}

#[test]
fn data_survives_crashes_without_stale_blocks_1k() {
    crash_data(&["-t", "ext4", "-b", "1024", "-O", "^metadata_csum"], 6);
}

#[test]
fn data_survives_crashes_amid_concurrent_handles() {
    crash_data_with(&["-t", "ext4", "-b", "1024"], 7, run_concurrent_workload);
}
