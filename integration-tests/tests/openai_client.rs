//! OpenAI API parity with real clients: `ferrite serve` with SmolLM2-135M on the CPU
//! engine, driven by reqwest, curl and the official `openai` Python package.
//!
//! The Python test builds a venv with `openai` under the target folder on first use
//! (needs python3 with venv and pip, and the package index).

use ferrite_integration_tests::sse::SseStream;
use ferrite_integration_tests::{Proc, serve, smollm2_gguf};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const MODEL: &str = "smollm2-135m-instruct";

fn smollm2() -> anyhow::Result<(Proc, String)> {
    let gguf = smollm2_gguf()?;
    serve(
        &[
            "--model",
            &gguf,
            "--served-model-name",
            MODEL,
            "--engine",
            "cpu",
        ],
        Duration::from_secs(120),
    )
}

async fn post(c: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
    let r = c.post(url).json(body).send().await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await?))
}

async fn ok(c: &reqwest::Client, url: &str, body: Value) -> anyhow::Result<Value> {
    let (s, v) = post(c, url, &body).await?;
    anyhow::ensure!(s == 200, "HTTP {s}: {v}");
    Ok(v)
}

fn param(v: &Value) -> Option<&str> {
    v["error"]["param"].as_str()
}

fn chat_body(extra: Value) -> Value {
    let mut b = json!({"model": MODEL, "messages": [{"role": "user", "content": "Name three colours."}],
        "temperature": 0, "max_tokens": 8});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        b[k] = v;
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwest_client_sees_openai_values() -> anyhow::Result<()> {
    let (_p, url) = smollm2()?;
    let c = reqwest::Client::new();
    let chat = format!("{url}/v1/chat/completions");
    let comp = format!("{url}/v1/completions");

    // n greedy choices: identical; usage exact.
    let v = ok(
        &c,
        &chat,
        chat_body(json!({"n": 3, "return_token_ids": true})),
    )
    .await?;
    let ch = v["choices"].as_array().cloned().unwrap_or_default();
    assert_eq!(ch.len(), 3, "{v}");
    assert!(ch.iter().all(|x| x["message"] == ch[0]["message"]), "{v}");
    let tokens: usize = ch
        .iter()
        .map(|x| x["token_ids"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(v["usage"]["completion_tokens"], json!(tokens));
    let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
    assert_eq!(v["usage"]["total_tokens"], json!(prompt + tokens as u64));
    assert_eq!(
        v["prompt_token_ids"].as_array().map(Vec::len),
        Some(prompt as usize)
    );

    // Chat logprobs: sorted, the chosen (greedy) token first among them.
    let v = ok(
        &c,
        &chat,
        chat_body(json!({"logprobs": true, "top_logprobs": 5})),
    )
    .await?;
    let content = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(json!(content.len()), v["usage"]["completion_tokens"]);
    for e in &content {
        let tops: Vec<f64> = e["top_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["logprob"].as_f64().unwrap())
            .collect();
        assert_eq!(tops.len(), 5);
        assert!(tops.windows(2).all(|w| w[0] >= w[1]), "unsorted {tops:?}");
        assert_eq!(e["top_logprobs"][0]["token"], e["token"]);
        assert!((tops[0] - e["logprob"].as_f64().unwrap()).abs() < 1e-4);
    }
    let (s, e) = post(
        &c,
        &chat,
        &chat_body(json!({"logprobs": true, "top_logprobs": 21})),
    )
    .await?;
    assert_eq!((s, param(&e)), (400, Some("top_logprobs")), "{e}");

    // Completions logprobs: four parallel lists, offsets into the text.
    let body = json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 12,
        "temperature": 0, "logprobs": 3});
    let v = ok(&c, &comp, body.clone()).await?;
    let lp = &v["choices"][0]["logprobs"];
    let n = v["usage"]["completion_tokens"].as_u64().unwrap_or(0) as usize;
    for k in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
        assert_eq!(lp[k].as_array().map(Vec::len), Some(n), "{k}: {lp}");
    }
    let offs: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert_eq!(offs[0], 0);
    assert!(offs.windows(2).all(|w| w[0] <= w[1]), "{offs:?}");
    // Offsets index the returned text: each at a character boundary, the last inside it.
    let text = v["choices"][0]["text"].as_str().unwrap_or_default();
    assert!(
        offs.iter().all(|&o| text.is_char_boundary(o as usize)) && offs[n - 1] < text.len() as u64,
        "{offs:?} in {text:?}"
    );
    assert!(
        lp["top_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t.as_object().is_some_and(|m| m.len() <= 3 && !m.is_empty()))
    );
    let mut six = body.clone();
    six["logprobs"] = json!(6);
    assert_eq!(param(&post(&c, &comp, &six).await?.1), Some("logprobs"));
    let mut echo_lp = body.clone();
    echo_lp["echo"] = json!(true);
    let (s, e) = post(&c, &comp, &echo_lp).await?;
    assert_eq!((s, param(&e)), (400, Some("echo")), "{e}");

    // Stop strings, across token boundaries: excluded, or included on request.
    let whole = v["choices"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let stop: String = whole.chars().skip(whole.len() / 3).take(4).collect();
    let cut = &whole[..whole.find(&stop).unwrap()];
    let mut b = json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 12,
        "temperature": 0, "stop": [stop.clone(), "zzzz"]});
    let r = ok(&c, &comp, b.clone()).await?;
    assert_eq!(
        r["choices"][0]["text"],
        json!(cut),
        "stop {stop:?} in {whole:?}"
    );
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    b["include_stop_str_in_output"] = json!(true);
    let r = ok(&c, &comp, b.clone()).await?;
    assert_eq!(r["choices"][0]["text"], json!(format!("{cut}{stop}")));
    b["stop"] = json!((0..33).map(|i| format!("s{i}")).collect::<Vec<_>>());
    assert_eq!(param(&post(&c, &comp, &b).await?.1), Some("stop"));

    // Echo: the prompt in front, streamed and not.
    let e = ok(&c, &comp, json!({"model": MODEL, "prompt": "Hello there", "max_tokens": 3, "temperature": 0, "echo": true})).await?;
    let text = e["choices"][0]["text"].as_str().unwrap_or_default();
    assert!(
        text.starts_with("Hello there") && text.len() > "Hello there".len(),
        "{text}"
    );
    assert_eq!(e["choices"][0]["finish_reason"], "length");
    let body = json!({"model": MODEL, "prompt": "Hello there", "max_tokens": 3, "temperature": 0, "echo": true, "stream": true});
    let (events, done) = SseStream::open(&c, &comp, &body).await?.collect().await?;
    assert!(done);
    let streamed: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, text);

    // Streaming chat: text equals the full answer; usage counts the tokens streamed.
    let full = ok(&c, &chat, chat_body(json!({"max_tokens": 10}))).await?;
    let body = chat_body(
        json!({"max_tokens": 10, "stream": true, "return_token_ids": true,
        "stream_options": {"include_usage": true}}),
    );
    let (events, done) = SseStream::open(&c, &chat, &body).await?.collect().await?;
    assert!(done);
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(json!(text), full["choices"][0]["message"]["content"]);
    let streamed: usize = events
        .iter()
        .filter_map(|e| e["choices"][0]["token_ids"].as_array())
        .map(Vec::len)
        .sum();
    let usage = &events.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], json!(streamed));
    assert_eq!(usage, &full["usage"]);
    let finish: Vec<&Value> = events
        .iter()
        .map(|e| &e["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, vec![&full["choices"][0]["finish_reason"]]);

    // A repeated prompt is served from the prefix cache.
    let long = "Tell me a long story about a dragon who lived in a castle by the sea. ".repeat(4);
    let body =
        json!({"model": MODEL, "messages": [{"role": "user", "content": long}], "max_tokens": 2});
    let first = ok(&c, &chat, body.clone()).await?;
    let again = ok(&c, &chat, body).await?;
    let cached = again["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0);
    assert!(cached >= 16, "cached {cached}: {again}");
    assert!(cached <= first["usage"]["prompt_tokens"].as_u64().unwrap_or(0));

    // Validation: n, unknown fields, a prompt over the context, a body over the limit.
    let (s, e) = post(&c, &chat, &chat_body(json!({"n": 129}))).await?;
    assert_eq!((s, param(&e)), (400, Some("n")));
    let (s, e) = post(
        &c,
        &chat,
        &chat_body(json!({"store": true, "metadata": {}})),
    )
    .await?;
    assert_eq!((s, param(&e)), (400, Some("metadata")), "{e}");
    let models: Value = c
        .get(format!("{url}/v1/models"))
        .send()
        .await?
        .json()
        .await?;
    let ctx = models["data"][0]["max_model_len"].as_u64().unwrap_or(0);
    let (s, e) = post(
        &c,
        &comp,
        &json!({"model": MODEL, "prompt": vec![1; ctx as usize + 5]}),
    )
    .await?;
    assert_eq!((s, param(&e)), (400, Some("prompt")));
    let msg = e["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&format!("{ctx} tokens")) && msg.contains(&format!("{} tokens", ctx + 5)),
        "{msg}"
    );
    let huge = format!(
        "{{\"model\":\"{MODEL}\",\"prompt\":\"{}\"}}",
        "a".repeat(33 << 20)
    );
    let r = c
        .post(&comp)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 413);
    let e: Value = r.json().await?;
    assert_eq!(e["error"]["code"], 413);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_streams_and_answers() -> anyhow::Result<()> {
    let (_p, url) = smollm2()?;
    let curl = |body: Value| -> anyhow::Result<String> {
        let out = Command::new("curl")
            .args(["-sS", "-N", "-H", "content-type: application/json", "-d"])
            .arg(body.to_string())
            .arg(format!("{url}/v1/chat/completions"))
            .output()
            .map_err(|e| anyhow::anyhow!("curl is needed for this test: {e}"))?;
        anyhow::ensure!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    };
    let full: Value = serde_json::from_str(&curl(chat_body(json!({"n": 2})))?)?;
    assert_eq!(full["choices"].as_array().map(Vec::len), Some(2));
    assert_eq!(full["choices"][0]["message"], full["choices"][1]["message"]);
    let sse = curl(chat_body(
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    ))?;
    let events: Vec<&str> = sse.split("\n\n").filter(|e| !e.trim().is_empty()).collect();
    assert_eq!(events.last().copied(), Some("data: [DONE]"));
    let mut text = String::new();
    let mut usage = Value::Null;
    // SSE comments (`: keep-alive`) carry no data.
    for e in events[..events.len() - 1]
        .iter()
        .filter(|e| !e.starts_with(':'))
    {
        let v: Value = serde_json::from_str(e.strip_prefix("data: ").unwrap_or(e))?;
        text.push_str(
            v["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or_default(),
        );
        if !v["usage"].is_null() {
            usage = v["usage"].clone();
        }
    }
    assert_eq!(json!(text), full["choices"][0]["message"]["content"]);
    assert_eq!(
        usage["completion_tokens"].as_u64().unwrap_or(0) * 2,
        full["usage"]["completion_tokens"].as_u64().unwrap_or(0)
    );
    Ok(())
}

/// A venv with the `openai` package under the target folder (created once).
fn openai_python() -> anyhow::Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let venv = target.join("openai-venv");
    let py = venv.join("bin/python");
    let has = |py: &PathBuf| {
        Command::new(py)
            .args(["-c", "import openai"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if py.exists() && has(&py) {
        return Ok(py);
    }
    let st = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().map_err(|e| {
        anyhow::anyhow!("python3 is needed for the openai client test (install python3 and python3-venv): {e}")
    })?;
    anyhow::ensure!(
        st.success(),
        "`python3 -m venv {}` failed: install python3-venv",
        venv.display()
    );
    let st = Command::new(&py)
        .args(["-m", "pip", "install", "-q", "openai"])
        .status()?;
    anyhow::ensure!(
        st.success() && has(&py),
        "`pip install openai` into {} failed (pip and the package index are needed)",
        venv.display()
    );
    Ok(py)
}

fn run_python(url: &str, extra: &[&str]) -> anyhow::Result<()> {
    let py = openai_python()?;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/openai_client.py");
    let out = Command::new(py)
        .arg(script)
        .args([url, MODEL])
        .args(extra)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(out.status.success(), "openai client script failed:\n{text}");
    assert!(text.contains("all checks passed"), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_python_client() -> anyhow::Result<()> {
    let (_p, url) = smollm2()?;
    tokio::task::spawn_blocking(move || run_python(&url, &[])).await?
}

/// response_format json_schema and forced tool calls: the output must parse and validate.
/// Needs the worker's structured-output processor (`engine-ffi/structured`, installed by
/// `services/ferrite/src/engines.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_output_and_forced_tool_calls() -> anyhow::Result<()> {
    let (_p, url) = smollm2()?;
    let c = reqwest::Client::new();
    let chat = format!("{url}/v1/chat/completions");
    // Bounded strings: a 135M model may otherwise write a name until `max_tokens`.
    let schema = json!({"type": "object", "properties": {"name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 150}},
        "required": ["name", "age"], "additionalProperties": false});
    let v = ok(&c, &chat, chat_body(json!({"max_tokens": 100, "response_format":
        {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": true}}}))).await?;
    let content = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    let out: Value = serde_json::from_str(content)
        .map_err(|e| anyhow::anyhow!("not JSON ({e}): {content:?} in {v}"))?;
    assert!(out["name"].is_string() && out["age"].is_i64(), "{out}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters":
        {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}}, "required": ["city"]}}}]);
    for choice in [
        json!("required"),
        json!({"type": "function", "function": {"name": "get_weather"}}),
    ] {
        let v = ok(
            &c,
            &chat,
            chat_body(json!({"max_tokens": 100, "tools": tools, "tool_choice": choice})),
        )
        .await?;
        let call = &v["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "get_weather", "{v}");
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap_or_default())
                .map_err(|e| anyhow::anyhow!("arguments not JSON ({e}): {v}"))?;
        assert!(args["city"].is_string(), "{args}");
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    }
    // `auto`: the model's own Hermes-style call (forced here by a regex so a 135M model
    // writes one) is parsed out of the stream into `delta.tool_calls`: id and name first,
    // then the arguments in fragments, before the last chunk.
    let body = chat_body(json!({"max_tokens": 60, "tools": tools, "stream": true,
        "guided_regex": r#"<tool_call>\{"name": "get_weather", "arguments": \{"city": "Paris"\}\}</tool_call>"#}));
    let (events, done) = SseStream::open(&c, &chat, &body).await?.collect().await?;
    assert!(done);
    let content: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "");
    let last = events
        .iter()
        .rfind(|e| !e["choices"][0]["finish_reason"].is_null())
        .cloned()
        .unwrap_or_default();
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls", "{last}");
    let deltas: Vec<(usize, Value)> = events
        .iter()
        .enumerate()
        .flat_map(|(i, e)| {
            let calls = e["choices"][0]["delta"]["tool_calls"].as_array().cloned();
            calls.into_iter().flatten().map(move |c| (i, c))
        })
        .collect();
    let (first_at, first) = deltas.first().cloned().unwrap_or_default();
    assert_eq!(first["index"], 0);
    assert_eq!(first["type"], "function");
    assert_eq!(first["function"]["name"], "get_weather");
    assert!(
        first["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("call_"))
    );
    assert!(
        deltas
            .iter()
            .skip(1)
            .all(|(_, d)| d["index"] == 0 && d.get("id").is_none())
    );
    let args: String = deltas
        .iter()
        .filter_map(|(_, d)| d["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, r#"{"city":"Paris"}"#);
    assert!(
        deltas.len() > 2,
        "the arguments came in one piece: {deltas:?}"
    );
    let last_at = events
        .iter()
        .rposition(|e| !e["choices"][0]["finish_reason"].is_null())
        .unwrap_or(0);
    assert!(
        first_at < last_at,
        "the call's name came only with the last chunk"
    );
    let url2 = url.clone();
    tokio::task::spawn_blocking(move || run_python(&url2, &["--structured"])).await?
}

/// The mocker generates no real text: structured output and forced tool calls are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mocker_refuses_structured_output() -> anyhow::Result<()> {
    let (_p, url) = serve(
        &["--engine", "mocker", "--speedup", "100"],
        Duration::from_secs(30),
    )?;
    let c = reqwest::Client::new();
    let chat = format!("{url}/v1/chat/completions");
    let base = json!({"model": "stories260k", "messages": [{"role": "user", "content": "Hi"}]});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    for (field, body) in [
        ("guided_regex", with("guided_regex", json!("[a-z]+"))),
        (
            "response_format",
            with("response_format", json!({"type": "json_object"})),
        ),
        ("tool_choice", {
            let mut b = with(
                "tools",
                json!([{"type": "function", "function": {"name": "f"}}]),
            );
            b["tool_choice"] = json!("required");
            b
        }),
    ] {
        let (s, e) = post(&c, &chat, &body).await?;
        assert_eq!((s, param(&e)), (400, Some(field)), "{e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("mocker"),
            "{e}"
        );
    }
    // Malformed or several constraints: 400 naming the field, whatever the engine.
    let (s, e) = post(&c, &chat, &with("guided_regex", json!("(a"))).await?;
    assert_eq!((s, param(&e)), (400, Some("guided_regex")));
    let mut two = with("guided_regex", json!("a"));
    two["guided_choice"] = json!(["a"]);
    let (s, e) = post(&c, &chat, &two).await?;
    assert_eq!((s, param(&e)), (400, Some("guided_choice")), "{e}");
    // Tools with `auto` are fine on the mocker (nothing to force).
    let mut auto = with(
        "tools",
        json!([{"type": "function", "function": {"name": "f"}}]),
    );
    auto["max_tokens"] = json!(3);
    let (s, v) = post(&c, &chat, &auto).await?;
    assert_eq!(s, 200, "{v}");
    Ok(())
}
