//! Disaggregated prefill/decode in one process (in-memory bus and discovery, KV over
//! loopback TCP) with the real CPU engine on the bundled stories260k: outputs equal the
//! aggregated worker's token for token; cancels and fallbacks leak no blocks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ferrite_cpu::{CpuExecutor, CpuOptions};
use ferrite_engine::{Executor, ExecutorFactory};
use ferrite_protocol::{
    ControlMessage, DpRank, EngineOutput, ErrorKind, FinishReason, PreprocessedRequest, RequestId,
    SamplingParams, StopConditions, TokenId, WorkerRole, codec,
};
use ferrite_runtime::{
    Bus, Discovery, MemBus, MemDiscovery, StreamError, StreamOptions, request_stream,
};
use ferrite_worker::{TransportKind, WorkerConfig, WorkerHandle, start_worker_with_factory};
use futures::StreamExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const NS: &str = "dis";

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../services/ferrite/assets/stories260k")
}

fn cpu_factory() -> ExecutorFactory {
    slow_kv_factory(None)
}

/// The CPU engine; with `slow`, every `read_kv_blocks` first bumps the counter, then takes
/// 300 ms (a transfer that can be cancelled midway).
fn slow_kv_factory(slow: Option<Arc<AtomicUsize>>) -> ExecutorFactory {
    Arc::new(move |_rank: DpRank| {
        let opts = CpuOptions {
            num_kv_blocks: 128,
            block_size: 16,
            threads: 1,
            f32_activations: false,
        };
        let e = CpuExecutor::load(&model_dir(), opts)
            .map_err(|e| ferrite_engine::EngineError::Backend(e.to_string()))?;
        Ok(match &slow {
            Some(reads) => Box::new(SlowKv {
                inner: Box::new(e),
                reads: reads.clone(),
            }) as Box<dyn Executor>,
            None => Box::new(e) as Box<dyn Executor>,
        })
    })
}

struct SlowKv {
    inner: Box<dyn Executor>,
    reads: Arc<AtomicUsize>,
}

impl Executor for SlowKv {
    fn info(&self) -> ferrite_engine::ExecutorInfo {
        self.inner.info()
    }
    fn forward(
        &mut self,
        batch: &ferrite_engine::Batch,
    ) -> ferrite_engine::Result<ferrite_engine::BatchOutput> {
        self.inner.forward(batch)
    }
    fn kv_block_layout(&self) -> Option<ferrite_engine::KvBlockLayout> {
        self.inner.kv_block_layout()
    }
    fn read_kv_blocks(
        &mut self,
        blocks: &[ferrite_protocol::BlockId],
        out: &mut [u8],
    ) -> ferrite_engine::Result<()> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
        self.inner.read_kv_blocks(blocks, out)
    }
    fn write_kv_blocks(
        &mut self,
        blocks: &[ferrite_protocol::BlockId],
        data: &[u8],
    ) -> ferrite_engine::Result<()> {
        self.inner.write_kv_blocks(blocks, data)
    }
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

    async fn worker_with(
        &self,
        role: WorkerRole,
        factory: ExecutorFactory,
        tweak: impl FnOnce(&mut WorkerConfig),
    ) -> WorkerHandle {
        let mut cfg = WorkerConfig::new("m", "/nowhere");
        cfg.namespace = NS.into();
        cfg.role = role;
        cfg.publish_interval = Duration::from_millis(20);
        tweak(&mut cfg);
        start_worker_with_factory(cfg, factory, self.bus.clone(), self.discovery.clone())
            .await
            .unwrap()
    }

    async fn worker(
        &self,
        role: WorkerRole,
        tweak: impl FnOnce(&mut WorkerConfig),
    ) -> WorkerHandle {
        let mut cfg = WorkerConfig::new("m", "/nowhere");
        cfg.namespace = NS.into();
        cfg.role = role;
        cfg.publish_interval = Duration::from_millis(20);
        tweak(&mut cfg);
        start_worker_with_factory(cfg, cpu_factory(), self.bus.clone(), self.discovery.clone())
            .await
            .unwrap()
    }
}

fn request(seed: u32, prompt_len: u32, max_tokens: u32) -> PreprocessedRequest {
    PreprocessedRequest {
        request_id: RequestId::new(),
        model: "m".into(),
        token_ids: (0..prompt_len)
            .map(|i| 1 + (i * 13 + seed * 7) % 500)
            .collect(),
        generated_so_far: 0,
        sampling: SamplingParams::default(),
        stop: StopConditions {
            max_tokens,
            ignore_eos: true,
            ..Default::default()
        },
        dp_rank: DpRank(0),
        extra_hash_key: 0,
        prompt_embeds: None,
    }
}

async fn run(
    bus: &Arc<dyn Bus>,
    subject: &str,
    req: &PreprocessedRequest,
) -> Result<(Vec<TokenId>, FinishReason), StreamError> {
    let mut s = request_stream::<_, EngineOutput>(bus, subject, req, StreamOptions::default())
        .await
        .unwrap();
    let mut tokens = Vec::new();
    while let Some(item) = tokio::time::timeout(Duration::from_secs(20), s.next())
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

async fn active_blocks(w: &WorkerHandle) -> usize {
    w.rank_stats()
        .await
        .unwrap()
        .iter()
        .map(|s| s.active_blocks)
        .sum()
}

async fn computed_tokens(w: &WorkerHandle) -> u64 {
    w.rank_stats()
        .await
        .unwrap()
        .iter()
        .map(|s| s.computed_tokens)
        .sum()
}

/// Waits until both workers hold no active block (or fails after 5 s).
async fn assert_no_leak(workers: &[&WorkerHandle]) {
    for _ in 0..100 {
        let mut total = 0;
        for w in workers {
            total += active_blocks(w).await;
        }
        if total == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for w in workers {
        assert_eq!(
            active_blocks(w).await,
            0,
            "blocks leaked on {}",
            w.record.instance_id
        );
    }
}

/// The decode worker learns of prefill instances through a discovery watch.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[actix_rt::test]
async fn disaggregated_greedy_output_equals_aggregated_over_tcp() {
    equal_to_aggregated(TransportKind::Tcp, "tcp").await;
}

#[actix_rt::test]
async fn disaggregated_greedy_output_equals_aggregated_over_ucx() {
    if !TransportKind::ucx_available() {
        eprintln!("UCX not installed: skipped");
        return;
    }
    equal_to_aggregated(TransportKind::Ucx, "ucx").await;
}

async fn equal_to_aggregated(kind: TransportKind, advertised: &str) {
    let w = World::new();
    let agg = w
        .worker(WorkerRole::Agg, |c| c.component = "agg".into())
        .await;
    let prefill = w
        .worker(WorkerRole::Prefill, |c| c.disagg.kv_transport = kind)
        .await;
    let decode = w
        .worker(WorkerRole::Decode, |c| c.disagg.kv_transport = kind)
        .await;
    assert_eq!(prefill.record.component, "prefill");
    let transfer = decode.record.transfer.clone().unwrap();
    assert_eq!(transfer.kind, advertised);
    settle().await;

    for (seed, len) in [(1, 5), (2, 37), (3, 100)] {
        let r = request(seed, len, 24);
        let want = run(&w.bus, &agg.record.subject, &r).await.unwrap();
        let before = computed_tokens(&prefill).await;
        let mut r2 = r.clone();
        r2.request_id = RequestId::new();
        let got = run(&w.bus, &decode.record.subject, &r2).await.unwrap();
        assert_eq!(got, want, "prompt of {len} tokens");
        assert_eq!(got.0.len(), 24);
        let on_prefill = computed_tokens(&prefill).await - before;
        assert_eq!(
            on_prefill, len as u64,
            "the prefill worker computed the prompt"
        );
    }
    // The decode worker computed only decode tokens: 23 per request.
    assert_eq!(computed_tokens(&decode).await, 3 * 23);
    assert_no_leak(&[&prefill, &decode, &agg]).await;
}

#[actix_rt::test]
async fn short_or_cached_prompts_prefill_locally_and_no_prefill_means_aggregated() {
    let w = World::new();
    let decode = w
        .worker(WorkerRole::Decode, |c| {
            c.disagg.max_local_prefill_tokens = 20
        })
        .await;
    // No prefill instance alive: aggregated.
    let r = request(9, 50, 8);
    let alone = run(&w.bus, &decode.record.subject, &r).await.unwrap();
    assert_eq!(alone.0.len(), 8);
    let prefill = w.worker(WorkerRole::Prefill, |_| {}).await;
    settle().await;
    // Short prompt: local.
    let before = computed_tokens(&prefill).await;
    run(&w.bus, &decode.record.subject, &request(4, 12, 4))
        .await
        .unwrap();
    assert_eq!(computed_tokens(&prefill).await, before);
    // Same 50-token prompt again: 48 tokens cached here, 2 left → local.
    let mut again = r.clone();
    again.request_id = RequestId::new();
    let cached = run(&w.bus, &decode.record.subject, &again).await.unwrap();
    assert_eq!(cached, alone);
    assert_eq!(computed_tokens(&prefill).await, before);
    // A new long prompt goes to the prefill worker.
    run(&w.bus, &decode.record.subject, &request(5, 60, 4))
        .await
        .unwrap();
    assert_eq!(computed_tokens(&prefill).await, before + 60);
    assert_no_leak(&[&prefill, &decode]).await;
}

#[actix_rt::test]
async fn enforce_disagg_without_prefill_is_unavailable() {
    let w = World::new();
    let decode = w
        .worker(WorkerRole::Decode, |c| c.disagg.enforce_disagg = true)
        .await;
    let err = run(&w.bus, &decode.record.subject, &request(1, 30, 4))
        .await
        .unwrap_err();
    match err {
        StreamError::Remote(info) => assert_eq!(info.kind, ErrorKind::Unavailable),
        e => panic!("expected unavailable, got {e:?}"),
    }
    assert_no_leak(&[&decode]).await;
}

#[actix_rt::test]
async fn cancel_during_remote_prefill_frees_blocks_on_both_workers() {
    let w = World::new();
    let prefill = w.worker(WorkerRole::Prefill, |_| {}).await;
    let decode = w.worker(WorkerRole::Decode, |_| {}).await;
    settle().await;
    for delay_ms in [0u64, 2, 5, 10, 20] {
        let r = request(delay_ms as u32, 400, 50);
        let bus = w.bus.clone();
        let subject = decode.record.subject.clone();
        let r2 = r.clone();
        let client = tokio::spawn(async move { run(&bus, &subject, &r2).await });
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let cancel = codec::encode(&ControlMessage::Cancel {
            request_id: r.request_id,
        })
        .unwrap();
        w.bus
            .publish(&decode.record.control_subject, cancel.into())
            .await
            .unwrap();
        let res = client.await.unwrap();
        if let Ok((_, f)) = &res {
            assert!(
                *f == FinishReason::Cancelled || *f == FinishReason::Length,
                "finish {f:?}"
            );
        }
        assert_no_leak(&[&prefill, &decode]).await;
    }
    // The pair still serves afterwards.
    let ok = run(&w.bus, &decode.record.subject, &request(77, 40, 5))
        .await
        .unwrap();
    assert_eq!(ok.0.len(), 5);
    assert_no_leak(&[&prefill, &decode]).await;
}

#[actix_rt::test]
async fn cancel_during_the_transfer_frees_blocks_on_both_workers() {
    for kind in [TransportKind::Tcp, TransportKind::Ucx] {
        if kind == TransportKind::Ucx && !TransportKind::ucx_available() {
            continue;
        }
        let w = World::new();
        let reads = Arc::new(AtomicUsize::new(0));
        let prefill = w
            .worker_with(
                WorkerRole::Prefill,
                slow_kv_factory(Some(reads.clone())),
                |c| c.disagg.kv_transport = kind,
            )
            .await;
        let decode = w
            .worker(WorkerRole::Decode, |c| c.disagg.kv_transport = kind)
            .await;
        settle().await;
        let r = request(3, 200, 20);
        let (bus, subject, r2) = (w.bus.clone(), decode.record.subject.clone(), r.clone());
        let client = tokio::spawn(async move { run(&bus, &subject, &r2).await });
        // Wait until the prefill worker copies the KV out (the transfer has begun).
        for _ in 0..200 {
            if reads.load(Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            reads.load(Ordering::SeqCst),
            1,
            "the transfer never started"
        );
        let cancel = codec::encode(&ControlMessage::Cancel {
            request_id: r.request_id,
        })
        .unwrap();
        w.bus
            .publish(&decode.record.control_subject, cancel.into())
            .await
            .unwrap();
        let (tokens, finish) = client.await.unwrap().unwrap();
        assert_eq!(finish, FinishReason::Cancelled, "{kind:?}");
        assert!(tokens.is_empty(), "no token before the cancel: {tokens:?}");
        assert_no_leak(&[&prefill, &decode]).await;
        // Both still work together afterwards.
        let ok = run(&w.bus, &decode.record.subject, &request(8, 64, 4))
            .await
            .unwrap();
        assert_eq!(ok.0.len(), 4);
        assert_no_leak(&[&prefill, &decode]).await;
    }
}

#[actix_rt::test]
async fn the_prefill_instance_holding_the_prefix_is_chosen() {
    let w = World::new();
    let p1 = w.worker(WorkerRole::Prefill, |_| {}).await;
    let p2 = w.worker(WorkerRole::Prefill, |_| {}).await;
    let decode = w.worker(WorkerRole::Decode, |_| {}).await;
    settle().await;
    let r = request(11, 100, 4);
    let first = run(&w.bus, &decode.record.subject, &r).await.unwrap();
    let (c1, c2) = (computed_tokens(&p1).await, computed_tokens(&p2).await);
    assert_eq!(c1 + c2, 100, "one prefill worker computed the prompt");
    let holder_is_p1 = c1 == 100;
    settle().await; // its KV events reach the decode worker
    for _ in 0..3 {
        let mut again = r.clone();
        again.request_id = RequestId::new();
        let out = run(&w.bus, &decode.record.subject, &again).await.unwrap();
        assert_eq!(out, first);
    }
    let (d1, d2) = (
        computed_tokens(&p1).await - c1,
        computed_tokens(&p2).await - c2,
    );
    // 96 of 100 tokens are cached on the holder: 4 computed per request, nothing elsewhere.
    if holder_is_p1 {
        assert_eq!((d1, d2), (12, 0));
    } else {
        assert_eq!((d1, d2), (0, 12));
    }
    assert_no_leak(&[&p1, &p2, &decode]).await;
}
