//! Tool-call parsers for the model families we serve: Hermes/Qwen `<tool_call>{json}</tool_call>`,
//! Llama-3.1 JSON `{"name", "parameters"}` (with or without `<|python_tag|>`), Mistral
//! `[TOOL_CALLS][...]`; and the plain JSON of forced (`required` / named) calls.

use ferrite_protocol::openai::{FunctionCall, ToolCall};
use serde_json::Value;

/// How a model writes tool calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolFormat {
    /// `<tool_call>{"name": .., "arguments": {..}}</tool_call>` (Hermes, Qwen 2.5/3, our
    /// injected prompt for templates without tool support).
    Hermes,
    /// `{"name": .., "parameters": {..}}`, optionally after `<|python_tag|>`, calls separated
    /// by `;` (Llama 3.1+).
    Llama3Json,
    /// `[TOOL_CALLS][{"name": .., "arguments": {..}}, ..]` (Mistral).
    Mistral,
}

pub const HERMES_OPEN: &str = "<tool_call>";
pub const HERMES_CLOSE: &str = "</tool_call>";
pub const PYTHON_TAG: &str = "<|python_tag|>";
pub const MISTRAL_TAG: &str = "[TOOL_CALLS]";

impl ToolFormat {
    /// Picks the format a chat template writes (by the markers its source mentions).
    pub fn for_template(source: &str) -> Self {
        if source.contains(MISTRAL_TAG) {
            ToolFormat::Mistral
        } else if source.contains(PYTHON_TAG) || source.contains("<|start_header_id|>") {
            ToolFormat::Llama3Json
        } else {
            ToolFormat::Hermes
        }
    }
}

/// What a model's output splits into.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Text that is not a tool call (`None` when there is none).
    pub content: Option<String>,
    pub calls: Vec<ToolCall>,
}

impl Parsed {
    fn text(text: &str) -> Self {
        Parsed {
            content: (!text.is_empty()).then(|| text.to_string()),
            calls: Vec::new(),
        }
    }
}

/// A fresh call id, `call_` and 24 hex digits.
pub fn call_id() -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("call_{}", &hex[..24])
}

/// `{"name": .., "arguments" | "parameters": ..}` → a call (arguments as JSON text).
fn call_from(v: &Value) -> Option<ToolCall> {
    let name = v.get("name")?.as_str()?.to_string();
    let args = v
        .get("arguments")
        .or_else(|| v.get("parameters"))
        .cloned()
        .unwrap_or(Value::Object(Default::default()));
    let arguments = match args {
        // Some models write the arguments as a JSON text already.
        Value::String(s) if serde_json::from_str::<Value>(&s).is_ok() => s,
        Value::Object(_) => args.to_string(),
        _ => return None,
    };
    Some(ToolCall {
        id: call_id(),
        kind: "function".into(),
        function: FunctionCall { name, arguments },
    })
}

/// A sequence of JSON values separated by whitespace, `;` or `,`; `None` if anything else
/// is in between or a value does not parse.
fn json_values(text: &str) -> Option<Vec<Value>> {
    let mut out = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let mut it = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        let v = it.next()?.ok()?;
        let used = it.byte_offset();
        out.push(v);
        rest = rest[used..].trim_start_matches(|c: char| c.is_whitespace() || c == ';' || c == ',');
    }
    Some(out)
}

fn calls_from_values(values: &[Value]) -> Option<Vec<ToolCall>> {
    let mut calls = Vec::new();
    for v in values {
        match v {
            Value::Array(items) => {
                for item in items {
                    calls.push(call_from(item)?);
                }
            }
            v => calls.push(call_from(v)?),
        }
    }
    (!calls.is_empty()).then_some(calls)
}

fn hermes(text: &str) -> Parsed {
    let Some(first) = text.find(HERMES_OPEN) else {
        return Parsed::text(text);
    };
    let mut calls = Vec::new();
    let mut rest = &text[first..];
    while let Some(start) = rest.find(HERMES_OPEN) {
        let body = &rest[start + HERMES_OPEN.len()..];
        // The last call may lack its closing tag when generation stopped at EOS.
        let (inner, after) = match body.find(HERMES_CLOSE) {
            Some(end) => (&body[..end], &body[end + HERMES_CLOSE.len()..]),
            None => (body, ""),
        };
        match json_values(inner).and_then(|v| calls_from_values(&v)) {
            Some(c) => calls.extend(c),
            None => return Parsed::text(text),
        }
        rest = after;
    }
    let content = text[..first].trim();
    Parsed {
        content: (!content.is_empty()).then(|| content.to_string()),
        calls,
    }
}

fn llama3(text: &str) -> Parsed {
    let t = text.trim_start();
    let body = t.strip_prefix(PYTHON_TAG).unwrap_or(t);
    if !body.trim_start().starts_with('{') {
        return Parsed::text(text);
    }
    match json_values(body).and_then(|v| calls_from_values(&v)) {
        Some(calls) => Parsed {
            content: None,
            calls,
        },
        None => Parsed::text(text),
    }
}

fn mistral(text: &str) -> Parsed {
    // The tag is a special token that a detokenizer may drop: a leading JSON list counts too.
    let (before, body) = match text.find(MISTRAL_TAG) {
        Some(p) => (&text[..p], &text[p + MISTRAL_TAG.len()..]),
        None if text.trim_start().starts_with('[') => ("", text),
        None => return Parsed::text(text),
    };
    let calls = if let Some((name, args)) = body.split_once("[ARGS]") {
        // Newer format: `[TOOL_CALLS]name[ARGS]{...}`.
        serde_json::from_str::<Value>(args.trim())
            .ok()
            .and_then(|a| call_from(&serde_json::json!({"name": name.trim(), "arguments": a})))
            .map(|c| vec![c])
    } else {
        json_values(body).and_then(|v| calls_from_values(&v))
    };
    match calls {
        Some(calls) => {
            let content = before.trim();
            Parsed {
                content: (!content.is_empty()).then(|| content.to_string()),
                calls,
            }
        }
        None => Parsed::text(text),
    }
}

/// Splits free model output into content and tool calls. Output that looks like a call
/// but does not parse stays content.
pub fn parse(format: ToolFormat, text: &str) -> Parsed {
    match format {
        ToolFormat::Hermes => hermes(text),
        ToolFormat::Llama3Json => llama3(text),
        ToolFormat::Mistral => mistral(text),
    }
}

/// Output forced by a `JsonSchema` constraint: for a named function its arguments object,
/// for `required` a list of `{"name", "arguments"}`.
pub fn parse_forced(named: Option<&str>, text: &str) -> Parsed {
    let Ok(v) = serde_json::from_str::<Value>(text.trim()) else {
        return Parsed::text(text);
    };
    let calls = match named {
        Some(name) if v.is_object() => {
            call_from(&serde_json::json!({"name": name, "arguments": v})).map(|c| vec![c])
        }
        Some(_) => None,
        None => calls_from_values(std::slice::from_ref(&v)),
    };
    match calls {
        Some(calls) => Parsed {
            content: None,
            calls,
        },
        None => Parsed::text(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_args(p: &Parsed) -> Vec<(String, Value)> {
        p.calls
            .iter()
            .map(|c| {
                assert_eq!(c.kind, "function");
                assert!(c.id.starts_with("call_") && c.id.len() == 29, "{}", c.id);
                (
                    c.function.name.clone(),
                    serde_json::from_str(&c.function.arguments).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn hermes_calls_with_content_before_and_a_missing_close_tag() {
        let p = parse(
            ToolFormat::Hermes,
            "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>{\"name\": \"time\", \"arguments\": {}}",
        );
        assert_eq!(p.content.as_deref(), Some("Let me look."));
        assert_eq!(
            names_args(&p),
            vec![
                ("get_weather".into(), serde_json::json!({"city": "Paris"})),
                ("time".into(), serde_json::json!({}))
            ]
        );
        let p = parse(ToolFormat::Hermes, "no calls here");
        assert_eq!(p, Parsed::text("no calls here"));
        // A broken call is content, untouched.
        let bad = "<tool_call>{\"name\": \"x\", \"arguments\": {</tool_call>";
        assert_eq!(parse(ToolFormat::Hermes, bad), Parsed::text(bad));
    }

    #[test]
    fn llama3_json_with_and_without_python_tag() {
        let p = parse(
            ToolFormat::Llama3Json,
            "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}",
        );
        assert_eq!(p.content, None);
        assert_eq!(
            names_args(&p),
            vec![("get_weather".into(), serde_json::json!({"city": "Oslo"}))]
        );
        let p = parse(
            ToolFormat::Llama3Json,
            "<|python_tag|>{\"name\": \"a\", \"parameters\": {\"x\": 1}}; {\"name\": \"b\", \"parameters\": {}}",
        );
        assert_eq!(
            names_args(&p),
            vec![
                ("a".into(), serde_json::json!({"x": 1})),
                ("b".into(), serde_json::json!({}))
            ]
        );
        let t = "The answer is {probably} 4.";
        assert_eq!(parse(ToolFormat::Llama3Json, t), Parsed::text(t));
        assert_eq!(parse(ToolFormat::Llama3Json, "Hi"), Parsed::text("Hi"));
    }

    #[test]
    fn mistral_lists_bare_lists_and_args_form() {
        let p = parse(
            ToolFormat::Mistral,
            "Sure. [TOOL_CALLS][{\"name\": \"f\", \"arguments\": {\"q\": \"z\"}}, {\"name\": \"g\", \"arguments\": \"{\\\"k\\\": 2}\"}]",
        );
        assert_eq!(p.content.as_deref(), Some("Sure."));
        assert_eq!(
            names_args(&p),
            vec![
                ("f".into(), serde_json::json!({"q": "z"})),
                ("g".into(), serde_json::json!({"k": 2}))
            ]
        );
        let p = parse(
            ToolFormat::Mistral,
            "[{\"name\": \"f\", \"arguments\": {}}]",
        );
        assert_eq!(names_args(&p), vec![("f".into(), serde_json::json!({}))]);
        let p = parse(ToolFormat::Mistral, "[TOOL_CALLS]f[ARGS]{\"a\": true}");
        assert_eq!(
            names_args(&p),
            vec![("f".into(), serde_json::json!({"a": true}))]
        );
        assert_eq!(parse(ToolFormat::Mistral, "[1, 2]"), Parsed::text("[1, 2]"));
    }

    #[test]
    fn forced_outputs_and_format_choice() {
        let p = parse_forced(Some("get_weather"), " {\"city\": \"Rome\"} ");
        assert_eq!(
            names_args(&p),
            vec![("get_weather".into(), serde_json::json!({"city": "Rome"}))]
        );
        let p = parse_forced(None, "[{\"name\": \"a\", \"arguments\": {\"x\": 1}}]");
        assert_eq!(
            names_args(&p),
            vec![("a".into(), serde_json::json!({"x": 1}))]
        );
        assert_eq!(parse_forced(None, "nope"), Parsed::text("nope"));
        assert_eq!(
            ToolFormat::for_template("{{ '<|start_header_id|>' }}"),
            ToolFormat::Llama3Json
        );
        assert_eq!(
            ToolFormat::for_template("[TOOL_CALLS]"),
            ToolFormat::Mistral
        );
        assert_eq!(ToolFormat::for_template("<|im_start|>"), ToolFormat::Hermes);
    }
}
