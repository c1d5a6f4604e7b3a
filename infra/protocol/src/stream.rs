//! The response stream of a request over the bus, and the control plane.

use crate::error::ErrorInfo;
use crate::ids::RequestId;
use crate::request::EngineOutput;
use serde::{Deserialize, Serialize};

/// One message of a response stream; `seq` starts at 0 and increases by one.
/// A stream that stops without [`ChunkBody::End`] means its worker was lost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamChunk<T = EngineOutput> {
    pub seq: u64,
    pub body: ChunkBody<T>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkBody<T> {
    Payload(T),
    Error(ErrorInfo),
    /// Sent about once a second while a request is open, so that a silent stream
    /// (queued, or a long prefill) is told apart from a dead worker.
    Heartbeat,
    End,
}

/// Sent on an instance's control subject.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlMessage {
    /// Stop generating for this request and free its blocks at the next step.
    Cancel { request_id: RequestId },
    /// Stop taking new work.
    Drain,
    /// Publish a full dump of cached blocks (a router saw a gap in the event ids).
    DumpKv,
}
