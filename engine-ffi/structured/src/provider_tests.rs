#![allow(clippy::unwrap_used)]
use super::*;
use ferrite_engine::{LogitsProcessorRegistry, SamplerScratch, SamplingContext, try_sample_with};
use ferrite_protocol::SamplingParams;

const EOS: u32 = 0;
const PIECES: &[&str] = &[
    "", // EOS, replaced below
    "{", "}", "\"", ":", ",", " ", "a", "b", "ab", "{\"", "\": ", ", \"", "yes", "no", "ma", "ybe",
    "y", "-", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "12", "[", "]", "name", "age",
    "tags", "\n", "x",
];

fn vocab() -> Vocab {
    let mut bytes: Vec<Vec<u8>> = PIECES.iter().map(|p| p.as_bytes().to_vec()).collect();
    bytes[EOS as usize] = b"\xFF</s>".to_vec();
    Vocab::new(bytes, &[EOS]).unwrap()
}

fn id(piece: &str) -> u32 {
    PIECES.iter().position(|p| *p == piece).unwrap() as u32
}

fn ids(pieces: &[&str]) -> Vec<u32> {
    pieces.iter().map(|p| id(p)).collect()
}

/// Ids left finite after masking all-zero logits (with 5 padded ids past the vocabulary).
fn allowed(p: &StructuredProvider, spec: &GuidedDecoding, generated: &[u32]) -> Vec<u32> {
    let mut l = vec![0.0f32; PIECES.len() + 5];
    p.mask_logits(spec, generated, &mut l).unwrap();
    (0..l.len() as u32)
        .filter(|&i| l[i as usize].is_finite())
        .collect()
}

#[test]
fn regex_masks_each_step() {
    let p = StructuredProvider::new(&vocab()).unwrap();
    let spec = GuidedDecoding::Regex(r"\d{3}-\d{4}".into());
    let digits = ids(&["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);
    let mut with12 = digits.clone();
    with12.push(id("12"));
    with12.sort_unstable();
    assert_eq!(allowed(&p, &spec, &[]), with12);
    // After "12": one digit, never "12" again (it would make four).
    assert_eq!(allowed(&p, &spec, &ids(&["12"])), digits);
    assert_eq!(allowed(&p, &spec, &ids(&["12", "3"])), vec![id("-")]);
    let done = ids(&["12", "3", "-", "4", "5", "6", "7"]);
    assert_eq!(allowed(&p, &spec, &done), vec![EOS]);
    // One step earlier EOS is not allowed.
    assert!(!allowed(&p, &spec, &done[..6]).contains(&EOS));
}

#[test]
fn choice_allows_prefixes_only() {
    let p = StructuredProvider::new(&vocab()).unwrap();
    let spec = GuidedDecoding::Choice(vec!["yes".into(), "no".into(), "maybe".into()]);
    assert_eq!(allowed(&p, &spec, &[]), ids(&["yes", "no", "ma", "y"]));
    assert_eq!(allowed(&p, &spec, &ids(&["ma"])), ids(&["ybe", "y"]));
    assert_eq!(allowed(&p, &spec, &ids(&["no"])), vec![EOS]);
    assert_eq!(allowed(&p, &spec, &ids(&["ma", "ybe"])), vec![EOS]);
}

#[test]
fn json_schema_accepts_a_valid_document_and_ends_it() {
    let p = StructuredProvider::new(&vocab()).unwrap();
    let spec = GuidedDecoding::JsonSchema(
        r#"{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"}},
            "required":["name","age"],"additionalProperties":false}"#
            .into(),
    );
    // {"name": "ab", "age": 12}
    let doc = ids(&[
        "{\"", "name", "\": ", "\"", "ab", "\"", ", \"", "age", "\": ", "12", "}",
    ]);
    for k in 0..doc.len() {
        let a = allowed(&p, &spec, &doc[..k]);
        assert!(a.contains(&doc[k]), "step {k}: {:?} not in {a:?}", doc[k]);
        assert!(!a.contains(&EOS), "EOS allowed at step {k}");
        assert!(a.iter().all(|&t| (t as usize) < PIECES.len()));
    }
    assert_eq!(allowed(&p, &spec, &doc), vec![EOS]);
    // Before "age" is given the object cannot close; and no free whitespace/newline.
    let a = allowed(&p, &spec, &doc[..6]);
    assert!(!a.contains(&id("}")));
    assert!(!a.contains(&id("\n")));
    // An integer does not take letters.
    let a = allowed(&p, &spec, &doc[..9]);
    assert!(!a.contains(&id("a")) && a.contains(&id("1")));
}

#[test]
fn json_object_allows_any_object() {
    let p = StructuredProvider::new(&vocab()).unwrap();
    let a = allowed(&p, &GuidedDecoding::JsonObject, &[]);
    assert!(a.contains(&id("{")) && a.contains(&id("{\"")));
    assert!(!a.contains(&id("[")) && !a.contains(&EOS) && !a.contains(&id("x")));
    let doc = ids(&["{\"", "x", "\": ", "[", "1", "]", "}"]);
    for k in 0..doc.len() {
        assert!(allowed(&p, &GuidedDecoding::JsonObject, &doc[..k]).contains(&doc[k]));
    }
    assert_eq!(allowed(&p, &GuidedDecoding::JsonObject, &doc), vec![EOS]);
}

#[test]
fn cache_continues_states_and_rebuild_matches() {
    let p = StructuredProvider::new(&vocab()).unwrap();
    let spec = GuidedDecoding::Regex(r"\d{3}-\d{4}".into());
    let generated = ids(&["1", "2", "3", "-", "4", "5"]);
    let mut masks = Vec::new();
    for k in 0..=generated.len() {
        masks.push(allowed(&p, &spec, &generated[..k]));
    }
    let s = p.stats();
    assert_eq!(s.compiles, 1);
    assert_eq!(s.rebuilds, 1, "{s:?}");
    assert_eq!(s.hits, generated.len() as u64);
    // A fresh provider (another worker after migration) rebuilds from the tokens alone.
    let q = StructuredProvider::new(&vocab()).unwrap();
    for k in [3, generated.len()] {
        assert_eq!(allowed(&q, &spec, &generated[..k]), masks[k]);
    }
    assert_eq!(q.stats().rebuilds, 2);
    // Retrying a step (same prefix) reuses the state of that prefix.
    let before = p.stats().hits;
    assert_eq!(allowed(&p, &spec, &generated), masks[generated.len()]);
    assert_eq!(p.stats().hits, before + 1);
}

#[test]
fn tokens_outside_the_language_are_an_error() {
    let p = StructuredProvider::new(&vocab()).unwrap();
    let spec = GuidedDecoding::Regex(r"\d{3}".into());
    let mut l = vec![0.0f32; PIECES.len()];
    let err = p.mask_logits(&spec, &ids(&["1", "x"]), &mut l).unwrap_err();
    assert!(
        err.to_string().contains("left the constrained language"),
        "{err}"
    );
    let bad = GuidedDecoding::JsonSchema(r#"{"type":"nope"}"#.into());
    assert!(p.mask_logits(&bad, &[], &mut l).is_err());
}

fn ctx(spec: GuidedDecoding, history: &[u32], prompt_len: u32) -> SamplingContext {
    SamplingContext {
        params: Arc::new(SamplingParams {
            guided: Some(spec),
            ..SamplingParams::default()
        }),
        history: Some(history.into()),
        prompt_len,
        generated: history.len() as u32 - prompt_len,
        banned: Vec::new(),
    }
}

#[test]
fn sampler_applies_the_provider_and_fails_without_one() {
    let p = StructuredProvider::new(&vocab()).unwrap();
    let reg = LogitsProcessorRegistry::new();
    let mut scratch = SamplerScratch::default();
    // The model prefers "x"; the constraint only allows "-" after three digits.
    let prompt = ids(&["x", "x"]);
    let mut history = prompt.clone();
    history.extend(ids(&["1", "2", "3"]));
    let c = ctx(GuidedDecoding::Regex(r"\d{3}-\d".into()), &history, 2);
    let mut l = vec![0.0f32; PIECES.len() + 3];
    l[id("x") as usize] = 10.0;
    let (tok, _) = try_sample_with(&mut l, &c, 5, &reg, Some(&p), &mut scratch).unwrap();
    assert_eq!(tok, id("-"));
    let mut l = vec![0.0f32; PIECES.len()];
    let err = try_sample_with(&mut l, &c, 5, &reg, None, &mut scratch).unwrap_err();
    assert!(
        err.to_string().contains("no guided-decoding provider"),
        "{err}"
    );
}

#[test]
fn banned_eos_is_forced_when_the_grammar_is_complete() {
    let p = StructuredProvider::new(&vocab()).unwrap();
    let reg = LogitsProcessorRegistry::new();
    let mut scratch = SamplerScratch::default();
    let mut c = ctx(
        GuidedDecoding::Choice(vec!["no".into()]),
        &ids(&["x", "no"]),
        1,
    );
    c.banned = vec![EOS]; // min_tokens not reached yet
    let mut l = vec![1.0f32; PIECES.len()];
    let (tok, _) = try_sample_with(&mut l, &c, 2, &reg, Some(&p), &mut scratch).unwrap();
    assert_eq!(tok, EOS);
}

#[test]
fn eos_past_the_end_keeps_eos_only() {
    // `ignore_eos` requests keep going after the grammar finished.
    let p = StructuredProvider::new(&vocab()).unwrap();
    let spec = GuidedDecoding::Choice(vec!["no".into()]);
    assert_eq!(allowed(&p, &spec, &[id("no"), EOS]), vec![EOS]);
    let q = StructuredProvider::new(&vocab()).unwrap();
    assert_eq!(allowed(&q, &spec, &[id("no"), EOS, EOS, EOS]), vec![EOS]);
    // Accepting but open-ended (more digits could follow): EOS ends it.
    let digits = GuidedDecoding::Regex(r"\d+".into());
    assert!(allowed(&q, &digits, &[id("12")]).contains(&id("3")));
    assert_eq!(allowed(&q, &digits, &[id("12"), EOS]), vec![EOS]);
    assert_eq!(allowed(&q, &digits, &[id("12"), EOS, EOS]), vec![EOS]);
}

#[test]
fn interleaved_sequences_keep_their_own_states() {
    let p = StructuredProvider::new(&vocab()).unwrap();
    let a = GuidedDecoding::Regex(r"\d{3}-\d{4}".into());
    let b = GuidedDecoding::Choice(vec!["maybe".into(), "no".into()]);
    let ga = ids(&["1", "2", "3", "-", "4"]);
    let gb = ids(&["ma", "y", "b"]);
    for k in 0..3 {
        assert!(allowed(&p, &a, &ga[..k]).contains(&ga[k]));
        let mb = allowed(&p, &b, &gb[..k]);
        assert!(mb.contains(&gb[k]), "{k}: {mb:?}");
    }
    let s = p.stats();
    assert_eq!((s.compiles, s.rebuilds, s.hits), (2, 2, 4));
    assert_eq!(p.cached_states(), 2);
}
