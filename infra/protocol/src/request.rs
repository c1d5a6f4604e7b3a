//! What the frontend sends a worker, and what the worker streams back.

use crate::embeds::PromptEmbeds;
use crate::ids::{DpRank, RequestId, TokenId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// How to pick the next token. Defaults are greedy with no penalties.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means disabled.
    pub top_k: u32,
    /// 1.0 means disabled.
    pub top_p: f32,
    /// 0 means disabled.
    pub min_p: f32,
    /// Makes sampling reproducible: the random draw at each position is a function of
    /// `(seed, position)` only.
    pub seed: Option<u64>,
    /// 1.0 means disabled (HF/vLLM semantics: divides positive logits, multiplies negative).
    pub repetition_penalty: f32,
    /// OpenAI semantics, over generated tokens.
    pub frequency_penalty: f32,
    /// OpenAI semantics, over generated tokens.
    pub presence_penalty: f32,
    /// Added to the logit of each listed token.
    pub logit_bias: BTreeMap<TokenId, f32>,
    /// Return this many top log-probabilities per generated token (None: no logprobs).
    pub logprobs: Option<u32>,
    /// Names of registered logits processors to apply, in order, after penalties and
    /// before temperature (see `ferrite_engine::logits`); unknown names are a 400.
    #[serde(default)]
    pub logits_processors: Vec<String>,
    /// Structured output: the generated text must match this (enforced over the
    /// tokenizer's vocabulary by the worker's structured-output processor).
    #[serde(default)]
    pub guided: Option<GuidedDecoding>,
}

/// A constraint on the generated text (OpenAI `response_format`, `guided_*` extensions,
/// forced tool calls).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "spec")]
pub enum GuidedDecoding {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// JSON matching this JSON Schema (serialized JSON text).
    JsonSchema(String),
    /// Text matching this regular expression (whole output).
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: None,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: BTreeMap::new(),
            logprobs: None,
            logits_processors: Vec::new(),
            guided: None,
        }
    }
}

impl SamplingParams {
    /// True when the next token is the arg-max of the (biased, penalised) logits.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// True when the sampler needs the sequence's token history.
    pub fn needs_history(&self) -> bool {
        self.repetition_penalty != 1.0
            || self.frequency_penalty != 0.0
            || self.presence_penalty != 0.0
            || !self.logits_processors.is_empty()
            || self.guided.is_some()
    }
}

/// When generation stops, in tokens (stop *strings* are the frontend's job).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StopConditions {
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// EOS and stop tokens are ignored until this many tokens are generated.
    pub min_tokens: u32,
    /// Generation ends when one of these is sampled (EOS ids included by the frontend).
    pub stop_token_ids: Vec<TokenId>,
    /// Keep generating past EOS.
    pub ignore_eos: bool,
}

/// A tokenized, validated request, ready for a worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreprocessedRequest {
    pub request_id: RequestId,
    pub model: String,
    /// Prompt tokens; on migration, prompt plus the tokens generated so far.
    pub token_ids: Vec<TokenId>,
    /// How many of `token_ids` were generated already (migration); they count against
    /// `stop.max_tokens` and `stop.min_tokens`.
    #[serde(default)]
    pub generated_so_far: u32,
    pub sampling: SamplingParams,
    pub stop: StopConditions,
    /// The DP rank the router picked.
    #[serde(default)]
    pub dp_rank: DpRank,
    /// Mixed into block hashes (multimodal content, LoRA); 0 for none.
    #[serde(default)]
    pub extra_hash_key: u64,
    /// Rows given in place of token embeddings at some prompt positions (their tokens are
    /// embedding tokens, see [`crate::embeds`]); `None` for a text-only prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_embeds: Option<Arc<PromptEmbeds>>,
}

/// Why a sequence finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// EOS or a stop token or string.
    Stop,
    /// `max_tokens` reached, or the model's context is full.
    Length,
    Cancelled,
    Error,
}

impl FinishReason {
    /// The OpenAI `finish_reason` string.
    pub fn as_openai(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "abort",
            FinishReason::Error => "error",
        }
    }
}

/// Log-probability of one generated token and the top alternatives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token_id: TokenId,
    pub logprob: f32,
    /// `(token, logprob)`, best first.
    pub top: Vec<(TokenId, f32)>,
}

/// One chunk of a sequence's output.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineOutput {
    pub token_ids: Vec<TokenId>,
    #[serde(default)]
    pub logprobs: Vec<TokenLogprob>,
    #[serde(default)]
    pub finish_reason: Option<FinishReason>,
    /// Prompt tokens served from the prefix cache (sent with the first chunk).
    #[serde(default)]
    pub cached_tokens: Option<u32>,
}
