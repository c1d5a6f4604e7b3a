//! ferrite-engine: the `Executor` trait every backend (CPU, CUDA, the mocker) implements,
//! the batch types it consumes, and the shared sampler and logits processors.

pub mod batch;
pub mod error;
pub mod executor;

pub use batch::{
    Batch, BatchOutput, ExecutorInfo, KvCacheSpec, SamplingContext, SeqInput, SeqOutput, slot_for,
};
pub use error::{EngineError, Result};
pub use executor::Executor;
