//! The UCX transport: tagged messages between UCP workers (shared memory, TCP, RDMA —
//! whatever UCX picks for the pair). A receiver advertises its worker address; a sender
//! connects, introduces its own address for the replies, then sends chunks, each answered
//! like over TCP. Frames: `[payload][header][u32 header length][u64 conn id]`, tag
//! [`DATA_TAG`]; replies carry tag `REPLY_BIT | conn id`.

mod ffi;
mod node;

use crate::error::{Result, TransferError};
use crate::server::IncomingBlocks;
use crate::wire::{Header, Reply};
use ferrite_protocol::{BlockId, KvLayout, RequestId, codec};
use node::{EpId, Incoming, Node};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

const DATA_TAG: u64 = 1;
const REPLY_BIT: u64 = 1 << 63;
/// How long a sender waits for the handshake answer.
const HELLO_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a sender waits for a chunk to be sent and answered (the answer includes the
/// receiver's cache write); a receiver that died is found this way.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether UCX can be loaded here (checked once).
pub(crate) fn available() -> std::result::Result<(), String> {
    static LOADED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    LOADED.get_or_init(|| ffi::load().map(|_| ())).clone()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `[payload][header][u32 header length][u64 conn id]`: the receiver truncates the trailer
/// off and hands the payload on without copying it.
fn frame(conn: u64, header: &Header, payload: &[u8]) -> Result<Vec<u8>> {
    let h = codec::encode(header)?;
    let mut out = Vec::with_capacity(payload.len() + h.len() + 12);
    out.extend_from_slice(payload);
    out.extend_from_slice(&h);
    out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    out.extend_from_slice(&conn.to_le_bytes());
    Ok(out)
}

fn unframe(mut data: Vec<u8>) -> Result<(u64, Header, Vec<u8>)> {
    let bad = || TransferError::Protocol("short UCX frame".into());
    let n = data.len();
    let conn_at = n.checked_sub(8).ok_or_else(bad)?;
    let len_at = conn_at.checked_sub(4).ok_or_else(bad)?;
    let conn = u64::from_le_bytes(data[conn_at..].try_into().map_err(|_| bad())?);
    let hlen = u32::from_le_bytes(data[len_at..conn_at].try_into().map_err(|_| bad())?) as usize;
    let h_at = len_at.checked_sub(hlen).ok_or_else(bad)?;
    let header: Header = codec::decode(&data[h_at..len_at])?;
    data.truncate(h_at);
    Ok((conn, header, data))
}

// ---- receiving side ---------------------------------------------------------------------

/// A listening UCX endpoint (its worker address is what senders connect to).
pub(crate) struct UcxListener {
    pub address: Vec<u8>,
    pub task: tokio::task::JoinHandle<()>,
}

pub(crate) fn listen(
    layout: KvLayout,
    tx: mpsc::Sender<IncomingBlocks>,
    cancel: CancellationToken,
) -> Result<UcxListener> {
    let (node, rx) = Node::start().map_err(TransferError::Unavailable)?;
    let node = Arc::new(node);
    let address = node.address().to_vec();
    let task = tokio::spawn(serve(node, rx, layout, tx, cancel));
    Ok(UcxListener { address, task })
}

async fn serve(
    node: Arc<Node>,
    mut rx: mpsc::UnboundedReceiver<Incoming>,
    layout: KvLayout,
    tx: mpsc::Sender<IncomingBlocks>,
    cancel: CancellationToken,
) {
    let mut conns: HashMap<u64, EpId> = HashMap::new();
    let mut chunks = JoinSet::new();
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = chunks.join_next(), if !chunks.is_empty() => continue,
            m = rx.recv() => match m {
                Some(m) => m,
                None => break,
            },
        };
        if msg.tag != DATA_TAG {
            continue;
        }
        let (conn, header, payload) = match unframe(msg.data) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("bad UCX frame: {e}");
                continue;
            }
        };
        match header {
            Header::UcxHello {
                layout: theirs,
                reply_to,
            } => {
                let ep = match node.connect(reply_to).await {
                    Ok(ep) => ep,
                    Err(e) => {
                        tracing::warn!("UCX: cannot reach a sender back: {e}");
                        continue;
                    }
                };
                let reply = match layout.mismatch(&theirs) {
                    None => {
                        conns.insert(conn, ep);
                        Reply::ok()
                    }
                    Some(why) => {
                        tracing::error!("refusing a UCX KV transfer connection: {why}");
                        let mut r = Reply::refuse(why);
                        r.layout_mismatch = true;
                        r
                    }
                };
                send_reply(&node, ep, conn, &reply).await;
                if !reply.ok {
                    node.close(ep);
                }
            }
            Header::Blocks { request_id, blocks } => {
                let Some(&ep) = conns.get(&conn) else {
                    continue;
                };
                let (node, tx, bpb) = (node.clone(), tx.clone(), layout.bytes_per_block);
                chunks.spawn(async move {
                    let reply = deliver(&tx, request_id, blocks, payload, bpb).await;
                    send_reply(&node, ep, conn, &reply).await;
                });
            }
            Header::Bye => {
                if let Some(ep) = conns.remove(&conn) {
                    node.close(ep);
                }
            }
            Header::Hello { .. } => {}
        }
    }
    chunks.shutdown().await;
}

async fn deliver(
    tx: &mpsc::Sender<IncomingBlocks>,
    request_id: RequestId,
    blocks: Vec<BlockId>,
    data: Vec<u8>,
    bytes_per_block: usize,
) -> Reply {
    let want = blocks.len() * bytes_per_block;
    if data.len() != want {
        return Reply::refuse(format!(
            "{} blocks need {want} bytes, got {}",
            blocks.len(),
            data.len()
        ));
    }
    let (reply_tx, reply_rx) = oneshot::channel();
    if tx
        .send(IncomingBlocks::new(request_id, blocks, data, reply_tx))
        .await
        .is_err()
    {
        return Reply::refuse("the receiving worker is shutting down".into());
    }
    match reply_rx.await {
        Ok(Ok(())) => Reply::ok(),
        Ok(Err(e)) => Reply::refuse(e),
        Err(_) => Reply::refuse("the receiver dropped the chunk".into()),
    }
}

async fn send_reply(node: &Node, ep: EpId, conn: u64, reply: &Reply) {
    match codec::encode(reply) {
        Ok(bytes) => {
            if let Err(e) = node.send(ep, REPLY_BIT | conn, bytes).await {
                tracing::warn!("UCX reply failed: {e}");
            }
        }
        Err(e) => tracing::error!("encoding a reply: {e}"),
    }
}

// ---- sending side -----------------------------------------------------------------------

type Routes = Arc<parking_lot::Mutex<HashMap<u64, mpsc::UnboundedSender<Vec<u8>>>>>;

/// A sender's UCX node and the routing of replies to connections.
pub(crate) struct UcxSender {
    node: Arc<Node>,
    routes: Routes,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for UcxSender {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl UcxSender {
    pub(crate) fn start() -> Result<Self> {
        let (node, mut rx) = Node::start().map_err(TransferError::Unavailable)?;
        let routes: Routes = Arc::default();
        let r2 = routes.clone();
        let task = tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if m.tag & REPLY_BIT != 0
                    && let Some(tx) = r2.lock().get(&(m.tag & !REPLY_BIT))
                {
                    let _ = tx.send(m.data);
                }
            }
        });
        Ok(Self {
            node: Arc::new(node),
            routes,
            task,
        })
    }

    /// Connects to the worker at `addr` (hex) and checks layouts.
    pub(crate) async fn connect(&self, addr: &str, layout: &KvLayout) -> Result<UcxConn> {
        let remote = unhex(addr)
            .ok_or_else(|| TransferError::Protocol(format!("bad UCX address `{addr}`")))?;
        let ep = self
            .node
            .connect(remote)
            .await
            .map_err(TransferError::Unavailable)?;
        let conn_id = loop {
            let id = (uuid_like() & !REPLY_BIT) | 1;
            if !self.routes.lock().contains_key(&id) {
                break id;
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        self.routes.lock().insert(conn_id, tx);
        let mut conn = UcxConn {
            node: self.node.clone(),
            routes: self.routes.clone(),
            ep,
            conn_id,
            replies: rx,
        };
        let hello = Header::UcxHello {
            layout: layout.clone(),
            reply_to: self.node.address().to_vec(),
        };
        let reply = conn.round_trip(&hello, &[], HELLO_TIMEOUT).await?;
        if !reply.ok {
            let why = reply.error.unwrap_or_default();
            return Err(if reply.layout_mismatch {
                TransferError::LayoutMismatch(why)
            } else {
                TransferError::Refused(why)
            });
        }
        Ok(conn)
    }
}

fn uuid_like() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// One sender→receiver UCX connection.
pub(crate) struct UcxConn {
    node: Arc<Node>,
    routes: Routes,
    ep: EpId,
    conn_id: u64,
    replies: mpsc::UnboundedReceiver<Vec<u8>>,
}

impl UcxConn {
    async fn round_trip(
        &mut self,
        header: &Header,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Reply> {
        let bytes = frame(self.conn_id, header, payload)?;
        let late = || TransferError::Protocol(format!("no UCX answer within {timeout:?}"));
        let exchange = async {
            self.node
                .send(self.ep, DATA_TAG, bytes)
                .await
                .map_err(|e| TransferError::Protocol(format!("UCX send: {e}")))?;
            self.replies
                .recv()
                .await
                .ok_or_else(|| TransferError::Protocol("UCX sender stopped".into()))
        };
        let reply = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| late())??;
        Ok(codec::decode(&reply)?)
    }

    /// Sends one chunk and waits for the receiver's verdict.
    pub(crate) async fn send_chunk(
        &mut self,
        request_id: RequestId,
        blocks: &[BlockId],
        data: &[u8],
    ) -> Result<()> {
        let header = Header::Blocks {
            request_id,
            blocks: blocks.to_vec(),
        };
        let reply = self.round_trip(&header, data, CHUNK_TIMEOUT).await?;
        if reply.ok {
            Ok(())
        } else {
            Err(TransferError::Refused(reply.error.unwrap_or_default()))
        }
    }
}

impl Drop for UcxConn {
    fn drop(&mut self) {
        self.routes.lock().remove(&self.conn_id);
        self.node.close(self.ep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let h = Header::Blocks {
            request_id: RequestId::new(),
            blocks: vec![BlockId(4), BlockId(9)],
        };
        let f = frame(77, &h, &[1, 2, 3]).unwrap();
        let (conn, back, payload) = unframe(f).unwrap();
        assert_eq!((conn, back, payload), (77, h, vec![1, 2, 3]));
        assert!(unframe(vec![1, 2, 3]).is_err());
    }

    #[test]
    fn hex_round_trips() {
        let b = vec![0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&b), "0001abff");
        assert_eq!(unhex("0001abff"), Some(b));
        assert_eq!(unhex("0g"), None);
        assert_eq!(unhex("abc"), None);
    }
}
