//! [`CudaExecutor`]: weights and paged KV cache on one GPU, a batched forward pass per
//! step (cuBLAS GEMMs + NVRTC kernels), greedy sampling on the device.

use crate::config::{CudaConfig, Dtype};
use crate::device::{DevBuf, Gpu};
use crate::error::{CudaError, Result};
use crate::step::StepMeta;
use crate::weights::{self, HostLayer, HostWeights};
use ferrite_engine::{Batch, BatchOutput, Executor, ExecutorInfo, KvCacheSpec};
use std::path::Path;

mod forward;
mod kv_copy;
mod sample;

/// Share of the card's memory not given to the KV cache when it is sized automatically.
pub const KV_RESERVE_FRACTION: f64 = 0.1;

/// Construction options of the CUDA backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaOptions {
    /// Physical KV blocks (per layer, K and V each); 0: as many as fit in the GPU memory
    /// left after the weights, keeping [`KV_RESERVE_FRACTION`] of the card (at least 4 GiB)
    /// for activations and cuBLAS.
    pub num_kv_blocks: u32,
    /// Tokens per block.
    pub block_size: u32,
    /// GPU ordinal.
    pub device: usize,
    /// Element type; `None`: float32 checkpoints stay float32, others run in bf16.
    pub dtype: Option<Dtype>,
    /// 0: cuBLAS always. Otherwise bf16 GEMMs may use Ferrite's tensor-core GEMM
    /// (`kernels/gemm.cu`): for the model's weight shapes the start-up tuning
    /// ([`crate::tune`]) picks per step size (with [`CudaOptions::batch_invariant`], the
    /// tensor-core GEMM for every step); shapes it did not tune use it for steps of at most
    /// this many tokens (every step when invariant).
    pub mma_max_rows: usize,
    /// Batch invariance: a sequence's results do not depend on what it is batched with.
    /// bf16 GEMMs all run through the skinny GEMM (whose per-token arithmetic ignores the
    /// step's size) unless `mma_max_rows` is 0; other GEMMs run as cuBLAS calls of exactly
    /// [`INVARIANT_ROWS`] rows (the last padded). See docs/benchmarks/cuda.md for the cost.
    pub batch_invariant: bool,
    /// Decode steps of at most [`GRAPH_MAX_ROWS`] sequences replay CUDA graphs captured per
    /// shape (rows rounded up to a power of two, context to a power of two of at least 1 024;
    /// see `step::graph_key`) instead of launching every kernel. Same results as eager
    /// launches.
    pub cuda_graphs: bool,
}

/// Largest decode batch replayed as a CUDA graph. Graphs pay where launch gaps matter
/// (small batches, ~7 ms steps); measured at 256 rows they made 128/128 serving slower
/// (docs/benchmarks/cuda.md, v7).
pub const GRAPH_MAX_ROWS: usize = 32;

/// Default [`CudaOptions::mma_max_rows`].
pub const MMA_MAX_ROWS: usize = 16;

/// Tensor-core GEMM instances ([`crate::kernels::GEMM_MMA_VARIANTS`]): the one for steps
/// of at most [`MMA_TALL_ROWS`] tokens, and the one for larger steps.
pub const MMA_SMALL_VARIANT: usize = 0;
pub const MMA_TALL_VARIANT: usize = 3;
pub const MMA_TALL_ROWS: usize = 8;

/// Activation rows per cuBLAS call when [`CudaOptions::batch_invariant`] is on.
pub const INVARIANT_ROWS: usize = 64;

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions {
            num_kv_blocks: 1024,
            block_size: 16,
            device: 0,
            dtype: None,
            mma_max_rows: MMA_MAX_ROWS,
            batch_invariant: true,
            cuda_graphs: true,
        }
    }
}

struct LayerBufs {
    attn_norm: DevBuf,
    wqkv: DevBuf,
    wo: DevBuf,
    ffn_norm: DevBuf,
    w_gate_up: DevBuf,
    w_down: DevBuf,
}

/// Per-step buffers, grown on demand.
#[derive(Default)]
struct Scratch {
    cap_tokens: usize,
    cap_rows: usize,
    cap_parts: usize,
    cap_meta: usize,
    bufs: Vec<DevBuf>,
}

/// Indices into `Scratch::bufs`.
const X: usize = 0;
const XN: usize = 1;
const QKV: usize = 2;
const ATTN: usize = 3;
const DELTA: usize = 4;
const GU: usize = 5;
const ACT: usize = 6;
const FNORM: usize = 7;
const LOGITS: usize = 8;
const PART_ACC: usize = 9;
const PART_ML: usize = 10;
const META: usize = 11;
const TOKENS_OUT: usize = 12;
/// Per-slice (value, index) partial argmaxes: [rows, ARGMAX_SLICES] f32 then i32.
const ARGMAX_PART: usize = 13;

/// Vocabulary slices of the first argmax stage (one block each per row).
const ARGMAX_SLICES: usize = 64;
/// Device sampling parameters: [rows, 5] f32 (temperature, top_k, top_p, min_p, u), then
/// the rows' logits indices as i32.
const SAMPLE_PRM: usize = 14;

/// The CUDA transformer backend (Llama family).
pub struct CudaExecutor {
    cfg: CudaConfig,
    gpu: Gpu,
    embed: DevBuf,
    layers: Vec<LayerBufs>,
    norm: DevBuf,
    lm_head: Option<DevBuf>,
    kc: Vec<DevBuf>,
    vc: Vec<DevBuf>,
    inv_freq: DevBuf,
    /// Blocks the scheduler may use; one more is allocated: the dump block that padding
    /// rows of graph-replayed steps write.
    num_blocks: u32,
    block_size: u32,
    scratch: Scratch,
    /// Captured decode steps by shape; cleared when the scratch buffers move.
    graphs: std::collections::HashMap<crate::step::GraphKey, crate::device::Graph>,
    /// 0: no graphs.
    graph_max_rows: usize,
    /// Buffers of KV block copies (offload tiers, KV transfer).
    kv_staging: kv_copy::KvStaging,
}

impl std::fmt::Debug for CudaExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaExecutor")
            .field("cfg", &self.cfg)
            .field("dtype", &self.gpu.dtype)
            .field("kv_blocks", &self.num_blocks)
            .finish_non_exhaustive()
    }
}

impl CudaExecutor {
    /// Checks, without a GPU, that `path` is a model this backend can load (an HF folder
    /// with `config.json`, safetensors weights and a Llama-family architecture).
    pub fn check_model(path: &Path) -> Result<CudaConfig> {
        if !path.is_dir() {
            return Err(CudaError::file(
                path,
                "the CUDA backend loads HF safetensors folders (not GGUF files)",
            ));
        }
        let m = ferrite_model::ModelConfig::from_hf_file(&path.join("config.json"))?;
        let cfg = CudaConfig::from_model(&m)?;
        weights::checkpoint_dtype(path)?;
        Ok(cfg)
    }

    /// Loads an HF Llama-family safetensors folder onto GPU `opts.device`. Without a GPU
    /// or driver this returns [`CudaError::NoDevice`] before touching the files' weights.
    pub fn load(path: &Path, opts: CudaOptions) -> Result<Self> {
        crate::device::probe()?;
        let cfg = Self::check_model(path)?;
        let dtype = match opts.dtype {
            Some(d) => d,
            None => weights::checkpoint_dtype(path)?,
        };
        let host = weights::load_safetensors(path, &cfg)?;
        Self::from_host(
            cfg,
            &host,
            CudaOptions {
                dtype: Some(dtype),
                ..opts
            },
        )
    }

    /// Uploads float32 host weights, encoded to `opts.dtype` (float32 when `None`).
    pub fn from_host(cfg: CudaConfig, w: &HostWeights, opts: CudaOptions) -> Result<Self> {
        let dtype = opts.dtype.unwrap_or(Dtype::F32);
        let mut ex = Self::allocate(cfg, dtype, opts)?;
        let up =
            |gpu: &Gpu, dst: &DevBuf, v: &[f32]| gpu.upload(dst.ptr, &weights::encode(v, dtype));
        up(&ex.gpu, &ex.embed, &w.embed)?;
        up(&ex.gpu, &ex.norm, &w.norm)?;
        if let (Some(d), Some(s)) = (&ex.lm_head, &w.lm_head) {
            up(&ex.gpu, d, s)?;
        }
        for (d, s) in ex.layers.iter().zip(&w.layers) {
            up(&ex.gpu, &d.attn_norm, &s.attn_norm)?;
            up(&ex.gpu, &d.wqkv, &s.wqkv)?;
            up(&ex.gpu, &d.wo, &s.wo)?;
            up(&ex.gpu, &d.ffn_norm, &s.ffn_norm)?;
            up(&ex.gpu, &d.w_gate_up, &s.w_gate_up)?;
            up(&ex.gpu, &d.w_down, &s.w_down)?;
        }
        ex.gpu.sync()?;
        // Tied embeddings keep lm_head = None and read `embed`.
        if w.lm_head.is_none() {
            ex.lm_head = None;
        }
        ex.tune_gemms()?;
        Ok(ex)
    }

    /// Seeded random weights generated on the device (benchmarks): matrices uniform in
    /// ±0.02·√3 (std 0.02), norm weights in [0.9, 1.1].
    pub fn random(cfg: CudaConfig, seed: u64, opts: CudaOptions) -> Result<Self> {
        let dtype = opts.dtype.unwrap_or(Dtype::Bf16);
        let mut ex = Self::allocate(cfg, dtype, opts)?;
        let a = 0.02 * 3f32.sqrt();
        let eb = dtype.bytes();
        let mut k = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut fill = |b: &DevBuf, lo: f32, hi: f32| {
            k = k.wrapping_add(0xD1B5_4A32_D192_ED03);
            ex.gpu.fill_uniform(b.ptr, b.bytes / eb, k, lo, hi)
        };
        fill(&ex.embed, -a, a)?;
        fill(&ex.norm, 0.9, 1.1)?;
        if let Some(l) = &ex.lm_head {
            fill(l, -a, a)?;
        }
        for l in &ex.layers {
            fill(&l.attn_norm, 0.9, 1.1)?;
            fill(&l.wqkv, -a, a)?;
            fill(&l.wo, -a, a)?;
            fill(&l.ffn_norm, 0.9, 1.1)?;
            fill(&l.w_gate_up, -a, a)?;
            fill(&l.w_down, -a, a)?;
        }
        ex.gpu.sync()?;
        ex.tune_gemms()?;
        Ok(ex)
    }

    fn allocate(cfg: CudaConfig, dtype: Dtype, opts: CudaOptions) -> Result<Self> {
        cfg.validate()?;
        let mut gpu = Gpu::new(opts.device, dtype)?;
        gpu.mma_max_rows = opts.mma_max_rows;
        gpu.mma_variant = MMA_SMALL_VARIANT;
        gpu.mma_tall_variant = MMA_TALL_VARIANT;
        gpu.mma_tall_rows = MMA_TALL_ROWS;
        gpu.fixed_rows = if opts.batch_invariant {
            INVARIANT_ROWS
        } else {
            0
        };
        let e = dtype.bytes();
        let (h, i) = (cfg.hidden, cfg.intermediate);
        let mut layers = Vec::with_capacity(cfg.layers);
        for _ in 0..cfg.layers {
            layers.push(LayerBufs {
                attn_norm: gpu.alloc(h * e)?,
                wqkv: gpu.alloc(cfg.qkv_dim() * h * e)?,
                wo: gpu.alloc(h * cfg.q_dim() * e)?,
                ffn_norm: gpu.alloc(h * e)?,
                w_gate_up: gpu.alloc(2 * i * h * e)?,
                w_down: gpu.alloc(h * i * e)?,
            });
        }
        let block_size = opts.block_size.max(1);
        let num_kv_blocks = if opts.num_kv_blocks > 0 {
            opts.num_kv_blocks
        } else {
            let (free, total) = gpu.ctx.mem_get_info()?;
            let reserve = ((total as f64 * KV_RESERVE_FRACTION) as usize).max(4 << 30);
            let head = if cfg.tie_embeddings {
                0
            } else {
                cfg.vocab * h * e
            };
            // Layers are allocated already; embeddings and lm_head come next.
            let weights = cfg.vocab * h * e + head;
            let avail = free.saturating_sub(weights + reserve);
            let per = cfg.kv_block_bytes(block_size as usize, dtype).max(1);
            (avail / per).clamp(17, u32::MAX as usize) as u32 - 1
        };
        let opts = CudaOptions {
            num_kv_blocks,
            ..opts
        };
        // + 1: the dump block.
        let slots = (opts.num_kv_blocks as usize + 1) * block_size as usize;
        let mut kc = Vec::with_capacity(cfg.layers);
        let mut vc = Vec::with_capacity(cfg.layers);
        for _ in 0..cfg.layers {
            kc.push(gpu.alloc(slots * cfg.kv_dim() * e)?);
            vc.push(gpu.alloc(slots * cfg.kv_dim() * e)?);
        }
        let inv_freq = gpu.alloc(cfg.head_dim / 2 * 4)?;
        gpu.upload(inv_freq.ptr, &cfg.inv_freq())?;
        let lm_head = if cfg.tie_embeddings {
            None
        } else {
            Some(gpu.alloc(cfg.vocab * h * e)?)
        };
        tracing::info!(
            gpu = %gpu.name(),
            dtype = dtype.name(),
            layers = cfg.layers,
            kv_blocks = opts.num_kv_blocks,
            "cuda executor allocated"
        );
        Ok(CudaExecutor {
            embed: gpu.alloc(cfg.vocab * h * e)?,
            norm: gpu.alloc(h * e)?,
            lm_head,
            layers,
            kc,
            vc,
            inv_freq,
            num_blocks: opts.num_kv_blocks,
            block_size,
            scratch: Scratch::default(),
            graphs: Default::default(),
            graph_max_rows: if opts.cuda_graphs { GRAPH_MAX_ROWS } else { 0 },
            kv_staging: Default::default(),
            cfg,
            gpu,
        })
    }

    /// The reserved block padding rows write (never given to the scheduler).
    pub(crate) fn dump_block(&self) -> u32 {
        self.num_blocks
    }

    /// Changes [`CudaOptions::cuda_graphs`] of a built executor.
    pub fn set_cuda_graphs(&mut self, on: bool) {
        self.graph_max_rows = if on { GRAPH_MAX_ROWS } else { 0 };
        self.graphs.clear();
    }

    /// Changes [`CudaOptions::batch_invariant`] of a built executor.
    pub fn set_batch_invariant(&mut self, on: bool) {
        self.gpu.fixed_rows = if on { INVARIANT_ROWS } else { 0 };
        self.graphs.clear();
    }

    /// Changes [`CudaOptions::mma_max_rows`] of a built executor.
    pub fn set_mma_max_rows(&mut self, rows: usize) {
        self.gpu.mma_max_rows = rows;
        self.graphs.clear();
    }

    /// Picks the tensor-core GEMM instances ([`crate::kernels::GEMM_MMA_VARIANTS`]
    /// indices): `small` for steps of at most `tall_rows` tokens, `tall` above.
    pub fn set_mma_variants(&mut self, small: usize, tall: usize, tall_rows: usize) {
        let last = crate::kernels::GEMM_MMA_VARIANTS.len() - 1;
        self.gpu.mma_variant = small.min(last);
        self.gpu.mma_tall_variant = tall.min(last);
        self.gpu.mma_tall_rows = tall_rows;
        self.gpu.plan = None;
        self.graphs.clear();
    }

    /// Measures the GEMM picks for this model's weight shapes on this card ([`crate::tune`];
    /// bf16 with the tensor-core GEMM on; about a second). Done at construction.
    pub fn tune_gemms(&mut self) -> Result<()> {
        if self.gpu.dtype != Dtype::Bf16 || self.gpu.mma_max_rows == 0 {
            self.gpu.plan = None;
            return Ok(());
        }
        let c = &self.cfg;
        let copies =
            |f: fn(&LayerBufs) -> u64| -> Vec<u64> { self.layers.iter().take(4).map(f).collect() };
        let head = self.lm_head.as_ref().unwrap_or(&self.embed).ptr;
        let mut shapes = vec![
            crate::tune::TuneShape {
                out: c.qkv_dim(),
                inner: c.hidden,
                y_f32: false,
                copies: copies(|l| l.wqkv.ptr),
            },
            crate::tune::TuneShape {
                out: c.hidden,
                inner: c.q_dim(),
                y_f32: false,
                copies: copies(|l| l.wo.ptr),
            },
            crate::tune::TuneShape {
                out: 2 * c.intermediate,
                inner: c.hidden,
                y_f32: false,
                copies: copies(|l| l.w_gate_up.ptr),
            },
            crate::tune::TuneShape {
                out: c.hidden,
                inner: c.intermediate,
                y_f32: false,
                copies: copies(|l| l.w_down.ptr),
            },
            crate::tune::TuneShape {
                out: c.vocab,
                inner: c.hidden,
                y_f32: true,
                copies: vec![head],
            },
        ];
        let mut seen = std::collections::HashSet::new();
        shapes.retain(|s| !s.copies.is_empty() && seen.insert((s.out, s.inner)));
        let t = std::time::Instant::now();
        let plan = crate::tune::tune(&mut self.gpu, &shapes)?;
        tracing::info!(
            ms = t.elapsed().as_millis() as u64,
            "tuned GEMMs (rows:invariant/free pick per bucket)\n{}",
            plan.describe()
        );
        self.gpu.plan = Some(plan);
        self.graphs.clear();
        Ok(())
    }

    /// The tuned GEMM picks, if any.
    pub fn gemm_plan(&self) -> Option<&crate::tune::GemmPlan> {
        self.gpu.plan.as_ref()
    }

    /// Turns programmatic dependent launch off or on (on by default on sm_90+).
    pub fn set_pdl(&mut self, on: bool) {
        self.gpu.pdl = on && self.gpu.ctx.compute_capability().is_ok_and(|c| c.0 >= 9);
        self.graphs.clear();
    }

    pub fn config(&self) -> &CudaConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> Dtype {
        self.gpu.dtype
    }

    pub fn device_name(&self) -> String {
        self.gpu.name()
    }

    /// Copies the weights back as float32 (for the float32 reference check).
    pub fn download_weights(&self) -> Result<HostWeights> {
        let dt = self.gpu.dtype;
        let get = |b: &DevBuf| -> Result<Vec<f32>> {
            let bytes: Vec<u8> = self.gpu.download(b.ptr, b.bytes)?;
            Ok(weights::decode(&bytes, dt))
        };
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(HostLayer {
                    attn_norm: get(&l.attn_norm)?,
                    wqkv: get(&l.wqkv)?,
                    wo: get(&l.wo)?,
                    ffn_norm: get(&l.ffn_norm)?,
                    w_gate_up: get(&l.w_gate_up)?,
                    w_down: get(&l.w_down)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(HostWeights {
            embed: get(&self.embed)?,
            layers,
            norm: get(&self.norm)?,
            lm_head: self.lm_head.as_ref().map(get).transpose()?,
        })
    }

    fn ensure_scratch(&mut self, m: &StepMeta) -> Result<()> {
        let s = &self.scratch;
        let (t, r, p) = (m.tokens, m.sampled.max(1), m.parts);
        if t <= s.cap_tokens && r <= s.cap_rows && p <= s.cap_parts && m.data.len() <= s.cap_meta {
            return Ok(());
        }
        // Powers of two of at least INVARIANT_ROWS: room for the padded fixed-row GEMMs.
        let t = t.max(s.cap_tokens).max(INVARIANT_ROWS).next_power_of_two();
        let r = r.max(s.cap_rows).max(INVARIANT_ROWS).next_power_of_two();
        let p = p.max(s.cap_parts).next_power_of_two();
        let meta = m.data.len().max(s.cap_meta).next_power_of_two();
        let c = &self.cfg;
        let e = self.gpu.dtype.bytes();
        // Captured graphs hold the old buffers' addresses.
        self.graphs.clear();
        self.scratch.bufs.clear();
        let sizes = [
            t * c.hidden * 4,
            t * c.hidden * e,
            t * c.qkv_dim() * e,
            t * c.q_dim() * e,
            t * c.hidden * e,
            t * 2 * c.intermediate * e,
            t * c.intermediate * e,
            r * c.hidden * e,
            r * c.vocab * 4,
            p * c.heads * c.head_dim * 4,
            p * c.heads * 2 * 4,
            meta * 4,
            r * 8,
            r * ARGMAX_SLICES * 8,
            r * 6 * 4,
        ];
        for b in sizes {
            let buf = self.gpu.alloc(b)?;
            self.scratch.bufs.push(buf);
        }
        self.scratch.cap_tokens = t;
        self.scratch.cap_rows = r;
        self.scratch.cap_parts = p;
        self.scratch.cap_meta = meta;
        Ok(())
    }

    /// Runs the batch and returns the raw float32 logits of every sequence with `sample`
    /// set, in batch order (K/V of all tokens are written to the cache).
    pub fn forward_logits(&mut self, batch: &Batch) -> Result<Vec<Vec<f32>>> {
        self.run(batch)?;
        let v = self.cfg.vocab;
        let real = batch.seqs.iter().filter(|s| s.sample).count();
        let all: Vec<f32> = self.gpu.download(self.scratch_ptr(LOGITS), real * v)?;
        Ok(all.chunks_exact(v.max(1)).map(<[f32]>::to_vec).collect())
    }

    /// Waits for all queued device work (for timing).
    pub fn synchronize(&self) -> Result<()> {
        self.gpu.sync()
    }

    fn scratch_ptr(&self, i: usize) -> u64 {
        self.scratch.bufs.get(i).map_or(0, |b| b.ptr)
    }
}

impl Executor for CudaExecutor {
    fn info(&self) -> ExecutorInfo {
        ExecutorInfo {
            name: "cuda".to_string(),
            vocab_size: self.cfg.vocab as u32,
            max_context: self.cfg.max_context as u32,
            kv: KvCacheSpec {
                num_blocks: self.num_blocks,
                block_size: self.block_size,
            },
            // Prompt embeddings are not uploaded yet (docs/known-issues.md).
            embed_width: None,
        }
    }

    fn forward(&mut self, batch: &Batch) -> ferrite_engine::Result<BatchOutput> {
        let m = self.run(batch)?;
        let outputs = self.sample(batch, &m)?;
        Ok(BatchOutput { outputs })
    }

    fn kv_block_layout(&self) -> Option<ferrite_engine::KvBlockLayout> {
        Some(self.block_layout())
    }

    fn read_kv_blocks(
        &mut self,
        blocks: &[ferrite_protocol::BlockId],
        out: &mut [u8],
    ) -> ferrite_engine::Result<()> {
        Ok(self.read_blocks(blocks, out)?)
    }

    fn write_kv_blocks(
        &mut self,
        blocks: &[ferrite_protocol::BlockId],
        data: &[u8],
    ) -> ferrite_engine::Result<()> {
        Ok(self.write_blocks(blocks, data)?)
    }
}
