//! HF folders: `model.safetensors` or shards listed in `model.safetensors.index.json`.

use crate::error::{CpuError, Result};
use crate::store::{DType, Loc, RawTensor, Source, TensorStore, read_file};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// Loads every tensor of the HF model folder `dir`.
pub fn load_folder(dir: &Path) -> Result<TensorStore> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let shards: Vec<String> = if single.exists() {
        vec!["model.safetensors".to_string()]
    } else if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| CpuError::io(&index, e))?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| CpuError::file(&index, e.to_string()))?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| CpuError::file(&index, "no weight_map"))?;
        let set: BTreeSet<String> = map
            .values()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect();
        set.into_iter().collect()
    } else {
        return Err(CpuError::file(
            dir,
            "no model.safetensors or model.safetensors.index.json",
        ));
    };
    let mut files = Vec::new();
    let mut tensors = HashMap::new();
    for shard in shards {
        let path = dir.join(&shard);
        let bytes = read_file(&path)?;
        parse_into(&path, &bytes, files.len(), &mut tensors)?;
        files.push(bytes);
    }
    Ok(TensorStore {
        path: dir.to_path_buf(),
        source: Source::Files(files),
        tensors,
    })
}

fn parse_into(
    path: &Path,
    bytes: &[u8],
    file: usize,
    out: &mut HashMap<String, RawTensor>,
) -> Result<()> {
    let bad = |m: &str| CpuError::file(path, format!("not a safetensors file: {m}"));
    let len_bytes: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("too short"))?;
    let hlen = u64::from_le_bytes(len_bytes) as usize;
    let header = bytes
        .get(8..8usize.saturating_add(hlen))
        .ok_or_else(|| bad("header length"))?;
    let v: Value = serde_json::from_slice(header).map_err(|e| bad(&e.to_string()))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("header is not an object"))?;
    let base = 8 + hlen;
    for (name, info) in obj {
        if name == "__metadata__" {
            continue;
        }
        let dtype_s = info.get("dtype").and_then(Value::as_str).unwrap_or("");
        let dtype = match dtype_s {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            other => {
                return Err(CpuError::unsupported(
                    path,
                    format!("tensor {name} has dtype {other} (supported: F32, F16, BF16)"),
                ));
            }
        };
        let shape: Vec<usize> = info
            .get("shape")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_u64().map(|x| x as usize))
                    .collect()
            })
            .unwrap_or_default();
        let offs: Vec<usize> = info
            .get("data_offsets")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_u64().map(|x| x as usize))
                    .collect()
            })
            .unwrap_or_default();
        let (start, end) = match offs.as_slice() {
            [s, e] => (base + s, base + e),
            _ => return Err(bad(&format!("tensor {name} without data_offsets"))),
        };
        let n: usize = shape.iter().product();
        if end > bytes.len() || dtype.bytes_for(n) != Some(end.saturating_sub(start)) {
            return Err(bad(&format!("tensor {name} size mismatch")));
        }
        out.insert(
            name.clone(),
            RawTensor {
                dtype,
                shape,
                loc: Loc::Span { file, start, end },
            },
        );
    }
    Ok(())
}
