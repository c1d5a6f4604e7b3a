//! The `Executor` trait: the one seam between the scheduler and a forward pass.

use crate::batch::{Batch, BatchOutput, ExecutorInfo};
use crate::error::{EngineError, Result};
use ferrite_protocol::BlockId;

/// A backend that runs forward passes over a paged KV cache and samples the next tokens.
///
/// Contract:
/// - The executor allocates the KV memory for `info().kv` at construction: per layer,
///   `num_blocks × block_size` slots of K and V. Block ids come from the scheduler's
///   KvBlockManager; the executor never decides which block a sequence uses.
/// - For each [`crate::SeqInput`], compute the new tokens' hidden states attending over
///   positions `0..start_pos` (read through `block_table`) plus the new tokens themselves
///   (causally), write their K/V at `slot_mapping`, and when `sample` is set, sample one
///   token from the last position's logits with [`crate::sampler`].
/// - Outputs are deterministic for a given batch composition up to floating-point
///   reduction order; a sequence's greedy tokens must not depend on what it was batched with.
/// - An `Err` means the step failed as a whole; the scheduler re-queues the batch's
///   sequences for recompute (their blocks are then rewritten).
///
/// A GPU backend implements this the same way: the cache is one device allocation per
/// layer (`[num_blocks, block_size, kv_heads, head_dim]` for K and V), `block_table` and
/// `slot_mapping` are uploaded per step as int32 tensors, a reshape-and-cache kernel writes
/// the new K/V by slot, paged attention kernels read by block table, and sampling runs on
/// the device (or logits come back to host for the shared sampler). The mocker implements it
/// with a timing model and no cache memory at all.
pub trait Executor: Send + 'static {
    fn info(&self) -> ExecutorInfo;
    fn forward(&mut self, batch: &Batch) -> Result<BatchOutput>;

    /// How one KV block is laid out in bytes, for backends whose cache contents can be
    /// copied out and in (offload tiers, KV transfer between workers). `None`: the backend
    /// has no copyable cache (the mocker).
    fn kv_block_layout(&self) -> Option<KvBlockLayout> {
        None
    }

    /// Copies the K and V of `blocks` (all layers) into `out`, block after block, each
    /// `kv_block_layout().bytes_per_block` bytes.
    fn read_kv_blocks(&mut self, _blocks: &[BlockId], _out: &mut [u8]) -> Result<()> {
        Err(EngineError::Backend(
            "this backend cannot copy KV blocks out".into(),
        ))
    }

    /// Writes `data` (as produced by [`Executor::read_kv_blocks`] of an engine with the
    /// same layout) into `blocks`.
    fn write_kv_blocks(&mut self, _blocks: &[BlockId], _data: &[u8]) -> Result<()> {
        Err(EngineError::Backend(
            "this backend cannot copy KV blocks in".into(),
        ))
    }
}

/// The byte layout of one KV block (the wire type both ends of a KV transfer compare).
pub type KvBlockLayout = ferrite_protocol::KvLayout;

/// Makes a fresh executor for one attention data-parallel rank: at start, and again by the
/// engine supervisor after a crash. Shared by every rank and restart, so it must be
/// `Send + Sync`; it may block (weights are loaded here).
pub type ExecutorFactory = std::sync::Arc<
    dyn Fn(ferrite_protocol::DpRank) -> Result<Box<dyn Executor>> + Send + Sync + 'static,
>;
