//! GPU tests (ignored where no CUDA GPU is; run with `cargo test -p ferrite-cuda --test gpu
//! -- --ignored` on a GPU machine; `examples/cuda_check.rs` runs the full set there).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ferrite_cuda::testing::{Alloc, Gen, run_all};
use ferrite_cuda::{CudaExecutor, CudaOptions};
use serde_json::Value;
use std::path::PathBuf;

fn models() -> PathBuf {
    match std::env::var("FERRITE_TEST_MODELS") {
        Ok(p) => PathBuf::from(p),
        Err(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models"),
    }
}

fn cases(file: &str) -> Vec<(Vec<u32>, Vec<u32>)> {
    let p = models().join("reference").join(file);
    let j: Value =
        serde_json::from_str(&std::fs::read_to_string(p).expect("reference")).expect("json");
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .expect("ids")
            .iter()
            .map(|x| x.as_u64().expect("id") as u32)
            .collect()
    };
    j["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| (ids(&c["prompt_token_ids"]), ids(&c["greedy_token_ids"])))
        .collect()
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn stories260k_greedy_equals_reference_alone_and_batched() {
    let mut ex =
        CudaExecutor::load(&models().join("stories260k"), CudaOptions::default()).expect("load");
    let mut all = cases("stories260k.json");
    all.extend(cases("stories260k.batch.json"));
    for (prompt, greedy) in &all {
        let mut alloc = Alloc {
            next: 0,
            block_size: 16,
        };
        let mut g = vec![Gen::new(prompt, greedy.len(), Some(2))];
        run_all(&mut ex, &mut alloc, &mut g, usize::MAX).expect("run");
        assert_eq!(&g[0].generated, greedy);
    }
    let batch = cases("stories260k.batch.json");
    let mut alloc = Alloc {
        next: 0,
        block_size: 16,
    };
    let mut gens: Vec<Gen> = batch
        .iter()
        .enumerate()
        .map(|(i, (p, g))| {
            let mut s = Gen::new(p, g.len(), Some(2));
            s.delay = [0, 3, 1, 7][i % 4];
            s
        })
        .collect();
    run_all(&mut ex, &mut alloc, &mut gens, 5).expect("run");
    for (s, (_, g)) in gens.iter().zip(&batch) {
        assert_eq!(&s.generated, g);
    }
}
