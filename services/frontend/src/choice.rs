//! Per-choice post-processing: incremental detokenization, stop strings, bookkeeping.

use crate::model_io::{Detok, ServedModel};
use crate::tools::OutputMode;
use crate::tools::stream::ToolStream;
use ferrite_protocol::openai::{ToolCall, ToolCallDelta};
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
    /// Tool-call deltas: a call's id and name, then its arguments in fragments.
    pub tool_calls: Vec<ToolCallDelta>,
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
    /// For each of `token_ids`, the byte offset in the choice's text where its text
    /// begins (completions `text_offset`).
    pub token_offsets: Vec<u32>,
    pub finish: Option<FinishReason>,
    pub cached_tokens: u32,
    tools: Option<ToolStream>,
    /// The text released as content (all of `text()` unless tool calls were taken out).
    content: String,
    /// The calls parsed from the whole output (when the choice ended).
    pub tool_calls: Vec<ToolCall>,
    /// Some tool-call delta was produced.
    called: bool,
}

impl ChoiceState {
    pub fn new(
        index: u32,
        model: &ServedModel,
        prompt: &[TokenId],
        stops: Vec<String>,
        include_stop: bool,
        tools: Option<OutputMode>,
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
            token_offsets: Vec::new(),
            finish: None,
            cached_tokens: 0,
            tools: tools.map(ToolStream::new),
            content: String::new(),
            tool_calls: Vec::new(),
            called: false,
        }
    }

    /// The content of the answer: the text without the tool calls taken out of it.
    pub fn content(&self) -> &str {
        &self.content
    }

    /// OpenAI's `finish_reason`: `tool_calls` when the output was tool calls.
    pub fn finish_reason(&self) -> Option<String> {
        finish_string(self.finish, self.called || !self.tool_calls.is_empty())
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
            self.token_offsets.push(self.text.len() as u32);
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
                    // The held-back tail completed a stop string: a stop, whatever the engine said.
                    self.text.truncate(end);
                    self.finish = Some(FinishReason::Stop);
                }
            }
        }
        delta.finish_reason = self.finish;
        // Hold back text that could still become a stop string.
        let mut upto = if self.finish.is_some() || self.max_stop_len == 0 {
            self.text.len()
        } else {
            self.text
                .len()
                .saturating_sub(self.max_stop_len - 1)
                .max(self.sent)
        };
        while !self.text.is_char_boundary(upto) {
            upto -= 1;
        }
        if upto > self.sent {
            delta.text = self.text[self.sent..upto].to_string();
            self.sent = upto;
        }
        if let Some(ts) = &mut self.tools {
            let released = ts.push(&delta.text);
            delta.text = released.text;
            delta.tool_calls = released.calls;
            if self.finish.is_some() {
                let end = ts.finish();
                delta
                    .text
                    .push_str(end.parsed.content.as_deref().unwrap_or_default());
                delta.tool_calls.extend(end.deltas);
                self.tool_calls = end.parsed.calls;
            }
            self.called |= !delta.tool_calls.is_empty();
        }
        self.content.push_str(&delta.text);
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

/// OpenAI's `finish_reason` string of a finish.
pub fn finish_string(finish: Option<FinishReason>, tool_calls: bool) -> Option<String> {
    finish.map(|f| {
        if tool_calls {
            "tool_calls".to_string()
        } else {
            f.as_openai().to_string()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_protocol::{InstanceId, ModelRecord};

    fn model() -> ServedModel {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../ferrite/assets/stories260k");
        ServedModel::load(&ModelRecord {
            name: "s".into(),
            instance_id: InstanceId(1),
            model_path: path.into(),
            context_length: 512,
            kv_block_size: 16,
            simulated: true,
        })
        .unwrap()
    }

    fn out(ids: Vec<u32>, finish: Option<FinishReason>) -> EngineOutput {
        EngineOutput {
            token_ids: ids,
            finish_reason: finish,
            ..Default::default()
        }
    }

    /// Feeds tokens one at a time and returns (concatenated deltas, finish, stopped).
    fn run(
        m: &ServedModel,
        ids: &[u32],
        stops: &[&str],
        include: bool,
    ) -> (String, Option<FinishReason>, bool) {
        let mut st = ChoiceState::new(
            0,
            m,
            &[1],
            stops.iter().map(|s| s.to_string()).collect(),
            include,
            None,
        );
        let mut text = String::new();
        let mut stopped = false;
        for (i, &t) in ids.iter().enumerate() {
            let fin = (i + 1 == ids.len()).then_some(FinishReason::Length);
            let d = st.on_output(&out(vec![t], fin));
            text.push_str(&d.text);
            stopped |= d.stopped_by_string;
            if d.finish_reason.is_some() {
                return (text, d.finish_reason, stopped);
            }
        }
        (text, st.finish, stopped)
    }

    fn story(m: &ServedModel) -> Vec<u32> {
        m.encode(
            "Once upon a time, there was a little girl named Lily. She liked to play.",
            false,
        )
        .unwrap()
    }

    #[test]
    fn streamed_text_equals_full_decode_without_stops() {
        let m = model();
        let ids = story(&m);
        let (text, fin, stopped) = run(&m, &ids, &[], false);
        let full = m.card_decode(&ids);
        assert_eq!(text, full);
        assert_eq!(fin, Some(FinishReason::Length));
        assert!(!stopped);
    }

    #[test]
    fn stop_string_cuts_the_text_and_is_excluded_or_included() {
        let m = model();
        let ids = story(&m);
        let full = m.card_decode(&ids);
        let cut = full.find("little").unwrap();
        let (text, fin, stopped) = run(&m, &ids, &["zzz", "little"], false);
        assert_eq!(text, full[..cut]);
        assert_eq!(fin, Some(FinishReason::Stop));
        assert!(stopped);
        let (text, _, _) = run(&m, &ids, &["little"], true);
        assert_eq!(text, full[..cut + "little".len()]);
    }

    #[test]
    fn text_that_may_start_a_stop_string_is_held_back() {
        let m = model();
        let ids = story(&m);
        let mut st = ChoiceState::new(0, &m, &[1], vec!["Lily. She".into()], false, None);
        let mut sent = String::new();
        for &t in &ids {
            let d = st.on_output(&out(vec![t], None));
            sent.push_str(&d.text);
            // Nothing sent may contain the beginning of the stop string at its end.
            assert!(!sent.ends_with("Lily"), "leaked a stop prefix: {sent:?}");
            if d.finish_reason.is_some() {
                break;
            }
        }
        assert!(sent.ends_with("named "), "{sent:?}");
        assert_eq!(st.finish, Some(FinishReason::Stop));
    }

    #[test]
    fn tool_calls_are_taken_out_of_streamed_content() {
        let m = model();
        let text = "Let me see. <tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}</tool_call>";
        let ids = m.encode(text, false).unwrap();
        assert_eq!(m.card_decode(&ids), text, "the tokenizer round-trips");
        let mode = Some(OutputMode::Free(crate::tools::parse::ToolFormat::Hermes));
        let mut st = ChoiceState::new(0, &m, &[1], vec![], false, mode);
        let mut content = String::new();
        let mut calls = Vec::new();
        let mut early = false;
        for (i, &t) in ids.iter().enumerate() {
            let fin = (i + 1 == ids.len()).then_some(FinishReason::Stop);
            let d = st.on_output(&out(vec![t], fin));
            content.push_str(&d.text);
            if d.finish_reason.is_none() && !d.tool_calls.is_empty() {
                early = true;
            }
            calls.extend(d.tool_calls);
        }
        assert_eq!(content, "Let me see. ");
        assert_eq!(st.content(), "Let me see. ");
        assert!(early, "the call streamed before the choice ended");
        assert!(calls.iter().all(|c| c.index == 0));
        assert_eq!(calls[0].function.name.as_deref(), Some("get_weather"));
        assert_eq!(calls[0].id.as_ref(), Some(&st.tool_calls[0].id));
        let args: String = calls
            .iter()
            .filter_map(|c| c.function.arguments.as_deref())
            .collect();
        assert_eq!(args, "{\"city\":\"Paris\"}");
        assert_eq!(st.tool_calls[0].function.arguments, args);
        assert_eq!(st.finish_reason().as_deref(), Some("tool_calls"));
        assert_eq!(st.completion_tokens() as usize, ids.len());
    }

    #[test]
    fn token_offsets_point_at_each_tokens_text() {
        let m = model();
        // SentencePiece pieces with leading spaces ("▁a"): a lone piece decodes without
        // its space, so offsets summed from per-token texts drift; these must not.
        let text = "Once upon a time, there was a little girl named Lily.";
        let ids = m.encode(text, false).unwrap();
        let mut st = ChoiceState::new(0, &m, &[1], vec![], false, None);
        for (i, &t) in ids.iter().enumerate() {
            let fin = (i + 1 == ids.len()).then_some(FinishReason::Length);
            st.on_output(&out(vec![t], fin));
        }
        let full = st.text().to_string();
        assert_eq!(st.token_offsets.len(), ids.len());
        assert_eq!(st.token_offsets[0], 0);
        for (k, w) in st.token_offsets.windows(2).enumerate() {
            assert!(w[0] <= w[1], "offsets go back at token {k}");
            let piece = &full[w[0] as usize..w[1] as usize];
            let alone = m.card_decode(&ids[k..k + 1]);
            assert!(
                piece.trim_start() == alone.trim_start(),
                "token {k}: {piece:?} vs {alone:?}"
            );
        }
        let last = *st.token_offsets.last().unwrap() as usize;
        assert!(full[last..].ends_with('.'), "{full:?}");
        // Summing lone-token texts drifts on this model (the reason for the offsets).
        let summed: usize = ids.iter().map(|&t| m.token_text(t).len()).sum();
        assert_ne!(summed, full.len(), "the drift case is not exercised");
    }
}
