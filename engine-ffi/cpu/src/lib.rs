//! ferrite-cpu: the CPU backend of Ferrite's engine: llama-family transformer forward
//! (Llama, Qwen2, Qwen3) over a paged KV cache, implementing `ferrite_engine::Executor`.

mod attention;
pub mod config;
mod error;
mod executor;
mod gguf;
mod kv_copy;
pub mod matmul;
mod model;
mod safetensors;
#[cfg(target_arch = "x86_64")]
mod simd;
mod store;
pub mod tensor;

pub use config::{Arch, Llama3Scaling, ModelConfig, RopeStyle};
pub use error::{CpuError, Result};
pub use executor::{CpuExecutor, CpuOptions};
