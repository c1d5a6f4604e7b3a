//! Uniformly random choice among candidates.

use crate::policy::{Candidate, RouteRequest, RoutingPolicy};
use ferrite_protocol::{DpRank, InstanceId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug)]
pub struct RandomPolicy {
    rng: StdRng,
}

impl RandomPolicy {
    pub fn new() -> Self {
        Self {
            rng: StdRng::from_os_rng(),
        }
    }

    /// Reproducible choices (tests, simulations).
    pub fn with_seed(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
        }
    }
}

impl Default for RandomPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl RoutingPolicy for RandomPolicy {
    fn name(&self) -> &'static str {
        "random"
    }

    fn choose(
        &mut self,
        _req: &RouteRequest,
        candidates: &[Candidate],
    ) -> Option<(InstanceId, DpRank)> {
        if candidates.is_empty() {
            return None;
        }
        let c = &candidates[self.rng.random_range(0..candidates.len())];
        Some((c.instance_id, c.dp_rank))
    }
}
