//! [`EngineSupervisor`]: owns a rank's engine. When a step panics it rebuilds the executor
//! from the factory (on a blocking thread), starts it on a fresh engine thread and hands it
//! to the scheduler, which recomputes its sequences with fresh KV. More than
//! `max_restarts` crashes within `window` is a crash loop: the supervisor gives up.

use crate::actor::{EngineActor, EngineCrashed, FailAll, SchedulerActor, SetEngine};
use crate::scheduler::Scheduler;
use actix::prelude::*;
use ferrite_engine::{Executor, ExecutorFactory, KvCacheSpec};
use ferrite_protocol::{DpRank, ErrorInfo, ErrorKind};
use ferrite_telemetry::names;
use metrics::Label;
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

/// How many engine restarts are tolerated: at most `max_restarts` within any `window`;
/// the next crash inside the window is a crash loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    pub max_restarts: u32,
    pub window: Duration,
}

impl Default for RestartPolicy {
    /// 3 restarts within 60 s.
    fn default() -> Self {
        Self {
            max_restarts: 3,
            window: Duration::from_secs(60),
        }
    }
}

/// Sent by a supervisor that gave up (crash loop, or the factory failed): its rank's
/// engine is lost for good. Whoever receives it fails the requests (see [`FailAll`]).
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct EngineGaveUp {
    pub dp_rank: DpRank,
    pub reason: String,
}

/// Successful engine restarts so far.
#[derive(Message)]
#[rtype(result = "u64")]
pub struct GetRestarts;

/// What a supervisor needs besides the engine.
#[derive(Clone)]
pub struct SupervisorConfig {
    pub dp_rank: DpRank,
    pub policy: RestartPolicy,
    /// Labels of the scheduler's and the supervisor's metrics (e.g. `dp_rank`).
    pub labels: Vec<(String, String)>,
    /// Told when the supervisor gives up; `None`: the supervisor fails its own scheduler's
    /// requests with `WorkerLost`.
    pub on_give_up: Option<Recipient<EngineGaveUp>>,
}

impl SupervisorConfig {
    pub fn new(dp_rank: DpRank) -> Self {
        Self {
            dp_rank,
            policy: RestartPolicy::default(),
            labels: Vec::new(),
            on_give_up: None,
        }
    }
}

/// A supervised rank: its supervisor and its scheduler.
#[derive(Clone)]
pub struct SupervisedRank {
    pub dp_rank: DpRank,
    pub supervisor: Addr<EngineSupervisor>,
    pub scheduler: Addr<SchedulerActor>,
}

/// Owns one rank's engine (see the module docs).
pub struct EngineSupervisor {
    cfg: SupervisorConfig,
    factory: ExecutorFactory,
    scheduler: Addr<SchedulerActor>,
    /// Kept so the engine thread lives while this supervisor does.
    engine: Addr<EngineActor>,
    kv: KvCacheSpec,
    recent: VecDeque<Instant>,
    restarts: u64,
    restarting: bool,
    gave_up: bool,
    labels: Vec<Label>,
}

impl EngineSupervisor {
    /// Starts `executor` (the rank's first, made by the caller from `factory`) on its own
    /// thread, a [`SchedulerActor`] over `scheduler` that reports crashes here, and this
    /// supervisor. Call inside an actix `System`.
    pub fn start(
        cfg: SupervisorConfig,
        executor: Box<dyn Executor>,
        factory: ExecutorFactory,
        scheduler: Scheduler,
    ) -> SupervisedRank {
        let kv = executor.info().kv;
        let scheduler = crate::offload::attach_kv_tiers(scheduler, executor.as_ref(), &cfg.labels);
        let engine = EngineActor::start(executor);
        let labels: Vec<Label> = cfg
            .labels
            .iter()
            .map(|(k, v)| Label::new(k.clone(), v.clone()))
            .collect();
        let dp_rank = cfg.dp_rank;
        // Shows the counter (at 0) before any restart.
        metrics::counter!(names::WORKER_ENGINE_RESTARTS_TOTAL, labels.clone()).increment(0);
        let ctx = Context::<EngineSupervisor>::new();
        let scheduler = SchedulerActor::new(scheduler, engine.clone().recipient())
            .with_metric_labels(cfg.labels.clone())
            .with_supervisor(ctx.address().recipient())
            .with_kv_engine(engine.clone())
            .start();
        let supervisor = ctx.run(EngineSupervisor {
            cfg,
            factory,
            scheduler: scheduler.clone(),
            engine,
            kv,
            recent: VecDeque::new(),
            restarts: 0,
            restarting: false,
            gave_up: false,
            labels,
        });
        SupervisedRank {
            dp_rank,
            supervisor,
            scheduler,
        }
    }

    fn give_up(&mut self, reason: String) {
        self.gave_up = true;
        tracing::error!(
            dp_rank = %self.cfg.dp_rank,
            restarts = self.restarts,
            "ENGINE LOST FOR GOOD: {reason}; this worker stops serving (its requests end with \
             worker_lost so frontends migrate them); look at the logs above and restart it"
        );
        match &self.cfg.on_give_up {
            Some(r) => r.do_send(EngineGaveUp {
                dp_rank: self.cfg.dp_rank,
                reason,
            }),
            None => self.scheduler.do_send(FailAll(ErrorInfo::new(
                ErrorKind::WorkerLost,
                format!("engine lost: {reason}"),
            ))),
        }
    }
}

impl Actor for EngineSupervisor {
    type Context = Context<Self>;
}

impl Handler<EngineCrashed> for EngineSupervisor {
    type Result = ();

    fn handle(&mut self, msg: EngineCrashed, ctx: &mut Context<Self>) {
        if self.gave_up || self.restarting {
            return;
        }
        let now = Instant::now();
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.cfg.policy.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.cfg.policy.max_restarts as usize {
            let reason = format!(
                "crash loop: the engine crashed {} times within {:?} (limit {} restarts; last: {})",
                self.recent.len() + 1,
                self.cfg.policy.window,
                self.cfg.policy.max_restarts,
                msg.reason
            );
            self.give_up(reason);
            return;
        }
        self.recent.push_back(now);
        self.restarting = true;
        tracing::warn!(dp_rank = %self.cfg.dp_rank, reason = %msg.reason, "engine crashed; rebuilding it");
        let factory = self.factory.clone();
        let rank = self.cfg.dp_rank;
        let build = tokio::task::spawn_blocking(move || {
            catch_unwind(AssertUnwindSafe(|| factory(rank)))
                .map_err(|_| "the executor factory panicked".to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
        });
        ctx.spawn(build.into_actor(self).map(|res, act, _ctx| {
            act.restarting = false;
            let exec = match res {
                Ok(Ok(e)) => e,
                Ok(Err(e)) => return act.give_up(format!("cannot rebuild the executor: {e}")),
                Err(e) => return act.give_up(format!("executor rebuild task failed: {e}")),
            };
            let kv = exec.info().kv;
            if kv != act.kv {
                return act.give_up(format!(
                    "the rebuilt executor has a different KV cache ({kv:?}, was {:?})",
                    act.kv
                ));
            }
            act.engine = EngineActor::start(exec);
            act.restarts += 1;
            metrics::counter!(names::WORKER_ENGINE_RESTARTS_TOTAL, act.labels.clone()).increment(1);
            tracing::warn!(dp_rank = %act.cfg.dp_rank, restarts = act.restarts,
                "engine restarted on a fresh thread; its sequences are recomputed");
            act.scheduler
                .do_send(SetEngine(act.engine.clone().recipient()));
            act.scheduler
                .do_send(crate::offload::SetKvEngine(act.engine.clone()));
        }));
    }
}

impl Handler<GetRestarts> for EngineSupervisor {
    type Result = u64;

    fn handle(&mut self, _: GetRestarts, _: &mut Context<Self>) -> u64 {
        self.restarts
    }
}

impl EngineSupervisor {
    /// The current engine (for KV block copies; see `remote.rs`).
    pub(crate) fn engine_addr(&self) -> Addr<EngineActor> {
        self.engine.clone()
    }
}
