/*
 * Loading bad model folders: each a specific status and message, no crash,
 * no leak. The folders are made from stories260K with one thing broken.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "anvil/runtime.h"
#include "io/safetensors.h"
#include "testutil.h"

/* A copy of stories260K in tmp/<name> with config edited by edit() and the
 * tensors filtered/reshaped by fix() (either may be NULL). */
typedef void (*edit_config_fn)(json_t *cfg);
typedef int (*edit_tensor_fn)(anvil_st_tensor *t); /* 0: drop it */

static const char *make_model(const char *name, edit_config_fn edit, edit_tensor_fn fix)
{
    static char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", anvil_test_tmpdir(), name);
    mkdir(dir, 0755);
    char src[512], dst[600];
    snprintf(src, sizeof src, "%s/models/stories260K/config.json", anvil_test_shared_dir());
    json_error_t jerr;
    json_t *cfg = json_load_file(src, 0, &jerr);
    assert_non_null(cfg);
    if (edit)
        edit(cfg);
    snprintf(dst, sizeof dst, "%s/config.json", dir);
    assert_int_equal(json_dump_file(cfg, dst, JSON_INDENT(2)), 0);
    json_decref(cfg);

    snprintf(src, sizeof src, "%s/models/stories260K/model.safetensors", anvil_test_shared_dir());
    anvil_safetensors *f = NULL;
    assert_int_equal(anvil_safetensors_open(src, &f), ANVIL_OK);
    int64_t n = anvil_safetensors_count(f), k = 0;
    anvil_st_tensor *ts = calloc((size_t)n, sizeof *ts);
    assert_non_null(ts);
    for (int64_t i = 0; i < n; i++) {
        ts[k] = *anvil_safetensors_at(f, i);
        if (fix == NULL || fix(&ts[k]))
            k++;
    }
    snprintf(dst, sizeof dst, "%s/model.safetensors", dir);
    assert_int_equal(anvil_safetensors_write(dst, ts, k), ANVIL_OK);
    free(ts);
    anvil_safetensors_close(f);
    return dir;
}

static anvil_status try_load(const char *dir)
{
    anvil_runtime *rt = (anvil_runtime *)0x1;
    anvil_status st = anvil_runtime_load(dir, NULL, &rt);
    assert_null(rt); /* *out is NULL on failure */
    return st;
}

static void set_arch(json_t *cfg) { json_object_set_new(cfg, "architectures", json_pack("[s]", "GPTBigCodeForCausalLM")); }
static void drop_hidden(json_t *cfg) { json_object_del(cfg, "hidden_size"); }
static void wrong_type(json_t *cfg) { json_object_set_new(cfg, "num_hidden_layers", json_string("five")); }
static void more_layers(json_t *cfg) { json_object_set_new(cfg, "num_hidden_layers", json_integer(6)); }
static void wider_ffn(json_t *cfg) { json_object_set_new(cfg, "intermediate_size", json_integer(256)); }

static int drop_q3(anvil_st_tensor *t) { return strcmp(t->name, "model.layers.3.self_attn.q_proj.weight") != 0; }

static void test_unknown_architecture(void **s)
{
    (void)s;
    const char *dir = make_model("arch", set_arch, NULL);
    assert_status_msg(try_load(dir), ANVIL_ERR_UNSUPPORTED, "GPTBigCodeForCausalLM");
    assert_non_null(strstr(anvil_last_error(), "LlamaForCausalLM")); /* lists what is supported */
}

static void test_missing_config_field(void **s)
{
    (void)s;
    assert_status_msg(try_load(make_model("nohidden", drop_hidden, NULL)), ANVIL_ERR_FORMAT, "hidden_size");
    assert_status_msg(try_load(make_model("wrongtype", wrong_type, NULL)), ANVIL_ERR_FORMAT, "num_hidden_layers");
}

static void test_missing_tensor(void **s)
{
    (void)s;
    assert_status_msg(try_load(make_model("noq3", NULL, drop_q3)), ANVIL_ERR_NOT_FOUND,
                      "model.layers.3.self_attn.q_proj.weight");
    /* a config with more layers than the checkpoint holds: the config is wrong */
    assert_status_msg(try_load(make_model("sixlayers", more_layers, NULL)), ANVIL_ERR_FORMAT,
                      "num_hidden_layers is 6 but the checkpoint holds layers 0 to 4 only (no tensor 'model.layers.5.");
}

static void test_shape_disagrees_with_config(void **s)
{
    (void)s;
    assert_status_msg(try_load(make_model("ffn", wider_ffn, NULL)), ANVIL_ERR_FORMAT,
                      "has shape [172, 64] but the config implies [256, 64]");
}

static void test_missing_folder(void **s)
{
    (void)s;
    assert_status_msg(try_load("/nonexistent/model"), ANVIL_ERR_NOT_FOUND, "no model at /nonexistent/model");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unknown_architecture),
        cmocka_unit_test(test_missing_config_field),
        cmocka_unit_test(test_missing_tensor),
        cmocka_unit_test(test_shape_disagrees_with_config),
        cmocka_unit_test(test_missing_folder),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
