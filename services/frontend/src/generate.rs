//! Runs one choice on the cluster: route, stream from the worker, migrate to another
//! instance when the worker is lost, cancel the worker's sequence when the client goes.

use crate::state::AppState;
use async_stream::stream;
use ferrite_protocol::{
    ControlMessage, EngineOutput, ErrorInfo, ErrorKind, FinishReason, InstanceId,
    PreprocessedRequest, RequestId,
};
use ferrite_runtime::{RuntimeError, StreamError, StreamOptions, request_stream};
use ferrite_telemetry::names;
use futures::{Stream, StreamExt};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

/// Idle timeout of a stream whose instance left discovery (heartbeats come every second).
const LEASE_GONE_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(2500);

/// A cancellation to publish on an instance's control subject.
#[derive(Debug, Clone)]
pub struct CancelOrder {
    pub control_subject: String,
    pub request_id: RequestId,
}

/// Sends `Cancel` to the worker serving a request unless the request finished first.
/// Held by the response stream: when the client disconnects, actix drops the stream and
/// with it this guard.
pub struct CancelGuard {
    tx: UnboundedSender<CancelOrder>,
    target: Option<CancelOrder>,
}

impl CancelGuard {
    pub fn new(tx: UnboundedSender<CancelOrder>) -> Self {
        Self { tx, target: None }
    }

    fn serving(&mut self, control_subject: String, request_id: RequestId) {
        self.target = Some(CancelOrder {
            control_subject,
            request_id,
        });
    }

    /// The worker finished the request (or never got it): nothing to cancel.
    pub fn disarm(&mut self) {
        self.target = None;
    }

    /// Cancel now (a stop string ended the choice early).
    pub fn fire(&mut self) {
        if let Some(order) = self.target.take() {
            let _ = self.tx.send(order);
        }
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.fire();
    }
}

/// Publishes cancel orders; one task per frontend.
pub async fn run_canceller(
    bus: Arc<dyn ferrite_runtime::Bus>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<CancelOrder>,
) {
    while let Some(order) = rx.recv().await {
        let msg = ControlMessage::Cancel {
            request_id: order.request_id,
        };
        metrics::counter!(names::FRONTEND_CANCELLATIONS_TOTAL).increment(1);
        match ferrite_protocol::codec::encode(&msg) {
            Ok(bytes) => {
                if let Err(e) = bus.publish(&order.control_subject, bytes.into()).await {
                    tracing::warn!(request_id = %order.request_id, "cancel not sent: {e}");
                }
            }
            Err(e) => tracing::error!("encode cancel: {e}"),
        }
    }
}

/// Where a choice may go, and who wants to know where its first output came from.
pub struct ChoiceRoute {
    /// Route the first attempt to this instance only.
    pub pinned: Option<InstanceId>,
    /// The pin is a preference (a sibling choice's instance), not the client's order:
    /// when it cannot be honoured, route anywhere.
    pub soft_pin: bool,
    /// Told the serving instance once the first output arrived (its prompt is cached there).
    pub first_output: Option<tokio::sync::watch::Sender<Option<InstanceId>>>,
}

impl ChoiceRoute {
    pub fn new(
        pinned: Option<InstanceId>,
        first_output: Option<tokio::sync::watch::Sender<Option<InstanceId>>>,
    ) -> Self {
        Self {
            pinned,
            soft_pin: false,
            first_output,
        }
    }

    /// Prefer `instance` (where a sibling choice's prompt is cached) but fall back to any.
    pub fn prefer(instance: Option<InstanceId>, pinned: Option<InstanceId>) -> Self {
        Self {
            pinned: instance.or(pinned),
            soft_pin: instance.is_some() && pinned.is_none(),
            first_output: None,
        }
    }
}

/// The receiving side of [`ChoiceRoute::first_output`].
pub type PrefillDone = tokio::sync::watch::Receiver<Option<InstanceId>>;

/// Items of a choice's stream.
pub type ChoiceItem = Result<EngineOutput, ErrorInfo>;

/// The engine outputs of one choice, across migrations. The stream ends after an output
/// with a `finish_reason` or after one error. Dropping it cancels the request.
pub fn run_choice(
    state: Arc<AppState>,
    mut req: PreprocessedRequest,
    guard: CancelGuard,
    stop: CancellationToken,
    route: ChoiceRoute,
) -> impl Stream<Item = ChoiceItem> {
    stream! {
        let ChoiceRoute { pinned, soft_pin, mut first_output } = route;
        let mut guard = guard;
        let mut exclude: Vec<InstanceId> = Vec::new();
        let mut migrations = 0u32;
        // The last transport error, while every attempt since has failed the same way.
        let mut unreachable: Option<String> = None;
        loop {
            // A pin holds for the first attempt only: migration goes anywhere.
            let pin = if migrations == 0 && exclude.is_empty() { pinned } else { None };
            let mut routed = state.route(&req, &exclude, pin).await;
            if routed.is_err() && pin.is_some() && soft_pin {
                // A sibling's instance is busy or gone: any instance will do.
                routed = state.route(&req, &exclude, None).await;
            }
            let (instance, rank, record) = match routed {
                Ok(r) => r,
                Err(e) => match unreachable.take() {
                    // Every instance left failed to answer over the bus: say so.
                    Some(last) if e.kind == ErrorKind::Unavailable => {
                        yield Err(ErrorInfo::new(ErrorKind::Unavailable, format!(
                            "no worker answered over the message bus ({} tried; last: {last}); retry later",
                            exclude.len())));
                        return;
                    }
                    _ => {
                        yield Err(e);
                        return;
                    }
                },
            };
            req.dp_rank = rank;
            let mut downs = state.instance_down.subscribe();
            let opts = StreamOptions {
                idle_timeout: state.config.stream_idle_timeout,
                ..StreamOptions::default()
            };
            let mut s = match request_stream::<_, EngineOutput>(&state.bus, &record.subject, &req, opts).await {
                Ok(s) => s,
                Err(e @ (RuntimeError::NoResponders | RuntimeError::Timeout | RuntimeError::Connection(_) | RuntimeError::Closed)) => {
                    // The instance is gone but discovery has not said so yet, or the bus
                    // is down: try another instance.
                    metrics::counter!(names::FRONTEND_MIGRATIONS_TOTAL, names::LABEL_REASON => "no_responders").increment(1);
                    unreachable = Some(e.to_string());
                    exclude.push(instance);
                    continue;
                }
                Err(RuntimeError::TooLarge(m)) => {
                    yield Err(ErrorInfo::new(ErrorKind::PayloadTooLarge, format!(
                        "the request is too large for the message bus to a worker: {m}; send \
                         fewer embedding rows or raise the NATS server's max_payload")));
                    return;
                }
                Err(e) => {
                    yield Err(ErrorInfo::new(ErrorKind::Internal, format!("sending to worker {instance}: {e}")));
                    return;
                }
            };
            guard.serving(record.control_subject.clone(), req.request_id);
            let mut lost: Option<&'static str> = None;
            let mut lease_gone = false;
            loop {
                let item = tokio::select! {
                    item = s.next() => item,
                    _ = stop.cancelled() => {
                        // A stop string ended this choice: stop the worker too.
                        guard.fire();
                        return;
                    }
                    down = downs.recv(), if !lease_gone => {
                        if matches!(down, Ok(id) if id == instance) {
                            // A draining worker keeps heartbeating and finishes; a dead
                            // one is now detected within a heartbeat or two.
                            lease_gone = true;
                            s.set_idle_timeout(LEASE_GONE_IDLE_TIMEOUT);
                        }
                        continue;
                    }
                };
                let Some(item) = item else { break };
                match item {
                    Ok(out) => {
                        if let Some(tx) = first_output.take() {
                            let _ = tx.send(Some(instance));
                        }
                        let finished = out.finish_reason.is_some();
                        req.generated_so_far += out.token_ids.len() as u32;
                        req.token_ids.extend_from_slice(&out.token_ids);
                        if finished {
                            guard.disarm();
                        }
                        yield Ok(out);
                        if finished {
                            return;
                        }
                    }
                    Err(StreamError::Remote(info)) if info.kind == ErrorKind::WorkerLost => {
                        // The worker gave the request up (engine crash loop): migrate.
                        tracing::warn!(request_id = %req.request_id, %instance, "worker gave the request up: {}", info.message);
                        lost = Some("worker_failed");
                        break;
                    }
                    Err(StreamError::Remote(info)) => {
                        guard.disarm();
                        yield Err(info);
                        return;
                    }
                    Err(StreamError::Lost) => {
                        lost = Some(if lease_gone { "lease_gone" } else { "stream_lost" });
                        break;
                    }
                    Err(StreamError::Decode(e)) => {
                        yield Err(ErrorInfo::new(ErrorKind::Internal, format!("bad stream from worker {instance}: {e}")));
                        return;
                    }
                }
            }
            guard.disarm();
            let Some(reason) = lost else {
                // The stream ended without a finished output: a worker bug, not a loss.
                yield Err(ErrorInfo::new(ErrorKind::Internal, format!("worker {instance} ended the stream early")));
                return;
            };
            migrations += 1;
            if migrations > state.config.migration_limit {
                yield Err(ErrorInfo::new(
                    ErrorKind::WorkerLost,
                    format!("worker {instance} was lost and the migration limit ({}) is reached", state.config.migration_limit),
                ));
                return;
            }
            tracing::warn!(request_id = %req.request_id, %instance, generated = req.generated_so_far, reason, "worker lost mid-stream; migrating");
            metrics::counter!(names::FRONTEND_MIGRATIONS_TOTAL, names::LABEL_REASON => reason).increment(1);
            exclude.push(instance);
            if req.generated_so_far >= req.stop.max_tokens {
                // Every token arrived but the final chunk did not: finish here.
                yield Ok(EngineOutput { finish_reason: Some(FinishReason::Length), ..Default::default() });
                return;
            }
        }
    }
}
