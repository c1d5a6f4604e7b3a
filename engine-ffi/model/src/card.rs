//! `ModelCard`: everything about a model except its weights' numbers, from an HF
//! folder or a single `.gguf` file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::chat_template::{ChatTemplate, read_json, special_strings};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::generation_config::GenerationConfig;
use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;

/// How the model's weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    /// config.json + `*.safetensors`.
    HfFolder,
    /// One GGUF file (weights, config and usually tokenizer inside).
    Gguf,
}

/// A loaded model description.
#[derive(Debug)]
pub struct ModelCard {
    /// Folder name or GGUF file stem; the default served model name.
    pub name: String,
    /// The path given to [`ModelCard::load`].
    pub path: PathBuf,
    pub format: ModelFormat,
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub chat_template: ChatTemplate,
    pub generation: GenerationConfig,
    /// Ids that end generation: generation_config.json's, then config's, then the
    /// tokenizer's eos token; deduplicated, in that order.
    pub eos_token_ids: Vec<u32>,
    pub context_length: usize,
    /// `*.safetensors` files (HF) or the `.gguf` file.
    pub weight_files: Vec<PathBuf>,
    /// The parsed GGUF (memory-mapped) when `format` is `Gguf`.
    pub gguf: Option<Arc<GgufFile>>,
}

fn missing(path: PathBuf, what: &str) -> ModelError {
    ModelError::MissingFile {
        path,
        what: what.to_string(),
    }
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .or_else(|| path.file_name())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".to_string())
}

impl ModelCard {
    /// Loads an HF folder, a `.gguf` file, or a folder holding one `.gguf` and no config.json.
    ///
    /// Weights are only located (and, for GGUF, memory-mapped), not read: a
    /// backend's loader reads them and reports through [`crate::LoadProgress`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let card = Self::load_inner(path.as_ref())?;
        tracing::info!(
            model = %card.name,
            path = %card.path.display(),
            format = ?card.format,
            architecture = ?card.config.architecture,
            layers = card.config.num_layers,
            vocab = card.tokenizer.vocab_size(),
            context = card.context_length,
            "model card loaded"
        );
        Ok(card)
    }

    fn load_inner(path: &Path) -> Result<Self> {
        if path.is_file() {
            return Self::load_gguf(path);
        }
        if !path.is_dir() {
            return Err(missing(path.to_path_buf(), "model folder or .gguf file"));
        }
        if path.join("config.json").is_file() {
            return Self::load_hf(path);
        }
        let ggufs = list(path, ".gguf")?;
        match ggufs.as_slice() {
            [one] => {
                let mut card = Self::load_gguf(one)?;
                card.name = stem(path);
                card.path = path.to_path_buf();
                Ok(card)
            }
            [] => Err(missing(
                path.join("config.json"),
                "config.json or one .gguf file",
            )),
            _ => Err(ModelError::Config {
                path: path.to_path_buf(),
                msg: format!(
                    "{} .gguf files and no config.json: name one file",
                    ggufs.len()
                ),
            }),
        }
    }

    fn load_hf(dir: &Path) -> Result<Self> {
        let config = ModelConfig::from_hf_file(&dir.join("config.json"))?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tok_path)?;
        let tc = dir.join("tokenizer_config.json");
        let tc_json = if tc.is_file() {
            read_json(&tc)?
        } else {
            Value::Null
        };
        let template = if tc.is_file() {
            ChatTemplate::from_tokenizer_config(&tc)?
        } else {
            None
        };
        let (bos, eos) = special_strings(&tc_json);
        let chat_template = match template {
            Some(t) => t,
            None => ChatTemplate::fallback(&bos, &eos)?,
        };
        let gc = dir.join("generation_config.json");
        let generation = if gc.is_file() {
            GenerationConfig::from_file(&gc)?
        } else {
            GenerationConfig::default()
        };
        let weight_files = hf_weight_files(dir)?;
        let eos_ids = eos_ids(&generation, &config, tokenizer.token_to_id(&eos));
        Ok(Self {
            name: stem(dir),
            path: dir.to_path_buf(),
            format: ModelFormat::HfFolder,
            context_length: config.max_position_embeddings,
            config,
            tokenizer,
            chat_template,
            generation,
            eos_token_ids: eos_ids,
            weight_files,
            gguf: None,
        })
    }

    fn load_gguf(file: &Path) -> Result<Self> {
        let gguf = GgufFile::open(file)?;
        let config = ModelConfig::from_gguf(&gguf)?;
        let dir = file.parent().unwrap_or(Path::new("."));
        let tok_json = dir.join("tokenizer.json");
        let tokenizer = if tok_json.is_file() {
            Tokenizer::from_file(&tok_json)?
        } else {
            Tokenizer::from_gguf(&gguf)?
        };
        let piece = |key: &str| {
            gguf.get_u32(key)
                .and_then(|id| tokenizer.token_to_piece(id))
                .unwrap_or_default()
        };
        let (mut bos, mut eos) = (
            piece("tokenizer.ggml.bos_token_id"),
            piece("tokenizer.ggml.eos_token_id"),
        );
        let tc = dir.join("tokenizer_config.json");
        let mut template = None;
        if tc.is_file() {
            (bos, eos) = special_strings(&read_json(&tc)?);
            template = ChatTemplate::from_tokenizer_config(&tc)?;
        }
        let chat_template = match (template, gguf.get_str("tokenizer.chat_template")) {
            (Some(t), _) => t,
            (None, Some(src)) => ChatTemplate::new(src, &bos, &eos)
                .map_err(|e| ModelError::Template(format!("{}: {e}", file.display())))?,
            (None, None) => ChatTemplate::fallback(&bos, &eos)?,
        };
        let gc = dir.join("generation_config.json");
        let generation = if gc.is_file() {
            GenerationConfig::from_file(&gc)?
        } else {
            GenerationConfig::default()
        };
        let eos_ids = eos_ids(&generation, &config, tokenizer.token_to_id(&eos));
        Ok(Self {
            name: stem(file),
            path: file.to_path_buf(),
            format: ModelFormat::Gguf,
            context_length: config.max_position_embeddings,
            config,
            tokenizer,
            chat_template,
            generation,
            eos_token_ids: eos_ids,
            weight_files: vec![file.to_path_buf()],
            gguf: Some(Arc::new(gguf)),
        })
    }
}

fn eos_ids(g: &GenerationConfig, c: &ModelConfig, tok_eos: Option<u32>) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    for id in g
        .eos_token_ids
        .iter()
        .chain(&c.eos_token_ids)
        .copied()
        .chain(tok_eos)
    {
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

fn list(dir: &Path, suffix: &str) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    Ok(v)
}

/// `model.safetensors.index.json`'s shards, else every `*.safetensors` in the folder.
fn hf_weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let j = read_json(&index)?;
        let map = j
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| ModelError::Config {
                path: index.clone(),
                msg: "no `weight_map` object".into(),
            })?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(Value::as_str)
            .map(|f| dir.join(f))
            .collect();
        files.sort();
        files.dedup();
        if let Some(f) = files.iter().find(|f| !f.is_file()) {
            return Err(missing(f.clone(), "safetensors shard named in the index"));
        }
        return Ok(files);
    }
    let files = list(dir, ".safetensors")?;
    if files.is_empty() {
        return Err(missing(
            dir.join("model.safetensors"),
            "weights (*.safetensors)",
        ));
    }
    Ok(files)
}
