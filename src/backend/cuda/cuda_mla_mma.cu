/*
 * Multi-head latent attention in the absorbed form on tensor cores
 * (cuda_mla.h has the plan; cuda_mla_map.h the splits, copies and
 * fragment maps, which a CPU test emulates). Three launches after the
 * cache write:
 *
 *   1. anvil_mla_qabs_kernel: q_abs[t, h] = [W_UK_h^T q_nope, rope(q_pe)]
 *      (kv_rank + rope_dim values, rounded to the act dtype: the A
 *      operand). A block per (64 latent columns, head, 8 tokens): 4 groups
 *      of 64 threads each stream a quarter of the rows of W_UK_h (a warp
 *      32 consecutive columns of a row) once for the 8 tokens, whose
 *      q_nope sit in shared memory; the groups summed in shared memory.
 *   2. anvil_mla_attn_mma_kernel: a block of 4 warps per (token, 16 heads,
 *      split of the context): MQA of the 16 heads' q_abs rows over the
 *      sequence's cached rows [c, k_pe], one "KV head" of kv_rank + rope
 *      for the scores and the first kv_rank of the same rows for the
 *      values. Per tile of 64 rows gathered through the block table with
 *      16-byte cp.async (two stages: the next tile in flight), warp w
 *      scores the 16 keys [16 w, + 16) over the whole width (A from Q in
 *      shared memory, B from the tile, both by ldmatrix) into a 16 x 64
 *      score tile in shared memory; then every warp reads the whole tile
 *      (each computes the same row maxima and P, so no warp waits for
 *      another's softmax) and accumulates O[:, its quarter of kv_rank] +=
 *      P V on tensor cores. Each cached row is read from memory once for
 *      the 16 heads. The block writes its split's (m, l, acc) partials
 *      (m in log2 units, acc not divided by l), f32.
 *   3. anvil_mla_out_kernel: a block per (8 tokens, head, chunk of the
 *      output columns) merges the splits of each token into o_lat in
 *      shared memory (f32), then out[t, h] = W_UV_h o_lat, a warp per
 *      output column with the lanes along the rank.
 *
 * P is rounded to the act dtype for P V (as the attention kernels on
 * tensor cores); q_abs is rounded once. Sums in f32.
 */
#include <math.h>

#include "backend/cuda/cuda_mla.h"
#include "backend/cuda/cuda_mla_map.h"
#include "backend/cuda/cuda_mma.cuh"

#define QT        8 /* tokens a block of the q_abs and output kernels */
#define FULL_MASK 0xffffffffu

/* ---------------------------------------------------------------- 1. q_abs */

#define QA_COLS   64 /* latent columns a block of the q_abs kernel */
#define QA_GROUPS 4  /* its thread groups along nope (then summed in shared memory) */

template <typename T, typename W>
__global__ void __launch_bounds__(QA_COLS * QA_GROUPS) anvil_mla_qabs_kernel(anvil_cuda_mla m, T *qabs)
{
    __shared__ float qs[QT][ANVIL_CUDA_MLA_MMA_MAX_NOPE];
    __shared__ float red[QA_GROUPS][QT][QA_COLS];
    const int R = m.rank, dn = m.nope, dr = m.rope, dv = m.v, w = R + dr;
    const int h = blockIdx.y, t0 = blockIdx.z * QT;
    const int nt = min(QT, m.n_tokens - t0);
    const int64_t qw = (int64_t)m.n_heads * (dn + dr);
    const T *q = (const T *)m.q;
    for (int i = threadIdx.x; i < QT * dn; i += blockDim.x) {
        const int tt = i / dn, d = i - tt * dn;
        qs[tt][d] = tt < nt ? anvil_to_f32(q[(int64_t)(t0 + tt) * qw + (int64_t)h * (dn + dr) + d]) : 0.0f;
    }
    __syncthreads();
    /* thread (column c, group g) sums rows g, g + 4, ... of W_UK_h's column
     * c: a warp reads 32 consecutive columns of a row; 8 rows' loads are
     * issued before their products (memory latency, not bandwidth, is what
     * a decode step's few blocks wait for) */
    const int c = threadIdx.x % QA_COLS, g = threadIdx.x / QA_COLS, r = blockIdx.x * QA_COLS + c;
    float acc[QT];
#pragma unroll
    for (int tt = 0; tt < QT; tt++)
        acc[tt] = 0.0f;
    if (r < R) {
        const W *wk = (const W *)m.kv_b + (int64_t)h * (dn + dv) * R + r;
        for (int d0 = g; d0 < dn; d0 += 8 * QA_GROUPS) {
            float x[8];
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const int d = d0 + j * QA_GROUPS;
                x[j] = d < dn ? anvil_to_f32(wk[(int64_t)d * R]) : 0.0f;
            }
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const int d = d0 + j * QA_GROUPS;
                if (d < dn)
#pragma unroll
                    for (int tt = 0; tt < QT; tt++)
                        acc[tt] += qs[tt][d] * x[j];
            }
        }
    }
#pragma unroll
    for (int tt = 0; tt < QT; tt++)
        red[g][tt][c] = acc[tt];
    __syncthreads();
    for (int i = threadIdx.x; i < nt * QA_COLS; i += blockDim.x) {
        const int tt = i / QA_COLS, cc = i - tt * QA_COLS, rr = blockIdx.x * QA_COLS + cc;
        if (rr < R) {
            float sum = 0.0f;
#pragma unroll
            for (int gg = 0; gg < QA_GROUPS; gg++)
                sum += red[gg][tt][cc];
            qabs[((int64_t)(t0 + tt) * m.n_heads + h) * w + rr] = anvil_from_f32<T>(sum);
        }
    }
    if (blockIdx.x == 0) { /* the rope part, in interleaved pairs as the cache's keys */
        const int half = dr / 2;
        for (int i = threadIdx.x; i < nt * half; i += blockDim.x) {
            const int tt = i / half, j = i - tt * half, t = t0 + tt;
            const float angle = (float)m.positions[t] * m.inv_freq[j];
            const float cs = cosf(angle) * m.rope_scale, sn = sinf(angle) * m.rope_scale;
            const T *x = q + (int64_t)t * qw + (int64_t)h * (dn + dr) + dn;
            const float x0 = anvil_to_f32(x[2 * j]), x1 = anvil_to_f32(x[2 * j + 1]);
            T *o = qabs + ((int64_t)t * m.n_heads + h) * w + R;
            o[2 * j] = anvil_from_f32<T>(x0 * cs - x1 * sn);
            o[2 * j + 1] = anvil_from_f32<T>(x0 * sn + x1 * cs);
        }
    }
}

/* ---------------------------------------------------------------- 2. attention */

/* Q [16][ks], the score tile [16][MLA_SS] f32, two stages of [MLA_BN][ks]
 * (ks = width + 8: rows 16 bytes apart in the banks, so the 8 row
 * addresses of an ldmatrix hit distinct banks) */
static size_t mla_mma_smem(int w)
{
    const size_t ks = (size_t)w + 8;
    return MLA_ROWS * ks * 2 + (size_t)MLA_ROWS * MLA_SS * 4 + 2 * (size_t)MLA_BN * ks * 2;
}

template <typename T, int RM>
__global__ void __launch_bounds__(MLA_THREADS, 1)
    anvil_mla_attn_mma_kernel(anvil_cuda_mla m, const T *qabs, int n_splits, int split_len, float *ws_ml,
                              float *ws_acc)
{
    constexpr int DW = RM / MLA_WARPS; /* latent dims a warp accumulates */
    constexpr int NTW = DW / 8;        /* its 8-wide output tiles */
    extern __shared__ uint4 mla_smem4[];
    const int w = RM + m.rope, ks = w + 8, KC = w / 16, P = w / 8;
    uint16_t *const qsm = reinterpret_cast<uint16_t *>(mla_smem4);
    float *const ssm = reinterpret_cast<float *>(qsm + MLA_ROWS * ks);
    uint16_t *const tiles = reinterpret_cast<uint16_t *>(ssm + MLA_ROWS * MLA_SS);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, tq = lane & 3;
    const int t = blockIdx.x, hc = blockIdx.y, sp = blockIdx.z;
    const int s = m.seq_of_token[t], p = m.positions[t];
    const bool seq_ok = s >= 0 && s < m.n_seqs, ok = seq_ok && p >= 0;
    if (!ok && threadIdx.x == 0 && hc == 0 && sp == 0)
        anvil_flag(m.err, seq_ok ? ANVIL_CUDA_BAD_BLOCK : ANVIL_CUDA_BAD_SEQ);
    int32_t kbeg, kend;
    mla_split_keys(sp, n_splits, split_len, ok ? p : -1, &kbeg, &kend);
    const int32_t *bt = m.block_tables + (ok ? (int64_t)s * m.max_blocks_per_seq : 0);

    /* Q: the block's 16 heads of token t, rows past n_heads zero */
    for (int i = threadIdx.x; i < MLA_ROWS * P; i += MLA_THREADS) {
        const int r = i / P, pc = i - r * P, h = hc * MLA_ROWS + r;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (h < m.n_heads)
            v = *reinterpret_cast<const uint4 *>(qabs + ((int64_t)t * m.n_heads + h) * w + pc * 8);
        *reinterpret_cast<uint4 *>(qsm + r * ks + pc * 8) = v;
    }

    /* tile kt's cached rows into stage st (mla_copy_row / _piece); rows
     * past kend and rows of a bad block id zero-filled */
    const bool bs_pow2 = (m.block_size & (m.block_size - 1)) == 0;
    const int bs_shift = __ffs(m.block_size) - 1;
    const int n_copies = (MLA_BN * P + MLA_THREADS - 1) / MLA_THREADS;
    const T *cache = (const T *)m.cache;
    auto issue = [&](int kt, int st) {
        uint16_t *dst = tiles + st * MLA_BN * ks;
        int32_t row = mla_copy_row(threadIdx.x, 0, w), pc = mla_copy_piece(threadIdx.x, 0, w);
        for (int i = 0; i < n_copies; i++, mla_copy_next(&row, &pc, P)) {
            if (row >= MLA_BN)
                break;
            const int kj = kt + row;
            int64_t src = -1;
            if (kj < kend) {
                const int bi = bs_pow2 ? kj >> bs_shift : kj / m.block_size;
                const int blk = bi < m.max_blocks_per_seq ? bt[bi] : -1;
                if (blk >= 0 && blk < m.n_blocks)
                    src = ((int64_t)blk * m.block_size + (kj - bi * m.block_size)) * w + pc * 8;
                else if (pc == 0)
                    anvil_flag(m.err, ANVIL_CUDA_BAD_BLOCK);
            }
            anvil_cp_async16(dst + row * ks + pc * 8, cache + (src >= 0 ? src : 0), src >= 0);
        }
        anvil_cp_async_commit();
    };

    const float sl2 = m.scale * 1.4426950408889634f; /* scores in log2 units: one exp2 each */
    const int n_tiles = kend > kbeg ? (kend - kbeg + MLA_BN - 1) / MLA_BN : 0;
    if (n_tiles > 0)
        issue(kbeg, 0);
    else
        anvil_cp_async_commit();
    float o[NTW][4];
#pragma unroll
    for (int i = 0; i < NTW; i++)
        o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;

    for (int it = 0; it < n_tiles; it++) {
        const int kt = kbeg + it * MLA_BN;
        if (it + 1 < n_tiles)
            issue(kt + MLA_BN, (it + 1) & 1);
        else
            anvil_cp_async_commit(); /* an empty group: the count stays uniform */
        anvil_cp_async_wait<1>();
        __syncthreads(); /* tile it (and, the first time, Q) in shared memory for every thread */
        const uint16_t *ts = tiles + (it & 1) * MLA_BN * ks;

        /* S = Q K^T for this warp's 16 keys over the whole width */
        /* two chains of accumulators for the even and odd chunks: 4
         * independent mma in flight instead of 2 (the loop is latency-bound
         * with one block of 4 warps an SM) */
        float sc[2][4], sd[2][4];
#pragma unroll
        for (int nt = 0; nt < 2; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                sc[nt][e] = sd[nt][e] = 0.0f;
        int kc = 0;
        for (; kc + 1 < KC; kc += 2) {
            uint32_t qa[4], kb[4], qa2[4], kb2[4];
            anvil_ldmatrix_x4(qa, qsm + mla_ldm_q(lane, kc, ks));
            anvil_ldmatrix_x4(kb, ts + mla_ldm_k(lane, warp, kc, ks));
            anvil_ldmatrix_x4(qa2, qsm + mla_ldm_q(lane, kc + 1, ks));
            anvil_ldmatrix_x4(kb2, ts + mla_ldm_k(lane, warp, kc + 1, ks));
            anvil_mma16816<T>(sc[0], qa, kb[0], kb[1]);
            anvil_mma16816<T>(sc[1], qa, kb[2], kb[3]);
            anvil_mma16816<T>(sd[0], qa2, kb2[0], kb2[1]);
            anvil_mma16816<T>(sd[1], qa2, kb2[2], kb2[3]);
        }
        if (kc < KC) { /* an odd chunk count (rank + rope = 16 x odd) */
            uint32_t qa[4], kb[4];
            anvil_ldmatrix_x4(qa, qsm + mla_ldm_q(lane, kc, ks));
            anvil_ldmatrix_x4(kb, ts + mla_ldm_k(lane, warp, kc, ks));
            anvil_mma16816<T>(sc[0], qa, kb[0], kb[1]);
            anvil_mma16816<T>(sc[1], qa, kb[2], kb[3]);
        }
#pragma unroll
        for (int nt = 0; nt < 2; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                sc[nt][e] += sd[nt][e];
#pragma unroll
        for (int nt = 0; nt < 2; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int col = warp * 16 + nt * 8 + mla_acc_col(lane, e);
                ssm[mla_acc_row(lane, e) * MLA_SS + col] = kt + col < kend ? sc[nt][e] * sl2 : -INFINITY;
            }
        __syncthreads(); /* the whole score tile */

        /* every warp: the tile's row maxima over the quad, the online
         * softmax, P as A fragments of the 4 chunks of 16 keys */
        float sv[4][4][2];
        float mt0 = -INFINITY, mt1 = -INFINITY;
#pragma unroll
        for (int kc = 0; kc < 4; kc++)
#pragma unroll
            for (int r = 0; r < 4; r++)
#pragma unroll
                for (int hf = 0; hf < 2; hf++) {
                    const float x = ssm[mla_a_row(lane, r) * MLA_SS + kc * 16 + mla_a_k(lane, r, hf)];
                    sv[kc][r][hf] = x;
                    if (r & 1)
                        mt1 = fmaxf(mt1, x);
                    else
                        mt0 = fmaxf(mt0, x);
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
        if (__any_sync(FULL_MASK, c0 != 1.0f || c1 != 1.0f)) {
#pragma unroll
            for (int i = 0; i < NTW; i++) {
                o[i][0] *= c0;
                o[i][1] *= c0;
                o[i][2] *= c1;
                o[i][3] *= c1;
            }
        }
        const float ms0 = mn0 == -INFINITY ? 0.0f : mn0, ms1 = mn1 == -INFINITY ? 0.0f : mn1;
        uint32_t pf[4][4];
#pragma unroll
        for (int kc = 0; kc < 4; kc++)
#pragma unroll
            for (int r = 0; r < 4; r++) {
                const float ms = r & 1 ? ms1 : ms0;
                const float e0 = exp2f(sv[kc][r][0] - ms), e1 = exp2f(sv[kc][r][1] - ms);
                if (r & 1)
                    l1 += e0 + e1;
                else
                    l0 += e0 + e1;
                pf[kc][r] = anvil_pack2<T>(e0, e1);
            }

        /* O[:, this warp's latent dims] += P V, V the tile's first RM columns */
#pragma unroll
        for (int kc = 0; kc < 4; kc++) {
#pragma unroll
            for (int nt = 0; nt < NTW; nt += 2) {
                uint32_t vb[4];
                anvil_ldmatrix_x4_trans(vb, ts + mla_ldm_v(lane, kc, warp * DW + nt * 8, ks));
                anvil_mma16816<T>(o[nt], pf[kc], vb[0], vb[1]);
                anvil_mma16816<T>(o[nt + 1], pf[kc], vb[2], vb[3]);
            }
        }
        __syncthreads(); /* the stage and the score tile are free */
    }
    anvil_cp_async_wait<0>();

    /* the split's partials: rows gq and gq + 8 of this lane */
    l0 += __shfl_xor_sync(FULL_MASK, l0, 1);
    l0 += __shfl_xor_sync(FULL_MASK, l0, 2);
    l1 += __shfl_xor_sync(FULL_MASK, l1, 1);
    l1 += __shfl_xor_sync(FULL_MASK, l1, 2);
    const int h0 = hc * MLA_ROWS + mla_acc_row(lane, 0), h1 = hc * MLA_ROWS + mla_acc_row(lane, 2);
    const int64_t i0 = ((int64_t)t * m.n_heads + h0) * n_splits + sp;
    const int64_t i1 = ((int64_t)t * m.n_heads + h1) * n_splits + sp;
#pragma unroll
    for (int nt = 0; nt < NTW; nt++) {
        const int d = warp * DW + nt * 8 + mla_acc_col(lane, 0);
        if (h0 < m.n_heads)
            *reinterpret_cast<float2 *>(ws_acc + i0 * RM + d) = make_float2(o[nt][0], o[nt][1]);
        if (h1 < m.n_heads)
            *reinterpret_cast<float2 *>(ws_acc + i1 * RM + d) = make_float2(o[nt][2], o[nt][3]);
    }
    if (warp == 0 && tq == 0) {
        if (h0 < m.n_heads)
            *reinterpret_cast<float2 *>(ws_ml + 2 * i0) = make_float2(m0, l0);
        if (h1 < m.n_heads)
            *reinterpret_cast<float2 *>(ws_ml + 2 * i1) = make_float2(m1, l1);
    }
}

/* ---------------------------------------------------------------- 3. merge and W_UV */

/* A block per (8 tokens, head, chunk of the output columns: several for
 * few tokens, so that a decode step has blocks for every SM) */
template <typename T, typename W>
__global__ void __launch_bounds__(128)
    anvil_mla_out_kernel(anvil_cuda_mla m, int n_splits, const float *ws_ml, const float *ws_acc)
{
    extern __shared__ float osm[]; /* [QT][rank] the merged latents, then [QT][n_splits] factors */
    const int R = m.rank, H = m.n_heads, dn = m.nope, dv = m.v;
    float *fac = osm + QT * R;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int t0 = blockIdx.x * QT, h = blockIdx.y, nt = min(QT, m.n_tokens - t0);
    /* a split's factor exp2(m_s - M) / L (0 for an empty split), a warp a token */
    for (int tt = warp; tt < nt; tt += 4) {
        const float *ml = ws_ml + ((int64_t)(t0 + tt) * H + h) * n_splits * 2;
        float mx = -INFINITY;
        for (int s = lane; s < n_splits; s += 32)
            mx = fmaxf(mx, ml[2 * s]);
        mx = anvil_warp_max(mx);
        float L = 0.0f;
        for (int s = lane; s < n_splits; s += 32)
            L += ml[2 * s] == -INFINITY ? 0.0f : ml[2 * s + 1] * exp2f(ml[2 * s] - mx);
        L = anvil_warp_sum(L);
        const float inv = L > 0.0f ? 1.0f / L : 0.0f;
        for (int s = lane; s < n_splits; s += 32)
            fac[tt * n_splits + s] = ml[2 * s] == -INFINITY ? 0.0f : exp2f(ml[2 * s] - mx) * inv;
    }
    __syncthreads();
    /* o_lat: the splits in order, 4 loads in flight a thread */
    for (int i = threadIdx.x; i < QT * R; i += blockDim.x) {
        const int tt = i / R, r = i - tt * R;
        float acc = 0.0f;
        if (tt < nt) {
            const float *pa = ws_acc + ((int64_t)(t0 + tt) * H + h) * n_splits * R + r;
            const float *f = fac + tt * n_splits;
            int s = 0;
            for (; s + 4 <= n_splits; s += 4) {
                const float a0 = pa[(int64_t)s * R], a1 = pa[(int64_t)(s + 1) * R];
                const float a2 = pa[(int64_t)(s + 2) * R], a3 = pa[(int64_t)(s + 3) * R];
                acc += f[s] * a0;
                acc += f[s + 1] * a1;
                acc += f[s + 2] * a2;
                acc += f[s + 3] * a3;
            }
            for (; s < n_splits; s++)
                acc += f[s] * pa[(int64_t)s * R];
        }
        osm[i] = acc;
    }
    __syncthreads();
    /* out = W_UV_h o_lat over this block's columns, a warp a column */
    const int per = (dv + gridDim.z - 1) / gridDim.z, i0 = blockIdx.z * per, i1 = min(dv, i0 + per);
    const W *wv = (const W *)m.kv_b + ((int64_t)h * (dn + dv) + dn) * R;
    T *out = (T *)m.out + (int64_t)h * dv;
    for (int i = i0 + warp; i < i1; i += 4) {
        float acc[QT];
#pragma unroll
        for (int tt = 0; tt < QT; tt++)
            acc[tt] = 0.0f;
#pragma unroll 4
        for (int r = lane; r < R; r += 32) {
            const float x = anvil_to_f32(wv[(int64_t)i * R + r]);
#pragma unroll
            for (int tt = 0; tt < QT; tt++)
                acc[tt] += x * osm[tt * R + r];
        }
#pragma unroll
        for (int tt = 0; tt < QT; tt++) {
            const float v = anvil_warp_sum(acc[tt]);
            if (lane == tt && tt < nt)
                out[(int64_t)(t0 + tt) * H * dv + i] = anvil_from_f32<T>(v);
        }
    }
}

/* ---------------------------------------------------------------- launch */

/* The shared-memory limit of an attention instantiation, raised once per
 * process and device to the most any rope width of it needs (as
 * cuda_attn_decode_mma.cu; atomics: backends on several threads). */
template <typename T, int RM> static anvil_status set_smem(size_t smem_optin)
{
    static int done[16];
    int dev = 0;
    TRY(anvil_cuda_status(cudaGetDevice(&dev), "cudaGetDevice", __FILE__, __LINE__));
    if (dev >= 0 && dev < 16 && __atomic_load_n(&done[dev], __ATOMIC_ACQUIRE))
        return ANVIL_OK;
    const size_t most = mla_mma_smem(RM + ANVIL_CUDA_MLA_MAX_ROPE);
    const size_t smem = most < smem_optin ? most : smem_optin;
    TRY(anvil_cuda_status(cudaFuncSetAttribute(anvil_mla_attn_mma_kernel<T, RM>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                          "mla (mma): shared memory limit", __FILE__, __LINE__));
    if (dev >= 0 && dev < 16)
        __atomic_store_n(&done[dev], 1, __ATOMIC_RELEASE);
    return ANVIL_OK;
}

template <typename T, int RM>
static anvil_status launch_attn(cudaStream_t stream, const anvil_cuda_mla *m, const T *qabs, int n_splits,
                                int split_len, float *ws_ml, float *ws_acc, size_t smem_optin)
{
    TRY((set_smem<T, RM>(smem_optin)));
    const dim3 grid((unsigned)m->n_tokens, (unsigned)((m->n_heads + MLA_ROWS - 1) / MLA_ROWS), (unsigned)n_splits);
    anvil_mla_attn_mma_kernel<T, RM><<<grid, MLA_THREADS, mla_mma_smem(m->rank + m->rope), stream>>>(
        *m, qabs, n_splits, split_len, ws_ml, ws_acc);
    return ANVIL_CUDA_LAUNCHED("mla attention (mma) kernel");
}

template <typename T, typename W>
static anvil_status launch_gemvs_w(cudaStream_t stream, const anvil_cuda_mla *m, T *qabs, int n_splits,
                                   const float *ws_ml, const float *ws_acc, int which)
{
    const unsigned tiles = (unsigned)((m->n_tokens + QT - 1) / QT);
    if (which == 0) {
        const dim3 grid((unsigned)((m->rank + QA_COLS - 1) / QA_COLS), (unsigned)m->n_heads, tiles);
        anvil_mla_qabs_kernel<T, W><<<grid, QA_COLS * QA_GROUPS, 0, stream>>>(*m, qabs);
        return ANVIL_CUDA_LAUNCHED("mla q_abs kernel");
    }
    const size_t smem = ((size_t)QT * m->rank + (size_t)QT * n_splits) * sizeof(float);
    /* columns in 4 chunks while the blocks would not fill an H100 (132 SMs) */
    const unsigned chunks = (int64_t)tiles * m->n_heads < 132 ? 4u : 1u;
    anvil_mla_out_kernel<T, W><<<dim3(tiles, (unsigned)m->n_heads, chunks), 128, smem, stream>>>(*m, n_splits, ws_ml,
                                                                                                  ws_acc);
    return ANVIL_CUDA_LAUNCHED("mla output kernel");
}

template <typename T>
static anvil_status launch_gemvs(cudaStream_t stream, const anvil_cuda_mla *m, T *qabs, int n_splits,
                                 const float *ws_ml, const float *ws_acc, int which)
{
    if (m->kv_b_dt == ANVIL_DTYPE_F32)
        return launch_gemvs_w<T, float>(stream, m, qabs, n_splits, ws_ml, ws_acc, which);
    if (m->kv_b_dt == ANVIL_DTYPE_BF16)
        return launch_gemvs_w<T, __nv_bfloat16>(stream, m, qabs, n_splits, ws_ml, ws_acc, which);
    return launch_gemvs_w<T, __half>(stream, m, qabs, n_splits, ws_ml, ws_acc, which);
}

template <typename T>
static anvil_status launch_all(cudaStream_t stream, const anvil_cuda_mla *m, int n_splits, int split_len, void *ws,
                               size_t smem_optin)
{
    anvil_cuda_mla_ws L;
    anvil_cuda_mla_mma_ws(m, n_splits, &L);
    T *qabs = (T *)ws;
    float *ws_ml = (float *)((char *)ws + L.ml_offset), *ws_acc = (float *)((char *)ws + L.acc_offset);
    TRY(launch_gemvs<T>(stream, m, qabs, n_splits, ws_ml, ws_acc, 0));
    if (m->rank == 512)
        TRY((launch_attn<T, 512>(stream, m, qabs, n_splits, split_len, ws_ml, ws_acc, smem_optin)));
    else if (m->rank == 256)
        TRY((launch_attn<T, 256>(stream, m, qabs, n_splits, split_len, ws_ml, ws_acc, smem_optin)));
    else
        TRY((launch_attn<T, 128>(stream, m, qabs, n_splits, split_len, ws_ml, ws_acc, smem_optin)));
    return launch_gemvs<T>(stream, m, qabs, n_splits, ws_ml, ws_acc, 1);
}

extern "C" void anvil_cuda_mla_mma_ws(const anvil_cuda_mla *m, int32_t n_splits, anvil_cuda_mla_ws *out)
{
    const size_t T = (size_t)(m->n_tokens > 0 ? m->n_tokens : 0), H = (size_t)m->n_heads;
    const size_t qabs = T * H * (size_t)(m->rank + m->rope) * 2;
    out->ml_offset = (qabs + 255) / 256 * 256;
    out->acc_offset = out->ml_offset + (T * H * (size_t)n_splits * 2 * sizeof(float) + 255) / 256 * 256;
    out->bytes = out->acc_offset + T * H * (size_t)n_splits * (size_t)m->rank * sizeof(float);
}

extern "C" size_t anvil_cuda_mla_mma_smem(const anvil_cuda_mla *m) { return mla_mma_smem(m->rank + m->rope); }

extern "C" int anvil_cuda_mla_mma_ok(const anvil_cuda_mla *m, size_t smem_optin)
{
    return (m->dt == ANVIL_DTYPE_BF16 || m->dt == ANVIL_DTYPE_F16) &&
           (m->rank == 128 || m->rank == 256 || m->rank == 512) && m->rope % 16 == 0 &&
           m->rope <= ANVIL_CUDA_MLA_MAX_ROPE && m->nope <= ANVIL_CUDA_MLA_MMA_MAX_NOPE &&
           mla_mma_smem(m->rank + m->rope) <= smem_optin && (int64_t)m->n_blocks * m->block_size <= INT32_MAX;
}

extern "C" anvil_status anvil_cuda_launch_mla_mma(cudaStream_t stream, const anvil_cuda_mla *m, int32_t n_splits,
                                                  int32_t split_len, void *ws, size_t smem_optin)
{
    CHECK(anvil_cuda_mla_mma_ok(m, smem_optin), ANVIL_ERR_UNSUPPORTED,
          "mla (mma): %s, kv_rank %d, rope_dim %d, nope_dim %d (bf16/f16, kv_rank 128/256/512, rope_dim a "
          "multiple of 16 up to %d, nope_dim up to %d)",
          anvil_dtype_name(m->dt), m->rank, m->rope, m->nope, ANVIL_CUDA_MLA_MAX_ROPE, ANVIL_CUDA_MLA_MMA_MAX_NOPE);
    CHECK(n_splits >= 1 && n_splits <= MLA_MAX_SPLITS && split_len >= 1 && ws != NULL && anvil_aligned16(ws),
          ANVIL_ERR_INVALID_ARG, "mla (mma): %d splits of %d", n_splits, split_len);
    if (m->n_tokens == 0)
        return ANVIL_OK;
    if (m->dt == ANVIL_DTYPE_BF16)
        return launch_all<__nv_bfloat16>(stream, m, n_splits, split_len, ws, smem_optin);
    return launch_all<__half>(stream, m, n_splits, split_len, ws, smem_optin);
}
