//! Where replies go and where WRITE payloads come from, per transport, so that file data is
//! copied once: a READ's data goes from the page cache straight into the reply's destination, a
//! WRITE's payload from where the request left it straight into the page cache.
//!
//! * [`ReplySink`]: the destination of a reply. [`GuestReply`] writes into the device-writable
//!   buffers of a virtio descriptor chain; [`FdReply`] sends with one `write`/`writev` to
//!   `/dev/fuse` (header plus the page-cache slices, no staging buffer); `Vec<u8>` collects the
//!   reply (tests, the `dispatch(&[u8]) -> Vec` adapter).
//! * [`GuestPayload`]: a WRITE payload left in a guest's descriptor buffers (a
//!   [`crate::fs::WriteSource`]); on `/dev/fuse` the payload is a slice of the request buffer.
//!
//! Guest memory is only touched through `vm-memory`'s `VolatileSlice`s (directly, or through
//! `virtio_queue::Writer`, which copies into them): no Rust reference to guest memory is ever
//! made, so a guest changing its buffers while we copy gets garbage in its own file, never
//! undefined behaviour or a panic in the daemon.

use super::abi::OutHeader;
use crate::errno::Errno;
use crate::fs::WriteSource;
use log::{error, warn};
use std::io::{self, IoSlice, Write};
use std::os::fd::RawFd;
use virtio_queue::Writer;
use vm_memory::VolatileSlice;

/// The destination of the reply to one request.
pub trait ReplySink {
    /// Send one complete reply message (out header included, its `len` set). A transport that
    /// cannot deliver it as is answers what it can (EIO when it does not fit) and logs why.
    fn send(&mut self, msg: &[u8]);
    /// Send a successful reply for `unique` whose payload is `parts` in order: the out header
    /// (written last where the transport allows, with the real length) and the data copied once
    /// from `parts`. False, with nothing sent, when the reply does not fit the destination (the
    /// caller answers with an error instead).
    fn send_data(&mut self, unique: u64, parts: &[&[u8]]) -> bool;
}

/// The out header of a successful reply carrying `payload` bytes.
pub fn data_header(unique: u64, payload: usize) -> [u8; OutHeader::SIZE] {
    let mut h = [0u8; OutHeader::SIZE];
    h[0..4].copy_from_slice(&((OutHeader::SIZE + payload) as u32).to_le_bytes());
    h[8..16].copy_from_slice(&unique.to_le_bytes());
    h
}

/// Collects the reply.
impl ReplySink for Vec<u8> {
    fn send(&mut self, msg: &[u8]) {
        self.extend_from_slice(msg);
    }

    fn send_data(&mut self, unique: u64, parts: &[&[u8]]) -> bool {
        let len = parts.iter().map(|p| p.len()).sum();
        self.reserve(OutHeader::SIZE + len);
        self.extend_from_slice(&data_header(unique, len));
        for p in parts {
            self.extend_from_slice(p);
        }
        true
    }
}

/// The reply of a `/dev/fuse` request: one `write(2)` of a message, or one `writev(2)` of the
/// header and the data slices (the kernel requires a reply in one call).
pub struct FdReply {
    fd: RawFd,
}

impl FdReply {
    pub fn new(fd: RawFd) -> FdReply {
        FdReply { fd }
    }

    fn writev(&self, bufs: &[IoSlice<'_>]) {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        loop {
            // SAFETY: `bufs` is a valid array of `bufs.len()` iovecs (IoSlice is ABI-compatible
            // with iovec), each over memory that stays readable for the call.
            let n = unsafe {
                libc::writev(
                    self.fd,
                    bufs.as_ptr().cast::<libc::iovec>(),
                    bufs.len() as libc::c_int,
                )
            };
            if n >= 0 {
                return;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
                // The request was interrupted and the kernel no longer waits for it; or the
                // connection is gone, which the next read reports.
                Some(libc::ENOENT) | Some(libc::ENODEV) => return,
                _ => {
                    error!("fuse: the kernel refused a {len}-byte reply: {e}");
                    return;
                }
            }
        }
    }
}

impl ReplySink for FdReply {
    fn send(&mut self, msg: &[u8]) {
        self.writev(&[IoSlice::new(msg)]);
    }

    fn send_data(&mut self, unique: u64, parts: &[&[u8]]) -> bool {
        let len = parts.iter().map(|p| p.len()).sum();
        let head = data_header(unique, len);
        let mut iov = Vec::with_capacity(1 + parts.len());
        iov.push(IoSlice::new(&head));
        iov.extend(
            parts
                .iter()
                .filter(|p| !p.is_empty())
                .map(|p| IoSlice::new(p)),
        );
        // A READ reply has at most a few runs of pages (one per 2 MiB slab, or one per page at
        // worst), far below IOV_MAX.
        self.writev(&iov);
        true
    }
}

/// The reply of a virtio request: the device-writable part of its descriptor chain.
pub struct GuestReply<'a> {
    w: Writer<'a, ()>,
    /// Bytes written through a writer split off `w` (a data reply's payload).
    split_written: usize,
    /// Names the chain in the log: queue and head index.
    queue: usize,
    head: u16,
}

impl<'a> GuestReply<'a> {
    pub fn new(w: Writer<'a, ()>, queue: usize, head: u16) -> GuestReply<'a> {
        GuestReply {
            w,
            split_written: 0,
            queue,
            head,
        }
    }

    /// Bytes written to the chain (the used length).
    pub fn written(&self) -> u32 {
        (self.w.bytes_written() + self.split_written) as u32
    }

    fn write_all(&mut self, bytes: &[u8]) {
        if let Err(e) = self.w.write_all(bytes) {
            warn!(
                "fs queue {}: chain {}: writing the reply failed: {e}",
                self.queue, self.head
            );
        }
    }
}

impl ReplySink for GuestReply<'_> {
    /// A reply larger than the writable part is replaced by an EIO error reply, as the kernel's
    /// own /dev/fuse path does with an oversized reply.
    fn send(&mut self, msg: &[u8]) {
        let room = self.w.available_bytes();
        if msg.len() <= room {
            return self.write_all(msg);
        }
        let unique = OutHeader::decode(msg).map_or(0, |h| h.unique);
        warn!(
            "fs queue {}: chain {} (unique {unique}): {}-byte reply does not fit {room} writable bytes: EIO",
            self.queue,
            self.head,
            msg.len()
        );
        if room >= OutHeader::SIZE {
            self.write_all(&super::reply::error(unique, Errno::EIO));
        }
    }

    /// The data goes into the buffers after the header's room; the header, with the real
    /// length, is written last.
    fn send_data(&mut self, unique: u64, parts: &[&[u8]]) -> bool {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let room = self.w.available_bytes();
        if OutHeader::SIZE + len > room {
            warn!(
                "fs queue {}: chain {} (unique {unique}): {}-byte reply does not fit {room} writable bytes",
                self.queue,
                self.head,
                OutHeader::SIZE + len
            );
            return false;
        }
        let mut data = match self.w.split_at(OutHeader::SIZE) {
            Ok(d) => d,
            Err(e) => {
                warn!(
                    "fs queue {}: chain {} (unique {unique}): cannot split the reply buffer: {e}",
                    self.queue, self.head
                );
                return false;
            }
        };
        for p in parts {
            if let Err(e) = data.write_all(p) {
                warn!(
                    "fs queue {}: chain {} (unique {unique}): writing the reply failed: {e}",
                    self.queue, self.head
                );
                break;
            }
        }
        let head = data_header(unique, data.bytes_written());
        self.write_all(&head);
        self.split_written += data.bytes_written();
        true
    }
}

/// A WRITE payload in a guest's device-readable buffers: exactly the payload's bytes, as
/// `vm-memory` slices of guest memory, copied out with volatile copies (no allocation, no Rust
/// reference to guest memory).
pub struct GuestPayload<'a> {
    bufs: Vec<VolatileSlice<'a>>,
    /// The next byte: buffer index and offset in it.
    at: (usize, usize),
    len: usize,
    short: bool,
}

impl<'a> GuestPayload<'a> {
    /// The payload held by `bufs`, in order.
    pub fn new(bufs: Vec<VolatileSlice<'a>>) -> GuestPayload<'a> {
        let len = bufs.iter().map(|b| b.len()).sum();
        GuestPayload {
            bufs,
            at: (0, 0),
            len,
            short: false,
        }
    }
}

impl WriteSource for GuestPayload<'_> {
    fn len(&self) -> usize {
        self.len
    }

    fn copy_to(&mut self, dst: &mut [u8]) {
        let mut got = 0;
        while got < dst.len() {
            let (i, off) = self.at;
            let Some(b) = self.bufs.get(i) else { break };
            let n = (b.len() - off).min(dst.len() - got);
            match b.subslice(off, n) {
                Ok(s) => got += s.copy_to(&mut dst[got..got + n]),
                Err(_) => break,
            }
            self.at = if off + n == b.len() {
                (i + 1, 0)
            } else {
                (i, off + n)
            };
        }
        if got < dst.len() {
            // The buffers hold `len` bytes and the engine never asks for more: a bug if seen.
            error!(
                "virtio WRITE payload ended {} bytes early; the write is answered EIO",
                dst.len() - got
            );
            dst[got..].fill(0);
            self.short = true;
        }
        self.len = self.len.saturating_sub(dst.len());
    }

    fn failed(&self) -> bool {
        self.short
    }
}
