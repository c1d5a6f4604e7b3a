//! A worker over the in-memory bus and discovery, with the mocker (a simulated engine)
//! wrapped in a `FaultPlan`: engine restart, crash loop, dp ranks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ferrite_engine::{Executor, ExecutorFactory, FaultPlan, KvCacheSpec};
use ferrite_mocker::{MockerConfig, MockerExecutor};
use ferrite_protocol::{
    ControlMessage, DpRank, EngineOutput, ErrorInfo, ErrorKind, FinishReason, KvEventBatch,
    KvEventData, PreprocessedRequest, RequestId, SamplingParams, StopConditions, TokenId, codec,
    names,
};
use ferrite_runtime::{
    Bus, Discovery, MemBus, MemDiscovery, StreamError, StreamOptions, request_stream,
};
use ferrite_worker::{RestartPolicy, WorkerConfig, WorkerHandle, start_worker_with_factory};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const NS: &str = "test";

fn factory(plan: Option<FaultPlan>) -> ExecutorFactory {
    Arc::new(move |_rank: DpRank| {
        let cfg = MockerConfig {
            kv: KvCacheSpec {
                num_blocks: 256,
                block_size: 16,
            },
            speedup: 1000.0,
            ..MockerConfig::default()
        };
        let exec: Box<dyn Executor> = Box::new(MockerExecutor::new(cfg)?);
        Ok(match &plan {
            Some(p) => p.wrap(exec),
            None => exec,
        })
    })
}

struct World {
    bus: Arc<dyn Bus>,
    discovery: Arc<dyn Discovery>,
}

impl World {
    fn new() -> Self {
        Self {
            bus: Arc::new(MemBus::new()),
            discovery: Arc::new(MemDiscovery::new()),
        }
    }

    async fn worker(
        &self,
        f: ExecutorFactory,
        dp_size: u32,
        policy: RestartPolicy,
    ) -> WorkerHandle {
        let mut cfg = WorkerConfig::new("m", "/nowhere");
        cfg.namespace = NS.into();
        cfg.dp_size = dp_size;
        cfg.restart_policy = policy;
        cfg.publish_interval = Duration::from_millis(20);
        start_worker_with_factory(cfg, f, self.bus.clone(), self.discovery.clone())
            .await
            .unwrap()
    }

    async fn instances(&self) -> usize {
        self.discovery
            .get_prefix(&names::instances_prefix(NS))
            .await
            .unwrap()
            .len()
    }
}

fn request(id: u128, prompt_len: u32, max_tokens: u32, rank: u32) -> PreprocessedRequest {
    PreprocessedRequest {
        request_id: RequestId(uuid_from(id)),
        model: "m".into(),
        token_ids: (0..prompt_len)
            .map(|i| 300 + (i * 7 + id as u32) % 200)
            .collect(),
        generated_so_far: 0,
        sampling: SamplingParams::default(),
        stop: StopConditions {
            max_tokens,
            ..Default::default()
        },
        dp_rank: DpRank(rank),
        extra_hash_key: 0,
        prompt_embeds: None,
    }
}

fn uuid_from(n: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(n)
}

/// Sends `req` and collects its stream: tokens and finish reason, or the error it ended with.
async fn run(
    bus: &Arc<dyn Bus>,
    subject: &str,
    req: PreprocessedRequest,
) -> Result<(Vec<TokenId>, FinishReason), StreamError> {
    let mut s = request_stream::<_, EngineOutput>(bus, subject, &req, StreamOptions::default())
        .await
        .map_err(|e| StreamError::Remote(ErrorInfo::new(ErrorKind::Unavailable, e.to_string())))?;
    let mut tokens = Vec::new();
    while let Some(item) = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("stream stalled")
    {
        let out = item?;
        tokens.extend(out.token_ids);
        if let Some(f) = out.finish_reason {
            return Ok((tokens, f));
        }
    }
    panic!("stream ended without a finish reason")
}

async fn run_all(
    bus: &Arc<dyn Bus>,
    subject: &str,
    reqs: &[PreprocessedRequest],
) -> Vec<Result<(Vec<TokenId>, FinishReason), StreamError>> {
    futures::future::join_all(reqs.iter().map(|r| run(bus, subject, r.clone()))).await
}

fn batch_of_requests() -> Vec<PreprocessedRequest> {
    (1..=6)
        .map(|i| request(i, 20 + i as u32 * 5, 16, 0))
        .collect()
}

#[actix_rt::test]
async fn one_crash_restarts_the_engine_and_outputs_equal_an_uninterrupted_run() {
    let reqs = batch_of_requests();
    let clean = World::new();
    let w0 = clean
        .worker(factory(None), 1, RestartPolicy::default())
        .await;
    let want = run_all(&clean.bus, &w0.record.subject, &reqs).await;

    let faulty = World::new();
    let plan = FaultPlan::new(4, Some(1));
    let w = faulty
        .worker(factory(Some(plan.clone())), 1, RestartPolicy::default())
        .await;
    let got = run_all(&faulty.bus, &w.record.subject, &reqs).await;
    for (g, w) in got.iter().zip(&want) {
        let (g, w) = (
            g.as_ref().expect("no client-visible error"),
            w.as_ref().unwrap(),
        );
        assert_eq!(g, w);
        assert_eq!(g.0.len(), 16);
    }
    assert_eq!(plan.injected(), 1);
    assert_eq!(w.engine_restarts().await, 1);
    assert_eq!(w0.engine_restarts().await, 0);
    let stats = w.rank_stats().await.unwrap();
    assert_eq!(
        (stats[0].running, stats[0].waiting, stats[0].active_blocks),
        (0, 0, 0)
    );
    assert_eq!(
        faulty.instances().await,
        1,
        "a restart does not leave discovery"
    );
    assert!(!w.left_discovery());
}

#[actix_rt::test]
async fn a_crash_loop_ends_requests_with_worker_lost_and_leaves_discovery() {
    let world = World::new();
    let plan = FaultPlan::new(3, None);
    let policy = RestartPolicy {
        max_restarts: 2,
        window: Duration::from_secs(60),
    };
    let w = world.worker(factory(Some(plan.clone())), 1, policy).await;
    assert_eq!(world.instances().await, 1);
    let got = run_all(&world.bus, &w.record.subject, &batch_of_requests()).await;
    for g in &got {
        match g {
            Err(StreamError::Remote(info)) => {
                assert_eq!(info.kind, ErrorKind::WorkerLost, "{info:?}");
                assert!(info.message.contains("crash loop"), "{}", info.message);
            }
            other => panic!("expected worker_lost, got {other:?}"),
        }
    }
    assert_eq!(plan.injected(), 3);
    assert_eq!(w.engine_restarts().await, 2);
    assert_eq!(world.instances().await, 0, "the worker left discovery");
    assert!(w.left_discovery());
    // It takes no more requests.
    let again = run(&world.bus, &w.record.subject, request(99, 20, 4, 0)).await;
    assert!(again.is_err(), "{again:?}");
}

#[actix_rt::test]
async fn dp_ranks_serve_their_own_requests_events_and_snapshots() {
    let world = World::new();
    let events_subject = names::kv_events_subject(NS, "m");
    let mut events = world.bus.subscribe(&events_subject).await.unwrap();
    let w = world
        .worker(factory(None), 2, RestartPolicy::default())
        .await;
    assert_eq!(w.ranks.len(), 2);
    let records = world
        .discovery
        .get_prefix(&names::instances_prefix(NS))
        .await
        .unwrap();
    assert_eq!(records.len(), 1, "one instance for both ranks");
    let rec: ferrite_protocol::InstanceRecord = serde_json::from_slice(&records[0].1).unwrap();
    assert_eq!(rec.dp_size, 2);

    // Two requests to rank 1, then one to rank 0: each rank computes only its own.
    let to_rank1 = [request(1, 40, 8, 1), request(2, 50, 8, 1)];
    for r in run_all(&world.bus, &w.record.subject, &to_rank1).await {
        assert_eq!(r.unwrap().0.len(), 8);
    }
    let s = w.rank_stats().await.unwrap();
    assert_eq!(s[0].computed_tokens, 0, "rank 0 ran nothing");
    assert_eq!(
        s[1].computed_tokens,
        40 + 50 + 2 * 7,
        "prompts plus 7 decode steps each"
    );
    let r = run(&world.bus, &w.record.subject, request(3, 33, 4, 0))
        .await
        .unwrap();
    assert_eq!(r.0.len(), 4);
    let s = w.rank_stats().await.unwrap();
    assert_eq!(s[0].computed_tokens, 33 + 3);
    assert_eq!(s[1].computed_tokens, 40 + 50 + 2 * 7);

    // Out of range: invalid.
    match run(&world.bus, &w.record.subject, request(4, 10, 2, 2)).await {
        Err(StreamError::Remote(info)) => {
            assert_eq!(info.kind, ErrorKind::InvalidRequest);
            assert_eq!(info.param.as_deref(), Some("dp_rank"));
        }
        other => panic!("expected invalid dp_rank, got {other:?}"),
    }

    // Ask for a dump; then read every batch until both ranks sent their snapshot.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let dump = codec::encode(&ControlMessage::DumpKv).unwrap();
    world
        .bus
        .publish(&w.record.control_subject, dump.into())
        .await
        .unwrap();
    let mut per_rank: BTreeMap<u32, Vec<(u64, KvEventData)>> = BTreeMap::new();
    let mut snapshots_seen = BTreeMap::new();
    while snapshots_seen.values().filter(|n| **n >= 2).count() < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("KV events stalled")
            .unwrap();
        let b: KvEventBatch = codec::decode(&msg.payload).unwrap();
        assert_eq!(b.instance_id, w.record.instance_id);
        assert_eq!(b.block_size, 16);
        for e in b.events {
            if matches!(e.data, KvEventData::Snapshot { .. }) {
                *snapshots_seen.entry(b.dp_rank.0).or_insert(0) += 1;
            }
            per_rank
                .entry(b.dp_rank.0)
                .or_default()
                .push((e.event_id, e.data));
        }
    }
    for (rank, evs) in &per_rank {
        let ids: Vec<u64> = evs.iter().map(|e| e.0).collect();
        assert_eq!(
            ids,
            (1..=ids.len() as u64).collect::<Vec<_>>(),
            "rank {rank}: {ids:?}"
        );
        // The first snapshot (at start) is empty, the one asked for holds the rank's blocks.
        let snaps: Vec<&Vec<_>> = evs
            .iter()
            .filter_map(|e| match &e.1 {
                KvEventData::Snapshot { blocks } => Some(blocks),
                _ => None,
            })
            .collect();
        assert!(snaps[0].is_empty());
        let stored: usize = evs
            .iter()
            .map(|e| match &e.1 {
                KvEventData::Stored { blocks, .. } => blocks.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(snaps[1].len(), stored, "rank {rank}");
    }
    // Rank 0 cached 36/16 = 2 full blocks; rank 1 (40+7)/16 + (50+7)/16 = 2 + 3.
    let last_snapshot = |rank: u32| match &per_rank[&rank]
        .iter()
        .rev()
        .find(|e| matches!(e.1, KvEventData::Snapshot { .. }))
        .unwrap()
        .1
    {
        KvEventData::Snapshot { blocks } => blocks.len(),
        _ => unreachable!(),
    };
    assert_eq!(last_snapshot(0), 2);
    assert_eq!(last_snapshot(1), 5);
    w.drain(Duration::from_secs(1)).await;
    assert_eq!(world.instances().await, 0);
}

#[actix_rt::test]
async fn cancel_reaches_the_rank_holding_the_request() {
    let world = World::new();
    // Real-time mocker: a 3000-token request would take seconds.
    let slow: ExecutorFactory = Arc::new(|_rank: DpRank| {
        let cfg = MockerConfig {
            kv: KvCacheSpec {
                num_blocks: 256,
                block_size: 16,
            },
            ..MockerConfig::default()
        };
        Ok(Box::new(MockerExecutor::new(cfg)?) as Box<dyn Executor>)
    });
    let w = world.worker(slow, 2, RestartPolicy::default()).await;
    let req = request(7, 20, 3000, 1);
    let mut s = request_stream::<_, EngineOutput>(
        &world.bus,
        &w.record.subject,
        &req,
        StreamOptions::default(),
    )
    .await
    .unwrap();
    let first = s.next().await.unwrap().unwrap();
    assert_eq!(first.token_ids.len(), 1);
    let stats = w.rank_stats().await.unwrap();
    assert_eq!((stats[0].running, stats[1].running), (0, 1));
    let cancel = codec::encode(&ControlMessage::Cancel {
        request_id: req.request_id,
    })
    .unwrap();
    world
        .bus
        .publish(&w.record.control_subject, cancel.into())
        .await
        .unwrap();
    let mut last = None;
    while let Some(item) = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("the stream did not end after cancel")
    {
        last = Some(item.unwrap());
    }
    assert_eq!(
        last.and_then(|o| o.finish_reason),
        Some(FinishReason::Cancelled)
    );
    // Its blocks are freed once the step in flight comes back.
    let mut stats = w.rank_stats().await.unwrap();
    for _ in 0..100 {
        if stats[1].running == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        stats = w.rank_stats().await.unwrap();
    }
    assert_eq!((stats[1].running, stats[1].active_blocks), (0, 0));
}
