/*
 * Beam search against Hugging Face: generate(num_beams=4,
 * num_return_sequences=4, length_penalty=1.0, early_stopping=True) in the
 * goldens of stories260K (24 new tokens) and tinycode (16): the same four
 * sequences, best first, and scores within 1e-3. All prompts of a model run
 * at once (beams of several requests share steps), on a pool small enough
 * to make forked beams copy their partly filled blocks.
 */
#include <math.h>

#include "exec_testkit.h"

static void check_model(const char *model, int32_t block_size)
{
    kit_case *cases = calloc(8, sizeof *cases);
    assert_non_null(cases);
    int n = kit_cases(model, cases, 8);
    anvil_runtime_options o;
    kit_rt_options(&o);
    o.kv_block_size = block_size;
    o.max_num_tokens = 128;
    anvil_runtime *rt = kit_load(model, &o);
    anvil_tokenizer *tok = kit_tokenizer(model);
    anvil_executor *ex = kit_executor(rt, tok, ANVIL_CAPACITY_GUARANTEED_NO_EVICT);
    uint64_t ids[8];
    int checked = 0;
    for (int i = 0; i < n; i++) {
        if (cases[i].n_beams != 4)
            continue;
        anvil_request r;
        anvil_request_init(&r);
        r.prompt_ids = cases[i].ids;
        r.n_prompt_ids = cases[i].n_ids;
        r.beam_width = 4;
        r.length_penalty = 1.0f;
        r.early_stopping = 1;
        r.max_tokens = cases[i].n_beam_tokens[0];
        r.logprobs = 0;
        r.retain_result = 1;
        KIT_OK(anvil_executor_enqueue(ex, &r, &ids[i]));
    }
    for (int i = 0; i < n; i++) {
        if (cases[i].n_beams != 4)
            continue;
        anvil_result *res;
        KIT_OK(anvil_executor_wait(ex, ids[i], &res));
        assert_int_equal(res->status, ANVIL_OK);
        assert_int_equal(res->n_sequences, 4);
        for (int b = 0; b < 4; b++) {
            const anvil_sequence_output *s = &res->sequences[b];
            char what[96];
            snprintf(what, sizeof what, "%s prompt%d beam %d", model, i, b);
            kit_expect_ids(what, s->token_ids, s->n_tokens, cases[i].beams[b], cases[i].n_beam_tokens[b]);
            if (fabs(s->score - cases[i].beam_scores[b]) > 1e-3)
                fail_msg("%s: score %.6f, HF %.6f", what, s->score, cases[i].beam_scores[b]);
            /* length penalty 1: the score is the mean log-probability, and
             * without processors the raw log-probs sum to it */
            double sum = 0;
            for (int32_t k = 0; k < s->n_tokens; k++)
                sum += s->logprobs[k];
            if (fabs(sum / s->n_tokens - s->score) > 1e-4)
                fail_msg("%s: logprobs sum %.6f over %d tokens vs score %.6f", what, sum, s->n_tokens, s->score);
            assert_non_null(s->text);
        }
        anvil_result_free(res);
        checked++;
    }
    assert_true(checked >= 4);
    anvil_executor_metrics m = kit_idle(ex);
    assert_int_equal(m.kv_blocks_used, 0);
    anvil_executor_free(ex);
    anvil_tokenizer_free(tok);
    anvil_runtime_free(rt);
    free(cases);
}

static void test_beam_stories260K(void **state)
{
    (void)state;
    check_model("stories260K", 16);
}

static void test_beam_stories260K_block8(void **state)
{
    (void)state;
    check_model("stories260K", 8);
}

static void test_beam_tinycode(void **state)
{
    (void)state;
    check_model("tinycode", 16);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_beam_stories260K),
        cmocka_unit_test(test_beam_stories260K_block8),
        cmocka_unit_test(test_beam_tinycode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
