//! Runs reference cases through the real scheduler and the CPU engine.

use ferrite_engine::Executor;
use ferrite_integration_tests::models_dir;
use ferrite_protocol::{PreprocessedRequest, RequestId, SamplingParams, StopConditions};
use ferrite_scheduler::{Scheduler, SchedulerStats};
use serde_json::Value;
use std::collections::HashMap;

pub fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .map(|x| x as u32)
        .collect()
}

/// One reference case: (name, prompt ids, greedy ids).
pub type Case = (String, Vec<u32>, Vec<u32>);

/// The cases of the given reference files.
pub fn reference_cases(files: &[&str]) -> anyhow::Result<Vec<Case>> {
    let models = models_dir()?;
    let mut out = Vec::new();
    for f in files {
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(models.join("reference").join(f))?)?;
        for c in v["cases"].as_array().into_iter().flatten() {
            out.push((
                c["name"].as_str().unwrap_or("?").to_string(),
                u32s(&c["prompt_token_ids"]),
                u32s(&c["greedy_token_ids"]),
            ));
        }
    }
    anyhow::ensure!(!out.is_empty(), "no reference cases in {files:?}");
    Ok(out)
}

/// Enqueues every case (greedy, EOS 2... taken from `eos`), runs the scheduler to the end,
/// and checks each request's tokens equal its reference. Returns the scheduler's stats.
pub fn run_exact(
    exec: &mut dyn Executor,
    mut sched: Scheduler,
    cases: &[Case],
    eos: &[u32],
) -> anyhow::Result<SchedulerStats> {
    let mut want = HashMap::new();
    let mut got: HashMap<RequestId, Vec<u32>> = HashMap::new();
    for (name, prompt, expect) in cases {
        let req = PreprocessedRequest {
            request_id: RequestId::new(),
            model: "m".into(),
            token_ids: prompt.clone(),
            generated_so_far: 0,
            sampling: SamplingParams::default(),
            stop: StopConditions {
                max_tokens: expect.len() as u32,
                stop_token_ids: eos.to_vec(),
                ..Default::default()
            },
            dp_rank: Default::default(),
            extra_hash_key: 0,
            prompt_embeds: None,
        };
        want.insert(req.request_id, (name.clone(), expect.clone()));
        sched.enqueue(req).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let mut steps = 0;
    while let Some(batch) = sched.schedule() {
        let out = exec.forward(&batch)?;
        for (id, o) in sched.on_output(&batch, out) {
            got.entry(id).or_default().extend(o.token_ids);
        }
        steps += 1;
        anyhow::ensure!(steps < 50_000, "scheduler does not converge");
    }
    for (id, (name, expect)) in &want {
        assert_eq!(got.get(id), Some(expect), "case {name}");
    }
    Ok(sched.stats())
}
