//! Shared test driver: a tiny scheduler (block allocation, chunked prefill, decode) over
//! `CpuExecutor`, and the reference files in `FERRITE_TEST_MODELS`.
#![allow(dead_code)]

use ferrite_cpu::{CpuExecutor, CpuOptions};
use ferrite_engine::{Batch, SamplingContext, SeqInput, slot_for};
use ferrite_protocol::{BlockId, PromptEmbeds, RequestId};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;

pub fn models_dir() -> PathBuf {
    match std::env::var("FERRITE_TEST_MODELS") {
        Ok(p) => PathBuf::from(p),
        Err(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models"),
    }
}

pub fn model_path(rel: &str) -> PathBuf {
    let p = models_dir().join(rel);
    assert!(
        p.exists(),
        "test model {} not found: set FERRITE_TEST_MODELS to the shared models folder",
        p.display()
    );
    p
}

pub fn reference(name: &str) -> Value {
    let p = model_path(&format!("reference/{name}"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array of ids")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// One reference case.
pub struct Case {
    pub name: String,
    pub prompt: Vec<u32>,
    pub greedy: Vec<u32>,
    /// (top ids, top logits) at the last prompt position and the first generated ones.
    pub steps: Vec<(Vec<u32>, Vec<f32>)>,
    pub margins: Vec<f32>,
}

pub fn cases(file: &str) -> Vec<Case> {
    let r = reference(file);
    r["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap_or("").to_string(),
            prompt: ids(&c["prompt_token_ids"]),
            greedy: ids(&c["greedy_token_ids"]),
            steps: c["steps"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|s| {
                            let l = s["top_logits"]
                                .as_array()
                                .expect("logits")
                                .iter()
                                .map(|x| x.as_f64().expect("f") as f32)
                                .collect();
                            (ids(&s["top_ids"]), l)
                        })
                        .collect()
                })
                .unwrap_or_default(),
            margins: c["greedy_margins"]
                .as_array()
                .map(|a| a.iter().map(|x| x.as_f64().unwrap_or(0.0) as f32).collect())
                .unwrap_or_default(),
        })
        .collect()
}

pub fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in l.iter().enumerate() {
        if *v > l[best] {
            best = i;
        }
    }
    best as u32
}

/// A sequence being driven: all its tokens, how many are in the cache, its blocks.
pub struct Seq {
    pub id: RequestId,
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    pub cached: usize,
    pub blocks: Vec<BlockId>,
    pub max_new: usize,
    pub eos: Option<u32>,
    /// Logits of each sampled step.
    pub logits: Vec<Vec<f32>>,
    /// Precomputed embedding rows of the prompt.
    pub embeds: Option<Arc<PromptEmbeds>>,
}

impl Seq {
    pub fn new(prompt: &[u32], max_new: usize, eos: Option<u32>) -> Self {
        Seq {
            id: RequestId::new(),
            tokens: prompt.to_vec(),
            prompt_len: prompt.len(),
            cached: 0,
            blocks: Vec::new(),
            max_new,
            eos,
            logits: Vec::new(),
            embeds: None,
        }
    }
    pub fn generated(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }
    pub fn done(&self) -> bool {
        self.generated().len() >= self.max_new
            || (self.eos.is_some() && self.generated().last().copied() == self.eos)
    }
}

/// Hands out blocks in order.
pub struct Alloc {
    pub next: u32,
    pub block_size: u32,
}

impl Alloc {
    /// Builds this step's input for `s`: at most `chunk` uncached tokens.
    pub fn input(&mut self, s: &mut Seq, chunk: usize) -> SeqInput {
        let n = (s.tokens.len() - s.cached).min(chunk);
        let end = s.cached + n;
        while s.blocks.len() * (self.block_size as usize) < end {
            s.blocks.push(BlockId(self.next));
            self.next += 1;
        }
        let slot_mapping = (s.cached..end)
            .map(|p| slot_for(&s.blocks, self.block_size, p as u32).expect("slot"))
            .collect();
        let inp = SeqInput {
            request_id: s.id,
            tokens: s.tokens[s.cached..end].to_vec(),
            start_pos: s.cached as u32,
            block_table: s.blocks.clone(),
            slot_mapping,
            sample: end == s.tokens.len(),
            embeds: s.embeds.clone(),
            sampling: SamplingContext::default(),
        };
        s.cached = end;
        inp
    }
}

/// One step over the sequences at `active` (those not done), prefill chunks of at most
/// `chunk` tokens. Greedy-samples with argmax over the returned logits.
pub fn step(
    ex: &mut CpuExecutor,
    alloc: &mut Alloc,
    seqs: &mut [Seq],
    active: &[usize],
    chunk: usize,
) {
    let idx: Vec<usize> = active
        .iter()
        .copied()
        .filter(|&i| !seqs[i].done())
        .collect();
    if idx.is_empty() {
        return;
    }
    let batch = Batch {
        seqs: idx
            .iter()
            .map(|&i| alloc.input(&mut seqs[i], chunk))
            .collect(),
    };
    let logits = ex.forward_logits(&batch).expect("forward");
    let mut li = logits.into_iter();
    for (&i, inp) in idx.iter().zip(&batch.seqs) {
        if inp.sample {
            let l = li.next().expect("logits for sampled seq");
            seqs[i].tokens.push(argmax(&l));
            seqs[i].logits.push(l);
        }
    }
}

/// Runs every sequence to completion together, starting sequence `i` at step `delays[i]`.
pub fn run_all(
    ex: &mut CpuExecutor,
    alloc: &mut Alloc,
    seqs: &mut [Seq],
    delays: &[usize],
    chunk: usize,
) {
    let mut t = 0;
    while seqs.iter().any(|s| !s.done()) {
        let active: Vec<usize> = (0..seqs.len()).filter(|&i| delays[i] <= t).collect();
        step(ex, alloc, seqs, &active, chunk);
        t += 1;
    }
}

pub fn load(rel: &str, blocks: u32) -> CpuExecutor {
    load_with(rel, blocks, false)
}

pub fn load_with(rel: &str, blocks: u32, f32_activations: bool) -> CpuExecutor {
    CpuExecutor::load(
        &model_path(rel),
        CpuOptions {
            num_kv_blocks: blocks,
            block_size: 16,
            threads: 0,
            f32_activations,
        },
    )
    .unwrap_or_else(|e| panic!("load {rel}: {e}"))
}

/// Largest relative and absolute error of our logits against each reference step's top-10,
/// over the steps whose context still equals the reference's (up to the first divergence).
pub fn max_rel_err(seq: &Seq, case: &Case) -> (f32, f32) {
    let (mut rel, mut abs) = (0f32, 0f32);
    for (k, (ids, vals)) in case.steps.iter().enumerate() {
        if seq.generated().get(..k) != case.greedy.get(..k) {
            break;
        }
        let Some(ours) = seq.logits.get(k) else { break };
        for (id, r) in ids.iter().zip(vals) {
            let d = (ours[*id as usize] - r).abs();
            abs = abs.max(d);
            rel = rel.max(d / r.abs().max(1.0));
        }
    }
    (rel, abs)
}
