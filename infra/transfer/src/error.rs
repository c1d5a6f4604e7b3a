//! The crate's one error type.

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("transfer I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("transfer message: {0}")]
    Codec(#[from] ferrite_protocol::codec::CodecError),
    /// The two ends have different KV block layouts (refused at connect).
    #[error("{0}")]
    LayoutMismatch(String),
    /// The receiving side refused a chunk (unknown request, wrong blocks, write failed).
    #[error("receiver refused the transfer: {0}")]
    Refused(String),
    /// The transport asked for cannot be used here.
    #[error("transport unavailable: {0}")]
    Unavailable(String),
    #[error("malformed transfer: {0}")]
    Protocol(String),
}

pub type Result<T> = std::result::Result<T, TransferError>;
