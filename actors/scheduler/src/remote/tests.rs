use super::*;
use crate::config::SchedulerConfig;
use ferrite_engine::{BatchOutput, SeqOutput};
use ferrite_protocol::{SamplingParams, StopConditions};

fn sched() -> Scheduler {
    Scheduler::new(SchedulerConfig::new(4, 32, 256)).unwrap()
}

fn req(prompt: Vec<TokenId>, max_tokens: u32) -> PreprocessedRequest {
    PreprocessedRequest {
        request_id: RequestId::new(),
        model: "m".into(),
        token_ids: prompt,
        generated_so_far: 0,
        sampling: SamplingParams::default(),
        stop: StopConditions {
            max_tokens,
            ..Default::default()
        },
        dp_rank: Default::default(),
        extra_hash_key: 0,
        prompt_embeds: None,
    }
}

/// Runs one step, answering every sampled sequence with `token`.
fn step(s: &mut Scheduler, token: TokenId) -> Vec<(RequestId, EngineOutput)> {
    let batch = s.schedule().unwrap();
    let outputs = batch
        .seqs
        .iter()
        .filter(|i| i.sample)
        .map(|i| SeqOutput {
            request_id: i.request_id,
            token,
            logprob: None,
        })
        .collect();
    s.on_output(&batch, BatchOutput { outputs })
}

#[test]
fn prefill_holds_blocks_until_released() {
    let mut p = sched();
    let r = req((0..10).collect(), 50);
    let id = r.request_id;
    p.enqueue_prefill(r).unwrap();
    let chunks = step(&mut p, 7);
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].1.token_ids, vec![7]);
    assert!(chunks[0].1.finish_reason.is_some(), "one token only");
    let held = p.held_blocks(id).unwrap();
    assert_eq!(held.len(), 3, "10 prompt tokens in 4-token blocks");
    assert_eq!(p.pool().num_active(), 3);
    assert!(p.schedule().is_none(), "a held request is not scheduled");
    assert!(p.release_held(id));
    assert_eq!(p.pool().num_active(), 0);
    assert!(!p.release_held(id));
}

#[test]
fn remote_completion_continues_like_local() {
    let prompt: Vec<TokenId> = (100..111).collect();
    // Aggregated reference: prefill + 2 decode steps.
    let mut a = sched();
    let ra = req(prompt.clone(), 3);
    a.enqueue(ra.clone()).unwrap();
    step(&mut a, 5);
    let a_decode = a.schedule().unwrap();

    let mut d = sched();
    let mut rd = ra.clone();
    rd.request_id = RequestId::new();
    let id = rd.request_id;
    let res = d.reserve_remote(rd).unwrap();
    assert_eq!(res.blocks.len(), 3);
    assert_eq!(res.cached_blocks, 0);
    assert_eq!(d.remote_blocks(id).map(|b| b.len()), Some(3));
    assert!(d.schedule().is_none(), "a reservation is not scheduled");
    let first = d.complete_remote(id, 5, None).unwrap();
    assert_eq!(first.token_ids, vec![5]);
    assert_eq!(first.cached_tokens, Some(0));
    assert_eq!(first.finish_reason, None);
    let d_decode = d.schedule().unwrap();
    assert_eq!(d_decode.seqs.len(), 1);
    let (x, y) = (&a_decode.seqs[0], &d_decode.seqs[0]);
    assert_eq!(
        (x.tokens.clone(), x.start_pos),
        (y.tokens.clone(), y.start_pos)
    );
    assert_eq!(y.start_pos, 11);
    assert_eq!(y.tokens, vec![5]);
    assert!(y.sample);
    // The decode worker's prefix cache now holds the prompt's two full blocks.
    let mut d2 = req(prompt, 3);
    d2.request_id = RequestId::new();
    let d_batch_out = d.on_output(
        &d_decode,
        BatchOutput {
            outputs: vec![SeqOutput {
                request_id: id,
                token: 6,
                logprob: None,
            }],
        },
    );
    assert_eq!(d_batch_out[0].1.token_ids, vec![6]);
    let res2 = d.reserve_remote(d2).unwrap();
    assert_eq!(res2.cached_blocks, 2);
}

#[test]
fn cancel_and_fallback_free_reservations() {
    let mut d = sched();
    let r = req((0..9).collect(), 4);
    let id = r.request_id;
    d.reserve_remote(r).unwrap();
    assert_eq!(d.pool().num_active(), 3);
    assert!(d.cancel(id));
    assert_eq!(d.pool().num_active(), 0);
    assert!(d.complete_remote(id, 1, None).is_none());

    let r = req((0..9).collect(), 4);
    let id = r.request_id;
    d.reserve_remote(r).unwrap();
    assert!(d.fallback_local(id));
    assert_eq!(d.pool().num_active(), 0);
    let chunks = step(&mut d, 9);
    assert_eq!(chunks[0].0, id);
    assert_eq!(chunks[0].1.token_ids, vec![9]);

    // Held blocks on the prefill side are freed by a cancel too.
    let mut p = sched();
    let r = req((0..9).collect(), 4);
    let id = r.request_id;
    p.enqueue_prefill(r).unwrap();
    step(&mut p, 3);
    assert_eq!(p.pool().num_active(), 3);
    assert!(p.cancel(id));
    assert_eq!(p.pool().num_active(), 0);
    assert!(p.held_blocks(id).is_none());
}

#[test]
fn reservation_without_blocks_is_overloaded_and_leaves_nothing() {
    let mut d = Scheduler::new(SchedulerConfig::new(4, 4, 64)).unwrap();
    let r = req((0..15).collect(), 1);
    d.reserve_remote(r).unwrap();
    let r2 = req((50..58).collect(), 1);
    let id2 = r2.request_id;
    let err = d.reserve_remote(r2).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Overloaded);
    assert!(!d.contains(id2));
    assert_eq!(d.pool().num_active(), 4);
    assert_eq!(d.abort_all().len(), 1, "abort_all sees the reservation");
    assert_eq!(d.pool().num_active(), 0);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        /// Decode side: reserve for a remote prefill (prompt length, shared-prefix base).
        Reserve(usize, u32),
        /// Prefill side: queue a prefill-only request.
        Prefill(usize, u32),
        /// Plain request.
        Local(usize, u32),
        /// Complete / fall back / cancel / release the n-th known request.
        Complete(usize),
        Fallback(usize),
        Cancel(usize),
        Release(usize),
        Step,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1usize..40, 0u32..3).prop_map(|(n, b)| Op::Reserve(n, b)),
            (1usize..40, 0u32..3).prop_map(|(n, b)| Op::Prefill(n, b)),
            (1usize..40, 0u32..3).prop_map(|(n, b)| Op::Local(n, b)),
            (0usize..16).prop_map(Op::Complete),
            (0usize..16).prop_map(Op::Fallback),
            (0usize..16).prop_map(Op::Cancel),
            (0usize..16).prop_map(Op::Release),
            Just(Op::Step),
            Just(Op::Step),
        ]
    }

    fn prompt(n: usize, base: u32) -> Vec<TokenId> {
        (0..n as u32)
            .map(|i| if i < 8 { i } else { i * 5 + base })
            .collect()
    }

    proptest! {
        /// Whatever mix of remote reservations, held prefills, completions, fallbacks,
        /// cancels and steps: the pool stays consistent, no more than `max_num_seqs` run,
        /// and once everything is cancelled or released no block is active.
        #[test]
        fn remote_ops_never_leak_blocks(ops in prop::collection::vec(op(), 1..60)) {
            // Two running slots: finished remote prefills often wait for one.
            let mut cfg = SchedulerConfig::new(4, 24, 256);
            cfg.max_num_seqs = 2;
            let mut s = Scheduler::new(cfg).unwrap();
            let mut ids: Vec<RequestId> = Vec::new();
            for op in ops {
                match op {
                    Op::Reserve(n, b) => {
                        let r = req(prompt(n, b), 6);
                        let id = r.request_id;
                        if s.reserve_remote(r).is_ok() {
                            ids.push(id);
                        }
                    }
                    Op::Prefill(n, b) => {
                        let r = req(prompt(n, b), 6);
                        let id = r.request_id;
                        if s.enqueue_prefill(r).is_ok() {
                            ids.push(id);
                        }
                    }
                    Op::Local(n, b) => {
                        let r = req(prompt(n, b), 6);
                        let id = r.request_id;
                        if s.enqueue(r).is_ok() {
                            ids.push(id);
                        }
                    }
                    Op::Complete(i) => {
                        if let Some(&id) = ids.get(i) {
                            s.complete_remote(id, 300, None);
                        }
                    }
                    Op::Fallback(i) => {
                        if let Some(&id) = ids.get(i) {
                            s.fallback_local(id);
                        }
                    }
                    Op::Cancel(i) => {
                        if let Some(&id) = ids.get(i) {
                            s.cancel(id);
                        }
                    }
                    Op::Release(i) => {
                        if let Some(&id) = ids.get(i) {
                            s.release_held(id);
                        }
                    }
                    Op::Step => {
                        if let Some(batch) = s.schedule() {
                            let outputs = batch
                                .seqs
                                .iter()
                                .filter(|i| i.sample)
                                .map(|i| SeqOutput {
                                    request_id: i.request_id,
                                    token: 301,
                                    logprob: None,
                                })
                                .collect();
                            s.on_output(&batch, BatchOutput { outputs });
                        }
                    }
                }
                prop_assert!(s.pool().check_invariants().is_ok(), "{:?}", s.pool().check_invariants());
                prop_assert!(!s.has_outstanding_batch());
                prop_assert!(s.stats().running <= 2);
            }
            for id in ids {
                s.cancel(id);
            }
            prop_assert_eq!(s.pool().num_active(), 0);
            prop_assert!(!s.has_work());
        }
    }
}

#[test]
fn finished_remote_prefills_wait_for_a_running_slot() {
    let mut cfg = SchedulerConfig::new(4, 32, 256);
    cfg.max_num_seqs = 1;
    let mut d = Scheduler::new(cfg).unwrap();
    let (a, b, c) = (
        req((0..6).collect(), 3),
        req((10..16).collect(), 2),
        req((20..26).collect(), 5),
    );
    let (ia, ib, ic) = (a.request_id, b.request_id, c.request_id);
    for r in [a, b, c] {
        d.reserve_remote(r).unwrap();
    }
    for id in [ia, ib, ic] {
        let first = d.complete_remote(id, 9, None).unwrap();
        assert_eq!(first.token_ids, vec![9], "the first token goes out at once");
    }
    assert_eq!(
        d.stats().running,
        1,
        "--max-num-seqs 1 holds with three remote prefills"
    );
    assert_eq!(d.stats().waiting, 2, "the others wait for a slot");
    assert!(d.has_work());
    // A waiting one can be cancelled: its blocks are freed at once.
    let active = d.pool().num_active();
    assert!(d.cancel(ic));
    assert_eq!(d.pool().num_active(), active - 2);
    // `a` decodes alone until it finishes (3 tokens: 1 remote + 2 here), then `b`.
    let mut order = Vec::new();
    while let Some(batch) = d.schedule() {
        assert_eq!(
            batch.seqs.len(),
            1,
            "never more than max_num_seqs in a step"
        );
        order.push(batch.seqs[0].request_id);
        let outputs = vec![SeqOutput {
            request_id: batch.seqs[0].request_id,
            token: 1,
            logprob: None,
        }];
        d.on_output(&batch, BatchOutput { outputs });
    }
    assert_eq!(order, vec![ia, ia, ib]);
    assert!(!d.has_work());
    assert_eq!(d.pool().num_active(), 0);
}

#[test]
fn an_engine_reset_recomputes_finished_remote_prefills_still_waiting() {
    let mut cfg = SchedulerConfig::new(4, 32, 256);
    cfg.max_num_seqs = 1;
    let mut d = Scheduler::new(cfg).unwrap();
    let (a, b) = (req((0..6).collect(), 4), req((10..16).collect(), 4));
    let ib = b.request_id;
    for r in [a, b] {
        let id = r.request_id;
        d.reserve_remote(r).unwrap();
        d.complete_remote(id, 9, None).unwrap();
    }
    d.reset_kv();
    // Both are recomputed from their tokens (prompt + the remote first token).
    assert_eq!(d.stats().running, 0);
    assert_eq!(d.stats().waiting, 2);
    let batch = d.schedule().unwrap();
    assert_eq!(batch.seqs.len(), 1);
    assert_eq!(batch.seqs[0].tokens.len(), 7, "prompt and first token");
    assert!(d.abort_all().contains(&ib));
    assert_eq!(d.pool().num_active(), 0);
}
