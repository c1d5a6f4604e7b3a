//! The bundled default model (stories260k, 1 MiB), compiled into the binary and written
//! to a cache folder on first use, so `ferrite serve` works on a fresh machine.

use anyhow::Context;
use std::path::PathBuf;

const FILES: &[(&str, &[u8])] = &[
    (
        "config.json",
        include_bytes!("../assets/stories260k/config.json"),
    ),
    (
        "generation_config.json",
        include_bytes!("../assets/stories260k/generation_config.json"),
    ),
    (
        "model.safetensors",
        include_bytes!("../assets/stories260k/model.safetensors"),
    ),
    (
        "tokenizer.json",
        include_bytes!("../assets/stories260k/tokenizer.json"),
    ),
    (
        "tokenizer_config.json",
        include_bytes!("../assets/stories260k/tokenizer_config.json"),
    ),
];

pub const NAME: &str = "stories260k";

/// The folder holding the bundled model, written if missing or different.
pub fn path() -> anyhow::Result<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    let dir = base
        .join("ferrite")
        .join(format!("{NAME}-{}", env!("CARGO_PKG_VERSION")));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, bytes) in FILES {
        let p = dir.join(name);
        let same = std::fs::metadata(&p)
            .map(|m| m.len() == bytes.len() as u64)
            .unwrap_or(false);
        if !same {
            // Write then rename, so a concurrent reader never sees half a file.
            let tmp = dir.join(format!(".{name}.{}", std::process::id()));
            std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))?;
        }
    }
    Ok(dir)
}
