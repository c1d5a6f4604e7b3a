//! The batch a scheduler hands an [`crate::Executor`] each step, and what comes back.

use ferrite_protocol::{
    BlockId, PromptEmbeds, RequestId, SamplingParams, TokenId, TokenLogprob, is_embed_token,
};
use std::sync::Arc;

/// Shape of the paged KV cache an executor holds. The KvBlockManager owns which block
/// belongs to which sequence; the executor owns the memory behind the block ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheSpec {
    /// Number of physical blocks; block ids are `0..num_blocks`.
    pub num_blocks: u32,
    /// Tokens per block.
    pub block_size: u32,
}

/// What an executor tells the scheduler about itself.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecutorInfo {
    /// "cpu", "cuda", "mocker (simulated)".
    pub name: String,
    pub vocab_size: u32,
    /// Longest sequence (prompt + output) the model accepts.
    pub max_context: u32,
    pub kv: KvCacheSpec,
    /// `Some(hidden size)` when prompts may carry precomputed embedding rows of that width
    /// ([`SeqInput::embeds`]); `None` when this backend takes token ids only.
    pub embed_width: Option<u32>,
}

/// Everything the sampler needs for one sequence besides the logits.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct SamplingContext {
    pub params: Arc<SamplingParams>,
    /// Prompt plus generated tokens, present only when `params.needs_history()`.
    pub history: Option<Arc<[TokenId]>>,
    /// Length of the prompt inside `history` (penalties that count only generated tokens).
    pub prompt_len: u32,
    /// Tokens generated so far (before this step).
    pub generated: u32,
    /// Tokens that must not be sampled this step (stop/EOS ids while `min_tokens` is unmet).
    pub banned: Vec<TokenId>,
}

/// One sequence's work in a step: a prefill chunk or one decode token.
#[derive(Clone, Debug, PartialEq)]
pub struct SeqInput {
    pub request_id: RequestId,
    /// Tokens whose K/V this step computes and writes.
    pub tokens: Vec<TokenId>,
    /// Position of `tokens[0]` in the sequence; positions `0..start_pos` are already in the
    /// cache (earlier chunks or prefix-cache hits).
    pub start_pos: u32,
    /// Physical blocks of the sequence in order, covering `0..start_pos + tokens.len()`.
    pub block_table: Vec<BlockId>,
    /// For each of `tokens`, the cache slot `block_id * block_size + offset` it is written to.
    pub slot_mapping: Vec<u32>,
    /// Sample a next token after the last of `tokens` (false for non-final prefill chunks).
    pub sample: bool,
    /// The prompt's precomputed embedding rows: each embedding token of `tokens` (see
    /// `ferrite_protocol::embeds`) takes its row here instead of a token-embedding lookup.
    pub embeds: Option<Arc<PromptEmbeds>>,
    pub sampling: SamplingContext,
}

impl SeqInput {
    /// Position of the token that a sample this step would produce.
    pub fn next_position(&self) -> u32 {
        self.start_pos + self.tokens.len() as u32
    }
}

/// One forward pass over several sequences.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    pub seqs: Vec<SeqInput>,
}

impl Batch {
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.tokens.len()).sum()
    }

    /// Checks the executor contract for a cache of shape `kv` and a model of `vocab` tokens
    /// and `max_context` positions: tokens present, one slot per token, positions within the
    /// context, block tables covering them, block ids, token ids and slots in range, an
    /// embedding row of `embed_width` values for every embedding token (`None`: the backend
    /// takes none). The error names the request and the problem.
    pub fn check(
        &self,
        kv: KvCacheSpec,
        vocab: usize,
        max_context: usize,
        embed_width: Option<usize>,
    ) -> std::result::Result<(), String> {
        let slots = u64::from(kv.num_blocks) * u64::from(kv.block_size);
        for s in &self.seqs {
            let bad = |m: String| format!("request {}: {m}", s.request_id);
            if s.tokens.is_empty() {
                return Err(bad("no tokens".into()));
            }
            if s.slot_mapping.len() != s.tokens.len() {
                return Err(bad("slot_mapping length differs from tokens".into()));
            }
            let end = s.start_pos as usize + s.tokens.len();
            if end > max_context.max(1) {
                return Err(bad(format!(
                    "{end} positions exceed max context {max_context}"
                )));
            }
            if s.block_table.len() * (kv.block_size as usize) < end {
                return Err(bad(format!(
                    "block table covers fewer than {end} positions"
                )));
            }
            if let Some(b) = s.block_table.iter().find(|b| b.0 >= kv.num_blocks) {
                return Err(bad(format!(
                    "block {} beyond {} blocks",
                    b.0, kv.num_blocks
                )));
            }
            for (pos, t) in (s.start_pos..).zip(&s.tokens) {
                if is_embed_token(*t) {
                    let row = s.embeds.as_ref().and_then(|e| e.row(pos));
                    match (row, embed_width) {
                        (_, None) => {
                            return Err(bad("this backend takes no embedding rows".into()));
                        }
                        (None, _) => {
                            return Err(bad(format!(
                                "position {pos} holds an embedding token but no embedding row"
                            )));
                        }
                        (Some(r), Some(w)) if r.len() != w => {
                            return Err(bad(format!(
                                "embedding rows of {} values, the model's hidden size is {w}",
                                r.len()
                            )));
                        }
                        _ => {}
                    }
                } else if *t as usize >= vocab {
                    return Err(bad(format!("token {t} outside vocab {vocab}")));
                }
            }
            if let Some(sl) = s.slot_mapping.iter().find(|x| u64::from(**x) >= slots) {
                return Err(bad(format!("slot {sl} beyond the cache")));
            }
        }
        Ok(())
    }
}

/// The result for one [`SeqInput`] with `sample == true` (same order as the batch).
#[derive(Clone, Debug, PartialEq)]
pub struct SeqOutput {
    pub request_id: RequestId,
    pub token: TokenId,
    pub logprob: Option<TokenLogprob>,
}

/// Outputs of a step: one per sampled sequence, in batch order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchOutput {
    pub outputs: Vec<SeqOutput>,
}

/// Computes the slot of position `pos` given a block table.
pub fn slot_for(block_table: &[BlockId], block_size: u32, pos: u32) -> Option<u32> {
    let idx = (pos / block_size) as usize;
    block_table
        .get(idx)
        .map(|b| b.0 * block_size + pos % block_size)
}
