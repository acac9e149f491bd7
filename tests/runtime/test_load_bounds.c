/*
 * Loads of a real small checkpoint (a copy of stories260K) whose config.json
 * or options ask for absurd sizes: each fails before anything large is
 * allocated, with a message naming the config key or option and the bound
 * or the bytes; none is cut to 32 bits and run. And the sizes the load
 * plans (anvil_runtime_plan_sizes) are the ones it allocates.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "anvil/model_config.h"
#include "anvil/runtime.h"
#include "runtime/rope_table.h"
#include "runtime/runtime_plan.h"
#include "testutil.h"

/* tmp/<name>: stories260K with config key set to the JSON value (NULL: unchanged). */
static const char *make_model(const char *name, const char *key, const char *value)
{
    static char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", anvil_test_tmpdir(), name);
    mkdir(dir, 0755);
    char src[512], dst[600];
    snprintf(src, sizeof src, "%s/models/stories260K/config.json", anvil_test_shared_dir());
    json_error_t err;
    json_t *cfg = json_load_file(src, 0, &err);
    assert_non_null(cfg);
    if (key != NULL) {
        json_t *v = json_loads(value, JSON_DECODE_ANY, &err);
        assert_non_null(v);
        json_object_set_new(cfg, key, v);
    }
    snprintf(dst, sizeof dst, "%s/config.json", dir);
    assert_int_equal(json_dump_file(cfg, dst, JSON_INDENT(2)), 0);
    json_decref(cfg);
    /* the weights, copied (a regular file, as a model folder has) */
    snprintf(src, sizeof src, "%s/models/stories260K/model.safetensors", anvil_test_shared_dir());
    snprintf(dst, sizeof dst, "%s/model.safetensors", dir);
    FILE *in = fopen(src, "rb"), *out = fopen(dst, "wb");
    assert_non_null(in);
    assert_non_null(out);
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        assert_int_equal(fwrite(buf, 1, n, out), n);
    fclose(in);
    assert_int_equal(fclose(out), 0);
    return dir;
}

static void small_options(anvil_runtime_options *o)
{
    anvil_runtime_options_default(o);
    o->n_threads = 1;
}

static anvil_status try_load(const char *dir, const anvil_runtime_options *o)
{
    anvil_runtime *rt = (anvil_runtime *)0x1;
    anvil_status st = anvil_runtime_load(dir, o, &rt);
    assert_null(rt);
    return st;
}

/* 10^6 layers: refused by the config's bound, before a network is built. */
static void test_million_layers(void **state)
{
    (void)state;
    anvil_runtime_options o;
    small_options(&o);
    const char *dir = make_model("layers1e6", "num_hidden_layers", "1000000");
    assert_status_msg(try_load(dir, &o), ANVIL_ERR_UNSUPPORTED,
                      "config.json: num_hidden_layers is 1000000; anvil supports at most 1024");
    static const char *const more[] = {"1000000000", "2147483648", "9223372036854775807"};
    for (size_t i = 0; i < sizeof more / sizeof more[0]; i++) {
        dir = make_model("layersbig", "num_hidden_layers", more[i]);
        assert_status_msg(try_load(dir, &o), ANVIL_ERR_UNSUPPORTED, "num_hidden_layers is");
    }
    /* within the bound but not in the checkpoint: said before any weight is read */
    dir = make_model("layers1000", "num_hidden_layers", "1000");
    assert_status_msg(try_load(dir, &o), ANVIL_ERR_FORMAT,
                      "num_hidden_layers is 1000 but the checkpoint holds layers 0 to 4 only");
    assert_non_null(strstr(anvil_last_error(), "model.layers.5."));
}

/* Contexts that were cut to 32 bits (2^32 + 512 ran as 512) or overflowed. */
static void test_context_never_truncated(void **state)
{
    (void)state;
    anvil_runtime_options o;
    small_options(&o);
    static const char *const ctx[] = {"2147483647", "2147483648", "4294967808", "1099511627776",
                                      "9223372036854775807"};
    for (size_t i = 0; i < sizeof ctx / sizeof ctx[0]; i++) {
        const char *dir = make_model("ctx", "max_position_embeddings", ctx[i]);
        char want[128];
        snprintf(want, sizeof want, "max_position_embeddings is %s; anvil supports at most %d", ctx[i],
                 ANVIL_MAX_CONTEXT);
        assert_status_msg(try_load(dir, &o), ANVIL_ERR_UNSUPPORTED, want);
        /* also with a max_seq_len given: the config itself is out of bounds */
        o.max_seq_len = 256;
        assert_status_msg(try_load(dir, &o), ANVIL_ERR_UNSUPPORTED, want);
        o.max_seq_len = 0;
    }
    /* as an option too */
    const char *dir = make_model("ctxok", NULL, NULL);
    o.max_seq_len = ANVIL_MAX_CONTEXT + 1;
    char want[128];
    snprintf(want, sizeof want, "max_seq_len is %d; anvil supports at most %d", ANVIL_MAX_CONTEXT + 1,
             ANVIL_MAX_CONTEXT);
    assert_status_msg(try_load(dir, &o), ANVIL_ERR_UNSUPPORTED, want);
}

/*
 * A context within the bound whose KV cache (one context, by default) could
 * never fit: refused before the weights load, naming the bytes and what to
 * change; with max_seq_len given, the same model loads. (2^28 tokens of
 * 1280 bytes is 320 GiB: more than any machine these tests run on has free.)
 */
static void test_kv_cache_that_cannot_fit(void **state)
{
    (void)state;
    anvil_runtime_options o;
    small_options(&o);
    char num[32];
    snprintf(num, sizeof num, "%d", ANVIL_MAX_CONTEXT);
    const char *dir = make_model("ctxmax", "max_position_embeddings", num);
    assert_status_msg(try_load(dir, &o), ANVIL_ERR_OOM, "the KV cache for 268435456 tokens (1.2 KiB a token");
    const char *msg = anvil_last_error();
    assert_non_null(strstr(msg, "would take 320.0 GiB"));
    assert_non_null(strstr(msg, "--max-seq-len"));
    assert_non_null(strstr(msg, "max_position_embeddings"));
    o.max_seq_len = 1024;
    anvil_runtime *rt = NULL;
    if (anvil_runtime_load(dir, &o, &rt) != ANVIL_OK)
        fail_msg("%s", anvil_last_error());
    assert_int_equal(anvil_runtime_options_get(rt)->max_seq_len, 1024);
    anvil_runtime_free(rt);
    /* a pool given in tokens is checked the same way */
    small_options(&o);
    o.kv_cache_tokens = (int64_t)1 << 35;
    dir = make_model("plain", NULL, NULL);
    assert_status_msg(try_load(dir, &o), ANVIL_ERR_OOM, "the KV cache for 34359738368 tokens");
    assert_non_null(strstr(anvil_last_error(), "--kv-cache-tokens"));
    o.kv_cache_tokens = (int64_t)1 << 40; /* more blocks than int32 counts */
    assert_status_msg(try_load(dir, &o), ANVIL_ERR_INVALID_ARG, "kv_cache_tokens is 1099511627776");
    /* step metadata: a block table for each of 2^31 - 1 sequences */
    small_options(&o);
    o.max_batch_size = INT32_MAX;
    assert_status_msg(try_load(dir, &o), ANVIL_ERR_OOM, "the step metadata");
    /* activations for 2^31 - 1 tokens a step */
    small_options(&o);
    o.max_num_tokens = INT32_MAX;
    o.max_batch_size = 1;
    anvil_status st = try_load(dir, &o);
    assert_true(st == ANVIL_ERR_OOM);
    assert_non_null(strstr(anvil_last_error(), "2147483647 tokens"));
}

/*
 * A pool sized from memory smaller than the config's context: max_seq_len
 * becomes what it holds (documented, logged); a max_seq_len that was given
 * stays.
 */
static void test_context_lowered_to_the_pool(void **state)
{
    (void)state;
    const char *dir = make_model("fraction", NULL, NULL);
    anvil_runtime_options o;
    small_options(&o);
    o.kv_cache_fraction = 1e-12; /* at least one block, never 16 of 32 tokens */
    anvil_runtime *rt = NULL;
    if (anvil_runtime_load(dir, &o, &rt) != ANVIL_OK)
        fail_msg("%s", anvil_last_error());
    assert_int_equal(anvil_runtime_kv_blocks_total(rt), 1);
    assert_int_equal(anvil_runtime_options_get(rt)->max_seq_len, 32);
    anvil_runtime_free(rt);
    o.max_seq_len = 512;
    if (anvil_runtime_load(dir, &o, &rt) != ANVIL_OK)
        fail_msg("%s", anvil_last_error());
    assert_int_equal(anvil_runtime_kv_blocks_total(rt), 1);
    assert_int_equal(anvil_runtime_options_get(rt)->max_seq_len, 512);
    anvil_runtime_free(rt);
}

/* The planner's sizes are the ones the load allocates. */
static void test_plan_sizes(void **state)
{
    (void)state;
    char rel[] = "models/stories260K";
    anvil_model_config c;
    assert_int_equal(anvil_model_config_load(anvil_test_shared_path(rel), &c), ANVIL_OK);
    anvil_runtime_sizes z;
    assert_int_equal(anvil_runtime_plan_sizes(&c, NULL, ANVIL_DTYPE_F32, 0, &z), ANVIL_OK);
    assert_int_equal(z.max_seq_len, 512);
    assert_int_equal(z.kv_cache_tokens, 512);
    assert_int_equal(z.n_kv_layers, 5);
    assert_int_equal(z.kv_bytes_per_token, 5 * 2 * 4 * 8 * 4);
    /* 16 blocks of 32 tokens, and a free-list entry and a used flag per block */
    assert_int_equal(z.kv_bytes, 16 * 32 * 1280 + 16 * 5);
    assert_true(z.n_act_buffers > 0 && z.act_bytes >= (size_t)512 * 172 * 4);
    assert_true(z.step_bytes > 0);
    /* the same options on a real load: as many blocks */
    anvil_runtime_options o;
    small_options(&o);
    anvil_runtime *rt = NULL;
    assert_int_equal(anvil_runtime_load(anvil_test_shared_path(rel), &o, &rt), ANVIL_OK);
    assert_int_equal(anvil_runtime_kv_blocks_total(rt), (int32_t)(z.kv_cache_tokens / 32));
    anvil_runtime_free(rt);
    /* a limit: what does not fit is named */
    assert_status_msg(anvil_runtime_plan_sizes(&c, NULL, ANVIL_DTYPE_F32, 1000000, &z), ANVIL_ERR_OOM,
                      "activations would take");
    assert_int_equal(z.kv_bytes, 0); /* nothing half-filled on failure */
    anvil_runtime_options_default(&o);
    o.max_num_tokens = 16;
    assert_status_msg(anvil_runtime_plan_sizes(&c, &o, ANVIL_DTYPE_F32, 600000, &z), ANVIL_ERR_OOM,
                      "the KV cache would take 640.1 KiB (655440 bytes), over the limit of");
    /* bf16 activations halve the KV cache */
    assert_int_equal(anvil_runtime_plan_sizes(&c, NULL, ANVIL_DTYPE_BF16, 0, &z), ANVIL_OK);
    assert_int_equal(z.kv_bytes_per_token, 640);
    /* a hand-made config out of bounds never gets to a size */
    anvil_model_config bad = c;
    bad.n_heads = (int64_t)1 << 61;
    assert_status_msg(anvil_runtime_plan_sizes(&bad, NULL, ANVIL_DTYPE_F32, 0, &z), ANVIL_ERR_UNSUPPORTED,
                      "num_attention_heads");
    bad = c;
    bad.max_position_embeddings = ((int64_t)1 << 32) + 512;
    assert_status_msg(anvil_runtime_plan_sizes(&bad, NULL, ANVIL_DTYPE_F32, 0, &z), ANVIL_ERR_UNSUPPORTED,
                      "max_position_embeddings is 4294967808");
}

/* RoPE tables from parameters no config would pass: an error, never NaN angles. */
static void test_rope_table_guard(void **state)
{
    (void)state;
    float t[64];
    anvil_rope_config r = {.type = ANVIL_ROPE_DEFAULT, .theta = 10000.0, .factor = 1.0};
    assert_int_equal(anvil_rope_inv_freq(&r, 64, t), ANVIL_OK);
    r.theta = 1e-30;
    assert_status_msg(anvil_rope_inv_freq(&r, 64, t), ANVIL_ERR_FORMAT, "rope");
    r.theta = 1e300;
    assert_status_msg(anvil_rope_inv_freq(&r, 64, t), ANVIL_ERR_FORMAT, "theta");
    r.theta = 10000.0;
    r.type = ANVIL_ROPE_LINEAR;
    r.factor = 1e-30;
    assert_status_msg(anvil_rope_inv_freq(&r, 64, t), ANVIL_ERR_FORMAT, "rope");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_million_layers),
        cmocka_unit_test(test_context_never_truncated),
        cmocka_unit_test(test_kv_cache_that_cannot_fit),
        cmocka_unit_test(test_context_lowered_to_the_pool),
        cmocka_unit_test(test_plan_sizes),
        cmocka_unit_test(test_rope_table_guard),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
