//! SEEK_DATA / SEEK_HOLE (the kernel's iomap_seek_data / iomap_seek_hole): data is a written
//! block, a block whose data is in the page cache and not on the device yet (dirty or under
//! writeback: delayed blocks, or new data over an unwritten extent), or an unwritten block
//! whose page is uptodate in the cache. Holes and unwritten blocks with nothing in the cache
//! are holes. Nothing is written back for it.

use super::file::FileIo;
use super::mapping::Status;
use super::ops::IomapOps;
use crate::errno::{Errno, Result};
use crate::pagecache::{PAGE_SIZE, PageState};

/// Does the page hold data of the block with bit `bit`, over a run that is `unwritten` (else a
/// hole)?
fn cached_data(s: &PageState, bit: u8, unwritten: bool) -> bool {
    (s.dirty | s.writeback) & bit != 0 || (unwritten && s.uptodate & bit != 0)
}

impl FileIo<'_> {
    /// The first byte at or after `offset` (below `size`, the file's size) that is data
    /// (`data`) or a hole (the end of the file counts as a hole). ENXIO at or past the end, or
    /// when no data follows. The caller holds the file's rw lock **exclusively**, so no
    /// writeback starts meanwhile: a block under writeback already has its extent (unwritten or
    /// written) and keeps its uptodate page, so it reads as data both before and after its
    /// completion.
    pub fn seek(&self, ops: &dyn IomapOps, offset: u64, size: u64, data: bool) -> Result<u64> {
        if offset >= size {
            return Err(Errno::ENXIO);
        }
        let bs = self.block_size;
        let bpp = PAGE_SIZE as u64 / bs;
        let end = size.div_ceil(bs);
        let mut l = offset / bs;
        while l < end {
            let m = ops.map(l)?;
            let run_end = m.end().min(end).max(l + 1);
            let found = match m.status {
                Status::Written { .. } => data.then_some(l),
                st => {
                    let unwritten = matches!(st, Status::Unwritten { .. });
                    self.d.pages().find_block(l, run_end, bpp, data, |s, bit| {
                        cached_data(s, bit, unwritten)
                    })
                }
            };
            if let Some(b) = found {
                return Ok((b * bs).max(offset).min(size));
            }
            l = run_end;
        }
        if data { Err(Errno::ENXIO) } else { Ok(size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockdev::MemDevice;
    use crate::iomap::{InodeData, Mapping};
    use crate::pagecache::PageCache;

    /// A block map given as runs; everything else is a hole.
    struct Runs(Vec<Mapping>);

    impl IomapOps for Runs {
        fn map(&self, lblk: u64) -> Result<Mapping> {
            for m in &self.0 {
                if lblk >= m.lblk && lblk < m.end() {
                    return Ok(Mapping {
                        lblk,
                        len: m.end() - lblk,
                        status: m.status.advance(lblk - m.lblk),
                    });
                }
            }
            let next = self.0.iter().map(|m| m.lblk).filter(|&s| s > lblk).min();
            Ok(Mapping {
                lblk,
                len: next.unwrap_or(1 << 32) - lblk,
                status: Status::Hole,
            })
        }

        fn make_room(&self, _: bool, _: u32) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn cached_data_counts_over_holes_and_unwritten_blocks() {
        let pc = PageCache::new(8 << 20, 4).unwrap();
        let dev = MemDevice::new(1 << 20);
        let d = InodeData::new(64 * 4096);
        let ops = Runs(vec![
            Mapping {
                lblk: 0,
                len: 4,
                status: Status::Written { pblk: 100 },
            },
            Mapping {
                lblk: 10,
                len: 10,
                status: Status::Unwritten { pblk: 200 },
            },
        ]);
        {
            let mut m = d.pages();
            // Block 6: new data over a hole (delayed).
            m.get_or_create(&pc, 6).unwrap();
            m.set_dirty(&pc, 6, 1);
            // Block 12: read in over an unwritten extent (zeros, uptodate).
            m.get_or_create(&pc, 12).unwrap();
            m.set_uptodate(12, 1);
            // Block 30: a hole read in (uptodate zeros): still a hole.
            m.get_or_create(&pc, 30).unwrap();
            m.set_uptodate(30, 1);
        }
        let io = FileIo {
            ino: 12,
            d: &d,
            pc: &pc,
            dev: &dev,
            block_size: 4096,
            cleaned: None,
        };
        let size = 64 * 4096;
        let data = |o: u64| io.seek(&ops, o, size, true);
        let hole = |o: u64| io.seek(&ops, o, size, false);
        assert_eq!(data(0), Ok(0));
        assert_eq!(data(100), Ok(100));
        assert_eq!(data(4 * 4096), Ok(6 * 4096));
        assert_eq!(data(7 * 4096), Ok(12 * 4096));
        assert_eq!(data(13 * 4096), Err(Errno::ENXIO));
        assert_eq!(data(size), Err(Errno::ENXIO));
        assert_eq!(hole(0), Ok(4 * 4096));
        assert_eq!(hole(6 * 4096 + 7), Ok(7 * 4096));
        assert_eq!(hole(12 * 4096 + 5), Ok(13 * 4096));
        assert_eq!(hole(size - 1), Ok(size - 1));
        // A file ending inside data: the end is the hole.
        assert_eq!(io.seek(&ops, 0, 3 * 4096 + 10, false), Ok(3 * 4096 + 10));
    }
}
