//! Per-request records and the statistics over them: percentiles, throughput,
//! prefix-cache hit rate, goodput under SLOs.

use std::collections::BTreeMap;

use serde::Serialize;

/// One request as the client saw it (times in milliseconds).
#[derive(Clone, Debug, Default, Serialize)]
pub struct RequestRecord {
    /// Order of issue.
    pub index: usize,
    pub session: usize,
    /// 0 for single requests; the turn number in a conversation.
    pub turn: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<usize>,
    /// Seconds from the run's start to sending.
    pub start_s: f64,
    pub ttft_ms: Option<f64>,
    pub e2e_ms: f64,
    pub itl_ms: Vec<f64>,
    /// Prompt length the workload built (tokens of the new text; words without a tokenizer).
    pub input_len: usize,
    /// `max_tokens` asked for.
    pub max_tokens: usize,
    /// `usage.prompt_tokens`, when reported.
    pub prompt_tokens: Option<u64>,
    /// `usage.completion_tokens`, or chunks counted when usage is absent.
    pub completion_tokens: u64,
    pub usage_reported: bool,
    pub cached_tokens: Option<u64>,
    pub chunks: u64,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RequestRecord {
    /// Mean gap between chunks (time per output chunk after the first).
    pub fn mean_itl_ms(&self) -> Option<f64> {
        (!self.itl_ms.is_empty())
            .then(|| self.itl_ms.iter().sum::<f64>() / self.itl_ms.len() as f64)
    }

    /// `http_<status>`, `stream`, or `transport`: the error's class for counting.
    pub fn error_class(&self) -> Option<String> {
        self.error.as_ref()?;
        Some(match self.status {
            Some(s) if !(200..300).contains(&s) => format!("http_{s}"),
            Some(_) => "stream".to_string(),
            None => "transport".to_string(),
        })
    }
}

/// The `p`-th percentile (0..=100) of sorted values, interpolating linearly between
/// closest ranks (numpy's default).
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0).clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    let frac = rank - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// Mean and percentiles of a sample.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Stats {
    pub count: usize,
    pub mean: f64,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Stats {
    /// `None` for an empty sample.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Stats> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let p = |q| percentile(&v, q);
        Some(Stats {
            count: v.len(),
            mean: v.iter().sum::<f64>() / v.len().max(1) as f64,
            min: *v.first()?,
            p50: p(50.0)?,
            p90: p(90.0)?,
            p99: p(99.0)?,
            max: *v.last()?,
        })
    }
}

/// Requests that met the SLOs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Goodput {
    pub slo_ttft_ms: Option<f64>,
    /// Compared with each request's mean inter-chunk gap.
    pub slo_itl_ms: Option<f64>,
    pub requests_met: usize,
    pub requests_per_s: f64,
    /// Share of successful requests that met the SLOs.
    pub fraction: f64,
}

/// Goodput over `wall_s` seconds; `None` when no SLO is set.
pub fn goodput(
    records: &[RequestRecord],
    slo_ttft_ms: Option<f64>,
    slo_itl_ms: Option<f64>,
    wall_s: f64,
) -> Option<Goodput> {
    if slo_ttft_ms.is_none() && slo_itl_ms.is_none() {
        return None;
    }
    let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.ok).collect();
    let met = ok
        .iter()
        .filter(|r| {
            let ttft_ok = slo_ttft_ms.is_none_or(|s| r.ttft_ms.is_some_and(|t| t <= s));
            let itl_ok = slo_itl_ms.is_none_or(|s| r.mean_itl_ms().is_none_or(|t| t <= s));
            ttft_ok && itl_ok
        })
        .count();
    Some(Goodput {
        slo_ttft_ms,
        slo_itl_ms,
        requests_met: met,
        requests_per_s: if wall_s > 0.0 {
            met as f64 / wall_s
        } else {
            0.0
        },
        fraction: met as f64 / ok.len().max(1) as f64,
    })
}

/// Totals and distributions over a run.
#[derive(Clone, Debug, Serialize)]
pub struct Totals {
    pub requests: usize,
    pub requests_ok: usize,
    pub requests_failed: usize,
    /// Failed requests by class (`http_503`, `stream`, `transport`).
    pub errors: BTreeMap<String, usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Requests whose stream carried `usage`.
    pub usage_reported: usize,
    /// Sum of `usage.prompt_tokens` (successful requests that reported it).
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Sum of cached prompt tokens, when the server reports them.
    pub cached_tokens: Option<u64>,
    /// cached / prompt tokens over requests that reported cached tokens.
    pub prefix_cache_hit_rate: Option<f64>,
    pub ttft_ms: Option<Stats>,
    pub itl_ms: Option<Stats>,
    pub e2e_ms: Option<Stats>,
}

impl Totals {
    pub fn of(records: &[RequestRecord]) -> Totals {
        let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.ok).collect();
        let mut errors = BTreeMap::new();
        for c in records.iter().filter_map(RequestRecord::error_class) {
            *errors.entry(c).or_insert(0) += 1;
        }
        let cached: Vec<&&RequestRecord> =
            ok.iter().filter(|r| r.cached_tokens.is_some()).collect();
        let cached_sum: u64 = cached.iter().filter_map(|r| r.cached_tokens).sum();
        let cached_prompt: u64 = cached.iter().filter_map(|r| r.prompt_tokens).sum();
        Totals {
            requests: records.len(),
            requests_ok: ok.len(),
            requests_failed: records.len() - ok.len(),
            errors,
            first_error: records.iter().find_map(|r| r.error.clone()),
            usage_reported: ok.iter().filter(|r| r.usage_reported).count(),
            prompt_tokens: ok.iter().filter_map(|r| r.prompt_tokens).sum(),
            completion_tokens: ok.iter().map(|r| r.completion_tokens).sum(),
            cached_tokens: (!cached.is_empty()).then_some(cached_sum),
            prefix_cache_hit_rate: (cached_prompt > 0)
                .then(|| cached_sum as f64 / cached_prompt as f64),
            ttft_ms: Stats::of(ok.iter().filter_map(|r| r.ttft_ms)),
            itl_ms: Stats::of(ok.iter().flat_map(|r| r.itl_ms.iter().copied())),
            e2e_ms: Stats::of(ok.iter().map(|r| r.e2e_ms)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ttft: f64, itl: &[f64], ok: bool) -> RequestRecord {
        RequestRecord {
            ttft_ms: Some(ttft),
            itl_ms: itl.to_vec(),
            ok,
            e2e_ms: ttft + itl.iter().sum::<f64>(),
            ..Default::default()
        }
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(5.5));
        assert_eq!(percentile(&v, 90.0), Some(9.1));
        assert!((percentile(&v, 99.0).unwrap() - 9.91).abs() < 1e-12);
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 100.0), Some(10.0));
        assert_eq!(percentile(&[4.0], 99.0), Some(4.0));
        assert_eq!(percentile(&[], 50.0), None);
        let s = Stats::of([3.0, 1.0, 2.0, 4.0, f64::NAN]).unwrap();
        assert_eq!(
            (s.count, s.mean, s.min, s.max, s.p50),
            (4, 2.5, 1.0, 4.0, 2.5)
        );
        assert!(Stats::of([]).is_none());
    }

    #[test]
    fn goodput_counts_requests_meeting_both_slos() {
        let rs = vec![
            rec(50.0, &[10.0, 12.0], true), // meets both
            rec(150.0, &[10.0], true),      // TTFT too slow
            rec(80.0, &[30.0, 40.0], true), // ITL mean 35 too slow
            rec(90.0, &[], true),           // one chunk: no ITL, meets
            rec(10.0, &[1.0], false),       // failed: never counts
        ];
        let g = goodput(&rs, Some(100.0), Some(20.0), 2.0).unwrap();
        assert_eq!(g.requests_met, 2);
        assert_eq!(g.requests_per_s, 1.0);
        assert_eq!(g.fraction, 0.5);
        let g = goodput(&rs, Some(100.0), None, 2.0).unwrap();
        assert_eq!(g.requests_met, 3);
        let g = goodput(&rs, None, Some(20.0), 1.0).unwrap();
        assert_eq!(g.requests_met, 3);
        assert!(goodput(&rs, None, None, 1.0).is_none());
    }

    #[test]
    fn totals_sum_tokens_hit_rate_and_errors() {
        let mut a = rec(10.0, &[1.0, 3.0], true);
        a.prompt_tokens = Some(100);
        a.completion_tokens = 3;
        a.cached_tokens = Some(64);
        let mut b = rec(20.0, &[2.0], true);
        b.prompt_tokens = Some(100);
        b.completion_tokens = 2;
        b.cached_tokens = Some(16);
        let mut c = rec(0.0, &[], false);
        c.status = Some(503);
        c.error = Some("HTTP 503: busy".into());
        let mut d = rec(0.0, &[], false);
        d.error = Some("connection refused".into());
        let t = Totals::of(&[a, b, c, d]);
        assert_eq!((t.requests, t.requests_ok, t.requests_failed), (4, 2, 2));
        assert_eq!((t.prompt_tokens, t.completion_tokens), (200, 5));
        assert_eq!(t.cached_tokens, Some(80));
        assert_eq!(t.prefix_cache_hit_rate, Some(0.4));
        assert_eq!(t.errors.get("http_503"), Some(&1));
        assert_eq!(t.errors.get("transport"), Some(&1));
        assert_eq!(t.first_error.as_deref(), Some("HTTP 503: busy"));
        let itl = t.itl_ms.unwrap();
        assert_eq!((itl.count, itl.mean), (3, 2.0));
        assert_eq!(t.ttft_ms.unwrap().p50, 15.0);
    }
}
