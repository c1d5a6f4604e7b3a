//! The load loop: closed-loop workers or open-loop arrivals (Poisson or trace
//! timestamps), sessions built ahead on a blocking thread, records collected.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::client::{self, Measured};
use crate::error::{BenchError, Result};
use crate::metrics::RequestRecord;
use crate::progress::Progress;
use crate::workload::{PoissonArrivals, Session, Workload, WorkloadSpec};

/// Closed-loop workers when neither `concurrency` nor `rate` is given.
pub const DEFAULT_CONCURRENCY: usize = 16;
/// Requests of an unbounded workload when neither a count nor a duration is given.
pub const DEFAULT_REQUESTS: usize = 100;
/// Sessions built before the clock starts (and kept ahead of the senders).
const PREBUILD: usize = 1024;

/// Which OpenAI endpoint to call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
        }
    }
}

/// How to drive the server.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Base URL, e.g. `http://127.0.0.1:8000`.
    pub url: String,
    /// `None`: the first of `/v1/models`.
    pub model: Option<String>,
    /// `None`: chat for multi-turn, completions otherwise.
    pub endpoint: Option<Endpoint>,
    /// Closed loop with this many workers; with `rate` (or a trace), a cap on requests in flight.
    pub concurrency: Option<usize>,
    /// Open loop: Poisson arrivals per second.
    pub rate: Option<f64>,
    /// Requests (sessions, for multi-turn: conversations) to send.
    pub num_requests: Option<usize>,
    /// Stop starting new sessions after this long.
    pub duration: Option<Duration>,
    /// Send `ignore_eos: true` (a vLLM/Ferrite extension).
    pub ignore_eos: bool,
    /// Per-request time limit.
    pub timeout: Duration,
    pub seed: u64,
    pub slo_ttft_ms: Option<f64>,
    pub slo_itl_ms: Option<f64>,
    /// Draw a progress bar on a terminal (log lines otherwise); `false`: silent.
    pub progress: bool,
    /// Multi-turn: send turn `t` of every conversation before turn `t + 1` of any
    /// (users who pause between turns while others talk), instead of running each
    /// conversation's turns back to back.
    pub interleave_turns: bool,
}

/// What a run produced, before summarising.
pub struct RunOutput {
    pub model: String,
    pub endpoint: Endpoint,
    pub load: String,
    pub wall: Duration,
    pub records: Vec<RequestRecord>,
}

/// A conversation's messages as they are sent: every earlier user turn and the
/// assistant's actual reply to it, then the new user message.
#[derive(Default, Debug, Clone)]
pub struct History {
    messages: Vec<Value>,
}

impl History {
    /// Adds the next user message; returns the messages to send.
    pub fn user(&mut self, text: &str) -> &[Value] {
        self.messages.push(json!({"role": "user", "content": text}));
        &self.messages
    }

    /// Records the assistant's reply to the last user message.
    pub fn assistant(&mut self, text: &str) {
        self.messages
            .push(json!({"role": "assistant", "content": text}));
    }

    pub fn messages(&self) -> &[Value] {
        &self.messages
    }
}

struct Ctx {
    http: reqwest::Client,
    url: String,
    model: String,
    endpoint: Endpoint,
    ignore_eos: bool,
    t0: Instant,
    issued: AtomicUsize,
    records: Mutex<Vec<RequestRecord>>,
    progress: Progress,
    cap: Option<Arc<Semaphore>>,
}

impl Ctx {
    fn body(&self, prompt: Prompt<'_>, max_tokens: usize) -> Value {
        let mut b = json!({
            "model": self.model,
            "max_tokens": max_tokens,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        match prompt {
            Prompt::Text(t) => b["prompt"] = json!(t),
            Prompt::Chat(m) => b["messages"] = json!(m),
        }
        if self.ignore_eos {
            b["ignore_eos"] = json!(true);
        }
        b
    }

    fn push(&self, r: RequestRecord) {
        self.progress.inc(r.ok);
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(r);
    }
}

enum Prompt<'a> {
    Text(&'a str),
    Chat(&'a [Value]),
}

fn record(index: usize, s: &Session, turn: usize, start_s: f64, m: Measured) -> RequestRecord {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let t = &s.turns[turn];
    let ok = m.error.is_none() && m.status.is_some_and(|c| (200..300).contains(&c));
    RequestRecord {
        index,
        session: s.index,
        turn,
        group: s.group,
        start_s,
        ttft_ms: m.ttft.map(ms),
        e2e_ms: ms(m.e2e),
        itl_ms: m.itl.iter().copied().map(ms).collect(),
        input_len: t.input_len,
        max_tokens: t.output_len,
        prompt_tokens: m.usage.map(|u| u.prompt_tokens),
        completion_tokens: m.usage.map_or(m.counted_tokens, |u| u.completion_tokens),
        usage_reported: m.usage.is_some(),
        cached_tokens: m.usage.and_then(|u| u.cached_tokens),
        chunks: m.chunks,
        ok,
        status: m.status,
        error: m.error,
    }
}

async fn run_session(ctx: Arc<Ctx>, s: Session) {
    let _permit = match &ctx.cap {
        Some(sem) => sem.clone().acquire_owned().await.ok(),
        None => None,
    };
    let mut history = History::default();
    for k in 0..s.turns.len() {
        if !run_turn(&ctx, &s, k, &mut history).await {
            break; // a conversation stops at its first failed turn
        }
    }
}

/// Sends turn `k` of `s` with `history`; records it; on success adds the reply to the
/// history. Returns whether the turn succeeded.
async fn run_turn(ctx: &Ctx, s: &Session, k: usize, history: &mut History) -> bool {
    let turn = &s.turns[k];
    let url = format!("{}{}", ctx.url, ctx.endpoint.path());
    let prompt = match ctx.endpoint {
        Endpoint::Chat => Prompt::Chat(history.user(&turn.text)),
        Endpoint::Completions => Prompt::Text(&turn.text),
    };
    let body = ctx.body(prompt, turn.output_len);
    let index = ctx.issued.fetch_add(1, Ordering::Relaxed);
    let start_s = ctx.t0.elapsed().as_secs_f64();
    let m = client::stream(&ctx.http, &url, &body).await;
    let reply = m.text.clone();
    let r = record(index, s, k, start_s, m);
    let ok = r.ok;
    ctx.push(r);
    if ok {
        history.assistant(&reply);
    }
    ok
}

/// Interleaved multi-turn: round `t` sends turn `t` of every conversation still going
/// (at most `concurrency` at once) and waits for all of them before round `t + 1`.
async fn run_rounds(ctx: Arc<Ctx>, mut source: Source, concurrency: usize) -> Result<()> {
    let mut convs = Vec::new();
    while let Some(s) = source.next().await? {
        convs.push((Arc::new(s), History::default()));
    }
    let rounds = convs.iter().map(|(s, _)| s.turns.len()).max().unwrap_or(0);
    let sem = Arc::new(Semaphore::new(concurrency));
    for t in 0..rounds {
        let mut set = JoinSet::new();
        for (s, mut history) in std::mem::take(&mut convs) {
            if t >= s.turns.len() {
                continue;
            }
            let (ctx, sem) = (ctx.clone(), sem.clone());
            set.spawn(async move {
                let _permit = sem.acquire_owned().await.ok();
                let ok = run_turn(&ctx, &s, t, &mut history).await;
                ok.then_some((s, history))
            });
        }
        while let Some(r) = set.join_next().await {
            // A failed conversation is dropped (no later turns).
            if let Some(c) = r? {
                convs.push(c);
            }
        }
        convs.sort_by_key(|(s, _)| s.index);
    }
    Ok(())
}

/// Sessions built ahead of time on a blocking thread.
struct Source {
    pre: VecDeque<Session>,
    rx: mpsc::Receiver<Result<Session>>,
}

impl Source {
    async fn start(
        w: Arc<Workload>,
        limit: Option<usize>,
    ) -> Result<(Self, tokio::task::JoinHandle<()>)> {
        let (tx, mut rx) = mpsc::channel(PREBUILD);
        let gen_task = tokio::task::spawn_blocking(move || {
            for i in 0.. {
                if limit.is_some_and(|l| i >= l) {
                    break;
                }
                let item = match w.session(i) {
                    Ok(Some(s)) => Ok(s),
                    Ok(None) => break,
                    Err(e) => Err(e),
                };
                let failed = item.is_err();
                if tx.blocking_send(item).is_err() || failed {
                    break;
                }
            }
        });
        let mut pre = VecDeque::new();
        let want = limit.unwrap_or(PREBUILD).min(PREBUILD);
        while pre.len() < want {
            match rx.recv().await {
                Some(s) => pre.push_back(s?),
                None => break,
            }
        }
        Ok((Self { pre, rx }, gen_task))
    }

    async fn next(&mut self) -> Result<Option<Session>> {
        if let Some(s) = self.pre.pop_front() {
            return Ok(Some(s));
        }
        self.rx.recv().await.transpose()
    }
}

fn config_err(msg: &str) -> BenchError {
    BenchError::Config(msg.to_string())
}

/// Runs the workload against the server; returns every request's record.
pub async fn run(cfg: &RunConfig, workload: Arc<Workload>) -> Result<RunOutput> {
    let base = cfg.url.trim_end_matches('/').to_string();
    let is_trace = matches!(workload.spec(), WorkloadSpec::Trace { .. });
    let multi = matches!(workload.spec(), WorkloadSpec::MultiTurn { .. });
    let endpoint = match (cfg.endpoint, multi) {
        (Some(Endpoint::Completions), true) => {
            return Err(config_err(
                "multi-turn sends chat histories: use --endpoint chat",
            ));
        }
        (Some(e), _) => e,
        (None, true) => Endpoint::Chat,
        (None, false) => Endpoint::Completions,
    };
    if cfg.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err(config_err("--rate must be a positive number"));
    }
    if cfg.concurrency == Some(0) {
        return Err(config_err("--concurrency must be at least 1"));
    }
    if is_trace && cfg.rate.is_some() {
        return Err(config_err(
            "a trace is replayed at its own timestamps: drop --rate (use --trace-speedup)",
        ));
    }
    if cfg.interleave_turns && (!multi || cfg.rate.is_some()) {
        return Err(config_err(
            "--turn-order interleaved is for the closed-loop multi-turn workload",
        ));
    }
    if multi && cfg.num_requests.is_some() {
        return Err(config_err(
            "multi-turn sends --conversations × --turns requests: drop --num-requests",
        ));
    }
    let limit = match (cfg.num_requests, workload.natural_len()) {
        (Some(n), Some(m)) => Some(n.min(m)),
        (Some(n), None) => Some(n),
        (None, Some(m)) => Some(m),
        (None, None) if cfg.duration.is_none() => Some(DEFAULT_REQUESTS),
        (None, None) => None,
    };
    if limit == Some(0) {
        return Err(config_err("nothing to send: --num-requests is 0"));
    }
    let http = reqwest::Client::builder()
        .timeout(cfg.timeout)
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(1024)
        .build()?;
    let model = match &cfg.model {
        Some(m) => m.clone(),
        None => client::first_model(&http, &base).await?,
    };
    let open = cfg.rate.is_some() || is_trace;
    let load = match (cfg.rate, is_trace, cfg.concurrency) {
        (Some(r), _, c) => format!("rate {r}/s (Poisson){}", cap_text(c)),
        (None, true, c) => format!("trace timestamps{}", cap_text(c)),
        (None, false, c) => format!("concurrency {}", c.unwrap_or(DEFAULT_CONCURRENCY)),
    };
    let (mut source, gen_task) = Source::start(workload.clone(), limit).await?;
    let total = limit.map(|l| l * workload.turns_per_session());
    let ctx = Arc::new(Ctx {
        http,
        url: base,
        model: model.clone(),
        endpoint,
        ignore_eos: cfg.ignore_eos,
        t0: Instant::now(),
        issued: AtomicUsize::new(0),
        records: Mutex::new(Vec::new()),
        progress: Progress::new(cfg.progress, total.map(|t| t as u64)),
        cap: if open {
            cfg.concurrency.map(|c| Arc::new(Semaphore::new(c)))
        } else {
            None
        },
    });
    let deadline = cfg.duration.map(|d| ctx.t0 + d);
    let mut set: JoinSet<Result<()>> = JoinSet::new();
    let mut source_err = None;
    if open {
        let mut arrivals = cfg.rate.map(|r| PoissonArrivals::new(r, cfg.seed));
        loop {
            let s = match source.next().await {
                Ok(Some(s)) => s,
                Ok(None) => break,
                Err(e) => {
                    source_err = Some(e);
                    break;
                }
            };
            let at =
                s.at.or_else(|| arrivals.as_mut().and_then(Iterator::next))
                    .unwrap_or_default();
            if cfg.duration.is_some_and(|d| at >= d) {
                break;
            }
            tokio::time::sleep_until((ctx.t0 + at).into()).await;
            let ctx = ctx.clone();
            set.spawn(async move {
                run_session(ctx, s).await;
                Ok(())
            });
        }
        drop(source);
    } else if multi && cfg.interleave_turns {
        let (ctx, c) = (ctx.clone(), cfg.concurrency.unwrap_or(DEFAULT_CONCURRENCY));
        set.spawn(run_rounds(ctx, source, c));
    } else {
        let source = Arc::new(tokio::sync::Mutex::new(source));
        for _ in 0..cfg.concurrency.unwrap_or(DEFAULT_CONCURRENCY) {
            let (ctx, source) = (ctx.clone(), source.clone());
            set.spawn(async move {
                loop {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(());
                    }
                    let s = source.lock().await.next().await?;
                    let Some(s) = s else { return Ok(()) };
                    run_session(ctx.clone(), s).await;
                }
            });
        }
        // The workers hold the only handles: when they finish, the builder stops.
    }
    while let Some(r) = set.join_next().await {
        if let Err(e) = r.map_err(BenchError::from).and_then(|x| x) {
            source_err.get_or_insert(e);
        }
    }
    let wall = ctx.t0.elapsed();
    ctx.progress.finish();
    gen_task.await?;
    if let Some(e) = source_err {
        return Err(e);
    }
    Ok(RunOutput {
        model,
        endpoint,
        load,
        wall,
        records: take_records(&ctx),
    })
}

fn cap_text(c: Option<usize>) -> String {
    c.map(|c| format!(", at most {c} in flight"))
        .unwrap_or_default()
}

fn take_records(ctx: &Ctx) -> Vec<RequestRecord> {
    let mut v = std::mem::take(&mut *ctx.records.lock().unwrap_or_else(|p| p.into_inner()));
    v.sort_by_key(|r| r.index);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_grows_with_every_turn_and_the_actual_replies() {
        let mut h = History::default();
        assert_eq!(h.user("one").len(), 1);
        h.assistant("reply one");
        let sent = h.user("two").to_vec();
        assert_eq!(sent.len(), 3);
        assert_eq!(sent[0]["content"], "one");
        assert_eq!(
            sent[1],
            json!({"role": "assistant", "content": "reply one"})
        );
        assert_eq!(sent[2], json!({"role": "user", "content": "two"}));
        h.assistant("reply two");
        let sent = h.user("three").to_vec();
        assert_eq!(sent.len(), 5);
        assert_eq!(sent[3]["content"], "reply two");
        assert_eq!(h.messages().len(), 5);
    }
}
