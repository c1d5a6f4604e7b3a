//! The `RoutingPolicy` seam, what a policy sees, and the factory (one file per policy).

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
    /// Chained block hashes of `token_ids`, when the caller computed them (for the block
    /// size of the candidates); empty otherwise. A KV-aware policy may compute them itself
    /// with `ferrite_protocol::hashing::block_hashes`.
    pub block_hashes: Vec<BlockHash>,
    /// Mixed into block hashes (multimodal, LoRA).
    pub extra_hash_key: u64,
}

impl RouteRequest {
    pub fn from_preprocessed(req: &PreprocessedRequest) -> Self {
        Self {
            request_id: req.request_id,
            model: req.model.clone(),
            token_ids: req.token_ids.clone(),
            block_hashes: Vec::new(),
            extra_hash_key: req.extra_hash_key,
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
    /// KV cache events from one worker (KV-aware policies index them). Default: ignored.
    fn on_kv_events(&mut self, _batch: &KvEventBatch) {}
    /// An instance left; policies drop what they keep about it. Default: nothing.
    fn on_instance_down(&mut self, _instance: InstanceId) {}
}

/// The routing policies available today (`--router`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    #[default]
    RoundRobin,
    Random,
    LeastLoaded,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 3] = [
        PolicyKind::RoundRobin,
        PolicyKind::Random,
        PolicyKind::LeastLoaded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::RoundRobin => "round-robin",
            PolicyKind::Random => "random",
            PolicyKind::LeastLoaded => "least-loaded",
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
#[error("unknown routing policy {0:?} (known: round-robin, random, least-loaded)")]
pub struct UnknownPolicy(pub String);

impl FromStr for PolicyKind {
    type Err = UnknownPolicy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "round-robin" | "roundrobin" => Ok(PolicyKind::RoundRobin),
            "random" => Ok(PolicyKind::Random),
            "least-loaded" | "leastloaded" => Ok(PolicyKind::LeastLoaded),
            _ => Err(UnknownPolicy(s.to_string())),
        }
    }
}

/// Builds a policy.
pub fn make_policy(kind: PolicyKind) -> Box<dyn RoutingPolicy> {
    match kind {
        PolicyKind::RoundRobin => Box::new(RoundRobin::new()),
        PolicyKind::Random => Box::new(RandomPolicy::new()),
        PolicyKind::LeastLoaded => Box::new(LeastLoaded::new()),
    }
}
