//! fp32 stories260k against the transformers reference: exact greedy tokens, top-10 logits
//! within 1e-3 relative, and batch invariance.

mod common;
use common::*;
use ferrite_engine::{Batch, Executor, SamplingContext, SeqInput, slot_for};
use ferrite_protocol::BlockId;

const MODEL: &str = "stories260k";

fn all_cases() -> Vec<Case> {
    let mut c = cases("stories260k.json");
    c.extend(cases("stories260k.batch.json"));
    c
}

#[test]
fn greedy_and_logits_match_reference_alone() {
    let mut ex = load(MODEL, 512);
    let mut worst = (0f32, 0f32);
    for case in all_cases() {
        let mut alloc = Alloc {
            next: 0,
            block_size: 16,
        };
        let mut seqs = vec![Seq::new(&case.prompt, case.greedy.len(), Some(2))];
        run_all(&mut ex, &mut alloc, &mut seqs, &[0], usize::MAX);
        assert_eq!(seqs[0].generated(), &case.greedy[..], "case {}", case.name);
        let (rel, abs) = max_rel_err(&seqs[0], &case);
        assert!(
            rel <= 1e-3,
            "case {}: logit rel err {rel} (abs {abs})",
            case.name
        );
        worst = (worst.0.max(rel), worst.1.max(abs));
    }
    eprintln!(
        "stories260k: max top-10 logit error rel {:.3e} abs {:.3e}",
        worst.0, worst.1
    );
}

fn check_batch(delays: &[usize], chunk: usize) {
    let cases = cases("stories260k.batch.json");
    let mut ex = load(MODEL, 512);
    let mut alloc = Alloc {
        next: 0,
        block_size: 16,
    };
    let mut seqs: Vec<Seq> = cases
        .iter()
        .map(|c| Seq::new(&c.prompt, c.greedy.len(), Some(2)))
        .collect();
    run_all(&mut ex, &mut alloc, &mut seqs, delays, chunk);
    for (s, c) in seqs.iter().zip(&cases) {
        assert_eq!(
            s.generated(),
            &c.greedy[..],
            "case {} delays {delays:?} chunk {chunk}",
            c.name
        );
        let (rel, _) = max_rel_err(s, c);
        assert!(rel <= 1e-3, "case {}: rel err {rel}", c.name);
    }
}

#[test]
fn batch_together_matches_alone() {
    check_batch(&[0, 0, 0, 0], usize::MAX);
}

#[test]
fn batch_staggered_and_chunked_matches_alone() {
    check_batch(&[0, 3, 1, 7], usize::MAX);
    check_batch(&[0, 0, 2, 0], 5);
    check_batch(&[4, 0, 1, 2], 16);
}

#[test]
fn prefix_already_in_cache_matches_alone() {
    let cases = cases("stories260k.batch.json");
    let long = cases.iter().max_by_key(|c| c.prompt.len()).expect("cases");
    let mut ex = load(MODEL, 512);
    let mut alloc = Alloc {
        next: 0,
        block_size: 16,
    };
    // First request computes the whole prompt.
    let mut first = vec![Seq::new(&long.prompt, 1, Some(2))];
    run_all(&mut ex, &mut alloc, &mut first, &[0], usize::MAX);
    // Second shares its full blocks (prefix-cache hit) and prefills only the rest.
    let full = long.prompt.len() / 16;
    let mut second = Seq::new(&long.prompt, long.greedy.len(), Some(2));
    second.blocks = first[0].blocks[..full].to_vec();
    second.cached = full * 16;
    let mut seqs = vec![second];
    run_all(&mut ex, &mut alloc, &mut seqs, &[0], usize::MAX);
    assert_eq!(seqs[0].generated(), &long.greedy[..]);
}

#[test]
fn executor_forward_samples_greedy_and_rejects_bad_batches() {
    let case = &cases("stories260k.json")[0];
    let mut ex = load(MODEL, 64);
    let info = ex.info();
    assert_eq!(
        (info.vocab_size, info.kv.num_blocks, info.kv.block_size),
        (512, 64, 16)
    );
    let blocks = vec![BlockId(5), BlockId(9)];
    let n = case.prompt.len() as u32;
    let batch = Batch {
        seqs: vec![SeqInput {
            request_id: Default::default(),
            tokens: case.prompt.clone(),
            start_pos: 0,
            block_table: blocks.clone(),
            slot_mapping: (0..n)
                .map(|p| slot_for(&blocks, 16, p).expect("slot"))
                .collect(),
            sample: true,
            embeds: None,
            sampling: SamplingContext::default(),
        }],
    };
    let out = ex.forward(&batch).expect("forward");
    assert_eq!(out.outputs.len(), 1);
    assert_eq!(out.outputs[0].token, case.greedy[0]);

    let mut bad = batch.clone();
    bad.seqs[0].block_table = vec![BlockId(64)];
    assert!(
        ex.forward(&bad).is_err(),
        "block beyond the cache must fail"
    );
    let mut bad = batch.clone();
    bad.seqs[0].slot_mapping.pop();
    assert!(
        ex.forward(&bad).is_err(),
        "slot mapping length mismatch must fail"
    );
    let mut bad = batch;
    bad.seqs[0].tokens[0] = 512;
    assert!(ex.forward(&bad).is_err(), "token outside vocab must fail");
}

#[test]
fn missing_and_unsupported_models_name_the_file() {
    let err = ferrite_cpu::CpuExecutor::load(
        std::path::Path::new("/nonexistent/model.gguf"),
        Default::default(),
    )
    .expect_err("missing file");
    assert!(err.to_string().contains("/nonexistent/model.gguf"), "{err}");
}
