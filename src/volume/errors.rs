//! The superblock's error policy (`s_errors`): what the file system does when an operation finds
//! corrupt metadata (`EUCLEAN`). As in the kernel, the error is counted and timed in the
//! superblock and the state gains "errors" (so e2fsck checks it at the next boot); then
//! `errors=continue` carries on, while `errors=remount-ro` (and `panic`, which a daemon serving
//! guests must not do) writes that superblock home at once and aborts the journal: the file
//! system turns read-only, and everything committed before stays.
//!
//! Lock order: the commit lock (taken by the abort path) → `sb_live`.

use super::{Volume, now};
use crate::errno::Errno;
use crate::ondisk::le::{put_u32, u32_at};
use crate::ondisk::superblock::Superblock;

/// `s_state` bit: errors were detected.
pub(crate) const STATE_ERROR: u16 = 0x2;
/// `s_errors` values (1 is continue).
const ERRORS_RO: u16 = 2;
const ERRORS_PANIC: u16 = 3;

/// Superblock fields kept up to date in memory and written at each commit.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SbLive {
    pub last_orphan: u32,
    /// The file system has (had) errors: `s_state` keeps STATE_ERROR until e2fsck clears it.
    pub error_fs: bool,
    /// Errors found since the superblock was last written.
    pub new_errors: u32,
}

impl SbLive {
    pub(crate) fn new(sb: &Superblock) -> SbLive {
        SbLive {
            last_orphan: sb.last_orphan,
            error_fs: sb.state & STATE_ERROR != 0,
            new_errors: 0,
        }
    }

    /// Count the errors found since the last write into the superblock bytes `sb` (1,024 bytes):
    /// `s_error_count`, first and last error times.
    pub(crate) fn stamp_errors(&mut self, sb: &mut [u8]) {
        if self.new_errors == 0 {
            return;
        }
        let t = now().0 as u32;
        put_u32(sb, 0x194, u32_at(sb, 0x194).saturating_add(self.new_errors));
        if u32_at(sb, 0x198) == 0 {
            put_u32(sb, 0x198, t);
        }
        put_u32(sb, 0x1CC, t);
        self.new_errors = 0;
    }
}

impl Volume {
    /// Report an error an operation returned to its client. Corruption (`EUCLEAN`) is recorded in
    /// the superblock and handled as `s_errors` says; other errors are the client's business.
    pub fn note_error(&self, e: Errno) {
        if e != Errno::EUCLEAN || self.is_read_only() {
            return;
        }
        {
            let mut live = self.sb_live.lock().unwrap_or_else(|e| e.into_inner());
            live.error_fs = true;
            live.new_errors += 1;
        }
        match self.sb.errors {
            ERRORS_RO | ERRORS_PANIC => {
                log::error!(
                    "ext4 error: corrupt metadata found; remounting read-only (errors={})",
                    if self.sb.errors == ERRORS_RO {
                        "remount-ro"
                    } else {
                        "panic, served as remount-ro"
                    }
                );
                self.error_remount_ro();
            }
            _ => {
                // ERRORS_CONTINUE, and unknown values as the kernel treats them.
                log::warn!(
                    "ext4 error: corrupt metadata found; recorded in the superblock, continuing (errors=continue)"
                );
            }
        }
    }
}
