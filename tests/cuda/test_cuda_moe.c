/*
 * The CUDA moe op (cuda_moe.c / cuda_moe.cu / cuda_moe_mma.cu) against the
 * CPU's scalar reference (anvil_cpu_ref_moe), in each activation dtype,
 * under every value of the knob moe_loop: 0 automatic, 1 the loop over
 * experts, 2 the grouped launches (the tensor-core GEMM where it applies,
 * else the GEMV for at most 8 tokens and the SIMT GEMM above), 3 the
 * grouped launches on CUDA cores (GEMV, SIMT), and where the tensor-core
 * GEMM applies, 2 with its row tiles forced to 16, 32 and 64 rows and
 * with its down GEMM split in two halves of K (knob moe_split_k 1, 2):
 *   f32:        max |cuda - ref| <= 2e-5 * max |ref|
 *   bf16, f16:  max |cuda - ref| <= 2e-2 * max |ref| (the expert rows, and
 *               on tensor cores the silu products, are rounded to the
 *               activation dtype)
 * Cases with a routing forced through x and a one-hot router give chosen
 * rows per expert (0, 1, 15, 17, 64, 100: empty experts, partial and
 * several row tiles of each height 16, 32, 64), H and I off the tensor-core
 * GEMM's 64-wide steps and column tiles, Qwen-MoE-like many small experts
 * (E 60, I 1408, top 4, a shared expert) and Mixtral-like (E 8, top 2);
 * there the tensor-core GEMM must apply (asserted) where weights and
 * activations share bf16 or f16. Outputs are poisoned with NaN first and
 * followed by guard bytes. Skips without a GPU.
 *
 * `test_cuda_moe --perf`: on a Mixtral-8x7B layer (H 4096, I 14336, 8
 * experts, top 2, bf16) at 1, 8, 16, 64 and 256 tokens, in one run: the
 * grouped GEMM on tensor cores (knob 2; and with row tiles of 16, 32, 64,
 * and with the down GEMM not split / split in K),
 * the grouped GEMV (knob 3, at most 8 tokens), the SIMT grouped GEMM
 * (knob 3, above 8 tokens), the loop over experts (knob 1) and the
 * automatic choice (0): time per call, and for the tensor-core GEMM its
 * bandwidth over the bytes of the experts read against a 1 GiB
 * device-to-device copy and its FLOP rate against a large cuBLASLt GEMM,
 * both measured in the same run (the must-show), and its output's
 * relative difference from the loop's.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "anvil/dtype.h"
#include "backend/backend.h"
#include "backend/cpu/cpu_reference.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_internal.h"
#include "backend/cuda/cuda_moe_schedule.h"
#include "core/tensor.h"
#include "testutil.h"

#define GUARD_BYTES 256
#define GUARD_BYTE 0xA5

static int have_gpu(void)
{
    static int have = -1;
    if (have < 0)
        have = anvil_cuda_device_count() > 0;
    return have;
}

/* n random floats times scale, rounded to dt */
static float *rand_floats(uint64_t *rng, int64_t n, float scale, anvil_dtype dt)
{
    float *f = malloc((size_t)n * sizeof *f);
    assert_non_null(f);
    for (int64_t i = 0; i < n; i++)
        f[i] = anvil_test_randf(rng) * scale;
    if (dt != ANVIL_DTYPE_F32) {
        void *tmp = malloc((size_t)n * 2);
        assert_non_null(tmp);
        anvil_convert_from_f32(dt, f, tmp, n);
        anvil_convert_to_f32(dt, tmp, f, n);
        free(tmp);
    }
    return f;
}

/* A device buffer of bytes (0xFF: NaN) followed by guard bytes. */
static void *dev_alloc(anvil_backend *be, size_t bytes)
{
    void *d = NULL;
    assert_int_equal(be->ops->alloc(be, bytes + GUARD_BYTES, &d), ANVIL_OK);
    unsigned char *h = malloc(bytes + GUARD_BYTES);
    assert_non_null(h);
    memset(h, 0xFF, bytes);
    memset(h + bytes, GUARD_BYTE, GUARD_BYTES);
    assert_int_equal(be->ops->upload(be, d, h, bytes + GUARD_BYTES), ANVIL_OK);
    free(h);
    return d;
}

static void *dev_floats(anvil_backend *be, const float *f, int64_t n, anvil_dtype dt)
{
    const size_t bytes = (size_t)n * anvil_dtype_size(dt);
    void *d = dev_alloc(be, bytes), *h = malloc(bytes);
    assert_non_null(h);
    anvil_convert_from_f32(dt, f, h, n);
    assert_int_equal(be->ops->upload(be, d, h, bytes), ANVIL_OK);
    free(h);
    return d;
}

#define MAX_FORCED 16
typedef struct moe_case {
    int64_t T, H;
    int32_t E, k;
    int64_t I, Is;
    int norm;
    anvil_dtype wdt;   /* ignored when w_as_act */
    int w_as_act;      /* weights in the activation dtype (the tensor-core GEMM's case) */
    int32_t forced[MAX_FORCED]; /* n_forced > 0: the rows each expert gets (sum T k, each <= T) */
    int32_t n_forced;
} moe_case;

static anvil_dtype w_dtype(const moe_case *c, anvil_dtype act) { return c->w_as_act ? act : c->wdt; }

/* A routing with forced[e] rows for expert e: the sorted list of experts
 * (forced[e] copies of e), token t taking entries t, t + T, .., t + (k-1) T
 * (distinct: no expert has more than T entries, so two entries T apart
 * are different experts). The router is one-hot (row e: 1 at column e),
 * so a token's logits are x[t, 0..E): its j-th expert gets 3 - 0.25 j, the
 * rest stay in [-1, 1), far below. */
static void force_routing(const moe_case *c, float *x, float *router)
{
    const int64_t T = c->T, H = c->H;
    const int32_t E = c->E, k = c->k;
    assert_true(c->n_forced == E && H >= E);
    int32_t *list = malloc((size_t)(T * k) * sizeof *list);
    assert_non_null(list);
    int64_t at = 0;
    for (int32_t e = 0; e < E; e++) {
        assert_true(c->forced[e] <= T);
        for (int32_t i = 0; i < c->forced[e]; i++)
            list[at++] = e;
    }
    assert_int_equal(at, T * k);
    for (int64_t t = 0; t < T; t++) {
        for (int32_t e = 0; e < E; e++)
            x[t * H + e] *= 0.5f; /* exact in every dtype */
        for (int32_t j = 0; j < k; j++)
            x[t * H + list[t + j * T]] = 3.0f - 0.25f * (float)j;
    }
    for (int64_t i = 0; i < (int64_t)E * H; i++)
        router[i] = (i % H == i / H) ? 1.0f : 0.0f;
    free(list);
}

/* The host side of a case: f32 values (rounded to their dtypes). */
typedef struct host_moe {
    moe_case c;
    float *x, *router, *gu, *down, *sgu, *sdown, *sgate;
} host_moe;

static host_moe host_new(const moe_case *c, anvil_dtype act, uint64_t *rng)
{
    host_moe h = {.c = *c};
    const int64_t H = c->H, E = c->E, I = c->I, Is = c->Is;
    const anvil_dtype wdt = w_dtype(c, act);
    h.c.wdt = wdt;
    /* weights scaled by 1 / sqrt(fan-in) so that products stay O(1) at any size */
    const float sh = 1.0f / sqrtf((float)H), si = 1.0f / sqrtf((float)I);
    h.x = rand_floats(rng, c->T * H, 1.0f, act);
    h.router = rand_floats(rng, E * H, 1.0f, wdt);
    h.gu = rand_floats(rng, E * 2 * I * H, 2.4f * sh, wdt);
    h.down = rand_floats(rng, E * H * I, 2.4f * si, wdt);
    if (Is > 0) {
        h.sgu = rand_floats(rng, 2 * Is * H, 2.4f * sh, wdt);
        h.sdown = rand_floats(rng, H * Is, 2.4f / sqrtf((float)Is), wdt);
        h.sgate = rand_floats(rng, H, 2.4f * sh, wdt);
    }
    if (c->n_forced > 0)
        force_routing(c, h.x, h.router);
    return h;
}

static void host_free(host_moe *h)
{
    free(h->x);
    free(h->router);
    free(h->gu);
    free(h->down);
    free(h->sgu);
    free(h->sdown);
    free(h->sgate);
}

/* The reference on the host values. */
static float *reference(const host_moe *h)
{
    const moe_case *c = &h->c;
    anvil_moe_scratch L;
    assert_int_equal(anvil_moe_scratch_layout(c->T, c->H, c->E, c->k, c->I, c->Is, &L), ANVIL_OK);
    float *out = malloc((size_t)(c->T * c->H) * sizeof *out);
    void *scratch = malloc(L.bytes);
    assert_true(out && scratch);
    anvil_tensor x = anvil_tensor_2d(ANVIL_DTYPE_F32, c->T, c->H, h->x);
    anvil_tensor r = anvil_tensor_2d(ANVIL_DTYPE_F32, c->E, c->H, h->router);
    anvil_tensor gu = anvil_tensor_2d(ANVIL_DTYPE_F32, c->E * 2 * c->I, c->H, h->gu);
    anvil_tensor dn = anvil_tensor_2d(ANVIL_DTYPE_F32, c->E * c->H, c->I, h->down);
    anvil_tensor sgu = anvil_tensor_2d(ANVIL_DTYPE_F32, 2 * c->Is, c->H, h->sgu);
    anvil_tensor sdn = anvil_tensor_2d(ANVIL_DTYPE_F32, c->H, c->Is, h->sdown);
    anvil_tensor sg = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, c->H, h->sgate);
    anvil_tensor o = anvil_tensor_2d(ANVIL_DTYPE_F32, c->T, c->H, out);
    anvil_moe_args a = {.x = &x, .router = &r, .gate_up = &gu, .down = &dn,
                        .shared_gate_up = c->Is > 0 ? &sgu : NULL, .shared_down = c->Is > 0 ? &sdn : NULL,
                        .shared_gate = c->Is > 0 ? &sg : NULL, .out = &o, .n_experts = c->E, .top_k = c->k,
                        .inter = c->I, .shared_inter = c->Is, .norm_topk_prob = c->norm,
                        .scratch = scratch, .scratch_bytes = L.bytes};
    if (anvil_cpu_ref_moe(&a) != ANVIL_OK)
        fail_msg("reference: %s", anvil_last_error());
    free(scratch);
    return out;
}

/* The device side of a case on one backend. */
typedef struct dev_moe {
    anvil_tensor x, router, gu, down, sgu, sdown, sgate, out;
    void *scratch;
    size_t scratch_bytes;
} dev_moe;

static dev_moe dev_new(anvil_backend *be, const host_moe *h)
{
    const moe_case *c = &h->c;
    const anvil_dtype act = be->ops->act_dtype, w = h->c.wdt;
    dev_moe d;
    memset(&d, 0, sizeof d);
    d.x = anvil_tensor_2d(act, c->T, c->H, dev_floats(be, h->x, c->T * c->H, act));
    d.router = anvil_tensor_2d(w, c->E, c->H, dev_floats(be, h->router, c->E * c->H, w));
    d.gu = anvil_tensor_2d(w, c->E * 2 * c->I, c->H, dev_floats(be, h->gu, c->E * 2 * c->I * c->H, w));
    d.down = anvil_tensor_2d(w, c->E * c->H, c->I, dev_floats(be, h->down, c->E * c->H * c->I, w));
    if (c->Is > 0) {
        d.sgu = anvil_tensor_2d(w, 2 * c->Is, c->H, dev_floats(be, h->sgu, 2 * c->Is * c->H, w));
        d.sdown = anvil_tensor_2d(w, c->H, c->Is, dev_floats(be, h->sdown, c->H * c->Is, w));
        d.sgate = anvil_tensor_2d(w, 1, c->H, dev_floats(be, h->sgate, c->H, w));
    }
    d.out = anvil_tensor_2d(act, c->T, c->H, dev_alloc(be, (size_t)(c->T * c->H) * anvil_dtype_size(act)));
    anvil_moe_scratch L;
    assert_int_equal(anvil_moe_scratch_layout(c->T, c->H, c->E, c->k, c->I, c->Is, &L), ANVIL_OK);
    d.scratch = dev_alloc(be, L.bytes);
    d.scratch_bytes = L.bytes;
    return d;
}

static void dev_free(anvil_backend *be, dev_moe *d)
{
    anvil_tensor *all[] = {&d->x, &d->router, &d->gu, &d->down, &d->sgu, &d->sdown, &d->sgate, &d->out};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (all[i]->data != NULL)
            be->ops->free(be, all[i]->data);
    be->ops->free(be, d->scratch);
}

static anvil_moe_args dev_args(dev_moe *d, const moe_case *c)
{
    anvil_moe_args a = {.x = &d->x, .router = &d->router, .gate_up = &d->gu, .down = &d->down,
                        .shared_gate_up = c->Is > 0 ? &d->sgu : NULL, .shared_down = c->Is > 0 ? &d->sdown : NULL,
                        .shared_gate = c->Is > 0 ? &d->sgate : NULL, .out = &d->out, .n_experts = c->E,
                        .top_k = c->k, .inter = c->I, .shared_inter = c->Is, .norm_topk_prob = c->norm,
                        .scratch = d->scratch, .scratch_bytes = d->scratch_bytes};
    return a;
}

static void set_loop(anvil_backend *be, int loop, int tile_rows, int split_k)
{
    anvil_cuda_knobs k;
    memset(&k, 0, sizeof k);
    k.moe_loop = loop;
    k.moe_tile_rows = tile_rows;
    k.moe_split_k = split_k;
    assert_int_equal(anvil_cuda_set_knobs(be, &k), ANVIL_OK);
}

static void expect_close(const char *what, const float *got, const float *want, int64_t n, double tol)
{
    double max_ref = 0, max_err = 0;
    int64_t worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double err = isnan(got[i]) ? INFINITY : fabs((double)got[i] - want[i]);
        max_ref = fmax(max_ref, fabs(want[i]));
        if (err > max_err || (i == 0 && err == INFINITY)) {
            max_err = err;
            worst = i;
        }
    }
    if (!(max_err <= tol * fmax(max_ref, 1e-6)))
        fail_msg("%s: max error %.3g at %lld (got %g, want %g), bound %.3g", what, max_err, (long long)worst,
                 got[worst], want[worst], tol * fmax(max_ref, 1e-6));
}

#define BF ANVIL_DTYPE_BF16
#define F16 ANVIL_DTYPE_F16
#define F32 ANVIL_DTYPE_F32
static const moe_case cases[] = {
    {1, 64, 8, 2, 96, 0, 1, BF, 0, {0}, 0},   /* decode: the GEMV */
    {3, 72, 6, 3, 40, 24, 0, F32, 0, {0}, 0}, /* a shared expert, odd sizes */
    {8, 64, 8, 2, 96, 48, 0, BF, 0, {0}, 0},  /* the GEMV's largest */
    {5, 36, 4, 2, 20, 0, 1, F16, 0, {0}, 0},  /* the GEMV without 16-byte loads (K not a multiple of 8) */
    {9, 64, 8, 2, 96, 0, 1, F16, 0, {0}, 0},  /* the grouped GEMM's smallest */
    {70, 72, 8, 2, 40, 24, 1, BF, 0, {0}, 0}, /* several tiles, partial ones */
    {33, 48, 16, 4, 33, 0, 0, F32, 0, {0}, 0},
    /* weights in the activation dtype: the tensor-core GEMM where bf16/f16.
     * Forced rows per expert 0, 1, 15, 17, 64, 100; H 200 and I 136: a
     * partial 64-wide K step (8 columns) and column tile in both GEMMs */
    {4, 64, 8, 2, 96, 0, 1, F32, 1, {0}, 0},  /* few tokens on tensor cores */
    {100, 200, 8, 2, 136, 0, 1, F32, 1, {0, 1, 15, 17, 64, 100, 3, 0}, 8},          /* 25 rows an expert: bm 64 */
    {100, 200, 16, 2, 136, 24, 0, F32, 1, {0, 1, 15, 17, 64, 100, 1, 0, 0, 2}, 16}, /* 12.5: bm 32 */
    {100, 200, 4, 2, 136, 0, 1, F32, 1, {17, 100, 64, 19}, 4},                       /* 50: bm 64 */
    {256, 256, 8, 2, 512, 0, 1, F32, 1, {0}, 0}, /* Mixtral-like: 8 experts, top 2, random routing */
    {64, 128, 60, 4, 1408, 256, 0, F32, 1, {0}, 0}, /* Qwen-MoE-like: 60 small experts, top 4, a shared one */
    {24, 40, 4, 2, 24, 0, 1, F32, 1, {0}, 0}, /* H, I multiples of 8 below one step */
};
#undef BF
#undef F16
#undef F32

static void test_moe_vs_reference(void **state)
{
    (void)state;
    if (!have_gpu())
        skip();
    const anvil_dtype acts[] = {ANVIL_DTYPE_F32, ANVIL_DTYPE_BF16, ANVIL_DTYPE_F16};
    uint64_t rng = 0x3e3e;
    for (size_t ai = 0; ai < 3; ai++) {
        anvil_backend *be;
        if (anvil_backend_cuda_create(0, acts[ai], &be) != ANVIL_OK)
            fail_msg("cuda backend: %s", anvil_last_error());
        for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
            const moe_case *c = &cases[ci];
            host_moe h = host_new(c, acts[ai], &rng);
            float *want = reference(&h);
            /* variants 0..3: the knob moe_loop; 4..6: grouped with row tiles of 16, 32, 64 forced; 7, 8:
             * the down GEMM split in K where it has few blocks (every small case) / always */
            const int mma_case = c->w_as_act && acts[ai] != ANVIL_DTYPE_F32;
            for (int v = 0; v < (mma_case ? 9 : 4); v++) {
                static const char *names[] = {"automatic",          "loop",
                                              "grouped",            "cuda cores",
                                              "tensor cores bm 16", "tensor cores bm 32",
                                              "tensor cores bm 64", "tensor cores, K split where few blocks",
                                              "tensor cores, K split"};
                const int knob = v < 4 ? v : 2, tile_rows = v < 4 || v > 6 ? 0 : 16 << (v - 4);
                const int split_k = v == 7 ? 1 : v == 8 ? 2 : 0;
                char what[240];
                snprintf(what, sizeof what, "moe act=%s T=%lld H=%lld E=%d k=%d I=%lld Is=%lld norm=%d w=%s%s %s",
                         anvil_dtype_name(acts[ai]), (long long)c->T, (long long)c->H, c->E, c->k, (long long)c->I,
                         (long long)c->Is, c->norm, anvil_dtype_name(h.c.wdt), c->n_forced ? " forced" : "",
                         names[v]);
                set_loop(be, knob, tile_rows, split_k);
                dev_moe d = dev_new(be, &h);
                anvil_moe_args a = dev_args(&d, c);
                if (mma_case) {
                    /* the case is the tensor-core GEMM's: it must take it */
                    anvil_cuda_backend *cb = anvil_cuda_impl(be);
                    if (!anvil_cuda_moe_mma_ok(acts[ai], h.c.wdt, c->H, c->I, d.x.data, d.gu.data, d.down.data,
                                               cb->smem_optin))
                        fail_msg("%s: the tensor-core GEMM does not apply", what);
                }
                if (be->ops->moe(be, &a) != ANVIL_OK || be->ops->synchronize(be) != ANVIL_OK)
                    fail_msg("%s: %s", what, anvil_last_error());
                const int64_t n = c->T * c->H;
                const size_t bytes = (size_t)n * anvil_dtype_size(acts[ai]);
                unsigned char *raw = malloc(bytes + GUARD_BYTES);
                float *got = malloc((size_t)n * sizeof *got);
                assert_true(raw && got);
                assert_int_equal(be->ops->download(be, raw, d.out.data, bytes + GUARD_BYTES), ANVIL_OK);
                for (size_t g = 0; g < GUARD_BYTES; g++)
                    if (raw[bytes + g] != GUARD_BYTE)
                        fail_msg("%s: guard byte %zu overwritten", what, g);
                anvil_convert_to_f32(acts[ai], raw, got, n);
                expect_close(what, got, want, n, acts[ai] == ANVIL_DTYPE_F32 ? 2e-5 : 2e-2);
                free(raw);
                free(got);
                dev_free(be, &d);
            }
            set_loop(be, 0, 0, 0);
            free(want);
            host_free(&h);
        }
        anvil_backend_free(be);
    }
}

static void test_moe_errors(void **state)
{
    (void)state;
    if (!have_gpu())
        skip();
    anvil_backend *be;
    assert_int_equal(anvil_backend_cuda_create(0, ANVIL_DTYPE_BF16, &be), ANVIL_OK);
    uint64_t rng = 9;
    const moe_case c = {4, 32, 4, 2, 16, 0, 1, ANVIL_DTYPE_BF16, 0, {0}, 0};
    host_moe h = host_new(&c, ANVIL_DTYPE_BF16, &rng);
    dev_moe d = dev_new(be, &h);
    anvil_moe_args a = dev_args(&d, &c);
    a.scratch_bytes = 16;
    assert_int_equal(be->ops->moe(be, &a), ANVIL_ERR_INVALID_ARG);
    a = dev_args(&d, &c);
    a.top_k = 5;
    assert_int_equal(be->ops->moe(be, &a), ANVIL_ERR_INVALID_ARG);
    anvil_tensor xf = d.x;
    xf.dtype = ANVIL_DTYPE_F32; /* not the backend's activations */
    a = dev_args(&d, &c);
    a.x = &xf;
    assert_int_not_equal(be->ops->moe(be, &a), ANVIL_OK);
    dev_free(be, &d);
    host_free(&h);
    anvil_backend_free(be);
}

/* ---------------------------------------------------------------- --perf */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ms per call of the moe op under knob moe_loop `knob` (moe_tile_rows
 * `tile`, moe_split_k `split`) after 3 warm-up calls; < 0 on error */
static double time_moe_split(anvil_backend *be, anvil_moe_args *a, int knob, int tile, int split, int iters)
{
    anvil_cuda_knobs kn;
    memset(&kn, 0, sizeof kn);
    kn.moe_loop = knob;
    kn.moe_tile_rows = tile;
    kn.moe_split_k = split;
    if (anvil_cuda_set_knobs(be, &kn) != ANVIL_OK)
        return -1;
    for (int w = 0; w < 3; w++)
        if (be->ops->moe(be, a) != ANVIL_OK)
            return -1;
    if (be->ops->synchronize(be) != ANVIL_OK)
        return -1;
    const double t0 = now_s();
    for (int it = 0; it < iters; it++)
        if (be->ops->moe(be, a) != ANVIL_OK)
            return -1;
    if (be->ops->synchronize(be) != ANVIL_OK)
        return -1;
    return (now_s() - t0) * 1e3 / iters;
}

static double time_moe(anvil_backend *be, anvil_moe_args *a, int knob, int tile, int iters)
{
    return time_moe_split(be, a, knob, tile, 0, iters);
}

/* max |a - b| / max |b| over n bf16 values on the device */
static double rel_diff(anvil_backend *be, const void *da, const void *db, int64_t n)
{
    uint16_t *ha = malloc((size_t)n * 2), *hb = malloc((size_t)n * 2);
    if (!ha || !hb || be->ops->download(be, ha, da, (size_t)n * 2) || be->ops->download(be, hb, db, (size_t)n * 2)) {
        free(ha);
        free(hb);
        return INFINITY;
    }
    double md = 0, mb = 0;
    for (int64_t i = 0; i < n; i++) {
        const double x = anvil_bf16_to_f32(ha[i]), y = anvil_bf16_to_f32(hb[i]);
        md = fmax(md, isnan(x) || isnan(y) ? INFINITY : fabs(x - y));
        mb = fmax(mb, fabs(y));
    }
    free(ha);
    free(hb);
    return md / fmax(mb, 1e-30);
}

static int perf_main(void)
{
    if (!have_gpu()) {
        fprintf(stderr, "no CUDA device\n");
        return 77;
    }
    anvil_backend *be;
    if (anvil_backend_cuda_create(0, ANVIL_DTYPE_BF16, &be) != ANVIL_OK) {
        fprintf(stderr, "%s\n", anvil_last_error());
        return 1;
    }
    anvil_cuda_backend *cbk = anvil_cuda_impl(be);
    const int64_t Ts[] = {1, 8, 16, 64, 256};
    const int64_t H = 4096, I = 14336;
    const int32_t E = 8, k = 2;
    /* weights: uploaded once from random bytes in bf16's range (not f32 copies: 2.8 GB) */
    const int64_t n_gu = (int64_t)E * 2 * I * H, n_dn = (int64_t)E * H * I;
    uint16_t *hw = malloc((size_t)n_gu * 2);
    uint64_t rng = 77;
    for (int64_t i = 0; i < n_gu; i++)
        hw[i] = anvil_f32_to_bf16(anvil_test_randf(&rng) * 0.02f);
    void *gu = NULL, *dn = NULL, *router = NULL;
    if (be->ops->alloc(be, (size_t)n_gu * 2, &gu) != ANVIL_OK || be->ops->alloc(be, (size_t)n_dn * 2, &dn) != ANVIL_OK ||
        be->ops->alloc(be, (size_t)E * H * 2, &router) != ANVIL_OK || be->ops->upload(be, gu, hw, (size_t)n_gu * 2) ||
        be->ops->upload(be, dn, hw + 7, (size_t)n_dn * 2) || be->ops->upload(be, router, hw + 3, (size_t)E * H * 2)) {
        fprintf(stderr, "%s\n", anvil_last_error());
        return 1;
    }
    /* the ceilings, same run: a 1 GiB device-to-device copy (bytes read +
     * written) and a cuBLASLt GEMM of 4096 rows through the first expert's
     * gate (4096 x 14336 x 4096, the backend's own matmul) */
    double copy_gbs = 0, gemm_tflops = 0;
    {
        const size_t cb = (size_t)1 << 30;
        void *src = NULL, *dst = NULL;
        if (be->ops->alloc(be, cb, &src) != ANVIL_OK || be->ops->alloc(be, cb, &dst) != ANVIL_OK) {
            fprintf(stderr, "%s\n", anvil_last_error());
            return 1;
        }
        cudaMemcpyAsync(dst, src, cb, cudaMemcpyDeviceToDevice, cbk->stream);
        be->ops->synchronize(be);
        const double t0 = now_s();
        for (int i = 0; i < 10; i++)
            cudaMemcpyAsync(dst, src, cb, cudaMemcpyDeviceToDevice, cbk->stream);
        be->ops->synchronize(be);
        copy_gbs = 2.0 * (double)cb * 10 / (now_s() - t0) / 1e9;
        /* the GEMM's operands in the copy buffers: x [4096, 4096] from the weights' bytes, out [4096, 14336] */
        const int64_t M = 4096;
        if (be->ops->upload(be, src, hw, (size_t)(M * H) * 2) != ANVIL_OK) {
            fprintf(stderr, "%s\n", anvil_last_error());
            return 1;
        }
        anvil_tensor gx = anvil_tensor_2d(ANVIL_DTYPE_BF16, M, H, src);
        anvil_tensor gw = anvil_tensor_2d(ANVIL_DTYPE_BF16, I, H, gu);
        anvil_tensor go = anvil_tensor_2d(ANVIL_DTYPE_BF16, M, I, dst);
        for (int i = 0; i < 3; i++)
            anvil_cuda_op_matmul(be, &gx, &gw, NULL, &go);
        be->ops->synchronize(be);
        const double t1 = now_s();
        for (int i = 0; i < 10; i++)
            if (anvil_cuda_op_matmul(be, &gx, &gw, NULL, &go) != ANVIL_OK) {
                fprintf(stderr, "%s\n", anvil_last_error());
                return 1;
            }
        be->ops->synchronize(be);
        gemm_tflops = 2.0 * (double)M * (double)I * (double)H * 10 / (now_s() - t1) / 1e12;
        be->ops->free(be, src);
        be->ops->free(be, dst);
    }
    printf("{\"bench\": \"moe\", \"H\": %lld, \"I\": %lld, \"experts\": %d, \"top_k\": %d, \"dtype\": \"bf16\", "
           "\"copy_GBps\": %.1f, \"cublaslt_gemm_TFLOPs\": %.1f}\n",
           (long long)H, (long long)I, E, k, copy_gbs, gemm_tflops);
    for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
        const int64_t T = Ts[ti];
        anvil_moe_scratch L;
        anvil_moe_scratch_layout(T, H, E, k, I, 0, &L);
        void *x = NULL, *out = NULL, *out_loop = NULL, *scratch = NULL;
        if (be->ops->alloc(be, (size_t)(T * H) * 2, &x) || be->ops->alloc(be, (size_t)(T * H) * 2, &out) ||
            be->ops->alloc(be, (size_t)(T * H) * 2, &out_loop) || be->ops->alloc(be, L.bytes, &scratch) ||
            be->ops->upload(be, x, hw + 12345, (size_t)(T * H) * 2)) {
            fprintf(stderr, "%s\n", anvil_last_error());
            return 1;
        }
        anvil_tensor tx = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, H, x), to = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, H, out);
        anvil_tensor tr = anvil_tensor_2d(ANVIL_DTYPE_BF16, E, H, router);
        anvil_tensor tgu = anvil_tensor_2d(ANVIL_DTYPE_BF16, (int64_t)E * 2 * I, H, gu);
        anvil_tensor tdn = anvil_tensor_2d(ANVIL_DTYPE_BF16, (int64_t)E * H, I, dn);
        anvil_moe_args a = {.x = &tx, .router = &tr, .gate_up = &tgu, .down = &tdn, .out = &to, .n_experts = E,
                            .top_k = k, .inter = I, .norm_topk_prob = 1, .scratch = scratch, .scratch_bytes = L.bytes};
        const int iters = 20;
        /* knob 2 the tensor-core GEMM, 3 the GEMV (at most 8 tokens) or the SIMT GEMM (above), 1 the loop, 0 auto */
        const double mma_ms = time_moe(be, &a, 2, 0, iters);
        double tile_ms[3]; /* the tensor-core GEMM with row tiles of 16, 32, 64 */
        for (int i = 0; i < 3; i++)
            tile_ms[i] = time_moe(be, &a, 2, 16 << i, iters);
        /* the down GEMM never / always split in two halves of K */
        const double nosplit_ms = time_moe_split(be, &a, 2, 0, 0, iters);
        const double split_ms = time_moe_split(be, &a, 2, 0, 2, iters);
        int32_t active[8 + 1];
        be->ops->download(be, active, (char *)scratch + L.active, sizeof active);
        const double gemv_ms = T <= 8 ? time_moe(be, &a, 3, 0, iters) : -1;
        const double simt_ms = T > 8 ? time_moe(be, &a, 3, 0, iters / 4) : -1;
        to.data = out_loop;
        const double loop_ms = time_moe(be, &a, 1, 0, iters);
        to.data = out;
        const double auto_ms = time_moe(be, &a, 0, 0, iters);
        if (mma_ms < 0 || nosplit_ms < 0 || split_ms < 0 || tile_ms[0] < 0 || tile_ms[1] < 0 || tile_ms[2] < 0 ||
            loop_ms < 0 || auto_ms < 0 ||            (T <= 8 && gemv_ms < 0) || (T > 8 && simt_ms < 0)) {
            fprintf(stderr, "%s\n", anvil_last_error());
            return 1;
        }
        /* out holds the automatic choice's result; the tensor-core GEMM's again for the comparison */
        time_moe(be, &a, 2, 0, 1);
        const double diff = rel_diff(be, out, out_loop, T * H);
        const int32_t n_active = active[E];
        const double bytes = (double)n_active * 3.0 * (double)H * (double)I * 2.0;
        const double flops = 2.0 * (double)(T * k) * 3.0 * (double)H * (double)I;
        const double gbs = bytes / (mma_ms * 1e-3) / 1e9, tfl = flops / (mma_ms * 1e-3) / 1e12;
        const double loop_gbs = bytes / (loop_ms * 1e-3) / 1e9;
        char gemv_s[32] = "null", simt_s[32] = "null"; /* not run: null */
        if (gemv_ms >= 0)
            snprintf(gemv_s, sizeof gemv_s, "%.4f", gemv_ms);
        if (simt_ms >= 0)
            snprintf(simt_s, sizeof simt_s, "%.4f", simt_ms);
        printf("{\"tokens\": %lld, \"active_experts\": %d, \"tile_rows\": %d, \"mma_ms\": %.4f, "
               "\"mma_ms_tiles_16_32_64\": [%.4f, %.4f, %.4f], \"mma_ms_split_k_never_always\": [%.4f, %.4f], "
               "\"gemv_ms\": %s, \"simt_ms\": %s, "
               "\"loop_ms\": %.4f, \"auto_ms\": %.4f, \"loop_over_mma\": %.2f, \"mma_GBps_over_read\": %.1f, "
               "\"mma_pct_of_copy\": %.1f, \"mma_TFLOPs\": %.1f, \"mma_pct_of_gemm\": %.1f, "
               "\"loop_pct_of_copy\": %.1f, \"mma_vs_loop_rel_diff\": %.2e}\n",
               (long long)T, n_active, moe_tile_rows(T * k, E), mma_ms, tile_ms[0], tile_ms[1], tile_ms[2], nosplit_ms,
               split_ms, gemv_s,
               simt_s, loop_ms, auto_ms, loop_ms / mma_ms, gbs,
               100.0 * gbs / copy_gbs, tfl, 100.0 * tfl / gemm_tflops, 100.0 * loop_gbs / copy_gbs, diff);
        be->ops->free(be, x);
        be->ops->free(be, out);
        be->ops->free(be, out_loop);
        be->ops->free(be, scratch);
    }
    be->ops->free(be, gu);
    be->ops->free(be, dn);
    be->ops->free(be, router);
    free(hw);
    anvil_backend_free(be);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--perf") == 0)
        return perf_main();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_moe_vs_reference),
        cmocka_unit_test(test_moe_errors),
    };
    return anvil_test_group_result(cmocka_run_group_tests(tests, NULL, NULL), sizeof tests / sizeof tests[0]);
}
