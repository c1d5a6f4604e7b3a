// Ferrite CUDA kernels, compiled at start-up by NVRTC. `elem` is the weight, activation and
// KV-cache element type: float (default) or bf16 (-DELEM_BF16, same bits as __nv_bfloat16). The residual stream and all
// reductions are float32.
#ifdef ELEM_BF16
// bf16 stored as its 16 raw bits (no cuda_bf16.h needed, so NVRTC compiles this without
// the CUDA headers); conversions round to nearest even, NaN stays NaN.
typedef unsigned short elem;
__device__ __forceinline__ float to_f(elem x) { return __uint_as_float(((unsigned)x) << 16); }
__device__ __forceinline__ elem from_f(float x) {
    unsigned u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (elem)0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (elem)(u >> 16);
}
#else
typedef float elem;
__device__ __forceinline__ float to_f(elem x) { return x; }
__device__ __forceinline__ elem from_f(float x) { return x; }
#endif

// Programmatic dependent launch (sm_90+; every kernel is launched with the attribute): a
// kernel may start while the previous one of the stream still runs. pdl_wait() blocks
// until that kernel has finished and its writes are visible; pdl_trigger() lets the next
// kernel launch. Every kernel waits before touching memory that kernels write (weights may
// be read before), then triggers, so at most one kernel runs ahead.
__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
#define PDL_BEGIN() \
    do {            \
        pdl_wait(); \
        pdl_trigger(); \
    } while (0)

#define FINF __int_as_float(0x7f800000)

// Elements per 16-byte load, and a 16-byte load's elements as floats.
#define VEC (16 / (int)sizeof(elem))
__device__ __forceinline__ void unpack(uint4 v, float* f) {
#ifdef ELEM_BF16
    unsigned u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        f[2 * i] = __uint_as_float(u[i] << 16);
        f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
    }
#else
    f[0] = __uint_as_float(v.x);
    f[1] = __uint_as_float(v.y);
    f[2] = __uint_as_float(v.z);
    f[3] = __uint_as_float(v.w);
#endif
}
#define ATTN_WARPS 8

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over a block of up to 1024 threads; every thread gets the result.
__device__ float block_sum(float v) {
    __shared__ float red[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) red[w] = v;
    __syncthreads();
    int nw = (blockDim.x + 31) >> 5;
    float t = lane < nw ? red[lane] : 0.f;
    return warp_sum(t);
}

extern "C" {

// x[t, :] = table[tokens[t], :] (float32 residual stream). grid = T.
__global__ void embed(const int* __restrict__ tokens, const elem* __restrict__ table,
                      float* __restrict__ x, int hidden) {
    PDL_BEGIN();
    long t = blockIdx.x;
    const elem* row = table + (long)tokens[t] * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) x[t * hidden + i] = to_f(row[i]);
}

// Optionally x += delta (row `r`), then out[b] = rmsnorm(x[r]) * w. r = rows ? rows[b] : b.
// grid = number of output rows; a thread keeps up to NORM_REG of its values in registers.
#define NORM_REG 8
__global__ void add_rmsnorm(float* __restrict__ x, const elem* __restrict__ delta,
                            const int* __restrict__ rows, const elem* __restrict__ w,
                            elem* __restrict__ out, int hidden, float eps) {
    int bd = blockDim.x, tid = threadIdx.x;
    float wv[NORM_REG], v[NORM_REG];
#pragma unroll
    for (int j = 0; j < NORM_REG; j++) {
        int i = tid + j * bd;
        wv[j] = i < hidden ? to_f(w[i]) : 0.f;  // weights: before waiting (PDL)
    }
    PDL_BEGIN();
    long b = blockIdx.x;
    long r = rows ? rows[b] : b;
    float* xr = x + r * hidden;
    const elem* dr = delta ? delta + r * hidden : nullptr;
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < NORM_REG; j++) {
        int i = tid + j * bd;
        v[j] = 0.f;
        if (i < hidden) {
            v[j] = xr[i];
            if (dr) {
                v[j] += to_f(dr[i]);
                xr[i] = v[j];
            }
            ss += v[j] * v[j];
        }
    }
    for (int i = tid + NORM_REG * bd; i < hidden; i += bd) {
        float u = xr[i];
        if (dr) {
            u += to_f(dr[i]);
            xr[i] = u;
        }
        ss += u * u;
    }
    ss = block_sum(ss);
    float inv = rsqrtf(ss / (float)hidden + eps);
    elem* orow = out + b * hidden;
#pragma unroll
    for (int j = 0; j < NORM_REG; j++) {
        int i = tid + j * bd;
        if (i < hidden) orow[i] = from_f(v[j] * inv * wv[j]);
    }
    for (int i = tid + NORM_REG * bd; i < hidden; i += bd)
        orow[i] = from_f(xr[i] * inv * to_f(w[i]));
}

// Rotary embeddings on q (in place) and k, then k and v written to the paged cache at
// slots[t]. qkv rows are [q heads | k heads | v heads] of head_dim each.
// grid = (T, heads + kv_heads), hd / 2 threads: block (t, h) rotates head h of token t (one
// pair per thread); a kv head's block also copies that head's v.
__global__ void rope_cache(elem* __restrict__ qkv, const float* __restrict__ inv_freq,
                           const int* __restrict__ pos, const int* __restrict__ slots,
                           elem* __restrict__ kc, elem* __restrict__ vc, int heads,
                           int kv_heads, int hd, int interleaved) {
    PDL_BEGIN();
    long t = blockIdx.x;
    int h = blockIdx.y, j = threadIdx.x, half = hd / 2;
    int qkv_w = (heads + 2 * kv_heads) * hd;
    elem* row = qkv + t * qkv_w;
    long slot = slots[t];
    int a = interleaved ? 2 * j : j;
    int b = interleaved ? 2 * j + 1 : j + half;
    float s, c;
    sincosf((float)pos[t] * inv_freq[j], &s, &c);
    elem* hp = row + h * hd;
    float x0 = to_f(hp[a]), x1 = to_f(hp[b]);
    elem r0 = from_f(x0 * c - x1 * s), r1 = from_f(x1 * c + x0 * s);
    if (h < heads) {
        hp[a] = r0;
        hp[b] = r1;
    } else {
        int kh = h - heads;
        elem* kp = kc + (slot * kv_heads + kh) * hd;
        kp[a] = r0;
        kp[b] = r1;
        const elem* v = row + (heads + kv_heads + kh) * hd;
        elem* vp = vc + (slot * kv_heads + kh) * hd;
        vp[j] = v[j];
        vp[j + half] = v[j + half];
    }
}

// Paged attention over query tiles: grid = (tiles, kv_heads, max_splits), ATTN_WARPS
// warps. A tile is up to TILE_ROWS / G tokens of one sequence whose positions agree above
// the low log2(tile_align) bits (tiles[2i] = first token row, tiles[2i+1] = count); its
// rows are (token, q head of this kv head) pairs, so the G query heads sharing a KV head
// read each K/V chunk once. Token t attends keys 0..=pos[t] (causal, prefix in the cache);
// split z covers keys [z*sl, (z+1)*sl) in chunks of KC keys, sl = split_len_of(the tile's
// last aligned position): at most ATTN_SPLITS splits per token. A row's arithmetic depends
// only on its own position and keys, never on the tile or batch it is in (batch
// invariance). Writes the unnormalised accumulator and (max, sum) of each split at
// part_off[t] + z.
#define KC 16
#define HDMAX 128
#define TILE_ROWS 32
#define RPW (TILE_ROWS / ATTN_WARPS)
#define DPL (HDMAX / 32)
#define ATTN_SPLITS 8

// Keys per split for a tile whose last aligned position is `last` (CudaConfig::split_len).
__device__ __forceinline__ int split_len_of(int last) {
    int n = (last + 1 + ATTN_SPLITS - 1) / ATTN_SPLITS;
    n = (n + KC - 1) / KC;
    return max(n, 1) * KC;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__global__ void __launch_bounds__(ATTN_WARPS * 32)
attn_partial(const elem* __restrict__ qkv, const elem* __restrict__ kc,
             const elem* __restrict__ vc, const int* __restrict__ block_tables,
             int bt_stride, const int* __restrict__ tok_seq, const int* __restrict__ pos,
             const int* __restrict__ part_off, const int* __restrict__ tiles,
             float* __restrict__ part_acc, float* __restrict__ part_ml, int heads,
             int kv_heads, int hd, int block_size, float scale, int tile_align) {
    PDL_BEGIN();
    __shared__ float qs[TILE_ROWS][HDMAX];
    __shared__ float ks[KC][HDMAX + 1];
    __shared__ float vs[KC][HDMAX];
    int tile = blockIdx.x, kvh = blockIdx.y, z = blockIdx.z;
    int t0 = tiles[2 * tile], nt = tiles[2 * tile + 1];
    int G = heads / kv_heads;
    int R = nt * G;
    int maxpos = pos[t0 + nt - 1];
    int split_len = split_len_of(maxpos | (tile_align - 1));
    int kbeg = z * split_len;
    if (kbeg > maxpos) return;
    int kend = min(maxpos + 1, kbeg + split_len);
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    int qkv_w = (heads + 2 * kv_heads) * hd;
    const int* bt = block_tables + (long)tok_seq[t0] * bt_stride;
    for (int i = threadIdx.x; i < R * hd; i += blockDim.x) {
        int row = i / hd, d = i % hd;
        int tok = row / G, g = row % G;
        qs[row][d] = to_f(qkv[(long)(t0 + tok) * qkv_w + (kvh * G + g) * hd + d]) * scale;
    }
    float m[RPW], l[RPW], acc[RPW][DPL];
    int rpos[RPW];
#pragma unroll
    for (int rr = 0; rr < RPW; rr++) {
        int row = rr * ATTN_WARPS + w;
        m[rr] = -FINF;
        l[rr] = 0.f;
        rpos[rr] = row < R ? pos[t0 + row / G] : -1;
#pragma unroll
        for (int i = 0; i < DPL; i++) acc[rr][i] = 0.f;
    }
    int half = lane >> 4, kj = lane & 15, hh = hd / 2;
    for (int c0 = kbeg; c0 < kend; c0 += KC) {
        __syncthreads();
        if (hd % VEC == 0) {
            // 16-byte loads: one per thread for head_dim 128 in bf16.
            int per = hd / VEC;
            for (int i = threadIdx.x; i < KC * per; i += blockDim.x) {
                int j = i / per, d = (i % per) * VEC;
                int key = c0 + j;
                float kx[VEC], vx[VEC];
                if (key < kend) {
                    long slot = (long)bt[key / block_size] * block_size + key % block_size;
                    long off = (slot * kv_heads + kvh) * hd + d;
                    unpack(*(const uint4*)(kc + off), kx);
                    unpack(*(const uint4*)(vc + off), vx);
                } else {
#pragma unroll
                    for (int e = 0; e < VEC; e++) kx[e] = vx[e] = 0.f;
                }
#pragma unroll
                for (int e = 0; e < VEC; e++) {
                    ks[j][d + e] = kx[e];
                    vs[j][d + e] = vx[e];
                }
            }
        } else {
            for (int i = threadIdx.x; i < KC * hd; i += blockDim.x) {
                int j = i / hd, d = i % hd;
                int key = c0 + j;
                float kx = 0.f, vx = 0.f;
                if (key < kend) {
                    long slot = (long)bt[key / block_size] * block_size + key % block_size;
                    long off = (slot * kv_heads + kvh) * hd + d;
                    kx = to_f(kc[off]);
                    vx = to_f(vc[off]);
                }
                ks[j][d] = kx;
                vs[j][d] = vx;
            }
        }
        __syncthreads();
        int key = c0 + kj;
#pragma unroll
        for (int rr = 0; rr < RPW; rr++) {
            int row = rr * ATTN_WARPS + w;
            if (row < R && rpos[rr] >= c0) {  // uniform across the warp
                const float* q = qs[row] + half * hh;
                const float* k = ks[kj] + half * hh;
                // Four independent partial sums (a short dependency chain), then fixed-order adds.
                float d0 = 0.f, d1 = 0.f, d2 = 0.f, d3 = 0.f;
                int d = 0;
                for (; d + 3 < hh; d += 4) {
                    d0 += q[d] * k[d];
                    d1 += q[d + 1] * k[d + 1];
                    d2 += q[d + 2] * k[d + 2];
                    d3 += q[d + 3] * k[d + 3];
                }
                for (; d < hh; d++) d0 += q[d] * k[d];
                float dot = (d0 + d1) + (d2 + d3);
                dot += __shfl_xor_sync(0xffffffffu, dot, 16);
                float s = (key <= rpos[rr] && key < kend) ? dot : -FINF;
                float mn = fmaxf(m[rr], warp_max(s));
                float corr = expf(m[rr] - mn);
                float p = expf(s - mn);
                l[rr] = l[rr] * corr + warp_sum(lane < KC ? p : 0.f);
#pragma unroll
                for (int i = 0; i < DPL; i++) acc[rr][i] *= corr;
#pragma unroll
                for (int jj = 0; jj < KC; jj++) {
                    float pj = __shfl_sync(0xffffffffu, p, jj);
#pragma unroll
                    for (int i = 0; i < DPL; i++) {
                        int d = lane + 32 * i;
                        if (d < hd) acc[rr][i] += pj * vs[jj][d];
                    }
                }
                m[rr] = mn;
            }
        }
    }
#pragma unroll
    for (int rr = 0; rr < RPW; rr++) {
        int row = rr * ATTN_WARPS + w;
        if (row < R && rpos[rr] >= kbeg) {
            int t = t0 + row / G, h = kvh * G + row % G;
            long part = (long)(part_off[t] + z) * heads + h;
#pragma unroll
            for (int i = 0; i < DPL; i++) {
                int d = lane + 32 * i;
                if (d < hd) part_acc[part * hd + d] = acc[rr][i];
            }
            if (lane == 0) {
                part_ml[part * 2] = m[rr];
                part_ml[part * 2 + 1] = l[rr];
            }
        }
    }
}

// Merges the splits of each (token, head) into out[t, h*hd + d]. grid = (T, heads).
__global__ void attn_combine(const float* __restrict__ part_acc,
                             const float* __restrict__ part_ml, const int* __restrict__ pos,
                             const int* __restrict__ part_off, elem* __restrict__ out,
                             int heads, int hd, int tile_align) {
    PDL_BEGIN();
    int t = blockIdx.x, h = blockIdx.y;
    int split_len = split_len_of(pos[t] | (tile_align - 1));
    int nsplit = (pos[t] + split_len) / split_len;
    long base = part_off[t];
    // At most ATTN_SPLITS splits (split_len_of): all loads issued at once, sums in split order.
    float mz[ATTN_SPLITS], ez[ATTN_SPLITS];
    float M = -FINF;
#pragma unroll
    for (int z = 0; z < ATTN_SPLITS; z++) {
        mz[z] = z < nsplit ? part_ml[((base + z) * heads + h) * 2] : -FINF;
        M = fmaxf(M, mz[z]);
    }
    float L = 0.f;
#pragma unroll
    for (int z = 0; z < ATTN_SPLITS; z++) {
        if (z < nsplit) {
            ez[z] = expf(mz[z] - M);
            L += part_ml[((base + z) * heads + h) * 2 + 1] * ez[z];
        }
    }
    float invl = 1.f / L;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float a = 0.f;
#pragma unroll
        for (int z = 0; z < ATTN_SPLITS; z++)
            if (z < nsplit) a += part_acc[((base + z) * heads + h) * hd + d] * ez[z];
        out[(long)t * heads * hd + h * hd + d] = from_f(a * invl);
    }
}

// out[t, i] = silu(gu[t, i]) * gu[t, inter + i].
__global__ void swiglu(const elem* __restrict__ gu, elem* __restrict__ out, int rows,
                       int inter) {
    PDL_BEGIN();
    long n = (long)rows * inter;
    for (long k = blockIdx.x * (long)blockDim.x + threadIdx.x; k < n;
         k += (long)gridDim.x * blockDim.x) {
        long r = k / inter, i = k % inter;
        float g = to_f(gu[r * 2 * inter + i]);
        float u = to_f(gu[r * 2 * inter + inter + i]);
        out[k] = from_f(g / (1.f + expf(-g)) * u);
    }
}

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

// Seeded uniform values in [lo, hi) (SplitMix64 of seed + index): random weights made on
// the device for benchmarks.
__global__ void fill_uniform(elem* __restrict__ p, long n, unsigned long long seed, float lo,
                             float hi) {
    PDL_BEGIN();
    for (long k = blockIdx.x * (long)blockDim.x + threadIdx.x; k < n;
         k += (long)gridDim.x * blockDim.x) {
        unsigned long long z = seed + (unsigned long long)k * 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        float u = (float)(z >> 40) * (1.0f / 16777216.0f);
        p[k] = from_f(lo + (hi - lo) * u);
    }
}

// KV block copies through one contiguous staging buffer (offload tiers, KV transfer):
// staging holds, per listed block, for each layer its K rows then its V rows (`per` bytes
// each, a multiple of 16). caches[2*l] / caches[2*l+1] are layer l's K / V cache.
// grid = (blocks, 2 * layers); to_staging: 1 = gather (cache -> staging), 0 = scatter.
__global__ void kv_blocks_copy(const unsigned long long* __restrict__ caches,
                               const int* __restrict__ blocks, unsigned char* __restrict__ staging,
                               long per, int to_staging) {
    PDL_BEGIN();
    int i = blockIdx.x, c = blockIdx.y;
    uint4* cache = (uint4*)(caches[c] + (unsigned long long)blocks[i] * per);
    uint4* st = (uint4*)(staging + ((long)i * gridDim.y + c) * per);
    long n = per / 16;
    for (long k = threadIdx.x; k < n; k += blockDim.x) {
        if (to_staging)
            st[k] = cache[k];
        else
            cache[k] = st[k];
    }
}

}  // extern "C"
