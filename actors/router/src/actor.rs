//! `RouterActor`: a thin actix shell that owns a [`Router`] and answers its messages.

use crate::error::RouteError;
use crate::policy::RouteRequest;
use crate::router::Router;
use actix::prelude::*;
use ferrite_protocol::{DpRank, InstanceId, InstanceRecord, KvEventBatch, WorkerLoad};

/// Pick an (instance, dp rank) for a request, skipping `exclude`.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<(InstanceId, DpRank, InstanceRecord), RouteError>")]
pub struct Route {
    pub req: RouteRequest,
    pub exclude: Vec<InstanceId>,
}

/// An instance appeared (or its record changed) in discovery.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct InstanceUp(pub InstanceRecord);

/// An instance's lease is gone: stop routing to it at once.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct InstanceDown(pub InstanceId);

/// A worker's periodic load report.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct LoadReport(pub WorkerLoad);

/// A batch of KV cache events, passed to the policy.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct KvEvents(pub KvEventBatch);

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

impl Handler<InstanceUp> for RouterActor {
    type Result = ();
    fn handle(&mut self, msg: InstanceUp, _: &mut Context<Self>) {
        self.router.instance_up(msg.0);
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
    type Result = ();
    fn handle(&mut self, msg: KvEvents, _: &mut Context<Self>) {
        self.router.kv_events(&msg.0);
    }
}

impl Handler<ListModels> for RouterActor {
    type Result = MessageResult<ListModels>;
    fn handle(&mut self, _: ListModels, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.router.models())
    }
}
