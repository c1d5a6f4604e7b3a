//! ferrite-mocker
