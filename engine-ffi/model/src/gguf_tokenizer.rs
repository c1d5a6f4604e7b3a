//! Turns GGUF tokenizer metadata into an HF tokenizer.json document.
//!
//! `gpt2` models become byte-level BPE (vocab + merges, pre-tokenizer chosen by
//! `tokenizer.ggml.pre`); `llama` models become SentencePiece-style BPE with byte
//! fallback, merges rebuilt from the token scores (as transformers' GGUF converter does).

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

// GGUF token types.
const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

fn err(g: &GgufFile, msg: impl Into<String>) -> ModelError {
    ModelError::Tokenizer(format!("{}: {}", g.path().display(), msg.into()))
}

/// The tokenizer.json document for the GGUF's embedded tokenizer.
pub(crate) fn tokenizer_json(g: &GgufFile) -> Result<Value> {
    let model = g
        .get_str("tokenizer.ggml.model")
        .ok_or_else(|| err(g, "no tokenizer.ggml.model in the GGUF metadata"))?;
    let tokens = g
        .get_str_array("tokenizer.ggml.tokens")
        .ok_or_else(|| err(g, "no tokenizer.ggml.tokens string array"))?;
    let types = g
        .get_i64_array("tokenizer.ggml.token_type")
        .unwrap_or_else(|| vec![1; tokens.len()]);
    if types.len() != tokens.len() {
        return Err(err(g, "token_type and tokens differ in length"));
    }
    let added: Vec<Value> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, t))| matches!(**t, TYPE_CONTROL | TYPE_USER_DEFINED | TYPE_UNKNOWN))
        .map(|(id, (tok, &t))| {
            json!({"id": id, "content": tok, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": t == TYPE_USER_DEFINED, "special": t != TYPE_USER_DEFINED})
        })
        .collect();
    let vocab: serde_json::Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    let token_at = |key: &str| {
        g.get_u32(key)
            .and_then(|id| tokens.get(id as usize).map(|t| t.to_string()))
    };
    let bos = token_at("tokenizer.ggml.bos_token_id");
    let eos = token_at("tokenizer.ggml.eos_token_id");
    let add_bos = g.get_bool("tokenizer.ggml.add_bos_token");
    let add_eos = g.get_bool("tokenizer.ggml.add_eos_token").unwrap_or(false);

    let (model_json, normalizer, pre, decoder, default_add_bos) = match model {
        "gpt2" => {
            let merges = g
                .get_str_array("tokenizer.ggml.merges")
                .ok_or_else(|| err(g, "gpt2 tokenizer without tokenizer.ggml.merges"))?;
            let pre_name = g.get_str("tokenizer.ggml.pre").unwrap_or("default");
            let byte_level = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex});
            let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
            let (normalizer, pre) = match pre_name {
                "smollm" | "starcoder" | "refact" | "codeshell" => (
                    Value::Null,
                    json!({"type": "Sequence", "pretokenizers": [
                        {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
                ),
                "llama-bpe" | "llama3" | "smaug-bpe" => (
                    Value::Null,
                    json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)]}),
                ),
                "qwen2" => (
                    json!({"type": "NFC"}),
                    json!({"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(false)]}),
                ),
                "default" | "gpt-2" | "gpt2" => (Value::Null, byte_level(true)),
                other => {
                    return Err(err(
                        g,
                        format!(
                            "unsupported GGUF pre-tokenizer `{other}` (supported: smollm, starcoder, llama-bpe, qwen2, gpt-2)"
                        ),
                    ));
                }
            };
            let model = json!({"type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
                "byte_fallback": false, "ignore_merges": pre_name.starts_with("llama"),
                "vocab": vocab, "merges": merges});
            let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
            (model, normalizer, pre, decoder, false)
        }
        "llama" => {
            let scores = g
                .get_f32_array("tokenizer.ggml.scores")
                .ok_or_else(|| err(g, "llama tokenizer without tokenizer.ggml.scores"))?;
            let merges = spm_merges(&tokens, &scores);
            let unk = g
                .get_u32("tokenizer.ggml.unknown_token_id")
                .and_then(|id| tokens.get(id as usize))
                .map(|t| t.to_string());
            let model = json!({"type": "BPE", "dropout": null, "unk_token": unk,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
                "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges});
            let prefix = g
                .get_bool("tokenizer.ggml.add_space_prefix")
                .unwrap_or(true);
            let mut norms = Vec::new();
            if prefix {
                norms.push(json!({"type": "Prepend", "prepend": "\u{2581}"}));
            }
            norms.push(
                json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}),
            );
            let mut decs = vec![
                json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if prefix {
                decs.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            (
                model,
                json!({"type": "Sequence", "normalizers": norms}),
                Value::Null,
                json!({"type": "Sequence", "decoders": decs}),
                true,
            )
        }
        other => {
            return Err(err(
                g,
                format!("unsupported tokenizer.ggml.model `{other}` (supported: gpt2, llama)"),
            ));
        }
    };

    let mut single = Vec::new();
    let mut special_map = serde_json::Map::new();
    let mut special = |tok: &Option<String>, single: &mut Vec<Value>| {
        if let Some(t) = tok {
            single.push(json!({"SpecialToken": {"id": t, "type_id": 0}}));
            let id = tokens.iter().position(|x| x == t).unwrap_or(0);
            special_map.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
        }
    };
    if add_bos.unwrap_or(default_add_bos) {
        special(&bos, &mut single);
    }
    single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    if add_eos {
        special(&eos, &mut single);
    }
    let post = if special_map.is_empty() {
        Value::Null
    } else {
        json!({"type": "TemplateProcessing", "single": single, "pair": single,
               "special_tokens": special_map})
    };
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added, "normalizer": normalizer, "pre_tokenizer": pre,
        "post_processor": post, "decoder": decoder, "model": model_json,
    }))
}

/// SentencePiece BPE merges from the vocabulary scores: every split of a token
/// into two vocabulary pieces is a merge, ranked by the merged token's score
/// (higher first), then by the pieces' ids.
fn spm_merges(tokens: &[&str], scores: &[f32]) -> Vec<String> {
    let ids: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let mut merges: Vec<(f32, usize, usize, String)> = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        let score = scores.get(id).copied().unwrap_or(0.0);
        for (split, _) in tok.char_indices().skip(1) {
            let (l, r) = tok.split_at(split);
            if let (Some(&li), Some(&ri)) = (ids.get(l), ids.get(r)) {
                merges.push((score, li, ri, format!("{l} {r}")));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    merges.into_iter().map(|m| m.3).collect()
}
