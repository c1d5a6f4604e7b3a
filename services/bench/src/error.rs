//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can stop a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad flags or inputs: the CLI exits with status 2.
    #[error("{0}")]
    Config(String),
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] ferrite_model::ModelError),
    #[error("trace {path}, line {line}: {msg}")]
    Trace {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    /// The server answered, but not as an OpenAI server would.
    #[error("server: {0}")]
    Server(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("plot: {0}")]
    Plot(String),
    #[error("task: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl BenchError {
    /// True when the user's flags or input files are at fault (exit status 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, BenchError::Config(_) | BenchError::Trace { .. })
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BenchError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, BenchError>;
