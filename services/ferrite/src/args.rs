//! Command-line flags (ARCHITECTURE.md §8). Every flag also reads `FERRITE_<FLAG>`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "ferrite",
    version,
    about = "Ferrite: a distributed LLM inference server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Frontend and workers in one process, with in-memory discovery and bus.
    Serve(ServeArgs),
    /// The HTTP frontend of a cluster (etcd + NATS).
    Frontend(FrontendArgs),
    /// One or more workers of a cluster (etcd + NATS).
    Worker(WorkerArgs),
    /// Load generator against an OpenAI-compatible server.
    Bench(crate::bench::BenchArgs),
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// The best engine available for the model on this machine.
    Auto,
    Cpu,
    Cuda,
    /// A simulated engine (timing model, deterministic tokens): no real inference.
    Mocker,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Agg,
    Prefill,
    Decode,
}

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model folder (HF) or GGUF file; default: the bundled stories260k.
    #[arg(long, env = "FERRITE_MODEL")]
    pub model: Option<PathBuf>,
    /// Name clients use in `model`; default: the folder's or file's name.
    #[arg(long, env = "FERRITE_SERVED_MODEL_NAME")]
    pub served_model_name: Option<String>,
    #[arg(long, value_enum, default_value = "auto", env = "FERRITE_ENGINE")]
    pub engine: EngineKind,
    /// Workers (engines) in this process.
    #[arg(long, default_value_t = 1, env = "FERRITE_NUM_WORKERS")]
    pub num_workers: usize,
    /// Mocker only: divide simulated time by this.
    #[arg(long, default_value_t = 1.0, env = "FERRITE_SPEEDUP")]
    pub speedup: f64,
    /// KV cache blocks per worker (default: the engine's own choice).
    #[arg(long, env = "FERRITE_KV_BLOCKS")]
    pub kv_blocks: Option<u32>,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16, env = "FERRITE_KV_BLOCK_SIZE")]
    pub kv_block_size: u32,
    /// CUDA only: a sequence's tokens never depend on what it is batched with (every GEMM
    /// through Ferrite's tensor-core kernel). `false` lets large steps use cuBLAS: about 3x
    /// the throughput of big batches, same batch-1 speed (docs/benchmarks/cuda.md).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "FERRITE_CUDA_BATCH_INVARIANT")]
    pub cuda_batch_invariant: bool,
    /// CPU engine on quantised weights (GGUF Q4_0/Q4_1/Q8_0): keep activations in float32
    /// instead of quantising them to 8 bits as llama.cpp does. Follows a float32 reference
    /// within 3e-6 relative (8-bit activations can flip greedy choices whose top-2 margin is
    /// small), at a speed cost measured in docs/benchmarks/cpu.md.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, env = "FERRITE_CPU_F32_ACTIVATIONS")]
    pub cpu_f32_activations: bool,
    /// Per-step token budget of the scheduler.
    #[arg(long, default_value_t = 2048, env = "FERRITE_MAX_BATCHED_TOKENS")]
    pub max_batched_tokens: usize,
    /// Most sequences batched in one step.
    #[arg(long, default_value_t = 256, env = "FERRITE_MAX_NUM_SEQS")]
    pub max_num_seqs: usize,
    /// Host-memory KV cache tier (G2) per worker, in GiB: blocks evicted from the engine's
    /// pool are kept here and copied back when a prompt reuses them (docs/kvbm.md).
    #[arg(long, default_value_t = 0.0, env = "FERRITE_KV_HOST_CACHE_GB")]
    pub kv_host_cache_gb: f64,
    /// Disk KV cache tier (G3) per worker, in GiB: blocks evicted from the host tier go to
    /// one preallocated file in --kv-disk-cache-dir (wiped at start).
    #[arg(long, default_value_t = 0.0, env = "FERRITE_KV_DISK_CACHE_GB")]
    pub kv_disk_cache_gb: f64,
    /// Folder of the disk KV tier's files (default: $TMPDIR/ferrite-kvbm).
    #[arg(long, env = "FERRITE_KV_DISK_CACHE_DIR")]
    pub kv_disk_cache_dir: Option<PathBuf>,
    /// A block leaves the host tier for the disk tier only if it was reused at least this
    /// many times (0: always).
    #[arg(long, default_value_t = 0, env = "FERRITE_KV_OFFLOAD_MIN_HITS")]
    pub kv_offload_min_hits: u32,
    /// Requests waiting per worker (per dp rank) beyond which new ones are refused with 429.
    #[arg(long, default_value_t = 1024, env = "FERRITE_MAX_WAITING")]
    pub max_waiting: usize,
    /// Engine restarts after a crash tolerated within --engine-restart-window; one more
    /// crash is a crash loop: the worker leaves discovery and hands its requests to
    /// migration (the process stays up, serving nothing, for the operator to look).
    #[arg(long, default_value_t = 3, env = "FERRITE_MAX_ENGINE_RESTARTS")]
    pub max_engine_restarts: u32,
    /// Seconds over which engine restarts are counted (see --max-engine-restarts).
    #[arg(long, default_value_t = 60, env = "FERRITE_ENGINE_RESTART_WINDOW")]
    pub engine_restart_window: u64,
    /// Testing aid: every executor panics at its N-th forward step (see --fault-panic-times).
    #[arg(long, env = "FERRITE_FAULT_PANIC_AT_STEP")]
    pub fault_panic_at_step: Option<u64>,
    /// Testing aid: at most this many executors of the process panic (default: every one).
    #[arg(
        long,
        env = "FERRITE_FAULT_PANIC_TIMES",
        requires = "fault_panic_at_step"
    )]
    pub fault_panic_times: Option<u64>,
}

#[derive(Args, Debug, Clone)]
pub struct HttpArgs {
    #[arg(long, default_value = "127.0.0.1", env = "FERRITE_HOST")]
    pub host: String,
    /// 0 picks a free port (printed at start).
    #[arg(long, default_value_t = 8000, env = "FERRITE_PORT")]
    pub port: u16,
    /// kv (KV-cache aware), round-robin, random or least-loaded.
    #[arg(long, default_value = "round-robin", env = "FERRITE_ROUTER")]
    pub router: String,
    /// KV router: weight of prefill work (uncached prompt blocks) against decode work
    /// (4 measured best in docs/benchmarks/routing.md; 1 is Dynamo's default).
    #[arg(long, default_value_t = 4.0, env = "FERRITE_KV_OVERLAP_WEIGHT")]
    pub kv_overlap_weight: f64,
    /// KV router: 0 picks the lowest cost; > 0 samples workers by softmax(-cost / T).
    #[arg(long, default_value_t = 0.0, env = "FERRITE_ROUTER_TEMPERATURE")]
    pub router_temperature: f64,
    /// Requests in flight in the frontend beyond this are answered 429.
    #[arg(long, default_value_t = 4096, env = "FERRITE_MAX_INFLIGHT")]
    pub max_inflight: usize,
    /// Request bodies larger than this many MiB are answered 413.
    #[arg(long, default_value_t = 32, env = "FERRITE_MAX_BODY_MB")]
    pub max_body_mb: usize,
    #[arg(long, default_value_t = 3, env = "FERRITE_MIGRATION_LIMIT")]
    pub migration_limit: u32,
    /// Seconds a request may take in all.
    #[arg(long, default_value_t = 600, env = "FERRITE_REQUEST_TIMEOUT")]
    pub request_timeout: u64,
    /// HTTP worker threads.
    #[arg(long, default_value_t = 2, env = "FERRITE_HTTP_WORKERS")]
    pub http_workers: usize,
}

#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// etcd endpoints, comma separated (http://127.0.0.1:2379).
    #[arg(long, env = "FERRITE_ETCD")]
    pub etcd: String,
    /// NATS server URL (nats://127.0.0.1:4222).
    #[arg(long, env = "FERRITE_NATS")]
    pub nats: String,
    #[arg(long, default_value = "ferrite", env = "FERRITE_NAMESPACE")]
    pub namespace: String,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub http: HttpArgs,
}

#[derive(Args, Debug)]
pub struct FrontendArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub http: HttpArgs,
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, value_enum, default_value = "agg", env = "FERRITE_ROLE")]
    pub role: Role,
    /// Attention data-parallel ranks of each worker: each rank has its own scheduler, KV
    /// cache and engine; requests pick one by `dp_rank`.
    #[arg(long, default_value_t = 1, env = "FERRITE_DP_SIZE")]
    pub dp_size: u32,
    /// Serve Prometheus metrics on this port (0: none).
    #[arg(long, default_value_t = 0, env = "FERRITE_METRICS_PORT")]
    pub metrics_port: u16,
    /// Seconds to let running requests finish after SIGTERM.
    #[arg(long, default_value_t = 30, env = "FERRITE_DRAIN_TIMEOUT")]
    pub drain_timeout: u64,
    /// Prefill/decode roles: how KV blocks travel between workers (auto picks the best
    /// available and falls back to tcp).
    #[arg(long, value_enum, default_value = "auto", env = "FERRITE_KV_TRANSPORT")]
    pub kv_transport: KvTransport,
    /// Decode role: prompts with at most this many tokens not already cached here are
    /// prefilled locally instead of on a prefill worker.
    #[arg(long, default_value_t = 128, env = "FERRITE_MAX_LOCAL_PREFILL_TOKENS")]
    pub max_local_prefill_tokens: usize,
    /// Decode role: always prefill remotely; with no prefill worker alive, refuse requests
    /// (503) instead of serving them aggregated.
    #[arg(long, env = "FERRITE_ENFORCE_DISAGG")]
    pub enforce_disagg: bool,
    /// Decode role: address the KV transfer server binds and advertises (a port is picked
    /// by the OS); use this host's address reachable from the prefill workers.
    #[arg(long, default_value = "127.0.0.1", env = "FERRITE_KV_TRANSFER_HOST")]
    pub kv_transfer_host: String,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvTransport {
    Auto,
    Tcp,
    Ucx,
}

/// A configuration mistake: the process exits with status 2 and this one-line reason.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Returns `Err(UsageError)` from the enclosing function (exit status 2).
macro_rules! usage {
    ($($t:tt)*) => {
        return Err($crate::args::UsageError(format!($($t)*)).into())
    };
}
