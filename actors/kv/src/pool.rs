//! [`BlockPool`]: reference-counted physical blocks with a prefix cache.
//!
//! Every block is in exactly one state:
//! - **free**: ref count 0, no hash, on the free list;
//! - **active**: ref count > 0 (held by one or more sequences), hashed or not;
//! - **cached**: ref count 0, hashed, evictable in LRU order.
//!
//! Allocation takes free blocks first, then evicts the least recently used cached block
//! (emitting `Removed`). Blocks registered under a hash emit `Stored`.

use crate::error::{KvError, Result};
use crate::metrics::{count_prefix_hit_tokens, publish_blocks};
use crate::prefix::PrefixIndex;
use crate::seq::SeqBlocks;
use ferrite_protocol::{BlockHash, BlockId, KvEvent, KvEventData};
use metrics::Label;
use std::collections::VecDeque;

/// The state of one physical block (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockState {
    Free,
    Active,
    Cached,
}

#[derive(Clone, Debug, Default)]
struct BlockMeta {
    ref_count: u32,
    hash: Option<BlockHash>,
    /// Set while the block is cached (in the LRU).
    lru_tick: Option<u64>,
    /// Prefix-cache hits since the block was last filled (offload policy).
    hits: u32,
}

/// A hashed block evicted from the pool: its bytes are still in the engine's memory until
/// the next forward pass writes into `block` (see [`BlockPool::record_evictions`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Evicted {
    pub hash: BlockHash,
    pub block: BlockId,
    pub hits: u32,
}

/// The block pool of one engine (one DP rank).
#[derive(Debug)]
pub struct BlockPool {
    block_size: u32,
    meta: Vec<BlockMeta>,
    free: VecDeque<BlockId>,
    prefix: PrefixIndex,
    events: Vec<KvEvent>,
    next_event_id: u64,
    labels: Vec<Label>,
    /// `Some` when evictions are recorded for offloading.
    evictions: Option<Vec<Evicted>>,
}

impl BlockPool {
    /// A pool of `num_blocks` blocks (`BlockId(0..num_blocks)`) of `block_size` tokens.
    pub fn new(num_blocks: u32, block_size: u32) -> Result<Self> {
        if num_blocks == 0 || block_size == 0 {
            return Err(KvError::InvalidShape {
                num_blocks,
                block_size,
            });
        }
        let pool = Self {
            block_size,
            meta: vec![BlockMeta::default(); num_blocks as usize],
            free: (0..num_blocks).map(BlockId).collect(),
            prefix: PrefixIndex::default(),
            events: Vec::new(),
            next_event_id: 1,
            labels: Vec::new(),
            evictions: None,
        };
        pool.publish();
        Ok(pool)
    }

    /// Extra labels (e.g. `instance`, `dp_rank`) on this pool's metrics.
    pub fn with_metric_labels(mut self, labels: Vec<(String, String)>) -> Self {
        self.labels = labels.into_iter().map(|(k, v)| Label::new(k, v)).collect();
        self.publish();
        self
    }

    /// Records every eviction of a hashed block (for offload tiers); read them with
    /// [`BlockPool::take_evictions`] before the engine next writes into the pool.
    pub fn record_evictions(&mut self, on: bool) {
        self.evictions = on.then(Vec::new);
    }

    /// Evictions since the last call (empty unless recording).
    pub fn take_evictions(&mut self) -> Vec<Evicted> {
        self.evictions
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Adds `n` to the hit count of `b` (blocks onboarded from a lower tier keep theirs).
    pub fn add_hits(&mut self, b: BlockId, n: u32) {
        if let Some(m) = self.meta.get_mut(b.0 as usize) {
            m.hits = m.hits.saturating_add(n);
        }
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.meta.len()
    }

    /// Blocks needed to hold `num_tokens` tokens.
    pub fn blocks_for(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.block_size as usize)
    }

    /// Number of leading `hashes` whose blocks are registered (active or cached).
    /// No side effects.
    pub fn match_prefix(&self, hashes: &[BlockHash]) -> usize {
        hashes
            .iter()
            .take_while(|h| self.prefix.contains(h))
            .count()
    }

    /// Blocks for a prompt of `num_tokens` tokens whose full blocks hash to `hashes`:
    /// the leading cached blocks are reused (ref count +1), the rest are allocated.
    /// Pass fewer hashes to limit reuse (e.g. to recompute the last prompt block).
    /// On `OutOfBlocks` nothing changes.
    pub fn allocate_prompt(
        &mut self,
        hashes: &[BlockHash],
        num_tokens: usize,
    ) -> Result<SeqBlocks> {
        let needed = self.blocks_for(num_tokens);
        let hits = self.match_prefix(hashes).min(needed);
        let hit_blocks: Vec<BlockId> = hashes[..hits]
            .iter()
            .filter_map(|h| self.prefix.get(h))
            .collect();
        let cached_hits = hit_blocks
            .iter()
            .filter(|b| self.meta[b.0 as usize].ref_count == 0)
            .count();
        let fresh = needed - hits;
        let available = self.free.len() + self.prefix.num_evictable() - cached_hits;
        if fresh > available {
            return Err(KvError::OutOfBlocks {
                needed: fresh,
                available,
            });
        }
        for &b in &hit_blocks {
            self.acquire(b);
            self.meta[b.0 as usize].hits = self.meta[b.0 as usize].hits.saturating_add(1);
        }
        let mut blocks = hit_blocks;
        let mut evicted = Vec::new();
        for _ in 0..fresh {
            blocks.push(self.take_block(&mut evicted)?);
        }
        self.emit_removed(evicted);
        count_prefix_hit_tokens(&self.labels, hits * self.block_size as usize);
        self.publish();
        Ok(SeqBlocks {
            blocks,
            num_committed: hits,
            num_cached: hits,
        })
    }

    /// Grows `seq` so that it can hold `new_len` tokens. On `OutOfBlocks` nothing changes.
    pub fn append_slot(&mut self, seq: &mut SeqBlocks, new_len: usize) -> Result<()> {
        let needed = self.blocks_for(new_len).saturating_sub(seq.blocks.len());
        if needed == 0 {
            return Ok(());
        }
        let available = self.free.len() + self.prefix.num_evictable();
        if needed > available {
            return Err(KvError::OutOfBlocks { needed, available });
        }
        let mut evicted = Vec::new();
        for _ in 0..needed {
            let b = self.take_block(&mut evicted)?;
            seq.blocks.push(b);
        }
        self.emit_removed(evicted);
        self.publish();
        Ok(())
    }

    /// Registers the blocks of `seq` that became full and computed: `hashes` are the chained
    /// hashes of the sequence's full computed blocks (`hashes[i]` for `seq.blocks()[i]`).
    /// Emits `Stored` for each run of newly registered blocks. A hash already registered to
    /// another block (two sequences computed the same prefix concurrently) leaves this block
    /// unregistered; it returns to the free list when freed.
    pub fn commit_full_blocks(&mut self, seq: &mut SeqBlocks, hashes: &[BlockHash]) {
        let end = hashes.len().min(seq.blocks.len());
        if end <= seq.num_committed {
            return;
        }
        let mut run: Vec<BlockHash> = Vec::new();
        let mut run_parent: Option<BlockHash> = None;
        for i in seq.num_committed..end {
            let b = seq.blocks[i];
            let h = hashes[i];
            let meta = &self.meta[b.0 as usize];
            if meta.hash.is_none() && !self.prefix.contains(&h) {
                if run.is_empty() {
                    run_parent = i.checked_sub(1).map(|p| hashes[p]);
                }
                self.prefix.register(h, b);
                self.meta[b.0 as usize].hash = Some(h);
                run.push(h);
            } else if !run.is_empty() {
                self.emit(KvEventData::Stored {
                    parent: run_parent,
                    blocks: std::mem::take(&mut run),
                });
            }
        }
        if !run.is_empty() {
            self.emit(KvEventData::Stored {
                parent: run_parent,
                blocks: run,
            });
        }
        seq.num_committed = end;
    }

    /// Gives back a sequence's blocks. Hashed blocks whose ref count drops to 0 stay cached
    /// (the sequence's last blocks become the least recently used); others become free.
    pub fn free(&mut self, seq: SeqBlocks) {
        for &b in seq.blocks.iter().rev() {
            let meta = &mut self.meta[b.0 as usize];
            debug_assert!(meta.ref_count > 0, "double free of {b:?}");
            meta.ref_count = meta.ref_count.saturating_sub(1);
            if meta.ref_count == 0 {
                if meta.hash.is_some() {
                    meta.lru_tick = Some(self.prefix.push_lru(b));
                } else {
                    self.free.push_back(b);
                }
            }
        }
        self.publish();
    }

    /// Drops every cached block (cached blocks become free; active blocks lose their hash
    /// and are not re-registered) and emits `Cleared`.
    pub fn clear(&mut self) {
        for (i, meta) in self.meta.iter_mut().enumerate() {
            if meta.hash.take().is_some() && meta.ref_count == 0 {
                meta.lru_tick = None;
                self.free.push_back(BlockId(i as u32));
            }
        }
        self.prefix.clear();
        self.emit(KvEventData::Cleared);
        self.publish();
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    pub fn num_cached(&self) -> usize {
        self.prefix.num_evictable()
    }

    pub fn num_active(&self) -> usize {
        self.meta.len() - self.free.len() - self.prefix.num_evictable()
    }

    /// Fraction of blocks held by sequences.
    pub fn usage(&self) -> f64 {
        self.num_active() as f64 / self.meta.len() as f64
    }

    /// Blocks an allocation could obtain now (free plus evictable).
    pub fn num_available(&self) -> usize {
        self.free.len() + self.prefix.num_evictable()
    }

    pub fn state(&self, b: BlockId) -> Option<BlockState> {
        self.meta
            .get(b.0 as usize)
            .map(|m| match (m.ref_count, m.hash) {
                (0, None) => BlockState::Free,
                (0, Some(_)) => BlockState::Cached,
                _ => BlockState::Active,
            })
    }

    pub fn ref_count(&self, b: BlockId) -> Option<u32> {
        self.meta.get(b.0 as usize).map(|m| m.ref_count)
    }

    /// The block registered under `h`, if any.
    pub fn lookup(&self, h: &BlockHash) -> Option<BlockId> {
        self.prefix.get(h)
    }

    /// Events since the last call, with monotonic `event_id`s starting at 1.
    pub fn take_events(&mut self) -> Vec<KvEvent> {
        std::mem::take(&mut self.events)
    }

    /// Every registered hash (active or cached), in block-id order, for `KvEventData::Snapshot`.
    pub fn snapshot(&self) -> Vec<BlockHash> {
        self.meta.iter().filter_map(|m| m.hash).collect()
    }

    /// Checks the internal invariants; `Err` describes the first violation. For tests.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        let mut on_free = vec![false; self.meta.len()];
        for b in &self.free {
            let i = b.0 as usize;
            if on_free[i] {
                return Err(format!("{b:?} twice on the free list"));
            }
            on_free[i] = true;
        }
        let (mut free, mut cached, mut active) = (0, 0, 0);
        for (i, m) in self.meta.iter().enumerate() {
            let b = BlockId(i as u32);
            match self.state(b) {
                Some(BlockState::Free) => {
                    free += 1;
                    if !on_free[i] || m.lru_tick.is_some() {
                        return Err(format!("free {b:?} not (only) on the free list"));
                    }
                }
                Some(BlockState::Cached) => {
                    cached += 1;
                    let in_lru = m.lru_tick.is_some_and(|t| self.prefix.lru_contains(t, b));
                    if on_free[i] || !in_lru {
                        return Err(format!("cached {b:?} not (only) in the LRU"));
                    }
                }
                _ => {
                    active += 1;
                    if on_free[i] || m.lru_tick.is_some() {
                        return Err(format!("active {b:?} is free or evictable"));
                    }
                }
            }
            if let Some(h) = m.hash
                && self.prefix.get(&h) != Some(b)
            {
                return Err(format!("{b:?} hash {h:?} not indexed to it"));
            }
        }
        if self
            .prefix
            .registered()
            .any(|(h, b)| self.meta[b.0 as usize].hash != Some(*h))
        {
            return Err("index entry for a block with another hash".into());
        }
        let hashed = self.meta.iter().filter(|m| m.hash.is_some()).count();
        if hashed != self.prefix.num_registered() {
            return Err(format!(
                "{hashed} hashed blocks, {} indexed",
                self.prefix.num_registered()
            ));
        }
        if free != self.num_free() || cached != self.num_cached() || active != self.num_active() {
            return Err(format!(
                "counts {free}/{active}/{cached} vs {}/{}/{}",
                self.num_free(),
                self.num_active(),
                self.num_cached()
            ));
        }
        Ok(())
    }

    fn acquire(&mut self, b: BlockId) {
        let meta = &mut self.meta[b.0 as usize];
        if let Some(t) = meta.lru_tick.take() {
            self.prefix.remove_lru(t);
        }
        meta.ref_count += 1;
    }

    /// A free block, else the LRU cached block (its hash goes to `evicted`); ref count 1.
    fn take_block(&mut self, evicted: &mut Vec<BlockHash>) -> Result<BlockId> {
        let b = if let Some(b) = self.free.pop_front() {
            b
        } else if let Some(b) = self.prefix.pop_lru() {
            let meta = &mut self.meta[b.0 as usize];
            meta.lru_tick = None;
            let hits = std::mem::take(&mut meta.hits);
            if let Some(h) = meta.hash.take() {
                self.prefix.unregister(&h);
                evicted.push(h);
                if let Some(log) = self.evictions.as_mut() {
                    log.push(Evicted {
                        hash: h,
                        block: b,
                        hits,
                    });
                }
            }
            b
        } else {
            return Err(KvError::OutOfBlocks {
                needed: 1,
                available: 0,
            });
        };
        self.meta[b.0 as usize].ref_count = 1;
        self.meta[b.0 as usize].hits = 0;
        Ok(b)
    }

    fn emit_removed(&mut self, blocks: Vec<BlockHash>) {
        if !blocks.is_empty() {
            self.emit(KvEventData::Removed { blocks });
        }
    }

    fn emit(&mut self, data: KvEventData) {
        self.events.push(KvEvent::device(self.next_event_id, data));
        self.next_event_id += 1;
    }

    fn publish(&self) {
        publish_blocks(
            &self.labels,
            self.num_free(),
            self.num_active(),
            self.num_cached(),
        );
    }
}

#[cfg(test)]
mod tests;
