//! The decode worker's side: decide whether a request is prefilled here or remotely,
//! reserve blocks, ask a prefill instance, and fall back to a local prefill when the
//! prefill instance fails (no client error). Also the sink of incoming KV blocks.

use crate::disagg::{DisaggCtx, METRIC_DISAGG_REQUESTS};
use actix::Addr;
use ferrite_protocol::{
    ControlMessage, ErrorInfo, ErrorKind, InstanceId, InstanceRecord, PrefillDone,
    PreprocessedRequest, RemotePrefill, RequestId, codec,
};
use ferrite_runtime::{StreamOptions, StreamResponder, request_stream};
use ferrite_scheduler::{
    Cancel, CompleteRemote, Enqueue, FallbackLocal, GetEngine, OutputSender, RemoteBlocks,
    ReserveRemote, SchedulerActor, WriteRemote,
};
use ferrite_telemetry::names as metric;
use ferrite_transfer::IncomingBlocks;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

type OutputReceiver = UnboundedReceiver<Result<ferrite_protocol::EngineOutput, ErrorInfo>>;

/// Prefill instances tried for one request before prefilling locally.
const MAX_REMOTE_ATTEMPTS: usize = 2;

/// Serves one request on a decode worker.
pub(crate) async fn serve(
    ctx: Arc<DisaggCtx>,
    req: PreprocessedRequest,
    sched: Addr<SchedulerActor>,
    responder: StreamResponder,
) {
    let id = req.request_id;
    metrics::counter!(metric::WORKER_REQUESTS_TOTAL).increment(1);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let prompt = req.token_ids.len();
    let cfg = &ctx.cfg;
    let alive = ctx.chooser.any_alive();
    if !alive && cfg.enforce_disagg {
        let info = ErrorInfo::new(
            ErrorKind::Unavailable,
            "no prefill instance is alive and this decode worker runs with --enforce-disagg",
        );
        let _ = responder.error(info).await;
        return;
    }
    if !alive || (!cfg.enforce_disagg && prompt <= cfg.max_local_prefill_tokens) {
        count("local");
        return local(req, tx, rx, sched, responder).await;
    }
    let reservation = match sched
        .send(ReserveRemote {
            req: req.clone(),
            tx: tx.clone(),
        })
        .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(info)) if info.kind == ErrorKind::Overloaded => {
            // No blocks free now: queue it here, where it waits for blocks like any other.
            count("local");
            return local(req, tx, rx, sched, responder).await;
        }
        Ok(Err(info)) => {
            let _ = responder.error(info).await;
            return;
        }
        Err(e) => {
            let info = ErrorInfo::new(ErrorKind::Unavailable, format!("scheduler gone: {e}"));
            let _ = responder.error(info).await;
            return;
        }
    };
    let cached = reservation.cached_blocks * ctx.block_size as usize;
    let uncached = prompt.saturating_sub(cached);
    if !cfg.enforce_disagg && uncached <= cfg.max_local_prefill_tokens {
        // Mostly cached here: the rest is cheaper to prefill locally than to ship.
        count("local");
        let _ = sched.send(FallbackLocal(id)).await;
        return relay(id, rx, sched, responder).await;
    }
    let rp = RemotePrefill {
        request: req.clone(),
        decode_instance: ctx.instance_id,
        transfer: ctx.transfer.clone().unwrap_or_default(),
        skip_blocks: reservation.cached_blocks as u32,
        dest_blocks: reservation.blocks[reservation.cached_blocks..].to_vec(),
        layout: ctx.layout.clone(),
    };
    let mut rx = rx;
    let mut tried: Vec<InstanceId> = Vec::new();
    while tried.len() < MAX_REMOTE_ATTEMPTS {
        let Some(target) = ctx.chooser.choose(&req, &tried) else {
            break;
        };
        tried.push(target.instance_id);
        let outcome = remote_once(&ctx, &rp, &target, &mut rx).await;
        ctx.chooser.done(target.instance_id, id);
        match outcome {
            Remote::Done(done) => {
                count("remote");
                tracing::debug!(request_id = %id, prefill = %target.instance_id,
                    blocks = done.blocks_sent, "remote prefill complete");
                let _ = sched
                    .send(CompleteRemote {
                        request_id: id,
                        token: done.first_token,
                        logprob: done.logprob,
                    })
                    .await;
                return relay(id, rx, sched, responder).await;
            }
            Remote::ClientSide(item) => {
                // Cancelled (or failed) here while the prefill ran: tell the prefill worker.
                cancel_remote(&ctx, &target, id).await;
                return finish_with(item, rx, responder).await;
            }
            Remote::Failed(why) => {
                tracing::warn!(request_id = %id, prefill = %target.instance_id,
                    "remote prefill failed: {why}");
                cancel_remote(&ctx, &target, id).await;
            }
        }
    }
    // No prefill instance (left) could do it: prefill here; the client sees no error.
    count("fallback");
    tracing::warn!(request_id = %id, tried = tried.len(), "prefilling locally after remote prefill failed");
    let _ = sched.send(FallbackLocal(id)).await;
    relay(id, rx, sched, responder).await
}

fn count(outcome: &'static str) {
    metrics::counter!(METRIC_DISAGG_REQUESTS, "prefill" => outcome).increment(1);
}

enum Remote {
    Done(PrefillDone),
    /// Something arrived on the request's own stream first (cancel, error): pass it on.
    ClientSide(Option<Result<ferrite_protocol::EngineOutput, ErrorInfo>>),
    Failed(String),
}

async fn remote_once(
    ctx: &DisaggCtx,
    rp: &RemotePrefill,
    target: &InstanceRecord,
    rx: &mut OutputReceiver,
) -> Remote {
    let opts = StreamOptions {
        idle_timeout: ctx.cfg.prefill_idle_timeout,
        ack_timeout: Duration::from_secs(2),
    };
    let send = request_stream::<_, PrefillDone>(&ctx.bus, &target.subject, rp, opts);
    let mut stream = tokio::select! {
        s = send => match s {
            Ok(s) => s,
            Err(e) => return Remote::Failed(e.to_string()),
        },
        item = rx.recv() => return Remote::ClientSide(item),
    };
    tokio::select! {
        item = stream.next() => match item {
            Some(Ok(done)) if done.request_id == rp.request.request_id => Remote::Done(done),
            Some(Ok(_)) => Remote::Failed("answer for another request".into()),
            Some(Err(e)) => Remote::Failed(e.to_string()),
            None => Remote::Failed("stream ended without an answer".into()),
        },
        item = rx.recv() => Remote::ClientSide(item),
    }
}

async fn cancel_remote(ctx: &DisaggCtx, target: &InstanceRecord, id: RequestId) {
    if let Ok(bytes) = codec::encode(&ControlMessage::Cancel { request_id: id }) {
        let _ = ctx.bus.publish(&target.control_subject, bytes.into()).await;
    }
}

/// Aggregated path: queue here and relay.
async fn local(
    req: PreprocessedRequest,
    tx: OutputSender,
    rx: OutputReceiver,
    sched: Addr<SchedulerActor>,
    responder: StreamResponder,
) {
    let id = req.request_id;
    match sched.send(Enqueue { req, tx }).await {
        Ok(Ok(())) => relay(id, rx, sched, responder).await,
        Ok(Err(info)) => {
            let _ = responder.error(info).await;
        }
        Err(e) => {
            let info = ErrorInfo::new(ErrorKind::Unavailable, format!("scheduler gone: {e}"));
            let _ = responder.error(info).await;
        }
    }
}

/// Passes on one item that arrived early, then the rest of the stream.
async fn finish_with(
    item: Option<Result<ferrite_protocol::EngineOutput, ErrorInfo>>,
    _rx: OutputReceiver,
    mut responder: StreamResponder,
) {
    match item {
        Some(Ok(out)) => {
            let finished = out.finish_reason.is_some();
            if responder.send(&out).await.is_ok() && finished {
                let _ = responder.end().await;
            }
        }
        Some(Err(info)) => {
            let _ = responder.error(info).await;
        }
        None => {}
    }
}

/// Streams a request's chunks to its client (aggregated and decode workers alike); a
/// sequence dropped without finishing leaves the stream silent, so the client migrates.
pub(crate) async fn relay(
    id: RequestId,
    mut rx: OutputReceiver,
    sched: Addr<SchedulerActor>,
    mut responder: StreamResponder,
) {
    while let Some(item) = rx.recv().await {
        match item {
            Ok(out) => {
                let finished = out.finish_reason.is_some();
                metrics::counter!(metric::WORKER_GENERATED_TOKENS_TOTAL)
                    .increment(out.token_ids.len() as u64);
                if responder.send(&out).await.is_err() {
                    sched.do_send(Cancel { request_id: id });
                    return;
                }
                if finished {
                    let _ = responder.end().await;
                    return;
                }
            }
            Err(info) => {
                let _ = responder.error(info).await;
                return;
            }
        }
    }
    // Dropped without finishing (the worker is going away): stay silent so the client
    // migrates.
}

/// Writes incoming KV chunks into the reserved blocks of the rank that holds the request.
pub(crate) async fn sink(ctx: Arc<DisaggCtx>, mut rx: tokio::sync::mpsc::Receiver<IncomingBlocks>) {
    while let Some(inc) = rx.recv().await {
        let (request_id, blocks, data, acker) = inc.into_parts();
        acker.ack(write_incoming(&ctx, request_id, blocks, data).await);
    }
}

async fn write_incoming(
    ctx: &DisaggCtx,
    request_id: RequestId,
    blocks: Vec<ferrite_protocol::BlockId>,
    data: Vec<u8>,
) -> Result<(), String> {
    let mut holder = None;
    for rank in &ctx.ranks {
        if let Ok(Some(_)) = rank.scheduler.send(RemoteBlocks(request_id)).await {
            holder = Some(rank);
            break;
        }
    }
    let Some(rank) = holder else {
        let e = format!("request {request_id} has no blocks reserved here");
        tracing::warn!(%request_id, "refusing KV blocks: {e}");
        return Err(e);
    };
    let engine = if ctx.copyable {
        Some(
            rank.supervisor
                .send(GetEngine)
                .await
                .map_err(|e| format!("supervisor gone: {e}"))?,
        )
    } else {
        None
    };
    let msg = WriteRemote {
        request_id,
        blocks,
        data,
        engine,
    };
    let res = rank
        .scheduler
        .send(msg)
        .await
        .map_err(|e| format!("scheduler gone: {e}"))
        .and_then(|r| r);
    if let Err(e) = &res {
        tracing::warn!(%request_id, "refusing KV blocks: {e}");
    }
    res
}
