//! Undoing llama.cpp's q/k row permutation.
//!
//! `convert_hf_to_gguf.py` (LlamaModel) stores `attn_q.weight` and `attn_k.weight`
//! with each head's rows reordered so that llama.cpp's "NORM" RoPE, which rotates
//! adjacent pairs `(x[2i], x[2i+1])`, equals HF's `rotate_half` RoPE, which rotates
//! `(x[i], x[i + d/2])`. With `d = head_dim`, within head `h`:
//!
//! `gguf_row[h*d + 2*i + s] = hf_row[h*d + s*d/2 + i]` for `i < d/2`, `s ∈ {0, 1}`.
//!
//! A backend either keeps GGUF rows and applies adjacent-pair RoPE (q·k is the same
//! because q and k are permuted alike, and V/O are untouched), or un-permutes with
//! [`unpermute_llama_qk`] and applies HF `rotate_half` RoPE. Only `general.architecture
//! = "llama"` files are permuted (this includes Mistral and SmolLM); qwen2/qwen3 are not.

/// Reorders rows from GGUF (llama.cpp) order back to HF order. `data` holds
/// `n_heads * head_dim` rows of `row_units` items each (f32 elements of a
/// dequantised tensor, or bytes of a quantised one: rows are whole blocks).
/// Use the tensor's own head count: `head_count` for q, `head_count_kv` for k.
/// Returns `None` if the sizes do not fit.
pub fn unpermute_llama_qk<T: Copy>(
    data: &[T],
    n_heads: usize,
    head_dim: usize,
    row_units: usize,
) -> Option<Vec<T>> {
    if !head_dim.is_multiple_of(2) || data.len() != n_heads * head_dim * row_units {
        return None;
    }
    let half = head_dim / 2;
    let mut out = Vec::with_capacity(data.len());
    for h in 0..n_heads {
        for r in 0..head_dim {
            let (s, i) = (r / half, r % half);
            let src = (h * head_dim + 2 * i + s) * row_units;
            out.extend_from_slice(&data[src..src + row_units]);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The converter's permute, written as in convert_hf_to_gguf.py:
    /// reshape(n_head, 2, d/2, row).swapaxes(1, 2).
    fn permute(hf: &[u32], n_heads: usize, head_dim: usize, row: usize) -> Vec<u32> {
        let half = head_dim / 2;
        let mut out = vec![0; hf.len()];
        for h in 0..n_heads {
            for s in 0..2 {
                for i in 0..half {
                    let from = (h * head_dim + s * half + i) * row;
                    let to = (h * head_dim + 2 * i + s) * row;
                    out[to..to + row].copy_from_slice(&hf[from..from + row]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_the_converter() {
        let (heads, d, row) = (3, 8, 5);
        let hf: Vec<u32> = (0..(heads * d * row) as u32).map(|x| x * 7 + 1).collect();
        let gguf = permute(&hf, heads, d, row);
        assert_ne!(gguf, hf);
        // Row 1 of head 0 in GGUF order is HF row d/2 (the partner of row 0).
        assert_eq!(gguf[row], hf[(d / 2) * row]);
        assert_eq!(unpermute_llama_qk(&gguf, heads, d, row), Some(hf));
        assert_eq!(unpermute_llama_qk(&gguf, heads, d + 1, row), None);
    }
}
