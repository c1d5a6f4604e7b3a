//! Tool calls in a stream: text before a tool-call marker streams as content; from the
//! marker on the output is held and parsed when the choice ends.

use super::OutputMode;
use super::parse::{self, HERMES_OPEN, MISTRAL_TAG, PYTHON_TAG, Parsed, ToolFormat};

/// The tool-call side of one choice.
#[derive(Debug)]
pub struct ToolStream {
    mode: OutputMode,
    /// Text not yet released: a possible marker prefix, or the calls once `holding`.
    held: String,
    holding: bool,
    /// Nothing but whitespace has been released yet.
    at_start: bool,
}

fn marker_prefix_len(text: &str, marker: &str) -> usize {
    (1..marker.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && marker.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

impl ToolStream {
    pub fn new(mode: OutputMode) -> Self {
        let holding = matches!(mode, OutputMode::Forced { .. });
        Self {
            mode,
            held: String::new(),
            holding,
            at_start: true,
        }
    }

    /// New model text in; content that can go to the client now out.
    pub fn push(&mut self, text: &str) -> String {
        self.held.push_str(text);
        if self.holding {
            return String::new();
        }
        let OutputMode::Free(format) = self.mode else {
            return String::new();
        };
        let start = self.at_start;
        let trimmed = self.held.trim_start();
        if start && trimmed.is_empty() {
            return String::new();
        }
        // Formats that put calls at the very start of the answer.
        if start {
            let lead = match format {
                ToolFormat::Llama3Json => {
                    trimmed.starts_with('{')
                        || PYTHON_TAG.starts_with(trimmed)
                        || trimmed.starts_with(PYTHON_TAG)
                }
                ToolFormat::Mistral => trimmed.starts_with('['),
                ToolFormat::Hermes => false,
            };
            if lead {
                self.holding = true;
                return String::new();
            }
        }
        let marker = match format {
            ToolFormat::Hermes => HERMES_OPEN,
            ToolFormat::Mistral => MISTRAL_TAG,
            ToolFormat::Llama3Json => {
                // Llama calls only at the start: everything else is content.
                self.at_start = false;
                return std::mem::take(&mut self.held);
            }
        };
        self.at_start = false;
        if let Some(p) = self.held.find(marker) {
            let out = self.held[..p].to_string();
            self.held.drain(..p);
            self.holding = true;
            return out;
        }
        let keep = marker_prefix_len(&self.held, marker);
        let out = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        out
    }

    /// The choice ended: the rest of the content and the calls.
    pub fn finish(&mut self) -> Parsed {
        let text = std::mem::take(&mut self.held);
        match &self.mode {
            OutputMode::Forced { named } => parse::parse_forced(named.as_deref(), &text),
            OutputMode::Free(format) => parse::parse(*format, &text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Streams `text` in pieces of `step` bytes; returns (streamed content, final parse).
    fn run(mode: OutputMode, text: &str, step: usize) -> (String, Parsed) {
        let mut s = ToolStream::new(mode);
        let mut out = String::new();
        let chars: Vec<char> = text.chars().collect();
        for piece in chars.chunks(step) {
            out.push_str(&s.push(&piece.iter().collect::<String>()));
        }
        let p = s.finish();
        if let Some(c) = &p.content {
            out.push_str(c);
        }
        (out, p)
    }

    #[test]
    fn hermes_content_streams_and_calls_are_held() {
        let text =
            "Checking now. <tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}}</tool_call>";
        for step in [1, 3, 7, 100] {
            let (content, p) = run(OutputMode::Free(ToolFormat::Hermes), text, step);
            assert_eq!(content, "Checking now. ", "step {step}");
            assert_eq!(p.calls.len(), 1);
            assert_eq!(p.calls[0].function.name, "f");
        }
        // No call: everything comes out as it was, a partial `<tool` included.
        let (content, p) = run(OutputMode::Free(ToolFormat::Hermes), "a <tool b", 2);
        assert_eq!(content, "a <tool b");
        assert!(p.calls.is_empty());
    }

    #[test]
    fn llama_and_mistral_calls_at_the_start() {
        let (content, p) = run(
            OutputMode::Free(ToolFormat::Llama3Json),
            "  {\"name\": \"g\", \"parameters\": {}}",
            4,
        );
        assert_eq!(content, "");
        assert_eq!(p.calls[0].function.name, "g");
        let (content, p) = run(OutputMode::Free(ToolFormat::Llama3Json), "Hello {x}", 2);
        assert_eq!(content, "Hello {x}");
        assert!(p.calls.is_empty());
        let (content, p) = run(
            OutputMode::Free(ToolFormat::Mistral),
            "[TOOL_CALLS][{\"name\": \"h\", \"arguments\": {}}]",
            5,
        );
        assert_eq!(content, "");
        assert_eq!(p.calls[0].function.name, "h");
    }

    #[test]
    fn forced_output_is_all_held() {
        let (content, p) = run(
            OutputMode::Forced {
                named: Some("f".into()),
            },
            "{\"a\": 2}",
            1,
        );
        assert_eq!(content, "");
        assert_eq!(p.calls[0].function.arguments, "{\"a\":2}");
    }
}
