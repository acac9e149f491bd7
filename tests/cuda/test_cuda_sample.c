/*
 * sample_rows on CUDA against the host sampler (anvil_sampler_pick, what the
 * CPU op runs):
 *
 *  - f32, bf16 and f16 logits at vocabularies 32000 and 128256 (and odd
 *    widths whose rows are not 16-byte aligned), rows of several shapes
 *    (LLM-like with a few peaked tokens, few distinct values = many ties,
 *    constant rows, masked -inf, a NaN, one finite value, nothing finite),
 *    under a grid of temperature 0/0.6/1/1.7, top_k 0/1/40/1000/6000, top_p
 *    1/0.9/0.1, min_p 0/0.05 and random draws (u = 0 and u just below 1
 *    included). Every id must equal the host's, except where the host's own
 *    running sums put u * sum (or top_p * sum) within 1e-9 (relative) of a
 *    boundary: the device adds the same double values in another order.
 *    Such near-ties are counted and reported; anything else fails.
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
#include "testutil.h"

#define NEED_GPU()                              \
    do {                                        \
        if (anvil_cuda_device_count() == 0)     \
            skip();                             \
    } while (0)

#define NEAR_TIE 1e-9

/* ---------------------------------------------------------------- the host reference, with its margins */

typedef struct rc {
    float l;
    int32_t id;
} rc;

static int rc_cmp(const void *pa, const void *pb)
{
    const rc *a = pa, *b = pb;
    if (a->l != b->l)
        return a->l > b->l ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

/*
 * The host sampler's steps (src/runtime/sampling.c), returning how close
 * its decisions were: the smallest distance, relative to the sum used, of
 * top_p * sum and of u * sum to a running sum. INFINITY for greedy rows and
 * poisoned rows (a NaN or +inf, or no finite logit: *id -1). *id: the
 * token (checked against pick), -2 for greedy rows.
 */
static double host_margin(const float *x, int32_t V, const anvil_sample_params *q, rc *c, double *cum, int32_t *id)
{
    *id = -2;
    int bad = 0;
    for (int32_t i = 0; i < V; i++)
        bad |= !(x[i] < INFINITY);
    if (bad) {
        *id = -1;
        return INFINITY;
    }
    if (q->temperature <= 0.0f || q->top_k == 1)
        return INFINITY;
    const float inv_t = 1.0f / q->temperature;
    int32_t m = 0;
    for (int32_t i = 0; i < V; i++)
        if (x[i] > -INFINITY) {
            c[m].l = x[i] * inv_t;
            c[m].id = i;
            m++;
        }
    if (m == 0) {
        *id = -1;
        return INFINITY;
    }
    float max = c[0].l;
    for (int32_t i = 1; i < m; i++)
        if (c[i].l > max)
            max = c[i].l;
    if (q->log_min_p > -INFINITY) {
        const float thr = max + q->log_min_p;
        int32_t k = 0;
        for (int32_t i = 0; i < m; i++)
            if (c[i].l >= thr)
                c[k++] = c[i];
        m = k;
    }
    const int32_t total = m;
    const int sorted = q->top_p < 1.0f || (q->top_k > 0 && q->top_k < total);
    if (sorted) {
        qsort(c, (size_t)m, sizeof *c, rc_cmp);
        if (q->top_k > 0 && q->top_k < m)
            m = q->top_k;
    }
    double s = 0.0;
    for (int32_t i = 0; i < m; i++) {
        s += expf(c[i].l - max);
        cum[i] = s;
    }
    double margin = INFINITY;
    int32_t keep = m;
    if (q->top_p < 1.0f) {
        const double target = (double)q->top_p * s;
        for (int32_t i = 0; i < m; i++) {
            margin = fmin(margin, fabs(cum[i] - target) / s);
            if (keep == m && cum[i] >= target)
                keep = i + 1;
        }
    }
    const double sum2 = cum[keep - 1], r = q->u * sum2;
    *id = c[keep - 1].id;
    int found = 0;
    for (int32_t i = 0; i < keep; i++) {
        margin = fmin(margin, fabs(cum[i] - r) / sum2);
        if (!found && r < cum[i]) {
            *id = c[i].id;
            found = 1;
        }
    }
    return margin;
}

/* ---------------------------------------------------------------- rows */

static float gauss(uint64_t *r)
{
    float u1 = 0.5f * (anvil_test_randf(r) + 1.0f), u2 = anvil_test_randf(r);
    if (u1 < 1e-7f)
        u1 = 1e-7f;
    return sqrtf(-2.0f * logf(u1)) * cosf(3.14159265f * u2);
}

/* kind 0/1: LLM-like; 2: few distinct values; 3: constant; 4: masked; 5: a
 * NaN; 6: one finite; 7: nothing finite (5 and 7 are poisoned: -1) */
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
    default:
        break;
    }
}

static const float grid_t[4] = {0.0f, 0.6f, 1.0f, 1.7f};
static const int32_t grid_k[5] = {0, 1, 40, 1000, 6000};
static const float grid_p[3] = {1.0f, 0.9f, 0.1f};
static const float grid_mp[2] = {0.0f, 0.05f};
#define GRID (4 * 5 * 3 * 2)

static anvil_sample_params grid_params(int i, uint64_t *r)
{
    anvil_sample_params q;
    q.temperature = grid_t[i % 4];
    q.top_k = grid_k[(i / 4) % 5];
    q.top_p = grid_p[(i / 20) % 3];
    const float mp = grid_mp[(i / 60) % 2];
    q.log_min_p = mp > 0.0f ? logf(mp) : -INFINITY;
    anvil_rng g;
    anvil_rng_seed(&g, anvil_test_rand(r));
    q.u = anvil_rng_uniform(&g);
    if (i % 37 == 5)
        q.u = 0.0;
    if (i % 37 == 6)
        q.u = 1.0 - 0x1.0p-53;
    return q;
}

typedef struct tally {
    int checked, sampled, near_ties;
    double worst_near; /* the largest margin among the near ties */
} tally;

/* R rows of width V in dtype dt through the op; each id against the host. */
static void check_batch(anvil_backend *be, anvil_dtype dt, int64_t V, int R, uint64_t seed, tally *t)
{
    const size_t es = anvil_dtype_size(dt);
    float *f = malloc((size_t)R * (size_t)V * sizeof *f);
    void *h = malloc((size_t)R * (size_t)V * es);
    anvil_sample_params *q = malloc((size_t)R * sizeof *q);
    int32_t *got = malloc((size_t)R * sizeof *got);
    rc *c = malloc((size_t)V * sizeof *c);
    double *cum = malloc((size_t)V * sizeof *cum);
    anvil_sampler *sm = NULL;
    assert_true(f && h && q && got && c && cum);
    assert_int_equal(anvil_sampler_create((int32_t)V, &sm), ANVIL_OK);
    uint64_t r = seed;
    for (int i = 0; i < R; i++) {
        fill_row(f + (size_t)i * V, V, (i * 7 / 3 + (int)(seed & 7)) % 8, &r);
        q[i] = grid_params(i, &r);
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
    if (be->ops->sample_rows(be, &x, qd, idd) != ANVIL_OK)
        fail_msg("sample_rows: %s", anvil_last_error());
    assert_int_equal(be->ops->download(be, got, idd, (size_t)R * sizeof(int32_t)), ANVIL_OK);
    for (int i = 0; i < R; i++) {
        const float *row = f + (size_t)i * V;
        const anvil_sampling_params sp = {.temperature = q[i].temperature, .top_k = q[i].top_k, .top_p = q[i].top_p};
        const int32_t want = anvil_sampler_pick(sm, row, &sp, q[i].log_min_p, q[i].u);
        t->checked++;
        t->sampled += q[i].temperature > 0.0f && q[i].top_k != 1;
        if (got[i] == want)
            continue;
        int32_t ref_id;
        const double margin = host_margin(row, (int32_t)V, &q[i], c, cum, &ref_id);
        if (ref_id != want) /* the reference itself must agree (test_reference checks it everywhere) */
            fail_msg("reference %d vs pick %d", ref_id, want);
        if (margin < NEAR_TIE) {
            t->near_ties++;
            if (margin > t->worst_near)
                t->worst_near = margin;
            continue;
        }
        fail_msg("%s V %lld row %d (t %g k %d p %g log_min_p %g u %.17g): device %d, host %d (margin %.3g)",
                 anvil_dtype_name(dt), (long long)V, i, (double)q[i].temperature, q[i].top_k, (double)q[i].top_p,
                 (double)q[i].log_min_p, q[i].u, got[i], want, margin);
    }
    be->ops->free(be, xd);
    be->ops->free(be, qd);
    be->ops->free(be, idd);
    anvil_sampler_free(sm);
    free(f);
    free(h);
    free(q);
    free(got);
    free(c);
    free(cum);
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
            check_batch(be, dts[di], widths[wi], GRID, 1000 + (uint64_t)(di * 10 + wi), &t);
        anvil_backend_free(be);
    }
    printf("sample_rows: %d rows (%d sampled), %d near-tie differences (largest margin %.3g)\n", t.checked,
           t.sampled, t.near_ties, t.worst_near);
    assert_true(t.sampled > t.checked / 2);
    assert_true(t.near_ties <= t.checked / 100); /* rare by construction */
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
        check_batch(be, ANVIL_DTYPE_F32, 32000, GRID, 77, &t);
    check_batch(be, ANVIL_DTYPE_F32, quick ? 1001 : 5000, GRID, 78, &t);
    anvil_cuda_sample_set_chunk(1);
    check_batch(be, ANVIL_DTYPE_F32, 300, GRID, 79, &t);
    anvil_cuda_sample_set_chunk(4096);
    anvil_backend_free(be);
    printf("sample_rows, small chunks: %d rows, %d near ties\n", t.checked, t.near_ties);
    assert_true(t.near_ties <= t.checked / 100);
}

/* The test's reference (used only to measure margins) follows the host
 * sampler: checked on the CPU against anvil_sampler_pick, every row. */
static void test_reference(void **st)
{
    (void)st;
    const int64_t V = 32000;
    float *f = malloc((size_t)V * sizeof *f);
    rc *c = malloc((size_t)V * sizeof *c);
    double *cum = malloc((size_t)V * sizeof *cum);
    anvil_sampler *sm = NULL;
    assert_true(f && c && cum);
    assert_int_equal(anvil_sampler_create((int32_t)V, &sm), ANVIL_OK);
    uint64_t r = 3;
    int sampled = 0;
    for (int i = 0; i < GRID; i++) {
        fill_row(f, V, i % 8, &r);
        const anvil_sample_params q = grid_params(i, &r);
        const anvil_sampling_params sp = {.temperature = q.temperature, .top_k = q.top_k, .top_p = q.top_p};
        const int32_t want = anvil_sampler_pick(sm, f, &sp, q.log_min_p, q.u);
        int32_t id;
        host_margin(f, (int32_t)V, &q, c, cum, &id);
        if (id != -2) {
            assert_int_equal(id, want);
            sampled++;
        }
    }
    assert_true(sampled > GRID / 2);
    anvil_sampler_free(sm);
    free(f);
    free(c);
    free(cum);
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
    rc *c = malloc((size_t)V * sizeof *c);
    double *cum = malloc((size_t)V * sizeof *cum);
    anvil_sampler *sm = NULL;
    assert_true(logits && c && cum);
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
        anvil_sample_params q[NS];
        int32_t got[NS];
        for (int s = 0; s < NS; s++) {
            q[s] = grid_params((int)(anvil_test_rand(&r) % GRID), &r);
            q[s].top_k = q[s].top_k > 100 ? 50 : q[s].top_k; /* vocabularies of 512 */
            anvil_rng_seed(&want_rng[s], anvil_test_rand(&r));
            got_rng[s] = want_rng[s];
            sr[s] = (anvil_sample_row){.temperature = q[s].temperature, .top_k = q[s].top_k, .top_p = q[s].top_p,
                                       .min_p = q[s].log_min_p > -INFINITY ? 0.05f : 0.0f, .rng = &got_rng[s]};
            q[s].log_min_p = sr[s].min_p > 0.0f ? logf(sr[s].min_p) : -INFINITY;
        }
        if (anvil_runtime_forward_sample(rt, &b, sr, got) != ANVIL_OK)
            fail_msg("%s: %s", model, anvil_last_error());
        for (int s = 0; s < NS; s++) {
            const int samples = sr[s].temperature > 0.0f && sr[s].top_k != 1;
            q[s].u = samples ? anvil_rng_uniform(&want_rng[s]) : 0.0;
            const float *row = logits + (size_t)s * (size_t)V;
            const anvil_sampling_params sp = {.temperature = sr[s].temperature, .top_k = sr[s].top_k,
                                              .top_p = sr[s].top_p};
            const int32_t want = anvil_sampler_pick(sm, row, &sp, q[s].log_min_p, q[s].u);
            assert_memory_equal(&got_rng[s], &want_rng[s], sizeof(anvil_rng));
            t->checked++;
            t->sampled += samples;
            if (got[s] != want) {
                int32_t ref_id;
                const double margin = host_margin(row, V, &q[s], c, cum, &ref_id);
                if (!(margin < NEAR_TIE))
                    fail_msg("%s step %d row %d: device %d, host %d (margin %.3g)", model, step, s, got[s], want,
                             margin);
                t->near_ties++;
            }
        }
        for (int s = 0; s < NS; s++) {
            done[s] = len[s];
            toks[s][len[s]++] = got[s];
        }
    }
    anvil_sampler_free(sm);
    free(logits);
    free(c);
    free(cum);
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
    anvil_sample_params *q = malloc((size_t)B * sizeof *q);
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
                q[i] = (anvil_sample_params){.temperature = c->t, .top_k = c->k < 0 ? 0 : c->k, .top_p = c->p,
                                             .log_min_p = c->mp > 0.0f ? logf(c->mp) : -INFINITY,
                                             .u = anvil_rng_uniform(&g)};
            }
            be->ops->upload(be, qd, q, (size_t)rows * sizeof *q);
            anvil_tensor x = anvil_tensor_2d(ANVIL_DTYPE_BF16, rows, V, ci >= 0 && cfgs[ci].k < 0 ? xp : xd);
            float ms[7];
            for (int rep = -1; rep < 7; rep++) {
                cudaEventRecord(e0, stream);
                for (int it = 0; it < 20; it++) {
                    const anvil_status st = ci < 0 ? be->ops->argmax_rows(be, &x, idd)
                                                   : be->ops->sample_rows(be, &x, qd, idd);
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
        const anvil_sampling_params sp = {.temperature = c->t, .top_k = c->k, .top_p = c->p};
        volatile int32_t sink = 0;
        const double t0 = now_s();
        for (int i = 0; i < 16; i++)
            sink += anvil_sampler_pick(sm, f + (size_t)i * V, &sp, c->mp > 0.0f ? logf(c->mp) : -INFINITY, 0.5);
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
        cmocka_unit_test(test_reference),
        cmocka_unit_test(test_op_vs_host),
        cmocka_unit_test(test_small_chunks),
        cmocka_unit_test(test_runtime),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
