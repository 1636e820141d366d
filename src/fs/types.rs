//! Plain types of the operation API: what `fs` hands to the FUSE layer.

/// An ext4 inode number (FUSE node ids map onto these: FUSE root 1 is ext4 inode 2).
pub use crate::volume::Ino;
/// The error policies (`errors=`, `data_err=`).
pub use crate::volume::{DataErr, OnError};

/// The root directory's ext4 inode number.
pub const ROOT_INO: Ino = 2;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: u32,
}

/// File attributes as `stat(2)` reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub size: u64,
    /// 512-byte units, as `st_blocks`.
    pub blocks: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub crtime: Timespec,
    /// File type and permission bits (`S_IFMT | 07777`).
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    /// Device number for char/block nodes, in the kernel's `new_encode_dev` form.
    pub rdev: u32,
    pub blksize: u32,
    pub generation: u32,
    /// The inode's DAX flag (`chattr +x`): a guest mounted with `dax=inode` maps it through
    /// the DAX window.
    pub dax: bool,
}

/// One directory entry as readdir returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: Ino,
    /// The cookie that resumes the listing just after this entry.
    pub next_off: u64,
    /// `DT_*` type (`DT_UNKNOWN` when the directory has no file types).
    pub kind: u8,
    pub name: Vec<u8>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// Who is asking: the caller's credentials, for permission checks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// Permission bits a create clears when the directory has no default ACL (FUSE
    /// `DONT_MASK`: the daemon applies the umask); 0 when the caller applied it already.
    pub umask: u32,
}

/// `lseek` whence values the file system answers itself.
pub const SEEK_DATA: u32 = 3;
pub const SEEK_HOLE: u32 = 4;

/// Options that change how an image is mounted.
#[derive(Clone, Debug, Default)]
pub struct MountOptions {
    /// Serve the image read-only even when it could be written.
    pub read_only: bool,
    /// `errors=`: what finding corrupt metadata does; `None` = the superblock's `s_errors`.
    pub errors: Option<OnError>,
    /// `data_err=`: what a failed write of file data does.
    pub data_err: DataErr,
}

impl MountOptions {
    /// Read-write (when the image allows it), with the default policies.
    pub fn rw() -> MountOptions {
        MountOptions::default()
    }

    /// Read-only, with the default policies.
    pub fn ro() -> MountOptions {
        MountOptions {
            read_only: true,
            ..MountOptions::default()
        }
    }

    /// Take one ext4 mount option word (`key` or `key=value`): `errors=continue|remount-ro|panic`
    /// and `data_err=ignore|abort`. Returns `Ok(false)` for a word that is not one of them.
    pub fn apply_ext4_option(&mut self, key: &str, value: Option<&str>) -> Result<bool, String> {
        match (key, value) {
            ("errors", Some(v)) => self.errors = Some(v.parse()?),
            ("data_err", Some(v)) => self.data_err = v.parse()?,
            ("errors" | "data_err", None) => {
                return Err(format!("mount option {key} needs a value"));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// A time to set: the current time or a given one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSet {
    Now,
    At(Timespec),
}

/// Attribute changes (`setattr`); `None` leaves a field alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    pub ctime: Option<Timespec>,
}

/// `renameat2` flags.
pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;
pub const RENAME_WHITEOUT: u32 = 4;
