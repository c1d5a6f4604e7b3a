//! Frontend settings (the CLI fills them from flags and `FERRITE_*` variables).

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct FrontendConfig {
    pub namespace: String,
    pub host: String,
    /// 0 picks a free port (tests).
    pub port: u16,
    /// Routing policy name, as `ferrite_router::PolicyKind` parses it.
    pub router: String,
    pub migration_limit: u32,
    pub request_timeout: Duration,
    /// A worker stream silent this long (no output, no heartbeat) is a lost worker.
    pub stream_idle_timeout: Duration,
    /// HTTP worker threads.
    pub http_workers: usize,
    /// Requests in flight beyond this are answered 429.
    pub max_inflight: usize,
    /// Request bodies larger than this are answered 413.
    pub max_body_bytes: usize,
    /// KV-aware router: weight of prefill work against decode work.
    pub kv_overlap_weight: f64,
    /// KV-aware router: 0 picks the lowest cost; > 0 samples with this softmax temperature.
    pub router_temperature: f64,
}

/// Default of [`FrontendConfig::max_body_bytes`]: 32 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

impl Default for FrontendConfig {
    fn default() -> Self {
        Self {
            namespace: ferrite_protocol::discovery::DEFAULT_NAMESPACE.into(),
            host: "127.0.0.1".into(),
            port: 8000,
            router: "round-robin".into(),
            migration_limit: 3,
            request_timeout: Duration::from_secs(600),
            stream_idle_timeout: Duration::from_secs(5),
            http_workers: 2,
            max_inflight: 4096,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            kv_overlap_weight: 4.0,
            router_temperature: 0.0,
        }
    }
}
