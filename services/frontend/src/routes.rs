//! HTTP handlers: thin; parsing, then `plan` and `serve`.

use crate::error::{ApiError, ApiResult};
use crate::plan;
use crate::serve::respond;
use crate::state::AppState;
use actix_web::{HttpResponse, web};
use ferrite_protocol::ErrorKind;
use ferrite_protocol::openai::{ChatCompletionRequest, CompletionRequest, ModelCard, ModelList};
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Inflight(pub AtomicUsize);

struct InflightGuard<'a>(&'a AtomicUsize);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn admit<'a>(inflight: &'a Inflight, max: usize) -> ApiResult<InflightGuard<'a>> {
    let now = inflight.0.fetch_add(1, Ordering::Relaxed);
    let guard = InflightGuard(&inflight.0);
    if now >= max {
        return Err(ApiError::new(
            ErrorKind::Overloaded,
            format!("the frontend has {now} requests in flight (limit {max}); retry later"),
        ));
    }
    Ok(guard)
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::from_json(&e))
}

fn lookup(state: &AppState, model: &str) -> ApiResult<Arc<crate::model_io::ServedModel>> {
    match state.model(model) {
        Some((m, true)) => Ok(m),
        Some((_, false)) => Err(ApiError::new(
            ErrorKind::Unavailable,
            format!("no live instance serves the model `{model}` right now; retry later"),
        )),
        None => Err(ApiError(ferrite_protocol::ErrorInfo {
            kind: ErrorKind::ModelNotFound,
            message: format!("the model `{model}` does not exist"),
            param: Some("model".into()),
        })),
    }
}

pub async fn chat(
    state: web::Data<Arc<AppState>>,
    inflight: web::Data<Inflight>,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let _g = admit(&inflight, state.config.max_inflight)?;
    let req: ChatCompletionRequest = parse(&body)?;
    let model = lookup(&state, &req.model)?;
    let plan = plan::chat(&req, model)?;
    respond(state.get_ref().clone(), plan).await
}

pub async fn completions(
    state: web::Data<Arc<AppState>>,
    inflight: web::Data<Inflight>,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let _g = admit(&inflight, state.config.max_inflight)?;
    let req: CompletionRequest = parse(&body)?;
    let model = lookup(&state, &req.model)?;
    let plan = plan::completion(&req, model)?;
    respond(state.get_ref().clone(), plan).await
}

pub async fn models(state: web::Data<Arc<AppState>>) -> HttpResponse {
    let data = state
        .model_names()
        .into_iter()
        .map(|(id, ctx)| ModelCard {
            id,
            object: "model".into(),
            created: 0,
            owned_by: "ferrite".into(),
            max_model_len: Some(ctx),
        })
        .collect();
    HttpResponse::Ok().json(ModelList {
        object: "list".into(),
        data,
    })
}

/// Ready: at least one model has a live instance.
pub async fn health(state: web::Data<Arc<AppState>>) -> HttpResponse {
    let models: Vec<String> = state.model_names().into_iter().map(|(n, _)| n).collect();
    let body = serde_json::json!({"status": if models.is_empty() {"no_instances"} else {"healthy"}, "models": models});
    if models.is_empty() {
        HttpResponse::ServiceUnavailable().json(body)
    } else {
        HttpResponse::Ok().json(body)
    }
}

pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "live"}))
}

pub async fn metrics(handle: web::Data<PrometheusHandle>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(handle.render())
}

pub async fn not_found(req: actix_web::HttpRequest) -> HttpResponse {
    HttpResponse::NotFound().json(serde_json::json!({"error": {
        "message": format!("no route {} {}", req.method(), req.path()),
        "type": "not_found", "param": null, "code": 404}}))
}
