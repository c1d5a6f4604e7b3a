//! Model hyper-parameters as the CPU kernels want them, converted from
//! [`ferrite_model::ModelConfig`] (which parses HF `config.json` and GGUF metadata), plus
//! the CPU-only parts: rotary pairing style and inverse frequencies.

use crate::error::{CpuError, Result};
use ferrite_model::Architecture;
use std::path::Path;

/// Which llama-family variant: decides biases and q/k norms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3, Mistral, SmolLM.
    Llama,
    /// Qwen2 / Qwen2.5: bias on q, k and v projections.
    Qwen2,
    /// Qwen3: per-head RMSNorm on q and k before rotary embeddings.
    Qwen3,
}

/// How rotary embeddings pair the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// HF `rotate_half`: dimension `i` pairs with `i + head_dim/2`.
    Neox,
    /// llama.cpp / Meta original: dimension `2i` pairs with `2i + 1` (GGUF llama files,
    /// whose q/k rows the converter permuted).
    Interleaved,
}

pub use ferrite_model::rope::Llama3Scaling;

/// Hyper-parameters of a llama-family decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
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
    pub rope_style: RopeStyle,
    pub max_context: usize,
    pub tie_embeddings: bool,
}

impl ModelConfig {
    /// Reads an HF `config.json` (through `ferrite-model`); HF checkpoints use
    /// [`RopeStyle::Neox`].
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let m = ferrite_model::ModelConfig::from_hf_file(path)?;
        Self::from_model(&m, RopeStyle::Neox, path)
    }

    /// The CPU view of a `ferrite-model` config; `rope_style` depends on where the
    /// weights came from (`path` names the source in errors).
    pub fn from_model(
        m: &ferrite_model::ModelConfig,
        rope_style: RopeStyle,
        path: &Path,
    ) -> Result<Self> {
        let arch = match m.architecture {
            Architecture::Llama | Architecture::Mistral => Arch::Llama,
            Architecture::Qwen2 => Arch::Qwen2,
            Architecture::Qwen3 => Arch::Qwen3,
        };
        let cfg = ModelConfig {
            arch,
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
            rope_style,
            max_context: m.max_position_embeddings,
            tie_embeddings: m.tie_word_embeddings,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        if self.heads == 0
            || self.kv_heads == 0
            || !self.heads.is_multiple_of(self.kv_heads)
            || !self.head_dim.is_multiple_of(2)
            || self.layers == 0
            || self.hidden == 0
        {
            return Err(CpuError::file(
                path,
                format!(
                    "inconsistent shape: heads {}, kv_heads {}, head_dim {}",
                    self.heads, self.kv_heads, self.head_dim
                ),
            ));
        }
        Ok(())
    }

    /// Inverse rotary frequencies, one per pair of head dimensions.
    pub fn inv_freq(&self) -> Vec<f32> {
        ferrite_model::rope::inv_freq(self.head_dim, self.rope_theta, self.rope_scaling)
    }
}
