//! ferrite-model: everything about a model that is not compute — GGUF reading and
//! dequantisation, configs, tokenizer, chat template, generation config, detokenizer.

pub mod card;
pub mod chat_template;
pub mod config;
pub mod detokenizer;
pub mod error;
pub mod generation_config;
pub mod gguf;
mod gguf_tokenizer;
pub mod progress;
pub mod rope;
pub mod tokenizer;

pub use card::{ModelCard, ModelFormat};
pub use chat_template::ChatTemplate;
pub use config::{Architecture, ModelConfig, RopeScaling};
pub use detokenizer::Detokenizer;
pub use error::{ModelError, Result};
pub use generation_config::GenerationConfig;
pub use gguf::{GgmlType, GgufFile, GgufTensorInfo, GgufValue, dequantize_row};
pub use progress::LoadProgress;
pub use tokenizer::Tokenizer;

#[cfg(test)]
mod test_util;
#[cfg(test)]
mod tests;
