/*
 * Tensor parallelism on the CPU over MPI (docs/parallel.md), run by ctest as
 * `mpirun -np 2` and `-np 4` (tests/CMakeLists.txt):
 *
 *   - the MPI communicator: sums of f32, bf16 and f16 identical on every
 *     rank and equal to the rank-order f32 sum rounded once; broadcast,
 *     all_gather, send/recv, barrier; bad arguments refused without
 *     breaking it; a collective the others join late timing out on rank 0;
 *   - every golden model whose heads the ranks divide, cut over the ranks:
 *     each prompt's prefill logits within 1e-4 x max|logit| of Hugging
 *     Face's (f32), then decode steps of every prompt together in one batch,
 *     whose greedy tokens are HF's; every rank's logits bit for bit the
 *     same; a model the ranks cannot cut fails its load with a message.
 *     The models of ../shared and of tests/data/models: GPT-2 (transposed
 *     Conv1D weights), the mixtures of experts (each expert's intermediate
 *     cut), the embeddings cut by vocabulary (tied heads sharing the slice),
 *     DeepSeek-V2's multi-head latent attention (heads split).
 *
 * Every rank runs the same calls in the same order. A failed check aborts
 * its rank (CMOCKA_TEST_ABORT=1, set below), and mpirun then ends the
 * others, rather than letting the ranks fall out of step.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "anvil/builder.h"
#include "anvil/comm.h"
#include "anvil/generate.h"
#include "anvil/log.h"
#include "anvil/runtime.h"
#include "golden.h"
#include "testutil.h"

#if ANVIL_TEST_SANITIZED && defined(__has_include)
#if __has_include(<sanitizer/lsan_interface.h>)
#include <sanitizer/lsan_interface.h>
#define TP_LSAN 1
#endif
#endif

#define REL_TOL 1e-4
/* decode steps after the prefills, or the fewest greedy tokens a case of
 * the model has; fewer under the sanitizers (the same paths, a third of
 * the time) */
#define DECODE_STEPS (ANVIL_TEST_SANITIZED ? 4 : 64)

static anvil_comm *comm;
/* where load_model finds the model instead of its folder (a folder of
 * per-rank engines), or NULL */
static const char *model_path;

/* ------------------------------------------------------------ the communicator */

/* The value rank r contributes at i: a spread of magnitudes and signs, so
 * that the order of the additions shows in the rounding. */
static float addend(int32_t r, int64_t i)
{
    uint32_t h = (uint32_t)(r * 2654435761u) ^ (uint32_t)(i * 40503u + 17u);
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    h ^= h >> 15;
    float mag = (float)(h % 100000u) / 1000.0f;
    float scale = (h >> 20) % 3 == 0 ? 1e3f : (h >> 20) % 3 == 1 ? 1.0f : 1e-3f;
    return (h & 1u ? -mag : mag) * scale;
}

static void check_sum(anvil_dtype dt, int64_t n)
{
    const int32_t size = anvil_comm_size(comm), rank = anvil_comm_rank(comm);
    const size_t es = anvil_dtype_size(dt);
    unsigned char *buf = malloc((size_t)n * es + 1), *want = malloc((size_t)n * es + 1);
    unsigned char *all = malloc((size_t)n * es * (size_t)size + 1);
    float *mine = malloc((size_t)n * sizeof *mine + 4), *acc = malloc((size_t)n * sizeof *acc + 4);
    assert_true(buf && want && all && mine && acc);
    for (int64_t i = 0; i < n; i++)
        mine[i] = addend(rank, i);
    anvil_convert_from_f32(dt, mine, buf, n);
    /* the reference: every rank's addends as their dtype holds them, added
     * in rank order in f32, rounded once */
    for (int32_t r = 0; r < size; r++)
        for (int64_t i = 0; i < n; i++) {
            float v = addend(r, i), q = v;
            if (dt != ANVIL_DTYPE_F32) {
                uint16_t h;
                anvil_convert_from_f32(dt, &v, &h, 1);
                anvil_convert_to_f32(dt, &h, &q, 1);
            }
            acc[i] = r == 0 ? q : acc[i] + q;
        }
    anvil_convert_from_f32(dt, acc, want, n);
    if (anvil_comm_all_reduce_sum(comm, buf, n, dt) != ANVIL_OK)
        fail_msg("all_reduce %s x %lld: %s", anvil_dtype_name(dt), (long long)n, anvil_last_error());
    if (memcmp(buf, want, (size_t)n * es) != 0)
        fail_msg("rank %d: all_reduce %s x %lld is not the rank-order sum", rank, anvil_dtype_name(dt),
                 (long long)n);
    /* the same bits on every rank */
    assert_int_equal(anvil_comm_all_gather(comm, buf, all, (size_t)n * es), ANVIL_OK);
    for (int32_t r = 0; r < size; r++)
        if (memcmp(all + (size_t)r * (size_t)n * es, buf, (size_t)n * es) != 0)
            fail_msg("all_reduce %s x %lld: rank %d and rank %d differ", anvil_dtype_name(dt), (long long)n, r,
                     rank);
    free(buf);
    free(want);
    free(all);
    free(mine);
    free(acc);
}

static void test_all_reduce(void **state)
{
    (void)state;
    const anvil_dtype dts[3] = {ANVIL_DTYPE_F32, ANVIL_DTYPE_BF16, ANVIL_DTYPE_F16};
    /* fewer elements than ranks, sizes the ranks do not divide, one past a
     * round size (the comm sums in pieces of 4M elements: not crossed here,
     * to stay fast) */
    const int64_t ns[5] = {1, 3, 64, 1001, 65537};
    for (int d = 0; d < 3; d++)
        for (int k = 0; k < 5; k++)
            check_sum(dts[d], ns[k]);
    /* zero elements: nothing to do, on every rank */
    assert_int_equal(anvil_comm_all_reduce_sum(comm, NULL, 0, ANVIL_DTYPE_F32), ANVIL_OK);
}

static void test_broadcast_gather_p2p(void **state)
{
    (void)state;
    const int32_t size = anvil_comm_size(comm), rank = anvil_comm_rank(comm);
    unsigned char buf[1000];
    for (int32_t root = 0; root < size; root++) {
        for (int i = 0; i < 1000; i++)
            buf[i] = rank == root ? (unsigned char)(i * 7 + root) : 0xAA;
        assert_int_equal(anvil_comm_broadcast(comm, buf, sizeof buf, root), ANVIL_OK);
        for (int i = 0; i < 1000; i++)
            if (buf[i] != (unsigned char)(i * 7 + root))
                fail_msg("rank %d: broadcast from %d: byte %d is %d", rank, root, i, buf[i]);
    }
    int32_t mine[3] = {rank, rank * 10, -rank}, all[4 * 3];
    assert_true(size <= 4);
    assert_int_equal(anvil_comm_all_gather(comm, mine, all, sizeof mine), ANVIL_OK);
    for (int32_t r = 0; r < size; r++) {
        assert_int_equal(all[3 * r], r);
        assert_int_equal(all[3 * r + 1], r * 10);
        assert_int_equal(all[3 * r + 2], -r);
    }
    /* a ring: each rank sends its number on and receives its left neighbour's */
    const int32_t next = (rank + 1) % size, prev = (rank + size - 1) % size;
    int64_t out = 1000 + rank, in = -1;
    if (rank % 2 == 0) {
        assert_int_equal(anvil_comm_send(comm, &out, sizeof out, next, 7), ANVIL_OK);
        assert_int_equal(anvil_comm_recv(comm, &in, sizeof in, prev, 7), ANVIL_OK);
    } else {
        assert_int_equal(anvil_comm_recv(comm, &in, sizeof in, prev, 7), ANVIL_OK);
        assert_int_equal(anvil_comm_send(comm, &out, sizeof out, next, 7), ANVIL_OK);
    }
    assert_int_equal(in, 1000 + prev);
    assert_int_equal(anvil_comm_barrier(comm), ANVIL_OK);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    const int32_t size = anvil_comm_size(comm), rank = anvil_comm_rank(comm);
    int32_t x = 1;
    assert_status_msg(anvil_comm_broadcast(comm, &x, 4, size), ANVIL_ERR_INVALID_ARG, "root");
    assert_status_msg(anvil_comm_send(comm, &x, 4, rank, 0), ANVIL_ERR_INVALID_ARG, "peer");
    assert_status_msg(anvil_comm_recv(comm, &x, 4, size, 0), ANVIL_ERR_INVALID_ARG, "peer");
    assert_status_msg(anvil_comm_send(comm, &x, 4, (rank + 1) % size, 40000), ANVIL_ERR_INVALID_ARG, "tag");
    assert_status_msg(anvil_comm_all_reduce_sum(comm, &x, 1, ANVIL_DTYPE_I32), ANVIL_ERR_UNSUPPORTED, "i32");
    /* refusals break nothing: the next collective still runs */
    check_sum(ANVIL_DTYPE_F32, 10);
    assert_string_equal(anvil_comm_name(comm), "mpi");
    assert_int_equal(anvil_comm_memory_kind(comm), ANVIL_COMM_HOST);
}

/* A collective the other ranks join late: rank 0's, under a 0.3 s timeout,
 * fails with the message and breaks its communicator (a second one, so
 * the first stays usable); the others' completes when they join. */
static void test_timeout(void **state)
{
    (void)state;
    anvil_comm *c = NULL;
    assert_int_equal(anvil_comm_create_mpi(&c), ANVIL_OK);
    const int32_t rank = anvil_comm_rank(c);
    if (rank == 0) {
        assert_int_equal(anvil_comm_set_timeout(c, 0.3), ANVIL_OK);
        assert_status_msg(anvil_comm_barrier(c), ANVIL_ERR_COMM, "no answer within 0.3 s");
        assert_non_null(strstr(anvil_last_error(), "rank 0 of"));
        assert_non_null(anvil_comm_error(c));
        assert_status_msg(anvil_comm_barrier(c), ANVIL_ERR_COMM, "failed earlier");
    } else {
        struct timespec nap = {1, 0};
        nanosleep(&nap, NULL);
        assert_int_equal(anvil_comm_barrier(c), ANVIL_OK);
        assert_null(anvil_comm_error(c));
    }
    anvil_comm_free(c);
    assert_int_equal(anvil_comm_barrier(comm), ANVIL_OK);
}

/* ------------------------------------------------------------ models */

static anvil_status load_model_led(const char *model, int lead, anvil_runtime **rt)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s", model_path ? model_path : anvil_test_model_dir(model)); /* ../shared's or tests/data/models' */
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
    return anvil_runtime_load(dir, &o, rt);
}

static anvil_status load_model(const char *model, anvil_runtime **rt) { return load_model_led(model, 0, rt); }

/* Fails unless every rank holds the same n floats. */
static void check_same_on_ranks(const char *model, const char *what, const float *x, int64_t n)
{
    const int32_t size = anvil_comm_size(comm);
    float *all = malloc((size_t)n * (size_t)size * sizeof *all);
    assert_non_null(all);
    assert_int_equal(anvil_comm_all_gather(comm, x, all, (size_t)n * sizeof *x), ANVIL_OK);
    for (int32_t r = 0; r < size; r++)
        if (memcmp(all + (size_t)r * (size_t)n, x, (size_t)n * sizeof *x) != 0)
            fail_msg("%s %s: the logits of rank %d and rank %d differ", model, what, r, anvil_comm_rank(comm));
    free(all);
}

static void run_model(const char *model)
{
    golden g;
    golden_load(model, &g);
    anvil_runtime *rt = NULL;
    if (load_model(model, &rt) != ANVIL_OK)
        fail_msg("load %s on rank %d of %d: %s", model, anvil_comm_rank(comm), anvil_comm_size(comm),
                 anvil_last_error());
    const int64_t vocab = anvil_runtime_config(rt)->vocab_size;
    const int32_t bs = anvil_runtime_kv_block_size(rt);
    enum { MAXB = 32 };
    /* block tables as wide as the model's context allows (at most MAXB) */
    const int32_t mb = (anvil_runtime_options_get(rt)->max_seq_len + bs - 1) / bs < MAXB
                           ? (anvil_runtime_options_get(rt)->max_seq_len + bs - 1) / bs
                           : MAXB;
    int32_t tables[GOLDEN_MAX_CASES * MAXB], len[GOLDEN_MAX_CASES], next[GOLDEN_MAX_CASES];
    int32_t steps = DECODE_STEPS;
    for (int i = 0; i < g.n_cases; i++)
        if (g.cases[i].n_greedy < steps)
            steps = g.cases[i].n_greedy;

    /* prefill: each prompt alone, logits at every row */
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
        int32_t starts[2] = {0, n};
        anvil_batch b = {.n_tokens = n, .token_ids = gc->ids, .positions = pos, .n_seqs = 1, .seq_starts = starts,
                         .block_tables = tables + i * mb, .max_blocks_per_seq = mb, .n_logits = n,
                         .logit_rows = rows};
        if (anvil_runtime_forward(rt, &b, logits) != ANVIL_OK)
            fail_msg("%s %s: %s", model, gc->name, anvil_last_error());
        golden_check_logits(model, "prefill", gc, 0, n, logits, vocab, REL_TOL);
        check_same_on_ranks(model, gc->name, logits, (int64_t)n * vocab);
        next[i] = anvil_greedy_pick(logits + (size_t)(n - 1) * (size_t)vocab, (int32_t)vocab);
        len[i] = n;
        free(pos);
        free(rows);
        free(logits);
    }
    /* decode: every prompt's next token in one packed step, greedy */
    for (int32_t step = 0; step < steps; step++) {
        int32_t ids[GOLDEN_MAX_CASES], pos[GOLDEN_MAX_CASES], rows[GOLDEN_MAX_CASES], starts[GOLDEN_MAX_CASES + 1];
        for (int i = 0; i < g.n_cases; i++) {
            if (next[i] != g.cases[i].greedy[step])
                fail_msg("%s %s: greedy token %d is %d, HF has %d", model, g.cases[i].name, step, next[i],
                         g.cases[i].greedy[step]);
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
    anvil_runtime_free(rt);
    golden_free(&g);
}

/* The models whose heads every rank count here divides run; the others
 * must refuse the cut with a message. */
static void run_or_refuse(const char *model, int32_t n_heads)
{
    if (n_heads % anvil_comm_size(comm) == 0) {
        run_model(model);
        return;
    }
    anvil_runtime *rt = NULL;
    assert_status_msg(load_model(model, &rt), ANVIL_ERR_UNSUPPORTED, "attention heads cannot be split");
    assert_null(rt);
}

/* Led by rank 0 (anvil run and serve): rank 0 alone generates through the
 * executor (anvil_generate: overlapped steps whose ids rank 0 samples), the
 * other ranks follow its steps; the greedy tokens are HF's, and freeing
 * rank 0's runtime releases the others. */
static void run_led(const char *model)
{
    golden g;
    golden_load(model, &g);
    anvil_runtime *rt = NULL;
    if (load_model_led(model, 1, &rt) != ANVIL_OK)
        fail_msg("load %s led: %s", model, anvil_last_error());
    if (anvil_comm_rank(comm) != 0) {
        if (anvil_runtime_follow(rt) != ANVIL_OK)
            fail_msg("%s: rank %d follow: %s", model, anvil_comm_rank(comm), anvil_last_error());
        anvil_runtime_free(rt);
        golden_free(&g);
        return;
    }
    assert_status_msg(anvil_runtime_follow(rt), ANVIL_ERR_INVALID_ARG, "ranks 1..");
    for (int i = 0; i < g.n_cases; i++) {
        const golden_case *gc = &g.cases[i];
        anvil_generate_params p = {.max_tokens = gc->n_greedy < DECODE_STEPS ? gc->n_greedy : DECODE_STEPS};
        p.sampling.temperature = 0.0f;
        p.sampling.top_p = 1.0f;
        int32_t *out = malloc((size_t)(p.max_tokens + 1) * 4), n_out = 0;
        assert_non_null(out);
        if (anvil_generate(rt, gc->ids, gc->n_ids, &p, NULL, NULL, out, &n_out, NULL) != ANVIL_OK)
            fail_msg("%s %s led generate: %s", model, gc->name, anvil_last_error());
        assert_int_equal(n_out, p.max_tokens);
        for (int32_t j = 0; j < n_out; j++)
            if (out[j] != gc->greedy[j])
                fail_msg("%s %s led: greedy token %d is %d, HF has %d", model, gc->name, j, out[j], gc->greedy[j]);
        free(out);
    }
    anvil_runtime_free(rt); /* the followers return */
    golden_free(&g);
}

static void test_led_generation(void **s)
{
    (void)s;
    run_led("tiny-qwen2");
    run_led("tiny-phi3");
}

static void test_stories260K(void **s) { (void)s; run_or_refuse("stories260K", 8); }
static void test_tinycode(void **s) { (void)s; run_or_refuse("tinycode", 6); }
static void test_tiny_llama3(void **s) { (void)s; run_or_refuse("tiny-llama3", 8); }
static void test_tiny_qwen2(void **s) { (void)s; run_or_refuse("tiny-qwen2", 8); }
static void test_tiny_mistral(void **s) { (void)s; run_or_refuse("tiny-mistral", 8); }
static void test_tiny_qwen3(void **s) { (void)s; run_or_refuse("tiny-qwen3", 8); }
static void test_tiny_phi3(void **s) { (void)s; run_or_refuse("tiny-phi3", 8); }
static void test_tiny_gemma2(void **s) { (void)s; run_or_refuse("tiny-gemma2", 8); }
static void test_tiny_gpt2(void **s) { (void)s; run_or_refuse("tiny-gpt2", 4); }
static void test_tiny_mixtral(void **s) { (void)s; run_or_refuse("tiny-mixtral", 8); }
static void test_tiny_qwen2_moe(void **s) { (void)s; run_or_refuse("tiny-qwen2-moe", 4); }
static void test_tiny_qwen3_moe(void **s) { (void)s; run_or_refuse("tiny-qwen3-moe", 4); }

/* DeepSeek-V2's multi-head latent attention: heads split, the latent
 * whole on every rank (with q_lora and group-limited routing; and -lite:
 * q_proj, plain top-k) */
static void test_tiny_deepseek_v2(void **s)
{
    (void)s;
    run_or_refuse("tiny-deepseek-v2", 4);
    run_or_refuse("tiny-deepseek-v2-lite", 4);
}

/* Engines per rank (anvil build --tp N): the folder of rank0.engine ...
 * (built by every rank into its own temporary folder, f32), each rank
 * loading its own file from it, gives what the model folder gives: each
 * prompt's prefill logits within 1e-4 x max|logit| of HF's and the same
 * bits on every rank, HF's greedy tokens (run_model). Llama-family with
 * biases, GPT-2 (transposes, a tied head), Qwen2-MoE (the experts' parts),
 * Gemma 2 (a tied head kept whole before its soft cap). A folder built for
 * twice the job's ranks is refused by name on every rank. */
static void test_engines_per_rank(void **s)
{
    (void)s;
    static const char *const names[] = {"tiny-qwen2", "tiny-gpt2", "tiny-qwen2-moe", "tiny-gemma2"};
    const int32_t size = anvil_comm_size(comm);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char out[1024];
        snprintf(out, sizeof out, "%s/%s-tp%d", anvil_test_tmpdir(), names[i], size);
        anvil_build_options o;
        anvil_build_options_default(&o);
        o.weight_dtype = ANVIL_DTYPE_F32;
        o.n_threads = 1;
        o.tp_size = size;
        if (anvil_build_engines_tp(anvil_test_model_dir(names[i]), out, &o) != ANVIL_OK)
            fail_msg("build %s --tp %d: %s", names[i], size, anvil_last_error());
        model_path = out;
        run_model(names[i]);
        model_path = NULL;
    }
    /* built for 2 x size ranks: each rank's file says so */
    char out[1024];
    snprintf(out, sizeof out, "%s/tiny-qwen2-tp%d", anvil_test_tmpdir(), 2 * size);
    anvil_build_options o;
    anvil_build_options_default(&o);
    o.n_threads = 1;
    o.tp_size = 2 * size;
    assert_int_equal(anvil_build_engines_tp(anvil_test_model_dir("tiny-qwen2"), out, &o), ANVIL_OK);
    char want[128];
    snprintf(want, sizeof want, "rank %d of a --tp %d build", anvil_comm_rank(comm), 2 * size);
    model_path = out;
    anvil_runtime *rt = NULL;
    assert_status_msg(load_model("tiny-qwen2", &rt), ANVIL_ERR_UNSUPPORTED, want);
    assert_null(rt);
    model_path = NULL;
    /* the build's own refusals */
    o.random_weights = 1;
    assert_status_msg(anvil_build_engines_tp(anvil_test_model_dir("tiny-qwen2"), out, &o), ANVIL_ERR_UNSUPPORTED,
                      "without --random-weights");
    o.random_weights = 0;
    o.tp_size = 1;
    assert_status_msg(anvil_build_engines_tp(anvil_test_model_dir("tiny-qwen2"), out, &o), ANVIL_ERR_INVALID_ARG,
                      "--tp 2 or more");
    assert_int_equal(anvil_comm_barrier(comm), ANVIL_OK);
}

int main(void)
{
    /* a failed check ends this rank at once (mpirun then ends the others):
     * cmocka would otherwise go on to the next test out of step */
    setenv("CMOCKA_TEST_ABORT", "1", 1);
    anvil_log_set_level(ANVIL_LOG_WARN);
    if (anvil_comm_create_mpi(&comm) != ANVIL_OK) {
        fprintf(stderr, "test_tp: %s\n", anvil_last_error());
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_all_reduce),   cmocka_unit_test(test_broadcast_gather_p2p),
        cmocka_unit_test(test_bad_arguments), cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_stories260K),
        cmocka_unit_test(test_tinycode),     cmocka_unit_test(test_tiny_llama3),
        cmocka_unit_test(test_tiny_qwen2),   cmocka_unit_test(test_tiny_mistral),
        cmocka_unit_test(test_tiny_qwen3),   cmocka_unit_test(test_tiny_phi3),
        cmocka_unit_test(test_tiny_gemma2),  cmocka_unit_test(test_tiny_gpt2),
        cmocka_unit_test(test_tiny_mixtral), cmocka_unit_test(test_tiny_qwen2_moe),
        cmocka_unit_test(test_tiny_qwen3_moe), cmocka_unit_test(test_tiny_deepseek_v2),
        cmocka_unit_test(test_led_generation), cmocka_unit_test(test_engines_per_rank),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
#ifdef TP_LSAN
    /* leaks checked here, while Open MPI is loaded: what it keeps past
     * MPI_Finalize lies in components unloaded by exit, which a suppression
     * by library name cannot match, so the check at exit is off
     * (LSAN_OPTIONS=leak_check_at_exit=0, tests/CMakeLists.txt) and what
     * Open MPI holds now is suppressed by name (lsan_openmpi.supp) */
    if (__lsan_do_recoverable_leak_check() != 0) {
        fprintf(stderr, "test_tp: rank %d leaked memory (above)\n", anvil_comm_rank(comm));
        rc = 1;
    }
#endif
    anvil_comm_free(comm);
    return rc;
}
