//! The crate's error types.

use ferrite_protocol::ErrorInfo;
use ferrite_protocol::codec::CodecError;

/// Errors of discovery, the bus and the request plane.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Nobody is subscribed to the subject a request was sent to.
    #[error("no responders")]
    NoResponders,
    /// No reply arrived in time.
    #[error("timed out")]
    Timeout,
    /// The etcd or NATS connection failed, or the server refused an operation.
    #[error("connection: {0}")]
    Connection(String),
    /// A payload is over the bus's size limit (NATS `max_payload`); the message says both.
    #[error("too large: {0}")]
    TooLarge(String),
    /// A payload could not be encoded or decoded.
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
    /// The client was shut down, or the other side went away.
    #[error("closed")]
    Closed,
    /// The server refused a request before streaming (e.g. an undecodable envelope).
    #[error("rejected: {0}")]
    Rejected(String),
    /// A bad argument (empty subject, bad endpoint list).
    #[error("invalid: {0}")]
    Invalid(String),
}

impl From<etcd_client::Error> for RuntimeError {
    fn from(e: etcd_client::Error) -> Self {
        RuntimeError::Connection(format!("etcd: {e}"))
    }
}

pub type Result<T> = std::result::Result<T, RuntimeError>;

/// Why a response stream ended early.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The stream stopped without `End`: idle timeout, a gap in `seq`, or the
    /// subscription closed. The worker is presumed lost.
    #[error("stream lost")]
    Lost,
    /// The server ended the stream with an error.
    #[error("remote error: {0}")]
    Remote(ErrorInfo),
    /// A chunk could not be decoded.
    #[error("decode: {0}")]
    Decode(String),
}
