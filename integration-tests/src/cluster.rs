//! A real cluster for tests: etcd + NATS (Debian's servers), one `ferrite frontend`
//! process and N `ferrite worker` processes, each worker with its own metrics port.
//! Workers can be SIGKILLed, SIGTERMed and started again; etcd and NATS can be killed and
//! restarted on the same port.

use crate::sse::SseStream;
use crate::{EtcdServer, NatsServer, Proc, eventually, metric, url_in};
use ferrite_mocker::mock_token;
use serde_json::{Value, json};
use std::time::Duration;

/// The bundled stories260k vocabulary: ids 0-2 are special and 3-258 raw bytes, so the
/// mocker emits 259..512.
pub const MOCK_RANGE: std::ops::Range<u32> = 259..512;
/// The bundled model every mocker cluster serves.
pub const MODEL: &str = "stories260k";

/// What to start.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub workers: usize,
    /// Arguments of every `ferrite worker` after the cluster flags (default: the mocker at
    /// speed-up 50).
    pub worker_args: Vec<String>,
    /// Extra arguments of `ferrite frontend`.
    pub frontend_args: Vec<String>,
    /// Extra arguments of worker `i` (after `worker_args`), e.g. its `--role`; workers
    /// beyond the list get none.
    pub per_worker_args: Vec<Vec<String>>,
}

impl ClusterSpec {
    /// `workers` mocker workers at `speedup`.
    pub fn mocker(workers: usize, speedup: &str) -> Self {
        Self {
            workers,
            worker_args: vec![
                "--engine".into(),
                "mocker".into(),
                "--speedup".into(),
                speedup.into(),
            ],
            frontend_args: Vec::new(),
            per_worker_args: Vec::new(),
        }
    }

    /// `worker_args` then worker `i`'s own arguments.
    pub fn args_of(&self, i: usize) -> Vec<String> {
        let mut a = self.worker_args.clone();
        a.extend(self.per_worker_args.get(i).into_iter().flatten().cloned());
        a
    }
}

/// One worker process and its metrics port (`proc` is `None` while stopped).
pub struct Worker {
    pub proc: Option<Proc>,
    pub metrics_port: u16,
    /// The instance id it printed when it started.
    pub instance_id: String,
}

pub struct Cluster {
    pub etcd: EtcdServer,
    pub nats: NatsServer,
    pub frontend: Proc,
    pub url: String,
    pub workers: Vec<Worker>,
    pub client: reqwest::Client,
    spec: ClusterSpec,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

impl Cluster {
    /// Starts everything and waits until the frontend lists the model with every worker
    /// registered.
    pub async fn start(spec: ClusterSpec) -> anyhow::Result<Self> {
        let etcd = EtcdServer::start()?;
        let nats = NatsServer::start()?;
        let mut workers = Vec::new();
        for i in 0..spec.workers {
            let port = free_port();
            let (proc, instance_id) =
                spawn_worker(i, &etcd.url(), &nats.url(), port, &spec.args_of(i))?;
            workers.push(Worker {
                proc: Some(proc),
                metrics_port: port,
                instance_id,
            });
        }
        let (etcd_url, nats_url) = (etcd.url(), nats.url());
        let mut args: Vec<&str> = vec![
            "frontend", "--etcd", &etcd_url, "--nats", &nats_url, "--port", "0",
        ];
        args.extend(spec.frontend_args.iter().map(String::as_str));
        let (frontend, line) = Proc::start("frontend", &args, "frontend on", START_TIMEOUT)?;
        let url = url_in(&line)?;
        let c = Cluster {
            etcd,
            nats,
            frontend,
            url,
            workers,
            client: reqwest::Client::new(),
            spec,
        };
        c.wait_instances(c.spec.workers, Duration::from_secs(10))
            .await?;
        Ok(c)
    }

    /// Waits until `n` instances are registered and the frontend lists a model.
    pub async fn wait_instances(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let ok = eventually(timeout, || async {
            (self.instances().await.ok()? == n && !self.models().await.ok()?.is_empty())
                .then_some(())
        })
        .await;
        anyhow::ensure!(
            ok.is_some(),
            "the cluster did not reach {n} registered instances with a listed model in {timeout:?}"
        );
        Ok(())
    }

    /// SIGKILLs worker `i`.
    pub fn kill_worker(&mut self, i: usize) {
        if let Some(mut p) = self.workers[i].proc.take() {
            p.sigkill();
        }
    }

    /// SIGTERMs worker `i` (it drains); the process is kept until it exits or is killed.
    pub fn term_worker(&self, i: usize) {
        if let Some(p) = &self.workers[i].proc {
            p.sigterm();
        }
    }

    /// Starts worker `i` again (after a kill), with the same metrics port.
    pub fn restart_worker(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill_worker(i);
        let (p, id) = spawn_worker(
            i,
            &self.etcd.url(),
            &self.nats.url(),
            self.workers[i].metrics_port,
            &self.spec.args_of(i),
        )?;
        self.workers[i].proc = Some(p);
        self.workers[i].instance_id = id;
        Ok(())
    }

    /// Registered instances, read from etcd directly.
    pub async fn instances(&self) -> anyhow::Result<usize> {
        use ferrite_runtime::Discovery;
        let d = ferrite_runtime::EtcdDiscovery::connect(&self.etcd.url(), Duration::from_secs(10))
            .await?;
        let n = d
            .get_prefix(&ferrite_protocol::names::instances_prefix("ferrite"))
            .await?
            .len();
        let _ = d.shutdown().await;
        Ok(n)
    }

    /// Model ids from the frontend's `/v1/models`.
    pub async fn models(&self) -> anyhow::Result<Vec<String>> {
        let v: Value = self
            .client
            .get(format!("{}/v1/models", self.url))
            .send()
            .await?
            .json()
            .await?;
        Ok(v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["id"].as_str().map(String::from))
            .collect())
    }

    /// The live worker whose scheduler is running a sequence now.
    pub async fn serving_worker(&self) -> anyhow::Result<usize> {
        for w in 0..self.workers.len() {
            if self.workers[w].proc.is_none() {
                continue;
            }
            let m = self.worker_metrics(w).await?;
            if metric(&m, "ferrite_worker_running_sequences").unwrap_or(0.0) > 0.0 {
                return Ok(w);
            }
        }
        anyhow::bail!("no worker runs a sequence")
    }

    pub async fn frontend_metrics(&self) -> anyhow::Result<String> {
        Ok(self
            .client
            .get(format!("{}/metrics", self.url))
            .send()
            .await?
            .text()
            .await?)
    }

    pub async fn worker_metrics(&self, i: usize) -> anyhow::Result<String> {
        Ok(self
            .client
            .get(format!(
                "http://127.0.0.1:{}/metrics",
                self.workers[i].metrics_port
            ))
            .send()
            .await?
            .text()
            .await?)
    }

    /// Streams `body` from the frontend's `path` and SIGKILLs the worker serving it once
    /// `after` tokens have arrived. Returns the token ids of every event and whether
    /// `[DONE]` came; an error event, or an end before the kill, is an error.
    pub async fn stream_killing_its_worker(
        &mut self,
        path: &str,
        body: &Value,
        after: usize,
    ) -> anyhow::Result<(Vec<u32>, bool)> {
        let url = format!("{}{path}", self.url);
        let mut s = SseStream::open(&self.client, &url, body).await?;
        let mut ids = Vec::new();
        let mut killed = false;
        while let Some(e) = s.next_event().await? {
            anyhow::ensure!(e.get("error").is_none(), "error event: {e}");
            ids.extend(token_ids(&e["choices"][0]));
            if !killed && ids.len() >= after {
                let w = self.serving_worker().await?;
                self.kill_worker(w);
                killed = true;
            }
        }
        anyhow::ensure!(killed, "the stream ended before its worker could be killed");
        Ok((ids, s.done))
    }

    /// Streams mocker request `i`; see [`stream_mock`].
    pub async fn stream_tokens(
        &self,
        i: usize,
        max_tokens: u32,
    ) -> anyhow::Result<(Vec<u32>, String)> {
        stream_mock(self.client.clone(), self.url.clone(), i, max_tokens).await
    }

    /// A future streaming mocker request `i` that does not borrow the cluster (spawn it,
    /// then kill things).
    pub fn spawn_stream(
        &self,
        i: usize,
        max_tokens: u32,
    ) -> tokio::task::JoinHandle<anyhow::Result<(Vec<u32>, String)>> {
        tokio::spawn(stream_mock(
            self.client.clone(),
            self.url.clone(),
            i,
            max_tokens,
        ))
    }
}

/// Streams mocker request `i` (prompt [`mock_prompt`], seed `i`) from the frontend at `url`
/// and returns its token ids and finish reason; an error event is an error.
pub async fn stream_mock(
    client: reqwest::Client,
    url: String,
    i: usize,
    max_tokens: u32,
) -> anyhow::Result<(Vec<u32>, String)> {
    let body = json!({"model": MODEL, "prompt": mock_prompt(i), "max_tokens": max_tokens,
        "seed": i, "stream": true, "return_token_ids": true});
    let s = SseStream::open(&client, &format!("{url}/v1/completions"), &body).await?;
    let (events, done) = s.collect().await?;
    anyhow::ensure!(done, "stream {i} did not end with [DONE]");
    let mut ids = Vec::new();
    let mut finish = String::new();
    for e in events {
        anyhow::ensure!(e.get("error").is_none(), "stream {i}: {e}");
        let ch = &e["choices"][0];
        ids.extend(token_ids(ch));
        if let Some(f) = ch["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    Ok((ids, finish))
}

const START_TIMEOUT: Duration = Duration::from_secs(60);

fn spawn_worker(
    i: usize,
    etcd: &str,
    nats: &str,
    metrics_port: u16,
    extra: &[String],
) -> anyhow::Result<(Proc, String)> {
    let port = metrics_port.to_string();
    let mut args: Vec<&str> = vec![
        "worker",
        "--etcd",
        etcd,
        "--nats",
        nats,
        "--metrics-port",
        &port,
    ];
    args.extend(extra.iter().map(String::as_str));
    // "ferrite worker <id> serving <model>"
    let (p, line) = Proc::start(&format!("worker{i}"), &args, "serving", START_TIMEOUT)?;
    let id = line
        .split_whitespace()
        .skip_while(|w| *w != "worker")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Ok((p, id))
}

/// The `token_ids` of one streamed choice chunk.
pub fn token_ids(choice: &Value) -> Vec<u32> {
    choice["token_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .map(|t| t as u32)
        .collect()
}

/// The prompt (token ids) of mocker request `i`.
pub fn mock_prompt(i: usize) -> Vec<u32> {
    (0..(5 + i % 40))
        .map(|k| 300 + ((k * 7 + i) % 200) as u32)
        .collect()
}

/// What the mocker generates for request `i` (seed `i`): its first `n` tokens.
pub fn mock_expected(i: usize, n: u32) -> Vec<u32> {
    let p = mock_prompt(i).len() as u32;
    (0..n)
        .map(|k| mock_token(i as u64, p + k, &MOCK_RANGE))
        .collect()
}
