//! Runs a `Plan`: fans its choices out to workers, post-processes, and answers as SSE or JSON.

use crate::choice::ChoiceState;
use crate::error::ApiError;
use crate::generate::{CancelGuard, ChoiceItem, ChoiceRoute, PrefillDone, run_choice};
use crate::plan::Plan;
use crate::response::{self, Header};
use crate::routes::InflightGuard;
use crate::state::AppState;
use actix_web::HttpResponse;
use actix_web::web::Bytes;
use async_stream::stream;
use ferrite_protocol::{ErrorInfo, ErrorKind, FinishReason, TokenLogprob};
use ferrite_telemetry::names;
use futures::stream::{BoxStream, select_all};
use futures::{Stream, StreamExt};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// Counts a finished request in the metrics (status label) and the in-flight gauge.
struct RequestMetrics {
    model: String,
    endpoint: &'static str,
    start: Instant,
    last_token: Option<Instant>,
    done: bool,
    /// Counts against the frontend's in-flight limit until the response is done.
    _admitted: InflightGuard,
}

impl RequestMetrics {
    fn new(plan: &Plan, admitted: InflightGuard) -> Self {
        metrics::gauge!(names::FRONTEND_INFLIGHT_REQUESTS).increment(1.0);
        metrics::histogram!(names::FRONTEND_INPUT_TOKENS).record(plan.prompt_tokens() as f64);
        Self {
            model: plan.model.name.clone(),
            endpoint: plan.endpoint.label(),
            start: Instant::now(),
            last_token: None,
            done: false,
            _admitted: admitted,
        }
    }

    fn token(&mut self) {
        let now = Instant::now();
        match self.last_token {
            None => metrics::histogram!(names::FRONTEND_TTFT_SECONDS)
                .record((now - self.start).as_secs_f64()),
            Some(t) => {
                metrics::histogram!(names::FRONTEND_ITL_SECONDS).record((now - t).as_secs_f64())
            }
        }
        self.last_token = Some(now);
    }

    fn finish(&mut self, status: u16, output_tokens: u32) {
        if self.done {
            return;
        }
        self.done = true;
        metrics::gauge!(names::FRONTEND_INFLIGHT_REQUESTS).decrement(1.0);
        metrics::counter!(names::FRONTEND_REQUESTS_TOTAL,
            "model" => self.model.clone(), "endpoint" => self.endpoint, "status" => status.to_string())
        .increment(1);
        metrics::histogram!(names::FRONTEND_REQUEST_DURATION_SECONDS)
            .record(self.start.elapsed().as_secs_f64());
        metrics::histogram!(names::FRONTEND_OUTPUT_TOKENS).record(output_tokens as f64);
    }
}

impl Drop for RequestMetrics {
    fn drop(&mut self) {
        // The client went away before the end.
        self.finish(499, 0);
    }
}

type Tagged = (usize, ChoiceItem);

/// How long a streamed request waits for its first output before answering 200 and
/// streaming keep-alives (errors until then get their own HTTP status).
const FIRST_OUTPUT_GRACE: std::time::Duration = std::time::Duration::from_millis(500);
/// An SSE comment line is sent when a stream has been silent this long.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Starts every choice; the tokens end a choice early (stop strings).
fn launch(
    state: &Arc<AppState>,
    plan: &Plan,
) -> (BoxStream<'static, Tagged>, Vec<CancellationToken>) {
    let tokens: Vec<CancellationToken> = plan
        .choices
        .iter()
        .map(|_| CancellationToken::new())
        .collect();
    // Choices of one prompt share its KV blocks: the first choice of each prompt runs at
    // once; the others start when it has produced its first output (its prompt blocks
    // are then in the worker's prefix cache) and are pinned to the same instance.
    let mut leaders: std::collections::HashMap<usize, PrefillDone> =
        std::collections::HashMap::new();
    let mut streams = Vec::with_capacity(plan.choices.len());
    for (i, c) in plan.choices.iter().enumerate() {
        let guard = CancelGuard::new(state.cancel_tx.clone());
        let (state, req, token) = (state.clone(), c.request.clone(), tokens[i].clone());
        let s = match leaders.get(&c.prompt_index) {
            None => {
                let (tx, rx) = tokio::sync::watch::channel(None);
                leaders.insert(c.prompt_index, rx);
                run_choice(
                    state,
                    req,
                    guard,
                    token,
                    ChoiceRoute::new(plan.pinned, Some(tx)),
                )
                .boxed()
            }
            Some(rx) => {
                let mut rx = rx.clone();
                let pinned = plan.pinned;
                stream! {
                    // The leader's instance, or none if it failed before its first output.
                    let leader = rx.wait_for(Option::is_some).await.ok().and_then(|v| *v);
                    let route = ChoiceRoute::prefer(leader, pinned);
                    let inner = run_choice(state, req, guard, token, route);
                    futures::pin_mut!(inner);
                    while let Some(item) = inner.next().await {
                        yield item;
                    }
                }
                .boxed()
            }
        };
        streams.push(s.map(move |item| (i, item)).boxed());
    }
    let merged = select_all(streams);
    let deadline = state.config.request_timeout;
    let merged_with_deadline = stream! {
        let timer = tokio::time::sleep(deadline);
        tokio::pin!(timer);
        let mut merged = merged;
        loop {
            tokio::select! {
                item = merged.next() => match item {
                    Some(x) => yield x,
                    None => return,
                },
                _ = &mut timer => {
                    yield (0, Err(ErrorInfo::new(ErrorKind::Timeout,
                        format!("request did not finish within {} s", deadline.as_secs()))));
                    return;
                }
            }
        }
    }
    .boxed();
    (merged_with_deadline, tokens)
}

fn states(plan: &Plan) -> Vec<ChoiceState> {
    plan.choices
        .iter()
        .map(|c| {
            ChoiceState::new(
                c.index,
                &plan.model,
                &plan.prompts[c.prompt_index],
                plan.stop_strings.clone(),
                plan.include_stop_str,
                plan.tool_mode.clone(),
            )
        })
        .collect()
}

/// Answers a planned request. Errors before the first byte become HTTP errors; later ones
/// an SSE error event.
pub async fn respond(
    state: Arc<AppState>,
    plan: Plan,
    admitted: InflightGuard,
) -> Result<HttpResponse, ApiError> {
    let mut m = RequestMetrics::new(&plan, admitted);
    let (mut events, stops) = launch(&state, &plan);
    // Wait (briefly, for streams) for the first output so that routing and admission
    // errors get a real status. A stream still waiting after that (queued, or in a long
    // prefill) starts at once with SSE keep-alive comments, so a client that hangs up is
    // noticed and the request cancelled on the worker before its first token.
    let first = if plan.stream {
        tokio::time::timeout(FIRST_OUTPUT_GRACE, events.next())
            .await
            .ok()
    } else {
        Some(events.next().await)
    };
    let events: BoxStream<'static, Tagged> = match first {
        Some(Some((_, Err(e)))) => {
            m.finish(e.kind.http_status(), 0);
            return Err(ApiError(e));
        }
        Some(Some(x)) => futures::stream::iter([x]).chain(events).boxed(),
        Some(None) => {
            m.finish(500, 0);
            return Err(ApiError::new(ErrorKind::Internal, "no output"));
        }
        None => events,
    };
    if plan.stream {
        let body = sse(plan, events, stops, m);
        Ok(HttpResponse::Ok()
            .content_type("text/event-stream")
            .insert_header(("cache-control", "no-cache"))
            .streaming(body))
    } else {
        collect(plan, events, stops, m).await
    }
}

async fn collect(
    plan: Plan,
    mut events: impl Stream<Item = Tagged> + Unpin,
    stops: Vec<CancellationToken>,
    mut m: RequestMetrics,
) -> Result<HttpResponse, ApiError> {
    let mut st = states(&plan);
    let mut lps: Vec<Vec<TokenLogprob>> = vec![Vec::new(); st.len()];
    let mut open = st.len();
    while open > 0 {
        let Some((i, item)) = events.next().await else {
            break;
        };
        match item {
            Ok(out) => {
                m.token();
                let d = st[i].on_output(&out);
                if d.stopped_by_string {
                    stops[i].cancel();
                }
                lps[i].extend(d.logprobs);
                if d.finish_reason.is_some() {
                    open -= 1;
                }
            }
            Err(e) => {
                m.finish(e.kind.http_status(), 0);
                return Err(ApiError(e));
            }
        }
    }
    for s in st.iter_mut().filter(|s| s.finish.is_none()) {
        s.finish = Some(FinishReason::Length);
    }
    let h = Header::new(plan.endpoint, &plan.model.name);
    let body = response::full_response(&plan, &h, &st, &lps);
    m.finish(200, st.iter().map(ChoiceState::completion_tokens).sum());
    Ok(HttpResponse::Ok().json(body))
}

fn event(v: &serde_json::Value) -> Result<Bytes, actix_web::Error> {
    Ok(Bytes::from(format!("data: {v}\n\n")))
}

fn sse(
    plan: Plan,
    mut events: impl Stream<Item = Tagged> + Unpin + 'static,
    stops: Vec<CancellationToken>,
    mut m: RequestMetrics,
) -> impl Stream<Item = Result<Bytes, actix_web::Error>> {
    stream! {
        let h = Header::new(plan.endpoint, &plan.model.name);
        let mut st = states(&plan);
        if plan.endpoint == crate::plan::Endpoint::Chat {
            for s in &st {
                yield event(&response::chat_role_chunk(&h, s.index));
            }
        } else if plan.echo {
            for c in &plan.choices {
                yield event(&response::echo_chunk(&plan, &h, c.index, c.prompt_index));
            }
        }
        let mut open = st.len();
        let mut status = 200;
        let mut keepalive = tokio::time::interval(KEEPALIVE_INTERVAL);
        keepalive.reset();
        while open > 0 {
            let next = tokio::select! {
                next = events.next() => next,
                _ = keepalive.tick() => {
                    yield Ok(Bytes::from_static(b": keep-alive\n\n"));
                    continue;
                }
            };
            let Some((i, item)) = next else { break };
            keepalive.reset();
            match item {
                Ok(out) => {
                    m.token();
                    let d = st[i].on_output(&out);
                    if d.stopped_by_string {
                        stops[i].cancel();
                    }
                    if d.finish_reason.is_some() {
                        open -= 1;
                    }
                    if let Some(mut chunk) = response::delta_chunk(&plan, &h, &st[i], &d) {
                        if plan.include_usage {
                            // OpenAI: every chunk has `usage`, null but in the last one.
                            chunk["usage"] = serde_json::Value::Null;
                        }
                        yield event(&chunk);
                    }
                }
                Err(e) => {
                    status = e.kind.http_status();
                    let body = ferrite_protocol::openai::ErrorResponse::from(&e);
                    yield event(&serde_json::to_value(body).unwrap_or_default());
                    break;
                }
            }
        }
        if plan.include_usage {
            yield event(&response::usage_chunk(&plan, &h, &st));
        }
        yield Ok(Bytes::from_static(b"data: [DONE]\n\n"));
        m.finish(status, st.iter().map(ChoiceState::completion_tokens).sum());
    }
}
