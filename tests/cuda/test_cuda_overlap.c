/*
 * The overlap scheduler on CUDA (docs/executor.md, docs/cuda-backend.md):
 *
 *  - anvil_runtime_forward_sample_launch / _wait with placeholders for the
 *    previous launch's ids (resolved on the device by resolve_tokens, in
 *    the step graph) against anvil_runtime_forward_sample step by step on
 *    a second runtime, the same batches: decode steps through recorded and
 *    replayed graphs, greedy and sampled rows. The ids and the generators
 *    must be equal (the same kernels on the same shapes; the fix-up changes
 *    only where the ids come from). stories260K f32 and tinycode bf16.
 *  - the executor with the overlap (its default on CUDA) against it off:
 *    64 greedy and seeded streams; every stream well formed (streamed =
 *    result), most steps launched beside another, every block back. The
 *    CUDA kernels are not batch-invariant (a step's extra slots change the
 *    matmul shapes), so the streams are compared and the few that part
 *    (a near tie) are counted, at most one in eight.
 *
 * Skips when no CUDA device is present.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "anvil/executor.h"
#include "anvil/runtime.h"
#include "anvil/sampling.h"
#include "backend/cuda/cuda_internal.h"
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

static anvil_runtime *load(const char *model, const char *dtype)
{
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.device = "cuda";
    o.max_num_tokens = 256;
    o.max_batch_size = 64;
    o.kv_block_size = 16;
    o.kv_cache_tokens = 16 * 1024;
    o.max_seq_len = 512;
    if (strcmp(dtype, "bf16") == 0)
        o.weight_dtype = ANVIL_DTYPE_BF16;
    else if (strcmp(dtype, "f32") == 0)
        o.weight_dtype = ANVIL_DTYPE_F32;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/models/%s", anvil_test_shared_dir(), model);
    anvil_runtime *rt = NULL;
    if (anvil_runtime_load(dir, &o, &rt) != ANVIL_OK)
        fail_msg("load %s: %s", model, anvil_last_error());
    return rt;
}

enum { S = 24, STEPS = 20, MB = 8 };

static void launch_matches(const char *model, const char *dtype)
{
    anvil_runtime *ref = load(model, dtype), *rt = load(model, dtype);
    assert_int_equal(anvil_runtime_launches_ahead(rt), 1);
    int32_t blocks[2][S * MB];
    anvil_rng rng[2][S];
    anvil_sample_row rows[2][S];
    memset(rows, 0, sizeof rows); /* no mask */
    for (int k = 0; k < 2; k++) {
        OK(anvil_runtime_kv_alloc(k ? rt : ref, S * MB, blocks[k]));
        for (int s = 0; s < S; s++) {
            anvil_rng_seed(&rng[k][s], 11 + (uint64_t)s);
            anvil_sampling_params_default(&rows[k][s].sampling);
            rows[k][s].sampling.temperature = s % 3 == 0 ? 0.0f : 0.9f;
            rows[k][s].sampling.top_k = s % 3 == 2 ? 40 : 0;
            rows[k][s].rng = &rng[k][s];
        }
    }
    int32_t tok[S * 8], pos[S * 8], starts[S + 1], lr[S], len[S];
    int32_t T = 0;
    for (int s = 0; s < S; s++) {
        starts[s] = T;
        len[s] = 2 + s % 7;
        for (int32_t p = 0; p < len[s]; p++, T++) {
            tok[T] = p == 0 ? 1 : 3 + (p * 31 + s * 7) % 250;
            pos[T] = p;
        }
        lr[s] = T - 1;
    }
    starts[S] = T;
    anvil_batch b[2];
    for (int k = 0; k < 2; k++)
        b[k] = (anvil_batch){.n_tokens = T, .token_ids = tok, .positions = pos, .n_seqs = S, .seq_starts = starts,
                             .block_tables = blocks[k], .max_blocks_per_seq = MB, .n_logits = S, .logit_rows = lr};
    static int32_t want[STEPS + 1][S], got[STEPS + 1][S];
    OK(anvil_runtime_forward_sample(ref, &b[0], rows[0], want[0]));
    OK(anvil_runtime_forward_sample_launch(rt, &b[1], rows[1]));
    for (int step = 1; step <= STEPS; step++) {
        int32_t dt[2][S], dp[S], ds[S + 1], dr[S];
        for (int s = 0; s < S; s++) {
            dt[0][s] = want[step - 1][s];
            dt[1][s] = ANVIL_TOKEN_FROM_ROW(s);
            dp[s] = len[s]++;
            ds[s] = s;
            dr[s] = s;
        }
        ds[S] = S;
        for (int k = 0; k < 2; k++)
            b[k] = (anvil_batch){.n_tokens = S, .token_ids = dt[k], .positions = dp, .n_seqs = S, .seq_starts = ds,
                                 .block_tables = blocks[k], .max_blocks_per_seq = MB, .n_logits = S, .logit_rows = dr};
        OK(anvil_runtime_forward_sample(ref, &b[0], rows[0], want[step]));
        OK(anvil_runtime_forward_sample_launch(rt, &b[1], rows[1]));
        OK(anvil_runtime_forward_sample_wait(rt, got[step - 1]));
    }
    OK(anvil_runtime_forward_sample_wait(rt, got[STEPS]));
    for (int step = 0; step <= STEPS; step++)
        for (int s = 0; s < S; s++)
            if (got[step][s] != want[step][s])
                fail_msg("%s %s: step %d, sequence %d: %d, expected %d", model, dtype, step, s, got[step][s],
                         want[step][s]);
    for (int s = 0; s < S; s++)
        assert_memory_equal(&rng[0][s], &rng[1][s], sizeof rng[0][s]);
    anvil_runtime_free(rt);
    anvil_runtime_free(ref);
}

static void test_launch_matches_forward_sample(void **state)
{
    (void)state;
    NEED_GPU();
    launch_matches("stories260K", "f32");
    launch_matches("tinycode", "bf16");
}

/* ---------------------------------------------------------------- the executor */

#define N_REQ 64

typedef struct stream {
    int32_t ids[256];
    int32_t n;
    int finals;
} stream;

static void on_event(void *user, const anvil_event *ev)
{
    stream *s = user;
    if (ev->kind == ANVIL_EVENT_FINAL) {
        s->finals++;
        return;
    }
    for (int32_t k = 0; k < ev->n_tokens && s->n < 256; k++)
        s->ids[s->n++] = ev->token_ids[k];
}

static void run(anvil_runtime *rt, int overlap, anvil_result **res, stream *streams, anvil_executor_metrics *m)
{
    anvil_executor_options eo;
    anvil_executor_options_default(&eo);
    eo.seed = 5;
    if (!overlap)
        eo.enable_overlap = ANVIL_OVERLAP_OFF;
    anvil_executor *ex = NULL;
    OK(anvil_executor_create(rt, NULL, &eo, &ex));
    static int32_t prompts[N_REQ][40];
    uint64_t ids[N_REQ];
    uint64_t r = 3;
    for (int i = 0; i < N_REQ; i++) {
        anvil_request q;
        anvil_request_init(&q);
        const int32_t n = 1 + (int32_t)(anvil_test_rand(&r) % 40);
        prompts[i][0] = 1;
        for (int32_t k = 1; k < n; k++)
            prompts[i][k] = 3 + (int32_t)(anvil_test_rand(&r) % 250);
        q.prompt_ids = prompts[i];
        q.n_prompt_ids = n;
        q.max_tokens = 16 + (int32_t)(anvil_test_rand(&r) % 200);
        q.sampling.temperature = i % 2 ? 0.8f : 0.0f;
        q.sampling.seed = 40 + (uint64_t)i;
        q.has_seed = 1;
        if (i % 3 == 0) {
            static const int32_t stop_id = 13;
            q.stop_token_ids = &stop_id;
            q.n_stop_token_ids = 1;
        }
        q.retain_result = 1;
        q.on_event = on_event;
        q.user = &streams[i];
        OK(anvil_executor_enqueue(ex, &q, &ids[i]));
    }
    for (int i = 0; i < N_REQ; i++)
        OK(anvil_executor_wait(ex, ids[i], &res[i]));
    for (int k = 0; k < 100000; k++) {
        OK(anvil_executor_stats(ex, m));
        if (m->running == 0 && m->queued == 0)
            break;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(m->kv_blocks_used, 0);
    anvil_executor_free(ex);
}

static void test_executor_overlap_cuda(void **state)
{
    (void)state;
    NEED_GPU();
    anvil_runtime *rt = load("stories260K", "f32");
    static anvil_result *on[N_REQ], *off[N_REQ];
    static stream s_on[N_REQ], s_off[N_REQ];
    anvil_executor_metrics m_on, m_off;
    run(rt, 0, off, s_off, &m_off);
    run(rt, 1, on, s_on, &m_on);
    int parted = 0;
    for (int i = 0; i < N_REQ; i++) {
        assert_int_equal(on[i]->status, ANVIL_OK);
        const anvil_sequence_output *x = &on[i]->sequences[0], *y = &off[i]->sequences[0];
        assert_int_equal(s_on[i].finals, 1);
        assert_int_equal(s_on[i].n, x->n_tokens);
        assert_memory_equal(s_on[i].ids, x->token_ids, (size_t)x->n_tokens * sizeof(int32_t));
        parted += x->n_tokens != y->n_tokens || memcmp(x->token_ids, y->token_ids, (size_t)x->n_tokens * 4) != 0;
        anvil_result_free(on[i]);
        anvil_result_free(off[i]);
    }
    printf("overlap on cuda: %lld of %lld steps overlapped, %d of %d streams parted from the plain loop's; per "
           "step: on schedule %.3f forward %.3f tokens %.3f overlapped %.3f ms; off schedule %.3f forward %.3f "
           "tokens %.3f ms\n",
           (long long)m_on.overlap_steps, (long long)m_on.steps, parted, N_REQ,
           1e3 * m_on.schedule_s / (double)m_on.steps, 1e3 * m_on.forward_s / (double)m_on.steps,
           1e3 * m_on.tokens_s / (double)m_on.steps, 1e3 * m_on.overlapped_s / (double)m_on.steps,
           1e3 * m_off.schedule_s / (double)m_off.steps, 1e3 * m_off.forward_s / (double)m_off.steps,
           1e3 * m_off.tokens_s / (double)m_off.steps);
    assert_int_equal(m_off.overlap_steps, 0);
    assert_true(m_on.overlap_steps * 10 >= m_on.steps * 7);
    assert_true(m_on.overlapped_s > 0);
    assert_true(parted * 8 <= N_REQ);
    anvil_runtime_free(rt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_launch_matches_forward_sample),
        cmocka_unit_test(test_executor_overlap_cuda),
    };
    return anvil_test_run_group(tests);
}
