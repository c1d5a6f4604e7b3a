//! ferrite-cpu
