//! Turning an inode into the `Attr` the FUSE layer answers with.

use super::Fs;
use super::types::{Attr, Ino, Timespec};
use crate::ondisk::inode::{self, Inode, flags};
use crate::ondisk::superblock::ro_compat;

impl Fs {
    pub(super) fn attr_of(&self, ino: Ino, i: &Inode) -> Attr {
        let ts = |t: (i64, u32)| Timespec {
            sec: t.0,
            nsec: t.1,
        };
        let mut blocks = i.blocks_512(self.sb.has_ro_compat(ro_compat::HUGE_FILE), self.block_size);
        if i.has_flag(flags::INLINE_DATA) && i.is_reg() {
            // As the kernel does for regular files: report the inline bytes so tools do not think
            // the file is sparse.
            blocks += i.size.div_ceil(512);
        }
        if i.is_reg() {
            // Delayed blocks count as the kernel counts them: the data is the file's already.
            blocks += self.es.delayed_blocks(ino) * (self.block_size as u64 / 512);
        }
        let ft = i.file_type();
        Attr {
            ino,
            size: i.size,
            blocks,
            atime: ts(i.atime),
            mtime: ts(i.mtime),
            ctime: ts(i.ctime),
            crtime: ts(i.crtime),
            mode: i.mode as u32,
            nlink: i.links_count as u32,
            uid: i.uid,
            gid: i.gid,
            rdev: if ft == inode::S_IFCHR || ft == inode::S_IFBLK {
                i.rdev()
            } else {
                0
            },
            blksize: self.block_size,
            generation: i.generation,
            dax: i.has_flag(flags::DAX),
        }
    }
}
