//! Migration on the real CPU engine: greedy SmolLM2-135M, the serving worker SIGKILLed
//! mid-stream; the migrated output is token-for-token the uninterrupted run's.

use ferrite_integration_tests::cluster::{Cluster, ClusterSpec, token_ids};
use ferrite_integration_tests::models_dir;
use ferrite_integration_tests::sse::SseStream;
use serde_json::{Value, json};

const N: u32 = 120;

fn body(model: &str) -> Value {
    json!({"model": model, "prompt": "The history of the printing press begins",
        "max_tokens": N, "temperature": 0, "ignore_eos": true,
        "stream": true, "return_token_ids": true})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cpu_engine_migration_is_token_for_token_identical() -> anyhow::Result<()> {
    let model = models_dir()?.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    anyhow::ensure!(model.is_file(), "missing test model {}", model.display());
    let mut spec = ClusterSpec::mocker(2, "1");
    spec.worker_args = vec![
        "--engine".into(),
        "cpu".into(),
        "--model".into(),
        model.to_string_lossy().into_owned(),
        "--served-model-name".into(),
        "smollm2".into(),
    ];
    let mut c = Cluster::start(spec).await?;
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
    let mut s = SseStream::open(&c.client, &url, &body("smollm2")).await?;
    let mut ids = Vec::new();
    let mut killed = false;
    while let Some(e) = s.next_event().await? {
        assert!(e.get("error").is_none(), "{e}");
        ids.extend(token_ids(&e["choices"][0]));
        if !killed && ids.len() >= 10 {
            let w = c.serving_worker().await?;
            c.kill_worker(w);
            killed = true;
        }
    }
    assert!(killed, "the stream ended before its worker could be killed");
    assert!(s.done, "no [DONE] after migration");
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
