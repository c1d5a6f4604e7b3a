//! Token choice after the forward pass, on the device: greedy rows through a two-stage
//! argmax, random rows (temperature, top-k, top-p, min-p) through `sample_rows`; only rows
//! that need the CPU sampler (logprobs, penalties, bias, bans, processors, structured
//! output) copy their logits to the host.

use super::{ARGMAX_PART, ARGMAX_SLICES, CudaExecutor, LOGITS, SAMPLE_PRM, TOKENS_OUT};
use crate::device::KArg;
use crate::error::{CudaError, Result};
use crate::kernels::SAMPLE_THREADS;
use crate::step::StepMeta;
use ferrite_engine::{Batch, SeqInput, SeqOutput, sampler};

/// How a sampled row gets its token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Choice {
    /// The argmax of the raw logits.
    Greedy,
    /// `sample_rows` on the device.
    Draw,
    /// The shared CPU sampler over the downloaded logits.
    Host,
}

fn choice(s: &SeqInput) -> Choice {
    let p = &*s.sampling.params;
    let plain = p.logprobs.is_none()
        && !p.needs_history()
        && p.logit_bias.is_empty()
        && s.sampling.banned.is_empty();
    if !plain {
        Choice::Host
    } else if p.is_greedy() || p.temperature < sampler::MIN_TEMPERATURE {
        Choice::Greedy
    } else {
        Choice::Draw
    }
}

/// `sample_rows`'s parameters of a row: temperature, top_k, top_p, min_p and the uniform
/// number of (seed, position) that the CPU sampler would use.
fn draw_params(s: &SeqInput) -> [f32; 5] {
    let p = &*s.sampling.params;
    let seed = p.seed.unwrap_or_else(rand::random::<u64>);
    let u = sampler::uniform(seed, s.next_position()) as f32;
    [
        p.temperature,
        p.top_k as f32,
        p.top_p,
        p.min_p,
        u.min(1.0 - f32::EPSILON),
    ]
}

impl CudaExecutor {
    pub(super) fn sample(&mut self, batch: &Batch, m: &StepMeta) -> Result<Vec<SeqOutput>> {
        let sampled: Vec<&SeqInput> = batch.seqs.iter().filter(|s| s.sample).collect();
        if sampled.is_empty() {
            return Ok(Vec::new());
        }
        let choices: Vec<Choice> = sampled.iter().map(|s| choice(s)).collect();
        let out = self.scratch_ptr(TOKENS_OUT);
        if choices.contains(&Choice::Greedy) {
            self.launch_argmax(m.sampled, out)?;
        }
        let draws: Vec<usize> = (0..sampled.len())
            .filter(|&i| choices[i] == Choice::Draw)
            .collect();
        if !draws.is_empty() {
            let prm: Vec<f32> = draws
                .iter()
                .flat_map(|&i| draw_params(sampled[i]))
                .collect();
            let rows: Vec<i32> = draws.iter().map(|&i| i as i32).collect();
            self.launch_draws(&prm, &rows, out + (m.sampled * 4) as u64)?;
        }
        let tokens: Vec<i32> = self.gpu.download(out, m.sampled + draws.len())?;
        let v = self.cfg.vocab;
        let logits = self.scratch_ptr(LOGITS);
        let mut drawn = tokens[m.sampled..].iter();
        let mut outputs = Vec::with_capacity(sampled.len());
        for (i, s) in sampled.iter().enumerate() {
            let (token, logprob) = match choices[i] {
                Choice::Greedy => (tokens[i] as u32, None),
                Choice::Draw => (drawn.next().copied().unwrap_or(0) as u32, None),
                Choice::Host => {
                    let mut row: Vec<f32> = self.gpu.download(logits + (i * v * 4) as u64, v)?;
                    sampler::try_sample(&mut row, &s.sampling, s.next_position())
                        .map_err(|e| CudaError::InvalidBatch(e.to_string()))?
                }
            };
            outputs.push(SeqOutput {
                request_id: s.request_id,
                token,
                logprob,
            });
        }
        Ok(outputs)
    }

    /// Greedy token of each of the first `rows` logits rows into `out` (i32 each).
    fn launch_argmax(&self, rows: usize, out: u64) -> Result<()> {
        let part_v = self.scratch_ptr(ARGMAX_PART);
        let part_i = part_v + (rows * ARGMAX_SLICES * 4) as u64;
        self.gpu.launch(
            &self.gpu.k.argmax_part,
            (rows as u32, ARGMAX_SLICES as u32, 1),
            256,
            &[
                KArg::U64(self.scratch_ptr(LOGITS)),
                KArg::I32(self.cfg.vocab as i32),
                KArg::U64(part_v),
                KArg::U64(part_i),
            ],
        )?;
        self.gpu.launch(
            &self.gpu.k.argmax_rows,
            (rows as u32, 1, 1),
            64,
            &[
                KArg::U64(part_v),
                KArg::U64(part_i),
                KArg::I32(ARGMAX_SLICES as i32),
                KArg::U64(out),
            ],
        )
    }

    /// One draw per `rows[j]` (a logits row) with `prm[5j..5j+5]`, into `out[j]`.
    fn launch_draws(&self, prm: &[f32], rows: &[i32], out: u64) -> Result<()> {
        let p = self.scratch_ptr(SAMPLE_PRM);
        let r = p + (prm.len() * 4) as u64;
        self.gpu.upload(p, prm)?;
        self.gpu.upload(r, rows)?;
        self.gpu.launch(
            &self.gpu.k.sample_rows,
            (rows.len() as u32, 1, 1),
            SAMPLE_THREADS,
            &[
                KArg::U64(self.scratch_ptr(LOGITS)),
                KArg::I32(self.cfg.vocab as i32),
                KArg::U64(r),
                KArg::U64(p),
                KArg::U64(out),
            ],
        )
    }

    /// Draws from `logits` (`[rows, vocab]`, uploaded into the logits buffer; empty: the
    /// buffer as the last call left it) with `sample_rows`, one draw per `(row,
    /// [temperature, top_k, top_p, min_p, u])`: the device sampler on chosen inputs, for
    /// checks against the CPU sampler.
    #[cfg(feature = "testing")]
    pub fn draw_from(&mut self, logits: &[f32], draws: &[(usize, [f32; 5])]) -> Result<Vec<u32>> {
        let v = self.cfg.vocab;
        let rows = logits.len() / v.max(1);
        let need = crate::step::StepMeta {
            sampled: rows.max(draws.len()),
            ..Default::default()
        };
        self.ensure_scratch(&need)?;
        if !logits.is_empty() {
            self.gpu.upload(self.scratch_ptr(LOGITS), logits)?;
        }
        let mut got = Vec::with_capacity(draws.len());
        // In chunks of `rows` draws: the parameter buffer holds one row's worth per row.
        let cap = self.scratch.cap_rows;
        for chunk in draws.chunks(cap) {
            let prm: Vec<f32> = chunk.iter().flat_map(|d| d.1).collect();
            let idx: Vec<i32> = chunk.iter().map(|d| d.0 as i32).collect();
            let out = self.scratch_ptr(TOKENS_OUT);
            self.launch_draws(&prm, &idx, out)?;
            let t: Vec<i32> = self.gpu.download(out, chunk.len())?;
            got.extend(t.into_iter().map(|x| x as u32));
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_engine::SamplingContext;
    use ferrite_protocol::SamplingParams;
    use std::sync::Arc;

    fn seq(p: SamplingParams) -> SeqInput {
        SeqInput {
            request_id: Default::default(),
            tokens: vec![7],
            start_pos: 41,
            block_table: vec![ferrite_protocol::BlockId(0); 3],
            slot_mapping: vec![41],
            sample: true,
            embeds: None,
            sampling: SamplingContext {
                params: Arc::new(p),
                ..Default::default()
            },
        }
    }

    #[test]
    fn rows_go_to_the_device_unless_they_need_the_cpu_sampler() {
        assert_eq!(choice(&seq(SamplingParams::default())), Choice::Greedy);
        let tiny = SamplingParams {
            temperature: sampler::MIN_TEMPERATURE / 2.0,
            ..Default::default()
        };
        assert_eq!(choice(&seq(tiny)), Choice::Greedy);
        let random = SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.9,
            min_p: 0.05,
            ..Default::default()
        };
        assert_eq!(choice(&seq(random.clone())), Choice::Draw);
        let host = [
            SamplingParams {
                logprobs: Some(2),
                ..random.clone()
            },
            SamplingParams {
                presence_penalty: 0.5,
                ..random.clone()
            },
            SamplingParams {
                logit_bias: [(5, 1.0)].into_iter().collect(),
                ..Default::default()
            },
        ];
        for p in host {
            assert_eq!(choice(&seq(p)), Choice::Host);
        }
        let mut banned = seq(random);
        banned.sampling.banned = vec![2];
        assert_eq!(choice(&banned), Choice::Host);
    }

    #[test]
    fn draw_parameters_use_the_cpu_samplers_uniform_number() {
        let p = SamplingParams {
            temperature: 0.7,
            top_k: 12,
            top_p: 0.5,
            min_p: 0.1,
            seed: Some(99),
            ..Default::default()
        };
        let s = seq(p);
        let [t, k, tp, mp, u] = draw_params(&s);
        assert_eq!((t, k, tp, mp), (0.7, 12.0, 0.5, 0.1));
        assert_eq!(u, sampler::uniform(99, 42) as f32);
        assert!((0.0..1.0).contains(&u));
    }
}
