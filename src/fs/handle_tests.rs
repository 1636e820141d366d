//! Journal handles that do not take the namespace write lock: data-path steps of different files
//! run at the same time, inodes sharing an inode-table block never lose each other's update,
//! and writeback of many files beside namespace operations and forced commits leaves a clean
//! image with every file's contents (e2fsck, and the kernel reading them back).

use super::testutil::{ctx, kernel_mount, kernel_umount, mkfs_blank as mkfs};
use super::{Fs, MountOptions, ROOT_INO, SetAttr};
use crate::test_support::e2fsck_clean;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::time::Duration;

fn mount(img: &Path) -> Arc<Fs> {
    let dev = crate::blockdev::FileDevice::open(img, false).unwrap();
    let fs = Fs::mount_with_cache(Arc::new(dev), &MountOptions::rw(), 32 << 20).unwrap();
    assert!(!fs.is_read_only());
    Arc::new(fs)
}

/// A fresh image made with `opts`, mounted, with `n` empty files `{prefix}{i}` (consecutive
/// inodes: they share inode-table blocks).
fn fresh(
    opts: &[&str],
    size: &str,
    prefix: &str,
    n: usize,
) -> (tempfile::TempDir, std::path::PathBuf, Arc<Fs>, Vec<u64>) {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("img");
    mkfs(&img, opts, size);
    let fs = mount(&img);
    let inos = (0..n)
        .map(|i| {
            fs.mknod(
                ROOT_INO,
                format!("{prefix}{i}").as_bytes(),
                0o100644,
                0,
                &ctx(),
            )
            .unwrap()
            .ino
        })
        .collect();
    (t, img, fs, inos)
}

/// A thread committing every millisecond until `stop`; returns how many commits it asked for.
fn committer(fs: &Arc<Fs>, stop: &Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let (fs, stop) = (fs.clone(), stop.clone());
    std::thread::spawn(move || {
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            fs.sync().unwrap();
            std::thread::sleep(Duration::from_millis(1));
            n += 1;
        }
        n
    })
}

/// Run `f` on another thread; fail if it does not finish within `secs` (a hang).
fn watchdog<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what} hung (watchdog)"))
}

fn pattern(seed: u64, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| ((seed.wrapping_mul(0x9E37_79B9) ^ (i as u64).wrapping_mul(31)) >> 3) as u8 | 1)
        .collect()
}

/// Two files' data-path steps are open at once: neither waits for the other (with the
/// namespace write lock as the handle, the second would wait for the first forever here).
#[test]
fn data_steps_of_two_files_run_at_once() {
    let (_t, img, fs, inos) = fresh(&["-t", "ext4"], "32M", "f", 2);
    let (a, b) = (inos[0], inos[1]);
    let both_in = Arc::new(Barrier::new(2));
    let threads: Vec<_> = [a, b]
        .into_iter()
        .map(|ino| {
            let (fs, both_in) = (fs.clone(), both_in.clone());
            std::thread::spawn(move || {
                let d = fs.inode_data(ino).unwrap();
                let _step = fs.data_step(&d);
                // Both steps are open here, in the same running transaction.
                both_in.wait();
                assert_eq!(fs.gate.updates(), 2);
                both_in.wait();
            })
        })
        .collect();
    watchdog(30, "two data steps", move || {
        for t in threads {
            t.join().unwrap();
        }
    });
    // A commit after they ended finds no handle open.
    fs.sync().unwrap();
    assert_eq!(fs.gate.updates(), 0);
    fs.shutdown().unwrap();
    e2fsck_clean(&img);
}

/// Inodes sharing one inode-table block, stored by concurrent handles over and over (with
/// commits in between): each inode keeps exactly what its own handle last stored.
#[test]
fn inodes_sharing_a_table_block_keep_every_update() {
    // 1 KiB blocks of 256-byte inodes: four inodes per table block.
    let (_t, img, fs, inos) = fresh(&["-t", "ext4", "-b", "1024", "-I", "256"], "32M", "f", 8);
    let blocks: Vec<u64> = inos
        .iter()
        .map(|&i| fs.inode_location(i).unwrap().0)
        .collect();
    assert!(
        blocks.windows(4).any(|w| w.iter().all(|&b| b == w[0])),
        "four new inodes share a table block: {blocks:?}"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let committer = committer(&fs, &stop);
    let workers: Vec<_> = inos
        .iter()
        .map(|&ino| {
            let fs = fs.clone();
            std::thread::spawn(move || {
                let d = fs.inode_data(ino).unwrap();
                for round in 1..=400u32 {
                    let _step = fs.data_step(&d);
                    let mut i = fs.read_inode(ino).unwrap();
                    if round > 1 {
                        assert_eq!(
                            i.generation,
                            round - 1 + ino as u32 * 1000,
                            "inode {ino} lost its own update"
                        );
                    }
                    i.generation = round + ino as u32 * 1000;
                    fs.store_inode(ino, &i).unwrap();
                }
            })
        })
        .collect();
    watchdog(120, "the inode stores", move || {
        for w in workers {
            w.join().unwrap();
        }
    });
    stop.store(true, Ordering::Relaxed);
    assert!(committer.join().unwrap() > 0);
    for &ino in &inos {
        assert_eq!(
            fs.read_inode(ino).unwrap().generation,
            400 + ino as u32 * 1000
        );
    }
    fs.shutdown().unwrap();
    e2fsck_clean(&img);
}

/// The buffer lock itself: handles bumping their own byte of one metadata block, with the
/// window between read and write held open, lose no update.
#[test]
fn read_modify_writes_of_one_block_are_atomic() {
    use crate::alloc::MetaIo;
    let (_t, img, fs, inos) = fresh(&["-t", "ext4", "-b", "1024", "-I", "256"], "32M", "f", 1);
    let ino = inos[0];
    let (block, off) = fs.inode_location(ino).unwrap();
    let before = fs.read_meta_block(block).unwrap()[off + 0x64..off + 0x68].to_vec();
    let workers: Vec<_> = (0..4usize)
        .map(|k| {
            let fs = fs.clone();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    let _h = fs.ns_read();
                    let _h = fs.start_handle(1);
                    fs.modify_meta(block, &mut |d| {
                        // i_generation's four bytes, one per thread.
                        d[off + 0x64 + k] = d[off + 0x64 + k].wrapping_add(1);
                        std::thread::sleep(Duration::from_micros(50));
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    watchdog(60, "the block changes", move || {
        for w in workers {
            w.join().unwrap();
        }
    });
    let after = fs.read_meta_block(block).unwrap()[off + 0x64..off + 0x68].to_vec();
    for k in 0..4 {
        assert_eq!(
            after[k],
            before[k].wrapping_add(100),
            "byte {k} lost updates"
        );
    }
    // Put the generation back: the inode's checksum covers it.
    fs.modify_meta(block, &mut |d| {
        d[off + 0x64..off + 0x68].copy_from_slice(&before)
    })
    .unwrap();
    fs.read_inode(ino).unwrap();
    fs.shutdown().unwrap();
    e2fsck_clean(&img);
}

/// Writers of different files (their inodes share table blocks; allocations share bitmaps and
/// group descriptors) writing back and fsyncing at once, beside fallocate, namespace operations
/// (create, link, rename, chmod, unlink, mkdir) and forced commits, in a small journal so full
/// transactions force commits from handle starts too. Every file reads back as written, through
/// us and through the kernel, and e2fsck finds the image clean.
#[test]
fn concurrent_writeback_beside_namespace_ops_and_commits() {
    let (_t, img, fs, files) = fresh(
        &["-t", "ext4", "-b", "1024", "-I", "256", "-J", "size=1"],
        "96M",
        "w",
        4,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut side = Vec::new();
    {
        // Namespace operations on files whose inodes sit among the writers'.
        let (fs, stop) = (fs.clone(), stop.clone());
        side.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("ns{n}");
                let a = fs
                    .mknod(ROOT_INO, name.as_bytes(), 0o100644, 0, &ctx())
                    .unwrap();
                fs.write(a.ino, 0, &pattern(n, 3000), 0).unwrap();
                fs.link(a.ino, ROOT_INO, format!("{name}.l").as_bytes())
                    .unwrap();
                fs.rename(
                    ROOT_INO,
                    name.as_bytes(),
                    ROOT_INO,
                    format!("{name}.r").as_bytes(),
                    0,
                )
                .unwrap();
                fs.setattr(
                    a.ino,
                    &SetAttr {
                        mode: Some(0o100600),
                        ..Default::default()
                    },
                )
                .unwrap();
                if n.is_multiple_of(2) {
                    fs.unlink(ROOT_INO, format!("{name}.r").as_bytes()).unwrap();
                    fs.unlink(ROOT_INO, format!("{name}.l").as_bytes()).unwrap();
                    fs.forget(a.ino, 1);
                }
                if n.is_multiple_of(5) {
                    fs.mkdir(ROOT_INO, format!("d{n}").as_bytes(), 0o755, &ctx())
                        .unwrap();
                }
                n += 1;
            }
            n
        }));
    }
    side.push(committer(&fs, &stop));
    let writers: Vec<_> = files
        .iter()
        .enumerate()
        .map(|(k, &ino)| {
            let fs = fs.clone();
            std::thread::spawn(move || {
                let mut model: Vec<u8> = Vec::new();
                for round in 0..150u64 {
                    let off = (round * 37_000 + k as u64 * 5_000) % (3 << 20);
                    let data = pattern(round * 10 + k as u64, 20_000 + (round as usize % 7) * 999);
                    fs.write(ino, off, &data, 0).unwrap();
                    let end = off as usize + data.len();
                    if model.len() < end {
                        model.resize(end, 0);
                    }
                    model[off as usize..end].copy_from_slice(&data);
                    if k == 0 && round % 10 == 3 {
                        // fallocate past EOF keeps the size: unwritten blocks, reads as zeros.
                        fs.fallocate(
                            ino,
                            model.len() as u64 + 4096,
                            65536,
                            super::FALLOC_FL_KEEP_SIZE,
                        )
                        .unwrap();
                    }
                    if round % 4 == k as u64 % 4 {
                        fs.fsync(ino, false).unwrap();
                    }
                }
                (ino, model)
            })
        })
        .collect();
    let results = watchdog(240, "the writers", move || {
        writers
            .into_iter()
            .map(|w| w.join().unwrap())
            .collect::<Vec<_>>()
    });
    stop.store(true, Ordering::Relaxed);
    let counts: Vec<u64> = side.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        counts.iter().all(|&c| c > 0),
        "the side threads ran: {counts:?}"
    );
    for (ino, model) in &results {
        let got = fs.read(*ino, 0, 0, model.len() as u32 + 4096).unwrap();
        assert!(got == *model, "inode {ino} differs from its writer's model");
    }
    fs.shutdown().unwrap();
    drop(fs);
    e2fsck_clean(&img);
    let mnt = kernel_mount(&img, "loop,ro");
    for (k, (_, model)) in results.iter().enumerate() {
        let got = std::fs::read(mnt.join(format!("w{k}"))).unwrap();
        assert!(got == *model, "the kernel reads w{k} differently");
    }
    kernel_umount(&mnt);
}

/// Several fsyncs of one file at once, beside a writer: their writeback plans and completions
/// of the same file run in parallel (under the file's data lock), and the file reads back as
/// written with a clean image.
#[test]
fn concurrent_fsyncs_of_one_file() {
    let (_t, img, fs, inos) = fresh(&["-t", "ext4", "-b", "1024"], "64M", "f", 1);
    let ino = inos[0];
    let model = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    for round in 0..20u64 {
        // Many separate delayed runs, so planners take different pages of one delayed extent.
        for i in 0..40u64 {
            let off = (i * 2 + round % 2) * 8192 + round * 100;
            let data = pattern(round * 100 + i, 5000);
            fs.write(ino, off, &data, 0).unwrap();
            let mut m = model.lock().unwrap();
            let end = off as usize + data.len();
            if m.len() < end {
                m.resize(end, 0);
            }
            m[off as usize..end].copy_from_slice(&data);
        }
        let syncers: Vec<_> = (0..4)
            .map(|_| {
                let fs = fs.clone();
                std::thread::spawn(move || fs.fsync(ino, false).unwrap())
            })
            .collect();
        watchdog(60, "the fsyncs", move || {
            for s in syncers {
                s.join().unwrap();
            }
        });
    }
    let want = model.lock().unwrap().clone();
    assert!(fs.read(ino, 0, 0, want.len() as u32 + 1).unwrap() == want);
    fs.shutdown().unwrap();
    e2fsck_clean(&img);
}
