//! Router micro-benchmarks: KV index ingest, decision latency, replica divergence.
//!
//! `cargo run --release -p ferrite-router --example router_bench [-- --quick]`
//!
//! Fleet: 128 workers (block size 16). 64 prefix groups, each a 3 072-token shared prefix
//! (192 blocks) cached on 8 workers; every worker holds 4 groups with 28 distinct
//! 1 024-token suffixes each, i.e. 4 × (192 + 28 × 64) = 7 936 blocks, ~1.02 M (worker,
//! block) pairs in all. Requests are 4 096-token prompts of a random group, half of them
//! repeating a cached suffix, half with a new one. Single-threaded throughout.

use ferrite_protocol::hashing::block_hashes;
use ferrite_protocol::{
    BlockHash, DpRank, InstanceId, InstanceRecord, KvEvent, KvEventBatch, KvEventData, RequestId,
    WorkerLoad, WorkerRole,
};
use ferrite_router::{KvRouterConfig, PolicyKind, RouteRequest, Router, TieBreak};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const WORKERS: u64 = 128;
const BS: usize = 16;
const GROUPS: u32 = 64;
const REPLICAS: u64 = 8;
const PREFIX_TOKENS: usize = 3072;
const SUFFIX_TOKENS: usize = 1024;
const SUFFIXES: u32 = 28;

fn record(id: u64) -> InstanceRecord {
    InstanceRecord {
        instance_id: InstanceId(id),
        component: "worker".into(),
        role: WorkerRole::Agg,
        model: "m".into(),
        subject: format!("gen.{id}"),
        control_subject: format!("ctl.{id}"),
        dp_size: 1,
        kv_block_size: BS as u32,
        total_kv_blocks: 16_384,
        transfer: None,
    }
}

/// The prompt of (group, suffix): a shared prefix then a suffix unique to (group, suffix).
fn tokens(group: u32, suffix: u32) -> Vec<u32> {
    let mut t: Vec<u32> = (0..PREFIX_TOKENS as u32)
        .map(|i| group.wrapping_mul(7_919).wrapping_add(i * 31) % 150_000)
        .collect();
    t.extend(
        (0..SUFFIX_TOKENS as u32).map(|i| {
            (group ^ suffix.wrapping_mul(104_729)).wrapping_add(i * 17) % 150_000 + suffix
        }),
    );
    t
}

/// Workers that cache group `g` (8 consecutive instance ids, wrapping).
fn holders(g: u32) -> impl Iterator<Item = u64> {
    (0..REPLICAS).map(move |r| (u64::from(g) * 2 + r) % WORKERS + 1)
}

struct Worker {
    next_event: u64,
}

fn stored(w: u64, ids: &mut HashMap<u64, Worker>, blocks: Vec<BlockHash>) -> KvEventBatch {
    let wk = ids.entry(w).or_insert(Worker { next_event: 1 });
    let event_id = wk.next_event;
    wk.next_event += 1;
    KvEventBatch {
        instance_id: InstanceId(w),
        dp_rank: DpRank(0),
        block_size: BS as u32,
        events: vec![KvEvent {
            storage_tier: Default::default(),
            event_id,
            data: KvEventData::Stored {
                parent: None,
                blocks,
            },
        }],
    }
}

/// One Stored event per (worker, group, suffix) chain of 256 blocks.
fn fleet_events(ids: &mut HashMap<u64, Worker>) -> Vec<KvEventBatch> {
    let mut out = Vec::new();
    for g in 0..GROUPS {
        for s in 0..SUFFIXES {
            let h = block_hashes(&tokens(g, s), BS, 0);
            for w in holders(g) {
                out.push(stored(w, ids, h.clone()));
            }
        }
    }
    out
}

fn new_router(tie_break: TieBreak) -> Router {
    let cfg = KvRouterConfig {
        tie_break,
        ..Default::default()
    };
    let mut r = Router::with_kind_and_kv(PolicyKind::Kv, &cfg);
    for id in 1..=WORKERS {
        r.instance_up(record(id));
    }
    r
}

fn req(rng: &mut StdRng, n: u128) -> (RouteRequest, u32, u32) {
    let g = rng.random_range(0..GROUPS);
    let s = if rng.random_bool(0.5) {
        rng.random_range(0..SUFFIXES)
    } else {
        1_000 + (n as u32)
    };
    let r = RouteRequest {
        request_id: RequestId(uuid::Uuid::from_u128(
            n.wrapping_mul(0x9E37_79B9_7F4A_7C15) + 1,
        )),
        model: "m".into(),
        token_ids: tokens(g, s),
        ..Default::default()
    };
    (r, g, s)
}

fn random_loads(rng: &mut StdRng) -> Vec<WorkerLoad> {
    (1..=WORKERS)
        .map(|id| WorkerLoad {
            instance_id: InstanceId(id),
            dp_rank: DpRank(0),
            active_blocks: rng.random_range(0..8_000),
            total_blocks: 16_384,
            waiting: rng.random_range(0..3),
            running: rng.random_range(0..16),
            pending_prefill_tokens: rng.random_range(0..8_192),
        })
        .collect()
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |pages| pages * 4096.0 / (1 << 20) as f64)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let decisions = if quick { 2_000 } else { 20_000 };
    let stream = if quick { 4_000 } else { 40_000 };

    // 1. Ingest.
    let mut ids = HashMap::new();
    let t = Instant::now();
    let batches = fleet_events(&mut ids);
    let gen_s = t.elapsed().as_secs_f64();
    let rss0 = rss_mib();
    let mut router = new_router(TieBreak::default());
    let blocks_in: usize = batches.iter().map(|b| b.events.len() * 256).sum();
    let t = Instant::now();
    for b in &batches {
        let dumps = router.kv_events(b);
        assert!(dumps.is_empty());
    }
    let ingest = t.elapsed().as_secs_f64();
    let indexed = router.kv_indexed_blocks().unwrap_or(0);
    println!(
        "fleet: {WORKERS} workers, {indexed} indexed (worker, block) pairs, events generated in {gen_s:.2} s"
    );
    println!(
        "bulk ingest: {} events of 256 blocks in {:.3} s = {:.0} events/s, {:.2} M blocks/s; index RSS ≈ {:.0} MiB",
        batches.len(),
        ingest,
        batches.len() as f64 / ingest,
        blocks_in as f64 / ingest / 1e6,
        rss_mib() - rss0
    );

    // Steady churn: small events (16 blocks), half Removed, half Stored back.
    let mut churn = Vec::new();
    for (i, b) in batches.iter().enumerate().take(20_000) {
        let KvEventData::Stored { blocks, .. } = &b.events[0].data else {
            continue;
        };
        let tail = blocks[240..].to_vec();
        let w = b.instance_id.0;
        let data = if i % 2 == 0 {
            KvEventData::Removed { blocks: tail }
        } else {
            KvEventData::Stored {
                parent: Some(blocks[239]),
                blocks: tail,
            }
        };
        let wk = ids.entry(w).or_insert(Worker { next_event: 1 });
        churn.push(KvEventBatch {
            instance_id: InstanceId(w),
            dp_rank: DpRank(0),
            block_size: BS as u32,
            events: vec![KvEvent {
                storage_tier: Default::default(),
                event_id: wk.next_event,
                data,
            }],
        });
        wk.next_event += 1;
    }
    let t = Instant::now();
    for b in &churn {
        router.kv_events(b);
    }
    let churn_s = t.elapsed().as_secs_f64();
    println!(
        "churn ingest: {} events of 16 blocks in {:.4} s = {:.2} M events/s, {:.2} M blocks/s",
        churn.len(),
        churn_s,
        churn.len() as f64 / churn_s / 1e6,
        (churn.len() * 16) as f64 / churn_s / 1e6
    );

    // 2. Decision latency, route() end to end (candidates, hashing 4 096 tokens, scoring).
    let mut rng = StdRng::seed_from_u64(7);
    let mut lat = Vec::with_capacity(decisions);
    let mut hit = (0u64, 0u64);
    for n in 0..decisions {
        if n % 128 == 0 {
            for l in random_loads(&mut rng) {
                router.load_report(l);
            }
        }
        let (q, _, _) = req(&mut rng, n as u128);
        let t = Instant::now();
        let d = router
            .route_with_overlap(&q, &[])
            .map_err(|e| e.to_string());
        lat.push(t.elapsed());
        let Ok(d) = d else {
            panic!("route failed: {d:?}");
        };
        hit.0 += u64::from(d.overlap_blocks);
        hit.1 += u64::from(d.prompt_blocks);
    }
    lat.sort();
    let over_1ms = lat.iter().filter(|d| d.as_micros() >= 1_000).count();
    println!(
        "decision latency over {decisions} routes (4 096-token prompts, 128 candidates): p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, max {:.1} µs ({over_1ms} ≥ 1 ms); predicted hit rate {:.1}%",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 0.999),
        pct(&lat, 1.0),
        100.0 * hit.0 as f64 / hit.1 as f64
    );
    // Hashing alone, for scale.
    let (q, _, _) = req(&mut rng, 1);
    let t = Instant::now();
    for _ in 0..1_000 {
        std::hint::black_box(block_hashes(std::hint::black_box(&q.token_ids), BS, 0));
    }
    println!(
        "hashing one 4 096-token prompt: {:.1} µs",
        t.elapsed().as_secs_f64() * 1e3
    );

    unique_fleet(decisions);

    // 3. Replica divergence.
    println!(
        "\n| load reports | tie-break | routed differently | predicted hit rate | busiest worker / mean |"
    );
    println!("|---|---|---|---|---|");
    for reports in [Reports::Zero, Reports::Simulated, Reports::Noisy] {
        for tb in [
            TieBreak::LeastLoaded,
            TieBreak::PrefixGroup,
            TieBreak::RequestHash,
        ] {
            let r = divergence(&batches, tb, reports, stream);
            println!(
                "| {reports:?} | {tb:?} | {:.2}% of {stream} | {:.1}% | {:.2}× |",
                100.0 * r.0,
                100.0 * r.1,
                r.2
            );
        }
    }
}

/// A fleet with no sharing: 128 workers × 32 chains of 256 distinct blocks (1 048 576
/// distinct hashes), ingest plus decision latency for prompts that are a cached chain.
fn unique_fleet(decisions: usize) {
    let chain = |w: u64, c: u32| -> Vec<u32> {
        (0..4096u32)
            .map(|i| {
                (w as u32 * 1_000 + c)
                    .wrapping_mul(2_654_435_761)
                    .wrapping_add(i)
                    % 150_000
            })
            .collect()
    };
    let mut ids = HashMap::new();
    let mut batches = Vec::new();
    for w in 1..=WORKERS {
        for c in 0..32 {
            batches.push(stored(w, &mut ids, block_hashes(&chain(w, c), BS, 0)));
        }
    }
    let mut router = new_router(TieBreak::default());
    let rss0 = rss_mib();
    let t = Instant::now();
    for b in &batches {
        router.kv_events(b);
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "unique fleet: {} (worker, block) pairs; ingest {} events of 256 blocks in {:.3} s = {:.0} events/s, {:.2} M blocks/s; index RSS ≈ {:.0} MiB",
        router.kv_indexed_blocks().unwrap_or(0),
        batches.len(),
        s,
        batches.len() as f64 / s,
        (batches.len() * 256) as f64 / s / 1e6,
        rss_mib() - rss0
    );
    let mut rng = StdRng::seed_from_u64(3);
    let mut lat = Vec::with_capacity(decisions);
    let mut hits = 0u64;
    for n in 0..decisions {
        if n % 128 == 0 {
            for l in random_loads(&mut rng) {
                router.load_report(l);
            }
        }
        let w = rng.random_range(1..=WORKERS);
        let c = if rng.random_bool(0.5) {
            rng.random_range(0..32)
        } else {
            1_000 + n as u32
        };
        let q = RouteRequest {
            request_id: RequestId(uuid::Uuid::from_u128(n as u128 + 77)),
            model: "m".into(),
            token_ids: chain(w, c),
            ..Default::default()
        };
        let t = Instant::now();
        let d = router.route_with_overlap(&q, &[]);
        lat.push(t.elapsed());
        hits += d.map_or(0, |d| u64::from(d.overlap_blocks > 0));
    }
    lat.sort();
    println!(
        "unique fleet decisions: p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, max {:.1} µs; {:.1}% routed to a holder",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 0.999),
        pct(&lat, 1.0),
        100.0 * hits as f64 / decisions as f64
    );
}

/// What the shared load reports say.
#[derive(Clone, Copy, Debug)]
enum Reports {
    /// Every worker reports zero load (cold start, or reports lagging far behind).
    Zero,
    /// Reports follow what was routed: active blocks = blocks added over the last four
    /// periods, pending prefill = uncached tokens routed in the last period.
    Simulated,
    /// Simulated plus random background load.
    Noisy,
}

/// Two replicas share events and load reports; each routes every other request (bumping
/// only its own `waiting`), and the other replica's would-be choice is compared.
/// Returns (fraction routed differently, predicted hit rate, max/mean requests per worker).
fn divergence(
    batches: &[KvEventBatch],
    tb: TieBreak,
    reports: Reports,
    n: usize,
) -> (f64, f64, f64) {
    let mut a = new_router(tb);
    let mut b = new_router(tb);
    for batch in batches {
        a.kv_events(batch);
        b.kv_events(batch);
    }
    // The simulated workers' event ids continue after the fleet's events.
    let mut ids: HashMap<u64, Worker> = HashMap::new();
    for batch in batches {
        let next = batch
            .events
            .iter()
            .map(|e| e.event_id + 1)
            .max()
            .unwrap_or(1);
        let w = ids
            .entry(batch.instance_id.0)
            .or_insert(Worker { next_event: 1 });
        w.next_event = w.next_event.max(next);
    }
    let mut rng = StdRng::seed_from_u64(11);
    let mut lrng = StdRng::seed_from_u64(13);
    let mut per_worker = vec![0u64; WORKERS as usize + 1];
    let nw = WORKERS as usize + 1;
    // Per period and worker: blocks added, uncached tokens; four periods kept.
    let mut added = vec![[0u32; 4]; nw];
    let mut uncached = vec![0u32; nw];
    let (mut differ, mut hit, mut total) = (0usize, 0u64, 0u64);
    for i in 0..n {
        // A load report every 64 requests (≈ every 100 ms at 640 req/s), same to both.
        if i % 64 == 0 {
            let period = (i / 64) % 4;
            let mut loads: Vec<WorkerLoad> = match reports {
                Reports::Noisy => random_loads(&mut lrng),
                _ => (1..=WORKERS)
                    .map(|id| WorkerLoad {
                        instance_id: InstanceId(id),
                        total_blocks: 16_384,
                        ..Default::default()
                    })
                    .collect(),
            };
            for l in &mut loads {
                let w = l.instance_id.0 as usize;
                l.waiting = 0;
                if !matches!(reports, Reports::Zero) {
                    l.active_blocks += added[w].iter().sum::<u32>();
                    l.pending_prefill_tokens += uncached[w];
                }
                // This period's slot held the oldest period's blocks: reuse it.
                added[w][period] = 0;
                uncached[w] = 0;
            }
            for l in loads {
                a.load_report(l.clone());
                b.load_report(l);
            }
        }
        let (q, _, _) = req(&mut rng, i as u128 + 5_000_000);
        let (owner, other) = if i % 2 == 0 {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        let (Ok(d), Ok(o)) = (owner.route_with_overlap(&q, &[]), other.preview(&q, &[])) else {
            panic!("route failed");
        };
        if (d.instance_id, d.dp_rank) != (o.instance_id, o.dp_rank) {
            differ += 1;
        }
        hit += u64::from(d.overlap_blocks);
        total += u64::from(d.prompt_blocks);
        let w = d.instance_id.0;
        per_worker[w as usize] += 1;
        let period = (i / 64) % 4;
        added[w as usize][period] += 256 - d.overlap_blocks;
        uncached[w as usize] += (256 - d.overlap_blocks) * BS as u32;
        // The worker caches the prompt; both replicas see the event.
        let ev = stored(w, &mut ids, block_hashes(&q.token_ids, BS, 0));
        a.kv_events(&ev);
        b.kv_events(&ev);
    }
    let mean = n as f64 / WORKERS as f64;
    let max = per_worker.iter().copied().max().unwrap_or(0) as f64;
    (
        differ as f64 / n as f64,
        hit as f64 / total as f64,
        max / mean,
    )
}
