/*
 * The executor samples on the backend (anvil_runtime_forward_sample) in
 * steps where no row needs its logits on the host, and from downloaded
 * logits otherwise. Both must give the same tokens: seeded requests (plain
 * temperature, top-k, top-p, min-p, n > 1) run together, and mixed with
 * requests that force the host path (logprobs, penalties, bias, min_tokens),
 * against the same requests asking for log-probabilities (which do not
 * change the tokens but need the logits on the host: the executor's own
 * host sampler), against a runtime that always samples on the host
 * (options.host_sampling), and each plain request alone.
 */
#include "exec_testkit.h"

#define NR 12
#define MAXTOK 24

static anvil_runtime *rt_dev, *rt_host;

static int setup(void **st)
{
    (void)st;
    anvil_runtime_options o;
    kit_rt_options(&o);
    rt_dev = kit_load("stories260K", &o);
    o.host_sampling = 1;
    rt_host = kit_load("stories260K", &o);
    return 0;
}

static int teardown(void **st)
{
    (void)st;
    anvil_runtime_free(rt_dev);
    anvil_runtime_free(rt_host);
    return 0;
}

static const int32_t prompt[6] = {1, 403, 407, 261, 378, 300};
static const anvil_logit_bias bias[1] = {{.token = 300, .bias = 5.0f}};

/* Request i; `plain` ones need nothing from the logits but the draw (and
 * with want_lp their log-probabilities, which keeps them on the host). */
static int want_lp;

static void make_request(int i, int plain, anvil_request *q)
{
    anvil_request_init(q);
    q->prompt_ids = prompt;
    q->n_prompt_ids = 3 + i % 4;
    q->max_tokens = MAXTOK - i % 5;
    q->ignore_eos = 1;
    q->has_seed = 1;
    q->sampling.seed = 100 + (uint64_t)i;
    q->retain_result = 1;
    static const float temps[4] = {1.0f, 0.7f, 1.3f, 0.0f};
    q->sampling.temperature = temps[i % 4];
    q->sampling.top_k = (int32_t[]){0, 5, 40, -1}[i % 4];
    q->sampling.top_p = (float[]){1.0f, 0.9f, 0.5f, 1.0f}[(i / 2) % 4];
    q->sampling.min_p = i % 3 == 2 ? 0.1f : 0.0f;
    q->n = i % 5 == 1 ? 3 : 1;
    if (plain) {
        q->logprobs = want_lp ? 0 : -1;
        return;
    }
    switch (i % 4) {
    case 0:
        q->logprobs = 2;
        break;
    case 1:
        q->repetition_penalty = 1.3f;
        break;
    case 2:
        q->logit_bias = bias;
        q->n_logit_bias = 1;
        break;
    default:
        q->min_tokens = 4;
        q->ignore_eos = 0;
        break;
    }
}

typedef struct outputs {
    int32_t ids[NR][3][MAXTOK];
    int32_t n[NR][3];
    int32_t n_seq[NR];
} outputs;

/* Runs the requests `which` (a bit per request) together; mixed: odd
 * requests are not plain. */
static void run(anvil_runtime *rt, unsigned which, int mixed, outputs *out)
{
    anvil_executor *ex = kit_executor(rt, NULL, ANVIL_CAPACITY_GUARANTEED_NO_EVICT);
    uint64_t ids[NR];
    for (int i = 0; i < NR; i++) {
        if (!(which >> i & 1))
            continue;
        anvil_request q;
        make_request(i, !(mixed && (i & 1)), &q);
        KIT_OK(anvil_executor_enqueue(ex, &q, &ids[i]));
    }
    for (int i = 0; i < NR; i++) {
        if (!(which >> i & 1))
            continue;
        anvil_result *res = NULL;
        KIT_OK(anvil_executor_wait(ex, ids[i], &res));
        assert_int_equal(res->status, ANVIL_OK);
        out->n_seq[i] = res->n_sequences;
        for (int32_t s = 0; s < res->n_sequences && s < 3; s++) {
            out->n[i][s] = res->sequences[s].n_tokens;
            memcpy(out->ids[i][s], res->sequences[s].token_ids, (size_t)res->sequences[s].n_tokens * 4);
        }
        anvil_result_free(res);
    }
    anvil_executor_free(ex);
}

static void expect_same(const char *what, const outputs *a, const outputs *b, unsigned which)
{
    for (int i = 0; i < NR; i++) {
        if (!(which >> i & 1))
            continue;
        assert_int_equal(a->n_seq[i], b->n_seq[i]);
        for (int32_t s = 0; s < a->n_seq[i]; s++) {
            char name[96];
            snprintf(name, sizeof name, "%s: request %d sample %d", what, i, s);
            kit_expect_ids(name, a->ids[i][s], a->n[i][s], b->ids[i][s], b->n[i][s]);
        }
    }
}

static void test_plain_batch(void **st)
{
    (void)st;
    static outputs dev, host, alone;
    const unsigned all = (1u << NR) - 1;
    run(rt_dev, all, 0, &dev);
    want_lp = 1;
    run(rt_dev, all, 0, &host);
    want_lp = 0;
    expect_same("backend vs the executor's host sampler", &dev, &host, all);
    run(rt_host, all, 0, &host);
    expect_same("backend vs the runtime's host path", &dev, &host, all);
    int differ = 0;
    for (int i = 0; i < NR; i++) {
        run(rt_dev, 1u << i, 0, &alone);
        differ |= dev.ids[i][0][MAXTOK / 2] != dev.ids[i][0][0];
    }
    expect_same("batched vs alone", &dev, &alone, all);
    assert_true(differ); /* the outputs are not degenerate */
}

static void test_mixed_batch(void **st)
{
    (void)st;
    static outputs dev, host;
    const unsigned all = (1u << NR) - 1;
    run(rt_dev, all, 1, &dev);
    run(rt_host, all, 1, &host);
    expect_same("mixed, backend vs host sampling", &dev, &host, all);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_batch),
        cmocka_unit_test(test_mixed_batch),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
