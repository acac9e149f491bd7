/*
 * An engine gives exactly what its folder gives (issue 12): for every
 * golden model, built as stored and with --dtype bf16, the logits of every
 * golden prompt from the engine (read, and mapped) equal, bit for bit, the
 * logits of the same model loaded from its Hugging Face folder with the
 * same dtype, on the CPU. Also: the engine carries the tokenizer, chat
 * template and config (the same token ids for a text, the same rendered
 * chat), and a folder's --dtype other than the engine's is refused with a
 * message. The CUDA half (bf16) is tests/cuda/test_cuda_engine.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/builder.h"
#include "anvil/chat_template.h"
#include "anvil/runtime.h"
#include "anvil/tokenizer.h"
#include "engine_check.h"
#include "golden.h"
#include "testutil.h"

static const char *const models[] = {"stories260K", "tinycode", "tiny-llama3", "tiny-qwen2", "tiny-mistral",
                                     "tiny-qwen3", "tiny-phi3", "tiny-gemma2", "tiny-gpt2"};

static void test_logits_equal(void **st)
{
    (void)st;
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        if (!engine_model_present(models[i]))
            continue;
        engine_check_model(models[i], "cpu", ANVIL_DTYPE_COUNT);
        engine_check_model(models[i], "cpu", ANVIL_DTYPE_BF16);
    }
}

/* The engine carries the tokenizer and the chat template: the same ids for
 * a text and the same rendered chat as the folder. */
static void test_tokenizer_and_template_inside(void **st)
{
    (void)st;
    char dir[600], engine[700];
    snprintf(dir, sizeof dir, "%s/models/tiny-llama3", anvil_test_shared_dir());
    snprintf(engine, sizeof engine, "%s/tok.engine", anvil_test_tmpdir());
    assert_int_equal(anvil_build_engine(dir, engine, NULL), ANVIL_OK);
    assert_true(anvil_tokenizer_available(engine));
    anvil_tokenizer *a = NULL, *b = NULL;
    assert_int_equal(anvil_tokenizer_load(dir, &a), ANVIL_OK);
    assert_int_equal(anvil_tokenizer_load(engine, &b), ANVIL_OK);
    const char *text = "Hello, world! Ça va? 12345 \xe2\x9c\x93";
    int32_t *ia, *ib;
    int64_t na, nb;
    assert_int_equal(anvil_tokenizer_encode(a, text, strlen(text), 1, &ia, &na), ANVIL_OK);
    assert_int_equal(anvil_tokenizer_encode(b, text, strlen(text), 1, &ib, &nb), ANVIL_OK);
    assert_int_equal(na, nb);
    assert_memory_equal(ia, ib, (size_t)na * sizeof *ia);
    free(ia);
    free(ib);
    anvil_tokenizer_free(a);
    anvil_tokenizer_free(b);
    anvil_chat_template *ta = NULL, *tb = NULL;
    anvil_status sa = anvil_chat_template_load(dir, &ta), sb = anvil_chat_template_load(engine, &tb);
    assert_int_equal(sa, sb);
    if (sa == ANVIL_OK) {
        const char *msgs = "[{\"role\": \"user\", \"content\": \"Hi there\"}]";
        anvil_chat_render_options ro = {.add_generation_prompt = 1};
        char *ra = NULL, *rb = NULL;
        assert_int_equal(anvil_chat_template_render(ta, msgs, &ro, &ra), ANVIL_OK);
        assert_int_equal(anvil_chat_template_render(tb, msgs, &ro, &rb), ANVIL_OK);
        assert_string_equal(ra, rb);
        free(ra);
        free(rb);
    }
    anvil_chat_template_free(ta);
    anvil_chat_template_free(tb);
    /* a dtype other than the build's is refused, not converted */
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.weight_dtype = ANVIL_DTYPE_F16;
    anvil_runtime *rt = (anvil_runtime *)0x1;
    assert_status_msg(anvil_runtime_load(engine, &o, &rt), ANVIL_ERR_INVALID_ARG, "built with --dtype auto");
    assert_null(rt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logits_equal),
        cmocka_unit_test(test_tokenizer_and_template_inside),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
