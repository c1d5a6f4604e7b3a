//! ferrite-worker: worker roles over the shared parts. An aggregated worker wires an
//! executor (on its own thread), the scheduler actor and the bus, and registers itself.

pub mod actor;
pub mod config;

pub use actor::{StopAccepting, WorkerActor};
pub use config::WorkerConfig;

use actix::prelude::*;
use ferrite_engine::Executor;
use ferrite_protocol::{InstanceRecord, ModelRecord, names};
use ferrite_runtime::{Bus, Discovery};
use ferrite_scheduler::{EngineActor, GetStats, Scheduler, SchedulerActor, SchedulerConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("runtime: {0}")]
    Runtime(#[from] ferrite_runtime::RuntimeError),
    #[error("encoding a discovery record: {0}")]
    Record(#[from] serde_json::Error),
    #[error("{0}")]
    Config(String),
}

pub type Result<T> = std::result::Result<T, WorkerError>;

/// A running worker: its actors and discovery keys.
pub struct WorkerHandle {
    pub record: InstanceRecord,
    pub actor: Addr<WorkerActor>,
    pub scheduler: Addr<SchedulerActor>,
    discovery: Arc<dyn Discovery>,
    keys: Vec<String>,
}

/// Starts an aggregated worker around `executor` and registers it. Call inside an actix
/// `System`.
pub async fn start_worker(
    cfg: WorkerConfig,
    executor: Box<dyn Executor>,
    bus: Arc<dyn Bus>,
    discovery: Arc<dyn Discovery>,
) -> Result<WorkerHandle> {
    let info = executor.info();
    let ns = cfg.namespace.clone();
    let engine = EngineActor::start(executor);
    let sched_cfg = SchedulerConfig {
        max_num_seqs: cfg.max_num_seqs,
        max_batched_tokens: cfg.max_batched_tokens,
        max_prefill_chunk: cfg.max_batched_tokens,
        waiting_queue_limit: cfg.max_waiting,
        ..SchedulerConfig::from_executor(&info)
    };
    let scheduler = Scheduler::new(sched_cfg).map_err(|e| WorkerError::Config(e.to_string()))?;
    let scheduler = SchedulerActor::new(scheduler, engine.recipient()).start();

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
        dp_size: 1,
        kv_block_size: info.kv.block_size,
        total_kv_blocks: info.kv.num_blocks,
        transfer: None,
    };
    let model = ModelRecord {
        name: cfg.model_name.clone(),
        instance_id: cfg.instance_id,
        model_path: cfg.model_path.clone(),
        context_length: info.max_context,
        kv_block_size: info.kv.block_size,
        simulated: cfg.simulated,
    };
    let block_size = info.kv.block_size;
    let sched = scheduler.clone();
    let b = bus.clone();
    let c = cfg.clone();
    let actor = WorkerActor::create(move |ctx| {
        ctx.add_stream(control);
        WorkerActor::new(c, b, sched, block_size)
    });
    actor.do_send(actor::ServeRequests(requests));

    let instance_key = names::instance_key(&ns, &cfg.component, cfg.instance_id);
    let model_key = names::model_key(&ns, &cfg.model_name, cfg.instance_id);
    // Model first: a frontend that sees the instance can already tokenize for it.
    discovery
        .register(&model_key, serde_json::to_vec(&model)?)
        .await?;
    discovery
        .register(&instance_key, serde_json::to_vec(&record)?)
        .await?;
    tracing::info!(instance = %cfg.instance_id, model = %cfg.model_name, engine = %info.name,
        kv_blocks = info.kv.num_blocks, "worker registered");
    Ok(WorkerHandle {
        record,
        actor,
        scheduler,
        discovery,
        keys: vec![instance_key, model_key],
    })
}

impl WorkerHandle {
    /// Graceful stop: leave discovery, refuse new work, let running sequences finish
    /// within `grace`. Whatever is still running after that is left to migration.
    pub async fn drain(&self, grace: Duration) {
        for k in &self.keys {
            if let Err(e) = self.discovery.unregister(k).await {
                tracing::warn!(key = %k, "unregister: {e}");
            }
        }
        let _ = self.actor.send(StopAccepting).await;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            match self.scheduler.send(GetStats).await {
                Ok(s) if s.running + s.waiting == 0 => break,
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(_) => break,
            }
        }
    }
}
