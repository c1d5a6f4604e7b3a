//! Discovery records (JSON in etcd) and the names of keys and subjects.

use crate::ids::InstanceId;
use serde::{Deserialize, Serialize};

/// Default namespace.
pub const DEFAULT_NAMESPACE: &str = "ferrite";
/// Component name of workers that serve `generate`.
pub const WORKER_COMPONENT: &str = "worker";
/// Component name of prefill workers.
pub const PREFILL_COMPONENT: &str = "prefill";

/// A worker's role.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerRole {
    #[default]
    Agg,
    Prefill,
    Decode,
}

/// How a worker receives KV blocks from other workers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferInfo {
    pub kind: String,
    pub addr: String,
}

/// `ferrite/<ns>/instances/<component>/<instance_id>`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub instance_id: InstanceId,
    pub component: String,
    pub role: WorkerRole,
    pub model: String,
    /// The `generate` subject.
    pub subject: String,
    /// The `control` subject.
    pub control_subject: String,
    pub dp_size: u32,
    pub kv_block_size: u32,
    pub total_kv_blocks: u32,
    #[serde(default)]
    pub transfer: Option<TransferInfo>,
}

/// `ferrite/<ns>/models/<model_name>/<instance_id>`: what `/v1/models` lists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRecord {
    pub name: String,
    pub instance_id: InstanceId,
    /// Where the frontend finds the tokenizer and chat template (a folder or file path).
    pub model_path: String,
    pub context_length: u32,
    pub kv_block_size: u32,
    /// True when the worker runs the simulated engine.
    #[serde(default)]
    pub simulated: bool,
}

/// Key and subject names (ARCHITECTURE.md §4).
pub mod names {
    use super::*;

    pub fn instances_prefix(ns: &str) -> String {
        format!("ferrite/{ns}/instances/")
    }
    pub fn instance_key(ns: &str, component: &str, id: InstanceId) -> String {
        format!("ferrite/{ns}/instances/{component}/{id}")
    }
    pub fn models_prefix(ns: &str) -> String {
        format!("ferrite/{ns}/models/")
    }
    pub fn model_key(ns: &str, model: &str, id: InstanceId) -> String {
        format!("ferrite/{ns}/models/{model}/{id}")
    }
    pub fn generate_subject(ns: &str, component: &str, id: InstanceId) -> String {
        format!("ferrite.{ns}.{component}.generate.{id}")
    }
    pub fn control_subject(ns: &str, component: &str, id: InstanceId) -> String {
        format!("ferrite.{ns}.{component}.control.{id}")
    }
    /// NATS subject tokens may not contain `.`, `*`, `>` or whitespace.
    pub fn subject_token(s: &str) -> String {
        s.chars()
            .map(|c| {
                if c == '.' || c == '*' || c == '>' || c.is_whitespace() {
                    '_'
                } else {
                    c
                }
            })
            .collect()
    }
    pub fn kv_events_subject(ns: &str, model: &str) -> String {
        format!("ferrite.{ns}.kv_events.{}", subject_token(model))
    }
    pub fn load_subject(ns: &str, model: &str) -> String {
        format!("ferrite.{ns}.load.{}", subject_token(model))
    }
}
