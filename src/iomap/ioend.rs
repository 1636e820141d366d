//! I/O completion (the kernel's iomap ioend): what a writeback batch completed — the unwritten
//! ranges whose data is now on the device, and how far the completed writes reach — gathered,
//! sorted and merged, and handed to the file system in one call (one journal handle), which
//! converts the ranges to written and raises i_disksize to `min(end of completed I/O, i_size)`.

use super::file::InodeData;
use super::ops::WritebackOps;
use crate::errno::Result;

/// The completed writes of one batch.
#[derive(Default, Debug)]
pub struct Ioend {
    /// Unwritten ranges written, in completion order.
    converted: Vec<(u64, u64)>,
    /// Byte offset past the last completed write.
    io_end: u64,
}

impl Ioend {
    /// The write of blocks `[l, l + n)` (`unwritten` ones: to convert) completed.
    pub fn add(&mut self, l: u64, n: u64, unwritten: bool, block_size: u64) {
        if unwritten {
            self.converted.push((l, n));
        }
        self.io_end = self.io_end.max((l + n) * block_size);
    }

    /// The ranges to convert, sorted, overlapping or touching ones merged.
    pub fn merged(&self) -> Vec<(u64, u64)> {
        let mut done = self.converted.clone();
        done.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (s, n) in done {
            match merged.last_mut() {
                Some((ps, pn)) if *ps + *pn >= s => *pn = (*pn).max(s + n - *ps),
                _ => merged.push((s, n)),
            }
        }
        merged
    }

    /// Hand the completion to the file system: the merged ranges, and the new i_disksize when
    /// it moves (never past i_size, never down). Nothing to do: no call.
    pub fn complete(&self, d: &InodeData, ops: &dyn WritebackOps) -> Result<()> {
        let merged = self.merged();
        let (old, new) = {
            let s = d.sizes();
            (s.disksize, s.disksize.max(self.io_end.min(s.size)))
        };
        let disksize = (new != old).then_some(new);
        if merged.is_empty() && disksize.is_none() {
            return Ok(());
        }
        ops.complete(&merged, disksize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_sorted_and_merged() {
        let mut e = Ioend::default();
        e.add(20, 5, true, 4096);
        e.add(0, 10, true, 4096);
        e.add(10, 3, true, 4096);
        e.add(100, 1, false, 4096);
        e.add(22, 10, true, 4096);
        assert_eq!(e.merged(), vec![(0, 13), (20, 12)]);
        assert_eq!(e.io_end, 101 * 4096);
    }

    #[test]
    fn disksize_moves_up_to_i_size_only() {
        type Call = (Vec<(u64, u64)>, Option<u64>);
        struct Rec(std::cell::RefCell<Vec<Call>>);
        impl WritebackOps for Rec {
            fn map_blocks(
                &self,
                _: &crate::iomap::FileIo<'_>,
                _: u64,
                _: u64,
            ) -> Result<crate::iomap::WbMap> {
                unreachable!()
            }
            fn complete(&self, c: &[(u64, u64)], ds: Option<u64>) -> Result<()> {
                self.0.borrow_mut().push((c.to_vec(), ds));
                Ok(())
            }
            fn discard(&self, _: u64, _: u64) {}
            fn write_failed(&self) {}
        }
        let ops = Rec(Default::default());
        let d = InodeData::new(0);
        d.sizes().size = 10_000;
        let mut e = Ioend::default();
        e.add(0, 4, false, 4096);
        e.complete(&d, &ops).unwrap();
        // Written blocks past i_size: i_disksize stops at i_size.
        assert_eq!(ops.0.borrow().last(), Some(&(vec![], Some(10_000))));
        d.sizes().disksize = 10_000;
        let n = ops.0.borrow().len();
        e.complete(&d, &ops).unwrap();
        assert_eq!(ops.0.borrow().len(), n, "nothing moved: no call");
    }
}
