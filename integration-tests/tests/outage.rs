//! Infrastructure outages with real processes: etcd stopped for longer than a lease TTL,
//! NATS killed and restarted under live streams.

use ferrite_integration_tests::cluster::{Cluster, ClusterSpec, MODEL, mock_expected};
use ferrite_integration_tests::eventually;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A short non-streamed request; Ok(status) or a transport error.
async fn short_request(c: &Cluster, i: usize) -> anyhow::Result<(u16, Value)> {
    let r = c
        .client
        .post(format!("{}/v1/completions", c.url))
        .json(&json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 4, "seed": i}))
        .timeout(Duration::from_secs(30))
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}

fn alive(c: &mut Cluster) -> bool {
    let workers_alive = c.workers.iter_mut().all(|w| {
        w.proc
            .as_mut()
            .is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
    });
    workers_alive && matches!(c.frontend.child.try_wait(), Ok(None))
}

/// etcd down for 12 s (longer than the 10 s lease TTL): live streams finish exactly, new
/// requests are routed to the last known instances, nothing crashes, and the
/// registrations are back once etcd is.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_outage_keeps_serving_and_registrations_come_back() -> anyhow::Result<()> {
    let mut c = Cluster::start(ClusterSpec::mocker(2, "1")).await?;
    // ~6 ms a simulated decode step: 2 000 tokens stream for ~12 s.
    let n = 2000;
    let streams: Vec<_> = (0..4).map(|i| c.spawn_stream(i, n)).collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.etcd.kill();
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..4 {
        let (status, body) = short_request(&c, 100 + i).await?;
        assert_eq!(status, 200, "request during the etcd outage: {body}");
    }
    for (i, s) in streams.into_iter().enumerate() {
        let (ids, finish) = s.await??;
        assert_eq!(finish, "length", "stream {i}");
        assert!(
            ids == mock_expected(i, n),
            "stream {i} lost or changed tokens"
        );
    }
    let waited = down.elapsed();
    if waited < Duration::from_secs(12) {
        tokio::time::sleep(Duration::from_secs(12) - waited).await;
    }
    for i in 0..2 {
        let (status, body) = short_request(&c, 150 + i).await?;
        assert_eq!(status, 200, "request 12 s into the etcd outage: {body}");
    }
    assert!(alive(&mut c), "a process died during the etcd outage");
    c.etcd.restart()?;
    c.wait_instances(2, Duration::from_secs(20)).await?;
    for i in 0..4 {
        let (status, body) = short_request(&c, 200 + i).await?;
        assert_eq!(status, 200, "after etcd came back: {body}");
    }
    assert!(alive(&mut c), "a process died after etcd came back");
    Ok(())
}

/// NATS killed under live streams and restarted 3 s later: every stream either completes
/// with exactly the right tokens (migrated) or ends with an explicit error — none hangs;
/// new requests succeed once NATS is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_restart_fails_over_or_errors_clearly_and_recovers() -> anyhow::Result<()> {
    let mut c = Cluster::start(ClusterSpec::mocker(2, "1")).await?;
    let n = 1200;
    let streams: Vec<_> = (0..6).map(|i| c.spawn_stream(i, n)).collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.nats.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.nats.restart()?;
    let (mut exact, mut errored) = (0, 0);
    for (i, s) in streams.into_iter().enumerate() {
        match tokio::time::timeout(Duration::from_secs(60), s).await {
            Err(_) => panic!("stream {i} hung for 60 s after the NATS outage"),
            Ok(r) => match r? {
                Ok((ids, finish)) => {
                    assert_eq!(finish, "length", "stream {i}");
                    assert!(
                        ids == mock_expected(i, n),
                        "stream {i} completed with wrong tokens"
                    );
                    exact += 1;
                }
                Err(e) => {
                    eprintln!("stream {i} ended with an error: {e:#}");
                    errored += 1;
                }
            },
        }
    }
    eprintln!("NATS outage: {exact} streams completed exactly, {errored} ended with an error");
    let back = eventually(Duration::from_secs(20), || async {
        matches!(short_request(&c, 1).await, Ok((200, _))).then_some(())
    })
    .await;
    assert!(
        back.is_some(),
        "requests still fail 20 s after NATS came back"
    );
    for i in 0..8 {
        let (ids, _) = c.stream_tokens(300 + i, 16).await?;
        assert_eq!(
            ids,
            mock_expected(300 + i, 16),
            "request {i} after NATS came back"
        );
    }
    assert!(alive(&mut c), "a process died during the NATS outage");
    Ok(())
}
