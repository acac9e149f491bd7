/* Quantized weights on the CPU (cpu_quant.h): the checks, the activations'
 * preparation, the dequantization, and the matmul driver that splits the
 * work over the pool. */
#include "backend/cpu/cpu_quant.h"

#include <math.h>
#include <stdatomic.h>

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
    return anvil_cpu_fp8_to_f32(anvil_f32_to_fp8_e4m3(v / sx)) * sx;
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

void anvil_cpu_quant_prep_q8(const anvil_cpu_qw *qw, const float *x, anvil_cpu_q8 a)
{
    const int32_t *perm = qw->q->perm;
    const int64_t nb = qw->K / ANVIL_CPU_QB;
    for (int64_t b = 0; b < nb; b++) {
        const int64_t k0 = b * ANVIL_CPU_QB;
        float v[ANVIL_CPU_QB], amax = 0.0f;
        for (int p = 0; p < ANVIL_CPU_QB; p++) {
            const int64_t k = k0 + anvil_cpu_quant_kmap(qw->dt, p);
            v[p] = x[perm != NULL ? perm[k] : k];
            amax = fabsf(v[p]) > amax ? fabsf(v[p]) : amax;
        }
        const float d = amax / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
        int8_t *q = a.q + k0;
        for (int p = 0; p < ANVIL_CPU_QB; p++) {
            const float r = rintf(v[p] * id);
            q[p] = (int8_t)(r > 127.0f ? 127 : r < -127.0f ? -127 : r == r ? (int)r : 0);
        }
        for (int l = 0; l < 8; l++) {
            a.dl[b * 8 + l] = d;
            a.qs[b * 8 + l] = (float)(q[4 * l] + q[4 * l + 1] + q[4 * l + 2] + q[4 * l + 3]);
        }
    }
}

void anvil_cpu_quant_dequant_rows(const anvil_cpu_qw *qw, int64_t n, int64_t nr, float *dst, int64_t ld)
{
    const int64_t K = qw->K;
    const uint8_t *w = qw->w;
    for (int64_t r = 0; r < nr; r++) {
        float *d = dst + r * ld;
        for (int64_t g = 0; g < qw->G; g++) {
            const int64_t i = (n + r) * qw->G + g, k0 = g * qw->gs, k1 = k0 + qw->gs;
            const float s = qw->q->scales[i];
            const int64_t base = (n + r) * K;
            /* one loop per dtype, so the compiler vectorizes each */
            if (qw->dt == ANVIL_DTYPE_F8_E4M3 && qw->fp8_rows != NULL) {
                qw->fp8_rows(w + base + k0, s, d + k0, k1 - k0);
            } else if (qw->dt == ANVIL_DTYPE_F8_E4M3 && qw->fp8_lut != NULL) {
                for (int64_t k = k0; k < k1; k++)
                    d[k] = qw->fp8_lut[w[base + k]] * s;
            } else if (qw->dt == ANVIL_DTYPE_F8_E4M3) {
                for (int64_t k = k0; k < k1; k++)
                    d[k] = anvil_cpu_fp8_to_f32(w[base + k]) * s;
            } else if (qw->dt == ANVIL_DTYPE_I8) {
                for (int64_t k = k0; k < k1; k++)
                    d[k] = (float)(int8_t)w[base + k] * s;
            } else {
                const int z = qw->q->zeros != NULL ? qw->q->zeros[i] : 8;
                for (int64_t k = k0; k < k1; k++) {
                    const int64_t e = base + k;
                    d[k] = (float)(((e & 1) ? w[e >> 1] >> 4 : w[e >> 1] & 15) - z) * s;
                }
            }
        }
    }
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

/* ---------------------------------------------------------------- int path
 * One job runs the weights of a fused group (q, k, v; gate, up: one input)
 * as one range of rows, or a single weight. The tokens' int8 activations
 * first: at most QI_OWN_T tokens (decode), each thread quantizes them into
 * its own slice of the backend's scratch, a few microseconds that spare
 * the pool a round trip; more, one shared copy, a task per token range.
 * Then the kernel over rows (or tokens, when the rows are too few to go
 * round), in units of QI_UNIT (a multiple of every tile). A row's result
 * depends on neither the group nor the split. */

#define QI_UNIT 4
#define QI_CHUNK_MIN 32
#define QI_OWN_T 2

typedef struct qi_job {
    const float *x;
    const anvil_cpu_qw *qw0; /* the preparation's weight (its perm and K: the group's) */
    void (*prep)(const anvil_cpu_qw *qw, const float *x, anvil_cpu_q8 a);
    anvil_cpu_qmm_fn fn;
    int n;                   /* weights */
    anvil_cpu_qmm m[ANVIL_MATMUL_MULTI_MAX];
    int64_t first[ANVIL_MATMUL_MULTI_MAX + 1]; /* weight i's rows: [first[i], first[i + 1]) */
    int64_t T, K;
    void *xq;                /* the shared activations, or NULL: each thread's own */
    char *own;               /* own activations: thread ith's at own + ith * own_stride */
    size_t own_stride;
    int split_tokens;
    int64_t chunk;           /* rows a thread takes at a time */
    atomic_llong next;       /* the first row not yet taken */
} qi_job;

static void qi_prep(const qi_job *job, void *xq, int64_t t0, int64_t t1)
{
    for (int64_t t = t0; t < t1; t++)
        job->prep(job->qw0, job->x + t * job->K, anvil_cpu_q8_at(xq, job->T, job->K, t));
}

static void qi_prep_task(void *ctx, int ith, int nth)
{
    qi_job *job = ctx;
    int64_t t0, t1;
    anvil_cpu_split(job->T, 1, ith, nth, &t0, &t1);
    qi_prep(job, job->xq, t0, t1);
}

/* rows [r0, r1) of the group, tokens [t0, t1) */
static void qi_rows(const qi_job *job, const anvil_cpu_qmm *m, int64_t t0, int64_t t1, int64_t r0, int64_t r1)
{
    for (int i = 0; i < job->n; i++) {
        const int64_t a = r0 > job->first[i] ? r0 : job->first[i];
        const int64_t b = r1 < job->first[i + 1] ? r1 : job->first[i + 1];
        if (a < b)
            job->fn(&m[i], t0, t1, a - job->first[i], b - job->first[i]);
    }
}

/* Rows go in chunks, each thread taking the next when it is done with one,
 * not in equal shares fixed up front: decode is a stream of short matmuls,
 * and a thread that runs behind (a later wake-up, a core shared with the
 * system) made the others wait at the end of every one. */
static void qi_task(void *ctx, int ith, int nth)
{
    qi_job *job = ctx;
    const anvil_cpu_qmm *m = job->m;
    anvil_cpu_qmm own[ANVIL_MATMUL_MULTI_MAX];
    if (job->xq == NULL) {
        void *xq = job->own + (size_t)ith * job->own_stride;
        qi_prep(job, xq, 0, job->T);
        for (int i = 0; i < job->n; i++) {
            own[i] = job->m[i];
            own[i].xq = xq;
        }
        m = own;
    }
    const int64_t R = job->first[job->n];
    if (job->split_tokens) {
        int64_t t0, t1;
        anvil_cpu_split(job->T, QI_UNIT, ith, nth, &t0, &t1);
        if (t0 < t1)
            qi_rows(job, m, t0, t1, 0, R);
        return;
    }
    for (;;) {
        const int64_t r0 = atomic_fetch_add_explicit(&job->next, job->chunk, memory_order_relaxed);
        if (r0 >= R)
            return;
        qi_rows(job, m, 0, job->T, r0, r0 + job->chunk < R ? r0 + job->chunk : R);
    }
}

static anvil_cpu_qmm_fn qi_kernel(anvil_cpu_isa isa)
{
#if defined(__x86_64__)
    if (isa == ANVIL_CPU_ISA_AVX512)
        return __builtin_cpu_supports("avx512vnni") ? anvil_cpu_qmm_avx512vnni : anvil_cpu_qmm_avx512;
    if (isa == ANVIL_CPU_ISA_AVX2)
        return anvil_cpu_qmm_avx2;
#endif
    (void)isa;
    return anvil_cpu_qmm_scalar;
}

/* out[i] = x w[i]^T (+ bias[i]) for the n int-path weights qw[i] of one K
 * and one preparation (perm) */
static anvil_status quant_matmul_int(anvil_cpu_backend *cb, const anvil_tensor *x, int n, const anvil_cpu_qw *qw,
                                     const anvil_tensor *const *bias, anvil_tensor *const *out)
{
    const int64_t T = x->shape[0], K = qw[0].K;
    const int nth = cb->n_threads;
    qi_job job = {.x = x->data, .qw0 = &qw[0], .prep = anvil_cpu_quant_prep_q8, .fn = qi_kernel(cb->isa), .n = n,
                  .T = T, .K = K};
#if defined(__x86_64__)
    if (cb->isa == ANVIL_CPU_ISA_AVX512 && qw[0].q->perm == NULL)
        job.prep = anvil_cpu_quant_prep_q8_avx512;
#endif
    for (int i = 0; i < n; i++) {
        job.m[i] = (anvil_cpu_qmm){.qw = qw[i],
                                   .bias = bias[i] != NULL ? bias[i]->data : NULL,
                                   .bias_dt = bias[i] != NULL ? bias[i]->dtype : ANVIL_DTYPE_F32,
                                   .out = out[i]->data,
                                   .T = T};
        job.first[i + 1] = job.first[i] + qw[i].N;
    }
    const int64_t R = job.first[n];
    if (T == 0 || R == 0)
        return ANVIL_OK;
    const size_t bytes = (size_t)T * anvil_cpu_q8_bytes(K);
    if (T <= QI_OWN_T && nth > 1) {
        TRY(anvil_cpu_scratch_reserve(cb, bytes));
        job.own = cb->scratch;
        job.own_stride = cb->scratch_stride;
    } else {
        /* the kernels need no per-thread scratch: the whole arena is one buffer */
        TRY(anvil_cpu_scratch_reserve(cb, (bytes + (size_t)nth - 1) / (size_t)nth));
        job.xq = cb->scratch;
        for (int i = 0; i < n; i++)
            job.m[i].xq = job.xq;
        if (nth > 1)
            anvil_threadpool_run(cb->pool, qi_prep_task, &job);
        else
            qi_prep(&job, job.xq, 0, T);
    }
    job.split_tokens = T > 8 && (R + QI_UNIT - 1) / QI_UNIT < 4 * (int64_t)nth;
    /* about 16 chunks a thread (the last one taken is what the others may
     * wait for), of at least QI_CHUNK_MIN rows (a chunk's setup amortized) */
    const int64_t per = R / (16 * (int64_t)nth);
    job.chunk = (per < QI_CHUNK_MIN ? QI_CHUNK_MIN : per + QI_UNIT - 1) / QI_UNIT * QI_UNIT;
    atomic_init(&job.next, 0);
    anvil_threadpool_run(cb->pool, qi_task, &job);
    return ANVIL_OK;
}

/* The weights' quantized form, fp8's tables set up (lut: 256 floats). */
static anvil_cpu_qw quant_weight(const anvil_cpu_backend *cb, const anvil_tensor *w, float *lut)
{
    anvil_cpu_qw qw = anvil_cpu_qw_of(w);
    if (qw.dt == ANVIL_DTYPE_F8_E4M3) {
        for (int i = 0; i < 256; i++)
            lut[i] = anvil_cpu_fp8_to_f32((uint8_t)i);
        qw.fp8_lut = lut;
#if defined(__x86_64__)
        if (cb->isa >= ANVIL_CPU_ISA_AVX2)
            qw.fp8_rows = anvil_cpu_dequant_fp8_avx2;
#endif
    }
    (void)cb;
    return qw;
}

anvil_status anvil_cpu_quant_matmul(anvil_cpu_backend *cb, const anvil_cpu_kernels *kern, const anvil_tensor *x,
                                    const anvil_tensor *w, const anvil_tensor *bias, anvil_tensor *out)
{
    float lut[256]; /* fp8's 256 values: a load per element instead of the bit steps */
    q_job job = {
        .cb = cb,
        .kern = kern,
        .qw = quant_weight(cb, w, lut),
        .x = x->data,
        .bias = bias != NULL ? bias->data : NULL,
        .bias_dt = bias != NULL ? bias->dtype : ANVIL_DTYPE_F32,
        .out = out->data,
        .T = x->shape[0],
    };
    const int64_t K = job.qw.K, N = job.qw.N;
    if (job.T == 0 || N == 0)
        return ANVIL_OK;
    if (anvil_cpu_quant_int_path(&job.qw))
        return quant_matmul_int(cb, x, 1, &job.qw, &bias, &out);
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

int anvil_cpu_quant_matmul_multi(anvil_cpu_backend *cb, const anvil_tensor *x, int n, const anvil_tensor *const *w,
                                 const anvil_tensor *const *bias, anvil_tensor *const *out, anvil_status *st)
{
    anvil_cpu_qw qw[ANVIL_MATMUL_MULTI_MAX];
    if (n < 2 || n > ANVIL_MATMUL_MULTI_MAX)
        return 0;
    for (int i = 0; i < n; i++) {
        if (w[i]->quant == NULL)
            return 0;
        qw[i] = anvil_cpu_qw_of(w[i]);
        /* one preparation: the same K, dtype (its column map) and order */
        if (!anvil_cpu_quant_int_path(&qw[i]) || qw[i].K != qw[0].K || qw[i].dt != qw[0].dt ||
            qw[i].q->perm != qw[0].q->perm)
            return 0;
    }
    *st = quant_matmul_int(cb, x, n, qw, bias, out);
    return 1;
}
