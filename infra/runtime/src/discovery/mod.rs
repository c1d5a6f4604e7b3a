//! Service discovery: keys under a lease that vanish when their owner dies.

mod etcd;
mod mem;

pub use etcd::EtcdDiscovery;
pub use mem::MemDiscovery;

use crate::error::Result;
use async_trait::async_trait;
use futures::stream::BoxStream;

/// Default lease TTL (ARCHITECTURE.md §4).
pub const DEFAULT_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// A change under a watched prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiscoveryEvent {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

impl DiscoveryEvent {
    pub fn key(&self) -> &str {
        match self {
            DiscoveryEvent::Put { key, .. } | DiscoveryEvent::Delete { key } => key,
        }
    }
}

/// Who is alive and what they serve. Held as `Arc<dyn Discovery>`.
#[async_trait]
pub trait Discovery: Send + Sync + 'static {
    /// Put key=value under this process's lease (TTL 10 s, kept alive); keys are re-put
    /// automatically if the lease is lost (e.g. etcd restarted).
    async fn register(&self, key: &str, value: Vec<u8>) -> Result<()>;
    async fn unregister(&self, key: &str) -> Result<()>;
    async fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>>;
    /// First the current entries as Put events, then live changes; survives etcd
    /// reconnects (re-lists and emits the differences).
    async fn watch_prefix(&self, prefix: &str) -> Result<BoxStream<'static, DiscoveryEvent>>;
    /// Revoke the lease (graceful shutdown): all keys vanish at once.
    async fn shutdown(&self) -> Result<()>;
}
