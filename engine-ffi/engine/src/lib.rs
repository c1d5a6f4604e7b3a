//! ferrite-engine: the `Executor` trait every backend (CPU, CUDA, the mocker) implements,
//! the batch types it consumes, and the shared sampler and logits processors.

pub mod batch;
pub mod error;
pub mod executor;
pub mod logits;
pub mod sampler;
mod topk;

pub use batch::{
    Batch, BatchOutput, ExecutorInfo, KvCacheSpec, SamplingContext, SeqInput, SeqOutput, slot_for,
};
pub use error::{EngineError, Result};
pub use executor::Executor;
pub use logits::{
    AllowedTokens, BanTokens, LogitBias, LogitsProcessor, LogitsProcessorRegistry, NoRepeatNgram,
    ProcessorContext, global_registry, register_logits_processor, validate_logits_processors,
};
pub use sampler::{SamplerScratch, sample, sample_with};
