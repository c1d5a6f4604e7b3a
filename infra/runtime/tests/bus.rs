//! Bus and response-stream conformance: one suite, run against `MemBus` and `NatsBus`
//! (real nats-server from the harness).
#![allow(clippy::unwrap_used)] // tests may unwrap

use bytes::Bytes;
use ferrite_protocol::{ErrorInfo, ErrorKind};
use ferrite_runtime::testing::NatsServer;
use ferrite_runtime::{
    Bus, MemBus, NatsBus, RuntimeError, StreamError, StreamOptions, request_stream, serve_requests,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(5);

#[derive(Serialize, Deserialize)]
struct GenReq {
    n: u32,
    /// What the server does after `n` payloads.
    then: Then,
    gap_ms: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy)]
enum Then {
    End,
    Error,
    Drop,
}

/// Serve `subject` until the test ends: answer each request with `n` payloads
/// (0..n, `gap_ms` apart), then end / error / drop the responder as asked.
async fn spawn_generator(bus: &Arc<dyn Bus>, subject: &str) {
    let mut reqs = serve_requests(bus, subject).await.unwrap();
    tokio::spawn(async move {
        while let Some(req) = reqs.next().await {
            tokio::spawn(async move {
                let r: GenReq = req.decode().unwrap();
                let mut resp = req.responder;
                for i in 0..r.n {
                    if r.gap_ms > 0 && i > 0 {
                        tokio::time::sleep(Duration::from_millis(r.gap_ms)).await;
                    }
                    resp.send(&i).await.unwrap();
                }
                match r.then {
                    Then::End => resp.end().await.unwrap(),
                    Then::Error => resp
                        .error(ErrorInfo::new(ErrorKind::Overloaded, "queue full"))
                        .await
                        .unwrap(),
                    Then::Drop => drop(resp),
                }
            });
        }
    });
}

async fn recv(s: &mut futures::stream::BoxStream<'static, ferrite_runtime::BusMessage>) -> String {
    let m = tokio::time::timeout(T, s.next()).await.unwrap().unwrap();
    format!("{}={}", m.subject, String::from_utf8_lossy(&m.payload))
}

/// Publish/subscribe with exact and wildcard subjects; `b` is a second client.
async fn suite_pubsub(a: Arc<dyn Bus>, b: Arc<dyn Bus>) {
    let mut exact = b.subscribe("t.a.b").await.unwrap();
    let mut star = b.subscribe("t.*.b").await.unwrap();
    let mut tail = b.subscribe("t.>").await.unwrap();
    a.publish("t.a.b", Bytes::from_static(b"1")).await.unwrap();
    a.publish("t.a.c.d", Bytes::from_static(b"2"))
        .await
        .unwrap();
    a.publish("t.x.b", Bytes::from_static(b"3")).await.unwrap();
    a.publish("u.a.b", Bytes::from_static(b"4")).await.unwrap();
    assert_eq!(recv(&mut exact).await, "t.a.b=1");
    assert_eq!(recv(&mut star).await, "t.a.b=1");
    assert_eq!(recv(&mut star).await, "t.x.b=3");
    assert_eq!(recv(&mut tail).await, "t.a.b=1");
    assert_eq!(recv(&mut tail).await, "t.a.c.d=2");
    assert_eq!(recv(&mut tail).await, "t.x.b=3");
    // Nothing else arrives (u.a.b matches none; t.a.c.d not the exact one).
    a.publish("t.a.b", Bytes::from_static(b"5")).await.unwrap();
    assert_eq!(recv(&mut exact).await, "t.a.b=5");
    assert!(a.publish("bad subject", Bytes::new()).await.is_err());
}

/// Request/reply, no responders, timeout.
async fn suite_request_reply(a: Arc<dyn Bus>, b: Arc<dyn Bus>) {
    let mut sub = b.subscribe("t.echo").await.unwrap();
    let server = b.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let reply = m.reply.unwrap();
            let up = String::from_utf8_lossy(&m.payload).to_uppercase();
            server.publish(&reply, Bytes::from(up)).await.unwrap();
        }
    });
    let r = a
        .request("t.echo", Bytes::from_static(b"hi"), T)
        .await
        .unwrap();
    assert_eq!(&r[..], b"HI");

    let started = Instant::now();
    let err = a.request("t.nobody", Bytes::new(), T).await.unwrap_err();
    assert!(matches!(err, RuntimeError::NoResponders), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(1));

    let _silent = b.subscribe("t.silent").await.unwrap();
    let started = Instant::now();
    let err = a
        .request("t.silent", Bytes::new(), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Timeout), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(a.new_inbox() != a.new_inbox());
}

fn opts(idle_ms: u64) -> StreamOptions {
    StreamOptions {
        idle_timeout: Duration::from_millis(idle_ms),
        ..Default::default()
    }
}

/// The response-stream plane: happy path, remote error, dead worker, slow stream.
async fn suite_streams(client: Arc<dyn Bus>, server: Arc<dyn Bus>) {
    spawn_generator(&server, "t.gen").await;

    // Many payloads, in order, then End.
    let req = GenReq {
        n: 500,
        then: Then::End,
        gap_ms: 0,
    };
    let s = request_stream::<_, u32>(&client, "t.gen", &req, opts(5000))
        .await
        .unwrap();
    let got: Vec<_> = s.collect().await;
    let want: Vec<std::result::Result<u32, StreamError>> = (0..500).map(Ok).collect();
    assert_eq!(got, want);

    // Remote error ends the stream.
    let req = GenReq {
        n: 2,
        then: Then::Error,
        gap_ms: 0,
    };
    let s = request_stream::<_, u32>(&client, "t.gen", &req, opts(5000))
        .await
        .unwrap();
    let got: Vec<_> = s.collect().await;
    assert_eq!(
        got,
        vec![
            Ok(0),
            Ok(1),
            Err(StreamError::Remote(ErrorInfo::new(
                ErrorKind::Overloaded,
                "queue full"
            )))
        ]
    );

    // A responder dropped without End looks like a dead worker: Lost after the idle timeout.
    let req = GenReq {
        n: 1,
        then: Then::Drop,
        gap_ms: 0,
    };
    let started = Instant::now();
    let s = request_stream::<_, u32>(&client, "t.gen", &req, opts(800))
        .await
        .unwrap();
    let got: Vec<_> = s.collect().await;
    assert_eq!(got, vec![Ok(0), Err(StreamError::Lost)]);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(4),
        "{took:?}"
    );

    // Payloads 2.5 s apart, idle timeout 1.5 s: heartbeats keep the stream alive.
    let req = GenReq {
        n: 2,
        then: Then::End,
        gap_ms: 2500,
    };
    let started = Instant::now();
    let s = request_stream::<_, u32>(&client, "t.gen", &req, opts(1500))
        .await
        .unwrap();
    let got: Vec<_> = s.collect().await;
    assert_eq!(got, vec![Ok(0), Ok(1)]);
    assert!(started.elapsed() >= Duration::from_millis(2400));

    // Nobody serves the subject: fails at once.
    let started = Instant::now();
    let req = GenReq {
        n: 1,
        then: Then::End,
        gap_ms: 0,
    };
    let err = request_stream::<_, u32>(&client, "t.nobody", &req, opts(5000))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, RuntimeError::NoResponders), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(1));

    // A payload of the wrong type is a decode error, not a panic.
    let req = GenReq {
        n: 1,
        then: Then::End,
        gap_ms: 0,
    };
    let mut s = request_stream::<_, String>(&client, "t.gen", &req, opts(5000))
        .await
        .unwrap();
    assert!(matches!(s.next().await, Some(Err(StreamError::Decode(_)))));
    assert!(s.next().await.is_none());
}

fn mem_pair() -> (Arc<dyn Bus>, Arc<dyn Bus>) {
    let a = MemBus::new();
    let b = a.clone();
    (Arc::new(a), Arc::new(b))
}

async fn nats_pair(server: &NatsServer) -> (Arc<dyn Bus>, Arc<dyn Bus>) {
    let a = NatsBus::connect(&server.url()).await.unwrap();
    let b = NatsBus::connect(&server.url()).await.unwrap();
    (Arc::new(a), Arc::new(b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_pubsub() {
    let (a, b) = mem_pair();
    suite_pubsub(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_request_reply() {
    let (a, b) = mem_pair();
    suite_request_reply(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_streams() {
    let (a, b) = mem_pair();
    suite_streams(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_pubsub() {
    let server = NatsServer::start().unwrap();
    let (a, b) = nats_pair(&server).await;
    suite_pubsub(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_request_reply() {
    let server = NatsServer::start().unwrap();
    let (a, b) = nats_pair(&server).await;
    suite_request_reply(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_streams() {
    let server = NatsServer::start().unwrap();
    let (a, b) = nats_pair(&server).await;
    suite_streams(a, b).await;
}

/// The bus reconnects after nats-server is killed and restarted on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_reconnects_after_restart() {
    let mut server = NatsServer::start().unwrap();
    let (a, b) = nats_pair(&server).await;
    let mut sub = b.subscribe("t.re").await.unwrap();
    server.kill();
    server.restart().unwrap();
    // Publish until the resubscribed subscriber sees one (reconnect takes a moment).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = a.publish("t.re", Bytes::from_static(b"x")).await;
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            assert_eq!(&m.payload[..], b"x");
            break;
        }
        assert!(Instant::now() < deadline, "no message after restart");
    }
}
