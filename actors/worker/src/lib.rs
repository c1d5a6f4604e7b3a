//! ferrite-worker
