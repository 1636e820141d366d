//! The data path against an in-memory model: random unaligned writes, appends, truncates,
//! every fallocate mode ext4 supports (collapse and insert range included, and the refused
//! cases with the kernel's errno), copy_file_range, fsync and read-backs, on several image
//! layouts and with a small cache (so eviction, throttling and NoSlab paths run). At the end the
//! image is unmounted, `e2fsck -fn` must find it clean, and the kernel's ext4 must read every
//! file exactly as the model has it.

use crate::errno::Errno;
use crate::fs::testutil::{FAIL_MARK, FailMarked, ctx, kernel_mount, kernel_umount};
use crate::fs::{
    FALLOC_FL_COLLAPSE_RANGE, FALLOC_FL_INSERT_RANGE, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE, Fs, MountOptions, ROOT_INO,
};
use crate::test_support::e2fsck_clean;
use std::path::Path;
use std::sync::Arc;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

pub(super) use crate::fs::testutil::mkfs_blank as mkfs;

fn mount(img: &Path, cache: u64) -> Fs {
    let dev = crate::blockdev::FileDevice::open(img, false).unwrap();
    let fs = Fs::mount_with_cache(Arc::new(dev), &MountOptions::rw(), cache).unwrap();
    assert!(!fs.is_read_only());
    fs
}

/// Apply a write to the model.
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

fn pattern(rng: &mut Rng, n: usize) -> Vec<u8> {
    let seed = rng.next();
    (0..n)
        .map(|i| (seed.wrapping_mul(i as u64 + 1) >> 24) as u8 | 1)
        .collect()
}

/// Run `ops` random operations over `nfiles` files; returns the model.
fn random_ops(fs: &Fs, seed: u64, ops: usize, nfiles: usize, extents: bool) -> Vec<(u64, Vec<u8>)> {
    let mut rng = Rng(seed | 1);
    let mut files: Vec<(u64, Vec<u8>)> = (0..nfiles)
        .map(|i| {
            let a = fs
                .mknod(ROOT_INO, format!("f{i}").as_bytes(), 0o100644, 0, &ctx())
                .unwrap();
            (a.ino, Vec::new())
        })
        .collect();
    let max = 3 << 20;
    let mut history: Vec<String> = Vec::new();
    // Successful collapses, inserts and whole-block punches.
    let mut done = [0usize; 3];
    let first_diff = |a: &[u8], b: &[u8]| {
        a.iter()
            .zip(b.iter())
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len()))
    };
    for step in 0..ops {
        let f = rng.below(nfiles as u64) as usize;
        let (ino, model) = &mut files[f];
        let ino = *ino;
        let size = model.len() as u64;
        let what = rng.below(100);
        let ctxs = format!(
            "seed {seed} step {step} ino {ino} size {size}; last ops: {:?}",
            &history[history.len().saturating_sub(12)..]
        );
        match what {
            0..=39 => {
                let off = if rng.below(4) == 0 {
                    size
                } else {
                    rng.below(max)
                };
                let cap = if rng.below(5) == 0 { 300_000 } else { 9000 };
                let len = 1 + rng.below(cap) as usize;
                let data = pattern(&mut rng, len);
                let n = fs
                    .write(ino, off, &data, 0)
                    .unwrap_or_else(|e| panic!("{ctxs}: write {off}+{len}: {e}"));
                assert_eq!(n as usize, len, "{ctxs}: short write");
                model_write(model, off, &data);
                history.push(format!("{ino}: write {off}+{len}"));
            }
            40..=54 => {
                let off = rng.below(size + 5000);
                let len = rng.below(200_000) as u32;
                let got = fs.read(ino, 0, off, len).unwrap();
                let end = (off + len as u64).min(size);
                let want = if off < size {
                    &model[off as usize..end as usize]
                } else {
                    &[][..]
                };
                assert!(
                    got == want,
                    "{ctxs}: read {off}+{len} differs from the model at +{}",
                    first_diff(&got, want)
                );
            }
            55..=62 => {
                let cap = if rng.below(2) == 0 { size + 1 } else { max };
                let new = rng.below(cap);
                fs.setattr(
                    ino,
                    &crate::fs::SetAttr {
                        size: Some(new),
                        ..Default::default()
                    },
                )
                .unwrap_or_else(|e| panic!("{ctxs}: truncate to {new}: {e}"));
                model.resize(new as usize, 0);
                history.push(format!("{ino}: truncate {new}"));
            }
            63..=80 => {
                let bs = fs.block_size() as u64;
                let kind = rng.below(12);
                let (off, len, mode) = match kind {
                    0..=6 => (
                        rng.below(max),
                        1 + rng.below(300_000),
                        [
                            0,
                            FALLOC_FL_KEEP_SIZE,
                            FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                            FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                            FALLOC_FL_ZERO_RANGE,
                            FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
                            FALLOC_FL_ZERO_RANGE,
                        ][kind as usize],
                    ),
                    7..=10 => {
                        let mode = if kind < 9 {
                            FALLOC_FL_COLLAPSE_RANGE
                        } else {
                            FALLOC_FL_INSERT_RANGE
                        };
                        if rng.below(6) == 0 {
                            // Anything: mostly refused (unaligned, past EOF).
                            (rng.below(size + 3 * bs), 1 + rng.below(64 * bs), mode)
                        } else {
                            let (o, n) = (rng.below(size / bs + 1), 1 + rng.below(48));
                            (o * bs, n * bs, mode)
                        }
                    }
                    _ => (
                        rng.below(size + 1),
                        1 + rng.below(8 * bs),
                        // Combinations the kernel refuses.
                        [
                            FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_KEEP_SIZE,
                            FALLOC_FL_INSERT_RANGE | FALLOC_FL_KEEP_SIZE,
                            FALLOC_FL_PUNCH_HOLE,
                            FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
                            FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE,
                        ][rng.below(5) as usize],
                    ),
                };
                let shift = mode & (FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE);
                let aligned = off % bs == 0 && len % bs == 0;
                let want = if kind == 11 || (!extents && mode & FALLOC_FL_PUNCH_HOLE == 0) {
                    Err(Errno::EOPNOTSUPP)
                } else if (shift == FALLOC_FL_COLLAPSE_RANGE && (!aligned || off + len >= size))
                    || (shift == FALLOC_FL_INSERT_RANGE && (!aligned || off >= size))
                {
                    Err(Errno::EINVAL)
                } else {
                    Ok(())
                };
                let r = fs.fallocate(ino, off, len, mode);
                if want.is_err() {
                    assert_eq!(r, want, "{ctxs}: fallocate {off}+{len} mode {mode:#x}");
                    continue;
                }
                r.unwrap_or_else(|e| panic!("{ctxs}: fallocate {off}+{len} mode {mode:#x}: {e}"));
                history.push(format!("{ino}: fallocate {off}+{len} mode {mode:#x}"));
                let end = off + len;
                if shift == FALLOC_FL_COLLAPSE_RANGE {
                    model.drain(off as usize..end as usize);
                    done[0] += 1;
                    continue;
                }
                if shift == FALLOC_FL_INSERT_RANGE {
                    done[1] += 1;
                    model.splice(
                        off as usize..off as usize,
                        std::iter::repeat_n(0, len as usize),
                    );
                    continue;
                }
                if mode & FALLOC_FL_PUNCH_HOLE != 0 && off.div_ceil(bs) < end.min(size) / bs {
                    done[2] += 1;
                }
                if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE) != 0 {
                    let zend = end.min(model.len() as u64);
                    if off < zend {
                        model[off as usize..zend as usize].fill(0);
                    }
                }
                if mode & FALLOC_FL_KEEP_SIZE == 0 && end > model.len() as u64 {
                    model.resize(end as usize, 0);
                }
            }
            81..=86 => {
                let g = rng.below(nfiles as u64) as usize;
                let src_size = files[g].1.len() as u64;
                let off_in = rng.below(src_size + 1);
                let len = rng.below(200_000);
                let off_out = rng.below(max);
                let (ino_in, ino_out) = (files[g].0, files[f].0);
                let r = fs.copy_file_range(ino_in, off_in, ino_out, off_out, len);
                if ino_in == ino_out && off_in < off_out + len && off_out < off_in + len {
                    assert_eq!(r, Err(Errno::EINVAL));
                    continue;
                }
                let n = r.unwrap_or_else(|e| panic!("{ctxs}: copy_file_range: {e}"));
                let avail = src_size.saturating_sub(off_in).min(len);
                assert_eq!(
                    n, avail,
                    "{ctxs}: copy_file_range {ino_in}@{off_in} -> {ino_out}@{off_out} len {len} (src size {src_size})"
                );
                let data = files[g].1[off_in as usize..(off_in + n) as usize].to_vec();
                model_write(&mut files[f].1, off_out, &data);
                history.push(format!(
                    "{ino_in}->{ino_out}: copy {off_in}+{len} to {off_out} ({n})"
                ));
            }
            87..=90 => fs.fsync(ino, rng.below(2) == 0).unwrap(),
            91..=93 => {
                let a = fs.getattr(ino).unwrap();
                assert_eq!(a.size, size, "{ctxs}: getattr size");
                // SEEK_DATA / SEEK_HOLE see the cache (nothing is written back for them): no
                // byte before the data found, or before the end when none is, may be non-zero;
                // a hole found lies within the file.
                let o = rng.below(size + 1);
                let zeros_to = |e: u64| model[o as usize..e as usize].iter().all(|&b| b == 0);
                match fs.lseek(ino, o, crate::fs::types::SEEK_DATA) {
                    Ok(p) => assert!(
                        p >= o && p < size && zeros_to(p),
                        "{ctxs}: SEEK_DATA from {o} gave {p} past data"
                    ),
                    Err(Errno::ENXIO) => assert!(
                        o >= size || zeros_to(size),
                        "{ctxs}: SEEK_DATA from {o} found no data"
                    ),
                    Err(e) => panic!("{ctxs}: SEEK_DATA from {o}: {e}"),
                }
                match fs.lseek(ino, o, crate::fs::types::SEEK_HOLE) {
                    Ok(h) => assert!(h >= o && h <= size, "{ctxs}: SEEK_HOLE from {o} gave {h}"),
                    Err(e) => assert!(
                        e == Errno::ENXIO && o >= size,
                        "{ctxs}: SEEK_HOLE from {o}: {e}"
                    ),
                }
            }
            _ => {
                // Whole-file check.
                let got = fs.read(ino, 0, 0, (size + 10) as u32).unwrap();
                assert!(
                    got == *model,
                    "{ctxs}: whole file differs from the model at {} (len {} vs {})",
                    first_diff(&got, model),
                    got.len(),
                    model.len()
                );
            }
        }
    }
    let want = if extents { [40, 40, 40] } else { [0, 0, 40] };
    assert!(
        (0..3).all(|i| done[i] >= want[i]),
        "seed {seed}: too few collapses, inserts and punches ran: {done:?}"
    );
    files
}

fn check_layout(opts: &[&str], seed: u64, extents: bool) {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("img");
    mkfs(&img, opts, "96M");
    let files = {
        let fs = mount(&img, 8 << 20);
        let files = random_ops(&fs, seed, 4000, 4, extents);
        for (ino, model) in &files {
            let got = fs.read(*ino, 0, 0, model.len() as u32 + 10).unwrap();
            assert!(
                got == *model,
                "{opts:?} seed {seed}: inode {ino} differs before unmount"
            );
        }
        fs.shutdown().unwrap();
        files
    };
    e2fsck_clean(&img);
    // Our mount reads it back.
    {
        let fs = mount(&img, 8 << 20);
        for (ino, model) in &files {
            let got = fs.read(*ino, 0, 0, model.len() as u32 + 10).unwrap();
            assert!(
                got == *model,
                "{opts:?} seed {seed}: inode {ino} differs after remount"
            );
        }
        fs.shutdown().unwrap();
    }
    let mnt = kernel_mount(&img, "loop,ro");
    for (i, (_, model)) in files.iter().enumerate() {
        let got = std::fs::read(mnt.join(format!("f{i}"))).unwrap();
        assert!(
            got == *model,
            "{opts:?} seed {seed}: the kernel reads f{i} differently"
        );
    }
    kernel_umount(&mnt);
}

#[test]
fn random_data_ops_match_the_model_4k_journal() {
    check_layout(&["-t", "ext4", "-b", "4096"], 11, true);
}

#[test]
fn random_data_ops_match_the_model_1k_journal() {
    check_layout(&["-t", "ext4", "-b", "1024"], 22, true);
}

#[test]
fn random_data_ops_match_the_model_without_journal() {
    check_layout(
        &["-t", "ext4", "-O", "^has_journal", "-b", "4096"],
        33,
        true,
    );
}

#[test]
fn random_data_ops_match_the_model_ext3_indirect() {
    check_layout(&["-t", "ext3", "-b", "1024"], 44, false);
}

/// Read a whole file through the engine in slices (reads are capped per call).
fn read_all(fs: &Fs, ino: u64, size: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(size as usize);
    while (out.len() as u64) < size {
        let got = fs.read(ino, 0, out.len() as u64, 4 << 20).unwrap();
        if got.is_empty() {
            break;
        }
        out.extend_from_slice(&got);
    }
    out
}

/// Unmount, then `e2fsck -fn` (exact i_blocks, index keys, no leaked block) and the kernel's
/// ext4 must read the file as the model has it.
fn check_image(img: &Path, fs: Fs, name: &str, model: &[u8]) {
    fs.shutdown().unwrap();
    drop(fs);
    check_image_file(img, name, model);
}

/// Collapse and insert on a file with thousands of one-block extents (a depth-2 tree at 1 KiB
/// blocks, shifted in many handles on a small journal), including collapses of exactly the
/// holes between extents (neighbours that may merge) and inserts at block 0.
#[test]
fn collapse_and_insert_on_a_deep_extent_tree() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("img");
    mkfs(&img, &["-t", "ext4", "-b", "1024", "-J", "size=1"], "64M");
    let fs = mount(&img, 8 << 20);
    let ino = fs
        .mknod(ROOT_INO, b"deep", 0o100644, 0, &ctx())
        .unwrap()
        .ino;
    let bs = 1024u64;
    let mut model = Vec::new();
    let mut rng = Rng(77);
    for b in (0..24_000u64).step_by(2) {
        let data = pattern(&mut rng, bs as usize);
        fs.write(ino, b * bs, &data, 0).unwrap();
        model_write(&mut model, b * bs, &data);
        if b % 4000 == 0 {
            fs.fsync(ino, false).unwrap();
        }
    }
    fs.fsync(ino, false).unwrap();
    for step in 0..40 {
        let size = model.len() as u64;
        let nb = size / bs;
        if step % 2 == 0 {
            // Collapse: one block (a hole or an extent), or a long range.
            let n = if rng.below(3) == 0 {
                1 + rng.below(3000)
            } else {
                1
            };
            let o = rng.below(nb - n - 1);
            fs.fallocate(ino, o * bs, n * bs, FALLOC_FL_COLLAPSE_RANGE)
                .unwrap_or_else(|e| panic!("step {step}: collapse {o}+{n}: {e}"));
            model.drain((o * bs) as usize..((o + n) * bs) as usize);
        } else {
            let n = 1 + rng.below(500);
            let o = if rng.below(4) == 0 { 0 } else { rng.below(nb) };
            fs.fallocate(ino, o * bs, n * bs, FALLOC_FL_INSERT_RANGE)
                .unwrap_or_else(|e| panic!("step {step}: insert {o}+{n}: {e}"));
            model.splice(
                (o * bs) as usize..(o * bs) as usize,
                std::iter::repeat_n(0, (n * bs) as usize),
            );
        }
        if step % 10 == 9 {
            assert!(
                read_all(&fs, ino, model.len() as u64 + 1) == model,
                "step {step}"
            );
            fs.sync().unwrap();
        }
    }
    assert_eq!(fs.getattr(ino).unwrap().size, model.len() as u64);
    // Past the last block an extent may not go.
    assert_eq!(
        fs.fallocate(ino, 0, (1u64 << 32) * bs, FALLOC_FL_INSERT_RANGE),
        Err(Errno::EFBIG)
    );
    check_image(&img, fs, "deep", &model);
}

/// Punching an ext3-style file across the direct, single, double and triple indirect ranges
/// frees the data blocks and every indirect block left empty (e2fsck checks i_blocks and
/// finds no orphaned indirect block).
#[test]
fn punch_indirect_map_across_all_levels() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("img");
    mkfs(&img, &["-t", "ext3", "-b", "1024"], "32M");
    let fs = mount(&img, 8 << 20);
    let ino = fs
        .mknod(ROOT_INO, b"sparse", 0o100644, 0, &ctx())
        .unwrap()
        .ino;
    let bs = 1024u64;
    // 12 direct, 256 single, 65536 double, then triple indirect.
    let end = 12 + 256 + 65_536 + 3 * 65_536u64;
    let mut model = Vec::new();
    let mut rng = Rng(5);
    let mut b = 0;
    while b < end {
        let data = pattern(&mut rng, bs as usize);
        fs.write(ino, b * bs, &data, 0).unwrap();
        model_write(&mut model, b * bs, &data);
        b += if b < 400 { 1 } else { 1 + rng.below(400) };
    }
    fs.fsync(ino, false).unwrap();
    let before = fs.statfs().unwrap().bfree;
    let edges = [0u64, 12, 268, 65_804, 65_804 + 65_536];
    for step in 0..60 {
        let size = model.len() as u64;
        // Around a level boundary, or anywhere; unaligned edges half of the time.
        let (off, len) = if step % 2 == 0 {
            let e = edges[rng.below(edges.len() as u64) as usize] * bs;
            let o = e.saturating_sub(rng.below(300 * bs));
            (o, 1 + rng.below(600 * bs))
        } else {
            (rng.below(size), 1 + rng.below(80_000 * bs))
        };
        let (off, len) = if step % 4 < 2 {
            (off / bs * bs, (len / bs).max(1) * bs)
        } else {
            (off, len)
        };
        fs.fallocate(ino, off, len, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
            .unwrap_or_else(|e| panic!("step {step}: punch {off}+{len}: {e}"));
        let zend = (off + len).min(size);
        if off < zend {
            model[off as usize..zend as usize].fill(0);
        }
        if step % 15 == 14 {
            fs.sync().unwrap();
        }
    }
    assert!(
        fs.statfs().unwrap().bfree > before,
        "punching freed nothing"
    );
    assert!(read_all(&fs, ino, model.len() as u64 + 1) == model);
    // Everything: only the map's shape is left to free.
    fs.fallocate(
        ino,
        0,
        model.len() as u64,
        FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
    )
    .unwrap();
    model.fill(0);
    let a = fs.getattr(ino).unwrap();
    assert_eq!(a.blocks, 0, "every data and indirect block is freed");
    assert_eq!(
        fs.fallocate(ino, 0, bs, FALLOC_FL_COLLAPSE_RANGE),
        Err(Errno::EOPNOTSUPP)
    );
    assert_eq!(
        fs.fallocate(ino, 0, bs, FALLOC_FL_INSERT_RANGE),
        Err(Errno::EOPNOTSUPP)
    );
    check_image(&img, fs, "sparse", &model);
}

/// Filling the file system ends with write() answering ENOSPC — never a later fsync EIO —;
/// what was fsynced stays intact, statfs never shows more free space than exists, and the
/// reservations of dirty files come back when they are unlinked or truncated.
#[test]
fn enospc_is_answered_by_write_and_reservations_come_back() {
    for opts in [
        &["-t", "ext4", "-b", "1024"][..],
        &["-t", "ext4", "-O", "^has_journal"][..],
    ] {
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("img");
        mkfs(&img, opts, "24M");
        let fs = mount(&img, 64 << 20);
        let total = fs.statfs().unwrap().blocks;
        let free0 = fs.statfs().unwrap().bfree;
        let chunk = vec![0x5Au8; 256 << 10];
        let mut written: Vec<(u64, u64)> = Vec::new();
        let mut hit = false;
        'fill: for i in 0..1000 {
            let a = fs
                .mknod(ROOT_INO, format!("fill{i}").as_bytes(), 0o100644, 0, &ctx())
                .unwrap();
            let mut n = 0u64;
            for _ in 0..8 {
                match fs.write(a.ino, n, &chunk, 0) {
                    Ok(w) => n += w as u64,
                    Err(Errno::ENOSPC) => {
                        written.push((a.ino, n));
                        hit = true;
                        break 'fill;
                    }
                    Err(e) => panic!("{opts:?}: write answered {e} before ENOSPC"),
                }
                let s = fs.statfs().unwrap();
                assert!(
                    s.bfree <= total,
                    "{opts:?}: statfs shows {} free of {total}",
                    s.bfree
                );
            }
            fs.fsync(a.ino, false)
                .unwrap_or_else(|e| panic!("{opts:?}: fsync after accepted writes failed: {e}"));
            written.push((a.ino, n));
        }
        assert!(hit, "{opts:?}: the file system never filled up");
        // Every byte accepted before ENOSPC reaches the disk: fsync must not fail.
        for &(ino, _) in &written {
            fs.fsync(ino, false).unwrap();
        }
        for &(ino, n) in &written {
            let got = fs.read(ino, 0, 0, n as u32).unwrap();
            assert_eq!(got.len() as u64, n);
            assert!(
                got.iter().all(|&b| b == 0x5A),
                "{opts:?}: inode {ino} lost data"
            );
        }
        // Dirty, unsynced data whose file goes away gives its reservation back.
        let (last, _) = *written.iter().rev().find(|(_, n)| *n > 0).unwrap();
        fs.setattr(
            last,
            &crate::fs::SetAttr {
                size: Some(0),
                ..Default::default()
            },
        )
        .unwrap();
        let a = fs.mknod(ROOT_INO, b"dirty", 0o100644, 0, &ctx()).unwrap();
        let before = fs.statfs().unwrap().bfree;
        let n = fs.write(a.ino, 0, &chunk[..64 << 10], 0).unwrap() as u64;
        assert!(
            fs.statfs().unwrap().bfree < before,
            "{opts:?}: a dirty write reserves space"
        );
        fs.unlink(ROOT_INO, b"dirty").unwrap();
        fs.forget(a.ino, 1);
        assert_eq!(
            fs.statfs().unwrap().bfree,
            before,
            "{opts:?}: unlinking a dirty file ({n} bytes) returns its reservation"
        );
        for (i, &(ino, _)) in written.iter().enumerate() {
            if i % 2 == 0 {
                fs.unlink(ROOT_INO, format!("fill{i}").as_bytes()).unwrap();
                fs.forget(ino, 1);
            }
        }
        fs.sync().unwrap();
        assert!(fs.statfs().unwrap().bfree > free0 / 3);
        fs.shutdown().unwrap();
        drop(fs);
        e2fsck_clean(&img);
    }
}

/// A device whose writes fail (EIO) when the data starts with a marker: only file data carries
/// it, so metadata writes go through.
/// An injected EIO on a data write: fsync answers EIO (once), the image stays consistent, and
/// the rest of the file system keeps working.
#[test]
fn a_failed_data_write_is_reported_by_fsync() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("img");
    mkfs(&img, &["-t", "ext4", "-b", "4096"], "32M");
    let bytes = std::fs::read(&img).unwrap();
    let dev = Arc::new(FailMarked::new(bytes));
    let fs = Fs::mount(dev.clone(), &MountOptions::rw()).unwrap();
    let bad = fs.mknod(ROOT_INO, b"bad", 0o100644, 0, &ctx()).unwrap().ino;
    let good = fs
        .mknod(ROOT_INO, b"good", 0o100644, 0, &ctx())
        .unwrap()
        .ino;
    let mut data = vec![7u8; 16384];
    data[..FAIL_MARK.len()].copy_from_slice(FAIL_MARK);
    fs.write(bad, 0, &data, 0).unwrap();
    fs.write(good, 0, &[9u8; 8192], 0).unwrap();
    assert_eq!(fs.fsync(bad, false), Err(Errno::EIO));
    // Reported once, as the kernel's errseq does.
    fs.fsync(bad, false).unwrap();
    fs.fsync(good, false).unwrap();
    assert_eq!(fs.read(good, 0, 0, 8192).unwrap(), vec![9u8; 8192]);
    // The failed blocks stay unwritten: they read as zeros, never as stale data.
    assert!(fs.read(bad, 0, 0, 16384).unwrap().iter().all(|&b| b == 0));
    fs.shutdown().unwrap();
    let out = t.path().join("after.img");
    std::fs::write(&out, dev.0.snapshot()).unwrap();
    e2fsck_clean(&out);
}

/// Writers of different files and of one file at different offsets, with readers and a
/// truncating writer beside them, under a hang watchdog; the result equals the model.
#[test]
fn concurrent_writers_readers_and_truncates() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("img");
    mkfs(&img, &["-t", "ext4", "-b", "1024"], "128M");
    let fs = Arc::new(mount(&img, 16 << 20));
    let own: Vec<u64> = (0..3)
        .map(|i| {
            fs.mknod(ROOT_INO, format!("own{i}").as_bytes(), 0o100644, 0, &ctx())
                .unwrap()
                .ino
        })
        .collect();
    let shared = fs
        .mknod(ROOT_INO, b"shared", 0o100644, 0, &ctx())
        .unwrap()
        .ino;
    let churn = fs
        .mknod(ROOT_INO, b"churn", 0o100644, 0, &ctx())
        .unwrap()
        .ino;
    let region = 1u64 << 20;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut handles = Vec::new();
    for (k, &ino) in own.iter().enumerate() {
        let fs = fs.clone();
        handles.push(std::thread::spawn(move || {
            let mut rng = Rng(k as u64 * 77 + 5);
            let mut model = vec![0u8; 0];
            for _ in 0..400 {
                let off = rng.below(3 << 20);
                let n = 1 + rng.below(20_000) as usize;
                let data = pattern(&mut rng, n);
                fs.write(ino, off, &data, 0).unwrap();
                model_write(&mut model, off, &data);
            }
            (ino, model)
        }));
    }
    // Two writers share one file, each in its own region.
    for k in 0..2u64 {
        let fs = fs.clone();
        handles.push(std::thread::spawn(move || {
            let mut rng = Rng(k * 31 + 9);
            let mut model = vec![0u8; (region * 2) as usize];
            for _ in 0..400 {
                let off = k * region + rng.below(region - 20_000);
                let n = 1 + rng.below(20_000) as usize;
                let data = pattern(&mut rng, n);
                fs.write(shared, off, &data, 0).unwrap();
                model_write(&mut model, off, &data);
            }
            (u64::MAX - k, model)
        }));
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut side = Vec::new();
    {
        let (fs, stop) = (fs.clone(), stop.clone());
        let targets: Vec<u64> = own.iter().copied().chain([shared, churn]).collect();
        side.push(std::thread::spawn(move || {
            let mut rng = Rng(1234);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let ino = targets[rng.below(targets.len() as u64) as usize];
                fs.read(ino, 0, rng.below(3 << 20), 65536).unwrap();
            }
        }));
    }
    {
        let (fs, stop) = (fs.clone(), stop.clone());
        side.push(std::thread::spawn(move || {
            let mut rng = Rng(999);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let off = rng.below(1 << 20);
                fs.write(churn, off, &pattern(&mut rng, 5000), 0).unwrap();
                let size = rng.below(1 << 20);
                fs.setattr(
                    churn,
                    &crate::fs::SetAttr {
                        size: Some(size),
                        ..Default::default()
                    },
                )
                .unwrap();
                if rng.below(10) == 0 {
                    fs.fsync(churn, false).unwrap();
                }
            }
        }));
    }
    std::thread::spawn(move || {
        let results: Vec<(u64, Vec<u8>)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let _ = tx.send(results);
    });
    let results = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the writers hung (watchdog)");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in side {
        h.join().unwrap();
    }
    let mut shared_model = vec![0u8; (region * 2) as usize];
    for (ino, model) in &results {
        if *ino >= u64::MAX - 1 {
            let k = u64::MAX - ino;
            let r = (k * region) as usize..((k + 1) * region) as usize;
            shared_model[r.clone()].copy_from_slice(&model[r]);
            continue;
        }
        let got = fs.read(*ino, 0, 0, model.len() as u32).unwrap();
        assert!(got == *model, "inode {ino} differs from its writer's model");
    }
    let got = fs.read(shared, 0, 0, shared_model.len() as u32).unwrap();
    let size = got.len();
    assert!(
        got[..] == shared_model[..size],
        "the shared file differs from its writers' models"
    );
    fs.shutdown().unwrap();
    drop(fs);
    e2fsck_clean(&img);
}

/// Inline-data files take writes in place while the data fits the inode, and move to a block
/// when it outgrows it; e2fsck and the kernel agree with what we wrote.
#[test]
fn inline_files_stay_inline_while_they_fit() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("small"), b"0123456789").unwrap();
    std::fs::write(src.join("grows"), b"abc").unwrap();
    let img = t.path().join("img");
    crate::fs::testutil::mkfs(
        &src,
        &img,
        &["-t", "ext4", "-O", "inline_data", "-I", "256"],
        "16M",
    );
    let fs = mount(&img, 8 << 20);
    let small = fs.lookup(ROOT_INO, b"small").unwrap().ino;
    let grows = fs.lookup(ROOT_INO, b"grows").unwrap().ino;
    let is_inline = |ino| {
        fs.read_inode(ino)
            .unwrap()
            .has_flag(crate::ondisk::inode::flags::INLINE_DATA)
    };
    assert!(
        is_inline(small) && is_inline(grows),
        "mke2fs stores small files inline"
    );
    let mut small_model = b"0123456789".to_vec();
    fs.write(small, 4, b"XY", 0).unwrap();
    small_model[4..6].copy_from_slice(b"XY");
    fs.write(small, 70, b"past i_block", 0).unwrap();
    small_model.resize(70, 0);
    small_model.extend_from_slice(b"past i_block");
    assert!(is_inline(small), "82 bytes fit a 256-byte inode");
    assert_eq!(fs.read(small, 0, 0, 4096).unwrap(), small_model);
    let mut grows_model = b"abc".to_vec();
    let big = pattern(&mut Rng(3), 5000);
    fs.write(grows, 100, &big, 0).unwrap();
    grows_model.resize(100, 0);
    grows_model.extend_from_slice(&big);
    assert!(!is_inline(grows), "5100 bytes do not fit the inode");
    assert_eq!(fs.read(grows, 0, 0, 8192).unwrap(), grows_model);
    fs.shutdown().unwrap();
    drop(fs);
    e2fsck_clean(&img);
    let mnt = kernel_mount(&img, "loop,ro");
    assert_eq!(std::fs::read(mnt.join("small")).unwrap(), small_model);
    assert_eq!(std::fs::read(mnt.join("grows")).unwrap(), grows_model);
    kernel_umount(&mnt);
}

/// Many small files, each holding a slab of the cache for one dirty page: the cache writes back
/// and evicts to make room instead of failing (it once answered ENOMEM), and every file reads
/// back.
#[test]
fn many_small_files_do_not_run_the_cache_out_of_slabs() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("img");
    mkfs(&img, &["-t", "ext4", "-N", "8192"], "64M");
    let fs = mount(&img, 8 << 20);
    let slabs = fs.data.pc.arena.slab_count() as usize;
    let n = slabs * 4;
    let mut inos = Vec::new();
    for i in 0..n {
        let a = fs
            .mknod(ROOT_INO, format!("s{i}").as_bytes(), 0o100644, 0, &ctx())
            .unwrap();
        let data = pattern(&mut Rng(i as u64 + 1), 3000);
        fs.write(a.ino, 0, &data, 0)
            .unwrap_or_else(|e| panic!("file {i} of {n} ({slabs} slabs): {e}"));
        inos.push((a.ino, data));
    }
    for (ino, data) in &inos {
        assert_eq!(fs.read(*ino, 0, 0, 4096).unwrap(), *data);
    }
    fs.shutdown().unwrap();
    drop(fs);
    e2fsck_clean(&img);
}

/// Zeroing or punching every byte of a file whose data was never written back still leaves
/// its size on disk (i_disksize moves before the punch reaches EOF; fstests generic/033).
#[test]
fn zeroing_unwritten_back_data_keeps_the_size() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("img");
    mkfs(&img, &["-t", "ext4", "-b", "4096"], "32M");
    let (z, p) = {
        let fs = mount(&img, 8 << 20);
        let z = fs
            .mknod(ROOT_INO, b"zeroed", 0o100644, 0, &ctx())
            .unwrap()
            .ino;
        let p = fs
            .mknod(ROOT_INO, b"punched", 0o100644, 0, &ctx())
            .unwrap()
            .ino;
        for ino in [z, p] {
            fs.write(ino, 0, &[0x77u8; 65536], 0).unwrap();
        }
        for off in (0..65536).step_by(8192).chain((4096..65536).step_by(8192)) {
            fs.fallocate(z, off, 4096, FALLOC_FL_ZERO_RANGE).unwrap();
        }
        fs.fallocate(p, 0, 65536, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
            .unwrap();
        fs.shutdown().unwrap();
        (z, p)
    };
    e2fsck_clean(&img);
    let fs = mount(&img, 8 << 20);
    for ino in [z, p] {
        assert_eq!(fs.getattr(ino).unwrap().size, 65536, "inode {ino}");
        assert_eq!(fs.read(ino, 0, 0, 70000).unwrap(), vec![0u8; 65536]);
    }
    fs.shutdown().unwrap();
}

/// A device that holds back the first data write starting with [`GATE_MARK`] until `open` is
/// called, so a test can act while a writeback is in flight.
struct Gated {
    dev: crate::blockdev::MemDevice,
    state: std::sync::Mutex<(bool, bool)>, // (a write is held, the gate is open)
    cv: std::sync::Condvar,
}

const GATE_MARK: &[u8] = b"HOLD-THIS-WRITE!";

impl Gated {
    fn new(bytes: Vec<u8>) -> Gated {
        Gated {
            dev: crate::blockdev::MemDevice::from_vec(bytes),
            state: std::sync::Mutex::new((false, false)),
            cv: std::sync::Condvar::new(),
        }
    }
    /// Wait until a write is held at the gate.
    fn wait_held(&self) {
        let g = self.state.lock().unwrap();
        let (g, t) = self
            .cv
            .wait_timeout_while(g, std::time::Duration::from_secs(20), |s| !s.0)
            .unwrap();
        assert!(!t.timed_out() && g.0, "no write reached the gate");
    }
    fn open(&self) {
        self.state.lock().unwrap().1 = true;
        self.cv.notify_all();
    }
}

impl crate::blockdev::BlockDevice for Gated {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.dev.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        if buf.starts_with(GATE_MARK) {
            let mut g = self.state.lock().unwrap();
            if !g.1 {
                g.0 = true;
                self.cv.notify_all();
                while !g.1 {
                    g = self.cv.wait(g).unwrap();
                }
            }
        }
        self.dev.write_at(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.dev.flush()
    }
    fn size(&self) -> u64 {
        self.dev.size()
    }
}

/// Run `f` on a thread; the receiver gets its result.
fn spawn<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::sync::mpsc::Receiver<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx
}

const SOON: std::time::Duration = std::time::Duration::from_millis(300);
const LONG: std::time::Duration = std::time::Duration::from_secs(20);

/// A file's writeback in flight (held at the device) does not stop writers of its other pages;
/// a writer of a page being written waits for that write, and its data stays dirty for the
/// next pass (written by the next fsync, read back by the kernel).
#[test]
fn writers_run_beside_writeback_and_redirtied_pages_stay_dirty() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("img");
    mkfs(&img, &["-t", "ext4", "-b", "4096"], "64M");
    let dev = Arc::new(Gated::new(std::fs::read(&img).unwrap()));
    let fs = Arc::new(Fs::mount(dev.clone(), &MountOptions::rw()).unwrap());
    let ino = fs.mknod(ROOT_INO, b"f", 0o100644, 0, &ctx()).unwrap().ino;
    let mut model = Vec::new();
    let mut first = vec![1u8; 8192];
    first[..GATE_MARK.len()].copy_from_slice(GATE_MARK);
    fs.write(ino, 0, &first, 0).unwrap();
    model_write(&mut model, 0, &first);
    // A second run in another 2 MiB chunk: written in its own request.
    fs.write(ino, 4 << 20, &[2u8; 4096], 0).unwrap();
    model_write(&mut model, 4 << 20, &[2u8; 4096]);
    let f2 = fs.clone();
    let synced = spawn(move || f2.fsync(ino, false));
    dev.wait_held();
    // Another page, while the write of page 0 is held: the writer goes on.
    let f2 = fs.clone();
    let other = spawn(move || f2.write(ino, 8 << 20, &[3u8; 4096], 0));
    assert_eq!(
        other
            .recv_timeout(LONG)
            .expect("a writer of another page waited for writeback"),
        Ok(4096)
    );
    model_write(&mut model, 8 << 20, &[3u8; 4096]);
    // Page 1 is under writeback (same run as page 0): its writer waits for the write.
    let f2 = fs.clone();
    let redirty = spawn(move || f2.write(ino, 4096 + 10, b"again", 0));
    assert!(
        redirty.recv_timeout(SOON).is_err(),
        "a writer changed a page while its write was in flight"
    );
    assert!(synced.recv_timeout(SOON).is_err(), "fsync ended early");
    dev.open();
    assert_eq!(synced.recv_timeout(LONG).unwrap(), Ok(()));
    assert_eq!(redirty.recv_timeout(LONG).unwrap(), Ok(5));
    model_write(&mut model, 4096 + 10, b"again");
    // The re-dirtied page is dirty again; the next fsync writes it.
    {
        let d = fs.data_if_cached(ino).unwrap();
        let m = d.pages();
        assert_eq!(m.state(1).dirty, 1);
        assert_eq!(m.state(1).writeback, 0);
        assert_eq!(m.state(0).dirty, 0);
    }
    fs.fsync(ino, false).unwrap();
    assert_eq!(read_all(&fs, ino, model.len() as u64), model);
    let fs = Arc::into_inner(fs).expect("no other user");
    fs.shutdown().unwrap();
    drop(fs);
    std::fs::write(&img, dev.dev.snapshot()).unwrap();
    check_image_file(&img, "f", &model);
}

/// Truncate and punch wait for the file's writeback in flight: the blocks they free cannot
/// still be targets of a write, and the completion cannot convert freed extents.
#[test]
fn truncate_and_punch_wait_for_writeback_in_flight() {
    for punch in [false, true] {
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("img");
        mkfs(&img, &["-t", "ext4", "-b", "1024"], "64M");
        let dev = Arc::new(Gated::new(std::fs::read(&img).unwrap()));
        let fs = Arc::new(Fs::mount(dev.clone(), &MountOptions::rw()).unwrap());
        let ino = fs.mknod(ROOT_INO, b"f", 0o100644, 0, &ctx()).unwrap().ino;
        let mut data = vec![5u8; 1 << 20];
        data[..GATE_MARK.len()].copy_from_slice(GATE_MARK);
        fs.write(ino, 0, &data, 0).unwrap();
        let mut model = data.clone();
        let free0 = fs.statfs().unwrap().bfree;
        let f2 = fs.clone();
        let synced = spawn(move || f2.fsync(ino, false));
        dev.wait_held();
        let f2 = fs.clone();
        let cut = spawn(move || {
            if punch {
                f2.fallocate(
                    ino,
                    0,
                    512 << 10,
                    FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                )
            } else {
                f2.setattr(
                    ino,
                    &crate::fs::SetAttr {
                        size: Some(1000),
                        ..Default::default()
                    },
                )
                .map(|_| ())
            }
        });
        assert!(
            cut.recv_timeout(SOON).is_err(),
            "punch={punch}: the blocks were cut while a write to them was in flight"
        );
        dev.open();
        assert_eq!(synced.recv_timeout(LONG).unwrap(), Ok(()));
        assert_eq!(cut.recv_timeout(LONG).unwrap(), Ok(()));
        if punch {
            model[..512 << 10].fill(0);
        } else {
            model.truncate(1000);
        }
        fs.fsync(ino, false).unwrap();
        assert_eq!(read_all(&fs, ino, model.len() as u64), model);
        if !punch {
            assert!(
                fs.statfs().unwrap().bfree > free0,
                "the cut blocks are free"
            );
        }
        let fs = Arc::into_inner(fs).expect("no other user");
        fs.shutdown().unwrap();
        drop(fs);
        std::fs::write(&img, dev.dev.snapshot()).unwrap();
        check_image_file(&img, "f", &model);
    }
}

/// `e2fsck -fn` finds the image clean and the kernel reads file `name` as `model`.
fn check_image_file(img: &Path, name: &str, model: &[u8]) {
    e2fsck_clean(img);
    let mnt = kernel_mount(img, "loop,ro");
    let got = std::fs::read(mnt.join(name)).unwrap();
    kernel_umount(&mnt);
    assert!(got == model, "the kernel reads {name} differently");
}

/// SEEK_DATA / SEEK_HOLE find data that is only in the cache (delayed, and over unwritten
/// extents) without writing anything back, and unwritten extents with nothing cached are holes.
#[test]
fn seek_sees_cached_data_without_writeback() {
    use crate::fs::types::{SEEK_DATA, SEEK_HOLE};
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("img");
    mkfs(&img, &["-t", "ext4", "-b", "4096"], "32M");
    let fs = mount(&img, 8 << 20);
    let ino = fs
        .mknod(ROOT_INO, b"sparse", 0o100644, 0, &ctx())
        .unwrap()
        .ino;
    // Unwritten blocks 0..16, new data at block 4 (over them) and block 40 (delayed).
    fs.fallocate(ino, 0, 16 * 4096, 0).unwrap();
    fs.write(ino, 4 * 4096 + 100, b"data", 0).unwrap();
    fs.write(ino, 40 * 4096, &[1u8; 4096], 0).unwrap();
    let size = 41 * 4096;
    let dirty = || fs.data_if_cached(ino).unwrap().pages().dirty_pages();
    let before = dirty();
    assert_eq!(before, 2);
    assert_eq!(fs.lseek(ino, 0, SEEK_DATA), Ok(4 * 4096));
    assert_eq!(fs.lseek(ino, 0, SEEK_HOLE), Ok(0));
    assert_eq!(fs.lseek(ino, 4 * 4096, SEEK_HOLE), Ok(5 * 4096));
    assert_eq!(fs.lseek(ino, 5 * 4096, SEEK_DATA), Ok(40 * 4096));
    assert_eq!(fs.lseek(ino, 40 * 4096 + 1, SEEK_HOLE), Ok(size));
    assert_eq!(fs.lseek(ino, size, SEEK_DATA), Err(Errno::ENXIO));
    assert_eq!(dirty(), before, "nothing was written back for the seeks");
    // Written back, the same answers (block 4 written, 40 written).
    fs.fsync(ino, false).unwrap();
    assert_eq!(dirty(), 0);
    assert_eq!(fs.lseek(ino, 0, SEEK_DATA), Ok(4 * 4096));
    assert_eq!(fs.lseek(ino, 5 * 4096, SEEK_DATA), Ok(40 * 4096));
    assert_eq!(fs.lseek(ino, 4 * 4096, SEEK_HOLE), Ok(5 * 4096));
    fs.shutdown().unwrap();
    drop(fs);
    e2fsck_clean(&img);
}
