//! In-process bus for embedded mode and tests.

use super::{Bus, BusMessage, check_subject, subject_matches};
use crate::error::{Result, RuntimeError};
use crate::util::receiver_stream;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Default)]
struct Subs {
    next_id: u64,
    list: Vec<(u64, String, mpsc::UnboundedSender<BusMessage>)>,
}

/// In-process [`Bus`]; clones share the subscriptions.
#[derive(Clone, Default)]
pub struct MemBus {
    subs: Arc<Mutex<Subs>>,
    inbox_counter: Arc<AtomicU64>,
}

/// Removes its subscription when the subscriber's stream is dropped.
struct Unsubscribe {
    subs: Arc<Mutex<Subs>>,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        self.subs.lock().list.retain(|(id, _, _)| *id != self.id);
    }
}

impl MemBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Deliver to every matching subscriber; returns how many got it.
    fn deliver(&self, subject: &str, reply: Option<String>, payload: Bytes) -> usize {
        let mut subs = self.subs.lock();
        let mut delivered = 0;
        subs.list.retain(|(_, pattern, tx)| {
            if !subject_matches(pattern, subject) {
                return !tx.is_closed();
            }
            let msg = BusMessage {
                subject: subject.to_string(),
                reply: reply.clone(),
                payload: payload.clone(),
            };
            let ok = tx.send(msg).is_ok();
            delivered += usize::from(ok);
            ok
        });
        delivered
    }
}

#[async_trait]
impl Bus for MemBus {
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<()> {
        check_subject(subject)?;
        self.deliver(subject, None, payload);
        Ok(())
    }

    async fn subscribe(&self, subject: &str) -> Result<BoxStream<'static, BusMessage>> {
        check_subject(subject)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let id = {
            let mut subs = self.subs.lock();
            subs.next_id += 1;
            let id = subs.next_id;
            subs.list.push((id, subject.to_string(), tx));
            id
        };
        let guard = Unsubscribe {
            subs: self.subs.clone(),
            id,
        };
        Ok(receiver_stream(rx)
            .map(move |m| {
                let _keep = &guard;
                m
            })
            .boxed())
    }

    async fn request(&self, subject: &str, payload: Bytes, timeout: Duration) -> Result<Bytes> {
        check_subject(subject)?;
        let inbox = self.new_inbox();
        let mut replies = self.subscribe(&inbox).await?;
        if self.deliver(subject, Some(inbox), payload) == 0 {
            return Err(RuntimeError::NoResponders);
        }
        match tokio::time::timeout(timeout, replies.next()).await {
            Ok(Some(m)) => Ok(m.payload),
            Ok(None) => Err(RuntimeError::Closed),
            Err(_) => Err(RuntimeError::Timeout),
        }
    }

    fn new_inbox(&self) -> String {
        let n = self.inbox_counter.fetch_add(1, Ordering::Relaxed);
        format!("_INBOX.mem.{n}")
    }
}
