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
#include "golden.h"
#include "testutil.h"

static const char *const models[] = {"stories260K", "tinycode", "tiny-llama3", "tiny-qwen2", "tiny-mistral",
                                     "tiny-qwen3", "tiny-phi3"};

static int model_present(const char *m)
{
    char path[600];
    snprintf(path, sizeof path, "%s/models/%s/config.json", anvil_test_shared_dir(), m);
    FILE *f = fopen(path, "r");
    if (f)
        fclose(f);
    return f != NULL;
}

static anvil_runtime *load(const char *path, anvil_dtype dt, int mmap)
{
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.n_threads = 2;
    o.max_num_tokens = 512;
    o.max_batch_size = 1;
    o.max_logit_rows = 512; /* every position's logits */
    o.kv_cache_tokens = 1024;
    o.max_seq_len = 1024;
    o.weight_dtype = dt;
    o.use_mmap = mmap;
    anvil_runtime *rt = NULL;
    if (anvil_runtime_load(path, &o, &rt) != ANVIL_OK)
        fail_msg("load %s: %s", path, anvil_last_error());
    return rt;
}

/* The logits of every position of a prompt (one prefill of up to 512 tokens). */
static float *logits_of(anvil_runtime *rt, const golden_case *gc)
{
    const int64_t V = anvil_runtime_config(rt)->vocab_size;
    const int32_t n = gc->n_ids < 512 ? gc->n_ids : 512;
    int32_t *pos = malloc((size_t)n * sizeof *pos), *rows = malloc((size_t)n * sizeof *rows);
    int32_t blocks[64], starts[2] = {0, n};
    const int32_t nb = (n + 31) / 32;
    assert_true(nb <= 64);
    assert_int_equal(anvil_runtime_kv_alloc(rt, nb, blocks), ANVIL_OK);
    for (int32_t i = 0; i < n; i++)
        pos[i] = rows[i] = i;
    float *out = malloc((size_t)n * (size_t)V * sizeof *out);
    anvil_batch b = {.n_tokens = n, .token_ids = gc->ids, .positions = pos, .n_seqs = 1, .seq_starts = starts,
                     .block_tables = blocks, .max_blocks_per_seq = nb, .n_logits = n, .logit_rows = rows};
    if (anvil_runtime_forward(rt, &b, out) != ANVIL_OK)
        fail_msg("forward: %s", anvil_last_error());
    anvil_runtime_kv_release(rt, nb, blocks);
    free(pos);
    free(rows);
    return out;
}

static void check_model(const char *m, anvil_dtype dt)
{
    char dir[600], engine[700];
    snprintf(dir, sizeof dir, "%s/models/%s", anvil_test_shared_dir(), m);
    snprintf(engine, sizeof engine, "%s/%s-%s.engine", anvil_test_tmpdir(), m,
             dt == ANVIL_DTYPE_COUNT ? "auto" : anvil_dtype_name(dt));
    anvil_build_options bo;
    anvil_build_options_default(&bo);
    bo.weight_dtype = dt;
    bo.n_threads = 2;
    if (anvil_build_engine(dir, engine, &bo) != ANVIL_OK)
        fail_msg("build %s: %s", m, anvil_last_error());
    golden g;
    golden_load(m, &g);
    anvil_runtime *folder = load(dir, dt, 0), *read = load(engine, ANVIL_DTYPE_COUNT, 0),
                  *mapped = load(engine, ANVIL_DTYPE_COUNT, 1);
    const int64_t V = anvil_runtime_config(folder)->vocab_size;
    assert_int_equal(anvil_runtime_weight_bytes(read), anvil_runtime_weight_bytes(folder));
    assert_int_equal(anvil_runtime_compute_dtype(read), anvil_runtime_compute_dtype(folder));
    for (int c = 0; c < g.n_cases; c++) {
        const golden_case *gc = &g.cases[c];
        float *want = logits_of(folder, gc), *a = logits_of(read, gc), *b = logits_of(mapped, gc);
        const size_t bytes = (size_t)(gc->n_ids < 512 ? gc->n_ids : 512) * (size_t)V * sizeof(float);
        if (memcmp(want, a, bytes) != 0 || memcmp(want, b, bytes) != 0)
            fail_msg("%s (%s) %s: the engine's logits differ from the folder's", m,
                     dt == ANVIL_DTYPE_COUNT ? "auto" : anvil_dtype_name(dt), gc->name);
        free(want);
        free(a);
        free(b);
    }
    anvil_runtime_free(folder);
    anvil_runtime_free(read);
    anvil_runtime_free(mapped);
    golden_free(&g);
}

static void test_logits_equal(void **st)
{
    (void)st;
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        if (!model_present(models[i]))
            continue;
        check_model(models[i], ANVIL_DTYPE_COUNT);
        check_model(models[i], ANVIL_DTYPE_BF16);
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
