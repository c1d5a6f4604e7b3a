//! KV block copies out of and into the CPU cache: write(read(x)) round-trips, and a
//! sequence continued after its blocks moved to other block ids yields the same greedy
//! tokens as one that never moved (stories260k, fp32 reference cases).

mod common;
use common::*;
use ferrite_engine::Executor;
use ferrite_protocol::BlockId;

const MODEL: &str = "stories260k";

#[test]
fn layout_and_round_trip() {
    let mut ex = load(MODEL, 64);
    let layout = ex.kv_block_layout().expect("cpu cache is copyable");
    let cfg = ex.config().clone();
    assert_eq!(layout.num_layers as usize, cfg.layers);
    assert_eq!(layout.block_size, 16);
    assert_eq!(
        layout.bytes_per_block,
        cfg.layers * 2 * 16 * cfg.kv_heads * cfg.head_dim * 4
    );
    // Fill blocks 0..2 with real K/V by running a prompt.
    let case = &cases("stories260k.json")[0];
    let mut alloc = Alloc {
        next: 0,
        block_size: 16,
    };
    let mut seqs = vec![Seq::new(&case.prompt, 4, None)];
    run_all(&mut ex, &mut alloc, &mut seqs, &[0], usize::MAX);
    let used = seqs[0].blocks.clone();
    let mut buf = vec![0u8; used.len() * layout.bytes_per_block];
    ex.read_kv_blocks(&used, &mut buf).expect("read");
    assert!(buf.iter().any(|b| *b != 0), "K/V bytes are not all zero");
    let moved: Vec<BlockId> = (0..used.len() as u32).map(|i| BlockId(40 + i)).collect();
    ex.write_kv_blocks(&moved, &buf).expect("write");
    let mut back = vec![0u8; buf.len()];
    ex.read_kv_blocks(&moved, &mut back).expect("read back");
    assert_eq!(buf, back);
    assert!(
        ex.read_kv_blocks(&[BlockId(64)], &mut back[..layout.bytes_per_block])
            .is_err()
    );
    assert!(ex.write_kv_blocks(&moved, &buf[1..]).is_err());
}

#[test]
fn continuing_from_copied_blocks_gives_identical_greedy_tokens() {
    let cases = cases("stories260k.batch.json");
    let mut checked = 0;
    for case in &cases {
        // Reference: prefill + full greedy run in place.
        let mut ex = load(MODEL, 256);
        let mut alloc = Alloc {
            next: 0,
            block_size: 16,
        };
        let mut straight = vec![Seq::new(&case.prompt, case.greedy.len(), Some(2))];
        run_all(&mut ex, &mut alloc, &mut straight, &[0], usize::MAX);

        // Moved: prefill and a few decode steps, copy the blocks out, zero the originals by
        // copying garbage over them, write the bytes into fresh block ids (a second engine),
        // and continue there.
        let mut ex2 = load(MODEL, 256);
        let mut alloc2 = Alloc {
            next: 0,
            block_size: 16,
        };
        let first = 3.min(case.greedy.len());
        let mut seqs = vec![Seq::new(&case.prompt, first, Some(2))];
        run_all(&mut ex2, &mut alloc2, &mut seqs, &[0], usize::MAX);
        let mut seq = seqs.pop().expect("seq");
        if seq.done() && seq.generated().last() == Some(&2) {
            continue;
        }
        let bpb = ex2.kv_block_layout().expect("layout").bytes_per_block;
        let mut buf = vec![0u8; seq.blocks.len() * bpb];
        ex2.read_kv_blocks(&seq.blocks, &mut buf).expect("read");
        let mut ex3 = load(MODEL, 256);
        let fresh: Vec<BlockId> = (0..seq.blocks.len() as u32)
            .map(|i| BlockId(200 + i))
            .collect();
        ex3.write_kv_blocks(&fresh, &buf).expect("write");
        seq.blocks = fresh;
        seq.max_new = case.greedy.len();
        let mut alloc3 = Alloc {
            next: 100,
            block_size: 16,
        };
        let mut seqs = vec![seq];
        run_all(&mut ex3, &mut alloc3, &mut seqs, &[0], usize::MAX);
        assert_eq!(
            seqs[0].generated(),
            straight[0].generated(),
            "case {}",
            case.name
        );
        assert_eq!(seqs[0].generated(), &case.greedy[..], "case {}", case.name);
        checked += 1;
    }
    assert!(checked >= 2, "only {checked} cases continued past the copy");
}
