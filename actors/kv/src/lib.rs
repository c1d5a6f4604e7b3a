//! ferrite-kv: the paged KV block pool of one engine (reference counts, free list, prefix
//! cache keyed by chained block hashes, LRU eviction) and the `KvEvent`s it emits.
//!
//! [`BlockPool`] is a plain synchronous type; the scheduler owns one and calls it per step.
//! It decides which physical block holds which tokens; it never touches KV memory.

pub mod error;
pub mod metrics;
mod pool;
mod prefix;
mod seq;

pub use error::{KvError, Result};
pub use pool::{BlockPool, BlockState};
pub use seq::SeqBlocks;
