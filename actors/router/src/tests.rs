use super::*;
use actix::Actor;
use ferrite_protocol::{
    BlockHash, DpRank, ErrorKind, InstanceId, InstanceRecord, KvEvent, KvEventBatch, KvEventData,
    WorkerLoad, WorkerRole,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

fn record(id: u64, model: &str, dp: u32) -> InstanceRecord {
    InstanceRecord {
        instance_id: InstanceId(id),
        component: "worker".into(),
        role: WorkerRole::Agg,
        model: model.into(),
        subject: format!("gen.{id}"),
        control_subject: format!("ctl.{id}"),
        dp_size: dp,
        kv_block_size: 16,
        total_kv_blocks: 100,
        transfer: None,
    }
}

fn req(model: &str) -> RouteRequest {
    RouteRequest {
        model: model.into(),
        token_ids: vec![1, 2, 3],
        ..Default::default()
    }
}

fn load(id: u64, rank: u32, active: u32, waiting: u32) -> WorkerLoad {
    WorkerLoad {
        instance_id: InstanceId(id),
        dp_rank: DpRank(rank),
        active_blocks: active,
        total_blocks: 100,
        waiting,
        running: 0,
        pending_prefill_tokens: 0,
    }
}

fn counts(r: &mut Router, n: usize, exclude: &[InstanceId]) -> HashMap<(u64, u32), usize> {
    let mut c = HashMap::new();
    for _ in 0..n {
        let (id, rank, rec) = r.route(&req("m"), exclude).expect("routable");
        assert_eq!(rec.instance_id, id);
        *c.entry((id.0, rank.0)).or_default() += 1;
    }
    c
}

#[test]
fn round_robin_cycles_evenly_over_instances_and_ranks() {
    let mut r = Router::with_kind(PolicyKind::RoundRobin);
    r.instance_up(record(1, "m", 1));
    r.instance_up(record(2, "m", 2));
    r.instance_up(record(3, "other", 1));
    let seq: Vec<(u64, u32)> = (0..6)
        .map(|_| {
            let (i, d, _) = r.route(&req("m"), &[]).expect("routable");
            (i.0, d.0)
        })
        .collect();
    // Three candidates (1/0, 2/0, 2/1), visited in a fixed cycle.
    assert_eq!(&seq[..3], &seq[3..]);
    let mut first: Vec<_> = seq[..3].to_vec();
    first.sort();
    assert_eq!(first, vec![(1, 0), (2, 0), (2, 1)]);
    let c = counts(&mut r, 300, &[]);
    assert_eq!(c.len(), 3);
    assert!(c.values().all(|&n| n == 100), "{c:?}");
}

#[test]
fn random_hits_every_candidate() {
    let mut r = Router::new(
        Box::new(RandomPolicy::with_seed(5)),
        RouterConfig::default(),
    );
    for id in 1..=4 {
        r.instance_up(record(id, "m", 1));
    }
    let c = counts(&mut r, 2000, &[]);
    assert_eq!(c.len(), 4);
    // Each expects 500; 380 is > 5 sigma away.
    assert!(c.values().all(|&n| n > 380), "{c:?}");
}

#[test]
fn least_loaded_picks_least_and_follows_reports() {
    let mut r = Router::new(Box::new(LeastLoaded::with_seed(1)), RouterConfig::default());
    r.instance_up(record(1, "m", 1));
    r.instance_up(record(2, "m", 2));
    r.load_report(load(1, 0, 50, 0));
    r.load_report(load(2, 0, 10, 2));
    r.load_report(load(2, 1, 30, 0));
    assert_eq!(
        r.route(&req("m"), &[]).map(|x| (x.0, x.1)),
        Ok((InstanceId(2), DpRank(0)))
    );
    // A new report makes instance 1 the least loaded.
    r.load_report(load(1, 0, 1, 0));
    assert_eq!(r.route(&req("m"), &[]).map(|x| x.0), Ok(InstanceId(1)));
    // Between reports each routed request counts as waiting: a burst spreads out.
    for id in 1..=2 {
        for rank in 0..2 {
            r.load_report(load(id, rank, 0, 0));
        }
    }
    let c = counts(&mut r, 30, &[]);
    assert_eq!(c.len(), 3);
    assert!(c.values().all(|&n| n == 10), "{c:?}");
}

#[test]
fn least_loaded_breaks_ties_at_random() {
    let mut p = LeastLoaded::with_seed(9);
    let cands: Vec<Candidate> = (0..3)
        .map(|i| Candidate {
            instance_id: InstanceId(i),
            dp_rank: DpRank(0),
            kv_block_size: 16,
            load: load(i, 0, if i == 2 { 99 } else { 5 }, 0),
        })
        .collect();
    let mut hits = [0usize; 3];
    for _ in 0..1000 {
        let (id, _) = p.choose(&req("m"), &cands).expect("non-empty");
        hits[id.0 as usize] += 1;
    }
    assert_eq!(hits[2], 0);
    assert!(hits[0] > 400 && hits[1] > 400, "{hits:?}");
}

#[test]
fn instance_down_removes_at_once_and_exclude_works() {
    let mut r = Router::with_kind(PolicyKind::RoundRobin);
    r.instance_up(record(1, "m", 1));
    r.instance_up(record(2, "m", 1));
    r.instance_down(InstanceId(1));
    let c = counts(&mut r, 10, &[]);
    assert_eq!(c.keys().collect::<Vec<_>>(), vec![&(2, 0)]);
    r.instance_up(record(1, "m", 1));
    let c = counts(&mut r, 10, &[InstanceId(2)]);
    assert_eq!(c.keys().collect::<Vec<_>>(), vec![&(1, 0)]);
    let e = r.route(&req("m"), &[InstanceId(1), InstanceId(2)]);
    assert_eq!(e, Err(RouteError::NoInstances("m".into())));
}

#[test]
fn error_kinds() {
    let mut r = Router::with_kind(PolicyKind::LeastLoaded);
    let e = r.route(&req("m"), &[]).expect_err("unknown model");
    assert_eq!(e, RouteError::ModelNotFound("m".into()));
    assert_eq!(e.kind(), ErrorKind::ModelNotFound);
    assert_eq!(e.kind().http_status(), 404);

    r.instance_up(record(1, "m", 2));
    r.instance_down(InstanceId(1));
    let e = r.route(&req("m"), &[]).expect_err("none alive");
    assert_eq!(e, RouteError::NoInstances("m".into()));
    assert_eq!(e.kind().http_status(), 503);
    assert!(r.models().is_empty());

    r.instance_up(record(1, "m", 2));
    // Rank 0 full with waiters: busy; rank 1 full but nothing waiting: still a candidate.
    r.load_report(load(1, 0, 99, 3));
    r.load_report(load(1, 1, 99, 0));
    assert_eq!(r.route(&req("m"), &[]).map(|x| x.1), Ok(DpRank(1)));
    // That route counted as a waiter on rank 1, so now both ranks are busy.
    let e = r.route(&req("m"), &[]).expect_err("all busy");
    assert!(
        matches!(e, RouteError::AllBusy { candidates: 2, .. }),
        "{e:?}"
    );
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    let info = e.to_error_info();
    assert_eq!(info.kind.http_status(), 503);
    assert!(info.message.contains("95%"), "{}", info.message);
    // A report under the threshold makes it routable again.
    r.load_report(load(1, 1, 90, 5));
    assert_eq!(r.route(&req("m"), &[]).map(|x| x.1), Ok(DpRank(1)));
}

#[test]
fn models_and_roles() {
    let mut r = Router::with_kind(PolicyKind::Random);
    r.instance_up(record(1, "b", 1));
    r.instance_up(record(2, "a", 1));
    r.instance_up(record(3, "a", 1));
    let mut prefill = record(4, "p", 1);
    prefill.role = WorkerRole::Prefill;
    r.instance_up(prefill);
    assert_eq!(r.models(), vec!["a", "b"]);
    assert_eq!(r.registry().live_models(), vec!["a", "b", "p"]);
    // A prefill-only model is known but has no instance this router may use.
    assert_eq!(
        r.route(&req("p"), &[]),
        Err(RouteError::NoInstances("p".into()))
    );
}

#[test]
fn policy_kind_parses_and_builds() {
    for k in PolicyKind::ALL {
        assert_eq!(k.as_str().parse::<PolicyKind>(), Ok(k));
        assert_eq!(make_policy(k).name(), k.as_str());
    }
    assert_eq!(
        "least_loaded".parse::<PolicyKind>(),
        Ok(PolicyKind::LeastLoaded)
    );
    assert_eq!("kv".parse::<PolicyKind>(), Ok(PolicyKind::Kv));
    assert_eq!("KV-Aware".parse::<PolicyKind>(), Ok(PolicyKind::Kv));
    assert!("kv-blind".parse::<PolicyKind>().is_err());
}

/// A policy that records the hooks it receives (checks the KV seam).
struct Recording {
    events: Arc<Mutex<Vec<String>>>,
}

impl RoutingPolicy for Recording {
    fn name(&self) -> &'static str {
        "recording"
    }
    fn choose(&mut self, _: &RouteRequest, c: &[Candidate]) -> Option<(InstanceId, DpRank)> {
        c.last().map(|c| (c.instance_id, c.dp_rank))
    }
    fn on_kv_events(&mut self, b: &KvEventBatch) -> Vec<(InstanceId, DpRank)> {
        if let Ok(mut e) = self.events.lock() {
            e.push(format!("kv {} {}", b.instance_id.0, b.events.len()));
        }
        Vec::new()
    }
    fn on_instance_down(&mut self, id: InstanceId) {
        if let Ok(mut e) = self.events.lock() {
            e.push(format!("down {}", id.0));
        }
    }
}

#[actix_rt::test]
async fn actor_answers_messages_and_forwards_kv_events() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let policy = Recording {
        events: events.clone(),
    };
    let addr = RouterActor::new(Router::new(Box::new(policy), RouterConfig::default())).start();
    addr.send(InstanceUp(record(7, "m", 1)))
        .await
        .expect("mailbox");
    addr.send(InstanceUp(record(8, "m", 1)))
        .await
        .expect("mailbox");
    addr.send(LoadReport(load(8, 0, 5, 0)))
        .await
        .expect("mailbox");
    let batch = KvEventBatch {
        instance_id: InstanceId(7),
        dp_rank: DpRank(0),
        block_size: 16,
        events: vec![KvEvent {
            storage_tier: Default::default(),
            event_id: 1,
            data: KvEventData::Stored {
                parent: None,
                blocks: vec![BlockHash(11), BlockHash(12)],
            },
        }],
    };
    addr.send(KvEvents(batch)).await.expect("mailbox");
    let got = addr
        .send(Route {
            req: req("m"),
            exclude: vec![],
        })
        .await
        .expect("mailbox");
    assert_eq!(got.map(|x| x.0), Ok(InstanceId(8)));
    addr.send(InstanceDown(InstanceId(8)))
        .await
        .expect("mailbox");
    let got = addr
        .send(Route {
            req: req("m"),
            exclude: vec![],
        })
        .await
        .expect("mailbox");
    assert_eq!(got.map(|x| x.0), Ok(InstanceId(7)));
    let models = addr.send(ListModels).await.expect("mailbox");
    assert_eq!(models, vec!["m".to_string()]);
    let e = addr
        .send(Route {
            req: req("nope"),
            exclude: vec![],
        })
        .await
        .expect("mailbox");
    assert_eq!(e.map_err(|e| e.kind()), Err(ErrorKind::ModelNotFound));
    let log = events.lock().map(|e| e.clone()).unwrap_or_default();
    assert_eq!(log, vec!["kv 7 1".to_string(), "down 8".to_string()]);
}
