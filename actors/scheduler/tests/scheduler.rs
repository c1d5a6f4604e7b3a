//! Unit tests of `Scheduler` driven by the fake `TestExecutor`.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use ferrite_engine::Executor;
use ferrite_protocol::{ErrorKind, FinishReason, RequestId, StopConditions};
use ferrite_scheduler::{Scheduler, SchedulerConfig};
use std::collections::HashMap;

fn cfg(num_blocks: u32, block_size: u32, max_model_len: usize) -> SchedulerConfig {
    SchedulerConfig::new(block_size, num_blocks, max_model_len)
}

/// Runs until idle; returns each request's output and the per-step token counts.
fn run(s: &mut Scheduler, ex: &mut TestExecutor) -> (HashMap<RequestId, Collected>, Vec<usize>) {
    let mut got: HashMap<RequestId, Collected> = HashMap::new();
    let mut steps = Vec::new();
    while let Some(batch) = s.schedule() {
        steps.push(batch.num_tokens());
        let out = ex.forward(&batch).unwrap();
        for (id, o) in s.on_output(&batch, out) {
            got.entry(id).or_default().push(o);
        }
        assert!(steps.len() < 10_000, "no progress");
    }
    assert!(!s.has_work(), "schedule returned None with work left");
    (got, steps)
}

/// A request whose prompt is `[1, 2]`, then `rows` embedding rows of `width` values, then `3`.
fn with_rows(rows: usize, width: u32) -> ferrite_protocol::PreprocessedRequest {
    let mut tokens = vec![1, 2];
    let mut e = ferrite_protocol::PromptEmbeds::new(width);
    e.append(&mut tokens, vec![0.25; rows * width as usize]);
    tokens.push(3);
    let mut r = request(tokens, 4);
    r.prompt_embeds = Some(std::sync::Arc::new(e));
    r
}

#[test]
fn embedding_rows_are_checked_at_admission_and_reach_the_engine() {
    // An engine that takes no rows: refused.
    let mut s = Scheduler::new(cfg(16, 4, 64)).unwrap();
    let e = s.enqueue(with_rows(3, 8)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidRequest);
    assert!(e.message.contains("token ids only"), "{}", e.message);

    let mut c = cfg(16, 4, 64);
    c.embed_width = Some(8);
    let mut s = Scheduler::new(c).unwrap();
    let e = s.enqueue(with_rows(3, 6)).unwrap_err();
    assert!(e.message.contains("hidden size is 8"), "{}", e.message);
    let mut stray = with_rows(3, 8);
    stray.prompt_embeds = None;
    let e = s.enqueue(stray).unwrap_err();
    assert!(e.message.contains("no embedding rows"), "{}", e.message);
    let mut forged = with_rows(3, 8);
    forged.token_ids[3] ^= 1;
    let e = s.enqueue(forged).unwrap_err();
    assert!(e.message.contains("position 3"), "{}", e.message);

    let ok = with_rows(3, 8);
    let rows = ok.prompt_embeds.clone();
    s.enqueue(ok).unwrap();
    let batch = s.schedule().unwrap();
    assert_eq!(
        batch.seqs[0].embeds, rows,
        "the rows go to the engine with the prompt"
    );
}

#[test]
fn validation_errors_are_clear() {
    let mut s = Scheduler::new(cfg(8, 4, 20)).unwrap();
    let e = s.enqueue(request(vec![], 4)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidRequest);
    assert!(e.message.contains("empty"), "{}", e.message);
    let e = s.enqueue(request(vec![1; 15], 6)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidRequest);
    assert!(e.message.contains("context length of 20"), "{}", e.message);
    assert!(s.enqueue(request(vec![1; 15], 5)).is_ok());

    let mut c = cfg(4, 4, 100); // cache holds 16 tokens
    c.waiting_queue_limit = 2;
    let mut s = Scheduler::new(c).unwrap();
    let e = s.enqueue(request(vec![1; 10], 10)).unwrap_err();
    assert!(e.message.contains("KV cache"), "{}", e.message);
    s.enqueue(request(vec![1; 4], 2)).unwrap();
    s.enqueue(request(vec![1; 4], 2)).unwrap();
    assert_eq!(
        s.enqueue(request(vec![1; 4], 2)).unwrap_err().kind,
        ErrorKind::Overloaded
    );
    s.set_draining(true);
    assert_eq!(
        s.enqueue(request(vec![1; 4], 2)).unwrap_err().kind,
        ErrorKind::Unavailable
    );
}

#[test]
fn chunked_prefill_splits_long_prompts_and_outputs_are_exact() {
    let mut c = cfg(32, 4, 128);
    c.max_batched_tokens = 16;
    c.max_prefill_chunk = 16;
    let mut s = Scheduler::new(c).unwrap();
    let mut ex = TestExecutor::new(32, 4, 128);
    let req = request((0..50).collect(), 5);
    let (want, why) = reference_output(&req, 128);
    let id = req.request_id;
    s.enqueue(req).unwrap();
    let first = s.schedule().unwrap();
    assert_eq!(first.seqs[0].tokens.len(), 16);
    assert!(!first.seqs[0].sample);
    assert_eq!(s.stats().pending_prefill_tokens, 50);
    let out = ex.forward(&first).unwrap();
    assert!(s.on_output(&first, out).is_empty());
    assert_eq!(s.stats().pending_prefill_tokens, 34);
    let (got, steps) = run(&mut s, &mut ex);
    assert_eq!(steps, vec![16, 16, 2, 1, 1, 1, 1]);
    assert_eq!(got[&id].tokens, want);
    assert_eq!(got[&id].finish, Some(why));
    assert_eq!(s.pool().num_active(), 0);
}

#[test]
fn prefix_hits_skip_cached_tokens() {
    let mut s = Scheduler::new(cfg(64, 4, 256)).unwrap();
    let mut ex = TestExecutor::new(64, 4, 256);
    let prompt: Vec<u32> = (0..40).collect();
    let a = request(prompt.clone(), 3);
    s.enqueue(a.clone()).unwrap();
    run(&mut s, &mut ex);
    let mut b = request(prompt.clone(), 3);
    b.token_ids.extend([7, 7]); // 42 tokens: the 40 shared are cached
    let (want, _) = reference_output(&b, 256);
    let id = b.request_id;
    s.enqueue(b).unwrap();
    let batch = s.schedule().unwrap();
    assert_eq!(batch.seqs[0].start_pos, 40);
    assert_eq!(batch.seqs[0].tokens, vec![7, 7]);
    let out = ex.forward(&batch).unwrap();
    let chunks = s.on_output(&batch, out);
    assert_eq!(chunks[0].1.cached_tokens, Some(40));
    let (got, _) = run(&mut s, &mut ex);
    let mut all = vec![chunks[0].1.token_ids[0]];
    all.extend(&got[&id].tokens);
    assert_eq!(all, want);
    // A fully cached prompt still computes its last block (something to sample).
    let c = request(prompt, 2);
    s.enqueue(c).unwrap();
    let batch = s.schedule().unwrap();
    assert_eq!(
        (batch.seqs[0].start_pos, batch.seqs[0].tokens.len()),
        (36, 4)
    );
    assert!(s.stats().prefix_hit_tokens >= 76);
}

#[test]
fn cancellation_frees_blocks_by_next_step() {
    let mut s = Scheduler::new(cfg(16, 4, 64)).unwrap();
    let mut ex = TestExecutor::new(16, 4, 64);
    let a = request((0..10).collect(), 20);
    let b = request((100..110).collect(), 20);
    let (ida, idb) = (a.request_id, b.request_id);
    s.enqueue(a).unwrap();
    s.enqueue(b).unwrap();
    let batch = s.schedule().unwrap();
    assert_eq!(s.pool().num_active(), 6);
    assert!(s.cancel(ida)); // while the batch is outstanding
    assert!(!s.cancel(ida));
    let out = ex.forward(&batch).unwrap();
    let chunks = s.on_output(&batch, out);
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].0, idb);
    assert_eq!(s.pool().num_active(), 3);
    assert_eq!(s.stats().running, 1);
    // cancel while idle frees at once
    assert!(s.cancel(idb));
    assert_eq!(s.pool().num_active(), 0);
    assert!(!s.has_work());
    assert!(s.schedule().is_none());
    s.pool().check_invariants().unwrap();
}

#[test]
fn preemption_when_blocks_are_scarce_keeps_outputs_exact() {
    // 12 blocks of 4 = 48 slots; 4 requests of 8 + 24 tokens each need 8 blocks each.
    let mut c = cfg(12, 4, 48);
    c.max_batched_tokens = 64;
    let mut s = Scheduler::new(c).unwrap();
    let mut ex = TestExecutor::new(12, 4, 48);
    let reqs: Vec<_> = (0..4)
        .map(|i| request((i * 100..i * 100 + 8).collect(), 24))
        .collect();
    for r in &reqs {
        s.enqueue(r.clone()).unwrap();
    }
    let (got, _) = run(&mut s, &mut ex);
    assert!(s.stats().preemptions > 0, "expected preemptions");
    for r in &reqs {
        let (want, why) = reference_output(r, 48);
        assert_eq!(got[&r.request_id].tokens, want);
        assert_eq!(got[&r.request_id].finish, Some(why));
        assert_eq!(want.len(), 24);
    }
    assert_eq!(s.pool().num_active(), 0);
    s.pool().check_invariants().unwrap();
}

#[test]
fn failed_step_requeues_and_recomputes() {
    let mut s = Scheduler::new(cfg(16, 4, 64)).unwrap();
    let mut ex = TestExecutor::new(16, 4, 64);
    let r = request((0..9).collect(), 6);
    let (want, _) = reference_output(&r, 64);
    s.enqueue(r.clone()).unwrap();
    let mut got = Collected::default();
    for step in 0.. {
        let Some(batch) = s.schedule() else { break };
        if step == 3 {
            s.on_step_failed(&batch);
            assert_eq!(s.stats().waiting, 1);
            assert_eq!(s.pool().num_active(), 0);
            continue;
        }
        let out = ex.forward(&batch).unwrap();
        for (_, o) in s.on_output(&batch, out) {
            got.push(o);
        }
    }
    assert_eq!(got.tokens, want);
    assert_eq!(got.cached_tokens[0], Some(0));
    assert!(got.cached_tokens[1..].iter().all(Option::is_none));
}

#[test]
fn stop_tokens_min_tokens_and_migration_budget() {
    let mut s = Scheduler::new(cfg(32, 4, 128)).unwrap();
    let mut ex = TestExecutor::new(32, 4, 128);
    let mut r = request((0..6).collect(), 30);
    // stop on whatever the model says second, but not before 1 token
    let (plain, _) = reference_output(&r, 128);
    r.stop = StopConditions {
        max_tokens: 30,
        min_tokens: 1,
        stop_token_ids: vec![plain[1]],
        ignore_eos: false,
    };
    let (want, why) = reference_output(&r, 128);
    assert_eq!(why, FinishReason::Stop);
    let mut m = request((0..12).collect(), 8);
    m.generated_so_far = 5; // migrated: 3 tokens left
    let (want_m, _) = reference_output(&m, 128);
    assert_eq!(want_m.len(), 3);
    s.enqueue(r.clone()).unwrap();
    s.enqueue(m.clone()).unwrap();
    let (got, _) = run(&mut s, &mut ex);
    assert_eq!(got[&r.request_id].tokens, want);
    assert_eq!(got[&r.request_id].finish, Some(FinishReason::Stop));
    assert_eq!(got[&m.request_id].tokens, want_m);
    assert_eq!(got[&m.request_id].finish, Some(FinishReason::Length));
}

/// Scheduler overhead per step at 256 running sequences (no executor work). Prints a number;
/// run with `cargo test -p ferrite-scheduler --test scheduler -- --ignored --nocapture`.
#[test]
#[ignore]
fn overhead_per_step_at_256_sequences() {
    use ferrite_engine::{BatchOutput, SeqOutput};
    let mut c = cfg(256 * 9, 16, 4096);
    c.max_batched_tokens = 256 * 64;
    c.max_prefill_chunk = 256 * 64;
    let mut s = Scheduler::new(c).unwrap();
    for i in 0..256u32 {
        s.enqueue(request((i * 1000..i * 1000 + 64).collect(), 64))
            .unwrap();
    }
    let t = std::time::Instant::now();
    let mut steps = 0;
    while let Some(batch) = s.schedule() {
        let outputs = batch
            .seqs
            .iter()
            .filter(|q| q.sample)
            .map(|q| SeqOutput {
                request_id: q.request_id,
                token: 1,
                logprob: None,
            })
            .collect();
        s.on_output(&batch, BatchOutput { outputs });
        steps += 1;
    }
    let per = t.elapsed().as_secs_f64() * 1e6 / steps as f64;
    println!("{steps} steps, {per:.1} µs per step (schedule + on_output) at up to 256 seqs");
    assert_eq!(steps, 64);
}
