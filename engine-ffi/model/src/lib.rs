//! ferrite-model
