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
