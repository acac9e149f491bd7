/*
 * Per-token attention over the paged KV cache, split-K ("flash decoding").
 *
 * A block of 4 warps takes one token t, RD query heads of one KV head
 * (GQA: every K/V row loaded serves all RD heads), and one split of the
 * token's keys [lo, p]. Lane l holds dims [l * DPL, (l + 1) * DPL) of q, k,
 * v and the output accumulators in registers (vector loads of DPL elements);
 * a score is a warp all-reduce. The warps take interleaved keys, two at a
 * time with both rows loaded before use, then merge their online-softmax
 * states through shared memory. With one split the block writes the output;
 * with several it writes (m, l, acc) partials and a combine kernel merges
 * the splits.
 *
 * Correct for any batch (each token alone); chosen for decode steps, where
 * every sequence brings one token and the parallelism must come from the
 * context instead.
 */
#include <math.h>

#include "backend/cuda/cuda_common.cuh"

#define DC_WARPS 4
#define DC_UNROLL 2

template <typename T, int DPL, int RD>
__global__ void __launch_bounds__(DC_WARPS * 32)
    anvil_attn_decode_kernel(anvil_cuda_attn a, int n_hc, int n_splits, int split_len, float *ws)
{
    __shared__ float sm_acc[DC_WARPS][RD][32 * DPL];
    __shared__ float sm_m[DC_WARPS][RD], sm_l[DC_WARPS][RD];

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int t = blockIdx.x, sp = blockIdx.z;
    const int g = blockIdx.y / n_hc, hc = blockIdx.y - (blockIdx.y / n_hc) * n_hc;
    const int hd = a.head_dim, group = a.n_heads / a.n_kv_heads;
    const int64_t qw = (int64_t)a.n_heads * hd, kw = (int64_t)a.n_kv_heads * hd;
    const int d0 = lane * DPL;
    const bool lane_ok = d0 < hd;

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

    float q[RD][DPL], m[RD], l[RD], acc[RD][DPL];
#pragma unroll
    for (int r = 0; r < RD; r++) {
        const int hh = hc * RD + r;
        if (hh < group && lane_ok) {
            anvil_load_vec<T, DPL>((const T *)a.q + (int64_t)t * qw + (int64_t)(g * group + hh) * hd + d0, q[r]);
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

    for (int kb = kbeg + warp; kb < kend; kb += DC_WARPS * DC_UNROLL) {
        float kv[DC_UNROLL][DPL], vv[DC_UNROLL][DPL];
        bool ok[DC_UNROLL];
#pragma unroll
        for (int u = 0; u < DC_UNROLL; u++) {
            const int kj = kb + u * DC_WARPS;
            ok[u] = false;
#pragma unroll
            for (int i = 0; i < DPL; i++)
                kv[u][i] = vv[u][i] = 0.0f;
            if (kj < kend) {
                const int bi = kj / a.block_size;
                const int blk = bi < a.max_blocks_per_seq ? bt[bi] : -1;
                if (blk >= 0 && blk < a.n_blocks) {
                    ok[u] = true;
                    const int64_t off =
                        ((int64_t)blk * a.block_size + (kj - bi * a.block_size)) * kw + (int64_t)g * hd + d0;
                    if (lane_ok) {
                        anvil_load_vec<T, DPL>(kc + off, kv[u]);
                        anvil_load_vec<T, DPL>(vc + off, vv[u]);
                    }
                } else if (lane == 0) {
                    anvil_flag(a.err, ANVIL_CUDA_BAD_BLOCK);
                }
            }
        }
#pragma unroll
        for (int u = 0; u < DC_UNROLL; u++) {
            if (!ok[u]) /* uniform across the warp */
                continue;
#pragma unroll
            for (int r = 0; r < RD; r++) {
                float part = 0.0f;
#pragma unroll
                for (int i = 0; i < DPL; i++)
                    part = fmaf(q[r][i], kv[u][i], part);
                /* a butterfly all-reduce: every lane gets the same bits, so the branch below is uniform */
                const float sc = anvil_warp_sum(part) * a.scale;
                if (sc > m[r]) {
                    const float corr = expf(m[r] - sc);
                    l[r] = l[r] * corr + 1.0f;
#pragma unroll
                    for (int i = 0; i < DPL; i++)
                        acc[r][i] = fmaf(acc[r][i], corr, vv[u][i]);
                    m[r] = sc;
                } else {
                    const float pr = expf(sc - m[r]);
                    l[r] += pr;
#pragma unroll
                    for (int i = 0; i < DPL; i++)
                        acc[r][i] = fmaf(pr, vv[u][i], acc[r][i]);
                }
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

/* out[t, h] = sum over splits of acc * e^(m - M) / sum of l * e^(m - M). */
template <typename T>
__global__ void anvil_attn_combine_kernel(const float *ws, T *out, int32_t n_tokens, int n_heads, int hd, int n_splits)
{
    const int64_t idx = blockIdx.x; /* t * n_heads + h */
    const float *ml = ws + 2 * idx * n_splits;
    const float *pa = ws + 2 * (int64_t)n_tokens * n_heads * n_splits + idx * n_splits * hd;
    float mx = -INFINITY;
    for (int sp = 0; sp < n_splits; sp++)
        mx = fmaxf(mx, ml[2 * sp]);
    float lsum = 0.0f;
    for (int sp = 0; sp < n_splits; sp++)
        lsum += ml[2 * sp] == -INFINITY ? 0.0f : ml[2 * sp + 1] * expf(ml[2 * sp] - mx);
    const float inv = lsum > 0.0f ? 1.0f / lsum : 0.0f;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float o = 0.0f;
        for (int sp = 0; sp < n_splits; sp++)
            if (ml[2 * sp] != -INFINITY)
                o += pa[(int64_t)sp * hd + d] * expf(ml[2 * sp] - mx);
        out[idx * hd + d] = anvil_from_f32<T>(o * inv);
    }
}

extern "C" size_t anvil_cuda_attn_decode_ws_bytes(const anvil_cuda_attn *a, int32_t n_splits)
{
    return (size_t)a->n_tokens * (size_t)a->n_heads * (size_t)n_splits * (size_t)(a->head_dim + 2) * sizeof(float);
}

template <typename T, int DPL, int RD>
static anvil_status launch(cudaStream_t stream, const anvil_cuda_attn *a, int n_hc, int n_splits, int split_len,
                           float *ws)
{
    const dim3 grid((unsigned)a->n_tokens, (unsigned)(a->n_kv_heads * n_hc), (unsigned)n_splits);
    anvil_attn_decode_kernel<T, DPL, RD><<<grid, DC_WARPS * 32, 0, stream>>>(*a, n_hc, n_splits, split_len, ws);
    TRY(ANVIL_CUDA_LAUNCHED("attention decode kernel"));
    if (n_splits > 1) {
        const int threads = a->head_dim <= 64 ? 64 : 128;
        const unsigned blocks = (unsigned)((int64_t)a->n_tokens * a->n_heads);
        anvil_attn_combine_kernel<T><<<blocks, threads, 0, stream>>>(ws, (T *)a->out, a->n_tokens, a->n_heads,
                                                                    a->head_dim, n_splits);
        TRY(ANVIL_CUDA_LAUNCHED("attention combine kernel"));
    }
    return ANVIL_OK;
}

template <typename T, int RD>
static anvil_status launch_hd(cudaStream_t stream, const anvil_cuda_attn *a, int n_hc, int n_splits, int split_len,
                              float *ws)
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
    const int rd = group <= 1 ? 1 : group <= 2 ? 2 : group <= 4 ? 4 : 8;
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
