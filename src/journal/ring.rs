//! The log ring: which journal blocks hold live transactions and where the next one goes.
//!
//! Transactions are written one after another from `head`, wrapping from the end of the ring back
//! to `s_first`. The oldest transaction not yet checkpointed starts at the tail; everything from
//! the tail up to `head` must survive until a checkpoint writes those blocks home. One block is
//! always left free so a full ring is never mistaken for an empty one.

use std::collections::VecDeque;
use std::ops::Range;

/// A committed transaction still in the log (not yet checkpointed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveTxn {
    pub tid: u32,
    /// First journal block of the transaction (its first descriptor).
    pub start: u32,
    /// Journal blocks it occupies, commit block included.
    pub len: u32,
}

/// Positions in the log ring `[first, end)`.
#[derive(Clone, Debug)]
pub struct Ring {
    range: Range<u32>,
    head: u32,
    live: VecDeque<LiveTxn>,
}

impl Ring {
    /// An empty ring; the next transaction starts at `s_first`.
    pub fn new(range: Range<u32>) -> Ring {
        Ring {
            head: range.start,
            range,
            live: VecDeque::new(),
        }
    }

    fn len(&self) -> u32 {
        self.range.end - self.range.start
    }

    /// Blocks a transaction may use at most (the ring less the block kept free).
    pub fn capacity(&self) -> u32 {
        self.len().saturating_sub(1)
    }

    /// Where the next transaction starts.
    pub fn head(&self) -> u32 {
        self.head
    }

    /// The oldest live transaction, where recovery must start (`s_start`, `s_sequence`).
    pub fn tail(&self) -> Option<LiveTxn> {
        self.live.front().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Blocks the live transactions occupy.
    pub fn used(&self) -> u32 {
        self.live.iter().map(|t| t.len).sum()
    }

    /// Blocks a new transaction can take without overwriting a live one.
    pub fn free(&self) -> u32 {
        self.capacity() - self.used()
    }

    /// The journal block `n` blocks after `pos`, wrapping at the end of the ring.
    pub fn advance(&self, pos: u32, n: u32) -> u32 {
        let off = (pos - self.range.start + n) % self.len();
        self.range.start + off
    }

    /// Record a transaction of `len` blocks written at `head`; the head moves past it.
    pub fn push(&mut self, tid: u32, len: u32) {
        debug_assert!(len <= self.free());
        self.live.push_back(LiveTxn {
            tid,
            start: self.head,
            len,
        });
        self.head = self.advance(self.head, len);
    }

    /// Every live transaction is home: the ring is empty (the head stays where it is).
    pub fn clear(&mut self) {
        self.live.clear();
    }

    /// The live transactions, oldest first.
    pub fn live(&self) -> impl Iterator<Item = &LiveTxn> {
        self.live.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_wrap_and_free_space_is_exact() {
        let mut r = Ring::new(1..11); // 10 blocks, 9 usable
        assert_eq!(r.capacity(), 9);
        assert_eq!(r.free(), 9);
        r.push(5, 4);
        assert_eq!(r.head(), 5);
        assert_eq!(r.tail().unwrap().start, 1);
        r.push(6, 4);
        assert_eq!(r.head(), 9);
        assert_eq!(r.free(), 1);
        r.clear();
        assert_eq!(r.free(), 9);
        assert!(r.tail().is_none());
        r.push(7, 5);
        assert_eq!(r.tail().unwrap().start, 9, "the ring continues at the head");
        assert_eq!(r.head(), 4, "9,10,1,2,3 then 4");
        assert_eq!(r.advance(10, 1), 1);
        assert_eq!(r.advance(9, 12), 1);
    }
}
