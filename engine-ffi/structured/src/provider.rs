//! [`StructuredProvider`]: the [`GuidedProvider`] the sampler calls, with its caches.
//!
//! Per step the grammar state is a function of `(spec, generated tokens)`. A sequence's
//! state after step `n` is cached under the hash of its first `n` generated tokens, so the
//! usual decode step takes the state cached one token earlier, feeds it the last token and
//! computes the mask. A miss (first step, preemption, migration, eviction) rebuilds the
//! state from the compiled grammar by feeding it every generated token.

use crate::error::{Result, StructuredError};
use crate::grammar::{spec_key, to_grammar};
use crate::mask::apply_mask;
use crate::vocab::Vocab;
use ferrite_engine::{GuidedProvider, ProcessorContext};
use ferrite_protocol::{GuidedDecoding, TokenId};
use llguidance::{Matcher, ParserFactory};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use xxhash_rust::xxh3::Xxh3;

/// Compiled grammars kept (by spec).
const GRAMMAR_CACHE: usize = 128;
/// Parser states kept (by spec and token prefix); at least the number of guided sequences
/// a worker runs at once.
const STATE_CACHE: usize = 512;

/// (spec key, 128-bit hash of the generated prefix, prefix length).
type StateKey = (u64, u128, usize);

/// A bounded map with first-in-first-out eviction.
struct Fifo<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    cap: usize,
}

impl<K: std::hash::Hash + Eq + Clone, V> Fifo<K, V> {
    fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    fn insert(&mut self, k: K, v: V) {
        if self.map.insert(k.clone(), v).is_none() {
            self.order.push_back(k);
        }
        while self.map.len() > self.cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }

    fn remove(&mut self, k: &K) -> Option<V> {
        // `order` keeps the stale key; it is skipped when it reaches the front.
        self.map.remove(k)
    }

    fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k)
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    /// Drops keys of `order` whose entries are gone, so it stays near `cap`.
    fn compact(&mut self) {
        if self.order.len() > 2 * self.cap.max(1) {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
        }
    }
}

/// Cache statistics (tests and benchmarks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Steps that continued a cached state with one token.
    pub hits: u64,
    /// Steps that rebuilt the state from the grammar.
    pub rebuilds: u64,
    /// Grammars compiled.
    pub compiles: u64,
    /// Masks computed, and the time spent in llguidance computing them (the rest of a
    /// step is cache bookkeeping and writing -inf into the logits).
    pub masks: u64,
    pub mask_time: Duration,
}

/// Enforces `SamplingParams::guided` over one model's vocabulary.
pub struct StructuredProvider {
    factory: ParserFactory,
    vocab_len: usize,
    eos_ids: Vec<u32>,
    grammars: Mutex<Fifo<u64, (GuidedDecoding, Arc<Matcher>)>>,
    states: Mutex<Fifo<StateKey, Matcher>>,
    stats: Mutex<CacheStats>,
}

impl std::fmt::Debug for StructuredProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StructuredProvider")
            .field("vocab_len", &self.vocab_len)
            .field("eos_ids", &self.eos_ids)
            .finish()
    }
}

impl StructuredProvider {
    /// Builds the token trie and the grammar factory (once per model).
    pub fn new(vocab: &Vocab) -> Result<Self> {
        let env = vocab.tok_env();
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| StructuredError::Vocabulary(e.to_string()))?;
        factory.quiet();
        Ok(Self {
            factory,
            vocab_len: vocab.len(),
            eos_ids: vocab.eos_ids.clone(),
            grammars: Mutex::new(Fifo::new(GRAMMAR_CACHE)),
            states: Mutex::new(Fifo::new(STATE_CACHE)),
            stats: Mutex::new(CacheStats::default()),
        })
    }

    /// Number of token ids the tokenizer has (logits beyond it are always masked).
    pub fn vocab_len(&self) -> usize {
        self.vocab_len
    }

    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn stats(&self) -> CacheStats {
        *self.stats.lock()
    }

    /// Parser states currently cached.
    pub fn cached_states(&self) -> usize {
        self.states.lock().len()
    }

    /// Masks `logits` for the step after `generated` under `spec` (see [`GuidedProvider`]).
    pub fn mask_logits(
        &self,
        spec: &GuidedDecoding,
        generated: &[TokenId],
        logits: &mut [f32],
    ) -> Result<()> {
        let skey = spec_key(spec);
        let (prev_key, cur_key) = prefix_keys(skey, generated);
        let mut matcher = self.state_for(spec, skey, generated, prev_key, cur_key)?;
        let t0 = Instant::now();
        let mask = matcher
            .compute_mask_or_eos()
            .map_err(|e| StructuredError::Grammar(e.to_string()))?;
        {
            let mut stats = self.stats.lock();
            stats.masks += 1;
            stats.mask_time += t0.elapsed();
        }
        apply_mask(&mask, &self.eos_ids, logits);
        let mut states = self.states.lock();
        states.insert(cur_key, matcher);
        states.compact();
        Ok(())
    }

    /// The parser state after `generated`: the cached state of `generated[..n-1]` fed the
    /// last token, the cached state of `generated` itself (a retried step), or a rebuild.
    fn state_for(
        &self,
        spec: &GuidedDecoding,
        skey: u64,
        generated: &[TokenId],
        prev_key: Option<StateKey>,
        cur_key: StateKey,
    ) -> Result<Matcher> {
        let cached = {
            let mut states = self.states.lock();
            match states.remove(&cur_key) {
                Some(m) => Some((m, None)),
                None => prev_key
                    .and_then(|k| states.remove(&k))
                    .map(|m| (m, generated.last().copied())),
            }
        };
        if let Some((mut m, next)) = cached {
            if let Some(t) = next {
                consume(&mut m, &[t], &self.eos_ids)?;
            }
            self.stats.lock().hits += 1;
            return Ok(m);
        }
        let template = self.grammar(spec, skey)?;
        let mut m = Matcher::clone(&template);
        consume(&mut m, generated, &self.eos_ids)?;
        self.stats.lock().rebuilds += 1;
        Ok(m)
    }

    /// The compiled grammar of `spec` (a fresh parser), compiled at most once while cached.
    fn grammar(&self, spec: &GuidedDecoding, skey: u64) -> Result<Arc<Matcher>> {
        if let Some((s, m)) = self.grammars.lock().get(&skey)
            && s == spec
        {
            return Ok(m.clone());
        }
        let grammar = to_grammar(spec)?;
        let m = Matcher::new(self.factory.create_parser(grammar));
        if let Some(e) = m.get_error() {
            return Err(StructuredError::InvalidSpec(e));
        }
        let m = Arc::new(m);
        self.grammars.lock().insert(skey, (spec.clone(), m.clone()));
        self.stats.lock().compiles += 1;
        Ok(m)
    }
}

/// Feeds `tokens` to `m`. EOS after the grammar has finished (a request with `ignore_eos`
/// goes on past it) changes nothing: the mask stays "EOS only".
fn consume(m: &mut Matcher, tokens: &[TokenId], eos_ids: &[u32]) -> Result<()> {
    for &t in tokens {
        if m.is_stopped() && eos_ids.contains(&t) {
            continue;
        }
        m.consume_token(t).map_err(|e| {
            StructuredError::Grammar(format!(
                "the generated tokens left the constrained language: {e}"
            ))
        })?;
    }
    Ok(())
}

/// Cache keys of `generated[..n-1]` (None when empty) and of `generated`.
fn prefix_keys(skey: u64, generated: &[TokenId]) -> (Option<StateKey>, StateKey) {
    let mut h = Xxh3::new();
    h.update(&skey.to_le_bytes());
    let n = generated.len();
    let mut prev = None;
    for (i, t) in generated.iter().enumerate() {
        if i + 1 == n {
            prev = Some((skey, h.digest128(), i));
        }
        h.update(&t.to_le_bytes());
    }
    (prev, (skey, h.digest128(), n))
}

impl GuidedProvider for StructuredProvider {
    fn apply(
        &self,
        spec: &GuidedDecoding,
        ctx: &ProcessorContext,
        logits: &mut [f32],
    ) -> ferrite_engine::Result<()> {
        self.mask_logits(spec, ctx.generated, logits)
            .map_err(Into::into)
    }
}

#[cfg(test)]
#[path = "provider_tests.rs"]
mod tests;
