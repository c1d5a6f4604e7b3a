//! Incremental detokenisation (the prefix/read-offset algorithm of vLLM and TGI).
//!
//! Each step decodes a small window of ids twice — up to the last emitted token
//! (`prefix_offset..read_offset`) and up to the new one (`prefix_offset..`) — and
//! emits the difference only when the new text does not end in U+FFFD, i.e. in
//! an incomplete UTF-8 sequence. Emitted pieces are therefore whole characters, and
//! their concatenation equals decoding all ids at once (after the prompt context).

use crate::error::Result;
use crate::tokenizer::Tokenizer;

/// How many prompt ids to keep as decoding context (spacing of the first token).
const PROMPT_CONTEXT: usize = 5;

/// Streaming decoder for one sequence. Holds no tokenizer: pass it to each call.
#[derive(Debug, Clone)]
pub struct Detokenizer {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    skip_special_tokens: bool,
    text: String,
    context_len: usize,
}

impl Detokenizer {
    /// A decoder with no context.
    pub fn new(skip_special_tokens: bool) -> Self {
        Self::with_prompt(&[], skip_special_tokens)
    }

    /// A decoder whose first emitted piece is spaced as it follows `prompt_ids`
    /// (the last few prompt ids are used as context and never emitted).
    pub fn with_prompt(prompt_ids: &[u32], skip_special_tokens: bool) -> Self {
        let ctx = &prompt_ids[prompt_ids.len().saturating_sub(PROMPT_CONTEXT)..];
        Self {
            ids: ctx.to_vec(),
            prefix_offset: 0,
            read_offset: ctx.len(),
            skip_special_tokens,
            text: String::new(),
            context_len: ctx.len(),
        }
    }

    /// Adds one token; returns the newly completed text, if any.
    pub fn step(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let prefix = tok.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special_tokens,
        )?;
        let full = tok.decode(&self.ids[self.prefix_offset..], self.skip_special_tokens)?;
        if full.len() <= prefix.len() || full.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let delta = match full.strip_prefix(prefix.as_str()) {
            Some(d) => d.to_string(),
            None => match full.get(prefix.len()..) {
                Some(d) => d.to_string(),
                None => return Ok(None),
            },
        };
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        self.text.push_str(&delta);
        Ok(Some(delta))
    }

    /// Emits whatever is still held back (a trailing incomplete sequence decodes
    /// to U+FFFD here); call at the end of the stream.
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<Option<String>> {
        if self.read_offset == self.ids.len() {
            return Ok(None);
        }
        let prefix = tok.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special_tokens,
        )?;
        let full = tok.decode(&self.ids[self.prefix_offset..], self.skip_special_tokens)?;
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        let delta = full
            .strip_prefix(prefix.as_str())
            .or_else(|| full.get(prefix.len()..))
            .unwrap_or_default()
            .to_string();
        if delta.is_empty() {
            return Ok(None);
        }
        self.text.push_str(&delta);
        Ok(Some(delta))
    }

    /// All text emitted so far (what a stop-string matcher scans).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Ids fed so far, without the prompt context.
    pub fn generated_len(&self) -> usize {
        self.ids.len() - self.context_len
    }
}
