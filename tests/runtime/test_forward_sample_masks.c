/*
 * Allowed-token masks (anvil_sample_row.allowed) in the runtime's sampled
 * steps, on the CPU backend's sample op and on the host path
 * (options.host_sampling):
 *
 *  - forward_sample with random masks (none, sparse, dense, one token, no
 *    token) and random sampling parameters, greedy and seeded, on golden
 *    models: every id equals anvil_sampler_sample on the step's logits
 *    with the mask applied (anvil_sampler_mask), is allowed by its mask,
 *    and every generator ends where that call leaves it; a mask that
 *    allows nothing gives ANVIL_TOKEN_NONE_ALLOWED and draws nothing.
 *  - launch with masks pending, then wait for the step before it, then
 *    forward_sample_masks with masks that depend on that step's ids (as a
 *    grammar's do), then wait: the same ids and generators as synchronous
 *    forward_sample steps with the same masks; waiting for the pending
 *    step, launching another, or giving masks twice is refused.
 *  - the CPU op: a NaN or +inf at a disallowed token does not poison the
 *    row (the host writes -inf over it first), a row allowing nothing is
 *    -1, rows without a mask are untouched.
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

#define NS 4
#define MAXT 48
#define MAXW 1024 /* mask words: vocabularies up to 32768 */

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

static anvil_sample_row random_row(uint64_t *r, anvil_rng *rng)
{
    static const float temps[] = {0.0f, 0.3f, 0.7f, 1.0f, 1.0f, 1.5f};
    static const int32_t ks[] = {0, 0, 1, 5, 40};
    static const float ps[] = {0.3f, 0.9f, 1.0f, 1.0f};
    static const float mps[] = {0.0f, 0.0f, 0.1f};
    anvil_sample_row s = {.rng = rng};
    anvil_sampling_params_default(&s.sampling);
    s.sampling.temperature = temps[anvil_test_rand(r) % 6];
    s.sampling.top_k = ks[anvil_test_rand(r) % 5];
    s.sampling.top_p = ps[anvil_test_rand(r) % 4];
    s.sampling.min_p = mps[anvil_test_rand(r) % 3];
    return s;
}

enum { MASK_NONE, MASK_SPARSE, MASK_DENSE, MASK_ONE, MASK_EMPTY, MASK_KINDS };

/* A mask of `kind` over V tokens into w; bits past V are set (they must
 * be ignored). Returns w, or NULL for MASK_NONE. */
static const uint32_t *make_mask(int kind, int32_t V, uint64_t *r, uint32_t *w)
{
    const int32_t W = (V + 31) / 32;
    if (kind == MASK_NONE)
        return NULL;
    for (int32_t k = 0; k < W; k++) {
        uint32_t m = 0;
        for (int b = 0; b < 32; b++) {
            const uint64_t x = anvil_test_rand(r) % 100;
            const int on = kind == MASK_SPARSE ? x < 3 : kind == MASK_DENSE ? x < 60 : 0;
            m |= (uint32_t)on << b;
        }
        w[k] = m;
    }
    if (kind == MASK_ONE) {
        const int32_t t = (int32_t)(anvil_test_rand(r) % (uint64_t)V);
        w[t / 32] |= 1u << (t % 32);
    }
    if (kind == MASK_SPARSE) { /* at least one */
        const int32_t t = (int32_t)(anvil_test_rand(r) % (uint64_t)V);
        w[t / 32] |= 1u << (t % 32);
    }
    if (V % 32)
        w[W - 1] |= ~((1u << (V % 32)) - 1u); /* past the vocabulary: ignored */
    return w;
}

static int allowed_by(const uint32_t *m, int32_t t) { return m == NULL || ((m[t / 32] >> (t % 32)) & 1u); }

/* ---------------------------------------------------------------- forward_sample */

static void masked_steps(const char *model, int host_sampling, int steps, uint64_t seed)
{
    anvil_runtime *rt = load(model, host_sampling);
    const int32_t V = (int32_t)anvil_runtime_config(rt)->vocab_size;
    assert_true((V + 31) / 32 <= MAXW);
    anvil_sampler *sm = NULL;
    assert_int_equal(anvil_sampler_create(V, &sm), ANVIL_OK);
    float *logits = malloc((size_t)NS * (size_t)V * sizeof *logits);
    assert_non_null(logits);
    static uint32_t words[NS][MAXW];
    uint64_t r = seed;
    int32_t toks[NS][MAXT + 16], len[NS], tables[NS * 8], done[NS] = {0};
    for (int s = 0; s < NS; s++) {
        len[s] = 3 + s * 3;
        toks[s][0] = 1;
        for (int i = 1; i < len[s]; i++)
            toks[s][i] = (int32_t)(anvil_test_rand(&r) % (uint64_t)V);
    }
    assert_int_equal(anvil_runtime_kv_alloc(rt, NS * 8, tables), ANVIL_OK);
    int kinds_seen[MASK_KINDS] = {0}, sampled = 0;
    for (int step = 0; step <= steps; step++) {
        int32_t ids[MAXT * NS], pos[MAXT * NS], starts[NS + 1], rows[NS];
        int32_t T = 0;
        for (int s = 0; s < NS; s++) {
            starts[s] = T;
            for (int32_t p = done[s]; p < len[s]; p++, T++) {
                ids[T] = toks[s][p];
                pos[T] = p;
            }
            rows[s] = T - 1;
        }
        starts[NS] = T;
        anvil_batch b = {.n_tokens = T, .token_ids = ids, .positions = pos, .n_seqs = NS, .seq_starts = starts,
                         .block_tables = tables, .max_blocks_per_seq = 8, .n_logits = NS, .logit_rows = rows};
        assert_int_equal(anvil_runtime_forward(rt, &b, logits), ANVIL_OK);
        anvil_rng want_rng[NS], got_rng[NS];
        anvil_sample_row sr[NS];
        int32_t want[NS], got[NS];
        for (int s = 0; s < NS; s++) {
            anvil_rng_seed(&want_rng[s], anvil_test_rand(&r));
            got_rng[s] = want_rng[s];
            sr[s] = random_row(&r, &got_rng[s]);
            const int kind = (int)((anvil_test_rand(&r) + (uint64_t)s) % MASK_KINDS);
            kinds_seen[kind]++;
            sr[s].allowed = make_mask(kind, V, &r, words[s]);
            /* the host path of the executor: the mask on a copy, then the sampler */
            float *row = logits + (size_t)s * (size_t)V;
            if (sr[s].allowed != NULL && !anvil_sampler_mask(row, V, sr[s].allowed))
                want[s] = ANVIL_TOKEN_NONE_ALLOWED;
            else
                want[s] = anvil_sampler_sample(sm, row, &sr[s].sampling, &want_rng[s]);
            sampled += want[s] >= 0 && !anvil_sampling_is_greedy(&sr[s].sampling);
        }
        if (anvil_runtime_forward_sample(rt, &b, sr, got) != ANVIL_OK)
            fail_msg("%s: %s", model, anvil_last_error());
        for (int s = 0; s < NS; s++) {
            if (got[s] != want[s])
                fail_msg("%s host_sampling %d step %d row %d (t %g k %d p %g): id %d, host %d", model,
                         host_sampling, step, s, (double)sr[s].sampling.temperature, sr[s].sampling.top_k,
                         (double)sr[s].sampling.top_p, got[s], want[s]);
            assert_memory_equal(&got_rng[s], &want_rng[s], sizeof got_rng[s]);
            if (got[s] >= 0)
                assert_true(allowed_by(sr[s].allowed, got[s]));
            /* a row that got nothing continues with a token of its own */
            done[s] = len[s];
            toks[s][len[s]++] = got[s] >= 0 ? got[s] : 3;
        }
    }
    for (int k = 0; k < MASK_KINDS; k++)
        assert_true(kinds_seen[k] > 0);
    assert_true(sampled > 0);
    anvil_sampler_free(sm);
    free(logits);
    anvil_runtime_free(rt);
}

static void test_forward_sample_masks(void **st)
{
    (void)st;
    masked_steps("stories260K", 0, 12, 11);
    masked_steps("stories260K", 1, 12, 11);
    masked_steps("tinycode", 0, 4, 12);
}

/* ---------------------------------------------------------------- launch, masks pending */

/* A grammar-like mask: which tokens may follow `prev` at `step`. Never empty. */
static void follow_mask(int32_t V, int32_t prev, int step, int s, uint32_t *w)
{
    uint64_t r = 1000003u * (uint64_t)(prev + 7) + 7919u * (uint64_t)step + (uint64_t)s;
    const int32_t W = (V + 31) / 32;
    for (int32_t k = 0; k < W; k++)
        w[k] = (uint32_t)anvil_test_rand(&r) & (uint32_t)anvil_test_rand(&r); /* a quarter of the tokens */
    w[(prev + 1) % V / 32] |= 1u << ((prev + 1) % V % 32);
}

static void launch_pending(int host_sampling)
{
    anvil_runtime *rt = load("stories260K", host_sampling), *ref = load("stories260K", host_sampling);
    const int32_t V = (int32_t)anvil_runtime_config(rt)->vocab_size;
    enum { S = 3, STEPS = 10 };
    static uint32_t words[2][S][MAXW];
    int32_t blocks[2][S * 8];
    anvil_rng rng[2][S];
    anvil_sample_row rows[2][S];
    memset(rows, 0, sizeof rows);
    for (int k = 0; k < 2; k++) {
        assert_int_equal(anvil_runtime_kv_alloc(k ? rt : ref, S * 8, blocks[k]), ANVIL_OK);
        for (int s = 0; s < S; s++) {
            anvil_rng_seed(&rng[k][s], 21 + (uint64_t)s);
            anvil_sampling_params_default(&rows[k][s].sampling);
            rows[k][s].sampling.temperature = s == 0 ? 0.0f : 0.9f; /* greedy and seeded */
            rows[k][s].sampling.top_k = s == 2 ? 20 : 0;
            rows[k][s].rng = &rng[k][s];
        }
    }
    const int32_t prompt_len[S] = {4, 7, 11};
    int32_t tok[64], pos[64], starts[S + 1], lrows[S], len[S];
    int32_t T = 0;
    for (int s = 0; s < S; s++) {
        starts[s] = T;
        for (int32_t p = 0; p < prompt_len[s]; p++, T++) {
            tok[T] = p == 0 ? 1 : 3 + (p * 29 + s * 13) % 400;
            pos[T] = p;
        }
        lrows[s] = T - 1;
        len[s] = prompt_len[s];
    }
    starts[S] = T;
    anvil_batch b[2];
    for (int k = 0; k < 2; k++)
        b[k] = (anvil_batch){.n_tokens = T, .token_ids = tok, .positions = pos, .n_seqs = S, .seq_starts = starts,
                             .block_tables = blocks[k], .max_blocks_per_seq = 8, .n_logits = S, .logit_rows = lrows};
    int32_t want[STEPS + 1][S], got[STEPS + 1][S];
    const uint32_t *allowed[S];
    /* the prompts: the mask of row s follows the prompt's last token */
    for (int s = 0; s < S; s++) {
        follow_mask(V, tok[lrows[s]], 0, s, words[0][s]);
        rows[0][s].allowed = words[0][s];
        rows[1][s].mask_pending = 1;
    }
    assert_int_equal(anvil_runtime_forward_sample(ref, &b[0], rows[0], want[0]), ANVIL_OK);
    /* mask_pending outside a launch is refused */
    assert_int_equal(anvil_runtime_forward_sample(rt, &b[1], rows[1], got[0]), ANVIL_ERR_INVALID_ARG);
    assert_int_equal(anvil_runtime_forward_sample_masks(rt, allowed), ANVIL_ERR_INVALID_ARG); /* nothing pending */
    assert_int_equal(anvil_runtime_forward_sample_launch(rt, &b[1], rows[1]), ANVIL_OK);
    assert_int_equal(anvil_runtime_forward_sample_wait(rt, got[0]), ANVIL_ERR_INVALID_ARG); /* its masks first */
    assert_int_equal(anvil_runtime_forward_sample_launch(rt, &b[1], rows[1]), ANVIL_ERR_INVALID_ARG);
    for (int s = 0; s < S; s++) {
        follow_mask(V, tok[lrows[s]], 0, s, words[1][s]);
        allowed[s] = words[1][s]; /* every row is pending */
    }
    assert_int_equal(anvil_runtime_forward_sample_masks(rt, allowed), ANVIL_OK);
    assert_int_equal(anvil_runtime_forward_sample_masks(rt, allowed), ANVIL_ERR_INVALID_ARG); /* given already */

    /* decode: the reference feeds the ids it got, with masks that follow
     * them; the launched path feeds placeholders, waits one step behind,
     * and gives each step's masks once the step before it is waited for */
    for (int step = 1; step <= STEPS; step++) {
        int32_t dt[2][S], dp[S], ds[S + 1], dr[S];
        for (int s = 0; s < S; s++) {
            dt[0][s] = want[step - 1][s];
            dt[1][s] = ANVIL_TOKEN_FROM_ROW(s);
            dp[s] = len[s]++;
            ds[s] = s;
            dr[s] = s;
            follow_mask(V, want[step - 1][s], step, s, words[0][s]);
            rows[1][s].mask_pending = s != 1 || step % 2; /* row 1: pending on odd steps, given at launch on even */
            rows[1][s].allowed = NULL;
        }
        ds[S] = S;
        for (int k = 0; k < 2; k++)
            b[k] = (anvil_batch){.n_tokens = S, .token_ids = dt[k], .positions = dp, .n_seqs = S, .seq_starts = ds,
                                 .block_tables = blocks[k], .max_blocks_per_seq = 8, .n_logits = S,
                                 .logit_rows = dr};
        assert_int_equal(anvil_runtime_forward_sample(ref, &b[0], rows[0], want[step]), ANVIL_OK);
        if (!rows[1][1].mask_pending) {
            /* a mask known at launch: it follows the step before's id, which only the
             * reference knows here (the launched path learns it at the next wait) */
            follow_mask(V, want[step - 1][1], step, 1, words[1][1]);
            rows[1][1].allowed = words[1][1];
        }
        assert_int_equal(anvil_runtime_forward_sample_launch(rt, &b[1], rows[1]), ANVIL_OK);
        assert_int_equal(anvil_runtime_forward_sample_wait(rt, got[step - 1]), ANVIL_OK);
        for (int s = 0; s < S; s++) {
            follow_mask(V, got[step - 1][s], step, s, words[1][s]);
            allowed[s] = rows[1][s].mask_pending ? words[1][s] : NULL;
        }
        assert_int_equal(anvil_runtime_forward_sample_masks(rt, allowed), ANVIL_OK);
    }
    assert_int_equal(anvil_runtime_forward_sample_wait(rt, got[STEPS]), ANVIL_OK);
    for (int step = 0; step <= STEPS; step++)
        for (int s = 0; s < S; s++)
            if (got[step][s] != want[step][s])
                fail_msg("host_sampling %d: step %d, sequence %d: %d, expected %d", host_sampling, step, s,
                         got[step][s], want[step][s]);
    for (int s = 0; s < S; s++)
        assert_memory_equal(&rng[0][s], &rng[1][s], sizeof rng[0][s]);

    /* a pending mask that allows nothing: ANVIL_TOKEN_NONE_ALLOWED at wait,
     * and a placeholder naming that row is fed token 0 */
    int32_t t1[1] = {5}, p1[1] = {len[0]}, s1[2] = {0, 1}, r1[1] = {0}, id = 0;
    anvil_batch one = {.n_tokens = 1, .token_ids = t1, .positions = p1, .n_seqs = 1, .seq_starts = s1,
                       .block_tables = blocks[1], .max_blocks_per_seq = 8, .n_logits = 1, .logit_rows = r1};
    rows[1][0].mask_pending = 1;
    assert_int_equal(anvil_runtime_forward_sample_launch(rt, &one, rows[1]), ANVIL_OK);
    memset(words[1][0], 0, sizeof words[1][0]);
    allowed[0] = words[1][0];
    assert_int_equal(anvil_runtime_forward_sample_masks(rt, allowed), ANVIL_OK);
    rows[1][0].mask_pending = 0;
    t1[0] = ANVIL_TOKEN_FROM_ROW(0);
    p1[0]++;
    assert_int_equal(anvil_runtime_forward_sample_launch(rt, &one, rows[1]), ANVIL_OK);
    assert_int_equal(anvil_runtime_forward_sample_wait(rt, &id), ANVIL_OK);
    assert_int_equal(id, ANVIL_TOKEN_NONE_ALLOWED);
    assert_int_equal(anvil_runtime_forward_sample_wait(rt, &id), ANVIL_OK);
    assert_true(id >= 0); /* sampled after token 0 */
    anvil_runtime_free(rt);
    anvil_runtime_free(ref);
}

static void test_launch_masks_pending(void **st)
{
    (void)st;
    launch_pending(0);
    launch_pending(1);
}

/* ---------------------------------------------------------------- the CPU op */

static void test_cpu_op_masks(void **st)
{
    (void)st;
    anvil_backend *be = NULL;
    assert_int_equal(anvil_backend_cpu_create(2, &be), ANVIL_OK);
    enum { R = 4, V = 70, W = (V + 31) / 32 };
    float x[R * V];
    uint64_t r = 5;
    for (int i = 0; i < R * V; i++)
        x[i] = (float)(anvil_test_rand(&r) % 1000) / 100.0f;
    x[0 * V + 3] = NAN;       /* row 0: poison at a disallowed token */
    x[0 * V + 69] = INFINITY; /* and +inf past the last word's first bits */
    x[2 * V + 10] = NAN;      /* row 2: no mask: poisoned */
    anvil_sample_draw d[R];
    anvil_sampling_params p;
    anvil_sampling_params_default(&p);
    p.temperature = 0.0f;
    for (int i = 0; i < R; i++)
        anvil_sample_draw_make(&d[i], &p, 0.0);
    /* row 0 allows tokens 5 and 40; row 1 allows nothing; row 3 allows 64..69 */
    uint32_t words[3 * W] = {0};
    words[0] = 1u << 5;
    words[1] = 1u << 8;
    words[2 * W + 2] = 0x3fu;
    int32_t mrows[3] = {0, 1, 3}, ids[R];
    const anvil_sample_masks m = {.n = 3, .n_words = W, .rows = mrows, .words = words};
    float keep[V];
    memcpy(keep, x + 2 * V, sizeof keep);
    anvil_tensor t = anvil_tensor_2d(ANVIL_DTYPE_F32, R, V, x);
    assert_int_equal(be->ops->sample_rows(be, &t, d, &m, ids), ANVIL_OK);
    assert_true(ids[0] == 5 || ids[0] == 40);
    assert_int_equal(ids[0], x[0 * V + 5] >= x[0 * V + 40] ? 5 : 40);
    assert_int_equal(ids[1], -1);
    assert_int_equal(ids[2], -1);
    assert_true(ids[3] >= 64 && ids[3] < 70);
    assert_memory_equal(keep, x + 2 * V, sizeof keep); /* an unmasked row is untouched */
    /* masks that name a row out of range, or are too short, are refused */
    mrows[2] = R;
    assert_int_equal(be->ops->sample_rows(be, &t, d, &m, ids), ANVIL_ERR_INVALID_ARG);
    mrows[2] = 3;
    const anvil_sample_masks short_m = {.n = 1, .n_words = W - 1, .rows = mrows, .words = words};
    assert_int_equal(be->ops->sample_rows(be, &t, d, &short_m, ids), ANVIL_ERR_INVALID_ARG);
    anvil_backend_free(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forward_sample_masks),
        cmocka_unit_test(test_launch_masks_pending),
        cmocka_unit_test(test_cpu_op_masks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
