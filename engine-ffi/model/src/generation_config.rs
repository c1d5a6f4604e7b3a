//! generation_config.json: EOS ids (one or a list) and default sampling values.

use std::path::Path;

use serde_json::Value;

use crate::chat_template::read_json;
use crate::config::id_list;
use crate::error::Result;

/// What a model's generation_config.json says; every field optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationConfig {
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub repetition_penalty: Option<f32>,
    pub max_new_tokens: Option<u32>,
}

impl GenerationConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        Ok(Self::from_json(&read_json(path)?))
    }

    pub fn from_json(j: &Value) -> Self {
        let f = |k: &str| j.get(k).and_then(Value::as_f64).map(|v| v as f32);
        let u = |k: &str| {
            j.get(k)
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
        };
        Self {
            bos_token_id: id_list(j.get("bos_token_id")).first().copied(),
            eos_token_ids: id_list(j.get("eos_token_id")),
            pad_token_id: id_list(j.get("pad_token_id")).first().copied(),
            temperature: f("temperature"),
            top_p: f("top_p"),
            top_k: u("top_k"),
            repetition_penalty: f("repetition_penalty"),
            max_new_tokens: u("max_new_tokens"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eos_as_number_or_list() {
        let g = GenerationConfig::from_json(&serde_json::json!({
            "eos_token_id": [151645, 151643], "temperature": 0.7, "top_k": 20}));
        assert_eq!(g.eos_token_ids, vec![151645, 151643]);
        assert_eq!((g.temperature, g.top_k), (Some(0.7), Some(20)));
        let g =
            GenerationConfig::from_json(&serde_json::json!({"eos_token_id": 2, "bos_token_id": 1}));
        assert_eq!((g.eos_token_ids, g.bos_token_id), (vec![2], Some(1)));
    }
}
