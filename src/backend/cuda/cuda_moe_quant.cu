/*
 * The moe op's grouped GEMV on quantized experts (cuda_moe_quant.h): block
 * (bx, by) is active expert by's weight rows n = bx * MQ_WARPS + warp, a
 * warp a row (with silu: its gate row and its up row), the expert's few
 * sorted rows (at most 8: one per token) in registers, so only the active
 * experts' weights are read, once, and the step needs no host sync (step
 * graphs hold it, unlike the loop over experts). Each lane reads 8
 * consecutive codes at a time (8 bytes of fp8/int8, 4 of int4; K a
 * multiple of 8, groups of a multiple of 8, so the 8 share one scale and
 * zero point) and dequantizes them as the canonical form says:
 *   fp8   fl(e4m3(v) * s)       int8  fl(v * s)       int4  fl((v - z) * s)
 * (z the group's zero point, 8 without zero points), then multiplies each
 * of the expert's rows; the warp's sums are f32. fp8 W8A8 first rounds each
 * input row to fp8 as the CPU does (each warp finds the row's max|x| over
 * K itself: no barrier, no shared memory).
 */
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_moe_quant.h"
#include "backend/cuda/cuda_moe_quant_map.h"

#define MQ_WARPS 8
#define MQ_MAX_ROWS 8

enum { MQ_FP8 = MQM_FP8, MQ_I8 = MQM_I8, MQ_U4 = MQM_U4 };

/* The 8 codes of a weight row from column c (c % 8 == 0) as v - z, read
 * and unpacked as cuda_moe_quant_map.h says (checked on the CPU by
 * test_cuda_moe_quant_map). */
template <int KIND>
__device__ __forceinline__ void mq_codes(const uint8_t *__restrict__ wrow, int64_t c, float z, float (&v)[8])
{
    if constexpr (KIND == MQ_U4) {
        const uint32_t p = __ldg(reinterpret_cast<const unsigned int *>(wrow + mqm_byte(KIND, c)));
#pragma unroll
        for (int i = 0; i < 8; i++)
            v[i] = (float)mqm_code(KIND, p, 0u, i) - z;
    } else {
        const uint2 p = __ldg(reinterpret_cast<const uint2 *>(wrow + mqm_byte(KIND, c)));
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const uint32_t b = mqm_code(KIND, p.x, p.y, i);
            if constexpr (KIND == MQ_I8) {
                v[i] = (float)(int8_t)(uint8_t)b;
            } else {
                __nv_fp8_e4m3 f;
                f.__x = (__nv_fp8_storage_t)b;
                v[i] = anvil_to_f32(f);
            }
        }
    }
}

template <typename TX, int KIND, bool SILU>
__global__ void anvil_moe_gemv_quant_kernel(const TX *__restrict__ X, const uint8_t *__restrict__ W,
                                            const float *__restrict__ scales, const uint8_t *__restrict__ zeros,
                                            int64_t K, int64_t N, int32_t group, int fp8_act, int32_t k, int32_t E,
                                            const int32_t *offsets, const int32_t *active, const int32_t *order,
                                            float *out)
{
    const int32_t slot = blockIdx.y;
    if (slot >= active[E]) /* active[E]: how many experts have rows */
        return;
    const int32_t e = active[slot];
    const int64_t n = (int64_t)blockIdx.x * MQ_WARPS + threadIdx.x / 32;
    if (n >= N) /* no barriers below: the warp may leave */
        return;
    const int lane = threadIdx.x % 32;
    const int32_t r0 = offsets[e], rows = offsets[e + 1] - offsets[e];
    /* the stack's rows: gate e 2N + n and up e 2N + N + n; down e N + n */
    const int64_t rg = mqm_row(SILU, e, N, n), ru = rg + N;
    const int64_t row_bytes = KIND == MQ_U4 ? K / 2 : K;
    const uint8_t *wg = W + rg * row_bytes, *wu = W + ru * row_bytes;
    const TX *xr[MQ_MAX_ROWS];
#pragma unroll
    for (int i = 0; i < MQ_MAX_ROWS; i++) {
        const int32_t r = r0 + (i < rows ? i : 0);
        xr[i] = SILU ? X + (int64_t)(order[r] / k) * K : X + (int64_t)r * K;
    }
    float sx[MQ_MAX_ROWS];
#pragma unroll
    for (int i = 0; i < MQ_MAX_ROWS; i++) {
        sx[i] = 0.0f;
        if (fp8_act && i < rows) { /* W8A8: the row's scale, as the CPU's: max|x| / 448 */
            float m = 0.0f;
            for (int64_t c = lane; c < K; c += 32)
                m = fmaxf(m, fabsf(anvil_to_f32(xr[i][c])));
            sx[i] = __fdiv_rn(anvil_warp_max(m), 448.0f);
        }
    }
    float ag[MQ_MAX_ROWS], au[MQ_MAX_ROWS];
#pragma unroll
    for (int i = 0; i < MQ_MAX_ROWS; i++)
        ag[i] = au[i] = 0.0f;
    for (int64_t c = (int64_t)lane * MQM_CODES; c < K; c += MQM_STEP) {
        const int64_t ig = mqm_scale_at(rg, c, K, group), iu = mqm_scale_at(ru, c, K, group);
        const float sg = scales[ig], su = SILU ? scales[iu] : 0.0f;
        const float zg = KIND == MQ_U4 ? (zeros != nullptr ? (float)zeros[ig] : 8.0f) : 0.0f;
        const float zu = KIND == MQ_U4 && SILU ? (zeros != nullptr ? (float)zeros[iu] : 8.0f) : 0.0f;
        float vg[8], vu[8];
        mq_codes<KIND>(wg, c, zg, vg);
        if (SILU)
            mq_codes<KIND>(wu, c, zu, vu);
#pragma unroll
        for (int j = 0; j < 8; j++) {
            vg[j] = __fmul_rn(vg[j], sg); /* W = fl((v - z) * s): one rounding, never fused into the sum */
            if (SILU)
                vu[j] = __fmul_rn(vu[j], su);
        }
#pragma unroll
        for (int i = 0; i < MQ_MAX_ROWS; i++) {
            if (i >= rows)
                break;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                float xv = anvil_to_f32(xr[i][c + j]);
                if (fp8_act) /* x' = fl(fp8(x / sx) * sx); a row of zeros stays zeros */
                    xv = sx[i] > 0.0f
                             ? anvil_to_f32(anvil_from_f32<__nv_fp8_e4m3>(__fdiv_rn(xv, sx[i]))) * sx[i]
                             : 0.0f;
                ag[i] += vg[j] * xv;
                if (SILU)
                    au[i] += vu[j] * xv;
            }
        }
    }
#pragma unroll
    for (int i = 0; i < MQ_MAX_ROWS; i++) {
        if (i >= rows)
            break;
        const float g = anvil_warp_sum(ag[i]);
        const float u = SILU ? anvil_warp_sum(au[i]) : 0.0f;
        if (lane == 0)
            out[(int64_t)(r0 + i) * N + n] = SILU ? g / (1.0f + expf(-g)) * u : g;
    }
}

extern "C" int anvil_cuda_moe_gemv_quant_ok(const anvil_tensor *w, int64_t n_tok)
{
    const anvil_quant *q = w->quant;
    if (q == NULL || q->scales == NULL || q->perm != NULL || n_tok < 1 || n_tok > MQ_MAX_ROWS || w->n_dims != 2)
        return 0;
    const int64_t K = w->shape[1];
    const bool kind_ok = w->dtype == ANVIL_DTYPE_F8_E4M3 || w->dtype == ANVIL_DTYPE_I8 || w->dtype == ANVIL_DTYPE_U4;
    const bool act_ok = q->act == ANVIL_QUANT_ACT_NONE ||
                        (q->act == ANVIL_QUANT_ACT_FP8_DYNAMIC && w->dtype == ANVIL_DTYPE_F8_E4M3);
    return kind_ok && act_ok && K % 8 == 0 && (q->group == 0 || (q->group % 8 == 0 && K % q->group == 0)) &&
           ((uintptr_t)w->data & 7) == 0;
}

extern "C" anvil_status anvil_cuda_launch_moe_experts_quant(cudaStream_t stream, int silu, const void *X,
                                                            anvil_dtype x_dt, const anvil_tensor *W, int64_t n_tok,
                                                            int32_t k, int32_t E, int64_t K, int64_t N,
                                                            const int32_t *offsets, const int32_t *active,
                                                            const int32_t *order, float *out)
{
    CHECK(n_tok > 0 && k > 0 && E > 0 && K > 0 && N > 0 && W != NULL && W->n_dims == 2 && W->shape[1] == K &&
              W->shape[0] == (int64_t)E * (silu ? 2 : 1) * N,
          ANVIL_ERR_INVALID_ARG, "moe quantized gemv: %lld tokens x %d, K %lld, N %lld", (long long)n_tok, k,
          (long long)K, (long long)N);
    CHECK(anvil_cuda_moe_gemv_quant_ok(W, n_tok), ANVIL_ERR_INVALID_ARG,
          "moe quantized gemv: a %s weight it does not take (at most %d tokens, K and groups multiples of 8, no "
          "perm, 8-byte aligned)",
          anvil_dtype_name(W->dtype), MQ_MAX_ROWS);
    CHECK(silu || x_dt == ANVIL_DTYPE_F32, ANVIL_ERR_INVALID_ARG, "moe quantized gemv: down reads f32 rows");
    CHECK((N + MQ_WARPS - 1) / MQ_WARPS <= INT32_MAX, ANVIL_ERR_INVALID_ARG, "moe quantized gemv: N too large");
    const int64_t n_pairs = n_tok * k;
    const int32_t max_active = n_pairs < E ? (int32_t)n_pairs : E; /* grid.y: slots past active[E] return */
    const dim3 grid((unsigned)((N + MQ_WARPS - 1) / MQ_WARPS), (unsigned)max_active);
    const uint8_t *w = (const uint8_t *)W->data;
    const anvil_quant *q = W->quant;
    const int fp8_act = q->act == ANVIL_QUANT_ACT_FP8_DYNAMIC;
#define MQ_LAUNCH(KIND)                                                                                     \
    do {                                                                                                    \
        if (silu)                                                                                           \
            anvil_moe_gemv_quant_kernel<T, KIND, true><<<grid, MQ_WARPS * 32, 0, stream>>>(                 \
                (const T *)X, w, q->scales, q->zeros, K, N, q->group, fp8_act, k, E, offsets, active, order, \
                out);                                                                                       \
        else                                                                                                \
            anvil_moe_gemv_quant_kernel<T, KIND, false><<<grid, MQ_WARPS * 32, 0, stream>>>(                \
                (const T *)X, w, q->scales, q->zeros, K, N, q->group, fp8_act, k, E, offsets, active, order, \
                out);                                                                                       \
    } while (0)
    ANVIL_CUDA_DISPATCH(x_dt, {
        if (W->dtype == ANVIL_DTYPE_F8_E4M3)
            MQ_LAUNCH(MQ_FP8);
        else if (W->dtype == ANVIL_DTYPE_I8)
            MQ_LAUNCH(MQ_I8);
        else
            MQ_LAUNCH(MQ_U4);
    });
#undef MQ_LAUNCH
    return ANVIL_CUDA_LAUNCHED("moe quantized gemv kernel");
}
