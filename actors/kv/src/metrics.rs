//! Metrics of the block pool. Names come from `ferrite_telemetry::names`.

use ferrite_protocol::StorageTier;
use ferrite_telemetry::names;
use metrics::Label;

/// Publishes the block counts as `ferrite_worker_kv_blocks{state=free|active|cached}`.
pub(crate) fn publish_blocks(labels: &[Label], free: usize, active: usize, cached: usize) {
    for (state, n) in [("free", free), ("active", active), ("cached", cached)] {
        let mut l = labels.to_vec();
        l.push(Label::new(names::LABEL_STATE, state));
        metrics::gauge!(names::WORKER_KV_BLOCKS, l).set(n as f64);
    }
}

/// Counts prompt tokens served from the prefix cache (`ferrite_worker_prefix_cache_hits_total`).
pub(crate) fn count_prefix_hit_tokens(labels: &[Label], tokens: usize) {
    if tokens > 0 {
        metrics::counter!(names::WORKER_PREFIX_CACHE_HITS_TOTAL, labels.to_vec())
            .increment(tokens as u64);
    }
}

/// The `ferrite_kvbm_*` metrics of one engine's tiers.
#[derive(Clone, Debug, Default)]
pub(crate) struct TierMetrics {
    labels: Vec<Label>,
}

impl TierMetrics {
    pub(crate) fn new(labels: Vec<(String, String)>) -> Self {
        Self {
            labels: labels.into_iter().map(|(k, v)| Label::new(k, v)).collect(),
        }
    }

    fn with_tier(&self, tier: &'static str) -> Vec<Label> {
        let mut l = self.labels.clone();
        l.push(Label::new(names::LABEL_TIER, tier));
        l
    }

    pub(crate) fn held(&self, tier: StorageTier, blocks: u64, bytes_per_block: u64) {
        let l = self.with_tier(tier.as_str());
        metrics::gauge!(names::KVBM_BLOCKS, l.clone()).set(blocks as f64);
        metrics::gauge!(names::KVBM_BYTES, l).set((blocks * bytes_per_block) as f64);
    }

    pub(crate) fn offloaded(&self, tier: StorageTier, blocks: u64) {
        metrics::counter!(
            names::KVBM_OFFLOAD_BLOCKS_TOTAL,
            self.with_tier(tier.as_str())
        )
        .increment(blocks);
    }

    pub(crate) fn offload_failed(&self) {
        metrics::counter!(names::KVBM_OFFLOAD_FAILURES_TOTAL, self.labels.clone()).increment(1);
    }

    pub(crate) fn onboarded(&self, tier: StorageTier, blocks: u64, bytes: u64, seconds: f64) {
        let l = self.with_tier(tier.as_str());
        metrics::counter!(names::KVBM_ONBOARD_BLOCKS_TOTAL, l.clone()).increment(blocks);
        metrics::counter!(names::KVBM_ONBOARD_BYTES_TOTAL, l.clone()).increment(bytes);
        metrics::histogram!(names::KVBM_ONBOARD_SECONDS, l).record(seconds);
    }

    pub(crate) fn corrupt(&self, blocks: u64) {
        metrics::counter!(names::KVBM_CORRUPT_BLOCKS_TOTAL, self.labels.clone()).increment(blocks);
    }

    pub(crate) fn lookup(&self, per_tier: [u64; 3], miss: u64) {
        for t in StorageTier::ALL {
            metrics::counter!(names::KVBM_LOOKUP_BLOCKS_TOTAL, self.with_tier(t.as_str()))
                .increment(per_tier[t.index()]);
        }
        metrics::counter!(names::KVBM_LOOKUP_BLOCKS_TOTAL, self.with_tier("miss")).increment(miss);
    }
}
