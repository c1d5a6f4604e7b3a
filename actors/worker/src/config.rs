//! Settings of one aggregated worker.

use ferrite_protocol::{InstanceId, WorkerRole};
use ferrite_scheduler::RestartPolicy;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub namespace: String,
    pub component: String,
    pub role: WorkerRole,
    pub instance_id: InstanceId,
    /// The name clients use in `model`.
    pub model_name: String,
    /// Where frontends find the tokenizer and chat template.
    pub model_path: String,
    /// True for the mocker (simulated engine).
    pub simulated: bool,
    /// How often load and KV events are published.
    pub publish_interval: Duration,
    /// Largest number of sequences in one step.
    pub max_num_seqs: usize,
    /// Token budget of one step (chunked prefill beyond it).
    pub max_batched_tokens: usize,
    /// Waiting requests (per rank) beyond this are refused with 429.
    pub max_waiting: usize,
    /// Attention data-parallel ranks: each its own scheduler, KV pool and engine.
    pub dp_size: u32,
    /// Engine restarts tolerated per rank before the worker gives up (crash loop).
    pub restart_policy: RestartPolicy,
    /// Prefill/decode settings (used when `role` is not `Agg`).
    pub disagg: crate::disagg::DisaggConfig,
    /// KV offload tiers (G2 host, G3 disk) of every rank's scheduler; `None`: off.
    pub kv_tiers: Option<ferrite_scheduler::offload::KvTierOptions>,
}

impl WorkerConfig {
    pub fn new(model_name: impl Into<String>, model_path: impl Into<String>) -> Self {
        Self {
            namespace: ferrite_protocol::discovery::DEFAULT_NAMESPACE.into(),
            component: ferrite_protocol::discovery::WORKER_COMPONENT.into(),
            role: WorkerRole::Agg,
            instance_id: InstanceId::random(),
            model_name: model_name.into(),
            model_path: model_path.into(),
            simulated: false,
            publish_interval: Duration::from_millis(200),
            max_num_seqs: 256,
            max_batched_tokens: 2048,
            max_waiting: 1024,
            dp_size: 1,
            restart_policy: RestartPolicy::default(),
            disagg: crate::disagg::DisaggConfig::default(),
            kv_tiers: None,
        }
    }
}
