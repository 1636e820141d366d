//! Mounting: read and check the superblock and group descriptors, refuse what we cannot serve.

use super::Fs;
use super::types::{MountOptions, ROOT_INO};
use crate::alloc::{Allocator, DescLocation, Geometry};
use crate::blockdev::BlockDevice;
use crate::cache::BufferCache;
use crate::ondisk::group::{GroupCsum, GroupDesc, desc_checksum, layout};
use crate::ondisk::superblock::{
    SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE, Superblock, compat, feature_names, incompat, ro_compat,
};
use crate::volume::Volume;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

/// Metadata blocks kept in memory.
const CACHE_BLOCKS: usize = 16 * 1024;

impl Fs {
    /// Mount the image on `dev`. The error is a sentence for the user.
    pub fn mount(dev: Arc<dyn BlockDevice>, opts: &MountOptions) -> Result<Fs, String> {
        Fs::mount_with_cache(dev, opts, crate::pagecache::DEFAULT_CACHE_BYTES)
    }

    /// Mount with a page cache of `cache_bytes` (see `pagecache`).
    pub fn mount_with_cache(
        dev: Arc<dyn BlockDevice>,
        opts: &MountOptions,
        cache_bytes: u64,
    ) -> Result<Fs, String> {
        if dev.size() < SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE as u64 {
            return Err(format!(
                "the image is too small ({} bytes) to hold an ext4 file system",
                dev.size()
            ));
        }
        let mut raw = vec![0u8; SUPERBLOCK_SIZE];
        dev.read_at(&mut raw, SUPERBLOCK_OFFSET)
            .map_err(|e| format!("cannot read the superblock: {e}"))?;
        let sb = Superblock::parse(&raw).map_err(|e| format!("invalid superblock: {e}"))?;
        if !sb.checksum_ok() {
            return Err(format!(
                "superblock checksum mismatch (stored 0x{:08x}, computed 0x{:08x}): the image is corrupt",
                sb.checksum,
                Superblock::compute_checksum(&sb.raw)
            ));
        }
        let unknown = sb.feature_incompat & !incompat::SUPPORTED;
        if unknown != 0 {
            return Err(format!(
                "unsupported ext4 feature(s): {}; refusing to mount",
                feature_names(unknown, incompat::NAMES)
            ));
        }
        let wants_write = !(opts.read_only || dev.is_read_only());
        let unknown_ro = sb.feature_ro_compat & !ro_compat::SUPPORTED;
        if unknown_ro != 0 && wants_write {
            log::warn!(
                "read-only compatible feature(s) {} not supported for writing: mounting read-only",
                feature_names(unknown_ro, ro_compat::NAMES)
            );
        }
        let blockers = [
            (sb.has_ro_compat(ro_compat::BIGALLOC), "bigalloc"),
            (
                sb.has_ro_compat(ro_compat::READONLY),
                "the read-only feature is set",
            ),
            (sb.has_compat(compat::ORPHAN_FILE), "orphan_file"),
            (unknown_ro != 0, "unknown read-only compatible features"),
        ];
        let mut read_only = !wants_write;
        if let Some((_, why)) = blockers.iter().find(|b| b.0).filter(|_| wants_write) {
            log::warn!("serving the image read-only: {why}");
            read_only = true;
        }
        let block_size = sb.block_size();
        if dev.size() / (block_size as u64) < sb.blocks_count {
            return Err(format!(
                "the image is truncated: the superblock says {} blocks of {} bytes but the file has {} bytes",
                sb.blocks_count,
                block_size,
                dev.size()
            ));
        }
        let (groups, locations) = read_group_descriptors(dev.as_ref(), &sb)?;
        let itables = groups.iter().map(|g| g.inode_table).collect();
        let fixed = (0..sb.group_count())
            .map(|g| layout::fixed_blocks(&sb, g))
            .collect();
        let alloc = Allocator::new(Geometry::from_superblock(&sb), groups, locations, fixed);
        let mut fs = Fs {
            vol: Volume::new(dev, sb, itables, alloc, read_only, CACHE_BLOCKS)
                .with_policies(opts.errors, opts.data_err),
            dir_handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            data: super::data::DataState::new(cache_bytes)
                .map_err(|e| format!("cannot set up the page cache: {e}"))?,
            atime: Default::default(),
        };
        let root = fs
            .read_inode(ROOT_INO)
            .map_err(|e| format!("cannot read the root directory: {e}"))?;
        if !root.is_dir() {
            return Err("the root inode is not a directory: the image is corrupt".into());
        }
        fs.open_journal(wants_write && !fs.read_only)?;
        if !fs.read_only {
            // Not clean while mounted writable: a crash leaves e2fsck something to check.
            let home = fs
                .superblock_home(false)
                .map_err(|e| format!("cannot update the superblock: {e}"))?;
            if !home {
                return Err("internal error: metadata changed before the mount finished".into());
            }
            fs.process_orphans()
                .map_err(|e| format!("cannot clean up orphan inodes: {e}"))?;
            fs.sync()
                .map_err(|e| format!("cannot write the superblock: {e}"))?;
        }
        log::info!(
            "mounted ext4: {} blocks of {} bytes, {} groups, {} inodes{}",
            fs.sb.blocks_count,
            block_size,
            fs.alloc.group_count(),
            fs.sb.inodes_count,
            if fs.read_only { ", read-only" } else { "" }
        );
        Ok(fs)
    }

    /// Load the internal journal. A log left by a crash must be replayed first; a journal we
    /// cannot write keeps the file system read-only.
    fn open_journal(&mut self, writable: bool) -> Result<(), String> {
        if !self.sb.has_compat(compat::HAS_JOURNAL) {
            return Ok(());
        }
        if self.sb.journal_inum == 0 {
            return Err("the image has an external journal, which is not supported".into());
        }
        let jino = self.sb.journal_inum as u64;
        let mut j = self
            .load_journal(jino)
            .map_err(|e| format!("cannot load the journal: {e}"))?;
        if j.needs_recovery() {
            if !writable {
                return Err("the journal needs recovery (the image was not cleanly unmounted) and the image \
                     is served read-only; serve it writable once (the journal is replayed), or run `e2fsck -fy` on it"
                    .into());
            }
            let report = crate::journal::recovery::recover(
                self.dev.as_ref(),
                self.block_size,
                j.block_map(),
            )
            .map_err(|e| format!("journal recovery failed: {e}"))?;
            log::warn!(
                "replayed the journal: {} transaction(s), {} block(s), {} revoked",
                report.transactions_replayed,
                report.blocks_replayed,
                report.blocks_revoked
            );
            self.reload_after_replay()?;
            j = self
                .load_journal(jino)
                .map_err(|e| format!("cannot load the journal: {e}"))?;
        }
        if writable && j.recorded_errno() != 0 {
            // As the kernel does: the error moves into the superblock's state for e2fsck.
            log::warn!(
                "the journal records error {} from a previous mount: the file system is marked as having errors",
                j.recorded_errno()
            );
            self.sb_live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .error_fs = true;
        }
        if writable {
            if let Some(why) = j.unwritable_reason() {
                log::warn!("serving the image read-only: {why}");
                self.read_only = true;
                return Ok(());
            }
            self.journal = Some(j);
        }
        Ok(())
    }

    /// After a replay: metadata changed under the cache, so reread the superblock and groups.
    fn reload_after_replay(&mut self) -> Result<(), String> {
        let mut raw = vec![0u8; SUPERBLOCK_SIZE];
        self.dev
            .read_at(&mut raw, SUPERBLOCK_OFFSET)
            .map_err(|e| format!("cannot read the superblock: {e}"))?;
        let sb = Superblock::parse(&raw)
            .map_err(|e| format!("invalid superblock after journal replay: {e}"))?;
        let (groups, locations) = read_group_descriptors(self.dev.as_ref(), &sb)?;
        let fixed = (0..sb.group_count())
            .map(|g| layout::fixed_blocks(&sb, g))
            .collect();
        self.itables = groups.iter().map(|g| g.inode_table).collect();
        self.alloc = Allocator::new(Geometry::from_superblock(&sb), groups, locations, fixed);
        self.cache = BufferCache::new(CACHE_BLOCKS);
        // Block maps read before the replay (the journal inode's) may have changed under it.
        self.es = Default::default();
        *self.sb_live.lock().unwrap_or_else(|e| e.into_inner()) =
            crate::volume::errors::SbLive::new(&sb);
        self.sb = sb;
        Ok(())
    }
}

/// Read and check every group descriptor; also returns where each one lives.
fn read_group_descriptors(
    dev: &dyn BlockDevice,
    sb: &Superblock,
) -> Result<(Vec<GroupDesc>, Vec<DescLocation>), String> {
    let bs = sb.block_size() as usize;
    let desc_size = sb.desc_size as usize;
    let per_block = bs / desc_size;
    let ngroups = sb.group_count() as usize;
    let csum_kind = if sb.has_metadata_csum() {
        GroupCsum::Crc32c {
            seed: sb.csum_seed(),
        }
    } else if sb.has_ro_compat(ro_compat::GDT_CSUM) {
        GroupCsum::Crc16
    } else {
        GroupCsum::None
    };
    let mut out = Vec::with_capacity(ngroups);
    let mut locations = Vec::with_capacity(ngroups);
    let mut buf = vec![0u8; bs];
    for nr in 0..ngroups.div_ceil(per_block) {
        let block = layout::descriptor_block(sb, nr as u32);
        if block >= sb.blocks_count {
            return Err(format!(
                "group descriptor block {block} is beyond the end of the file system"
            ));
        }
        dev.read_at(&mut buf, block * bs as u64)
            .map_err(|e| format!("cannot read group descriptor block {block}: {e}"))?;
        for i in 0..per_block {
            let g = nr * per_block + i;
            if g >= ngroups {
                break;
            }
            let raw = &buf[i * desc_size..(i + 1) * desc_size];
            let gd = GroupDesc::parse(raw, desc_size);
            if let Some(want) = desc_checksum(csum_kind, &sb.uuid, g as u32, raw)
                && want != gd.checksum
            {
                return Err(format!(
                    "group descriptor {g} checksum mismatch (stored 0x{:04x}, computed 0x{want:04x}): the image is corrupt",
                    gd.checksum
                ));
            }
            let itable_blocks =
                (sb.inodes_per_group as u64 * sb.inode_size as u64).div_ceil(bs as u64);
            for (what, b, len) in [
                ("block bitmap", gd.block_bitmap, 1),
                ("inode bitmap", gd.inode_bitmap, 1),
                ("inode table", gd.inode_table, itable_blocks),
            ] {
                if b < sb.first_data_block as u64 || b + len > sb.blocks_count {
                    return Err(format!(
                        "group descriptor {g}: {what} at block {b} lies outside the file system"
                    ));
                }
            }
            out.push(gd);
            locations.push((block, i * desc_size));
        }
    }
    Ok((out, locations))
}
