//! Offload tiers below the engine's pool (G1): G2 host memory and G3 local disk.
//!
//! [`OffloadStore`] is a plain type the scheduler owns next to its [`crate::BlockPool`].
//! Tiers are exclusive: a block hash lives in at most one of G2 and G3 (and leaves them
//! when it is onboarded back into G1). Policy:
//! - a block evicted from G1 (still identified by its hash) is offloaded to G2;
//! - G2's victim (LRU with frequency) moves to G3 when it was hit at least
//!   `min_hits_for_disk` times, else it is dropped; G3's victim is dropped;
//! - a prompt is matched across tiers with [`OffloadStore::match_prefix`] after G1, and the
//!   matched blocks are taken out with [`OffloadStore::take`] as [`BlockSource`]s that the
//!   engine thread reads (checking disk checksums) and writes into fresh G1 blocks.
//!
//! A failed disk write disables G3 with a warning (offload continues into G2 only); a
//! corrupt disk block is reported by [`BlockSource::read_into`] and treated as a miss.

mod disk;
mod lru;

pub use disk::DiskRead;

/// Bytes a G3 slot adds to each block (its header).
pub use disk::slot_bytes as disk_slot_bytes;

/// Most bytes of G3 writes queued behind the disk; further G2 victims are dropped.
pub const MAX_DISK_BACKLOG: u64 = 256 << 20;

use crate::error::{KvError, Result};
use crate::metrics::TierMetrics;
use disk::DiskFile;
use ferrite_protocol::{BlockHash, KvEventData, StorageTier};
use lru::FreqLru;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

/// Sizes and policy of the offload tiers.
#[derive(Clone, Debug, PartialEq)]
pub struct TierConfig {
    /// Bytes of one block (all layers, K and V), from the engine's `KvBlockLayout`.
    pub bytes_per_block: usize,
    /// G2 capacity in bytes (0: no host tier).
    pub host_bytes: u64,
    /// G3 capacity in bytes (0: no disk tier).
    pub disk_bytes: u64,
    /// Folder of the G3 slot file (required when `disk_bytes > 0`).
    pub disk_dir: Option<PathBuf>,
    /// A G2 victim moves to G3 only if it was hit at least this often (0 or 1: always).
    pub min_hits_for_disk: u32,
}

impl TierConfig {
    pub fn host_blocks(&self) -> usize {
        (self.host_bytes / self.bytes_per_block.max(1) as u64) as usize
    }

    pub fn disk_blocks(&self) -> u32 {
        (self.disk_bytes / disk::slot_bytes(self.bytes_per_block) as u64).min(u64::from(u32::MAX))
            as u32
    }
}

/// Where an onboarded block's bytes come from.
#[derive(Clone, Debug)]
pub enum BlockSource {
    Host(Arc<Vec<u8>>),
    Disk(DiskRead),
}

impl BlockSource {
    pub fn tier(&self) -> StorageTier {
        match self {
            BlockSource::Host(_) => StorageTier::Host,
            BlockSource::Disk(_) => StorageTier::Disk,
        }
    }

    /// Copies the block into `out` (exactly one block); a disk block is verified first.
    pub fn read_into(&self, out: &mut [u8]) -> Result<()> {
        match self {
            BlockSource::Host(data) => {
                if data.len() != out.len() {
                    return Err(KvError::Corrupt(format!(
                        "host block of {} bytes, expected {}",
                        data.len(),
                        out.len()
                    )));
                }
                out.copy_from_slice(data);
                Ok(())
            }
            BlockSource::Disk(r) => r.read_into(out),
        }
    }
}

#[derive(Debug)]
struct HostEntry {
    data: Arc<Vec<u8>>,
    hits: u32,
}

#[derive(Debug)]
struct DiskTier {
    file: DiskFile,
    slots: HashMap<BlockHash, (u32, u32)>,
    free: VecDeque<u32>,
    lru: FreqLru,
    /// A write failed: no more offload to disk.
    disabled: bool,
}

/// Counters since start (tests, benchmarks, metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TierStats {
    pub offloaded_host: u64,
    pub offloaded_disk: u64,
    pub onboarded_host: u64,
    pub onboarded_disk: u64,
    pub dropped: u64,
    pub disk_write_failures: u64,
}

/// G2 and G3 of one engine (see the module docs).
#[derive(Debug)]
pub struct OffloadStore {
    cfg: TierConfig,
    host: HashMap<BlockHash, HostEntry>,
    host_lru: FreqLru,
    host_cap: usize,
    disk: Option<DiskTier>,
    events: Vec<(StorageTier, KvEventData)>,
    stats: TierStats,
    metrics: TierMetrics,
}

impl OffloadStore {
    /// Builds the tiers. A disk tier that cannot be created is left out with a warning
    /// (never an error: the worker serves without it).
    pub fn new(cfg: TierConfig) -> Self {
        let disk = match (&cfg.disk_dir, cfg.disk_blocks()) {
            (_, 0) => None,
            (None, _) => {
                tracing::warn!("disk KV tier has a size but no folder; running without it");
                None
            }
            (Some(dir), n) => match DiskFile::create(dir, n, cfg.bytes_per_block) {
                Ok(f) => {
                    tracing::info!(
                        file = ?f.path(),
                        blocks = n,
                        direct_io = f.is_direct(),
                        "disk KV tier (G3) ready"
                    );
                    Some(DiskTier::new(f))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create the disk KV tier; running without it");
                    None
                }
            },
        };
        Self::with_disk(cfg, disk)
    }

    fn with_disk(cfg: TierConfig, disk: Option<DiskTier>) -> Self {
        let host_cap = cfg.host_blocks();
        let s = Self {
            cfg,
            host: HashMap::new(),
            host_lru: FreqLru::default(),
            host_cap,
            disk,
            events: Vec::new(),
            stats: TierStats::default(),
            metrics: TierMetrics::default(),
        };
        s.publish();
        s
    }

    /// Over an already open disk file of `slots` slots (tests: `/dev/full`, corruption).
    pub fn with_disk_file(cfg: TierConfig, file: std::fs::File, slots: u32) -> Self {
        let disk = match DiskFile::from_file(file, slots, cfg.bytes_per_block) {
            Ok(f) => Some(DiskTier::new(f)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the disk KV tier; running without it");
                None
            }
        };
        Self::with_disk(cfg, disk)
    }

    /// Waits for queued disk writes and applies their outcome (a failure disables G3).
    pub fn flush_disk(&mut self) {
        if let Some(d) = &self.disk {
            d.file.flush();
        }
        self.check_disk_failure();
    }

    /// A write of the writer thread failed: no more offload to disk (blocks whose write
    /// failed stay indexed and fail their check when read: misses).
    fn check_disk_failure(&mut self) {
        let Some(d) = self.disk.as_mut() else {
            return;
        };
        if let Some(e) = d.file.take_failure()
            && !d.disabled
        {
            d.disabled = true;
            self.stats.disk_write_failures += 1;
            self.metrics.offload_failed();
            tracing::warn!(error = %e, "disk KV tier write failed (disk full?); offload to \
                disk disabled, G2 keeps working");
        }
    }

    /// Labels (e.g. `dp_rank`) on the `ferrite_kvbm_*` metrics.
    pub fn with_metric_labels(mut self, labels: Vec<(String, String)>) -> Self {
        self.metrics = TierMetrics::new(labels);
        self.publish();
        self
    }

    pub fn config(&self) -> &TierConfig {
        &self.cfg
    }

    pub fn bytes_per_block(&self) -> usize {
        self.cfg.bytes_per_block
    }

    /// Whether any tier can take blocks.
    pub fn is_enabled(&self) -> bool {
        self.host_cap > 0 || self.disk.as_ref().is_some_and(|d| !d.disabled)
    }

    pub fn stats(&self) -> TierStats {
        self.stats
    }

    pub fn num_host(&self) -> usize {
        self.host.len()
    }

    pub fn num_disk(&self) -> usize {
        self.disk.as_ref().map_or(0, |d| d.slots.len())
    }

    pub fn disk_disabled(&self) -> bool {
        self.disk.as_ref().is_none_or(|d| d.disabled)
    }

    /// The tier holding `h`, if any.
    pub fn tier_of(&self, h: &BlockHash) -> Option<StorageTier> {
        if self.host.contains_key(h) {
            Some(StorageTier::Host)
        } else if self.disk.as_ref().is_some_and(|d| d.slots.contains_key(h)) {
            Some(StorageTier::Disk)
        } else {
            None
        }
    }

    /// Tiers of the leading `hashes` held here (stops at the first miss). No side effects.
    pub fn match_prefix(&self, hashes: &[BlockHash]) -> Vec<StorageTier> {
        hashes.iter().map_while(|h| self.tier_of(h)).collect()
    }

    /// Offloads one block evicted from G1 (hit `hits` times there) into G2, or G3 when
    /// there is no G2. A hash already held is refreshed.
    pub fn offload(&mut self, h: BlockHash, data: Vec<u8>, hits: u32) {
        if data.len() != self.cfg.bytes_per_block {
            tracing::warn!(
                len = data.len(),
                "offload of a block with the wrong size ignored"
            );
            return;
        }
        if let Some(e) = self.host.get_mut(&h) {
            e.hits = e.hits.max(hits);
            self.host_lru.insert(h, e.hits);
            return;
        }
        if self.disk.as_ref().is_some_and(|d| d.slots.contains_key(&h)) {
            return;
        }
        if self.host_cap == 0 {
            self.demote_to_disk(h, &data, hits);
            self.publish();
            return;
        }
        while self.host.len() >= self.host_cap {
            let Some(victim) = self.host_lru.pop() else {
                break;
            };
            if let Some(e) = self.host.remove(&victim) {
                self.emit(
                    StorageTier::Host,
                    KvEventData::Removed {
                        blocks: vec![victim],
                    },
                );
                if e.hits >= self.cfg.min_hits_for_disk {
                    self.demote_to_disk(victim, &e.data, e.hits);
                } else {
                    self.stats.dropped += 1;
                }
            }
        }
        self.host.insert(
            h,
            HostEntry {
                data: Arc::new(data),
                hits,
            },
        );
        self.host_lru.insert(h, hits);
        self.stats.offloaded_host += 1;
        self.metrics.offloaded(StorageTier::Host, 1);
        self.emit(StorageTier::Host, stored(h));
        self.publish();
    }

    fn demote_to_disk(&mut self, h: BlockHash, data: &[u8], hits: u32) {
        self.check_disk_failure();
        let Some(d) = self.disk.as_mut().filter(|d| !d.disabled) else {
            self.stats.dropped += 1;
            return;
        };
        if d.file.queued_bytes() >= MAX_DISK_BACKLOG {
            // The disk is slower than eviction: drop this block rather than queue without
            // bound (the writes already queued keep their memory until they land).
            self.stats.dropped += 1;
            return;
        }
        let mut removed = Vec::new();
        if d.free.is_empty()
            && let Some(victim) = d.lru.pop()
            && let Some((slot, _)) = d.slots.remove(&victim)
        {
            d.free.push_back(slot);
            removed.push(victim);
            self.stats.dropped += 1;
        }
        let Some(slot) = d.free.pop_front() else {
            self.stats.dropped += 1;
            return;
        };
        match d.file.write(slot, h, data) {
            Ok(()) => {
                d.slots.insert(h, (slot, hits));
                d.lru.insert(h, hits);
                self.stats.offloaded_disk += 1;
                self.metrics.offloaded(StorageTier::Disk, 1);
                if !removed.is_empty() {
                    self.emit(StorageTier::Disk, KvEventData::Removed { blocks: removed });
                }
                self.emit(StorageTier::Disk, stored(h));
            }
            Err(e) => {
                d.free.push_back(slot);
                d.disabled = true;
                self.stats.disk_write_failures += 1;
                self.stats.dropped += 1;
                self.metrics.offload_failed();
                tracing::warn!(error = %e, "disk KV tier write failed (disk full?); offload to \
                    disk disabled, blocks already on disk stay readable");
                if !removed.is_empty() {
                    self.emit(StorageTier::Disk, KvEventData::Removed { blocks: removed });
                }
            }
        }
    }

    /// Takes the blocks of `hashes` out of the tiers for onboarding (all of them must be
    /// held: call with a prefix found by [`OffloadStore::match_prefix`]; a missing one ends
    /// the list). Emits `Removed` for them.
    pub fn take(&mut self, hashes: &[BlockHash]) -> Vec<(BlockHash, BlockSource, u32)> {
        let mut out = Vec::with_capacity(hashes.len());
        let (mut from_host, mut from_disk) = (Vec::new(), Vec::new());
        for &h in hashes {
            if let Some(e) = self.host.remove(&h) {
                self.host_lru.remove(&h);
                from_host.push(h);
                out.push((h, BlockSource::Host(e.data), e.hits));
                continue;
            }
            let Some(d) = self.disk.as_mut() else { break };
            let Some((slot, hits)) = d.slots.remove(&h) else {
                break;
            };
            d.lru.remove(&h);
            d.free.push_back(slot);
            from_disk.push(h);
            out.push((h, BlockSource::Disk(d.file.read_plan(slot, h)), hits));
        }
        self.stats.onboarded_host += from_host.len() as u64;
        self.stats.onboarded_disk += from_disk.len() as u64;
        if !from_host.is_empty() {
            self.emit(
                StorageTier::Host,
                KvEventData::Removed { blocks: from_host },
            );
        }
        if !from_disk.is_empty() {
            self.emit(
                StorageTier::Disk,
                KvEventData::Removed { blocks: from_disk },
            );
        }
        self.publish();
        out
    }

    /// Records a finished onboarding of `blocks` blocks from `tier` that took `seconds`
    /// (read from the tier plus write into G1), and `corrupt` blocks that failed their check.
    pub fn record_onboard(&self, tier: StorageTier, blocks: u64, seconds: f64, corrupt: u64) {
        let bytes = blocks * self.cfg.bytes_per_block as u64;
        self.metrics.onboarded(tier, blocks, bytes, seconds);
        if corrupt > 0 {
            self.metrics.corrupt(corrupt);
        }
    }

    /// Records one prompt lookup: blocks found per tier (G1, G2, G3) and missed.
    pub fn record_lookup(&self, per_tier: [u64; 3], miss: u64) {
        self.metrics.lookup(per_tier, miss);
    }

    /// Drops everything (emits `Cleared` per tier).
    pub fn clear(&mut self) {
        self.host.clear();
        self.host_lru.clear();
        self.emit(StorageTier::Host, KvEventData::Cleared);
        if let Some(d) = self.disk.as_mut() {
            for (_, (slot, _)) in d.slots.drain() {
                d.free.push_back(slot);
            }
            d.lru.clear();
            self.emit(StorageTier::Disk, KvEventData::Cleared);
        }
        self.publish();
    }

    /// Events since the last call, each with its tier.
    pub fn take_events(&mut self) -> Vec<(StorageTier, KvEventData)> {
        std::mem::take(&mut self.events)
    }

    /// Every held hash per tier, for a dump (as `Stored` events after a G1 snapshot).
    pub fn snapshot(&self) -> Vec<(StorageTier, Vec<BlockHash>)> {
        let mut v = vec![(StorageTier::Host, self.host.keys().copied().collect())];
        if let Some(d) = &self.disk {
            v.push((StorageTier::Disk, d.slots.keys().copied().collect()));
        }
        v
    }

    /// Flips a byte of `h`'s disk block (tests: corruption). False when not on disk.
    pub fn corrupt_disk_block(&self, h: &BlockHash) -> bool {
        self.disk.as_ref().is_some_and(|d| {
            d.slots
                .get(h)
                .is_some_and(|(slot, _)| d.file.corrupt(*slot).is_ok())
        })
    }

    /// Checks internal invariants (tests): each hash in one tier at most, LRUs mirror the
    /// maps, capacities hold, disk slots are either used once or free.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        if self.host.len() > self.host_cap {
            return Err(format!(
                "host holds {} > {}",
                self.host.len(),
                self.host_cap
            ));
        }
        if self.host_lru.len() != self.host.len() || !self.host_lru.consistent() {
            return Err("host LRU differs from the host map".into());
        }
        if self.host.keys().any(|h| !self.host_lru.contains(h)) {
            return Err("host block missing from its LRU".into());
        }
        if let Some(d) = &self.disk {
            if d.lru.len() != d.slots.len() || !d.lru.consistent() {
                return Err("disk LRU differs from the slot map".into());
            }
            if let Some(h) = d.slots.keys().find(|h| self.host.contains_key(h)) {
                return Err(format!("{h:?} both in host and disk"));
            }
            let mut seen = vec![false; d.file.slots as usize];
            for s in d.slots.values().map(|v| v.0).chain(d.free.iter().copied()) {
                let Some(x) = seen.get_mut(s as usize) else {
                    return Err(format!("slot {s} beyond the file"));
                };
                if *x {
                    return Err(format!("slot {s} used twice"));
                }
                *x = true;
            }
            if seen.iter().any(|x| !x) {
                return Err("a disk slot is neither used nor free".into());
            }
        }
        Ok(())
    }

    fn emit(&mut self, tier: StorageTier, data: KvEventData) {
        self.events.push((tier, data));
    }

    fn publish(&self) {
        let bpb = self.cfg.bytes_per_block as u64;
        self.metrics
            .held(StorageTier::Host, self.host.len() as u64, bpb);
        self.metrics
            .held(StorageTier::Disk, self.num_disk() as u64, bpb);
    }
}

impl DiskTier {
    fn new(file: DiskFile) -> Self {
        Self {
            free: (0..file.slots).collect(),
            file,
            slots: HashMap::new(),
            lru: FreqLru::default(),
            disabled: false,
        }
    }
}

fn stored(h: BlockHash) -> KvEventData {
    KvEventData::Stored {
        parent: None,
        blocks: vec![h],
    }
}

#[cfg(test)]
mod tests;
