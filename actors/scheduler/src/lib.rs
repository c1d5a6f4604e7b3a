//! ferrite-scheduler: continuous batching for one engine — admission, chunked prefill,
//! prefix-cache reuse, preemption by recompute, stop conditions in tokens — as the plain
//! type [`Scheduler`], plus thin actix shells ([`actor`]) that drive an `Executor`, and the
//! [`EngineSupervisor`] that rebuilds a crashed engine.

pub mod actor;
pub mod config;
pub mod error;
pub mod offload;
pub mod remote;
mod scheduler;
mod sequence;
mod step;
pub mod supervisor;

pub use actor::{
    Cancel, Drain, DumpKvEvents, EngineActor, EngineCrashed, Enqueue, FailAll, Forward, GetInfo,
    GetStats, KvSnapshot, OutputSender, SchedulerActor, SetEngine, TakeKvEvents,
};
pub use config::SchedulerConfig;
pub use error::{Result, SchedulerError};
pub use remote::{
    CompleteRemote, Disagg, EnqueuePrefill, FallbackLocal, GetEngine, GetKvLayout, HeldBlocks,
    ReadKvBlocks, ReleaseHeld, RemoteBlocks, RemoteReservation, ReserveRemote, WriteKvBlocks,
    WriteRemote,
};
pub use scheduler::{Scheduler, SchedulerStats};
pub use supervisor::{
    EngineGaveUp, EngineSupervisor, GetRestarts, RestartPolicy, SupervisedRank, SupervisorConfig,
};
