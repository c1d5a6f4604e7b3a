//! Environment variable names. Every CLI flag `--some-flag` also reads `FERRITE_SOME_FLAG`.

/// etcd endpoints, comma separated (`--etcd`).
pub const FERRITE_ETCD: &str = "FERRITE_ETCD";
/// NATS server URL (`--nats`).
pub const FERRITE_NATS: &str = "FERRITE_NATS";
/// Namespace of keys and subjects (`--namespace`).
pub const FERRITE_NAMESPACE: &str = "FERRITE_NAMESPACE";
/// Folder of small models used by tests that need real weights.
pub const FERRITE_TEST_MODELS: &str = "FERRITE_TEST_MODELS";

pub const FERRITE_MODEL: &str = "FERRITE_MODEL";
pub const FERRITE_SERVED_MODEL_NAME: &str = "FERRITE_SERVED_MODEL_NAME";
pub const FERRITE_ENGINE: &str = "FERRITE_ENGINE";
pub const FERRITE_HOST: &str = "FERRITE_HOST";
pub const FERRITE_PORT: &str = "FERRITE_PORT";
pub const FERRITE_NUM_WORKERS: &str = "FERRITE_NUM_WORKERS";
pub const FERRITE_KV_HOST_CACHE_GB: &str = "FERRITE_KV_HOST_CACHE_GB";
pub const FERRITE_KV_DISK_CACHE_GB: &str = "FERRITE_KV_DISK_CACHE_GB";
pub const FERRITE_ROUTER: &str = "FERRITE_ROUTER";
pub const FERRITE_MIGRATION_LIMIT: &str = "FERRITE_MIGRATION_LIMIT";
pub const FERRITE_REQUEST_TIMEOUT: &str = "FERRITE_REQUEST_TIMEOUT";
pub const FERRITE_ROLE: &str = "FERRITE_ROLE";
pub const FERRITE_SPEEDUP: &str = "FERRITE_SPEEDUP";
pub const FERRITE_DP_SIZE: &str = "FERRITE_DP_SIZE";
pub const FERRITE_KV_TRANSPORT: &str = "FERRITE_KV_TRANSPORT";
pub const FERRITE_METRICS_PORT: &str = "FERRITE_METRICS_PORT";
pub const FERRITE_DRAIN_TIMEOUT: &str = "FERRITE_DRAIN_TIMEOUT";
pub const FERRITE_URL: &str = "FERRITE_URL";
pub const FERRITE_WORKLOAD: &str = "FERRITE_WORKLOAD";
pub const FERRITE_CONCURRENCY: &str = "FERRITE_CONCURRENCY";
pub const FERRITE_RATE: &str = "FERRITE_RATE";
pub const FERRITE_REQUESTS: &str = "FERRITE_REQUESTS";
pub const FERRITE_ISL: &str = "FERRITE_ISL";
pub const FERRITE_OSL: &str = "FERRITE_OSL";
pub const FERRITE_JSON: &str = "FERRITE_JSON";

/// Path of the `etcd` binary used by the test harness (default: `etcd` on `PATH`).
pub const FERRITE_ETCD_BIN: &str = "FERRITE_ETCD_BIN";
/// Path of the `nats-server` binary used by the test harness (default: on `PATH`).
pub const FERRITE_NATS_BIN: &str = "FERRITE_NATS_BIN";
