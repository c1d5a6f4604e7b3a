//! `KvIndex`: which (instance, dp rank) holds which KV block, fed by KV event batches.
//!
//! Hashes are chained, so a worker that holds block `i` of a chain normally holds the whole
//! prefix; the overlap of a worker with a request is the number of *leading* request hashes
//! it holds. Each worker's events carry a monotonic `event_id`; the index tracks the last
//! id per worker and reports when a worker's view became unreliable (a gap, or a first
//! event that is not id 1 or a snapshot), so the caller can ask it for a `DumpKv`.

mod store;

pub use store::{FastHash, FoldHasher};

use ferrite_protocol::{BlockHash, DpRank, InstanceId, KvEventBatch, KvEventData, StorageTier};
use std::collections::{BTreeMap, HashMap, HashSet};
use store::HolderSets;

/// One engine: an (instance, dp rank).
pub type WorkerKey = (InstanceId, DpRank);

#[derive(Clone, Debug)]
struct Worker {
    key: WorkerKey,
    block_size: u32,
    /// Last event id applied (0: none yet).
    last_event_id: u64,
    /// Set on a gap; cleared by a snapshot.
    needs_dump: bool,
    /// Device-tier (G1) blocks: the ones the prefix query counts.
    blocks: HashSet<BlockHash, FastHash>,
    /// Offloaded blocks: bit 1 host (G2), bit 2 disk (G3).
    lower: HashMap<BlockHash, u8, FastHash>,
}

fn tier_bit(t: StorageTier) -> u8 {
    match t {
        StorageTier::Device => 0,
        StorageTier::Host => 1,
        StorageTier::Disk => 2,
    }
}

/// What applying one batch found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// The worker's view is unreliable: ask it for a dump (`ControlMessage::DumpKv`).
    pub dump_needed: bool,
    /// Events applied (duplicates and old ids are skipped, not counted).
    pub applied: usize,
    /// Events skipped because their id was not newer than the last one applied.
    pub skipped: usize,
}

/// The KV block index of every worker the router has heard from.
#[derive(Clone, Debug, Default)]
pub struct KvIndex {
    store: HolderSets,
    workers: Vec<Option<Worker>>,
    slots: HashMap<WorkerKey, u32, FastHash>,
    free_slots: Vec<u32>,
    total: usize,
}

/// Scratch of a prefix query ([`KvIndex::match_prefix`]): per-slot depths, reused between
/// queries so the decision path does not allocate.
#[derive(Clone, Debug, Default)]
pub struct PrefixMatch {
    depth: Vec<u32>,
    active: Vec<u64>,
}

impl KvIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// (worker, block) pairs indexed: the sum over workers of the blocks each holds.
    pub fn total_blocks(&self) -> usize {
        self.total
    }

    /// Distinct block hashes held by at least one worker.
    pub fn unique_blocks(&self) -> usize {
        self.store.len()
    }

    /// Workers with an entry (including ones with no blocks).
    pub fn worker_count(&self) -> usize {
        self.slots.len()
    }

    /// Blocks `key` holds (0 for an unknown worker).
    pub fn worker_blocks(&self, key: WorkerKey) -> usize {
        self.worker(key).map_or(0, |w| w.blocks.len())
    }

    /// The block size `key`'s events declared, if it sent any.
    pub fn worker_block_size(&self, key: WorkerKey) -> Option<u32> {
        self.worker(key).map(|w| w.block_size)
    }

    /// The last event id applied for `key`.
    pub fn last_event_id(&self, key: WorkerKey) -> Option<u64> {
        self.worker(key).map(|w| w.last_event_id)
    }

    /// Whether `key` holds `hash`.
    pub fn contains(&self, key: WorkerKey, hash: BlockHash) -> bool {
        self.worker(key).is_some_and(|w| w.blocks.contains(&hash))
    }

    /// The blocks `key` holds, sorted (tests, debugging).
    pub fn blocks_of(&self, key: WorkerKey) -> Vec<BlockHash> {
        let mut v: Vec<BlockHash> = self
            .worker(key)
            .map(|w| w.blocks.iter().copied().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Workers whose view is unreliable and still waits for a snapshot, sorted.
    pub fn pending_dumps(&self) -> Vec<WorkerKey> {
        let mut v: Vec<WorkerKey> = self
            .workers
            .iter()
            .flatten()
            .filter(|w| w.needs_dump)
            .map(|w| w.key)
            .collect();
        v.sort();
        v
    }

    /// A worker that just joined: whatever it already caches is unknown until its snapshot,
    /// so it waits for a dump (in `pending_dumps` until a `Snapshot` arrives). A worker
    /// already indexed keeps its state.
    pub fn expect_dump(&mut self, key: WorkerKey, block_size: u32) {
        if self.slots.contains_key(&key) {
            return;
        }
        let slot = self.slot_or_insert(key, block_size);
        if let Some(w) = self.workers[slot as usize].as_mut() {
            w.needs_dump = true;
        }
    }

    fn worker(&self, key: WorkerKey) -> Option<&Worker> {
        let slot = *self.slots.get(&key)?;
        self.workers.get(slot as usize)?.as_ref()
    }

    /// The slot of `key`, if known (a stable small integer while the worker stays).
    pub fn slot_of(&self, key: WorkerKey) -> Option<u32> {
        self.slots.get(&key).copied()
    }

    fn slot_or_insert(&mut self, key: WorkerKey, block_size: u32) -> u32 {
        if let Some(&s) = self.slots.get(&key) {
            return s;
        }
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.workers.push(None);
                (self.workers.len() - 1) as u32
            }
        };
        self.store.ensure_slot(slot);
        self.workers[slot as usize] = Some(Worker {
            key,
            block_size,
            last_event_id: 0,
            needs_dump: false,
            blocks: HashSet::default(),
            lower: HashMap::default(),
        });
        self.slots.insert(key, slot);
        slot
    }

    /// Applies one batch of events from one worker.
    ///
    /// - an unknown worker starts with "last id 0": a first event with id 1 or a `Snapshot`
    ///   is trusted, any other first id means history was missed (dump needed);
    /// - an id `<=` the last applied is a duplicate or old: skipped;
    /// - an id `> last + 1` is a gap: applied (the events are still true), dump needed;
    /// - `Snapshot` replaces the worker's set and resets the baseline to its id;
    /// - `Cleared` empties the worker;
    /// - a block size different from the worker's earlier batches empties it (the hash
    ///   space changed) and asks for a dump.
    pub fn apply(&mut self, batch: &KvEventBatch) -> ApplyOutcome {
        let key = (batch.instance_id, batch.dp_rank);
        let slot = self.slot_or_insert(key, batch.block_size);
        let mut out = ApplyOutcome::default();
        let size_changed = self.workers[slot as usize]
            .as_ref()
            .is_some_and(|w| w.block_size != batch.block_size);
        if size_changed {
            tracing::warn!(instance = %key.0, dp_rank = %key.1, block_size = batch.block_size,
                "KV events changed block size; dropping the worker's blocks");
            self.clear_slot(slot);
            if let Some(w) = self.workers[slot as usize].as_mut() {
                w.block_size = batch.block_size;
                w.needs_dump = true;
                w.lower.clear();
            }
            out.dump_needed = true;
        }
        for ev in &batch.events {
            let Some(w) = self.workers[slot as usize].as_mut() else {
                break;
            };
            if ev.event_id <= w.last_event_id {
                out.skipped += 1;
                continue;
            }
            let snapshot = matches!(ev.data, KvEventData::Snapshot { .. });
            if ev.event_id > w.last_event_id + 1 && !snapshot {
                tracing::debug!(instance = %key.0, dp_rank = %key.1, last = w.last_event_id,
                    got = ev.event_id, "KV event gap");
                w.needs_dump = true;
                out.dump_needed = true;
            }
            w.last_event_id = ev.event_id;
            out.applied += 1;
            if ev.storage_tier != StorageTier::Device {
                apply_lower(w, tier_bit(ev.storage_tier), &ev.data);
                continue;
            }
            match &ev.data {
                KvEventData::Stored { blocks, .. } => {
                    for &h in blocks {
                        self.insert(slot, h);
                    }
                }
                KvEventData::Removed { blocks } => {
                    for h in blocks {
                        self.remove(slot, *h);
                    }
                }
                KvEventData::Cleared => self.clear_slot(slot),
                KvEventData::Snapshot { blocks } => {
                    self.clear_slot(slot);
                    if let Some(w) = self.workers[slot as usize].as_mut() {
                        w.lower.clear();
                    }
                    for &h in blocks {
                        self.insert(slot, h);
                    }
                    if let Some(w) = self.workers[slot as usize].as_mut() {
                        w.needs_dump = false;
                    }
                }
            }
        }
        out
    }

    fn insert(&mut self, slot: u32, h: BlockHash) {
        if let Some(w) = self.workers[slot as usize].as_mut()
            && w.blocks.insert(h)
        {
            self.store.insert(h, slot);
            self.total += 1;
        }
    }

    fn remove(&mut self, slot: u32, h: BlockHash) {
        if let Some(w) = self.workers[slot as usize].as_mut()
            && w.blocks.remove(&h)
        {
            self.store.remove(h, slot);
            self.total -= 1;
        }
    }

    fn clear_slot(&mut self, slot: u32) {
        let Some(w) = self.workers[slot as usize].as_mut() else {
            return;
        };
        let blocks = std::mem::take(&mut w.blocks);
        self.total -= blocks.len();
        for h in blocks {
            self.store.remove(h, slot);
        }
    }

    /// Offloaded (G2/G3) blocks `key` holds.
    pub fn worker_lower_blocks(&self, key: WorkerKey) -> usize {
        self.worker(key).map_or(0, |w| w.lower.len())
    }

    /// The tier `key` holds `hash` in, the fastest if several (`None`: not held).
    pub fn tier_of(&self, key: WorkerKey, hash: BlockHash) -> Option<StorageTier> {
        let w = self.worker(key)?;
        if w.blocks.contains(&hash) {
            return Some(StorageTier::Device);
        }
        match w.lower.get(&hash).copied().unwrap_or(0) {
            0 => None,
            b if b & 2 != 0 => Some(StorageTier::Host),
            _ => Some(StorageTier::Disk),
        }
    }

    /// How the prefix continues on `key` after its first `from` (device) blocks: the
    /// leading run of `hashes[from..]` held in any tier, counted per tier (index
    /// `StorageTier::index`). One lookup per counted hash.
    pub fn tier_run(&self, key: WorkerKey, hashes: &[BlockHash], from: usize) -> [u32; 3] {
        let mut n = [0u32; 3];
        let Some(w) = self.worker(key) else {
            return n;
        };
        if w.lower.is_empty() {
            return n;
        }
        for h in hashes.iter().skip(from) {
            let t = if w.blocks.contains(h) {
                StorageTier::Device
            } else {
                match w.lower.get(h).copied().unwrap_or(0) {
                    0 => break,
                    b if b & 2 != 0 => StorageTier::Host,
                    _ => StorageTier::Disk,
                }
            };
            n[t.index()] += 1;
        }
        n
    }

    /// Drops one worker and all its blocks; returns whether it was known.
    pub fn remove_worker(&mut self, key: WorkerKey) -> bool {
        let Some(slot) = self.slots.remove(&key) else {
            return false;
        };
        self.clear_slot(slot);
        self.workers[slot as usize] = None;
        self.free_slots.push(slot);
        true
    }

    /// Drops every dp rank of an instance; returns how many workers were dropped.
    pub fn remove_instance(&mut self, id: InstanceId) -> usize {
        let keys: Vec<WorkerKey> = self.slots.keys().filter(|k| k.0 == id).copied().collect();
        keys.into_iter().filter(|&k| self.remove_worker(k)).count()
    }

    /// Fills `m` with, for every worker, the number of leading `hashes` it holds; read it
    /// with [`KvIndex::depth`]. Cost: one lookup per matched hash plus bitset work.
    pub fn match_prefix(&self, hashes: &[BlockHash], m: &mut PrefixMatch) {
        self.store
            .prefix_depths(hashes, &mut m.depth, &mut m.active);
    }

    /// The overlap of `key` found by the last [`KvIndex::match_prefix`] into `m`.
    pub fn depth(&self, m: &PrefixMatch, key: WorkerKey) -> u32 {
        self.slot_of(key)
            .and_then(|s| m.depth.get(s as usize).copied())
            .unwrap_or(0)
    }

    /// Overlap of every worker with a non-zero overlap (allocates; tests and tools).
    pub fn overlaps(&self, hashes: &[BlockHash]) -> BTreeMap<WorkerKey, u32> {
        let mut m = PrefixMatch::default();
        self.match_prefix(hashes, &mut m);
        self.slots
            .iter()
            .filter_map(|(&k, &s)| {
                let d = m.depth.get(s as usize).copied().unwrap_or(0);
                (d > 0).then_some((k, d))
            })
            .collect()
    }
}

/// Applies a G2/G3 event to a worker's offloaded set (bit `1 << bit`).
fn apply_lower(w: &mut Worker, bit: u8, data: &KvEventData) {
    let mask = 1u8 << bit;
    match data {
        KvEventData::Stored { blocks, .. } | KvEventData::Snapshot { blocks } => {
            for h in blocks {
                *w.lower.entry(*h).or_insert(0) |= mask;
            }
        }
        KvEventData::Removed { blocks } => {
            for h in blocks {
                if let Some(b) = w.lower.get_mut(h) {
                    *b &= !mask;
                    if *b == 0 {
                        w.lower.remove(h);
                    }
                }
            }
        }
        KvEventData::Cleared => {
            w.lower.retain(|_, b| {
                *b &= !mask;
                *b != 0
            });
        }
    }
}

#[cfg(test)]
mod tests;
