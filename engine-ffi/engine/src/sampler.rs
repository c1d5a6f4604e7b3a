//! The shared sampler: turns one sequence's logits into the next token.
//!
//! Order of operations (vLLM/HF): logit bias → banned tokens (-inf) → repetition penalty
//! (HF: over prompt + generated history, positive logits divided, negative multiplied) →
//! frequency/presence penalties (OpenAI: over generated tokens only) → registered logits
//! processors named by the request → structured output (`params.guided`, through the
//! installed [`GuidedProvider`]) → temperature. Greedy when `temperature <= 0` (ties go to
//! the lowest id); otherwise top-k → top-p (nucleus, renormalised over the top-k set) →
//! min-p (relative to the most likely token) → one random draw.
//!
//! Reproducibility: the uniform number behind the draw is a pure function of
//! `(seed, position)` (SplitMix64), so a seeded request gives the same tokens whatever its
//! batch-mates are and across preemption or migration. Without a seed every draw takes a
//! fresh random seed.
//!
//! Logprobs (`params.logprobs = Some(k)`) follow OpenAI/vLLM's default: they describe the
//! *raw model distribution*, `log_softmax` of the logits as the model produced them, before
//! bias, penalties, processors and temperature. The chosen token's logprob is given even
//! when it is not among the top `k` alternatives (listed best first, ties by lower id).
//!
//! Failure: only structured output can fail a step (no provider installed, a spec that does
//! not compile, generated tokens outside the language). [`try_sample`] returns that as an
//! `Err`; the infallible [`sample`] / [`sample_with`] / [`process_logits`] panic with the
//! same message, which the engine actor turns into a failed step.

use crate::batch::SamplingContext;
use crate::error::Result;
use crate::logits::{
    BanTokens, GuidedProvider, LogitBias, LogitsProcessor, LogitsProcessorRegistry,
    ProcessorContext, global_registry, guided_provider, no_guided_provider_error,
};
use crate::topk::{Selector, key};
use ferrite_protocol::{TokenId, TokenLogprob};
use std::cell::RefCell;

/// Buffers the sampler reuses between calls, so a step allocates nothing once warm.
#[derive(Debug, Default)]
pub struct SamplerScratch {
    /// Copy of the raw logits (only when logprobs are requested).
    raw: Vec<f32>,
    /// Candidate token ids.
    sel: Selector,
    /// Weights of the whole vocabulary (plain sampling).
    w: Vec<f32>,
    /// History tokens being counted (penalties).
    toks: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<SamplerScratch> = RefCell::new(SamplerScratch::default());
}

/// Samples the token at `position` from `logits` (which are modified in place), using the
/// global logits-processor registry and a per-thread scratch.
///
/// Penalties and history-based processors see `ctx.history`; when it is `None` they act as
/// if nothing was generated yet. An empty `logits` slice yields token 0.
///
/// # Panics
/// When structured output fails (see the module docs); use [`try_sample`] to get an `Err`.
pub fn sample(
    logits: &mut [f32],
    ctx: &SamplingContext,
    position: u32,
) -> (TokenId, Option<TokenLogprob>) {
    match try_sample(logits, ctx, position) {
        Ok(r) => r,
        Err(e) => panic!("sampling failed: {e}"),
    }
}

/// [`sample`] that returns structured-output failures as an `Err` (the step should fail).
pub fn try_sample(
    logits: &mut [f32],
    ctx: &SamplingContext,
    position: u32,
) -> Result<(TokenId, Option<TokenLogprob>)> {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => sample_global(logits, ctx, position, &mut scratch),
        Err(_) => sample_global(logits, ctx, position, &mut SamplerScratch::default()),
    })
}

fn sample_global(
    logits: &mut [f32],
    ctx: &SamplingContext,
    position: u32,
    scratch: &mut SamplerScratch,
) -> Result<(TokenId, Option<TokenLogprob>)> {
    let guided = guided_for(ctx)?;
    let guided = guided.as_deref();
    if ctx.params.logits_processors.is_empty() {
        try_sample_with(logits, ctx, position, &EMPTY, guided, scratch)
    } else {
        let reg = global_registry()
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        try_sample_with(logits, ctx, position, &reg, guided, scratch)
    }
}

/// The installed provider when the request asks for structured output; `Err` if none is.
fn guided_for(ctx: &SamplingContext) -> Result<Option<std::sync::Arc<dyn GuidedProvider>>> {
    if ctx.params.guided.is_none() {
        return Ok(None);
    }
    guided_provider()
        .map(Some)
        .ok_or_else(no_guided_provider_error)
}

/// Temperatures below this sample greedily.
pub const MIN_TEMPERATURE: f32 = 1e-5;

static EMPTY: std::sync::LazyLock<LogitsProcessorRegistry> =
    std::sync::LazyLock::new(LogitsProcessorRegistry::new);

/// [`sample`] with an explicit registry and scratch (structured output through the
/// globally installed provider).
///
/// # Panics
/// When structured output fails (see the module docs).
pub fn sample_with(
    logits: &mut [f32],
    ctx: &SamplingContext,
    position: u32,
    registry: &LogitsProcessorRegistry,
    scratch: &mut SamplerScratch,
) -> (TokenId, Option<TokenLogprob>) {
    let result = guided_for(ctx).and_then(|guided| {
        try_sample_with(logits, ctx, position, registry, guided.as_deref(), scratch)
    });
    match result {
        Ok(r) => r,
        Err(e) => panic!("sampling failed: {e}"),
    }
}

/// [`sample`] with an explicit registry, guided-decoding provider and scratch. `guided` is
/// used only when `ctx.params.guided` is set; then `None` is an error.
pub fn try_sample_with(
    logits: &mut [f32],
    ctx: &SamplingContext,
    position: u32,
    registry: &LogitsProcessorRegistry,
    guided: Option<&dyn GuidedProvider>,
    scratch: &mut SamplerScratch,
) -> Result<(TokenId, Option<TokenLogprob>)> {
    if logits.is_empty() {
        return Ok((0, None));
    }
    let params = &*ctx.params;
    if params.logprobs.is_some() {
        scratch.raw.clear();
        scratch.raw.extend_from_slice(logits);
    }
    try_process_logits(logits, ctx, position, registry, guided, scratch)?;

    // Like vLLM, temperatures below 1e-5 are greedy (and would overflow the scaled logits).
    let token = if params.is_greedy() || params.temperature < MIN_TEMPERATURE {
        argmax(logits)
    } else {
        apply_temperature(logits, params.temperature);
        let u = match params.seed {
            Some(seed) => uniform(seed, position),
            None => uniform(rand::random::<u64>(), position),
        };
        draw(
            logits,
            params.top_k,
            params.top_p,
            params.min_p,
            u,
            &mut scratch.sel,
            &mut scratch.w,
        )
    };

    let logprob = params.logprobs.map(|k| {
        let SamplerScratch { raw, sel, .. } = scratch;
        raw_logprobs(raw, token, k as usize, sel)
    });
    Ok((token as TokenId, logprob))
}

/// Everything before temperature: bias, bans, penalties, named processors, structured
/// output (through the globally installed provider).
///
/// # Panics
/// When structured output fails (see the module docs).
pub fn process_logits(
    logits: &mut [f32],
    ctx: &SamplingContext,
    position: u32,
    registry: &LogitsProcessorRegistry,
    scratch: &mut SamplerScratch,
) {
    let result = guided_for(ctx).and_then(|guided| {
        try_process_logits(logits, ctx, position, registry, guided.as_deref(), scratch)
    });
    if let Err(e) = result {
        panic!("sampling failed: {e}");
    }
}

/// [`process_logits`] with an explicit guided-decoding provider; structured-output failures
/// (including `params.guided` set with `guided == None`) are an `Err`.
pub fn try_process_logits(
    logits: &mut [f32],
    ctx: &SamplingContext,
    position: u32,
    registry: &LogitsProcessorRegistry,
    guided: Option<&dyn GuidedProvider>,
    scratch: &mut SamplerScratch,
) -> Result<()> {
    let params = &*ctx.params;
    let history: &[TokenId] = ctx.history.as_deref().unwrap_or(&[]);
    let plen = (ctx.prompt_len as usize).min(history.len());
    let pctx = ProcessorContext {
        params,
        history,
        generated: &history[plen..],
        position,
        banned: &ctx.banned,
    };
    if !params.logit_bias.is_empty() {
        LogitBias.process(&pctx, logits);
    }
    if !ctx.banned.is_empty() {
        BanTokens.process(&pctx, logits);
    }
    let rp = params.repetition_penalty;
    if rp != 1.0 && rp > 0.0 && !history.is_empty() {
        sorted_tokens(history, &mut scratch.toks);
        scratch.toks.dedup();
        for &t in &scratch.toks {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = if *l > 0.0 { *l / rp } else { *l * rp };
            }
        }
    }
    let (fp, pp) = (params.frequency_penalty, params.presence_penalty);
    if (fp != 0.0 || pp != 0.0) && !pctx.generated.is_empty() {
        sorted_tokens(pctx.generated, &mut scratch.toks);
        let toks = &scratch.toks;
        let mut i = 0;
        while i < toks.len() {
            let t = toks[i];
            let mut j = i;
            while j < toks.len() && toks[j] == t {
                j += 1;
            }
            if let Some(l) = logits.get_mut(t as usize) {
                *l -= fp * (j - i) as f32 + pp;
            }
            i = j;
        }
    }
    for name in &params.logits_processors {
        match registry.get(name) {
            Some(p) => p.process(&pctx, logits),
            None => tracing::warn!(processor = %name, "unknown logits processor skipped"),
        }
    }
    if let Some(spec) = &params.guided {
        guided
            .ok_or_else(no_guided_provider_error)?
            .apply(spec, &pctx, logits)?;
    }
    Ok(())
}

fn sorted_tokens(src: &[TokenId], dst: &mut Vec<u32>) {
    dst.clear();
    dst.extend_from_slice(src);
    dst.sort_unstable();
}

/// Index of the largest logit, lowest id on ties (0 when every logit is -inf or NaN).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best_v = v;
            best = i;
        }
    }
    best
}

fn apply_temperature(logits: &mut [f32], t: f32) {
    if t != 1.0 {
        let inv = 1.0 / t;
        for l in logits.iter_mut() {
            *l *= inv;
        }
    }
}

/// Draws a token from already-tempered logits with top-k, top-p and min-p filtering;
/// `u` is uniform in `[0, 1)`. `wbuf` receives the vocabulary's weights when needed.
fn draw(
    logits: &[f32],
    top_k: u32,
    top_p: f32,
    min_p: f32,
    u: f64,
    sel: &mut Selector,
    wbuf: &mut Vec<f32>,
) -> usize {
    let v = logits.len();
    let m = max_key(logits);
    if !m.is_finite() {
        return argmax(logits);
    }
    // Unnormalised probability; f32 exp of a value <= 0, summed in f64.
    let w = |l: f32| -> f32 {
        let l = key(l);
        if l == f32::NEG_INFINITY {
            0.0
        } else {
            (l - m).exp()
        }
    };
    // min-p: p_i >= min_p * p_max  <=>  l_i >= m + ln(min_p), independent of renormalisation.
    let thresh = if min_p > 0.0 {
        m + min_p.ln()
    } else {
        f32::NEG_INFINITY
    };
    let k = if top_k > 0 {
        (top_k as usize).min(v)
    } else {
        v
    };
    // top_p <= 0 keeps only the best token; NaN or >= 1 disables the nucleus.
    let nucleus = top_p < 1.0;

    if k == v && !nucleus {
        // Whole vocabulary in id order: weights once, then the inverse CDF.
        wbuf.clear();
        wbuf.extend(
            logits
                .iter()
                .map(|&l| if key(l) >= thresh { w(l) } else { 0.0 }),
        );
        let total: f64 = wbuf.iter().map(|&x| f64::from(x)).sum();
        return inverse_cdf(wbuf.iter().copied().enumerate(), u * total, argmax(logits));
    }

    let idx = if nucleus && k == v {
        // Nucleus without top-k: binned selection, no sort of the vocabulary.
        wbuf.clear();
        wbuf.extend(logits.iter().map(|&l| w(l)));
        let mass = f64::from(top_p) * wbuf.iter().map(|&x| f64::from(x)).sum::<f64>();
        sel.nucleus(logits, wbuf, m, mass);
        &mut sel.idx
    } else {
        sel.top_sorted(logits, k);
        if nucleus {
            let z: f64 = sel
                .idx
                .iter()
                .map(|&i| f64::from(w(logits[i as usize])))
                .sum();
            let mass = f64::from(top_p) * z;
            if let Some(cut) = nucleus_cut(&sel.idx, |i| w(logits[i]), mass) {
                sel.idx.truncate(cut);
            }
        }
        &mut sel.idx
    };
    // min-p; the best token always stays.
    idx.retain(|&i| key(logits[i as usize]) >= thresh);
    if idx.is_empty() {
        idx.push(argmax(logits) as u32);
    }
    let total: f64 = idx.iter().map(|&i| f64::from(w(logits[i as usize]))).sum();
    let first = idx.first().map_or(0, |&i| i as usize);
    inverse_cdf(
        idx.iter().map(|&i| (i as usize, w(logits[i as usize]))),
        u * total,
        first,
    )
}

/// The first item whose running weight exceeds `target`; the last positive one if rounding
/// leaves the target unreached; `fallback` when all weights are zero.
fn inverse_cdf(items: impl Iterator<Item = (usize, f32)>, target: f64, fallback: usize) -> usize {
    let mut acc = 0.0f64;
    let mut last = fallback;
    for (i, wi) in items {
        if wi > 0.0 {
            acc += f64::from(wi);
            last = i;
            if acc > target {
                return i;
            }
        }
    }
    last
}

/// Length of the smallest prefix of `idx` whose weight reaches `mass`, if any.
fn nucleus_cut(idx: &[u32], w: impl Fn(usize) -> f32, mass: f64) -> Option<usize> {
    let mut acc = 0.0f64;
    for (j, &i) in idx.iter().enumerate() {
        acc += f64::from(w(i as usize));
        if acc >= mass {
            return Some(j + 1);
        }
    }
    None
}

fn max_key(l: &[f32]) -> f32 {
    l.iter().copied().map(key).fold(f32::NEG_INFINITY, f32::max)
}

/// Log-softmax of the raw logits: the chosen token's logprob and the top `k`, best first.
fn raw_logprobs(raw: &[f32], token: usize, k: usize, sel: &mut Selector) -> TokenLogprob {
    let m = max_key(raw);
    let lse = if m == f32::NEG_INFINITY {
        f64::INFINITY
    } else {
        let s: f64 = raw
            .iter()
            .map(|&l| {
                let l = key(l);
                if l == f32::NEG_INFINITY {
                    0.0
                } else {
                    f64::from((l - m).exp())
                }
            })
            .sum();
        f64::from(m) + s.ln()
    };
    let lp = |i: usize| -> f32 { (f64::from(key(raw[i])) - lse) as f32 };
    sel.top_sorted(raw, k);
    TokenLogprob {
        token_id: token as TokenId,
        logprob: raw.get(token).map_or(f32::NEG_INFINITY, |_| lp(token)),
        top: sel.idx.iter().map(|&i| (i, lp(i as usize))).collect(),
    }
}

#[inline]
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A uniform number in `[0, 1)` that depends only on `(seed, position)`.
pub fn uniform(seed: u64, position: u32) -> f64 {
    let x = splitmix64(splitmix64(seed) ^ u64::from(position));
    (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

#[cfg(test)]
#[path = "sampler_tests.rs"]
mod tests;
