//! Simulated KV block copies (offload tiers, KV transfer): the mocker has no cache bytes,
//! so a copy is a checked size and a sleep of `blocks × simulated block bytes / bandwidth`
//! (divided by `speedup`, less the real time already spent moving the small payload).

use crate::MockerConfig;
use ferrite_engine::{EngineError, KvBlockLayout, Result};
use ferrite_protocol::BlockId;
use std::time::{Duration, Instant};

pub(crate) fn layout(cfg: &MockerConfig) -> Option<KvBlockLayout> {
    (cfg.kv_bytes_per_block > 0).then(|| KvBlockLayout {
        num_layers: 0,
        num_kv_heads: 0,
        head_dim: 0,
        block_size: cfg.kv.block_size,
        dtype: "simulated".into(),
        bytes_per_block: cfg.kv_bytes_per_block,
    })
}

/// Simulated seconds to copy `bytes` at `gbps` GB/s.
pub fn copy_seconds(bytes: usize, gbps: f64, speedup: f64) -> f64 {
    let gbps = if gbps > 0.0 { gbps } else { 25.0 };
    let speedup = if speedup > 0.0 { speedup } else { 1.0 };
    bytes as f64 / (gbps * 1e9) / speedup
}

pub(crate) fn simulate(cfg: &MockerConfig, blocks: &[BlockId], bytes: usize) -> Result<()> {
    let t0 = Instant::now();
    if cfg.kv_bytes_per_block == 0 {
        return Err(EngineError::Backend(
            "the mocker was started without --mock-kv-bytes-per-block: no KV copies".into(),
        ));
    }
    if bytes != blocks.len() * cfg.kv_bytes_per_block {
        return Err(EngineError::InvalidBatch(format!(
            "KV copy of {} blocks with {bytes} bytes (blocks are {} bytes)",
            blocks.len(),
            cfg.kv_bytes_per_block
        )));
    }
    if let Some(b) = blocks.iter().find(|b| b.0 >= cfg.kv.num_blocks) {
        return Err(EngineError::InvalidBatch(format!(
            "block {} beyond {} blocks",
            b.0, cfg.kv.num_blocks
        )));
    }
    let sim = match cfg.kv_sim_bytes_per_block {
        0 => cfg.kv_bytes_per_block,
        n => n,
    };
    let want = Duration::from_secs_f64(copy_seconds(
        blocks.len() * sim,
        cfg.kv_copy_gbps,
        cfg.speedup,
    ));
    if let Some(rest) = want.checked_sub(t0.elapsed()) {
        std::thread::sleep(rest);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MockerExecutor;
    use ferrite_engine::Executor;

    #[test]
    fn copies_take_bytes_over_bandwidth() {
        assert!((copy_seconds(25_000_000, 25.0, 1.0) - 1e-3).abs() < 1e-12);
        let mut m = MockerExecutor::new(MockerConfig {
            kv_bytes_per_block: 1 << 20,
            kv_copy_gbps: 1.0,
            ..Default::default()
        })
        .expect("mocker");
        let layout = m.kv_block_layout().expect("layout");
        assert_eq!(layout.bytes_per_block, 1 << 20);
        let blocks = [BlockId(1), BlockId(2), BlockId(3), BlockId(4)];
        let mut buf = vec![7u8; 4 << 20];
        let t0 = Instant::now();
        m.read_kv_blocks(&blocks, &mut buf).expect("read");
        let took = t0.elapsed().as_secs_f64();
        // 4 MiB at 1 GB/s: 4.19 ms.
        assert!((0.0041..0.05).contains(&took), "took {took}");
        assert!(buf.iter().all(|b| *b == 0));
        assert!(m.write_kv_blocks(&blocks, &buf[1..]).is_err());
        assert!(
            m.write_kv_blocks(&[BlockId(1 << 20)], &buf[..1 << 20])
                .is_err()
        );
        let mut plain = MockerExecutor::new(MockerConfig::default()).expect("mocker");
        assert!(plain.kv_block_layout().is_none());
        assert!(plain.write_kv_blocks(&[], &[]).is_err());
        // A small real payload with a large simulated size: 8 blocks of 4 MiB at 8 GB/s.
        let mut sim = MockerExecutor::new(MockerConfig {
            kv_bytes_per_block: 16,
            kv_sim_bytes_per_block: 4 << 20,
            kv_copy_gbps: 8.0,
            ..Default::default()
        })
        .expect("mocker");
        let blocks: Vec<BlockId> = (0..8).map(BlockId).collect();
        let t0 = Instant::now();
        sim.write_kv_blocks(&blocks, &[0u8; 128]).expect("write");
        let took = t0.elapsed().as_secs_f64();
        assert!((0.0041..0.05).contains(&took), "took {took}");
    }
}
