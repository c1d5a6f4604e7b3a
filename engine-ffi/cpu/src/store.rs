//! Raw tensors from a weight file, keyed by their HF names, converted on demand into
//! [`Matrix`] or `f32` vectors. Kept in this crate for now (ARCHITECTURE puts weight
//! loading in `ferrite-engine`; it moves there once the shared loader exists).

use crate::error::{CpuError, Result};
use crate::tensor::{Matrix, QK};
use ferrite_model::GgmlType;
use half::{bf16, f16};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
}

impl DType {
    /// The CPU type of a GGML type; `None` for types the kernels do not implement.
    pub fn from_ggml(t: GgmlType) -> Option<Self> {
        Some(match t {
            GgmlType::F32 => DType::F32,
            GgmlType::F16 => DType::F16,
            GgmlType::BF16 => DType::BF16,
            GgmlType::Q4_0 => DType::Q4_0,
            GgmlType::Q4_1 => DType::Q4_1,
            GgmlType::Q8_0 => DType::Q8_0,
            _ => return None,
        })
    }

    /// Bytes of `n` elements, `None` when `n` does not fill whole blocks.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        match self {
            DType::F32 => Some(n * 4),
            DType::F16 | DType::BF16 => Some(n * 2),
            DType::Q4_0 => n.is_multiple_of(QK).then_some(n / QK * 18),
            DType::Q4_1 => n.is_multiple_of(QK).then_some(n / QK * 20),
            DType::Q8_0 => n.is_multiple_of(QK).then_some(n / QK * 34),
        }
    }
}

/// Where a tensor's bytes are.
pub enum Loc {
    /// `files[file][start..end]` of a [`Source::Files`] store.
    Span {
        file: usize,
        start: usize,
        end: usize,
    },
    /// The GGUF tensor of this name in a [`Source::Gguf`] store.
    Gguf(String),
}

pub struct RawTensor {
    pub dtype: DType,
    /// Outermost dimension first (`[rows, cols]` for a matrix).
    pub shape: Vec<usize>,
    pub loc: Loc,
}

/// The bytes behind a store's tensors.
pub enum Source {
    /// Whole files read into memory (safetensors shards).
    Files(Vec<Vec<u8>>),
    /// A mapped GGUF file.
    Gguf(ferrite_model::GgufFile),
}

/// Every tensor of a model, with the bytes of the files that hold them.
pub struct TensorStore {
    pub path: PathBuf,
    pub source: Source,
    pub tensors: HashMap<String, RawTensor>,
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

impl TensorStore {
    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn get(&self, name: &str) -> Result<(&RawTensor, &[u8])> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| CpuError::file(&self.path, format!("missing tensor {name}")))?;
        let bytes = match (&t.loc, &self.source) {
            (Loc::Span { file, start, end }, Source::Files(files)) => {
                files.get(*file).and_then(|f| f.get(*start..*end))
            }
            (Loc::Gguf(gname), Source::Gguf(g)) => Some(g.tensor_data(gname)?.1),
            _ => None,
        };
        let bytes = bytes
            .ok_or_else(|| CpuError::file(&self.path, format!("tensor {name} out of bounds")))?;
        Ok((t, bytes))
    }

    /// A 1-D tensor as `f32` (norm weights, biases); must have `len` elements.
    pub fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let (t, b) = self.get(name)?;
        let n: usize = t.shape.iter().product();
        if n != len {
            return Err(CpuError::file(
                &self.path,
                format!("tensor {name}: {n} elements, expected {len}"),
            ));
        }
        let v = match t.dtype {
            DType::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F16 => (0..n).map(|i| f16_at(b, 2 * i)).collect(),
            DType::BF16 => (0..n)
                .map(|i| bf16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f32())
                .collect(),
            _ => {
                let m = self.matrix(name, 1, n)?;
                let mut out = vec![0f32; n];
                m.row_f32(0, &mut out);
                out
            }
        };
        Ok(v)
    }

    /// A `[rows, cols]` matrix, quantised types kept quantised.
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix> {
        let (t, b) = self.get(name)?;
        let n: usize = t.shape.iter().product();
        if n != rows * cols || t.shape.last().copied().unwrap_or(0) != cols {
            return Err(CpuError::file(
                &self.path,
                format!(
                    "tensor {name}: shape {:?}, expected [{rows}, {cols}]",
                    t.shape
                ),
            ));
        }
        let nb = n / QK;
        let m = match t.dtype {
            DType::F32 | DType::F16 | DType::BF16 => Matrix::F32 {
                rows,
                cols,
                data: self.vector_unchecked(t.dtype, b, n),
            },
            DType::Q4_1 => {
                let (mut d, mut m, mut qs) =
                    (Vec::with_capacity(nb), Vec::with_capacity(nb), Vec::new());
                qs.reserve(nb * 16);
                for blk in b.chunks_exact(20) {
                    d.push(f16_at(blk, 0));
                    m.push(f16_at(blk, 2));
                    qs.extend_from_slice(&blk[4..20]);
                }
                Matrix::Q4_1 {
                    rows,
                    cols,
                    d,
                    m,
                    qs,
                }
            }
            DType::Q4_0 => {
                let (mut d, mut qs) = (Vec::with_capacity(nb), Vec::with_capacity(nb * 16));
                for blk in b.chunks_exact(18) {
                    d.push(f16_at(blk, 0));
                    qs.extend_from_slice(&blk[2..18]);
                }
                Matrix::Q4_0 { rows, cols, d, qs }
            }
            DType::Q8_0 => {
                let (mut d, mut qs) = (Vec::with_capacity(nb), Vec::with_capacity(nb * QK));
                for blk in b.chunks_exact(34) {
                    d.push(f16_at(blk, 0));
                    qs.extend(blk[2..34].iter().map(|&v| v as i8));
                }
                Matrix::Q8_0 { rows, cols, d, qs }
            }
        };
        Ok(m)
    }

    fn vector_unchecked(&self, dtype: DType, b: &[u8], n: usize) -> Vec<f32> {
        match dtype {
            DType::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F16 => (0..n).map(|i| f16_at(b, 2 * i)).collect(),
            _ => (0..n)
                .map(|i| bf16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f32())
                .collect(),
        }
    }
}

/// Reads a whole file, naming it in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| CpuError::io(path, e))
}
