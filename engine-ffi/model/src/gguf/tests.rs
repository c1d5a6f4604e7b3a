use half::f16;

use super::*;
use crate::test_util::smollm2_gguf;

/// Builds a small GGUF v3 image: metadata of several types and two tensors.
fn build(version: u32) -> Vec<u8> {
    fn s(b: &mut Vec<u8>, x: &str) {
        b.extend((x.len() as u64).to_le_bytes());
        b.extend(x.as_bytes());
    }
    let mut b = Vec::new();
    b.extend(b"GGUF");
    b.extend(version.to_le_bytes());
    b.extend(2u64.to_le_bytes()); // tensors
    b.extend(5u64.to_le_bytes()); // kv
    s(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes());
    s(&mut b, "llama");
    s(&mut b, "llama.block_count");
    b.extend(4u32.to_le_bytes());
    b.extend(7u32.to_le_bytes());
    s(&mut b, "llama.rope.freq_base");
    b.extend(6u32.to_le_bytes());
    b.extend(10000f32.to_le_bytes());
    s(&mut b, "tokenizer.ggml.tokens");
    b.extend(9u32.to_le_bytes());
    b.extend(8u32.to_le_bytes());
    b.extend(2u64.to_le_bytes());
    s(&mut b, "a");
    s(&mut b, "bc");
    s(&mut b, "flag");
    b.extend(7u32.to_le_bytes());
    b.push(1);
    // tensor 0: f32 [4]; tensor 1: Q8_0 [32, 2]
    s(&mut b, "t.f32");
    b.extend(1u32.to_le_bytes());
    b.extend(4u64.to_le_bytes());
    b.extend(0u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    s(&mut b, "t.q8");
    b.extend(2u32.to_le_bytes());
    b.extend(32u64.to_le_bytes());
    b.extend(2u64.to_le_bytes());
    b.extend(8u32.to_le_bytes());
    b.extend(32u64.to_le_bytes());
    while b.len() % 32 != 0 {
        b.push(0);
    }
    for v in [1.5f32, -2.0, 0.25, 8.0] {
        b.extend(v.to_le_bytes());
    }
    b.extend([0u8; 16]);
    for r in 0..2 {
        let blk = BlockQ8_0 {
            d: f16::from_f32(0.5 * (r + 1) as f32),
            qs: std::array::from_fn(|i| i as i8 - 16),
        };
        b.extend(blk.to_bytes());
    }
    b
}

#[test]
fn parses_synthetic_file() {
    for version in [2, 3] {
        let g = GgufFile::from_bytes("mem.gguf", build(version)).expect("parse");
        assert_eq!(g.version(), version);
        assert_eq!(g.architecture(), Some("llama"));
        assert_eq!(g.get_u32("llama.block_count"), Some(7));
        assert_eq!(g.get_f32("llama.rope.freq_base"), Some(10000.0));
        assert_eq!(
            g.get_str_array("tokenizer.ggml.tokens"),
            Some(vec!["a", "bc"])
        );
        assert_eq!(g.get_bool("flag"), Some(true));
        assert_eq!(g.tensors().len(), 2);
        let (info, data) = g.tensor_data("t.q8").expect("tensor");
        assert_eq!(info.shape, vec![32, 2]);
        assert_eq!(
            (info.row_len(), info.n_rows(), info.row_bytes()),
            (32, 2, 34)
        );
        assert_eq!(data.len(), 68);
        let all = g.tensor_f32("t.q8").expect("deq");
        assert_eq!(all[0], -8.0); // 0.5 * -16
        assert_eq!(all[31], 7.5); // 0.5 * 15
        assert_eq!(all[32], -16.0); // 1.0 * -16
        assert_eq!(
            g.tensor_f32("t.f32").expect("f32"),
            vec![1.5, -2.0, 0.25, 8.0]
        );
        assert!(g.tensor_data("missing").is_err());
    }
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let full = build(3);
    for n in 0..full.len() {
        let err = GgufFile::from_bytes("cut.gguf", full[..n].to_vec())
            .expect_err("truncated file must fail");
        let msg = err.to_string();
        assert!(msg.contains("cut.gguf"), "{msg}");
        assert!(
            msg.contains("truncated") || msg.contains("magic"),
            "{n}: {msg}"
        );
    }
}

#[test]
fn corrupt_headers_are_named() {
    let mut bad = build(3);
    bad[0] = b'X';
    let e = GgufFile::from_bytes("m.gguf", bad)
        .expect_err("magic")
        .to_string();
    assert!(e.contains("bad magic"), "{e}");

    let mut v1 = build(3);
    v1[4..8].copy_from_slice(&1u32.to_le_bytes());
    let e = GgufFile::from_bytes("m.gguf", v1)
        .expect_err("version")
        .to_string();
    assert!(e.contains("unsupported GGUF version 1"), "{e}");

    // Huge array count must not allocate or panic.
    let mut huge = build(3);
    let pos = huge
        .windows(8)
        .position(|w| w == 2u64.to_le_bytes())
        .expect("find");
    let _ = pos;
    let key = b"tokenizer.ggml.tokens";
    let at = huge.windows(key.len()).position(|w| w == key).expect("key") + key.len() + 8;
    huge[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = GgufFile::from_bytes("m.gguf", huge)
        .expect_err("count")
        .to_string();
    assert!(e.contains("declares"), "{e}");

    // Unknown tensor type id.
    let mut ty = build(3);
    let key = b"t.f32";
    let at = ty.windows(key.len()).position(|w| w == key).expect("key") + key.len() + 4 + 8;
    ty[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
    let e = GgufFile::from_bytes("m.gguf", ty)
        .expect_err("type")
        .to_string();
    assert!(e.contains("unsupported tensor type id 99"), "{e}");

    // Random byte flips never panic.
    let base = build(3);
    let mut x: u64 = 0x9E3779B97F4A7C15;
    for _ in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut m = base.clone();
        let i = (x as usize) % m.len();
        m[i] = (x >> 32) as u8;
        let _ = GgufFile::from_bytes("flip.gguf", m);
    }
}

#[test]
fn dequantize_q4_0_by_hand() {
    // d = 2, nibbles: low = j, high = 15 - j.
    let blk = BlockQ4_0 {
        d: f16::from_f32(2.0),
        qs: std::array::from_fn(|j| (j as u8) | ((15 - j as u8) << 4)),
    };
    let mut out = [0f32; 32];
    dequantize_row(GgmlType::Q4_0, &blk.to_bytes(), &mut out).expect("q4_0");
    assert_eq!(out[0], -16.0); // (0 - 8) * 2
    assert_eq!(out[15], 14.0); // (15 - 8) * 2
    assert_eq!(out[16], 14.0); // high nibble of qs[0] = 15
    assert_eq!(out[31], -16.0); // high nibble of qs[15] = 0
}

#[test]
fn dequantize_q4_1_by_hand() {
    let blk = BlockQ4_1 {
        d: f16::from_f32(0.5),
        m: f16::from_f32(-1.0),
        qs: std::array::from_fn(|j| (j as u8) | (3 << 4)),
    };
    let bytes = blk.to_bytes();
    assert_eq!(bytes.len(), 20);
    assert_eq!(BlockQ4_1::from_bytes(&bytes), Some(blk));
    let mut out = [0f32; 32];
    dequantize_row(GgmlType::Q4_1, &bytes, &mut out).expect("q4_1");
    assert_eq!(out[0], -1.0);
    assert_eq!(out[5], 1.5); // 0.5*5 - 1
    assert_eq!(out[15], 6.5);
    assert!(out[16..].iter().all(|&v| v == 0.5)); // 0.5*3 - 1
}

#[test]
fn dequantize_q8_0_and_floats_by_hand() {
    let blk = BlockQ8_0 {
        d: f16::from_f32(0.25),
        qs: std::array::from_fn(|j| if j % 2 == 0 { -128 } else { 127 }),
    };
    let mut out = [0f32; 32];
    dequantize_row(GgmlType::Q8_0, &blk.to_bytes(), &mut out).expect("q8_0");
    assert_eq!((out[0], out[1]), (-32.0, 31.75));

    let mut o = [0f32; 2];
    let f16b: Vec<u8> = [1.5f32, -0.125]
        .iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect();
    dequantize_row(GgmlType::F16, &f16b, &mut o).expect("f16");
    assert_eq!(o, [1.5, -0.125]);
    let bf: Vec<u8> = [3.0f32, -7.5]
        .iter()
        .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
        .collect();
    dequantize_row(GgmlType::BF16, &bf, &mut o).expect("bf16");
    assert_eq!(o, [3.0, -7.5]);
}

#[test]
fn dequantize_q5_by_hand() {
    // Q5_0: d = 1, all low nibbles 1, high bit set for weight 0 and weight 16.
    let mut b = vec![0u8; 22];
    b[..2].copy_from_slice(&f16::from_f32(1.0).to_le_bytes());
    b[2..6].copy_from_slice(&(1u32 | (1 << 16)).to_le_bytes());
    for q in &mut b[6..] {
        *q = 0x11;
    }
    let mut out = [0f32; 32];
    dequantize_row(GgmlType::Q5_0, &b, &mut out).expect("q5_0");
    assert_eq!((out[0], out[1], out[16], out[17]), (1.0, -15.0, 1.0, -15.0));
    // Q5_1: d = 2, m = 1.
    let mut b = vec![0u8; 24];
    b[..2].copy_from_slice(&f16::from_f32(2.0).to_le_bytes());
    b[2..4].copy_from_slice(&f16::from_f32(1.0).to_le_bytes());
    b[4..8].copy_from_slice(&(1u32 << 31).to_le_bytes());
    dequantize_row(GgmlType::Q5_1, &b, &mut out).expect("q5_1");
    assert_eq!((out[0], out[31]), (1.0, 33.0));
}

#[test]
fn dequantize_k_quants_by_hand() {
    // Q4_K: d = 1, dmin = 0.5; sub-block 0 scale 2 min 4, sub-block 1 scale 3 min 1.
    let mut b = vec![0u8; 144];
    b[..2].copy_from_slice(&f16::from_f32(1.0).to_le_bytes());
    b[2..4].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
    b[4] = 2;
    b[5] = 3;
    b[8] = 4;
    b[9] = 1;
    b[16] = 0x75; // weight 0 low nibble 5, weight 32 high nibble 7
    let mut out = [0f32; 256];
    dequantize_row(GgmlType::Q4K, &b, &mut out).expect("q4k");
    assert_eq!(out[0], 2.0 * 5.0 - 0.5 * 4.0);
    assert_eq!(out[32], 3.0 * 7.0 - 0.5);
    assert_eq!(out[1], -2.0);
    // Q6_K: d = 0.5, scale[0] = -2; weight 0 = (ql low 3 | qh bits 1 << 4) - 32 = -13.
    let mut b = vec![0u8; 210];
    b[0] = 3;
    b[128] = 1;
    b[192] = (-2i8) as u8;
    b[208..210].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
    dequantize_row(GgmlType::Q6K, &b, &mut out).expect("q6k");
    assert_eq!(out[0], 0.5 * -2.0 * -13.0);
    assert_eq!(out[1], 0.5 * -2.0 * -32.0);
}

#[test]
fn dequantize_rejects_bad_lengths() {
    let mut out = [0f32; 32];
    assert!(dequantize_row(GgmlType::Q4_1, &[0u8; 19], &mut out).is_err());
    let mut out = [0f32; 31];
    assert!(dequantize_row(GgmlType::Q4_1, &[0u8; 20], &mut out).is_err());
    let mut out = [0f32; 256];
    assert!(dequantize_row(GgmlType::Q2K, &[0u8; 84], &mut out).is_err());
}

#[test]
fn smollm2_gguf_layout() {
    let g = GgufFile::open(smollm2_gguf()).expect("open smollm2 gguf");
    assert_eq!(g.architecture(), Some("llama"));
    assert_eq!(g.get_u32("llama.block_count"), Some(30));
    assert_eq!(g.get_u32("llama.embedding_length"), Some(576));
    assert_eq!(g.tensors().len(), 272);
    let count = |t: GgmlType| g.tensors().iter().filter(|i| i.dtype == t).count();
    assert_eq!(
        (
            count(GgmlType::Q8_0),
            count(GgmlType::F32),
            count(GgmlType::Q4_1)
        ),
        (1, 61, 210)
    );
    let (q, data) = g.tensor_data("blk.0.attn_q.weight").expect("q");
    assert_eq!(q.shape, vec![576, 576]);
    assert_eq!(data.len(), 576 * 576 / 32 * 20);
    let (k, _) = g.tensor_data("blk.0.attn_k.weight").expect("k");
    assert_eq!(k.shape, vec![576, 192]);
    let (e, _) = g.tensor_data("token_embd.weight").expect("embd");
    assert_eq!(e.shape, vec![576, 49152]);
    let norm = g.tensor_f32("blk.0.attn_norm.weight").expect("norm");
    assert_eq!(norm.len(), 576);
    assert!(norm.iter().all(|v| v.is_finite()) && norm.iter().any(|&v| v != 0.0));
    let w = g.tensor_f32("blk.0.ffn_down.weight").expect("down");
    let mean_abs = w.iter().map(|v| v.abs()).sum::<f32>() / w.len() as f32;
    assert!(mean_abs > 1e-3 && mean_abs < 1.0, "{mean_abs}");
}

#[test]
#[ignore = "prints the smollm2 GGUF layout for humans"]
fn dump_smollm2() {
    let g = GgufFile::open(smollm2_gguf()).expect("open");
    for (k, v) in g.metadata_entries() {
        let s = match v {
            GgufValue::Array(a) => format!("array[{}] of {:?}", a.len(), a.first()),
            GgufValue::String(s) if s.len() > 200 => format!("string({} chars)", s.len()),
            v => format!("{v:?}"),
        };
        println!("{k} = {s}");
    }
    for t in g.tensors() {
        println!("{} {:?} {} @{}", t.name, t.shape, t.dtype, t.offset);
    }
}

/// Expected values from `scripts/gguf_dequant_check.py`, an independent numpy
/// reader/dequantiser run over the same file (f64 sums, exact first/last values).
// The literals are the exact values numpy printed (f16 products, exactly representable).
#[allow(clippy::excessive_precision)]
#[test]
fn smollm2_dequant_matches_numpy() {
    let g = GgufFile::open(smollm2_gguf()).expect("open");
    let cases: [(&str, f64, [f32; 4], f32); 4] = [
        (
            "blk.0.attn_q.weight",
            59.22322082519531,
            [
                -0.0963134765625,
                0.1573486328125,
                -0.0963134765625,
                -0.73046875,
            ],
            -0.255859375,
        ),
        (
            "token_embd.weight",
            -15353.04449415207,
            [
                -0.10654449462890625,
                0.032978057861328125,
                0.048198699951171875,
                -0.022830963134765625,
            ],
            -0.0417022705078125,
        ),
        (
            "output_norm.weight",
            1038.33203125,
            [1.7578125, 1.8203125, 1.78125, 1.6015625],
            1.984375,
        ),
        (
            "blk.29.ffn_down.weight",
            49.83570861816406,
            [
                -0.2733154296875,
                0.186279296875,
                0.186279296875,
                0.04840087890625,
            ],
            0.056640625,
        ),
    ];
    for (name, sum, first, last) in cases {
        let w = g.tensor_f32(name).expect("dequant");
        let s: f64 = w.iter().map(|&v| v as f64).sum();
        assert!(
            (s - sum).abs() <= 1e-9 * sum.abs().max(1.0),
            "{name}: {s} vs {sum}"
        );
        assert_eq!(w[..4], first, "{name}");
        assert_eq!(w.last().copied(), Some(last), "{name}");
    }
}

#[test]
fn q8_0_quantize_roundtrip_error_is_bounded() {
    let mut x: u32 = 12345;
    let vals: Vec<f32> = (0..32)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 8) as f32 / (1u32 << 24) as f32 * 6.0 - 3.0
        })
        .collect();
    let blk = BlockQ8_0::quantize(&vals);
    let mut out = [0f32; 32];
    blk.dequantize(&mut out);
    let amax = vals.iter().fold(0f32, |a, v| a.max(v.abs()));
    for (a, b) in vals.iter().zip(&out) {
        // Half a quantisation step, plus the f16 rounding of d.
        assert!(
            (a - b).abs() <= amax / 127.0 * 0.5 + amax * 1e-3,
            "{a} vs {b}"
        );
    }
    assert!(out.iter().zip(&vals).any(|(a, b)| a != b));
}
