//! The vhost-user-blk device: exports the raw image through [`BlockDevice`]. Each chain holds a
//! `virtio_blk_outhdr` (and, for OUT / DISCARD / WRITE_ZEROES, the data or segments) in its
//! readable part, and the data buffer (IN / GET_ID) plus the status byte in its writable part;
//! the status byte is the last writable byte.
//!
//! Every queue is served by its own vring thread; requests are plain synchronous I/O on the
//! image file, straight between the guest's buffers and the image (`preadv`/`pwritev` over the
//! descriptors' guest memory, no bounce buffer). Every sector range is checked against the
//! capacity before any I/O.

use super::queue::{
    self, Chain, Core, MAX_QUEUE_SIZE, Mem, Vring, complete, config_window, drain, guest_buffers,
};
use crate::blockdev::BlockDevice;
use crate::ondisk::le;
use log::{debug, warn};
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::VhostUserBackend;
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Reader, Writer};
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

/// Virtio block sectors are always 512 bytes, whatever the logical block size.
pub const SECTOR_SIZE: u64 = 512;
/// The most queues we offer (one vring thread each).
pub const MAX_QUEUES: usize = 32;
/// `seg_max`: data segments per request (a 128-entry ring minus header and status, as QEMU).
pub const SEG_MAX: u32 = 126;
/// Limits advertised for DISCARD and WRITE_ZEROES.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
pub const MAX_DISCARD_SEG: u32 = 32;
/// Bytes of zeros written per device call by WRITE_ZEROES.
const CHUNK: usize = 1 << 20;
/// `struct virtio_blk_outhdr`.
const OUTHDR_SIZE: usize = 16;
/// `struct virtio_blk_discard_write_zeroes`.
const SEGMENT_SIZE: usize = 16;

/// Settings of a block export.
#[derive(Clone, Debug)]
pub struct BlkConfig {
    pub read_only: bool,
    pub queues: usize,
    /// The serial number GET_ID returns (at most 20 bytes).
    pub serial: Vec<u8>,
    /// Logical block size: 512 or 4096.
    pub block_size: u32,
}

/// The vhost-user-blk backend.
pub struct BlkDevice {
    dev: Arc<dyn BlockDevice>,
    cfg: BlkConfig,
    /// Capacity in 512-byte sectors.
    capacity: u64,
    config: Vec<u8>,
    acked: AtomicU64,
    core: Core,
}

impl BlkDevice {
    pub fn new(dev: Arc<dyn BlockDevice>, cfg: BlkConfig) -> Result<BlkDevice, String> {
        if cfg.queues == 0 || cfg.queues > MAX_QUEUES {
            return Err(format!(
                "the number of queues must be between 1 and {MAX_QUEUES}, not {}",
                cfg.queues
            ));
        }
        if cfg.block_size != 512 && cfg.block_size != 4096 {
            return Err(format!(
                "the block size must be 512 or 4096, not {}",
                cfg.block_size
            ));
        }
        if cfg.serial.len() > VIRTIO_BLK_ID_BYTES as usize {
            return Err(format!(
                "the serial must be at most {VIRTIO_BLK_ID_BYTES} bytes"
            ));
        }
        let read_only = cfg.read_only || dev.is_read_only();
        let cfg = BlkConfig { read_only, ..cfg };
        // Whole logical blocks only: a 4096-byte device never exposes a partial block.
        let capacity =
            dev.size() / u64::from(cfg.block_size) * (u64::from(cfg.block_size) / SECTOR_SIZE);
        let config = config_space(&cfg, capacity);
        Ok(BlkDevice {
            dev,
            capacity,
            config,
            acked: AtomicU64::new(0),
            core: Core::new(cfg.queues),
            cfg,
        })
    }

    /// Stop the vring threads and wait for the requests in flight.
    pub fn shutdown(&self) {
        self.core.stop();
    }

    fn acked(&self, feature: u32) -> bool {
        self.acked.load(Ordering::Acquire) & (1u64 << feature) != 0
    }

    /// Serve one chain; returns the used length (data written + status byte).
    pub fn serve_chain(&self, chain: &Chain, queue: usize) -> u32 {
        let head = chain.head_index();
        let shape = queue::layout(chain);
        if shape.writable == 0 {
            warn!(
                "blk queue {queue}: chain {head} has no room for a status byte; returning it empty"
            );
            return 0;
        }
        let mem = chain.memory();
        let mut w: Writer<'_, ()> = match Writer::new(mem, chain.clone()) {
            Ok(w) => w,
            Err(e) => {
                warn!(
                    "blk queue {queue}: chain {head}: writable buffer outside guest memory ({e}); returning it empty"
                );
                return 0;
            }
        };
        let Some(data_room) = w.available_bytes().checked_sub(1) else {
            return 0;
        };
        let mut status_w = match w.split_at(data_room) {
            Ok(s) => s,
            Err(_) => return 0,
        };
        let mut status = |s: u32, data: usize| -> u32 {
            let _ = status_w.write_all(&[s as u8]);
            data as u32 + status_w.bytes_written() as u32
        };
        if shape.misordered {
            warn!(
                "blk queue {queue}: chain {head}: readable descriptor after a writable one: IOERR"
            );
            return status(VIRTIO_BLK_S_IOERR, 0);
        }
        let mut r: Reader<'_, ()> = match Reader::new(mem, chain.clone()) {
            Ok(r) => r,
            Err(e) => {
                warn!(
                    "blk queue {queue}: chain {head}: readable buffer outside guest memory ({e}): IOERR"
                );
                return status(VIRTIO_BLK_S_IOERR, 0);
            }
        };
        let mut hdr = [0u8; OUTHDR_SIZE];
        if r.read_exact(&mut hdr).is_err() {
            warn!("blk queue {queue}: chain {head}: request shorter than its header: IOERR");
            return status(VIRTIO_BLK_S_IOERR, 0);
        }
        let kind = le::u32_at(&hdr, 0);
        let sector = le::u64_at(&hdr, 8);
        let s = match kind {
            VIRTIO_BLK_T_IN => {
                let s = self.read(chain, data_room, sector, queue);
                // The data counts as written only when all of it was.
                let n = if s == VIRTIO_BLK_S_OK { data_room } else { 0 };
                return status(s, n);
            }
            VIRTIO_BLK_T_OUT => self.write(chain, r.available_bytes(), sector, queue),
            VIRTIO_BLK_T_FLUSH => match self.dev.flush() {
                Ok(()) => VIRTIO_BLK_S_OK,
                Err(e) => {
                    warn!("blk: flush failed: {e}");
                    VIRTIO_BLK_S_IOERR
                }
            },
            VIRTIO_BLK_T_GET_ID => {
                let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
                id[..self.cfg.serial.len()].copy_from_slice(&self.cfg.serial);
                let n = id.len().min(w.available_bytes());
                match w.write_all(&id[..n]) {
                    Ok(()) => VIRTIO_BLK_S_OK,
                    Err(_) => VIRTIO_BLK_S_IOERR,
                }
            }
            VIRTIO_BLK_T_DISCARD if self.acked(VIRTIO_BLK_F_DISCARD) => {
                self.segments(&mut r, false, queue)
            }
            VIRTIO_BLK_T_WRITE_ZEROES if self.acked(VIRTIO_BLK_F_WRITE_ZEROES) => {
                self.segments(&mut r, true, queue)
            }
            other => {
                debug!("blk queue {queue}: request type {other} unsupported");
                VIRTIO_BLK_S_UNSUPP
            }
        };
        status(s, w.bytes_written())
    }

    /// The byte range of `len` bytes at `sector`, if it is inside the device and aligned to the
    /// logical block size.
    fn range(&self, sector: u64, len: u64) -> Option<u64> {
        let bs = u64::from(self.cfg.block_size);
        let offset = sector.checked_mul(SECTOR_SIZE)?;
        let end = offset.checked_add(len)?;
        if end > self.capacity.checked_mul(SECTOR_SIZE)?
            || !offset.is_multiple_of(bs)
            || !len.is_multiple_of(bs)
        {
            return None;
        }
        Some(offset)
    }

    /// IN: the device's bytes go straight into the chain's `len` writable data bytes.
    fn read(&self, chain: &Chain, len: usize, sector: u64, queue: usize) -> u32 {
        let Some(offset) = self.range(sector, len as u64) else {
            warn!(
                "blk queue {queue}: read of {len} bytes at sector {sector} is outside the device or misaligned: IOERR"
            );
            return VIRTIO_BLK_S_IOERR;
        };
        let mem = chain.memory();
        let bufs = match guest_buffers(mem, chain, true, 0, len) {
            Ok(b) => b,
            Err(e) => {
                warn!("blk queue {queue}: read buffer: {e}: IOERR");
                return VIRTIO_BLK_S_IOERR;
            }
        };
        if let Err(e) = self.dev.read_to_guest(&bufs, offset) {
            warn!("blk: read of {len} bytes at byte {offset} failed: {e}");
            return VIRTIO_BLK_S_IOERR;
        }
        VIRTIO_BLK_S_OK
    }

    /// OUT: the chain's `len` readable bytes after the header go straight to the device.
    fn write(&self, chain: &Chain, len: usize, sector: u64, queue: usize) -> u32 {
        if self.cfg.read_only {
            debug!("blk queue {queue}: write to a read-only device: IOERR");
            return VIRTIO_BLK_S_IOERR;
        }
        let Some(offset) = self.range(sector, len as u64) else {
            warn!(
                "blk queue {queue}: write of {len} bytes at sector {sector} is outside the device or misaligned: IOERR"
            );
            return VIRTIO_BLK_S_IOERR;
        };
        let mem = chain.memory();
        let bufs = match guest_buffers(mem, chain, false, OUTHDR_SIZE, len) {
            Ok(b) => b,
            Err(e) => {
                warn!("blk queue {queue}: write buffer: {e}: IOERR");
                return VIRTIO_BLK_S_IOERR;
            }
        };
        if let Err(e) = self.dev.write_from_guest(&bufs, offset) {
            warn!("blk: write of {len} bytes at byte {offset} failed: {e}");
            return VIRTIO_BLK_S_IOERR;
        }
        VIRTIO_BLK_S_OK
    }

    /// DISCARD (`zeroes` false) or WRITE_ZEROES (`zeroes` true): a list of segments.
    fn segments(&self, r: &mut Reader<'_, ()>, zeroes: bool, queue: usize) -> u32 {
        if self.cfg.read_only {
            return VIRTIO_BLK_S_IOERR;
        }
        let bytes = r.available_bytes();
        let count = bytes / SEGMENT_SIZE;
        if !bytes.is_multiple_of(SEGMENT_SIZE) || count == 0 || count > MAX_DISCARD_SEG as usize {
            warn!("blk queue {queue}: {bytes} bytes of discard/write-zeroes segments: IOERR");
            return VIRTIO_BLK_S_IOERR;
        }
        let mut segs = Vec::with_capacity(count);
        for _ in 0..count {
            let mut s = [0u8; SEGMENT_SIZE];
            if r.read_exact(&mut s).is_err() {
                return VIRTIO_BLK_S_IOERR;
            }
            let sector = le::u64_at(&s, 0);
            let sectors = le::u32_at(&s, 8);
            let flags = le::u32_at(&s, 12);
            // The unmap flag is reserved for DISCARD; no other flag exists.
            let allowed = if zeroes {
                VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
            } else {
                0
            };
            if flags & !allowed != 0 {
                return VIRTIO_BLK_S_UNSUPP;
            }
            if sectors > MAX_DISCARD_SECTORS {
                return VIRTIO_BLK_S_IOERR;
            }
            let len = u64::from(sectors) * SECTOR_SIZE;
            let Some(offset) = self.range(sector, len) else {
                warn!(
                    "blk queue {queue}: segment of {sectors} sectors at {sector} is outside the device or misaligned: IOERR"
                );
                return VIRTIO_BLK_S_IOERR;
            };
            segs.push((offset, len));
        }
        for (offset, len) in segs {
            let done = if zeroes {
                self.write_zeroes(offset, len)
            } else {
                self.dev.discard(offset, len)
            };
            if let Err(e) = done {
                warn!(
                    "blk: {} of {len} bytes at {offset} failed: {e}",
                    if zeroes { "write-zeroes" } else { "discard" }
                );
                return VIRTIO_BLK_S_IOERR;
            }
        }
        VIRTIO_BLK_S_OK
    }

    fn write_zeroes(&self, mut offset: u64, len: u64) -> io::Result<()> {
        let zeros = vec![0u8; CHUNK.min(len as usize)];
        let mut left = len;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            self.dev.write_at(&zeros[..n], offset)?;
            offset += n as u64;
            left -= n as u64;
        }
        Ok(())
    }
}

/// `struct virtio_blk_config` up to `write_zeroes_may_unmap` (60 bytes, little endian).
fn config_space(cfg: &BlkConfig, capacity: u64) -> Vec<u8> {
    let mut c = vec![0u8; 60];
    let put32 =
        |c: &mut Vec<u8>, at: usize, v: u32| c[at..at + 4].copy_from_slice(&v.to_le_bytes());
    c[0..8].copy_from_slice(&capacity.to_le_bytes());
    // size_max (8) is not offered: no limit per segment.
    put32(&mut c, 12, SEG_MAX);
    // geometry (16..20) is not offered.
    put32(&mut c, 20, cfg.block_size);
    // physical_block_exp 24, alignment_offset 25, min_io_size 26..28, opt_io_size 28..32:
    // topology is not offered. wce 32 (no CONFIG_WCE), unused 33.
    c[34..36].copy_from_slice(&(cfg.queues as u16).to_le_bytes());
    let align = cfg.block_size / SECTOR_SIZE as u32;
    put32(&mut c, 36, MAX_DISCARD_SECTORS);
    put32(&mut c, 40, MAX_DISCARD_SEG);
    put32(&mut c, 44, align);
    put32(&mut c, 48, MAX_DISCARD_SECTORS);
    put32(&mut c, 52, MAX_DISCARD_SEG);
    // write_zeroes_may_unmap (56) = 0: zeroes are always written.
    c
}

impl VhostUserBackend for BlkDevice {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        self.cfg.queues
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        let mut f = 1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_MQ
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.cfg.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        } else {
            f |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        f
    }

    fn acked_features(&self, features: u64) {
        self.acked.store(features, Ordering::Release);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn set_event_idx(&self, enabled: bool) {
        self.core.set_event_idx(enabled);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        config_window(&self.config, offset, size)
    }

    fn set_config(&self, _offset: u32, _buf: &[u8]) -> io::Result<()> {
        // Nothing is writable (no CONFIG_WCE): ignore, as a device ignores writes to read-only
        // config fields.
        Ok(())
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<Mem>) -> io::Result<()> {
        self.core.set_memory(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        self.core.queues_per_thread()
    }

    fn exit_event(&self, thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.core.exit_event(thread_index)
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        self.core.drain_queue(queue_index as usize);
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        if !evset.contains(EventSet::IN) {
            return Ok(());
        }
        let Some(_busy) = self.core.begin_event() else {
            return Ok(());
        };
        let queue = thread_id;
        let (Some(vring), Some(inflight)) = (
            vrings.get(usize::from(device_event)),
            self.core.inflight(queue).cloned(),
        ) else {
            warn!("blk: event {device_event} on vring thread {thread_id} matches no queue");
            return Ok(());
        };
        drain(&self.core, vring, queue, |chains| {
            let done: Vec<(u16, u32)> = chains
                .iter()
                .map(|c| (c.head_index(), self.serve_chain(c, queue)))
                .collect();
            complete(vring, &inflight, queue, &done);
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockdev::MemDevice;

    #[test]
    fn config_space_layout() {
        let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(8 << 20));
        let cfg = BlkConfig {
            read_only: false,
            queues: 3,
            serial: b"abc".to_vec(),
            block_size: 4096,
        };
        let d = BlkDevice::new(dev, cfg).unwrap();
        let c = d.get_config(0, 60);
        assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), 16384);
        assert_eq!(u32::from_le_bytes(c[12..16].try_into().unwrap()), SEG_MAX);
        assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 4096);
        assert_eq!(u16::from_le_bytes(c[34..36].try_into().unwrap()), 3);
        assert_eq!(u32::from_le_bytes(c[44..48].try_into().unwrap()), 8);
        let f = d.features();
        assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(f & (1 << VIRTIO_BLK_F_DISCARD), 0);
    }

    #[test]
    fn bad_settings_are_refused() {
        let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(1 << 20));
        let ok = BlkConfig {
            read_only: true,
            queues: 1,
            serial: Vec::new(),
            block_size: 512,
        };
        assert!(BlkDevice::new(Arc::clone(&dev), ok.clone()).is_ok());
        for bad in [
            BlkConfig {
                queues: 0,
                ..ok.clone()
            },
            BlkConfig {
                block_size: 1024,
                ..ok.clone()
            },
            BlkConfig {
                serial: vec![b'x'; 21],
                ..ok.clone()
            },
        ] {
            assert!(BlkDevice::new(Arc::clone(&dev), bad).is_err());
        }
    }

    /// IN and OUT over buffers split at odd places (header and data sharing a descriptor, the
    /// status byte alone or at the end of a data descriptor), on the image file (`preadv` /
    /// `pwritev` into guest memory) and on a memory device (the bounce-buffer default): the
    /// bytes land exactly where they belong, and a range past the end is IOERR.
    #[test]
    fn data_moves_straight_between_guest_buffers_and_the_device() {
        use crate::blockdev::FileDevice;
        use vm_memory::{Bytes, GuestAddress};
        const SIZE: usize = 4 << 20;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let initial: Vec<u8> = (0..SIZE).map(|i| (i * 7 + i / 511) as u8).collect();
        std::fs::write(&path, &initial).unwrap();
        let file: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(&path, false).unwrap());
        let memdev = Arc::new(MemDevice::from_vec(initial.clone()));
        let mem = Arc::new(Mem::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap());
        let get = |at: u64, len: usize| {
            let mut v = vec![0u8; len];
            mem.read_slice(&mut v, GuestAddress(at)).unwrap();
            v
        };
        let buf = 0x10_0000u64;
        for dev in [file, Arc::clone(&memdev) as Arc<dyn BlockDevice>] {
            let blk = BlkDevice::new(
                Arc::clone(&dev),
                BlkConfig {
                    read_only: false,
                    queues: 1,
                    serial: Vec::new(),
                    block_size: 512,
                },
            )
            .unwrap();
            let mut model = initial.clone();
            // OUT of 3 sectors at sector 5: header + 100 data bytes in one descriptor, the rest
            // in two more; the status byte alone.
            let data: Vec<u8> = (0..1536u32).map(|i| (i * 13 + 1) as u8).collect();
            let mut req = Vec::new();
            req.extend_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
            req.extend_from_slice(&0u32.to_le_bytes());
            req.extend_from_slice(&5u64.to_le_bytes());
            req.extend_from_slice(&data);
            mem.write_slice(&req, GuestAddress(buf)).unwrap();
            let st = buf + 0x10_0000;
            let bufs = [
                (buf, 116, false),
                (buf + 116, 1001, false),
                (buf + 1117, (req.len() - 1117) as u32, false),
                (st, 1, true),
            ];
            let used = blk.serve_chain(&queue::mock_chain(&mem, &bufs), 0);
            assert_eq!((used, get(st, 1)[0]), (1, VIRTIO_BLK_S_OK as u8));
            model[5 * 512..8 * 512].copy_from_slice(&data);
            // IN of 4 sectors at sector 4 into three odd-sized buffers, the status byte at the
            // end of the last one.
            let mut hdr = Vec::new();
            hdr.extend_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
            hdr.extend_from_slice(&0u32.to_le_bytes());
            hdr.extend_from_slice(&4u64.to_le_bytes());
            mem.write_slice(&hdr, GuestAddress(buf)).unwrap();
            let out = buf + 0x20_0000;
            mem.write_slice(&[0xA5; 4096], GuestAddress(out)).unwrap();
            let bufs = [
                (buf, 16, false),
                (out, 3, true),
                (out + 3, 2000, true),
                (out + 2003, 2048 - 2003 + 1, true),
            ];
            let used = blk.serve_chain(&queue::mock_chain(&mem, &bufs), 0);
            assert_eq!(used, 2049);
            assert!(get(out, 2048) == model[4 * 512..8 * 512]);
            assert_eq!(get(out + 2048, 2), vec![VIRTIO_BLK_S_OK as u8, 0xA5]);
            // Past the end: IOERR, nothing written to the data buffer.
            let last = (SIZE / 512) as u64 - 1;
            hdr[8..16].copy_from_slice(&last.to_le_bytes());
            mem.write_slice(&hdr, GuestAddress(buf)).unwrap();
            mem.write_slice(&[0xA5; 1025], GuestAddress(out)).unwrap();
            let used = blk.serve_chain(
                &queue::mock_chain(&mem, &[(buf, 16, false), (out, 1025, true)]),
                0,
            );
            assert_eq!((used, get(out + 1024, 1)[0]), (1, VIRTIO_BLK_S_IOERR as u8));
            assert_eq!(get(out, 1024), vec![0xA5; 1024]);
            let mut on_dev = vec![0u8; SIZE];
            dev.read_at(&mut on_dev, 0).unwrap();
            assert!(on_dev == model, "the device holds exactly what was written");
        }
    }
}
