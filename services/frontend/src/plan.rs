//! Turns a chat or completions request into a `Plan`: the tokenized prompts, the
//! per-choice `PreprocessedRequest`s, and what the response must look like.

use crate::embeds;
use crate::error::{ApiError, ApiResult};
use crate::guided;
use crate::model_io::ServedModel;
use crate::tools::{self, OutputMode};
use crate::validate::{self, LengthParams};
use ferrite_protocol::openai::{
    ChatCompletionRequest, CommonParams, CompletionRequest, ContentPart, MessageContent,
    PromptField,
};
use ferrite_protocol::{
    DpRank, GuidedDecoding, PreprocessedRequest, PromptEmbeds, RequestId, SamplingParams,
    StopConditions, TokenId,
};
use std::sync::Arc;

/// Default `max_tokens` of the legacy completions endpoint (OpenAI's).
pub const COMPLETIONS_DEFAULT_MAX_TOKENS: u32 = 16;

/// Which logprobs shape the response uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

impl Endpoint {
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat_completions",
            Endpoint::Completions => "completions",
        }
    }
}

/// One choice to generate: its index in the response and the request sent to a worker.
#[derive(Clone, Debug)]
pub struct ChoicePlan {
    pub index: u32,
    pub prompt_index: usize,
    pub request: PreprocessedRequest,
}

/// Everything needed to run a request and shape its response.
pub struct Plan {
    pub endpoint: Endpoint,
    pub model: Arc<ServedModel>,
    pub prompts: Vec<Vec<TokenId>>,
    /// Prompt texts, for `echo`.
    pub prompt_texts: Vec<String>,
    pub choices: Vec<ChoicePlan>,
    pub stream: bool,
    pub include_usage: bool,
    pub stop_strings: Vec<String>,
    pub include_stop_str: bool,
    pub return_token_ids: bool,
    pub echo: bool,
    /// How tool calls are read from the output (chat with `tools`).
    pub tool_mode: Option<OutputMode>,
    /// Route to this instance only (`x-worker-instance-id`, for debugging); migration may
    /// still move the request elsewhere.
    pub pinned: Option<ferrite_protocol::InstanceId>,
}

impl Plan {
    #[allow(clippy::too_many_arguments)]
    fn new(
        endpoint: Endpoint,
        common: &CommonParams,
        model: Arc<ServedModel>,
        prompts: Vec<Vec<TokenId>>,
        prompt_texts: Vec<String>,
        choices: Vec<ChoicePlan>,
        stop_strings: Vec<String>,
        echo: bool,
    ) -> Self {
        Plan {
            endpoint,
            model,
            prompts,
            prompt_texts,
            choices,
            stream: common.stream,
            include_usage: common
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
            stop_strings,
            include_stop_str: common.include_stop_str_in_output,
            return_token_ids: common.return_token_ids,
            echo,
            tool_mode: None,
            pinned: None,
        }
    }

    pub fn prompt_tokens(&self) -> u32 {
        self.prompts.iter().map(|p| p.len() as u32).sum()
    }
}

struct Shared<'a> {
    common: &'a CommonParams,
    sampling: SamplingParams,
    requested_max: Option<u32>,
    default_max: u32,
    names: LengthParams,
}

/// One choice per prompt and `n`; `embeds[i]` are prompt `i`'s embedding rows (missing:
/// none).
fn choices_for(
    model: &ServedModel,
    prompts: &[Vec<TokenId>],
    embeds: &[Option<Arc<PromptEmbeds>>],
    s: &Shared<'_>,
) -> ApiResult<Vec<ChoicePlan>> {
    let n = s.common.n.unwrap_or(1);
    let mut stop_ids = model.eos_ids.clone();
    stop_ids.extend(s.common.stop_token_ids.iter().flatten().copied());
    validate::token_ids("stop_token_ids", &stop_ids, model.vocab_size)?;
    let mut out = Vec::new();
    for (pi, prompt) in prompts.iter().enumerate() {
        if prompt.is_empty() {
            return Err(ApiError::invalid("prompt", "the prompt is empty"));
        }
        let max = validate::max_tokens(
            s.requested_max,
            s.default_max,
            prompt.len(),
            model.context_length,
            s.names,
        )?;
        for j in 0..n {
            let mut sampling = s.sampling.clone();
            // Each choice draws differently but reproducibly under one seed.
            sampling.seed = sampling.seed.map(|seed| seed.wrapping_add(j as u64));
            out.push(ChoicePlan {
                index: pi as u32 * n + j,
                prompt_index: pi,
                request: PreprocessedRequest {
                    request_id: RequestId::new(),
                    model: model.name.clone(),
                    token_ids: prompt.clone(),
                    generated_so_far: 0,
                    sampling,
                    stop: StopConditions {
                        max_tokens: max,
                        min_tokens: s.common.min_tokens.unwrap_or(0).min(max),
                        stop_token_ids: stop_ids.clone(),
                        ignore_eos: s.common.ignore_eos,
                    },
                    dp_rank: DpRank(0),
                    extra_hash_key: 0,
                    prompt_embeds: embeds.get(pi).cloned().flatten(),
                },
            });
        }
    }
    Ok(out)
}

/// A simulated model cannot constrain its output: such requests are refused; and a
/// constraint the worker's grammar compiler rejects is refused up front.
fn check_guided(
    model: &ServedModel,
    guided: &Option<(GuidedDecoding, &'static str)>,
) -> ApiResult<()> {
    match guided {
        Some((_, field)) if model.simulated => Err(ApiError::invalid(
            *field,
            format!(
                "`{field}` needs structured output, which the model `{}` cannot honour: it is served by the mocker (a simulated engine that generates no real text)",
                model.name
            ),
        )),
        // What the worker's grammar compiler would refuse is a 400 here, not a failed step.
        Some((g, field)) => ferrite_structured::validate(g)
            .map_err(|e| ApiError::invalid(*field, format!("`{field}` cannot be enforced: {e}"))),
        None => Ok(()),
    }
}

fn check_messages(req: &ChatCompletionRequest, model: &ServedModel) -> ApiResult<()> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must not be empty",
        ));
    }
    for (i, m) in req.messages.iter().enumerate() {
        if !matches!(
            m.role.as_str(),
            "system" | "user" | "assistant" | "tool" | "developer"
        ) {
            return Err(ApiError::invalid(
                format!("messages[{i}].role"),
                format!("unknown role {:?}", m.role),
            ));
        }
        if let Some(MessageContent::Parts(parts)) = &m.content
            && parts
                .iter()
                .any(|p| matches!(p, ContentPart::ImageUrl { .. }))
        {
            return Err(ApiError::invalid(
                format!("messages[{i}].content"),
                format!("model {} does not accept image input", model.name),
            ));
        }
    }
    tools::check_history(&req.messages)
}

/// Plans a `/v1/chat/completions` request.
pub fn chat(req: &ChatCompletionRequest, model: Arc<ServedModel>) -> ApiResult<Plan> {
    validate::no_unknown_fields(&req.unknown)?;
    check_messages(req, &model)?;
    let tool_plan = tools::plan(
        req.tools.as_ref(),
        req.tool_choice.as_ref(),
        req.parallel_tool_calls,
        model.tool_format(),
    )?;
    if req.top_logprobs.is_some() && !req.logprobs {
        return Err(ApiError::invalid(
            "top_logprobs",
            "`top_logprobs` requires `logprobs: true`",
        ));
    }
    validate::logprobs("top_logprobs", req.top_logprobs, validate::MAX_TOP_LOGPROBS)?;
    let logprobs = req.logprobs.then(|| req.top_logprobs.unwrap_or(0));
    let mut sampling = validate::sampling(&req.common, logprobs, model.vocab_size)?;
    let mut guided = guided::from_request(&req.common, req.response_format.as_ref())?;
    if let Some(forced) = tool_plan.as_ref().and_then(|t| t.guided.clone()) {
        if let Some((_, field)) = &guided {
            return Err(ApiError::invalid(
                "tool_choice",
                format!("a forced tool call (`tool_choice`) cannot be combined with `{field}`"),
            ));
        }
        guided = Some((forced, "tool_choice"));
    }
    check_guided(&model, &guided)?;
    sampling.guided = guided.map(|(g, _)| g);
    let stop_strings = validate::stop_strings(&req.common)?;
    let (messages, rows) = embeds::extract(&req.messages, &model)?;
    let text = model.render_chat(
        &messages,
        req.add_generation_prompt,
        req.chat_template_kwargs.as_ref(),
        tool_plan.as_ref().map(|t| t.tools.as_slice()),
    )?;
    let (prompt, prompt_embeds) = embeds::encode_chat(&model, &text, rows)?;
    let shared = Shared {
        common: &req.common,
        sampling,
        requested_max: req.max_completion_tokens.or(req.max_tokens),
        default_max: model.context_length,
        names: LengthParams {
            prompt: "messages",
            max: if req.max_completion_tokens.is_some() {
                "max_completion_tokens"
            } else {
                "max_tokens"
            },
        },
    };
    let prompts = vec![prompt];
    let choices = choices_for(&model, &prompts, &[prompt_embeds.map(Arc::new)], &shared)?;
    let mut plan = Plan::new(
        Endpoint::Chat,
        &req.common,
        model,
        prompts,
        vec![text],
        choices,
        stop_strings,
        false,
    );
    plan.tool_mode = tool_plan.map(|t| t.mode);
    Ok(plan)
}

/// Plans a `/v1/completions` request.
pub fn completion(req: &CompletionRequest, model: Arc<ServedModel>) -> ApiResult<Plan> {
    validate::no_unknown_fields(&req.unknown)?;
    validate::unsupported(
        "suffix",
        req.suffix.as_ref().is_some_and(|s| !s.is_empty()),
        "insertion is not implemented",
    )?;
    let n = req.common.n.unwrap_or(1);
    validate::unsupported(
        "best_of",
        req.best_of.is_some_and(|b| b != n),
        "`best_of` must equal `n`",
    )?;
    validate::logprobs("logprobs", req.logprobs, validate::MAX_COMPLETION_LOGPROBS)?;
    validate::unsupported(
        "echo",
        req.echo && req.logprobs.is_some(),
        "`echo` with `logprobs` needs the prompt tokens' logprobs, which the engines do not compute",
    )?;
    let mut sampling = validate::sampling(&req.common, req.logprobs, model.vocab_size)?;
    let guided = guided::from_request(&req.common, req.response_format.as_ref())?;
    check_guided(&model, &guided)?;
    sampling.guided = guided.map(|(g, _)| g);
    let stop_strings = validate::stop_strings(&req.common)?;
    let mut prompt_embeds = Vec::new();
    let (prompts, prompt_texts) = match (&req.prompt, &req.prompt_embeds) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "prompt_embeds",
                "give either `prompt` or `prompt_embeds`, not both",
            ));
        }
        (None, None) => {
            return Err(ApiError::invalid(
                "prompt",
                "`prompt` (or `prompt_embeds`) is required",
            ));
        }
        (None, Some(payloads)) => {
            validate::unsupported(
                "echo",
                req.echo,
                "`echo` cannot show a prompt given as embeddings",
            )?;
            let mut ps = Vec::new();
            for (tokens, e) in embeds::completion_prompts(&model, &payloads.to_vec())? {
                ps.push(tokens);
                prompt_embeds.push(Some(Arc::new(e)));
            }
            let texts = vec![String::new(); ps.len()];
            (ps, texts)
        }
        (Some(PromptField::Text(t)), None) => (vec![model.encode(t, true)?], vec![t.clone()]),
        (Some(PromptField::Texts(ts)), None) => {
            let mut ps = Vec::with_capacity(ts.len());
            for t in ts {
                ps.push(model.encode(t, true)?);
            }
            (ps, ts.clone())
        }
        (Some(PromptField::Tokens(ids)), None) => (vec![ids.clone()], vec![model.decode(ids)]),
        (Some(PromptField::TokenLists(lists)), None) => (
            lists.clone(),
            lists.iter().map(|l| model.decode(l)).collect(),
        ),
    };
    if prompts.is_empty() {
        return Err(ApiError::invalid("prompt", "`prompt` must not be empty"));
    }
    if req.prompt.is_some() {
        for p in &prompts {
            validate::token_ids("prompt", p, model.vocab_size)?;
        }
    }
    let shared = Shared {
        common: &req.common,
        sampling,
        requested_max: req.max_tokens,
        default_max: COMPLETIONS_DEFAULT_MAX_TOKENS,
        names: LengthParams {
            prompt: "prompt",
            max: "max_tokens",
        },
    };
    let choices = choices_for(&model, &prompts, &prompt_embeds, &shared)?;
    if choices.len() > validate::MAX_N as usize {
        return Err(ApiError::invalid(
            "n",
            format!(
                "at most {} choices per request (prompts × n)",
                validate::MAX_N
            ),
        ));
    }
    Ok(Plan::new(
        Endpoint::Completions,
        &req.common,
        model,
        prompts,
        prompt_texts,
        choices,
        stop_strings,
        req.echo,
    ))
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
