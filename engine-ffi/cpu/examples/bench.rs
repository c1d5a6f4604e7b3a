//! Prefill and decode throughput of the CPU backend at several batch sizes.
//!
//! `cargo run --release -p ferrite-cpu --example bench -- --model PATH [--prompt 128]
//!  [--gen 32] [--batches 1,8,32] [--threads 0] [--f32-activations off|on|both]`
//!
//! `both` runs the quantised-activation path and the float32-activation path in one
//! process and prints the float32 path's speed as a ratio of the default's.

use ferrite_cpu::{CpuExecutor, CpuOptions};
use ferrite_engine::{Batch, Executor, SamplingContext, SeqInput, slot_for};
use ferrite_protocol::{BlockId, RequestId};
use std::time::Instant;

struct Args {
    model: String,
    prompt: usize,
    generate: usize,
    batches: Vec<usize>,
    threads: usize,
    /// Which activation paths to run: `[false]`, `[true]` or `[false, true]`.
    f32_activations: Vec<bool>,
}

fn parse() -> anyhow::Result<Args> {
    let mut a = Args {
        model: String::new(),
        prompt: 128,
        generate: 32,
        batches: vec![1, 8, 32],
        threads: 0,
        f32_activations: vec![false],
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{k} needs a value"))?;
        match k.as_str() {
            "--model" => a.model = v,
            "--prompt" => a.prompt = v.parse()?,
            "--gen" => a.generate = v.parse()?,
            "--threads" => a.threads = v.parse()?,
            "--f32-activations" => {
                a.f32_activations = match v.as_str() {
                    "off" => vec![false],
                    "on" => vec![true],
                    "both" => vec![false, true],
                    _ => anyhow::bail!("--f32-activations takes off, on or both"),
                }
            }
            "--batches" => a.batches = v.split(',').map(str::parse).collect::<Result<_, _>>()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    anyhow::ensure!(!a.model.is_empty(), "--model PATH is required");
    Ok(a)
}

struct Seq {
    id: RequestId,
    tokens: Vec<u32>,
    blocks: Vec<BlockId>,
    cached: usize,
}

fn input(s: &mut Seq, next_block: &mut u32, bs: u32) -> SeqInput {
    let end = s.tokens.len();
    while s.blocks.len() * (bs as usize) < end {
        s.blocks.push(BlockId(*next_block));
        *next_block += 1;
    }
    let inp = SeqInput {
        request_id: s.id,
        tokens: s.tokens[s.cached..end].to_vec(),
        start_pos: s.cached as u32,
        block_table: s.blocks.clone(),
        slot_mapping: (s.cached..end)
            .filter_map(|p| slot_for(&s.blocks, bs, p as u32))
            .collect(),
        sample: true,
        embeds: None,
        sampling: SamplingContext::default(),
    };
    s.cached = end;
    inp
}

fn main() -> anyhow::Result<()> {
    let a = parse()?;
    let mut runs = Vec::new();
    for &f32_activations in &a.f32_activations {
        println!("f32_activations: {f32_activations}");
        runs.push(run(&a, f32_activations)?);
    }
    if let [base, f32s] = runs.as_slice() {
        println!("| batch | prefill f32/quantised | decode f32/quantised |");
        println!("|---|---|---|");
        for ((b, p0, d0), (_, p1, d1)) in base.iter().zip(f32s) {
            println!("| {b} | {:.2} | {:.2} |", p1 / p0, d1 / d0);
        }
    }
    Ok(())
}

/// One table; returns (batch, prefill tok/s, decode tok/s) per batch size.
fn run(a: &Args, f32_activations: bool) -> anyhow::Result<Vec<(usize, f64, f64)>> {
    let mut rows = Vec::new();
    let bs = 16u32;
    let max_b = a.batches.iter().copied().max().unwrap_or(1);
    let per_seq = (a.prompt + a.generate).div_ceil(bs as usize) + 1;
    let opts = CpuOptions {
        num_kv_blocks: (max_b * per_seq) as u32,
        block_size: bs,
        threads: a.threads,
        f32_activations,
    };
    let t0 = Instant::now();
    let mut ex = CpuExecutor::load(std::path::Path::new(&a.model), opts)?;
    println!("loaded {} in {:.2}s", a.model, t0.elapsed().as_secs_f64());
    let vocab = ex.info().vocab_size;
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    println!("| batch | prompt | prefill tok/s | decode steps | decode tok/s | ms/step |");
    println!("|---|---|---|---|---|---|");
    for &b in &a.batches {
        let mut next_block = 0u32;
        let mut seqs: Vec<Seq> = (0..b)
            .map(|_| Seq {
                id: RequestId::new(),
                tokens: (0..a.prompt)
                    .map(|_| {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        (rng % vocab as u64) as u32
                    })
                    .collect(),
                blocks: Vec::new(),
                cached: 0,
            })
            .collect();
        let batch = Batch {
            seqs: seqs
                .iter_mut()
                .map(|s| input(s, &mut next_block, bs))
                .collect(),
        };
        let t = Instant::now();
        let out = ex.forward(&batch)?;
        let prefill = t.elapsed().as_secs_f64();
        for (s, o) in seqs.iter_mut().zip(&out.outputs) {
            s.tokens.push(o.token);
        }
        let t = Instant::now();
        for _ in 0..a.generate {
            let batch = Batch {
                seqs: seqs
                    .iter_mut()
                    .map(|s| input(s, &mut next_block, bs))
                    .collect(),
            };
            let out = ex.forward(&batch)?;
            for (s, o) in seqs.iter_mut().zip(&out.outputs) {
                s.tokens.push(o.token);
            }
        }
        let decode = t.elapsed().as_secs_f64();
        println!(
            "| {b} | {} | {:.1} | {} | {:.1} | {:.2} |",
            a.prompt,
            (b * a.prompt) as f64 / prefill,
            a.generate,
            (b * a.generate) as f64 / decode,
            decode * 1000.0 / a.generate as f64
        );
        rows.push((
            b,
            (b * a.prompt) as f64 / prefill,
            (b * a.generate) as f64 / decode,
        ));
    }
    Ok(rows)
}
