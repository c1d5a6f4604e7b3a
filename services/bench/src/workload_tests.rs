use super::*;
use crate::prompt::tests::smollm2;

fn ids(w: &Workload, text: &str) -> Vec<u32> {
    w.builder().encode(text).unwrap().unwrap()
}

#[test]
fn synthetic_fixed_lengths_are_exact_tokens_and_seeded() {
    let spec = WorkloadSpec::Synthetic {
        input: LenSpec::fixed(256),
        output: LenSpec::fixed(32),
    };
    let w = Workload::new(spec.clone(), smollm2(), 42).unwrap();
    for i in 0..5 {
        let s = w.session(i).unwrap().unwrap();
        assert_eq!(s.turns.len(), 1);
        assert_eq!(s.turns[0].output_len, 32);
        assert_eq!(s.turns[0].input_len, 256);
        assert_eq!(ids(&w, &s.turns[0].text).len(), 256);
    }
    let a = w.session(3).unwrap().unwrap().turns[0].text.clone();
    let b = w.session(4).unwrap().unwrap().turns[0].text.clone();
    assert_ne!(a, b);
    let again = Workload::new(spec, smollm2(), 42).unwrap();
    assert_eq!(again.session(3).unwrap().unwrap().turns[0].text, a);
    assert!(w.natural_len().is_none());
}

#[test]
fn length_distributions_stay_in_range_and_centre_on_the_mean() {
    let mut rng = StdRng::seed_from_u64(9);
    let u = LenSpec {
        mean: 1000,
        dist: LenDist::Uniform,
        spread: 0.2,
    };
    let xs: Vec<usize> = (0..5000).map(|_| u.sample(&mut rng)).collect();
    assert!(xs.iter().all(|&x| (800..=1200).contains(&x)));
    assert!(xs.iter().any(|&x| x < 850) && xs.iter().any(|&x| x > 1150));
    let mean = xs.iter().sum::<usize>() as f64 / xs.len() as f64;
    assert!((mean - 1000.0).abs() < 10.0, "{mean}");

    let n = LenSpec {
        mean: 1000,
        dist: LenDist::Normal,
        spread: 0.1,
    };
    let xs: Vec<f64> = (0..20000).map(|_| n.sample(&mut rng) as f64).collect();
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64).sqrt();
    assert!((mean - 1000.0).abs() < 3.0, "{mean}");
    assert!((sd - 100.0).abs() < 4.0, "{sd}");
    assert_eq!(LenSpec::fixed(7).sample(&mut rng), 7);
}

#[test]
fn shared_prefix_groups_share_exact_prefix_tokens() {
    let spec = WorkloadSpec::SharedPrefix {
        random_groups: false,
        groups: 3,
        prefix_len: 200,
        suffix: LenSpec::fixed(40),
        output: LenSpec::fixed(8),
    };
    let w = Workload::new(spec, smollm2(), 5).unwrap();
    let s: Vec<Session> = (0..6).map(|i| w.session(i).unwrap().unwrap()).collect();
    let toks: Vec<Vec<u32>> = s.iter().map(|x| ids(&w, &x.turns[0].text)).collect();
    for (i, t) in toks.iter().enumerate() {
        assert_eq!(s[i].group, Some(i % 3), "interleaved across groups");
        assert_eq!(t.len(), 240);
        assert_eq!(s[i].turns[0].input_len, 240);
    }
    // Same group: identical first 200 tokens, different suffixes.
    for g in 0..3 {
        assert_eq!(toks[g][..200], toks[g + 3][..200]);
        assert_ne!(toks[g][200..], toks[g + 3][200..]);
    }
    // Different groups: different prefixes.
    assert_ne!(toks[0][..200], toks[1][..200]);
    assert_ne!(toks[1][..200], toks[2][..200]);
}

#[test]
fn multi_turn_sessions_have_every_turn_with_its_lengths() {
    let spec = WorkloadSpec::MultiTurn {
        conversations: 4,
        turns: 3,
        input: LenSpec::fixed(30),
        output: LenSpec::fixed(10),
        first_input: None,
    };
    let w = Workload::new(spec, smollm2(), 1).unwrap();
    assert_eq!(w.natural_len(), Some(4));
    assert_eq!(w.turns_per_session(), 3);
    let s = w.session(2).unwrap().unwrap();
    assert_eq!(s.turns.len(), 3);
    for t in &s.turns {
        assert_eq!((t.input_len, t.output_len), (30, 10));
        assert_eq!(ids(&w, &t.text).len(), 30);
    }
    assert_ne!(s.turns[0].text, s.turns[1].text);
    assert!(w.session(4).unwrap().is_none());
    // A long first message (a document), then short follow-ups.
    let spec = WorkloadSpec::MultiTurn {
        conversations: 2,
        turns: 3,
        input: LenSpec::fixed(12),
        output: LenSpec::fixed(10),
        first_input: Some(LenSpec::fixed(300)),
    };
    let w = Workload::new(spec, smollm2(), 1).unwrap();
    let s = w.session(1).unwrap().unwrap();
    let lens: Vec<usize> = s.turns.iter().map(|t| ids(&w, &t.text).len()).collect();
    assert_eq!(lens, vec![300, 12, 12]);
}

#[test]
fn trace_hash_ids_give_identical_token_blocks() {
    let e = |ts: f64, len: usize, h: &[u64]| TraceEntry {
        timestamp: ts,
        input_length: len,
        output_length: 5,
        hash_ids: h.to_vec(),
    };
    let entries = vec![
        e(1000.0, 64 * 3, &[1, 2, 3]),
        e(1500.0, 64 * 2 + 20, &[1, 2, 4]),
        e(3000.0, 64 * 2 + 10, &[1, 2, 4]),
        e(4000.0, 64 + 30, &[9, 2]),
    ];
    let spec = WorkloadSpec::Trace {
        entries,
        block_size: 64,
        speedup: 2.0,
    };
    let w = Workload::new(spec, smollm2(), 11).unwrap();
    let s: Vec<Session> = (0..4).map(|i| w.session(i).unwrap().unwrap()).collect();
    let t: Vec<Vec<u32>> = s.iter().map(|x| ids(&w, &x.turns[0].text)).collect();
    assert_eq!(
        t.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![192, 148, 138, 94]
    );
    assert_eq!(t[0][..128], t[1][..128], "blocks 1 and 2 shared");
    assert_ne!(
        t[0][128..138],
        t[1][128..138],
        "block 3 differs from block 4"
    );
    assert_eq!(
        t[1][..138],
        t[2][..138],
        "partial block 4 is a prefix of block 4"
    );
    assert_ne!(t[3][..64], t[0][..64], "block 9 differs from block 1");
    assert_eq!(
        t[3][64..94],
        t[0][64..94],
        "block 2 in second place is the same text"
    );
    // Timestamps relative to the first, divided by the speed-up.
    let at: Vec<f64> = s.iter().map(|x| x.at.unwrap().as_secs_f64()).collect();
    assert_eq!(at, vec![0.0, 0.25, 1.0, 1.5]);
    assert_eq!(s[0].turns[0].output_len, 5);
    assert!(w.session(4).unwrap().is_none());
}

#[test]
fn trace_file_parses_mooncake_lines() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.jsonl");
    std::fs::write(
        &p,
        "{\"timestamp\": 0, \"input_length\": 600, \"output_length\": 3, \"hash_ids\": [0, 1]}\n\n\
         {\"timestamp\": 27, \"input_length\": 10, \"output_length\": 4, \"hash_ids\": [7]}\n",
    )
    .unwrap();
    let v = read_trace(&p).unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(v[1].timestamp, 27.0);
    assert_eq!(v[0].hash_ids, vec![0, 1]);
    std::fs::write(&p, "{\"timestamp\": 0}\n").unwrap();
    let err = read_trace(&p).unwrap_err();
    assert!(
        err.is_usage() && err.to_string().contains("line 1"),
        "{err}"
    );
}

#[test]
fn poisson_arrivals_have_the_rate_and_exponential_gaps() {
    let rate = 20.0;
    let ts: Vec<f64> = PoissonArrivals::new(rate, 3)
        .take(20000)
        .map(|d| d.as_secs_f64())
        .collect();
    let gaps: Vec<f64> = ts
        .windows(2)
        .map(|w| w[1] - w[0])
        .chain(std::iter::once(ts[0]))
        .collect();
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
    assert!((1.0 / mean - rate).abs() < 0.5, "rate {}", 1.0 / mean);
    // Exponential: standard deviation equals the mean.
    assert!(
        (var.sqrt() / mean - 1.0).abs() < 0.05,
        "cv {}",
        var.sqrt() / mean
    );
    assert!(gaps.iter().all(|&g| g > 0.0));
    let again: Vec<f64> = PoissonArrivals::new(rate, 3)
        .take(5)
        .map(|d| d.as_secs_f64())
        .collect();
    assert_eq!(again[..], ts[..5]);
}

#[test]
fn approximate_workload_counts_words() {
    let spec = WorkloadSpec::Synthetic {
        input: LenSpec::fixed(100),
        output: LenSpec::fixed(4),
    };
    let w = Workload::new(spec, PromptBuilder::approximate(), 0).unwrap();
    let s = w.session(0).unwrap().unwrap();
    assert_eq!(s.turns[0].text.split_whitespace().count(), 100);
}

#[test]
fn other_lengths_give_other_prompts_not_a_prefix() {
    let spec = |n| WorkloadSpec::Synthetic {
        input: LenSpec::fixed(n),
        output: LenSpec::fixed(4),
    };
    let a = Workload::new(spec(50), PromptBuilder::approximate(), 0).unwrap();
    let b = Workload::new(spec(80), PromptBuilder::approximate(), 0).unwrap();
    let (ta, tb) = (
        a.session(0).unwrap().unwrap().turns[0].text.clone(),
        b.session(0).unwrap().unwrap().turns[0].text.clone(),
    );
    assert!(!tb.starts_with(&ta));
    let a2 = Workload::new(spec(50), PromptBuilder::approximate(), 0).unwrap();
    assert_eq!(a2.session(0).unwrap().unwrap().turns[0].text, ta);
}
