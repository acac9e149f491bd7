/*
 * Constrained requests (anvil_request.grammar) sample on the backend with
 * their masks (anvil_sample_row.allowed), the masks made while the device
 * runs the forward, and must give exactly the tokens of the executor's
 * host path (the logits downloaded, the mask and the sampler applied on
 * the host: forced here by asking for log-probabilities, which change no
 * token). On tinycode, a batch of JSON-schema and regex requests, greedy
 * and seeded (temperature, top-k, top-p), alone and mixed with
 * unconstrained ones, runs:
 *
 *   - the reference: every request with logprobs, synchronous loop;
 *   - the CPU backend's sample op: synchronous loop, mixed; overlap
 *     scheduler (masks pending at launch, given after the step before is
 *     taken), constrained alone;
 *   - a runtime with host_sampling (the runtime's own host path), overlap
 *     scheduler, mixed;
 *   - the CPU backend's sample op with the masks made on 3 or 4 mask
 *     threads side by side (exec_masks.c), sync and overlap, mixed;
 *
 * and every run gives the reference's tokens and finish reasons, the
 * unconstrained requests their tokens alone. A grammar whose vocabulary
 * cannot continue (no token allowed at the first step) ends the request
 * with no token and finish "stop" on every path.
 */
#include "anvil/grammar.h"
#include "exec_testkit.h"

#define MODEL "tinycode"
#define N_CON 8   /* constrained requests */
#define N_PLAIN 3 /* unconstrained ones */
#define N_ALL (N_CON + N_PLAIN)

static anvil_runtime *rt_dev, *rt_host;
static anvil_tokenizer *tok;
static anvil_grammar_vocab *gv;
static anvil_grammar *g_schema, *g_regex;

static const char schema[] = "{\"type\":\"object\",\"properties\":{"
                             "\"id\":{\"type\":\"integer\"},"
                             "\"tag\":{\"type\":\"string\",\"maxLength\":6},"
                             "\"on\":{\"type\":\"boolean\"}},"
                             "\"required\":[\"id\",\"tag\",\"on\"],\"additionalProperties\":false}";
static const char regex_src[] = "[a-z]{2,5}_[0-9]{1,3}";

static int setup(void **st)
{
    (void)st;
    anvil_runtime_options o;
    kit_rt_options(&o);
    rt_dev = kit_load(MODEL, &o);
    o.host_sampling = 1;
    rt_host = kit_load(MODEL, &o);
    tok = kit_tokenizer(MODEL);
    const anvil_model_config *cfg = anvil_runtime_config(rt_dev);
    KIT_OK(anvil_grammar_vocab_from_tokenizer(tok, (int32_t)cfg->vocab_size, cfg->eos_token_ids,
                                              cfg->n_eos_token_ids, &gv));
    KIT_OK(anvil_grammar_compile_json_schema(gv, schema, strlen(schema), NULL, &g_schema));
    KIT_OK(anvil_grammar_compile_regex(gv, regex_src, strlen(regex_src), NULL, &g_regex));
    return 0;
}

static int teardown(void **st)
{
    (void)st;
    anvil_grammar_free(g_schema);
    anvil_grammar_free(g_regex);
    anvil_grammar_vocab_free(gv);
    anvil_tokenizer_free(tok);
    anvil_runtime_free(rt_dev);
    anvil_runtime_free(rt_host);
    return 0;
}

/* Request i: constrained for i < N_CON (schema on even i, regex on odd),
 * greedy every fourth, else seeded with varied parameters. */
static void make(anvil_request *q, int i, int logprobs)
{
    anvil_request_init(q);
    q->prompt = i % 3 == 0 ? "{\"" : i % 3 == 1 ? "def f(x):" : "Output:";
    q->max_tokens = i < N_CON ? (ANVIL_TEST_TSAN ? 24 : 48) : 6 + i % 5; /* shorter under TSan (testutil.h) */
    q->has_seed = 1;
    q->sampling.seed = 31 + (uint64_t)i;
    q->sampling.temperature = (float[]){0.0f, 1.0f, 0.8f, 1.2f}[i % 4];
    q->sampling.top_k = i % 4 == 2 ? 30 : 0;
    q->sampling.top_p = i % 4 == 3 ? 0.9f : 1.0f;
    q->grammar = i < N_CON ? (i % 2 ? g_regex : g_schema) : NULL;
    q->logprobs = logprobs ? 0 : -1;
    q->retain_result = 1;
}

/* All requests in flight together (only the constrained ones unless
 * with_plain), on rt with the overlap scheduler or not, the masks made by
 * `threads` mask threads (0: the default). */
static void run(anvil_runtime *rt, int overlap, int logprobs, int with_plain, int threads, anvil_result **res)
{
    anvil_executor_options eo;
    anvil_executor_options_default(&eo);
    eo.seed = 1234;
    eo.grammar_threads = threads;
    eo.enable_overlap = overlap ? ANVIL_OVERLAP_ALWAYS : ANVIL_OVERLAP_OFF;
    anvil_executor *ex = NULL;
    KIT_OK(anvil_executor_create(rt, tok, &eo, &ex));
    uint64_t id[N_ALL];
    const int n = with_plain ? N_ALL : N_CON;
    for (int i = 0; i < n; i++) {
        anvil_request q;
        make(&q, i, logprobs);
        KIT_OK(anvil_executor_enqueue(ex, &q, &id[i]));
    }
    for (int i = 0; i < n; i++)
        KIT_OK(anvil_executor_wait(ex, id[i], &res[i]));
    for (int i = n; i < N_ALL; i++)
        res[i] = NULL;
    anvil_executor_metrics m;
    KIT_OK(anvil_executor_stats(ex, &m));
    assert_true(m.grammar_tokens > 0 && m.grammar_s <= m.tokens_s);
    anvil_executor_free(ex);
}

static void same(const char *what, int i, const anvil_result *a, const anvil_result *b)
{
    assert_int_equal(a->n_sequences, b->n_sequences);
    const anvil_sequence_output *x = &a->sequences[0], *y = &b->sequences[0];
    if (x->n_tokens != y->n_tokens || memcmp(x->token_ids, y->token_ids, (size_t)x->n_tokens * sizeof(int32_t)) ||
        x->finish != y->finish)
        fail_msg("%s: request %d: %d tokens (finish %d) \"%.*s\", the host path %d (finish %d) \"%.*s\"", what, i,
                 x->n_tokens, x->finish, (int)x->text_len, x->text, y->n_tokens, y->finish, (int)y->text_len,
                 y->text);
}

static void free_all(anvil_result **res)
{
    for (int i = 0; i < N_ALL; i++)
        anvil_result_free(res[i]);
}

static void test_paths_agree(void **st)
{
    (void)st;
    static anvil_result *ref[N_ALL], *got[N_ALL], *alone[N_ALL];
    run(rt_dev, 0, 1, 1, 0, ref); /* the executor's host path */
    int stopped = 0;
    for (int i = 0; i < N_CON; i++)
        stopped += ref[i]->sequences[0].finish == ANVIL_REQUEST_STOP;
    printf("%d of %d constrained requests completed their grammar\n", stopped, N_CON);
    assert_true(stopped >= 2); /* the grammars complete (and the rest end by length) */
    const struct {
        const char *what;
        anvil_runtime **rt;
        int overlap, with_plain, threads;
    } runs[] = {
        {"device sampler, sync, mixed", &rt_dev, 0, 1, 1},
        {"device sampler, overlap, alone", &rt_dev, 1, 0, 0},
        {"runtime host path, overlap, mixed", &rt_host, 1, 1, 0},
        /* the masks side by side (exec_masks.c): the same tokens */
        {"device sampler, sync, mixed, 4 mask threads", &rt_dev, 0, 1, 4},
        {"device sampler, overlap, mixed, 3 mask threads", &rt_dev, 1, 1, 3},
    };
    for (size_t k = 0; k < sizeof runs / sizeof runs[0]; k++) {
        run(*runs[k].rt, runs[k].overlap, 0, runs[k].with_plain, runs[k].threads, got);
        for (int i = 0; i < (runs[k].with_plain ? N_ALL : N_CON); i++)
            same(runs[k].what, i, got[i], ref[i]);
        free_all(got);
    }
    /* the unconstrained requests alone give what they give in the mix */
    anvil_executor *ex = kit_executor(rt_dev, tok, ANVIL_CAPACITY_GUARANTEED_NO_EVICT);
    for (int i = N_CON; i < N_ALL; i++) {
        anvil_request q;
        make(&q, i, 0);
        KIT_OK(anvil_executor_generate(ex, &q, &alone[i]));
        same("unconstrained alone", i, alone[i], ref[i]);
        anvil_result_free(alone[i]);
    }
    anvil_executor_free(ex);
    free_all(ref);
}

/* A grammar over a vocabulary of the first 4 ids (no letter among them):
 * the regex's first byte has no token, so the first mask allows nothing. */
static void test_nothing_allowed(void **st)
{
    (void)st;
    anvil_grammar_vocab *small;
    anvil_grammar *g;
    const int32_t stop = 0;
    KIT_OK(anvil_grammar_vocab_from_tokenizer(tok, 4, &stop, 1, &small));
    KIT_OK(anvil_grammar_compile_regex(small, "zq[a-z]+", 8, NULL, &g));
    anvil_result *res[4];
    int k = 0;
    for (int path = 0; path < 4; path++) {
        anvil_executor_options eo;
        anvil_executor_options_default(&eo);
        eo.enable_overlap = path & 1 ? ANVIL_OVERLAP_ALWAYS : ANVIL_OVERLAP_OFF;
        anvil_executor *ex = NULL;
        KIT_OK(anvil_executor_create(path & 2 ? rt_host : rt_dev, tok, &eo, &ex));
        /* beside an unconstrained request, which goes on */
        anvil_request q, p;
        anvil_request_init(&q);
        q.prompt = "x";
        q.max_tokens = 8;
        q.grammar = g;
        q.retain_result = 1;
        make(&p, N_CON, 0);
        p.ignore_eos = 1;
        uint64_t a, b;
        KIT_OK(anvil_executor_enqueue(ex, &q, &a));
        KIT_OK(anvil_executor_enqueue(ex, &p, &b));
        anvil_result *pr;
        KIT_OK(anvil_executor_wait(ex, a, &res[k]));
        KIT_OK(anvil_executor_wait(ex, b, &pr));
        assert_int_equal(res[k]->sequences[0].n_tokens, 0);
        assert_int_equal(res[k]->sequences[0].finish, ANVIL_REQUEST_STOP);
        assert_int_equal(pr->sequences[0].n_tokens, p.max_tokens);
        anvil_result_free(pr);
        anvil_executor_free(ex);
        k++;
    }
    for (int i = 0; i < k; i++)
        anvil_result_free(res[i]);
    anvil_grammar_free(g);
    anvil_grammar_vocab_free(small);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_paths_agree),
        cmocka_unit_test(test_nothing_allowed),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
