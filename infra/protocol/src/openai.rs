//! OpenAI-compatible HTTP types. Unknown request fields are collected so the frontend can name them.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// `stop`: one string or a list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

impl StopField {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopField::One(s) => vec![s],
            StopField::Many(v) => v,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields shared by chat and completions, including the common extensions
/// (vLLM names) that real clients send through `extra_body`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CommonParams {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub n: Option<u32>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub stop: Option<StopField>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// Token id (as a string, per OpenAI) to bias in [-100, 100].
    pub logit_bias: Option<BTreeMap<String, f32>>,
    pub user: Option<String>,
    // extensions
    pub top_k: Option<i32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub min_tokens: Option<u32>,
    #[serde(default)]
    pub ignore_eos: bool,
    pub stop_token_ids: Option<Vec<u32>>,
    /// Return `prompt_token_ids` and each choice's `token_ids` (vLLM extension).
    #[serde(default)]
    pub return_token_ids: bool,
    /// Include the stop string in the output.
    #[serde(default)]
    pub include_stop_str_in_output: bool,
    /// Structured output (vLLM extension): the output is JSON matching this JSON Schema.
    pub guided_json: Option<Value>,
    /// Structured output (vLLM extension): the whole output matches this regular expression.
    pub guided_regex: Option<String>,
    /// Structured output (vLLM extension): the output is exactly one of these strings.
    pub guided_choice: Option<Vec<String>>,
}

/// One part of a multi-part message content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    Text {
        text: String,
    },
    ImageUrl {
        image_url: Value,
    },
    /// Precomputed input embeddings (Ferrite extension): a base64 safetensors file with one
    /// `[rows, hidden]` tensor, spliced into the prompt where the part stands.
    InputEmbeds {
        input_embeds: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

impl MessageContent {
    /// The text of the content; non-text parts are reported by the caller.
    pub fn text(&self) -> String {
        match self {
            MessageContent::Text(s) => s.clone(),
            MessageContent::Parts(parts) => parts
                .iter()
                .filter_map(|p| match p {
                    ContentPart::Text { text } => Some(text.as_str()),
                    ContentPart::ImageUrl { .. } | ContentPart::InputEmbeds { .. } => None,
                })
                .collect::<Vec<_>>()
                .join(""),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<MessageContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub logprobs: bool,
    pub top_logprobs: Option<u32>,
    pub response_format: Option<Value>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub chat_template_kwargs: Option<BTreeMap<String, Value>>,
    #[serde(default = "yes")]
    pub add_generation_prompt: bool,
    #[serde(flatten)]
    pub common: CommonParams,
    /// Fields no part of Ferrite knows; a non-empty map is a 400 naming them
    /// (serde's `deny_unknown_fields` does not work with `flatten`).
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
}

fn yes() -> bool {
    true
}

/// `prompt`: a string, a list of strings, a list of token ids, or a list of lists.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// A string or a list of strings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    /// Required unless `prompt_embeds` is given.
    #[serde(default)]
    pub prompt: Option<PromptField>,
    /// Prompts given as precomputed embeddings (vLLM's name; base64 safetensors, one
    /// `[rows, hidden]` tensor each), instead of `prompt`.
    #[serde(default)]
    pub prompt_embeds: Option<OneOrMany>,
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub echo: bool,
    pub suffix: Option<String>,
    /// Number of top logprobs per token (0..=5).
    pub logprobs: Option<u32>,
    pub best_of: Option<u32>,
    /// `{"type": "text" | "json_object" | "json_schema", ...}` as on chat (vLLM extension).
    pub response_format: Option<Value>,
    #[serde(flatten)]
    pub common: CommonParams,
    /// Fields no part of Ferrite knows; a non-empty map is a 400 naming them
    /// (serde's `deny_unknown_fields` does not work with `flatten`).
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Option<Vec<u8>>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

/// Legacy completions logprobs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    pub top_logprobs: Vec<Option<BTreeMap<String, f32>>>,
    pub text_offset: Vec<u32>,
}

/// The function a tool call invokes; `arguments` is a JSON text, as OpenAI sends it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

/// One tool call of an assistant message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionCall,
}

/// A streamed piece of a tool call (`delta.tool_calls[]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallDelta {
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub function: FunctionCallDelta,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCallDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AssistantMessage {
    pub role: String,
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_token_ids: Option<Vec<u32>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatChunkChoice {
    pub index: u32,
    pub delta: ChatDelta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChunkChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
}

/// Both the full completions response and its streamed chunks (`object` differs only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompletionResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}

/// `{"error": {...}}`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<u16>,
}

impl From<&crate::ErrorInfo> for ErrorResponse {
    fn from(e: &crate::ErrorInfo) -> Self {
        ErrorResponse {
            error: ErrorBody {
                message: e.message.clone(),
                kind: e.kind.label().to_string(),
                param: e.param.clone(),
                code: Some(e.kind.http_status()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_request_parses_and_rejects_unknown_fields() {
        let ok: ChatCompletionRequest = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"top_k":5}"#,
        )
        .unwrap();
        assert!(ok.common.stream);
        assert_eq!(ok.common.top_k, Some(5));
        assert!(ok.unknown.is_empty());
        let bad = serde_json::from_str::<ChatCompletionRequest>(
            r#"{"model":"m","messages":[],"bogus_field":1,"top_p":0.5}"#,
        )
        .unwrap();
        assert_eq!(bad.unknown.keys().collect::<Vec<_>>(), vec!["bogus_field"]);
        assert_eq!(bad.common.top_p, Some(0.5));
    }

    #[test]
    fn prompt_forms() {
        let t: CompletionRequest =
            serde_json::from_str(r#"{"model":"m","prompt":[1,2,3]}"#).unwrap();
        assert_eq!(t.prompt, Some(PromptField::Tokens(vec![1, 2, 3])));
        let s: CompletionRequest = serde_json::from_str(r#"{"model":"m","prompt":"x"}"#).unwrap();
        assert_eq!(s.prompt, Some(PromptField::Text("x".into())));
        let e: CompletionRequest =
            serde_json::from_str(r#"{"model":"m","prompt_embeds":["QQ==","Qg=="]}"#).unwrap();
        assert_eq!(e.prompt, None);
        assert_eq!(
            e.prompt_embeds.unwrap().to_vec(),
            vec!["QQ==".to_string(), "Qg==".to_string()]
        );
        let c: ChatMessage = serde_json::from_str(
            r#"{"role":"user","content":[{"type":"text","text":"a"},{"type":"input_embeds","input_embeds":"QQ=="}]}"#,
        )
        .unwrap();
        assert_eq!(c.content.unwrap().text(), "a");
    }

    #[test]
    fn tool_calls_and_guided_fields_serialize_as_openai_and_vllm_spell_them() {
        let call = ToolCall {
            id: "call_1".into(),
            kind: "function".into(),
            function: FunctionCall {
                name: "f".into(),
                arguments: "{}".into(),
            },
        };
        let v = serde_json::to_value(&call).unwrap();
        assert_eq!(v["type"], "function");
        assert_eq!(v["function"]["arguments"], "{}");
        let d = serde_json::to_value(ChatDelta::default()).unwrap();
        assert_eq!(d, serde_json::json!({}));
        let r: ChatCompletionRequest = serde_json::from_str(
            r#"{"model":"m","messages":[],"guided_regex":"a+","guided_choice":["x"],"guided_json":{"type":"object"}}"#,
        )
        .unwrap();
        assert!(r.unknown.is_empty());
        assert_eq!(r.common.guided_regex.as_deref(), Some("a+"));
        assert_eq!(r.common.guided_choice, Some(vec!["x".to_string()]));
        assert_eq!(r.common.guided_json.unwrap()["type"], "object");
    }
}
