//! The token-bytes table against real tokenizers: for a text, the bytes of its tokens
//! concatenate back to the text (byte-level BPE: Llama 3.1, Qwen3, SmolLM2; SentencePiece
//! with byte fallback: stories260k), and a constraint masks a large vocabulary correctly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::models_dir;
use ferrite_model::Tokenizer;
use ferrite_protocol::GuidedDecoding;
use ferrite_structured::{PieceEncoding, StructuredProvider, Vocab, vocab::piece_encoding};

const TEXT: &str = "Hello, wörld! {\"a\": [1, 2.5e3]}\n\tnaïve café 東京 🚀 <0x41> \\d";

fn load(rel: &str) -> Tokenizer {
    let p = models_dir().join(rel).join("tokenizer.json");
    assert!(
        p.is_file(),
        "{} missing: set FERRITE_MODELS_DIR",
        p.display()
    );
    Tokenizer::from_file(&p).unwrap()
}

fn concat(v: &Vocab, ids: &[u32]) -> Vec<u8> {
    ids.iter()
        .flat_map(|&t| v.bytes[t as usize].iter().copied())
        .collect()
}

#[test]
fn byte_level_tokenizers_round_trip() {
    for rel in [
        "tokenizers/llama3_1",
        "tokenizers/qwen3",
        "smollm2-135m-instruct",
    ] {
        let tok = load(rel);
        assert_eq!(
            piece_encoding(&tok).unwrap(),
            PieceEncoding::ByteLevel,
            "{rel}"
        );
        let v = Vocab::from_tokenizer(&tok, &[0]).unwrap();
        assert_eq!(v.len(), tok.vocab_size(), "{rel}");
        let ids = tok.encode(TEXT, false).unwrap();
        assert_eq!(concat(&v, &ids), TEXT.as_bytes(), "{rel}");
    }
}

#[test]
fn sentencepiece_tokenizer_round_trips() {
    let tok = load("stories260k");
    assert_eq!(piece_encoding(&tok).unwrap(), PieceEncoding::SentencePiece);
    let v = Vocab::from_tokenizer(&tok, &[2]).unwrap();
    // A 512-token vocabulary: most of TEXT goes through `<0x..>` byte fallback.
    let ids = tok.encode(TEXT, false).unwrap();
    let got = concat(&v, &ids);
    // SentencePiece prepends a space-marker to the first word.
    let got = got.strip_prefix(b" ").unwrap_or(&got);
    assert_eq!(got, TEXT.as_bytes());
}

#[test]
fn choice_mask_on_qwen3_vocabulary() {
    let tok = load("tokenizers/qwen3");
    let eos = tok.token_to_id("<|im_end|>").unwrap();
    let v = Vocab::from_tokenizer(&tok, &[eos]).unwrap();
    let p = StructuredProvider::new(&v).unwrap();
    let spec = GuidedDecoding::Choice(vec!["yes".into(), "no".into()]);
    let mut l = vec![0.0f32; v.len() + 100];
    p.mask_logits(&spec, &[], &mut l).unwrap();
    let allowed: Vec<u32> = (0..l.len() as u32)
        .filter(|&i| l[i as usize].is_finite())
        .collect();
    // Exactly the tokens spelling a non-empty prefix of "yes" or "no".
    let mut expect: Vec<u32> = ["y", "ye", "yes", "n", "no"]
        .iter()
        .filter_map(|s| tok.token_to_id(s))
        .collect();
    expect.sort_unstable();
    assert_eq!(allowed, expect);
    let no = tok.token_to_id("no").unwrap();
    let mut l = vec![0.0f32; v.len()];
    p.mask_logits(&spec, &[no], &mut l).unwrap();
    let allowed: Vec<usize> = (0..l.len()).filter(|&i| l[i].is_finite()).collect();
    assert_eq!(allowed, vec![eos as usize]);
}
