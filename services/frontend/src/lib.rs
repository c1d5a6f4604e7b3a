//! ferrite-frontend
