//! ferrite-router
