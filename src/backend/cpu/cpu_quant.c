/* Quantized weights on the CPU (cpu_quant.h): the checks, the activations'
 * preparation, the dequantization, and the matmul driver that splits the
 * work over the pool. */
#include "backend/cpu/cpu_quant.h"

#include <math.h>

#include "core/error.h"

anvil_status anvil_cpu_check_quant_weight(const anvil_tensor *w)
{
    const anvil_quant *q = w->quant;
    const char *dn = anvil_dtype_name(w->dtype);
    if (!anvil_cpu_is_quant_dtype(w->dtype)) {
        CHECK(q == NULL, ANVIL_ERR_INVALID_ARG, "matmul: a %s weight with quantization scales (only fp8_e4m3, i8 "
              "and u4 weights are quantized)", dn);
        return ANVIL_OK;
    }
    CHECK(q != NULL, ANVIL_ERR_INVALID_ARG, "matmul: a %s weight without its quantization (scales)", dn);
    CHECK(w->n_dims == 2, ANVIL_ERR_INVALID_ARG, "matmul: a quantized weight must be 2-D");
    const int64_t N = w->shape[0], K = w->shape[1];
    CHECK(q->scales != NULL, ANVIL_ERR_INVALID_ARG, "matmul: %s weight [%lld, %lld] without scales", dn,
          (long long)N, (long long)K);
    CHECK(q->group >= 0 && (q->group == 0 || K % q->group == 0), ANVIL_ERR_INVALID_ARG,
          "matmul: quantization group %d does not divide the weight's width %lld", (int)q->group, (long long)K);
    CHECK(q->zeros == NULL || w->dtype == ANVIL_DTYPE_U4, ANVIL_ERR_INVALID_ARG,
          "matmul: zero points on a %s weight (only u4 has them)", dn);
    CHECK(q->act == ANVIL_QUANT_ACT_NONE || w->dtype == ANVIL_DTYPE_F8_E4M3, ANVIL_ERR_INVALID_ARG,
          "matmul: fp8 activations with a %s weight (only fp8_e4m3 weights take them)", dn);
    CHECK(q->act >= ANVIL_QUANT_ACT_NONE && q->act <= ANVIL_QUANT_ACT_FP8_STATIC, ANVIL_ERR_INVALID_ARG,
          "matmul: unknown activation quantization %d", (int)q->act);
    CHECK(q->act != ANVIL_QUANT_ACT_FP8_STATIC || (isfinite(q->input_scale) && q->input_scale > 0.0f),
          ANVIL_ERR_INVALID_ARG, "matmul: static fp8 input scale %g (must be finite and > 0)",
          (double)q->input_scale);
    if (q->perm != NULL)
        for (int64_t k = 0; k < K; k++)
            CHECK(q->perm[k] >= 0 && q->perm[k] < K, ANVIL_ERR_INVALID_ARG,
                  "matmul: perm[%lld] = %d outside [0, %lld)", (long long)k, q->perm[k], (long long)K);
    return ANVIL_OK;
}

anvil_cpu_qw anvil_cpu_qw_of(const anvil_tensor *w)
{
    anvil_cpu_qw qw = {.w = w->data, .dt = w->dtype, .q = w->quant, .N = w->shape[0], .K = w->shape[1]};
    qw.gs = qw.q->group > 0 ? qw.q->group : qw.K;
    qw.G = qw.gs > 0 ? qw.K / qw.gs : 0;
    if (qw.gs == 0) /* K = 0: no columns, one (unused) scale per row */
        qw.gs = 1;
    return qw;
}

/* fp8(v / sx) * sx, one rounding each */
static float fp8_round(float v, float sx)
{
    return anvil_fp8_e4m3_to_f32(anvil_f32_to_fp8_e4m3(v / sx)) * sx;
}

void anvil_cpu_quant_prep_row(const anvil_quant *q, const float *x, int64_t K, float *dst)
{
    for (int64_t k = 0; k < K; k++)
        dst[k] = q->perm != NULL ? x[q->perm[k]] : x[k];
    if (q->act == ANVIL_QUANT_ACT_NONE)
        return;
    float sx = q->input_scale;
    if (q->act == ANVIL_QUANT_ACT_FP8_DYNAMIC) {
        float amax = 0.0f;
        for (int64_t k = 0; k < K; k++)
            amax = fabsf(dst[k]) > amax ? fabsf(dst[k]) : amax;
        sx = amax / 448.0f;
        if (!(sx > 0.0f)) { /* a row of zeros (or too small to scale): zeros */
            for (int64_t k = 0; k < K; k++)
                dst[k] = 0.0f * dst[k];
            return;
        }
    }
    for (int64_t k = 0; k < K; k++)
        dst[k] = fp8_round(dst[k], sx);
}

void anvil_cpu_quant_dequant_rows(const anvil_cpu_qw *qw, int64_t n, int64_t nr, float *dst, int64_t ld)
{
    for (int64_t r = 0; r < nr; r++)
        for (int64_t k = 0; k < qw->K; k++)
            dst[r * ld + k] = anvil_cpu_quant_value(qw, n + r, k);
}

/* ---------------------------------------------------------------- driver
 * Each thread takes a block of weight rows (or of tokens, when there are
 * too few rows to go round) and, per block of QT tokens and QR rows,
 * prepares x' (when needed), dequantizes the rows into an f32 panel and
 * runs the ISA's f32 kernel on that sub-problem, whose result is copied
 * into out. The f32 kernels' arithmetic does not depend on the
 * sub-problem's size, so neither does the result. */

#define QT 64 /* tokens per block: x' of a block is QT x K floats per thread */
#define QR 16 /* weight rows per dequantized panel */

typedef struct q_job {
    anvil_cpu_backend *cb;
    const anvil_cpu_kernels *kern;
    anvil_cpu_qw qw;
    const float *x;
    const void *bias;
    anvil_dtype bias_dt;
    float *out;
    int64_t T;
    int split_tokens;
    size_t mm_floats; /* scratch of the f32 kernel, in floats */
} q_job;

static void q_task(void *ctx, int ith, int nth)
{
    q_job *job = ctx;
    const anvil_cpu_qw *qw = &job->qw;
    const int64_t K = qw->K, N = qw->N;
    int64_t t0 = 0, t1 = job->T, n0 = 0, n1 = N;
    if (job->split_tokens)
        anvil_cpu_split(job->T, QT, ith, nth, &t0, &t1);
    else
        anvil_cpu_split(N, QR, ith, nth, &n0, &n1);
    if (t0 >= t1 || n0 >= n1)
        return;
    float *mm_scratch = anvil_cpu_scratch_at(job->cb, ith);
    float *xp = mm_scratch + job->mm_floats;
    float *panel = xp + (anvil_cpu_quant_needs_prep(qw->q) ? (size_t)QT * (size_t)K : 0);
    float *tmp = panel + (size_t)QR * (size_t)K;
    const size_t bsz = anvil_dtype_size(job->bias_dt);
    for (int64_t tb = t0; tb < t1; tb += QT) {
        const int64_t tn = t1 - tb < QT ? t1 - tb : QT;
        const float *xs = job->x + tb * K;
        if (anvil_cpu_quant_needs_prep(qw->q)) {
            for (int64_t t = 0; t < tn; t++)
                anvil_cpu_quant_prep_row(qw->q, job->x + (tb + t) * K, K, xp + t * K);
            xs = xp;
        }
        for (int64_t n = n0; n < n1; n += QR) {
            const int64_t nr = n1 - n < QR ? n1 - n : QR;
            anvil_cpu_quant_dequant_rows(qw, n, nr, panel, K);
            anvil_cpu_mm sub = {
                .x = xs,
                .w = panel,
                .wdt = ANVIL_DTYPE_F32,
                .bias = job->bias != NULL ? (const char *)job->bias + (size_t)n * bsz : NULL,
                .bias_dt = job->bias_dt,
                .out = tmp,
                .T = tn,
                .K = K,
                .N = nr,
            };
            job->kern->matmul(&sub, 0, tn, 0, nr, mm_scratch);
            for (int64_t t = 0; t < tn; t++)
                memcpy(job->out + (tb + t) * N + n, tmp + t * nr, (size_t)nr * sizeof(float));
        }
    }
}

anvil_status anvil_cpu_quant_matmul(anvil_cpu_backend *cb, const anvil_cpu_kernels *kern, const anvil_tensor *x,
                                    const anvil_tensor *w, const anvil_tensor *bias, anvil_tensor *out)
{
    q_job job = {
        .cb = cb,
        .kern = kern,
        .qw = anvil_cpu_qw_of(w),
        .x = x->data,
        .bias = bias != NULL ? bias->data : NULL,
        .bias_dt = bias != NULL ? bias->dtype : ANVIL_DTYPE_F32,
        .out = out->data,
        .T = x->shape[0],
    };
    const int64_t K = job.qw.K, N = job.qw.N;
    if (job.T == 0 || N == 0)
        return ANVIL_OK;
    const size_t mm_bytes = (anvil_cpu_mm_scratch_bytes(&kern->mm_shape, K) + 63) / 64 * 64;
    job.mm_floats = mm_bytes / sizeof(float);
    size_t floats = (size_t)QR * (size_t)K + (size_t)QT * QR;
    if (anvil_cpu_quant_needs_prep(job.qw.q))
        floats += (size_t)QT * (size_t)K;
    TRY(anvil_cpu_scratch_reserve(cb, mm_bytes + floats * sizeof(float)));
    /* Too few row blocks to keep every thread busy: split tokens. */
    job.split_tokens = job.T > QT && (N + QR - 1) / QR < 2 * (int64_t)cb->n_threads;
    anvil_threadpool_run(cb->pool, q_task, &job);
    return ANVIL_OK;
}
