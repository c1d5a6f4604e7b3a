//! Per-choice post-processing: incremental detokenization, stop strings, bookkeeping.

use crate::model_io::{Detok, ServedModel};
use ferrite_protocol::{EngineOutput, FinishReason, TokenId, TokenLogprob};

/// What one engine output adds to a choice.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Delta {
    pub text: String,
    pub token_ids: Vec<TokenId>,
    pub logprobs: Vec<TokenLogprob>,
    pub finish_reason: Option<FinishReason>,
    /// A stop string ended the choice: the worker must be told to stop.
    pub stopped_by_string: bool,
}

/// The state of one choice while it streams.
pub struct ChoiceState {
    pub index: u32,
    detok: Detok,
    stops: Vec<String>,
    include_stop: bool,
    max_stop_len: usize,
    text: String,
    sent: usize,
    pub token_ids: Vec<TokenId>,
    pub finish: Option<FinishReason>,
    pub cached_tokens: u32,
}

impl ChoiceState {
    pub fn new(
        index: u32,
        model: &ServedModel,
        prompt: &[TokenId],
        stops: Vec<String>,
        include_stop: bool,
    ) -> Self {
        let max_stop_len = stops.iter().map(String::len).max().unwrap_or(0);
        Self {
            index,
            detok: model.detokenizer(prompt),
            stops,
            include_stop,
            max_stop_len,
            text: String::new(),
            sent: 0,
            token_ids: Vec::new(),
            finish: None,
            cached_tokens: 0,
        }
    }

    /// All text produced so far (what the client has or will have).
    pub fn text(&self) -> &str {
        &self.text[..self.sent]
    }

    pub fn completion_tokens(&self) -> u32 {
        self.token_ids.len() as u32
    }

    /// Applies one engine output. After a finish, further outputs are ignored.
    pub fn on_output(&mut self, out: &EngineOutput) -> Delta {
        let mut delta = Delta::default();
        if self.finish.is_some() {
            return delta;
        }
        if let Some(c) = out.cached_tokens {
            self.cached_tokens = c;
        }
        for (i, &t) in out.token_ids.iter().enumerate() {
            self.token_ids.push(t);
            delta.token_ids.push(t);
            if let Some(lp) = out.logprobs.get(i) {
                delta.logprobs.push(lp.clone());
            }
            self.text.push_str(&self.detok.push(t));
            if let Some(end) = self.find_stop() {
                self.text.truncate(end);
                self.finish = Some(FinishReason::Stop);
                delta.stopped_by_string = true;
                break;
            }
        }
        if self.finish.is_none() {
            self.finish = out.finish_reason;
            if self.finish.is_some() {
                self.text.push_str(&self.detok.finish());
                if let Some(end) = self.find_stop() {
                    self.text.truncate(end);
                }
            }
        }
        delta.finish_reason = self.finish;
        // Hold back text that could still become a stop string.
        let mut upto = if self.finish.is_some() || self.max_stop_len == 0 {
            self.text.len()
        } else {
            self.text.len().saturating_sub(self.max_stop_len - 1).max(self.sent)
        };
        while !self.text.is_char_boundary(upto) {
            upto -= 1;
        }
        if upto > self.sent {
            delta.text = self.text[self.sent..upto].to_string();
            self.sent = upto;
        }
        delta
    }

    /// Where the text ends if a stop string occurs (searching only new text).
    fn find_stop(&self) -> Option<usize> {
        if self.stops.is_empty() {
            return None;
        }
        let mut from = self.sent.saturating_sub(self.max_stop_len);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let hay = &self.text[from..];
        self.stops
            .iter()
            .filter_map(|s| hay.find(s.as_str()).map(|p| (p, s.len())))
            .min()
            .map(|(p, len)| from + p + if self.include_stop { len } else { 0 })
    }
}
