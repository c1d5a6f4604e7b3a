//! The real scheduler driving the real CPU engine with a KV cache too small for its
//! batch: sequences are preempted and recomputed, prefixes are reused, prompts are
//! prefilled in chunks — and every greedy token still equals the float32 reference.

use ferrite_engine::Executor;
use ferrite_integration_tests::models_dir;
use ferrite_protocol::{PreprocessedRequest, RequestId, SamplingParams, StopConditions};
use ferrite_scheduler::{Scheduler, SchedulerConfig};
use serde_json::Value;
use std::collections::HashMap;

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .map(|x| x as u32)
        .collect()
}

#[test]
fn preemption_chunking_and_prefix_hits_keep_greedy_tokens_exact() -> anyhow::Result<()> {
    let models = models_dir()?;
    let mut cases = Vec::new();
    for f in ["stories260k.json", "stories260k.batch.json"] {
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(models.join("reference").join(f))?)?;
        cases.extend(v["cases"].as_array().cloned().unwrap_or_default());
    }
    assert!(cases.len() >= 6, "expected the reference cases");
    let (block_size, num_blocks) = (4u32, 48u32);
    let opts = ferrite_cpu::CpuOptions {
        num_kv_blocks: num_blocks,
        block_size,
        threads: 2,
        f32_activations: false,
    };
    let mut exec = ferrite_cpu::CpuExecutor::load(&models.join("stories260k"), opts)?;
    let cfg = SchedulerConfig {
        max_batched_tokens: 24,
        max_prefill_chunk: 7,
        ..SchedulerConfig::new(block_size, num_blocks, exec.info().max_context as usize)
    };
    let mut sched = Scheduler::new(cfg)?;
    let mut want = HashMap::new();
    let mut got: HashMap<RequestId, Vec<u32>> = HashMap::new();
    // Every case twice: the second copy hits the prefix cache of the first.
    for case in cases.iter().chain(cases.iter()) {
        let prompt = u32s(&case["prompt_token_ids"]);
        let expect = u32s(&case["greedy_token_ids"]);
        let req = PreprocessedRequest {
            request_id: RequestId::new(),
            model: "stories260k".into(),
            token_ids: prompt,
            generated_so_far: 0,
            sampling: SamplingParams::default(),
            stop: StopConditions {
                max_tokens: expect.len() as u32,
                stop_token_ids: vec![2],
                ..Default::default()
            },
            dp_rank: Default::default(),
            extra_hash_key: 0,
        };
        want.insert(req.request_id, expect);
        sched.enqueue(req).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let mut steps = 0;
    while let Some(batch) = sched.schedule() {
        let out = exec.forward(&batch)?;
        for (id, o) in sched.on_output(&batch, out) {
            got.entry(id).or_default().extend(o.token_ids);
        }
        steps += 1;
        assert!(steps < 20_000, "scheduler does not converge");
    }
    let stats = sched.stats();
    assert!(
        stats.preemptions > 0,
        "the cache was meant to be too small: no preemption happened"
    );
    assert!(
        stats.prefix_hit_tokens > 0,
        "the repeated prompts should hit the prefix cache"
    );
    for (id, expect) in &want {
        assert_eq!(got.get(id), Some(expect), "request {id}");
    }
    assert_eq!(stats.active_blocks, 0);
    Ok(())
}
