//! The router's view of live instances and their per-dp-rank load.

use ferrite_protocol::{DpRank, InstanceId, InstanceRecord, WorkerLoad};
use std::collections::{BTreeMap, BTreeSet};

/// One live instance: its discovery record and the last load of each dp rank.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceView {
    pub record: InstanceRecord,
    /// Indexed by dp rank; zero load until the first report.
    pub load: Vec<WorkerLoad>,
}

impl InstanceView {
    pub fn new(record: InstanceRecord) -> Self {
        let load = (0..record.dp_size.max(1))
            .map(|r| zero_load(&record, DpRank(r)))
            .collect();
        Self { record, load }
    }

    pub fn dp_size(&self) -> u32 {
        self.load.len() as u32
    }
}

fn zero_load(record: &InstanceRecord, rank: DpRank) -> WorkerLoad {
    WorkerLoad {
        instance_id: record.instance_id,
        dp_rank: rank,
        total_blocks: record.total_kv_blocks,
        ..Default::default()
    }
}

/// Live instances by id (sorted, so candidate order is stable), plus every model name ever
/// registered (to tell "unknown model" from "no live instance").
#[derive(Clone, Debug, Default)]
pub struct Registry {
    instances: BTreeMap<InstanceId, InstanceView>,
    known_models: BTreeSet<String>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces an instance; loads survive a re-registration with the same dp size.
    pub fn up(&mut self, record: InstanceRecord) {
        self.known_models.insert(record.model.clone());
        let id = record.instance_id;
        match self.instances.get_mut(&id) {
            Some(view) if view.dp_size() == record.dp_size.max(1) => view.record = record,
            _ => {
                self.instances.insert(id, InstanceView::new(record));
            }
        }
    }

    /// Removes an instance; returns whether it was known.
    pub fn down(&mut self, id: InstanceId) -> bool {
        self.instances.remove(&id).is_some()
    }

    /// Records a load report; reports of unknown instances or ranks are dropped (false).
    pub fn load(&mut self, load: WorkerLoad) -> bool {
        let Some(view) = self.instances.get_mut(&load.instance_id) else {
            return false;
        };
        match view.load.get_mut(load.dp_rank.0 as usize) {
            Some(slot) => {
                *slot = load;
                true
            }
            None => false,
        }
    }

    pub fn get(&self, id: InstanceId) -> Option<&InstanceView> {
        self.instances.get(&id)
    }

    pub(crate) fn get_mut(&mut self, id: InstanceId) -> Option<&mut InstanceView> {
        self.instances.get_mut(&id)
    }

    pub fn instances(&self) -> impl Iterator<Item = &InstanceView> {
        self.instances.values()
    }

    pub fn len(&self) -> usize {
        self.instances.len()
    }

    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    pub fn is_known_model(&self, model: &str) -> bool {
        self.known_models.contains(model)
    }

    /// Models with at least one live instance, sorted.
    pub fn live_models(&self) -> Vec<String> {
        let set: BTreeSet<&str> = self
            .instances
            .values()
            .map(|v| v.record.model.as_str())
            .collect();
        set.into_iter().map(str::to_string).collect()
    }
}
