//! The index against a brute-force model, plus the event-id rules one by one.

use super::*;
use ferrite_protocol::KvEvent;
use ferrite_protocol::hashing::block_hashes;
use proptest::prelude::*;

const BS: u32 = 4;

/// Three token chains of 12 blocks; chain 1 shares its first 4 blocks with chain 0.
fn chains() -> Vec<Vec<BlockHash>> {
    let c0: Vec<u32> = (0..48).collect();
    let mut c1 = c0.clone();
    for t in &mut c1[16..] {
        *t += 1000;
    }
    let c2: Vec<u32> = (5000..5048).collect();
    [c0, c1, c2]
        .iter()
        .map(|t| block_hashes(t, BS as usize, 0))
        .collect()
}

fn key(w: u8) -> WorkerKey {
    (InstanceId(u64::from(w / 2) + 1), DpRank(u32::from(w % 2)))
}

fn batch(k: WorkerKey, events: Vec<(u64, KvEventData)>) -> KvEventBatch {
    KvEventBatch {
        instance_id: k.0,
        dp_rank: k.1,
        block_size: BS,
        events: events
            .into_iter()
            .map(|(event_id, data)| KvEvent::device(event_id, data))
            .collect(),
    }
}

#[derive(Clone, Debug)]
enum Op {
    Store {
        w: u8,
        chain: usize,
        start: usize,
        len: usize,
    },
    Remove {
        w: u8,
        chain: usize,
        start: usize,
        len: usize,
    },
    Clear {
        w: u8,
    },
    Snapshot {
        w: u8,
        chain: usize,
        len: usize,
    },
    DropInstance {
        inst: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..6, 0usize..3, 0usize..12, 1usize..8)
            .prop_map(|(w, chain, start, len)| Op::Store { w, chain, start, len }),
        3 => (0u8..6, 0usize..3, 0usize..12, 1usize..4)
            .prop_map(|(w, chain, start, len)| Op::Remove { w, chain, start, len }),
        1 => (0u8..6).prop_map(|w| Op::Clear { w }),
        1 => (0u8..6, 0usize..3, 0usize..12).prop_map(|(w, chain, len)| Op::Snapshot { w, chain, len }),
        1 => (0u8..3).prop_map(|inst| Op::DropInstance { inst }),
    ]
}

/// Brute force: a set per worker, the last id, and the pending-dump flag.
#[derive(Default)]
struct Model {
    workers: HashMap<WorkerKey, (HashSet<BlockHash>, u64, bool)>,
}

impl Model {
    fn overlap(&self, k: WorkerKey, q: &[BlockHash]) -> u32 {
        self.workers.get(&k).map_or(0, |(s, _, _)| {
            q.iter().take_while(|h| s.contains(h)).count() as u32
        })
    }

    /// Returns whether a dump is needed.
    fn apply(&mut self, k: WorkerKey, id: u64, data: &KvEventData) -> bool {
        let (set, last, pending) = self.workers.entry(k).or_default();
        if id <= *last {
            return false;
        }
        let snap = matches!(data, KvEventData::Snapshot { .. });
        let gap = id != *last + 1 && !snap;
        if gap {
            *pending = true;
        }
        *last = id;
        match data {
            KvEventData::Stored { blocks, .. } => set.extend(blocks.iter().copied()),
            KvEventData::Removed { blocks } => {
                for b in blocks {
                    set.remove(b);
                }
            }
            KvEventData::Cleared => set.clear(),
            KvEventData::Snapshot { blocks } => {
                *set = blocks.iter().copied().collect();
                *pending = false;
            }
        }
        gap
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn index_matches_brute_force(
        ops in proptest::collection::vec((op(), 0u8..10), 1..60),
        queries in proptest::collection::vec((0usize..3, 0usize..13), 4),
    ) {
        let chains = chains();
        let mut index = KvIndex::new();
        let mut model = Model::default();
        // The simulated workers' next event id.
        let mut next_id: HashMap<WorkerKey, u64> = HashMap::new();
        for (op, glitch) in ops {
            let (k, data) = match op {
                Op::Store { w, chain, start, len } => {
                    let c = &chains[chain];
                    let end = (start + len).min(c.len());
                    let parent = start.checked_sub(1).map(|p| c[p]);
                    (key(w), KvEventData::Stored { parent, blocks: c[start..end].to_vec() })
                }
                Op::Remove { w, chain, start, len } => {
                    let c = &chains[chain];
                    let end = (start + len).min(c.len());
                    (key(w), KvEventData::Removed { blocks: c[start..end].to_vec() })
                }
                Op::Clear { w } => (key(w), KvEventData::Cleared),
                Op::Snapshot { w, chain, len } => {
                    (key(w), KvEventData::Snapshot { blocks: chains[chain][..len].to_vec() })
                }
                Op::DropInstance { inst } => {
                    let id = InstanceId(u64::from(inst) + 1);
                    index.remove_instance(id);
                    model.workers.retain(|k, _| k.0 != id);
                    continue;
                }
            };
            let n = next_id.entry(k).or_insert(1);
            // glitch 0: lose 1-2 events (a gap); 1: resend an old id (a duplicate).
            let id = match glitch {
                0 => { *n += 2; *n - 1 }
                1 if *n > 1 => *n - 1,
                _ => { *n += 1; *n - 1 }
            };
            let want_dump = model.apply(k, id, &data);
            let got = index.apply(&batch(k, vec![(id, data)]));
            prop_assert_eq!(got.dump_needed, want_dump);
        }
        let mut want_total = 0;
        for w in 0..6 {
            let k = key(w);
            let want: HashSet<BlockHash> =
                model.workers.get(&k).map(|x| x.0.clone()).unwrap_or_default();
            want_total += want.len();
            prop_assert_eq!(index.worker_blocks(k), want.len());
            prop_assert_eq!(index.last_event_id(k), model.workers.get(&k).map(|x| x.1));
        }
        prop_assert_eq!(index.total_blocks(), want_total);
        let mut want_pending: Vec<WorkerKey> =
            model.workers.iter().filter(|(_, v)| v.2).map(|(k, _)| *k).collect();
        want_pending.sort();
        prop_assert_eq!(index.pending_dumps(), want_pending);
        let mut m = PrefixMatch::default();
        for (chain, len) in queries {
            let q = &chains[chain][..len];
            index.match_prefix(q, &mut m);
            for w in 0..6 {
                prop_assert_eq!(index.depth(&m, key(w)), model.overlap(key(w), q), "w {} q {:?}", w, q);
            }
        }
    }
}

#[test]
fn gap_requests_dump_and_snapshot_restores_exact_set() {
    let c = chains();
    let k = key(0);
    let mut index = KvIndex::new();
    let stored = |blocks: &[BlockHash]| KvEventData::Stored {
        parent: None,
        blocks: blocks.to_vec(),
    };
    let out = index.apply(&batch(k, vec![(1, stored(&c[0][..3]))]));
    assert_eq!((out.dump_needed, out.applied), (false, 1));
    // Event 2 is lost: 3 is a gap.
    let out = index.apply(&batch(k, vec![(3, stored(&c[2][..2]))]));
    assert!(out.dump_needed);
    assert_eq!(index.pending_dumps(), vec![k]);
    // A duplicate of 3 and an old 2 are skipped.
    let out = index.apply(&batch(
        k,
        vec![(3, KvEventData::Cleared), (2, KvEventData::Cleared)],
    ));
    assert_eq!((out.dump_needed, out.applied, out.skipped), (false, 0, 2));
    assert_eq!(index.worker_blocks(k), 5);
    // The snapshot replaces everything and clears the pending dump; 5 follows it.
    let snap = c[1][..6].to_vec();
    let out = index.apply(&batch(
        k,
        vec![(
            4,
            KvEventData::Snapshot {
                blocks: snap.clone(),
            },
        )],
    ));
    assert!(!out.dump_needed);
    let mut want = snap.clone();
    want.sort();
    assert_eq!(index.blocks_of(k), want);
    assert!(index.pending_dumps().is_empty());
    assert_eq!(index.overlaps(&c[1]), BTreeMap::from([(k, 6)]));
    // chain 0 shares 4 blocks with chain 1
    assert_eq!(index.overlaps(&c[0]), BTreeMap::from([(k, 4)]));
    let out = index.apply(&batch(k, vec![(5, KvEventData::Cleared)]));
    assert!(!out.dump_needed);
    assert_eq!((index.total_blocks(), index.unique_blocks()), (0, 0));
}

#[test]
fn unknown_worker_mid_stream_needs_dump_but_fresh_one_does_not() {
    let c = chains();
    let mut index = KvIndex::new();
    let stored = KvEventData::Stored {
        parent: None,
        blocks: c[0][..2].to_vec(),
    };
    assert!(
        !index
            .apply(&batch(key(0), vec![(1, stored.clone())]))
            .dump_needed
    );
    assert!(
        index
            .apply(&batch(key(1), vec![(17, stored.clone())]))
            .dump_needed
    );
    // A first event that is a snapshot sets the baseline.
    let snap = KvEventData::Snapshot {
        blocks: c[2][..3].to_vec(),
    };
    assert!(
        !index
            .apply(&batch(key(2), vec![(40, snap), (41, stored)]))
            .dump_needed
    );
    assert_eq!(index.worker_blocks(key(2)), 5);
    assert_eq!(index.pending_dumps(), vec![key(1)]);
}

#[test]
fn removing_an_instance_drops_all_its_ranks_blocks() {
    let c = chains();
    let mut index = KvIndex::new();
    for w in 0..4 {
        let ev = KvEventData::Stored {
            parent: None,
            blocks: c[0][..(w as usize + 1) * 2].to_vec(),
        };
        index.apply(&batch(key(w), vec![(1, ev)]));
    }
    assert_eq!(index.total_blocks(), 2 + 4 + 6 + 8);
    assert_eq!(index.unique_blocks(), 8);
    // Instance 1 holds ranks 0 and 1 (workers 0 and 1).
    assert_eq!(index.remove_instance(InstanceId(1)), 2);
    assert_eq!(index.total_blocks(), 6 + 8);
    assert_eq!(
        index.overlaps(&c[0]),
        BTreeMap::from([(key(2), 6), (key(3), 8)])
    );
    assert_eq!(index.remove_instance(InstanceId(1)), 0);
    assert_eq!(index.worker_blocks(key(0)), 0);
    assert_eq!(index.last_event_id(key(0)), None);
}

#[test]
fn block_size_change_drops_blocks_and_asks_for_dump() {
    let c = chains();
    let mut index = KvIndex::new();
    let ev = KvEventData::Stored {
        parent: None,
        blocks: c[0][..3].to_vec(),
    };
    index.apply(&batch(key(0), vec![(1, ev.clone())]));
    let mut b = batch(key(0), vec![(2, ev)]);
    b.block_size = 8;
    assert!(index.apply(&b).dump_needed);
    assert_eq!(index.worker_block_size(key(0)), Some(8));
    assert_eq!(index.worker_blocks(key(0)), 3);
}

#[test]
fn many_workers_grow_the_bitsets() {
    let c = chains();
    let mut index = KvIndex::new();
    for i in 0..200u64 {
        let k = (InstanceId(i), DpRank(0));
        let len = (i % 12) as usize + 1;
        let ev = KvEventData::Stored {
            parent: None,
            blocks: c[0][..len].to_vec(),
        };
        index.apply(&batch(k, vec![(1, ev)]));
    }
    let o = index.overlaps(&c[0]);
    assert_eq!(o.len(), 200);
    for (k, d) in o {
        assert_eq!(u64::from(d), k.0.0 % 12 + 1);
    }
}

#[test]
fn a_joining_worker_waits_for_its_snapshot() {
    let c = chains();
    let mut index = KvIndex::new();
    index.expect_dump(key(3), 16);
    assert_eq!(index.pending_dumps(), vec![key(3)]);
    // Live events do not replace the snapshot: still pending.
    let stored = KvEventData::Stored {
        parent: None,
        blocks: c[0][..2].to_vec(),
    };
    index.apply(&batch(key(3), vec![(1, stored)]));
    assert_eq!(index.pending_dumps(), vec![key(3)]);
    let snap = KvEventData::Snapshot {
        blocks: c[1][..3].to_vec(),
    };
    index.apply(&batch(key(3), vec![(2, snap)]));
    assert!(index.pending_dumps().is_empty());
    assert_eq!(index.worker_blocks(key(3)), 3);
    // A worker already indexed is left as it is.
    index.expect_dump(key(3), 16);
    assert!(index.pending_dumps().is_empty());
}
