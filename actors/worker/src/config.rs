//! Settings of one aggregated worker.

use ferrite_protocol::{InstanceId, WorkerRole};
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
    /// Waiting requests beyond this are refused with 429.
    pub max_waiting: usize,
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
        }
    }
}
