//! The frontend's view of a served model: tokenizer, chat template, detokenizer, limits.
//! The only file that talks to `ferrite-model`.

use crate::error::{ApiError, ApiResult};
use crate::tools::parse::ToolFormat;
use ferrite_model::{ChatTemplate, Detokenizer, ModelCard};
use ferrite_protocol::openai::ChatMessage;
use ferrite_protocol::{ErrorKind, ModelRecord, TokenId, is_embed_token};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// A model the frontend serves, loaded from the path a worker registered.
pub struct ServedModel {
    pub name: String,
    pub context_length: u32,
    pub vocab_size: u32,
    /// Width of precomputed embedding rows (config.json's `hidden_size`).
    pub hidden_size: u32,
    pub eos_ids: Vec<TokenId>,
    pub simulated: bool,
    card: Arc<ModelCard>,
}

impl ServedModel {
    /// Loads the tokenizer and chat template a worker's model record points at.
    pub fn load(record: &ModelRecord) -> Result<Self, String> {
        let card = ModelCard::load(Path::new(&record.model_path)).map_err(|e| e.to_string())?;
        Ok(Self {
            name: record.name.clone(),
            context_length: record.context_length,
            vocab_size: card.tokenizer.vocab_size() as u32,
            hidden_size: card.config.hidden_size as u32,
            eos_ids: card.eos_token_ids.clone(),
            simulated: record.simulated,
            card: Arc::new(card),
        })
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> ApiResult<Vec<TokenId>> {
        self.card
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| ApiError::new(ErrorKind::InvalidRequest, format!("tokenizing: {e}")))
    }

    pub fn decode(&self, ids: &[TokenId]) -> String {
        self.card.tokenizer.decode(ids, false).unwrap_or_default()
    }

    /// Full decoding without special tokens (what a stream's pieces add up to).
    pub fn card_decode(&self, ids: &[TokenId]) -> String {
        self.card.tokenizer.decode(ids, true).unwrap_or_default()
    }

    /// The text of one token as OpenAI's logprobs show it.
    pub fn token_text(&self, id: TokenId) -> String {
        self.card.tokenizer.decode(&[id], false).unwrap_or_default()
    }

    /// Whether the chat template renders `tools` itself.
    pub fn template_renders_tools(&self) -> bool {
        renders_tools(&self.card.chat_template)
    }

    /// How this model writes tool calls (see [`tool_format`]).
    pub fn tool_format(&self) -> ToolFormat {
        tool_format(&self.card.chat_template)
    }

    /// Renders the chat template (see [`render_chat`]).
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        kwargs: Option<&BTreeMap<String, Value>>,
        tools: Option<&[Value]>,
    ) -> ApiResult<String> {
        render_chat(
            &self.card.chat_template,
            messages,
            add_generation_prompt,
            kwargs,
            tools,
        )
    }

    /// A detokenizer continuing `prompt` (its text after the last embedding row: rows
    /// have no text).
    pub fn detokenizer(&self, prompt: &[TokenId]) -> Detok {
        let text_tail = prompt
            .iter()
            .rposition(|t| is_embed_token(*t))
            .map_or(prompt, |i| &prompt[i + 1..]);
        Detok {
            inner: Detokenizer::with_prompt(text_tail, true),
            card: self.card.clone(),
        }
    }
}

/// Whether a chat template renders `tools` itself.
pub fn renders_tools(t: &ChatTemplate) -> bool {
    t.source().contains("tools")
}

/// How a model with this template writes tool calls: the template's format, or Hermes
/// when the frontend describes the tools itself.
pub fn tool_format(t: &ChatTemplate) -> ToolFormat {
    if renders_tools(t) {
        ToolFormat::for_template(t.source())
    } else {
        ToolFormat::Hermes
    }
}

/// Renders a chat template. `tools` go to the template when it renders them, else into
/// the system message as a Hermes-style description.
pub fn render_chat(
    t: &ChatTemplate,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    kwargs: Option<&BTreeMap<String, Value>>,
    tools: Option<&[Value]>,
) -> ApiResult<String> {
    let native = renders_tools(t);
    let mut msgs = crate::tools::template_messages(messages, native);
    let mut extra = kwargs.cloned().unwrap_or_default();
    if let Some(tools) = tools {
        if native {
            extra.insert("tools".into(), Value::Array(tools.to_vec()));
        } else {
            crate::tools::inject_system(&mut msgs, tools);
        }
    }
    t.render_with(&msgs, add_generation_prompt, &extra)
        .map_err(|e| ApiError::invalid("messages", format!("chat template: {e}")))
}

/// Incremental detokenizer of one choice.
pub struct Detok {
    inner: Detokenizer,
    card: Arc<ModelCard>,
}

impl Detok {
    /// New text after `token` (empty while a multi-byte character is incomplete).
    pub fn push(&mut self, token: TokenId) -> String {
        self.inner
            .step(&self.card.tokenizer, token)
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// Whatever is still held back at the end of the sequence.
    pub fn finish(&mut self) -> String {
        self.inner
            .flush(&self.card.tokenizer)
            .ok()
            .flatten()
            .unwrap_or_default()
    }
}

/// The bundled stories260k model (its template renders no tools), for unit tests.
#[cfg(test)]
pub(crate) fn test_model(simulated: bool) -> ServedModel {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../ferrite/assets/stories260k");
    ServedModel::load(&ModelRecord {
        name: "s".into(),
        instance_id: ferrite_protocol::InstanceId(1),
        model_path: path.into(),
        context_length: 512,
        kv_block_size: 16,
        simulated,
    })
    .unwrap()
}
