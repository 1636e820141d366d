//! What the `fs` and `blk` devices share: guest memory, per-queue in-flight accounting, popping
//! descriptor chains with EVENT_IDX, completing them (used ring + interrupt), a first sanity
//! check of each chain, and the exit events that stop the vring epoll threads.
//!
//! No virtqueue code lives here: rings are parsed by `virtio-queue`, guest memory by `vm-memory`.

use log::{debug, warn};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{
    GuestAddressSpace, GuestMemory, GuestMemoryAtomic, GuestMemoryMmap, Permissions, VolatileSlice,
};
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

/// Guest memory as the daemon sees it (no dirty-page bitmap: we do not offer LOG_SHMFD).
pub type Mem = GuestMemoryMmap<()>;
/// A descriptor chain holding its own reference to the guest memory snapshot it was read from,
/// so that it can travel to a worker thread and survive a memory-table update.
pub type Chain = DescriptorChain<Arc<Mem>>;
/// The vring type both devices use.
pub type Vring = VringRwLock<GuestMemoryAtomic<Mem>>;

/// The largest ring a frontend may configure (the split-ring maximum QEMU accepts).
pub const MAX_QUEUE_SIZE: usize = 1024;

/// A counter that can be waited on until it drops to zero.
#[derive(Default)]
pub struct InFlight {
    count: Mutex<usize>,
    idle: Condvar,
}

impl InFlight {
    pub fn enter(&self) {
        *self.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }

    pub fn leave(&self) {
        let mut c = self.count.lock().unwrap_or_else(|p| p.into_inner());
        *c = c.saturating_sub(1);
        if *c == 0 {
            self.idle.notify_all();
        }
    }

    pub fn wait_idle(&self) {
        let mut c = self.count.lock().unwrap_or_else(|p| p.into_inner());
        while *c != 0 {
            c = self.idle.wait(c).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Leaves an [`InFlight`] when dropped.
pub struct InFlightGuard<'a>(&'a InFlight);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// Device state shared by both backends.
pub struct Core {
    mem: RwLock<Option<GuestMemoryAtomic<Mem>>>,
    event_idx: AtomicBool,
    /// One per queue: chains popped and not yet on the used ring.
    inflight: Vec<Arc<InFlight>>,
    /// `handle_event` calls in progress (so that shutdown can wait for them).
    busy: InFlight,
    stopping: AtomicBool,
    /// Our copies of the notifiers that stop each vring epoll thread.
    exits: Mutex<Vec<EventNotifier>>,
}

impl Core {
    pub fn new(queues: usize) -> Core {
        Core {
            mem: RwLock::new(None),
            event_idx: AtomicBool::new(false),
            inflight: (0..queues).map(|_| Arc::new(InFlight::default())).collect(),
            busy: InFlight::default(),
            stopping: AtomicBool::new(false),
            exits: Mutex::new(Vec::new()),
        }
    }

    pub fn set_memory(&self, mem: GuestMemoryAtomic<Mem>) {
        *self.mem.write().unwrap_or_else(|p| p.into_inner()) = Some(mem);
    }

    /// The current guest memory snapshot, once the frontend sent its memory table.
    pub fn memory(&self) -> Option<Arc<Mem>> {
        self.mem
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|m| m.memory().into_inner())
    }

    pub fn set_event_idx(&self, on: bool) {
        self.event_idx.store(on, Ordering::Release);
    }

    pub fn event_idx(&self) -> bool {
        self.event_idx.load(Ordering::Acquire)
    }

    pub fn inflight(&self, queue: usize) -> Option<&Arc<InFlight>> {
        self.inflight.get(queue)
    }

    /// One queue per vring epoll thread: thread `i` serves queue `i`.
    pub fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.inflight.len()).map(|i| 1u64 << i).collect()
    }

    /// A fresh exit event for vring thread `_thread`; we keep a copy of the notifier.
    pub fn exit_event(&self, _thread: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()?;
        let mine = notifier.try_clone().ok()?;
        self.exits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(mine);
        Some((consumer, notifier))
    }

    /// Mark a `handle_event` call as running, or `None` once the device is stopping.
    pub fn begin_event(&self) -> Option<InFlightGuard<'_>> {
        if self.stopping.load(Ordering::Acquire) {
            return None;
        }
        self.busy.enter();
        if self.stopping.load(Ordering::Acquire) {
            self.busy.leave();
            return None;
        }
        Some(InFlightGuard(&self.busy))
    }

    /// Stop the vring threads and wait until no `handle_event` call is running and every popped
    /// chain is completed.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        for n in self.exits.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = n.notify();
        }
        self.busy.wait_idle();
        for q in &self.inflight {
            q.wait_idle();
        }
    }

    /// Wait until every chain popped from `queue` is on the used ring (`GET_VRING_BASE`).
    pub fn drain_queue(&self, queue: usize) {
        if let Some(q) = self.inflight.get(queue) {
            q.wait_idle();
        }
    }

    /// Pop every available chain of `vring` (queue `queue`). Each popped chain is counted in
    /// flight until [`complete`] runs for it. `None` when the queue cannot be served now (not
    /// ready, being stopped, no memory table, or a corrupt available ring): stop draining it.
    pub fn pop(&self, vring: &Vring, queue: usize) -> Option<Vec<Chain>> {
        let Some(mem) = self.memory() else {
            debug!("queue {queue}: kicked before the memory table was set");
            return None;
        };
        let inflight = self.inflight.get(queue)?;
        let mut state = vring.get_mut();
        if !state.get_queue().ready() {
            return None;
        }
        let chains: Vec<Chain> = match state.get_queue_mut().iter(mem) {
            Ok(it) => it.collect(),
            Err(e) => {
                warn!("queue {queue}: cannot read the available ring: {e}");
                return None;
            }
        };
        for _ in &chains {
            inflight.enter();
        }
        Some(chains)
    }

    /// Turn guest notifications off before draining a queue (EVENT_IDX only).
    pub fn disable_notification(&self, vring: &Vring, queue: usize) {
        if self.event_idx()
            && let Err(e) = vring.disable_notification()
        {
            warn!("queue {queue}: cannot disable notifications: {e}");
        }
    }

    /// Turn guest notifications back on; true when more chains arrived meanwhile and the queue
    /// must be drained again. Without EVENT_IDX: always false.
    pub fn enable_notification(&self, vring: &Vring, queue: usize) -> bool {
        if !self.event_idx() {
            return false;
        }
        match vring.enable_notification() {
            Ok(more) => more,
            Err(e) => {
                warn!("queue {queue}: cannot enable notifications: {e}");
                false
            }
        }
    }
}

/// Put finished chains `(head, bytes written)` on the used ring, leave them in flight, and
/// signal the guest if it wants an interrupt (EVENT_IDX `used_event`, or always without it).
pub fn complete(vring: &Vring, inflight: &InFlight, queue: usize, done: &[(u16, u32)]) {
    if done.is_empty() {
        return;
    }
    {
        let mut state = vring.get_mut();
        for &(head, len) in done {
            if let Err(e) = state.add_used(head, len) {
                warn!("queue {queue}: cannot return descriptor {head} to the used ring: {e}");
            }
        }
        let notify = match state.needs_notification() {
            Ok(n) => n,
            Err(e) => {
                warn!("queue {queue}: cannot read used_event: {e}; signalling anyway");
                true
            }
        };
        if notify && let Err(e) = state.signal_used_queue() {
            warn!("queue {queue}: cannot signal the guest: {e}");
        }
    }
    for _ in done {
        inflight.leave();
    }
}

/// The shape of a chain: bytes in its device-readable and device-writable parts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    pub readable: u64,
    pub writable: u64,
    pub descriptors: usize,
    /// A device-readable descriptor follows a device-writable one (virtio forbids it).
    pub misordered: bool,
}

/// Walk a chain once and measure it. (Addresses are checked when its memory is accessed.)
pub fn layout(chain: &Chain) -> Layout {
    let mut l = Layout::default();
    let mut seen_writable = false;
    for desc in chain.clone() {
        l.descriptors += 1;
        let len = u64::from(desc.len());
        if desc.is_write_only() {
            seen_writable = true;
            l.writable += len;
        } else {
            l.misordered |= seen_writable;
            l.readable += len;
        }
    }
    l
}

/// `len` bytes of the chain's device-writable (`writable`) or device-readable buffers, after the
/// first `skip`, as guest-memory slices (copied to or from with volatile copies or by the kernel, never viewed as Rust slices).
pub fn guest_buffers<'m>(
    mem: &'m Mem,
    chain: &Chain,
    writable: bool,
    mut skip: usize,
    len: usize,
) -> Result<Vec<VolatileSlice<'m>>, String> {
    let (descs, access) = if writable {
        (chain.clone().writable(), Permissions::Write)
    } else {
        (chain.clone().readable(), Permissions::Read)
    };
    let mut out = Vec::new();
    let mut left = len;
    for d in descs {
        if left == 0 {
            break;
        }
        let slices = mem
            .get_slices(d.addr(), d.len() as usize, access)
            .map_err(|e| format!("outside guest memory ({e})"))?;
        for s in slices {
            let s = s.map_err(|e| format!("outside guest memory ({e})"))?;
            if skip >= s.len() {
                skip -= s.len();
                continue;
            }
            let n = (s.len() - skip).min(left);
            out.push(s.subslice(skip, n).map_err(|e| e.to_string())?);
            skip = 0;
            left -= n;
            if left == 0 {
                break;
            }
        }
    }
    if left > 0 {
        return Err(format!("the chain is {left} bytes short"));
    }
    Ok(out)
}

/// `size` bytes of a config space image starting at `offset`, zero past its end (frontends may
/// ask for a larger structure than we fill); empty when the range leaves the 4 KiB space.
pub fn config_window(config: &[u8], offset: u32, size: u32) -> Vec<u8> {
    let (offset, size) = (offset as usize, size as usize);
    // The vhost-user config space is at most 4 KiB (VHOST_USER_CONFIG_SIZE).
    if offset.checked_add(size).is_none_or(|end| end > 4096) {
        return Vec::new();
    }
    let mut out = vec![0u8; size];
    if offset < config.len() {
        let n = size.min(config.len() - offset);
        out[..n].copy_from_slice(&config[offset..offset + n]);
    }
    out
}

/// Drain queue `queue`: pop its chains and hand them to `serve` until the guest has nothing
/// more to offer. With EVENT_IDX, notifications stay off while draining and the queue is checked
/// again after turning them back on, so no chain slips between the last pop and the re-enable.
pub fn drain(core: &Core, vring: &Vring, queue: usize, mut serve: impl FnMut(Vec<Chain>)) {
    loop {
        core.disable_notification(vring, queue);
        let Some(chains) = core.pop(vring, queue) else {
            return;
        };
        if !chains.is_empty() {
            serve(chains);
        }
        if !core.enable_notification(vring, queue) {
            return;
        }
    }
}

/// A descriptor chain over `bufs` (guest address, length, device-writable), in order, laid out
/// with virtio-queue's mock split queue at the bottom of `mem` (keep buffers above 64 KiB).
#[cfg(test)]
pub(crate) fn mock_chain(mem: &Arc<Mem>, bufs: &[(u64, u32, bool)]) -> Chain {
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{RawDescriptor, split::Descriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    mem.write_slice(&[0u8; 0x1000], GuestAddress(0)).unwrap();
    let mq = MockSplitQueue::new(&**mem, 16);
    let raw: Vec<RawDescriptor> = bufs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, write))| {
            let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            RawDescriptor::from(Descriptor::new(addr, len, flags, i as u16 + 1))
        })
        .collect();
    mq.add_desc_chains(&raw, 0).unwrap();
    let mut q: virtio_queue::Queue = mq.create_queue().unwrap();
    q.iter(Arc::clone(mem)).unwrap().next().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_window_pads_and_refuses_absurd_ranges() {
        let c = [1u8, 2, 3, 4];
        assert_eq!(config_window(&c, 0, 4), vec![1, 2, 3, 4]);
        assert_eq!(config_window(&c, 2, 4), vec![3, 4, 0, 0]);
        assert_eq!(config_window(&c, 10, 2), vec![0, 0]);
        assert!(config_window(&c, u32::MAX, 2).is_empty());
        assert!(config_window(&c, 0, 8192).is_empty());
    }

    #[test]
    fn inflight_waits_for_zero() {
        let f = Arc::new(InFlight::default());
        f.enter();
        f.enter();
        let g = Arc::clone(&f);
        let t = std::thread::spawn(move || {
            g.leave();
            g.leave();
        });
        f.wait_idle();
        t.join().unwrap();
        f.leave(); // never below zero
        f.wait_idle();
    }
}
