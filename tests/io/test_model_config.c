/* HF config.json / generation_config.json: the nine shared models, both key
 * styles, per-family defaults, and bad configs (status + message). */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "anvil/model_config.h"
#include "testutil.h"

static void load(const char *model, anvil_model_config *c)
{
    char rel[256];
    snprintf(rel, sizeof rel, "models/%s", model);
    anvil_status st = anvil_model_config_load(anvil_test_shared_path(rel), c);
    if (st != ANVIL_OK)
        fail_msg("%s: %s", model, anvil_last_error());
}

/* A full classic-style Llama config with one key replaced (or removed when
 * value is NULL), for the bad-config tests. */
static const char *llama_json(const char *key, const char *value)
{
    static const char *keys[] = {"architectures",       "model_type",          "vocab_size",
                                 "hidden_size",         "intermediate_size",   "num_hidden_layers",
                                 "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                                 "rms_norm_eps",        "rope_theta",          "rope_scaling",
                                 "torch_dtype",         "bos_token_id",        "eos_token_id"};
    static const char *vals[] = {"[\"LlamaForCausalLM\"]",
                                 "\"llama\"",
                                 "32000",
                                 "4096",
                                 "11008",
                                 "32",
                                 "32",
                                 "8",
                                 "4096",
                                 "1e-5",
                                 "500000.0",
                                 "null",
                                 "\"bfloat16\"",
                                 "1",
                                 "2"};
    static char buf[2048];
    int replaced = 0;
    size_t n = (size_t)snprintf(buf, sizeof buf, "{");
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const char *v = vals[i];
        if (strcmp(keys[i], key) == 0) {
            v = value;
            replaced = 1;
        }
        if (v != NULL)
            n += (size_t)snprintf(buf + n, sizeof buf - n, "%s\"%s\": %s", n > 1 ? ", " : "", keys[i], v);
    }
    if (!replaced && value != NULL)
        n += (size_t)snprintf(buf + n, sizeof buf - n, ", \"%s\": %s", key, value);
    snprintf(buf + n, sizeof buf - n, "}");
    return buf;
}

/* ------------------------------------------------------ the shared models */

static void test_stories260k(void **state)
{
    (void)state;
    anvil_model_config c;
    load("stories260K", &c);
    assert_string_equal(c.architecture, "LlamaForCausalLM");
    assert_string_equal(c.model_type, "llama");
    assert_int_equal(c.vocab_size, 512);
    assert_int_equal(c.hidden_size, 64);
    assert_int_equal(c.intermediate_size, 172);
    assert_int_equal(c.n_layers, 5);
    assert_int_equal(c.n_heads, 8);
    assert_int_equal(c.n_kv_heads, 4);
    assert_int_equal(c.head_dim, 8);
    assert_int_equal(c.max_position_embeddings, 512);
    assert_true(c.rms_norm_eps == 1e-5);
    assert_int_equal(c.rope.type, ANVIL_ROPE_DEFAULT);
    assert_true(c.rope.theta == 10000.0);
    assert_int_equal(c.tie_word_embeddings, 1);
    assert_int_equal(c.attention_bias, 0);
    assert_int_equal(c.attention_out_bias, 0);
    assert_int_equal(c.mlp_bias, 0);
    assert_int_equal(c.qk_norm, 0);
    assert_int_equal(c.sliding_window, 0);
    assert_int_equal(c.dtype, ANVIL_DTYPE_F32);
    assert_int_equal(c.bos_token_id, 1);
    assert_int_equal(c.pad_token_id, -1); /* absent */
    assert_int_equal(c.n_eos_token_ids, 1);
    assert_int_equal(c.eos_token_ids[0], 2);
    /* its generation_config.json has no sampling defaults */
    assert_true(c.gen_temperature < 0);
    assert_int_equal(c.gen_top_k, -1);
    assert_true(c.gen_top_p < 0);
}

static void test_tiny_llama3(void **state)
{
    (void)state;
    anvil_model_config c;
    load("tiny-llama3", &c);
    assert_int_equal(c.head_dim, 16); /* heads x head_dim != hidden */
    assert_int_equal(c.n_kv_heads, 2);
    assert_int_equal(c.rope.type, ANVIL_ROPE_LLAMA3);
    assert_true(c.rope.theta == 500000.0);
    assert_true(c.rope.factor == 8.0);
    assert_true(c.rope.low_freq_factor == 1.0);
    assert_true(c.rope.high_freq_factor == 4.0);
    assert_int_equal(c.rope.original_max_position, 32);
    assert_int_equal(c.tie_word_embeddings, 0);
    assert_int_equal(c.dtype, ANVIL_DTYPE_BF16);
    assert_true(c.rms_norm_eps == 1e-6);
    assert_int_equal(c.pad_token_id, 0);
}

static void test_tiny_qwen2(void **state)
{
    (void)state;
    anvil_model_config c;
    load("tiny-qwen2", &c);
    assert_string_equal(c.architecture, "Qwen2ForCausalLM");
    assert_int_equal(c.attention_bias, 1); /* not a key: Qwen2 always has q/k/v biases */
    assert_int_equal(c.attention_out_bias, 0);
    assert_int_equal(c.mlp_bias, 0);
    assert_true(c.rope.theta == 1e6);
    assert_int_equal(c.rope.type, ANVIL_ROPE_DEFAULT);
    assert_int_equal(c.dtype, ANVIL_DTYPE_F16);
    assert_int_equal(c.head_dim, 8); /* no head_dim key: hidden / heads */
    assert_int_equal(c.sliding_window, 0);
    assert_int_equal(c.tie_word_embeddings, 0);
    assert_int_equal(c.qk_norm, 0);
}

static void test_tiny_mistral(void **state)
{
    (void)state;
    anvil_model_config c;
    load("tiny-mistral", &c);
    assert_int_equal(c.sliding_window, 16);
    assert_int_equal(c.attention_bias, 0);
    assert_int_equal(c.dtype, ANVIL_DTYPE_F32);
    assert_int_equal(c.tie_word_embeddings, 0);
    assert_int_equal(c.head_dim, 8);
}

static void test_tiny_qwen3(void **state)
{
    (void)state;
    anvil_model_config c;
    load("tiny-qwen3", &c);
    assert_int_equal(c.qk_norm, 1);
    assert_int_equal(c.head_dim, 32);
    assert_int_equal(c.sliding_window, 0);
    assert_int_equal(c.attention_bias, 0); /* attention_bias: false */
    assert_int_equal(c.tie_word_embeddings, 1);
    assert_int_equal(c.dtype, ANVIL_DTYPE_BF16);
    assert_true(c.rope.theta == 1e6);
}

static void test_other_models(void **state)
{
    (void)state;
    anvil_model_config c;
    load("tiny-phi3", &c);
    assert_string_equal(c.model_type, "phi3");
    assert_int_equal(c.n_kv_heads, 8);
    assert_int_equal(c.sliding_window, 0); /* null */
    assert_int_equal(c.tie_word_embeddings, 0);

    load("tiny-mixtral", &c);
    assert_string_equal(c.model_type, "mixtral");
    assert_int_equal(c.head_dim, 8); /* head_dim: null */
    assert_int_equal(c.sliding_window, 0);
    assert_true(c.rope.theta == 1e6);

    load("tiny-gemma2", &c);
    assert_string_equal(c.architecture, "Gemma2ForCausalLM");
    assert_int_equal(c.head_dim, 16);
    assert_int_equal(c.sliding_window, 16);
    assert_int_equal(c.tie_word_embeddings, 1);

    load("tinycode", &c);
    assert_int_equal(c.bos_token_id, 0);
    assert_int_equal(c.n_eos_token_ids, 1);
    assert_int_equal(c.eos_token_ids[0], 0);
    assert_int_equal(c.pad_token_id, 0);
    assert_int_equal(c.vocab_size, 8192);
    assert_int_equal(c.hidden_size, 384);
    assert_int_equal(c.n_heads, 6);
    assert_int_equal(c.n_kv_heads, 2);
    assert_int_equal(c.head_dim, 64);
    assert_int_equal(c.tie_word_embeddings, 1);
    assert_int_equal(c.dtype, ANVIL_DTYPE_BF16);
}

/* ------------------------------------------------- key styles, defaults */

static void test_classic_llama31_rope_scaling(void **state)
{
    (void)state;
    anvil_model_config c;
    const char *j =
        llama_json("rope_scaling", "{\"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0,"
                                   " \"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"}");
    assert_int_equal(anvil_model_config_parse(j, &c), ANVIL_OK);
    assert_int_equal(c.rope.type, ANVIL_ROPE_LLAMA3);
    assert_true(c.rope.theta == 500000.0);
    assert_int_equal(c.rope.original_max_position, 8192);
    assert_int_equal(c.head_dim, 128);
    assert_int_equal(c.n_kv_heads, 8);
    assert_int_equal(c.tie_word_embeddings, 0); /* LlamaConfig's default */
    assert_int_equal(c.dtype, ANVIL_DTYPE_BF16);
    assert_true(c.gen_temperature < 0);

    /* the older spelling "type", and linear scaling */
    assert_int_equal(
        anvil_model_config_parse(llama_json("rope_scaling", "{\"type\": \"linear\", \"factor\": 4}"), &c),
        ANVIL_OK);
    assert_int_equal(c.rope.type, ANVIL_ROPE_LINEAR);
    assert_true(c.rope.factor == 4.0);
    assert_int_equal(anvil_model_config_parse(llama_json("rope_scaling", "{\"rope_type\": \"default\"}"), &c),
                     ANVIL_OK);
    assert_int_equal(c.rope.type, ANVIL_ROPE_DEFAULT);

    /* eos as a list; pad null; explicit tie */
    assert_int_equal(anvil_model_config_parse(llama_json("eos_token_id", "[128001, 128008, 128009]"), &c),
                     ANVIL_OK);
    assert_int_equal(c.n_eos_token_ids, 3);
    assert_int_equal(c.eos_token_ids[2], 128009);
    assert_int_equal(anvil_model_config_parse(llama_json("pad_token_id", "null"), &c), ANVIL_OK);
    assert_int_equal(c.pad_token_id, -1);
    assert_int_equal(anvil_model_config_parse(llama_json("tie_word_embeddings", "true"), &c), ANVIL_OK);
    assert_int_equal(c.tie_word_embeddings, 1);
    assert_int_equal(anvil_model_config_parse(llama_json("attention_bias", "true"), &c), ANVIL_OK);
    assert_int_equal(c.attention_bias, 1);
    assert_int_equal(c.attention_out_bias, 1);
    /* num_key_value_heads absent: as many as heads */
    assert_int_equal(anvil_model_config_parse(llama_json("num_key_value_heads", NULL), &c), ANVIL_OK);
    assert_int_equal(c.n_kv_heads, 32);
}

static void test_family_rules(void **state)
{
    (void)state;
    anvil_model_config c;
    /* Qwen2: sliding_window is ignored unless use_sliding_window */
    const char *q =
        "{\"model_type\": \"qwen2\", \"vocab_size\": 10, \"hidden_size\": 64, \"intermediate_size\": 8,"
        " \"num_hidden_layers\": 4, \"num_attention_heads\": 4, \"num_key_value_heads\": 2,"
        " \"max_position_embeddings\": 128, \"sliding_window\": 32, \"use_sliding_window\": %s,"
        " \"max_window_layers\": %s, \"attention_bias\": false}";
    char buf[1024];
    snprintf(buf, sizeof buf, q, "false", "0");
    assert_int_equal(anvil_model_config_parse(buf, &c), ANVIL_OK);
    assert_int_equal(c.sliding_window, 0);
    assert_int_equal(c.attention_bias, 1); /* the key does not turn Qwen2's biases off */
    assert_int_equal(c.tie_word_embeddings, 0);
    assert_true(c.rope.theta == 10000.0);
    assert_int_equal(c.dtype, ANVIL_DTYPE_F32); /* no dtype key */
    snprintf(buf, sizeof buf, q, "true", "0");
    assert_int_equal(anvil_model_config_parse(buf, &c), ANVIL_OK);
    assert_int_equal(c.sliding_window, 32);
    snprintf(buf, sizeof buf, q, "true", "28"); /* no layer reaches 28 */
    assert_int_equal(anvil_model_config_parse(buf, &c), ANVIL_OK);
    assert_int_equal(c.sliding_window, 0);
    snprintf(buf, sizeof buf, q, "true", "2");
    assert_status_msg(anvil_model_config_parse(buf, &c), ANVIL_ERR_UNSUPPORTED, "max_window_layers");

    /* Mistral: null window means none */
    const char *m =
        "{\"model_type\": \"mistral\", \"vocab_size\": 10, \"hidden_size\": 64, \"intermediate_size\": 8,"
        " \"num_hidden_layers\": 1, \"num_attention_heads\": 4, \"max_position_embeddings\": 128,"
        " \"sliding_window\": null, \"torch_dtype\": \"float16\"}";
    assert_int_equal(anvil_model_config_parse(m, &c), ANVIL_OK);
    assert_int_equal(c.sliding_window, 0);
    assert_int_equal(c.dtype, ANVIL_DTYPE_F16);
    assert_int_equal(c.n_kv_heads, 4);
    assert_int_equal(c.head_dim, 16);
    assert_int_equal(c.bos_token_id, -1);
    assert_int_equal(c.n_eos_token_ids, 0);

    /* an unknown model_type gets PretrainedConfig's tied default */
    const char *u =
        "{\"model_type\": \"newthing\", \"vocab_size\": 10, \"hidden_size\": 64, \"intermediate_size\": 8,"
        " \"num_hidden_layers\": 1, \"num_attention_heads\": 4, \"max_position_embeddings\": 128}";
    assert_int_equal(anvil_model_config_parse(u, &c), ANVIL_OK);
    assert_int_equal(c.tie_word_embeddings, 1);
    assert_string_equal(c.architecture, "");
}

static void test_generation_config(void **state)
{
    (void)state;
    const char *dir = anvil_test_tmpdir();
    char path[1024];
    snprintf(path, sizeof path, "%s/config.json", dir);
    const char *j = llama_json("eos_token_id", "128001");
    anvil_test_write_file(path, j, strlen(j));
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    const char *g =
        "{\"bos_token_id\": 128000, \"do_sample\": true, \"eos_token_id\": [128001, 128008, 128009],"
        " \"temperature\": 0.6, \"top_p\": 0.9, \"top_k\": 20}";
    anvil_test_write_file(path, g, strlen(g));
    anvil_model_config c;
    assert_int_equal(anvil_model_config_load(dir, &c), ANVIL_OK);
    assert_int_equal(c.bos_token_id, 128000);
    assert_int_equal(c.n_eos_token_ids, 3);
    assert_int_equal(c.eos_token_ids[0], 128001);
    assert_int_equal(c.eos_token_ids[2], 128009);
    assert_true(fabsf(c.gen_temperature - 0.6f) < 1e-7f);
    assert_true(fabsf(c.gen_top_p - 0.9f) < 1e-7f);
    assert_int_equal(c.gen_top_k, 20);

    /* without eos there, config.json's stays */
    g = "{\"temperature\": 0.7}";
    anvil_test_write_file(path, g, strlen(g));
    assert_int_equal(anvil_model_config_load(dir, &c), ANVIL_OK);
    assert_int_equal(c.n_eos_token_ids, 1);
    assert_int_equal(c.eos_token_ids[0], 128001);
    assert_int_equal(c.bos_token_id, 1);
    assert_int_equal(c.gen_top_k, -1);
    assert_true(c.gen_top_p < 0);

    /* bad generation configs name the file */
    g = "{\"top_p\": \"high\"}";
    anvil_test_write_file(path, g, strlen(g));
    assert_status_msg(anvil_model_config_load(dir, &c), ANVIL_ERR_FORMAT,
                      "generation_config.json: field \"top_p\"");
    g = "{\"temperature\": 0.7,";
    anvil_test_write_file(path, g, strlen(g));
    assert_status_msg(anvil_model_config_load(dir, &c), ANVIL_ERR_FORMAT,
                      "generation_config.json: malformed JSON");
    g = "{\"top_p\": 1.5}";
    anvil_test_write_file(path, g, strlen(g));
    assert_status_msg(anvil_model_config_load(dir, &c), ANVIL_ERR_FORMAT, "top_p must be in (0, 1]");

    /* no config.json at all */
    char empty[1024];
    snprintf(empty, sizeof empty, "%s/no-config", dir);
    assert_int_equal(mkdir(empty, 0755), 0);
    assert_status_msg(anvil_model_config_load(empty, &c), ANVIL_ERR_NOT_FOUND, "config.json");
}

/* ------------------------------------------------------------ bad configs */

static void test_missing_field(void **state)
{
    (void)state;
    anvil_model_config c;
    assert_status_msg(anvil_model_config_parse(llama_json("hidden_size", NULL), &c), ANVIL_ERR_FORMAT,
                      "config.json: missing field \"hidden_size\"");
    assert_int_equal(c.hidden_size, 0); /* the output is cleared on failure */
    assert_status_msg(anvil_model_config_parse(llama_json("model_type", NULL), &c), ANVIL_ERR_FORMAT,
                      "missing field \"model_type\"");
    assert_status_msg(anvil_model_config_parse(
                          llama_json("rope_scaling", "{\"rope_type\": \"llama3\", \"factor\": 8}"), &c),
                      ANVIL_ERR_FORMAT, "missing field \"rope_scaling.low_freq_factor\"");

    /* a missing field in a file names the file */
    const char *dir = anvil_test_tmpdir();
    char sub[1024], path[1200];
    snprintf(sub, sizeof sub, "%s/no-vocab", dir);
    assert_int_equal(mkdir(sub, 0755), 0);
    snprintf(path, sizeof path, "%s/config.json", sub);
    const char *j = llama_json("vocab_size", NULL);
    anvil_test_write_file(path, j, strlen(j));
    assert_status_msg(anvil_model_config_load(sub, &c), ANVIL_ERR_FORMAT,
                      "no-vocab/config.json: missing field \"vocab_size\"");
}

static void test_wrong_type(void **state)
{
    (void)state;
    anvil_model_config c;
    assert_status_msg(anvil_model_config_parse(llama_json("hidden_size", "\"4096\""), &c), ANVIL_ERR_FORMAT,
                      "field \"hidden_size\" must be an integer, got string");
    assert_status_msg(anvil_model_config_parse(llama_json("rms_norm_eps", "[1]"), &c), ANVIL_ERR_FORMAT,
                      "field \"rms_norm_eps\" must be a number, got array");
    assert_status_msg(anvil_model_config_parse(llama_json("tie_word_embeddings", "1"), &c), ANVIL_ERR_FORMAT,
                      "field \"tie_word_embeddings\" must be true or false, got integer");
    assert_status_msg(anvil_model_config_parse(llama_json("rope_scaling", "8"), &c), ANVIL_ERR_FORMAT,
                      "field \"rope_scaling\" must be an object, got integer");
    assert_status_msg(anvil_model_config_parse(llama_json("eos_token_id", "\"</s>\""), &c), ANVIL_ERR_FORMAT,
                      "eos_token_id");
    assert_status_msg(anvil_model_config_parse(llama_json("hidden_size", "null"), &c), ANVIL_ERR_FORMAT,
                      "field \"hidden_size\" must be an integer, got null");
    assert_status_msg(anvil_model_config_parse("{\"model_type\": ", &c), ANVIL_ERR_FORMAT,
                      "config.json: malformed JSON at line 1");
    assert_status_msg(anvil_model_config_parse("[]", &c), ANVIL_ERR_FORMAT, "must be a JSON object");
}

static void test_unsupported_rope(void **state)
{
    (void)state;
    anvil_model_config c;
    assert_status_msg(
        anvil_model_config_parse(llama_json("rope_scaling", "{\"rope_type\": \"yarn\", \"factor\": 4.0,"
                                                            " \"original_max_position_embeddings\": 32768}"),
                                 &c),
        ANVIL_ERR_UNSUPPORTED, "RoPE type \"yarn\" is not supported");
    assert_status_msg(
        anvil_model_config_parse(llama_json("rope_scaling", "{\"type\": \"dynamic\", \"factor\": 2}"), &c),
        ANVIL_ERR_UNSUPPORTED, "\"dynamic\"");
    assert_status_msg(
        anvil_model_config_parse(
            llama_json("rope_parameters", "{\"rope_type\": \"llama4\", \"rope_theta\": 1e4}"), &c),
        ANVIL_ERR_UNSUPPORTED, "\"llama4\"");
    /* longrope is supported (tests/io/test_longrope_config.c); without its lists it is malformed */
    assert_status_msg(
        anvil_model_config_parse(
            llama_json("rope_parameters", "{\"rope_type\": \"longrope\", \"rope_theta\": 1e4}"), &c),
        ANVIL_ERR_FORMAT, "missing field \"rope_parameters.short_factor\"");
    assert_status_msg(anvil_model_config_parse(llama_json("partial_rotary_factor", "0.5"), &c),
                      ANVIL_ERR_UNSUPPORTED, "partial_rotary_factor");
    assert_status_msg(anvil_model_config_parse(llama_json("torch_dtype", "\"float64\""), &c),
                      ANVIL_ERR_UNSUPPORTED, "dtype \"float64\"");
    /* rope_parameters wins over rope_theta when both are there */
    assert_int_equal(
        anvil_model_config_parse(
            llama_json("rope_parameters", "{\"rope_type\": \"default\", \"rope_theta\": 1234.0}"), &c),
        ANVIL_OK);
    assert_true(c.rope.theta == 1234.0);
}

static void test_nonsense_values(void **state)
{
    (void)state;
    anvil_model_config c;
    assert_status_msg(anvil_model_config_parse(llama_json("num_key_value_heads", "5"), &c), ANVIL_ERR_FORMAT,
                      "num_attention_heads (32) must be a multiple of num_key_value_heads (5)");
    assert_status_msg(anvil_model_config_parse(llama_json("num_attention_heads", "30"), &c), ANVIL_ERR_FORMAT,
                      "must be a multiple");
    /* 4096 / 24 is not whole and no head_dim says otherwise */
    const char *j = llama_json("num_attention_heads", "24");
    assert_status_msg(anvil_model_config_parse(j, &c), ANVIL_ERR_FORMAT,
                      "hidden_size (4096) is not divisible by num_attention_heads (24)");
    assert_status_msg(anvil_model_config_parse(llama_json("hidden_size", "0"), &c), ANVIL_ERR_FORMAT,
                      "hidden_size must be positive");
    assert_status_msg(anvil_model_config_parse(llama_json("hidden_size", "-64"), &c), ANVIL_ERR_FORMAT,
                      "hidden_size must be positive");
    assert_status_msg(anvil_model_config_parse(llama_json("num_hidden_layers", "0"), &c), ANVIL_ERR_FORMAT,
                      "num_hidden_layers must be positive");
    assert_status_msg(anvil_model_config_parse(llama_json("head_dim", "7"), &c), ANVIL_ERR_FORMAT,
                      "head_dim");
    assert_status_msg(anvil_model_config_parse(llama_json("rms_norm_eps", "0"), &c), ANVIL_ERR_FORMAT,
                      "rms_norm_eps");
    assert_status_msg(anvil_model_config_parse(llama_json("rope_theta", "-1"), &c), ANVIL_ERR_FORMAT,
                      "rope_theta");
    assert_status_msg(anvil_model_config_parse(llama_json("eos_token_id", "[1,2,3,4,5,6,7,8,9]"), &c),
                      ANVIL_ERR_UNSUPPORTED, "at most 8");
    assert_status_msg(anvil_model_config_parse(llama_json("bos_token_id", "4294967296"), &c),
                      ANVIL_ERR_FORMAT, "not a valid token id");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stories260k),
        cmocka_unit_test(test_tiny_llama3),
        cmocka_unit_test(test_tiny_qwen2),
        cmocka_unit_test(test_tiny_mistral),
        cmocka_unit_test(test_tiny_qwen3),
        cmocka_unit_test(test_other_models),
        cmocka_unit_test(test_classic_llama31_rope_scaling),
        cmocka_unit_test(test_family_rules),
        cmocka_unit_test(test_generation_config),
        cmocka_unit_test(test_missing_field),
        cmocka_unit_test(test_wrong_type),
        cmocka_unit_test(test_unsupported_rope),
        cmocka_unit_test(test_nonsense_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
