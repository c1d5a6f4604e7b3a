//! GEMM dispatch of a [`Gpu`]: the tuned plan ([`crate::tune`]), the tensor-core GEMM
//! instances (`kernels/gemm.cu`) and cuBLAS.

use crate::config::Dtype;
use crate::device::{Gpu, KArg};
use crate::error::Result;
use crate::kernels::{GEMM_MMA_TOKENS, GEMM_MMA_VARIANTS};
use crate::tune::Pick;
use cudarc::cublas::{result as blas, sys as bsys};

/// One GEMM: `y[rows, out] = x[rows, inner] · w[out, inner]ᵀ` (row-major, the HF weight
/// layout), float32 accumulation; `y` is float32 when `y_f32`, else the element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gemm {
    pub w: u64,
    pub x: u64,
    pub y: u64,
    pub rows: usize,
    pub out: usize,
    pub inner: usize,
    pub y_f32: bool,
}

impl Gemm {
    /// The same GEMM on `rows` activation rows starting at row `r0`.
    fn rows_at(self, r0: usize, rows: usize, elem_bytes: usize) -> Gemm {
        let ye = if self.y_f32 { 4 } else { elem_bytes };
        Gemm {
            x: self.x + (r0 * self.inner * elem_bytes) as u64,
            y: self.y + (r0 * self.out * ye) as u64,
            rows,
            ..self
        }
    }
}

impl Gpu {
    /// Runs `g` the way the tuned plan says, else by the untuned rules (tensor-core GEMM
    /// where `mma_takes`, cuBLAS otherwise).
    pub fn gemm(&self, g: Gemm) -> Result<()> {
        if self.dtype == Dtype::Bf16
            && self.mma_max_rows > 0
            && let Some(p) = self.plan.as_ref()
            && let Some(pick) = p.pick(g.rows, g.out, g.inner, self.fixed_rows > 0)
        {
            return match pick {
                Pick::Mma(v) => self.gemm_mma_with(v, g),
                Pick::Blas => self.gemm_blas_any(g),
            };
        }
        if self.mma_takes(g.rows, g.out, g.inner) {
            return self.gemm_mma_with(self.mma_pick(g.rows, g.out, g.inner), g);
        }
        self.gemm_blas_any(g)
    }

    /// Whether instance `v` of the tensor-core GEMM takes an `out × inner` weight.
    pub fn mma_fits(&self, v: usize, out: usize, inner: usize) -> bool {
        let (_, nw, u, rf) = GEMM_MMA_VARIANTS[v];
        self.dtype == Dtype::Bf16
            && out.is_multiple_of(16 * rf)
            && inner.is_multiple_of(nw * 32 * u)
    }

    /// Whether `gemm` sends an untuned shape to the tensor-core GEMM.
    pub fn mma_takes(&self, rows: usize, out: usize, inner: usize) -> bool {
        self.mma_max_rows > 0
            && (self.fixed_rows > 0 || rows <= self.mma_max_rows)
            && self.mma_fits(self.mma_variant, out, inner)
    }

    /// The instance for `rows` of an untuned shape: the tall one above `mma_tall_rows`
    /// where the shape fits it (same warps as the small one, so the same bits).
    fn mma_pick(&self, rows: usize, out: usize, inner: usize) -> usize {
        let nw = |v: usize| GEMM_MMA_VARIANTS[v].1;
        if rows > self.mma_tall_rows
            && nw(self.mma_tall_variant) == nw(self.mma_variant)
            && self.mma_fits(self.mma_tall_variant, out, inner)
        {
            self.mma_tall_variant
        } else {
            self.mma_variant
        }
    }

    /// The tensor-core GEMM through instance `v` (which must fit the shape).
    pub fn gemm_mma_with(&self, v: usize, g: Gemm) -> Result<()> {
        let (_, nw, _, rf) = GEMM_MMA_VARIANTS[v];
        let chunks = g.rows.div_ceil(GEMM_MMA_TOKENS);
        self.launch(
            &self.k.gemm_mma[v],
            (chunks as u32, (g.out / (16 * rf)) as u32, 1),
            (nw * 32) as u32,
            &[
                KArg::U64(g.w),
                KArg::U64(g.x),
                KArg::U64(g.y),
                KArg::I32(g.rows as i32),
                KArg::I32(g.out as i32),
                KArg::I32(g.inner as i32),
                KArg::I32(i32::from(g.y_f32)),
            ],
        )
    }

    /// cuBLAS, in calls of exactly `fixed_rows` rows (the last padded) when that is set.
    pub fn gemm_blas_any(&self, g: Gemm) -> Result<()> {
        if self.fixed_rows == 0 {
            return self.gemm_blas(g);
        }
        let f = self.fixed_rows;
        let mut r0 = 0;
        while r0 < g.rows {
            self.gemm_blas(g.rows_at(r0, f, self.dtype.bytes()))?;
            r0 += f;
        }
        Ok(())
    }

    fn elem_type(&self) -> bsys::cudaDataType {
        match self.dtype {
            Dtype::F32 => bsys::cudaDataType::CUDA_R_32F,
            Dtype::Bf16 => bsys::cudaDataType::CUDA_R_16BF,
        }
    }

    fn gemm_blas(&self, g: Gemm) -> Result<()> {
        let (alpha, beta) = (1f32, 0f32);
        let et = self.elem_type();
        let yt = if g.y_f32 {
            bsys::cudaDataType::CUDA_R_32F
        } else {
            et
        };
        // Column-major view: Yᵀ[out, rows] = W[out, inner] (stored as Wᵀ col-major, so
        // op T) × Xᵀ[inner, rows].
        // SAFETY: the pointers address live device buffers of the stated shapes (callers
        // size them from the model config and batch); the handle is bound to our stream.
        unsafe {
            blas::gemm_ex(
                *self.blas.handle(),
                bsys::cublasOperation_t::CUBLAS_OP_T,
                bsys::cublasOperation_t::CUBLAS_OP_N,
                g.out as i32,
                g.rows as i32,
                g.inner as i32,
                (&alpha as *const f32).cast(),
                g.w as *const std::ffi::c_void,
                et,
                g.inner as i32,
                g.x as *const std::ffi::c_void,
                et,
                g.inner as i32,
                (&beta as *const f32).cast(),
                g.y as *mut std::ffi::c_void,
                yt,
                g.out as i32,
                bsys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                bsys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_row_calls_offset_both_operands_by_their_element_sizes() {
        let g = Gemm {
            w: 1000,
            x: 10_000,
            y: 50_000,
            rows: 130,
            out: 6,
            inner: 4,
            y_f32: false,
        };
        let part = g.rows_at(64, 64, 2);
        assert_eq!(
            (part.x, part.y, part.rows),
            (10_000 + 64 * 4 * 2, 50_000 + 64 * 6 * 2, 64)
        );
        assert_eq!(part.w, 1000);
        let f32_out = Gemm { y_f32: true, ..g }.rows_at(64, 64, 2);
        assert_eq!(f32_out.y, 50_000 + 64 * 6 * 4);
    }
}
