//! Offload tiers through the real actors (`EngineSupervisor` → `SchedulerActor` →
//! `EngineActor`): a conversation's blocks evicted from G1 are read out before the step
//! that reuses them, kept in G2 (or G3), and onboarded back for its next turn. The fake
//! engine checks every cached slot it reads holds the right (token, position), so a copy
//! landing in the wrong block, too late, or with the wrong bytes fails the test.
#![allow(clippy::unwrap_used)]

mod common;

use common::request;
use ferrite_engine::{
    Batch, BatchOutput, EngineError, Executor, ExecutorFactory, ExecutorInfo, KvBlockLayout,
    KvCacheSpec, SeqOutput, slot_for,
};
use ferrite_protocol::{
    BlockId, DpRank, EngineOutput, ErrorInfo, PreprocessedRequest, RequestId, StorageTier,
};
use ferrite_scheduler::offload::KvTierOptions;
use ferrite_scheduler::{
    EngineSupervisor, Enqueue, GetStats, Scheduler, SchedulerConfig, SupervisorConfig, TakeKvEvents,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc::unbounded_channel;

const BS: u32 = 4;
const BLOCKS: u32 = 8;
const EMPTY: u32 = u32::MAX;

/// A fake engine whose cache holds (token, position) per slot and whose copies move those.
struct SlotExec {
    cache: Vec<(u32, u32)>,
    errors: Arc<AtomicUsize>,
}

fn next(context: &[u32]) -> u32 {
    let s: u64 = context
        .iter()
        .enumerate()
        .map(|(i, t)| (i as u64 + 1) * u64::from(*t))
        .sum();
    3 + (s % 97) as u32
}

impl SlotExec {
    fn run(&mut self, batch: &Batch) -> Result<BatchOutput, String> {
        let mut outputs = Vec::new();
        for s in &batch.seqs {
            let mut ctx = Vec::new();
            for p in 0..s.start_pos {
                let slot = slot_for(&s.block_table, BS, p).ok_or("no slot")? as usize;
                match self.cache[slot] {
                    (t, pos) if pos == p => ctx.push(t),
                    other => return Err(format!("slot {slot} for position {p} holds {other:?}")),
                }
            }
            for (t, slot) in s.tokens.iter().zip(&s.slot_mapping) {
                self.cache[*slot as usize] = (*t, ctx.len() as u32);
                ctx.push(*t);
            }
            if s.sample {
                outputs.push(SeqOutput {
                    request_id: s.request_id,
                    token: next(&ctx),
                    logprob: None,
                });
            }
        }
        Ok(BatchOutput { outputs })
    }
}

impl Executor for SlotExec {
    fn info(&self) -> ExecutorInfo {
        ExecutorInfo {
            name: "slot-checking fake".into(),
            vocab_size: 128,
            max_context: 256,
            kv: KvCacheSpec {
                num_blocks: BLOCKS,
                block_size: BS,
            },
            embed_width: None,
        }
    }

    fn forward(&mut self, batch: &Batch) -> ferrite_engine::Result<BatchOutput> {
        self.run(batch).map_err(|e| {
            self.errors.fetch_add(1, Ordering::SeqCst);
            EngineError::InvalidBatch(e)
        })
    }

    fn kv_block_layout(&self) -> Option<KvBlockLayout> {
        Some(KvBlockLayout {
            num_layers: 1,
            num_kv_heads: 1,
            head_dim: 2,
            block_size: BS,
            dtype: "u32".into(),
            bytes_per_block: BS as usize * 8,
        })
    }

    fn read_kv_blocks(&mut self, blocks: &[BlockId], out: &mut [u8]) -> ferrite_engine::Result<()> {
        let mut o = out.chunks_exact_mut(4);
        for b in blocks {
            for s in b.0 * BS..(b.0 + 1) * BS {
                let (t, p) = self.cache[s as usize];
                o.next().unwrap().copy_from_slice(&t.to_le_bytes());
                o.next().unwrap().copy_from_slice(&p.to_le_bytes());
            }
        }
        Ok(())
    }

    fn write_kv_blocks(&mut self, blocks: &[BlockId], data: &[u8]) -> ferrite_engine::Result<()> {
        let mut d = data
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        for b in blocks {
            for s in b.0 * BS..(b.0 + 1) * BS {
                self.cache[s as usize] = (d.next().unwrap(), d.next().unwrap());
            }
        }
        Ok(())
    }
}

/// Runs turn 1, three fillers that evict it from G1, then turn 2; returns (turn 2 tokens,
/// turn 2 cached tokens, engine errors, KV event tiers seen).
async fn conversation(tiers: Option<KvTierOptions>) -> (Vec<u32>, u32, usize, Vec<StorageTier>) {
    let errors = Arc::new(AtomicUsize::new(0));
    let e2 = errors.clone();
    let factory: ExecutorFactory = Arc::new(move |_| {
        Ok(Box::new(SlotExec {
            cache: vec![(EMPTY, EMPTY); (BLOCKS * BS) as usize],
            errors: e2.clone(),
        }) as Box<dyn Executor>)
    });
    let first = factory(DpRank(0)).unwrap();
    let cfg = SchedulerConfig {
        kv_tiers: tiers,
        ..SchedulerConfig::new(BS, BLOCKS, 256)
    };
    let rank = EngineSupervisor::start(
        SupervisorConfig::new(DpRank(0)),
        first,
        factory,
        Scheduler::new(cfg).unwrap(),
    );
    let run = |req: PreprocessedRequest| {
        let rank = rank.clone();
        async move {
            let (tx, mut rx) = unbounded_channel::<Result<EngineOutput, ErrorInfo>>();
            rank.scheduler
                .send(Enqueue { req, tx })
                .await
                .unwrap()
                .unwrap();
            let (mut toks, mut cached) = (Vec::new(), 0);
            while let Some(c) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
            {
                let c = c.unwrap();
                cached = cached.max(c.cached_tokens.unwrap_or(0));
                toks.extend(c.token_ids);
            }
            (toks, cached)
        }
    };
    let turn1: Vec<u32> = (10..27).collect(); // 17 tokens: 4 full blocks
    let (answer, _) = run(request(turn1.clone(), 3)).await;
    for f in 0..3u32 {
        run(request((0..17).map(|i| 40 + f * 20 + i).collect(), 2)).await;
    }
    let mut turn2 = turn1;
    turn2.extend(&answer);
    turn2.extend([90, 91, 92]);
    let (toks, cached) = run(request(turn2, 4)).await;
    let stats = rank.scheduler.send(GetStats).await.unwrap();
    assert!(stats.prefix_hit_tokens >= u64::from(cached));
    let events = rank.scheduler.send(TakeKvEvents).await.unwrap();
    let mut tiers: Vec<StorageTier> = events.iter().map(|e| e.storage_tier).collect();
    tiers.dedup();
    (toks, cached, errors.load(Ordering::SeqCst), tiers)
}

#[actix_rt::test]
async fn g2_and_g3_onboarding_through_the_actors_is_exact() {
    let (want, cached, errors, _) = conversation(None).await;
    assert_eq!(errors, 0);
    assert_eq!(cached, 0, "without tiers turn 1 was evicted from G1");
    let bpb = u64::from(BS) * 8;
    let host = KvTierOptions {
        host_bytes: 64 * bpb,
        ..Default::default()
    };
    let (got, cached, errors, tiers) = conversation(Some(host)).await;
    assert_eq!(errors, 0, "an onboarded slot held the wrong token");
    assert_eq!(got, want);
    assert!(cached >= 16, "turn 2 reused its onboarded blocks: {cached}");
    assert!(tiers.contains(&StorageTier::Host), "{tiers:?}");

    let dir = std::env::temp_dir().join(format!("ferrite-kvbm-test-{}", std::process::id()));
    let disk = KvTierOptions {
        disk_bytes: 64 * ferrite_kv::tiers::disk_slot_bytes(bpb as usize) as u64,
        disk_dir: Some(dir.clone()),
        ..Default::default()
    };
    let (got, cached, errors, tiers) = conversation(Some(disk)).await;
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(errors, 0, "an onboarded slot held the wrong token");
    assert_eq!(got, want);
    assert!(cached >= 16, "turn 2 reused its onboarded blocks: {cached}");
    assert!(tiers.contains(&StorageTier::Disk), "{tiers:?}");
}

/// Drives a plain `Scheduler` the way the actor does (evicted blocks read before the step,
/// onboarding copies, then the step, extended with the onboarded sequences). Returns every
/// request's tokens and, per step, the ids in it.
fn drive(
    s: &mut Scheduler,
    ex: &mut SlotExec,
    mut arrivals: Vec<(usize, PreprocessedRequest)>,
) -> (
    std::collections::HashMap<RequestId, Vec<u32>>,
    Vec<Vec<RequestId>>,
) {
    let mut toks = std::collections::HashMap::<RequestId, Vec<u32>>::new();
    let mut steps = Vec::new();
    for step in 0..200 {
        arrivals.retain(|(at, r)| {
            if *at == step {
                s.enqueue(r.clone()).unwrap();
            }
            *at != step
        });
        let batch = s.schedule();
        let evicted = s.take_offload_reads();
        if !evicted.is_empty() {
            let blocks: Vec<BlockId> = evicted.iter().map(|e| e.block).collect();
            let mut buf = vec![0u8; blocks.len() * BS as usize * 8];
            ex.read_kv_blocks(&blocks, &mut buf).unwrap();
            s.on_offload_read(&evicted, Ok(buf));
        }
        let jobs = s.take_onboard_jobs();
        for j in &jobs {
            let r = ferrite_scheduler::offload::run_onboard(ex, j);
            s.on_onboarded(&r);
        }
        let Some(mut batch) = batch else {
            if arrivals.is_empty() && jobs.is_empty() && !s.has_work() {
                break;
            }
            continue;
        };
        if !jobs.is_empty() {
            s.extend_batch(&mut batch);
        }
        steps.push(batch.seqs.iter().map(|x| x.request_id).collect());
        let out = ex.forward(&batch).unwrap();
        for (id, o) in s.on_output(&batch, out) {
            toks.entry(id).or_default().extend(o.token_ids);
        }
    }
    (toks, steps)
}

#[test]
fn an_onboarded_sequence_joins_the_step_its_copies_precede() {
    let run = |tiers: Option<KvTierOptions>| {
        let errors = Arc::new(AtomicUsize::new(0));
        let mut ex = SlotExec {
            cache: vec![(EMPTY, EMPTY); (BLOCKS * BS) as usize],
            errors: errors.clone(),
        };
        let cfg = SchedulerConfig {
            kv_tiers: tiers,
            ..SchedulerConfig::new(BS, BLOCKS, 256)
        };
        let mut s =
            ferrite_scheduler::offload::attach_kv_tiers(Scheduler::new(cfg).unwrap(), &ex, &[]);
        // Turn 1 (12 tokens: 3 blocks), two fillers that push it out of G1, then a long
        // decode (B) and, while B runs, turn 2 = turn 1 + its answer + 1 new token.
        let turn1: Vec<u32> = (10..22).collect();
        let (t1, _) = drive(&mut s, &mut ex, vec![(0, request(turn1.clone(), 1))]);
        let answer = t1.values().next().unwrap().clone();
        for f in 0..2u32 {
            let filler: Vec<u32> = (0..13).map(|i| 40 + f * 20 + i).collect();
            drive(&mut s, &mut ex, vec![(0, request(filler, 1))]);
        }
        let mut turn2 = turn1;
        turn2.extend(&answer);
        turn2.push(90);
        let (b, t2) = (request(vec![5, 6], 6), request(turn2, 2));
        let (b_id, t2_id) = (b.request_id, t2.request_id);
        let (toks, steps) = drive(&mut s, &mut ex, vec![(0, b), (2, t2)]);
        assert_eq!(
            errors.load(Ordering::SeqCst),
            0,
            "a slot held the wrong token"
        );
        let first = steps.iter().position(|ids| ids.contains(&t2_id)).unwrap();
        (
            toks[&t2_id].clone(),
            toks[&b_id].clone(),
            steps[first].clone(),
            first,
        )
    };
    let (want2, want_b, _, plain_first) = run(None);
    let host = KvTierOptions {
        host_bytes: 64 * u64::from(BS) * 8,
        ..Default::default()
    };
    let (got2, got_b, step, first) = run(Some(host));
    assert_eq!(
        (got2, got_b),
        (want2, want_b),
        "same tokens with onboarding"
    );
    assert_eq!(
        step.len(),
        2,
        "turn 2 ran in the same step as B's decode: {step:?}"
    );
    assert_eq!(first, plain_first, "no step lost waiting for the copies");
}
