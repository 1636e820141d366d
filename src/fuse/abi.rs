//! The FUSE wire format: opcodes, flags and the fixed-size structs exchanged with the kernel, as
//! plain Rust structs with explicit little-endian encode/decode. Written from the layout of the
//! kernel's `include/uapi/linux/fuse.h` (protocol 7.x); no `repr(C)` casts, so a short or odd buffer
//! can only ever produce `None`, never undefined behaviour.
//!
//! Every struct made with `wire_struct!` gets `SIZE`, `decode(&[u8]) -> Option<Self>` (reads the
//! first `SIZE` bytes; `None` when the buffer is shorter) and `encode(&self, &mut Vec<u8>)`.

/// The protocol major version we speak.
pub const KERNEL_VERSION: u32 = 7;
/// The protocol minor version we speak; the session uses `min(kernel's, ours)`.
pub const KERNEL_MINOR_VERSION: u32 = 41;
/// The oldest kernel minor we accept (SETUPMAPPING/REMOVEMAPPING and `map_alignment` are 7.31).
pub const MIN_KERNEL_MINOR_VERSION: u32 = 31;

/// The FUSE node id of the root directory.
pub const ROOT_ID: u64 = 1;

/// The kernel refuses to read requests into a smaller buffer than this.
pub const MIN_READ_BUFFER: usize = 8192;

/// Largest xattr value the kernel passes (`XATTR_SIZE_MAX`).
pub const XATTR_SIZE_MAX: usize = 65536;

/// Opcodes (`enum fuse_opcode`).
pub mod opcode {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const GETLK: u32 = 31;
    pub const SETLK: u32 = 32;
    pub const SETLKW: u32 = 33;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const BMAP: u32 = 37;
    pub const DESTROY: u32 = 38;
    pub const IOCTL: u32 = 39;
    pub const POLL: u32 = 40;
    pub const NOTIFY_REPLY: u32 = 41;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const SETUPMAPPING: u32 = 48;
    pub const REMOVEMAPPING: u32 = 49;
    pub const SYNCFS: u32 = 50;
    pub const TMPFILE: u32 = 51;
    pub const STATX: u32 = 52;
    pub const COPY_FILE_RANGE_64: u32 = 53;
    pub const CUSE_INIT: u32 = 4096;
    /// `CUSE_INIT << 8`: what a byte-swapped CUSE_INIT looks like.
    pub const CUSE_INIT_BSWAP_RESERVED: u32 = 1_048_576;
    /// `FUSE_INIT << 24`: what a byte-swapped INIT looks like.
    pub const FUSE_INIT_BSWAP_RESERVED: u32 = 436_207_616;
}

/// A name for an opcode, for log lines.
pub fn opcode_name(op: u32) -> &'static str {
    use opcode::*;
    match op {
        LOOKUP => "LOOKUP",
        FORGET => "FORGET",
        GETATTR => "GETATTR",
        SETATTR => "SETATTR",
        READLINK => "READLINK",
        SYMLINK => "SYMLINK",
        MKNOD => "MKNOD",
        MKDIR => "MKDIR",
        UNLINK => "UNLINK",
        RMDIR => "RMDIR",
        RENAME => "RENAME",
        LINK => "LINK",
        OPEN => "OPEN",
        READ => "READ",
        WRITE => "WRITE",
        STATFS => "STATFS",
        RELEASE => "RELEASE",
        FSYNC => "FSYNC",
        SETXATTR => "SETXATTR",
        GETXATTR => "GETXATTR",
        LISTXATTR => "LISTXATTR",
        REMOVEXATTR => "REMOVEXATTR",
        FLUSH => "FLUSH",
        INIT => "INIT",
        OPENDIR => "OPENDIR",
        READDIR => "READDIR",
        RELEASEDIR => "RELEASEDIR",
        FSYNCDIR => "FSYNCDIR",
        GETLK => "GETLK",
        SETLK => "SETLK",
        SETLKW => "SETLKW",
        ACCESS => "ACCESS",
        CREATE => "CREATE",
        INTERRUPT => "INTERRUPT",
        BMAP => "BMAP",
        DESTROY => "DESTROY",
        IOCTL => "IOCTL",
        POLL => "POLL",
        NOTIFY_REPLY => "NOTIFY_REPLY",
        BATCH_FORGET => "BATCH_FORGET",
        FALLOCATE => "FALLOCATE",
        READDIRPLUS => "READDIRPLUS",
        RENAME2 => "RENAME2",
        LSEEK => "LSEEK",
        COPY_FILE_RANGE => "COPY_FILE_RANGE",
        SETUPMAPPING => "SETUPMAPPING",
        REMOVEMAPPING => "REMOVEMAPPING",
        SYNCFS => "SYNCFS",
        TMPFILE => "TMPFILE",
        STATX => "STATX",
        COPY_FILE_RANGE_64 => "COPY_FILE_RANGE_64",
        CUSE_INIT => "CUSE_INIT",
        _ => "UNKNOWN",
    }
}

/// INIT flags (`fuse_init_in.flags` / `fuse_init_out.flags`; bits 32..63 travel in `flags2`).
pub mod init_flags {
    pub const ASYNC_READ: u64 = 1 << 0;
    pub const POSIX_LOCKS: u64 = 1 << 1;
    pub const FILE_OPS: u64 = 1 << 2;
    pub const ATOMIC_O_TRUNC: u64 = 1 << 3;
    pub const EXPORT_SUPPORT: u64 = 1 << 4;
    pub const BIG_WRITES: u64 = 1 << 5;
    pub const DONT_MASK: u64 = 1 << 6;
    pub const SPLICE_WRITE: u64 = 1 << 7;
    pub const SPLICE_MOVE: u64 = 1 << 8;
    pub const SPLICE_READ: u64 = 1 << 9;
    pub const FLOCK_LOCKS: u64 = 1 << 10;
    pub const HAS_IOCTL_DIR: u64 = 1 << 11;
    pub const AUTO_INVAL_DATA: u64 = 1 << 12;
    pub const DO_READDIRPLUS: u64 = 1 << 13;
    pub const READDIRPLUS_AUTO: u64 = 1 << 14;
    pub const ASYNC_DIO: u64 = 1 << 15;
    pub const WRITEBACK_CACHE: u64 = 1 << 16;
    pub const NO_OPEN_SUPPORT: u64 = 1 << 17;
    pub const PARALLEL_DIROPS: u64 = 1 << 18;
    pub const HANDLE_KILLPRIV: u64 = 1 << 19;
    pub const POSIX_ACL: u64 = 1 << 20;
    pub const ABORT_ERROR: u64 = 1 << 21;
    pub const MAX_PAGES: u64 = 1 << 22;
    pub const CACHE_SYMLINKS: u64 = 1 << 23;
    pub const NO_OPENDIR_SUPPORT: u64 = 1 << 24;
    pub const EXPLICIT_INVAL_DATA: u64 = 1 << 25;
    pub const MAP_ALIGNMENT: u64 = 1 << 26;
    pub const SUBMOUNTS: u64 = 1 << 27;
    pub const HANDLE_KILLPRIV_V2: u64 = 1 << 28;
    pub const SETXATTR_EXT: u64 = 1 << 29;
    pub const INIT_EXT: u64 = 1 << 30;
    pub const INIT_RESERVED: u64 = 1 << 31;
    pub const SECURITY_CTX: u64 = 1 << 32;
    pub const HAS_INODE_DAX: u64 = 1 << 33;
    pub const CREATE_SUPP_GROUP: u64 = 1 << 34;
    pub const HAS_EXPIRE_ONLY: u64 = 1 << 35;
    pub const DIRECT_IO_ALLOW_MMAP: u64 = 1 << 36;
    pub const PASSTHROUGH: u64 = 1 << 37;
    pub const NO_EXPORT_SUPPORT: u64 = 1 << 38;
    pub const HAS_RESEND: u64 = 1 << 39;
    pub const ALLOW_IDMAP: u64 = 1 << 40;
    pub const OVER_IO_URING: u64 = 1 << 41;
    pub const REQUEST_TIMEOUT: u64 = 1 << 42;
}

/// `fuse_setattr_in.valid` bits.
pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
    pub const LOCKOWNER: u32 = 1 << 9;
    pub const CTIME: u32 = 1 << 10;
    pub const KILL_SUIDGID: u32 = 1 << 11;
}

/// `fuse_open_out.open_flags` bits.
pub mod fopen {
    pub const DIRECT_IO: u32 = 1 << 0;
    pub const KEEP_CACHE: u32 = 1 << 1;
    pub const NONSEEKABLE: u32 = 1 << 2;
    pub const CACHE_DIR: u32 = 1 << 3;
    pub const STREAM: u32 = 1 << 4;
    pub const NOFLUSH: u32 = 1 << 5;
    pub const PARALLEL_DIRECT_WRITES: u32 = 1 << 6;
    pub const PASSTHROUGH: u32 = 1 << 7;
}

/// Miscellaneous request flag bits.
pub const GETATTR_FH: u32 = 1 << 0;
pub const RELEASE_FLUSH: u32 = 1 << 0;
pub const RELEASE_FLOCK_UNLOCK: u32 = 1 << 1;
pub const WRITE_CACHE: u32 = 1 << 0;
pub const WRITE_LOCKOWNER: u32 = 1 << 1;
pub const WRITE_KILL_SUIDGID: u32 = 1 << 2;
pub const READ_LOCKOWNER: u32 = 1 << 1;
pub const FSYNC_FDATASYNC: u32 = 1 << 0;
pub const OPEN_KILL_SUIDGID: u32 = 1 << 0;
pub const SETXATTR_ACL_KILL_SGID: u32 = 1 << 0;
/// `fuse_attr.flags`: the file should be mapped through the DAX window (`dax=inode`).
pub const ATTR_DAX: u32 = 1 << 1;
pub const SETUPMAPPING_FLAG_WRITE: u64 = 1 << 0;
pub const SETUPMAPPING_FLAG_READ: u64 = 1 << 1;
/// Set in `fuse_in_header.unique` when the kernel resends a request.
pub const UNIQUE_RESEND: u64 = 1 << 63;

/// `FUSE_DEV_IOC_CLONE`: `_IOR(229, 0, uint32_t)`.
pub const DEV_IOC_CLONE: u64 = (2 << 30) | (4 << 16) | (229 << 8);

/// A bounds-checked little-endian reader over a byte slice.
#[derive(Clone, Copy, Debug)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Cursor<'a> {
        Cursor { buf, pos: 0 }
    }

    /// The next `n` bytes, or `None` when fewer remain.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Some(a)
    }

    pub fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_le_bytes)
    }
    pub fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }
    pub fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }
    pub fn i32(&mut self) -> Option<i32> {
        self.array().map(i32::from_le_bytes)
    }
    pub fn i64(&mut self) -> Option<i64> {
        self.array().map(i64::from_le_bytes)
    }

    /// Everything not read yet.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos.min(self.buf.len())..]
    }
}

macro_rules! wire_struct {
    (
        $(#[$m:meta])*
        pub struct $name:ident { $( $(#[$fm:meta])* pub $field:ident : $ty:ident ),* $(,)? }
    ) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name { $( $(#[$fm])* pub $field: $ty ),* }

        impl $name {
            /// Size on the wire in bytes.
            pub const SIZE: usize = 0 $( + std::mem::size_of::<$ty>() )*;

            /// Read from the first `SIZE` bytes of `buf`.
            pub fn decode(buf: &[u8]) -> Option<$name> {
                let mut c = Cursor::new(buf);
                Some($name { $( $field: c.$ty()? ),* })
            }

            /// Append the wire form to `out`.
            pub fn encode(&self, out: &mut Vec<u8>) {
                $( out.extend_from_slice(&self.$field.to_le_bytes()); )*
            }
        }
    };
}

wire_struct! {
    /// `fuse_in_header`: starts every request.
    pub struct InHeader {
        pub len: u32,
        pub opcode: u32,
        pub unique: u64,
        pub nodeid: u64,
        pub uid: u32,
        pub gid: u32,
        pub pid: u32,
        /// Length of request extensions at the end of the message, in 8-byte units (7.38).
        pub total_extlen: u16,
        pub padding: u16,
    }
}

wire_struct! {
    /// `fuse_out_header`: starts every reply. `error` is 0 or a negative errno.
    pub struct OutHeader {
        pub len: u32,
        pub error: i32,
        pub unique: u64,
    }
}

wire_struct! {
    /// `fuse_attr`.
    pub struct FuseAttr {
        pub ino: u64,
        pub size: u64,
        pub blocks: u64,
        pub atime: u64,
        pub mtime: u64,
        pub ctime: u64,
        pub atimensec: u32,
        pub mtimensec: u32,
        pub ctimensec: u32,
        pub mode: u32,
        pub nlink: u32,
        pub uid: u32,
        pub gid: u32,
        pub rdev: u32,
        pub blksize: u32,
        pub flags: u32,
    }
}

/// `fuse_entry_out`: the reply to LOOKUP/MKNOD/MKDIR/SYMLINK/LINK/CREATE and the head of a
/// `fuse_direntplus`. `nodeid == 0` means "no entry" (a negative lookup, or no attributes in
/// READDIRPLUS).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryOut {
    pub nodeid: u64,
    pub generation: u64,
    pub entry_valid: u64,
    pub attr_valid: u64,
    pub entry_valid_nsec: u32,
    pub attr_valid_nsec: u32,
    pub attr: FuseAttr,
}

impl EntryOut {
    pub const SIZE: usize = 40 + FuseAttr::SIZE;

    pub fn decode(buf: &[u8]) -> Option<EntryOut> {
        let mut c = Cursor::new(buf);
        Some(EntryOut {
            nodeid: c.u64()?,
            generation: c.u64()?,
            entry_valid: c.u64()?,
            attr_valid: c.u64()?,
            entry_valid_nsec: c.u32()?,
            attr_valid_nsec: c.u32()?,
            attr: FuseAttr::decode(c.rest())?,
        })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        for v in [
            self.nodeid,
            self.generation,
            self.entry_valid,
            self.attr_valid,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.entry_valid_nsec.to_le_bytes());
        out.extend_from_slice(&self.attr_valid_nsec.to_le_bytes());
        self.attr.encode(out);
    }
}

/// `fuse_attr_out`: the reply to GETATTR/SETATTR.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttrOut {
    pub attr_valid: u64,
    pub attr_valid_nsec: u32,
    pub dummy: u32,
    pub attr: FuseAttr,
}

impl AttrOut {
    pub const SIZE: usize = 16 + FuseAttr::SIZE;

    pub fn decode(buf: &[u8]) -> Option<AttrOut> {
        let mut c = Cursor::new(buf);
        Some(AttrOut {
            attr_valid: c.u64()?,
            attr_valid_nsec: c.u32()?,
            dummy: c.u32()?,
            attr: FuseAttr::decode(c.rest())?,
        })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.attr_valid.to_le_bytes());
        out.extend_from_slice(&self.attr_valid_nsec.to_le_bytes());
        out.extend_from_slice(&self.dummy.to_le_bytes());
        self.attr.encode(out);
    }
}

wire_struct! {
    /// `fuse_sx_time` (statx timestamp).
    pub struct SxTime {
        pub tv_sec: i64,
        pub tv_nsec: u32,
        pub reserved: i32,
    }
}

/// `fuse_statx`: bit-for-bit `struct statx` (256 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FuseStatx {
    pub mask: u32,
    pub blksize: u32,
    pub attributes: u64,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub mode: u16,
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub attributes_mask: u64,
    pub atime: SxTime,
    pub btime: SxTime,
    pub ctime: SxTime,
    pub mtime: SxTime,
    pub rdev_major: u32,
    pub rdev_minor: u32,
    pub dev_major: u32,
    pub dev_minor: u32,
}

impl FuseStatx {
    pub const SIZE: usize = 256;

    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.mask.to_le_bytes());
        out.extend_from_slice(&self.blksize.to_le_bytes());
        out.extend_from_slice(&self.attributes.to_le_bytes());
        out.extend_from_slice(&self.nlink.to_le_bytes());
        out.extend_from_slice(&self.uid.to_le_bytes());
        out.extend_from_slice(&self.gid.to_le_bytes());
        out.extend_from_slice(&self.mode.to_le_bytes());
        out.extend_from_slice(&[0u8; 2]); // __spare0
        for v in [self.ino, self.size, self.blocks, self.attributes_mask] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for t in [self.atime, self.btime, self.ctime, self.mtime] {
            t.encode(out);
        }
        for v in [
            self.rdev_major,
            self.rdev_minor,
            self.dev_major,
            self.dev_minor,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        // __spare2[14]
        out.resize(start + Self::SIZE, 0);
    }
}

/// `fuse_statx_out`: the reply to STATX.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatxOut {
    pub attr_valid: u64,
    pub attr_valid_nsec: u32,
    pub flags: u32,
    pub stat: FuseStatx,
}

impl StatxOut {
    pub const SIZE: usize = 32 + FuseStatx::SIZE;

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.attr_valid.to_le_bytes());
        out.extend_from_slice(&self.attr_valid_nsec.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&[0u8; 16]); // spare[2]
        self.stat.encode(out);
    }
}

wire_struct! {
    /// `fuse_statx_in`.
    pub struct StatxIn {
        pub getattr_flags: u32,
        pub reserved: u32,
        pub fh: u64,
        pub sx_flags: u32,
        pub sx_mask: u32,
    }
}

/// `fuse_kstatfs` / `fuse_statfs_out` (80 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Kstatfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

impl Kstatfs {
    pub const SIZE: usize = 80;

    pub fn decode(buf: &[u8]) -> Option<Kstatfs> {
        if buf.len() < Self::SIZE {
            return None;
        }
        let mut c = Cursor::new(buf);
        Some(Kstatfs {
            blocks: c.u64()?,
            bfree: c.u64()?,
            bavail: c.u64()?,
            files: c.u64()?,
            ffree: c.u64()?,
            bsize: c.u32()?,
            namelen: c.u32()?,
            frsize: c.u32()?,
        })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        for v in [self.blocks, self.bfree, self.bavail, self.files, self.ffree] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in [self.bsize, self.namelen, self.frsize] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        // padding + spare[6]
        out.resize(start + Self::SIZE, 0);
    }
}

wire_struct! {
    /// `fuse_forget_in`.
    pub struct ForgetIn { pub nlookup: u64 }
}

wire_struct! {
    /// `fuse_forget_one`: one entry of a BATCH_FORGET.
    pub struct ForgetOne { pub nodeid: u64, pub nlookup: u64 }
}

wire_struct! {
    /// `fuse_batch_forget_in`: followed by `count` `fuse_forget_one`.
    pub struct BatchForgetIn { pub count: u32, pub dummy: u32 }
}

wire_struct! {
    /// `fuse_getattr_in`.
    pub struct GetattrIn { pub getattr_flags: u32, pub dummy: u32, pub fh: u64 }
}

wire_struct! {
    /// `fuse_mknod_in`: followed by the name.
    pub struct MknodIn { pub mode: u32, pub rdev: u32, pub umask: u32, pub padding: u32 }
}

wire_struct! {
    /// `fuse_mkdir_in`: followed by the name.
    pub struct MkdirIn { pub mode: u32, pub umask: u32 }
}

wire_struct! {
    /// `fuse_rename_in`: followed by the old and the new name.
    pub struct RenameIn { pub newdir: u64 }
}

wire_struct! {
    /// `fuse_rename2_in`: followed by the old and the new name.
    pub struct Rename2In { pub newdir: u64, pub flags: u32, pub padding: u32 }
}

wire_struct! {
    /// `fuse_link_in`: followed by the new name.
    pub struct LinkIn { pub oldnodeid: u64 }
}

wire_struct! {
    /// `fuse_setattr_in`.
    pub struct SetattrIn {
        pub valid: u32,
        pub padding: u32,
        pub fh: u64,
        pub size: u64,
        pub lock_owner: u64,
        pub atime: u64,
        pub mtime: u64,
        pub ctime: u64,
        pub atimensec: u32,
        pub mtimensec: u32,
        pub ctimensec: u32,
        pub mode: u32,
        pub unused4: u32,
        pub uid: u32,
        pub gid: u32,
        pub unused5: u32,
    }
}

wire_struct! {
    /// `fuse_open_in` (OPEN and OPENDIR).
    pub struct OpenIn { pub flags: u32, pub open_flags: u32 }
}

wire_struct! {
    /// `fuse_create_in` (CREATE and TMPFILE): followed by the name.
    pub struct CreateIn { pub flags: u32, pub mode: u32, pub umask: u32, pub open_flags: u32 }
}

wire_struct! {
    /// `fuse_open_out`.
    pub struct OpenOut { pub fh: u64, pub open_flags: u32, pub backing_id: i32 }
}

wire_struct! {
    /// `fuse_release_in` (RELEASE and RELEASEDIR).
    pub struct ReleaseIn { pub fh: u64, pub flags: u32, pub release_flags: u32, pub lock_owner: u64 }
}

wire_struct! {
    /// `fuse_flush_in`.
    pub struct FlushIn { pub fh: u64, pub unused: u32, pub padding: u32, pub lock_owner: u64 }
}

wire_struct! {
    /// `fuse_read_in` (READ, READDIR, READDIRPLUS).
    pub struct ReadIn {
        pub fh: u64,
        pub offset: u64,
        pub size: u32,
        pub read_flags: u32,
        pub lock_owner: u64,
        pub flags: u32,
        pub padding: u32,
    }
}

wire_struct! {
    /// `fuse_write_in`: followed by `size` bytes of data.
    pub struct WriteIn {
        pub fh: u64,
        pub offset: u64,
        pub size: u32,
        pub write_flags: u32,
        pub lock_owner: u64,
        pub flags: u32,
        pub padding: u32,
    }
}

wire_struct! {
    /// `fuse_write_out`.
    pub struct WriteOut { pub size: u32, pub padding: u32 }
}

wire_struct! {
    /// `fuse_fsync_in` (FSYNC and FSYNCDIR).
    pub struct FsyncIn { pub fh: u64, pub fsync_flags: u32, pub padding: u32 }
}

wire_struct! {
    /// `fuse_setxattr_in` as sent when `FUSE_SETXATTR_EXT` was negotiated.
    pub struct SetxattrIn { pub size: u32, pub flags: u32, pub setxattr_flags: u32, pub padding: u32 }
}

/// The size of `fuse_setxattr_in` without `FUSE_SETXATTR_EXT` (only `size` and `flags`).
pub const COMPAT_SETXATTR_IN_SIZE: usize = 8;

wire_struct! {
    /// `fuse_getxattr_in` (GETXATTR: followed by the name; LISTXATTR).
    pub struct GetxattrIn { pub size: u32, pub padding: u32 }
}

wire_struct! {
    /// `fuse_getxattr_out`: the needed size, when the request's size was 0.
    pub struct GetxattrOut { pub size: u32, pub padding: u32 }
}

wire_struct! {
    /// `fuse_file_lock`.
    pub struct FileLock { pub start: u64, pub end: u64, pub typ: u32, pub pid: u32 }
}

/// `fuse_lk_in` (GETLK, SETLK, SETLKW).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LkIn {
    pub fh: u64,
    pub owner: u64,
    pub lk: FileLock,
    pub lk_flags: u32,
}

impl LkIn {
    pub const SIZE: usize = 16 + FileLock::SIZE + 8;

    pub fn decode(buf: &[u8]) -> Option<LkIn> {
        let mut c = Cursor::new(buf);
        let fh = c.u64()?;
        let owner = c.u64()?;
        let lk = FileLock::decode(c.take(FileLock::SIZE)?)?;
        let lk_flags = c.u32()?;
        c.u32()?;
        Some(LkIn {
            fh,
            owner,
            lk,
            lk_flags,
        })
    }
}

wire_struct! {
    /// `fuse_access_in`.
    pub struct AccessIn { pub mask: u32, pub padding: u32 }
}

/// `fuse_init_in`. Kernels before 7.36 send only the first 16 bytes; `flags2` is meaningful only
/// when `flags` has `INIT_EXT`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InitIn {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    /// `flags | flags2 << 32` (flags2 only when INIT_EXT was set and sent).
    pub flags: u64,
}

impl InitIn {
    /// The size of the pre-7.36 structure, the least we accept.
    pub const MIN_SIZE: usize = 16;
    /// The size of the 7.36+ structure.
    pub const SIZE: usize = 64;

    pub fn decode(buf: &[u8]) -> Option<InitIn> {
        let mut c = Cursor::new(buf);
        let major = c.u32()?;
        let minor = c.u32()?;
        let max_readahead = c.u32()?;
        let mut flags = u64::from(c.u32()?);
        if flags & init_flags::INIT_EXT != 0
            && let Some(flags2) = c.u32()
        {
            flags |= u64::from(flags2) << 32;
        }
        Some(InitIn {
            major,
            minor,
            max_readahead,
            flags,
        })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        for v in [
            self.major,
            self.minor,
            self.max_readahead,
            self.flags as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&((self.flags >> 32) as u32).to_le_bytes());
        out.resize(start + Self::SIZE, 0);
    }
}

/// `fuse_init_out` (64 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InitOut {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    /// `flags | flags2 << 32`.
    pub flags: u64,
    pub max_background: u16,
    pub congestion_threshold: u16,
    pub max_write: u32,
    pub time_gran: u32,
    pub max_pages: u16,
    pub map_alignment: u16,
    pub max_stack_depth: u32,
    pub request_timeout: u16,
}

impl InitOut {
    pub const SIZE: usize = 64;
    /// What a pre-7.23 kernel expects.
    pub const COMPAT_22_SIZE: usize = 24;
    /// The reply to an INIT with a major version we do not speak: `major`, `minor` only.
    pub const COMPAT_SIZE: usize = 8;

    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        for v in [
            self.major,
            self.minor,
            self.max_readahead,
            self.flags as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.max_background.to_le_bytes());
        out.extend_from_slice(&self.congestion_threshold.to_le_bytes());
        out.extend_from_slice(&self.max_write.to_le_bytes());
        out.extend_from_slice(&self.time_gran.to_le_bytes());
        out.extend_from_slice(&self.max_pages.to_le_bytes());
        out.extend_from_slice(&self.map_alignment.to_le_bytes());
        out.extend_from_slice(&((self.flags >> 32) as u32).to_le_bytes());
        out.extend_from_slice(&self.max_stack_depth.to_le_bytes());
        out.extend_from_slice(&self.request_timeout.to_le_bytes());
        out.resize(start + Self::SIZE, 0);
    }

    pub fn decode(buf: &[u8]) -> Option<InitOut> {
        if buf.len() < Self::SIZE {
            return None;
        }
        let mut c = Cursor::new(buf);
        let major = c.u32()?;
        let minor = c.u32()?;
        let max_readahead = c.u32()?;
        let flags_lo = c.u32()?;
        let max_background = c.u16()?;
        let congestion_threshold = c.u16()?;
        let max_write = c.u32()?;
        let time_gran = c.u32()?;
        let max_pages = c.u16()?;
        let map_alignment = c.u16()?;
        let flags_hi = c.u32()?;
        let max_stack_depth = c.u32()?;
        let request_timeout = c.u16()?;
        Some(InitOut {
            major,
            minor,
            max_readahead,
            flags: u64::from(flags_lo) | u64::from(flags_hi) << 32,
            max_background,
            congestion_threshold,
            max_write,
            time_gran,
            max_pages,
            map_alignment,
            max_stack_depth,
            request_timeout,
        })
    }
}

wire_struct! {
    /// `fuse_interrupt_in`.
    pub struct InterruptIn { pub unique: u64 }
}

wire_struct! {
    /// `fuse_bmap_in`.
    pub struct BmapIn { pub block: u64, pub blocksize: u32, pub padding: u32 }
}

wire_struct! {
    /// `fuse_ioctl_in`: followed by `in_size` bytes.
    pub struct IoctlIn {
        pub fh: u64,
        pub flags: u32,
        pub cmd: u32,
        pub arg: u64,
        pub in_size: u32,
        pub out_size: u32,
    }
}

wire_struct! {
    /// `fuse_poll_in`.
    pub struct PollIn { pub fh: u64, pub kh: u64, pub flags: u32, pub events: u32 }
}

wire_struct! {
    /// `fuse_notify_retrieve_in`: the head of a NOTIFY_REPLY, followed by `size` bytes.
    pub struct NotifyRetrieveIn {
        pub dummy1: u64,
        pub offset: u64,
        pub size: u32,
        pub dummy2: u32,
        pub dummy3: u64,
        pub dummy4: u64,
    }
}

wire_struct! {
    /// `fuse_fallocate_in`.
    pub struct FallocateIn {
        pub fh: u64,
        pub offset: u64,
        pub length: u64,
        pub mode: u32,
        pub padding: u32,
    }
}

wire_struct! {
    /// `fuse_lseek_in`.
    pub struct LseekIn { pub fh: u64, pub offset: u64, pub whence: u32, pub padding: u32 }
}

wire_struct! {
    /// `fuse_lseek_out`.
    pub struct LseekOut { pub offset: u64 }
}

wire_struct! {
    /// `fuse_copy_file_range_in` (COPY_FILE_RANGE and COPY_FILE_RANGE_64).
    pub struct CopyFileRangeIn {
        pub fh_in: u64,
        pub off_in: u64,
        pub nodeid_out: u64,
        pub fh_out: u64,
        pub off_out: u64,
        pub len: u64,
        pub flags: u64,
    }
}

wire_struct! {
    /// `fuse_copy_file_range_out` (reply to COPY_FILE_RANGE_64).
    pub struct CopyFileRangeOut { pub bytes_copied: u64 }
}

wire_struct! {
    /// `fuse_setupmapping_in` (DAX window).
    pub struct SetupmappingIn {
        pub fh: u64,
        pub foffset: u64,
        pub len: u64,
        pub flags: u64,
        pub moffset: u64,
    }
}

wire_struct! {
    /// `fuse_removemapping_in`: 4 bytes, followed by `count` `fuse_removemapping_one`.
    pub struct RemovemappingIn { pub count: u32 }
}

wire_struct! {
    /// `fuse_removemapping_one`.
    pub struct RemovemappingOne { pub moffset: u64, pub len: u64 }
}

wire_struct! {
    /// `fuse_syncfs_in`.
    pub struct SyncfsIn { pub padding: u64 }
}

wire_struct! {
    /// `fuse_dirent` header: followed by `namelen` bytes of name, padded to 8 bytes.
    pub struct DirentHead { pub ino: u64, pub off: u64, pub namelen: u32, pub typ: u32 }
}

/// Round a record length up to the 8-byte alignment of dirent records.
pub const fn rec_align(x: usize) -> usize {
    (x + 7) & !7
}

/// Size of a `fuse_dirent` record with a name of `namelen` bytes.
pub const fn dirent_size(namelen: usize) -> usize {
    rec_align(DirentHead::SIZE + namelen)
}

/// Size of a `fuse_direntplus` record with a name of `namelen` bytes.
pub const fn direntplus_size(namelen: usize) -> usize {
    rec_align(EntryOut::SIZE + DirentHead::SIZE + namelen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_kernel_header() {
        assert_eq!(InHeader::SIZE, 40);
        assert_eq!(OutHeader::SIZE, 16);
        assert_eq!(FuseAttr::SIZE, 88);
        assert_eq!(EntryOut::SIZE, 128);
        assert_eq!(AttrOut::SIZE, 104);
        assert_eq!(SxTime::SIZE, 16);
        assert_eq!(StatxIn::SIZE, 24);
        assert_eq!(StatxOut::SIZE, 288);
        assert_eq!(Kstatfs::SIZE, 80);
        assert_eq!(ForgetIn::SIZE, 8);
        assert_eq!(ForgetOne::SIZE, 16);
        assert_eq!(BatchForgetIn::SIZE, 8);
        assert_eq!(GetattrIn::SIZE, 16);
        assert_eq!(MknodIn::SIZE, 16);
        assert_eq!(MkdirIn::SIZE, 8);
        assert_eq!(RenameIn::SIZE, 8);
        assert_eq!(Rename2In::SIZE, 16);
        assert_eq!(LinkIn::SIZE, 8);
        assert_eq!(SetattrIn::SIZE, 88);
        assert_eq!(OpenIn::SIZE, 8);
        assert_eq!(CreateIn::SIZE, 16);
        assert_eq!(OpenOut::SIZE, 16);
        assert_eq!(ReleaseIn::SIZE, 24);
        assert_eq!(FlushIn::SIZE, 24);
        assert_eq!(ReadIn::SIZE, 40);
        assert_eq!(WriteIn::SIZE, 40);
        assert_eq!(WriteOut::SIZE, 8);
        assert_eq!(FsyncIn::SIZE, 16);
        assert_eq!(SetxattrIn::SIZE, 16);
        assert_eq!(GetxattrIn::SIZE, 8);
        assert_eq!(GetxattrOut::SIZE, 8);
        assert_eq!(FileLock::SIZE, 24);
        assert_eq!(LkIn::SIZE, 48);
        assert_eq!(AccessIn::SIZE, 8);
        assert_eq!(InterruptIn::SIZE, 8);
        assert_eq!(BmapIn::SIZE, 16);
        assert_eq!(IoctlIn::SIZE, 32);
        assert_eq!(PollIn::SIZE, 24);
        assert_eq!(NotifyRetrieveIn::SIZE, 40);
        assert_eq!(FallocateIn::SIZE, 32);
        assert_eq!(LseekIn::SIZE, 24);
        assert_eq!(LseekOut::SIZE, 8);
        assert_eq!(CopyFileRangeIn::SIZE, 56);
        assert_eq!(SetupmappingIn::SIZE, 40);
        assert_eq!(RemovemappingIn::SIZE, 4);
        assert_eq!(RemovemappingOne::SIZE, 16);
        assert_eq!(SyncfsIn::SIZE, 8);
        assert_eq!(DirentHead::SIZE, 24);
    }

    #[test]
    fn encoded_lengths_equal_sizes() {
        let mut v = Vec::new();
        EntryOut::default().encode(&mut v);
        assert_eq!(v.len(), EntryOut::SIZE);
        v.clear();
        AttrOut::default().encode(&mut v);
        assert_eq!(v.len(), AttrOut::SIZE);
        v.clear();
        StatxOut::default().encode(&mut v);
        assert_eq!(v.len(), StatxOut::SIZE);
        v.clear();
        Kstatfs::default().encode(&mut v);
        assert_eq!(v.len(), Kstatfs::SIZE);
        v.clear();
        InitOut::default().encode(&mut v);
        assert_eq!(v.len(), InitOut::SIZE);
        v.clear();
        InitIn::default().encode(&mut v);
        assert_eq!(v.len(), InitIn::SIZE);
    }

    #[test]
    fn round_trips_and_field_offsets() {
        let h = InHeader {
            len: 0x11223344,
            opcode: 26,
            unique: 0x0102030405060708,
            nodeid: 1,
            uid: 1000,
            gid: 1001,
            pid: 42,
            total_extlen: 3,
            padding: 0,
        };
        let mut v = Vec::new();
        h.encode(&mut v);
        assert_eq!(&v[0..4], &0x11223344u32.to_le_bytes());
        assert_eq!(&v[8..16], &0x0102030405060708u64.to_le_bytes());
        assert_eq!(&v[36..38], &3u16.to_le_bytes());
        assert_eq!(InHeader::decode(&v), Some(h));
        assert_eq!(InHeader::decode(&v[..39]), None);

        let o = InitOut {
            major: 7,
            minor: 41,
            max_readahead: 1 << 17,
            flags: init_flags::ASYNC_READ | init_flags::INIT_EXT | init_flags::HAS_RESEND,
            max_background: 64,
            congestion_threshold: 48,
            max_write: 1 << 20,
            time_gran: 1,
            max_pages: 256,
            map_alignment: 12,
            max_stack_depth: 0,
            request_timeout: 0,
        };
        v.clear();
        o.encode(&mut v);
        // max_write at 20, max_pages at 28, flags2 at 32.
        assert_eq!(&v[20..24], &(1u32 << 20).to_le_bytes());
        assert_eq!(&v[28..30], &256u16.to_le_bytes());
        assert_eq!(
            &v[32..36],
            &((init_flags::HAS_RESEND >> 32) as u32).to_le_bytes()
        );
        assert_eq!(InitOut::decode(&v), Some(o));

        let i = InitIn {
            major: 7,
            minor: 44,
            max_readahead: 4096,
            flags: init_flags::INIT_EXT | init_flags::SECURITY_CTX,
        };
        v.clear();
        i.encode(&mut v);
        assert_eq!(InitIn::decode(&v), Some(i));
        // Without INIT_EXT the flags2 word is ignored.
        let mut w = v.clone();
        w[12..16].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(InitIn::decode(&w).unwrap().flags, 0);
        assert_eq!(InitIn::decode(&v[..15]), None);
    }

    #[test]
    fn dirent_sizes_are_aligned() {
        assert_eq!(dirent_size(0), 24);
        assert_eq!(dirent_size(1), 32);
        assert_eq!(dirent_size(8), 32);
        assert_eq!(dirent_size(9), 40);
        assert_eq!(direntplus_size(1), 160);
        assert_eq!(direntplus_size(8), 160);
        assert_eq!(direntplus_size(255), rec_align(152 + 255));
    }

    #[test]
    fn ioctl_clone_number() {
        assert_eq!(DEV_IOC_CLONE, 0x8004_e500);
    }

    #[test]
    fn cursor_never_reads_past_the_end() {
        let b = [1u8, 2, 3];
        let mut c = Cursor::new(&b);
        assert_eq!(c.u16(), Some(0x0201));
        assert_eq!(c.u16(), None);
        assert_eq!(c.rest(), &[3]);
        assert_eq!(c.take(usize::MAX), None);
        assert_eq!(c.take(1), Some(&[3u8][..]));
        assert_eq!(c.take(1), None);
    }
}
