//! ferrite-telemetry: tracing initialisation, metric-name constants and the Prometheus
//! recorder every Ferrite process installs.

pub mod names;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::OnceLock;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("prometheus: {0}")]
    Prometheus(String),
}

pub type Result<T> = std::result::Result<T, TelemetryError>;

/// Initialises `tracing` (env filter from `RUST_LOG`, default `info`) and bridges `log`.
/// Safe to call more than once.
pub fn init_tracing() {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_log::LogTracer::init();
    let _ = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Router decisions take microseconds.
const DECISION_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.1,
];
const TOKEN_BUCKETS: &[f64] = &[
    1.0, 8.0, 32.0, 128.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 32768.0,
];

/// Installs the global Prometheus recorder (once per process) and returns its handle,
/// whose `render()` gives the `/metrics` text.
pub fn prometheus() -> Result<PrometheusHandle> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Prefix("ferrite_router_".into()),
            DECISION_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                SECONDS_BUCKETS,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("_tokens".into()),
                TOKEN_BUCKETS,
            )
        })
        .map_err(|e| TelemetryError::Prometheus(e.to_string()))?;
    match builder.install_recorder() {
        Ok(handle) => {
            let _ = HANDLE.set(handle.clone());
            Ok(HANDLE.get().cloned().unwrap_or(handle))
        }
        Err(e) => HANDLE
            .get()
            .cloned()
            .ok_or_else(|| TelemetryError::Prometheus(e.to_string())),
    }
}

/// Serves the recorder's text on `http://addr/metrics` from a background thread
/// (for workers, which have no HTTP server of their own). Installs the recorder if needed.
pub fn serve_metrics(addr: SocketAddr) -> Result<()> {
    let handle = prometheus()?;
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| TelemetryError::Prometheus(format!("bind {addr}: {e}")))?;
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || serve_loop(listener, handle))
        .map_err(|e| TelemetryError::Prometheus(e.to_string()))?;
    Ok(())
}

fn serve_loop(listener: std::net::TcpListener, handle: PrometheusHandle) {
    use std::io::{Read, Write};
    for mut conn in listener.incoming().flatten() {
        let mut buf = [0u8; 1024];
        let _ = conn.read(&mut buf);
        let body = handle.render();
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let _ = conn.write_all(head.as_bytes());
        let _ = conn.write_all(body.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn recorder_renders_counters() {
        let h = super::prometheus().unwrap();
        metrics::counter!("ferrite_test_counter_total").increment(3);
        assert!(h.render().contains("ferrite_test_counter_total 3"));
        // a second install returns the same handle
        assert!(super::prometheus().is_ok());
    }
}
