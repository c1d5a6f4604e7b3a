//! The receiving end: accepts connections, checks each sender's layout, and hands every
//! chunk of blocks to the owner of the [`TransferServer`] through a channel; the sender
//! gets the owner's verdict (written or refused) before it sends the next chunk.

use crate::error::Result;
use crate::wire::{Header, Reply, read_frame, write_frame};
use crate::{KIND_TCP, KIND_UCX, TransportKind};
use ferrite_protocol::{BlockId, KvLayout, RequestId, TransferInfo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// One chunk of blocks that arrived for a request. Answer it with [`IncomingBlocks::ack`]:
/// the sender waits for the answer (dropping it unanswered refuses the chunk).
#[derive(Debug)]
pub struct IncomingBlocks {
    pub request_id: RequestId,
    /// Destination block ids on this worker, in order.
    pub blocks: Vec<BlockId>,
    /// `blocks.len() × bytes_per_block` bytes, block after block.
    pub data: Vec<u8>,
    reply: oneshot::Sender<std::result::Result<(), String>>,
}

impl IncomingBlocks {
    pub(crate) fn new(
        request_id: RequestId,
        blocks: Vec<BlockId>,
        data: Vec<u8>,
        reply: oneshot::Sender<std::result::Result<(), String>>,
    ) -> Self {
        Self {
            request_id,
            blocks,
            data,
            reply,
        }
    }

    /// Tells the sender whether the blocks were written (`Err`: why not).
    pub fn ack(self, result: std::result::Result<(), String>) {
        let _ = self.reply.send(result);
    }

    /// Splits the chunk into its contents and its acknowledgement.
    pub fn into_parts(self) -> (RequestId, Vec<BlockId>, Vec<u8>, Acker) {
        (
            self.request_id,
            self.blocks,
            self.data,
            Acker(Some(self.reply)),
        )
    }
}

/// The acknowledgement of one [`IncomingBlocks`].
#[derive(Debug)]
pub struct Acker(Option<oneshot::Sender<std::result::Result<(), String>>>);

impl Acker {
    pub fn ack(mut self, result: std::result::Result<(), String>) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(result);
        }
    }
}

/// A listening transfer endpoint. Dropping it (or [`TransferServer::shutdown`]) closes the
/// listener and every connection.
pub struct TransferServer {
    info: TransferInfo,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TransferServer {
    /// Listens for `kind`: `Tcp` binds `host:0`; `Ucx` starts a UCX worker (refused with
    /// [`crate::TransferError::Unavailable`] when UCX is missing); `Auto` does both when
    /// UCX is there (advertised as `ucx+tcp`, senders try UCX first) and TCP alone when not.
    /// Chunks from every transport arrive on the returned channel. Call inside a tokio
    /// runtime.
    pub async fn bind(
        kind: TransportKind,
        host: &str,
        layout: KvLayout,
    ) -> Result<(Self, mpsc::Receiver<IncomingBlocks>)> {
        kind.check_available()?;
        let (tx, rx) = mpsc::channel(64);
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();
        let mut tcp_addr = None;
        if kind != TransportKind::Ucx {
            let listener = TcpListener::bind((host, 0)).await?;
            let addr = listener.local_addr()?;
            tasks.push(tokio::spawn(accept_loop(
                listener,
                layout.clone(),
                tx.clone(),
                cancel.clone(),
            )));
            tcp_addr = Some(addr.to_string());
        }
        let mut ucx_addr = None;
        if kind != TransportKind::Tcp {
            match crate::ucx::listen(layout, tx, cancel.clone()) {
                Ok(l) => {
                    tasks.push(l.task);
                    ucx_addr = Some(crate::ucx::hex(&l.address));
                }
                Err(e) if kind == TransportKind::Auto => {
                    tracing::info!("UCX unavailable ({e}); KV transfers use TCP");
                }
                Err(e) => return Err(e),
            }
        }
        let info = match (ucx_addr, tcp_addr) {
            (Some(u), Some(t)) => TransferInfo {
                kind: format!("{KIND_UCX}+{KIND_TCP}"),
                addr: format!("{KIND_UCX}={u};{KIND_TCP}={t}"),
            },
            (Some(u), None) => TransferInfo {
                kind: KIND_UCX.into(),
                addr: u,
            },
            (None, Some(t)) => TransferInfo {
                kind: KIND_TCP.into(),
                addr: t,
            },
            (None, None) => {
                return Err(crate::TransferError::Unavailable(
                    "no transport could be started".into(),
                ));
            }
        };
        tracing::info!(kind = %info.kind, "KV transfer server listening");
        Ok((
            Self {
                info,
                cancel,
                tasks,
            },
            rx,
        ))
    }

    /// What goes in the discovery record.
    pub fn info(&self) -> TransferInfo {
        self.info.clone()
    }

    /// Closes the listener and every connection, and waits for them.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for TransferServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    layout: KvLayout,
    tx: mpsc::Sender<IncomingBlocks>,
    cancel: CancellationToken,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let (layout, tx, cancel) = (layout.clone(), tx.clone(), cancel.clone());
                    conns.spawn(async move {
                        tokio::select! {
                            _ = cancel.cancelled() => {}
                            r = serve_conn(stream, layout, tx) => if let Err(e) = r {
                                tracing::warn!(%peer, "KV transfer connection ended: {e}");
                            }
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("KV transfer accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
    conns.shutdown().await;
}

async fn serve_conn(
    stream: TcpStream,
    layout: KvLayout,
    tx: mpsc::Sender<IncomingBlocks>,
) -> Result<()> {
    let (mut r, mut w) = stream.into_split();
    let Some((Header::Hello { layout: theirs }, _)) = read_frame::<_, Header>(&mut r).await? else {
        let reply = Reply::refuse("the first frame must be Hello".into());
        return write_frame(&mut w, &reply, &[]).await;
    };
    if let Some(why) = layout.mismatch(&theirs) {
        tracing::error!("refusing a KV transfer connection: {why}");
        let mut reply = Reply::refuse(why);
        reply.layout_mismatch = true;
        return write_frame(&mut w, &reply, &[]).await;
    }
    write_frame(&mut w, &Reply::ok(), &[]).await?;
    while let Some((header, data)) = read_frame::<_, Header>(&mut r).await? {
        let reply = match header {
            Header::Hello { .. } | Header::UcxHello { .. } | Header::Bye => {
                Reply::refuse("unexpected handshake frame".into())
            }
            Header::Blocks { request_id, blocks } => {
                let want = blocks.len() * layout.bytes_per_block;
                if data.len() != want {
                    Reply::refuse(format!(
                        "{} blocks need {want} bytes, got {}",
                        blocks.len(),
                        data.len()
                    ))
                } else {
                    let (reply_tx, reply_rx) = oneshot::channel();
                    let chunk = IncomingBlocks {
                        request_id,
                        blocks,
                        data,
                        reply: reply_tx,
                    };
                    if tx.send(chunk).await.is_err() {
                        Reply::refuse("the receiving worker is shutting down".into())
                    } else {
                        match reply_rx.await {
                            Ok(Ok(())) => Reply::ok(),
                            Ok(Err(e)) => Reply::refuse(e),
                            Err(_) => Reply::refuse("the receiver dropped the chunk".into()),
                        }
                    }
                }
            }
        };
        write_frame(&mut w, &reply, &[]).await?;
    }
    Ok(())
}
