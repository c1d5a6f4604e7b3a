//! Checks against the transformers references in `<models>/reference/`.

use serde_json::Value;

use crate::test_util::{GgufBuilder, model_path, reference, smollm2_gguf};
use crate::{Detokenizer, GgufFile, ModelCard, ModelFormat, Tokenizer};

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn cases(model: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for f in [format!("{model}.json"), format!("{model}.batch.json")] {
        let r = reference(&f);
        out.extend(r["cases"].as_array().expect("cases").iter().cloned());
    }
    assert!(!out.is_empty());
    out
}

/// Prompt ids of a case as the card would make them: chat → template then
/// encode without special tokens; completion → encode with them.
fn prompt_ids(card_tok: &Tokenizer, card: Option<&ModelCard>, case: &Value) -> Vec<u32> {
    match case["kind"].as_str() {
        Some("chat") => {
            let card = card.expect("chat cases need a card");
            let msgs = case["messages"].as_array().expect("messages");
            let text = card.chat_template.render(msgs, true).expect("render");
            assert_eq!(
                text,
                case["rendered_prompt"].as_str().expect("rendered"),
                "{}",
                case["name"]
            );
            card_tok.encode(&text, false).expect("encode")
        }
        _ => card_tok
            .encode(case["prompt"].as_str().expect("prompt"), true)
            .expect("encode"),
    }
}

/// Streams the greedy ids after the prompt; checks the pieces against greedy_text.
fn check_stream(tok: &Tokenizer, case: &Value, prompt: &[u32]) {
    let mut d = Detokenizer::with_prompt(prompt, false);
    let mut pieces = Vec::new();
    for id in ids(&case["greedy_token_ids"]) {
        if let Some(p) = d.step(tok, id).expect("step") {
            assert!(!p.contains('\u{FFFD}'), "{}: piece {p:?}", case["name"]);
            pieces.push(p);
        }
    }
    if let Some(p) = d.flush(tok).expect("flush") {
        pieces.push(p);
    }
    let expected = case["greedy_text"].as_str().expect("greedy_text");
    assert_eq!(pieces.concat(), expected, "{}", case["name"]);
    assert_eq!(d.text(), expected);
    assert_eq!(
        d.generated_len(),
        case["greedy_token_ids"].as_array().map_or(0, Vec::len)
    );
}

#[test]
fn stories260k_matches_reference() {
    let card = ModelCard::load(model_path("stories260k")).expect("load stories260k");
    assert_eq!(card.name, "stories260k");
    assert_eq!(card.format, ModelFormat::HfFolder);
    assert_eq!(card.eos_token_ids, vec![2]);
    assert_eq!(card.context_length, 512);
    assert_eq!(
        card.weight_files,
        vec![model_path("stories260k/model.safetensors")]
    );
    assert!(card.chat_template.is_fallback());
    for case in cases("stories260k") {
        let got = prompt_ids(&card.tokenizer, Some(&card), &case);
        assert_eq!(got, ids(&case["prompt_token_ids"]), "{}", case["name"]);
        check_stream(&card.tokenizer, &case, &got);
    }
}

#[test]
fn smollm2_gguf_card_matches_reference() {
    let card = ModelCard::load(smollm2_gguf()).expect("load smollm2");
    assert_eq!(card.name, "SmolLM2-135M-Instruct.Q4_1");
    assert_eq!(card.format, ModelFormat::Gguf);
    assert_eq!(card.eos_token_ids, vec![2]);
    assert_eq!(card.context_length, 8192);
    assert!(card.gguf.is_some());
    let r = reference("smollm2-135m-instruct.json");
    assert_eq!(
        card.chat_template.source(),
        r["tokenizer"]["chat_template"].as_str().expect("template")
    );
    for case in cases("smollm2-135m-instruct") {
        let got = prompt_ids(&card.tokenizer, Some(&card), &case);
        assert_eq!(got, ids(&case["prompt_token_ids"]), "{}", case["name"]);
        check_stream(&card.tokenizer, &case, &got);
    }
}

#[test]
fn smollm2_tokenizer_and_template_from_gguf_metadata_alone() {
    let g = GgufFile::open(smollm2_gguf()).expect("open");
    let tok = Tokenizer::from_gguf(&g).expect("tokenizer from gguf");
    let json_tok = Tokenizer::from_file(&model_path("smollm2-135m-instruct/tokenizer.json"))
        .expect("tokenizer.json");
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.special_tokens()[..3], json_tok.special_tokens()[..3]);
    let template = crate::ChatTemplate::new(
        g.get_str("tokenizer.chat_template").expect("template"),
        "<|im_start|>",
        "<|im_end|>",
    )
    .expect("compile");
    for case in cases("smollm2-135m-instruct") {
        let want = ids(&case["prompt_token_ids"]);
        let got = match case["kind"].as_str() {
            Some("chat") => {
                let text = template
                    .render(case["messages"].as_array().expect("m"), true)
                    .expect("render");
                assert_eq!(text, case["rendered_prompt"].as_str().expect("r"));
                tok.encode(&text, false).expect("encode")
            }
            _ => tok
                .encode(case["prompt"].as_str().expect("p"), true)
                .expect("encode"),
        };
        assert_eq!(got, want, "{}", case["name"]);
        let all: Vec<u32> = want
            .iter()
            .chain(&ids(&case["greedy_token_ids"]))
            .copied()
            .collect();
        assert_eq!(
            tok.decode(&all, false).expect("decode"),
            json_tok.decode(&all, false).expect("decode")
        );
        check_stream(&tok, &case, &got);
    }
}

#[test]
fn non_ascii_streams_whole_characters() {
    let tok = Tokenizer::from_file(&model_path("smollm2-135m-instruct/tokenizer.json"))
        .expect("tokenizer");
    let text = "Ünïcödé 日本語 emoji 🚀 — done";
    let ids = tok.encode(text, false).expect("encode");
    // At least one token alone is an incomplete UTF-8 sequence.
    assert!(
        ids.iter()
            .any(|&i| tok.decode(&[i], false).expect("d").contains('\u{FFFD}'))
    );
    let mut d = Detokenizer::new(false);
    let mut held_back = 0;
    let mut out = String::new();
    for &i in &ids {
        match d.step(&tok, i).expect("step") {
            Some(p) => {
                assert!(!p.contains('\u{FFFD}'), "{p:?}");
                out.push_str(&p);
            }
            None => held_back += 1,
        }
    }
    assert!(held_back > 0);
    assert!(d.flush(&tok).expect("flush").is_none());
    assert_eq!(out, text);
}

#[test]
fn sentencepiece_tokenizer_from_gguf_metadata() {
    // Rebuild stories260k's tokenizer as a llama.cpp GGUF would carry it:
    // tokens, scores (merged pieces rank by id), types (control, byte, normal).
    let json_tok = Tokenizer::from_file(&model_path("stories260k/tokenizer.json")).expect("json");
    let n = json_tok.vocab_size() as u32;
    let tokens: Vec<String> = (0..n)
        .map(|i| json_tok.token_to_piece(i).expect("piece"))
        .collect();
    let scores: Vec<f32> = (0..n)
        .map(|i| if i < 259 { 0.0 } else { -(i as f32) })
        .collect();
    let types: Vec<i32> = (0..n as i32)
        .map(|i| match i {
            0 => 2,
            1 | 2 => 3,
            3..=258 => 6,
            _ => 1,
        })
        .collect();
    let bytes = GgufBuilder::default()
        .string("general.architecture", "llama")
        .string("tokenizer.ggml.model", "llama")
        .strings("tokenizer.ggml.tokens", &tokens)
        .f32s("tokenizer.ggml.scores", &scores)
        .i32s("tokenizer.ggml.token_type", &types)
        .u32("tokenizer.ggml.bos_token_id", 1)
        .u32("tokenizer.ggml.eos_token_id", 2)
        .u32("tokenizer.ggml.unknown_token_id", 0)
        .bool("tokenizer.ggml.add_bos_token", true)
        .build();
    let g = GgufFile::from_bytes("stories.gguf", bytes).expect("gguf");
    let tok = Tokenizer::from_gguf(&g).expect("spm from gguf");
    for case in cases("stories260k") {
        let prompt = case["prompt"].as_str().expect("prompt");
        let got = tok.encode(prompt, true).expect("encode");
        assert_eq!(got, ids(&case["prompt_token_ids"]), "{}", case["name"]);
        assert_eq!(tok.decode(&got, true).expect("decode"), prompt);
    }
    // Byte fallback: a character outside the 512-token vocabulary.
    let e = tok.encode("日 é", false).expect("encode");
    assert_eq!(e, json_tok.encode("日 é", false).expect("encode"));
    assert!(
        e.iter().filter(|&&i| (3..=258).contains(&i)).count() >= 3,
        "{e:?}"
    );
    assert_eq!(tok.decode(&e, false).expect("decode"), "日 é");
}

#[test]
fn missing_and_unsupported_files_are_named() {
    let e = ModelCard::load("/nonexistent/model")
        .expect_err("missing")
        .to_string();
    assert!(e.contains("/nonexistent/model"), "{e}");
    let tmp = std::env::temp_dir().join(format!("ferrite-model-test-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("tmp");
    std::fs::write(
        tmp.join("config.json"),
        r#"{"architectures": ["FalconForCausalLM"]}"#,
    )
    .expect("write");
    let e = ModelCard::load(&tmp).expect_err("unsupported").to_string();
    assert!(
        e.contains("config.json") && e.contains("FalconForCausalLM"),
        "{e}"
    );
    let bad = tmp.join("bad.gguf");
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00").expect("write");
    let e = ModelCard::load(&bad).expect_err("truncated").to_string();
    assert!(e.contains("bad.gguf") && e.contains("truncated"), "{e}");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn gguf_alone_uses_its_own_tokenizer_and_template() {
    let tmp = std::env::temp_dir().join(format!("ferrite-gguf-alone-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("tmp");
    let link = tmp.join("smol.gguf");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(smollm2_gguf(), &link).expect("symlink");
    let card = ModelCard::load(&tmp).expect("load folder with one gguf");
    assert_eq!(card.format, ModelFormat::Gguf);
    assert_eq!(card.eos_token_ids, vec![2]);
    assert!(!card.chat_template.is_fallback());
    assert_eq!(card.chat_template.bos_token(), "<|im_start|>");
    for case in cases("smollm2-135m-instruct") {
        let got = prompt_ids(&card.tokenizer, Some(&card), &case);
        assert_eq!(got, ids(&case["prompt_token_ids"]), "{}", case["name"]);
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn card_parts_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<ModelCard>();
    send_sync::<Tokenizer>();
    send_sync::<crate::ChatTemplate>();
    send_sync::<Detokenizer>();
}

#[test]
fn detokenizer_skips_special_tokens_when_asked() {
    let tok = Tokenizer::from_file(&model_path("smollm2-135m-instruct/tokenizer.json"))
        .expect("tokenizer");
    let ids = tok
        .encode("<|im_start|>assistant\nHi there!<|im_end|>", false)
        .expect("encode");
    assert_eq!(ids[0], 1);
    let mut keep = Detokenizer::new(false);
    let mut skip = Detokenizer::new(true);
    for &i in &ids {
        keep.step(&tok, i).expect("step");
        skip.step(&tok, i).expect("step");
    }
    assert_eq!(keep.text(), "<|im_start|>assistant\nHi there!<|im_end|>");
    assert_eq!(skip.text(), "assistant\nHi there!");
}
