//! ferrite-protocol: every wire type of Ferrite (OpenAI API, requests, streams, KV events,
//! discovery records, ids, error kinds) and the block-hash function. A leaf: no I/O.

pub mod codec;
pub mod disagg;
pub mod discovery;
pub mod embeds;
pub mod error;
pub mod hashing;
pub mod ids;
pub mod kv;
pub mod openai;
pub mod request;
pub mod stream;

pub use disagg::{KvLayout, PrefillDone, RemotePrefill};
pub use discovery::{InstanceRecord, ModelRecord, TransferInfo, WorkerRole, names};
pub use embeds::{EmbedSpan, PromptEmbeds, is_embed_token};
pub use error::{ErrorInfo, ErrorKind};
pub use ids::{BlockHash, BlockId, DpRank, InstanceId, RequestId, TokenId};
pub use kv::{KvEvent, KvEventBatch, KvEventData, StorageTier, WorkerLoad};
pub use request::{
    EngineOutput, FinishReason, GuidedDecoding, PreprocessedRequest, SamplingParams,
    StopConditions, TokenLogprob,
};
pub use stream::{ChunkBody, ControlMessage, StreamChunk};
