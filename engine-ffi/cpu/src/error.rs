//! The one error type of the CPU backend.

use ferrite_engine::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{path}: unsupported model: {message}")]
    Unsupported { path: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    #[error("thread pool: {0}")]
    ThreadPool(String),
    /// Reading the config or a GGUF file (through `ferrite-model`) failed.
    #[error(transparent)]
    Model(#[from] ferrite_model::ModelError),
}

pub type Result<T> = std::result::Result<T, CpuError>;

impl CpuError {
    pub(crate) fn file(path: &std::path::Path, message: impl Into<String>) -> Self {
        CpuError::File {
            path: path.display().to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn unsupported(path: &std::path::Path, message: impl Into<String>) -> Self {
        CpuError::Unsupported {
            path: path.display().to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        CpuError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

impl From<CpuError> for EngineError {
    fn from(e: CpuError) -> Self {
        match e {
            CpuError::InvalidBatch(m) => EngineError::InvalidBatch(m),
            CpuError::File { path, message } => EngineError::File { path, message },
            CpuError::Unsupported { path, message } => EngineError::File {
                path,
                message: format!("unsupported model: {message}"),
            },
            CpuError::Io { path, source } => EngineError::File {
                path,
                message: source.to_string(),
            },
            CpuError::ThreadPool(m) => EngineError::Backend(m),
            CpuError::Model(e) => EngineError::Model(e.to_string()),
        }
    }
}
