//! The worker's discovery keys: registered at start, deleted on drain or when the engine is
//! lost for good (whichever comes first; deleting twice is harmless).

use ferrite_runtime::Discovery;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long leaving discovery may take before the worker goes on regardless.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(3);

pub(crate) struct Registration {
    discovery: Arc<dyn Discovery>,
    keys: Vec<String>,
    left: AtomicBool,
}

impl Registration {
    pub(crate) fn new(discovery: Arc<dyn Discovery>, keys: Vec<String>) -> Self {
        Self {
            discovery,
            keys,
            left: AtomicBool::new(false),
        }
    }

    pub(crate) async fn register(&self, key: &str, value: Vec<u8>) -> ferrite_runtime::Result<()> {
        self.discovery.register(key, value).await
    }

    /// Deletes every key (each within a few seconds; failures are logged).
    pub(crate) async fn leave(&self) {
        self.left.store(true, Ordering::SeqCst);
        for k in &self.keys {
            match tokio::time::timeout(LEAVE_TIMEOUT, self.discovery.unregister(k)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(key = %k, "unregister: {e}"),
                Err(_) => tracing::warn!(key = %k, "unregister timed out"),
            }
        }
    }

    pub(crate) fn has_left(&self) -> bool {
        self.left.load(Ordering::SeqCst)
    }
}
