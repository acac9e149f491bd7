/*
 * Allowed-token masks (a grammar's) in CUDA sampling, against the CPU
 * reference (the host masks with anvil_sampler_mask, then the sampler's
 * pick):
 *
 *  - the op: sample_rows with anvil_sample_masks on f32 and bf16 rows of
 *    1000 and 32017 columns, masks of every kind (sparse, dense, one
 *    token, none allowed, bits set past the row) on some rows, NaN and
 *    +inf at disallowed tokens, random parameters: every id is the host's
 *    pick on the masked row (up to the device sampler's near ties, as in
 *    test_cuda_sample), a row allowing nothing is -1, the masked rows hold
 *    -inf exactly at their disallowed tokens afterwards, the others are
 *    untouched.
 *  - the runtime: decode steps of 24 sequences (stories260K f32, tinycode
 *    bf16) with masks that follow each sequence's last token; a reference
 *    runtime samples synchronously (forward_sample with the masks), and its
 *    ids are checked against the host's pick on the same step's logits
 *    (anvil_runtime_forward); a second runtime launches each step with its
 *    masks pending, waits for the step before, then gives the masks
 *    (anvil_runtime_forward_sample_masks): the same ids and generators as
 *    the reference (the same kernels), through replayed step graphs.
 *  - the executor: 32 JSON-schema and regex requests, seeded and greedy,
 *    with 8 unconstrained ones, on the device path (synchronous loop, then
 *    the overlap scheduler) and on the host path (host_sampling): every
 *    constrained output is valid, and at most one stream in eight parts
 *    from the host path (near ties of the device sampler; with the overlap
 *    the plans differ and the CUDA kernels are not batch-invariant:
 *    test_cuda_overlap).
 *
 * --perf: the sample op at 64 rows of 128256 bf16 logits, without masks
 * and with masks on every row (one token in a hundred allowed).
 *
 * Skips when no CUDA device is present.
 */
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "anvil/executor.h"
#include "anvil/grammar.h"
#include "anvil/runtime.h"
#include "anvil/sampling.h"
#include "anvil/tokenizer.h"
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

#define OK(expr)                                                      \
    do {                                                              \
        anvil_status st_ = (expr);                                    \
        if (st_ != ANVIL_OK)                                          \
            fail_msg("%s: %s", #expr, anvil_last_error());            \
    } while (0)

#define NEAR_TIE 1e-9

enum { MASK_NONE, MASK_SPARSE, MASK_DENSE, MASK_ONE, MASK_EMPTY, MASK_KINDS };

/* A mask of `kind` over V tokens into w (bits past V set: ignored). */
static void make_mask(int kind, int64_t V, uint64_t *r, uint32_t *w)
{
    const int64_t W = (V + 31) / 32;
    for (int64_t k = 0; k < W; k++) {
        uint32_t m = 0;
        for (int b = 0; b < 32; b++) {
            const uint64_t x = anvil_test_rand(r) % 100;
            m |= (uint32_t)(kind == MASK_SPARSE ? x < 2 : kind == MASK_DENSE ? x < 70 : 0) << b;
        }
        w[k] = m;
    }
    if (kind == MASK_ONE || kind == MASK_SPARSE) {
        const int64_t t = (int64_t)(anvil_test_rand(r) % (uint64_t)V);
        w[t / 32] |= 1u << (t % 32);
    }
    if (V % 32)
        w[W - 1] |= ~((1u << (V % 32)) - 1u);
}

static int allowed_by(const uint32_t *m, int64_t t) { return ((m[t / 32] >> (t % 32)) & 1u) != 0; }

static float gauss(uint64_t *r)
{
    float u1 = 0.5f * (anvil_test_randf(r) + 1.0f), u2 = anvil_test_randf(r);
    if (u1 < 1e-7f)
        u1 = 1e-7f;
    return sqrtf(-2.0f * logf(u1)) * cosf(3.14159265f * u2);
}

static anvil_sample_draw random_draw(uint64_t *r)
{
    static const float temps[] = {0.0f, 0.6f, 1.0f, 1.5f};
    static const int32_t ks[] = {0, 0, 1, 40, 3000};
    static const float ps[] = {1.0f, 0.9f, 0.2f};
    anvil_sampling_params p;
    anvil_sampling_params_default(&p);
    p.temperature = temps[anvil_test_rand(r) % 4];
    p.top_k = ks[anvil_test_rand(r) % 5];
    p.top_p = ps[anvil_test_rand(r) % 3];
    p.min_p = anvil_test_rand(r) % 4 == 0 ? 0.05f : 0.0f;
    anvil_rng g;
    anvil_rng_seed(&g, anvil_test_rand(r));
    anvil_sample_draw d;
    anvil_sample_draw_make(&d, &p, anvil_sampling_is_greedy(&p) ? 0.0 : anvil_rng_uniform(&g));
    return d;
}

/* ---------------------------------------------------------------- the op */

static void op_case(anvil_dtype dt, int64_t V, int R, uint64_t seed, int *near_ties, int *checked)
{
    anvil_backend *be = NULL;
    OK(anvil_backend_cuda_create(0, dt, &be));
    const size_t es = anvil_dtype_size(dt);
    const int64_t W = (V + 31) / 32;
    float *f = malloc((size_t)R * (size_t)V * sizeof *f), *after = malloc((size_t)R * (size_t)V * sizeof *after);
    void *h = malloc((size_t)R * (size_t)V * es);
    uint32_t *words = malloc((size_t)R * (size_t)W * sizeof *words);
    int32_t *mrow = malloc((size_t)R * sizeof *mrow), *row_mask = malloc((size_t)R * sizeof *row_mask);
    anvil_sample_draw *q = malloc((size_t)R * sizeof *q);
    int32_t *got = malloc((size_t)R * sizeof *got);
    anvil_sampler *sm = NULL;
    assert_true(f && after && h && words && mrow && row_mask && q && got);
    OK(anvil_sampler_create((int32_t)V, &sm));
    uint64_t r = seed;
    int32_t n = 0;
    for (int i = 0; i < R; i++) {
        float *x = f + (size_t)i * (size_t)V;
        for (int64_t j = 0; j < V; j++)
            x[j] = 2.5f * gauss(&r);
        const int kind = (i + (int)(seed % MASK_KINDS)) % MASK_KINDS;
        row_mask[i] = -1;
        if (kind != MASK_NONE) {
            uint32_t *m = words + (size_t)n * (size_t)W;
            make_mask(kind, V, &r, m);
            /* poison where the mask forbids: it must not matter */
            for (int64_t j = 0; j < V; j += 97)
                if (!allowed_by(m, j))
                    x[j] = j % 2 ? NAN : INFINITY;
            mrow[n] = i;
            row_mask[i] = n++;
        }
        q[i] = random_draw(&r);
    }
    anvil_convert_from_f32(dt, f, h, (int64_t)R * V);
    anvil_convert_to_f32(dt, h, f, (int64_t)R * V); /* the values the device sees */
    void *xd = NULL, *qd = NULL, *idd = NULL, *md = NULL, *wd = NULL;
    OK(be->ops->alloc(be, (size_t)R * (size_t)V * es, &xd));
    OK(be->ops->alloc(be, (size_t)R * sizeof *q, &qd));
    OK(be->ops->alloc(be, (size_t)R * sizeof(int32_t), &idd));
    OK(be->ops->alloc(be, (size_t)R * sizeof(int32_t), &md));
    OK(be->ops->alloc(be, (size_t)R * (size_t)W * sizeof(uint32_t), &wd));
    OK(be->ops->upload(be, xd, h, (size_t)R * (size_t)V * es));
    OK(be->ops->upload(be, qd, q, (size_t)R * sizeof *q));
    OK(be->ops->upload(be, md, mrow, (size_t)n * sizeof(int32_t)));
    OK(be->ops->upload(be, wd, words, (size_t)n * (size_t)W * sizeof(uint32_t)));
    const anvil_sample_masks m = {.n = n, .n_words = (int32_t)W, .rows = md, .words = wd};
    anvil_tensor x = anvil_tensor_2d(dt, R, V, xd);
    OK(be->ops->sample_rows(be, &x, qd, &m, idd));
    OK(be->ops->download(be, got, idd, (size_t)R * sizeof(int32_t)));
    OK(be->ops->download(be, h, xd, (size_t)R * (size_t)V * es));
    anvil_convert_to_f32(dt, h, after, (int64_t)R * V);
    for (int i = 0; i < R; i++) {
        float *row = f + (size_t)i * (size_t)V;
        const float *dev = after + (size_t)i * (size_t)V;
        int any = 1;
        if (row_mask[i] >= 0)
            any = anvil_sampler_mask(row, (int32_t)V, words + (size_t)row_mask[i] * (size_t)W);
        /* the device's row afterwards: the host's masked row, bit for bit */
        if (memcmp(row, dev, (size_t)V * sizeof *row) != 0) {
            for (int64_t j = 0; j < V; j++)
                if (memcmp(&row[j], &dev[j], sizeof *row) != 0 && !(isnan(row[j]) && isnan(dev[j])))
                    fail_msg("%s V %lld row %d col %lld: device %g, host %g", anvil_dtype_name(dt), (long long)V, i,
                             (long long)j, (double)dev[j], (double)row[j]);
        }
        double margin = INFINITY;
        const int32_t want = anvil_sampler_pick_margin(sm, row, &q[i], &margin);
        (*checked)++;
        if (!any)
            assert_int_equal(got[i], -1);
        if (got[i] >= 0 && row_mask[i] >= 0)
            assert_true(allowed_by(words + (size_t)row_mask[i] * (size_t)W, got[i]));
        if (got[i] == want)
            continue;
        if (want >= 0 && got[i] >= 0 && margin < NEAR_TIE) {
            (*near_ties)++;
            continue;
        }
        fail_msg("%s V %lld row %d (mask %d, t %g k %d p %g): device %d, host %d (margin %.3g)", anvil_dtype_name(dt),
                 (long long)V, i, row_mask[i], (double)q[i].sampling.temperature, q[i].sampling.top_k,
                 (double)q[i].sampling.top_p, got[i], want, margin);
    }
    be->ops->free(be, xd);
    be->ops->free(be, qd);
    be->ops->free(be, idd);
    be->ops->free(be, md);
    be->ops->free(be, wd);
    anvil_backend_free(be);
    anvil_sampler_free(sm);
    free(f), free(after), free(h), free(words), free(mrow), free(row_mask), free(q), free(got);
}

static void test_op_masks(void **st)
{
    (void)st;
    NEED_GPU();
    int near = 0, checked = 0;
    const anvil_dtype dts[2] = {ANVIL_DTYPE_F32, ANVIL_DTYPE_BF16};
    for (int d = 0; d < 2; d++) {
        op_case(dts[d], 1000, 40, 3 + (uint64_t)d, &near, &checked);
        op_case(dts[d], 32017, 24, 7 + (uint64_t)d, &near, &checked);
    }
    printf("masked sample_rows on CUDA: %d rows, %d near ties\n", checked, near);
    assert_true(near <= 2);
}

/* ---------------------------------------------------------------- the runtime */

static anvil_runtime *load(const char *model, anvil_dtype wdt, int host_sampling)
{
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.device = "cuda";
    o.weight_dtype = wdt;
    o.host_sampling = host_sampling;
    o.max_num_tokens = 256;
    o.max_batch_size = 32;
    o.kv_block_size = 16;
    o.kv_cache_tokens = 16 * 512;
    o.max_seq_len = 256;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/models/%s", anvil_test_shared_dir(), model);
    anvil_runtime *rt = NULL;
    if (anvil_runtime_load(dir, &o, &rt) != ANVIL_OK)
        fail_msg("load %s: %s", model, anvil_last_error());
    return rt;
}

/* A grammar-like mask: which tokens may follow `prev` at `step` (a quarter
 * of them, never none). */
static void follow_mask(int64_t V, int32_t prev, int step, int s, uint32_t *w)
{
    uint64_t r = 1000003u * (uint64_t)(prev + 7) + 7919u * (uint64_t)step + (uint64_t)s;
    for (int64_t k = 0; k < (V + 31) / 32; k++)
        w[k] = (uint32_t)anvil_test_rand(&r) & (uint32_t)anvil_test_rand(&r);
    w[(prev + 1) % V / 32] |= 1u << ((prev + 1) % V % 32);
}

enum { S = 24, STEPS = 16, MB = 8 };

static void runtime_case(const char *model, anvil_dtype wdt, int *near_ties)
{
    anvil_runtime *ref = load(model, wdt, 0), *rt = load(model, wdt, 0);
    assert_int_equal(anvil_runtime_launches_ahead(rt), 1);
    const int64_t V = anvil_runtime_config(rt)->vocab_size, W = (V + 31) / 32;
    uint32_t *words = malloc((size_t)2 * S * (size_t)W * sizeof *words);
    float *logits = malloc((size_t)S * (size_t)V * sizeof *logits);
    anvil_sampler *sm = NULL;
    assert_true(words && logits);
    OK(anvil_sampler_create((int32_t)V, &sm));
    int32_t blocks[2][S * MB];
    anvil_rng rng[2][S];
    anvil_sample_row rows[2][S];
    memset(rows, 0, sizeof rows);
    for (int k = 0; k < 2; k++) {
        OK(anvil_runtime_kv_alloc(k ? rt : ref, S * MB, blocks[k]));
        for (int s = 0; s < S; s++) {
            anvil_rng_seed(&rng[k][s], 17 + (uint64_t)s);
            anvil_sampling_params_default(&rows[k][s].sampling);
            rows[k][s].sampling.temperature = s % 3 == 0 ? 0.0f : 0.9f;
            rows[k][s].sampling.top_k = s % 3 == 2 ? 40 : 0;
            rows[k][s].rng = &rng[k][s];
        }
    }
    uint32_t *wref = words, *wrt = words + (size_t)S * (size_t)W;
    const uint32_t *allowed[S];
    int32_t tok[S * 8], pos[S * 8], starts[S + 1], lr[S], len[S], T = 0;
    for (int s = 0; s < S; s++) {
        starts[s] = T;
        len[s] = 2 + s % 7;
        for (int32_t p = 0; p < len[s]; p++, T++) {
            tok[T] = p == 0 ? 1 : 3 + (p * 31 + s * 7) % 250;
            pos[T] = p;
        }
        lr[s] = T - 1;
        follow_mask(V, tok[T - 1], 0, s, wref + (size_t)s * (size_t)W);
        memcpy(wrt + (size_t)s * (size_t)W, wref + (size_t)s * (size_t)W, (size_t)W * sizeof *words);
        rows[0][s].allowed = wref + (size_t)s * (size_t)W;
        rows[1][s].mask_pending = 1;
        allowed[s] = wrt + (size_t)s * (size_t)W;
    }
    starts[S] = T;
    anvil_batch b[2];
    for (int k = 0; k < 2; k++)
        b[k] = (anvil_batch){.n_tokens = T, .token_ids = tok, .positions = pos, .n_seqs = S, .seq_starts = starts,
                             .block_tables = blocks[k], .max_blocks_per_seq = MB, .n_logits = S, .logit_rows = lr};
    static int32_t want[STEPS + 1][S], got[STEPS + 1][S];
    unsigned long long rec0 = 0, rep0 = 0, rec1 = 0, rep1 = 0;
    anvil_cuda_graph_counts(&rec0, &rep0);
    for (int step = 0; step <= STEPS; step++) {
        int32_t dt[2][S], dp[S], ds[S + 1], dr[S];
        if (step > 0) {
            for (int s = 0; s < S; s++) {
                dt[0][s] = want[step - 1][s];
                dt[1][s] = ANVIL_TOKEN_FROM_ROW(s);
                dp[s] = len[s]++;
                ds[s] = s;
                dr[s] = s;
                follow_mask(V, want[step - 1][s], step, s, wref + (size_t)s * (size_t)W);
            }
            ds[S] = S;
            for (int k = 0; k < 2; k++)
                b[k] = (anvil_batch){.n_tokens = S, .token_ids = dt[k], .positions = dp, .n_seqs = S,
                                     .seq_starts = ds, .block_tables = blocks[k], .max_blocks_per_seq = MB,
                                     .n_logits = S, .logit_rows = dr};
        }
        /* the reference: this step's logits, then the same step sampled with the masks */
        OK(anvil_runtime_forward(ref, &b[0], logits));
        anvil_rng before[S];
        memcpy(before, rng[0], sizeof before);
        OK(anvil_runtime_forward_sample(ref, &b[0], rows[0], want[step]));
        for (int s = 0; s < S; s++) {
            float *row = logits + (size_t)s * (size_t)V;
            assert_true(anvil_sampler_mask(row, (int32_t)V, rows[0][s].allowed));
            anvil_sample_draw d;
            const int greedy = anvil_sampling_is_greedy(&rows[0][s].sampling);
            anvil_sample_draw_make(&d, &rows[0][s].sampling, greedy ? 0.0 : anvil_rng_uniform(&before[s]));
            assert_memory_equal(&before[s], &rng[0][s], sizeof before[s]);
            double margin = INFINITY;
            const int32_t host = anvil_sampler_pick_margin(sm, row, &d, &margin);
            assert_true(want[step][s] >= 0 && allowed_by(rows[0][s].allowed, want[step][s]));
            if (want[step][s] != host) {
                if (margin >= NEAR_TIE)
                    fail_msg("%s step %d seq %d: device %d, host %d (margin %.3g)", model, step, s, want[step][s],
                             host, margin);
                (*near_ties)++;
            }
        }
        /* the launched path: masks pending, given after the step before is waited for */
        OK(anvil_runtime_forward_sample_launch(rt, &b[1], rows[1]));
        if (step > 0) {
            OK(anvil_runtime_forward_sample_wait(rt, got[step - 1]));
            for (int s = 0; s < S; s++)
                follow_mask(V, got[step - 1][s], step, s, wrt + (size_t)s * (size_t)W);
        }
        OK(anvil_runtime_forward_sample_masks(rt, allowed));
    }
    OK(anvil_runtime_forward_sample_wait(rt, got[STEPS]));
    anvil_cuda_graph_counts(&rec1, &rep1);
    for (int step = 0; step <= STEPS; step++)
        for (int s = 0; s < S; s++)
            if (got[step][s] != want[step][s])
                fail_msg("%s: step %d, sequence %d: launched %d, synchronous %d", model, step, s, got[step][s],
                         want[step][s]);
    for (int s = 0; s < S; s++)
        assert_memory_equal(&rng[0][s], &rng[1][s], sizeof rng[0][s]);
    printf("%s: masked steps, graphs recorded %llu, replayed %llu\n", model, rec1 - rec0, rep1 - rep0);
    assert_true(rep1 - rep0 >= STEPS); /* the forwards of masked decode steps replay their graphs */
    anvil_sampler_free(sm);
    free(words);
    free(logits);
    anvil_runtime_free(rt);
    anvil_runtime_free(ref);
}

static void test_runtime_masks(void **st)
{
    (void)st;
    NEED_GPU();
    int near = 0;
    runtime_case("stories260K", ANVIL_DTYPE_F32, &near);
    runtime_case("tinycode", ANVIL_DTYPE_BF16, &near);
    printf("masked forward_sample on CUDA: %d near ties\n", near);
    assert_true(near <= 2);
}

/* ---------------------------------------------------------------- the executor */

#define N_CON 32
#define N_PLAIN 8

static const char schema[] = "{\"type\":\"object\",\"properties\":{"
                             "\"id\":{\"type\":\"integer\"},"
                             "\"tag\":{\"type\":\"string\",\"maxLength\":6},"
                             "\"on\":{\"type\":\"boolean\"}},"
                             "\"required\":[\"id\",\"tag\",\"on\"],\"additionalProperties\":false}";
static const char regex_src[] = "[a-z]{2,5}_[0-9]{1,3}";

static void run_exec(anvil_runtime *rt, int overlap, const anvil_tokenizer *tok, const anvil_grammar *gs,
                     const anvil_grammar *gr, anvil_result **res)
{
    anvil_executor_options eo;
    anvil_executor_options_default(&eo);
    eo.seed = 9;
    if (!overlap)
        eo.enable_overlap = ANVIL_OVERLAP_OFF;
    anvil_executor *ex = NULL;
    OK(anvil_executor_create(rt, tok, &eo, &ex));
    uint64_t id[N_CON + N_PLAIN];
    for (int i = 0; i < N_CON + N_PLAIN; i++) {
        anvil_request q;
        anvil_request_init(&q);
        q.prompt = i % 2 ? "{\"" : "Output:";
        q.max_tokens = i < N_CON ? 96 : 24;
        q.has_seed = 1;
        q.sampling.seed = 50 + (uint64_t)i;
        q.sampling.temperature = i % 4 == 0 ? 0.0f : 0.9f;
        q.sampling.top_p = i % 4 == 3 ? 0.9f : 1.0f;
        q.grammar = i < N_CON ? (i % 2 ? gs : gr) : NULL;
        q.retain_result = 1;
        OK(anvil_executor_enqueue(ex, &q, &id[i]));
    }
    for (int i = 0; i < N_CON + N_PLAIN; i++)
        OK(anvil_executor_wait(ex, id[i], &res[i]));
    anvil_executor_free(ex);
}

static void check_valid(int i, const anvil_sequence_output *o)
{
    if (o->finish != ANVIL_REQUEST_STOP)
        return; /* cut by max_tokens: a prefix */
    if (i % 2) {
        json_error_t err;
        json_t *j = json_loadb(o->text, o->text_len, 0, &err);
        if (j == NULL || !json_is_object(j) || json_object_size(j) != 3)
            fail_msg("request %d: not the schema's object: %.*s", i, (int)o->text_len, o->text);
        json_decref(j);
    } else {
        regex_t re;
        assert_int_equal(regcomp(&re, "^[a-z]{2,5}_[0-9]{1,3}$", REG_EXTENDED | REG_NOSUB), 0);
        if (regexec(&re, o->text, 0, NULL, 0) != 0)
            fail_msg("request %d: does not match %s: \"%s\"", i, regex_src, o->text);
        regfree(&re);
    }
}

static void test_executor_grammar(void **st)
{
    (void)st;
    NEED_GPU();
    anvil_runtime *dev = load("tinycode", ANVIL_DTYPE_BF16, 0), *host = load("tinycode", ANVIL_DTYPE_BF16, 1);
    char dir[512];
    snprintf(dir, sizeof dir, "%s/models/tinycode", anvil_test_shared_dir());
    anvil_tokenizer *tok = NULL;
    OK(anvil_tokenizer_load(dir, &tok));
    const anvil_model_config *cfg = anvil_runtime_config(dev);
    anvil_grammar_vocab *gv = NULL;
    anvil_grammar *gs = NULL, *gr = NULL;
    OK(anvil_grammar_vocab_from_tokenizer(tok, (int32_t)cfg->vocab_size, cfg->eos_token_ids, cfg->n_eos_token_ids,
                                          &gv));
    OK(anvil_grammar_compile_json_schema(gv, schema, strlen(schema), NULL, &gs));
    OK(anvil_grammar_compile_regex(gv, regex_src, strlen(regex_src), NULL, &gr));
    static anvil_result *h[N_CON + N_PLAIN], *d[N_CON + N_PLAIN];
    run_exec(host, 0, tok, gs, gr, h); /* the host path (its runtime does not launch ahead) */
    for (int overlap = 0; overlap < 2; overlap++) {
        /* the device path: synchronous (the host path's plan, step for step), then overlapped */
        run_exec(dev, overlap, tok, gs, gr, d);
        int parted = 0, stopped = 0;
        for (int i = 0; i < N_CON + N_PLAIN; i++) {
            const anvil_sequence_output *x = &d[i]->sequences[0], *y = &h[i]->sequences[0];
            if (i < N_CON) {
                check_valid(i, x);
                check_valid(i, y);
                stopped += x->finish == ANVIL_REQUEST_STOP;
            }
            parted += x->n_tokens != y->n_tokens ||
                      memcmp(x->token_ids, y->token_ids, (size_t)x->n_tokens * sizeof(int32_t)) != 0;
        }
        printf("grammar on CUDA, overlap %d: %d of %d streams part from the host path, %d of %d constrained "
               "completed\n",
               overlap, parted, N_CON + N_PLAIN, stopped, N_CON);
        assert_true(parted <= (N_CON + N_PLAIN) / 8);
        assert_true(stopped >= N_CON / 4);
        for (int i = 0; i < N_CON + N_PLAIN; i++)
            anvil_result_free(d[i]);
    }
    for (int i = 0; i < N_CON + N_PLAIN; i++)
        anvil_result_free(h[i]);
    anvil_grammar_free(gs);
    anvil_grammar_free(gr);
    anvil_grammar_vocab_free(gv);
    anvil_tokenizer_free(tok);
    anvil_runtime_free(dev);
    anvil_runtime_free(host);
}

/* ---------------------------------------------------------------- --perf */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int perf_main(void)
{
    if (anvil_cuda_device_count() == 0) {
        printf("no CUDA device\n");
        return 0;
    }
    enum { R = 64, ITERS = 50 };
    const int64_t V = 128256, W = (V + 31) / 32;
    anvil_backend *be = NULL;
    OK(anvil_backend_cuda_create(0, ANVIL_DTYPE_BF16, &be));
    float *f = malloc((size_t)R * (size_t)V * sizeof *f);
    void *h = malloc((size_t)R * (size_t)V * 2);
    uint32_t *words = malloc((size_t)R * (size_t)W * sizeof *words);
    int32_t mrow[R];
    anvil_sample_draw q[R];
    uint64_t r = 1;
    for (int64_t i = 0; i < (int64_t)R * V; i++)
        f[i] = 2.5f * gauss(&r);
    for (int i = 0; i < R; i++) {
        make_mask(MASK_SPARSE, V, &r, words + (size_t)i * (size_t)W);
        mrow[i] = i;
        anvil_sampling_params p;
        anvil_sampling_params_default(&p);
        p.temperature = 0.8f;
        p.top_p = 0.95f;
        anvil_sample_draw_make(&q[i], &p, 0.5);
    }
    anvil_convert_from_f32(ANVIL_DTYPE_BF16, f, h, (int64_t)R * V);
    void *xd, *qd, *idd, *md, *wd;
    OK(be->ops->alloc(be, (size_t)R * (size_t)V * 2, &xd));
    OK(be->ops->alloc(be, sizeof q, &qd));
    OK(be->ops->alloc(be, R * sizeof(int32_t), &idd));
    OK(be->ops->alloc(be, sizeof mrow, &md));
    OK(be->ops->alloc(be, (size_t)R * (size_t)W * 4, &wd));
    OK(be->ops->upload(be, qd, q, sizeof q));
    OK(be->ops->upload(be, md, mrow, sizeof mrow));
    OK(be->ops->upload(be, wd, words, (size_t)R * (size_t)W * 4));
    const anvil_sample_masks m = {.n = R, .n_words = (int32_t)W, .rows = md, .words = wd};
    anvil_tensor x = anvil_tensor_2d(ANVIL_DTYPE_BF16, R, V, xd);
    for (int masked = 0; masked < 2; masked++) {
        double total = 0.0;
        for (int it = 0; it < ITERS; it++) {
            OK(be->ops->upload(be, xd, h, (size_t)R * (size_t)V * 2)); /* fresh logits (the mask writes them) */
            OK(be->ops->synchronize(be));
            const double t0 = now_s();
            OK(be->ops->sample_rows(be, &x, qd, masked ? &m : NULL, idd));
            OK(be->ops->synchronize(be));
            total += now_s() - t0;
        }
        printf("sample_rows, %d rows of %lld bf16 logits, t 0.8 top_p 0.95, %s: %.1f us\n", R, (long long)V,
               masked ? "masks on every row (1 token in 50 allowed)" : "no mask", 1e6 * total / ITERS);
    }
    be->ops->free(be, xd);
    be->ops->free(be, qd);
    be->ops->free(be, idd);
    be->ops->free(be, md);
    be->ops->free(be, wd);
    anvil_backend_free(be);
    free(f), free(h), free(words);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--perf") == 0)
        return perf_main();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_op_masks),
        cmocka_unit_test(test_runtime_masks),
        cmocka_unit_test(test_executor_grammar),
    };
    return anvil_test_run_group(tests);
}
