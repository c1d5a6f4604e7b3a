//! Model hyper-parameters, read from an HF `config.json` or GGUF metadata.

use crate::error::{CpuError, Result};
use serde_json::Value;
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

/// Llama-3 frequency-dependent rope scaling.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position: f64,
}

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
    /// Parses an HF `config.json`.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| CpuError::io(path, e))?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| CpuError::file(path, e.to_string()))?;
        Self::from_hf_json(&v, path)
    }

    /// Parses the JSON of an HF `config.json` (`path` names it in errors).
    pub fn from_hf_json(v: &Value, path: &Path) -> Result<Self> {
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
        let arch = match model_type {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            other => {
                return Err(CpuError::unsupported(
                    path,
                    format!("model_type {other:?} (supported: llama, mistral, qwen2, qwen3)"),
                ));
            }
        };
        let get = |k: &str| -> Result<usize> {
            v.get(k)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| CpuError::file(path, format!("missing integer field {k:?}")))
        };
        let hidden = get("hidden_size")?;
        let heads = get("num_attention_heads")?;
        let kv_heads = get("num_key_value_heads").unwrap_or(heads);
        let head_dim = v
            .get("head_dim")
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .unwrap_or(hidden / heads.max(1));
        let rope_scaling = match v.get("rope_scaling") {
            Some(s) if s.is_object() => {
                let kind = s
                    .get("rope_type")
                    .or_else(|| s.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let f = |k: &str, d: f64| s.get(k).and_then(Value::as_f64).unwrap_or(d);
                match kind {
                    "llama3" => Some(Llama3Scaling {
                        factor: f("factor", 8.0),
                        low_freq_factor: f("low_freq_factor", 1.0),
                        high_freq_factor: f("high_freq_factor", 4.0),
                        original_max_position: f("original_max_position_embeddings", 8192.0),
                    }),
                    "default" | "" => None,
                    other => {
                        return Err(CpuError::unsupported(
                            path,
                            format!("rope_scaling type {other:?} (supported: llama3)"),
                        ));
                    }
                }
            }
            _ => None,
        };
        let cfg = ModelConfig {
            arch,
            hidden,
            intermediate: get("intermediate_size")?,
            layers: get("num_hidden_layers")?,
            heads,
            kv_heads,
            head_dim,
            vocab: get("vocab_size")?,
            eps: v
                .get("rms_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-6) as f32,
            rope_theta: v
                .get("rope_theta")
                .and_then(Value::as_f64)
                .unwrap_or(10000.0),
            rope_scaling,
            rope_style: RopeStyle::Neox,
            max_context: get("max_position_embeddings").unwrap_or(4096),
            tie_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    pub(crate) fn validate(&self, path: &Path) -> Result<()> {
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
        let half = self.head_dim / 2;
        (0..half)
            .map(|i| {
                let f = 1.0 / self.rope_theta.powf((2 * i) as f64 / self.head_dim as f64);
                let f = match self.rope_scaling {
                    None => f,
                    Some(s) => {
                        let low_wl = s.original_max_position / s.low_freq_factor;
                        let high_wl = s.original_max_position / s.high_freq_factor;
                        let wl = 2.0 * std::f64::consts::PI / f;
                        if wl < high_wl {
                            f
                        } else if wl > low_wl {
                            f / s.factor
                        } else {
                            let smooth = (s.original_max_position / wl - s.low_freq_factor)
                                / (s.high_freq_factor - s.low_freq_factor);
                            (1.0 - smooth) * f / s.factor + smooth * f
                        }
                    }
                };
                f as f32
            })
            .collect()
    }
}
