//! Inodes on disk and their block maps: reading and storing inodes (with checksums), mapping
//! logical blocks through extent trees and ext3-style indirect maps (`bmap`, `indirect`), and
//! allocating, freeing and truncating a file's blocks (`blocks`). All of it works on the shared
//! [`Volume`](crate::volume::Volume); nothing here knows FUSE or the page cache.

pub(crate) mod blocks;
pub(crate) mod bmap;
pub(crate) mod indirect;
pub(crate) mod iomap_ops;
pub(crate) mod journal_map;
pub(crate) mod read;
pub(crate) mod truncate_steps;

#[cfg(test)]
mod indirect_tests;
