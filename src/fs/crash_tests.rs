//! Crash tests: a workload runs on a recording device, and the image is rebuilt in many crash
//! states a real disk could be left in (`blockdev::record::CrashState`): everything before the
//! last flush before the cut, plus any subset of the writes issued since. In every state our
//! replay must leave a file system that passes the in-process checks (`crash_test_support`) and holds
//! every operation completed before the last finished sync; in a sample of the states, e2fsck's
//! replay and ours must also leave an image `e2fsck -fn` finds clean, and the kernel replays a
//! few.

use super::crash_test_support::*;
use super::testutil::*;
use super::*;
use crate::blockdev::MemDevice;
use crate::blockdev::record::{
    CrashModel, CrashRng, CrashState, Event, RecordingDevice, durable_prefix, replay,
};
use crate::journal::commit::{JournalStats, Mutation};
use std::collections::HashSet;
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
fn dirs_come_and_go(dev: Arc<RecordingDevice<MemDevice>>, m: Mutation) -> Run {
    let fs = mount_mutated(&dev, m);
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

fn run_workload(kind: Workload, dev: Arc<RecordingDevice<MemDevice>>, m: Mutation) -> Run {
    match kind {
        Workload::Churn => workload(dev, m),
        Workload::DeepRenames => deep_renames(dev, m),
        Workload::LinksAndAttrs => links_and_attrs(dev, m),
        Workload::DirsComeAndGo => dirs_come_and_go(dev, m),
    }
}

/// Mount writable, with a test-only fault in the journal's write protocol (or none).
fn mount_mutated(dev: &Arc<RecordingDevice<MemDevice>>, m: Mutation) -> Fs {
    let fs = Fs::mount(dev.clone(), &MountOptions::rw()).unwrap();
    if let Some(j) = &fs.journal {
        j.set_mutation(m);
    }
    fs
}

fn deep_renames(dev: Arc<RecordingDevice<MemDevice>>, m: Mutation) -> Run {
    let fs = mount_mutated(&dev, m);
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

fn links_and_attrs(dev: Arc<RecordingDevice<MemDevice>>, m: Mutation) -> Run {
    let fs = mount_mutated(&dev, m);
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

fn workload(dev: Arc<RecordingDevice<MemDevice>>, m: Mutation) -> Run {
    let fs = mount_mutated(&dev, m);
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
    let fs = Fs::mount(dev, &MountOptions::ro());
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

/// The image kinds and workloads the crash tests cut.
const CASES: [(Workload, &[&str]); 5] = [
    (Workload::Churn, &["-t", "ext4", "-b", "4096"]),
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
];

/// How many crash states a case builds, and how many of them go through e2fsck.
///
/// The cost: building a state is a 16 MiB copy plus the pending writes; the in-process check
/// (our replay in memory, a clean unmount, `check_tree_and_blocks`, the synced names) takes a
/// few milliseconds; e2fsck's replay plus two `e2fsck -fn` runs and two image files take tens of
/// milliseconds. So every state gets the in-process check, and a spread-out sample of
/// `E2FSCK_STATES` gets e2fsck as well (its replay, its verdict on our replay), and the kernel
/// replays `KERNEL_STATES` of those.
struct Budget {
    /// Random landed-subsets for the window just before each flush (where the most writes are
    /// pending: a commit's descriptors and images, a checkpoint's home writes).
    per_flush: usize,
    /// Windows that write the journal superblock (a checkpoint marking the log empty, the first
    /// commit into an empty log) get this many times `per_flush`: the log's tail and head move
    /// there, and few windows do it.
    jsb_factor: usize,
    /// Random cuts anywhere in the log, one random subset each.
    random_cuts: usize,
    e2fsck_states: usize,
    kernel_states: usize,
}

const BUDGET: Budget = Budget {
    per_flush: 32,
    jsb_factor: 4,
    random_cuts: 1000,
    e2fsck_states: 100,
    kernel_states: 3,
};

/// A recorded workload: the starting image, the log, the sync points, and what the journal did.
struct Recorded {
    base: Vec<u8>,
    log: Vec<Event>,
    synced: Vec<(usize, Vec<String>)>,
    stats: Option<JournalStats>,
    /// Byte offset of the journal superblock.
    jsb_offset: u64,
}

fn record(dir: &Path, kind: Workload, opts: &[&str], m: Mutation) -> Recorded {
    // Free space holds a marker, as a used disk holds old data: nothing the workload allocates
    // may count on it being zero, and no file may show it (`files_with_marker`).
    let (img, _) = empty_image(dir, opts);
    assert!(fill_free_blocks(&img) > 0);
    let base = std::fs::read(&img).unwrap();
    let dev = Arc::new(RecordingDevice::new(MemDevice::from_vec(base.clone())));
    let (log, synced, stats) = run_workload(kind, dev, m);
    let jsb_offset = {
        let fs = replay_in_memory(base.clone()).unwrap();
        let j = fs.journal.as_ref().expect("these images have a journal");
        j.block_map()[0] * fs.block_size as u64
    };
    Recorded {
        base,
        log,
        synced,
        stats,
        jsb_offset,
    }
}

/// The crash states of a log (deduplicated, in order of their durable prefix): for every flush,
/// the prefix just before it and `per_flush` random subsets of its pending window (times
/// `jsb_factor` when the window writes the bytes at `jsb_offset`); then
/// `random_cuts` random cuts with a random subset each; and the whole log.
fn crash_states(log: &[Event], jsb_offset: u64, seed: u64, b: &Budget) -> Vec<CrashState> {
    let mut rng = CrashRng::new(seed);
    let model = CrashModel::default();
    let mut states = Vec::new();
    for (i, e) in log.iter().enumerate() {
        if *e == Event::Flush {
            let window = &log[durable_prefix(log, i)..i];
            let hot = window
                .iter()
                .any(|e| matches!(e, Event::Write { offset, .. } if *offset == jsb_offset));
            states.push(CrashState::prefix(log, i));
            for _ in 0..b.per_flush * if hot { b.jsb_factor } else { 1 } {
                states.push(CrashState::random(log, i, &mut rng, model));
            }
        }
    }
    for _ in 0..b.random_cuts {
        let cut = rng.below(log.len() as u64 + 1) as usize;
        states.push(CrashState::random(log, cut, &mut rng, model));
    }
    states.push(CrashState::prefix(log, log.len()));
    let mut seen = HashSet::new();
    states.retain(|s| seen.insert((s.durable, s.landed.clone())));
    states.sort_by_key(|s| s.durable);
    states
}

/// The names that must exist in a crash state at `cut`: those of the last sync that returned
/// before the cut. (A name the workload removes later may be gone already: commits also happen
/// between syncs, when a transaction fills up. Names still there at the end may not.)
fn must_exist(synced: &[(usize, Vec<String>)], cut: usize) -> Vec<&String> {
    let last: &[String] = synced.last().map(|(_, n)| &n[..]).unwrap_or(&[]);
    synced
        .iter()
        .rev()
        .find(|(at, _)| *at <= cut)
        .map(|(_, names)| names.iter().filter(|n| last.contains(n)).collect())
        .unwrap_or_default()
}

fn missing_names(fs: &Fs, names: &[&String]) -> std::result::Result<(), String> {
    match names.iter().find(|n| !exists(fs, n)) {
        Some(n) => Err(format!("synced entry {n} is missing")),
        None => Ok(()),
    }
}

/// The in-process check of one crash state: our replay in memory, the tree and the counts, the
/// synced names. A panic of the engine on the crash image counts as a failure too.
fn check_in_process(
    image: Vec<u8>,
    names: &[&String],
    overhead: i64,
) -> std::result::Result<(), String> {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let fs = replay_in_memory(image)?;
        check_tree_and_blocks(&fs, overhead)?;
        missing_names(&fs, names)
    }));
    r.unwrap_or_else(|p| {
        Err(format!(
            "panicked: {}",
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        ))
    })
}

/// What a run over the crash states of one log found.
#[derive(Debug, Default)]
struct Outcome {
    states: usize,
    /// States where some pending write did not land (not a prefix of the log).
    not_prefix: usize,
    e2fsck_checked: usize,
    e2fsck_replayed: usize,
    kernel_replayed: usize,
    /// The first state that failed a check, and why.
    failure: Option<String>,
}

/// Build every crash state of `rec` and check it: in-process always; with e2fsck (and the
/// kernel) for a sample when `dir` is given. Stops at the first failure.
fn check_states(rec: &Recorded, states: &[CrashState], b: &Budget, dir: Option<&Path>) -> Outcome {
    let overhead = {
        let fs = replay_in_memory(rec.base.clone()).unwrap();
        let t = check_tree(&fs).expect("the starting image is consistent");
        overhead_blocks(&fs, &t)
    };
    let log = &rec.log;
    let mut out = Outcome::default();
    let stride = (states.len() / b.e2fsck_states.max(1)).max(1);
    // The image at the current durable prefix, advanced as the (sorted) states go.
    let mut durable_img = rec.base.clone();
    let mut durable_at = 0;
    for (n, st) in states.iter().enumerate() {
        replay_range(&mut durable_img, log, durable_at, st.durable);
        durable_at = st.durable;
        let mut image = durable_img.clone();
        st.apply_pending(&mut image, log);
        out.states += 1;
        out.not_prefix += st.differs_from_prefix(log) as usize;
        let names = must_exist(&rec.synced, st.cut);
        let what = || {
            format!(
                "state {n} (cut {} of {} events, durable {}, {} of {} pending writes landed: {:?})",
                st.cut,
                log.len(),
                st.durable,
                st.landed.len(),
                st.pending(log),
                st.landed.iter().map(|l| l.index).collect::<Vec<_>>()
            )
        };
        let sampled = dir.filter(|_| n % stride == 0 && out.e2fsck_checked < b.e2fsck_states);
        if let Some(dir) = sampled {
            out.e2fsck_checked += 1;
            if let Err(e) = check_with_e2fsck(dir, &image, &names, b, &mut out) {
                out.failure = Some(format!("{}: {e}", what()));
                return out;
            }
        }
        if let Err(e) = check_in_process(image, &names, overhead) {
            out.failure = Some(format!("{}: {e}", what()));
            return out;
        }
    }
    out
}

/// Apply the events `from..to` of `log` to `image`.
fn replay_range(image: &mut [u8], log: &[Event], from: usize, to: usize) {
    for e in &log[from..to] {
        if let Event::Write { offset, data } = e {
            image[*offset as usize..][..data.len()].copy_from_slice(data);
        }
    }
}

/// `e2fsck -fn` on `img`: Ok when clean.
fn e2fsck_verdict(img: &Path) -> std::result::Result<(), String> {
    let out = Command::new("e2fsck")
        .args(["-fn"])
        .arg(img)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// e2fsck's replay of the state, then its verdict and the synced names; our replay, then
/// e2fsck's verdict on it; and, for the first few states with a live log, the kernel's replay.
fn check_with_e2fsck(
    dir: &Path,
    image: &[u8],
    names: &[&String],
    b: &Budget,
    out: &mut Outcome,
) -> std::result::Result<(), String> {
    let cut_img = dir.join("cut.img");
    std::fs::write(&cut_img, image).unwrap();
    if out.kernel_replayed < b.kernel_states && needs_replay(image) {
        // The kernel's jbd2 must replay our log too.
        out.kernel_replayed += 1;
        let k = dir.join("kernel.img");
        std::fs::write(&k, image).unwrap();
        kernel_replay(&k);
        e2fsck_verdict(&k).map_err(|e| format!("e2fsck -fn after the kernel's replay:\n{e}"))?;
    }
    out.e2fsck_replayed += e2fsck_journal_only(&cut_img) as usize;
    e2fsck_verdict(&cut_img).map_err(|e| format!("e2fsck -fn after e2fsck's replay:\n{e}"))?;
    missing_names(&mount(&cut_img), names).map_err(|e| format!("after e2fsck's replay: {e}"))?;
    let ours = dir.join("ours.img");
    let fs = replay_in_memory(image.to_vec())?;
    // Stale data: only here, as reading every (sparse) file of every state costs too much.
    let t = check_tree(&fs)?;
    let stale = files_with_marker(&fs, &t)?;
    if !stale.is_empty() {
        return Err(format!(
            "files show free-space markers (path, offset, block): {stale:?}"
        ));
    }
    std::fs::write(&ours, fs.dev_snapshot()).unwrap();
    e2fsck_verdict(&ours).map_err(|e| format!("e2fsck -fn after our replay:\n{e}"))
}

/// One case of the crash tests: record, build the states, check them all.
fn crash_case(case: usize) {
    let (kind, opts) = CASES[case];
    let t = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let rec = record(t.path(), kind, opts, Mutation::None);
    let stats = rec.stats.expect("these images have a journal");
    if matches!(kind, Workload::DirsComeAndGo) {
        assert!(
            stats.wraps > 0 && stats.checkpoints > 1 && stats.revoke_records > 0,
            "the small journal must wrap, checkpoint and revoke: {stats:?}"
        );
    }
    let states = crash_states(&rec.log, rec.jsb_offset, 0x5EED_0000 + case as u64, &BUDGET);
    let out = check_states(&rec, &states, &BUDGET, Some(t.path()));
    eprintln!(
        "crash case {case} {kind:?} {opts:?}: {} events, {} flushes; {} crash states ({} not a \
         prefix of the log) checked in-process, {} with e2fsck ({} replayed by e2fsck, {} by the \
         kernel), in {:.1?}",
        rec.log.len(),
        rec.log.iter().filter(|e| **e == Event::Flush).count(),
        out.states,
        out.not_prefix,
        out.e2fsck_checked,
        out.e2fsck_replayed,
        out.kernel_replayed,
        started.elapsed()
    );
    if let Some(f) = out.failure {
        panic!("{kind:?} {opts:?}: {f}");
    }
    assert!(
        out.not_prefix * 2 >= out.states,
        "{kind:?}: only {} of {} states are not prefixes of the log",
        out.not_prefix,
        out.states
    );
    assert!(
        out.e2fsck_replayed >= 5,
        "{kind:?} {opts:?}: only {} of {} sampled states left a journal to replay",
        out.e2fsck_replayed,
        out.e2fsck_checked
    );
}

#[test]
fn crash_states_churn_4k() {
    crash_case(0);
}

#[test]
fn crash_states_churn_1k_no_csum() {
    crash_case(1);
}

#[test]
fn crash_states_deep_renames_1k() {
    crash_case(2);
}

#[test]
fn crash_states_links_and_attrs_4k_no_csum_no_64bit() {
    crash_case(3);
}

#[test]
fn crash_states_small_journal_wraps() {
    crash_case(4);
}

/// Record `case` with the journal fault `m` on and check its crash states in-process: the
/// number of states checked up to the first failure, and the failure (None: the fault went
/// unnoticed).
fn find_mutation(case: usize, m: Mutation) -> (usize, Option<String>) {
    let (kind, opts) = CASES[case];
    let t = tempfile::tempdir().unwrap();
    let rec = record(t.path(), kind, opts, m);
    let states = crash_states(&rec.log, rec.jsb_offset, 0x5EED_0000 + case as u64, &BUDGET);
    let out = check_states(&rec, &states, &BUDGET, None);
    (out.states, out.failure)
}

/// The crash states catch a commit block that may reach the disk before the blocks it seals
/// (prefix cuts alone never do: in log order the commit block comes last). With a checksummed
/// journal (v3) replay refuses the transaction; without, it writes stale log blocks home.
#[test]
fn crash_states_catch_a_missing_flush_before_the_commit_block() {
    for case in [0, 1] {
        let (n, failure) = find_mutation(case, Mutation::NoFlushBeforeCommitBlock);
        let f = failure.unwrap_or_else(|| {
            panic!("case {case}: {n} crash states and none noticed the missing flush")
        });
        eprintln!("case {case}: the missing pre-commit flush fails state {n}: {f}");
    }
}

/// The crash states catch a sync that returns before its commit block is durable: a synced
/// name is missing.
#[test]
fn crash_states_catch_a_missing_flush_after_the_commit_block() {
    let (n, failure) = find_mutation(0, Mutation::NoFlushAfterCommitBlock);
    let f =
        failure.unwrap_or_else(|| panic!("{n} crash states and none noticed the missing flush"));
    assert!(f.contains("missing"), "{f}");
    eprintln!("the missing post-commit flush fails state {n}: {f}");
}

/// The crash states catch a checkpoint that marks the log empty without a flush: when that
/// write and the next commit's journal superblock update are both lost, recovery starts at the
/// old tail and runs from the old log into the new transaction that overwrote the ring. It takes
/// the wrapping log of the small journal and the extra subsets of the windows that write the
/// journal superblock (`Budget::jsb_factor`): about 1 state in 150 of that case fails.
#[test]
fn crash_states_catch_a_missing_flush_after_the_checkpoint() {
    let (n, failure) = find_mutation(4, Mutation::NoFlushAfterCheckpoint);
    let f =
        failure.unwrap_or_else(|| panic!("{n} crash states and none noticed the missing flush"));
    eprintln!("the missing checkpoint flush fails state {n}: {f}");
}

#[test]
fn a_failing_disk_aborts_to_read_only_without_damage() {
    let t = tempfile::tempdir().unwrap();
    let (_, base) = empty_image(t.path(), &["-t", "ext4", "-b", "4096"]);
    let dev = Arc::new(RecordingDevice::new(MemDevice::from_vec(base.clone())));
    let fs = Fs::mount(dev.clone(), &MountOptions::rw()).unwrap();
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
    let fs = Fs::mount(Arc::new(MemDevice::from_vec(image)), &MountOptions::rw())
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
    let (log, synced, _) = workload(dev, Mutation::None);
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
    let fs = Fs::mount(dev.clone(), &MountOptions::rw()).unwrap();
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
    let fs = Fs::mount(dev.clone(), &MountOptions::rw()).unwrap();
    fs.mkdir(ROOT_INO, b"kept", 0o755, &ctx()).unwrap();
    let d = fs.mkdir(ROOT_INO, b"gone", 0o755, &ctx()).unwrap();
    fs.sync().unwrap(); // logs the directory's block
    let dinode = fs.read_inode(d.ino).unwrap();
    let Some(pblk) = fs.map_block(d.ino, &dinode, 0).unwrap().status.pblk() else {
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
    let fs = Fs::mount(dev.clone(), &MountOptions::rw()).unwrap();
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
