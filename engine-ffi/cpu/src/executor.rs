//! [`CpuExecutor`]: loads a model and runs batched forward passes over the paged cache.

use crate::attention::{KvCache, TokenCtx, attend};
use crate::config::ModelConfig;
use crate::error::{CpuError, Result};
use crate::matmul::{Input, matmul};
use crate::model::{Weights, add_bias, rms_norm, rms_norm_inplace, rope, swiglu};
use crate::{gguf, safetensors};
use ferrite_engine::{
    Batch, BatchOutput, Executor, ExecutorInfo, KvBlockLayout, KvCacheSpec, SeqOutput, sampler,
};
use ferrite_protocol::{BlockId, TokenId, is_embed_token};
use std::path::Path;

/// Construction options of the CPU backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuOptions {
    /// Physical KV blocks (per layer, K and V each).
    pub num_kv_blocks: u32,
    /// Tokens per block.
    pub block_size: u32,
    /// Worker threads; 0 means one per available core.
    pub threads: usize,
    /// Multiply quantised weights against float32 activations (rows dequantised on the
    /// fly) instead of 8-bit quantised activations: slower, closer to a float32 reference.
    pub f32_activations: bool,
}

impl Default for CpuOptions {
    fn default() -> Self {
        CpuOptions {
            num_kv_blocks: 256,
            block_size: 16,
            threads: 0,
            f32_activations: false,
        }
    }
}

/// The CPU transformer backend.
pub struct CpuExecutor {
    cfg: ModelConfig,
    weights: Weights,
    cache: KvCache,
    inv_freq: Vec<f32>,
    quantize_acts: bool,
    pool: rayon::ThreadPool,
}

impl std::fmt::Debug for CpuExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuExecutor")
            .field("cfg", &self.cfg)
            .field("kv_blocks", &self.cache.num_blocks)
            .finish_non_exhaustive()
    }
}

impl CpuExecutor {
    /// Loads an HF folder (`config.json` + `model.safetensors` or sharded with an index), a
    /// `.gguf` file, or a folder holding one `.gguf` file and no safetensors.
    pub fn load(path: &Path, opts: CpuOptions) -> Result<Self> {
        let (cfg, store) = if path.is_dir() {
            let has_st = path.join("model.safetensors").exists()
                || path.join("model.safetensors.index.json").exists();
            if has_st {
                let cfg = ModelConfig::from_hf_file(&path.join("config.json"))?;
                (cfg, safetensors::load_folder(path)?)
            } else {
                let ggufs: Vec<_> = std::fs::read_dir(path)
                    .map_err(|e| CpuError::io(path, e))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
                    .collect();
                match ggufs.as_slice() {
                    [one] => gguf::load(one)?,
                    [] => {
                        return Err(CpuError::file(
                            path,
                            "no model.safetensors, safetensors index or .gguf file",
                        ));
                    }
                    _ => {
                        return Err(CpuError::file(
                            path,
                            "several .gguf files: name one of them",
                        ));
                    }
                }
            }
        } else {
            gguf::load(path)?
        };
        let weights = Weights::load(&cfg, &store)?;
        drop(store);
        Self::from_parts(cfg, weights, opts)
    }

    fn from_parts(cfg: ModelConfig, weights: Weights, opts: CpuOptions) -> Result<Self> {
        let threads = if opts.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            opts.threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("ferrite-cpu-{i}"))
            .build()
            .map_err(|e| CpuError::ThreadPool(e.to_string()))?;
        let cache = KvCache::new(
            cfg.layers,
            opts.num_kv_blocks as usize,
            opts.block_size.max(1) as usize,
            cfg.kv_heads * cfg.head_dim,
        );
        tracing::info!(
            layers = cfg.layers,
            hidden = cfg.hidden,
            weight_bytes = weights.bytes(),
            threads,
            "cpu executor ready"
        );
        Ok(CpuExecutor {
            inv_freq: cfg.inv_freq(),
            quantize_acts: weights.any_quantized() && !opts.f32_activations,
            cfg,
            weights,
            cache,
            pool,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The model's input embeddings of `ids`, row after row (`hidden` values each; ids
    /// outside the vocabulary give zero rows): sent back as precomputed rows, they
    /// reproduce the text prompt exactly.
    pub fn token_embeddings(&self, ids: &[TokenId]) -> Vec<f32> {
        let h = self.cfg.hidden;
        let mut out = vec![0f32; ids.len() * h];
        for (id, row) in ids.iter().zip(out.chunks_mut(h)) {
            self.weights.embed.row_f32(*id as usize, row);
        }
        out
    }

    /// Runs the batch and returns the raw logits (`vocab` floats) of every sequence with
    /// `sample` set, in batch order. K/V of all tokens are written to the cache.
    pub fn forward_logits(&mut self, batch: &Batch) -> Result<Vec<Vec<f32>>> {
        let this = &mut *self;
        let pool = &this.pool;
        let (cfg, weights, cache, inv_freq, qa) = (
            &this.cfg,
            &this.weights,
            &mut this.cache,
            &this.inv_freq,
            this.quantize_acts,
        );
        pool.install(|| run(cfg, weights, cache, inv_freq, qa, batch))
    }
}

fn validate(cfg: &ModelConfig, cache: &KvCache, batch: &Batch) -> Result<()> {
    let kv = ferrite_engine::KvCacheSpec {
        num_blocks: cache.num_blocks as u32,
        block_size: cache.block_size as u32,
    };
    batch
        .check(kv, cfg.vocab, cfg.max_context, Some(cfg.hidden))
        .map_err(CpuError::InvalidBatch)
}

fn run(
    cfg: &ModelConfig,
    w: &Weights,
    cache: &mut KvCache,
    inv_freq: &[f32],
    qa: bool,
    batch: &Batch,
) -> Result<Vec<Vec<f32>>> {
    validate(cfg, cache, batch)?;
    let (h, hd) = (cfg.hidden, cfg.head_dim);
    let t = batch.num_tokens();
    let tables: Vec<Vec<u32>> = batch
        .seqs
        .iter()
        .map(|s| s.block_table.iter().map(|b| b.0).collect())
        .collect();
    let mut positions = Vec::with_capacity(t);
    let mut slots = Vec::with_capacity(t);
    let mut ctxs = Vec::with_capacity(t);
    let mut x = vec![0f32; t * h];
    let mut row = 0;
    for (s, table) in batch.seqs.iter().zip(&tables) {
        for (i, tok) in s.tokens.iter().enumerate() {
            let pos = s.start_pos + i as u32;
            positions.push(pos);
            slots.push(s.slot_mapping[i]);
            ctxs.push(TokenCtx {
                pos,
                block_table: table,
            });
            let xr = &mut x[row * h..(row + 1) * h];
            // Only embedding tokens look for a row (`validate` made sure they have one).
            let given = is_embed_token(*tok)
                .then(|| s.embeds.as_ref().and_then(|e| e.row(pos)))
                .flatten();
            match given {
                Some(r) => xr.copy_from_slice(r),
                None => w.embed.row_f32(*tok as usize, xr),
            }
            row += 1;
        }
    }
    for (li, l) in w.layers.iter().enumerate() {
        let xn = rms_norm(&x, &l.attn_norm, h, cfg.eps);
        let inp = Input::new(&xn, h, qa);
        let mut q = matmul(&l.wq, &inp);
        let mut k = matmul(&l.wk, &inp);
        let mut v = matmul(&l.wv, &inp);
        if let (Some(bq), Some(bk), Some(bv)) = (&l.bq, &l.bk, &l.bv) {
            add_bias(&mut q, bq);
            add_bias(&mut k, bk);
            add_bias(&mut v, bv);
        }
        if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
            rms_norm_inplace(&mut q, qn, hd, cfg.eps);
            rms_norm_inplace(&mut k, kn, hd, cfg.eps);
        }
        let (qw, kw) = (cfg.heads * hd, cfg.kv_heads * hd);
        for (ti, pos) in positions.iter().enumerate() {
            rope(
                &mut q[ti * qw..(ti + 1) * qw],
                hd,
                *pos,
                inv_freq,
                cfg.rope_style,
            );
            rope(
                &mut k[ti * kw..(ti + 1) * kw],
                hd,
                *pos,
                inv_freq,
                cfg.rope_style,
            );
        }
        cache.write(li, &slots, &k, &v)?;
        let attn = attend(cache, li, &q, &ctxs, cfg.heads, cfg.kv_heads, hd);
        let o = matmul(&l.wo, &Input::new(&attn, qw, qa));
        for (a, b) in x.iter_mut().zip(&o) {
            *a += b;
        }
        let xn = rms_norm(&x, &l.ffn_norm, h, cfg.eps);
        let inp = Input::new(&xn, h, qa);
        let mut g = matmul(&l.w_gate, &inp);
        let u = matmul(&l.w_up, &inp);
        swiglu(&mut g, &u);
        let d = matmul(&l.w_down, &Input::new(&g, cfg.intermediate, qa));
        for (a, b) in x.iter_mut().zip(&d) {
            *a += b;
        }
    }
    // Final norm and lm_head only for the rows that are sampled.
    let mut last = Vec::new();
    let mut end = 0;
    for s in &batch.seqs {
        end += s.tokens.len();
        if s.sample {
            last.extend_from_slice(&x[(end - 1) * h..end * h]);
        }
    }
    if last.is_empty() {
        return Ok(Vec::new());
    }
    let xn = rms_norm(&last, &w.norm, h, cfg.eps);
    let logits = matmul(w.lm_head(), &Input::new(&xn, h, qa));
    Ok(logits
        .chunks_exact(cfg.vocab)
        .map(<[f32]>::to_vec)
        .collect())
}

impl Executor for CpuExecutor {
    fn info(&self) -> ExecutorInfo {
        ExecutorInfo {
            name: "cpu".to_string(),
            vocab_size: self.cfg.vocab as u32,
            max_context: self.cfg.max_context as u32,
            kv: KvCacheSpec {
                num_blocks: self.cache.num_blocks as u32,
                block_size: self.cache.block_size as u32,
            },
            embed_width: Some(self.cfg.hidden as u32),
        }
    }

    fn forward(&mut self, batch: &Batch) -> ferrite_engine::Result<BatchOutput> {
        let logits = self.forward_logits(batch)?;
        let sampled = batch.seqs.iter().filter(|s| s.sample);
        let outputs = sampled
            .zip(logits)
            .map(|(s, mut l)| {
                let (token, logprob) = sampler::try_sample(&mut l, &s.sampling, s.next_position())?;
                Ok(SeqOutput {
                    request_id: s.request_id,
                    token,
                    logprob,
                })
            })
            .collect::<ferrite_engine::Result<Vec<_>>>()?;
        Ok(BatchOutput { outputs })
    }

    fn kv_block_layout(&self) -> Option<KvBlockLayout> {
        Some(KvBlockLayout {
            num_layers: self.cfg.layers as u32,
            num_kv_heads: self.cfg.kv_heads as u32,
            head_dim: self.cfg.head_dim as u32,
            block_size: self.cache.block_size as u32,
            dtype: "f32".to_string(),
            bytes_per_block: self.cache.bytes_per_block(),
        })
    }

    fn read_kv_blocks(&mut self, blocks: &[BlockId], out: &mut [u8]) -> ferrite_engine::Result<()> {
        Ok(self.cache.read_blocks(blocks, out)?)
    }

    fn write_kv_blocks(&mut self, blocks: &[BlockId], data: &[u8]) -> ferrite_engine::Result<()> {
        Ok(self.cache.write_blocks(blocks, data)?)
    }
}
