//! Which prefill instance takes a request: [`PrefillPool`], the live prefill instances of
//! one model (from discovery) with the blocks each has cached (from their KV events), picks
//! the instance with the least prefill work for this request — tokens it would have to
//! compute (prompt minus its cached prefix) plus the uncached tokens already sent there
//! by this decode worker and not yet answered.

use ferrite_protocol::hashing::block_hashes;
use ferrite_protocol::kv::StorageTier;
use ferrite_protocol::{
    BlockHash, InstanceId, InstanceRecord, KvEventBatch, KvEventData, PreprocessedRequest,
    RequestId, WorkerRole,
};
use ferrite_runtime::DiscoveryEvent;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};

/// Picks the prefill instance for a request (see [`PrefillPool`]).
pub trait PrefillChooser: Send + Sync + 'static {
    /// `None`: no prefill instance is alive (besides `exclude`).
    fn choose(&self, req: &PreprocessedRequest, exclude: &[InstanceId]) -> Option<InstanceRecord>;
    /// The request sent to `instance` finished (either way).
    fn done(&self, _instance: InstanceId, _request: RequestId) {}
    /// Whether any prefill instance is alive.
    fn any_alive(&self) -> bool;
}

struct Entry {
    record: InstanceRecord,
    /// Device-tier blocks it reported cached.
    blocks: HashSet<BlockHash>,
    /// Uncached prompt tokens sent there and not answered yet.
    pending_tokens: usize,
}

/// Live prefill instances of one model with their cached blocks (KV-aware choice).
#[derive(Default)]
pub struct PrefillPool {
    instances: Mutex<HashMap<InstanceId, Entry>>,
    /// Outstanding choices: request → (instance, tokens counted in `pending_tokens`).
    outstanding: Mutex<HashMap<RequestId, (InstanceId, usize)>>,
}

impl PrefillPool {
    /// Applies one discovery event under `instances/`; keeps prefill records of `model`.
    /// Returns the record of a prefill instance seen for the first time (ask it for a
    /// dump of its cached blocks).
    pub fn apply(&self, ev: &DiscoveryEvent, model: &str) -> Option<InstanceRecord> {
        match ev {
            DiscoveryEvent::Put { value, .. } => {
                if let Ok(r) = serde_json::from_slice::<InstanceRecord>(value)
                    && r.role == WorkerRole::Prefill
                    && r.model == model
                {
                    let mut m = self.instances.lock();
                    match m.get_mut(&r.instance_id) {
                        Some(e) => e.record = r,
                        None => {
                            m.insert(
                                r.instance_id,
                                Entry {
                                    record: r.clone(),
                                    blocks: HashSet::new(),
                                    pending_tokens: 0,
                                },
                            );
                            return Some(r);
                        }
                    }
                }
                None
            }
            DiscoveryEvent::Delete { key } => {
                let id = key.rsplit('/').next().unwrap_or_default();
                self.instances.lock().retain(|k, _| k.to_string() != id);
                None
            }
        }
    }

    /// Applies a KV event batch (only batches of known prefill instances, device tier).
    pub fn apply_kv(&self, batch: &KvEventBatch) {
        let mut m = self.instances.lock();
        let Some(e) = m.get_mut(&batch.instance_id) else {
            return;
        };
        for ev in &batch.events {
            if ev.storage_tier != StorageTier::Device {
                continue;
            }
            match &ev.data {
                KvEventData::Stored { blocks, .. } => e.blocks.extend(blocks.iter().copied()),
                KvEventData::Removed { blocks } => {
                    for b in blocks {
                        e.blocks.remove(b);
                    }
                }
                KvEventData::Cleared => e.blocks.clear(),
                KvEventData::Snapshot { blocks } => {
                    e.blocks = blocks.iter().copied().collect();
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.instances.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl PrefillChooser for PrefillPool {
    fn choose(&self, req: &PreprocessedRequest, exclude: &[InstanceId]) -> Option<InstanceRecord> {
        let n = req.token_ids.len();
        let mut hashes: HashMap<u32, Vec<BlockHash>> = HashMap::new();
        let mut m = self.instances.lock();
        let mut best: Option<(usize, String, InstanceId, usize)> = None;
        for (id, e) in m.iter() {
            if exclude.contains(id) {
                continue;
            }
            let bs = e.record.kv_block_size.max(1);
            let h = hashes
                .entry(bs)
                .or_insert_with(|| block_hashes(&req.token_ids, bs as usize, req.extra_hash_key));
            let cached = h.iter().take_while(|b| e.blocks.contains(b)).count() * bs as usize;
            // The last prompt token is always computed.
            let uncached = n - cached.min(n.saturating_sub(1));
            let key = (e.pending_tokens + uncached, id.to_string(), *id, uncached);
            if best.as_ref().is_none_or(|b| (key.0, &key.1) < (b.0, &b.1)) {
                best = Some(key);
            }
        }
        let (_, _, id, uncached) = best?;
        let e = m.get_mut(&id)?;
        e.pending_tokens += uncached;
        let record = e.record.clone();
        drop(m);
        self.outstanding
            .lock()
            .insert(req.request_id, (id, uncached));
        Some(record)
    }

    fn done(&self, instance: InstanceId, request: RequestId) {
        let Some((id, tokens)) = self.outstanding.lock().remove(&request) else {
            return;
        };
        debug_assert_eq!(id, instance);
        if let Some(e) = self.instances.lock().get_mut(&id) {
            e.pending_tokens = e.pending_tokens.saturating_sub(tokens);
        }
    }

    fn any_alive(&self) -> bool {
        !self.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_protocol::{DpRank, KvEvent, SamplingParams, StopConditions};

    fn record(n: u128) -> (DiscoveryEvent, InstanceId) {
        let id = InstanceId(n as u64);
        let r = InstanceRecord {
            instance_id: id,
            component: "prefill".into(),
            role: WorkerRole::Prefill,
            model: "m".into(),
            subject: format!("s{n}"),
            control_subject: format!("c{n}"),
            dp_size: 1,
            kv_block_size: 4,
            total_kv_blocks: 100,
            transfer: None,
        };
        let ev = DiscoveryEvent::Put {
            key: format!("ferrite/ns/instances/prefill/{id}"),
            value: serde_json::to_vec(&r).unwrap(),
        };
        (ev, id)
    }

    fn req(tokens: Vec<u32>) -> PreprocessedRequest {
        PreprocessedRequest {
            request_id: RequestId::new(),
            model: "m".into(),
            token_ids: tokens,
            generated_so_far: 0,
            sampling: SamplingParams::default(),
            stop: StopConditions::default(),
            dp_rank: DpRank(0),
            extra_hash_key: 0,
            prompt_embeds: None,
        }
    }

    fn stored(id: InstanceId, tokens: &[u32]) -> KvEventBatch {
        KvEventBatch {
            instance_id: id,
            dp_rank: DpRank(0),
            block_size: 4,
            events: vec![KvEvent::device(
                1,
                KvEventData::Stored {
                    parent: None,
                    blocks: block_hashes(tokens, 4, 0),
                },
            )],
        }
    }

    #[test]
    fn prefers_the_instance_holding_the_prefix_then_balances() {
        let pool = PrefillPool::default();
        assert!(!pool.any_alive());
        let (e1, a) = record(1);
        let (e2, b) = record(2);
        assert_eq!(pool.apply(&e1, "m").map(|r| r.instance_id), Some(a));
        assert!(pool.apply(&e1, "m").is_none(), "seen before");
        pool.apply(&e2, "m");
        // A record of another model is ignored.
        let elsewhere = PrefillPool::default();
        elsewhere.apply(&e1, "another-model");
        assert!(elsewhere.is_empty());
        assert_eq!(pool.len(), 2);
        let prompt: Vec<u32> = (0..40).collect();
        pool.apply_kv(&stored(b, &prompt[..32]));
        let r1 = req(prompt.clone());
        assert_eq!(
            pool.choose(&r1, &[]).unwrap().instance_id,
            b,
            "b caches 32 of 40"
        );
        // b now has 8 tokens pending: another cached request still goes to b (8 + 8 < 40)...
        let r2 = req(prompt.clone());
        assert_eq!(pool.choose(&r2, &[]).unwrap().instance_id, b);
        // ...but an uncached 40-token prompt goes to idle a (0 + 40 < 16 + 40).
        let r3 = req((100..140).collect());
        assert_eq!(pool.choose(&r3, &[]).unwrap().instance_id, a);
        // Excluding works; done releases pending work.
        assert_eq!(
            pool.choose(&req(prompt.clone()), &[b]).unwrap().instance_id,
            a
        );
        pool.done(b, r1.request_id);
        pool.done(b, r2.request_id);
        // Cleared forgets b's blocks; b is idle while a still has 80 tokens pending.
        pool.apply_kv(&KvEventBatch {
            instance_id: b,
            dp_rank: DpRank(0),
            block_size: 4,
            events: vec![KvEvent::device(2, KvEventData::Cleared)],
        });
        assert_eq!(pool.choose(&req(prompt), &[]).unwrap().instance_id, b);
        // Delete removes the instance.
        pool.apply(
            &DiscoveryEvent::Delete {
                key: format!("ferrite/ns/instances/prefill/{a}"),
            },
            "m",
        );
        assert_eq!(pool.len(), 1);
    }
}
