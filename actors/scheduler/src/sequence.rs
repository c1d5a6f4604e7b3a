//! One request's state inside the scheduler.

use ferrite_engine::SamplingContext;
use ferrite_kv::SeqBlocks;
use ferrite_protocol::hashing::{chain, local_block_hash, seed_for};
use ferrite_protocol::{
    BlockHash, FinishReason, PreprocessedRequest, PromptEmbeds, SamplingParams, StopConditions,
    TokenId,
};
use std::sync::Arc;

#[derive(Debug)]
pub(crate) struct Sequence {
    pub params: Arc<SamplingParams>,
    pub stop: StopConditions,
    /// The prompt's precomputed embedding rows, handed to the engine with each chunk.
    pub embeds: Option<Arc<PromptEmbeds>>,
    hash_seed: u64,
    /// Prompt plus every generated token (including `generated_so_far` of a migration).
    pub tokens: Vec<TokenId>,
    /// Length of the original prompt inside `tokens`.
    pub prompt_len: u32,
    /// Generated tokens, counting `generated_so_far`.
    pub generated: u32,
    /// Leading tokens whose K/V is in the cache.
    pub num_computed: usize,
    /// Chained hashes of the full blocks of `tokens`.
    pub hashes: Vec<BlockHash>,
    pub blocks: Option<SeqBlocks>,
    /// True once a token was sampled since the last (re)admission: the sequence decodes.
    pub prefill_done: bool,
    /// Prompt tokens served from the prefix cache at first admission.
    pub cached_tokens: Option<u32>,
    pub sent_first: bool,
    pub cancelled: bool,
    /// Disaggregated serving state (see `remote.rs`).
    pub disagg: crate::remote::Disagg,
}

impl Sequence {
    pub fn new(req: PreprocessedRequest) -> Self {
        let prompt_len = req.token_ids.len() as u32 - req.generated_so_far;
        Self {
            params: Arc::new(req.sampling),
            stop: req.stop,
            embeds: req.prompt_embeds,
            hash_seed: seed_for(req.extra_hash_key),
            tokens: req.token_ids,
            prompt_len,
            generated: req.generated_so_far,
            num_computed: 0,
            hashes: Vec::new(),
            blocks: None,
            prefill_done: false,
            cached_tokens: None,
            sent_first: false,
            cancelled: false,
            disagg: crate::remote::Disagg::None,
        }
    }

    /// Tokens not yet in the cache (at least 1 for a live sequence).
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.num_computed
    }

    /// Extends `hashes` to every full block of `tokens` (same function as the router's).
    pub fn update_hashes(&mut self, block_size: usize) {
        while (self.hashes.len() + 1) * block_size <= self.tokens.len() {
            let i = self.hashes.len();
            let local = local_block_hash(
                &self.tokens[i * block_size..(i + 1) * block_size],
                self.hash_seed,
            );
            let parent = self.hashes.last().copied();
            self.hashes.push(chain(parent, local, self.hash_seed));
        }
    }

    /// What the sampler needs this step.
    pub fn sampling_context(&self) -> SamplingContext {
        let history = self
            .params
            .needs_history()
            .then(|| Arc::<[TokenId]>::from(self.tokens.as_slice()));
        let banned = if !self.stop.ignore_eos && self.generated < self.stop.min_tokens {
            self.stop.stop_token_ids.clone()
        } else {
            Vec::new()
        };
        SamplingContext {
            params: self.params.clone(),
            history,
            prompt_len: self.prompt_len,
            generated: self.generated,
            banned,
        }
    }

    /// Appends a sampled token and says whether the sequence is finished.
    /// `stop_token_ids` (EOS included) end it unless `ignore_eos`, once `min_tokens` were
    /// generated before it; `max_tokens` (0: no limit but the context) and `max_seq_len`
    /// end it with `Length`.
    pub fn push_token(&mut self, token: TokenId, max_seq_len: usize) -> Option<FinishReason> {
        let before = self.generated;
        self.tokens.push(token);
        self.generated += 1;
        if !self.stop.ignore_eos
            && before >= self.stop.min_tokens
            && self.stop.stop_token_ids.contains(&token)
        {
            return Some(FinishReason::Stop);
        }
        if self.stop.max_tokens > 0 && self.generated >= self.stop.max_tokens {
            return Some(FinishReason::Length);
        }
        (self.tokens.len() >= max_seq_len).then_some(FinishReason::Length)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ferrite_protocol::RequestId;
    use ferrite_protocol::hashing::block_hashes;

    fn seq(stop: StopConditions) -> Sequence {
        Sequence::new(PreprocessedRequest {
            request_id: RequestId::new(),
            model: "m".into(),
            token_ids: (0..10).collect(),
            generated_so_far: 0,
            sampling: SamplingParams::default(),
            stop,
            dp_rank: Default::default(),
            extra_hash_key: 3,
            prompt_embeds: None,
        })
    }

    #[test]
    fn hashes_match_protocol_block_hashes() {
        let mut s = seq(StopConditions::default());
        s.update_hashes(4);
        assert_eq!(s.hashes, block_hashes(&s.tokens, 4, 3));
        s.tokens.extend([10, 11]);
        s.update_hashes(4);
        assert_eq!(s.hashes.len(), 3);
        assert_eq!(s.hashes, block_hashes(&s.tokens, 4, 3));
    }

    #[test]
    fn stop_token_respects_min_tokens_and_ignore_eos() {
        let stop = StopConditions {
            max_tokens: 5,
            min_tokens: 2,
            stop_token_ids: vec![99],
            ignore_eos: false,
        };
        let mut s = seq(stop.clone());
        assert_eq!(s.sampling_context().banned, vec![99]);
        assert_eq!(s.push_token(99, 100), None);
        assert_eq!(s.push_token(1, 100), None);
        assert!(s.sampling_context().banned.is_empty());
        assert_eq!(s.push_token(99, 100), Some(FinishReason::Stop));

        let mut s = seq(StopConditions {
            ignore_eos: true,
            ..stop
        });
        assert!(s.sampling_context().banned.is_empty());
        for _ in 0..4 {
            assert_eq!(s.push_token(99, 100), None);
        }
        assert_eq!(s.push_token(99, 100), Some(FinishReason::Length));
        assert_eq!(s.generated, 5);
    }

    #[test]
    fn context_full_is_length() {
        let mut s = seq(StopConditions::default());
        assert_eq!(s.push_token(1, 12), None);
        assert_eq!(s.push_token(1, 12), Some(FinishReason::Length));
    }
}
