//! Speed of the CUDA executor on Llama-3.1-8B shapes with seeded random bf16 weights made
//! on the GPU (run through the device tool). Prompt ids come from the real Llama-3.1
//! tokenizer; generation ignores EOS.
//!
//! Usage: cuda_bench TOKENIZER_JSON [decode] [prefill] [serve:ISL:OSL:N]...
//!   invariant:0|1     batch-invariant fixed-row GEMMs off/on (default on)
//!   mma:N             steps of <= N tokens use the tensor-core skinny GEMM (0: cuBLAS only)
//!   mmav:S:T:R        tensor-core GEMM instances (kernels::GEMM_MMA_VARIANTS indices): S up
//!                     to R tokens, T above
//!   pdl:0|1           programmatic dependent launch off/on (default on)
//!   sample:T:K:P      serve sections sample with temperature T, top-k K, top-p P (default greedy)
//!   tune              re-tune the GEMM picks and print them (they are tuned at start-up)
//!   gemm              GEMM micro-benchmark: cuBLAS vs skinny GEMM on the decode shapes
//!   graphs:0|1        CUDA graphs for decode steps off/on (default on)
//!   step:N            a 128-token prefill and N decode steps with the current settings (for ncu)
//!   decode            batch-1, invariant GEMMs on/off x CUDA graphs on/off: 128-token prompt, 256 decode steps; inter-token latency
//!   prefill           one 4096-token prompt (and 1024) in one step; tokens/s
//!   kvcopy            512 KV blocks copied out of and back into the cache; GB/s
//!   serve:1024:256:512  N requests through ferrite-scheduler's `Scheduler` (continuous
//!                     batching, chunked prefill); output and total tokens/s
#![allow(clippy::unwrap_used, clippy::expect_used)]

use anyhow::{Context, Result};
use ferrite_cuda::{CudaConfig, CudaExecutor, CudaOptions, Dtype};
use ferrite_engine::{Batch, Executor, SamplingContext, SeqInput, slot_for};
use ferrite_protocol::{
    BlockId, DpRank, PreprocessedRequest, RequestId, SamplingParams, StopConditions,
};
use std::time::Instant;

mod gemm;

const TEXT: &str = "In the beginning of the long winter the village gathered around the fire \
and told stories of travellers who had crossed the mountains, of rivers that changed their course, \
of markets full of spices and cloth, and of the quiet engineers who built bridges that still stand. ";

fn prompt_ids(tok: &ferrite_model::Tokenizer, n: usize, variant: usize) -> Result<Vec<u32>> {
    let mut text = format!("Request {variant}. ");
    let mut ids = Vec::new();
    while ids.len() < n {
        text.push_str(TEXT);
        text.push_str(&format!("Chapter {} of story {variant}. ", ids.len()));
        ids = tok.encode(&text, true)?;
    }
    ids.truncate(n);
    Ok(ids)
}

fn seq(tokens: &[u32], start: u32, blocks: &[BlockId]) -> SeqInput {
    SeqInput {
        request_id: RequestId::default(),
        tokens: tokens.to_vec(),
        start_pos: start,
        block_table: blocks.to_vec(),
        slot_mapping: (0..tokens.len() as u32)
            .map(|i| slot_for(blocks, 16, start + i).unwrap_or(0))
            .collect(),
        sample: true,
        embeds: None,
        sampling: SamplingContext::default(),
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn decode(ex: &mut CudaExecutor, tok: &ferrite_model::Tokenizer, cfg: &CudaConfig) -> Result<()> {
    let prompt = prompt_ids(tok, 128, 0)?;
    let blocks: Vec<BlockId> = (0..24).map(BlockId).collect();
    let mut out = ex.forward(&Batch {
        seqs: vec![seq(&prompt, 0, &blocks)],
    })?;
    let mut lat = Vec::new();
    for pos in prompt.len() as u32..prompt.len() as u32 + 256 {
        let t = out.outputs[0].token;
        let t0 = Instant::now();
        out = ex.forward(&Batch {
            seqs: vec![seq(&[t], pos, &blocks)],
        })?;
        lat.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let steady = &mut lat[8..].to_vec();
    let med = pct(steady, 0.5);
    let p90 = pct(steady, 0.9);
    let bytes = cfg.decode_weight_bytes(Dtype::Bf16) as f64;
    println!(
        "decode batch 1 (ctx 128..384): ITL median {med:.3} ms, p90 {p90:.3} ms -> {:.1} tok/s; weights {:.2} GB -> {:.2} TB/s ({:.0} % of 3.35 TB/s)",
        1e3 / med,
        bytes / 1e9,
        bytes / (med * 1e-3) / 1e12,
        100.0 * bytes / (med * 1e-3) / 3.35e12
    );
    Ok(())
}

fn steps(ex: &mut CudaExecutor, tok: &ferrite_model::Tokenizer, n: u32) -> Result<()> {
    let prompt = prompt_ids(tok, 128, 0)?;
    let blocks: Vec<BlockId> = (0..24).map(BlockId).collect();
    let mut out = ex.forward(&Batch {
        seqs: vec![seq(&prompt, 0, &blocks)],
    })?;
    for pos in prompt.len() as u32..prompt.len() as u32 + n {
        let t = out.outputs[0].token;
        out = ex.forward(&Batch {
            seqs: vec![seq(&[t], pos, &blocks)],
        })?;
    }
    ex.synchronize()?;
    Ok(())
}

/// KV block copies out of and into the cache (offload tiers, KV transfer): GB/s.
fn kvcopy(ex: &mut CudaExecutor) -> Result<()> {
    let layout = ex.kv_block_layout().context("layout")?;
    let blocks: Vec<BlockId> = (0..512).map(BlockId).collect();
    let mut buf = vec![0u8; blocks.len() * layout.bytes_per_block];
    for round in 0..3 {
        let t0 = Instant::now();
        ex.read_kv_blocks(&blocks, &mut buf)?;
        let r = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        ex.write_kv_blocks(&blocks, &buf)?;
        let w = t0.elapsed().as_secs_f64();
        println!(
            "kv copy round {round}: {} blocks x {} B = {:.2} GB: read {:.1} GB/s, write {:.1} GB/s",
            blocks.len(),
            layout.bytes_per_block,
            buf.len() as f64 / 1e9,
            buf.len() as f64 / r / 1e9,
            buf.len() as f64 / w / 1e9
        );
    }
    Ok(())
}

fn prefill(ex: &mut CudaExecutor, tok: &ferrite_model::Tokenizer, cfg: &CudaConfig) -> Result<()> {
    for n in [1024usize, 4096] {
        let prompt = prompt_ids(tok, n, 1)?;
        let blocks: Vec<BlockId> = (0..(n / 16 + 1) as u32).map(BlockId).collect();
        let mut times = Vec::new();
        for _ in 0..4 {
            let t0 = Instant::now();
            ex.forward(&Batch {
                seqs: vec![seq(&prompt, 0, &blocks)],
            })?;
            times.push(t0.elapsed().as_secs_f64());
        }
        let t = pct(&mut times[1..].to_vec(), 0.5);
        let flops = 2.0 * (cfg.layer_params() as f64 * n as f64 + (cfg.vocab * cfg.hidden) as f64);
        println!(
            "prefill {n} tokens: {:.1} ms -> {:.0} tok/s ({:.0} TFLOP/s counting weight GEMMs only)",
            t * 1e3,
            n as f64 / t,
            flops / t / 1e12
        );
    }
    Ok(())
}

fn serve(
    ex: &mut CudaExecutor,
    tok: &ferrite_model::Tokenizer,
    isl: usize,
    osl: usize,
    n: usize,
    sampling: &SamplingParams,
) -> Result<()> {
    let mut sc = ferrite_scheduler::SchedulerConfig::from_executor(&ex.info());
    sc.max_num_seqs = 256;
    sc.max_batched_tokens = 8192;
    sc.max_prefill_chunk = 8192;
    let mut s =
        ferrite_scheduler::Scheduler::new(sc.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let base = prompt_ids(tok, isl + 64, 2)?;
    for i in 0..n {
        // Distinct prompts (no prefix-cache hits): rotate the token window per request.
        let mut ids = prompt_ids(tok, 8, i)?;
        ids.extend_from_slice(&base[(i % 64)..(i % 64) + isl - 8]);
        s.enqueue(PreprocessedRequest {
            request_id: RequestId::new(),
            model: "bench".into(),
            token_ids: ids,
            generated_so_far: 0,
            sampling: sampling.clone(),
            stop: StopConditions {
                max_tokens: osl as u32,
                ignore_eos: true,
                ..Default::default()
            },
            dp_rank: DpRank(0),
            extra_hash_key: 0,
            prompt_embeds: None,
        })
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    }
    let t0 = Instant::now();
    let (mut out_toks, mut finished, mut steps, mut first_done) = (0usize, 0usize, 0usize, None);
    while let Some(batch) = s.schedule() {
        let out = ex.forward(&batch)?;
        steps += 1;
        for (_, o) in s.on_output(&batch, out) {
            out_toks += o.token_ids.len();
            if o.finish_reason.is_some() {
                finished += 1;
                first_done.get_or_insert(t0.elapsed().as_secs_f64());
            }
        }
    }
    let el = t0.elapsed().as_secs_f64();
    println!(
        "serve {n} x {isl} in / {osl} out (max_num_seqs {}, {} batched tokens): {finished} finished, {out_toks} output tokens in {el:.1} s, {steps} steps -> {:.0} output tok/s, {:.0} total tok/s",
        sc.max_num_seqs,
        sc.max_batched_tokens,
        out_toks as f64 / el,
        (out_toks + n * isl) as f64 / el
    );
    Ok(())
}

fn label(invariant: bool, graphs: bool) -> String {
    format!(
        "{}, {}",
        if invariant {
            "batch-invariant GEMMs"
        } else {
            "not invariant"
        },
        if graphs {
            "CUDA graphs"
        } else {
            "eager launches"
        }
    )
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let tp = args
        .next()
        .context("usage: cuda_bench TOKENIZER_JSON [decode] [prefill] [serve:ISL:OSL:N]")?;
    let tok = ferrite_model::Tokenizer::from_file(std::path::Path::new(&tp))?;
    let what: Vec<String> = args.collect();
    let cfg = CudaConfig::llama31_8b(32, 8192);
    let blocks: u32 = std::env::var("KV_BLOCKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24_000);
    let t0 = Instant::now();
    let mut ex = CudaExecutor::random(
        cfg.clone(),
        42,
        CudaOptions {
            num_kv_blocks: blocks,
            dtype: Some(Dtype::Bf16),
            ..Default::default()
        },
    )?;
    println!(
        "{}: Llama-3.1-8B shapes, bf16 random weights made on the GPU in {:.1} s, {blocks} KV blocks of 16",
        ex.device_name(),
        t0.elapsed().as_secs_f64()
    );
    let mut sampling = SamplingParams::default();
    for w in &what {
        let t = Instant::now();
        match w.split(':').collect::<Vec<_>>().as_slice() {
            ["decode"] => {
                for (inv, graphs) in [(true, true), (true, false), (false, true), (false, false)] {
                    ex.set_batch_invariant(inv);
                    ex.set_cuda_graphs(graphs);
                    print!("[{}] ", label(inv, graphs));
                    decode(&mut ex, &tok, &cfg)?;
                }
                ex.set_batch_invariant(true);
                ex.set_cuda_graphs(true);
            }
            ["invariant", on] => ex.set_batch_invariant(*on == "1"),
            ["mma", r] => ex.set_mma_max_rows(r.parse()?),
            ["mmav", v, t, r] => ex.set_mma_variants(v.parse()?, t.parse()?, r.parse()?),
            ["pdl", on] => ex.set_pdl(*on == "1"),
            ["tune"] => {
                ex.tune_gemms()?;
                if let Some(p) = ex.gemm_plan() {
                    println!("GEMM plan (rows:invariant/free):\n{}", p.describe());
                    for s in &p.shapes {
                        let us: Vec<String> = s
                            .micros
                            .iter()
                            .map(|(a, b)| format!("{a:.0}/{b:.0}"))
                            .collect();
                        println!("  [{} x {}] µs {}", s.out, s.inner, us.join(" "));
                    }
                }
            }
            ["gemm"] => gemm::run()?,
            ["graphs", on] => ex.set_cuda_graphs(*on == "1"),
            ["step", n] => steps(&mut ex, &tok, n.parse()?)?,
            ["prefill"] => prefill(&mut ex, &tok, &cfg)?,
            ["kvcopy"] => kvcopy(&mut ex)?,
            ["serve", i, o, n] => {
                serve(&mut ex, &tok, i.parse()?, o.parse()?, n.parse()?, &sampling)?
            }
            ["sample", t, k, p] => {
                sampling = SamplingParams {
                    temperature: t.parse()?,
                    top_k: k.parse()?,
                    top_p: p.parse()?,
                    ..Default::default()
                }
            }
            _ => anyhow::bail!("unknown section {w}"),
        }
        eprintln!("  ({w} took {:.1} s)", t.elapsed().as_secs_f64());
    }
    Ok(())
}
