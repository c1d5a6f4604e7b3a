//! Llama-family weights and the per-layer math (norms, rotary embeddings, SwiGLU).

use crate::config::{Arch, ModelConfig, RopeStyle};
use crate::error::Result;
use crate::store::TensorStore;
use crate::tensor::Matrix;
use rayon::prelude::*;

pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub wq: Matrix,
    pub wk: Matrix,
    pub wv: Matrix,
    pub wo: Matrix,
    /// Qwen2 projection biases.
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    /// Qwen3 per-head norms over `head_dim`.
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Matrix,
    pub w_up: Matrix,
    pub w_down: Matrix,
}

pub struct Weights {
    pub embed: Matrix,
    pub layers: Vec<LayerWeights>,
    pub norm: Vec<f32>,
    /// `None` when tied to `embed`.
    pub lm_head: Option<Matrix>,
}

impl Weights {
    pub fn load(cfg: &ModelConfig, s: &TensorStore) -> Result<Self> {
        let (h, hd) = (cfg.hidden, cfg.head_dim);
        let (qd, kvd) = (cfg.heads * hd, cfg.kv_heads * hd);
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let p = format!("model.layers.{i}");
            let opt = |n: &str, len: usize| -> Result<Option<Vec<f32>>> {
                let name = format!("{p}.{n}");
                if s.has(&name) {
                    s.vector(&name, len).map(Some)
                } else {
                    Ok(None)
                }
            };
            let (bq, bk, bv) = match cfg.arch {
                Arch::Qwen2 => (
                    opt("self_attn.q_proj.bias", qd)?,
                    opt("self_attn.k_proj.bias", kvd)?,
                    opt("self_attn.v_proj.bias", kvd)?,
                ),
                _ => (None, None, None),
            };
            let (q_norm, k_norm) = match cfg.arch {
                Arch::Qwen3 => (
                    Some(s.vector(&format!("{p}.self_attn.q_norm.weight"), hd)?),
                    Some(s.vector(&format!("{p}.self_attn.k_norm.weight"), hd)?),
                ),
                _ => (None, None),
            };
            layers.push(LayerWeights {
                attn_norm: s.vector(&format!("{p}.input_layernorm.weight"), h)?,
                wq: s.matrix(&format!("{p}.self_attn.q_proj.weight"), qd, h)?,
                wk: s.matrix(&format!("{p}.self_attn.k_proj.weight"), kvd, h)?,
                wv: s.matrix(&format!("{p}.self_attn.v_proj.weight"), kvd, h)?,
                wo: s.matrix(&format!("{p}.self_attn.o_proj.weight"), h, qd)?,
                bq,
                bk,
                bv,
                q_norm,
                k_norm,
                ffn_norm: s.vector(&format!("{p}.post_attention_layernorm.weight"), h)?,
                w_gate: s.matrix(&format!("{p}.mlp.gate_proj.weight"), cfg.intermediate, h)?,
                w_up: s.matrix(&format!("{p}.mlp.up_proj.weight"), cfg.intermediate, h)?,
                w_down: s.matrix(&format!("{p}.mlp.down_proj.weight"), h, cfg.intermediate)?,
            });
        }
        let lm_head = if s.has("lm_head.weight") && !cfg.tie_embeddings {
            Some(s.matrix("lm_head.weight", cfg.vocab, h)?)
        } else {
            None
        };
        Ok(Weights {
            embed: s.matrix("model.embed_tokens.weight", cfg.vocab, h)?,
            layers,
            norm: s.vector("model.norm.weight", h)?,
            lm_head,
        })
    }

    pub fn lm_head(&self) -> &Matrix {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    pub fn any_quantized(&self) -> bool {
        self.embed.is_quantized()
            || self
                .layers
                .iter()
                .any(|l| l.wq.is_quantized() || l.w_gate.is_quantized() || l.w_down.is_quantized())
    }

    pub fn bytes(&self) -> usize {
        let l: usize = self
            .layers
            .iter()
            .map(|l| {
                l.wq.bytes()
                    + l.wk.bytes()
                    + l.wv.bytes()
                    + l.wo.bytes()
                    + l.w_gate.bytes()
                    + l.w_up.bytes()
                    + l.w_down.bytes()
            })
            .sum();
        l + self.embed.bytes() + self.lm_head.as_ref().map_or(0, Matrix::bytes)
    }
}

/// RMSNorm of each `dim`-long row of `x` into a new buffer.
pub fn rms_norm(x: &[f32], w: &[f32], dim: usize, eps: f32) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_exact_mut(dim)
        .zip(x.par_chunks_exact(dim))
        .with_min_len(16)
        .for_each(|(o, r)| {
            let ss: f32 = r.iter().map(|v| v * v).sum::<f32>() / dim as f32;
            let inv = 1.0 / (ss + eps).sqrt();
            for ((o, v), g) in o.iter_mut().zip(r).zip(w) {
                *o = v * inv * g;
            }
        });
    out
}

/// RMSNorm in place over each `dim`-long chunk (Qwen3 per-head q/k norm).
pub fn rms_norm_inplace(x: &mut [f32], w: &[f32], dim: usize, eps: f32) {
    for r in x.chunks_exact_mut(dim) {
        let ss: f32 = r.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let inv = 1.0 / (ss + eps).sqrt();
        for (v, g) in r.iter_mut().zip(w) {
            *v = *v * inv * g;
        }
    }
}

/// Adds `bias` to each row of `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for r in x.chunks_exact_mut(bias.len()) {
        for (v, b) in r.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// Applies rotary embeddings to one row of `n_heads × head_dim` at position `pos`.
pub fn rope(row: &mut [f32], head_dim: usize, pos: u32, inv_freq: &[f32], style: RopeStyle) {
    let half = head_dim / 2;
    let mut cs = Vec::with_capacity(half);
    for f in inv_freq {
        let a = pos as f32 * f;
        cs.push((a.cos(), a.sin()));
    }
    for head in row.chunks_exact_mut(head_dim) {
        for (i, &(c, s)) in cs.iter().enumerate() {
            let (a, b) = match style {
                RopeStyle::Neox => (i, i + half),
                RopeStyle::Interleaved => (2 * i, 2 * i + 1),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * c - x1 * s;
            head[b] = x1 * c + x0 * s;
        }
    }
}

/// `silu(gate) * up`, in place into `gate`.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    gate.par_chunks_mut(4096)
        .zip(up.par_chunks(4096))
        .for_each(|(gc, uc)| {
            for (g, u) in gc.iter_mut().zip(uc) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
        });
}
