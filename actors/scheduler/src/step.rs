//! One scheduling step: build a batch, then apply its output (or its failure).

use crate::scheduler::Scheduler;
use ferrite_engine::{Batch, BatchOutput, SeqInput, SeqOutput, slot_for};
use ferrite_protocol::{EngineOutput, RequestId};
use std::collections::HashMap;

impl Scheduler {
    /// Builds the next batch: one decode token for each running sequence (preempting the
    /// most recently admitted ones when blocks run out), then prefill chunks of running and
    /// newly admitted sequences in FCFS order within `max_batched_tokens`. `None` when there
    /// is nothing to run or a batch is outstanding.
    pub fn schedule(&mut self) -> Option<Batch> {
        if self.outstanding {
            return None;
        }
        self.reap_cancelled();
        self.admit_ready();
        self.discard_stray_evictions();
        let mut budget = self.cfg.max_batched_tokens;
        let mut seqs = Vec::new();
        self.schedule_decodes(&mut budget, &mut seqs);
        self.schedule_running_prefills(&mut budget, &mut seqs);
        self.admit_waiting(&mut budget, &mut seqs);
        if seqs.is_empty() {
            return None;
        }
        let batch = Batch { seqs };
        self.stats.computed_tokens += batch.num_tokens() as u64;
        self.outstanding = true;
        Some(batch)
    }

    fn schedule_decodes(&mut self, budget: &mut usize, out: &mut Vec<SeqInput>) {
        let mut i = 0;
        while i < self.running.len() && *budget > 0 {
            let id = self.running[i];
            let Some(seq) = self.seqs.get_mut(&id) else {
                i += 1;
                continue;
            };
            if !seq.prefill_done {
                i += 1;
                continue;
            }
            let new_len = seq.tokens.len();
            let grown = match seq.blocks.as_mut() {
                Some(blocks) => self.pool.append_slot(blocks, new_len).is_ok(),
                None => false,
            };
            if grown {
                if let Some(input) = self.input_for(id, 1) {
                    out.push(input);
                    *budget -= 1;
                }
                i += 1;
                continue;
            }
            // Out of blocks: preempt the most recently admitted sequence and retry.
            let Some(victim) = self.running.pop() else {
                break;
            };
            tracing::debug!(request_id = %victim, "preempting (out of KV blocks)");
            self.stats.preemptions += 1;
            self.requeue_front(victim);
            if victim == id {
                break;
            }
        }
    }

    fn schedule_running_prefills(&mut self, budget: &mut usize, out: &mut Vec<SeqInput>) {
        let ids: Vec<RequestId> = self.running.clone();
        for id in ids {
            if *budget == 0 {
                return;
            }
            let Some(seq) = self.seqs.get(&id) else {
                continue;
            };
            if seq.prefill_done || self.is_onboarding(&id) {
                continue;
            }
            let n = seq.pending().min(*budget).min(self.cfg.max_prefill_chunk);
            if let Some(input) = self.input_for(id, n) {
                *budget -= n;
                out.push(input);
            }
        }
    }

    fn admit_waiting(&mut self, budget: &mut usize, out: &mut Vec<SeqInput>) {
        let bs = self.cfg.block_size as usize;
        while *budget > 0 && self.running.len() < self.cfg.max_num_seqs {
            let Some(&id) = self.waiting.front() else {
                return;
            };
            let Some(seq) = self.seqs.get_mut(&id) else {
                self.waiting.pop_front();
                continue;
            };
            seq.update_hashes(bs);
            // Always compute the last token so there are logits to sample.
            let reusable = (seq.tokens.len() - 1) / bs;
            let hashes = &seq.hashes[..reusable.min(seq.hashes.len())];
            let (g1, lower) = crate::offload::split_match(&self.pool, self.tiers.as_ref(), hashes);
            match self.pool.allocate_prompt(&hashes[..g1], seq.tokens.len()) {
                Ok(blocks) => {
                    let hit_tokens = blocks.num_cached_blocks() * bs;
                    seq.num_computed = hit_tokens;
                    seq.blocks = Some(blocks);
                    seq.prefill_done = false;
                    if seq.cached_tokens.is_none() {
                        seq.cached_tokens = Some(hit_tokens as u32);
                    }
                    self.stats.prefix_hit_tokens += hit_tokens as u64;
                    let n = seq.pending().min(*budget).min(self.cfg.max_prefill_chunk);
                    self.waiting.pop_front();
                    self.running.push(id);
                    if self.begin_onboard(id, g1, lower) {
                        continue; // runs once its blocks are copied back (offload.rs)
                    }
                    if let Some(input) = self.input_for(id, n) {
                        *budget -= n;
                        out.push(input);
                    }
                }
                Err(_) => return, // FCFS: the head waits for blocks
            }
        }
    }

    /// The input computing the next `n` tokens of `id` (its blocks must cover them).
    pub(crate) fn input_for(&self, id: RequestId, n: usize) -> Option<SeqInput> {
        let seq = self.seqs.get(&id)?;
        let blocks = seq.blocks.as_ref()?;
        let bs = self.cfg.block_size;
        let start = seq.num_computed;
        let end = start + n;
        let table = blocks.blocks().get(..self.pool.blocks_for(end))?.to_vec();
        let slots: Option<Vec<u32>> = (start..end)
            .map(|p| slot_for(&table, bs, p as u32))
            .collect();
        let Some(slot_mapping) = slots else {
            tracing::error!(request_id = %id, "block table does not cover the step");
            return None;
        };
        let sample = end == seq.tokens.len();
        let mut sampling = seq.sampling_context();
        if !sample {
            sampling.history = None; // nothing is sampled from a non-final chunk
        }
        Some(SeqInput {
            request_id: id,
            tokens: seq.tokens[start..end].to_vec(),
            start_pos: start as u32,
            block_table: table,
            slot_mapping,
            sample,
            embeds: seq.embeds.clone(),
            sampling,
        })
    }

    /// Applies a step's output: records computed tokens, commits newly full blocks to the
    /// prefix cache, appends sampled tokens, checks stop conditions, frees finished
    /// sequences. Returns one chunk per sampled, still-live sequence, in batch order: one
    /// token each (a stop token is included in `token_ids`), `cached_tokens` on the first
    /// chunk of a request, `finish_reason` on its last.
    pub fn on_output(&mut self, batch: &Batch, out: BatchOutput) -> Vec<(RequestId, EngineOutput)> {
        self.outstanding = false;
        let bs = self.cfg.block_size as usize;
        let max_seq_len = self.cfg.max_seq_len();
        let mut sampled: HashMap<RequestId, SeqOutput> =
            out.outputs.into_iter().map(|o| (o.request_id, o)).collect();
        let mut chunks = Vec::new();
        for input in &batch.seqs {
            let id = input.request_id;
            let Some(seq) = self.seqs.get_mut(&id) else {
                continue;
            };
            if seq.cancelled || seq.num_computed != input.start_pos as usize {
                continue;
            }
            seq.num_computed += input.tokens.len();
            seq.update_hashes(bs);
            let full = (seq.num_computed / bs).min(seq.hashes.len());
            if let Some(blocks) = seq.blocks.as_mut() {
                self.pool.commit_full_blocks(blocks, &seq.hashes[..full]);
            }
            if !input.sample {
                continue;
            }
            let Some(o) = sampled.remove(&id) else {
                tracing::error!(request_id = %id, "executor returned no token; recomputing");
                self.running.retain(|r| *r != id);
                self.requeue_front(id);
                continue;
            };
            seq.prefill_done = true;
            let finish = seq.push_token(o.token, max_seq_len);
            let cached_tokens = if seq.sent_first {
                None
            } else {
                seq.sent_first = true;
                Some(seq.cached_tokens.unwrap_or(0))
            };
            chunks.push((
                id,
                EngineOutput {
                    token_ids: vec![o.token],
                    logprobs: o.logprob.into_iter().collect(),
                    finish_reason: finish,
                    cached_tokens,
                },
            ));
            if finish.is_some() {
                self.finish_seq(id);
            }
        }
        self.reap_cancelled();
        chunks
    }

    /// The step failed (executor error, panic, engine gone): the batch's sequences are
    /// requeued at the front for recompute, keeping their generated tokens.
    pub fn on_step_failed(&mut self, batch: &Batch) {
        self.outstanding = false;
        for input in batch.seqs.iter().rev() {
            let id = input.request_id;
            if self.running.contains(&id) {
                self.running.retain(|r| *r != id);
                self.requeue_front(id);
            }
        }
        self.reap_cancelled();
    }
}
