//! The engine supervisor with the fake `TestExecutor` wrapped in a `FaultPlan`: a panic
//! restarts the engine and the outputs are exactly those of an uninterrupted run; a crash
//! loop fails every request with `WorkerLost`. Also the KV dump and the overload message.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use ferrite_engine::{Executor, ExecutorFactory, FaultPlan};
use ferrite_protocol::{
    DpRank, EngineOutput, ErrorInfo, ErrorKind, KvEventData, PreprocessedRequest,
};
use ferrite_scheduler::{
    EngineSupervisor, Enqueue, GetRestarts, GetStats, RestartPolicy, Scheduler, SchedulerConfig,
    SupervisedRank, SupervisorConfig, TakeKvEvents,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::time::timeout;

const BLOCKS: u32 = 64;
const BS: u32 = 4;
const CTX: u32 = 256;

fn factory(plan: FaultPlan) -> ExecutorFactory {
    Arc::new(move |_rank: DpRank| Ok(plan.wrap(Box::new(TestExecutor::new(BLOCKS, BS, CTX)))))
}

fn start(plan: FaultPlan, policy: RestartPolicy) -> SupervisedRank {
    let f = factory(plan);
    let first = f(DpRank(0)).unwrap();
    let sched = Scheduler::new(SchedulerConfig::new(BS, BLOCKS, CTX as usize)).unwrap();
    let mut cfg = SupervisorConfig::new(DpRank(0));
    cfg.policy = policy;
    EngineSupervisor::start(cfg, first, f, sched)
}

type Rx = UnboundedReceiver<Result<EngineOutput, ErrorInfo>>;

async fn enqueue_all(rank: &SupervisedRank, reqs: &[PreprocessedRequest]) -> Vec<Rx> {
    let mut rxs = Vec::new();
    for r in reqs {
        let (tx, rx) = unbounded_channel();
        rank.scheduler
            .send(Enqueue { req: r.clone(), tx })
            .await
            .unwrap()
            .unwrap();
        rxs.push(rx);
    }
    rxs
}

/// Every chunk of a stream until it closes; `Err` if it ended with an error.
async fn collect(rx: &mut Rx) -> Result<Collected, ErrorInfo> {
    let mut c = Collected::default();
    loop {
        match timeout(Duration::from_secs(10), rx.recv()).await.unwrap() {
            Some(Ok(chunk)) => c.push(chunk),
            Some(Err(e)) => return Err(e),
            None => return Ok(c),
        }
    }
}

fn requests() -> Vec<PreprocessedRequest> {
    (0..4)
        .map(|i| request((i * 17..i * 17 + 9 + i).collect(), 12 + i))
        .collect()
}

#[actix_rt::test]
async fn a_panicking_step_restarts_the_engine_and_outputs_are_unchanged() {
    let plan = FaultPlan::new(5, Some(1));
    let rank = start(plan.clone(), RestartPolicy::default());
    let reqs = requests();
    let mut rxs = enqueue_all(&rank, &reqs).await;
    for (r, rx) in reqs.iter().zip(rxs.iter_mut()) {
        let c = collect(rx).await.expect("no client-visible error");
        let (want, why) = reference_output(r, CTX as usize);
        assert_eq!(c.tokens, want, "request {}", r.request_id);
        assert_eq!(c.finish, Some(why));
    }
    assert_eq!(plan.injected(), 1, "the fault fired once");
    assert_eq!(rank.supervisor.send(GetRestarts).await.unwrap(), 1);
    let stats = rank.scheduler.send(GetStats).await.unwrap();
    assert_eq!(
        (stats.running, stats.waiting, stats.active_blocks),
        (0, 0, 0),
        "no blocks leaked"
    );
    // The restart dropped the prefix cache (Cleared), event ids stay contiguous from 1.
    let events = rank.scheduler.send(TakeKvEvents).await.unwrap();
    assert_eq!(events.first().map(|e| e.event_id), Some(1));
    assert!(
        events
            .windows(2)
            .all(|w| w[1].event_id == w[0].event_id + 1)
    );
    assert!(events.iter().any(|e| e.data == KvEventData::Cleared));
}

#[actix_rt::test]
async fn a_crash_loop_fails_every_request_with_worker_lost() {
    let plan = FaultPlan::new(3, None);
    let policy = RestartPolicy {
        max_restarts: 2,
        window: Duration::from_secs(60),
    };
    let rank = start(plan.clone(), policy);
    let reqs = requests();
    let mut rxs = enqueue_all(&rank, &reqs).await;
    for rx in rxs.iter_mut() {
        let err = collect(rx).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::WorkerLost);
        assert!(err.message.contains("crash loop"), "{}", err.message);
    }
    assert_eq!(rank.supervisor.send(GetRestarts).await.unwrap(), 2);
    assert_eq!(
        plan.injected(),
        3,
        "two restarts, then the third crash gives up"
    );
    // New requests are refused the same way, and nothing is left behind.
    let (tx, _rx) = unbounded_channel();
    let err = rank
        .scheduler
        .send(Enqueue {
            req: request(vec![1, 2, 3], 4),
            tx,
        })
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::WorkerLost);
    let stats = rank.scheduler.send(GetStats).await.unwrap();
    assert_eq!(
        (stats.running, stats.waiting, stats.active_blocks),
        (0, 0, 0)
    );
}

#[test]
fn a_kv_dump_is_a_snapshot_taking_the_next_event_id() {
    let mut s = Scheduler::new(SchedulerConfig::new(4, 16, 64)).unwrap();
    s.enqueue(request((0..9).collect(), 2)).unwrap();
    let batch = s.schedule().unwrap();
    let out = TestExecutor::new(16, 4, 64).forward(&batch).unwrap();
    s.on_output(&batch, out);
    let dump = s.dump_kv_events();
    let ids: Vec<u64> = dump.iter().map(|e| e.event_id).collect();
    assert_eq!(ids, (1..=dump.len() as u64).collect::<Vec<_>>());
    let Some(KvEventData::Snapshot { blocks }) = dump.last().map(|e| e.data.clone()) else {
        panic!("the dump ends with a snapshot: {dump:?}");
    };
    assert_eq!(blocks.len(), 2, "two full blocks of 9 prompt tokens");
    // Later events continue after the snapshot's id.
    s.reset_kv();
    let next = s.take_kv_events();
    assert_eq!(
        next.first().map(|e| e.event_id),
        Some(dump.len() as u64 + 1)
    );
    assert_eq!(
        s.dump_kv_events().last().map(|e| e.event_id),
        Some(dump.len() as u64 + 2)
    );
}

#[test]
fn a_full_waiting_queue_is_429_naming_the_limit() {
    let mut cfg = SchedulerConfig::new(4, 16, 64);
    cfg.waiting_queue_limit = 2;
    let mut s = Scheduler::new(cfg).unwrap();
    s.enqueue(request(vec![1, 2], 2)).unwrap();
    s.enqueue(request(vec![3, 4], 2)).unwrap();
    let err = s.enqueue(request(vec![5, 6], 2)).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Overloaded);
    assert_eq!(err.kind.http_status(), 429);
    assert!(err.message.contains("its limit is 2"), "{}", err.message);
    assert!(err.message.contains("--max-waiting"), "{}", err.message);
}
