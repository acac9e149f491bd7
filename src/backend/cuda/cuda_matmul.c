/*
 * matmul on CUDA: out[T, N] = x[T, K] w[N, K]^T (+ bias[N]) through cuBLASLt.
 *
 * cuBLASLt is column-major: the row-major out [T, N] is the column-major
 * D [N x T], w [N, K] is A [K x N] used transposed, x [T, K] is B [K x T]:
 * D = A^T B, a "TN" GEMM. The bias is a per-row vector of D, which is what
 * the BIAS epilogue adds.
 *
 * Inputs and outputs are in the activation dtype; accumulation is f32
 * always (CUBLAS_COMPUTE_32F: for f32 data that is true f32, no TF32, so
 * the exact mode stays exact). A weight in another dtype is converted to
 * the activation dtype first (into a scratch buffer; exact from bf16/f16 to
 * f32, the direction the runtime's "exact mode with weights as stored"
 * takes).
 *
 * Each distinct problem (shape, dtypes, bias, pointer alignment) gets its
 * descriptors and its algorithm once, from the heuristic query, and keeps
 * them in a hash table: a step only sets the bias pointer and calls
 * cublasLtMatmul.
 *
 * Quantized weights go to cuda_matmul_quant.c, which comes back here for
 * cuBLASLt's FP8 GEMM (anvil_cuda_gemm_fp8: e4m3 x e4m3 with a scale per
 * weight row and one per token, cuBLASLt's outer-vector scale mode; its
 * plans share the table, keyed apart by mm_key.fp8).
 */
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_internal.h"

#define CACHE_MIN 256
#define CACHE_MAX 65536

typedef struct mm_key {
    int64_t T, N, K;
    int32_t dt;          /* data type of A, B, C, D (the activation dtype) */
    int32_t bias_dt;     /* -1: no fused bias */
    uint32_t align_a, align_b, align_d;
    uint32_t fp8;        /* 1: the FP8 GEMM (A and B e4m3, outer-vector scales, D in dt); 2: the same
                            without scales, D in f32 (a kernel scales it); also keeps the struct free
                            of implicit padding (keys are compared bytewise) */
} mm_key;

typedef struct mm_plan {
    mm_key key;
    int used;
    int fused_bias;      /* the epilogue adds the bias (else a kernel does) */
    int simt;            /* cuBLASLt has no algorithm: the plain kernel (cuda_gemm_simt.cu); for an fp8 key,
                            the caller's other path */
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, d;
    cublasLtMatmulAlgo_t algo;
    size_t workspace;
} mm_plan;

struct anvil_cuda_mm_cache {
    mm_plan *slots;
    size_t cap;          /* a power of two */
    size_t count;
};

static void plan_destroy(mm_plan *p)
{
    if (p->desc)
        cublasLtMatmulDescDestroy(p->desc);
    if (p->a)
        cublasLtMatrixLayoutDestroy(p->a);
    if (p->b)
        cublasLtMatrixLayoutDestroy(p->b);
    if (p->d)
        cublasLtMatrixLayoutDestroy(p->d);
    memset(p, 0, sizeof *p);
}

static void cache_clear(anvil_cuda_mm_cache *c)
{
    for (size_t i = 0; i < c->cap; i++)
        if (c->slots[i].used)
            plan_destroy(&c->slots[i]);
    c->count = 0;
}

void anvil_cuda_matmul_cache_free(anvil_cuda_mm_cache *c)
{
    if (c == NULL)
        return;
    cache_clear(c);
    free(c->slots);
    free(c);
}

static uint64_t key_hash(const mm_key *k)
{
    /* FNV-1a over the key's bytes (keys are memset first: no stray padding) */
    const unsigned char *b = (const unsigned char *)k;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < sizeof *k; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static mm_plan *cache_find(anvil_cuda_mm_cache *c, const mm_key *k)
{
    if (c == NULL || c->cap == 0)
        return NULL;
    for (size_t i = key_hash(k) & (c->cap - 1);; i = (i + 1) & (c->cap - 1)) {
        if (!c->slots[i].used)
            return NULL;
        if (memcmp(&c->slots[i].key, k, sizeof *k) == 0)
            return &c->slots[i];
    }
}

/* A free slot for k, growing (or, past CACHE_MAX, emptying) the table. */
static anvil_status cache_slot(anvil_cuda_backend *cb, const mm_key *k, mm_plan **out)
{
    anvil_cuda_mm_cache *c = cb->mm_cache;
    if (c == NULL) {
        c = calloc(1, sizeof *c);
        CHECK(c != NULL, ANVIL_ERR_OOM, "matmul cache: out of memory");
        cb->mm_cache = c;
    }
    if (2 * (c->count + 1) > c->cap) {
        if (c->cap >= CACHE_MAX) {
            cache_clear(c);
        } else {
            size_t cap = c->cap ? 2 * c->cap : CACHE_MIN;
            mm_plan *slots = calloc(cap, sizeof *slots);
            CHECK(slots != NULL, ANVIL_ERR_OOM, "matmul cache: out of memory");
            for (size_t i = 0; i < c->cap; i++) {
                if (!c->slots[i].used)
                    continue;
                size_t j = key_hash(&c->slots[i].key) & (cap - 1);
                while (slots[j].used)
                    j = (j + 1) & (cap - 1);
                slots[j] = c->slots[i];
            }
            free(c->slots);
            c->slots = slots;
            c->cap = cap;
        }
    }
    size_t i = key_hash(k) & (c->cap - 1);
    while (c->slots[i].used)
        i = (i + 1) & (c->cap - 1);
    *out = &c->slots[i];
    return ANVIL_OK;
}

static cudaDataType_t cuda_type(anvil_dtype dt)
{
    return dt == ANVIL_DTYPE_F32 ? CUDA_R_32F : dt == ANVIL_DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_16F;
}

static uint32_t ptr_align(const void *p)
{
    uintptr_t u = (uintptr_t)p;
    uint32_t a = 256;
    while (a > 1 && (u & (a - 1)) != 0)
        a >>= 1;
    return a;
}

#define LT_TRY(call, what)                                                                             \
    do {                                                                                               \
        cublasStatus_t lt_st_ = (call);                                                                \
        if (lt_st_ != CUBLAS_STATUS_SUCCESS)                                                           \
            return ANVIL_FAIL(ANVIL_ERR_CUDA, "matmul: %s: %s", (what), cublasGetStatusString(lt_st_)); \
    } while (0)

/* Descriptors, layouts and the heuristic's best algorithm for k. Returns
 * ANVIL_ERR_UNSUPPORTED when the heuristic has no algorithm. sw, sx: an
 * fp8 key's scale vectors, set before the heuristic is asked (they are set
 * again before every call). */
static anvil_status plan_build(anvil_cuda_backend *cb, const mm_key *k, mm_plan *p, const float *sw, const float *sx)
{
    const cudaDataType_t t = cuda_type((anvil_dtype)k->dt);
    /* FP8: A (the weight) and B (the tokens) e4m3, D in the activation
     * dtype (C too: cuBLASLt wants C's type to be D's for a 16-bit D) */
    const cudaDataType_t tab = k->fp8 ? CUDA_R_8F_E4M3 : t, td = k->fp8 == 2 ? CUDA_R_32F : t;
    LT_TRY(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
    const cublasOperation_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
    LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof op_t), "TRANSA");
    LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_n, sizeof op_n), "TRANSB");
    if (k->fp8 == 1) {
        /* one f32 scale per row of D (a weight row n) and per column (a token t) */
        const int32_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
        LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode, sizeof mode),
               "A_SCALE_MODE");
        LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof mode),
               "B_SCALE_MODE");
        LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sw, sizeof sw),
               "A_SCALE_POINTER");
        LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sx, sizeof sx),
               "B_SCALE_POINTER");
    }
    if (k->bias_dt >= 0) {
        const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        const int32_t bt = (int32_t)cuda_type((anvil_dtype)k->bias_dt);
        LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi), "EPILOGUE");
        LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt),
               "BIAS_DATA_TYPE");
    }
    LT_TRY(cublasLtMatrixLayoutCreate(&p->a, tab, (uint64_t)k->K, (uint64_t)k->N, k->K), "layout A");
    LT_TRY(cublasLtMatrixLayoutCreate(&p->b, tab, (uint64_t)k->K, (uint64_t)k->T, k->K), "layout B");
    LT_TRY(cublasLtMatrixLayoutCreate(&p->d, td, (uint64_t)k->N, (uint64_t)k->T, k->N), "layout D");

    cublasLtMatmulPreference_t pref = NULL;
    LT_TRY(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
    const uint64_t ws = cb->lt_workspace_bytes;
    cublasStatus_t s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                            sizeof ws);
    const uint32_t al[4] = {k->align_a, k->align_b, k->align_d, k->align_d};
    const cublasLtMatmulPreferenceAttributes_t which[4] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (int i = 0; i < 4 && s == CUBLAS_STATUS_SUCCESS; i++)
        s = cublasLtMatmulPreferenceSetAttribute(pref, which[i], &al[i], sizeof al[i]);
    cublasLtMatmulHeuristicResult_t res;
    int n_res = 0;
    memset(&res, 0, sizeof res);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulAlgoGetHeuristic(cb->lt, p->desc, p->a, p->b, p->d, p->d, pref, 1, &res, &n_res);
    cublasLtMatmulPreferenceDestroy(pref);
    /* No algorithm (NOT_SUPPORTED, INVALID_VALUE for a combination it does
     * not take, such as an f32 bias on bf16 output, or zero results): the
     * caller falls back, first without the epilogue, then to the plain kernel. */
    if (s != CUBLAS_STATUS_SUCCESS || n_res == 0)
        return ANVIL_FAIL(ANVIL_ERR_UNSUPPORTED,
                          "matmul: no cuBLASLt algorithm for [%lld, %lld] x [%lld, %lld]^T %s%s%s (%s)", (long long)k->T,
                          (long long)k->K, (long long)k->N, (long long)k->K, k->fp8 ? "fp8 -> " : "",
                          anvil_dtype_name((anvil_dtype)k->dt), k->bias_dt >= 0 ? " with bias" : "",
                          cublasGetStatusString(s));
    p->algo = res.algo;
    p->workspace = res.workspaceSize;
    p->fused_bias = k->bias_dt >= 0;
    return ANVIL_OK;
}

/* The cached plan for k, built on first use. With a bias, falls back to a
 * plan without the epilogue when cuBLASLt has none with it. An fp8 key
 * that cuBLASLt refuses in any way (this GPU or this cuBLASLt has no FP8
 * GEMM, or not with these scales) is remembered as having no plan. */
static anvil_status plan_get(anvil_cuda_backend *cb, mm_key *k, mm_plan **out, const float *sw, const float *sx)
{
    *out = cache_find(cb->mm_cache, k);
    if (*out != NULL)
        return ANVIL_OK;
    mm_plan tmp;
    memset(&tmp, 0, sizeof tmp);
    anvil_status st = plan_build(cb, k, &tmp, sw, sx);
    if (st == ANVIL_ERR_UNSUPPORTED && k->bias_dt >= 0) {
        plan_destroy(&tmp);
        mm_key k2 = *k;
        k2.bias_dt = -1;
        st = plan_build(cb, &k2, &tmp, NULL, NULL);
    }
    if (k->fp8 && st == ANVIL_ERR_CUDA)
        st = ANVIL_ERR_UNSUPPORTED;
    if (st == ANVIL_ERR_UNSUPPORTED) { /* remembered, so the heuristic is asked once */
        plan_destroy(&tmp);
        tmp.simt = 1;
        anvil_clear_error();
    } else if (st != ANVIL_OK) {
        plan_destroy(&tmp);
        return st;
    }
    tmp.key = *k; /* found again under the key asked for, fused or not */
    tmp.used = 1;
    mm_plan *slot = NULL;
    st = cache_slot(cb, k, &slot);
    if (st != ANVIL_OK) {
        plan_destroy(&tmp);
        return st;
    }
    *slot = tmp;
    cb->mm_cache->count++;
    *out = slot;
    return ANVIL_OK;
}

/* The plan's GEMM: cuBLASLt (bias in the epilogue or by a kernel), or the plain kernel. */
static anvil_status run_plan(anvil_cuda_backend *cb, mm_plan *p, const void *x, const void *w, const void *bias,
                             anvil_dtype bias_dt, void *out, anvil_dtype dt, int64_t T, int64_t K, int64_t N)
{
    if (p->simt)
        return anvil_cuda_launch_gemm_simt(cb->stream, x, w, bias, bias_dt, out, dt, T, K, N);
    if (p->fused_bias) {
        LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias),
               "BIAS_POINTER");
    }
    const float alpha = 1.0f, beta = 0.0f;
    LT_TRY(cublasLtMatmul(cb->lt, p->desc, &alpha, w, p->a, x, p->b, &beta, out, p->d, out, p->d, &p->algo,
                          cb->lt_workspace, p->workspace, cb->stream),
           "cublasLtMatmul");
    TRY(ANVIL_CUDA_LAUNCHED("cublasLtMatmul"));
    if (bias != NULL && !p->fused_bias)
        TRY(anvil_cuda_launch_bias_add(cb->stream, out, dt, bias, bias_dt, T, N));
    return ANVIL_OK;
}

anvil_status anvil_cuda_op_matmul(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *w,
                                  const anvil_tensor *bias, anvil_tensor *out)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    TRY(anvil_cuda_check_act(cb, x, "matmul x"));
    TRY(anvil_cuda_check_act(cb, out, "matmul out"));
    CHECK(w != NULL && w->data != NULL && w->n_dims == 2, ANVIL_ERR_INVALID_ARG, "matmul: expected a 2-D weight");
    TRY(anvil_cuda_check_quant(w, "matmul"));
    CHECK(w->quant != NULL || anvil_cuda_is_float_dtype(w->dtype), ANVIL_ERR_UNSUPPORTED,
          "matmul weight: dtype %s (f32, bf16 or f16, or a quantized weight with its scales)",
          anvil_dtype_name(w->dtype));
    CHECK(w->shape[1] == x->shape[1] && w->shape[0] == out->shape[1] && x->shape[0] == out->shape[0],
          ANVIL_ERR_INVALID_ARG, "matmul: x [%lld, %lld] w [%lld, %lld] out [%lld, %lld]", (long long)x->shape[0],
          (long long)x->shape[1], (long long)w->shape[0], (long long)w->shape[1], (long long)out->shape[0],
          (long long)out->shape[1]);
    CHECK(out->data != x->data || x->shape[0] == 0, ANVIL_ERR_INVALID_ARG, "matmul: out must not alias x");
    if (bias != NULL)
        TRY(anvil_cuda_check_vector(bias, w->shape[0], "matmul bias"));
    const int64_t T = x->shape[0], K = x->shape[1], N = w->shape[0];
    CHECK(T <= INT32_MAX && K <= INT32_MAX && N <= INT32_MAX, ANVIL_ERR_UNSUPPORTED,
          "matmul: [%lld, %lld] x [%lld, %lld]^T is too large", (long long)T, (long long)K, (long long)N,
          (long long)K);
    if (T == 0 || N == 0)
        return ANVIL_OK;
    TRY(anvil_cuda_use(cb));
    const anvil_dtype dt = cb->ops.act_dtype;
    if (K == 0) { /* an empty sum: the bias alone */
        CUDA_TRY(cudaMemsetAsync(out->data, 0, (size_t)(T * N) * anvil_dtype_size(dt), cb->stream), "matmul");
        anvil_cuda_fence(cb);
        return bias ? anvil_cuda_launch_bias_add(cb->stream, out->data, dt, bias->data, bias->dtype, T, N) : ANVIL_OK;
    }
    if (w->quant != NULL)
        return anvil_cuda_matmul_quant(cb, x, w, bias, out);

    const void *wdata = w->data;
    if (w->dtype != dt) {
        TRY(anvil_cuda_reserve(cb, &cb->mm_scratch, &cb->mm_scratch_bytes, (size_t)(N * K) * anvil_dtype_size(dt),
                               "matmul: weight conversion buffer"));
        TRY(anvil_cuda_launch_convert(cb->stream, w->data, w->dtype, cb->mm_scratch, dt, N * K));
        wdata = cb->mm_scratch;
    }

    if (cb->knobs.matmul_simt)
        return anvil_cuda_launch_gemm_simt(cb->stream, x->data, wdata, bias ? bias->data : NULL,
                                           bias ? bias->dtype : ANVIL_DTYPE_F32, out->data, dt, T, K, N);
    const void *bp = bias ? bias->data : NULL;
    const anvil_dtype bdt = bias ? bias->dtype : ANVIL_DTYPE_F32;
    /* 1..4 rows: the GEMV kernel, always (not the faster of the two timed
     * per shape, as once: a choice made by timing noise made two runtimes
     * of one model round differently, so the same request could give other
     * tokens after a restart; the GEMV reads at 85-100% of the copy rate
     * on every Llama-3-8B shape, cuBLASLt at 20-88%) */
    if (anvil_cuda_gemv_ok(dt, T, K, x->data, wdata, out->data) && cb->knobs.matmul_gemv != 2)
        return anvil_cuda_launch_gemv(cb->stream, anvil_cuda_pdl(cb), x->data, wdata, bp, bdt, out->data, dt, T, K, N);
    mm_key key;
    memset(&key, 0, sizeof key);
    key.T = T;
    key.N = N;
    key.K = K;
    key.dt = (int32_t)dt;
    key.bias_dt = bias != NULL && !cb->knobs.matmul_no_epilogue ? (int32_t)bias->dtype : -1;
    key.align_a = ptr_align(wdata);
    key.align_b = ptr_align(x->data);
    key.align_d = ptr_align(out->data);
    mm_plan *p = NULL;
    TRY(plan_get(cb, &key, &p, NULL, NULL));
    return run_plan(cb, p, x->data, wdata, bp, bdt, out->data, dt, T, K, N);
}

/* ---------------------------------------------------------------- FP8 GEMM */

anvil_status anvil_cuda_gemm_fp8(anvil_cuda_backend *cb, const void *xq, const float *sx, const void *wq,
                                 const float *sw, const void *bias, anvil_dtype bias_dt, void *out,
                                 anvil_dtype act_dt, int64_t T, int64_t K, int64_t N)
{
    CHECK(act_dt == ANVIL_DTYPE_BF16 || act_dt == ANVIL_DTYPE_F16, ANVIL_ERR_UNSUPPORTED,
          "matmul: the FP8 GEMM writes bf16 or f16, not %s", anvil_dtype_name(act_dt));
    mm_key key;
    memset(&key, 0, sizeof key);
    key.T = T;
    key.N = N;
    key.K = K;
    key.dt = (int32_t)act_dt;
    key.bias_dt = -1; /* a kernel adds it (the epilogue's bias with fp8 inputs is not worth a second plan) */
    key.align_a = ptr_align(wq);
    key.align_b = ptr_align(xq);
    key.align_d = ptr_align(out);
    key.fp8 = 1;
    mm_plan *p = NULL;
    TRY(plan_get(cb, &key, &p, sw, sx));
    const float alpha = 1.0f, beta = 0.0f;
    if (!p->simt) {
        cublasStatus_t s = cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sw, sizeof sw);
        if (s == CUBLAS_STATUS_SUCCESS)
            s = cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sx, sizeof sx);
        if (s == CUBLAS_STATUS_SUCCESS)
            s = cublasLtMatmul(cb->lt, p->desc, &alpha, wq, p->a, xq, p->b, &beta, out, p->d, out, p->d, &p->algo,
                               cb->lt_workspace, p->workspace, cb->stream);
        if (s == CUBLAS_STATUS_SUCCESS) {
            TRY(ANVIL_CUDA_LAUNCHED("cublasLtMatmul (fp8)"));
            if (bias != NULL)
                TRY(anvil_cuda_launch_bias_add(cb->stream, out, act_dt, bias, bias_dt, T, N));
            return ANVIL_OK;
        }
        /* the heuristic's algorithm refused at the call (launches nothing):
         * remembered, and the unscaled plan below from now on */
        if (s != CUBLAS_STATUS_NOT_SUPPORTED && s != CUBLAS_STATUS_INVALID_VALUE)
            return ANVIL_FAIL(ANVIL_ERR_CUDA, "matmul: cublasLtMatmul (fp8): %s", cublasGetStatusString(s));
        p->simt = 1;
    }
    /* No outer-vector scales here: the unscaled products in f32 (into the
     * matmul scratch), then a kernel scales them by sx[t] sw[n]. */
    key.fp8 = 2;
    key.align_d = 256; /* the scratch */
    TRY(plan_get(cb, &key, &p, NULL, NULL));
    if (p->simt) /* no FP8 algorithm for this problem: the caller's other path */
        return ANVIL_ERR_UNSUPPORTED;
    TRY(anvil_cuda_reserve(cb, &cb->mm_scratch, &cb->mm_scratch_bytes, (size_t)(T * N) * sizeof(float),
                           "matmul: fp8 GEMM accumulator buffer"));
    const cublasStatus_t s = cublasLtMatmul(cb->lt, p->desc, &alpha, wq, p->a, xq, p->b, &beta, cb->mm_scratch, p->d,
                                            cb->mm_scratch, p->d, &p->algo, cb->lt_workspace, p->workspace,
                                            cb->stream);
    if (s == CUBLAS_STATUS_NOT_SUPPORTED || s == CUBLAS_STATUS_INVALID_VALUE) {
        p->simt = 1; /* the caller's other path, from now on */
        return ANVIL_ERR_UNSUPPORTED;
    }
    if (s != CUBLAS_STATUS_SUCCESS)
        return ANVIL_FAIL(ANVIL_ERR_CUDA, "matmul: cublasLtMatmul (fp8, unscaled): %s", cublasGetStatusString(s));
    TRY(ANVIL_CUDA_LAUNCHED("cublasLtMatmul (fp8, unscaled)"));
    return anvil_cuda_launch_fp8_scale(cb->stream, cb->mm_scratch, sx, sw, bias, bias_dt, out, act_dt, T, N);
}
