//! A device that records every write and flush of a run, for crash tests. Faults can be
//! injected: after a given number of writes every further write fails with EIO.
//!
//! Two models of what a crash leaves on the disk, from the starting image plus the log:
//!
//! * [`replay`]: a *prefix* of the log — the disk as the program saw it at one instant. This is
//!   what a killed process leaves in the page cache, not what a power cut leaves on a disk.
//! * [`CrashState`]: what a real disk with a volatile write cache may hold after a power cut at
//!   `cut` (an index into the log). Every write before the last flush before the cut is there
//!   (a flush returns only when the writes it covers are durable); of the writes issued since
//!   that flush and before the cut, *any subset* may have landed, each write independently.
//!   Kept writes are applied in log order, so of two kept writes to the same bytes the later
//!   wins; a dropped later write leaves the earlier kept one (or the durable contents) in place.
//!   Optionally a kept write may be *torn* at 512-byte sector granularity: only some of its
//!   sectors landed (disks promise atomic sectors, not atomic multi-sector writes).

use super::BlockDevice;
use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// One recorded event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Write { offset: u64, data: Vec<u8> },
    Flush,
}

pub struct RecordingDevice<D: BlockDevice> {
    inner: D,
    log: Mutex<Vec<Event>>,
    /// Writes allowed before injected failures start (u64::MAX: never).
    fail_after: AtomicU64,
    writes: AtomicU64,
}

impl<D: BlockDevice> RecordingDevice<D> {
    pub fn new(inner: D) -> Self {
        RecordingDevice {
            inner,
            log: Mutex::new(Vec::new()),
            fail_after: AtomicU64::new(u64::MAX),
            writes: AtomicU64::new(0),
        }
    }

    /// Fail every write after the next `n` with EIO (a dying disk).
    pub fn fail_writes_after(&self, n: u64) {
        self.fail_after
            .store(self.writes.load(Ordering::SeqCst) + n, Ordering::SeqCst);
    }

    /// The events recorded so far.
    pub fn events(&self) -> Vec<Event> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Indexes into `events()` just after each flush: the states a crash can leave for certain.
    pub fn flush_points(&self) -> Vec<usize> {
        self.events()
            .iter()
            .enumerate()
            .filter(|(_, e)| **e == Event::Flush)
            .map(|(i, _)| i + 1)
            .collect()
    }
}

/// Apply the first `upto` events of `log` to `image` (a copy of the starting image).
pub fn replay(image: &mut [u8], log: &[Event], upto: usize) {
    for e in &log[..upto.min(log.len())] {
        if let Event::Write { offset, data } = e {
            let o = *offset as usize;
            image[o..o + data.len()].copy_from_slice(data);
        }
    }
}

/// Index just past the last flush among the first `cut` events of `log` (0 when there is none):
/// everything before it is durable at a crash at `cut`.
pub fn durable_prefix(log: &[Event], cut: usize) -> usize {
    let cut = cut.min(log.len());
    log[..cut]
        .iter()
        .rposition(|e| *e == Event::Flush)
        .map_or(0, |i| i + 1)
}

/// A tiny deterministic PRNG (xorshift64*) for crash states: one seed, the same states on every
/// machine, so a failing state can be reproduced from the seed printed with it.
#[derive(Clone, Debug)]
pub struct CrashRng(u64);

impl CrashRng {
    pub fn new(seed: u64) -> CrashRng {
        // A zero state would stay zero; mix the seed so nearby seeds diverge at once.
        CrashRng((seed ^ 0x9E37_79B9_7F4A_7C15).max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n` > 0; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
}

/// Sector size for torn writes: the unit a disk writes atomically.
pub const SECTOR: usize = 512;

/// One write of the pending window that landed: all of it, or (torn) only the sectors whose bit
/// is set in `sectors` (bit i = bytes `i*512..(i+1)*512` of the write).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Landed {
    /// Index of the write in the log.
    pub index: usize,
    pub sectors: Option<u64>,
}

/// One crash state (see the module documentation): the durable prefix `..durable`, plus the
/// writes of `durable..cut` listed in `landed` (in log order).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CrashState {
    pub cut: usize,
    pub durable: usize,
    pub landed: Vec<Landed>,
}

/// How [`CrashState::random`] picks states.
#[derive(Clone, Copy, Debug, Default)]
pub struct CrashModel {
    /// Tear one landed multi-sector write in this many (0: never tear).
    pub tear_one_in: u64,
}

impl CrashState {
    /// A random crash state at `cut`: each write after the last flush before `cut` lands or not
    /// independently. The keep probability is itself drawn per state (1/8 … 7/8), so states
    /// close to "nothing landed" and to "almost everything landed" both come up.
    pub fn random(log: &[Event], cut: usize, rng: &mut CrashRng, model: CrashModel) -> CrashState {
        let cut = cut.min(log.len());
        let durable = durable_prefix(log, cut);
        let p = 1 + rng.below(7);
        let mut landed = Vec::new();
        for (i, e) in log.iter().enumerate().take(cut).skip(durable) {
            let Event::Write { data, .. } = e else {
                continue;
            };
            if !rng.chance(p, 8) {
                continue;
            }
            let n = data.len().div_ceil(SECTOR);
            let sectors = if model.tear_one_in > 0
                && (2..=64).contains(&n)
                && rng.below(model.tear_one_in) == 0
            {
                let all = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
                // A proper, non-empty part of the sectors.
                let mut m = rng.next_u64() & all;
                if m == 0 || m == all {
                    m = 1 << rng.below(n as u64);
                }
                Some(m)
            } else {
                None
            };
            landed.push(Landed { index: i, sectors });
        }
        CrashState {
            cut,
            durable,
            landed,
        }
    }

    /// The state where every write before the cut landed: the prefix [`replay`] rebuilds.
    pub fn prefix(log: &[Event], cut: usize) -> CrashState {
        let cut = cut.min(log.len());
        let durable = durable_prefix(log, cut);
        let landed = (durable..cut)
            .filter(|&i| matches!(log[i], Event::Write { .. }))
            .map(|index| Landed {
                index,
                sectors: None,
            })
            .collect();
        CrashState {
            cut,
            durable,
            landed,
        }
    }

    /// Writes issued since the last flush before the cut (the ones that may or may not land).
    pub fn pending(&self, log: &[Event]) -> usize {
        log[self.durable..self.cut]
            .iter()
            .filter(|e| matches!(e, Event::Write { .. }))
            .count()
    }

    /// True when some pending write did not land in full (the state differs from the prefix).
    pub fn differs_from_prefix(&self, log: &[Event]) -> bool {
        self.landed.len() < self.pending(log) || self.landed.iter().any(|l| l.sectors.is_some())
    }

    /// Rebuild the state on `image`, a copy of the starting image.
    pub fn apply(&self, image: &mut [u8], log: &[Event]) {
        replay(image, log, self.durable);
        self.apply_pending(image, log);
    }

    /// Apply only the landed pending writes, to `image` that already holds the durable prefix
    /// (`replay(image, log, self.durable)`): lets a caller build many states of one window from
    /// one copy of the durable image.
    pub fn apply_pending(&self, image: &mut [u8], log: &[Event]) {
        for l in &self.landed {
            let Event::Write { offset, data } = &log[l.index] else {
                continue;
            };
            let o = *offset as usize;
            match l.sectors {
                None => image[o..o + data.len()].copy_from_slice(data),
                Some(mask) => {
                    for (s, chunk) in data.chunks(SECTOR).enumerate() {
                        if mask >> s & 1 == 1 {
                            let at = o + s * SECTOR;
                            image[at..at + chunk.len()].copy_from_slice(chunk);
                        }
                    }
                }
            }
        }
    }
}

impl<D: BlockDevice> BlockDevice for RecordingDevice<D> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst);
        if n >= self.fail_after.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.inner.write_at(buf, offset)?;
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Event::Write {
                offset,
                data: buf.to_vec(),
            });
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.inner.flush()?;
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Event::Flush);
        Ok(())
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn is_read_only(&self) -> bool {
        self.inner.is_read_only()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockdev::MemDevice;

    #[test]
    fn records_and_replays_prefixes() {
        let base = vec![0u8; 64];
        let d = RecordingDevice::new(MemDevice::from_vec(base.clone()));
        d.write_at(b"ab", 0).unwrap();
        d.flush().unwrap();
        d.write_at(b"cd", 10).unwrap();
        assert_eq!(d.flush_points(), vec![2]);
        let log = d.events();
        let mut img = base.clone();
        replay(&mut img, &log, 2);
        assert_eq!(&img[0..2], b"ab");
        assert_eq!(&img[10..12], &[0, 0]);
        let mut img = base;
        replay(&mut img, &log, log.len());
        assert_eq!(&img[10..12], b"cd");
        d.fail_writes_after(1);
        d.write_at(b"x", 0).unwrap();
        assert!(d.write_at(b"y", 0).is_err());
    }

    fn write(offset: u64, data: &[u8]) -> Event {
        Event::Write {
            offset,
            data: data.to_vec(),
        }
    }

    #[test]
    fn durable_prefix_ends_at_the_last_flush_before_the_cut() {
        let log = vec![
            write(0, b"a"),
            Event::Flush,
            write(1, b"b"),
            write(2, b"c"),
            Event::Flush,
            write(3, b"d"),
        ];
        assert_eq!(durable_prefix(&log, 0), 0);
        assert_eq!(durable_prefix(&log, 1), 0);
        assert_eq!(durable_prefix(&log, 2), 2);
        assert_eq!(durable_prefix(&log, 4), 2);
        assert_eq!(durable_prefix(&log, 5), 5);
        assert_eq!(durable_prefix(&log, 99), 5);
    }

    /// Every subset of the pending writes comes up, nothing before the last flush is ever
    /// dropped, nothing at or after the cut ever lands, and kept writes apply in log order.
    #[test]
    fn random_states_cover_every_subset_of_the_pending_window() {
        let log = vec![
            write(0, b"A"),
            Event::Flush,
            write(1, b"B"),
            write(2, b"C"),
            write(2, b"D"), // overwrites C when both land
            write(3, b"E"),
            Event::Flush,
            write(4, b"F"),
        ];
        let base = vec![b'.'; 6];
        let mut rng = CrashRng::new(7);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let st = CrashState::random(&log, 6, &mut rng, CrashModel::default());
            assert_eq!((st.durable, st.cut, st.pending(&log)), (2, 6, 4));
            let mut img = base.clone();
            st.apply(&mut img, &log);
            assert_eq!(img[0], b'A', "a write before the flush is always there");
            assert_eq!(img[4], b'.', "a write after the cut never lands");
            let kept: Vec<usize> = st.landed.iter().map(|l| l.index).collect();
            assert!(kept.windows(2).all(|w| w[0] < w[1]));
            let want2 = if kept.contains(&4) {
                b'D'
            } else if kept.contains(&3) {
                b'C'
            } else {
                b'.'
            };
            assert_eq!(img[2], want2, "{kept:?}");
            seen.insert(kept);
        }
        assert_eq!(seen.len(), 16, "all 2^4 subsets of the pending writes");
        // The prefix state is the old replay.
        let p = CrashState::prefix(&log, 6);
        assert!(!p.differs_from_prefix(&log));
        let (mut a, mut b) = (base.clone(), base.clone());
        p.apply(&mut a, &log);
        replay(&mut b, &log, 6);
        assert_eq!(a, b);
        // The same seed gives the same states.
        let one: Vec<_> = (0..20)
            .scan(CrashRng::new(3), |r, _| {
                Some(CrashState::random(&log, 6, r, CrashModel::default()))
            })
            .collect();
        let two: Vec<_> = (0..20)
            .scan(CrashRng::new(3), |r, _| {
                Some(CrashState::random(&log, 6, r, CrashModel::default()))
            })
            .collect();
        assert_eq!(one, two);
    }

    #[test]
    fn torn_writes_land_whole_sectors_only() {
        let new = vec![0xEEu8; 4 * SECTOR];
        let log = vec![Event::Flush, write(0, &new)];
        let mut rng = CrashRng::new(11);
        let mut masks = std::collections::HashSet::new();
        for _ in 0..500 {
            let st = CrashState::random(&log, 2, &mut rng, CrashModel { tear_one_in: 2 });
            let mut img = vec![0u8; 4 * SECTOR];
            st.apply(&mut img, &log);
            for s in img.chunks(SECTOR) {
                assert!(s.iter().all(|&b| b == 0) || s.iter().all(|&b| b == 0xEE));
            }
            if let Some(Landed {
                sectors: Some(m), ..
            }) = st.landed.first()
            {
                assert!(
                    *m != 0 && *m != 0xF,
                    "a torn write lands some sectors, not all"
                );
                masks.insert(*m);
            }
        }
        assert!(masks.len() >= 10, "only {} ways to tear", masks.len());
    }
}
