//! Errors of the scheduler crate.

/// What can go wrong in the scheduler and its actor shells.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    #[error("kv: {0}")]
    Kv(#[from] ferrite_kv::KvError),
    #[error("invalid config: {0}")]
    Config(String),
    /// The executor returned an error for a step.
    #[error("engine step failed: {0}")]
    EngineFailed(String),
    /// The executor panicked during a step (caught; the engine thread lives on).
    #[error("engine panicked: {0}")]
    EnginePanicked(String),
    /// The engine actor is gone (mailbox closed).
    #[error("engine unavailable: {0}")]
    EngineGone(String),
}

pub type Result<T> = std::result::Result<T, SchedulerError>;
