//! An in-memory device, for unit tests.

use super::{BlockDevice, out_of_range};
use std::io;
use std::sync::RwLock;

pub struct MemDevice {
    data: RwLock<Vec<u8>>,
}

impl MemDevice {
    pub fn new(size: usize) -> MemDevice {
        MemDevice {
            data: RwLock::new(vec![0; size]),
        }
    }

    pub fn from_vec(data: Vec<u8>) -> MemDevice {
        MemDevice {
            data: RwLock::new(data),
        }
    }

    /// A copy of the whole device.
    pub fn snapshot(&self) -> Vec<u8> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl BlockDevice for MemDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= data.len() as u64);
        let Some(end) = end else {
            return Err(out_of_range(offset, buf.len(), data.len() as u64));
        };
        buf.copy_from_slice(&data[offset as usize..end as usize]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        let size = data.len() as u64;
        let end = offset.checked_add(buf.len() as u64).filter(|&e| e <= size);
        let Some(end) = end else {
            return Err(out_of_range(offset, buf.len(), size));
        };
        data[offset as usize..end as usize].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn size(&self) -> u64 {
        self.data.read().unwrap_or_else(|e| e.into_inner()).len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_write_and_bounds() {
        let d = MemDevice::new(4096);
        d.write_at(b"hello", 10).unwrap();
        let mut b = [0u8; 5];
        d.read_at(&mut b, 10).unwrap();
        assert_eq!(&b, b"hello");
        assert!(d.read_at(&mut b, 4094).is_err());
        assert!(d.write_at(&b, u64::MAX - 1).is_err());
    }
}
