/*
 * sample_rows on CUDA against the sampler (anvil_sampler_pick, src/sampler/,
 * what the CPU op runs), row by row: the device kernel is not kept equal to
 * the host by hand but checked against it here.
 *
 *  - f32, bf16 and f16 logits at vocabularies 32000 and 128256 (and odd
 *    widths whose rows are not 16-byte aligned), rows of several shapes
 *    (LLM-like with a few peaked tokens, few distinct values = many ties,
 *    constant rows, masked -inf, a NaN, a +inf, one finite value, nothing
 *    finite), under a grid of temperature 0/0.6/1/1.7, top_k 0/1/40/1000/
 *    6000, top_p 1/0.9/0.1, min_p 0/0.05 and random draws (u = 0 and u just
 *    below 1 included), and under random mixes (any temperature in
 *    [0.02, 4], top_k anywhere in 0..V, top_p in (0, 1], min_p in [0, 0.5],
 *    a share of greedy rows). Every id must equal the host's; a poisoned
 *    row (a NaN or +inf, or nothing finite) must give -1, greedy or not.
 *    The one tolerance, the documented float-ordering difference: the
 *    device adds the same double probabilities in another order (trees),
 *    so where anvil_sampler_pick_margin says the host's u * sum (or
 *    top_p * sum) lies within 1e-9 (relative) of a running sum, the device
 *    may pick the neighbour. Such near ties are counted, reported and
 *    bounded (at most 1% of the rows); anything else fails.
 *  - the same with 64-candidate chunks (anvil_cuda_sample_set_chunk), so
 *    that the streamed paths run many chunks.
 *  - anvil_runtime_forward_sample on CUDA (stories260K f32, tinycode bf16):
 *    decode steps through step graphs; ids equal to the host sampler's on
 *    the logits of the same step (same tolerance), generators advanced
 *    exactly as the host sampler advances them.
 *
 * `test_cuda_sample --perf` prints kernel timings instead (nothing
 * asserted): batch 1 / 64 / 256 x 128256 in bf16, per sampling setting,
 * next to the argmax kernel and to what the host path costs (the logits'
 * download, the host sampler on one row).
 *
 * Skips when no CUDA device is present.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime_api.h>

#include "anvil/runtime.h"
#include "anvil/sampling.h"
#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_internal.h"
#include "sampler/sampler.h"
#include "testutil.h"

#define NEED_GPU()                              \
    do {                                        \
        if (anvil_cuda_device_count() == 0)     \
            skip();                             \
    } while (0)

#define NEAR_TIE 1e-9

/* ---------------------------------------------------------------- rows */

static float gauss(uint64_t *r)
{
    float u1 = 0.5f * (anvil_test_randf(r) + 1.0f), u2 = anvil_test_randf(r);
    if (u1 < 1e-7f)
        u1 = 1e-7f;
    return sqrtf(-2.0f * logf(u1)) * cosf(3.14159265f * u2);
}

/* kind 0/1: LLM-like; 2: few distinct values; 3: constant; 4: masked; 5: a
 * NaN; 6: one finite; 7: nothing finite; 8: a +inf (5, 7 and 8 are
 * poisoned: -1) */
#define ROW_KINDS 9

static int poisoned_kind(int kind) { return kind == 5 || kind == 7 || kind == 8; }

static void fill_row(float *x, int64_t V, int kind, uint64_t *r)
{
    for (int64_t i = 0; i < V; i++)
        x[i] = 2.5f * gauss(r);
    for (int i = 0; i < 30; i++)
        x[anvil_test_rand(r) % (uint64_t)V] = 6.0f + 6.0f * 0.5f * (anvil_test_randf(r) + 1.0f);
    switch (kind) {
    case 2:
        for (int64_t i = 0; i < V; i++)
            x[i] = (float)(int)(4.0f * anvil_test_randf(r));
        break;
    case 3:
        for (int64_t i = 0; i < V; i++)
            x[i] = 1.25f;
        break;
    case 4:
        for (int64_t i = 0; i < V; i++)
            if (anvil_test_rand(r) % 4 != 0)
                x[i] = -INFINITY;
        break;
    case 5:
        x[anvil_test_rand(r) % (uint64_t)V] = NAN;
        break;
    case 6:
        for (int64_t i = 0; i < V; i++)
            x[i] = -INFINITY;
        x[anvil_test_rand(r) % (uint64_t)V] = -3.0f;
        break;
    case 7:
        for (int64_t i = 0; i < V; i++)
            x[i] = i % 7 == 3 ? NAN : -INFINITY;
        break;
    case 8:
        x[anvil_test_rand(r) % (uint64_t)V] = INFINITY;
        break;
    default:
        break;
    }
}

static const float grid_t[4] = {0.0f, 0.6f, 1.0f, 1.7f};
static const int32_t grid_k[5] = {0, 1, 40, 1000, 6000};
static const float grid_p[3] = {1.0f, 0.9f, 0.1f};
static const float grid_mp[2] = {0.0f, 0.05f};
#define GRID (4 * 5 * 3 * 2)

/* A uniform draw, with the ends (0, and just below 1) now and then. */
static double draw_u(int i, uint64_t *r)
{
    anvil_rng g;
    anvil_rng_seed(&g, anvil_test_rand(r));
    const double u = anvil_rng_uniform(&g);
    return i % 37 == 5 ? 0.0 : i % 37 == 6 ? 1.0 - 0x1.0p-53 : u;
}

static anvil_sample_draw grid_params(int i, int64_t V, uint64_t *r)
{
    (void)V;
    anvil_sampling_params p;
    anvil_sampling_params_default(&p);
    p.temperature = grid_t[i % 4];
    p.top_k = grid_k[(i / 4) % 5];
    p.top_p = grid_p[(i / 20) % 3];
    p.min_p = grid_mp[(i / 60) % 2];
    anvil_sample_draw d;
    anvil_sample_draw_make(&d, &p, draw_u(i, r));
    return d;
}

/* Random mixes: any temperature, top_k anywhere up to the vocabulary, top_p
 * and min_p anywhere in their ranges, and some greedy rows. */
static anvil_sample_draw random_params(int i, int64_t V, uint64_t *r)
{
    anvil_sampling_params p;
    anvil_sampling_params_default(&p);
    const float f = 0.5f * (anvil_test_randf(r) + 1.0f); /* [0, 1) */
    p.temperature = anvil_test_rand(r) % 8 == 0 ? 0.0f : 0.02f + 3.98f * f * f;
    switch (anvil_test_rand(r) % 4) {
    case 0: p.top_k = 0; break;
    case 1: p.top_k = anvil_test_rand(r) % 6 == 0 ? 1 : -1; break;
    case 2: p.top_k = 2 + (int32_t)(anvil_test_rand(r) % 100); break;
    default: p.top_k = 1 + (int32_t)(anvil_test_rand(r) % (uint64_t)V); break;
    }
    p.top_p = anvil_test_rand(r) % 2 ? 1.0f : 0.01f + 0.99f * 0.5f * (anvil_test_randf(r) + 1.0f);
    p.min_p = anvil_test_rand(r) % 2 ? 0.0f : 0.5f * 0.5f * (anvil_test_randf(r) + 1.0f);
    anvil_sample_draw d;
    anvil_sample_draw_make(&d, &p, draw_u(i, r));
    return d;
}

typedef anvil_sample_draw (*params_fn)(int i, int64_t V, uint64_t *r);

typedef struct tally {
    int checked, sampled, poisoned, near_ties;
    double worst_near; /* the largest margin among the near ties */
} tally;

/* Compares a device id with the sampler's pick of the same row: equal, or
 * a near tie (counted); anything else fails with what. */
static void compare(anvil_sampler *sm, const float *row, const anvil_sample_draw *d, int32_t got, tally *t,
                    const char *what, int i)
{
    double margin;
    const int32_t want = anvil_sampler_pick_margin(sm, row, d, &margin);
    t->checked++;
    t->sampled += !d->greedy;
    t->poisoned += want < 0;
    if (got == want)
        return;
    if (want >= 0 && got >= 0 && margin < NEAR_TIE) {
        t->near_ties++;
        if (margin > t->worst_near)
            t->worst_near = margin;
        return;
    }
    fail_msg("%s row %d (t %g k %d p %g min_p %g u %.17g): device %d, host %d (margin %.3g)", what, i,
             (double)d->sampling.temperature, d->sampling.top_k, (double)d->sampling.top_p,
             (double)d->sampling.min_p, d->u, got, want, margin);
}

/* R rows of width V in dtype dt through the op; each id against the host. */
static void check_batch(anvil_backend *be, anvil_dtype dt, int64_t V, int R, uint64_t seed, params_fn params,
                        tally *t)
{
    const size_t es = anvil_dtype_size(dt);
    float *f = malloc((size_t)R * (size_t)V * sizeof *f);
    void *h = malloc((size_t)R * (size_t)V * es);
    anvil_sample_draw *q = malloc((size_t)R * sizeof *q);
    int32_t *got = malloc((size_t)R * sizeof *got);
    int *kind = malloc((size_t)R * sizeof *kind);
    anvil_sampler *sm = NULL;
    assert_true(f && h && q && got && kind);
    assert_int_equal(anvil_sampler_create((int32_t)V, &sm), ANVIL_OK);
    uint64_t r = seed;
    for (int i = 0; i < R; i++) {
        kind[i] = (i * 7 / 3 + (int)(seed & 7)) % ROW_KINDS;
        fill_row(f + (size_t)i * V, V, kind[i], &r);
        q[i] = params(i, V, &r);
    }
    anvil_convert_from_f32(dt, f, h, (int64_t)R * V);
    anvil_convert_to_f32(dt, h, f, (int64_t)R * V); /* the values the device sees */
    void *xd = NULL, *qd = NULL, *idd = NULL;
    assert_int_equal(be->ops->alloc(be, (size_t)R * (size_t)V * es, &xd), ANVIL_OK);
    assert_int_equal(be->ops->alloc(be, (size_t)R * sizeof *q, &qd), ANVIL_OK);
    assert_int_equal(be->ops->alloc(be, (size_t)R * sizeof(int32_t), &idd), ANVIL_OK);
    assert_int_equal(be->ops->upload(be, xd, h, (size_t)R * (size_t)V * es), ANVIL_OK);
    assert_int_equal(be->ops->upload(be, qd, q, (size_t)R * sizeof *q), ANVIL_OK);
    anvil_tensor x = anvil_tensor_2d(dt, R, V, xd);
    if (be->ops->sample_rows(be, &x, qd, NULL, idd) != ANVIL_OK)
        fail_msg("sample_rows: %s", anvil_last_error());
    assert_int_equal(be->ops->download(be, got, idd, (size_t)R * sizeof(int32_t)), ANVIL_OK);
    char what[64];
    snprintf(what, sizeof what, "%s V %lld", anvil_dtype_name(dt), (long long)V);
    for (int i = 0; i < R; i++) {
        if (poisoned_kind(kind[i]) && got[i] != -1) /* greedy or not */
            fail_msg("%s row %d: a poisoned row (kind %d) gave %d, not -1", what, i, kind[i], got[i]);
        compare(sm, f + (size_t)i * V, &q[i], got[i], t, what, i);
    }
    be->ops->free(be, xd);
    be->ops->free(be, qd);
    be->ops->free(be, idd);
    anvil_sampler_free(sm);
    free(f);
    free(h);
    free(q);
    free(got);
    free(kind);
}

static void report(const char *what, const tally *t)
{
    printf("%s: %d rows (%d sampled, %d poisoned), %d near-tie differences (largest margin %.3g)\n", what,
           t->checked, t->sampled, t->poisoned, t->near_ties, t->worst_near);
    assert_true(t->sampled > t->checked / 2);
    assert_true(t->poisoned > 0);
    assert_true(t->near_ties <= t->checked / 100); /* rare by construction */
}

static void test_op_vs_host(void **st)
{
    (void)st;
    NEED_GPU();
    const anvil_dtype dts[3] = {ANVIL_DTYPE_F32, ANVIL_DTYPE_BF16, ANVIL_DTYPE_F16};
    const int64_t widths[4] = {32000, 128256, 4099, 1001};
    /* ANVIL_TEST_QUICK (the sanitizer runs): f32 and the small widths only */
    const int quick = getenv("ANVIL_TEST_QUICK") != NULL;
    tally t = {0};
    for (int di = 0; di < (quick ? 1 : 3); di++) {
        anvil_backend *be = NULL;
        assert_int_equal(anvil_backend_cuda_create(0, dts[di], &be), ANVIL_OK);
        for (int wi = quick ? 3 : 0; wi < 4; wi++)
            check_batch(be, dts[di], widths[wi], GRID, 1000 + (uint64_t)(di * 10 + wi), grid_params, &t);
        anvil_backend_free(be);
    }
    report("sample_rows, the grid", &t);
}

static void test_op_random_mix(void **st)
{
    (void)st;
    NEED_GPU();
    const int quick = getenv("ANVIL_TEST_QUICK") != NULL;
    const int64_t widths[4] = {32000, 151936, 5003, 777};
    tally t = {0};
    for (int di = 0; di < (quick ? 1 : 2); di++) {
        const anvil_dtype dt = di ? ANVIL_DTYPE_BF16 : ANVIL_DTYPE_F32;
        anvil_backend *be = NULL;
        assert_int_equal(anvil_backend_cuda_create(0, dt, &be), ANVIL_OK);
        for (int wi = quick ? 2 : 0; wi < 4; wi++)
            for (int rep = 0; rep < (quick ? 1 : 3); rep++)
                check_batch(be, dt, widths[wi], 200, 5000 + (uint64_t)(di * 100 + wi * 10 + rep), random_params, &t);
        anvil_backend_free(be);
    }
    report("sample_rows, random mixes", &t);
}

static void test_small_chunks(void **st)
{
    (void)st;
    NEED_GPU();
    tally t = {0};
    anvil_backend *be = NULL;
    assert_int_equal(anvil_backend_cuda_create(0, ANVIL_DTYPE_F32, &be), ANVIL_OK);
    anvil_cuda_sample_set_chunk(64);
    const int quick = getenv("ANVIL_TEST_QUICK") != NULL;
    if (!quick)
        check_batch(be, ANVIL_DTYPE_F32, 32000, GRID, 77, grid_params, &t);
    check_batch(be, ANVIL_DTYPE_F32, quick ? 1001 : 5000, GRID, 78, grid_params, &t);
    check_batch(be, ANVIL_DTYPE_F32, 3000, 200, 80, random_params, &t);
    anvil_cuda_sample_set_chunk(1);
    check_batch(be, ANVIL_DTYPE_F32, 300, GRID, 79, grid_params, &t);
    anvil_cuda_sample_set_chunk(4096);
    anvil_backend_free(be);
    report("sample_rows, small chunks", &t);
}

/* ---------------------------------------------------------------- the runtime */

#define NS 3

static void run_model(const char *model, anvil_dtype wdt, int steps, uint64_t seed, tally *t)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/models/%s", anvil_test_shared_dir(), model);
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.device = "cuda";
    o.weight_dtype = wdt;
    o.max_num_tokens = 64;
    o.max_batch_size = NS;
    o.max_seq_len = 128;
    o.kv_block_size = 16;
    o.kv_cache_tokens = 128 * NS;
    anvil_runtime *rt = NULL;
    if (anvil_runtime_load(dir, &o, &rt) != ANVIL_OK)
        fail_msg("load %s: %s", model, anvil_last_error());
    const int32_t V = (int32_t)anvil_runtime_config(rt)->vocab_size;
    float *logits = malloc((size_t)NS * (size_t)V * sizeof *logits);
    anvil_sampler *sm = NULL;
    assert_non_null(logits);
    assert_int_equal(anvil_sampler_create(V, &sm), ANVIL_OK);
    int32_t tables[NS * 8], toks[NS][128], len[NS], done[NS] = {0};
    assert_int_equal(anvil_runtime_kv_alloc(rt, NS * 8, tables), ANVIL_OK);
    uint64_t r = seed;
    for (int s = 0; s < NS; s++) {
        len[s] = 2 + 3 * s;
        toks[s][0] = 1;
        for (int i = 1; i < len[s]; i++)
            toks[s][i] = (int32_t)(anvil_test_rand(&r) % (uint64_t)V);
    }
    for (int step = 0; step <= steps; step++) {
        int32_t ids[64], pos[64], starts[NS + 1], rows[NS], T = 0;
        for (int s = 0; s < NS; s++) {
            starts[s] = T;
            for (int32_t p = done[s]; p < len[s]; p++) {
                ids[T] = toks[s][p];
                pos[T++] = p;
            }
            rows[s] = T - 1;
        }
        starts[NS] = T;
        anvil_batch b = {.n_tokens = T, .token_ids = ids, .positions = pos, .n_seqs = NS, .seq_starts = starts,
                         .block_tables = tables, .max_blocks_per_seq = 8, .n_logits = NS, .logit_rows = rows};
        assert_int_equal(anvil_runtime_forward(rt, &b, logits), ANVIL_OK);
        anvil_rng want_rng[NS], got_rng[NS];
        anvil_sample_row sr[NS];
        int32_t got[NS];
        for (int s = 0; s < NS; s++) {
            anvil_sample_draw g = grid_params((int)(anvil_test_rand(&r) % GRID), V, &r);
            if (g.sampling.top_k > 100)
                g.sampling.top_k = 50; /* vocabularies of 512 */
            anvil_rng_seed(&want_rng[s], anvil_test_rand(&r));
            got_rng[s] = want_rng[s];
            sr[s] = (anvil_sample_row){.sampling = g.sampling, .rng = &got_rng[s]};
        }
        if (anvil_runtime_forward_sample(rt, &b, sr, got) != ANVIL_OK)
            fail_msg("%s: %s", model, anvil_last_error());
        for (int s = 0; s < NS; s++) {
            /* the draw the runtime made: one uniform when the row samples */
            const int samples = !anvil_sampling_is_greedy(&sr[s].sampling);
            anvil_sample_draw d;
            anvil_sample_draw_make(&d, &sr[s].sampling, samples ? anvil_rng_uniform(&want_rng[s]) : 0.0);
            assert_memory_equal(&got_rng[s], &want_rng[s], sizeof(anvil_rng));
            char what[96];
            snprintf(what, sizeof what, "%s step %d", model, step);
            compare(sm, logits + (size_t)s * (size_t)V, &d, got[s], t, what, s);
        }
        for (int s = 0; s < NS; s++) {
            done[s] = len[s];
            toks[s][len[s]++] = got[s];
        }
    }
    anvil_sampler_free(sm);
    free(logits);
    anvil_runtime_free(rt);
}

static void test_runtime(void **st)
{
    (void)st;
    NEED_GPU();
    tally t = {0};
    unsigned long long rec0 = 0, rep0 = 0, rec1 = 0, rep1 = 0;
    anvil_cuda_graph_counts(&rec0, &rep0);
    const int quick = getenv("ANVIL_TEST_QUICK") != NULL;
    run_model("stories260K", ANVIL_DTYPE_F32, quick ? 22 : 40, 5, &t);
    if (!quick)
        run_model("tinycode", ANVIL_DTYPE_BF16, 30, 6, &t);
    anvil_cuda_graph_counts(&rec1, &rep1);
    printf("forward_sample on CUDA: %d rows, %d sampled, %d near ties; graphs recorded %lld, replayed %lld\n",
           t.checked, t.sampled, t.near_ties, (long long)(rec1 - rec0), (long long)(rep1 - rep0));
    assert_true(rep1 - rep0 >= 20); /* the sampling steps ran through graphs */
    assert_true(t.near_ties <= 2);
}

/* ---------------------------------------------------------------- --perf */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int perf_cmp(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

typedef struct perf_cfg {
    const char *name;
    float t, p, mp;
    int32_t k;
} perf_cfg;

static int perf_main(void)
{
    if (anvil_cuda_device_count() == 0) {
        printf("no CUDA device\n");
        return 0;
    }
    const int64_t V = 128256;
    const int batches[3] = {1, 64, 256};
    const perf_cfg cfgs[] = {
        {"greedy (sample_rows)", 0.0f, 1.0f, 0.0f, 0},  {"temperature 0.8", 0.8f, 1.0f, 0.0f, 0},
        {"top_k 40", 0.8f, 1.0f, 0.0f, 40},             {"top_k 1000", 0.8f, 1.0f, 0.0f, 1000},
        {"top_p 0.9", 0.8f, 0.9f, 0.0f, 0},             {"top_p 0.95, temperature 1.5", 1.5f, 0.95f, 0.0f, 0},
        {"top_p 0.9, peaked rows", 0.8f, 0.9f, 0.0f, -1},
        {"min_p 0.05", 0.8f, 1.0f, 0.05f, 0},           {"top_k 40 top_p 0.95 min_p 0.05", 0.8f, 0.95f, 0.05f, 40},
    };
    const int n_cfg = (int)(sizeof cfgs / sizeof cfgs[0]);
    anvil_backend *be = NULL;
    if (anvil_backend_cuda_create(0, ANVIL_DTYPE_BF16, &be) != ANVIL_OK) {
        printf("backend: %s\n", anvil_last_error());
        return 1;
    }
    cudaStream_t stream = anvil_cuda_impl(be)->stream;
    const int B = 256;
    float *f = malloc((size_t)B * (size_t)V * sizeof *f);
    uint16_t *h = malloc((size_t)B * (size_t)V * 2);
    anvil_sample_draw *q = malloc((size_t)B * sizeof *q);
    void *xd = NULL, *qd = NULL, *idd = NULL, *xp = NULL;
    uint64_t r = 42;
    /* "peaked rows" (k = -1 in the table): a narrower bulk, N(0, 1), so
     * that a few tokens hold most of the mass, as in a confident model */
    for (int64_t i = 0; i < B; i++) {
        fill_row(f + i * V, V, 0, &r);
        for (int64_t j = 0; j < V; j++)
            f[i * V + j] = f[i * V + j] < 6.0f ? 0.4f * f[i * V + j] : f[i * V + j];
    }
    anvil_convert_from_f32(ANVIL_DTYPE_BF16, f, h, (int64_t)B * V);
    if (be->ops->alloc(be, (size_t)B * (size_t)V * 2, &xp) != ANVIL_OK ||
        be->ops->upload(be, xp, h, (size_t)B * (size_t)V * 2) != ANVIL_OK) {
        printf("setup: %s\n", anvil_last_error());
        return 1;
    }
    for (int64_t i = 0; i < B; i++)
        fill_row(f + i * V, V, 0, &r);
    anvil_convert_from_f32(ANVIL_DTYPE_BF16, f, h, (int64_t)B * V);
    anvil_convert_to_f32(ANVIL_DTYPE_BF16, h, f, (int64_t)B * V);
    if (be->ops->alloc(be, (size_t)B * (size_t)V * 2, &xd) != ANVIL_OK ||
        be->ops->alloc(be, (size_t)B * sizeof *q, &qd) != ANVIL_OK ||
        be->ops->alloc(be, (size_t)B * 4, &idd) != ANVIL_OK ||
        be->ops->upload(be, xd, h, (size_t)B * (size_t)V * 2) != ANVIL_OK) {
        printf("setup: %s\n", anvil_last_error());
        return 1;
    }
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    printf("sample_rows, bf16 logits of 128256, flat-ish rows (N(0, 2.5) + 30 tokens at 6..12; the bulk holds most "
           "of the mass); median of 7 x 20 launches\n");
    printf("%-34s %12s %12s %12s\n", "setting", "batch 1", "batch 64", "batch 256");
    for (int ci = -1; ci < n_cfg; ci++) {
        printf("%-34s", ci < 0 ? "argmax_rows (reference)" : cfgs[ci].name);
        for (int bi = 0; bi < 3; bi++) {
            const int rows = batches[bi];
            anvil_rng g;
            anvil_rng_seed(&g, 7);
            for (int i = 0; i < rows; i++) {
                const perf_cfg *c = &cfgs[ci < 0 ? 0 : ci];
                const anvil_sampling_params sp = {.temperature = c->t, .top_k = c->k < 0 ? 0 : c->k, .top_p = c->p,
                                                  .min_p = c->mp};
                anvil_sample_draw_make(&q[i], &sp, anvil_rng_uniform(&g));
            }
            be->ops->upload(be, qd, q, (size_t)rows * sizeof *q);
            anvil_tensor x = anvil_tensor_2d(ANVIL_DTYPE_BF16, rows, V, ci >= 0 && cfgs[ci].k < 0 ? xp : xd);
            float ms[7];
            for (int rep = -1; rep < 7; rep++) {
                cudaEventRecord(e0, stream);
                for (int it = 0; it < 20; it++) {
                    const anvil_status st = ci < 0 ? be->ops->argmax_rows(be, &x, idd)
                                                   : be->ops->sample_rows(be, &x, qd, NULL, idd);
                    if (st != ANVIL_OK) {
                        printf("\nfailed: %s\n", anvil_last_error());
                        return 1;
                    }
                }
                cudaEventRecord(e1, stream);
                cudaEventSynchronize(e1);
                if (rep >= 0) {
                    cudaEventElapsedTime(&ms[rep], e0, e1);
                    ms[rep] /= 20.0f;
                }
            }
            qsort(ms, 7, sizeof ms[0], perf_cmp);
            printf(" %9.1f us", 1000.0 * ms[3]);
        }
        printf("\n");
    }
    /* what the host path costs instead: the download and the host sampler */
    float *hl = NULL;
    cudaMallocHost((void **)&hl, (size_t)B * (size_t)V * 2);
    printf("%-34s", "host path: download bf16 logits");
    for (int bi = 0; bi < 3; bi++) {
        const size_t bytes = (size_t)batches[bi] * (size_t)V * 2;
        be->ops->synchronize(be);
        const double t0 = now_s();
        for (int it = 0; it < 5; it++)
            cudaMemcpyAsync(hl, xd, bytes, cudaMemcpyDeviceToHost, stream);
        cudaStreamSynchronize(stream);
        printf(" %9.1f us", 1e6 * (now_s() - t0) / 5);
    }
    printf("\n");
    cudaFreeHost(hl);
    anvil_sampler *sm = NULL;
    anvil_sampler_create((int32_t)V, &sm);
    for (int ci = 1; ci < n_cfg; ci++) {
        const perf_cfg *c = &cfgs[ci];
        if (c->k < 0)
            continue;
        const anvil_sampling_params sp = {.temperature = c->t, .top_k = c->k, .top_p = c->p, .min_p = c->mp};
        anvil_sample_draw d;
        anvil_sample_draw_make(&d, &sp, 0.5);
        volatile int32_t sink = 0;
        const double t0 = now_s();
        for (int i = 0; i < 16; i++)
            sink += anvil_sampler_pick(sm, f + (size_t)i * V, &d);
        printf("host sampler, one row, %-24s %9.1f us\n", c->name, 1e6 * (now_s() - t0) / 16);
    }
    anvil_sampler_free(sm);
    be->ops->free(be, xd);
    be->ops->free(be, xp);
    be->ops->free(be, qd);
    be->ops->free(be, idd);
    anvil_backend_free(be);
    free(f);
    free(h);
    free(q);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--perf") == 0)
        return perf_main();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_op_vs_host),
        cmocka_unit_test(test_op_random_mix),
        cmocka_unit_test(test_small_chunks),
        cmocka_unit_test(test_runtime),
    };
    return anvil_test_run_group(tests);
}
