//! ferrite-engine: the `Executor` trait every backend (CPU, CUDA, the mocker) implements,
//! the batch types it consumes, and the shared sampler and logits processors.

pub mod batch;
pub mod error;
pub mod executor;
pub mod fault;
pub mod logits;
pub mod sampler;
mod topk;

pub use batch::{
    Batch, BatchOutput, ExecutorInfo, KvCacheSpec, SamplingContext, SeqInput, SeqOutput, slot_for,
};
pub use error::{EngineError, Result};
pub use executor::{Executor, ExecutorFactory, KvBlockLayout};
pub use fault::{FaultInjector, FaultPlan};
pub use logits::{
    AllowedTokens, BanTokens, GuidedProvider, LogitBias, LogitsProcessor, LogitsProcessorRegistry,
    NoRepeatNgram, ProcessorContext, check_guided, global_registry, guided_provider,
    register_logits_processor, set_guided_provider, validate_logits_processors,
};
pub use sampler::{SamplerScratch, sample, sample_with, try_sample, try_sample_with};
