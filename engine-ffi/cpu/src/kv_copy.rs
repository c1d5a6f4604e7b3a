//! Copying whole KV blocks out of and into the paged cache (offload tiers, KV transfer).
//!
//! Byte layout of one block: for each layer in order, the block's K rows then its V rows
//! (`block_size × kv_heads × head_dim` little-endian f32 each). Blocks follow each other.

use crate::attention::KvCache;
use crate::error::{CpuError, Result};
use ferrite_protocol::BlockId;

impl KvCache {
    /// Floats of one block in one layer's K (or V).
    fn block_floats(&self) -> usize {
        self.block_size * self.slot_width
    }

    /// Bytes of one block, all layers, K and V.
    pub fn bytes_per_block(&self) -> usize {
        self.layers.len() * 2 * self.block_floats() * 4
    }

    fn check(&self, blocks: &[BlockId], bytes: usize) -> Result<()> {
        if let Some(b) = blocks.iter().find(|b| b.0 as usize >= self.num_blocks) {
            return Err(CpuError::InvalidBatch(format!(
                "block {} beyond {} blocks",
                b.0, self.num_blocks
            )));
        }
        let want = blocks.len() * self.bytes_per_block();
        if bytes != want {
            return Err(CpuError::InvalidBatch(format!(
                "KV copy buffer has {bytes} bytes, {} blocks need {want}",
                blocks.len()
            )));
        }
        Ok(())
    }

    /// Copies `blocks` into `out` (see the module doc for the layout).
    pub fn read_blocks(&self, blocks: &[BlockId], out: &mut [u8]) -> Result<()> {
        self.check(blocks, out.len())?;
        let n = self.block_floats();
        let mut chunks = out.chunks_exact_mut(n * 4);
        for b in blocks {
            let off = b.0 as usize * n;
            for lc in &self.layers {
                for src in [&lc.k[off..off + n], &lc.v[off..off + n]] {
                    let dst = chunks.next().ok_or_else(|| short("read"))?;
                    for (d, s) in dst.chunks_exact_mut(4).zip(src) {
                        d.copy_from_slice(&s.to_le_bytes());
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes `data` (as produced by [`KvCache::read_blocks`]) into `blocks`.
    pub fn write_blocks(&mut self, blocks: &[BlockId], data: &[u8]) -> Result<()> {
        self.check(blocks, data.len())?;
        let n = self.block_floats();
        let mut chunks = data.chunks_exact(n * 4);
        for b in blocks {
            let off = b.0 as usize * n;
            for lc in &mut self.layers {
                for dst in [&mut lc.k[off..off + n], &mut lc.v[off..off + n]] {
                    let src = chunks.next().ok_or_else(|| short("write"))?;
                    for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                        *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                    }
                }
            }
        }
        Ok(())
    }
}

fn short(what: &str) -> CpuError {
    CpuError::InvalidBatch(format!("KV {what} buffer too short"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(seed: f32) -> KvCache {
        let mut c = KvCache::new(3, 8, 4, 6);
        for (li, l) in c.layers.iter_mut().enumerate() {
            for (i, x) in l.k.iter_mut().enumerate() {
                *x = seed + (li * 10_000 + i) as f32 * 0.25;
            }
            for (i, x) in l.v.iter_mut().enumerate() {
                *x = -seed - (li * 10_000 + i) as f32 * 0.5;
            }
        }
        c
    }

    #[test]
    fn read_then_write_round_trips_into_other_blocks() {
        let src = filled(1.0);
        let mut dst = filled(100.0);
        let from = [BlockId(2), BlockId(5)];
        let to = [BlockId(7), BlockId(0)];
        let mut buf = vec![0u8; 2 * src.bytes_per_block()];
        assert_eq!(src.bytes_per_block(), 3 * 2 * 4 * 6 * 4);
        src.read_blocks(&from, &mut buf).expect("read");
        dst.write_blocks(&to, &buf).expect("write");
        let n = 24;
        for li in 0..3 {
            for (f, t) in from.iter().zip(&to) {
                let (fo, to) = (f.0 as usize * n, t.0 as usize * n);
                assert_eq!(src.layers[li].k[fo..fo + n], dst.layers[li].k[to..to + n]);
                assert_eq!(src.layers[li].v[fo..fo + n], dst.layers[li].v[to..to + n]);
            }
            // Untouched blocks keep their values.
            assert_eq!(
                dst.layers[li].k[n..2 * n],
                filled(100.0).layers[li].k[n..2 * n]
            );
        }
        let mut again = vec![0u8; buf.len()];
        dst.read_blocks(&to, &mut again).expect("read back");
        assert_eq!(buf, again);
    }

    #[test]
    fn rejects_bad_block_ids_and_buffer_sizes() {
        let mut c = filled(0.0);
        let mut buf = vec![0u8; c.bytes_per_block()];
        assert!(c.read_blocks(&[BlockId(8)], &mut buf).is_err());
        assert!(c.read_blocks(&[BlockId(1), BlockId(2)], &mut buf).is_err());
        assert!(c.write_blocks(&[BlockId(1)], &buf[1..]).is_err());
        assert!(c.write_blocks(&[BlockId(1)], &buf).is_ok());
    }
}
