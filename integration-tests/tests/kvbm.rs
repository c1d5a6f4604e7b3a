//! KV offload tiers (issue 9) under the real scheduler with the CPU engine: a
//! conversation's prefix is evicted from the engine's pool (G1) by other requests, kept in
//! host memory (G2) or on disk (G3), and onboarded back for its next turn. Greedy tokens
//! must equal those of a run without offloading (which recomputes the prefix); a corrupt
//! disk block and a full disk must not change them either.

use ferrite_engine::Executor;
use ferrite_integration_tests::models_dir;
use ferrite_kv::{OffloadStore, TierConfig};
use ferrite_protocol::hashing::block_hashes;
use ferrite_protocol::{PreprocessedRequest, RequestId, SamplingParams, StopConditions};
use ferrite_scheduler::offload::run_onboard;
use ferrite_scheduler::{Scheduler, SchedulerConfig};
use std::collections::HashMap;
use std::path::PathBuf;

const BS: u32 = 16;
const G1_BLOCKS: u32 = 24;

/// Totals of what the driver saw.
#[derive(Debug, Default)]
struct Seen {
    onboard_jobs: usize,
    onboarded: usize,
    corrupt: u64,
}

/// Runs `prompts` one after the other to completion (greedy, `max_tokens` each), doing the
/// offload reads and onboarding copies the scheduler actor would do, in the same order.
fn run(
    exec: &mut dyn Executor,
    sched: &mut Scheduler,
    prompts: &[Vec<u32>],
    max_tokens: u32,
    seen: &mut Seen,
    before_each: &mut dyn FnMut(usize, &Scheduler),
) -> Vec<Vec<u32>> {
    let mut outs = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        before_each(i, sched);
        let req = PreprocessedRequest {
            request_id: RequestId::new(),
            model: "m".into(),
            token_ids: p.clone(),
            generated_so_far: 0,
            sampling: SamplingParams::default(),
            stop: StopConditions {
                max_tokens,
                ..Default::default()
            },
            dp_rank: Default::default(),
            extra_hash_key: 0,
            prompt_embeds: None,
        };
        let id = req.request_id;
        sched.enqueue(req).expect("enqueue");
        let mut got: HashMap<RequestId, Vec<u32>> = HashMap::new();
        let mut steps = 0;
        while sched.has_work() {
            steps += 1;
            assert!(steps < 10_000, "scheduler does not converge");
            let batch = sched.schedule();
            let evicted = sched.take_offload_reads();
            if !evicted.is_empty() {
                let bpb = exec.kv_block_layout().expect("layout").bytes_per_block;
                let blocks: Vec<_> = evicted.iter().map(|e| e.block).collect();
                let mut buf = vec![0u8; blocks.len() * bpb];
                let r = exec
                    .read_kv_blocks(&blocks, &mut buf)
                    .map(|()| buf)
                    .map_err(|e| e.to_string());
                sched.on_offload_read(&evicted, r);
            }
            for job in sched.take_onboard_jobs() {
                seen.onboard_jobs += 1;
                let r = run_onboard(exec, &job);
                seen.onboarded += r.ok_blocks;
                seen.corrupt += r.corrupt;
                sched.on_onboarded(&r);
            }
            if let Some(b) = batch {
                let out = exec.forward(&b).expect("forward");
                for (rid, o) in sched.on_output(&b, out) {
                    got.entry(rid).or_default().extend(o.token_ids);
                }
            }
        }
        outs.push(got.remove(&id).unwrap_or_default());
    }
    outs
}

/// Turn 1 of a conversation, three other requests that push it out of G1, then turn 2
/// (turn 1's prompt, its answer and a new message).
fn conversation(vocab: u32, seed: u32, turn1_answer: &[u32]) -> Vec<Vec<u32>> {
    let make = |n: usize, s: u32| -> Vec<u32> {
        (0..n as u32)
            .map(|i| 3 + (i.wrapping_mul(2_654_435_761).wrapping_add(s * 7919) >> 7) % (vocab - 3))
            .collect()
    };
    let turn1 = make(120, seed);
    let mut turn2 = turn1.clone();
    turn2.extend_from_slice(turn1_answer);
    turn2.extend(make(20, seed + 99));
    vec![
        turn1,
        make(150, seed + 1),
        make(150, seed + 2),
        make(150, seed + 3),
        turn2,
    ]
}

fn scheduler(max_context: u32) -> Scheduler {
    let cfg = SchedulerConfig {
        kv_tiers: None,
        ..SchedulerConfig::new(BS, G1_BLOCKS, max_context as usize)
    };
    Scheduler::new(cfg).expect("scheduler")
}

fn tiers(host_blocks: u64, disk_blocks: u64, bpb: usize, dir: &std::path::Path) -> OffloadStore {
    OffloadStore::new(TierConfig {
        bytes_per_block: bpb,
        host_bytes: host_blocks * bpb as u64,
        disk_bytes: disk_blocks * ferrite_kv::tiers::disk_slot_bytes(bpb) as u64,
        disk_dir: Some(dir.to_path_buf()),
        min_hits_for_disk: 0,
    })
}

enum Mode {
    HostOnly,
    DiskOnly,
    DiskCorrupt,
    DiskFull,
}

fn check_model(path: PathBuf, max_tokens: u32) {
    let opts = ferrite_cpu::CpuOptions {
        num_kv_blocks: G1_BLOCKS,
        block_size: BS,
        threads: 2,
        f32_activations: false,
    };
    let mut exec = ferrite_cpu::CpuExecutor::load(&path, opts).expect("model");
    let info = exec.info();
    let bpb = exec.kv_block_layout().expect("layout").bytes_per_block;
    // Turn 1's answer first (no offload), so turn 2 is the real follow-up.
    let mut base = scheduler(info.max_context);
    let probe = conversation(info.vocab_size, 5, &[]);
    let answer = run(
        &mut exec,
        &mut base,
        &probe[..1],
        max_tokens,
        &mut Seen::default(),
        &mut |_, _| {},
    )
    .remove(0);
    let prompts = conversation(info.vocab_size, 5, &answer);

    let mut plain = scheduler(info.max_context);
    let want = run(
        &mut exec,
        &mut plain,
        &prompts,
        max_tokens,
        &mut Seen::default(),
        &mut |_, _| {},
    );
    assert_eq!(want[0], answer);
    assert_eq!(
        plain.stats().prefix_hit_tokens,
        0,
        "baseline: turn 2's prefix must have been evicted from G1"
    );

    for mode in [
        Mode::HostOnly,
        Mode::DiskOnly,
        Mode::DiskCorrupt,
        Mode::DiskFull,
    ] {
        let dir = tempfile::tempdir().expect("tmp");
        let store = match mode {
            Mode::HostOnly => tiers(64, 0, bpb, dir.path()),
            Mode::DiskOnly | Mode::DiskCorrupt => tiers(0, 64, bpb, dir.path()),
            Mode::DiskFull => {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/full")
                    .expect("/dev/full");
                OffloadStore::with_disk_file(
                    TierConfig {
                        bytes_per_block: bpb,
                        host_bytes: 0,
                        disk_bytes: 64 * bpb as u64,
                        disk_dir: None,
                        min_hits_for_disk: 0,
                    },
                    f,
                    64,
                )
            }
        };
        let mut sched = scheduler(info.max_context);
        sched.enable_kv_tiers(store);
        let mut seen = Seen::default();
        let turn1_hashes = block_hashes(&prompts[0], BS as usize, 0);
        let corrupt = matches!(mode, Mode::DiskCorrupt);
        let got = run(
            &mut exec,
            &mut sched,
            &prompts,
            max_tokens,
            &mut seen,
            &mut |i, s| {
                if corrupt && i == 4 {
                    let st = s.kv_tiers().expect("tiers");
                    assert!(st.corrupt_disk_block(&turn1_hashes[2]), "block 2 on disk");
                }
            },
        );
        if matches!(mode, Mode::DiskFull) {
            // Writes run on a writer thread: wait for the failure to be seen.
            sched.flush_kv_tiers();
        }
        let st = sched.kv_tiers().expect("tiers").stats();
        let name = match mode {
            Mode::HostOnly => "G2",
            Mode::DiskOnly => "G3",
            Mode::DiskCorrupt => "G3 with a corrupt block",
            Mode::DiskFull => "full disk",
        };
        assert_eq!(
            got, want,
            "{name}: greedy tokens differ from the run without offload"
        );
        match mode {
            Mode::HostOnly => {
                assert!(seen.onboarded >= 6, "{name}: {seen:?} {st:?}");
                assert!(st.onboarded_host >= 6 && st.onboarded_disk == 0, "{st:?}");
            }
            Mode::DiskOnly => {
                assert!(seen.onboarded >= 6, "{name}: {seen:?} {st:?}");
                assert!(st.onboarded_disk >= 6 && st.onboarded_host == 0, "{st:?}");
            }
            Mode::DiskCorrupt => {
                assert_eq!(seen.corrupt, 1, "{name}: {seen:?}");
                assert_eq!(seen.onboarded, 2, "{name}: blocks 0 and 1 only: {seen:?}");
            }
            Mode::DiskFull => {
                assert_eq!(seen.onboarded, 0, "{name}: {seen:?}");
                assert!(st.disk_write_failures >= 1, "{st:?}");
                assert!(sched.kv_tiers().expect("tiers").disk_disabled());
            }
        }
        eprintln!("{name}: ok, {seen:?}, {st:?}");
    }
}

#[test]
fn stories260k_offload_round_trip_keeps_greedy_tokens() {
    let dir = models_dir().expect("models");
    check_model(dir.join("stories260k"), 12);
}

#[test]
fn smollm2_offload_round_trip_keeps_greedy_tokens() {
    let dir = models_dir().expect("models");
    check_model(
        dir.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"),
        8,
    );
}
