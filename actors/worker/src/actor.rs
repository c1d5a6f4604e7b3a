//! `WorkerActor`: serves one instance's `generate` and `control` subjects, feeding the
//! scheduler actor, and publishes load reports and KV events.

use crate::config::WorkerConfig;
use actix::prelude::*;
use ferrite_protocol::{
    ControlMessage, ErrorInfo, ErrorKind, KvEvent, KvEventBatch, KvEventData, PreprocessedRequest,
    WorkerLoad, codec, names,
};
use ferrite_runtime::{Bus, BusMessage, IncomingRequest};
use ferrite_scheduler::{Cancel, Enqueue, GetStats, KvSnapshot, SchedulerActor, TakeKvEvents};
use ferrite_telemetry::names as metric;
use std::sync::Arc;
use tracing::Instrument;

pub struct WorkerActor {
    cfg: WorkerConfig,
    bus: Arc<dyn Bus>,
    scheduler: Addr<SchedulerActor>,
    block_size: u32,
    last_event_id: u64,
    draining: bool,
    requests: Option<SpawnHandle>,
}

impl WorkerActor {
    pub fn new(
        cfg: WorkerConfig,
        bus: Arc<dyn Bus>,
        scheduler: Addr<SchedulerActor>,
        block_size: u32,
    ) -> Self {
        Self {
            cfg,
            bus,
            scheduler,
            block_size,
            last_event_id: 0,
            draining: false,
            requests: None,
        }
    }

    fn publish<T: serde::Serialize>(&self, ctx: &mut Context<Self>, subject: String, value: &T) {
        let bytes = match codec::encode(value) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("encode: {e}");
                return;
            }
        };
        let bus = self.bus.clone();
        ctx.spawn(
            async move {
                if let Err(e) = bus.publish(&subject, bytes.into()).await {
                    tracing::warn!(%subject, "publish failed: {e}");
                }
            }
            .into_actor(self),
        );
    }

    fn kv_batch(&self, events: Vec<KvEvent>) -> KvEventBatch {
        KvEventBatch {
            instance_id: self.cfg.instance_id,
            dp_rank: Default::default(),
            block_size: self.block_size,
            events,
        }
    }

    /// Publishes the load report and any new KV events.
    fn report(&mut self, ctx: &mut Context<Self>) {
        let sched = self.scheduler.clone();
        let fut = async move {
            let stats = sched.send(GetStats).await.ok();
            let events = sched.send(TakeKvEvents).await.ok();
            (stats, events)
        };
        ctx.spawn(fut.into_actor(self).map(|(stats, events), act, ctx| {
            if let Some(s) = stats {
                let load = WorkerLoad {
                    instance_id: act.cfg.instance_id,
                    dp_rank: Default::default(),
                    active_blocks: s.active_blocks as u32,
                    total_blocks: s.total_blocks as u32,
                    waiting: s.waiting as u32,
                    running: s.running as u32,
                    pending_prefill_tokens: s.pending_prefill_tokens as u32,
                };
                let subject = names::load_subject(&act.cfg.namespace, &act.cfg.model_name);
                act.publish(ctx, subject, &load);
            }
            if let Some(events) = events.filter(|e| !e.is_empty()) {
                if let Some(last) = events.last() {
                    act.last_event_id = last.event_id;
                }
                let subject = names::kv_events_subject(&act.cfg.namespace, &act.cfg.model_name);
                let batch = act.kv_batch(events);
                act.publish(ctx, subject, &batch);
            }
        }));
    }

    fn dump_kv(&mut self, ctx: &mut Context<Self>) {
        let sched = self.scheduler.clone();
        let fut = async move {
            let events = sched.send(TakeKvEvents).await.ok().unwrap_or_default();
            let snap = sched.send(KvSnapshot).await.ok().unwrap_or_default();
            (events, snap)
        };
        ctx.spawn(fut.into_actor(self).map(|(mut events, blocks), act, ctx| {
            if let Some(last) = events.last() {
                act.last_event_id = last.event_id;
            }
            // The snapshot carries the id of the last event it includes.
            events.push(KvEvent {
                event_id: act.last_event_id,
                data: KvEventData::Snapshot { blocks },
            });
            let subject = names::kv_events_subject(&act.cfg.namespace, &act.cfg.model_name);
            let batch = act.kv_batch(events);
            act.publish(ctx, subject, &batch);
        }));
    }
}

impl Actor for WorkerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.cfg.publish_interval, |act, ctx| act.report(ctx));
        // A new worker announces its (possibly empty) cache so routers start in sync.
        self.dump_kv(ctx);
    }
}

/// Adds the stream of incoming `generate` requests.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ServeRequests(pub ferrite_runtime::RequestStream);

impl Handler<ServeRequests> for WorkerActor {
    type Result = ();
    fn handle(&mut self, msg: ServeRequests, ctx: &mut Context<Self>) {
        self.requests = Some(ctx.add_stream(msg.0));
    }
}

/// Stop taking new requests; running ones go on.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopAccepting;

impl Handler<StopAccepting> for WorkerActor {
    type Result = ();
    fn handle(&mut self, _: StopAccepting, ctx: &mut Context<Self>) {
        self.draining = true;
        if let Some(h) = self.requests.take() {
            ctx.cancel_future(h);
        }
    }
}

impl StreamHandler<IncomingRequest> for WorkerActor {
    fn handle(&mut self, inc: IncomingRequest, ctx: &mut Context<Self>) {
        let IncomingRequest {
            body,
            mut responder,
        } = inc;
        let decoded: Result<PreprocessedRequest, _> = codec::decode(&body);
        let draining = self.draining;
        let sched = self.scheduler.clone();
        let span = match &decoded {
            Ok(r) => tracing::info_span!("request", request_id = %r.request_id),
            Err(_) => tracing::info_span!("request", request_id = "undecodable"),
        };
        let fut = async move {
            let req = match decoded {
                Ok(r) => r,
                Err(e) => {
                    let _ = responder
                        .error(ErrorInfo::new(
                            ErrorKind::InvalidRequest,
                            format!("undecodable request: {e}"),
                        ))
                        .await;
                    return;
                }
            };
            if draining {
                let _ = responder
                    .error(ErrorInfo::new(ErrorKind::Unavailable, "worker is draining"))
                    .await;
                return;
            }
            let id = req.request_id;
            metrics::counter!(metric::WORKER_REQUESTS_TOTAL).increment(1);
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            match sched.send(Enqueue { req, tx }).await {
                Ok(Ok(())) => {}
                Ok(Err(info)) => {
                    let _ = responder.error(info).await;
                    return;
                }
                Err(e) => {
                    let _ = responder
                        .error(ErrorInfo::new(
                            ErrorKind::Unavailable,
                            format!("scheduler gone: {e}"),
                        ))
                        .await;
                    return;
                }
            }
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
            // The scheduler dropped the sequence without finishing it (cancelled, or the
            // worker is going away): stay silent, so a client still listening migrates.
        };
        ctx.spawn(fut.instrument(span).into_actor(self));
    }

    fn finished(&mut self, _ctx: &mut Context<Self>) {
        tracing::info!(instance = %self.cfg.instance_id, "request stream closed");
    }
}

impl StreamHandler<BusMessage> for WorkerActor {
    fn handle(&mut self, msg: BusMessage, ctx: &mut Context<Self>) {
        match codec::decode::<ControlMessage>(&msg.payload) {
            Ok(ControlMessage::Cancel { request_id }) => {
                tracing::info!(%request_id, "cancel");
                self.scheduler.do_send(Cancel { request_id });
            }
            Ok(ControlMessage::Drain) => {
                self.draining = true;
                if let Some(h) = self.requests.take() {
                    ctx.cancel_future(h);
                }
            }
            Ok(ControlMessage::DumpKv) => self.dump_kv(ctx),
            Err(e) => tracing::warn!("bad control message: {e}"),
        }
    }

    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}
