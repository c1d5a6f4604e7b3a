//! Errors of the block pool.

/// What can go wrong in [`crate::BlockPool`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// Not enough free or evictable blocks; nothing was changed.
    #[error("out of KV blocks: need {needed}, {available} free or evictable")]
    OutOfBlocks { needed: usize, available: usize },
    /// A pool needs at least one block of at least one token.
    #[error("invalid pool shape: {num_blocks} blocks of {block_size} tokens")]
    InvalidShape { num_blocks: u32, block_size: u32 },
}

pub type Result<T> = std::result::Result<T, KvError>;
