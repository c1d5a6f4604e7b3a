//! A small SSE client for OpenAI streams.

use anyhow::{Context, bail};
use futures::StreamExt;
use serde_json::Value;

/// A streamed response read event by event.
pub struct SseStream {
    inner: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: Vec<u8>,
    pub done: bool,
    /// SSE comment lines seen (keep-alives).
    pub comments: usize,
}

impl SseStream {
    /// POSTs `body` to `url` and checks the status is 200 and the type is an event stream.
    pub async fn open(client: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<Self> {
        let resp = client.post(url).json(body).send().await?;
        let status = resp.status();
        if status != 200 {
            let text = resp.text().await.unwrap_or_default();
            bail!("HTTP {status}: {text}");
        }
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if !ct.starts_with("text/event-stream") {
            bail!("content-type {ct:?} is not text/event-stream");
        }
        Ok(Self {
            inner: resp.bytes_stream().boxed(),
            buf: Vec::new(),
            done: false,
            comments: 0,
        })
    }

    /// The next `data:` JSON event; `None` after `[DONE]` or at the end.
    pub async fn next_event(&mut self) -> anyhow::Result<Option<Value>> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let ev: Vec<u8> = self.buf.drain(..pos + 2).collect();
                let text = String::from_utf8(ev).context("SSE event is not UTF-8")?;
                if text.trim_start().starts_with(':') {
                    // A comment (keep-alive).
                    self.comments += 1;
                    continue;
                }
                let data = text
                    .trim()
                    .strip_prefix("data: ")
                    .with_context(|| format!("not a data event: {text:?}"))?;
                if data == "[DONE]" {
                    self.done = true;
                    return Ok(None);
                }
                return Ok(Some(
                    serde_json::from_str(data).with_context(|| format!("bad JSON: {data}"))?,
                ));
            }
            match self.inner.next().await {
                Some(chunk) => self.buf.extend_from_slice(&chunk?),
                None => return Ok(None),
            }
        }
    }

    /// Reads to the end; returns every event.
    pub async fn collect(mut self) -> anyhow::Result<(Vec<Value>, bool)> {
        let mut out = Vec::new();
        while let Some(v) = self.next_event().await? {
            out.push(v);
        }
        Ok((out, self.done))
    }
}
