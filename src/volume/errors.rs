//! The error policies. `errors=` (the superblock's `s_errors` unless the mount says otherwise):
//! what the file system does when an operation finds corrupt metadata (`EUCLEAN`). As in the
//! kernel, the error is counted and timed in the superblock and the state gains "errors" (so
//! e2fsck checks it at the next boot); then `errors=continue` carries on, while
//! `errors=remount-ro` (and `panic`, which a daemon serving guests must not do) writes that
//! superblock home at once and aborts the journal: the file system turns read-only, and
//! everything committed before stays.
//!
//! `data_err=`: what a failed write of file data does. `ignore` (the default, as the kernel's):
//! the failure is logged with the inode and range, that data is lost, and the file's next fsync
//! answers EIO. `abort`: the journal aborts as well, before the transaction that would
//! record the lost blocks as written can commit; the file system turns read-only.
//!
//! Lock order: the commit lock (taken by the abort path) → `sb_live`.

use super::{Ino, Volume, now};
use crate::errno::Errno;
use crate::ondisk::le::{put_u32, u32_at};
use crate::ondisk::superblock::Superblock;

/// `s_state` bit: errors were detected.
pub(crate) const STATE_ERROR: u16 = 0x2;
/// `s_errors` values (1 is continue).
const ERRORS_RO: u16 = 2;
const ERRORS_PANIC: u16 = 3;

/// `errors=`: what finding corrupt metadata does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    /// Record it in the superblock and carry on.
    Continue,
    /// Record it and turn read-only (abort the journal).
    RemountRo,
    /// The kernel panics; a daemon serving guests turns read-only instead.
    Panic,
}

impl OnError {
    /// The superblock's default (`s_errors`); unknown values continue, as in the kernel.
    pub(crate) fn from_superblock(v: u16) -> OnError {
        match v {
            ERRORS_RO => OnError::RemountRo,
            ERRORS_PANIC => OnError::Panic,
            _ => OnError::Continue,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            OnError::Continue => "continue",
            OnError::RemountRo => "remount-ro",
            OnError::Panic => "panic",
        }
    }
}

impl std::str::FromStr for OnError {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<OnError, String> {
        [OnError::Continue, OnError::RemountRo, OnError::Panic]
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("errors={s}: expected continue, remount-ro or panic"))
    }
}

/// `data_err=`: what a failed write of file data does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DataErr {
    /// Log it and report it to the file's next fsync.
    #[default]
    Ignore,
    /// That, and abort the journal: the file system turns read-only.
    Abort,
}

impl std::str::FromStr for DataErr {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<DataErr, String> {
        match s {
            "ignore" => Ok(DataErr::Ignore),
            "abort" => Ok(DataErr::Abort),
            _ => Err(format!("data_err={s}: expected ignore or abort")),
        }
    }
}

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
        match self.on_error {
            OnError::RemountRo | OnError::Panic => {
                log::error!(
                    "ext4 error: corrupt metadata found; remounting read-only (errors={})",
                    if self.on_error == OnError::RemountRo {
                        "remount-ro"
                    } else {
                        "panic, served as remount-ro"
                    }
                );
                self.error_remount_ro();
            }
            OnError::Continue => {
                log::warn!(
                    "ext4 error: corrupt metadata found; recorded in the superblock, continuing (errors=continue)"
                );
            }
        }
    }

    /// A write of file data to the device failed (inode `ino`, the range already logged). With
    /// `data_err=abort` the journal aborts: the running transaction, which may record those
    /// blocks as written, never commits, and the file system turns read-only.
    pub(crate) fn data_write_failed(&self, ino: Ino) {
        if self.data_err != DataErr::Abort || self.is_read_only() {
            return;
        }
        log::error!("inode {ino}: a data write failed; aborting the journal (data_err=abort)");
        self.abort(Errno::EIO);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_as_the_kernel_spells_them() {
        assert_eq!("continue".parse(), Ok(OnError::Continue));
        assert_eq!("remount-ro".parse(), Ok(OnError::RemountRo));
        assert_eq!("panic".parse(), Ok(OnError::Panic));
        assert!("remount_ro".parse::<OnError>().is_err());
        assert_eq!("ignore".parse(), Ok(DataErr::Ignore));
        assert_eq!("abort".parse(), Ok(DataErr::Abort));
        assert!("".parse::<DataErr>().is_err());
        assert_eq!(OnError::from_superblock(1), OnError::Continue);
        assert_eq!(OnError::from_superblock(ERRORS_RO), OnError::RemountRo);
        assert_eq!(OnError::from_superblock(ERRORS_PANIC), OnError::Panic);
        assert_eq!(OnError::from_superblock(0), OnError::Continue);
        assert_eq!(OnError::from_superblock(77), OnError::Continue);
        for p in [OnError::Continue, OnError::RemountRo, OnError::Panic] {
            assert_eq!(p.name().parse(), Ok(p));
        }
    }
}
