//! The committed OpenAPI document (`docs/openapi.json`) matches what the server serves:
//! the same routes, and request schemas with exactly the fields the request types accept.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use actix_web::App;
use actix_web::test as atest;
use ferrite_frontend::{fields, routes};
use serde_json::Value;
use std::collections::BTreeSet;

fn doc() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    let text = std::fs::read_to_string(path).expect("docs/openapi.json is committed");
    serde_json::from_str(&text).expect("docs/openapi.json is JSON")
}

fn properties(doc: &Value, schema: &str) -> Vec<String> {
    let props = doc["components"]["schemas"][schema]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("schema {schema} has no properties"));
    let mut v: Vec<String> = props.keys().cloned().collect();
    v.sort();
    v
}

#[test]
fn documented_routes_are_the_served_routes() {
    let doc = doc();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(|m| (m.to_uppercase(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let served: BTreeSet<(String, String)> = routes::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, served);
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
}

#[test]
fn documented_request_fields_are_the_accepted_fields() {
    let doc = doc();
    assert_eq!(
        properties(&doc, "ChatCompletionRequest"),
        fields::chat_request()
    );
    assert_eq!(
        properties(&doc, "CompletionRequest"),
        fields::completion_request()
    );
    assert_eq!(properties(&doc, "ChatMessage"), fields::chat_message());
}

/// Every route in `ROUTES` reaches a handler (the JSON 404 answers anything else).
#[actix_web::test]
async fn configure_serves_every_route_and_only_those() {
    let app = atest::init_service(App::new().configure(routes::configure)).await;
    for (method, path) in routes::ROUTES {
        let req = atest::TestRequest::default()
            .method(method.parse().unwrap())
            .uri(path)
            .to_request();
        let resp = atest::call_service(&app, req).await;
        // Without app state the handlers fail, but not with the router's 404.
        assert_ne!(resp.status(), 404, "{method} {path} is not routed");
    }
    let req = atest::TestRequest::get().uri("/v1/nothing").to_request();
    let resp = atest::call_service(&app, req).await;
    assert_eq!(resp.status(), 404);
    let body: Value = atest::read_body_json(resp).await;
    assert_eq!(body["error"]["type"], "not_found");
}
