/*
 * The grouped expert GEMMs of the moe op on tensor cores (bf16/f16,
 * mma.sync.m16n8k16 with f32 accumulators; the rest of the op is
 * cuda_moe.cu / cuda_moe.c). One launch covers every expert of a step:
 *   gate|up  a[r] = silu(x_t Wg_e^T) * (x_t Wu_e^T), rounded to the
 *            weights' dtype, for each sorted row r (token t = order[r] / k,
 *            expert e the row's);
 *   down     y[r] = a[r] Wd_e^T in f32, which the combine then weights and
 *            adds in a fixed order (deterministic: no atomics).
 * Weights are row-major "out = x W^T": gate|up [E 2I, H] (expert e's gate
 * rows then its up rows), down [E H, I].
 *
 * Block (x, y): row tile x of the step (cuda_moe_schedule.h: which expert
 * and which of its sorted rows, from the device's tiles prefix sum, so the
 * host never reads the routing back) times columns [64 y, 64 y + 64).
 * Row tiles are the fastest index so that the tiles of one expert that
 * read the same weight columns run side by side and share them through L2.
 * 4 warps across the columns, warp w owning columns 16 w .. + 16 (two n8
 * tiles), times 1 (16- and 32-row tiles) or 2 (64-row tiles) along the
 * rows (moe_mma_shape): the tile is short (16-64 rows, an expert's share
 * of 16-256 tokens), so warps split the columns first. With SILU a block
 * holds the gate and the up rows of the same 64 columns, and the epilogue
 * has both products of an element in the same thread.
 *
 * Per 64-column step of K, shared memory holds the tile's rows of x (or a)
 * and the block's weight rows, rows padded by 8 elements (144 bytes: the
 * 8 rows an ldmatrix reads hit distinct banks); cp.async 16-byte copies
 * keep MOE_MMA_STAGES - 1 steps in flight while one is multiplied. A
 * fragments by ldmatrix (lane l: row l % 16, columns + 8 (l / 16)), B
 * fragments by ldmatrix of the weight rows (lane l: row l % 8 of the n8
 * tile, columns + 8 (l / 8): two k16 chunks a load), as the tensor-core
 * prefill kernel reads Q and K (cuda_attn_prefill_mma.cu).
 *
 * The down GEMM of a decode step has few blocks (experts with rows x H /
 * 64: 128 for Mixtral's one token), too few reads in flight for the
 * bandwidth: it can run in two halves of K (grid z), the second writing
 * its partial products to out2; the combine adds the two in a fixed order.
 *
 * Needs K a multiple of 8 (16-byte rows pieces; a partial last step is
 * zero-filled by whole pieces) and 16-byte aligned operands: the launcher
 * checks, cuda_moe.c falls back to the SIMT kernels otherwise.
 */
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_mma.cuh"
#include "backend/cuda/cuda_moe_schedule.h"

#define MOE_MMA_WARPS 4
#define MOE_MMA_BN 64 /* output columns a block */
#define MOE_MMA_BK 64 /* K a step */
#define MOE_MMA_LDS (MOE_MMA_BK + 8)
#define MOE_MMA_STAGES 3

/* Shared memory bytes of a block: per stage BM rows of x and NB BN weight rows. */
static constexpr size_t moe_mma_smem(int bm, int nb)
{
    return (size_t)MOE_MMA_STAGES * (size_t)(bm + nb * MOE_MMA_BN) * MOE_MMA_LDS * 2;
}

/* Warps along the rows of a tile: two for 64-row tiles (8 warps, each 32
 * rows x 16 columns: more warps an SM to hide the copies' latency, half
 * the accumulators a warp), else one (4 warps). */
template <int BM> struct moe_mma_shape {
    static constexpr int warps_m = BM == 64 ? 2 : 1;
    static constexpr int threads = MOE_MMA_WARPS * 32 * warps_m;
};

template <typename T, int BM, bool SILU>
__global__ void __launch_bounds__(moe_mma_shape<BM>::threads)
    anvil_moe_mma_kernel(const T *__restrict__ X, const T *__restrict__ W, int64_t K, int64_t N, int64_t w_stride_e,
                         int64_t up_off, int32_t k, int32_t E, const int32_t *offsets, const int32_t *tiles,
                         const int32_t *order, void *out, float *out2, int split_steps)
{
    constexpr int NB = SILU ? 2 : 1; /* weight row blocks: gate (and up) */
    constexpr int NT = moe_mma_shape<BM>::threads;
    constexpr int MT = BM / 16 / moe_mma_shape<BM>::warps_m; /* m16 tiles a warp */
    constexpr int A_PER = BM * 8 / NT;                         /* 16-byte pieces of x a thread */
    constexpr int B_PER = NB * MOE_MMA_BN * 8 / NT;            /* of weights */
    constexpr int STAGE = (BM + NB * MOE_MMA_BN) * MOE_MMA_LDS; /* elements */
    static_assert(A_PER >= 1 && BM * 8 % NT == 0 && NB * MOE_MMA_BN * 8 % NT == 0, "pieces must tile the threads");
    extern __shared__ uint4 moe_mma_smem4[];
    uint16_t *const smem = reinterpret_cast<uint16_t *>(moe_mma_smem4);

    int32_t e, r_begin, r_end;
    if (!moe_tile_find(offsets, tiles, E, BM, (int32_t)blockIdx.x, &e, &r_begin, &r_end))
        return; /* the whole block: before any barrier */
    const int64_t n0 = (int64_t)blockIdx.y * MOE_MMA_BN;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
    const int wn = warp & (MOE_MMA_WARPS - 1), m0 = (warp / MOE_MMA_WARPS) * MT * 16; /* the warp's columns, rows */

    /* Each thread copies the same pieces of every step: piece c = tid + i
     * NT is row c / 8, columns 8 (c % 8) of the step. Row sources once. */
    const T *a_src[A_PER];
    int a_dst[A_PER];
#pragma unroll
    for (int i = 0; i < A_PER; i++) {
        const int c = threadIdx.x + i * NT, row = c >> 3, part = c & 7;
        const int32_t r = r_begin + row;
        a_src[i] = nullptr;
        if (r < r_end)
            a_src[i] = (SILU ? X + (int64_t)(order[r] / k) * K : X + (int64_t)r * K) + part * 8;
        a_dst[i] = row * MOE_MMA_LDS + part * 8;
    }
    const T *b_src[B_PER];
    int b_dst[B_PER];
    const T *const We = W + (int64_t)e * w_stride_e;
#pragma unroll
    for (int i = 0; i < B_PER; i++) {
        const int c = threadIdx.x + i * NT, row = c >> 3, part = c & 7;
        const int nb = row / MOE_MMA_BN;
        const int64_t n = n0 + (row % MOE_MMA_BN);
        b_src[i] = n < N ? We + (nb * up_off + n) * K + part * 8 : nullptr;
        b_dst[i] = (BM + row) * MOE_MMA_LDS + part * 8;
    }
    /* blockIdx.z: which part of K's steps (split_steps each; 0: all) */
    const int all_steps = (int)((K + MOE_MMA_BK - 1) / MOE_MMA_BK);
    const int s_begin = split_steps > 0 ? (int)blockIdx.z * split_steps : 0;
    const int n_steps = split_steps > 0 ? max(0, min(all_steps - s_begin, split_steps)) : all_steps;
    /* step s_begin + s's pieces into stage st; pieces past K or the rows zero-filled */
    auto issue = [&](int s, int st) {
        uint16_t *base = smem + st * STAGE;
        const int64_t k0 = (int64_t)(s_begin + s) * MOE_MMA_BK;
#pragma unroll
        for (int i = 0; i < A_PER; i++) {
            const int part = (threadIdx.x + i * NT) & 7;
            const bool ok = a_src[i] != nullptr && k0 + part * 8 < K;
            anvil_cp_async16(base + a_dst[i], ok ? a_src[i] + k0 : X, ok);
        }
#pragma unroll
        for (int i = 0; i < B_PER; i++) {
            const int part = (threadIdx.x + i * NT) & 7;
            const bool ok = b_src[i] != nullptr && k0 + part * 8 < K;
            anvil_cp_async16(base + b_dst[i], ok ? b_src[i] + k0 : W, ok);
        }
    };

    float acc[NB][MT][2][4];
#pragma unroll
    for (int nb = 0; nb < NB; nb++)
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
                acc[nb][mt][nt][0] = acc[nb][mt][nt][1] = acc[nb][mt][nt][2] = acc[nb][mt][nt][3] = 0.0f;

    /* the first STAGES - 1 steps on their way (empty groups past the end
     * keep the group count uniform for the waits below) */
#pragma unroll
    for (int s = 0; s < MOE_MMA_STAGES - 1; s++) {
        if (s < n_steps)
            issue(s, s);
        anvil_cp_async_commit();
    }
    for (int s = 0; s < n_steps; s++) {
        anvil_cp_async_wait<MOE_MMA_STAGES - 2>(); /* this thread's pieces of step s have landed */
        __syncthreads(); /* everyone's; and every warp is done with step s - 1's stage */
        {
            const int nxt = s + MOE_MMA_STAGES - 1;
            if (nxt < n_steps)
                issue(nxt, nxt % MOE_MMA_STAGES); /* the stage step s - 1 used */
            anvil_cp_async_commit();
        }
        const uint16_t *a_s = smem + (s % MOE_MMA_STAGES) * STAGE;
        const uint16_t *b_s = a_s + BM * MOE_MMA_LDS;
#pragma unroll
        for (int kh = 0; kh < MOE_MMA_BK / 32; kh++) {
            /* A: two k16 chunks of every m-tile */
            uint32_t af[MT][2][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                const uint16_t *ar = a_s + (m0 + mt * 16 + (lane & 15)) * MOE_MMA_LDS + kh * 32 + (lane >> 4) * 8;
                anvil_ldmatrix_x4(af[mt][0], ar);
                anvil_ldmatrix_x4(af[mt][1], ar + 16);
            }
#pragma unroll
            for (int nb = 0; nb < NB; nb++)
#pragma unroll
                for (int nt = 0; nt < 2; nt++) {
                    /* B: weight rows (the n index) of this n8 tile, k32 in one load:
                     * registers 0, 1 the first k16 chunk, 2, 3 the second */
                    const uint16_t *br =
                        b_s + (nb * MOE_MMA_BN + wn * 16 + nt * 8 + (lane & 7)) * MOE_MMA_LDS + kh * 32 +
                        (lane >> 3) * 8;
                    uint32_t bf[4];
                    anvil_ldmatrix_x4(bf, br);
#pragma unroll
                    for (int mt = 0; mt < MT; mt++) {
                        anvil_mma16816<T>(acc[nb][mt][nt], af[mt][0], bf[0], bf[1]);
                        anvil_mma16816<T>(acc[nb][mt][nt], af[mt][1], bf[2], bf[3]);
                    }
                }
        }
    }
    anvil_cp_async_wait<0>(); /* no copy outlives the block (the trailing groups are empty) */

    /* D fragment: d0, d1 row gq, columns 2 tq and + 1; d2, d3 row gq + 8 */
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int32_t r = r_begin + m0 + mt * 16 + gq + 8 * h;
            if (r >= r_end)
                continue;
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
#pragma unroll
                for (int j = 0; j < 2; j++) {
                    const int64_t n = n0 + wn * 16 + nt * 8 + 2 * tq + j;
                    if (n >= N)
                        continue;
                    const float g = acc[0][mt][nt][2 * h + j];
                    if constexpr (SILU) {
                        const float u = acc[NB - 1][mt][nt][2 * h + j];
                        ((T *)out)[(int64_t)r * N + n] = anvil_from_f32<T>(g / (1.0f + expf(-g)) * u);
                    } else {
                        (blockIdx.z == 0 ? (float *)out : out2)[(int64_t)r * N + n] = g;
                    }
                }
        }
}

template <typename T, int BM, bool SILU>
static anvil_status moe_mma_launch(cudaStream_t stream, const void *X, const void *W, int64_t K, int64_t N,
                                   int64_t stride, int32_t k, int32_t E, dim3 grid, const int32_t *offsets,
                                   const int32_t *tiles, const int32_t *order, void *out, float *out2,
                                   int split_steps)
{
    constexpr size_t smem = moe_mma_smem(BM, SILU ? 2 : 1);
    if (smem > 48 * 1024) /* a host-side attribute, no stream work: fine inside a graph capture */
        TRY(anvil_cuda_status(cudaFuncSetAttribute(anvil_moe_mma_kernel<T, BM, SILU>,
                                                   cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                              "moe mma: shared memory limit", __FILE__, __LINE__));
    anvil_moe_mma_kernel<T, BM, SILU><<<grid, moe_mma_shape<BM>::threads, smem, stream>>>(
        (const T *)X, (const T *)W, K, N, stride, SILU ? N : 0, k, E, offsets, tiles, order, out, out2, split_steps);
    return ANVIL_CUDA_LAUNCHED("moe mma kernel");
}

extern "C" int anvil_cuda_moe_mma_ok(anvil_dtype x_dt, anvil_dtype w_dt, int64_t H, int64_t I, const void *x,
                                     const void *gate_up, const void *down, size_t smem_optin)
{
    return x_dt == w_dt && (w_dt == ANVIL_DTYPE_BF16 || w_dt == ANVIL_DTYPE_F16) && H % 8 == 0 && I % 8 == 0 &&
           anvil_aligned16(x) && anvil_aligned16(gate_up) && anvil_aligned16(down) &&
           moe_mma_smem(64, 2) <= smem_optin;
}

extern "C" anvil_status anvil_cuda_launch_moe_experts_mma(cudaStream_t stream, int silu, const void *X, anvil_dtype dt,
                                                          const void *W, int64_t n_tok, int32_t k, int32_t E,
                                                          int64_t K, int64_t N, int tile_m, const int32_t *offsets,
                                                          const int32_t *tiles, const int32_t *order, void *out,
                                                          float *out2)
{
    CHECK(n_tok > 0 && k > 0 && E > 0 && K > 0 && N > 0 && n_tok * k <= INT32_MAX, ANVIL_ERR_INVALID_ARG,
          "moe mma: %lld tokens x %d, K %lld, N %lld", (long long)n_tok, k, (long long)K, (long long)N);
    CHECK(tile_m == 16 || tile_m == 32 || tile_m == 64, ANVIL_ERR_INVALID_ARG, "moe mma: row tiles of %d", tile_m);
    CHECK(out2 == nullptr || !silu, ANVIL_ERR_INVALID_ARG, "moe mma: only the down GEMM splits K");
    CHECK(K % 8 == 0 && anvil_aligned16(X) && anvil_aligned16(W) && anvil_aligned16(out), ANVIL_ERR_UNSUPPORTED,
          "moe mma: K %lld (a multiple of 8) and 16-byte aligned operands", (long long)K);
    const int64_t n_pairs = n_tok * k;
    const int64_t max_tiles = moe_tiles_bound(n_pairs, E, tile_m), n_tiles = (N + MOE_MMA_BN - 1) / MOE_MMA_BN;
    CHECK(max_tiles <= INT32_MAX && n_tiles <= 65535, ANVIL_ERR_INVALID_ARG, "moe mma: %lld row tiles, N %lld",
          (long long)max_tiles, (long long)N);
    /* with out2: two halves of K's steps, blockIdx.z 0 and 1 */
    const int all_steps = (int)((K + MOE_MMA_BK - 1) / MOE_MMA_BK);
    const int split_steps = out2 != nullptr ? (all_steps + 1) / 2 : 0;
    const dim3 grid((unsigned)max_tiles, (unsigned)n_tiles, out2 != nullptr ? 2u : 1u);
    const int64_t stride = silu ? 2 * N * K : N * K;
#define MOE_MMA_BM(T, BM)                                                                                        \
    return silu ? moe_mma_launch<T, BM, true>(stream, X, W, K, N, stride, k, E, grid, offsets, tiles, order, out,     \
                                              nullptr, 0)                                                          \
                : moe_mma_launch<T, BM, false>(stream, X, W, K, N, stride, k, E, grid, offsets, tiles, order, out,    \
                                               out2, split_steps)
#define MOE_MMA_T(T)                                                                                             \
    do {                                                                                                         \
        if (tile_m == 16)                                                                                        \
            MOE_MMA_BM(T, 16);                                                                                   \
        if (tile_m == 32)                                                                                        \
            MOE_MMA_BM(T, 32);                                                                                   \
        MOE_MMA_BM(T, 64);                                                                                       \
    } while (0)
    if (dt == ANVIL_DTYPE_BF16)
        MOE_MMA_T(__nv_bfloat16);
    if (dt == ANVIL_DTYPE_F16)
        MOE_MMA_T(__half);
#undef MOE_MMA_T
#undef MOE_MMA_BM
    return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED, "moe mma: dtype %s (bf16 or f16)", anvil_dtype_name(dt));
}
