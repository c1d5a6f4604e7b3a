//! The paged KV cache and grouped-query attention over it.

use crate::error::{CpuError, Result};
use crate::matmul::dot_f32;
use rayon::prelude::*;

/// One layer's K and V: `[num_blocks, block_size, kv_heads, head_dim]` each.
pub struct LayerCache {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

/// The whole cache, plus its shape.
pub struct KvCache {
    pub layers: Vec<LayerCache>,
    pub num_blocks: usize,
    pub block_size: usize,
    /// `kv_heads * head_dim`: floats per slot.
    pub slot_width: usize,
}

impl KvCache {
    pub fn new(layers: usize, num_blocks: usize, block_size: usize, slot_width: usize) -> Self {
        let n = num_blocks * block_size * slot_width;
        KvCache {
            layers: (0..layers)
                .map(|_| LayerCache {
                    k: vec![0.0; n],
                    v: vec![0.0; n],
                })
                .collect(),
            num_blocks,
            block_size,
            slot_width,
        }
    }

    pub fn slots(&self) -> usize {
        self.num_blocks * self.block_size
    }

    /// Writes rows of `k` and `v` (`slot_width` each) at the given slots of `layer`.
    pub fn write(&mut self, layer: usize, slots: &[u32], k: &[f32], v: &[f32]) -> Result<()> {
        let w = self.slot_width;
        let cap = self.slots();
        let lc = self
            .layers
            .get_mut(layer)
            .ok_or_else(|| CpuError::InvalidBatch(format!("no layer {layer}")))?;
        for (i, &slot) in slots.iter().enumerate() {
            let s = slot as usize;
            if s >= cap {
                return Err(CpuError::InvalidBatch(format!(
                    "slot {s} beyond the cache ({cap} slots)"
                )));
            }
            lc.k[s * w..(s + 1) * w].copy_from_slice(&k[i * w..(i + 1) * w]);
            lc.v[s * w..(s + 1) * w].copy_from_slice(&v[i * w..(i + 1) * w]);
        }
        Ok(())
    }
}

/// Where one new token's query reads from: its position and its sequence's block table
/// (already checked to cover `0..=pos` with ids inside the cache).
pub struct TokenCtx<'a> {
    pub pos: u32,
    pub block_table: &'a [u32],
}

/// Attention for every new token and head: `q` is `[T, heads*head_dim]` (rotated), the
/// result has the same shape. Each token attends causally to positions `0..=pos` of its own
/// sequence, read through its block table.
pub fn attend(
    cache: &KvCache,
    layer: usize,
    q: &[f32],
    tokens: &[TokenCtx<'_>],
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; q.len()];
    let lc = &cache.layers[layer];
    let group = heads / kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let bs = cache.block_size;
    let w = cache.slot_width;
    out.par_chunks_mut(head_dim)
        .enumerate()
        .with_min_len(4)
        .for_each(|(idx, o)| {
            let (ti, h) = (idx / heads, idx % heads);
            let tok = &tokens[ti];
            let kvh = h / group;
            let qh = &q[idx * head_dim..(idx + 1) * head_dim];
            let n = tok.pos as usize + 1;
            let slot = |p: usize| tok.block_table[p / bs] as usize * bs + p % bs;
            let mut scores = Vec::with_capacity(n);
            let mut max = f32::NEG_INFINITY;
            for p in 0..n {
                let off = slot(p) * w + kvh * head_dim;
                let sc = dot_f32(qh, &lc.k[off..off + head_dim]) * scale;
                max = max.max(sc);
                scores.push(sc);
            }
            let mut sum = 0f32;
            for sc in scores.iter_mut() {
                *sc = (*sc - max).exp();
                sum += *sc;
            }
            let inv = 1.0 / sum;
            for (p, sc) in scores.iter().enumerate() {
                let off = slot(p) * w + kvh * head_dim;
                let pw = sc * inv;
                for (oo, vv) in o.iter_mut().zip(&lc.v[off..off + head_dim]) {
                    *oo += pw * vv;
                }
            }
        });
    out
}
