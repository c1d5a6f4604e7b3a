//! Cancellation reaches the worker wherever the request is: queued, in a long chunked
//! prefill, decoding; by client disconnect, stop string or the frontend's deadline. The
//! worker's blocks are free afterwards and the cancellation is counted on both sides.

use ferrite_integration_tests::cluster::{Cluster, ClusterSpec, MODEL, mock_prompt};
use ferrite_integration_tests::sse::SseStream;
use ferrite_integration_tests::{eventually, metric};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn spec(extra: &[&str]) -> ClusterSpec {
    let mut s = ClusterSpec::mocker(1, "1");
    s.worker_args.extend(extra.iter().map(|a| a.to_string()));
    s
}

async fn worker_value(c: &Cluster, name: &str) -> f64 {
    match c.worker_metrics(0).await {
        Ok(m) => metric(&m, name).unwrap_or(0.0),
        Err(_) => f64::NAN,
    }
}

const ACTIVE: &str = "ferrite_worker_kv_blocks{state=\"active\"}";
const CANCELLED: &str = "ferrite_worker_cancellations_total";

async fn open(c: &Cluster, prompt: Value, max_tokens: u32) -> anyhow::Result<SseStream> {
    let body = json!({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens,
        "stream": true, "return_token_ids": true});
    SseStream::open(&c.client, &format!("{}/v1/completions", c.url), &body).await
}

/// Sends a completion request (the response is not read: nothing may arrive before the
/// end) and waits until the worker holds blocks for it; `None` if it never does.
async fn start_raw(
    c: &Cluster,
    body: Value,
) -> Option<tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>> {
    let (client, url) = (c.client.clone(), format!("{}/v1/completions", c.url));
    let req = tokio::spawn(async move { client.post(url).json(&body).send().await });
    eventually(Duration::from_secs(5), || async {
        (worker_value(c, ACTIVE).await > 0.0).then_some(())
    })
    .await
    .map(|()| req)
}

/// Waits until the worker counts `n` cancellations and holds no active block.
async fn wait_cancelled_and_free(c: &Cluster, n: f64, within: Duration) -> bool {
    eventually(within, || async {
        (worker_value(c, CANCELLED).await >= n && worker_value(c, ACTIVE).await == 0.0)
            .then_some(())
    })
    .await
    .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_while_queued_removes_it_from_the_queue() -> anyhow::Result<()> {
    // One sequence at a time: the second request waits in the queue.
    let c = Cluster::start(spec(&["--max-num-seqs", "1"])).await?;
    let mut running = open(&c, json!(mock_prompt(1)), 3000).await?;
    running.next_event().await?;
    // The queued request never gets a byte before the first is done, so open it raw.
    let queued = {
        let client = c.client.clone();
        let url = format!("{}/v1/completions", c.url);
        tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"model": MODEL, "prompt": mock_prompt(2), "max_tokens": 50, "stream": true}))
                .send()
                .await
        })
    };
    let queued_seen = eventually(Duration::from_secs(5), || async {
        (worker_value(&c, "ferrite_worker_queue_depth").await >= 1.0).then_some(())
    })
    .await;
    assert!(queued_seen.is_some(), "the second request never queued");
    queued.abort();
    let gone = eventually(Duration::from_secs(3), || async {
        (worker_value(&c, "ferrite_worker_queue_depth").await == 0.0
            && worker_value(&c, CANCELLED).await >= 1.0)
            .then_some(())
    })
    .await;
    assert!(gone.is_some(), "the queued request was not cancelled");
    // The running one is untouched and still streaming.
    assert!(running.next_event().await?.is_some());
    drop(running);
    assert!(wait_cancelled_and_free(&c, 2.0, Duration::from_secs(3)).await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_during_a_long_chunked_prefill_stops_it() -> anyhow::Result<()> {
    // 8 000 prompt tokens in 256-token chunks at a tenth of simulated H100 speed: the
    // prefill alone takes several seconds.
    let mut s = ClusterSpec::mocker(1, "0.1");
    s.worker_args
        .extend(["--max-batched-tokens".to_string(), "256".to_string()]);
    let c = Cluster::start(s).await?;
    let prompt: Vec<u32> = (0..8000).map(|k| 300 + (k % 200)).collect();
    let Some(req) = start_raw(
        &c,
        json!({"model": MODEL, "prompt": prompt, "max_tokens": 10, "stream": true}),
    )
    .await
    else {
        panic!("the prefill never started");
    };
    let cancelled_at = Instant::now();
    req.abort();
    assert!(
        wait_cancelled_and_free(&c, 1.0, Duration::from_secs(3)).await,
        "the chunked prefill was not cancelled"
    );
    eprintln!(
        "prefill cancelled and blocks freed in {:?}",
        cancelled_at.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_deadline_errors_and_cancels_on_the_worker() -> anyhow::Result<()> {
    let mut s = spec(&[]);
    s.frontend_args = vec!["--request-timeout".into(), "2".into()];
    let c = Cluster::start(s).await?;
    let start = Instant::now();
    let (events, _) = open(&c, json!(mock_prompt(5)), 5000)
        .await?
        .collect()
        .await?;
    let took = start.elapsed();
    let last = events.last().cloned().unwrap_or_default();
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("did not finish within 2 s"),
        "last event: {last}"
    );
    assert!(
        took < Duration::from_secs(5),
        "the deadline fired after {took:?}"
    );
    assert!(
        wait_cancelled_and_free(&c, 1.0, Duration::from_secs(3)).await,
        "the worker kept the timed-out request"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stop_string_found_by_the_frontend_cancels_the_worker() -> anyhow::Result<()> {
    let c = Cluster::start(spec(&[])).await?;
    let url = format!("{}/v1/completions", c.url);
    let ask = |stop: Option<String>| {
        let mut body =
            json!({"model": MODEL, "prompt": mock_prompt(7), "max_tokens": 600, "seed": 7});
        if let Some(s) = stop {
            body["stop"] = json!([s]);
        }
        c.client.post(&url).json(&body).send()
    };
    let full: Value = ask(None).await?.json().await?;
    let text = full["choices"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // A stop string from early in the text: the rest is never generated.
    let chars: Vec<char> = text.chars().collect();
    anyhow::ensure!(chars.len() > 40, "too little text: {text:?}");
    let stop: String = chars[20..26].iter().collect();
    let before = worker_value(&c, CANCELLED).await;
    let start = Instant::now();
    let cut: Value = ask(Some(stop.clone())).await?.json().await?;
    let took = start.elapsed();
    let got = cut["choices"][0]["text"].as_str().unwrap_or_default();
    assert_eq!(cut["choices"][0]["finish_reason"], "stop", "{cut}");
    assert!(
        text.starts_with(got) && !got.contains(&stop),
        "{got:?} vs {text:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "the stopped request took {took:?}"
    );
    assert!(
        wait_cancelled_and_free(&c, before + 1.0, Duration::from_secs(3)).await,
        "the worker was not told to stop"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_non_streamed_request_is_cancelled_when_its_client_hangs_up() -> anyhow::Result<()> {
    // Real-time simulation: 3 000 tokens take many seconds, and a non-streamed answer writes
    // nothing to the socket before the end, so only the closed connection can tell.
    let c = Cluster::start(spec(&[])).await?;
    let Some(req) = start_raw(
        &c,
        json!({"model": MODEL, "prompt": mock_prompt(5), "max_tokens": 3000}),
    )
    .await
    else {
        panic!("the request never started");
    };
    let hung_up = Instant::now();
    req.abort();
    assert!(
        wait_cancelled_and_free(&c, 1.0, Duration::from_secs(3)).await,
        "the non-streamed request kept running after its client hung up"
    );
    eprintln!(
        "cancelled and freed {:?} after the hang-up",
        hung_up.elapsed()
    );
    Ok(())
}
