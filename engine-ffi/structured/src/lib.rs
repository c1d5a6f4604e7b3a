//! ferrite-structured: structured output (JSON schema, JSON object, regex, choice) enforced
//! over a model's vocabulary during sampling, through llguidance.
//!
//! The worker calls [`install`] once at start; the sampler of `ferrite-engine` then masks
//! every step of a request whose `SamplingParams::guided` is set. The frontend calls
//! [`validate`] to answer malformed constraints with a 400.

pub mod error;
pub mod grammar;
mod mask;
pub mod provider;
pub mod vocab;

pub use error::{Result, StructuredError};
pub use grammar::validate;
pub use provider::{CacheStats, StructuredProvider};
pub use vocab::{PieceEncoding, Vocab};

use std::sync::Arc;

/// Builds the provider for `tokenizer` (EOS ids `eos_ids`, e.g. the model card's
/// `eos_token_ids`) and installs it as the process-wide guided-decoding provider of
/// `ferrite-engine`.
pub fn install(tokenizer: &ferrite_model::Tokenizer, eos_ids: &[u32]) -> Result<()> {
    install_provider(tokenizer, eos_ids).map(|_| ())
}

/// [`install`], returning the provider (for statistics).
pub fn install_provider(
    tokenizer: &ferrite_model::Tokenizer,
    eos_ids: &[u32],
) -> Result<Arc<StructuredProvider>> {
    let vocab = Vocab::from_tokenizer(tokenizer, eos_ids)?;
    let provider = Arc::new(StructuredProvider::new(&vocab)?);
    ferrite_engine::set_guided_provider(provider.clone());
    tracing::info!(
        vocab = vocab.len(),
        eos = ?eos_ids,
        "structured output installed"
    );
    Ok(provider)
}
