//! Thin actix shells: [`EngineActor`] runs an `Executor` on its own thread, and
//! [`SchedulerActor`] owns a [`Scheduler`] and drives the step loop.

use crate::error::SchedulerError;
use crate::scheduler::{Scheduler, SchedulerStats};
use actix::prelude::*;
use ferrite_engine::{Batch, BatchOutput, Executor, ExecutorInfo};
use ferrite_protocol::{
    BlockHash, EngineOutput, ErrorInfo, ErrorKind, FinishReason, KvEvent, PreprocessedRequest,
    RequestId,
};
use ferrite_telemetry::names;
use metrics::Label;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// Runs one forward pass.
#[derive(Message)]
#[rtype(result = "Result<BatchOutput, SchedulerError>")]
pub struct Forward(pub Batch);

/// Asks the engine for its executor's info (`None` if it has no executor).
#[derive(Message)]
#[rtype(result = "Option<ExecutorInfo>")]
pub struct GetInfo;

/// Owns an executor on a `SyncArbiter` thread; a panic inside `forward` is caught and
/// returned as [`SchedulerError::EnginePanicked`] (whoever supervises decides on restarts).
pub struct EngineActor {
    executor: Option<Box<dyn Executor>>,
}

impl EngineActor {
    pub fn new(executor: Box<dyn Executor>) -> Self {
        Self {
            executor: Some(executor),
        }
    }

    /// Starts the actor on its own thread. Must be called inside a running actix `System`.
    pub fn start(executor: Box<dyn Executor>) -> Addr<EngineActor> {
        let cell = Arc::new(Mutex::new(Some(executor)));
        SyncArbiter::start(1, move || {
            let executor = cell.lock().ok().and_then(|mut c| c.take());
            EngineActor { executor }
        })
    }
}

impl Actor for EngineActor {
    type Context = SyncContext<Self>;
}

impl Handler<Forward> for EngineActor {
    type Result = Result<BatchOutput, SchedulerError>;

    fn handle(&mut self, msg: Forward, _: &mut Self::Context) -> Self::Result {
        let Some(executor) = self.executor.as_mut() else {
            return Err(SchedulerError::EngineGone("engine has no executor".into()));
        };
        match catch_unwind(AssertUnwindSafe(|| executor.forward(&msg.0))) {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(SchedulerError::EngineFailed(e.to_string())),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!(panic = %what, "executor panicked during a step");
                Err(SchedulerError::EnginePanicked(what))
            }
        }
    }
}

impl Handler<GetInfo> for EngineActor {
    type Result = Option<ExecutorInfo>;

    fn handle(&mut self, _: GetInfo, _: &mut Self::Context) -> Self::Result {
        let executor = self.executor.as_ref()?;
        catch_unwind(AssertUnwindSafe(|| executor.info())).ok()
    }
}

/// A request's output channel: chunks, or one error; closed after the final chunk.
pub type OutputSender = UnboundedSender<Result<EngineOutput, ErrorInfo>>;

/// Queues a request; its chunks go to `tx`.
#[derive(Message)]
#[rtype(result = "Result<(), ErrorInfo>")]
pub struct Enqueue {
    pub req: PreprocessedRequest,
    pub tx: OutputSender,
}

/// Cancels a request: its stream gets a final `Cancelled` chunk; false if unknown.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Cancel {
    pub request_id: RequestId,
}

/// Stops taking new requests; running ones finish.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

#[derive(Message)]
#[rtype(result = "SchedulerStats")]
pub struct GetStats;

#[derive(Message)]
#[rtype(result = "Vec<KvEvent>")]
pub struct TakeKvEvents;

#[derive(Message)]
#[rtype(result = "Vec<BlockHash>")]
pub struct KvSnapshot;

/// Replaces the engine (after a supervisor restarted it with fresh KV memory): running
/// sequences are recomputed and the prefix cache is dropped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetEngine(pub Recipient<Forward>);

/// Told by a scheduler to its supervisor: the engine panicked (or its thread is gone). The
/// failed step's sequences are already requeued; the scheduler runs no step until it gets
/// a new engine through [`SetEngine`] (or is failed with [`FailAll`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct EngineCrashed {
    pub reason: String,
}

/// The engine is lost for good: every request ends with this error (e.g. `WorkerLost`, so
/// that frontends migrate them), and new requests are refused with it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FailAll(pub ErrorInfo);

/// Pending KV events followed by a `Snapshot` taking the next event id (see
/// [`Scheduler::dump_kv_events`]).
#[derive(Message)]
#[rtype(result = "Vec<KvEvent>")]
pub struct DumpKvEvents;

/// Owns a [`Scheduler`] and runs the step loop: while there is work and no step in flight,
/// schedule a batch, `Forward` it, apply the output, push chunks to each request's channel.
pub struct SchedulerActor {
    scheduler: Scheduler,
    engine: Recipient<Forward>,
    streams: HashMap<RequestId, OutputSender>,
    in_flight: bool,
    /// A step built but held until this many onboarding copies report back.
    pub(crate) held: Option<(Batch, usize)>,
    /// Reset KV state once the in-flight step returns (the engine was replaced).
    reset_when_idle: bool,
    consecutive_failures: u32,
    max_consecutive_failures: u32,
    labels: Vec<Label>,
    /// Told when the engine panics; `None`: failed steps are retried with backoff.
    supervisor: Option<Recipient<EngineCrashed>>,
    /// The engine crashed and the supervisor is making a new one: no steps meanwhile.
    awaiting_engine: bool,
    /// Set by [`FailAll`]: the error every request gets from now on.
    failed: Option<ErrorInfo>,
    /// The engine that copies KV blocks for the offload tiers (offload.rs).
    pub(crate) kv_engine: Option<Addr<EngineActor>>,
}

impl SchedulerActor {
    /// Consecutive failed steps after which every request is failed with `Unavailable`.
    pub const DEFAULT_MAX_CONSECUTIVE_FAILURES: u32 = 8;

    pub fn new(scheduler: Scheduler, engine: Recipient<Forward>) -> Self {
        Self {
            scheduler,
            engine,
            streams: HashMap::new(),
            in_flight: false,
            held: None,
            reset_when_idle: false,
            consecutive_failures: 0,
            max_consecutive_failures: Self::DEFAULT_MAX_CONSECUTIVE_FAILURES,
            labels: Vec::new(),
            supervisor: None,
            awaiting_engine: false,
            failed: None,
            kv_engine: None,
        }
    }

    /// Reports engine panics to `supervisor` (which replaces the engine with [`SetEngine`])
    /// instead of retrying the step on the same engine.
    pub fn with_supervisor(mut self, supervisor: Recipient<EngineCrashed>) -> Self {
        self.supervisor = Some(supervisor);
        self
    }

    pub fn with_max_consecutive_failures(mut self, n: u32) -> Self {
        self.max_consecutive_failures = n.max(1);
        self
    }

    /// Extra labels (e.g. `instance`, `dp_rank`) on this scheduler's metrics.
    /// The same labels go on the KV pool's metrics.
    pub fn with_metric_labels(mut self, labels: Vec<(String, String)>) -> Self {
        self.scheduler = self.scheduler.with_metric_labels(labels.clone());
        self.labels = labels.into_iter().map(|(k, v)| Label::new(k, v)).collect();
        self
    }

    fn kick(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight || self.awaiting_engine || self.failed.is_some() {
            return;
        }
        self.cancel_closed_streams();
        let batch = self.scheduler.schedule();
        self.publish();
        let onboarding = self.dispatch_kv_copies(ctx);
        let Some(batch) = batch else {
            return;
        };
        self.in_flight = true;
        if onboarding > 0 {
            // The engine copies the blocks before anything else; hold the step until the
            // copies report back, so the onboarded sequences join it (offload.rs).
            self.held = Some((batch, onboarding));
            return;
        }
        self.send_forward(batch, ctx);
    }

    /// Runs `batch` on the engine and applies its output (`in_flight` is set).
    pub(crate) fn send_forward(&mut self, batch: Batch, ctx: &mut Context<Self>) {
        let fut = self.engine.send(Forward(batch.clone()));
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            act.in_flight = false;
            let res = res
                .map_err(|e| SchedulerError::EngineGone(e.to_string()))
                .and_then(|r| r);
            match res {
                Ok(out) => {
                    act.consecutive_failures = 0;
                    let chunks = act.scheduler.on_output(&batch, out);
                    act.deliver(chunks);
                }
                Err(e) => act.step_failed(&batch, e, ctx),
            }
            if std::mem::take(&mut act.reset_when_idle) {
                act.scheduler.reset_kv();
            }
            if act.consecutive_failures == 0 {
                act.kick(ctx);
            }
        }));
    }

    fn step_failed(&mut self, batch: &Batch, err: SchedulerError, ctx: &mut Context<Self>) {
        self.scheduler.on_step_failed(batch);
        let crashed = matches!(
            err,
            SchedulerError::EnginePanicked(_) | SchedulerError::EngineGone(_)
        );
        if crashed && let Some(sup) = &self.supervisor {
            tracing::error!(error = %err, "engine crashed; its sequences are requeued and the supervisor restarts it");
            self.awaiting_engine = true;
            sup.do_send(EngineCrashed {
                reason: err.to_string(),
            });
            self.publish();
            return;
        }
        self.consecutive_failures += 1;
        tracing::warn!(error = %err, failures = self.consecutive_failures, "engine step failed; requeued for recompute");
        if self.consecutive_failures >= self.max_consecutive_failures {
            let info = ErrorInfo::new(
                ErrorKind::Unavailable,
                format!(
                    "engine failed {} steps in a row: {err}",
                    self.consecutive_failures
                ),
            );
            for id in self.scheduler.abort_all() {
                if let Some(tx) = self.streams.remove(&id) {
                    let _ = tx.send(Err(info.clone()));
                }
            }
            self.consecutive_failures = 0;
            self.publish();
            return;
        }
        let backoff = Duration::from_millis(1u64 << self.consecutive_failures.min(10));
        ctx.run_later(backoff, |act, ctx| act.kick(ctx));
    }

    fn deliver(&mut self, chunks: Vec<(RequestId, EngineOutput)>) {
        for (id, chunk) in chunks {
            let finished = chunk.finish_reason.is_some();
            let sent = self
                .streams
                .get(&id)
                .is_some_and(|tx| tx.send(Ok(chunk)).is_ok());
            if finished || !sent {
                self.streams.remove(&id);
            }
            if !sent && !finished {
                tracing::debug!(request_id = %id, "client went away; cancelling");
                self.cancel(id);
            }
        }
    }

    fn cancel_closed_streams(&mut self) {
        let closed: Vec<RequestId> = self
            .streams
            .iter()
            .filter(|(_, tx)| tx.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in closed {
            self.cancel(id);
        }
    }

    fn cancel(&mut self, id: RequestId) -> bool {
        let found = self.scheduler.cancel(id);
        if let Some(tx) = self.streams.remove(&id) {
            let _ = tx.send(Ok(EngineOutput {
                finish_reason: Some(FinishReason::Cancelled),
                ..Default::default()
            }));
        }
        if found {
            metrics::counter!(names::WORKER_CANCELLATIONS_TOTAL, self.labels.clone()).increment(1);
        }
        found
    }

    fn publish(&self) {
        let s = self.scheduler.stats();
        metrics::gauge!(names::WORKER_QUEUE_DEPTH, self.labels.clone()).set(s.waiting as f64);
        metrics::gauge!(names::WORKER_RUNNING_SEQUENCES, self.labels.clone()).set(s.running as f64);
    }
}

impl Actor for SchedulerActor {
    type Context = Context<Self>;
}

impl Handler<Enqueue> for SchedulerActor {
    type Result = Result<(), ErrorInfo>;

    fn handle(&mut self, msg: Enqueue, ctx: &mut Self::Context) -> Self::Result {
        if let Some(info) = &self.failed {
            return Err(info.clone());
        }
        let id = msg.req.request_id;
        // A constraint this engine cannot enforce fails the request alone, up front, not
        // the engine step it would be batched in.
        if let Err(e) = ferrite_engine::check_guided(&msg.req.sampling) {
            return Err(ErrorInfo::invalid("response_format", e.to_string()));
        }
        self.scheduler.enqueue(msg.req)?;
        self.streams.insert(id, msg.tx);
        self.publish();
        self.kick(ctx);
        Ok(())
    }
}

impl Handler<Cancel> for SchedulerActor {
    type Result = bool;

    fn handle(&mut self, msg: Cancel, _: &mut Self::Context) -> bool {
        let found = self.cancel(msg.request_id);
        self.publish();
        found
    }
}

impl Handler<Drain> for SchedulerActor {
    type Result = ();

    fn handle(&mut self, _: Drain, _: &mut Self::Context) {
        self.scheduler.set_draining(true);
    }
}

impl Handler<GetStats> for SchedulerActor {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.scheduler.stats())
    }
}

impl Handler<TakeKvEvents> for SchedulerActor {
    type Result = MessageResult<TakeKvEvents>;

    fn handle(&mut self, _: TakeKvEvents, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.scheduler.take_kv_events())
    }
}

impl Handler<KvSnapshot> for SchedulerActor {
    type Result = MessageResult<KvSnapshot>;

    fn handle(&mut self, _: KvSnapshot, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.scheduler.kv_snapshot())
    }
}

impl Handler<SetEngine> for SchedulerActor {
    type Result = ();

    fn handle(&mut self, msg: SetEngine, ctx: &mut Self::Context) {
        self.engine = msg.0;
        self.awaiting_engine = false;
        if self.in_flight {
            self.reset_when_idle = true;
        } else {
            self.scheduler.reset_kv();
        }
        self.consecutive_failures = 0;
        self.kick(ctx);
    }
}

impl Handler<FailAll> for SchedulerActor {
    type Result = ();

    fn handle(&mut self, msg: FailAll, _: &mut Self::Context) {
        let ids = self.scheduler.abort_all();
        tracing::error!(requests = ids.len(), error = %msg.0, "engine lost for good: failing every request");
        for id in ids {
            if let Some(tx) = self.streams.remove(&id) {
                let _ = tx.send(Err(msg.0.clone()));
            }
        }
        // Streams of requests the scheduler no longer knew (e.g. cancelled) just close.
        self.streams.clear();
        self.scheduler.set_draining(true);
        self.failed = Some(msg.0);
        self.publish();
    }
}

impl Handler<DumpKvEvents> for SchedulerActor {
    type Result = MessageResult<DumpKvEvents>;

    fn handle(&mut self, _: DumpKvEvents, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.scheduler.dump_kv_events())
    }
}

// Hooks for the disaggregation handlers in `remote.rs`.
impl EngineActor {
    pub(crate) fn executor_mut(&mut self) -> Option<&mut Box<dyn Executor>> {
        self.executor.as_mut()
    }
}

impl SchedulerActor {
    pub(crate) fn scheduler_mut(&mut self) -> &mut Scheduler {
        &mut self.scheduler
    }

    pub(crate) fn check_failed(&self) -> Result<(), ErrorInfo> {
        self.failed.clone().map_or(Ok(()), Err)
    }

    pub(crate) fn add_stream(&mut self, id: RequestId, tx: OutputSender) {
        self.streams.insert(id, tx);
        self.publish();
    }

    pub(crate) fn kick_step(&mut self, ctx: &mut Context<Self>) {
        self.publish();
        self.kick(ctx);
    }

    pub(crate) fn deliver_chunks(&mut self, chunks: Vec<(RequestId, EngineOutput)>) {
        self.deliver(chunks);
    }
}
