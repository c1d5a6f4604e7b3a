use super::*;
use crate::logits::{AllowedTokens, register_logits_processor};
use ferrite_protocol::SamplingParams;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

fn rng() -> (StdRng, u64) {
    let s: u64 = rand::random();
    (StdRng::seed_from_u64(s), s)
}

fn random_logits(r: &mut StdRng, v: usize, scale: f32) -> Vec<f32> {
    (0..v)
        .map(|_| {
            // Sum of uniforms: roughly normal, spread `scale`.
            let x: f32 = (0..4).map(|_| r.random::<f32>() - 0.5).sum();
            x * scale * 1.7
        })
        .collect()
}

fn ctx_with(p: SamplingParams) -> SamplingContext {
    SamplingContext {
        params: Arc::new(p),
        ..Default::default()
    }
}

fn softmax(l: &[f32], t: f32) -> Vec<f64> {
    let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = l.iter().map(|&x| f64::from((x - m) / t).exp()).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|x| x / z).collect()
}

fn ref_argmax(l: &[f32]) -> usize {
    let mut b = 0;
    for i in 1..l.len() {
        if l[i] > l[b] {
            b = i;
        }
    }
    b
}

#[test]
fn greedy_is_argmax_lowest_id_on_ties() {
    let (mut r, seed) = rng();
    for _ in 0..20 {
        let l = random_logits(&mut r, 1000, 3.0);
        let (t, lp) = sample(&mut l.clone(), &ctx_with(SamplingParams::default()), 0);
        assert_eq!(t as usize, ref_argmax(&l), "seed {seed}");
        assert!(lp.is_none());
    }
    let mut l = vec![1.0, 5.0, 2.0, 5.0, 5.0];
    assert_eq!(sample(&mut l, &ctx_with(SamplingParams::default()), 0).0, 1);
}

fn params(t: f32, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: t,
        seed: Some(seed),
        ..Default::default()
    }
}

#[test]
fn seed_reproducible_and_seeds_differ() {
    let (mut r, s) = rng();
    let l = random_logits(&mut r, 1000, 1.0);
    let run = |seed: u64| -> Vec<u32> {
        (0..64)
            .map(|pos| sample(&mut l.clone(), &ctx_with(params(1.0, seed)), pos).0)
            .collect()
    };
    let a = run(7);
    // Interleave other requests (different params, logprobs) to disturb the scratch.
    for pos in 0..10 {
        let mut p = params(0.8, 99);
        p.logprobs = Some(5);
        p.top_k = 3;
        sample(&mut l.clone(), &ctx_with(p), pos);
    }
    let b = run(7);
    assert_eq!(a, b, "rng seed {s}");
    let c = run(8);
    assert_ne!(a, c, "rng seed {s}");
    // A position's draw depends on (seed, position) only, not on the order of calls.
    let single = sample(&mut l.clone(), &ctx_with(params(1.0, 7)), 33).0;
    assert_eq!(single, a[33]);
    // Positions differ among themselves.
    assert!(a.iter().any(|&t| t != a[0]));
}

#[test]
fn top_k_one_and_tiny_top_p_equal_greedy() {
    let (mut r, s) = rng();
    for seed in 0..30 {
        let l = random_logits(&mut r, 5000, 2.0);
        let g = ref_argmax(&l);
        let mut p = params(1.5, seed);
        p.top_k = 1;
        assert_eq!(
            sample(&mut l.clone(), &ctx_with(p), 3).0 as usize,
            g,
            "rng {s}"
        );
        let mut p = params(1.5, seed);
        p.top_p = 1e-6;
        assert_eq!(
            sample(&mut l.clone(), &ctx_with(p), 3).0 as usize,
            g,
            "rng {s}"
        );
        let mut p = params(1.5, seed);
        p.top_p = 0.0;
        assert_eq!(
            sample(&mut l.clone(), &ctx_with(p), 3).0 as usize,
            g,
            "rng {s}"
        );
        // Temperatures below 1e-5 are greedy.
        let p = params(1e-7, seed);
        assert_eq!(
            sample(&mut l.clone(), &ctx_with(p), 3).0 as usize,
            g,
            "rng {s}"
        );
        let mut p = params(1.5, seed);
        p.top_k = 40;
        p.top_p = 1e-6;
        assert_eq!(
            sample(&mut l.clone(), &ctx_with(p), 3).0 as usize,
            g,
            "rng {s}"
        );
    }
}

/// Chi-square statistic of `counts` against probabilities `p` (cells with p > 0).
fn chi2(counts: &[u64], p: &[f64], n: u64) -> f64 {
    counts
        .iter()
        .zip(p)
        .filter(|&(_, &pi)| pi > 0.0)
        .map(|(&c, &pi)| {
            let e = pi * n as f64;
            (c as f64 - e).powi(2) / e
        })
        .sum()
}

fn histogram(l: &[f32], p: &SamplingParams, n: u64) -> Vec<u64> {
    let mut counts = vec![0u64; l.len()];
    let base: u64 = rand::random();
    let mut buf = l.to_vec();
    for i in 0..n {
        let mut q = p.clone();
        q.seed = Some(base.wrapping_add(i));
        buf.copy_from_slice(l);
        let (t, _) = sample(&mut buf, &ctx_with(q), 5);
        counts[t as usize] += 1;
    }
    counts
}

#[test]
fn empirical_distribution_matches_softmax() {
    let (mut r, s) = rng();
    let v = 20;
    let n = 100_000;
    for &t in &[1.0f32, 0.7] {
        let l = random_logits(&mut r, v, 1.5);
        let want = softmax(&l, t);
        let counts = histogram(&l, &params(t, 0), n);
        let x2 = chi2(&counts, &want, n);
        // df = 19; P(chi2 > 60) ≈ 3e-6.
        assert!(x2 < 60.0, "chi2 {x2} at T={t}, rng {s}");
        let max_diff = counts
            .iter()
            .zip(&want)
            .map(|(&c, &w)| (c as f64 / n as f64 - w).abs())
            .fold(0.0, f64::max);
        assert!(max_diff < 0.008, "max diff {max_diff}, rng {s}");
    }
}

#[test]
fn top_k_top_p_distribution_is_renormalised() {
    let (mut r, s) = rng();
    let v = 30;
    let n = 60_000;
    // (top_k, top_p): top-p over the renormalised top-k set; top_k = 0 is the binned path.
    for &(top_k, top_p) in &[(5usize, 0.8f64), (0, 0.7)] {
        let l = random_logits(&mut r, v, 2.0);
        let mut order: Vec<usize> = (0..v).collect();
        order.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
        let mut p = params(1.0, 0);
        p.top_k = top_k as u32;
        p.top_p = top_p as f32;
        let kk = if top_k == 0 { v } else { top_k };
        let full = softmax(&l, 1.0);
        let zk: f64 = order[..kk].iter().map(|&i| full[i]).sum();
        let mut keep = Vec::new();
        let mut acc = 0.0;
        for &i in &order[..kk] {
            keep.push(i);
            acc += full[i] / zk;
            if acc >= top_p {
                break;
            }
        }
        let zn: f64 = keep.iter().map(|&i| full[i]).sum();
        let mut want = vec![0.0; v];
        for &i in &keep {
            want[i] = full[i] / zn;
        }
        let counts = histogram(&l, &p, n);
        for i in 0..v {
            if want[i] == 0.0 {
                assert_eq!(counts[i], 0, "token {i} outside the nucleus, rng {s}");
            }
        }
        // df = |keep| - 1 <= 29; P(chi2 > 75 | df 29) < 1e-5.
        let x2 = chi2(&counts, &want, n);
        assert!(x2 < 75.0, "chi2 {x2}, keep {keep:?}, rng {s}");
    }
}

#[test]
fn large_vocab_nucleus_matches_full_sort_reference() {
    let (mut r, s) = rng();
    let v = 20_000;
    for &top_p in &[0.5f32, 0.9, 0.99] {
        let l = random_logits(&mut r, v, 4.0);
        let mut order: Vec<u32> = (0..v as u32).collect();
        order.sort_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]).then(a.cmp(&b)));
        let m = l[order[0] as usize];
        let w: Vec<f64> = l.iter().map(|&x| f64::from(x - m).exp()).collect();
        let z: f64 = w.iter().sum();
        let mut cut = v;
        let mut acc = 0.0;
        for (j, &i) in order.iter().enumerate() {
            acc += w[i as usize];
            if acc >= f64::from(top_p) * z {
                cut = j + 1;
                break;
            }
        }
        let set: std::collections::HashSet<u32> = order[..cut].iter().copied().collect();
        let mut sel = Selector::default();
        let mut wbuf = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for k in 0..400u32 {
            let u = (f64::from(k) + 0.5) / 400.0;
            let t = draw(&l, 0, top_p, 0.0, u, &mut sel, &mut wbuf) as u32;
            assert!(
                set.contains(&t),
                "token {t} outside nucleus of {cut}, rng {s}"
            );
            seen.insert(t);
        }
        // The first candidate of the nucleus is the argmax and is hit at u≈0.
        assert!(seen.contains(&order[0]));
        assert!(cut > 1 || seen.len() == 1);
    }
}

#[test]
fn min_p_keeps_tokens_above_ratio() {
    // Relative probabilities 1, 0.6, 0.4, 0.1, 0.05: min_p = 0.5 keeps the first two.
    let l: Vec<f32> = [1.0f32, 0.6, 0.4, 0.1, 0.05]
        .iter()
        .map(|x| x.ln())
        .collect();
    let mut p = params(1.0, 0);
    p.min_p = 0.5;
    let n = 40_000;
    let counts = histogram(&l, &p, n);
    assert_eq!(counts[2] + counts[3] + counts[4], 0);
    let f0 = counts[0] as f64 / n as f64;
    assert!((f0 - 1.0 / 1.6).abs() < 0.015, "f0 {f0}");
    // min_p = 0.35 also keeps the third.
    p.min_p = 0.35;
    let counts = histogram(&l, &p, n);
    assert_eq!(counts[3] + counts[4], 0);
    assert!(counts[2] > 0);
}

#[test]
fn penalties_change_the_right_logits() {
    let mut p = SamplingParams {
        repetition_penalty: 2.0,
        frequency_penalty: 0.5,
        presence_penalty: 0.25,
        ..Default::default()
    };
    p.logit_bias.insert(4, 1.0);
    // Prompt [1, 2]; generated [2, 3, 3].
    let ctx = SamplingContext {
        params: Arc::new(p),
        history: Some(Arc::from(vec![1u32, 2, 2, 3, 3])),
        prompt_len: 2,
        generated: 3,
        banned: vec![5],
    };
    let mut l = vec![0.3f32, 2.0, -1.0, 4.0, 1.5, 9.0, -0.7];
    let reg = LogitsProcessorRegistry::new();
    process_logits(&mut l, &ctx, 5, &reg, &mut SamplerScratch::default());
    let want = [
        0.3,               // untouched
        1.0,               // prompt only: 2.0 / 2, no frequency/presence
        -2.0 - 0.5 - 0.25, // -1 * 2, then one generated occurrence
        2.0 - 1.0 - 0.25,  // 4 / 2, then two generated occurrences
        2.5,               // bias +1
        f32::NEG_INFINITY, // banned
        -0.7,              // untouched
    ];
    for (i, (&a, &b)) in l.iter().zip(&want).enumerate() {
        assert!(a == b || (a - b).abs() < 1e-6, "logit {i}: {a} vs {b}");
    }
}

#[test]
fn bias_plus_minus_100_and_bans() {
    let (mut r, s) = rng();
    let l = random_logits(&mut r, 500, 2.0);
    let g = ref_argmax(&l) as u32;
    let other = (g + 17) % 500;
    let mut p = SamplingParams::default();
    p.logit_bias.insert(other, 100.0);
    assert_eq!(
        sample(&mut l.clone(), &ctx_with(p.clone()), 0).0,
        other,
        "rng {s}"
    );
    // Even when sampling at temperature 1 the +100 token dominates.
    p.temperature = 1.0;
    p.seed = Some(3);
    assert_eq!(sample(&mut l.clone(), &ctx_with(p), 0).0, other, "rng {s}");
    let mut p = SamplingParams::default();
    p.logit_bias.insert(g, -100.0);
    let t = sample(&mut l.clone(), &ctx_with(p), 0).0;
    assert_ne!(t, g);
    let mut second = l.clone();
    second[g as usize] = f32::NEG_INFINITY;
    assert_eq!(t as usize, ref_argmax(&second));
    // Banning the argmax gives the runner-up; banning everything still returns a token.
    let ctx = SamplingContext {
        banned: vec![g],
        ..ctx_with(SamplingParams::default())
    };
    assert_eq!(
        sample(&mut l.clone(), &ctx, 0).0 as usize,
        ref_argmax(&second)
    );
    let ctx = SamplingContext {
        banned: (0..500).collect(),
        ..ctx_with(params(1.0, 1))
    };
    assert!(sample(&mut l.clone(), &ctx, 0).0 < 500);
}

#[test]
fn logprobs_are_raw_log_softmax() {
    let (mut r, s) = rng();
    let v = 64;
    let l = random_logits(&mut r, v, 2.0);
    let g = ref_argmax(&l);
    let other = ((g + 5) % v) as u32;
    let mut p = SamplingParams {
        logprobs: Some(v as u32),
        ..Default::default()
    };
    p.logit_bias.insert(other, 100.0);
    let (t, lp) = sample(&mut l.clone(), &ctx_with(p), 0);
    assert_eq!(t, other);
    let lp = lp.expect("logprobs requested");
    let want = softmax(&l, 1.0);
    assert_eq!(lp.token_id, other);
    assert!(
        (f64::from(lp.logprob) - want[other as usize].ln()).abs() < 1e-4,
        "rng {s}"
    );
    assert_eq!(lp.top.len(), v);
    let total: f64 = lp.top.iter().map(|&(_, x)| f64::from(x).exp()).sum();
    assert!((total - 1.0).abs() < 1e-4, "sum {total}");
    assert_eq!(lp.top[0].0 as usize, g);
    assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1));
    for &(i, x) in &lp.top {
        assert!((f64::from(x) - want[i as usize].ln()).abs() < 1e-4);
    }
    // k = 3 with temperature: still the raw distribution.
    let p = SamplingParams {
        logprobs: Some(3),
        temperature: 0.5,
        seed: Some(1),
        ..Default::default()
    };
    let (t, lp) = sample(&mut l.clone(), &ctx_with(p), 9);
    let lp = lp.expect("logprobs requested");
    assert_eq!(lp.top.len(), 3);
    assert!((f64::from(lp.logprob) - want[t as usize].ln()).abs() < 1e-4);
}

#[test]
fn named_processors_run_from_the_global_registry() {
    register_logits_processor(Arc::new(AllowedTokens::new("test_choice_7_9", [7, 9])));
    let (mut r, s) = rng();
    let l = random_logits(&mut r, 100, 1.0);
    let mut p = params(1.0, 0);
    p.logits_processors = vec!["test_choice_7_9".into(), "no_such_processor".into()];
    for seed in 0..200 {
        p.seed = Some(seed);
        let t = sample(&mut l.clone(), &ctx_with(p.clone()), 1).0;
        assert!(t == 7 || t == 9, "got {t}, rng {s}");
    }
    assert!(crate::logits::validate_logits_processors(&p.logits_processors).is_err());
    // no_repeat_ngram_2 through the registry: history [4, 8, 4] bans 8 next.
    let mut l = vec![0.0f32; 10];
    l[8] = 5.0;
    let p = SamplingParams {
        logits_processors: vec!["no_repeat_ngram_2".into()],
        ..Default::default()
    };
    let ctx = SamplingContext {
        params: Arc::new(p),
        history: Some(Arc::from(vec![4u32, 8, 4])),
        prompt_len: 1,
        generated: 2,
        banned: vec![],
    };
    assert_ne!(sample(&mut l, &ctx, 3).0, 8);
}

#[test]
fn uniform_is_in_range_and_spread() {
    let mut sum = 0.0;
    for pos in 0..10_000 {
        let u = uniform(42, pos);
        assert!((0.0..1.0).contains(&u));
        sum += u;
    }
    assert!((sum / 10_000.0 - 0.5).abs() < 0.02);
    assert_ne!(uniform(1, 0), uniform(2, 0));
}

/// `cargo test -p ferrite-engine --release -- --ignored --nocapture sampler_speed`
#[test]
#[ignore]
fn sampler_speed() {
    let (mut r, _) = rng();
    let v = 152_064;
    let l = random_logits(&mut r, v, 3.0);
    let mut buf = l.clone();
    let cases: Vec<(&str, SamplingParams)> = vec![
        ("greedy", SamplingParams::default()),
        ("t=1", params(1.0, 1)),
        (
            "t=0.7 top_k=50",
            SamplingParams {
                top_k: 50,
                ..params(0.7, 1)
            },
        ),
        (
            "t=0.7 top_p=0.9",
            SamplingParams {
                top_p: 0.9,
                ..params(0.7, 1)
            },
        ),
        (
            "t=0.7 k=50 p=0.9 min_p=0.05",
            SamplingParams {
                top_k: 50,
                top_p: 0.9,
                min_p: 0.05,
                ..params(0.7, 1)
            },
        ),
        (
            "greedy logprobs=5",
            SamplingParams {
                logprobs: Some(5),
                ..Default::default()
            },
        ),
    ];
    for (name, p) in cases {
        let ctx = ctx_with(p);
        let iters = 200;
        let start = std::time::Instant::now();
        for i in 0..iters {
            buf.copy_from_slice(&l);
            std::hint::black_box(sample(&mut buf, &ctx, i));
        }
        let per = start.elapsed() / iters;
        println!("{name:32} {per:?} per call (vocab {v})");
    }
}
