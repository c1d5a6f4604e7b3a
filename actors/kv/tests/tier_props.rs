//! Property tests of the pool plus offload tiers, driven like the scheduler drives them:
//! prompts are matched in G1 then in G2/G3, matched lower-tier blocks are onboarded into
//! fresh G1 blocks, evicted G1 blocks are offloaded with the bytes the (simulated) engine
//! holds. No block is in two places within the tiers, none is lost without being counted
//! as dropped, and every onboarded block carries exactly the bytes computed for its hash.

use ferrite_kv::{BlockPool, OffloadStore, TierConfig};
use ferrite_protocol::hashing::block_hashes;
use ferrite_protocol::{BlockHash, BlockId, StorageTier};
use proptest::prelude::*;
use std::collections::HashMap;

const BS: u32 = 4;
const NUM_BLOCKS: u32 = 8;
const BPB: usize = 32;

/// The bytes a forward pass would write for the block with hash `h`.
fn content(h: BlockHash) -> Vec<u8> {
    (0..BPB)
        .map(|i| (h.0 >> ((i % 8) * 8)) as u8 ^ i as u8)
        .collect()
}

fn prompt(base: usize, len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|t| t + 100 * (base as u32 / 2) + u32::from(t >= 8) * base as u32)
        .collect()
}

#[derive(Clone, Debug)]
enum Op {
    Request { base: usize, len: usize },
    Corrupt { pick: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0usize..8, 1usize..28).prop_map(|(base, len)| Op::Request { base, len }),
        1 => any::<usize>().prop_map(|pick| Op::Corrupt { pick }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn tiers_never_duplicate_lose_or_mix_blocks(
        ops in prop::collection::vec(op(), 1..80),
        host in 0u64..6,
        disk in 0u64..6,
        min_hits in 0u32..3,
    ) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let cfg = TierConfig {
            bytes_per_block: BPB,
            host_bytes: host * BPB as u64,
            disk_bytes: disk * (BPB as u64 + 32),
            disk_dir: Some(dir.path().to_path_buf()),
            min_hits_for_disk: min_hits,
        };
        let mut store = OffloadStore::new(cfg);
        let mut pool = BlockPool::new(NUM_BLOCKS, BS).map_err(|e| TestCaseError::fail(e.to_string()))?;
        pool.record_evictions(true);
        let mut memory: HashMap<BlockId, Vec<u8>> = HashMap::new();
        let (mut offered, mut taken) = (0u64, 0u64);
        let mut corrupted: std::collections::HashSet<BlockHash> = Default::default();
        for op in ops {
            match op {
                Op::Corrupt { pick } => {
                    let on_disk: Vec<BlockHash> = store.snapshot().into_iter()
                        .filter(|(t, _)| *t == StorageTier::Disk)
                        .flat_map(|(_, v)| v).collect();
                    if !on_disk.is_empty() {
                        let h = on_disk[pick % on_disk.len()];
                        // (flipping a byte twice would restore it)
                        if !corrupted.contains(&h) && store.corrupt_disk_block(&h) {
                            corrupted.insert(h);
                        }
                    }
                }
                Op::Request { base, len } => {
                    let tokens = prompt(base, len);
                    let hashes = block_hashes(&tokens, BS as usize, 0);
                    let reusable = (len - 1) / BS as usize;
                    let g1 = pool.match_prefix(&hashes[..reusable]);
                    let lower = store.match_prefix(&hashes[g1..reusable]).len();
                    let Ok(mut seq) = pool.allocate_prompt(&hashes[..g1], len) else { continue };
                    // Evicted blocks still hold their bytes: offload them first.
                    for ev in pool.take_evictions() {
                        let bytes = memory.get(&ev.block).cloned().unwrap_or_default();
                        prop_assert_eq!(&bytes, &content(ev.hash), "evicted block mixed up");
                        let new = store.tier_of(&ev.hash).is_none();
                        if new {
                            corrupted.remove(&ev.hash); // a fresh copy
                        }
                        store.offload(ev.hash, bytes, ev.hits);
                        offered += u64::from(new);
                    }
                    // Onboard the lower-tier run, stopping at the first bad block.
                    let got = store.take(&hashes[g1..g1 + lower]);
                    taken += got.len() as u64;
                    let mut ok = 0;
                    for (i, (h, src, _)) in got.iter().enumerate() {
                        let mut buf = vec![0u8; BPB];
                        match src.read_into(&mut buf) {
                            Ok(()) => {
                                prop_assert!(!corrupted.contains(h), "corrupt block passed the check");
                                prop_assert_eq!(&buf, &content(*h));
                                memory.insert(seq.blocks()[g1 + i], buf);
                                ok += 1;
                            }
                            Err(_) => {
                                prop_assert!(corrupted.contains(h), "intact block failed its check");
                                break;
                            }
                        }
                    }
                    let _ = ok;
                    // "Compute" the remaining blocks and register every full one.
                    for (i, h) in hashes.iter().enumerate() {
                        if i >= g1 + ok {
                            memory.insert(seq.blocks()[i], content(*h));
                        }
                    }
                    pool.commit_full_blocks(&mut seq, &hashes);
                    pool.free(seq);
                }
            }
            pool.check_invariants().map_err(TestCaseError::fail)?;
            store.check_invariants().map_err(TestCaseError::fail)?;
            let st = store.stats();
            prop_assert_eq!(
                offered - taken - st.dropped,
                (store.num_host() + store.num_disk()) as u64,
                "blocks lost or duplicated across tiers"
            );
            let _ = store.take_events();
            let _ = pool.take_events();
        }
    }
}
