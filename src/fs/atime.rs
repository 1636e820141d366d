//! Access times: when a read moves a file's atime, following the mount's atime option as the
//! kernel's `touch_atime` does (noatime, relatime, strictatime, and nodiratime for directories).
//! The client kernel leaves atime to us (a FUSE inode is `S_NOATIME` on its side), so reads
//! (READ) and listings (READDIR from the start) call [`Fs::accessed`].

use super::Fs;
use super::types::Ino;
use crate::errno::Result;
use crate::inode::blocks::now;
use crate::ondisk::inode::Inode;
use std::sync::atomic::Ordering;

/// How reads move atime: the mount's `noatime`, `relatime` (the Linux default) or `strictatime`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AtimeMode {
    /// Reads never change atime (`noatime`).
    #[default]
    Never,
    /// A read moves atime when it is not newer than mtime or ctime, or is a day old.
    Relative,
    /// Every read moves atime.
    Strict,
}

/// The atime options of a mount.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AtimePolicy {
    pub mode: AtimeMode,
    /// `nodiratime`: listing a directory never changes its atime.
    pub nodiratime: bool,
}

impl AtimePolicy {
    /// The policy of mount(2) flags: `MS_NOATIME`, `MS_STRICTATIME`, otherwise relatime (the
    /// kernel's default also without `MS_RELATIME`), and `MS_NODIRATIME`.
    pub fn from_mount_flags(flags: libc::c_ulong) -> AtimePolicy {
        let mode = if flags & libc::MS_NOATIME != 0 {
            AtimeMode::Never
        } else if flags & libc::MS_STRICTATIME != 0 {
            AtimeMode::Strict
        } else {
            AtimeMode::Relative
        };
        AtimePolicy {
            mode,
            nodiratime: flags & libc::MS_NODIRATIME != 0,
        }
    }

    fn encode(self) -> u8 {
        let m = match self.mode {
            AtimeMode::Never => 0,
            AtimeMode::Relative => 1,
            AtimeMode::Strict => 2,
        };
        m | if self.nodiratime { 4 } else { 0 }
    }

    fn decode(v: u8) -> AtimePolicy {
        AtimePolicy {
            mode: match v & 3 {
                1 => AtimeMode::Relative,
                2 => AtimeMode::Strict,
                _ => AtimeMode::Never,
            },
            nodiratime: v & 4 != 0,
        }
    }
}

/// relatime's age limit: an atime older than this moves on the next read (as in the kernel).
const RELATIME_MAX_AGE_SECS: i64 = 24 * 60 * 60;
/// The kernel stamps times from a clock that ticks every few milliseconds, so reads closer
/// together than this leave atime alone under strictatime too (and we store no inode for them).
const TICK_NS: i128 = 4_000_000;

fn ns(t: (i64, u32)) -> i128 {
    t.0 as i128 * 1_000_000_000 + t.1 as i128
}

/// Whether a read at `t` moves the atime of `inode` under `policy`.
fn due(policy: AtimePolicy, inode: &Inode, t: (i64, u32)) -> bool {
    if inode.is_dir() && policy.nodiratime {
        return false;
    }
    let atime = ns(inode.atime);
    match policy.mode {
        AtimeMode::Never => false,
        AtimeMode::Strict => ns(t) - atime >= TICK_NS || atime > ns(t),
        AtimeMode::Relative => {
            atime <= ns(inode.mtime)
                || atime <= ns(inode.ctime)
                || t.0 - inode.atime.0 >= RELATIME_MAX_AGE_SECS
        }
    }
}

impl Fs {
    /// Set how reads move atime (default: never).
    pub fn set_atime_policy(&self, policy: AtimePolicy) {
        self.atime.store(policy.encode(), Ordering::Relaxed);
    }

    pub fn atime_policy(&self) -> AtimePolicy {
        AtimePolicy::decode(self.atime.load(Ordering::Relaxed))
    }

    /// Whether a read of `ino` now would move its atime. A FUSE client serves reads from its own
    /// page cache without asking us; an open for which this is true must make it ask.
    pub fn atime_due(&self, ino: Ino) -> Result<bool> {
        if self.atime_policy().mode == AtimeMode::Never || self.is_read_only() {
            return Ok(false);
        }
        let _g = self.ns_read();
        let inode = self.read_inode(ino)?;
        Ok(due(self.atime_policy(), &inode, now()))
    }

    /// `ino` was read (`inode` as read just before): move its atime when the policy says so.
    /// As in the kernel, a failure to store the new atime does not fail the read; it is logged.
    pub(crate) fn accessed(&self, ino: Ino, inode: &Inode) {
        let policy = self.atime_policy();
        if policy.mode == AtimeMode::Never || self.is_read_only() || !due(policy, inode, now()) {
            return;
        }
        if let Err(e) = self.touch_atime(ino, policy) {
            log::warn!("inode {ino}: updating the access time failed: {e:?}");
        }
    }

    fn touch_atime(&self, ino: Ino, policy: AtimePolicy) -> Result<()> {
        let _g = self.ns_write();
        let mut i = self.read_inode(ino)?;
        let t = now();
        // Another reader may have moved it meanwhile.
        if i.links_count == 0 || !due(policy, &i, t) {
            return Ok(());
        }
        i.atime = t;
        self.store_inode(ino, &i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode(atime: (i64, u32), mtime: (i64, u32), ctime: (i64, u32), dir: bool) -> Inode {
        Inode {
            mode: if dir { 0o040755 } else { 0o100644 },
            atime,
            mtime,
            ctime,
            ..Default::default()
        }
    }

    const NOW: (i64, u32) = (1_000_000, 500);

    #[test]
    fn relatime_follows_the_kernel_rule() {
        let p = AtimePolicy::from_mount_flags(0);
        assert_eq!(p.mode, AtimeMode::Relative);
        // atime not newer than mtime (or ctime): the read moves it.
        assert!(due(p, &inode((900, 0), (900, 0), (800, 0), false), NOW));
        assert!(due(p, &inode((900, 0), (800, 0), (950, 0), false), NOW));
        // Newer than both and younger than a day: it stays.
        let fresh = (NOW.0 - 10, 0);
        assert!(!due(p, &inode(fresh, (900, 0), (900, 0), false), NOW));
        // A day old: it moves.
        let old = (NOW.0 - RELATIME_MAX_AGE_SECS, 0);
        assert!(due(p, &inode(old, (0, 0), (0, 0), false), NOW));
    }

    #[test]
    fn strict_never_and_nodiratime() {
        let strict = AtimePolicy::from_mount_flags(libc::MS_STRICTATIME);
        let fresh = inode((NOW.0 - 1, 0), (0, 0), (0, 0), false);
        assert!(due(strict, &fresh, NOW));
        // Within one clock tick: the same time.
        assert!(!due(strict, &inode(NOW, (0, 0), (0, 0), false), NOW));
        let never = AtimePolicy::from_mount_flags(libc::MS_NOATIME | libc::MS_STRICTATIME);
        assert_eq!(never.mode, AtimeMode::Never);
        assert!(!due(never, &inode((0, 0), (5, 0), (5, 0), false), NOW));
        let nodir = AtimePolicy::from_mount_flags(libc::MS_NODIRATIME);
        assert!(!due(nodir, &inode((0, 0), (5, 0), (5, 0), true), NOW));
        assert!(due(nodir, &inode((0, 0), (5, 0), (5, 0), false), NOW));
        for p in [strict, never, nodir, AtimePolicy::default()] {
            assert_eq!(AtimePolicy::decode(p.encode()), p);
        }
    }
}
