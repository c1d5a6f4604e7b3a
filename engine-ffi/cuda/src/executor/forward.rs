//! The forward pass of one step: the launch sequence of embedding, per-layer kernels and
//! GEMMs, final norm and lm_head.

use super::{
    ACT, ATTN, CudaExecutor, DELTA, FNORM, GU, LOGITS, META, PART_ACC, PART_ML, QKV, X, XN,
};
use crate::device::KArg;
use crate::error::Result;
use crate::gemm::Gemm;
use crate::kernels::ATTN_THREADS;
use crate::step::{self, GraphKey, StepMeta};
use ferrite_engine::Batch;

impl CudaExecutor {
    /// Runs the forward pass; the logits of the sampled rows are left in the LOGITS buffer
    /// (float32, `[sampled, vocab]`, real rows first). Returns the step metadata (for a
    /// graph-replayed step, of the padded batch).
    pub(super) fn run(&mut self, batch: &Batch) -> Result<StepMeta> {
        step::validate(&self.cfg, self.num_blocks, self.block_size, batch)?;
        if self.graph_max_rows > 0
            && let Some(key) = step::graph_key(batch, self.graph_max_rows)
        {
            return self.run_graph(batch, key);
        }
        let m = step::build(batch, self.cfg.tile_align());
        if m.tokens == 0 {
            return Ok(m);
        }
        self.ensure_scratch(&m)?;
        self.gpu.upload(self.scratch_ptr(META), &m.data)?;
        self.launch_forward(&m)?;
        Ok(m)
    }

    /// A decode step replayed from the CUDA graph captured for its shape (captured now if
    /// this is the shape's first step): one launch instead of ~200. The padded rows write
    /// only the reserved dump block; the real rows' arithmetic is the same as eager.
    fn run_graph(&mut self, batch: &Batch, key: GraphKey) -> Result<StepMeta> {
        let m = step::build_padded(
            batch,
            key,
            self.block_size,
            self.dump_block(),
            self.cfg.tile_align(),
        );
        self.ensure_scratch(&m)?;
        self.gpu.upload(self.scratch_ptr(META), &m.data)?;
        if !self.graphs.contains_key(&key) {
            let g = self.gpu.capture(|| self.launch_forward(&m))?;
            tracing::debug!(rows = key.rows, ctx = key.ctx, "captured a decode graph");
            self.graphs.insert(key, g);
        }
        if let Some(g) = self.graphs.get(&key) {
            g.launch()?;
        }
        Ok(m)
    }

    /// Queues the step's kernels and GEMMs (metadata already uploaded).
    fn launch_forward(&self, m: &StepMeta) -> Result<()> {
        let b = |i: usize| self.scratch.bufs[i].ptr;
        let meta = b(META);
        let mi = |off: usize| meta + 4 * off as u64;
        let (c, g) = (&self.cfg, &self.gpu);
        let t = m.tokens as u32;
        let (h, hd) = (c.hidden as i32, c.head_dim as i32);
        let (heads, kvh) = (c.heads as i32, c.kv_heads as i32);
        let eps = c.eps;
        g.launch(
            &g.k.embed,
            (t, 1, 1),
            256,
            &[
                KArg::U64(mi(m.tokens_off)),
                KArg::U64(self.embed.ptr),
                KArg::U64(b(X)),
                KArg::I32(h),
            ],
        )?;
        for (li, l) in self.layers.iter().enumerate() {
            let delta = if li == 0 { 0 } else { b(DELTA) };
            g.launch(
                &g.k.add_rmsnorm,
                (t, 1, 1),
                1024,
                &[
                    KArg::U64(b(X)),
                    KArg::U64(delta),
                    KArg::U64(0),
                    KArg::U64(l.attn_norm.ptr),
                    KArg::U64(b(XN)),
                    KArg::I32(h),
                    KArg::F32(eps),
                ],
            )?;
            g.gemm(Gemm {
                w: l.wqkv.ptr,
                x: b(XN),
                y: b(QKV),
                rows: m.tokens,
                out: c.qkv_dim(),
                inner: c.hidden,
                y_f32: false,
            })?;
            g.launch(
                &g.k.rope_cache,
                (t, (c.heads + c.kv_heads) as u32, 1),
                (c.head_dim / 2) as u32,
                &[
                    KArg::U64(b(QKV)),
                    KArg::U64(self.inv_freq.ptr),
                    KArg::U64(mi(m.pos_off)),
                    KArg::U64(mi(m.slots_off)),
                    KArg::U64(self.kc[li].ptr),
                    KArg::U64(self.vc[li].ptr),
                    KArg::I32(heads),
                    KArg::I32(kvh),
                    KArg::I32(hd),
                    KArg::I32(0),
                ],
            )?;
            g.launch(
                &g.k.attn_partial,
                (m.tiles as u32, c.kv_heads as u32, m.max_splits as u32),
                ATTN_THREADS,
                &[
                    KArg::U64(b(QKV)),
                    KArg::U64(self.kc[li].ptr),
                    KArg::U64(self.vc[li].ptr),
                    KArg::U64(mi(m.bt_off)),
                    KArg::I32(m.bt_stride as i32),
                    KArg::U64(mi(m.tok_seq_off)),
                    KArg::U64(mi(m.pos_off)),
                    KArg::U64(mi(m.part_off_off)),
                    KArg::U64(mi(m.tiles_off)),
                    KArg::U64(b(PART_ACC)),
                    KArg::U64(b(PART_ML)),
                    KArg::I32(heads),
                    KArg::I32(kvh),
                    KArg::I32(hd),
                    KArg::I32(self.block_size as i32),
                    KArg::F32(c.attn_scale()),
                    KArg::I32(self.cfg.tile_align() as i32),
                ],
            )?;
            g.launch(
                &g.k.attn_combine,
                (t, c.heads as u32, 1),
                128,
                &[
                    KArg::U64(b(PART_ACC)),
                    KArg::U64(b(PART_ML)),
                    KArg::U64(mi(m.pos_off)),
                    KArg::U64(mi(m.part_off_off)),
                    KArg::U64(b(ATTN)),
                    KArg::I32(heads),
                    KArg::I32(hd),
                    KArg::I32(self.cfg.tile_align() as i32),
                ],
            )?;
            g.gemm(Gemm {
                w: l.wo.ptr,
                x: b(ATTN),
                y: b(DELTA),
                rows: m.tokens,
                out: c.hidden,
                inner: c.q_dim(),
                y_f32: false,
            })?;
            g.launch(
                &g.k.add_rmsnorm,
                (t, 1, 1),
                1024,
                &[
                    KArg::U64(b(X)),
                    KArg::U64(b(DELTA)),
                    KArg::U64(0),
                    KArg::U64(l.ffn_norm.ptr),
                    KArg::U64(b(XN)),
                    KArg::I32(h),
                    KArg::F32(eps),
                ],
            )?;
            g.gemm(Gemm {
                w: l.w_gate_up.ptr,
                x: b(XN),
                y: b(GU),
                rows: m.tokens,
                out: 2 * c.intermediate,
                inner: c.hidden,
                y_f32: false,
            })?;
            let n = m.tokens * c.intermediate;
            g.launch(
                &g.k.swiglu,
                (n.div_ceil(256).min(65_535 * 8) as u32, 1, 1),
                256,
                &[
                    KArg::U64(b(GU)),
                    KArg::U64(b(ACT)),
                    KArg::I32(t as i32),
                    KArg::I32(c.intermediate as i32),
                ],
            )?;
            g.gemm(Gemm {
                w: l.w_down.ptr,
                x: b(ACT),
                y: b(DELTA),
                rows: m.tokens,
                out: c.hidden,
                inner: c.intermediate,
                y_f32: false,
            })?;
        }
        if m.sampled > 0 {
            g.launch(
                &g.k.add_rmsnorm,
                (m.sampled as u32, 1, 1),
                1024,
                &[
                    KArg::U64(b(X)),
                    KArg::U64(b(DELTA)),
                    KArg::U64(mi(m.rows_off)),
                    KArg::U64(self.norm.ptr),
                    KArg::U64(b(FNORM)),
                    KArg::I32(h),
                    KArg::F32(eps),
                ],
            )?;
            let head = self.lm_head.as_ref().unwrap_or(&self.embed).ptr;
            g.gemm(Gemm {
                w: head,
                x: b(FNORM),
                y: b(LOGITS),
                rows: m.sampled,
                out: c.vocab,
                inner: c.hidden,
                y_f32: true,
            })?;
        }
        Ok(())
    }
}
