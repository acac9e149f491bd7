/*
 * Engines whose manifest does not fit the model (the builder's half of a
 * load; the container's bad files are tests/io/test_engine_file.c): each is
 * refused by anvil_runtime_load with a status and a message naming what is
 * wrong, *out NULL, nothing leaked (ASan). Made by rewriting a good engine
 * of tiny-llama3 with one thing changed in its manifest (the container's
 * checksums are recomputed by the writer, so only the builder can notice):
 * another architecture, another layer count, an altered op, a plan that
 * stores a weight twice or not at all, a fusion group the planner would
 * not make, an unknown build dtype, no config.json, a stored tensor of a
 * quantized kind without its scales (tests/builder/test_quantize.c has
 * the malformed quantized engines).
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/builder.h"
#include "anvil/runtime.h"
#include "io/engine_file.h"
#include "testutil.h"

typedef void (*mutate_fn)(json_t *manifest);

typedef struct copy_ctx {
    anvil_engine_file *src;
} copy_ctx;

static anvil_status copy_fill(void *user, int64_t index, size_t offset, void *dst, size_t len)
{
    copy_ctx *c = user;
    return anvil_engine_file_read(c->src, index, offset, dst, len);
}

/* dst = src with its manifest passed through mutate (same tensors, bytes). */
static void rewrite(const char *src, const char *dst, mutate_fn mutate, const char *kind_override)
{
    anvil_engine_file *f = NULL;
    assert_int_equal(anvil_engine_file_open(src, ANVIL_ST_READ, &f), ANVIL_OK);
    json_t *m = json_deep_copy(anvil_engine_file_manifest(f));
    assert_non_null(m);
    mutate(m);
    anvil_engine_writer *w = NULL;
    assert_int_equal(anvil_engine_writer_create(dst, &w), ANVIL_OK);
    for (int64_t i = 0; i < anvil_engine_file_count(f); i++) {
        const anvil_engine_tensor *t = anvil_engine_file_tensor(f, i);
        anvil_engine_kind k = t->kind;
        if (kind_override && i == 0) /* its bytes: the first of the old tensor's (fewer: int8/int4) */
            assert_int_equal(anvil_engine_kind_parse(kind_override, &k), 0);
        assert_int_equal(anvil_engine_writer_add_tensor(w, t->name, k, t->n_dims, t->shape, NULL), ANVIL_OK);
    }
    copy_ctx c = {.src = f};
    assert_int_equal(anvil_engine_writer_finish(w, m, copy_fill, &c, 1, NULL, NULL), ANVIL_OK);
    json_decref(m);
    anvil_engine_file_close(f);
}

static json_t *config_of(json_t *m, json_t **files)
{
    *files = json_object_get(m, "files");
    json_error_t e;
    return json_loads(json_string_value(json_object_get(*files, "config.json")), 0, &e);
}

static void put_config(json_t *files, json_t *cfg)
{
    char *t = json_dumps(cfg, 0);
    json_object_set_new(files, "config.json", json_string(t));
    free(t);
    json_decref(cfg);
}

static void other_architecture(json_t *m)
{
    json_t *files, *cfg = config_of(m, &files);
    json_object_set_new(cfg, "architectures", json_pack("[s]", "Qwen2ForCausalLM"));
    json_object_set_new(cfg, "model_type", json_string("qwen2"));
    put_config(files, cfg);
}

static void more_layers(json_t *m)
{
    json_t *files, *cfg = config_of(m, &files);
    json_object_set_new(cfg, "num_hidden_layers", json_integer(json_integer_value(json_object_get(cfg, "num_hidden_layers")) + 1));
    put_config(files, cfg);
}

static void altered_op(json_t *m)
{
    json_t *op = json_array_get(json_object_get(json_object_get(m, "network"), "ops"), 3);
    json_object_set_new(op, "width", json_integer(json_integer_value(json_object_get(op, "width")) + 1));
}

static void weight_stored_twice(json_t *m)
{
    json_t *stored = json_object_get(json_object_get(m, "plan"), "stored");
    json_t *a = json_object_get(json_array_get(stored, 0), "members");
    json_t *b = json_object_get(json_array_get(stored, json_array_size(stored) - 1), "members");
    json_array_set(b, 0, json_array_get(a, 0));
}

static void bad_fusion(json_t *m)
{
    json_t *fusion = json_object_get(json_object_get(m, "plan"), "fusion");
    json_array_append_new(fusion, json_pack("{s:i, s:s}", "op", 0, "kind", "add_rmsnorm"));
}

static void no_fusion_list(json_t *m) { json_object_del(json_object_get(m, "plan"), "fusion"); }

static void bad_dtype(json_t *m) { json_object_set_new(json_object_get(m, "build"), "dtype", json_string("f64")); }

static void no_config(json_t *m) { json_object_del(json_object_get(m, "files"), "config.json"); }

static void nothing(json_t *m) { (void)m; }

static void expect_refused(const char *path, anvil_status want, const char *needle)
{
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.n_threads = 1;
    o.kv_cache_tokens = 256;
    anvil_runtime *rt = (anvil_runtime *)0x1;
    assert_status_msg(anvil_runtime_load(path, &o, &rt), want, needle);
    assert_null(rt);
}

static void test_manifest_mismatches(void **st)
{
    (void)st;
    char dir[600], good[700], bad[700];
    snprintf(dir, sizeof dir, "%s/models/tiny-llama3", anvil_test_shared_dir());
    snprintf(good, sizeof good, "%s/good.engine", anvil_test_tmpdir());
    snprintf(bad, sizeof bad, "%s/bad.engine", anvil_test_tmpdir());
    assert_int_equal(anvil_build_engine(dir, good, NULL), ANVIL_OK);
    /* the rewrite itself changes nothing a loader cares about */
    rewrite(good, bad, nothing, NULL);
    anvil_runtime *rt = NULL;
    assert_int_equal(anvil_runtime_load(bad, NULL, &rt), ANVIL_OK);
    anvil_runtime_free(rt);
    static const struct {
        mutate_fn f;
        const char *kind;
        anvil_status st;
        const char *needle;
    } cases[] = {
        {other_architecture, NULL, ANVIL_ERR_FORMAT, "the engine's network is not the one anvil builds"},
        {more_layers, NULL, ANVIL_ERR_FORMAT, "the engine's network is not the one anvil builds"},
        {altered_op, NULL, ANVIL_ERR_FORMAT, "op 3 (linear) differs"},
        {weight_stored_twice, NULL, ANVIL_ERR_FORMAT, "stored twice"},
        {bad_fusion, NULL, ANVIL_ERR_FORMAT, "is not the one anvil makes"},
        {no_fusion_list, NULL, ANVIL_ERR_FORMAT, "no \"fusion\" list"},
        {bad_dtype, NULL, ANVIL_ERR_FORMAT, "no valid \"dtype\""},
        {no_config, NULL, ANVIL_ERR_NOT_FOUND, "has no config.json"},
        {nothing, "int4", ANVIL_ERR_FORMAT, "is u4 without scales"},
        {nothing, "int8", ANVIL_ERR_FORMAT, "is i8 without scales"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rewrite(good, bad, cases[i].f, cases[i].kind);
        expect_refused(bad, cases[i].st, cases[i].needle);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_manifest_mismatches),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
