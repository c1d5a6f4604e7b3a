//! ferrite-telemetry
