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

/// The engine `auto` resolves to. The CPU engine is not wired yet, so only the mocker runs.
pub fn resolve(kind: EngineKind) -> anyhow::Result<EngineKind> {
    match kind {
        EngineKind::Auto | EngineKind::Mocker => Ok(EngineKind::Mocker),
        EngineKind::Cpu => usage!(
            "--engine cpu: the CPU engine is not wired into workers yet; use --engine mocker"
        ),
        EngineKind::Cuda => {
            usage!("--engine cuda: the CUDA backend does not exist yet; use --engine mocker")
        }
    }
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

pub fn build(
    kind: EngineKind,
    args: &ModelArgs,
    model: &ModelChoice,
) -> anyhow::Result<Box<dyn Executor>> {
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
            Ok(Box::new(MockerExecutor::new(cfg)?))
        }
        other => usage!("engine {other:?} is not available"),
    }
}
