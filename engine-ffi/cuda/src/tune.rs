//! GEMM autotuning. For each weight shape of the model and each step-size bucket, the
//! fastest way to multiply, measured on the card at start-up with the model's own weights:
//! one of the tensor-core GEMM instances (all split k the same way, so every choice gives
//! the same bits and batch invariance holds whatever is picked) or, when batch invariance
//! is off, cuBLAS.

use crate::device::Gpu;
use crate::error::Result;
use crate::gemm::Gemm;
use crate::kernels::GEMM_MMA_VARIANTS;
use std::time::Instant;

/// Upper row bound of each bucket (the last takes everything larger); each bucket is tuned
/// at its bound (the last at twice the previous one).
pub const ROW_BUCKETS: [usize; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, usize::MAX];

/// In the free mode the tensor-core GEMM must beat cuBLAS by this factor to be picked.
const MMA_MARGIN: f64 = 0.97;

/// Rows a bucket is measured at.
fn tuning_rows(b: usize) -> usize {
    if b + 1 < ROW_BUCKETS.len() {
        ROW_BUCKETS[b]
    } else {
        2 * ROW_BUCKETS[b - 1]
    }
}

/// The bucket of a step of `rows` activation rows.
pub fn bucket(rows: usize) -> usize {
    ROW_BUCKETS
        .iter()
        .position(|&e| rows <= e)
        .unwrap_or(ROW_BUCKETS.len() - 1)
}

/// How one GEMM runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// A [`GEMM_MMA_VARIANTS`] instance.
    Mma(usize),
    /// cuBLAS (`gemm_ex`).
    Blas,
}

/// The picks of one weight shape, per bucket.
#[derive(Clone, Debug, PartialEq)]
pub struct ShapePlan {
    pub out: usize,
    pub inner: usize,
    /// Batch-invariant mode: tensor-core instances only.
    pub invariant: [usize; ROW_BUCKETS.len()],
    /// Invariance off: the fastest of everything.
    pub free: [Pick; ROW_BUCKETS.len()],
    /// Measured microseconds per call of the invariant and free picks.
    pub micros: [(f64, f64); ROW_BUCKETS.len()],
}

/// The tuned picks of every weight shape of a model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GemmPlan {
    pub shapes: Vec<ShapePlan>,
}

impl GemmPlan {
    /// The pick for a GEMM, `None` for a shape that was not tuned.
    pub fn pick(&self, rows: usize, out: usize, inner: usize, invariant: bool) -> Option<Pick> {
        let s = self
            .shapes
            .iter()
            .find(|s| s.out == out && s.inner == inner)?;
        let b = bucket(rows);
        Some(if invariant {
            Pick::Mma(s.invariant[b])
        } else {
            s.free[b]
        })
    }

    /// One line per shape: the picks by bucket (for logs and benchmarks).
    pub fn describe(&self) -> String {
        let name = |p: Pick| match p {
            Pick::Mma(v) => GEMM_MMA_VARIANTS[v].0.trim_start_matches("gemm_mma_"),
            Pick::Blas => "cublas",
        };
        self.shapes
            .iter()
            .map(|s| {
                let cells: Vec<String> = (0..ROW_BUCKETS.len())
                    .map(|b| {
                        format!(
                            "{}:{}/{}",
                            tuning_rows(b),
                            name(Pick::Mma(s.invariant[b])),
                            name(s.free[b])
                        )
                    })
                    .collect();
                format!("[{} x {}] {}", s.out, s.inner, cells.join(" "))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A weight shape to tune: `out × inner`, float32 output or not, and up to a few copies
/// (e.g. layers) to cycle through so that L2 cannot hold the weights between calls.
pub struct TuneShape {
    pub out: usize,
    pub inner: usize,
    pub y_f32: bool,
    pub copies: Vec<u64>,
}

/// Measures every candidate of every shape and bucket; `gpu` is left as it was.
pub fn tune(gpu: &mut Gpu, shapes: &[TuneShape]) -> Result<GemmPlan> {
    let max_rows = tuning_rows(ROW_BUCKETS.len() - 1);
    let max_inner = shapes.iter().map(|s| s.inner).max().unwrap_or(0);
    let max_out = shapes.iter().map(|s| s.out).max().unwrap_or(0);
    let x = gpu.alloc(max_rows * max_inner * 2)?;
    gpu.fill_uniform(x.ptr, max_rows * max_inner, 0x7475_6e65, -1.0, 1.0)?;
    let y = gpu.alloc(max_rows * max_out * 4)?;
    let saved = (gpu.fixed_rows, gpu.mma_max_rows, gpu.plan.take());
    gpu.fixed_rows = 0; // cuBLAS at any size: the free mode's candidate
    let mut plan = GemmPlan::default();
    for s in shapes {
        let mut sp = ShapePlan {
            out: s.out,
            inner: s.inner,
            invariant: [0; ROW_BUCKETS.len()],
            free: [Pick::Blas; ROW_BUCKETS.len()],
            micros: [(0.0, 0.0); ROW_BUCKETS.len()],
        };
        let variants: Vec<usize> = (0..GEMM_MMA_VARIANTS.len())
            .filter(|&v| gpu.mma_fits(v, s.out, s.inner))
            .collect();
        if variants.is_empty() {
            continue; // no instance takes the shape: the untuned rules (cuBLAS) apply
        }
        for b in 0..ROW_BUCKETS.len() {
            let rows = tuning_rows(b);
            let time = |p: Pick| -> Result<f64> {
                let reps = if rows >= 256 { 3 } else { 10 };
                let call = |i: usize| {
                    let w = s.copies[i % s.copies.len()];
                    let g = Gemm {
                        w,
                        x: x.ptr,
                        y: y.ptr,
                        rows,
                        out: s.out,
                        inner: s.inner,
                        y_f32: s.y_f32,
                    };
                    match p {
                        Pick::Mma(v) => gpu.gemm_mma_with(v, g),
                        Pick::Blas => gpu.gemm_blas_any(g),
                    }
                };
                call(0)?;
                gpu.sync()?;
                let t = Instant::now();
                for i in 1..=reps {
                    call(i)?;
                }
                gpu.sync()?;
                Ok(t.elapsed().as_secs_f64() * 1e6 / reps as f64)
            };
            let mut best_mma = (f64::INFINITY, 0);
            for &v in &variants {
                let us = time(Pick::Mma(v))?;
                if us < best_mma.0 {
                    best_mma = (us, v);
                }
            }
            let blas = time(Pick::Blas)?;
            sp.invariant[b] = best_mma.1;
            // cuBLAS unless the tensor-core GEMM is clearly faster (timing noise).
            sp.free[b] = if blas < best_mma.0 / MMA_MARGIN {
                Pick::Blas
            } else {
                Pick::Mma(best_mma.1)
            };
            sp.micros[b] = (best_mma.0, blas.min(best_mma.0));
        }
        plan.shapes.push(sp);
    }
    (gpu.fixed_rows, gpu.mma_max_rows, gpu.plan) = saved;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_row_count() {
        assert_eq!(bucket(1), 0);
        assert_eq!(bucket(2), 1);
        assert_eq!(bucket(3), 2);
        assert_eq!(bucket(8), 3);
        assert_eq!(bucket(9), 4);
        assert_eq!(bucket(256), 8);
        assert_eq!(bucket(257), 9);
        assert_eq!(bucket(100_000), 9);
        assert_eq!(tuning_rows(9), 512);
    }

    #[test]
    fn plan_picks_by_mode_and_shape() {
        let mut free = [Pick::Mma(1); ROW_BUCKETS.len()];
        free[9] = Pick::Blas;
        let plan = GemmPlan {
            shapes: vec![ShapePlan {
                out: 64,
                inner: 256,
                invariant: [2; ROW_BUCKETS.len()],
                free,
                micros: [(1.0, 1.0); ROW_BUCKETS.len()],
            }],
        };
        assert_eq!(plan.pick(1, 64, 256, true), Some(Pick::Mma(2)));
        assert_eq!(plan.pick(1000, 64, 256, true), Some(Pick::Mma(2)));
        assert_eq!(plan.pick(3, 64, 256, false), Some(Pick::Mma(1)));
        assert_eq!(plan.pick(1000, 64, 256, false), Some(Pick::Blas));
        assert_eq!(plan.pick(1, 64, 512, false), None);
        assert!(plan.describe().contains("[64 x 256]"));
    }
}
