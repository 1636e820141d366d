//! Follows the mount's flags after `mount -o remount,...`: the kernel changes them without
//! telling a FUSE daemon, but the atime policy is ours to apply (a remount to `ro` must stop
//! atime updates, `noatime`/`strictatime` change them). A thread waits for changes of the mount
//! table (`/proc/self/mountinfo` is pollable) and reads our mount's options again each time.

use crate::fs::{AtimeMode, AtimePolicy, Fs};
use std::io::{Read, Seek};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Start the watcher of the mount at `mountpoint` (absolute and canonical, as mountinfo shows
/// it). It ends when that mount is gone.
pub fn watch(mountpoint: PathBuf, fs: Arc<Fs>) -> std::io::Result<()> {
    let mut f = std::fs::File::open("/proc/self/mountinfo")?;
    std::thread::Builder::new()
        .name("mount-watch".into())
        .spawn(move || {
            let mut text = String::new();
            loop {
                text.clear();
                if f.rewind().is_err() || f.read_to_string(&mut text).is_err() {
                    log::warn!(
                        "reading /proc/self/mountinfo failed: mount flags no longer followed"
                    );
                    return;
                }
                match policy_of(&text, &mountpoint) {
                    Some(p) => {
                        if p != fs.atime_policy() {
                            log::info!("{}: atime policy now {p:?}", mountpoint.display());
                            fs.set_atime_policy(p);
                        }
                    }
                    None => return, // unmounted
                }
                let mut pfd = libc::pollfd {
                    fd: f.as_raw_fd(),
                    events: libc::POLLPRI,
                    revents: 0,
                };
                // SAFETY: one valid pollfd for the duration of the call.
                let rc = unsafe { libc::poll(&mut pfd, 1, -1) };
                if rc < 0
                    && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                {
                    log::warn!(
                        "poll on /proc/self/mountinfo failed: mount flags no longer followed"
                    );
                    return;
                }
            }
        })?;
    Ok(())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.len() >= i + 4
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// The atime policy of the FUSE mount at `mountpoint` in mountinfo `text` (the topmost one when
/// several are stacked there); `ro` (of the mount or of the file system) means no atime update.
/// None when no FUSE mount is there.
pub fn policy_of(text: &str, mountpoint: &Path) -> Option<AtimePolicy> {
    use std::os::unix::ffi::OsStrExt;
    let want = mountpoint.as_os_str().as_bytes();
    let mut found = None;
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < sep + 4 || sep < 6 {
            continue;
        }
        let fstype = fields[sep + 1];
        if !(fstype == "fuse" || fstype.starts_with("fuse.")) || unescape(fields[4]) != want {
            continue;
        }
        let mnt_opts: Vec<&str> = fields[5].split(',').collect();
        let sb_ro = fields[sep + 3].split(',').any(|o| o == "ro");
        let mode = if sb_ro || mnt_opts.contains(&"ro") || mnt_opts.contains(&"noatime") {
            AtimeMode::Never
        } else if mnt_opts.contains(&"relatime") {
            AtimeMode::Relative
        } else {
            AtimeMode::Strict
        };
        found = Some(AtimePolicy {
            mode,
            nodiratime: mnt_opts.contains(&"nodiratime"),
        });
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:50 / /mnt/a\\040b rw,nosuid,nodev,relatime shared:20 - fuse /img/a rw,user_id=0,group_id=0,default_permissions,allow_other
41 22 0:51 / /mnt/s rw,nosuid,nodev shared:21 - fuse.vhost-ext4 /img/s rw,user_id=0
42 22 0:52 / /mnt/r ro,nodiratime,noatime - fuse /img/r ro,user_id=0
43 22 0:53 / /mnt/q rw,nodiratime,relatime - fuse /img/q ro,user_id=0
44 22 0:54 / /mnt/e rw,relatime - ext4 /dev/sdb rw
";

    fn p(mode: AtimeMode, nodiratime: bool) -> Option<AtimePolicy> {
        Some(AtimePolicy { mode, nodiratime })
    }

    #[test]
    fn mount_flags_give_the_policy() {
        let at = |m: &str| policy_of(INFO, Path::new(m));
        assert_eq!(at("/mnt/a b"), p(AtimeMode::Relative, false));
        assert_eq!(at("/mnt/s"), p(AtimeMode::Strict, false));
        assert_eq!(at("/mnt/r"), p(AtimeMode::Never, true));
        // The file system read-only (remount,ro) while the mount still says rw.
        assert_eq!(at("/mnt/q"), p(AtimeMode::Never, true));
        // Not a FUSE mount, or nothing there: none.
        assert_eq!(at("/mnt/e"), None);
        assert_eq!(at("/mnt/x"), None);
        assert_eq!(policy_of("garbage\n\n1 2 3\n", Path::new("/mnt/a")), None);
        // The topmost of stacked mounts counts.
        let stacked = format!("{INFO}50 41 0:60 / /mnt/s rw,noatime - fuse /img/t rw\n");
        assert_eq!(
            policy_of(&stacked, Path::new("/mnt/s")),
            p(AtimeMode::Never, false)
        );
    }

    #[test]
    fn escapes() {
        assert_eq!(unescape("a\\040b\\134c\\011"), b"a b\\c\t");
        assert_eq!(unescape("plain\\0"), b"plain\\0");
        assert_eq!(unescape("\\12x"), b"\\12x");
    }
}
