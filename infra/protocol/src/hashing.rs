//! Chained KV block hashes (ARCHITECTURE.md §6), shared by router and KvBlockManager.
//!
//! `local[i]` is XXH3-64 (seed = [`BLOCK_HASH_SEED`] mixed with the extra key) of the
//! little-endian u32 tokens of block `i`; the chained hash is
//! `h[0] = local[0]`, `h[i] = XXH3(h[i-1] as LE bytes ‖ local[i] as LE bytes)`.

use crate::ids::{BlockHash, TokenId};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Default number of tokens in one KV block.
pub const DEFAULT_BLOCK_SIZE: usize = 16;
/// Seed of every block hash.
pub const BLOCK_HASH_SEED: u64 = 1337;

/// Mixes an extra key (multimodal content hash, LoRA id) into the hash seed; `0` means none.
pub fn seed_for(extra_key: u64) -> u64 {
    if extra_key == 0 {
        BLOCK_HASH_SEED
    } else {
        xxh3_64_with_seed(&extra_key.to_le_bytes(), BLOCK_HASH_SEED)
    }
}

/// Hash of one block's tokens, not chained.
pub fn local_block_hash(tokens: &[TokenId], seed: u64) -> u64 {
    let mut bytes = Vec::with_capacity(tokens.len() * 4);
    for t in tokens {
        bytes.extend_from_slice(&t.to_le_bytes());
    }
    xxh3_64_with_seed(&bytes, seed)
}

/// Chains a block's local hash onto its parent's hash.
pub fn chain(parent: Option<BlockHash>, local: u64, seed: u64) -> BlockHash {
    match parent {
        None => BlockHash(local),
        Some(p) => {
            let mut buf = [0u8; 16];
            buf[..8].copy_from_slice(&p.0.to_le_bytes());
            buf[8..].copy_from_slice(&local.to_le_bytes());
            BlockHash(xxh3_64_with_seed(&buf, seed))
        }
    }
}

/// Chained hashes of every *full* block of `tokens`; a trailing partial block has no hash.
pub fn block_hashes(tokens: &[TokenId], block_size: usize, extra_key: u64) -> Vec<BlockHash> {
    let seed = seed_for(extra_key);
    let mut out = Vec::with_capacity(tokens.len() / block_size.max(1));
    let mut parent = None;
    for block in tokens.chunks_exact(block_size.max(1)) {
        let h = chain(parent, local_block_hash(block, seed), seed);
        out.push(h);
        parent = Some(h);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_block_has_no_hash_and_chain_depends_on_prefix() {
        let a: Vec<u32> = (0..40).collect();
        let h = block_hashes(&a, 16, 0);
        assert_eq!(h.len(), 2);
        let mut b = a.clone();
        b[0] = 999;
        let hb = block_hashes(&b, 16, 0);
        assert_ne!(h[0], hb[0]);
        // second block has the same tokens but a different parent
        assert_ne!(h[1], hb[1]);
        assert_eq!(h, block_hashes(&a[..32], 16, 0));
    }

    #[test]
    fn extra_key_changes_hashes() {
        let a: Vec<u32> = (0..16).collect();
        assert_ne!(block_hashes(&a, 16, 0), block_hashes(&a, 16, 7));
        assert_eq!(block_hashes(&a, 16, 7), block_hashes(&a, 16, 7));
    }

    #[test]
    fn first_hash_is_xxh3_of_le_tokens() {
        let a: Vec<u32> = vec![1; 16];
        let mut bytes = vec![];
        for t in &a {
            bytes.extend_from_slice(&t.to_le_bytes());
        }
        assert_eq!(
            block_hashes(&a, 16, 0)[0].0,
            xxh3_64_with_seed(&bytes, 1337)
        );
    }
}
