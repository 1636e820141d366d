//! Test support for crash tests: checks of a crash state that run in-process (thousands of
//! states cost seconds, where `e2fsck` costs tens of milliseconds a state), and the stale-data
//! harness for the data path.
//!
//! * [`replay_in_memory`]: our own journal replay of a crash image (a writable mount replays the
//!   log and frees orphans; then a clean unmount), without touching the file system on disk.
//! * [`check_tree`]: a small fsck through the operation API: every directory lists, every name
//!   looks up to the inode readdir gave, `..` points back, symlinks and xattrs read, no directory
//!   has two parents, every link count equals the names that point at the inode; and the counts
//!   of the allocator (inodes and blocks in use, from the group descriptors) agree with what is
//!   reachable from the root. It finds what a crash state typically gets wrong — a block logged
//!   half-way, an inode table or bitmap block from the wrong transaction — but not everything
//!   `e2fsck -fn` does (bitmaps are compared by count, not bit by bit): the crash tests run
//!   e2fsck too, on a sample.
//! * [`fill_free_blocks`] and [`files_with_marker`]: before a workload, write a marker into every
//!   free block of the image; in any crash state, no regular file may show a marker byte run
//!   (a block allocated to a file and exposed before its data was written, or a file whose
//!   size or extent landed before its data).

use super::*;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;

/// What [`check_tree`] walked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct TreeSummary {
    /// Distinct inodes reachable from the root (the root included).
    pub inodes: u64,
    /// File-system blocks those inodes hold (`st_blocks`, hard-linked inodes counted once).
    pub blocks: u64,
    /// Every path (relative to the root, '/'-separated) and its attributes.
    pub paths: BTreeMap<String, Attr>,
}

impl TreeSummary {
    /// Regular files: (path, inode, size), one path per inode.
    pub fn regular_files(&self) -> Vec<(String, Ino, u64)> {
        let mut seen = std::collections::HashSet::new();
        self.paths
            .iter()
            .filter(|(_, a)| a.mode & libc::S_IFMT == libc::S_IFREG && seen.insert(a.ino))
            .map(|(p, a)| (p.clone(), a.ino, a.size))
            .collect()
    }
}

/// Blocks in use that no reachable inode accounts for: group metadata, the journal, reserved
/// inodes. A workload that only uses the namespace must not change it; compare a crash state's
/// value with the starting image's.
pub(super) fn overhead_blocks(fs: &Fs, t: &TreeSummary) -> i64 {
    let used = fs.sb.blocks_count - (fs.alloc.free_counts().0 << fs.cluster_bits_for_tests());
    used as i64 - t.blocks as i64
}

impl Fs {
    fn cluster_bits_for_tests(&self) -> u32 {
        self.sb
            .log_cluster_size
            .saturating_sub(self.sb.log_block_size)
    }
}

/// Mount a crash image writable in memory (our journal replay and orphan cleanup), and unmount
/// it cleanly. The returned file system still answers reads.
pub(super) fn replay_in_memory(image: Vec<u8>) -> std::result::Result<Fs, String> {
    let fs = Fs::mount(
        Arc::new(crate::blockdev::MemDevice::from_vec(image)),
        &MountOptions::rw(),
    )
    .map_err(|e| format!("our mount (and replay) failed: {e}"))?;
    if fs.is_read_only() {
        return Err("our mount of the crash image came up read-only".into());
    }
    fs.shutdown()
        .map_err(|e| format!("unmount after our replay failed: {e:?}"))?;
    Ok(fs)
}

/// Walk the tree from the root through the operation API and check it (see the module
/// documentation). Errors name the first inconsistency found.
pub(super) fn check_tree(fs: &Fs) -> std::result::Result<TreeSummary, String> {
    let mut sum = TreeSummary::default();
    // Names pointing at each inode, and subdirectories of each directory.
    let mut names: HashMap<Ino, u32> = HashMap::new();
    let mut subdirs: HashMap<Ino, u32> = HashMap::new();
    let mut attrs: HashMap<Ino, Attr> = HashMap::new();
    let root = fs
        .getattr(ROOT_INO)
        .map_err(|e| format!("getattr of the root: {e:?}"))?;
    attrs.insert(ROOT_INO, root);
    let mut stack = vec![(ROOT_INO, ROOT_INO, String::new())];
    while let Some((dir, parent, path)) = stack.pop() {
        let fh = fs
            .opendir(dir, 0)
            .map_err(|e| format!("opendir /{path}: {e:?}"))?;
        let mut entries = Vec::new();
        let r = fs.readdir(dir, fh, 0, &mut |e| {
            entries.push(e.clone());
            true
        });
        fs.releasedir(dir, fh);
        r.map_err(|e| format!("readdir /{path}: {e:?}"))?;
        let mut dot = false;
        let mut dotdot = false;
        for e in entries {
            match &e.name[..] {
                b"." => {
                    dot = e.ino == dir;
                    continue;
                }
                b".." => {
                    dotdot = e.ino == parent;
                    if !dotdot {
                        return Err(format!(
                            "/{path}: '..' is inode {}, the parent is {parent}",
                            e.ino
                        ));
                    }
                    continue;
                }
                _ => {}
            }
            let name = String::from_utf8_lossy(&e.name).into_owned();
            let p = if path.is_empty() {
                name
            } else {
                format!("{path}/{name}")
            };
            let a = fs
                .lookup(dir, &e.name)
                .map_err(|err| format!("lookup /{p}: {err:?}"))?;
            if a.ino != e.ino {
                return Err(format!(
                    "/{p}: readdir says inode {}, lookup {}",
                    e.ino, a.ino
                ));
            }
            if a.nlink == 0 {
                return Err(format!("/{p}: inode {} has no links", a.ino));
            }
            let fmt = a.mode & libc::S_IFMT;
            match fmt {
                libc::S_IFDIR => {
                    if attrs.contains_key(&a.ino) {
                        return Err(format!("/{p}: directory {} has two names", a.ino));
                    }
                    *subdirs.entry(dir).or_default() += 1;
                    stack.push((a.ino, dir, p.clone()));
                }
                libc::S_IFLNK => {
                    let t = fs
                        .readlink(a.ino)
                        .map_err(|err| format!("readlink /{p}: {err:?}"))?;
                    if t.len() as u64 != a.size || t.is_empty() {
                        return Err(format!(
                            "/{p}: symlink of size {} reads {} bytes",
                            a.size,
                            t.len()
                        ));
                    }
                }
                libc::S_IFREG | libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO | libc::S_IFSOCK => {}
                _ => return Err(format!("/{p}: inode {} has mode {:o}", a.ino, a.mode)),
            }
            if fmt != libc::S_IFDIR {
                *names.entry(a.ino).or_default() += 1;
            }
            let list = fs
                .listxattr(a.ino)
                .map_err(|err| format!("listxattr /{p}: {err:?}"))?;
            for n in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
                fs.getxattr(a.ino, n).map_err(|err| {
                    format!("getxattr /{p} {}: {err:?}", String::from_utf8_lossy(n))
                })?;
            }
            attrs.insert(a.ino, a);
            sum.paths.insert(p, a);
        }
        if !dot || !dotdot {
            return Err(format!("/{path}: '.' or '..' is missing or wrong"));
        }
    }
    for (ino, a) in &attrs {
        let want = if a.mode & libc::S_IFMT == libc::S_IFDIR {
            2 + subdirs.get(ino).copied().unwrap_or(0)
        } else {
            names.get(ino).copied().unwrap_or(0)
        };
        if a.nlink != want {
            let p = sum
                .paths
                .iter()
                .find(|(_, x)| x.ino == *ino)
                .map_or("", |(p, _)| p.as_str());
            return Err(format!(
                "inode {ino} (/{p}): link count {}, {want} names",
                a.nlink
            ));
        }
    }
    sum.inodes = attrs.len() as u64;
    sum.blocks = attrs.values().map(|a| a.blocks).sum::<u64>() * 512 / fs.block_size as u64;
    // Inodes in use per the group descriptors: the reachable ones and the reserved ones.
    let st = fs.statfs().map_err(|e| format!("statfs: {e:?}"))?;
    let used = st.files - st.ffree;
    // Inodes below s_first_ino are reserved (in use whether reachable or not); the root is one.
    let reserved = fs.sb.first_ino as u64 - 1;
    if used != sum.inodes - 1 + reserved {
        return Err(format!(
            "{used} inodes in use, {} reachable beside the root and {reserved} reserved",
            sum.inodes - 1
        ));
    }
    check_bitmaps(fs, attrs.keys().copied())?;
    Ok(sum)
}

/// Every initialized bitmap agrees with its group descriptor's free count, and every reachable
/// inode's bit is set.
fn check_bitmaps(fs: &Fs, reachable: impl Iterator<Item = Ino>) -> std::result::Result<(), String> {
    use crate::ondisk::group::{BG_BLOCK_UNINIT, BG_INODE_UNINIT};
    let bs = fs.block_size as usize;
    let read = |blk: u64| {
        let mut b = vec![0u8; bs];
        fs.dev
            .read_at(&mut b, blk * bs as u64)
            .map(|_| b)
            .map_err(|e| format!("reading bitmap block {blk}: {e}"))
    };
    let ones = |b: &[u8], n: usize| (0..n).filter(|&i| b[i / 8] >> (i % 8) & 1 == 1).count();
    let (bpg, ipg) = (
        fs.sb.blocks_per_group as u64,
        fs.sb.inodes_per_group as usize,
    );
    let mut ibitmaps = HashMap::new();
    for g in 0..fs.alloc.group_count() {
        let gd = fs.alloc.group(g);
        let first = fs.sb.first_data_block as u64 + g as u64 * bpg;
        let nblocks = bpg.min(fs.sb.blocks_count - first) as usize;
        if gd.flags & BG_BLOCK_UNINIT == 0 {
            let used = ones(&read(gd.block_bitmap)?, nblocks);
            if used + gd.free_blocks_count as usize != nblocks {
                return Err(format!(
                    "group {g}: {used} blocks in use in the bitmap, {} free per the descriptor, of {nblocks}",
                    gd.free_blocks_count
                ));
            }
        }
        if gd.flags & BG_INODE_UNINIT == 0 {
            let bits = read(gd.inode_bitmap)?;
            let used = ones(&bits, ipg);
            if used + gd.free_inodes_count as usize != ipg {
                return Err(format!(
                    "group {g}: {used} inodes in use in the bitmap, {} free per the descriptor, of {ipg}",
                    gd.free_inodes_count
                ));
            }
            ibitmaps.insert(g, bits);
        }
    }
    for ino in reachable {
        let (g, i) = (
            ((ino - 1) / ipg as u64) as u32,
            ((ino - 1) % ipg as u64) as usize,
        );
        if ibitmaps
            .get(&g)
            .is_none_or(|b| b[i / 8] >> (i % 8) & 1 == 0)
        {
            return Err(format!("inode {ino} is reachable but free in its bitmap"));
        }
    }
    Ok(())
}

/// [`check_tree`], and the blocks in use must be what the reachable inodes hold plus the
/// starting image's `overhead` ([`overhead_blocks`]).
pub(super) fn check_tree_and_blocks(
    fs: &Fs,
    overhead: i64,
) -> std::result::Result<TreeSummary, String> {
    let t = check_tree(fs)?;
    let o = overhead_blocks(fs, &t);
    if o != overhead {
        return Err(format!(
            "{} blocks in use beyond the {} reachable inodes hold; the starting image had {overhead}",
            o, t.blocks
        ));
    }
    Ok(t)
}

/// The bytes a marker record begins with. A block filled by [`fill_free_blocks`] is a run of
/// 64-byte records: this magic, the block number (u64 little-endian), then filler.
pub(super) const MARKER: &[u8; 24] = b"\xF5STALE-FREE-BLOCK-vhe4!\xA7";

/// One marked block: `block_size / 64` records naming block `blk`.
pub(super) fn marker_block(block_size: usize, blk: u64) -> Vec<u8> {
    let mut rec = [0x5Au8; 64];
    rec[..24].copy_from_slice(MARKER);
    rec[24..32].copy_from_slice(&blk.to_le_bytes());
    rec.repeat(block_size / 64)
}

/// The free blocks of the image at `img`, as ranges (first, count), from its block bitmaps as
/// libext2fs reads them (`dumpe2fs`, which also accounts for groups whose bitmap is not
/// initialized yet).
pub(super) fn free_block_ranges(img: &Path) -> Vec<(u64, u64)> {
    let out = Command::new("dumpe2fs")
        .arg(img)
        .output()
        .expect("dumpe2fs (e2fsprogs) is required");
    assert!(
        out.status.success(),
        "dumpe2fs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut ranges = Vec::new();
    for line in text.lines() {
        // Per-group lines are indented; the header's "Free blocks:" line is a total.
        if !line.starts_with(' ') {
            continue;
        }
        let Some(list) = line.trim().strip_prefix("Free blocks: ") else {
            continue;
        };
        for r in list.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
            ranges.push((a, b - a + 1));
        }
    }
    ranges
}

/// Write the marker into every free block of the (unmounted) image at `img`, in place; returns
/// how many blocks were marked. Run it on the starting image of a workload: whatever the
/// workload allocates then starts out as marker bytes, as a real disk's free space holds old
/// data.
pub(super) fn fill_free_blocks(img: &Path) -> u64 {
    use std::os::unix::fs::FileExt;
    let sb = {
        let mut b = vec![0u8; 1024];
        std::fs::File::open(img)
            .unwrap()
            .read_exact_at(&mut b, 1024)
            .unwrap();
        crate::ondisk::superblock::Superblock::parse(&b).unwrap()
    };
    let bs = 1024usize << sb.log_block_size;
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    let mut n = 0;
    for (first, count) in free_block_ranges(img) {
        for b in first..first + count {
            f.write_all_at(&marker_block(bs, b), b * bs as u64).unwrap();
            n += 1;
        }
    }
    f.sync_all().unwrap();
    n
}

/// Regular files in `t` (from [`check_tree`]) whose content, read through `fs`, holds the marker:
/// (path, byte offset of the first marker, the block number the marker names).
pub(super) fn files_with_marker(
    fs: &Fs,
    t: &TreeSummary,
) -> std::result::Result<Vec<(String, u64, u64)>, String> {
    const CHUNK: u64 = 1 << 20;
    let mut found = Vec::new();
    for (path, ino, size) in t.regular_files() {
        let mut off = 0;
        while off < size {
            // Overlap the chunks so a marker across a chunk boundary is seen too.
            let start = off.saturating_sub(MARKER.len() as u64 - 1);
            let data = fs
                .read(
                    ino,
                    0,
                    start,
                    (off + CHUNK - start).min(size - start) as u32,
                )
                .map_err(|e| format!("read /{path} at {start}: {e:?}"))?;
            if let Some(i) = data.windows(MARKER.len()).position(|w| w == MARKER) {
                let blk = data
                    .get(i + 24..i + 32)
                    .map_or(u64::MAX, |b| u64::from_le_bytes(b.try_into().unwrap()));
                found.push((path.clone(), start + i as u64, blk));
                break;
            }
            if data.is_empty() {
                return Err(format!("/{path}: read at {start} returned nothing"));
            }
            off = start + data.len() as u64;
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::blockdev::FileDevice;

    fn debugfs_w(img: &Path, cmd: &str) {
        let out = Command::new("debugfs")
            .args(["-w", "-R", cmd])
            .arg(img)
            .output()
            .expect("debugfs (e2fsprogs) is required");
        assert!(out.status.success(), "debugfs {cmd}");
    }

    fn ino_of(img: &Path, path: &str) -> Ino {
        let fs = mount(img);
        let mut ino = ROOT_INO;
        for p in path.split('/') {
            ino = fs.lookup(ino, p.as_bytes()).unwrap().ino;
        }
        ino
    }

    /// An image with files of several sizes, a hard link, a symlink and subdirectories.
    fn sample_image(dir: &Path, opts: &[&str]) -> (std::path::PathBuf, Vec<(String, Vec<u8>)>) {
        let src = dir.join("src");
        std::fs::create_dir_all(src.join("d/e")).unwrap();
        let mut files = Vec::new();
        for (i, size) in [0usize, 1, 4095, 4096, 70_000, 300_000]
            .into_iter()
            .enumerate()
        {
            let name = format!("d/f{i}");
            let data: Vec<u8> = (0..size).map(|j| (j * 7 + i) as u8).collect();
            std::fs::write(src.join(&name), &data).unwrap();
            files.push((name, data));
        }
        std::fs::hard_link(src.join("d/f4"), src.join("d/e/hard")).unwrap();
        std::os::unix::fs::symlink("../f1", src.join("d/e/sym")).unwrap();
        let img = dir.join("sample.img");
        mkfs(&src, &img, opts, "8M");
        (img, files)
    }

    #[test]
    fn marked_free_space_is_invisible_until_a_file_exposes_it() {
        let t = tempfile::tempdir().unwrap();
        for opts in [
            &["-t", "ext4", "-b", "4096"][..],
            &["-t", "ext4", "-b", "1024", "-O", "^metadata_csum,^64bit"],
        ] {
            let dir = t.path().join(opts[3]);
            let (img, files) = sample_image(&dir, opts);
            let free_before = mount(&img).statfs().unwrap().bfree;
            let marked = fill_free_blocks(&img);
            assert_eq!(marked, free_before, "{opts:?}: every free block is marked");
            e2fsck_clean(&img);
            let fs = mount(&img);
            let tree = check_tree(&fs).unwrap();
            assert_eq!(tree.regular_files().len(), files.len(), "{opts:?}");
            for (name, data) in &files {
                let ino = tree.paths[name].ino;
                assert_eq!(
                    &fs.read(ino, 0, 0, data.len() as u32 + 10).unwrap(),
                    data,
                    "{opts:?}: {name} is untouched by the marking"
                );
            }
            assert_eq!(files_with_marker(&fs, &tree).unwrap(), vec![]);
            // The marker really is in the free space...
            let raw = std::fs::read(&img).unwrap();
            let bs = fs.block_size as usize;
            let (first, _) = free_block_ranges(&img)[0];
            assert_eq!(
                &raw[first as usize * bs..][..bs],
                &marker_block(bs, first)[..]
            );
            // ...and a file whose block holds it is found, with its offset and block number.
            let ino = tree.paths["d/f5"].ino;
            let inode = fs.read_inode(ino).unwrap();
            let Some(pblk) = fs.map_block(ino, &inode, 2).unwrap().status.pblk() else {
                panic!("d/f5 has data at block 2");
            };
            drop(fs);
            {
                use std::os::unix::fs::FileExt;
                let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
                let mut blk = marker_block(bs, 77);
                blk[..100].fill(0);
                f.write_all_at(&blk, pblk * bs as u64).unwrap();
            }
            let fs = mount(&img);
            let tree = check_tree(&fs).unwrap();
            let found = files_with_marker(&fs, &tree).unwrap();
            assert_eq!(
                found,
                vec![("d/f5".to_string(), 2 * bs as u64 + 128, 77)],
                "{opts:?}"
            );
        }
    }

    #[test]
    fn check_tree_accepts_a_clean_image_and_finds_damage() {
        let t = tempfile::tempdir().unwrap();
        let (img, _) = sample_image(t.path(), &["-t", "ext4", "-b", "4096"]);
        let clean = std::fs::read(&img).unwrap();
        let fs = mount(&img);
        let tree = check_tree(&fs).unwrap();
        // root, lost+found, d, d/e, 6 files (one with two names), the symlink.
        assert_eq!(tree.inodes, 11);
        assert_eq!(tree.paths["d/e/hard"].ino, tree.paths["d/f4"].ino);
        let overhead = overhead_blocks(&fs, &tree);
        assert!(overhead > 0);
        drop(fs);
        // Our replay of a clean image changes nothing the checks see.
        let fs = replay_in_memory(clean.clone()).unwrap();
        assert_eq!(check_tree_and_blocks(&fs, overhead).unwrap(), tree);

        let damaged = |cmd: &str| {
            std::fs::write(&img, &clean).unwrap();
            debugfs_w(&img, cmd);
            let fs = Fs::mount(
                Arc::new(FileDevice::open(&img, true).unwrap()),
                &MountOptions::default(),
            )
            .unwrap();
            check_tree_and_blocks(&fs, overhead)
                .map(|_| ())
                .expect_err(&format!("{cmd} went unnoticed"))
        };
        let (f2, f5, sym) = (
            ino_of(&img, "d/f2"),
            ino_of(&img, "d/f5"),
            ino_of(&img, "d/e/sym"),
        );
        let e = damaged(&format!("set_inode_field <{f2}> links_count 2"));
        assert!(e.contains("link count 2, 1 names"), "{e}");
        let e = damaged(&format!("freei <{f2}>"));
        assert!(e.contains("inodes in use in the bitmap"), "{e}");
        // Both the bitmap and the descriptor's count say free: the walk still finds it.
        let e = damaged(&format!("clri <{f2}>"));
        assert!(e.contains("d/f2"), "{e}");
        let e = damaged("unlink d/f3");
        assert!(
            e.contains("inodes in use, 9 reachable beside the root"),
            "{e}"
        );
        let e = damaged(&format!("set_inode_field <{f5}> blocks 8"));
        assert!(e.contains("blocks in use"), "{e}");
        let e = damaged("unlink d/e");
        assert!(e.contains("link count"), "{e}");
        let e = damaged(&format!("set_inode_field <{sym}> size 0"));
        assert!(e.contains("sym"), "{e}");
    }
}
