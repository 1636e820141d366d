//! Who sent a request, beyond its header's uid and gid: the supplementary groups and whether it
//! holds CAP_FSETID — what the kernel's VFS consults when a mode change must drop setgid. On a
//! host mount the request's pid is a process of this machine, and `/proc/PID/status` tells
//! both; a guest's pid means nothing here, so there only the header is known.
//!
//! Why it matters: the kernel's FUSE client drops setuid/setgid before a write, truncate or
//! fallocate by an unprivileged caller with a SETATTR of the mode, but it computes that mode
//! with the old rule (setgid goes only from a group-executable file), while the VFS also drops
//! setgid when the caller is not in the file's group (`setattr_should_drop_sgid`). The kernel's
//! ext4 does the latter; [`setattr_mode`] does it for us.

use crate::fs::{Attr, SetAttr};

/// CAP_FSETID's bit in the capability sets.
const CAP_FSETID: u32 = 4;

/// The credentials of a request's caller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, when known.
    pub groups: Option<Vec<u32>>,
    /// Holds CAP_FSETID (when the capabilities are unknown: the caller is uid 0).
    pub fsetid: bool,
}

/// Whether the caller is in a group, as far as we can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership {
    Yes,
    No,
    /// Not its primary group, and its supplementary groups are unknown.
    Unknown,
}

impl Caller {
    /// A caller known only by the request header (a guest's request).
    pub fn from_header(uid: u32, gid: u32) -> Caller {
        Caller {
            uid,
            gid,
            groups: None,
            fsetid: uid == 0,
        }
    }

    /// A caller on this machine: the header's ids, with the groups and capabilities of process
    /// `pid` when `/proc` tells them (the header alone otherwise, e.g. when it has exited).
    pub fn from_host_process(uid: u32, gid: u32, pid: u32) -> Caller {
        let mut c = Caller::from_header(uid, gid);
        if pid == 0 {
            return c;
        }
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            && let Some((groups, fsetid)) = parse_status(&status)
        {
            c.groups = Some(groups);
            c.fsetid = fsetid;
        }
        c
    }

    pub fn in_group(&self, gid: u32) -> Membership {
        if gid == self.gid {
            return Membership::Yes;
        }
        match &self.groups {
            Some(g) if g.contains(&gid) => Membership::Yes,
            Some(_) => Membership::No,
            None => Membership::Unknown,
        }
    }
}

/// The supplementary groups and CAP_FSETID (effective) from the text of `/proc/PID/status`.
fn parse_status(status: &str) -> Option<(Vec<u32>, bool)> {
    let mut groups = None;
    let mut fsetid = None;
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("Groups:") {
            groups = rest
                .split_whitespace()
                .map(|g| g.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>();
        } else if let Some(rest) = line.strip_prefix("CapEff:") {
            fsetid = u64::from_str_radix(rest.trim(), 16)
                .ok()
                .map(|caps| caps & (1 << CAP_FSETID) != 0);
        }
    }
    Some((groups?, fsetid?))
}

/// The mode a SETATTR of file `cur` by `caller` stores: `s.mode`, without setgid when the
/// caller may not keep it. That is the VFS rule for any mode change by a caller that is not in
/// the file's (new) group and lacks CAP_FSETID — for a chmod the kernel has applied it already,
/// for a privilege drop it has not. When the caller's groups are unknown (a guest), setgid goes
/// only where the SETATTR can be nothing but a privilege drop: a regular file that is not the
/// caller's (only its owner may chmod it); otherwise a chmod by a member of a supplementary
/// group would lose setgid.
pub fn setattr_mode(cur: &Attr, s: &SetAttr, caller: &Caller) -> Option<u32> {
    let mode = s.mode?;
    if mode & libc::S_ISGID == 0 || caller.fsetid {
        return Some(mode);
    }
    let drop = match caller.in_group(s.gid.unwrap_or(cur.gid)) {
        Membership::Yes => false,
        Membership::No => true,
        Membership::Unknown => caller.uid != cur.uid && cur.mode & libc::S_IFMT == libc::S_IFREG,
    };
    Some(if drop { mode & !libc::S_ISGID } else { mode })
}

/// Why a file's privileges are dropped (see `fs::killpriv`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrivDrop {
    /// A kill flag on a WRITE, a truncate or an OPEN with O_TRUNC: the kernel sets it only for a
    /// caller without CAP_FSETID.
    Kill,
    /// A chown (the kernel sets the kill flag on every chown of a non-directory).
    Chown,
    /// A SETATTR that changes nothing: the kernel's own privilege drop (before a fallocate or a
    /// copy_file_range, or a chown to the same owner and group). `had_caps`: the file had a
    /// `security.capability` xattr (just dropped).
    Bare { had_caps: bool },
}

/// The mode of regular file `cur` after a privilege drop by `caller` (`None`: it stays), as the
/// VFS decides (`setattr_should_drop_suidgid`, and chown's kill bits): setuid goes; setgid goes
/// when the file is group-executable, or when a caller without CAP_FSETID is not in the file's
/// group. A bare SETATTR from a caller with CAP_FSETID was sent for the capability xattr when
/// there was one (the mode stays); with none, only a chown sends it, which drops setuid even
/// for root.
pub fn dropped_mode(cur: &Attr, caller: &Caller, why: PrivDrop) -> Option<u32> {
    if cur.mode & libc::S_IFMT != libc::S_IFREG {
        return None;
    }
    let privileged = match why {
        PrivDrop::Kill => false,
        PrivDrop::Chown => caller.fsetid,
        PrivDrop::Bare { had_caps: true } if caller.fsetid => return None,
        PrivDrop::Bare { .. } => caller.fsetid,
    };
    let mut mode = cur.mode & !libc::S_ISUID;
    if mode & libc::S_ISGID != 0 {
        let member = match caller.in_group(cur.gid) {
            Membership::Yes => true,
            Membership::No => false,
            // As in `setattr_mode`: a caller that does not own the file is taken for a
            // non-member.
            Membership::Unknown => caller.uid == cur.uid,
        };
        if mode & libc::S_IXGRP != 0 || (!privileged && !member) {
            mode &= !libc::S_ISGID;
        }
    }
    Some(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(mode: u32, uid: u32, gid: u32) -> Attr {
        Attr {
            mode: libc::S_IFREG | mode,
            uid,
            gid,
            ..Default::default()
        }
    }

    fn chmod(mode: u32) -> SetAttr {
        SetAttr {
            mode: Some(mode),
            ..Default::default()
        }
    }

    fn host(uid: u32, gid: u32, groups: &[u32]) -> Caller {
        Caller {
            uid,
            gid,
            groups: Some(groups.to_vec()),
            fsetid: false,
        }
    }

    #[test]
    fn status_parsing() {
        let status = "Name:\tcat\nUid:\t1001\t1001\t1001\t1001\nGroups:\t4 24 1001 \n\
                      CapInh:\t0000000000000000\nCapEff:\t0000000000000010\n";
        assert_eq!(parse_status(status), Some((vec![4, 24, 1001], true)));
        let status = "Groups:\nCapEff:\t0000000000000000\n";
        assert_eq!(parse_status(status), Some((vec![], false)));
        assert_eq!(parse_status("Groups:\tx\nCapEff:\t0\n"), None);
        assert_eq!(parse_status("Name:\tcat\n"), None);
    }

    #[test]
    fn privilege_drop_by_a_non_member_loses_setgid() {
        // The kernel's FUSE client kept setgid (the file is not group-executable).
        let cur = file(0o6666, 0, 0);
        let drop = chmod(0o2666);
        assert_eq!(
            setattr_mode(&cur, &drop, &host(1001, 1001, &[])),
            Some(0o666)
        );
        // A member keeps it (supplementary group), and so does a caller with CAP_FSETID.
        assert_eq!(
            setattr_mode(&cur, &drop, &host(1001, 1001, &[0])),
            Some(0o2666)
        );
        let root = Caller::from_header(0, 0);
        assert_eq!(setattr_mode(&cur, &drop, &root), Some(0o2666));
        // A guest's caller (groups unknown) that does not own the file: a privilege drop.
        let guest = Caller::from_header(1001, 1001);
        assert_eq!(setattr_mode(&cur, &drop, &guest), Some(0o666));
        // No setgid asked for, nothing to do.
        assert_eq!(setattr_mode(&cur, &chmod(0o644), &guest), Some(0o644));
        assert_eq!(setattr_mode(&cur, &SetAttr::default(), &guest), None);
    }

    #[test]
    fn chmod_by_the_owner() {
        let cur = file(0o644, 1001, 50);
        // Not in group 50: setgid goes (as the kernel's chmod does).
        assert_eq!(
            setattr_mode(&cur, &chmod(0o2755), &host(1001, 1001, &[])),
            Some(0o755)
        );
        assert_eq!(
            setattr_mode(&cur, &chmod(0o2755), &host(1001, 1001, &[50])),
            Some(0o2755)
        );
        // A chown to a group of the caller in the same request counts with the new group.
        let to_own = SetAttr {
            gid: Some(1001),
            ..chmod(0o2755)
        };
        assert_eq!(
            setattr_mode(&cur, &to_own, &host(1001, 1001, &[])),
            Some(0o2755)
        );
        // A guest's owner may be a supplementary member: its chmod is left as the kernel sent it.
        let guest = Caller::from_header(1001, 1001);
        assert_eq!(setattr_mode(&cur, &chmod(0o2755), &guest), Some(0o2755));
        // Directories: never a privilege drop.
        let dir = Attr {
            mode: libc::S_IFDIR | 0o755,
            ..cur
        };
        let other = Caller::from_header(1002, 1002);
        assert_eq!(setattr_mode(&dir, &chmod(0o2755), &other), Some(0o2755));
    }

    #[test]
    fn privilege_drops_follow_the_vfs() {
        let user = host(1001, 1001, &[]);
        let member = host(1001, 1001, &[0]);
        let root = Caller::from_header(0, 0);
        let kill = PrivDrop::Kill;
        // A write by an unprivileged caller: setuid goes; setgid too when group-executable or
        // when the caller is not in the file's group.
        assert_eq!(
            dropped_mode(&file(0o6666, 0, 0), &user, kill),
            Some(0o666 | libc::S_IFREG)
        );
        assert_eq!(
            dropped_mode(&file(0o6666, 0, 0), &member, kill),
            Some(0o2666 | libc::S_IFREG)
        );
        assert_eq!(
            dropped_mode(&file(0o6676, 0, 0), &member, kill),
            Some(0o676 | libc::S_IFREG)
        );
        // A chown by root: setuid goes, setgid only with group-exec.
        assert_eq!(
            dropped_mode(&file(0o6666, 5, 5), &root, PrivDrop::Chown),
            Some(0o2666 | libc::S_IFREG)
        );
        assert_eq!(
            dropped_mode(&file(0o6676, 5, 5), &root, PrivDrop::Chown),
            Some(0o676 | libc::S_IFREG)
        );
        // The kernel's bare drop: for root only the capability (the mode stays), unless there
        // was none (a chown to the same ids).
        let bare = |had_caps| PrivDrop::Bare { had_caps };
        assert_eq!(dropped_mode(&file(0o6666, 5, 5), &root, bare(true)), None);
        assert_eq!(
            dropped_mode(&file(0o6666, 5, 5), &root, bare(false)),
            Some(0o2666 | libc::S_IFREG)
        );
        assert_eq!(
            dropped_mode(&file(0o6666, 0, 0), &user, bare(true)),
            Some(0o666 | libc::S_IFREG)
        );
        // A guest's caller (groups unknown): its own file keeps setgid, another's loses it.
        let guest = Caller::from_header(1001, 1001);
        assert_eq!(
            dropped_mode(&file(0o2666, 1001, 50), &guest, kill),
            Some(0o2666 | libc::S_IFREG)
        );
        assert_eq!(
            dropped_mode(&file(0o2666, 0, 50), &guest, kill),
            Some(0o666 | libc::S_IFREG)
        );
        // Directories keep their bits.
        let dir = Attr {
            mode: libc::S_IFDIR | 0o6777,
            ..Attr::default()
        };
        assert_eq!(dropped_mode(&dir, &user, kill), None);
    }

    #[test]
    fn this_process_reads_itself() {
        // SAFETY: getpid/getuid/getgid have no preconditions.
        let (pid, uid, gid) = unsafe { (libc::getpid(), libc::getuid(), libc::getgid()) };
        let c = Caller::from_host_process(uid, gid, pid as u32);
        assert!(c.groups.is_some(), "/proc/{pid}/status was not read");
        assert_eq!(c.in_group(gid), Membership::Yes);
        // A pid that cannot exist: the header alone.
        let c = Caller::from_host_process(1001, 1001, u32::MAX);
        assert_eq!(c, Caller::from_header(1001, 1001));
    }
}
