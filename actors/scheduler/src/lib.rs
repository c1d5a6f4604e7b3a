//! ferrite-scheduler: continuous batching for one engine — admission, chunked prefill,
//! prefix-cache reuse, preemption by recompute, stop conditions in tokens — as the plain
//! type [`Scheduler`], plus thin actix shells ([`actor`]) that drive an `Executor`.

pub mod actor;
pub mod config;
pub mod error;
mod scheduler;
mod sequence;
mod step;

pub use actor::{
    Cancel, Drain, EngineActor, Enqueue, Forward, GetInfo, GetStats, KvSnapshot, OutputSender,
    SchedulerActor, SetEngine, TakeKvEvents,
};
pub use config::SchedulerConfig;
pub use error::{Result, SchedulerError};
pub use scheduler::{Scheduler, SchedulerStats};
