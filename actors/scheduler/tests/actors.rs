//! The actor shells in an actix System with the fake `TestExecutor`: completion,
//! cancellation (message and dropped client), and a panicking executor step.
#![allow(clippy::unwrap_used)]

mod common;

use actix::Actor;
use common::*;
use ferrite_protocol::{EngineOutput, ErrorInfo, ErrorKind, FinishReason};
use ferrite_scheduler::actor::{
    Cancel, EngineActor, Enqueue, GetStats, KvSnapshot, SchedulerActor, TakeKvEvents,
};
use ferrite_scheduler::{Scheduler, SchedulerConfig};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::time::timeout;

async fn next(
    rx: &mut UnboundedReceiver<Result<EngineOutput, ErrorInfo>>,
) -> Option<Result<EngineOutput, ErrorInfo>> {
    timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("timed out waiting for a chunk")
}

#[actix_rt::test]
async fn actors_complete_cancel_and_survive_a_panicking_step() {
    let ex = TestExecutor::new(32, 4, 128);
    let log = ex.log.clone();
    log.panic_on_call.store(3, Ordering::SeqCst);
    let engine = EngineActor::start(Box::new(ex));
    let sched = Scheduler::new(SchedulerConfig::new(4, 32, 128)).unwrap();
    let addr = SchedulerActor::new(sched, engine.recipient()).start();

    // invalid request: refused with a reason
    let (tx, _rx) = unbounded_channel();
    let err = addr
        .send(Enqueue {
            req: request(vec![], 3),
            tx,
        })
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidRequest);

    let normal: Vec<_> = (0..3)
        .map(|i| request((i * 10..i * 10 + 9).collect(), 6))
        .collect();
    let mut rxs = Vec::new();
    for r in &normal {
        let (tx, rx) = unbounded_channel();
        addr.send(Enqueue { req: r.clone(), tx })
            .await
            .unwrap()
            .unwrap();
        rxs.push(rx);
    }
    let long = request((200..210).collect(), 100);
    let (tx, mut long_rx) = unbounded_channel();
    addr.send(Enqueue {
        req: long.clone(),
        tx,
    })
    .await
    .unwrap()
    .unwrap();
    let gone = request((300..310).collect(), 100);
    let (tx, gone_rx) = unbounded_channel();
    addr.send(Enqueue {
        req: gone.clone(),
        tx,
    })
    .await
    .unwrap()
    .unwrap();
    drop(gone_rx); // the client went away

    // the long request streams, then is cancelled by message
    let first = next(&mut long_rx).await.unwrap().unwrap();
    assert_eq!(first.cached_tokens, Some(0));
    assert!(
        addr.send(Cancel {
            request_id: long.request_id
        })
        .await
        .unwrap()
    );
    let mut last = None;
    while let Some(chunk) = next(&mut long_rx).await {
        last = Some(chunk.unwrap());
    }
    assert_eq!(
        last.and_then(|c| c.finish_reason),
        Some(FinishReason::Cancelled)
    );
    assert!(
        !addr
            .send(Cancel {
                request_id: long.request_id
            })
            .await
            .unwrap()
    );

    // the others complete exactly despite the panicking step
    for (r, rx) in normal.iter().zip(rxs.iter_mut()) {
        let mut c = Collected::default();
        while let Some(chunk) = next(rx).await {
            c.push(chunk.unwrap());
        }
        let (want, why) = reference_output(r, 128);
        assert_eq!(c.tokens, want);
        assert_eq!(c.finish, Some(why));
    }
    let mut stats = addr.send(GetStats).await.unwrap();
    for _ in 0..100 {
        if stats.running + stats.waiting == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        stats = addr.send(GetStats).await.unwrap();
    }
    assert_eq!(
        (stats.running, stats.waiting, stats.active_blocks),
        (0, 0, 0)
    );
    // the panic really happened (call 3 never completed) and was recovered from
    assert!(log.steps.load(Ordering::SeqCst) >= 6);
    // the dropped client's request was cancelled, not run for its 100 tokens
    let computed = log.computed_tokens.load(Ordering::SeqCst);
    assert!(computed < 150, "computed {computed} tokens");
    assert_eq!(log.panic_on_call.load(Ordering::SeqCst), 3);
    let events = addr.send(TakeKvEvents).await.unwrap();
    assert!(!events.is_empty());
    assert!(
        events
            .windows(2)
            .all(|w| w[1].event_id == w[0].event_id + 1)
    );
    assert!(!addr.send(KvSnapshot).await.unwrap().is_empty());
}

#[actix_rt::test]
async fn engine_errors_past_the_limit_fail_requests_as_unavailable() {
    let ex = TestExecutor::new(8, 4, 32);
    ex.log.panic_on_call.store(1, Ordering::SeqCst);
    ex.log.fail_on_call.store(2, Ordering::SeqCst);
    let engine = EngineActor::start(Box::new(ex));
    let sched = Scheduler::new(SchedulerConfig::new(4, 8, 32)).unwrap();
    let addr = SchedulerActor::new(sched, engine.recipient())
        .with_max_consecutive_failures(2)
        .start();
    let (tx, mut rx) = unbounded_channel();
    addr.send(Enqueue {
        req: request((0..5).collect(), 3),
        tx,
    })
    .await
    .unwrap()
    .unwrap();
    let err = next(&mut rx).await.unwrap().unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert!(err.message.contains("2 steps in a row"), "{}", err.message);
    assert!(next(&mut rx).await.is_none());
    let stats = addr.send(GetStats).await.unwrap();
    assert_eq!(
        (stats.running, stats.waiting, stats.active_blocks),
        (0, 0, 0)
    );
}
