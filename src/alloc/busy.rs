//! Busy extents: blocks freed by a transaction that has not committed yet (jbd2's rule). Until the
//! transaction that frees them is durable, a replay could bring back the old owner's metadata
//! pointing at them, so **data** must not be written into them. Metadata may reuse them (its
//! writes go through the journal with the same transaction ordering).
//!
//! Frees land in `running`; a commit that freezes its transaction moves them to `committing`
//! (`freeze`) and drops them once its commit block is durable (`committed`).

use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub struct Busy {
    running: BTreeMap<u64, u64>,
    committing: BTreeMap<u64, u64>,
}

fn add(m: &mut BTreeMap<u64, u64>, start: u64, len: u64) {
    if len == 0 {
        return;
    }
    let mut s = start;
    let mut e = start + len;
    // Merge with an overlapping or touching predecessor and successors.
    if let Some((&ps, &pe)) = m.range(..=s).next_back()
        && pe >= s
    {
        s = ps;
        e = e.max(pe);
        m.remove(&ps);
    }
    while let Some((&ns, &ne)) = m.range(s..).next() {
        if ns > e {
            break;
        }
        e = e.max(ne);
        m.remove(&ns);
    }
    m.insert(s, e);
}

fn first_overlap(m: &BTreeMap<u64, u64>, start: u64, end: u64) -> Option<(u64, u64)> {
    if let Some((&s, &e)) = m.range(..=start).next_back()
        && e > start
    {
        return Some((s, e));
    }
    m.range(start..end).next().map(|(&s, &e)| (s, e))
}

impl Busy {
    pub fn add(&mut self, start: u64, len: u64) {
        add(&mut self.running, start, len);
    }

    /// The first busy range overlapping `[start, end)`, as (start, end).
    pub fn first_overlap(&self, start: u64, end: u64) -> Option<(u64, u64)> {
        let a = first_overlap(&self.running, start, end);
        let b = first_overlap(&self.committing, start, end);
        match (a, b) {
            (Some(x), Some(y)) => Some(if x.0 <= y.0 { x } else { y }),
            (x, y) => x.or(y),
        }
    }

    /// The running transaction was frozen for commit.
    pub fn freeze(&mut self) {
        let running = std::mem::take(&mut self.running);
        for (s, e) in running {
            add(&mut self.committing, s, e - s);
        }
    }

    /// Every frozen transaction is durable.
    pub fn committed(&mut self) {
        self.committing.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty() && self.committing.is_empty()
    }

    /// Blocks busy in all.
    pub fn blocks(&self) -> u64 {
        self.running
            .iter()
            .chain(self.committing.iter())
            .map(|(s, e)| e - s)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_clear_after_commit() {
        let mut b = Busy::default();
        b.add(10, 5);
        b.add(15, 5);
        b.add(30, 2);
        assert_eq!(b.first_overlap(0, 11), Some((10, 20)));
        assert_eq!(b.first_overlap(20, 30), None);
        assert_eq!(b.first_overlap(31, 40), Some((30, 32)));
        b.freeze();
        b.add(12, 1);
        assert_eq!(b.blocks(), 13);
        assert_eq!(b.first_overlap(12, 13), Some((10, 20)));
        b.committed();
        assert_eq!(b.first_overlap(0, 100), Some((12, 13)));
        b.freeze();
        b.committed();
        assert!(b.is_empty());
    }
}
