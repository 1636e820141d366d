//! The FUSE protocol layer: ABI structs, request decoding, reply encoding, dispatch to `fs`, and the
//! `/dev/fuse` transport. The dispatcher knows nothing of the transport.
