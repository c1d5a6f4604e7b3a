//! Error kinds that cross process boundaries (NATS, HTTP).

use serde::{Deserialize, Serialize};

/// A serializable error kind; each maps to one HTTP status and one metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request is malformed or a field is invalid.
    InvalidRequest,
    /// The requested model is not served.
    ModelNotFound,
    /// The request is larger than a limit on its way (the message bus's payload size).
    PayloadTooLarge,
    /// Too many requests: queue full.
    Overloaded,
    /// No live instance can take the request.
    Unavailable,
    /// The client went away before the first byte.
    ClientClosed,
    /// The request was cancelled.
    Cancelled,
    /// The worker serving the request was lost (stream ended without `end`).
    WorkerLost,
    /// A deadline passed.
    Timeout,
    /// A bug or an unexpected failure.
    Internal,
}

impl ErrorKind {
    /// The HTTP status this kind maps to.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::ModelNotFound => 404,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::Overloaded => 429,
            ErrorKind::Unavailable | ErrorKind::WorkerLost => 503,
            ErrorKind::ClientClosed | ErrorKind::Cancelled => 499,
            ErrorKind::Timeout => 504,
            ErrorKind::Internal => 500,
        }
    }

    /// The metric label and OpenAI error `type` of this kind.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest | ErrorKind::PayloadTooLarge => "invalid_request_error",
            ErrorKind::ModelNotFound => "model_not_found",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Unavailable => "service_unavailable",
            ErrorKind::ClientClosed => "client_closed",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::WorkerLost => "worker_lost",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Internal => "internal_error",
        }
    }

    /// Whether a request that failed this way may be retried on another instance.
    pub fn is_migratable(self) -> bool {
        matches!(self, ErrorKind::WorkerLost | ErrorKind::Unavailable)
    }
}

/// An error with its kind, as carried in a stream or an HTTP body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct ErrorInfo {
    pub kind: ErrorKind,
    pub message: String,
    /// The offending request field, for validation errors.
    #[serde(default)]
    pub param: Option<String>,
}

impl ErrorInfo {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            param: None,
        }
    }

    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::InvalidRequest,
            message: message.into(),
            param: Some(param.into()),
        }
    }
}
