//! Request decoding: one raw message (`&[u8]`, in header included) into a header and a typed
//! operation. Nothing here trusts the sender: every length is checked, every name must be
//! NUL-terminated, and every malformed message is a [`ParseError`] carrying the errno to answer with
//! — never a panic.

use super::abi::{self, Cursor, opcode};
use crate::errno::Errno;

/// Why a request could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// The errno to reply with.
    pub errno: Errno,
    /// A short description for the log.
    pub reason: &'static str,
}

fn bad(reason: &'static str) -> ParseError {
    ParseError {
        errno: Errno::EINVAL,
        reason,
    }
}

/// What the session negotiated that changes request layouts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParseConfig {
    /// `FUSE_SETXATTR_EXT` was negotiated: `fuse_setxattr_in` is 16 bytes, not 8.
    pub setxattr_ext: bool,
}

/// A decoded request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub header: abi::InHeader,
    pub op: Op<'a>,
    /// Request extensions (security context, supplementary groups) found at the end of the
    /// message, `total_extlen * 8` bytes; empty unless we negotiated a feature that sends them.
    pub extensions: &'a [u8],
}

/// The operation of a request, with its arguments. Names are without their NUL terminator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op<'a> {
    Lookup {
        name: &'a [u8],
    },
    Forget(abi::ForgetIn),
    BatchForget(Vec<abi::ForgetOne>),
    Getattr(abi::GetattrIn),
    Setattr(abi::SetattrIn),
    Readlink,
    Symlink {
        name: &'a [u8],
        target: &'a [u8],
    },
    Mknod {
        arg: abi::MknodIn,
        name: &'a [u8],
    },
    Mkdir {
        arg: abi::MkdirIn,
        name: &'a [u8],
    },
    Unlink {
        name: &'a [u8],
    },
    Rmdir {
        name: &'a [u8],
    },
    Rename {
        newdir: u64,
        old: &'a [u8],
        new: &'a [u8],
    },
    Rename2 {
        arg: abi::Rename2In,
        old: &'a [u8],
        new: &'a [u8],
    },
    Link {
        arg: abi::LinkIn,
        name: &'a [u8],
    },
    Open(abi::OpenIn),
    Read(abi::ReadIn),
    Write {
        arg: abi::WriteIn,
        data: &'a [u8],
    },
    Statfs,
    Release(abi::ReleaseIn),
    Fsync(abi::FsyncIn),
    Setxattr {
        arg: abi::SetxattrIn,
        name: &'a [u8],
        value: &'a [u8],
    },
    Getxattr {
        arg: abi::GetxattrIn,
        name: &'a [u8],
    },
    Listxattr(abi::GetxattrIn),
    Removexattr {
        name: &'a [u8],
    },
    Flush(abi::FlushIn),
    Init(abi::InitIn),
    Opendir(abi::OpenIn),
    Readdir(abi::ReadIn),
    Releasedir(abi::ReleaseIn),
    Fsyncdir(abi::FsyncIn),
    Getlk(abi::LkIn),
    Setlk(abi::LkIn),
    Setlkw(abi::LkIn),
    Access(abi::AccessIn),
    Create {
        arg: abi::CreateIn,
        name: &'a [u8],
    },
    Interrupt(abi::InterruptIn),
    Bmap(abi::BmapIn),
    Destroy,
    Ioctl {
        arg: abi::IoctlIn,
        data: &'a [u8],
    },
    Poll(abi::PollIn),
    NotifyReply {
        arg: abi::NotifyRetrieveIn,
        data: &'a [u8],
    },
    Fallocate(abi::FallocateIn),
    Readdirplus(abi::ReadIn),
    Lseek(abi::LseekIn),
    CopyFileRange(abi::CopyFileRangeIn),
    CopyFileRange64(abi::CopyFileRangeIn),
    SetupMapping(abi::SetupmappingIn),
    RemoveMapping(Vec<abi::RemovemappingOne>),
    Syncfs(abi::SyncfsIn),
    /// The name the kernel sends for O_TMPFILE is a placeholder ("/"), so it is not validated.
    Tmpfile {
        arg: abi::CreateIn,
        name: &'a [u8],
    },
    Statx(abi::StatxIn),
    /// An opcode we do not know: answered with ENOSYS.
    Unknown(u32),
}

/// True for opcodes the kernel never expects a reply to.
pub fn is_no_reply(opcode: u32) -> bool {
    matches!(
        opcode,
        opcode::FORGET | opcode::BATCH_FORGET | opcode::INTERRUPT | opcode::NOTIFY_REPLY
    )
}

/// The most entries a BATCH_FORGET / REMOVEMAPPING may carry; anything above is refused even when
/// the message is long enough, so a hostile count cannot make us allocate much.
pub const MAX_BATCH_ENTRIES: usize = 1 << 16;

/// Decode just the in header of `buf` (which must hold at least 40 bytes).
pub fn parse_header(buf: &[u8]) -> Result<abi::InHeader, ParseError> {
    abi::InHeader::decode(buf).ok_or(bad("message shorter than the in header"))
}

/// Decode one complete request message.
pub fn parse<'a>(buf: &'a [u8], cfg: &ParseConfig) -> Result<Request<'a>, ParseError> {
    let header = parse_header(buf)?;
    if header.len as usize != buf.len() {
        return Err(bad("length field disagrees with the message size"));
    }
    let body = &buf[abi::InHeader::SIZE..];
    let ext_len = usize::from(header.total_extlen) * 8;
    if ext_len > body.len() {
        return Err(bad("extension length is larger than the message"));
    }
    let (body, extensions) = body.split_at(body.len() - ext_len);
    let op = parse_op(header.opcode, body, cfg)?;
    Ok(Request {
        header,
        op,
        extensions,
    })
}

/// Bytes of a WRITE message before its payload: the in header and `fuse_write_in`.
pub const WRITE_HEAD_SIZE: usize = abi::InHeader::SIZE + abi::WriteIn::SIZE;

/// Decode the head of a WRITE whose payload a transport keeps in place (a guest's buffers):
/// `buf` is the in header and `fuse_write_in`, and `payload_len` bytes of data follow in the
/// message, then its extensions. The op's `data` is empty; the payload goes to the engine
/// from where it is.
pub fn parse_write_head<'a>(buf: &'a [u8], payload_len: usize) -> Result<Request<'a>, ParseError> {
    let header = parse_header(buf)?;
    if header.opcode != opcode::WRITE || buf.len() != WRITE_HEAD_SIZE {
        return Err(bad("not the head of a WRITE"));
    }
    let ext_len = usize::from(header.total_extlen) * 8;
    if header.len as usize != WRITE_HEAD_SIZE + payload_len + ext_len {
        return Err(bad("length field disagrees with the message size"));
    }
    let arg = abi::WriteIn::decode(&buf[abi::InHeader::SIZE..]).ok_or(bad("truncated WriteIn"))?;
    if arg.size as usize != payload_len {
        return Err(bad("write size disagrees with the data length"));
    }
    Ok(Request {
        header,
        op: Op::Write { arg, data: &[] },
        extensions: &[],
    })
}

/// A reader over the request body with the helpers every opcode needs.
struct Body<'a> {
    c: Cursor<'a>,
}

impl<'a> Body<'a> {
    fn arg<T>(
        &mut self,
        size: usize,
        decode: fn(&[u8]) -> Option<T>,
        what: &'static str,
    ) -> Result<T, ParseError> {
        let raw = self.c.take(size).ok_or(bad(what))?;
        decode(raw).ok_or(bad(what))
    }

    /// A NUL-terminated string; returned without the NUL.
    fn cstr(&mut self) -> Result<&'a [u8], ParseError> {
        let rest = self.c.rest();
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(bad("name is not NUL-terminated"))?;
        let s = self.c.take(nul + 1).ok_or(bad("name is truncated"))?;
        Ok(&s[..nul])
    }

    /// A directory entry name: NUL-terminated, not empty, no '/'.
    fn name(&mut self) -> Result<&'a [u8], ParseError> {
        let n = self.cstr()?;
        if n.is_empty() {
            return Err(bad("empty name"));
        }
        if n.contains(&b'/') {
            return Err(bad("name contains '/'"));
        }
        Ok(n)
    }

    /// The rest of the body, all of it.
    fn rest(&mut self) -> &'a [u8] {
        let r = self.c.rest();
        self.c.take(r.len());
        r
    }

    /// The body must be fully consumed.
    fn end(&self) -> Result<(), ParseError> {
        if self.c.rest().is_empty() {
            Ok(())
        } else {
            Err(bad("trailing bytes after the arguments"))
        }
    }
}

macro_rules! arg {
    ($b:expr, $t:ty) => {
        $b.arg(
            <$t>::SIZE,
            <$t>::decode,
            concat!("truncated ", stringify!($t)),
        )
    };
}

fn parse_op<'a>(op: u32, body: &'a [u8], cfg: &ParseConfig) -> Result<Op<'a>, ParseError> {
    use abi::*;
    let mut b = Body {
        c: Cursor::new(body),
    };
    let b = &mut b;
    // Opcodes with fixed arguments ignore trailing bytes (newer kernels may grow a struct);
    // opcodes ending in names or data must match exactly.
    let parsed = match op {
        opcode::LOOKUP => {
            let name = b.name()?;
            b.end()?;
            Op::Lookup { name }
        }
        opcode::FORGET => Op::Forget(arg!(b, ForgetIn)?),
        opcode::BATCH_FORGET => {
            let head = arg!(b, BatchForgetIn)?;
            Op::BatchForget(entries(b, head.count, ForgetOne::SIZE, ForgetOne::decode)?)
        }
        opcode::GETATTR => Op::Getattr(arg!(b, GetattrIn)?),
        opcode::SETATTR => Op::Setattr(arg!(b, SetattrIn)?),
        opcode::READLINK => Op::Readlink,
        opcode::SYMLINK => {
            let name = b.name()?;
            let target = b.cstr()?;
            b.end()?;
            if target.is_empty() {
                return Err(bad("empty symlink target"));
            }
            Op::Symlink { name, target }
        }
        opcode::MKNOD => {
            let arg = arg!(b, MknodIn)?;
            let name = b.name()?;
            b.end()?;
            Op::Mknod { arg, name }
        }
        opcode::MKDIR => {
            let arg = arg!(b, MkdirIn)?;
            let name = b.name()?;
            b.end()?;
            Op::Mkdir { arg, name }
        }
        opcode::UNLINK => {
            let name = b.name()?;
            b.end()?;
            Op::Unlink { name }
        }
        opcode::RMDIR => {
            let name = b.name()?;
            b.end()?;
            Op::Rmdir { name }
        }
        opcode::RENAME => {
            let arg = arg!(b, RenameIn)?;
            let old = b.name()?;
            let new = b.name()?;
            b.end()?;
            Op::Rename {
                newdir: arg.newdir,
                old,
                new,
            }
        }
        opcode::RENAME2 => {
            let arg = arg!(b, Rename2In)?;
            let old = b.name()?;
            let new = b.name()?;
            b.end()?;
            Op::Rename2 { arg, old, new }
        }
        opcode::LINK => {
            let arg = arg!(b, LinkIn)?;
            let name = b.name()?;
            b.end()?;
            Op::Link { arg, name }
        }
        opcode::OPEN => Op::Open(arg!(b, OpenIn)?),
        opcode::READ => Op::Read(arg!(b, ReadIn)?),
        opcode::WRITE => {
            let arg = arg!(b, WriteIn)?;
            let data = b.rest();
            if data.len() != arg.size as usize {
                return Err(bad("write size disagrees with the data length"));
            }
            Op::Write { arg, data }
        }
        opcode::STATFS => Op::Statfs,
        opcode::RELEASE => Op::Release(arg!(b, ReleaseIn)?),
        opcode::FSYNC => Op::Fsync(arg!(b, FsyncIn)?),
        opcode::SETXATTR => {
            let arg = if cfg.setxattr_ext {
                arg!(b, SetxattrIn)?
            } else {
                let raw =
                    b.c.take(COMPAT_SETXATTR_IN_SIZE)
                        .ok_or(bad("truncated SetxattrIn"))?;
                let mut c = Cursor::new(raw);
                SetxattrIn {
                    size: c.u32().unwrap_or_default(),
                    flags: c.u32().unwrap_or_default(),
                    ..Default::default()
                }
            };
            let name = b.cstr()?;
            let value = b.rest();
            if value.len() != arg.size as usize {
                return Err(bad("xattr size disagrees with the value length"));
            }
            Op::Setxattr { arg, name, value }
        }
        opcode::GETXATTR => {
            let arg = arg!(b, GetxattrIn)?;
            let name = b.cstr()?;
            b.end()?;
            Op::Getxattr { arg, name }
        }
        opcode::LISTXATTR => Op::Listxattr(arg!(b, GetxattrIn)?),
        opcode::REMOVEXATTR => {
            let name = b.cstr()?;
            b.end()?;
            Op::Removexattr { name }
        }
        opcode::FLUSH => Op::Flush(arg!(b, FlushIn)?),
        opcode::INIT => {
            // Pre-7.36 kernels send 16 bytes; newer ones 64. Take what is there.
            let rest = b.rest();
            if rest.len() < InitIn::MIN_SIZE {
                return Err(bad("truncated InitIn"));
            }
            Op::Init(InitIn::decode(rest).ok_or(bad("truncated InitIn"))?)
        }
        opcode::OPENDIR => Op::Opendir(arg!(b, OpenIn)?),
        opcode::READDIR => Op::Readdir(arg!(b, ReadIn)?),
        opcode::RELEASEDIR => Op::Releasedir(arg!(b, ReleaseIn)?),
        opcode::FSYNCDIR => Op::Fsyncdir(arg!(b, FsyncIn)?),
        opcode::GETLK => Op::Getlk(arg!(b, LkIn)?),
        opcode::SETLK => Op::Setlk(arg!(b, LkIn)?),
        opcode::SETLKW => Op::Setlkw(arg!(b, LkIn)?),
        opcode::ACCESS => Op::Access(arg!(b, AccessIn)?),
        opcode::CREATE => {
            let arg = arg!(b, CreateIn)?;
            let name = b.name()?;
            b.end()?;
            Op::Create { arg, name }
        }
        opcode::INTERRUPT => Op::Interrupt(arg!(b, InterruptIn)?),
        opcode::BMAP => Op::Bmap(arg!(b, BmapIn)?),
        opcode::DESTROY => Op::Destroy,
        opcode::IOCTL => {
            let arg = arg!(b, IoctlIn)?;
            let data = b.rest();
            if data.len() != arg.in_size as usize {
                return Err(bad("ioctl in_size disagrees with the data length"));
            }
            Op::Ioctl { arg, data }
        }
        opcode::POLL => Op::Poll(arg!(b, PollIn)?),
        opcode::NOTIFY_REPLY => {
            let arg = arg!(b, NotifyRetrieveIn)?;
            let data = b.rest();
            if data.len() != arg.size as usize {
                return Err(bad("notify reply size disagrees with the data length"));
            }
            Op::NotifyReply { arg, data }
        }
        opcode::FALLOCATE => Op::Fallocate(arg!(b, FallocateIn)?),
        opcode::READDIRPLUS => Op::Readdirplus(arg!(b, ReadIn)?),
        opcode::LSEEK => Op::Lseek(arg!(b, LseekIn)?),
        opcode::COPY_FILE_RANGE => Op::CopyFileRange(arg!(b, CopyFileRangeIn)?),
        opcode::COPY_FILE_RANGE_64 => Op::CopyFileRange64(arg!(b, CopyFileRangeIn)?),
        opcode::SETUPMAPPING => Op::SetupMapping(arg!(b, SetupmappingIn)?),
        opcode::REMOVEMAPPING => {
            let head = arg!(b, RemovemappingIn)?;
            Op::RemoveMapping(entries(
                b,
                head.count,
                RemovemappingOne::SIZE,
                RemovemappingOne::decode,
            )?)
        }
        opcode::SYNCFS => Op::Syncfs(arg!(b, SyncfsIn)?),
        opcode::TMPFILE => {
            let arg = arg!(b, CreateIn)?;
            let name = b.cstr()?;
            b.end()?;
            Op::Tmpfile { arg, name }
        }
        opcode::STATX => Op::Statx(arg!(b, StatxIn)?),
        other => Op::Unknown(other),
    };
    Ok(parsed)
}

/// `count` fixed-size entries that must make up the rest of the body exactly.
fn entries<T>(
    b: &mut Body<'_>,
    count: u32,
    size: usize,
    decode: fn(&[u8]) -> Option<T>,
) -> Result<Vec<T>, ParseError> {
    let count = count as usize;
    if count > MAX_BATCH_ENTRIES {
        return Err(bad("entry count is too large"));
    }
    let rest = b.rest();
    if count.checked_mul(size) != Some(rest.len()) {
        return Err(bad("entry count disagrees with the message size"));
    }
    rest.chunks_exact(size)
        .map(|c| decode(c).ok_or(bad("truncated entry")))
        .collect()
}

/// Build a raw request message (for tests and for harnesses that play the kernel).
pub fn build(opcode: u32, unique: u64, nodeid: u64, body: &[&[u8]]) -> Vec<u8> {
    let len = abi::InHeader::SIZE + body.iter().map(|p| p.len()).sum::<usize>();
    let mut v = Vec::with_capacity(len);
    abi::InHeader {
        len: len as u32,
        opcode,
        unique,
        nodeid,
        uid: 0,
        gid: 0,
        pid: 1,
        total_extlen: 0,
        padding: 0,
    }
    .encode(&mut v);
    for p in body {
        v.extend_from_slice(p);
    }
    v
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fuse::abi::*;

    /// A tiny deterministic PRNG (xorshift64*), so the fuzz loops need no dependency.
    pub(crate) struct Rng(u64);

    impl Rng {
        pub(crate) fn new(seed: u64) -> Rng {
            Rng(seed | 1)
        }
        pub(crate) fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
        pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    fn enc<F: Fn(&mut Vec<u8>)>(f: F) -> Vec<u8> {
        let mut v = Vec::new();
        f(&mut v);
        v
    }

    fn p(msg: &[u8]) -> Result<Op<'_>, ParseError> {
        parse(msg, &ParseConfig::default()).map(|r| r.op)
    }

    #[test]
    fn header_fields_and_extensions() {
        let mut msg = build(opcode::LOOKUP, 77, 5, &[b"abc\0", &[9u8; 16]]);
        // Claim the last 16 bytes as extensions.
        msg[36..38].copy_from_slice(&2u16.to_le_bytes());
        let r = parse(&msg, &ParseConfig::default()).unwrap();
        assert_eq!(r.header.unique, 77);
        assert_eq!(r.header.nodeid, 5);
        assert_eq!(r.header.pid, 1);
        assert_eq!(r.op, Op::Lookup { name: b"abc" });
        assert_eq!(r.extensions, &[9u8; 16]);
        // Extensions longer than the message.
        msg[36..38].copy_from_slice(&100u16.to_le_bytes());
        assert!(parse(&msg, &ParseConfig::default()).is_err());
    }

    #[test]
    fn decodes_name_ops() {
        assert_eq!(
            p(&build(opcode::LOOKUP, 1, 1, &[b"file\0"])),
            Ok(Op::Lookup { name: b"file" })
        );
        assert_eq!(
            p(&build(opcode::LOOKUP, 1, 1, &[b"..\0"])),
            Ok(Op::Lookup { name: b".." })
        );
        assert_eq!(
            p(&build(opcode::UNLINK, 1, 1, &[b"x\0"])),
            Ok(Op::Unlink { name: b"x" })
        );
        assert_eq!(
            p(&build(opcode::RMDIR, 1, 1, &[b"d\0"])),
            Ok(Op::Rmdir { name: b"d" })
        );
        assert_eq!(
            p(&build(opcode::SYMLINK, 1, 1, &[b"l\0", b"/a/b\0"])),
            Ok(Op::Symlink {
                name: b"l",
                target: b"/a/b"
            })
        );
        let mk = MknodIn {
            mode: 0o20644,
            rdev: 0x0103,
            umask: 0o22,
            padding: 0,
        };
        assert_eq!(
            p(&build(
                opcode::MKNOD,
                1,
                1,
                &[&enc(|v| mk.encode(v)), b"n\0"]
            )),
            Ok(Op::Mknod {
                arg: mk,
                name: b"n"
            })
        );
        let md = MkdirIn {
            mode: 0o755,
            umask: 0o22,
        };
        assert_eq!(
            p(&build(
                opcode::MKDIR,
                1,
                1,
                &[&enc(|v| md.encode(v)), b"d\0"]
            )),
            Ok(Op::Mkdir {
                arg: md,
                name: b"d"
            })
        );
        assert_eq!(
            p(&build(
                opcode::RENAME,
                1,
                1,
                &[&9u64.to_le_bytes(), b"a\0", b"b\0"]
            )),
            Ok(Op::Rename {
                newdir: 9,
                old: b"a",
                new: b"b"
            })
        );
        let r2 = Rename2In {
            newdir: 3,
            flags: 1,
            padding: 0,
        };
        assert_eq!(
            p(&build(
                opcode::RENAME2,
                1,
                1,
                &[&enc(|v| r2.encode(v)), b"a\0", b"b\0"]
            )),
            Ok(Op::Rename2 {
                arg: r2,
                old: b"a",
                new: b"b"
            })
        );
        assert_eq!(
            p(&build(opcode::LINK, 1, 1, &[&12u64.to_le_bytes(), b"h\0"])),
            Ok(Op::Link {
                arg: LinkIn { oldnodeid: 12 },
                name: b"h"
            })
        );
        let ci = CreateIn {
            flags: libc::O_RDWR as u32,
            mode: 0o100644,
            umask: 0o22,
            open_flags: 0,
        };
        assert_eq!(
            p(&build(
                opcode::CREATE,
                1,
                1,
                &[&enc(|v| ci.encode(v)), b"f\0"]
            )),
            Ok(Op::Create {
                arg: ci,
                name: b"f"
            })
        );
        // TMPFILE's placeholder name is "/": accepted.
        assert_eq!(
            p(&build(
                opcode::TMPFILE,
                1,
                1,
                &[&enc(|v| ci.encode(v)), b"/\0"]
            )),
            Ok(Op::Tmpfile {
                arg: ci,
                name: b"/"
            })
        );
    }

    #[test]
    fn decodes_fixed_arg_ops() {
        let ri = ReadIn {
            fh: 4,
            offset: 4096,
            size: 8192,
            read_flags: 0,
            lock_owner: 0,
            flags: 0,
            padding: 0,
        };
        let rib = enc(|v| ri.encode(v));
        assert_eq!(p(&build(opcode::READ, 1, 9, &[&rib])), Ok(Op::Read(ri)));
        assert_eq!(
            p(&build(opcode::READDIR, 1, 9, &[&rib])),
            Ok(Op::Readdir(ri))
        );
        assert_eq!(
            p(&build(opcode::READDIRPLUS, 1, 9, &[&rib])),
            Ok(Op::Readdirplus(ri))
        );
        assert_eq!(
            p(&build(opcode::FORGET, 1, 9, &[&3u64.to_le_bytes()])),
            Ok(Op::Forget(ForgetIn { nlookup: 3 }))
        );
        let gi = GetattrIn {
            getattr_flags: GETATTR_FH,
            dummy: 0,
            fh: 7,
        };
        assert_eq!(
            p(&build(opcode::GETATTR, 1, 9, &[&enc(|v| gi.encode(v))])),
            Ok(Op::Getattr(gi))
        );
        let si = SetattrIn {
            valid: fattr::SIZE | fattr::MODE,
            size: 100,
            mode: 0o600,
            ..Default::default()
        };
        assert_eq!(
            p(&build(opcode::SETATTR, 1, 9, &[&enc(|v| si.encode(v))])),
            Ok(Op::Setattr(si))
        );
        assert_eq!(p(&build(opcode::READLINK, 1, 9, &[])), Ok(Op::Readlink));
        assert_eq!(p(&build(opcode::STATFS, 1, 9, &[])), Ok(Op::Statfs));
        assert_eq!(p(&build(opcode::DESTROY, 1, 0, &[])), Ok(Op::Destroy));
        let oi = OpenIn {
            flags: libc::O_RDONLY as u32,
            open_flags: 0,
        };
        let oib = enc(|v| oi.encode(v));
        assert_eq!(p(&build(opcode::OPEN, 1, 9, &[&oib])), Ok(Op::Open(oi)));
        assert_eq!(
            p(&build(opcode::OPENDIR, 1, 9, &[&oib])),
            Ok(Op::Opendir(oi))
        );
        let rl = ReleaseIn {
            fh: 5,
            flags: 0,
            release_flags: RELEASE_FLUSH,
            lock_owner: 1,
        };
        let rlb = enc(|v| rl.encode(v));
        assert_eq!(
            p(&build(opcode::RELEASE, 1, 9, &[&rlb])),
            Ok(Op::Release(rl))
        );
        assert_eq!(
            p(&build(opcode::RELEASEDIR, 1, 9, &[&rlb])),
            Ok(Op::Releasedir(rl))
        );
        let fs = FsyncIn {
            fh: 5,
            fsync_flags: FSYNC_FDATASYNC,
            padding: 0,
        };
        let fsb = enc(|v| fs.encode(v));
        assert_eq!(p(&build(opcode::FSYNC, 1, 9, &[&fsb])), Ok(Op::Fsync(fs)));
        assert_eq!(
            p(&build(opcode::FSYNCDIR, 1, 9, &[&fsb])),
            Ok(Op::Fsyncdir(fs))
        );
        let fl = FlushIn {
            fh: 5,
            lock_owner: 9,
            ..Default::default()
        };
        assert_eq!(
            p(&build(opcode::FLUSH, 1, 9, &[&enc(|v| fl.encode(v))])),
            Ok(Op::Flush(fl))
        );
        let ai = AccessIn {
            mask: libc::R_OK as u32,
            padding: 0,
        };
        assert_eq!(
            p(&build(opcode::ACCESS, 1, 9, &[&enc(|v| ai.encode(v))])),
            Ok(Op::Access(ai))
        );
        let li = LseekIn {
            fh: 1,
            offset: 10,
            whence: 3,
            padding: 0,
        };
        assert_eq!(
            p(&build(opcode::LSEEK, 1, 9, &[&enc(|v| li.encode(v))])),
            Ok(Op::Lseek(li))
        );
        let fa = FallocateIn {
            fh: 1,
            offset: 0,
            length: 4096,
            mode: 0,
            padding: 0,
        };
        assert_eq!(
            p(&build(opcode::FALLOCATE, 1, 9, &[&enc(|v| fa.encode(v))])),
            Ok(Op::Fallocate(fa))
        );
        let cf = CopyFileRangeIn {
            fh_in: 1,
            off_in: 2,
            nodeid_out: 3,
            fh_out: 4,
            off_out: 5,
            len: 6,
            flags: 0,
        };
        let cfb = enc(|v| cf.encode(v));
        assert_eq!(
            p(&build(opcode::COPY_FILE_RANGE, 1, 9, &[&cfb])),
            Ok(Op::CopyFileRange(cf))
        );
        assert_eq!(
            p(&build(opcode::COPY_FILE_RANGE_64, 1, 9, &[&cfb])),
            Ok(Op::CopyFileRange64(cf))
        );
        let sm = SetupmappingIn {
            fh: u64::MAX,
            foffset: 0,
            len: 2 << 20,
            flags: SETUPMAPPING_FLAG_READ,
            moffset: 4 << 20,
        };
        assert_eq!(
            p(&build(
                opcode::SETUPMAPPING,
                1,
                9,
                &[&enc(|v| sm.encode(v))]
            )),
            Ok(Op::SetupMapping(sm))
        );
        let one = RemovemappingOne {
            moffset: 0,
            len: 2 << 20,
        };
        assert_eq!(
            p(&build(
                opcode::REMOVEMAPPING,
                1,
                9,
                &[
                    &2u32.to_le_bytes(),
                    &enc(|v| one.encode(v)),
                    &enc(|v| one.encode(v))
                ]
            )),
            Ok(Op::RemoveMapping(vec![one, one]))
        );
        assert_eq!(
            p(&build(opcode::SYNCFS, 1, 9, &[&0u64.to_le_bytes()])),
            Ok(Op::Syncfs(SyncfsIn { padding: 0 }))
        );
        let sx = StatxIn {
            getattr_flags: 0,
            reserved: 0,
            fh: 0,
            sx_flags: 0,
            sx_mask: 0xfff,
        };
        assert_eq!(
            p(&build(opcode::STATX, 1, 9, &[&enc(|v| sx.encode(v))])),
            Ok(Op::Statx(sx))
        );
        assert_eq!(
            p(&build(opcode::INTERRUPT, 1, 0, &[&55u64.to_le_bytes()])),
            Ok(Op::Interrupt(InterruptIn { unique: 55 }))
        );
        let bm = BmapIn {
            block: 3,
            blocksize: 4096,
            padding: 0,
        };
        assert_eq!(
            p(&build(opcode::BMAP, 1, 9, &[&enc(|v| bm.encode(v))])),
            Ok(Op::Bmap(bm))
        );
        let pi = PollIn {
            fh: 1,
            kh: 2,
            flags: 0,
            events: 1,
        };
        assert_eq!(
            p(&build(opcode::POLL, 1, 9, &[&enc(|v| pi.encode(v))])),
            Ok(Op::Poll(pi))
        );
        let mut lk = Vec::new();
        for v in [1u64, 2, 0, 100] {
            lk.extend_from_slice(&v.to_le_bytes());
        }
        lk.extend_from_slice(&1u32.to_le_bytes()); // type
        lk.extend_from_slice(&42u32.to_le_bytes()); // pid
        lk.extend_from_slice(&0u32.to_le_bytes()); // lk_flags
        lk.extend_from_slice(&0u32.to_le_bytes()); // padding
        let want = LkIn {
            fh: 1,
            owner: 2,
            lk: FileLock {
                start: 0,
                end: 100,
                typ: 1,
                pid: 42,
            },
            lk_flags: 0,
        };
        assert_eq!(p(&build(opcode::GETLK, 1, 9, &[&lk])), Ok(Op::Getlk(want)));
        assert_eq!(p(&build(opcode::SETLK, 1, 9, &[&lk])), Ok(Op::Setlk(want)));
        assert_eq!(
            p(&build(opcode::SETLKW, 1, 9, &[&lk])),
            Ok(Op::Setlkw(want))
        );
    }

    #[test]
    fn decodes_data_ops() {
        let wi = WriteIn {
            fh: 3,
            offset: 10,
            size: 5,
            ..Default::default()
        };
        assert_eq!(
            p(&build(
                opcode::WRITE,
                1,
                9,
                &[&enc(|v| wi.encode(v)), b"hello"]
            )),
            Ok(Op::Write {
                arg: wi,
                data: b"hello"
            })
        );
        // Size disagrees with the data.
        assert!(
            p(&build(
                opcode::WRITE,
                1,
                9,
                &[&enc(|v| wi.encode(v)), b"hell"]
            ))
            .is_err()
        );

        // SETXATTR, compat (8-byte) layout.
        let msg = build(
            opcode::SETXATTR,
            1,
            9,
            &[
                &3u32.to_le_bytes(),
                &1u32.to_le_bytes(),
                b"user.a\0",
                b"xyz",
            ],
        );
        assert_eq!(
            p(&msg),
            Ok(Op::Setxattr {
                arg: SetxattrIn {
                    size: 3,
                    flags: 1,
                    ..Default::default()
                },
                name: b"user.a",
                value: b"xyz"
            })
        );
        // SETXATTR, extended layout.
        let sx = SetxattrIn {
            size: 2,
            flags: 0,
            setxattr_flags: SETXATTR_ACL_KILL_SGID,
            padding: 0,
        };
        let msg = build(
            opcode::SETXATTR,
            1,
            9,
            &[&enc(|v| sx.encode(v)), b"user.b\0", b"hi"],
        );
        let cfg = ParseConfig { setxattr_ext: true };
        assert_eq!(
            parse(&msg, &cfg).unwrap().op,
            Op::Setxattr {
                arg: sx,
                name: b"user.b",
                value: b"hi"
            }
        );
        let gi = GetxattrIn {
            size: 0,
            padding: 0,
        };
        assert_eq!(
            p(&build(
                opcode::GETXATTR,
                1,
                9,
                &[&enc(|v| gi.encode(v)), b"user.a\0"]
            )),
            Ok(Op::Getxattr {
                arg: gi,
                name: b"user.a"
            })
        );
        assert_eq!(
            p(&build(opcode::LISTXATTR, 1, 9, &[&enc(|v| gi.encode(v))])),
            Ok(Op::Listxattr(gi))
        );
        assert_eq!(
            p(&build(opcode::REMOVEXATTR, 1, 9, &[b"user.a\0"])),
            Ok(Op::Removexattr { name: b"user.a" })
        );
        let io = IoctlIn {
            fh: 1,
            flags: 0,
            cmd: 0x1234,
            arg: 0,
            in_size: 2,
            out_size: 0,
        };
        assert_eq!(
            p(&build(
                opcode::IOCTL,
                1,
                9,
                &[&enc(|v| io.encode(v)), b"ab"]
            )),
            Ok(Op::Ioctl {
                arg: io,
                data: b"ab"
            })
        );
        let nr = NotifyRetrieveIn {
            offset: 0,
            size: 1,
            ..Default::default()
        };
        assert_eq!(
            p(&build(
                opcode::NOTIFY_REPLY,
                1,
                9,
                &[&enc(|v| nr.encode(v)), b"z"]
            )),
            Ok(Op::NotifyReply {
                arg: nr,
                data: b"z"
            })
        );
    }

    #[test]
    fn decodes_init_old_and_new() {
        // 7.31-style 16-byte init_in.
        let mut old = Vec::new();
        for v in [7u32, 31, 131072, init_flags::ASYNC_READ as u32] {
            old.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(
            p(&build(opcode::INIT, 1, 0, &[&old])),
            Ok(Op::Init(InitIn {
                major: 7,
                minor: 31,
                max_readahead: 131072,
                flags: init_flags::ASYNC_READ
            }))
        );
        let new = InitIn {
            major: 7,
            minor: 44,
            max_readahead: 131072,
            flags: init_flags::INIT_EXT | init_flags::HAS_RESEND,
        };
        assert_eq!(
            p(&build(opcode::INIT, 1, 0, &[&enc(|v| new.encode(v))])),
            Ok(Op::Init(new))
        );
        assert!(p(&build(opcode::INIT, 1, 0, &[&old[..12]])).is_err());
    }

    #[test]
    fn decodes_batch_forget() {
        let mut body = Vec::new();
        body.extend_from_slice(&2u32.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        for (n, c) in [(10u64, 1u64), (11, 5)] {
            body.extend_from_slice(&n.to_le_bytes());
            body.extend_from_slice(&c.to_le_bytes());
        }
        assert_eq!(
            p(&build(opcode::BATCH_FORGET, 1, 0, &[&body])),
            Ok(Op::BatchForget(vec![
                ForgetOne {
                    nodeid: 10,
                    nlookup: 1
                },
                ForgetOne {
                    nodeid: 11,
                    nlookup: 5
                }
            ]))
        );
        // Count larger than the entries present.
        body[0..4].copy_from_slice(&3u32.to_le_bytes());
        assert!(p(&build(opcode::BATCH_FORGET, 1, 0, &[&body])).is_err());
        // Huge count.
        body[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(p(&build(opcode::BATCH_FORGET, 1, 0, &[&body])).is_err());
        // Count smaller than the entries present.
        body[0..4].copy_from_slice(&1u32.to_le_bytes());
        assert!(p(&build(opcode::BATCH_FORGET, 1, 0, &[&body])).is_err());
        // Huge REMOVEMAPPING count.
        assert!(
            p(&build(
                opcode::REMOVEMAPPING,
                1,
                0,
                &[&u32::MAX.to_le_bytes()]
            ))
            .is_err()
        );
    }

    #[test]
    fn malformed_messages_are_errors() {
        // Truncated header.
        for n in 0..InHeader::SIZE {
            assert!(parse(&[0u8; 64][..n], &ParseConfig::default()).is_err());
        }
        // len field disagreeing with the buffer, both ways.
        let mut msg = build(opcode::LOOKUP, 1, 1, &[b"a\0"]);
        let n = msg.len() as u32;
        msg[0..4].copy_from_slice(&(n + 1).to_le_bytes());
        assert_eq!(
            p(&msg).unwrap_err().reason,
            "length field disagrees with the message size"
        );
        msg[0..4].copy_from_slice(&(n - 1).to_le_bytes());
        assert!(p(&msg).is_err());
        // Name without NUL.
        assert!(p(&build(opcode::LOOKUP, 1, 1, &[b"abc"])).is_err());
        // Name with '/'.
        assert!(p(&build(opcode::LOOKUP, 1, 1, &[b"a/b\0"])).is_err());
        // Empty name.
        assert!(p(&build(opcode::LOOKUP, 1, 1, &[b"\0"])).is_err());
        // Trailing garbage after a name.
        assert!(p(&build(opcode::LOOKUP, 1, 1, &[b"a\0b"])).is_err());
        // RENAME missing the second name / second name unterminated.
        assert!(p(&build(opcode::RENAME, 1, 1, &[&1u64.to_le_bytes(), b"a\0"])).is_err());
        assert!(
            p(&build(
                opcode::RENAME,
                1,
                1,
                &[&1u64.to_le_bytes(), b"a\0b"]
            ))
            .is_err()
        );
        // SYMLINK without a terminated target.
        assert!(p(&build(opcode::SYMLINK, 1, 1, &[b"a\0", b"t"])).is_err());
        // Truncated bodies of every fixed-argument opcode.
        for op in [
            opcode::FORGET,
            opcode::GETATTR,
            opcode::SETATTR,
            opcode::OPEN,
            opcode::READ,
            opcode::WRITE,
            opcode::RELEASE,
            opcode::FSYNC,
            opcode::GETXATTR,
            opcode::LISTXATTR,
            opcode::FLUSH,
            opcode::OPENDIR,
            opcode::READDIR,
            opcode::RELEASEDIR,
            opcode::FSYNCDIR,
            opcode::GETLK,
            opcode::ACCESS,
            opcode::CREATE,
            opcode::INTERRUPT,
            opcode::BMAP,
            opcode::IOCTL,
            opcode::POLL,
            opcode::FALLOCATE,
            opcode::READDIRPLUS,
            opcode::LSEEK,
            opcode::COPY_FILE_RANGE,
            opcode::SETUPMAPPING,
            opcode::REMOVEMAPPING,
            opcode::SYNCFS,
            opcode::TMPFILE,
            opcode::STATX,
            opcode::BATCH_FORGET,
            opcode::MKNOD,
            opcode::MKDIR,
            opcode::RENAME2,
            opcode::LINK,
            opcode::SETXATTR,
            opcode::NOTIFY_REPLY,
        ] {
            assert!(
                p(&build(op, 1, 1, &[&[0u8; 3]])).is_err(),
                "{} accepted a 3-byte body",
                opcode_name(op)
            );
        }
        // Unknown opcodes decode (and are answered ENOSYS by the dispatcher).
        assert_eq!(p(&build(9999, 1, 1, &[])), Ok(Op::Unknown(9999)));
        assert_eq!(
            p(&build(opcode::FUSE_INIT_BSWAP_RESERVED, 1, 1, &[])),
            Ok(Op::Unknown(opcode::FUSE_INIT_BSWAP_RESERVED))
        );
    }

    #[test]
    fn fuzz_random_buffers_never_panic() {
        let mut rng = Rng::new(0x5eed_1234);
        let cfgs = [ParseConfig::default(), ParseConfig { setxattr_ext: true }];
        for i in 0..20_000u32 {
            let len = rng.below(300) as usize;
            let mut buf = rng.bytes(len);
            // Most of the time, make the header plausible so the body parsers get exercised.
            if len >= InHeader::SIZE && i % 4 != 0 {
                buf[0..4].copy_from_slice(&(len as u32).to_le_bytes());
                let op = rng.below(56) as u32;
                buf[4..8].copy_from_slice(&op.to_le_bytes());
                if rng.below(2) == 0 {
                    buf[36..38].copy_from_slice(&0u16.to_le_bytes());
                }
                if rng.below(3) == 0 {
                    // Sprinkle NULs so name parsers succeed sometimes.
                    for _ in 0..3 {
                        let at = InHeader::SIZE + rng.below((len - InHeader::SIZE) as u64) as usize;
                        if at < len {
                            buf[at] = 0;
                        }
                    }
                }
            }
            let _ = parse(&buf, &cfgs[(i % 2) as usize]);
        }
    }

    #[test]
    fn no_reply_opcodes() {
        assert!(is_no_reply(opcode::FORGET));
        assert!(is_no_reply(opcode::BATCH_FORGET));
        assert!(is_no_reply(opcode::INTERRUPT));
        assert!(is_no_reply(opcode::NOTIFY_REPLY));
        assert!(!is_no_reply(opcode::LOOKUP));
        assert!(!is_no_reply(opcode::DESTROY));
    }
}
