//! Host-side preparation of one step: batch validation and the int32 metadata the kernels
//! read (token ids, positions, slots, token → sequence, attention split offsets, sampled
//! rows, padded block tables), packed into one upload.

use crate::config::{ATTN_SPLITS, CudaConfig};
use crate::error::{CudaError, Result};
use ferrite_engine::{Batch, SeqInput};
use ferrite_protocol::{BlockId, RequestId};

/// The int32 arrays of a step, concatenated; `*_off` are element offsets into `data`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StepMeta {
    pub data: Vec<i32>,
    pub tokens: usize,
    pub sampled: usize,
    /// Total attention splits over all tokens.
    pub parts: usize,
    /// Largest split count of any token (grid z of the attention launch).
    pub max_splits: usize,
    /// Entries per row of the padded block-table matrix.
    pub bt_stride: usize,
    /// Attention tiles (runs of tokens of one sequence within one aligned position group).
    pub tiles: usize,
    pub tokens_off: usize,
    pub pos_off: usize,
    pub slots_off: usize,
    pub tok_seq_off: usize,
    pub part_off_off: usize,
    pub rows_off: usize,
    pub bt_off: usize,
    /// `[first token row, token count]` per tile.
    pub tiles_off: usize,
}

/// Checks a batch against the model and cache ([`Batch::check`], as every backend).
pub fn validate(cfg: &CudaConfig, num_blocks: u32, block_size: u32, batch: &Batch) -> Result<()> {
    let kv = ferrite_engine::KvCacheSpec {
        num_blocks,
        block_size,
    };
    batch
        .check(kv, cfg.vocab, cfg.max_context, None)
        .map_err(CudaError::InvalidBatch)
}

/// The shape of a captured decode step: `rows` sequences (real ones, then padding) of
/// one sampled token each, positions below `ctx`. Attention always launches
/// [`ATTN_SPLITS`] splits per token (blocks past a token's splits exit at once), so the
/// split count is not part of the shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GraphKey {
    pub rows: usize,
    pub ctx: usize,
}

/// Smallest context bucket of a graph (block tables are padded to it).
pub const GRAPH_MIN_CTX: usize = 1024;

impl GraphKey {
    /// Block-table entries per sequence in a padded step of this shape.
    pub fn bt_stride(&self, block_size: u32) -> usize {
        self.ctx.div_ceil(block_size.max(1) as usize)
    }
}

/// Padded row count of a graph for `n` sequences: powers of two up to 32, then multiples
/// of 32 (few shapes to capture, at most 31 padding rows).
pub fn graph_rows(n: usize) -> usize {
    if n <= 32 {
        n.next_power_of_two()
    } else {
        n.div_ceil(32) * 32
    }
}

/// The graph shape of `batch` when it can replay a captured decode step: every sequence
/// has exactly one token and is sampled, and there are at most `max_rows` of them. The
/// context is rounded up to a power of two (at least [`GRAPH_MIN_CTX`]), so few shapes
/// cover all steps.
pub fn graph_key(batch: &Batch, max_rows: usize) -> Option<GraphKey> {
    let n = batch.seqs.len();
    if n == 0 || n > max_rows || batch.seqs.iter().any(|s| s.tokens.len() != 1 || !s.sample) {
        return None;
    }
    let ctx = batch
        .seqs
        .iter()
        .map(|s| s.start_pos as usize + 1)
        .max()
        .unwrap_or(1);
    Some(GraphKey {
        rows: graph_rows(n),
        ctx: ctx.next_power_of_two().max(GRAPH_MIN_CTX),
    })
}

/// The metadata of a decode step padded to `key` (the batch must be valid and fit `key`):
/// padding sequences are token 0 at position 0 in block `dump_block` (a block no real
/// sequence owns); every block table has exactly `key.bt_stride` entries; `parts` and
/// `max_splits` are the shape's bounds. Equal keys give equal layouts (offsets, grid
/// sizes), so a graph captured for one step replays for the next with new contents.
pub fn build_padded(
    batch: &Batch,
    key: GraphKey,
    block_size: u32,
    dump_block: u32,
    align: usize,
) -> StepMeta {
    let stride = key.bt_stride(block_size);
    let mut seqs: Vec<SeqInput> = batch.seqs.clone();
    for s in &mut seqs {
        s.block_table.truncate(stride);
    }
    let pad = SeqInput {
        request_id: RequestId::default(),
        tokens: vec![0],
        start_pos: 0,
        block_table: vec![BlockId(dump_block)],
        slot_mapping: vec![dump_block * block_size],
        sample: true,
        embeds: None,
        sampling: Default::default(),
    };
    seqs.resize(key.rows, pad);
    let mut m = build_with(&Batch { seqs }, align, Some(stride));
    m.parts = key.rows * ATTN_SPLITS;
    m.max_splits = ATTN_SPLITS;
    m
}

/// Builds the step's metadata (the batch must be valid); an attention tile holds the
/// tokens of one sequence in one group of `align` positions (`align` a power of two).
pub fn build(batch: &Batch, align: usize) -> StepMeta {
    build_with(batch, align, None)
}

/// As [`build`]; with `fixed_stride`, block tables take exactly that many entries (longer
/// ones cut: the entries past a sequence's last position are never read).
fn build_with(batch: &Batch, align: usize, fixed_stride: Option<usize>) -> StepMeta {
    let align = align.max(1);
    let t: usize = batch.num_tokens();
    let bt_stride = fixed_stride.unwrap_or_else(|| {
        batch
            .seqs
            .iter()
            .map(|s| s.block_table.len())
            .max()
            .unwrap_or(0)
            .max(1)
    });
    let sampled = batch.seqs.iter().filter(|s| s.sample).count();
    let mut m = StepMeta {
        tokens: t,
        sampled,
        bt_stride,
        tokens_off: 0,
        pos_off: t,
        slots_off: 2 * t,
        tok_seq_off: 3 * t,
        part_off_off: 4 * t,
        rows_off: 5 * t,
        bt_off: 5 * t + sampled,
        ..Default::default()
    };
    let mut data = vec![0i32; 5 * t + sampled + bt_stride * batch.seqs.len()];
    let (mut row, mut parts, mut max_splits, mut srow) = (0usize, 0usize, 0usize, 0usize);
    for (si, s) in batch.seqs.iter().enumerate() {
        for (i, tok) in s.tokens.iter().enumerate() {
            let pos = s.start_pos + i as u32;
            data[row] = *tok as i32;
            data[t + row] = pos as i32;
            data[2 * t + row] = s.slot_mapping[i] as i32;
            data[3 * t + row] = si as i32;
            data[4 * t + row] = parts as i32;
            let n = CudaConfig::num_splits(pos, align);
            parts += n;
            max_splits = max_splits.max(n);
            row += 1;
        }
        if s.sample {
            data[5 * t + srow] = (row - 1) as i32;
            srow += 1;
        }
        let bt = m.bt_off + si * bt_stride;
        for (j, b) in s.block_table.iter().take(bt_stride).enumerate() {
            data[bt + j] = b.0 as i32;
        }
    }
    let bt_end = data.len();
    let mut row = 0usize;
    for s in &batch.seqs {
        let n = s.tokens.len();
        let mut k = 0;
        while k < n {
            // Up to the end of this token's aligned position group.
            let pos = s.start_pos as usize + k;
            let c = (align - pos % align).min(n - k);
            data.push((row + k) as i32);
            data.push(c as i32);
            m.tiles += 1;
            k += c;
        }
        row += n;
    }
    m.tiles_off = bt_end;
    m.parts = parts;
    m.max_splits = max_splits;
    m.data = data;
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_engine::{SamplingContext, SeqInput};
    use ferrite_protocol::{BlockId, RequestId};

    fn seq(tokens: Vec<u32>, start: u32, blocks: &[u32], sample: bool) -> SeqInput {
        let bt: Vec<BlockId> = blocks.iter().map(|b| BlockId(*b)).collect();
        let slot_mapping = (0..tokens.len() as u32)
            .map(|i| ferrite_engine::slot_for(&bt, 16, start + i).unwrap_or(u32::MAX))
            .collect();
        SeqInput {
            request_id: RequestId::default(),
            tokens,
            start_pos: start,
            block_table: bt,
            slot_mapping,
            sample,
            embeds: None,
            sampling: SamplingContext::default(),
        }
    }

    #[test]
    fn metadata_layout_for_a_mixed_batch() {
        // A 3-token prefill chunk (not sampled) and a decode token at position 300.
        let b = Batch {
            seqs: vec![
                seq(vec![5, 6, 7], 0, &[3], false),
                seq(vec![9], 300, &(0..19).collect::<Vec<_>>(), true),
            ],
        };
        let m = build(&b, 2);
        assert_eq!((m.tokens, m.sampled, m.bt_stride), (4, 1, 19));
        assert_eq!(&m.data[m.tokens_off..m.tokens_off + 4], &[5, 6, 7, 9]);
        assert_eq!(&m.data[m.pos_off..m.pos_off + 4], &[0, 1, 2, 300]);
        assert_eq!(
            &m.data[m.slots_off..m.slots_off + 4],
            &[48, 49, 50, 18 * 16 + 12]
        );
        assert_eq!(&m.data[m.tok_seq_off..m.tok_seq_off + 4], &[0, 0, 0, 1]);
        // Position 300 (tile 300..=301): splits of 48 keys, 7 of them; the others 1 each.
        assert_eq!(&m.data[m.part_off_off..m.part_off_off + 4], &[0, 1, 2, 3]);
        assert_eq!((m.parts, m.max_splits), (10, 7));
        // Tiles aligned to 2 positions: [0,1], [2], then the decode token [3].
        assert_eq!(m.tiles, 3);
        assert_eq!(&m.data[m.tiles_off..], &[0, 2, 2, 1, 3, 1]);
        assert_eq!(m.data[m.rows_off], 3);
        assert_eq!(m.data[m.bt_off], 3);
        assert_eq!(m.data[m.bt_off + 1], 0, "padding");
        assert_eq!(m.data[m.bt_off + 19 + 18], 18);
        assert_eq!(m.data.len(), 5 * 4 + 1 + 2 * 19 + 2 * 3);
    }

    #[test]
    fn decode_steps_of_one_shape_share_one_layout() {
        let dec = |pos: u32, blocks: u32| seq(vec![7], pos, &(0..blocks).collect::<Vec<_>>(), true);
        let a = Batch {
            seqs: vec![dec(10, 1), dec(200, 13), dec(5, 1)],
        };
        let key = graph_key(&a, 64).expect("decode batch");
        assert_eq!(key, GraphKey { rows: 4, ctx: 1024 });
        // Later: positions grew, one more block, a fourth sequence.
        let b = Batch {
            seqs: vec![dec(11, 1), dec(230, 15), dec(6, 1), dec(130, 9)],
        };
        assert_eq!(graph_key(&b, 64), Some(key));
        let (ma, mb) = (
            build_padded(&a, key, 16, 99, 8),
            build_padded(&b, key, 16, 99, 8),
        );
        for m in [&ma, &mb] {
            assert_eq!((m.tokens, m.sampled, m.tiles), (4, 4, 4));
            assert_eq!((m.parts, m.max_splits, m.bt_stride), (32, 8, 64));
        }
        let offs = |m: &StepMeta| {
            [
                m.tokens_off,
                m.pos_off,
                m.slots_off,
                m.tok_seq_off,
                m.part_off_off,
                m.rows_off,
                m.bt_off,
                m.tiles_off,
                m.data.len(),
            ]
        };
        assert_eq!(offs(&ma), offs(&mb));
        // The padding row of `a`: token 0 at position 0 writing the dump block's slot 0.
        assert_eq!(ma.data[ma.tokens_off + 3], 0);
        assert_eq!(ma.data[ma.pos_off + 3], 0);
        assert_eq!(ma.data[ma.slots_off + 3], 99 * 16);
        assert_eq!(ma.data[ma.bt_off + 3 * 64], 99);
        assert_eq!(ma.data[ma.rows_off + 3], 3);
        // Real rows keep their values.
        assert_eq!(mb.data[mb.pos_off + 1], 230);
        assert_eq!(mb.data[mb.bt_off + 64 + 14], 14);
        // Not graphable: a prefill chunk, an unsampled row, too many rows.
        let pre = Batch {
            seqs: vec![seq(vec![1, 2], 0, &[0], true)],
        };
        assert_eq!(graph_key(&pre, 64), None);
        let quiet = Batch {
            seqs: vec![seq(vec![1], 3, &[0], false)],
        };
        assert_eq!(graph_key(&quiet, 64), None);
        assert_eq!(graph_key(&b, 3), None);
        assert_eq!(
            (
                graph_rows(1),
                graph_rows(3),
                graph_rows(32),
                graph_rows(33),
                graph_rows(130)
            ),
            (1, 4, 32, 64, 160)
        );
    }

    #[test]
    fn validation_names_the_problem() {
        let cfg = CudaConfig::llama31_8b(1, 512);
        let mut s = seq(vec![1, 2], 0, &[0], true);
        assert!(
            validate(
                &cfg,
                4,
                16,
                &Batch {
                    seqs: vec![s.clone()]
                }
            )
            .is_ok()
        );
        s.block_table[0] = BlockId(4);
        let e = validate(
            &cfg,
            4,
            16,
            &Batch {
                seqs: vec![s.clone()],
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("beyond 4 blocks"), "{e}");
        let long = seq(vec![1; 20], 0, &[0], true);
        let e = validate(&cfg, 4, 16, &Batch { seqs: vec![long] }).unwrap_err();
        assert!(e.to_string().contains("fewer than 20"), "{e}");
        let big = seq(vec![200_000], 0, &[0], true);
        let e = validate(&cfg, 4, 16, &Batch { seqs: vec![big] }).unwrap_err();
        assert!(e.to_string().contains("outside vocab"), "{e}");
    }
}
