//! ferrite-frontend: the OpenAI-compatible HTTP API (actix-web). Preprocesses requests,
//! routes them to workers over the bus, detokenizes the streams, migrates on worker loss.

pub mod choice;
pub mod config;
pub mod embeds;
pub mod error;
pub mod fields;
pub mod generate;
pub mod guided;
pub mod model_io;
pub mod plan;
pub mod response;
pub mod routes;
pub mod serve;
pub mod state;
pub mod tools;
pub mod validate;

pub use config::FrontendConfig;

use actix::Actor;
use actix_web::{App, HttpServer, web};
use ferrite_router::{PolicyKind, RouterActor};
use ferrite_runtime::{Bus, Discovery};
use state::AppState;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("runtime: {0}")]
    Runtime(#[from] ferrite_runtime::RuntimeError),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("telemetry: {0}")]
    Telemetry(#[from] ferrite_telemetry::TelemetryError),
}

pub type Result<T> = std::result::Result<T, FrontendError>;

/// A running frontend. Must be started inside an actix `System`.
pub struct Frontend {
    pub addr: SocketAddr,
    server: actix_web::dev::ServerHandle,
    server_task: JoinHandle<std::io::Result<()>>,
    tasks: Vec<JoinHandle<()>>,
    router_thread: actix::Arbiter,
}

impl Frontend {
    pub async fn start(
        config: FrontendConfig,
        bus: Arc<dyn Bus>,
        discovery: Arc<dyn Discovery>,
    ) -> Result<Self> {
        let policy: PolicyKind = config
            .router
            .parse()
            .map_err(|e| FrontendError::Config(format!("--router: {e}")))?;
        if !(config.kv_overlap_weight.is_finite() && config.kv_overlap_weight >= 0.0) {
            return Err(FrontendError::Config(format!(
                "--kv-overlap-weight must be a finite number >= 0, got {}",
                config.kv_overlap_weight
            )));
        }
        if !(config.router_temperature.is_finite() && config.router_temperature >= 0.0) {
            return Err(FrontendError::Config(format!(
                "--router-temperature must be a finite number >= 0, got {}",
                config.router_temperature
            )));
        }
        let kv = ferrite_router::KvRouterConfig {
            overlap_weight: config.kv_overlap_weight,
            temperature: config.router_temperature,
            ..Default::default()
        };
        // The router gets a thread of its own, so that decisions never wait behind the
        // discovery/load/KV tasks or HTTP work on the frontend's main thread.
        let router_thread = actix::Arbiter::new();
        let router_inner = ferrite_router::Router::with_kind_and_kv(policy, &kv);
        let router = RouterActor::start_in_arbiter(&router_thread.handle(), move |_| {
            RouterActor::new(router_inner)
        });
        let (cancel_tx, cancel_rx) = tokio::sync::mpsc::unbounded_channel();
        let state = Arc::new(AppState::new(
            config.clone(),
            bus.clone(),
            discovery,
            router,
            cancel_tx,
        ));
        let mut tasks = state::start_watchers(&state).await?;
        tasks.push(tokio::spawn(generate::run_canceller(bus, cancel_rx)));
        let prom = ferrite_telemetry::prometheus()?;
        let inflight = web::Data::new(routes::Inflight(AtomicUsize::new(0)));
        let data = web::Data::new(state);
        let prom = web::Data::new(prom);
        let bind = format!("{}:{}", config.host, config.port);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(inflight.clone())
                .app_data(prom.clone())
                .configure(routes::configure)
        })
        // Tokens go out as soon as they are written: no Nagle delay between SSE chunks
        // (with delayed ACKs it cost ~40 ms between a stream's first and second chunk).
        .on_connect(|conn, _| {
            if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>()
                && let Err(e) = tcp.set_nodelay(true)
            {
                tracing::debug!("TCP_NODELAY: {e}");
            }
        })
        // A client's EOF ends the connection and drops its handler at once (half-closed
        // HTTP/1 clients are not served): a non-streamed request whose client hangs up is
        // cancelled on the worker then, not when its answer is finally written.
        .h1_allow_half_closed(false)
        .workers(config.http_workers.max(1))
        .disable_signals()
        .bind(&bind)
        .map_err(|source| FrontendError::Bind {
            addr: bind.clone(),
            source,
        })?;
        let addr = server
            .addrs()
            .first()
            .copied()
            .ok_or_else(|| FrontendError::Config(format!("no address bound for {bind}")))?;
        let server = server.run();
        let handle = server.handle();
        let server_task = tokio::spawn(server);
        tracing::info!(%addr, "frontend listening");
        Ok(Self {
            addr,
            server: handle,
            server_task,
            tasks,
            router_thread,
        })
    }

    /// Waits until the HTTP server stops.
    pub async fn wait(self) -> std::io::Result<()> {
        let r = match self.server_task.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        };
        for t in self.tasks {
            t.abort();
        }
        self.router_thread.stop();
        r
    }

    /// Stops serving (graceful) and the background tasks.
    pub async fn stop(self) {
        self.server.stop(true).await;
        for t in &self.tasks {
            t.abort();
        }
        self.router_thread.stop();
        let _ = self.server_task.await;
    }
}
