//! vhost-ext4: an ext4 engine in userspace, served to VMs over vhost-user-fs / vhost-user-blk and to
//! the host over FUSE. Layers, bottom-up: blockdev → ondisk → cache → fs → fuse → vhost.

pub mod blockdev;
pub mod errno;
pub mod fs;
pub mod fuse;
pub mod ondisk;
