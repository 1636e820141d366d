//! Giving the page cache back under host memory pressure, with a scripted memory source: clean
//! pages go first, dirty ones are written back and go when that is not enough, a working set
//! stays, and every byte reads back afterwards (e2fsck clean).

use crate::fs::testutil::ctx;
use crate::fs::testutil::mkfs_blank as mkfs;
use crate::fs::{Fs, MountOptions, ROOT_INO};
use crate::pagecache::PAGE_SIZE;
use crate::pagecache::pressure::MemorySource;
use crate::test_support::e2fsck_clean;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

const MIB: u64 = 1 << 20;

/// A memory source whose shortage the test sets.
#[derive(Default)]
struct Scripted(AtomicU64);

impl MemorySource for Scripted {
    fn shortage(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

fn write_all(fs: &Fs, ino: u64, data: &[u8]) {
    for (i, chunk) in data.chunks(MIB as usize).enumerate() {
        fs.write(ino, i as u64 * MIB, chunk, 0).unwrap();
    }
}

fn pages(bytes: u64) -> usize {
    (bytes / PAGE_SIZE as u64) as usize
}

/// A 128 MiB image mounted with a 64 MiB cache and a scripted memory source, with two empty
/// files, `clean` and `dirty`.
fn setup() -> (tempfile::TempDir, Fs, Arc<Scripted>, [u64; 2]) {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("img");
    mkfs(&img, &["-t", "ext4", "-b", "4096"], "128M");
    let dev = crate::blockdev::FileDevice::open(&img, false).unwrap();
    let fs = Fs::mount_with_cache(Arc::new(dev), &MountOptions::rw(), 64 * MIB).unwrap();
    let memory = Arc::new(Scripted::default());
    fs.set_memory_source(memory.clone());
    let files = [b"clean".as_slice(), b"dirty"]
        .map(|name| fs.mknod(ROOT_INO, name, 0o100644, 0, &ctx()).unwrap().ino);
    (t, fs, memory, files)
}

#[test]
fn memory_pressure_gives_the_cache_back() {
    let (t, fs, memory, [clean, dirty]) = setup();
    let img = t.path().join("img");
    let pc = &fs.data.pc;
    let a = content(1, (24 * MIB) as usize);
    let b = content(2, (12 * MIB) as usize);
    write_all(&fs, clean, &a);
    fs.fsync(clean, false).unwrap();
    write_all(&fs, dirty, &b);
    assert!(pc.resident_pages() >= pages(36 * MIB));
    assert_eq!(pc.dirty_pages(), pages(12 * MIB));

    // No pressure: nothing moves.
    let held = pc.held_pages();
    assert_eq!(fs.relieve_memory_pressure(), 0);
    assert_eq!(pc.held_pages(), held);

    // Short by 10 MiB: at least that goes, from the clean pages; the dirty ones stay dirty.
    memory.0.store(10 * MIB, Ordering::Relaxed);
    let freed = fs.relieve_memory_pressure();
    assert!(freed >= pages(10 * MIB), "gave back {freed} pages");
    assert_eq!(pc.held_pages(), held - freed);
    assert_eq!(pc.dirty_pages(), pages(12 * MIB), "clean pages were enough");

    // Short by far more than the cache: the dirty data goes home and the cache shrinks to its
    // working set (a sixteenth of its size).
    memory.0.store(1 << 30, Ordering::Relaxed);
    fs.relieve_memory_pressure();
    assert_eq!(pc.dirty_pages(), 0, "dirty pages were written back");
    assert!(
        pc.held_pages() <= pages(64 * MIB) / 16,
        "{} pages held",
        pc.held_pages()
    );

    // The pressure is over: reads fill the cache again, and every byte is there.
    memory.0.store(0, Ordering::Relaxed);
    assert_eq!(fs.read(clean, 0, 0, a.len() as u32).unwrap(), a);
    assert_eq!(fs.read(dirty, 0, 0, b.len() as u32).unwrap(), b);
    assert_eq!(fs.relieve_memory_pressure(), 0);
    fs.shutdown().unwrap();
    drop(fs);
    e2fsck_clean(&img);
}

/// A read (or write) finding memory short evicts clean pages itself, without waiting for the
/// flusher: the kernel's direct reclaim. It writes nothing back.
#[test]
fn reads_and_writes_reclaim_at_once_when_memory_is_short() {
    let (t, fs, memory, [clean, dirty]) = setup();
    let img = t.path().join("img");
    let pc = &fs.data.pc;
    let a = content(3, (24 * MIB) as usize);
    write_all(&fs, clean, &a);
    fs.fsync(clean, false).unwrap();
    write_all(&fs, dirty, &content(4, (4 * MIB) as usize));
    let held = pc.held_pages();

    memory.0.store(12 * MIB, Ordering::Relaxed);
    std::thread::sleep(super::pressure::DIRECT_CHECK * 2);
    assert_eq!(fs.read(clean, 0, 0, 4096).unwrap(), &a[..4096]);
    assert!(
        pc.held_pages() + pages(12 * MIB) <= held,
        "a read gave back {} pages",
        held - pc.held_pages()
    );
    assert_eq!(pc.dirty_pages(), pages(4 * MIB), "nothing was written back");

    // A write looks too.
    let held = pc.held_pages();
    std::thread::sleep(super::pressure::DIRECT_CHECK * 2);
    fs.write(dirty, 0, b"x", 0).unwrap();
    assert!(pc.held_pages() < held, "a write gave nothing back");
    memory.0.store(0, Ordering::Relaxed);
    assert_eq!(fs.read(clean, 0, 0, a.len() as u32).unwrap(), a);
    fs.shutdown().unwrap();
    drop(fs);
    e2fsck_clean(&img);
}
