//! `gemm` section: the decode-step weight GEMMs of Llama-3.1-8B through cuBLAS (any size,
//! and 64-row calls) and each instance of the tensor-core skinny GEMM, at 1..4096 rows;
//! microseconds per call and weight bytes per second. Weights cycle through enough copies
//! (≥ 400 MB) that L2 (50 MB) cannot serve them. Also checks the skinny GEMM against
//! cuBLAS and its batch invariance (a row alone vs inside 256 rows, bitwise).

use anyhow::{Result, ensure};
use ferrite_cuda::Dtype;
use ferrite_cuda::device::Gpu;
use ferrite_cuda::gemm::Gemm;
use ferrite_cuda::kernels::GEMM_MMA_VARIANTS;
use std::time::Instant;

/// (name, out, inner, float32 output): bf16 outputs but for lm_head, as in the model.
const SHAPES: [(&str, usize, usize, bool); 5] = [
    ("qkv", 6144, 4096, false),
    ("o", 4096, 4096, false),
    ("gate_up", 28672, 4096, false),
    ("down", 4096, 14336, false),
    ("lm_head", 128256, 4096, true),
];
const ROWS: [usize; 12] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];

/// Which path a timing uses: cuBLAS (fixed rows, 0 = any), or a skinny GEMM instance.
#[derive(Clone, Copy)]
enum Path {
    Blas(usize),
    /// (instance, programmatic dependent launch)
    Mma(usize, bool),
}

fn set(gpu: &mut Gpu, p: Path) {
    match p {
        Path::Blas(f) => {
            gpu.fixed_rows = f;
            gpu.mma_max_rows = 0;
            gpu.pdl = true;
        }
        Path::Mma(v, pdl) => {
            gpu.fixed_rows = 64;
            gpu.mma_max_rows = usize::MAX;
            gpu.mma_variant = v;
            gpu.mma_tall_rows = usize::MAX;
            gpu.pdl = pdl;
        }
    }
}

pub fn run() -> Result<()> {
    let mut gpu = Gpu::new(0, Dtype::Bf16)?;
    let mut paths = vec![("cuBLAS", Path::Blas(0)), ("cuBLAS-64", Path::Blas(64))];
    paths.push(("w8u4 no PDL", Path::Mma(0, false)));
    for (i, (name, _, _, _)) in GEMM_MMA_VARIANTS.iter().enumerate() {
        paths.push((name, Path::Mma(i, true)));
    }
    let max_rows = 4096;
    let x = gpu.alloc(max_rows * 14336 * 2)?;
    gpu.fill_uniform(x.ptr, max_rows * 14336, 7, -1.0, 1.0)?;
    for (name, out, inner, y_f32) in SHAPES {
        let bytes = out * inner * 2;
        let copies = (400_000_000usize).div_ceil(bytes).max(2);
        let w = gpu.alloc(copies * bytes)?;
        gpu.fill_uniform(w.ptr, copies * out * inner, 11, -0.03, 0.03)?;
        let rows_cap = if out > 50_000 { 256 } else { max_rows };
        let y = gpu.alloc(rows_cap * out * 4)?;
        let y2 = gpu.alloc(rows_cap * out * 4)?;
        check(&mut gpu, &paths, (w.ptr, x.ptr, y.ptr, y2.ptr), out, inner)?;
        println!(
            "gemm {name} [{out} x {inner}] ({:.1} MB): µs per call (weight TB/s)",
            bytes as f64 / 1e6
        );
        print!("  {:>5}", "rows");
        for (p, _) in &paths {
            print!(" {p:>22}");
        }
        println!();
        for rows in ROWS.into_iter().filter(|&r| r <= rows_cap) {
            print!("  {rows:>5}");
            for &(_, p) in &paths {
                set(&mut gpu, p);
                let iters = if rows >= 1024 { 6 } else { 30 };
                let call = |i: usize| {
                    gpu.gemm(Gemm {
                        w: w.ptr + ((i % copies) * bytes) as u64,
                        x: x.ptr,
                        y: y.ptr,
                        rows,
                        out,
                        inner,
                        y_f32,
                    })
                };
                for i in 0..3 {
                    call(i)?;
                }
                gpu.sync()?;
                let t = Instant::now();
                for i in 0..iters {
                    call(i)?;
                }
                gpu.sync()?;
                let us = t.elapsed().as_secs_f64() * 1e6 / iters as f64;
                print!(" {:>12.1} ({:>5.2})", us, bytes as f64 / us / 1e6);
            }
            println!();
        }
    }
    Ok(())
}

/// Each skinny instance against cuBLAS on 5 rows; variant 0's row r alone vs inside 256.
fn check(
    gpu: &mut Gpu,
    paths: &[(&str, Path)],
    (w, x, y, y2): (u64, u64, u64, u64),
    out: usize,
    inner: usize,
) -> Result<()> {
    set(gpu, Path::Blas(0));
    gpu.gemm(Gemm {
        w,
        x,
        y,
        rows: 5,
        out,
        inner,
        y_f32: true,
    })?;
    let reference: Vec<f32> = gpu.download(y, 5 * out)?;
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    for &(name, p) in &paths[3..] {
        set(gpu, p);
        gpu.gemm(Gemm {
            w,
            x,
            y: y2,
            rows: 5,
            out,
            inner,
            y_f32: true,
        })?;
        let got: Vec<f32> = gpu.download(y2, 5 * out)?;
        let err = got
            .iter()
            .zip(&reference)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        ensure!(
            got.iter().all(|v| v.is_finite()),
            "{name}: non-finite output"
        );
        ensure!(
            err <= 1e-3 * scale,
            "{name}: max |Δ| {err} vs cuBLAS (max |y| {scale})"
        );
        print!("{name} max|Δ|/max|y| {:.1e}; ", err / scale);
    }
    set(gpu, Path::Mma(0, true));
    gpu.gemm(Gemm {
        w,
        x,
        y,
        rows: 256,
        out,
        inner,
        y_f32: true,
    })?;
    let all: Vec<f32> = gpu.download(y, 256 * out)?;
    for r in [0usize, 77, 255] {
        gpu.gemm(Gemm {
            w,
            x: x + (r * inner * 2) as u64,
            y: y2,
            rows: 1,
            out,
            inner,
            y_f32: true,
        })?;
        let one: Vec<f32> = gpu.download(y2, out)?;
        ensure!(
            one.iter()
                .zip(&all[r * out..(r + 1) * out])
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "row {r} alone differs from row {r} of 256"
        );
    }
    for (v, (name, _, _, rf)) in GEMM_MMA_VARIANTS.iter().enumerate() {
        if !out.is_multiple_of(16 * rf) {
            continue;
        }
        set(gpu, Path::Mma(v, true));
        gpu.gemm(Gemm {
            w,
            x,
            y: y2,
            rows: 256,
            out,
            inner,
            y_f32: true,
        })?;
        let other: Vec<f32> = gpu.download(y2, 256 * out)?;
        ensure!(
            other
                .iter()
                .zip(&all)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name} differs from {} on 256 rows",
            GEMM_MMA_VARIANTS[0].0
        );
    }
    println!("invariant (rows 0, 77, 255 alone = inside 256, and every instance, bitwise)");
    Ok(())
}
