//! `ModelConfig`: the shape of a Llama-family model, from HF config.json or GGUF metadata.

use std::path::Path;

use serde_json::Value;

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

/// Decoder architectures this engine implements (SmolLM is Llama).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl Architecture {
    /// From an HF `architectures[0]`/`model_type` or a GGUF `general.architecture`.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "llama" | "llamaforcausallm" | "smollm" => Self::Llama,
            "mistral" | "mistralforcausallm" => Self::Mistral,
            "qwen2" | "qwen2forcausallm" => Self::Qwen2,
            "qwen3" | "qwen3forcausallm" => Self::Qwen3,
            _ => return None,
        })
    }
}

/// Llama-3 rope scaling (`rope_type: "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: usize,
}

/// Everything the forward pass needs to know about a model's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    /// Llama-3 scaling from config.json. GGUF files carry it instead as the
    /// tensor `rope_freqs.weight` (per-frequency divisors), so it is `None` there.
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections have a bias (Qwen2).
    pub attention_bias: bool,
    /// RMSNorm on q and k per head before RoPE (Qwen3).
    pub qk_norm: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

fn cfg_err(path: &Path, msg: impl Into<String>) -> ModelError {
    ModelError::Config {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Token ids given as a number or a list of numbers.
pub(crate) fn id_list(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
            .collect(),
        Some(x) => x
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .into_iter()
            .collect(),
        None => Vec::new(),
    }
}

impl ModelConfig {
    /// Reads an HF `config.json`.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let json: Value = serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_hf_json(path, &json)
    }

    /// Builds from a parsed config.json; `path` names the file in errors.
    pub fn from_hf_json(path: &Path, j: &Value) -> Result<Self> {
        let arch_name = j
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .or_else(|| j.get("model_type").and_then(Value::as_str))
            .ok_or_else(|| cfg_err(path, "no `architectures` or `model_type`"))?;
        let architecture =
            Architecture::parse(arch_name).ok_or_else(|| ModelError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                arch: arch_name.to_string(),
            })?;
        let usize_of = |k: &str| -> Result<usize> {
            j.get(k)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .filter(|&v| v > 0)
                .ok_or_else(|| cfg_err(path, format!("missing or invalid `{k}`")))
        };
        let hidden_size = usize_of("hidden_size")?;
        let num_heads = usize_of("num_attention_heads")?;
        let num_kv_heads = usize_of("num_key_value_heads").unwrap_or(num_heads);
        let head_dim = usize_of("head_dim").unwrap_or(hidden_size / num_heads);
        let rope_params = j.get("rope_parameters");
        let rope_theta = j
            .get("rope_theta")
            .or_else(|| rope_params.and_then(|r| r.get("rope_theta")))
            .and_then(Value::as_f64)
            .unwrap_or(10000.0) as f32;
        let scaling = j
            .get("rope_scaling")
            .filter(|v| !v.is_null())
            .or(rope_params);
        let rope_scaling = parse_rope_scaling(path, scaling)?;
        let f = |k: &str| j.get(k).and_then(Value::as_f64);
        let b = |k: &str| j.get(k).and_then(Value::as_bool);
        let cfg = Self {
            architecture,
            hidden_size,
            intermediate_size: usize_of("intermediate_size")?,
            num_layers: usize_of("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: usize_of("vocab_size")?,
            rms_norm_eps: f("rms_norm_eps").unwrap_or(1e-6) as f32,
            rope_theta,
            rope_scaling,
            max_position_embeddings: usize_of("max_position_embeddings").unwrap_or(4096),
            tie_word_embeddings: b("tie_word_embeddings").unwrap_or(false),
            attention_bias: architecture == Architecture::Qwen2
                || b("attention_bias").unwrap_or(false),
            qk_norm: architecture == Architecture::Qwen3,
            bos_token_id: id_list(j.get("bos_token_id")).first().copied(),
            eos_token_ids: id_list(j.get("eos_token_id")),
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Builds from GGUF metadata (`<arch>.*` keys) and the tensor list.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let path = g.path();
        let arch_name = g
            .architecture()
            .ok_or_else(|| cfg_err(path, "no `general.architecture`"))?;
        let architecture =
            Architecture::parse(arch_name).ok_or_else(|| ModelError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                arch: arch_name.to_string(),
            })?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let req = |k: &str| -> Result<usize> {
            g.get_u64(&key(k))
                .map(|v| v as usize)
                .filter(|&v| v > 0)
                .ok_or_else(|| cfg_err(path, format!("missing or invalid `{}`", key(k))))
        };
        let hidden_size = req("embedding_length")?;
        let num_heads = req("attention.head_count")?;
        let vocab_size = match g.get_u64(&key("vocab_size")) {
            Some(v) => v as usize,
            None => g
                .get_array("tokenizer.ggml.tokens")
                .map(<[_]>::len)
                .or_else(|| {
                    g.tensor_info("token_embd.weight")
                        .and_then(|t| t.shape.get(1).map(|&v| v as usize))
                })
                .ok_or_else(|| cfg_err(path, "cannot tell the vocabulary size"))?,
        };
        if let Some(t) = g.get_str(&key("rope.scaling.type"))
            && t != "none"
        {
            return Err(cfg_err(
                path,
                format!("unsupported rope scaling type `{t}` in GGUF metadata"),
            ));
        }
        let cfg = Self {
            architecture,
            hidden_size,
            intermediate_size: req("feed_forward_length")?,
            num_layers: req("block_count")?,
            num_heads,
            num_kv_heads: req("attention.head_count_kv").unwrap_or(num_heads),
            head_dim: req("attention.key_length").unwrap_or(hidden_size / num_heads),
            vocab_size,
            rms_norm_eps: g
                .get_f32(&key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-6),
            rope_theta: g.get_f32(&key("rope.freq_base")).unwrap_or(10000.0),
            rope_scaling: None,
            max_position_embeddings: req("context_length").unwrap_or(4096),
            tie_word_embeddings: g.tensor_info("output.weight").is_none(),
            attention_bias: g.tensor_info("blk.0.attn_q.bias").is_some(),
            qk_norm: g.tensor_info("blk.0.attn_q_norm.weight").is_some(),
            bos_token_id: g.get_u32("tokenizer.ggml.bos_token_id"),
            eos_token_ids: g
                .get_u32("tokenizer.ggml.eos_token_id")
                .into_iter()
                .collect(),
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(cfg_err(
                path,
                format!(
                    "num_heads {} is not a multiple of num_kv_heads {}",
                    self.num_heads, self.num_kv_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(cfg_err(path, format!("head_dim {} is odd", self.head_dim)));
        }
        Ok(())
    }
}

fn parse_rope_scaling(path: &Path, v: Option<&Value>) -> Result<Option<RopeScaling>> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let ty = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    match ty {
        "default" => Ok(None),
        "llama3" => {
            let f = |k: &str| {
                v.get(k)
                    .and_then(Value::as_f64)
                    .ok_or_else(|| cfg_err(path, format!("rope_scaling: missing `{k}`")))
            };
            Ok(Some(RopeScaling {
                factor: f("factor")? as f32,
                low_freq_factor: f("low_freq_factor")? as f32,
                high_freq_factor: f("high_freq_factor")? as f32,
                original_max_position_embeddings: f("original_max_position_embeddings")? as usize,
            }))
        }
        other => Err(cfg_err(
            path,
            format!("unsupported rope_scaling type `{other}` (supported: llama3)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{model_path, smollm2_gguf};

    #[test]
    fn smollm2_config_from_json_and_gguf_agree() {
        let p = model_path("smollm2-135m-instruct/config.json");
        let hf = ModelConfig::from_hf_file(&p).expect("hf");
        let g =
            ModelConfig::from_gguf(&GgufFile::open(smollm2_gguf()).expect("gguf")).expect("cfg");
        for c in [&hf, &g] {
            assert_eq!(c.architecture, Architecture::Llama);
            assert_eq!(
                (c.hidden_size, c.intermediate_size, c.num_layers),
                (576, 1536, 30)
            );
            assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (9, 3, 64));
            assert_eq!(c.vocab_size, 49152);
            assert_eq!(c.rope_theta, 100000.0);
            assert_eq!(c.max_position_embeddings, 8192);
            assert!(c.tie_word_embeddings && !c.attention_bias && !c.qk_norm);
            assert_eq!(
                (c.bos_token_id, c.eos_token_ids.as_slice()),
                (Some(1), &[2][..])
            );
            assert!((c.rms_norm_eps - 1e-5).abs() < 1e-9);
        }
    }

    #[test]
    fn stories_and_variants() {
        let p = model_path("stories260k/config.json");
        let c = ModelConfig::from_hf_file(&p).expect("stories");
        assert_eq!(
            (c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads),
            (64, 5, 8, 4)
        );
        assert_eq!(
            (c.head_dim, c.intermediate_size, c.vocab_size),
            (8, 172, 512)
        );

        let j = serde_json::json!({
            "architectures": ["Qwen3ForCausalLM"], "hidden_size": 1024, "num_attention_heads": 16,
            "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 3072,
            "num_hidden_layers": 28, "vocab_size": 151936, "rope_theta": 1000000.0,
            "eos_token_id": [151645, 151643], "tie_word_embeddings": true
        });
        let q = ModelConfig::from_hf_json(Path::new("q3/config.json"), &j).expect("qwen3");
        assert!(q.qk_norm && !q.attention_bias);
        assert_eq!(
            (q.head_dim, q.eos_token_ids.clone()),
            (128, vec![151645, 151643])
        );

        let mut l3 = j.clone();
        l3["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
        l3["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let l = ModelConfig::from_hf_json(Path::new("l3/config.json"), &l3).expect("llama3");
        assert_eq!(l.rope_scaling.map(|r| r.factor), Some(8.0));

        let mut bad = j.clone();
        bad["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
        let e = ModelConfig::from_hf_json(Path::new("gpt2/config.json"), &bad)
            .expect_err("unsupported")
            .to_string();
        assert!(
            e.contains("gpt2/config.json") && e.contains("GPT2LMHeadModel"),
            "{e}"
        );
    }
}
