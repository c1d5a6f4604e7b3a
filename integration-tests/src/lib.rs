//! ferrite-integration-tests
