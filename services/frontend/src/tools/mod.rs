//! Tool calling: `tools` and `tool_choice` checked, the prompt side (tools and tool-call
//! history as the chat template wants them), and how the output is read back.

pub mod parse;
pub mod progress;
pub mod stream;

use crate::error::{ApiError, ApiResult};
use crate::guided::check_schema;
use ferrite_protocol::GuidedDecoding;
use ferrite_protocol::openai::ChatMessage;
use parse::{HERMES_CLOSE, HERMES_OPEN, ToolFormat};
use serde_json::{Value, json};

/// How the output of a request with tools is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputMode {
    /// `tool_choice: auto`: the model may answer in text or call tools in its own format.
    Free(ToolFormat),
    /// `required` (`named: None`) or a named function: the output is forced JSON.
    Forced { named: Option<String> },
}

/// The tool side of a chat request.
#[derive(Clone, Debug)]
pub struct ToolPlan {
    /// The tools as the client sent them (`{"type": "function", "function": {..}}`).
    pub tools: Vec<Value>,
    pub mode: OutputMode,
    /// The constraint that forces `required` / named calls.
    pub guided: Option<GuidedDecoding>,
}

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Checks `tools`; returns (name, parameters schema) of each.
fn check_tools(tools: &Value) -> ApiResult<Vec<(String, Value)>> {
    let list = tools
        .as_array()
        .ok_or_else(|| ApiError::invalid("tools", "`tools` must be a list"))?;
    let mut out: Vec<(String, Value)> = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let p = format!("tools[{i}]");
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(ApiError::invalid(
                format!("{p}.type"),
                "only tools of type `function` are supported",
            ));
        }
        let f = t
            .get("function")
            .and_then(Value::as_object)
            .ok_or_else(|| ApiError::invalid(format!("{p}.function"), "missing `function`"))?;
        if let Some(k) = f
            .keys()
            .find(|k| !["name", "description", "parameters", "strict"].contains(&k.as_str()))
        {
            return Err(ApiError::invalid(
                format!("{p}.function.{k}"),
                format!("unknown field `{k}` in a function"),
            ));
        }
        let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
        if !name_ok(name) {
            return Err(ApiError::invalid(
                format!("{p}.function.name"),
                "a function name must be 1 to 64 characters of a-z, A-Z, 0-9, _ and -",
            ));
        }
        if out.iter().any(|(n, _)| n == name) {
            return Err(ApiError::invalid(
                format!("{p}.function.name"),
                format!("two tools are named `{name}`"),
            ));
        }
        let params = f
            .get("parameters")
            .filter(|v| !v.is_null())
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        check_schema(&format!("{p}.function.parameters"), &params)?;
        out.push((name.to_string(), params));
    }
    Ok(out)
}

/// The schema of a forced `required` answer: a list of calls of the given tools.
fn required_schema(tools: &[(String, Value)], parallel: bool) -> Value {
    let any: Vec<Value> = tools
        .iter()
        .map(|(name, params)| {
            json!({"type": "object",
                   "properties": {"name": {"type": "string", "enum": [name]}, "arguments": params},
                   "required": ["name", "arguments"], "additionalProperties": false})
        })
        .collect();
    let mut s = json!({"type": "array", "minItems": 1, "items": {"anyOf": any}});
    if !parallel {
        s["maxItems"] = json!(1);
    }
    s
}

/// Plans the tool side of a request; `None` when no tool may be called.
pub fn plan(
    tools: Option<&Value>,
    tool_choice: Option<&Value>,
    parallel: Option<bool>,
    format: ToolFormat,
) -> ApiResult<Option<ToolPlan>> {
    let tools = tools.filter(|t| !t.is_null());
    let defs = tools.map(check_tools).transpose()?.unwrap_or_default();
    let choice = tool_choice.filter(|c| !c.is_null());
    let named = match choice {
        None => None,
        Some(Value::String(s)) if s == "auto" || s == "none" || s == "required" => None,
        Some(c) if c.get("type").and_then(Value::as_str) == Some("function") => {
            let n = c
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::invalid("tool_choice", "`tool_choice.function.name` is missing")
                })?;
            Some(n.to_string())
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "tool_choice",
                "`tool_choice` must be `none`, `auto`, `required` or {\"type\": \"function\", \"function\": {\"name\": ..}}",
            ));
        }
    };
    let is = |s: &str| choice.and_then(Value::as_str) == Some(s);
    if defs.is_empty() {
        if named.is_some() || is("required") {
            return Err(ApiError::invalid(
                "tool_choice",
                "`tool_choice` asks for a tool call but `tools` is empty",
            ));
        }
        return Ok(None);
    }
    if is("none") {
        return Ok(None);
    }
    let tools = tools.and_then(Value::as_array).cloned().unwrap_or_default();
    if let Some(name) = named {
        let params = defs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| p.clone())
            .ok_or_else(|| {
                ApiError::invalid(
                    "tool_choice",
                    format!("`tool_choice` names `{name}`, which is not in `tools`"),
                )
            })?;
        return Ok(Some(ToolPlan {
            tools,
            mode: OutputMode::Forced { named: Some(name) },
            guided: Some(GuidedDecoding::JsonSchema(params.to_string())),
        }));
    }
    if is("required") {
        let schema = required_schema(&defs, parallel.unwrap_or(true));
        return Ok(Some(ToolPlan {
            tools,
            mode: OutputMode::Forced { named: None },
            guided: Some(GuidedDecoding::JsonSchema(schema.to_string())),
        }));
    }
    Ok(Some(ToolPlan {
        tools,
        mode: OutputMode::Free(format),
        guided: None,
    }))
}

/// Checks the tool parts of the history (`tool_calls` of assistant messages, `tool_call_id`
/// of tool messages).
pub fn check_history(messages: &[ChatMessage]) -> ApiResult<()> {
    for (i, m) in messages.iter().enumerate() {
        if let Some(calls) = m.tool_calls.as_ref().filter(|c| !c.is_null()) {
            let p = format!("messages[{i}].tool_calls");
            if m.role != "assistant" {
                return Err(ApiError::invalid(
                    p,
                    "only assistant messages have `tool_calls`",
                ));
            }
            let list = calls
                .as_array()
                .ok_or_else(|| ApiError::invalid(&p, "`tool_calls` must be a list"))?;
            for (j, c) in list.iter().enumerate() {
                let f = c.get("function");
                let ok = f.and_then(|f| f.get("name")).is_some_and(Value::is_string)
                    && f.and_then(|f| f.get("arguments"))
                        .is_some_and(Value::is_string);
                if !ok {
                    return Err(ApiError::invalid(
                        format!("{p}[{j}]"),
                        "a tool call needs `function.name` and `function.arguments` (a JSON string)",
                    ));
                }
            }
        }
        if m.role == "tool" && m.tool_call_id.is_none() {
            return Err(ApiError::invalid(
                format!("messages[{i}].tool_call_id"),
                "a `tool` message needs `tool_call_id`",
            ));
        }
    }
    Ok(())
}

fn call_json(c: &Value) -> Value {
    let f = c.get("function").cloned().unwrap_or(Value::Null);
    let args = f.get("arguments").and_then(Value::as_str).unwrap_or("{}");
    let args: Value = serde_json::from_str(args).unwrap_or_else(|_| Value::String(args.into()));
    json!({"name": f.get("name").cloned().unwrap_or(Value::Null), "arguments": args})
}

/// The messages as a chat template receives them. With `native` (the template renders
/// `tools` itself) tool calls keep OpenAI's shape, their arguments parsed into objects as
/// HF templates expect; otherwise they are written into the text in the Hermes format and
/// tool results become `<tool_response>` user turns.
pub fn template_messages(messages: &[ChatMessage], native: bool) -> Vec<Value> {
    messages
        .iter()
        .map(|m| {
            let mut content = m.content.as_ref().map(|c| c.text()).unwrap_or_default();
            let calls = m.tool_calls.as_ref().and_then(Value::as_array);
            if native {
                let mut v = json!({"role": m.role, "content": content});
                if let Some(calls) = calls {
                    let calls: Vec<Value> = calls
                        .iter()
                        .map(|c| {
                            let mut c = c.clone();
                            let parsed = call_json(&c)["arguments"].clone();
                            if let Some(f) = c.get_mut("function") {
                                f["arguments"] = parsed;
                            }
                            c
                        })
                        .collect();
                    v["tool_calls"] = Value::Array(calls);
                }
                if let Some(id) = &m.tool_call_id {
                    v["tool_call_id"] = json!(id);
                }
                if let Some(name) = &m.name {
                    v["name"] = json!(name);
                }
                return v;
            }
            for c in calls.into_iter().flatten() {
                if !content.is_empty() {
                    content.push('\n');
                }
                // Name first, as Hermes/Qwen write it (whatever the map's key order).
                let v = call_json(c);
                content.push_str(&format!(
                    "{HERMES_OPEN}\n{{\"name\": {}, \"arguments\": {}}}\n{HERMES_CLOSE}",
                    v["name"], v["arguments"]
                ));
            }
            if m.role == "tool" {
                return json!({"role": "user", "content": format!("<tool_response>\n{content}\n</tool_response>")});
            }
            json!({"role": m.role, "content": content})
        })
        .collect()
}

/// The system text that describes the tools to a model whose template cannot (Hermes style).
pub fn system_prompt(tools: &[Value]) -> String {
    let mut s = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for t in tools {
        s.push('\n');
        s.push_str(&t.to_string());
    }
    s.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and \
         arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    s
}

/// Puts the tool description into the first system message (or a new one in front).
pub fn inject_system(messages: &mut Vec<Value>, tools: &[Value]) {
    let text = system_prompt(tools);
    match messages.first_mut() {
        Some(m) if m["role"] == "system" => {
            let old = m["content"].as_str().unwrap_or_default().to_string();
            m["content"] = json!(format!("{old}\n\n{text}"));
        }
        _ => messages.insert(0, json!({"role": "system", "content": text})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather", "description": "d",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
            {"type": "function", "function": {"name": "now"}}])
    }

    #[test]
    fn choices_map_to_modes_and_schemas() {
        let f = ToolFormat::Hermes;
        assert!(plan(None, None, None, f).unwrap().is_none());
        assert!(
            plan(Some(&tools()), Some(&json!("none")), None, f)
                .unwrap()
                .is_none()
        );
        let p = plan(Some(&tools()), None, None, f).unwrap().unwrap();
        assert_eq!(p.mode, OutputMode::Free(f));
        assert_eq!(p.guided, None);
        assert_eq!(p.tools.len(), 2);
        let p = plan(
            Some(&tools()),
            Some(&json!({"type": "function", "function": {"name": "get_weather"}})),
            None,
            f,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            p.mode,
            OutputMode::Forced {
                named: Some("get_weather".into())
            }
        );
        match p.guided {
            Some(GuidedDecoding::JsonSchema(s)) => {
                assert_eq!(
                    serde_json::from_str::<Value>(&s).unwrap()["required"],
                    json!(["city"])
                )
            }
            other => panic!("{other:?}"),
        }
        let p = plan(Some(&tools()), Some(&json!("required")), Some(false), f)
            .unwrap()
            .unwrap();
        let Some(GuidedDecoding::JsonSchema(s)) = p.guided else {
            panic!()
        };
        let s: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(s["maxItems"], 1);
        assert_eq!(
            s["items"]["anyOf"][1]["properties"]["name"]["enum"],
            json!(["now"])
        );
    }

    #[test]
    fn bad_tools_and_choices_name_the_field() {
        let f = ToolFormat::Hermes;
        let e = plan(
            Some(&tools()),
            Some(&json!({"type": "function", "function": {"name": "x"}})),
            None,
            f,
        )
        .unwrap_err();
        assert_eq!(e.0.param.as_deref(), Some("tool_choice"));
        let e = plan(None, Some(&json!("required")), None, f).unwrap_err();
        assert_eq!(e.0.param.as_deref(), Some("tool_choice"));
        let e = plan(
            Some(&json!([{"type": "function", "function": {"name": "a b"}}])),
            None,
            None,
            f,
        )
        .unwrap_err();
        assert_eq!(e.0.param.as_deref(), Some("tools[0].function.name"));
        let e = plan(
            Some(&json!([{"type": "function", "function": {"name": "a", "parameters": {"type": "obj"}}}])),
            None,
            None,
            f,
        )
        .unwrap_err();
        assert_eq!(e.0.param.as_deref(), Some("tools[0].function.parameters"));
        let e = plan(Some(&json!([{"type": "retrieval"}])), None, None, f).unwrap_err();
        assert_eq!(e.0.param.as_deref(), Some("tools[0].type"));
    }

    fn msgs() -> Vec<ChatMessage> {
        serde_json::from_value(json!([
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
        ]))
        .unwrap()
    }

    #[test]
    fn history_is_checked_and_rendered_both_ways() {
        let m = msgs();
        check_history(&m).unwrap();
        let native = template_messages(&m, true);
        assert_eq!(
            native[1]["tool_calls"][0]["function"]["arguments"]["city"],
            "Paris"
        );
        assert_eq!(native[2]["tool_call_id"], "call_1");
        let mut plain = template_messages(&m, false);
        let written = plain[1]["content"].as_str().unwrap();
        let inner = written
            .strip_prefix("<tool_call>\n")
            .and_then(|t| t.strip_suffix("\n</tool_call>"))
            .unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(inner).unwrap(),
            json!({"name": "get_weather", "arguments": {"city": "Paris"}})
        );
        assert_eq!(plain[2]["role"], "user");
        assert_eq!(
            plain[2]["content"],
            "<tool_response>\nsunny\n</tool_response>"
        );
        inject_system(&mut plain, tools().as_array().unwrap());
        assert_eq!(plain[0]["role"], "system");
        assert!(
            plain[0]["content"]
                .as_str()
                .unwrap()
                .contains("\"name\":\"get_weather\"")
        );
        let mut bad = m.clone();
        bad[2].tool_call_id = None;
        assert_eq!(
            check_history(&bad).unwrap_err().0.param.as_deref(),
            Some("messages[2].tool_call_id")
        );
    }
}
