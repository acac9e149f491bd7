/*
 * fp8 W8A8 activations made once for the matmuls of one input, and by the
 * add + rmsnorm before them (cuda_fp8_x.c; cuda_add_rmsnorm.cu's Q
 * kernels), against the path where each matmul quantizes its input itself
 * (the knob fp8_act_share = 2, session 27's path), bit for bit:
 *   the kernel: anvil_cuda_launch_add_rmsnorm_quant against
 *     anvil_cuda_launch_add_rmsnorm then anvil_cuda_launch_quant_act of
 *     the norm (fp8 codes and row scales): sum, norm, codes and scales
 *     equal; widths on the warp (384), vector (4096, 5120) and scalar (4096
 *     unaligned) kernels; rows 1, 7, 64, 513; bf16 and f16; dynamic and
 *     static scales; a row of zeros (sx 0) and a row of large values;
 *   the ops at Llama-3-8B's shapes: add_rmsnorm_matmul_multi (q/k/v, 4096
 *     -> 4096, 1024, 1024) and add_rmsnorm_matmul_silu_mul (gate/up, 4096
 *     -> 14336), and matmul_multi / matmul_silu_mul alone, rows 1, 7, 64,
 *     513: every output equal with the share and without, and the share's
 *     counters say where the codes came from (from 64 rows, the FP8 GEMM's:
 *     made once, by the norm where there is one, and read by every matmul;
 *     at 1 and 7 rows the GEMV quantizes inside its launch: no share used);
 *   a whole model: tinycode built with --quantize fp8 (bf16 and f16
 *     compute): fused against separate ops (fusion_compare: a 33-token
 *     prefill, which takes the FP8 GEMM, then 8 decode steps; every logit
 *     and greedy token), and with the fused plan, the share on against off
 *     (the runtime option cuda_fp8_unshared; every logit of the golden
 *     prompts), the norm having made codes, none made with it off.
 *
 * --perf: a 2048-token prefill's groups at Llama-3-8B's shapes (bf16):
 * q/k/v and gate/up + silu with their add + rmsnorm, shared and not, next
 * to cuBLASLt's FP8 GEMM alone on the same GEMMs (TFLOP/s counting the
 * GEMMs' 2 T K N), and the norm with and without the codes. Nothing
 * asserted there.
 *
 * Skips without a GPU.
 */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/builder.h"
#include "anvil/dtype.h"
#include "anvil/runtime.h"
#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_internal.h"
#include "core/tensor.h"
#include "fusion_check.h"
#include "golden.h"
#include "runtime/runtime_internal.h"
#include "testutil.h"

#define NEED_GPU()                           \
    do {                                     \
        if (anvil_cuda_device_count() == 0)  \
            skip();                          \
    } while (0)

#define OK_OR_FAIL(expr, what)                                      \
    do {                                                            \
        anvil_status ok_st_ = (expr);                               \
        if (ok_st_ != ANVIL_OK)                                     \
            fail_msg("%s: %s", (what), anvil_last_error());         \
    } while (0)

static uint64_t rng = 0xf8f8c0deull;

static const int64_t ROWS[] = {1, 7, 64, 513};
#define N_ROWS 4

static anvil_backend *gpu(anvil_dtype dt)
{
    anvil_backend *be = NULL;
    OK_OR_FAIL(anvil_backend_cuda_create(0, dt, &be), "cuda backend");
    return be;
}

static void set_share(anvil_backend *be, int share)
{
    anvil_cuda_knobs k;
    memset(&k, 0, sizeof k);
    k.fp8_act_share = share ? 0 : 2;
    OK_OR_FAIL(anvil_cuda_set_knobs(be, &k), "knobs");
}

static void *dev_alloc(anvil_backend *be, size_t bytes)
{
    void *d = NULL;
    OK_OR_FAIL(be->ops->alloc(be, bytes > 0 ? bytes : 1, &d), "alloc");
    return d;
}

static void *dev_put(anvil_backend *be, const void *h, size_t bytes)
{
    void *d = dev_alloc(be, bytes);
    if (bytes > 0)
        OK_OR_FAIL(be->ops->upload(be, d, h, bytes), "upload");
    return d;
}

/* n random values in [-scale, scale) as dt, on the device (at byte offset
 * `skew` into the allocation: 2 makes a 16-bit tensor unaligned). *base:
 * the allocation, to free. */
static void *dev_rand(anvil_backend *be, anvil_dtype dt, int64_t n, float scale, size_t skew, void **base)
{
    const size_t es = anvil_dtype_size(dt), bytes = (size_t)n * es;
    float *f = malloc((size_t)(n > 0 ? n : 1) * sizeof *f);
    uint8_t *h = malloc(bytes + skew + 1);
    assert_true(f && h);
    for (int64_t i = 0; i < n; i++)
        f[i] = scale * anvil_test_randf(&rng);
    anvil_convert_from_f32(dt, f, h + skew, n);
    memset(h, 0, skew);
    *base = dev_put(be, h, bytes + skew);
    free(f);
    free(h);
    return (char *)*base + skew;
}

static void *host_get(anvil_backend *be, const void *d, size_t bytes)
{
    void *h = malloc(bytes > 0 ? bytes : 1);
    assert_non_null(h);
    OK_OR_FAIL(be->ops->download(be, h, d, bytes), "download");
    return h;
}

static void expect_same(anvil_backend *be, const void *x, const void *y, size_t bytes, const char *what)
{
    uint8_t *a = host_get(be, x, bytes), *b = host_get(be, y, bytes);
    size_t first = bytes;
    for (size_t i = 0; i < bytes && first == bytes; i++)
        if (a[i] != b[i])
            first = i;
    free(a);
    free(b);
    if (first != bytes)
        fail_msg("%s: differs from byte %zu of %zu", what, first, bytes);
}

/* ---------------------------------------------------------------- the kernel */

/* Row r of a [T, K] device tensor of dt: read, or written from floats. */
static float *row_get(anvil_backend *be, anvil_dtype dt, const void *t, int64_t r, int64_t K)
{
    const size_t es = anvil_dtype_size(dt);
    void *h = host_get(be, (const char *)t + (size_t)(r * K) * es, (size_t)K * es);
    float *f = malloc((size_t)K * sizeof *f);
    assert_non_null(f);
    anvil_convert_to_f32(dt, h, f, K);
    free(h);
    return f;
}

static void row_put(anvil_backend *be, anvil_dtype dt, void *t, int64_t r, int64_t K, const float *f)
{
    const size_t es = anvil_dtype_size(dt);
    void *h = malloc((size_t)K * es);
    assert_non_null(h);
    anvil_convert_from_f32(dt, f, h, K);
    OK_OR_FAIL(be->ops->upload(be, (char *)t + (size_t)(r * K) * es, h, (size_t)K * es), "upload");
    free(h);
}

/* One case of the norm kernel with codes against the two launches. */
static void norm_case(anvil_backend *be, anvil_dtype dt, int64_t T, int64_t K, int act, int unaligned)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    const size_t es = anvil_dtype_size(dt), skew = unaligned ? 2 : 0;
    void *ab, *bb, *wb;
    void *a = dev_rand(be, dt, T * K, 4.0f, skew, &ab);
    void *b = dev_rand(be, dt, T * K, 4.0f, skew, &bb);
    void *w = dev_rand(be, dt, K, 1.0f, 0, &wb);
    if (T > 2) { /* row 1: b = -a (exact), a sum of zeros: sx 0, every code 0; row 2: large values */
        float *f = row_get(be, dt, a, 1, K);
        for (int64_t k = 0; k < K; k++)
            f[k] = -f[k];
        row_put(be, dt, b, 1, K, f);
        for (int64_t k = 0; k < K; k++)
            f[k] = 3000.0f * anvil_test_randf(&rng);
        row_put(be, dt, a, 2, K, f);
        free(f);
    }
    const size_t nb = (size_t)(T * K) * es;
    void *sum1b = dev_alloc(be, nb + skew), *sum2b = dev_alloc(be, nb + skew);
    void *norm1b = dev_alloc(be, nb + skew), *norm2b = dev_alloc(be, nb + skew);
    void *sum1 = (char *)sum1b + skew, *sum2 = (char *)sum2b + skew;
    void *norm1 = (char *)norm1b + skew, *norm2 = (char *)norm2b + skew;
    void *c1 = dev_alloc(be, (size_t)(T * K)), *c2 = dev_alloc(be, (size_t)(T * K));
    float *s1 = dev_alloc(be, (size_t)T * 4), *s2 = dev_alloc(be, (size_t)T * 4);
    const float input_scale = 5.0f / 448; /* static: some values saturate at 448 */
    OK_OR_FAIL(anvil_cuda_use(cb), "use");
    OK_OR_FAIL(anvil_cuda_launch_add_rmsnorm_quant(cb->stream, cb->pdl, a, b, w, dt, sum1, norm1, dt, T, K, 1e-5f, act,
                                                   input_scale, c1, s1),
               "add_rmsnorm with codes");
    OK_OR_FAIL(anvil_cuda_launch_add_rmsnorm(cb->stream, cb->pdl, a, b, w, dt, sum2, norm2, dt, T, K, 1e-5f),
               "add_rmsnorm");
    OK_OR_FAIL(anvil_cuda_launch_quant_act(cb->stream, cb->pdl, norm2, dt, NULL, act, input_scale, T, K, c2,
                                           ANVIL_DTYPE_F8_E4M3, s2, cb->d_err),
               "quant_act");
    OK_OR_FAIL(be->ops->synchronize(be), "synchronize");
    char what[160];
    snprintf(what, sizeof what, "%s T %lld K %lld %s%s", anvil_dtype_name(dt), (long long)T, (long long)K,
             act == ANVIL_QUANT_ACT_FP8_STATIC ? "static" : "dynamic", unaligned ? " unaligned" : "");
    expect_same(be, sum1, sum2, nb, what);
    expect_same(be, norm1, norm2, nb, what);
    expect_same(be, c1, c2, (size_t)(T * K), what);
    expect_same(be, s1, s2, (size_t)T * 4, what);
    if (T > 2 && act == ANVIL_QUANT_ACT_FP8_DYNAMIC) { /* the zero row's scale is 0, the others' not */
        float *hs = host_get(be, s1, (size_t)T * 4);
        assert_true(hs[1] == 0.0f);
        assert_true(hs[0] > 0.0f && hs[2] > 0.0f);
        free(hs);
    }
    void *bufs[] = {ab, bb, wb, sum1b, sum2b, norm1b, norm2b, c1, c2, s1, s2};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        be->ops->free(be, bufs[i]);
}

static void test_norm_kernel(void **s)
{
    (void)s;
    NEED_GPU();
    const anvil_dtype dts[2] = {ANVIL_DTYPE_BF16, ANVIL_DTYPE_F16};
    /* 384: the warp kernel; 4096, 5120: the vector kernel with the row in
     * registers (up to 8192 wide in 16 bits); 12288: past them (each thread
     * re-reads its own stores); unaligned: the scalar kernel */
    const int64_t widths[4] = {384, 4096, 5120, 12288};
    for (int d = 0; d < 2; d++) {
        anvil_backend *be = gpu(dts[d]);
        for (int wi = 0; wi < 4; wi++)
            for (int r = 0; r < N_ROWS; r++)
                for (int act = ANVIL_QUANT_ACT_FP8_DYNAMIC; act <= ANVIL_QUANT_ACT_FP8_STATIC; act++)
                    norm_case(be, dts[d], ROWS[r], widths[wi], act, 0);
        for (int r = 0; r < N_ROWS; r++)
            norm_case(be, dts[d], ROWS[r], 4096, ANVIL_QUANT_ACT_FP8_DYNAMIC, 1);
        /* refused: a scheme without fp8 activations, no codes */
        anvil_cuda_backend *cb = anvil_cuda_impl(be);
        assert_int_equal(anvil_cuda_launch_add_rmsnorm_quant(cb->stream, 0, NULL, NULL, NULL, dts[d], NULL, NULL,
                                                             dts[d], 1, 64, 1e-5f, ANVIL_QUANT_ACT_NONE, 1.0f, NULL,
                                                             NULL),
                         ANVIL_ERR_INVALID_ARG);
        anvil_backend_free(be);
    }
}

/* ---------------------------------------------------------------- the ops */

/* A random fp8 W8A8 weight [N, K] with per-channel scales, on the device. */
typedef struct fp8w {
    void *codes, *scales;
    anvil_quant q;
    anvil_tensor t;
} fp8w;

static void make_fp8w(anvil_backend *be, int64_t N, int64_t K, int act, fp8w *w)
{
    memset(w, 0, sizeof *w);
    uint8_t *c = malloc((size_t)(N * K));
    float *sc = malloc((size_t)N * sizeof *sc);
    assert_true(c && sc);
    uint64_t r = 0;
    for (int64_t i = 0; i < N * K; i++) {
        if (i % 8 == 0)
            r = anvil_test_rand(&rng);
        uint8_t b = (uint8_t)(r >> (8 * (i % 8)));
        if ((b & 0x7f) == 0x7f) /* NaN codes: never in a weight */
            b ^= 1;
        c[i] = b;
    }
    for (int64_t n = 0; n < N; n++) /* |W| about 1/sqrt(K) */
        sc[n] = (0.5f + 0.5f * fabsf(anvil_test_randf(&rng))) / (448.0f * sqrtf((float)K));
    w->codes = dev_put(be, c, (size_t)(N * K));
    w->scales = dev_put(be, sc, (size_t)N * sizeof *sc);
    free(c);
    free(sc);
    w->q.scales = w->scales;
    w->q.act = (anvil_quant_act)act;
    w->q.input_scale = act == ANVIL_QUANT_ACT_FP8_STATIC ? 6.0f / 448 : 0.0f;
    w->t = anvil_tensor_2d(ANVIL_DTYPE_F8_E4M3, N, K, w->codes);
    w->t.quant = &w->q;
}

static void free_fp8w(anvil_backend *be, fp8w *w)
{
    be->ops->free(be, w->codes);
    be->ops->free(be, w->scales);
}

typedef struct counts {
    int64_t norm, quant, reused;
} counts;

static counts counts_of(anvil_backend *be)
{
    const anvil_cuda_backend *cb = anvil_cuda_impl(be);
    return (counts){cb->fp8_x_norm_made, cb->fp8_x_quant_made, cb->fp8_x_reused};
}

static counts counts_since(anvil_backend *be, counts c0)
{
    const counts c = counts_of(be);
    return (counts){c.norm - c0.norm, c.quant - c0.quant, c.reused - c0.reused};
}

/* A layer's fp8 W8A8 weights at Llama-3-8B's shapes. */
typedef struct layer_w {
    fp8w q, k, v, g, u;
} layer_w;

static void make_layer(anvil_backend *be, int act, layer_w *l)
{
    make_fp8w(be, 4096, 4096, act, &l->q);
    make_fp8w(be, 1024, 4096, act, &l->k);
    make_fp8w(be, 1024, 4096, act, &l->v);
    make_fp8w(be, 14336, 4096, act, &l->g);
    make_fp8w(be, 14336, 4096, act, &l->u);
}

static void free_layer(anvil_backend *be, layer_w *l)
{
    free_fp8w(be, &l->q);
    free_fp8w(be, &l->k);
    free_fp8w(be, &l->v);
    free_fp8w(be, &l->g);
    free_fp8w(be, &l->u);
}

/* The four ops on one set of inputs, without the share (pass 0) and with
 * it (pass 1), each pass writing its own outputs; then every output
 * compared, and the share's counters checked. */
static void ops_case(anvil_backend *be, anvil_dtype dt, int64_t T, const layer_w *l)
{
    const int64_t K = 4096, NQ = 4096, NKV = 1024, NF = 14336;
    const size_t es = anvil_dtype_size(dt);
    const int act = (int)l->q.q.act;
    void *ab, *bb, *nwb;
    void *a = dev_rand(be, dt, T * K, 2.0f, 0, &ab), *b = dev_rand(be, dt, T * K, 2.0f, 0, &bb);
    void *nw = dev_rand(be, dt, K, 1.0f, 0, &nwb);
    anvil_tensor at = anvil_tensor_2d(dt, T, K, a), bt = anvil_tensor_2d(dt, T, K, b);
    anvil_tensor nwt = anvil_tensor_1d(dt, K, nw);
    /* per pass: the q/k/v group's sum, norm and outputs, the gate/up group's sum, norm and output,
     * then matmul_multi's and matmul_silu_mul's outputs on the first norm; gate and up: scratch */
    enum { SUM, X, Q, KK, V, SUM2, X2, F, Q2, K2, V2, F2, G, U, NBUF };
    const int64_t cols[NBUF] = {K, K, NQ, NKV, NKV, K, K, NF, NQ, NKV, NKV, NF, NF, NF};
    void *buf[2][NBUF];
    anvil_tensor t[2][NBUF];
    const anvil_tensor *w3[3] = {&l->q.t, &l->k.t, &l->v.t}, *nob[3] = {NULL, NULL, NULL};
    const int gemm = T > 8; /* the FP8 GEMM's rows (the GEMVs take 1..8, quantizing inside) */
    for (int p = 0; p < 2; p++) {
        for (int i = 0; i < NBUF; i++) {
            buf[p][i] = dev_alloc(be, (size_t)(T * cols[i]) * es);
            t[p][i] = anvil_tensor_2d(dt, T, cols[i], buf[p][i]);
        }
        set_share(be, p);
        counts c0 = counts_of(be);
        anvil_tensor *o3[3] = {&t[p][Q], &t[p][KK], &t[p][V]};
        OK_OR_FAIL(be->ops->add_rmsnorm_matmul_multi(be, &at, &bt, &nwt, 1e-5f, &t[p][SUM], &t[p][X], 3, w3, nob, o3),
                   "add_rmsnorm_matmul_multi");
        counts c = counts_since(be, c0);
        if (p == 1 && gemm) { /* the norm made the codes, the three GEMMs read them */
            assert_int_equal(c.norm, 1);
            assert_int_equal(c.quant, 0);
            assert_int_equal(c.reused, 3);
        } else {
            assert_int_equal(c.norm + c.quant + c.reused, 0);
        }
        c0 = counts_of(be);
        OK_OR_FAIL(be->ops->add_rmsnorm_matmul_silu_mul(be, &at, &bt, &nwt, 1e-5f, &t[p][SUM2], &t[p][X2], &l->g.t,
                                                       NULL, &l->u.t, NULL, &t[p][G], &t[p][U], &t[p][F]),
                   "add_rmsnorm_matmul_silu_mul");
        c = counts_since(be, c0);
        if (p == 1 && gemm) {
            assert_int_equal(c.norm, 1);
            assert_int_equal(c.quant, 0);
            assert_int_equal(c.reused, 2);
        } else {
            assert_int_equal(c.norm + c.quant + c.reused, 0);
        }
        /* the groups without a norm: the first GEMM quantizes x into the share, the others read it */
        c0 = counts_of(be);
        anvil_tensor *o3b[3] = {&t[p][Q2], &t[p][K2], &t[p][V2]};
        OK_OR_FAIL(be->ops->matmul_multi(be, &t[p][X], 3, w3, nob, o3b), "matmul_multi");
        OK_OR_FAIL(be->ops->matmul_silu_mul(be, &t[p][X], &l->g.t, NULL, &l->u.t, NULL, &t[p][G], &t[p][U],
                                            &t[p][F2]),
                   "matmul_silu_mul");
        c = counts_since(be, c0);
        if (p == 1 && gemm) {
            assert_int_equal(c.norm, 0);
            assert_int_equal(c.quant, 2);
            assert_int_equal(c.reused, 3);
        } else {
            assert_int_equal(c.norm + c.quant + c.reused, 0);
        }
        OK_OR_FAIL(be->ops->synchronize(be), "synchronize");
    }
    for (int i = 0; i < G; i++) { /* (G, U: the silu ops' scratch, unspecified) */
        char what[160];
        snprintf(what, sizeof what, "%s T %lld %s, output %d", anvil_dtype_name(dt), (long long)T,
                 act == ANVIL_QUANT_ACT_FP8_STATIC ? "static" : "dynamic", i);
        expect_same(be, buf[0][i], buf[1][i], (size_t)(T * cols[i]) * es, what);
    }
    for (int p = 0; p < 2; p++)
        for (int i = 0; i < NBUF; i++)
            be->ops->free(be, buf[p][i]);
    be->ops->free(be, ab);
    be->ops->free(be, bb);
    be->ops->free(be, nwb);
    set_share(be, 1);
}

static void test_ops(void **s)
{
    (void)s;
    NEED_GPU();
    const anvil_dtype dts[2] = {ANVIL_DTYPE_BF16, ANVIL_DTYPE_F16};
    for (int d = 0; d < 2; d++) {
        anvil_backend *be = gpu(dts[d]);
        if (anvil_cuda_impl(be)->sm < 89) { /* no FP8 GEMM: nothing is shared */
            anvil_backend_free(be);
            skip();
        }
        const int last = d == 0 ? ANVIL_QUANT_ACT_FP8_STATIC : ANVIL_QUANT_ACT_FP8_DYNAMIC; /* static: bf16 only */
        for (int act = ANVIL_QUANT_ACT_FP8_DYNAMIC; act <= last; act++) {
            layer_w l;
            make_layer(be, act, &l);
            for (int r = 0; r < N_ROWS; r++)
                ops_case(be, dts[d], ROWS[r], &l);
            free_layer(be, &l);
        }
        anvil_backend_free(be);
    }
}

/* ---------------------------------------------------------------- a whole model */

static void build_fp8(const char *engine, anvil_dtype wdt)
{
    char model[600];
    snprintf(model, sizeof model, "%s/models/tinycode", anvil_test_shared_dir());
    anvil_build_options bo;
    anvil_build_options_default(&bo);
    bo.quantize = ANVIL_QUANTIZE_FP8;
    bo.n_threads = 2;
    bo.weight_dtype = wdt;
    if (anvil_build_engine(model, engine, &bo) != ANVIL_OK)
        fail_msg("build %s: %s", engine, anvil_last_error());
}

static anvil_runtime *load(const char *engine, int unshared)
{
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.device = "cuda";
    o.max_num_tokens = 256;
    o.max_logit_rows = 256;
    o.max_batch_size = 4;
    o.kv_block_size = 16;
    o.kv_cache_tokens = 1024;
    o.cuda_fp8_unshared = unshared;
    anvil_runtime *rt = NULL;
    if (anvil_runtime_load(engine, &o, &rt) != ANVIL_OK)
        fail_msg("load %s: %s", engine, anvil_last_error());
    return rt;
}

/* One prompt's logits at every position into out [n, vocab]. */
static void forward(anvil_runtime *rt, const int32_t *ids, int32_t n, float *out)
{
    const int32_t bs = anvil_runtime_kv_block_size(rt), nb = (n + bs - 1) / bs;
    int32_t *pos = malloc((size_t)n * 4), *rows = malloc((size_t)n * 4), *blocks = malloc((size_t)nb * 4);
    assert_true(pos && rows && blocks);
    for (int32_t t = 0; t < n; t++)
        pos[t] = rows[t] = t;
    int32_t starts[2] = {0, n};
    assert_int_equal(anvil_runtime_kv_alloc(rt, nb, blocks), ANVIL_OK);
    anvil_batch b = {.n_tokens = n, .token_ids = ids, .positions = pos, .n_seqs = 1, .seq_starts = starts,
                     .block_tables = blocks, .max_blocks_per_seq = nb, .n_logits = n, .logit_rows = rows};
    if (anvil_runtime_forward(rt, &b, out) != ANVIL_OK)
        fail_msg("forward: %s", anvil_last_error());
    anvil_runtime_kv_release(rt, nb, blocks);
    free(pos);
    free(rows);
    free(blocks);
}

static void test_model(void **s)
{
    (void)s;
    NEED_GPU();
    golden gold;
    golden_load("tinycode", &gold);
    const anvil_dtype wdts[2] = {ANVIL_DTYPE_COUNT, ANVIL_DTYPE_F16}; /* as stored (bf16), f16 */
    for (int d = 0; d < 2; d++) {
        char engine[700];
        snprintf(engine, sizeof engine, "%s/tc-fp8-%s.engine", anvil_test_tmpdir(), d ? "f16" : "bf16");
        build_fp8(engine, wdts[d]);
        /* fused plan (the norm making the codes) against every op by itself */
        anvil_runtime_options o;
        anvil_runtime_options_default(&o);
        o.device = "cuda";
        fusion_diff fd;
        anvil_status st = fusion_compare(engine, &o, 8, &fd);
        if (st != ANVIL_OK)
            fail_msg("fusion_compare %s: %s", engine, anvil_last_error());
        print_message("tinycode fp8 %s: fused vs separate max |diff| %.3g of max |logit| %.3g, %d of %d argmaxes "
                      "differ\n",
                      d ? "f16 " : "bf16", fd.max_abs, fd.max_logit, fd.greedy_differ, fd.rows);
        assert_true(fd.max_abs == 0.0);
        assert_int_equal(fd.greedy_differ, 0);
        /* the fused plan with the share on and off (the runtime option cuda_fp8_unshared) */
        anvil_runtime *on = load(engine, 0), *off = load(engine, 1);
        const int64_t vocab = anvil_runtime_config(on)->vocab_size;
        const counts c0 = counts_of(on->be), c0off = counts_of(off->be);
        for (int i = 0; i < gold.n_cases; i++) {
            const golden_case *gc = &gold.cases[i];
            float *x = malloc((size_t)gc->n_ids * (size_t)vocab * sizeof *x);
            float *y = malloc((size_t)gc->n_ids * (size_t)vocab * sizeof *y);
            assert_true(x && y);
            forward(on, gc->ids, gc->n_ids, x);
            forward(off, gc->ids, gc->n_ids, y);
            if (memcmp(x, y, (size_t)gc->n_ids * (size_t)vocab * sizeof *x) != 0)
                fail_msg("tinycode fp8 %s, prompt %d (%d tokens): logits differ with the share on and off",
                         d ? "f16" : "bf16", i, gc->n_ids);
            free(x);
            free(y);
        }
        const counts c = counts_since(on->be, c0);
        const counts coff = counts_since(off->be, c0off);
        print_message("tinycode fp8 %s: codes made by a norm %lld, by a matmul %lld, read again %lld\n",
                      d ? "f16 " : "bf16", (long long)c.norm, (long long)c.quant, (long long)c.reused);
        /* prompts of more than 8 tokens take the FP8 GEMM: codes from the norms (5 of the 6 q/k/v groups, all 6
         * gate/up ones a prompt) and from the first layer's q/k/v (its rmsnorm has no add) */
        int long_prompts = 0;
        for (int i = 0; i < gold.n_cases; i++)
            long_prompts += gold.cases[i].n_ids > 8;
        if (long_prompts > 0) {
            assert_true(c.norm >= 11 * long_prompts);
            assert_true(c.quant >= long_prompts);
        }
        assert_int_equal(coff.norm + coff.quant + coff.reused, 0);
        anvil_runtime_free(on);
        anvil_runtime_free(off);
        remove(engine);
    }
    golden_free(&gold);
}

/* ---------------------------------------------------------------- --perf */

typedef enum perf_kind { PERF_QKV, PERF_FFN, PERF_GEMMS, PERF_NORM, PERF_NORM_CODES } perf_kind;

typedef struct perf_group {
    anvil_backend *be;
    perf_kind kind;
    anvil_tensor a, b, nw, sum, x, g, u;
    int n;                   /* GEMMs of the group */
    const anvil_tensor *w[3];
    anvil_tensor *o[3];      /* the GEMMs' outputs; PERF_FFN: o[0] the silu's */
    void *xq;                /* the norm's codes and row scales, for the GEMMs alone */
    float *sx;
} perf_group;

static int perf_run(perf_group *p)
{
    anvil_backend *be = p->be;
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    const anvil_tensor *nob[3] = {NULL, NULL, NULL};
    anvil_status st = ANVIL_OK;
    switch (p->kind) {
    case PERF_QKV:
        st = be->ops->add_rmsnorm_matmul_multi(be, &p->a, &p->b, &p->nw, 1e-5f, &p->sum, &p->x, 3, p->w, nob, p->o);
        break;
    case PERF_FFN:
        st = be->ops->add_rmsnorm_matmul_silu_mul(be, &p->a, &p->b, &p->nw, 1e-5f, &p->sum, &p->x, p->w[0], NULL,
                                                  p->w[1], NULL, &p->g, &p->u, p->o[0]);
        break;
    case PERF_GEMMS:
        for (int i = 0; i < p->n && st == ANVIL_OK; i++)
            st = anvil_cuda_gemm_fp8(cb, p->xq, p->sx, p->w[i]->data, p->w[i]->quant->scales, NULL, ANVIL_DTYPE_F32,
                                     p->o[i]->data, ANVIL_DTYPE_BF16, p->a.shape[0], p->a.shape[1], p->w[i]->shape[0]);
        break;
    case PERF_NORM:
        st = be->ops->add_rmsnorm(be, &p->a, &p->b, &p->nw, 1e-5f, &p->sum, &p->x);
        break;
    case PERF_NORM_CODES:
        st = anvil_cuda_launch_add_rmsnorm_quant(cb->stream, cb->pdl, p->a.data, p->b.data, p->nw.data, p->nw.dtype,
                                                 p->sum.data, p->x.data, ANVIL_DTYPE_BF16, p->a.shape[0],
                                                 p->a.shape[1], 1e-5f, ANVIL_QUANT_ACT_FP8_DYNAMIC, 1.0f, p->xq, p->sx);
        break;
    }
    if (st != ANVIL_OK)
        fprintf(stderr, "perf: %s\n", anvil_last_error());
    return st == ANVIL_OK ? 0 : -1;
}

/* Median ms a call, of 7 timings of 10 calls after 3 to warm up. */
static float perf_time(perf_group *p)
{
    cudaStream_t s = anvil_cuda_impl(p->be)->stream;
    cudaEvent_t e0, e1;
    if (cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess)
        return -1.0f;
    float ms[7] = {0};
    int ok = 1;
    for (int i = 0; i < 3 && ok; i++)
        ok = perf_run(p) == 0;
    for (int r = 0; r < 7 && ok; r++) {
        cudaEventRecord(e0, s);
        for (int i = 0; i < 10 && ok; i++)
            ok = perf_run(p) == 0;
        cudaEventRecord(e1, s);
        cudaEventSynchronize(e1);
        cudaEventElapsedTime(&ms[r], e0, e1);
        ms[r] /= 10;
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    if (!ok)
        return -1.0f;
    for (int i = 1; i < 7; i++) /* insertion sort, for the median */
        for (int j = i; j > 0 && ms[j] < ms[j - 1]; j--) {
            const float t = ms[j];
            ms[j] = ms[j - 1];
            ms[j - 1] = t;
        }
    return ms[3];
}

static int perf_main(void)
{
    if (anvil_cuda_device_count() == 0) {
        printf("no CUDA device\n");
        return 77;
    }
    const int64_t T = 2048, K = 4096;
    anvil_backend *be = NULL;
    if (anvil_backend_cuda_create(0, ANVIL_DTYPE_BF16, &be) != ANVIL_OK) {
        fprintf(stderr, "cuda backend: %s\n", anvil_last_error());
        return 1;
    }
    if (anvil_cuda_impl(be)->sm < 89) {
        printf("no FP8 GEMM on this GPU (sm_%d)\n", anvil_cuda_impl(be)->sm);
        anvil_backend_free(be);
        return 0;
    }
    layer_w l;
    make_layer(be, ANVIL_QUANT_ACT_FP8_DYNAMIC, &l);
    void *ab, *bb, *nwb;
    perf_group p;
    memset(&p, 0, sizeof p);
    p.be = be;
    p.a = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, K, dev_rand(be, ANVIL_DTYPE_BF16, T * K, 2.0f, 0, &ab));
    p.b = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, K, dev_rand(be, ANVIL_DTYPE_BF16, T * K, 2.0f, 0, &bb));
    p.nw = anvil_tensor_1d(ANVIL_DTYPE_BF16, K, dev_rand(be, ANVIL_DTYPE_BF16, K, 1.0f, 0, &nwb));
    const int64_t ocols[6] = {K, K, 4096, 1024, 1024, 14336}; /* sum, x, q, k, v, and f / g / u */
    void *ob[8];
    for (int i = 0; i < 6; i++)
        ob[i] = dev_alloc(be, (size_t)(T * ocols[i]) * 2);
    ob[6] = dev_alloc(be, (size_t)(T * 14336) * 2);
    ob[7] = dev_alloc(be, (size_t)(T * 14336) * 2);
    p.sum = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, K, ob[0]);
    p.x = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, K, ob[1]);
    anvil_tensor oq = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, 4096, ob[2]);
    anvil_tensor ok = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, 1024, ob[3]);
    anvil_tensor ov = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, 1024, ob[4]);
    anvil_tensor of = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, 14336, ob[5]);
    p.g = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, 14336, ob[6]);
    p.u = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, 14336, ob[7]);
    p.xq = dev_alloc(be, (size_t)(T * K));
    p.sx = dev_alloc(be, (size_t)T * 4);
    p.kind = PERF_NORM_CODES; /* the codes the GEMMs alone read */
    if (perf_run(&p) != 0)
        return 1;
    printf("fp8 W8A8 prefill of %lld tokens at Llama-3-8B's shapes, bf16 activations, one H100 = the device "
           "below; ms a call (median of 7 x 10); TFLOP/s over the GEMMs' 2 T K N; 'of alone': the FP8 GEMMs "
           "alone's time / this one's\n",
           (long long)T);
    printf("%-52s %9s %9s %9s\n", "", "ms", "TFLOP/s", "of alone");
    for (int gi = 0; gi < 2; gi++) {
        p.n = gi == 0 ? 3 : 2;
        p.w[0] = gi == 0 ? &l.q.t : &l.g.t;
        p.w[1] = gi == 0 ? &l.k.t : &l.u.t;
        p.w[2] = gi == 0 ? &l.v.t : NULL;
        p.o[0] = gi == 0 ? &oq : &of;
        p.o[1] = gi == 0 ? &ok : &p.g; /* the GEMMs alone: gate into of, up into g */
        p.o[2] = gi == 0 ? &ov : NULL;
        double flops = 0;
        for (int i = 0; i < p.n; i++)
            flops += 2.0 * (double)T * (double)K * (double)p.w[i]->shape[0];
        p.kind = PERF_GEMMS;
        const float alone = perf_time(&p);
        for (int h = 0; h < 3; h++) {
            const char *how[3] = {"cuBLASLt's FP8 GEMMs alone", "add_rmsnorm + GEMMs, each quantizing (share off)",
                                  "add_rmsnorm with codes + GEMMs (share on)"};
            float ms = alone;
            if (h > 0) {
                set_share(be, h == 2);
                p.kind = gi == 0 ? PERF_QKV : PERF_FFN;
                ms = perf_time(&p);
            }
            printf("%-6s %-45s %9.4f %9.0f %8.0f%%\n", gi == 0 ? "q/k/v" : "ffn", how[h], ms,
                   ms > 0 ? flops / (ms * 1e-3) / 1e12 : 0.0, ms > 0 && alone > 0 ? 100.0 * alone / ms : 0.0);
        }
    }
    set_share(be, 1);
    for (int c = 0; c < 2; c++) {
        p.kind = c ? PERF_NORM_CODES : PERF_NORM;
        const float ms = perf_time(&p);
        const double bytes = (double)(T * K) * (8 + c); /* a, b read, sum, x written (2 bytes each), codes */
        printf("%-52s %9.4f %6.0f GB/s\n", c ? "add_rmsnorm with codes" : "add_rmsnorm", ms,
               ms > 0 ? bytes / (ms * 1e-3) / 1e9 : 0.0);
    }
    free_layer(be, &l);
    for (int i = 0; i < 8; i++)
        be->ops->free(be, ob[i]);
    be->ops->free(be, ab);
    be->ops->free(be, bb);
    be->ops->free(be, nwb);
    be->ops->free(be, p.xq);
    be->ops->free(be, p.sx);
    anvil_backend_free(be);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--perf") == 0)
        return perf_main();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_norm_kernel),
        cmocka_unit_test(test_ops),
        cmocka_unit_test(test_model),
    };
    return anvil_test_run_group(tests);
}
