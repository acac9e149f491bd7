/*
 * The overlap scheduler (docs/executor.md): the same workloads with it
 * forced on (ANVIL_OVERLAP_ALWAYS: on the CPU a launch computes the step
 * first, but the executor's bookkeeping is the one a GPU gets: placeholders,
 * dropped slots, speculative plans, fallbacks) and off give the same
 * stream for every request: tokens, finish, stop reason, text, streamed
 * events = result. Workloads: ends by end token, stop strings, stop ids and
 * max_tokens; n > 1, log-probabilities and penalties mixed in (steps that
 * fall back to the plain path); cancels from a callback mid-flight;
 * max-utilization on a small pool (preemptions); a refit while requests
 * run. Also the runtime's launch / wait pair itself: the ids equal those of
 * anvil_runtime_forward_sample step by step, with placeholders, on the
 * device-sampling path and the host path, and what it refuses.
 */
#include "exec_testkit.h"

#define N_REQ 24
#define MODEL "stories260K"

typedef struct wl_req {
    int32_t prompt[64];
    int32_t n_prompt;
    int32_t max_tokens;
    int kind; /* 0 greedy, 1 seeded top-k/top-p, 2 stop strings, 3 an end token (stop id); the mixed
                 workload's every fourth: 4 n = 2, 5 logprobs, 6 a penalty, 7 min_tokens masking */
} wl_req;

static void make_workload(wl_req *w, int n, uint64_t seed)
{
    uint64_t rng = seed;
    for (int i = 0; i < n; i++) {
        w[i].n_prompt = 1 + (int32_t)(anvil_test_rand(&rng) % 40);
        w[i].prompt[0] = 1;
        for (int32_t k = 1; k < w[i].n_prompt; k++)
            w[i].prompt[k] = 3 + (int32_t)(anvil_test_rand(&rng) % 500);
        /* shorter under sanitizers (the same kinds of ends) */
        w[i].max_tokens = 8 + (int32_t)(anvil_test_rand(&rng) % (ANVIL_TEST_SANITIZED ? 70 : 150));
        w[i].kind = (int)(anvil_test_rand(&rng) % 4);
    }
}

static const char *g_stops[] = {".", " and"};

static anvil_request wl_request(const wl_req *q, int i, int mixed)
{
    anvil_request r;
    anvil_request_init(&r);
    r.prompt_ids = q->prompt;
    r.n_prompt_ids = q->n_prompt;
    r.max_tokens = q->max_tokens;
    r.retain_result = 1;
    r.sampling.temperature = 0.9f;
    r.sampling.seed = 100 + (uint64_t)i;
    r.has_seed = 1;
    /* the mixed workload: every fourth request needs its logits on the host
     * (its steps fall back to the plain path); short, so that overlapped
     * steps come between */
    const int kind = mixed && i % 4 == 0 ? 4 + i / 4 % 4 : q->kind;
    if (kind >= 4 && r.max_tokens > 16)
        r.max_tokens = 16;
    static const int32_t stop_id = 13; /* a frequent token of the stories vocabulary (a newline) */
    switch (kind) {
    case 0:
        r.sampling.temperature = 0;
        break;
    case 1:
        r.sampling.top_k = 40;
        r.sampling.top_p = 0.9f;
        break;
    case 2:
        r.stop = g_stops;
        r.n_stop = 2;
        break;
    case 3:
        /* ends like the model's end tokens (the same check); stories260K
         * rarely produces its own end token this early */
        r.stop_token_ids = &stop_id;
        r.n_stop_token_ids = 1;
        break;
    case 4:
        r.n = 2;
        break;
    case 5:
        r.logprobs = 2;
        break;
    case 6:
        r.repetition_penalty = 1.3f;
        break;
    default:
        r.stop_token_ids = &stop_id;
        r.n_stop_token_ids = 1;
        r.min_tokens = 6;
        break;
    }
    return r;
}

typedef struct run_out {
    anvil_result *res[N_REQ];
    kit_stream streams[N_REQ];
    anvil_executor_metrics m;
} run_out;

typedef struct run_cfg {
    int overlap;
    int mixed;
    anvil_capacity_policy policy;
    int cancel_every;      /* > 0: requests i % cancel_every == 1 cancel themselves after cancel_after tokens */
    int cancel_after;
    int refit;             /* refit to the same weights while the requests run */
} run_cfg;

typedef struct cancel_ctx {
    kit_stream *s;
    anvil_executor *ex;
    uint64_t id;
    int after;
    int sent;
    pthread_mutex_t *mu;
} cancel_ctx;

static void cancel_on_event(void *user, const anvil_event *ev)
{
    cancel_ctx *c = user;
    kit_on_event(c->s, ev);
    pthread_mutex_lock(c->mu);
    const uint64_t id = c->id;
    pthread_mutex_unlock(c->mu);
    if (ev->kind == ANVIL_EVENT_TOKENS && !c->sent && c->s->n_tokens[0] >= c->after && id != 0) {
        c->sent = 1;
        KIT_OK(anvil_executor_cancel(c->ex, id));
    }
}

static void run_workload(anvil_runtime *rt, const anvil_tokenizer *tok, const wl_req *w, const run_cfg *cfg,
                         run_out *out)
{
    anvil_executor_options eo;
    anvil_executor_options_default(&eo);
    eo.policy = cfg->policy;
    eo.seed = 77;
    eo.enable_overlap = cfg->overlap ? ANVIL_OVERLAP_ALWAYS : ANVIL_OVERLAP_OFF;
    anvil_executor *ex = NULL;
    KIT_OK(anvil_executor_create(rt, tok, &eo, &ex));
    memset(out, 0, sizeof *out);
    static cancel_ctx ctx[N_REQ];
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    uint64_t ids[N_REQ];
    for (int i = 0; i < N_REQ; i++) {
        anvil_request r = wl_request(&w[i], i, cfg->mixed);
        const int cancels = cfg->cancel_every > 0 && i % cfg->cancel_every == 1;
        ctx[i] = (cancel_ctx){.s = &out->streams[i], .ex = ex, .after = cfg->cancel_after, .mu = &mu};
        if (cancels) {
            r.on_event = cancel_on_event;
            r.user = &ctx[i];
            r.n = 1;
            r.max_tokens = 150;
        } else {
            r.on_event = kit_on_event;
            r.user = &out->streams[i];
        }
        KIT_OK(anvil_executor_enqueue(ex, &r, &ids[i]));
        pthread_mutex_lock(&mu);
        ctx[i].id = ids[i];
        pthread_mutex_unlock(&mu);
    }
    if (cfg->refit) {
        /* once some tokens came out: new weights (the same values) between two steps */
        anvil_executor_metrics m;
        for (int k = 0; k < 100000; k++) {
            KIT_OK(anvil_executor_stats(ex, &m));
            if (m.generated_tokens >= 40 || (m.queued == 0 && m.running == 0))
                break;
            struct timespec ts = {0, 200000};
            nanosleep(&ts, NULL);
        }
        char dir[512];
        snprintf(dir, sizeof dir, "%s/models/%s", anvil_test_shared_dir(), MODEL);
        KIT_OK(anvil_executor_refit(ex, dir, NULL));
    }
    for (int i = 0; i < N_REQ; i++)
        KIT_OK(anvil_executor_wait(ex, ids[i], &out->res[i]));
    out->m = kit_idle(ex);
    /* every block back: free or cached */
    assert_int_equal(out->m.kv_blocks_used, 0);
    anvil_executor_free(ex);
}

static void free_out(run_out *o)
{
    for (int i = 0; i < N_REQ; i++)
        anvil_result_free(o->res[i]);
}

/* The streamed tokens and text equal the result's. */
static void expect_stream_is_result(const char *what, const kit_stream *s, const anvil_result *res)
{
    if (s->bad || s->n_final != 1)
        fail_msg("%s: events after the final one, or %d finals", what, s->n_final);
    for (int32_t j = 0; j < res->n_sequences; j++) {
        const anvil_sequence_output *q = &res->sequences[j];
        char w[160];
        snprintf(w, sizeof w, "%s, streamed sequence %d", what, j);
        kit_expect_ids(w, s->tokens[j], s->n_tokens[j], q->token_ids, q->n_tokens);
        if (q->text != NULL && strcmp(s->text[j], q->text) != 0)
            fail_msg("%s: streamed text '%s', result '%s'", w, s->text[j], q->text);
    }
}

static void expect_same_result(const char *what, const anvil_result *a, const anvil_result *b)
{
    if (a->status != ANVIL_OK || b->status != ANVIL_OK)
        fail_msg("%s: status %d / %d (%s / %s)", what, a->status, b->status, a->error, b->error);
    if (a->n_sequences != b->n_sequences)
        fail_msg("%s: %d sequences vs %d", what, a->n_sequences, b->n_sequences);
    for (int32_t j = 0; j < a->n_sequences; j++) {
        const anvil_sequence_output *x = &a->sequences[j], *y = &b->sequences[j];
        char w[160];
        snprintf(w, sizeof w, "%s, sequence %d", what, j);
        kit_expect_ids(w, x->token_ids, x->n_tokens, y->token_ids, y->n_tokens);
        if (x->finish != y->finish)
            fail_msg("%s: finish %s vs %s", w, anvil_request_finish_name(x->finish),
                     anvil_request_finish_name(y->finish));
        assert_int_equal(x->stop_token, y->stop_token);
        assert_int_equal(x->stop_string, y->stop_string);
        if ((x->text == NULL) != (y->text == NULL) || (x->text && strcmp(x->text, y->text) != 0))
            fail_msg("%s: text '%s' vs '%s'", w, x->text ? x->text : "(null)", y->text ? y->text : "(null)");
        if (x->logprobs && y->logprobs)
            for (int32_t k = 0; k < x->n_tokens; k++)
                if (x->logprobs[k] != y->logprobs[k])
                    fail_msg("%s: log-probability %d differs", w, k);
    }
}

typedef struct fixture {
    anvil_runtime *rt;
    anvil_tokenizer *tok;
    wl_req w[N_REQ];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    anvil_runtime_options o;
    kit_rt_options(&o);
    o.max_num_tokens = 48; /* long prompts go in chunks */
    o.max_batch_size = 16;
    f->rt = kit_load(MODEL, &o);
    f->tok = kit_tokenizer(MODEL);
    make_workload(f->w, N_REQ, 2024);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    anvil_tokenizer_free(f->tok);
    anvil_runtime_free(f->rt);
    free(f);
    return 0;
}

/* Counts how the reference run's streams ended, to show the workload
 * covers every kind of end. */
static void expect_coverage(const run_out *ref)
{
    int by_length = 0, by_string = 0, by_id = 0;
    for (int i = 0; i < N_REQ; i++) {
        for (int32_t j = 0; j < ref->res[i]->n_sequences; j++) {
            const anvil_sequence_output *q = &ref->res[i]->sequences[j];
            by_length += q->finish == ANVIL_REQUEST_LENGTH;
            by_id += q->finish == ANVIL_REQUEST_STOP && q->stop_token == 13;
            by_string += q->finish == ANVIL_REQUEST_STOP && q->stop_string >= 0;
        }
    }
    if (by_length == 0 || by_string == 0 || by_id == 0)
        fail_msg("the workload ends %d by length, %d by a stop string, %d by an end token", by_length, by_string,
                 by_id);
}

static void compare_runs(const fixture *f, const run_cfg *on_cfg, const run_cfg *off_cfg, run_out *on, run_out *off)
{
    run_workload(f->rt, f->tok, f->w, off_cfg, off);
    run_workload(f->rt, f->tok, f->w, on_cfg, on);
    for (int i = 0; i < N_REQ; i++) {
        char w[64];
        snprintf(w, sizeof w, "request %d (kind %d)", i, f->w[i].kind);
        expect_same_result(w, on->res[i], off->res[i]);
        expect_stream_is_result(w, &on->streams[i], on->res[i]);
        expect_stream_is_result(w, &off->streams[i], off->res[i]);
    }
    assert_true(on->m.overlap_steps > 0);
    assert_int_equal(off->m.overlap_steps, 0);
}

/* Backend-sampled requests only (greedy, seeded, stop strings): nearly
 * every step launches beside the one before. */
static void test_overlap_plain(void **state)
{
    fixture *f = *state;
    static run_out on, off;
    run_cfg c_on = {.overlap = 1, .policy = ANVIL_CAPACITY_GUARANTEED_NO_EVICT};
    run_cfg c_off = c_on;
    c_off.overlap = 0;
    compare_runs(f, &c_on, &c_off, &on, &off);
    expect_coverage(&off);
    /* most steps overlapped: only the first, and those after a step that
     * could not go beside the one before (none here but a drain at the
     * end of a burst), run alone */
    if (on.m.overlap_steps * 10 < on.m.steps * 7)
        fail_msg("only %lld of %lld steps overlapped", (long long)on.m.overlap_steps, (long long)on.m.steps);
    free_out(&on);
    free_out(&off);
}

/* n > 1, logprobs, penalties and stop ids mixed in: their steps fall back
 * to the plain path. */
static void test_overlap_mixed(void **state)
{
    fixture *f = *state;
    static run_out on, off;
    run_cfg c_on = {.overlap = 1, .mixed = 1, .policy = ANVIL_CAPACITY_GUARANTEED_NO_EVICT};
    run_cfg c_off = c_on;
    c_off.overlap = 0;
    compare_runs(f, &c_on, &c_off, &on, &off);
    expect_coverage(&off);
    free_out(&on);
    free_out(&off);
}

/* Max-utilization on a pool that forces preemptions, against no-evict on
 * a large pool without the overlap. */
static void test_overlap_preempt(void **state)
{
    fixture *f = *state;
    static run_out on, off;
    run_cfg c_on = {.overlap = 1, .mixed = 1, .policy = ANVIL_CAPACITY_MAX_UTILIZATION};
    run_cfg c_off = {.overlap = 0, .mixed = 1, .policy = ANVIL_CAPACITY_GUARANTEED_NO_EVICT};
    /* the small pool: a runtime of its own */
    anvil_runtime_options o;
    kit_rt_options(&o);
    o.max_num_tokens = 48;
    o.max_batch_size = 16;
    o.kv_cache_tokens = 16 * 24; /* 24 blocks of 16: the largest request fits alone */
    anvil_runtime *small = kit_load(MODEL, &o);
    run_workload(f->rt, f->tok, f->w, &c_off, &off);
    run_workload(small, f->tok, f->w, &c_on, &on);
    for (int i = 0; i < N_REQ; i++) {
        char w[64];
        snprintf(w, sizeof w, "request %d (kind %d)", i, f->w[i].kind);
        expect_same_result(w, on.res[i], off.res[i]);
        expect_stream_is_result(w, &on.streams[i], on.res[i]);
    }
    if (on.m.preemptions == 0)
        fail_msg("the small pool preempted nothing");
    assert_true(on.m.overlap_steps > 0);
    free_out(&on);
    free_out(&off);
    anvil_runtime_free(small);
}

/* Requests cancel themselves from their callbacks after a few tokens while
 * a step is launched: each keeps a prefix of its uncancelled stream, ends
 * cancelled, and the others are untouched; every block comes back. */
static void test_overlap_cancel(void **state)
{
    fixture *f = *state;
    static run_out on, off, full;
    run_cfg c_on = {.overlap = 1, .policy = ANVIL_CAPACITY_GUARANTEED_NO_EVICT, .cancel_every = 3, .cancel_after = 5};
    run_cfg c_off = c_on;
    c_off.overlap = 0;
    run_cfg c_full = c_off;
    c_full.cancel_after = 1 << 20; /* never: the streams the cancelled ones are prefixes of */
    run_workload(f->rt, f->tok, f->w, &c_full, &full);
    run_workload(f->rt, f->tok, f->w, &c_off, &off);
    run_workload(f->rt, f->tok, f->w, &c_on, &on);
    int n_cancelled = 0;
    for (int i = 0; i < N_REQ; i++) {
        char w[64];
        snprintf(w, sizeof w, "request %d", i);
        expect_stream_is_result(w, &on.streams[i], on.res[i]);
        if (i % 3 != 1) {
            expect_same_result(w, on.res[i], off.res[i]);
            continue;
        }
        const anvil_sequence_output *x = &on.res[i]->sequences[0], *y = &full.res[i]->sequences[0];
        if (y->n_tokens <= 6)
            continue; /* ended before it could cancel */
        n_cancelled++;
        if (on.res[i]->finish != ANVIL_REQUEST_CANCELLED)
            fail_msg("%s: finish %s, expected cancelled", w, anvil_request_finish_name(on.res[i]->finish));
        if (x->n_tokens < 5 || x->n_tokens > y->n_tokens)
            fail_msg("%s: %d tokens after a cancel at 5 (%d uncancelled)", w, x->n_tokens, y->n_tokens);
        kit_expect_ids(w, x->token_ids, x->n_tokens, y->token_ids, x->n_tokens);
    }
    assert_true(n_cancelled > 0);
    free_out(&on);
    free_out(&off);
    free_out(&full);
}

/* A refit (to the same values) while the requests run: the loop takes the
 * launched step before it commits; nothing fails, nothing changes. */
static void test_overlap_refit(void **state)
{
    fixture *f = *state;
    static run_out on, off;
    run_cfg c_on = {.overlap = 1, .mixed = 1, .policy = ANVIL_CAPACITY_GUARANTEED_NO_EVICT, .refit = 1};
    run_cfg c_off = c_on;
    c_off.overlap = 0;
    c_off.refit = 0;
    compare_runs(f, &c_on, &c_off, &on, &off);
    assert_int_equal(on.m.refits, 1);
    free_out(&on);
    free_out(&off);
}

/* ------------------------------------------------------------ the runtime's launch / wait */

/* A few decode steps of 3 sequences, step by step with forward_sample and
 * with launch / wait and placeholders: the same ids, the same generators. */
static void launch_matches(int host_sampling)
{
    anvil_runtime_options o;
    kit_rt_options(&o);
    o.host_sampling = host_sampling;
    anvil_runtime *rt = kit_load(MODEL, &o);
    anvil_runtime *ref = kit_load(MODEL, &o);
    enum { S = 3, STEPS = 12, BS = 16 };
    const int32_t prompt_len[S] = {5, 9, 17};
    int32_t blocks[2][S * 4];
    anvil_rng rng[2][S];
    for (int k = 0; k < 2; k++) {
        anvil_runtime *r = k ? rt : ref;
        KIT_OK(anvil_runtime_kv_alloc(r, S * 4, blocks[k]));
        for (int s = 0; s < S; s++)
            anvil_rng_seed(&rng[k][s], 5 + (uint64_t)s);
    }
    anvil_sample_row rows[2][S];
    memset(rows, 0, sizeof rows); /* no mask */
    for (int k = 0; k < 2; k++)
        for (int s = 0; s < S; s++) {
            anvil_sampling_params_default(&rows[k][s].sampling);
            rows[k][s].sampling.temperature = s == 0 ? 0.0f : 0.8f;
            rows[k][s].rng = &rng[k][s];
        }
    /* the prompts: one step */
    int32_t tok[64], pos[64], starts[S + 1], lrows[S];
    int32_t T = 0;
    for (int s = 0; s < S; s++) {
        starts[s] = T;
        for (int32_t p = 0; p < prompt_len[s]; p++, T++) {
            tok[T] = p == 0 ? 1 : 3 + (p * 37 + s * 11) % 500;
            pos[T] = p;
        }
        lrows[s] = T - 1;
    }
    starts[S] = T;
    anvil_batch b[2];
    for (int k = 0; k < 2; k++)
        b[k] = (anvil_batch){.n_tokens = T, .token_ids = tok, .positions = pos, .n_seqs = S, .seq_starts = starts,
                             .block_tables = blocks[k], .max_blocks_per_seq = 4, .n_logits = S, .logit_rows = lrows};
    int32_t want[STEPS + 1][S], got[STEPS + 1][S];
    KIT_OK(anvil_runtime_forward_sample(ref, &b[0], rows[0], want[0]));
    KIT_OK(anvil_runtime_forward_sample_launch(rt, &b[1], rows[1]));
    int32_t len[S];
    for (int s = 0; s < S; s++)
        len[s] = prompt_len[s];
    /* decode: the reference feeds the ids it got; the launched path feeds
     * placeholders and waits one step behind */
    for (int step = 1; step <= STEPS; step++) {
        int32_t dt[2][S], dp[S], ds[S + 1], dr[S];
        for (int s = 0; s < S; s++) {
            dt[0][s] = want[step - 1][s];
            dt[1][s] = ANVIL_TOKEN_FROM_ROW(s);
            dp[s] = len[s];
            ds[s] = s;
            dr[s] = s;
            len[s]++;
        }
        ds[S] = S;
        for (int k = 0; k < 2; k++)
            b[k] = (anvil_batch){.n_tokens = S, .token_ids = dt[k], .positions = dp, .n_seqs = S, .seq_starts = ds,
                                 .block_tables = blocks[k], .max_blocks_per_seq = 4, .n_logits = S, .logit_rows = dr};
        KIT_OK(anvil_runtime_forward_sample(ref, &b[0], rows[0], want[step]));
        /* a synchronous step is refused while one is launched */
        assert_int_equal(anvil_runtime_forward_sample(rt, &b[1], rows[1], got[step]), ANVIL_ERR_INVALID_ARG);
        KIT_OK(anvil_runtime_forward_sample_launch(rt, &b[1], rows[1]));
        /* a third launch is refused */
        assert_int_equal(anvil_runtime_forward_sample_launch(rt, &b[1], rows[1]), ANVIL_ERR_INVALID_ARG);
        KIT_OK(anvil_runtime_forward_sample_wait(rt, got[step - 1]));
    }
    KIT_OK(anvil_runtime_forward_sample_wait(rt, got[STEPS]));
    assert_int_equal(anvil_runtime_forward_sample_wait(rt, got[0]), ANVIL_ERR_INVALID_ARG); /* none left */
    for (int step = 0; step <= STEPS; step++)
        for (int s = 0; s < S; s++)
            if (got[step][s] != want[step][s])
                fail_msg("host_sampling %d: step %d, sequence %d: %d, expected %d", host_sampling, step, s,
                         got[step][s], want[step][s]);
    for (int s = 0; s < S; s++)
        assert_memory_equal(&rng[0][s], &rng[1][s], sizeof rng[0][s]);

    /* placeholders are refused after a synchronous step, and past the
     * previous launch's rows */
    int32_t t1[1] = {ANVIL_TOKEN_FROM_ROW(0)}, p1[1] = {len[0]}, s1[2] = {0, 1}, r1[1] = {0};
    anvil_batch one = {.n_tokens = 1, .token_ids = t1, .positions = p1, .n_seqs = 1, .seq_starts = s1,
                       .block_tables = blocks[1], .max_blocks_per_seq = 4, .n_logits = 1, .logit_rows = r1};
    int32_t id;
    assert_int_equal(anvil_runtime_forward_sample_launch(rt, &one, rows[1]), ANVIL_OK);
    t1[0] = ANVIL_TOKEN_FROM_ROW(1); /* the last launch had one row */
    p1[0]++;
    assert_int_equal(anvil_runtime_forward_sample_launch(rt, &one, rows[1]), ANVIL_ERR_INVALID_ARG);
    KIT_OK(anvil_runtime_forward_sample_wait(rt, &id));
    t1[0] = 7;
    KIT_OK(anvil_runtime_forward_sample(rt, &one, rows[1], &id));
    t1[0] = ANVIL_TOKEN_FROM_ROW(0);
    p1[0]++;
    assert_int_equal(anvil_runtime_forward_sample_launch(rt, &one, rows[1]), ANVIL_ERR_INVALID_ARG);
    assert_int_equal(anvil_runtime_launches_ahead(rt), 0); /* the CPU computes at launch */
    anvil_runtime_free(rt);
    anvil_runtime_free(ref);
}

static void test_runtime_launch(void **state)
{
    (void)state;
    launch_matches(0);
    launch_matches(1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_runtime_launch),
        cmocka_unit_test_setup_teardown(test_overlap_plain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_overlap_mixed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_overlap_preempt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_overlap_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_overlap_refit, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
