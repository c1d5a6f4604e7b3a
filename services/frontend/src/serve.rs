//! Runs a `Plan`: fans its choices out to workers, post-processes, and answers as SSE or JSON.

use crate::choice::ChoiceState;
use crate::error::ApiError;
use crate::generate::{CancelGuard, ChoiceItem, run_choice};
use crate::plan::Plan;
use crate::response::{self, Header};
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
}

impl RequestMetrics {
    fn new(plan: &Plan) -> Self {
        metrics::gauge!(names::FRONTEND_INFLIGHT_REQUESTS).increment(1.0);
        metrics::histogram!(names::FRONTEND_INPUT_TOKENS).record(plan.prompt_tokens() as f64);
        Self {
            model: plan.model.name.clone(),
            endpoint: plan.endpoint.label(),
            start: Instant::now(),
            last_token: None,
            done: false,
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
    let streams = plan.choices.iter().enumerate().map(|(i, c)| {
        let guard = CancelGuard::new(state.cancel_tx.clone());
        run_choice(state.clone(), c.request.clone(), guard, tokens[i].clone())
            .map(move |item| (i, item))
            .boxed()
    });
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
            )
        })
        .collect()
}

/// Answers a planned request. Errors before the first byte become HTTP errors; later ones
/// an SSE error event.
pub async fn respond(state: Arc<AppState>, plan: Plan) -> Result<HttpResponse, ApiError> {
    let mut m = RequestMetrics::new(&plan);
    let (mut events, stops) = launch(&state, &plan);
    // Wait for the first output so that routing and admission errors get a real status.
    let first = events.next().await;
    let first = match first {
        Some((_, Err(e))) => {
            m.finish(e.kind.http_status(), 0);
            return Err(ApiError(e));
        }
        Some(x) => x,
        None => {
            m.finish(500, 0);
            return Err(ApiError::new(ErrorKind::Internal, "no output"));
        }
    };
    let events = futures::stream::iter([first]).chain(events);
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
        }
        let mut open = st.len();
        let mut status = 200;
        while open > 0 {
            let Some((i, item)) = events.next().await else { break };
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
                    if let Some(chunk) = response::delta_chunk(&plan, &h, &st[i], &d) {
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
