//! KV cache events and load reports, published by workers and consumed by routers.

use crate::ids::{BlockHash, DpRank, InstanceId};
use serde::{Deserialize, Serialize};

/// A change in one worker's set of cached blocks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEvent {
    /// Monotonic per (instance, dp_rank), starting at 1; a gap means events were lost.
    pub event_id: u64,
    pub data: KvEventData,
    /// Which tier the event's blocks are in (for `Stored`/`Removed`; `Cleared` and
    /// `Snapshot` concern the device tier). Absent on the wire: the device tier.
    #[serde(default)]
    pub storage_tier: StorageTier,
}

/// Where a worker keeps a cached block. Lower tiers are cheaper to reuse than to recompute
/// but must first be copied back into the engine's pool ("onboarded").
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum StorageTier {
    /// G1: the engine's KV pool (GPU memory, or the CPU engine's arena).
    #[default]
    Device,
    /// G2: host memory of the worker.
    Host,
    /// G3: local disk of the worker.
    Disk,
}

impl StorageTier {
    pub const ALL: [StorageTier; 3] = [StorageTier::Device, StorageTier::Host, StorageTier::Disk];

    /// `g1`, `g2`, `g3` (metric labels, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            StorageTier::Device => "g1",
            StorageTier::Host => "g2",
            StorageTier::Disk => "g3",
        }
    }

    /// 0, 1, 2.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl KvEvent {
    /// An event about device-tier (G1) blocks.
    pub fn device(event_id: u64, data: KvEventData) -> Self {
        KvEvent {
            event_id,
            data,
            storage_tier: StorageTier::Device,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvEventData {
    /// Blocks became reusable, in chain order; `parent` is the block before the first one.
    Stored {
        parent: Option<BlockHash>,
        blocks: Vec<BlockHash>,
    },
    /// Blocks were evicted.
    Removed { blocks: Vec<BlockHash> },
    /// Every block was dropped.
    Cleared,
    /// The full set of cached blocks, answering [`crate::ControlMessage::DumpKv`]; replaces
    /// whatever the router knew of this worker.
    Snapshot { blocks: Vec<BlockHash> },
}

/// A batch of events from one KvBlockManager.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEventBatch {
    pub instance_id: InstanceId,
    pub dp_rank: DpRank,
    pub block_size: u32,
    pub events: Vec<KvEvent>,
}

/// Load of one (instance, dp rank), published periodically.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerLoad {
    pub instance_id: InstanceId,
    pub dp_rank: DpRank,
    pub active_blocks: u32,
    pub total_blocks: u32,
    pub waiting: u32,
    pub running: u32,
    /// Prompt tokens admitted but not yet prefilled.
    #[serde(default)]
    pub pending_prefill_tokens: u32,
}

impl WorkerLoad {
    /// Fraction of KV blocks in use.
    pub fn kv_usage(&self) -> f64 {
        if self.total_blocks == 0 {
            0.0
        } else {
            self.active_blocks as f64 / self.total_blocks as f64
        }
    }
}
