//! Per-step mask cost on SmolLM2's 49k vocabulary, and the vocabulary read from
//! tokenizer.json against the one read from the GGUF. Prints the numbers (`--nocapture`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{GGUF, smollm2_dir};
use ferrite_model::{ModelCard, Tokenizer};
use ferrite_protocol::GuidedDecoding;
use ferrite_structured::{StructuredProvider, Vocab};
use std::time::{Duration, Instant};

const SCHEMA: &str = r#"{"type":"object","properties":{"name":{"type":"string"},
  "age":{"type":"integer"},"tags":{"type":"array","items":{"type":"string"},"maxItems":3}},
  "required":["name","age","tags"],"additionalProperties":false}"#;

const DOC: &str = r#"{"name": "Alice Liddell", "age": 30, "tags": ["chess", "tea", "rabbits"]}"#;

fn pct(mut v: Vec<Duration>, p: f64) -> f64 {
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i].as_secs_f64() * 1e6
}

#[test]
fn tokenizer_json_and_gguf_give_the_same_bytes() {
    let dir = smollm2_dir();
    let card = ModelCard::load(dir.join(GGUF)).unwrap();
    let json = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let a = Vocab::from_tokenizer(&card.tokenizer, &card.eos_token_ids).unwrap();
    let b = Vocab::from_tokenizer(&json, &card.eos_token_ids).unwrap();
    assert_eq!(a.len(), 49152);
    assert_eq!(a.bytes, b.bytes);
    // Spot checks: a byte-level piece with a space, a special token, raw bytes.
    let id = |s: &str| json.token_to_id(s).unwrap() as usize;
    assert_eq!(a.bytes[id("Ġthe")], b" the");
    assert_eq!(a.bytes[id("<|im_end|>")], b"\xFF<|im_end|>");
    assert_eq!(a.bytes[id("Ċ")], b"\n");
    // Every ordinary token's bytes re-decode to the tokenizer's own text for it.
    for t in [id("Ġthe"), id("Ċ"), id("{\""), 300, 1000, 20000] {
        let text = json.decode(&[t as u32], false).unwrap();
        assert_eq!(String::from_utf8_lossy(&a.bytes[t]), text, "token {t}");
    }
}

#[test]
fn json_schema_mask_cost_on_49k_vocab() {
    let dir = smollm2_dir();
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let eos = [2u32];
    let t0 = Instant::now();
    let vocab = Vocab::from_tokenizer(&tok, &eos).unwrap();
    let p = StructuredProvider::new(&vocab).unwrap();
    let setup = t0.elapsed();
    let spec = GuidedDecoding::JsonSchema(SCHEMA.into());
    let doc = tok.encode(DOC, false).unwrap();
    // Logits as wide as the model's (SmolLM2 pads nothing, but test a padded tail too).
    let width = vocab.len() + 64;

    // Walk the document: each of its tokens must be allowed, EOS only at the very end.
    let mut cached = Vec::new();
    let mut first = Duration::ZERO;
    for k in 0..=doc.len() {
        let mut l = vec![0.5f32; width];
        let t = Instant::now();
        p.mask_logits(&spec, &doc[..k], &mut l).unwrap();
        let dt = t.elapsed();
        if k == 0 {
            first = dt; // includes compiling the grammar
        } else {
            cached.push(dt);
        }
        assert!(l[vocab.len()..].iter().all(|v| *v == f32::NEG_INFINITY));
        if k < doc.len() {
            assert!(
                l[doc[k] as usize].is_finite(),
                "token {k} ({}) masked",
                doc[k]
            );
            assert_eq!(l[2], f32::NEG_INFINITY, "EOS allowed at {k}");
        } else {
            let finite: Vec<usize> = (0..width).filter(|&i| l[i].is_finite()).collect();
            assert_eq!(finite, vec![2], "only EOS once the object is closed");
        }
    }
    let s = p.stats();
    assert_eq!((s.compiles, s.rebuilds, s.hits), (1, 1, doc.len() as u64));
    assert_eq!(s.masks, doc.len() as u64 + 1);
    let in_llg = s.mask_time.as_secs_f64() / s.masks as f64;

    // Rebuild cost (migration / preemption): a fresh state from the whole prefix.
    let mut rebuild = Vec::new();
    for _ in 0..5 {
        let q = StructuredProvider::new(&vocab).unwrap();
        let mut l = vec![0.5f32; width];
        q.mask_logits(&spec, &doc[..doc.len() / 2], &mut l).unwrap(); // compile
        let mut l = vec![0.5f32; width];
        let t = Instant::now();
        q.mask_logits(&spec, &doc[..doc.len() - 1], &mut l).unwrap();
        rebuild.push(t.elapsed());
    }

    // The frontend's check: compile only, no vocabulary.
    let t = Instant::now();
    for _ in 0..20 {
        ferrite_structured::validate(&spec).unwrap();
    }
    let validate_us = t.elapsed().as_secs_f64() * 1e6 / 20.0;

    let mean = cached.iter().map(Duration::as_secs_f64).sum::<f64>() / cached.len() as f64;
    eprintln!(
        "mask cost, SmolLM2 vocab {} ({} doc tokens): setup {:.0} ms; first step (compile) \
         {:.0} µs; cached steps mean {:.0} µs, p50 {:.0} µs, p90 {:.0} µs, max {:.0} µs; \
         rebuild from {} tokens p50 {:.0} µs; of a step, llguidance's compute_mask mean \
         {:.0} µs; validate {:.0} µs",
        vocab.len(),
        doc.len(),
        setup.as_secs_f64() * 1e3,
        first.as_secs_f64() * 1e6,
        mean * 1e6,
        pct(cached.clone(), 0.5),
        pct(cached.clone(), 0.9),
        pct(cached, 1.0),
        doc.len() - 1,
        pct(rebuild, 0.5),
        in_llg * 1e6,
        validate_us,
    );
}
