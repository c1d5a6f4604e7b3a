//! The request fields the API accepts, derived from the serde types themselves (a
//! request serialised with every field present), so the documentation test and the
//! unknown-field check cannot disagree.

use ferrite_protocol::openai::{ChatCompletionRequest, ChatMessage, CompletionRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

fn keys<T: Serialize + DeserializeOwned>(sample: Value) -> Vec<String> {
    let parsed: Option<T> = serde_json::from_value(sample).ok();
    let mut out: Vec<String> = parsed
        .and_then(|t| serde_json::to_value(t).ok())
        .and_then(|v| v.as_object().map(|o| o.keys().cloned().collect()))
        .unwrap_or_default();
    out.sort();
    out
}

/// Top-level fields of `/v1/chat/completions` bodies, sorted.
pub fn chat_request() -> Vec<String> {
    keys::<ChatCompletionRequest>(json!({"model": "m", "messages": []}))
}

/// Top-level fields of `/v1/completions` bodies, sorted.
pub fn completion_request() -> Vec<String> {
    keys::<CompletionRequest>(json!({"model": "m", "prompt": "p"}))
}

/// Fields of one chat message, sorted.
pub fn chat_message() -> Vec<String> {
    keys::<ChatMessage>(json!({"role": "tool", "content": "c", "name": "n",
        "tool_calls": [], "tool_call_id": "i"}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_hold_the_fields_serde_accepts() {
        let chat = chat_request();
        for f in [
            "model",
            "messages",
            "tools",
            "response_format",
            "guided_json",
            "stream_options",
            "max_completion_tokens",
            "user",
        ] {
            assert!(chat.contains(&f.to_string()), "{f} missing from {chat:?}");
        }
        // Every listed field parses without landing among the unknown ones.
        for f in &chat {
            let mut body = json!({"model": "m", "messages": []});
            body[f] = Value::Null;
            let req: Result<ChatCompletionRequest, _> = serde_json::from_value(body);
            if let Ok(r) = req {
                assert!(r.unknown.is_empty(), "{f} is unknown");
            }
        }
        let comp = completion_request();
        assert!(comp.contains(&"echo".to_string()) && comp.contains(&"prompt".to_string()));
        assert!(!comp.contains(&"messages".to_string()));
        assert_eq!(
            chat_message(),
            vec!["content", "name", "role", "tool_call_id", "tool_calls"]
        );
    }
}
