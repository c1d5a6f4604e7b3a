//! Token id → bytes, built from our [`ferrite_model::Tokenizer`], and the llguidance
//! token environment over it.
//!
//! Byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM) stores pieces in the GPT-2 byte-to-unicode
//! alphabet; SentencePiece BPE (Llama 2, Mistral) uses `▁` for a space and `<0xNN>` byte
//! fallback pieces. Special tokens get toktrie's 0xFF marker so that they never match text;
//! ids without a piece get no bytes and are never allowed.

use crate::error::{Result, StructuredError};
use ferrite_model::Tokenizer;
use std::collections::HashMap;
use std::sync::Arc;
use toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};

/// How a tokenizer spells bytes in its pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceEncoding {
    /// GPT-2 byte-level BPE.
    ByteLevel,
    /// SentencePiece: `▁` is a space, `<0xNN>` is one byte.
    SentencePiece,
}

/// The bytes of every token of a vocabulary plus its EOS ids.
#[derive(Clone, Debug)]
pub struct Vocab {
    /// `bytes[id]`; special tokens start with [`TokTrie::SPECIAL_TOKEN_MARKER`].
    pub bytes: Vec<Vec<u8>>,
    /// End-of-sequence ids (first is the primary), each `< bytes.len()`.
    pub eos_ids: Vec<u32>,
}

impl Vocab {
    /// A vocabulary from raw token bytes (tests, or tokenizers read elsewhere).
    pub fn new(bytes: Vec<Vec<u8>>, eos_ids: &[u32]) -> Result<Self> {
        if eos_ids.is_empty() {
            return Err(StructuredError::Vocabulary("no EOS token ids".into()));
        }
        if let Some(e) = eos_ids.iter().find(|&&e| e as usize >= bytes.len()) {
            return Err(StructuredError::Vocabulary(format!(
                "EOS id {e} outside the vocabulary of {} tokens",
                bytes.len()
            )));
        }
        Ok(Self {
            bytes,
            eos_ids: eos_ids.to_vec(),
        })
    }

    /// Reads every token's bytes from `tok`.
    pub fn from_tokenizer(tok: &Tokenizer, eos_ids: &[u32]) -> Result<Self> {
        let enc = piece_encoding(tok)?;
        let added: HashMap<u32, (String, bool)> = tok
            .inner()
            .get_added_tokens_decoder()
            .into_iter()
            .map(|(id, t)| (id, (t.content, t.special)))
            .collect();
        let inv = byte_level_inverse();
        let n = tok.vocab_size();
        let mut bytes = Vec::with_capacity(n);
        for id in 0..n as u32 {
            let b = match added.get(&id) {
                Some((content, true)) => {
                    let mut v = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    v.extend_from_slice(content.as_bytes());
                    v
                }
                Some((content, false)) => content.as_bytes().to_vec(),
                None => match tok.token_to_piece(id) {
                    None => Vec::new(),
                    Some(piece) if tok.is_special(id) => {
                        let mut v = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                        v.extend_from_slice(piece.as_bytes());
                        v
                    }
                    Some(piece) => piece_bytes(&piece, enc, &inv),
                },
            };
            bytes.push(b);
        }
        Self::new(bytes, eos_ids)
    }

    /// Number of token ids.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The llguidance token environment (trie over the bytes, EOS ids set).
    pub fn tok_env(&self) -> TokEnv {
        let info = TokRxInfo::new(self.bytes.len() as u32, self.eos_ids[0]);
        let trie = TokTrie::from(&info, &self.bytes).with_eos_tokens(&self.eos_ids);
        Arc::new(ApproximateTokEnv::new(trie))
    }
}

/// Which piece spelling `tok` uses, read from its decoder.
pub fn piece_encoding(tok: &Tokenizer) -> Result<PieceEncoding> {
    let dec = tok
        .inner()
        .get_decoder()
        .map(|d| serde_json::to_string(d).unwrap_or_default())
        .unwrap_or_default();
    if dec.contains("\"ByteLevel\"") {
        Ok(PieceEncoding::ByteLevel)
    } else if dec.contains("\"ByteFallback\"")
        || dec.contains("\"Metaspace\"")
        || dec.contains('\u{2581}')
    {
        Ok(PieceEncoding::SentencePiece)
    } else {
        Err(StructuredError::Vocabulary(format!(
            "cannot tell how the tokenizer spells bytes (decoder {dec:?}); \
             supported: byte-level BPE, SentencePiece"
        )))
    }
}

/// The bytes a piece stands for.
pub fn piece_bytes(piece: &str, enc: PieceEncoding, inv: &HashMap<char, u8>) -> Vec<u8> {
    match enc {
        PieceEncoding::ByteLevel => {
            let mut out = Vec::with_capacity(piece.len());
            for c in piece.chars() {
                match inv.get(&c) {
                    Some(&b) => out.push(b),
                    None => {
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
            }
            out
        }
        PieceEncoding::SentencePiece => {
            if let Some(b) = byte_fallback(piece) {
                return vec![b];
            }
            piece.replace('\u{2581}', " ").into_bytes()
        }
    }
}

/// `<0xAB>` → 0xAB.
fn byte_fallback(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// GPT-2's `bytes_to_unicode`, inverted: the char a piece uses → the byte it stands for.
pub fn byte_level_inverse() -> HashMap<char, u8> {
    let mut map = HashMap::with_capacity(256);
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut n = 0u32;
    for b in 0..=255u8 {
        let cp = if printable(b) {
            u32::from(b)
        } else {
            n += 1;
            255 + n
        };
        if let Some(c) = char::from_u32(cp) {
            map.insert(c, b);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn byte_level_alphabet() {
        let inv = byte_level_inverse();
        assert_eq!(inv.len(), 256);
        assert_eq!(inv[&'Ġ'], b' ');
        assert_eq!(inv[&'Ċ'], b'\n');
        assert_eq!(inv[&'a'], b'a');
        assert_eq!(
            piece_bytes("Ġ{\"", PieceEncoding::ByteLevel, &inv),
            b" {\"".to_vec()
        );
        // "é" in UTF-8 is C3 A9 → pieces spell it "Ã©".
        assert_eq!(
            piece_bytes("Ã©", PieceEncoding::ByteLevel, &inv),
            "é".as_bytes().to_vec()
        );
    }

    #[test]
    fn sentencepiece_pieces() {
        let inv = HashMap::new();
        assert_eq!(
            piece_bytes("\u{2581}the", PieceEncoding::SentencePiece, &inv),
            b" the".to_vec()
        );
        assert_eq!(
            piece_bytes("<0x0A>", PieceEncoding::SentencePiece, &inv),
            vec![0x0A]
        );
        assert_eq!(
            piece_bytes("<0x0>", PieceEncoding::SentencePiece, &inv),
            b"<0x0>".to_vec()
        );
    }

    #[test]
    fn eos_must_be_in_vocab() {
        assert!(Vocab::new(vec![b"a".to_vec()], &[]).is_err());
        assert!(Vocab::new(vec![b"a".to_vec()], &[1]).is_err());
        assert!(Vocab::new(vec![b"a".to_vec(), vec![0xFF, b'x']], &[1]).is_ok());
    }
}
