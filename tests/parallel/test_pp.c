/*
 * Pipeline parallelism on the CPU over MPI (docs/parallel.md), run by ctest
 * as `mpirun -np 2` (2 stages) and `-np 4` (2 stages of 2 TP ranks, then 4
 * stages), oversubscribed on CI's 2 cores (tests/CMakeLists.txt):
 *
 *   - anvil_comm_split: the parts' ranks, sizes and order; sums, send/recv
 *     and barriers inside a part; a part whose call times out breaking the
 *     communicator it was split from;
 *   - every golden model cut into stages (and each stage over its TP
 *     ranks), led by rank 0 as anvil run and serve are: each prompt's
 *     prefill logits on rank 0 within 1e-4 x max|logit| of Hugging Face's
 *     (f32), then decode steps of every prompt together in one batch whose
 *     greedy tokens are HF's (the models of ../shared and of
 *     tests/data/models: GPT-2, Qwen2-MoE, Qwen3-MoE, DeepSeek-V2's mla);
 *     a model with fewer layers than stages, or one the TP cut refuses
 *     (heads), fails its load with a
 *     message on every rank;
 *   - the lockstep mode (every rank calls the steps): the first and the
 *     last stage hold the same logits, a stage between leaves its logits
 *     buffer as it was and refuses to sample;
 *   - rank 0 generating through the executor (anvil_generate) while the
 *     others follow.
 *
 * Every rank runs the same calls in the same order. A failed check aborts
 * its rank (CMOCKA_TEST_ABORT=1), and mpirun then ends the others.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "anvil/comm.h"
#include "anvil/generate.h"
#include "anvil/log.h"
#include "anvil/runtime.h"
#include "golden.h"
#include "testutil.h"

#if ANVIL_TEST_SANITIZED && defined(__has_include)
#if __has_include(<sanitizer/lsan_interface.h>)
#include <sanitizer/lsan_interface.h>
#define PP_LSAN 1
#endif
#endif

#define REL_TOL 1e-4
/* decode steps after the prefills (or the fewest greedy tokens a case of
 * the model has); fewer under the sanitizers */
#define DECODE_STEPS (ANVIL_TEST_SANITIZED ? 4 : 16)

static anvil_comm *comm;
static int32_t n_stages; /* the layout under test: n_stages x (size / n_stages) */

/* ------------------------------------------------------------ the split */

static void test_split(void **state)
{
    (void)state;
    const int32_t size = anvil_comm_size(comm), rank = anvil_comm_rank(comm);
    /* two parts, even and odd ranks, each ranked backwards by key */
    anvil_comm *part = NULL;
    assert_int_equal(anvil_comm_split(comm, rank % 2, -rank, &part), ANVIL_OK);
    const int32_t n = (size - rank % 2 + 1) / 2; /* ranks of my parity */
    assert_int_equal(anvil_comm_size(part), n);
    assert_int_equal(anvil_comm_rank(part), n - 1 - rank / 2);
    assert_string_equal(anvil_comm_name(part), "mpi");
    /* a sum over the part: the world ranks of my parity */
    float x = (float)rank, want = 0.0f;
    for (int32_t r = rank % 2; r < size; r += 2)
        want += (float)r;
    assert_int_equal(anvil_comm_all_reduce_sum(part, &x, 1, ANVIL_DTYPE_F32), ANVIL_OK);
    assert_true(x == want);
    /* point to point inside the part, by its ranks */
    if (n > 1) {
        const int32_t me = anvil_comm_rank(part), peer = 1 - me;
        int32_t out = rank, in = -1;
        if (me == 0) {
            assert_int_equal(anvil_comm_send(part, &out, sizeof out, peer, 3), ANVIL_OK);
            assert_int_equal(anvil_comm_recv(part, &in, sizeof in, peer, 3), ANVIL_OK);
        } else {
            assert_int_equal(anvil_comm_recv(part, &in, sizeof in, peer, 3), ANVIL_OK);
            assert_int_equal(anvil_comm_send(part, &out, sizeof out, peer, 3), ANVIL_OK);
        }
        assert_int_equal(in % 2, rank % 2);
        assert_int_not_equal(in, rank);
    }
    assert_int_equal(anvil_comm_barrier(part), ANVIL_OK);
    anvil_comm_free(part);
    /* one part of everything: the same ranks */
    anvil_comm *all = NULL;
    assert_int_equal(anvil_comm_split(comm, 0, rank, &all), ANVIL_OK);
    assert_int_equal(anvil_comm_size(all), size);
    assert_int_equal(anvil_comm_rank(all), rank);
    assert_status_msg(anvil_comm_split(comm, -1, 0, &part), ANVIL_ERR_INVALID_ARG, "color -1");
    assert_null(part);
    anvil_comm_free(all);
    assert_int_equal(anvil_comm_barrier(comm), ANVIL_OK);
}

/* A part's call the other member joins late times out on one rank, and
 * breaks the communicator it was split from there (a second job
 * communicator, so the first stays usable). */
static void test_split_timeout(void **state)
{
    (void)state;
    anvil_comm *c = NULL, *part = NULL;
    assert_int_equal(anvil_comm_create_mpi(&c), ANVIL_OK);
    const int32_t rank = anvil_comm_rank(c);
    assert_int_equal(anvil_comm_split(c, rank / 2, rank, &part), ANVIL_OK);
    if (rank == 0) {
        assert_int_equal(anvil_comm_set_timeout(part, 0.3), ANVIL_OK);
        assert_status_msg(anvil_comm_barrier(part), ANVIL_ERR_COMM, "no answer within 0.3 s");
        assert_non_null(anvil_comm_error(c)); /* the job's communicator says so */
        assert_status_msg(anvil_comm_barrier(c), ANVIL_ERR_COMM, "failed earlier");
    } else {
        if (rank == 1) {
            struct timespec nap = {1, 0};
            nanosleep(&nap, NULL);
        }
        assert_int_equal(anvil_comm_barrier(part), ANVIL_OK);
        assert_null(anvil_comm_error(c));
    }
    anvil_comm_free(part);
    anvil_comm_free(c);
    assert_int_equal(anvil_comm_barrier(comm), ANVIL_OK);
}

/* ------------------------------------------------------------ models */

static anvil_status load_model(const char *model, int lead, anvil_runtime **rt)
{
    const char *dir = anvil_test_model_dir(model); /* ../shared, or tests/data/models */
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.n_threads = 1; /* ranks share CI's two cores */
    o.max_num_tokens = 512; /* stories260K has a prompt of 440 tokens */
    o.max_logit_rows = 512;
    o.max_batch_size = 8;
    o.kv_block_size = 16;
    o.kv_cache_tokens = 2048;
    o.kv_cache_dtype = "f32"; /* HF computes in f32: so does this comparison */
    o.comm = comm;
    o.comm_lead = lead;
    o.pipeline_stages = n_stages;
    return anvil_runtime_load(dir, &o, rt);
}

static int32_t steps_of(const golden *g)
{
    int32_t steps = DECODE_STEPS;
    for (int i = 0; i < g->n_cases; i++)
        if (g->cases[i].n_greedy < steps)
            steps = g->cases[i].n_greedy;
    return steps;
}

/* Block tables as wide as the model's context allows (at most 32). */
static int32_t table_width(const anvil_runtime *rt)
{
    const int32_t bs = anvil_runtime_kv_block_size(rt);
    const int32_t w = (anvil_runtime_options_get(rt)->max_seq_len + bs - 1) / bs;
    return w < 32 ? w : 32;
}

/* Rank 0 leads: each prompt's prefill with logits at every row against
 * HF's (every other prompt after a first chunk without logits), then
 * every prompt's greedy decode in one packed step; the followers run what
 * it sends until it frees its runtime. */
static void run_model_led(const char *model)
{
    anvil_runtime *rt = NULL;
    if (load_model(model, 1, &rt) != ANVIL_OK)
        fail_msg("load %s on rank %d of %d (%d stages): %s", model, anvil_comm_rank(comm), anvil_comm_size(comm),
                 n_stages, anvil_last_error());
    if (anvil_comm_rank(comm) != 0) {
        if (anvil_runtime_follow(rt) != ANVIL_OK)
            fail_msg("%s: rank %d follow: %s", model, anvil_comm_rank(comm), anvil_last_error());
        anvil_runtime_free(rt);
        return;
    }
    golden g;
    golden_load(model, &g);
    const int64_t vocab = anvil_runtime_config(rt)->vocab_size;
    const int32_t bs = anvil_runtime_kv_block_size(rt), mb = table_width(rt), steps = steps_of(&g);
    int32_t tables[GOLDEN_MAX_CASES * 32], len[GOLDEN_MAX_CASES], next[GOLDEN_MAX_CASES];
    for (int i = 0; i < g.n_cases; i++) {
        const golden_case *gc = &g.cases[i];
        const int32_t n = gc->n_ids, nb = (n + steps + bs - 1) / bs;
        assert_true(nb <= mb);
        assert_int_equal(anvil_runtime_kv_alloc(rt, nb, tables + i * mb), ANVIL_OK);
        int32_t *pos = malloc((size_t)n * 4), *rows = malloc((size_t)n * 4);
        float *logits = malloc((size_t)n * (size_t)vocab * 4);
        assert_true(pos && rows && logits);
        for (int32_t t = 0; t < n; t++)
            pos[t] = rows[t] = t;
        /* every other prompt in two chunks, the first without logits (a
         * step whose logits ops every stage skips; the KV cache of each
         * stage carries on) */
        const int32_t h = i % 2 == 1 ? n / 2 : 0;
        if (h > 0) {
            int32_t starts[2] = {0, h};
            anvil_batch b = {.n_tokens = h, .token_ids = gc->ids, .positions = pos, .n_seqs = 1,
                             .seq_starts = starts, .block_tables = tables + i * mb, .max_blocks_per_seq = mb};
            if (anvil_runtime_forward(rt, &b, NULL) != ANVIL_OK)
                fail_msg("%s %s first chunk: %s", model, gc->name, anvil_last_error());
        }
        int32_t starts[2] = {0, n - h};
        anvil_batch b = {.n_tokens = n - h, .token_ids = gc->ids + h, .positions = pos + h, .n_seqs = 1,
                         .seq_starts = starts, .block_tables = tables + i * mb, .max_blocks_per_seq = mb,
                         .n_logits = n - h, .logit_rows = rows};
        if (anvil_runtime_forward(rt, &b, logits) != ANVIL_OK)
            fail_msg("%s %s: %s", model, gc->name, anvil_last_error());
        golden_check_logits(model, "prefill", gc, h, n - h, logits, vocab, REL_TOL);
        next[i] = anvil_greedy_pick(logits + (size_t)(n - h - 1) * (size_t)vocab, (int32_t)vocab);
        len[i] = n;
        free(pos);
        free(rows);
        free(logits);
    }
    for (int32_t step = 0; step < steps; step++) {
        int32_t ids[GOLDEN_MAX_CASES], pos[GOLDEN_MAX_CASES], rows[GOLDEN_MAX_CASES], starts[GOLDEN_MAX_CASES + 1];
        for (int i = 0; i < g.n_cases; i++) {
            if (next[i] != g.cases[i].greedy[step])
                fail_msg("%s %s: greedy token %d is %d, HF has %d (%d stages of %d ranks)", model, g.cases[i].name,
                         step, next[i], g.cases[i].greedy[step], n_stages, anvil_comm_size(comm) / n_stages);
            ids[i] = next[i];
            pos[i] = len[i]++;
            rows[i] = starts[i] = i;
        }
        starts[g.n_cases] = g.n_cases;
        if (step + 1 == steps)
            break; /* every golden token checked */
        anvil_batch b = {.n_tokens = g.n_cases, .token_ids = ids, .positions = pos, .n_seqs = g.n_cases,
                         .seq_starts = starts, .block_tables = tables, .max_blocks_per_seq = mb,
                         .n_logits = g.n_cases, .logit_rows = rows};
        if (anvil_runtime_forward_greedy(rt, &b, next) != ANVIL_OK)
            fail_msg("%s decode step %d: %s", model, step, anvil_last_error());
    }
    for (int i = 0; i < g.n_cases; i++)
        anvil_runtime_kv_release(rt, (g.cases[i].n_ids + steps + bs - 1) / bs, tables + i * mb);
    anvil_runtime_free(rt); /* the followers return */
    golden_free(&g);
}

/* A model the layout cannot run: every rank's load fails with `msg`. */
static void refuse(const char *model, const char *msg)
{
    anvil_runtime *rt = NULL;
    assert_status_msg(load_model(model, 0, &rt), ANVIL_ERR_UNSUPPORTED, msg);
    assert_null(rt);
}

/* The models whose layers the stages divide (at least one each) and whose
 * heads the TP ranks of a stage divide run; the others are refused. */
static void run_or_refuse(const char *model, int32_t n_layers, int32_t n_heads)
{
    const int32_t tp = anvil_comm_size(comm) / n_stages;
    if (n_layers < n_stages)
        refuse(model, "layers cannot be split over");
    else if (n_heads % tp != 0)
        refuse(model, "attention heads cannot be split");
    else
        run_model_led(model);
}

/* Every rank calls the steps: the first and the last stage hold the same
 * logits (HF's), a stage between leaves its buffer as it was and has
 * nothing to sample. */
static void run_lockstep(const char *model)
{
    anvil_runtime *rt = NULL;
    if (load_model(model, 0, &rt) != ANVIL_OK)
        fail_msg("load %s lockstep: %s", model, anvil_last_error());
    golden g;
    golden_load(model, &g);
    const int32_t rank = anvil_comm_rank(comm), size = anvil_comm_size(comm), tp = size / n_stages;
    const int32_t stage = rank / tp;
    const int64_t vocab = anvil_runtime_config(rt)->vocab_size;
    const golden_case *gc = &g.cases[0];
    const int32_t n = gc->n_ids, mb = table_width(rt), bs = anvil_runtime_kv_block_size(rt);
    int32_t table[32];
    assert_true((n + bs - 1) / bs <= mb);
    assert_int_equal(anvil_runtime_kv_alloc(rt, (n + bs - 1) / bs, table), ANVIL_OK);
    int32_t *pos = malloc((size_t)n * 4), *rows = malloc((size_t)n * 4);
    float *logits = malloc((size_t)n * (size_t)vocab * 4), *last = malloc((size_t)n * (size_t)vocab * 4);
    assert_true(pos && rows && logits && last);
    for (int32_t t = 0; t < n; t++)
        pos[t] = rows[t] = t;
    for (int64_t i = 0; i < (int64_t)n * vocab; i++)
        logits[i] = NAN;
    int32_t starts[2] = {0, n};
    anvil_batch b = {.n_tokens = n, .token_ids = gc->ids, .positions = pos, .n_seqs = 1, .seq_starts = starts,
                     .block_tables = table, .max_blocks_per_seq = mb, .n_logits = n, .logit_rows = rows};
    if (anvil_runtime_forward(rt, &b, logits) != ANVIL_OK)
        fail_msg("%s lockstep on rank %d: %s", model, rank, anvil_last_error());
    const size_t bytes = (size_t)n * (size_t)vocab * 4;
    if (stage == 0 || stage == n_stages - 1) {
        golden_check_logits(model, "lockstep prefill", gc, 0, n, logits, vocab, REL_TOL);
    } else {
        for (int64_t i = 0; i < (int64_t)n * vocab; i++)
            if (!isnan(logits[i]))
                fail_msg("%s: stage %d of %d wrote logits", model, stage, n_stages);
        anvil_rng rng;
        anvil_rng_seed(&rng, 1);
        anvil_sample_row row = {.rng = &rng};
        anvil_sampling_params_default(&row.sampling);
        int32_t one = n - 1, id = -1;
        anvil_batch b1 = b;
        b1.n_logits = 1;
        b1.logit_rows = &one;
        assert_status_msg(anvil_runtime_forward_sample(rt, &b1, &row, &id), ANVIL_ERR_INVALID_ARG,
                          "has no logits to sample");
    }
    /* the first stage's logits are the last stage's bits (rank 0 and the
     * last rank compare) */
    if (rank == size - 1)
        assert_int_equal(anvil_comm_send(comm, logits, bytes, 0, 11), ANVIL_OK);
    if (rank == 0) {
        assert_int_equal(anvil_comm_recv(comm, last, bytes, size - 1, 11), ANVIL_OK);
        assert_memory_equal(logits, last, bytes);
    }
    anvil_runtime_kv_release(rt, (n + bs - 1) / bs, table);
    free(pos);
    free(rows);
    free(logits);
    free(last);
    golden_free(&g);
    anvil_runtime_free(rt);
}

/* Rank 0 generates through the executor (overlapped steps whose ids it
 * samples) while the others follow: the greedy tokens are HF's. */
static void run_generate(const char *model)
{
    anvil_runtime *rt = NULL;
    if (load_model(model, 1, &rt) != ANVIL_OK)
        fail_msg("load %s led: %s", model, anvil_last_error());
    if (anvil_comm_rank(comm) != 0) {
        if (anvil_runtime_follow(rt) != ANVIL_OK)
            fail_msg("%s: rank %d follow: %s", model, anvil_comm_rank(comm), anvil_last_error());
        anvil_runtime_free(rt);
        return;
    }
    golden g;
    golden_load(model, &g);
    for (int i = 0; i < g.n_cases; i++) {
        const golden_case *gc = &g.cases[i];
        anvil_generate_params p = {.max_tokens = gc->n_greedy < DECODE_STEPS ? gc->n_greedy : DECODE_STEPS};
        p.sampling.temperature = 0.0f;
        p.sampling.top_p = 1.0f;
        int32_t *out = malloc((size_t)(p.max_tokens + 1) * 4), n_out = 0;
        assert_non_null(out);
        if (anvil_generate(rt, gc->ids, gc->n_ids, &p, NULL, NULL, out, &n_out, NULL) != ANVIL_OK)
            fail_msg("%s %s generate: %s", model, gc->name, anvil_last_error());
        assert_int_equal(n_out, p.max_tokens);
        for (int32_t j = 0; j < n_out; j++)
            if (out[j] != gc->greedy[j])
                fail_msg("%s %s generate: greedy token %d is %d, HF has %d", model, gc->name, j, out[j],
                         gc->greedy[j]);
        free(out);
    }
    anvil_runtime_free(rt);
    golden_free(&g);
}

/* The golden models: layers, attention heads. The mixtures of experts cut
 * each expert's intermediate over a stage's TP ranks. */
static const struct {
    const char *name;
    int32_t n_layers, n_heads;
} models[] = {
    {"stories260K", 5, 8},    {"tinycode", 6, 6},       {"tiny-llama3", 3, 8}, {"tiny-qwen2", 3, 8},
    {"tiny-mistral", 3, 8},   {"tiny-qwen3", 3, 8},     {"tiny-phi3", 3, 8},   {"tiny-gemma2", 3, 8},
    {"tiny-mixtral", 3, 8},   {"tiny-qwen2-moe", 3, 4}, {"tiny-qwen3-moe", 3, 4}, {"tiny-gpt2", 3, 4},
    {"tiny-deepseek-v2-lite", 3, 4}, {"tiny-deepseek-v2", 3, 4},
};

/* One layout: every golden model, lockstep and the executor. */
static void run_layout(int32_t stages)
{
    n_stages = stages;
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++)
        run_or_refuse(models[i].name, models[i].n_layers, models[i].n_heads);
    run_lockstep("stories260K");
    run_generate(stages <= 3 ? "tiny-qwen2" : "tinycode");
    assert_int_equal(anvil_comm_barrier(comm), ANVIL_OK);
}

/* -np 2: two stages; -np 4: two stages of two TP ranks */
static void test_two_stages(void **s)
{
    (void)s;
    run_layout(2);
}

/* -np 4: four stages of one rank */
static void test_four_stages(void **s)
{
    (void)s;
    if (anvil_comm_size(comm) % 4 != 0)
        skip();
    run_layout(4);
}

/* A layout the ranks do not divide, and stages without a communicator. */
static void test_refusals(void **s)
{
    (void)s;
    const int32_t size = anvil_comm_size(comm);
    n_stages = size + 1;
    anvil_runtime *rt = NULL;
    assert_status_msg(load_model("stories260K", 0, &rt), ANVIL_ERR_INVALID_ARG, "pipeline stages need");
    anvil_comm *saved = comm;
    comm = NULL;
    n_stages = 2;
    assert_status_msg(load_model("stories260K", 0, &rt), ANVIL_ERR_INVALID_ARG, "pipeline stages need");
    comm = saved;
    assert_null(rt);
}

int main(void)
{
    setenv("CMOCKA_TEST_ABORT", "1", 1);
    anvil_log_set_level(ANVIL_LOG_WARN);
    if (anvil_comm_create_mpi(&comm) != ANVIL_OK) {
        fprintf(stderr, "test_pp: %s\n", anvil_last_error());
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split),       cmocka_unit_test(test_split_timeout),
        cmocka_unit_test(test_refusals),    cmocka_unit_test(test_two_stages),
        cmocka_unit_test(test_four_stages),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
#ifdef PP_LSAN
    if (__lsan_do_recoverable_leak_check() != 0) {
        fprintf(stderr, "test_pp: rank %d leaked memory (above)\n", anvil_comm_rank(comm));
        rc = 1;
    }
#endif
    anvil_comm_free(comm);
    return rc;
}
