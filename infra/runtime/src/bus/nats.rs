//! NATS-backed bus (async-nats; reconnects and re-subscribes on its own).

use super::{Bus, BusMessage, check_subject};
use crate::error::{Result, RuntimeError};
use async_nats::RequestErrorKind;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use std::time::Duration;

/// [`Bus`] on a NATS server.
#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
}

impl NatsBus {
    /// Connect to `url` (e.g. `nats://127.0.0.1:4222`); fails if the server is not reachable now,
    /// later disconnections are retried for ever.
    pub async fn connect(url: &str) -> Result<Self> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(3))
            .connect(url)
            .await
            .map_err(|e| RuntimeError::Connection(format!("nats at {url}: {e}")))?;
        Ok(Self { client })
    }

    /// The underlying client, for features the trait does not cover.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// A round trip to the server: when it returns, the server has processed every
    /// command this client sent before (`flush` only empties the socket buffer).
    /// Done as a request to a fresh subject nobody serves: the server answers
    /// "no responders" itself.
    pub async fn sync_with_server(&self) -> Result<()> {
        let subject = format!("{}.sync", self.client.new_inbox());
        let req = async_nats::Request::new().timeout(Some(Duration::from_secs(5)));
        match self.client.send_request(subject, req).await {
            Ok(_) => Ok(()),
            Err(e) => match e.kind() {
                RequestErrorKind::NoResponders => Ok(()),
                RequestErrorKind::TimedOut => Err(RuntimeError::Timeout),
                _ => Err(RuntimeError::Connection(format!("nats sync: {e}"))),
            },
        }
    }

    /// Wait until everything published so far has been written to the socket.
    pub async fn flush(&self) -> Result<()> {
        self.client
            .flush()
            .await
            .map_err(|e| RuntimeError::Connection(format!("nats flush: {e}")))
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<()> {
        check_subject(subject)?;
        self.client
            .publish(subject.to_string(), payload)
            .await
            .map_err(|e| RuntimeError::Connection(format!("nats publish: {e}")))
    }

    async fn subscribe(&self, subject: &str) -> Result<BoxStream<'static, BusMessage>> {
        check_subject(subject)?;
        let sub = self
            .client
            .subscribe(subject.to_string())
            .await
            .map_err(|e| RuntimeError::Connection(format!("nats subscribe: {e}")))?;
        // Once subscribe returns, the server knows the subscription: a publish from any
        // other connection is delivered (and a request does not see "no responders").
        // Inboxes skip this: only our own later requests make anyone publish to them.
        if !subject.starts_with("_INBOX.") {
            self.sync_with_server().await?;
        }
        Ok(sub
            .map(|m| BusMessage {
                subject: m.subject.to_string(),
                reply: m.reply.map(|r| r.to_string()),
                payload: m.payload,
            })
            .boxed())
    }

    async fn request(&self, subject: &str, payload: Bytes, timeout: Duration) -> Result<Bytes> {
        check_subject(subject)?;
        let req = async_nats::Request::new()
            .payload(payload)
            .timeout(Some(timeout));
        match self.client.send_request(subject.to_string(), req).await {
            Ok(m) => Ok(m.payload),
            Err(e) => Err(match e.kind() {
                RequestErrorKind::NoResponders => RuntimeError::NoResponders,
                RequestErrorKind::TimedOut => RuntimeError::Timeout,
                RequestErrorKind::MaxPayloadExceeded => {
                    RuntimeError::TooLarge(format!("{e} (NATS max_payload)"))
                }
                _ => RuntimeError::Connection(format!("nats request: {e}")),
            }),
        }
    }

    fn new_inbox(&self) -> String {
        self.client.new_inbox()
    }
}
