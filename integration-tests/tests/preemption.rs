//! The real scheduler driving the real CPU engine with a KV cache too small for its
//! batch: sequences are preempted and recomputed, prefixes are reused, prompts are
//! prefilled in chunks — and every greedy token still equals the float32 reference.

mod common;

use ferrite_engine::Executor;
use ferrite_integration_tests::models_dir;
use ferrite_scheduler::{Scheduler, SchedulerConfig};

#[test]
fn preemption_chunking_and_prefix_hits_keep_greedy_tokens_exact() -> anyhow::Result<()> {
    let cases = common::reference_cases(&["stories260k.json", "stories260k.batch.json"])?;
    // Every case twice: the second copy hits the prefix cache of the first.
    let cases: Vec<_> = cases.iter().chain(cases.iter()).cloned().collect();
    let (block_size, num_blocks) = (4u32, 48u32);
    let opts = ferrite_cpu::CpuOptions {
        num_kv_blocks: num_blocks,
        block_size,
        threads: 2,
        f32_activations: false,
    };
    let mut exec = ferrite_cpu::CpuExecutor::load(&models_dir()?.join("stories260k"), opts)?;
    let cfg = SchedulerConfig {
        max_batched_tokens: 24,
        max_prefill_chunk: 7,
        ..SchedulerConfig::new(block_size, num_blocks, exec.info().max_context as usize)
    };
    let stats = common::run_exact(&mut exec, Scheduler::new(cfg)?, &cases, &[2])?;
    assert!(
        stats.preemptions > 0,
        "the cache was meant to be too small: no preemption happened"
    );
    assert!(
        stats.prefix_hit_tokens > 0,
        "the repeated prompts should hit the prefix cache"
    );
    assert_eq!(stats.active_blocks, 0);
    Ok(())
}
