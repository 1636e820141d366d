//! The jbd2-compatible write-ahead log of the file system's internal journal (inode 8 usually).
//!
//! The on-disk format — superblock, descriptor/commit/revoke blocks, tags, checksums, and the
//! builders for every block the log holds — lives in [`crate::ondisk::jbd2`]; this layer does
//! the I/O and the protocol on top of it. It knows nothing about files or directories: it sees
//! numbered metadata blocks only.
//!
//! What is here:
//!
//! * [`area`]: the journal's blocks mapped onto the device (journal block *i* → the physical
//!   fs block the journal inode maps at *i*), with superblock loading and validation.
//! * [`ring`]: the log ring — where the next transaction goes, which blocks live transactions
//!   hold, wrap-around from the end of the ring to `s_first`.
//! * [`commit`]: the writer — descriptors (escaped images), revoke blocks for freed blocks that a
//!   live transaction logged, the commit block, flushes in the order that makes a transaction
//!   atomic; `checkpoint_done` empties the log once the file system wrote the blocks home;
//!   `record_error` writes `s_errno` when the journal aborts.
//! * [`recovery`]: replay at mount, as the kernel and e2fsck do it (scan, revoke, replay; then
//!   the journal superblock is reset).
//!
//! * [`handle`]: jbd2-style handles — operations join the running transaction (counted in its
//!   `t_updates`, credits reserved), and a commit locks it against new handles and waits for the
//!   open ones to end before it freezes it.
//!
//! The running/committing transactions, checkpoint scheduling and the commit thread live with
//! the buffer cache in `volume::commit`: the running transaction *is* the buffer cache's set of
//! dirty blocks, frozen at commit while the next one starts.

pub mod area;
pub mod commit;
pub mod handle;
pub mod recovery;
pub mod ring;
