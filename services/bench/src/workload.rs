//! What to send: sessions of one or more turns, built deterministically from the seed
//! and the session's index, for the four workloads.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use crate::error::{BenchError, Result};
use crate::prompt::{Built, PromptBuilder};

/// How lengths vary around their mean.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LenDist {
    Fixed,
    /// Uniform in `[mean·(1−spread), mean·(1+spread)]`.
    Uniform,
    /// Normal with standard deviation `mean·spread`, clamped to at least 1.
    Normal,
}

/// A length distribution.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LenSpec {
    pub mean: usize,
    pub dist: LenDist,
    pub spread: f64,
}

impl LenSpec {
    pub fn fixed(mean: usize) -> Self {
        Self {
            mean,
            dist: LenDist::Fixed,
            spread: 0.0,
        }
    }

    pub fn sample(&self, rng: &mut impl Rng) -> usize {
        let m = self.mean as f64;
        let v = match self.dist {
            LenDist::Fixed => m,
            LenDist::Uniform => {
                let w = m * self.spread;
                if w <= 0.0 {
                    m
                } else {
                    rng.random_range(m - w..=m + w)
                }
            }
            LenDist::Normal => m + m * self.spread * standard_normal(rng),
        };
        (v.round() as usize).max(1)
    }
}

/// Box–Muller.
fn standard_normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// One line of a Mooncake-style trace.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct TraceEntry {
    /// Milliseconds from the trace's start.
    pub timestamp: f64,
    pub input_length: usize,
    pub output_length: usize,
    #[serde(default)]
    pub hash_ids: Vec<u64>,
}

/// Reads a JSONL trace; blank lines are skipped.
pub fn read_trace(path: &Path) -> Result<Vec<TraceEntry>> {
    let text = std::fs::read_to_string(path).map_err(|e| BenchError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let e: TraceEntry = serde_json::from_str(line).map_err(|e| BenchError::Trace {
            path: path.to_path_buf(),
            line: i + 1,
            msg: e.to_string(),
        })?;
        out.push(e);
    }
    if out.is_empty() {
        return Err(BenchError::Trace {
            path: path.to_path_buf(),
            line: 0,
            msg: "no entries".into(),
        });
    }
    Ok(out)
}

/// The workload and its parameters.
#[derive(Clone, Debug)]
pub enum WorkloadSpec {
    Synthetic {
        input: LenSpec,
        output: LenSpec,
    },
    /// `groups` long shared prefixes; session `i` belongs to group `i % groups`
    /// (`random_groups`: a seeded random group, as users of a chat product arrive).
    SharedPrefix {
        groups: usize,
        random_groups: bool,
        prefix_len: usize,
        suffix: LenSpec,
        output: LenSpec,
    },
    /// Each session is a conversation of `turns` chat requests.
    MultiTurn {
        conversations: usize,
        turns: usize,
        input: LenSpec,
        output: LenSpec,
        /// Tokens of the first user message (a long document or history) when different
        /// from `input` (the follow-ups).
        first_input: Option<LenSpec>,
    },
    Trace {
        entries: Vec<TraceEntry>,
        block_size: usize,
        speedup: f64,
    },
}

impl WorkloadSpec {
    pub fn name(&self) -> &'static str {
        match self {
            WorkloadSpec::Synthetic { .. } => "synthetic",
            WorkloadSpec::SharedPrefix { .. } => "shared-prefix",
            WorkloadSpec::MultiTurn { .. } => "multi-turn",
            WorkloadSpec::Trace { .. } => "trace",
        }
    }
}

/// One request's new content: the whole prompt, or (multi-turn) the new user message.
#[derive(Clone, Debug)]
pub struct Turn {
    pub text: String,
    /// Tokens of `text` as built (words without a tokenizer).
    pub input_len: usize,
    pub output_len: usize,
}

/// A unit of work: one request, or a conversation whose turns run in order.
#[derive(Clone, Debug)]
pub struct Session {
    pub index: usize,
    pub group: Option<usize>,
    /// Trace only: when to start, from the run's start.
    pub at: Option<Duration>,
    pub turns: Vec<Turn>,
}

/// Builds sessions on demand.
pub struct Workload {
    spec: WorkloadSpec,
    builder: PromptBuilder,
    seed: u64,
    prefixes: Vec<Built>,
    blocks: Mutex<HashMap<u64, Arc<Built>>>,
}

/// A per-purpose rng stream from the run's seed.
fn rng_for(seed: u64, stream: u64, index: u64) -> StdRng {
    let mut z = seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ index;
    // splitmix64 finaliser
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    StdRng::seed_from_u64(z ^ (z >> 31))
}

const STREAM_SESSION: u64 = 1;
const STREAM_PREFIX: u64 = 2;
const STREAM_BLOCK: u64 = 3;

/// FNV-1a of the workload's parameters (a trace's: its block size), mixed into the
/// seed: runs with other lengths get other prompts, not a prefix of the last run's
/// that a server's prefix cache still holds.
fn params_hash(spec: &WorkloadSpec) -> u64 {
    let text = match spec {
        WorkloadSpec::Trace { block_size, .. } => format!("trace {block_size}"),
        other => format!("{other:?}"),
    };
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Workload {
    pub fn new(spec: WorkloadSpec, builder: PromptBuilder, seed: u64) -> Result<Self> {
        let seed = seed ^ params_hash(&spec);
        let mut prefixes = Vec::new();
        match &spec {
            WorkloadSpec::SharedPrefix {
                groups, prefix_len, ..
            } => {
                if *groups == 0 {
                    return Err(BenchError::Config("--groups must be at least 1".into()));
                }
                for g in 0..*groups {
                    let mut rng = rng_for(seed, STREAM_PREFIX, g as u64);
                    prefixes.push(builder.text(&mut rng, *prefix_len)?);
                }
            }
            WorkloadSpec::MultiTurn { turns, .. } if *turns == 0 => {
                return Err(BenchError::Config("--turns must be at least 1".into()));
            }
            WorkloadSpec::Trace {
                block_size,
                speedup,
                ..
            } if *block_size == 0 || *speedup <= 0.0 => {
                return Err(BenchError::Config(
                    "--trace-block-size and --trace-speedup must be positive".into(),
                ));
            }
            _ => {}
        }
        Ok(Self {
            spec,
            builder,
            seed,
            prefixes,
            blocks: Mutex::new(HashMap::new()),
        })
    }

    pub fn spec(&self) -> &WorkloadSpec {
        &self.spec
    }

    pub fn builder(&self) -> &PromptBuilder {
        &self.builder
    }

    /// Sessions the workload has by nature (trace lines, conversations); `None` when
    /// it can go on for ever.
    pub fn natural_len(&self) -> Option<usize> {
        match &self.spec {
            WorkloadSpec::Trace { entries, .. } => Some(entries.len()),
            WorkloadSpec::MultiTurn { conversations, .. } => Some(*conversations),
            _ => None,
        }
    }

    /// Requests per session.
    pub fn turns_per_session(&self) -> usize {
        match &self.spec {
            WorkloadSpec::MultiTurn { turns, .. } => *turns,
            _ => 1,
        }
    }

    /// Session `index`, or `None` past the end of a finite workload.
    pub fn session(&self, index: usize) -> Result<Option<Session>> {
        if self.natural_len().is_some_and(|n| index >= n) {
            return Ok(None);
        }
        let mut rng = rng_for(self.seed, STREAM_SESSION, index as u64);
        let b = &self.builder;
        let one = |t: Built, out: usize| Turn {
            text: t.text,
            input_len: t.len,
            output_len: out,
        };
        let s = match &self.spec {
            WorkloadSpec::Synthetic { input, output } => {
                let (i, o) = (input.sample(&mut rng), output.sample(&mut rng));
                Session {
                    index,
                    group: None,
                    at: None,
                    turns: vec![one(b.text(&mut rng, i)?, o)],
                }
            }
            WorkloadSpec::SharedPrefix {
                suffix,
                output,
                random_groups,
                ..
            } => {
                let g = if *random_groups {
                    rng.random_range(0..self.prefixes.len())
                } else {
                    index % self.prefixes.len()
                };
                let p = &self.prefixes[g];
                let (s, o) = (suffix.sample(&mut rng), output.sample(&mut rng));
                Session {
                    index,
                    group: Some(g),
                    at: None,
                    turns: vec![one(b.extend(&p.text, p.len, &mut rng, s)?, o)],
                }
            }
            WorkloadSpec::MultiTurn {
                turns,
                input,
                output,
                first_input,
                ..
            } => {
                let mut v = Vec::with_capacity(*turns);
                for k in 0..*turns {
                    let len = match first_input {
                        Some(f) if k == 0 => f,
                        _ => input,
                    };
                    let (i, o) = (len.sample(&mut rng), output.sample(&mut rng));
                    v.push(one(b.text(&mut rng, i)?, o));
                }
                Session {
                    index,
                    group: None,
                    at: None,
                    turns: v,
                }
            }
            WorkloadSpec::Trace {
                entries,
                block_size,
                speedup,
            } => {
                let e = &entries[index];
                let t0 = entries.first().map_or(0.0, |f| f.timestamp);
                let ms = ((e.timestamp - t0) / speedup).max(0.0);
                Session {
                    index,
                    group: None,
                    at: Some(Duration::from_secs_f64(ms / 1e3)),
                    turns: vec![one(
                        self.trace_prompt(e, *block_size, &mut rng)?,
                        e.output_length.max(1),
                    )],
                }
            }
        };
        Ok(Some(s))
    }

    /// The full block of `hash_id`: the same text wherever the id appears.
    fn block(&self, hash_id: u64, block_size: usize) -> Result<Arc<Built>> {
        if let Some(b) = self.lock_blocks().get(&hash_id) {
            return Ok(b.clone());
        }
        let mut rng = rng_for(self.seed, STREAM_BLOCK, hash_id);
        let b = Arc::new(self.builder.text(&mut rng, block_size)?);
        self.lock_blocks().insert(hash_id, b.clone());
        Ok(b)
    }

    fn lock_blocks(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Built>>> {
        // A panic while holding the lock leaves only complete entries behind.
        self.blocks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Full blocks for every hash id but the last, then the tail: the last block cut
    /// to what `input_length` leaves (or extra random text past the last block).
    fn trace_prompt(&self, e: &TraceEntry, bs: usize, rng: &mut StdRng) -> Result<Built> {
        let want = e.input_length.max(1);
        let full = (want / bs).min(e.hash_ids.len());
        let mut text = String::new();
        let mut len = 0;
        for &h in &e.hash_ids[..full] {
            let b = self.block(h, bs)?;
            text.push_str(&b.text);
            len += b.len;
        }
        let rest = want - len;
        if rest == 0 {
            return Ok(Built { text, len });
        }
        if let Some(&h) = e.hash_ids.get(full) {
            // A partial last block: a prefix of that id's block, so that entries ending
            // inside the same block still share its first tokens.
            let b = self.block(h, bs)?;
            let words: Vec<&str> = b.text.split_inclusive_space();
            let head: String = words.iter().take(rest).copied().collect();
            let mut both = text.clone();
            both.push_str(&head);
            let n = self.builder.count(&both)?;
            if n == want {
                return Ok(Built { text: both, len: n });
            }
        }
        self.builder.extend(&text, len, rng, rest)
    }
}

/// Splits text made of `" word"` pieces back into those pieces.
trait SplitSpace {
    fn split_inclusive_space(&self) -> Vec<&str>;
}

impl SplitSpace for str {
    fn split_inclusive_space(&self) -> Vec<&str> {
        let mut out = Vec::new();
        let mut start = 0;
        for (i, c) in self.char_indices() {
            if c == ' ' && i > start {
                out.push(&self[start..i]);
                start = i;
            }
        }
        if start < self.len() {
            out.push(&self[start..]);
        }
        out
    }
}

/// Seeded Poisson arrival offsets at `rate` per second (exponential gaps).
pub struct PoissonArrivals {
    rng: StdRng,
    rate: f64,
    t: f64,
}

impl PoissonArrivals {
    pub fn new(rate: f64, seed: u64) -> Self {
        Self {
            rng: rng_for(seed, 4, 0),
            rate,
            t: 0.0,
        }
    }
}

impl Iterator for PoissonArrivals {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let u: f64 = 1.0 - self.rng.random::<f64>(); // (0, 1]
        self.t += -u.ln() / self.rate;
        Some(Duration::from_secs_f64(self.t))
    }
}

#[cfg(test)]
#[path = "workload_tests.rs"]
mod tests;
