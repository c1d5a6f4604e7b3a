//! Block hash → set of holding workers, as one bitset per hash in a flat arena.
//!
//! Workers are dense slots (`u32`); each indexed hash owns `words` consecutive `u64`s of
//! the arena, bit `s` set when slot `s` holds the block. The prefix query walks the
//! request's hashes once, intersecting bitsets, so its cost is bounded by the request's
//! length and the slot count / 64, not by the size of the index.

use ferrite_protocol::BlockHash;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A cheap hasher for keys that are already hashes (block hashes) or small ids: a folded
/// 64×64→128 multiply, so even small test values spread over the table.
#[derive(Clone, Copy, Debug, Default)]
pub struct FoldHasher(u64);

const MUL: u64 = 0x9E37_79B9_7F4A_7C15;

#[inline]
fn fold(x: u64) -> u64 {
    let m = u128::from(x) * u128::from(MUL);
    (m as u64) ^ ((m >> 64) as u64)
}

impl Hasher for FoldHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(buf));
        }
    }
    #[inline]
    fn write_u64(&mut self, x: u64) {
        self.0 = fold(self.0 ^ x);
    }
    #[inline]
    fn write_u32(&mut self, x: u32) {
        self.write_u64(u64::from(x));
    }
}

/// `BuildHasher` of [`FoldHasher`].
pub type FastHash = BuildHasherDefault<FoldHasher>;

/// The holders of every indexed block hash.
#[derive(Clone, Debug)]
pub(crate) struct HolderSets {
    /// `u64` words per entry (covers `words * 64` slots).
    words: usize,
    map: HashMap<BlockHash, u32, FastHash>,
    bits: Vec<u64>,
    /// Number of holders of each entry; an entry is freed when it reaches zero.
    holders: Vec<u32>,
    free: Vec<u32>,
}

impl Default for HolderSets {
    fn default() -> Self {
        Self {
            words: 1,
            map: HashMap::default(),
            bits: Vec::new(),
            holders: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl HolderSets {
    /// Number of distinct hashes held by at least one worker.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    #[cfg(test)]
    pub(crate) fn words(&self) -> usize {
        self.words
    }

    /// Makes room for `slot` (re-lays the arena out when the slot count crosses 64·words).
    pub(crate) fn ensure_slot(&mut self, slot: u32) {
        let need = slot as usize / 64 + 1;
        if need <= self.words {
            return;
        }
        let new_words = need.max(self.words * 2);
        let entries = self.holders.len();
        let mut bits = vec![0u64; entries * new_words];
        for e in 0..entries {
            bits[e * new_words..e * new_words + self.words]
                .copy_from_slice(&self.bits[e * self.words..(e + 1) * self.words]);
        }
        self.bits = bits;
        self.words = new_words;
    }

    /// Marks `slot` as holding `hash`; false when it already did.
    pub(crate) fn insert(&mut self, hash: BlockHash, slot: u32) -> bool {
        let words = self.words;
        let entry = match self.map.get(&hash) {
            Some(&e) => e as usize,
            None => {
                let e = match self.free.pop() {
                    Some(e) => e as usize,
                    None => {
                        let e = self.holders.len();
                        self.holders.push(0);
                        self.bits.resize(self.bits.len() + words, 0);
                        e
                    }
                };
                self.map.insert(hash, e as u32);
                e
            }
        };
        let (w, b) = (slot as usize / 64, 1u64 << (slot % 64));
        let word = &mut self.bits[entry * words + w];
        if *word & b != 0 {
            return false;
        }
        *word |= b;
        self.holders[entry] += 1;
        true
    }

    /// Clears `slot` from `hash`; false when it did not hold it.
    pub(crate) fn remove(&mut self, hash: BlockHash, slot: u32) -> bool {
        let Some(&e) = self.map.get(&hash) else {
            return false;
        };
        let entry = e as usize;
        let (w, b) = (slot as usize / 64, 1u64 << (slot % 64));
        let word = &mut self.bits[entry * self.words + w];
        if *word & b == 0 {
            return false;
        }
        *word &= !b;
        self.holders[entry] -= 1;
        if self.holders[entry] == 0 {
            self.map.remove(&hash);
            self.free.push(e);
        }
        true
    }

    /// The holder bitset of `hash`, `words()` long.
    #[inline]
    pub(crate) fn get(&self, hash: &BlockHash) -> Option<&[u64]> {
        let e = *self.map.get(hash)? as usize;
        Some(&self.bits[e * self.words..(e + 1) * self.words])
    }

    /// For every slot, how many leading `hashes` it holds, written into `depth` (indexed by
    /// slot, zeroed here, at least `words() * 64` long afterwards). `active` is scratch.
    pub(crate) fn prefix_depths(
        &self,
        hashes: &[BlockHash],
        depth: &mut Vec<u32>,
        active: &mut Vec<u64>,
    ) {
        depth.clear();
        depth.resize(self.words * 64, 0);
        let Some(first) = hashes.first().and_then(|h| self.get(h)) else {
            return;
        };
        active.clear();
        active.extend_from_slice(first);
        for (i, h) in hashes.iter().enumerate().skip(1) {
            let Some(held) = self.get(h) else {
                set_depth(active, depth, i as u32);
                return;
            };
            let mut any = 0u64;
            for (w, (a, hb)) in active.iter_mut().zip(held).enumerate() {
                let dropped = *a & !hb;
                if dropped != 0 {
                    set_word_depth(w, dropped, depth, i as u32);
                }
                *a &= hb;
                any |= *a;
            }
            if any == 0 {
                return;
            }
        }
        set_depth(active, depth, hashes.len() as u32);
    }
}

#[inline]
fn set_depth(active: &[u64], depth: &mut [u32], d: u32) {
    for (w, &bits) in active.iter().enumerate() {
        if bits != 0 {
            set_word_depth(w, bits, depth, d);
        }
    }
}

#[inline]
fn set_word_depth(w: usize, mut bits: u64, depth: &mut [u32], d: u32) {
    while bits != 0 {
        let b = bits.trailing_zeros() as usize;
        depth[w * 64 + b] = d;
        bits &= bits - 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_and_grow_keep_holders() {
        let mut s = HolderSets::default();
        assert!(s.insert(BlockHash(1), 3));
        assert!(!s.insert(BlockHash(1), 3));
        s.ensure_slot(130);
        assert_eq!(s.words(), 3);
        assert!(s.insert(BlockHash(1), 130));
        assert!(s.insert(BlockHash(2), 130));
        let mut depth = Vec::new();
        let mut active = Vec::new();
        s.prefix_depths(&[BlockHash(1), BlockHash(2)], &mut depth, &mut active);
        assert_eq!((depth[3], depth[130], depth[0]), (1, 2, 0));
        assert!(s.remove(BlockHash(1), 3));
        assert!(!s.remove(BlockHash(1), 3));
        assert!(s.remove(BlockHash(1), 130));
        assert_eq!(s.len(), 1);
        assert!(s.get(&BlockHash(1)).is_none());
        // The freed entry is reused with clean bits.
        assert!(s.insert(BlockHash(9), 5));
        assert_eq!(
            s.get(&BlockHash(9)).map(|b| b.to_vec()),
            Some(vec![32, 0, 0])
        );
    }
}
