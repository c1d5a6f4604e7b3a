//! GGUF (llama.cpp) tensor names ↔ Hugging Face tensor names for Llama-family models.

const GLOBAL: &[(&str, &str)] = &[
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

const PER_LAYER: &[(&str, &str)] = &[
    ("attn_norm.weight", "input_layernorm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_q.bias", "self_attn.q_proj.bias"),
    ("attn_k.bias", "self_attn.k_proj.bias"),
    ("attn_v.bias", "self_attn.v_proj.bias"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("attn_q_norm.weight", "self_attn.q_norm.weight"),
    ("attn_k_norm.weight", "self_attn.k_norm.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
];

/// The HF name of a GGUF tensor (`blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight`);
/// `None` for names without an HF counterpart (e.g. `rope_freqs.weight`).
pub fn gguf_to_hf_name(name: &str) -> Option<String> {
    if let Some(&(_, hf)) = GLOBAL.iter().find(|(g, _)| *g == name) {
        return Some(hf.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let &(_, hf) = PER_LAYER.iter().find(|(g, _)| *g == suffix)?;
    Some(format!("model.layers.{layer}.{hf}"))
}

/// The GGUF name of an HF tensor; inverse of [`gguf_to_hf_name`].
pub fn hf_to_gguf_name(name: &str) -> Option<String> {
    if let Some(&(g, _)) = GLOBAL.iter().find(|(_, h)| *h == name) {
        return Some(g.to_string());
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let &(g, _) = PER_LAYER.iter().find(|(_, h)| *h == suffix)?;
    Some(format!("blk.{layer}.{g}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufFile;
    use crate::test_util::smollm2_gguf;

    #[test]
    fn every_smollm2_tensor_has_an_hf_name() {
        let g = GgufFile::open(smollm2_gguf()).expect("open");
        for t in g.tensors() {
            let hf = gguf_to_hf_name(&t.name).unwrap_or_else(|| panic!("{}", t.name));
            assert_eq!(hf_to_gguf_name(&hf).as_deref(), Some(t.name.as_str()));
        }
        assert_eq!(
            gguf_to_hf_name("blk.12.ffn_down.weight").as_deref(),
            Some("model.layers.12.mlp.down_proj.weight")
        );
        assert!(g.tensor_info("output_norm.weight").is_some());
        assert!(g.tensor_info("output.weight").is_none());
        assert_eq!(gguf_to_hf_name("rope_freqs.weight"), None);
    }
}
