//! `ferrite bench`: flags for the `ferrite-bench` load generator, which works against any
//! OpenAI-compatible server. Parses and wires; the logic lives in `ferrite-bench`.

use anyhow::Context;
use clap::{Args, ValueEnum};
use ferrite_bench::{
    BenchError, Endpoint, LenDist, LenSpec, PromptBuilder, Report, RunConfig, WorkloadSpec,
};
use std::path::PathBuf;
use std::time::Duration;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Independent random prompts of --input-len tokens.
    Synthetic,
    /// --groups groups whose prompts share a --prefix-len prefix (--group-order).
    SharedPrefix,
    /// --conversations chats of --turns turns, each re-sending the whole history.
    MultiTurn,
    /// Replay a Mooncake-style JSONL trace (--trace) at its timestamps.
    Trace,
}

/// How shared-prefix requests pick their group.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupOrder {
    /// A seeded random group per request (users of a chat product).
    Random,
    /// Request i belongs to group i % groups.
    Interleaved,
}

/// In which order multi-turn conversations send their turns.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TurnOrder {
    /// Each conversation's turns back to back in one concurrency slot.
    Sequential,
    /// Turn t of every conversation before turn t+1 of any.
    Interleaved,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointArg {
    Chat,
    Completions,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LenDistArg {
    Fixed,
    Uniform,
    Normal,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000", env = "FERRITE_URL")]
    pub url: String,
    /// Model name to request; default: the first of /v1/models.
    #[arg(long, env = "FERRITE_MODEL_NAME")]
    pub model: Option<String>,
    #[arg(
        long,
        value_enum,
        default_value = "synthetic",
        env = "FERRITE_WORKLOAD"
    )]
    pub workload: Workload,
    /// Default: chat for multi-turn, completions otherwise.
    #[arg(long, value_enum, env = "FERRITE_ENDPOINT")]
    pub endpoint: Option<EndpointArg>,
    /// Closed loop: requests in flight (default 16); with --rate or a trace: the most in flight.
    #[arg(long, env = "FERRITE_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// Open loop: Poisson arrivals per second (seeded).
    #[arg(long, env = "FERRITE_RATE")]
    pub rate: Option<f64>,
    /// Requests to send (default 100; a trace: all its lines; multi-turn: not used, it sends --conversations × --turns).
    #[arg(long, visible_alias = "requests", env = "FERRITE_NUM_REQUESTS")]
    pub num_requests: Option<usize>,
    /// Stop starting requests after this many seconds.
    #[arg(long, env = "FERRITE_DURATION")]
    pub duration: Option<f64>,
    /// Prompt tokens (multi-turn: tokens of each new user message).
    #[arg(
        long,
        visible_alias = "isl",
        default_value_t = 512,
        env = "FERRITE_INPUT_LEN"
    )]
    pub input_len: usize,
    /// Output tokens (`max_tokens`).
    #[arg(
        long,
        visible_alias = "osl",
        default_value_t = 128,
        env = "FERRITE_OUTPUT_LEN"
    )]
    pub output_len: usize,
    /// How input, suffix and output lengths vary.
    #[arg(long, value_enum, default_value = "fixed", env = "FERRITE_LEN_DIST")]
    pub len_dist: LenDistArg,
    /// Relative spread: uniform ±spread·mean, normal σ = spread·mean.
    #[arg(long, default_value_t = 0.2, env = "FERRITE_LEN_SPREAD")]
    pub len_spread: f64,
    /// shared-prefix: number of prefix groups.
    #[arg(long, default_value_t = 4, env = "FERRITE_GROUPS")]
    pub groups: usize,
    /// shared-prefix: which group each request belongs to.
    #[arg(
        long,
        value_enum,
        default_value = "random",
        env = "FERRITE_GROUP_ORDER"
    )]
    pub group_order: GroupOrder,
    /// shared-prefix: tokens of each group's shared prefix.
    #[arg(long, default_value_t = 1024, env = "FERRITE_PREFIX_LEN")]
    pub prefix_len: usize,
    /// shared-prefix: tokens after the prefix, different for every request.
    #[arg(long, default_value_t = 128, env = "FERRITE_SUFFIX_LEN")]
    pub suffix_len: usize,
    /// multi-turn: conversations.
    #[arg(long, default_value_t = 8, env = "FERRITE_CONVERSATIONS")]
    pub conversations: usize,
    /// multi-turn: turns per conversation.
    #[arg(long, default_value_t = 4, env = "FERRITE_TURNS")]
    pub turns: usize,
    /// multi-turn: `sequential` runs each conversation's turns back to back in one
    /// concurrency slot; `interleaved` sends turn t of every conversation before turn
    /// t+1 of any (users pausing between turns while others talk).
    #[arg(
        long,
        value_enum,
        default_value = "sequential",
        env = "FERRITE_TURN_ORDER"
    )]
    pub turn_order: TurnOrder,
    /// multi-turn: tokens of each conversation's first message (a document, a long
    /// history); later turns use --input-len. Default: --input-len.
    #[arg(long, env = "FERRITE_FIRST_INPUT_LEN")]
    pub first_input_len: Option<usize>,
    /// trace: JSONL of {timestamp (ms), input_length, output_length, hash_ids}.
    #[arg(long, env = "FERRITE_TRACE")]
    pub trace: Option<PathBuf>,
    /// trace: tokens per hash id block.
    #[arg(long, default_value_t = 512, env = "FERRITE_TRACE_BLOCK_SIZE")]
    pub trace_block_size: usize,
    /// trace: divide the trace's timestamps by this.
    #[arg(long, default_value_t = 1.0, env = "FERRITE_TRACE_SPEEDUP")]
    pub trace_speedup: f64,
    /// tokenizer.json or model folder: exact prompt token counts (else approximate, in words).
    #[arg(long, env = "FERRITE_TOKENIZER")]
    pub tokenizer: Option<PathBuf>,
    /// Seed for prompts, lengths and arrivals.
    #[arg(long, default_value_t = 0, env = "FERRITE_SEED")]
    pub seed: u64,
    /// Do not send `ignore_eos: true` (for servers that reject the extension).
    #[arg(long, env = "FERRITE_NO_IGNORE_EOS")]
    pub no_ignore_eos: bool,
    /// Seconds one request may take.
    #[arg(long, default_value_t = 600.0, env = "FERRITE_TIMEOUT")]
    pub timeout: f64,
    /// Goodput: a request meets the SLO with TTFT at most this.
    #[arg(long, env = "FERRITE_SLO_TTFT_MS")]
    pub slo_ttft_ms: Option<f64>,
    /// Goodput: ... and mean inter-token latency at most this.
    #[arg(long, env = "FERRITE_SLO_ITL_MS")]
    pub slo_itl_ms: Option<f64>,
    /// Write the summary and every request's record as JSON here.
    #[arg(long, env = "FERRITE_JSON")]
    pub json: Option<PathBuf>,
    /// Write TTFT and ITL histograms and CDFs (PNG) into this folder.
    #[arg(long, env = "FERRITE_PLOT")]
    pub plot: Option<PathBuf>,
    /// No progress bar or progress lines.
    #[arg(long, env = "FERRITE_NO_PROGRESS")]
    pub no_progress: bool,
}

fn secs(flag: &str, s: f64) -> anyhow::Result<Duration> {
    if !(s > 0.0 && s.is_finite()) {
        usage!("{flag} must be a positive number of seconds");
    }
    Ok(Duration::from_secs_f64(s))
}

impl BenchArgs {
    fn len(&self, mean: usize) -> LenSpec {
        LenSpec {
            mean,
            dist: match self.len_dist {
                LenDistArg::Fixed => LenDist::Fixed,
                LenDistArg::Uniform => LenDist::Uniform,
                LenDistArg::Normal => LenDist::Normal,
            },
            spread: self.len_spread,
        }
    }

    fn config(&self) -> anyhow::Result<RunConfig> {
        if self.input_len == 0 || self.output_len == 0 || self.first_input_len == Some(0) {
            usage!("--input-len, --first-input-len and --output-len must be positive");
        }
        if !(0.0..=1.0).contains(&self.len_spread) {
            usage!("--len-spread must be within 0..=1");
        }
        if self.trace.is_some() != (self.workload == Workload::Trace) {
            usage!("--trace FILE goes with --workload trace, and only with it");
        }
        Ok(RunConfig {
            url: self.url.clone(),
            model: self.model.clone(),
            endpoint: self.endpoint.map(|e| match e {
                EndpointArg::Chat => Endpoint::Chat,
                EndpointArg::Completions => Endpoint::Completions,
            }),
            concurrency: self.concurrency,
            rate: self.rate,
            num_requests: self.num_requests,
            duration: self.duration.map(|d| secs("--duration", d)).transpose()?,
            ignore_eos: !self.no_ignore_eos,
            timeout: secs("--timeout", self.timeout)?,
            seed: self.seed,
            slo_ttft_ms: self.slo_ttft_ms,
            slo_itl_ms: self.slo_itl_ms,
            progress: !self.no_progress,
            interleave_turns: self.turn_order == TurnOrder::Interleaved,
        })
    }

    /// The workload; reads the trace file.
    fn spec(&self) -> anyhow::Result<WorkloadSpec> {
        Ok(match self.workload {
            Workload::Synthetic => WorkloadSpec::Synthetic {
                input: self.len(self.input_len),
                output: self.len(self.output_len),
            },
            Workload::SharedPrefix => WorkloadSpec::SharedPrefix {
                groups: self.groups,
                random_groups: self.group_order == GroupOrder::Random,
                prefix_len: self.prefix_len,
                suffix: self.len(self.suffix_len),
                output: self.len(self.output_len),
            },
            Workload::MultiTurn => WorkloadSpec::MultiTurn {
                conversations: self.conversations,
                turns: self.turns,
                input: self.len(self.input_len),
                output: self.len(self.output_len),
                first_input: self.first_input_len.map(|n| self.len(n)),
            },
            Workload::Trace => {
                let path = self.trace.as_deref().context("--trace")?;
                WorkloadSpec::Trace {
                    entries: ferrite_bench::read_trace(path).map_err(usage_of)?,
                    block_size: self.trace_block_size,
                    speedup: self.trace_speedup,
                }
            }
        })
    }
}

/// Flag and input mistakes exit with status 2.
fn usage_of(e: BenchError) -> anyhow::Error {
    if e.is_usage() {
        crate::args::UsageError(e.to_string()).into()
    } else {
        e.into()
    }
}

pub async fn run(a: BenchArgs) -> anyhow::Result<()> {
    let cfg = a.config()?;
    let spec = a.spec()?;
    let builder = match &a.tokenizer {
        Some(p) => {
            PromptBuilder::load(p).with_context(|| format!("--tokenizer {}", p.display()))?
        }
        None => {
            eprintln!(
                "bench: no --tokenizer: prompt lengths are approximate (counted in words, not tokens)"
            );
            PromptBuilder::approximate()
        }
    };
    // Its own multi-threaded runtime, so that measuring many streams does not share
    // one thread with prompt building or anything else of this process.
    let report: Report = tokio::task::spawn_blocking(move || -> anyhow::Result<Report> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        rt.block_on(ferrite_bench::bench(&cfg, spec, builder))
            .map_err(usage_of)
    })
    .await??;
    print!("{}", report.to_text());
    if let Some(p) = &a.json {
        report
            .write_json(p)
            .with_context(|| format!("--json {}", p.display()))?;
    }
    if let Some(dir) = &a.plot {
        let files = ferrite_bench::plot::write_plots(dir, &report.requests)
            .with_context(|| format!("--plot {}", dir.display()))?;
        for f in files {
            eprintln!("bench: wrote {}", f.display());
        }
    }
    let t = &report.summary.totals;
    if t.requests_ok == 0 {
        anyhow::bail!(
            "no request succeeded ({} failed): {}",
            t.requests_failed,
            t.first_error.as_deref().unwrap_or("no request was sent")
        );
    }
    Ok(())
}
