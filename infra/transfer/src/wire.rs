//! Framing on a transfer connection: `[u32 LE header length][MessagePack header]
//! [u64 LE payload length][payload]`. The header says what the payload is.

use crate::error::{Result, TransferError};
use ferrite_protocol::{BlockId, KvLayout, RequestId, codec};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest header accepted (block lists of big chunks fit well below this).
const MAX_HEADER: usize = 16 << 20;
/// Largest payload of one frame.
pub(crate) const MAX_PAYLOAD: u64 = 1 << 32;

/// Sender → receiver.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum Header {
    /// First frame of a connection: the sender's layout.
    Hello { layout: KvLayout },
    /// Blocks of one request; the payload is `blocks.len() × bytes_per_block` bytes.
    Blocks {
        request_id: RequestId,
        blocks: Vec<BlockId>,
    },
    /// UCX: first frame of a connection, with the sender's worker address for replies.
    UcxHello { layout: KvLayout, reply_to: Vec<u8> },
    /// UCX: the sender closes the connection.
    Bye,
}

/// Receiver → sender, one per frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Reply {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    /// True when the refusal is a layout mismatch.
    #[serde(default)]
    pub layout_mismatch: bool,
}

impl Reply {
    pub fn ok() -> Self {
        Self {
            ok: true,
            error: None,
            layout_mismatch: false,
        }
    }
    pub fn refuse(error: String) -> Self {
        Self {
            ok: false,
            error: Some(error),
            layout_mismatch: false,
        }
    }
}

pub(crate) async fn write_frame<W: AsyncWriteExt + Unpin, H: Serialize>(
    w: &mut W,
    header: &H,
    payload: &[u8],
) -> Result<()> {
    let h = codec::encode(header)?;
    w.write_all(&(h.len() as u32).to_le_bytes()).await?;
    w.write_all(&h).await?;
    w.write_all(&(payload.len() as u64).to_le_bytes()).await?;
    if !payload.is_empty() {
        w.write_all(payload).await?;
    }
    w.flush().await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` on a clean end of stream before a frame starts.
pub(crate) async fn read_frame<R: AsyncReadExt + Unpin, H: serde::de::DeserializeOwned>(
    r: &mut R,
) -> Result<Option<(H, Vec<u8>)>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let hlen = u32::from_le_bytes(len) as usize;
    if hlen > MAX_HEADER {
        return Err(TransferError::Protocol(format!(
            "header of {hlen} bytes (limit {MAX_HEADER})"
        )));
    }
    let mut h = vec![0u8; hlen];
    r.read_exact(&mut h).await?;
    let header: H = codec::decode(&h)?;
    let mut plen = [0u8; 8];
    r.read_exact(&mut plen).await?;
    let plen = u64::from_le_bytes(plen);
    if plen > MAX_PAYLOAD {
        return Err(TransferError::Protocol(format!(
            "payload of {plen} bytes (limit {MAX_PAYLOAD})"
        )));
    }
    let mut payload = vec![0u8; plen as usize];
    r.read_exact(&mut payload).await?;
    Ok(Some((header, payload)))
}
