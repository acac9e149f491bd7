/*
 * anvil_executor_refit under load (issue 12's must-show): 64 greedy streams
 * (16 under a sanitizer) of stories260K run through the executor; once every stream is decoding (and
 * the 8 short ones have finished), the weights are replaced by a perturbed
 * copy's while the other 56 are mid-stream. Then:
 *  - no request fails (each ends at its length);
 *  - no step mixes old and new weights: each stream's callback notes how
 *    many of its tokens came before the commit (m: the executor publishes
 *    the refit count before the first step with the new weights, and a
 *    callback reads it), and the stream's tokens equal, exactly, the same
 *    prompt run alone-in-lockstep through a runtime that switches from the
 *    original weights to the perturbed ones after m tokens (the KV of the
 *    first tokens computed with the old weights, as in the executor); a
 *    step that mixed the weights of both would match no such reference;
 *  - tokens[:m] are the original model's continuation, and streams that
 *    finished before the refit are the original's whole;
 *  - the check has teeth: most long streams differ both from the original
 *    model's continuation and from the perturbed model's (they switched
 *    mid-stream, and their new tokens follow the new weights);
 *  - the prefix cache: a prompt cached before the refit is not reused after
 *    it (its continuation is then the perturbed model's), nor are the
 *    blocks of a request that ran across the refit; new ones are cached
 *    again; the metrics count the refit and its pause.
 * The references use anvil_runtime_forward_greedy on a second runtime:
 * the CPU backend is batch invariant (tests/backend/test_cpu_invariance.c),
 * so a sequence's logits do not depend on what else is in its step.
 * The model is stories260K, not tinycode: what is tested (which weights each
 * step used, across a commit between steps) does not depend on the model's
 * size, and its steps cost a fiftieth of tinycode's (the test took 61 s
 * under ASan and 101 s under TSan in CI with tinycode).
 */
#include <math.h>
#include <time.h>

#include "exec_testkit.h"

#if ANVIL_TEST_TSAN /* the same run, smaller still under TSan (testutil.h) */
#define N_STREAMS    8
#define N_SHORT      2 /* streams 0 and 4: finished before the refit */
#define LONG_TOKENS  32
#define SHORT_TOKENS 6
#define TRIGGER      6   /* the refit starts once every long stream has this many tokens */
#elif ANVIL_TEST_SANITIZED /* the same run, smaller (testutil.h) */
#define N_STREAMS    16
#define N_SHORT      4 /* streams 0, 4, 8, 12: finished before the refit */
#define LONG_TOKENS  40
#define SHORT_TOKENS 6
#define TRIGGER      8   /* the refit starts once every long stream has this many tokens */
#else
#define N_STREAMS    64
#define N_SHORT      8 /* streams 0, 8, 16, ...: finished before the refit */
#define LONG_TOKENS  96
#define SHORT_TOKENS 12
#define TRIGGER      16  /* the refit starts once every long stream has this many tokens */
#endif
#define MODEL        "stories260K"
#define VOCAB        512 /* its vocabulary: made-up prompt ids stay below */
#define AMPLITUDE    0.2 /* large enough that greedy outputs part within a few tokens */
#define BS           16
#define MAXB         32 /* blocks a sequence may have: max_seq_len / BS */

static char pert_dir[600], orig_dir[600];

static void rt_options(anvil_runtime_options *o)
{
    anvil_runtime_options_default(o);
    o->n_threads = 2;
    o->max_num_tokens = 256;
    o->max_batch_size = N_STREAMS;
    o->kv_block_size = BS;
    o->kv_cache_tokens = BS * 640;
    o->max_seq_len = 512;
}

typedef struct prompt {
    int32_t ids[32];
    int32_t n;
    int32_t max_tokens;
} prompt;

static prompt prompts[N_STREAMS];

static void make_prompts(void)
{
    kit_case cases[4];
    const int nc = kit_cases(MODEL, cases, 4);
    assert_true(nc >= 1);
    for (int j = 0; j < N_STREAMS; j++) {
        const kit_case *c = &cases[j % nc];
        prompt *p = &prompts[j];
        p->n = 0;
        for (int32_t i = 0; i < c->n_ids && p->n < 28; i++)
            p->ids[p->n++] = c->ids[i];
        p->ids[p->n++] = 200 + j; /* distinct prompts, distinct continuations */
        p->ids[p->n++] = 300 + (j * 7) % 50;
        p->max_tokens = j % (N_STREAMS / N_SHORT) == 0 ? SHORT_TOKENS : LONG_TOKENS;
    }
}

/* ------------------------------------------------------------ references */

/* Greedy continuations of prompts[i] for i in `which` (n of them), in
 * lockstep (prefill each, then one decode step over all at a time), each to
 * its max_tokens. Once every sequence still running has `switch_at` tokens
 * (< 0: never), the runtime's weights become those of switch_to (and go
 * back to back_to at the end). */
static void reference(anvil_runtime *rt, const int *which, int n, int switch_at, const char *switch_to,
                      const char *back_to, int32_t out[][LONG_TOKENS], int32_t *n_out)
{
    int32_t(*blocks)[MAXB] = calloc((size_t)n, sizeof *blocks);
    int32_t *tok = malloc((size_t)n * sizeof *tok), *pos = malloc((size_t)n * sizeof *pos);
    int32_t *starts = malloc((size_t)(n + 1) * sizeof *starts), *rows = malloc((size_t)n * sizeof *rows);
    int32_t *tables = malloc((size_t)n * MAXB * sizeof *tables), *next = malloc((size_t)n * sizeof *next);
    int *idx = malloc((size_t)n * sizeof *idx);
    assert_true(blocks && tok && pos && starts && rows && tables && next && idx);
    for (int q = 0; q < n; q++) {
        const prompt *p = &prompts[which[q]];
        const int32_t nb = (p->n + p->max_tokens + BS - 1) / BS;
        assert_true(nb <= MAXB);
        KIT_OK(anvil_runtime_kv_alloc(rt, nb, blocks[q]));
        int32_t ppos[32], st[2] = {0, p->n}, row = p->n - 1;
        for (int32_t i = 0; i < p->n; i++)
            ppos[i] = i;
        anvil_batch b = {.n_tokens = p->n,
                         .token_ids = p->ids,
                         .positions = ppos,
                         .n_seqs = 1,
                         .seq_starts = st,
                         .block_tables = blocks[q],
                         .max_blocks_per_seq = MAXB,
                         .n_logits = 1,
                         .logit_rows = &row};
        KIT_OK(anvil_runtime_forward_greedy(rt, &b, &out[q][0]));
        n_out[q] = 1;
    }
    int switched = 0;
    for (;;) {
        int m = 0, all_there = 1;
        for (int q = 0; q < n; q++) {
            if (n_out[q] >= prompts[which[q]].max_tokens)
                continue;
            all_there &= n_out[q] >= switch_at;
            idx[m++] = q;
        }
        if (m == 0)
            break;
        if (switch_at >= 0 && !switched && all_there) {
            KIT_OK(anvil_runtime_refit(rt, switch_to, NULL));
            switched = 1;
        }
        for (int k = 0; k < m; k++) {
            const int q = idx[k];
            tok[k] = out[q][n_out[q] - 1];
            pos[k] = prompts[which[q]].n + n_out[q] - 1;
            starts[k] = k;
            rows[k] = k;
            memcpy(tables + (size_t)k * MAXB, blocks[q], sizeof blocks[q]);
        }
        starts[m] = m;
        anvil_batch b = {.n_tokens = m,
                         .token_ids = tok,
                         .positions = pos,
                         .n_seqs = m,
                         .seq_starts = starts,
                         .block_tables = tables,
                         .max_blocks_per_seq = MAXB,
                         .n_logits = m,
                         .logit_rows = rows};
        KIT_OK(anvil_runtime_forward_greedy(rt, &b, next));
        for (int k = 0; k < m; k++)
            out[idx[k]][n_out[idx[k]]++] = next[k];
    }
    if (switched)
        KIT_OK(anvil_runtime_refit(rt, back_to, NULL));
    for (int q = 0; q < n; q++)
        anvil_runtime_kv_release(rt, (prompts[which[q]].n + prompts[which[q]].max_tokens + BS - 1) / BS,
                                 blocks[q]);
    free(blocks);
    free(tok);
    free(pos);
    free(starts);
    free(rows);
    free(tables);
    free(next);
    free(idx);
}

/* ------------------------------------------------------------ the streams */

typedef struct stream {
    anvil_executor *ex;
    pthread_mutex_t *mu;
    pthread_cond_t *cv;
    int32_t tokens[LONG_TOKENS];
    int32_t n;
    int32_t before; /* tokens that came before the refit's commit */
    uint64_t version0; /* the weights version when it started */
    int done;
    anvil_request_finish finish;
    anvil_status status;
} stream;

static void on_event(void *user, const anvil_event *ev)
{
    stream *s = user;
    anvil_executor_metrics m;
    if (ev->kind == ANVIL_EVENT_TOKENS)
        KIT_OK(anvil_executor_stats(s->ex, &m)); /* from the callback: on the loop thread, between commits */
    pthread_mutex_lock(s->mu);
    if (ev->kind == ANVIL_EVENT_TOKENS) {
        for (int32_t i = 0; i < ev->n_tokens && s->n < LONG_TOKENS; i++)
            s->tokens[s->n++] = ev->token_ids[i];
        /* the event says which weights computed its tokens; the stats, read
         * from the loop's thread, agree (the refit count is published at
         * the commit) */
        if ((uint64_t)m.refits != ev->weights_version)
            fail_msg("event of weights %llu, stats %lld refits", (unsigned long long)ev->weights_version,
                     (long long)m.refits);
        if (ev->weights_version == s->version0)
            s->before = s->n;
    } else {
        s->done = 1;
        s->finish = ev->result->finish;
        s->status = ev->result->status;
    }
    pthread_cond_broadcast(s->cv);
    pthread_mutex_unlock(s->mu);
}

static int first_diff(const int32_t *a, const int32_t *b, int32_t n)
{
    for (int32_t i = 0; i < n; i++)
        if (a[i] != b[i])
            return i;
    return n;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static anvil_result *run_prompt(anvil_executor *ex, const int32_t *ids, int32_t n, int32_t max_tokens)
{
    anvil_request req;
    anvil_request_init(&req);
    req.prompt_ids = ids;
    req.n_prompt_ids = n;
    req.max_tokens = max_tokens;
    req.sampling.temperature = 0.0f;
    req.ignore_eos = 1;
    return kit_run(ex, &req);
}

static void test_refit_under_load(void **st)
{
    (void)st;
    snprintf(orig_dir, sizeof orig_dir, "%s/models/" MODEL, anvil_test_shared_dir());
    anvil_test_perturbed_model(MODEL, MODEL "-pert", AMPLITUDE, NULL, NULL, pert_dir, sizeof pert_dir);
    make_prompts();
    anvil_runtime_options o;
    rt_options(&o);
    anvil_runtime *ref = kit_load(MODEL, &o), *rt = kit_load(MODEL, &o);

    /* the original's and the perturbed model's continuations, beforehand */
    static int32_t orig[N_STREAMS][LONG_TOKENS], pert[N_STREAMS][LONG_TOKENS];
    int32_t n_orig[N_STREAMS], n_pert[N_STREAMS];
    int all[N_STREAMS];
    for (int j = 0; j < N_STREAMS; j++)
        all[j] = j;
    double t0 = now_s();
    reference(ref, all, N_STREAMS, -1, NULL, NULL, orig, n_orig);
    reference(ref, all, N_STREAMS, 0, pert_dir, orig_dir, pert, n_pert);
    print_message("references: %.1f s\n", now_s() - t0);

    /* 64 streams; the refit once every long stream has TRIGGER tokens */
    anvil_executor_options eo;
    anvil_executor_options_default(&eo);
    eo.seed = 1;
    anvil_executor *ex = NULL;
    KIT_OK(anvil_executor_create(rt, NULL, &eo, &ex));
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    static stream ss[N_STREAMS];
    for (int j = 0; j < N_STREAMS; j++) {
        memset(&ss[j], 0, sizeof ss[j]);
        ss[j].ex = ex;
        ss[j].mu = &mu;
        ss[j].cv = &cv;
        anvil_request req;
        anvil_request_init(&req);
        req.prompt_ids = prompts[j].ids;
        req.n_prompt_ids = prompts[j].n;
        req.max_tokens = prompts[j].max_tokens;
        req.sampling.temperature = 0.0f;
        req.ignore_eos = 1;
        req.on_event = on_event;
        req.user = &ss[j];
        KIT_OK(anvil_executor_enqueue(ex, &req, NULL));
    }
    pthread_mutex_lock(&mu);
    for (;;) {
        int ready = 1;
        for (int j = 0; j < N_STREAMS; j++)
            ready &= prompts[j].max_tokens == SHORT_TOKENS ? ss[j].done : ss[j].n >= TRIGGER;
        if (ready)
            break;
        pthread_cond_wait(&cv, &mu);
    }
    pthread_mutex_unlock(&mu);
    t0 = now_s();
    KIT_OK(anvil_executor_refit(ex, pert_dir, NULL));
    const double t_refit = now_s() - t0;
    pthread_mutex_lock(&mu);
    for (int j = 0; j < N_STREAMS; j++)
        while (!ss[j].done)
            pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    anvil_executor_metrics met;
    KIT_OK(anvil_executor_stats(ex, &met));
    assert_int_equal(met.refits, 1);
    assert_true(met.refit_pause_s > 0.0);
    print_message("refit under load: %.1f ms in all, steps paused %.2f ms for the commit\n", t_refit * 1e3,
                  met.refit_pause_s * 1e3);

    /* no request failed; tokens before the commit are the original's; short streams are whole originals */
    int by_m[LONG_TOKENS + 1] = {0};
    for (int j = 0; j < N_STREAMS; j++) {
        stream *s = &ss[j];
        if (s->finish != ANVIL_REQUEST_LENGTH || s->status != ANVIL_OK)
            fail_msg("stream %d ended as %s (%s)", j, anvil_request_finish_name(s->finish),
                     anvil_status_name(s->status));
        assert_int_equal(s->n, prompts[j].max_tokens);
        assert_true(first_diff(s->tokens, orig[j], s->before) == s->before);
        if (prompts[j].max_tokens == SHORT_TOKENS) {
            assert_int_equal(s->before, SHORT_TOKENS); /* finished before the refit */
            kit_expect_ids("a stream finished before the refit", s->tokens, s->n, orig[j], n_orig[j]);
        } else {
            assert_true(s->before >= TRIGGER && s->before < LONG_TOKENS); /* switched mid-stream */
            by_m[s->before]++;
        }
    }

    /* every long stream equals the same prompt switching weights after its own m tokens */
    int teeth = 0, n_long = 0;
    for (int m = 0; m <= LONG_TOKENS; m++) {
        if (by_m[m] == 0)
            continue;
        int which[N_STREAMS], n = 0;
        for (int j = 0; j < N_STREAMS; j++)
            if (prompts[j].max_tokens == LONG_TOKENS && ss[j].before == m)
                which[n++] = j;
        static int32_t hyb[N_STREAMS][LONG_TOKENS];
        int32_t n_hyb[N_STREAMS];
        reference(ref, which, n, m, pert_dir, orig_dir, hyb, n_hyb);
        for (int q = 0; q < n; q++) {
            const int j = which[q];
            const int k = first_diff(ss[j].tokens, orig[j], LONG_TOKENS);
            char what[160];
            snprintf(what, sizeof what, "stream %d (switched after %d tokens, parts from the original at %d)",
                     j, m, k);
            kit_expect_ids(what, ss[j].tokens, ss[j].n, hyb[q], n_hyb[q]);
            n_long++;
            teeth += k < LONG_TOKENS && first_diff(ss[j].tokens, pert[j], LONG_TOKENS) < LONG_TOKENS;
        }
    }
    print_message(
        "%d of %d long streams part from both the original's and the perturbed model's continuations "
        "(switch points: ",
        teeth, n_long);
    for (int m = 0; m <= LONG_TOKENS; m++)
        if (by_m[m])
            print_message("%d x %d ", by_m[m], m);
    print_message(")\n");
    assert_true(teeth * 2 >= n_long);

    /* the prefix cache: nothing from before the refit is reused */
    int32_t longp[40];
    for (int i = 0; i < 40; i++)
        longp[i] = (prompts[1].ids[i % prompts[1].n] + i) % VOCAB; /* two full blocks and some */
    anvil_executor_free(ex);
    anvil_runtime_free(rt);
    rt = kit_load(MODEL, &o);
    KIT_OK(anvil_executor_create(rt, NULL, &eo, &ex));
    anvil_result *a = run_prompt(ex, longp, 40, 8), *b = run_prompt(ex, longp, 40, 8);
    assert_int_equal(b->n_cached_prompt, 32); /* cached before the refit */
    KIT_OK(anvil_executor_refit(ex, pert_dir, NULL));
    anvil_result *c = run_prompt(ex, longp, 40, 8), *d = run_prompt(ex, longp, 40, 8);
    assert_int_equal(c->n_cached_prompt, 0);  /* not after it */
    assert_int_equal(d->n_cached_prompt, 32); /* cached again, under the new weights */
    kit_expect_ids("after the refit", d->sequences[0].token_ids, d->sequences[0].n_tokens,
                   c->sequences[0].token_ids, c->sequences[0].n_tokens);
    /* the perturbed model's own continuation */
    anvil_runtime *pr = NULL;
    KIT_OK(anvil_runtime_load(pert_dir, &o, &pr));
    anvil_executor *pex = NULL;
    KIT_OK(anvil_executor_create(pr, NULL, &eo, &pex));
    anvil_result *e = run_prompt(pex, longp, 40, 8);
    kit_expect_ids("the refit executor against the perturbed model", c->sequences[0].token_ids,
                   c->sequences[0].n_tokens, e->sequences[0].token_ids, e->sequences[0].n_tokens);
    anvil_result_free(a);
    anvil_result_free(b);
    anvil_result_free(c);
    anvil_result_free(d);
    anvil_result_free(e);

    /* a request running across a refit registers none of its blocks */
    int32_t other[40];
    for (int i = 0; i < 40; i++)
        other[i] = (prompts[2].ids[i % prompts[2].n] + 2 * i) % VOCAB;
    anvil_request req;
    anvil_request_init(&req);
    req.prompt_ids = other;
    req.n_prompt_ids = 40;
    req.max_tokens = 200;
    req.sampling.temperature = 0.0f;
    req.ignore_eos = 1;
    req.retain_result = 1;
    uint64_t id;
    stream s1 = {.ex = ex, .mu = &mu, .cv = &cv, .version0 = 1}; /* one refit so far */
    req.on_event = on_event;
    req.user = &s1;
    KIT_OK(anvil_executor_enqueue(ex, &req, &id));
    pthread_mutex_lock(&mu);
    while (s1.n < 4)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    KIT_OK(anvil_executor_refit(ex, orig_dir, NULL));
    anvil_result *f = NULL;
    KIT_OK(anvil_executor_wait(ex, id, &f));
    assert_int_equal(f->finish, ANVIL_REQUEST_LENGTH);
    anvil_result *g = run_prompt(ex, f->sequences[0].token_ids, 100, 4); /* its generated blocks */
    anvil_result *h = run_prompt(ex, other, 40, 4);
    assert_int_equal(g->n_cached_prompt, 0);
    assert_int_equal(h->n_cached_prompt, 0);
    KIT_OK(anvil_executor_stats(ex, &met));
    assert_int_equal(met.refits, 2);
    anvil_result_free(f);
    anvil_result_free(g);
    anvil_result_free(h);

    anvil_executor_free(pex);
    anvil_runtime_free(pr);
    anvil_executor_free(ex);
    anvil_runtime_free(rt);
    anvil_runtime_free(ref);
}

/* A refit that does not fit changes nothing, and requests go on. */
static void test_refit_refused(void **st)
{
    (void)st;
    anvil_runtime_options o;
    rt_options(&o);
    anvil_runtime *rt = kit_load(MODEL, &o);
    anvil_executor_options eo;
    anvil_executor_options_default(&eo);
    anvil_executor *ex = NULL;
    KIT_OK(anvil_executor_create(rt, NULL, &eo, &ex));
    char theta[600];
    anvil_test_model_variant(MODEL, MODEL "-theta", "{\"rope_theta\": 500000.0}", theta, sizeof theta);
    int32_t p[20];
    for (int i = 0; i < 20; i++)
        p[i] = 100 + 3 * i;
    anvil_result *a = run_prompt(ex, p, 20, 16);
    assert_status_msg(anvil_executor_refit(ex, theta, NULL), ANVIL_ERR_INVALID_ARG,
                      "refit changes rope_theta 10000 -> 500000: build a new engine");
    anvil_result *b = run_prompt(ex, p, 20, 16);
    kit_expect_ids("after a refused refit", b->sequences[0].token_ids, b->sequences[0].n_tokens,
                   a->sequences[0].token_ids, a->sequences[0].n_tokens);
    anvil_executor_metrics m;
    KIT_OK(anvil_executor_stats(ex, &m));
    assert_int_equal(m.refits, 0);
    /* an idle executor commits at once; the same weights give the same tokens */
    char dir[600];
    snprintf(dir, sizeof dir, "%s/models/" MODEL, anvil_test_shared_dir());
    KIT_OK(anvil_executor_refit(ex, dir, NULL));
    KIT_OK(anvil_executor_stats(ex, &m));
    assert_int_equal(m.refits, 1);
    anvil_result *c = run_prompt(ex, p, 20, 16);
    kit_expect_ids("after a refit with the same weights", c->sequences[0].token_ids, c->sequences[0].n_tokens,
                   a->sequences[0].token_ids, a->sequences[0].n_tokens);
    anvil_result_free(a);
    anvil_result_free(b);
    anvil_result_free(c);
    anvil_executor_free(ex);
    anvil_runtime_free(rt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refit_under_load),
        cmocka_unit_test(test_refit_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
