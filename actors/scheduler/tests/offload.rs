//! Offload tiers through the real actors (`EngineSupervisor` → `SchedulerActor` →
//! `EngineActor`): a conversation's blocks evicted from G1 are read out before the step
//! that reuses them, kept in G2 (or G3), and onboarded back for its next turn. The fake
//! engine checks every cached slot it reads holds the right (token, position), so a copy
//! landing in the wrong block, too late, or with the wrong bytes fails the test.
#![allow(clippy::unwrap_used)]

use ferrite_engine::{
    Batch, BatchOutput, EngineError, Executor, ExecutorFactory, ExecutorInfo, KvBlockLayout,
    KvCacheSpec, SeqOutput, slot_for,
};
use ferrite_protocol::{
    BlockId, DpRank, EngineOutput, ErrorInfo, PreprocessedRequest, RequestId, SamplingParams,
    StopConditions, StorageTier,
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

fn request(prompt: Vec<u32>, max_tokens: u32) -> PreprocessedRequest {
    PreprocessedRequest {
        request_id: RequestId::new(),
        model: "test".into(),
        token_ids: prompt,
        generated_so_far: 0,
        sampling: SamplingParams::default(),
        stop: StopConditions {
            max_tokens,
            ..Default::default()
        },
        dp_rank: DpRank(0),
        extra_hash_key: 0,
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
