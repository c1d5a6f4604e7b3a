//! Host-side preparation of one step: batch validation and the int32 metadata the kernels
//! read (token ids, positions, slots, token → sequence, attention split offsets, sampled
//! rows, padded block tables), packed into one upload.

use crate::config::CudaConfig;
use crate::error::{CudaError, Result};
use ferrite_engine::Batch;

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
    /// Attention tiles (runs of at most `tile_tokens` tokens of one sequence).
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

/// Checks a batch against the model and cache (same rules as the CPU backend).
pub fn validate(cfg: &CudaConfig, num_blocks: u32, block_size: u32, batch: &Batch) -> Result<()> {
    let slots = u64::from(num_blocks) * u64::from(block_size);
    for s in &batch.seqs {
        let bad = |m: String| CudaError::InvalidBatch(format!("request {}: {m}", s.request_id));
        if s.tokens.is_empty() {
            return Err(bad("no tokens".into()));
        }
        if s.slot_mapping.len() != s.tokens.len() {
            return Err(bad("slot_mapping length differs from tokens".into()));
        }
        let end = s.start_pos as usize + s.tokens.len();
        if end > cfg.max_context.max(1) {
            return Err(bad(format!(
                "{end} positions exceed max context {}",
                cfg.max_context
            )));
        }
        if s.block_table.len() * (block_size as usize) < end {
            return Err(bad(format!(
                "block table covers fewer than {end} positions"
            )));
        }
        if let Some(b) = s.block_table.iter().find(|b| b.0 >= num_blocks) {
            return Err(bad(format!("block {} beyond {num_blocks} blocks", b.0)));
        }
        if let Some(t) = s.tokens.iter().find(|t| **t as usize >= cfg.vocab) {
            return Err(bad(format!("token {t} outside vocab {}", cfg.vocab)));
        }
        if let Some(sl) = s.slot_mapping.iter().find(|x| u64::from(**x) >= slots) {
            return Err(bad(format!("slot {sl} beyond the cache")));
        }
    }
    Ok(())
}

/// Builds the step's metadata (the batch must be valid); attention tiles hold at most
/// `tile_tokens` tokens.
pub fn build(batch: &Batch, tile_tokens: usize) -> StepMeta {
    let tile_tokens = tile_tokens.max(1);
    let t: usize = batch.num_tokens();
    let bt_stride = batch
        .seqs
        .iter()
        .map(|s| s.block_table.len())
        .max()
        .unwrap_or(0)
        .max(1);
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
            let n = CudaConfig::num_splits(pos);
            parts += n;
            max_splits = max_splits.max(n);
            row += 1;
        }
        if s.sample {
            data[5 * t + srow] = (row - 1) as i32;
            srow += 1;
        }
        let bt = m.bt_off + si * bt_stride;
        for (j, b) in s.block_table.iter().enumerate() {
            data[bt + j] = b.0 as i32;
        }
    }
    let bt_end = data.len();
    let mut row = 0usize;
    for s in &batch.seqs {
        let n = s.tokens.len();
        let mut k = 0;
        while k < n {
            let c = tile_tokens.min(n - k);
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
        // Position 300 needs 3 splits of 128 keys; the others 1 each.
        assert_eq!(&m.data[m.part_off_off..m.part_off_off + 4], &[0, 1, 2, 3]);
        assert_eq!((m.parts, m.max_splits), (6, 3));
        // Tiles of 2 tokens: [0,1], [2], then the decode token [3].
        assert_eq!(m.tiles, 3);
        assert_eq!(&m.data[m.tiles_off..], &[0, 2, 2, 1, 3, 1]);
        assert_eq!(m.data[m.rows_off], 3);
        assert_eq!(m.data[m.bt_off], 3);
        assert_eq!(m.data[m.bt_off + 1], 0, "padding");
        assert_eq!(m.data[m.bt_off + 19 + 18], 18);
        assert_eq!(m.data.len(), 5 * 4 + 1 + 2 * 19 + 2 * 3);
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
