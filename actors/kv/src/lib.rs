//! ferrite-kv
