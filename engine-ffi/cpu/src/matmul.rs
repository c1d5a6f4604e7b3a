//! `y = x · Wᵀ` for a batch of activation rows, parallel over output features.
//!
//! Quantised weights are multiplied block by block against activations quantised to 8 bits
//! (integer dot products, as llama.cpp does); each weight block is unpacked once and used for
//! every activation row, so a batched decode step reads the weights once. Every output is a
//! fixed-order sum over its row, so results do not depend on the batch composition.
//! The kernels are plain Rust compiled twice: generic, and with AVX2/FMA enabled (picked at
//! run time) so the compiler vectorises them for the wider registers.

use crate::tensor::{Matrix, QActs, QK};
use rayon::prelude::*;

/// Activation rows `[rows, cols]`, with their 8-bit quantisation when a quantised weight
/// will consume them.
pub struct Input<'a> {
    pub x: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub q: Option<QActs>,
}

impl<'a> Input<'a> {
    /// Wraps `x`; quantises it too when `quantize` (some weight using it is quantised).
    pub fn new(x: &'a [f32], cols: usize, quantize: bool) -> Self {
        let rows = x.len() / cols.max(1);
        let q = (quantize && cols.is_multiple_of(QK)).then(|| QActs::quantize(x, cols));
        Input { x, rows, cols, q }
    }
}

/// Returns `[inp.rows, w.rows()]`, row-major.
pub fn matmul(w: &Matrix, inp: &Input<'_>) -> Vec<f32> {
    let t = inp.rows;
    let n = w.rows();
    let threads = rayon::current_num_threads().max(1);
    let chunk_rows = (n / (threads * 8)).clamp(4, 256);
    let mut tmp = vec![0f32; n * t];
    tmp.par_chunks_mut(chunk_rows * t)
        .enumerate()
        .for_each(|(ci, o)| kernel(w, ci * chunk_rows, o, inp));
    if t == 1 {
        return tmp;
    }
    let mut out = vec![0f32; n * t];
    for (r, col) in tmp.chunks_exact(t).enumerate() {
        for (ti, v) in col.iter().enumerate() {
            out[ti * n + r] = *v;
        }
    }
    out
}

fn kernel(w: &Matrix, row0: usize, out: &mut [f32], inp: &Input<'_>) {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::simd::Kind;
        if let (Some(x), true) = (&inp.q, crate::simd::available()) {
            let args = match w {
                Matrix::Q4_1 { cols, d, m, qs, .. } => {
                    Some((Kind::Q4_1, cols / QK, d, &m[..], &qs[..]))
                }
                Matrix::Q4_0 { cols, d, qs, .. } => {
                    Some((Kind::Q4_0, cols / QK, d, &[][..], &qs[..]))
                }
                Matrix::Q8_0 { cols, d, qs, .. } => {
                    Some((Kind::Q8_0, cols / QK, d, &[][..], as_bytes(qs)))
                }
                Matrix::F32 { .. } => None,
            };
            if let Some((kind, nb, d, m, qs)) = args {
                // SAFETY: AVX2 and FMA are present (checked by `available`).
                unsafe { crate::simd::rows(kind, nb, d, m, qs, row0, x, inp.rows, out) };
                return;
            }
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above), which is all
            // `kernel_avx2` requires; it only calls the safe generic kernel.
            unsafe { kernel_avx2(w, row0, out, inp) };
            return;
        }
    }
    kernel_generic(w, row0, out, inp);
}

/// Views signed bytes as unsigned (same size and alignment).
#[cfg(target_arch = "x86_64")]
fn as_bytes(v: &[i8]) -> &[u8] {
    // SAFETY: i8 and u8 have identical size, alignment and validity; the length is kept.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), v.len()) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn kernel_avx2(w: &Matrix, row0: usize, out: &mut [f32], inp: &Input<'_>) {
    kernel_generic(w, row0, out, inp);
}

#[inline(always)]
fn kernel_generic(w: &Matrix, row0: usize, out: &mut [f32], inp: &Input<'_>) {
    let t = inp.rows;
    match (w, &inp.q) {
        (Matrix::Q4_1 { cols, d, m, qs, .. }, Some(x)) => {
            let nb = cols / QK;
            for (ri, orow) in out.chunks_exact_mut(t).enumerate() {
                let r = row0 + ri;
                orow.fill(0.0);
                for b in 0..nb {
                    let wq = unpack_nibbles(&qs[(r * nb + b) * 16..(r * nb + b + 1) * 16], 0);
                    let (wd, wm) = (d[r * nb + b], m[r * nb + b]);
                    for (ti, o) in orow.iter_mut().enumerate() {
                        let xi = ti * nb + b;
                        let isum = dot_i8(&wq, &x.qs[xi * QK..(xi + 1) * QK]);
                        *o += wd * x.d[xi] * isum as f32 + wm * x.s[xi];
                    }
                }
            }
        }
        (Matrix::Q4_0 { cols, d, qs, .. }, Some(x)) => {
            let nb = cols / QK;
            for (ri, orow) in out.chunks_exact_mut(t).enumerate() {
                let r = row0 + ri;
                orow.fill(0.0);
                for b in 0..nb {
                    let wq = unpack_nibbles(&qs[(r * nb + b) * 16..(r * nb + b + 1) * 16], 8);
                    let wd = d[r * nb + b];
                    for (ti, o) in orow.iter_mut().enumerate() {
                        let xi = ti * nb + b;
                        let isum = dot_i8(&wq, &x.qs[xi * QK..(xi + 1) * QK]);
                        *o += wd * x.d[xi] * isum as f32;
                    }
                }
            }
        }
        (Matrix::Q8_0 { cols, d, qs, .. }, Some(x)) => {
            let nb = cols / QK;
            for (ri, orow) in out.chunks_exact_mut(t).enumerate() {
                let r = row0 + ri;
                orow.fill(0.0);
                for b in 0..nb {
                    let wq = &qs[(r * nb + b) * QK..(r * nb + b + 1) * QK];
                    let wd = d[r * nb + b];
                    for (ti, o) in orow.iter_mut().enumerate() {
                        let xi = ti * nb + b;
                        let isum = dot_i8(wq, &x.qs[xi * QK..(xi + 1) * QK]);
                        *o += wd * x.d[xi] * isum as f32;
                    }
                }
            }
        }
        (w, _) => {
            // f32 weights, or a quantised matrix whose input was not quantised: dense path.
            let cols = w.cols();
            let mut row = vec![0f32; cols];
            for (ri, orow) in out.chunks_exact_mut(t).enumerate() {
                let r = row0 + ri;
                let wrow: &[f32] = match w {
                    Matrix::F32 { data, .. } => &data[r * cols..(r + 1) * cols],
                    other => {
                        other.row_f32(r, &mut row);
                        &row
                    }
                };
                for (ti, o) in orow.iter_mut().enumerate() {
                    *o = dot_f32(wrow, &inp.x[ti * cols..(ti + 1) * cols]);
                }
            }
        }
    }
}

#[inline(always)]
fn unpack_nibbles(q: &[u8], offset: i8) -> [i8; QK] {
    let mut w = [0i8; QK];
    for j in 0..16 {
        w[j] = (q[j] & 15) as i8 - offset;
        w[j + 16] = (q[j] >> 4) as i8 - offset;
    }
    w
}

#[inline(always)]
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    let mut s = 0i32;
    for (x, y) in a[..QK].iter().zip(&b[..QK]) {
        s += (*x as i16 * *y as i16) as i32;
    }
    s
}

/// Dot product with 16 independent lanes (vectorisable, fixed summation order).
#[inline(always)]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let (ac, ar) = a.as_chunks::<16>();
    let (bc, br) = b.as_chunks::<16>();
    let mut acc = [0f32; 16];
    for (x, y) in ac.iter().zip(bc) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ar.iter().zip(br) {
        tail += x * y;
    }
    let mut h = [0f32; 8];
    for l in 0..8 {
        h[l] = acc[l] + acc[l + 8];
    }
    let q = [h[0] + h[4], h[1] + h[5], h[2] + h[6], h[3] + h[7]];
    (q[0] + q[2]) + (q[1] + q[3]) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand_vec(n: usize, seed: &mut u64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn dense(w: &Matrix, x: &[f32], t: usize) -> Vec<f32> {
        let (n, k) = (w.rows(), w.cols());
        let mut row = vec![0f32; k];
        let mut out = vec![0f32; t * n];
        for r in 0..n {
            w.row_f32(r, &mut row);
            for ti in 0..t {
                out[ti * n + r] = (0..k)
                    .map(|j| row[j] as f64 * x[ti * k + j] as f64)
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    fn q4_1_random(n: usize, k: usize, seed: &mut u64) -> Matrix {
        let nb = n * k / QK;
        let d = rand_vec(nb, seed).iter().map(|v| v.abs() * 0.1).collect();
        let m = rand_vec(nb, seed).iter().map(|v| v * 0.5).collect();
        let qs = rand_vec(nb * 16, seed)
            .iter()
            .map(|v| ((v + 1.0) * 127.9) as u8)
            .collect();
        Matrix::Q4_1 {
            rows: n,
            cols: k,
            d,
            m,
            qs,
        }
    }

    #[test]
    fn quantized_matmul_matches_dequantized_reference() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let (n, k, t) = (37, 128, 5);
        let w = q4_1_random(n, k, &mut seed);
        let x = rand_vec(t * k, &mut seed);
        let got = matmul(&w, &Input::new(&x, k, true));
        let want = dense(&w, &x, t);
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (g, r) in got.iter().zip(&want) {
            // 8-bit activations: error about 1% of the output scale at most.
            assert!((g - r).abs() <= 0.01 * scale, "{g} vs {r} (scale {scale})");
        }
        // f32 weights are exact up to rounding.
        let wf = Matrix::F32 {
            rows: n,
            cols: k,
            data: rand_vec(n * k, &mut seed),
        };
        let got = matmul(&wf, &Input::new(&x, k, false));
        let want = dense(&wf, &x, t);
        for (g, r) in got.iter().zip(&want) {
            assert!((g - r).abs() <= 1e-4 * (1.0 + r.abs()), "{g} vs {r}");
        }
    }

    #[test]
    fn q4_0_and_q8_0_match_dequantized_reference() {
        let mut seed = 7u64;
        let (n, k, t) = (29, 96, 9);
        let nb = n * k / QK;
        let d: Vec<f32> = rand_vec(nb, &mut seed)
            .iter()
            .map(|v| v.abs() * 0.1)
            .collect();
        let q4 = Matrix::Q4_0 {
            rows: n,
            cols: k,
            d: d.clone(),
            qs: rand_vec(nb * 16, &mut seed)
                .iter()
                .map(|v| ((v + 1.0) * 127.9) as u8)
                .collect(),
        };
        let q8 = Matrix::Q8_0 {
            rows: n,
            cols: k,
            d,
            qs: rand_vec(nb * QK, &mut seed)
                .iter()
                .map(|v| (v * 127.0) as i8)
                .collect(),
        };
        let x = rand_vec(t * k, &mut seed);
        for w in [&q4, &q8] {
            let got = matmul(w, &Input::new(&x, k, true));
            let want = dense(w, &x, t);
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            assert!(scale > 0.1);
            for (g, r) in got.iter().zip(&want) {
                assert!((g - r).abs() <= 0.01 * scale, "{g} vs {r} (scale {scale})");
            }
        }
    }

    #[test]
    fn rows_do_not_depend_on_batch_mates() {
        let mut seed = 42u64;
        let (n, k) = (64, 96);
        let w = q4_1_random(n, k, &mut seed);
        let x = rand_vec(7 * k, &mut seed);
        let all = matmul(&w, &Input::new(&x, k, true));
        for ti in 0..7 {
            let one = matmul(&w, &Input::new(&x[ti * k..(ti + 1) * k], k, true));
            assert_eq!(&all[ti * n..(ti + 1) * n], &one[..]);
        }
    }
}
