//! A device that records every write and flush of a run, for crash tests: the image as it was at
//! any point of the run can be rebuilt from the starting image plus a prefix of the log. Faults
//! can be injected: after a given number of writes every further write fails with EIO.

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
}
