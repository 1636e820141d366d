//! The generic data path, as the kernel's fs/iomap: buffered read with readahead (`read`),
//! buffered write (`write`), zeroing of partial blocks (`zero`), writeback (`writeback`) and its
//! I/O completion (`ioend`), SEEK_DATA / SEEK_HOLE over the cache and the block map (`seek`), page_mkwrite for
//! window mappings (`mkwrite`), over one file's page-cache state (`file`). It knows the page cache
//! and the block device, never ext4: a file system describes a file's blocks with one vocabulary,
//! [`Mapping`] / [`Status`] (`mapping`), and implements the ops traits the loops call —
//! [`IomapOps`] for reads, [`WriteOps`] for buffered writes,
//! [`WritebackOps`] for writeback and completion (all in `ops`) (ext4's are in
//! `inode::iomap_ops`).

pub mod file;
pub mod ioend;
pub mod mapping;
pub mod mkwrite;
pub mod ops;
pub mod read;
pub mod seek;
pub mod write;
pub mod writeback;
pub mod zero;

pub use file::{FileIo, InodeData, Sizes};
pub use mapping::{Mapping, Status};
pub use ops::{IomapOps, WbMap, WriteOps, WritebackOps};
pub use read::ReadSink;
pub use write::WriteSource;
