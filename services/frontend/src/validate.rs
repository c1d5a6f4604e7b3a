//! Field validation shared by chat and completions: OpenAI's ranges, with the offending
//! field named in every error.

use crate::error::{ApiError, ApiResult};
use ferrite_protocol::openai::CommonParams;
use ferrite_protocol::{SamplingParams, TokenId};
use serde_json::Value;
use std::collections::BTreeMap;

/// Most choices per request.
pub const MAX_N: u32 = 128;
/// Most stop strings per request.
pub const MAX_STOP: usize = 32;
/// Most top logprobs per token (chat `top_logprobs`).
pub const MAX_TOP_LOGPROBS: u32 = 20;
/// Most top logprobs per token (completions `logprobs`, as OpenAI).
pub const MAX_COMPLETION_LOGPROBS: u32 = 5;

fn range(param: &str, v: Option<f32>, lo: f32, hi: f32) -> ApiResult<()> {
    match v {
        Some(x) if !(x.is_finite() && x >= lo && x <= hi) => Err(ApiError::invalid(
            param,
            format!("`{param}` must be between {lo} and {hi}, got {x}"),
        )),
        _ => Ok(()),
    }
}

/// Rejects fields no part of Ferrite knows.
pub fn no_unknown_fields(unknown: &BTreeMap<String, Value>) -> ApiResult<()> {
    match unknown.keys().next() {
        None => Ok(()),
        Some(k) => Err(ApiError::invalid(
            k.clone(),
            format!(
                "unknown field `{k}`{}",
                if unknown.len() > 1 {
                    format!(" (and {} more)", unknown.len() - 1)
                } else {
                    String::new()
                }
            ),
        )),
    }
}

/// Rejects a field that is accepted by the schema but not supported.
pub fn unsupported(param: &str, present: bool, why: &str) -> ApiResult<()> {
    if present {
        Err(ApiError::invalid(
            param,
            format!("`{param}` is not supported: {why}"),
        ))
    } else {
        Ok(())
    }
}

/// Checks the common fields and turns them into sampling parameters.
pub fn sampling(
    c: &CommonParams,
    logprobs: Option<u32>,
    vocab_size: u32,
) -> ApiResult<SamplingParams> {
    if c.stream_options.is_some() && !c.stream {
        return Err(ApiError::invalid(
            "stream_options",
            "`stream_options` is only allowed with `stream: true`",
        ));
    }
    range("temperature", c.temperature, 0.0, 100.0)?;
    range("top_p", c.top_p, 0.0, 1.0)?;
    if c.top_p == Some(0.0) {
        return Err(ApiError::invalid("top_p", "`top_p` must be in (0, 1]"));
    }
    range("min_p", c.min_p, 0.0, 1.0)?;
    range("presence_penalty", c.presence_penalty, -2.0, 2.0)?;
    range("frequency_penalty", c.frequency_penalty, -2.0, 2.0)?;
    range("repetition_penalty", c.repetition_penalty, 0.01, 100.0)?;
    let top_k = match c.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as u32,
        Some(k) => {
            return Err(ApiError::invalid(
                "top_k",
                format!("`top_k` must be -1 (disabled) or at least 1, got {k}"),
            ));
        }
    };
    if let Some(n) = c.n
        && !(1..=MAX_N).contains(&n)
    {
        return Err(ApiError::invalid(
            "n",
            format!("`n` must be between 1 and {MAX_N}, got {n}"),
        ));
    }
    let mut logit_bias = BTreeMap::new();
    for (k, v) in c.logit_bias.iter().flatten() {
        let id: TokenId = k.parse().map_err(|_| {
            ApiError::invalid(
                "logit_bias",
                format!("`logit_bias` key {k:?} is not a token id"),
            )
        })?;
        if id >= vocab_size {
            return Err(ApiError::invalid(
                "logit_bias",
                format!("`logit_bias` token {id} is outside the vocabulary ({vocab_size} tokens)"),
            ));
        }
        if !(v.is_finite() && (-100.0..=100.0).contains(v)) {
            return Err(ApiError::invalid(
                "logit_bias",
                format!("`logit_bias` values must be between -100 and 100, got {v}"),
            ));
        }
        logit_bias.insert(id, *v);
    }
    Ok(SamplingParams {
        temperature: c.temperature.unwrap_or(1.0),
        top_k,
        top_p: c.top_p.unwrap_or(1.0),
        min_p: c.min_p.unwrap_or(0.0),
        seed: c.seed.map(|s| s as u64),
        repetition_penalty: c.repetition_penalty.unwrap_or(1.0),
        frequency_penalty: c.frequency_penalty.unwrap_or(0.0),
        presence_penalty: c.presence_penalty.unwrap_or(0.0),
        logit_bias,
        logprobs,
        logits_processors: Vec::new(),
        guided: None,
    })
}

/// The number of top logprobs asked for, at most `max`.
pub fn logprobs(param: &str, k: Option<u32>, max: u32) -> ApiResult<()> {
    match k {
        Some(k) if k > max => Err(ApiError::invalid(
            param,
            format!("`{param}` must be between 0 and {max}, got {k}"),
        )),
        _ => Ok(()),
    }
}

/// Stop strings, checked.
pub fn stop_strings(c: &CommonParams) -> ApiResult<Vec<String>> {
    let stops = c.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    if stops.len() > MAX_STOP {
        return Err(ApiError::invalid(
            "stop",
            format!("at most {MAX_STOP} stop strings, got {}", stops.len()),
        ));
    }
    if stops.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "stop strings must not be empty"));
    }
    Ok(stops)
}

/// Token ids given by the client, checked against the vocabulary.
pub fn token_ids(param: &str, ids: &[TokenId], vocab_size: u32) -> ApiResult<()> {
    match ids.iter().find(|&&t| t >= vocab_size) {
        Some(t) => Err(ApiError::invalid(
            param,
            format!("token id {t} is outside the vocabulary ({vocab_size} tokens)"),
        )),
        None => Ok(()),
    }
}

/// Which request fields `max_tokens` errors name.
#[derive(Clone, Copy, Debug)]
pub struct LengthParams {
    /// `messages` or `prompt`.
    pub prompt: &'static str,
    /// `max_tokens` or `max_completion_tokens`.
    pub max: &'static str,
}

/// `max_tokens`: at least 1, and the prompt plus it must fit the context.
pub fn max_tokens(
    requested: Option<u32>,
    default: u32,
    prompt_len: usize,
    context: u32,
    names: LengthParams,
) -> ApiResult<u32> {
    if requested == Some(0) {
        return Err(ApiError::invalid(
            names.max,
            format!("`{}` must be at least 1", names.max),
        ));
    }
    let room = (context as usize).saturating_sub(prompt_len) as u32;
    if room == 0 {
        return Err(ApiError::invalid(
            names.prompt,
            format!(
                "this model's maximum context length is {context} tokens, but the prompt has {prompt_len} tokens"
            ),
        ));
    }
    match requested {
        Some(m) if m > room => Err(ApiError::invalid(
            names.max,
            format!(
                "this model's maximum context length is {context} tokens; you requested {} tokens ({prompt_len} in the prompt, {m} for the completion)",
                prompt_len as u64 + m as u64
            ),
        )),
        Some(m) => Ok(m),
        None => Ok(default.min(room)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(json: &str) -> CommonParams {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn ranges_name_the_field() {
        let e = sampling(&common(r#"{"temperature": -1}"#), None, 100).unwrap_err();
        assert_eq!(e.0.param.as_deref(), Some("temperature"));
        let e = sampling(&common(r#"{"top_p": 0}"#), None, 100).unwrap_err();
        assert_eq!(e.0.param.as_deref(), Some("top_p"));
        let e = sampling(&common(r#"{"n": 0}"#), None, 100).unwrap_err();
        assert_eq!(e.0.param.as_deref(), Some("n"));
        let e = sampling(&common(r#"{"top_k": -5}"#), None, 100).unwrap_err();
        assert_eq!(e.0.param.as_deref(), Some("top_k"));
        let e = sampling(&common(r#"{"logit_bias": {"500": 1}}"#), None, 100).unwrap_err();
        assert!(e.0.message.contains("outside"), "{}", e.0.message);
        let e = sampling(&common(r#"{"logit_bias": {"5": 101}}"#), None, 100).unwrap_err();
        assert_eq!(e.0.param.as_deref(), Some("logit_bias"));
    }

    #[test]
    fn sampling_defaults_and_values() {
        let s = sampling(
            &common(r#"{"temperature": 0, "seed": 7, "top_k": 3}"#),
            Some(2),
            100,
        )
        .unwrap();
        assert!(s.is_greedy());
        assert_eq!(s.seed, Some(7));
        assert_eq!(s.top_k, 3);
        assert_eq!(s.logprobs, Some(2));
        assert_eq!(sampling(&common("{}"), None, 100).unwrap().temperature, 1.0);
    }

    #[test]
    fn max_tokens_fits_context() {
        let n = LengthParams {
            prompt: "prompt",
            max: "max_completion_tokens",
        };
        assert_eq!(max_tokens(None, 16, 10, 100, n).unwrap(), 16);
        assert_eq!(max_tokens(None, 1000, 10, 100, n).unwrap(), 90);
        let e = max_tokens(Some(91), 16, 10, 100, n).unwrap_err();
        assert_eq!(e.0.param.as_deref(), Some("max_completion_tokens"));
        assert!(e.0.message.contains("101 tokens"), "{}", e.0.message);
        assert!(max_tokens(Some(0), 16, 10, 100, n).is_err());
        let e = max_tokens(None, 16, 120, 100, n).unwrap_err();
        assert_eq!(e.0.param.as_deref(), Some("prompt"));
        assert!(
            e.0.message.contains("100 tokens") && e.0.message.contains("120 tokens"),
            "{}",
            e.0.message
        );
    }

    #[test]
    fn limits_of_logprobs_and_stops() {
        assert!(logprobs("logprobs", Some(5), MAX_COMPLETION_LOGPROBS).is_ok());
        let e = logprobs("logprobs", Some(6), MAX_COMPLETION_LOGPROBS).unwrap_err();
        assert!(e.0.message.contains("between 0 and 5"), "{}", e.0.message);
        let stops: Vec<String> = (0..33).map(|i| format!("s{i}")).collect();
        let c = CommonParams {
            stop: Some(ferrite_protocol::openai::StopField::Many(stops)),
            ..Default::default()
        };
        assert_eq!(
            stop_strings(&c).unwrap_err().0.param.as_deref(),
            Some("stop")
        );
    }

    #[test]
    fn stops_and_tokens() {
        assert!(stop_strings(&common(r#"{"stop": ""}"#)).is_err());
        assert_eq!(
            stop_strings(&common(r#"{"stop": "x"}"#)).unwrap(),
            vec!["x"]
        );
        assert!(token_ids("prompt", &[1, 200], 100).is_err());
        let mut m = BTreeMap::new();
        m.insert("foo".to_string(), Value::Null);
        assert_eq!(
            no_unknown_fields(&m).unwrap_err().0.param.as_deref(),
            Some("foo")
        );
    }
}
