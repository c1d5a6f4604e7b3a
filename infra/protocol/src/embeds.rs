//! Precomputed input embeddings: rows of the model's hidden width that stand in for token
//! embeddings at some prompt positions (OpenAI-style `input_embeds` parts, vLLM's
//! `prompt_embeds`).
//!
//! A prompt position given as a row carries an *embedding token* in `token_ids`:
//! [`EMBED_TOKEN_BIT`] plus 31 bits of a hash of the row's bytes. Everything keyed by token
//! ids — block hashes, the prefix cache, the router's index, KV tiers, disaggregated
//! prefill, migration — then tells different rows apart and shares equal ones without
//! knowing about embeddings (a text prefix before the rows is still shared with other
//! requests). Only the engine looks the rows up, in place of its token-embedding table.

use crate::ids::TokenId;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Set in every embedding token; vocabulary ids never reach it.
pub const EMBED_TOKEN_BIT: TokenId = 1 << 31;

/// Whether `t` stands for an embedding row rather than a vocabulary entry.
pub fn is_embed_token(t: TokenId) -> bool {
    t & EMBED_TOKEN_BIT != 0
}

/// The embedding token of one row: [`EMBED_TOKEN_BIT`] | 31 bits of XXH3 of its
/// little-endian bytes.
pub fn embed_token(row: &[f32]) -> TokenId {
    let mut bytes = Vec::with_capacity(row.len() * 4);
    for v in row {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    EMBED_TOKEN_BIT | (xxh3_64_with_seed(&bytes, crate::hashing::BLOCK_HASH_SEED) as u32 >> 1)
}

/// Consecutive prompt positions given as rows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmbedSpan {
    /// Prompt position of the first row.
    pub start: u32,
    /// `rows × width` values, row after row.
    pub data: Vec<f32>,
}

/// Every row of one prompt, spans in position order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PromptEmbeds {
    /// Values per row: the model's hidden size.
    pub width: u32,
    pub spans: Vec<EmbedSpan>,
}

impl PromptEmbeds {
    pub fn new(width: u32) -> Self {
        Self {
            width,
            spans: Vec::new(),
        }
    }

    /// Appends `data` (whole rows) at the end of `tokens`, adding their embedding tokens.
    pub fn append(&mut self, tokens: &mut Vec<TokenId>, data: Vec<f32>) {
        let w = self.width.max(1) as usize;
        tokens.extend(data.chunks(w).map(embed_token));
        let start = (tokens.len() - data.len() / w) as u32;
        self.spans.push(EmbedSpan { start, data });
    }

    /// Number of rows over all spans.
    pub fn num_rows(&self) -> usize {
        let w = self.width.max(1) as usize;
        self.spans.iter().map(|s| s.data.len() / w).sum()
    }

    /// The row at prompt position `pos`, if one was given there.
    pub fn row(&self, pos: u32) -> Option<&[f32]> {
        let w = self.width as usize;
        let i = self
            .spans
            .partition_point(|s| s.start <= pos)
            .checked_sub(1)?;
        let s = &self.spans[i];
        let off = (pos - s.start) as usize * w;
        s.data.get(off..off + w)
    }

    /// Checks the rows against the prompt `tokens[..prompt_len]` they belong to: whole rows
    /// of `width` values, finite, spans in order without overlap inside the prompt, each
    /// covered position holding its row's embedding token, and no embedding token
    /// elsewhere. The error says what is wrong.
    pub fn check(&self, tokens: &[TokenId], prompt_len: usize) -> Result<(), String> {
        let w = self.width as usize;
        if w == 0 {
            return Err("embedding width is 0".into());
        }
        let prompt = tokens
            .get(..prompt_len)
            .ok_or("prompt longer than tokens")?;
        let mut covered = vec![false; prompt.len()];
        let mut next = 0usize;
        for (i, s) in self.spans.iter().enumerate() {
            if s.data.is_empty() || s.data.len() % w != 0 {
                return Err(format!(
                    "embedding span {i} has {} values, not a whole number of rows of {w}",
                    s.data.len()
                ));
            }
            if s.data.iter().any(|v| !v.is_finite()) {
                return Err(format!("embedding span {i} holds a NaN or infinite value"));
            }
            let start = s.start as usize;
            let end = start + s.data.len() / w;
            if start < next || end > prompt.len() {
                return Err(format!(
                    "embedding span {i} (positions {start}..{end}) overlaps another or lies \
                     outside the {}-token prompt",
                    prompt.len()
                ));
            }
            for (p, row) in (start..end).zip(s.data.chunks(w)) {
                if prompt[p] != embed_token(row) {
                    return Err(format!(
                        "prompt position {p} does not hold the embedding token of its row"
                    ));
                }
                covered[p] = true;
            }
            next = end;
        }
        if let Some(p) = (0..tokens.len())
            .find(|&p| is_embed_token(tokens[p]) && !covered.get(p).copied().unwrap_or(false))
        {
            return Err(format!(
                "position {p} holds an embedding token but no embedding row"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rows(n: usize, w: usize, base: f32) -> Vec<f32> {
        (0..n * w).map(|i| base + i as f32 * 0.25).collect()
    }

    #[test]
    fn appended_rows_get_tokens_and_are_found_by_position() {
        let mut toks = vec![5, 6];
        let mut e = PromptEmbeds::new(3);
        e.append(&mut toks, rows(2, 3, 1.0));
        toks.push(7);
        e.append(&mut toks, rows(1, 3, 9.0));
        assert_eq!(toks.len(), 6);
        assert!(toks[2..4].iter().all(|t| is_embed_token(*t)));
        assert!(!is_embed_token(toks[4]));
        assert_eq!(e.spans[0].start, 2);
        assert_eq!(e.spans[1].start, 5);
        assert_eq!(e.row(3).unwrap(), &[1.75, 2.0, 2.25]);
        assert_eq!(e.row(5).unwrap(), &[9.0, 9.25, 9.5]);
        assert_eq!(e.row(4), None);
        assert_eq!(e.row(1), None);
        assert_eq!(e.num_rows(), 3);
        e.check(&toks, toks.len()).unwrap();
    }

    #[test]
    fn equal_rows_share_a_token_and_different_rows_do_not() {
        let a = rows(1, 4, 0.5);
        let mut b = a.clone();
        assert_eq!(embed_token(&a), embed_token(&b));
        b[3] += 1e-6;
        assert_ne!(embed_token(&a), embed_token(&b));
    }

    #[test]
    fn check_refuses_inconsistent_rows() {
        let mut toks = vec![1];
        let mut e = PromptEmbeds::new(2);
        e.append(&mut toks, rows(2, 2, 0.0));
        // a token that does not match its row
        let mut bad = toks.clone();
        bad[1] = 3;
        assert!(e.check(&bad, 3).unwrap_err().contains("position 1"));
        // rows outside the prompt (prompt_len shorter than the spans)
        assert!(e.check(&toks, 2).unwrap_err().contains("outside"));
        // a stray embedding token with no row
        let mut stray = toks.clone();
        stray.push(EMBED_TOKEN_BIT | 5);
        assert!(e.check(&stray, 4).unwrap_err().contains("no embedding row"));
        // a partial row
        let mut partial = e.clone();
        partial.spans[0].data.pop();
        assert!(
            partial
                .check(&toks, 3)
                .unwrap_err()
                .contains("whole number")
        );
        // NaN
        let mut nan = e.clone();
        nan.spans[0].data[0] = f32::NAN;
        assert!(nan.check(&toks, 3).unwrap_err().contains("NaN"));
    }

    #[test]
    fn round_trips_through_the_bus_codec() {
        let mut toks = vec![];
        let mut e = PromptEmbeds::new(2);
        e.append(&mut toks, rows(3, 2, -1.0));
        let back: PromptEmbeds = crate::codec::decode(&crate::codec::encode(&e).unwrap()).unwrap();
        assert_eq!(back, e);
    }
}
