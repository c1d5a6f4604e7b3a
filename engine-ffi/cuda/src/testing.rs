//! A tiny generation driver for tests and check binaries: bump-allocates KV blocks, feeds
//! prompts in chunks (optionally staggered), then decodes greedily through any
//! [`Executor`]. Not a scheduler: no preemption, no admission.

use ferrite_engine::{Batch, Executor, SamplingContext, SeqInput, slot_for};
use ferrite_protocol::{BlockId, RequestId};

/// One sequence being generated.
#[derive(Clone, Debug)]
pub struct Gen {
    pub id: RequestId,
    pub prompt: Vec<u32>,
    pub max_new: usize,
    pub eos: Option<u32>,
    /// Steps to wait before the first chunk.
    pub delay: usize,
    pub blocks: Vec<BlockId>,
    /// Tokens already in the cache.
    pub cached: usize,
    pub generated: Vec<u32>,
}

impl Gen {
    pub fn new(prompt: &[u32], max_new: usize, eos: Option<u32>) -> Self {
        Gen {
            id: RequestId::new(),
            prompt: prompt.to_vec(),
            max_new,
            eos,
            delay: 0,
            blocks: Vec::new(),
            cached: 0,
            generated: Vec::new(),
        }
    }

    pub fn finished(&self) -> bool {
        self.generated.len() >= self.max_new
            || self.eos.is_some_and(|e| self.generated.last() == Some(&e))
    }

    fn all_tokens(&self) -> Vec<u32> {
        let mut v = self.prompt.clone();
        v.extend_from_slice(&self.generated);
        v
    }
}

/// Bump allocator of block ids.
#[derive(Clone, Copy, Debug)]
pub struct Alloc {
    pub next: u32,
    pub block_size: u32,
}

/// The next step's input of `g` (prefill chunk of at most `chunk` tokens, or one decode
/// token), allocating blocks; `None` when it is finished or still delayed.
pub fn next_input(g: &mut Gen, alloc: &mut Alloc, chunk: usize, step: usize) -> Option<SeqInput> {
    if g.finished() || step < g.delay {
        return None;
    }
    let all = g.all_tokens();
    // Decode feeds the last generated token; prefill the next chunk of the prompt.
    let end = if g.cached < g.prompt.len() {
        (g.cached + chunk).min(g.prompt.len())
    } else {
        all.len()
    };
    let tokens = all[g.cached..end].to_vec();
    let bs = alloc.block_size as usize;
    while g.blocks.len() * bs < end {
        g.blocks.push(BlockId(alloc.next));
        alloc.next += 1;
    }
    let start = g.cached as u32;
    let slot_mapping = (0..tokens.len() as u32)
        .map(|i| slot_for(&g.blocks, alloc.block_size, start + i).unwrap_or(0))
        .collect();
    Some(SeqInput {
        request_id: g.id,
        tokens,
        start_pos: start,
        block_table: g.blocks.clone(),
        slot_mapping,
        sample: end >= g.prompt.len(),
        embeds: None,
        sampling: SamplingContext::default(),
    })
}

/// Runs every sequence to completion, batching all active ones each step. Returns the
/// number of steps.
pub fn run_all(
    ex: &mut dyn Executor,
    alloc: &mut Alloc,
    gens: &mut [Gen],
    chunk: usize,
) -> ferrite_engine::Result<usize> {
    let mut step = 0;
    while gens.iter().any(|g| !g.finished()) {
        let mut idx = Vec::new();
        let mut seqs = Vec::new();
        for (i, g) in gens.iter_mut().enumerate() {
            if let Some(s) = next_input(g, alloc, chunk, step) {
                idx.push(i);
                seqs.push(s);
            }
        }
        step += 1;
        if seqs.is_empty() {
            continue;
        }
        let batch = Batch { seqs };
        let out = ex.forward(&batch)?;
        let mut outs = out.outputs.into_iter();
        for (i, s) in idx.into_iter().zip(&batch.seqs) {
            let g = &mut gens[i];
            g.cached += s.tokens.len();
            if s.sample {
                let o = outs
                    .next()
                    .ok_or_else(|| ferrite_engine::EngineError::Backend("missing output".into()))?;
                g.generated.push(o.token);
            }
        }
        if step > 100_000 {
            return Err(ferrite_engine::EngineError::Backend("no progress".into()));
        }
    }
    Ok(step)
}
