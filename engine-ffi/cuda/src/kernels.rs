//! The `.cu` kernel source, its NVRTC compilation (once per process and element type) and
//! the table of loaded functions.

use crate::config::Dtype;
use crate::error::{CudaError, Result};
use cudarc::driver::{CudaContext, CudaFunction};
use cudarc::nvrtc::{CompileOptions, Ptx};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The kernels' CUDA C++ source: `src/kernels/ferrite.cu`, then the token choice of
/// `sample.cu` and the tensor-core GEMM of `gemm.cu`.
pub const SOURCE: &str = concat!(
    include_str!("kernels/ferrite.cu"),
    include_str!("kernels/sample.cu"),
    include_str!("kernels/gemm.cu")
);

/// Every `extern "C"` kernel in [`SOURCE`].
pub const KERNEL_NAMES: [&str; 11] = [
    "embed",
    "add_rmsnorm",
    "rope_cache",
    "attn_partial",
    "attn_combine",
    "swiglu",
    "argmax_part",
    "argmax_rows",
    "sample_rows",
    "fill_uniform",
    "kv_blocks_copy",
];

/// The instances of the tensor-core GEMM (`gemm.cu`): (name, warps splitting k, 32-wide k
/// slabs per loop trip, 16-row fragments per warp). `inner` must be a multiple of warps ×
/// 32 × slabs and `out` of 16 × fragments. Instances with the same warps give bitwise the
/// same results.
pub const GEMM_MMA_VARIANTS: [(&str, usize, usize, usize); 5] = [
    ("gemm_mma_w8u4", 8, 4, 1),
    ("gemm_mma_w8u4h", 8, 4, 1),
    ("gemm_mma_w8u2", 8, 2, 1),
    ("gemm_mma_w8u2r4", 8, 2, 4),
    ("gemm_mma_w8u2r4h", 8, 2, 4),
];

/// Tokens per block of the skinny GEMM (`MMA_TOK`): larger steps use more blocks, each
/// reading the same weight tile (from L2 when they run together).
pub const GEMM_MMA_TOKENS: usize = 64;

/// Threads of a `sample_rows` block (`SAMPLE_THREADS`).
pub const SAMPLE_THREADS: u32 = 1024;

/// Threads of an attention block (`ATTN_WARPS` × 32 in the source).
pub const ATTN_THREADS: u32 = 256;

/// Where `cuda_bf16.h` is looked for: `$CUDA_HOME/include`, `$CUDA_PATH/include`, then
/// `/usr/local/cuda/include`.
pub fn include_paths() -> Vec<String> {
    let mut v: Vec<String> = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .map(|p| format!("{p}/include"))
        .collect();
    v.push("/usr/local/cuda/include".to_string());
    v
}

/// The NVRTC target for a compute capability, e.g. `compute_90` for (9, 0).
pub fn arch_for(major: i32, minor: i32) -> &'static str {
    match (major, minor) {
        (8, 0) => "compute_80",
        (8, 6) => "compute_86",
        (8, 9) => "compute_89",
        (9, _) => "compute_90",
        (10, _) => "compute_100",
        (12, _) => "compute_120",
        _ => "compute_80",
    }
}

/// Compiles [`SOURCE`] for `dtype` and `arch` with NVRTC; PTX is cached per process.
pub fn compile(dtype: Dtype, arch: &'static str) -> Result<Ptx> {
    static CACHE: OnceLock<Mutex<HashMap<(Dtype, &'static str), String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let key = (dtype, arch);
    if let Some(src) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(Ptx::from_src(src.clone()));
    }
    // SAFETY: only probes whether the NVRTC shared library can be opened.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaError::MissingLibrary(
            "libnvrtc not found (install the CUDA toolkit or nvidia-cuda-nvrtc)".into(),
        ));
    }
    let mut options = vec!["--std=c++17".to_string()];
    if dtype == Dtype::Bf16 {
        options.push("-DELEM_BF16".to_string());
    }
    let opts = CompileOptions {
        arch: Some(arch),
        include_paths: include_paths(),
        options,
        name: Some(format!("ferrite_{}.cu", dtype.name())),
        ..Default::default()
    };
    let ptx =
        cudarc::nvrtc::compile_ptx_with_opts(SOURCE, opts).map_err(|e| CudaError::Compile {
            kernel: format!("ferrite.cu ({}, {arch})", dtype.name()),
            message: e.to_string(),
        })?;
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, ptx.to_src());
    Ok(ptx)
}

/// The loaded kernels of one context.
#[derive(Clone, Debug)]
pub struct Kernels {
    pub embed: CudaFunction,
    pub add_rmsnorm: CudaFunction,
    pub rope_cache: CudaFunction,
    pub attn_partial: CudaFunction,
    pub attn_combine: CudaFunction,
    pub swiglu: CudaFunction,
    pub argmax_part: CudaFunction,
    pub argmax_rows: CudaFunction,
    pub sample_rows: CudaFunction,
    pub fill_uniform: CudaFunction,
    pub kv_blocks_copy: CudaFunction,
    /// The [`GEMM_MMA_VARIANTS`] in order (bf16 only: empty bodies for float32).
    pub gemm_mma: Vec<CudaFunction>,
}

impl Kernels {
    pub fn load(ctx: &Arc<CudaContext>, dtype: Dtype) -> Result<Self> {
        let (major, minor) = ctx.compute_capability()?;
        let ptx = compile(dtype, arch_for(major, minor))?;
        let m = ctx.load_module(ptx)?;
        let f = |n: &str| m.load_function(n).map_err(CudaError::from);
        Ok(Kernels {
            embed: f("embed")?,
            add_rmsnorm: f("add_rmsnorm")?,
            rope_cache: f("rope_cache")?,
            attn_partial: f("attn_partial")?,
            attn_combine: f("attn_combine")?,
            swiglu: f("swiglu")?,
            argmax_part: f("argmax_part")?,
            argmax_rows: f("argmax_rows")?,
            sample_rows: f("sample_rows")?,
            fill_uniform: f("fill_uniform")?,
            kv_blocks_copy: f("kv_blocks_copy")?,
            gemm_mma: GEMM_MMA_VARIANTS
                .iter()
                .map(|(n, _, _, _)| f(n))
                .collect::<Result<_>>()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_defines_every_kernel_once() {
        for name in KERNEL_NAMES {
            let pat = format!("void {name}(");
            let pat_lb = format!("\n{name}(");
            let n = SOURCE.matches(&pat).count() + SOURCE.matches(&pat_lb).count();
            assert_eq!(n, 1, "kernel {name} defined {n} times");
        }
        assert!(
            SOURCE.contains("#define ATTN_WARPS 8"),
            "ATTN_THREADS = 8 warps"
        );
        assert_eq!(ATTN_THREADS, 8 * 32);
        assert!(SOURCE.contains(&format!("#define HDMAX {}", crate::config::MAX_HEAD_DIM)));
        assert!(SOURCE.contains(&format!("#define TILE_ROWS {}", crate::config::TILE_ROWS)));
        assert!(SOURCE.contains(&format!(
            "#define ATTN_SPLITS {}",
            crate::config::ATTN_SPLITS
        )));
        assert!(SOURCE.contains(&format!("#define KC {}", crate::config::ATTN_CHUNK)));
        assert!(SOURCE.contains(&format!("#define SAMPLE_THREADS {SAMPLE_THREADS}")));
        assert!(SOURCE.contains(&format!("#define MMA_TOK {GEMM_MMA_TOKENS}")));
        for (name, nw, u, rf) in GEMM_MMA_VARIANTS {
            let inst = format!("GEMM_MMA({name}, {nw}, {u}, {rf}, ");
            assert_eq!(SOURCE.matches(&inst).count(), 1, "{inst}");
        }
    }

    #[test]
    fn arch_strings() {
        assert_eq!(arch_for(9, 0), "compute_90");
        assert_eq!(arch_for(8, 6), "compute_86");
        assert_eq!(arch_for(7, 5), "compute_80");
    }

    /// Needs libnvrtc (not a GPU): `pip install nvidia-cuda-nvrtc` and its lib folder on
    /// `LD_LIBRARY_PATH`, plus the CUDA headers for the bf16 variant.
    #[test]
    #[ignore = "needs libnvrtc on the library path"]
    fn both_variants_compile_with_nvrtc() {
        for dt in [Dtype::F32, Dtype::Bf16] {
            let ptx = compile(dt, "compute_90").expect("compile").to_src();
            let mma = GEMM_MMA_VARIANTS.map(|v| v.0);
            for name in KERNEL_NAMES.iter().chain(&mma) {
                assert!(
                    ptx.contains(&format!(".entry {name}(")),
                    "{name} missing in PTX"
                );
            }
        }
    }
}
