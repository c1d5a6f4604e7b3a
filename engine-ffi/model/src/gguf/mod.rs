//! GGUF v2/v3 reader over a memory map.
//!
//! Layout: magic `GGUF`, `version: u32`, `tensor_count: u64`, `kv_count: u64`,
//! `kv_count` metadata pairs (`key: string`, `type: u32`, value), `tensor_count`
//! tensor infos (`name: string`, `n_dims: u32`, `ne: [u64; n_dims]`, `type: u32`,
//! `offset: u64`), padding to `general.alignment` (default 32), then tensor data.
//! Strings are `u64` length + UTF-8 bytes; everything is little-endian.

mod dtype;
mod names;
mod parse;
mod permute;
pub mod quant;
mod value;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use dtype::GgmlType;
pub use names::{gguf_to_hf_name, hf_to_gguf_name};
pub use permute::unpermute_llama_qk;
pub use quant::{
    BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0, dequantize_row,
};
pub use value::GgufValue;

use crate::error::{ModelError, Result};

/// Where a tensor lives in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// GGUF order: `shape[0]` is the innermost dimension (the row length);
    /// a 2-D weight `[ne0, ne1]` has `ne1` rows of `ne0` elements (PyTorch `[ne1, ne0]`).
    pub shape: Vec<u64>,
    pub dtype: GgmlType,
    /// Offset of the data from the start of the data section (already aligned).
    pub offset: u64,
}

impl GgufTensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Bytes of the tensor's data.
    pub fn n_bytes(&self) -> u64 {
        self.dtype.bytes_for(self.n_elements()).unwrap_or(0)
    }

    /// Row length (`shape[0]`).
    pub fn row_len(&self) -> u64 {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Number of rows (product of `shape[1..]`).
    pub fn n_rows(&self) -> u64 {
        self.shape.iter().skip(1).product()
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> u64 {
        self.dtype.bytes_for(self.row_len()).unwrap_or(0)
    }
}

enum Storage {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Mmap(m) => m,
            Self::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file; tensor data is borrowed from the map, never copied.
pub struct GgufFile {
    path: PathBuf,
    storage: Storage,
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    index: HashMap<String, usize>,
    tensors: Vec<GgufTensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Maps and parses `path`. Fails with the path and the reason on any defect.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let io = |source| ModelError::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::File::open(&path).map_err(io)?;
        // SAFETY: the map is read-only and model files are not modified while
        // served; a concurrent truncation could fault, as with any mmap reader.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(path, Storage::Mmap(map))
    }

    /// Parses an in-memory GGUF image (tests, or files already read); `name`
    /// is used in error messages.
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(name.into(), Storage::Owned(bytes))
    }

    fn parse(path: PathBuf, storage: Storage) -> Result<Self> {
        let header = parse::parse(storage.bytes()).map_err(|msg| ModelError::Gguf {
            path: path.clone(),
            msg,
        })?;
        let index = header
            .metadata
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
        let tensor_index = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Self {
            path,
            storage,
            version: header.version,
            metadata: header.metadata,
            index,
            tensors: header.tensors,
            tensor_index,
            alignment: header.alignment,
            data_offset: header.data_offset,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset where tensor data starts.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// All metadata pairs in file order.
    pub fn metadata_entries(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    pub fn metadata(&self, key: &str) -> Option<&GgufValue> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.metadata(key).and_then(GgufValue::as_u64)
    }

    pub fn get_u32(&self, key: &str) -> Option<u32> {
        self.get_u64(key).and_then(|v| u32::try_from(v).ok())
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.metadata(key).and_then(GgufValue::as_f64)
    }

    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get_f64(key).map(|v| v as f32)
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.metadata(key).and_then(GgufValue::as_bool)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.metadata(key).and_then(GgufValue::as_str)
    }

    pub fn get_array(&self, key: &str) -> Option<&[GgufValue]> {
        self.metadata(key).and_then(GgufValue::as_array)
    }

    /// A string array; `None` if absent or any element is not a string.
    pub fn get_str_array(&self, key: &str) -> Option<Vec<&str>> {
        self.get_array(key)?.iter().map(GgufValue::as_str).collect()
    }

    /// A numeric array as f32; `None` if absent or not numeric.
    pub fn get_f32_array(&self, key: &str) -> Option<Vec<f32>> {
        self.get_array(key)?
            .iter()
            .map(|v| v.as_f64().map(|x| x as f32))
            .collect()
    }

    /// An integer array as i64.
    pub fn get_i64_array(&self, key: &str) -> Option<Vec<i64>> {
        self.get_array(key)?.iter().map(GgufValue::as_i64).collect()
    }

    /// `general.architecture` (e.g. "llama", "qwen2").
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor's info and its raw bytes (bounds were checked at open).
    pub fn tensor_data(&self, name: &str) -> Result<(&GgufTensorInfo, &[u8])> {
        let info = self.tensor_info(name).ok_or_else(|| ModelError::Gguf {
            path: self.path.clone(),
            msg: format!("no tensor named `{name}`"),
        })?;
        let start = (self.data_offset + info.offset) as usize;
        let end = start + info.n_bytes() as usize;
        let data = self
            .storage
            .bytes()
            .get(start..end)
            .ok_or_else(|| ModelError::Gguf {
                path: self.path.clone(),
                msg: format!("tensor `{name}` data {start}..{end} lies outside the file"),
            })?;
        Ok((info, data))
    }

    /// The whole tensor dequantised to f32, in GGUF order (rows of `shape[0]`).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let (info, data) = self.tensor_data(name)?;
        let mut out = vec![0f32; info.n_elements() as usize];
        dequantize_row(info.dtype, data, &mut out).map_err(|e| ModelError::Gguf {
            path: self.path.clone(),
            msg: format!("tensor `{name}`: {e}"),
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
