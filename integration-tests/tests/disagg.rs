//! Disaggregated prefill/decode with real processes (etcd, NATS, frontend, a prefill and
//! a decode worker): greedy output equals the aggregated worker's token for token on the
//! CPU engine (stories260k, SmolLM2-135M); cancels at every stage and SIGKILLs of either
//! worker leave no block active on any worker and no error at the client.

use ferrite_integration_tests::cluster::{Cluster, ClusterSpec, MOCK_RANGE, MODEL, token_ids};
use ferrite_integration_tests::sse::SseStream;
use ferrite_integration_tests::{eventually, metric, models_dir};
use ferrite_mocker::mock_token;
use serde_json::{Value, json};
use std::time::Duration;

const ACTIVE: &str = "ferrite_worker_kv_blocks{state=\"active\"}";
const RUNNING: &str = "ferrite_worker_running_sequences";
const CANCELLED: &str = "ferrite_worker_cancellations_total";
/// KV blocks the prefill worker sent, by transport.
fn sent_blocks(transport: &str) -> String {
    format!("ferrite_worker_kv_transfer_blocks_total{{transport=\"{transport}\"}}")
}
const REMOTE: &str = "ferrite_worker_disagg_requests_total{prefill=\"remote\"}";

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|a| a.to_string()).collect()
}

/// Worker 0 prefill, the others decode (everything prefilled remotely).
fn disagg_spec(decoders: usize, engine_args: &[&str], transport: &str) -> ClusterSpec {
    let mut spec = ClusterSpec::mocker(1 + decoders, "1");
    spec.worker_args = s(engine_args);
    spec.worker_args.extend(s(&["--kv-transport", transport]));
    spec.per_worker_args = vec![s(&["--role", "prefill"])];
    for _ in 0..decoders {
        spec.per_worker_args
            .push(s(&["--role", "decode", "--max-local-prefill-tokens", "0"]));
    }
    spec
}

async fn value(c: &Cluster, w: usize, name: &str) -> f64 {
    match c.worker_metrics(w).await {
        Ok(m) => metric(&m, name).unwrap_or(0.0),
        Err(_) => f64::NAN,
    }
}

/// Every live worker holds no active block (waits up to `within`).
async fn assert_no_leak(c: &Cluster, within: Duration) {
    let live: Vec<usize> = (0..c.workers.len())
        .filter(|w| c.workers[*w].proc.is_some())
        .collect();
    let ok = eventually(within, || async {
        for &w in &live {
            if value(c, w, ACTIVE).await != 0.0 {
                return None;
            }
        }
        Some(())
    })
    .await;
    if ok.is_none() {
        let mut msg = String::new();
        for &w in &live {
            msg += &format!("worker {w}: {} active; ", value(c, w, ACTIVE).await);
        }
        panic!("blocks leaked: {msg}");
    }
}

fn text_body(model: &str, prompt: &str, n: u32) -> Value {
    json!({"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0,
        "ignore_eos": true, "stream": true, "return_token_ids": true})
}

async fn greedy(c: &Cluster, body: &Value) -> anyhow::Result<Vec<u32>> {
    let url = format!("{}/v1/completions", c.url);
    let (events, done) = SseStream::open(&c.client, &url, body)
        .await?
        .collect()
        .await?;
    anyhow::ensure!(done, "stream did not finish");
    let mut ids = Vec::new();
    for e in &events {
        anyhow::ensure!(e.get("error").is_none(), "error event: {e}");
        ids.extend(token_ids(&e["choices"][0]));
    }
    Ok(ids)
}

const PROMPTS: &[&str] = &[
    "Once upon a time",
    "The little dog ran to the park and saw a big red ball. He wanted to play with it, so he",
];

fn long_prompt(words: usize) -> String {
    let base = "Lily and Tom went to the garden to look for flowers and they found a small cat ";
    base.repeat(words / 16 + 1)
}

async fn outputs(
    c: &Cluster,
    model: &str,
    prompts: &[String],
    n: u32,
) -> anyhow::Result<Vec<Vec<u32>>> {
    let mut out = Vec::new();
    for p in prompts {
        out.push(greedy(c, &text_body(model, p, n)).await?);
    }
    Ok(out)
}

async fn equal_to_aggregated(
    engine_args: &[&str],
    model: &str,
    transport: &str,
    n: u32,
) -> anyhow::Result<()> {
    let mut prompts: Vec<String> = PROMPTS.iter().map(|p| p.to_string()).collect();
    prompts.push(long_prompt(120));
    let mut agg = ClusterSpec::mocker(1, "1");
    agg.worker_args = s(engine_args);
    let reference = {
        let c = Cluster::start(agg).await?;
        outputs(&c, model, &prompts, n).await?
    };
    let c = Cluster::start(disagg_spec(1, engine_args, transport)).await?;
    let got = outputs(&c, model, &prompts, n).await?;
    for (i, (g, r)) in got.iter().zip(&reference).enumerate() {
        assert_eq!(g.len(), n as usize, "prompt {i}");
        assert_eq!(
            g, r,
            "prompt {i}: disaggregated output differs from aggregated"
        );
    }
    assert_eq!(
        value(&c, 1, REMOTE).await,
        prompts.len() as f64,
        "all prefilled remotely"
    );
    assert!(
        value(&c, 0, &sent_blocks(transport)).await > 0.0,
        "the prefill worker sent KV blocks over {transport}"
    );
    assert_no_leak(&c, Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stories260k_disaggregated_equals_aggregated_over_tcp() -> anyhow::Result<()> {
    equal_to_aggregated(&["--engine", "cpu"], MODEL, "tcp", 48).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stories260k_disaggregated_equals_aggregated_over_ucx() -> anyhow::Result<()> {
    equal_to_aggregated(&["--engine", "cpu"], MODEL, "ucx", 48).await
}

async fn smollm2(transport: &str) -> anyhow::Result<()> {
    let model = models_dir()?.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    anyhow::ensure!(model.is_file(), "missing test model {}", model.display());
    let path = model.to_string_lossy().into_owned();
    let args = [
        "--engine",
        "cpu",
        "--model",
        &path,
        "--served-model-name",
        "smollm2",
    ];
    equal_to_aggregated(&args, "smollm2", transport, 24).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn smollm2_disaggregated_equals_aggregated_over_tcp() -> anyhow::Result<()> {
    smollm2("tcp").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn smollm2_disaggregated_equals_aggregated_over_ucx() -> anyhow::Result<()> {
    smollm2("ucx").await
}

// ---- mocker: cancellation and kills ----------------------------------------------------

/// A long prompt of mock ids (slow to prefill at a low speed-up).
fn mock_long(i: usize, len: usize) -> Vec<u32> {
    (0..len)
        .map(|k| 300 + ((k * 11 + i) % 200) as u32)
        .collect()
}

fn mock_body(i: usize, prompt: &[u32], n: u32) -> Value {
    json!({"model": MODEL, "prompt": prompt, "max_tokens": n, "seed": i, "ignore_eos": true,
        "stream": true, "return_token_ids": true})
}

fn mock_expected(i: usize, prompt_len: usize, n: u32) -> Vec<u32> {
    (0..n)
        .map(|k| mock_token(i as u64, prompt_len as u32 + k, &MOCK_RANGE))
        .collect()
}

/// Opens a stream and reads it to the end in a task (abort it to disconnect the client).
fn open_in_task(c: &Cluster, url: &str, body: Value) -> tokio::task::JoinHandle<()> {
    let (client, url) = (c.client.clone(), url.to_string());
    tokio::spawn(async move {
        if let Ok(s) = SseStream::open(&client, &url, &body).await {
            let _ = s.collect().await;
        }
    })
}

async fn wait_running(c: &Cluster, w: usize) -> bool {
    eventually(Duration::from_secs(10), || async {
        (value(c, w, RUNNING).await > 0.0).then_some(())
    })
    .await
    .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_during_remote_prefill_and_during_decode_frees_both_workers() -> anyhow::Result<()> {
    // Speed-up 0.1 and 256-token chunks: a 6000-token prefill takes ~5 s (24 chunks),
    // a decode step ~60 ms.
    let mut spec = disagg_spec(1, &["--engine", "mocker", "--speedup", "0.1"], "tcp");
    spec.per_worker_args[0].extend(s(&["--max-batched-tokens", "256"]));
    let c = Cluster::start(spec).await?;
    let url = format!("{}/v1/completions", c.url);

    // 1. Client gone while the prefill worker computes the prompt (the response headers
    // come with the first token, so the request is a task that is aborted).
    let prompt = mock_long(1, 6000);
    let task = open_in_task(&c, &url, mock_body(1, &prompt, 50));
    assert!(
        wait_running(&c, 0).await,
        "the prefill worker never ran the prompt"
    );
    task.abort();
    let ok = eventually(Duration::from_secs(10), || async {
        (value(&c, 0, CANCELLED).await >= 1.0).then_some(())
    })
    .await;
    assert!(ok.is_some(), "the cancel did not reach the prefill worker");
    assert_no_leak(&c, Duration::from_secs(5)).await;

    // 2. Client gone while decoding.
    let prompt = mock_long(2, 400);
    let mut stream = SseStream::open(&c.client, &url, &mock_body(2, &prompt, 400)).await?;
    let mut got = Vec::new();
    while got.len() < 5 {
        let e = stream.next_event().await?.expect("stream ended early");
        got.extend(token_ids(&e["choices"][0]));
    }
    assert_eq!(got[..5], mock_expected(2, 400, 5)[..]);
    drop(stream);
    let ok = eventually(Duration::from_secs(10), || async {
        (value(&c, 1, CANCELLED).await >= 1.0).then_some(())
    })
    .await;
    assert!(ok.is_some(), "the decode worker did not count the cancel");
    assert_no_leak(&c, Duration::from_secs(5)).await;

    // 3. Cancels at a sweep of moments (remote prefill, transfer, first token, decode).
    for (k, delay) in [0u64, 50, 150, 300, 500, 700, 900].into_iter().enumerate() {
        let i = 10 + k;
        let prompt = mock_long(i, 600);
        let task = open_in_task(&c, &url, mock_body(i, &prompt, 30));
        tokio::time::sleep(Duration::from_millis(delay)).await;
        task.abort();
    }
    assert_no_leak(&c, Duration::from_secs(10)).await;

    // Still serving, still exact.
    let prompt = mock_long(99, 300);
    let ids = greedy(&c, &mock_body(99, &prompt, 20)).await?;
    assert_eq!(ids, mock_expected(99, 300, 20));
    assert_no_leak(&c, Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefill_worker_killed_mid_prefill_decode_recovers_without_client_error()
-> anyhow::Result<()> {
    let mut c = Cluster::start(disagg_spec(
        1,
        &["--engine", "mocker", "--speedup", "0.1"],
        "tcp",
    ))
    .await?;
    let prompt = mock_long(5, 3000);
    let task = {
        let (client, url, body) = (
            c.client.clone(),
            format!("{}/v1/completions", c.url),
            mock_body(5, &prompt, 20),
        );
        tokio::spawn(async move {
            let (events, done) = SseStream::open(&client, &url, &body)
                .await?
                .collect()
                .await?;
            anyhow::Ok((events, done))
        })
    };
    assert!(
        wait_running(&c, 0).await,
        "the prefill worker never ran the prompt"
    );
    c.kill_worker(0);
    let (events, done) = tokio::time::timeout(Duration::from_secs(60), task).await???;
    assert!(done, "no [DONE]");
    let mut ids = Vec::new();
    for e in &events {
        assert!(e.get("error").is_none(), "client saw an error: {e}");
        ids.extend(token_ids(&e["choices"][0]));
    }
    assert_eq!(
        ids,
        mock_expected(5, 3000, 20),
        "output after the local re-prefill"
    );
    assert_no_leak(&c, Duration::from_secs(5)).await;
    // With no prefill worker left, the decode worker serves aggregated.
    let p = mock_long(6, 200);
    assert_eq!(
        greedy(&c, &mock_body(6, &p, 10)).await?,
        mock_expected(6, 200, 10)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn decode_worker_killed_mid_decode_migrates() -> anyhow::Result<()> {
    let mut c = Cluster::start(disagg_spec(
        2,
        &["--engine", "mocker", "--speedup", "0.5"],
        "tcp",
    ))
    .await?;
    let url = format!("{}/v1/completions", c.url);
    let prompt = mock_long(7, 500);
    let mut stream = SseStream::open(&c.client, &url, &mock_body(7, &prompt, 60)).await?;
    let mut ids = Vec::new();
    let mut killed = None;
    while let Some(e) = stream.next_event().await? {
        assert!(e.get("error").is_none(), "client saw an error: {e}");
        ids.extend(token_ids(&e["choices"][0]));
        if killed.is_none() && ids.len() >= 5 {
            let w = c.serving_worker().await?;
            assert_ne!(w, 0, "the prefill worker does not decode");
            c.kill_worker(w);
            killed = Some(w);
        }
    }
    assert!(killed.is_some() && stream.done, "no kill or no [DONE]");
    assert_eq!(ids, mock_expected(7, 500, 60), "migrated output");
    assert_no_leak(&c, Duration::from_secs(5)).await;
    Ok(())
}
