//! The timing model of the simulated engine (ARCHITECTURE.md §6, Dynamo's H100 fit).

use std::time::Duration;

/// Milliseconds an H100 spends prefilling `t` new tokens in one step.
pub fn prefill_ms(t: usize) -> f64 {
    if t == 0 {
        return 0.0;
    }
    let t = t as f64;
    4.21e-7 * t * t + 0.0152 * t + 16.5
}

/// Milliseconds of one decode step at KV usage fraction `u` (0..=1).
pub fn decode_ms(u: f64) -> f64 {
    let u = u.clamp(0.0, 1.0);
    (-25.74 * u * u + 54.01 * u + 5.74).max(0.0)
}

/// Simulated wall time of one step, divided by `speedup`.
pub fn step_duration(
    prefill_tokens: usize,
    decode_seqs: usize,
    kv_usage: f64,
    speedup: f64,
) -> Duration {
    let mut ms = prefill_ms(prefill_tokens);
    if decode_seqs > 0 {
        ms += decode_ms(kv_usage);
    }
    let speedup = if speedup > 0.0 { speedup } else { 1.0 };
    Duration::from_secs_f64(ms / 1000.0 / speedup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_matches_the_published_fit() {
        assert!((prefill_ms(1000) - (0.421 + 15.2 + 16.5)).abs() < 1e-9);
        assert!((decode_ms(0.0) - 5.74).abs() < 1e-9);
        assert!((decode_ms(0.5) - (-6.435 + 27.005 + 5.74)).abs() < 1e-9);
        assert_eq!(prefill_ms(0), 0.0);
        let d = step_duration(1000, 0, 0.0, 10.0);
        assert!((d.as_secs_f64() * 1000.0 - 3.2121).abs() < 1e-3);
    }
}
