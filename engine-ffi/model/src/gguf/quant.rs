//! On-disk block layouts of the GGML quantised types and their dequantisation.
//!
//! All multi-byte fields are little-endian; `f16` is IEEE half precision.
//! Element `j` of a block is weight `j` of the row segment the block covers.
//!
//! | type | elems | bytes | layout |
//! |---|---|---|---|
//! | Q4_0 | 32 | 18 | `d: f16`, `qs: [u8; 16]`; `w[j] = d * ((qs[j] & 0xF) - 8)`, `w[j+16] = d * ((qs[j] >> 4) - 8)` for j in 0..16 |
//! | Q4_1 | 32 | 20 | `d: f16`, `m: f16`, `qs: [u8; 16]`; `w[j] = d * (qs[j] & 0xF) + m`, `w[j+16] = d * (qs[j] >> 4) + m` |
//! | Q5_0 | 32 | 22 | `d: f16`, `qh: u32`, `qs: [u8; 16]`; 5th bit of `w[j]` is bit j of qh, of `w[j+16]` bit j+16; value minus 16, times d |
//! | Q5_1 | 32 | 24 | `d: f16`, `m: f16`, `qh: u32`, `qs: [u8; 16]`; as Q5_0 without the -16, plus m |
//! | Q8_0 | 32 | 34 | `d: f16`, `qs: [i8; 32]`; `w[j] = d * qs[j]` |
//! | Q4_K | 256 | 144 | `d: f16`, `dmin: f16`, `scales: [u8; 12]` (8 six-bit scale/min pairs), `qs: [u8; 128]` |
//! | Q6_K | 256 | 210 | `ql: [u8; 128]`, `qh: [u8; 64]`, `scales: [i8; 16]`, `d: f16` |
//!
//! So in Q4_0/Q4_1 the low nibbles hold weights 0..15 and the high nibbles weights 16..31.

use half::{bf16, f16};

use super::dtype::GgmlType;
use crate::error::{ModelError, Result};

fn f16_at(b: &[u8], at: usize) -> f16 {
    f16::from_le_bytes([b[at], b[at + 1]])
}

fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

/// Q4_0 block: 32 weights, `w = d * (q - 8)` with 4-bit `q`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; 16],
}

impl BlockQ4_0 {
    pub const ELEMS: usize = 32;
    pub const BYTES: usize = 18;

    /// Reads one block from its first [`Self::BYTES`] bytes; `None` if too short.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        (b.len() >= Self::BYTES).then(|| Self {
            d: f16_at(b, 0),
            qs: arr(&b[2..]),
        })
    }

    /// The on-disk bytes of this block.
    pub fn to_bytes(&self) -> [u8; 18] {
        let mut o = [0u8; 18];
        o[..2].copy_from_slice(&self.d.to_le_bytes());
        o[2..].copy_from_slice(&self.qs);
        o
    }

    pub fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (j, &q) in self.qs.iter().enumerate() {
            out[j] = d * ((q & 0x0F) as i32 - 8) as f32;
            out[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
        }
    }
}

/// Q4_1 block: 32 weights, `w = d * q + m` with 4-bit `q`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; 16],
}

impl BlockQ4_1 {
    pub const ELEMS: usize = 32;
    pub const BYTES: usize = 20;

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        (b.len() >= Self::BYTES).then(|| Self {
            d: f16_at(b, 0),
            m: f16_at(b, 2),
            qs: arr(&b[4..]),
        })
    }

    pub fn to_bytes(&self) -> [u8; 20] {
        let mut o = [0u8; 20];
        o[..2].copy_from_slice(&self.d.to_le_bytes());
        o[2..4].copy_from_slice(&self.m.to_le_bytes());
        o[4..].copy_from_slice(&self.qs);
        o
    }

    pub fn dequantize(&self, out: &mut [f32]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        for (j, &q) in self.qs.iter().enumerate() {
            out[j] = d * (q & 0x0F) as f32 + m;
            out[j + 16] = d * (q >> 4) as f32 + m;
        }
    }
}

/// Q5_0 block: 32 weights, `w = d * (q - 16)` with 5-bit `q` (high bits in `qh`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ5_0 {
    pub d: f16,
    pub qh: u32,
    pub qs: [u8; 16],
}

impl BlockQ5_0 {
    pub const ELEMS: usize = 32;
    pub const BYTES: usize = 22;

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        (b.len() >= Self::BYTES).then(|| Self {
            d: f16_at(b, 0),
            qh: u32::from_le_bytes(arr(&b[2..])),
            qs: arr(&b[6..]),
        })
    }

    pub fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (j, &q) in self.qs.iter().enumerate() {
            let h0 = ((self.qh >> j) & 1) << 4;
            let h1 = ((self.qh >> (j + 16)) & 1) << 4;
            out[j] = d * (((q & 0x0F) as u32 | h0) as i32 - 16) as f32;
            out[j + 16] = d * (((q >> 4) as u32 | h1) as i32 - 16) as f32;
        }
    }
}

/// Q5_1 block: 32 weights, `w = d * q + m` with 5-bit `q` (high bits in `qh`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: u32,
    pub qs: [u8; 16],
}

impl BlockQ5_1 {
    pub const ELEMS: usize = 32;
    pub const BYTES: usize = 24;

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        (b.len() >= Self::BYTES).then(|| Self {
            d: f16_at(b, 0),
            m: f16_at(b, 2),
            qh: u32::from_le_bytes(arr(&b[4..])),
            qs: arr(&b[8..]),
        })
    }

    pub fn dequantize(&self, out: &mut [f32]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        for (j, &q) in self.qs.iter().enumerate() {
            let h0 = ((self.qh >> j) & 1) << 4;
            let h1 = ((self.qh >> (j + 16)) & 1) << 4;
            out[j] = d * ((q & 0x0F) as u32 | h0) as f32 + m;
            out[j + 16] = d * ((q >> 4) as u32 | h1) as f32 + m;
        }
    }
}

/// Q8_0 block: 32 weights, `w = d * q` with signed 8-bit `q`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; 32],
}

impl BlockQ8_0 {
    pub const ELEMS: usize = 32;
    pub const BYTES: usize = 34;

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        (b.len() >= Self::BYTES).then(|| {
            let mut qs = [0i8; 32];
            for (o, &x) in qs.iter_mut().zip(&b[2..34]) {
                *o = x as i8;
            }
            Self {
                d: f16_at(b, 0),
                qs,
            }
        })
    }

    pub fn to_bytes(&self) -> [u8; 34] {
        let mut o = [0u8; 34];
        o[..2].copy_from_slice(&self.d.to_le_bytes());
        for (o, &q) in o[2..].iter_mut().zip(&self.qs) {
            *o = q as u8;
        }
        o
    }

    pub fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = d * q as f32;
        }
    }

    /// Quantises 32 values the way llama.cpp does (`d = amax / 127`, round to nearest).
    pub fn quantize(x: &[f32]) -> Self {
        let amax = x.iter().take(32).fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0i8; 32];
        for (q, &v) in qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
        }
        Self {
            d: f16::from_f32(d),
            qs,
        }
    }
}

/// Q4_K super-block: 256 weights in 8 sub-blocks of 32, each with a 6-bit scale and min.
pub struct BlockQ4K;

impl BlockQ4K {
    pub const ELEMS: usize = 256;
    pub const BYTES: usize = 144;

    fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
        if j < 4 {
            (q[j] & 63, q[j + 4] & 63)
        } else {
            (
                (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
                (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
            )
        }
    }

    /// Dequantises one block given its 144 bytes.
    pub fn dequantize(b: &[u8], out: &mut [f32]) {
        let d = f16_at(b, 0).to_f32();
        let min = f16_at(b, 2).to_f32();
        let scales = &b[4..16];
        let qs = &b[16..144];
        for chunk in 0..4 {
            let (sc1, m1) = Self::scale_min(2 * chunk, scales);
            let (sc2, m2) = Self::scale_min(2 * chunk + 1, scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let q = &qs[chunk * 32..chunk * 32 + 32];
            let y = &mut out[chunk * 64..chunk * 64 + 64];
            for l in 0..32 {
                y[l] = d1 * (q[l] & 0x0F) as f32 - m1;
                y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

/// Q6_K super-block: 256 weights, 6-bit quants in 16 sub-blocks with i8 scales.
pub struct BlockQ6K;

impl BlockQ6K {
    pub const ELEMS: usize = 256;
    pub const BYTES: usize = 210;

    /// Dequantises one block given its 210 bytes.
    pub fn dequantize(b: &[u8], out: &mut [f32]) {
        let d = f16_at(b, 208).to_f32();
        for half in 0..2 {
            let ql = &b[half * 64..half * 64 + 64];
            let qh = &b[128 + half * 32..128 + half * 32 + 32];
            let sc = &b[192 + half * 8..192 + half * 8 + 8];
            let y = &mut out[half * 128..half * 128 + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
            }
        }
    }
}

/// Converts one row (or any whole number of blocks) of `dtype` to f32.
///
/// `out.len()` is the number of elements; `bytes.len()` must be exactly the
/// bytes those elements take. Errors (never panics) on a length mismatch or a
/// type without a dequantiser.
pub fn dequantize_row(dtype: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let err = |msg: String| ModelError::Dequant {
        dtype: dtype.to_string(),
        msg,
    };
    let need = dtype.bytes_for(out.len() as u64).ok_or_else(|| {
        err(format!(
            "{} elements is not a whole number of blocks",
            out.len()
        ))
    })?;
    if need != bytes.len() as u64 {
        return Err(err(format!(
            "{} elements need {need} bytes, got {}",
            out.len(),
            bytes.len()
        )));
    }
    let bs = dtype.type_size();
    let n = dtype.block_size();
    let blocks = bytes.chunks_exact(bs).zip(out.chunks_exact_mut(n));
    match dtype {
        GgmlType::F32 => {
            for (b, o) in blocks {
                o[0] = f32::from_le_bytes(arr(b));
            }
        }
        GgmlType::F16 => {
            for (b, o) in blocks {
                o[0] = f16::from_le_bytes(arr(b)).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (b, o) in blocks {
                o[0] = bf16::from_le_bytes(arr(b)).to_f32();
            }
        }
        GgmlType::Q4_0 => blocks.for_each(|(b, o)| {
            if let Some(blk) = BlockQ4_0::from_bytes(b) {
                blk.dequantize(o)
            }
        }),
        GgmlType::Q4_1 => blocks.for_each(|(b, o)| {
            if let Some(blk) = BlockQ4_1::from_bytes(b) {
                blk.dequantize(o)
            }
        }),
        GgmlType::Q5_0 => blocks.for_each(|(b, o)| {
            if let Some(blk) = BlockQ5_0::from_bytes(b) {
                blk.dequantize(o)
            }
        }),
        GgmlType::Q5_1 => blocks.for_each(|(b, o)| {
            if let Some(blk) = BlockQ5_1::from_bytes(b) {
                blk.dequantize(o)
            }
        }),
        GgmlType::Q8_0 => blocks.for_each(|(b, o)| {
            if let Some(blk) = BlockQ8_0::from_bytes(b) {
                blk.dequantize(o)
            }
        }),
        GgmlType::Q4K => blocks.for_each(|(b, o)| BlockQ4K::dequantize(b, o)),
        GgmlType::Q6K => blocks.for_each(|(b, o)| BlockQ6K::dequantize(b, o)),
        other => return Err(err(format!("no dequantiser for {other}"))),
    }
    Ok(())
}
