//! Reply encoding: the out header plus payload as one message, and directory listings packed into
//! 8-byte-aligned `fuse_dirent` / `fuse_direntplus` records within the caller's size limit.

use super::abi::{self, DirentHead, EntryOut, FuseAttr, OutHeader};
use crate::errno::Errno;
use crate::fs::{Attr, Timespec};
use std::time::Duration;

/// A successful reply whose payload `fill` appends. The header's `len` is set afterwards.
pub fn build(unique: u64, capacity: usize, fill: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = Vec::with_capacity(OutHeader::SIZE + capacity);
    OutHeader {
        len: 0,
        error: 0,
        unique,
    }
    .encode(&mut v);
    fill(&mut v);
    let len = v.len() as u32;
    v[0..4].copy_from_slice(&len.to_le_bytes());
    v
}

/// A successful reply with no payload.
pub fn empty(unique: u64) -> Vec<u8> {
    build(unique, 0, |_| {})
}

/// A successful reply carrying `payload` as is.
pub fn bytes(unique: u64, payload: &[u8]) -> Vec<u8> {
    build(unique, payload.len(), |v| v.extend_from_slice(payload))
}

/// An error reply: the header alone, `error = -errno`. An out-of-range errno becomes EIO.
pub fn error(unique: u64, errno: Errno) -> Vec<u8> {
    let e = if errno.0 > 0 && errno.0 < 4096 {
        errno.0
    } else {
        libc::EIO
    };
    let mut v = Vec::with_capacity(OutHeader::SIZE);
    OutHeader {
        len: OutHeader::SIZE as u32,
        error: -e,
        unique,
    }
    .encode(&mut v);
    v
}

/// Seconds and nanoseconds of a cache timeout.
pub fn timeout_parts(d: Duration) -> (u64, u32) {
    (d.as_secs(), d.subsec_nanos())
}

fn ts(t: Timespec) -> (u64, u32) {
    (t.sec as u64, t.nsec)
}

/// `fs::Attr` in wire form. `ino` stays the ext4 inode number (what `stat` shows).
pub fn fuse_attr(a: &Attr) -> FuseAttr {
    let (atime, atimensec) = ts(a.atime);
    let (mtime, mtimensec) = ts(a.mtime);
    let (ctime, ctimensec) = ts(a.ctime);
    FuseAttr {
        ino: a.ino,
        size: a.size,
        blocks: a.blocks,
        atime,
        mtime,
        ctime,
        atimensec,
        mtimensec,
        ctimensec,
        mode: a.mode,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: if a.dax { abi::ATTR_DAX } else { 0 },
    }
}

/// An entry for node `nodeid` with attributes `a`.
pub fn entry_out(
    nodeid: u64,
    a: &Attr,
    entry_timeout: Duration,
    attr_timeout: Duration,
) -> EntryOut {
    let (entry_valid, entry_valid_nsec) = timeout_parts(entry_timeout);
    let (attr_valid, attr_valid_nsec) = timeout_parts(attr_timeout);
    EntryOut {
        nodeid,
        generation: u64::from(a.generation),
        entry_valid,
        attr_valid,
        entry_valid_nsec,
        attr_valid_nsec,
        attr: fuse_attr(a),
    }
}

/// `fuse_attr_out` for `a`.
pub fn attr_out(a: &Attr, attr_timeout: Duration) -> abi::AttrOut {
    let (attr_valid, attr_valid_nsec) = timeout_parts(attr_timeout);
    abi::AttrOut {
        attr_valid,
        attr_valid_nsec,
        dummy: 0,
        attr: fuse_attr(a),
    }
}

/// Split a `new_encode_dev` device number into (major, minor).
pub fn decode_dev(dev: u32) -> (u32, u32) {
    ((dev & 0xfff00) >> 8, (dev & 0xff) | ((dev >> 12) & 0xfff00))
}

/// statx mask bits (`STATX_*`).
pub const STATX_BASIC_STATS: u32 = 0x7ff;
pub const STATX_BTIME: u32 = 0x800;

/// `fuse_statx_out` for `a`.
pub fn statx_out(a: &Attr, attr_timeout: Duration) -> abi::StatxOut {
    let (attr_valid, attr_valid_nsec) = timeout_parts(attr_timeout);
    let sx = |t: Timespec| abi::SxTime {
        tv_sec: t.sec,
        tv_nsec: t.nsec,
        reserved: 0,
    };
    let (rdev_major, rdev_minor) = decode_dev(a.rdev);
    abi::StatxOut {
        attr_valid,
        attr_valid_nsec,
        flags: 0,
        stat: abi::FuseStatx {
            mask: STATX_BASIC_STATS | STATX_BTIME,
            blksize: a.blksize,
            attributes: 0,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            mode: a.mode as u16,
            ino: a.ino,
            size: a.size,
            blocks: a.blocks,
            attributes_mask: 0,
            atime: sx(a.atime),
            btime: sx(a.crtime),
            ctime: sx(a.ctime),
            mtime: sx(a.mtime),
            rdev_major,
            rdev_minor,
            dev_major: 0,
            dev_minor: 0,
        },
    }
}

/// `fuse_kstatfs` from the engine's numbers.
pub fn kstatfs(s: &crate::fs::StatFs) -> abi::Kstatfs {
    abi::Kstatfs {
        blocks: s.blocks,
        bfree: s.bfree,
        bavail: s.bavail,
        files: s.files,
        ffree: s.ffree,
        bsize: s.bsize,
        namelen: s.namelen,
        frsize: s.frsize,
    }
}

/// A READDIR / READDIRPLUS payload under construction, never longer than `limit` bytes.
#[derive(Debug)]
pub struct DirentBuf {
    buf: Vec<u8>,
    limit: usize,
}

impl DirentBuf {
    pub fn new(limit: usize) -> DirentBuf {
        DirentBuf {
            buf: Vec::with_capacity(limit.min(1 << 20)),
            limit,
        }
    }

    /// Bytes still free.
    pub fn remaining(&self) -> usize {
        self.limit - self.buf.len()
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn put_dirent(&mut self, ino: u64, off: u64, typ: u32, name: &[u8]) {
        let start = self.buf.len();
        DirentHead {
            ino,
            off,
            namelen: name.len() as u32,
            typ,
        }
        .encode(&mut self.buf);
        self.buf.extend_from_slice(name);
        let end = start + abi::dirent_size(name.len());
        self.buf.resize(end, 0);
    }

    /// Append a `fuse_dirent`; false (and nothing appended) when it does not fit.
    pub fn push(&mut self, ino: u64, off: u64, typ: u32, name: &[u8]) -> bool {
        if abi::dirent_size(name.len()) > self.remaining() {
            return false;
        }
        self.put_dirent(ino, off, typ, name);
        true
    }

    /// Append a `fuse_direntplus`; false (and nothing appended) when it does not fit.
    /// `ino` is the directory entry's inode number (the entry may be all zeroes).
    pub fn push_plus(
        &mut self,
        entry: &EntryOut,
        ino: u64,
        off: u64,
        typ: u32,
        name: &[u8],
    ) -> bool {
        if abi::direntplus_size(name.len()) > self.remaining() {
            return false;
        }
        entry.encode(&mut self.buf);
        self.put_dirent(ino, off, typ, name);
        true
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// One decoded `fuse_dirent` (for tests and harnesses that play the kernel).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedDirent {
    pub entry: Option<EntryOut>,
    pub ino: u64,
    pub off: u64,
    pub typ: u32,
    pub name: Vec<u8>,
}

/// Decode a READDIR (`plus == false`) or READDIRPLUS payload; `None` if it is malformed.
pub fn parse_dirents(mut buf: &[u8], plus: bool) -> Option<Vec<ParsedDirent>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let entry = if plus {
            let e = EntryOut::decode(buf)?;
            buf = &buf[EntryOut::SIZE..];
            Some(e)
        } else {
            None
        };
        let h = DirentHead::decode(buf)?;
        let namelen = h.namelen as usize;
        let name = buf
            .get(DirentHead::SIZE..DirentHead::SIZE + namelen)?
            .to_vec();
        let rec = abi::dirent_size(namelen);
        buf = buf.get(rec..)?;
        out.push(ParsedDirent {
            entry,
            ino: h.ino,
            off: h.off,
            typ: h.typ,
            name,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_and_empty_replies() {
        let e = error(42, Errno::ENOENT);
        assert_eq!(e.len(), 16);
        let h = OutHeader::decode(&e).unwrap();
        assert_eq!(
            h,
            OutHeader {
                len: 16,
                error: -libc::ENOENT,
                unique: 42
            }
        );
        assert_eq!(
            OutHeader::decode(&error(1, Errno(0))).unwrap().error,
            -libc::EIO
        );
        assert_eq!(
            OutHeader::decode(&error(1, Errno(-5))).unwrap().error,
            -libc::EIO
        );
        assert_eq!(
            OutHeader::decode(&error(1, Errno(1 << 20))).unwrap().error,
            -libc::EIO
        );
        let ok = empty(7);
        assert_eq!(
            OutHeader::decode(&ok).unwrap(),
            OutHeader {
                len: 16,
                error: 0,
                unique: 7
            }
        );
        let b = bytes(8, b"abc");
        assert_eq!(OutHeader::decode(&b).unwrap().len, 19);
        assert_eq!(&b[16..], b"abc");
    }

    fn sample_attr() -> Attr {
        Attr {
            ino: 12,
            size: 5,
            blocks: 8,
            atime: Timespec { sec: 1, nsec: 2 },
            mtime: Timespec { sec: 3, nsec: 4 },
            ctime: Timespec { sec: 5, nsec: 6 },
            crtime: Timespec { sec: -7, nsec: 8 },
            mode: 0o100644,
            nlink: 1,
            uid: 1000,
            gid: 100,
            rdev: 0,
            blksize: 4096,
            generation: 99,
            dax: false,
        }
    }

    #[test]
    fn entry_and_attr_encoding() {
        let a = sample_attr();
        let e = entry_out(12, &a, Duration::from_millis(1500), Duration::from_secs(2));
        assert_eq!(e.generation, 99);
        assert_eq!((e.entry_valid, e.entry_valid_nsec), (1, 500_000_000));
        assert_eq!((e.attr_valid, e.attr_valid_nsec), (2, 0));
        let mut v = Vec::new();
        e.encode(&mut v);
        assert_eq!(v.len(), 128);
        assert_eq!(EntryOut::decode(&v), Some(e));
        // attr.mode sits at 40 (entry head) + 60.
        assert_eq!(&v[100..104], &0o100644u32.to_le_bytes());
        let ao = attr_out(&a, Duration::from_secs(1));
        assert_eq!(ao.attr.mtimensec, 4);
        let sx = statx_out(&a, Duration::from_secs(1));
        assert_eq!(sx.stat.btime.tv_sec, -7);
        assert_eq!(sx.stat.mode, 0o100644);
    }

    #[test]
    fn device_numbers() {
        // makedev(8, 1) in new_encode_dev form is 0x801.
        assert_eq!(decode_dev(0x801), (8, 1));
        // major 259, minor 300: (minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)
        let enc = (300 & 0xff) | (259 << 8) | ((300 & !0xff) << 12);
        assert_eq!(decode_dev(enc), (259, 300));
    }

    #[test]
    fn dirent_packing_alignment_and_limit() {
        let mut d = DirentBuf::new(24 + 8 + 32);
        assert!(d.push(2, 1, libc::DT_DIR as u32, b"."));
        assert_eq!(d.len(), 32);
        assert!(d.push(2, 2, libc::DT_DIR as u32, b"..")); // 24 + 2 -> 32
        assert_eq!(d.len(), 64);
        assert!(!d.push(13, 3, libc::DT_REG as u32, b"x"));
        assert_eq!(d.len(), 64);
        let bytes = d.into_bytes();
        assert_eq!(bytes.len() % 8, 0);
        // Name padding is zeroed.
        assert_eq!(&bytes[24..32], b".\0\0\0\0\0\0\0");
        let parsed = parse_dirents(&bytes, false).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[1].name, b"..");
        assert_eq!(parsed[1].off, 2);
        assert_eq!(parsed[1].typ, libc::DT_DIR as u32);

        // An 8-byte name needs no padding; a 9-byte one pads to 40.
        let mut d = DirentBuf::new(4096);
        assert!(d.push(5, 1, 8, b"12345678"));
        assert_eq!(d.len(), 32);
        assert!(d.push(6, 2, 8, b"123456789"));
        assert_eq!(d.len(), 72);
    }

    #[test]
    fn direntplus_packing() {
        let a = sample_attr();
        let e = entry_out(12, &a, Duration::from_secs(1), Duration::from_secs(1));
        let mut d = DirentBuf::new(abi::direntplus_size(3) + abi::direntplus_size(1) - 1);
        assert!(d.push_plus(&e, 12, 7, libc::DT_REG as u32, b"abc"));
        assert_eq!(d.len(), 160);
        // Does not fit by one byte.
        assert!(!d.push_plus(&EntryOut::default(), 2, 8, 4, b"."));
        assert_eq!(d.len(), 160);
        let parsed = parse_dirents(&d.into_bytes(), true).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].entry, Some(e));
        assert_eq!(parsed[0].ino, 12);
        assert_eq!(parsed[0].off, 7);
        assert_eq!(parsed[0].name, b"abc");
    }

    #[test]
    fn parse_dirents_rejects_garbage() {
        assert_eq!(parse_dirents(&[0u8; 10], false), None);
        let mut d = DirentBuf::new(100);
        d.push(1, 1, 0, b"abc");
        let mut b = d.into_bytes();
        b[16..20].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(parse_dirents(&b, false), None);
    }
}
