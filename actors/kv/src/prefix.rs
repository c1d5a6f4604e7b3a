//! The prefix cache index: registered block hashes and the LRU of evictable blocks.

use ferrite_protocol::{BlockHash, BlockId};
use std::collections::{BTreeMap, HashMap};

/// Which block holds each registered hash, and the evictable (ref count 0) hashed blocks
/// ordered by last use.
#[derive(Debug, Default)]
pub(crate) struct PrefixIndex {
    by_hash: HashMap<BlockHash, BlockId>,
    /// tick → block; the smallest tick is evicted first.
    lru: BTreeMap<u64, BlockId>,
    next_tick: u64,
}

impl PrefixIndex {
    pub(crate) fn get(&self, h: &BlockHash) -> Option<BlockId> {
        self.by_hash.get(h).copied()
    }

    pub(crate) fn contains(&self, h: &BlockHash) -> bool {
        self.by_hash.contains_key(h)
    }

    pub(crate) fn register(&mut self, h: BlockHash, b: BlockId) {
        self.by_hash.insert(h, b);
    }

    pub(crate) fn unregister(&mut self, h: &BlockHash) {
        self.by_hash.remove(h);
    }

    pub(crate) fn num_registered(&self) -> usize {
        self.by_hash.len()
    }

    pub(crate) fn registered(&self) -> impl Iterator<Item = (&BlockHash, &BlockId)> {
        self.by_hash.iter()
    }

    /// Makes `b` evictable; returns its tick (newest).
    pub(crate) fn push_lru(&mut self, b: BlockId) -> u64 {
        self.next_tick += 1;
        self.lru.insert(self.next_tick, b);
        self.next_tick
    }

    pub(crate) fn remove_lru(&mut self, tick: u64) {
        self.lru.remove(&tick);
    }

    /// Takes the least recently used evictable block.
    pub(crate) fn pop_lru(&mut self) -> Option<BlockId> {
        self.lru.pop_first().map(|(_, b)| b)
    }

    pub(crate) fn num_evictable(&self) -> usize {
        self.lru.len()
    }

    pub(crate) fn lru_contains(&self, tick: u64, b: BlockId) -> bool {
        self.lru.get(&tick) == Some(&b)
    }

    pub(crate) fn clear(&mut self) {
        self.by_hash.clear();
        self.lru.clear();
    }
}
