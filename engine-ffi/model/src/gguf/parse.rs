//! Bounds-checked parsing of the GGUF header; every defect becomes a message.

use super::{GgmlType, GgufTensorInfo, GgufValue};

pub(super) const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Nesting limit for arrays of arrays (real files use depth 1).
const MAX_DEPTH: u32 = 8;

pub(super) struct Header {
    pub version: u32,
    pub metadata: Vec<(String, GgufValue)>,
    pub tensors: Vec<GgufTensorInfo>,
    pub alignment: u64,
    pub data_offset: u64,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

type R<T> = std::result::Result<T, String>;

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> R<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                format!(
                    "truncated: {what} needs {n} bytes at offset {} but the file has {}",
                    self.pos,
                    self.buf.len()
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn array<const N: usize>(&mut self, what: &str) -> R<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u8(&mut self, w: &str) -> R<u8> {
        Ok(self.array::<1>(w)?[0])
    }
    fn u16(&mut self, w: &str) -> R<u16> {
        Ok(u16::from_le_bytes(self.array(w)?))
    }
    fn u32(&mut self, w: &str) -> R<u32> {
        Ok(u32::from_le_bytes(self.array(w)?))
    }
    fn u64(&mut self, w: &str) -> R<u64> {
        Ok(u64::from_le_bytes(self.array(w)?))
    }

    fn string(&mut self, what: &str) -> R<String> {
        let len = self.u64(what)?;
        let len = usize::try_from(len).map_err(|_| format!("{what}: length {len} too large"))?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what}: not valid UTF-8"))
    }

    fn value(&mut self, ty: u32, what: &str, depth: u32) -> R<GgufValue> {
        Ok(match ty {
            0 => GgufValue::U8(self.u8(what)?),
            1 => GgufValue::I8(self.u8(what)? as i8),
            2 => GgufValue::U16(self.u16(what)?),
            3 => GgufValue::I16(self.u16(what)? as i16),
            4 => GgufValue::U32(self.u32(what)?),
            5 => GgufValue::I32(self.u32(what)? as i32),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.u8(what)? {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(format!("{what}: invalid bool byte {b}")),
            },
            8 => GgufValue::String(self.string(what)?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(format!("{what}: arrays nested deeper than {MAX_DEPTH}"));
                }
                let elem = self.u32(what)?;
                let count = self.u64(what)?;
                // Every element takes at least one byte: a count beyond the
                // remaining bytes is corrupt, and this bounds the allocation.
                if count > self.remaining() as u64 {
                    return Err(format!(
                        "truncated: {what} declares {count} elements but only {} bytes remain",
                        self.remaining()
                    ));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem, what, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64(what)?),
            11 => GgufValue::I64(self.u64(what)? as i64),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            t => return Err(format!("{what}: unsupported value type {t}")),
        })
    }
}

pub(super) fn parse(buf: &[u8]) -> R<Header> {
    let mut c = Cursor { buf, pos: 0 };
    let magic = c.take(4, "magic")?;
    if magic != MAGIC {
        return Err(format!(
            "bad magic {magic:02x?} (expected \"GGUF\"); not a GGUF file"
        ));
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(format!(
            "unsupported GGUF version {version} (supported: 2, 3)"
        ));
    }
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.u64("metadata count")?;
    if n_kv > c.remaining() as u64 || n_tensors > c.remaining() as u64 {
        return Err(format!(
            "truncated: header declares {n_kv} metadata pairs and {n_tensors} tensors but only {} bytes follow",
            c.remaining()
        ));
    }
    let mut metadata = Vec::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let key = c.string(&format!("metadata key #{i}"))?;
        let ty = c.u32(&format!("type of `{key}`"))?;
        let v = c.value(ty, &format!("metadata `{key}`"), 0)?;
        metadata.push((key, v));
    }
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() => a,
            _ => return Err(format!("general.alignment {v:?} is not a power of two")),
        },
    };
    let mut tensors = Vec::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = c.string(&format!("tensor #{i} name"))?;
        let what = format!("tensor `{name}`");
        let n_dims = c.u32(&what)?;
        if n_dims == 0 || n_dims > 4 {
            return Err(format!("{what}: {n_dims} dimensions (expected 1..=4)"));
        }
        let mut shape = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            shape.push(c.u64(&what)?);
        }
        let ty = c.u32(&what)?;
        let dtype = GgmlType::from_id(ty)
            .ok_or_else(|| format!("{what}: unsupported tensor type id {ty}"))?;
        let offset = c.u64(&what)?;
        if offset % alignment != 0 {
            return Err(format!(
                "{what}: offset {offset} not aligned to {alignment}"
            ));
        }
        let n: u64 = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| format!("{what}: shape {shape:?} overflows"))?;
        if shape[0] % dtype.block_size() as u64 != 0 || dtype.bytes_for(n).is_none() {
            return Err(format!(
                "{what}: row length {} is not a multiple of the {dtype} block size {}",
                shape[0],
                dtype.block_size()
            ));
        }
        tensors.push(GgufTensorInfo {
            name,
            shape,
            dtype,
            offset,
        });
    }
    let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
    for t in &tensors {
        let end = data_offset
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(t.n_bytes()));
        match end {
            Some(e) if e <= buf.len() as u64 => {}
            _ => {
                return Err(format!(
                    "truncated: tensor `{}` ({} {:?}, {} bytes at data offset {}) ends past the file end ({} bytes)",
                    t.name,
                    t.dtype,
                    t.shape,
                    t.n_bytes(),
                    t.offset,
                    buf.len()
                ));
            }
        }
    }
    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}
