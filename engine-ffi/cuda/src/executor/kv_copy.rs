//! Copying whole KV blocks between the GPU cache and host bytes (offload tiers, KV
//! transfer between workers). Byte layout per block, as the CPU engine's: for each layer,
//! its K rows then its V rows (`block_size × kv_heads × head_dim` elements each), in the
//! cache's element type; the layout's `dtype` names it, so a CPU (f32) and a CUDA (bf16)
//! worker refuse each other's blocks.

use super::CudaExecutor;
use crate::error::{CudaError, Result};
use ferrite_engine::KvBlockLayout;
use ferrite_protocol::BlockId;

impl CudaExecutor {
    pub(super) fn block_layout(&self) -> KvBlockLayout {
        let c = &self.cfg;
        KvBlockLayout {
            num_layers: c.layers as u32,
            num_kv_heads: c.kv_heads as u32,
            head_dim: c.head_dim as u32,
            block_size: self.block_size,
            dtype: self.gpu.dtype.name().to_string(),
            bytes_per_block: c.kv_block_bytes(self.block_size as usize, self.gpu.dtype),
        }
    }

    /// Bytes of one layer's K (or V) rows of one block, and the checked byte count of `n`
    /// blocks.
    fn block_bytes(&self, blocks: &[BlockId], buf_len: usize) -> Result<usize> {
        let per = self.block_size as usize * self.cfg.kv_dim() * self.gpu.dtype.bytes();
        let want = blocks.len() * self.block_layout().bytes_per_block;
        if buf_len != want {
            return Err(CudaError::InvalidBatch(format!(
                "KV copy of {} blocks needs {want} bytes, got {buf_len}",
                blocks.len()
            )));
        }
        if let Some(b) = blocks.iter().find(|b| b.0 >= self.num_blocks) {
            return Err(CudaError::InvalidBatch(format!(
                "KV copy of block {} beyond {} blocks",
                b.0, self.num_blocks
            )));
        }
        Ok(per)
    }

    pub(super) fn read_blocks(&mut self, blocks: &[BlockId], out: &mut [u8]) -> Result<()> {
        let per = self.block_bytes(blocks, out.len())?;
        let mut chunks = out.chunks_exact_mut(per);
        for b in blocks {
            let at = (b.0 as usize * per) as u64;
            for (k, v) in self.kc.iter().zip(&self.vc) {
                for src in [k.ptr, v.ptr] {
                    let dst = chunks.next().ok_or_else(|| {
                        CudaError::InvalidBatch("KV copy buffer too short".into())
                    })?;
                    self.gpu.download_into(src + at, dst)?;
                }
            }
        }
        self.gpu.sync()
    }

    pub(super) fn write_blocks(&mut self, blocks: &[BlockId], data: &[u8]) -> Result<()> {
        let per = self.block_bytes(blocks, data.len())?;
        let mut chunks = data.chunks_exact(per);
        for b in blocks {
            let at = (b.0 as usize * per) as u64;
            for (k, v) in self.kc.iter().zip(&self.vc) {
                for dst in [k.ptr, v.ptr] {
                    let src = chunks
                        .next()
                        .ok_or_else(|| CudaError::InvalidBatch("KV copy data too short".into()))?;
                    self.gpu.upload(dst + at, src)?;
                }
            }
        }
        self.gpu.sync()
    }
}
