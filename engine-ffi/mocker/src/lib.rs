//! ferrite-mocker: a **simulated** engine. It implements the `Executor` trait with a timing
//! model in place of the forward pass, so the real scheduler and KV block manager run
//! unchanged; its output tokens are a pure function of `(seed, position)`.

mod copy;
pub mod timing;

use ferrite_engine::{
    Batch, BatchOutput, EngineError, Executor, ExecutorInfo, KvCacheSpec, Result, SeqOutput,
};
use ferrite_protocol::{RequestId, TokenId, TokenLogprob};
use std::collections::HashSet;
use std::ops::Range;

/// Configuration of one simulated engine.
#[derive(Clone, Debug)]
pub struct MockerConfig {
    pub kv: KvCacheSpec,
    pub vocab_size: u32,
    /// Tokens the mocker emits: ordinary text tokens of the tokenizer, so that what it
    /// says decodes cleanly (no special tokens, no lone UTF-8 bytes).
    pub token_range: Range<TokenId>,
    pub max_context: u32,
    /// Simulated time is divided by this.
    pub speedup: f64,
    /// Bytes of one KV block as the mocker reports and copies them, for offload tiers and
    /// KV transfer (0, the default: no copyable cache). The mocker holds no cache: reads
    /// return zeros. Keep it small; the time a copy takes comes from
    /// `kv_sim_bytes_per_block`.
    pub kv_bytes_per_block: usize,
    /// Bytes one block would have on the simulated GPU (0: `kv_bytes_per_block`); every
    /// copy of `n` blocks takes `n × this / kv_copy_gbps` of simulated time.
    pub kv_sim_bytes_per_block: usize,
    /// Simulated device↔host copy bandwidth in GB/s (PCIe Gen5 x16 ≈ 25 effective).
    pub kv_copy_gbps: f64,
}

impl Default for MockerConfig {
    fn default() -> Self {
        Self {
            kv: KvCacheSpec {
                num_blocks: 16384,
                block_size: 16,
            },
            vocab_size: 512,
            token_range: 259..512,
            max_context: 8192,
            speedup: 1.0,
            kv_bytes_per_block: 0,
            kv_sim_bytes_per_block: 0,
            kv_copy_gbps: 25.0,
        }
    }
}

/// The simulated engine.
pub struct MockerExecutor {
    cfg: MockerConfig,
}

impl MockerExecutor {
    pub fn new(cfg: MockerConfig) -> Result<Self> {
        if cfg.token_range.is_empty() || cfg.token_range.end > cfg.vocab_size {
            return Err(EngineError::Model(format!(
                "mocker token range {:?} is empty or outside the vocabulary of {}",
                cfg.token_range, cfg.vocab_size
            )));
        }
        Ok(Self { cfg })
    }
}

/// The seed a request without one gets: derived from its id, so still deterministic.
pub fn default_seed(id: RequestId) -> u64 {
    let (a, b) = id.0.as_u64_pair();
    a ^ b.rotate_left(17)
}

/// The token the mocker emits at `position` for `seed`.
pub fn mock_token(seed: u64, position: u32, range: &Range<TokenId>) -> TokenId {
    // SplitMix64 of (seed, position): cheap, well mixed, stable across versions.
    let mut z = seed ^ (position as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let span = (range.end - range.start) as u64;
    range.start + (z % span) as TokenId
}

impl Executor for MockerExecutor {
    fn kv_block_layout(&self) -> Option<ferrite_engine::KvBlockLayout> {
        copy::layout(&self.cfg)
    }

    fn read_kv_blocks(
        &mut self,
        blocks: &[ferrite_protocol::BlockId],
        out: &mut [u8],
    ) -> Result<()> {
        copy::simulate(&self.cfg, blocks, out.len())?;
        out.fill(0);
        Ok(())
    }

    fn write_kv_blocks(&mut self, blocks: &[ferrite_protocol::BlockId], data: &[u8]) -> Result<()> {
        copy::simulate(&self.cfg, blocks, data.len())
    }

    fn info(&self) -> ExecutorInfo {
        ExecutorInfo {
            name: "mocker (simulated engine)".into(),
            vocab_size: self.cfg.vocab_size,
            max_context: self.cfg.max_context,
            kv: self.cfg.kv,
            // A simulated engine has no hidden states to put rows into.
            embed_width: None,
        }
    }

    fn forward(&mut self, batch: &Batch) -> Result<BatchOutput> {
        let mut prefill_tokens = 0;
        let mut decode_seqs = 0;
        let mut blocks = HashSet::new();
        let bs = self.cfg.kv.block_size;
        for s in &batch.seqs {
            let needed = s.next_position().div_ceil(bs) as usize;
            if s.block_table.len() < needed || s.slot_mapping.len() != s.tokens.len() {
                return Err(EngineError::InvalidBatch(format!(
                    "request {}: {} blocks for {} positions, {} slots for {} tokens",
                    s.request_id,
                    s.block_table.len(),
                    s.next_position(),
                    s.slot_mapping.len(),
                    s.tokens.len()
                )));
            }
            if s.start_pos == 0 || s.tokens.len() > 1 {
                prefill_tokens += s.tokens.len();
            } else {
                decode_seqs += 1;
            }
            blocks.extend(s.block_table.iter().copied());
        }
        let usage = blocks.len() as f64 / self.cfg.kv.num_blocks.max(1) as f64;
        std::thread::sleep(timing::step_duration(
            prefill_tokens,
            decode_seqs,
            usage,
            self.cfg.speedup,
        ));
        let span = (self.cfg.token_range.end - self.cfg.token_range.start) as f32;
        let outputs = batch
            .seqs
            .iter()
            .filter(|s| s.sample)
            .map(|s| {
                let seed = s
                    .sampling
                    .params
                    .seed
                    .unwrap_or_else(|| default_seed(s.request_id));
                let token = mock_token(seed, s.next_position(), &self.cfg.token_range);
                // The simulated distribution is uniform over the token range.
                let logprob = s.sampling.params.logprobs.map(|k| TokenLogprob {
                    token_id: token,
                    logprob: -span.ln(),
                    top: (0..k.min(20))
                        .map(|i| {
                            let t = self.cfg.token_range.start
                                + (token - self.cfg.token_range.start + i) % span as u32;
                            (t, -span.ln())
                        })
                        .collect(),
                });
                SeqOutput {
                    request_id: s.request_id,
                    token,
                    logprob,
                }
            })
            .collect();
        Ok(BatchOutput { outputs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_engine::{SamplingContext, SeqInput};
    use ferrite_protocol::{BlockId, SamplingParams};
    use std::sync::Arc;

    fn seq(start: u32, n: usize, seed: u64) -> SeqInput {
        let blocks = (start as usize + n).div_ceil(16);
        SeqInput {
            request_id: RequestId::new(),
            tokens: vec![300; n],
            start_pos: start,
            block_table: (0..blocks as u32).map(BlockId).collect(),
            slot_mapping: (start..start + n as u32).collect(),
            sample: true,
            embeds: None,
            sampling: SamplingContext {
                params: Arc::new(SamplingParams {
                    seed: Some(seed),
                    ..Default::default()
                }),
                ..Default::default()
            },
        }
    }

    #[test]
    fn tokens_are_a_function_of_seed_and_position() {
        let mut m = MockerExecutor::new(MockerConfig {
            speedup: 1e6,
            ..Default::default()
        })
        .unwrap();
        let out = m
            .forward(&Batch {
                seqs: vec![seq(0, 5, 7), seq(9, 1, 7), seq(0, 5, 8)],
            })
            .unwrap();
        let r = 259..512;
        assert_eq!(out.outputs[0].token, mock_token(7, 5, &r));
        assert_eq!(out.outputs[1].token, mock_token(7, 10, &r));
        assert_eq!(out.outputs[2].token, mock_token(8, 5, &r));
        let distinct: HashSet<_> = (0..200).map(|p| mock_token(1, p, &r)).collect();
        assert!(
            distinct.len() > 100,
            "tokens should vary: {}",
            distinct.len()
        );
        assert!((0..1000).all(|p| r.contains(&mock_token(3, p, &r))));
    }

    #[test]
    fn rejects_a_batch_without_enough_blocks() {
        let mut m = MockerExecutor::new(MockerConfig::default()).unwrap();
        let mut s = seq(0, 20, 1);
        s.block_table.truncate(1);
        assert!(m.forward(&Batch { seqs: vec![s] }).is_err());
        assert!(
            MockerExecutor::new(MockerConfig {
                token_range: 5..5,
                ..Default::default()
            })
            .is_err()
        );
    }
}
