/*
 * The executor's features, each against an independent expectation:
 *  - prefix reuse: a request sharing a prefix with an earlier one hits its
 *    cached blocks, and its output equals the output without a cache;
 *  - cancel: a running and a queued request end `cancelled`, their blocks
 *    return;
 *  - n > 1: sample i of (n, seed s) equals the single sample with seed s + i;
 *  - logprobs: the full distribution sums to 1, equals a direct log-softmax
 *    of the runtime's logits, and the chosen token's entry matches;
 *  - min_tokens, stop token ids, logit bias, ignore_eos;
 *  - repetition / presence / frequency penalties and bias against a
 *    reference greedy loop written here on the runtime directly;
 *  - stop strings across token boundaries, streamed text = result text;
 *  - the text of generated ids is what they add to the prompt (HF's
 *    decode(prompt + gen)[len(decode(prompt)):]) for SentencePiece and
 *    byte-level tokenizers, samples and beams, streamed and final;
 *  - text prompts; freeing an executor with requests in flight.
 */
#include <math.h>
#include <time.h>

#include "exec_testkit.h"

static void random_prompt(int32_t *p, int32_t n, uint64_t seed)
{
    p[0] = 1;
    for (int32_t i = 1; i < n; i++)
        p[i] = 3 + (int32_t)(anvil_test_rand(&seed) % 509);
}

static anvil_request greedy_request(const int32_t *ids, int32_t n, int32_t max_tokens)
{
    anvil_request r;
    anvil_request_init(&r);
    r.prompt_ids = ids;
    r.n_prompt_ids = n;
    r.sampling.temperature = 0;
    r.max_tokens = max_tokens;
    return r;
}

/* ------------------------------------------------------------ prefix reuse */

static void test_prefix_reuse(void **state)
{
    (void)state;
    anvil_runtime_options o;
    kit_rt_options(&o);
    anvil_runtime *rt = kit_load("stories260K", &o);
    anvil_executor *ex = kit_executor(rt, NULL, ANVIL_CAPACITY_GUARANTEED_NO_EVICT);
    anvil_runtime *rt2 = kit_load("stories260K", &o);
    anvil_executor_options eo;
    anvil_executor_options_default(&eo);
    eo.enable_prefix_caching = 0;
    anvil_executor *nocache;
    KIT_OK(anvil_executor_create(rt2, NULL, &eo, &nocache));

    int32_t a[100], b[110], d[200];
    random_prompt(a, 100, 11);
    memcpy(b, a, 80 * 4); /* 5 full blocks of 16 in common */
    random_prompt(b + 80, 30, 12);
    b[80] = 7;
    anvil_request ra = greedy_request(a, 100, 20);
    anvil_result *res_a = kit_run(ex, &ra);
    assert_int_equal(res_a->n_cached_prompt, 0);

    anvil_request rb = greedy_request(b, 110, 20);
    anvil_result *res_b = kit_run(ex, &rb), *ref_b = kit_run(nocache, &rb);
    assert_int_equal(res_b->n_cached_prompt, 80);
    assert_int_equal(ref_b->n_cached_prompt, 0);
    kit_expect_ids("shared prefix vs no cache", res_b->sequences[0].token_ids, res_b->sequences[0].n_tokens,
                   ref_b->sequences[0].token_ids, ref_b->sequences[0].n_tokens);

    /* the same prompt again: every full block but the one holding the last
     * token (which must be computed for its logits) */
    anvil_result *res_c = kit_run(ex, &ra);
    assert_int_equal(res_c->n_cached_prompt, 96);
    kit_expect_ids("same prompt from the cache", res_c->sequences[0].token_ids, res_c->sequences[0].n_tokens,
                   res_a->sequences[0].token_ids, res_a->sequences[0].n_tokens);

    /* a second turn: prompt + its answer + more: the generated tokens'
     * blocks are cached too */
    memcpy(d, a, 100 * 4);
    memcpy(d + 100, res_a->sequences[0].token_ids, 20 * 4);
    random_prompt(d + 120, 40, 13);
    d[120] = 9;
    anvil_request rd = greedy_request(d, 160, 12);
    anvil_result *res_d = kit_run(ex, &rd), *ref_d = kit_run(nocache, &rd);
    /* 119 tokens have KV (the last generated token was never computed): 7 full blocks */
    assert_int_equal(res_d->n_cached_prompt, 112);
    kit_expect_ids("second turn", res_d->sequences[0].token_ids, res_d->sequences[0].n_tokens,
                   ref_d->sequences[0].token_ids, ref_d->sequences[0].n_tokens);

    anvil_executor_metrics m = kit_idle(ex);
    assert_int_equal(m.cached_prompt_tokens, 80 + 96 + 112);
    assert_int_equal(m.prompt_tokens, 100 + 110 + 100 + 160);
    assert_true(m.kv_blocks_cached > 0);
    assert_int_equal(m.kv_blocks_used, 0);
    anvil_result_free(res_a);
    anvil_result_free(res_b);
    anvil_result_free(ref_b);
    anvil_result_free(res_c);
    anvil_result_free(res_d);
    anvil_result_free(ref_d);
    anvil_executor_free(nocache);
    anvil_executor_free(ex);
    anvil_runtime_free(rt2);
    anvil_runtime_free(rt);
}

/* Two requests with one prompt at once (the second is admitted while the
 * first computes it): both right, no block registered twice. */
static void test_prefix_concurrent(void **state)
{
    (void)state;
    anvil_runtime_options o;
    kit_rt_options(&o);
    anvil_runtime *rt = kit_load("stories260K", &o);
    anvil_executor *ex = kit_executor(rt, NULL, ANVIL_CAPACITY_MAX_UTILIZATION);
    int32_t a[150];
    random_prompt(a, 150, 21);
    anvil_request r = greedy_request(a, 150, 16);
    r.retain_result = 1;
    uint64_t id[4];
    for (int i = 0; i < 4; i++)
        KIT_OK(anvil_executor_enqueue(ex, &r, &id[i]));
    anvil_result *res[4];
    for (int i = 0; i < 4; i++)
        KIT_OK(anvil_executor_wait(ex, id[i], &res[i]));
    for (int i = 1; i < 4; i++)
        kit_expect_ids("same prompt at once", res[i]->sequences[0].token_ids, res[i]->sequences[0].n_tokens,
                       res[0]->sequences[0].token_ids, res[0]->sequences[0].n_tokens);
    for (int i = 0; i < 4; i++)
        anvil_result_free(res[i]);
    anvil_executor_metrics m = kit_idle(ex);
    assert_int_equal(m.kv_blocks_used, 0);
    anvil_executor_free(ex);
    anvil_runtime_free(rt);
}

/* ------------------------------------------------------------ cancel */

typedef struct cancel_ctx {
    anvil_executor *ex;
    int tokens;
    int cancelled_from_callback;
    kit_stream stream;
} cancel_ctx;

static void cancel_on_event(void *user, const anvil_event *ev)
{
    cancel_ctx *c = user;
    kit_on_event(&c->stream, ev);
    if (ev->kind == ANVIL_EVENT_TOKENS && ++c->tokens == 5) {
        if (anvil_executor_cancel(c->ex, ev->request_id) == ANVIL_OK)
            c->cancelled_from_callback = 1;
    }
}

static void test_cancel(void **state)
{
    (void)state;
    anvil_runtime_options o;
    kit_rt_options(&o);
    o.kv_cache_tokens = 16 * 30; /* room for one long request at a time */
    anvil_runtime *rt = kit_load("stories260K", &o);
    anvil_executor *ex = kit_executor(rt, NULL, ANVIL_CAPACITY_GUARANTEED_NO_EVICT);
    int32_t p[40];
    random_prompt(p, 40, 31);
    cancel_ctx c = {.ex = ex};
    anvil_request r = greedy_request(p, 40, 400);
    r.ignore_eos = 1;
    r.on_event = cancel_on_event;
    r.user = &c;
    r.retain_result = 1;
    uint64_t id_run, id_queued;
    KIT_OK(anvil_executor_enqueue(ex, &r, &id_run));
    /* a second one that cannot start while the first holds its reservation */
    anvil_request q = greedy_request(p, 40, 400);
    q.ignore_eos = 1;
    q.retain_result = 1;
    KIT_OK(anvil_executor_enqueue(ex, &q, &id_queued));
    KIT_OK(anvil_executor_cancel(ex, id_queued));
    anvil_result *res;
    KIT_OK(anvil_executor_wait(ex, id_queued, &res));
    assert_int_equal(res->finish, ANVIL_REQUEST_CANCELLED);
    assert_int_equal(res->sequences[0].n_tokens, 0);
    anvil_result_free(res);

    KIT_OK(anvil_executor_wait(ex, id_run, &res));
    assert_int_equal(res->finish, ANVIL_REQUEST_CANCELLED);
    assert_true(c.cancelled_from_callback);
    /* cancelled at the next step: the fifth token was its last, or one more */
    assert_in_range(res->sequences[0].n_tokens, 5, 6);
    assert_int_equal(c.stream.n_final, 1);
    assert_int_equal(c.stream.final_finish, ANVIL_REQUEST_CANCELLED);
    anvil_result_free(res);
    anvil_executor_metrics m = kit_idle(ex);
    assert_int_equal(m.kv_blocks_used, 0);
    assert_int_equal(m.kv_blocks_free + m.kv_blocks_cached, m.kv_blocks_total);

    /* a finished request: nothing to do; an id never issued: not found */
    KIT_OK(anvil_executor_cancel(ex, id_run));
    assert_status_msg(anvil_executor_cancel(ex, 999), ANVIL_ERR_NOT_FOUND, "no request 999");
    assert_status_msg(anvil_executor_cancel(ex, 0), ANVIL_ERR_NOT_FOUND, "no request");
    anvil_executor_free(ex);
    anvil_runtime_free(rt);
}

/* ------------------------------------------------------------ n > 1 */

static void test_n_samples(void **state)
{
    (void)state;
    anvil_runtime_options o;
    kit_rt_options(&o);
    anvil_runtime *rt = kit_load("stories260K", &o);
    anvil_executor *ex = kit_executor(rt, NULL, ANVIL_CAPACITY_GUARANTEED_NO_EVICT);
    int32_t p[37];
    random_prompt(p, 37, 41); /* 2 full blocks + a partial one: forks copy it */
    anvil_request r = greedy_request(p, 37, 24);
    r.sampling.temperature = 1.0f;
    r.sampling.seed = 500;
    r.has_seed = 1;
    r.n = 4;
    r.logprobs = 0;
    kit_stream stream;
    memset(&stream, 0, sizeof stream);
    r.on_event = kit_on_event;
    r.user = &stream;
    anvil_result *res = kit_run(ex, &r);
    assert_int_equal(res->n_sequences, 4);
    int differ = 0;
    for (int i = 0; i < 4; i++) {
        anvil_request one = greedy_request(p, 37, 24);
        one.sampling.temperature = 1.0f;
        one.sampling.seed = 500 + (uint64_t)i;
        one.has_seed = 1;
        anvil_result *single = kit_run(ex, &one);
        char what[64];
        snprintf(what, sizeof what, "sample %d of n=4", i);
        kit_expect_ids(what, res->sequences[i].token_ids, res->sequences[i].n_tokens, single->sequences[0].token_ids,
                       single->sequences[0].n_tokens);
        kit_expect_ids("streamed sample", stream.tokens[i], stream.n_tokens[i], res->sequences[i].token_ids,
                       res->sequences[i].n_tokens);
        double sum = 0;
        for (int32_t k = 0; k < res->sequences[i].n_tokens; k++)
            sum += res->sequences[i].logprobs[k];
        assert_true(fabs(sum - res->sequences[i].cumulative_logprob) < 1e-4);
        if (i > 0)
            differ |= memcmp(res->sequences[i].token_ids, res->sequences[0].token_ids, 24 * 4) != 0;
        anvil_result_free(single);
    }
    assert_true(differ); /* independent samples */
    assert_int_equal(stream.n_final, 1);
    anvil_result_free(res);

    /* greedy n = 3: three equal sequences */
    anvil_request g = greedy_request(p, 37, 10);
    g.n = 3;
    res = kit_run(ex, &g);
    assert_int_equal(res->n_sequences, 3);
    for (int i = 1; i < 3; i++)
        kit_expect_ids("greedy sample", res->sequences[i].token_ids, res->sequences[i].n_tokens,
                       res->sequences[0].token_ids, res->sequences[0].n_tokens);
    anvil_result_free(res);
    anvil_executor_metrics m = kit_idle(ex);
    assert_int_equal(m.kv_blocks_used, 0);
    anvil_executor_free(ex);
    anvil_runtime_free(rt);
}

/* ------------------------------------------------------------ logprobs */

static void test_logprobs(void **state)
{
    (void)state;
    anvil_runtime_options o;
    kit_rt_options(&o);
    anvil_runtime *rt = kit_load("stories260K", &o);
    const int32_t V = (int32_t)anvil_runtime_config(rt)->vocab_size;
    anvil_executor_options eo;
    anvil_executor_options_default(&eo);
    eo.max_logprobs = V;
    anvil_executor *ex;
    KIT_OK(anvil_executor_create(rt, NULL, &eo, &ex));
    int32_t p[20];
    random_prompt(p, 20, 51);
    anvil_request r = greedy_request(p, 20, 8);
    r.sampling.temperature = 0.7f;
    r.sampling.seed = 3;
    r.has_seed = 1;
    r.logprobs = V;
    r.repetition_penalty = 1.3f; /* processed logits differ; the logprobs are raw */
    anvil_result *res = kit_run(ex, &r);
    const anvil_sequence_output *s = &res->sequences[0];
    assert_int_equal(s->n_top, V);
    double cum = 0;
    for (int32_t t = 0; t < s->n_tokens; t++) {
        const anvil_token_logprob *top = s->top_logprobs + (size_t)t * (size_t)V;
        double sum = 0;
        int found = 0;
        for (int32_t k = 0; k < V; k++) {
            sum += exp((double)top[k].logprob);
            if (k > 0)
                assert_true(top[k].logprob <= top[k - 1].logprob);
            if (top[k].token == s->token_ids[t]) {
                assert_true(top[k].logprob == s->logprobs[t]);
                found = 1;
            }
        }
        assert_true(found);
        if (fabs(sum - 1.0) > 1e-4)
            fail_msg("token %d: probabilities sum to %.6f", t, sum);
        cum += s->logprobs[t];
    }
    assert_true(fabs(cum - s->cumulative_logprob) < 1e-4);
    anvil_executor_free(ex);

    /* the first token's log-probabilities against a direct log-softmax of
     * the runtime's logits for the prompt's last row */
    anvil_runtime_options o2;
    kit_rt_options(&o2);
    anvil_runtime *rt2 = kit_load("stories260K", &o2);
    int32_t blocks[2], pos[20], starts[2] = {0, 20}, row = 19;
    for (int32_t i = 0; i < 20; i++)
        pos[i] = i;
    KIT_OK(anvil_runtime_kv_alloc(rt2, 2, blocks));
    float *logits = malloc((size_t)V * 4);
    anvil_batch b = {.n_tokens = 20, .token_ids = p, .positions = pos, .n_seqs = 1, .seq_starts = starts,
                     .block_tables = blocks, .max_blocks_per_seq = 2, .n_logits = 1, .logit_rows = &row};
    KIT_OK(anvil_runtime_forward(rt2, &b, logits));
    double mx = logits[0], z = 0;
    for (int32_t v = 1; v < V; v++)
        mx = logits[v] > mx ? logits[v] : mx;
    for (int32_t v = 0; v < V; v++)
        z += exp(logits[v] - mx);
    for (int32_t k = 0; k < V; k++) {
        const anvil_token_logprob *e = &s->top_logprobs[k];
        double want = logits[e->token] - mx - log(z);
        if (fabs(want - e->logprob) > 1e-5)
            fail_msg("token %d: logprob %.7f, direct %.7f", e->token, (double)e->logprob, want);
    }
    free(logits);
    anvil_result_free(res);
    anvil_runtime_free(rt2);
    anvil_runtime_free(rt);
}

/* ------------------------------------------------------------ end conditions */

static void test_min_tokens_and_stop_ids(void **state)
{
    (void)state;
    anvil_runtime_options o;
    kit_rt_options(&o);
    anvil_runtime *rt = kit_load("stories260K", &o);
    anvil_executor *ex = kit_executor(rt, NULL, ANVIL_CAPACITY_GUARANTEED_NO_EVICT);
    const int32_t eos = anvil_runtime_config(rt)->eos_token_ids[0];
    int32_t p[12];
    random_prompt(p, 12, 61);

    /* EOS pushed to the top by a bias: it ends the sequence at once ... */
    anvil_logit_bias bias = {.token = eos, .bias = 100.0f};
    anvil_request r = greedy_request(p, 12, 30);
    r.logit_bias = &bias;
    r.n_logit_bias = 1;
    anvil_result *res = kit_run(ex, &r);
    assert_int_equal(res->sequences[0].n_tokens, 1);
    assert_int_equal(res->sequences[0].token_ids[0], eos);
    assert_int_equal(res->sequences[0].finish, ANVIL_REQUEST_STOP);
    assert_int_equal(res->sequences[0].stop_token, eos);
    anvil_result_free(res);
    /* ... not before min_tokens ... */
    r.min_tokens = 5;
    res = kit_run(ex, &r);
    assert_int_equal(res->sequences[0].n_tokens, 6);
    for (int i = 0; i < 5; i++)
        assert_int_not_equal(res->sequences[0].token_ids[i], eos);
    assert_int_equal(res->sequences[0].token_ids[5], eos);
    assert_int_equal(res->finish, ANVIL_REQUEST_STOP);
    anvil_result_free(res);
    /* ... and never with ignore_eos */
    r.min_tokens = 0;
    r.ignore_eos = 1;
    res = kit_run(ex, &r);
    assert_int_equal(res->sequences[0].n_tokens, 30);
    assert_int_equal(res->finish, ANVIL_REQUEST_LENGTH);
    anvil_result_free(res);

    /* stop_token_ids: the greedy run's 4th token ends it there */
    anvil_request g = greedy_request(p, 12, 30);
    g.ignore_eos = 1;
    anvil_result *full = kit_run(ex, &g);
    int32_t stop = full->sequences[0].token_ids[3];
    int first = 0;
    while (full->sequences[0].token_ids[first] != stop)
        first++;
    g.stop_token_ids = &stop;
    g.n_stop_token_ids = 1;
    res = kit_run(ex, &g);
    assert_int_equal(res->sequences[0].n_tokens, first + 1);
    assert_int_equal(res->sequences[0].stop_token, stop);
    assert_int_equal(res->finish, ANVIL_REQUEST_STOP);
    anvil_result_free(res);
    /* with min_tokens past it, the stop token cannot appear before */
    g.min_tokens = 8;
    res = kit_run(ex, &g);
    assert_true(res->sequences[0].n_tokens >= 9);
    for (int i = 0; i < 8; i++)
        assert_int_not_equal(res->sequences[0].token_ids[i], stop);
    anvil_result_free(res);
    anvil_result_free(full);
    anvil_executor_free(ex);
    anvil_runtime_free(rt);
}

/* ------------------------------------------------------------ penalties vs a reference */

typedef struct ref_params {
    float rep, pres, freq;
    const anvil_logit_bias *bias;
    int32_t n_bias;
} ref_params;

/* Greedy decoding on the runtime directly, penalties written out plainly. */
static int32_t reference_greedy(anvil_runtime *rt, const int32_t *prompt, int32_t n_prompt, int32_t max_tokens,
                                const ref_params *rp, int32_t *out)
{
    const int32_t V = (int32_t)anvil_runtime_config(rt)->vocab_size;
    const int32_t bs = anvil_runtime_kv_block_size(rt);
    const int32_t nb = (n_prompt + max_tokens + bs - 1) / bs;
    int32_t *blocks = malloc((size_t)nb * 4), *pos = malloc((size_t)n_prompt * 4), *all = malloc((size_t)(n_prompt + max_tokens) * 4);
    float *logits = malloc((size_t)V * 4);
    assert_true(blocks && pos && all && logits);
    KIT_OK(anvil_runtime_kv_alloc(rt, nb, blocks));
    memcpy(all, prompt, (size_t)n_prompt * 4);
    for (int32_t i = 0; i < n_prompt; i++)
        pos[i] = i;
    int32_t starts[2] = {0, n_prompt}, row = n_prompt - 1;
    anvil_batch b = {.n_tokens = n_prompt, .token_ids = prompt, .positions = pos, .n_seqs = 1, .seq_starts = starts,
                     .block_tables = blocks, .max_blocks_per_seq = nb, .n_logits = 1, .logit_rows = &row};
    KIT_OK(anvil_runtime_forward(rt, &b, logits));
    int32_t n = 0;
    for (;;) {
        for (int32_t k = 0; k < rp->n_bias; k++)
            logits[rp->bias[k].token] += rp->bias[k].bias;
        for (int32_t v = 0; v < V; v++) {
            int in_context = 0, count = 0;
            for (int32_t i = 0; i < n_prompt + n; i++)
                in_context |= all[i] == v;
            for (int32_t i = 0; i < n; i++)
                count += out[i] == v;
            if (in_context)
                logits[v] = logits[v] > 0 ? logits[v] / rp->rep : logits[v] * rp->rep;
            logits[v] -= rp->freq * (float)count + (count > 0 ? rp->pres : 0.0f);
        }
        int32_t best = 0;
        for (int32_t v = 1; v < V; v++)
            if (logits[v] > logits[best])
                best = v;
        out[n++] = best;
        all[n_prompt + n - 1] = best;
        if (n == max_tokens)
            break;
        int32_t p1 = n_prompt + n - 1, one = 1, r0 = 0;
        int32_t st1[2] = {0, 1};
        anvil_batch d = {.n_tokens = 1, .token_ids = &best, .positions = &p1, .n_seqs = 1, .seq_starts = st1,
                         .block_tables = blocks, .max_blocks_per_seq = nb, .n_logits = one, .logit_rows = &r0};
        KIT_OK(anvil_runtime_forward(rt, &d, logits));
    }
    anvil_runtime_kv_release(rt, nb, blocks);
    free(blocks);
    free(pos);
    free(all);
    free(logits);
    return n;
}

static void test_penalties_vs_reference(void **state)
{
    (void)state;
    anvil_runtime_options o;
    kit_rt_options(&o);
    o.max_num_tokens = 256;
    anvil_runtime *rt = kit_load("stories260K", &o);
    anvil_runtime *ref_rt = kit_load("stories260K", &o);
    anvil_executor *ex = kit_executor(rt, NULL, ANVIL_CAPACITY_GUARANTEED_NO_EVICT);
    kit_case cases[8];
    kit_cases("stories260K", cases, 8);
    const anvil_logit_bias bias[2] = {{.token = 261, .bias = -5.0f}, {.token = 298, .bias = 2.5f}};
    const ref_params params[] = {
        {.rep = 1.3f, .pres = 0, .freq = 0},
        {.rep = 0.8f, .pres = 0, .freq = 0},
        {.rep = 1, .pres = 1.5f, .freq = 0},
        {.rep = 1, .pres = 0, .freq = 0.7f},
        {.rep = 1.2f, .pres = 0.5f, .freq = 0.3f, .bias = bias, .n_bias = 2},
        {.rep = 1, .pres = -1.0f, .freq = 0},
    };
    /* every parameter set on three prompts; under TSan (which looks at the
     * threads, not at the sampler's arithmetic) on one */
    for (size_t k = 0; k < sizeof params / sizeof params[0]; k++) {
        for (int c = 1; c <= (ANVIL_TEST_TSAN ? 1 : 3); c++) {
            const ref_params *rp = &params[k];
            int32_t want[40];
            int32_t n_want = reference_greedy(ref_rt, cases[c].ids, cases[c].n_ids, 40, rp, want);
            anvil_request r = greedy_request(cases[c].ids, cases[c].n_ids, 40);
            r.ignore_eos = 1;
            r.repetition_penalty = rp->rep;
            r.presence_penalty = rp->pres;
            r.frequency_penalty = rp->freq;
            r.logit_bias = rp->bias;
            r.n_logit_bias = rp->n_bias;
            anvil_result *res = kit_run(ex, &r);
            char what[96];
            snprintf(what, sizeof what, "prompt%d rep %.1f pres %.1f freq %.1f bias %d", c, (double)rp->rep,
                     (double)rp->pres, (double)rp->freq, rp->n_bias);
            kit_expect_ids(what, res->sequences[0].token_ids, res->sequences[0].n_tokens, want, n_want);
            anvil_result_free(res);
        }
    }
    anvil_executor_free(ex);
    anvil_runtime_free(ref_rt);
    anvil_runtime_free(rt);
}

/* ------------------------------------------------------------ text and stop strings */

typedef struct piece_log {
    char pieces[128][64];
    int n;
} piece_log;

static void log_pieces(void *user, const anvil_event *ev)
{
    piece_log *l = user;
    if (ev->kind != ANVIL_EVENT_TOKENS || l->n >= 128)
        return;
    size_t n = ev->text_len < 63 ? ev->text_len : 63;
    memcpy(l->pieces[l->n], ev->text, n);
    l->pieces[l->n][n] = '\0';
    l->n++;
}

static void test_text_and_stop_strings(void **state)
{
    (void)state;
    anvil_runtime_options o;
    kit_rt_options(&o);
    anvil_runtime *rt = kit_load("stories260K", &o);
    anvil_tokenizer *tok = kit_tokenizer("stories260K");
    anvil_executor *ex = kit_executor(rt, tok, ANVIL_CAPACITY_GUARANTEED_NO_EVICT);
    kit_case cases[8];
    kit_cases("stories260K", cases, 8);

    /* a text prompt: the same ids and greedy continuation as HF */
    anvil_request r;
    anvil_request_init(&r);
    r.prompt = "Once upon a time";
    r.sampling.temperature = 0;
    r.max_tokens = cases[1].n_greedy;
    piece_log *log = calloc(1, sizeof *log);
    r.on_event = log_pieces;
    r.user = log;
    anvil_result *full = kit_run(ex, &r);
    kit_expect_ids("text prompt ids", full->prompt_ids, full->n_prompt, cases[1].ids, cases[1].n_ids);
    kit_expect_ids("text prompt greedy", full->sequences[0].token_ids, full->sequences[0].n_tokens, cases[1].greedy,
                   cases[1].n_greedy);
    char *decoded;
    KIT_OK(anvil_tokenizer_decode(tok, full->sequences[0].token_ids, full->sequences[0].n_tokens, 1, &decoded, NULL));
    assert_string_equal(full->sequences[0].text, decoded);
    free(decoded);
    /* the pieces streamed concatenate to the text */
    char joined[4096] = "";
    for (int i = 0; i < log->n; i++)
        strcat(joined, log->pieces[i]);
    assert_string_equal(joined, full->sequences[0].text);

    /* a stop string made of the end of one token's text and the start of
     * the next one's, first occurring there */
    const char *text = full->sequences[0].text;
    char stop[16] = "";
    size_t at = 0;
    for (int i = 3; i + 1 < log->n && stop[0] == '\0'; i++) {
        size_t la = strlen(log->pieces[i]), lb = strlen(log->pieces[i + 1]);
        if (la < 2 || lb < 2)
            continue;
        char cand[8];
        snprintf(cand, sizeof cand, "%s%.2s", log->pieces[i] + la - 2, log->pieces[i + 1]);
        size_t off = 0;
        for (int k = 0; k <= i; k++)
            off += strlen(log->pieces[k]);
        const char *first = strstr(text, cand);
        if (first && (size_t)(first - text) == off - 2) {
            snprintf(stop, sizeof stop, "%s", cand);
            at = off - 2;
        }
    }
    assert_true(stop[0] != '\0');
    memset(log, 0, sizeof *log);
    const char *stops[2] = {"no such text anywhere", stop};
    r.stop = stops;
    r.n_stop = 2;
    anvil_result *res = kit_run(ex, &r);
    assert_int_equal(res->finish, ANVIL_REQUEST_STOP);
    assert_int_equal(res->sequences[0].stop_string, 1);
    assert_int_equal(res->sequences[0].stop_token, -1);
    assert_int_equal(res->sequences[0].text_len, at);
    assert_memory_equal(res->sequences[0].text, text, at);
    joined[0] = '\0';
    for (int i = 0; i < log->n; i++)
        strcat(joined, log->pieces[i]);
    assert_string_equal(joined, res->sequences[0].text); /* no held-back byte leaked */
    assert_null(strstr(joined, stop));
    /* the ids end with the token that completed the match */
    assert_true(res->sequences[0].n_tokens < full->sequences[0].n_tokens);
    kit_expect_ids("ids up to the stop", res->sequences[0].token_ids, res->sequences[0].n_tokens,
                   full->sequences[0].token_ids, res->sequences[0].n_tokens);
    anvil_result_free(res);

    /* a stop string inside the first min_tokens tokens' text is not matched there */
    char early[8];
    snprintf(early, sizeof early, "%.3s", text + 1);
    const char *stops2[1] = {early};
    r.stop = stops2;
    r.n_stop = 1;
    r.on_event = NULL;
    res = kit_run(ex, &r);
    assert_int_equal(res->finish, ANVIL_REQUEST_STOP);
    assert_true(res->sequences[0].text_len <= 1 + 3);
    anvil_result_free(res);
    r.min_tokens = 10;
    res = kit_run(ex, &r);
    assert_true(res->sequences[0].n_tokens >= 10);
    anvil_result_free(res);

    anvil_result_free(full);
    free(log);
    anvil_executor_free(ex);
    anvil_tokenizer_free(tok);
    anvil_runtime_free(rt);
}

/* ------------------------------------------------------------ text after the prompt */

/* What gen adds to prompt's text, as HF decodes it: decode(prompt + gen)
 * after decode(prompt) (anvil_tokenizer_decode equals HF's, tested against
 * its goldens); where the generated bytes change the prompt's own text (a
 * byte-fallback run made whole or invalid), from the first byte where the
 * two differ. */
static char *text_after(const anvil_tokenizer *tok, const int32_t *prompt, int32_t np, const int32_t *gen, int32_t ng,
                        int skip)
{
    int32_t *all = malloc((size_t)(np + ng + 1) * sizeof *all);
    assert_non_null(all);
    memcpy(all, prompt, (size_t)np * sizeof *all);
    memcpy(all + np, gen, (size_t)ng * sizeof *all);
    char *a, *b;
    size_t la, lb;
    KIT_OK(anvil_tokenizer_decode(tok, prompt, np, skip, &a, &la));
    KIT_OK(anvil_tokenizer_decode(tok, all, np + ng, skip, &b, &lb));
    size_t k = 0;
    while (k < la && k < lb && a[k] == b[k])
        k++;
    if (k < la)
        while (k > 0 && k < lb && ((unsigned char)b[k] & 0xC0) == 0x80)
            k--;
    char *out = strdup(b + k);
    assert_non_null(out);
    free(a);
    free(b);
    free(all);
    return out;
}

/* Checks every sequence of res against text_after (the end token that
 * stopped it adds no text), and, when s is given, the streamed text. */
static int check_text_after(const anvil_tokenizer *tok, const anvil_result *res, const kit_stream *s, int skip)
{
    int spaced = 0;
    for (int32_t i = 0; i < res->n_sequences; i++) {
        const anvil_sequence_output *o = &res->sequences[i];
        int32_t n = o->n_tokens;
        if (o->finish == ANVIL_REQUEST_STOP && o->stop_token >= 0 && n > 0 && o->token_ids[n - 1] == o->stop_token)
            n--;
        char *want = text_after(tok, res->prompt_ids, res->n_prompt, o->token_ids, n, skip);
        if (strcmp(o->text, want) != 0)
            fail_msg("sequence %d: text '%s', expected '%s'", i, o->text, want);
        if (s && (s->text_len[i] != o->text_len || memcmp(s->text[i], o->text, o->text_len) != 0))
            fail_msg("sequence %d: streamed '%.*s', result '%s'", i, (int)s->text_len[i], s->text[i], o->text);
        spaced += o->text[0] == ' ';
        free(want);
    }
    return spaced;
}

static void test_text_after_prompt(void **state)
{
    (void)state;
    /* tiny-llama3's 128k-token tokenizer and tinycode's steps are most of
     * this test's time under TSan (70 s of CI's TSan tier with tinycode),
     * which looks at the threads, the same for every model: it runs
     * stories260K alone there (ASan and the plain build run all three) */
    static const char *const models[] = {"stories260K", "tinycode", "tiny-llama3"};
    const size_t n_models = ANVIL_TEST_TSAN ? 1 : sizeof models / sizeof models[0];
    static const char *const texts[] = {"The cat", "Once upon a time", "Lily and Tom went to the park. They saw a",
                                        "def add(a, b):", "x = 1\nif x", "The cat ", "\xe6\x97\xa5\xe6\x9c\xac",
                                        "caf\xc3\xa9 \xf0\x9f\x98\x80"};
    for (size_t m = 0; m < n_models; m++) {
        anvil_runtime_options o;
        kit_rt_options(&o);
        anvil_runtime *rt = kit_load(models[m], &o);
        anvil_tokenizer *tok = kit_tokenizer(models[m]);
        anvil_executor *ex = kit_executor(rt, tok, ANVIL_CAPACITY_GUARANTEED_NO_EVICT);
        int spaced = 0;
        uint64_t seed = 99;
        const size_t n_texts = sizeof texts / sizeof texts[0];
        for (size_t t = 0; t < n_texts + 6; t++) {
            int32_t *ids = NULL, rnd[8];
            int64_t n = 0;
            if (t < n_texts) {
                KIT_OK(anvil_tokenizer_encode(tok, texts[t], strlen(texts[t]), 1, &ids, &n));
            } else { /* random ids: byte tokens, prompts ending inside a character */
                n = 1 + (int64_t)(anvil_test_rand(&seed) % 7);
                for (int64_t i = 0; i < n; i++)
                    rnd[i] = (int32_t)(anvil_test_rand(&seed) % (uint64_t)anvil_tokenizer_vocab_size(tok));
            }
            anvil_request r = greedy_request(ids ? ids : rnd, (int32_t)n, 10);
            kit_stream *st = calloc(1, sizeof *st);
            r.on_event = kit_on_event;
            r.user = st;
            anvil_result *res = kit_run(ex, &r); /* greedy */
            spaced += check_text_after(tok, res, st, 1);
            anvil_result_free(res);
            memset(st, 0, sizeof *st);
            r.sampling.temperature = 1.5f; /* n samples, some byte tokens */
            r.sampling.seed = 7 + t;
            r.has_seed = 1;
            r.n = 3;
            r.ignore_eos = 1;
            res = kit_run(ex, &r);
            spaced += check_text_after(tok, res, st, 1);
            anvil_result_free(res);
            if (t % 3 != 0) {
                free(st);
                free(ids);
                continue;
            }
            memset(st, 0, sizeof *st);
            r.n = 1; /* special tokens kept */
            r.skip_special_tokens = 0;
            r.ignore_eos = 0;
            res = kit_run(ex, &r);
            check_text_after(tok, res, st, 0);
            anvil_result_free(res);
            r.on_event = NULL; /* beams: decoded at the end */
            r.skip_special_tokens = 1;
            r.sampling.temperature = 0;
            r.beam_width = 2;
            r.max_tokens = 8;
            res = kit_run(ex, &r);
            check_text_after(tok, res, NULL, 1);
            anvil_result_free(res);
            free(st);
            free(ids);
        }
        /* SentencePiece: "The cat" + " ...": first words keep their space */
        if (m != 1)
            assert_true(spaced > 0);
        anvil_executor_free(ex);
        anvil_tokenizer_free(tok);
        anvil_runtime_free(rt);
    }

    /* stop strings see the text with its first space: " and" right at the
     * start of "The cat"'s completion matches there, text "" */
    anvil_runtime_options o;
    kit_rt_options(&o);
    anvil_runtime *rt = kit_load("stories260K", &o);
    anvil_tokenizer *tok = kit_tokenizer("stories260K");
    anvil_executor *ex = kit_executor(rt, tok, ANVIL_CAPACITY_GUARANTEED_NO_EVICT);
    anvil_request r;
    anvil_request_init(&r);
    r.prompt = "The cat";
    r.sampling.temperature = 0;
    r.max_tokens = 16;
    anvil_result *full = kit_run(ex, &r);
    const char *text = full->sequences[0].text;
    assert_true(text[0] == ' ' && strchr(text + 1, ' ') != NULL);
    char first[32], second[32];
    size_t w = (size_t)(strchr(text + 1, ' ') - text);
    snprintf(first, sizeof first, "%.*s", (int)w, text);                 /* " and" */
    snprintf(second, sizeof second, "%.*s", (int)strcspn(text + w + 1, " ") + 1, text + w); /* " a" */
    for (int k = 0; k < 2; k++) {
        const char *stops[1] = {k == 0 ? first : second};
        r.stop = stops;
        r.n_stop = 1;
        kit_stream *st = calloc(1, sizeof *st);
        r.on_event = kit_on_event;
        r.user = st;
        anvil_result *res = kit_run(ex, &r);
        assert_int_equal(res->sequences[0].finish, ANVIL_REQUEST_STOP);
        assert_int_equal(res->sequences[0].stop_string, 0);
        size_t at = k == 0 ? 0 : (size_t)(strstr(text, second) - text);
        assert_int_equal(res->sequences[0].text_len, at);
        assert_memory_equal(res->sequences[0].text, text, at);
        assert_int_equal(st->text_len[0], at);
        anvil_result_free(res);
        free(st);
    }
    anvil_result_free(full);
    anvil_executor_free(ex);
    anvil_tokenizer_free(tok);
    anvil_runtime_free(rt);
}

/* ------------------------------------------------------------ shutdown */

static void test_free_in_flight(void **state)
{
    (void)state;
    anvil_runtime_options o;
    kit_rt_options(&o);
    anvil_runtime *rt = kit_load("stories260K", &o);
    anvil_executor *ex = kit_executor(rt, NULL, ANVIL_CAPACITY_MAX_UTILIZATION);
    int32_t p[30];
    random_prompt(p, 30, 71);
    kit_stream streams[6];
    memset(streams, 0, sizeof streams);
    for (int i = 0; i < 6; i++) {
        anvil_request r = greedy_request(p, 30, 400);
        r.ignore_eos = 1;
        r.on_event = kit_on_event;
        r.user = &streams[i];
        r.retain_result = i % 2; /* results nobody waits for are freed too */
        KIT_OK(anvil_executor_enqueue(ex, &r, NULL));
    }
    anvil_executor_free(ex); /* everything ends `cancelled`, with its final event */
    for (int i = 0; i < 6; i++) {
        assert_int_equal(streams[i].n_final, 1);
        assert_int_equal(streams[i].final_finish, ANVIL_REQUEST_CANCELLED);
    }
    assert_int_equal(anvil_runtime_kv_blocks_free(rt), anvil_runtime_kv_blocks_total(rt));
    anvil_runtime_free(rt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefix_reuse),
        cmocka_unit_test(test_prefix_concurrent),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_n_samples),
        cmocka_unit_test(test_logprobs),
        cmocka_unit_test(test_min_tokens_and_stop_ids),
        cmocka_unit_test(test_penalties_vs_reference),
        cmocka_unit_test(test_text_and_stop_strings),
        cmocka_unit_test(test_text_after_prompt),
        cmocka_unit_test(test_free_in_flight),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
