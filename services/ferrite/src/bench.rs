//! `ferrite bench`: a closed-loop load generator against any OpenAI-compatible server.
//! Streams `/v1/completions` with token-id prompts and reports throughput and latency.

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use futures::StreamExt;
use rand::Rng;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Independent random prompts.
    Synthetic,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Server base URL, e.g. http://127.0.0.1:8000
    #[arg(long, env = "FERRITE_URL")]
    pub url: String,
    #[arg(long, env = "FERRITE_MODEL_NAME")]
    pub model: String,
    #[arg(
        long,
        value_enum,
        default_value = "synthetic",
        env = "FERRITE_WORKLOAD"
    )]
    pub workload: Workload,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16, env = "FERRITE_CONCURRENCY")]
    pub concurrency: usize,
    /// Requests in all.
    #[arg(long, default_value_t = 256, env = "FERRITE_REQUESTS")]
    pub requests: usize,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128, env = "FERRITE_ISL")]
    pub isl: usize,
    /// Output length in tokens.
    #[arg(long, default_value_t = 64, env = "FERRITE_OSL")]
    pub osl: u32,
    /// Prompt tokens are drawn from [vocab_lo, vocab_hi).
    #[arg(long, default_value_t = 259, env = "FERRITE_VOCAB_LO")]
    pub vocab_lo: u32,
    #[arg(long, default_value_t = 512, env = "FERRITE_VOCAB_HI")]
    pub vocab_hi: u32,
    /// Write the results as JSON here.
    #[arg(long, env = "FERRITE_JSON")]
    pub json: Option<std::path::PathBuf>,
}

#[derive(Default)]
struct One {
    ttft: Duration,
    total: Duration,
    chunks: u64,
    tokens: u64,
}

async fn one(client: &reqwest::Client, url: &str, body: serde_json::Value) -> anyhow::Result<One> {
    let start = Instant::now();
    let resp = client.post(url).json(&body).send().await?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        bail!("HTTP {status}: {text}");
    }
    let mut out = One::default();
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk?);
        while let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..pos + 2).collect();
            let line = String::from_utf8_lossy(&event);
            let Some(data) = line.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(data)?;
            if v.get("error").is_some() {
                bail!("stream error: {data}");
            }
            if let Some(ids) = v.pointer("/choices/0/token_ids").and_then(|t| t.as_array()) {
                if out.tokens == 0 && !ids.is_empty() {
                    out.ttft = start.elapsed();
                }
                out.tokens += ids.len() as u64;
                out.chunks += 1;
            }
        }
    }
    out.total = start.elapsed();
    Ok(out)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

pub async fn run(a: BenchArgs) -> anyhow::Result<()> {
    if a.concurrency == 0 || a.requests == 0 || a.isl == 0 || a.osl == 0 || a.vocab_lo >= a.vocab_hi
    {
        bail!(
            "--concurrency, --requests, --isl and --osl must be positive and --vocab-lo < --vocab-hi"
        );
    }
    let url = format!("{}/v1/completions", a.url.trim_end_matches('/'));
    let client = reqwest::Client::builder().build().context("http client")?;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.concurrency.min(a.requests) {
        let (client, url, next) = (client.clone(), url.clone(), next.clone());
        let (n, isl, osl, lo, hi, model) = (
            a.requests,
            a.isl,
            a.osl,
            a.vocab_lo,
            a.vocab_hi,
            a.model.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut results = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let prompt: Vec<u32> = {
                    let mut rng = rand::rng();
                    (0..isl).map(|_| rng.random_range(lo..hi)).collect()
                };
                let body = serde_json::json!({
                    "model": model, "prompt": prompt, "max_tokens": osl, "stream": true,
                    "ignore_eos": true, "return_token_ids": true, "temperature": 0,
                });
                results.push(one(&client, &url, body).await);
            }
            results
        }));
    }
    let mut ok = Vec::new();
    let mut errors = 0usize;
    let mut first_error = None;
    for t in tasks {
        for r in t.await? {
            match r {
                Ok(o) => ok.push(o),
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let tokens: u64 = ok.iter().map(|o| o.tokens).sum();
    let chunks: u64 = ok.iter().map(|o| o.chunks).sum();
    let mut ttft: Vec<f64> = ok.iter().map(|o| o.ttft.as_secs_f64() * 1e3).collect();
    let mut lat: Vec<f64> = ok.iter().map(|o| o.total.as_secs_f64() * 1e3).collect();
    let report = serde_json::json!({
        "requests_ok": ok.len(), "errors": errors, "first_error": first_error,
        "wall_s": wall, "requests_per_s": ok.len() as f64 / wall,
        "output_tokens": tokens, "output_tokens_per_s": tokens as f64 / wall,
        "sse_chunks": chunks,
        "ttft_ms_p50": pct(&mut ttft, 0.5), "ttft_ms_p99": pct(&mut ttft, 0.99),
        "latency_ms_p50": pct(&mut lat, 0.5), "latency_ms_p99": pct(&mut lat, 0.99),
        "concurrency": a.concurrency, "isl": a.isl, "osl": a.osl,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(p) = a.json {
        std::fs::write(&p, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if errors > 0 {
        bail!("{errors} requests failed");
    }
    Ok(())
}
