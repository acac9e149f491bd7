/*
 * config.json values against anvil's bounds (docs/checkpoints.md, "Limits"):
 * every size, context and RoPE/norm parameter, each with a table of hostile
 * values (negative, zero, 2^31, 2^32 + 512, 2^40, 2^61, 2^62, 2^63 - 1,
 * 1e-30, 1e300, reals where integers belong, text JSON cannot hold). Each
 * must be refused with its status and a message naming the key (and, past
 * a bound, the value and the bound), or accepted when it is in range. The
 * largest published models must all pass.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "anvil/model_config.h"
#include "anvil/network.h"
#include "testutil.h"

/* Llama 3.1 8B's config.json (with its llama3 RoPE scaling). */
static const char *const llama31 =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": 128256,"
    " \"hidden_size\": 4096, \"intermediate_size\": 14336, \"num_hidden_layers\": 32,"
    " \"num_attention_heads\": 32, \"num_key_value_heads\": 8, \"max_position_embeddings\": 131072,"
    " \"rms_norm_eps\": 1e-5, \"rope_theta\": 500000.0, \"rope_scaling\": {\"factor\": 8.0,"
    " \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192,"
    " \"rope_type\": \"llama3\"}, \"torch_dtype\": \"bfloat16\", \"bos_token_id\": 128000,"
    " \"eos_token_id\": 128001}";

/* Mistral 7B v0.1's (it reads sliding_window). */
static const char *const mistral =
    "{\"architectures\": [\"MistralForCausalLM\"], \"model_type\": \"mistral\", \"vocab_size\": 32000,"
    " \"hidden_size\": 4096, \"intermediate_size\": 14336, \"num_hidden_layers\": 32,"
    " \"num_attention_heads\": 32, \"num_key_value_heads\": 8, \"max_position_embeddings\": 32768,"
    " \"rms_norm_eps\": 1e-5, \"rope_theta\": 10000.0, \"sliding_window\": 4096, \"torch_dtype\": "
    "\"bfloat16\"}";

/* base with obj[.sub] = value (JSON text jansson can hold), as config.json text (malloc'd). */
static char *with_value(const char *base, const char *key, const char *sub, const char *value)
{
    json_error_t err;
    json_t *root = json_loads(base, 0, &err);
    assert_non_null(root);
    json_t *v = json_loads(value, JSON_DECODE_ANY, &err);
    if (v == NULL)
        fail_msg("test value %s: %s", value, err.text);
    json_t *obj = sub ? json_object_get(root, key) : root;
    assert_non_null(obj);
    json_object_set_new(obj, sub ? sub : key, v);
    char *text = json_dumps(root, 0);
    json_decref(root);
    assert_non_null(text);
    return text;
}

/* ------------------------------------------------------------ the table */

typedef enum { INT_FIELD, REAL_FIELD } field_kind;

typedef struct field {
    const char *base; /* the config it is set in */
    const char *key;  /* top-level key */
    const char *sub;  /* key inside it, or NULL */
    const char *name; /* as messages name it */
    field_kind kind;
    double lo, hi; /* the bounds: below lo is FORMAT, above hi UNSUPPORTED */
} field;

#define L llama31
static const field fields[] = {
    {L, "vocab_size", NULL, "vocab_size", INT_FIELD, 1, ANVIL_MAX_VOCAB_SIZE},
    {L, "hidden_size", NULL, "hidden_size", INT_FIELD, 1, ANVIL_MAX_HIDDEN_SIZE},
    {L, "intermediate_size", NULL, "intermediate_size", INT_FIELD, 1, ANVIL_MAX_INTERMEDIATE_SIZE},
    {L, "num_hidden_layers", NULL, "num_hidden_layers", INT_FIELD, 1, ANVIL_MAX_LAYERS},
    {L, "num_attention_heads", NULL, "num_attention_heads", INT_FIELD, 1, ANVIL_MAX_HEADS},
    {L, "num_key_value_heads", NULL, "num_key_value_heads", INT_FIELD, 1, ANVIL_MAX_HEADS},
    {L, "head_dim", NULL, "head_dim", INT_FIELD, 1, ANVIL_MAX_HEAD_DIM},
    {L, "max_position_embeddings", NULL, "max_position_embeddings", INT_FIELD, 1, ANVIL_MAX_CONTEXT},
    {L, "rope_scaling", "original_max_position_embeddings", "rope_scaling.original_max_position_embeddings",
     INT_FIELD, 1, ANVIL_MAX_CONTEXT},
    {mistral, "sliding_window", NULL, "sliding_window", INT_FIELD, 0, ANVIL_MAX_CONTEXT},
    {L, "rms_norm_eps", NULL, "rms_norm_eps", REAL_FIELD, ANVIL_MIN_RMS_NORM_EPS, ANVIL_MAX_RMS_NORM_EPS},
    {L, "rope_theta", NULL, "rope_theta", REAL_FIELD, ANVIL_MIN_ROPE_THETA, ANVIL_MAX_ROPE_THETA},
    {L, "rope_scaling", "factor", "rope_scaling.factor", REAL_FIELD, ANVIL_MIN_ROPE_FACTOR,
     ANVIL_MAX_ROPE_FACTOR},
    {L, "rope_scaling", "low_freq_factor", "rope_scaling.low_freq_factor", REAL_FIELD,
     ANVIL_MIN_ROPE_FREQ_FACTOR, ANVIL_MAX_ROPE_FREQ_FACTOR},
    {L, "rope_scaling", "high_freq_factor", "rope_scaling.high_freq_factor", REAL_FIELD,
     ANVIL_MIN_ROPE_FREQ_FACTOR, ANVIL_MAX_ROPE_FREQ_FACTOR},
};
#undef L

/* The hostile values, as JSON text. */
static const char *const values[] = {
    "-1",
    "0",
    "-0.0",
    "-9223372036854775808", /* -2^63 */
    "2147483647",           /* 2^31 - 1 */
    "2147483648",           /* 2^31 */
    "4294967808",           /* 2^32 + 512: 512 once cut to 32 bits */
    "1099511627776",        /* 2^40: 0 once cut */
    "2305843009213693952",  /* 2^61 */
    "4611686018427387904",  /* 2^62 */
    "9223372036854775807",  /* 2^63 - 1: -1 once cut */
    "1e-30",
    "1e300",
    "-1e300",
    "0.5",
    "\"4096\"",
    "true",
    "[8]",
};

/* Checks one field set to one value; returns the parse's status. */
static anvil_status check_one(const field *f, const char *value)
{
    char *text = with_value(f->base, f->key, f->sub, value);
    anvil_model_config c;
    memset(&c, 0x5a, sizeof c);
    const anvil_status st = anvil_model_config_parse(text, &c);
    const char *msg = anvil_last_error();
    json_t *v = json_loads(value, JSON_DECODE_ANY, NULL);
    char want[256] = "";
    anvil_status want_st = ANVIL_OK;
    const int is_int = json_is_integer(v), is_num = json_is_number(v);
    const double d = is_num ? json_number_value(v) : 0;
    if (f->kind == INT_FIELD && !is_int) {
        want_st = ANVIL_ERR_FORMAT;
        snprintf(want, sizeof want, "field \"%s\" must be an integer", f->name);
    } else if (f->kind == REAL_FIELD && !is_num) {
        want_st = ANVIL_ERR_FORMAT;
        snprintf(want, sizeof want, "field \"%s\" must be a number", f->name);
    } else if (d < f->lo) {
        want_st = ANVIL_ERR_FORMAT;
        snprintf(want, sizeof want, "%s", f->name);
    } else if (d > f->hi) {
        want_st = ANVIL_ERR_UNSUPPORTED;
        if (f->kind == INT_FIELD)
            snprintf(want, sizeof want, "config.json: %s is %lld; anvil supports at most %lld", f->name,
                     (long long)json_integer_value(v), (long long)f->hi);
        else
            snprintf(want, sizeof want, "config.json: %s is %g; anvil supports at most %g", f->name, d,
                     f->hi);
    } else if (f->sub != NULL && strcmp(f->sub, "high_freq_factor") == 0 && d <= 1.0) {
        want_st = ANVIL_ERR_FORMAT; /* in range, but not above low_freq_factor (1.0) */
        snprintf(want, sizeof want, "high_freq_factor (%g) must be above rope_scaling.low_freq_factor (1)",
                 d);
    }
    if (st != want_st || (want_st != ANVIL_OK && strstr(msg, want) == NULL) ||
        (want_st != ANVIL_OK && strstr(msg, f->name) == NULL))
        fail_msg("%s = %s: status %s, wanted %s; message \"%s\", wanted it to hold \"%s\"", f->name, value,
                 anvil_status_name(st), anvil_status_name(want_st), st == ANVIL_OK ? "" : msg, want);
    if (want_st == ANVIL_OK) {
        /* in range: read as given (the int64 context never cut) */
        if (strcmp(f->key, "rope_theta") == 0)
            assert_true(c.rope.theta == d);
        if (strcmp(f->key, "max_position_embeddings") == 0)
            assert_true((double)c.max_position_embeddings == d);
    } else {
        /* a failed parse leaves nothing half-filled behind */
        anvil_model_config zero;
        memset(&zero, 0, sizeof zero);
        assert_memory_equal(&c, &zero, sizeof c);
    }
    json_decref(v);
    free(text);
    return st;
}

static void test_hostile_values(void **state)
{
    (void)state;
    int refused = 0, total = 0;
    for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++) {
        for (size_t v = 0; v < sizeof values / sizeof values[0]; v++) {
            refused += check_one(&fields[f], values[v]) != ANVIL_OK;
            total++;
        }
    }
    /* nearly every value is refused for every field (rope_theta takes 2^31 and 2^32 + 512) */
    assert_true(refused > total - 8);
}

/* Values jansson itself cannot hold: refused by the JSON reader, with the text. */
static void test_beyond_json(void **state)
{
    (void)state;
    static const char *const big[] = {"18446744073709551616", "99999999999999999999999", "1e999", "-1e999"};
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
        char text[1024];
        snprintf(
            text, sizeof text,
            "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": 32000,"
            " \"hidden_size\": 4096, \"intermediate_size\": 11008, \"num_hidden_layers\": %s,"
            " \"num_attention_heads\": 32, \"max_position_embeddings\": 4096}",
            big[i]);
        anvil_model_config c;
        /* jansson says where, and what; anvil adds the key */
        assert_status_msg(anvil_model_config_parse(text, &c), ANVIL_ERR_FORMAT,
                          "(the value of \"num_hidden_layers\")");
        assert_non_null(strstr(anvil_last_error(), "malformed JSON at line 1"));
        /* JSON has no NaN or Infinity: those are malformed text */
        snprintf(text, sizeof text, "{\"model_type\": \"llama\", \"rope_theta\": %s}",
                 i % 2 ? "NaN" : "Infinity");
        assert_status_msg(anvil_model_config_parse(text, &c), ANVIL_ERR_FORMAT, "malformed JSON");
    }
}

/* The hostile run's cases, each with the exact message. */
static void test_reported_cases(void **state)
{
    (void)state;
    anvil_model_config c;
    char *t = with_value(llama31, "num_hidden_layers", NULL, "1000000");
    assert_status_msg(anvil_model_config_parse(t, &c), ANVIL_ERR_UNSUPPORTED,
                      "config.json: num_hidden_layers is 1000000; anvil supports at most 1024");
    free(t);
    t = with_value(llama31, "num_attention_heads", NULL, "2305843009213693952");
    assert_status_msg(anvil_model_config_parse(t, &c), ANVIL_ERR_UNSUPPORTED,
                      "num_attention_heads is 2305843009213693952; anvil supports at most 1024");
    free(t);
    t = with_value(llama31, "head_dim", NULL, "4611686018427387904");
    assert_status_msg(anvil_model_config_parse(t, &c), ANVIL_ERR_UNSUPPORTED,
                      "head_dim is 4611686018427387904; anvil supports at most 1024");
    free(t);
    t = with_value(llama31, "max_position_embeddings", NULL, "4294967808");
    assert_status_msg(anvil_model_config_parse(t, &c), ANVIL_ERR_UNSUPPORTED,
                      "max_position_embeddings is 4294967808; anvil supports at most 268435456");
    free(t);
    t = with_value(llama31, "rope_theta", NULL, "1e-30");
    assert_status_msg(anvil_model_config_parse(t, &c), ANVIL_ERR_FORMAT,
                      "rope_theta is 1e-30; it must be at least 1");
    free(t);
    t = with_value(llama31, "rope_scaling", "factor", "1e-30");
    assert_status_msg(anvil_model_config_parse(t, &c), ANVIL_ERR_FORMAT, "rope_scaling.factor is 1e-30");
    free(t);
    /* a head_dim derived from hidden_size / heads is bounded too */
    t = with_value(llama31, "num_attention_heads", NULL, "1");
    char *t2 = with_value(t, "num_key_value_heads", NULL, "1");
    assert_status_msg(anvil_model_config_parse(t2, &c), ANVIL_ERR_UNSUPPORTED,
                      "head_dim (hidden_size / num_attention_heads) is 4096; anvil supports at most 1024");
    free(t);
    free(t2);
    /* low and high frequency factors that are equal in float: the table would divide by zero */
    t = with_value(llama31, "rope_scaling", "high_freq_factor", "1.00000001");
    assert_status_msg(anvil_model_config_parse(t, &c), ANVIL_ERR_FORMAT,
                      "rope_scaling.high_freq_factor (1) must be above rope_scaling.low_freq_factor (1)");
    free(t);
    /* transformers 5's key style names its own object */
    t = with_value(llama31, "rope_parameters", NULL,
                   "{\"rope_type\": \"linear\", \"factor\": 1e300, \"rope_theta\": 10000.0}");
    assert_status_msg(anvil_model_config_parse(t, &c), ANVIL_ERR_UNSUPPORTED,
                      "rope_parameters.factor is 1e+300; anvil supports at most 4096");
    free(t);
    t = with_value(llama31, "rope_parameters", NULL, "{\"rope_type\": \"default\", \"rope_theta\": 1e300}");
    assert_status_msg(anvil_model_config_parse(t, &c), ANVIL_ERR_UNSUPPORTED, "rope_theta is 1e+300");
    free(t);
}

/* Every limit admits the largest published models, and the limit itself. */
static void test_real_models_pass(void **state)
{
    (void)state;
    anvil_model_config c;
    /* Llama 3.1 405B */
    char *a = with_value(llama31, "hidden_size", NULL, "16384");
    char *b = with_value(a, "intermediate_size", NULL, "53248");
    char *d = with_value(b, "num_hidden_layers", NULL, "126");
    char *e = with_value(d, "num_attention_heads", NULL, "128");
    assert_int_equal(anvil_model_config_parse(e, &c), ANVIL_OK);
    assert_int_equal(c.n_layers, 126);
    assert_int_equal(c.head_dim, 128);
    assert_int_equal(c.max_position_embeddings, 131072);
    free(a);
    free(b);
    free(d);
    free(e);
    /* Gemma 2: vocabulary 256000, head_dim 256; Qwen 2.5: 152064; Llama 4 Scout: a 10M context, theta 5e5 */
    static const char *const ok[][3] = {
        {"vocab_size", NULL, "256000"},
        {"vocab_size", NULL, "152064"},
        {"head_dim", NULL, "256"},
        {"max_position_embeddings", NULL, "10485760"},
        {"intermediate_size", NULL, "18432"}, /* DeepSeek V3 */
        {"rope_theta", NULL, "1000000000"},   /* long-context fine-tunes raise theta by orders of magnitude */
        {"rms_norm_eps", NULL, "1e-6"},
        {"rope_scaling", "factor", "32.0"}, /* Llama 3.2 */
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char *t = with_value(llama31, ok[i][0], ok[i][1], ok[i][2]);
        if (anvil_model_config_parse(t, &c) != ANVIL_OK)
            fail_msg("%s = %s: %s", ok[i][0], ok[i][2], anvil_last_error());
        free(t);
    }
    /* each bound is inclusive */
    char num[32];
    snprintf(num, sizeof num, "%d", ANVIL_MAX_LAYERS);
    a = with_value(llama31, "num_hidden_layers", NULL, num);
    assert_int_equal(anvil_model_config_parse(a, &c), ANVIL_OK);
    free(a);
    snprintf(num, sizeof num, "%d", ANVIL_MAX_CONTEXT);
    a = with_value(llama31, "max_position_embeddings", NULL, num);
    assert_int_equal(anvil_model_config_parse(a, &c), ANVIL_OK);
    assert_int_equal(c.max_position_embeddings, ANVIL_MAX_CONTEXT);
    free(a);
    snprintf(num, sizeof num, "%d", ANVIL_MAX_CONTEXT + 1);
    a = with_value(llama31, "max_position_embeddings", NULL, num);
    assert_status_msg(anvil_model_config_parse(a, &c), ANVIL_ERR_UNSUPPORTED, "max_position_embeddings");
    free(a);
    /* the shared models */
    static const char *const models[] = {"stories260K",  "tiny-llama3", "tiny-mistral",
                                         "tiny-mixtral", "tiny-qwen2",  "tiny-qwen3",
                                         "tiny-phi3",    "tiny-gemma2", "tinycode"};
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        char rel[128];
        snprintf(rel, sizeof rel, "models/%s", models[i]);
        if (anvil_model_config_load(anvil_test_shared_path(rel), &c) != ANVIL_OK)
            fail_msg("%s: %s", models[i], anvil_last_error());
        assert_int_equal(anvil_model_config_check(&c), ANVIL_OK);
    }
}

/* generation_config.json's temperature is narrowed to float: bounded too. */
static void test_generation_temperature(void **state)
{
    (void)state;
    const char *dir = anvil_test_tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    anvil_test_write_file(path, mistral, strlen(mistral));
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    static const char big[] = "{\"temperature\": 1e300}";
    anvil_test_write_file(path, big, strlen(big));
    anvil_model_config c;
    assert_status_msg(anvil_model_config_load(dir, &c), ANVIL_ERR_UNSUPPORTED, "temperature is 1e+300");
    static const char fine[] = "{\"temperature\": 0.7}";
    anvil_test_write_file(path, fine, strlen(fine));
    assert_int_equal(anvil_model_config_load(dir, &c), ANVIL_OK);
    assert_true(fabsf(c.gen_temperature - 0.7f) < 1e-6f);
}

/* A config made by hand goes through the same bounds before any size is derived from it. */
static void test_hand_made_config(void **state)
{
    (void)state;
    anvil_model_config c;
    assert_int_equal(anvil_model_config_parse(llama31, &c), ANVIL_OK);
    assert_int_equal(anvil_model_config_check(&c), ANVIL_OK);
    anvil_network *net = (anvil_network *)0x1;
    anvil_model_config bad = c;
    bad.n_heads = (int64_t)1 << 61;
    assert_status_msg(anvil_model_build_network(&bad, &net), ANVIL_ERR_UNSUPPORTED,
                      "num_attention_heads is 2305843009213693952");
    assert_null(net);
    bad = c;
    bad.head_dim = (int64_t)1 << 62;
    assert_status_msg(anvil_model_config_check(&bad), ANVIL_ERR_UNSUPPORTED, "head_dim");
    bad = c;
    bad.max_position_embeddings = INT64_MAX;
    assert_status_msg(anvil_model_config_check(&bad), ANVIL_ERR_UNSUPPORTED, "max_position_embeddings");
    bad = c;
    bad.rope.theta = 1e-30;
    assert_status_msg(anvil_model_config_check(&bad), ANVIL_ERR_FORMAT, "rope_theta");
    bad = c;
    bad.rope.factor = NAN;
    assert_status_msg(anvil_model_config_check(&bad), ANVIL_ERR_FORMAT, "factor");
    bad = c;
    bad.rms_norm_eps = INFINITY;
    assert_status_msg(anvil_model_config_check(&bad), ANVIL_ERR_FORMAT, "rms_norm_eps");
    bad = c;
    bad.n_layers = -5;
    assert_status_msg(anvil_model_config_check(&bad), ANVIL_ERR_FORMAT, "num_hidden_layers must be positive");
    assert_status_msg(anvil_model_config_check(NULL), ANVIL_ERR_INVALID_ARG, "NULL");
}

/* The most layers anvil takes build in linear time: one weight per name,
 * the tied embedding found again by its name. */
static void test_max_layers_network(void **state)
{
    (void)state;
    char num[32];
    snprintf(num, sizeof num, "%d", ANVIL_MAX_LAYERS);
    char *t = with_value(mistral, "num_hidden_layers", NULL, num);
    char *t2 = with_value(t, "tie_word_embeddings", NULL, "true");
    anvil_model_config c;
    assert_int_equal(anvil_model_config_parse(t2, &c), ANVIL_OK);
    anvil_network *net = NULL;
    assert_int_equal(anvil_model_build_network(&c, &net), ANVIL_OK);
    /* embedding (also the LM head), 9 weights a layer, the final norm */
    const int32_t n = anvil_network_weight_count(net);
    assert_int_equal(n, 1 + 9 * ANVIL_MAX_LAYERS + 1);
    assert_int_equal(anvil_network_kv_layers(net), ANVIL_MAX_LAYERS);
    int found_last = 0;
    for (int32_t i = 0; i < n; i++)
        found_last |=
            strcmp(anvil_network_weight(net, i)->name, "model.layers.1023.mlp.down_proj.weight") == 0;
    assert_true(found_last);
    /* the LM head reads the embedding's weight (index 0), not a copy */
    const anvil_net_op *head = anvil_network_op(net, anvil_network_output(net));
    assert_int_equal(head->weights[0], 0);
    anvil_network_free(net);
    free(t);
    free(t2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hostile_values),         cmocka_unit_test(test_beyond_json),
        cmocka_unit_test(test_reported_cases),         cmocka_unit_test(test_real_models_pass),
        cmocka_unit_test(test_generation_temperature), cmocka_unit_test(test_hand_made_config),
        cmocka_unit_test(test_max_layers_network),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
