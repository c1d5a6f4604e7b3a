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
/// Full prompt blocks routed, and how many of them the chosen worker already cached
/// (router prediction): their ratio is the predicted prefix-cache hit rate.
pub const ROUTER_PROMPT_BLOCKS_TOTAL: &str = "ferrite_router_prompt_blocks_total";
pub const ROUTER_OVERLAP_BLOCKS_TOTAL: &str = "ferrite_router_overlap_blocks_total";
/// Time the router takes to pick a worker (hashing, prefix match, scoring).
pub const ROUTER_DECISION_SECONDS: &str = "ferrite_router_decision_seconds";
/// A request's wait for its routing decision in the frontend (router actor mailbox and
/// thread scheduling included).
pub const ROUTER_ROUNDTRIP_SECONDS: &str = "ferrite_router_roundtrip_seconds";
/// (worker, block) pairs in the KV-aware router's index.
pub const ROUTER_INDEXED_BLOCKS: &str = "ferrite_router_indexed_blocks";
/// KV events the router ingested.
pub const ROUTER_KV_EVENTS_TOTAL: &str = "ferrite_router_kv_events_total";
/// Full KV dumps the router asked workers for (new worker, event gap).
pub const ROUTER_KV_DUMPS_REQUESTED_TOTAL: &str = "ferrite_router_kv_dumps_requested_total";
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

// KV block manager tiers (G1 device pool, G2 host memory, G3 local disk); label `tier`.
/// Blocks held per tier (`tier` = g1|g2|g3).
pub const KVBM_BLOCKS: &str = "ferrite_kvbm_blocks";
/// Bytes held per tier.
pub const KVBM_BYTES: &str = "ferrite_kvbm_bytes";
/// Blocks copied down into a tier (`tier` = the destination: g2|g3).
pub const KVBM_OFFLOAD_BLOCKS_TOTAL: &str = "ferrite_kvbm_offload_blocks_total";
/// Blocks copied back into the device pool (`tier` = the source: g2|g3).
pub const KVBM_ONBOARD_BLOCKS_TOTAL: &str = "ferrite_kvbm_onboard_blocks_total";
/// Bytes copied back into the device pool (`tier` = the source).
pub const KVBM_ONBOARD_BYTES_TOTAL: &str = "ferrite_kvbm_onboard_bytes_total";
/// Seconds spent onboarding (read from the tier and write into the pool), per batch.
pub const KVBM_ONBOARD_SECONDS: &str = "ferrite_kvbm_onboard_seconds";
/// Prompt blocks looked up, and the ones found per tier (`tier` = g1|g2|g3|miss).
pub const KVBM_LOOKUP_BLOCKS_TOTAL: &str = "ferrite_kvbm_lookup_blocks_total";
/// Disk blocks that failed their checksum or could not be read (treated as misses).
pub const KVBM_CORRUPT_BLOCKS_TOTAL: &str = "ferrite_kvbm_corrupt_blocks_total";
/// Offloads given up (tier full of pinned blocks, a failed disk write).
pub const KVBM_OFFLOAD_FAILURES_TOTAL: &str = "ferrite_kvbm_offload_failures_total";
/// Label of the KVBM metrics: g1, g2, g3 (or `miss`).
pub const LABEL_TIER: &str = "tier";
