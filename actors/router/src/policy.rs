//! The `RoutingPolicy` seam, what a policy sees, and the factory (one file per policy).

use crate::kv::{KvPolicy, KvRouterConfig};
use crate::least_loaded::LeastLoaded;
use crate::random::RandomPolicy;
use crate::round_robin::RoundRobin;
use ferrite_protocol::{
    BlockHash, DpRank, InstanceId, KvEventBatch, PreprocessedRequest, RequestId, TokenId,
    WorkerLoad,
};
use std::fmt;
use std::str::FromStr;

/// What the router needs to know about a request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteRequest {
    pub request_id: RequestId,
    pub model: String,
    /// Prompt tokens (on migration: prompt plus generated tokens).
    pub token_ids: Vec<TokenId>,
    /// Chained block hashes of `token_ids` at `hashes_block_size`, when the caller computed
    /// them; empty otherwise. The KV policy uses them for candidates of that block size
    /// (if there is one hash per full block) and computes the others itself with
    /// `ferrite_protocol::hashing::block_hashes`.
    pub block_hashes: Vec<BlockHash>,
    /// Mixed into block hashes (multimodal, LoRA).
    pub extra_hash_key: u64,
    /// The block size `block_hashes` were computed with; 0 = unknown (they are ignored and
    /// recomputed per candidate block size).
    pub hashes_block_size: u32,
    /// Route only to this instance (any of its dp ranks); `RouteError::PinnedUnavailable`
    /// when it is not a live, non-excluded candidate.
    pub pinned: Option<InstanceId>,
}

impl RouteRequest {
    pub fn from_preprocessed(req: &PreprocessedRequest) -> Self {
        Self {
            request_id: req.request_id,
            model: req.model.clone(),
            token_ids: req.token_ids.clone(),
            block_hashes: Vec::new(),
            extra_hash_key: req.extra_hash_key,
            hashes_block_size: 0,
            pinned: None,
        }
    }
}

/// One (instance, dp rank) that can take the request, with its last reported load.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub instance_id: InstanceId,
    pub dp_rank: DpRank,
    pub kv_block_size: u32,
    pub load: WorkerLoad,
}

/// A policy's pick plus what it predicted about the KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    pub instance_id: InstanceId,
    pub dp_rank: DpRank,
    /// Leading full prompt blocks the chosen worker already caches (0 for KV-blind policies).
    pub overlap_blocks: u32,
    /// Full prompt blocks at the chosen worker's block size (the overlap's denominator).
    pub prompt_blocks: u32,
}

/// Picks one candidate for a request. Candidates are live, not excluded, not over the busy
/// threshold, serve the request's model, and come sorted by `(instance_id, dp_rank)`;
/// the slice is never empty.
pub trait RoutingPolicy: Send {
    fn name(&self) -> &'static str;
    fn choose(
        &mut self,
        req: &RouteRequest,
        candidates: &[Candidate],
    ) -> Option<(InstanceId, DpRank)>;
    /// Like `choose`, also saying how many prompt blocks the pick already caches. The
    /// default reports no overlap.
    fn choose_with_overlap(
        &mut self,
        req: &RouteRequest,
        candidates: &[Candidate],
    ) -> Option<Choice> {
        let (instance_id, dp_rank) = self.choose(req, candidates)?;
        let bs = candidates
            .iter()
            .find(|c| c.instance_id == instance_id && c.dp_rank == dp_rank)
            .map_or(1, |c| c.kv_block_size.max(1));
        Some(Choice {
            instance_id,
            dp_rank,
            overlap_blocks: 0,
            prompt_blocks: (req.token_ids.len() / bs as usize) as u32,
        })
    }
    /// KV cache events from one worker (KV-aware policies index them). Returns the workers
    /// whose view became unreliable and need a `ControlMessage::DumpKv`. Default: ignored.
    fn on_kv_events(&mut self, _batch: &KvEventBatch) -> Vec<(InstanceId, DpRank)> {
        Vec::new()
    }
    /// A new instance with `dp_size` ranks of `block_size`-token blocks joined (KV-aware
    /// policies expect a dump of what it already caches). Default: nothing.
    fn on_instance_up(&mut self, _instance: InstanceId, _dp_size: u32, _block_size: u32) {}
    /// An instance left; policies drop what they keep about it. Default: nothing.
    fn on_instance_down(&mut self, _instance: InstanceId) {}
    /// Workers still waiting for a dump (to re-request periodically). Default: none.
    fn pending_dumps(&self) -> Vec<(InstanceId, DpRank)> {
        Vec::new()
    }
    /// (worker, block) pairs indexed, for KV-aware policies. Default: `None`.
    fn indexed_blocks(&self) -> Option<usize> {
        None
    }
}

/// The routing policies available today (`--router`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    #[default]
    RoundRobin,
    Random,
    LeastLoaded,
    /// KV-aware: cost = overlap_weight × prefill blocks + decode blocks.
    Kv,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 4] = [
        PolicyKind::RoundRobin,
        PolicyKind::Random,
        PolicyKind::LeastLoaded,
        PolicyKind::Kv,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::RoundRobin => "round-robin",
            PolicyKind::Random => "random",
            PolicyKind::LeastLoaded => "least-loaded",
            PolicyKind::Kv => "kv",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error of [`PolicyKind::from_str`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown routing policy {0:?} (known: kv, round-robin, random, least-loaded)")]
pub struct UnknownPolicy(pub String);

impl FromStr for PolicyKind {
    type Err = UnknownPolicy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "round-robin" | "roundrobin" => Ok(PolicyKind::RoundRobin),
            "random" => Ok(PolicyKind::Random),
            "least-loaded" | "leastloaded" => Ok(PolicyKind::LeastLoaded),
            "kv" | "kv-aware" => Ok(PolicyKind::Kv),
            _ => Err(UnknownPolicy(s.to_string())),
        }
    }
}

/// Builds a policy (the KV policy with [`KvRouterConfig::default`]).
pub fn make_policy(kind: PolicyKind) -> Box<dyn RoutingPolicy> {
    make_policy_with(kind, &KvRouterConfig::default())
}

/// Builds a policy; `kv` is used by [`PolicyKind::Kv`] only.
pub fn make_policy_with(kind: PolicyKind, kv: &KvRouterConfig) -> Box<dyn RoutingPolicy> {
    match kind {
        PolicyKind::RoundRobin => Box::new(RoundRobin::new()),
        PolicyKind::Random => Box::new(RandomPolicy::new()),
        PolicyKind::LeastLoaded => Box::new(LeastLoaded::new()),
        PolicyKind::Kv => Box::new(KvPolicy::new(kv.clone())),
    }
}
