//! The GPU handle: availability probe, context, stream, cuBLAS, kernels, raw buffers, the
//! GEMM wrapper and kernel launches. Every `unsafe` of the crate's device work lives here.

use crate::config::Dtype;
use crate::error::{CudaError, Result};
use crate::kernels::Kernels;
use cudarc::cublas::{CudaBlas, sys as bsys};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaGraph, CudaSlice, CudaStream, DevicePtr, LaunchConfig,
    PinnedHostSlice, PushKernelArg, result as dres, sys as dsys,
};
use std::sync::Arc;

/// Checks, without panicking, that a CUDA driver, cuBLAS and at least one GPU are present.
pub fn probe() -> Result<usize> {
    // SAFETY: only probes whether the driver library can be opened.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(CudaError::NoDevice(
            "libcuda (the NVIDIA driver) not found".into(),
        ));
    }
    let n = CudaContext::device_count().map_err(|e| CudaError::NoDevice(e.to_string()))?;
    if n <= 0 {
        return Err(CudaError::NoDevice("the driver reports no GPU".into()));
    }
    // SAFETY: only probes whether the cuBLAS shared library can be opened.
    if !unsafe { bsys::is_culib_present() } {
        return Err(CudaError::MissingLibrary("libcublas not found".into()));
    }
    Ok(n as usize)
}

/// A device allocation addressed by raw pointer (kernels take raw pointers).
pub struct DevBuf {
    _slice: CudaSlice<u8>,
    pub ptr: u64,
    pub bytes: usize,
}

impl std::fmt::Debug for DevBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DevBuf({} bytes)", self.bytes)
    }
}

impl DevBuf {
    /// Address of byte `off`.
    pub fn at(&self, off: usize) -> u64 {
        self.ptr + off as u64
    }
}

/// One GPU: context, stream, cuBLAS handle and the loaded kernels for one element type.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub(crate) blas: CudaBlas,
    /// cuBLAS's workspace, set explicitly so that GEMMs can be captured into CUDA graphs.
    _blas_workspace: CudaSlice<u8>,
    pub k: Kernels,
    pub dtype: Dtype,
    /// bf16 GEMMs with at most this many activation rows use the tensor-core skinny GEMM
    /// (`gemm.cu`) instead of cuBLAS; with `fixed_rows` > 0 (batch invariance) every bf16
    /// GEMM whose shape it takes does, whatever its rows. 0: cuBLAS always.
    pub mma_max_rows: usize,
    /// Index into [`crate::kernels::GEMM_MMA_VARIANTS`] for steps of at most
    /// `mma_tall_rows` rows, and for larger steps.
    pub mma_variant: usize,
    pub mma_tall_variant: usize,
    pub mma_tall_rows: usize,
    /// Tuned GEMM picks ([`crate::tune`]); shapes it lacks use the rules above.
    pub plan: Option<crate::tune::GemmPlan>,
    /// Launch kernels with programmatic dependent launch (sm_90+): each may start while the
    /// previous one finishes (see `pdl_wait` in ferrite.cu).
    pub pdl: bool,
    /// When > 0, every cuBLAS GEMM runs in calls of exactly this many activation rows (the
    /// last call padded), so cuBLAS picks the same algorithm whatever the step's size and a
    /// row's result never depends on its batch mates. Buffers must hold the padding.
    pub fixed_rows: usize,
}

impl Gpu {
    pub fn new(ordinal: usize, dtype: Dtype) -> Result<Self> {
        let n = probe()?;
        if ordinal >= n {
            return Err(CudaError::NoDevice(format!(
                "GPU {ordinal} requested, {n} present"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| CudaError::NoDevice(e.to_string()))?;
        // SAFETY: one stream does all the work, so cudarc's per-buffer event tracking is
        // not needed; raw pointers are ordered by that stream.
        unsafe { ctx.disable_event_tracking() };
        // Our own stream (not the legacy default stream, which cannot be captured).
        let stream = ctx.new_stream()?;
        let blas = CudaBlas::new(stream.clone())?;
        let ws = stream.alloc_zeros::<u8>(BLAS_WORKSPACE)?;
        {
            let (ptr, _sync) = ws.device_ptr(&stream);
            // SAFETY: the workspace is a live allocation of BLAS_WORKSPACE bytes owned by
            // `Gpu` next to the handle, so it outlives every GEMM of the handle.
            let st = unsafe {
                bsys::cublasSetWorkspace_v2(
                    *blas.handle(),
                    ptr as *mut std::ffi::c_void,
                    BLAS_WORKSPACE,
                )
            };
            if st != bsys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                return Err(CudaError::Blas(format!("cublasSetWorkspace: {st:?}")));
            }
        }
        let k = Kernels::load(&ctx, dtype)?;
        let pdl = ctx.compute_capability()?.0 >= 9;
        Ok(Gpu {
            ctx,
            stream,
            blas,
            _blas_workspace: ws,
            k,
            dtype,
            mma_max_rows: 0,
            mma_variant: 0,
            mma_tall_variant: 0,
            mma_tall_rows: usize::MAX,
            plan: None,
            pdl,
            fixed_rows: 0,
        })
    }

    pub fn name(&self) -> String {
        self.ctx.name().unwrap_or_else(|_| "unknown GPU".into())
    }

    /// Zeroed device memory.
    pub fn alloc(&self, bytes: usize) -> Result<DevBuf> {
        let slice = self.stream.alloc_zeros::<u8>(bytes.max(16))?;
        let ptr = {
            let (ptr, _sync) = slice.device_ptr(&self.stream);
            ptr
        };
        Ok(DevBuf {
            ptr,
            bytes,
            _slice: slice,
        })
    }

    /// Copies `data` to device address `dst` (the caller owns a buffer that large).
    pub fn upload<T: cudarc::driver::DeviceRepr>(&self, dst: u64, data: &[T]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.ctx.bind_to_thread()?;
        // SAFETY: `dst` points into a live allocation of at least `size_of_val(data)` bytes
        // (checked by callers); pageable host memory is staged before the call returns.
        unsafe { dres::memcpy_htod_async(dst, data, self.stream.cu_stream()) }?;
        Ok(())
    }

    /// Copies `n` elements from device address `src` to the host (synchronises).
    pub fn download<T: cudarc::driver::DeviceRepr + Default + Clone>(
        &self,
        src: u64,
        n: usize,
    ) -> Result<Vec<T>> {
        let mut out = vec![T::default(); n];
        if n == 0 {
            return Ok(out);
        }
        self.ctx.bind_to_thread()?;
        // SAFETY: `src` holds at least `n` elements of `T` (callers' buffers); the stream
        // is synchronised before `out` is read.
        unsafe { dres::memcpy_dtoh_async(&mut out, src, self.stream.cu_stream()) }?;
        self.stream.synchronize()?;
        Ok(out)
    }

    /// Page-locked host memory of `bytes` bytes (zeroed), for fast asynchronous copies.
    pub fn alloc_pinned(&self, bytes: usize) -> Result<PinnedHostSlice<u8>> {
        // SAFETY: u8 has no invalid bit patterns; the memory is zeroed before anyone reads it.
        let mut p = unsafe { self.ctx.alloc_pinned::<u8>(bytes.max(16)) }?;
        p.as_mut_slice()?.fill(0);
        Ok(p)
    }

    /// Copies `out.len()` bytes from device address `src` into page-locked `out`; waits.
    pub fn download_pinned(&self, src: u64, out: &mut [u8]) -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        self.ctx.bind_to_thread()?;
        // SAFETY: `src` addresses at least `out.len()` bytes of a live allocation (callers
        // size the staging buffer); the stream is synchronised before `out` is read.
        unsafe { dres::memcpy_dtoh_async(out, src, self.stream.cu_stream()) }?;
        self.sync()
    }

    pub fn sync(&self) -> Result<()> {
        self.stream.synchronize()?;
        Ok(())
    }

    /// Records the device work `f` queues on the stream (kernels and GEMMs only: no
    /// allocation, copy or synchronisation) into a CUDA graph instead of running it.
    pub fn capture(&self, f: impl FnOnce() -> Result<()>) -> Result<Graph> {
        self.stream
            .begin_capture(dsys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let queued = f();
        // End the capture whatever happened, so the stream is usable again.
        let graph = self.stream.end_capture(dsys::CUgraphInstantiate_flags(0));
        queued?;
        let g =
            graph?.ok_or_else(|| CudaError::Driver("stream capture recorded no graph".into()))?;
        Ok(Graph(g))
    }

    /// Launches `f` with plain-old-data arguments (raw pointers as `u64`, ints, floats).
    pub fn launch(
        &self,
        f: &CudaFunction,
        grid: (u32, u32, u32),
        block: u32,
        args: &[KArg],
    ) -> Result<()> {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        if self.pdl {
            return self.launch_pdl(f, grid, block, args);
        }
        let mut b = self.stream.launch_builder(f);
        for a in args {
            match a {
                KArg::U64(v) => b.arg(v),
                KArg::I32(v) => b.arg(v),
                KArg::I64(v) => b.arg(v),
                KArg::F32(v) => b.arg(v),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: argument lists match the kernel signatures in ferrite.cu (each call site
        // mirrors one signature) and pointers address live buffers sized for the launch.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// `launch` through `cuLaunchKernelEx` with programmatic stream serialization allowed.
    fn launch_pdl(
        &self,
        f: &CudaFunction,
        grid: (u32, u32, u32),
        block: u32,
        args: &[KArg],
    ) -> Result<()> {
        use cudarc::driver::sys as dsys;
        // Each argument's bytes at a stable address for the kernel parameter array.
        let mut vals: Vec<[u8; 8]> = args
            .iter()
            .map(|a| {
                let mut v = [0u8; 8];
                match a {
                    KArg::U64(x) => v.copy_from_slice(&x.to_ne_bytes()),
                    KArg::I64(x) => v.copy_from_slice(&x.to_ne_bytes()),
                    KArg::I32(x) => v[..4].copy_from_slice(&x.to_ne_bytes()),
                    KArg::F32(x) => v[..4].copy_from_slice(&x.to_ne_bytes()),
                }
                v
            })
            .collect();
        let mut params: Vec<*mut std::ffi::c_void> = vals
            .iter_mut()
            .map(|v| v.as_mut_ptr().cast::<std::ffi::c_void>())
            .collect();
        // SAFETY: a zeroed attribute is a valid plain C struct; the union field set is the
        // one the id names.
        let mut attr: dsys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = dsys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let cfg = dsys::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: grid.2,
            blockDimX: block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: 0,
            hStream: self.stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: 1,
        };
        // SAFETY: as `launch`: `params` points at one value per kernel parameter, in
        // order, each 8 bytes (ints and floats in the low 4, as the driver reads them);
        // `vals`, `attr` and `cfg` outlive the call, which copies them.
        unsafe {
            dsys::cuLaunchKernelEx(
                &cfg,
                f.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()?;
        Ok(())
    }

    /// Fills `n` elements at `dst` with seeded uniform values in `[lo, hi)` on the device.
    pub fn fill_uniform(&self, dst: u64, n: usize, seed: u64, lo: f32, hi: f32) -> Result<()> {
        let blocks = n.div_ceil(256).min(65_535 * 4) as u32;
        self.launch(
            &self.k.fill_uniform,
            (blocks.max(1), 1, 1),
            256,
            &[
                KArg::U64(dst),
                KArg::I64(n as i64),
                KArg::U64(seed),
                KArg::F32(lo),
                KArg::F32(hi),
            ],
        )
    }
}

/// A captured CUDA graph, owned by one executor.
pub struct Graph(CudaGraph);

// SAFETY: CUDA graph handles may be used from any thread as long as calls on one graph are
// serialised (CUDA's graph thread-safety rules). A `Graph` is owned by one executor, which
// is moved between threads (`Send`) but never shared (`Graph` is not `Sync`), so every call
// on it comes from the one thread that holds the executor at the time.
unsafe impl Send for Graph {}

impl Graph {
    /// Replays the graph on the stream it was captured on.
    pub fn launch(&self) -> Result<()> {
        self.0.launch()?;
        Ok(())
    }
}

/// Bytes of the cuBLAS workspace.
const BLAS_WORKSPACE: usize = 32 << 20;

/// One kernel argument.
#[derive(Clone, Copy, Debug)]
pub enum KArg {
    U64(u64),
    I32(i32),
    I64(i64),
    F32(f32),
}
