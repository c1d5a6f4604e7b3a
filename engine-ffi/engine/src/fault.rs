//! Fault injection, a **testing aid**: [`FaultInjector`] wraps an executor and panics at
//! its N-th forward step, so supervision (engine restart, crash-loop handling) can be
//! exercised against a real backend. A shared [`FaultPlan`] limits how many executor
//! instances of the process panic in all. Never enabled unless asked for
//! (`--fault-panic-at-step`).

use crate::batch::{Batch, BatchOutput, ExecutorInfo};
use crate::error::Result;
use crate::executor::Executor;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// When executors panic: at their `panic_at_step`-th forward call (1-based), as long as the
/// process-wide budget of panics (`times`, `None`: unlimited) is not spent.
#[derive(Clone, Debug)]
pub struct FaultPlan {
    panic_at_step: u64,
    /// Panics left (`u64::MAX`: unlimited); shared by every executor wrapped with this plan.
    remaining: Arc<AtomicU64>,
    /// Panics injected so far.
    injected: Arc<AtomicU64>,
}

impl FaultPlan {
    /// `panic_at_step` is 1-based (0 disables the plan); `times` bounds the panics of all
    /// executors wrapped with this plan (and its clones) together.
    pub fn new(panic_at_step: u64, times: Option<u64>) -> Self {
        Self {
            panic_at_step,
            remaining: Arc::new(AtomicU64::new(times.unwrap_or(u64::MAX))),
            injected: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Wraps `inner` so that it panics according to this plan.
    pub fn wrap(&self, inner: Box<dyn Executor>) -> Box<dyn Executor> {
        Box::new(FaultInjector {
            inner,
            plan: self.clone(),
            steps: 0,
        })
    }

    /// Panics injected so far by executors of this plan.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    /// Takes one panic from the budget; false once it is spent.
    fn claim(&self) -> bool {
        let ok = self
            .remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| match left {
                0 => None,
                u64::MAX => Some(u64::MAX),
                n => Some(n - 1),
            })
            .is_ok();
        if ok {
            self.injected.fetch_add(1, Ordering::SeqCst);
        }
        ok
    }
}

/// An executor that panics at a planned step (see [`FaultPlan`]); otherwise it forwards
/// every call to the executor it wraps.
pub struct FaultInjector {
    inner: Box<dyn Executor>,
    plan: FaultPlan,
    steps: u64,
}

impl Executor for FaultInjector {
    fn info(&self) -> ExecutorInfo {
        self.inner.info()
    }

    fn forward(&mut self, batch: &Batch) -> Result<BatchOutput> {
        self.steps += 1;
        if self.plan.panic_at_step > 0 && self.steps == self.plan.panic_at_step && self.plan.claim()
        {
            panic!(
                "fault injection: deliberate executor panic at forward step {}",
                self.steps
            );
        }
        self.inner.forward(batch)
    }

    fn kv_block_layout(&self) -> Option<crate::KvBlockLayout> {
        self.inner.kv_block_layout()
    }

    fn read_kv_blocks(
        &mut self,
        blocks: &[ferrite_protocol::BlockId],
        out: &mut [u8],
    ) -> Result<()> {
        self.inner.read_kv_blocks(blocks, out)
    }

    fn write_kv_blocks(&mut self, blocks: &[ferrite_protocol::BlockId], data: &[u8]) -> Result<()> {
        self.inner.write_kv_blocks(blocks, data)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::KvCacheSpec;
    use std::panic::{AssertUnwindSafe, catch_unwind};

    struct Echo;
    impl Executor for Echo {
        fn info(&self) -> ExecutorInfo {
            ExecutorInfo {
                name: "echo".into(),
                vocab_size: 4,
                max_context: 8,
                kv: KvCacheSpec {
                    num_blocks: 1,
                    block_size: 4,
                },
                embed_width: None,
            }
        }
        fn forward(&mut self, _: &Batch) -> Result<BatchOutput> {
            Ok(BatchOutput::default())
        }
    }

    /// The 1-based steps at which `exec` panicked within `n` calls.
    fn panics(exec: &mut Box<dyn Executor>, n: u64) -> Vec<u64> {
        (1..=n)
            .filter(|_| catch_unwind(AssertUnwindSafe(|| exec.forward(&Batch::default()))).is_err())
            .collect()
    }

    #[test]
    fn panics_at_the_planned_step_within_the_budget() {
        let plan = FaultPlan::new(3, Some(2));
        let mut a = plan.wrap(Box::new(Echo));
        let mut b = plan.wrap(Box::new(Echo));
        let mut c = plan.wrap(Box::new(Echo));
        assert_eq!(panics(&mut a, 6), vec![3]);
        assert_eq!(panics(&mut b, 6), vec![3]);
        assert_eq!(panics(&mut c, 6), Vec::<u64>::new(), "budget of 2 is spent");
        assert_eq!(plan.injected(), 2);
        assert_eq!(a.info().name, "echo");
    }

    #[test]
    fn unlimited_and_disabled_plans() {
        let plan = FaultPlan::new(1, None);
        for _ in 0..5 {
            assert_eq!(panics(&mut plan.wrap(Box::new(Echo)), 3), vec![1]);
        }
        assert_eq!(plan.injected(), 5);
        let off = FaultPlan::new(0, None);
        assert!(panics(&mut off.wrap(Box::new(Echo)), 3).is_empty());
    }
}
