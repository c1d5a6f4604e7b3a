//! Rough numbers for the response-stream plane over a real nats-server on loopback.
//! Ignored by default: `cargo test -p ferrite-runtime --test stream_bench -- --ignored --nocapture`.
#![allow(clippy::unwrap_used)] // tests may unwrap

use ferrite_runtime::testing::NatsServer;
use ferrite_runtime::{Bus, NatsBus, StreamOptions, request_stream, serve_requests};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn nats_stream_latency_and_throughput() {
    let server = NatsServer::start().unwrap();
    let client: Arc<dyn Bus> = Arc::new(NatsBus::connect(&server.url()).await.unwrap());
    let worker: Arc<dyn Bus> = Arc::new(NatsBus::connect(&server.url()).await.unwrap());
    let mut reqs = serve_requests(&worker, "bench.gen").await.unwrap();
    tokio::spawn(async move {
        while let Some(req) = reqs.next().await {
            tokio::spawn(async move {
                let n: u32 = req.decode().unwrap();
                let mut r = req.responder;
                for i in 0..n {
                    r.send(&i).await.unwrap();
                }
                r.end().await.unwrap();
            });
        }
    });

    let rounds = 500;
    let t = Instant::now();
    for _ in 0..rounds {
        let s = request_stream::<_, u32>(&client, "bench.gen", &1u32, StreamOptions::default())
            .await
            .unwrap();
        assert_eq!(s.collect::<Vec<_>>().await.len(), 1);
    }
    let per = t.elapsed() / rounds;
    eprintln!("request + 1 payload + end, sequential: {per:?} per request");

    let n = 50_000u32;
    let t = Instant::now();
    let s = request_stream::<_, u32>(&client, "bench.gen", &n, StreamOptions::default())
        .await
        .unwrap();
    let got: Vec<_> = s.collect().await;
    assert_eq!(got.len(), n as usize);
    assert!(got.iter().enumerate().all(|(i, r)| *r == Ok(i as u32)));
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "one stream of {n} payloads: {:.0} chunks/s",
        f64::from(n) / secs
    );
}
