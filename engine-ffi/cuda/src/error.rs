//! The one error type of the CUDA backend.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// No usable GPU: driver library missing, no device, or CUDA failed to initialise.
    #[error("no CUDA GPU available: {0}")]
    NoDevice(String),
    /// A CUDA library (NVRTC, cuBLAS) could not be loaded.
    #[error("CUDA library missing: {0}")]
    MissingLibrary(String),
    #[error("CUDA driver: {0}")]
    Driver(String),
    #[error("cuBLAS: {0}")]
    Blas(String),
    #[error("NVRTC compile of {kernel}: {message}")]
    Compile { kernel: String, message: String },
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    #[error("model: {0}")]
    Model(#[from] ferrite_model::ModelError),
}

pub type Result<T> = std::result::Result<T, CudaError>;

impl CudaError {
    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        CudaError::File {
            path: path.display().to_string(),
            message: message.into(),
        }
    }
}

impl From<cudarc::driver::DriverError> for CudaError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        CudaError::Driver(e.to_string())
    }
}

impl From<cudarc::cublas::result::CublasError> for CudaError {
    fn from(e: cudarc::cublas::result::CublasError) -> Self {
        CudaError::Blas(e.to_string())
    }
}

impl From<CudaError> for ferrite_engine::EngineError {
    fn from(e: CudaError) -> Self {
        match e {
            CudaError::InvalidBatch(m) => ferrite_engine::EngineError::InvalidBatch(m),
            CudaError::File { path, message } => {
                ferrite_engine::EngineError::File { path, message }
            }
            CudaError::Model(m) => ferrite_engine::EngineError::Model(m.to_string()),
            other => ferrite_engine::EngineError::Backend(other.to_string()),
        }
    }
}
