//! The sending end: one pooled connection per receiver address (a transfer holds it for
//! its duration), a layout check when a connection opens, and chunked sends that wait
//! for the receiver's verdict on each chunk.

use crate::error::{Result, TransferError};
use crate::wire::{Header, Reply, read_frame, write_frame};
use crate::{KIND_TCP, KIND_UCX, TransportKind};
use ferrite_protocol::{BlockId, KvLayout, RequestId, TransferInfo};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Mutex, OwnedMutexGuard};

/// Default size of one chunk on the wire.
pub const DEFAULT_CHUNK_BYTES: usize = 4 << 20;
/// Connecting to a receiver gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

struct Conn {
    r: OwnedReadHalf,
    w: OwnedWriteHalf,
}

/// Sends KV blocks to other workers' [`crate::TransferServer`]s.
pub struct TransferClient {
    kind: TransportKind,
    layout: KvLayout,
    chunk_bytes: usize,
    pool: parking_lot::Mutex<HashMap<String, Arc<Mutex<Option<Conn>>>>>,
    /// Present when UCX may be used (`Auto` or `Ucx`) and could be started.
    ucx: Option<crate::ucx::UcxSender>,
    ucx_pool: parking_lot::Mutex<HashMap<String, Arc<Mutex<Option<crate::ucx::UcxConn>>>>>,
}

/// The transports a receiver offers (`TransferInfo` of kind `ucx+tcp` lists both in
/// `addr` as `ucx=HEX;tcp=HOST:PORT`).
fn offers(to: &TransferInfo) -> Vec<(String, String)> {
    if to.kind.contains('+') {
        to.addr
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    } else {
        vec![(to.kind.clone(), to.addr.clone())]
    }
}

impl TransferClient {
    /// A client for blocks of `layout` over `kind`: `Tcp` only TCP, `Ucx` only UCX (an
    /// error when UCX is missing), `Auto` UCX when both ends have it, else TCP. Call inside
    /// a tokio runtime.
    pub fn new(kind: TransportKind, layout: KvLayout) -> Result<Self> {
        kind.check_available()?;
        let ucx = match kind {
            TransportKind::Tcp => None,
            TransportKind::Ucx => Some(crate::ucx::UcxSender::start()?),
            TransportKind::Auto => match crate::ucx::UcxSender::start() {
                Ok(u) => Some(u),
                Err(e) => {
                    tracing::info!("UCX unavailable ({e}); KV transfers use TCP");
                    None
                }
            },
        };
        Ok(Self {
            kind,
            layout,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            pool: parking_lot::Mutex::new(HashMap::new()),
            ucx,
            ucx_pool: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    /// Bytes per chunk on the wire (at least one block per chunk).
    pub fn with_chunk_bytes(mut self, bytes: usize) -> Self {
        self.chunk_bytes = bytes.max(1);
        self
    }

    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }

    /// Blocks per chunk.
    pub fn chunk_blocks(&self) -> usize {
        (self.chunk_bytes / self.layout.bytes_per_block.max(1)).max(1)
    }

    /// Opens (or reuses) a connection to `to` and holds it for one transfer: UCX when both
    /// ends offer it (falling back to TCP under `Auto` when UCX fails to connect), else
    /// TCP. The layout is checked when a connection opens: a mismatch is
    /// [`TransferError::LayoutMismatch`].
    pub async fn session(&self, to: &TransferInfo) -> Result<Session> {
        let offers = offers(to);
        let find = |k: &str| {
            offers
                .iter()
                .find(|(kind, _)| kind == k)
                .map(|(_, a)| a.clone())
        };
        let mut ucx_err = None;
        if let (Some(ucx), Some(addr)) = (&self.ucx, find(KIND_UCX)) {
            match self.ucx_session(ucx, &addr).await {
                Ok(s) => return Ok(s),
                Err(e @ TransferError::LayoutMismatch(_)) => return Err(e),
                Err(e) if self.kind == TransportKind::Auto => {
                    tracing::warn!("UCX connection to the receiver failed ({e}); using TCP");
                    ucx_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        if self.kind == TransportKind::Ucx {
            return Err(TransferError::Unavailable(format!(
                "--kv-transport ucx, but the receiver offers only `{}`",
                to.kind
            )));
        }
        let Some(addr) = find(KIND_TCP) else {
            return Err(ucx_err.unwrap_or_else(|| {
                TransferError::Unavailable(format!(
                    "the receiver offers `{}`, which this sender cannot use",
                    to.kind
                ))
            }));
        };
        let slot = self
            .pool
            .lock()
            .entry(addr.clone())
            .or_insert_with(|| Arc::new(Mutex::new(None)))
            .clone();
        let mut guard = slot.lock_owned().await;
        if guard.is_none() {
            *guard = Some(connect(&addr, &self.layout).await?);
        }
        Ok(Session {
            conn: Link::Tcp(guard),
            bytes_per_block: self.layout.bytes_per_block,
            chunk_blocks: self.chunk_blocks(),
        })
    }

    async fn ucx_session(&self, ucx: &crate::ucx::UcxSender, addr: &str) -> Result<Session> {
        let slot = self
            .ucx_pool
            .lock()
            .entry(addr.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(None)))
            .clone();
        let mut guard = slot.lock_owned().await;
        if guard.is_none() {
            *guard = Some(ucx.connect(addr, &self.layout).await?);
        }
        Ok(Session {
            conn: Link::Ucx(guard),
            bytes_per_block: self.layout.bytes_per_block,
            chunk_blocks: self.chunk_blocks(),
        })
    }

    /// Sends `blocks` (`data` holds them back to back) for `request_id`, chunked.
    pub async fn send(
        &self,
        to: &TransferInfo,
        request_id: RequestId,
        blocks: &[BlockId],
        data: &[u8],
    ) -> Result<()> {
        self.session(to).await?.send(request_id, blocks, data).await
    }
}

async fn connect(addr: &str, layout: &KvLayout) -> Result<Conn> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            TransferError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connecting to {addr} timed out"),
            ))
        })??;
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let mut conn = Conn { r, w };
    let hello = Header::Hello {
        layout: layout.clone(),
    };
    write_frame(&mut conn.w, &hello, &[]).await?;
    match read_frame::<_, Reply>(&mut conn.r).await? {
        Some((reply, _)) if reply.ok => Ok(conn),
        Some((reply, _)) => {
            let why = reply.error.unwrap_or_default();
            Err(if reply.layout_mismatch {
                TransferError::LayoutMismatch(why)
            } else {
                TransferError::Refused(why)
            })
        }
        None => Err(TransferError::Protocol(
            "the receiver closed the connection during the handshake".into(),
        )),
    }
}

enum Link {
    Tcp(OwnedMutexGuard<Option<Conn>>),
    Ucx(OwnedMutexGuard<Option<crate::ucx::UcxConn>>),
}

/// One transfer's hold on a connection.
pub struct Session {
    conn: Link,
    bytes_per_block: usize,
    chunk_blocks: usize,
}

impl Session {
    /// Blocks per chunk.
    pub fn chunk_blocks(&self) -> usize {
        self.chunk_blocks
    }

    /// "ucx" or "tcp".
    pub fn transport(&self) -> &'static str {
        match self.conn {
            Link::Tcp(_) => KIND_TCP,
            Link::Ucx(_) => KIND_UCX,
        }
    }

    /// Sends `blocks` (`data` holds them back to back) in chunks, each acknowledged by the
    /// receiver before the next. On any error the connection is dropped from the pool.
    pub async fn send(
        &mut self,
        request_id: RequestId,
        blocks: &[BlockId],
        data: &[u8],
    ) -> Result<()> {
        if data.len() != blocks.len() * self.bytes_per_block {
            return Err(TransferError::Protocol(format!(
                "{} blocks need {} bytes, got {}",
                blocks.len(),
                blocks.len() * self.bytes_per_block,
                data.len()
            )));
        }
        let res = self.send_inner(request_id, blocks, data).await;
        if res.is_err() {
            match &mut self.conn {
                Link::Tcp(c) => **c = None,
                Link::Ucx(c) => **c = None,
            }
        }
        res
    }

    async fn send_inner(
        &mut self,
        request_id: RequestId,
        blocks: &[BlockId],
        data: &[u8],
    ) -> Result<()> {
        let step = self.chunk_blocks;
        let bpb = self.bytes_per_block;
        for (i, chunk) in blocks.chunks(step).enumerate() {
            let start = i * step * bpb;
            let bytes = &data[start..start + chunk.len() * bpb];
            match &mut self.conn {
                Link::Tcp(c) => {
                    let Some(conn) = c.as_mut() else {
                        return Err(TransferError::Protocol("connection already failed".into()));
                    };
                    tcp_chunk(conn, request_id, chunk, bytes).await?;
                }
                Link::Ucx(c) => {
                    let Some(conn) = c.as_mut() else {
                        return Err(TransferError::Protocol("connection already failed".into()));
                    };
                    conn.send_chunk(request_id, chunk, bytes).await?;
                }
            }
        }
        Ok(())
    }
}

async fn tcp_chunk(
    conn: &mut Conn,
    request_id: RequestId,
    blocks: &[BlockId],
    bytes: &[u8],
) -> Result<()> {
    let header = Header::Blocks {
        request_id,
        blocks: blocks.to_vec(),
    };
    write_frame(&mut conn.w, &header, bytes).await?;
    match read_frame::<_, Reply>(&mut conn.r).await? {
        Some((reply, _)) if reply.ok => Ok(()),
        Some((reply, _)) => Err(TransferError::Refused(reply.error.unwrap_or_default())),
        None => Err(TransferError::Protocol(
            "the receiver closed the connection mid-transfer".into(),
        )),
    }
}
