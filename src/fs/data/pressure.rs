//! Host memory pressure: our page cache is a memfd the host kernel cannot reclaim (only swap),
//! so when the host or the daemon's cgroup runs short (`pagecache::pressure`), the flusher
//! gives memory back itself, as the kernel's reclaim would: first the kept free slabs, then
//! clean pages, least recently used first; dirty pages are written back so that they can go
//! too. Each pass frees what the scope is short of (at least an eighth of the cache), keeping a
//! sixteenth of the cache as a working set; the flusher looks every second. A fast reader or
//! writer can fill a lot of memory in a second, so reads and writes also look themselves (at
//! most every [`DIRECT_CHECK`], one thread at a time) and give memory back at once when it is
//! short, as the kernel's direct reclaim does.

use super::super::Fs;
use crate::pagecache::PAGE_SIZE;
use crate::pagecache::pressure::MemorySource;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often reads and writes look at the memory state themselves.
pub(super) const DIRECT_CHECK: Duration = Duration::from_millis(20);

impl Fs {
    /// Where the memory state comes from: the host's (`HostMemory`) unless an embedder, or a
    /// test, gives its own signal.
    pub fn set_memory_source(&self, source: Arc<dyn MemorySource>) {
        *self.data.memory.write().unwrap_or_else(|e| e.into_inner()) = source;
    }

    /// Direct reclaim: when the last look is [`DIRECT_CHECK`] old and memory is short, give
    /// memory back now, in the reader's or writer's own thread (which so waits for any
    /// writeback it needs, as the kernel throttles an allocating task). Called by reads and
    /// writes holding no file lock.
    pub(super) fn reclaim_if_short(&self) {
        let now = self.data.started.elapsed().as_millis() as u64;
        let last = self.data.last_look.load(Ordering::Relaxed);
        if now < last + DIRECT_CHECK.as_millis() as u64
            || self
                .data
                .last_look
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.relieve_memory_pressure();
    }

    fn shortage(&self) -> u64 {
        let src = self.data.memory.read().unwrap_or_else(|e| e.into_inner());
        src.shortage()
    }

    /// Pages to give back for a shortage of `short` bytes: all of it, and at least an eighth
    /// of the cache (so a slight shortage is not answered page by page).
    fn reclaim_target(&self, short: u64) -> usize {
        (short as usize)
            .div_ceil(PAGE_SIZE)
            .max(self.data.pc.limit_pages() / 8)
    }

    /// Give page-cache memory back when memory is short. Returns the pages given back.
    pub(crate) fn relieve_memory_pressure(&self) -> usize {
        let short = self.shortage();
        if short == 0 {
            if self.data.pressed.swap(false, Ordering::Relaxed) {
                log::info!("host memory pressure is over");
            }
            return 0;
        }
        let pc = &self.data.pc;
        let want = self.reclaim_target(short);
        let floor = pc.limit_pages() / 16;
        let before = pc.held_pages();
        let given = || before.saturating_sub(pc.held_pages());
        // Evict clean pages down to the working set; slabs the eviction empties may be kept
        // for reuse: not now.
        let evict = || {
            let room = pc.resident_pages().saturating_sub(floor);
            self.evict_lru(want.saturating_sub(given()).min(room), None, true);
            pc.release_kept();
        };
        pc.release_kept();
        if given() < want {
            evict();
        }
        if given() < want && pc.dirty_pages() > 0 && !self.is_read_only() {
            // Dirty pages cannot go before their data is on the disk.
            if let Err(e) = self.writeback_all(false) {
                log::warn!("writeback under memory pressure: {e}");
            }
            evict();
        }
        let freed = given();
        if !self.data.pressed.swap(true, Ordering::Relaxed) {
            log::info!(
                "host memory is short by {} MiB: gave {} MiB of the page cache back",
                short >> 20,
                (freed * PAGE_SIZE) >> 20
            );
        }
        freed
    }
}
