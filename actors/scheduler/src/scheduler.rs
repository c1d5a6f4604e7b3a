//! [`Scheduler`]: request admission, queues and bookkeeping. The per-step logic
//! (`schedule`, `on_output`, `on_step_failed`) is in `step.rs`.

use crate::config::SchedulerConfig;
use crate::error::{Result, SchedulerError};
use crate::sequence::Sequence;
use ferrite_kv::BlockPool;
use ferrite_protocol::{
    BlockHash, ErrorInfo, ErrorKind, KvEvent, KvEventData, PreprocessedRequest, RequestId,
    is_embed_token,
};
use std::collections::{HashMap, VecDeque};

/// Counts a worker reports (see `WorkerLoad`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    pub waiting: usize,
    pub running: usize,
    pub active_blocks: usize,
    pub total_blocks: usize,
    /// Prompt tokens of running sequences not yet prefilled.
    pub pending_prefill_tokens: usize,
    /// Preemptions since start.
    pub preemptions: u64,
    /// Prompt tokens skipped thanks to the prefix cache, since start.
    pub prefix_hit_tokens: u64,
    /// Tokens handed to the executor, since start.
    pub computed_tokens: u64,
}

/// Continuous batching for one engine. One batch is outstanding at a time: after
/// [`Scheduler::schedule`] returns a batch, call [`Scheduler::on_output`] or
/// [`Scheduler::on_step_failed`] with it before the next `schedule` (which returns `None`
/// meanwhile).
#[derive(Debug)]
pub struct Scheduler {
    pub(crate) cfg: SchedulerConfig,
    pub(crate) pool: BlockPool,
    pub(crate) seqs: HashMap<RequestId, Sequence>,
    /// FCFS; preempted and failed sequences go back to the front.
    pub(crate) waiting: VecDeque<RequestId>,
    /// In admission order.
    pub(crate) running: Vec<RequestId>,
    /// Remote prefills that finished while `max_num_seqs` were running: they hold their
    /// blocks and join `running` first when a slot frees (remote.rs).
    pub(crate) ready: VecDeque<RequestId>,
    pub(crate) outstanding: bool,
    pub(crate) draining: bool,
    pub(crate) stats: SchedulerStats,
    /// Id of the next KV event this scheduler hands out (the pool's events are renumbered,
    /// so that a snapshot can take its place in the same sequence).
    pub(crate) next_event_id: u64,
    /// KV offload tiers (offload.rs); `None`: G1 only.
    pub(crate) tiers: Option<crate::offload::Tiers>,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig) -> Result<Self> {
        cfg.validate().map_err(SchedulerError::Config)?;
        let pool = BlockPool::new(cfg.num_blocks, cfg.block_size)?;
        Ok(Self {
            cfg,
            pool,
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            ready: VecDeque::new(),
            outstanding: false,
            draining: false,
            stats: SchedulerStats::default(),
            next_event_id: 1,
            tiers: None,
        })
    }

    /// Extra labels (e.g. `dp_rank`) on the KV pool's metrics.
    pub fn with_metric_labels(mut self, labels: Vec<(String, String)>) -> Self {
        self.pool = self.pool.with_metric_labels(labels);
        self
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// Validates and queues a request. `stop.max_tokens == 0` means no limit but the
    /// context (`max_seq_len`); `stop_token_ids` are EOS plus stop ids.
    /// `InvalidRequest`: empty prompt, bad `generated_so_far`, or prompt + `max_tokens` over
    /// the context (or over the whole KV cache); `Overloaded`: waiting queue full;
    /// `Unavailable`: draining.
    pub fn enqueue(&mut self, req: PreprocessedRequest) -> std::result::Result<(), ErrorInfo> {
        if self.draining {
            return Err(ErrorInfo::new(
                ErrorKind::Unavailable,
                "worker is draining and takes no new requests",
            ));
        }
        let n = req.token_ids.len();
        if n == 0 {
            return Err(ErrorInfo::invalid("prompt", "prompt is empty (0 tokens)"));
        }
        let gsf = req.generated_so_far as usize;
        if gsf >= n {
            return Err(ErrorInfo::invalid(
                "generated_so_far",
                format!("generated_so_far {gsf} must be less than the {n} tokens sent"),
            ));
        }
        let max_tokens = req.stop.max_tokens as usize;
        if max_tokens > 0 && gsf >= max_tokens {
            return Err(ErrorInfo::invalid(
                "max_tokens",
                format!("max_tokens {max_tokens} already reached ({gsf} generated)"),
            ));
        }
        let remaining = if max_tokens > 0 { max_tokens - gsf } else { 1 };
        let prompt = n - gsf;
        if n + remaining > self.cfg.max_model_len {
            return Err(ErrorInfo::invalid(
                "max_tokens",
                format!(
                    "prompt ({prompt} tokens) + max_tokens ({}) exceeds the model's context \
                     length of {} tokens",
                    if max_tokens > 0 {
                        max_tokens.to_string()
                    } else {
                        "at least 1".into()
                    },
                    self.cfg.max_model_len
                ),
            ));
        }
        if n + remaining > self.cfg.max_seq_len() {
            return Err(ErrorInfo::invalid(
                "max_tokens",
                format!(
                    "prompt ({prompt} tokens) + max_tokens needs {} tokens of KV cache, this \
                     worker holds {}",
                    n + remaining,
                    self.cfg.max_seq_len()
                ),
            ));
        }
        self.check_embeds(&req, prompt)?;
        if self.seqs.contains_key(&req.request_id) {
            return Err(ErrorInfo::invalid(
                "request_id",
                format!("request {} is already queued", req.request_id),
            ));
        }
        if self.waiting.len() >= self.cfg.waiting_queue_limit {
            return Err(ErrorInfo::new(
                ErrorKind::Overloaded,
                format!(
                    "overloaded: {} requests are waiting on this worker, its limit is {} \
                     (--max-waiting); retry later or on another worker",
                    self.waiting.len(),
                    self.cfg.waiting_queue_limit
                ),
            ));
        }
        let id = req.request_id;
        self.seqs.insert(id, Sequence::new(req));
        self.waiting.push_back(id);
        Ok(())
    }

    /// Embedding rows must fit the engine and agree with the prompt's embedding tokens
    /// (their hashes key the prefix cache, so a mismatch is refused, not served).
    fn check_embeds(
        &self,
        req: &PreprocessedRequest,
        prompt_len: usize,
    ) -> std::result::Result<(), ErrorInfo> {
        let has_tokens = req.token_ids.iter().any(|t| is_embed_token(*t));
        let e = match (&req.prompt_embeds, self.cfg.embed_width) {
            (None, _) if !has_tokens => return Ok(()),
            (_, None) => {
                return Err(ErrorInfo::invalid(
                    "prompt_embeds",
                    "this worker's engine takes token ids only, not precomputed embeddings",
                ));
            }
            (None, Some(_)) => {
                return Err(ErrorInfo::invalid(
                    "prompt_embeds",
                    "the prompt holds embedding tokens but no embedding rows",
                ));
            }
            (Some(e), Some(w)) if e.width != w => {
                return Err(ErrorInfo::invalid(
                    "prompt_embeds",
                    format!(
                        "embedding rows of {} values, the model's hidden size is {w}",
                        e.width
                    ),
                ));
            }
            (Some(e), Some(_)) => e,
        };
        e.check(&req.token_ids, prompt_len)
            .map_err(|m| ErrorInfo::invalid("prompt_embeds", m))
    }

    /// Cancels a waiting or running request; returns false if unknown (or already
    /// cancelled). Its blocks are freed now, or when the outstanding batch comes back.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        let Some(seq) = self.seqs.get_mut(&id) else {
            return false;
        };
        if seq.cancelled {
            return false;
        }
        seq.cancelled = true;
        if let Some(pos) = self.waiting.iter().position(|w| *w == id) {
            self.waiting.remove(pos);
            self.remove(id);
        } else if !self.running.contains(&id) {
            // Held for a KV transfer, or reserved for a remote prefill (remote.rs).
            self.remove(id);
        } else if !self.outstanding {
            self.reap_cancelled();
        }
        true
    }

    /// Stops (or resumes) taking new requests; running ones continue.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// True while anything is waiting or running.
    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty() || !self.ready.is_empty()
    }

    /// Whether a batch from `schedule` awaits its output.
    pub fn has_outstanding_batch(&self) -> bool {
        self.outstanding
    }

    pub fn contains(&self, id: RequestId) -> bool {
        self.seqs.get(&id).is_some_and(|s| !s.cancelled)
    }

    pub fn stats(&self) -> SchedulerStats {
        let pending_prefill_tokens = self
            .running
            .iter()
            .filter_map(|id| self.seqs.get(id))
            .filter(|s| !s.prefill_done)
            .map(|s| s.pending())
            .sum();
        SchedulerStats {
            waiting: self.waiting.len() + self.ready.len(),
            running: self.running.len(),
            active_blocks: self.pool.num_active(),
            total_blocks: self.pool.num_blocks(),
            pending_prefill_tokens,
            ..self.stats
        }
    }

    /// KV events since the last call (monotonic `event_id` from 1).
    pub fn take_kv_events(&mut self) -> Vec<KvEvent> {
        let mut events = self.pool.take_events();
        for e in &mut events {
            e.event_id = self.next_event_id;
            self.next_event_id += 1;
        }
        self.append_tier_events(&mut events);
        events
    }

    /// Answers a dump request: the pending events, then a `Snapshot` of every hashed block
    /// that takes the next event id (so a reader that resets its baseline to the snapshot's
    /// id continues with the events after it, without a gap).
    pub fn dump_kv_events(&mut self) -> Vec<KvEvent> {
        let mut events = self.take_kv_events();
        events.push(KvEvent::device(
            self.next_event_id,
            KvEventData::Snapshot {
                blocks: self.pool.snapshot(),
            },
        ));
        self.next_event_id += 1;
        self.append_tier_snapshot(&mut events);
        events
    }

    /// Every cached or active hashed block, for `KvEventData::Snapshot`.
    pub fn kv_snapshot(&self) -> Vec<BlockHash> {
        self.pool.snapshot()
    }

    /// The block pool, read-only (tests, metrics).
    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// Drops every request (e.g. the engine is lost for good) and frees their blocks;
    /// returns their ids so the caller can tell their clients.
    pub fn abort_all(&mut self) -> Vec<RequestId> {
        let mut ids: Vec<RequestId> = self.running.clone();
        ids.extend(self.waiting.drain(..));
        ids.extend(self.parked());
        let live: Vec<RequestId> = ids
            .iter()
            .copied()
            .filter(|id| self.seqs.get(id).is_some_and(|s| !s.cancelled))
            .collect();
        for id in ids {
            self.remove(id);
        }
        self.outstanding = false;
        live
    }

    /// Requeues every running sequence for recompute and drops the prefix cache (emitting
    /// `Cleared`): for an engine restarted with fresh KV memory.
    pub fn reset_kv(&mut self) {
        // Finished remote prefills waiting for a slot lost their KV too; they go behind
        // the running ones.
        let ready = std::mem::take(&mut self.ready);
        for id in ready.into_iter().rev() {
            if let Some(seq) = self.seqs.get_mut(&id) {
                seq.disagg = crate::remote::Disagg::None;
            }
            self.requeue_front(id);
        }
        let running = std::mem::take(&mut self.running);
        for id in running.into_iter().rev() {
            self.requeue_front(id);
        }
        self.outstanding = false;
        self.pool.clear();
    }

    /// Removes a sequence entirely, freeing its blocks.
    pub(crate) fn remove(&mut self, id: RequestId) {
        if let Some(mut seq) = self.seqs.remove(&id)
            && let Some(blocks) = seq.blocks.take()
        {
            self.pool.free(blocks);
        }
        self.running.retain(|r| *r != id);
        self.ready.retain(|r| *r != id);
    }

    /// Frees a sequence's blocks and puts it at the front of the waiting queue to be
    /// recomputed (prompt plus generated tokens). The caller removes it from `running`.
    pub(crate) fn requeue_front(&mut self, id: RequestId) {
        let Some(seq) = self.seqs.get_mut(&id) else {
            return;
        };
        if seq.cancelled {
            self.remove(id);
            return;
        }
        if let Some(blocks) = seq.blocks.take() {
            self.pool.free(blocks);
        }
        seq.num_computed = 0;
        seq.prefill_done = false;
        self.waiting.push_front(id);
    }

    /// Frees cancelled running sequences (none may be in an outstanding batch).
    pub(crate) fn reap_cancelled(&mut self) {
        let dead: Vec<RequestId> = self
            .running
            .iter()
            .copied()
            .filter(|id| self.seqs.get(id).is_none_or(|s| s.cancelled))
            .collect();
        for id in dead {
            self.remove(id);
        }
    }
}
