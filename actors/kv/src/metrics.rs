//! Metrics of the block pool. Names come from `ferrite_telemetry::names`.

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
