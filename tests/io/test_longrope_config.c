/*
 * LongRoPE in config.json (docs/checkpoints.md, "RoPE"): the keys as
 * Phi-3 128k / Phi-3.5 publish them (rope_scaling with "type": "longrope"
 * or the older "su", original_max_position_embeddings at the top level)
 * and as transformers 5 writes them (rope_parameters, keys inside), the
 * defaults transformers 5 derives (factor, attention_factor), and every
 * bound, refused with a message naming the key.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/model_config.h"
#include "anvil/network.h"
#include "testutil.h"

/* Shaped like Phi-3 mini 128k's config.json (head_dim 96: 48 factors per
 * list; the factors are made up, rising as the published ones do). */
static json_t *phi3_128k(void)
{
    json_error_t err;
    json_t *c = json_loads(
        "{\"architectures\": [\"Phi3ForCausalLM\"], \"model_type\": \"phi3\", \"vocab_size\": 32064,"
        " \"hidden_size\": 3072, \"intermediate_size\": 8192, \"num_hidden_layers\": 32,"
        " \"num_attention_heads\": 32, \"num_key_value_heads\": 32, \"max_position_embeddings\": 131072,"
        " \"original_max_position_embeddings\": 4096, \"rms_norm_eps\": 1e-5, \"rope_theta\": 10000.0,"
        " \"sliding_window\": 262144, \"bos_token_id\": 1, \"eos_token_id\": 32000, \"pad_token_id\": 32000,"
        " \"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\","
        " \"rope_scaling\": {\"type\": \"longrope\"}}",
        0, &err);
    if (c == NULL)
        fail_msg("test config: %s", err.text);
    json_t *sf = json_array(), *lf = json_array();
    for (int i = 0; i < 48; i++) {
        json_array_append_new(sf, json_real(1.0 + 0.01 * i));
        json_array_append_new(lf, json_real(1.0 + 1.2 * i));
    }
    json_t *rs = json_object_get(c, "rope_scaling");
    json_object_set_new(rs, "short_factor", sf);
    json_object_set_new(rs, "long_factor", lf);
    return c;
}

/* Parses c (consumed) into *out; returns the status. */
static anvil_status parse(json_t *c, anvil_model_config *out)
{
    char *text = json_dumps(c, 0);
    json_decref(c);
    assert_non_null(text);
    anvil_status st = anvil_model_config_parse(text, out);
    free(text);
    return st;
}

static void set(json_t *c, const char *obj, const char *key, const char *value)
{
    json_error_t err;
    json_t *v = json_loads(value, JSON_DECODE_ANY, &err);
    if (v == NULL)
        fail_msg("test value %s: %s", value, err.text);
    json_object_set_new(obj ? json_object_get(c, obj) : c, key, v);
}

static void test_phi3_128k(void **s)
{
    (void)s;
    anvil_model_config c;
    assert_int_equal(parse(phi3_128k(), &c), ANVIL_OK);
    assert_int_equal(c.rope.type, ANVIL_ROPE_LONGROPE);
    assert_int_equal(c.rope.n_ext_factors, 48);
    assert_true(c.rope.short_factor[10] == (float)(1.0 + 0.01 * 10));
    assert_true(c.rope.long_factor[47] == (float)(1.0 + 1.2 * 47));
    assert_int_equal(c.rope.original_max_position, 4096);
    assert_true(c.rope.factor == 32.0);
    /* transformers: sqrt(1 + ln(131072 / 4096) / ln 4096) */
    assert_true(fabs(c.rope.attention_factor - sqrt(1.0 + log(32.0) / log(4096.0))) < 1e-12);
    assert_true(fabs(c.rope.attention_factor - 1.19024) < 1e-5);
    assert_int_equal(c.sliding_window, 262144);
    assert_int_equal(anvil_model_config_check(&c), ANVIL_OK);
    anvil_network *net = NULL;
    assert_int_equal(anvil_model_build_network(&c, &net), ANVIL_OK);
    /* every rope op carries the factors */
    int ropes = 0;
    for (int32_t i = 0; i < anvil_network_op_count(net); i++) {
        const anvil_net_op *op = anvil_network_op(net, i);
        if (op->kind != ANVIL_OP_ROPE)
            continue;
        ropes++;
        assert_int_equal(op->rope.type, ANVIL_ROPE_LONGROPE);
        assert_memory_equal(op->rope.long_factor, c.rope.long_factor, 48 * sizeof(float));
    }
    assert_int_equal(ropes, 64);
    anvil_network_free(net);
}

static void test_spellings_and_defaults(void **s)
{
    (void)s;
    anvil_model_config c;
    /* the first Phi-3 128k release called it "su" (and some "yarn"): Phi3Config renames both */
    json_t *j = phi3_128k();
    set(j, "rope_scaling", "type", "\"su\"");
    assert_int_equal(parse(j, &c), ANVIL_OK);
    assert_int_equal(c.rope.type, ANVIL_ROPE_LONGROPE);
    j = phi3_128k();
    set(j, "rope_scaling", "type", "\"yarn\"");
    assert_int_equal(parse(j, &c), ANVIL_OK);
    assert_int_equal(c.rope.type, ANVIL_ROPE_LONGROPE);
    /* ... only for phi3 */
    j = phi3_128k();
    set(j, NULL, "model_type", "\"llama\"");
    set(j, "rope_scaling", "type", "\"su\"");
    assert_status_msg(parse(j, &c), ANVIL_ERR_UNSUPPORTED, "\"su\"");

    /* phi3 without the top-level key: Phi3Config's default 4096, even over
     * a value inside the RoPE object (transformers 5 gives the attribute
     * priority) */
    j = phi3_128k();
    json_object_del(j, "original_max_position_embeddings");
    set(j, "rope_scaling", "original_max_position_embeddings", "8192");
    assert_int_equal(parse(j, &c), ANVIL_OK);
    assert_int_equal(c.rope.original_max_position, 4096);
    /* another family: the key inside the RoPE object, else max_position_embeddings */
    j = phi3_128k();
    json_object_del(j, "original_max_position_embeddings");
    set(j, NULL, "model_type", "\"llama\"");
    set(j, "rope_scaling", "original_max_position_embeddings", "8192");
    assert_int_equal(parse(j, &c), ANVIL_OK);
    assert_int_equal(c.rope.original_max_position, 8192);
    assert_true(c.rope.factor == 16.0);
    j = phi3_128k();
    json_object_del(j, "original_max_position_embeddings");
    set(j, NULL, "model_type", "\"llama\"");
    assert_int_equal(parse(j, &c), ANVIL_OK);
    assert_int_equal(c.rope.original_max_position, 131072);
    assert_true(c.rope.factor == 1.0 && c.rope.attention_factor == 1.0);

    /* transformers 5's spelling: rope_parameters with everything inside */
    j = phi3_128k();
    json_t *rp = json_deep_copy(json_object_get(j, "rope_scaling"));
    json_object_del(j, "rope_scaling");
    json_object_set_new(rp, "rope_type", json_string("longrope"));
    json_object_del(rp, "type");
    json_object_set_new(rp, "rope_theta", json_real(250000.0));
    json_object_set_new(j, "rope_parameters", rp);
    assert_int_equal(parse(j, &c), ANVIL_OK);
    assert_int_equal(c.rope.type, ANVIL_ROPE_LONGROPE);
    assert_true(c.rope.theta == 250000.0);

    /* given factor and attention_factor win */
    j = phi3_128k();
    set(j, "rope_scaling", "factor", "8.0");
    assert_int_equal(parse(j, &c), ANVIL_OK);
    assert_true(c.rope.factor == 8.0);
    assert_true(fabs(c.rope.attention_factor - sqrt(1.0 + log(8.0) / log(4096.0))) < 1e-12);
    j = phi3_128k();
    set(j, "rope_scaling", "attention_factor", "1.5");
    assert_int_equal(parse(j, &c), ANVIL_OK);
    assert_true(c.rope.attention_factor == 1.5);
    /* a context no longer than the original: no scaling of cos and sin */
    j = phi3_128k();
    set(j, NULL, "max_position_embeddings", "4096");
    assert_int_equal(parse(j, &c), ANVIL_OK);
    assert_true(c.rope.attention_factor == 1.0);
}

typedef struct bad_case {
    const char *obj, *key, *value; /* obj NULL: top level; value NULL: delete the key */
    anvil_status want;
    const char *needle;
} bad_case;

static void test_bounds(void **s)
{
    (void)s;
    static const bad_case cases[] = {
        {"rope_scaling", "short_factor", NULL, ANVIL_ERR_FORMAT, "rope_scaling.short_factor"},
        {"rope_scaling", "long_factor", "3", ANVIL_ERR_FORMAT, "rope_scaling.long_factor\" must be a list"},
        {"rope_scaling", "short_factor", "[1, 2, 3]", ANVIL_ERR_FORMAT, "has 3 entries; head_dim 96 needs 48"},
        {"rope_scaling", "long_factor", "[]", ANVIL_ERR_FORMAT, "has 0 entries"},
        {"rope_scaling", "attention_factor", "0", ANVIL_ERR_FORMAT, "rope_scaling.attention_factor"},
        {"rope_scaling", "attention_factor", "-1.0", ANVIL_ERR_FORMAT, "rope_scaling.attention_factor"},
        {"rope_scaling", "attention_factor", "1e300", ANVIL_ERR_UNSUPPORTED, "rope_scaling.attention_factor"},
        {"rope_scaling", "attention_factor", "\"big\"", ANVIL_ERR_FORMAT, "attention_factor"},
        {"rope_scaling", "factor", "0.5", ANVIL_ERR_FORMAT, "rope_scaling.factor"},
        {"rope_scaling", "factor", "1e9", ANVIL_ERR_UNSUPPORTED, "rope_scaling.factor"},
        {NULL, "original_max_position_embeddings", "0", ANVIL_ERR_FORMAT, "original_max_position_embeddings"},
        {NULL, "original_max_position_embeddings", "-4096", ANVIL_ERR_FORMAT, "must be positive"},
        {NULL, "original_max_position_embeddings", "4294967808", ANVIL_ERR_UNSUPPORTED, "at most 268435456"},
        {NULL, "original_max_position_embeddings", "4096.0", ANVIL_ERR_FORMAT, "original_max_position_embeddings"},
        /* ln(1) = 0: the derived attention factor would be infinite */
        {NULL, "original_max_position_embeddings", "1", ANVIL_ERR_UNSUPPORTED, "derived from factor"},
        {NULL, "partial_rotary_factor", "0.75", ANVIL_ERR_UNSUPPORTED, "partial_rotary_factor 0.75"},
        {"rope_scaling", "partial_rotary_factor", "0.5", ANVIL_ERR_UNSUPPORTED, "partial_rotary_factor 0.5"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *j = phi3_128k();
        json_t *o = cases[i].obj ? json_object_get(j, cases[i].obj) : j;
        if (cases[i].value == NULL)
            json_object_del(o, cases[i].key);
        else
            set(j, cases[i].obj, cases[i].key, cases[i].value);
        anvil_model_config c;
        printf("  %s.%s = %s\n", cases[i].obj ? cases[i].obj : "", cases[i].key,
               cases[i].value ? cases[i].value : "(absent)");
        assert_status_msg(parse(j, &c), cases[i].want, cases[i].needle);
    }

    /* one entry of a list: its index is named */
    static const struct {
        const char *list, *value;
        anvil_status want;
        const char *needle;
    } entries[] = {
        {"short_factor", "-1.0", ANVIL_ERR_FORMAT, "rope_scaling.short_factor[7] is -1"},
        {"long_factor", "0", ANVIL_ERR_FORMAT, "rope_scaling.long_factor[7] is 0"},
        {"long_factor", "1e6", ANVIL_ERR_UNSUPPORTED, "rope_scaling.long_factor[7] is 1e+06"},
        {"short_factor", "\"x\"", ANVIL_ERR_FORMAT, "rope_scaling.short_factor[7] must be a number"},
        {"short_factor", "null", ANVIL_ERR_FORMAT, "rope_scaling.short_factor[7] must be a number"},
    };
    for (size_t i = 0; i < sizeof entries / sizeof entries[0]; i++) {
        json_t *j = phi3_128k();
        json_error_t err;
        json_array_set_new(json_object_get(json_object_get(j, "rope_scaling"), entries[i].list), 7,
                           json_loads(entries[i].value, JSON_DECODE_ANY, &err));
        anvil_model_config c;
        assert_status_msg(parse(j, &c), entries[i].want, entries[i].needle);
    }

    /* head_dim 1024 would need 512 factors a list */
    json_t *j = phi3_128k();
    set(j, NULL, "head_dim", "1024");
    anvil_model_config c;
    assert_status_msg(parse(j, &c), ANVIL_ERR_UNSUPPORTED, "at most 256");

    /* a config made by hand gets the same checks */
    assert_int_equal(parse(phi3_128k(), &c), ANVIL_OK);
    anvil_model_config bad = c;
    bad.rope.n_ext_factors = 47;
    assert_status_msg(anvil_model_config_check(&bad), ANVIL_ERR_FORMAT, "have 47 entries");
    bad = c;
    bad.rope.long_factor[3] = NAN;
    assert_status_msg(anvil_model_config_check(&bad), ANVIL_ERR_FORMAT, "rope_scaling.long_factor[3]");
    bad = c;
    bad.rope.attention_factor = 0.0;
    assert_status_msg(anvil_model_config_check(&bad), ANVIL_ERR_FORMAT, "attention_factor");
    bad = c;
    bad.rope.original_max_position = 0;
    assert_status_msg(anvil_model_config_check(&bad), ANVIL_ERR_FORMAT, "original_max_position_embeddings");
    bad = c;
    bad.rope.factor = NAN;
    assert_status_msg(anvil_model_config_check(&bad), ANVIL_ERR_FORMAT, "factor");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_phi3_128k),
        cmocka_unit_test(test_spellings_and_defaults),
        cmocka_unit_test(test_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
