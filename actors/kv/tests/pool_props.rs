//! Property tests of `BlockPool`: random allocate/append/commit/free/cancel/evict/clear
//! sequences never leak, double-free or evict a block in use.

use ferrite_kv::{BlockPool, BlockState, SeqBlocks};
use ferrite_protocol::hashing::block_hashes;
use ferrite_protocol::{BlockHash, BlockId};
use proptest::prelude::*;
use std::collections::HashMap;

const BS: u32 = 4;
const NUM_BLOCKS: u32 = 24;

#[derive(Clone, Debug)]
enum Op {
    /// Allocate a prompt: `len` tokens of base prompt `base` (bases share prefixes).
    Allocate {
        base: usize,
        len: usize,
    },
    /// Append `n` tokens (one at a time, as decode does) to live sequence `seq % live`.
    Append {
        seq: usize,
        n: usize,
    },
    Commit {
        seq: usize,
    },
    Free {
        seq: usize,
    },
    /// Free without committing anything new (a cancelled request).
    Cancel {
        seq: usize,
    },
    Clear,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..4, 1usize..30).prop_map(|(base, len)| Op::Allocate { base, len }),
        4 => (any::<usize>(), 1usize..9).prop_map(|(seq, n)| Op::Append { seq, n }),
        3 => any::<usize>().prop_map(|seq| Op::Commit { seq }),
        2 => any::<usize>().prop_map(|seq| Op::Free { seq }),
        1 => any::<usize>().prop_map(|seq| Op::Cancel { seq }),
        1 => Just(Op::Clear),
    ]
}

/// Base prompts 0 and 1 share their first 8 tokens; 2 and 3 share 12.
fn base_prompt(base: usize) -> Vec<u32> {
    let mut t: Vec<u32> = (0..64).collect();
    match base {
        0 => {}
        1 => t[8..].iter_mut().for_each(|x| *x += 1000),
        2 => t.iter_mut().for_each(|x| *x += 5000),
        _ => {
            t.iter_mut().for_each(|x| *x += 5000);
            t[12..].iter_mut().for_each(|x| *x += 1000);
        }
    }
    t
}

struct Live {
    tokens: Vec<u32>,
    /// Tokens whose blocks may be committed (all of them here: the test computes instantly).
    blocks: SeqBlocks,
    /// (hash, block) pairs registered by this sequence and verified at commit.
    owned: Vec<(BlockHash, BlockId)>,
}

fn check(pool: &BlockPool, live: &[Live]) -> Result<(), TestCaseError> {
    pool.check_invariants().map_err(TestCaseError::fail)?;
    prop_assert_eq!(
        pool.num_free() + pool.num_active() + pool.num_cached(),
        NUM_BLOCKS as usize
    );
    let mut refs: HashMap<BlockId, u32> = HashMap::new();
    for s in live {
        let mut seen = std::collections::HashSet::new();
        for b in s.blocks.blocks() {
            prop_assert!(seen.insert(*b), "block {:?} twice in one sequence", b);
            *refs.entry(*b).or_default() += 1;
        }
        prop_assert!(s.blocks.capacity(BS) >= s.tokens.len());
        for (h, b) in &s.owned {
            // a block in use is never evicted: its registration survives
            prop_assert_eq!(pool.lookup(h), Some(*b));
        }
    }
    for i in 0..NUM_BLOCKS {
        let b = BlockId(i);
        let want = refs.get(&b).copied().unwrap_or(0);
        prop_assert_eq!(pool.ref_count(b), Some(want));
        if want > 0 {
            prop_assert_eq!(pool.state(b), Some(BlockState::Active));
        }
    }
    prop_assert_eq!(pool.num_active(), refs.len());
    Ok(())
}

fn commit(pool: &mut BlockPool, s: &mut Live) {
    let h = block_hashes(&s.tokens, BS as usize, 0);
    let before = s.blocks.num_committed_blocks();
    pool.commit_full_blocks(&mut s.blocks, &h);
    let end = s.blocks.num_committed_blocks();
    for (hash, block) in h[before..end].iter().zip(&s.blocks.blocks()[before..end]) {
        if pool.lookup(hash) == Some(*block) {
            s.owned.push((*hash, *block));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn pool_never_leaks_or_double_frees(ops in prop::collection::vec(op(), 1..120)) {
        let mut pool = BlockPool::new(NUM_BLOCKS, BS).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut live: Vec<Live> = Vec::new();
        let mut event_ids = Vec::new();
        for op in ops {
            match op {
                Op::Allocate { base, len } => {
                    let tokens = base_prompt(base)[..len].to_vec();
                    let h = block_hashes(&tokens, BS as usize, 0);
                    let hits = pool.match_prefix(&h);
                    let expected: Vec<Option<BlockId>> = h[..hits].iter().map(|x| pool.lookup(x)).collect();
                    let (f, a, c) = (pool.num_free(), pool.num_active(), pool.num_cached());
                    match pool.allocate_prompt(&h, len) {
                        Ok(blocks) => {
                            prop_assert_eq!(blocks.num_cached_blocks(), hits.min(blocks.blocks().len()));
                            for (i, e) in expected.iter().enumerate().take(blocks.num_cached_blocks()) {
                                // cached prefix matches return identical block ids
                                prop_assert_eq!(Some(blocks.blocks()[i]), *e);
                            }
                            live.push(Live { tokens, blocks, owned: Vec::new() });
                        }
                        Err(_) => {
                            prop_assert_eq!((f, a, c), (pool.num_free(), pool.num_active(), pool.num_cached()));
                        }
                    }
                }
                Op::Append { seq, n } if !live.is_empty() => {
                    let i = seq % live.len();
                    let s = &mut live[i];
                    for k in 0..n {
                        let len = s.tokens.len() + 1;
                        let held = s.blocks.blocks().len();
                        match pool.append_slot(&mut s.blocks, len) {
                            Ok(()) => s.tokens.push(7000 + k as u32),
                            Err(_) => {
                                prop_assert_eq!(s.blocks.blocks().len(), held);
                                break;
                            }
                        }
                    }
                }
                Op::Commit { seq } if !live.is_empty() => {
                    let i = seq % live.len();
                    commit(&mut pool, &mut live[i]);
                }
                Op::Free { seq } if !live.is_empty() => {
                    let i = seq % live.len();
                    let mut s = live.swap_remove(i);
                    commit(&mut pool, &mut s);
                    pool.free(s.blocks);
                }
                Op::Cancel { seq } if !live.is_empty() => {
                    let i = seq % live.len();
                    let s = live.swap_remove(i);
                    pool.free(s.blocks);
                }
                Op::Clear => {
                    pool.clear();
                    live.iter_mut().for_each(|s| s.owned.clear());
                }
                _ => {}
            }
            event_ids.extend(pool.take_events().into_iter().map(|e| e.event_id));
            check(&pool, &live)?;
        }
        for s in live.drain(..) {
            pool.free(s.blocks);
        }
        check(&pool, &live)?;
        prop_assert_eq!(pool.num_active(), 0);
        let want: Vec<u64> = (1..=event_ids.len() as u64).collect();
        prop_assert_eq!(event_ids, want);
    }
}
