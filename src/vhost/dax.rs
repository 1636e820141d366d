//! The virtio-fs DAX window (shared memory region 0) over the standard vhost-user SHMEM
//! protocol: the frontend acks `VHOST_USER_PROTOCOL_F_SHMEM`, learns the window's size with
//! GET_SHMEM_CONFIG and gives us a backend request channel; we then answer the guest's
//! FUSE_SETUPMAPPING by asking the frontend (SHMEM_MAP, with reply-ack) to map the chunk's slab
//! of our page-cache memfd at the window offset the guest chose, and FUSE_REMOVEMAPPING by
//! SHMEM_UNMAP of exactly what was mapped.
//!
//! This module owns the slot table (which window range shows which file range) and the channel;
//! the engine ([`crate::fs::Fs::dax_pin`]) owns what a mapping means for the page cache (pinning,
//! read-in, page_mkwrite). The engine calls back through [`DaxRevoker`] when a file's pages move
//! or are freed. The slot table lock is never held while calling the engine, so the lock order
//! is the engine's: file rw lock → ns → slot table → page map.

use crate::errno::Errno;
use crate::fs::{DaxRevoker, Fs, Ino, Revoked};
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

/// One live mapping: window bytes `[moffset, moffset + len)` show file bytes
/// `[foffset, foffset + len)` of `ino`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    ino: Ino,
    foffset: u64,
    len: u64,
    write: bool,
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

/// Slots overlapping `[start, end)` (window offsets).
fn overlapping(slots: &BTreeMap<u64, Slot>, start: u64, end: u64) -> Vec<(u64, Slot)> {
    // A slot is at most 2 MiB long, so one starting before `start - 2 MiB` cannot reach it.
    let from = start.saturating_sub(DAX_RANGE);
    slots
        .range(from..end)
        .filter(|(m, s)| **m + s.len > start)
        .map(|(m, s)| (*m, *s))
        .collect()
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
        if let Err(e) = b.shmem_unmap(&Self::map_msg(moffset, s.len, 0, s.write)) {
            warn!(
                "vhost-user-fs: SHMEM_UNMAP of window {moffset:#x}+{:#x} failed: {e}",
                s.len
            );
        }
    }

    fn unpin_all(&self, gone: &[(u64, Slot)]) {
        for (_, s) in gone {
            self.fs.dax_unpin(s.ino, s.foffset, s.len, s.write);
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
        let gone: Vec<(u64, Slot)> = std::mem::take(&mut *self.slots()).into_iter().collect();
        if !gone.is_empty() {
            info!(
                "vhost-user-fs: dropping {} window mapping(s) of a gone frontend",
                gone.len()
            );
        }
        self.unpin_all(&gone);
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
        let fd_offset = self
            .fs
            .dax_pin(ino, arg.foffset, arg.len, write)
            .inspect_err(|e| {
                if *e == Errno::EINVAL {
                    warn!(
                        "fuse: SETUPMAPPING of inode {ino} bytes {:#x}+{:#x}: not page-aligned in one 2 MiB chunk: EINVAL",
                        arg.foffset, arg.len
                    );
                }
            })?;
        let new = Slot {
            ino,
            foffset: arg.foffset,
            len: arg.len,
            write,
        };
        let b = self.backend();
        let (old, r) = {
            let mut slots = self.slots();
            // A range already mapped (the guest's read-only to writable upgrade, or a slot
            // reused without REMOVEMAPPING) is unmapped first: SHMEM_MAP must not overlap.
            let old = overlapping(&slots, arg.moffset, arg.moffset + arg.len);
            for (m, s) in &old {
                self.send_unmap(b.as_ref(), *m, s);
                slots.remove(m);
            }
            let r = match &b {
                Some(b) => {
                    // SAFETY: the memfd lives as long as the file system, which `self.fs` keeps
                    // alive across this call.
                    let fd = unsafe { BorrowedFd::borrow_raw(self.fs.dax_memfd()) };
                    b.shmem_map(&Self::map_msg(arg.moffset, arg.len, fd_offset, write), &fd)
                        .map(|_| ())
                }
                None => Err(std::io::Error::other("no backend request channel")),
            };
            if r.is_ok() {
                slots.insert(arg.moffset, new);
            }
            (old, r)
        };
        self.unpin_all(&old);
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
                error!(
                    "vhost-user-fs: SHMEM_MAP of inode {ino} at window {:#x}+{:#x} failed: {e}: EIO",
                    arg.moffset, arg.len
                );
                self.fs.dax_unpin(ino, arg.foffset, arg.len, write);
                Err(Errno::EIO)
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
            let mut gone = Vec::new();
            // Every mapping a range touches must lie inside it (UNMAP covers whole mappings).
            for &(m, len) in &sorted {
                for (sm, s) in overlapping(&slots, m, m + len) {
                    if sm < m || sm + s.len > m + len {
                        warn!(
                            "fuse: REMOVEMAPPING of window {m:#x}+{len:#x} cuts the mapping at {sm:#x}+{:#x}: EINVAL",
                            s.len
                        );
                        return Err(Errno::EINVAL);
                    }
                    gone.push((sm, s));
                }
            }
            for (m, s) in &gone {
                self.send_unmap(b.as_ref(), *m, s);
                slots.remove(m);
            }
            gone
        };
        self.unpin_all(&gone);
        Ok(())
    }

    fn reset(&self) {
        let b = self.backend();
        let gone: Vec<(u64, Slot)> = {
            let mut slots = self.slots();
            let gone: Vec<(u64, Slot)> = std::mem::take(&mut *slots).into_iter().collect();
            for (m, s) in &gone {
                self.send_unmap(b.as_ref(), *m, s);
            }
            gone
        };
        self.unpin_all(&gone);
    }
}

impl DaxRevoker for Window {
    fn revoke(&self, ino: Ino, from: u64, to: u64) -> Vec<Revoked> {
        let b = self.backend();
        let mut slots = self.slots();
        let hit: Vec<(u64, Slot)> = slots
            .iter()
            .filter(|(_, s)| s.ino == ino && s.foffset < to && s.foffset + s.len > from)
            .map(|(m, s)| (*m, *s))
            .collect();
        hit.into_iter()
            .map(|(m, s)| {
                info!(
                    "dax: inode {ino}: unmapping window {m:#x}+{:#x}: its pages move or go",
                    s.len
                );
                self.send_unmap(b.as_ref(), m, &s);
                slots.remove(&m);
                Revoked {
                    offset: s.foffset,
                    len: s.len,
                    write: s.write,
                }
            })
            .collect()
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
        let s = |len| Slot {
            ino: 12,
            foffset: 0,
            len,
            write: false,
        };
        let mut t = BTreeMap::new();
        t.insert(0, s(2 << 20));
        t.insert(2 << 20, s(4096));
        t.insert(3 << 20, s(1 << 20));
        let keys = |v: Vec<(u64, Slot)>| v.into_iter().map(|(m, _)| m).collect::<Vec<_>>();
        assert_eq!(keys(overlapping(&t, 4096, 8192)), vec![0]);
        assert_eq!(
            keys(overlapping(&t, 2 << 20, 4 << 20)),
            vec![2 << 20, 3 << 20]
        );
        assert_eq!(
            keys(overlapping(&t, (2 << 20) + 4096, 3 << 20)),
            Vec::<u64>::new()
        );
    }
}
