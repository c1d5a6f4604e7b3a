//! Disaggregated prefill/decode: what a decode worker asks a prefill worker, what comes
//! back, and the KV block layout both ends must share.

use crate::discovery::TransferInfo;
use crate::ids::{BlockId, InstanceId, RequestId, TokenId};
use crate::request::{PreprocessedRequest, TokenLogprob};
use serde::{Deserialize, Serialize};

/// The byte layout of one KV block (all layers, K and V). Two workers exchange blocks only
/// when their layouts are equal; a mismatch is refused when the transfer connects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvLayout {
    pub num_layers: u32,
    pub num_kv_heads: u32,
    pub head_dim: u32,
    pub block_size: u32,
    /// "f32", "bf16", "f16"; "simulated" for an engine with no cache bytes (the mocker).
    pub dtype: String,
    pub bytes_per_block: usize,
}

impl KvLayout {
    /// Why `other` cannot exchange blocks with `self` (`None` when they can).
    pub fn mismatch(&self, other: &KvLayout) -> Option<String> {
        (self != other).then(|| {
            format!(
                "KV block layout mismatch: local {} layers × {} kv heads × {} head dim, {} \
                 tokens/block, {} ({} bytes/block) vs remote {} × {} × {}, {} tokens/block, {} \
                 ({} bytes/block)",
                self.num_layers,
                self.num_kv_heads,
                self.head_dim,
                self.block_size,
                self.dtype,
                self.bytes_per_block,
                other.num_layers,
                other.num_kv_heads,
                other.head_dim,
                other.block_size,
                other.dtype,
                other.bytes_per_block
            )
        })
    }
}

/// Decode → prefill (the `generate` subject of component `prefill`): compute the KV of
/// `request`'s prompt, write blocks `skip_blocks..` of it into `dest_blocks` of the decode
/// worker through `transfer`, then answer [`PrefillDone`] with the first sampled token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemotePrefill {
    pub request: PreprocessedRequest,
    pub decode_instance: InstanceId,
    /// Where the decode worker receives blocks.
    pub transfer: TransferInfo,
    /// Leading prompt blocks the decode worker already holds (its prefix cache).
    pub skip_blocks: u32,
    /// Decode-side block ids for prompt blocks `skip_blocks..`, in order.
    pub dest_blocks: Vec<BlockId>,
    /// The decode worker's layout (checked by the prefill worker before computing).
    pub layout: KvLayout,
}

/// Prefill → decode: the KV is in the decode worker's blocks; here is the first token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrefillDone {
    pub request_id: RequestId,
    pub first_token: TokenId,
    #[serde(default)]
    pub logprob: Option<TokenLogprob>,
    /// Prompt tokens the prefill worker found in its own prefix cache.
    pub prefill_cached_tokens: u32,
    pub blocks_sent: u32,
    pub bytes_sent: u64,
    /// "tcp", "ucx".
    pub transport: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> KvLayout {
        KvLayout {
            num_layers: 2,
            num_kv_heads: 4,
            head_dim: 8,
            block_size: 16,
            dtype: "f32".into(),
            bytes_per_block: 2 * 2 * 4 * 8 * 16 * 4,
        }
    }

    #[test]
    fn layouts_compare() {
        let a = layout();
        assert_eq!(a.mismatch(&a.clone()), None);
        let mut b = a.clone();
        b.dtype = "bf16".into();
        let why = a.mismatch(&b).unwrap_or_default();
        assert!(why.contains("f32") && why.contains("bf16"), "{why}");
    }

    #[test]
    fn prefill_done_round_trips() {
        let d = PrefillDone {
            request_id: RequestId::new(),
            first_token: 42,
            logprob: None,
            prefill_cached_tokens: 16,
            blocks_sent: 3,
            bytes_sent: 3 * 4096,
            transport: "tcp".into(),
        };
        let bytes = crate::codec::encode(&d).unwrap_or_default();
        let back: PrefillDone = crate::codec::decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, d);
    }
}
