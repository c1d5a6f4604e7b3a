//! ferrite-bench: an OpenAI-compatible load generator (synthetic, shared-prefix,
//! multi-turn and trace workloads) measuring TTFT, ITL, E2E, throughput and goodput.

pub mod client;
pub mod error;
pub mod metrics;
pub mod plot;
pub mod progress;
pub mod prompt;
pub mod report;
pub mod runner;
pub mod workload;

use std::sync::Arc;

pub use error::{BenchError, Result};
pub use metrics::{Goodput, RequestRecord, Stats};
pub use prompt::PromptBuilder;
pub use report::{Report, Summary};
pub use runner::{Endpoint, RunConfig};
pub use workload::{LenDist, LenSpec, TraceEntry, Workload, WorkloadSpec, read_trace};

/// Builds the workload's prompts with `builder` and runs it against `cfg.url`.
pub async fn bench(cfg: &RunConfig, spec: WorkloadSpec, builder: PromptBuilder) -> Result<Report> {
    let name = spec.name();
    let multi_turn = matches!(spec, WorkloadSpec::MultiTurn { .. });
    let exact = builder.is_exact();
    let seed = cfg.seed;
    let workload =
        tokio::task::spawn_blocking(move || Workload::new(spec, builder, seed)).await??;
    let out = runner::run(cfg, Arc::new(workload)).await?;
    Ok(Report::new(cfg, name, exact, multi_turn, out))
}
