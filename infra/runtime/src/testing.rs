//! Test harness (feature `testing`): real `etcd` and `nats-server` child processes on
//! free loopback ports, data in a temp dir, SIGKILL and restart on demand, cleanup on drop.

use crate::env_names;
use anyhow::{Context, bail};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long a server may take to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// `n` distinct free loopback ports (all held open until all are chosen).
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<Vec<_>>>()?)
}

fn find_binary(name: &str, env: &str, package: &str) -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "`{name}` not found on PATH (or ${env}): install the Debian package `{package}` \
         (apt-get install -y {package}) or run `infra/deploy/cluster.sh install`"
    )
}

fn tail_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Poll `probe` until it succeeds, the child exits, or the start timeout passes.
fn wait_healthy(
    child: &mut Child,
    log: &Path,
    what: &str,
    probe: impl Fn() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if probe() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited early ({status}); log:\n{}", tail_of(log));
        }
        if Instant::now() > deadline {
            bail!(
                "{what} not healthy after {START_TIMEOUT:?}; log:\n{}",
                tail_of(log)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn_logged(bin: &Path, args: &[String], log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))
}

fn kill_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        // SIGKILL on Unix; the child may already be gone.
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A throw-away single-node etcd.
pub struct EtcdServer {
    child: Option<Child>,
    dir: TempDir,
    bin: PathBuf,
    client_port: u16,
    peer_port: u16,
}

impl EtcdServer {
    /// Start etcd on free loopback ports and wait until `/health` says true.
    pub fn start() -> anyhow::Result<Self> {
        let bin = find_binary("etcd", env_names::FERRITE_ETCD_BIN, "etcd-server")?;
        let ports = free_ports(2)?;
        let mut s = Self {
            child: None,
            dir: tempfile::Builder::new().prefix("ferrite-etcd-").tempdir()?,
            bin,
            client_port: ports[0],
            peer_port: ports[1],
        };
        s.spawn()?;
        Ok(s)
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// SIGKILL the server (data stays).
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// Kill (if running) and start again on the same ports with the same data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    /// Kill, delete the data directory (every key and lease is lost), start again on
    /// the same ports: what clients see when a cluster is rebuilt.
    pub fn restart_wiped(&mut self) -> anyhow::Result<()> {
        self.kill();
        let data = self.data_dir();
        if data.exists() {
            std::fs::remove_dir_all(&data)?;
        }
        self.spawn()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let args: Vec<String> = [
            "--name",
            "default",
            "--data-dir",
            &self.data_dir().to_string_lossy(),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("default={peer}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let log = self.dir.path().join("etcd.log");
        let mut child = spawn_logged(&self.bin, &args, &log)?;
        let port = self.client_port;
        let res = wait_healthy(&mut child, &log, "etcd", || etcd_healthy(port));
        self.child = Some(child);
        if res.is_err() {
            self.kill();
        }
        res
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn etcd_healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let req = format!("GET /health HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

/// A throw-away nats-server.
pub struct NatsServer {
    child: Option<Child>,
    dir: TempDir,
    bin: PathBuf,
    port: u16,
}

impl NatsServer {
    /// Start nats-server on a free loopback port and wait until it greets with INFO.
    pub fn start() -> anyhow::Result<Self> {
        let bin = find_binary("nats-server", env_names::FERRITE_NATS_BIN, "nats-server")?;
        let mut s = Self {
            child: None,
            dir: tempfile::Builder::new().prefix("ferrite-nats-").tempdir()?,
            bin,
            port: free_ports(1)?[0],
        };
        s.spawn()?;
        Ok(s)
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL the server.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// Kill (if running) and start again on the same port.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let args: Vec<String> = ["-a", "127.0.0.1", "-p", &self.port.to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let log = self.dir.path().join("nats.log");
        let mut child = spawn_logged(&self.bin, &args, &log)?;
        let port = self.port;
        let res = wait_healthy(&mut child, &log, "nats-server", || nats_healthy(port));
        self.child = Some(child);
        if res.is_err() {
            self.kill();
        }
        res
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn nats_healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).is_ok() && &buf == b"INFO"
}
