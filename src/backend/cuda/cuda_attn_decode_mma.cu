/*
 * Per-token attention over the paged KV cache on tensor cores, split-K
 * ("flash decoding"), bf16/f16, head_dim a multiple of 16 up to 128.
 *
 * Why: the SIMT decode kernel (cuda_attn_decode.cu) spends ~100
 * instructions per key and warp on dot products, shuffles and exps, and
 * keeps only a few keys in flight per warp: it reached 11-22% of the copy
 * bandwidth. Here a block of 4 warps takes one token, up to 16 query heads
 * of one KV head (the GQA group, padded to the 16 rows of an
 * mma.m16n8k16 A operand; the padding rows cost tensor-core time, which is
 * idle anyway) and one split of the token's keys. Per tile of 64 keys the
 * block gathers the K and V rows through the block table into shared
 * memory with 16-byte cp.async copies, two stages deep (the next tile in
 * flight while this one is used), so each K/V element is read from memory
 * once for the whole group. Each warp takes 16 keys of the tile:
 * S = Q K^T (16 rows x 16 keys), the online softmax of its rows over its
 * keys (scores prescaled by scale * log2 e, one exp2 each), and
 * O += P V with P's accumulator layout reused as the A operand and V's
 * fragments from transposed ldmatrix (as in cuda_attn_prefill_mma.cu). At
 * the end the 4 warps' (m, l, O) merge through shared memory; with one
 * split the block writes the output, with several it writes the same
 * (m, l, acc) partials as the SIMT kernel (m in natural-log units). Then
 * either the same combine kernel merges them, or (with counters, the
 * default) the last split of each (token, block of heads) to finish does:
 * each split block, its partials written, fences and adds one to the
 * counter of its (token, blockIdx.y); the block that brings it to n_splits
 * reads every split's partials (from L2: they were written by other SMs)
 * and merges them with the combine kernel's arithmetic, in its order, so
 * the bits do not change, and sets the counter back to zero for the next
 * launch (step graphs replay the same counters). That saves the combine's
 * launch and its dependent-kernel gap, once per layer of a decode step.
 * The merge runs on one block per (token, block of heads), where the
 * combine kernel has a block per head: the host keeps it to a few splits
 * (cuda_attention.c), where it is short.
 *
 * P is rounded to the input dtype for P V, as in the prefill kernel.
 *
 * An fp8 KV cache (F8, cache_dt F8_E4M3; two stages): the tiles' fp8 rows
 * are copied the same way into a staging area (half the bytes read from
 * memory, what a memory-bound decode step pays for), and once a tile has
 * landed the block converts it (exactly: e4m3 fits bf16 and f16) into the
 * one bf16/f16 tile the fragments are read from, so everything after is
 * the 16-bit kernel's. k_scale goes into the score scale, v_scale onto O
 * before the warps merge.
 */
#include <math.h>

#include "backend/cuda/cuda_mma.cuh"

#define DM_WARPS  4
#define DM_BN     64 /* keys per tile: 16 per warp */
#define DM_ROWS   16 /* query heads per block (the mma M dimension) */
#define FULL_MASK 0xffffffffu

/* K and V tiles of every stage, rows padded by 8 elements; with an fp8
 * cache, every stage's fp8 K and V rows (unpadded) and one converted tile */
static size_t dm_smem_bytes(int hd, int stages, bool f8 = false)
{
    if (f8)
        return (size_t)stages * 2 * DM_BN * (size_t)hd + 2 * DM_BN * (size_t)(hd + 8) * 2;
    return (size_t)stages * 2 * DM_BN * (size_t)(hd + 8) * 2;
}

/* A block's result for row r (head h) from the warps' (m, l, O) in shared
 * memory: the output with one split, else split sp's (m, l, acc) partials. */
template <typename T>
__device__ __forceinline__ void decode_mma_out(const anvil_cuda_attn &a, const float *sm_o, const float *sm_ml,
                                               int r, int t, int h, int sp, int n_splits, int d0, int per, float *ws)
{
    const int hd = a.head_dim;
    const int64_t qw = (int64_t)a.n_heads * hd;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < DM_WARPS; w++)
        mx = fmaxf(mx, sm_ml[(w * DM_ROWS + r) * 2]);
    float f[DM_WARPS], lsum = 0.0f;
#pragma unroll
    for (int w = 0; w < DM_WARPS; w++) {
        const float mw = sm_ml[(w * DM_ROWS + r) * 2];
        f[w] = mw == -INFINITY ? 0.0f : exp2f(mw - mx);
        lsum += sm_ml[(w * DM_ROWS + r) * 2 + 1] * f[w];
    }
    if (n_splits == 1) {
        const float inv = lsum > 0.0f ? 1.0f / lsum : 0.0f;
        T *out = (T *)a.out + (int64_t)t * qw + (int64_t)h * hd;
        for (int d = d0; d < d0 + per; d++) {
            float acc = 0.0f;
#pragma unroll
            for (int w = 0; w < DM_WARPS; w++)
                acc += sm_o[(w * DM_ROWS + r) * hd + d] * f[w];
            out[d] = anvil_from_f32<T>(acc * inv);
        }
    } else {
        const int64_t idx = ((int64_t)t * a.n_heads + h) * n_splits + sp;
        float *ml = ws + 2 * idx;
        float *pa = ws + 2 * (int64_t)a.n_tokens * a.n_heads * n_splits + idx * hd;
        if (d0 == 0) { /* one thread of the row */
            ml[0] = mx == -INFINITY ? -INFINITY : mx * 0.6931471805599453f; /* log2 units -> natural */
            ml[1] = lsum;
        }
        for (int d = d0; d < d0 + per; d++) {
            float acc = 0.0f;
#pragma unroll
            for (int w = 0; w < DM_WARPS; w++)
                acc += sm_o[(w * DM_ROWS + r) * hd + d] * f[w];
            pa[d] = acc;
        }
    }
}

template <typename T, int HDM, int STAGES, bool F8>
__global__ void __launch_bounds__(DM_WARPS * 32)
    anvil_attn_decode_mma_kernel(anvil_cuda_attn a, int n_hc, int n_splits, int split_len, float *ws, int *cnt)
{
    anvil_pdl_wait();
    anvil_pdl_launch();
    constexpr int KC = HDM / 16; /* 16-wide chunks of head_dim */
    constexpr int NTO = HDM / 8; /* 8-wide tiles of the output */
    extern __shared__ uint4 dm_smem4[];
    const int hd = a.head_dim,
              kst = hd + 8; /* rows padded by 8 elements: fragment reads hit distinct banks */
    uint16_t *const smem = reinterpret_cast<uint16_t *>(dm_smem4);
    const int stage_elems = 2 * DM_BN * kst;
    /* F8: the stages' fp8 rows (HDM == hd: bytes a row), then the converted tile */
    uint8_t *const stg8 = reinterpret_cast<uint8_t *>(dm_smem4);
    constexpr int STAGE8 = 2 * DM_BN * HDM;
    uint16_t *const tile8 = reinterpret_cast<uint16_t *>(stg8 + STAGES * STAGE8);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
    const int t = blockIdx.x, sp = blockIdx.z;
    const int g = blockIdx.y / n_hc, hc = blockIdx.y - (blockIdx.y / n_hc) * n_hc;
    const int group = a.n_heads / a.n_kv_heads;
    const int64_t qw = (int64_t)a.n_heads * hd, kw = (int64_t)a.n_kv_heads * hd;

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

    /* this thread's rows: heads hc * 16 + gq and + 8 of the group */
    const int hh0 = hc * DM_ROWS + gq, hh1 = hh0 + 8;
    uint32_t qf[KC][4];
    {
        const uint32_t *q0 = hh0 < group
                                 ? reinterpret_cast<const uint32_t *>((const T *)a.q + (int64_t)t * qw +
                                                                      (int64_t)(g * group + hh0) * hd)
                                 : nullptr;
        const uint32_t *q1 = hh1 < group
                                 ? reinterpret_cast<const uint32_t *>((const T *)a.q + (int64_t)t * qw +
                                                                      (int64_t)(g * group + hh1) * hd)
                                 : nullptr;
#pragma unroll
        for (int kc = 0; kc < KC; kc++) {
            const bool in = kc * 16 < hd;
            const int w0 = kc * 8 + tq; /* 32-bit word of columns kc*16 + 2 tq */
            qf[kc][0] = in && q0 ? q0[w0] : 0u;
            qf[kc][1] = in && q1 ? q1[w0] : 0u;
            qf[kc][2] = in && q0 ? q0[w0 + 4] : 0u;
            qf[kc][3] = in && q1 ? q1[w0 + 4] : 0u;
        }
    }

    float o[NTO][4];
#pragma unroll
    for (int i = 0; i < NTO; i++)
        o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;

    /* The keys of tile kt into stage st, 16-byte pieces: thread x copies
     * piece x % P (P = HDM / 8 per row) of keys x / P + i * (128 / P).
     * Every block-table read first, then the copies (asm with a memory
     * clobber, which would otherwise put each read behind the previous
     * copy); block sizes that are powers of two take shifts, not divisions:
     * this address arithmetic was most of the kernel's instructions. */
    constexpr int P = HDM / 8, KSTEP = DM_WARPS * 32 / P, NPC = DM_BN / KSTEP; /* pieces per thread */
    const int part = threadIdx.x % P, key0 = threadIdx.x / P;
    const bool bs_pow2 = (a.block_size & (a.block_size - 1)) == 0;
    const int bs_shift = __ffs(a.block_size) - 1;
    constexpr int P8 = HDM / 16, KSTEP8 = DM_WARPS * 32 / P8, NPC8 = DM_BN / KSTEP8; /* F8: 16 keys' bytes a piece */
    const int part8 = threadIdx.x % P8, key08 = threadIdx.x / P8;
    auto issue8 = [&](int kt, int st) {
        uint8_t *k_s = stg8 + st * STAGE8 + key08 * HDM + part8 * 16, *v_s = k_s + DM_BN * HDM;
        const uint8_t *kc = (const uint8_t *)a.k_cache + (int64_t)g * HDM + part8 * 16;
        const uint8_t *vc = (const uint8_t *)a.v_cache + (int64_t)g * HDM + part8 * 16;
        int rows[NPC8];
#pragma unroll
        for (int i = 0; i < NPC8; i++) {
            const int kj = kt + key08 + i * KSTEP8;
            rows[i] = -1;
            if (kj < kend) {
                const int bi = bs_pow2 ? kj >> bs_shift : kj / a.block_size;
                const int in_blk = kj - bi * a.block_size;
                const int blk = bi < a.max_blocks_per_seq ? bt[bi] : -1;
                if (blk >= 0 && blk < a.n_blocks)
                    rows[i] = blk * a.block_size + in_blk;
                else if (part8 == 0)
                    anvil_flag(a.err, ANVIL_CUDA_BAD_BLOCK);
            }
        }
#pragma unroll
        for (int i = 0; i < NPC8; i++) {
            const int64_t off = rows[i] >= 0 ? (int64_t)rows[i] * kw : 0;
            anvil_cp_async16(k_s + i * KSTEP8 * HDM, kc + off, rows[i] >= 0);
            anvil_cp_async16(v_s + i * KSTEP8 * HDM, vc + off, rows[i] >= 0);
        }
        anvil_cp_async_commit();
    };
    auto issue = [&](int kt, int st) {
        if constexpr (F8) {
            issue8(kt, st);
            return;
        }
        uint16_t *k_s = smem + st * stage_elems + key0 * kst + part * 8, *v_s = k_s + DM_BN * kst;
        const T *kc = (const T *)a.k_cache + (int64_t)g * hd + part * 8;
        const T *vc = (const T *)a.v_cache + (int64_t)g * hd + part * 8;
        int rows[NPC];
#pragma unroll
        for (int i = 0; i < NPC; i++) {
            const int kj = kt + key0 + i * KSTEP;
            rows[i] = -1;
            if (kj < kend) {
                const int bi = bs_pow2 ? kj >> bs_shift : kj / a.block_size;
                const int in_blk = kj - bi * a.block_size;
                const int blk = bi < a.max_blocks_per_seq ? bt[bi] : -1;
                if (blk >= 0 && blk < a.n_blocks)
                    rows[i] =
                        blk * a.block_size + in_blk; /* < n_blocks * block_size: an int (host-checked) */
                else if (part == 0)
                    anvil_flag(a.err, ANVIL_CUDA_BAD_BLOCK);
            }
        }
#pragma unroll
        for (int i = 0; i < NPC; i++) {
            const int64_t off = rows[i] >= 0 ? (int64_t)rows[i] * kw : 0;
            anvil_cp_async16(k_s + i * KSTEP * kst, kc + off, rows[i] >= 0);
            anvil_cp_async16(v_s + i * KSTEP * kst, vc + off, rows[i] >= 0);
        }
        anvil_cp_async_commit();
    };

    const float sl2 = (F8 ? a.scale * a.k_scale : a.scale) * 1.4426950408889634f;
    /* a soft cap (Gemma 2) on raw scores: cap_out tanh(raw cap_in) = cap tanh(scaled / cap) / scale */
    const float s_raw = F8 ? a.scale * a.k_scale : a.scale;
    const float cap_in = a.softcap > 0.0f ? s_raw / a.softcap : 0.0f, cap_out = a.softcap / s_raw;
    const int n_tiles = kend > kbeg ? (kend - kbeg + DM_BN - 1) / DM_BN : 0;
    /* STAGES - 1 tiles in flight ahead of the one in use (an empty group
     * where there is no tile, so the group count stays uniform) */
#pragma unroll
    for (int st = 0; st < STAGES - 1; st++) {
        if (st < n_tiles)
            issue(kbeg + st * DM_BN, st);
        else
            anvil_cp_async_commit();
    }
    for (int it = 0; it < n_tiles; it++) {
        const int kt = kbeg + it * DM_BN;
        const int nx = it + STAGES - 1;
        if (nx < n_tiles)
            issue(kbeg + nx * DM_BN, nx % STAGES);
        else
            anvil_cp_async_commit();
        anvil_cp_async_wait<STAGES - 1>();
        __syncthreads(); /* tile it is in shared memory for every thread */
        const uint16_t *k_s = smem + (it % STAGES) * stage_elems, *v_s = k_s + DM_BN * kst;
        if constexpr (F8) {
            /* the staged fp8 K and V rows into the bf16/f16 tile (its last
             * readers passed the barrier at the end of the previous tile) */
            const uint8_t *src = stg8 + (it % STAGES) * STAGE8;
            for (int c = threadIdx.x; c < 2 * DM_BN * P8; c += DM_WARPS * 32) {
                const int row = c / P8, pc = c - row * P8;
                anvil_fp8x16_to<T>(*reinterpret_cast<const uint4 *>(src + row * HDM + pc * 16),
                                   tile8 + row * kst + pc * 16);
            }
            __syncthreads();
            k_s = tile8;
            v_s = tile8 + DM_BN * kst;
        }
        const int kw0 = kt + warp * 16; /* this warp's first key */
        if (kw0 < kend) {               /* the same for the whole warp */
            /* S = Q K^T: the B fragments of both 8-key tiles and a 16-wide
             * chunk of head_dim in one ldmatrix (matrices: keys +0/+8 x dims +0/+8) */
            float sc[2][4];
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
                sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
            const uint16_t *kr =
                k_s + (warp * 16 + ((lane >> 4) & 1) * 8 + (lane & 7)) * kst + ((lane >> 3) & 1) * 8;
#pragma unroll
            for (int kc = 0; kc < KC; kc++) {
                uint32_t kb[4];
                anvil_ldmatrix_x4(kb, kr + kc * 16);
                anvil_mma16816<T>(sc[0], qf[kc], kb[0], kb[1]);
                anvil_mma16816<T>(sc[1], qf[kc], kb[2], kb[3]);
            }
            if (a.softcap > 0.0f) { /* Gemma 2's cap, before the mask (uniform: a kernel parameter) */
#pragma unroll
                for (int nt = 0; nt < 2; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++)
                        sc[nt][e] = cap_out * tanhf(sc[nt][e] * cap_in);
            }
            /* scale, mask the keys past kend, and the max of each of the two rows */
            const bool full = kw0 + 16 <= kend;
            float mt0 = -INFINITY, mt1 = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < 2; nt++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int kj = kw0 + nt * 8 + 2 * tq + (e & 1);
                    const float x = full || kj < kend ? sc[nt][e] * sl2 : -INFINITY;
                    sc[nt][e] = x;
                    if (e >= 2)
                        mt1 = fmaxf(mt1, x);
                    else
                        mt0 = fmaxf(mt0, x);
                }
            }
            mt0 = fmaxf(mt0, __shfl_xor_sync(FULL_MASK, mt0, 1));
            mt0 = fmaxf(mt0, __shfl_xor_sync(FULL_MASK, mt0, 2));
            mt1 = fmaxf(mt1, __shfl_xor_sync(FULL_MASK, mt1, 1));
            mt1 = fmaxf(mt1, __shfl_xor_sync(FULL_MASK, mt1, 2));
            const float mn0 = fmaxf(m0, mt0), mn1 = fmaxf(m1, mt1);
            const float c0 = mn0 == -INFINITY ? 1.0f : exp2f(m0 - mn0);
            const float c1 = mn1 == -INFINITY ? 1.0f : exp2f(m1 - mn1);
            m0 = mn0;
            m1 = mn1;
            l0 *= c0;
            l1 *= c1;
            /* the maxima settle after a few tiles: rescale only when one moved */
            if (__any_sync(FULL_MASK, c0 != 1.0f || c1 != 1.0f)) {
#pragma unroll
                for (int i = 0; i < NTO; i++) {
                    o[i][0] *= c0;
                    o[i][1] *= c0;
                    o[i][2] *= c1;
                    o[i][3] *= c1;
                }
            }
            const float ms0 = mn0 == -INFINITY ? 0.0f : mn0, ms1 = mn1 == -INFINITY ? 0.0f : mn1;
            uint32_t pf[4];
#pragma unroll
            for (int nt = 0; nt < 2; nt++) {
                const float pr0 = exp2f(sc[nt][0] - ms0), pr1 = exp2f(sc[nt][1] - ms0);
                const float pr2 = exp2f(sc[nt][2] - ms1), pr3 = exp2f(sc[nt][3] - ms1);
                l0 += pr0 + pr1;
                l1 += pr2 + pr3;
                pf[nt * 2 + 0] = anvil_pack2<T>(pr0, pr1);
                pf[nt * 2 + 1] = anvil_pack2<T>(pr2, pr3);
            }
            /* O += P V: B operands (16 keys x 8 dims) of two dim tiles per transposed ldmatrix */
            const uint16_t *vr =
                v_s + (warp * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * kst + (lane >> 4) * 8;
#pragma unroll
            for (int nt = 0; nt < NTO; nt += 2) {
                uint32_t vb[4];
                anvil_ldmatrix_x4_trans(vb, vr + nt * 8);
                anvil_mma16816<T>(o[nt], pf, vb[0], vb[1]);
                anvil_mma16816<T>(o[nt + 1], pf, vb[2], vb[3]);
            }
        }
        __syncthreads(); /* stage it % STAGES is free for tile it + STAGES */
    }
    anvil_cp_async_wait<0>(); /* the empty groups */
    if constexpr (F8) { /* the values were fp8(v / v_scale) */
#pragma unroll
        for (int i = 0; i < NTO; i++) {
            o[i][0] *= a.v_scale;
            o[i][1] *= a.v_scale;
            o[i][2] *= a.v_scale;
            o[i][3] *= a.v_scale;
        }
    }

    /* merge the warps: row sums over the quad, then (m, l, O) through shared memory */
    l0 += __shfl_xor_sync(FULL_MASK, l0, 1);
    l0 += __shfl_xor_sync(FULL_MASK, l0, 2);
    l1 += __shfl_xor_sync(FULL_MASK, l1, 1);
    l1 += __shfl_xor_sync(FULL_MASK, l1, 2);
    float *sm_o = reinterpret_cast<float *>(dm_smem4); /* [warp][16 rows][hd]; fits in the stages */
    float *sm_ml = sm_o + DM_WARPS * DM_ROWS * hd;     /* [warp][16 rows][m, l] */
#pragma unroll
    for (int nt = 0; nt < NTO; nt++) {
        if (nt * 8 < hd) {
            const int d = nt * 8 + 2 * tq;
            sm_o[(warp * DM_ROWS + gq) * hd + d] = o[nt][0];
            sm_o[(warp * DM_ROWS + gq) * hd + d + 1] = o[nt][1];
            sm_o[(warp * DM_ROWS + gq + 8) * hd + d] = o[nt][2];
            sm_o[(warp * DM_ROWS + gq + 8) * hd + d + 1] = o[nt][3];
        }
    }
    if (tq == 0) {
        sm_ml[(warp * DM_ROWS + gq) * 2] = m0;
        sm_ml[(warp * DM_ROWS + gq) * 2 + 1] = l0;
        sm_ml[(warp * DM_ROWS + gq + 8) * 2] = m1;
        sm_ml[(warp * DM_ROWS + gq + 8) * 2 + 1] = l1;
    }
    __syncthreads();

    /* 8 threads per row, hd / 8 dims each */
    const int r = threadIdx.x >> 3, seg = threadIdx.x & 7, hh = hc * DM_ROWS + r;
    const int h = g * group + hh, per = hd / 8, d0 = seg * per;
    if (hh < group)
        decode_mma_out<T>(a, sm_o, sm_ml, r, t, h, sp, n_splits, d0, per, ws);
    if (n_splits == 1 || cnt == nullptr)
        return;
    /* the last split of (t, blockIdx.y) to finish merges them all */
    __shared__ int last;
    __threadfence(); /* this block's partials, visible before its count */
    __syncthreads();
    if (threadIdx.x == 0) {
        int *c = cnt + (int64_t)t * gridDim.y + blockIdx.y;
        last = atomicAdd(c, 1) == n_splits - 1;
        if (last)
            *c = 0; /* every split of this launch has counted: ready for the next */
    }
    __syncthreads();
    if (!last || hh >= group)
        return;
    __threadfence(); /* the other splits' partials after their counts */
    const int64_t idx = (int64_t)t * a.n_heads + h; /* as anvil_attn_combine_kernel, per dimension */
    const float *ml = ws + 2 * idx * n_splits;
    const float *pa = ws + 2 * (int64_t)a.n_tokens * a.n_heads * n_splits + idx * n_splits * hd;
    float mx = -INFINITY;
#pragma unroll 4
    for (int s2 = 0; s2 < n_splits; s2++)
        mx = fmaxf(mx, __ldcg(ml + 2 * s2));
    float lsum = 0.0f;
#pragma unroll 4
    for (int s2 = 0; s2 < n_splits; s2++) {
        const float m2 = __ldcg(ml + 2 * s2);
        lsum += m2 == -INFINITY ? 0.0f : __ldcg(ml + 2 * s2 + 1) * expf(m2 - mx);
    }
    const float inv = lsum > 0.0f ? 1.0f / lsum : 0.0f;
    /* the thread's per (= HDM / 8) dimensions at once, the splits in order:
     * for each dimension the combine kernel's sum, term for term, with one
     * expf per split instead of one per split and dimension */
    float acc[HDM / 8];
#pragma unroll
    for (int i = 0; i < HDM / 8; i++)
        acc[i] = 0.0f;
    for (int s2 = 0; s2 < n_splits; s2++) {
        const float m2 = __ldcg(ml + 2 * s2);
        if (m2 == -INFINITY)
            continue;
        const float f = expf(m2 - mx);
        const float *ps = pa + (int64_t)s2 * hd + d0;
#pragma unroll
        for (int i = 0; i < HDM / 8; i++)
            if (i < per)
                acc[i] += __ldcg(ps + i) * f;
    }
    T *out = (T *)a.out + idx * hd + d0;
#pragma unroll
    for (int i = 0; i < HDM / 8; i++)
        if (i < per)
            out[i] = anvil_from_f32<T>(acc[i] * inv);
}

/* The shared-memory limit, raised once per kernel and device (a driver call
 * that costs microseconds per launch otherwise). The limit is a property of
 * the kernel on a device, which CUDA keeps for the whole process, so the
 * record of having raised it is per process too; backends on several
 * threads launch at once, hence atomics (raising it twice is harmless). */
template <typename T, int HDM, int STAGES, bool F8> static anvil_status set_smem(int hd)
{
    static int done[16];
    int dev = 0;
    TRY(anvil_cuda_status(cudaGetDevice(&dev), "cudaGetDevice", __FILE__, __LINE__));
    if (dev >= 0 && dev < 16 && __atomic_load_n(&done[dev], __ATOMIC_ACQUIRE))
        return ANVIL_OK;
    (void)hd;
    const size_t smem = dm_smem_bytes(HDM, STAGES, F8); /* the most any head_dim of this kernel needs */
    if (smem > 48 * 1024)
        TRY(anvil_cuda_status(cudaFuncSetAttribute(anvil_attn_decode_mma_kernel<T, HDM, STAGES, F8>,
                                                   cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                              "attention decode (mma): shared memory limit", __FILE__, __LINE__));
    if (dev >= 0 && dev < 16)
        __atomic_store_n(&done[dev], 1, __ATOMIC_RELEASE);
    return ANVIL_OK;
}

template <typename T, int HDM, int STAGES, bool F8 = false>
static anvil_status launch(cudaStream_t stream, const anvil_cuda_attn *a, int n_hc, int n_splits,
                           int split_len, float *ws, int *cnt)
{
    TRY((set_smem<T, HDM, STAGES, F8>(a->head_dim)));
    const dim3 grid((unsigned)a->n_tokens, (unsigned)(a->n_kv_heads * n_hc), (unsigned)n_splits);
    anvil_launch(anvil_attn_decode_mma_kernel<T, HDM, STAGES, F8>, grid, DM_WARPS * 32,
                 dm_smem_bytes(a->head_dim, STAGES, F8), stream, a->pdl, *a, n_hc, n_splits, split_len, ws,
                 n_splits > 1 ? cnt : (int *)nullptr);
    TRY(ANVIL_CUDA_LAUNCHED("attention decode (mma) kernel"));
    if (n_splits > 1 && cnt == nullptr)
        TRY(anvil_cuda_launch_attn_combine(stream, a, n_splits, ws));
    return ANVIL_OK;
}

template <typename T, int HDM, int STAGES, bool F8 = false> static int occupancy(int hd)
{
    int n = 0;
    if (set_smem<T, HDM, STAGES, F8>(hd) != ANVIL_OK ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, anvil_attn_decode_mma_kernel<T, HDM, STAGES, F8>,
                                                      DM_WARPS * 32,
                                                      dm_smem_bytes(hd, STAGES, F8)) != cudaSuccess) {
        (void)cudaGetLastError();
        n = 1;
    }
    return n > 0 ? n : 1;
}

/* head_dim class x stages: the instantiations (an fp8 cache: two stages only,
 * to keep the compile time) */
template <typename T> static int occupancy_t(int hd, int stages, bool f8)
{
    if (f8)
        return hd <= 32 ? occupancy<T, 32, 2, true>(hd) : hd <= 64 ? occupancy<T, 64, 2, true>(hd)
                                                                 : occupancy<T, 128, 2, true>(hd);
    if (stages == 3)
        return hd <= 32   ? occupancy<T, 32, 3>(hd)
               : hd <= 64 ? occupancy<T, 64, 3>(hd)
                          : occupancy<T, 128, 3>(hd);
    return hd <= 32 ? occupancy<T, 32, 2>(hd) : hd <= 64 ? occupancy<T, 64, 2>(hd) : occupancy<T, 128, 2>(hd);
}

template <typename T>
static anvil_status launch_t(cudaStream_t stream, const anvil_cuda_attn *a, int n_hc, int n_splits,
                             int split_len, float *ws, int *cnt, int stages)
{
    const int hd = a->head_dim;
    if (a->cache_dt == ANVIL_DTYPE_F8_E4M3)
        return hd <= 32   ? launch<T, 32, 2, true>(stream, a, n_hc, n_splits, split_len, ws, cnt)
               : hd <= 64 ? launch<T, 64, 2, true>(stream, a, n_hc, n_splits, split_len, ws, cnt)
                          : launch<T, 128, 2, true>(stream, a, n_hc, n_splits, split_len, ws, cnt);
    if (stages == 3)
        return hd <= 32   ? launch<T, 32, 3>(stream, a, n_hc, n_splits, split_len, ws, cnt)
               : hd <= 64 ? launch<T, 64, 3>(stream, a, n_hc, n_splits, split_len, ws, cnt)
                          : launch<T, 128, 3>(stream, a, n_hc, n_splits, split_len, ws, cnt);
    return hd <= 32   ? launch<T, 32, 2>(stream, a, n_hc, n_splits, split_len, ws, cnt)
           : hd <= 64 ? launch<T, 64, 2>(stream, a, n_hc, n_splits, split_len, ws, cnt)
                      : launch<T, 128, 2>(stream, a, n_hc, n_splits, split_len, ws, cnt);
}

extern "C" int anvil_cuda_attn_decode_mma_ok(const anvil_cuda_attn *a)
{
    return (a->dt == ANVIL_DTYPE_BF16 || a->dt == ANVIL_DTYPE_F16) &&
           (a->cache_dt == a->dt || a->cache_dt == ANVIL_DTYPE_F8_E4M3) &&
           (a->head_dim == 32 || a->head_dim == 64 || a->head_dim == 128) &&
           (int64_t)a->n_blocks * a->block_size <= INT32_MAX;
}

extern "C" int anvil_cuda_attn_decode_mma_blocks_per_sm(const anvil_cuda_attn *a, int stages,
                                                        size_t smem_optin)
{
    const int hd = a->head_dim;
    const bool f8 = a->cache_dt == ANVIL_DTYPE_F8_E4M3;
    if (f8)
        stages = 2;
    if (!anvil_cuda_attn_decode_mma_ok(a) || dm_smem_bytes(hd, stages, f8) > smem_optin)
        return 1;
    if (a->dt == ANVIL_DTYPE_BF16)
        return occupancy_t<__nv_bfloat16>(hd, stages, f8);
    return occupancy_t<__half>(hd, stages, f8);
}

extern "C" anvil_status anvil_cuda_launch_attn_decode_mma(cudaStream_t stream, const anvil_cuda_attn *a,
                                                          int32_t n_splits, int32_t split_len, float *ws,
                                                          int *counters, int stages, size_t smem_optin)
{
    CHECK(anvil_cuda_attn_decode_mma_ok(a), ANVIL_ERR_UNSUPPORTED,
          "attention decode (mma): %s with head_dim %d (bf16/f16, head_dim 32, 64 or 128)",
          anvil_dtype_name(a->dt), a->head_dim);
    CHECK(stages == 2 || stages == 3, ANVIL_ERR_INVALID_ARG, "attention decode (mma): %d stages", stages);
    if (a->n_tokens == 0)
        return ANVIL_OK;
    const bool f8 = a->cache_dt == ANVIL_DTYPE_F8_E4M3;
    if (f8)
        stages = 2; /* the fp8 kernel's only */
    CHECK(n_splits >= 1 && n_splits <= 65535 && split_len >= 1 && (n_splits == 1 || ws != NULL),
          ANVIL_ERR_INVALID_ARG, "attention decode: %d splits of %d", n_splits, split_len);
    CHECK(dm_smem_bytes(a->head_dim, stages, f8) <= smem_optin, ANVIL_ERR_UNSUPPORTED,
          "attention decode (mma): head_dim %d needs %zu bytes of shared memory", a->head_dim,
          dm_smem_bytes(a->head_dim, stages, f8));
    const int group = a->n_heads / a->n_kv_heads;
    const int n_hc = (group + DM_ROWS - 1) / DM_ROWS;
    CHECK((int64_t)a->n_kv_heads * n_hc <= 65535, ANVIL_ERR_UNSUPPORTED, "attention: %d KV heads x %d",
          a->n_kv_heads, n_hc);
    if (a->dt == ANVIL_DTYPE_BF16)
        return launch_t<__nv_bfloat16>(stream, a, n_hc, n_splits, split_len, ws, counters, stages);
    return launch_t<__half>(stream, a, n_hc, n_splits, split_len, ws, counters, stages);
}

extern "C" int64_t anvil_cuda_attn_decode_mma_counters(const anvil_cuda_attn *a)
{
    const int group = a->n_heads / a->n_kv_heads;
    return (int64_t)a->n_tokens * a->n_kv_heads * ((group + DM_ROWS - 1) / DM_ROWS);
}
