//! ferrite-transfer: moves KV-cache blocks from a prefill worker into a decode worker's
//! cache over UCX or TCP — a receiving [`TransferServer`], a sending [`TransferClient`].

mod client;
mod error;
mod server;
mod ucx;
mod wire;

pub use client::{DEFAULT_CHUNK_BYTES, Session, TransferClient};
pub use error::{Result, TransferError};
pub use server::{Acker, IncomingBlocks, TransferServer};

/// `TransferInfo.kind` of the TCP transport.
pub const KIND_TCP: &str = "tcp";
/// `TransferInfo.kind` of the UCX transport.
pub const KIND_UCX: &str = "ucx";

/// Which transport to use (`--kv-transport`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TransportKind {
    /// The best available: UCX when built in and connectable, else TCP.
    #[default]
    Auto,
    Tcp,
    Ucx,
}

impl TransportKind {
    /// Whether the transport can be used here (`Ucx` needs `libucp.so.0` at run time).
    pub fn check_available(self) -> Result<()> {
        match self {
            TransportKind::Auto | TransportKind::Tcp => Ok(()),
            TransportKind::Ucx => ucx::available().map_err(|e| {
                TransferError::Unavailable(format!(
                    "--kv-transport ucx: {e}; use --kv-transport tcp or auto"
                ))
            }),
        }
    }

    /// Whether UCX can be loaded on this machine.
    pub fn ucx_available() -> bool {
        ucx::available().is_ok()
    }
}

impl std::str::FromStr for TransportKind {
    type Err = TransferError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "tcp" => Ok(Self::Tcp),
            "ucx" => Ok(Self::Ucx),
            other => Err(TransferError::Unavailable(format!(
                "unknown KV transport `{other}` (auto, tcp, ucx)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests;
