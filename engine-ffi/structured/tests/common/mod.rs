//! Shared driver for the real-model tests: SmolLM2-135M-Instruct on `CpuExecutor`, one
//! sequence at a time, sampling through `ferrite-engine`'s sampler.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use ferrite_cpu::{CpuExecutor, CpuOptions};
use ferrite_engine::{
    Batch, Executor, GuidedProvider, LogitsProcessorRegistry, SamplerScratch, SamplingContext,
    SeqInput, slot_for, try_sample_with,
};
use ferrite_model::ModelCard;
use ferrite_protocol::{BlockId, GuidedDecoding, RequestId, SamplingParams};
use ferrite_structured::StructuredProvider;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

pub const BLOCK: u32 = 16;
pub const BLOCKS: u32 = 64;
pub const GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// `FERRITE_MODELS_DIR` (or `FERRITE_TEST_MODELS`), default `../shared/models` beside the
/// repository.
pub fn models_dir() -> PathBuf {
    for var in ["FERRITE_MODELS_DIR", "FERRITE_TEST_MODELS"] {
        if let Ok(p) = std::env::var(var) {
            return PathBuf::from(p);
        }
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models")
}

pub fn smollm2_dir() -> PathBuf {
    let p = models_dir().join("smollm2-135m-instruct");
    assert!(
        p.join("tokenizer.json").is_file(),
        "test model {} not found: set FERRITE_MODELS_DIR to the shared models folder",
        p.display()
    );
    p
}

pub struct Model {
    pub card: ModelCard,
    pub ex: Mutex<CpuExecutor>,
    /// The globally installed provider (what `CpuExecutor::forward` uses).
    pub provider: Arc<StructuredProvider>,
}

/// The model, loaded once per test binary, with structured output installed.
pub fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        let dir = smollm2_dir();
        // The folder has tokenizer.json + config.json but GGUF weights: the card (and so
        // the tokenizer) comes from the .gguf, as for a worker serving that file.
        let card = ModelCard::load(dir.join(GGUF)).expect("model card");
        let provider = ferrite_structured::install_provider(&card.tokenizer, &card.eos_token_ids)
            .expect("install");
        let ex = CpuExecutor::load(
            &dir.join(GGUF),
            CpuOptions {
                num_kv_blocks: BLOCKS,
                block_size: BLOCK,
                threads: 0,
                f32_activations: false,
            },
        )
        .expect("load SmolLM2");
        Model {
            card,
            ex: Mutex::new(ex),
            provider,
        }
    })
}

impl Model {
    pub fn executor(&self) -> MutexGuard<'_, CpuExecutor> {
        self.ex.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The chat prompt of one user message.
    pub fn chat_prompt(&self, user: &str) -> Vec<u32> {
        let text = format!(
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by \
             Hugging Face<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
        );
        self.card.tokenizer.encode(&text, false).expect("encode")
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        self.card.tokenizer.decode(ids, false).expect("decode")
    }

    pub fn is_eos(&self, t: u32) -> bool {
        self.card.eos_token_ids.contains(&t)
    }
}

pub fn params(spec: GuidedDecoding, temperature: f32, seed: u64) -> Arc<SamplingParams> {
    Arc::new(SamplingParams {
        temperature,
        seed: Some(seed),
        guided: Some(spec),
        ..SamplingParams::default()
    })
}

/// How a step samples: through `Executor::forward` (the global provider), or from
/// `forward_logits` with an explicit provider (another "worker").
pub enum Via<'a> {
    Forward,
    Provider(&'a dyn GuidedProvider),
}

/// Generates until EOS or `max_new` new tokens, starting from `prompt` plus `so_far`
/// (tokens generated earlier, e.g. on a lost worker). Returns every generated token
/// (`so_far` included), EOS excluded, and whether EOS ended it.
pub fn generate(
    m: &Model,
    prompt: &[u32],
    so_far: &[u32],
    params: &Arc<SamplingParams>,
    max_new: usize,
    via: Via,
) -> (Vec<u32>, bool) {
    let mut ex = m.executor();
    let id = RequestId::new();
    let mut tokens: Vec<u32> = prompt.iter().chain(so_far).copied().collect();
    let prompt_len = prompt.len();
    let mut cached = 0usize;
    let reg = LogitsProcessorRegistry::new();
    let mut scratch = SamplerScratch::default();
    let mut ended = false;
    while tokens.len() - prompt_len < so_far.len() + max_new {
        let blocks: Vec<BlockId> = (0..tokens.len().div_ceil(BLOCK as usize) as u32)
            .map(BlockId)
            .collect();
        assert!(
            blocks.len() <= BLOCKS as usize,
            "sequence too long for the test cache"
        );
        let slot_mapping = (cached..tokens.len())
            .map(|p| slot_for(&blocks, BLOCK, p as u32).expect("slot"))
            .collect();
        let seq = SeqInput {
            request_id: id,
            tokens: tokens[cached..].to_vec(),
            start_pos: cached as u32,
            block_table: blocks,
            slot_mapping,
            sample: true,
            embeds: None,
            sampling: SamplingContext {
                params: params.clone(),
                history: Some(tokens.as_slice().into()),
                prompt_len: prompt_len as u32,
                generated: (tokens.len() - prompt_len) as u32,
                banned: Vec::new(),
            },
        };
        let pos = seq.next_position();
        let batch = Batch { seqs: vec![seq] };
        let token = match via {
            Via::Forward => ex.forward(&batch).expect("forward").outputs[0].token,
            Via::Provider(p) => {
                let mut l = ex.forward_logits(&batch).expect("forward").remove(0);
                let ctx = &batch.seqs[0].sampling;
                try_sample_with(&mut l, ctx, pos, &reg, Some(p), &mut scratch)
                    .expect("sample")
                    .0
            }
        };
        cached = tokens.len();
        if m.is_eos(token) {
            ended = true;
            break;
        }
        tokens.push(token);
    }
    (tokens[prompt_len..].to_vec(), ended)
}
