//! Errors of the block pool and the offload tiers.

/// What can go wrong in [`crate::BlockPool`] and [`crate::OffloadStore`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// Not enough free or evictable blocks; nothing was changed.
    #[error("out of KV blocks: need {needed}, {available} free or evictable")]
    OutOfBlocks { needed: usize, available: usize },
    /// A pool needs at least one block of at least one token.
    #[error("invalid pool shape: {num_blocks} blocks of {block_size} tokens")]
    InvalidShape { num_blocks: u32, block_size: u32 },
    /// A file of the disk tier could not be created or written.
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    /// A block read back from a lower tier is not the one written (checksum, header or
    /// length mismatch, short read): it is a miss and is never given to the engine.
    #[error("corrupt KV block: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, KvError>;

impl KvError {
    pub(crate) fn io(path: &std::path::Path, e: std::io::Error) -> Self {
        KvError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }
}
