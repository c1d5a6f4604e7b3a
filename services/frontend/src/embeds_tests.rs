#![allow(clippy::unwrap_used)]
use super::*;
use crate::model_io::test_model;
use ferrite_protocol::is_embed_token;
use safetensors::tensor::TensorView;

fn st(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> String {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn f32_rows(rows: usize, w: usize) -> (Vec<f32>, String) {
    let vals: Vec<f32> = (0..rows * w).map(|i| i as f32 * 0.5 - 3.0).collect();
    let bytes = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    let b64 = st(&[("embeds", Dtype::F32, vec![rows, w], bytes)]);
    (vals, b64)
}

#[test]
fn decodes_f32_f16_and_bf16_tensors_of_the_model_width() {
    let (vals, b64) = f32_rows(3, 4);
    assert_eq!(decode("f", &b64, 4).unwrap(), vals);
    let halfs: Vec<u8> = vals
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect();
    let b64 = st(&[("x", Dtype::F16, vec![1, 3, 4], halfs)]);
    assert_eq!(decode("f", &b64, 4).unwrap(), vals);
    let bf: Vec<u8> = vals
        .iter()
        .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
        .collect();
    let b64 = st(&[("x", Dtype::BF16, vec![3, 4], bf)]);
    assert_eq!(decode("f", &b64, 4).unwrap(), vals);
}

#[test]
fn bad_payloads_are_400s_that_say_why() {
    let msg = |b64: &str| decode("prompt_embeds", b64, 4).unwrap_err().to_string();
    assert!(msg("%%%").contains("not valid base64"));
    let zip = base64::engine::general_purpose::STANDARD.encode(b"PK\x03\x04rest");
    assert!(msg(&zip).contains("torch.save"));
    let junk = base64::engine::general_purpose::STANDARD.encode(b"0123456789");
    assert!(msg(&junk).contains("not a safetensors file"));
    let (_, wide) = f32_rows(2, 5);
    let m = msg(&wide);
    assert!(m.contains("[2, 5]") && m.contains("hidden size"), "{m}");
    let two = st(&[
        ("a", Dtype::F32, vec![1, 4], vec![0; 16]),
        ("b", Dtype::F32, vec![1, 4], vec![0; 16]),
    ]);
    assert!(msg(&two).contains("exactly one tensor"));
    let ints = st(&[("a", Dtype::I32, vec![1, 4], vec![0; 16])]);
    assert!(msg(&ints).contains("dtype"));
    let nan: Vec<u8> = [f32::NAN, 0.0, 0.0, 0.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert!(msg(&st(&[("a", Dtype::F32, vec![1, 4], nan)])).contains("NaN"));
    let e = decode("prompt_embeds", "%%%", 4).unwrap_err();
    assert_eq!(e.kind(), ferrite_protocol::ErrorKind::InvalidRequest);
}

fn chat(parts: serde_json::Value) -> Vec<ChatMessage> {
    serde_json::from_value(serde_json::json!([{"role": "user", "content": parts}])).unwrap()
}

#[test]
fn chat_parts_become_rows_between_the_text_tokens() {
    let model = test_model(false);
    let w = model.hidden_size as usize;
    assert_eq!(w, 64, "stories260k's hidden size");
    let (vals, b64) = f32_rows(5, w);
    let msgs = chat(serde_json::json!([
        {"type": "text", "text": "Once upon"},
        {"type": "input_embeds", "input_embeds": b64},
        {"type": "text", "text": " a time"}
    ]));
    let (plain, rows) = extract(&msgs, &model).unwrap();
    assert_eq!(rows, vec![vals.clone()]);
    let text = model.render_chat(&plain, true, None, None).unwrap();
    let (tokens, embeds) = encode_chat(&model, &text, rows).unwrap();
    let embeds = embeds.unwrap();
    let at: Vec<usize> = (0..tokens.len())
        .filter(|&i| is_embed_token(tokens[i]))
        .collect();
    assert_eq!(at.len(), 5);
    assert_eq!(at[4] - at[0], 4, "rows are consecutive");
    assert!(at[0] > 0 && at[4] + 1 < tokens.len(), "text on both sides");
    assert_eq!(embeds.row(at[2] as u32).unwrap(), &vals[2 * w..3 * w]);
    embeds.check(&tokens, tokens.len()).unwrap();

    // Without parts: exactly the plain encoding.
    let (tokens, none) = encode_chat(&model, "hello", Vec::new()).unwrap();
    assert!(none.is_none());
    assert_eq!(tokens, model.encode("hello", false).unwrap());
}

#[test]
fn chat_refuses_reserved_markers_and_simulated_models() {
    let model = test_model(false);
    let msgs =
        chat(serde_json::json!([{"type": "text", "text": format!("x{}0\u{1}", MARKER_PREFIX)}]));
    let e = extract(&msgs, &model).unwrap_err().to_string();
    assert!(e.contains("reserved"), "{e}");
    let (_, b64) = f32_rows(1, 64);
    let msgs = chat(serde_json::json!([{"type": "input_embeds", "input_embeds": b64}]));
    let e = extract(&msgs, &test_model(true)).unwrap_err().to_string();
    assert!(e.contains("mocker"), "{e}");
    let e = completion_prompts(&test_model(true), &[b64])
        .unwrap_err()
        .to_string();
    assert!(e.contains("mocker"), "{e}");
}

#[test]
fn completion_prompts_are_rows_alone() {
    let model = test_model(false);
    let (a, b64a) = f32_rows(2, 64);
    let (_, b64b) = f32_rows(7, 64);
    let ps = completion_prompts(&model, &[b64a, b64b]).unwrap();
    assert_eq!(ps.len(), 2);
    assert_eq!(ps[0].0.len(), 2);
    assert_eq!(ps[1].0.len(), 7);
    assert!(ps[0].0.iter().all(|t| is_embed_token(*t)));
    assert_eq!(ps[0].1.spans[0].data, a);
    let e = completion_prompts(&model, &["%".into(), "%".into()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("prompt_embeds[0]"), "{e}");
}
