//! CPU-side tests of the CUDA crate that run everywhere: a clear error without a GPU, and
//! the float32 reference (what GPU logits are checked against) equal to the CPU backend on
//! stories260k.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ferrite_cuda::{CudaConfig, CudaError, CudaExecutor, CudaOptions, reference, weights};
use ferrite_engine::{Batch, SamplingContext, SeqInput, slot_for};
use ferrite_protocol::BlockId;
use std::path::PathBuf;

fn stories() -> PathBuf {
    match std::env::var("FERRITE_TEST_MODELS") {
        Ok(p) => PathBuf::from(p).join("stories260k"),
        Err(_) => {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/stories260k")
        }
    }
}

#[test]
fn constructing_without_a_gpu_is_a_clear_error_not_a_panic() {
    let r = CudaExecutor::load(&stories(), CudaOptions::default());
    match ferrite_cuda::probe() {
        Err(_) => {
            let e = r.expect_err("no GPU here, yet the executor was built");
            assert!(matches!(e, CudaError::NoDevice(_)), "{e:?}");
            let msg = e.to_string();
            assert!(msg.starts_with("no CUDA GPU available"), "{msg}");
            assert!(!msg.contains('\n'), "one line: {msg}");
            // The engine error the scheduler sees keeps the message.
            let ee: ferrite_engine::EngineError = e.into();
            assert!(ee.to_string().contains("no CUDA GPU available"));
        }
        Ok(_) => {
            // On a GPU machine the same call must succeed.
            r.expect("GPU present, executor should load");
        }
    }
}

#[test]
fn random_weights_without_a_gpu_error_too() {
    if ferrite_cuda::probe().is_ok() {
        return;
    }
    let e = CudaExecutor::random(CudaConfig::llama31_8b(1, 128), 1, CudaOptions::default())
        .expect_err("no GPU");
    assert!(matches!(e, CudaError::NoDevice(_)), "{e:?}");
}

#[test]
fn f32_reference_matches_the_cpu_backend_on_stories260k() {
    let dir = stories();
    let m = ferrite_model::ModelConfig::from_hf_file(&dir.join("config.json")).expect("config");
    let cfg = CudaConfig::from_model(&m).expect("llama");
    let host = weights::load_safetensors(&dir, &cfg).expect("weights");
    let prompt: Vec<u32> = vec![1, 403, 407, 261, 378, 1032 % 512, 275, 300, 47, 99, 420, 13];
    let want: Vec<usize> = vec![3, prompt.len() - 1];
    let refl = reference::forward(&cfg, &host, &prompt, &want);

    let mut cpu = ferrite_cpu::CpuExecutor::load(
        &dir,
        ferrite_cpu::CpuOptions {
            num_kv_blocks: 8,
            f32_activations: true,
            ..Default::default()
        },
    )
    .expect("cpu");
    let blocks = vec![BlockId(2)];
    for (k, &p) in want.iter().enumerate() {
        let toks = &prompt[..=p];
        let batch = Batch {
            seqs: vec![SeqInput {
                request_id: Default::default(),
                tokens: toks.to_vec(),
                start_pos: 0,
                block_table: blocks.clone(),
                slot_mapping: (0..toks.len() as u32)
                    .map(|i| slot_for(&blocks, 16, i).expect("slot"))
                    .collect(),
                sample: true,
                embeds: None,
                sampling: SamplingContext::default(),
            }],
        };
        let cl = cpu.forward_logits(&batch).expect("cpu forward");
        let rel = reference::rel_l2(&refl[k], &cl[0]);
        assert!(rel < 1e-5, "position {p}: reference vs CPU rel L2 {rel}");
        assert_eq!(
            ferrite_engine::sampler::argmax(&refl[k]),
            ferrite_engine::sampler::argmax(&cl[0])
        );
    }
}
