//! Shapes deltas into OpenAI chunks and final responses.

use crate::choice::{ChoiceState, Delta};
use crate::model_io::ServedModel;
use crate::plan::{Endpoint, Plan};
use ferrite_protocol::TokenLogprob;
use ferrite_protocol::openai::{
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionResponse,
    ChatDelta, ChatLogprobs, ChatTokenLogprob, CompletionChoice, CompletionLogprobs,
    CompletionResponse, PromptTokensDetails, TopLogprob, Usage,
};
use serde_json::Value;
use std::collections::BTreeMap;

/// Identity of one response: id, creation time, model name.
pub struct Header {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Header {
    pub fn new(endpoint: Endpoint, model: &str) -> Self {
        let prefix = match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completions => "cmpl",
        };
        Self {
            id: format!("{prefix}-{}", uuid::Uuid::new_v4().simple()),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            model: model.to_string(),
        }
    }
}

pub fn usage(plan: &Plan, choices: &[ChoiceState]) -> Usage {
    let completion: u32 = choices.iter().map(ChoiceState::completion_tokens).sum();
    let prompt = plan.prompt_tokens();
    // A prompt counts once in `prompt_tokens`, so once here: the fewest cached tokens any
    // of its choices saw (later choices may reuse what the first one just computed).
    let mut per_prompt: Vec<Option<u32>> = vec![None; plan.prompts.len()];
    for (c, cp) in choices.iter().zip(&plan.choices) {
        if let Some(p) = per_prompt.get_mut(cp.prompt_index) {
            *p = Some(p.map_or(c.cached_tokens, |v| v.min(c.cached_tokens)));
        }
    }
    let cached: u32 = per_prompt.iter().flatten().sum();
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
        prompt_tokens_details: Some(PromptTokensDetails {
            cached_tokens: cached,
        }),
    }
}

fn chat_logprobs(model: &ServedModel, lps: &[TokenLogprob]) -> ChatLogprobs {
    let entry = |id, logprob| {
        let token = model.token_text(id);
        TopLogprob {
            bytes: Some(token.as_bytes().to_vec()),
            token,
            logprob,
        }
    };
    ChatLogprobs {
        content: lps
            .iter()
            .map(|lp| {
                let t = entry(lp.token_id, lp.logprob);
                ChatTokenLogprob {
                    token: t.token,
                    logprob: t.logprob,
                    bytes: t.bytes,
                    top_logprobs: lp.top.iter().map(|&(id, l)| entry(id, l)).collect(),
                }
            })
            .collect(),
    }
}

/// `offsets[i]`: where token `i`'s text begins in the choice's text (see
/// [`ChoiceState::token_offsets`]); `base` is added (the echoed prompt's length).
fn completion_logprobs(
    model: &ServedModel,
    lps: &[TokenLogprob],
    offsets: &[u32],
    base: u32,
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    for (lp, off) in lps.iter().zip(offsets) {
        let tok = model.token_text(lp.token_id);
        out.text_offset.push(base + off);
        out.tokens.push(tok);
        out.token_logprobs.push(Some(lp.logprob));
        out.top_logprobs.push(Some(
            lp.top
                .iter()
                .map(|&(id, l)| (model.token_text(id), l))
                .collect::<BTreeMap<_, _>>(),
        ));
    }
    out
}

fn wants_logprobs(plan: &Plan) -> bool {
    plan.choices
        .first()
        .is_some_and(|c| c.request.sampling.logprobs.is_some())
}

/// The first chunk of a streamed chat choice: the assistant role.
pub fn chat_role_chunk(h: &Header, index: u32) -> Value {
    json(&ChatCompletionChunk {
        id: h.id.clone(),
        object: "chat.completion.chunk".into(),
        created: h.created,
        model: h.model.clone(),
        choices: vec![ChatChunkChoice {
            index,
            delta: ChatDelta {
                role: Some("assistant".into()),
                content: Some(String::new()),
                tool_calls: None,
            },
            logprobs: None,
            finish_reason: None,
            token_ids: None,
        }],
        usage: None,
    })
}

/// A streamed chunk for one delta, or `None` when it carries nothing.
pub fn delta_chunk(plan: &Plan, h: &Header, st: &ChoiceState, d: &Delta) -> Option<Value> {
    if d.text.is_empty()
        && d.finish_reason.is_none()
        && d.token_ids.is_empty()
        && d.tool_calls.is_empty()
    {
        return None;
    }
    let finish_reason = d.finish_reason.and_then(|_| st.finish_reason());
    let token_ids = plan.return_token_ids.then(|| d.token_ids.clone());
    let lp = wants_logprobs(plan);
    Some(match plan.endpoint {
        Endpoint::Chat => json(&ChatCompletionChunk {
            id: h.id.clone(),
            object: "chat.completion.chunk".into(),
            created: h.created,
            model: h.model.clone(),
            choices: vec![ChatChunkChoice {
                index: st.index,
                delta: ChatDelta {
                    role: None,
                    content: (!d.text.is_empty() || d.tool_calls.is_empty())
                        .then(|| d.text.clone()),
                    tool_calls: (!d.tool_calls.is_empty()).then(|| d.tool_calls.clone()),
                },
                logprobs: lp.then(|| chat_logprobs(&plan.model, &d.logprobs)),
                finish_reason,
                token_ids,
            }],
            usage: None,
        }),
        Endpoint::Completions => json(&CompletionResponse {
            id: h.id.clone(),
            object: "text_completion".into(),
            created: h.created,
            model: h.model.clone(),
            choices: vec![CompletionChoice {
                index: st.index,
                text: d.text.clone(),
                logprobs: lp.then(|| {
                    let from = st.token_offsets.len() - d.token_ids.len();
                    completion_logprobs(&plan.model, &d.logprobs, &st.token_offsets[from..], 0)
                }),
                finish_reason,
                token_ids,
            }],
            usage: None,
        }),
    })
}

/// The first chunk of a streamed completions choice with `echo`: the prompt text.
pub fn echo_chunk(plan: &Plan, h: &Header, index: u32, prompt_index: usize) -> Value {
    json(&CompletionResponse {
        id: h.id.clone(),
        object: "text_completion".into(),
        created: h.created,
        model: h.model.clone(),
        choices: vec![CompletionChoice {
            index,
            text: plan
                .prompt_texts
                .get(prompt_index)
                .cloned()
                .unwrap_or_default(),
            logprobs: None,
            finish_reason: None,
            token_ids: None,
        }],
        usage: None,
    })
}

/// The final usage chunk of a stream (`stream_options.include_usage`).
pub fn usage_chunk(plan: &Plan, h: &Header, choices: &[ChoiceState]) -> Value {
    let object = match plan.endpoint {
        Endpoint::Chat => "chat.completion.chunk",
        Endpoint::Completions => "text_completion",
    };
    serde_json::json!({
        "id": h.id, "object": object, "created": h.created, "model": h.model,
        "choices": [], "usage": usage(plan, choices),
    })
}

/// The whole response of a non-streamed request.
pub fn full_response(
    plan: &Plan,
    h: &Header,
    choices: &[ChoiceState],
    logprobs: &[Vec<TokenLogprob>],
) -> Value {
    let usage = usage(plan, choices);
    let lp = wants_logprobs(plan);
    match plan.endpoint {
        Endpoint::Chat => json(&ChatCompletionResponse {
            id: h.id.clone(),
            object: "chat.completion".into(),
            created: h.created,
            model: h.model.clone(),
            choices: choices
                .iter()
                .zip(logprobs)
                .map(|(c, l)| ChatChoice {
                    index: c.index,
                    message: AssistantMessage {
                        role: "assistant".into(),
                        content: (!c.content().is_empty() || c.tool_calls.is_empty())
                            .then(|| c.content().to_string()),
                        tool_calls: (!c.tool_calls.is_empty()).then(|| c.tool_calls.clone()),
                    },
                    logprobs: lp.then(|| chat_logprobs(&plan.model, l)),
                    finish_reason: c.finish_reason(),
                    token_ids: plan.return_token_ids.then(|| c.token_ids.clone()),
                })
                .collect(),
            usage,
            prompt_token_ids: plan
                .return_token_ids
                .then(|| plan.prompts.first().cloned().unwrap_or_default()),
        }),
        Endpoint::Completions => json(&CompletionResponse {
            id: h.id.clone(),
            object: "text_completion".into(),
            created: h.created,
            model: h.model.clone(),
            choices: choices
                .iter()
                .zip(logprobs)
                .zip(&plan.choices)
                .map(|((c, l), cp)| {
                    let echo = if plan.echo {
                        plan.prompt_texts
                            .get(cp.prompt_index)
                            .cloned()
                            .unwrap_or_default()
                    } else {
                        String::new()
                    };
                    CompletionChoice {
                        index: c.index,
                        logprobs: lp.then(|| {
                            completion_logprobs(&plan.model, l, &c.token_offsets, echo.len() as u32)
                        }),
                        text: echo + c.text(),
                        finish_reason: c.finish_reason(),
                        token_ids: plan.return_token_ids.then(|| c.token_ids.clone()),
                    }
                })
                .collect(),
            usage: Some(usage),
        }),
    }
}

fn json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}
