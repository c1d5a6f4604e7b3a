//! etcd-backed discovery: one lease per client, kept alive by a tracked task that
//! re-grants the lease and re-puts every registered key when the lease is lost.

use super::{Discovery, DiscoveryEvent};
use crate::error::{Result, RuntimeError};
use async_trait::async_trait;
use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use futures::StreamExt;
use futures::stream::BoxStream;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Deadline of one unary etcd call.
const OP_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Attempts of the first lease grant in [`EtcdDiscovery::connect`].
const CONNECT_ATTEMPTS: u32 = 6;

struct LeaseState {
    lease: i64,
    registered: BTreeMap<String, Vec<u8>>,
    closed: bool,
}

struct Inner {
    client: Client,
    ttl_secs: i64,
    state: Mutex<LeaseState>,
}

/// [`Discovery`] on etcd. Dropping it stops the keep-alive (keys expire after the TTL);
/// [`Discovery::shutdown`] revokes the lease at once.
pub struct EtcdDiscovery {
    inner: Arc<Inner>,
    /// Stops everything (keep-alive and watches).
    cancel: CancellationToken,
    /// Stops only the keep-alive (child of `cancel`).
    keep_alive_cancel: CancellationToken,
    keep_alive_task: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

async fn op<T>(fut: impl Future<Output = std::result::Result<T, etcd_client::Error>>) -> Result<T> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(RuntimeError::Timeout),
    }
}

fn is_lease_not_found(e: &RuntimeError) -> bool {
    matches!(e, RuntimeError::Connection(m) if m.contains("lease not found"))
}

struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(BACKOFF_MIN)
    }
    fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }
    async fn sleep(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
    }
}

impl Inner {
    async fn grant(&self) -> Result<i64> {
        let mut c = self.client.clone();
        Ok(op(c.lease_grant(self.ttl_secs, None)).await?.id())
    }

    async fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<()> {
        let mut c = self.client.clone();
        let opts = PutOptions::new().with_lease(lease);
        op(c.put(key, value, Some(opts))).await?;
        Ok(())
    }

    /// A new lease, and every registered key put under it again. On failure the lease
    /// is marked missing (0), so the next keep-alive round (or `register`) tries again.
    async fn regrant(&self, st: &mut LeaseState) -> Result<()> {
        st.lease = 0;
        let lease = self.grant().await?;
        for (k, v) in &st.registered {
            self.put(k, v, lease).await?;
        }
        st.lease = lease;
        tracing::info!(
            lease,
            keys = st.registered.len(),
            "etcd lease granted, keys put"
        );
        Ok(())
    }

    /// `Ok(true)`: alive; `Ok(false)`: the lease is gone; `Err`: etcd unreachable.
    async fn keep_alive_once(&self, lease: i64) -> Result<bool> {
        let mut c = self.client.clone();
        match op(c.lease_keep_alive(lease)).await {
            Ok(_) => Ok(true),
            Err(e) if is_lease_not_found(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn keep_alive_loop(self: Arc<Self>, cancel: CancellationToken) {
        let period = Duration::from_millis((self.ttl_secs as u64 * 1000 / 3).max(200));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            let mut st = self.state.lock().await;
            if st.closed {
                return;
            }
            let alive = if st.lease == 0 {
                Ok(false)
            } else {
                self.keep_alive_once(st.lease).await
            };
            match alive {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(lease = st.lease, "etcd lease lost; re-registering");
                    if let Err(e) = self.regrant(&mut st).await {
                        tracing::warn!(error = %e, "re-registration failed; will retry");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "etcd keep-alive failed; will retry"),
            }
        }
    }
}

impl EtcdDiscovery {
    /// Connect to `endpoints` (comma-separated URLs), grant a lease of `ttl` (whole
    /// seconds, at least 1) and start keeping it alive every `ttl / 3`.
    pub async fn connect(endpoints: &str, ttl: Duration) -> Result<Self> {
        let eps: Vec<String> = endpoints
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if eps.is_empty() {
            return Err(RuntimeError::Invalid(format!(
                "no etcd endpoints in {endpoints:?}"
            )));
        }
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(3), Duration::from_secs(3));
        let client = op(Client::connect(eps, Some(opts))).await?;
        let inner = Arc::new(Inner {
            client,
            ttl_secs: ttl.as_secs().max(1) as i64,
            state: Mutex::new(LeaseState {
                lease: 0,
                registered: BTreeMap::new(),
                closed: false,
            }),
        });
        let mut backoff = Backoff::new();
        let mut attempt = 0;
        let lease = loop {
            attempt += 1;
            match inner.grant().await {
                Ok(l) => break l,
                Err(e) if attempt >= CONNECT_ATTEMPTS => {
                    return Err(RuntimeError::Connection(format!(
                        "etcd at {endpoints}: {e}"
                    )));
                }
                Err(_) => backoff.sleep().await,
            }
        };
        inner.state.lock().await.lease = lease;
        let cancel = CancellationToken::new();
        let keep_alive_cancel = cancel.child_token();
        let task = tokio::spawn(inner.clone().keep_alive_loop(keep_alive_cancel.clone()));
        Ok(Self {
            inner,
            cancel,
            keep_alive_cancel,
            keep_alive_task: parking_lot::Mutex::new(Some(task)),
        })
    }

    /// The current lease id.
    pub async fn lease_id(&self) -> i64 {
        self.inner.state.lock().await.lease
    }

    /// Stop keeping the lease alive without revoking it, as a hung process would:
    /// the keys vanish after the TTL. For tests of lease expiry.
    pub fn stop_keep_alive(&self) {
        self.keep_alive_cancel.cancel();
    }
}

impl Drop for EtcdDiscovery {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[async_trait]
impl Discovery for EtcdDiscovery {
    async fn register(&self, key: &str, value: Vec<u8>) -> Result<()> {
        let mut st = self.inner.state.lock().await;
        if st.closed {
            return Err(RuntimeError::Closed);
        }
        st.registered.insert(key.to_string(), value.clone());
        let res = match st.lease {
            // No lease right now (a re-grant failed): get one, which puts every key.
            0 => self.inner.regrant(&mut st).await,
            lease => match self.inner.put(key, &value, lease).await {
                Err(e) if is_lease_not_found(&e) => self.inner.regrant(&mut st).await,
                other => other,
            },
        };
        if res.is_err() {
            st.registered.remove(key);
        }
        res
    }

    async fn unregister(&self, key: &str) -> Result<()> {
        let mut st = self.inner.state.lock().await;
        st.registered.remove(key);
        let mut c = self.inner.client.clone();
        op(c.delete(key, None)).await?;
        Ok(())
    }

    async fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(list(&self.inner.client, prefix)
            .await?
            .0
            .into_iter()
            .collect())
    }

    async fn watch_prefix(&self, prefix: &str) -> Result<BoxStream<'static, DiscoveryEvent>> {
        Ok(watch_stream(
            self.inner.client.clone(),
            prefix.to_string(),
            self.cancel.clone(),
        ))
    }

    async fn shutdown(&self) -> Result<()> {
        self.keep_alive_cancel.cancel();
        let task = self.keep_alive_task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let lease = {
            let mut st = self.inner.state.lock().await;
            if st.closed {
                return Ok(());
            }
            st.closed = true;
            st.registered.clear();
            st.lease
        };
        let mut c = self.inner.client.clone();
        let res = op(c.lease_revoke(lease)).await;
        self.cancel.cancel();
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_lease_not_found(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The entries under `prefix` and the store revision they were read at.
async fn list(client: &Client, prefix: &str) -> Result<(BTreeMap<String, Vec<u8>>, i64)> {
    let mut c = client.clone();
    let resp = op(c.get(prefix, Some(GetOptions::new().with_prefix()))).await?;
    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
    let map = resp
        .kvs()
        .iter()
        .filter_map(|kv| Some((kv.key_str().ok()?.to_string(), kv.value().to_vec())))
        .collect();
    Ok((map, rev))
}

/// List, emit the differences to what the consumer has seen, then follow the watch
/// from the listed revision; on any watch failure, back off and start again.
fn watch_stream(
    client: Client,
    prefix: String,
    cancel: CancellationToken,
) -> BoxStream<'static, DiscoveryEvent> {
    async_stream::stream! {
        let mut known: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut backoff = Backoff::new();
        while !cancel.is_cancelled() {
            let (now, rev) = match list(&client, &prefix).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, prefix = %prefix, "etcd list failed; retrying");
                    backoff.sleep().await;
                    continue;
                }
            };
            let gone: Vec<String> = known.keys().filter(|k| !now.contains_key(*k)).cloned().collect();
            for key in gone {
                known.remove(&key);
                yield DiscoveryEvent::Delete { key };
            }
            for (key, value) in now {
                if known.get(&key) != Some(&value) {
                    known.insert(key.clone(), value.clone());
                    yield DiscoveryEvent::Put { key, value };
                }
            }
            let mut c = client.clone();
            let wopts = WatchOptions::new().with_prefix().with_start_revision(rev + 1);
            let mut ws = match op(c.watch(prefix.as_str(), Some(wopts))).await {
                Ok(ws) => ws,
                Err(e) => {
                    tracing::debug!(error = %e, "etcd watch failed; retrying");
                    backoff.sleep().await;
                    continue;
                }
            };
            backoff.reset();
            loop {
                let msg = tokio::select! {
                    _ = cancel.cancelled() => break,
                    m = ws.message() => m,
                };
                let resp = match msg {
                    Ok(Some(r)) if !r.canceled() => r,
                    _ => break,
                };
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let Ok(key) = kv.key_str() else { continue };
                    let key = key.to_string();
                    match ev.event_type() {
                        EventType::Put => {
                            known.insert(key.clone(), kv.value().to_vec());
                            yield DiscoveryEvent::Put { key, value: kv.value().to_vec() };
                        }
                        EventType::Delete => {
                            known.remove(&key);
                            yield DiscoveryEvent::Delete { key };
                        }
                    }
                }
            }
            if !cancel.is_cancelled() {
                tracing::debug!(prefix = %prefix, "etcd watch ended; re-listing");
                backoff.sleep().await;
            }
        }
    }
    .boxed()
}
