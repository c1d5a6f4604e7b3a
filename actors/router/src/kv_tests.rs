//! The KV-aware policy through `Router`: prefix preference, the cost function's exact
//! numbers, determinism across replicas, pinning, dumps and block sizes.

use super::*;
use ferrite_protocol::hashing::block_hashes;
use ferrite_protocol::{
    BlockHash, DpRank, InstanceId, InstanceRecord, KvEvent, KvEventBatch, KvEventData, RequestId,
    WorkerLoad, WorkerRole,
};

fn record(id: u64, dp: u32, bs: u32) -> InstanceRecord {
    InstanceRecord {
        instance_id: InstanceId(id),
        component: "worker".into(),
        role: WorkerRole::Agg,
        model: "m".into(),
        subject: format!("gen.{id}"),
        control_subject: format!("ctl.{id}"),
        dp_size: dp,
        kv_block_size: bs,
        total_kv_blocks: 1000,
        transfer: None,
    }
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| seed * 100_000 + i).collect()
}

fn req(id: u128, tokens: Vec<u32>) -> RouteRequest {
    RouteRequest {
        request_id: RequestId(uuid::Uuid::from_u128(id)),
        model: "m".into(),
        token_ids: tokens,
        ..Default::default()
    }
}

fn stored(id: u64, rank: u32, bs: u32, event_id: u64, blocks: &[BlockHash]) -> KvEventBatch {
    KvEventBatch {
        instance_id: InstanceId(id),
        dp_rank: DpRank(rank),
        block_size: bs,
        events: vec![KvEvent {
            storage_tier: Default::default(),
            event_id,
            data: KvEventData::Stored {
                parent: None,
                blocks: blocks.to_vec(),
            },
        }],
    }
}

fn load(id: u64, active: u32, pending: u32) -> WorkerLoad {
    WorkerLoad {
        instance_id: InstanceId(id),
        dp_rank: DpRank(0),
        active_blocks: active,
        total_blocks: 1000,
        waiting: 0,
        running: 0,
        pending_prefill_tokens: pending,
    }
}

fn kv_router(n: u64) -> Router {
    let mut r = Router::with_kind(PolicyKind::Kv);
    for id in 1..=n {
        assert!(r.instance_up(record(id, 1, 16)));
    }
    r
}

#[test]
fn prefers_the_longest_cached_prefix() {
    let mut r = kv_router(3);
    let p = prompt(1, 160);
    let h = block_hashes(&p, 16, 0);
    assert_eq!(h.len(), 10);
    assert!(r.kv_events(&stored(1, 0, 16, 1, &h[..2])).is_empty());
    assert!(r.kv_events(&stored(2, 0, 16, 1, &h[..6])).is_empty());
    // Instance 3 holds blocks 3..10 but not the first: no leading overlap.
    assert!(r.kv_events(&stored(3, 0, 16, 1, &h[3..])).is_empty());
    assert_eq!(r.kv_indexed_blocks(), Some(2 + 6 + 7));
    let d = r
        .route_with_overlap(&req(1, p.clone()), &[])
        .expect("routable");
    assert_eq!(
        (d.instance_id, d.overlap_blocks, d.prompt_blocks),
        (InstanceId(2), 6, 10)
    );
    // Excluding it, the 2-block holder wins over the non-leading one.
    let d = r
        .route_with_overlap(&req(2, p), &[InstanceId(2)])
        .expect("routable");
    assert_eq!((d.instance_id, d.overlap_blocks), (InstanceId(1), 2));
}

#[test]
fn cost_formula_exact_numbers_and_load_beats_small_overlap() {
    // 160 tokens = 10 blocks of 16; A caches 8, is loaded; B caches nothing, idle.
    let a = load(1, 50, 1600);
    let b = load(2, 0, 0);
    // A: prefill (1600 + 32) / 16 = 102, decode 50 + 2 = 52.
    assert_eq!(KvPolicy::cost(1.0, &a, 16, 160, 8), 154.0);
    // B: prefill 160 / 16 = 10, decode 0 + 10.
    assert_eq!(KvPolicy::cost(1.0, &b, 16, 160, 0), 20.0);
    assert_eq!(KvPolicy::cost(0.5, &a, 16, 160, 8), 103.0);
    // A partial last block: 170 tokens, 11 blocks to allocate, 10 hashable.
    assert_eq!(KvPolicy::cost(1.0, &b, 16, 170, 10), 10.0 / 16.0 + 1.0);

    let mut r = kv_router(2);
    let p = prompt(7, 160);
    let h = block_hashes(&p, 16, 0);
    r.kv_events(&stored(1, 0, 16, 1, &h[..8]));
    r.load_report(a);
    r.load_report(b);
    let d = r
        .route_with_overlap(&req(1, p.clone()), &[])
        .expect("routable");
    assert_eq!((d.instance_id, d.overlap_blocks), (InstanceId(2), 0));
    // Once A is idle its cost is 2 + 2 = 4 < 20.
    r.load_report(load(1, 0, 0));
    let d = r.route_with_overlap(&req(2, p), &[]).expect("routable");
    assert_eq!((d.instance_id, d.overlap_blocks), (InstanceId(1), 8));
}

#[test]
fn equal_costs_go_to_the_least_loaded_without_overlap() {
    let cfg = KvRouterConfig {
        tie_break: TieBreak::LeastLoaded,
        ..Default::default()
    };
    let mut r = Router::with_kind_and_kv(PolicyKind::Kv, &cfg);
    for id in 1..=3 {
        r.instance_up(record(id, 1, 16));
    }
    let mut l = load(2, 0, 0);
    l.waiting = 1;
    r.load_report(l);
    // Instance 1 and 3 tie on cost and load; 2 has a waiter. A burst of 40 spreads evenly
    // because each pick counts as waiting until the next report.
    let mut hits = [0usize; 4];
    for i in 0..40 {
        let d = r
            .route_with_overlap(&req(i, prompt(3, 64)), &[])
            .expect("routable");
        hits[d.instance_id.0 as usize] += 1;
    }
    assert_eq!(&hits[1..], &[14, 13, 13]);
}

/// Two replicas fed the same state make the same choice for every request, ties included.
#[test]
fn replicas_with_the_same_state_agree() {
    for tie_break in [
        TieBreak::LeastLoaded,
        TieBreak::PrefixGroup,
        TieBreak::RequestHash,
    ] {
        let cfg = KvRouterConfig {
            tie_break,
            ..Default::default()
        };
        let mut a = Router::with_kind_and_kv(PolicyKind::Kv, &cfg);
        let mut b = Router::with_kind_and_kv(PolicyKind::Kv, &cfg);
        for r in [&mut a, &mut b] {
            for id in 1..=8 {
                r.instance_up(record(id, 2, 16));
            }
            // Groups 0..4 cached on two workers each, same depth: ties on cost.
            for g in 0..4u32 {
                let h = block_hashes(&prompt(g, 256), 16, 0);
                for w in [u64::from(g) * 2 + 1, u64::from(g) * 2 + 2] {
                    r.kv_events(&stored(w, 0, 16, 1, &h[..8]));
                }
            }
        }
        let mut picks = std::collections::BTreeSet::new();
        for i in 0..200u128 {
            let q = req(i * 7919, prompt((i % 5) as u32, 256));
            let x = a.preview(&q, &[]).expect("routable");
            let y = b.preview(&q, &[]).expect("routable");
            assert_eq!((x.instance_id, x.dp_rank), (y.instance_id, y.dp_rank));
            picks.insert((x.instance_id, x.dp_rank));
            if i % 5 < 4 {
                assert_eq!(x.overlap_blocks, 8);
            }
        }
        // Ties are not all resolved to one worker.
        assert!(picks.len() > 4, "{tie_break:?}: {picks:?}");
    }
}

#[test]
fn temperature_samples_deterministically_per_request() {
    let cfg = KvRouterConfig {
        temperature: 50.0,
        ..Default::default()
    };
    let mk = || {
        let mut r = Router::with_kind_and_kv(PolicyKind::Kv, &cfg);
        for id in 1..=4 {
            r.instance_up(record(id, 1, 16));
        }
        let h = block_hashes(&prompt(1, 320), 16, 0);
        r.kv_events(&stored(1, 0, 16, 1, &h));
        r
    };
    let (mut a, mut b) = (mk(), mk());
    let mut hits = [0usize; 5];
    for i in 0..400u128 {
        let q = req(i, prompt(1, 320));
        let x = a.preview(&q, &[]).expect("routable").instance_id;
        assert_eq!(Ok(x), b.preview(&q, &[]).map(|d| d.instance_id));
        hits[x.0 as usize] += 1;
    }
    // Cost 0 for the holder vs 40 for the others: weights 1 : e^-0.8 (≈ 0.45) each, so
    // the holder gets ≈ 43% and every other worker ≈ 19%.
    assert!(hits[1] > 130 && hits[1] < 215, "{hits:?}");
    assert!(hits[2..].iter().all(|&n| n > 45), "{hits:?}");
}

#[test]
fn pinned_requests_go_to_their_instance_or_fail_clearly() {
    let mut r = kv_router(3);
    let h = block_hashes(&prompt(1, 64), 16, 0);
    r.kv_events(&stored(1, 0, 16, 1, &h));
    let mut q = req(1, prompt(1, 64));
    q.pinned = Some(InstanceId(3));
    let d = r.route_with_overlap(&q, &[]).expect("routable");
    assert_eq!((d.instance_id, d.overlap_blocks), (InstanceId(3), 0));
    q.pinned = Some(InstanceId(9));
    let e = r.route(&q, &[]).expect_err("not live");
    assert_eq!(
        e,
        RouteError::PinnedUnavailable {
            model: "m".into(),
            instance: InstanceId(9)
        }
    );
    assert_eq!(e.kind().http_status(), 503);
    assert!(
        e.to_string().contains("pinned instance 0000000000000009"),
        "{e}"
    );
    q.pinned = Some(InstanceId(3));
    assert!(matches!(
        r.route(&q, &[InstanceId(3)]),
        Err(RouteError::PinnedUnavailable { .. })
    ));
}

#[test]
fn dumps_instance_lifecycle_and_foreign_batches() {
    let mut r = kv_router(2);
    // New instances wait for a dump of what they already cache, until a snapshot comes.
    assert_eq!(
        r.pending_dumps(),
        vec![(InstanceId(1), DpRank(0)), (InstanceId(2), DpRank(0))]
    );
    let empty = |id: u64, event_id: u64| KvEventBatch {
        instance_id: InstanceId(id),
        dp_rank: DpRank(0),
        block_size: 16,
        events: vec![KvEvent {
            storage_tier: Default::default(),
            event_id,
            data: KvEventData::Snapshot { blocks: Vec::new() },
        }],
    };
    assert!(r.kv_events(&empty(2, 3)).is_empty());
    assert!(r.kv_events(&empty(1, 1)).is_empty());
    assert!(r.pending_dumps().is_empty());
    assert!(
        !r.instance_up(record(1, 1, 16)),
        "known instance is not new"
    );
    assert!(
        r.pending_dumps().is_empty(),
        "a known instance is not re-dumped"
    );
    let h = block_hashes(&prompt(1, 64), 16, 0);
    // A gap after the snapshot (5 after 1) and a later gap both ask for a dump.
    assert_eq!(
        r.kv_events(&stored(1, 0, 16, 5, &h[..1])),
        vec![(InstanceId(1), DpRank(0))]
    );
    assert!(r.kv_events(&stored(1, 0, 16, 6, &h[1..2])).is_empty());
    assert_eq!(r.pending_dumps(), vec![(InstanceId(1), DpRank(0))]);
    assert_eq!(r.kv_events(&stored(1, 0, 16, 9, &h[2..3])).len(), 1);
    let snap = KvEventBatch {
        instance_id: InstanceId(1),
        dp_rank: DpRank(0),
        block_size: 16,
        events: vec![KvEvent {
            storage_tier: Default::default(),
            event_id: 10,
            data: KvEventData::Snapshot { blocks: h.clone() },
        }],
    };
    assert!(r.kv_events(&snap).is_empty());
    assert!(r.pending_dumps().is_empty());
    assert_eq!(r.kv_indexed_blocks(), Some(4));
    // Batches of unregistered instances, or with the wrong block size, are dropped.
    assert!(r.kv_events(&stored(9, 0, 16, 3, &h)).is_empty());
    assert!(r.kv_events(&stored(2, 0, 32, 1, &h)).is_empty());
    assert_eq!(r.kv_indexed_blocks(), Some(4));
    r.instance_down(InstanceId(1));
    assert_eq!(r.kv_indexed_blocks(), Some(0));
    assert_eq!(
        Router::with_kind(PolicyKind::RoundRobin).kv_indexed_blocks(),
        None
    );
}

#[test]
fn hashes_are_per_candidate_block_size_and_given_hashes_are_used() {
    let mut r = Router::with_kind(PolicyKind::Kv);
    r.instance_up(record(1, 1, 16));
    r.instance_up(record(2, 1, 32));
    let p = prompt(4, 256);
    let h16 = block_hashes(&p, 16, 0);
    let h32 = block_hashes(&p, 32, 0);
    r.kv_events(&stored(1, 0, 16, 1, &h16[..4]));
    r.kv_events(&stored(2, 0, 32, 1, &h32[..3]));
    // 4 blocks of 16 (64 tokens) vs 3 of 32 (96 tokens): instance 2 saves more.
    let d = r
        .route_with_overlap(&req(1, p.clone()), &[])
        .expect("routable");
    assert_eq!(
        (d.instance_id, d.overlap_blocks, d.prompt_blocks),
        (InstanceId(2), 3, 8)
    );
    let d = r
        .route_with_overlap(&req(2, p.clone()), &[InstanceId(2)])
        .expect("routable");
    assert_eq!(
        (d.instance_id, d.overlap_blocks, d.prompt_blocks),
        (InstanceId(1), 4, 16)
    );
    // The extra key changes every hash: no overlap.
    let mut q = req(3, p.clone());
    q.extra_hash_key = 77;
    assert_eq!(
        r.route_with_overlap(&q, &[]).map(|d| d.overlap_blocks),
        Ok(0)
    );
    // Hashes given for size 16 are taken as they are (here: 16 fake ones, 2 stored).
    let fake: Vec<BlockHash> = (100..116).map(BlockHash).collect();
    r.kv_events(&stored(1, 0, 16, 2, &fake[..2]));
    let mut q = req(4, p);
    q.block_hashes = fake;
    q.hashes_block_size = 16;
    let d = r
        .route_with_overlap(&q, &[InstanceId(2)])
        .expect("routable");
    assert_eq!(d.overlap_blocks, 2);
}

#[test]
fn nonsense_config_does_not_panic() {
    for (w, t) in [
        (f64::NAN, 1.0),
        (f64::INFINITY, 1.0),
        (1.0, 1e-300),
        (-1.0, 0.0),
    ] {
        let cfg = KvRouterConfig {
            overlap_weight: w,
            temperature: t,
            ..Default::default()
        };
        let mut r = Router::with_kind_and_kv(PolicyKind::Kv, &cfg);
        r.instance_up(record(1, 1, 16));
        r.instance_up(record(2, 1, 16));
        let d = r.route_with_overlap(&req(1, prompt(1, 64)), &[]);
        assert!(d.is_ok(), "{w} {t}: {d:?}");
    }
}

#[actix_rt::test]
async fn actor_answers_dumps_overlap_and_index_size() {
    use actix::Actor;
    let addr = RouterActor::new(Router::with_kind(PolicyKind::Kv)).start();
    assert!(
        addr.send(InstanceUp(record(1, 1, 16)))
            .await
            .expect("mailbox")
    );
    assert!(
        !addr
            .send(InstanceUp(record(1, 1, 16)))
            .await
            .expect("mailbox")
    );
    let h = block_hashes(&prompt(2, 64), 16, 0);
    let dumps = addr
        .send(KvEvents(stored(1, 0, 16, 3, &h)))
        .await
        .expect("mailbox");
    assert_eq!(dumps, vec![(InstanceId(1), DpRank(0))]);
    let pending = addr.send(PendingDumps).await.expect("mailbox");
    assert_eq!(pending, dumps);
    assert_eq!(addr.send(KvIndexedBlocks).await.expect("mailbox"), Some(4));
    let d = addr
        .send(RouteWithOverlap {
            req: req(1, prompt(2, 70)),
            exclude: vec![],
        })
        .await
        .expect("mailbox")
        .expect("routable");
    assert_eq!(
        (d.instance_id, d.overlap_blocks, d.prompt_blocks),
        (InstanceId(1), 4, 4)
    );
}
