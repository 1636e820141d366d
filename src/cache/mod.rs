//! The metadata buffer cache. Clean blocks sit in a bounded cache; a block modified by an operation
//! joins the running transaction as a new copy (copy-on-write), so a commit can write a frozen
//! transaction while later operations keep modifying newer copies. Readers always see the newest
//! version: running transaction, then committed-but-not-yet-home blocks, then the clean cache.
//!
//! Several journal handles change metadata at once (writeback of different files), and a block
//! may hold things several of them change (one inode table block holds many inodes; one GDT block
//! many group descriptors). A change is a read-modify-write of the newest copy, so it runs under
//! the block's buffer lock ([`BufferCache::lock_block`], jbd2's buffer lock / get_write_access):
//! two handles changing the same block take turns and neither loses the other's update. A thread
//! holds at most one buffer lock, and takes no other lock but the cache's own while holding it.
//!
//! This layer knows nothing of the journal format; `journal` takes frozen transactions from here,
//! logs them, writes them home and then reports them checkpointed.

mod clean;

pub use clean::BlockCache;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// The metadata blocks one transaction changed, frozen for commit.
#[derive(Default)]
pub struct Frozen {
    pub tid: u64,
    /// Final contents of every block the transaction modified, by block number.
    pub blocks: Vec<(u64, Arc<[u8]>)>,
    /// Metadata blocks freed in this transaction: replay must not write older copies of them.
    pub revoked: Vec<u64>,
}

#[derive(Default)]
struct Running {
    tid: u64,
    blocks: HashMap<u64, Arc<[u8]>>,
    revoked: HashSet<u64>,
}

pub struct BufferCache {
    clean: BlockCache,
    running: Mutex<Running>,
    /// Committed (or committing) blocks not yet written home.
    pending: Mutex<HashMap<u64, Arc<[u8]>>>,
    /// Blocks whose buffer lock is held (a read-modify-write is under way).
    locked: Mutex<HashSet<u64>>,
    /// Signalled when a buffer lock is released.
    unlocked: Condvar,
}

/// A block's buffer lock; released when dropped.
pub struct BlockLock<'a> {
    cache: &'a BufferCache,
    block: u64,
}

impl Drop for BlockLock<'_> {
    fn drop(&mut self) {
        lock(&self.cache.locked).remove(&self.block);
        self.cache.unlocked.notify_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl BufferCache {
    pub fn new(capacity: usize) -> BufferCache {
        BufferCache {
            clean: BlockCache::new(capacity),
            running: Mutex::new(Running {
                tid: 1,
                ..Default::default()
            }),
            pending: Mutex::new(HashMap::new()),
            locked: Mutex::new(HashSet::new()),
            unlocked: Condvar::new(),
        }
    }

    /// Take `block`'s buffer lock (waiting while another thread holds it): hold it from reading
    /// the block to [`BufferCache::put_dirty`] of its new version.
    pub fn lock_block(&self, block: u64) -> BlockLock<'_> {
        let mut l = lock(&self.locked);
        while l.contains(&block) {
            l = self.unlocked.wait(l).unwrap_or_else(|e| e.into_inner());
        }
        l.insert(block);
        BlockLock { cache: self, block }
    }

    /// The newest cached version of `block`, if any.
    pub fn get(&self, block: u64) -> Option<Arc<[u8]>> {
        if let Some(b) = lock(&self.running).blocks.get(&block) {
            return Some(b.clone());
        }
        if let Some(b) = lock(&self.pending).get(&block) {
            return Some(b.clone());
        }
        self.clean.get(block)
    }

    /// Remember a block just read from the device.
    pub fn insert_clean(&self, block: u64, data: Arc<[u8]>) {
        self.clean.insert(block, data);
    }

    /// Record a new version of `block` in the running transaction.
    pub fn put_dirty(&self, block: u64, data: Arc<[u8]>) {
        let mut r = lock(&self.running);
        r.revoked.remove(&block);
        r.blocks.insert(block, data);
    }

    /// `block` stops being metadata in the running transaction (freed).
    pub fn revoke(&self, block: u64) {
        let mut r = lock(&self.running);
        r.blocks.remove(&block);
        r.revoked.insert(block);
        drop(r);
        self.clean.invalidate(block);
    }

    /// Number of blocks the running transaction holds.
    pub fn running_len(&self) -> usize {
        lock(&self.running).blocks.len()
    }

    pub fn running_tid(&self) -> u64 {
        lock(&self.running).tid
    }

    /// Close the running transaction and hand it out for commit; a new one starts.
    /// Its blocks stay visible (as pending) until `checkpointed`.
    pub fn freeze(&self) -> Frozen {
        let mut r = lock(&self.running);
        let tid = r.tid;
        r.tid += 1;
        let blocks: Vec<(u64, Arc<[u8]>)> = r.blocks.drain().collect();
        let mut revoked: Vec<u64> = r.revoked.drain().collect();
        revoked.sort_unstable();
        let mut pending = lock(&self.pending);
        for (b, d) in &blocks {
            pending.insert(*b, d.clone());
        }
        for b in &revoked {
            pending.remove(b);
        }
        drop(pending);
        drop(r);
        let mut blocks = blocks;
        blocks.sort_unstable_by_key(|(b, _)| *b);
        Frozen {
            tid,
            blocks,
            revoked,
        }
    }

    /// The frozen transaction's blocks are home on the device: move them to the clean cache.
    pub fn checkpointed(&self, f: &Frozen) {
        let mut pending = lock(&self.pending);
        for (b, d) in &f.blocks {
            if pending.get(b).is_some_and(|p| Arc::ptr_eq(p, d)) {
                pending.remove(b);
                self.clean.insert(*b, d.clone());
            } else {
                // A newer copy is pending or running; the clean one is stale.
                self.clean.invalidate(*b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blk(v: u8) -> Arc<[u8]> {
        Arc::from(vec![v; 8])
    }

    #[test]
    fn newest_version_wins_through_commit_and_checkpoint() {
        let c = BufferCache::new(64);
        c.insert_clean(5, blk(1));
        assert_eq!(c.get(5).unwrap()[0], 1);
        c.put_dirty(5, blk(2));
        assert_eq!(c.get(5).unwrap()[0], 2);
        let f = c.freeze();
        assert_eq!(f.blocks.len(), 1);
        assert_eq!(
            c.get(5).unwrap()[0],
            2,
            "pending copy visible during commit"
        );
        c.put_dirty(5, blk(3));
        assert_eq!(c.get(5).unwrap()[0], 3);
        c.checkpointed(&f);
        assert_eq!(c.get(5).unwrap()[0], 3, "the running copy still wins");
        let g = c.freeze();
        c.checkpointed(&g);
        assert_eq!(c.get(5).unwrap()[0], 3);
        assert_eq!(c.running_len(), 0);
    }

    #[test]
    fn buffer_lock_keeps_every_read_modify_write() {
        // Eight threads each bump their own byte of one block 200 times, read-modify-write
        // under the buffer lock: no bump is lost.
        let c = Arc::new(BufferCache::new(64));
        c.insert_clean(7, Arc::from(vec![0u8; 8]));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let _l = c.lock_block(7);
                        let mut d = c.get(7).unwrap().to_vec();
                        d[t] += 1;
                        std::thread::yield_now();
                        c.put_dirty(7, Arc::from(d));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let d = c.get(7).unwrap();
        assert!(d.iter().all(|&v| v == 200), "lost updates: {d:?}");
    }

    #[test]
    fn revoke_drops_the_block() {
        let c = BufferCache::new(64);
        c.put_dirty(9, blk(1));
        c.revoke(9);
        assert!(c.get(9).is_none());
        let f = c.freeze();
        assert!(f.blocks.is_empty());
        assert_eq!(f.revoked, vec![9]);
    }
}
