//! Bandwidth of the machine and of the offload tiers' own paths, for docs/benchmarks/kvbm.md:
//! plain memcpy, G2 offload + onboard (host copies), G3 offload (write) and onboard (read +
//! checksum). `cargo run --release -p ferrite-kv --example kvbm_bw -- [DIR] [BLOCK_BYTES]`.

use ferrite_kv::{OffloadStore, TierConfig};
use ferrite_protocol::BlockHash;
use std::time::Instant;

fn gbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("ferrite-kvbm-bw"));
    let bpb: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(737_280);
    let n = (768usize << 20) / bpb; // ~768 MiB of blocks
    let total = n * bpb;

    // memcpy between two large buffers (best of 3).
    let src: Vec<u8> = (0..total).map(|i| i as u8).collect();
    let mut dst = vec![0u8; total];
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "memcpy                 {:7.2} GB/s ({} MiB)",
        gbps(total, best),
        total >> 20
    );

    let blocks: Vec<Vec<u8>> = src.chunks_exact(bpb).map(<[u8]>::to_vec).collect();
    for (name, host, disk) in [
        ("G2 (host)", total as u64, 0u64),
        ("G3 (disk)", 0, 2 * total as u64),
    ] {
        let mut store = OffloadStore::new(TierConfig {
            bytes_per_block: bpb,
            host_bytes: host,
            disk_bytes: disk,
            disk_dir: Some(dir.clone()),
            min_hits_for_disk: 0,
        });
        let t = Instant::now();
        for (i, b) in blocks.iter().enumerate() {
            store.offload(BlockHash(i as u64 + 1), b.clone(), 0);
        }
        let off = t.elapsed().as_secs_f64();
        let hashes: Vec<BlockHash> = (1..=n as u64).map(BlockHash).collect();
        let taken = store.take(&hashes);
        // Into one large buffer (as into a G1 arena), not a cache-resident scratch block.
        dst.fill(1);
        let t = Instant::now();
        let mut ok = 0;
        for ((_, s, _), out) in taken.iter().zip(dst.chunks_exact_mut(bpb)) {
            if s.read_into(out).is_ok() {
                ok += 1;
            }
        }
        let on = t.elapsed().as_secs_f64();
        println!(
            "{name}  offload {:7.2} GB/s   onboard read {:7.2} GB/s   ({ok}/{n} blocks of {bpb} B)",
            gbps(total, off),
            gbps(ok * bpb, on)
        );
    }
}
