//! Structured output on the real model: SmolLM2-135M-Instruct on `CpuExecutor`, greedy and
//! at temperature 0.8, under a JSON schema, a regex, a choice and `json_object`; plus a
//! sequence rebuilt from its tokens mid-way (migration) on a fresh provider.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Via, generate, model, params};
use ferrite_protocol::GuidedDecoding;
use ferrite_structured::{StructuredProvider, Vocab};
use serde_json::Value;

const PERSON_SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "name": {"type": "string"},
    "age": {"type": "integer"},
    "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3}
  },
  "required": ["name", "age", "tags"],
  "additionalProperties": false
}"#;

/// The schema above, checked by hand.
fn check_person(text: &str) {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {text}"));
    assert!(o["name"].is_string(), "name: {text}");
    assert!(o["age"].is_i64() || o["age"].is_u64(), "age: {text}");
    let tags = o["tags"]
        .as_array()
        .unwrap_or_else(|| panic!("tags: {text}"));
    assert!(tags.len() <= 3, "maxItems: {text}");
    assert!(tags.iter().all(Value::is_string), "tags items: {text}");
}

/// Whole-output match with the `regex` crate: the same syntax and semantics as the
/// constraint (`\d` is any Unicode decimal digit, as in Rust's and Python's regexes).
fn check_regex(rx: &str, text: &str) {
    let full = regex::Regex::new(&format!("^(?:{rx})$")).unwrap();
    assert!(full.is_match(text), "{text:?} does not match {rx}");
}

const SETTINGS: [(f32, u64); 3] = [(0.0, 0), (0.8, 1), (0.8, 7)];

#[test]
fn json_schema_greedy_and_sampled() {
    let m = model();
    let prompt = m.chat_prompt(
        "Describe a person named Alice, 30 years old, who likes chess, as JSON with the \
         fields name, age and tags.",
    );
    for (t, seed) in SETTINGS {
        let p = params(GuidedDecoding::JsonSchema(PERSON_SCHEMA.into()), t, seed);
        let (out, ended) = generate(m, &prompt, &[], &p, 160, Via::Forward);
        let text = m.decode(&out);
        eprintln!("schema t={t} seed={seed}: {text}");
        assert!(ended, "no EOS within budget (t={t}): {text}");
        check_person(&text);
    }
}

#[test]
fn regex_greedy_and_sampled() {
    let m = model();
    let prompt = m.chat_prompt("Give me a phone number in the form 555-0199.");
    for (t, seed) in SETTINGS {
        let p = params(GuidedDecoding::Regex(r"\d{3}-\d{4}".into()), t, seed);
        let (out, ended) = generate(m, &prompt, &[], &p, 20, Via::Forward);
        let text = m.decode(&out);
        eprintln!("regex t={t} seed={seed}: {text}");
        assert!(ended, "no EOS (t={t}): {text}");
        check_regex(r"\d{3}-\d{4}", &text);
    }
}

#[test]
fn choice_greedy_and_sampled() {
    let m = model();
    let choices = vec!["positive".to_string(), "negative".into(), "neutral".into()];
    let prompt =
        m.chat_prompt("Classify the sentiment of this review: \"I love this phone, it is great!\"");
    for (t, seed) in SETTINGS {
        let p = params(GuidedDecoding::Choice(choices.clone()), t, seed);
        let (out, ended) = generate(m, &prompt, &[], &p, 10, Via::Forward);
        let text = m.decode(&out);
        eprintln!("choice t={t} seed={seed}: {text}");
        assert!(ended, "no EOS (t={t}): {text}");
        assert!(
            choices.contains(&text),
            "{text:?} is not one of {choices:?}"
        );
    }
}

#[test]
fn json_object_greedy_and_sampled() {
    let m = model();
    let prompt = m.chat_prompt("Give me a JSON object with the name and the color of a cat.");
    for (t, seed) in SETTINGS {
        let p = params(GuidedDecoding::JsonObject, t, seed);
        let (out, ended) = generate(m, &prompt, &[], &p, 160, Via::Forward);
        let text = m.decode(&out);
        eprintln!("json_object t={t} seed={seed}: {text}");
        assert!(ended, "no EOS within budget (t={t}): {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(v.is_object(), "{text}");
    }
}

/// A request generates part of its answer on one worker, which is lost; another worker
/// (a fresh provider: no cached parser state) continues from prompt + generated tokens.
#[test]
fn migrated_sequence_completes_to_valid_output() {
    let m = model();
    let vocab = Vocab::from_tokenizer(&m.card.tokenizer, &m.card.eos_token_ids).unwrap();
    let prompt = m.chat_prompt("Describe a person named Bob, 41, a pilot, as JSON.");
    for (t, seed) in SETTINGS {
        let p = params(GuidedDecoding::JsonSchema(PERSON_SCHEMA.into()), t, seed);
        let (full, _) = generate(m, &prompt, &[], &p, 160, Via::Forward);
        let cut = (full.len() / 2).max(1);
        let (first, ended) = generate(m, &prompt, &[], &p, cut, Via::Forward);
        assert!(!ended && first.len() == cut);
        assert_eq!(first, full[..cut], "same seed, same positions, same tokens");
        let other = StructuredProvider::new(&vocab).unwrap();
        let (done, ended) = generate(m, &prompt, &first, &p, 160, Via::Provider(&other));
        let text = m.decode(&done);
        eprintln!("migrated at {cut} t={t} seed={seed}: {text}");
        assert!(ended, "no EOS after migration: {text}");
        check_person(&text);
        assert_eq!(
            done, full,
            "the migrated run continues exactly like the original"
        );
        let s = other.stats();
        assert_eq!(
            s.rebuilds, 1,
            "one rebuild from the tokens, then cache hits: {s:?}"
        );
    }
}
