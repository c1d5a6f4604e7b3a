//! Weight matrices as the kernels want them: row-major `[rows, cols]`, quantised types
//! repacked block-wise into separate scale and quant arrays (scales widened to f32).

use rayon::prelude::*;

/// Elements per quantisation block (Q4_0, Q4_1, Q8_0 and the Q8 activations).
pub const QK: usize = 32;

/// A `[rows, cols]` weight matrix (output features × input features).
#[derive(Clone, Debug)]
pub enum Matrix {
    F32 {
        rows: usize,
        cols: usize,
        data: Vec<f32>,
    },
    /// `w = d * q + m`; `qs` holds 16 bytes per block, low nibbles weights 0..16, high 16..32.
    Q4_1 {
        rows: usize,
        cols: usize,
        d: Vec<f32>,
        m: Vec<f32>,
        qs: Vec<u8>,
    },
    /// `w = d * (q - 8)`; nibble layout as Q4_1.
    Q4_0 {
        rows: usize,
        cols: usize,
        d: Vec<f32>,
        qs: Vec<u8>,
    },
    /// `w = d * q`, 32 signed bytes per block.
    Q8_0 {
        rows: usize,
        cols: usize,
        d: Vec<f32>,
        qs: Vec<i8>,
    },
}

impl Matrix {
    pub fn rows(&self) -> usize {
        match self {
            Matrix::F32 { rows, .. }
            | Matrix::Q4_1 { rows, .. }
            | Matrix::Q4_0 { rows, .. }
            | Matrix::Q8_0 { rows, .. } => *rows,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Matrix::F32 { cols, .. }
            | Matrix::Q4_1 { cols, .. }
            | Matrix::Q4_0 { cols, .. }
            | Matrix::Q8_0 { cols, .. } => *cols,
        }
    }

    pub fn is_quantized(&self) -> bool {
        !matches!(self, Matrix::F32 { .. })
    }

    /// Bytes the kernels read per full pass over the matrix.
    pub fn bytes(&self) -> usize {
        match self {
            Matrix::F32 { data, .. } => data.len() * 4,
            Matrix::Q4_1 { d, m, qs, .. } => (d.len() + m.len()) * 4 + qs.len(),
            Matrix::Q4_0 { d, qs, .. } => d.len() * 4 + qs.len(),
            Matrix::Q8_0 { d, qs, .. } => d.len() * 4 + qs.len(),
        }
    }

    /// Dequantises row `r` into `out` (`cols` long). Out-of-range rows leave `out` untouched.
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        if r >= self.rows() {
            return;
        }
        match self {
            Matrix::F32 { cols, data, .. } => out.copy_from_slice(&data[r * cols..(r + 1) * cols]),
            Matrix::Q4_1 { cols, d, m, qs, .. } => {
                let nb = cols / QK;
                for b in 0..nb {
                    let (db, mb) = (d[r * nb + b], m[r * nb + b]);
                    let q = &qs[(r * nb + b) * 16..(r * nb + b + 1) * 16];
                    for j in 0..16 {
                        out[b * QK + j] = db * (q[j] & 15) as f32 + mb;
                        out[b * QK + j + 16] = db * (q[j] >> 4) as f32 + mb;
                    }
                }
            }
            Matrix::Q4_0 { cols, d, qs, .. } => {
                let nb = cols / QK;
                for b in 0..nb {
                    let db = d[r * nb + b];
                    let q = &qs[(r * nb + b) * 16..(r * nb + b + 1) * 16];
                    for j in 0..16 {
                        out[b * QK + j] = db * ((q[j] & 15) as i32 - 8) as f32;
                        out[b * QK + j + 16] = db * ((q[j] >> 4) as i32 - 8) as f32;
                    }
                }
            }
            Matrix::Q8_0 { cols, d, qs, .. } => {
                let nb = cols / QK;
                for b in 0..nb {
                    let db = d[r * nb + b];
                    for j in 0..QK {
                        out[b * QK + j] = db * qs[(r * nb + b) * QK + j] as f32;
                    }
                }
            }
        }
    }
}

fn quantize_row(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    for (bi, (xb, qb)) in x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).enumerate() {
        let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let db = amax / 127.0;
        let id = if db > 0.0 { 1.0 / db } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in qb.iter_mut().zip(xb) {
            let qi = (v * id).round() as i32;
            *q = qi as i8;
            sum += qi;
        }
        d[bi] = db;
        s[bi] = db * sum as f32;
    }
}

/// Activations quantised to 8 bits per 32-block (llama.cpp's Q8_1): `x ≈ d * q`, and
/// `s = d * Σq` so that a Q4_1 offset `m` contributes `m * s`.
#[derive(Clone, Debug, Default)]
pub struct QActs {
    pub rows: usize,
    pub cols: usize,
    pub d: Vec<f32>,
    pub s: Vec<f32>,
    pub qs: Vec<i8>,
}

impl QActs {
    /// Quantises `x` (`rows × cols`, `cols` a multiple of 32) row by row.
    pub fn quantize(x: &[f32], cols: usize) -> Self {
        let rows = x.len() / cols.max(1);
        let nb = cols / QK;
        let mut out = QActs {
            rows,
            cols,
            d: vec![0.0; rows * nb],
            s: vec![0.0; rows * nb],
            qs: vec![0; rows * cols],
        };
        let cols_b = cols.max(QK);
        out.qs
            .par_chunks_mut(cols_b)
            .zip(out.d.par_chunks_mut(nb.max(1)))
            .zip(out.s.par_chunks_mut(nb.max(1)))
            .zip(x.par_chunks(cols_b))
            .with_min_len(8)
            .for_each(|(((qr, dr), sr), xr)| quantize_row(xr, qr, dr, sr));
        out
    }
}
