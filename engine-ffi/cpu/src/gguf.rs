//! GGUF files, read through [`ferrite_model::GgufFile`]: the config from its metadata and
//! the tensor directory renamed to HF names. Quantised blocks stay as the file has them.

use crate::config::{ModelConfig, RopeStyle};
use crate::error::{CpuError, Result};
use crate::store::{DType, Loc, RawTensor, Source, TensorStore};
use ferrite_model::gguf::gguf_to_hf_name;
use ferrite_model::{Architecture, GgufFile};
use std::collections::HashMap;
use std::path::Path;

/// Loads a GGUF file: its config (from metadata) and its tensors.
pub fn load(path: &Path) -> Result<(ModelConfig, TensorStore)> {
    let g = GgufFile::open(path)?;
    let mut tensors = HashMap::new();
    for t in g.tensors() {
        let Some(hf) = gguf_to_hf_name(&t.name) else {
            if t.name == "rope_freqs.weight" {
                return Err(CpuError::unsupported(
                    path,
                    "rope_freqs (Llama-3 rope scaling in GGUF) is not supported yet",
                ));
            }
            continue;
        };
        let dtype = DType::from_ggml(t.dtype).ok_or_else(|| {
            CpuError::unsupported(
                path,
                format!(
                    "tensor {} has GGML type {} (supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0)",
                    t.name, t.dtype
                ),
            )
        })?;
        // GGUF lists dimensions innermost first.
        let shape = t.shape.iter().rev().map(|&d| d as usize).collect();
        tensors.insert(
            hf,
            RawTensor {
                dtype,
                shape,
                loc: Loc::Gguf(t.name.clone()),
            },
        );
    }
    let m = ferrite_model::ModelConfig::from_gguf(&g)?;
    // llama.cpp's converter permutes the q/k rows of llama files into interleaved pairs.
    let rope_style = match m.architecture {
        Architecture::Llama | Architecture::Mistral => RopeStyle::Interleaved,
        Architecture::Qwen2 | Architecture::Qwen3 => RopeStyle::Neox,
    };
    let cfg = ModelConfig::from_model(&m, rope_style, path)?;
    let store = TensorStore {
        path: path.to_path_buf(),
        source: Source::Gguf(g),
        tensors,
    };
    Ok((cfg, store))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn smollm2() -> PathBuf {
        let dir = std::env::var("FERRITE_TEST_MODELS").map_or_else(
            |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models"),
            PathBuf::from,
        );
        dir.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
    }

    #[test]
    fn gguf_tensors_load_under_hf_names() {
        let (cfg, store) = load(&smollm2()).expect("load smollm2 gguf");
        assert_eq!(cfg.rope_style, RopeStyle::Interleaved);
        assert_eq!((cfg.hidden, cfg.heads, cfg.kv_heads), (576, 9, 3));
        assert!(cfg.tie_embeddings && !store.has("lm_head.weight"));
        let q = &store.tensors["model.layers.12.self_attn.q_proj.weight"];
        assert_eq!(
            (q.dtype, q.shape.as_slice()),
            (DType::Q4_1, &[576, 576][..])
        );
        let down = &store.tensors["model.layers.0.mlp.down_proj.weight"];
        assert_eq!(down.shape, [576, 1536]);
        let norm = store.vector("model.norm.weight", 576).expect("norm");
        assert!(norm.iter().all(|x| x.is_finite()) && norm.iter().any(|&x| x != 0.0));
        assert!(
            store
                .matrix("model.embed_tokens.weight", 49152, 576)
                .is_ok()
        );
    }
}
