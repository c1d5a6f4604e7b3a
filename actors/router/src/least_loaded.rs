//! Least loaded: fewest active KV blocks plus waiting requests, ties at random.

use crate::policy::{Candidate, RouteRequest, RoutingPolicy};
use ferrite_protocol::{DpRank, InstanceId, WorkerLoad};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug)]
pub struct LeastLoaded {
    rng: StdRng,
}

impl LeastLoaded {
    pub fn new() -> Self {
        Self {
            rng: StdRng::from_os_rng(),
        }
    }

    pub fn with_seed(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The score a candidate is ranked by (lower is better).
    pub fn score(load: &WorkerLoad) -> u64 {
        u64::from(load.active_blocks) + u64::from(load.waiting)
    }
}

impl Default for LeastLoaded {
    fn default() -> Self {
        Self::new()
    }
}

impl RoutingPolicy for LeastLoaded {
    fn name(&self) -> &'static str {
        "least-loaded"
    }

    fn choose(
        &mut self,
        _req: &RouteRequest,
        candidates: &[Candidate],
    ) -> Option<(InstanceId, DpRank)> {
        let best = candidates.iter().map(|c| Self::score(&c.load)).min()?;
        // Reservoir-sample uniformly among the tied best, without allocating.
        let mut pick = None;
        let tied = candidates.iter().filter(|c| Self::score(&c.load) == best);
        for (seen, c) in (1u32..).zip(tied) {
            if self.rng.random_range(0..seen) == 0 {
                pick = Some((c.instance_id, c.dp_rank));
            }
        }
        pick
    }
}
