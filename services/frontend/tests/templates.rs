//! Tools and tool-call history through real chat templates: Qwen3's renders `tools`
//! itself; Llama 3's (as shipped with our tokenizer) does not, so the frontend describes
//! the tools in the system message.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ferrite_frontend::model_io::{render_chat, tool_format};
use ferrite_frontend::tools::parse::ToolFormat;
use ferrite_model::ChatTemplate;
use ferrite_protocol::openai::ChatMessage;
use serde_json::{Value, json};
use std::path::PathBuf;

fn template(name: &str) -> ChatTemplate {
    let models = std::env::var_os("FERRITE_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models")
        });
    let path = models
        .join("tokenizers")
        .join(name)
        .join("tokenizer_config.json");
    ChatTemplate::from_tokenizer_config(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (set FERRITE_TEST_MODELS)", path.display()))
        .expect("a chat template")
}

fn tools() -> Vec<Value> {
    vec![
        json!({"type": "function", "function": {"name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}),
    ]
}

fn history() -> Vec<ChatMessage> {
    serde_json::from_value(json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}
    ]))
    .unwrap()
}

#[test]
fn qwen3_renders_tools_and_history_natively() {
    let t = template("qwen3");
    assert_eq!(tool_format(&t), ToolFormat::Hermes);
    let text = render_chat(&t, &history(), true, None, Some(&tools())).unwrap();
    // Key order follows serde_json's map (sorted, or kept with `preserve_order`).
    assert!(text.contains("<tools>\n{\""), "{text}");
    assert!(text.contains("\"name\": \"get_weather\""), "{text}");
    assert!(
        text.contains("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"),
        "{text}"
    );
    assert!(
        text.contains("<tool_response>\nsunny, 21 C\n</tool_response>"),
        "{text}"
    );
    assert!(text.ends_with("<|im_start|>assistant\n"), "{text}");
    let plain = render_chat(&t, &history()[..1], true, None, None).unwrap();
    assert!(!plain.contains("<tools>"));
}

#[test]
fn llama3_template_without_tools_gets_a_system_description() {
    let t = template("llama3_1");
    assert_eq!(tool_format(&t), ToolFormat::Hermes);
    let text = render_chat(&t, &history(), true, None, Some(&tools())).unwrap();
    let system = text
        .find("<|start_header_id|>system<|end_header_id|>")
        .unwrap();
    let user = text
        .find("<|start_header_id|>user<|end_header_id|>")
        .unwrap();
    assert!(system < user, "{text}");
    assert!(text[system..user].contains("<tools>"), "{text}");
    assert!(text.contains("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\"}}\n</tool_call>"), "{text}");
    assert!(
        text.contains("<tool_response>\nsunny, 21 C\n</tool_response>"),
        "{text}"
    );
}
