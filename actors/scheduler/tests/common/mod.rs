//! Test doubles shared by the scheduler tests: `TestExecutor` is a fake engine (NOT a model)
//! that keeps a simulated paged KV cache of raw tokens, checks every batch against the
//! executor contract, and "samples" a deterministic hash of the whole context it read back
//! from the cache. A wrong block table, slot mapping or prefix-cache reuse therefore changes
//! the output, which `reference_output` computes from the true token sequence.
#![allow(dead_code, clippy::unwrap_used)]

use ferrite_engine::{
    Batch, BatchOutput, EngineError, Executor, ExecutorInfo, KvCacheSpec, SeqOutput, slot_for,
};
use ferrite_protocol::{
    DpRank, EngineOutput, FinishReason, PreprocessedRequest, RequestId, SamplingParams,
    StopConditions, TokenId,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub const VOCAB: u32 = 64;

/// The fake model: a hash of the whole context, skipping banned tokens.
pub fn next_token(context: &[TokenId], banned: &[TokenId]) -> TokenId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for t in context {
        h ^= u64::from(*t);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    let mut tok = (h >> 7) as u32 % VOCAB;
    while banned.contains(&tok) {
        tok = (tok + 1) % VOCAB;
    }
    tok
}

/// What the scheduler must produce for `req` (independent of batching), and why it ends.
pub fn reference_output(
    req: &PreprocessedRequest,
    max_seq_len: usize,
) -> (Vec<TokenId>, FinishReason) {
    let mut ctx = req.token_ids.clone();
    let mut out = Vec::new();
    let mut generated = req.generated_so_far;
    loop {
        let banned = if !req.stop.ignore_eos && generated < req.stop.min_tokens {
            req.stop.stop_token_ids.clone()
        } else {
            vec![]
        };
        let tok = next_token(&ctx, &banned);
        ctx.push(tok);
        out.push(tok);
        let before = generated;
        generated += 1;
        if !req.stop.ignore_eos
            && before >= req.stop.min_tokens
            && req.stop.stop_token_ids.contains(&tok)
        {
            return (out, FinishReason::Stop);
        }
        if req.stop.max_tokens > 0 && generated >= req.stop.max_tokens {
            return (out, FinishReason::Length);
        }
        if ctx.len() >= max_seq_len {
            return (out, FinishReason::Length);
        }
    }
}

pub fn request(prompt: Vec<TokenId>, max_tokens: u32) -> PreprocessedRequest {
    PreprocessedRequest {
        request_id: RequestId::new(),
        model: "test".into(),
        token_ids: prompt,
        generated_so_far: 0,
        sampling: SamplingParams::default(),
        stop: StopConditions {
            max_tokens,
            ..Default::default()
        },
        dp_rank: DpRank(0),
        extra_hash_key: 0,
        prompt_embeds: None,
    }
}

/// Counters the test executor shares with the test.
#[derive(Default)]
pub struct ExecLog {
    pub steps: AtomicUsize,
    pub max_step_tokens: AtomicUsize,
    pub computed_tokens: AtomicUsize,
    /// Panic on this 1-based call number (0: never).
    pub panic_on_call: AtomicUsize,
    /// Return an error on this 1-based call number (0: never).
    pub fail_on_call: AtomicUsize,
}

/// The fake engine (see the module docs).
pub struct TestExecutor {
    kv: KvCacheSpec,
    max_context: u32,
    /// (token, position) written at each slot.
    cache: Vec<Option<(TokenId, u32)>>,
    pub log: Arc<ExecLog>,
    calls: usize,
}

impl TestExecutor {
    pub fn new(num_blocks: u32, block_size: u32, max_context: u32) -> Self {
        Self {
            kv: KvCacheSpec {
                num_blocks,
                block_size,
            },
            max_context,
            cache: vec![None; (num_blocks * block_size) as usize],
            log: Arc::new(ExecLog::default()),
            calls: 0,
        }
    }

    fn check_and_run(&mut self, batch: &Batch) -> Result<BatchOutput, String> {
        let bs = self.kv.block_size;
        let mut outputs = Vec::new();
        let mut ids = std::collections::HashSet::new();
        for s in &batch.seqs {
            if !ids.insert(s.request_id) {
                return Err("sequence twice in a batch".into());
            }
            let end = s.start_pos + s.tokens.len() as u32;
            if s.tokens.is_empty() || s.slot_mapping.len() != s.tokens.len() {
                return Err("empty input or slot mapping length mismatch".into());
            }
            if s.block_table.len() != end.div_ceil(bs) as usize {
                return Err(format!(
                    "block table of {} blocks for {end} tokens",
                    s.block_table.len()
                ));
            }
            for (i, slot) in s.slot_mapping.iter().enumerate() {
                if slot_for(&s.block_table, bs, s.start_pos + i as u32) != Some(*slot) {
                    return Err("slot mapping disagrees with block table".into());
                }
            }
            let mut context = Vec::with_capacity(end as usize);
            for p in 0..s.start_pos {
                let slot = slot_for(&s.block_table, bs, p).ok_or("no slot")? as usize;
                match self.cache[slot] {
                    Some((t, pos)) if pos == p => context.push(t),
                    other => return Err(format!("cache slot {slot} for pos {p} holds {other:?}")),
                }
            }
            for (t, slot) in s.tokens.iter().zip(&s.slot_mapping) {
                let pos = context.len() as u32;
                self.cache[*slot as usize] = Some((*t, pos));
                context.push(*t);
            }
            if let Some(h) = &s.sampling.history
                && h[..] != context[..]
            {
                return Err("history differs from the cached context".into());
            }
            if (s.sample && s.sampling.params.needs_history()) != s.sampling.history.is_some() {
                return Err("history present iff sampling and needs_history".into());
            }
            if s.sample {
                outputs.push(SeqOutput {
                    request_id: s.request_id,
                    token: next_token(&context, &s.sampling.banned),
                    logprob: None,
                });
            }
        }
        Ok(BatchOutput { outputs })
    }
}

impl Executor for TestExecutor {
    fn info(&self) -> ExecutorInfo {
        ExecutorInfo {
            name: "test executor (fake)".into(),
            vocab_size: VOCAB,
            max_context: self.max_context,
            kv: self.kv,
            embed_width: None,
        }
    }

    fn forward(&mut self, batch: &Batch) -> ferrite_engine::Result<BatchOutput> {
        self.calls += 1;
        if self.log.panic_on_call.load(Ordering::SeqCst) == self.calls {
            panic!("test executor: deliberate panic on call {}", self.calls);
        }
        if self.log.fail_on_call.load(Ordering::SeqCst) == self.calls {
            return Err(EngineError::Backend("deliberate failure".into()));
        }
        let n = batch.num_tokens();
        self.log.steps.fetch_add(1, Ordering::SeqCst);
        self.log.max_step_tokens.fetch_max(n, Ordering::SeqCst);
        self.log.computed_tokens.fetch_add(n, Ordering::SeqCst);
        self.check_and_run(batch).map_err(EngineError::InvalidBatch)
    }
}

/// Collected output of one request.
#[derive(Debug, Default, Clone)]
pub struct Collected {
    pub tokens: Vec<TokenId>,
    pub finish: Option<FinishReason>,
    pub cached_tokens: Vec<Option<u32>>,
}

impl Collected {
    pub fn push(&mut self, o: EngineOutput) {
        assert!(self.finish.is_none(), "chunk after the final chunk");
        self.tokens.extend(o.token_ids);
        self.finish = o.finish_reason;
        self.cached_tokens.push(o.cached_tokens);
    }
}
