//! vhost-ext4: an ext4 engine in userspace, served to VMs over vhost-user-fs / vhost-user-blk and to
//! the host over FUSE. Layers, bottom-up: blockdev / ondisk / cache / pagecache / iomap → alloc / extent /
//! journal → volume → inode → fs → fuse → vhost.

pub mod alloc;
pub mod blockdev;
pub mod cache;
pub mod errno;
pub mod extent;
pub mod fs;
pub mod fuse;
pub mod inode;
pub mod iomap;
pub mod journal;
pub mod ondisk;
pub mod pagecache;
#[cfg(test)]
mod test_support;
pub mod vhost;
pub mod volume;
