/*
 * The streaming quantized GEMV (src/backend/cuda/cuda_gemv_stream_quant.cu,
 * knob matmul_quant = 7; docs/cuda-backend.md, "The streaming quantized
 * GEMV") on the GPU:
 *
 *  - every scheme it takes (int4 in groups of 32 / 64 / 128 with and
 *    without zero points and per channel, int8 per channel and in groups of
 *    64, fp8 W8A8 dynamic and static) at 1..8 rows of bf16 and f16, odd N,
 *    K split across blocks (long rows of few tiles: many splits), K whose
 *    rows end in a partial stage, and many tiles (no split: outputs
 *    written directly), against the canonical form's definition in double
 *    (x' W^T, W = fl((v - z) s), W8A8's x' rounded to fp8 per row as the
 *    CPU does): max |got - want| <= 1e-2 max |want| (the output's bf16 /
 *    f16 rounding, as test_cuda_quant.c's bound);
 *  - the kernel takes each case (anvil_cuda_gemv_stream_quant_ok), so the
 *    fallback is not what is checked;
 *  - every output written (the output is NaN before each run) and two runs
 *    equal bit for bit, five times in a row (the split counters go back to
 *    zero: a counter left behind would skip a tile's outputs);
 *  - q/k/v as one launch (matmul_multi) equal to the three matmuls, and
 *    gate/up with the silu (matmul_silu_mul) equal to matmul, matmul and
 *    silu_mul, bit for bit, with K split.
 * Prints one line a case with its splits so a failure names the schedule.
 * ANVIL_TEST_QUICK=1 (compute-sanitizer): bf16, rows 1, 3 and 8, two runs.
 *
 * Skips without a CUDA device.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/dtype.h"
#include "backend/backend.h"
#include "backend/cpu/cpu_quant.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_gemv_stream_map.h"
#include "backend/cuda/cuda_gemv_stream_quant.h"
#include "backend/cuda/cuda_internal.h"
#include "core/tensor.h"
#include "testutil.h"

static const anvil_dtype acts[2] = {ANVIL_DTYPE_BF16, ANVIL_DTYPE_F16};

typedef struct fixture {
    anvil_backend *gpu[2];
    uint64_t rng;
} fixture;

#define NEED_GPU()                                                                                           \
    do {                                                                                                     \
        if (anvil_cuda_device_count() <= 0)                                                                  \
            skip();                                                                                          \
    } while (0)

#define OK_OR_FAIL(expr, what)                                                                               \
    do {                                                                                                     \
        anvil_status ok_st_ = (expr);                                                                        \
        if (ok_st_ != ANVIL_OK)                                                                              \
            fail_msg("%s: %s", (what), anvil_last_error());                                                  \
    } while (0)

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (f == NULL)
        return -1;
    f->rng = 0x57e4a3ull;
    if (anvil_cuda_device_count() > 0)
        for (int i = 0; i < 2; i++) {
            if (anvil_backend_cuda_create(0, acts[i], &f->gpu[i]) != ANVIL_OK) {
                fprintf(stderr, "cuda backend: %s\n", anvil_last_error());
                return -1;
            }
            anvil_cuda_knobs k;
            memset(&k, 0, sizeof k);
            k.matmul_quant = 7;
            if (anvil_cuda_set_knobs(f->gpu[i], &k) != ANVIL_OK)
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
    for (int i = 0; i < 2; i++)
        anvil_backend_free(f->gpu[i]);
    free(f);
    return 0;
}

/* ---------------------------------------------------------------- weights */

typedef struct scase {
    const char *name;
    anvil_dtype dt;
    int32_t group;
    int zeros;
    anvil_quant_act act;
} scase;

static const scase SCHEMES[] = {
    {"int4 g128 zeros", ANVIL_DTYPE_U4, 128, 1, ANVIL_QUANT_ACT_NONE},
    {"int4 g128", ANVIL_DTYPE_U4, 128, 0, ANVIL_QUANT_ACT_NONE},
    {"int4 g32 zeros", ANVIL_DTYPE_U4, 32, 1, ANVIL_QUANT_ACT_NONE},
    {"int4 g64", ANVIL_DTYPE_U4, 64, 0, ANVIL_QUANT_ACT_NONE},
    {"int4 per channel", ANVIL_DTYPE_U4, 0, 0, ANVIL_QUANT_ACT_NONE},
    {"int8", ANVIL_DTYPE_I8, 0, 0, ANVIL_QUANT_ACT_NONE},
    {"int8 g64", ANVIL_DTYPE_I8, 64, 0, ANVIL_QUANT_ACT_NONE},
    {"fp8 dynamic", ANVIL_DTYPE_F8_E4M3, 0, 0, ANVIL_QUANT_ACT_FP8_DYNAMIC},
    {"fp8 static", ANVIL_DTYPE_F8_E4M3, 0, 0, ANVIL_QUANT_ACT_FP8_STATIC},
};
#define N_SCHEMES (sizeof SCHEMES / sizeof SCHEMES[0])

/* [N, K]: few tiles of long rows (many splits), rows ending in a partial
 * stage (int4: 1152 columns = 9 steps; 8-bit: 832 = 13), many tiles */
static const int64_t SHAPES[][2] = {{45, 4096}, {77, 1152}, {19, 8192}, {4100, 512}, {33, 832}};
#define N_SHAPES (sizeof SHAPES / sizeof SHAPES[0])

typedef struct weight {
    anvil_dtype dt;
    int64_t N, K;
    uint8_t *codes;
    size_t code_bytes;
    float *scales;
    uint8_t *zeros;
    int64_t n_scales;
    anvil_quant hq, dq;
    anvil_tensor h, d; /* host and device views */
    void *dcodes, *dscales, *dzeros;
} weight;

static void *dev_put(anvil_backend *be, const void *h, size_t bytes)
{
    void *d = NULL;
    OK_OR_FAIL(be->ops->alloc(be, bytes > 0 ? bytes : 1, &d), "alloc");
    if (bytes > 0)
        OK_OR_FAIL(be->ops->upload(be, d, h, bytes), "upload");
    return d;
}

static void make_weight(anvil_backend *be, uint64_t *rng, const scase *c, int64_t N, int64_t K, weight *w)
{
    memset(w, 0, sizeof *w);
    const int64_t gs = c->group > 0 ? c->group : K;
    w->dt = c->dt;
    w->N = N;
    w->K = K;
    w->code_bytes = c->dt == ANVIL_DTYPE_U4 ? (size_t)(N * K / 2) : (size_t)(N * K);
    w->codes = malloc(w->code_bytes);
    w->n_scales = N * (K / gs);
    w->scales = malloc((size_t)w->n_scales * sizeof(float));
    assert_true(w->codes && w->scales);
    for (size_t i = 0; i < w->code_bytes; i++) {
        uint8_t b = (uint8_t)(anvil_test_rand(rng) >> 56);
        if (c->dt == ANVIL_DTYPE_F8_E4M3 && (b & 0x7f) == 0x7f) /* no NaN codes */
            b ^= 1;
        if (c->dt == ANVIL_DTYPE_I8 && b == 0x80)
            b = 0x81;
        w->codes[i] = b;
    }
    const float unit = c->dt == ANVIL_DTYPE_F8_E4M3 ? 1.0f / 448
                       : c->dt == ANVIL_DTYPE_I8    ? 1.0f / 127
                                                    : 1.0f / 8;
    for (int64_t i = 0; i < w->n_scales; i++)
        w->scales[i] = unit * (0.5f + 0.5f * fabsf(anvil_test_randf(rng)));
    if (c->zeros) {
        w->zeros = malloc((size_t)w->n_scales);
        assert_non_null(w->zeros);
        for (int64_t i = 0; i < w->n_scales; i++)
            w->zeros[i] = (uint8_t)(anvil_test_rand(rng) % 16);
    }
    w->hq.group = c->group;
    w->hq.scales = w->scales;
    w->hq.zeros = w->zeros;
    w->hq.act = c->act;
    w->hq.input_scale = c->act == ANVIL_QUANT_ACT_FP8_STATIC ? 2.0f / 448 : 0.0f;
    w->h = anvil_tensor_2d(c->dt, N, K, w->codes);
    w->h.quant = &w->hq;
    w->dcodes = dev_put(be, w->codes, w->code_bytes);
    w->dscales = dev_put(be, w->scales, (size_t)w->n_scales * sizeof(float));
    if (w->zeros)
        w->dzeros = dev_put(be, w->zeros, (size_t)w->n_scales);
    w->dq = w->hq;
    w->dq.scales = w->dscales;
    w->dq.zeros = w->dzeros;
    w->d = anvil_tensor_2d(c->dt, N, K, w->dcodes);
    w->d.quant = &w->dq;
}

static void free_weight(anvil_backend *be, weight *w)
{
    be->ops->free(be, w->dcodes);
    be->ops->free(be, w->dscales);
    be->ops->free(be, w->dzeros);
    free(w->codes);
    free(w->scales);
    free(w->zeros);
}

static int smem_optin(void)
{
    int dev = 0, optin = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
        return 0;
    return optin;
}

/* whether the streaming GEMV takes w for T rows of act */
static int takes(const weight *w, int64_t T, anvil_dtype act)
{
    const int optin = smem_optin();
    const anvil_cuda_qweight qw = {
        .w = w->dcodes,
        .dt = w->dt,
        .scales = w->dscales,
        .zeros = w->dzeros,
        .gs = w->hq.group > 0 ? w->hq.group : w->K,
        .N = w->N,
        .K = w->K,
    };
    return anvil_cuda_gemv_stream_quant_ok(&qw, (int)w->hq.act, 90, NULL, w->dcodes, act, T, (size_t)optin);
}

/* ---------------------------------------------------------------- activations and the reference */

/* x [T, K] in [-1, 1) rounded to dt; row 1 scaled by 8, row 2 zeros */
static float *rand_x(uint64_t *rng, int64_t T, int64_t K, anvil_dtype dt)
{
    float *x = malloc((size_t)(T * K) * sizeof *x);
    void *tmp = malloc((size_t)(T * K) * 2);
    assert_true(x && tmp);
    for (int64_t t = 0; t < T; t++)
        for (int64_t k = 0; k < K; k++)
            x[t * K + k] = t == 2 ? 0.0f : anvil_test_randf(rng) * (t == 1 ? 8.0f : 1.0f);
    anvil_convert_from_f32(dt, x, tmp, T * K);
    anvil_convert_to_f32(dt, tmp, x, T * K);
    free(tmp);
    return x;
}

static void reference(const weight *w, const float *x, int64_t T, float *want)
{
    const anvil_cpu_qw qw = anvil_cpu_qw_of(&w->h);
    float *xr = malloc((size_t)w->K * sizeof(float));
    assert_non_null(xr);
    for (int64_t t = 0; t < T; t++) {
        anvil_cpu_quant_prep_row(&w->hq, x + t * w->K, w->K, xr);
        for (int64_t n = 0; n < w->N; n++) {
            double acc = 0.0;
            for (int64_t k = 0; k < w->K; k++)
                acc += (double)xr[k] * (double)anvil_cpu_quant_value(&qw, n, k);
            want[t * w->N + n] = (float)acc;
        }
    }
    free(xr);
}

static void expect_close(const char *what, const float *got, const float *want, int64_t n, double tol)
{
    double max_ref = 0, max_err = 0;
    int64_t worst = -1;
    for (int64_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - (double)want[i]);
        if (isnan(got[i]))
            err = INFINITY;
        max_ref = fmax(max_ref, fabs((double)want[i]));
        if (err > max_err || (worst < 0 && err == INFINITY)) {
            max_err = err;
            worst = i;
        }
    }
    const double bound = tol * (max_ref > 1e-6 ? max_ref : 1e-6);
    if (!(max_err <= bound))
        fail_msg("%s: max error %.3g at %lld (got %g, want %g), bound %.3g", what, max_err, (long long)worst,
                 worst >= 0 ? got[worst] : 0.0, worst >= 0 ? want[worst] : 0.0, bound);
}

/* ---------------------------------------------------------------- device outputs */

static void *out_nan(anvil_backend *be, int64_t n, anvil_dtype dt)
{
    uint16_t *h = malloc((size_t)n * 2);
    assert_non_null(h);
    for (int64_t i = 0; i < n; i++)
        h[i] = dt == ANVIL_DTYPE_BF16 ? 0x7fc0 : 0x7e00; /* a quiet NaN */
    void *d = dev_put(be, h, (size_t)n * 2);
    free(h);
    return d;
}

static void set_nan(anvil_backend *be, void *d, int64_t n, anvil_dtype dt)
{
    uint16_t *h = malloc((size_t)n * 2);
    assert_non_null(h);
    for (int64_t i = 0; i < n; i++)
        h[i] = dt == ANVIL_DTYPE_BF16 ? 0x7fc0 : 0x7e00;
    OK_OR_FAIL(be->ops->upload(be, d, h, (size_t)n * 2), "upload");
    free(h);
}

static uint16_t *get_bits(anvil_backend *be, const void *d, int64_t n)
{
    uint16_t *h = malloc((size_t)n * 2);
    assert_non_null(h);
    OK_OR_FAIL(be->ops->download(be, h, d, (size_t)n * 2), "download");
    return h;
}

static float *to_f32(const uint16_t *bits, int64_t n, anvil_dtype dt)
{
    float *f = malloc((size_t)n * sizeof *f);
    assert_non_null(f);
    anvil_convert_to_f32(dt, bits, f, n);
    return f;
}

/* ---------------------------------------------------------------- the tests */

static int quick(void) { return getenv("ANVIL_TEST_QUICK") != NULL; }

static void test_stream_matmul(void **state)
{
    NEED_GPU();
    fixture *f = *state;
    const int n_acts = quick() ? 1 : 2, n_runs = quick() ? 2 : 5;
    for (size_t si = 0; si < N_SCHEMES; si++)
        for (size_t hi = 0; hi < N_SHAPES; hi++) {
            const scase *c = &SCHEMES[si];
            const int64_t N = SHAPES[hi][0], K = SHAPES[hi][1];
            if (c->group > 0 && K % c->group != 0)
                continue;
            for (int a = 0; a < n_acts; a++) {
                anvil_backend *g = f->gpu[a];
                const anvil_dtype act = acts[a];
                weight w;
                make_weight(g, &f->rng, c, N, K, &w);
                for (int64_t T = 1; T <= 8; T++) {
                    if (quick() && T != 1 && T != 3 && T != 8)
                        continue;
                    char name[160];
                    snprintf(name, sizeof name, "%s [%lld, %lld] T=%lld %s", c->name, (long long)N,
                             (long long)K, (long long)T, anvil_dtype_name(act));
                    /* it declines int4 rows off 128 columns, zero points off whole words and x's rows
                     * past the shared memory only */
                    const int fold = c->dt == ANVIL_DTYPE_U4 && c->group % 128 != 0;
                    /* zero points: a row's G = K / group of them a whole number of words */
                    const int zp_ok = !c->zeros || (K / (c->group > 0 ? c->group : K)) % 4 == 0;
                    const int expect = !(c->dt == ANVIL_DTYPE_U4 && K % 128 != 0) && zp_ok &&
                                       gsq_smem_bytes((int)T, K, gsq_sps(c->dt == ANVIL_DTYPE_F8_E4M3, fold),
                                                      c->zeros) <= smem_optin();
                    if (takes(&w, T, act) != expect)
                        fail_msg("%s: the kernel %s it", name, expect ? "declines" : "takes");
                    if (!expect)
                        continue;
                    float *x = rand_x(&f->rng, T, K, act);
                    float *want = malloc((size_t)(T * N) * sizeof *want);
                    assert_non_null(want);
                    reference(&w, x, T, want);
                    void *xh = malloc((size_t)(T * K) * 2);
                    assert_non_null(xh);
                    anvil_convert_from_f32(act, x, xh, T * K);
                    void *xd = dev_put(g, xh, (size_t)(T * K) * 2);
                    free(xh);
                    void *od = out_nan(g, T * N, act);
                    anvil_tensor xt = anvil_tensor_2d(act, T, K, xd), ot = anvil_tensor_2d(act, T, N, od);
                    uint16_t *first = NULL;
                    for (int run = 0; run < n_runs; run++) {
                        set_nan(g, od, T * N, act);
                        OK_OR_FAIL(g->ops->matmul(g, &xt, &w.d, NULL, &ot), name);
                        OK_OR_FAIL(g->ops->synchronize(g), name);
                        uint16_t *bits = get_bits(g, od, T * N);
                        if (first == NULL) {
                            first = bits;
                            float *got = to_f32(bits, T * N, act);
                            expect_close(name, got, want, T * N, 1e-2);
                            free(got);
                        } else {
                            if (memcmp(first, bits, (size_t)(T * N) * 2) != 0)
                                fail_msg("%s: run %d differs from the first", name, run);
                            free(bits);
                        }
                    }
                    free(first);
                    g->ops->free(g, xd);
                    g->ops->free(g, od);
                    free(x);
                    free(want);
                }
                free_weight(g, &w);
            }
            int64_t tiles = (N + 15) / 16, steps = (SCHEMES[si].dt == ANVIL_DTYPE_U4 ? K / 2 : K) / GSQ_STEP;
            print_message("%-18s [%lld, %lld]: %d splits of K at 264 blocks\n", c->name, (long long)N,
                          (long long)K, gsq_splits(tiles, steps, 264));
        }
}

/* q/k/v and gate/up as one launch: the separate launches' bits */
static void test_stream_fused(void **state)
{
    NEED_GPU();
    fixture *f = *state;
    const int64_t K = 4096, Ns[3] = {45, 16, 33};
    const int sch[4] = {0, 2, 5, 7}; /* int4 g128 zeros, int4 g32 zeros, int8, fp8 dynamic */
    for (int si = 0; si < 4; si++)
        for (int a = 0; a < (quick() ? 1 : 2); a++) {
            const scase *c = &SCHEMES[sch[si]];
            anvil_backend *g = f->gpu[a];
            const anvil_dtype act = acts[a];
            weight w[4];
            for (int i = 0; i < 3; i++)
                make_weight(g, &f->rng, c, Ns[i], K, &w[i]);
            make_weight(g, &f->rng, c, Ns[0], K, &w[3]); /* up: gate's N */
            for (int64_t T = 1; T <= 8; T += 3) {
                char name[160];
                snprintf(name, sizeof name, "%s K=%lld T=%lld %s", c->name, (long long)K, (long long)T,
                         anvil_dtype_name(act));
                assert_true(takes(&w[0], T, act));
                float *x = rand_x(&f->rng, T, K, act);
                void *xh = malloc((size_t)(T * K) * 2);
                assert_non_null(xh);
                anvil_convert_from_f32(act, x, xh, T * K);
                void *xd = dev_put(g, xh, (size_t)(T * K) * 2);
                free(xh);
                anvil_tensor xt = anvil_tensor_2d(act, T, K, xd);
                void *o[6];
                anvil_tensor ot[6];
                for (int i = 0; i < 6; i++) {
                    o[i] = out_nan(g, T * Ns[i % 3], act);
                    ot[i] = anvil_tensor_2d(act, T, Ns[i % 3], o[i]);
                }
                const anvil_tensor *ws[3] = {&w[0].d, &w[1].d, &w[2].d}, *bs[3] = {NULL, NULL, NULL};
                anvil_tensor *outs[3] = {&ot[0], &ot[1], &ot[2]};
                OK_OR_FAIL(g->ops->matmul_multi(g, &xt, 3, ws, bs, outs), name);
                for (int i = 0; i < 3; i++)
                    OK_OR_FAIL(g->ops->matmul(g, &xt, ws[i], NULL, &ot[3 + i]), name);
                for (int i = 0; i < 3; i++) {
                    uint16_t *b1 = get_bits(g, o[i], T * Ns[i]), *b2 = get_bits(g, o[3 + i], T * Ns[i]);
                    if (memcmp(b1, b2, (size_t)(T * Ns[i]) * 2) != 0)
                        fail_msg("%s: q/k/v part %d fused differs from its matmul", name, i);
                    float *got = to_f32(b1, T * Ns[i], act);
                    for (int64_t j = 0; j < T * Ns[i]; j++)
                        if (isnan(got[j]))
                            fail_msg("%s: part %d element %lld not written", name, i, (long long)j);
                    free(got);
                    free(b1);
                    free(b2);
                }
                /* gate (w[0]) / up (w[3]) with the silu against matmul, matmul, silu_mul */
                void *sd = out_nan(g, T * Ns[0], act), *ud = out_nan(g, T * Ns[0], act);
                anvil_tensor st = anvil_tensor_2d(act, T, Ns[0], sd), ut = anvil_tensor_2d(act, T, Ns[0], ud);
                OK_OR_FAIL(g->ops->matmul_silu_mul(g, &xt, &w[0].d, NULL, &w[3].d, NULL, &ot[0], &ut, &st),
                           name);
                OK_OR_FAIL(g->ops->matmul(g, &xt, &w[0].d, NULL, &ot[3]), name);
                OK_OR_FAIL(g->ops->matmul(g, &xt, &w[3].d, NULL, &ut), name);
                void *sep = out_nan(g, T * Ns[0], act);
                anvil_tensor o3 = anvil_tensor_2d(act, T, Ns[0], sep);
                OK_OR_FAIL(g->ops->silu_mul(g, &ot[3], &ut, &o3), name);
                uint16_t *b1 = get_bits(g, sd, T * Ns[0]), *b2 = get_bits(g, sep, T * Ns[0]);
                if (memcmp(b1, b2, (size_t)(T * Ns[0]) * 2) != 0)
                    fail_msg("%s: gate/up with the silu differs from matmul, matmul, silu_mul", name);
                free(b1);
                free(b2);
                g->ops->free(g, sep);
                g->ops->free(g, sd);
                g->ops->free(g, ud);
                for (int i = 0; i < 6; i++)
                    g->ops->free(g, o[i]);
                g->ops->free(g, xd);
                free(x);
            }
            for (int i = 0; i < 4; i++)
                free_weight(g, &w[i]);
        }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stream_matmul),
        cmocka_unit_test(test_stream_fused),
    };
    return anvil_test_group_result(cmocka_run_group_tests(tests, setup, teardown),
                                   sizeof tests / sizeof tests[0]);
}
