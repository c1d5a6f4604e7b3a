use serde_json::json;

use super::*;
use crate::test_util::model_path;

#[test]
fn helpers_and_errors() {
    let t = ChatTemplate::new(
        "{{ bos_token }}{% for m in messages %}{% if m.role == 'bad' %}{{ raise_exception('no bad roles') }}{% endif %}{% if loop.index > 2 %}{% break %}{% endif %}[{{ m.content.strip() }}]{% endfor %}{{ messages[0] | tojson }}{% if add_generation_prompt %}>{% endif %}",
        "<s>",
        "</s>",
    )
    .expect("compile");
    let msgs = vec![
        json!({"role": "user", "content": "  hi <b>  "}),
        json!({"role": "assistant", "content": "yo"}),
        json!({"role": "user", "content": "skip"}),
    ];
    let out = t.render(&msgs, true).expect("render");
    // Keys keep their order (serde_json `preserve_order`), as Python's `tojson` does.
    assert_eq!(
        out,
        "<s>[hi <b>][yo]{\"role\": \"user\", \"content\": \"  hi <b>  \"}>"
    );
    let e = t
        .render(&[json!({"role": "bad", "content": "x"})], false)
        .expect_err("raise");
    assert!(e.to_string().contains("no bad roles"), "{e}");
    let e = ChatTemplate::new("{% for %}", "", "").expect_err("syntax");
    assert!(matches!(e, ModelError::Template(_)));
}

#[derive(serde::Serialize)]
struct Msg {
    role: &'static str,
    content: &'static str,
}

#[test]
fn tojson_keeps_field_order_and_indents() {
    let t = ChatTemplate::new(
        "{{ messages[0] | tojson }}|{{ x | tojson(indent=2) }}",
        "",
        "",
    )
    .expect("compile");
    let out = t
        .render_with(
            &[Msg {
                role: "user",
                content: "é\"",
            }],
            false,
            json!({"x": {"a": [1, "é"], "b": null}}),
        )
        .expect("render");
    assert_eq!(
        out,
        "{\"role\": \"user\", \"content\": \"é\\\"\"}|{\n  \"a\": [\n    1,\n    \"é\"\n  ],\n  \"b\": null\n}"
    );
}

#[test]
fn strftime_dates() {
    // 2024-07-23 12:34:56 UTC, a Tuesday.
    assert_eq!(
        strftime("%d %b %Y %H:%M:%S %A %j", 1_721_738_096),
        "23 Jul 2024 12:34:56 Tuesday 205"
    );
    assert_eq!(strftime("%-d %B %y", 951_782_400), "29 February 00");
}

#[test]
fn fallback_and_named_list() {
    let f = ChatTemplate::fallback("", "").expect("fallback");
    let out = f
        .render(&[json!({"role": "user", "content": "hello"})], true)
        .expect("render");
    assert_eq!(out, "user: hello\nassistant:");
    assert!(f.is_fallback());
    let src = template_source(Some(&json!([
        {"name": "tool_use", "template": "T"},
        {"name": "default", "template": "D"}
    ])));
    assert_eq!(src.as_deref(), Some("D"));
}

#[test]
fn real_templates_render() {
    let llama = ChatTemplate::from_tokenizer_config(&model_path(
        "tokenizers/llama3_1/tokenizer_config.json",
    ))
    .expect("load")
    .expect("has template");
    let out = llama
        .render(&[json!({"role": "user", "content": "Hi"})], true)
        .expect("render llama3.1");
    assert_eq!(
        out,
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    let qwen =
        ChatTemplate::from_tokenizer_config(&model_path("tokenizers/qwen3/tokenizer_config.json"))
            .expect("load")
            .expect("has template");
    let out = qwen
        .render(&[json!({"role": "user", "content": "Hi"})], true)
        .expect("render qwen3");
    assert_eq!(
        out,
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let tools = json!({"tools": [{"type": "function", "function": {"name": "f"}}]});
    let out = qwen
        .render_with(&[json!({"role": "user", "content": "Hi"})], true, tools)
        .expect("render qwen3 tools");
    assert!(
        out.contains("{\"type\": \"function\", \"function\": {\"name\": \"f\"}}"),
        "{out}"
    );
}
