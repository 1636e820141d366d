//! The virtio-fs DAX window (shared memory region 0) over the standard vhost-user SHMEM
//! protocol: the frontend acks `VHOST_USER_PROTOCOL_F_SHMEM`, learns the window's size with
//! GET_SHMEM_CONFIG and gives us a backend request channel; we then answer the guest's
//! FUSE_SETUPMAPPING by asking the frontend (SHMEM_MAP, with reply-ack) to map the chunk's slab
//! of our page-cache memfd at the window offset the guest chose, and FUSE_REMOVEMAPPING by
//! SHMEM_UNMAP of exactly what was mapped.
//!
//! This module owns the slot table (which window range shows which file range) and the channel;
//! the engine ([`crate::fs::Fs::dax_pin`]) owns what a mapping means for the page cache (pinning,
//! read-in, page_mkwrite). A slot holds the engine's [`DaxPin`] and is recorded (and mapped)
//! inside `dax_pin`'s callback, under the file's rw lock, so a truncate or the freeing of the
//! file always finds it. The engine calls back through [`DaxRevoker`] when a file's pages are
//! cut (unmap, then map again), move or are freed (unmap). The slot table lock is never held
//! while calling the engine, so the lock order is the engine's: file rw lock → ns → slot table
//! → page map.

use crate::errno::Errno;
use crate::fs::{DaxPin, DaxRevoker, Fs, Ino, Revoked};
use crate::fuse::DaxWindow;
use crate::fuse::abi::{
    RemovemappingOne, SETUPMAPPING_FLAG_READ, SETUPMAPPING_FLAG_WRITE, SetupmappingIn,
};
use log::{debug, error, info, warn};
use std::collections::BTreeMap;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use vhost::vhost_user::message::{VhostUserMMap, VhostUserMMapFlags, VhostUserShMemConfig};
use vhost::vhost_user::{Backend, VhostUserFrontendReqHandler};

/// The shared memory region id of the virtio-fs DAX window (VIRTIO_FS_SHMCAP_ID_CACHE).
pub const DAX_SHMID: u8 = 0;
/// The window must be a whole number of the guest's 2 MiB mapping ranges.
pub const DAX_RANGE: u64 = 2 << 20;
/// Default `--dax-window` size.
pub const DEFAULT_WINDOW: u64 = 512 << 20;
const PAGE: u64 = 4096;

/// One live mapping: window bytes `[moffset, moffset + pin.len)` show file bytes
/// `[pin.offset, pin.offset + pin.len)` of `pin.ino()`.
#[derive(Debug)]
struct Slot {
    pin: DaxPin,
}

pub struct Window {
    fs: Arc<Fs>,
    size: u64,
    /// GET_SHMEM_CONFIG was answered: the frontend acked SHMEM (the protocol handler refuses
    /// the message otherwise).
    configured: AtomicBool,
    backend: Mutex<Option<Backend>>,
    /// Live mappings by window offset.
    slots: Mutex<BTreeMap<u64, Slot>>,
}

/// Check a window range: page-aligned, not empty, inside a window of `size` bytes.
fn check_range(moffset: u64, len: u64, size: u64) -> Result<(), Errno> {
    if len == 0
        || !moffset.is_multiple_of(PAGE)
        || !len.is_multiple_of(PAGE)
        || moffset.checked_add(len).is_none_or(|e| e > size)
    {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// The window offsets of the slots overlapping `[start, end)`; `len` gives a slot's length.
fn overlapping<T>(
    slots: &BTreeMap<u64, T>,
    start: u64,
    end: u64,
    len: impl Fn(&T) -> u64,
) -> Vec<u64> {
    // A slot is at most 2 MiB long, so one starting before `start - 2 MiB` cannot reach it.
    let from = start.saturating_sub(DAX_RANGE);
    slots
        .range(from..end)
        .filter(|(m, s)| **m + len(s) > start)
        .map(|(m, _)| *m)
        .collect()
}

fn slot_len(s: &Slot) -> u64 {
    s.pin.len
}

/// The window size checked: a non-zero multiple of 2 MiB (0 means no window).
pub fn check_window_size(size: u64) -> Result<(), String> {
    if size > 0 && !size.is_multiple_of(DAX_RANGE) {
        return Err(format!(
            "the DAX window size must be a multiple of 2 MiB, not {size}"
        ));
    }
    Ok(())
}

impl Window {
    /// A window of `size` bytes (a multiple of 2 MiB) over `fs`'s page cache; the engine learns
    /// about it at once (for revocation).
    pub fn new(fs: Arc<Fs>, size: u64) -> Arc<Window> {
        let w = Arc::new(Window {
            fs,
            size,
            configured: AtomicBool::new(false),
            backend: Mutex::new(None),
            slots: Mutex::new(BTreeMap::new()),
        });
        let weak: std::sync::Weak<dyn DaxRevoker> = Arc::downgrade(&w) as _;
        w.fs.set_dax_revoker(weak);
        w
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    fn slots(&self) -> MutexGuard<'_, BTreeMap<u64, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn backend(&self) -> Option<Backend> {
        self.backend
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// GET_SHMEM_CONFIG: one region, id 0, the window.
    pub fn shmem_config(&self) -> VhostUserShMemConfig {
        self.configured.store(true, Ordering::Release);
        VhostUserShMemConfig::new(1, &[self.size])
    }

    /// SET_BACKEND_REQ_FD: the channel SHMEM_MAP / SHMEM_UNMAP go through.
    pub fn set_backend(&self, b: Backend) {
        *self.backend.lock().unwrap_or_else(|e| e.into_inner()) = Some(b);
        info!("vhost-user-fs: backend request channel set");
    }

    /// Number of live mappings.
    pub fn mappings(&self) -> usize {
        self.slots().len()
    }

    fn map_msg(moffset: u64, len: u64, fd_offset: u64, write: bool) -> VhostUserMMap {
        VhostUserMMap {
            shmid: DAX_SHMID,
            padding: [0; 7],
            fd_offset,
            shm_offset: moffset,
            len,
            flags: if write {
                VhostUserMMapFlags::WRITABLE.bits()
            } else {
                VhostUserMMapFlags::default().bits()
            },
        }
    }

    /// SHMEM_UNMAP of one slot (errors are logged: the mapping is gone for us either way).
    fn send_unmap(&self, b: Option<&Backend>, moffset: u64, s: &Slot) {
        let Some(b) = b else { return };
        if let Err(e) = b.shmem_unmap(&Self::map_msg(moffset, s.pin.len, 0, s.pin.write)) {
            warn!(
                "vhost-user-fs: SHMEM_UNMAP of window {moffset:#x}+{:#x} failed: {e}",
                s.pin.len
            );
        }
    }

    /// SHMEM_MAP of `pin` at window offset `moffset`, with reply-ack.
    fn send_map(&self, b: Option<&Backend>, moffset: u64, pin: &DaxPin) -> std::io::Result<()> {
        let Some(b) = b else {
            return Err(std::io::Error::other("no backend request channel"));
        };
        // SAFETY: the memfd lives as long as the file system, which `self.fs` keeps alive
        // across this call.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fs.dax_memfd()) };
        b.shmem_map(
            &Self::map_msg(moffset, pin.len, pin.fd_offset, pin.write),
            &fd,
        )
        .map(|_| ())
    }

    /// Take the slots at `keys` out of the table, unmapping each; the caller unpins them once
    /// the table is unlocked.
    fn take_slots(
        &self,
        b: Option<&Backend>,
        slots: &mut BTreeMap<u64, Slot>,
        keys: &[u64],
    ) -> Vec<DaxPin> {
        keys.iter()
            .filter_map(|m| {
                let s = slots.remove(m)?;
                self.send_unmap(b, *m, &s);
                Some(s.pin)
            })
            .collect()
    }

    fn unpin_all(&self, gone: Vec<DaxPin>) {
        for pin in gone {
            self.fs.dax_unpin(pin);
        }
    }

    /// The frontend went away: its mappings and the channel are gone; drop ours without
    /// asking it anything.
    pub fn disconnect(&self) {
        *self.backend.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.device_reset();
    }

    /// The frontend reset the device, which drops its shared memory mappings (the channel
    /// stays, for the guest's next session): forget ours without asking it anything.
    pub fn device_reset(&self) {
        let gone: Vec<DaxPin> = std::mem::take(&mut *self.slots())
            .into_values()
            .map(|s| s.pin)
            .collect();
        if !gone.is_empty() {
            info!(
                "vhost-user-fs: dropping {} window mapping(s) of a gone frontend",
                gone.len()
            );
        }
        self.unpin_all(gone);
    }
}

impl DaxWindow for Window {
    fn active(&self) -> bool {
        self.size > 0 && self.configured.load(Ordering::Acquire) && self.backend().is_some()
    }

    fn setup(&self, ino: Ino, arg: &SetupmappingIn) -> Result<(), Errno> {
        let known = SETUPMAPPING_FLAG_READ | SETUPMAPPING_FLAG_WRITE;
        if arg.flags & !known != 0 || arg.flags & SETUPMAPPING_FLAG_READ == 0 {
            warn!(
                "fuse: SETUPMAPPING with flags {:#x} (READ is required, only READ|WRITE known): EINVAL",
                arg.flags
            );
            return Err(Errno::EINVAL);
        }
        if let Err(e) = check_range(arg.moffset, arg.len, self.size) {
            warn!(
                "fuse: SETUPMAPPING of window {:#x}+{:#x} outside the {:#x}-byte window or unaligned: EINVAL",
                arg.moffset, arg.len, self.size
            );
            return Err(e);
        }
        let write = arg.flags & SETUPMAPPING_FLAG_WRITE != 0;
        let b = self.backend();
        let mut old = Vec::new();
        let mut map_err = None;
        // The slot is recorded and mapped under the file's rw lock (inside `dax_pin`), so a
        // truncate or the freeing of the file finds it.
        let r = self.fs.dax_pin(ino, arg.foffset, arg.len, write, |pin| {
            let mut slots = self.slots();
            // A range already mapped (the guest's read-only to writable upgrade, or a slot
            // reused without REMOVEMAPPING) is unmapped first: SHMEM_MAP must not overlap.
            let keys = overlapping(&slots, arg.moffset, arg.moffset + arg.len, slot_len);
            old = self.take_slots(b.as_ref(), &mut slots, &keys);
            match self.send_map(b.as_ref(), arg.moffset, &pin) {
                Ok(()) => {
                    slots.insert(arg.moffset, Slot { pin });
                    Ok(())
                }
                Err(e) => {
                    map_err = Some(e);
                    Err((pin, Errno::EIO))
                }
            }
        });
        self.unpin_all(old);
        match r {
            Ok(()) => {
                debug!(
                    "dax: window {:#x}+{:#x} -> inode {ino} {:#x} ({})",
                    arg.moffset,
                    arg.len,
                    arg.foffset,
                    if write { "rw" } else { "ro" }
                );
                Ok(())
            }
            Err(e) => {
                if let Some(me) = map_err {
                    error!(
                        "vhost-user-fs: SHMEM_MAP of inode {ino} at window {:#x}+{:#x} failed: {me}: EIO",
                        arg.moffset, arg.len
                    );
                } else if e == Errno::EINVAL {
                    warn!(
                        "fuse: SETUPMAPPING of inode {ino} bytes {:#x}+{:#x}: not page-aligned in one 2 MiB chunk: EINVAL",
                        arg.foffset, arg.len
                    );
                }
                Err(e)
            }
        }
    }

    fn remove(&self, ranges: &[RemovemappingOne]) -> Result<(), Errno> {
        let mut sorted: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for r in ranges {
            if let Err(e) = check_range(r.moffset, r.len, self.size) {
                warn!(
                    "fuse: REMOVEMAPPING of window {:#x}+{:#x} outside the window or unaligned: EINVAL",
                    r.moffset, r.len
                );
                return Err(e);
            }
            sorted.push((r.moffset, r.len));
        }
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0].0 + w[0].1 > w[1].0) {
            warn!("fuse: REMOVEMAPPING with overlapping ranges: EINVAL");
            return Err(Errno::EINVAL);
        }
        let b = self.backend();
        let gone = {
            let mut slots = self.slots();
            let mut keys = Vec::new();
            // Every mapping a range touches must lie inside it (UNMAP covers whole mappings).
            for &(m, len) in &sorted {
                for sm in overlapping(&slots, m, m + len, slot_len) {
                    let sl = slots[&sm].pin.len;
                    if sm < m || sm + sl > m + len {
                        warn!(
                            "fuse: REMOVEMAPPING of window {m:#x}+{len:#x} cuts the mapping at {sm:#x}+{sl:#x}: EINVAL"
                        );
                        return Err(Errno::EINVAL);
                    }
                    keys.push(sm);
                }
            }
            self.take_slots(b.as_ref(), &mut slots, &keys)
        };
        self.unpin_all(gone);
        Ok(())
    }

    fn reset(&self) {
        let b = self.backend();
        let gone = {
            let mut slots = self.slots();
            let keys: Vec<u64> = slots.keys().copied().collect();
            self.take_slots(b.as_ref(), &mut slots, &keys)
        };
        self.unpin_all(gone);
    }
}

impl DaxRevoker for Window {
    fn revoke(&self, ino: Ino, from: u64, to: u64) -> Vec<Revoked> {
        let b = self.backend();
        let mut slots = self.slots();
        let hit: Vec<u64> = slots
            .iter()
            .filter(|(_, s)| {
                s.pin.ino() == ino && s.pin.offset < to && s.pin.offset + s.pin.len > from
            })
            .map(|(m, _)| *m)
            .collect();
        hit.into_iter()
            .filter_map(|m| {
                let s = slots.remove(&m)?;
                debug!(
                    "dax: inode {ino}: unmapping window {m:#x}+{:#x}: its pages move or go",
                    s.pin.len
                );
                self.send_unmap(b.as_ref(), m, &s);
                Some(Revoked {
                    moffset: m,
                    pin: s.pin,
                })
            })
            .collect()
    }

    fn reinstate(&self, r: Revoked) -> Option<DaxPin> {
        let b = self.backend();
        let mut slots = self.slots();
        let end = r.moffset + r.pin.len;
        if !overlapping(&slots, r.moffset, end, slot_len).is_empty() {
            debug!(
                "dax: window {:#x}+{:#x} was mapped again meanwhile: not restoring {:?}",
                r.moffset, r.pin.len, r.pin
            );
            return Some(r.pin);
        }
        match self.send_map(b.as_ref(), r.moffset, &r.pin) {
            Ok(()) => {
                slots.insert(r.moffset, Slot { pin: r.pin });
                None
            }
            Err(e) => {
                warn!(
                    "vhost-user-fs: SHMEM_MAP restoring window {:#x} ({:?}) failed: {e}",
                    r.moffset, r.pin
                );
                Some(r.pin)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_ranges_are_checked() {
        let size = 4 << 20;
        assert!(check_range(0, 2 << 20, size).is_ok());
        assert!(check_range(2 << 20, 2 << 20, size).is_ok());
        assert_eq!(check_range(2 << 20, 4 << 20, size), Err(Errno::EINVAL));
        assert_eq!(check_range(100, 4096, size), Err(Errno::EINVAL));
        assert_eq!(check_range(0, 0, size), Err(Errno::EINVAL));
        assert_eq!(check_range(!4095u64, 8192, size), Err(Errno::EINVAL));
        assert!(check_window_size(0).is_ok());
        assert!(check_window_size(6 << 20).is_ok());
        assert!(check_window_size(3 << 20).is_err());
    }

    #[test]
    fn overlap_finds_every_slot_touching_a_range() {
        let mut t: BTreeMap<u64, u64> = BTreeMap::new();
        t.insert(0, 2 << 20);
        t.insert(2 << 20, 4096);
        t.insert(3 << 20, 1 << 20);
        let ov = |a, b| overlapping(&t, a, b, |l| *l);
        assert_eq!(ov(4096, 8192), vec![0]);
        assert_eq!(ov(2 << 20, 4 << 20), vec![2 << 20, 3 << 20]);
        assert_eq!(ov((2 << 20) + 4096, 3 << 20), Vec::<u64>::new());
    }
}
