//! ferrite-frontend: the OpenAI-compatible HTTP API (actix-web). Preprocesses requests,
//! routes them to workers over the bus, detokenizes the streams, migrates on worker loss.

pub mod choice;
pub mod config;
pub mod error;
pub mod generate;
pub mod model_io;
pub mod plan;
pub mod response;
pub mod routes;
pub mod serve;
pub mod state;
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
        let router = RouterActor::new(ferrite_router::Router::with_kind(policy)).start();
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
                .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
                .route("/v1/chat/completions", web::post().to(routes::chat))
                .route("/v1/completions", web::post().to(routes::completions))
                .route("/v1/models", web::get().to(routes::models))
                .route("/health", web::get().to(routes::health))
                .route("/live", web::get().to(routes::live))
                .route("/metrics", web::get().to(routes::metrics))
                .default_service(web::to(routes::not_found))
        })
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
        r
    }

    /// Stops serving (graceful) and the background tasks.
    pub async fn stop(self) {
        self.server.stop(true).await;
        for t in &self.tasks {
            t.abort();
        }
        let _ = self.server_task.await;
    }
}
