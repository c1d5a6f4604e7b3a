//! ferrite-cuda: the CUDA backend of Ferrite's engine — Llama-family forward passes over a
//! paged bf16 (or f32) KV cache on an NVIDIA GPU, implementing `ferrite_engine::Executor`.
//!
//! Libraries are opened at run time (`cudarc` dynamic loading), so the crate builds and its
//! CPU-side tests run on machines without CUDA; constructing an executor there returns
//! [`CudaError::NoDevice`]. Kernels are `src/kernels/*.cu`, compiled by NVRTC on first use.

pub mod config;
pub mod device;
mod error;
mod executor;
pub mod gemm;
pub mod kernels;
pub mod reference;
pub mod step;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tune;
pub mod weights;

pub use config::{CudaConfig, Dtype};
pub use device::probe;
pub use error::{CudaError, Result};
pub use executor::{
    CudaExecutor, CudaOptions, GRAPH_MAX_ROWS, INVARIANT_ROWS, KV_RESERVE_FRACTION, MMA_MAX_ROWS,
};
