//! Round-robin over every (instance, dp rank) candidate.

use crate::policy::{Candidate, RouteRequest, RoutingPolicy};
use ferrite_protocol::{DpRank, InstanceId};

/// Cycles through the sorted candidate list, so each dp rank (each engine) gets an even
/// share; an instance with `dp_size = 2` gets twice the share of one with `dp_size = 1`.
#[derive(Clone, Debug, Default)]
pub struct RoundRobin {
    next: usize,
}

impl RoundRobin {
    pub fn new() -> Self {
        Self::default()
    }
}

impl RoutingPolicy for RoundRobin {
    fn name(&self) -> &'static str {
        "round-robin"
    }

    fn choose(
        &mut self,
        _req: &RouteRequest,
        candidates: &[Candidate],
    ) -> Option<(InstanceId, DpRank)> {
        if candidates.is_empty() {
            return None;
        }
        let c = &candidates[self.next % candidates.len()];
        self.next = self.next.wrapping_add(1);
        Some((c.instance_id, c.dp_rank))
    }
}
