//! `Router`: the registry plus a policy; answers "which (instance, dp rank) takes this".

use crate::error::{Result, RouteError};
use crate::policy::{Candidate, PolicyKind, RouteRequest, RoutingPolicy, make_policy};
use crate::registry::Registry;
use ferrite_protocol::{DpRank, InstanceId, InstanceRecord, KvEventBatch, WorkerLoad, WorkerRole};

/// Router settings.
#[derive(Clone, Debug, PartialEq)]
pub struct RouterConfig {
    /// A candidate is busy when its KV usage is above this fraction AND it has waiting
    /// requests; busy candidates are skipped, and all busy means 503.
    pub busy_threshold: f64,
    /// Roles that take requests from this router (default: aggregated and decode workers).
    pub roles: Vec<WorkerRole>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            busy_threshold: 0.95,
            roles: vec![WorkerRole::Agg, WorkerRole::Decode],
        }
    }
}

/// Plain routing state; [`crate::RouterActor`] is its actor shell.
pub struct Router {
    config: RouterConfig,
    registry: Registry,
    policy: Box<dyn RoutingPolicy>,
    candidates: Vec<Candidate>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("policy", &self.policy.name())
            .field("config", &self.config)
            .field("instances", &self.registry.len())
            .finish()
    }
}

impl Router {
    pub fn new(policy: Box<dyn RoutingPolicy>, config: RouterConfig) -> Self {
        Self {
            config,
            registry: Registry::new(),
            policy,
            candidates: Vec::new(),
        }
    }

    pub fn with_kind(kind: PolicyKind) -> Self {
        Self::new(make_policy(kind), RouterConfig::default())
    }

    pub fn policy_name(&self) -> &'static str {
        self.policy.name()
    }

    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn instance_up(&mut self, record: InstanceRecord) {
        tracing::debug!(instance = %record.instance_id, model = %record.model, "instance up");
        self.registry.up(record);
    }

    pub fn instance_down(&mut self, id: InstanceId) {
        if self.registry.down(id) {
            tracing::debug!(instance = %id, "instance down");
        }
        self.policy.on_instance_down(id);
    }

    pub fn load_report(&mut self, load: WorkerLoad) {
        self.registry.load(load);
    }

    pub fn kv_events(&mut self, batch: &KvEventBatch) {
        self.policy.on_kv_events(batch);
    }

    /// Models served by at least one live instance of a role this router uses, sorted
    /// (for `/v1/models`).
    pub fn models(&self) -> Vec<String> {
        let set: std::collections::BTreeSet<&str> = self
            .registry
            .instances()
            .filter(|v| self.config.roles.contains(&v.record.role))
            .map(|v| v.record.model.as_str())
            .collect();
        set.into_iter().map(str::to_string).collect()
    }

    /// Picks an (instance, dp rank) for `req`, skipping `exclude` (migration, retries).
    ///
    /// The chosen rank's `waiting` count is bumped by one until its next load report, so a
    /// burst of requests between reports does not all land on the same worker.
    pub fn route(
        &mut self,
        req: &RouteRequest,
        exclude: &[InstanceId],
    ) -> Result<(InstanceId, DpRank, InstanceRecord)> {
        if !self.registry.is_known_model(&req.model) {
            return Err(RouteError::ModelNotFound(req.model.clone()));
        }
        self.candidates.clear();
        let mut busy = 0usize;
        let mut worst_usage = 0.0f64;
        for view in self.registry.instances() {
            let r = &view.record;
            if r.model != req.model
                || !self.config.roles.contains(&r.role)
                || exclude.contains(&r.instance_id)
            {
                continue;
            }
            for load in &view.load {
                if load.kv_usage() > self.config.busy_threshold && load.waiting > 0 {
                    busy += 1;
                    worst_usage = worst_usage.max(load.kv_usage());
                    continue;
                }
                self.candidates.push(Candidate {
                    instance_id: r.instance_id,
                    dp_rank: load.dp_rank,
                    kv_block_size: r.kv_block_size,
                    load: load.clone(),
                });
            }
        }
        if self.candidates.is_empty() {
            return Err(if busy == 0 {
                RouteError::NoInstances(req.model.clone())
            } else {
                RouteError::AllBusy {
                    model: req.model.clone(),
                    candidates: busy,
                    reason: format!(
                        "KV cache usage above {:.0}% with requests waiting on every worker",
                        self.config.busy_threshold * 100.0
                    ),
                }
            });
        }
        let Some((id, rank)) = self.policy.choose(req, &self.candidates) else {
            return Err(RouteError::NoInstances(req.model.clone()));
        };
        let view = self
            .registry
            .get_mut(id)
            .ok_or_else(|| RouteError::NoInstances(req.model.clone()))?;
        if let Some(l) = view.load.get_mut(rank.0 as usize) {
            l.waiting = l.waiting.saturating_add(1);
        }
        tracing::debug!(request_id = %req.request_id, instance = %id, dp_rank = %rank,
            policy = self.policy.name(), "routed");
        Ok((id, rank, view.record.clone()))
    }
}
