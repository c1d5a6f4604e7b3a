use super::*;

const BPB: usize = 64;

fn cfg(host_blocks: u64, disk_blocks: u64, dir: Option<&std::path::Path>) -> TierConfig {
    TierConfig {
        bytes_per_block: BPB,
        host_bytes: host_blocks * BPB as u64,
        disk_bytes: disk_blocks * disk::slot_bytes(BPB) as u64,
        disk_dir: dir.map(|d| d.to_path_buf()),
        min_hits_for_disk: 0,
    }
}

fn block(seed: u8) -> Vec<u8> {
    (0..BPB)
        .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8))
        .collect()
}

fn read(src: &BlockSource) -> Result<Vec<u8>> {
    let mut out = vec![0u8; BPB];
    src.read_into(&mut out)?;
    Ok(out)
}

#[test]
fn host_then_disk_then_dropped_and_onboarded_back_intact() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = OffloadStore::new(cfg(2, 2, Some(dir.path())));
    for i in 1..=5u8 {
        s.offload(BlockHash(u64::from(i)), block(i), 0);
        s.check_invariants().expect("invariants");
    }
    // 5 blocks into 2 host + 2 disk: the oldest (1) was dropped.
    assert_eq!((s.num_host(), s.num_disk()), (2, 2));
    assert_eq!(s.tier_of(&BlockHash(1)), None);
    assert_eq!(s.tier_of(&BlockHash(2)), Some(StorageTier::Disk));
    assert_eq!(s.tier_of(&BlockHash(3)), Some(StorageTier::Disk));
    assert_eq!(s.tier_of(&BlockHash(5)), Some(StorageTier::Host));
    let want = [BlockHash(2), BlockHash(3), BlockHash(4), BlockHash(9)];
    assert_eq!(
        s.match_prefix(&want),
        vec![StorageTier::Disk, StorageTier::Disk, StorageTier::Host]
    );
    let got = s.take(&want[..3]);
    assert_eq!(got.len(), 3);
    for (h, src, _) in &got {
        assert_eq!(read(src).expect("intact"), block(h.0 as u8), "{h:?}");
    }
    assert_eq!(
        s.tier_of(&BlockHash(2)),
        None,
        "taken blocks leave the tiers"
    );
    s.check_invariants().expect("invariants");
    let st = s.stats();
    assert_eq!(
        (st.offloaded_host, st.offloaded_disk, st.dropped),
        (5, 3, 1)
    );
    assert_eq!((st.onboarded_host, st.onboarded_disk), (1, 2));
}

#[test]
fn events_carry_tiers() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = OffloadStore::new(cfg(1, 1, Some(dir.path())));
    s.offload(BlockHash(7), block(7), 0);
    s.offload(BlockHash(8), block(8), 0);
    let ev = s.take_events();
    let kinds: Vec<(StorageTier, &str, Vec<BlockHash>)> = ev
        .iter()
        .map(|(t, d)| match d {
            KvEventData::Stored { blocks, .. } => (*t, "stored", blocks.clone()),
            KvEventData::Removed { blocks } => (*t, "removed", blocks.clone()),
            _ => (*t, "other", vec![]),
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            (StorageTier::Host, "stored", vec![BlockHash(7)]),
            (StorageTier::Host, "removed", vec![BlockHash(7)]),
            (StorageTier::Disk, "stored", vec![BlockHash(7)]),
            (StorageTier::Host, "stored", vec![BlockHash(8)]),
        ]
    );
}

#[test]
fn min_hits_keeps_cold_blocks_off_disk() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = cfg(1, 4, Some(dir.path()));
    c.min_hits_for_disk = 2;
    let mut s = OffloadStore::new(c);
    s.offload(BlockHash(1), block(1), 0); // cold
    s.offload(BlockHash(2), block(2), 3); // hot; pushes 1 out: dropped
    s.offload(BlockHash(3), block(3), 0); // pushes 2 out: to disk
    assert_eq!(s.tier_of(&BlockHash(1)), None);
    assert_eq!(s.tier_of(&BlockHash(2)), Some(StorageTier::Disk));
    assert_eq!(s.tier_of(&BlockHash(3)), Some(StorageTier::Host));
}

#[test]
fn corrupt_disk_block_is_detected_and_never_returned() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = OffloadStore::new(cfg(0, 4, Some(dir.path())));
    s.offload(BlockHash(1), block(1), 0);
    s.offload(BlockHash(2), block(2), 0);
    assert!(s.corrupt_disk_block(&BlockHash(2)));
    let got = s.take(&[BlockHash(1), BlockHash(2)]);
    assert_eq!(read(&got[0].1).expect("block 1 intact"), block(1));
    let err = read(&got[1].1).expect_err("corruption must be detected");
    assert!(matches!(err, KvError::Corrupt(_)), "{err}");
}

#[test]
fn truncated_disk_file_is_a_miss() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = OffloadStore::new(cfg(0, 4, Some(dir.path())));
    s.offload(BlockHash(1), block(1), 0);
    s.offload(BlockHash(2), block(2), 0);
    let file = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .next()
        .expect("slot file")
        .path();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .expect("open");
    s.flush_disk();
    f.set_len(disk::slot_bytes(BPB) as u64 + 10)
        .expect("truncate");
    let got = s.take(&[BlockHash(1), BlockHash(2)]);
    assert_eq!(read(&got[0].1).expect("block 1 intact"), block(1));
    assert!(matches!(read(&got[1].1), Err(KvError::Corrupt(_))));
}

#[test]
fn a_reused_slot_does_not_pass_for_the_old_block() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = OffloadStore::new(cfg(0, 1, Some(dir.path())));
    s.offload(BlockHash(1), block(1), 0);
    let planned = s.take(&[BlockHash(1)]);
    s.offload(BlockHash(2), block(2), 0); // same slot, written before the read runs
    assert!(matches!(read(&planned[0].1), Err(KvError::Corrupt(_))));
}

#[test]
fn full_disk_degrades_to_host_only_without_failing() {
    let dev_full = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let mut s = OffloadStore::with_disk_file(cfg(1, 4, None), dev_full, 4);
    s.offload(BlockHash(1), block(1), 0);
    s.offload(BlockHash(2), block(2), 0); // 1 → disk: ENOSPC (on the writer thread)
    s.flush_disk();
    assert!(s.disk_disabled());
    assert_eq!(s.stats().disk_write_failures, 1);
    // The failed block is still indexed but is a miss when read.
    let got = s.take(&[BlockHash(1)]);
    assert!(matches!(read(&got[0].1), Err(KvError::Corrupt(_))));
    s.offload(BlockHash(3), block(3), 0);
    assert_eq!(s.tier_of(&BlockHash(3)), Some(StorageTier::Host));
    assert!(s.is_enabled(), "host tier keeps working");
    s.check_invariants().expect("invariants");
}

#[test]
fn unusable_disk_folder_runs_without_disk() {
    let s = OffloadStore::new(cfg(2, 2, Some(std::path::Path::new("/proc/no/such/dir"))));
    assert!(s.disk_disabled());
    assert!(s.is_enabled());
}

#[test]
fn disk_file_is_fresh_at_start_and_removed_on_drop() {
    let dir = tempfile::tempdir().expect("tmp");
    // A stale file of a process that does not exist is deleted.
    let stale = dir.path().join("ferrite-kvbm-4000000000-0.g3");
    std::fs::write(&stale, b"old").expect("write");
    let s = OffloadStore::new(cfg(0, 2, Some(dir.path())));
    assert!(!stale.exists());
    assert_eq!(s.num_disk(), 0);
    let files = || std::fs::read_dir(dir.path()).expect("dir").count();
    assert_eq!(files(), 1);
    drop(s);
    assert_eq!(files(), 0);
}

#[test]
fn direct_io_slots_are_aligned_and_round_trip() {
    assert_eq!(disk::slot_bytes(1), 4096);
    assert_eq!(disk::slot_bytes(4096 - disk::HEADER), 4096);
    assert_eq!(disk::slot_bytes(4096), 8192);
    // This crate's folder is on a real filesystem (not tmpfs), where O_DIRECT is expected.
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("tmp");
    let bpb = 3 * 4096 + 100;
    let f = disk::DiskFile::create(dir.path(), 4, bpb).expect("create");
    let data: Vec<u8> = (0..bpb).map(|i| (i * 7 % 251) as u8).collect();
    f.write(2, BlockHash(9), &data).expect("write");
    let mut out = vec![0u8; bpb];
    f.read_plan(2, BlockHash(9))
        .read_into(&mut out)
        .expect("read");
    assert_eq!(out, data);
    assert!(
        f.read_plan(2, BlockHash(8)).read_into(&mut out).is_err(),
        "wrong hash must not pass"
    );
    let len = std::fs::metadata(f.path().expect("path"))
        .expect("meta")
        .len();
    assert_eq!(len, 4 * disk::slot_bytes(bpb) as u64);
    eprintln!("direct I/O: {}", f.is_direct());
}
