//! Dropping a file's privileges when it changes, as the kernel's VFS does for a local file system
//! (`file_remove_privs`, `setattr_should_drop_suidgid`, chown's kill bits): setuid goes, setgid
//! goes by the rule the caller (the FUSE layer, which knows who asked) applies, and the
//! `security.capability` xattr goes whenever the file's data or owner changes.
//!
//! Over FUSE with `HANDLE_KILLPRIV_V2` the kernel leaves this to us: a WRITE, a truncate
//! (SETATTR of the size), an OPEN with O_TRUNC and a chown carry a kill flag when the caller
//! lacks CAP_FSETID, and its own privilege drop before a fallocate or copy_file_range arrives as
//! a SETATTR that changes nothing else.

use super::Fs;
use super::types::{Attr, Ino};
use crate::errno::{Errno, Result};
use crate::inode::blocks::now;
use crate::ondisk::inode::Inode;
use crate::ondisk::xattr::INDEX_SECURITY;

/// `security.capability`: file capabilities, which a change of the file's data or owner drops.
const CAPABILITY: &[u8] = b"capability";

/// The mode after a change by a caller without CAP_FSETID, by the rule FUSE states for its kill
/// flags: setuid goes, setgid goes when the file is group-executable.
pub fn killed_mode(mode: u32) -> u32 {
    let mut mode = mode & !libc::S_ISUID;
    if mode & libc::S_IXGRP != 0 {
        mode &= !libc::S_ISGID;
    }
    mode
}

impl Fs {
    /// Remove the `security.capability` xattr of an inode the caller holds under the namespace
    /// lock (written) and stores afterwards. True when there was one.
    pub(in crate::fs) fn drop_caps_locked(&self, ino: Ino, inode: &mut Inode) -> Result<bool> {
        if !inode.is_reg() {
            return Ok(false);
        }
        self.remove_xattr_locked(ino, inode, INDEX_SECURITY, CAPABILITY)
    }

    /// Drop the privileges of regular file `ino`: its `security.capability` goes, then its mode
    /// becomes `mode(attr, had_caps)` when that says so (the attributes as they were, and
    /// whether a capability xattr was there). One inode update; ctime moves when anything
    /// changed. Returns the attributes after. Other file types are left alone.
    pub fn drop_privs(
        &self,
        ino: Ino,
        mode: impl FnOnce(&Attr, bool) -> Option<u32>,
    ) -> Result<Attr> {
        if self.is_read_only() {
            return Err(Errno::EROFS);
        }
        let _g = self.ns_write();
        let mut i = self.read_inode(ino)?;
        if !i.is_reg() {
            return Ok(self.attr_of(ino, &i));
        }
        let before = self.attr_of(ino, &i);
        let had_caps = self.drop_caps_locked(ino, &mut i)?;
        let new_mode = mode(&before, had_caps)
            .map(|m| (before.mode & libc::S_IFMT) | (m & 0o7777))
            .filter(|&m| m != before.mode);
        if let Some(m) = new_mode {
            i.mode = m as u16;
        }
        if !had_caps && new_mode.is_none() {
            return Ok(before);
        }
        i.ctime = now();
        self.store_inode(ino, &i)?;
        Ok(self.attr_of(ino, &i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::testutil::ctx;
    use crate::fs::{KILL_SUIDGID, MountOptions, ROOT_INO, SetAttr};
    use std::sync::Arc;

    #[test]
    fn writes_drop_capabilities_and_with_the_kill_flag_the_mode_bits() {
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("img");
        let out = std::process::Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-I", "256"])
            .arg(&img)
            .arg("16M")
            .output()
            .expect("mke2fs (e2fsprogs) is required");
        assert!(out.status.success());
        let dev = crate::blockdev::FileDevice::open(&img, false).unwrap();
        let fs = Fs::mount(Arc::new(dev), &MountOptions::rw()).unwrap();
        let ino = fs.mknod(ROOT_INO, b"f", 0o100644, 0, &ctx()).unwrap().ino;
        let cap = b"security.capability";
        let arm = |mode: u32| {
            let chmod = SetAttr {
                mode: Some(mode),
                ..SetAttr::default()
            };
            fs.setattr(ino, &chmod).unwrap();
            fs.setxattr(ino, cap, &[1, 0, 0, 2], 0).unwrap();
        };
        fs.setxattr(ino, b"user.keep", b"yes", 0).unwrap();
        // An unprivileged write (the kill flag).
        arm(0o6676);
        fs.write(ino, 0, b"data", KILL_SUIDGID).unwrap();
        assert_eq!(fs.getattr(ino).unwrap().mode & 0o7777, 0o676);
        assert_eq!(fs.getxattr(ino, cap), Err(Errno::ENODATA));
        assert_eq!(fs.getxattr(ino, b"user.keep").unwrap(), b"yes");
        // A privileged write keeps the mode bits, not the capability.
        arm(0o6676);
        fs.write(ino, 4, b"more", 0).unwrap();
        assert_eq!(fs.getattr(ino).unwrap().mode & 0o7777, 0o6676);
        assert_eq!(fs.getxattr(ino, cap), Err(Errno::ENODATA));
        // drop_privs: the rule sees the mode before and whether there was a capability.
        arm(0o6666);
        let a = fs
            .drop_privs(ino, |cur, had| {
                assert!(had);
                Some(killed_mode(cur.mode))
            })
            .unwrap();
        assert_eq!(a.mode & 0o7777, 0o2666);
        assert_eq!(fs.getxattr(ino, cap), Err(Errno::ENODATA));
        // Nothing to drop: nothing changes, ctime included.
        let before = fs.getattr(ino).unwrap();
        let after = fs
            .drop_privs(ino, |_, had| (!had).then_some(0o2666))
            .unwrap();
        assert_eq!(after, before);
        fs.fsync(ino, false).unwrap();
        fs.shutdown().unwrap();
        drop(fs);
        crate::test_support::e2fsck_clean(&img);
    }

    #[test]
    fn the_fuse_kill_rule() {
        assert_eq!(
            killed_mode(0o6666),
            0o2666,
            "setgid stays without group-exec"
        );
        assert_eq!(killed_mode(0o6676), 0o0676);
        assert_eq!(killed_mode(0o2777), 0o0777);
        assert_eq!(killed_mode(0o0755), 0o0755);
        assert_eq!(killed_mode(libc::S_IFREG | 0o4755), libc::S_IFREG | 0o755);
    }
}
