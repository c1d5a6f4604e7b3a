//! Precomputed prompt embeddings through a real cluster (etcd, NATS, frontend, two CPU
//! workers serving SmolLM2-135M): rows equal to the model's own token embeddings give the
//! text prompt's greedy output token for token (chat `input_embeds` parts and completions
//! `prompt_embeds`); the prefix cache shares blocks before the rows and never across
//! different rows; bad rows are a 400, rows over the bus's payload limit a 413; a request
//! with rows survives its worker's SIGKILL; a disaggregated prefill worker computes the
//! rows' KV for a decode worker.

use base64::Engine as _;
use ferrite_cpu::{CpuExecutor, CpuOptions};
use ferrite_integration_tests::cluster::{Cluster, ClusterSpec, token_ids};
use ferrite_integration_tests::sse::SseStream;
use ferrite_integration_tests::{metric, smollm2_gguf};
use ferrite_protocol::is_embed_token;
use safetensors::{Dtype, tensor::TensorView};
use serde_json::{Value, json};
use std::path::Path;

const BLOCK: u64 = 16;

/// `rows` (row after row, `width` values each) as a base64 safetensors file.
fn b64_rows(rows: &[f32], width: usize) -> String {
    let bytes: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        TensorView::new(Dtype::F32, vec![rows.len() / width, width], &bytes).expect("tensor view");
    let file = safetensors::serialize([("embeds", view)], None).expect("serialize");
    base64::engine::general_purpose::STANDARD.encode(file)
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as u32)
                .collect()
        })
        .unwrap_or_default()
}

async fn post(c: &Cluster, path: &str, pin: Option<usize>, body: &Value) -> (u16, Value) {
    let mut r = c.client.post(format!("{}{path}", c.url)).json(body);
    if let Some(w) = pin {
        r = r.header("x-worker-instance-id", &c.workers[w].instance_id);
    }
    let resp = r.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json body"))
}

fn chat(content: Value) -> Value {
    json!({"model": "smollm2", "messages": [{"role": "user", "content": content}],
        "max_tokens": 12, "temperature": 0, "ignore_eos": true, "return_token_ids": true})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedding_rows_reproduce_text_prompts_through_the_cluster() -> anyhow::Result<()> {
    let model = smollm2_gguf()?;
    let mut spec = ClusterSpec::mocker(2, "1");
    spec.worker_args = [
        "--engine",
        "cpu",
        "--model",
        &model,
        "--served-model-name",
        "smollm2",
    ]
    .map(String::from)
    .to_vec();
    let mut c = Cluster::start(spec).await?;
    let opts = CpuOptions {
        num_kv_blocks: 4,
        block_size: 16,
        threads: 1,
        f32_activations: false,
    };
    let ex = CpuExecutor::load(Path::new(&model), opts)?;
    let width = ex.config().hidden;
    let card = ferrite_model::ModelCard::load(Path::new(&model))?;

    // Chat: the middle of the user message as rows gives the text's tokens.
    let text = "Tell me a story about a cat.";
    let (s, a) = post(&c, "/v1/chat/completions", Some(0), &chat(json!(text))).await;
    assert_eq!(s, 200, "{a}");
    let prompt = u32s(&a["prompt_token_ids"]);
    let mid = card.tokenizer.encode(" a story about a", false)?;
    let at = prompt
        .windows(mid.len())
        .position(|w| w == mid.as_slice())
        .expect("the middle's tokens inside the chat prompt");
    let rows = b64_rows(&ex.token_embeddings(&mid), width);
    let parts = json!([{"type": "text", "text": "Tell me"},
        {"type": "input_embeds", "input_embeds": rows},
        {"type": "text", "text": " cat."}]);
    let (s, b) = post(&c, "/v1/chat/completions", Some(0), &chat(parts.clone())).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        token_ids(&b["choices"][0]),
        token_ids(&a["choices"][0]),
        "rows gave other tokens than the text"
    );
    assert_eq!(b["choices"][0]["message"], a["choices"][0]["message"]);
    assert_eq!(b["usage"]["prompt_tokens"], a["usage"]["prompt_tokens"]);
    let b_prompt = u32s(&b["prompt_token_ids"]);
    let embedded: Vec<usize> = (0..b_prompt.len())
        .filter(|&i| is_embed_token(b_prompt[i]))
        .collect();
    assert_eq!(embedded, (at..at + mid.len()).collect::<Vec<_>>());

    // The same rows again: the whole prompt's full blocks come from the prefix cache.
    let (_, again) = post(&c, "/v1/chat/completions", Some(0), &chat(parts)).await;
    let full = b_prompt.len() as u64 / BLOCK * BLOCK;
    assert_eq!(
        again["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64(),
        Some(full),
        "{again}"
    );
    // Other rows at the same place: only blocks before them are shared.
    let other: Vec<f32> = ex.token_embeddings(&mid).iter().map(|v| v * 0.5).collect();
    let parts = json!([{"type": "text", "text": "Tell me"},
        {"type": "input_embeds", "input_embeds": b64_rows(&other, width)},
        {"type": "text", "text": " cat."}]);
    let (s, d) = post(&c, "/v1/chat/completions", Some(0), &chat(parts)).await;
    assert_eq!(s, 200, "{d}");
    let cached = d["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        cached <= at as u64 / BLOCK * BLOCK,
        "{cached} cached tokens reach into the different rows at {at}"
    );

    // Completions: the whole prompt as rows, on either worker.
    let reference = json!({"model": "smollm2", "prompt": prompt, "max_tokens": 12,
        "temperature": 0, "ignore_eos": true, "return_token_ids": true});
    let (s, r) = post(&c, "/v1/completions", None, &reference).await;
    assert_eq!(s, 200, "{r}");
    let all_rows = b64_rows(&ex.token_embeddings(&prompt), width);
    let body = json!({"model": "smollm2", "prompt_embeds": all_rows, "max_tokens": 12,
        "temperature": 0, "ignore_eos": true, "return_token_ids": true});
    for pin in [Some(0), Some(1)] {
        let (s, e) = post(&c, "/v1/completions", pin, &body).await;
        assert_eq!(s, 200, "{e}");
        assert_eq!(token_ids(&e["choices"][0]), token_ids(&r["choices"][0]));
        assert_eq!(e["choices"][0]["text"], r["choices"][0]["text"]);
    }

    // Bad rows: 400 naming the field.
    let narrow = b64_rows(&vec![0.5; 3 * (width - 1)], width - 1);
    let (s, e) = post(
        &c,
        "/v1/completions",
        None,
        &json!({"model": "smollm2", "prompt_embeds": narrow, "max_tokens": 2}),
    )
    .await;
    assert_eq!(
        (s, e["error"]["param"].as_str()),
        (400, Some("prompt_embeds"))
    );
    let msg = e["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains(&format!("[3, {}]", width - 1)), "{msg}");
    let (s, e) = post(
        &c,
        "/v1/completions",
        None,
        &json!({"model": "smollm2", "prompt": "x", "prompt_embeds": all_rows}),
    )
    .await;
    assert_eq!(
        (s, e["error"]["param"].as_str()),
        (400, Some("prompt_embeds"))
    );

    // Rows over NATS's payload limit (1 MiB by default): 413 saying so, not a lost request.
    let big = b64_rows(&vec![0.25; 600 * width], width);
    let (s, e) = post(
        &c,
        "/v1/completions",
        None,
        &json!({"model": "smollm2", "prompt_embeds": big, "max_tokens": 2}),
    )
    .await;
    assert_eq!(s, 413, "{e}");
    let msg = e["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("max_payload"), "{msg}");

    // Migration: the rows travel with the request to the other worker.
    let n = 60;
    let stream_body = json!({"model": "smollm2", "prompt_embeds": all_rows, "max_tokens": n,
        "temperature": 0, "ignore_eos": true, "stream": true, "return_token_ids": true});
    let url = format!("{}/v1/completions", c.url);
    let (events, done) = SseStream::open(&c.client, &url, &stream_body)
        .await?
        .collect()
        .await?;
    assert!(done, "reference stream did not finish");
    let want: Vec<u32> = events
        .iter()
        .flat_map(|e| token_ids(&e["choices"][0]))
        .collect();
    let (got, done) = c
        .stream_killing_its_worker("/v1/completions", &stream_body, 8)
        .await?;
    assert!(done, "no [DONE] after migration");
    assert_eq!(got, want, "the migrated request lost its rows");
    Ok(())
}

/// One prefill and one decode worker (stories260k, TCP transfer): a prompt given as rows is
/// prefilled remotely and gives the text prompt's tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prefill_worker_computes_the_rows_kv_for_a_decode_worker() -> anyhow::Result<()> {
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../services/ferrite/assets/stories260k"
    );
    let mut spec = ClusterSpec::mocker(2, "1");
    spec.worker_args = ["--engine", "cpu", "--model", model, "--kv-transport", "tcp"]
        .map(String::from)
        .to_vec();
    spec.per_worker_args = vec![
        vec!["--role".into(), "prefill".into()],
        ["--role", "decode", "--max-local-prefill-tokens", "0"]
            .map(String::from)
            .to_vec(),
    ];
    let c = Cluster::start(spec).await?;
    let opts = CpuOptions {
        num_kv_blocks: 4,
        block_size: 16,
        threads: 1,
        f32_activations: false,
    };
    let ex = CpuExecutor::load(Path::new(model), opts)?;
    let card = ferrite_model::ModelCard::load(Path::new(model))?;
    let prompt = card.tokenizer.encode(
        "The little dog ran to the park and saw a big red ball",
        true,
    )?;
    let body = |p: Value| {
        let mut b = json!({"model": "stories260k", "max_tokens": 24, "temperature": 0,
            "ignore_eos": true, "return_token_ids": true});
        if let (Some(o), Some(extra)) = (b.as_object_mut(), p.as_object()) {
            o.extend(extra.clone());
        }
        b
    };
    let (s, text) = post(
        &c,
        "/v1/completions",
        None,
        &body(json!({"prompt": prompt})),
    )
    .await;
    assert_eq!(s, 200, "{text}");
    let rows = b64_rows(&ex.token_embeddings(&prompt), ex.config().hidden);
    let (s, e) = post(
        &c,
        "/v1/completions",
        None,
        &body(json!({"prompt_embeds": rows})),
    )
    .await;
    assert_eq!(s, 200, "{e}");
    assert_eq!(token_ids(&e["choices"][0]), token_ids(&text["choices"][0]));
    assert_eq!(token_ids(&e["choices"][0]).len(), 24);
    let remote = metric(
        &c.worker_metrics(1).await?,
        "ferrite_worker_disagg_requests_total{prefill=\"remote\"}",
    );
    assert_eq!(remote, Some(2.0), "both requests were prefilled remotely");
    Ok(())
}
