//! The DAX window as the dispatcher sees it: something that can map a file range into a window
//! slot and unmap slots again. The vhost-user-fs transport provides one (`vhost::dax`) when its
//! frontend offers a shared memory region; `/dev/fuse` never does.

use super::abi::{RemovemappingOne, SetupmappingIn};
use crate::errno::Errno;
use crate::fs::Ino;

pub trait DaxWindow: Send + Sync {
    /// The window exists and can be used (the frontend negotiated it): INIT advertises DAX.
    fn active(&self) -> bool;
    /// FUSE_SETUPMAPPING for file `ino`.
    fn setup(&self, ino: Ino, arg: &SetupmappingIn) -> Result<(), Errno>;
    /// FUSE_REMOVEMAPPING.
    fn remove(&self, ranges: &[RemovemappingOne]) -> Result<(), Errno>;
    /// A new FUSE session starts (the guest remounted or rebooted): drop every mapping.
    fn reset(&self);
}
