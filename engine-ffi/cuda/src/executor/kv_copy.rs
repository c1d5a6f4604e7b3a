//! Copying whole KV blocks between the GPU cache and host bytes (offload tiers, KV
//! transfer between workers). Byte layout per block, as the CPU engine's: for each layer,
//! its K rows then its V rows (`block_size × kv_heads × head_dim` elements each), in the
//! cache's element type; the layout's `dtype` names it, so a CPU (f32) and a CUDA (bf16)
//! worker refuse each other's blocks.
//!
//! A copy goes through a device staging buffer (one kernel gathers or scatters the listed
//! blocks of every layer) and page-locked host memory (one DMA per chunk of blocks), so it
//! runs at PCIe speed instead of one small pageable copy per layer and block.

use super::CudaExecutor;
use crate::device::{DevBuf, KArg};
use crate::error::{CudaError, Result};
use cudarc::driver::PinnedHostSlice;
use ferrite_engine::KvBlockLayout;
use ferrite_protocol::BlockId;

/// Most bytes staged per copy chunk (device staging and pinned host buffer each).
const CHUNK_BYTES: usize = 64 << 20;

/// Buffers of the KV copy path, allocated at the first copy.
#[derive(Default)]
pub(super) struct KvStaging {
    /// Device addresses of every layer's K and V cache (`2 × layers` u64).
    caches: Option<DevBuf>,
    ids: Option<DevBuf>,
    dev: Option<DevBuf>,
    host: Option<PinnedHostSlice<u8>>,
}

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

    /// Checks a copy of `blocks` against a buffer of `buf_len` bytes; returns the bytes of
    /// one layer's K (or V) rows of one block.
    fn check_copy(&self, blocks: &[BlockId], buf_len: usize) -> Result<usize> {
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
        Ok(self.block_size as usize * self.cfg.kv_dim() * self.gpu.dtype.bytes())
    }

    /// Blocks per chunk, with the staging buffers sized for it.
    fn staging_for(&mut self) -> Result<usize> {
        let bpb = self.block_layout().bytes_per_block.max(1);
        let per_chunk = (CHUNK_BYTES / bpb).max(1);
        let st = &mut self.kv_staging;
        if st.caches.is_none() {
            let ptrs: Vec<u64> = self
                .kc
                .iter()
                .zip(&self.vc)
                .flat_map(|(k, v)| [k.ptr, v.ptr])
                .collect();
            let buf = self.gpu.alloc(ptrs.len() * 8)?;
            self.gpu.upload(buf.ptr, &ptrs)?;
            st.caches = Some(buf);
            st.ids = Some(self.gpu.alloc(per_chunk * 4)?);
            st.dev = Some(self.gpu.alloc(per_chunk * bpb)?);
            st.host = Some(self.gpu.alloc_pinned(per_chunk * bpb)?);
        }
        Ok(per_chunk)
    }

    /// Gathers (`gather`) or scatters the blocks `ids` between the cache and the device
    /// staging buffer.
    fn stage(&self, ids: &[BlockId], per: usize, gather: bool) -> Result<()> {
        let st = &self.kv_staging;
        let (Some(caches), Some(idb), Some(dev)) = (&st.caches, &st.ids, &st.dev) else {
            return Err(CudaError::Driver("KV staging buffers missing".into()));
        };
        let raw: Vec<i32> = ids.iter().map(|b| b.0 as i32).collect();
        self.gpu.upload(idb.ptr, &raw)?;
        self.gpu.launch(
            &self.gpu.k.kv_blocks_copy,
            (ids.len() as u32, 2 * self.kc.len() as u32, 1),
            256,
            &[
                KArg::U64(caches.ptr),
                KArg::U64(idb.ptr),
                KArg::U64(dev.ptr),
                KArg::I64(per as i64),
                KArg::I32(i32::from(gather)),
            ],
        )
    }

    pub(super) fn read_blocks(&mut self, blocks: &[BlockId], out: &mut [u8]) -> Result<()> {
        let per = self.check_copy(blocks, out.len())?;
        let chunk = self.staging_for()?;
        let bpb = self.block_layout().bytes_per_block;
        for (ids, dst) in blocks.chunks(chunk).zip(out.chunks_mut(chunk * bpb)) {
            self.stage(ids, per, true)?;
            let dev = self.kv_staging.dev.as_ref().map_or(0, |d| d.ptr);
            let Some(host) = self.kv_staging.host.as_mut() else {
                return Err(CudaError::Driver("KV staging buffers missing".into()));
            };
            let pinned = &mut host.as_mut_slice()?[..dst.len()];
            self.gpu.download_pinned(dev, pinned)?;
            dst.copy_from_slice(pinned);
        }
        Ok(())
    }

    pub(super) fn write_blocks(&mut self, blocks: &[BlockId], data: &[u8]) -> Result<()> {
        let per = self.check_copy(blocks, data.len())?;
        let chunk = self.staging_for()?;
        let bpb = self.block_layout().bytes_per_block;
        for (ids, src) in blocks.chunks(chunk).zip(data.chunks(chunk * bpb)) {
            let dev = self.kv_staging.dev.as_ref().map_or(0, |d| d.ptr);
            let Some(host) = self.kv_staging.host.as_mut() else {
                return Err(CudaError::Driver("KV staging buffers missing".into()));
            };
            let pinned = &mut host.as_mut_slice()?[..src.len()];
            pinned.copy_from_slice(src);
            self.gpu.upload(dev, pinned)?;
            self.stage(ids, per, false)?;
            // The pinned buffer is reused by the next chunk: wait for this one.
            self.gpu.sync()?;
        }
        Ok(())
    }
}
