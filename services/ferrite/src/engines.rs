//! Builds executors from flags: the only place that picks a concrete backend.

use crate::args::{EngineKind, ModelArgs};
use crate::bundled;
use anyhow::Context;
use ferrite_engine::{Executor, KvCacheSpec};
use ferrite_mocker::{MockerConfig, MockerExecutor};
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

/// The engine `auto` resolves to: the CPU engine (the CUDA backend does not exist yet).
pub fn resolve(kind: EngineKind) -> anyhow::Result<EngineKind> {
    match kind {
        EngineKind::Auto | EngineKind::Cpu => Ok(EngineKind::Cpu),
        EngineKind::Mocker => Ok(EngineKind::Mocker),
        EngineKind::Cuda => usage!(
            "--engine cuda: the CUDA backend does not exist yet; use --engine cpu or --engine mocker"
        ),
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
        f32_activations: false,
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

/// Makes one executor per worker; what can be shared (the mocker's vocabulary scan) is
/// done once, when the factory is made.
pub type EngineFactory = Box<dyn Fn() -> anyhow::Result<Box<dyn Executor>>>;

pub fn factory(
    kind: EngineKind,
    args: &ModelArgs,
    model: &ModelChoice,
) -> anyhow::Result<EngineFactory> {
    if args.kv_host_cache_gb > 0.0 || args.kv_disk_cache_gb > 0.0 {
        usage!("--kv-host-cache-gb/--kv-disk-cache-gb: KV offload tiers are not implemented yet");
    }
    match kind {
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
            };
            Ok(Box::new(move || {
                Ok(Box::new(MockerExecutor::new(cfg.clone())?) as Box<dyn Executor>)
            }))
        }
        EngineKind::Cpu => {
            let (args, model) = (
                args.clone(),
                ModelChoice {
                    path: model.path.clone(),
                    name: model.name.clone(),
                },
            );
            Ok(Box::new(move || cpu(&args, &model)))
        }
        other => usage!("engine {other:?} is not available"),
    }
}
