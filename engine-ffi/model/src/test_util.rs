//! Helpers shared by this crate's tests.

use std::path::PathBuf;

/// `$FERRITE_TEST_MODELS` or `<workspace>/../shared/models`; panics (test only)
/// with a clear message when the folder is missing.
pub fn models_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let rel = std::env::var_os("FERRITE_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/models"));
    // A relative value is taken relative to the workspace root.
    let dir = root.join(rel);
    assert!(
        dir.is_dir(),
        "test models folder {} not found: set FERRITE_TEST_MODELS to the shared models folder",
        dir.display()
    );
    dir
}

/// A file or folder inside the models folder, which must exist.
pub fn model_path(rel: &str) -> PathBuf {
    let p = models_dir().join(rel);
    assert!(p.exists(), "test model file {} is missing", p.display());
    p
}

pub fn smollm2_gguf() -> PathBuf {
    model_path("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The reference JSON of a model (`reference/<name>.json`).
pub fn reference(name: &str) -> serde_json::Value {
    let p = model_path(&format!("reference/{name}"));
    let text = std::fs::read_to_string(&p).expect("read reference");
    serde_json::from_str(&text).expect("parse reference")
}

/// Writes GGUF v3 images with metadata only (no tensors), for tests.
#[derive(Default)]
pub struct GgufBuilder {
    kv: Vec<u8>,
    n: u64,
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

impl GgufBuilder {
    fn key(&mut self, k: &str, ty: u32) {
        put_str(&mut self.kv, k);
        self.kv.extend(ty.to_le_bytes());
        self.n += 1;
    }
    pub fn string(mut self, k: &str, v: &str) -> Self {
        self.key(k, 8);
        put_str(&mut self.kv, v);
        self
    }
    pub fn u32(mut self, k: &str, v: u32) -> Self {
        self.key(k, 4);
        self.kv.extend(v.to_le_bytes());
        self
    }
    pub fn bool(mut self, k: &str, v: bool) -> Self {
        self.key(k, 7);
        self.kv.push(v as u8);
        self
    }
    pub fn strings(mut self, k: &str, v: &[String]) -> Self {
        self.key(k, 9);
        self.kv.extend(8u32.to_le_bytes());
        self.kv.extend((v.len() as u64).to_le_bytes());
        for s in v {
            put_str(&mut self.kv, s);
        }
        self
    }
    pub fn f32s(mut self, k: &str, v: &[f32]) -> Self {
        self.key(k, 9);
        self.kv.extend(6u32.to_le_bytes());
        self.kv.extend((v.len() as u64).to_le_bytes());
        for x in v {
            self.kv.extend(x.to_le_bytes());
        }
        self
    }
    pub fn i32s(mut self, k: &str, v: &[i32]) -> Self {
        self.key(k, 9);
        self.kv.extend(5u32.to_le_bytes());
        self.kv.extend((v.len() as u64).to_le_bytes());
        for x in v {
            self.kv.extend(x.to_le_bytes());
        }
        self
    }
    pub fn build(self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend(self.n.to_le_bytes());
        b.extend(self.kv);
        b
    }
}
