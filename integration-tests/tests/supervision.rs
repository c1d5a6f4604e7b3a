//! Engine supervision with real processes (etcd, NATS, `ferrite frontend`, `ferrite worker`):
//! an injected executor panic is recovered by an engine restart with identical greedy
//! output; a crash loop takes the worker out of discovery and its requests migrate.

use ferrite_integration_tests::cluster::{
    Cluster, ClusterSpec, MODEL, free_port, mock_expected, token_ids,
};
use ferrite_integration_tests::sse::SseStream;
use ferrite_integration_tests::{Proc, eventually, metric};
use serde_json::json;
use std::time::Duration;

const PROMPTS: [&str; 8] = [
    "Once upon a time",
    "The little dog",
    "Lily wanted to",
    "One day, a bird",
    "Tom and Sue went",
    "The sun was",
    "There was a big tree",
    "Mom said that",
];
const N: u32 = 48;

/// Streams a greedy completion of `prompt`; its token ids (an error event is an error).
async fn greedy(client: reqwest::Client, url: String, prompt: &str) -> anyhow::Result<Vec<u32>> {
    let body = json!({"model": MODEL, "prompt": prompt, "max_tokens": N, "temperature": 0,
        "ignore_eos": true, "stream": true, "return_token_ids": true});
    let s = SseStream::open(&client, &format!("{url}/v1/completions"), &body).await?;
    let (events, done) = s.collect().await?;
    anyhow::ensure!(done, "stream for {prompt:?} did not end with [DONE]");
    let mut ids = Vec::new();
    for e in events {
        anyhow::ensure!(e.get("error").is_none(), "{prompt:?}: {e}");
        ids.extend(token_ids(&e["choices"][0]));
    }
    Ok(ids)
}

/// All eight prompts at once.
async fn eight(c: &Cluster) -> anyhow::Result<Vec<Vec<u32>>> {
    let tasks: Vec<_> = PROMPTS
        .iter()
        .map(|p| tokio::spawn(greedy(c.client.clone(), c.url.clone(), p)))
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_injected_panic_restarts_the_engine_with_identical_output() -> anyhow::Result<()> {
    let mut spec = ClusterSpec::mocker(1, "1");
    spec.worker_args = [
        "--engine",
        "cpu",
        "--fault-panic-at-step",
        "20",
        "--fault-panic-times",
        "1",
    ]
    .map(String::from)
    .to_vec();
    let c = Cluster::start(spec).await?;
    let m = c.worker_metrics(0).await?;
    assert_eq!(
        metric(&m, "ferrite_worker_engine_restarts_total"),
        Some(0.0),
        "{m}"
    );

    // The first eight streams cross step 20: the engine panics once and is rebuilt.
    let with_crash = eight(&c).await?;
    let m = c.worker_metrics(0).await?;
    assert_eq!(
        metric(&m, "ferrite_worker_engine_restarts_total"),
        Some(1.0)
    );
    // The fault budget is spent: the same eight again are the uninterrupted reference.
    let reference = eight(&c).await?;
    for (i, (got, want)) in with_crash.iter().zip(&reference).enumerate() {
        assert_eq!(got.len(), N as usize, "prompt {i}");
        assert_eq!(got, want, "prompt {i}: output after the restart differs");
    }
    let m = c.worker_metrics(0).await?;
    assert_eq!(
        metric(&m, "ferrite_worker_engine_restarts_total"),
        Some(1.0)
    );
    assert_eq!(
        c.instances().await?,
        1,
        "a restarted worker stays registered"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_loop_takes_the_worker_out_and_its_requests_migrate() -> anyhow::Result<()> {
    let c = Cluster::start(ClusterSpec::mocker(1, "20")).await?;
    // A second worker whose every engine panics at its third step.
    let port = free_port().to_string();
    let (etcd, nats) = (c.etcd.url(), c.nats.url());
    let (mut faulty, _) = Proc::start(
        "faulty",
        &[
            "worker",
            "--etcd",
            &etcd,
            "--nats",
            &nats,
            "--metrics-port",
            &port,
            "--engine",
            "mocker",
            "--speedup",
            "20",
            "--fault-panic-at-step",
            "3",
            "--max-engine-restarts",
            "2",
        ],
        "serving",
        Duration::from_secs(60),
    )?;
    c.wait_instances(2, Duration::from_secs(10)).await?;

    let max_tokens = 24;
    let tasks: Vec<_> = (0..8).map(|i| (i, c.spawn_stream(i, max_tokens))).collect();
    let mut failures = Vec::new();
    for (i, t) in tasks {
        match t.await? {
            Ok((ids, finish)) => {
                assert_eq!(ids, mock_expected(i, max_tokens), "request {i}");
                assert_eq!(finish, "length");
            }
            Err(e) => failures.push(format!("request {i}: {e:#}")),
        }
    }
    assert!(failures.is_empty(), "requests failed: {failures:?}");

    // The faulty worker left discovery, and says why; its process is still up.
    let gone = eventually(Duration::from_secs(10), || async {
        (c.instances().await.ok()? == 1).then_some(())
    })
    .await;
    assert!(gone.is_some(), "the faulty worker is still registered");
    assert!(
        faulty.child.try_wait()?.is_none(),
        "the faulty worker process exited"
    );
    let m = c
        .client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    assert_eq!(
        metric(&m, "ferrite_worker_engine_restarts_total"),
        Some(2.0),
        "{m}"
    );
    let fm = c.frontend_metrics().await?;
    let migrated: f64 = fm
        .lines()
        .filter(|l| l.starts_with("ferrite_frontend_migrations_total"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert!(migrated >= 1.0, "no migration counted:\n{fm}");
    faulty.sigkill();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_with_two_dp_ranks_registers_once_and_serves_exactly() -> anyhow::Result<()> {
    let mut spec = ClusterSpec::mocker(1, "20");
    spec.worker_args
        .extend(["--dp-size", "2"].map(String::from));
    let c = Cluster::start(spec).await?;
    let d = ferrite_runtime::EtcdDiscovery::connect(&c.etcd.url(), Duration::from_secs(10)).await?;
    let recs = ferrite_runtime::Discovery::get_prefix(
        &d,
        &ferrite_protocol::names::instances_prefix("ferrite"),
    )
    .await?;
    let _ = ferrite_runtime::Discovery::shutdown(&d).await;
    assert_eq!(recs.len(), 1);
    let rec: serde_json::Value = serde_json::from_slice(&recs[0].1)?;
    assert_eq!(rec["dp_size"], 2);

    let max_tokens = 12;
    let tasks: Vec<_> = (0..8).map(|i| (i, c.spawn_stream(i, max_tokens))).collect();
    for (i, t) in tasks {
        let (ids, finish) = t.await??;
        assert_eq!(ids, mock_expected(i, max_tokens), "request {i}");
        assert_eq!(finish, "length");
    }
    // Each rank has its own supervisor and metrics.
    let m = c.worker_metrics(0).await?;
    for r in 0..2 {
        let name = format!("ferrite_worker_engine_restarts_total{{dp_rank=\"{r}\"}}");
        assert_eq!(metric(&m, &name), Some(0.0), "{name} in\n{m}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_waiting_queue_answers_429_naming_the_limit() -> anyhow::Result<()> {
    let mut spec = ClusterSpec::mocker(1, "1");
    spec.worker_args
        .extend(["--max-num-seqs", "1", "--max-waiting", "1"].map(String::from));
    let c = Cluster::start(spec).await?;
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let (client, url) = (c.client.clone(), c.url.clone());
            tokio::spawn(async move {
                let body = json!({"model": MODEL, "prompt": [300 + i, 301, 302], "max_tokens": 40});
                let r = client
                    .post(format!("{url}/v1/completions"))
                    .json(&body)
                    .send()
                    .await?;
                let status = r.status().as_u16();
                let v: serde_json::Value = r.json().await?;
                anyhow::Ok((status, v))
            })
        })
        .collect();
    let (mut ok, mut overloaded) = (0, 0);
    for t in tasks {
        let (status, v) = t.await??;
        match status {
            200 => ok += 1,
            429 => {
                overloaded += 1;
                let msg = v["error"]["message"].as_str().unwrap_or_default();
                assert!(
                    msg.contains("its limit is 1") && msg.contains("--max-waiting"),
                    "{v}"
                );
            }
            other => panic!("unexpected status {other}: {v}"),
        }
    }
    // One runs, one waits, the other two are refused.
    assert_eq!((ok, overloaded), (2, 2));
    Ok(())
}
