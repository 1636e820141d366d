//! Crash tests: a workload runs on a recording device; the image is rebuilt as it was at every
//! flush point and at random cut points; e2fsck replays the journal (and nothing else); then
//! e2fsck must find the file system clean and every operation completed before the last finished
//! sync must be there.

use super::testutil::*;
use super::*;
use crate::blockdev::MemDevice;
use crate::blockdev::record::{Event, RecordingDevice, replay};
use crate::journal::commit::JournalStats;
use std::path::Path;
use std::process::Command;

/// Replay the journal with e2fsck and nothing else; true when there was a log to replay.
fn e2fsck_journal_only(img: &Path) -> bool {
    let out = Command::new("e2fsck")
        .args(["-fy", "-E", "journal_only"])
        .arg(img)
        .output()
        .expect("e2fsck is required");
    assert!(
        out.status.code().is_some_and(|c| c <= 1),
        "e2fsck journal replay failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).contains("recovering journal")
        || String::from_utf8_lossy(&out.stderr).contains("recovering journal")
}

/// Run a namespace workload; returns the log and, per sync, (log length when it returned, names
/// that must exist from then on).
/// The workloads the crash tests cut: namespace churn in one directory, a deep tree with renames
/// across it, and hard links / symlinks / truncates / xattrs.
#[derive(Clone, Copy, Debug)]
enum Workload {
    Churn,
    DeepRenames,
    LinksAndAttrs,
    DirsComeAndGo,
}

/// Directories filled (several blocks each, an xattr block) and removed again, round after
/// round: on a small journal the log wraps, checkpoints, and freed directory and xattr blocks
/// that live transactions logged get revoke records.
fn dirs_come_and_go(dev: Arc<RecordingDevice<MemDevice>>) -> Run {
    let fs = Fs::mount(dev.clone(), &MountOptions { read_only: false }).unwrap();
    let mut synced = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for round in 0..40 {
        let dname = format!("round{round}");
        let d = fs.mkdir(ROOT_INO, dname.as_bytes(), 0o755, &ctx()).unwrap();
        fs.setxattr(d.ino, b"user.big", &vec![b'v'; 700], 0)
            .unwrap();
        for i in 0..100 {
            let n = format!("entry-with-a-rather-long-name-{i:03}");
            fs.mknod(d.ino, n.as_bytes(), libc::S_IFREG | 0o644, 0, &ctx())
                .unwrap();
        }
        fs.sync().unwrap();
        names.push(dname.clone());
        synced.push((dev.events().len(), names.clone()));
        if round % 4 != 3 {
            // Empty the directory of the previous round and remove it.
            if round > 0 {
                let prev = format!("round{}", round - 1);
                let p = fs.lookup(ROOT_INO, prev.as_bytes()).unwrap();
                for i in 0..100 {
                    let n = format!("entry-with-a-rather-long-name-{i:03}");
                    let f = fs.lookup(p.ino, n.as_bytes()).unwrap();
                    fs.unlink(p.ino, n.as_bytes()).unwrap();
                    fs.forget(f.ino, fs.lookup_count(f.ino));
                }
                fs.rmdir(ROOT_INO, prev.as_bytes()).unwrap();
                fs.forget(p.ino, fs.lookup_count(p.ino));
                names.retain(|x| *x != prev);
            }
            if round % 2 == 0 {
                fs.sync().unwrap();
                synced.push((dev.events().len(), names.clone()));
            }
        }
    }
    finish(fs, &dev, synced)
}

/// A workload's write log, its sync points (log length when each sync returned, names that
/// must exist from then on), and what the journal did.
type Run = (Vec<Event>, Vec<(usize, Vec<String>)>, Option<JournalStats>);

fn finish(fs: Fs, dev: &RecordingDevice<MemDevice>, synced: Vec<(usize, Vec<String>)>) -> Run {
    let stats = fs.journal_stats();
    fs.shutdown().unwrap();
    (dev.events(), synced, stats)
}

fn run_workload(kind: Workload, dev: Arc<RecordingDevice<MemDevice>>) -> Run {
    match kind {
        Workload::Churn => workload(dev),
        Workload::DeepRenames => deep_renames(dev),
        Workload::LinksAndAttrs => links_and_attrs(dev),
        Workload::DirsComeAndGo => dirs_come_and_go(dev),
    }
}

fn deep_renames(dev: Arc<RecordingDevice<MemDevice>>) -> Run {
    let fs = Fs::mount(dev.clone(), &MountOptions { read_only: false }).unwrap();
    let mut synced = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut parent = ROOT_INO;
    let mut path = String::new();
    for d in 0..15 {
        let n = format!("level{d}");
        parent = fs.mkdir(parent, n.as_bytes(), 0o755, &ctx()).unwrap().ino;
        path = if path.is_empty() {
            n
        } else {
            format!("{path}/{n}")
        };
        names.push(path.clone());
        for f in 0..20 {
            fs.mknod(
                parent,
                format!("f{f}").as_bytes(),
                libc::S_IFREG | 0o600,
                0,
                &ctx(),
            )
            .unwrap();
        }
        // Move half of the files to the root and back into a new name: cross-directory renames.
        for f in (0..20).step_by(2) {
            let tmp = format!("t{d}-{f}");
            fs.rename(
                parent,
                format!("f{f}").as_bytes(),
                ROOT_INO,
                tmp.as_bytes(),
                0,
            )
            .unwrap();
            fs.rename(
                ROOT_INO,
                tmp.as_bytes(),
                parent,
                format!("g{f}").as_bytes(),
                0,
            )
            .unwrap();
            names.push(format!("{path}/g{f}"));
        }
        if d % 3 == 2 {
            fs.sync().unwrap();
            synced.push((dev.events().len(), names.clone()));
        }
    }
    finish(fs, &dev, synced)
}

fn links_and_attrs(dev: Arc<RecordingDevice<MemDevice>>) -> Run {
    let fs = Fs::mount(dev.clone(), &MountOptions { read_only: false }).unwrap();
    let mut synced = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let a = fs.mkdir(ROOT_INO, b"a", 0o755, &ctx()).unwrap();
    let b = fs.mkdir(ROOT_INO, b"b", 0o755, &ctx()).unwrap();
    names.extend(["a".to_string(), "b".to_string()]);
    for i in 0..120 {
        let n = format!("file{i}");
        let f = fs
            .mknod(a.ino, n.as_bytes(), libc::S_IFREG | 0o644, 0, &ctx())
            .unwrap();
        fs.setattr(
            f.ino,
            &SetAttr {
                size: Some((i as u64 + 1) * 7000),
                ..Default::default()
            },
        )
        .unwrap();
        fs.link(f.ino, b.ino, format!("link{i}").as_bytes())
            .unwrap();
        fs.symlink(
            b.ino,
            format!("sym{i}").as_bytes(),
            format!("../a/{n}").repeat(1 + i % 3).as_bytes(),
            &ctx(),
        )
        .unwrap();
        fs.setxattr(f.ino, b"user.i", &vec![b'x'; 40 + (i % 5) * 300], 0)
            .unwrap();
        if i % 3 == 0 {
            fs.unlink(a.ino, n.as_bytes()).unwrap();
            fs.setattr(
                f.ino,
                &SetAttr {
                    size: Some(0),
                    ..Default::default()
                },
            )
            .unwrap();
        } else {
            names.push(format!("a/{n}"));
        }
        names.push(format!("b/link{i}"));
        names.push(format!("b/sym{i}"));
        if i % 20 == 19 {
            fs.sync().unwrap();
            synced.push((dev.events().len(), names.clone()));
        }
    }
    finish(fs, &dev, synced)
}

fn workload(dev: Arc<RecordingDevice<MemDevice>>) -> Run {
    let fs = Fs::mount(dev.clone(), &MountOptions { read_only: false }).unwrap();
    assert!(!fs.is_read_only());
    let mut synced = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let d = fs.mkdir(ROOT_INO, b"dir", 0o755, &ctx()).unwrap();
    names.push("dir".into());
    for round in 0..12 {
        for i in 0..60 {
            let n = format!("r{round}-file-with-long-name-{i}");
            fs.mknod(d.ino, n.as_bytes(), libc::S_IFREG | 0o644, 0, &ctx())
                .unwrap();
            names.push(format!("dir/{n}"));
        }
        for i in (0..60).step_by(4) {
            let n = format!("r{round}-file-with-long-name-{i}");
            fs.unlink(d.ino, n.as_bytes()).unwrap();
            names.retain(|x| *x != format!("dir/{n}"));
        }
        let sub = format!("sub{round}");
        let s = fs.mkdir(ROOT_INO, sub.as_bytes(), 0o700, &ctx()).unwrap();
        fs.rename(
            d.ino,
            format!("r{round}-file-with-long-name-1").as_bytes(),
            s.ino,
            b"moved",
            0,
        )
        .unwrap();
        names.retain(|x| *x != format!("dir/r{round}-file-with-long-name-1"));
        names.push(sub.clone());
        names.push(format!("{sub}/moved"));
        fs.setxattr(s.ino, b"user.round", format!("{round}").as_bytes(), 0)
            .unwrap();
        fs.sync().unwrap();
        synced.push((dev.events().len(), names.clone()));
    }
    finish(fs, &dev, synced)
}

/// True when the image's journal holds a live log (ext4 needs_recovery and a non-empty jbd2 log).
fn needs_replay(image: &[u8]) -> bool {
    let sb = crate::ondisk::superblock::Superblock::parse(&image[1024..2048]).unwrap();
    if !sb.has_incompat(crate::ondisk::superblock::incompat::RECOVER) {
        return false;
    }
    let dev = Arc::new(MemDevice::from_vec(image.to_vec()));
    let fs = Fs::mount(dev, &MountOptions { read_only: true });
    // Our mount refuses exactly the images whose log must be replayed.
    matches!(fs, Err(e) if e.contains("needs recovery"))
}

/// Let the kernel mount the image (replaying its journal) and unmount it.
fn kernel_replay(img: &Path) {
    let mnt = kernel_mount(img, "loop");
    kernel_umount(&mnt);
}

/// A 16 MiB image made by mke2fs with `opts` from an empty tree: its path and its bytes.
fn empty_image(dir: &Path, opts: &[&str]) -> (std::path::PathBuf, Vec<u8>) {
    let src = dir.join("empty");
    std::fs::create_dir_all(&src).unwrap();
    let img = dir.join("base.img");
    mkfs(&src, &img, opts, "16M");
    let base = std::fs::read(&img).unwrap();
    (img, base)
}

fn exists(fs: &Fs, path: &str) -> bool {
    let mut ino = ROOT_INO;
    for part in path.split('/') {
        match fs.lookup(ino, part.as_bytes()) {
            Ok(a) => ino = a.ino,
            Err(_) => return false,
        }
    }
    true
}

#[test]
fn journal_survives_crashes_at_every_flush_and_random_points() {
    let t = tempfile::tempdir().unwrap();
    for (kind, opts) in [
        (Workload::Churn, &["-t", "ext4", "-b", "4096"][..]),
        (
            Workload::Churn,
            &["-t", "ext4", "-b", "1024", "-O", "^metadata_csum"],
        ),
        (Workload::DeepRenames, &["-t", "ext4", "-b", "1024"]),
        (
            Workload::LinksAndAttrs,
            &["-t", "ext4", "-b", "4096", "-O", "^metadata_csum,^64bit"],
        ),
        // The smallest journal the kernel accepts (1,024 blocks): the log wraps and checkpoints.
        (
            Workload::DirsComeAndGo,
            &["-t", "ext4", "-b", "1024", "-J", "size=1"],
        ),
    ] {
        let (_, base) = empty_image(t.path(), opts);
        let dev = Arc::new(RecordingDevice::new(MemDevice::from_vec(base.clone())));
        let (log, synced, stats) = run_workload(kind, dev.clone());
        let stats = stats.expect("these images have a journal");
        if matches!(kind, Workload::DirsComeAndGo) {
            assert!(
                stats.wraps > 0 && stats.checkpoints > 1 && stats.revoke_records > 0,
                "the small journal must wrap, checkpoint and revoke: {stats:?}"
            );
        }
        let flushes: Vec<usize> = log
            .iter()
            .enumerate()
            .filter(|(_, e)| **e == Event::Flush)
            .map(|(i, _)| i + 1)
            .collect();
        let mut cuts = flushes.clone();
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..200 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            cuts.push((rng % (log.len() as u64 + 1)) as usize);
        }
        let cut_img = t.path().join("cut.img");
        let ours_img = t.path().join("ours.img");
        let mut replayed = 0;
        let mut kernel_replays = 0;
        for (n, &cut) in cuts.iter().enumerate() {
            let mut image = base.clone();
            replay(&mut image, &log, cut);
            std::fs::write(&cut_img, &image).unwrap();
            if kernel_replays < 3 && needs_replay(&image) {
                // The kernel's jbd2 must replay our log too.
                kernel_replays += 1;
                let k = t.path().join("kernel.img");
                std::fs::write(&k, &image).unwrap();
                kernel_replay(&k);
                let out = Command::new("e2fsck")
                    .args(["-fn"])
                    .arg(&k)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{kind:?} {opts:?}: after the kernel replayed cut {cut}:\n{}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
            replayed += e2fsck_journal_only(&cut_img) as usize;
            let out = Command::new("e2fsck")
                .args(["-fn"])
                .arg(&cut_img)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{kind:?} {opts:?}: cut {n} at event {cut} of {}: e2fsck -fn after replay:\n{}",
                log.len(),
                String::from_utf8_lossy(&out.stdout)
            );
            // Everything synced before the cut is there.
            // (A name the workload removes later may be gone already: commits also happen
            // between syncs, when a transaction fills up. Names still there at the end may not.)
            let last: &[String] = synced.last().map(|(_, n)| &n[..]).unwrap_or(&[]);
            let check_synced = |fs: &Fs, by: &str| {
                if let Some((_, names)) = synced.iter().rev().find(|(at, _)| *at <= cut) {
                    for name in names.iter().filter(|n| last.contains(n)) {
                        assert!(
                            exists(fs, name),
                            "{kind:?} {opts:?}: cut at {cut}: synced entry {name} is missing after {by}"
                        );
                    }
                }
            };
            check_synced(&mount(&cut_img), "e2fsck's replay");
            // Separately, our own replay of the same cut (a writable mount replays the log and
            // cleans up orphans; then a clean unmount).
            let fs = our_replay(image, &ours_img);
            e2fsck_clean(&ours_img);
            check_synced(&fs, "our replay");
        }
        assert!(
            replayed >= 5,
            "{kind:?} {opts:?}: only {replayed} of {} cuts left a journal to replay",
            cuts.len()
        );
    }
}

#[test]
fn a_failing_disk_aborts_to_read_only_without_damage() {
    let t = tempfile::tempdir().unwrap();
    let (_, base) = empty_image(t.path(), &["-t", "ext4", "-b", "4096"]);
    let dev = Arc::new(RecordingDevice::new(MemDevice::from_vec(base.clone())));
    let fs = Fs::mount(dev.clone(), &MountOptions { read_only: false }).unwrap();
    fs.mkdir(ROOT_INO, b"kept", 0o755, &ctx()).unwrap();
    fs.sync().unwrap();
    let durable = dev.events().len();
    fs.mkdir(ROOT_INO, b"lost", 0o755, &ctx()).unwrap();
    // The disk dies in the middle of the next commit.
    dev.fail_writes_after(2);
    assert_eq!(fs.sync(), Err(Errno::EIO));
    assert!(fs.is_read_only(), "an I/O error must abort to read-only");
    assert_eq!(
        fs.mkdir(ROOT_INO, b"after", 0o755, &ctx()),
        Err(Errno::EROFS)
    );
    assert_eq!(
        fs.sync(),
        Err(Errno::EIO),
        "fsync keeps reporting the failure"
    );
    assert_eq!(fs.shutdown(), Err(Errno::EIO));
    drop(fs);
    // What reached the disk is consistent and holds everything synced before the failure.
    let mut image = base;
    replay(&mut image, &dev.events(), usize::MAX);
    let cut_img = t.path().join("after.img");
    std::fs::write(&cut_img, &image).unwrap();
    e2fsck_journal_only(&cut_img);
    let out = Command::new("e2fsck")
        .args(["-fn"])
        .arg(&cut_img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let fs = mount(&cut_img);
    assert!(exists(&fs, "kept"));
    assert!(durable > 0);
}

/// Mount a crash image writable with our engine (replaying the journal and cleaning orphans),
/// unmount cleanly; e2fsck must then be satisfied.
fn our_replay(image: Vec<u8>, path: &Path) -> Fs {
    let fs = Fs::mount(
        Arc::new(MemDevice::from_vec(image)),
        &MountOptions { read_only: false },
    )
    .unwrap_or_else(|e| panic!("our mount of a crash image failed: {e}"));
    fs.shutdown().unwrap();
    std::fs::write(path, fs.dev_snapshot()).unwrap();
    fs
}

#[test]
fn our_mount_replays_the_journal_and_cleans_orphans() {
    let t = tempfile::tempdir().unwrap();
    let (img, base) = empty_image(t.path(), &["-t", "ext4", "-b", "1024"]);
    let dev = Arc::new(RecordingDevice::new(MemDevice::from_vec(base.clone())));
    let (log, synced, _) = workload(dev);
    // Every cut where a log was live: our mount must replay it to the same verdict as e2fsck.
    let out = t.path().join("ours.img");
    let mut ours = 0;
    for cut in 0..=log.len() {
        let mut image = base.clone();
        replay(&mut image, &log, cut);
        if !needs_replay(&image) {
            continue;
        }
        ours += 1;
        let fs = our_replay(image, &out);
        e2fsck_clean(&out);
        if let Some((_, names)) = synced.iter().rev().find(|(at, _)| *at <= cut) {
            for name in names {
                assert!(
                    exists(&fs, name),
                    "cut at {cut}: synced entry {name} is missing after our replay"
                );
            }
        }
        if ours >= 12 {
            break;
        }
    }
    assert!(ours >= 3, "only {ours} cuts needed a replay");
    // An open-unlinked file whose daemon died: the orphan list brings it back at the next mount.
    let dev = Arc::new(RecordingDevice::new(MemDevice::from_vec(base.clone())));
    let fs = Fs::mount(dev.clone(), &MountOptions { read_only: false }).unwrap();
    let f = fs
        .mknod(ROOT_INO, b"held", libc::S_IFREG | 0o644, 0, &ctx())
        .unwrap();
    fs.setattr(
        f.ino,
        &SetAttr {
            size: Some(1 << 20),
            ..Default::default()
        },
    )
    .unwrap();
    fs.unlink(ROOT_INO, b"held").unwrap();
    fs.sync().unwrap();
    let mut image = base;
    replay(&mut image, &dev.events(), usize::MAX);
    drop(fs);
    let fs = our_replay(image, &out);
    e2fsck_clean(&out);
    assert_eq!(fs.statfs().unwrap().ffree, {
        let clean = mount(&img);
        clean.statfs().unwrap().ffree
    });
}

#[test]
fn revoked_blocks_are_not_replayed_over_their_new_contents() {
    let t = tempfile::tempdir().unwrap();
    let (_, base) = empty_image(t.path(), &["-t", "ext4", "-b", "4096"]);
    let dev = Arc::new(RecordingDevice::new(MemDevice::from_vec(base.clone())));
    let fs = Fs::mount(dev.clone(), &MountOptions { read_only: false }).unwrap();
    fs.mkdir(ROOT_INO, b"kept", 0o755, &ctx()).unwrap();
    let d = fs.mkdir(ROOT_INO, b"gone", 0o755, &ctx()).unwrap();
    fs.sync().unwrap(); // logs the directory's block
    let dinode = fs.read_inode(d.ino).unwrap();
    let bmap::Target::Data { pblk, .. } = fs.map_block(d.ino, &dinode, 0).unwrap().target else {
        panic!("a new directory has a block");
    };
    fs.rmdir(ROOT_INO, b"gone").unwrap();
    fs.forget(d.ino, fs.lookup_count(d.ino));
    fs.sync().unwrap(); // frees it: a revoke record
    assert!(fs.journal_stats().unwrap().revoke_records >= 1);
    // The freed block gets a new owner that writes it directly (file data does), and the
    // daemon dies before a checkpoint: the log still holds the block's old directory contents.
    let new_data = vec![0xA5u8; 4096];
    dev.write_at(&new_data, pblk * 4096).unwrap();
    dev.flush().unwrap();
    let mut image = base;
    replay(&mut image, &dev.events(), usize::MAX);
    drop(fs);
    assert!(needs_replay(&image), "the log must still be live");
    let block_of = |path: &Path| {
        let all = std::fs::read(path).unwrap();
        all[(pblk * 4096) as usize..][..4096].to_vec()
    };
    // e2fsck's replay, the kernel's, and ours.
    let e = t.path().join("e2fsck.img");
    std::fs::write(&e, &image).unwrap();
    assert!(e2fsck_journal_only(&e));
    let k = t.path().join("kernel.img");
    std::fs::write(&k, &image).unwrap();
    kernel_replay(&k);
    let o = t.path().join("ours.img");
    let fs = our_replay(image, &o);
    assert!(exists(&fs, "kept"));
    assert!(!exists(&fs, "gone"));
    for p in [&e, &k, &o] {
        e2fsck_clean(p);
        assert!(
            block_of(p) == new_data,
            "{}: replay wrote the revoked block {pblk} over its new contents",
            p.display()
        );
    }
}

#[test]
fn use_after_an_unmount_is_journaled_and_replayed() {
    // A virtiofs guest unmounts (DESTROY: the image is left clean), mounts again and changes
    // things; the daemon then dies. The home superblock must say needs_recovery again, so e2fsck
    // and the kernel replay what was synced after the remount.
    let t = tempfile::tempdir().unwrap();
    let (_, base) = empty_image(t.path(), &["-t", "ext4", "-b", "4096"]);
    let dev = Arc::new(RecordingDevice::new(MemDevice::from_vec(base.clone())));
    let fs = Fs::mount(dev.clone(), &MountOptions { read_only: false }).unwrap();
    fs.mkdir(ROOT_INO, b"first", 0o755, &ctx()).unwrap();
    fs.shutdown().unwrap();
    fs.mkdir(ROOT_INO, b"second", 0o755, &ctx()).unwrap();
    fs.sync().unwrap();
    let mut image = base;
    replay(&mut image, &dev.events(), usize::MAX);
    drop(fs);
    assert!(
        needs_replay(&image),
        "the home superblock must say needs_recovery"
    );
    let e = t.path().join("e2fsck.img");
    std::fs::write(&e, &image).unwrap();
    assert!(e2fsck_journal_only(&e));
    e2fsck_clean(&e);
    let fs = mount(&e);
    assert!(exists(&fs, "first") && exists(&fs, "second"));
    let k = t.path().join("kernel.img");
    std::fs::write(&k, &image).unwrap();
    kernel_replay(&k);
    e2fsck_clean(&k);
    assert!(exists(&mount(&k), "second"));
}
