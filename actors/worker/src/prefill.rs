//! The prefill worker's side of a remote prefill: compute the prompt's KV with one sampled
//! token, copy the held blocks out of the engine chunk by chunk and push each chunk into the
//! decode worker's cache, then answer `PrefillDone`. Whatever happens (cancel, transfer
//! failure, decode worker gone), the held blocks are released.

use crate::disagg::{DisaggCtx, METRIC_TRANSFER_BLOCKS, METRIC_TRANSFER_BYTES};
use actix::Addr;
use bytes::Bytes;
use ferrite_protocol::{
    DpRank, ErrorInfo, ErrorKind, FinishReason, PrefillDone, RemotePrefill, RequestId, codec,
};
use ferrite_runtime::StreamResponder;
use ferrite_scheduler::{EnqueuePrefill, GetEngine, HeldBlocks, ReadKvBlocks, ReleaseHeld};
use ferrite_scheduler::{SchedulerActor, SupervisedRank};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Serves one `RemotePrefill` (the body of a request on the prefill `generate` subject).
pub(crate) async fn serve(
    ctx: Arc<DisaggCtx>,
    body: Bytes,
    responder: StreamResponder,
    refusal: Option<ErrorInfo>,
) {
    let rp: RemotePrefill = match codec::decode(&body) {
        Ok(r) => r,
        Err(e) => {
            let info = ErrorInfo::new(ErrorKind::InvalidRequest, format!("bad RemotePrefill: {e}"));
            let _ = responder.error(info).await;
            return;
        }
    };
    let span = tracing::info_span!("prefill", request_id = %rp.request.request_id,
        decode = %rp.decode_instance);
    serve_decoded(ctx, rp, responder, refusal)
        .instrument(span)
        .await;
}

async fn serve_decoded(
    ctx: Arc<DisaggCtx>,
    rp: RemotePrefill,
    responder: StreamResponder,
    refusal: Option<ErrorInfo>,
) {
    if let Some(info) = refusal {
        let _ = responder.error(info).await;
        return;
    }
    if let Some(why) = ctx.layout.mismatch(&rp.layout) {
        tracing::error!("{why}");
        let _ = responder
            .error(ErrorInfo::new(ErrorKind::InvalidRequest, why))
            .await;
        return;
    }
    let Some(rank) = ctx.ranks.first().cloned() else {
        let _ = responder
            .error(ErrorInfo::new(ErrorKind::Internal, "no ranks"))
            .await;
        return;
    };
    let started = Instant::now();
    match run(&ctx, &rank, rp).await {
        Ok(done) => {
            tracing::info!(
                blocks = done.blocks_sent,
                bytes = done.bytes_sent,
                ms = started.elapsed().as_millis() as u64,
                "remote prefill done"
            );
            let mut responder = responder;
            if responder.send(&done).await.is_ok() {
                let _ = responder.end().await;
            }
        }
        Err(info) => {
            if info.kind == ErrorKind::Cancelled {
                tracing::info!("remote prefill cancelled");
            } else {
                tracing::warn!(error = %info.message, "remote prefill failed");
            }
            let _ = responder.error(info).await;
        }
    }
}

async fn run(
    ctx: &DisaggCtx,
    rank: &SupervisedRank,
    rp: RemotePrefill,
) -> Result<PrefillDone, ErrorInfo> {
    let sched = rank.scheduler.clone();
    let id = rp.request.request_id;
    let mut req = rp.request;
    req.dp_rank = DpRank(0);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    sched
        .send(EnqueuePrefill { req, tx })
        .await
        .map_err(|e| ErrorInfo::new(ErrorKind::Unavailable, format!("scheduler gone: {e}")))??;
    let first = match rx.recv().await {
        Some(Ok(out)) if out.finish_reason != Some(FinishReason::Cancelled) => out,
        Some(Err(info)) => return Err(info),
        _ => return Err(cancelled()),
    };
    let (Some(&first_token), prefill_cached_tokens) =
        (first.token_ids.first(), first.cached_tokens.unwrap_or(0))
    else {
        release(&sched, id).await;
        return Err(ErrorInfo::new(
            ErrorKind::Internal,
            "prefill produced no token",
        ));
    };
    let res = transfer(
        ctx,
        rank,
        id,
        rp.skip_blocks as usize,
        &rp.dest_blocks,
        &rp.transfer,
    )
    .await;
    release(&sched, id).await;
    let (blocks_sent, bytes_sent, transport) = res?;
    Ok(PrefillDone {
        request_id: id,
        first_token,
        logprob: first.logprobs.into_iter().next(),
        prefill_cached_tokens,
        blocks_sent,
        bytes_sent,
        transport,
    })
}

fn cancelled() -> ErrorInfo {
    ErrorInfo::new(ErrorKind::Cancelled, "remote prefill cancelled")
}

async fn release(sched: &Addr<SchedulerActor>, id: RequestId) {
    let _ = sched.send(ReleaseHeld(id)).await;
}

/// Pushes held blocks `skip..` into `dest`; returns (blocks, bytes, transport) sent.
async fn transfer(
    ctx: &DisaggCtx,
    rank: &SupervisedRank,
    id: RequestId,
    skip: usize,
    dest: &[ferrite_protocol::BlockId],
    to: &ferrite_protocol::TransferInfo,
) -> Result<(u32, u64, String), ErrorInfo> {
    let all = held(&rank.scheduler, id).await?;
    let src = all.get(skip..).unwrap_or_default();
    if src.len() != dest.len() {
        return Err(ErrorInfo::new(
            ErrorKind::InvalidRequest,
            format!(
                "the decode worker reserved {} blocks for {} prompt blocks after {skip} cached",
                dest.len(),
                src.len()
            ),
        ));
    }
    let Some(client) = ctx.client.as_ref() else {
        return Err(ErrorInfo::new(ErrorKind::Internal, "no transfer client"));
    };
    let lost = |e: ferrite_transfer::TransferError| {
        ErrorInfo::new(
            ErrorKind::Unavailable,
            format!("KV transfer to {}: {e}", to.addr),
        )
    };
    let mut session = client.session(to).await.map_err(lost)?;
    if !ctx.copyable {
        // The mocker has no cache bytes: simulate the wire time, send the block ids.
        let bytes = dest.len() * ctx.cfg.simulated_bytes_per_block;
        let secs = bytes as f64 / ctx.cfg.simulated_bandwidth.max(1.0);
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        session.send(id, dest, &[]).await.map_err(lost)?;
        metrics::counter!(METRIC_TRANSFER_BLOCKS, "transport" => session.transport())
            .increment(dest.len() as u64);
        return Ok((dest.len() as u32, 0, session.transport().to_string()));
    }
    let engine = rank
        .supervisor
        .send(GetEngine)
        .await
        .map_err(|e| ErrorInfo::new(ErrorKind::Unavailable, format!("supervisor gone: {e}")))?;
    let step = session.chunk_blocks();
    let mut bytes = 0u64;
    for (s, d) in src.chunks(step).zip(dest.chunks(step)) {
        // A cancel releases the held blocks: stop before copying stale memory.
        held(&rank.scheduler, id).await?;
        let data = engine
            .send(ReadKvBlocks(s.to_vec()))
            .await
            .map_err(|e| ErrorInfo::new(ErrorKind::Unavailable, format!("engine gone: {e}")))?
            .map_err(|e| ErrorInfo::new(ErrorKind::Internal, format!("reading KV: {e}")))?;
        session.send(id, d, &data).await.map_err(lost)?;
        bytes += data.len() as u64;
        let t = session.transport();
        metrics::counter!(METRIC_TRANSFER_BLOCKS, "transport" => t).increment(d.len() as u64);
        metrics::counter!(METRIC_TRANSFER_BYTES, "transport" => t).increment(data.len() as u64);
    }
    Ok((dest.len() as u32, bytes, session.transport().to_string()))
}

async fn held(
    sched: &Addr<SchedulerActor>,
    id: RequestId,
) -> Result<Vec<ferrite_protocol::BlockId>, ErrorInfo> {
    sched
        .send(HeldBlocks(id))
        .await
        .ok()
        .flatten()
        .ok_or_else(cancelled)
}
