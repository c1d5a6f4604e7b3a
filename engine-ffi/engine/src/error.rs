//! Errors of the engine crates.

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    #[error("model: {0}")]
    Model(String),
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("backend: {0}")]
    Backend(String),
}

pub type Result<T> = std::result::Result<T, EngineError>;
