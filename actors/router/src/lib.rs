//! ferrite-router: picks the (worker instance, dp rank) for each request from a registry
//! view of live instances and their load, with pluggable policies and a thin actor shell.

pub mod actor;
pub mod error;
pub mod kv;
pub mod kv_index;
pub mod least_loaded;
pub mod policy;
pub mod random;
pub mod registry;
pub mod round_robin;
pub mod router;

pub use actor::{
    InstanceDown, InstanceUp, KvEvents, KvIndexedBlocks, ListModels, LoadReport, PendingDumps,
    Route, RouteWithOverlap, RouterActor,
};
pub use error::{Result, RouteError};
pub use kv::{KvPolicy, KvRouterConfig, TieBreak, TierCosts};
pub use kv_index::{ApplyOutcome, KvIndex, PrefixMatch, WorkerKey};
pub use least_loaded::LeastLoaded;
pub use policy::{
    Candidate, Choice, PolicyKind, RouteRequest, RoutingPolicy, UnknownPolicy, make_policy,
    make_policy_with,
};
pub use random::RandomPolicy;
pub use registry::{InstanceView, Registry};
pub use round_robin::RoundRobin;
pub use router::{RouteDecision, Router, RouterConfig};

#[cfg(test)]
mod kv_tests;
#[cfg(test)]
mod kv_tier_tests;
#[cfg(test)]
mod tests;
