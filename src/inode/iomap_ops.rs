//! ext4's side of the generic data path (the kernel's `ext4_iomap_buffered_write_ops`,
//! `ext4_writeback_ops` and its ioend completion): how a file's blocks map, how a buffered
//! write makes room for new blocks, where dirty blocks go at writeback, and what happens once
//! their data is down.
//!
//! * A buffered write reserves its new blocks (delalloc) and records them as *delayed* in the
//!   extent status tree; when the reservation does not fit, the mount's flush (writeback and a
//!   commit: freed space waits on commits) runs and the write tries once more, then answers
//!   ENOSPC itself. When free space is short, writes allocate unwritten blocks at once instead
//!   (ext4's nonda switch). A short write releases the reservations it did not use.
//! * A delayed (delalloc) range gets an **unwritten** extent covering the whole delayed extent
//!   at once (at least what the writeback covers), as contiguous as the allocator can make it;
//!   its reservation turns into the allocation before the extent tree grows.
//! * Completion converts the written ranges to written extents and raises i_disksize, in one
//!   short handle.
//! * Indirect-mapped (ext2/ext3-style) files have no unwritten state: their blocks are
//!   allocated, written and mapped under the namespace lock, so no commit can carry the map
//!   before the data.
//! * When only blocks freed by uncommitted transactions are left, commit and retry (jbd2's rule:
//!   data never goes into such a block).
//!
//! Lock order: the caller holds the file's rw lock (shared) or its blocks are under writeback;
//! then the namespace lock → a journal handle → the file's data lock (i_data_sem) → the extent
//! status cache and the allocator. The metadata steps of extent-mapped files (allocating
//! unwritten blocks, completion) hold the namespace lock only for reading and the file's data
//! lock exclusively (`Volume::data_step`), so steps of different files run at once; reading
//! the map holds both shared (`Volume::map_read`). Indirect-mapped files' writeback takes the
//! namespace lock for writing.

use crate::errno::{Errno, Result};
use crate::extent::{ExtentTree, Status};
use crate::inode::blocks::NodeIo;
use crate::iomap::{FileIo, InodeData, IomapOps, Mapping, WbMap, WriteOps, WritebackOps};
use crate::ondisk::extent::Extent;
use crate::ondisk::inode::{Inode, flags};
use crate::volume::{Ino, Volume};

/// Longest unwritten extent one allocation asks for (the on-disk limit for unwritten extents).
const MAX_UNWRITTEN: u64 = 32767;

/// Making room in the page cache: the mount's reclaim policy (`own`: the caller holds the
/// file's rw lock exclusively; `attempt` from 0).
pub(crate) type MakeRoom<'a> = &'a dyn Fn(bool, u32) -> Result<()>;

/// How one ext4 file's blocks map, for the read, write and zero loops.
pub(crate) struct Ext4Iomap<'a> {
    pub vol: &'a Volume,
    pub ino: Ino,
    /// The file's in-core state (its data lock guards the map).
    pub d: &'a InodeData,
    pub room: MakeRoom<'a>,
}

impl IomapOps for Ext4Iomap<'_> {
    fn map(&self, lblk: u64) -> Result<Mapping> {
        let _g = self.vol.map_read(self.d);
        let inode = self.vol.read_inode(self.ino)?;
        self.vol.map_block(self.ino, &inode, lblk)
    }

    fn make_room(&self, own: bool, attempt: u32) -> Result<()> {
        (self.room)(own, attempt)
    }
}

/// A buffered write to one ext4 file (extent- or indirect-mapped; inline data is moved to a
/// block before).
pub(crate) struct Ext4Write<'a> {
    pub map: Ext4Iomap<'a>,
    pub inode: &'a Inode,
    /// Write back and commit, to free space a reservation waits for.
    pub flush: &'a dyn Fn() -> Result<()>,
    /// For a page fault (a window mapping): always reserve, never allocate at once — a
    /// reservation keeps the metadata pool free, so the writeback of what the guest stores
    /// cannot fail.
    fault: bool,
    /// The delayed ranges this write reserved.
    holes: Vec<(u64, u64)>,
}

impl<'a> Ext4Write<'a> {
    pub fn new(
        map: Ext4Iomap<'a>,
        inode: &'a Inode,
        flush: &'a dyn Fn() -> Result<()>,
    ) -> Ext4Write<'a> {
        Ext4Write {
            map,
            inode,
            flush,
            fault: false,
            holes: Vec::new(),
        }
    }

    /// The ops of a page fault (see `iomap::mkwrite`).
    pub fn for_fault(
        map: Ext4Iomap<'a>,
        inode: &'a Inode,
        flush: &'a dyn Fn() -> Result<()>,
    ) -> Ext4Write<'a> {
        Ext4Write {
            fault: true,
            ..Ext4Write::new(map, inode, flush)
        }
    }
}

impl IomapOps for Ext4Write<'_> {
    fn map(&self, lblk: u64) -> Result<Mapping> {
        self.map.map(lblk)
    }

    fn make_room(&self, own: bool, attempt: u32) -> Result<()> {
        self.map.make_room(own, attempt)
    }
}

impl WriteOps for Ext4Write<'_> {
    fn begin(&mut self, first: u64, end: u64) -> Result<()> {
        let (vol, ino, d) = (self.map.vol, self.map.ino, self.map.d);
        let holes = vol.unreserved_holes(ino, d, self.inode, first, end)?;
        let need: u64 = holes.iter().map(|(_, l)| l).sum();
        if need > 0 && !self.fault && self.inode.has_flag(flags::EXTENTS) && vol.nearly_full() {
            // Little room left: allocate unwritten blocks now (ext4's nonda switch), so the
            // space is taken for certain and ENOSPC comes from here; writeback converts them.
            for &(s, l) in &holes {
                let mut at = s;
                while at < s + l {
                    let (_, got) = vol.alloc_unwritten(ino, d, at, s + l - at)?;
                    at += got.max(1);
                }
            }
            return Ok(());
        }
        vol.reserve_delalloc(need, self.flush)?;
        for &(s, l) in &holes {
            vol.es.insert(ino, s, l, Status::Delayed);
        }
        self.holes = holes;
        Ok(())
    }

    fn end_short(&mut self, keep_to: u64) {
        // Release the delayed blocks no byte of this write reached. (A writeback may have
        // allocated some of them meanwhile, giving their reservation back: only what is still
        // delayed is released.)
        let (vol, ino) = (self.map.vol, self.map.ino);
        let mut unused = 0;
        for &(s, l) in &self.holes {
            let from = s.max(keep_to);
            if from < s + l {
                unused += vol.delayed_in(ino, from, s + l - from);
                vol.es.remove(ino, from, s + l - from);
            }
        }
        vol.alloc.release(unused);
    }
}

/// The writeback of one ext4 file.
pub(crate) struct Ext4Writeback<'a> {
    pub vol: &'a Volume,
    pub ino: Ino,
    pub d: &'a InodeData,
}

impl WritebackOps for Ext4Writeback<'_> {
    fn map_blocks(&self, io: &FileIo<'_>, l: u64, end: u64) -> Result<WbMap> {
        let (vol, ino) = (self.vol, self.ino);
        let (inode, m) = {
            let _g = vol.map_read(self.d);
            let inode = vol.read_inode(ino)?;
            let m = vol.map_block(ino, &inode, l)?;
            (inode, m)
        };
        let n = end.min(m.end()) - l;
        match m.status {
            Status::Written { pblk } => Ok(WbMap::Io {
                n,
                pblk,
                unwritten: false,
            }),
            Status::Unwritten { pblk } => Ok(WbMap::Io {
                n,
                pblk,
                unwritten: true,
            }),
            Status::Hole | Status::Delayed if inode.has_flag(flags::EXTENTS) => {
                let (pblk, got) = vol.alloc_unwritten(ino, self.d, l, end - l)?;
                if got == 0 {
                    return Ok(WbMap::Again);
                }
                #[cfg(test)]
                if vol
                    .commit_after_alloc
                    .load(std::sync::atomic::Ordering::Relaxed)
                {
                    vol.sync()?;
                }
                Ok(WbMap::Io {
                    n: got.min(end - l),
                    pblk,
                    unwritten: true,
                })
            }
            Status::Hole | Status::Delayed => {
                let n = vol.writeback_indirect(io, l, n)?;
                Ok(WbMap::Written { n })
            }
        }
    }

    fn complete(&self, converted: &[(u64, u64)], disksize: Option<u64>) -> Result<()> {
        let (vol, ino) = (self.vol, self.ino);
        // The file's data lock, not the namespace lock: other files complete at the same time.
        let _g = vol.data_step(self.d);
        let mut inode = vol.read_inode(ino)?;
        let mut r = Ok(());
        for &(s, n) in converted {
            r = vol.convert_written(ino, &mut inode, s, n);
            if r.is_err() {
                break;
            }
        }
        if let Some(ds) = disksize {
            self.d.sizes().disksize = ds;
        }
        vol.store_inode(ino, &inode)?;
        r
    }

    fn discard(&self, l: u64, n: u64) {
        let delayed = self.vol.delayed_in(self.ino, l, n);
        self.vol.es.remove(self.ino, l, n);
        self.vol.alloc.release(delayed);
    }

    fn write_failed(&self) {
        self.vol.data_write_failed(self.ino);
    }
}

impl Volume {
    /// Blocks in `[first, end)` that are holes on disk and not delayed yet: a write must
    /// reserve them.
    pub(crate) fn unreserved_holes(
        &self,
        ino: Ino,
        d: &InodeData,
        inode: &Inode,
        first: u64,
        end: u64,
    ) -> Result<Vec<(u64, u64)>> {
        let _g = self.map_read(d);
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut push = |s: u64, l: u64| {
            if l == 0 {
                return;
            }
            match out.last_mut() {
                Some((ps, pl)) if *ps + *pl == s => *pl += l,
                _ => out.push((s, l)),
            }
        };
        let mut l = first;
        while l < end {
            let m = self.map_block(ino, inode, l)?;
            let run_end = end.min(m.end()).max(l + 1);
            if m.status == Status::Hole {
                let mut pos = l;
                for (s, len, st) in self.es.ranges(ino, l, run_end - l) {
                    if st.is_delayed() {
                        push(pos, s.saturating_sub(pos));
                        pos = s + len;
                    }
                }
                push(pos, run_end.saturating_sub(pos));
            }
            l = run_end;
        }
        Ok(out)
    }

    /// Reserve `n` blocks for delayed allocation. When they do not fit: `flush` (write back
    /// and commit: the kernel's retry after a forced commit), then try once more; ENOSPC is
    /// answered here, by write(), never later at writeback.
    pub(crate) fn reserve_delalloc(&self, n: u64, flush: &dyn Fn() -> Result<()>) -> Result<()> {
        let pool = self.alloc.metadata_pool();
        if self.alloc.reserve(n, pool) {
            return Ok(());
        }
        flush()?;
        if self.alloc.reserve(n, pool) {
            return Ok(());
        }
        Err(Errno::ENOSPC)
    }

    /// True when free space is short enough that new writes should allocate at once rather
    /// than reserve (the kernel's ext4_nonda_switch: free below twice the reserved blocks, or
    /// below a watermark).
    pub(crate) fn nearly_full(&self) -> bool {
        let free = self.alloc.unreserved_free();
        let reserved = self.alloc.reserved();
        free < 2 * reserved || free < self.alloc.metadata_pool() + 1024
    }

    /// Delayed blocks of `ino` in `[l, l + n)`.
    pub(crate) fn delayed_in(&self, ino: Ino, l: u64, n: u64) -> u64 {
        self.es
            .ranges(ino, l, n)
            .iter()
            .filter(|(_, _, s)| s.is_delayed())
            .map(|(_, len, _)| len)
            .sum()
    }

    /// Where new blocks for `lblk` should go: after the block before it, else in the inode's
    /// group.
    fn data_goal(&self, ino: Ino, inode: &Inode, lblk: u64) -> u64 {
        if lblk > 0
            && let Ok(m) = self.map_block(ino, inode, lblk - 1)
            && let Some(pblk) = m.status.pblk()
        {
            return pblk + 1;
        }
        self.alloc
            .geo
            .group_first_block(((ino - 1) / self.sb.inodes_per_group as u64) as u32)
    }

    /// Allocate unwritten blocks for the hole at `lblk`: the whole delayed extent there (at
    /// least `min_len` blocks), as contiguous as the allocator can. Returns (first block, count);
    /// the count is 0 when the block was mapped meanwhile (by a concurrent writeback).
    /// Delayed blocks it covers give their reservation back. When only blocks freed by
    /// uncommitted transactions are left, commit and retry (jbd2's rule).
    pub(crate) fn alloc_unwritten(
        &self,
        ino: Ino,
        d: &InodeData,
        lblk: u64,
        min_len: u64,
    ) -> Result<(u64, u64)> {
        let want = match self.es.lookup(ino, lblk) {
            Some((s, len, Status::Delayed)) => (s + len - lblk).max(min_len),
            _ => min_len,
        }
        .clamp(1, MAX_UNWRITTEN);
        for attempt in 0..2 {
            match self.alloc_unwritten_once(ino, d, lblk, want) {
                Err(Errno::ENOSPC) if attempt == 0 && self.alloc.busy_blocks() > 0 => {
                    self.sync()?;
                }
                r => return r,
            }
        }
        Err(Errno::ENOSPC)
    }

    fn alloc_unwritten_once(
        &self,
        ino: Ino,
        d: &InodeData,
        lblk: u64,
        want: u64,
    ) -> Result<(u64, u64)> {
        // The file's data lock, not the namespace lock: other files allocate at the same time.
        let _g = self.data_step(d);
        let mut inode = self.read_inode(ino)?;
        // The hole may be shorter than asked (a mapped block further on).
        let m = self.map_block(ino, &inode, lblk)?;
        if m.status != Status::Hole {
            // Another writeback of the file allocated it meanwhile.
            return Ok((0, 0));
        }
        let want = want.min(m.len).min(u32::MAX as u64);
        let reserved = self.delayed_in(ino, lblk, want);
        let goal = self.data_goal(ino, &inode, lblk);
        let (pblk, got) = self
            .alloc
            .alloc_data_blocks(self, goal, want as u32, reserved as u32)?;
        // The reservation of the delayed blocks just allocated is spent: give it back before
        // the extent tree grows, or the tree's new block would find these blocks counted twice
        // (taken and still reserved) and meet ENOSPC for data that was reserved.
        let delayed = self.delayed_in(ino, lblk, got as u64);
        self.alloc.release(delayed);
        let io = NodeIo::new(self, ino, &inode);
        let mut root = inode.block;
        let r = ExtentTree::new(&mut root, &io, self.block_size, ino).insert(Extent {
            lblk: lblk as u32,
            len: got,
            pblk,
            unwritten: true,
        });
        self.es.forget_mapped(ino);
        if let Err(e) = r {
            // The blocks stay delayed: their reservation comes back with them.
            self.alloc.restore(delayed);
            self.alloc.free_blocks(self, pblk, got)?;
            return Err(e);
        }
        inode.block = root;
        self.adjust_blocks(&mut inode, got as i64 + io.delta.get());
        self.store_inode(ino, &inode)?;
        self.es.remove(ino, lblk, got as u64);
        Ok((pblk, got as u64))
    }

    /// Indirect-mapped file: allocate, map and write blocks `[l, l + n)` (a hole) under the
    /// namespace lock, so the map cannot commit before the data is on the device. Returns how
    /// many blocks from `l` went home (a block whose write failed is unmapped again and ends
    /// the run; the next call starts with it). When only blocks freed by uncommitted transactions are
    /// left, commit and retry (jbd2's rule), as `alloc_unwritten` does.
    fn writeback_indirect(&self, io: &FileIo<'_>, l: u64, n: u64) -> Result<u64> {
        for attempt in 0..2 {
            match self.writeback_indirect_once(io, l, n) {
                Err(Errno::ENOSPC) if attempt == 0 && self.alloc.busy_blocks() > 0 => {
                    self.sync()?;
                }
                r => return r,
            }
        }
        Err(Errno::ENOSPC)
    }

    fn writeback_indirect_once(&self, io: &FileIo<'_>, l: u64, n: u64) -> Result<u64> {
        let ino = io.ino;
        let _g = self.ns_write();
        let mut inode = self.read_inode(ino)?;
        let mut done = 0;
        let mut goal = 0;
        let mut failed = None;
        while done < n {
            let b = l + done;
            // The block's reservation turns into the allocation.
            let delayed = self.delayed_in(ino, b, 1);
            self.es.remove(ino, b, 1);
            self.alloc.release(delayed);
            let pblk =
                match self.map_new_data_block(ino, &mut inode, b as u32, goal, delayed as u32) {
                    Ok(p) => p,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                };
            goal = pblk + 1;
            if let Err(e) = io.write_blocks(b, 1, pblk) {
                // The block never got its data: unmap it again, so that the map this handle
                // commits never points at stale data (ordered mode would, the kernel's too).
                self.ind_unmap(ino, &mut inode, b, b + 1)?;
                self.data_write_failed(ino);
                failed = Some(e);
                break;
            }
            done += 1;
        }
        // What was mapped and written stays (the inode holds its new pointers).
        if done > 0 {
            let bs = self.block_size as u64;
            let mut s = io.d.sizes();
            s.disksize = s.disksize.max(((l + done) * bs).min(s.size));
        }
        self.store_inode(ino, &inode)?;
        match failed {
            Some(e) if done == 0 => Err(e),
            _ => Ok(done),
        }
    }

    /// Mark `[l, l + n)` (unwritten, fully mapped) written.
    fn convert_written(&self, ino: Ino, inode: &mut Inode, l: u64, n: u64) -> Result<()> {
        let io = NodeIo::new(self, ino, inode);
        let mut root = inode.block;
        let r = (|| {
            let mut tree = ExtentTree::new(&mut root, &io, self.block_size, ino);
            let runs = tree.remove(l as u32, l + n)?;
            let total: u64 = runs.iter().map(|(_, len)| *len as u64).sum();
            if total != n {
                return Err(crate::corrupt!(
                    "inode {ino}: blocks {l}..{} were written but only {total} are mapped",
                    l + n
                ));
            }
            let mut at = l;
            for (pblk, len) in runs {
                tree.insert(Extent {
                    lblk: at as u32,
                    len,
                    pblk,
                    unwritten: false,
                })?;
                at += len as u64;
            }
            Ok(())
        })();
        self.es.forget_mapped(ino);
        inode.block = root;
        self.adjust_blocks(inode, io.delta.get());
        r
    }
}
