//! Top-k selection over a logits vector without a full sort.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// NaN counts as -inf; -0.0 as 0.0.
#[inline]
pub(crate) fn key(x: f32) -> f32 {
    if x.is_nan() {
        f32::NEG_INFINITY
    } else {
        x + 0.0
    }
}

/// A heap entry ordered so that the heap's top is the *worst* kept token
/// (lowest logit; on equal logits the higher id).
#[derive(Clone, Copy, Debug)]
struct Entry {
    l: f32,
    id: u32,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> Ordering {
        o.l.total_cmp(&self.l).then(self.id.cmp(&o.id))
    }
}

/// Reusable buffers for selecting the best `k` token ids.
#[derive(Debug, Default)]
pub(crate) struct Selector {
    /// The selection, best first (ties: lower id first).
    pub idx: Vec<u32>,
    heap: BinaryHeap<Entry>,
    /// Probability mass per logit bin (nucleus selection).
    bins: Vec<f64>,
}

/// Nucleus bins cover logits from the max down to `max - NUCLEUS_RANGE` (weights below
/// e^-40 share the last bin).
const NUCLEUS_BINS: usize = 2048;
const NUCLEUS_RANGE: f32 = 40.0;

impl Selector {
    /// Fills `self.idx` with the ids of the `k` largest logits, best first.
    /// Small `k`: one pass with a bounded heap (most tokens cost one comparison);
    /// large `k`: `select_nth_unstable` then a sort of the kept part.
    pub fn top_sorted(&mut self, logits: &[f32], k: usize) {
        let v = logits.len();
        let k = k.min(v);
        self.idx.clear();
        if k == 0 {
            return;
        }
        let cmp = |a: &u32, b: &u32| -> Ordering {
            key(logits[*b as usize])
                .total_cmp(&key(logits[*a as usize]))
                .then(a.cmp(b))
        };
        if k.saturating_mul(16) <= v {
            self.heap.clear();
            for (i, &l) in logits.iter().enumerate() {
                let e = Entry {
                    l: key(l),
                    id: i as u32,
                };
                if self.heap.len() < k {
                    self.heap.push(e);
                } else if let Some(mut worst) = self.heap.peek_mut()
                    && e.l > worst.l
                {
                    // Ids grow along the scan, so an equal logit never displaces.
                    *worst = e;
                }
            }
            self.idx.extend(self.heap.drain().map(|e| e.id));
        } else {
            self.idx.extend(0..v as u32);
            if k < v {
                self.idx.select_nth_unstable_by(k - 1, cmp);
                self.idx.truncate(k);
            }
        }
        self.idx.sort_unstable_by(cmp);
    }

    /// Fills `self.idx` with the nucleus: the smallest set of best tokens (ties: lower id
    /// first) whose weight reaches `mass`, in no particular (but deterministic) order.
    /// `w[i]` is token i's unnormalised probability, `m` the largest logit. O(V) plus a
    /// sort of one narrow logit bin, instead of sorting the vocabulary.
    pub fn nucleus(&mut self, logits: &[f32], w: &[f32], m: f32, mass: f64) {
        let scale = NUCLEUS_BINS as f32 / NUCLEUS_RANGE;
        let bin = |l: f32| -> usize { (((m - l) * scale) as usize).min(NUCLEUS_BINS - 1) };
        self.bins.clear();
        self.bins.resize(NUCLEUS_BINS, 0.0);
        for (&l, &wi) in logits.iter().zip(w) {
            if wi > 0.0 {
                self.bins[bin(key(l))] += f64::from(wi);
            }
        }
        // The bin where the running mass (best first) reaches `mass`.
        let mut acc = 0.0;
        let mut cut_bin = NUCLEUS_BINS - 1;
        for (b, &x) in self.bins.iter().enumerate() {
            if acc + x >= mass {
                cut_bin = b;
                break;
            }
            acc += x;
        }
        // Everything in better bins is in; the cut bin is sorted and cut exactly.
        self.idx.clear();
        self.heap.clear();
        for (i, (&l, &wi)) in logits.iter().zip(w).enumerate() {
            if wi > 0.0 {
                let b = bin(key(l));
                if b < cut_bin {
                    self.idx.push(i as u32);
                } else if b == cut_bin {
                    self.heap.push(Entry {
                        l: key(l),
                        id: i as u32,
                    });
                }
            }
        }
        // into_sorted_vec is ascending in `Entry` order, i.e. best first.
        let mut tail = std::mem::take(&mut self.heap).into_sorted_vec();
        for e in &tail {
            self.idx.push(e.id);
            acc += f64::from(w[e.id as usize]);
            if acc >= mass {
                break;
            }
        }
        tail.clear();
        self.heap = BinaryHeap::from(tail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn heap_and_select_paths_match_a_full_sort() {
        let mut r = rand::rng();
        let mut s = Selector::default();
        for &v in &[1usize, 7, 100, 5000] {
            // Few distinct values, so ties are common.
            let l: Vec<f32> = (0..v).map(|_| r.random_range(0..40) as f32 / 4.0).collect();
            let mut all: Vec<u32> = (0..v as u32).collect();
            all.sort_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]).then(a.cmp(&b)));
            for &k in &[0usize, 1, 3, 50, 400, 5000, 9000] {
                s.top_sorted(&l, k);
                assert_eq!(s.idx, all[..k.min(v)], "v {v} k {k}");
            }
        }
    }

    #[test]
    fn nucleus_equals_sorted_prefix() {
        let mut r = rand::rng();
        let mut s = Selector::default();
        for &(v, spread) in &[(10usize, 1.0f32), (3000, 0.5), (3000, 8.0), (50_000, 3.0)] {
            // Quantised logits so that ties straddle the cut.
            let l: Vec<f32> = (0..v)
                .map(|_| (r.random::<f32>() * spread * 8.0).round() / 8.0)
                .collect();
            let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let w: Vec<f32> = l.iter().map(|&x| (x - m).exp()).collect();
            let z: f64 = w.iter().map(|&x| f64::from(x)).sum();
            let mut all: Vec<u32> = (0..v as u32).collect();
            all.sort_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]).then(a.cmp(&b)));
            for &p in &[0.0f64, 0.1, 0.5, 0.9, 0.999] {
                let mass = p * z;
                let mut acc = 0.0;
                let mut cut = v;
                for (j, &i) in all.iter().enumerate() {
                    acc += f64::from(w[i as usize]);
                    if acc >= mass {
                        cut = j + 1;
                        break;
                    }
                }
                s.nucleus(&l, &w, m, mass);
                let mut got = s.idx.clone();
                got.sort_unstable();
                let mut want = all[..cut].to_vec();
                want.sort_unstable();
                // Summation order may move the cut by one token at an exact boundary.
                let diff = got.len().abs_diff(want.len());
                assert!(diff <= 1, "v {v} p {p}: {} vs {}", got.len(), want.len());
                let short = if got.len() < want.len() { &got } else { &want };
                let long = if got.len() < want.len() { &want } else { &got };
                assert!(
                    short.iter().all(|t| long.binary_search(t).is_ok()),
                    "v {v} p {p}"
                );
            }
        }
    }

    #[test]
    fn special_values_sort_last() {
        let mut s = Selector::default();
        let l = [1.0, f32::NAN, 3.0, f32::NEG_INFINITY, -0.0, 0.0];
        s.top_sorted(&l, 6);
        assert_eq!(s.idx, vec![2, 0, 4, 5, 1, 3]);
    }
}
