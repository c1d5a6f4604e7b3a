//! LRU with frequency: the victim is the least recently used block among those hit the
//! fewest times (hits are capped, so a block hit often in the distant past still ages out
//! behind blocks of the same capped class).

use ferrite_protocol::BlockHash;
use std::collections::{BTreeMap, HashMap};

/// Hits beyond this do not protect a block further.
pub(crate) const MAX_FREQ: u32 = 3;

#[derive(Debug, Default)]
pub(crate) struct FreqLru {
    /// (capped hits, tick) → hash; the first entry is the victim.
    order: BTreeMap<(u32, u64), BlockHash>,
    pos: HashMap<BlockHash, (u32, u64)>,
    tick: u64,
}

impl FreqLru {
    /// Adds `h` as the most recent of its frequency class (or refreshes it).
    pub(crate) fn insert(&mut self, h: BlockHash, hits: u32) {
        self.remove(&h);
        self.tick += 1;
        let key = (hits.min(MAX_FREQ), self.tick);
        self.order.insert(key, h);
        self.pos.insert(h, key);
    }

    pub(crate) fn remove(&mut self, h: &BlockHash) -> bool {
        match self.pos.remove(h) {
            Some(key) => {
                self.order.remove(&key);
                true
            }
            None => false,
        }
    }

    /// Takes the victim.
    pub(crate) fn pop(&mut self) -> Option<BlockHash> {
        let (_, h) = self.order.pop_first()?;
        self.pos.remove(&h);
        Some(h)
    }

    pub(crate) fn len(&self) -> usize {
        self.pos.len()
    }

    pub(crate) fn contains(&self, h: &BlockHash) -> bool {
        self.pos.contains_key(h)
    }

    pub(crate) fn clear(&mut self) {
        self.order.clear();
        self.pos.clear();
    }

    /// Both maps agree (tests).
    pub(crate) fn consistent(&self) -> bool {
        self.order.len() == self.pos.len()
            && self.order.iter().all(|(k, h)| self.pos.get(h) == Some(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_frequent_then_least_recent() {
        let mut l = FreqLru::default();
        l.insert(BlockHash(1), 0);
        l.insert(BlockHash(2), 2);
        l.insert(BlockHash(3), 0);
        l.insert(BlockHash(4), 9);
        l.insert(BlockHash(1), 0); // refresh: now newer than 3
        assert_eq!(l.pop(), Some(BlockHash(3)));
        assert_eq!(l.pop(), Some(BlockHash(1)));
        assert_eq!(l.pop(), Some(BlockHash(2)));
        assert_eq!(l.pop(), Some(BlockHash(4)));
        assert_eq!(l.pop(), None);
        assert!(l.consistent());
    }
}
