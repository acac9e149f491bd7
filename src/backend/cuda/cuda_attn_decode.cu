/*
 * Per-token attention over the paged KV cache, split-K ("flash decoding").
 *
 * A block of 4 warps takes one token t, RD query heads of one KV head
 * (GQA: every K/V row loaded serves all RD heads), and one split of the
 * token's keys [lo, p]. Lane l holds dims [l * DPL, (l + 1) * DPL) of q, k,
 * v and of the output accumulators in registers (vector loads of DPL
 * elements). A warp takes KEYS consecutive keys at a time, all their K and V
 * rows loaded before any use; the RD x KEYS partial dot products are summed
 * across the warp in one "transpose" reduction (<= 31 shuffles, one score
 * per lane), so the chunk's softmax update costs one exp per lane, and each
 * probability is broadcast to the value FMAs by one shuffle. The warps take
 * chunks in turn and merge their online-softmax states through shared
 * memory at the end. With one split the block writes the output; with
 * several it writes (m, l, acc) partials and a combine kernel merges the
 * splits.
 *
 * Correct for any batch (each token alone); chosen for decode steps, where
 * every sequence brings one token and the parallelism must come from the
 * context instead.
 */
#include <math.h>

#include "backend/cuda/cuda_common.cuh"

#define DC_WARPS  4
#define FULL_MASK 0xffffffffu

/* Keys a warp takes at once: as many as registers allow (K and V rows of
 * DPL values each) with RD * keys <= 32 scores. */
template <int DPL, int RD> struct anvil_dc_shape {
    static constexpr int KEYS = DPL >= 8 ? (RD >= 4 ? 2 : 4) : (RD >= 8 ? 4 : 8);
    static constexpr int N = RD * KEYS; /* scores per chunk, <= 32 */
    static constexpr int SHIFT = N == 32 ? 0 : N == 16 ? 1 : N == 8 ? 2 : N == 4 ? 3 : N == 2 ? 4 : 5;
};

/*
 * Sums N partial values across the warp in 31 shuffles or fewer instead of
 * 5 N: at each step a lane keeps half of its values and trades the other
 * half with its partner. Returns, in lane l, the full sum of value
 * l >> (5 - log2 N) (the same bits in every lane that holds it).
 */
template <int NV, int N, int OFF>
__device__ __forceinline__ void anvil_transpose_sum(float (&v)[NV], int lane)
{
    if constexpr (OFF > 0) {
        if constexpr (N > 1) {
            constexpr int H = N / 2;
            const bool upper = (lane & OFF) != 0;
#pragma unroll
            for (int i = 0; i < H; i++) {
                const float send = upper ? v[i] : v[i + H];
                const float keep = upper ? v[i + H] : v[i];
                v[i] = keep + __shfl_xor_sync(FULL_MASK, send, OFF);
            }
            anvil_transpose_sum<NV, H, OFF / 2>(v, lane);
        } else {
            v[0] += __shfl_xor_sync(FULL_MASK, v[0], OFF);
            anvil_transpose_sum<NV, 1, OFF / 2>(v, lane);
        }
    }
}

template <typename T, int DPL, int RD>
__global__ void __launch_bounds__(DC_WARPS * 32)
    anvil_attn_decode_kernel(anvil_cuda_attn a, int n_hc, int n_splits, int split_len, float *ws)
{
    typedef anvil_dc_shape<DPL, RD> S;
    constexpr int KEYS = S::KEYS, N = S::N, SHIFT = S::SHIFT;
    __shared__ float sm_acc[DC_WARPS][RD][32 * DPL];
    __shared__ float sm_m[DC_WARPS][RD], sm_l[DC_WARPS][RD];

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int t = blockIdx.x, sp = blockIdx.z;
    const int g = blockIdx.y / n_hc, hc = blockIdx.y - (blockIdx.y / n_hc) * n_hc;
    const int hd = a.head_dim, group = a.n_heads / a.n_kv_heads;
    const int64_t qw = (int64_t)a.n_heads * hd, kw = (int64_t)a.n_kv_heads * hd;
    const int d0 = lane * DPL;
    const bool lane_ok = d0 < hd;
    /* the score this lane ends up holding after a transpose sum: row r_me, key u_me of the chunk */
    const int idx_me = lane >> SHIFT, r_me = idx_me / KEYS, u_me = idx_me - (idx_me / KEYS) * KEYS;

    const int s = a.seq_of_token[t], p = a.positions[t];
    const bool seq_ok = s >= 0 && s < a.n_seqs;
    if (!seq_ok && threadIdx.x == 0)
        anvil_flag(a.err, ANVIL_CUDA_BAD_SEQ);
    const int lo = anvil_window_lo(p, a.window);
    const int kbeg = lo + sp * split_len;
    /* the last split runs to p whatever max_context said */
    int kend = sp == n_splits - 1 ? p + 1 : min(p + 1, kbeg + split_len);
    if (!seq_ok)
        kend = kbeg;
    const int32_t *bt = a.block_tables + (seq_ok ? (int64_t)s * a.max_blocks_per_seq : 0);
    const T *kc = (const T *)a.k_cache, *vc = (const T *)a.v_cache;

    /* q, and the online-softmax state (m, l the same in every lane) */
    float q[RD][DPL], m[RD], l[RD], acc[RD][DPL];
#pragma unroll
    for (int r = 0; r < RD; r++) {
        const int hh = hc * RD + r;
        if (hh < group && lane_ok) {
            anvil_load_vec<T, DPL>((const T *)a.q + (int64_t)t * qw + (int64_t)(g * group + hh) * hd + d0,
                                   q[r]);
        } else {
#pragma unroll
            for (int i = 0; i < DPL; i++)
                q[r][i] = 0.0f;
        }
        m[r] = -INFINITY;
        l[r] = 0.0f;
#pragma unroll
        for (int i = 0; i < DPL; i++)
            acc[r][i] = 0.0f;
    }

    /* each warp takes chunks of KEYS consecutive keys, the warps in turn */
    for (int kb = kbeg + warp * KEYS; kb < kend; kb += DC_WARPS * KEYS) {
        float kv[KEYS][DPL], vv[KEYS][DPL];
        bool ok[KEYS];
        /* the chunk spans at most two blocks when blocks hold >= KEYS positions:
         * two table reads and no division per key */
        const bool two = a.block_size >= KEYS;
        const int bi0 = kb / a.block_size, off0 = kb - bi0 * a.block_size;
        int blk0 = -1, blk1 = -1;
        if (two) {
            blk0 = bi0 < a.max_blocks_per_seq ? bt[bi0] : -1;
            if (off0 + KEYS > a.block_size && kb + (a.block_size - off0) < kend)
                blk1 = bi0 + 1 < a.max_blocks_per_seq ? bt[bi0 + 1] : -1;
        }
#pragma unroll
        for (int u = 0; u < KEYS; u++) { /* every load of the chunk before any use */
            const int kj = kb + u;
            ok[u] = false;
#pragma unroll
            for (int i = 0; i < DPL; i++)
                kv[u][i] = vv[u][i] = 0.0f;
            if (kj < kend) {
                int blk, in_blk;
                if (two) {
                    const bool next = off0 + u >= a.block_size;
                    blk = next ? blk1 : blk0;
                    in_blk = next ? off0 + u - a.block_size : off0 + u;
                } else {
                    const int bi = kj / a.block_size;
                    blk = bi < a.max_blocks_per_seq ? bt[bi] : -1;
                    in_blk = kj - bi * a.block_size;
                }
                if (blk >= 0 && blk < a.n_blocks) {
                    ok[u] = true;
                    const int64_t off = ((int64_t)blk * a.block_size + in_blk) * kw + (int64_t)g * hd + d0;
                    if (lane_ok) {
                        anvil_load_vec<T, DPL>(kc + off, kv[u]);
                        anvil_load_vec<T, DPL>(vc + off, vv[u]);
                    }
                } else if (lane == 0) {
                    anvil_flag(a.err, ANVIL_CUDA_BAD_BLOCK);
                }
            }
        }
        /* the chunk's RD x KEYS scores: partial dots, then one transpose sum */
        float part[N];
#pragma unroll
        for (int r = 0; r < RD; r++) {
#pragma unroll
            for (int u = 0; u < KEYS; u++) {
                float d = 0.0f;
#pragma unroll
                for (int i = 0; i < DPL; i++)
                    d = fmaf(q[r][i], kv[u][i], d);
                part[r * KEYS + u] = d;
            }
        }
        anvil_transpose_sum<N, N, 16>(part, lane);
        bool ok_me = false;
#pragma unroll
        for (int u = 0; u < KEYS; u++)
            ok_me = u == u_me ? ok[u] : ok_me;
        float sc = part[0] * a.scale;
        if (a.softcap > 0.0f) /* Gemma 2: tanh(s / cap) * cap before the softmax */
            sc = tanhf(sc / a.softcap) * a.softcap;
        sc = ok_me ? sc : -INFINITY;
        /* the chunk max of each row: over the lanes holding that row's keys */
        float mt = sc;
#pragma unroll
        for (int o = 1 << SHIFT; o < (KEYS << SHIFT); o <<= 1)
            mt = fmaxf(mt, __shfl_xor_sync(FULL_MASK, mt, o));
        float m_me = -INFINITY;
#pragma unroll
        for (int r = 0; r < RD; r++) {
            const float mr = fmaxf(m[r], __shfl_sync(FULL_MASK, mt, (r * KEYS) << SHIFT));
            const float corr = mr == -INFINITY ? 1.0f : expf(m[r] - mr); /* 0 while m was -inf */
            l[r] *= corr;
#pragma unroll
            for (int i = 0; i < DPL; i++)
                acc[r][i] *= corr;
            m[r] = mr;
            m_me = r == r_me ? mr : m_me;
        }
        const float pme = sc == -INFINITY ? 0.0f : expf(sc - m_me);
        /* acc += p V: each score broadcast from the lane that holds it */
#pragma unroll
        for (int r = 0; r < RD; r++) {
#pragma unroll
            for (int u = 0; u < KEYS; u++) {
                const float pb = __shfl_sync(FULL_MASK, pme, (r * KEYS + u) << SHIFT);
                l[r] += pb;
#pragma unroll
                for (int i = 0; i < DPL; i++)
                    acc[r][i] = fmaf(pb, vv[u][i], acc[r][i]);
            }
        }
    }

    /* merge the warps' states */
#pragma unroll
    for (int r = 0; r < RD; r++) {
        if (lane == 0) {
            sm_m[warp][r] = m[r];
            sm_l[warp][r] = l[r];
        }
#pragma unroll
        for (int i = 0; i < DPL; i++)
            sm_acc[warp][r][d0 + i] = acc[r][i];
    }
    __syncthreads();
    for (int r = warp; r < RD; r += DC_WARPS) {
        const int hh = hc * RD + r;
        if (hh >= group)
            continue;
        float mx = -INFINITY;
#pragma unroll
        for (int w = 0; w < DC_WARPS; w++)
            mx = fmaxf(mx, sm_m[w][r]);
        float lsum = 0.0f, o[DPL];
#pragma unroll
        for (int i = 0; i < DPL; i++)
            o[i] = 0.0f;
#pragma unroll
        for (int w = 0; w < DC_WARPS; w++) {
            const float f = sm_m[w][r] == -INFINITY ? 0.0f : expf(sm_m[w][r] - mx);
            lsum += sm_l[w][r] * f;
#pragma unroll
            for (int i = 0; i < DPL; i++)
                o[i] += sm_acc[w][r][d0 + i] * f;
        }
        const int h = g * group + hh;
        if (n_splits == 1) {
            const float inv = lsum > 0.0f ? 1.0f / lsum : 0.0f;
#pragma unroll
            for (int i = 0; i < DPL; i++)
                o[i] *= inv;
            if (lane_ok)
                anvil_store_vec<T, DPL>((T *)a.out + (int64_t)t * qw + (int64_t)h * hd + d0, o);
        } else {
            const int64_t idx = ((int64_t)t * a.n_heads + h) * n_splits + sp;
            float *ml = ws + 2 * idx;
            float *pa = ws + 2 * (int64_t)a.n_tokens * a.n_heads * n_splits + idx * hd;
            if (lane == 0) {
                ml[0] = mx;
                ml[1] = lsum;
            }
            if (lane_ok) {
#pragma unroll
                for (int i = 0; i < DPL; i++)
                    pa[d0 + i] = o[i];
            }
        }
    }
}

/* out[t, h] = sum over splits of acc * e^(m - M) / sum of l * e^(m - M).
 * At batch 1 this kernel is latency on the decode step's critical path
 * (session 31, ncu on an H100: 9.3 us a layer at 9 splits, when its loops
 * read each split's (m, l) from L2 one round trip after another). So the
 * block first brings every split's (m, l) into shared memory, one load a
 * thread, and each thread then loads its whole column of partials (up to
 * CB_BATCH splits a round) before it sums; the arithmetic and its order are
 * what they were, and what the decode kernel's in-kernel merge does (the
 * same bits). */
#define CB_MAX_SPLITS 256 /* cuda_attention.c's MAX_SPLITS */
#define CB_BATCH      16
template <typename T>
__global__ void anvil_attn_combine_kernel(const float *ws, T *out, int32_t n_tokens, int n_heads, int hd,
                                          int n_splits)
{
    __shared__ float mls[2 * CB_MAX_SPLITS];
    anvil_pdl_wait();
    anvil_pdl_launch();
    const int64_t idx = blockIdx.x; /* t * n_heads + h */
    const float *ml = ws + 2 * idx * n_splits;
    const float *pa = ws + 2 * (int64_t)n_tokens * n_heads * n_splits + idx * n_splits * hd;
    for (int i = threadIdx.x; i < 2 * n_splits; i += blockDim.x)
        mls[i] = ml[i];
    __syncthreads();
    float mx = -INFINITY;
    for (int sp = 0; sp < n_splits; sp++)
        mx = fmaxf(mx, mls[2 * sp]);
    float lsum = 0.0f;
    for (int sp = 0; sp < n_splits; sp++) {
        const float m2 = mls[2 * sp], l2 = mls[2 * sp + 1];
        lsum += m2 == -INFINITY ? 0.0f : l2 * expf(m2 - mx);
    }
    const float inv = lsum > 0.0f ? 1.0f / lsum : 0.0f;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float o = 0.0f;
        for (int s0 = 0; s0 < n_splits; s0 += CB_BATCH) {
            float p[CB_BATCH];
#pragma unroll
            for (int j = 0; j < CB_BATCH; j++) /* every load of the round issued before the sums */
                p[j] = s0 + j < n_splits ? pa[(int64_t)(s0 + j) * hd + d] : 0.0f;
#pragma unroll
            for (int j = 0; j < CB_BATCH; j++) {
                const int sp = s0 + j;
                if (sp < n_splits) {
                    const float m2 = mls[2 * sp];
                    if (m2 != -INFINITY)
                        o += p[j] * expf(m2 - mx);
                }
            }
        }
        out[idx * hd + d] = anvil_from_f32<T>(o * inv);
    }
}

extern "C" anvil_status anvil_cuda_launch_attn_combine(cudaStream_t stream, const anvil_cuda_attn *a,
                                                       int32_t n_splits, const float *ws)
{
    CHECK(n_splits >= 1 && n_splits <= CB_MAX_SPLITS, ANVIL_ERR_INVALID_ARG,
          "attention combine: %d splits (1..%d)", n_splits, CB_MAX_SPLITS);
    const int threads = a->head_dim <= 64 ? 64 : 128;
    const unsigned blocks = (unsigned)((int64_t)a->n_tokens * a->n_heads);
    ANVIL_CUDA_DISPATCH(a->dt, anvil_launch(anvil_attn_combine_kernel<T>, blocks, threads, 0, stream, a->pdl, ws,
                                            (T *)a->out, a->n_tokens, a->n_heads, a->head_dim, n_splits));
    return ANVIL_CUDA_LAUNCHED("attention combine kernel");
}

extern "C" size_t anvil_cuda_attn_decode_ws_bytes(const anvil_cuda_attn *a, int32_t n_splits)
{
    return (size_t)a->n_tokens * (size_t)a->n_heads * (size_t)n_splits * (size_t)(a->head_dim + 2) *
           sizeof(float);
}

template <typename T, int DPL, int RD>
static anvil_status launch(cudaStream_t stream, const anvil_cuda_attn *a, int n_hc, int n_splits,
                           int split_len, float *ws)
{
    const dim3 grid((unsigned)a->n_tokens, (unsigned)(a->n_kv_heads * n_hc), (unsigned)n_splits);
    anvil_attn_decode_kernel<T, DPL, RD>
        <<<grid, DC_WARPS * 32, 0, stream>>>(*a, n_hc, n_splits, split_len, ws);
    TRY(ANVIL_CUDA_LAUNCHED("attention decode kernel"));
    if (n_splits > 1)
        TRY(anvil_cuda_launch_attn_combine(stream, a, n_splits, ws));
    return ANVIL_OK;
}

template <typename T, int DPL, int RD> static int blocks_per_sm(void)
{
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, anvil_attn_decode_kernel<T, DPL, RD>, DC_WARPS * 32,
                                                      0) != cudaSuccess) {
        (void)cudaGetLastError();
        n = 1;
    }
    return n > 0 ? n : 1;
}

template <typename T, int RD> static int blocks_per_sm_hd(int hd)
{
    if (hd <= 32)
        return blocks_per_sm<T, 1, RD>();
    if (hd <= 64)
        return blocks_per_sm<T, 2, RD>();
    if (hd <= 128)
        return blocks_per_sm<T, 4, RD>();
    return blocks_per_sm<T, 8, RD>();
}

static int decode_rd(const anvil_cuda_attn *a)
{
    const int group = a->n_heads / a->n_kv_heads;
    return group <= 1 ? 1 : group <= 2 ? 2 : group <= 4 ? 4 : 8;
}

extern "C" int anvil_cuda_attn_decode_blocks_per_sm(const anvil_cuda_attn *a)
{
    const int rd = decode_rd(a), hd = a->head_dim;
    int n = 1;
    switch (a->dt) {
    case ANVIL_DTYPE_F32:
        n = rd == 1   ? blocks_per_sm_hd<float, 1>(hd)
            : rd == 2 ? blocks_per_sm_hd<float, 2>(hd)
            : rd == 4 ? blocks_per_sm_hd<float, 4>(hd)
                      : blocks_per_sm_hd<float, 8>(hd);
        break;
    case ANVIL_DTYPE_BF16:
        n = rd == 1   ? blocks_per_sm_hd<__nv_bfloat16, 1>(hd)
            : rd == 2 ? blocks_per_sm_hd<__nv_bfloat16, 2>(hd)
            : rd == 4 ? blocks_per_sm_hd<__nv_bfloat16, 4>(hd)
                      : blocks_per_sm_hd<__nv_bfloat16, 8>(hd);
        break;
    default:
        n = rd == 1   ? blocks_per_sm_hd<__half, 1>(hd)
            : rd == 2 ? blocks_per_sm_hd<__half, 2>(hd)
            : rd == 4 ? blocks_per_sm_hd<__half, 4>(hd)
                      : blocks_per_sm_hd<__half, 8>(hd);
        break;
    }
    return n;
}

template <typename T, int RD>
static anvil_status launch_hd(cudaStream_t stream, const anvil_cuda_attn *a, int n_hc, int n_splits,
                              int split_len, float *ws)
{
    const int hd = a->head_dim;
    if (hd <= 32)
        return launch<T, 1, RD>(stream, a, n_hc, n_splits, split_len, ws);
    if (hd <= 64)
        return launch<T, 2, RD>(stream, a, n_hc, n_splits, split_len, ws);
    if (hd <= 128)
        return launch<T, 4, RD>(stream, a, n_hc, n_splits, split_len, ws);
    return launch<T, 8, RD>(stream, a, n_hc, n_splits, split_len, ws);
}

extern "C" anvil_status anvil_cuda_launch_attn_decode(cudaStream_t stream, const anvil_cuda_attn *a,
                                                      int32_t n_splits, int32_t split_len, float *ws)
{
    if (a->n_tokens == 0)
        return ANVIL_OK;
    CHECK(n_splits >= 1 && n_splits <= 65535 && split_len >= 1 && (n_splits == 1 || ws != NULL),
          ANVIL_ERR_INVALID_ARG, "attention decode: %d splits of %d", n_splits, split_len);
    const int group = a->n_heads / a->n_kv_heads;
    /* query heads per block: the group, rounded up to a kernel's RD */
    const int rd = decode_rd(a);
    const int n_hc = (group + rd - 1) / rd;
    CHECK((int64_t)a->n_kv_heads * n_hc <= 65535, ANVIL_ERR_UNSUPPORTED, "attention: %d KV heads x %d",
          a->n_kv_heads, n_hc);
    ANVIL_CUDA_DISPATCH(a->dt, {
        if (rd == 1)
            return launch_hd<T, 1>(stream, a, n_hc, n_splits, split_len, ws);
        if (rd == 2)
            return launch_hd<T, 2>(stream, a, n_hc, n_splits, split_len, ws);
        if (rd == 4)
            return launch_hd<T, 4>(stream, a, n_hc, n_splits, split_len, ws);
        return launch_hd<T, 8>(stream, a, n_hc, n_splits, split_len, ws);
    });
    return ANVIL_OK;
}
