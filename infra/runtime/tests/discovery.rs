//! Discovery conformance: one suite, run against `MemDiscovery` and `EtcdDiscovery`
//! (real etcd from the harness).
#![allow(clippy::unwrap_used)] // tests may unwrap

use ferrite_runtime::testing::EtcdServer;
use ferrite_runtime::{Discovery, DiscoveryEvent, EtcdDiscovery, MemDiscovery};
use futures::StreamExt;
use futures::stream::BoxStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Events = BoxStream<'static, DiscoveryEvent>;

async fn next_event(w: &mut Events, within: Duration) -> DiscoveryEvent {
    match tokio::time::timeout(within, w.next()).await {
        Ok(Some(ev)) => ev,
        Ok(None) => panic!("watch stream ended"),
        Err(_) => panic!("no discovery event within {within:?}"),
    }
}

fn put(key: &str, value: &[u8]) -> DiscoveryEvent {
    DiscoveryEvent::Put {
        key: key.into(),
        value: value.to_vec(),
    }
}

fn del(key: &str) -> DiscoveryEvent {
    DiscoveryEvent::Delete { key: key.into() }
}

/// Poll `get_prefix` until it equals `want` or `within` passes.
async fn wait_for_entries(
    d: &dyn Discovery,
    prefix: &str,
    want: &[(&str, &[u8])],
    within: Duration,
) {
    let want: Vec<(String, Vec<u8>)> = want
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect();
    let deadline = Instant::now() + within;
    loop {
        let got = d.get_prefix(prefix).await;
        if got.as_ref().is_ok_and(|g| *g == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "entries under {prefix} are {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const T: Duration = Duration::from_secs(5);

/// register / get / watch (puts and deletes in order) / unregister / shutdown, with
/// `b` a second client that sees `a`'s keys.
async fn suite_register_watch_shutdown(a: Arc<dyn Discovery>, b: Arc<dyn Discovery>) {
    a.register("t/svc/1", b"one".to_vec()).await.unwrap();
    a.register("t/other/x", b"x".to_vec()).await.unwrap();
    assert_eq!(
        b.get_prefix("t/svc/").await.unwrap(),
        vec![("t/svc/1".to_string(), b"one".to_vec())]
    );
    let mut w = b.watch_prefix("t/svc/").await.unwrap();
    assert_eq!(next_event(&mut w, T).await, put("t/svc/1", b"one"));

    a.register("t/svc/2", b"two".to_vec()).await.unwrap();
    a.register("t/svc/1", b"uno".to_vec()).await.unwrap();
    a.unregister("t/svc/2").await.unwrap();
    b.register("t/svc/3", b"three".to_vec()).await.unwrap();
    assert_eq!(next_event(&mut w, T).await, put("t/svc/2", b"two"));
    assert_eq!(next_event(&mut w, T).await, put("t/svc/1", b"uno"));
    assert_eq!(next_event(&mut w, T).await, del("t/svc/2"));
    assert_eq!(next_event(&mut w, T).await, put("t/svc/3", b"three"));
    assert_eq!(
        a.get_prefix("t/svc/").await.unwrap(),
        vec![
            ("t/svc/1".to_string(), b"uno".to_vec()),
            ("t/svc/3".to_string(), b"three".to_vec())
        ]
    );

    // Graceful shutdown: a's keys vanish at once, b's stay.
    a.shutdown().await.unwrap();
    assert_eq!(next_event(&mut w, T).await, del("t/svc/1"));
    assert_eq!(
        b.get_prefix("t/").await.unwrap(),
        vec![("t/svc/3".to_string(), b"three".to_vec())]
    );
    assert!(a.register("t/svc/9", b"late".to_vec()).await.is_err());
}

/// `kill` stops `a`'s keep-alive without a graceful shutdown: its keys must vanish
/// within `within`, and the observer's watch must see the delete.
async fn suite_lease_expiry(
    a: Arc<dyn Discovery>,
    observer: Arc<dyn Discovery>,
    kill: impl FnOnce(),
    within: Duration,
) {
    a.register("t/lease/a", b"a".to_vec()).await.unwrap();
    observer.register("t/lease/o", b"o".to_vec()).await.unwrap();
    let mut w = observer.watch_prefix("t/lease/").await.unwrap();
    assert_eq!(next_event(&mut w, T).await, put("t/lease/a", b"a"));
    assert_eq!(next_event(&mut w, T).await, put("t/lease/o", b"o"));
    let killed_at = Instant::now();
    kill();
    assert_eq!(next_event(&mut w, within).await, del("t/lease/a"));
    assert!(killed_at.elapsed() <= within);
    assert_eq!(
        observer.get_prefix("t/lease/").await.unwrap(),
        vec![("t/lease/o".to_string(), b"o".to_vec())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_register_watch_shutdown() {
    let a = MemDiscovery::new();
    let b = a.new_client();
    suite_register_watch_shutdown(Arc::new(a), Arc::new(b)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_lease_expiry() {
    let a = MemDiscovery::new();
    let o = a.new_client();
    let killer = a.clone();
    suite_lease_expiry(Arc::new(a), Arc::new(o), move || killer.expire_lease(), T).await;
}

const TTL: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_register_watch_shutdown() {
    let etcd = EtcdServer::start().unwrap();
    let a = EtcdDiscovery::connect(&etcd.url(), TTL).await.unwrap();
    let b = EtcdDiscovery::connect(&etcd.url(), TTL).await.unwrap();
    suite_register_watch_shutdown(Arc::new(a), Arc::new(b)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_lease_expiry() {
    let etcd = EtcdServer::start().unwrap();
    let a = Arc::new(EtcdDiscovery::connect(&etcd.url(), TTL).await.unwrap());
    let o = EtcdDiscovery::connect(&etcd.url(), TTL).await.unwrap();
    let killer = a.clone();
    // TTL 2 s: the key must be gone well before 2 × TTL + slack.
    suite_lease_expiry(a, Arc::new(o), move || killer.stop_keep_alive(), TTL * 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_keys_outlive_the_ttl_while_kept_alive() {
    let etcd = EtcdServer::start().unwrap();
    let a = EtcdDiscovery::connect(&etcd.url(), TTL).await.unwrap();
    a.register("t/alive/a", b"a".to_vec()).await.unwrap();
    tokio::time::sleep(TTL * 3).await;
    assert_eq!(
        a.get_prefix("t/alive/").await.unwrap(),
        vec![("t/alive/a".to_string(), b"a".to_vec())]
    );
}

/// etcd loses every key and lease (killed, data wiped, restarted on the same port):
/// the client re-grants and re-puts its keys, and a watch that lived through the
/// outage sees them come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_reregisters_after_restart_with_data_loss() {
    let mut etcd = EtcdServer::start().unwrap();
    let a = EtcdDiscovery::connect(&etcd.url(), TTL).await.unwrap();
    let w_client = EtcdDiscovery::connect(&etcd.url(), TTL).await.unwrap();
    a.register("t/re/1", b"one".to_vec()).await.unwrap();
    a.register("t/re/2", b"two".to_vec()).await.unwrap();
    let mut w = w_client.watch_prefix("t/re/").await.unwrap();
    assert_eq!(next_event(&mut w, T).await, put("t/re/1", b"one"));
    assert_eq!(next_event(&mut w, T).await, put("t/re/2", b"two"));
    let old_lease = a.lease_id().await;

    etcd.restart_wiped().unwrap();
    let restarted = Instant::now();
    wait_for_entries(
        &a,
        "t/re/",
        &[("t/re/1", b"one"), ("t/re/2", b"two")],
        T * 2,
    )
    .await;
    eprintln!("keys back {:?} after restart", restarted.elapsed());
    assert_ne!(a.lease_id().await, old_lease);

    // The watch lived through the outage: after re-listing it has both keys again
    // (Puts; Deletes first if it saw the empty store in between), and sees new changes.
    a.register("t/re/3", b"three".to_vec()).await.unwrap();
    // `seen` is the watcher's view: what it had before the outage, updated by events.
    let mut seen: std::collections::BTreeMap<String, Vec<u8>> = [
        ("t/re/1".to_string(), b"one".to_vec()),
        ("t/re/2".to_string(), b"two".to_vec()),
    ]
    .into();
    let mut deletes = 0;
    while !seen.contains_key("t/re/3") {
        match next_event(&mut w, T * 2).await {
            DiscoveryEvent::Put { key, value } => seen.insert(key, value),
            DiscoveryEvent::Delete { key } => {
                deletes += 1;
                seen.remove(&key)
            }
        };
    }
    eprintln!("watcher saw {deletes} deletes during the outage");
    assert_eq!(seen.get("t/re/1").map(Vec::as_slice), Some(&b"one"[..]));
    assert_eq!(seen.get("t/re/2").map(Vec::as_slice), Some(&b"two"[..]));
}

/// etcd killed and restarted with its data: the lease survives, keep-alive resumes
/// (keys still there after 3 × TTL) and the watch keeps delivering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_survives_plain_restart() {
    let mut etcd = EtcdServer::start().unwrap();
    let a = EtcdDiscovery::connect(&etcd.url(), TTL).await.unwrap();
    a.register("t/pr/1", b"one".to_vec()).await.unwrap();
    let mut w = a.watch_prefix("t/pr/").await.unwrap();
    assert_eq!(next_event(&mut w, T).await, put("t/pr/1", b"one"));
    etcd.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    etcd.restart().unwrap();
    wait_for_entries(&a, "t/pr/", &[("t/pr/1", b"one")], T).await;
    a.register("t/pr/2", b"two".to_vec()).await.unwrap();
    assert_eq!(next_event(&mut w, T * 2).await, put("t/pr/2", b"two"));
    tokio::time::sleep(TTL * 3).await;
    wait_for_entries(&a, "t/pr/", &[("t/pr/1", b"one"), ("t/pr/2", b"two")], T).await;
}

/// Someone revokes the lease behind the client's back: keys vanish, then come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_reregisters_after_lease_revoked() {
    let etcd = EtcdServer::start().unwrap();
    let a = EtcdDiscovery::connect(&etcd.url(), TTL).await.unwrap();
    a.register("t/rv/1", b"one".to_vec()).await.unwrap();
    let mut raw = etcd_client::Client::connect([etcd.url()], None)
        .await
        .unwrap();
    raw.lease_revoke(a.lease_id().await).await.unwrap();
    assert!(a.get_prefix("t/rv/").await.unwrap().is_empty());
    wait_for_entries(&a, "t/rv/", &[("t/rv/1", b"one")], T).await;
}

#[tokio::test]
async fn etcd_connect_fails_clearly_without_server() {
    let port = ferrite_runtime::testing::free_ports(1).unwrap()[0];
    let started = Instant::now();
    let err = EtcdDiscovery::connect(&format!("http://127.0.0.1:{port}"), TTL).await;
    assert!(err.is_err());
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(EtcdDiscovery::connect(" , ", TTL).await.is_err());
}
