//! The blocks one sequence holds.

use ferrite_protocol::BlockId;

/// The physical blocks of one sequence, in order. Obtained from
/// [`crate::BlockPool::allocate_prompt`] and given back with [`crate::BlockPool::free`].
/// Deliberately not `Clone`: one `SeqBlocks` is one set of references, freed once.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "blocks leak unless given back with BlockPool::free"]
pub struct SeqBlocks {
    pub(crate) blocks: Vec<BlockId>,
    /// Leading blocks already registered in the prefix cache (or reused from it).
    pub(crate) num_committed: usize,
    /// Leading blocks that were prefix-cache hits at allocation.
    pub(crate) num_cached: usize,
}

impl SeqBlocks {
    /// The block table, in token order.
    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    /// Number of leading blocks that came from the prefix cache at allocation.
    pub fn num_cached_blocks(&self) -> usize {
        self.num_cached
    }

    /// Number of leading blocks registered in the prefix cache so far.
    pub fn num_committed_blocks(&self) -> usize {
        self.num_committed
    }

    /// Token capacity of the held blocks.
    pub fn capacity(&self, block_size: u32) -> usize {
        self.blocks.len() * block_size as usize
    }
}
