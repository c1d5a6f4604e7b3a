//! ferrite-kv: the paged KV block pool of one engine (reference counts, free list, prefix
//! cache keyed by chained block hashes, LRU eviction) and the `KvEvent`s it emits.
//!
//! [`BlockPool`] is a plain synchronous type; the scheduler owns one and calls it per step.
//! It decides which physical block holds which tokens; it never touches KV memory.
//! [`OffloadStore`] keeps blocks evicted from the engine's pool in host memory (G2) and on
//! local disk (G3), as bytes it is handed, until they are onboarded back.

pub mod error;
pub mod metrics;
mod pool;
mod prefix;
mod seq;
pub mod tiers;

pub use error::{KvError, Result};
pub use pool::{BlockPool, BlockState, Evicted};
pub use seq::SeqBlocks;
pub use tiers::{BlockSource, DiskRead, OffloadStore, TierConfig, TierStats};
