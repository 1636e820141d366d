//! Every on-disk structure as plain little-endian data, and metadata checksums. No I/O here.

pub mod csum;
pub mod htree;
pub mod le;
pub mod xattr;
