//! Shared parts of disaggregated serving: the settings, the view of live prefill
//! instances (from discovery), and the per-worker context the prefill and decode paths use.

pub use crate::prefill_choice::{PrefillChooser, PrefillPool};
use ferrite_engine::KvBlockLayout;
use ferrite_protocol::{InstanceId, KvEventBatch, KvLayout, WorkerRole, codec, names};
use ferrite_runtime::{Bus, Discovery};
use ferrite_scheduler::SupervisedRank;
use ferrite_transfer::{TransferClient, TransportKind};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Disaggregation settings of a worker (ignored by aggregated workers).
#[derive(Clone, Debug)]
pub struct DisaggConfig {
    /// `--kv-transport`: auto, tcp or ucx.
    pub kv_transport: TransportKind,
    /// Decode: prompts with at most this many uncached tokens are prefilled locally.
    pub max_local_prefill_tokens: usize,
    /// Decode: never prefill locally; with no prefill instance alive, refuse.
    pub enforce_disagg: bool,
    /// Decode: host the KV transfer server binds (its port is picked by the OS).
    pub transfer_host: String,
    /// Decode: how long a prefill instance may stay silent before it is presumed lost.
    pub prefill_idle_timeout: Duration,
    /// Mocker only (no cache bytes): simulated bytes per block and bandwidth of a transfer.
    pub simulated_bytes_per_block: usize,
    pub simulated_bandwidth: f64,
}

impl Default for DisaggConfig {
    fn default() -> Self {
        Self {
            kv_transport: TransportKind::Auto,
            max_local_prefill_tokens: 0,
            enforce_disagg: false,
            transfer_host: "127.0.0.1".into(),
            prefill_idle_timeout: Duration::from_secs(3),
            simulated_bytes_per_block: 64 << 10,
            simulated_bandwidth: 5e9,
        }
    }
}

/// The wire layout of an engine's KV blocks; an engine without cache bytes (the mocker)
/// gets a "simulated" layout of zero bytes per block.
pub fn wire_layout(layout: Option<&KvBlockLayout>, block_size: u32) -> KvLayout {
    match layout {
        Some(l) => KvLayout {
            num_layers: l.num_layers,
            num_kv_heads: l.num_kv_heads,
            head_dim: l.head_dim,
            block_size: l.block_size,
            dtype: l.dtype.clone(),
            bytes_per_block: l.bytes_per_block,
        },
        None => KvLayout {
            num_layers: 0,
            num_kv_heads: 0,
            head_dim: 0,
            block_size,
            dtype: "simulated".into(),
            bytes_per_block: 0,
        },
    }
}

/// Keeps `pool` in sync with the prefill instances in discovery until `cancel`.
pub(crate) async fn watch_prefill(
    discovery: Arc<dyn Discovery>,
    bus: Arc<dyn Bus>,
    ns: String,
    model: String,
    pool: Arc<PrefillPool>,
    cancel: CancellationToken,
) {
    let prefix = format!(
        "{}{}/",
        names::instances_prefix(&ns),
        ferrite_protocol::discovery::PREFILL_COMPONENT
    );
    loop {
        let mut events = match discovery.watch_prefix(&prefix).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("watching prefill instances: {e}; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                ev = events.next() => match ev {
                    Some(ev) => {
                        if let Some(new) = pool.apply(&ev, &model) {
                            ask_for_dump(&bus, &new.control_subject).await;
                        }
                    }
                    None => break,
                },
            }
        }
    }
}

/// Asks a prefill instance to publish a snapshot of its cached blocks.
async fn ask_for_dump(bus: &Arc<dyn Bus>, control_subject: &str) {
    if let Ok(bytes) = codec::encode(&ferrite_protocol::ControlMessage::DumpKv) {
        let _ = bus.publish(control_subject, bytes.into()).await;
    }
}

/// Feeds `pool` the KV events of the model's workers (it keeps those of prefill
/// instances) until `cancel`.
pub(crate) async fn watch_kv_events(
    bus: Arc<dyn Bus>,
    subject: String,
    pool: Arc<PrefillPool>,
    cancel: CancellationToken,
) {
    let mut events = match bus.subscribe(&subject).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%subject, "no KV events for the prefill choice: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            m = events.next() => match m {
                Some(m) => {
                    if let Ok(batch) = codec::decode::<KvEventBatch>(&m.payload) {
                        pool.apply_kv(&batch);
                    }
                }
                None => return,
            },
        }
    }
}

/// What the prefill and decode paths of one worker share.
pub struct DisaggCtx {
    pub(crate) cfg: DisaggConfig,
    pub(crate) role: WorkerRole,
    pub(crate) instance_id: InstanceId,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) ranks: Vec<SupervisedRank>,
    pub(crate) layout: KvLayout,
    /// The engine has cache bytes to copy (false for the mocker: simulated transfer).
    pub(crate) copyable: bool,
    /// Decode: where prefill workers send blocks.
    pub(crate) transfer: Option<ferrite_protocol::TransferInfo>,
    /// Decode: who prefills.
    pub(crate) chooser: Arc<dyn PrefillChooser>,
    /// Prefill: the sending side.
    pub(crate) client: Option<TransferClient>,
    pub(crate) block_size: u32,
}

/// KV blocks sent to decode workers (prefill side).
pub const METRIC_TRANSFER_BLOCKS: &str = "ferrite_worker_kv_transfer_blocks_total";
/// KV bytes sent to decode workers (prefill side).
pub const METRIC_TRANSFER_BYTES: &str = "ferrite_worker_kv_transfer_bytes_total";
/// Requests a decode worker prefilled remotely, by outcome (`remote`, `local`, `fallback`).
pub const METRIC_DISAGG_REQUESTS: &str = "ferrite_worker_disagg_requests_total";

/// The tasks and server a prefill or decode worker runs besides its actors.
pub(crate) struct DisaggRuntime {
    server: Option<ferrite_transfer::TransferServer>,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl DisaggRuntime {
    /// Stops the transfer server, the sink and the discovery watch.
    pub(crate) async fn stop(&mut self) {
        self.cancel.cancel();
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for DisaggRuntime {
    fn drop(&mut self) {
        self.cancel.cancel();
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Builds a prefill or decode worker's context: the engine's layout, and for decode the
/// transfer server (its sink writes into the engine) and the watch of prefill instances.
pub(crate) async fn setup(
    cfg: &crate::WorkerConfig,
    ranks: &[SupervisedRank],
    bus: Arc<dyn Bus>,
    discovery: Arc<dyn Discovery>,
    block_size: u32,
) -> crate::Result<Option<(Arc<DisaggCtx>, DisaggRuntime)>> {
    use crate::WorkerError;
    if cfg.role == WorkerRole::Agg {
        return Ok(None);
    }
    let rank0 = ranks
        .first()
        .ok_or_else(|| WorkerError::Config("no ranks".into()))?;
    let engine = rank0
        .supervisor
        .send(ferrite_scheduler::GetEngine)
        .await
        .map_err(|e| WorkerError::Config(format!("supervisor gone: {e}")))?;
    let engine_layout = engine
        .send(ferrite_scheduler::GetKvLayout)
        .await
        .map_err(|e| WorkerError::Config(format!("engine gone: {e}")))?;
    let copyable = engine_layout.is_some();
    let layout = wire_layout(engine_layout.as_ref(), block_size);
    let transfer_err = |e: ferrite_transfer::TransferError| WorkerError::Config(e.to_string());
    let cancel = CancellationToken::new();
    let mut rt = DisaggRuntime {
        server: None,
        cancel: cancel.clone(),
        tasks: Vec::new(),
    };
    let pool = Arc::new(PrefillPool::default());
    let mut ctx = DisaggCtx {
        cfg: cfg.disagg.clone(),
        role: cfg.role,
        instance_id: cfg.instance_id,
        bus,
        ranks: ranks.to_vec(),
        layout: layout.clone(),
        copyable,
        transfer: None,
        chooser: pool.clone(),
        client: None,
        block_size,
    };
    let (sink_rx, ctx) = match cfg.role {
        WorkerRole::Prefill => {
            ctx.client =
                Some(TransferClient::new(cfg.disagg.kv_transport, layout).map_err(transfer_err)?);
            (None, Arc::new(ctx))
        }
        _ => {
            let (server, rx) = ferrite_transfer::TransferServer::bind(
                cfg.disagg.kv_transport,
                &cfg.disagg.transfer_host,
                layout,
            )
            .await
            .map_err(transfer_err)?;
            ctx.transfer = Some(server.info());
            rt.server = Some(server);
            rt.tasks.push(tokio::spawn(watch_kv_events(
                ctx.bus.clone(),
                names::kv_events_subject(&cfg.namespace, &cfg.model_name),
                pool.clone(),
                cancel.clone(),
            )));
            rt.tasks.push(tokio::spawn(watch_prefill(
                discovery,
                ctx.bus.clone(),
                cfg.namespace.clone(),
                cfg.model_name.clone(),
                pool,
                cancel,
            )));
            (Some(rx), Arc::new(ctx))
        }
    };
    if let Some(rx) = sink_rx {
        rt.tasks
            .push(tokio::spawn(crate::decode::sink(ctx.clone(), rx)));
    }
    tracing::info!(role = ?cfg.role, copyable, transfer = ?ctx.transfer,
        "disaggregated worker ready");
    Ok(Some((ctx, rt)))
}
