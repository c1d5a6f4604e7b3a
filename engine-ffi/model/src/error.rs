//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while reading model files.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A required file is absent.
    #[error("{path}: file not found ({what})")]
    MissingFile { path: PathBuf, what: String },
    /// A GGUF file is malformed, truncated or uses something we do not support.
    #[error("{path}: invalid GGUF: {msg}")]
    Gguf { path: PathBuf, msg: String },
    /// A quantised buffer does not match its declared type and length.
    #[error("dequantize {dtype}: {msg}")]
    Dequant { dtype: String, msg: String },
    /// A JSON file (config.json, tokenizer_config.json, ...) failed to parse.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// The model configuration is missing a field or holds an impossible value.
    #[error("{path}: invalid model config: {msg}")]
    Config { path: PathBuf, msg: String },
    /// The architecture is not one this engine implements.
    #[error("{path}: unsupported architecture `{arch}` (supported: Llama, Mistral, Qwen2, Qwen3)")]
    UnsupportedArchitecture { path: PathBuf, arch: String },
    /// The tokenizer could not be built or failed on an input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A chat template failed to compile or render.
    #[error("chat template: {0}")]
    Template(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, ModelError>;
