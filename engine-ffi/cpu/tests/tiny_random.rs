//! Tiny random-weight Qwen2 (qkv bias), Qwen3 (q/k norm) and Llama-3 (rope scaling) models
//! written as HF folders, checked against a naive float64 full-sequence forward written here
//! from the HF modelling code (no cache, no paging), on fresh random weights.

mod common;
use common::*;
use serde_json::json;
use std::collections::BTreeMap;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

const H: usize = 64;
const HEADS: usize = 4;
const KV: usize = 2;
const HD: usize = 16;
const FF: usize = 96;
const V: usize = 97;
const LAYERS: usize = 2;

type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn make(model_type: &str, seed: u64) -> (Tensors, serde_json::Value) {
    let mut r = Rng(seed);
    let mut t = Tensors::new();
    let mut put = |name: String, shape: Vec<usize>, scale: f32, r: &mut Rng| {
        let n = shape.iter().product();
        t.insert(name, (shape, r.vec(n, scale)));
    };
    put("model.embed_tokens.weight".into(), vec![V, H], 1.0, &mut r);
    put("lm_head.weight".into(), vec![V, H], 0.3, &mut r);
    put("model.norm.weight".into(), vec![H], 1.0, &mut r);
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        put(format!("{p}.input_layernorm.weight"), vec![H], 1.0, &mut r);
        put(
            format!("{p}.post_attention_layernorm.weight"),
            vec![H],
            1.0,
            &mut r,
        );
        put(
            format!("{p}.self_attn.q_proj.weight"),
            vec![HEADS * HD, H],
            0.3,
            &mut r,
        );
        put(
            format!("{p}.self_attn.k_proj.weight"),
            vec![KV * HD, H],
            0.3,
            &mut r,
        );
        put(
            format!("{p}.self_attn.v_proj.weight"),
            vec![KV * HD, H],
            0.3,
            &mut r,
        );
        put(
            format!("{p}.self_attn.o_proj.weight"),
            vec![H, HEADS * HD],
            0.3,
            &mut r,
        );
        put(
            format!("{p}.mlp.gate_proj.weight"),
            vec![FF, H],
            0.3,
            &mut r,
        );
        put(format!("{p}.mlp.up_proj.weight"), vec![FF, H], 0.3, &mut r);
        put(
            format!("{p}.mlp.down_proj.weight"),
            vec![H, FF],
            0.3,
            &mut r,
        );
        if model_type == "qwen2" {
            put(
                format!("{p}.self_attn.q_proj.bias"),
                vec![HEADS * HD],
                0.5,
                &mut r,
            );
            put(
                format!("{p}.self_attn.k_proj.bias"),
                vec![KV * HD],
                0.5,
                &mut r,
            );
            put(
                format!("{p}.self_attn.v_proj.bias"),
                vec![KV * HD],
                0.5,
                &mut r,
            );
        }
        if model_type == "qwen3" {
            put(
                format!("{p}.self_attn.q_norm.weight"),
                vec![HD],
                1.0,
                &mut r,
            );
            put(
                format!("{p}.self_attn.k_norm.weight"),
                vec![HD],
                1.0,
                &mut r,
            );
        }
    }
    let mut cfg = json!({
        "model_type": model_type, "hidden_size": H, "intermediate_size": FF,
        "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": KV,
        "head_dim": HD, "vocab_size": V, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "max_position_embeddings": 256, "tie_word_embeddings": false
    });
    if model_type == "llama" {
        cfg["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32});
    }
    (t, cfg)
}

fn write_folder(dir: &std::path::Path, t: &Tensors, cfg: &serde_json::Value) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, (shape, v)) in t {
        let start = data.len();
        for x in v {
            data.extend_from_slice(&x.to_le_bytes());
        }
        header.insert(
            name.clone(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let h = serde_json::to_vec(&header).expect("json");
    let mut file = (h.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&h);
    file.extend_from_slice(&data);
    std::fs::write(dir.join("model.safetensors"), file).expect("write");
    std::fs::write(dir.join("config.json"), cfg.to_string()).expect("write");
}

fn inv_freq(llama3: bool) -> Vec<f64> {
    (0..HD / 2)
        .map(|i| {
            let f = 1.0 / 10000f64.powf(2.0 * i as f64 / HD as f64);
            if !llama3 {
                return f;
            }
            let (factor, lo, hi, old) = (8.0, 1.0, 4.0, 32.0);
            let wl = 2.0 * std::f64::consts::PI / f;
            if wl < old / hi {
                f
            } else if wl > old / lo {
                f / factor
            } else {
                let s = (old / wl - lo) / (hi - lo);
                (1.0 - s) * f / factor + s * f
            }
        })
        .collect()
}

/// Naive float64 forward over the whole sequence; logits of the last position.
fn reference(t: &Tensors, kind: &str, tokens: &[u32]) -> Vec<f64> {
    let g = |n: &str| -> Vec<f64> { t[n].1.iter().map(|&x| x as f64).collect() };
    let mm = |w: &[f64], x: &[f64], rows: usize| -> Vec<f64> {
        let k = x.len();
        (0..rows)
            .map(|r| (0..k).map(|j| w[r * k + j] * x[j]).sum())
            .collect()
    };
    let norm = |x: &[f64], w: &[f64], eps: f64| -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let inv = 1.0 / (ms + eps).sqrt();
        x.iter().zip(w).map(|(v, g)| v * inv * g).collect()
    };
    let rot = |x: &mut [f64], pos: usize, f: &[f64]| {
        for i in 0..HD / 2 {
            let (c, s) = ((pos as f64 * f[i]).cos(), (pos as f64 * f[i]).sin());
            let (a, b) = (x[i], x[i + HD / 2]);
            x[i] = a * c - b * s;
            x[i + HD / 2] = b * c + a * s;
        }
    };
    let freqs = inv_freq(kind == "llama");
    let emb = g("model.embed_tokens.weight");
    let mut xs: Vec<Vec<f64>> = tokens
        .iter()
        .map(|&tk| emb[tk as usize * H..(tk as usize + 1) * H].to_vec())
        .collect();
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        let (mut qs, mut ks, mut vs) = (Vec::new(), Vec::new(), Vec::new());
        for (pos, x) in xs.iter().enumerate() {
            let xn = norm(x, &g(&format!("{p}.input_layernorm.weight")), 1e-6);
            let mut q = mm(&g(&format!("{p}.self_attn.q_proj.weight")), &xn, HEADS * HD);
            let mut k = mm(&g(&format!("{p}.self_attn.k_proj.weight")), &xn, KV * HD);
            let mut v = mm(&g(&format!("{p}.self_attn.v_proj.weight")), &xn, KV * HD);
            if kind == "qwen2" {
                for (a, b) in q.iter_mut().zip(g(&format!("{p}.self_attn.q_proj.bias"))) {
                    *a += b;
                }
                for (a, b) in k.iter_mut().zip(g(&format!("{p}.self_attn.k_proj.bias"))) {
                    *a += b;
                }
                for (a, b) in v.iter_mut().zip(g(&format!("{p}.self_attn.v_proj.bias"))) {
                    *a += b;
                }
            }
            for (hh, qh) in q.chunks_mut(HD).enumerate() {
                if kind == "qwen3" {
                    let n = norm(qh, &g(&format!("{p}.self_attn.q_norm.weight")), 1e-6);
                    qh.copy_from_slice(&n);
                }
                let _ = hh;
                rot(qh, pos, &freqs);
            }
            for kh in k.chunks_mut(HD) {
                if kind == "qwen3" {
                    let n = norm(kh, &g(&format!("{p}.self_attn.k_norm.weight")), 1e-6);
                    kh.copy_from_slice(&n);
                }
                rot(kh, pos, &freqs);
            }
            qs.push(q);
            ks.push(k);
            vs.push(v);
        }
        for i in 0..xs.len() {
            let mut att = vec![0f64; HEADS * HD];
            for hh in 0..HEADS {
                let kvh = hh / (HEADS / KV);
                let q = &qs[i][hh * HD..(hh + 1) * HD];
                let sc: Vec<f64> = (0..=i)
                    .map(|j| {
                        let k = &ks[j][kvh * HD..(kvh + 1) * HD];
                        q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() / (HD as f64).sqrt()
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for (j, ej) in e.iter().enumerate() {
                    for d in 0..HD {
                        att[hh * HD + d] += ej / z * vs[j][kvh * HD + d];
                    }
                }
            }
            let o = mm(&g(&format!("{p}.self_attn.o_proj.weight")), &att, H);
            for (a, b) in xs[i].iter_mut().zip(o) {
                *a += b;
            }
            let xn = norm(
                &xs[i],
                &g(&format!("{p}.post_attention_layernorm.weight")),
                1e-6,
            );
            let gt = mm(&g(&format!("{p}.mlp.gate_proj.weight")), &xn, FF);
            let up = mm(&g(&format!("{p}.mlp.up_proj.weight")), &xn, FF);
            let hmid: Vec<f64> = gt
                .iter()
                .zip(&up)
                .map(|(a, b)| a / (1.0 + (-a).exp()) * b)
                .collect();
            let d = mm(&g(&format!("{p}.mlp.down_proj.weight")), &hmid, H);
            for (a, b) in xs[i].iter_mut().zip(d) {
                *a += b;
            }
        }
    }
    let last = norm(xs.last().expect("tokens"), &g("model.norm.weight"), 1e-6);
    mm(&g("lm_head.weight"), &last, V)
}

fn check(kind: &str, seed: u64) {
    let (t, cfg) = make(kind, seed);
    let dir = tempfile::tempdir().expect("tempdir");
    write_folder(dir.path(), &t, &cfg);
    let mut ex = ferrite_cpu::CpuExecutor::load(dir.path(), Default::default())
        .unwrap_or_else(|e| panic!("{kind}: {e}"));
    let prompt: Vec<u32> = (0..40).map(|i| (i * 7 + seed as u32) % V as u32).collect();
    // Prefill in chunks of 13, then 3 decode steps; compare every sampled step's logits.
    let mut alloc = Alloc {
        next: 3,
        block_size: 16,
    };
    let mut seqs = vec![Seq::new(&prompt, 4, None)];
    run_all(&mut ex, &mut alloc, &mut seqs, &[0], 13);
    for (k, ours) in seqs[0].logits.iter().enumerate() {
        let ctx = &seqs[0].tokens[..prompt.len() + k];
        let want = reference(&t, kind, ctx);
        for (a, b) in ours.iter().zip(&want) {
            assert!(
                (*a as f64 - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{kind} step {k}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn qwen2_bias_matches_naive_reference() {
    check("qwen2", 11);
}

#[test]
fn qwen3_qk_norm_matches_naive_reference() {
    check("qwen3", 23);
}

#[test]
fn llama3_rope_scaling_matches_naive_reference() {
    check("llama", 37);
}

#[test]
fn unsupported_architecture_is_a_clear_error() {
    let (t, mut cfg) = make("llama", 5);
    cfg["model_type"] = json!("gpt2");
    let dir = tempfile::tempdir().expect("tempdir");
    write_folder(dir.path(), &t, &cfg);
    let err = ferrite_cpu::CpuExecutor::load(dir.path(), Default::default())
        .expect_err("gpt2 is not llama-family");
    let msg = err.to_string();
    assert!(msg.contains("config.json") && msg.contains("gpt2"), "{msg}");
}
