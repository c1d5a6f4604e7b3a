//! KV offload tiers (issue 9) in the scheduler: blocks evicted from the engine's pool (G1)
//! are copied out to an [`OffloadStore`] (G2 host memory, G3 disk), and a new prompt whose
//! prefix continues in G2/G3 gets those blocks onboarded back before its prefill.
//!
//! Ordering, which is what makes the copies safe: the engine actor handles its mailbox in
//! order, and after each `schedule()` the scheduler actor sends (1) the reads of the blocks
//! that step evicted, (2) the onboarding writes, then (3) the step's `Forward`. So an
//! evicted block is read before anything overwrites it, and an onboarded block is written
//! before any step reads it. A sequence waiting for its onboarding is skipped by the
//! scheduler (other sequences keep running); the engine does the copy between steps and
//! the sequence resumes with the onboarded blocks counted as computed. Blocks that fail
//! their check (disk corruption) end the onboarded run: the rest is recomputed.

use crate::actor::{EngineActor, SchedulerActor};
use crate::remote::ReadKvBlocks;
use crate::scheduler::Scheduler;
use actix::prelude::*;
use ferrite_engine::{Batch, Executor};
use ferrite_kv::{BlockPool, BlockSource, Evicted, OffloadStore, TierConfig};
use ferrite_protocol::{BlockHash, BlockId, KvEvent, KvEventData, RequestId, StorageTier};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

/// Offload tier sizes of a scheduler; the block size in bytes comes from the engine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvTierOptions {
    /// G2 bytes (0: none).
    pub host_bytes: u64,
    /// G3 bytes (0: none).
    pub disk_bytes: u64,
    /// G3 folder (default: `$TMPDIR/ferrite-kvbm`).
    pub disk_dir: Option<PathBuf>,
    /// A G2 victim goes to G3 only if hit at least this often.
    pub min_hits_for_disk: u32,
}

impl KvTierOptions {
    pub fn is_enabled(&self) -> bool {
        self.host_bytes > 0 || self.disk_bytes > 0
    }

    /// The store's config for blocks of `bytes_per_block` bytes.
    pub fn tier_config(&self, bytes_per_block: usize) -> TierConfig {
        TierConfig {
            bytes_per_block,
            host_bytes: self.host_bytes,
            disk_bytes: self.disk_bytes,
            disk_dir: Some(
                self.disk_dir
                    .clone()
                    .unwrap_or_else(|| std::env::temp_dir().join("ferrite-kvbm")),
            ),
            min_hits_for_disk: self.min_hits_for_disk,
        }
    }
}

/// Builds the scheduler's store when its config asks for tiers and the engine's cache can
/// be copied; otherwise returns it unchanged (with a warning when tiers were asked for).
pub fn attach_kv_tiers(
    mut scheduler: Scheduler,
    executor: &dyn Executor,
    labels: &[(String, String)],
) -> Scheduler {
    let Some(opts) = scheduler
        .cfg
        .kv_tiers
        .clone()
        .filter(KvTierOptions::is_enabled)
    else {
        return scheduler;
    };
    let Some(layout) = executor.kv_block_layout() else {
        tracing::warn!(
            "KV offload tiers asked for, but this engine cannot copy KV blocks; running without them"
        );
        return scheduler;
    };
    let store = OffloadStore::new(opts.tier_config(layout.bytes_per_block))
        .with_metric_labels(labels.to_vec());
    tracing::info!(
        host_blocks = store.config().host_blocks(),
        disk_blocks = store.config().disk_blocks(),
        bytes_per_block = layout.bytes_per_block,
        "KV offload tiers ready"
    );
    scheduler.enable_kv_tiers(store);
    scheduler
}

/// Onboarding of one sequence: copy `sources` into `blocks` (same order).
#[derive(Debug)]
pub struct OnboardJob {
    pub request_id: RequestId,
    /// Distinguishes this onboarding from a later one of the same request.
    pub serial: u64,
    pub blocks: Vec<BlockId>,
    pub sources: Vec<BlockSource>,
    pub bytes_per_block: usize,
}

/// What an onboarding did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OnboardResult {
    pub request_id: RequestId,
    pub serial: u64,
    /// Leading blocks now in the engine (the rest is recomputed).
    pub ok_blocks: usize,
    /// Onboarded blocks per source tier (index: `StorageTier::index`).
    pub per_tier: [u64; 3],
    /// Blocks that failed their integrity check.
    pub corrupt: u64,
    pub seconds: f64,
    /// Seconds per source tier: its reads plus its share (by blocks) of the write.
    pub per_tier_seconds: [f64; 3],
    pub error: Option<String>,
}

/// Runs an onboarding on `executor` (the engine thread): reads every source in order,
/// stopping at the first that fails its check, then writes the good ones in one call.
pub fn run_onboard(executor: &mut dyn Executor, job: &OnboardJob) -> OnboardResult {
    let t0 = Instant::now();
    let bpb = job.bytes_per_block;
    let mut buf = vec![0u8; job.sources.len() * bpb];
    let mut r = OnboardResult {
        request_id: job.request_id,
        serial: job.serial,
        ..Default::default()
    };
    let mut ok = 0;
    for (src, chunk) in job.sources.iter().zip(buf.chunks_exact_mut(bpb.max(1))) {
        let t = Instant::now();
        let res = src.read_into(chunk);
        r.per_tier_seconds[src.tier().index()] += t.elapsed().as_secs_f64();
        match res {
            Ok(()) => {
                r.per_tier[src.tier().index()] += 1;
                ok += 1;
            }
            Err(e) => {
                tracing::warn!(request_id = %job.request_id, error = %e,
                    "offloaded KV block failed its check; recomputing from there");
                r.corrupt += 1;
                break;
            }
        }
    }
    let t = Instant::now();
    if ok > 0
        && let Err(e) = executor.write_kv_blocks(&job.blocks[..ok], &buf[..ok * bpb])
    {
        r.error = Some(e.to_string());
        r.per_tier = [0; 3];
        ok = 0;
    }
    let write = t.elapsed().as_secs_f64();
    if ok > 0 {
        for (secs, n) in r.per_tier_seconds.iter_mut().zip(r.per_tier) {
            *secs += write * n as f64 / ok as f64;
        }
    }
    r.ok_blocks = ok;
    r.seconds = t0.elapsed().as_secs_f64();
    r
}

/// The offload state of a [`Scheduler`].
#[derive(Debug)]
pub(crate) struct Tiers {
    store: OffloadStore,
    /// Sequences waiting for their onboarding → serial of the job.
    onboarding: HashMap<RequestId, (u64, usize)>,
    jobs: Vec<OnboardJob>,
    next_serial: u64,
    /// Sequences whose onboarding completed since the last [`Scheduler::extend_batch`].
    onboarded: Vec<RequestId>,
}

/// Of `hashes` (the reusable prompt blocks), how many lead in G1 and how many follow them
/// in G2/G3.
pub(crate) fn split_match(
    pool: &BlockPool,
    tiers: Option<&Tiers>,
    hashes: &[BlockHash],
) -> (usize, usize) {
    let g1 = pool.match_prefix(hashes);
    let Some(t) = tiers else {
        return (g1, 0);
    };
    let lower = t.store.match_prefix(&hashes[g1..]);
    let mut per = [g1 as u64, 0, 0];
    for tier in &lower {
        per[tier.index()] += 1;
    }
    let miss = (hashes.len() - g1 - lower.len()) as u64;
    t.store.record_lookup(per, miss);
    (g1, lower.len())
}

impl Scheduler {
    /// Turns offloading on with `store` (see the module docs).
    pub fn enable_kv_tiers(&mut self, store: OffloadStore) {
        self.pool.record_evictions(true);
        self.tiers = Some(Tiers {
            store,
            onboarding: HashMap::new(),
            jobs: Vec::new(),
            next_serial: 1,
            onboarded: Vec::new(),
        });
    }

    /// The offload store, if tiers are on.
    pub fn kv_tiers(&self) -> Option<&OffloadStore> {
        self.tiers.as_ref().map(|t| &t.store)
    }

    /// Called at the start of `schedule`: evictions made outside a step (e.g. remote
    /// prefill reservations, whose blocks may be written by a transfer at any time) are
    /// not offloaded, so only the step's own evictions are read before its forward.
    pub(crate) fn discard_stray_evictions(&mut self) {
        if self.tiers.is_some() {
            let _ = self.pool.take_evictions();
        }
    }

    /// After admission of `id` (its first `g1` blocks reused from G1, `lower` more found in
    /// G2/G3): plans the onboarding. True when the sequence now waits for it.
    pub(crate) fn begin_onboard(&mut self, id: RequestId, g1: usize, lower: usize) -> bool {
        let Some(t) = self.tiers.as_mut() else {
            return false;
        };
        t.onboarding.remove(&id);
        if lower == 0 {
            return false;
        }
        let Some(seq) = self.seqs.get(&id) else {
            return false;
        };
        let (Some(blocks), Some(hashes)) = (seq.blocks.as_ref(), seq.hashes.get(g1..g1 + lower))
        else {
            return false;
        };
        let Some(dst) = blocks.blocks().get(g1..g1 + lower) else {
            return false;
        };
        let taken = t.store.take(hashes);
        if taken.is_empty() {
            return false;
        }
        let dst = dst[..taken.len()].to_vec();
        for (b, (_, _, hits)) in dst.iter().zip(&taken) {
            self.pool.add_hits(*b, hits.saturating_add(1));
        }
        let serial = t.next_serial;
        t.next_serial += 1;
        t.onboarding.insert(id, (serial, g1));
        t.jobs.push(OnboardJob {
            request_id: id,
            serial,
            blocks: dst,
            sources: taken.into_iter().map(|(_, s, _)| s).collect(),
            bytes_per_block: t.store.bytes_per_block(),
        });
        true
    }

    /// Waits for queued disk-tier writes and applies their outcome (tests, benchmarks).
    pub fn flush_kv_tiers(&mut self) {
        if let Some(t) = self.tiers.as_mut() {
            t.store.flush_disk();
        }
    }

    /// Whether `id` waits for its onboarding (the scheduler skips it meanwhile).
    pub(crate) fn is_onboarding(&self, id: &RequestId) -> bool {
        self.tiers
            .as_ref()
            .is_some_and(|t| t.onboarding.contains_key(id))
    }

    /// Onboardings planned since the last call; run each with [`run_onboard`] before the
    /// next forward pass and report with [`Scheduler::on_onboarded`].
    pub fn take_onboard_jobs(&mut self) -> Vec<OnboardJob> {
        self.tiers
            .as_mut()
            .map(|t| std::mem::take(&mut t.jobs))
            .unwrap_or_default()
    }

    /// Applies an onboarding's result: the onboarded blocks count as computed (and are
    /// registered in G1); the sequence is scheduled again. Stale results are ignored.
    pub fn on_onboarded(&mut self, r: &OnboardResult) {
        let Some(t) = self.tiers.as_mut() else {
            return;
        };
        let Some(&(serial, g1)) = t.onboarding.get(&r.request_id) else {
            return;
        };
        if serial != r.serial {
            return;
        }
        t.onboarding.remove(&r.request_id);
        for tier in [StorageTier::Host, StorageTier::Disk] {
            let n = r.per_tier[tier.index()];
            if n > 0 || (r.corrupt > 0 && tier == StorageTier::Disk) {
                t.store.record_onboard(
                    tier,
                    n,
                    r.per_tier_seconds[tier.index()],
                    if tier == StorageTier::Disk {
                        r.corrupt
                    } else {
                        0
                    },
                );
            }
        }
        if let Some(e) = &r.error {
            tracing::warn!(request_id = %r.request_id, error = %e, "onboarding failed; recomputing");
        }
        let bs = self.cfg.block_size as usize;
        let Some(seq) = self.seqs.get_mut(&r.request_id) else {
            return;
        };
        if seq.cancelled || seq.num_computed != g1 * bs {
            return;
        }
        let tokens = r.ok_blocks * bs;
        seq.num_computed += tokens;
        self.stats.prefix_hit_tokens += tokens as u64;
        if !seq.sent_first {
            seq.cached_tokens = Some(seq.num_computed as u32);
        }
        let full = (seq.num_computed / bs).min(seq.hashes.len());
        if let Some(blocks) = seq.blocks.as_mut() {
            self.pool.commit_full_blocks(blocks, &seq.hashes[..full]);
        }
        if let Some(t) = self.tiers.as_mut() {
            t.onboarded.push(r.request_id);
        }
    }

    /// Adds to `batch` — built by the last `schedule` and not run yet — the next prefill
    /// chunks of the sequences whose onboarding completed since (within the step's token
    /// budget), so an onboarded sequence starts in the step its copies precede instead of
    /// the one after. Returns how many were added.
    pub fn extend_batch(&mut self, batch: &mut Batch) -> usize {
        let ids = match self.tiers.as_mut() {
            Some(t) => std::mem::take(&mut t.onboarded),
            None => return 0,
        };
        let mut budget = self
            .cfg
            .max_batched_tokens
            .saturating_sub(batch.num_tokens());
        let mut added = 0;
        for id in ids {
            let Some(seq) = self.seqs.get(&id) else {
                continue;
            };
            if budget == 0
                || seq.cancelled
                || seq.prefill_done
                || self.is_onboarding(&id)
                || batch.seqs.iter().any(|s| s.request_id == id)
            {
                continue;
            }
            let n = seq.pending().min(budget).min(self.cfg.max_prefill_chunk);
            if n == 0 {
                continue;
            }
            if let Some(input) = self.input_for(id, n) {
                budget -= n;
                self.stats.computed_tokens += n as u64;
                batch.seqs.push(input);
                added += 1;
            }
        }
        added
    }

    /// Blocks the last `schedule` evicted from G1 that the tiers want: read their bytes
    /// (before the step's forward) and hand them to [`Scheduler::on_offload_read`].
    pub fn take_offload_reads(&mut self) -> Vec<Evicted> {
        let Some(t) = self.tiers.as_mut() else {
            return Vec::new();
        };
        let mut ev = self.pool.take_evictions();
        if !t.store.is_enabled() {
            ev.clear();
        }
        ev
    }

    /// Offloads the bytes read for `evicted` (`Err`: the read failed; nothing is offloaded).
    pub fn on_offload_read(&mut self, evicted: &[Evicted], data: Result<Vec<u8>, String>) {
        let Some(t) = self.tiers.as_mut() else {
            return;
        };
        let data = match data {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, blocks = evicted.len(), "reading evicted KV blocks failed; not offloaded");
                return;
            }
        };
        let bpb = t.store.bytes_per_block();
        if data.len() != evicted.len() * bpb {
            tracing::warn!(
                len = data.len(),
                "evicted KV read has the wrong size; not offloaded"
            );
            return;
        }
        for (e, chunk) in evicted.iter().zip(data.chunks_exact(bpb.max(1))) {
            t.store.offload(e.hash, chunk.to_vec(), e.hits);
        }
    }

    /// Appends the tiers' events to `events`, numbered after them.
    pub(crate) fn append_tier_events(&mut self, events: &mut Vec<KvEvent>) {
        let Some(t) = self.tiers.as_mut() else {
            return;
        };
        for (tier, data) in t.store.take_events() {
            events.push(KvEvent {
                event_id: self.next_event_id,
                data,
                storage_tier: tier,
            });
            self.next_event_id += 1;
        }
    }

    /// After a `Snapshot` in a dump: the lower tiers' blocks as `Stored` events.
    pub(crate) fn append_tier_snapshot(&mut self, events: &mut Vec<KvEvent>) {
        let Some(t) = self.tiers.as_mut() else {
            return;
        };
        let _ = t.store.take_events(); // covered by the snapshot
        for (tier, blocks) in t.store.snapshot() {
            if blocks.is_empty() {
                continue;
            }
            events.push(KvEvent {
                event_id: self.next_event_id,
                data: KvEventData::Stored {
                    parent: None,
                    blocks,
                },
                storage_tier: tier,
            });
            self.next_event_id += 1;
        }
    }
}

/// Runs an onboarding on the engine thread.
#[derive(Message)]
#[rtype(result = "OnboardResult")]
pub struct OnboardBlocks(pub OnboardJob);

impl Handler<OnboardBlocks> for EngineActor {
    type Result = MessageResult<OnboardBlocks>;

    fn handle(&mut self, msg: OnboardBlocks, _: &mut Self::Context) -> Self::Result {
        let job = msg.0;
        let Some(ex) = self.executor_mut() else {
            return MessageResult(OnboardResult {
                request_id: job.request_id,
                serial: job.serial,
                error: Some("engine has no executor".into()),
                ..Default::default()
            });
        };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_onboard(ex.as_mut(), &job)
        }))
        .unwrap_or_else(|_| OnboardResult {
            request_id: job.request_id,
            serial: job.serial,
            error: Some("engine panicked writing onboarded KV".into()),
            ..Default::default()
        });
        MessageResult(r)
    }
}

/// Tells a scheduler actor which engine copies its KV blocks (at start and after an
/// engine restart).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetKvEngine(pub Addr<EngineActor>);

impl Handler<SetKvEngine> for SchedulerActor {
    type Result = ();

    fn handle(&mut self, msg: SetKvEngine, _: &mut Context<Self>) {
        self.kv_engine = Some(msg.0);
    }
}

impl SchedulerActor {
    /// The engine that copies KV blocks for the offload tiers.
    pub fn with_kv_engine(mut self, engine: Addr<EngineActor>) -> Self {
        self.kv_engine = Some(engine);
        self
    }

    /// After `schedule()`, before the step's `Forward`: sends the reads of evicted blocks
    /// and the onboarding jobs to the engine (its mailbox keeps this order). Returns the
    /// number of onboarding jobs sent; when the step is held for them (`held`), the last
    /// result extends it with the onboarded sequences and sends it.
    pub(crate) fn dispatch_kv_copies(&mut self, ctx: &mut Context<Self>) -> usize {
        let Some(engine) = self.kv_engine.clone() else {
            // No engine to copy with: planned onboardings become recomputes.
            for job in self.scheduler_mut().take_onboard_jobs() {
                self.scheduler_mut().on_onboarded(&OnboardResult {
                    request_id: job.request_id,
                    serial: job.serial,
                    error: Some("no engine to copy KV blocks".into()),
                    ..Default::default()
                });
            }
            return 0;
        };
        let evicted = self.scheduler_mut().take_offload_reads();
        if !evicted.is_empty() {
            let blocks: Vec<BlockId> = evicted.iter().map(|e| e.block).collect();
            let fut = engine.send(ReadKvBlocks(blocks));
            ctx.spawn(fut.into_actor(self).map(move |res, act, _| {
                let data = res.map_err(|e| e.to_string()).and_then(|r| r);
                act.scheduler_mut().on_offload_read(&evicted, data);
            }));
        }
        let jobs = self.scheduler_mut().take_onboard_jobs();
        let n = jobs.len();
        for job in jobs {
            let (id, serial) = (job.request_id, job.serial);
            let fut = engine.send(OnboardBlocks(job));
            ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
                let r = res.unwrap_or_else(|e| OnboardResult {
                    request_id: id,
                    serial,
                    error: Some(format!("engine gone: {e}")),
                    ..Default::default()
                });
                act.scheduler_mut().on_onboarded(&r);
                act.release_held(ctx);
                act.kick_step(ctx);
            }));
        }
        n
    }

    /// One onboarding of the held step reported back; after the last, the step is extended
    /// with the onboarded sequences and sent.
    fn release_held(&mut self, ctx: &mut Context<Self>) {
        let Some((_, left)) = self.held.as_mut() else {
            return;
        };
        *left = left.saturating_sub(1);
        if *left > 0 {
            return;
        }
        if let Some((mut batch, _)) = self.held.take() {
            self.scheduler_mut().extend_batch(&mut batch);
            self.send_forward(batch, ctx);
        }
    }
}
