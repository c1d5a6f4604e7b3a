//! Property test: many random requests driven to completion by the fake `TestExecutor`
//! under random limits, with random cancellations and failed steps.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use ferrite_engine::Executor;
use ferrite_protocol::{ErrorKind, FinishReason, PreprocessedRequest, RequestId, StopConditions};
use ferrite_scheduler::{Scheduler, SchedulerConfig};
use proptest::prelude::*;
use std::collections::{HashMap, HashSet};

#[derive(Clone, Debug)]
struct Req {
    base: u32,
    prompt_len: usize,
    max_tokens: u32,
    stop_nth: Option<usize>,
    min_tokens: u32,
    ignore_eos: bool,
    penalty: bool,
    arrive_step: usize,
    cancel_step: Option<usize>,
}

fn req() -> impl Strategy<Value = Req> {
    (
        (0u32..3, 1usize..40, 1u32..16, prop::option::of(0usize..6)),
        (
            0u32..3,
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.2),
            0usize..30,
        ),
        prop::option::weighted(0.15, 0usize..40),
    )
        .prop_map(
            |(
                (base, prompt_len, max_tokens, stop_nth),
                (min_tokens, ignore_eos, penalty, arrive_step),
                cancel_step,
            )| Req {
                base,
                prompt_len,
                max_tokens,
                stop_nth,
                min_tokens,
                ignore_eos,
                penalty,
                arrive_step,
                cancel_step,
            },
        )
}

fn build(r: &Req) -> PreprocessedRequest {
    // bases share long prefixes so the prefix cache is exercised
    let prompt: Vec<u32> = (0..r.prompt_len as u32)
        .map(|i| if i < 12 { i } else { i * 3 + r.base })
        .collect();
    let mut p = request(prompt, r.max_tokens);
    if r.penalty {
        p.sampling.repetition_penalty = 1.1;
    }
    let plain = reference_output(&p, usize::MAX).0;
    p.stop = StopConditions {
        max_tokens: r.max_tokens,
        min_tokens: r.min_tokens,
        stop_token_ids: r
            .stop_nth
            .and_then(|n| plain.get(n).copied())
            .into_iter()
            .collect(),
        ignore_eos: r.ignore_eos,
    };
    p
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn random_workloads_complete_exactly(
        reqs in prop::collection::vec(req(), 1..24),
        num_blocks in 10u32..48,
        block_size in prop::sample::select(vec![1u32, 2, 4, 8]),
        budget in 4usize..48,
        chunk in 1usize..48,
        max_num_seqs in 1usize..8,
        fail_steps in prop::collection::hash_set(0usize..60, 0..3),
    ) {
        let mut cfg = SchedulerConfig::new(block_size, num_blocks, 64);
        cfg.max_batched_tokens = budget;
        cfg.max_prefill_chunk = chunk;
        cfg.max_num_seqs = max_num_seqs;
        let max_seq_len = cfg.max_seq_len();
        let mut s = Scheduler::new(cfg).unwrap();
        let mut ex = TestExecutor::new(num_blocks, block_size, 64);
        let built: Vec<PreprocessedRequest> = reqs.iter().map(build).collect();
        let mut accepted: HashMap<RequestId, usize> = HashMap::new();
        let mut cancelled: HashSet<RequestId> = HashSet::new();
        let mut got: HashMap<RequestId, Collected> = HashMap::new();
        let mut step = 0usize;
        loop {
            for (i, (r, p)) in reqs.iter().zip(&built).enumerate() {
                if r.arrive_step == step {
                    let total = p.token_ids.len() + p.stop.max_tokens as usize;
                    match s.enqueue(p.clone()) {
                        Ok(()) => { prop_assert!(total <= max_seq_len); accepted.insert(p.request_id, i); }
                        Err(e) => {
                            prop_assert_eq!(e.kind, ErrorKind::InvalidRequest);
                            prop_assert!(total > max_seq_len);
                        }
                    }
                }
                if r.cancel_step == Some(step) && accepted.contains_key(&p.request_id)
                    && got.get(&p.request_id).is_none_or(|c| c.finish.is_none())
                    && s.cancel(p.request_id)
                {
                    cancelled.insert(p.request_id);
                }
            }
            let before = s.pool().num_active();
            let Some(batch) = s.schedule() else {
                prop_assert!(!s.has_work());
                if step > 40 { break; }
                step += 1;
                continue;
            };
            let _ = before;
            prop_assert!(batch.num_tokens() <= budget, "budget exceeded");
            prop_assert!(batch.seqs.len() <= max_num_seqs);
            for q in &batch.seqs {
                prop_assert!(!cancelled.contains(&q.request_id), "cancelled sequence scheduled");
            }
            if fail_steps.contains(&step) {
                s.on_step_failed(&batch);
            } else {
                let out = ex.forward(&batch).map_err(|e| TestCaseError::fail(e.to_string()))?;
                for (id, o) in s.on_output(&batch, out) {
                    prop_assert!(!cancelled.contains(&id));
                    got.entry(id).or_default().push(o);
                }
            }
            s.pool().check_invariants().map_err(TestCaseError::fail)?;
            step += 1;
            prop_assert!(step < 20_000, "no progress");
        }
        prop_assert_eq!(s.pool().num_active(), 0, "blocks leaked");
        prop_assert_eq!(s.stats().running + s.stats().waiting, 0);
        for (id, i) in &accepted {
            if cancelled.contains(id) { continue; }
            let (want, why) = reference_output(&built[*i], max_seq_len);
            let c = &got[id];
            prop_assert_eq!(&c.tokens, &want);
            prop_assert_eq!(c.finish, Some(why));
            if why == FinishReason::Length && built[*i].stop.max_tokens > 0
                && built[*i].token_ids.len() + (built[*i].stop.max_tokens as usize) <= max_seq_len {
                prop_assert_eq!(want.len(), built[*i].stop.max_tokens as usize);
            }
            prop_assert!(c.cached_tokens[0].is_some());
            prop_assert!(c.cached_tokens[1..].iter().all(Option::is_none));
        }
    }
}
