//! Allocator tests on real mke2fs images: every allocation lands on a free block/inode, and after
//! everything is freed again e2fsck finds bitmaps, checksums and counters exact.

use super::*;
use crate::blockdev::{BlockDevice, MemDevice};
use crate::errno::Errno;
use crate::ondisk::group::layout;
use crate::ondisk::superblock::{SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE};
use crate::test_support::e2fsck_clean;
use std::collections::{HashMap, HashSet};
use std::process::Command;

struct MemIo {
    dev: MemDevice,
    bs: usize,
    written: Mutex<HashMap<u64, Vec<u8>>>,
}

impl MetaIo for MemIo {
    fn read_meta(&self, block: u64) -> Result<Arc<[u8]>> {
        if let Some(b) = self.written.lock().unwrap().get(&block) {
            return Ok(Arc::from(b.clone()));
        }
        let mut v = vec![0u8; self.bs];
        self.dev.read_at(&mut v, block * self.bs as u64).unwrap();
        Ok(Arc::from(v))
    }
    fn write_meta(&self, block: u64, data: Vec<u8>) {
        self.written.lock().unwrap().insert(block, data);
    }
}

impl MemIo {
    fn flush_to_dev(&self) {
        for (b, d) in self.written.lock().unwrap().drain() {
            self.dev.write_at(&d, b * self.bs as u64).unwrap();
        }
    }
}

fn image(opts: &[&str]) -> (tempfile::TempDir, std::path::PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("img");
    let out = Command::new("mke2fs")
        .args(["-q", "-F"])
        .args(opts)
        .arg(&img)
        .arg("64M")
        .output()
        .expect("mke2fs (e2fsprogs) is required for these tests");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (t, img)
}

fn allocator_for(dev: &MemDevice) -> (Allocator, usize) {
    let mut raw = vec![0u8; SUPERBLOCK_SIZE];
    dev.read_at(&mut raw, SUPERBLOCK_OFFSET).unwrap();
    let sb = Superblock::parse(&raw).unwrap();
    let geo = Geometry::from_superblock(&sb);
    let bs = geo.block_size as usize;
    let per = layout::descs_per_block(&sb);
    let mut groups = Vec::new();
    let mut locs = Vec::new();
    for g in 0..sb.group_count() {
        let blk = layout::descriptor_block(&sb, g / per);
        let off = (g % per) as usize * geo.desc_size;
        let mut b = vec![0u8; bs];
        dev.read_at(&mut b, blk * bs as u64).unwrap();
        groups.push(GroupDesc::parse(
            &b[off..off + geo.desc_size],
            geo.desc_size,
        ));
        locs.push((blk, off));
    }
    let fixed = (0..sb.group_count())
        .map(|g| layout::fixed_blocks(&sb, g))
        .collect();
    (Allocator::new(geo, groups, locs, fixed), bs)
}

#[test]
fn allocate_everything_then_free_leaves_a_clean_image() {
    for opts in [
        &["-t", "ext4"][..],
        &["-t", "ext4", "-b", "1024", "-O", "^metadata_csum,^64bit"],
        &["-t", "ext4", "-O", "^flex_bg"],
        &["-t", "ext3"],
    ] {
        let (_t, img) = image(opts);
        let dev = MemDevice::from_vec(std::fs::read(&img).unwrap());
        let (alloc, bs) = allocator_for(&dev);
        let io = MemIo {
            dev,
            bs,
            written: Mutex::new(HashMap::new()),
        };
        let (free_before, inodes_before) = alloc.free_counts();
        // Blocks: allocate runs until ENOSPC; every block distinct and in range.
        let mut got: Vec<(u64, u32)> = Vec::new();
        let mut seen = HashSet::new();
        let mut goal = 0;
        loop {
            match alloc.alloc_blocks(&io, goal, 37) {
                Ok((b, n)) => {
                    assert!((1..=37).contains(&n));
                    for x in b..b + n as u64 {
                        assert!(seen.insert(x), "{opts:?}: block {x} handed out twice");
                        assert!(x < alloc.geo.blocks_count);
                    }
                    goal = b + n as u64;
                    got.push((b, n));
                }
                Err(e) => {
                    assert_eq!(e, Errno::ENOSPC);
                    break;
                }
            }
        }
        assert_eq!(
            seen.len() as u64,
            free_before,
            "{opts:?}: every free block was allocatable"
        );
        assert_eq!(alloc.free_counts().0, 0);
        // Inodes likewise, files and directories mixed.
        let mut inodes = Vec::new();
        loop {
            let is_dir = inodes.len() % 5 == 0;
            match alloc.alloc_inode(&io, 2, is_dir) {
                Ok(i) => {
                    assert!(i >= alloc.geo.first_ino as u64);
                    inodes.push((i, is_dir));
                }
                Err(e) => {
                    assert_eq!(e, Errno::ENOSPC);
                    break;
                }
            }
        }
        assert_eq!(inodes.len() as u64, inodes_before, "{opts:?}");
        let distinct: HashSet<u64> = inodes.iter().map(|x| x.0).collect();
        assert_eq!(distinct.len(), inodes.len());
        // Double free is corruption, not silent damage.
        let (b0, _) = got[0];
        for (b, n) in got {
            alloc.free_blocks(&io, b, n).unwrap();
        }
        assert_eq!(alloc.free_blocks(&io, b0, 1), Err(Errno::EUCLEAN));
        for (i, d) in inodes {
            alloc.free_inode(&io, i, d).unwrap();
        }
        assert_eq!(alloc.free_counts(), (free_before, inodes_before));
        io.flush_to_dev();
        std::fs::write(&img, io.dev.snapshot()).unwrap();
        e2fsck_clean(&img);
    }
}
