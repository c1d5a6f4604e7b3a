//! Shared state of the frontend: the bus, the router actor, the models it serves, and the
//! tasks that keep them in sync with discovery and the workers' load and KV reports.

use crate::config::FrontendConfig;
use crate::generate::CancelOrder;
use crate::model_io::ServedModel;
use actix::Addr;
use ferrite_protocol::ControlMessage;
use ferrite_protocol::{
    DpRank, ErrorInfo, ErrorKind, InstanceId, InstanceRecord, KvEventBatch, ModelRecord,
    PreprocessedRequest, WorkerLoad, names,
};
use ferrite_router::{
    InstanceDown, InstanceUp, KvEvents, KvIndexedBlocks, ListModels, LoadReport, PendingDumps,
    RouteRequest, RouteWithOverlap, RouterActor,
};
use ferrite_runtime::{Bus, Discovery, DiscoveryEvent};
use ferrite_telemetry::names as metric;
use futures::StreamExt;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

/// A model and the instances serving it.
struct ModelSlot {
    model: Arc<ServedModel>,
    instances: usize,
}

pub struct AppState {
    pub config: FrontendConfig,
    pub bus: Arc<dyn Bus>,
    pub discovery: Arc<dyn Discovery>,
    pub router: Addr<RouterActor>,
    pub cancel_tx: UnboundedSender<CancelOrder>,
    /// Instances whose discovery record was deleted (lease expired or drained).
    pub instance_down: tokio::sync::broadcast::Sender<InstanceId>,
    /// Control subject of each live instance (to ask for KV dumps).
    control: RwLock<HashMap<InstanceId, String>>,
    models: RwLock<HashMap<String, ModelSlot>>,
    /// model key → (model name) to undo on delete.
    model_keys: RwLock<HashMap<String, String>>,
}

impl AppState {
    pub fn new(
        config: FrontendConfig,
        bus: Arc<dyn Bus>,
        discovery: Arc<dyn Discovery>,
        router: Addr<RouterActor>,
        cancel_tx: UnboundedSender<CancelOrder>,
    ) -> Self {
        Self {
            config,
            bus,
            discovery,
            router,
            cancel_tx,
            instance_down: tokio::sync::broadcast::channel(256).0,
            control: RwLock::new(HashMap::new()),
            models: RwLock::new(HashMap::new()),
            model_keys: RwLock::new(HashMap::new()),
        }
    }

    /// A model some worker has served, and whether an instance of it is alive now.
    pub fn model(&self, name: &str) -> Option<(Arc<ServedModel>, bool)> {
        self.models
            .read()
            .get(name)
            .map(|s| (s.model.clone(), s.instances > 0))
    }

    /// Names of served models with a live instance, sorted.
    /// The models of [`AppState::model_names`] that the router also has a live instance
    /// for (discovery's model and instance records arrive separately; a model listed
    /// before its instance would answer 503).
    pub async fn routable_models(&self) -> Vec<(String, u32)> {
        let live = self.router.send(ListModels).await.unwrap_or_default();
        self.model_names()
            .into_iter()
            .filter(|(name, _)| live.binary_search(name).is_ok())
            .collect()
    }

    pub fn model_names(&self) -> Vec<(String, u32)> {
        let mut v: Vec<_> = self
            .models
            .read()
            .iter()
            .filter(|(_, s)| s.instances > 0)
            .map(|(k, s)| (k.clone(), s.model.context_length))
            .collect();
        v.sort();
        v
    }

    /// Routes a request (to `pinned` only, when given), skipping `exclude`.
    pub async fn route(
        &self,
        req: &PreprocessedRequest,
        exclude: &[InstanceId],
        pinned: Option<InstanceId>,
    ) -> Result<(InstanceId, DpRank, InstanceRecord), ErrorInfo> {
        let mut rr = RouteRequest::from_preprocessed(req);
        rr.pinned = pinned;
        let msg = RouteWithOverlap {
            req: rr,
            exclude: exclude.to_vec(),
        };
        let started = std::time::Instant::now();
        let answer = self.router.send(msg).await;
        metrics::histogram!(metric::ROUTER_ROUNDTRIP_SECONDS)
            .record(started.elapsed().as_secs_f64());
        match answer {
            Ok(Ok(d)) => {
                metrics::counter!(metric::ROUTER_PROMPT_BLOCKS_TOTAL)
                    .increment(d.prompt_blocks as u64);
                metrics::counter!(metric::ROUTER_OVERLAP_BLOCKS_TOTAL)
                    .increment(d.overlap_blocks as u64);
                Ok((d.instance_id, d.dp_rank, d.record))
            }
            Ok(Err(e)) => Err(e.to_error_info()),
            Err(e) => Err(ErrorInfo::new(ErrorKind::Internal, format!("router: {e}"))),
        }
    }

    /// Asks workers for a full dump of their cached blocks (KV-aware routing: a new
    /// worker, or a gap in its event ids).
    async fn request_dumps(&self, workers: Vec<(InstanceId, DpRank)>) {
        let mut seen = std::collections::HashSet::new();
        for (id, _) in workers {
            if !seen.insert(id) {
                continue;
            }
            let Some(subject) = self.control.read().get(&id).cloned() else {
                continue;
            };
            let Ok(bytes) = ferrite_protocol::codec::encode(&ControlMessage::DumpKv) else {
                continue;
            };
            metrics::counter!(metric::ROUTER_KV_DUMPS_REQUESTED_TOTAL).increment(1);
            if let Err(e) = self.bus.publish(&subject, bytes.into()).await {
                tracing::warn!(instance = %id, "KV dump request not sent: {e}");
            }
        }
    }

    async fn on_model_event(&self, ev: DiscoveryEvent) {
        match ev {
            DiscoveryEvent::Put { key, value } => {
                let rec: ModelRecord = match serde_json::from_slice(&value) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(%key, "bad model record: {e}");
                        return;
                    }
                };
                if self.model_keys.read().contains_key(&key) {
                    return;
                }
                let loaded = self.models.read().contains_key(&rec.name);
                if !loaded {
                    let r = rec.clone();
                    match tokio::task::spawn_blocking(move || ServedModel::load(&r)).await {
                        Ok(Ok(m)) => {
                            tracing::info!(model = %rec.name, path = %rec.model_path, "serving model");
                            self.models
                                .write()
                                .entry(rec.name.clone())
                                .or_insert(ModelSlot {
                                    model: Arc::new(m),
                                    instances: 0,
                                });
                        }
                        Ok(Err(e)) => {
                            tracing::error!(model = %rec.name, path = %rec.model_path, "cannot load the model's tokenizer: {e}");
                            return;
                        }
                        Err(e) => {
                            tracing::error!("model loader: {e}");
                            return;
                        }
                    }
                }
                if let Some(slot) = self.models.write().get_mut(&rec.name) {
                    slot.instances += 1;
                }
                self.model_keys.write().insert(key, rec.name);
            }
            DiscoveryEvent::Delete { key } => {
                if let Some(name) = self.model_keys.write().remove(&key)
                    && let Some(slot) = self.models.write().get_mut(&name)
                {
                    slot.instances = slot.instances.saturating_sub(1);
                }
            }
        }
    }

    async fn on_instance_event(&self, ev: DiscoveryEvent) {
        match ev {
            DiscoveryEvent::Put { key, value } => {
                match serde_json::from_slice::<InstanceRecord>(&value) {
                    Ok(rec) => {
                        tracing::info!(instance = %rec.instance_id, model = %rec.model, "instance up");
                        let id = rec.instance_id;
                        self.control.write().insert(id, rec.control_subject.clone());
                        if let Ok(true) = self.router.send(InstanceUp(rec)).await {
                            // A new worker: learn what it already caches.
                            self.request_dumps(vec![(id, DpRank::default())]).await;
                        }
                    }
                    Err(e) => tracing::warn!(%key, "bad instance record: {e}"),
                }
            }
            DiscoveryEvent::Delete { key } => {
                match key
                    .rsplit('/')
                    .next()
                    .and_then(|id| id.parse::<InstanceId>().ok())
                {
                    Some(id) => {
                        tracing::info!(instance = %id, "instance down");
                        self.control.write().remove(&id);
                        self.router.do_send(InstanceDown(id));
                        let _ = self.instance_down.send(id);
                    }
                    None => tracing::warn!(%key, "unparsable instance key"),
                }
            }
        }
    }
}

/// Starts the tasks that feed the state; the handles are kept by the frontend.
pub async fn start_watchers(
    state: &Arc<AppState>,
) -> Result<Vec<JoinHandle<()>>, ferrite_runtime::RuntimeError> {
    let ns = state.config.namespace.clone();
    let mut tasks = Vec::new();

    let mut models = state
        .discovery
        .watch_prefix(&names::models_prefix(&ns))
        .await?;
    // Apply what exists now before serving, so the first request sees every model.
    let current = state
        .discovery
        .get_prefix(&names::models_prefix(&ns))
        .await?;
    for (key, value) in current {
        state
            .on_model_event(DiscoveryEvent::Put { key, value })
            .await;
    }
    let s = state.clone();
    tasks.push(tokio::spawn(async move {
        while let Some(ev) = models.next().await {
            s.on_model_event(ev).await;
        }
    }));

    let mut instances = state
        .discovery
        .watch_prefix(&names::instances_prefix(&ns))
        .await?;
    let s = state.clone();
    tasks.push(tokio::spawn(async move {
        while let Some(ev) = instances.next().await {
            s.on_instance_event(ev).await;
        }
    }));

    let mut loads = state.bus.subscribe(&format!("ferrite.{ns}.load.>")).await?;
    let router = state.router.clone();
    tasks.push(tokio::spawn(async move {
        while let Some(msg) = loads.next().await {
            if let Ok(load) = ferrite_protocol::codec::decode::<WorkerLoad>(&msg.payload) {
                router.do_send(LoadReport(load));
            }
        }
    }));

    let mut kv = state
        .bus
        .subscribe(&format!("ferrite.{ns}.kv_events.>"))
        .await?;
    let s = state.clone();
    tasks.push(tokio::spawn(async move {
        while let Some(msg) = kv.next().await {
            let Ok(batch) = ferrite_protocol::codec::decode::<KvEventBatch>(&msg.payload) else {
                continue;
            };
            metrics::counter!(metric::ROUTER_KV_EVENTS_TOTAL).increment(batch.events.len() as u64);
            if let Ok(dumps) = s.router.send(KvEvents(batch)).await
                && !dumps.is_empty()
            {
                s.request_dumps(dumps).await;
            }
        }
    }));

    // Dumps asked for but not answered (lost on the bus) are asked for again; the index
    // size is exported.
    let s = state.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
        loop {
            tick.tick().await;
            if let Ok(pending) = s.router.send(PendingDumps).await
                && !pending.is_empty()
            {
                s.request_dumps(pending).await;
            }
            if let Ok(Some(n)) = s.router.send(KvIndexedBlocks).await {
                metrics::gauge!(metric::ROUTER_INDEXED_BLOCKS).set(n as f64);
            }
        }
    }));
    Ok(tasks)
}
