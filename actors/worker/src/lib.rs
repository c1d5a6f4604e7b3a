//! ferrite-worker: worker roles over the shared parts. An aggregated worker runs one or
//! more attention data-parallel ranks — each a supervised engine (own thread), a scheduler
//! and a KV pool — behind one instance on the bus, and registers itself in discovery.

pub mod actor;
pub mod config;
mod decode;
pub mod disagg;
mod prefill;
mod prefill_choice;
mod registration;

pub use actor::{StopAccepting, WorkerActor};
pub use config::WorkerConfig;
pub use disagg::{DisaggConfig, PrefillChooser, PrefillPool};
pub use ferrite_scheduler::{RestartPolicy, SupervisedRank};
pub use ferrite_transfer::TransportKind;

use actix::prelude::*;
use ferrite_engine::{EngineError, Executor, ExecutorFactory};
use ferrite_protocol::{DpRank, InstanceRecord, ModelRecord, names};
use ferrite_runtime::{Bus, Discovery};
use ferrite_scheduler::{
    EngineSupervisor, GetRestarts, GetStats, Scheduler, SchedulerActor, SchedulerConfig,
    SchedulerStats, SupervisorConfig,
};
use registration::Registration;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("runtime: {0}")]
    Runtime(#[from] ferrite_runtime::RuntimeError),
    #[error("encoding a discovery record: {0}")]
    Record(#[from] serde_json::Error),
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Config(String),
}

pub type Result<T> = std::result::Result<T, WorkerError>;

/// A running worker: its actors, ranks and discovery keys.
pub struct WorkerHandle {
    pub record: InstanceRecord,
    pub actor: Addr<WorkerActor>,
    /// Rank 0's scheduler.
    pub scheduler: Addr<SchedulerActor>,
    /// Every rank, in rank order.
    pub ranks: Vec<SupervisedRank>,
    registration: Arc<Registration>,
    disagg: Option<tokio::sync::Mutex<disagg::DisaggRuntime>>,
}

/// Starts a single-rank aggregated worker around `executor` and registers it. The engine
/// cannot be rebuilt (there is no factory): a panicking step ends the worker's requests
/// with `WorkerLost` and takes it out of discovery. Prefer [`start_worker_with_factory`].
/// Call inside an actix `System`.
pub async fn start_worker(
    cfg: WorkerConfig,
    executor: Box<dyn Executor>,
    bus: Arc<dyn Bus>,
    discovery: Arc<dyn Discovery>,
) -> Result<WorkerHandle> {
    if cfg.dp_size != 1 {
        return Err(WorkerError::Config(
            "a worker started from one executor has one rank; use start_worker_with_factory".into(),
        ));
    }
    let cell = parking_lot::Mutex::new(Some(executor));
    let factory: ExecutorFactory = Arc::new(move |_rank| {
        cell.lock().take().ok_or_else(|| {
            EngineError::Backend("this worker was given one executor and cannot rebuild it".into())
        })
    });
    start_worker_with_factory(cfg, factory, bus, discovery).await
}

/// Starts an aggregated worker with `cfg.dp_size` ranks, each with an executor made by
/// `factory` for its rank (now, and again by its supervisor after a crash), and registers
/// one instance with `dp_size` ranks. Call inside an actix `System`.
pub async fn start_worker_with_factory(
    cfg: WorkerConfig,
    factory: ExecutorFactory,
    bus: Arc<dyn Bus>,
    discovery: Arc<dyn Discovery>,
) -> Result<WorkerHandle> {
    if cfg.dp_size == 0 {
        return Err(WorkerError::Config("--dp-size must be at least 1".into()));
    }
    let ns = cfg.namespace.clone();
    let mut wctx = Context::<WorkerActor>::new();
    let mut ranks = Vec::with_capacity(cfg.dp_size as usize);
    let mut info0 = None;
    for r in 0..cfg.dp_size {
        let rank = DpRank(r);
        let executor = factory(rank)?;
        let info = executor.info();
        let info0 = info0.get_or_insert_with(|| info.clone());
        if info0.kv != info.kv || info0.max_context != info.max_context {
            return Err(WorkerError::Config(format!(
                "dp rank {r} has a different KV cache or context ({:?}, {}) than rank 0 ({:?}, {})",
                info.kv, info.max_context, info0.kv, info0.max_context
            )));
        }
        let sched_cfg = SchedulerConfig {
            max_num_seqs: cfg.max_num_seqs,
            max_batched_tokens: cfg.max_batched_tokens,
            max_prefill_chunk: cfg.max_batched_tokens,
            waiting_queue_limit: cfg.max_waiting,
            kv_tiers: cfg.kv_tiers.clone(),
            ..SchedulerConfig::from_executor(&info)
        };
        let scheduler =
            Scheduler::new(sched_cfg).map_err(|e| WorkerError::Config(e.to_string()))?;
        let mut sup = SupervisorConfig::new(rank);
        sup.policy = cfg.restart_policy;
        sup.on_give_up = Some(wctx.address().recipient());
        if cfg.dp_size > 1 {
            sup.labels = vec![("dp_rank".into(), r.to_string())];
        }
        ranks.push(EngineSupervisor::start(
            sup,
            executor,
            factory.clone(),
            scheduler,
        ));
    }
    let (Some(info), Some(scheduler)) = (info0, ranks.first().map(|r| r.scheduler.clone())) else {
        return Err(WorkerError::Config("no ranks".into()));
    };

    let mut cfg = cfg;
    if cfg.role == ferrite_protocol::WorkerRole::Prefill
        && cfg.component == ferrite_protocol::discovery::WORKER_COMPONENT
    {
        cfg.component = ferrite_protocol::discovery::PREFILL_COMPONENT.into();
    }
    let disagg = disagg::setup(
        &cfg,
        &ranks,
        bus.clone(),
        discovery.clone(),
        info.kv.block_size,
    )
    .await?;
    let (disagg_ctx, disagg_rt) = match disagg {
        Some((c, r)) => (Some(c), Some(r)),
        None => (None, None),
    };
    let subject = names::generate_subject(&ns, &cfg.component, cfg.instance_id);
    let control_subject = names::control_subject(&ns, &cfg.component, cfg.instance_id);
    let requests = ferrite_runtime::serve_requests(&bus, &subject).await?;
    let control = bus.subscribe(&control_subject).await?;
    let record = InstanceRecord {
        instance_id: cfg.instance_id,
        component: cfg.component.clone(),
        role: cfg.role,
        model: cfg.model_name.clone(),
        subject,
        control_subject,
        dp_size: cfg.dp_size,
        kv_block_size: info.kv.block_size,
        total_kv_blocks: info.kv.num_blocks,
        transfer: disagg_ctx.as_ref().and_then(|d| d.transfer.clone()),
    };
    let model = ModelRecord {
        name: cfg.model_name.clone(),
        instance_id: cfg.instance_id,
        model_path: cfg.model_path.clone(),
        context_length: info.max_context,
        kv_block_size: info.kv.block_size,
        simulated: cfg.simulated,
    };
    let instance_key = names::instance_key(&ns, &cfg.component, cfg.instance_id);
    let model_key = names::model_key(&ns, &cfg.model_name, cfg.instance_id);
    let registration = Arc::new(Registration::new(
        discovery,
        vec![instance_key.clone(), model_key.clone()],
    ));
    wctx.add_stream(control);
    let actor = wctx.run(
        WorkerActor::new(
            cfg.clone(),
            bus,
            ranks.iter().map(|r| r.scheduler.clone()).collect(),
            info.kv.block_size,
            registration.clone(),
        )
        .with_disagg(disagg_ctx),
    );
    actor.do_send(actor::ServeRequests(requests));

    // Model first: a frontend that sees the instance can already tokenize for it.
    registration
        .register(&model_key, serde_json::to_vec(&model)?)
        .await?;
    registration
        .register(&instance_key, serde_json::to_vec(&record)?)
        .await?;
    tracing::info!(instance = %cfg.instance_id, model = %cfg.model_name, engine = %info.name,
        kv_blocks = info.kv.num_blocks, dp_size = cfg.dp_size, "worker registered");
    Ok(WorkerHandle {
        record,
        actor,
        scheduler,
        ranks,
        registration,
        disagg: disagg_rt.map(tokio::sync::Mutex::new),
    })
}

impl WorkerHandle {
    /// Graceful stop: leave discovery, refuse new work, let running sequences of every rank
    /// finish within `grace`. Whatever is still running after that is left to migration.
    pub async fn drain(&self, grace: Duration) {
        self.registration.leave().await;
        let _ = self.actor.send(StopAccepting).await;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            match self.rank_stats().await {
                Some(s) if s.iter().all(|s| s.running + s.waiting == 0) => break,
                Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                None => break,
            }
        }
        if let Some(d) = &self.disagg {
            d.lock().await.stop().await;
        }
    }

    /// Each rank's scheduler counts, in rank order (`None` if a scheduler is gone).
    pub async fn rank_stats(&self) -> Option<Vec<SchedulerStats>> {
        let mut out = Vec::with_capacity(self.ranks.len());
        for r in &self.ranks {
            out.push(r.scheduler.send(GetStats).await.ok()?);
        }
        Some(out)
    }

    /// Engine restarts of all ranks so far.
    pub async fn engine_restarts(&self) -> u64 {
        let mut n = 0;
        for r in &self.ranks {
            n += r.supervisor.send(GetRestarts).await.unwrap_or(0);
        }
        n
    }

    /// True once the worker left discovery (drained, or its engine was lost for good).
    pub fn left_discovery(&self) -> bool {
        self.registration.has_left()
    }
}
