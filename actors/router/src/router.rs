//! `Router`: the registry plus a policy; answers "which (instance, dp rank) takes this".

use crate::error::{Result, RouteError};
use crate::kv::KvRouterConfig;
use crate::policy::{Candidate, PolicyKind, RouteRequest, RoutingPolicy, make_policy_with};
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

/// A routing decision with the KV overlap the policy predicted (the frontend exports
/// `overlap_blocks / prompt_blocks` as the predicted prefix hit rate).
#[derive(Clone, Debug, PartialEq)]
pub struct RouteDecision {
    pub instance_id: InstanceId,
    pub dp_rank: DpRank,
    pub record: InstanceRecord,
    /// Leading full prompt blocks the chosen worker caches (0 for KV-blind policies).
    pub overlap_blocks: u32,
    /// Full prompt blocks at the chosen worker's block size.
    pub prompt_blocks: u32,
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
        Self::with_kind_and_kv(kind, &KvRouterConfig::default())
    }

    /// A router with default settings whose KV policy (if `kind` is `Kv`) uses `kv`.
    pub fn with_kind_and_kv(kind: PolicyKind, kv: &KvRouterConfig) -> Self {
        Self::new(make_policy_with(kind, kv), RouterConfig::default())
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

    /// Adds or updates an instance. Returns true when the instance is new: the caller
    /// should then send it `ControlMessage::DumpKv` so a KV-aware router learns the blocks
    /// it already caches (the instance stays in `pending_dumps` until its snapshot arrives,
    /// so a lost request or answer is asked again).
    pub fn instance_up(&mut self, record: InstanceRecord) -> bool {
        tracing::debug!(instance = %record.instance_id, model = %record.model, "instance up");
        let new = self.registry.get(record.instance_id).is_none();
        if new {
            self.policy
                .on_instance_up(record.instance_id, record.dp_size, record.kv_block_size);
        }
        self.registry.up(record);
        new
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

    /// Feeds a KV event batch to the policy. Returns the workers whose index became
    /// unreliable (an event-id gap, or a first event that is not id 1): send each
    /// instance a `ControlMessage::DumpKv`. Batches of instances not in the registry are
    /// dropped (a late batch must not resurrect a gone worker), as are batches whose block
    /// size differs from the instance's registered `kv_block_size` (logged).
    pub fn kv_events(&mut self, batch: &KvEventBatch) -> Vec<(InstanceId, DpRank)> {
        let Some(view) = self.registry.get(batch.instance_id) else {
            return Vec::new();
        };
        if view.record.kv_block_size != batch.block_size {
            tracing::warn!(instance = %batch.instance_id, registered = view.record.kv_block_size,
                events = batch.block_size, "KV events with a mismatched block size dropped");
            return Vec::new();
        }
        self.policy.on_kv_events(batch)
    }

    /// Workers that still wait for a dump (re-request these now and then).
    pub fn pending_dumps(&self) -> Vec<(InstanceId, DpRank)> {
        self.policy.pending_dumps()
    }

    /// (worker, block) pairs in the KV index; `None` for KV-blind policies.
    pub fn kv_indexed_blocks(&self) -> Option<usize> {
        self.policy.indexed_blocks()
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
        self.route_with_overlap(req, exclude)
            .map(|d| (d.instance_id, d.dp_rank, d.record))
    }

    /// [`Router::route`] returning the predicted overlap too.
    pub fn route_with_overlap(
        &mut self,
        req: &RouteRequest,
        exclude: &[InstanceId],
    ) -> Result<RouteDecision> {
        self.decide(req, exclude, true)
    }

    /// What [`Router::route_with_overlap`] would pick now, without counting the request
    /// as waiting on the pick (comparisons, dry runs).
    pub fn preview(&mut self, req: &RouteRequest, exclude: &[InstanceId]) -> Result<RouteDecision> {
        self.decide(req, exclude, false)
    }

    fn decide(
        &mut self,
        req: &RouteRequest,
        exclude: &[InstanceId],
        commit: bool,
    ) -> Result<RouteDecision> {
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
                || req.pinned.is_some_and(|p| p != r.instance_id)
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
            return Err(match (busy, req.pinned) {
                (0, Some(instance)) => RouteError::PinnedUnavailable {
                    model: req.model.clone(),
                    instance,
                },
                (0, None) => RouteError::NoInstances(req.model.clone()),
                _ => RouteError::AllBusy {
                    model: req.model.clone(),
                    candidates: busy,
                    reason: format!(
                        "KV cache usage above {:.0}% with requests waiting on every worker",
                        self.config.busy_threshold * 100.0
                    ),
                },
            });
        }
        let Some(choice) = self.policy.choose_with_overlap(req, &self.candidates) else {
            return Err(RouteError::NoInstances(req.model.clone()));
        };
        let (id, rank) = (choice.instance_id, choice.dp_rank);
        let view = self
            .registry
            .get_mut(id)
            .ok_or_else(|| RouteError::NoInstances(req.model.clone()))?;
        if commit && let Some(l) = view.load.get_mut(rank.0 as usize) {
            l.waiting = l.waiting.saturating_add(1);
        }
        if commit {
            tracing::debug!(request_id = %req.request_id, instance = %id, dp_rank = %rank,
                policy = self.policy.name(), overlap_blocks = choice.overlap_blocks,
                prompt_blocks = choice.prompt_blocks, "routed");
        }
        Ok(RouteDecision {
            instance_id: id,
            dp_rank: rank,
            record: view.record.clone(),
            overlap_blocks: choice.overlap_blocks,
            prompt_blocks: choice.prompt_blocks,
        })
    }
}
