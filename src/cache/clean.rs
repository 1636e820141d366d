//! Clean metadata blocks recently read, shared between threads, evicted FIFO per shard.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

const SHARDS: usize = 16;

struct Shard {
    map: HashMap<u64, Arc<[u8]>>,
    order: VecDeque<u64>,
}

pub struct BlockCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
}

impl BlockCache {
    /// A cache holding about `capacity` blocks.
    pub fn new(capacity: usize) -> BlockCache {
        let per_shard = capacity.div_ceil(SHARDS).max(4);
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    map: HashMap::new(),
                    order: VecDeque::new(),
                })
            })
            .collect();
        BlockCache { shards, per_shard }
    }

    fn shard(&self, block: u64) -> std::sync::MutexGuard<'_, Shard> {
        let i = (block.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, block: u64) -> Option<Arc<[u8]>> {
        self.shard(block).map.get(&block).cloned()
    }

    pub fn insert(&self, block: u64, data: Arc<[u8]>) {
        let mut s = self.shard(block);
        if s.map.insert(block, data).is_none() {
            s.order.push_back(block);
        }
        while s.map.len() > self.per_shard {
            match s.order.pop_front() {
                Some(old) => {
                    s.map.remove(&old);
                }
                None => break,
            }
        }
    }

    /// Forget a block (it was rewritten or freed).
    pub fn invalidate(&self, block: u64) {
        let mut s = self.shard(block);
        if s.map.remove(&block).is_some() {
            s.order.retain(|&b| b != block);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_beyond_capacity() {
        let c = BlockCache::new(64);
        for b in 0..10_000u64 {
            c.insert(b, Arc::from(vec![b as u8; 4]));
        }
        let held = (0..10_000u64).filter(|&b| c.get(b).is_some()).count();
        assert!(held <= 16 * 4 + 64, "{held}");
        assert_eq!(c.get(9_999).as_deref(), Some(&[9_999u64 as u8; 4][..]));
        c.invalidate(9_999);
        assert!(c.get(9_999).is_none());
    }
}
