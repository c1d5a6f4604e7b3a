//! HTTP handlers: thin; parsing, then `plan` and `serve`.

use crate::error::{ApiError, ApiResult};
use crate::plan;
use crate::serve::respond;
use crate::state::AppState;
use actix_web::{HttpRequest, HttpResponse, web};
use ferrite_protocol::ErrorKind;
use ferrite_protocol::openai::{ChatCompletionRequest, CompletionRequest, ModelCard, ModelList};
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Every route the server serves, `(method, path)`: `configure` registers exactly these,
/// and the committed OpenAPI document must list exactly these (a test checks).
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("GET", "/v1/models"),
    ("GET", "/health"),
    ("GET", "/live"),
    ("GET", "/metrics"),
];

/// The handler of one entry of [`ROUTES`].
fn route_for(method: &str, path: &str) -> Option<actix_web::Route> {
    Some(match (method, path) {
        ("POST", "/v1/chat/completions") => web::post().to(chat),
        ("POST", "/v1/completions") => web::post().to(completions),
        ("GET", "/v1/models") => web::get().to(models),
        ("GET", "/health") => web::get().to(health),
        ("GET", "/live") => web::get().to(live),
        ("GET", "/metrics") => web::get().to(metrics),
        _ => return None,
    })
}

/// Registers [`ROUTES`] and the JSON 404 for everything else.
pub fn configure(cfg: &mut web::ServiceConfig) {
    for (method, path) in ROUTES {
        if let Some(r) = route_for(method, path) {
            cfg.route(path, r);
        }
    }
    cfg.default_service(web::to(not_found));
}

/// The `x-worker-instance-id` header: route this request to that instance only.
fn pinned_instance(http: &HttpRequest) -> ApiResult<Option<ferrite_protocol::InstanceId>> {
    let Some(v) = http.headers().get(PIN_HEADER) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::invalid(
                PIN_HEADER,
                format!("`{PIN_HEADER}` must be an instance id (hex), got {v:?}"),
            )
        })
}

/// Header pinning a request to one worker instance.
pub const PIN_HEADER: &str = "x-worker-instance-id";

pub struct Inflight(pub AtomicUsize);

/// One admitted request; released when the response (stream included) is dropped.
pub struct InflightGuard(web::Data<Inflight>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn admit(inflight: &web::Data<Inflight>, max: usize) -> ApiResult<InflightGuard> {
    let now = inflight.0.fetch_add(1, Ordering::Relaxed);
    let guard = InflightGuard(inflight.clone());
    if now >= max {
        return Err(ApiError::new(
            ErrorKind::Overloaded,
            format!("the frontend has {now} requests in flight (limit {max}); retry later"),
        ));
    }
    Ok(guard)
}

/// A body over the limit: 413 in OpenAI's error shape.
fn too_large(limit: usize, got: Option<usize>) -> HttpResponse {
    let got = got.map(|g| format!(" ({g} bytes)")).unwrap_or_default();
    HttpResponse::PayloadTooLarge().json(serde_json::json!({"error": {
        "message": format!("the request body is larger than the limit of {limit} bytes{got}"),
        "type": "invalid_request_error", "param": null, "code": 413}}))
}

/// Reads the body up to `limit` bytes; `Err` is the 413 answer.
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, ApiResult<HttpResponse>> {
    use futures::StreamExt;
    let declared = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(n) = declared.filter(|&n| n > limit) {
        return Err(Ok(too_large(limit, Some(n))));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            Err(ApiError::new(
                ErrorKind::InvalidRequest,
                format!("reading the request body: {e}"),
            ))
        })?;
        if body.len() + chunk.len() > limit {
            return Err(Ok(too_large(limit, None)));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
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
    http: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let body = match read_body(&http, payload, state.config.max_body_bytes).await {
        Ok(b) => b,
        Err(answer) => return answer,
    };
    let admitted = admit(&inflight, state.config.max_inflight)?;
    let req: ChatCompletionRequest = parse(&body)?;
    let model = lookup(&state, &req.model)?;
    let mut plan = plan::chat(&req, model)?;
    plan.pinned = pinned_instance(&http)?;
    respond(state.get_ref().clone(), plan, admitted).await
}

pub async fn completions(
    state: web::Data<Arc<AppState>>,
    inflight: web::Data<Inflight>,
    http: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let body = match read_body(&http, payload, state.config.max_body_bytes).await {
        Ok(b) => b,
        Err(answer) => return answer,
    };
    let admitted = admit(&inflight, state.config.max_inflight)?;
    let req: CompletionRequest = parse(&body)?;
    let model = lookup(&state, &req.model)?;
    let mut plan = plan::completion(&req, model)?;
    plan.pinned = pinned_instance(&http)?;
    respond(state.get_ref().clone(), plan, admitted).await
}

pub async fn models(state: web::Data<Arc<AppState>>) -> HttpResponse {
    let data = state
        .routable_models()
        .await
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

/// Ready: at least one model has a live instance the router can send requests to.
pub async fn health(state: web::Data<Arc<AppState>>) -> HttpResponse {
    let models: Vec<String> = state
        .routable_models()
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect();
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
