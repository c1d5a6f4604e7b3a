//! `ferrite serve`: one process, no etcd or NATS, the bundled model; the HTTP API's
//! answers to good and bad requests.

use ferrite_integration_tests::sse::SseStream;
use ferrite_integration_tests::{metric, serve};
use serde_json::{Value, json};
use std::time::Duration;

async fn post(c: &reqwest::Client, url: &str, body: &str) -> anyhow::Result<(u16, Value)> {
    let r = c
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_serve_answers_openai_requests_and_errors() -> anyhow::Result<()> {
    let (_p, url) = serve(
        &["--engine", "mocker", "--speedup", "100"],
        Duration::from_secs(30),
    )?;
    let c = reqwest::Client::new();
    let chat = format!("{url}/v1/chat/completions");
    let comp = format!("{url}/v1/completions");

    let models: Value = c
        .get(format!("{url}/v1/models"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(models["data"][0]["id"], "stories260k");

    let (s, v) = post(&c, &chat, r#"{"model":"stories260k","messages":[{"role":"user","content":"Hello"}],"max_tokens":7,"seed":5}"#).await?;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 7);
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap_or(0) > 0);

    // n choices, each with its own tokens.
    let (s, v) = post(&c, &comp, r#"{"model":"stories260k","prompt":"Once","max_tokens":4,"n":3,"seed":1,"return_token_ids":true}"#).await?;
    assert_eq!(s, 200, "{v}");
    let choices = v["choices"].as_array().cloned().unwrap_or_default();
    assert_eq!(choices.len(), 3);
    assert_eq!(v["usage"]["completion_tokens"], 12);
    assert_ne!(choices[0]["token_ids"], choices[1]["token_ids"]);

    // Errors: OpenAI shape, right status, the field named.
    let (s, v) = post(&c, &chat, "{not json").await?;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let (s, v) = post(
        &c,
        &chat,
        r#"{"model":"stories260k","messages":[{"role":"user","content":"x"}],"temperature":-3}"#,
    )
    .await?;
    assert_eq!(
        (s, v["error"]["param"].as_str()),
        (400, Some("temperature"))
    );
    let (s, v) = post(
        &c,
        &chat,
        r#"{"model":"stories260k","messages":[{"role":"user","content":"x"}],"frobnicate":1}"#,
    )
    .await?;
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("frobnicate")));
    let (s, v) = post(&c, &chat, r#"{"messages":[]}"#).await?;
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("model")));
    let (s, v) = post(
        &c,
        &chat,
        r#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#,
    )
    .await?;
    assert_eq!(s, 404, "{v}");
    let (s, _) = post(
        &c,
        &comp,
        r#"{"model":"stories260k","prompt":"x","max_tokens":100000}"#,
    )
    .await?;
    assert_eq!(s, 400);
    let (s, _) = post(&c, &comp, r#"{"model":"stories260k","prompt":[1,2,99999]}"#).await?;
    assert_eq!(s, 400);

    // Streaming completions end with [DONE]; usage when asked.
    let body = json!({"model":"stories260k","prompt":"Once","max_tokens":6,"stream":true,"stream_options":{"include_usage":true}});
    let (events, done) = SseStream::open(&c, &comp, &body).await?.collect().await?;
    assert!(done);
    assert_eq!(
        events
            .last()
            .map(|e| e["usage"]["completion_tokens"].clone()),
        Some(json!(6))
    );

    let m = c.get(format!("{url}/metrics")).send().await?.text().await?;
    let ok = metric(
        &m,
        "ferrite_frontend_requests_total{model=\"stories260k\",endpoint=\"chat_completions\",status=\"200\"}",
    );
    assert_eq!(ok, Some(1.0), "{m}");
    assert_eq!(c.get(format!("{url}/live")).send().await?.status(), 200);
    assert_eq!(c.get(format!("{url}/health")).send().await?.status(), 200);
    Ok(())
}
