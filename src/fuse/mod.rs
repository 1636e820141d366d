//! The FUSE protocol layer: ABI structs, request decoding, reply encoding, dispatch to `fs`, and the
//! `/dev/fuse` transport. The dispatcher knows nothing of the transport.

pub mod abi;
pub mod caller;
pub mod dax;
pub mod devfuse;
pub mod dispatch;
pub mod io;
pub mod mountwatch;
pub mod options;
pub mod permission;
pub mod reply;
pub mod request;

pub use dax::DaxWindow;
pub use devfuse::{DevFuse, MountConfig, mount, unmount};
pub use dispatch::{DispatchOptions, Dispatcher, Transport};
