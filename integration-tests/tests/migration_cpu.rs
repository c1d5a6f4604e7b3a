//! Migration on the real CPU engine: greedy SmolLM2-135M, the serving worker SIGKILLed
//! mid-stream; the migrated output is token-for-token the uninterrupted run's.

use ferrite_integration_tests::cluster::{Cluster, ClusterSpec, token_ids};
use ferrite_integration_tests::smollm2_gguf;
use ferrite_integration_tests::sse::SseStream;
use serde_json::{Value, json};

const N: u32 = 120;

/// Two CPU-engine workers serving SmolLM2-135M as `smollm2`.
async fn smollm2_cluster() -> anyhow::Result<Cluster> {
    let model = smollm2_gguf()?;
    let mut spec = ClusterSpec::mocker(2, "1");
    spec.worker_args = vec![
        "--engine".into(),
        "cpu".into(),
        "--model".into(),
        model,
        "--served-model-name".into(),
        "smollm2".into(),
    ];
    Cluster::start(spec).await
}

fn body(model: &str) -> Value {
    json!({"model": model, "prompt": "The history of the printing press begins",
        "max_tokens": N, "temperature": 0, "ignore_eos": true,
        "stream": true, "return_token_ids": true})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cpu_engine_migration_is_token_for_token_identical() -> anyhow::Result<()> {
    let mut c = smollm2_cluster().await?;
    let url = format!("{}/v1/completions", c.url);

    // The uninterrupted run.
    let (events, done) = SseStream::open(&c.client, &url, &body("smollm2"))
        .await?
        .collect()
        .await?;
    anyhow::ensure!(done, "reference stream did not finish");
    let reference: Vec<u32> = events
        .iter()
        .flat_map(|e| token_ids(&e["choices"][0]))
        .collect();
    assert_eq!(reference.len(), N as usize);

    // The same request, its worker killed after 10 tokens.
    let (ids, done) = c
        .stream_killing_its_worker("/v1/completions", &body("smollm2"), 10)
        .await?;
    assert!(done, "no [DONE] after migration");
    assert_eq!(
        ids.len(),
        N as usize,
        "migrated stream has the wrong length"
    );
    let first_diff = ids.iter().zip(&reference).position(|(a, b)| a != b);
    assert_eq!(
        first_diff, None,
        "migrated output diverges from the uninterrupted run"
    );
    Ok(())
}

/// A structured-output request migrates too: the new worker rebuilds the grammar state
/// from the tokens so far, and the output still parses and matches the schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn structured_output_survives_migration() -> anyhow::Result<()> {
    let mut c = smollm2_cluster().await?;
    let schema = json!({"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer"},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 4}},
        "required": ["name", "age", "hobbies"], "additionalProperties": false});
    let body = json!({"model": "smollm2", "max_tokens": 200, "temperature": 0,
        "messages": [{"role": "user", "content": "Describe a fictional person as JSON."}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": true}},
        "stream": true});
    let url = format!("{}/v1/chat/completions", c.url);
    let mut s = SseStream::open(&c.client, &url, &body).await?;
    let mut text = String::new();
    let mut chunks = 0;
    let mut killed = false;
    let mut finish = None;
    while let Some(e) = s.next_event().await? {
        assert!(e.get("error").is_none(), "{e}");
        let ch = &e["choices"][0];
        if let Some(t) = ch["delta"]["content"].as_str() {
            text.push_str(t);
            chunks += 1;
        }
        if let Some(f) = ch["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
        if !killed && chunks >= 6 {
            let w = c.serving_worker().await?;
            c.kill_worker(w);
            killed = true;
        }
    }
    assert!(
        killed,
        "the stream ended before its worker could be killed: {text}"
    );
    assert_eq!(finish.as_deref(), Some("stop"), "{text}");
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("migrated output is not JSON ({e}): {text}"))?;
    assert!(
        v["name"].is_string() && v["age"].is_i64() && v["hobbies"].is_array(),
        "{v}"
    );
    let m = c.frontend_metrics().await?;
    assert!(
        m.lines()
            .any(|l| l.starts_with("ferrite_frontend_migrations_total") && !l.ends_with(" 0")),
        "no migration was counted"
    );
    Ok(())
}
