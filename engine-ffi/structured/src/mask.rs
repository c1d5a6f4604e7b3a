//! Applying a token mask to logits.

use toktrie::SimpleVob;

/// Sets to -inf every logit whose token `mask` does not allow (ids past the mask included).
/// If that leaves no finite logit but EOS is allowed (e.g. EOS was banned for `min_tokens`
/// while the grammar can only end), the first allowed EOS is forced to 0.
pub fn apply_mask(mask: &SimpleVob, eos_ids: &[u32], logits: &mut [f32]) {
    let words = mask.as_slice();
    let len = logits.len();
    let n_words = len.div_ceil(32);
    // Most words of a mask are all-zero: fill runs of them with block copies (a memcpy,
    // fast even in unoptimised builds); in the other words touch only the cleared bits.
    let mut run_start: Option<usize> = None;
    let mut any_finite = false;
    for w in 0..=n_words {
        let bits = if w < n_words {
            Some(words.get(w).copied().unwrap_or(0))
        } else {
            None
        };
        if bits == Some(0) {
            run_start.get_or_insert(w);
            continue;
        }
        if let Some(start) = run_start.take() {
            fill_neg_inf(&mut logits[start * 32..(w * 32).min(len)]);
        }
        let Some(bits) = bits else { break };
        let chunk = &mut logits[w * 32..(w * 32 + 32).min(len)];
        let mut cleared = !bits;
        while cleared != 0 {
            let b = cleared.trailing_zeros() as usize;
            if let Some(l) = chunk.get_mut(b) {
                *l = f32::NEG_INFINITY;
            }
            cleared &= cleared - 1;
        }
        if !any_finite {
            any_finite = chunk.iter().any(|l| *l > f32::NEG_INFINITY);
        }
    }
    // Bits past the vocabulary in the last word must not leak into padded logits.
    if mask.len() < len {
        fill_neg_inf(&mut logits[mask.len()..]);
        any_finite = logits[..mask.len()].iter().any(|l| *l > f32::NEG_INFINITY);
    }
    if !any_finite {
        let allowed_eos = eos_ids
            .iter()
            .find(|&&e| mask.is_allowed(e) && (e as usize) < logits.len());
        if let Some(&e) = allowed_eos {
            logits[e as usize] = 0.0;
        }
    }
}

const NEG: [f32; 1024] = [f32::NEG_INFINITY; 1024];

fn fill_neg_inf(dst: &mut [f32]) {
    for c in dst.chunks_mut(NEG.len()) {
        c.copy_from_slice(&NEG[..c.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_pads() {
        let mut mask = SimpleVob::alloc(40);
        mask.allow_token(1);
        mask.allow_token(33);
        for width in [33, 40, 64, 70, 3000] {
            let mut l: Vec<f32> = (0..width).map(|i| i as f32).collect();
            apply_mask(&mask, &[0], &mut l);
            for (i, v) in l.iter().enumerate() {
                if i == 1 || i == 33 {
                    assert_eq!(*v, i as f32);
                } else {
                    assert_eq!(*v, f32::NEG_INFINITY, "id {i} of {width}");
                }
            }
        }
        // A full mask leaves everything inside the vocabulary alone.
        let all = SimpleVob::alloc_ones(64);
        let mut l = vec![1.0f32; 80];
        apply_mask(&all, &[0], &mut l);
        assert!(l[..64].iter().all(|v| *v == 1.0));
        assert!(l[64..].iter().all(|v| *v == f32::NEG_INFINITY));
    }

    #[test]
    fn forces_allowed_eos_when_nothing_else_is_left() {
        let mut mask = SimpleVob::alloc(8);
        mask.allow_token(3);
        mask.allow_token(7);
        let mut l = vec![1.0f32; 8];
        l[7] = f32::NEG_INFINITY; // EOS 7 banned upstream
        l[3] = f32::NEG_INFINITY; // the only text token biased away
        apply_mask(&mask, &[7], &mut l);
        assert_eq!(l[7], 0.0);
        // A disallowed EOS is never forced.
        let mut mask = SimpleVob::alloc(8);
        mask.allow_token(3);
        let mut l = vec![f32::NEG_INFINITY; 8];
        apply_mask(&mask, &[7], &mut l);
        assert!(l.iter().all(|v| *v == f32::NEG_INFINITY));
    }
}
