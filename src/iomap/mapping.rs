//! The one vocabulary for what a range of a file's blocks is, shared by the block maps
//! (`inode::bmap`), the extent status tree (`extent::status`) and the generic data-path loops
//! here: a [`Mapping`] says that `len` logical blocks from `lblk` are uniformly one [`Status`] —
//! written or unwritten device blocks (physically contiguous), a delayed (delalloc) range that
//! has data in the page cache but no block yet, or a hole. It is the kernel's `struct iomap`
//! (IOMAP_MAPPED / IOMAP_UNWRITTEN / IOMAP_DELALLOC / IOMAP_HOLE) in block units.

/// What a run of logical blocks is. For `Written`/`Unwritten`, `pblk` is the physical block of the
/// run's first logical block (the run is physically contiguous).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Written {
        pblk: u64,
    },
    Unwritten {
        pblk: u64,
    },
    /// Delayed allocation: data waiting for writeback, no block yet.
    Delayed,
    Hole,
}

impl Status {
    /// The status of the block `off` blocks into a run that starts with `self`.
    pub fn advance(self, off: u64) -> Status {
        match self {
            Status::Written { pblk } => Status::Written {
                pblk: pblk.wrapping_add(off),
            },
            Status::Unwritten { pblk } => Status::Unwritten {
                pblk: pblk.wrapping_add(off),
            },
            s => s,
        }
    }

    pub fn is_delayed(self) -> bool {
        self == Status::Delayed
    }

    /// True when a run of `len` blocks with status `self`, directly followed by a run with status
    /// `next`, is one uniform run.
    pub(crate) fn continues(self, len: u64, next: Status) -> bool {
        match (self, next) {
            (Status::Written { pblk: a }, Status::Written { pblk: b })
            | (Status::Unwritten { pblk: a }, Status::Unwritten { pblk: b }) => {
                a.checked_add(len) == Some(b)
            }
            (Status::Delayed, Status::Delayed) | (Status::Hole, Status::Hole) => true,
            _ => false,
        }
    }
}

/// `len` logical blocks from `lblk` are uniformly `status` (for device blocks: contiguously,
/// `status` naming the device block of `lblk`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub lblk: u64,
    pub len: u64,
    pub status: Status,
}

impl Mapping {
    /// First logical block past the mapping.
    pub fn end(&self) -> u64 {
        self.lblk.saturating_add(self.len)
    }

    /// The device block of logical block `lblk` (inside the mapping), when it has one.
    pub fn pblk_of(&self, lblk: u64) -> Option<u64> {
        self.status.advance(lblk - self.lblk).pblk()
    }
}

impl Status {
    /// The device block, for written and unwritten runs.
    pub fn pblk(self) -> Option<u64> {
        match self {
            Status::Written { pblk } | Status::Unwritten { pblk } => Some(pblk),
            Status::Delayed | Status::Hole => None,
        }
    }

    /// Written blocks: the device holds the file's data (a read reads them).
    pub fn written_pblk(self) -> Option<u64> {
        match self {
            Status::Written { pblk } => Some(pblk),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_blocks_advance_with_the_offset() {
        let m = Mapping {
            lblk: 10,
            len: 5,
            status: Status::Unwritten { pblk: 100 },
        };
        assert_eq!(m.end(), 15);
        assert_eq!(m.pblk_of(12), Some(102));
        assert_eq!(m.status.written_pblk(), None);
        let w = Status::Written { pblk: 7 };
        assert_eq!(w.advance(3), Status::Written { pblk: 10 });
        assert_eq!(w.written_pblk(), Some(7));
        assert_eq!(Status::Delayed.pblk(), None);
        assert_eq!(Status::Hole.advance(4), Status::Hole);
    }
}
