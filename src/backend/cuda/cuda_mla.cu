/* Multi-head latent attention: the cache write and the reference kernel (cuda_mla.h says what each does). */
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_mla.h"

#define REF_WARPS 8

/* x [rope] rotated in interleaved pairs by position p into out (floats):
 * (x0 + i x1)(cos + i sin), cos and sin times scale, as transformers'
 * complex apply_rotary_emb and the CPU's op. Threads of the block split
 * the pairs. */
template <typename T>
__device__ __forceinline__ void mla_rope_pairs(const T *x, int32_t p, const float *inv_freq, float scale, int rope,
                                               float *out)
{
    for (int i = threadIdx.x; i < rope / 2; i += blockDim.x) {
        const float angle = (float)p * inv_freq[i];
        const float c = cosf(angle) * scale, s = sinf(angle) * scale;
        const float x0 = anvil_to_f32(x[2 * i]), x1 = anvil_to_f32(x[2 * i + 1]);
        out[2 * i] = x0 * c - x1 * s;
        out[2 * i + 1] = x0 * s + x1 * c;
    }
}

template <typename T> __global__ void anvil_mla_cache_kernel(anvil_cuda_mla m)
{
    extern __shared__ float rot[];
    const int64_t w = (int64_t)m.rank + m.rope, n_slots = (int64_t)m.n_blocks * m.block_size;
    for (int32_t t = blockIdx.x; t < m.n_tokens; t += gridDim.x) {
        const int64_t slot = m.slots[t];
        if (slot < 0 || slot >= n_slots) {
            if (threadIdx.x == 0)
                anvil_flag(m.err, ANVIL_CUDA_BAD_SLOT);
            continue;
        }
        T *row = (T *)m.cache + slot * w;
        const T *c = (const T *)m.c + (int64_t)t * m.rank;
        for (int i = threadIdx.x; i < m.rank; i += blockDim.x)
            row[i] = c[i];
        mla_rope_pairs((const T *)m.k_pe + (int64_t)t * m.rope, m.positions[t], m.inv_freq, m.rope_scale, m.rope,
                       rot);
        __syncthreads();
        for (int i = threadIdx.x; i < m.rope; i += blockDim.x)
            row[m.rank + i] = anvil_from_f32<T>(rot[i]);
        __syncthreads();
    }
}

/* Shared memory: q_lat [rank] (then the merged o_lat), q_pe [rope], one
 * o_lat [rank] per warp, and each warp's running max and sum. */
template <typename T, typename W> __global__ void anvil_mla_attn_kernel(anvil_cuda_mla m)
{
    extern __shared__ float sm[];
    const int R = m.rank, dn = m.nope, dr = m.rope, dv = m.v;
    float *qlat = sm, *qpe = qlat + R, *olat = qpe + dr, *wm = olat + REF_WARPS * R, *wl = wm + REF_WARPS;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t W_rows_h = (int64_t)dn + dv, w = (int64_t)R + dr;
    const W *kvb = (const W *)m.kv_b;
    for (int64_t item = blockIdx.x; item < (int64_t)m.n_tokens * m.n_heads; item += gridDim.x) {
        const int32_t t = (int32_t)(item / m.n_heads), h = (int32_t)(item % m.n_heads);
        const int32_t s = m.seq_of_token[t], p = m.positions[t];
        if (s < 0 || s >= m.n_seqs || p < 0 || p / m.block_size >= m.max_blocks_per_seq) {
            if (threadIdx.x == 0)
                anvil_flag(m.err, s < 0 || s >= m.n_seqs ? ANVIL_CUDA_BAD_SEQ : ANVIL_CUDA_BAD_BLOCK);
            continue; /* the same for every thread of the block */
        }
        const T *q = (const T *)m.q + (int64_t)t * m.n_heads * (dn + dr) + (int64_t)h * (dn + dr);
        const W *wk = kvb + (int64_t)h * W_rows_h * R, *wv = wk + (int64_t)dn * R;
        /* q_lat = W_UK_h^T q_nope: thread r sums column r of W_UK_h */
        for (int r = threadIdx.x; r < R; r += blockDim.x) {
            float acc = 0.0f;
            for (int d = 0; d < dn; d++)
                acc += anvil_to_f32(q[d]) * anvil_to_f32(wk[(int64_t)d * R + r]);
            qlat[r] = acc;
        }
        mla_rope_pairs(q + dn, p, m.inv_freq, m.rope_scale, dr, qpe);
        for (int r = lane; r < R; r += 32)
            olat[warp * R + r] = 0.0f;
        __syncthreads();
        /* each warp: positions warp, warp + 8, ... with an online softmax */
        float mx = -INFINITY, l = 0.0f;
        for (int32_t j = warp; j <= p; j += REF_WARPS) {
            const int32_t blk = m.block_tables[(int64_t)s * m.max_blocks_per_seq + j / m.block_size];
            if (blk < 0 || blk >= m.n_blocks) {
                if (lane == 0)
                    anvil_flag(m.err, ANVIL_CUDA_BAD_BLOCK);
                continue;
            }
            const T *row = (const T *)m.cache + ((int64_t)blk * m.block_size + j % m.block_size) * w;
            float part = 0.0f;
            for (int r = lane; r < R; r += 32)
                part += qlat[r] * anvil_to_f32(row[r]);
            for (int i = lane; i < dr; i += 32)
                part += qpe[i] * anvil_to_f32(row[R + i]);
            const float score = anvil_warp_sum(part) * m.scale;
            const float mn = fmaxf(mx, score), corr = expf(mx - mn), e = expf(score - mn);
            l = l * corr + e;
            for (int r = lane; r < R; r += 32)
                olat[warp * R + r] = olat[warp * R + r] * corr + e * anvil_to_f32(row[r]);
            mx = mn;
        }
        if (lane == 0) {
            wm[warp] = mx;
            wl[warp] = l;
        }
        __syncthreads();
        /* merge the warps into qlat (no longer needed) */
        float M = -INFINITY;
        for (int k = 0; k < REF_WARPS; k++)
            M = fmaxf(M, wm[k]);
        float L = 0.0f;
        for (int k = 0; k < REF_WARPS; k++)
            L += wl[k] > 0.0f ? wl[k] * expf(wm[k] - M) : 0.0f;
        for (int r = threadIdx.x; r < R; r += blockDim.x) {
            float acc = 0.0f;
            for (int k = 0; k < REF_WARPS; k++)
                acc += wl[k] > 0.0f ? olat[k * R + r] * expf(wm[k] - M) : 0.0f;
            qlat[r] = acc / L;
        }
        __syncthreads();
        /* out = W_UV_h o_lat: a warp per output column */
        T *out = (T *)m.out + (int64_t)t * m.n_heads * dv + (int64_t)h * dv;
        for (int i = warp; i < dv; i += REF_WARPS) {
            float part = 0.0f;
            for (int r = lane; r < R; r += 32)
                part += anvil_to_f32(wv[(int64_t)i * R + r]) * qlat[r];
            part = anvil_warp_sum(part);
            if (lane == 0)
                out[i] = anvil_from_f32<T>(part);
        }
        __syncthreads(); /* the shared buffers are the next item's */
    }
}

template <typename T> static void launch_attn(cudaStream_t stream, const anvil_cuda_mla *m, unsigned grid, size_t smem)
{
    if (m->kv_b_dt == ANVIL_DTYPE_F32)
        anvil_mla_attn_kernel<T, float><<<grid, 32 * REF_WARPS, smem, stream>>>(*m);
    else if (m->kv_b_dt == ANVIL_DTYPE_BF16)
        anvil_mla_attn_kernel<T, __nv_bfloat16><<<grid, 32 * REF_WARPS, smem, stream>>>(*m);
    else
        anvil_mla_attn_kernel<T, __half><<<grid, 32 * REF_WARPS, smem, stream>>>(*m);
}

extern "C" anvil_status anvil_cuda_launch_mla_cache(cudaStream_t stream, const anvil_cuda_mla *m)
{
    if (m->n_tokens == 0)
        return ANVIL_OK;
    const unsigned cgrid = m->n_tokens < 65535 ? (unsigned)m->n_tokens : 65535u;
    const size_t csmem = (size_t)m->rope * sizeof(float);
    ANVIL_CUDA_DISPATCH(m->dt, anvil_mla_cache_kernel<T><<<cgrid, 128, csmem, stream>>>(*m));
    return ANVIL_CUDA_LAUNCHED("mla cache kernel");
}

extern "C" anvil_status anvil_cuda_launch_mla(cudaStream_t stream, const anvil_cuda_mla *m)
{
    if (m->n_tokens == 0)
        return ANVIL_OK;
    TRY(anvil_cuda_launch_mla_cache(stream, m));
    const int64_t items = (int64_t)m->n_tokens * m->n_heads;
    const unsigned grid = items < 65535 * 16 ? (unsigned)items : 65535u * 16;
    const size_t smem = ((size_t)(REF_WARPS + 1) * m->rank + m->rope + 2 * REF_WARPS) * sizeof(float);
    /* the rank and rope bounds keep smem at most 9 x 1024 + 256 + 16 floats, under the 48 KiB default */
    ANVIL_CUDA_DISPATCH(m->dt, launch_attn<T>(stream, m, grid, smem));
    return ANVIL_CUDA_LAUNCHED("mla attention kernel");
}
