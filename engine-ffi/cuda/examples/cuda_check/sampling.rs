//! Device sampling (`sample_rows`) against a host replica of its arithmetic: the same token
//! for stratified uniform numbers, and every token inside the CPU sampler's filtered set.

use anyhow::Result;
use ferrite_cuda::CudaExecutor;
use std::time::Instant;

fn ord_key(f: f32) -> u32 {
    let u = f.to_bits();
    if u & 0x8000_0000 != 0 {
        !u
    } else {
        u | 0x8000_0000
    }
}

fn wfix(l: f32, m: f32) -> u64 {
    if l == f32::NEG_INFINITY {
        0
    } else {
        ((l - m).exp() * 1_099_511_627_776.0f32) as u64
    }
}

/// The draw `sample_rows` makes, computed on the host.
fn host_draw(row: &[f32], [t, k, p, min_p, u]: [f32; 5]) -> u32 {
    let inv = 1.0 / t;
    let l: Vec<f32> = row
        .iter()
        .map(|x| {
            let v = x * inv;
            if v.is_nan() { f32::NEG_INFINITY } else { v }
        })
        .collect();
    let (mut m, mut best) = (f32::NEG_INFINITY, 0usize);
    for (i, &v) in l.iter().enumerate() {
        if v > m {
            m = v;
            best = i;
        }
    }
    if !m.is_finite() {
        return best as u32;
    }
    let keys: Vec<u32> = l.iter().map(|&v| ord_key(v)).collect();
    let mut desc: Vec<usize> = (0..l.len()).collect();
    desc.sort_by(|&a, &b| keys[b].cmp(&keys[a]));
    let mut keep = 0u32;
    let k = k as usize;
    if k > 0 && k < l.len() {
        keep = keys[desc[k - 1]];
    }
    if p < 1.0 {
        let z: u64 = (0..l.len())
            .filter(|&i| keys[i] >= keep)
            .map(|i| wfix(l[i], m))
            .sum();
        let need = if p > 0.0 {
            (f64::from(p) * z as f64) as u64
        } else {
            0
        }
        .max(1);
        let mut cum = 0u64;
        let mut j = 0;
        while j < desc.len() && keys[desc[j]] >= keep {
            let key = keys[desc[j]];
            while j < desc.len() && keys[desc[j]] == key {
                cum += wfix(l[desc[j]], m);
                j += 1;
            }
            if cum >= need {
                keep = keep.max(key);
                break;
            }
        }
    }
    if min_p > 0.0 {
        keep = keep.max(ord_key(m + min_p.ln()));
    }
    let total: u64 = (0..l.len())
        .filter(|&i| keys[i] >= keep)
        .map(|i| wfix(l[i], m))
        .sum();
    if total == 0 {
        return best as u32;
    }
    let target = ((f64::from(u) * total as f64) as u64).min(total - 1);
    let mut acc = 0u64;
    for i in 0..l.len() {
        if keys[i] >= keep {
            acc += wfix(l[i], m);
            if acc > target {
                return i as u32;
            }
        }
    }
    best as u32
}

/// Rank of token `i` in the row (0 = best) and its probability at temperature `t`.
fn rank_prob(row: &[f32], i: usize, t: f32) -> (usize, f64) {
    let rank = row.iter().filter(|&&x| x > row[i]).count();
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f64 = row.iter().map(|&x| f64::from((x - m) / t).exp()).sum();
    (rank, f64::from((row[i] - m) / t).exp() / z)
}

pub fn check(ex: &mut CudaExecutor) -> Result<bool> {
    let v = ex.config().vocab;
    // Row 0: peaked random logits; row 1: the same with NaN and -inf holes.
    let mut logits = Vec::with_capacity(2 * v);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..v {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let g = ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
        logits.push(g * g * g * 12.0);
    }
    for i in 0..v {
        let l = logits[i];
        logits.push(if i % 97 == 0 {
            f32::NAN
        } else if i % 89 == 0 {
            f32::NEG_INFINITY
        } else {
            l
        });
    }
    let configs: [[f32; 4]; 6] = [
        [1.0, 0.0, 1.0, 0.0],
        [0.7, 0.0, 1.0, 0.0],
        [0.8, 50.0, 1.0, 0.0],
        [1.0, 0.0, 0.9, 0.0],
        [1.2, 40.0, 0.8, 0.05],
        [1.0, 1.0, 1.0, 0.0],
    ];
    let n = 512;
    let mut ok = true;
    for c in &configs {
        let draws: Vec<(usize, [f32; 5])> = (0..2 * n)
            .map(|j| {
                (
                    j % 2,
                    [c[0], c[1], c[2], c[3], ((j / 2) as f32 + 0.5) / n as f32],
                )
            })
            .collect();
        let got = ex.draw_from(&logits, &draws)?;
        let mut same = 0;
        let mut worst_rank = 0;
        for (d, g) in draws.iter().zip(&got) {
            let row = &logits[d.0 * v..(d.0 + 1) * v];
            same += usize::from(host_draw(row, d.1) == *g);
            let (rank, _) = rank_prob(row, *g as usize, c[0]);
            worst_rank = worst_rank.max(rank);
        }
        let in_top_k = c[1] == 0.0 || worst_rank < c[1] as usize;
        let pass = same * 1000 >= draws.len() * 998 && in_top_k;
        println!(
            "  device sampling T {} top_k {} top_p {} min_p {}: {same}/{} draws equal the host replica, worst rank {worst_rank} -> {}",
            c[0],
            c[1],
            c[2],
            c[3],
            draws.len(),
            if pass { "ok" } else { "FAIL" }
        );
        ok &= pass;
    }
    // Speed: 64 rows, top-k 50 + top-p 0.9 (two bisections) and plain temperature.
    let rows: Vec<f32> = logits[..v].iter().cycle().take(64 * v).copied().collect();
    for (name, prm) in [
        ("plain T 1", [1.0, 0.0, 1.0, 0.0, 0.3]),
        ("top_k 50 + top_p 0.9", [1.0, 50.0, 0.9, 0.0, 0.3]),
    ] {
        let draws: Vec<(usize, [f32; 5])> = (0..64).map(|r| (r, prm)).collect();
        ex.draw_from(&rows, &draws)?;
        let t = Instant::now();
        for _ in 0..5 {
            ex.draw_from(&[], &draws)?;
        }
        println!(
            "  device sampling, 64 rows x {v} vocab, {name}: {:.0} µs per call (with parameter upload and token download)",
            t.elapsed().as_secs_f64() * 1e6 / 5.0
        );
    }
    Ok(ok)
}
