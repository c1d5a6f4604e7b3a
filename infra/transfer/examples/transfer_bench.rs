//! Loopback KV transfer benchmark of both transports: per-block latency (one block sent
//! and acknowledged) and bandwidth (many blocks in 4 MiB chunks, each acknowledged).
//! `cargo run --release -p ferrite-transfer --example transfer_bench [tcp|ucx|all]`
//! UCX picks its own transports (shared memory on one host); set `UCX_TLS=tcp
//! UCX_NET_DEVICES=lo` to force TCP inside UCX.

use ferrite_protocol::{BlockId, KvLayout, RequestId};
use ferrite_transfer::{TransferClient, TransferServer, TransportKind};
use std::time::Instant;

fn layout(bytes_per_block: usize) -> KvLayout {
    KvLayout {
        num_layers: 1,
        num_kv_heads: 1,
        head_dim: 1,
        block_size: 16,
        dtype: "f32".into(),
        bytes_per_block,
    }
}

async fn run(
    kind: TransportKind,
    bpb: usize,
    nblocks: usize,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let (server, mut rx) = TransferServer::bind(kind, "127.0.0.1", layout(bpb)).await?;
    let sink = tokio::spawn(async move {
        while let Some(inc) = rx.recv().await {
            inc.ack(Ok(()));
        }
    });
    let client = TransferClient::new(kind, layout(bpb))?;
    let info = server.info();
    let rid = RequestId::new();
    let blocks: Vec<BlockId> = (0..nblocks as u32).map(BlockId).collect();
    let data = vec![0xa5u8; bpb * nblocks];
    let mut session = client.session(&info).await?;
    session.send(rid, &blocks, &data).await?; // warm-up
    let bytes = bpb * nblocks;
    let iters = ((512usize << 20) / bytes).clamp(20, 5_000);
    let t = Instant::now();
    for _ in 0..iters {
        session.send(rid, &blocks, &data).await?;
    }
    let secs = t.elapsed().as_secs_f64();
    drop(session);
    server.shutdown().await;
    sink.abort();
    Ok((
        (bytes * iters) as f64 / secs / 1e9,
        secs / iters as f64 * 1e6,
    ))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let mut kinds = Vec::new();
    if which == "all" || which == "tcp" {
        kinds.push(("tcp", TransportKind::Tcp));
    }
    if (which == "all" || which == "ucx") && TransportKind::ucx_available() {
        kinds.push(("ucx", TransportKind::Ucx));
    }
    println!("| transport | block bytes | blocks/transfer | GB/s | µs/transfer |");
    println!("|---|---|---|---|---|");
    for (name, kind) in kinds {
        // Per-block latency: one block per transfer, various block sizes.
        for bpb in [4096usize, 65536, 1 << 20] {
            let (gbs, us) = run(kind, bpb, 1).await?;
            println!("| {name} | {bpb} | 1 | {gbs:.2} | {us:.1} |");
        }
        // Bandwidth: 64 KiB blocks (a 16-token block of a 1B-class model), 16 MiB
        // transfers in 4 MiB chunks.
        let (gbs, us) = run(kind, 65536, 256).await?;
        println!("| {name} | 65536 | 256 | {gbs:.2} | {us:.1} |");
    }
    Ok(())
}
