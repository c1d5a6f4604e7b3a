//! Model shape as the CUDA kernels want it, converted from [`ferrite_model::ModelConfig`],
//! plus the kernel parameters derived from it (fused projection widths, rotary
//! frequencies, attention split length).

use crate::error::{CudaError, Result};
use ferrite_model::Architecture;

/// Element type of weights, activations and the KV cache on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// float32 everywhere (small float32 checkpoints such as stories260k: exact parity
    /// with the CPU backend).
    F32,
    /// bfloat16 weights, activations and KV cache; float32 residual stream and reductions.
    Bf16,
}

impl Dtype {
    pub fn bytes(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
        }
    }
}

pub use ferrite_model::rope::Llama3Scaling;

/// Hyper-parameters of a Llama-family decoder (Llama 2/3, Mistral, SmolLM).
#[derive(Clone, Debug, PartialEq)]
pub struct CudaConfig {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub eps: f32,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3Scaling>,
    pub max_context: usize,
    pub tie_embeddings: bool,
}

/// Attention splits of a token at most (`ATTN_SPLITS` in the source): a token's keys are
/// cut into at most this many splits (reduced in parallel, then combined), each a
/// multiple of [`ATTN_CHUNK`] keys. The split length depends only on the token's position
/// (rounded up to its tile alignment), never on what it is batched with (batch invariance),
/// and short contexts get short splits, so a decode step has enough blocks to fill the GPU.
pub const ATTN_SPLITS: usize = 8;
/// Keys staged per attention chunk (`KC` in the source).
pub const ATTN_CHUNK: usize = 16;
/// Largest head dimension the attention kernel supports (`HDMAX` in the source).
pub const MAX_HEAD_DIM: usize = 128;
/// (token, query head) rows of one attention tile (`TILE_ROWS` in the source): a tile holds
/// `TILE_ROWS / (heads / kv_heads)` tokens.
pub const TILE_ROWS: usize = 32;

impl CudaConfig {
    /// The CUDA view of a parsed model config; Qwen2 biases and Qwen3 q/k norms are not
    /// implemented on the GPU yet and are refused here.
    pub fn from_model(m: &ferrite_model::ModelConfig) -> Result<Self> {
        match m.architecture {
            Architecture::Llama | Architecture::Mistral => {}
            other => {
                return Err(CudaError::Unsupported(format!(
                    "{other:?}: the CUDA backend runs Llama-family models only (no q/k/v biases or q/k norms yet)"
                )));
            }
        }
        if m.attention_bias || m.qk_norm {
            return Err(CudaError::Unsupported(
                "attention biases / q-k norms are not implemented on CUDA".into(),
            ));
        }
        let cfg = CudaConfig {
            hidden: m.hidden_size,
            intermediate: m.intermediate_size,
            layers: m.num_layers,
            heads: m.num_heads,
            kv_heads: m.num_kv_heads,
            head_dim: m.head_dim,
            vocab: m.vocab_size,
            eps: m.rms_norm_eps,
            rope_theta: f64::from(m.rope_theta),
            rope_scaling: m.rope_scaling.map(Llama3Scaling::from),
            max_context: m.max_position_embeddings,
            tie_embeddings: m.tie_word_embeddings,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Llama-3.1-8B's shapes (for random-weight benchmarks), with `layers` layers and the
    /// context capped at `max_context`.
    pub fn llama31_8b(layers: usize, max_context: usize) -> Self {
        CudaConfig {
            hidden: 4096,
            intermediate: 14336,
            layers,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            vocab: 128_256,
            eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: Some(Llama3Scaling {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position: 8192.0,
            }),
            max_context,
            tie_embeddings: false,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let ok = self.heads > 0
            && self.kv_heads > 0
            && self.heads.is_multiple_of(self.kv_heads)
            && self.head_dim.is_multiple_of(2)
            && self.head_dim <= MAX_HEAD_DIM
            && self.heads / self.kv_heads.max(1) <= TILE_ROWS
            && self.layers > 0
            && self.hidden > 0
            && self.vocab > 0;
        if ok {
            Ok(())
        } else {
            Err(CudaError::Unsupported(format!(
                "shape heads {} kv_heads {} head_dim {} (head_dim must be even and <= {MAX_HEAD_DIM}, heads / kv_heads <= {TILE_ROWS})",
                self.heads, self.kv_heads, self.head_dim
            )))
        }
    }

    /// Width of the fused q|k|v projection output.
    pub fn qkv_dim(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    /// Width of the attention output (input of o_proj).
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Elements of K (or V) per cache slot.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Softmax scale `1/sqrt(head_dim)`.
    pub fn attn_scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }

    /// Query heads per KV head.
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Tokens of one attention tile.
    pub fn tile_tokens(&self) -> usize {
        (TILE_ROWS / self.group()).max(1)
    }

    /// Tiles hold the tokens of one sequence whose positions agree but for the low bits
    /// below this power of two (at most [`CudaConfig::tile_tokens`]).
    pub fn tile_align(&self) -> usize {
        let t = self.tile_tokens();
        1 << (usize::BITS - 1 - t.leading_zeros())
    }

    /// Keys per split of the tile whose last aligned position is `last` (`split_len_of` in
    /// the source).
    pub fn split_len(last: u32) -> usize {
        (last as usize + 1)
            .div_ceil(ATTN_SPLITS)
            .div_ceil(ATTN_CHUNK)
            .max(1)
            * ATTN_CHUNK
    }

    /// Attention splits a token at `pos` is reduced over, for tiles aligned to `align`.
    pub fn num_splits(pos: u32, align: usize) -> usize {
        let last = pos | (align.max(1) as u32 - 1);
        (pos as usize + 1).div_ceil(Self::split_len(last))
    }

    /// Parameters of the layers (embedding and lm_head excluded).
    pub fn layer_params(&self) -> usize {
        let h = self.hidden;
        let per = h * self.qkv_dim() + self.q_dim() * h + 3 * h * self.intermediate + 2 * h;
        per * self.layers
    }

    /// Bytes of weights one decode step reads: every layer, the final norm and lm_head.
    pub fn decode_weight_bytes(&self, dtype: Dtype) -> usize {
        (self.layer_params() + self.hidden + self.vocab * self.hidden) * dtype.bytes()
    }

    /// KV cache bytes per block (all layers, K and V).
    pub fn kv_block_bytes(&self, block_size: usize, dtype: Dtype) -> usize {
        2 * self.layers * block_size * self.kv_dim() * dtype.bytes()
    }

    /// Inverse rotary frequencies, one per pair of head dimensions (Llama-3 scaling
    /// applied), the same math as the CPU backend.
    pub fn inv_freq(&self) -> Vec<f32> {
        ferrite_model::rope::inv_freq(self.head_dim, self.rope_theta, self.rope_scaling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eight_b_shapes_and_byte_counts() {
        let c = CudaConfig::llama31_8b(32, 8192);
        assert_eq!(c.qkv_dim(), 6144);
        assert_eq!(c.kv_dim(), 1024);
        // Llama-3.1-8B has 8.03e9 parameters; 6.98e9 of them in the layers, 2 × 0.53e9 in embeddings and lm_head.
        assert_eq!(c.layer_params(), 6_979_584_000);
        let bytes = c.decode_weight_bytes(Dtype::Bf16);
        assert_eq!(bytes, (6_979_584_000 + 4096 + 128_256 * 4096) * 2);
        assert_eq!(c.kv_block_bytes(16, Dtype::Bf16), 2 * 32 * 16 * 1024 * 2);
    }

    #[test]
    fn splits_follow_position_only() {
        // Up to 128 keys: splits of one 16-key chunk; beyond, 8 splits of growing length.
        assert_eq!(CudaConfig::split_len(7), 16);
        assert_eq!(CudaConfig::split_len(127), 16);
        assert_eq!(CudaConfig::split_len(255), 32);
        assert_eq!(CudaConfig::split_len(263), 48);
        assert_eq!(CudaConfig::split_len(4095), 512);
        assert_eq!(CudaConfig::num_splits(0, 8), 1);
        assert_eq!(CudaConfig::num_splits(15, 8), 1);
        assert_eq!(CudaConfig::num_splits(16, 8), 2);
        assert_eq!(CudaConfig::num_splits(255, 8), 8);
        assert_eq!(CudaConfig::num_splits(256, 8), 6); // 257 keys in splits of 48
        assert_eq!(CudaConfig::num_splits(4095, 8), 8);
        assert_eq!(CudaConfig::num_splits(8000, 8), 8);
        for p in 0..20_000u32 {
            assert!(CudaConfig::num_splits(p, 8) <= ATTN_SPLITS);
            // Every token of an aligned tile uses the tile's split length.
            assert_eq!(
                CudaConfig::split_len(p | 7),
                CudaConfig::split_len((p & !7) | 7)
            );
        }
        let c = CudaConfig::llama31_8b(1, 8192);
        assert_eq!((c.group(), c.tile_tokens(), c.tile_align()), (4, 8, 8));
    }

    #[test]
    fn llama3_rope_scaling_matches_published_frequencies() {
        let c = CudaConfig::llama31_8b(1, 8192);
        let f = c.inv_freq();
        assert_eq!(f.len(), 64);
        // Highest frequency is untouched, lowest is divided by the factor 8.
        assert!((f[0] - 1.0).abs() < 1e-7);
        let plain = 1.0 / 500_000f64.powf(126.0 / 128.0);
        assert!(((f[63] as f64) - plain / 8.0).abs() / (plain / 8.0) < 1e-5);
    }

    #[test]
    fn refuses_oversized_head_dim() {
        let mut c = CudaConfig::llama31_8b(1, 8192);
        c.head_dim = 256;
        assert!(c.validate().is_err());
        let mut c = CudaConfig::llama31_8b(1, 8192);
        c.kv_heads = 1;
        c.heads = 64;
        assert!(
            c.validate().is_err(),
            "64 query heads per KV head exceed a tile"
        );
    }
}
