/*
 * Structured output in the executor (anvil_request.grammar): on tinycode
 * at temperature 1, every sample constrained by a JSON schema parses and
 * has the schema's shape, every sample constrained by a regular expression
 * matches it, and both end with finish "stop"; n > 1 forks the parse with
 * the samples. Unconstrained requests batched with constrained ones give
 * the tokens they give alone (the grammar rows take the host path, the
 * others are untouched), with the overlap scheduler too, whose constrained
 * outputs equal the synchronous loop's; the metrics count a mask per
 * constrained token (grammar_s, within tokens_s). A grammar with beam search, or
 * over a vocabulary larger than the model's, is refused at enqueue.
 */
#include <regex.h>

#include "anvil/grammar.h"
#include "exec_testkit.h"

#define N_SEEDS 4
#define N_PLAIN 2

static anvil_runtime *rt;
static anvil_tokenizer *tok;
static anvil_grammar_vocab *gv;
static anvil_grammar *g_schema, *g_regex;

static const char schema[] = "{\"type\":\"object\",\"properties\":{"
                             "\"name\":{\"type\":\"string\",\"maxLength\":8},"
                             "\"kind\":{\"enum\":[\"a\",\"b\",3]},"
                             "\"ok\":{\"type\":\"boolean\"}},"
                             "\"required\":[\"name\",\"kind\",\"ok\"],\"additionalProperties\":false}";
static const char regex_src[] = "[a-z]{1,6}-[0-9]{2,4}";

static int setup(void **st)
{
    (void)st;
    anvil_runtime_options o;
    kit_rt_options(&o);
    rt = kit_load("tinycode", &o);
    tok = kit_tokenizer("tinycode");
    const anvil_model_config *cfg = anvil_runtime_config(rt);
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
    anvil_runtime_free(rt);
    return 0;
}

static void check_json(const anvil_sequence_output *o)
{
    assert_int_equal(o->finish, ANVIL_REQUEST_STOP);
    json_error_t err;
    json_t *j = json_loadb(o->text, o->text_len, 0, &err);
    if (j == NULL)
        fail_msg("not JSON: %s (%s)", o->text, err.text);
    assert_true(json_is_object(j));
    assert_int_equal(json_object_size(j), 3);
    json_t *name = json_object_get(j, "name"), *kind = json_object_get(j, "kind"), *ok = json_object_get(j, "ok");
    assert_true(json_is_string(name));
    assert_true(json_is_boolean(ok));
    assert_true((json_is_string(kind) && (strcmp(json_string_value(kind), "a") == 0 ||
                                          strcmp(json_string_value(kind), "b") == 0)) ||
                (json_is_integer(kind) && json_integer_value(kind) == 3));
    json_decref(j);
}

static void check_regex(const anvil_sequence_output *o)
{
    assert_int_equal(o->finish, ANVIL_REQUEST_STOP);
    regex_t re;
    assert_int_equal(regcomp(&re, "^[a-z]{1,6}-[0-9]{2,4}$", REG_EXTENDED | REG_NOSUB), 0);
    if (regexec(&re, o->text, 0, NULL, 0) != 0)
        fail_msg("does not match %s: \"%s\"", regex_src, o->text);
    regfree(&re);
}

static void make(anvil_request *q, int i, const anvil_grammar *g)
{
    anvil_request_init(q);
    q->prompt = i % 2 ? "def main():" : "{\"";
    q->max_tokens = g ? 160 : 8 + i % 4;
    q->has_seed = 1;
    q->sampling.seed = 7 + (uint64_t)i;
    q->sampling.temperature = 1.0f;
    q->grammar = g;
    q->retain_result = 1;
}

/* Runs N_SEEDS schema and N_SEEDS regex requests (the last of each with
 * n = 2), and with_plain: N_PLAIN unconstrained ones, all in flight
 * together; results in res[]. */
static void run_mix(anvil_executor *ex, int with_plain, anvil_result **res)
{
    uint64_t id[2 * N_SEEDS + N_PLAIN];
    int k = 0;
    for (int i = 0; i < N_SEEDS; i++) {
        anvil_request q;
        make(&q, i, g_schema);
        q.n = i == N_SEEDS - 1 ? 2 : 1;
        KIT_OK(anvil_executor_enqueue(ex, &q, &id[k++]));
        make(&q, 100 + i, g_regex);
        q.n = i == N_SEEDS - 1 ? 2 : 1;
        KIT_OK(anvil_executor_enqueue(ex, &q, &id[k++]));
        if (with_plain && i < N_PLAIN) {
            make(&q, 200 + i, NULL);
            KIT_OK(anvil_executor_enqueue(ex, &q, &id[k++]));
        }
    }
    for (int i = 0; i < k; i++)
        KIT_OK(anvil_executor_wait(ex, id[i], &res[i]));
}

static void check_mix(anvil_result **res, int with_plain)
{
    int k = 0;
    for (int i = 0; i < N_SEEDS; i++) {
        anvil_result *a = res[k++], *b = res[k++];
        assert_int_equal(a->n_sequences, i == N_SEEDS - 1 ? 2 : 1);
        for (int s = 0; s < a->n_sequences; s++)
            check_json(&a->sequences[s]);
        for (int s = 0; s < b->n_sequences; s++)
            check_regex(&b->sequences[s]);
        if (with_plain && i < N_PLAIN)
            k++;
    }
}

static void free_all(anvil_result **res, int n)
{
    for (int i = 0; i < n; i++)
        anvil_result_free(res[i]);
}

static void same_tokens(const anvil_result *a, const anvil_result *b)
{
    assert_int_equal(a->n_sequences, b->n_sequences);
    for (int s = 0; s < a->n_sequences; s++) {
        assert_int_equal(a->sequences[s].n_tokens, b->sequences[s].n_tokens);
        assert_memory_equal(a->sequences[s].token_ids, b->sequences[s].token_ids,
                            (size_t)a->sequences[s].n_tokens * sizeof(int32_t));
        assert_int_equal(a->sequences[s].finish, b->sequences[s].finish);
    }
}

static void test_constrained_and_plain(void **st)
{
    (void)st;
    anvil_executor *ex = kit_executor(rt, tok, ANVIL_CAPACITY_GUARANTEED_NO_EVICT);
    /* the unconstrained requests alone */
    anvil_result *alone[N_PLAIN];
    for (int i = 0; i < N_PLAIN; i++) {
        anvil_request q;
        make(&q, 200 + i, NULL);
        KIT_OK(anvil_executor_generate(ex, &q, &alone[i]));
    }
    anvil_executor_metrics m;
    KIT_OK(anvil_executor_stats(ex, &m));
    assert_int_equal(m.grammar_tokens, 0); /* unconstrained: no grammar time */
    assert_true(m.grammar_s == 0.0);
    anvil_result *mixed[2 * N_SEEDS + N_PLAIN];
    run_mix(ex, 1, mixed);
    check_mix(mixed, 1);
    /* the grammar's time: one mask per constrained token, give or take one
     * a sequence (its stop token, not in its tokens; n = 2's samples fork
     * after a mask), a part of tokens_s */
    KIT_OK(anvil_executor_stats(ex, &m));
    int64_t toks = 0, seqs = 0;
    for (int i = 0, k = 0; i < N_SEEDS; i++) {
        for (int j = 0; j < 2; j++, k++) {
            for (int s = 0; s < mixed[k]->n_sequences; s++)
                toks += mixed[k]->sequences[s].n_tokens;
            seqs += mixed[k]->n_sequences;
        }
        if (i < N_PLAIN)
            k++;
    }
    if (m.grammar_tokens < toks - seqs || m.grammar_tokens > toks + seqs)
        fail_msg("%lld masks for %lld constrained tokens of %lld sequences", (long long)m.grammar_tokens,
                 (long long)toks, (long long)seqs);
    assert_true(m.grammar_s > 0.0 && m.grammar_s <= m.tokens_s);
    for (int i = 0; i < N_PLAIN; i++)
        same_tokens(alone[i], mixed[3 * i + 2]);
    anvil_executor_free(ex);

    /* the overlap scheduler: the same outputs */
    anvil_executor_options eo;
    anvil_executor_options_default(&eo);
    eo.seed = 1234;
    eo.enable_overlap = ANVIL_OVERLAP_ALWAYS;
    KIT_OK(anvil_executor_create(rt, tok, &eo, &ex));
    anvil_result *ov[2 * N_SEEDS + N_PLAIN];
    run_mix(ex, 1, ov);
    for (int i = 0; i < 2 * N_SEEDS + N_PLAIN; i++)
        same_tokens(mixed[i], ov[i]);
    anvil_executor_free(ex);
    free_all(ov, 2 * N_SEEDS + N_PLAIN);
    free_all(mixed, 2 * N_SEEDS + N_PLAIN);
    free_all(alone, N_PLAIN);
}

static void test_refused(void **st)
{
    (void)st;
    anvil_executor *ex = kit_executor(rt, tok, ANVIL_CAPACITY_GUARANTEED_NO_EVICT);
    anvil_request q;
    make(&q, 0, g_schema);
    q.beam_width = 2;
    uint64_t id;
    assert_int_equal(anvil_executor_enqueue(ex, &q, &id), ANVIL_ERR_UNSUPPORTED);
    assert_non_null(strstr(anvil_last_error(), "beam search"));

    /* a vocabulary larger than the model's logits */
    anvil_grammar_vocab *big;
    anvil_grammar *g;
    const int32_t stop = 0;
    KIT_OK(anvil_grammar_vocab_from_tokenizer(tok, 9000, &stop, 1, &big));
    KIT_OK(anvil_grammar_compile_json_object(big, NULL, &g));
    make(&q, 0, g);
    assert_int_equal(anvil_executor_enqueue(ex, &q, &id), ANVIL_ERR_INVALID_ARG);
    assert_non_null(strstr(anvil_last_error(), "vocabulary"));
    anvil_executor_free(ex);
    anvil_grammar_free(g);
    anvil_grammar_vocab_free(big);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_constrained_and_plain),
        cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
