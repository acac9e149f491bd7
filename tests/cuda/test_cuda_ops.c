/*
 * CUDA ops against the CPU backend, op by op, on random inputs at several
 * shapes (odd sizes, head_dim 8..256, GQA ratios 1/3/4/8/32, scattered
 * block tables, sequences off the block size, mixed prefill + decode
 * batches, sliding windows), in each activation dtype:
 *   f32 (exact mode): max |cuda - cpu| <= 2e-5 * max |cpu| (1e-5 elementwise)
 *   bf16, f16:        max |cuda - cpu| <= 1e-2 * max |cpu|
 * Both sides see the same inputs (rounded to the activation dtype first).
 * Outputs are poisoned with NaN before each op (an unwritten element
 * fails) and followed by guard bytes that must survive.
 *
 * Every test skips when no CUDA device is present (CI compiles this with
 * nvcc but has no GPU), except the one that checks that creating the
 * backend without a device fails cleanly.
 *
 * ANVIL_TEST_QUICK=1 keeps the cases small (for compute-sanitizer runs).
 * `test_cuda_ops --perf` prints timings instead (no assertions).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "anvil/dtype.h"
#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_internal.h"
#include "core/tensor.h"
#include "testutil.h"

#define GUARD_BYTES 256
#define GUARD_BYTE 0xA5

static const anvil_dtype act_dtypes[] = {ANVIL_DTYPE_F32, ANVIL_DTYPE_BF16, ANVIL_DTYPE_F16};
#define N_ACT 3

typedef struct fixture {
    anvil_backend *cpu;
    anvil_backend *gpu[N_ACT]; /* one per act dtype */
    uint64_t rng;
    int quick;
} fixture;

static int have_gpu(void)
{
    static int have = -1;
    if (have < 0)
        have = anvil_cuda_device_count() > 0;
    return have;
}

#define NEED_GPU()        \
    do {                  \
        if (!have_gpu())  \
            skip();       \
    } while (0)

static double tol_for(anvil_dtype act, int elementwise)
{
    if (act == ANVIL_DTYPE_F32)
        return elementwise ? 1e-5 : 2e-5;
    return 1e-2;
}

/* ---------------------------------------------------------------- host data */

/* n random floats in [-scale, scale), rounded to dt (so both backends see
 * the same values). */
static float *rand_floats(uint64_t *rng, int64_t n, float scale, anvil_dtype dt)
{
    float *f = malloc((size_t)(n > 0 ? n : 1) * sizeof *f);
    assert_non_null(f);
    for (int64_t i = 0; i < n; i++)
        f[i] = anvil_test_randf(rng) * scale;
    if (dt != ANVIL_DTYPE_F32 && n > 0) {
        void *tmp = malloc((size_t)n * 2);
        assert_non_null(tmp);
        anvil_convert_from_f32(dt, f, tmp, n);
        anvil_convert_to_f32(dt, tmp, f, n);
        free(tmp);
    }
    return f;
}

/* f as dt (a new buffer). */
static void *to_dtype(const float *f, int64_t n, anvil_dtype dt)
{
    void *p = malloc((size_t)(n > 0 ? n : 1) * anvil_dtype_size(dt));
    assert_non_null(p);
    anvil_convert_from_f32(dt, f, p, n);
    return p;
}

/* ---------------------------------------------------------------- device buffers */

/* A device buffer of `bytes` (poisoned with 0xFF: NaN in every float dtype)
 * followed by GUARD_BYTES of GUARD_BYTE. */
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

/* A device copy of n floats as dt. */
static void *dev_upload_floats(anvil_backend *be, const float *f, int64_t n, anvil_dtype dt)
{
    size_t bytes = (size_t)n * anvil_dtype_size(dt);
    void *d = dev_alloc(be, bytes);
    void *h = to_dtype(f, n, dt);
    assert_int_equal(be->ops->upload(be, d, h, bytes), ANVIL_OK);
    free(h);
    return d;
}

/* n floats as dt into the existing device buffer d. */
static anvil_status dev_upload_into(anvil_backend *be, void *d, const float *f, int64_t n, anvil_dtype dt)
{
    void *h = to_dtype(f, n, dt);
    anvil_status st = be->ops->upload(be, d, h, (size_t)n * anvil_dtype_size(dt));
    free(h);
    return st;
}

static void *dev_upload_raw(anvil_backend *be, const void *h, size_t bytes)
{
    void *d = dev_alloc(be, bytes);
    if (bytes > 0)
        assert_int_equal(be->ops->upload(be, d, h, bytes), ANVIL_OK);
    return d;
}

/* n elements of dt from the device as floats; checks the guard after them. */
static float *dev_download_floats(anvil_backend *be, const void *d, int64_t n, anvil_dtype dt, const char *what)
{
    size_t bytes = (size_t)n * anvil_dtype_size(dt);
    unsigned char *h = malloc(bytes + GUARD_BYTES);
    float *f = malloc((size_t)(n > 0 ? n : 1) * sizeof *f);
    assert_true(h && f);
    anvil_status st = be->ops->download(be, h, d, bytes + GUARD_BYTES);
    if (st != ANVIL_OK)
        fail_msg("%s: download: %s", what, anvil_last_error());
    for (size_t i = 0; i < GUARD_BYTES; i++)
        if (h[bytes + i] != GUARD_BYTE)
            fail_msg("%s: guard byte %zu after the output was overwritten", what, i);
    anvil_convert_to_f32(dt, h, f, n);
    free(h);
    return f;
}

/* max |got - want| <= tol * max |want| (NaN fails). */
static void expect_close(const char *what, const float *got, const float *want, int64_t n, double tol)
{
    double max_ref = 0, max_err = 0;
    int64_t worst = -1;
    for (int64_t i = 0; i < n; i++) {
        double ref = want[i], err = fabs((double)got[i] - ref);
        if (fabs(ref) > max_ref)
            max_ref = fabs(ref);
        if (isnan(got[i]) || isnan(want[i]))
            err = INFINITY;
        if (err > max_err || (worst < 0 && err == INFINITY)) {
            max_err = err;
            worst = i;
        }
    }
    double bound = tol * (max_ref > 1e-6 ? max_ref : 1e-6);
    if (!(max_err <= bound))
        fail_msg("%s: max error %.3g at %lld (got %g, want %g), bound %.3g", what, max_err, (long long)worst,
                 worst >= 0 ? got[worst] : 0.0, worst >= 0 ? want[worst] : 0.0, bound);
}

static void gpu_sync_ok(anvil_backend *be, const char *what)
{
    if (be->ops->synchronize(be) != ANVIL_OK)
        fail_msg("%s: synchronize: %s", what, anvil_last_error());
}

#define OK_OR_FAIL(expr, what)                                      \
    do {                                                            \
        anvil_status ok_st_ = (expr);                               \
        if (ok_st_ != ANVIL_OK)                                     \
            fail_msg("%s: %s", (what), anvil_last_error());         \
    } while (0)

/* ---------------------------------------------------------------- fixture */

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (f == NULL)
        return -1;
    f->rng = 0x5eed5eedull;
    const char *q = getenv("ANVIL_TEST_QUICK");
    f->quick = q != NULL && *q != '\0' && *q != '0';
    if (anvil_backend_cpu_create(0, &f->cpu) != ANVIL_OK)
        return -1;
    if (have_gpu()) {
        for (int i = 0; i < N_ACT; i++) {
            if (anvil_backend_cuda_create(0, act_dtypes[i], &f->gpu[i]) != ANVIL_OK) {
                fprintf(stderr, "cuda backend: %s\n", anvil_last_error());
                return -1;
            }
        }
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
    anvil_backend_free(f->cpu);
    free(f);
    return 0;
}

static void reset_knobs(anvil_backend *be)
{
    anvil_cuda_knobs k;
    memset(&k, 0, sizeof k);
    assert_int_equal(anvil_cuda_set_knobs(be, &k), ANVIL_OK);
}

/* ---------------------------------------------------------------- creation, memory */

static void test_create_errors(void **state)
{
    (void)state;
    anvil_backend *be = (anvil_backend *)1;
    anvil_backend_config bf16;
    anvil_backend_config_default(&bf16);
    bf16.act_dtype = ANVIL_DTYPE_BF16;
    if (!have_gpu()) {
        /* no device: a clean error, not a crash */
        assert_int_not_equal(anvil_backend_cuda_create(0, ANVIL_DTYPE_F32, &be), ANVIL_OK);
        assert_null(be);
        be = (anvil_backend *)1;
        assert_int_not_equal(anvil_backend_create("cuda", &bf16, &be), ANVIL_OK);
        assert_null(be);
        return;
    }
    int n = anvil_cuda_device_count();
    assert_status_msg(anvil_backend_cuda_create(n, ANVIL_DTYPE_F32, &be), ANVIL_ERR_INVALID_ARG, "device");
    assert_null(be);
    be = (anvil_backend *)1;
    assert_status_msg(anvil_backend_create("cuda:999", NULL, &be), ANVIL_ERR_INVALID_ARG, "device");
    assert_null(be);
    be = (anvil_backend *)1;
    assert_status_msg(anvil_backend_cuda_create(0, ANVIL_DTYPE_I32, &be), ANVIL_ERR_UNSUPPORTED, "i32");
    assert_null(be);
    assert_int_equal(anvil_backend_create("cuda:0", &bf16, &be), ANVIL_OK);
    assert_int_equal(be->ops->act_dtype, ANVIL_DTYPE_BF16);
    assert_int_equal(be->ops->weights_in_host_memory, 0);
    anvil_backend_free(be);
    anvil_backend_free(NULL);
    /* knobs are for CUDA backends only */
    anvil_backend *cpu = NULL;
    assert_int_equal(anvil_backend_cpu_create(1, &cpu), ANVIL_OK);
    anvil_cuda_knobs k = {0};
    assert_int_equal(anvil_cuda_set_knobs(cpu, &k), ANVIL_ERR_INVALID_ARG);
    anvil_backend_free(cpu);
}

static void test_memory(void **state)
{
    NEED_GPU();
    fixture *f = *state;
    anvil_backend *be = f->gpu[0];
    size_t avail = 0;
    assert_int_equal(be->ops->mem_available(be, &avail), ANVIL_OK);
    assert_true(avail > 0);
    void *z = NULL;
    assert_int_equal(be->ops->alloc(be, 0, &z), ANVIL_OK);
    assert_non_null(z);
    be->ops->free(be, z);
    be->ops->free(be, NULL);
    /* a copy through both staging buffers several times (4 MiB each), odd length */
    const size_t n = ((size_t)10 << 20) + 13;
    unsigned char *h = malloc(n), *orig = malloc(n), *back = malloc(n);
    assert_true(h && orig && back);
    for (size_t i = 0; i < n; i++)
        h[i] = (unsigned char)(anvil_test_rand(&f->rng) >> 56);
    memcpy(orig, h, n);
    void *d = NULL;
    assert_int_equal(be->ops->alloc(be, n, &d), ANVIL_OK);
    assert_int_equal(be->ops->upload(be, d, h, n), ANVIL_OK);
    memset(h, 0, n); /* upload returned: src is the caller's again, the copy must not see this */
    memset(back, 0, n);
    assert_int_equal(be->ops->download(be, back, d, n), ANVIL_OK);
    assert_memory_equal(back, orig, n);
    be->ops->free(be, d);
    free(h);
    free(orig);
    free(back);
    /* an allocation far larger than the device is ANVIL_ERR_OOM, not a crash
     * (not under compute-sanitizer, which reports the failed cudaMalloc) */
    if (!f->quick) {
        void *huge = NULL;
        assert_int_equal(be->ops->alloc(be, (size_t)1 << 50, &huge), ANVIL_ERR_OOM);
        assert_null(huge);
    }
}

/* ---------------------------------------------------------------- embedding */

static void test_embedding(void **state)
{
    NEED_GPU();
    fixture *f = *state;
    const int64_t vocab = 1000;
    const int64_t widths[] = {77, 4099};
    const anvil_dtype tdts[] = {ANVIL_DTYPE_F32, ANVIL_DTYPE_BF16, ANVIL_DTYPE_F16};
    const int32_t T = 37;
    int32_t ids[37];
    for (int t = 0; t < T; t++)
        ids[t] = (int32_t)(anvil_test_rand(&f->rng) % (uint64_t)vocab);
    ids[0] = 0;
    ids[1] = (int32_t)vocab - 1;
    for (int a = 0; a < N_ACT; a++) {
        anvil_backend *g = f->gpu[a];
        anvil_dtype act = act_dtypes[a];
        for (size_t wi = 0; wi < 2; wi++) {
            for (size_t ti = 0; ti < 3; ti++) {
                const int64_t W = widths[wi];
                float *tf = rand_floats(&f->rng, vocab * W, 1.0f, tdts[ti]);
                void *th = to_dtype(tf, vocab * W, tdts[ti]);
                anvil_tensor table_h = anvil_tensor_2d(tdts[ti], vocab, W, th);
                float *want = malloc((size_t)(T * W) * 4);
                anvil_tensor out_h = anvil_tensor_2d(ANVIL_DTYPE_F32, T, W, want);
                anvil_step sh = {.n_tokens = T, .token_ids = ids};
                OK_OR_FAIL(f->cpu->ops->embedding(f->cpu, &table_h, &sh, &out_h), "cpu embedding");

                void *td = dev_upload_raw(g, th, (size_t)(vocab * W) * anvil_dtype_size(tdts[ti]));
                void *idd = dev_upload_raw(g, ids, sizeof ids);
                void *od = dev_alloc(g, (size_t)(T * W) * anvil_dtype_size(act));
                anvil_tensor table_d = anvil_tensor_2d(tdts[ti], vocab, W, td);
                anvil_tensor out_d = anvil_tensor_2d(act, T, W, od);
                anvil_step sd = {.n_tokens = T, .token_ids = idd};
                OK_OR_FAIL(g->ops->embedding(g, &table_d, &sd, &out_d), "cuda embedding");
                float *got = dev_download_floats(g, od, T * W, act, "embedding");
                char name[96];
                snprintf(name, sizeof name, "embedding act=%s table=%s W=%lld", anvil_dtype_name(act),
                         anvil_dtype_name(tdts[ti]), (long long)W);
                expect_close(name, got, want, T * W, act == ANVIL_DTYPE_F32 ? 0.0 : tol_for(act, 1));

                /* a vocabulary slice (tensor parallelism): the table as ids
                 * [300, 1300), so the ids below 300 are another rank's
                 * (zeros), against the CPU's embedding_part */
                OK_OR_FAIL(f->cpu->ops->embedding_part(f->cpu, &table_h, 300, &sh, &out_h), "cpu embedding_part");
                OK_OR_FAIL(g->ops->embedding_part(g, &table_d, 300, &sd, &out_d), "cuda embedding_part");
                free(got);
                got = dev_download_floats(g, od, T * W, act, "embedding_part");
                int zeros = 0;
                for (int t = 0; t < T; t++)
                    zeros += ids[t] < 300 && want[(int64_t)t * W] == 0.0f;
                assert_true(zeros > 0); /* some ids are another rank's */
                snprintf(name, sizeof name, "embedding_part act=%s table=%s W=%lld", anvil_dtype_name(act),
                         anvil_dtype_name(tdts[ti]), (long long)W);
                expect_close(name, got, want, T * W, act == ANVIL_DTYPE_F32 ? 0.0 : tol_for(act, 1));
                gpu_sync_ok(g, "embedding_part: another rank's ids are not errors");

                /* a bad id: zeros written, the error word reports it at the next sync */
                int32_t bad[2] = {3, (int32_t)vocab};
                void *badd = dev_upload_raw(g, bad, sizeof bad);
                anvil_step sb = {.n_tokens = 2, .token_ids = badd};
                anvil_tensor out2 = anvil_tensor_2d(act, 2, W, od);
                OK_OR_FAIL(g->ops->embedding(g, &table_d, &sb, &out2), "cuda embedding (bad id)");
                assert_status_msg(g->ops->synchronize(g), ANVIL_ERR_INVALID_ARG, "token id");
                gpu_sync_ok(g, "after the bad id"); /* the error word was reset */

                g->ops->free(g, td);
                g->ops->free(g, idd);
                g->ops->free(g, od);
                g->ops->free(g, badd);
                free(tf);
                free(th);
                free(want);
                free(got);
            }
        }
    }
}

/* ---------------------------------------------------------------- norms */

static void run_norm(fixture *f, int a, int64_t rows, int64_t width, int32_t head_dim, anvil_dtype wdt, float eps,
                     float w_offset)
{
    anvil_backend *g = f->gpu[a];
    const anvil_dtype act = act_dtypes[a];
    const int64_t n = rows * width, wn = head_dim > 0 ? head_dim : width;
    float *x = rand_floats(&f->rng, n, 2.0f, act);
    float *wf = rand_floats(&f->rng, wn, 1.5f, wdt);
    void *wh = to_dtype(wf, wn, wdt);
    float *want = malloc((size_t)(n > 0 ? n : 1) * 4);
    anvil_tensor xh = anvil_tensor_2d(ANVIL_DTYPE_F32, rows, width, x);
    anvil_tensor wth = anvil_tensor_1d(wdt, wn, wh);
    anvil_tensor oh = anvil_tensor_2d(ANVIL_DTYPE_F32, rows, width, want);
    if (head_dim > 0)
        OK_OR_FAIL(f->cpu->ops->head_rmsnorm(f->cpu, &xh, &wth, head_dim, eps, &oh), "cpu head_rmsnorm");
    else
        OK_OR_FAIL(f->cpu->ops->rmsnorm(f->cpu, &xh, &wth, eps, w_offset, &oh), "cpu rmsnorm");

    void *xd = dev_upload_floats(g, x, n, act);
    void *wd = dev_upload_raw(g, wh, (size_t)wn * anvil_dtype_size(wdt));
    void *od = dev_alloc(g, (size_t)n * anvil_dtype_size(act));
    anvil_tensor xt = anvil_tensor_2d(act, rows, width, xd);
    anvil_tensor wt = anvil_tensor_1d(wdt, wn, wd);
    anvil_tensor ot = anvil_tensor_2d(act, rows, width, od);
    if (head_dim > 0)
        OK_OR_FAIL(g->ops->head_rmsnorm(g, &xt, &wt, head_dim, eps, &ot), "cuda head_rmsnorm");
    else
        OK_OR_FAIL(g->ops->rmsnorm(g, &xt, &wt, eps, w_offset, &ot), "cuda rmsnorm");
    float *got = dev_download_floats(g, od, n, act, "rmsnorm");
    char name[128];
    snprintf(name, sizeof name, "%s act=%s w=%s rows=%lld width=%lld hd=%d w_offset=%g",
             head_dim ? "head_rmsnorm" : "rmsnorm", anvil_dtype_name(act), anvil_dtype_name(wdt), (long long)rows,
             (long long)width, head_dim, (double)w_offset);
    expect_close(name, got, want, n, tol_for(act, 1));

    /* in place (out == x) gives the same */
    if (head_dim == 0) {
        OK_OR_FAIL(g->ops->rmsnorm(g, &xt, &wt, eps, w_offset, &xt), "cuda rmsnorm in place");
        float *got2 = dev_download_floats(g, xd, n, act, "rmsnorm in place");
        expect_close(name, got2, want, n, tol_for(act, 1));
        free(got2);
    }
    g->ops->free(g, xd);
    g->ops->free(g, wd);
    g->ops->free(g, od);
    free(x);
    free(wf);
    free(wh);
    free(want);
    free(got);
}

static void test_rmsnorm(void **state)
{
    NEED_GPU();
    fixture *f = *state;
    const int64_t rows[] = {1, 7, 33};
    const int64_t widths[] = {64, 77, 1024, 1025, 5000};
    for (int a = 0; a < N_ACT; a++)
        for (size_t r = 0; r < 3; r++)
            for (size_t w = 0; w < 5; w++)
                run_norm(f, a, rows[r], widths[w], 0, w % 2 ? act_dtypes[a] : ANVIL_DTYPE_F32,
                         w % 2 ? 1e-6f : 1e-5f, r % 2 ? 1.0f : 0.0f); /* Gemma's (1 + w) on odd rows */
}

static void test_head_rmsnorm(void **state)
{
    NEED_GPU();
    fixture *f = *state;
    const int32_t hds[] = {32, 64, 128};
    for (int a = 0; a < N_ACT; a++)
        for (size_t h = 0; h < 3; h++) {
            run_norm(f, a, 1, 8 * hds[h], hds[h], ANVIL_DTYPE_BF16, 1e-6f, 0.0f);
            run_norm(f, a, 9, 3 * hds[h], hds[h], ANVIL_DTYPE_F32, 1e-6f, 0.0f);
        }
}

/* ---------------------------------------------------------------- matmul */

typedef struct mm_case {
    int64_t T, K, N;
} mm_case;

/* path: 0 automatic (cuBLASLt with the bias in the epilogue, or the GEMV kernel where it is faster),
 * 1 cuBLASLt + bias kernel, 2 the fallback kernel, 3 the GEMV kernel (1..4 rows, bf16/f16) */
static void run_matmul(fixture *f, int a, const mm_case *c, anvil_dtype wdt, int bias_kind, int path)
{
    anvil_backend *g = f->gpu[a];
    const anvil_dtype act = act_dtypes[a];
    const int64_t T = c->T, K = c->K, N = c->N;
    float *x = rand_floats(&f->rng, T * K, 1.0f, act);
    float *wf = rand_floats(&f->rng, N * K, 1.0f, wdt);
    void *wh = to_dtype(wf, N * K, wdt);
    /* bias_kind: 0 none, 1 in the weight dtype, 2 f32 */
    anvil_dtype bdt = bias_kind == 2 ? ANVIL_DTYPE_F32 : wdt;
    float *bf = rand_floats(&f->rng, N, 4.0f, bdt);
    void *bh = to_dtype(bf, N, bdt);
    float *want = malloc((size_t)(T * N) * 4);
    anvil_tensor xh = anvil_tensor_2d(ANVIL_DTYPE_F32, T, K, x);
    anvil_tensor wth = anvil_tensor_2d(wdt, N, K, wh);
    anvil_tensor bth = anvil_tensor_1d(bdt, N, bh);
    anvil_tensor oh = anvil_tensor_2d(ANVIL_DTYPE_F32, T, N, want);
    OK_OR_FAIL(f->cpu->ops->matmul(f->cpu, &xh, &wth, bias_kind ? &bth : NULL, &oh), "cpu matmul");

    anvil_cuda_knobs k = {.matmul_no_epilogue = path == 1, .matmul_simt = path == 2, .matmul_gemv = path == 3 ? 1 : 2};
    assert_int_equal(anvil_cuda_set_knobs(g, &k), ANVIL_OK);
    void *xd = dev_upload_floats(g, x, T * K, act);
    void *wd = dev_upload_raw(g, wh, (size_t)(N * K) * anvil_dtype_size(wdt));
    void *bd = dev_upload_raw(g, bh, (size_t)N * anvil_dtype_size(bdt));
    void *od = dev_alloc(g, (size_t)(T * N) * anvil_dtype_size(act));
    anvil_tensor xt = anvil_tensor_2d(act, T, K, xd);
    anvil_tensor wt = anvil_tensor_2d(wdt, N, K, wd);
    anvil_tensor bt = anvil_tensor_1d(bdt, N, bd);
    anvil_tensor ot = anvil_tensor_2d(act, T, N, od);
    char name[160];
    snprintf(name, sizeof name, "matmul act=%s w=%s [%lld,%lld]x[%lld,%lld]^T bias=%s%s", anvil_dtype_name(act),
             anvil_dtype_name(wdt), (long long)T, (long long)K, (long long)N, (long long)K,
             bias_kind ? anvil_dtype_name(bdt) : "none",
             path == 1 ? " (bias kernel)" : path == 2 ? " (simt)" : path == 3 ? " (gemv)" : "");
    OK_OR_FAIL(g->ops->matmul(g, &xt, &wt, bias_kind ? &bt : NULL, &ot), name);
    /* twice: the second call takes the cached plan */
    OK_OR_FAIL(g->ops->matmul(g, &xt, &wt, bias_kind ? &bt : NULL, &ot), name);
    float *got = dev_download_floats(g, od, T * N, act, name);
    expect_close(name, got, want, T * N, tol_for(act, 0));
    reset_knobs(g);
    g->ops->free(g, xd);
    g->ops->free(g, wd);
    g->ops->free(g, bd);
    g->ops->free(g, od);
    free(x);
    free(wf);
    free(wh);
    free(bf);
    free(bh);
    free(want);
    free(got);
}

static void test_matmul(void **state)
{
    NEED_GPU();
    fixture *f = *state;
    const mm_case cases[] = {
        {1, 64, 64}, {7, 77, 129}, {33, 512, 1000}, {5, 4096, 17}, {128, 1024, 384}, {2, 8, 3},
        {3, 4096, 1000}, {4, 2056, 129},
    };
    const size_t n_cases = f->quick ? 3 : sizeof cases / sizeof cases[0];
    for (int a = 0; a < N_ACT; a++) {
        const anvil_dtype act = act_dtypes[a];
        const anvil_dtype other = act == ANVIL_DTYPE_F32 ? ANVIL_DTYPE_BF16 : ANVIL_DTYPE_F32;
        for (size_t i = 0; i < n_cases; i++) {
            run_matmul(f, a, &cases[i], act, 0, 0);
            run_matmul(f, a, &cases[i], act, 1, 0);
            run_matmul(f, a, &cases[i], act, 2, 0);
            run_matmul(f, a, &cases[i], act, 1, 1);
            run_matmul(f, a, &cases[i], act, 2, 2);
            run_matmul(f, a, &cases[i], other, i % 2 ? 2 : 0, 0);
            if (act != ANVIL_DTYPE_F32 && cases[i].T <= 4 && cases[i].K % 8 == 0) {
                run_matmul(f, a, &cases[i], act, 0, 3);
                run_matmul(f, a, &cases[i], act, 2, 3);
                run_matmul(f, a, &cases[i], other, 1, 3); /* an f32 weight converted first */
            }
        }
    }
}

static void test_matmul_errors(void **state)
{
    NEED_GPU();
    fixture *f = *state;
    anvil_backend *g = f->gpu[1]; /* bf16 */
    void *d = dev_alloc(g, 4096);
    anvil_tensor x = anvil_tensor_2d(ANVIL_DTYPE_BF16, 2, 8, d);
    anvil_tensor w = anvil_tensor_2d(ANVIL_DTYPE_BF16, 4, 8, (char *)d + 1024);
    anvil_tensor o = anvil_tensor_2d(ANVIL_DTYPE_BF16, 2, 4, (char *)d + 2048);
    anvil_tensor xf = anvil_tensor_2d(ANVIL_DTYPE_F32, 2, 8, d);
    assert_status_msg(g->ops->matmul(g, &xf, &w, NULL, &o), ANVIL_ERR_UNSUPPORTED, "activations");
    anvil_tensor w_bad = anvil_tensor_2d(ANVIL_DTYPE_BF16, 4, 9, (char *)d + 1024);
    assert_status_msg(g->ops->matmul(g, &x, &w_bad, NULL, &o), ANVIL_ERR_INVALID_ARG, "matmul");
    anvil_tensor w_i32 = anvil_tensor_2d(ANVIL_DTYPE_I32, 4, 8, (char *)d + 1024);
    assert_status_msg(g->ops->matmul(g, &x, &w_i32, NULL, &o), ANVIL_ERR_UNSUPPORTED, "i32");
    assert_status_msg(g->ops->matmul(g, &x, &w, NULL, &x), ANVIL_ERR_INVALID_ARG, "matmul");
    anvil_tensor b_bad = anvil_tensor_1d(ANVIL_DTYPE_BF16, 5, d);
    assert_status_msg(g->ops->matmul(g, &x, &w, &b_bad, &o), ANVIL_ERR_INVALID_ARG, "bias");
    /* zero rows: nothing to do */
    anvil_tensor x0 = anvil_tensor_2d(ANVIL_DTYPE_BF16, 0, 8, d);
    anvil_tensor o0 = anvil_tensor_2d(ANVIL_DTYPE_BF16, 0, 4, (char *)d + 2048);
    assert_int_equal(g->ops->matmul(g, &x0, &w, NULL, &o0), ANVIL_OK);
    gpu_sync_ok(g, "matmul errors");
    g->ops->free(g, d);
}

/* ---------------------------------------------------------------- rope */

/* Cases with `longrope` take two tables (the long one 1/4 of the short),
 * a scale and three sequences, the last two longer than long_after: each
 * token must take its own sequence's table. */
static void test_rope(void **state)
{
    NEED_GPU();
    fixture *f = *state;
    const struct {
        int32_t T, heads, hd, longrope;
    } cases[] = {{1, 8, 64, 0}, {13, 3, 128, 0}, {5, 4, 8, 0}, {64, 2, 256, 0}, {13, 3, 96, 1}, {64, 2, 128, 1}};
    for (int a = 0; a < N_ACT; a++) {
        anvil_backend *g = f->gpu[a];
        const anvil_dtype act = act_dtypes[a];
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
            const int32_t T = cases[c].T, hd = cases[c].hd;
            const int64_t W = (int64_t)cases[c].heads * hd, n = T * W;
            float *x = rand_floats(&f->rng, n, 1.0f, act);
            float inv[256];
            for (int i = 0; i < hd / 2; i++) {
                inv[i] = powf(10000.0f, -2.0f * (float)i / (float)hd);
                inv[hd / 2 + i] = inv[i] / 4.0f;
            }
            int32_t pos[64], seq_of[64], lens[3] = {0, 0, 0};
            for (int t = 0; t < T; t++) {
                pos[t] = t == 0 ? 0 : (int32_t)(anvil_test_rand(&f->rng) % 40000);
                seq_of[t] = t % 3;
                lens[t % 3] = pos[t] + 1 > lens[t % 3] ? pos[t] + 1 : lens[t % 3];
            }
            lens[0] = 1; /* at most long_after (below): the short table */
            const int32_t long_after = 1000;
            lens[1] = lens[1] > long_after ? lens[1] : long_after + 1;
            lens[2] = long_after + 7;
            anvil_tensor xh = anvil_tensor_2d(ANVIL_DTYPE_F32, T, W, x);
            float *want = malloc((size_t)n * 4);
            memcpy(want, x, (size_t)n * 4);
            anvil_tensor wh = anvil_tensor_2d(ANVIL_DTYPE_F32, T, W, want);
            anvil_step sh = {.n_tokens = T, .n_seqs = 3, .positions = pos, .seq_of_token = seq_of, .seq_lens = lens};
            anvil_rope_freqs fh = {.inv_freq = inv};
            if (cases[c].longrope)
                fh = (anvil_rope_freqs){.inv_freq = inv, .inv_freq_long = inv + hd / 2, .long_after = long_after,
                                        .scale = 1.1902f};
            OK_OR_FAIL(f->cpu->ops->rope(f->cpu, &wh, &sh, hd, &fh), "cpu rope");
            (void)xh;

            void *xd = dev_upload_floats(g, x, n, act);
            void *pd = dev_upload_raw(g, pos, (size_t)T * 4);
            void *sd_of = dev_upload_raw(g, seq_of, (size_t)T * 4);
            void *ld = dev_upload_raw(g, lens, sizeof lens);
            void *id = dev_upload_raw(g, inv, (size_t)hd * 4);
            anvil_tensor xt = anvil_tensor_2d(act, T, W, xd);
            anvil_step sd = {.n_tokens = T, .n_seqs = 3, .positions = pd, .seq_of_token = sd_of, .seq_lens = ld};
            anvil_rope_freqs fd = fh;
            fd.inv_freq = id;
            if (cases[c].longrope)
                fd.inv_freq_long = (const float *)id + hd / 2;
            OK_OR_FAIL(g->ops->rope(g, &xt, &sd, hd, &fd), "cuda rope");
            float *got = dev_download_floats(g, xd, n, act, "rope");
            char name[96];
            snprintf(name, sizeof name, "rope act=%s T=%d heads=%d hd=%d%s", anvil_dtype_name(act), T,
                     cases[c].heads, hd, cases[c].longrope ? " longrope" : "");
            expect_close(name, got, want, n, tol_for(act, 1));
            g->ops->free(g, xd);
            g->ops->free(g, pd);
            g->ops->free(g, sd_of);
            g->ops->free(g, ld);
            g->ops->free(g, id);
            free(x);
            free(want);
            free(got);
        }
    }
}

/* ---------------------------------------------------------------- elementwise, gather */

static void test_elementwise(void **state)
{
    NEED_GPU();
    fixture *f = *state;
    const int64_t shapes[][2] = {{1, 1}, {3, 1001}, {17, 14336}};
    for (int a = 0; a < N_ACT; a++) {
        anvil_backend *g = f->gpu[a];
        const anvil_dtype act = act_dtypes[a];
        for (size_t s = 0; s < 3; s++) {
            const int64_t R = shapes[s][0], C = shapes[s][1], n = R * C;
            float *x = rand_floats(&f->rng, n, 6.0f, act), *y = rand_floats(&f->rng, n, 2.0f, act);
            float *w1 = malloc((size_t)n * 4), *w2 = malloc((size_t)n * 4);
            anvil_tensor xh = anvil_tensor_2d(ANVIL_DTYPE_F32, R, C, x), yh = anvil_tensor_2d(ANVIL_DTYPE_F32, R, C, y);
            anvil_tensor o1 = anvil_tensor_2d(ANVIL_DTYPE_F32, R, C, w1), o2 = anvil_tensor_2d(ANVIL_DTYPE_F32, R, C, w2);
            OK_OR_FAIL(f->cpu->ops->silu_mul(f->cpu, &xh, &yh, &o1), "cpu silu_mul");
            OK_OR_FAIL(f->cpu->ops->add(f->cpu, &xh, &yh, &o2), "cpu add");

            void *xd = dev_upload_floats(g, x, n, act), *yd = dev_upload_floats(g, y, n, act);
            void *od = dev_alloc(g, (size_t)n * anvil_dtype_size(act));
            anvil_tensor xt = anvil_tensor_2d(act, R, C, xd), yt = anvil_tensor_2d(act, R, C, yd);
            anvil_tensor ot = anvil_tensor_2d(act, R, C, od);
            char name[96];
            snprintf(name, sizeof name, "silu_mul act=%s [%lld, %lld]", anvil_dtype_name(act), (long long)R,
                     (long long)C);
            OK_OR_FAIL(g->ops->silu_mul(g, &xt, &yt, &ot), name);
            float *got = dev_download_floats(g, od, n, act, name);
            expect_close(name, got, w1, n, tol_for(act, 1));
            free(got);
            snprintf(name, sizeof name, "add act=%s [%lld, %lld]", anvil_dtype_name(act), (long long)R, (long long)C);
            OK_OR_FAIL(g->ops->add(g, &xt, &yt, &ot), name);
            got = dev_download_floats(g, od, n, act, name);
            expect_close(name, got, w2, n, tol_for(act, 1));
            free(got);
            /* out aliasing a: the residual update the runtime does */
            OK_OR_FAIL(g->ops->add(g, &xt, &yt, &xt), name);
            got = dev_download_floats(g, xd, n, act, name);
            expect_close(name, got, w2, n, tol_for(act, 1));
            free(got);
            /* shape mismatch */
            anvil_tensor bad = anvil_tensor_2d(act, R, C + 1, yd);
            assert_status_msg(g->ops->add(g, &xt, &bad, &ot), ANVIL_ERR_INVALID_ARG, "shape");
            g->ops->free(g, xd);
            g->ops->free(g, yd);
            g->ops->free(g, od);
            free(x);
            free(y);
            free(w1);
            free(w2);
        }
    }
}

/* Gemma's elementwise ops against the CPU's: gelu_tanh_mul, scale (its
 * factor rounded to the activation dtype first, so the CPU gets the factor
 * rounded the same way) and softcap, in place too. */
static void test_gemma_elementwise(void **state)
{
    NEED_GPU();
    fixture *f = *state;
    const int64_t shapes[][2] = {{1, 1}, {3, 1001}, {17, 14336}};
    const float c = 59.866518f, cap = 5.0f; /* sqrt(3584), Gemma 2 9B's normalizer: not a bf16 value */
    for (int a = 0; a < N_ACT; a++) {
        anvil_backend *g = f->gpu[a];
        const anvil_dtype act = act_dtypes[a];
        const float c_act = act == ANVIL_DTYPE_BF16  ? anvil_bf16_to_f32(anvil_f32_to_bf16(c))
                            : act == ANVIL_DTYPE_F16 ? anvil_f16_to_f32(anvil_f32_to_f16(c))
                                                     : c;
        for (size_t s = 0; s < 3; s++) {
            const int64_t R = shapes[s][0], C = shapes[s][1], n = R * C;
            float *x = rand_floats(&f->rng, n, 12.0f, act), *y = rand_floats(&f->rng, n, 2.0f, act);
            float *w1 = malloc((size_t)n * 4), *w2 = malloc((size_t)n * 4), *w3 = malloc((size_t)n * 4);
            anvil_tensor xh = anvil_tensor_2d(ANVIL_DTYPE_F32, R, C, x), yh = anvil_tensor_2d(ANVIL_DTYPE_F32, R, C, y);
            anvil_tensor o1 = anvil_tensor_2d(ANVIL_DTYPE_F32, R, C, w1), o2 = anvil_tensor_2d(ANVIL_DTYPE_F32, R, C, w2);
            anvil_tensor o3 = anvil_tensor_2d(ANVIL_DTYPE_F32, R, C, w3);
            OK_OR_FAIL(f->cpu->ops->gelu_tanh_mul(f->cpu, &xh, &yh, &o1), "cpu gelu_tanh_mul");
            OK_OR_FAIL(f->cpu->ops->scale(f->cpu, &xh, c_act, &o2), "cpu scale");
            OK_OR_FAIL(f->cpu->ops->softcap(f->cpu, &xh, cap, &o3), "cpu softcap");

            void *xd = dev_upload_floats(g, x, n, act), *yd = dev_upload_floats(g, y, n, act);
            void *od = dev_alloc(g, (size_t)n * anvil_dtype_size(act));
            anvil_tensor xt = anvil_tensor_2d(act, R, C, xd), yt = anvil_tensor_2d(act, R, C, yd);
            anvil_tensor ot = anvil_tensor_2d(act, R, C, od);
            char name[96];
            snprintf(name, sizeof name, "gelu_tanh_mul act=%s [%lld, %lld]", anvil_dtype_name(act), (long long)R,
                     (long long)C);
            OK_OR_FAIL(g->ops->gelu_tanh_mul(g, &xt, &yt, &ot), name);
            float *got = dev_download_floats(g, od, n, act, name);
            expect_close(name, got, w1, n, tol_for(act, 1));
            free(got);
            snprintf(name, sizeof name, "scale act=%s [%lld, %lld]", anvil_dtype_name(act), (long long)R, (long long)C);
            OK_OR_FAIL(g->ops->scale(g, &xt, c, &ot), name);
            got = dev_download_floats(g, od, n, act, name);
            expect_close(name, got, w2, n, tol_for(act, 1));
            free(got);
            snprintf(name, sizeof name, "softcap act=%s [%lld, %lld]", anvil_dtype_name(act), (long long)R,
                     (long long)C);
            OK_OR_FAIL(g->ops->softcap(g, &xt, cap, &ot), name);
            got = dev_download_floats(g, od, n, act, name);
            expect_close(name, got, w3, n, tol_for(act, 1));
            free(got);
            /* in place, as the runtime may run them */
            OK_OR_FAIL(g->ops->softcap(g, &xt, cap, &xt), name);
            got = dev_download_floats(g, xd, n, act, name);
            expect_close(name, got, w3, n, tol_for(act, 1));
            free(got);
            assert_status_msg(g->ops->softcap(g, &xt, 0.0f, &ot), ANVIL_ERR_INVALID_ARG, "cap");
            anvil_tensor bad = anvil_tensor_2d(act, R, C + 1, yd);
            assert_status_msg(g->ops->gelu_tanh_mul(g, &xt, &bad, &ot), ANVIL_ERR_INVALID_ARG, "shape");
            assert_status_msg(g->ops->scale(g, &xt, c, &bad), ANVIL_ERR_INVALID_ARG, "shape");
            g->ops->free(g, xd);
            g->ops->free(g, yd);
            g->ops->free(g, od);
            free(x);
            free(y);
            free(w1);
            free(w2);
            free(w3);
        }
    }
}

/* GPT-2's ops against the CPU's: layernorm (weights and biases in f32 and
 * the activation dtype, rows of 64 to 1600 and an odd width; in place too),
 * gelu_tanh (in place too) and pos_embedding (tables in each dtype; a
 * position past the table reported at the next synchronize). */
static void test_gpt2_ops(void **state)
{
    NEED_GPU();
    fixture *f = *state;
    const int64_t shapes[][2] = {{1, 64}, {7, 77}, {33, 768}, {5, 1600}};
    for (int a = 0; a < N_ACT; a++) {
        anvil_backend *g = f->gpu[a];
        const anvil_dtype act = act_dtypes[a];
        for (size_t s = 0; s < 4; s++) {
            const int64_t R = shapes[s][0], C = shapes[s][1], n = R * C;
            const anvil_dtype wdt = s % 2 ? act : ANVIL_DTYPE_F32;
            /* an offset mean, as residual streams have: the two-pass variance matters */
            float *x = rand_floats(&f->rng, n, 3.0f, act);
            for (int64_t i = 0; i < n; i++)
                x[i] += 4.0f;
            if (act != ANVIL_DTYPE_F32) {
                void *tmp = to_dtype(x, n, act);
                anvil_convert_to_f32(act, tmp, x, n);
                free(tmp);
            }
            float *wf = rand_floats(&f->rng, C, 1.5f, wdt), *bf = rand_floats(&f->rng, C, 0.5f, wdt);
            void *wh = to_dtype(wf, C, wdt), *bh = to_dtype(bf, C, wdt);
            float *w1 = malloc((size_t)n * 4), *w2 = malloc((size_t)n * 4), *w3 = malloc((size_t)n * 4);
            assert_true(w1 && w2 && w3);
            anvil_tensor xh = anvil_tensor_2d(ANVIL_DTYPE_F32, R, C, x);
            anvil_tensor wth = anvil_tensor_1d(wdt, C, wh), bth = anvil_tensor_1d(wdt, C, bh);
            anvil_tensor o1 = anvil_tensor_2d(ANVIL_DTYPE_F32, R, C, w1), o2 = anvil_tensor_2d(ANVIL_DTYPE_F32, R, C, w2);
            OK_OR_FAIL(f->cpu->ops->layernorm(f->cpu, &xh, &wth, &bth, 1e-5f, &o1), "cpu layernorm");
            OK_OR_FAIL(f->cpu->ops->gelu_tanh(f->cpu, &xh, &o2), "cpu gelu_tanh");
            /* positions 0..R-1 reversed into a table of R + 3 rows */
            const int64_t P = R + 3;
            int32_t *pos = malloc((size_t)R * 4);
            assert_non_null(pos);
            for (int64_t t = 0; t < R; t++)
                pos[t] = (int32_t)(R - 1 - t);
            float *tf = rand_floats(&f->rng, P * C, 1.0f, wdt);
            void *th = to_dtype(tf, P * C, wdt);
            anvil_tensor tbh = anvil_tensor_2d(wdt, P, C, th), o3 = anvil_tensor_2d(ANVIL_DTYPE_F32, R, C, w3);
            anvil_step sh = {.n_tokens = (int32_t)R, .positions = pos};
            OK_OR_FAIL(f->cpu->ops->pos_embedding(f->cpu, &xh, &tbh, &sh, &o3), "cpu pos_embedding");

            void *xd = dev_upload_floats(g, x, n, act), *od = dev_alloc(g, (size_t)n * anvil_dtype_size(act));
            void *wd = dev_upload_raw(g, wh, (size_t)C * anvil_dtype_size(wdt));
            void *bd = dev_upload_raw(g, bh, (size_t)C * anvil_dtype_size(wdt));
            void *tbd = dev_upload_raw(g, th, (size_t)(P * C) * anvil_dtype_size(wdt));
            void *pd = dev_upload_raw(g, pos, (size_t)R * 4);
            anvil_tensor xt = anvil_tensor_2d(act, R, C, xd), ot = anvil_tensor_2d(act, R, C, od);
            anvil_tensor wt = anvil_tensor_1d(wdt, C, wd), bt = anvil_tensor_1d(wdt, C, bd);
            anvil_tensor tbt = anvil_tensor_2d(wdt, P, C, tbd);
            anvil_step sd = {.n_tokens = (int32_t)R, .positions = pd};
            char name[128];
            snprintf(name, sizeof name, "layernorm act=%s w=%s [%lld, %lld]", anvil_dtype_name(act),
                     anvil_dtype_name(wdt), (long long)R, (long long)C);
            OK_OR_FAIL(g->ops->layernorm(g, &xt, &wt, &bt, 1e-5f, &ot), name);
            float *got = dev_download_floats(g, od, n, act, name);
            expect_close(name, got, w1, n, tol_for(act, 1));
            free(got);
            snprintf(name, sizeof name, "gelu_tanh act=%s [%lld, %lld]", anvil_dtype_name(act), (long long)R,
                     (long long)C);
            OK_OR_FAIL(g->ops->gelu_tanh(g, &xt, &ot), name);
            got = dev_download_floats(g, od, n, act, name);
            expect_close(name, got, w2, n, tol_for(act, 1));
            free(got);
            snprintf(name, sizeof name, "pos_embedding act=%s table=%s [%lld, %lld]", anvil_dtype_name(act),
                     anvil_dtype_name(wdt), (long long)R, (long long)C);
            OK_OR_FAIL(g->ops->pos_embedding(g, &xt, &tbt, &sd, &ot), name);
            got = dev_download_floats(g, od, n, act, name);
            expect_close(name, got, w3, n, tol_for(act, 1));
            free(got);
            /* in place, as the runtime may run them: layernorm last (it overwrites x) */
            OK_OR_FAIL(g->ops->pos_embedding(g, &xt, &tbt, &sd, &xt), name);
            got = dev_download_floats(g, xd, n, act, name);
            expect_close(name, got, w3, n, tol_for(act, 1));
            free(got);
            OK_OR_FAIL(dev_upload_into(g, xd, x, n, act), "x again");
            OK_OR_FAIL(g->ops->gelu_tanh(g, &xt, &xt), name);
            got = dev_download_floats(g, xd, n, act, name);
            expect_close(name, got, w2, n, tol_for(act, 1));
            free(got);
            OK_OR_FAIL(dev_upload_into(g, xd, x, n, act), "x again");
            OK_OR_FAIL(g->ops->layernorm(g, &xt, &wt, &bt, 1e-5f, &xt), name);
            got = dev_download_floats(g, xd, n, act, name);
            expect_close(name, got, w1, n, tol_for(act, 1));
            free(got);
            /* refusals, and a position past the table */
            anvil_tensor bad = anvil_tensor_2d(act, R, C + 1, od);
            assert_status_msg(g->ops->layernorm(g, &xt, &wt, &bt, 0.0f, &ot), ANVIL_ERR_INVALID_ARG, "eps");
            assert_status_msg(g->ops->gelu_tanh(g, &xt, &bad), ANVIL_ERR_INVALID_ARG, "shape");
            int32_t past[1] = {(int32_t)P};
            void *pastd = dev_upload_raw(g, past, sizeof past);
            anvil_step sp = {.n_tokens = 1, .positions = pastd};
            anvil_tensor x1 = anvil_tensor_2d(act, 1, C, xd), o1d = anvil_tensor_2d(act, 1, C, od);
            OK_OR_FAIL(g->ops->pos_embedding(g, &x1, &tbt, &sp, &o1d), "pos_embedding (past the table)");
            assert_status_msg(g->ops->synchronize(g), ANVIL_ERR_INVALID_ARG, "position");
            gpu_sync_ok(g, "after the bad position");
            g->ops->free(g, xd);
            g->ops->free(g, od);
            g->ops->free(g, wd);
            g->ops->free(g, bd);
            g->ops->free(g, tbd);
            g->ops->free(g, pd);
            g->ops->free(g, pastd);
            free(x);
            free(wf);
            free(bf);
            free(wh);
            free(bh);
            free(tf);
            free(th);
            free(pos);
            free(w1);
            free(w2);
            free(w3);
        }
    }
}

static void test_gather_rows(void **state)
{
    NEED_GPU();
    fixture *f = *state;
    const int64_t R = 19, C = 515;
    int32_t rows[5] = {18, 0, 7, 7, 3};
    for (int a = 0; a < N_ACT; a++) {
        anvil_backend *g = f->gpu[a];
        const anvil_dtype act = act_dtypes[a];
        float *x = rand_floats(&f->rng, R * C, 3.0f, act);
        float *want = malloc((size_t)(5 * C) * 4);
        anvil_tensor xh = anvil_tensor_2d(ANVIL_DTYPE_F32, R, C, x), oh = anvil_tensor_2d(ANVIL_DTYPE_F32, 5, C, want);
        anvil_step sh = {.n_logits = 5, .logit_rows = rows};
        OK_OR_FAIL(f->cpu->ops->gather_rows(f->cpu, &xh, &sh, &oh), "cpu gather_rows");
        void *xd = dev_upload_floats(g, x, R * C, act), *rd = dev_upload_raw(g, rows, sizeof rows);
        void *od = dev_alloc(g, (size_t)(5 * C) * anvil_dtype_size(act));
        anvil_tensor xt = anvil_tensor_2d(act, R, C, xd), ot = anvil_tensor_2d(act, 5, C, od);
        anvil_step sd = {.n_logits = 5, .logit_rows = rd};
        OK_OR_FAIL(g->ops->gather_rows(g, &xt, &sd, &ot), "cuda gather_rows");
        float *got = dev_download_floats(g, od, 5 * C, act, "gather_rows");
        expect_close("gather_rows", got, want, 5 * C, 0.0);
        /* a row outside x */
        int32_t bad[1] = {(int32_t)R};
        void *bd = dev_upload_raw(g, bad, sizeof bad);
        anvil_step sb = {.n_logits = 1, .logit_rows = bd};
        anvil_tensor o1 = anvil_tensor_2d(act, 1, C, od);
        OK_OR_FAIL(g->ops->gather_rows(g, &xt, &sb, &o1), "cuda gather_rows (bad row)");
        assert_status_msg(g->ops->synchronize(g), ANVIL_ERR_INVALID_ARG, "logit row");
        gpu_sync_ok(g, "after the bad row");
        g->ops->free(g, xd);
        g->ops->free(g, rd);
        g->ops->free(g, od);
        g->ops->free(g, bd);
        free(x);
        free(want);
        free(got);
    }
}

/* ---------------------------------------------------------------- attention */

#define MAX_SEQS 6

typedef struct attn_case {
    const char *name;
    int32_t n_heads, n_kv_heads, head_dim, block_size, window;
    int32_t n_seqs;
    int32_t hist[MAX_SEQS]; /* positions already cached when the tested step runs */
    int32_t n_new[MAX_SEQS];
    int big;                /* skipped in quick mode */
} attn_case;

static const attn_case attn_cases[] = {
    {"prefill MHA hd64", 4, 4, 64, 16, 0, 1, {0}, {37}, 0},
    {"prefill GQA4 hd128 + chunk", 8, 2, 128, 16, 0, 2, {0, 20}, {50, 13}, 0},
    {"decode GQA8", 16, 2, 64, 16, 0, 5, {0, 16, 32, 99, 256}, {1, 1, 1, 1, 1}, 0},
    {"mixed MQA hd128", 8, 1, 128, 32, 0, 4, {40, 0, 7, 64}, {1, 23, 1, 10}, 0},
    /* decodes first, as the executor plans them: decode and tiled kernels in one step */
    {"decodes then prefill GQA4", 32, 8, 128, 32, 0, 5, {300, 64, 1000, 0, 40}, {1, 1, 1, 70, 33}, 0},
    {"decodes then prefill window", 8, 2, 64, 16, 24, 3, {100, 7, 0}, {1, 1, 40}, 0},
    {"sliding window 16", 8, 2, 64, 16, 16, 3, {0, 50, 30}, {45, 1, 5}, 0},
    {"GQA3 hd32 bs8", 12, 4, 32, 8, 0, 2, {5, 100}, {9, 1}, 0},
    {"hd8 (stories260K)", 8, 4, 8, 16, 0, 2, {0, 30}, {30, 1}, 0},
    {"long decode GQA4", 32, 8, 128, 16, 0, 2, {700, 333}, {1, 1}, 1},
    {"hd256", 8, 4, 256, 16, 0, 2, {0, 20}, {20, 1}, 0},
    {"group 32", 32, 1, 64, 16, 0, 2, {3, 17}, {17, 1}, 0},
    {"hd80 bs5 window 7", 6, 3, 80, 5, 7, 3, {12, 0, 9}, {4, 1, 1}, 0},
    /* long enough for whole key tiles inside every row's window (the mask-free path) */
    {"long prefill hd64", 8, 4, 64, 16, 0, 2, {0, 150}, {300, 90}, 0},
    {"long prefill window 100", 8, 2, 128, 32, 100, 1, {0}, {333}, 0},
};

/* The fp8 KV cache's cases (test_attention_fp8): every fp8 kernel (decode
 * and prefill on tensor cores for head_dim 32/64/128, the SIMT tiled
 * kernel for the others), GQA, scattered block tables, windows, contexts
 * up to a few thousand. */
static const attn_case attn_fp8_cases[] = {
    {"fp8 prefill GQA4 hd128 + chunk", 8, 2, 128, 16, 0, 2, {0, 20}, {50, 13}, 0},
    {"fp8 decode GQA8 hd64", 16, 2, 64, 16, 0, 5, {0, 16, 32, 99, 256}, {1, 1, 1, 1, 1}, 0},
    {"fp8 mixed MQA hd128", 8, 1, 128, 32, 0, 4, {40, 0, 7, 64}, {1, 23, 1, 10}, 0},
    {"fp8 decodes then prefill GQA4", 32, 8, 128, 32, 0, 5, {300, 64, 1000, 0, 40}, {1, 1, 1, 70, 33}, 0},
    {"fp8 sliding window 16", 8, 2, 64, 16, 16, 3, {0, 50, 30}, {45, 1, 5}, 0},
    {"fp8 GQA3 hd32 bs8", 12, 4, 32, 8, 0, 2, {5, 100}, {9, 1}, 0},
    {"fp8 hd80 bs5 window 7 (SIMT)", 6, 3, 80, 5, 7, 3, {12, 0, 9}, {4, 1, 1}, 0},
    {"fp8 long prefill hd64", 8, 4, 64, 16, 0, 2, {0, 150}, {300, 90}, 0},
    {"fp8 long decode 2500", 8, 2, 128, 16, 0, 3, {2500, 1200, 3000}, {1, 1, 1}, 1},
};

typedef struct attn_step_host {
    int32_t T, S, MB;
    int32_t *pos, *seq_of, *starts, *lens, *tables, *slots, *ids;
    int32_t max_ctx;
    int32_t n_decode, decode_ctx; /* leading sequences of one token, their largest context */
} attn_step_host;

/* The step of phase `phase` (0: the history, 1: the tested tokens). */
static void build_step(const attn_case *c, int phase, const int32_t *tables, int32_t MB, attn_step_host *h)
{
    memset(h, 0, sizeof *h);
    int32_t T = 0;
    for (int s = 0; s < c->n_seqs; s++)
        T += phase == 0 ? c->hist[s] : c->n_new[s];
    h->T = T;
    h->MB = MB;
    h->pos = calloc((size_t)T + 1, 4);
    h->seq_of = calloc((size_t)T + 1, 4);
    h->slots = calloc((size_t)T + 1, 4);
    h->ids = calloc((size_t)T + 1, 4);
    h->starts = calloc(MAX_SEQS + 1, 4);
    h->lens = calloc(MAX_SEQS, 4);
    h->tables = calloc((size_t)MAX_SEQS * MB, 4);
    int32_t t = 0, S = 0;
    for (int s = 0; s < c->n_seqs; s++) {
        int32_t first = phase == 0 ? 0 : c->hist[s];
        int32_t n = phase == 0 ? c->hist[s] : c->n_new[s];
        if (n == 0)
            continue; /* a sequence with nothing in this step is not in it */
        h->starts[S] = t;
        memcpy(h->tables + (size_t)S * MB, tables + (size_t)s * MB, (size_t)MB * 4);
        for (int32_t j = 0; j < n; j++, t++) {
            int32_t p = first + j;
            h->pos[t] = p;
            h->seq_of[t] = S;
            h->slots[t] = tables[(size_t)s * MB + p / c->block_size] * c->block_size + p % c->block_size;
        }
        h->lens[S] = first + n;
        if (first + n > h->max_ctx)
            h->max_ctx = first + n;
        if (h->n_decode == S && n == 1) {
            h->n_decode++;
            h->decode_ctx = first + n > h->decode_ctx ? first + n : h->decode_ctx;
        }
        S++;
    }
    h->starts[S] = t;
    h->S = S;
}

static void free_step(attn_step_host *h)
{
    free(h->pos);
    free(h->seq_of);
    free(h->slots);
    free(h->ids);
    free(h->starts);
    free(h->lens);
    free(h->tables);
}

static float attn_k_scale, attn_v_scale; /* an fp8 cache's scales for the runs of attn_run_case */
static float attn_softcap;               /* the scores' soft cap (Gemma 2) for them; 0: none */

typedef struct attn_env {
    const attn_case *c;
    int a; /* act index */
    anvil_dtype cache_dt; /* the act dtype, or F8_E4M3 */
    int32_t n_blocks, MB;
    int32_t *tables; /* [n_seqs * MB], scattered */
    float *kc_cpu, *vc_cpu; /* CPU caches: held in the act dtype (as the GPU), stored as raw bytes */
    void *kc_h, *vc_h;
    void *kc_d, *vc_d;
    size_t cache_bytes;
} attn_env;

/* One step on both backends with fresh q/k/v; compares out. */
static void attn_run_step(fixture *f, attn_env *e, int phase, const char *mode)
{
    const attn_case *c = e->c;
    anvil_backend *g = f->gpu[e->a];
    const anvil_dtype act = act_dtypes[e->a];
    attn_step_host h;
    build_step(c, phase, e->tables, e->MB, &h);
    if (h.T == 0) {
        free_step(&h);
        return;
    }
    const int64_t qw = (int64_t)c->n_heads * c->head_dim, kw = (int64_t)c->n_kv_heads * c->head_dim;
    float *q = rand_floats(&f->rng, h.T * qw, 3.0f, act);
    float *k = rand_floats(&f->rng, h.T * kw, 1.0f, act);
    float *v = rand_floats(&f->rng, h.T * kw, 1.0f, act);
    float *want = malloc((size_t)(h.T * qw) * 4);
    const anvil_dtype cdt = e->cache_dt;

    anvil_tensor qh = anvil_tensor_2d(ANVIL_DTYPE_F32, h.T, qw, q), kh = anvil_tensor_2d(ANVIL_DTYPE_F32, h.T, kw, k),
                 vh = anvil_tensor_2d(ANVIL_DTYPE_F32, h.T, kw, v), oh = anvil_tensor_2d(ANVIL_DTYPE_F32, h.T, qw, want);
    anvil_tensor kch = {.dtype = cdt, .n_dims = 4, .shape = {e->n_blocks, c->block_size, c->n_kv_heads, c->head_dim},
                        .data = e->kc_h};
    anvil_tensor vch = kch;
    vch.data = e->vc_h;
    anvil_step sh = {.n_tokens = h.T, .n_seqs = h.S, .max_blocks_per_seq = e->MB, .block_size = c->block_size,
                     .max_context = h.max_ctx, .n_decode = h.n_decode, .decode_max_context = h.decode_ctx,
                     .token_ids = h.ids, .positions = h.pos, .seq_of_token = h.seq_of,
                     .seq_starts = h.starts, .seq_lens = h.lens, .block_tables = h.tables, .slots = h.slots};
    const float scale = 1.0f / sqrtf((float)c->head_dim);
    anvil_attention_args ah = {.q = &qh, .k = &kh, .v = &vh, .k_cache = &kch, .v_cache = &vch, .out = &oh,
                               .step = &sh, .n_heads = c->n_heads, .n_kv_heads = c->n_kv_heads,
                               .head_dim = c->head_dim, .sliding_window = c->window, .scale = scale,
                               .k_scale = attn_k_scale, .v_scale = attn_v_scale, .softcap = attn_softcap};
    OK_OR_FAIL(f->cpu->ops->attention(f->cpu, &ah), "cpu attention");

    /* the same step on the GPU */
    void *qd = dev_upload_floats(g, q, h.T * qw, act), *kd = dev_upload_floats(g, k, h.T * kw, act);
    void *vd = dev_upload_floats(g, v, h.T * kw, act);
    void *od = dev_alloc(g, (size_t)(h.T * qw) * anvil_dtype_size(act));
    void *posd = dev_upload_raw(g, h.pos, (size_t)h.T * 4), *seqd = dev_upload_raw(g, h.seq_of, (size_t)h.T * 4);
    void *slotd = dev_upload_raw(g, h.slots, (size_t)h.T * 4), *idd = dev_upload_raw(g, h.ids, (size_t)h.T * 4);
    void *startd = dev_upload_raw(g, h.starts, (size_t)(h.S + 1) * 4), *lend = dev_upload_raw(g, h.lens, (size_t)h.S * 4);
    void *tabd = dev_upload_raw(g, h.tables, (size_t)h.S * e->MB * 4);
    anvil_tensor qt = anvil_tensor_2d(act, h.T, qw, qd), kt = anvil_tensor_2d(act, h.T, kw, kd),
                 vt = anvil_tensor_2d(act, h.T, kw, vd), ot = anvil_tensor_2d(act, h.T, qw, od);
    anvil_tensor kcd = kch, vcd = kch;
    kcd.data = e->kc_d;
    vcd.data = e->vc_d;
    anvil_step sd = sh;
    sd.token_ids = idd;
    sd.positions = posd;
    sd.seq_of_token = seqd;
    sd.seq_starts = startd;
    sd.seq_lens = lend;
    sd.block_tables = tabd;
    sd.slots = slotd;
    anvil_attention_args ad = ah;
    ad.q = &qt;
    ad.k = &kt;
    ad.v = &vt;
    ad.k_cache = &kcd;
    ad.v_cache = &vcd;
    ad.out = &ot;
    ad.step = &sd;
    char name[200];
    snprintf(name, sizeof name, "attention '%s' act=%s cache=%s phase=%d mode=%s", c->name, anvil_dtype_name(act),
             anvil_dtype_name(cdt), phase, mode);
    OK_OR_FAIL(g->ops->attention(g, &ad), name);
    float *got = dev_download_floats(g, od, h.T * qw, act, name);
    expect_close(name, got, want, h.T * qw, tol_for(act, 0));

    void *ptrs[] = {qd, kd, vd, od, posd, seqd, slotd, idd, startd, lend, tabd};
    for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++)
        g->ops->free(g, ptrs[i]);
    free(q);
    free(k);
    free(v);
    free(want);
    free(got);
    free_step(&h);
}

/* A case end to end in one mode: the history step, then the tested step,
 * then the caches compared slot by slot where written. */
static int attn_stages; /* the decode kernel's stages knob for the runs of attn_run_case */
static int attn_rows;   /* the tensor-core prefill kernel's rows-a-block knob (0, 64, 128) */
static int attn_fp8;    /* 1: an fp8 KV cache with attn_k_scale / attn_v_scale (0 means 1) */

static void attn_run_case(fixture *f, const attn_case *c, int a, anvil_cuda_attn_kernel kernel, int32_t splits)
{
    anvil_backend *g = f->gpu[a];
    const anvil_dtype act = act_dtypes[a];
    attn_env e;
    memset(&e, 0, sizeof e);
    e.c = c;
    e.a = a;
    e.cache_dt = attn_fp8 ? ANVIL_DTYPE_F8_E4M3 : act;
    int32_t need = 0, MB = 1;
    for (int s = 0; s < c->n_seqs; s++) {
        int32_t nb = (c->hist[s] + c->n_new[s] + c->block_size - 1) / c->block_size;
        need += nb;
        MB = nb > MB ? nb : MB;
    }
    e.MB = MB + 1; /* one unused entry at the end of every table */
    e.n_blocks = need + 3; /* a few blocks nobody owns */
    /* scattered: a shuffled list of block ids dealt out to the sequences */
    int32_t *perm = malloc((size_t)e.n_blocks * 4);
    for (int32_t i = 0; i < e.n_blocks; i++)
        perm[i] = i;
    for (int32_t i = e.n_blocks - 1; i > 0; i--) {
        int32_t j = (int32_t)(anvil_test_rand(&f->rng) % (uint64_t)(i + 1)), tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
    e.tables = malloc((size_t)c->n_seqs * e.MB * 4);
    int32_t next = 0;
    for (int s = 0; s < c->n_seqs; s++) {
        int32_t nb = (c->hist[s] + c->n_new[s] + c->block_size - 1) / c->block_size;
        for (int32_t j = 0; j < e.MB; j++)
            e.tables[(size_t)s * e.MB + j] = j < nb ? perm[next++] : -1; /* -1: never read */
    }
    free(perm);
    const int64_t kw = (int64_t)c->n_kv_heads * c->head_dim;
    const int64_t cache_elems = (int64_t)e.n_blocks * c->block_size * kw;
    e.cache_bytes = (size_t)cache_elems * anvil_dtype_size(e.cache_dt);
    e.kc_h = malloc(e.cache_bytes);
    e.vc_h = malloc(e.cache_bytes);
    memset(e.kc_h, 0, e.cache_bytes);
    memset(e.vc_h, 0, e.cache_bytes);
    e.kc_d = dev_alloc(g, e.cache_bytes); /* poisoned: reading an unwritten slot gives NaN */
    e.vc_d = dev_alloc(g, e.cache_bytes);

    anvil_cuda_knobs k = {.attn_kernel = kernel, .attn_splits = splits, .attn_decode_stages = attn_stages,
                          .attn_prefill_rows = attn_rows};
    assert_int_equal(anvil_cuda_set_knobs(g, &k), ANVIL_OK);
    char mode[96];
    snprintf(mode, sizeof mode, "%s splits=%d stages=%d rows=%d scales=%g,%g softcap=%g",
             kernel == ANVIL_CUDA_ATTN_AUTO     ? "auto"
             : kernel == ANVIL_CUDA_ATTN_DECODE ? "decode"
             : kernel == ANVIL_CUDA_ATTN_PREFILL ? "prefill"
             : kernel == ANVIL_CUDA_ATTN_DECODE_SIMT ? "decode-simt"
                                                 : "prefill-simt",
             splits, attn_stages, attn_rows, (double)attn_k_scale, (double)attn_v_scale, (double)attn_softcap);
    attn_run_step(f, &e, 0, mode);
    attn_run_step(f, &e, 1, mode);
    reset_knobs(g);

    /* the caches: every written slot equal, bit for bit (an fp8 cache's
     * bytes: the same quantization on both sides) */
    float *kg, *vg, *kcpu = malloc((size_t)cache_elems * 4), *vcpu = malloc((size_t)cache_elems * 4);
    if (attn_fp8) {
        uint8_t *kb = malloc(e.cache_bytes), *vb = malloc(e.cache_bytes);
        assert_true(kb && vb);
        assert_int_equal(g->ops->download(g, kb, e.kc_d, e.cache_bytes), ANVIL_OK);
        assert_int_equal(g->ops->download(g, vb, e.vc_d, e.cache_bytes), ANVIL_OK);
        kg = malloc((size_t)cache_elems * 4);
        vg = malloc((size_t)cache_elems * 4);
        assert_true(kg && vg);
        const uint8_t *kh8 = e.kc_h, *vh8 = e.vc_h;
        for (int64_t i = 0; i < cache_elems; i++) { /* bytes as floats: compared bit for bit below */
            kg[i] = (float)kb[i];
            vg[i] = (float)vb[i];
            kcpu[i] = (float)kh8[i];
            vcpu[i] = (float)vh8[i];
        }
        free(kb);
        free(vb);
    } else {
        kg = dev_download_floats(g, e.kc_d, cache_elems, act, "k cache");
        vg = dev_download_floats(g, e.vc_d, cache_elems, act, "v cache");
        anvil_convert_to_f32(act, e.kc_h, kcpu, cache_elems);
        anvil_convert_to_f32(act, e.vc_h, vcpu, cache_elems);
    }
    for (int s = 0; s < c->n_seqs; s++) {
        for (int32_t p = 0; p < c->hist[s] + c->n_new[s]; p++) {
            int64_t slot = (int64_t)e.tables[(size_t)s * e.MB + p / c->block_size] * c->block_size + p % c->block_size;
            for (int64_t i = 0; i < kw; i++) {
                int64_t x = slot * kw + i;
                if (memcmp(&kg[x], &kcpu[x], 4) != 0 || memcmp(&vg[x], &vcpu[x], 4) != 0)
                    fail_msg("attention '%s' %s: cache of sequence %d position %d differs at %lld", c->name, mode, s,
                             p, (long long)i);
            }
        }
    }
    free(kg);
    free(vg);
    free(kcpu);
    free(vcpu);
    g->ops->free(g, e.kc_d);
    g->ops->free(g, e.vc_d);
    free(e.kc_h);
    free(e.vc_h);
    free(e.tables);
}

static void test_attention(void **state)
{
    NEED_GPU();
    fixture *f = *state;
    for (size_t i = 0; i < sizeof attn_cases / sizeof attn_cases[0]; i++) {
        const attn_case *c = &attn_cases[i];
        if (f->quick && c->big)
            continue;
        for (int a = 0; a < N_ACT; a++) {
            attn_run_case(f, c, a, ANVIL_CUDA_ATTN_AUTO, 0);
            if (f->quick && a > 0)
                continue;
            attn_run_case(f, c, a, ANVIL_CUDA_ATTN_DECODE, 0);
            attn_run_case(f, c, a, ANVIL_CUDA_ATTN_DECODE, 3);
            attn_run_case(f, c, a, ANVIL_CUDA_ATTN_PREFILL, 0);
            if (a > 0) { /* f32 takes the SIMT kernels already */
                attn_run_case(f, c, a, ANVIL_CUDA_ATTN_PREFILL_SIMT, 0);
                attn_run_case(f, c, a, ANVIL_CUDA_ATTN_DECODE_SIMT, 0);
                attn_run_case(f, c, a, ANVIL_CUDA_ATTN_DECODE_SIMT, 3);
                attn_stages = 3; /* the tensor-core decode kernel three stages deep */
                attn_run_case(f, c, a, ANVIL_CUDA_ATTN_DECODE, 0);
                attn_run_case(f, c, a, ANVIL_CUDA_ATTN_DECODE, 3);
                attn_stages = 0;
                for (int r = 64; r <= 128; r += 64) { /* the prefill kernel at both block heights */
                    attn_rows = r;
                    attn_run_case(f, c, a, ANVIL_CUDA_ATTN_PREFILL, 0);
                    attn_run_case(f, c, a, ANVIL_CUDA_ATTN_AUTO, 0);
                }
                attn_rows = 0;
            }
        }
    }
}

/*
 * The fp8 KV cache against the CPU's, on every kernel that reads it: the
 * caches written bit for bit alike (k / k_scale rounded to e4m3 on both),
 * and out within the 16-bit tolerance (both sides read the same cached
 * values; only the arithmetic differs, as with a bf16/f16 cache). Scales
 * none (1), and k 0.5 / v 0.25 (unbalanced, so a scale applied to the
 * wrong side shows).
 */
static void test_attention_fp8(void **state)
{
    NEED_GPU();
    fixture *f = *state;
    static const float scales[][2] = {{0.0f, 0.0f}, {0.5f, 0.25f}};
    attn_fp8 = 1;
    for (size_t i = 0; i < sizeof attn_fp8_cases / sizeof attn_fp8_cases[0]; i++) {
        const attn_case *c = &attn_fp8_cases[i];
        if (f->quick && c->big)
            continue;
        for (int a = 1; a < N_ACT; a++) { /* bf16, f16: an fp8 cache needs 16-bit activations */
            for (size_t si = 0; si < sizeof scales / sizeof scales[0]; si++) {
                attn_k_scale = scales[si][0];
                attn_v_scale = scales[si][1];
                attn_run_case(f, c, a, ANVIL_CUDA_ATTN_AUTO, 0);
                if (f->quick && (a > 1 || si > 0))
                    continue;
                if (c->big) { /* the long contexts: the kernels that read them split, SIMT as the check */
                    attn_run_case(f, c, a, ANVIL_CUDA_ATTN_DECODE, 0);
                    attn_run_case(f, c, a, ANVIL_CUDA_ATTN_PREFILL_SIMT, 0);
                    continue;
                }
                attn_run_case(f, c, a, ANVIL_CUDA_ATTN_DECODE, 0);
                attn_run_case(f, c, a, ANVIL_CUDA_ATTN_DECODE, 3);
                attn_run_case(f, c, a, ANVIL_CUDA_ATTN_PREFILL, 0);
                attn_run_case(f, c, a, ANVIL_CUDA_ATTN_PREFILL_SIMT, 0);
                attn_run_case(f, c, a, ANVIL_CUDA_ATTN_DECODE_SIMT, 0); /* takes the SIMT tiled kernel */
                attn_rows = 64; /* the fp8 prefill kernel keeps two m-tiles: the knob changes nothing */
                attn_run_case(f, c, a, ANVIL_CUDA_ATTN_PREFILL, 0);
                attn_rows = 0;
                attn_stages = 3; /* the fp8 decode kernel keeps two stages */
                attn_run_case(f, c, a, ANVIL_CUDA_ATTN_DECODE, 3);
                attn_stages = 0;
            }
        }
    }
    attn_fp8 = 0;
    attn_k_scale = attn_v_scale = 0.0f;
}

/*
 * Soft-capped scores (Gemma 2's attn_logit_softcapping) against the CPU's,
 * under every kernel: tensor-core decode (two and three stages) and
 * prefill (both block heights), the mixed split, the SIMT ones, an fp8
 * cache. 1.5 bends these scores (|q.k| * scale reaches a few), so a kernel
 * that ignored the cap would fail here.
 */
static void test_attention_softcap(void **state)
{
    NEED_GPU();
    fixture *f = *state;
    attn_softcap = 1.5f;
    for (size_t i = 0; i < sizeof attn_cases / sizeof attn_cases[0]; i++) {
        const attn_case *c = &attn_cases[i];
        if (c->big)
            continue;
        for (int a = 0; a < N_ACT; a++) {
            attn_run_case(f, c, a, ANVIL_CUDA_ATTN_AUTO, 0);
            attn_run_case(f, c, a, ANVIL_CUDA_ATTN_DECODE, 0);
            attn_run_case(f, c, a, ANVIL_CUDA_ATTN_DECODE, 3);
            attn_run_case(f, c, a, ANVIL_CUDA_ATTN_PREFILL, 0);
            if (a > 0) { /* f32 takes the SIMT kernels already */
                attn_run_case(f, c, a, ANVIL_CUDA_ATTN_PREFILL_SIMT, 0);
                attn_run_case(f, c, a, ANVIL_CUDA_ATTN_DECODE_SIMT, 3);
                attn_stages = 3;
                attn_run_case(f, c, a, ANVIL_CUDA_ATTN_DECODE, 3);
                attn_stages = 0;
                attn_rows = 128;
                attn_run_case(f, c, a, ANVIL_CUDA_ATTN_PREFILL, 0);
                attn_rows = 0;
            }
        }
    }
    attn_fp8 = 1;
    for (size_t i = 0; i < sizeof attn_fp8_cases / sizeof attn_fp8_cases[0]; i++)
        if (!attn_fp8_cases[i].big)
            for (int a = 1; a < N_ACT; a++) {
                attn_run_case(f, &attn_fp8_cases[i], a, ANVIL_CUDA_ATTN_AUTO, 0);
                attn_run_case(f, &attn_fp8_cases[i], a, ANVIL_CUDA_ATTN_DECODE, 0);
            }
    attn_fp8 = 0;
    attn_softcap = 0.0f;
}

/* Bad slots and block tables come back as ANVIL_ERR_INVALID_ARG at the
 * next sync, without touching memory outside the cache; shapes and dtypes
 * at once. */
static void test_attention_errors(void **state)
{
    NEED_GPU();
    fixture *f = *state;
    anvil_backend *g = f->gpu[0];
    const int32_t hd = 16, H = 2, KV = 1, bs = 4, n_blocks = 2, T = 1;
    void *buf = dev_alloc(g, 1 << 16);
    char *b = buf;
    anvil_tensor q = anvil_tensor_2d(ANVIL_DTYPE_F32, T, H * hd, b);
    anvil_tensor k = anvil_tensor_2d(ANVIL_DTYPE_F32, T, KV * hd, b + 1024);
    anvil_tensor v = anvil_tensor_2d(ANVIL_DTYPE_F32, T, KV * hd, b + 2048);
    anvil_tensor o = anvil_tensor_2d(ANVIL_DTYPE_F32, T, H * hd, b + 3072);
    anvil_tensor kc = {.dtype = ANVIL_DTYPE_F32, .n_dims = 4, .shape = {n_blocks, bs, KV, hd}, .data = b + 8192};
    anvil_tensor vc = kc;
    vc.data = b + 16384;
    int32_t meta[16] = {0};
    /* pos, seq_of, slot, starts[2], table[2] */
    int32_t *pos = meta, *seq = meta + 1, *slot = meta + 2, *starts = meta + 3, *table = meta + 5;
    char *md = b + 32768;
    anvil_step s = {.n_tokens = T, .n_seqs = 1, .max_blocks_per_seq = 2, .block_size = bs, .max_context = 1,
                    .positions = (int32_t *)md, .seq_of_token = (int32_t *)md + 1, .slots = (int32_t *)md + 2,
                    .seq_starts = (int32_t *)md + 3, .block_tables = (int32_t *)md + 5, .seq_lens = (int32_t *)md + 7};
    anvil_attention_args a = {.q = &q, .k = &k, .v = &v, .k_cache = &kc, .v_cache = &vc, .out = &o, .step = &s,
                              .n_heads = H, .n_kv_heads = KV, .head_dim = hd, .scale = 0.25f};
    const anvil_cuda_attn_kernel kernels[2] = {ANVIL_CUDA_ATTN_DECODE, ANVIL_CUDA_ATTN_PREFILL};
    for (int ki = 0; ki < 2; ki++) {
        anvil_cuda_knobs kn = {.attn_kernel = kernels[ki]};
        assert_int_equal(anvil_cuda_set_knobs(g, &kn), ANVIL_OK);
        /* a slot past the cache */
        *pos = 0, *seq = 0, *slot = n_blocks * bs, starts[0] = 0, starts[1] = 1, table[0] = 0, table[1] = 1;
        assert_int_equal(g->ops->upload(g, md, meta, sizeof meta), ANVIL_OK);
        OK_OR_FAIL(g->ops->attention(g, &a), "attention (bad slot)");
        assert_status_msg(g->ops->synchronize(g), ANVIL_ERR_INVALID_ARG, "cache slot");
        /* a block id past the cache */
        *slot = 0, table[0] = n_blocks;
        assert_int_equal(g->ops->upload(g, md, meta, sizeof meta), ANVIL_OK);
        OK_OR_FAIL(g->ops->attention(g, &a), "attention (bad block)");
        assert_status_msg(g->ops->synchronize(g), ANVIL_ERR_INVALID_ARG, "block id");
        /* a sequence index past n_seqs */
        table[0] = 0, *seq = 1;
        assert_int_equal(g->ops->upload(g, md, meta, sizeof meta), ANVIL_OK);
        OK_OR_FAIL(g->ops->attention(g, &a), "attention (bad seq)");
        assert_status_msg(g->ops->synchronize(g), ANVIL_ERR_INVALID_ARG, "seq_of_token");
        /* and a good step afterwards works */
        *seq = 0;
        assert_int_equal(g->ops->upload(g, md, meta, sizeof meta), ANVIL_OK);
        OK_OR_FAIL(g->ops->attention(g, &a), "attention (good)");
        gpu_sync_ok(g, "attention after errors");
    }
    reset_knobs(g);
    /* shape and dtype errors, at once */
    anvil_attention_args bad = a;
    bad.head_dim = 18;
    assert_int_not_equal(g->ops->attention(g, &bad), ANVIL_OK);
    bad = a;
    bad.n_kv_heads = 3;
    assert_status_msg(g->ops->attention(g, &bad), ANVIL_ERR_INVALID_ARG, "n_kv_heads");
    anvil_tensor kc16 = kc;
    kc16.dtype = ANVIL_DTYPE_BF16;
    bad = a;
    bad.k_cache = &kc16;
    assert_status_msg(g->ops->attention(g, &bad), ANVIL_ERR_UNSUPPORTED, "k_cache");
    /* an fp8 cache: not beside f32 activations, and its scales positive and finite */
    anvil_tensor kc8 = kc, vc8 = vc;
    kc8.dtype = vc8.dtype = ANVIL_DTYPE_F8_E4M3;
    bad = a;
    bad.k_cache = &kc8;
    bad.v_cache = &vc8;
    assert_status_msg(g->ops->attention(g, &bad), ANVIL_ERR_UNSUPPORTED, "f8_e4m3 with bf16/f16");
    {
        anvil_backend *g16 = f->gpu[1];
        void *buf16 = dev_alloc(g16, 1 << 16);
        char *b16 = buf16;
        anvil_tensor q16 = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, H * hd, b16);
        anvil_tensor k16 = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, KV * hd, b16 + 1024);
        anvil_tensor v16 = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, KV * hd, b16 + 2048);
        anvil_tensor o16 = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, H * hd, b16 + 3072);
        anvil_tensor k8 = {.dtype = ANVIL_DTYPE_F8_E4M3, .n_dims = 4, .shape = {n_blocks, bs, KV, hd}, .data = b16 + 8192};
        anvil_tensor v8 = k8;
        v8.data = b16 + 16384;
        anvil_attention_args a8 = a;
        a8.q = &q16;
        a8.k = &k16;
        a8.v = &v16;
        a8.out = &o16;
        a8.k_cache = &k8;
        a8.v_cache = &v8;
        a8.k_scale = NAN;
        assert_status_msg(g16->ops->attention(g16, &a8), ANVIL_ERR_INVALID_ARG, "fp8 KV cache scales");
        a8.k_scale = 1.0f;
        a8.v_scale = -2.0f;
        assert_status_msg(g16->ops->attention(g16, &a8), ANVIL_ERR_INVALID_ARG, "fp8 KV cache scales");
        anvil_tensor v16c = v8;
        v16c.dtype = ANVIL_DTYPE_BF16;
        a8.v_scale = 1.0f;
        a8.v_cache = &v16c; /* k fp8, v bf16 */
        assert_status_msg(g16->ops->attention(g16, &a8), ANVIL_ERR_INVALID_ARG, "differ");
        gpu_sync_ok(g16, "fp8 attention errors");
        g16->ops->free(g16, buf16);
    }
    bad = a;
    bad.softcap = -1.0f; /* a soft cap: 0 or positive, with a positive scale */
    assert_status_msg(g->ops->attention(g, &bad), ANVIL_ERR_INVALID_ARG, "softcap");
    bad.softcap = 30.0f;
    bad.scale = 0.0f;
    assert_status_msg(g->ops->attention(g, &bad), ANVIL_ERR_INVALID_ARG, "positive scale");
    bad = a;
    bad.out = &q;
    assert_status_msg(g->ops->attention(g, &bad), ANVIL_ERR_INVALID_ARG, "alias");
    anvil_tensor q_odd = q;
    q_odd.data = b + 4;
    bad = a;
    bad.q = &q_odd;
    assert_status_msg(g->ops->attention(g, &bad), ANVIL_ERR_UNSUPPORTED, "aligned");
    gpu_sync_ok(g, "attention errors");
    g->ops->free(g, buf);
}

/* ---------------------------------------------------------------- --perf */

#include "cuda_perf.h"

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--perf") == 0)
        return anvil_cuda_perf_main();
    if (argc > 2 && strcmp(argv[1], "--only") == 0) /* the tests whose names match a pattern (cmocka's) */
        cmocka_set_test_filter(argv[2]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_errors),
        cmocka_unit_test(test_memory),
        cmocka_unit_test(test_embedding),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_head_rmsnorm),
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_matmul_errors),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_elementwise),
        cmocka_unit_test(test_gemma_elementwise),
        cmocka_unit_test(test_gpt2_ops),
        cmocka_unit_test(test_gather_rows),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_attention_fp8),
        cmocka_unit_test(test_attention_softcap),
        cmocka_unit_test(test_attention_errors),
    };
    return anvil_test_group_result(cmocka_run_group_tests(tests, setup, teardown), sizeof tests / sizeof tests[0]);
}
