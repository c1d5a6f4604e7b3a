//! Routing errors and their wire kinds.

use ferrite_protocol::{ErrorInfo, ErrorKind, InstanceId};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No instance has ever registered this model (HTTP 404).
    #[error("model {0:?} is not served")]
    ModelNotFound(String),
    /// The model is known but no live (non-excluded) instance serves it now (HTTP 503).
    #[error("no live instance serves model {0:?}")]
    NoInstances(String),
    /// The request is pinned to an instance that is not a live, non-excluded candidate for
    /// its model (HTTP 503).
    #[error("pinned instance {instance} is not a live candidate for model {model:?}")]
    PinnedUnavailable { model: String, instance: InstanceId },
    /// Every candidate is over its busy threshold (HTTP 503 with the reason).
    #[error("all {candidates} workers of model {model:?} are busy: {reason}")]
    AllBusy {
        model: String,
        candidates: usize,
        reason: String,
    },
}

impl RouteError {
    /// The serializable kind: `ModelNotFound` → 404, the others → 503 (`Unavailable`).
    pub fn kind(&self) -> ErrorKind {
        match self {
            RouteError::ModelNotFound(_) => ErrorKind::ModelNotFound,
            RouteError::NoInstances(_)
            | RouteError::PinnedUnavailable { .. }
            | RouteError::AllBusy { .. } => ErrorKind::Unavailable,
        }
    }

    /// The error as carried on HTTP (`kind` plus this error's message as the reason).
    pub fn to_error_info(&self) -> ErrorInfo {
        ErrorInfo::new(self.kind(), self.to_string())
    }
}

impl From<RouteError> for ErrorInfo {
    fn from(e: RouteError) -> Self {
        e.to_error_info()
    }
}

pub type Result<T> = std::result::Result<T, RouteError>;
