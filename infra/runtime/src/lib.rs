//! ferrite-runtime
