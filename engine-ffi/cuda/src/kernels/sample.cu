// Token choice on the device (appended to ferrite.cu, whose helpers it uses): the greedy
// two-stage argmax and random sampling (`sample_rows`). See src/executor/sample.rs.

extern "C" {

// (value, index) of the larger; ties go to the lower index, NaN never wins.
__device__ __forceinline__ void arg_better(float& best, int& bi, float v, int i) {
    if (v > best || (v == best && i < bi)) {
        best = v;
        bi = i;
    }
}

// Block-wide argmax of (best, bi); thread 0 gets the result.
__device__ void block_argmax(float& best, int& bi) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ob = __shfl_xor_sync(0xffffffffu, best, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        arg_better(best, bi, ob, oi);
    }
    __shared__ float sb[32];
    __shared__ int si[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    if (lane == 0) {
        sb[w] = best;
        si[w] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int nw = (blockDim.x + 31) >> 5;
        for (int k = 1; k < nw; k++) arg_better(best, bi, sb[k], si[k]);
    }
}

// Greedy token of each logits row, stage 1: block (row, c) reduces its slice of the
// vocabulary to part[row * gridDim.y + c] (value, index). grid = (rows, slices).
__global__ void argmax_part(const float* __restrict__ logits, int vocab,
                            float* __restrict__ part_v, int* __restrict__ part_i) {
    PDL_BEGIN();
    int per = (vocab + gridDim.y - 1) / gridDim.y;
    int lo = blockIdx.y * per, hi = min(vocab, lo + per);
    const float* row = logits + (long)blockIdx.x * vocab;
    float best = -FINF;
    int bi = 0x7fffffff;
    for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) arg_better(best, bi, row[i], i);
    block_argmax(best, bi);
    if (threadIdx.x == 0) {
        long p = (long)blockIdx.x * gridDim.y + blockIdx.y;
        part_v[p] = best;
        part_i[p] = bi;
    }
}

// Stage 2: out[row] = the best of the row's `slices` parts (0 if all were NaN). grid = rows.
__global__ void argmax_rows(const float* __restrict__ part_v, const int* __restrict__ part_i,
                            int slices, int* __restrict__ out) {
    PDL_BEGIN();
    float best = -FINF;
    int bi = 0x7fffffff;
    long base = (long)blockIdx.x * slices;
    for (int k = threadIdx.x; k < slices; k += blockDim.x)
        arg_better(best, bi, part_v[base + k], part_i[base + k]);
    block_argmax(best, bi);
    if (threadIdx.x == 0) out[blockIdx.x] = bi == 0x7fffffff ? 0 : bi;
}

// ---- Random sampling on the device (the CPU sampler's semantics: temperature, top-k, top-p
// over the top-k set, min-p, inverse CDF at u; sampler.rs). Weights are exp(l - max) in
// 2^-40 fixed point, so every sum is an integer sum: the draw is deterministic given the
// logits and u (tokens 2^-40 less likely than the best are never drawn).
#define SAMPLE_THREADS 1024
#define SAMPLE_CAND 4096
#define WFIX 1099511627776.0f

__device__ __forceinline__ unsigned ord_key(float f) {
    unsigned u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ unsigned long long wfix(float l, float m) {
    return l == -FINF ? 0ull : (unsigned long long)(expf(l - m) * WFIX);
}

// Sum over the block; every thread gets it.
__device__ unsigned long long block_sum_u64(unsigned long long v) {
    __shared__ unsigned long long red64[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (lane == 0) red64[w] = v;
    __syncthreads();
    int nw = (blockDim.x + 31) >> 5;
    unsigned long long t = lane < nw ? red64[lane] : 0ull;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
    return t;
}

// Tempered logit i of the row (NaN -> -inf).
__device__ __forceinline__ float tempered(const float* row, int i, float inv_t) {
    float l = row[i] * inv_t;
    return l != l ? -FINF : l;
}

// The largest key k such that the elements of key >= k (and >= floor) weigh at least
// `need` >= 1 (count, or fixed-point mass when use_mass); 0 when none does. Radix select:
// four passes over 8-bit digits of the key, most significant first, each a shared-memory
// histogram (RS_GROUPS copies against atomic contention; a thread adds runs of equal digits
// at once) whose bins are scanned from the top by one warp.
// The elements: vals[i] * inv_t for i = begin, begin + stride, ... < end.
#define RS_GROUPS 8
__device__ unsigned weight_select(const float* vals, int begin, int end, int stride,
                                  float inv_t, float m, unsigned floor_key, int use_mass,
                                  unsigned long long need) {
    __shared__ unsigned long long hist[RS_GROUPS][256];
    __shared__ unsigned sh_prefix;
    __shared__ unsigned long long sh_need;
    __shared__ int sh_found;
    int grp = (threadIdx.x >> 5) % RS_GROUPS;
    unsigned prefix = 0;
    for (int pass = 0; pass < 4; pass++) {
        int shift = 24 - 8 * pass;
        unsigned hi_mask = pass == 0 ? 0u : (0xffffffffu << (shift + 8));
        for (int i = threadIdx.x; i < RS_GROUPS * 256; i += blockDim.x) hist[i >> 8][i & 255] = 0;
        __syncthreads();
        int cur = -1;
        unsigned long long run = 0;
        for (int i = begin; i < end; i += stride) {
            float l = tempered(vals, i, inv_t);
            unsigned k = ord_key(l);
            if (k >= floor_key && (k & hi_mask) == prefix) {
                unsigned long long wgt = use_mass ? wfix(l, m) : 1ull;
                int bin = (k >> shift) & 255;
                if (bin != cur) {
                    if (run) atomicAdd(&hist[grp][cur], run);
                    cur = bin;
                    run = 0;
                }
                run += wgt;
            }
        }
        if (run) atomicAdd(&hist[grp][cur], run);
        __syncthreads();
        if (threadIdx.x < 32) {
            // Lane L holds bins 8L..8L+7; `above` = weight of the higher lanes' bins.
            int lane = threadIdx.x;
            unsigned long long t[8], mine = 0;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                unsigned long long v = 0;
#pragma unroll
                for (int g = 0; g < RS_GROUPS; g++) v += hist[g][lane * 8 + j];
                t[j] = v;
                mine += v;
            }
            unsigned long long incl = mine;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                unsigned long long n = __shfl_down_sync(0xffffffffu, incl, o);
                if (lane + o < 32) incl += n;
            }
            unsigned long long above = incl - mine;
            if (lane == 0) sh_found = 0;
            __syncwarp();
            if (above < need && need <= incl) {
                unsigned long long cum = above;
                for (int j = 7; j >= 0; j--) {
                    if (cum + t[j] >= need) {
                        sh_prefix = prefix | ((unsigned)(lane * 8 + j) << shift);
                        sh_need = need - cum;
                        sh_found = 1;
                        break;
                    }
                    cum += t[j];
                }
            }
        }
        __syncthreads();
        if (!sh_found) return 0;
        prefix = sh_prefix;
        need = sh_need;
        __syncthreads();
    }
    return prefix;
}

// grid = rows to draw, SAMPLE_THREADS threads: block b draws from logits row rows[b] with
// prm[5b..5b+5] = (temperature, top_k, top_p, min_p, u) into out[b].
__global__ void __launch_bounds__(SAMPLE_THREADS)
sample_rows(const float* __restrict__ logits, int vocab, const int* __restrict__ rows,
            const float* __restrict__ prm, int* __restrict__ out) {
    PDL_BEGIN();
    int b = blockIdx.x;
    const float* row = logits + (long)rows[b] * vocab;
    const float* q = prm + 5L * b;
    float inv_t = 1.f / q[0], top_p = q[2], min_p = q[3], u = q[4];
    int top_k = (int)q[1];
    int per = (vocab + blockDim.x - 1) / blockDim.x;
    int lo = min(vocab, (int)threadIdx.x * per), hi = min(vocab, lo + per);
    float m = -FINF;
    int bi = 0x7fffffff;
    for (int i = lo; i < hi; i++) arg_better(m, bi, tempered(row, i, inv_t), i);
    block_argmax(m, bi);
    __shared__ float sh_m;
    __shared__ int sh_bi;
    if (threadIdx.x == 0) {
        sh_m = m;
        sh_bi = bi == 0x7fffffff ? 0 : bi;
    }
    __syncthreads();
    m = sh_m;
    if (!(fabsf(m) < FINF)) {  // no finite best: greedy, as the CPU sampler
        if (threadIdx.x == 0) out[b] = sh_bi;
        return;
    }
    unsigned keep = 0;
    bool by_k = top_k > 0 && top_k < vocab;
    if (by_k || top_p < 1.f) {
        // The thresholds only depend on the elements within 28 of the best (the others
        // have weight 0, and when top_k <= their count the k-th largest is among them):
        // gathered into shared memory when they fit, the bisections scan only them.
        __shared__ float cand[SAMPLE_CAND];
        __shared__ int ncand;
        if (threadIdx.x == 0) ncand = 0;
        __syncthreads();
        float floor_l = m - 28.f;
        for (int i = lo; i < hi; i++) {
            float l = tempered(row, i, inv_t);
            if (l >= floor_l) {
                int slot = atomicAdd(&ncand, 1);
                if (slot < SAMPLE_CAND) cand[slot] = l;
            }
        }
        __syncthreads();
        int nc = ncand;
        bool small = nc <= SAMPLE_CAND && (!by_k || top_k <= nc);
        const float* vals = small ? cand : row;
        int begin = small ? (int)threadIdx.x : lo, end = small ? nc : hi;
        int stride = small ? (int)blockDim.x : 1;
        float it = small ? 1.f : inv_t;
        if (by_k) keep = weight_select(vals, begin, end, stride, it, m, 0, 0, (unsigned long long)top_k);
        if (top_p < 1.f) {
            unsigned long long z = 0;
            for (int i = begin; i < end; i += stride) {
                float l = tempered(vals, i, it);
                if (ord_key(l) >= keep) z += wfix(l, m);
            }
            z = block_sum_u64(z);
            unsigned long long need =
                top_p > 0.f ? (unsigned long long)((double)top_p * (double)z) : 0ull;
            keep = max(keep, weight_select(vals, begin, end, stride, it, m, keep, 1, max(need, 1ull)));
        }
    }
    if (min_p > 0.f) keep = max(keep, ord_key(m + logf(min_p)));
    // Inverse CDF in token order: this thread's share, an exclusive scan, then one walk.
    unsigned long long mine = 0;
    for (int i = lo; i < hi; i++) {
        float l = tempered(row, i, inv_t);
        if (ord_key(l) >= keep) mine += wfix(l, m);
    }
    __shared__ unsigned long long warp_tot[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    unsigned long long incl = mine;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        unsigned long long n = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += n;
    }
    if (lane == 31) warp_tot[w] = incl;
    __syncthreads();
    unsigned long long before = 0, total = 0;
    int nw = (blockDim.x + 31) >> 5;
    for (int k = 0; k < nw; k++) {
        if (k < w) before += warp_tot[k];
        total += warp_tot[k];
    }
    before += incl - mine;
    if (total == 0) {  // min-p above 1 kept nothing: the best token
        if (threadIdx.x == 0) out[b] = sh_bi;
        return;
    }
    unsigned long long target = (unsigned long long)((double)u * (double)total);
    if (target >= total) target = total - 1;
    if (mine > 0 && target >= before && target < before + mine) {
        unsigned long long acc = before;
        int pick = -1;
        for (int i = lo; i < hi; i++) {
            float l = tempered(row, i, inv_t);
            if (ord_key(l) >= keep) {
                acc += wfix(l, m);
                if (acc > target) {
                    pick = i;
                    break;
                }
            }
        }
        out[b] = pick >= 0 ? pick : sh_bi;
    }
}

}  // extern "C"
