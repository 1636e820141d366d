//! Permission checks in the daemon, for clients that do not check access themselves
//! (`DispatchOptions::check_permissions`). Both of our clients do — a host FUSE mount uses
//! `default_permissions`, and the Linux virtiofs driver always sets it — so the check is off by
//! default: done here it would lack the caller's supplementary groups, which a request does not
//! carry, and would refuse what the kernel allows (exec without read, access through a
//! supplementary group's ACL entry). When on, it checks what the client's VFS would have
//! checked, with the caller's uid/gid from the request header (uid 0 bypasses checks like
//! CAP_DAC_OVERRIDE).

use super::abi::{self, fattr};
use super::request::Op;
use crate::errno::{Errno, Result};
use crate::fs::{Ctx, Fs, Ino};

const R: u32 = libc::R_OK as u32;
const W: u32 = libc::W_OK as u32;
const X: u32 = libc::X_OK as u32;

fn is_root(ctx: &Ctx) -> bool {
    ctx.uid == 0
}

/// The sticky-bit rule for removing or replacing `name` in directory `dir`.
fn sticky_ok(fs: &Fs, dir: Ino, name: &[u8], ctx: &Ctx) -> Result<()> {
    let d = fs.getattr(dir)?;
    if d.mode & libc::S_ISVTX == 0 || is_root(ctx) || d.uid == ctx.uid {
        return Ok(());
    }
    match fs.peek(dir, name) {
        Ok(victim) if victim.uid == ctx.uid => Ok(()),
        Ok(_) => Err(Errno::EPERM),
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

fn owner_or_root(fs: &Fs, ino: Ino, ctx: &Ctx) -> Result<()> {
    if is_root(ctx) || fs.getattr(ino)?.uid == ctx.uid {
        Ok(())
    } else {
        Err(Errno::EPERM)
    }
}

/// Check that `ctx` may perform `op` on node `ino`; Ok when the VFS would let it through.
pub fn check(fs: &Fs, ino: Ino, op: &Op<'_>, ctx: &Ctx, to_ino: impl Fn(u64) -> Ino) -> Result<()> {
    match op {
        Op::Lookup { .. } => fs.access(ino, X, ctx),
        Op::Mknod { .. }
        | Op::Mkdir { .. }
        | Op::Symlink { .. }
        | Op::Create { .. }
        | Op::Tmpfile { .. } => fs.access(ino, W | X, ctx),
        Op::Link { .. } => fs.access(ino, W | X, ctx),
        Op::Unlink { name } | Op::Rmdir { name } => {
            fs.access(ino, W | X, ctx)?;
            sticky_ok(fs, ino, name, ctx)
        }
        Op::Rename { newdir, old, new } => rename(fs, ino, old, to_ino(*newdir), new, ctx),
        Op::Rename2 { arg, old, new } => rename(fs, ino, old, to_ino(arg.newdir), new, ctx),
        Op::Open(o) | Op::Opendir(o) => {
            let acc = match o.flags as i32 & libc::O_ACCMODE {
                libc::O_WRONLY => W,
                libc::O_RDWR => R | W,
                _ => R,
            };
            let trunc = if o.flags as i32 & libc::O_TRUNC != 0 {
                W
            } else {
                0
            };
            fs.access(ino, acc | trunc, ctx)
        }
        Op::Setattr(s) => setattr(fs, ino, s, ctx),
        Op::Setxattr { name, .. } | Op::Removexattr { name } => xattr(fs, ino, name, ctx, true),
        Op::Getxattr { name, .. } => xattr(fs, ino, name, ctx, false),
        _ => Ok(()),
    }
}

fn rename(fs: &Fs, dir: Ino, old: &[u8], newdir: Ino, new: &[u8], ctx: &Ctx) -> Result<()> {
    fs.access(dir, W | X, ctx)?;
    fs.access(newdir, W | X, ctx)?;
    sticky_ok(fs, dir, old, ctx)?;
    sticky_ok(fs, newdir, new, ctx)?;
    // Moving a directory to another parent rewrites its "..": that needs write access to it.
    if dir != newdir {
        let moved = fs.peek(dir, old)?;
        if moved.mode & libc::S_IFMT == libc::S_IFDIR {
            fs.access(moved.ino, W, ctx)?;
        }
    }
    Ok(())
}

fn setattr(fs: &Fs, ino: Ino, s: &abi::SetattrIn, ctx: &Ctx) -> Result<()> {
    if is_root(ctx) {
        return Ok(());
    }
    let a = fs.getattr(ino)?;
    let owner = a.uid == ctx.uid;
    if s.valid & fattr::MODE != 0 && !owner {
        return Err(Errno::EPERM);
    }
    if s.valid & fattr::UID != 0 && s.uid != a.uid {
        return Err(Errno::EPERM);
    }
    if s.valid & fattr::GID != 0 && s.gid != a.gid && !(owner && s.gid == ctx.gid) {
        return Err(Errno::EPERM);
    }
    if s.valid & fattr::SIZE != 0 {
        fs.access(ino, W, ctx)?;
    }
    let explicit = s.valid & (fattr::ATIME | fattr::MTIME) != 0
        && s.valid & (fattr::ATIME_NOW | fattr::MTIME_NOW) == 0;
    if explicit && !owner {
        return Err(Errno::EPERM);
    }
    if s.valid & (fattr::ATIME_NOW | fattr::MTIME_NOW) != 0 && !owner {
        fs.access(ino, W, ctx)?;
    }
    Ok(())
}

fn xattr(fs: &Fs, ino: Ino, name: &[u8], ctx: &Ctx, write: bool) -> Result<()> {
    if name.starts_with(b"trusted.") {
        return if is_root(ctx) {
            Ok(())
        } else {
            Err(Errno::EPERM)
        };
    }
    if name.starts_with(b"user.") {
        return fs.access(ino, if write { W } else { R }, ctx);
    }
    if write && name.starts_with(b"system.posix_acl_") {
        return owner_or_root(fs, ino, ctx);
    }
    if write && name.starts_with(b"security.") && !is_root(ctx) {
        return Err(Errno::EPERM);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockdev::MemDevice;
    use crate::fs::{MountOptions, ROOT_INO};
    use std::sync::Arc;

    fn writable_fs() -> (Fs, Arc<MemDevice>) {
        let bytes =
            crate::fuse::dispatch::tests::make_image().expect("mke2fs (e2fsprogs) is required");
        let dev = Arc::new(MemDevice::from_vec(bytes));
        let fs = Fs::mount(dev.clone(), &MountOptions::rw()).unwrap();
        (fs, dev)
    }

    #[test]
    fn guest_users_get_the_vfs_checks() {
        let (fs, dev) = writable_fs();
        let root = Ctx {
            uid: 0,
            gid: 0,
            pid: 1,
            umask: 0,
        };
        let user = Ctx {
            uid: 1000,
            gid: 1000,
            pid: 2,
            umask: 0,
        };
        let mk = Op::Mkdir {
            arg: abi::MkdirIn {
                mode: 0o755,
                umask: 0,
            },
            name: b"x",
        };
        let id = |n: u64| n;
        assert_eq!(
            check(&fs, ROOT_INO, &mk, &user, id),
            Err(Errno::EACCES),
            "root dir is 0755 root"
        );
        assert_eq!(check(&fs, ROOT_INO, &mk, &root, id), Ok(()));
        // A sticky, world-writable directory: others' files cannot be removed.
        let tmp = fs.mkdir(ROOT_INO, b"tmp", 0o1777, &root).unwrap();
        fs.mknod(tmp.ino, b"roots", libc::S_IFREG | 0o644, 0, &root)
            .unwrap();
        let mine = fs
            .mknod(tmp.ino, b"mine", libc::S_IFREG | 0o644, 0, &user)
            .unwrap();
        assert_eq!(
            check(&fs, tmp.ino, &Op::Unlink { name: b"roots" }, &user, id),
            Err(Errno::EPERM)
        );
        assert_eq!(
            check(&fs, tmp.ino, &Op::Unlink { name: b"mine" }, &user, id),
            Ok(())
        );
        // chmod only by the owner; chown only by root; writes need write permission.
        let chmod = abi::SetattrIn {
            valid: fattr::MODE,
            mode: 0o600,
            ..Default::default()
        };
        assert_eq!(check(&fs, mine.ino, &Op::Setattr(chmod), &user, id), Ok(()));
        let hello = fs.peek(ROOT_INO, b"hello").unwrap();
        assert_eq!(
            check(&fs, hello.ino, &Op::Setattr(chmod), &user, id),
            Err(Errno::EPERM)
        );
        let chown = abi::SetattrIn {
            valid: fattr::UID,
            uid: 0,
            ..Default::default()
        };
        assert_eq!(
            check(&fs, mine.ino, &Op::Setattr(chown), &user, id),
            Err(Errno::EPERM)
        );
        let open_w = Op::Open(abi::OpenIn {
            flags: libc::O_WRONLY as u32,
            open_flags: 0,
        });
        assert_eq!(
            check(&fs, hello.ino, &open_w, &user, id),
            Err(Errno::EACCES)
        );
        let trusted = Op::Removexattr { name: b"trusted.x" };
        assert_eq!(check(&fs, mine.ino, &trusted, &user, id), Err(Errno::EPERM));
        fs.shutdown().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        std::fs::write(&img, dev.snapshot()).unwrap();
        crate::test_support::e2fsck_clean(&img);
    }
}
