//! `RouterActor`: a thin actix shell that owns a [`Router`] and answers its messages.

use crate::error::RouteError;
use crate::policy::RouteRequest;
use crate::router::{RouteDecision, Router};
use actix::prelude::*;
use ferrite_protocol::{DpRank, InstanceId, InstanceRecord, KvEventBatch, WorkerLoad};

/// Pick an (instance, dp rank) for a request, skipping `exclude`.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<(InstanceId, DpRank, InstanceRecord), RouteError>")]
pub struct Route {
    pub req: RouteRequest,
    pub exclude: Vec<InstanceId>,
}

/// [`Route`] answering a [`RouteDecision`] (with the predicted KV overlap).
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<RouteDecision, RouteError>")]
pub struct RouteWithOverlap {
    pub req: RouteRequest,
    pub exclude: Vec<InstanceId>,
}

/// An instance appeared (or its record changed) in discovery. Answers true when it is
/// new: send it `ControlMessage::DumpKv`.
#[derive(Message, Clone, Debug)]
#[rtype(result = "bool")]
pub struct InstanceUp(pub InstanceRecord);

/// An instance's lease is gone: stop routing to it at once.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct InstanceDown(pub InstanceId);

/// A worker's periodic load report.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct LoadReport(pub WorkerLoad);

/// A batch of KV cache events, passed to the policy. Answers the workers that need a
/// `ControlMessage::DumpKv` (event-id gap or unknown history).
#[derive(Message, Clone, Debug)]
#[rtype(result = "Vec<(InstanceId, DpRank)>")]
pub struct KvEvents(pub KvEventBatch);

/// Workers still waiting for a dump (re-request periodically).
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "Vec<(InstanceId, DpRank)>")]
pub struct PendingDumps;

/// (worker, block) pairs in the KV index; `None` for KV-blind policies.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "Option<usize>")]
pub struct KvIndexedBlocks;

/// Models served by at least one live instance of the router's roles, sorted.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "Vec<String>")]
pub struct ListModels;

pub struct RouterActor {
    router: Router,
}

impl RouterActor {
    pub fn new(router: Router) -> Self {
        Self { router }
    }
}

impl Actor for RouterActor {
    type Context = Context<Self>;
}

impl Handler<Route> for RouterActor {
    type Result = Result<(InstanceId, DpRank, InstanceRecord), RouteError>;
    fn handle(&mut self, msg: Route, _: &mut Context<Self>) -> Self::Result {
        self.router.route(&msg.req, &msg.exclude)
    }
}

impl Handler<RouteWithOverlap> for RouterActor {
    type Result = Result<RouteDecision, RouteError>;
    fn handle(&mut self, msg: RouteWithOverlap, _: &mut Context<Self>) -> Self::Result {
        let started = std::time::Instant::now();
        let decision = self.router.route_with_overlap(&msg.req, &msg.exclude);
        metrics::histogram!(ferrite_telemetry::names::ROUTER_DECISION_SECONDS)
            .record(started.elapsed().as_secs_f64());
        decision
    }
}

impl Handler<InstanceUp> for RouterActor {
    type Result = bool;
    fn handle(&mut self, msg: InstanceUp, _: &mut Context<Self>) -> bool {
        self.router.instance_up(msg.0)
    }
}

impl Handler<InstanceDown> for RouterActor {
    type Result = ();
    fn handle(&mut self, msg: InstanceDown, _: &mut Context<Self>) {
        self.router.instance_down(msg.0);
    }
}

impl Handler<LoadReport> for RouterActor {
    type Result = ();
    fn handle(&mut self, msg: LoadReport, _: &mut Context<Self>) {
        self.router.load_report(msg.0);
    }
}

impl Handler<KvEvents> for RouterActor {
    type Result = MessageResult<KvEvents>;
    fn handle(&mut self, msg: KvEvents, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.router.kv_events(&msg.0))
    }
}

impl Handler<PendingDumps> for RouterActor {
    type Result = MessageResult<PendingDumps>;
    fn handle(&mut self, _: PendingDumps, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.router.pending_dumps())
    }
}

impl Handler<KvIndexedBlocks> for RouterActor {
    type Result = Option<usize>;
    fn handle(&mut self, _: KvIndexedBlocks, _: &mut Context<Self>) -> Option<usize> {
        self.router.kv_indexed_blocks()
    }
}

impl Handler<ListModels> for RouterActor {
    type Result = MessageResult<ListModels>;
    fn handle(&mut self, _: ListModels, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.router.models())
    }
}
