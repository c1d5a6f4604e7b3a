//! Tool calls in a stream: text before a tool-call marker streams as content; from the
//! marker on the output is held. While it is held, each call goes out as OpenAI streams
//! them: a first delta with its id and name once the name is complete, then its
//! arguments (the model's JSON without whitespace outside strings) fragment by fragment.
//! The held text is parsed when the choice ends; calls the scan could not follow
//! (arguments before the name, or not an object) are sent whole then.

use super::OutputMode;
use super::parse::{self, HERMES_OPEN, MISTRAL_TAG, PYTHON_TAG, Parsed, ToolFormat};
use super::progress::{self, CallProgress};
use ferrite_protocol::openai::{FunctionCallDelta, ToolCall, ToolCallDelta};

/// Past this much held text, arguments are no longer streamed (each push rescans it).
const MAX_PROGRESSIVE: usize = 64 * 1024;

/// A call whose first delta went out.
#[derive(Debug)]
struct Started {
    id: String,
    name: String,
    /// Bytes of its minified arguments sent.
    sent: usize,
}

/// What one push releases: content text and tool-call deltas.
#[derive(Debug, Default, PartialEq)]
pub struct Released {
    pub text: String,
    pub calls: Vec<ToolCallDelta>,
}

/// The end of a choice: the parse of the whole output, and the deltas still to send.
#[derive(Debug, Default, PartialEq)]
pub struct Finished {
    pub parsed: Parsed,
    pub deltas: Vec<ToolCallDelta>,
}

/// The tool-call side of one choice.
#[derive(Debug)]
pub struct ToolStream {
    mode: OutputMode,
    /// Text not yet released: a possible marker prefix, or the calls once `holding`.
    held: String,
    holding: bool,
    /// Nothing but whitespace has been released yet.
    at_start: bool,
    started: Vec<Started>,
}

/// One delta of call `index`: `head` (id, name) on its first delta only, then `args`.
fn delta(index: usize, head: Option<(&str, &str)>, args: &str) -> ToolCallDelta {
    ToolCallDelta {
        index: index as u32,
        id: head.map(|(id, _)| id.to_string()),
        kind: head.map(|_| "function".to_string()),
        function: FunctionCallDelta {
            name: head.map(|(_, name)| name.to_string()),
            arguments: Some(args.to_string()),
        },
    }
}

/// Each call as one delta carrying the whole call, numbered from `first`.
fn whole(first: usize, calls: &[ToolCall]) -> Vec<ToolCallDelta> {
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let head = Some((c.id.as_str(), c.function.name.as_str()));
            delta(first + i, head, &c.function.arguments)
        })
        .collect()
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
            started: Vec::new(),
        }
    }

    /// New model text in; content and tool-call deltas that can go to the client now out.
    pub fn push(&mut self, text: &str) -> Released {
        let text = self.release(text);
        let calls = if self.holding && self.held.len() <= MAX_PROGRESSIVE {
            self.progress()
        } else {
            Vec::new()
        };
        Released { text, calls }
    }

    /// Where each call stands in the held text (a forced named call: the whole text is
    /// its arguments).
    fn scan(&self) -> Vec<CallProgress> {
        match &self.mode {
            OutputMode::Forced { named: Some(name) } => {
                let start = self.held.find(|c: char| !c.is_whitespace());
                vec![CallProgress {
                    name: Some(name.clone()),
                    args: start
                        .filter(|&s| self.held[s..].starts_with('{'))
                        .map(|s| (s, None)),
                }]
            }
            _ => progress::scan(&self.held),
        }
    }

    /// Deltas for what the held text adds: first deltas of calls whose name and arguments
    /// start are known (in order), and argument fragments (up to the end of the text while
    /// an object is open).
    fn progress(&mut self) -> Vec<ToolCallDelta> {
        let mut out = Vec::new();
        for (i, p) in self.scan().into_iter().enumerate() {
            let (Some(name), Some((start, end))) = (p.name, p.args) else {
                break;
            };
            if i == self.started.len() {
                self.started.push(Started {
                    id: parse::call_id(),
                    name,
                    sent: 0,
                });
                let s = &self.started[i];
                out.push(delta(i, Some((&s.id, &s.name)), ""));
            }
            let Some(s) = self.started.get_mut(i) else {
                break;
            };
            let args = progress::minify(&self.held[start..end.unwrap_or(self.held.len())]);
            if args.len() > s.sent {
                out.push(delta(i, None, &args[s.sent..]));
                s.sent = args.len();
            }
        }
        out
    }

    /// Content that can go to the client now (all of it until a call begins).
    fn release(&mut self, text: &str) -> String {
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

    /// The choice ended: the rest of the content, the calls, and the deltas not sent yet:
    /// the rest of each started call's arguments, then every other call whole. Started
    /// calls keep their ids in `parsed.calls`.
    pub fn finish(&mut self) -> Finished {
        let mut deltas = if self.holding {
            self.progress()
        } else {
            Vec::new()
        };
        let text = std::mem::take(&mut self.held);
        let mut parsed = match &self.mode {
            OutputMode::Forced { named } => parse::parse_forced(named.as_deref(), &text),
            OutputMode::Free(format) => parse::parse(*format, &text),
        };
        let n = self.started.len();
        for (c, s) in parsed.calls.iter_mut().zip(&self.started) {
            if c.function.name != s.name {
                tracing::warn!(streamed = %s.name, parsed = %c.function.name, "a streamed tool call parsed under another name");
            }
            c.id = s.id.clone();
        }
        if parsed.calls.len() < n {
            tracing::warn!(
                streamed = n,
                parsed = parsed.calls.len(),
                "tool calls were streamed that the whole output does not parse into"
            );
        }
        deltas.extend(whole(n, parsed.calls.get(n..).unwrap_or_default()));
        Finished { parsed, deltas }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Streams `text` in pieces of `step` chars; returns (streamed content, final parse).
    /// Checks that the deltas put together per index are the parsed calls (same ids and
    /// names, arguments equal as JSON), each starting with its id and name.
    fn run(mode: OutputMode, text: &str, step: usize) -> (String, Parsed) {
        let (content, p, _) = run_with_pushes(mode, text, step);
        (content, p)
    }

    /// [`run`], also returning how many argument bytes had arrived before the end.
    fn run_with_pushes(mode: OutputMode, text: &str, step: usize) -> (String, Parsed, usize) {
        let mut s = ToolStream::new(mode);
        let mut out = String::new();
        let mut deltas = Vec::new();
        let chars: Vec<char> = text.chars().collect();
        for piece in chars.chunks(step) {
            let r = s.push(&piece.iter().collect::<String>());
            out.push_str(&r.text);
            deltas.extend(r.calls);
        }
        let early: usize = deltas
            .iter()
            .filter_map(|d| d.function.arguments.as_ref().map(String::len))
            .sum();
        let end = s.finish();
        deltas.extend(end.deltas);
        let p = end.parsed;
        if let Some(c) = &p.content {
            out.push_str(c);
        }
        let mut calls: Vec<(String, String, String)> = Vec::new();
        for d in &deltas {
            let i = d.index as usize;
            if i == calls.len() {
                let (Some(id), Some(name)) = (&d.id, &d.function.name) else {
                    panic!("call {i} starts without id and name: {d:?}");
                };
                calls.push((id.clone(), name.clone(), String::new()));
            }
            calls[i]
                .2
                .push_str(d.function.arguments.as_deref().unwrap_or_default());
        }
        assert_eq!(calls.len(), p.calls.len(), "{deltas:?}");
        for (c, parsed) in calls.iter().zip(&p.calls) {
            assert_eq!((&c.0, &c.1), (&parsed.id, &parsed.function.name));
            let a: serde_json::Value = serde_json::from_str(&c.2).expect("streamed args parse");
            let b: serde_json::Value = serde_json::from_str(&parsed.function.arguments).unwrap();
            assert_eq!(
                a, b,
                "streamed {} vs parsed {}",
                c.2, parsed.function.arguments
            );
        }
        (out, p, early)
    }

    #[test]
    fn arguments_stream_before_the_choice_ends() {
        let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": [1, 2]}}\n</tool_call>\n<tool_call>{\"name\": \"t\", \"arguments\": {}}</tool_call>";
        for step in [1, 2, 5, 9] {
            let (content, p, early) =
                run_with_pushes(OutputMode::Free(ToolFormat::Hermes), text, step);
            assert_eq!(content, "");
            assert_eq!(p.calls.len(), 2);
            assert_eq!(
                early,
                "{\"city\":\"Paris\",\"days\":[1,2]}".len() + 2,
                "step {step}"
            );
        }
        let mistral = "[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {\"k\": \"v\"}}, {\"name\": \"b\", \"arguments\": {}}]";
        let (_, p, early) = run_with_pushes(OutputMode::Free(ToolFormat::Mistral), mistral, 3);
        assert_eq!((p.calls.len(), early), (2, "{\"k\":\"v\"}".len() + 2));
        let forced = OutputMode::Forced {
            named: Some("f".into()),
        };
        let (_, p, early) = run_with_pushes(forced, "{\"a\": [1, 2], \"b\": \"x y\"}", 2);
        assert_eq!(
            (p.calls.len(), early),
            (1, "{\"a\":[1,2],\"b\":\"x y\"}".len())
        );
        let required = OutputMode::Forced { named: None };
        let (_, p, early) = run_with_pushes(
            required,
            "[{\"name\": \"g\", \"arguments\": {\"q\": 1}}]",
            4,
        );
        assert_eq!((p.calls.len(), early), (1, "{\"q\":1}".len()));
    }

    #[test]
    fn calls_the_scan_cannot_follow_arrive_whole_at_the_end() {
        let text = "<tool_call>{\"arguments\": {\"a\": 1}, \"name\": \"f\"}</tool_call>";
        let (_, p, early) = run_with_pushes(OutputMode::Free(ToolFormat::Hermes), text, 3);
        assert_eq!((p.calls.len(), early), (1, 0));
        let text = "[TOOL_CALLS]f[ARGS]{\"a\": 1}";
        let (_, p, early) = run_with_pushes(OutputMode::Free(ToolFormat::Mistral), text, 3);
        assert_eq!((p.calls.len(), early), (1, 0));
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
