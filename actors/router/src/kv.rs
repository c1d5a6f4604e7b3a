//! KV-aware routing (ARCHITECTURE.md §6): send a request where its prefix is cached,
//! unless that worker's load outweighs the saved prefill.
//!
//! Cost per candidate: `overlap_weight × prefill_blocks + decode_blocks`, with
//! `prefill_blocks = (pending_prefill_tokens + uncached prompt tokens) / block_size` and
//! `decode_blocks = active_blocks + prompt blocks not cached` (the blocks admission adds).
//! Blocks a worker holds in an offload tier (G2 host memory, G3 disk) right after its
//! device-cached prefix count as partly cached: each saves `1 − TierCosts::{host,disk}` of
//! a block's prefill (it must be copied back first), see [`KvPolicy::cost_tiered`].
//! Lowest cost wins; ties are broken deterministically (see [`TieBreak`]) so that router
//! replicas with the same state pick the same worker. With `temperature > 0` the pick is
//! sampled from softmax(−cost / temperature), seeded by the request id.

use crate::kv_index::{FoldHasher, KvIndex, PrefixMatch, WorkerKey};
use crate::least_loaded::LeastLoaded;
use crate::policy::{Candidate, Choice, RouteRequest, RoutingPolicy};
use ferrite_protocol::hashing::block_hashes;
use ferrite_protocol::{BlockHash, DpRank, InstanceId, KvEventBatch, RequestId, WorkerLoad};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use std::hash::Hasher;

/// How equal-cost candidates are ordered (see docs/benchmarks/routing.md for what each
/// does to replica divergence and load balance).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TieBreak {
    /// Least loaded (`active_blocks + waiting`, which includes this router's optimistic
    /// bumps since the last report), then a hash of (request id, worker). Spreads bursts
    /// by local knowledge, so two replicas often break the same tie differently.
    LeastLoaded,
    /// A candidate caching part of the prompt is ordered by a hash of (the prompt's first
    /// block hash, worker) before load: every replica and every request of a prefix group
    /// pick the same holder (sticky, but piles a burst of one group on one worker until
    /// the next load report); candidates with no overlap fall back to `LeastLoaded`.
    PrefixGroup,
    /// A hash of (request id, worker) only, ignoring replica-local bumps: replicas that
    /// agree on costs agree on the pick, and ties spread evenly by request.
    #[default]
    RequestHash,
}

/// Settings of the KV-aware policy (`--router kv`).
#[derive(Clone, Debug, PartialEq)]
pub struct KvRouterConfig {
    /// Weight of prefill work against decode work (default 1.0).
    pub overlap_weight: f64,
    /// 0 (default): argmin; > 0: softmax sampling over −cost with this temperature.
    pub temperature: f64,
    pub tie_break: TieBreak,
}

impl Default for KvRouterConfig {
    fn default() -> Self {
        Self {
            overlap_weight: 1.0,
            temperature: 0.0,
            tie_break: TieBreak::default(),
        }
    }
}

/// What reusing an offloaded block costs, as a fraction of recomputing it (prefilling its
/// tokens). Defaults: 0.2 for host memory (a PCIe copy of a block takes a fifth or less of
/// its prefill on an H100), 0.5 for local disk (NVMe reads are several times slower).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TierCosts {
    pub host: f64,
    pub disk: f64,
}

impl Default for TierCosts {
    fn default() -> Self {
        Self {
            host: 0.2,
            disk: 0.5,
        }
    }
}

impl TierCosts {
    /// Device-block equivalents of `run` (blocks per tier, see `KvIndex::tier_run`).
    pub fn effective(&self, run: [u32; 3]) -> f64 {
        let f = |c: f64| (1.0 - c).clamp(0.0, 1.0);
        f64::from(run[0]) + f64::from(run[1]) * f(self.host) + f64::from(run[2]) * f(self.disk)
    }
}

/// Request hashes at one block size and the index's prefix match for them.
#[derive(Debug, Default)]
struct SizeScratch {
    block_size: u32,
    hashes: Vec<BlockHash>,
    matched: PrefixMatch,
}

/// One candidate's score in the last decision.
#[derive(Clone, Copy, Debug)]
struct Scored {
    cost: f64,
    overlap: u32,
    prompt_blocks: u32,
    load: u64,
    tie: u64,
}

/// The KV-aware policy: owns the [`KvIndex`], scores candidates by the cost function.
#[derive(Debug)]
pub struct KvPolicy {
    config: KvRouterConfig,
    index: KvIndex,
    sizes: Vec<SizeScratch>,
    used_sizes: usize,
    scored: Vec<Scored>,
    warned_mismatch: HashSet<WorkerKey>,
    mismatches: u64,
    tier_costs: TierCosts,
}

impl KvPolicy {
    /// Sets what offloaded blocks cost (see [`TierCosts`]).
    pub fn with_tier_costs(mut self, costs: TierCosts) -> Self {
        self.tier_costs = costs;
        self
    }

    pub fn new(config: KvRouterConfig) -> Self {
        Self {
            config,
            index: KvIndex::new(),
            sizes: Vec::new(),
            used_sizes: 0,
            scored: Vec::new(),
            warned_mismatch: HashSet::new(),
            mismatches: 0,
            tier_costs: TierCosts::default(),
        }
    }

    pub fn config(&self) -> &KvRouterConfig {
        &self.config
    }

    pub fn index(&self) -> &KvIndex {
        &self.index
    }

    /// Candidates whose indexed block size differed from their registered one (scored with
    /// no overlap rather than mis-routed).
    pub fn block_size_mismatches(&self) -> u64 {
        self.mismatches
    }

    /// The cost of sending a `prompt_tokens`-token prompt with `overlap_blocks` cached
    /// leading blocks to a worker with `load` and `block_size`.
    pub fn cost(
        overlap_weight: f64,
        load: &WorkerLoad,
        block_size: u32,
        prompt_tokens: usize,
        overlap_blocks: u32,
    ) -> f64 {
        Self::cost_tiered(
            overlap_weight,
            load,
            block_size,
            prompt_tokens,
            overlap_blocks,
            f64::from(overlap_blocks),
        )
    }

    /// [`KvPolicy::cost`] with offload tiers: `device_blocks` leading blocks are in the
    /// worker's pool (admission adds only the rest), `effective_blocks` (≥ it) also counts
    /// offloaded blocks at their discounted worth ([`TierCosts::effective`]), which is what
    /// the prefill term saves.
    pub fn cost_tiered(
        overlap_weight: f64,
        load: &WorkerLoad,
        block_size: u32,
        prompt_tokens: usize,
        device_blocks: u32,
        effective_blocks: f64,
    ) -> f64 {
        let bs = block_size.max(1) as usize;
        let cached = (effective_blocks * bs as f64).clamp(0.0, prompt_tokens as f64);
        let uncached = prompt_tokens as f64 - cached;
        let prefill_blocks = (f64::from(load.pending_prefill_tokens) + uncached) / bs as f64;
        let added_blocks = prompt_tokens
            .div_ceil(bs)
            .saturating_sub(device_blocks as usize);
        let decode_blocks = f64::from(load.active_blocks) + added_blocks as f64;
        overlap_weight * prefill_blocks + decode_blocks
    }

    /// Computes (or takes from the request) the hashes for every block size among the
    /// candidates and matches each against the index.
    fn prepare(&mut self, req: &RouteRequest, candidates: &[Candidate]) {
        self.used_sizes = 0;
        for c in candidates {
            let bs = c.kv_block_size.max(1);
            if self.sizes[..self.used_sizes]
                .iter()
                .any(|s| s.block_size == bs)
            {
                continue;
            }
            if self.used_sizes == self.sizes.len() {
                self.sizes.push(SizeScratch::default());
            }
            let s = &mut self.sizes[self.used_sizes];
            self.used_sizes += 1;
            s.block_size = bs;
            let full = req.token_ids.len() / bs as usize;
            if req.hashes_block_size == bs && req.block_hashes.len() == full {
                s.hashes.clear();
                s.hashes.extend_from_slice(&req.block_hashes);
            } else {
                s.hashes = block_hashes(&req.token_ids, bs as usize, req.extra_hash_key);
            }
            self.index.match_prefix(&s.hashes, &mut s.matched);
        }
    }

    fn size(&self, bs: u32) -> Option<&SizeScratch> {
        self.sizes[..self.used_sizes]
            .iter()
            .find(|s| s.block_size == bs)
    }

    fn score(&mut self, req: &RouteRequest, candidates: &[Candidate]) {
        self.prepare(req, candidates);
        let req_seed = request_seed(req.request_id);
        self.scored.clear();
        for c in candidates {
            let bs = c.kv_block_size.max(1);
            let key = (c.instance_id, c.dp_rank);
            let (mut overlap, prompt_blocks, group) = match self.size(bs) {
                Some(s) => (
                    self.index.depth(&s.matched, key),
                    s.hashes.len() as u32,
                    s.hashes.first().map_or(req_seed, |h| h.0),
                ),
                None => (0, 0, req_seed),
            };
            if overlap > 0 && self.index.worker_block_size(key).is_some_and(|b| b != bs) {
                self.mismatches += 1;
                if self.warned_mismatch.insert(key) {
                    tracing::warn!(instance = %c.instance_id, dp_rank = %c.dp_rank,
                        registered = bs, "KV events use another block size; ignoring overlap");
                }
                overlap = 0;
            }
            let run = match self.size(bs) {
                Some(s) if overlap > 0 || self.index.worker_lower_blocks(key) > 0 => {
                    let mismatch = self.index.worker_block_size(key).is_some_and(|b| b != bs);
                    if mismatch {
                        [0; 3]
                    } else {
                        self.index.tier_run(key, &s.hashes, overlap as usize)
                    }
                }
                _ => [0; 3],
            };
            let effective = f64::from(overlap) + self.tier_costs.effective(run);
            let cost = Self::cost_tiered(
                self.config.overlap_weight,
                &c.load,
                bs,
                req.token_ids.len(),
                overlap + run[0],
                effective,
            );
            let overlap = overlap + run[0] + run[1] + run[2];
            let (load, tie) = match self.config.tie_break {
                TieBreak::PrefixGroup if overlap > 0 => (0, tie_hash(group, key)),
                TieBreak::RequestHash => (0, tie_hash(req_seed, key)),
                TieBreak::LeastLoaded | TieBreak::PrefixGroup => {
                    (LeastLoaded::score(&c.load), tie_hash(req_seed, key))
                }
            };
            self.scored.push(Scored {
                cost,
                overlap,
                prompt_blocks,
                load,
                tie,
            });
        }
    }

    fn pick(&self, req: &RouteRequest) -> Option<usize> {
        if self.config.temperature > 0.0 {
            return self.sample(req);
        }
        (0..self.scored.len()).min_by(|&a, &b| {
            let (x, y) = (&self.scored[a], &self.scored[b]);
            x.cost
                .total_cmp(&y.cost)
                .then(x.load.cmp(&y.load))
                .then(x.tie.cmp(&y.tie))
        })
    }

    /// Softmax over −cost / temperature, seeded by the request id.
    fn sample(&self, req: &RouteRequest) -> Option<usize> {
        let min = self.scored.iter().map(|s| s.cost).min_by(f64::total_cmp)?;
        let t = self.config.temperature;
        let weights: Vec<f64> = self
            .scored
            .iter()
            .map(|s| (-(s.cost - min) / t).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        if !total.is_finite() || total <= 0.0 {
            // Non-finite costs (a NaN weight in the config): fall back to the argmin.
            return (0..self.scored.len())
                .min_by(|&a, &b| self.scored[a].cost.total_cmp(&self.scored[b].cost));
        }
        let mut rng = StdRng::seed_from_u64(request_seed(req.request_id));
        let mut x = rng.random_range(0.0..total);
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return Some(i);
            }
            x -= w;
        }
        Some(weights.len() - 1)
    }
}

fn request_seed(id: RequestId) -> u64 {
    let (a, b) = id.0.as_u64_pair();
    a ^ b.rotate_left(32)
}

fn tie_hash(seed: u64, key: WorkerKey) -> u64 {
    let mut h = FoldHasher::default();
    h.write_u64(seed);
    h.write_u64(key.0.0);
    h.write_u32(key.1.0);
    h.finish()
}

impl RoutingPolicy for KvPolicy {
    fn name(&self) -> &'static str {
        "kv"
    }

    fn choose(
        &mut self,
        req: &RouteRequest,
        candidates: &[Candidate],
    ) -> Option<(InstanceId, DpRank)> {
        self.choose_with_overlap(req, candidates)
            .map(|c| (c.instance_id, c.dp_rank))
    }

    fn choose_with_overlap(
        &mut self,
        req: &RouteRequest,
        candidates: &[Candidate],
    ) -> Option<Choice> {
        self.score(req, candidates);
        let i = self.pick(req)?;
        let (c, s) = (candidates.get(i)?, self.scored.get(i)?);
        Some(Choice {
            instance_id: c.instance_id,
            dp_rank: c.dp_rank,
            overlap_blocks: s.overlap,
            prompt_blocks: s.prompt_blocks,
        })
    }

    fn on_kv_events(&mut self, batch: &KvEventBatch) -> Vec<(InstanceId, DpRank)> {
        if self.index.apply(batch).dump_needed {
            vec![(batch.instance_id, batch.dp_rank)]
        } else {
            Vec::new()
        }
    }

    fn on_instance_up(&mut self, instance: InstanceId, dp_size: u32, block_size: u32) {
        for r in 0..dp_size.max(1) {
            self.index.expect_dump((instance, DpRank(r)), block_size);
        }
    }

    fn on_instance_down(&mut self, instance: InstanceId) {
        self.index.remove_instance(instance);
        self.warned_mismatch.retain(|k| k.0 != instance);
    }

    fn pending_dumps(&self) -> Vec<(InstanceId, DpRank)> {
        self.index.pending_dumps()
    }

    fn indexed_blocks(&self) -> Option<usize> {
        Some(self.index.total_blocks())
    }
}
