/*
 * Pipeline steps as micro-batches (docs/parallel.md "Micro-batches"), run
 * by ctest as `mpirun -np 2` (2 stages) and `-np 4` (2 stages of 2 TP
 * ranks, then 4 stages), oversubscribed on CI's 2 cores:
 *
 *   - every golden model test_pp runs: the same steps (the model's prompts
 *     packed in one prefill step with two logit rows a sequence, then
 *     decode steps of every sequence fed HF's greedy tokens) with the step
 *     whole (pp_micro_batches 1), as many micro-batches as stages (the
 *     default) and 3: the logits are the same bits on the first and the
 *     last stage (batch invariance: docs/executor.md), HF's within
 *     1e-4 x max|logit|, their greedy picks HF's tokens; the runtime says
 *     it split the steps; the same in the led mode (rank 0 alone calls the
 *     steps, the others follow); logit rows out of the groups' order run the
 *     step whole, with the same bits;
 *   - rank 0 serving every prompt at once through the executor (in-flight
 *     batching, led) while the others follow: HF's greedy tokens;
 *   - on 2 ranks, a printout of a step's time with and without
 *     micro-batches (not an assertion).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "anvil/comm.h"
#include "anvil/executor.h"
#include "anvil/log.h"
#include "anvil/runtime.h"
#include "anvil/sampling.h"
#include "golden.h"
#include "runtime/runtime_internal.h" /* mb_steps: the steps were split */
#include "testutil.h"

#if ANVIL_TEST_SANITIZED && defined(__has_include)
#if __has_include(<sanitizer/lsan_interface.h>)
#include <sanitizer/lsan_interface.h>
#define PP_LSAN 1
#endif
#endif

#define REL_TOL      1e-4
#define DECODE_STEPS (ANVIL_TEST_SANITIZED ? 3 : 6)
#define MAX_TOKENS   512
#define MAX_SEQS     8

static anvil_comm *comm;
static int32_t n_stages;

static anvil_status load_model(const char *model, int lead, int32_t micro, anvil_runtime **rt)
{
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.n_threads = 1; /* ranks share CI's two cores */
    o.max_num_tokens = MAX_TOKENS;
    o.max_logit_rows = 2 * MAX_SEQS;
    o.max_batch_size = MAX_SEQS;
    o.kv_block_size = 16;
    o.kv_cache_tokens = 4096;
    o.kv_cache_dtype = "f32"; /* HF computes in f32: so does this comparison */
    o.comm = comm;
    o.comm_lead = lead;
    o.pipeline_stages = n_stages;
    o.pp_micro_batches = micro;
    return anvil_runtime_load(anvil_test_model_dir(model), &o, rt);
}

/* The prompts of one packed step: the first cases whose tokens fit. */
typedef struct batch_plan {
    int32_t cases[MAX_SEQS], n_seqs, n_tokens, steps;
} batch_plan;

static void plan_batch(const golden *g, batch_plan *p)
{
    memset(p, 0, sizeof *p);
    p->steps = DECODE_STEPS;
    for (int i = 0; i < g->n_cases && p->n_seqs < MAX_SEQS; i++) {
        const golden_case *gc = &g->cases[i];
        if (p->n_tokens + gc->n_ids > MAX_TOKENS - 16 || gc->n_greedy < 2)
            continue;
        p->cases[p->n_seqs++] = i;
        p->n_tokens += gc->n_ids;
        if (gc->n_greedy - 1 < p->steps)
            p->steps = gc->n_greedy - 1;
    }
}

/* Rows of logits the steps return: two a sequence at the prefill, one a
 * sequence at each decode step. */
static size_t logit_rows_of(const batch_plan *p)
{
    return (size_t)p->n_seqs * (size_t)(2 + p->steps);
}

/*
 * The steps (called by every rank in lockstep, by rank 0 when it leads):
 * the prefill of every planned prompt in one step, logits at each
 * sequence's first and last row (reversed: the last row first, out of the
 * groups' order), then decode steps fed HF's greedy tokens. The logits go
 * to out, row after row.
 */
static void drive(anvil_runtime *rt, const char *model, const golden *g, const batch_plan *p, int reversed,
                  float *out)
{
    const int64_t vocab = anvil_runtime_config(rt)->vocab_size;
    const int32_t bs = anvil_runtime_kv_block_size(rt), S = p->n_seqs;
    /* block tables as wide as the model's context allows (at most 32) */
    const int32_t ctx_blocks = (anvil_runtime_options_get(rt)->max_seq_len + bs - 1) / bs;
    const int32_t mb = ctx_blocks < 32 ? ctx_blocks : 32;
    int32_t tables[MAX_SEQS * 32], ids[MAX_TOKENS], pos[MAX_TOKENS], starts[MAX_SEQS + 1], rows[2 * MAX_SEQS];
    int32_t nb[MAX_SEQS];
    int32_t t = 0;
    for (int32_t q = 0; q < S; q++) {
        const golden_case *gc = &g->cases[p->cases[q]];
        nb[q] = (gc->n_ids + p->steps + bs - 1) / bs;
        assert_true(nb[q] <= mb);
        assert_int_equal(anvil_runtime_kv_alloc(rt, nb[q], tables + q * mb), ANVIL_OK);
        starts[q] = t;
        for (int32_t j = 0; j < gc->n_ids; j++, t++) {
            ids[t] = gc->ids[j];
            pos[t] = j;
        }
        rows[2 * q] = starts[q];
        rows[2 * q + 1] = t - 1;
        if (reversed) {
            rows[2 * q] = t - 1;
            rows[2 * q + 1] = starts[q];
        }
    }
    starts[S] = t;
    if (reversed) /* the sequences' rows from the last sequence back */
        for (int32_t q = 0; q < S / 2; q++)
            for (int k = 0; k < 2; k++) {
                int32_t x = rows[2 * q + k];
                rows[2 * q + k] = rows[2 * (S - 1 - q) + k];
                rows[2 * (S - 1 - q) + k] = x;
            }
    anvil_batch b = {.n_tokens = t,
                     .token_ids = ids,
                     .positions = pos,
                     .n_seqs = S,
                     .seq_starts = starts,
                     .block_tables = tables,
                     .max_blocks_per_seq = mb,
                     .n_logits = 2 * S,
                     .logit_rows = rows};
    if (anvil_runtime_forward(rt, &b, out) != ANVIL_OK)
        fail_msg("%s prefill of %d sequences: %s", model, S, anvil_last_error());
    float *o = out + (size_t)(2 * S) * (size_t)vocab;
    for (int32_t step = 0; step < p->steps; step++, o += (size_t)S * (size_t)vocab) {
        for (int32_t q = 0; q < S; q++) {
            const golden_case *gc = &g->cases[p->cases[q]];
            ids[q] = gc->greedy[step];
            pos[q] = gc->n_ids + step;
            rows[q] = starts[q] = q;
        }
        starts[S] = S;
        anvil_batch d = {.n_tokens = S,
                         .token_ids = ids,
                         .positions = pos,
                         .n_seqs = S,
                         .seq_starts = starts,
                         .block_tables = tables,
                         .max_blocks_per_seq = mb,
                         .n_logits = S,
                         .logit_rows = rows};
        if (anvil_runtime_forward(rt, &d, o) != ANVIL_OK)
            fail_msg("%s decode step %d: %s", model, step, anvil_last_error());
    }
    for (int32_t q = 0; q < S; q++)
        anvil_runtime_kv_release(rt, nb[q], tables + q * mb);
}

/* The logits of drive against HF's: the prefill's last rows, every decode
 * row's greedy pick HF's next token. */
static void check_hf(const char *model, const golden *g, const batch_plan *p, int reversed, const float *lg,
                     int64_t vocab)
{
    const int32_t S = p->n_seqs;
    for (int32_t q = 0; q < S; q++) {
        const golden_case *gc = &g->cases[p->cases[q]];
        const int32_t r = reversed ? 2 * (S - 1 - q) : 2 * q + 1;
        golden_check_logits(model, "micro-batched prefill", gc, gc->n_ids - 1, 1,
                            lg + (size_t)r * (size_t)vocab, vocab, REL_TOL);
        for (int32_t step = 0; step < p->steps; step++) {
            const float *row = lg + ((size_t)(2 * S) + (size_t)step * (size_t)S + (size_t)q) * (size_t)vocab;
            const int32_t id = anvil_greedy_pick(row, (int32_t)vocab);
            if (id != gc->greedy[step + 1])
                fail_msg("%s %s: greedy token %d is %d, HF has %d (%d stages)", model, gc->name, step + 1, id,
                         gc->greedy[step + 1], n_stages);
        }
    }
}

/* One run of the steps: lockstep (every rank) or led by rank 0. Returns
 * whether this rank's logits are the model's (the first or last stage;
 * rank 0 alone when led). */
static int run_once(const char *model, const golden *g, const batch_plan *p, int lead, int32_t micro,
                    int reversed, float *out)
{
    anvil_runtime *rt = NULL;
    if (load_model(model, lead, micro, &rt) != ANVIL_OK)
        fail_msg("load %s (%d micro-batches) on rank %d: %s", model, micro, anvil_comm_rank(comm),
                 anvil_last_error());
    const int32_t rank = anvil_comm_rank(comm), tp = anvil_comm_size(comm) / n_stages, stage = rank / tp;
    if (lead && rank != 0) {
        if (anvil_runtime_follow(rt) != ANVIL_OK)
            fail_msg("%s: rank %d follow: %s", model, rank, anvil_last_error());
    } else {
        drive(rt, model, g, p, reversed, out);
    }
    /* split where it may be: at least two sequences, and at the prefill
     * logit rows in the groups' order (reversed: the decode steps alone) */
    const int64_t want = micro == 1 || p->n_seqs < 2 ? 0 : reversed ? p->steps : 1 + p->steps;
    if (rt->mb_steps != want)
        fail_msg("%s: %lld steps split on rank %d (%d micro-batches, %d sequences), expected %lld", model,
                 (long long)rt->mb_steps, rank, micro, p->n_seqs, (long long)want);
    anvil_runtime_free(rt); /* (led: the followers return) */
    return lead ? rank == 0 : stage == 0 || stage == n_stages - 1;
}

static void run_model(const char *model)
{
    golden g;
    golden_load(model, &g);
    batch_plan p;
    plan_batch(&g, &p);
    const size_t n = logit_rows_of(&p);
    assert_true(p.n_seqs > 0);
    /* the vocabulary from the config, on every rank alike */
    anvil_model_config cfg;
    if (anvil_model_config_load(anvil_test_model_dir(model), &cfg) != ANVIL_OK)
        fail_msg("%s config: %s", model, anvil_last_error());
    const size_t bytes = n * (size_t)cfg.vocab_size * sizeof(float);
    float *ref = malloc(bytes), *got = malloc(bytes);
    assert_true(ref && got);
    const int has = run_once(model, &g, &p, 0, 1, 0, ref);
    if (has)
        check_hf(model, &g, &p, 0, ref, (int64_t)(bytes / n / sizeof(float)));
    const int32_t micro[] = {0, 3};
    for (int k = 0; k < 2; k++) {
        memset(got, 0xff, bytes);
        run_once(model, &g, &p, 0, micro[k], 0, got);
        if (has && memcmp(ref, got, bytes) != 0)
            fail_msg("%s: logits with %d micro-batches (0: as many as stages) differ from the whole step's "
                     "(rank %d, %d stages)",
                     model, micro[k], anvil_comm_rank(comm), n_stages);
    }
    /* led by rank 0 */
    memset(got, 0xff, bytes);
    if (run_once(model, &g, &p, 1, 0, 0, got) && memcmp(ref, got, bytes) != 0)
        fail_msg("%s: led micro-batched logits differ from the whole step's", model);
    /* rows out of the groups' order: the step runs whole, HF's logits */
    memset(got, 0xff, bytes);
    if (run_once(model, &g, &p, 1, 0, 1, got))
        check_hf(model, &g, &p, 1, got, (int64_t)(bytes / n / sizeof(float)));
    free(ref);
    free(got);
    golden_free(&g);
}

/* Rank 0 serves every prompt at once through the executor while the others
 * follow: the steps hold several sequences, split; the tokens are HF's. */
static void run_executor(const char *model)
{
    anvil_runtime *rt = NULL;
    if (load_model(model, 1, 0, &rt) != ANVIL_OK)
        fail_msg("load %s led: %s", model, anvil_last_error());
    if (anvil_comm_rank(comm) != 0) {
        if (anvil_runtime_follow(rt) != ANVIL_OK)
            fail_msg("%s: rank %d follow: %s", model, anvil_comm_rank(comm), anvil_last_error());
        anvil_runtime_free(rt);
        return;
    }
    golden g;
    golden_load(model, &g);
    anvil_executor *ex = NULL;
    assert_int_equal(anvil_executor_create(rt, NULL, NULL, &ex), ANVIL_OK);
    uint64_t id[GOLDEN_MAX_CASES];
    int32_t want[GOLDEN_MAX_CASES];
    for (int i = 0; i < g.n_cases; i++) {
        anvil_request r;
        anvil_request_init(&r);
        r.prompt_ids = g.cases[i].ids;
        r.n_prompt_ids = g.cases[i].n_ids;
        want[i] = g.cases[i].n_greedy < 8 ? g.cases[i].n_greedy : 8;
        r.max_tokens = want[i];
        r.ignore_eos = 1;
        r.sampling.temperature = 0.0f;
        r.retain_result = 1;
        if (anvil_executor_enqueue(ex, &r, &id[i]) != ANVIL_OK)
            fail_msg("%s enqueue: %s", model, anvil_last_error());
    }
    for (int i = 0; i < g.n_cases; i++) {
        anvil_result *res = NULL;
        if (anvil_executor_wait(ex, id[i], &res) != ANVIL_OK)
            fail_msg("%s wait: %s", model, anvil_last_error());
        assert_int_equal(res->sequences[0].n_tokens, want[i]);
        for (int32_t j = 0; j < want[i]; j++)
            if (res->sequences[0].token_ids[j] != g.cases[i].greedy[j])
                fail_msg("%s %s through the executor: token %d is %d, HF has %d", model, g.cases[i].name, j,
                         res->sequences[0].token_ids[j], g.cases[i].greedy[j]);
        anvil_result_free(res);
    }
    anvil_executor_free(ex);
    if (g.n_cases > 1 && rt->mb_steps == 0)
        fail_msg("%s: the executor's steps of %d requests were never split", model, g.n_cases);
    anvil_runtime_free(rt);
    golden_free(&g);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A prefill step of 8 sequences of 32 tokens, lockstep, timed on rank 0
 * with the step whole and as micro-batches (a printout, not a check). */
static void time_step(const char *model, int32_t micro, double *best)
{
    anvil_runtime *rt = NULL;
    if (load_model(model, 0, micro, &rt) != ANVIL_OK)
        fail_msg("load %s: %s", model, anvil_last_error());
    const int32_t S = MAX_SEQS, n = 32, bs = anvil_runtime_kv_block_size(rt), nb = (n + bs - 1) / bs;
    const int64_t vocab = anvil_runtime_config(rt)->vocab_size;
    int32_t tables[MAX_SEQS * 4], ids[MAX_SEQS * 32], pos[MAX_SEQS * 32], starts[MAX_SEQS + 1],
        rows[MAX_SEQS];
    for (int32_t q = 0; q < S; q++) {
        assert_int_equal(anvil_runtime_kv_alloc(rt, nb, tables + q * 4), ANVIL_OK);
        starts[q] = q * n;
        rows[q] = q * n + n - 1;
        for (int32_t j = 0; j < n; j++) {
            ids[q * n + j] = (int32_t)((q * 131 + j * 7 + 1) % vocab);
            pos[q * n + j] = j;
        }
    }
    starts[S] = S * n;
    float *lg = malloc((size_t)S * (size_t)vocab * sizeof *lg);
    assert_non_null(lg);
    anvil_batch b = {.n_tokens = S * n,
                     .token_ids = ids,
                     .positions = pos,
                     .n_seqs = S,
                     .seq_starts = starts,
                     .block_tables = tables,
                     .max_blocks_per_seq = 4,
                     .n_logits = S,
                     .logit_rows = rows};
    *best = 1e30;
    for (int rep = 0; rep < 2; rep++) {
        assert_int_equal(anvil_comm_barrier(comm), ANVIL_OK);
        const double t0 = now_s();
        if (anvil_runtime_forward(rt, &b, lg) != ANVIL_OK)
            fail_msg("%s timed step: %s", model, anvil_last_error());
        assert_int_equal(anvil_comm_barrier(comm), ANVIL_OK);
        const double dt = now_s() - t0;
        *best = dt < *best ? dt : *best;
    }
    for (int32_t q = 0; q < S; q++)
        anvil_runtime_kv_release(rt, nb, tables + q * 4);
    free(lg);
    anvil_runtime_free(rt);
}

static void test_timing(void **s)
{
    (void)s;
    if (anvil_comm_size(comm) != 2 || ANVIL_TEST_SANITIZED) /* (a time under a sanitizer says little) */
        skip();
    n_stages = 2;
    const char *model = "tinycode";
    double whole, split2, split4;
    time_step(model, 1, &whole);
    time_step(model, 2, &split2);
    time_step(model, 4, &split4);
    if (anvil_comm_rank(comm) == 0)
        printf("test_pp_micro timing (%s, 2 stages, 8 sequences x 32 tokens, best of 2, ranks sharing the "
               "machine's cores): whole step %.2f ms, 2 micro-batches %.2f ms, 4 micro-batches %.2f ms\n",
               model, 1e3 * whole, 1e3 * split2, 1e3 * split4);
}

static const struct {
    const char *name;
    int32_t n_layers, n_heads;
} models[] = {
    {"stories260K", 5, 8},
    {"tinycode", 6, 6},
    {"tiny-llama3", 3, 8},
    {"tiny-qwen2", 3, 8},
    {"tiny-mistral", 3, 8},
    {"tiny-qwen3", 3, 8},
    {"tiny-phi3", 3, 8},
    {"tiny-gemma2", 3, 8},
    {"tiny-mixtral", 3, 8},
    {"tiny-qwen2-moe", 3, 4},
    {"tiny-qwen3-moe", 3, 4},
    {"tiny-gpt2", 3, 4},
    {"tiny-deepseek-v2-lite", 3, 4},
    {"tiny-deepseek-v2", 3, 4},
};

static void run_layout(int32_t stages)
{
    n_stages = stages;
    const int32_t tp = anvil_comm_size(comm) / stages;
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++)
        if (models[i].n_layers >= stages && models[i].n_heads % tp == 0) /* test_pp checks the refusals */
            run_model(models[i].name);
    run_executor(stages <= 3 ? "tiny-qwen2" : "tinycode");
    run_executor("stories260K");
    assert_int_equal(anvil_comm_barrier(comm), ANVIL_OK);
}

static void test_two_stages(void **s)
{
    (void)s;
    run_layout(2);
}

static void test_four_stages(void **s)
{
    (void)s;
    if (anvil_comm_size(comm) % 4 != 0)
        skip();
    run_layout(4);
}

/* A negative count is refused at load. */
static void test_refusal(void **s)
{
    (void)s;
    n_stages = 2;
    anvil_runtime *rt = NULL;
    assert_status_msg(load_model("stories260K", 0, -1, &rt), ANVIL_ERR_INVALID_ARG, "pp_micro_batches is -1");
    assert_null(rt);
}

int main(void)
{
    setenv("CMOCKA_TEST_ABORT", "1", 1);
    anvil_log_set_level(ANVIL_LOG_WARN);
    if (anvil_comm_create_mpi(&comm) != ANVIL_OK) {
        fprintf(stderr, "test_pp_micro: %s\n", anvil_last_error());
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refusal),
        cmocka_unit_test(test_two_stages),
        cmocka_unit_test(test_four_stages),
        cmocka_unit_test(test_timing),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
#ifdef PP_LSAN /* before MPI_Finalize (test_tp.c says why) */
    if (__lsan_do_recoverable_leak_check() != 0) {
        fprintf(stderr, "test_pp_micro: rank %d leaked memory (above)\n", anvil_comm_rank(comm));
        rc = 1;
    }
#endif
    anvil_comm_free(comm);
    return rc;
}
