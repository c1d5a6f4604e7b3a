//! The long-running modes: `serve` (embedded), `frontend` and `worker` (cluster).

use crate::args::{
    EngineKind, FrontendArgs, HttpArgs, KvTransport, ModelArgs, Role, ServeArgs, WorkerArgs,
};
use crate::engines;
use anyhow::Context;
use ferrite_frontend::{Frontend, FrontendConfig};
use ferrite_protocol::WorkerRole;
use ferrite_runtime::{Bus, Discovery, EtcdDiscovery, MemBus, MemDiscovery, NatsBus};
use ferrite_worker::{
    RestartPolicy, TransportKind, WorkerConfig, WorkerHandle, start_worker_with_factory,
};
use std::sync::Arc;
use std::time::Duration;

/// Lease TTL of every etcd registration.
const LEASE_TTL: Duration = Duration::from_secs(10);

fn frontend_config(http: &HttpArgs, namespace: &str) -> FrontendConfig {
    FrontendConfig {
        namespace: namespace.to_string(),
        host: http.host.clone(),
        port: http.port,
        router: http.router.clone(),
        migration_limit: http.migration_limit,
        request_timeout: Duration::from_secs(http.request_timeout),
        http_workers: http.http_workers,
        max_inflight: http.max_inflight,
        max_body_bytes: http.max_body_mb.saturating_mul(1024 * 1024),
        kv_overlap_weight: http.kv_overlap_weight,
        router_temperature: http.router_temperature,
        ..FrontendConfig::default()
    }
}

async fn start_workers(
    args: &ModelArgs,
    namespace: &str,
    role: WorkerRole,
    dp_size: u32,
    disagg: &ferrite_worker::DisaggConfig,
    bus: Arc<dyn Bus>,
    discovery: Arc<dyn Discovery>,
) -> anyhow::Result<Vec<WorkerHandle>> {
    let kind = engines::resolve(args.engine)?;
    let model = engines::model_choice(args)?;
    if args.num_workers == 0 {
        usage!("--num-workers must be at least 1");
    }
    if dp_size == 0 {
        usage!("--dp-size must be at least 1");
    }
    if args.max_waiting == 0 {
        usage!("--max-waiting must be at least 1");
    }
    let (make, kv_tiers) = engines::factory(kind, args, &model)?;
    let mut workers = Vec::with_capacity(args.num_workers);
    for _ in 0..args.num_workers {
        let mut cfg = WorkerConfig::new(&model.name, model.path.to_string_lossy());
        cfg.namespace = namespace.to_string();
        cfg.role = role;
        cfg.simulated = kind == EngineKind::Mocker;
        cfg.max_batched_tokens = args.max_batched_tokens;
        cfg.max_num_seqs = args.max_num_seqs;
        cfg.max_waiting = args.max_waiting;
        cfg.dp_size = dp_size;
        cfg.disagg = disagg.clone();
        cfg.kv_tiers = kv_tiers.clone();
        cfg.restart_policy = RestartPolicy {
            max_restarts: args.max_engine_restarts,
            window: Duration::from_secs(args.engine_restart_window),
        };
        workers.push(
            start_worker_with_factory(cfg, make.clone(), bus.clone(), discovery.clone()).await?,
        );
    }
    if kind == EngineKind::Mocker {
        tracing::warn!(
            "engine: mocker — a SIMULATED engine (timing model, deterministic tokens), not real inference"
        );
        eprintln!(
            "ferrite: serving `{}` with the MOCKER, a simulated engine: outputs are deterministic placeholder tokens, not model predictions.",
            model.name
        );
    } else {
        eprintln!("ferrite: serving `{}` with the {kind:?} engine", model.name);
    }
    Ok(workers)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let bus: Arc<dyn Bus> = Arc::new(MemBus::new());
    let discovery: Arc<dyn Discovery> = Arc::new(MemDiscovery::new());
    let ns = ferrite_protocol::discovery::DEFAULT_NAMESPACE;
    let workers = start_workers(
        &args.model,
        ns,
        WorkerRole::Agg,
        1,
        &ferrite_worker::DisaggConfig::default(),
        bus.clone(),
        discovery.clone(),
    )
    .await?;
    let fe = Frontend::start(frontend_config(&args.http, ns), bus, discovery).await?;
    println!("ferrite serving on http://{} (OpenAI API at /v1)", fe.addr);
    shutdown_signal().await;
    eprintln!("ferrite: shutting down");
    for w in &workers {
        w.drain(Duration::from_secs(5)).await;
    }
    fe.stop().await;
    Ok(())
}

async fn connect(
    c: &crate::args::ClusterArgs,
) -> anyhow::Result<(Arc<dyn Bus>, Arc<dyn Discovery>)> {
    let bus = NatsBus::connect(&c.nats)
        .await
        .with_context(|| format!("connecting to NATS at {}", c.nats))?;
    let disc = EtcdDiscovery::connect(&c.etcd, LEASE_TTL)
        .await
        .with_context(|| format!("connecting to etcd at {}", c.etcd))?;
    Ok((Arc::new(bus), Arc::new(disc)))
}

pub async fn frontend(args: FrontendArgs) -> anyhow::Result<()> {
    let (bus, discovery) = connect(&args.cluster).await?;
    let fe = Frontend::start(
        frontend_config(&args.http, &args.cluster.namespace),
        bus,
        discovery.clone(),
    )
    .await?;
    println!("ferrite frontend on http://{}", fe.addr);
    shutdown_signal().await;
    fe.stop().await;
    let _ = discovery.shutdown().await;
    Ok(())
}

pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let role = match args.role {
        Role::Agg => WorkerRole::Agg,
        Role::Prefill => WorkerRole::Prefill,
        Role::Decode => WorkerRole::Decode,
    };
    let kv_transport = match args.kv_transport {
        KvTransport::Auto => TransportKind::Auto,
        KvTransport::Tcp => TransportKind::Tcp,
        KvTransport::Ucx => TransportKind::Ucx,
    };
    if role != WorkerRole::Agg
        && let Err(e) = kv_transport.check_available()
    {
        usage!("--kv-transport: {e}");
    }
    let disagg = ferrite_worker::DisaggConfig {
        kv_transport,
        max_local_prefill_tokens: args.max_local_prefill_tokens,
        enforce_disagg: args.enforce_disagg,
        transfer_host: args.kv_transfer_host.clone(),
        ..ferrite_worker::DisaggConfig::default()
    };
    if args.metrics_port != 0 {
        ferrite_telemetry::serve_metrics(([127, 0, 0, 1], args.metrics_port).into())?;
    }
    let (bus, discovery) = connect(&args.cluster).await?;
    let workers = start_workers(
        &args.model,
        &args.cluster.namespace,
        role,
        args.dp_size,
        &disagg,
        bus,
        discovery.clone(),
    )
    .await?;
    for w in &workers {
        println!(
            "ferrite worker {} serving {} ({} dp rank(s))",
            w.record.instance_id, w.record.model, w.record.dp_size
        );
    }
    shutdown_signal().await;
    eprintln!("ferrite: draining (up to {} s)", args.drain_timeout);
    let grace = Duration::from_secs(args.drain_timeout);
    futures::future::join_all(workers.iter().map(|w| w.drain(grace))).await;
    let _ = discovery.shutdown().await;
    Ok(())
}
