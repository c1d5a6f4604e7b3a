//! The request/response-stream plane on any [`Bus`]: a request is acked at once (so a
//! dead instance fails fast), then answered by sequenced [`StreamChunk`]s on the
//! client's inbox, with heartbeats while the server is alive. MessagePack throughout.

use crate::bus::{Bus, BusMessage};
use crate::error::{Result, RuntimeError, StreamError};
use bytes::Bytes;
use ferrite_protocol::codec;
use ferrite_protocol::{ChunkBody, ErrorInfo, StreamChunk};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

/// How often a live responder sends `ChunkBody::Heartbeat`.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// What the client sends: where to stream the answer, and the encoded request.
#[derive(Serialize, Deserialize)]
struct Envelope {
    reply_to: String,
    body: Bytes,
}

/// The server's immediate answer to an [`Envelope`].
#[derive(Serialize, Deserialize)]
struct Ack {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
}

/// Client-side timeouts.
#[derive(Clone, Copy, Debug)]
pub struct StreamOptions {
    /// No chunk (heartbeats included) for this long → `StreamError::Lost`.
    pub idle_timeout: Duration,
    /// How long to wait for the server's ack of the request.
    pub ack_timeout: Duration,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(5),
        }
    }
}

/// Send `req` to `subject` and return the stream of its answers.
/// Fails with `NoResponders` at once when nobody serves `subject`.
pub async fn request_stream<Req: Serialize, T: DeserializeOwned + Send + 'static>(
    bus: &Arc<dyn Bus>,
    subject: &str,
    req: &Req,
    opts: StreamOptions,
) -> Result<ResponseStream<T>> {
    let body = Bytes::from(codec::encode(req)?);
    let inbox = bus.new_inbox();
    let sub = bus.subscribe(&inbox).await?;
    let env = codec::encode(&Envelope {
        reply_to: inbox,
        body,
    })?;
    let ack_bytes = bus.request(subject, env.into(), opts.ack_timeout).await?;
    let ack: Ack = codec::decode(&ack_bytes)?;
    if !ack.ok {
        return Err(RuntimeError::Rejected(ack.error.unwrap_or_default()));
    }
    Ok(ResponseStream::new(sub, opts.idle_timeout))
}

/// The answers to one request, in order. Ends after `End`, after an error, or when
/// the stream is lost. Dropping it unsubscribes.
pub struct ResponseStream<T> {
    sub: BoxStream<'static, BusMessage>,
    next_seq: u64,
    idle_timeout: Duration,
    idle: Pin<Box<Sleep>>,
    done: bool,
    _payload: PhantomData<fn() -> T>,
}

impl<T> ResponseStream<T> {
    fn new(sub: BoxStream<'static, BusMessage>, idle_timeout: Duration) -> Self {
        Self {
            sub,
            next_seq: 0,
            idle_timeout,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            done: false,
            _payload: PhantomData,
        }
    }

    /// Changes the idle timeout from now on; the current deadline moves earlier if the new
    /// timeout ends sooner (a frontend shortens it when the instance's lease is gone: a
    /// live, draining worker keeps heartbeating, a dead one is detected quickly).
    pub fn set_idle_timeout(&mut self, idle_timeout: Duration) {
        let sooner = Instant::now() + idle_timeout;
        if sooner < self.idle.deadline() {
            self.idle.as_mut().reset(sooner);
        }
        self.idle_timeout = idle_timeout;
    }

    fn finish(
        &mut self,
        item: std::result::Result<T, StreamError>,
    ) -> Poll<Option<<Self as Stream>::Item>>
    where
        T: DeserializeOwned,
    {
        self.done = true;
        Poll::Ready(Some(item))
    }
}

impl<T: DeserializeOwned> Stream for ResponseStream<T> {
    type Item = std::result::Result<T, StreamError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.sub.poll_next_unpin(cx) {
                Poll::Ready(Some(msg)) => {
                    let chunk: StreamChunk<T> = match codec::decode(&msg.payload) {
                        Ok(c) => c,
                        Err(e) => return this.finish(Err(StreamError::Decode(e.to_string()))),
                    };
                    if chunk.seq != this.next_seq {
                        tracing::warn!(
                            expected = this.next_seq,
                            got = chunk.seq,
                            "response stream out of sequence"
                        );
                        return this.finish(Err(StreamError::Lost));
                    }
                    this.next_seq += 1;
                    let deadline = Instant::now() + this.idle_timeout;
                    this.idle.as_mut().reset(deadline);
                    match chunk.body {
                        ChunkBody::Payload(p) => return Poll::Ready(Some(Ok(p))),
                        ChunkBody::Heartbeat => continue,
                        ChunkBody::Error(info) => {
                            return this.finish(Err(StreamError::Remote(info)));
                        }
                        ChunkBody::End => {
                            this.done = true;
                            return Poll::Ready(None);
                        }
                    }
                }
                Poll::Ready(None) => return this.finish(Err(StreamError::Lost)),
                Poll::Pending => {
                    return match this.idle.as_mut().poll(cx) {
                        Poll::Ready(()) => this.finish(Err(StreamError::Lost)),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}

/// Requests arriving on a served subject, already acked.
pub type RequestStream = BoxStream<'static, IncomingRequest>;

/// Serve `subject`: every request is acked, then yielded with its responder.
pub async fn serve_requests(bus: &Arc<dyn Bus>, subject: &str) -> Result<RequestStream> {
    let sub = bus.subscribe(subject).await?;
    let bus = bus.clone();
    Ok(sub.filter_map(move |msg| accept(bus.clone(), msg)).boxed())
}

async fn accept(bus: Arc<dyn Bus>, msg: BusMessage) -> Option<IncomingRequest> {
    let Some(reply) = msg.reply else {
        tracing::warn!(subject = %msg.subject, "request without a reply subject dropped");
        return None;
    };
    let (ack, env) = match codec::decode::<Envelope>(&msg.payload) {
        Ok(env) => (
            Ack {
                ok: true,
                error: None,
            },
            Some(env),
        ),
        Err(e) => (
            Ack {
                ok: false,
                error: Some(format!("bad request envelope: {e}")),
            },
            None,
        ),
    };
    let ack = match codec::encode(&ack) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode ack");
            return None;
        }
    };
    if let Err(e) = bus.publish(&reply, ack.into()).await {
        tracing::warn!(error = %e, "cannot ack request");
        return None;
    }
    let env = env?;
    Some(IncomingRequest {
        body: env.body,
        responder: StreamResponder::start(bus, env.reply_to),
    })
}

/// One request as the server sees it.
pub struct IncomingRequest {
    /// The MessagePack-encoded request.
    pub body: Bytes,
    pub responder: StreamResponder,
}

impl IncomingRequest {
    pub fn decode<Req: DeserializeOwned>(&self) -> Result<Req> {
        Ok(codec::decode(&self.body)?)
    }
}

struct SeqState {
    next_seq: u64,
    closed: bool,
}

/// Sends one request's answers. Dropped without [`end`](Self::end) or
/// [`error`](Self::error), it goes silent — which the client reads as a lost worker.
pub struct StreamResponder {
    bus: Arc<dyn Bus>,
    subject: String,
    state: Arc<tokio::sync::Mutex<SeqState>>,
    cancel: CancellationToken,
    heartbeat: Option<JoinHandle<()>>,
}

async fn emit<T: Serialize>(
    bus: &dyn Bus,
    subject: &str,
    st: &mut SeqState,
    body: ChunkBody<T>,
) -> Result<()> {
    let chunk = StreamChunk {
        seq: st.next_seq,
        body,
    };
    bus.publish(subject, codec::encode(&chunk)?.into()).await?;
    st.next_seq += 1;
    Ok(())
}

impl StreamResponder {
    fn start(bus: Arc<dyn Bus>, subject: String) -> Self {
        let state = Arc::new(tokio::sync::Mutex::new(SeqState {
            next_seq: 0,
            closed: false,
        }));
        let cancel = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat_loop(
            bus.clone(),
            subject.clone(),
            state.clone(),
            cancel.clone(),
        ));
        Self {
            bus,
            subject,
            state,
            cancel,
            heartbeat: Some(heartbeat),
        }
    }

    /// The client's inbox this responder writes to.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Send one payload chunk.
    pub async fn send<T: Serialize>(&mut self, payload: &T) -> Result<()> {
        let mut st = self.state.lock().await;
        if st.closed {
            return Err(RuntimeError::Closed);
        }
        emit(
            &*self.bus,
            &self.subject,
            &mut st,
            ChunkBody::Payload(payload),
        )
        .await
    }

    /// End the stream with an error.
    pub async fn error(self, info: ErrorInfo) -> Result<()> {
        self.close(ChunkBody::Error(info)).await
    }

    /// End the stream normally.
    pub async fn end(self) -> Result<()> {
        self.close(ChunkBody::End).await
    }

    async fn close(mut self, body: ChunkBody<()>) -> Result<()> {
        self.cancel.cancel();
        if let Some(h) = self.heartbeat.take() {
            let _ = h.await;
        }
        let mut st = self.state.lock().await;
        if st.closed {
            return Err(RuntimeError::Closed);
        }
        st.closed = true;
        emit(&*self.bus, &self.subject, &mut st, body).await
    }
}

impl Drop for StreamResponder {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn heartbeat_loop(
    bus: Arc<dyn Bus>,
    subject: String,
    state: Arc<tokio::sync::Mutex<SeqState>>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(HEARTBEAT_INTERVAL) => {}
        }
        let mut st = state.lock().await;
        if st.closed || cancel.is_cancelled() {
            return;
        }
        if let Err(e) = emit(&*bus, &subject, &mut st, ChunkBody::<()>::Heartbeat).await {
            tracing::debug!(error = %e, subject = %subject, "heartbeat not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests may unwrap
    use super::*;
    use crate::bus::MemBus;

    /// A hand-made server: acks the request, then publishes the given chunks as-is.
    async fn fake_server(bus: &Arc<dyn Bus>, subject: &str, chunks: Vec<StreamChunk<u32>>) {
        let mut sub = bus.subscribe(subject).await.unwrap();
        let bus = bus.clone();
        tokio::spawn(async move {
            let msg = sub.next().await.unwrap();
            let env: Envelope = codec::decode(&msg.payload).unwrap();
            let ack = codec::encode(&Ack {
                ok: true,
                error: None,
            })
            .unwrap();
            bus.publish(&msg.reply.unwrap(), ack.into()).await.unwrap();
            for c in chunks {
                bus.publish(&env.reply_to, codec::encode(&c).unwrap().into())
                    .await
                    .unwrap();
            }
        });
    }

    fn chunk(seq: u64, body: ChunkBody<u32>) -> StreamChunk<u32> {
        StreamChunk { seq, body }
    }

    #[tokio::test]
    async fn gap_in_seq_is_lost_and_heartbeats_count() {
        let bus: Arc<dyn Bus> = Arc::new(MemBus::new());
        let chunks = vec![
            chunk(0, ChunkBody::Payload(7)),
            chunk(1, ChunkBody::Heartbeat),
            chunk(2, ChunkBody::Payload(8)),
            chunk(4, ChunkBody::Payload(9)),
            chunk(5, ChunkBody::End),
        ];
        fake_server(&bus, "t.gap", chunks).await;
        let s = request_stream::<_, u32>(&bus, "t.gap", &1u8, StreamOptions::default())
            .await
            .unwrap();
        let got: Vec<_> = s.collect().await;
        assert_eq!(got, vec![Ok(7), Ok(8), Err(StreamError::Lost)]);
    }

    #[tokio::test]
    async fn reordered_chunks_are_lost() {
        let bus: Arc<dyn Bus> = Arc::new(MemBus::new());
        let chunks = vec![
            chunk(1, ChunkBody::Payload(1)),
            chunk(0, ChunkBody::Payload(0)),
        ];
        fake_server(&bus, "t.ooo", chunks).await;
        let s = request_stream::<_, u32>(&bus, "t.ooo", &1u8, StreamOptions::default())
            .await
            .unwrap();
        let got: Vec<_> = s.collect().await;
        assert_eq!(got, vec![Err(StreamError::Lost)]);
    }

    #[tokio::test]
    async fn bad_envelope_is_rejected_with_a_reason() {
        let bus: Arc<dyn Bus> = Arc::new(MemBus::new());
        // The request stream acks as it is polled: drive it in the background.
        let mut reqs = serve_requests(&bus, "t.bad").await.unwrap();
        tokio::spawn(async move { while reqs.next().await.is_some() {} });
        let reply = bus
            .request("t.bad", Bytes::from_static(b"\xc1"), Duration::from_secs(2))
            .await
            .unwrap();
        let ack: Ack = codec::decode(&reply).unwrap();
        assert!(!ack.ok);
        assert!(ack.error.unwrap_or_default().contains("envelope"));
    }

    #[tokio::test]
    async fn responder_numbers_chunks_from_zero() {
        let bus: Arc<dyn Bus> = Arc::new(MemBus::new());
        let mut inbox = bus.subscribe("t.inbox").await.unwrap();
        let mut r = StreamResponder::start(bus.clone(), "t.inbox".into());
        r.send(&5u32).await.unwrap();
        r.send(&6u32).await.unwrap();
        r.end().await.unwrap();
        let mut seqs = Vec::new();
        let mut bodies = Vec::new();
        for _ in 0..3 {
            let m = inbox.next().await.unwrap();
            let c: StreamChunk<u32> = codec::decode(&m.payload).unwrap();
            seqs.push(c.seq);
            bodies.push(c.body);
        }
        assert_eq!(seqs, vec![0, 1, 2]);
        assert_eq!(
            bodies,
            vec![ChunkBody::Payload(5), ChunkBody::Payload(6), ChunkBody::End]
        );
    }
}
