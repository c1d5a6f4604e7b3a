//! A plain float32 (float64 accumulations) forward pass over [`HostWeights`], one sequence,
//! no paging: the reference the GPU's logits are checked against.

use crate::config::CudaConfig;
use crate::weights::HostWeights;

/// `y[r] = Σ_c w[r, c] · x[c]` for a row-major `[rows, x.len()]` matrix, rows spread over
/// the available cores.
pub fn matvec(w: &[f32], x: &[f32]) -> Vec<f32> {
    let cols = x.len();
    let rows = w.len() / cols.max(1);
    let mut y = vec![0f32; rows];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = rows.div_ceil(threads).max(64);
    std::thread::scope(|s| {
        for (ci, chunk) in y.chunks_mut(per).enumerate() {
            s.spawn(move || {
                for (k, out) in chunk.iter_mut().enumerate() {
                    let r = ci * per + k;
                    let row = &w[r * cols..(r + 1) * cols];
                    let acc: f64 = row.iter().zip(x).map(|(a, b)| f64::from(a * b)).sum();
                    *out = acc as f32;
                }
            });
        }
    });
    y
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let ss: f64 = x.iter().map(|v| f64::from(*v) * f64::from(*v)).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ss + f64::from(eps)).sqrt();
    x.iter()
        .zip(w)
        .map(|(v, g)| (f64::from(*v) * inv) as f32 * g)
        .collect()
}

fn rope(head: &mut [f32], pos: u32, inv_freq: &[f32]) {
    let half = head.len() / 2;
    for (i, f) in inv_freq.iter().enumerate() {
        let a = f64::from(pos as f32 * f);
        let (s, c) = (a.sin() as f32, a.cos() as f32);
        let (x0, x1) = (head[i], head[i + half]);
        head[i] = x0 * c - x1 * s;
        head[i + half] = x1 * c + x0 * s;
    }
}

/// Logits (`vocab` floats) after each of `tokens` fed from position 0, for the positions
/// listed in `want` (indices into `tokens`).
pub fn forward(cfg: &CudaConfig, w: &HostWeights, tokens: &[u32], want: &[usize]) -> Vec<Vec<f32>> {
    let (h, hd) = (cfg.hidden, cfg.head_dim);
    let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
    let group = cfg.heads / cfg.kv_heads;
    let inv_freq = cfg.inv_freq();
    let scale = f64::from(cfg.attn_scale());
    // Residual stream of every position.
    let mut xs: Vec<Vec<f32>> = tokens
        .iter()
        .map(|t| w.embed[*t as usize * h..(*t as usize + 1) * h].to_vec())
        .collect();
    for l in &w.layers {
        let mut ks: Vec<Vec<f32>> = Vec::with_capacity(tokens.len());
        let mut vs: Vec<Vec<f32>> = Vec::with_capacity(tokens.len());
        let mut qs: Vec<Vec<f32>> = Vec::with_capacity(tokens.len());
        for (p, x) in xs.iter().enumerate() {
            let xn = rms_norm(x, &l.attn_norm, cfg.eps);
            let qkv = matvec(&l.wqkv, &xn);
            let mut q = qkv[..qd].to_vec();
            let mut k = qkv[qd..qd + kvd].to_vec();
            for head in q.chunks_exact_mut(hd) {
                rope(head, p as u32, &inv_freq);
            }
            for head in k.chunks_exact_mut(hd) {
                rope(head, p as u32, &inv_freq);
            }
            qs.push(q);
            ks.push(k);
            vs.push(qkv[qd + kvd..].to_vec());
        }
        for (p, x) in xs.iter_mut().enumerate() {
            let mut attn = vec![0f32; qd];
            for hh in 0..cfg.heads {
                let kh = hh / group;
                let q = &qs[p][hh * hd..(hh + 1) * hd];
                let scores: Vec<f64> = (0..=p)
                    .map(|j| {
                        let k = &ks[j][kh * hd..(kh + 1) * hd];
                        q.iter()
                            .zip(k)
                            .map(|(a, b)| f64::from(*a) * f64::from(*b))
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    let a: f64 = (0..=p).map(|j| e[j] * f64::from(vs[j][kh * hd + d])).sum();
                    attn[hh * hd + d] = (a / z) as f32;
                }
            }
            let o = matvec(&l.wo, &attn);
            for (a, b) in x.iter_mut().zip(&o) {
                *a += b;
            }
            let xn = rms_norm(x, &l.ffn_norm, cfg.eps);
            let gu = matvec(&l.w_gate_up, &xn);
            let (g, u) = gu.split_at(cfg.intermediate);
            let act: Vec<f32> = g
                .iter()
                .zip(u)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let d = matvec(&l.w_down, &act);
            for (a, b) in x.iter_mut().zip(&d) {
                *a += b;
            }
        }
    }
    want.iter()
        .map(|&p| matvec(w.lm_head(), &rms_norm(&xs[p], &w.norm, cfg.eps)))
        .collect()
}

/// ‖a − b‖ / ‖b‖ (float64).
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let d = f64::from(*x) - f64::from(*y);
        num += d * d;
        den += f64::from(*y) * f64::from(*y);
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::HostLayer;

    fn tiny() -> (CudaConfig, HostWeights) {
        let mut cfg = CudaConfig::llama31_8b(2, 64);
        cfg.hidden = 8;
        cfg.intermediate = 12;
        cfg.heads = 2;
        cfg.kv_heads = 1;
        cfg.head_dim = 4;
        cfg.vocab = 10;
        cfg.rope_scaling = None;
        cfg.rope_theta = 10_000.0;
        let mut seed = 7u64;
        let mut rnd = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.8
                })
                .collect()
        };
        let (h, i) = (cfg.hidden, cfg.intermediate);
        let layers = (0..cfg.layers)
            .map(|_| HostLayer {
                attn_norm: rnd(h).iter().map(|v| 1.0 + v).collect(),
                wqkv: rnd(cfg.qkv_dim() * h),
                wo: rnd(h * cfg.q_dim()),
                ffn_norm: rnd(h).iter().map(|v| 1.0 + v).collect(),
                w_gate_up: rnd(2 * i * h),
                w_down: rnd(h * i),
            })
            .collect();
        let w = HostWeights {
            embed: rnd(cfg.vocab * h),
            layers,
            norm: vec![1.0; h],
            lm_head: None,
        };
        (cfg, w)
    }

    #[test]
    fn matvec_matches_hand_computation() {
        let w = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(matvec(&w, &[1.0, 0.5, -1.0]), vec![-1.0, 0.5]);
    }

    #[test]
    fn rope_rotates_pairs_half_apart() {
        let mut head = [1.0f32, 0.0, 0.0, 0.0];
        // Position 1 with frequency π/2 turns (1, 0) in pair 0 into (0, 1).
        rope(&mut head, 1, &[std::f32::consts::FRAC_PI_2, 0.0]);
        assert!(head[0].abs() < 1e-6 && (head[2] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn first_position_attends_only_to_itself_and_later_logits_differ() {
        let (cfg, w) = tiny();
        let a = forward(&cfg, &w, &[3, 1, 4], &[0, 2]);
        let b = forward(&cfg, &w, &[3], &[0]);
        // Causality: position 0's logits do not depend on later tokens.
        assert_eq!(a[0], b[0]);
        assert_eq!(a[0].len(), 10);
        assert!(rel_l2(&a[1], &a[0]) > 1e-3);
        assert!(a.iter().flatten().all(|v| v.is_finite()));
    }

    #[test]
    fn rel_l2_is_relative() {
        assert!((rel_l2(&[1.1, 0.0], &[1.0, 0.0]) - 0.1).abs() < 1e-6);
        assert_eq!(rel_l2(&[2.0], &[2.0]), 0.0);
    }
}
