//! ferrite-scheduler
