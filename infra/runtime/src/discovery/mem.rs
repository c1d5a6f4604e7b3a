//! In-process discovery for embedded mode and tests.

use super::{Discovery, DiscoveryEvent};
use crate::error::{Result, RuntimeError};
use crate::util::receiver_stream;
use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::mpsc;

type LeaseId = u64;

#[derive(Default)]
struct Store {
    entries: BTreeMap<String, (Vec<u8>, LeaseId)>,
    watchers: Vec<(String, mpsc::UnboundedSender<DiscoveryEvent>)>,
    next_lease: LeaseId,
}

impl Store {
    fn notify(&mut self, ev: &DiscoveryEvent) {
        self.watchers.retain(|(prefix, tx)| {
            if ev.key().starts_with(prefix.as_str()) {
                tx.send(ev.clone()).is_ok()
            } else {
                !tx.is_closed()
            }
        });
    }

    fn remove_lease(&mut self, lease: LeaseId) {
        let keys: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, (_, l))| *l == lease)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.entries.remove(&key);
            self.notify(&DiscoveryEvent::Delete { key });
        }
    }
}

/// In-process [`Discovery`]. Clones share the store *and* the lease (one client);
/// [`MemDiscovery::new_client`] gives another client (own lease) on the same store.
#[derive(Clone)]
pub struct MemDiscovery {
    store: Arc<Mutex<Store>>,
    lease: LeaseId,
    closed: Arc<AtomicBool>,
}

impl Default for MemDiscovery {
    fn default() -> Self {
        Self::new()
    }
}

impl MemDiscovery {
    pub fn new() -> Self {
        Self::with_store(Arc::new(Mutex::new(Store::default())))
    }

    fn with_store(store: Arc<Mutex<Store>>) -> Self {
        let lease = {
            let mut s = store.lock();
            s.next_lease += 1;
            s.next_lease
        };
        Self {
            store,
            lease,
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Another client on the same store, with its own lease (like a second process).
    pub fn new_client(&self) -> Self {
        Self::with_store(self.store.clone())
    }

    /// Simulate the lease expiring because its owner died: its keys are deleted
    /// (watchers see `Delete`s) and this client is closed.
    pub fn expire_lease(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.store.lock().remove_lease(self.lease);
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            Err(RuntimeError::Closed)
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Discovery for MemDiscovery {
    async fn register(&self, key: &str, value: Vec<u8>) -> Result<()> {
        self.check_open()?;
        let mut s = self.store.lock();
        s.entries
            .insert(key.to_string(), (value.clone(), self.lease));
        s.notify(&DiscoveryEvent::Put {
            key: key.to_string(),
            value,
        });
        Ok(())
    }

    async fn unregister(&self, key: &str) -> Result<()> {
        self.check_open()?;
        let mut s = self.store.lock();
        if s.entries.remove(key).is_some() {
            s.notify(&DiscoveryEvent::Delete {
                key: key.to_string(),
            });
        }
        Ok(())
    }

    async fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let s = self.store.lock();
        Ok(s.entries
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect())
    }

    async fn watch_prefix(&self, prefix: &str) -> Result<BoxStream<'static, DiscoveryEvent>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut s = self.store.lock();
        for (k, (v, _)) in s
            .entries
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
        {
            // The receiver is alive here, so this cannot fail.
            let _ = tx.send(DiscoveryEvent::Put {
                key: k.clone(),
                value: v.clone(),
            });
        }
        s.watchers.push((prefix.to_string(), tx));
        Ok(receiver_stream(rx).boxed())
    }

    async fn shutdown(&self) -> Result<()> {
        self.expire_lease();
        Ok(())
    }
}
