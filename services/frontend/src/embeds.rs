//! Precomputed prompt embeddings from the API: chat `input_embeds` content parts and the
//! completions `prompt_embeds` field. Each is a base64 safetensors file holding one tensor
//! of shape `[rows, hidden]` (or `[1, rows, hidden]`) in F32, F16 or BF16; its rows enter
//! the prompt as embedding tokens (see `ferrite_protocol::embeds`).

use crate::error::{ApiError, ApiResult};
use crate::model_io::ServedModel;
use base64::Engine as _;
use ferrite_protocol::openai::{ChatMessage, ContentPart, MessageContent};
use ferrite_protocol::{PromptEmbeds, TokenId};
use safetensors::{Dtype, SafeTensors};

/// Stands in for the k-th `input_embeds` part in the rendered chat template.
fn marker(k: usize) -> String {
    format!("\u{1}ferrite:embeds:{k}\u{1}")
}
const MARKER_PREFIX: &str = "\u{1}ferrite:embeds:";

/// Decodes one base64 safetensors payload into `rows × width` f32 values.
pub fn decode(field: &str, b64: &str, width: usize) -> ApiResult<Vec<f32>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| ApiError::invalid(field, format!("`{field}` is not valid base64: {e}")))?;
    if bytes.starts_with(b"PK\x03\x04") {
        return Err(ApiError::invalid(
            field,
            format!(
                "`{field}` looks like a torch.save file; send a safetensors file instead \
                 (e.g. safetensors.torch.save({{\"embeds\": tensor}}), base64-encoded)"
            ),
        ));
    }
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        ApiError::invalid(field, format!("`{field}` is not a safetensors file: {e}"))
    })?;
    let tensors = st.tensors();
    let [(name, t)] = tensors.as_slice() else {
        return Err(ApiError::invalid(
            field,
            format!(
                "`{field}` must hold exactly one tensor, it holds {}",
                tensors.len()
            ),
        ));
    };
    let rows = match t.shape() {
        [r, w] | [1, r, w] if *w == width && *r > 0 => *r,
        shape => {
            return Err(ApiError::invalid(
                field,
                format!(
                    "`{field}` tensor {name:?} has shape {shape:?}; expected [rows, {width}] \
                     with rows > 0 ({width} is the model's hidden size)"
                ),
            ));
        }
    };
    let data = t.data();
    let values: Vec<f32> = match t.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(ApiError::invalid(
                field,
                format!("`{field}` tensor has dtype {other:?}; F32, F16 or BF16 expected"),
            ));
        }
    };
    if values.len() != rows * width {
        return Err(ApiError::invalid(
            field,
            format!("`{field}` tensor data does not match its shape"),
        ));
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(ApiError::invalid(
            field,
            format!("`{field}` holds a NaN or infinite value"),
        ));
    }
    Ok(values)
}

/// Refuses embeddings for a model whose engine cannot take them (the mocker).
fn check_model(model: &ServedModel, field: &str) -> ApiResult<()> {
    if model.simulated {
        return Err(ApiError::invalid(
            field,
            format!(
                "the model `{}` is served by the mocker (a simulated engine), which takes no \
                 precomputed embeddings",
                model.name
            ),
        ));
    }
    Ok(())
}

/// Replaces every `input_embeds` part of `messages` with a marker the chat template
/// renders as text, and returns the decoded rows in order (empty: a text-only chat).
pub fn extract(
    messages: &[ChatMessage],
    model: &ServedModel,
) -> ApiResult<(Vec<ChatMessage>, Vec<Vec<f32>>)> {
    let mut rows = Vec::new();
    let mut out = messages.to_vec();
    for (i, m) in out.iter_mut().enumerate() {
        let Some(MessageContent::Parts(parts)) = &mut m.content else {
            continue;
        };
        for (j, p) in parts.iter_mut().enumerate() {
            let field = format!("messages[{i}].content[{j}]");
            match p {
                ContentPart::InputEmbeds { input_embeds } => {
                    check_model(model, &field)?;
                    rows.push(decode(
                        &format!("{field}.input_embeds"),
                        input_embeds,
                        model.hidden_size as usize,
                    )?);
                    *p = ContentPart::Text {
                        text: marker(rows.len() - 1),
                    };
                }
                ContentPart::Text { text } if text.contains(MARKER_PREFIX) => {
                    return Err(ApiError::invalid(
                        format!("{field}.text"),
                        "the text holds a sequence reserved for embedding placeholders",
                    ));
                }
                _ => {}
            }
        }
    }
    Ok((out, rows))
}

/// Tokenizes a rendered chat `text` whose markers stand for `rows`: the text between
/// markers is tokenized piece by piece and each marker becomes its rows.
pub fn encode_chat(
    model: &ServedModel,
    text: &str,
    rows: Vec<Vec<f32>>,
) -> ApiResult<(Vec<TokenId>, Option<PromptEmbeds>)> {
    if rows.is_empty() {
        return Ok((model.encode(text, false)?, None));
    }
    let mut tokens = Vec::new();
    let mut embeds = PromptEmbeds::new(model.hidden_size);
    let mut rest = text;
    for (k, r) in rows.into_iter().enumerate() {
        let m = marker(k);
        let Some((before, after)) = rest.split_once(&m) else {
            return Err(ApiError::invalid(
                "messages",
                "the chat template did not render every input_embeds part once, in order",
            ));
        };
        tokens.extend(model.encode(before, false)?);
        embeds.append(&mut tokens, r);
        rest = after;
    }
    if rest.contains(MARKER_PREFIX) {
        return Err(ApiError::invalid(
            "messages",
            "the chat template rendered an input_embeds part more than once",
        ));
    }
    tokens.extend(model.encode(rest, false)?);
    Ok((tokens, Some(embeds)))
}

/// The prompts of a completions request given as `prompt_embeds`: each payload is one
/// prompt made of its rows alone (no BOS is added).
pub fn completion_prompts(
    model: &ServedModel,
    payloads: &[String],
) -> ApiResult<Vec<(Vec<TokenId>, PromptEmbeds)>> {
    check_model(model, "prompt_embeds")?;
    let many = payloads.len() > 1;
    payloads
        .iter()
        .enumerate()
        .map(|(i, b64)| {
            let field = if many {
                format!("prompt_embeds[{i}]")
            } else {
                "prompt_embeds".to_string()
            };
            let data = decode(&field, b64, model.hidden_size as usize)?;
            let mut tokens = Vec::new();
            let mut e = PromptEmbeds::new(model.hidden_size);
            e.append(&mut tokens, data);
            Ok((tokens, e))
        })
        .collect()
}

#[cfg(test)]
#[path = "embeds_tests.rs"]
mod tests;
