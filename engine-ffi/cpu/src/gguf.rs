//! A minimal GGUF (v2/v3) reader: metadata scalars and tensor directory, tensors renamed to
//! their HF names. (`ferrite-model` is growing a full GGUF reader; switch to it once its file
//! parser lands.)

use crate::config::{Arch, ModelConfig, RopeStyle};
use crate::error::{CpuError, Result};
use crate::store::{DType, RawTensor, TensorStore, read_file};
use std::collections::HashMap;
use std::path::Path;

#[derive(Clone, Debug, PartialEq)]
enum Meta {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array,
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let s = self
            .b
            .get(self.at..self.at.saturating_add(n))
            .ok_or_else(|| CpuError::file(self.path, "truncated GGUF header"))?;
        self.at += n;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    fn string(&mut self) -> Result<String> {
        let n = self.u64()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn value(&mut self, t: u32) -> Result<Meta> {
        Ok(match t {
            0 => Meta::Int(self.take(1)?[0] as i64),
            1 => Meta::Int(self.take(1)?[0] as i8 as i64),
            2 => {
                let s = self.take(2)?;
                Meta::Int(u16::from_le_bytes([s[0], s[1]]) as i64)
            }
            3 => {
                let s = self.take(2)?;
                Meta::Int(i16::from_le_bytes([s[0], s[1]]) as i64)
            }
            4 => Meta::Int(self.u32()? as i64),
            5 => Meta::Int(self.u32()? as i32 as i64),
            6 => Meta::Float(f32::from_bits(self.u32()?) as f64),
            7 => Meta::Bool(self.take(1)?[0] != 0),
            8 => Meta::Str(self.string()?),
            9 => {
                let et = self.u32()?;
                let n = self.u64()?;
                for _ in 0..n {
                    self.value(et)?;
                }
                Meta::Array
            }
            10 => Meta::Int(self.u64()? as i64),
            11 => Meta::Int(self.u64()? as i64),
            12 => Meta::Float(f64::from_bits(self.u64()?)),
            other => {
                return Err(CpuError::file(
                    self.path,
                    format!("unknown GGUF value type {other}"),
                ));
            }
        })
    }
}

/// Maps a GGUF tensor name (`blk.3.attn_q.weight`) to its HF name.
fn hf_name(name: &str) -> Option<String> {
    match name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (part, suffix) = rest.rsplit_once('.')?;
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// Loads a GGUF file: its config (from metadata) and its tensors.
pub fn load(path: &Path) -> Result<(ModelConfig, TensorStore)> {
    let bytes = read_file(path)?;
    let mut c = Cursor {
        b: &bytes,
        at: 0,
        path,
    };
    if c.take(4)? != b"GGUF" {
        return Err(CpuError::file(path, "not a GGUF file (bad magic)"));
    }
    let version = c.u32()?;
    if !(2..=3).contains(&version) {
        return Err(CpuError::unsupported(
            path,
            format!("GGUF version {version}"),
        ));
    }
    let n_tensors = c.u64()?;
    let n_kv = c.u64()?;
    let mut meta = HashMap::new();
    for _ in 0..n_kv {
        let k = c.string()?;
        let t = c.u32()?;
        let v = c.value(t)?;
        meta.insert(k, v);
    }
    let mut infos = Vec::new();
    for _ in 0..n_tensors {
        let name = c.string()?;
        let nd = c.u32()? as usize;
        let mut dims = Vec::with_capacity(nd);
        for _ in 0..nd {
            dims.push(c.u64()? as usize);
        }
        let t = c.u32()?;
        let off = c.u64()? as usize;
        infos.push((name, dims, t, off));
    }
    let align = match meta.get("general.alignment") {
        Some(Meta::Int(a)) if *a > 0 => *a as usize,
        _ => 32,
    };
    let data_start = c.at.div_ceil(align) * align;
    let mut tensors = HashMap::new();
    for (name, dims, t, off) in infos {
        let dtype = match t {
            0 => DType::F32,
            1 => DType::F16,
            2 => DType::Q4_0,
            3 => DType::Q4_1,
            8 => DType::Q8_0,
            30 => DType::BF16,
            other => {
                return Err(CpuError::unsupported(
                    path,
                    format!(
                        "tensor {name} has GGML type {other} (supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0)"
                    ),
                ));
            }
        };
        let n: usize = dims.iter().product();
        let len = dtype
            .bytes_for(n)
            .ok_or_else(|| CpuError::file(path, format!("tensor {name}: partial block")))?;
        let start = data_start + off;
        if start + len > bytes.len() {
            return Err(CpuError::file(path, format!("tensor {name} out of bounds")));
        }
        let Some(hf) = hf_name(&name) else {
            if name == "rope_freqs.weight" {
                return Err(CpuError::unsupported(
                    path,
                    "rope_freqs (Llama-3 rope scaling in GGUF) is not supported yet",
                ));
            }
            continue;
        };
        // GGUF lists dimensions innermost first.
        let shape = dims.iter().rev().copied().collect();
        tensors.insert(
            hf,
            RawTensor {
                dtype,
                shape,
                file: 0,
                start,
                end: start + len,
            },
        );
    }
    let cfg = config_from_meta(path, &meta, &tensors)?;
    let store = TensorStore {
        path: path.to_path_buf(),
        files: vec![bytes],
        tensors,
    };
    Ok((cfg, store))
}

fn config_from_meta(
    path: &Path,
    meta: &HashMap<String, Meta>,
    tensors: &HashMap<String, RawTensor>,
) -> Result<ModelConfig> {
    let arch_s = match meta.get("general.architecture") {
        Some(Meta::Str(s)) => s.clone(),
        _ => return Err(CpuError::file(path, "no general.architecture")),
    };
    let (arch, rope_style) = match arch_s.as_str() {
        "llama" => (Arch::Llama, RopeStyle::Interleaved),
        "qwen2" => (Arch::Qwen2, RopeStyle::Neox),
        "qwen3" => (Arch::Qwen3, RopeStyle::Neox),
        other => {
            return Err(CpuError::unsupported(
                path,
                format!("architecture {other:?} (supported: llama, qwen2, qwen3)"),
            ));
        }
    };
    let int = |k: &str| -> Option<usize> {
        match meta.get(&format!("{arch_s}.{k}")) {
            Some(Meta::Int(v)) if *v >= 0 => Some(*v as usize),
            _ => None,
        }
    };
    let float = |k: &str| -> Option<f64> {
        match meta.get(&format!("{arch_s}.{k}")) {
            Some(Meta::Float(v)) => Some(*v),
            _ => None,
        }
    };
    let need =
        |k: &str| int(k).ok_or_else(|| CpuError::file(path, format!("missing {arch_s}.{k}")));
    let hidden = need("embedding_length")?;
    let heads = need("attention.head_count")?;
    let vocab = match int("vocab_size") {
        Some(v) => v,
        None => tensors
            .get("model.embed_tokens.weight")
            .and_then(|t| t.shape.first().copied())
            .ok_or_else(|| CpuError::file(path, "no vocab size"))?,
    };
    let cfg = ModelConfig {
        arch,
        hidden,
        intermediate: need("feed_forward_length")?,
        layers: need("block_count")?,
        heads,
        kv_heads: int("attention.head_count_kv").unwrap_or(heads),
        head_dim: int("attention.key_length").unwrap_or(hidden / heads.max(1)),
        vocab,
        eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5) as f32,
        rope_theta: float("rope.freq_base").unwrap_or(10000.0),
        rope_scaling: None,
        rope_style,
        max_context: int("context_length").unwrap_or(4096),
        tie_embeddings: !tensors.contains_key("lm_head.weight"),
    };
    cfg.validate(path)?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::hf_name;

    #[test]
    fn gguf_names_map_to_hf() {
        assert_eq!(
            hf_name("blk.12.attn_q.bias").as_deref(),
            Some("model.layers.12.self_attn.q_proj.bias")
        );
        assert_eq!(
            hf_name("blk.0.ffn_down.weight").as_deref(),
            Some("model.layers.0.mlp.down_proj.weight")
        );
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(hf_name("blk.0.unknown.weight"), None);
    }
}
