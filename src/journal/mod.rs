//! The jbd2-compatible write-ahead log of the file system's internal journal (inode 8 usually).
//!
//! The on-disk format — superblock, descriptor/commit/revoke blocks, tags, checksums, and the
//! builders for every block the log holds — lives in [`crate::ondisk::jbd2`]; this layer does
//! the I/O and the protocol on top of it. It knows nothing about files or directories: it sees
//! numbered metadata blocks only.
//!
//! What is here now:
//!
//! * [`area`]: the journal's blocks mapped onto the device (journal block *i* → the physical
//!   fs block the journal inode maps at *i*), with superblock loading and validation.
//! * [`recovery`]: replay at mount, as the kernel and e2fsck do it (scan, revoke, replay; then
//!   the journal superblock is reset).
//!
//! What moves in next (today the engine commits through `fs::journal`, one transaction at a
//! time, always from `s_first`):
//!
//! * `handle.rs` — handles with credits: an operation reserves the blocks it may dirty before it
//!   starts, and joins the running transaction.
//! * `transaction.rs` — the running and the committing transaction, their buffer lists, and
//!   the rules for joining one while the other commits.
//! * `commit.rs` — the commit thread: descriptors, data, revoke blocks and the commit block
//!   written with the [`crate::ondisk::jbd2`] builders, flushes in the order that makes a
//!   transaction atomic, periodic and forced commits.
//! * `checkpoint.rs` — writing committed blocks home, advancing `s_start`/`s_sequence`, and
//!   letting the log wrap around the ring.
//! * `revoke.rs` — the revoke table: a metadata block freed and reused as data must not be
//!   replayed from an older transaction, so its freeing emits a revoke record.
//! * abort: a journal I/O error aborts the journal (`s_errno`), and the file system goes
//!   read-only.

pub mod area;
pub mod commit;
pub mod recovery;
