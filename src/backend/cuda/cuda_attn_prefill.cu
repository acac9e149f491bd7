/*
 * Tiled causal attention over the paged KV cache ("prefill"), flash-style:
 * online softmax in f32, no score matrix in memory.
 *
 * A block of 4 warps owns up to 16 query rows: a run of `qt` consecutive
 * tokens of the packed batch times `gh` query heads of one KV head (GQA:
 * the heads of a group read the same keys). It walks the keys its rows need
 * in tiles of 32, each tile loaded once into shared memory (as f32) through
 * the block table and shared by all 16 rows. Each warp owns 4 rows:
 *   scores: lane j takes key j of the tile, for the warp's 4 rows at once
 *           (one K read feeds 4 rows; q rows are broadcast reads);
 *   softmax: per row, the tile max by warp reduction, rescale, exp;
 *   values: lane owns dims lane + 32 i, p_j broadcast by shuffle.
 * A run of tokens may span several sequences (mixed batches): the block
 * handles each sequence's segment in turn, rows of other segments idle.
 *
 * Correct for any batch; efficient when sequences bring many tokens. This
 * is the SIMT version: a tensor-core (mma) version is the next step (see
 * docs/cuda-backend.md).
 */
#include <math.h>

#include "backend/cuda/cuda_common.cuh"

#define PF_WARPS 4
#define PF_RPW 4                     /* rows per warp */
#define PF_ROWS (PF_WARPS * PF_RPW)  /* rows per block */
#define PF_BN 32                     /* keys per tile: one per lane */

/* TC: the cache's element type, T or __nv_fp8_e4m3 (the fp8 cache: its
 * values times k_scale / v_scale as they are staged in f32) */
template <typename T, typename TC, int DPL>
__global__ void __launch_bounds__(PF_WARPS * 32)
    anvil_attn_prefill_kernel(anvil_cuda_attn a, int gh, int qt, int n_hc)
{
    extern __shared__ float4 pf_smem4[];
    __shared__ int row_t[PF_ROWS], row_h[PF_ROWS], row_p[PF_ROWS], row_lo[PF_ROWS], tok_seq[PF_ROWS];

    const int hd = a.head_dim, kst = hd + 4; /* K rows padded: lane j's float4 reads hit distinct banks */
    float *q_s = reinterpret_cast<float *>(pf_smem4);
    float *k_s = q_s + PF_ROWS * hd;
    float *v_s = k_s + PF_BN * kst;

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int t0 = blockIdx.x * qt;
    const int g = blockIdx.y / n_hc, hc = blockIdx.y - (blockIdx.y / n_hc) * n_hc;
    const int group = a.n_heads / a.n_kv_heads;
    const int n_tok = min(qt, a.n_tokens - t0);
    const int64_t qw = (int64_t)a.n_heads * hd, kw = (int64_t)a.n_kv_heads * hd;
    const TC *kc = (const TC *)a.k_cache, *vc = (const TC *)a.v_cache;
    const bool f8 = !std::is_same<T, TC>::value;
    const float ks = f8 ? a.k_scale : 1.0f, vs = f8 ? a.v_scale : 1.0f;

    if (threadIdx.x < PF_ROWS) {
        const int r = threadIdx.x, tl = r / gh, hh = hc * gh + r % gh;
        const bool ok = tl < n_tok && hh < group;
        const int p = ok ? a.positions[t0 + tl] : 0;
        row_t[r] = ok ? t0 + tl : -1;
        row_h[r] = g * group + hh;
        row_p[r] = p;
        row_lo[r] = anvil_window_lo(p, a.window);
        if (r < n_tok)
            tok_seq[r] = a.seq_of_token[t0 + r];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < PF_ROWS * hd; e += blockDim.x) {
        const int r = e / hd, d = e - r * hd, t = row_t[r];
        q_s[e] = t >= 0 ? anvil_to_f32(((const T *)a.q)[(int64_t)t * qw + (int64_t)row_h[r] * hd + d]) : 0.0f;
    }

    float m[PF_RPW], l[PF_RPW], acc[PF_RPW][DPL];
#pragma unroll
    for (int rr = 0; rr < PF_RPW; rr++) {
        m[rr] = -INFINITY;
        l[rr] = 0.0f;
#pragma unroll
        for (int i = 0; i < DPL; i++)
            acc[rr][i] = 0.0f;
    }
    const int r0 = warp * PF_RPW;

    for (int seg_begin = 0; seg_begin < n_tok;) {
        /* the segment: the chunk's tokens of one sequence (the same for all threads) */
        const int s = tok_seq[seg_begin];
        int seg_end = seg_begin + 1;
        while (seg_end < n_tok && tok_seq[seg_end] == s)
            seg_end++;
        int klo = INT_MAX, khi = 0; /* keys [klo, khi) some row of the segment reads */
        for (int r = 0; r < PF_ROWS; r++) {
            const int tl = row_t[r] - t0;
            if (row_t[r] >= 0 && tl >= seg_begin && tl < seg_end) {
                klo = min(klo, row_lo[r]);
                khi = max(khi, row_p[r] + 1);
            }
        }
        const bool seq_ok = s >= 0 && s < a.n_seqs;
        if (!seq_ok) {
            if (threadIdx.x == 0)
                anvil_flag(a.err, ANVIL_CUDA_BAD_SEQ);
            khi = klo; /* no keys: these rows come out as zeros */
        }
        const int32_t *bt = a.block_tables + (seq_ok ? (int64_t)s * a.max_blocks_per_seq : 0);
        bool mine[PF_RPW]; /* rows of this warp in this segment */
        bool any = false;
#pragma unroll
        for (int rr = 0; rr < PF_RPW; rr++) {
            const int tl = row_t[r0 + rr] - t0;
            mine[rr] = row_t[r0 + rr] >= 0 && tl >= seg_begin && tl < seg_end;
            any |= mine[rr];
        }

        for (int kt = klo; kt < khi; kt += PF_BN) {
            __syncthreads(); /* the previous tile (or the q rows) is no longer being read/written */
            for (int j = warp; j < PF_BN; j += PF_WARPS) {
                const int kj = kt + j;
                const TC *kr = nullptr, *vr = nullptr;
                if (kj < khi) {
                    const int bi = kj / a.block_size;
                    const int blk = bi < a.max_blocks_per_seq ? bt[bi] : -1;
                    if (blk >= 0 && blk < a.n_blocks) {
                        const int64_t off = ((int64_t)blk * a.block_size + (kj - bi * a.block_size)) * kw +
                                            (int64_t)g * hd;
                        kr = kc + off;
                        vr = vc + off;
                    } else if (lane == 0) {
                        anvil_flag(a.err, ANVIL_CUDA_BAD_BLOCK);
                    }
                }
                for (int d = lane; d < hd; d += 32) {
                    k_s[j * kst + d] = kr ? (f8 ? anvil_to_f32(kr[d]) * ks : anvil_to_f32(kr[d])) : 0.0f;
                    v_s[j * hd + d] = vr ? (f8 ? anvil_to_f32(vr[d]) * vs : anvil_to_f32(vr[d])) : 0.0f;
                }
            }
            __syncthreads();
            if (!any)
                continue;

            /* scores of key kt + lane for the warp's rows */
            float sc[PF_RPW];
#pragma unroll
            for (int rr = 0; rr < PF_RPW; rr++)
                sc[rr] = 0.0f;
            const float *kp = k_s + lane * kst;
            for (int d = 0; d < hd; d += 4) {
                const float4 kv = *reinterpret_cast<const float4 *>(kp + d);
#pragma unroll
                for (int rr = 0; rr < PF_RPW; rr++) {
                    const float4 qv = *reinterpret_cast<const float4 *>(q_s + (r0 + rr) * hd + d);
                    sc[rr] = fmaf(qv.x, kv.x, sc[rr]);
                    sc[rr] = fmaf(qv.y, kv.y, sc[rr]);
                    sc[rr] = fmaf(qv.z, kv.z, sc[rr]);
                    sc[rr] = fmaf(qv.w, kv.w, sc[rr]);
                }
            }
            const int kj = kt + lane;
            float pr[PF_RPW];
#pragma unroll
            for (int rr = 0; rr < PF_RPW; rr++) {
                const int r = r0 + rr;
                const bool valid = mine[rr] && kj < khi && kj >= row_lo[r] && kj <= row_p[r];
                float x = sc[rr] * a.scale;
                if (a.softcap > 0.0f) /* Gemma 2: tanh(s / cap) * cap before the softmax */
                    x = tanhf(x / a.softcap) * a.softcap;
                x = valid ? x : -INFINITY;
                const float mt = anvil_warp_max(x);
                pr[rr] = 0.0f;
                if (mt != -INFINITY) { /* uniform: mt is the same in every lane */
                    const float mn = fmaxf(m[rr], mt);
                    const float corr = expf(m[rr] - mn); /* 0 while m is -inf */
                    pr[rr] = valid ? expf(x - mn) : 0.0f;
                    l[rr] = l[rr] * corr + pr[rr]; /* per-lane partial sum, reduced at the end */
#pragma unroll
                    for (int i = 0; i < DPL; i++)
                        acc[rr][i] *= corr;
                    m[rr] = mn;
                }
            }
            /* acc += p V over the tile */
            for (int j = 0; j < PF_BN; j++) {
                float vv[DPL];
#pragma unroll
                for (int i = 0; i < DPL; i++) {
                    const int d = lane + 32 * i;
                    vv[i] = d < hd ? v_s[j * hd + d] : 0.0f;
                }
#pragma unroll
                for (int rr = 0; rr < PF_RPW; rr++) {
                    const float pj = __shfl_sync(0xffffffffu, pr[rr], j);
#pragma unroll
                    for (int i = 0; i < DPL; i++)
                        acc[rr][i] = fmaf(pj, vv[i], acc[rr][i]);
                }
            }
        }
        seg_begin = seg_end;
    }

#pragma unroll
    for (int rr = 0; rr < PF_RPW; rr++) {
        const int r = r0 + rr, t = row_t[r];
        if (t < 0)
            continue;
        const float lsum = anvil_warp_sum(l[rr]);
        const float inv = lsum > 0.0f ? 1.0f / lsum : 0.0f;
        T *o = (T *)a.out + (int64_t)t * qw + (int64_t)row_h[r] * hd;
#pragma unroll
        for (int i = 0; i < DPL; i++) {
            const int d = lane + 32 * i;
            if (d < hd)
                o[d] = anvil_from_f32<T>(acc[rr][i] * inv);
        }
    }
}

template <typename T, typename TC, int DPL>
static anvil_status launch(cudaStream_t stream, const anvil_cuda_attn *a, size_t smem_optin, dim3 grid, int gh,
                           int qt, int n_hc)
{
    const size_t smem = (size_t)(PF_ROWS * a->head_dim + PF_BN * (a->head_dim + 4) + PF_BN * a->head_dim) *
                        sizeof(float);
    CHECK(smem <= smem_optin, ANVIL_ERR_UNSUPPORTED, "attention: head_dim %d needs %zu bytes of shared memory",
          a->head_dim, smem);
    if (smem > 48 * 1024)
        TRY(anvil_cuda_status(cudaFuncSetAttribute(anvil_attn_prefill_kernel<T, TC, DPL>,
                                                   cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                              "attention: shared memory limit", __FILE__, __LINE__));
    anvil_attn_prefill_kernel<T, TC, DPL><<<grid, PF_WARPS * 32, smem, stream>>>(*a, gh, qt, n_hc);
    return ANVIL_CUDA_LAUNCHED("attention prefill kernel");
}

extern "C" anvil_status anvil_cuda_launch_attn_prefill(cudaStream_t stream, const anvil_cuda_attn *a,
                                                       size_t smem_optin)
{
    if (a->n_tokens == 0)
        return ANVIL_OK;
    const int group = a->n_heads / a->n_kv_heads;
    const int gh = group < PF_ROWS ? group : PF_ROWS; /* query heads per block */
    const int n_hc = (group + gh - 1) / gh;           /* blocks per KV head */
    const int qt = PF_ROWS / gh;                      /* tokens per block */
    CHECK((int64_t)a->n_kv_heads * n_hc <= 65535, ANVIL_ERR_UNSUPPORTED, "attention: %d KV heads x %d",
          a->n_kv_heads, n_hc);
    const dim3 grid((unsigned)((a->n_tokens + qt - 1) / qt), (unsigned)(a->n_kv_heads * n_hc), 1);
    const int hd = a->head_dim;
    if (a->cache_dt == ANVIL_DTYPE_F8_E4M3) {
        CHECK(a->dt == ANVIL_DTYPE_BF16 || a->dt == ANVIL_DTYPE_F16, ANVIL_ERR_UNSUPPORTED,
              "attention: an fp8 KV cache with %s activations (bf16 or f16)", anvil_dtype_name(a->dt));
        typedef __nv_fp8_e4m3 TC;
        if (a->dt == ANVIL_DTYPE_BF16) {
            typedef __nv_bfloat16 T;
            if (hd <= 32)
                return launch<T, TC, 1>(stream, a, smem_optin, grid, gh, qt, n_hc);
            if (hd <= 64)
                return launch<T, TC, 2>(stream, a, smem_optin, grid, gh, qt, n_hc);
            if (hd <= 128)
                return launch<T, TC, 4>(stream, a, smem_optin, grid, gh, qt, n_hc);
            return launch<T, TC, 8>(stream, a, smem_optin, grid, gh, qt, n_hc);
        }
        typedef __half T;
        if (hd <= 32)
            return launch<T, TC, 1>(stream, a, smem_optin, grid, gh, qt, n_hc);
        if (hd <= 64)
            return launch<T, TC, 2>(stream, a, smem_optin, grid, gh, qt, n_hc);
        if (hd <= 128)
            return launch<T, TC, 4>(stream, a, smem_optin, grid, gh, qt, n_hc);
        return launch<T, TC, 8>(stream, a, smem_optin, grid, gh, qt, n_hc);
    }
    ANVIL_CUDA_DISPATCH(a->dt, {
        if (hd <= 32)
            return launch<T, T, 1>(stream, a, smem_optin, grid, gh, qt, n_hc);
        if (hd <= 64)
            return launch<T, T, 2>(stream, a, smem_optin, grid, gh, qt, n_hc);
        if (hd <= 128)
            return launch<T, T, 4>(stream, a, smem_optin, grid, gh, qt, n_hc);
        return launch<T, T, 8>(stream, a, smem_optin, grid, gh, qt, n_hc);
    });
    return ANVIL_OK;
}
