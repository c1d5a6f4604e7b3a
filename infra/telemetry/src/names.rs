//! Every Prometheus metric name, in one place (ARCHITECTURE.md §7).

// frontend
pub const FRONTEND_REQUESTS_TOTAL: &str = "ferrite_frontend_requests_total";
pub const FRONTEND_INFLIGHT_REQUESTS: &str = "ferrite_frontend_inflight_requests";
pub const FRONTEND_TTFT_SECONDS: &str = "ferrite_frontend_time_to_first_token_seconds";
pub const FRONTEND_ITL_SECONDS: &str = "ferrite_frontend_inter_token_latency_seconds";
pub const FRONTEND_REQUEST_DURATION_SECONDS: &str = "ferrite_frontend_request_duration_seconds";
pub const FRONTEND_INPUT_TOKENS: &str = "ferrite_frontend_input_tokens";
pub const FRONTEND_OUTPUT_TOKENS: &str = "ferrite_frontend_output_tokens";
/// Requests the frontend cancelled on a worker (client gone, stop string, deadline).
pub const FRONTEND_CANCELLATIONS_TOTAL: &str = "ferrite_frontend_cancellations_total";
/// Streams re-routed to another instance, by `reason`.
pub const FRONTEND_MIGRATIONS_TOTAL: &str = "ferrite_frontend_migrations_total";

// worker
pub const WORKER_KV_BLOCKS: &str = "ferrite_worker_kv_blocks";
pub const WORKER_PREFIX_CACHE_HITS_TOTAL: &str = "ferrite_worker_prefix_cache_hits_total";
pub const WORKER_QUEUE_DEPTH: &str = "ferrite_worker_queue_depth";
pub const WORKER_RUNNING_SEQUENCES: &str = "ferrite_worker_running_sequences";
pub const WORKER_MIGRATIONS_TOTAL: &str = "ferrite_worker_migrations_total";
pub const WORKER_CANCELLATIONS_TOTAL: &str = "ferrite_worker_cancellations_total";
pub const WORKER_ENGINE_RESTARTS_TOTAL: &str = "ferrite_worker_engine_restarts_total";
pub const WORKER_REQUESTS_TOTAL: &str = "ferrite_worker_requests_total";
pub const WORKER_GENERATED_TOKENS_TOTAL: &str = "ferrite_worker_generated_tokens_total";

// labels
pub const LABEL_MODEL: &str = "model";
pub const LABEL_ENDPOINT: &str = "endpoint";
pub const LABEL_STATUS: &str = "status";
pub const LABEL_STATE: &str = "state";
pub const LABEL_INSTANCE: &str = "instance";
pub const LABEL_REASON: &str = "reason";
