//! Planning: fields mapped onto the worker request, and the 400s that name a field.

use super::*;
use crate::model_io::test_model;
use serde_json::{Value, json};

fn chat_req(extra: Value) -> ChatCompletionRequest {
    let mut b =
        json!({"model": "s", "messages": [{"role": "user", "content": "Once upon a time"}]});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        b[k] = v;
    }
    serde_json::from_value(b).unwrap()
}

fn comp_req(extra: Value) -> CompletionRequest {
    let mut b = json!({"model": "s", "prompt": "Once upon a time"});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        b[k] = v;
    }
    serde_json::from_value(b).unwrap()
}

fn chat_err(model: bool, extra: Value) -> ApiError {
    match chat(&chat_req(extra), Arc::new(test_model(model))) {
        Err(e) => e,
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn guided_options_reach_the_sampling_params() {
    let p = chat(
        &chat_req(json!({"guided_choice": ["yes", "no"], "n": 2, "seed": 3})),
        Arc::new(test_model(false)),
    )
    .unwrap();
    assert_eq!(p.choices.len(), 2);
    for (j, c) in p.choices.iter().enumerate() {
        assert_eq!(
            c.request.sampling.guided,
            Some(GuidedDecoding::Choice(vec!["yes".into(), "no".into()]))
        );
        assert_eq!(c.request.sampling.seed, Some(3 + j as u64));
    }
    let p = completion(
        &comp_req(json!({"response_format": {"type": "json_object"}, "max_tokens": 5})),
        Arc::new(test_model(false)),
    )
    .unwrap();
    assert_eq!(
        p.choices[0].request.sampling.guided,
        Some(GuidedDecoding::JsonObject)
    );
    assert_eq!(p.choices[0].request.stop.max_tokens, 5);
}

#[test]
fn the_mocker_cannot_honour_structured_output() {
    let e = chat_err(true, json!({"guided_regex": "[0-9]+"}));
    assert_eq!(e.0.param.as_deref(), Some("guided_regex"));
    assert!(e.0.message.contains("mocker"), "{}", e.0.message);
    let tools = json!([{"type": "function", "function": {"name": "f"}}]);
    let e = chat_err(true, json!({"tools": tools, "tool_choice": "required"}));
    assert_eq!(e.0.param.as_deref(), Some("tool_choice"));
    // `auto` forces nothing: fine on the mocker.
    assert!(
        chat(
            &chat_req(json!({"tools": tools})),
            Arc::new(test_model(true))
        )
        .is_ok()
    );
    let e = chat_err(
        false,
        json!({"tools": tools, "tool_choice": "required", "response_format": {"type": "json_object"}}),
    );
    assert_eq!(e.0.param.as_deref(), Some("tool_choice"));
}

#[test]
fn tools_are_described_in_the_prompt_and_forced_calls_constrained() {
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let p = chat(
        &chat_req(json!({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})),
        Arc::new(test_model(false)),
    )
    .unwrap();
    // stories260k's template renders no tools: the frontend's Hermes description does.
    assert!(
        p.prompt_texts[0].contains("<tools>"),
        "{}",
        p.prompt_texts[0]
    );
    assert!(p.prompt_texts[0].contains("get_weather"));
    assert_eq!(
        p.tool_mode,
        Some(OutputMode::Forced {
            named: Some("get_weather".into())
        })
    );
    assert!(matches!(
        p.choices[0].request.sampling.guided,
        Some(GuidedDecoding::JsonSchema(_))
    ));
    let p = chat(
        &chat_req(json!({"tools": tools, "tool_choice": "none"})),
        Arc::new(test_model(false)),
    )
    .unwrap();
    assert!(!p.prompt_texts[0].contains("<tools>"));
    assert_eq!(p.tool_mode, None);
}

#[test]
fn limits_name_their_field() {
    let e = chat_err(false, json!({"logprobs": true, "top_logprobs": 21}));
    assert_eq!(e.0.param.as_deref(), Some("top_logprobs"));
    let e = chat_err(false, json!({"top_logprobs": 2}));
    assert_eq!(e.0.param.as_deref(), Some("top_logprobs"));
    let e = chat_err(false, json!({"max_completion_tokens": 100000}));
    assert_eq!(e.0.param.as_deref(), Some("max_completion_tokens"));
    let e = chat_err(false, json!({"stream_options": {"include_usage": true}}));
    assert_eq!(e.0.param.as_deref(), Some("stream_options"));
    let m = Arc::new(test_model(false));
    let e = completion(&comp_req(json!({"logprobs": 6})), m.clone())
        .err()
        .unwrap();
    assert_eq!(e.0.param.as_deref(), Some("logprobs"));
    let e = completion(&comp_req(json!({"logprobs": 1, "echo": true})), m.clone())
        .err()
        .unwrap();
    assert_eq!(e.0.param.as_deref(), Some("echo"));
    let e = completion(&comp_req(json!({"prompt": vec![1; 600]})), m.clone())
        .err()
        .unwrap();
    assert_eq!(e.0.param.as_deref(), Some("prompt"));
    assert!(e.0.message.contains("512 tokens") && e.0.message.contains("600 tokens"));
    let p = completion(
        &comp_req(
            json!({"min_tokens": 3, "ignore_eos": true, "max_tokens": 7, "stream": true,
            "stream_options": {"include_usage": true}, "user": "u"}),
        ),
        m,
    )
    .unwrap();
    assert_eq!(p.choices[0].request.stop.min_tokens, 3);
    assert!(p.choices[0].request.stop.ignore_eos);
    assert!(p.include_usage && p.stream);
}
