//! `ferrite bench` against a real `ferrite serve --engine mocker` process: every
//! workload briefly, checking the JSON summary's counts and token totals.
//! Needs the binary: `cargo build -p ferrite` (or `FERRITE_BIN`).

use anyhow::{Context, bail};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn ferrite_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("FERRITE_BIN") {
        return Ok(PathBuf::from(p));
    }
    // target/<profile>/deps/<test>  →  target/<profile>/ferrite
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("ferrite"))
        .context("target dir")?;
    if !bin.exists() {
        bail!(
            "{} is not built: run `cargo build -p ferrite` first",
            bin.display()
        );
    }
    Ok(bin)
}

fn models_dir() -> PathBuf {
    std::env::var_os("FERRITE_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models"))
}

/// `ferrite serve` on a free port, SIGKILLed on drop.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start() -> anyhow::Result<Server> {
        let mut child = Command::new(ferrite_bin()?)
            .args([
                "serve",
                "--engine",
                "mocker",
                "--speedup",
                "100",
                "--port",
                "0",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("serving on") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .context("serve did not start")?;
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .context("no URL")?
            .to_string();
        Ok(Server { child, url })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `ferrite bench --url URL ARGS --json FILE`; returns the JSON.
fn bench(url: &str, dir: &Path, name: &str, args: &[&str]) -> anyhow::Result<Value> {
    let json = dir.join(format!("{name}.json"));
    let out = Command::new(ferrite_bin()?)
        .args(["bench", "--url", url, "--no-progress", "--json"])
        .arg(&json)
        .args(args)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "bench {name} failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(stdout.contains("TTFT"), "{stdout}");
    Ok(serde_json::from_slice(&std::fs::read(&json)?)?)
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(u64::MAX)
}

fn records(v: &Value) -> Vec<Value> {
    v["requests"].as_array().cloned().unwrap_or_default()
}

/// Every request succeeded, got exactly `max_tokens` (ignore_eos) and consistent times.
fn check_records(v: &Value, n: usize) {
    let s = &v["summary"];
    let rs = records(v);
    assert_eq!(rs.len(), n);
    assert_eq!(
        (
            u(&s["requests"]),
            u(&s["requests_ok"]),
            u(&s["requests_failed"])
        ),
        (n as u64, n as u64, 0)
    );
    assert_eq!(u(&s["usage_reported"]), n as u64);
    let mut completion = 0;
    let mut prompt = 0;
    for r in &rs {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(u(&r["completion_tokens"]), u(&r["max_tokens"]), "{r}");
        let chunks = u(&r["chunks"]);
        assert!(chunks >= 1);
        assert_eq!(
            r["itl_ms"].as_array().map(Vec::len),
            Some(chunks as usize - 1)
        );
        let (ttft, e2e) = (
            r["ttft_ms"].as_f64().unwrap_or(-1.0),
            r["e2e_ms"].as_f64().unwrap_or(-1.0),
        );
        assert!(ttft > 0.0 && ttft <= e2e, "{r}");
        completion += u(&r["completion_tokens"]);
        prompt += u(&r["prompt_tokens"]);
    }
    assert_eq!(u(&s["completion_tokens"]), completion);
    assert_eq!(u(&s["prompt_tokens"]), prompt);
    assert!(s["output_token_throughput"].as_f64().unwrap_or(0.0) > 0.0);
}

/// The server counts the prompt plus a BOS token; the bench built exactly `input_len`.
fn check_exact_prompt(r: &Value) {
    assert_eq!(u(&r["prompt_tokens"]), u(&r["input_len"]) + 1, "{r}");
}

#[test]
fn every_workload_against_the_mocker() -> anyhow::Result<()> {
    let srv = Server::start()?;
    let dir = tempfile::tempdir()?;
    let tok = models_dir().join("stories260k");
    let tok = tok.to_str().context("path")?;

    // Synthetic, closed loop, exact lengths.
    let v = bench(
        &srv.url,
        dir.path(),
        "synthetic",
        &[
            "--tokenizer",
            tok,
            "--input-len",
            "100",
            "--output-len",
            "12",
            "--num-requests",
            "12",
            "--concurrency",
            "4",
            "--slo-ttft-ms",
            "10000",
        ],
    )?;
    check_records(&v, 12);
    let s = &v["summary"];
    assert_eq!(
        (u(&s["completion_tokens"]), u(&s["prompt_tokens"])),
        (144, 12 * 101)
    );
    assert_eq!(s["exact_lengths"], true);
    assert_eq!(s["model"], "stories260k");
    assert_eq!(u(&s["goodput"]["requests_met"]), 12);
    records(&v).iter().for_each(check_exact_prompt);

    // Shared prefix, one at a time: after each group's first request, the prefix's
    // 129 tokens (BOS + 128) hit 8 full 16-token blocks in the cache.
    let v = bench(
        &srv.url,
        dir.path(),
        "shared",
        &[
            "--tokenizer",
            tok,
            "--workload",
            "shared-prefix",
            "--groups",
            "2",
            "--group-order",
            "interleaved",
            "--prefix-len",
            "128",
            "--suffix-len",
            "16",
            "--output-len",
            "4",
            "--num-requests",
            "10",
            "--concurrency",
            "1",
        ],
    )?;
    check_records(&v, 10);
    let rs = records(&v);
    rs.iter().for_each(check_exact_prompt);
    let groups: Vec<u64> = rs.iter().map(|r| u(&r["group"])).collect();
    assert_eq!(groups, vec![0, 1, 0, 1, 0, 1, 0, 1, 0, 1]);
    assert_eq!(u(&v["summary"]["cached_tokens"]), 8 * 128);
    let hit = v["summary"]["prefix_cache_hit_rate"]
        .as_f64()
        .unwrap_or(0.0);
    assert!((hit - 1024.0 / 1450.0).abs() < 1e-9, "{hit}");

    // Multi-turn: each turn's prompt holds the whole history (earlier prompts and replies).
    let v = bench(
        &srv.url,
        dir.path(),
        "multi",
        &[
            "--tokenizer",
            tok,
            "--workload",
            "multi-turn",
            "--conversations",
            "3",
            "--turns",
            "3",
            "--input-len",
            "20",
            "--output-len",
            "8",
            "--concurrency",
            "2",
        ],
    )?;
    check_records(&v, 9);
    let s = &v["summary"];
    assert_eq!(s["endpoint"], "chat");
    assert_eq!(
        (
            u(&s["ttft_first_turn_ms"]["count"]),
            u(&s["ttft_later_turns_ms"]["count"])
        ),
        (3, 6)
    );
    let all = records(&v);
    for c in 0..3 {
        let conv: Vec<&Value> = all.iter().filter(|r| u(&r["session"]) == c).collect();
        assert_eq!(
            conv.iter().map(|r| u(&r["turn"])).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        for w in conv.windows(2) {
            let (a, b) = (w[0], w[1]);
            // previous prompt + its 8 reply tokens + 20 new tokens (+ template tokens)
            assert!(
                u(&b["prompt_tokens"]) >= u(&a["prompt_tokens"]) + 8 + 20,
                "{a}\n{b}"
            );
        }
    }

    // Interleaved: every turn-t request starts after every turn-(t-1) request ended.
    let v = bench(
        &srv.url,
        dir.path(),
        "multi-interleaved",
        &[
            "--tokenizer",
            tok,
            "--workload",
            "multi-turn",
            "--turn-order",
            "interleaved",
            "--conversations",
            "4",
            "--turns",
            "3",
            "--input-len",
            "20",
            "--output-len",
            "8",
            "--concurrency",
            "2",
        ],
    )?;
    check_records(&v, 12);
    let all = records(&v);
    let f = |r: &Value| r.as_f64().unwrap_or(f64::NAN);
    for t in 1..3u64 {
        let prev_end = all
            .iter()
            .filter(|r| u(&r["turn"]) == t - 1)
            .map(|r| f(&r["start_s"]) + f(&r["e2e_ms"]) / 1e3)
            .fold(0.0, f64::max);
        let later: Vec<&Value> = all.iter().filter(|r| u(&r["turn"]) == t).collect();
        assert_eq!(later.len(), 4);
        for r in later {
            assert!(
                f(&r["start_s"]) >= prev_end - 1e-3,
                "turn {t} started early: {r}"
            );
        }
    }
    for c in 0..4 {
        let turns: Vec<u64> = all
            .iter()
            .filter(|r| u(&r["session"]) == c)
            .map(|r| u(&r["turn"]))
            .collect();
        assert_eq!(turns, vec![0, 1, 2]);
    }

    // Trace: 6 lines, shared hash ids, replayed at 10x.
    let trace = dir.path().join("trace.jsonl");
    let lines = [
        (0, 40, 5, "[1]"),
        (50, 70, 6, "[1, 2]"),
        (100, 64, 7, "[1, 2]"),
        (150, 90, 3, "[1, 2, 3]"),
        (200, 10, 4, "[9]"),
        (300, 33, 5, "[1, 7]"),
    ];
    let text: String = lines
        .iter()
        .map(|(t, i, o, h)| format!("{{\"timestamp\": {t}, \"input_length\": {i}, \"output_length\": {o}, \"hash_ids\": {h}}}\n"))
        .collect();
    std::fs::write(&trace, text)?;
    let start = Instant::now();
    let v = bench(
        &srv.url,
        dir.path(),
        "trace",
        &[
            "--tokenizer",
            tok,
            "--workload",
            "trace",
            "--trace",
            trace.to_str().context("path")?,
            "--trace-block-size",
            "32",
            "--trace-speedup",
            "10",
        ],
    )?;
    assert!(start.elapsed() >= Duration::from_millis(30));
    check_records(&v, 6);
    let rs = records(&v);
    rs.iter().for_each(check_exact_prompt);
    let inputs: Vec<u64> = rs.iter().map(|r| u(&r["input_len"])).collect();
    assert_eq!(inputs, vec![40, 70, 64, 90, 10, 33]);
    assert_eq!(u(&v["summary"]["completion_tokens"]), 30);
    assert!(
        rs[5]["start_s"].as_f64().unwrap_or(0.0) >= 0.029,
        "{}",
        rs[5]
    );
    // Block 1 (32 tokens) is shared by all but line 5: later lines hit the cache.
    assert!(u(&v["summary"]["cached_tokens"]) >= 32, "{}", v["summary"]);

    // Open loop, Poisson arrivals, no tokenizer (approximate lengths).
    let v = bench(
        &srv.url,
        dir.path(),
        "rate",
        &[
            "--rate",
            "40",
            "--num-requests",
            "10",
            "--input-len",
            "30",
            "--output-len",
            "5",
        ],
    )?;
    check_records(&v, 10);
    assert_eq!(v["summary"]["exact_lengths"], false);
    assert_eq!(u(&v["summary"]["completion_tokens"]), 50);
    Ok(())
}

#[test]
fn bad_flags_exit_with_status_2() -> anyhow::Result<()> {
    for args in [
        &["--rate", "0", "--model", "m"][..],
        &["--workload", "trace"],
        &[
            "--workload",
            "multi-turn",
            "--endpoint",
            "completions",
            "--model",
            "m",
        ],
        &["--len-spread", "3"],
        &["--turn-order", "interleaved", "--model", "m"],
    ] {
        let out = Command::new(ferrite_bin()?)
            .args(["bench", "--url", "http://127.0.0.1:9", "--no-progress"])
            .args(args)
            .output()?;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
