//! KV-aware routing with real processes: requests sharing a prefix land on the worker
//! that caches it; a frontend started later learns the workers' caches from dumps; a
//! request can be pinned to an instance.

use ferrite_integration_tests::cluster::{Cluster, ClusterSpec, MODEL};
use ferrite_integration_tests::{Proc, eventually, metric, url_in};
use serde_json::{Value, json};
use std::time::Duration;

fn kv_spec(workers: usize) -> ClusterSpec {
    let mut s = ClusterSpec::mocker(workers, "100");
    s.frontend_args = vec!["--router".into(), "kv".into()];
    s
}

/// Group `g`'s prompt: a 256-token shared prefix and a 16-token suffix unique to `k`.
fn grouped_prompt(g: u32, k: u32) -> Vec<u32> {
    let mut p: Vec<u32> = (0..256).map(|i| 259 + (g * 31 + i * 7) % 253).collect();
    p.extend((0..16).map(|i| 259 + (g * 13 + k * 29 + i) % 253));
    p
}

async fn complete(c: &Cluster, prompt: &[u32]) -> anyhow::Result<Value> {
    let r = c
        .client
        .post(format!("{}/v1/completions", c.url))
        .json(&json!({"model": MODEL, "prompt": prompt, "max_tokens": 4}))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 200, "HTTP {}", r.status());
    Ok(r.json().await?)
}

fn counter(m: &str, name: &str) -> f64 {
    metric(m, name).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kv_router_sends_shared_prefixes_to_the_worker_that_caches_them() -> anyhow::Result<()> {
    let c = Cluster::start(kv_spec(3)).await?;
    let indexed = || async {
        let m = c.frontend_metrics().await.ok()?;
        Some(counter(&m, "ferrite_router_indexed_blocks"))
    };
    for g in 0..6 {
        let before = indexed().await.unwrap_or(0.0);
        complete(&c, &grouped_prompt(g, 0)).await?;
        // Wait for the worker's KV events (published every 200 ms) to reach the router:
        // the prompt's 17 blocks show in the router's index.
        let seen = eventually(Duration::from_secs(10), || async {
            indexed().await.filter(|n| *n >= before + 16.0)
        })
        .await;
        assert!(
            seen.is_some(),
            "group {g}: the router never indexed the prompt's blocks"
        );
        for k in 1..4 {
            complete(&c, &grouped_prompt(g, k)).await?;
        }
    }
    let m = c.frontend_metrics().await?;
    let prompt_blocks = counter(&m, "ferrite_router_prompt_blocks_total");
    let overlap = counter(&m, "ferrite_router_overlap_blocks_total");
    // 24 requests of 17 blocks; 18 of them can reuse 16: ideal 288 / 408 = 0.71.
    assert_eq!(prompt_blocks, 24.0 * 17.0);
    assert!(
        overlap >= 0.9 * 288.0,
        "predicted overlap {overlap} of {prompt_blocks} blocks"
    );
    // The workers really hit their caches.
    let mut hits = 0.0;
    for w in 0..3 {
        hits += counter(
            &c.worker_metrics(w).await?,
            "ferrite_worker_prefix_cache_hits_total",
        );
    }
    assert!(hits >= 18.0, "only {hits} prefix-cache hits on the workers");

    // A second frontend started now learns every worker's cache from their dumps.
    let (etcd, nats) = (c.etcd.url(), c.nats.url());
    let (fe2, line) = Proc::start(
        "frontend2",
        &[
            "frontend", "--etcd", &etcd, "--nats", &nats, "--port", "0", "--router", "kv",
        ],
        "frontend on",
        Duration::from_secs(30),
    )?;
    let url2 = url_in(&line)?;
    let indexed = eventually(Duration::from_secs(8), || async {
        let m = c
            .client
            .get(format!("{url2}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let n = counter(&m, "ferrite_router_indexed_blocks");
        (n >= 6.0 * 16.0).then_some(n)
    })
    .await;
    assert!(
        indexed.is_some(),
        "the new frontend did not index the workers' blocks from their dumps"
    );
    drop(fe2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_can_be_pinned_to_an_instance() -> anyhow::Result<()> {
    let c = Cluster::start(kv_spec(2)).await?;
    let url = format!("{}/v1/completions", c.url);
    let body = json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 2});
    for w in 0..2 {
        let before = counter(&c.worker_metrics(w).await?, "ferrite_worker_requests_total");
        for _ in 0..3 {
            let r = c
                .client
                .post(&url)
                .header("x-worker-instance-id", &c.workers[w].instance_id)
                .json(&body)
                .send()
                .await?;
            assert_eq!(r.status(), 200);
        }
        let after = counter(&c.worker_metrics(w).await?, "ferrite_worker_requests_total");
        assert_eq!(
            after - before,
            3.0,
            "worker {w} did not get its pinned requests"
        );
    }
    let bad = c
        .client
        .post(&url)
        .header("x-worker-instance-id", "not-hex")
        .json(&body)
        .send()
        .await?;
    assert_eq!(bad.status(), 400);
    let gone = c
        .client
        .post(&url)
        .header("x-worker-instance-id", "123abc")
        .json(&body)
        .send()
        .await?;
    let status = gone.status().as_u16();
    let v: Value = gone.json().await?;
    assert_eq!(status, 503, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("123abc"),
        "{v}"
    );
    Ok(())
}

/// `n` choices of one prompt share its KV blocks: the siblings start once the first
/// choice's prefill is cached and go to the same worker, so its prompt is computed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn n_choices_share_the_prompt_blocks() -> anyhow::Result<()> {
    // Round-robin would spread four independent requests over both workers.
    let c = Cluster::start(ClusterSpec::mocker(2, "100")).await?;
    let prompt = grouped_prompt(9, 0);
    let r = c
        .client
        .post(format!("{}/v1/completions", c.url))
        .json(
            &json!({"model": MODEL, "prompt": prompt, "max_tokens": 8, "n": 4,
            "temperature": 1.0, "seed": 5}),
        )
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await?;
    assert_eq!(v["choices"].as_array().map(Vec::len), Some(4), "{v}");
    let mut hits = 0.0;
    let mut served = 0;
    for w in 0..2 {
        let m = c.worker_metrics(w).await?;
        hits += counter(&m, "ferrite_worker_prefix_cache_hits_total");
        if counter(&m, "ferrite_worker_requests_total") > 0.0 {
            served += 1;
        }
    }
    assert_eq!(served, 1, "the choices were spread over workers");
    assert!(
        hits >= 3.0,
        "siblings recomputed the prompt ({hits} prefix hits)"
    );
    Ok(())
}
