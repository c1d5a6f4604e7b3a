//! Logits processors: per-sequence, per-step edits of the logits before sampling.
//!
//! A request names processors in `SamplingParams::logits_processors`; the sampler looks each
//! name up in the global [`LogitsProcessorRegistry`] and applies them in order, after the
//! penalties and before temperature. Built-ins: [`LogitBias`] and [`BanTokens`] (always run
//! by the sampler through this trait), [`NoRepeatNgram`] (`no_repeat_ngram_2` …
//! `no_repeat_ngram_8`) and [`AllowedTokens`] (a whitelist a deployment registers under its
//! own name, e.g. for constrained choice).

use crate::error::{EngineError, Result};
use ferrite_protocol::{GuidedDecoding, SamplingParams, TokenId};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

/// What a processor sees of the sequence besides its logits.
#[derive(Clone, Copy, Debug)]
pub struct ProcessorContext<'a> {
    /// The request's sampling parameters.
    pub params: &'a SamplingParams,
    /// Prompt plus generated tokens (empty when the scheduler sent no history).
    pub history: &'a [TokenId],
    /// Tokens generated so far (`history[prompt_len..]`; empty without history).
    pub generated: &'a [TokenId],
    /// Position of the token being sampled.
    pub position: u32,
    /// Tokens that must not be sampled this step.
    pub banned: &'a [TokenId],
}

/// Edits one sequence's logits in place. Stateless across steps: everything a processor
/// needs comes from the [`ProcessorContext`], so a sequence gives the same result after
/// preemption or migration.
pub trait LogitsProcessor: Send + Sync {
    fn name(&self) -> &str;
    fn process(&self, ctx: &ProcessorContext, logits: &mut [f32]);
}

/// Adds `params.logit_bias[t]` to the logit of each listed token `t`.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogitBias;

impl LogitsProcessor for LogitBias {
    fn name(&self) -> &str {
        "logit_bias"
    }
    fn process(&self, ctx: &ProcessorContext, logits: &mut [f32]) {
        for (&t, &b) in &ctx.params.logit_bias {
            if let Some(l) = logits.get_mut(t as usize) {
                *l += b;
            }
        }
    }
}

/// Sets the logits of `ctx.banned` (stop/EOS ids while `min_tokens` is unmet) to -inf.
#[derive(Clone, Copy, Debug, Default)]
pub struct BanTokens;

impl LogitsProcessor for BanTokens {
    fn name(&self) -> &str {
        "ban_tokens"
    }
    fn process(&self, ctx: &ProcessorContext, logits: &mut [f32]) {
        for &t in ctx.banned {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

/// HF `no_repeat_ngram_size`: bans every token that would complete an n-gram already
/// present in the history (prompt plus generated tokens).
#[derive(Clone, Debug)]
pub struct NoRepeatNgram {
    n: usize,
    name: String,
}

impl NoRepeatNgram {
    /// `n` must be at least 1 (n = 1 bans every token seen so far).
    pub fn new(n: usize) -> Self {
        let n = n.max(1);
        Self {
            n,
            name: format!("no_repeat_ngram_{n}"),
        }
    }
}

impl LogitsProcessor for NoRepeatNgram {
    fn name(&self) -> &str {
        &self.name
    }
    fn process(&self, ctx: &ProcessorContext, logits: &mut [f32]) {
        let h = ctx.history;
        let n = self.n;
        if h.len() + 1 < n {
            return;
        }
        // The last n-1 tokens form the prefix the next token would complete.
        let prefix = &h[h.len() + 1 - n..];
        for w in h.windows(n) {
            if &w[..n - 1] == prefix
                && let Some(l) = logits.get_mut(w[n - 1] as usize)
            {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

/// A whitelist: every token not listed gets -inf (constrained choice, classification).
#[derive(Clone, Debug)]
pub struct AllowedTokens {
    name: String,
    /// Sorted, deduplicated.
    allowed: Vec<TokenId>,
}

impl AllowedTokens {
    pub fn new(name: impl Into<String>, tokens: impl IntoIterator<Item = TokenId>) -> Self {
        let mut allowed: Vec<TokenId> = tokens.into_iter().collect();
        allowed.sort_unstable();
        allowed.dedup();
        Self {
            name: name.into(),
            allowed,
        }
    }

    pub fn allowed(&self) -> &[TokenId] {
        &self.allowed
    }
}

impl LogitsProcessor for AllowedTokens {
    fn name(&self) -> &str {
        &self.name
    }
    fn process(&self, _ctx: &ProcessorContext, logits: &mut [f32]) {
        let mut next = self.allowed.iter().copied().peekable();
        for (i, l) in logits.iter_mut().enumerate() {
            // `allowed` is sorted, so one merge pass suffices.
            while next.peek().is_some_and(|&a| (a as usize) < i) {
                next.next();
            }
            if next.peek().is_some_and(|&a| a as usize == i) {
                continue;
            }
            *l = f32::NEG_INFINITY;
        }
    }
}

/// Name → processor.
#[derive(Clone, Default)]
pub struct LogitsProcessorRegistry {
    map: HashMap<String, Arc<dyn LogitsProcessor>>,
}

impl std::fmt::Debug for LogitsProcessorRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.map.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("LogitsProcessorRegistry")
            .field("names", &names)
            .finish()
    }
}

impl LogitsProcessorRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// `logit_bias`, `ban_tokens`, `no_repeat_ngram_2` … `no_repeat_ngram_8`.
    pub fn with_builtins() -> Self {
        let mut r = Self::new();
        r.register(Arc::new(LogitBias));
        r.register(Arc::new(BanTokens));
        for n in 2..=8 {
            r.register(Arc::new(NoRepeatNgram::new(n)));
        }
        r
    }

    /// Registers `p` under `p.name()`, replacing any processor of that name.
    pub fn register(&mut self, p: Arc<dyn LogitsProcessor>) -> Option<Arc<dyn LogitsProcessor>> {
        self.map.insert(p.name().to_string(), p)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn LogitsProcessor>> {
        self.map.get(name)
    }

    /// Sorted names.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.map.keys().cloned().collect();
        v.sort_unstable();
        v
    }

    /// Checks that every name is registered (call at admission; the sampler skips unknown
    /// names with a warning because it cannot fail).
    pub fn validate(&self, names: &[String]) -> Result<()> {
        match names.iter().find(|n| !self.map.contains_key(n.as_str())) {
            None => Ok(()),
            Some(n) => Err(EngineError::InvalidBatch(format!(
                "unknown logits processor {n:?}; known: {}",
                self.names().join(", ")
            ))),
        }
    }
}

static GLOBAL: OnceLock<RwLock<LogitsProcessorRegistry>> = OnceLock::new();

/// The process-wide registry the sampler consults; starts with the built-ins.
pub fn global_registry() -> &'static RwLock<LogitsProcessorRegistry> {
    GLOBAL.get_or_init(|| RwLock::new(LogitsProcessorRegistry::with_builtins()))
}

/// Registers a processor in the global registry (replacing one of the same name).
pub fn register_logits_processor(p: Arc<dyn LogitsProcessor>) {
    let mut g = global_registry()
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    g.register(p);
}

/// Validates names against the global registry.
pub fn validate_logits_processors(names: &[String]) -> Result<()> {
    global_registry()
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .validate(names)
}

/// Enforces [`SamplingParams::guided`] (structured output) over a model's vocabulary.
///
/// Installed once per process by the worker (`ferrite_structured::install`); the sampler
/// calls it right after the named logits processors whenever `params.guided` is set. Like a
/// [`LogitsProcessor`] it is stateless across steps as far as the caller can tell: the
/// grammar state is a function of `(spec, ctx.generated)`, so preemption and migration
/// rebuild it from the tokens (an internal cache keyed by token prefix is allowed).
pub trait GuidedProvider: Send + Sync {
    /// Sets to -inf every logit whose token would take the output out of `spec` after
    /// `ctx.generated` (ids past the tokenizer's vocabulary included). EOS stays allowed
    /// only where the output is complete. An `Err` fails the step: the spec does not
    /// compile, or the generated tokens already left the language.
    fn apply(
        &self,
        spec: &GuidedDecoding,
        ctx: &ProcessorContext,
        logits: &mut [f32],
    ) -> Result<()>;
}

static GUIDED: OnceLock<RwLock<Option<Arc<dyn GuidedProvider>>>> = OnceLock::new();

fn guided_slot() -> &'static RwLock<Option<Arc<dyn GuidedProvider>>> {
    GUIDED.get_or_init(|| RwLock::new(None))
}

/// Installs the process-wide guided-decoding provider (replacing any earlier one).
pub fn set_guided_provider(p: Arc<dyn GuidedProvider>) {
    let mut g = guided_slot()
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    *g = Some(p);
}

/// The installed guided-decoding provider, if any.
pub fn guided_provider() -> Option<Arc<dyn GuidedProvider>> {
    guided_slot()
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

/// The error a step gets when a request asks for structured output and this process has
/// no provider installed.
pub fn no_guided_provider_error() -> EngineError {
    EngineError::InvalidBatch(
        "structured output (guided decoding) was requested but this worker has no \
         guided-decoding provider installed (ferrite_structured::install was not called)"
            .into(),
    )
}

/// Admission check: `Err` when `params.guided` is set and no provider is installed.
pub fn check_guided(params: &SamplingParams) -> Result<()> {
    if params.guided.is_some() && guided_provider().is_none() {
        return Err(no_guided_provider_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx<'a>(
        p: &'a SamplingParams,
        h: &'a [TokenId],
        banned: &'a [TokenId],
    ) -> ProcessorContext<'a> {
        ProcessorContext {
            params: p,
            history: h,
            generated: h,
            position: h.len() as u32,
            banned,
        }
    }

    #[test]
    fn bias_and_ban() {
        let mut p = SamplingParams::default();
        p.logit_bias.insert(1, 2.5);
        p.logit_bias.insert(99, 1.0); // out of range: ignored
        let mut l = vec![0.5f32, 1.0, -1.0];
        LogitBias.process(&ctx(&p, &[], &[]), &mut l);
        assert_eq!(l, vec![0.5, 3.5, -1.0]);
        BanTokens.process(&ctx(&p, &[], &[0, 7]), &mut l);
        assert_eq!(l[0], f32::NEG_INFINITY);
        assert_eq!(l[1], 3.5);
    }

    #[test]
    fn no_repeat_ngram_bans_completions() {
        let p = SamplingParams::default();
        // history 1 2 3 1 2: with n=3 the prefix (1,2) was followed by 3 → ban 3.
        let h = [1, 2, 3, 1, 2];
        let mut l = vec![0.0f32; 6];
        NoRepeatNgram::new(3).process(&ctx(&p, &h, &[]), &mut l);
        let banned: Vec<usize> = (0..6).filter(|&i| l[i] == f32::NEG_INFINITY).collect();
        assert_eq!(banned, vec![3]);
        // n=2: prefix (2) was followed by 3 → ban 3 only.
        let mut l = vec![0.0f32; 6];
        NoRepeatNgram::new(2).process(&ctx(&p, &h, &[]), &mut l);
        let banned: Vec<usize> = (0..6).filter(|&i| l[i] == f32::NEG_INFINITY).collect();
        assert_eq!(banned, vec![3]);
        // n=1 bans everything seen.
        let mut l = vec![0.0f32; 6];
        NoRepeatNgram::new(1).process(&ctx(&p, &h, &[]), &mut l);
        let banned: Vec<usize> = (0..6).filter(|&i| l[i] == f32::NEG_INFINITY).collect();
        assert_eq!(banned, vec![1, 2, 3]);
    }

    #[test]
    fn allowed_tokens_whitelist() {
        let p = SamplingParams::default();
        let a = AllowedTokens::new("yes_no", [5, 2, 5, 100]);
        assert_eq!(a.allowed(), &[2, 5, 100]);
        let mut l: Vec<f32> = (0..8).map(|i| i as f32).collect();
        a.process(&ctx(&p, &[], &[]), &mut l);
        for (i, v) in l.iter().enumerate() {
            if i == 2 || i == 5 {
                assert_eq!(*v, i as f32);
            } else {
                assert_eq!(*v, f32::NEG_INFINITY);
            }
        }
    }

    #[test]
    fn guided_without_provider_fails_the_step() {
        // No provider is installed in this test binary.
        let p = SamplingParams {
            guided: Some(GuidedDecoding::Regex("a+".into())),
            ..SamplingParams::default()
        };
        let err = check_guided(&p).map(|_| ()).map_err(|e| e.to_string());
        assert!(err.is_err_and(|e| e.contains("no guided-decoding provider")));
        assert!(check_guided(&SamplingParams::default()).is_ok());
        let ctx = crate::SamplingContext {
            params: Arc::new(p),
            history: Some(Arc::from(&[1u32, 2][..])),
            prompt_len: 2,
            ..Default::default()
        };
        let mut l = vec![0.0f32, 1.0, 2.0];
        let r = crate::sampler::try_sample(&mut l, &ctx, 2);
        assert!(r.is_err_and(|e| e.to_string().contains("no guided-decoding provider")));
    }

    #[test]
    fn registry_validates_names() {
        let mut r = LogitsProcessorRegistry::with_builtins();
        assert!(r.validate(&["no_repeat_ngram_3".into()]).is_ok());
        assert!(r.validate(&["choice".into()]).is_err());
        r.register(Arc::new(AllowedTokens::new("choice", [1, 2])));
        assert!(r.validate(&["choice".into(), "logit_bias".into()]).is_ok());
        assert_eq!(
            r.get("choice").map(|p| p.name().to_string()),
            Some("choice".into())
        );
    }
}
