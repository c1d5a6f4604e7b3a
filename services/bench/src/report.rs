//! The summary of a run: what was sent, totals, latency distributions, throughput,
//! goodput; as text for people and as JSON (with every request) for tools.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::error::{BenchError, Result};
use crate::metrics::{Goodput, RequestRecord, Stats, Totals, goodput};
use crate::runner::{Endpoint, RunConfig, RunOutput};

/// The run's numbers.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub workload: String,
    pub url: String,
    pub model: String,
    pub endpoint: String,
    pub load: String,
    pub seed: u64,
    /// Prompt lengths are real token counts (a tokenizer was given); otherwise words.
    pub exact_lengths: bool,
    pub ignore_eos: bool,
    pub duration_s: f64,
    /// Successful requests per second.
    pub request_throughput: f64,
    /// Completion tokens of successful requests per second.
    pub output_token_throughput: f64,
    #[serde(flatten)]
    pub totals: Totals,
    /// Multi-turn: TTFT of first turns and of later turns (whose history may be cached).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttft_first_turn_ms: Option<Stats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttft_later_turns_ms: Option<Stats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goodput: Option<Goodput>,
}

/// A summary and the records it was made from.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub summary: Summary,
    pub requests: Vec<RequestRecord>,
}

impl Report {
    pub fn new(
        cfg: &RunConfig,
        workload: &str,
        exact: bool,
        multi_turn: bool,
        out: RunOutput,
    ) -> Self {
        let wall = out.wall.as_secs_f64();
        let totals = Totals::of(&out.records);
        let per_s = |x: f64| if wall > 0.0 { x / wall } else { 0.0 };
        let turns = |first: bool| {
            Stats::of(
                out.records
                    .iter()
                    .filter(|r| r.ok && (r.turn == 0) == first)
                    .filter_map(|r| r.ttft_ms),
            )
        };
        let summary = Summary {
            workload: workload.to_string(),
            url: cfg.url.clone(),
            model: out.model,
            endpoint: match out.endpoint {
                Endpoint::Chat => "chat",
                Endpoint::Completions => "completions",
            }
            .to_string(),
            load: out.load,
            seed: cfg.seed,
            exact_lengths: exact,
            ignore_eos: cfg.ignore_eos,
            duration_s: wall,
            request_throughput: per_s(totals.requests_ok as f64),
            output_token_throughput: per_s(totals.completion_tokens as f64),
            ttft_first_turn_ms: if multi_turn { turns(true) } else { None },
            ttft_later_turns_ms: if multi_turn { turns(false) } else { None },
            goodput: goodput(&out.records, cfg.slo_ttft_ms, cfg.slo_itl_ms, wall),
            totals,
        };
        Report {
            summary,
            requests: out.records,
        }
    }

    /// Writes `{summary, requests}` as pretty JSON.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self)?;
        std::fs::write(path, bytes).map_err(|e| BenchError::io(path, e))
    }

    /// The summary as a table for a terminal.
    pub fn to_text(&self) -> String {
        let s = &self.summary;
        let t = &s.totals;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "workload      {} ({} endpoint, {})",
            s.workload, s.endpoint, s.load
        );
        let _ = writeln!(o, "server        {}  model {}", s.url, s.model);
        if !s.exact_lengths {
            let _ = writeln!(
                o,
                "lengths       approximate: no --tokenizer, prompts are counted in words"
            );
        }
        let _ = writeln!(
            o,
            "requests      {} ok, {} failed in {:.2} s",
            t.requests_ok, t.requests_failed, s.duration_s
        );
        for (class, n) in &t.errors {
            let _ = writeln!(o, "  errors      {class}: {n}");
        }
        if let Some(e) = &t.first_error {
            let _ = writeln!(o, "  first error {e}");
        }
        let _ = writeln!(
            o,
            "tokens        {} prompt, {} completion (usage reported by {} of {})",
            t.prompt_tokens, t.completion_tokens, t.usage_reported, t.requests_ok
        );
        if let (Some(c), Some(r)) = (t.cached_tokens, t.prefix_cache_hit_rate) {
            let _ = writeln!(
                o,
                "prefix cache  {c} cached prompt tokens, hit rate {:.1} %",
                r * 100.0
            );
        }
        let _ = writeln!(
            o,
            "throughput    {:.2} requests/s, {:.1} output tokens/s",
            s.request_throughput, s.output_token_throughput
        );
        let _ = writeln!(
            o,
            "{:<22}{:>10}{:>10}{:>10}{:>10}",
            "(ms)", "mean", "p50", "p90", "p99"
        );
        let rows = [
            ("TTFT", &t.ttft_ms),
            ("TTFT turn 1", &s.ttft_first_turn_ms),
            ("TTFT turns 2+", &s.ttft_later_turns_ms),
            ("ITL", &t.itl_ms),
            ("E2E", &t.e2e_ms),
        ];
        for (name, st) in rows {
            if let Some(x) = st {
                let _ = writeln!(
                    o,
                    "{name:<22}{:>10.2}{:>10.2}{:>10.2}{:>10.2}",
                    x.mean, x.p50, x.p90, x.p99
                );
            }
        }
        if let Some(g) = &s.goodput {
            let slo = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x} ms"));
            let _ = writeln!(
                o,
                "goodput       {:.2} requests/s ({} of {} ok requests, {:.1} %) under TTFT ≤ {}, mean ITL ≤ {}",
                g.requests_per_s,
                g.requests_met,
                t.requests_ok,
                g.fraction * 100.0,
                slo(g.slo_ttft_ms),
                slo(g.slo_itl_ms)
            );
        }
        o
    }
}
