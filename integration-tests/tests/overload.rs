//! Overload is refused with 429 and `Retry-After`, never queued without bound: the
//! frontend's in-flight limit counts streams until they end.

use ferrite_integration_tests::cluster::{Cluster, ClusterSpec, MODEL, mock_prompt};
use ferrite_integration_tests::sse::SseStream;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frontend_inflight_limit_answers_429_with_retry_after() -> anyhow::Result<()> {
    let mut spec = ClusterSpec::mocker(1, "1");
    spec.frontend_args = vec!["--max-inflight".into(), "4".into()];
    let c = Cluster::start(spec).await?;
    let url = format!("{}/v1/completions", c.url);
    let mut streams = Vec::new();
    for i in 0..4 {
        let body =
            json!({"model": MODEL, "prompt": mock_prompt(i), "max_tokens": 3000, "stream": true});
        let mut s = SseStream::open(&c.client, &url, &body).await?;
        s.next_event().await?;
        streams.push(s);
    }
    // Four streams are running: the fifth request is refused at once.
    let r = c
        .client
        .post(&url)
        .json(&json!({"model": MODEL, "prompt": "hi", "max_tokens": 2}))
        .send()
        .await?;
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some(), "no Retry-After");
    let v: Value = r.json().await?;
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("limit 4"), "{v}");
    // Ending the streams frees their slots.
    drop(streams);
    let ok = ferrite_integration_tests::eventually(std::time::Duration::from_secs(5), || async {
        let r = c
            .client
            .post(&url)
            .json(&json!({"model": MODEL, "prompt": "hi", "max_tokens": 2}))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    assert!(
        ok.is_some(),
        "slots were not released after the streams ended"
    );
    Ok(())
}
