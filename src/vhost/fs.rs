//! The vhost-user-fs device: queue 0 is the high-priority queue (FORGET / BATCH_FORGET), queues
//! 1..=N carry requests. Every chain holds one FUSE request in its device-readable part and
//! room for the reply in its device-writable part; the FUSE work is done by
//! [`crate::fuse::Dispatcher`].
//!
//! Request queues are drained by their vring epoll thread and the chains handed to a worker pool
//! (or served in the epoll thread when the pool size is 0); the high-priority queue is always
//! served inline. A malformed chain never stops the device: it is logged and answered with an
//! error reply when its header and writable part allow one, with an empty used entry otherwise.

use super::pool::{Job, Pool};
use super::queue::{
    self, Chain, Core, InFlight, MAX_QUEUE_SIZE, Mem, Vring, complete, config_window, drain,
};
use crate::errno::Errno;
use crate::fuse::Dispatcher;
use crate::fuse::abi::{InHeader, OutHeader, opcode};
use crate::fuse::io::{GuestPayload, GuestReply};
use crate::fuse::{reply, request};
use log::{error, warn};
use std::io::{self, Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use vhost::vhost_user::Backend;
use vhost::vhost_user::message::{
    VhostUserProtocolFeatures, VhostUserShMemConfig, VhostUserVirtioFeatures,
};
use vhost_user_backend::VhostUserBackend;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Reader, Writer};
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

/// The high-priority queue.
pub const HIPRIO_QUEUE: usize = 0;
/// Bytes of the tag in the virtio-fs config space.
pub const TAG_LEN: usize = 36;
/// The most request queues we offer (one vring thread each; the queue mask is 64 bits wide).
pub const MAX_REQUEST_QUEUES: usize = 32;

/// The vhost-user-fs backend.
pub struct FsDevice {
    dispatcher: Arc<Dispatcher>,
    /// `struct virtio_fs_config`: tag[36], le32 num_request_queues.
    config: Vec<u8>,
    request_queues: usize,
    /// The largest request message we accept.
    max_request: usize,
    pool: Option<Pool>,
    core: Core,
    /// The DAX window offered to the frontend, if any.
    dax: Option<Arc<super::dax::Window>>,
}

impl FsDevice {
    /// A device with `request_queues` request queues serving `dispatcher`; `threads` workers
    /// (0: serve requests in the vring threads).
    pub fn new(
        dispatcher: Arc<Dispatcher>,
        tag: &str,
        request_queues: usize,
        threads: usize,
    ) -> Result<FsDevice, String> {
        check_tag(tag)?;
        if request_queues == 0 || request_queues > MAX_REQUEST_QUEUES {
            return Err(format!(
                "the number of request queues must be between 1 and {MAX_REQUEST_QUEUES}, not {request_queues}"
            ));
        }
        let mut config = vec![0u8; TAG_LEN];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config.extend_from_slice(&(request_queues as u32).to_le_bytes());
        let pool = if threads == 0 {
            None
        } else {
            Some(
                Pool::new(threads, "vhost-fs-worker")
                    .map_err(|e| format!("cannot start the worker threads: {e}"))?,
            )
        };
        let max_request = dispatcher.request_buffer_size();
        Ok(FsDevice {
            dispatcher,
            config,
            request_queues,
            max_request,
            pool,
            core: Core::new(1 + request_queues),
            dax: None,
        })
    }

    /// Offer `window` as shared memory region 0 (the DAX window): the SHMEM protocol feature
    /// and a backend request channel are then offered too.
    pub fn with_dax(mut self, window: Arc<super::dax::Window>) -> FsDevice {
        self.dax = Some(window);
        self
    }

    /// Stop the vring threads, wait for every request in flight, and stop the workers.
    pub fn shutdown(&self) {
        self.core.stop();
        if let Some(p) = &self.pool {
            p.close();
        }
    }

    fn serve(&self, queue: usize, vring: &Vring, inflight: &Arc<InFlight>, chains: Vec<Chain>) {
        let pool = match &self.pool {
            Some(p) if queue != HIPRIO_QUEUE => p,
            _ => {
                let done: Vec<(u16, u32)> = chains
                    .iter()
                    .map(|c| {
                        (
                            c.head_index(),
                            serve_guarded(&self.dispatcher, c, self.max_request, queue),
                        )
                    })
                    .collect();
                complete(vring, inflight, queue, &done);
                return;
            }
        };
        for chain in chains {
            let dispatcher = Arc::clone(&self.dispatcher);
            let vring = vring.clone();
            let inflight = Arc::clone(inflight);
            let max_request = self.max_request;
            let job: Job = Box::new(move || {
                let len = serve_guarded(&dispatcher, &chain, max_request, queue);
                complete(&vring, &inflight, queue, &[(chain.head_index(), len)]);
            });
            if let Err(job) = pool.submit(job) {
                job();
            }
        }
    }
}

/// A tag must fit the config space and be usable as a mount source.
pub fn check_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() || tag.len() > TAG_LEN || tag.contains('\0') {
        return Err(format!(
            "the tag must be 1 to {TAG_LEN} bytes without NUL characters, not {tag:?}"
        ));
    }
    Ok(())
}

impl VhostUserBackend for FsDevice {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        1 + self.request_queues
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        let pf = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
        if self.dax.is_some() {
            pf | VhostUserProtocolFeatures::SHMEM
                | VhostUserProtocolFeatures::BACKEND_REQ
                | VhostUserProtocolFeatures::BACKEND_SEND_FD
        } else {
            pf
        }
    }

    fn get_shmem_config(&self) -> io::Result<VhostUserShMemConfig> {
        match &self.dax {
            Some(w) => Ok(w.shmem_config()),
            None => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no shared memory region (no DAX window)",
            )),
        }
    }

    fn set_backend_req_fd(&self, backend: Backend) {
        if let Some(w) = &self.dax {
            w.set_backend(backend);
        }
    }

    fn reset_device(&self) {
        // A device reset drops the frontend's shared memory mappings.
        if let Some(w) = &self.dax {
            w.device_reset();
        }
    }

    fn set_event_idx(&self, enabled: bool) {
        self.core.set_event_idx(enabled);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        config_window(&self.config, offset, size)
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<Mem>) -> io::Result<()> {
        self.core.set_memory(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        self.core.queues_per_thread()
    }

    fn exit_event(&self, thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.core.exit_event(thread_index)
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        self.core.drain_queue(queue_index as usize);
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        if !evset.contains(EventSet::IN) {
            return Ok(());
        }
        let Some(_busy) = self.core.begin_event() else {
            return Ok(());
        };
        // One queue per vring thread: the thread index is the queue index.
        let queue = thread_id;
        let (Some(vring), Some(inflight)) = (
            vrings.get(usize::from(device_event)),
            self.core.inflight(queue).cloned(),
        ) else {
            warn!("fs: event {device_event} on vring thread {thread_id} matches no queue");
            return Ok(());
        };
        drain(&self.core, vring, queue, |chains| {
            self.serve(queue, vring, &inflight, chains)
        });
        Ok(())
    }
}

/// [`serve_chain`], with a panic turned into an empty used entry.
fn serve_guarded(dispatcher: &Dispatcher, chain: &Chain, max_request: usize, queue: usize) -> u32 {
    catch_unwind(AssertUnwindSafe(|| {
        serve_chain(dispatcher, chain, max_request, queue)
    }))
    .unwrap_or_else(|_| {
        error!(
            "fs queue {queue}: serving descriptor chain {} panicked; returning it empty",
            chain.head_index()
        );
        0
    })
}

/// Serve one chain: read the request (a WRITE's payload stays in guest memory until the engine
/// copies it into the page cache), dispatch it, and let the reply go straight into the chain's
/// writable buffers (a READ's data from the page cache). Returns the number of bytes written to
/// the chain (the used length).
pub fn serve_chain(
    dispatcher: &Dispatcher,
    chain: &Chain,
    max_request: usize,
    queue: usize,
) -> u32 {
    let head = chain.head_index();
    let shape = queue::layout(chain);
    if shape.descriptors == 0 {
        warn!("fs queue {queue}: chain {head} has no descriptors (bad head or table)");
        return 0;
    }
    if shape.readable < InHeader::SIZE as u64 {
        warn!(
            "fs queue {queue}: chain {head}: {} readable bytes cannot hold a FUSE header; returning it empty",
            shape.readable
        );
        return 0;
    }
    let mem = chain.memory();
    let mut reader: Reader<'_, ()> = match Reader::new(mem, chain.clone()) {
        Ok(r) => r,
        Err(e) => {
            warn!(
                "fs queue {queue}: chain {head}: request buffer outside guest memory ({e}); returning it empty"
            );
            return 0;
        }
    };
    let mut head_bytes = [0u8; InHeader::SIZE];
    if let Err(e) = reader.read_exact(&mut head_bytes) {
        warn!("fs queue {queue}: chain {head}: cannot read the FUSE header: {e}");
        return 0;
    }
    let Some(header) = InHeader::decode(&head_bytes) else {
        return 0;
    };
    let unique = header.unique;
    if shape.misordered {
        warn!(
            "fs queue {queue}: chain {head} (unique {unique}): readable descriptor after a writable one: EINVAL"
        );
        return error_reply(chain, unique, Errno::EINVAL, queue);
    }
    let len = header.len as usize;
    if len < InHeader::SIZE || header.len as u64 > shape.readable {
        warn!(
            "fs queue {queue}: chain {head} (unique {unique}): header length {} but {} readable bytes: EINVAL",
            header.len, shape.readable
        );
        return error_reply(chain, unique, Errno::EINVAL, queue);
    }
    if len > max_request {
        warn!(
            "fs queue {queue}: chain {head} (unique {unique}): {len}-byte request exceeds the {max_request}-byte limit: EINVAL"
        );
        return error_reply(chain, unique, Errno::EINVAL, queue);
    }
    if shape.writable < OutHeader::SIZE as u64 && !request::is_no_reply(header.opcode) {
        // The guest could never learn the outcome: do not run an operation with side effects.
        warn!(
            "fs queue {queue}: chain {head} (unique {unique}): {} writable bytes cannot hold a reply; not executed",
            shape.writable
        );
        return 0;
    }
    let w: Writer<'_, ()> = match Writer::new(mem, chain.clone()) {
        Ok(w) => w,
        Err(e) => {
            warn!(
                "fs queue {queue}: chain {head} (unique {unique}): reply buffer outside guest memory ({e}); returning it empty"
            );
            return 0;
        }
    };
    if header.opcode == opcode::WRITE && len >= request::WRITE_HEAD_SIZE {
        // The payload stays in the guest's buffers until the engine copies it into the page
        // cache: only the head is read here.
        let mut msg = [0u8; request::WRITE_HEAD_SIZE];
        msg[..InHeader::SIZE].copy_from_slice(&head_bytes);
        if let Err(e) = reader.read_exact(&mut msg[InHeader::SIZE..]) {
            warn!(
                "fs queue {queue}: chain {head} (unique {unique}): cannot read the request: {e}: EIO"
            );
            return error_reply(chain, unique, Errno::EIO, queue);
        }
        let ext = usize::from(header.total_extlen) * 8;
        let Some(payload_len) = (len - request::WRITE_HEAD_SIZE).checked_sub(ext) else {
            warn!(
                "fs queue {queue}: chain {head} (unique {unique}): WRITE extensions longer than the message: EINVAL"
            );
            return error_reply(chain, unique, Errno::EINVAL, queue);
        };
        let mut payload =
            match queue::guest_buffers(mem, chain, false, request::WRITE_HEAD_SIZE, payload_len) {
                Ok(bufs) => GuestPayload::new(bufs),
                Err(e) => {
                    warn!(
                        "fs queue {queue}: chain {head} (unique {unique}): WRITE payload: {e}: EIO"
                    );
                    return error_reply(chain, unique, Errno::EIO, queue);
                }
            };
        let mut reply = GuestReply::new(w, queue, head);
        dispatcher.dispatch_to(&msg, Some(&mut payload), &mut reply);
        return reply.written();
    }
    // Any other request is read whole; the common ones (READ, GETATTR, LOOKUP, ...) fit the
    // stack buffer.
    let mut small = [0u8; SMALL_REQUEST];
    let mut big = Vec::new();
    let msg: &mut [u8] = if len <= SMALL_REQUEST {
        &mut small[..len]
    } else {
        big.resize(len, 0);
        &mut big
    };
    msg[..InHeader::SIZE].copy_from_slice(&head_bytes);
    if let Err(e) = reader.read_exact(&mut msg[InHeader::SIZE..]) {
        warn!(
            "fs queue {queue}: chain {head} (unique {unique}): cannot read the request: {e}: EIO"
        );
        return error_reply(chain, unique, Errno::EIO, queue);
    }
    let mut reply = GuestReply::new(w, queue, head);
    dispatcher.dispatch_to(msg, None, &mut reply);
    reply.written()
}

/// Requests up to this size are read into a stack buffer.
const SMALL_REQUEST: usize = 512;

fn write_all(w: &mut Writer<'_, ()>, bytes: &[u8], queue: usize, head: u16) -> u32 {
    if let Err(e) = w.write_all(bytes) {
        warn!("fs queue {queue}: chain {head}: writing the reply failed: {e}");
    }
    w.bytes_written() as u32
}

/// An error reply for `unique` if the chain has room for it, else an empty used entry.
fn error_reply(chain: &Chain, unique: u64, errno: Errno, queue: usize) -> u32 {
    let e = reply::error(unique, errno);
    debug_assert_eq!(e.len(), OutHeader::SIZE);
    let head = chain.head_index();
    match Writer::<'_, ()>::new(chain.memory(), chain.clone()) {
        Ok(mut w) if w.available_bytes() >= e.len() => write_all(&mut w, &e, queue, head),
        _ => 0,
    }
}

#[cfg(test)]
#[path = "fs_tests.rs"]
mod tests;
