/*
 * Multi-head latent attention in the expanded form, for prefill chunks
 * (cuda_mla.h has the plan): the rows [t0, n_tokens) of a step, those of
 * its sequences [s0, s0 + n_seqs) (the decode rows come first in a step
 * and take the absorbed form). Around one GEMM that cuda_mla.c runs
 * through the matmul op (cuBLASLt):
 *
 *   1. anvil_mla_xp_lens_kernel: each sequence's cached length (its last
 *      row's position + 1, an atomic max over its rows);
 *   2. anvil_mla_xp_gather_kernel: each sequence's latent rows c_j and
 *      rotated rope keys from the paged cache into x [n_seqs L, rank] and
 *      kpe [n_seqs L, rope] (L rows a sequence: the step's max_context;
 *      rows at or past its length zero, so that no stale cache value, NaN
 *      or not, reaches P V);
 *      anvil_mla_xp_q_kernel: q2 [rows, heads, nope + rope] = [q_nope,
 *      rope(q_pe)], the rope as the cache's keys (interleaved pairs);
 *   (cuda_mla.c: kv = x kv_b^T, [n_seqs L, heads (nope + v)]: K_nope and V
 *      of every head for every cached row, once for all the chunk's rows)
 *   3. anvil_mla_xp_attn_kernel: causal flash attention on tensor cores
 *      with qk dim nope + rope and v dim v (unequal: DeepSeek-V2's 192 and
 *      128), K_h[j] = [kv[j, h, :nope], kpe[j]] and V_h[j] = kv[j, h,
 *      nope:], both read straight from those buffers (no packed copy). A
 *      block of 4 warps per (64 consecutive rows, head), 16 rows a warp
 *      (Q fragments in registers for the whole kernel); per tile of 64
 *      keys, the K and V rows by 16-byte cp.async in two stages, S = Q K^T
 *      (ldmatrix), the mask (the row's sequence and causal), the online
 *      softmax, O += P V with P's accumulators reused as the A operand and
 *      V by transposed ldmatrix (as cuda_attn_prefill_mma.cu; P rounded to
 *      the act dtype). Rows of a block from several sequences (a mixed
 *      step) take each sequence's keys in turn, the others masked.
 */
#include <math.h>

#include "backend/cuda/cuda_mla.h"
#include "backend/cuda/cuda_mla_map.h"
#include "backend/cuda/cuda_mma.cuh"

#define XP_ROWS   64 /* query rows a block: 16 a warp */
#define FULL_MASK 0xffffffffu

/* ---------------------------------------------------------------- 1, 2. preparation */

__global__ void anvil_mla_xp_lens_kernel(anvil_cuda_mla m, anvil_cuda_mla_xp x)
{
    for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < m.n_tokens - x.t0; r += gridDim.x * blockDim.x) {
        const int s = m.seq_of_token[x.t0 + r], p = m.positions[x.t0 + r];
        if (s < x.s0 || s >= x.s0 + x.n_seqs || p < 0) {
            anvil_flag(m.err, s < 0 || s >= m.n_seqs ? ANVIL_CUDA_BAD_SEQ : ANVIL_CUDA_BAD_BLOCK);
            continue;
        }
        atomicMax(x.lens + (s - x.s0), min(p + 1, x.L));
    }
}

/* a warp a row: the rank + rope values in 16-byte pieces */
template <typename T> __global__ void anvil_mla_xp_gather_kernel(anvil_cuda_mla m, anvil_cuda_mla_xp x)
{
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int R = m.rank, dr = m.rope, w = R + dr, P = w / 8;
    const int64_t n_rows = (int64_t)x.n_seqs * x.L;
    for (int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + warp; row < n_rows;
         row += (int64_t)gridDim.x * (blockDim.x / 32)) {
        const int sl = (int)(row / x.L), j = (int)(row - (int64_t)sl * x.L), s = x.s0 + sl;
        int64_t src = -1;
        if (j < x.lens[sl]) {
            const int bi = j / m.block_size;
            const int blk = bi < m.max_blocks_per_seq ? m.block_tables[(int64_t)s * m.max_blocks_per_seq + bi] : -1;
            if (blk >= 0 && blk < m.n_blocks)
                src = ((int64_t)blk * m.block_size + (j - bi * m.block_size)) * w;
            else if (lane == 0)
                anvil_flag(m.err, ANVIL_CUDA_BAD_BLOCK);
        }
        for (int pc = lane; pc < P; pc += 32) {
            uint4 v = make_uint4(0u, 0u, 0u, 0u);
            if (src >= 0)
                v = *reinterpret_cast<const uint4 *>((const T *)m.cache + src + pc * 8);
            T *dst = pc * 8 < R ? (T *)x.x + row * R + pc * 8 : (T *)x.kpe + row * dr + (pc * 8 - R);
            *reinterpret_cast<uint4 *>(dst) = v;
        }
    }
}

/* a block a row: q2[r, h] = [q_nope, rope(q_pe)] for every head */
template <typename T> __global__ void anvil_mla_xp_q_kernel(anvil_cuda_mla m, anvil_cuda_mla_xp x)
{
    const int dn = m.nope, dr = m.rope, dq = dn + dr, H = m.n_heads;
    for (int r = blockIdx.x; r < m.n_tokens - x.t0; r += gridDim.x) {
        const int t = x.t0 + r, p = m.positions[t];
        const T *q = (const T *)m.q + (int64_t)t * H * dq;
        T *q2 = (T *)x.q2 + (int64_t)r * H * dq;
        for (int i = threadIdx.x; i < H * dq; i += blockDim.x) {
            const int h = i / dq, d = i - h * dq;
            if (d < dn) {
                q2[i] = q[i];
            } else if (((d - dn) & 1) == 0) { /* the pair (d, d + 1) */
                const int k = (d - dn) / 2;
                const float angle = (float)p * m.inv_freq[k];
                const float c = cosf(angle) * m.rope_scale, s = sinf(angle) * m.rope_scale;
                const float x0 = anvil_to_f32(q[(int64_t)h * dq + d]), x1 = anvil_to_f32(q[(int64_t)h * dq + d + 1]);
                q2[(int64_t)h * dq + d] = anvil_from_f32<T>(x0 * c - x1 * s);
                q2[(int64_t)h * dq + d + 1] = anvil_from_f32<T>(x0 * s + x1 * c);
            }
        }
    }
}

/* ---------------------------------------------------------------- 3. attention */

template <int DQK, int DV> static size_t xp_smem(void)
{
    return 2 * (size_t)MLA_BN * ((DQK + 8) + (DV + 8)) * 2; /* two stages of K and V tiles */
}

template <typename T, int DQK, int DV>
__global__ void __launch_bounds__(MLA_THREADS) anvil_mla_xp_attn_kernel(anvil_cuda_mla m, anvil_cuda_mla_xp x)
{
    constexpr int KCQ = DQK / 16, NTV = DV / 8, KS = DQK + 8, VS = DV + 8;
    constexpr int PK = DQK / 8, PR = PK + DV / 8; /* 16-byte pieces of a K row, of a K and a V row */
    constexpr int STAGE = MLA_BN * (KS + VS);
    extern __shared__ uint4 xp_smem4[];
    uint16_t *const sm = reinterpret_cast<uint16_t *>(xp_smem4);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int h = blockIdx.y, rows = m.n_tokens - x.t0, r_base = blockIdx.x * XP_ROWS;
    const int dn = m.nope, dr = m.rope;
    const int64_t kvw = (int64_t)m.n_heads * (dn + DV);

    /* this lane's two rows */
    const int ra = r_base + warp * 16 + g, rb = ra + 8;
    const int sa = ra < rows ? m.seq_of_token[x.t0 + ra] : -1, pa = ra < rows ? m.positions[x.t0 + ra] : -1;
    const int sb = rb < rows ? m.seq_of_token[x.t0 + rb] : -1, pb = rb < rows ? m.positions[x.t0 + rb] : -1;
    uint32_t qf[KCQ][4];
    {
        const uint32_t *qa =
            ra < rows ? reinterpret_cast<const uint32_t *>((const T *)x.q2 + ((int64_t)ra * m.n_heads + h) * DQK)
                      : nullptr;
        const uint32_t *qb =
            rb < rows ? reinterpret_cast<const uint32_t *>((const T *)x.q2 + ((int64_t)rb * m.n_heads + h) * DQK)
                      : nullptr;
#pragma unroll
        for (int kc = 0; kc < KCQ; kc++) {
            const int w0 = kc * 8 + tq; /* the 32-bit word of columns 16 kc + 2 tq */
            qf[kc][0] = qa ? qa[w0] : 0u;
            qf[kc][1] = qb ? qb[w0] : 0u;
            qf[kc][2] = qa ? qa[w0 + 4] : 0u;
            qf[kc][3] = qb ? qb[w0 + 4] : 0u;
        }
    }
    float o[NTV][4];
#pragma unroll
    for (int i = 0; i < NTV; i++)
        o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
    const float sl2 = m.scale * 1.4426950408889634f;

    /* the block's sequences (rows are packed by sequence) */
    const int last = min(r_base + XP_ROWS, rows) - 1;
    /* (bad ids clamped: flagged by the lens kernel, their rows see no keys) */
    const int s_first = max(m.seq_of_token[x.t0 + r_base], x.s0);
    const int s_last = min(m.seq_of_token[x.t0 + last], x.s0 + x.n_seqs - 1);
    for (int s = s_first; s <= s_last; s++) {
        int kend = 0; /* the keys the block's rows of s need */
        for (int r = r_base; r <= last; r++)
            if (m.seq_of_token[x.t0 + r] == s)
                kend = max(kend, m.positions[x.t0 + r] + 1);
        kend = min(kend, x.L);
        const int64_t base = (int64_t)(s - x.s0) * x.L;
        const T *kv = (const T *)x.kv + base * kvw + (int64_t)h * (dn + DV), *kpe = (const T *)x.kpe + base * dr;
        auto issue = [&](int kt, int st) {
            uint16_t *ks = sm + st * STAGE, *vs = ks + MLA_BN * KS;
            for (int i = threadIdx.x; i < MLA_BN * PR; i += MLA_THREADS) {
                const int row = i / PR, pc = i - row * PR, j = kt + row;
                const bool valid = j < kend;
                const T *src;
                uint16_t *dst;
                if (pc < PK) {
                    const int e = pc * 8;
                    src = e < dn ? kv + (int64_t)j * kvw + e : kpe + (int64_t)j * dr + (e - dn);
                    dst = ks + row * KS + e;
                } else {
                    const int e = (pc - PK) * 8;
                    src = kv + (int64_t)j * kvw + dn + e;
                    dst = vs + row * VS + e;
                }
                anvil_cp_async16(dst, valid ? src : (const T *)x.kv, valid);
            }
            anvil_cp_async_commit();
        };
        const int n_tiles = (kend + MLA_BN - 1) / MLA_BN;
        if (n_tiles > 0)
            issue(0, 0);
        else
            anvil_cp_async_commit();
        for (int it = 0; it < n_tiles; it++) {
            const int kt = it * MLA_BN;
            if (it + 1 < n_tiles)
                issue(kt + MLA_BN, (it + 1) & 1);
            else
                anvil_cp_async_commit();
            anvil_cp_async_wait<1>();
            __syncthreads();
            const uint16_t *ks = sm + (it & 1) * STAGE, *vs = ks + MLA_BN * KS;
            float sc[8][4];
#pragma unroll
            for (int nt = 0; nt < 8; nt++)
                sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
#pragma unroll
            for (int kc = 0; kc < KCQ; kc++)
#pragma unroll
                for (int np = 0; np < 4; np++) {
                    uint32_t kb[4];
                    anvil_ldmatrix_x4(kb, ks + mla_ldm_k(lane, np, kc, KS));
                    anvil_mma16816<T>(sc[2 * np], qf[kc], kb[0], kb[1]);
                    anvil_mma16816<T>(sc[2 * np + 1], qf[kc], kb[2], kb[3]);
                }
            /* the mask: the row's sequence, causal */
            float mt0 = -INFINITY, mt1 = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int j = kt + nt * 8 + mla_acc_col(lane, e);
                    const bool in = e < 2 ? sa == s && j <= pa : sb == s && j <= pb;
                    const float v = in ? sc[nt][e] * sl2 : -INFINITY;
                    sc[nt][e] = v;
                    if (e < 2)
                        mt0 = fmaxf(mt0, v);
                    else
                        mt1 = fmaxf(mt1, v);
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
#pragma unroll
            for (int i = 0; i < NTV; i++) {
                o[i][0] *= c0;
                o[i][1] *= c0;
                o[i][2] *= c1;
                o[i][3] *= c1;
            }
            const float ms0 = mn0 == -INFINITY ? 0.0f : mn0, ms1 = mn1 == -INFINITY ? 0.0f : mn1;
            /* P: the accumulators of key tiles 2 kc and 2 kc + 1 are the A
             * fragment of the keys [16 kc, + 16) */
            uint32_t pf[4][4];
#pragma unroll
            for (int kc = 0; kc < 4; kc++)
#pragma unroll
                for (int hf = 0; hf < 2; hf++) {
                    const float *a = sc[2 * kc + hf];
                    const float e0 = exp2f(a[0] - ms0), e1 = exp2f(a[1] - ms0);
                    const float e2 = exp2f(a[2] - ms1), e3 = exp2f(a[3] - ms1);
                    l0 += e0 + e1;
                    l1 += e2 + e3;
                    pf[kc][2 * hf] = anvil_pack2<T>(e0, e1);
                    pf[kc][2 * hf + 1] = anvil_pack2<T>(e2, e3);
                }
#pragma unroll
            for (int kc = 0; kc < 4; kc++)
#pragma unroll
                for (int nt = 0; nt < NTV; nt += 2) {
                    uint32_t vb[4];
                    anvil_ldmatrix_x4_trans(vb, vs + mla_ldm_v(lane, kc, nt * 8, VS));
                    anvil_mma16816<T>(o[nt], pf[kc], vb[0], vb[1]);
                    anvil_mma16816<T>(o[nt + 1], pf[kc], vb[2], vb[3]);
                }
            __syncthreads(); /* the stage is free */
        }
        anvil_cp_async_wait<0>();
    }
    l0 += __shfl_xor_sync(FULL_MASK, l0, 1);
    l0 += __shfl_xor_sync(FULL_MASK, l0, 2);
    l1 += __shfl_xor_sync(FULL_MASK, l1, 1);
    l1 += __shfl_xor_sync(FULL_MASK, l1, 2);
    const float ia = l0 > 0.0f ? 1.0f / l0 : 0.0f, ib = l1 > 0.0f ? 1.0f / l1 : 0.0f;
    const int64_t ow = (int64_t)m.n_heads * DV;
    T *outa = (T *)m.out + (int64_t)(x.t0 + ra) * ow + (int64_t)h * DV;
    T *outb = (T *)m.out + (int64_t)(x.t0 + rb) * ow + (int64_t)h * DV;
#pragma unroll
    for (int nt = 0; nt < NTV; nt++) {
        const int d = nt * 8 + mla_acc_col(lane, 0);
        if (ra < rows) {
            outa[d] = anvil_from_f32<T>(o[nt][0] * ia);
            outa[d + 1] = anvil_from_f32<T>(o[nt][1] * ia);
        }
        if (rb < rows) {
            outb[d] = anvil_from_f32<T>(o[nt][2] * ib);
            outb[d + 1] = anvil_from_f32<T>(o[nt][3] * ib);
        }
    }
}

/* ---------------------------------------------------------------- launch */

template <typename T, int DQK, int DV> static anvil_status xp_set_smem(void)
{
    static int done[16];
    int dev = 0;
    TRY(anvil_cuda_status(cudaGetDevice(&dev), "cudaGetDevice", __FILE__, __LINE__));
    if (dev >= 0 && dev < 16 && __atomic_load_n(&done[dev], __ATOMIC_ACQUIRE))
        return ANVIL_OK;
    TRY(anvil_cuda_status(cudaFuncSetAttribute(anvil_mla_xp_attn_kernel<T, DQK, DV>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, (int)xp_smem<DQK, DV>()),
                          "mla prefill (mma): shared memory limit", __FILE__, __LINE__));
    if (dev >= 0 && dev < 16)
        __atomic_store_n(&done[dev], 1, __ATOMIC_RELEASE);
    return ANVIL_OK;
}

template <typename T, int DQK, int DV>
static anvil_status xp_attn(cudaStream_t stream, const anvil_cuda_mla *m, const anvil_cuda_mla_xp *x)
{
    TRY((xp_set_smem<T, DQK, DV>()));
    const int rows = m->n_tokens - x->t0;
    const dim3 grid((unsigned)((rows + XP_ROWS - 1) / XP_ROWS), (unsigned)m->n_heads);
    anvil_mla_xp_attn_kernel<T, DQK, DV><<<grid, MLA_THREADS, xp_smem<DQK, DV>(), stream>>>(*m, *x);
    return ANVIL_CUDA_LAUNCHED("mla prefill (mma) kernel");
}

/* the (nope + rope, v) pairs instantiated: DeepSeek-V2 / V2-Lite's, and two
 * smaller ones the tests use */
template <typename T> static anvil_status xp_attn_t(cudaStream_t stream, const anvil_cuda_mla *m, const anvil_cuda_mla_xp *x)
{
    const int dq = m->nope + m->rope;
    if (dq == 192 && m->v == 128)
        return xp_attn<T, 192, 128>(stream, m, x);
    if (dq == 96 && m->v == 64)
        return xp_attn<T, 96, 64>(stream, m, x);
    return xp_attn<T, 48, 48>(stream, m, x);
}

extern "C" int anvil_cuda_mla_xp_ok(const anvil_cuda_mla *m, size_t smem_optin)
{
    const int dq = m->nope + m->rope;
    const bool pair = (dq == 192 && m->v == 128) || (dq == 96 && m->v == 64) || (dq == 48 && m->v == 48);
    return (m->dt == ANVIL_DTYPE_BF16 || m->dt == ANVIL_DTYPE_F16) && pair && m->nope % 8 == 0 &&
           m->rope % 8 == 0 && m->rank % 8 == 0 && xp_smem<192, 128>() <= smem_optin;
}

extern "C" void anvil_cuda_mla_xp_layout(const anvil_cuda_mla *m, int32_t t0, int32_t s0, int32_t n_seqs, int32_t L,
                                         void *ws, anvil_cuda_mla_xp *out, size_t *bytes)
{
    const size_t rows = (size_t)n_seqs * (size_t)L, H = (size_t)m->n_heads, e = 2; /* bf16 / f16 */
    const size_t q_rows = (size_t)(m->n_tokens - t0 > 0 ? m->n_tokens - t0 : 0);
    size_t at = 0;
    const size_t o_lens = at;
    at += ((size_t)n_seqs * 4 + 255) / 256 * 256;
    const size_t o_x = at;
    at += (rows * (size_t)m->rank * e + 255) / 256 * 256;
    const size_t o_kpe = at;
    at += (rows * (size_t)m->rope * e + 255) / 256 * 256;
    const size_t o_kv = at;
    at += (rows * H * (size_t)(m->nope + m->v) * e + 255) / 256 * 256;
    const size_t o_q2 = at;
    at += q_rows * H * (size_t)(m->nope + m->rope) * e;
    char *b = (char *)ws;
    out->t0 = t0;
    out->s0 = s0;
    out->n_seqs = n_seqs;
    out->L = L;
    out->lens = ws ? (int32_t *)(b + o_lens) : NULL;
    out->x = ws ? b + o_x : NULL;
    out->kpe = ws ? b + o_kpe : NULL;
    out->kv = ws ? b + o_kv : NULL;
    out->q2 = ws ? b + o_q2 : NULL;
    *bytes = at;
}

extern "C" anvil_status anvil_cuda_launch_mla_xp_prep(cudaStream_t stream, const anvil_cuda_mla *m,
                                                      const anvil_cuda_mla_xp *x)
{
    const int rows = m->n_tokens - x->t0;
    if (rows <= 0 || x->n_seqs <= 0)
        return ANVIL_OK;
    CUDA_TRY(cudaMemsetAsync(x->lens, 0, (size_t)x->n_seqs * sizeof(int32_t), stream), "mla prefill: lengths");
    anvil_mla_xp_lens_kernel<<<anvil_grid_for(rows, 256), 256, 0, stream>>>(*m, *x);
    TRY(ANVIL_CUDA_LAUNCHED("mla prefill lengths kernel"));
    const unsigned grows = anvil_grid_for((int64_t)x->n_seqs * x->L, 8); /* 8 warps a block, a warp a row */
    const unsigned qrows = rows < 65535 ? (unsigned)rows : 65535u;
    CHECK(m->dt == ANVIL_DTYPE_BF16 || m->dt == ANVIL_DTYPE_F16, ANVIL_ERR_UNSUPPORTED, "mla prefill: %s",
          anvil_dtype_name(m->dt)); /* 16-byte pieces of 8 elements */
    if (m->dt == ANVIL_DTYPE_BF16) {
        anvil_mla_xp_gather_kernel<__nv_bfloat16><<<grows, 256, 0, stream>>>(*m, *x);
        anvil_mla_xp_q_kernel<__nv_bfloat16><<<qrows, 256, 0, stream>>>(*m, *x);
    } else {
        anvil_mla_xp_gather_kernel<__half><<<grows, 256, 0, stream>>>(*m, *x);
        anvil_mla_xp_q_kernel<__half><<<qrows, 256, 0, stream>>>(*m, *x);
    }
    return ANVIL_CUDA_LAUNCHED("mla prefill gather / q kernels");
}

extern "C" anvil_status anvil_cuda_launch_mla_xp_attn(cudaStream_t stream, const anvil_cuda_mla *m,
                                                      const anvil_cuda_mla_xp *x, size_t smem_optin)
{
    CHECK(anvil_cuda_mla_xp_ok(m, smem_optin), ANVIL_ERR_UNSUPPORTED,
          "mla prefill (mma): %s, nope + rope %d, v %d (bf16/f16; 192/128, 96/64 or 48/48)", anvil_dtype_name(m->dt),
          m->nope + m->rope, m->v);
    if (m->n_tokens - x->t0 <= 0)
        return ANVIL_OK;
    if (m->dt == ANVIL_DTYPE_BF16)
        return xp_attn_t<__nv_bfloat16>(stream, m, x);
    return xp_attn_t<__half>(stream, m, x);
}
