//! The extent tree of an inode: modification (insert with merge, remove range with splits, depth
//! growth and shrink, index keys kept equal to their child's first block), and the per-inode
//! extent status tree (`status`): written / unwritten / delayed / hole ranges in memory, which is
//! also the read path's mapping cache.
//!
//! Reads go through `fs::bmap`; this module only changes trees. Node blocks are read and written
//! through `ExtentIo`, which verifies and sets the per-inode checksums and joins the transaction.

pub mod status;
mod tree;

pub use status::{ExtentStatusCache, MapRoot, Status, StatusTree};
pub use tree::{ExtentIo, ExtentTree};
