//! The OpenAI client side: an SSE parser, one streamed request measured chunk by
//! chunk, and `/v1/models`.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;

use crate::error::{BenchError, Result};

/// One server-sent event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SseEvent {
    /// The `data:` lines of an event, joined with `\n`.
    Data(String),
    /// `data: [DONE]`.
    Done,
}

/// Incremental SSE parser: feed bytes as they come, get whole events out.
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    data: Option<String>,
}

impl SseParser {
    /// Parses what `bytes` completes; a partial line waits for the next call.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.line(&String::from_utf8_lossy(&line), &mut out);
        }
        out
    }

    /// Ends the stream: an event without its closing blank line still counts.
    pub fn finish(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        if !self.buf.is_empty() {
            let rest = String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned();
            self.line(rest.trim_end_matches('\r'), &mut out);
        }
        self.line("", &mut out);
        out
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if let Some(d) = self.data.take() {
                out.push(if d.trim() == "[DONE]" {
                    SseEvent::Done
                } else {
                    SseEvent::Data(d)
                });
            }
            return;
        }
        if line.starts_with(':') {
            return; // comment / keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        if field == "data" {
            match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            }
        }
    }
}

/// What one streamed response chunk carried.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChunkInfo {
    /// Generated text of the first choice (completions `text`, chat `delta.content`).
    pub text: String,
    /// Tokens the chunk carried: `token_ids` when present, else 1 for non-empty text.
    pub tokens: u64,
    pub usage: Option<UsageInfo>,
    pub error: Option<String>,
}

/// `usage` of a response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UsageInfo {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: Option<u64>,
}

/// Reads one `data:` payload of an OpenAI stream.
pub fn parse_chunk(data: &str) -> Result<ChunkInfo> {
    let v: Value = serde_json::from_str(data)?;
    let mut info = ChunkInfo::default();
    if let Some(e) = v.get("error") {
        let msg = e.get("message").and_then(Value::as_str);
        info.error = Some(msg.map_or_else(|| e.to_string(), str::to_string));
        return Ok(info);
    }
    if let Some(c) = v.pointer("/choices/0") {
        let text = c
            .get("text")
            .or_else(|| c.pointer("/delta/content"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let reasoning = c
            .pointer("/delta/reasoning_content")
            .and_then(Value::as_str)
            .unwrap_or_default();
        info.text = format!("{reasoning}{text}");
        info.tokens = match c.get("token_ids").and_then(Value::as_array) {
            Some(ids) => ids.len() as u64,
            None => u64::from(!info.text.is_empty()),
        };
    }
    if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
        let n = |p: &str| u.pointer(p).and_then(Value::as_u64);
        info.usage = Some(UsageInfo {
            prompt_tokens: n("/prompt_tokens").unwrap_or(0),
            completion_tokens: n("/completion_tokens").unwrap_or(0),
            cached_tokens: n("/prompt_tokens_details/cached_tokens"),
        });
    }
    Ok(info)
}

/// The measurements of one request.
#[derive(Clone, Debug, Default)]
pub struct Measured {
    /// Time to the first chunk with output.
    pub ttft: Option<Duration>,
    /// Gaps between consecutive chunks with output.
    pub itl: Vec<Duration>,
    pub e2e: Duration,
    /// Chunks with output.
    pub chunks: u64,
    /// Tokens counted from chunks (the fallback when `usage` is absent).
    pub counted_tokens: u64,
    pub usage: Option<UsageInfo>,
    /// The generated text (multi-turn sends it back as the assistant's turn).
    pub text: String,
    /// HTTP status, when the server answered.
    pub status: Option<u16>,
    pub error: Option<String>,
    /// Whether `[DONE]` arrived.
    pub done: bool,
}

/// POSTs `body` (a streaming request) to `url` and measures the stream.
pub async fn stream(client: &reqwest::Client, url: &str, body: &Value) -> Measured {
    let start = Instant::now();
    let mut m = Measured::default();
    if let Err(e) = stream_into(client, url, body, start, &mut m).await {
        m.error.get_or_insert_with(|| e.to_string());
    }
    m.e2e = start.elapsed();
    if m.error.is_none() && !m.done && m.usage.is_none() && m.chunks == 0 {
        m.error = Some("stream ended without output".into());
    }
    m
}

async fn stream_into(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
    start: Instant,
    m: &mut Measured,
) -> Result<()> {
    let resp = client.post(url).json(body).send().await?;
    let status = resp.status();
    m.status = Some(status.as_u16());
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| {
                v.pointer("/error/message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or(text);
        m.error = Some(format!("HTTP {}: {msg}", status.as_u16()));
        return Ok(());
    }
    let mut parser = SseParser::default();
    let mut last: Option<Instant> = None;
    let mut bytes = resp.bytes_stream();
    let mut ended = false;
    while !ended {
        let events = match bytes.next().await {
            Some(chunk) => parser.push(&chunk?),
            None => {
                ended = true;
                parser.finish()
            }
        };
        for ev in events {
            let data = match ev {
                SseEvent::Done => {
                    m.done = true;
                    continue;
                }
                SseEvent::Data(d) => d,
            };
            let info = parse_chunk(&data)?;
            if let Some(e) = info.error {
                return Err(BenchError::Server(format!("stream error: {e}")));
            }
            if info.tokens > 0 || !info.text.is_empty() {
                let now = Instant::now();
                match last {
                    None => m.ttft = Some(now - start),
                    Some(prev) => m.itl.push(now - prev),
                }
                last = Some(now);
                m.chunks += 1;
                m.counted_tokens += info.tokens;
                m.text.push_str(&info.text);
            }
            if info.usage.is_some() {
                m.usage = info.usage;
            }
        }
    }
    Ok(())
}

/// The first model `GET {base}/v1/models` lists.
pub async fn first_model(client: &reqwest::Client, base: &str) -> Result<String> {
    let url = format!("{base}/v1/models");
    let resp = client.get(&url).send().await?;
    if !resp.status().is_success() {
        return Err(BenchError::Server(format!(
            "GET {url}: HTTP {}",
            resp.status().as_u16()
        )));
    }
    let v: Value = resp.json().await?;
    v.pointer("/data/0/id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| BenchError::Server(format!("GET {url}: no models listed")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_across_reads_and_line_endings() {
        let mut p = SseParser::default();
        let mut ev = p.push(b"data: {\"a\"");
        assert!(ev.is_empty());
        ev.extend(p.push(b":1}\n\n: keep-alive\n\ndata: x\r\ndata: y\r\n\r\nevent: e\ndata:z\n"));
        ev.extend(p.push(b"\ndata: [DONE]\n\n"));
        assert_eq!(
            ev,
            vec![
                SseEvent::Data("{\"a\":1}".into()),
                SseEvent::Data("x\ny".into()),
                SseEvent::Data("z".into()),
                SseEvent::Done,
            ]
        );
        assert!(p.push(b"data: tail").is_empty());
        assert_eq!(p.finish(), vec![SseEvent::Data("tail".into())]);
    }

    #[test]
    fn chunks_of_completions_chat_usage_and_errors() {
        let c = parse_chunk(r#"{"choices":[{"index":0,"text":"hi","token_ids":[5,6]}]}"#).unwrap();
        assert_eq!((c.text.as_str(), c.tokens), ("hi", 2));
        let c = parse_chunk(r#"{"choices":[{"index":0,"delta":{"content":" there"}}]}"#).unwrap();
        assert_eq!((c.text.as_str(), c.tokens), (" there", 1));
        let c = parse_chunk(r#"{"choices":[{"index":0,"delta":{"role":"assistant"}}]}"#).unwrap();
        assert_eq!(c.tokens, 0);
        let c = parse_chunk(
            r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":8}}}"#,
        )
        .unwrap();
        assert_eq!(
            c.usage,
            Some(UsageInfo {
                prompt_tokens: 12,
                completion_tokens: 3,
                cached_tokens: Some(8)
            })
        );
        let c = parse_chunk(r#"{"choices":[{"text":"a"}],"usage":null}"#).unwrap();
        assert_eq!(c.usage, None);
        let c = parse_chunk(r#"{"error":{"message":"boom","type":"x"}}"#).unwrap();
        assert_eq!(c.error.as_deref(), Some("boom"));
        assert!(parse_chunk("not json").is_err());
    }
}
