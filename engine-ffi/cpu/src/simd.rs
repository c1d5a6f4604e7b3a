//! AVX2 kernels for quantised weights × 8-bit activations (llama.cpp's scheme): per 32-block
//! `maddubs` of unsigned × signed bytes, widened to i32, converted and fused into an f32x8
//! accumulator with the product of both block scales; one horizontal sum per output.
//! Tokens go in groups of up to eight per weight row (the row stays in L1); each token's arithmetic
//! is the same whatever its group, so results are independent of batch composition.

#![allow(unsafe_code)]

use crate::tensor::{QActs, QK};
use std::arch::x86_64::*;

/// Which weight format a row uses.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `d * q + m`, 4-bit `q`.
    Q4_1,
    /// `d * (q - 8)`, 4-bit `q`.
    Q4_0,
    /// `d * q`, signed 8-bit `q`.
    Q8_0,
}

/// Whether the AVX2 kernels can run here.
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Whether the AVX-512 VNNI dot product (`vpdpbusd` on 256-bit registers) is available.
fn vnni() -> bool {
    std::arch::is_x86_feature_detected!("avx512vnni")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

/// Computes `out[ri * t + ti]` for rows `row0..row0 + out.len() / t` of a quantised matrix
/// with `nb` blocks per row. `m` is empty unless `kind` is Q4_1; `qs` holds 16 bytes per
/// block for the 4-bit kinds, 32 for Q8_0.
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`available`]).
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn rows(
    kind: Kind,
    nb: usize,
    d: &[f32],
    m: &[f32],
    qs: &[u8],
    row0: usize,
    x: &QActs,
    t: usize,
    out: &mut [f32],
) {
    let qbytes = if kind == Kind::Q8_0 { QK } else { 16 };
    let n_rows = out.len() / t.max(1);
    let row_end = row0 + n_rows;
    // Every pointer read below stays inside these bounds.
    if t == 0
        || d.len() < row_end * nb
        || qs.len() < row_end * nb * qbytes
        || (kind == Kind::Q4_1 && m.len() < row_end * nb)
        || x.d.len() < t * nb
        || x.qs.len() < t * nb * QK
    {
        return;
    }
    let use_vnni = vnni();
    for (ri, orow) in out.chunks_exact_mut(t).enumerate() {
        let r = row0 + ri;
        let wd = &d[r * nb..(r + 1) * nb];
        let wq = &qs[r * nb * qbytes..(r + 1) * nb * qbytes];
        let mut t0 = 0;
        while t0 < t {
            let g = if t - t0 >= 8 {
                8
            } else if t - t0 >= 4 {
                4
            } else {
                1
            };
            let o = &mut orow[t0..t0 + g];
            // SAFETY: bounds checked above; AVX2/FMA guaranteed by the caller, VNNI
            // checked by `vnni()`.
            unsafe {
                match (g, use_vnni) {
                    (8, true) => group_vnni::<8>(kind, nb, wd, wq, x, t0, o),
                    (8, false) => group_avx2::<8>(kind, nb, wd, wq, x, t0, o),
                    (4, true) => group_vnni::<4>(kind, nb, wd, wq, x, t0, o),
                    (4, false) => group_avx2::<4>(kind, nb, wd, wq, x, t0, o),
                    (_, true) => group_vnni::<1>(kind, nb, wd, wq, x, t0, o),
                    (_, false) => group_avx2::<1>(kind, nb, wd, wq, x, t0, o),
                }
            };
            t0 += g;
        }
        if kind == Kind::Q4_1 {
            let wm = &m[r * nb..(r + 1) * nb];
            for (ti, o) in orow.iter_mut().enumerate() {
                *o += crate::matmul::dot_f32(wm, &x.s[ti * nb..(ti + 1) * nb]);
            }
        }
    }
}

/// `G` tokens starting at `t0` against one weight row (`wd`: `nb` scales, `wq`: its quants).
///
/// # Safety
/// AVX2/FMA present; `x` holds at least `t0 + G` rows of `nb` blocks; `wq` holds `nb` blocks.
#[target_feature(enable = "avx2,fma")]
unsafe fn group_avx2<const G: usize>(
    kind: Kind,
    nb: usize,
    wd: &[f32],
    wq: &[u8],
    x: &QActs,
    t0: usize,
    out: &mut [f32],
) {
    // SAFETY: forwarded contract.
    unsafe { group::<G, false>(kind, nb, wd, wq, x, t0, out) }
}

/// [`group_avx2`] with `vpdpbusd` in place of `maddubs` + `madd` (identical integer sums:
/// neither saturates for these value ranges).
///
/// # Safety
/// As [`group_avx2`], plus AVX-512 VNNI and VL.
#[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
unsafe fn group_vnni<const G: usize>(
    kind: Kind,
    nb: usize,
    wd: &[f32],
    wq: &[u8],
    x: &QActs,
    t0: usize,
    out: &mut [f32],
) {
    // SAFETY: forwarded contract.
    unsafe { group::<G, true>(kind, nb, wd, wq, x, t0, out) }
}

/// # Safety
/// Only inlined into [`group_avx2`] / [`group_vnni`], whose contracts it shares.
#[inline(always)]
unsafe fn group<const G: usize, const VNNI: bool>(
    kind: Kind,
    nb: usize,
    wd: &[f32],
    wq: &[u8],
    x: &QActs,
    t0: usize,
    out: &mut [f32],
) {
    let qbytes = if kind == Kind::Q8_0 { QK } else { 16 };
    let xq = x.qs.as_ptr();
    let xd = x.d.as_ptr();
    // SAFETY: the intrinsics need AVX2/FMA (and VNNI when `VNNI`), which the callers'
    // target features and contracts provide. Raw reads: b < nb, `wq` holds nb blocks and
    // `x` holds rows t0..t0+G of nb blocks each (caller's contract).
    unsafe {
        let mut acc = [_mm256_setzero_ps(); G];
        let ones = _mm256_set1_epi16(1);
        let mask = _mm_set1_epi8(0x0F);
        for (b, &wdb) in wd.iter().enumerate().take(nb) {
            let wp = wq.as_ptr().add(b * qbytes);
            let w = match kind {
                Kind::Q8_0 => _mm256_loadu_si256(wp.cast()),
                _ => {
                    let raw = _mm_loadu_si128(wp.cast());
                    let lo = _mm_and_si128(raw, mask);
                    let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
                    let v = _mm256_set_m128i(hi, lo);
                    if kind == Kind::Q4_0 {
                        _mm256_sub_epi8(v, _mm256_set1_epi8(8))
                    } else {
                        v
                    }
                }
            };
            let signed = kind != Kind::Q4_1;
            let wu = if signed { _mm256_sign_epi8(w, w) } else { w };
            for (k, a) in acc.iter_mut().enumerate() {
                let xi = (t0 + k) * nb + b;
                let mut xv = _mm256_loadu_si256(xq.add(xi * QK).cast());
                if signed {
                    xv = _mm256_sign_epi8(xv, w);
                }
                let p32 = if VNNI {
                    _mm256_dpbusd_epi32(_mm256_setzero_si256(), wu, xv)
                } else {
                    _mm256_madd_epi16(_mm256_maddubs_epi16(wu, xv), ones)
                };
                let scale = _mm256_set1_ps(wdb * *xd.add(xi));
                *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), scale, *a);
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            *o = hsum(a);
        }
    }
}

#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}
