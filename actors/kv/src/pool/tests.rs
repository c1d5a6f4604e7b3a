#![allow(clippy::unwrap_used)] // tests may unwrap

use super::*;
use ferrite_protocol::hashing::block_hashes;

fn hashes(tokens: &[u32]) -> Vec<BlockHash> {
    block_hashes(tokens, 4, 0)
}

#[test]
fn allocate_commit_free_then_reuse_prefix() {
    let mut pool = BlockPool::new(8, 4).unwrap();
    let prompt: Vec<u32> = (0..10).collect(); // 2 full blocks + 2 tokens
    let h = hashes(&prompt);
    assert_eq!(pool.match_prefix(&h), 0);
    let mut a = pool.allocate_prompt(&h, prompt.len()).unwrap();
    assert_eq!(a.blocks(), &[BlockId(0), BlockId(1), BlockId(2)]);
    assert_eq!(
        (pool.num_free(), pool.num_active(), pool.num_cached()),
        (5, 3, 0)
    );
    pool.commit_full_blocks(&mut a, &h);
    let ev = pool.take_events();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].event_id, 1);
    assert_eq!(
        ev[0].data,
        KvEventData::Stored {
            parent: None,
            blocks: h.clone()
        }
    );
    // a second sequence with the same prefix shares the two full blocks
    let b = pool.allocate_prompt(&h, prompt.len()).unwrap();
    assert_eq!(&b.blocks()[..2], &a.blocks()[..2]);
    assert_ne!(b.blocks()[2], a.blocks()[2]);
    assert_eq!(b.num_cached_blocks(), 2);
    assert_eq!(pool.ref_count(BlockId(0)), Some(2));
    pool.free(a);
    pool.free(b);
    assert_eq!(
        (pool.num_free(), pool.num_active(), pool.num_cached()),
        (6, 0, 2)
    );
    assert_eq!(pool.match_prefix(&h), 2);
    let mut snap = pool.snapshot();
    snap.sort();
    let mut want = h.clone();
    want.sort();
    assert_eq!(snap, want);
    pool.check_invariants().unwrap();
}

#[test]
fn out_of_blocks_has_no_side_effects() {
    let mut pool = BlockPool::new(3, 4).unwrap();
    let p: Vec<u32> = (0..8).collect();
    let h = hashes(&p);
    let mut a = pool.allocate_prompt(&h, 8).unwrap();
    pool.commit_full_blocks(&mut a, &h);
    let err = pool.allocate_prompt(&[], 9).unwrap_err();
    assert_eq!(
        err,
        KvError::OutOfBlocks {
            needed: 3,
            available: 1
        }
    );
    assert_eq!((pool.num_free(), pool.num_active()), (1, 2));
    let mut one = pool.allocate_prompt(&[], 4).unwrap();
    assert_eq!(
        pool.append_slot(&mut one, 5),
        Err(KvError::OutOfBlocks {
            needed: 1,
            available: 0
        })
    );
    assert_eq!(one.blocks().len(), 1);
    pool.free(one);
    pool.free(a);
    pool.check_invariants().unwrap();
}

#[test]
fn eviction_takes_lru_and_emits_removed() {
    let mut pool = BlockPool::new(4, 4).unwrap();
    let p1: Vec<u32> = (0..8).collect();
    let p2: Vec<u32> = (100..108).collect();
    let (h1, h2) = (hashes(&p1), hashes(&p2));
    let mut a = pool.allocate_prompt(&h1, 8).unwrap();
    pool.commit_full_blocks(&mut a, &h1);
    pool.free(a); // p1 blocks cached, older
    let mut b = pool.allocate_prompt(&h2, 8).unwrap();
    pool.commit_full_blocks(&mut b, &h2);
    pool.free(b);
    assert_eq!(pool.num_cached(), 4);
    pool.take_events();
    // needs 1 block: evicts p1's last block first (freed in reverse order)
    let c = pool.allocate_prompt(&[], 3).unwrap();
    let ev = pool.take_events();
    assert_eq!(ev[0].event_id, 3);
    assert_eq!(
        ev[0].data,
        KvEventData::Removed {
            blocks: vec![h1[1]]
        }
    );
    assert_eq!(pool.match_prefix(&h1), 1);
    assert_eq!(pool.match_prefix(&h2), 2);
    pool.free(c);
    pool.check_invariants().unwrap();
}

#[test]
fn reusing_cached_block_protects_it_from_eviction() {
    let mut pool = BlockPool::new(2, 4).unwrap();
    let p: Vec<u32> = (0..4).collect();
    let h = hashes(&p);
    let mut a = pool.allocate_prompt(&h, 4).unwrap();
    pool.commit_full_blocks(&mut a, &h);
    pool.free(a);
    // hit on the cached block and one fresh block: exactly fits
    let b = pool.allocate_prompt(&h, 5).unwrap();
    assert_eq!(b.blocks()[0], BlockId(0));
    assert_eq!(pool.state(BlockId(0)), Some(BlockState::Active));
    assert!(pool.allocate_prompt(&[], 1).is_err());
    pool.free(b);
    pool.check_invariants().unwrap();
}

#[test]
fn decode_filled_blocks_are_stored_with_parent() {
    let mut pool = BlockPool::new(4, 4).unwrap();
    let mut toks: Vec<u32> = (0..4).collect();
    let mut s = pool.allocate_prompt(&hashes(&toks), 4).unwrap();
    pool.commit_full_blocks(&mut s, &hashes(&toks));
    for t in 4..8 {
        toks.push(t);
        pool.append_slot(&mut s, toks.len()).unwrap();
    }
    assert_eq!(s.blocks().len(), 2);
    let h = hashes(&toks);
    pool.commit_full_blocks(&mut s, &h);
    let ev = pool.take_events();
    assert_eq!(ev.len(), 2);
    assert_eq!(
        ev[1].data,
        KvEventData::Stored {
            parent: Some(h[0]),
            blocks: vec![h[1]]
        }
    );
    assert_eq!(s.num_committed_blocks(), 2);
    pool.free(s);
    pool.check_invariants().unwrap();
}

#[test]
fn duplicate_hash_stays_unregistered_and_is_freed() {
    let mut pool = BlockPool::new(4, 4).unwrap();
    let p: Vec<u32> = (0..4).collect();
    let h = hashes(&p);
    let mut a = pool.allocate_prompt(&[], 4).unwrap();
    let mut b = pool.allocate_prompt(&[], 4).unwrap();
    pool.commit_full_blocks(&mut a, &h);
    pool.commit_full_blocks(&mut b, &h);
    assert_eq!(pool.take_events().len(), 1);
    pool.free(b);
    assert_eq!(pool.num_free(), 3);
    pool.free(a);
    assert_eq!((pool.num_free(), pool.num_cached()), (3, 1));
    pool.check_invariants().unwrap();
}

#[test]
fn clear_drops_cached_blocks() {
    let mut pool = BlockPool::new(4, 4).unwrap();
    let p: Vec<u32> = (0..8).collect();
    let h = hashes(&p);
    let mut a = pool.allocate_prompt(&h, 8).unwrap();
    pool.commit_full_blocks(&mut a, &h);
    let b = pool.allocate_prompt(&h[..1], 4).unwrap();
    pool.free(a);
    pool.clear();
    assert_eq!(
        pool.take_events().last().map(|e| e.data.clone()),
        Some(KvEventData::Cleared)
    );
    assert_eq!(
        (pool.num_free(), pool.num_active(), pool.num_cached()),
        (3, 1, 0)
    );
    assert!(pool.snapshot().is_empty());
    assert_eq!(pool.match_prefix(&h), 0);
    pool.free(b);
    assert_eq!(pool.num_free(), 4);
    pool.check_invariants().unwrap();
}

#[test]
fn invalid_shape_is_rejected() {
    assert!(BlockPool::new(0, 16).is_err());
    assert!(BlockPool::new(4, 0).is_err());
}
