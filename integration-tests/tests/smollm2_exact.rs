//! SmolLM2-135M Q4_1 (GGUF) with float32 activations: every reference case, batched
//! together under the real scheduler, gives exactly the float32 reference's greedy tokens
//! (the reference ran the same dequantised weights). The default 8-bit-activation path
//! is checked against a stated tolerance in `engine-ffi/cpu/tests/smollm2.rs`.

mod common;

use ferrite_engine::Executor;
use ferrite_integration_tests::models_dir;
use ferrite_scheduler::{Scheduler, SchedulerConfig};

#[test]
fn smollm2_f32_activations_match_every_reference_case() -> anyhow::Result<()> {
    let cases = common::reference_cases(&[
        "smollm2-135m-instruct.json",
        "smollm2-135m-instruct.batch.json",
    ])?;
    let gguf = models_dir()?.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let opts = ferrite_cpu::CpuOptions {
        num_kv_blocks: 512,
        block_size: 16,
        threads: 2,
        f32_activations: true,
    };
    let mut exec = ferrite_cpu::CpuExecutor::load(&gguf, opts)?;
    let cfg = SchedulerConfig::new(16, 512, exec.info().max_context as usize);
    common::run_exact(&mut exec, Scheduler::new(cfg)?, &cases, &[2])?;
    Ok(())
}
