/*
 * The quantized GEMM on tensor cores (src/backend/cuda/cuda_gemm_quant.cu;
 * docs/cuda-backend.md, "Quantized weights") against the canonical form's
 * definition in double (docs/quantization.md): want[m][n] = sum_k x[m][k]
 * (v - z) s (+ bias[n]), x as given in bf16 / f16 (as test_cuda_quant.c's
 * reference: the CPU backend's int path rounds x to int8 per block of 32,
 * another arithmetic, which this GEMM does not compute).
 *
 * Cases: int4 in groups of 32 / 64 / 128 with and without zero points and
 * per channel, int8 per channel and in groups of 32; M = 1, 17, 64, 200,
 * 512; N odd (off the 128-row tile and the 16-row mma); bias or not; bf16
 * and f16 x and out (and f32 out through the launcher). Each through the
 * launcher's own choice, with every tile (16, 64, 128 tokens) and a forced
 * K split, and through the matmul op under matmul_quant = 8 (every row
 * count) and 9 (where the dequantizing path would run), which must give
 * the launcher's bits; the fused q/k/v and gate/up (silu) ops under both
 * knobs, which must give the separate ops' bits.
 *
 * Tolerance, per element, from the kernel's rounding (cuda_gemm_quant.cu):
 *   |got - want| <= u_out |want| + (2^-16 + (segments + splits + 1) 2^-24) mag
 * with mag = sum_k |x (v - z) s| (+ |bias|): u_out = 2^-8 (bf16) / 2^-11
 * (f16), the output's one rounding (half an ulp, doubled for margin); the
 * tensor cores' f32 sum of a segment's <= 128 exact products, each add
 * within 2^-23 of the partial sum (2^-16 of mag for all of them); each
 * segment's fmaf by its scale and each split's add, 2^-24 of mag each.
 *
 * `--perf`: the GEMM against the dequantizing path (matmul_quant = 1) and
 * bf16 cuBLASLt on the bf16 weight, Llama-3-8B shapes (4096 -> 6144, 4096
 * -> 4096, 4096 -> 14336, 14336 -> 4096) at M = 16, 64, 256, 512, 2048, int4
 * g128 and int8 per channel; ms (median of 7 after a warm-up), TFLOP/s (2 M
 * N K), GB/s over the quantized weight's bytes (codes + scales + zeros).
 * Nothing asserted there. `--only PATTERN` runs the matching tests;
 * ANVIL_TEST_QUICK=1 (for compute-sanitizer) M = 17 and 200 only, forced
 * tiles with 3 splits only.
 *
 * Skips without a CUDA device.
 */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/dtype.h"
#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_gemm_quant.h"
#include "backend/cuda/cuda_internal.h"
#include "core/tensor.h"
#include "testutil.h"

#define N_ACT 2
static const anvil_dtype act_dtypes[N_ACT] = {ANVIL_DTYPE_BF16, ANVIL_DTYPE_F16};

typedef struct fixture {
    anvil_backend *gpu[N_ACT];
    uint64_t rng;
} fixture;

static int have_gpu(void)
{
    static int have = -1;
    if (have < 0)
        have = anvil_cuda_device_count() > 0;
    return have;
}

#define OK_OR_FAIL(expr, what)                                      \
    do {                                                            \
        anvil_status ok_st_ = (expr);                               \
        if (ok_st_ != ANVIL_OK)                                     \
            fail_msg("%s: %s", (what), anvil_last_error());         \
    } while (0)

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (f == NULL)
        return -1;
    f->rng = 0x3a7113e5ull;
    if (have_gpu())
        for (int i = 0; i < N_ACT; i++)
            if (anvil_backend_cuda_create(0, act_dtypes[i], &f->gpu[i]) != ANVIL_OK) {
                fprintf(stderr, "cuda backend: %s\n", anvil_last_error());
                return -1;
            }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    if (f == NULL)
        return 0;
    for (int i = 0; i < N_ACT; i++)
        anvil_backend_free(f->gpu[i]);
    free(f);
    return 0;
}

static void set_quant_knob(anvil_backend *be, int matmul_quant)
{
    anvil_cuda_knobs k;
    memset(&k, 0, sizeof k);
    k.matmul_quant = matmul_quant;
    assert_int_equal(anvil_cuda_set_knobs(be, &k), ANVIL_OK);
}

static void *dev_put(anvil_backend *be, const void *h, size_t bytes)
{
    void *d = NULL;
    OK_OR_FAIL(be->ops->alloc(be, bytes > 0 ? bytes : 1, &d), "alloc");
    if (bytes > 0)
        OK_OR_FAIL(be->ops->upload(be, d, h, bytes), "upload");
    return d;
}

static void *dev_put_floats(anvil_backend *be, const float *f, int64_t n, anvil_dtype dt)
{
    const size_t bytes = (size_t)n * anvil_dtype_size(dt);
    void *h = malloc(bytes > 0 ? bytes : 1);
    assert_non_null(h);
    anvil_convert_from_f32(dt, f, h, n);
    void *d = dev_put(be, h, bytes);
    free(h);
    return d;
}

static float *dev_get_floats(anvil_backend *be, const void *d, int64_t n, anvil_dtype dt)
{
    const size_t bytes = (size_t)n * anvil_dtype_size(dt);
    void *h = malloc(bytes > 0 ? bytes : 1);
    float *f = malloc((size_t)(n > 0 ? n : 1) * sizeof *f);
    assert_true(h && f);
    OK_OR_FAIL(be->ops->download(be, h, d, bytes), "download");
    anvil_convert_to_f32(dt, h, f, n);
    free(h);
    return f;
}

/* ---------------------------------------------------------------- weights */

typedef struct gcase {
    const char *name;
    anvil_dtype dt; /* U4, I8 */
    int64_t N, K;
    int32_t group;  /* 0: per channel */
    int zeros, bias;
} gcase;

static const gcase CASES[] = {
    {"int4 g128 zeros bias", ANVIL_DTYPE_U4, 333, 1024, 128, 1, 1},
    {"int4 g64 zeros", ANVIL_DTYPE_U4, 257, 512, 64, 1, 0},
    {"int4 g32 zeros", ANVIL_DTYPE_U4, 129, 640, 32, 1, 0},
    {"int4 g128 symmetric", ANVIL_DTYPE_U4, 200, 768, 128, 0, 1},
    {"int4 per channel", ANVIL_DTYPE_U4, 77, 512, 0, 1, 0},
    {"int8 per channel bias", ANVIL_DTYPE_I8, 301, 576, 0, 0, 1},
    {"int8 g32", ANVIL_DTYPE_I8, 130, 512, 32, 0, 0},
};
static const int64_t ROWS[] = {1, 17, 64, 200, 512};
static const int64_t ROWS_QUICK[] = {17, 200}; /* ANVIL_TEST_QUICK (under compute-sanitizer) */

static int quick(void)
{
    const char *q = getenv("ANVIL_TEST_QUICK");
    return q != NULL && q[0] == '1';
}

typedef struct hweight {
    uint8_t *codes;
    size_t code_bytes;
    float *scales;
    uint8_t *zeros;
    int64_t n_scales, gs;
    float *bias;
} hweight;

typedef struct dweight {
    void *codes, *scales, *zeros, *bias;
    anvil_quant q;
    anvil_tensor t, bt;
} dweight;

static void make_weight(uint64_t *rng, const gcase *c, hweight *h)
{
    memset(h, 0, sizeof *h);
    h->gs = c->group > 0 ? c->group : c->K;
    h->n_scales = c->N * (c->K / h->gs);
    h->code_bytes = (size_t)(c->dt == ANVIL_DTYPE_U4 ? c->N * c->K / 2 : c->N * c->K);
    h->codes = malloc(h->code_bytes);
    h->scales = malloc((size_t)h->n_scales * sizeof(float));
    assert_true(h->codes && h->scales);
    for (size_t i = 0; i < h->code_bytes; i++)
        h->codes[i] = (uint8_t)anvil_test_rand(rng);
    for (int64_t i = 0; i < h->n_scales; i++)
        h->scales[i] = (0.5f + 0.5f * fabsf(anvil_test_randf(rng))) * (c->dt == ANVIL_DTYPE_U4 ? 0.02f : 0.002f);
    if (c->zeros) {
        h->zeros = malloc((size_t)h->n_scales);
        assert_non_null(h->zeros);
        for (int64_t i = 0; i < h->n_scales; i++)
            h->zeros[i] = (uint8_t)(anvil_test_rand(rng) % 16);
    }
    if (c->bias) {
        h->bias = malloc((size_t)c->N * sizeof(float));
        assert_non_null(h->bias);
        for (int64_t i = 0; i < c->N; i++)
            h->bias[i] = anvil_test_randf(rng);
    }
}

static void free_weight(hweight *h)
{
    free(h->codes);
    free(h->scales);
    free(h->zeros);
    free(h->bias);
}

/* W[n][k] = (v - z) s in double */
static double w_value(const gcase *c, const hweight *h, int64_t n, int64_t k)
{
    const int64_t gi = n * (c->K / h->gs) + k / h->gs;
    if (c->dt == ANVIL_DTYPE_U4) {
        const int v = (h->codes[(n * c->K + k) / 2] >> (4 * (k & 1))) & 15;
        return (double)(v - (h->zeros ? h->zeros[gi] : 8)) * h->scales[gi];
    }
    return (double)(int8_t)h->codes[n * c->K + k] * h->scales[gi];
}

static void upload_weight(anvil_backend *be, const gcase *c, const hweight *h, dweight *d)
{
    memset(d, 0, sizeof *d);
    d->codes = dev_put(be, h->codes, h->code_bytes);
    d->scales = dev_put(be, h->scales, (size_t)h->n_scales * sizeof(float));
    if (h->zeros)
        d->zeros = dev_put(be, h->zeros, (size_t)h->n_scales);
    if (h->bias) /* a bf16 bias, as checkpoints store it */
        d->bias = dev_put_floats(be, h->bias, c->N, ANVIL_DTYPE_BF16);
    d->q.group = c->group;
    d->q.scales = d->scales;
    d->q.zeros = d->zeros;
    d->t = anvil_tensor_2d(c->dt, c->N, c->K, d->codes);
    d->t.quant = &d->q;
    d->bt = anvil_tensor_1d(ANVIL_DTYPE_BF16, c->N, d->bias);
}

static void free_dweight(anvil_backend *be, dweight *d)
{
    be->ops->free(be, d->codes);
    be->ops->free(be, d->scales);
    be->ops->free(be, d->zeros);
    be->ops->free(be, d->bias);
}

static anvil_cuda_qweight qweight_of(const gcase *c, const hweight *h, const dweight *d)
{
    anvil_cuda_qweight qw = {
        .w = d->codes, .dt = c->dt, .scales = d->scales, .zeros = d->zeros, .gs = h->gs, .N = c->N, .K = c->K,
    };
    return qw;
}

/* ---------------------------------------------------------------- checks */

static float round_bf16(float v)
{
    uint16_t u;
    anvil_convert_from_f32(ANVIL_DTYPE_BF16, &v, &u, 1);
    anvil_convert_to_f32(ANVIL_DTYPE_BF16, &u, &v, 1);
    return v;
}

/* want [M, N] = x W^T (+ bias) in double and mag = sum |x W| (+ |bias|) */
static void reference(const gcase *c, const hweight *h, const float *x, int64_t M, double *want, double *mag)
{
    double *wcol = malloc((size_t)c->K * sizeof(double));
    assert_non_null(wcol);
    for (int64_t n = 0; n < c->N; n++) {
        for (int64_t k = 0; k < c->K; k++)
            wcol[k] = w_value(c, h, n, k);
        const double b = h->bias ? round_bf16(h->bias[n]) : 0.0;
        for (int64_t m = 0; m < M; m++) {
            double sum = b, abs_sum = fabs(b);
            for (int64_t k = 0; k < c->K; k++) {
                const double p = (double)x[m * c->K + k] * wcol[k];
                sum += p;
                abs_sum += fabs(p);
            }
            want[m * c->N + n] = sum;
            mag[m * c->N + n] = abs_sum;
        }
    }
    free(wcol);
}

/* got [M, N] against the definition, per element (the header's bound) */
static void expect_gemm(const char *what, const gcase *c, const hweight *h, int64_t M, const double *want,
                        const double *mag, const float *got, anvil_dtype out_dt, int splits)
{
    const double u_out = out_dt == ANVIL_DTYPE_BF16 ? ldexp(1, -8) : out_dt == ANVIL_DTYPE_F16 ? ldexp(1, -11) : 0;
    const int wcols = c->dt == ANVIL_DTYPE_U4 ? 32 : 16;
    int wps = 4;
    while (wps > 1 && h->gs % (wps * wcols) != 0)
        wps /= 2;
    const double segs = (double)c->K / (wps * wcols);
    const double u_sum = ldexp(1, -16) + (segs + splits + 1) * ldexp(1, -24);
    for (int64_t i = 0; i < M * c->N; i++) {
        const double err = fabs((double)got[i] - want[i]);
        const double tol = u_out * fabs(want[i]) + u_sum * mag[i] + 1e-30;
        if (!(err <= tol))
            fail_msg("%s, %s, M %lld: out[%lld][%lld] = %.8g, want %.8g (tol %.3g)", c->name, what, (long long)M,
                     (long long)(i / c->N), (long long)(i % c->N), got[i], want[i], tol);
    }
}

static float *rand_x(uint64_t *rng, int64_t M, int64_t K, anvil_dtype dt)
{
    float *x = malloc((size_t)(M * K) * sizeof(float));
    assert_non_null(x);
    for (int64_t i = 0; i < M * K; i++)
        x[i] = anvil_test_randf(rng);
    /* as dt holds them */
    for (int64_t i = 0; i < M * K; i++) {
        uint16_t u;
        anvil_convert_from_f32(dt, &x[i], &u, 1);
        anvil_convert_to_f32(dt, &u, &x[i], 1);
    }
    return x;
}

static anvil_cuda_gemm_quant_call call_of(anvil_backend *be, const anvil_cuda_qweight *qw, const void *dx,
                                          anvil_dtype dt, int64_t M, const dweight *d, void *dout,
                                          anvil_dtype out_dt)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    anvil_cuda_gemm_quant_call call = {
        .stream = cb->stream, .w = *qw, .x = dx, .x_dt = dt, .M = M, .bias = d->bias,
        .bias_dt = ANVIL_DTYPE_BF16, .out = dout, .out_dt = out_dt, .n_sm = cb->n_sm,
        .smem_optin = cb->smem_optin,
    };
    return call;
}

/* the launcher with tile tm (0: its choice) and splits (0: its choice); out downloaded */
static float *launch(anvil_backend *be, anvil_cuda_gemm_quant_call call, int tm, int splits, int *used_splits)
{
    call.tile_m = tm;
    call.splits = splits;
    const size_t need = anvil_cuda_gemm_quant_scratch_bytes(&call);
    void *scratch = NULL;
    if (need > 0)
        OK_OR_FAIL(be->ops->alloc(be, need, &scratch), "alloc scratch");
    call.scratch = scratch;
    call.scratch_bytes = need;
    *used_splits = anvil_cuda_gemm_quant_splits(&call);
    OK_OR_FAIL(anvil_cuda_launch_gemm_quant(&call), "gemm quant launch");
    OK_OR_FAIL(be->ops->synchronize(be), "synchronize");
    float *got = dev_get_floats(be, call.out, call.M * call.w.N, call.out_dt);
    be->ops->free(be, scratch);
    return got;
}

static void test_gemm_quant(void **state)
{
    fixture *f = *state;
    if (!have_gpu())
        skip();
    for (int ai = 0; ai < N_ACT; ai++) {
        anvil_backend *be = f->gpu[ai];
        const anvil_dtype dt = act_dtypes[ai];
        for (size_t ci = 0; ci < sizeof CASES / sizeof CASES[0]; ci++) {
            const gcase *c = &CASES[ci];
            hweight h;
            make_weight(&f->rng, c, &h);
            dweight d;
            upload_weight(be, c, &h, &d);
            const anvil_cuda_qweight qw = qweight_of(c, &h, &d);
            anvil_cuda_backend *cb = anvil_cuda_impl(be);
            assert_true(anvil_cuda_gemm_quant_ok(&qw, NULL, 0, cb->sm, cb->smem_optin, d.codes, dt, dt));
            const int64_t *rows = quick() ? ROWS_QUICK : ROWS;
            const size_t n_rows = quick() ? sizeof ROWS_QUICK / sizeof ROWS_QUICK[0] : sizeof ROWS / sizeof ROWS[0];
            for (size_t ri = 0; ri < n_rows; ri++) {
                const int64_t M = rows[ri];
                float *x = rand_x(&f->rng, M, c->K, dt);
                double *want = malloc((size_t)(M * c->N) * sizeof(double));
                double *mag = malloc((size_t)(M * c->N) * sizeof(double));
                assert_true(want && mag);
                reference(c, &h, x, M, want, mag);
                void *dx = dev_put_floats(be, x, M * c->K, dt);
                void *dout = NULL, *dout32 = NULL;
                OK_OR_FAIL(be->ops->alloc(be, (size_t)(M * c->N) * 4, &dout), "alloc out");
                OK_OR_FAIL(be->ops->alloc(be, (size_t)(M * c->N) * 4, &dout32), "alloc out32");
                int sp = 0;
                /* the launcher's choice, bf16/f16 out and f32 out */
                anvil_cuda_gemm_quant_call call = call_of(be, &qw, dx, dt, M, &d, dout, dt);
                float *auto_out = launch(be, call, 0, 0, &sp);
                expect_gemm("auto", c, &h, M, want, mag, auto_out, dt, sp);
                float *got = launch(be, call_of(be, &qw, dx, dt, M, &d, dout32, ANVIL_DTYPE_F32), 0, 0, &sp);
                expect_gemm("auto, f32 out", c, &h, M, want, mag, got, ANVIL_DTYPE_F32, sp);
                free(got);
                /* every tile, one split and three */
                const int tiles[] = {16, 64, 128};
                for (int ti = 0; ti < 3; ti++)
                    for (int splits = 1; splits <= 3; splits += 2) {
                        if ((M > 200 && tiles[ti] == 16 && splits == 3) || (quick() && splits == 1))
                            continue; /* enough */
                        got = launch(be, call, tiles[ti], splits, &sp);
                        char what[64];
                        snprintf(what, sizeof what, "tile %d, %d splits", tiles[ti], sp);
                        expect_gemm(what, c, &h, M, want, mag, got, dt, sp);
                        free(got);
                    }
                /* the matmul op: matmul_quant 8 everywhere, 9 past the GEMVs' rows: the launcher's bits */
                anvil_tensor xt = anvil_tensor_2d(dt, M, c->K, dx), ot = anvil_tensor_2d(dt, M, c->N, dout);
                const int64_t gemv_rows = c->dt == ANVIL_DTYPE_U4 ? 32 : 16;
                for (int knob = 8; knob <= 9; knob++) {
                    if (knob == 9 && M <= gemv_rows)
                        continue;
                    set_quant_knob(be, knob);
                    OK_OR_FAIL(be->ops->matmul(be, &xt, &d.t, d.bias ? &d.bt : NULL, &ot), "matmul");
                    OK_OR_FAIL(be->ops->synchronize(be), "synchronize");
                    got = dev_get_floats(be, dout, M * c->N, dt);
                    if (memcmp(got, auto_out, (size_t)(M * c->N) * sizeof(float)) != 0)
                        fail_msg("%s, M %lld: the matmul op under matmul_quant = %d is not the GEMM's bits",
                                 c->name, (long long)M, knob);
                    free(got);
                }
                set_quant_knob(be, 0);
                free(auto_out);
                be->ops->free(be, dout);
                be->ops->free(be, dout32);
                be->ops->free(be, dx);
                free(want);
                free(mag);
                free(x);
            }
            free_dweight(be, &d);
            free_weight(&h);
        }
    }
}

static void test_gemm_quant_refusals(void **state)
{
    fixture *f = *state;
    if (!have_gpu())
        skip();
    anvil_backend *be = f->gpu[0];
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    const gcase c = {"int4 g128", ANVIL_DTYPE_U4, 64, 256, 128, 1, 0};
    hweight h;
    make_weight(&f->rng, &c, &h);
    dweight d;
    upload_weight(be, &c, &h, &d);
    anvil_cuda_qweight qw = qweight_of(&c, &h, &d);
    const int32_t perm_dummy = 0;
    /* what it does not take */
    assert_false(anvil_cuda_gemm_quant_ok(&qw, &perm_dummy, 0, cb->sm, cb->smem_optin, d.codes, ANVIL_DTYPE_BF16,
                                          ANVIL_DTYPE_BF16));
    assert_false(anvil_cuda_gemm_quant_ok(&qw, NULL, 0, cb->sm, cb->smem_optin, d.codes, ANVIL_DTYPE_F32,
                                          ANVIL_DTYPE_F32));
    anvil_cuda_qweight odd = qw;
    odd.K = 192; /* not a multiple of 128 */
    odd.gs = 64;
    assert_false(anvil_cuda_gemm_quant_ok(&odd, NULL, 0, cb->sm, cb->smem_optin, d.codes, ANVIL_DTYPE_BF16,
                                          ANVIL_DTYPE_BF16));
    anvil_cuda_qweight g16 = qw;
    g16.gs = 16; /* int4 groups off 32 */
    assert_false(anvil_cuda_gemm_quant_ok(&g16, NULL, 0, cb->sm, cb->smem_optin, d.codes, ANVIL_DTYPE_BF16,
                                          ANVIL_DTYPE_BF16));
    void *dx = NULL, *dout = NULL;
    OK_OR_FAIL(be->ops->alloc(be, 64 * 256 * 2, &dx), "alloc");
    OK_OR_FAIL(be->ops->alloc(be, 64 * 64 * 2, &dout), "alloc");
    anvil_cuda_gemm_quant_call call = call_of(be, &odd, dx, ANVIL_DTYPE_BF16, 16, &d, dout, ANVIL_DTYPE_BF16);
    assert_status_msg(anvil_cuda_launch_gemm_quant(&call), ANVIL_ERR_UNSUPPORTED, "gemm quant");
    /* a split without scratch */
    call = call_of(be, &qw, dx, ANVIL_DTYPE_BF16, 16, &d, dout, ANVIL_DTYPE_BF16);
    call.splits = 2;
    assert_int_equal(anvil_cuda_gemm_quant_splits(&call), 2);
    assert_status_msg(anvil_cuda_launch_gemm_quant(&call), ANVIL_ERR_INVALID_ARG, "scratch");
    call.splits = 0;
    call.tile_m = 32;
    assert_status_msg(anvil_cuda_launch_gemm_quant(&call), ANVIL_ERR_INVALID_ARG, "tiles of 32");
    be->ops->free(be, dx);
    be->ops->free(be, dout);
    free_dweight(be, &d);
    free_weight(&h);
}

/* The fused ops under matmul_quant 8 and 9 (64 rows: past the int4 GEMV's
 * 32): q/k/v (matmul_multi) and gate/up with the silu (matmul_silu_mul)
 * run as separate matmuls on the GEMM, so they give the separate ops'
 * bits. */
static void test_gemm_quant_fused(void **state)
{
    fixture *f = *state;
    if (!have_gpu())
        skip();
    const int64_t M = 64, K = 512;
    const gcase parts[5] = {
        {"q", ANVIL_DTYPE_U4, 256, K, 64, 1, 1},   {"k", ANVIL_DTYPE_U4, 128, K, 64, 1, 0},
        {"v", ANVIL_DTYPE_U4, 128, K, 64, 1, 0},   {"gate", ANVIL_DTYPE_U4, 320, K, 128, 1, 0},
        {"up", ANVIL_DTYPE_U4, 320, K, 128, 1, 0},
    };
    for (int ai = 0; ai < N_ACT; ai++) {
        anvil_backend *be = f->gpu[ai];
        const anvil_dtype dt = act_dtypes[ai];
        hweight h[5];
        dweight d[5];
        void *o1[5], *o2[5];
        for (int i = 0; i < 5; i++) {
            make_weight(&f->rng, &parts[i], &h[i]);
            upload_weight(be, &parts[i], &h[i], &d[i]);
            OK_OR_FAIL(be->ops->alloc(be, (size_t)(M * parts[i].N) * 2, &o1[i]), "alloc");
            OK_OR_FAIL(be->ops->alloc(be, (size_t)(M * parts[i].N) * 2, &o2[i]), "alloc");
        }
        void *silu1 = NULL, *silu2 = NULL;
        OK_OR_FAIL(be->ops->alloc(be, (size_t)(M * 320) * 2, &silu1), "alloc");
        OK_OR_FAIL(be->ops->alloc(be, (size_t)(M * 320) * 2, &silu2), "alloc");
        float *x = rand_x(&f->rng, M, K, dt);
        void *dx = dev_put_floats(be, x, M * K, dt);
        const anvil_tensor xt = anvil_tensor_2d(dt, M, K, dx);
        anvil_tensor t1[5], t2[5];
        for (int i = 0; i < 5; i++) {
            t1[i] = anvil_tensor_2d(dt, M, parts[i].N, o1[i]);
            t2[i] = anvil_tensor_2d(dt, M, parts[i].N, o2[i]);
        }
        anvil_tensor s1 = anvil_tensor_2d(dt, M, 320, silu1), s2 = anvil_tensor_2d(dt, M, 320, silu2);
        for (int knob = 8; knob <= 9; knob++) {
            set_quant_knob(be, knob);
            const anvil_tensor *w3[3] = {&d[0].t, &d[1].t, &d[2].t};
            const anvil_tensor *b3[3] = {&d[0].bt, NULL, NULL};
            anvil_tensor *out3[3] = {&t1[0], &t1[1], &t1[2]};
            OK_OR_FAIL(be->ops->matmul_multi(be, &xt, 3, w3, b3, out3), "matmul_multi");
            for (int i = 0; i < 3; i++)
                OK_OR_FAIL(be->ops->matmul(be, &xt, &d[i].t, i == 0 ? &d[0].bt : NULL, &t2[i]), "matmul");
            OK_OR_FAIL(be->ops->matmul_silu_mul(be, &xt, &d[3].t, NULL, &d[4].t, NULL, &t1[3], &t1[4], &s1),
                       "matmul_silu_mul");
            OK_OR_FAIL(be->ops->matmul(be, &xt, &d[3].t, NULL, &t2[3]), "matmul gate");
            OK_OR_FAIL(be->ops->matmul(be, &xt, &d[4].t, NULL, &t2[4]), "matmul up");
            OK_OR_FAIL(be->ops->silu_mul(be, &t2[3], &t2[4], &s2), "silu_mul");
            OK_OR_FAIL(be->ops->synchronize(be), "synchronize");
            for (int i = 0; i < 4; i++) {
                const void *a = i < 3 ? o1[i] : silu1, *b = i < 3 ? o2[i] : silu2;
                const int64_t n = M * (i < 3 ? parts[i].N : 320);
                float *fa = dev_get_floats(be, a, n, dt), *fb = dev_get_floats(be, b, n, dt);
                if (memcmp(fa, fb, (size_t)n * sizeof(float)) != 0)
                    fail_msg("%s, matmul_quant = %d: the fused op is not the separate ops' bits (%s)",
                             anvil_dtype_name(dt), knob, i < 3 ? parts[i].name : "gate/up silu");
                free(fa);
                free(fb);
            }
            /* and q (the GEMM, with its bias) against the definition */
            double *want = malloc((size_t)(M * parts[0].N) * sizeof(double));
            double *mag = malloc((size_t)(M * parts[0].N) * sizeof(double));
            assert_true(want && mag);
            reference(&parts[0], &h[0], x, M, want, mag);
            float *q = dev_get_floats(be, o1[0], M * parts[0].N, dt);
            anvil_cuda_gemm_quant_call call = call_of(be, &(anvil_cuda_qweight){.w = d[0].codes, .dt = parts[0].dt,
                                                                               .scales = d[0].scales,
                                                                               .zeros = d[0].zeros, .gs = 64,
                                                                               .N = parts[0].N, .K = K},
                                                      dx, dt, M, &d[0], o1[0], dt);
            expect_gemm("q of matmul_multi", &parts[0], &h[0], M, want, mag, q, dt,
                        anvil_cuda_gemm_quant_splits(&call));
            free(q);
            free(want);
            free(mag);
        }
        set_quant_knob(be, 0);
        be->ops->free(be, dx);
        be->ops->free(be, silu1);
        be->ops->free(be, silu2);
        free(x);
        for (int i = 0; i < 5; i++) {
            be->ops->free(be, o1[i]);
            be->ops->free(be, o2[i]);
            free_dweight(be, &d[i]);
            free_weight(&h[i]);
        }
    }
}

/* ---------------------------------------------------------------- --perf */

typedef struct perf_case {
    anvil_backend *be;
    anvil_tensor x, w, out;
    int knob; /* matmul_quant */
} perf_case;

/* ms of one matmul: median of 7 timings of 5 launches after a warm-up */
static double time_matmul(perf_case *p)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(p->be);
    set_quant_knob(p->be, p->knob);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    double ms[7];
    for (int i = 0; i < 3; i++)
        if (p->be->ops->matmul(p->be, &p->x, &p->w, NULL, &p->out) != ANVIL_OK)
            return -1.0;
    p->be->ops->synchronize(p->be);
    for (int r = 0; r < 7; r++) {
        cudaEventRecord(e0, cb->stream);
        for (int i = 0; i < 5; i++)
            p->be->ops->matmul(p->be, &p->x, &p->w, NULL, &p->out);
        cudaEventRecord(e1, cb->stream);
        cudaEventSynchronize(e1);
        float t = 0.0f;
        cudaEventElapsedTime(&t, e0, e1);
        ms[r] = t / 5.0;
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    for (int i = 1; i < 7; i++)
        for (int j = i; j > 0 && ms[j] < ms[j - 1]; j--) {
            const double tmp = ms[j];
            ms[j] = ms[j - 1];
            ms[j - 1] = tmp;
        }
    set_quant_knob(p->be, 0);
    return ms[3];
}

static int run_perf(void)
{
    if (!have_gpu()) {
        printf("no CUDA device\n");
        return 77;
    }
    anvil_backend *be = NULL;
    if (anvil_backend_cuda_create(0, ANVIL_DTYPE_BF16, &be) != ANVIL_OK) {
        fprintf(stderr, "cuda backend: %s\n", anvil_last_error());
        return 1;
    }
    const int64_t shapes[][2] = {{4096, 6144}, {4096, 4096}, {4096, 14336}, {14336, 4096}}; /* K -> N */
    const int64_t rows[] = {16, 64, 256, 512, 2048};
    uint64_t rng = 0x9e7f00dull;
    printf("quantized GEMM (cuda_gemm_quant.cu) vs the dequantizing path (matmul_quant = 1) vs bf16 cuBLASLt\n");
    printf("%-7s %-15s %5s | %9s %7s %7s | %9s %7s | %9s %7s | %s\n", "scheme", "K -> N", "M", "gemm ms", "TFLOP/s",
           "GB/s", "deq ms", "TFLOP/s", "bf16 ms", "TFLOP/s", "bf16 / gemm time");
    for (int sch = 0; sch < 2; sch++) {
        const anvil_dtype qdt = sch == 0 ? ANVIL_DTYPE_U4 : ANVIL_DTYPE_I8;
        for (int si = 0; si < 4; si++) {
            const int64_t K = shapes[si][0], N = shapes[si][1];
            const gcase c = {"perf", qdt, N, K, sch == 0 ? 128 : 0, sch == 0, 0};
            hweight h;
            make_weight(&rng, &c, &h);
            dweight d;
            upload_weight(be, &c, &h, &d);
            /* a bf16 weight of the same shape for cuBLASLt (values do not matter for timing) */
            void *wb = NULL;
            if (be->ops->alloc(be, (size_t)(N * K) * 2, &wb) != ANVIL_OK)
                return 1;
            cudaMemset(wb, 0, (size_t)(N * K) * 2);
            const size_t qbytes = h.code_bytes + (size_t)h.n_scales * (4 + (h.zeros ? 1 : 0));
            for (int ri = 0; ri < 5; ri++) {
                const int64_t M = rows[ri];
                void *dx = NULL, *dout = NULL;
                if (be->ops->alloc(be, (size_t)(M * K) * 2, &dx) != ANVIL_OK ||
                    be->ops->alloc(be, (size_t)(M * N) * 2, &dout) != ANVIL_OK)
                    return 1;
                cudaMemset(dx, 0x3c, (size_t)(M * K) * 2); /* some finite bf16 */
                perf_case p = {.be = be, .x = anvil_tensor_2d(ANVIL_DTYPE_BF16, M, K, dx), .w = d.t,
                               .out = anvil_tensor_2d(ANVIL_DTYPE_BF16, M, N, dout), .knob = 8};
                const double t_gemm = time_matmul(&p);
                p.knob = 1;
                const double t_deq = time_matmul(&p);
                p.knob = 0;
                p.w = anvil_tensor_2d(ANVIL_DTYPE_BF16, N, K, wb);
                const double t_bf16 = time_matmul(&p);
                const double flop = 2.0 * (double)M * (double)N * (double)K;
                char shape[32];
                snprintf(shape, sizeof shape, "%lld -> %lld", (long long)K, (long long)N);
                printf("%-7s %-15s %5lld | %9.4f %7.1f %7.0f | %9.4f %7.1f | %9.4f %7.1f | %.2f\n",
                       sch == 0 ? "int4" : "int8", shape, (long long)M, t_gemm, flop / t_gemm * 1e-9,
                       (double)qbytes / t_gemm * 1e-6, t_deq, flop / t_deq * 1e-9, t_bf16, flop / t_bf16 * 1e-9,
                       t_bf16 / t_gemm);
                be->ops->free(be, dx);
                be->ops->free(be, dout);
            }
            be->ops->free(be, wb);
            free_dweight(be, &d);
            free_weight(&h);
        }
    }
    anvil_backend_free(be);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--perf") == 0)
        return run_perf();
    if (argc > 2 && strcmp(argv[1], "--only") == 0)
        cmocka_set_test_filter(argv[2]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemm_quant),
        cmocka_unit_test(test_gemm_quant_refusals),
        cmocka_unit_test(test_gemm_quant_fused),
    };
    return anvil_test_group_result(cmocka_run_group_tests(tests, setup, teardown), sizeof tests / sizeof tests[0]);
}
