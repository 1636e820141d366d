//! The extent tree of an inode: modification (insert with merge, remove range with splits, depth
//! growth and shrink, index keys kept equal to their child's first block).
//!
//! Reads go through `fs::bmap`; this module only changes trees. Node blocks are read and written
//! through `ExtentIo`, which verifies and sets the per-inode checksums and joins the transaction.

mod tree;

pub use tree::{ExtentIo, ExtentTree};
