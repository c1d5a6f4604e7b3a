//! Offload tiers in the KV index and the cost function: G2/G3 blocks are tracked per tier,
//! discounted by their onboarding cost (neither full hits nor misses), and survive a G1
//! `Cleared`; a `Snapshot` replaces every tier.

use super::*;
use ferrite_protocol::hashing::block_hashes;
use ferrite_protocol::{
    BlockHash, DpRank, InstanceId, InstanceRecord, KvEvent, KvEventBatch, KvEventData, RequestId,
    StorageTier, WorkerLoad, WorkerRole,
};

fn record(id: u64) -> InstanceRecord {
    InstanceRecord {
        instance_id: InstanceId(id),
        component: "worker".into(),
        role: WorkerRole::Agg,
        model: "m".into(),
        subject: format!("gen.{id}"),
        control_subject: format!("ctl.{id}"),
        dp_size: 1,
        kv_block_size: 16,
        total_kv_blocks: 1000,
        transfer: None,
    }
}

fn batch(id: u64, events: Vec<(u64, StorageTier, KvEventData)>) -> KvEventBatch {
    KvEventBatch {
        instance_id: InstanceId(id),
        dp_rank: DpRank(0),
        block_size: 16,
        events: events
            .into_iter()
            .map(|(event_id, storage_tier, data)| KvEvent {
                event_id,
                data,
                storage_tier,
            })
            .collect(),
    }
}

fn stored(blocks: &[BlockHash]) -> KvEventData {
    KvEventData::Stored {
        parent: None,
        blocks: blocks.to_vec(),
    }
}

fn removed(blocks: &[BlockHash]) -> KvEventData {
    KvEventData::Removed {
        blocks: blocks.to_vec(),
    }
}

fn idle(id: u64) -> WorkerLoad {
    WorkerLoad {
        instance_id: InstanceId(id),
        dp_rank: DpRank(0),
        total_blocks: 1000,
        ..Default::default()
    }
}

fn req(id: u128, tokens: Vec<u32>) -> RouteRequest {
    RouteRequest {
        request_id: RequestId(uuid::Uuid::from_u128(id)),
        model: "m".into(),
        token_ids: tokens,
        ..Default::default()
    }
}

#[test]
fn index_tracks_tiers_and_runs_across_them() {
    use crate::kv_index::KvIndex;
    let h = block_hashes(&(0..160).collect::<Vec<u32>>(), 16, 0);
    let key = (InstanceId(1), DpRank(0));
    let mut ix = KvIndex::new();
    let out = ix.apply(&batch(
        1,
        vec![
            (1, StorageTier::Device, stored(&h[..3])),
            (2, StorageTier::Host, stored(&h[3..6])),
            (3, StorageTier::Disk, stored(&h[6..8])),
        ],
    ));
    assert!(!out.dump_needed);
    assert_eq!(ix.overlaps(&h).get(&key), Some(&3), "device overlap only");
    assert_eq!(ix.tier_run(key, &h, 3), [0, 3, 2]);
    assert_eq!(ix.tier_of(key, h[4]), Some(StorageTier::Host));
    assert_eq!(ix.tier_of(key, h[7]), Some(StorageTier::Disk));
    assert_eq!(ix.worker_lower_blocks(key), 5);
    // Onboarding h[3]: stored in G1, removed from G2 (either order).
    ix.apply(&batch(
        1,
        vec![
            (4, StorageTier::Host, removed(&h[3..4])),
            (5, StorageTier::Device, stored(&h[3..4])),
        ],
    ));
    assert_eq!(ix.overlaps(&h).get(&key), Some(&4));
    assert_eq!(ix.tier_run(key, &h, 4), [0, 2, 2]);
    // An engine restart clears G1 only; the lower tiers stay.
    ix.apply(&batch(
        1,
        vec![(6, StorageTier::Device, KvEventData::Cleared)],
    ));
    assert_eq!(ix.overlaps(&h).get(&key), None);
    assert_eq!(
        ix.tier_run(key, &h, 0),
        [0, 0, 0],
        "run starts at a G1 miss"
    );
    assert_eq!(ix.tier_run(key, &h, 4), [0, 2, 2]);
    ix.apply(&batch(
        1,
        vec![(7, StorageTier::Disk, KvEventData::Cleared)],
    ));
    assert_eq!(ix.tier_run(key, &h, 4), [0, 2, 0]);
    // A snapshot replaces all tiers (lower tiers follow it as Stored events).
    ix.apply(&batch(
        1,
        vec![
            (
                8,
                StorageTier::Device,
                KvEventData::Snapshot {
                    blocks: h[..1].to_vec(),
                },
            ),
            (9, StorageTier::Disk, stored(&h[1..2])),
        ],
    ));
    assert_eq!(ix.worker_lower_blocks(key), 1);
    assert_eq!(ix.tier_run(key, &h, 1), [0, 0, 1]);
}

#[test]
fn tiered_cost_discounts_offloaded_blocks() {
    let l = idle(1);
    // 160 tokens, 10 blocks; nothing cached: prefill 10 + decode 10.
    assert_eq!(KvPolicy::cost_tiered(1.0, &l, 16, 160, 0, 0.0), 20.0);
    // 4 in G1, 4 in G2 at cost 0.2 (worth 3.2), rest computed: prefill 10 - 7.2 = 2.8,
    // decode adds the 6 blocks not in G1.
    let eff = 4.0 + TierCosts::default().effective([0, 4, 0]);
    let c = KvPolicy::cost_tiered(1.0, &l, 16, 160, 4, eff);
    assert!((c - (2.8 + 6.0)).abs() < 1e-9, "{c}");
    // Strictly between a full hit and a miss.
    assert!(c > KvPolicy::cost(1.0, &l, 16, 160, 8));
    assert!(c < KvPolicy::cost(1.0, &l, 16, 160, 4));
    // Disk is worth less than host.
    let d = KvPolicy::cost_tiered(
        1.0,
        &l,
        16,
        160,
        4,
        4.0 + TierCosts::default().effective([0, 0, 4]),
    );
    assert!(d > c);
    assert_eq!(
        TierCosts {
            host: 0.0,
            disk: 1.0
        }
        .effective([1, 2, 3]),
        3.0
    );
}

#[test]
fn router_prefers_g1_then_g2_then_g3_over_nothing() {
    let mut r = Router::with_kind(PolicyKind::Kv);
    for id in 1..=4 {
        assert!(r.instance_up(record(id)));
        r.load_report(idle(id));
    }
    let p: Vec<u32> = (0..160).map(|i| 7000 + i).collect();
    let h = block_hashes(&p, 16, 0);
    // 1: 8 blocks in G1; 2: 8 in G2; 3: 8 in G3; 4: nothing.
    r.kv_events(&batch(1, vec![(1, StorageTier::Device, stored(&h[..8]))]));
    r.kv_events(&batch(2, vec![(1, StorageTier::Host, stored(&h[..8]))]));
    r.kv_events(&batch(3, vec![(1, StorageTier::Disk, stored(&h[..8]))]));
    let pick = |r: &mut Router, id: u128, exclude: &[InstanceId]| {
        r.route_with_overlap(&req(id, p.clone()), exclude)
            .expect("routable")
    };
    let d = pick(&mut r, 1, &[]);
    assert_eq!((d.instance_id, d.overlap_blocks), (InstanceId(1), 8));
    let d = pick(&mut r, 2, &[InstanceId(1)]);
    assert_eq!((d.instance_id, d.overlap_blocks), (InstanceId(2), 8));
    let d = pick(&mut r, 3, &[InstanceId(1), InstanceId(2)]);
    assert_eq!((d.instance_id, d.overlap_blocks), (InstanceId(3), 8));
    let d = pick(&mut r, 4, &[InstanceId(1), InstanceId(2), InstanceId(3)]);
    assert_eq!((d.instance_id, d.overlap_blocks), (InstanceId(4), 0));
}
