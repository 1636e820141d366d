//! The real daemon killed with SIGKILL in the middle of a namespace workload, and of a file data
//! workload, on a journaled image: whatever was fsynced before the kill must be there after replay — by e2fsck, by the
//! kernel, and by our next mount — and each replay leaves an image `e2fsck -fn` finds clean.
//!
//! A killed process loses nothing it wrote (the writes sit in the host's page cache), so this
//! models a daemon crash, not a power cut: the image here is always a prefix of what the daemon
//! wrote. Lost and reordered writes since the last flush are the engine's crash tests' job
//! (`src/fs/crash_tests.rs`, on the `CrashState` model of `src/blockdev/record.rs`).

mod common;

use common::*;
use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Names (relative paths) known to exist, and the set that was fsynced last.
#[derive(Default)]
struct Progress {
    made: BTreeSet<String>,
    synced: BTreeSet<String>,
    syncs: usize,
}

/// Creates directories, files, symlinks, hard links and xattrs until an operation fails (the
/// daemon died); fsyncs a directory every few steps and records what was durable then.
fn workload(root: &Path, progress: &Mutex<Progress>) {
    let mut rng = Rng::new(0x5EED);
    for step in 0.. {
        let d = format!("dir{}", step / 40);
        let r: std::io::Result<Vec<String>> = (|| {
            let dp = root.join(&d);
            let mut new = Vec::new();
            if step % 40 == 0 {
                fs::create_dir(&dp)?;
                new.push(d.clone());
            }
            let f = format!("{d}/file-{step}");
            fs::File::create(root.join(&f))?;
            new.push(f.clone());
            match rng.below(4) {
                0 => {
                    let l = format!("{d}/link-{step}");
                    fs::hard_link(root.join(&f), root.join(&l))?;
                    new.push(l);
                }
                1 => {
                    let s = format!("{d}/sym-{step}");
                    std::os::unix::fs::symlink(format!("file-{step}"), root.join(&s))?;
                    new.push(s);
                }
                2 => {
                    let n = format!("{d}/renamed-{step}");
                    fs::rename(root.join(&f), root.join(&n))?;
                    new.retain(|x| *x != f);
                    new.push(n);
                }
                _ => try_set_xattr(&root.join(&f), "user.step", step.to_string().as_bytes())?,
            }
            Ok(new)
        })();
        let Ok(new) = r else { return };
        let mut p = progress.lock().unwrap();
        p.made.extend(new);
        drop(p);
        if step % 25 == 24 {
            // FSYNCDIR: the daemon commits everything so far.
            let Ok(dir) = fs::File::open(root.join(&d)) else {
                return;
            };
            let made = progress.lock().unwrap().made.clone();
            if dir.sync_all().is_err() {
                return;
            }
            let mut p = progress.lock().unwrap();
            p.synced = made;
            p.syncs += 1;
        }
    }
}

fn names_missing(root: &Path, names: &BTreeSet<String>) -> Vec<String> {
    names
        .iter()
        .filter(|n| fs::symlink_metadata(root.join(n)).is_err())
        .cloned()
        .collect()
}

#[test]
fn a_killed_daemon_loses_nothing_that_was_fsynced() {
    require_root_and_tools();
    for (round, kill_after_ms) in [150u64, 400, 900].into_iter().enumerate() {
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("img");
        run(Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-b", "4096"])
            .arg(&img)
            .arg("64M"));
        let mnt = tmp.path().join("mnt");
        let mut m = Mount::start(&img, &mnt, &["--commit-interval", "1"]);
        let progress = Arc::new(Mutex::new(Progress::default()));
        let worker = {
            let (root, progress) = (mnt.clone(), progress.clone());
            std::thread::spawn(move || workload(&root, &progress))
        };
        std::thread::sleep(Duration::from_millis(kill_after_ms));
        m.kill();
        worker.join().unwrap();
        drop(m);
        let p = progress.lock().unwrap();
        assert!(
            p.syncs > 0,
            "round {round}: no fsync finished before the kill ({} names made)",
            p.made.len()
        );
        let image = fs::read(&img).unwrap();
        eprintln!(
            "round {round}: killed after {kill_after_ms} ms: {} names made, {} fsynced ({} fsyncs)",
            p.made.len(),
            p.synced.len(),
            p.syncs
        );
        check_replays(tmp.path(), &image, round, &|root| {
            names_missing(root, &p.synced)
        });
    }
}

/// Replay a killed daemon's image three ways — e2fsck, the kernel, our next mount — and check
/// each: `e2fsck -fn` clean, and `lost(root)` (run on a mount of the result) finds nothing.
fn check_replays(tmp: &Path, image: &[u8], round: usize, lost: &dyn Fn(&Path) -> Vec<String>) {
    // e2fsck replays the log; then the file system is clean and holds everything synced.
    let e = tmp.join("e2fsck.img");
    fs::write(&e, image).unwrap();
    let out = run_any(
        Command::new("e2fsck")
            .args(["-fy", "-E", "journal_only"])
            .arg(&e),
    );
    assert!(
        out.status.code().is_some_and(|c| c <= 1),
        "round {round}: e2fsck replay: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("recovering journal"),
        "round {round}: the killed daemon left no log to replay:\n{said}"
    );
    assert_fsck_clean(&e);
    let km = KernelMount::start(&e, &tmp.join("k-e2fsck"));
    let missing = lost(&km.dir);
    km.unmount();
    assert!(
        missing.is_empty(),
        "round {round}: after e2fsck's replay, lost: {:?}",
        &missing[..missing.len().min(5)]
    );

    // The kernel replays it itself (a read-write mount), then e2fsck agrees.
    let k = tmp.join("kernel.img");
    fs::write(&k, image).unwrap();
    let kdir = tmp.join("k-rw");
    fs::create_dir_all(&kdir).unwrap();
    mount_loop(&k, &kdir, "loop");
    let missing = lost(&kdir);
    run(Command::new("umount").arg(&kdir));
    assert!(
        missing.is_empty(),
        "round {round}: kernel replay lost {:?}",
        &missing[..missing.len().min(5)]
    );
    assert_fsck_clean(&k);

    // Our next mount replays it, and serves everything synced.
    let o = tmp.join("ours.img");
    fs::write(&o, image).unwrap();
    let om = Mount::start(&o, &tmp.join("ours"), &[]);
    let missing = lost(&om.dir);
    om.unmount();
    assert!(
        missing.is_empty(),
        "round {round}: our replay lost {:?}",
        &missing[..missing.len().min(5)]
    );
    assert_fsck_clean(&o);
}

/// Deterministic content of data file `step`.
fn file_content(step: u64) -> Vec<u8> {
    let mut rng = Rng::new(step);
    let mut v = vec![0u8; (rng.below(300_000) + rng.below(2) * 1_000_000) as usize];
    rng.fill(&mut v);
    v
}

/// Files written (some large, some rewritten in the middle) until an operation fails; every
/// third one is fsynced and recorded.
fn data_workload(root: &Path, synced: &Mutex<Vec<(String, u64)>>) {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    for step in 0u64.. {
        let name = format!("data-{step}");
        let r: std::io::Result<()> = (|| {
            let mut f = fs::File::create(root.join(&name))?;
            let c = file_content(step);
            f.write_all(&c)?;
            if c.len() > 8192 {
                // An overwrite in place of what was just written.
                f.write_all_at(&c[4000..8000], 4000)?;
            }
            if step % 3 == 2 {
                f.sync_all()?;
                synced.lock().unwrap().push((name.clone(), step));
            }
            Ok(())
        })();
        if r.is_err() {
            return;
        }
    }
}

#[test]
fn a_killed_daemon_loses_no_fsynced_byte() {
    require_root_and_tools();
    for (round, kill_after_ms) in [300u64, 1200].into_iter().enumerate() {
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("img");
        run(Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-b", "4096"])
            .arg(&img)
            .arg("256M"));
        let mnt = tmp.path().join("mnt");
        let mut m = Mount::start(&img, &mnt, &["--commit-interval", "1"]);
        let synced = Arc::new(Mutex::new(Vec::new()));
        let worker = {
            let (root, synced) = (mnt.clone(), synced.clone());
            std::thread::spawn(move || data_workload(&root, &synced))
        };
        std::thread::sleep(Duration::from_millis(kill_after_ms));
        m.kill();
        worker.join().unwrap();
        drop(m);
        let synced = synced.lock().unwrap().clone();
        assert!(
            !synced.is_empty(),
            "round {round}: no fsync finished before the kill"
        );
        eprintln!(
            "round {round}: {} files fsynced before the kill",
            synced.len()
        );
        let image = fs::read(&img).unwrap();
        check_replays(tmp.path(), &image, round, &|root| {
            synced
                .iter()
                .filter(|(name, step)| fs::read(root.join(name)).ok() != Some(file_content(*step)))
                .map(|(name, _)| name.clone())
                .collect()
        });
    }
}
