//! Precomputed prompt embeddings on the CPU engine: rows equal to the model's own token
//! embeddings reproduce the text prompt bit for bit (also when a prefill chunk boundary
//! falls inside the rows, and on a quantised GGUF); other rows change the output; a batch
//! whose embedding tokens lack rows, or whose rows have the wrong width, is refused.

mod common;
use common::*;
use ferrite_engine::Executor;
use ferrite_protocol::{PromptEmbeds, embeds::embed_token};
use std::sync::Arc;

/// `prompt` with positions `span` given as the model's own embedding rows.
fn with_rows(ex: &ferrite_cpu::CpuExecutor, prompt: &[u32], span: std::ops::Range<usize>) -> Seq {
    let mut tokens = prompt[..span.start].to_vec();
    let mut e = PromptEmbeds::new(ex.config().hidden as u32);
    e.append(&mut tokens, ex.token_embeddings(&prompt[span.clone()]));
    tokens.extend_from_slice(&prompt[span.end..]);
    let mut s = Seq::new(&tokens, 0, None);
    s.embeds = Some(Arc::new(e));
    s
}

/// A reference prompt of at least 12 tokens.
fn long_case() -> Case {
    cases("stories260k.batch.json")
        .into_iter()
        .find(|c| c.prompt.len() >= 12)
        .expect("a stories260k reference prompt of 12+ tokens")
}

fn run_one(ex: &mut ferrite_cpu::CpuExecutor, mut s: Seq, max_new: usize, chunk: usize) -> Seq {
    s.max_new = max_new;
    let mut alloc = Alloc {
        next: 0,
        block_size: 16,
    };
    let mut seqs = vec![s];
    run_all(ex, &mut alloc, &mut seqs, &[0], chunk);
    seqs.pop().expect("one sequence")
}

fn same_as_text(model: &str, prompt: &[u32], span: std::ops::Range<usize>, max_new: usize) {
    let mut ex = load(model, 256);
    let text = run_one(&mut ex, Seq::new(prompt, 0, None), max_new, usize::MAX);
    for chunk in [usize::MAX, span.start + 2] {
        let seq = with_rows(&ex, prompt, span.clone());
        let rows = run_one(&mut ex, seq, max_new, chunk);
        assert_eq!(rows.generated(), text.generated(), "{model} chunk {chunk}");
        assert_eq!(
            rows.logits, text.logits,
            "{model} chunk {chunk}: logits differ"
        );
    }
}

#[test]
fn own_token_rows_reproduce_the_text_prompt_exactly() {
    let case = long_case();
    same_as_text("stories260k", &case.prompt, 2..7, 12);
}

#[test]
fn own_token_rows_reproduce_the_text_prompt_on_a_quantised_gguf() {
    let prompt: Vec<u32> = vec![1, 504, 3218, 314, 253, 655, 28, 645, 4210, 457, 30];
    same_as_text(
        "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf",
        &prompt,
        3..9,
        6,
    );
}

#[test]
fn other_rows_change_the_output_and_bad_rows_are_refused() {
    let case = long_case();
    let mut ex = load("stories260k", 256);
    let text = run_one(&mut ex, Seq::new(&case.prompt, 0, None), 4, usize::MAX);
    let mut s = with_rows(&ex, &case.prompt, 2..7);
    let mut e = (**s.embeds.as_ref().expect("rows")).clone();
    for v in &mut e.spans[0].data {
        *v = -*v * 3.0;
    }
    let h = e.width as usize;
    for (i, row) in e.spans[0].data.chunks(h).enumerate() {
        s.tokens[2 + i] = embed_token(row);
    }
    s.embeds = Some(Arc::new(e.clone()));
    let other = run_one(&mut ex, s, 4, usize::MAX);
    assert_ne!(other.logits[0], text.logits[0], "the rows were not used");

    // An embedding token without a row, and rows of the wrong width, fail the step.
    let mut alloc = Alloc {
        next: 0,
        block_size: 16,
    };
    let mut missing = with_rows(&ex, &case.prompt, 2..7);
    missing.embeds = None;
    let batch = ferrite_engine::Batch {
        seqs: vec![alloc.input(&mut missing, usize::MAX)],
    };
    let err = ex.forward(&batch).expect_err("no rows").to_string();
    assert!(err.contains("no embedding row"), "{err}");

    let mut narrow = with_rows(&ex, &case.prompt, 2..7);
    let mut e = PromptEmbeds::new(h as u32 - 1);
    let mut toks = case.prompt[..2].to_vec();
    e.append(&mut toks, vec![0.5; 5 * (h - 1)]);
    toks.extend_from_slice(&case.prompt[7..]);
    narrow.tokens = toks;
    narrow.embeds = Some(Arc::new(e));
    let batch = ferrite_engine::Batch {
        seqs: vec![alloc.input(&mut narrow, usize::MAX)],
    };
    let err = ex.forward(&batch).expect_err("wrong width").to_string();
    assert!(err.contains("hidden size"), "{err}");
}
