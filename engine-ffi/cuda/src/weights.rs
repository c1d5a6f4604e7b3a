//! Host-side weights in the layout the GPU uses: q|k|v fused into one `[qkv_dim, hidden]`
//! matrix and gate|up into one `[2 × intermediate, hidden]` matrix (row-major, as HF
//! stores `[out, in]`), loaded from safetensors and encoded to the device element type.

use crate::config::{CudaConfig, Dtype};
use crate::error::{CudaError, Result};
use safetensors::{Dtype as StDtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One layer, float32, fused layout.
#[derive(Clone, Debug, PartialEq)]
pub struct HostLayer {
    pub attn_norm: Vec<f32>,
    /// `[q_dim + 2 kv_dim, hidden]`: q rows, then k rows, then v rows.
    pub wqkv: Vec<f32>,
    /// `[hidden, q_dim]`.
    pub wo: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    /// `[2 intermediate, hidden]`: gate rows, then up rows.
    pub w_gate_up: Vec<f32>,
    /// `[hidden, intermediate]`.
    pub w_down: Vec<f32>,
}

/// A whole model, float32, fused layout.
#[derive(Clone, Debug, PartialEq)]
pub struct HostWeights {
    /// `[vocab, hidden]`.
    pub embed: Vec<f32>,
    pub layers: Vec<HostLayer>,
    pub norm: Vec<f32>,
    /// `[vocab, hidden]`; `None` when tied to `embed`.
    pub lm_head: Option<Vec<f32>>,
}

impl HostWeights {
    pub fn lm_head(&self) -> &[f32] {
        self.lm_head.as_deref().unwrap_or(&self.embed)
    }
}

/// Encodes float32 values as little-endian `dtype` elements (bf16: round to nearest even).
pub fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::Bf16 => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
    }
}

/// Decodes little-endian `dtype` elements to float32.
pub fn decode(bytes: &[u8], dtype: Dtype) -> Vec<f32> {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::Bf16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    }
}

/// Concatenates row-major matrices with the same column count along the rows.
pub fn concat_rows(parts: &[&[f32]]) -> Vec<f32> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

/// The element type a checkpoint's floating tensors suggest: float32 stays float32,
/// bf16/f16 become bf16.
pub fn checkpoint_dtype(folder: &Path) -> Result<Dtype> {
    let files = safetensor_files(folder)?;
    let first = files
        .values()
        .next()
        .ok_or_else(|| CudaError::file(folder, "no safetensors file"))?;
    let mm = map(first)?;
    let st = SafeTensors::deserialize(&mm).map_err(|e| CudaError::file(first, e.to_string()))?;
    let any_f32 = st
        .tensors()
        .iter()
        .any(|(_, t)| t.dtype() == StDtype::F32 && t.shape().len() == 2);
    Ok(if any_f32 { Dtype::F32 } else { Dtype::Bf16 })
}

/// Every tensor name → the file holding it (`model.safetensors`, or the shards of
/// `model.safetensors.index.json`).
fn safetensor_files(folder: &Path) -> Result<HashMap<String, PathBuf>> {
    let index = folder.join("model.safetensors.index.json");
    if index.exists() {
        let text =
            std::fs::read_to_string(&index).map_err(|e| CudaError::file(&index, e.to_string()))?;
        let j: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| CudaError::file(&index, e.to_string()))?;
        let map = j
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| CudaError::file(&index, "no weight_map"))?;
        return Ok(map
            .iter()
            .filter_map(|(k, v)| v.as_str().map(|f| (k.clone(), folder.join(f))))
            .collect());
    }
    let single = folder.join("model.safetensors");
    if !single.exists() {
        return Err(CudaError::file(
            folder,
            "no model.safetensors or model.safetensors.index.json (GGUF is not supported by the CUDA backend)",
        ));
    }
    let mm = map(&single)?;
    let st = SafeTensors::deserialize(&mm).map_err(|e| CudaError::file(&single, e.to_string()))?;
    Ok(st
        .names()
        .into_iter()
        .map(|n| (n.to_string(), single.clone()))
        .collect())
}

fn map(path: &Path) -> Result<memmap2::Mmap> {
    let f = std::fs::File::open(path).map_err(|e| CudaError::file(path, e.to_string()))?;
    // SAFETY: the file is opened read-only and not modified while mapped (model files).
    unsafe { memmap2::Mmap::map(&f) }.map_err(|e| CudaError::file(path, e.to_string()))
}

/// Reads tensors by name out of the (possibly sharded) checkpoint as float32.
struct Store {
    files: HashMap<String, PathBuf>,
    maps: HashMap<PathBuf, memmap2::Mmap>,
}

impl Store {
    fn open(folder: &Path) -> Result<Self> {
        let files = safetensor_files(folder)?;
        let mut maps = HashMap::new();
        for f in files.values() {
            if !maps.contains_key(f) {
                maps.insert(f.clone(), map(f)?);
            }
        }
        Ok(Store { files, maps })
    }

    fn has(&self, name: &str) -> bool {
        self.files.contains_key(name)
    }

    fn get(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let path = self
            .files
            .get(name)
            .ok_or_else(|| CudaError::Unsupported(format!("tensor {name} missing")))?;
        let mm = self
            .maps
            .get(path)
            .ok_or_else(|| CudaError::file(path, "not mapped"))?;
        let st = SafeTensors::deserialize(mm).map_err(|e| CudaError::file(path, e.to_string()))?;
        let t = st
            .tensor(name)
            .map_err(|e| CudaError::file(path, e.to_string()))?;
        let n: usize = t.shape().iter().product();
        if n != len {
            return Err(CudaError::file(
                path,
                format!("{name}: {n} elements, expected {len}"),
            ));
        }
        let d = t.data();
        Ok(match t.dtype() {
            StDtype::F32 => decode(d, Dtype::F32),
            StDtype::BF16 => decode(d, Dtype::Bf16),
            StDtype::F16 => d
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(CudaError::file(
                    path,
                    format!("{name}: dtype {other:?} not supported"),
                ));
            }
        })
    }
}

/// Loads an HF Llama-family safetensors folder into the fused float32 layout.
pub fn load_safetensors(folder: &Path, cfg: &CudaConfig) -> Result<HostWeights> {
    let s = Store::open(folder)?;
    let (h, qd, kvd, i) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate);
    let mut layers = Vec::with_capacity(cfg.layers);
    for l in 0..cfg.layers {
        let p = format!("model.layers.{l}");
        let t = |n: &str, len: usize| s.get(&format!("{p}.{n}"), len);
        let (q, k, v) = (
            t("self_attn.q_proj.weight", qd * h)?,
            t("self_attn.k_proj.weight", kvd * h)?,
            t("self_attn.v_proj.weight", kvd * h)?,
        );
        let (g, u) = (
            t("mlp.gate_proj.weight", i * h)?,
            t("mlp.up_proj.weight", i * h)?,
        );
        layers.push(HostLayer {
            attn_norm: t("input_layernorm.weight", h)?,
            wqkv: concat_rows(&[&q, &k, &v]),
            wo: t("self_attn.o_proj.weight", h * qd)?,
            ffn_norm: t("post_attention_layernorm.weight", h)?,
            w_gate_up: concat_rows(&[&g, &u]),
            w_down: t("mlp.down_proj.weight", h * i)?,
        });
    }
    let lm_head = if s.has("lm_head.weight") && !cfg.tie_embeddings {
        Some(s.get("lm_head.weight", cfg.vocab * h)?)
    } else {
        None
    };
    Ok(HostWeights {
        embed: s.get("model.embed_tokens.weight", cfg.vocab * h)?,
        layers,
        norm: s.get("model.norm.weight", h)?,
        lm_head,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_round_trip_rounds_to_nearest() {
        let v = [1.0f32, -2.5, 1.0 + 1.0 / 256.0, 3.140625, 1e-3];
        let back = decode(&encode(&v, Dtype::Bf16), Dtype::Bf16);
        assert_eq!(back[0], 1.0);
        assert_eq!(back[1], -2.5);
        // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties to even (1.0).
        assert_eq!(back[2], 1.0);
        assert_eq!(back[3], 3.140625);
        assert!((back[4] - 1e-3).abs() / 1e-3 < 4e-3);
        let f = decode(&encode(&v, Dtype::F32), Dtype::F32);
        assert_eq!(f, v);
    }

    #[test]
    fn fused_layouts_stack_rows() {
        let q = [1.0f32, 2.0, 3.0, 4.0];
        let k = [5.0f32, 6.0];
        let v = [7.0f32, 8.0];
        // Two columns: q has 2 rows, k and v one each.
        let f = concat_rows(&[&q, &k, &v]);
        assert_eq!(f, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        // Row r of the fused matrix is row r - q_rows of k.
        assert_eq!(&f[2 * 2..3 * 2], &k[..]);
    }

    #[test]
    fn stories260k_loads_fused() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/stories260k");
        if !dir.exists() {
            eprintln!("skipped: {} not present", dir.display());
            return;
        }
        let m = ferrite_model::ModelConfig::from_hf_file(&dir.join("config.json")).expect("cfg");
        let cfg = CudaConfig::from_model(&m).expect("llama");
        assert_eq!(checkpoint_dtype(&dir).expect("dtype"), Dtype::F32);
        let w = load_safetensors(&dir, &cfg).expect("load");
        assert_eq!(w.layers.len(), 5);
        assert_eq!(w.layers[0].wqkv.len(), cfg.qkv_dim() * cfg.hidden);
        assert_eq!(w.layers[0].w_gate_up.len(), 2 * 172 * 64);
        assert!(w.lm_head.is_none(), "tied embeddings");
        // Fused rows equal the separate tensors.
        let s = Store::open(&dir).expect("open");
        let k = s
            .get("model.layers.2.self_attn.k_proj.weight", cfg.kv_dim() * 64)
            .expect("k");
        let off = cfg.q_dim() * 64;
        assert_eq!(&w.layers[2].wqkv[off..off + k.len()], &k[..]);
        let up = s
            .get("model.layers.4.mlp.up_proj.weight", 172 * 64)
            .expect("up");
        assert_eq!(&w.layers[4].w_gate_up[172 * 64..], &up[..]);
    }
}
