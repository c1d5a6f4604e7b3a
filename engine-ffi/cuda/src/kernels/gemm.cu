// Tensor-core GEMM for decode and batch-invariant steps (bf16 only; appended to ferrite.cu):
// y[t, r] = Σ_k x[t, k] · w[r, k], w row-major [out, inner] (the HF layout), float32
// accumulation, y float32 (y_f32) or elem.
//
// mma.sync m16n8k16 with the WEIGHTS as the A operand (16 output rows) and 8 tokens of x
// as B, so one 16-byte load per lane of w feeds the tensor cores directly: lane (g, t)
// loads k = [8t, 8t+8) of rows g and g+8 of a 32-wide k slab and x's token g over the
// same k; the two mma of the slab take the first and second halves. This permutes k
// inside the slab the same way for w and x, so the dot products are unchanged.
//
// grid = (ceil(T / 64), out / (16 RF)): blockIdx.x = a chunk of 64 tokens (8 groups of 8),
// blockIdx.y = 16 RF output rows (RF row fragments per warp); the chunks of one row tile
// are adjacent, so they run together and the weight tile comes from HBM once. NW warps
// split k evenly (each a contiguous slice, slabs in ascending order, U per loop trip),
// then their partial sums are
// added in warp order. An output element's arithmetic (slab order, mma shape, warp order)
// depends only on (out, inner, NW): never on T, the other tokens, U or RF, so every
// instance with the same NW gives bitwise the same result (batch invariance).
// The first trip's weights are loaded before waiting for the previous kernel (PDL).
// Needs out % (16 RF) == 0 and inner % (NW * 32 * U) == 0.
#define MMA_TOK 64
#define RED_STRIDE 72

#ifdef ELEM_BF16
// A 16-byte weight load that skips L1; HINT: also ask L2 to fetch 256-byte sectors.
template <int HINT>
__device__ __forceinline__ uint4 ld_stream(const elem* p) {
    uint4 v;
    if (HINT)
        asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
            : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
            : "l"(p));
    else
        asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
            : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
            : "l"(p));
    return v;
}

__device__ __forceinline__ void mma_bf16(float* c, unsigned a0, unsigned a1, unsigned a2,
                                         unsigned a3, unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

#endif

template <int NW, int U, int RF, int HINT>
__device__ __forceinline__ void gemm_mma_body(const elem* __restrict__ w,
                                              const elem* __restrict__ x, void* __restrict__ y,
                                              int T, int out, int inner, int y_f32) {
#ifdef ELEM_BF16
    __shared__ float red[NW * 16 * RED_STRIDE];
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    int g = lane >> 2, t = lane & 3;
    int r0 = blockIdx.y * 16 * RF;
    int tok0 = blockIdx.x * MMA_TOK;
    int ks = inner / NW;
    int kb0 = wid * ks, kend = kb0 + ks;
    // Row fragment f covers rows r0 + 16 f + [0, 16): this lane's rows g and g + 8.
    const elem* wa = w + (long)(r0 + g) * inner + 8 * t;
    long fstride = 16L * inner;
    uint4 P[RF][U], Q[RF][U];
#define GEMM_LOAD_W(KB)                                                      \
    _Pragma("unroll") for (int f = 0; f < RF; f++)                           \
        _Pragma("unroll") for (int u = 0; u < U; u++) {                      \
            P[f][u] = ld_stream<HINT>(wa + f * fstride + (KB) + 32 * u);           \
            Q[f][u] = ld_stream<HINT>(wa + f * fstride + 8L * inner + (KB) + 32 * u); \
        }
    GEMM_LOAD_W(kb0)
    PDL_BEGIN();
    int ng = min(8, (T - tok0 + 7) >> 3);
    const elem* xb = x + (long)(tok0 + g) * inner + 8 * t;
    float acc[RF][8][4];
#pragma unroll
    for (int f = 0; f < RF; f++)
#pragma unroll
        for (int gi = 0; gi < 8; gi++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[f][gi][i] = 0.f;
    for (int kb = kb0; kb < kend; kb += 32 * U) {
        if (kb != kb0) {
            GEMM_LOAD_W(kb)
        }
#pragma unroll
        for (int gi = 0; gi < 8; gi++) {
            if (gi < ng) {
                bool live = tok0 + gi * 8 + g < T;
                const elem* xr = xb + (long)gi * 8 * inner + kb;
#pragma unroll
                for (int u = 0; u < U; u++) {
                    uint4 X = live ? __ldg((const uint4*)(xr + 32 * u)) : make_uint4(0, 0, 0, 0);
#pragma unroll
                    for (int f = 0; f < RF; f++) {
                        mma_bf16(acc[f][gi], P[f][u].x, Q[f][u].x, P[f][u].y, Q[f][u].y, X.x, X.y);
                        mma_bf16(acc[f][gi], P[f][u].z, Q[f][u].z, P[f][u].w, Q[f][u].w, X.z, X.w);
                    }
                }
            }
        }
    }
#undef GEMM_LOAD_W
    // acc[f][gi]: c0, c1 = row 16f + g, tokens gi*8 + 2t (+1); c2, c3 = row 16f + g + 8.
    int ncols = ng * 8;
#pragma unroll
    for (int f = 0; f < RF; f++) {
        if (f > 0) __syncthreads();
#pragma unroll
        for (int gi = 0; gi < 8; gi++) {
            if (gi < ng) {
                int c = gi * 8 + 2 * t;
                *(float2*)&red[(wid * 16 + g) * RED_STRIDE + c] =
                    make_float2(acc[f][gi][0], acc[f][gi][1]);
                *(float2*)&red[(wid * 16 + g + 8) * RED_STRIDE + c] =
                    make_float2(acc[f][gi][2], acc[f][gi][3]);
            }
        }
        __syncthreads();
        for (int i = threadIdx.x; i < 16 * ncols; i += NW * 32) {
            int row = i & 15, c = i >> 4;
            int tok = tok0 + c;
            if (tok >= T) continue;
            float s = 0.f;
#pragma unroll
            for (int wi = 0; wi < NW; wi++) s += red[(wi * 16 + row) * RED_STRIDE + c];
            long o = (long)tok * out + r0 + 16 * f + row;
            if (y_f32)
                ((float*)y)[o] = s;
            else
                ((elem*)y)[o] = from_f(s);
        }
    }
#else
    PDL_BEGIN();
#endif
}

extern "C" {

#define GEMM_MMA(NAME, NW, U, RF, HINT)                                                           \
    __global__ void __launch_bounds__(NW * 32)                                              \
        NAME(const elem* __restrict__ w, const elem* __restrict__ x, void* __restrict__ y,  \
             int T, int out, int inner, int y_f32) {                                        \
        gemm_mma_body<NW, U, RF, HINT>(w, x, y, T, out, inner, y_f32);                      \
    }

GEMM_MMA(gemm_mma_w8u4, 8, 4, 1, 0)
GEMM_MMA(gemm_mma_w8u4h, 8, 4, 1, 1)
GEMM_MMA(gemm_mma_w8u2, 8, 2, 1, 0)
GEMM_MMA(gemm_mma_w8u2r4, 8, 2, 4, 0)
GEMM_MMA(gemm_mma_w8u2r4h, 8, 2, 4, 1)

}  // extern "C"
