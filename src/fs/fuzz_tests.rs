//! Corruption fuzzing of the write paths: small images made by mke2fs, a few bytes of their
//! metadata (inode tables, directory, extent, indirect and xattr blocks, bitmaps, group
//! descriptors) damaged at random, then mounted writable and put through a random sequence of
//! operations. Every operation may fail — with an errno — but none may panic or hang.
//!
//! `FUZZ_SEED=<n>` replays one seed (of every base image); `FUZZ_ITERS=<n>` changes how many
//! seeds each base image gets.

use super::testutil::*;
use super::*;
use crate::blockdev::MemDevice;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

/// A deterministic xorshift64* generator.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

/// What a metadata block holds (decides which targeted field corruptions make sense).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    GroupDesc,
    Bitmap,
    /// An inode table block holding a used inode at this byte offset.
    Inode(usize),
    Dir,
    ExtentTree,
    Indirect,
    Xattr,
}

#[derive(Clone, Debug)]
struct Target {
    block: u64,
    kind: Kind,
    /// The inode the block belongs to (0 for shared structures).
    owner: u64,
}

struct Base {
    name: String,
    image: Vec<u8>,
    block_size: usize,
    targets: Vec<Target>,
    /// Directories and other inodes of the tree, for the operations to aim at.
    dirs: Vec<Ino>,
    files: Vec<Ino>,
    names: Vec<Vec<u8>>,
}

fn debugfs(img: &Path, cmds: &str) -> String {
    let cmdfile = img.with_extension("cmds");
    std::fs::write(&cmdfile, cmds).unwrap();
    let out = Command::new("debugfs")
        .env("DEBUGFS_PAGER", "__none__")
        .env("PAGER", "cat")
        .arg("-f")
        .arg(&cmdfile)
        .arg(img)
        .output()
        .expect("debugfs (e2fsprogs) is required");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn debugfs_w(img: &Path, cmds: &str) {
    let cmdfile = img.with_extension("wcmds");
    std::fs::write(&cmdfile, cmds).unwrap();
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&cmdfile)
        .arg(img)
        .output()
        .expect("debugfs (e2fsprogs) is required");
    assert!(out.status.success());
}

/// Numbers following `key` on every line of `s`.
fn numbers_after(s: &str, key: &str) -> Vec<u64> {
    let mut v = Vec::new();
    for line in s.lines() {
        let mut rest = line;
        while let Some(p) = rest.find(key) {
            rest = &rest[p + key.len()..];
            let n: String = rest
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            if let Ok(n) = n.parse() {
                v.push(n);
            }
        }
    }
    v
}

/// The generated source tree: a big directory (htree after e2fsck -D), a small one, sparse
/// files with deep extent trees, fast and slow symlinks, files with large xattrs.
fn make_tree(src: &Path, bs: usize, inline: bool) -> Vec<String> {
    let mut paths = Vec::new();
    std::fs::create_dir_all(src.join("big")).unwrap();
    std::fs::create_dir_all(src.join("small/sub")).unwrap();
    paths.extend(["big", "small", "small/sub"].map(String::from));
    for i in 0..150 {
        let p = format!("big/entry-with-a-rather-long-name-{i:04}");
        std::fs::write(src.join(&p), format!("{i}\n").repeat(i % 7)).unwrap();
        if i % 10 == 0 {
            paths.push(p);
        }
    }
    for i in 0..5 {
        let p = format!("small/f{i}");
        std::fs::write(src.join(&p), vec![b'a' + i as u8; i * 3000]).unwrap();
        paths.push(p);
    }
    if inline {
        std::fs::write(src.join("small/tiny"), b"inline data").unwrap();
        paths.push("small/tiny".into());
    }
    // Sparse files: 20 extents (a leaf block) and, with 1 KiB blocks, 400 (an index level).
    for (name, n) in [
        ("sparse", 20u64),
        ("deep", if bs == 1024 { 400 } else { 30 }),
    ] {
        let mut f = std::fs::File::create(src.join(name)).unwrap();
        for i in 0..n {
            f.seek(SeekFrom::Start(i * 2 * bs as u64)).unwrap();
            f.write_all(&vec![b'x'; bs]).unwrap();
        }
        paths.push(name.into());
    }
    // A file big enough for double-indirect blocks on ext3 with 1 KiB blocks.
    std::fs::write(src.join("long"), vec![b'l'; 300 * 1024]).unwrap();
    paths.push("long".into());
    std::os::unix::fs::symlink("small/f1", src.join("fastlink")).unwrap();
    std::os::unix::fs::symlink("s/".repeat(60), src.join("slowlink")).unwrap();
    paths.extend(["fastlink", "slowlink"].map(String::from));
    std::fs::write(src.join("xa"), b"has xattrs").unwrap();
    paths.push("xa".into());
    paths
}

fn build_base(dir: &Path, name: &str, opts: &[&str], bs: usize, size: &str) -> Base {
    let src = dir.join(format!("src-{name}"));
    let inline = opts.iter().any(|o| o.contains("inline_data"));
    let paths = make_tree(&src, bs, inline);
    let img = dir.join(format!("img-{name}"));
    // A fixed UUID and directory hash seed: the same seed damages the same image layout on every
    // machine, so a failure reproduces.
    let mut all = opts.to_vec();
    all.extend([
        "-U",
        "4a1d2c3b-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
        "-E",
        "hash_seed=9b8a7c6d-5e4f-4321-8fed-cba987654321",
    ]);
    mkfs(&src, &img, &all, size);
    // Extended attributes big enough to need an xattr block, on a file and a directory.
    let big = "v".repeat(bs / 3);
    debugfs_w(
        &img,
        &format!(
            "ea_set /xa user.one {big}\nea_set /xa user.two {big}\nea_set /small user.d {big}\nea_set /small user.e {big}\n"
        ),
    );
    let check = Command::new("e2fsck")
        .arg("-fn")
        .arg(&img)
        .output()
        .unwrap();
    assert!(check.status.success(), "{name}: base image not clean");

    let mut targets = Vec::new();
    let stats = debugfs(&img, "stats\n");
    for b in numbers_after(&stats, "block bitmap at ")
        .into_iter()
        .chain(numbers_after(&stats, "inode bitmap at "))
    {
        targets.push(Target {
            block: b,
            kind: Kind::Bitmap,
            owner: 0,
        });
    }
    let first_data_block = if bs == 1024 { 1 } else { 0 };
    targets.push(Target {
        block: first_data_block + 1,
        kind: Kind::GroupDesc,
        owner: 0,
    });

    // Mount the clean image once for inode locations.
    let image = std::fs::read(&img).unwrap();
    let fs = Fs::mount(
        Arc::new(MemDevice::from_vec(image.clone())),
        &MountOptions::ro(),
    )
    .unwrap();
    let mut cmds = String::from("stat /\nstat /lost+found\nstat <7>\nstat <8>\n");
    for p in &paths {
        cmds.push_str(&format!("stat /{p}\n"));
    }
    let out = debugfs(&img, &cmds);
    let (mut dirs, mut files) = (vec![], vec![]);
    // Each `stat` answer starts with "Inode: N   Type: T".
    for chunk in out.split("Inode: ").skip(1) {
        let ino: u64 = chunk
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .unwrap();
        let is_dir = chunk.contains("Type: directory");
        if is_dir {
            dirs.push(ino);
        } else {
            files.push(ino);
        }
        let (iblk, ioff) = fs.inode_location(ino).unwrap();
        targets.push(Target {
            block: iblk,
            kind: Kind::Inode(ioff),
            owner: ino,
        });
        for acl in numbers_after(chunk, "File ACL: ") {
            if acl != 0 {
                targets.push(Target {
                    block: acl,
                    kind: Kind::Xattr,
                    owner: ino,
                });
            }
        }
        // Block lists: "(ETB0):1234, (0-11):5000-5011, (IND):77, ..."
        let Some(p) = chunk.find("EXTENTS:\n").or_else(|| chunk.find("BLOCKS:\n")) else {
            continue;
        };
        let list = chunk[p..].lines().nth(1).unwrap_or("");
        for item in list.split(", ") {
            let Some((label, range)) = item.split_once("):") else {
                continue;
            };
            let label = label.trim_start_matches('(');
            let kind = if label.starts_with("ETB") {
                Kind::ExtentTree
            } else if label.ends_with("IND") {
                Kind::Indirect
            } else if is_dir {
                Kind::Dir
            } else {
                continue;
            };
            let range = range.split_whitespace().next().unwrap_or("");
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            let (Ok(a), Ok(b)) = (a.parse::<u64>(), b.parse::<u64>()) else {
                continue;
            };
            for blk in a..=b.min(a + 8) {
                targets.push(Target {
                    block: blk,
                    kind,
                    owner: ino,
                });
            }
        }
    }
    drop(fs);
    for k in [Kind::Dir, Kind::ExtentTree, Kind::Xattr] {
        if !(opts.contains(&"ext3") && k == Kind::ExtentTree) {
            assert!(
                targets.iter().any(|t| t.kind == k),
                "{name}: no {k:?} block found"
            );
        }
    }
    let names = paths
        .iter()
        .map(|p| p.rsplit('/').next().unwrap().as_bytes().to_vec())
        .collect();
    Base {
        name: name.into(),
        image,
        block_size: bs,
        targets,
        dirs,
        files,
        names,
    }
}

fn put(buf: &mut [u8], off: usize, width: usize, v: u64) {
    let bytes = v.to_le_bytes();
    for i in 0..width {
        if off + i < buf.len() {
            buf[off + i] = bytes[i];
        }
    }
}

/// Damage one metadata block of `img`; returns a description.
fn corrupt(rng: &mut Rng, base: &Base, img: &mut [u8], focus: &mut Vec<Ino>) -> String {
    let bs = base.block_size;
    let t = rng.pick(&base.targets).clone();
    if t.owner != 0 {
        focus.push(t.owner);
    }
    let start = t.block as usize * bs;
    let blk = &mut img[start..start + bs];
    let extremes = [
        0u64,
        1,
        2,
        3,
        0x7F,
        0xFF,
        0x8000,
        0xFFFF,
        0x7FFF_FFFF,
        0xFFFF_FFFF,
        bs as u64,
        bs as u64 + 4,
        rng.below(1 << 20),
    ];
    let what = match rng.below(10) {
        0 => {
            for b in blk.iter_mut() {
                *b = rng.next() as u8;
            }
            "whole block garbage".to_string()
        }
        1 => {
            blk.fill(0);
            "block zeroed".to_string()
        }
        2..=4 => {
            let n = 1 + rng.below(6);
            let mut d = String::new();
            for _ in 0..n {
                // Most structures keep their headers near the start: favour it.
                let off = if rng.chance(50) {
                    rng.below(64.min(bs as u64))
                } else {
                    rng.below(bs as u64)
                } as usize;
                let off = match t.kind {
                    Kind::Inode(io) if rng.chance(80) => io + rng.below(160) as usize,
                    _ => off,
                };
                blk[off] = rng.next() as u8;
                d.push_str(&format!(" @{off}={:#x}", blk[off]));
            }
            format!("random bytes{d}")
        }
        _ => {
            // A field set to an extreme value.
            let v = *rng.pick(&extremes);
            let (off, width, field) = match t.kind {
                Kind::Inode(io) => {
                    let n = rng.below(15) as usize;
                    *rng.pick(&[
                        (io, 2, "i_mode"),
                        (io + 0x04, 4, "i_size_lo"),
                        (io + 0x6C, 4, "i_size_high"),
                        (io + 0x1A, 2, "i_links_count"),
                        (io + 0x1C, 4, "i_blocks_lo"),
                        (io + 0x20, 4, "i_flags"),
                        (io + 0x28, 2, "eh_magic"),
                        (io + 0x2A, 2, "eh_entries"),
                        (io + 0x2C, 2, "eh_max"),
                        (io + 0x2E, 2, "eh_depth"),
                        (io + 0x34, 4, "i_block[3] (ee_block / ei_block)"),
                        (io + 0x38, 2, "i_block[4] lo (ee_len / ei_leaf)"),
                        (io + 0x3C, 4, "i_block[5] (ee_start_lo)"),
                        (io + 0x28 + 4 * n, 4, "i_block[n]"),
                        (io + 0x68, 4, "i_file_acl_lo"),
                        (io + 0x80, 2, "i_extra_isize"),
                    ])
                }
                Kind::ExtentTree => {
                    let e = 12 + 12 * rng.below(4) as usize;
                    *rng.pick(&[
                        (2, 2, "eh_entries"),
                        (4, 2, "eh_max"),
                        (6, 2, "eh_depth"),
                        (e, 4, "ee_block"),
                        (e + 4, 2, "ee_len"),
                        (e + 6, 2, "ee_start_hi"),
                        (e + 8, 4, "ee_start_lo / ei_leaf"),
                    ])
                }
                Kind::Dir => {
                    // rec_len/name_len of one of the first entries, or htree root fields.
                    *rng.pick(&[
                        (4, 2, "rec_len[0]"),
                        (6, 1, "name_len[0]"),
                        (0, 4, "inode[0]"),
                        (12, 4, "inode[1]"),
                        (16, 2, "rec_len[1]"),
                        (18, 1, "name_len[1]"),
                        (0x1C, 1, "dx hash_version"),
                        (0x1E, 1, "dx indirect_levels"),
                        (0x20, 2, "dx limit"),
                        (0x22, 2, "dx count"),
                        (0x24, 4, "dx block[0]"),
                        (0x2C, 4, "dx block[1]"),
                        (0x0A, 2, "dx node limit"),
                        (0x0C, 2, "dx node count"),
                        (0x10, 4, "dx node block[0]"),
                    ])
                }
                Kind::Indirect => {
                    let o = 4 * rng.below(bs as u64 / 4) as usize;
                    (o, 4, "indirect pointer")
                }
                Kind::Xattr => *rng.pick(&[
                    (4, 4, "h_refcount"),
                    (8, 4, "h_blocks"),
                    (32, 1, "e_name_len"),
                    (33, 1, "e_name_index"),
                    (34, 2, "e_value_offs"),
                    (36, 4, "e_value_inum"),
                    (40, 4, "e_value_size"),
                ]),
                Kind::Bitmap | Kind::GroupDesc => {
                    let o = rng.below(bs as u64 / 4) as usize * 4;
                    (o, 4, "word")
                }
            };
            put(blk, off, width, v);
            format!("{field} (+{off}) = {v:#x}")
        }
    };
    format!(
        "{}: block {} ({:?} of inode {}): {what}",
        base.name, t.block, t.kind, t.owner
    )
}

/// A random sequence of operations; results are ignored (only panics and hangs count).
/// Operations aim at the damaged inodes (`focus`) half of the time.
fn exercise(fs: &Fs, rng: &mut Rng, base: &Base, focus: &[Ino]) {
    let c = ctx();
    let mut dirs = base.dirs.clone();
    let mut inos: Vec<Ino> = base.files.clone();
    inos.extend(&base.dirs);
    let mut names = base.names.clone();
    for i in 0..6 {
        names.push(format!("new{i}").into_bytes());
    }
    let focus_dirs: Vec<Ino> = focus
        .iter()
        .copied()
        .filter(|i| base.dirs.contains(i))
        .collect();
    // Names of the damaged directories' entries, as far as they can be listed.
    for &d in &focus_dirs {
        if let Ok(fh) = fs.opendir(d, 0) {
            let _ = fs.readdir(d, fh, 0, &mut |e| {
                if rng.chance(20) {
                    names.push(e.name.clone());
                }
                names.len() < 200
            });
            fs.releasedir(d, fh);
        }
    }
    let bs = base.block_size as u64;
    for _ in 0..60 {
        let d = if !focus_dirs.is_empty() && rng.chance(50) {
            *rng.pick(&focus_dirs)
        } else {
            *rng.pick(&dirs)
        };
        let d2 = *rng.pick(&dirs);
        let ino = if !focus.is_empty() && rng.chance(50) {
            *rng.pick(focus)
        } else {
            *rng.pick(&inos)
        };
        let name = rng.pick(&names).clone();
        let name2 = rng.pick(&names).clone();
        match rng.below(22) {
            0 | 1 => {
                // Walk a directory: list it and look every entry up.
                if let Ok(fh) = fs.opendir(d, 0) {
                    let mut found = Vec::new();
                    let _ = fs.readdir(d, fh, 0, &mut |e| {
                        found.push((e.name.clone(), e.ino));
                        found.len() < 5000
                    });
                    fs.releasedir(d, fh);
                    for (n, i) in found.iter().take(300) {
                        if let Ok(a) = fs.lookup(d, n) {
                            if a.mode & libc::S_IFMT == libc::S_IFDIR && !dirs.contains(&a.ino) {
                                dirs.push(a.ino);
                            }
                            if !inos.contains(&a.ino) {
                                inos.push(a.ino);
                            }
                        }
                        let _ = fs.getattr(*i);
                    }
                }
            }
            2 => {
                let _ = fs.read(ino, 0, rng.below(1 << 20), (rng.below(4) * bs) as u32 + 1);
                let _ = fs.readlink(ino);
            }
            3 => {
                let _ = fs.getxattr(ino, b"user.one");
                let _ = fs.listxattr(ino);
                let _ = fs.lseek(ino, rng.below(1 << 20), SEEK_DATA);
                let _ = fs.lseek(ino, rng.below(1 << 20), SEEK_HOLE);
            }
            4 => {
                if let Ok(a) = fs.mknod(d, &name, libc::S_IFREG | 0o644, 0, &c) {
                    inos.push(a.ino);
                }
            }
            5 => {
                if let Ok(a) = fs.mkdir(d, &name, 0o755, &c) {
                    dirs.push(a.ino);
                    inos.push(a.ino);
                }
            }
            6 => {
                let target = if rng.chance(50) {
                    b"short".to_vec()
                } else {
                    vec![b'y'; 200]
                };
                if let Ok(a) = fs.symlink(d, &name, &target, &c) {
                    inos.push(a.ino);
                }
            }
            7 => {
                count(fs, fs.link(ino, d, &name));
            }
            8 | 9 => {
                count(fs, fs.unlink(d, &name));
            }
            10 => {
                count(fs, fs.rmdir(d, &name));
            }
            11 | 12 => {
                let flags = *rng.pick(&[0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE]);
                count(fs, fs.rename(d, &name, d2, &name2, flags));
            }
            13 | 14 => {
                let size = *rng.pick(&[0, 1, 100, bs - 1, bs * 3 + 7, 1 << 20, 1 << 30]);
                let s = SetAttr {
                    size: Some(size),
                    ..Default::default()
                };
                count(fs, fs.setattr(ino, &s));
            }
            15 => {
                let s = SetAttr {
                    mode: Some(0o600),
                    uid: Some(1),
                    mtime: Some(TimeSet::Now),
                    ..Default::default()
                };
                count(fs, fs.setattr(ino, &s));
            }
            16 => {
                let len = *rng.pick(&[1usize, 50, bs as usize / 3, bs as usize]);
                let n = *rng.pick(&[&b"user.one"[..], b"user.two", b"user.new", b"user.d"]);
                count(fs, fs.setxattr(ino, n, &vec![b'q'; len], 0));
            }
            17 => {
                let n = *rng.pick(&[&b"user.one"[..], b"user.two", b"user.d", b"user.e"]);
                count(fs, fs.removexattr(ino, n));
            }
            18 => {
                count(fs, fs.sync());
            }
            19 => {
                if let Ok(a) = fs.lookup(d, &name) {
                    count(fs, fs.unlink(d, &name));
                    count(fs, fs.rmdir(d, &name));
                    fs.forget(a.ino, 1);
                }
            }
            20 => {
                let _ = fs.tmpfile(d, libc::S_IFREG | 0o600, &c);
            }
            _ => {
                let _ = fs.statfs();
                let _ = fs.peek(d, &name);
            }
        }
    }
    count(fs, fs.shutdown());
}

static MOUNTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static OPS_OK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static OPS_ERR: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

static ERRNOS: std::sync::Mutex<std::collections::BTreeMap<i32, u64>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

fn count<T>(fs: &Fs, r: Result<T>) {
    let c = if r.is_ok() { &OPS_OK } else { &OPS_ERR };
    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Err(e) = r {
        // As the FUSE layer does: corruption follows the superblock's error policy.
        fs.note_error(e);
        *ERRNOS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(e.0)
            .or_default() += 1;
    }
}

fn run_one(base: Arc<Base>, seed: u64) -> std::result::Result<(), String> {
    let mut rng = Rng::new(seed ^ 0x5151_0000);
    let mut img = base.image.clone();
    let mut what = Vec::new();
    let mut focus = Vec::new();
    for _ in 0..1 + rng.below(3) {
        what.push(corrupt(&mut rng, &base, &mut img, &mut focus));
    }
    let what = what.join("; ");
    let (tx, rx) = mpsc::channel();
    let b = base.clone();
    std::thread::Builder::new()
        .name(format!("fuzz-{seed}"))
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let dev = Arc::new(MemDevice::from_vec(img));
                let ro = rng.chance(10);
                if let Ok(fs) = Fs::mount(
                    dev,
                    &MountOptions {
                        read_only: ro,
                        ..Default::default()
                    },
                ) {
                    MOUNTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    exercise(&fs, &mut rng, &b, &focus);
                }
            }));
            let _ = tx.send(r.is_ok());
        })
        .unwrap();
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(true) => Ok(()),
        Ok(false) | Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err(format!("seed {seed}: PANIC after {what}"))
        }
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!("seed {seed}: HANG after {what}")),
    }
}

#[test]
fn corrupt_metadata_never_panics_or_hangs() {
    let t = tempfile::tempdir().unwrap();
    let variants: &[(&str, &[&str], usize, &str)] = &[
        (
            "ext4-4k-nocsum",
            &[
                "-t",
                "ext4",
                "-b",
                "4096",
                "-e",
                "continue",
                "-O",
                "^metadata_csum,^has_journal",
            ],
            4096,
            "8M",
        ),
        (
            "ext4-1k-nocsum-journal",
            &[
                "-t",
                "ext4",
                "-b",
                "1024",
                "-O",
                "^metadata_csum",
                "-J",
                "size=1",
            ],
            1024,
            "8M",
        ),
        (
            "ext4-1k-csum",
            &[
                "-t",
                "ext4",
                "-b",
                "1024",
                "-e",
                "continue",
                "-O",
                "^has_journal",
            ],
            1024,
            "8M",
        ),
        (
            "ext4-4k-inline-nocsum",
            &[
                "-t",
                "ext4",
                "-b",
                "4096",
                "-e",
                "continue",
                "-O",
                "^metadata_csum,^has_journal,inline_data",
            ],
            4096,
            "8M",
        ),
        (
            "ext3-1k",
            &[
                "-t",
                "ext3",
                "-b",
                "1024",
                "-e",
                "continue",
                "-O",
                "^has_journal",
            ],
            1024,
            "8M",
        ),
    ];
    let bases: Vec<Arc<Base>> = variants
        .iter()
        .map(|(n, o, bs, sz)| Arc::new(build_base(t.path(), n, o, *bs, sz)))
        .collect();
    let iters: u64 = std::env::var("FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let seeds: Vec<u64> = match std::env::var("FUZZ_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(s) => vec![s],
        None => (0..iters).collect(),
    };
    let mut failures = Vec::new();
    'outer: for base in &bases {
        for &seed in &seeds {
            if let Err(e) = run_one(base.clone(), seed) {
                let hang = e.contains("HANG");
                failures.push(e);
                if hang || failures.len() >= 30 {
                    // A hung thread keeps spinning: stop here.
                    break 'outer;
                }
            }
        }
    }
    eprintln!(
        "fuzz: {} runs, {} mounted, write ops ok {} / failed {}",
        bases.len() * seeds.len(),
        MOUNTED.load(std::sync::atomic::Ordering::Relaxed),
        OPS_OK.load(std::sync::atomic::Ordering::Relaxed),
        OPS_ERR.load(std::sync::atomic::Ordering::Relaxed)
    );
    eprintln!(
        "fuzz: errnos {:?}",
        ERRNOS.lock().unwrap_or_else(|p| p.into_inner())
    );
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Regression (fuzz seed 23, ext3-1k): a corrupt, huge `i_size` made SEEK_DATA step one block
/// at a time through the 2^38 blocks past what a block map can address (indirect maps end at
/// the triple-indirect range, extent maps at 2^32 blocks). The hole past the map is now one run.
#[test]
fn seek_past_the_block_map_is_one_hole() {
    let t = tempfile::tempdir().unwrap();
    for (name, opts) in [
        (
            "ext3",
            &["-t", "ext3", "-b", "1024", "-O", "^has_journal"][..],
        ),
        (
            "ext4",
            &["-t", "ext4", "-b", "1024", "-O", "^has_journal"][..],
        ),
    ] {
        let src = t.path().join(format!("src-{name}"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("f"), b"data").unwrap();
        let img = t.path().join(format!("img-{name}"));
        mkfs(&src, &img, opts, "4M");
        // 2^48 bytes: 2^38 blocks of 1 KiB.
        debugfs_w(&img, "sif /f size 0x1000000000000\n");
        let image = std::fs::read(&img).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let dev = Arc::new(MemDevice::from_vec(image));
            let fs = Fs::mount(dev, &MountOptions::rw()).unwrap();
            let ino = fs.lookup(ROOT_INO, b"f").unwrap().ino;
            let r = (
                fs.lseek(ino, 4096, SEEK_DATA),
                fs.lseek(ino, 0, SEEK_HOLE),
                fs.read(ino, 0, 1 << 47, 4096).map(|v| v.len()),
            );
            let _ = tx.send(r);
        });
        let (data, hole, read) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("lseek past the block map hangs");
        assert_eq!(data, Err(Errno::ENXIO), "{name}");
        assert_eq!(hole, Ok(1024), "{name}");
        assert_eq!(read, Ok(4096), "{name}");
    }
}

/// A journal inode whose size is larger than the file system is refused at mount (it used to
/// size the journal's block map by `i_size` before mapping a single block).
#[test]
fn huge_journal_inode_size_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let img = t.path().join("img");
    mkfs(&src, &img, &["-t", "ext4", "-b", "4096"], "8M");
    debugfs_w(&img, "sif <8> size 0x7fffffffffff0000\n");
    let dev = Arc::new(MemDevice::from_vec(std::fs::read(&img).unwrap()));
    let r = Fs::mount(dev, &MountOptions::rw());
    let err = r.err().expect("the mount should fail");
    assert!(err.contains("journal") || err.contains("clean"), "{err}");
}
