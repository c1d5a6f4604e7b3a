//! The message bus: subjects with NATS wildcards, publish/subscribe and request/reply.

mod mem;
mod nats;

pub use mem::MemBus;
pub use nats::NatsBus;

use crate::error::Result;
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use std::time::Duration;

/// A message as delivered to a subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusMessage {
    pub subject: String,
    pub reply: Option<String>,
    pub payload: Bytes,
}

/// Messaging between processes. Held as `Arc<dyn Bus>`.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<()>;
    /// Subjects may use NATS wildcards `*` and `>` in both implementations.
    /// Dropping the stream unsubscribes.
    async fn subscribe(&self, subject: &str) -> Result<BoxStream<'static, BusMessage>>;
    /// One request, one reply; no subscriber → `Err(RuntimeError::NoResponders)` at once;
    /// no reply in `timeout` → `Err(Timeout)`.
    async fn request(&self, subject: &str, payload: Bytes, timeout: Duration) -> Result<Bytes>;
    fn new_inbox(&self) -> String;
}

/// Whether `subject` matches `pattern` under NATS rules: tokens split on `.`,
/// `*` matches exactly one token, a final `>` matches one or more tokens.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Empty subjects and subjects with whitespace or empty tokens are rejected.
pub(crate) fn check_subject(subject: &str) -> Result<()> {
    if subject.is_empty()
        || subject.chars().any(char::is_whitespace)
        || subject.split('.').any(str::is_empty)
    {
        return Err(crate::error::RuntimeError::Invalid(format!(
            "bad subject {subject:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(subject_matches("a.b.c", "a.b.c"));
        assert!(!subject_matches("a.b.c", "a.b"));
        assert!(!subject_matches("a.b", "a.b.c"));
        assert!(subject_matches("a.*.c", "a.x.c"));
        assert!(!subject_matches("a.*.c", "a.x.y.c"));
        assert!(subject_matches("a.>", "a.x.y.c"));
        assert!(subject_matches("a.>", "a.x"));
        assert!(!subject_matches("a.>", "a"));
        assert!(subject_matches("*.b.>", "q.b.c.d"));
        assert!(!subject_matches("*.b.>", "q.c.c.d"));
    }

    #[test]
    fn subject_check() {
        assert!(check_subject("a.b").is_ok());
        assert!(check_subject("").is_err());
        assert!(check_subject("a..b").is_err());
        assert!(check_subject("a b").is_err());
    }
}
