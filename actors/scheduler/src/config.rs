//! Scheduler limits.

use ferrite_engine::ExecutorInfo;

/// Limits of one scheduler. Build with [`SchedulerConfig::new`] or
/// [`SchedulerConfig::from_executor`] and adjust fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Tokens per KV block (from the executor's `KvCacheSpec`).
    pub block_size: u32,
    /// Physical KV blocks (from the executor's `KvCacheSpec`).
    pub num_blocks: u32,
    /// Most sequences running at once.
    pub max_num_seqs: usize,
    /// Token budget of one step (decode tokens plus prefill chunks).
    pub max_batched_tokens: usize,
    /// Longest prefill chunk of one sequence in one step.
    pub max_prefill_chunk: usize,
    /// Longest sequence (prompt + output) the model accepts.
    pub max_model_len: usize,
    /// Waiting requests beyond this are refused with `Overloaded`.
    pub waiting_queue_limit: usize,
    /// KV offload tiers (G2 host, G3 disk); `None` (the default): the engine's pool only.
    pub kv_tiers: Option<crate::offload::KvTierOptions>,
    /// Width of the precomputed embedding rows the engine takes (its hidden size); `None`:
    /// requests with embedding rows are refused.
    pub embed_width: Option<u32>,
}

impl SchedulerConfig {
    pub const DEFAULT_MAX_NUM_SEQS: usize = 256;
    pub const DEFAULT_MAX_BATCHED_TOKENS: usize = 2048;
    pub const DEFAULT_WAITING_QUEUE_LIMIT: usize = 1024;

    /// Defaults for a cache of `num_blocks` blocks of `block_size` tokens.
    pub fn new(block_size: u32, num_blocks: u32, max_model_len: usize) -> Self {
        Self {
            block_size,
            num_blocks,
            max_num_seqs: Self::DEFAULT_MAX_NUM_SEQS,
            max_batched_tokens: Self::DEFAULT_MAX_BATCHED_TOKENS,
            max_prefill_chunk: Self::DEFAULT_MAX_BATCHED_TOKENS,
            max_model_len,
            waiting_queue_limit: Self::DEFAULT_WAITING_QUEUE_LIMIT,
            kv_tiers: None,
            embed_width: None,
        }
    }

    /// Defaults for an executor (its KV spec and context length).
    pub fn from_executor(info: &ExecutorInfo) -> Self {
        Self {
            embed_width: info.embed_width,
            ..Self::new(
                info.kv.block_size,
                info.kv.num_blocks,
                info.max_context as usize,
            )
        }
    }

    /// Longest sequence this scheduler lets grow: the model's context, capped by the cache.
    pub fn max_seq_len(&self) -> usize {
        self.max_model_len
            .min(self.num_blocks as usize * self.block_size as usize)
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.max_num_seqs == 0 || self.max_batched_tokens == 0 || self.max_prefill_chunk == 0 {
            return Err(
                "max_num_seqs, max_batched_tokens and max_prefill_chunk must be > 0".into(),
            );
        }
        if self.max_model_len < 2 {
            return Err(format!("max_model_len {} is too small", self.max_model_len));
        }
        Ok(())
    }
}

impl Default for SchedulerConfig {
    /// 16-token blocks, 1024 blocks, 4096-token context; set `block_size`, `num_blocks` and
    /// `max_model_len` from the executor (see [`SchedulerConfig::from_executor`]).
    fn default() -> Self {
        Self::new(16, 1024, 4096)
    }
}
