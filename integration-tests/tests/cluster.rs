//! Multi-process tests: real etcd + NATS, one frontend process, two mocker worker
//! processes; SIGKILL, client disconnects, exact tokens.

use ferrite_integration_tests::cluster::{
    Cluster, ClusterSpec, MODEL, mock_expected as expected, mock_prompt as prompt, token_ids,
};
use ferrite_integration_tests::sse::SseStream;
use ferrite_integration_tests::{eventually, metric};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_streams_get_exactly_the_mocker_tokens() -> anyhow::Result<()> {
    let c = Cluster::start(ClusterSpec::mocker(2, "50")).await?;
    let tasks: Vec<_> = (0..64).map(|i| c.stream_tokens(i, 24)).collect();
    let results = futures::future::join_all(tasks).await;
    for (i, r) in results.into_iter().enumerate() {
        let (ids, finish) = r?;
        assert_eq!(ids, expected(i, 24), "request {i}");
        assert_eq!(finish, "length", "request {i}");
    }
    // Both workers took part.
    for w in 0..2 {
        let m = c.worker_metrics(w).await?;
        let n = metric(&m, "ferrite_worker_requests_total").unwrap_or(0.0);
        assert!(n >= 8.0, "worker {w} served only {n} requests");
    }
    // The chat endpoint streams the same way, role first, [DONE] last.
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Once upon a time"}],
        "max_tokens": 5, "stream": true, "seed": 1});
    let (events, done) =
        SseStream::open(&c.client, &format!("{}/v1/chat/completions", c.url), &body)
            .await?
            .collect()
            .await?;
    assert!(done);
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(
        events
            .last()
            .map(|e| e["choices"][0]["finish_reason"].clone()),
        Some(json!("length"))
    );
    assert!(
        events
            .iter()
            .all(|e| e["object"] == "chat.completion.chunk")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkilled_worker_leaves_discovery_and_requests_use_the_other() -> anyhow::Result<()> {
    let mut c = Cluster::start(ClusterSpec::mocker(2, "50")).await?;
    let killed_at = Instant::now();
    c.kill_worker(0);
    let gone = eventually(Duration::from_secs(13), || async {
        (c.instances().await.ok()? == 1).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "killed worker still registered after {:?}",
        killed_at.elapsed()
    );
    let took = killed_at.elapsed();
    assert!(
        took <= Duration::from_secs(12),
        "lease expiry took {took:?}"
    );
    for i in 0..16 {
        let (ids, _) = c.stream_tokens(i, 8).await?;
        assert_eq!(ids, expected(i, 8), "request {i} after the kill");
    }
    // With no worker left, the model is known but has no live instance: 503 with a reason.
    c.kill_worker(1);
    let none = eventually(Duration::from_secs(13), || async {
        (c.instances().await.ok()? == 0).then_some(())
    })
    .await;
    assert!(none.is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = c
        .client
        .post(format!("{}/v1/completions", c.url))
        .json(&json!({"model": MODEL, "prompt": "hi", "max_tokens": 2}))
        .send()
        .await?;
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let v: Value = r.json().await?;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no live instance"),
        "{v}"
    );
    drop(c.frontend);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_disconnect_cancels_and_frees_blocks() -> anyhow::Result<()> {
    // Real-time simulation: ~6 ms a decode step, so the request runs for seconds.
    let c = Cluster::start(ClusterSpec::mocker(2, "1")).await?;
    let body = json!({"model": MODEL, "prompt": prompt(3), "max_tokens": 4000, "seed": 3,
        "stream": true, "return_token_ids": true});
    let mut s = SseStream::open(&c.client, &format!("{}/v1/completions", c.url), &body).await?;
    for _ in 0..5 {
        s.next_event().await?;
    }
    let active = |m: &str| metric(m, "ferrite_worker_kv_blocks{state=\"active\"}").unwrap_or(0.0);
    let mut serving = None;
    for w in 0..2 {
        if active(&c.worker_metrics(w).await?) > 0.0 {
            serving = Some(w);
        }
    }
    let w = serving.expect("one worker holds the request's blocks");
    let dropped = Instant::now();
    drop(s);
    let freed = eventually(Duration::from_secs(3), || async {
        let m = c.worker_metrics(w).await.ok()?;
        (active(&m) == 0.0
            && metric(&m, "ferrite_worker_cancellations_total").unwrap_or(0.0) >= 1.0)
            .then_some(())
    })
    .await;
    assert!(
        freed.is_some(),
        "blocks not freed / cancellation not counted after a disconnect"
    );
    eprintln!(
        "blocks freed {:?} after the client disconnected",
        dropped.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_stream_migrates_without_losing_or_repeating_tokens() -> anyhow::Result<()> {
    // Real-time simulation so the request is still streaming when its worker dies.
    let mut c = Cluster::start(ClusterSpec::mocker(2, "1")).await?;
    let n = 400;
    let body = json!({"model": MODEL, "prompt": prompt(9), "max_tokens": n, "seed": 9,
        "stream": true, "return_token_ids": true});
    let mut s = SseStream::open(&c.client, &format!("{}/v1/completions", c.url), &body).await?;
    let mut ids: Vec<u32> = Vec::new();
    let mut finish = None;
    let mut killed = false;
    while let Some(e) = s.next_event().await? {
        assert!(e.get("error").is_none(), "{e}");
        let ch = &e["choices"][0];
        ids.extend(token_ids(ch));
        if let Some(f) = ch["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
        if !killed && ids.len() >= 20 {
            let w = c.serving_worker().await?;
            c.kill_worker(w);
            killed = true;
        }
    }
    assert!(killed, "the stream ended before a worker could be killed");
    assert!(s.done, "no [DONE]");
    assert_eq!(finish.as_deref(), Some("length"));
    assert_eq!(
        ids,
        expected(9, n),
        "migrated stream lost or repeated tokens"
    );
    let m = c.frontend_metrics().await?;
    assert_eq!(
        metric(
            &m,
            "ferrite_frontend_migrations_total{reason=\"stream_lost\"}"
        ),
        Some(1.0),
        "{m}"
    );
    Ok(())
}

/// SIGTERM on the worker serving a stream: it leaves discovery at once and finishes the
/// stream within its drain timeout; the client sees a complete, exact stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_the_worker_and_finishes_its_streams() -> anyhow::Result<()> {
    let c = Cluster::start(ClusterSpec::mocker(2, "1")).await?;
    let n = 300;
    let body = json!({"model": MODEL, "prompt": prompt(11), "max_tokens": n, "seed": 11,
        "stream": true, "return_token_ids": true});
    let mut s = SseStream::open(&c.client, &format!("{}/v1/completions", c.url), &body).await?;
    let mut ids: Vec<u32> = Vec::new();
    let mut termed = None;
    while let Some(e) = s.next_event().await? {
        assert!(e.get("error").is_none(), "{e}");
        ids.extend(token_ids(&e["choices"][0]));
        if termed.is_none() && ids.len() >= 20 {
            let w = c.serving_worker().await?;
            c.term_worker(w);
            termed = Some(Instant::now());
        }
    }
    let t = termed.expect("the stream ended before SIGTERM");
    assert!(s.done);
    assert_eq!(
        ids,
        expected(11, n),
        "drained stream lost or repeated tokens"
    );
    // It left discovery at once (revoked, not expired): well under the 10 s TTL.
    assert_eq!(c.instances().await?, 1);
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "drain took {:?}",
        t.elapsed()
    );
    let m = c.frontend_metrics().await?;
    assert_eq!(
        metric(
            &m,
            "ferrite_frontend_migrations_total{reason=\"stream_lost\"}"
        ),
        None,
        "drain must not need migration"
    );
    Ok(())
}
