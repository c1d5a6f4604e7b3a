//! The crate's one error type.

/// What can go wrong building a vocabulary or compiling and running a grammar.
#[derive(Debug, thiserror::Error)]
pub enum StructuredError {
    /// The tokenizer's pieces cannot be turned into bytes (unknown decoder, bad EOS id).
    #[error("vocabulary: {0}")]
    Vocabulary(String),
    /// The constraint itself is malformed (bad JSON, unsupported schema, bad regex).
    #[error("invalid constraint: {0}")]
    InvalidSpec(String),
    /// The grammar engine failed while running (generated tokens outside the language,
    /// parser limits exceeded).
    #[error("grammar: {0}")]
    Grammar(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, StructuredError>;

impl From<StructuredError> for ferrite_engine::EngineError {
    fn from(e: StructuredError) -> Self {
        ferrite_engine::EngineError::InvalidBatch(format!("structured output: {e}"))
    }
}
