use super::*;
use ferrite_protocol::{BlockId, KvLayout, RequestId};

fn layout(bytes_per_block: usize) -> KvLayout {
    KvLayout {
        num_layers: 2,
        num_kv_heads: 2,
        head_dim: 4,
        block_size: 16,
        dtype: "f32".into(),
        bytes_per_block,
    }
}

/// (request, block id, bytes, chunk index)
type Received = (RequestId, u32, Vec<u8>, usize);

/// Receives every chunk into a map block id → bytes, acking each.
fn spawn_sink(
    mut rx: tokio::sync::mpsc::Receiver<IncomingBlocks>,
    bpb: usize,
) -> tokio::task::JoinHandle<Vec<Received>> {
    tokio::spawn(async move {
        let mut got = Vec::new();
        let mut chunk = 0;
        while let Some(inc) = rx.recv().await {
            let (rid, blocks, data, acker) = inc.into_parts();
            for (i, b) in blocks.iter().enumerate() {
                got.push((rid, b.0, data[i * bpb..(i + 1) * bpb].to_vec(), chunk));
            }
            chunk += 1;
            acker.ack(Ok(()));
        }
        got
    })
}

#[tokio::test]
async fn blocks_arrive_intact_in_chunks() {
    let bpb = 1000;
    let (server, rx) = TransferServer::bind(TransportKind::Tcp, "127.0.0.1", layout(bpb))
        .await
        .unwrap();
    let sink = spawn_sink(rx, bpb);
    let client = TransferClient::new(TransportKind::Auto, layout(bpb))
        .unwrap()
        .with_chunk_bytes(3 * bpb);
    assert_eq!(client.chunk_blocks(), 3);
    let rid = RequestId::new();
    let blocks: Vec<BlockId> = (0..7).map(|i| BlockId(100 + i)).collect();
    let data: Vec<u8> = (0..7 * bpb).map(|i| (i * 31 % 251) as u8).collect();
    client
        .send(&server.info(), rid, &blocks, &data)
        .await
        .unwrap();
    // A second transfer reuses the pooled connection.
    client
        .send(&server.info(), rid, &blocks[..1], &data[..bpb])
        .await
        .unwrap();
    server.shutdown().await;
    let got = sink.await.unwrap();
    assert_eq!(got.len(), 8);
    for (i, (r, b, bytes, chunk)) in got.iter().take(7).enumerate() {
        assert_eq!(*r, rid);
        assert_eq!(*b, 100 + i as u32);
        assert_eq!(bytes.as_slice(), &data[i * bpb..(i + 1) * bpb]);
        assert_eq!(*chunk, i / 3, "block {i} in chunk {chunk}");
    }
    assert_eq!(got[7].3, 3);
}

#[tokio::test]
async fn layout_mismatch_is_refused_at_connect() {
    let (server, _rx) = TransferServer::bind(TransportKind::Tcp, "127.0.0.1", layout(1000))
        .await
        .unwrap();
    let mut other = layout(1000);
    other.dtype = "bf16".into();
    let client = TransferClient::new(TransportKind::Tcp, other).unwrap();
    let err = client
        .send(&server.info(), RequestId::new(), &[], &[])
        .await
        .err()
        .unwrap();
    match err {
        TransferError::LayoutMismatch(why) => assert!(why.contains("bf16"), "{why}"),
        e => panic!("expected a layout mismatch, got {e}"),
    }
}

#[tokio::test]
async fn receiver_refusal_reaches_the_sender() {
    let bpb = 64;
    let (server, mut rx) = TransferServer::bind(TransportKind::Tcp, "127.0.0.1", layout(bpb))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Some(inc) = rx.recv().await {
            inc.ack(Err("request unknown".into()));
        }
    });
    let client = TransferClient::new(TransportKind::Tcp, layout(bpb)).unwrap();
    let err = client
        .send(&server.info(), RequestId::new(), &[BlockId(1)], &[7u8; 64])
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, TransferError::Refused(w) if w.contains("unknown")),
        "{err}"
    );
    // Wrong payload size is caught before sending.
    let err = client
        .send(&server.info(), RequestId::new(), &[BlockId(1)], &[7u8; 3])
        .await
        .err()
        .unwrap();
    assert!(matches!(err, TransferError::Protocol(_)), "{err}");
}

#[tokio::test]
async fn dead_receiver_is_an_error_not_a_hang() {
    let (server, rx) = TransferServer::bind(TransportKind::Tcp, "127.0.0.1", layout(8))
        .await
        .unwrap();
    let info = server.info();
    drop(rx);
    server.shutdown().await;
    let client = TransferClient::new(TransportKind::Tcp, layout(8)).unwrap();
    let res = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.send(&info, RequestId::new(), &[BlockId(0)], &[0u8; 8]),
    )
    .await
    .unwrap();
    assert!(res.is_err());
}

#[test]
fn transport_names_parse() {
    assert_eq!(
        TransportKind::Ucx.check_available().is_ok(),
        TransportKind::ucx_available()
    );
    assert_eq!(
        "tcp".parse::<TransportKind>().ok(),
        Some(TransportKind::Tcp)
    );
    assert!("carrier-pigeon".parse::<TransportKind>().is_err());
}

// ---- UCX (skipped with a note where libucp is not installed) ------------------------------

fn ucx_here() -> bool {
    if TransportKind::ucx_available() {
        return true;
    }
    eprintln!("UCX not installed here: UCX test skipped (apt-get install libucx0)");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ucx_blocks_arrive_intact() {
    if !ucx_here() {
        return;
    }
    let bpb = 4096;
    let (server, rx) = TransferServer::bind(TransportKind::Ucx, "127.0.0.1", layout(bpb))
        .await
        .unwrap();
    assert_eq!(server.info().kind, "ucx");
    let sink = spawn_sink(rx, bpb);
    let client = TransferClient::new(TransportKind::Ucx, layout(bpb))
        .unwrap()
        .with_chunk_bytes(5 * bpb);
    let rid = RequestId::new();
    let blocks: Vec<BlockId> = (0..12).map(BlockId).collect();
    let data: Vec<u8> = (0..12 * bpb).map(|i| (i * 7 % 253) as u8).collect();
    let mut session = client.session(&server.info()).await.unwrap();
    assert_eq!(session.transport(), "ucx");
    session.send(rid, &blocks, &data).await.unwrap();
    drop(session);
    // Pooled: a second transfer on the same connection.
    client
        .send(&server.info(), rid, &blocks[..2], &data[..2 * bpb])
        .await
        .unwrap();
    server.shutdown().await;
    let got = sink.await.unwrap();
    assert_eq!(got.len(), 14);
    for (i, (r, b, bytes, chunk)) in got.iter().take(12).enumerate() {
        assert_eq!(*r, rid);
        assert_eq!(*b, i as u32);
        assert_eq!(bytes.as_slice(), &data[i * bpb..(i + 1) * bpb]);
        assert_eq!(*chunk, i / 5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ucx_layout_mismatch_is_refused() {
    if !ucx_here() {
        return;
    }
    let (server, _rx) = TransferServer::bind(TransportKind::Ucx, "127.0.0.1", layout(64))
        .await
        .unwrap();
    let client = TransferClient::new(TransportKind::Ucx, layout(128)).unwrap();
    let err = client.session(&server.info()).await.err().unwrap();
    assert!(matches!(err, TransferError::LayoutMismatch(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_prefers_ucx_and_falls_back_to_tcp() {
    if !ucx_here() {
        return;
    }
    let bpb = 256;
    let (server, rx) = TransferServer::bind(TransportKind::Auto, "127.0.0.1", layout(bpb))
        .await
        .unwrap();
    let info = server.info();
    assert_eq!(info.kind, "ucx+tcp");
    let sink = spawn_sink(rx, bpb);
    let auto = TransferClient::new(TransportKind::Auto, layout(bpb)).unwrap();
    let s = auto.session(&info).await.unwrap();
    assert_eq!(s.transport(), "ucx");
    drop(s);
    let tcp = TransferClient::new(TransportKind::Tcp, layout(bpb)).unwrap();
    let s = tcp.session(&info).await.unwrap();
    assert_eq!(s.transport(), "tcp");
    drop(s);
    // A receiver whose UCX address is unusable: Auto falls back to TCP.
    let tcp_addr = info.addr.split("tcp=").nth(1).unwrap().to_string();
    let broken = ferrite_protocol::TransferInfo {
        kind: "ucx+tcp".into(),
        addr: format!("ucx=00ff;tcp={tcp_addr}"),
    };
    let mut s = auto.session(&broken).await.unwrap();
    assert_eq!(s.transport(), "tcp");
    s.send(RequestId::new(), &[BlockId(3)], &[9u8; 256])
        .await
        .unwrap();
    drop(s);
    // Forced UCX against a TCP-only receiver is an error, not a silent TCP.
    let ucx_only = TransferClient::new(TransportKind::Ucx, layout(bpb)).unwrap();
    let tcp_info = ferrite_protocol::TransferInfo {
        kind: "tcp".into(),
        addr: tcp_addr,
    };
    assert!(ucx_only.session(&tcp_info).await.is_err());
    server.shutdown().await;
    let got = sink.await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].2, vec![9u8; 256]);
}
