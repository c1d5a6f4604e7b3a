//! ferrite-integration-tests: helpers that start the real `ferrite` binary (frontend,
//! workers, embedded serve) against real etcd and NATS, and a small SSE client.

pub mod cluster;
pub mod sse;

use anyhow::{Context, bail};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub use ferrite_runtime::testing::{EtcdServer, NatsServer};

/// The `ferrite` binary: `FERRITE_BIN`, or `target/<profile>/ferrite` beside this test.
pub fn ferrite_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("FERRITE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test>  →  target/<profile>/ferrite
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("ferrite"))
        .context("locating target dir")?;
    if !bin.exists() {
        bail!(
            "the ferrite binary is not built at {} — run `cargo build -p ferrite` first (the README's test command does)",
            bin.display()
        );
    }
    Ok(bin)
}

/// A child process, SIGKILLed on drop, with its output lines collected.
pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub name: String,
}

impl Proc {
    /// Starts `ferrite ARGS` and waits for a stdout line containing `ready`.
    pub fn start(
        name: &str,
        args: &[&str],
        ready: &str,
        timeout: Duration,
    ) -> anyhow::Result<(Proc, String)> {
        let mut child = Command::new(ferrite_bin()?)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut p = Proc {
            child,
            lines: rx,
            name: name.into(),
        };
        let line = p.wait_line(ready, timeout)?;
        Ok((p, line))
    }

    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return Ok(l),
                Ok(_) => {}
                Err(_) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        bail!(
                            "{} exited with {status} before printing {needle:?}",
                            self.name
                        );
                    }
                    bail!("{} did not print {needle:?} within {timeout:?}", self.name);
                }
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn sigterm(&self) {
        // SAFETY: sending a signal to our own child process id.
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// Starts `ferrite serve --port 0 ARGS` (embedded mode) and returns it with its base URL.
pub fn serve(args: &[&str], timeout: Duration) -> anyhow::Result<(Proc, String)> {
    let mut all = vec!["serve", "--port", "0"];
    all.extend_from_slice(args);
    let (p, line) = Proc::start("serve", &all, "serving on", timeout)?;
    Ok((p, url_in(&line)?))
}

/// The SmolLM2-135M-Instruct GGUF from the shared test models.
pub fn smollm2_gguf() -> anyhow::Result<String> {
    let p = models_dir()?.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !p.is_file() {
        bail!("missing test model {}", p.display());
    }
    Ok(p.to_string_lossy().into_owned())
}

/// The URL in a line like `ferrite serving on http://127.0.0.1:PORT ...`.
pub fn url_in(line: &str) -> anyhow::Result<String> {
    line.split_whitespace()
        .find(|w| w.starts_with("http://"))
        .map(|s| s.trim_end_matches(['.', ',']).to_string())
        .with_context(|| format!("no URL in {line:?}"))
}

/// The shared models folder (`FERRITE_TEST_MODELS`, default `../shared/models`).
pub fn models_dir() -> anyhow::Result<PathBuf> {
    let p = std::env::var_os("FERRITE_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/models"));
    if !p.is_dir() {
        bail!(
            "test models not found at {} (set FERRITE_TEST_MODELS)",
            p.display()
        );
    }
    Ok(p)
}

/// Polls `f` until it returns `Some` or the timeout passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of a Prometheus sample `name{labels}` (labels as written, or none).
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == name_and_labels).then(|| v.parse().ok()).flatten()
    })
}
