/*
 * anvil_runtime_forward_sample on the CPU backend (its sample_rows op):
 *
 *  - on golden models (stories260K, tinycode), steps of three sequences
 *    (a prefill, then decode steps) where every row gets random sampling
 *    parameters (greedy, temperatures 0.05..8, top_k -1/0/1/2/5/40/1000,
 *    top_p 0.05..1, min_p 0..0.5) and its own seeded generator: the ids
 *    must equal anvil_sampler_sample on the logits anvil_runtime_forward
 *    returns for the same step, and every generator must end in the state
 *    that call leaves it in; the host path (options.host_sampling) too.
 *  - anvil_sampler_pick with the draw given (anvil_sample_draw_make of the
 *    parameters and the uniform) equals the drawing sampler on
 *    random rows with ties and -inf, and both return -1 (no draw) on
 *    poisoned rows (a NaN, a +inf, nothing finite), greedy or not; the CPU
 *    op does the same on many rows at once.
 *  - bad parameters are refused before any generator moves.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/runtime.h"
#include "anvil/sampling.h"
#include "backend/backend.h"
#include "sampler/sampler.h"
#include "testutil.h"

/* ---------------------------------------------------------------- random parameters */

static anvil_sample_row random_row(uint64_t *r, anvil_rng *rng)
{
    static const float temps[] = {0.0f, 0.05f, 0.3f, 0.7f, 1.0f, 1.0f, 1.5f, 8.0f};
    static const int32_t ks[] = {-1, 0, 0, 1, 2, 5, 40, 1000};
    static const float ps[] = {0.05f, 0.3f, 0.9f, 0.95f, 1.0f, 1.0f, 1.0f};
    static const float mps[] = {0.0f, 0.0f, 0.0f, 0.02f, 0.1f, 0.5f};
    anvil_sample_row s = {.rng = rng};
    anvil_sampling_params_default(&s.sampling);
    s.sampling.temperature = temps[anvil_test_rand(r) % 8];
    s.sampling.top_k = ks[anvil_test_rand(r) % 8];
    s.sampling.top_p = ps[anvil_test_rand(r) % 7];
    s.sampling.min_p = mps[anvil_test_rand(r) % 6];
    return s;
}

static int32_t host_pick(anvil_sampler *sm, const float *row, const anvil_sample_row *s, anvil_rng *rng)
{
    return anvil_sampler_sample(sm, row, &s->sampling, rng);
}

/* ---------------------------------------------------------------- golden models */

#define NS 3
#define MAXT 48

static anvil_runtime *load(const char *model, int host_sampling)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/models/%s", anvil_test_shared_dir(), model);
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.host_sampling = host_sampling;
    o.n_threads = 2;
    o.max_num_tokens = 64;
    o.max_batch_size = NS;
    o.max_seq_len = 64;
    o.kv_block_size = 8;
    o.kv_cache_tokens = 64 * NS;
    anvil_runtime *rt = NULL;
    if (anvil_runtime_load(dir, &o, &rt) != ANVIL_OK)
        fail_msg("load %s: %s", model, anvil_last_error());
    return rt;
}

/* Prefills NS prompts, then decodes STEPS steps; at every step all rows
 * sample with fresh random parameters through forward_sample and through
 * forward + the host sampler. */
static void run_model(const char *model, int host_sampling, int steps, uint64_t seed)
{
    anvil_runtime *rt = load(model, host_sampling);
    const int32_t V = (int32_t)anvil_runtime_config(rt)->vocab_size;
    anvil_sampler *sm = NULL;
    assert_int_equal(anvil_sampler_create(V, &sm), ANVIL_OK);
    float *logits = malloc((size_t)NS * (size_t)V * sizeof *logits);
    assert_non_null(logits);
    uint64_t r = seed;
    int32_t toks[NS][MAXT + 16], len[NS], tables[NS * 8];
    for (int s = 0; s < NS; s++) {
        len[s] = 3 + s * 4;
        toks[s][0] = 1;
        for (int i = 1; i < len[s]; i++)
            toks[s][i] = (int32_t)(anvil_test_rand(&r) % (uint64_t)V);
    }
    assert_int_equal(anvil_runtime_kv_alloc(rt, NS * 8, tables), ANVIL_OK);
    int checked = 0, sampled = 0;
    int32_t done[NS] = {0, 0, 0};
    for (int step = 0; step <= steps; step++) {
        int32_t ids[MAXT * NS], pos[MAXT * NS], starts[NS + 1], rows[NS];
        int32_t T = 0;
        for (int s = 0; s < NS; s++) {
            starts[s] = T;
            for (int32_t p = done[s]; p < len[s]; p++) {
                ids[T] = toks[s][p];
                pos[T] = p;
                T++;
            }
            rows[s] = T - 1;
        }
        starts[NS] = T;
        anvil_batch b = {.n_tokens = T, .token_ids = ids, .positions = pos, .n_seqs = NS, .seq_starts = starts,
                         .block_tables = tables, .max_blocks_per_seq = 8, .n_logits = NS, .logit_rows = rows};
        /* the expected ids: the logits of this step through the host sampler */
        assert_int_equal(anvil_runtime_forward(rt, &b, logits), ANVIL_OK);
        anvil_rng want_rng[NS], got_rng[NS];
        anvil_sample_row sr[NS];
        int32_t want[NS], got[NS];
        for (int s = 0; s < NS; s++) {
            anvil_rng_seed(&want_rng[s], anvil_test_rand(&r));
            got_rng[s] = want_rng[s];
            sr[s] = random_row(&r, &got_rng[s]);
            want[s] = host_pick(sm, logits + (size_t)s * (size_t)V, &sr[s], &want_rng[s]);
            sampled += !anvil_sampling_is_greedy(&sr[s].sampling);
        }
        /* the same step again (the same KV is written to the same slots) */
        if (anvil_runtime_forward_sample(rt, &b, sr, got) != ANVIL_OK)
            fail_msg("%s: %s", model, anvil_last_error());
        for (int s = 0; s < NS; s++) {
            if (got[s] != want[s])
                fail_msg("%s step %d row %d (t %g k %d p %g min_p %g): id %d, host sampler %d", model, step, s,
                         (double)sr[s].sampling.temperature, sr[s].sampling.top_k, (double)sr[s].sampling.top_p,
                         (double)sr[s].sampling.min_p, got[s],
                         want[s]);
            assert_memory_equal(&got_rng[s], &want_rng[s], sizeof(anvil_rng));
            checked++;
        }
        for (int s = 0; s < NS; s++) {
            done[s] = len[s];
            toks[s][len[s]++] = got[s];
        }
    }
    assert_int_equal(checked, NS * (steps + 1));
    assert_true(sampled > checked / 2); /* most rows really sampled */
    free(logits);
    anvil_sampler_free(sm);
    anvil_runtime_free(rt);
}

static void test_stories(void **st)
{
    (void)st;
    run_model("stories260K", 0, 40, 11);
    run_model("stories260K", 1, 10, 12);
}

static void test_tinycode(void **st)
{
    (void)st;
    run_model("tinycode", 0, 30, 21);
    run_model("tinycode", 1, 6, 22);
}

/* ---------------------------------------------------------------- pick and the op on random rows */

/* Rows of several shapes: plain, many ties, masked (-inf), a NaN, one
 * finite value, nothing finite, a +inf. Kinds 3, 5 and 6 are poisoned. */
#define ROW_KINDS 7
static int poisoned_kind(int kind) { return kind == 3 || kind == 5 || kind == 6; }

static void fill_row(float *x, int32_t V, int kind, uint64_t *r)
{
    for (int32_t i = 0; i < V; i++)
        x[i] = 4.0f * anvil_test_randf(r);
    switch (kind) {
    case 1: /* ties: few distinct values */
        for (int32_t i = 0; i < V; i++)
            x[i] = (float)(int)(3.0f * anvil_test_randf(r));
        break;
    case 2: /* masked */
        for (int32_t i = 0; i < V; i++)
            if (anvil_test_rand(r) % 3 == 0)
                x[i] = -INFINITY;
        break;
    case 3:
        x[anvil_test_rand(r) % (uint64_t)V] = NAN;
        break;
    case 4: /* one finite */
        for (int32_t i = 0; i < V; i++)
            x[i] = -INFINITY;
        x[anvil_test_rand(r) % (uint64_t)V] = 0.5f;
        break;
    case 5: /* nothing finite */
        for (int32_t i = 0; i < V; i++)
            x[i] = (i % 5 == 1) ? NAN : -INFINITY;
        break;
    case 6:
        x[anvil_test_rand(r) % (uint64_t)V] = INFINITY;
        break;
    default:
        break;
    }
}

static void test_pick_equals_sampler(void **st)
{
    (void)st;
    const int32_t V = 700;
    anvil_sampler *sm = NULL;
    assert_int_equal(anvil_sampler_create(V, &sm), ANVIL_OK);
    float *x = malloc((size_t)V * sizeof *x);
    assert_non_null(x);
    uint64_t r = 5;
    int no_draw = 0;
    for (int it = 0; it < 3000; it++) {
        fill_row(x, V, it % ROW_KINDS, &r);
        anvil_rng rng;
        anvil_rng_seed(&rng, (uint64_t)it);
        anvil_sample_row s = random_row(&r, &rng);
        const anvil_rng before = rng;
        const int32_t want = host_pick(sm, x, &s, &rng);
        const int drew = memcmp(&before, &rng, sizeof rng) != 0;
        anvil_rng copy = before;
        const double u = anvil_rng_uniform(&copy);
        anvil_sample_draw d;
        anvil_sample_draw_make(&d, &s.sampling, u);
        const int32_t got = anvil_sampler_pick(sm, x, &d);
        assert_int_equal(got < 0, poisoned_kind(it % ROW_KINDS)); /* greedy rows too */
        if (got < 0) {
            assert_false(drew);
            assert_int_equal(want, -1);
            no_draw++;
        } else {
            assert_int_equal(got, want);
        }
        if (drew)
            assert_memory_equal(&copy, &rng, sizeof rng); /* exactly one uniform */
    }
    assert_true(no_draw > 100);
    free(x);
    anvil_sampler_free(sm);
}

static void test_cpu_op_rows(void **st)
{
    (void)st;
    anvil_backend *be = NULL;
    assert_int_equal(anvil_backend_cpu_create(3, &be), ANVIL_OK);
    const int32_t V = 1000, R = 37;
    float *x = malloc((size_t)R * (size_t)V * sizeof *x);
    anvil_sample_draw *p = malloc((size_t)R * sizeof *p);
    int32_t ids[37];
    anvil_sampler *sm = NULL;
    assert_true(x && p);
    assert_int_equal(anvil_sampler_create(V, &sm), ANVIL_OK);
    uint64_t r = 9;
    for (int rep = 0; rep < 20; rep++) {
        for (int32_t i = 0; i < R; i++) {
            fill_row(x + (size_t)i * V, V, (i + rep) % ROW_KINDS, &r);
            anvil_rng rng;
            anvil_rng_seed(&rng, anvil_test_rand(&r));
            anvil_sample_row s = random_row(&r, &rng);
            anvil_sample_draw_make(&p[i], &s.sampling, anvil_rng_uniform(&rng));
        }
        anvil_tensor t = anvil_tensor_2d(ANVIL_DTYPE_F32, R, V, x);
        assert_int_equal(be->ops->sample_rows(be, &t, p, NULL, ids), ANVIL_OK);
        for (int32_t i = 0; i < R; i++) {
            assert_int_equal(ids[i], anvil_sampler_pick(sm, x + (size_t)i * V, &p[i]));
            assert_int_equal(ids[i] < 0, poisoned_kind((i + rep) % ROW_KINDS));
        }
    }
    p[3].u = 1.0;
    anvil_tensor t = anvil_tensor_2d(ANVIL_DTYPE_F32, R, V, x);
    assert_status_msg(be->ops->sample_rows(be, &t, p, NULL, ids), ANVIL_ERR_INVALID_ARG, "row 3");
    anvil_sampler_free(sm);
    free(x);
    free(p);
    anvil_backend_free(be);
}

static void test_bad_rows_move_nothing(void **st)
{
    (void)st;
    anvil_runtime *rt = load("stories260K", 0);
    int32_t blocks[8];
    assert_int_equal(anvil_runtime_kv_alloc(rt, 8, blocks), ANVIL_OK);
    int32_t ids[2] = {1, 403}, pos[2] = {0, 1}, starts[2] = {0, 2}, row = 1, next = -7;
    anvil_batch b = {.n_tokens = 2, .token_ids = ids, .positions = pos, .n_seqs = 1, .seq_starts = starts,
                     .block_tables = blocks, .max_blocks_per_seq = 8, .n_logits = 1, .logit_rows = &row};
    anvil_rng rng, before;
    anvil_rng_seed(&rng, 3);
    before = rng;
    anvil_sample_row s = {.rng = &rng};
    anvil_sampling_params_default(&s.sampling);
    s.sampling.temperature = -1.0f;
    assert_status_msg(anvil_runtime_forward_sample(rt, &b, &s, &next), ANVIL_ERR_INVALID_ARG,
                      "forward_sample: row 0: temperature");
    s.sampling.temperature = 1.0f;
    s.sampling.top_p = 0.0f;
    assert_status_msg(anvil_runtime_forward_sample(rt, &b, &s, &next), ANVIL_ERR_INVALID_ARG, "top_p");
    s.sampling.top_p = 1.0f;
    s.sampling.min_p = 2.0f;
    assert_status_msg(anvil_runtime_forward_sample(rt, &b, &s, &next), ANVIL_ERR_INVALID_ARG, "min_p");
    s.sampling.min_p = 0.0f;
    s.sampling.top_k = -2;
    assert_status_msg(anvil_runtime_forward_sample(rt, &b, &s, &next), ANVIL_ERR_INVALID_ARG, "top_k");
    s.sampling.top_k = 0;
    s.rng = NULL;
    assert_status_msg(anvil_runtime_forward_sample(rt, &b, &s, &next), ANVIL_ERR_INVALID_ARG, "generator");
    /* a bad batch (token id out of range): refused, the generator unmoved */
    s.rng = &rng;
    ids[1] = 1 << 20;
    assert_status_msg(anvil_runtime_forward_sample(rt, &b, &s, &next), ANVIL_ERR_INVALID_ARG, "token id");
    assert_memory_equal(&rng, &before, sizeof rng);
    /* greedy needs no generator and draws nothing */
    ids[1] = 403;
    s.sampling.temperature = 0.0f;
    s.rng = NULL;
    assert_int_equal(anvil_runtime_forward_sample(rt, &b, &s, &next), ANVIL_OK);
    int32_t g = -1;
    assert_int_equal(anvil_runtime_forward_greedy(rt, &b, &g), ANVIL_OK);
    assert_int_equal(next, g);
    /* no logit rows: nothing sampled, nothing drawn */
    b.n_logits = 0;
    s.sampling.temperature = 1.0f;
    s.rng = &rng;
    assert_int_equal(anvil_runtime_forward_sample(rt, &b, &s, &next), ANVIL_OK);
    assert_memory_equal(&rng, &before, sizeof rng);
    anvil_runtime_free(rt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pick_equals_sampler),
        cmocka_unit_test(test_cpu_op_rows),
        cmocka_unit_test(test_bad_rows_move_nothing),
        cmocka_unit_test(test_stories),
        cmocka_unit_test(test_tinycode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
