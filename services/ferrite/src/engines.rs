//! Builds executors from flags: the only place that picks a concrete backend.

use crate::args::{EngineKind, ModelArgs};
use crate::bundled;
use anyhow::Context;
use ferrite_engine::{EngineError, Executor, ExecutorFactory, FaultPlan, KvCacheSpec};
use ferrite_mocker::{MockerConfig, MockerExecutor};
use ferrite_scheduler::offload::KvTierOptions;
use std::path::{Path, PathBuf};

/// The model to serve: its path and name.
pub struct ModelChoice {
    pub path: PathBuf,
    pub name: String,
}

pub fn model_choice(args: &ModelArgs) -> anyhow::Result<ModelChoice> {
    let path = match &args.model {
        Some(p) => {
            if !p.exists() {
                usage!("--model {}: no such file or folder", p.display());
            }
            p.clone()
        }
        None => bundled::path()?,
    };
    let name = match (&args.served_model_name, &args.model) {
        (Some(n), _) => n.clone(),
        (None, Some(p)) => p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into()),
        (None, None) => bundled::NAME.into(),
    };
    Ok(ModelChoice { path, name })
}

/// The engine `auto` resolves to: CUDA when a GPU and its driver are present (falling back
/// to the CPU engine for models the CUDA backend cannot load, see `backend_factory`), else
/// the CPU engine. `--engine cuda` without a usable GPU is a usage error.
pub fn resolve(kind: EngineKind) -> anyhow::Result<EngineKind> {
    match kind {
        EngineKind::Auto if ferrite_cuda::probe().is_ok() => Ok(EngineKind::Cuda),
        EngineKind::Auto | EngineKind::Cpu => Ok(EngineKind::Cpu),
        EngineKind::Mocker => Ok(EngineKind::Mocker),
        EngineKind::Cuda => match ferrite_cuda::probe() {
            Ok(_) => Ok(EngineKind::Cuda),
            Err(e) => usage!("--engine cuda: {e}; use --engine cpu or --engine mocker"),
        },
    }
}

/// Default KV cache memory of a CPU worker.
const CPU_KV_CACHE_BYTES: u64 = 1 << 30;

/// The CPU engine: loads the weights (progress bar on a terminal, a log line otherwise)
/// and sizes the KV cache to `--kv-blocks` or 1 GiB.
fn cpu(args: &ModelArgs, model: &ModelChoice) -> anyhow::Result<Box<dyn Executor>> {
    let card = ferrite_model::ModelCard::load(&model.path)
        .with_context(|| format!("loading {}", model.path.display()))?;
    let c = &card.config;
    let block_bytes = 2
        * c.num_layers as u64
        * c.num_kv_heads as u64
        * c.head_dim as u64
        * args.kv_block_size as u64
        * 4;
    let num_kv_blocks = match args.kv_blocks {
        Some(n) => n,
        None => (CPU_KV_CACHE_BYTES / block_bytes.max(1)).clamp(64, 65536) as u32,
    };
    let total: u64 = card
        .weight_files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let progress = ferrite_model::LoadProgress::new(&format!("loading {}", model.name), total);
    let opts = ferrite_cpu::CpuOptions {
        num_kv_blocks,
        block_size: args.kv_block_size,
        threads: 0,
        f32_activations: args.cpu_f32_activations,
    };
    let exec = ferrite_cpu::CpuExecutor::load(&model.path, opts)
        .with_context(|| format!("loading {}", model.path.display()))?;
    progress.inc(total);
    progress.finish();
    Ok(Box::new(exec))
}

/// Ordinary text tokens of the model's vocabulary, for the mocker to emit.
fn mocker_tokens(model: &Path) -> anyhow::Result<(u32, std::ops::Range<u32>)> {
    let card = ferrite_model::ModelCard::load(model)
        .with_context(|| format!("loading the tokenizer of {}", model.display()))?;
    let vocab = card.tokenizer.vocab_size() as u32;
    // Skip special tokens and byte-fallback pieces (`<0x41>`): random bytes would not
    // decode to valid text.
    let tok = &card.tokenizer;
    let plain = |id: u32| {
        !tok.is_special(id)
            && tok
                .token_to_piece(id)
                .is_some_and(|p| !(p.starts_with("<0x") && p.ends_with('>')))
    };
    let start = (0..vocab)
        .rev()
        .take_while(|&id| plain(id))
        .last()
        .unwrap_or(vocab);
    if start >= vocab {
        usage!(
            "{}: the tokenizer has no ordinary tokens for the mocker to emit",
            model.display()
        );
    }
    Ok((vocab, start..vocab))
}

/// Makes the executor of each worker rank, at start and after a crash; what can be shared
/// (the mocker's vocabulary scan) is done once, when the factory is made. With
/// `--fault-panic-at-step` every executor is wrapped in a fault injector (a testing aid)
/// whose panic budget (`--fault-panic-times`) is shared by the whole process.
///
/// Also returns the KV offload tiers every rank's scheduler gets (`None`: off).
pub fn factory(
    kind: EngineKind,
    args: &ModelArgs,
    model: &ModelChoice,
) -> anyhow::Result<(ExecutorFactory, Option<KvTierOptions>)> {
    let (make, tiers) = backend_factory(kind, args, model)?;
    let Some(step) = args.fault_panic_at_step else {
        return Ok((make, tiers));
    };
    if step == 0 {
        usage!("--fault-panic-at-step must be at least 1");
    }
    let plan = FaultPlan::new(step, args.fault_panic_times);
    tracing::warn!(
        step,
        times = ?args.fault_panic_times,
        "FAULT INJECTION (testing aid): executors panic at forward step {step}"
    );
    let make: ExecutorFactory = std::sync::Arc::new(move |rank| Ok(plan.wrap(make(rank)?)));
    Ok((make, tiers))
}

fn backend_factory(
    kind: EngineKind,
    args: &ModelArgs,
    model: &ModelChoice,
) -> anyhow::Result<(ExecutorFactory, Option<KvTierOptions>)> {
    let cuda_check = || ferrite_cuda::CudaExecutor::check_model(&model.path);
    let kind = match kind {
        EngineKind::Cuda if matches!(args.engine, EngineKind::Auto) && cuda_check().is_err() => {
            tracing::info!(
                "--engine auto: the CUDA backend cannot load this model; using the CPU engine"
            );
            EngineKind::Cpu
        }
        EngineKind::Cuda => match cuda_check() {
            Ok(_) => EngineKind::Cuda,
            Err(e) => usage!("--engine cuda: {e}"),
        },
        other => other,
    };
    let tiers = kv_tiers(args)?;
    let make: ExecutorFactory = match kind {
        EngineKind::Mocker => {
            let (vocab_size, token_range) = mocker_tokens(&model.path)?;
            let cfg = MockerConfig {
                kv: KvCacheSpec {
                    num_blocks: args.kv_blocks.unwrap_or(16384),
                    block_size: args.kv_block_size,
                },
                vocab_size,
                token_range,
                max_context: 8192,
                speedup: args.speedup,
                kv_bytes_per_block: if tiers.is_some() { MOCK_KV_PAYLOAD } else { 0 },
                kv_sim_bytes_per_block: if tiers.is_some() {
                    gpu_block_bytes(&model.path, args.kv_block_size)?
                } else {
                    0
                },
                ..MockerConfig::default()
            };
            let tiers = tiers.map(|t| mocker_tiers(t, cfg.kv_sim_bytes_per_block));
            let make: ExecutorFactory = std::sync::Arc::new(move |_rank| {
                Ok(Box::new(MockerExecutor::new(cfg.clone())?) as Box<dyn Executor>)
            });
            return Ok((make, tiers));
        }
        EngineKind::Cpu => {
            install_structured_output(&model.path);
            let (args, model) = (
                args.clone(),
                ModelChoice {
                    path: model.path.clone(),
                    name: model.name.clone(),
                },
            );
            std::sync::Arc::new(move |_rank| {
                cpu(&args, &model).map_err(|e| EngineError::Backend(format!("{e:#}")))
            })
        }
        EngineKind::Cuda => {
            install_structured_output(&model.path);
            let opts = ferrite_cuda::CudaOptions {
                num_kv_blocks: args.kv_blocks.unwrap_or(0),
                block_size: args.kv_block_size,
                batch_invariant: args.cuda_batch_invariant,
                ..Default::default()
            };
            let path = model.path.clone();
            std::sync::Arc::new(move |_rank| {
                let ex = ferrite_cuda::CudaExecutor::load(&path, opts).map_err(|e| {
                    EngineError::Backend(format!("loading {} on CUDA: {e}", path.display()))
                })?;
                Ok(Box::new(ex) as Box<dyn Executor>)
            })
        }
        other => usage!("engine {other:?} is not available"),
    };
    Ok((make, tiers))
}

/// `--kv-host-cache-gb`/`--kv-disk-cache-gb`: the offload tiers every scheduler of this
/// process gets (issue 9, docs/kvbm.md); `None` when both are 0.
fn kv_tiers(args: &ModelArgs) -> anyhow::Result<Option<KvTierOptions>> {
    for (flag, v) in [
        ("--kv-host-cache-gb", args.kv_host_cache_gb),
        ("--kv-disk-cache-gb", args.kv_disk_cache_gb),
    ] {
        if !v.is_finite() || v < 0.0 {
            usage!("{flag} must be a size in GiB >= 0, got {v}");
        }
    }
    let opts = KvTierOptions {
        host_bytes: (args.kv_host_cache_gb * GIB) as u64,
        disk_bytes: (args.kv_disk_cache_gb * GIB) as u64,
        disk_dir: args.kv_disk_cache_dir.clone(),
        min_hits_for_disk: args.kv_offload_min_hits,
    };
    if !opts.is_enabled() {
        return Ok(None);
    }
    tracing::info!(?opts, "KV offload tiers on");
    Ok(Some(opts))
}

const GIB: f64 = (1u64 << 30) as f64;

/// Bytes the mocker really stores per offloaded block (its blocks hold no KV).
const MOCK_KV_PAYLOAD: usize = 16;

/// The mocker stores `MOCK_KV_PAYLOAD` bytes per block but simulates `sim_bytes`: the tier
/// sizes are rescaled so that they hold as many blocks as they would on the GPU machine.
fn mocker_tiers(mut opts: KvTierOptions, sim_bytes: usize) -> KvTierOptions {
    let blocks = |bytes: u64| bytes / sim_bytes.max(1) as u64;
    opts.host_bytes = blocks(opts.host_bytes) * MOCK_KV_PAYLOAD as u64;
    opts.disk_bytes =
        blocks(opts.disk_bytes) * ferrite_kv::tiers::disk_slot_bytes(MOCK_KV_PAYLOAD) as u64;
    opts
}

/// Bytes of one KV block of `model` on a GPU (bf16), for the mocker's simulated copies.
fn gpu_block_bytes(model: &Path, block_size: u32) -> anyhow::Result<usize> {
    let card = ferrite_model::ModelCard::load(model)
        .with_context(|| format!("loading {}", model.display()))?;
    let c = &card.config;
    Ok(2 * c.num_layers * c.num_kv_heads * c.head_dim * block_size as usize * 2)
}

/// Structured output (issue 5, ferrite-structured): installs the sampler's guided-decoding
/// provider for this model's vocabulary, once per process. If it cannot be built, guided
/// requests fail with a clear error and everything else still runs.
fn install_structured_output(model: &Path) {
    let installed = ferrite_model::ModelCard::load(model)
        .map_err(anyhow::Error::from)
        .and_then(|card| {
            ferrite_structured::install(&card.tokenizer, &card.eos_token_ids)
                .map_err(anyhow::Error::from)
        });
    if let Err(e) = installed {
        tracing::warn!(error = %format!("{e:#}"), "structured output unavailable");
    }
}
