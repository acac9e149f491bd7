/*
 * Every error path of the executor: bad options, every refused request
 * (nothing queued, a message naming the problem), requests that can never
 * fit the KV cache (an `error` result under both policies, never a hang),
 * a full queue, wait and cancel on unknown ids, NULL handling; and the
 * runtime's kv_cache_fraction option.
 */
#include <math.h>

#include "exec_testkit.h"

typedef struct fixture {
    anvil_runtime *rt;
    anvil_executor *ex;
    int32_t prompt[8];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    anvil_runtime_options o;
    kit_rt_options(&o);
    o.kv_cache_tokens = 16 * 8; /* 8 blocks */
    f->rt = kit_load("stories260K", &o);
    f->ex = kit_executor(f->rt, NULL, ANVIL_CAPACITY_GUARANTEED_NO_EVICT);
    for (int i = 0; i < 8; i++)
        f->prompt[i] = 1 + i * 10;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    anvil_executor_free(f->ex);
    anvil_runtime_free(f->rt);
    free(f);
    return 0;
}

static anvil_request base(const fixture *f)
{
    anvil_request r;
    anvil_request_init(&r);
    r.prompt_ids = f->prompt;
    r.n_prompt_ids = 8;
    r.max_tokens = 4;
    return r;
}

#define REFUSED(field_assign, code, needle)                                     \
    do {                                                                        \
        anvil_request r_ = base(f);                                             \
        field_assign;                                                           \
        uint64_t id_ = 77;                                                      \
        assert_status_msg(anvil_executor_enqueue(f->ex, &r_, &id_), code, needle); \
        assert_int_equal(id_, 0);                                               \
    } while (0)

static void test_refused_requests(void **state)
{
    fixture *f = *state;
    const int32_t big[1] = {100000};
    int32_t *longp = calloc(600, sizeof *longp);
    const anvil_logit_bias bad_tok = {.token = 512, .bias = 1}, bad_bias = {.token = 5, .bias = 200};
    const int32_t bad_stop = -1;
    const char *stops[1] = {"x"}, *empty_stop[1] = {""};
    assert_status_msg(anvil_executor_enqueue(f->ex, NULL, NULL), ANVIL_ERR_INVALID_ARG, "NULL request");
    REFUSED(r_.prompt_ids = NULL, ANVIL_ERR_INVALID_ARG, "no prompt");
    REFUSED(r_.n_prompt_ids = 0, ANVIL_ERR_INVALID_ARG, "prompt is empty");
    REFUSED((r_.prompt_ids = NULL, r_.prompt = "hello"), ANVIL_ERR_INVALID_ARG, "needs a tokenizer");
    REFUSED((r_.prompt_ids = big, r_.n_prompt_ids = 1), ANVIL_ERR_INVALID_ARG, "outside the vocabulary");
    REFUSED((r_.prompt_ids = longp, r_.n_prompt_ids = 512), ANVIL_ERR_CAPACITY, "the context holds 512");
    REFUSED(r_.sampling.temperature = -1, ANVIL_ERR_INVALID_ARG, "temperature");
    REFUSED(r_.sampling.temperature = NAN, ANVIL_ERR_INVALID_ARG, "temperature");
    REFUSED(r_.sampling.top_p = 0, ANVIL_ERR_INVALID_ARG, "top_p");
    REFUSED(r_.sampling.top_p = 1.5f, ANVIL_ERR_INVALID_ARG, "top_p");
    REFUSED(r_.sampling.top_k = -2, ANVIL_ERR_INVALID_ARG, "top_k");
    REFUSED(r_.sampling.min_p = 1.5f, ANVIL_ERR_INVALID_ARG, "min_p");
    REFUSED(r_.repetition_penalty = 0, ANVIL_ERR_INVALID_ARG, "repetition_penalty");
    REFUSED(r_.presence_penalty = 2.5f, ANVIL_ERR_INVALID_ARG, "presence_penalty");
    REFUSED(r_.frequency_penalty = -3, ANVIL_ERR_INVALID_ARG, "frequency_penalty");
    REFUSED((r_.logit_bias = &bad_tok, r_.n_logit_bias = 1), ANVIL_ERR_INVALID_ARG, "outside the vocabulary");
    REFUSED((r_.logit_bias = &bad_bias, r_.n_logit_bias = 1), ANVIL_ERR_INVALID_ARG, "[-100, 100]");
    REFUSED(r_.n_logit_bias = 2, ANVIL_ERR_INVALID_ARG, "no array");
    REFUSED(r_.n = 0, ANVIL_ERR_INVALID_ARG, "n must be");
    REFUSED(r_.n = 33, ANVIL_ERR_INVALID_ARG, "n must be");
    REFUSED(r_.logprobs = 21, ANVIL_ERR_INVALID_ARG, "logprobs");
    REFUSED(r_.logprobs = -2, ANVIL_ERR_INVALID_ARG, "logprobs");
    REFUSED(r_.beam_width = 33, ANVIL_ERR_INVALID_ARG, "beam_width");
    REFUSED((r_.beam_width = 4, r_.n = 2), ANVIL_ERR_INVALID_ARG, "n > 1 with beam search");
    REFUSED((r_.beam_width = 4, r_.early_stopping = 2), ANVIL_ERR_INVALID_ARG, "early_stopping");
    REFUSED((r_.beam_width = 4, r_.length_penalty = INFINITY), ANVIL_ERR_INVALID_ARG, "length_penalty");
    REFUSED(r_.max_tokens = -1, ANVIL_ERR_INVALID_ARG, "max_tokens");
    REFUSED(r_.min_tokens = -1, ANVIL_ERR_INVALID_ARG, "min_tokens");
    REFUSED(r_.min_tokens = 5, ANVIL_ERR_INVALID_ARG, "exceeds max_tokens");
    REFUSED((r_.max_tokens = 0, r_.min_tokens = 600), ANVIL_ERR_INVALID_ARG, "the context leaves");
    REFUSED((r_.stop_token_ids = &bad_stop, r_.n_stop_token_ids = 1), ANVIL_ERR_INVALID_ARG, "stop_token_ids");
    REFUSED((r_.stop = stops, r_.n_stop = 1), ANVIL_ERR_INVALID_ARG, "need a tokenizer");
    free(longp);
    anvil_executor_metrics m;
    KIT_OK(anvil_executor_stats(f->ex, &m));
    assert_int_equal(m.queued + m.running + m.requests_finished, 0); /* nothing was queued */

    /* with a tokenizer: an empty stop string; beams with stop strings */
    anvil_tokenizer *tok = kit_tokenizer("stories260K");
    anvil_runtime_options o;
    kit_rt_options(&o);
    anvil_runtime *rt = kit_load("stories260K", &o);
    anvil_executor *ex = kit_executor(rt, tok, ANVIL_CAPACITY_GUARANTEED_NO_EVICT);
    anvil_request r = base(f);
    r.stop = empty_stop;
    r.n_stop = 1;
    assert_status_msg(anvil_executor_enqueue(ex, &r, NULL), ANVIL_ERR_INVALID_ARG, "stop string 0 is empty");
    r.stop = stops;
    r.beam_width = 2;
    assert_status_msg(anvil_executor_enqueue(ex, &r, NULL), ANVIL_ERR_UNSUPPORTED, "beam search");
    anvil_request_init(&r);
    r.prompt = "";
    r.add_special_tokens = 0;
    assert_status_msg(anvil_executor_enqueue(ex, &r, NULL), ANVIL_ERR_INVALID_ARG, "encodes to no tokens");
    anvil_executor_free(ex);
    anvil_runtime_free(rt);
    anvil_tokenizer_free(tok);
}

static void test_never_fits(void **state)
{
    fixture *f = *state;
    /* 8 blocks of 16 tokens: 8 + 200 tokens need 13 */
    for (int policy = 0; policy < 2; policy++) {
        anvil_runtime_options o;
        kit_rt_options(&o);
        o.kv_cache_tokens = 16 * 8;
        anvil_runtime *rt = kit_load("stories260K", &o);
        anvil_executor *ex = kit_executor(rt, NULL, (anvil_capacity_policy)policy);
        kit_stream stream;
        memset(&stream, 0, sizeof stream);
        anvil_request r = base(f);
        r.max_tokens = 200;
        r.on_event = kit_on_event;
        r.user = &stream;
        anvil_result *res = kit_run(ex, &r);
        assert_int_equal(res->finish, ANVIL_REQUEST_ERROR);
        assert_int_equal(res->status, ANVIL_ERR_CAPACITY);
        assert_non_null(strstr(res->error, "KV blocks"));
        assert_int_equal(stream.n_final, 1);
        assert_int_equal(stream.final_finish, ANVIL_REQUEST_ERROR);
        anvil_result_free(res);
        /* n samples that fit one at a time but not together */
        r = base(f);
        r.max_tokens = 100; /* 7 blocks each */
        r.n = 3;
        r.on_event = NULL;
        res = kit_run(ex, &r);
        assert_int_equal(res->finish, ANVIL_REQUEST_ERROR);
        anvil_result_free(res);
        /* the executor still works */
        r = base(f);
        r.max_tokens = 100;
        res = kit_run(ex, &r);
        assert_int_equal(res->finish, ANVIL_REQUEST_LENGTH);
        assert_int_equal(res->sequences[0].n_tokens, 100);
        anvil_result_free(res);
        anvil_executor_free(ex);
        anvil_runtime_free(rt);
    }
}

static void test_queue_full(void **state)
{
    fixture *f = *state;
    anvil_executor_options eo;
    anvil_executor_options_default(&eo);
    eo.max_queue_size = 1;
    anvil_runtime_options o;
    kit_rt_options(&o);
    anvil_runtime *rt = kit_load("stories260K", &o);
    anvil_executor *ex;
    KIT_OK(anvil_executor_create(rt, NULL, &eo, &ex));
    /* keep the loop busy, then fill the queue: some enqueue must be refused */
    anvil_request r = base(f);
    r.max_tokens = 300;
    r.ignore_eos = 1;
    int refused = 0;
    for (int i = 0; i < 50 && !refused; i++) {
        anvil_status st = anvil_executor_enqueue(ex, &r, NULL);
        if (st != ANVIL_OK) {
            assert_status_msg(st, ANVIL_ERR_CAPACITY, "queue is full");
            refused = 1;
        }
    }
    assert_true(refused);
    anvil_executor_free(ex);
    anvil_runtime_free(rt);
}

static void test_wait_and_cancel_errors(void **state)
{
    fixture *f = *state;
    anvil_result *res = (anvil_result *)1;
    assert_status_msg(anvil_executor_wait(f->ex, 12345, &res), ANVIL_ERR_NOT_FOUND, "no retained result");
    assert_null(res);
    anvil_request r = base(f);
    uint64_t id;
    KIT_OK(anvil_executor_enqueue(f->ex, &r, &id)); /* not retained */
    assert_status_msg(anvil_executor_wait(f->ex, id, &res), ANVIL_ERR_NOT_FOUND, "no retained result");
    r.retain_result = 1;
    KIT_OK(anvil_executor_enqueue(f->ex, &r, &id));
    KIT_OK(anvil_executor_wait(f->ex, id, &res));
    anvil_result_free(res);
    assert_status_msg(anvil_executor_wait(f->ex, id, &res), ANVIL_ERR_NOT_FOUND, "no retained result");
    assert_status_msg(anvil_executor_wait(f->ex, id, NULL), ANVIL_ERR_INVALID_ARG, "NULL");
    assert_status_msg(anvil_executor_cancel(NULL, 1), ANVIL_ERR_INVALID_ARG, "NULL");
    assert_status_msg(anvil_executor_stats(f->ex, NULL), ANVIL_ERR_INVALID_ARG, "NULL");
    assert_status_msg(anvil_executor_enqueue(NULL, &r, NULL), ANVIL_ERR_INVALID_ARG, "NULL");
    assert_status_msg(anvil_executor_generate(f->ex, &r, NULL), ANVIL_ERR_INVALID_ARG, "NULL");
    assert_status_msg(anvil_executor_generate(f->ex, NULL, &res), ANVIL_ERR_INVALID_ARG, "NULL request");
    r.sampling.temperature = -1;
    assert_status_msg(anvil_executor_generate(f->ex, &r, &res), ANVIL_ERR_INVALID_ARG, "temperature");
    assert_null(res);
    anvil_executor_free(NULL);
    anvil_result_free(NULL);
    assert_string_equal(anvil_request_finish_name(ANVIL_REQUEST_CANCELLED), "cancelled");
    assert_string_equal(anvil_request_finish_name(ANVIL_REQUEST_LENGTH), "length");
}

static void test_bad_options(void **state)
{
    fixture *f = *state;
    anvil_executor *ex = (anvil_executor *)1;
    assert_status_msg(anvil_executor_create(NULL, NULL, NULL, &ex), ANVIL_ERR_INVALID_ARG, "no runtime");
    assert_null(ex);
    anvil_executor_options eo;
    anvil_executor_options_default(&eo);
    eo.policy = (anvil_capacity_policy)7;
    assert_status_msg(anvil_executor_create(f->rt, NULL, &eo, &ex), ANVIL_ERR_INVALID_ARG, "policy");
    anvil_executor_options_default(&eo);
    eo.max_num_tokens = -1;
    assert_status_msg(anvil_executor_create(f->rt, NULL, &eo, &ex), ANVIL_ERR_INVALID_ARG, "negative");
    /* the fixture's executor holds every block: a second one has none */
    assert_status_msg(anvil_executor_create(f->rt, NULL, NULL, &ex), ANVIL_ERR_CAPACITY, "no free KV block");
    assert_null(ex);
}

static void test_kv_cache_fraction(void **state)
{
    (void)state;
    anvil_runtime_options o;
    kit_rt_options(&o);
    o.kv_cache_tokens = 0;
    o.kv_cache_fraction = 0.0001;
    anvil_runtime *rt = kit_load("stories260K", &o);
    const int32_t from_fraction = anvil_runtime_kv_blocks_total(rt);
    assert_true(from_fraction >= 1);
    anvil_runtime_free(rt);
    o.kv_cache_tokens = 16 * 3; /* both: the smaller */
    rt = kit_load("stories260K", &o);
    assert_int_equal(anvil_runtime_kv_blocks_total(rt), from_fraction < 3 ? from_fraction : 3);
    anvil_runtime_free(rt);
    o.kv_cache_fraction = 1.5;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/models/stories260K", anvil_test_shared_dir());
    assert_status_msg(anvil_runtime_load(dir, &o, &rt), ANVIL_ERR_INVALID_ARG, "kv_cache_fraction");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_refused_requests, setup, teardown),
        cmocka_unit_test_setup_teardown(test_never_fits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_full, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wait_and_cancel_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_options, setup, teardown),
        cmocka_unit_test(test_kv_cache_fraction),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
