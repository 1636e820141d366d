//! Every on-disk structure as plain little-endian data, and metadata checksums. No I/O here.

pub mod acl;
pub mod csum;
pub mod dirent;
pub mod extent;
pub mod group;
pub mod htree;
pub mod inode;
pub mod jbd2;
pub mod le;
pub mod superblock;
pub mod xattr;
