//! Disaggregated prefill/decode hooks. Prefill side: a request whose blocks are *held*
//! after its first token until the worker has copied them out ([`Scheduler::enqueue_prefill`],
//! [`Scheduler::release_held`]). Decode side: blocks *reserved* for a remote prefill, then
//! either completed with the first token ([`Scheduler::complete_remote`]) or handed to a
//! local prefill ([`Scheduler::fallback_local`]). Cancelling frees either at once.

use crate::actor::{EngineActor, OutputSender, SchedulerActor};
use crate::scheduler::Scheduler;
use crate::supervisor::EngineSupervisor;
use actix::prelude::*;
use ferrite_engine::KvBlockLayout;
use ferrite_protocol::{
    BlockId, EngineOutput, ErrorInfo, ErrorKind, PreprocessedRequest, RequestId, TokenId,
    TokenLogprob,
};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// A sequence's part in disaggregated serving.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Disagg {
    #[default]
    None,
    /// Prefill side: keep the blocks when the first token is sampled.
    HoldOnFinish,
    /// Prefill side: finished; its blocks wait for [`Scheduler::release_held`].
    Held,
    /// Decode side: blocks reserved while a prefill worker fills them.
    RemotePending,
    /// Decode side: filled, first token sent, waiting for a running slot (`ready`).
    Ready,
}

/// Blocks a decode worker reserved for a remote prefill.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteReservation {
    /// Every prompt block, in order.
    pub blocks: Vec<BlockId>,
    /// Leading blocks already in this worker's prefix cache (not to be transferred).
    pub cached_blocks: usize,
}

impl Scheduler {
    /// Prefill side: queues `req` to compute its prompt and sample exactly one token; its
    /// blocks are then held (see [`Scheduler::held_blocks`]) until released or cancelled.
    pub fn enqueue_prefill(&mut self, mut req: PreprocessedRequest) -> Result<(), ErrorInfo> {
        req.stop.max_tokens = req.generated_so_far + 1;
        let id = req.request_id;
        self.enqueue(req)?;
        if let Some(seq) = self.seqs.get_mut(&id) {
            seq.disagg = Disagg::HoldOnFinish;
        }
        Ok(())
    }

    /// Prefill side: the held blocks of a finished prefill (every prompt block, in order).
    pub fn held_blocks(&self, id: RequestId) -> Option<Vec<BlockId>> {
        let seq = self.seqs.get(&id)?;
        if seq.disagg != Disagg::Held || seq.cancelled {
            return None;
        }
        let prompt = seq.tokens.len() - 1; // the sampled token has no K/V yet
        let blocks = seq.blocks.as_ref()?.blocks();
        blocks
            .get(..self.pool.blocks_for(prompt))
            .map(|b| b.to_vec())
    }

    /// Prefill side: frees a held request's blocks; false if it is not held.
    pub fn release_held(&mut self, id: RequestId) -> bool {
        if self.seqs.get(&id).is_some_and(|s| s.disagg == Disagg::Held) {
            self.remove(id);
            return true;
        }
        false
    }

    /// Decode side: validates `req` like [`Scheduler::enqueue`] and reserves blocks for its
    /// prompt (prefix-cache hits reused). The request waits outside the queues until
    /// [`Scheduler::complete_remote`] or [`Scheduler::fallback_local`]. `Overloaded` when
    /// the blocks are not free now (the caller can then queue it locally instead).
    pub fn reserve_remote(
        &mut self,
        req: PreprocessedRequest,
    ) -> Result<RemoteReservation, ErrorInfo> {
        let id = req.request_id;
        self.enqueue(req)?;
        self.waiting.retain(|w| *w != id);
        let bs = self.cfg.block_size as usize;
        let Some(seq) = self.seqs.get_mut(&id) else {
            return Err(ErrorInfo::new(ErrorKind::Internal, "sequence vanished"));
        };
        seq.update_hashes(bs);
        let reusable = (seq.tokens.len() - 1) / bs;
        let hashes = &seq.hashes[..reusable.min(seq.hashes.len())];
        match self.pool.allocate_prompt(hashes, seq.tokens.len()) {
            Ok(blocks) => {
                let cached_blocks = blocks.num_cached_blocks();
                let hit_tokens = cached_blocks * bs;
                seq.num_computed = hit_tokens;
                seq.cached_tokens = Some(hit_tokens as u32);
                seq.disagg = Disagg::RemotePending;
                let out = RemoteReservation {
                    blocks: blocks.blocks().to_vec(),
                    cached_blocks,
                };
                seq.blocks = Some(blocks);
                self.stats.prefix_hit_tokens += hit_tokens as u64;
                Ok(out)
            }
            Err(e) => {
                self.remove(id);
                Err(ErrorInfo::new(
                    ErrorKind::Overloaded,
                    format!("no KV blocks to reserve for a remote prefill: {e}"),
                ))
            }
        }
    }

    /// Decode side: the reserved blocks of a pending remote prefill.
    pub fn remote_blocks(&self, id: RequestId) -> Option<&[BlockId]> {
        let seq = self.seqs.get(&id)?;
        if seq.disagg != Disagg::RemotePending || seq.cancelled {
            return None;
        }
        seq.blocks.as_ref().map(|b| b.blocks())
    }

    /// Decode side: the prompt's K/V is in the reserved blocks and `token` was sampled
    /// after it: the sequence joins the running set to decode, or waits in `ready` for a
    /// slot while `max_num_seqs` run. Returns its first chunk (`None` if the request is no
    /// longer pending, e.g. cancelled).
    pub fn complete_remote(
        &mut self,
        id: RequestId,
        token: TokenId,
        logprob: Option<TokenLogprob>,
    ) -> Option<EngineOutput> {
        let bs = self.cfg.block_size as usize;
        let max_seq_len = self.cfg.max_seq_len();
        let no_slot = self.running.len() >= self.cfg.max_num_seqs;
        let seq = self.seqs.get_mut(&id)?;
        if seq.disagg != Disagg::RemotePending || seq.cancelled {
            return None;
        }
        seq.disagg = Disagg::None;
        seq.num_computed = seq.tokens.len();
        seq.update_hashes(bs);
        let full = (seq.num_computed / bs).min(seq.hashes.len());
        if let Some(blocks) = seq.blocks.as_mut() {
            self.pool.commit_full_blocks(blocks, &seq.hashes[..full]);
        }
        seq.prefill_done = true;
        let finish = seq.push_token(token, max_seq_len);
        seq.sent_first = true;
        let out = EngineOutput {
            token_ids: vec![token],
            logprobs: logprob.into_iter().collect(),
            finish_reason: finish,
            cached_tokens: Some(seq.cached_tokens.unwrap_or(0)),
        };
        if finish.is_some() {
            self.remove(id);
        } else if no_slot {
            seq.disagg = Disagg::Ready;
            self.ready.push_back(id);
        } else {
            self.running.push(id);
        }
        Some(out)
    }

    /// Moves finished remote prefills into free running slots, oldest first.
    pub(crate) fn admit_ready(&mut self) {
        while self.running.len() < self.cfg.max_num_seqs {
            let Some(id) = self.ready.pop_front() else {
                return;
            };
            match self.seqs.get_mut(&id) {
                Some(seq) if !seq.cancelled => {
                    seq.disagg = Disagg::None;
                    self.running.push(id);
                }
                _ => self.remove(id),
            }
        }
    }

    /// Decode side: the remote prefill failed; free the reservation and queue the request
    /// for a local prefill (at the front: it has waited already). False if not pending.
    pub fn fallback_local(&mut self, id: RequestId) -> bool {
        let Some(seq) = self.seqs.get_mut(&id) else {
            return false;
        };
        if seq.disagg != Disagg::RemotePending || seq.cancelled {
            return false;
        }
        seq.disagg = Disagg::None;
        seq.num_computed = 0;
        seq.cached_tokens = None;
        if let Some(blocks) = seq.blocks.take() {
            self.pool.free(blocks);
        }
        self.waiting.push_front(id);
        true
    }

    /// Called when a sequence finished: held for a transfer, or removed.
    pub(crate) fn finish_seq(&mut self, id: RequestId) {
        match self.seqs.get_mut(&id) {
            Some(seq) if seq.disagg == Disagg::HoldOnFinish => {
                seq.disagg = Disagg::Held;
                self.running.retain(|r| *r != id);
            }
            _ => self.remove(id),
        }
    }

    /// Held, reserved and ready sequences (neither waiting nor running).
    pub(crate) fn parked(&self) -> Vec<RequestId> {
        self.seqs
            .iter()
            .filter(|(_, s)| {
                matches!(
                    s.disagg,
                    Disagg::Held | Disagg::RemotePending | Disagg::Ready
                )
            })
            .map(|(id, _)| *id)
            .collect()
    }
}

// ---- actor messages -------------------------------------------------------------------

/// Prefill side: [`Scheduler::enqueue_prefill`]; the first token arrives on `tx`.
#[derive(Message)]
#[rtype(result = "Result<(), ErrorInfo>")]
pub struct EnqueuePrefill {
    pub req: PreprocessedRequest,
    pub tx: OutputSender,
}

/// Prefill side: [`Scheduler::held_blocks`].
#[derive(Message)]
#[rtype(result = "Option<Vec<BlockId>>")]
pub struct HeldBlocks(pub RequestId);

/// Prefill side: [`Scheduler::release_held`].
#[derive(Message)]
#[rtype(result = "bool")]
pub struct ReleaseHeld(pub RequestId);

/// Decode side: [`Scheduler::reserve_remote`]; later chunks go to `tx`.
#[derive(Message)]
#[rtype(result = "Result<RemoteReservation, ErrorInfo>")]
pub struct ReserveRemote {
    pub req: PreprocessedRequest,
    pub tx: OutputSender,
}

/// Decode side: [`Scheduler::remote_blocks`].
#[derive(Message)]
#[rtype(result = "Option<Vec<BlockId>>")]
pub struct RemoteBlocks(pub RequestId);

/// Decode side: [`Scheduler::complete_remote`]; the first chunk goes to the stream.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct CompleteRemote {
    pub request_id: RequestId,
    pub token: TokenId,
    pub logprob: Option<TokenLogprob>,
}

/// Decode side: [`Scheduler::fallback_local`].
#[derive(Message)]
#[rtype(result = "bool")]
pub struct FallbackLocal(pub RequestId);

impl Handler<EnqueuePrefill> for SchedulerActor {
    type Result = Result<(), ErrorInfo>;
    fn handle(&mut self, msg: EnqueuePrefill, ctx: &mut Context<Self>) -> Self::Result {
        self.check_failed()?;
        let id = msg.req.request_id;
        self.scheduler_mut().enqueue_prefill(msg.req)?;
        self.add_stream(id, msg.tx);
        self.kick_step(ctx);
        Ok(())
    }
}

impl Handler<HeldBlocks> for SchedulerActor {
    type Result = Option<Vec<BlockId>>;
    fn handle(&mut self, msg: HeldBlocks, _: &mut Context<Self>) -> Self::Result {
        self.scheduler_mut().held_blocks(msg.0)
    }
}

impl Handler<ReleaseHeld> for SchedulerActor {
    type Result = bool;
    fn handle(&mut self, msg: ReleaseHeld, ctx: &mut Context<Self>) -> bool {
        let released = self.scheduler_mut().release_held(msg.0);
        self.kick_step(ctx); // freed blocks may admit a waiting request
        released
    }
}

impl Handler<ReserveRemote> for SchedulerActor {
    type Result = Result<RemoteReservation, ErrorInfo>;
    fn handle(&mut self, msg: ReserveRemote, _: &mut Context<Self>) -> Self::Result {
        self.check_failed()?;
        let id = msg.req.request_id;
        let r = self.scheduler_mut().reserve_remote(msg.req)?;
        self.add_stream(id, msg.tx);
        Ok(r)
    }
}

impl Handler<RemoteBlocks> for SchedulerActor {
    type Result = Option<Vec<BlockId>>;
    fn handle(&mut self, msg: RemoteBlocks, _: &mut Context<Self>) -> Self::Result {
        self.scheduler_mut()
            .remote_blocks(msg.0)
            .map(|b| b.to_vec())
    }
}

impl Handler<CompleteRemote> for SchedulerActor {
    type Result = bool;
    fn handle(&mut self, msg: CompleteRemote, ctx: &mut Context<Self>) -> bool {
        let out = self
            .scheduler_mut()
            .complete_remote(msg.request_id, msg.token, msg.logprob);
        let done = out.is_some();
        if let Some(out) = out {
            self.deliver_chunks(vec![(msg.request_id, out)]);
        }
        self.kick_step(ctx);
        done
    }
}

impl Handler<FallbackLocal> for SchedulerActor {
    type Result = bool;
    fn handle(&mut self, msg: FallbackLocal, ctx: &mut Context<Self>) -> bool {
        let ok = self.scheduler_mut().fallback_local(msg.0);
        self.kick_step(ctx);
        ok
    }
}

// ---- engine KV copy -------------------------------------------------------------------

/// The engine's KV block layout (`None`: no copyable cache, e.g. the mocker).
#[derive(Message)]
#[rtype(result = "Option<KvBlockLayout>")]
pub struct GetKvLayout;

/// Copies blocks out of the engine's cache (see `Executor::read_kv_blocks`).
#[derive(Message)]
#[rtype(result = "Result<Vec<u8>, String>")]
pub struct ReadKvBlocks(pub Vec<BlockId>);

/// Writes blocks into the engine's cache (see `Executor::write_kv_blocks`).
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct WriteKvBlocks {
    pub blocks: Vec<BlockId>,
    pub data: Vec<u8>,
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl Handler<GetKvLayout> for EngineActor {
    type Result = Option<KvBlockLayout>;
    fn handle(&mut self, _: GetKvLayout, _: &mut Self::Context) -> Self::Result {
        let ex = self.executor_mut()?;
        catch_unwind(AssertUnwindSafe(|| ex.kv_block_layout()))
            .ok()
            .flatten()
    }
}

impl Handler<ReadKvBlocks> for EngineActor {
    type Result = Result<Vec<u8>, String>;
    fn handle(&mut self, msg: ReadKvBlocks, _: &mut Self::Context) -> Self::Result {
        let ex = self.executor_mut().ok_or("engine has no executor")?;
        let layout = ex
            .kv_block_layout()
            .ok_or("engine has no copyable KV cache")?;
        let mut out = vec![0u8; msg.0.len() * layout.bytes_per_block];
        match catch_unwind(AssertUnwindSafe(|| ex.read_kv_blocks(&msg.0, &mut out))) {
            Ok(Ok(())) => Ok(out),
            Ok(Err(e)) => Err(e.to_string()),
            Err(p) => Err(format!("engine panicked reading KV: {}", panic_text(p))),
        }
    }
}

impl Handler<WriteKvBlocks> for EngineActor {
    type Result = Result<(), String>;
    fn handle(&mut self, msg: WriteKvBlocks, _: &mut Self::Context) -> Self::Result {
        let ex = self.executor_mut().ok_or("engine has no executor")?;
        match catch_unwind(AssertUnwindSafe(|| {
            ex.write_kv_blocks(&msg.blocks, &msg.data)
        })) {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(p) => Err(format!("engine panicked writing KV: {}", panic_text(p))),
        }
    }
}

/// Decode side: blocks that arrived for a pending remote prefill. Checked against the
/// reservation and written into `engine` in one step of this actor, so a write can never
/// land after the reservation was freed (it is queued before any later forward pass).
/// `engine: None` (no cache bytes, the mocker): only checked.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct WriteRemote {
    pub request_id: RequestId,
    pub blocks: Vec<BlockId>,
    pub data: Vec<u8>,
    pub engine: Option<Addr<EngineActor>>,
}

impl Handler<WriteRemote> for SchedulerActor {
    type Result = ResponseFuture<Result<(), String>>;
    fn handle(&mut self, msg: WriteRemote, _: &mut Context<Self>) -> Self::Result {
        let ok = match self.scheduler_mut().remote_blocks(msg.request_id) {
            None => Err(format!(
                "request {} has no blocks reserved here (cancelled or prefilled locally)",
                msg.request_id
            )),
            Some(reserved) if msg.blocks.iter().all(|b| reserved.contains(b)) => Ok(()),
            Some(_) => Err(format!(
                "blocks {:?} are not reserved for request {}",
                msg.blocks, msg.request_id
            )),
        };
        if let Err(e) = ok {
            return Box::pin(async move { Err(e) });
        }
        let Some(engine) = msg.engine else {
            return Box::pin(async { Ok(()) });
        };
        let write = engine.send(WriteKvBlocks {
            blocks: msg.blocks,
            data: msg.data,
        });
        Box::pin(async move { write.await.map_err(|e| format!("engine gone: {e}"))? })
    }
}

/// The rank's current engine (it changes when the supervisor restarts it).
#[derive(Message)]
#[rtype(result = "Addr<EngineActor>")]
pub struct GetEngine;

impl Handler<GetEngine> for EngineSupervisor {
    type Result = MessageResult<GetEngine>;
    fn handle(&mut self, _: GetEngine, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.engine_addr())
    }
}

#[cfg(test)]
mod tests;
