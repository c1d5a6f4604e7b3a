//! `WorkerActor`: serves one instance's `generate` and `control` subjects, feeding the
//! scheduler of the request's dp rank, and publishes load reports and KV events per rank.
//! When a rank's engine is lost for good it takes the whole worker out of service.

use crate::config::WorkerConfig;
use crate::registration::Registration;
use actix::prelude::*;
use ferrite_protocol::{
    ControlMessage, DpRank, ErrorInfo, ErrorKind, KvEvent, KvEventBatch, PreprocessedRequest,
    WorkerLoad, codec, names,
};
use ferrite_runtime::{Bus, BusMessage, IncomingRequest, StreamResponder};
use ferrite_scheduler::{
    Cancel, DumpKvEvents, EngineGaveUp, Enqueue, FailAll, GetStats, SchedulerActor, TakeKvEvents,
};
use ferrite_telemetry::names as metric;
use std::sync::Arc;
use tracing::Instrument;

pub struct WorkerActor {
    cfg: WorkerConfig,
    bus: Arc<dyn Bus>,
    /// One scheduler per dp rank, in rank order.
    ranks: Vec<Addr<SchedulerActor>>,
    block_size: u32,
    registration: Arc<Registration>,
    draining: bool,
    /// Set when an engine was lost for good: every request is answered `WorkerLost`.
    lost: Option<ErrorInfo>,
    requests: Option<SpawnHandle>,
    /// Prefill or decode role: the disaggregation context.
    disagg: Option<Arc<crate::disagg::DisaggCtx>>,
}

impl WorkerActor {
    pub(crate) fn new(
        cfg: WorkerConfig,
        bus: Arc<dyn Bus>,
        ranks: Vec<Addr<SchedulerActor>>,
        block_size: u32,
        registration: Arc<Registration>,
    ) -> Self {
        Self {
            cfg,
            bus,
            ranks,
            block_size,
            registration,
            draining: false,
            lost: None,
            requests: None,
            disagg: None,
        }
    }

    pub(crate) fn with_disagg(mut self, ctx: Option<Arc<crate::disagg::DisaggCtx>>) -> Self {
        self.disagg = ctx;
        self
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

    fn publish_events(&self, ctx: &mut Context<Self>, rank: DpRank, events: Vec<KvEvent>) {
        if events.is_empty() {
            return;
        }
        let batch = KvEventBatch {
            instance_id: self.cfg.instance_id,
            dp_rank: rank,
            block_size: self.block_size,
            events,
        };
        let subject = names::kv_events_subject(&self.cfg.namespace, &self.cfg.model_name);
        self.publish(ctx, subject, &batch);
    }

    /// Publishes each rank's load report and new KV events.
    fn report(&mut self, ctx: &mut Context<Self>) {
        for (r, sched) in self.ranks.iter().enumerate() {
            let rank = DpRank(r as u32);
            let sched = sched.clone();
            let fut = async move {
                let stats = sched.send(GetStats).await.ok();
                let events = sched.send(TakeKvEvents).await.ok();
                (stats, events)
            };
            ctx.spawn(fut.into_actor(self).map(move |(stats, events), act, ctx| {
                if let Some(s) = stats {
                    let load = WorkerLoad {
                        instance_id: act.cfg.instance_id,
                        dp_rank: rank,
                        active_blocks: s.active_blocks as u32,
                        total_blocks: s.total_blocks as u32,
                        waiting: s.waiting as u32,
                        running: s.running as u32,
                        pending_prefill_tokens: s.pending_prefill_tokens as u32,
                    };
                    let subject = names::load_subject(&act.cfg.namespace, &act.cfg.model_name);
                    act.publish(ctx, subject, &load);
                }
                act.publish_events(ctx, rank, events.unwrap_or_default());
            }));
        }
    }

    /// Publishes, per rank, its pending events and a snapshot of its blocks.
    fn dump_kv(&mut self, ctx: &mut Context<Self>) {
        for (r, sched) in self.ranks.iter().enumerate() {
            let rank = DpRank(r as u32);
            let fut = sched.send(DumpKvEvents);
            ctx.spawn(fut.into_actor(self).map(move |events, act, ctx| {
                act.publish_events(ctx, rank, events.unwrap_or_default());
            }));
        }
    }

    fn stop_accepting(&mut self, ctx: &mut Context<Self>) {
        self.draining = true;
        if let Some(h) = self.requests.take() {
            ctx.cancel_future(h);
        }
    }
}

impl Actor for WorkerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.cfg.publish_interval, |act, ctx| act.report(ctx));
        // A new worker announces its (possibly empty) caches so routers start in sync.
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
        self.stop_accepting(ctx);
    }
}

impl Handler<EngineGaveUp> for WorkerActor {
    type Result = ();

    /// A rank's engine is lost for good: leave discovery, stop accepting, then end every
    /// request of every rank with `WorkerLost` so that frontends migrate them. The process
    /// stays up (for the operator to look) but serves nothing.
    fn handle(&mut self, msg: EngineGaveUp, ctx: &mut Context<Self>) {
        if self.lost.is_some() {
            return;
        }
        tracing::error!(
            instance = %self.cfg.instance_id,
            dp_rank = %msg.dp_rank,
            reason = %msg.reason,
            "WORKER OUT OF SERVICE: engine lost for good; leaving discovery and handing every \
             request to migration (worker_lost). The process stays up for inspection."
        );
        let info = ErrorInfo::new(
            ErrorKind::WorkerLost,
            format!(
                "worker {} lost its engine (dp rank {}): {}",
                self.cfg.instance_id, msg.dp_rank, msg.reason
            ),
        );
        self.lost = Some(info.clone());
        self.stop_accepting(ctx);
        let registration = self.registration.clone();
        let ranks = self.ranks.clone();
        ctx.spawn(
            async move {
                // Leave first, so that migrated requests are not routed back here.
                registration.leave().await;
                for r in &ranks {
                    r.do_send(FailAll(info.clone()));
                }
            }
            .into_actor(self),
        );
    }
}

async fn refuse(responder: StreamResponder, info: ErrorInfo) {
    let _ = responder.error(info).await;
}

impl StreamHandler<IncomingRequest> for WorkerActor {
    fn handle(&mut self, inc: IncomingRequest, ctx: &mut Context<Self>) {
        let IncomingRequest { body, responder } = inc;
        if let Some(d) = self.disagg.clone()
            && d.role == ferrite_protocol::WorkerRole::Prefill
        {
            let refusal = self.lost.clone().or_else(|| {
                self.draining
                    .then(|| ErrorInfo::new(ErrorKind::Unavailable, "worker is draining"))
            });
            ctx.spawn(crate::prefill::serve(d, body, responder, refusal).into_actor(self));
            return;
        }
        let decoded: Result<PreprocessedRequest, _> = codec::decode(&body);
        let span = match &decoded {
            Ok(r) => tracing::info_span!("request", request_id = %r.request_id),
            Err(_) => tracing::info_span!("request", request_id = "undecodable"),
        };
        let req = match decoded {
            Ok(r) => r,
            Err(e) => {
                let info = ErrorInfo::new(
                    ErrorKind::InvalidRequest,
                    format!("undecodable request: {e}"),
                );
                ctx.spawn(refuse(responder, info).instrument(span).into_actor(self));
                return;
            }
        };
        let refusal = if let Some(lost) = &self.lost {
            Some(lost.clone())
        } else if self.draining {
            Some(ErrorInfo::new(ErrorKind::Unavailable, "worker is draining"))
        } else if req.dp_rank.0 as usize >= self.ranks.len() {
            Some(ErrorInfo::invalid(
                "dp_rank",
                format!(
                    "dp_rank {} is out of range: this worker has {} rank(s)",
                    req.dp_rank,
                    self.ranks.len()
                ),
            ))
        } else {
            None
        };
        let sched = match (refusal, self.ranks.get(req.dp_rank.0 as usize)) {
            (None, Some(s)) => s.clone(),
            (refusal, _) => {
                let info =
                    refusal.unwrap_or_else(|| ErrorInfo::new(ErrorKind::Internal, "no such rank"));
                ctx.spawn(refuse(responder, info).instrument(span).into_actor(self));
                return;
            }
        };
        if let Some(d) = self.disagg.clone() {
            let fut = crate::decode::serve(d, req, sched, responder);
            ctx.spawn(fut.instrument(span).into_actor(self));
            return;
        }
        let fut = async move {
            let id = req.request_id;
            metrics::counter!(metric::WORKER_REQUESTS_TOTAL).increment(1);
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            match sched.send(Enqueue { req, tx }).await {
                Ok(Ok(())) => {}
                Ok(Err(info)) => return refuse(responder, info).await,
                Err(e) => {
                    let info =
                        ErrorInfo::new(ErrorKind::Unavailable, format!("scheduler gone: {e}"));
                    return refuse(responder, info).await;
                }
            }
            crate::decode::relay(id, rx, sched, responder).await;
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
                // Request ids are unique: only the rank holding it acts on it.
                for r in &self.ranks {
                    r.do_send(Cancel { request_id });
                }
            }
            Ok(ControlMessage::Drain) => self.stop_accepting(ctx),
            Ok(ControlMessage::DumpKv) => self.dump_kv(ctx),
            Err(e) => tracing::warn!("bad control message: {e}"),
        }
    }

    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}
