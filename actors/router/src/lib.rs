//! ferrite-router: picks the (worker instance, dp rank) for each request from a registry
//! view of live instances and their load, with pluggable policies and a thin actor shell.

pub mod actor;
pub mod error;
pub mod least_loaded;
pub mod policy;
pub mod random;
pub mod registry;
pub mod round_robin;
pub mod router;

pub use actor::{InstanceDown, InstanceUp, KvEvents, ListModels, LoadReport, Route, RouterActor};
pub use error::{Result, RouteError};
pub use least_loaded::LeastLoaded;
pub use policy::{Candidate, PolicyKind, RouteRequest, RoutingPolicy, UnknownPolicy, make_policy};
pub use random::RandomPolicy;
pub use registry::{InstanceView, Registry};
pub use round_robin::RoundRobin;
pub use router::{Router, RouterConfig};

#[cfg(test)]
mod tests;
