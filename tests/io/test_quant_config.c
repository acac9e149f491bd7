/* Pre-quantized checkpoints' configs (io/quant_config.h): every fixture of
 * tests/data/quant, each format's tensor names and scheme, excluded
 * modules, and bad configs (status + message naming the field). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/quant_config.h"
#include "testutil.h"

static const char *fixture(const char *name)
{
    static char buf[4096];
    const char *src = getenv("ANVIL_SOURCE_DIR");
    snprintf(buf, sizeof buf, "%s/tests/data/quant/%s", src ? src : ".", name);
    return buf;
}

static void load(const char *name, anvil_quant_config *qc)
{
    anvil_status st = anvil_quant_config_load(fixture(name), qc);
    if (st != ANVIL_OK)
        fail_msg("%s: %s", name, anvil_last_error());
}

static void linear(const anvil_quant_config *qc, const char *module, anvil_quant_linear *ql)
{
    anvil_status st = anvil_quant_config_linear(qc, module, ql);
    if (st != ANVIL_OK)
        fail_msg("%s: %s", module, anvil_last_error());
}

#define Q "model.layers.1.self_attn.q_proj"

static void test_modelopt(void **state)
{
    (void)state;
    anvil_quant_config qc;
    load("modelopt-fp8", &qc);
    assert_int_equal(qc.format, ANVIL_QFORMAT_MODELOPT);
    assert_int_equal(qc.scheme, ANVIL_QSCHEME_FP8);
    assert_int_equal(qc.act, ANVIL_QUANT_ACT_FP8_STATIC);
    assert_true(qc.weight_per_tensor);
    anvil_quant_linear ql;
    linear(&qc, Q, &ql);
    assert_int_equal(ql.scheme, ANVIL_QSCHEME_FP8);
    assert_string_equal(ql.weight, Q ".weight");
    assert_string_equal(ql.scales, Q ".weight_scale");
    assert_string_equal(ql.input_scale, Q ".input_scale");
    assert_string_equal(ql.zeros, "");
    linear(&qc, "lm_head", &ql);
    assert_int_equal(ql.scheme, ANVIL_QSCHEME_NONE);
    assert_string_equal(ql.weight, "lm_head.weight");
    anvil_quant_config_free(&qc);

    /* the same from config.json alone (quant_method modelopt) */
    const char *cfg = "{\"quantization_config\": {\"quant_method\": \"modelopt\", \"quant_algo\": \"FP8\", "
                      "\"exclude_modules\": [\"lm_head\", \"model.layers.0.mlp*\"]}}";
    assert_int_equal(anvil_quant_config_parse(cfg, NULL, "/m", &qc), ANVIL_OK);
    assert_int_equal(qc.format, ANVIL_QFORMAT_MODELOPT);
    linear(&qc, "model.layers.0.mlp.down_proj", &ql);
    assert_int_equal(ql.scheme, ANVIL_QSCHEME_NONE); /* fnmatch pattern */
    linear(&qc, "model.layers.1.mlp.down_proj", &ql);
    assert_int_equal(ql.scheme, ANVIL_QSCHEME_FP8);
    anvil_quant_config_free(&qc);
}

static void test_fp8(void **state)
{
    (void)state;
    anvil_quant_config qc;
    anvil_quant_linear ql;
    load("fp8-tensor", &qc);
    assert_int_equal(qc.format, ANVIL_QFORMAT_FP8);
    assert_int_equal(qc.act, ANVIL_QUANT_ACT_FP8_STATIC);
    assert_true(qc.weight_per_tensor);
    linear(&qc, Q, &ql);
    assert_string_equal(ql.scales, Q ".weight_scale");
    assert_string_equal(ql.input_scale, Q ".input_scale");
    linear(&qc, "lm_head", &ql);
    assert_int_equal(ql.scheme, ANVIL_QSCHEME_NONE);
    anvil_quant_config_free(&qc);

    load("fp8-block", &qc);
    assert_int_equal(qc.format, ANVIL_QFORMAT_FP8);
    assert_int_equal(qc.block_rows, 128);
    assert_int_equal(qc.group, 128);
    assert_int_equal(qc.act, ANVIL_QUANT_ACT_NONE);
    linear(&qc, Q, &ql);
    assert_string_equal(ql.scales, Q ".weight_scale_inv");
    assert_string_equal(ql.input_scale, "");
    anvil_quant_config_free(&qc);
}

static void test_compressed_tensors(void **state)
{
    (void)state;
    anvil_quant_config qc;
    anvil_quant_linear ql;
    load("ct-fp8-static", &qc);
    assert_int_equal(qc.format, ANVIL_QFORMAT_CT_FLOAT);
    assert_int_equal(qc.act, ANVIL_QUANT_ACT_FP8_STATIC);
    assert_true(qc.weight_per_tensor);
    linear(&qc, Q, &ql);
    assert_string_equal(ql.input_scale, Q ".input_scale");
    anvil_quant_config_free(&qc);

    load("ct-fp8-dynamic", &qc);
    assert_int_equal(qc.format, ANVIL_QFORMAT_CT_FLOAT);
    assert_int_equal(qc.act, ANVIL_QUANT_ACT_FP8_DYNAMIC);
    assert_false(qc.weight_per_tensor);
    assert_int_equal(qc.group, 0);
    linear(&qc, Q, &ql);
    assert_string_equal(ql.input_scale, "");
    anvil_quant_config_free(&qc);

    load("ct-w8a16", &qc);
    assert_int_equal(qc.format, ANVIL_QFORMAT_CT_PACKED);
    assert_int_equal(qc.scheme, ANVIL_QSCHEME_INT8);
    assert_int_equal(qc.bits, 8);
    assert_int_equal(qc.act, ANVIL_QUANT_ACT_NONE);
    anvil_quant_config_free(&qc);

    load("ct-w4a16", &qc);
    assert_int_equal(qc.format, ANVIL_QFORMAT_CT_PACKED);
    assert_int_equal(qc.scheme, ANVIL_QSCHEME_INT4);
    assert_int_equal(qc.group, 128);
    assert_true(qc.symmetric);
    linear(&qc, Q, &ql);
    assert_string_equal(ql.weight, Q ".weight_packed");
    assert_string_equal(ql.scales, Q ".weight_scale");
    assert_string_equal(ql.shape, Q ".weight_shape");
    assert_string_equal(ql.zeros, "");
    linear(&qc, "lm_head", &ql);
    assert_int_equal(ql.scheme, ANVIL_QSCHEME_NONE);
    anvil_quant_config_free(&qc);

    /* asymmetric int4 names its zero points; "re:" ignore entries */
    const char *cfg =
        "{\"quantization_config\": {\"quant_method\": \"compressed-tensors\", \"format\": \"pack-quantized\", "
        "\"ignore\": [\"re:.*down_proj$\"], \"config_groups\": {\"g\": {\"targets\": [\"Linear\"], "
        "\"weights\": {\"num_bits\": 4, \"type\": \"int\", \"symmetric\": false, \"strategy\": \"group\", "
        "\"group_size\": 64}}}}}";
    assert_int_equal(anvil_quant_config_parse(cfg, NULL, "/m", &qc), ANVIL_OK);
    assert_int_equal(qc.group, 64);
    linear(&qc, Q, &ql);
    assert_string_equal(ql.zeros, Q ".weight_zero_point");
    linear(&qc, "model.layers.0.mlp.down_proj", &ql);
    assert_int_equal(ql.scheme, ANVIL_QSCHEME_NONE);
    anvil_quant_config_free(&qc);
}

static void test_awq_gptq(void **state)
{
    (void)state;
    anvil_quant_config qc;
    anvil_quant_linear ql;
    load("awq-gemm", &qc);
    assert_int_equal(qc.format, ANVIL_QFORMAT_AWQ);
    assert_int_equal(qc.scheme, ANVIL_QSCHEME_INT4);
    assert_int_equal(qc.group, 128);
    assert_false(qc.symmetric);
    linear(&qc, Q, &ql);
    assert_string_equal(ql.weight, Q ".qweight");
    assert_string_equal(ql.zeros, Q ".qzeros");
    assert_string_equal(ql.scales, Q ".scales");
    assert_string_equal(ql.g_idx, "");
    linear(&qc, "lm_head", &ql); /* AutoAWQ never quantizes the LM head */
    assert_int_equal(ql.scheme, ANVIL_QSCHEME_NONE);
    anvil_quant_config_free(&qc);

    load("gptq", &qc);
    assert_int_equal(qc.format, ANVIL_QFORMAT_GPTQ);
    assert_false(qc.desc_act);
    assert_true(qc.symmetric);
    assert_false(qc.gptq_v2);
    linear(&qc, Q, &ql);
    assert_string_equal(ql.g_idx, Q ".g_idx");
    linear(&qc, "lm_head", &ql);
    assert_int_equal(ql.scheme, ANVIL_QSCHEME_NONE);
    anvil_quant_config_free(&qc);

    load("gptq-descact", &qc);
    assert_true(qc.desc_act);
    assert_false(qc.symmetric);
    anvil_quant_config_free(&qc);

    const char *v2 = "{\"quantization_config\": {\"quant_method\": \"gptq\", \"bits\": 4, \"group_size\": -1, "
                     "\"checkpoint_format\": \"gptq_v2\", \"lm_head\": true}}";
    assert_int_equal(anvil_quant_config_parse(v2, NULL, "/m", &qc), ANVIL_OK);
    assert_true(qc.gptq_v2);
    assert_int_equal(qc.group, -1);
    linear(&qc, "lm_head", &ql);
    assert_int_equal(ql.scheme, ANVIL_QSCHEME_INT4);
    anvil_quant_config_free(&qc);
}

static void test_plain_folder(void **state)
{
    (void)state;
    anvil_quant_config qc;
    assert_int_equal(anvil_quant_config_load(anvil_test_shared_path("models/stories260K"), &qc), ANVIL_OK);
    assert_int_equal(qc.format, ANVIL_QFORMAT_NONE);
    anvil_quant_linear ql;
    linear(&qc, Q, &ql);
    assert_int_equal(ql.scheme, ANVIL_QSCHEME_NONE);
    assert_string_equal(ql.weight, Q ".weight");
    anvil_quant_config_free(&qc);
    anvil_quant_config_free(NULL);
}

/* Each bad config: its status and a piece of its message. */
static void bad(const char *qcfg, anvil_status want, const char *needle)
{
    char cfg[2048];
    snprintf(cfg, sizeof cfg, "{\"model_type\": \"llama\", \"quantization_config\": %s}", qcfg);
    anvil_quant_config qc;
    anvil_status st = anvil_quant_config_parse(cfg, NULL, "/m", &qc);
    assert_status_msg(st, want, needle);
    assert_int_equal(qc.format, ANVIL_QFORMAT_NONE);
    assert_null(qc.ignore);
}

#define CT(fmt, weights, extra)                                                                                   \
    "{\"quant_method\": \"compressed-tensors\", \"format\": \"" fmt "\", \"config_groups\": {\"group_0\": "      \
    "{\"targets\": [\"Linear\"], \"weights\": " weights extra "}}}"

static void test_bad_configs(void **state)
{
    (void)state;
    bad("{\"quant_method\": \"bitsandbytes\"}", ANVIL_ERR_UNSUPPORTED, "quant_method \"bitsandbytes\"");
    bad("{\"bits\": 4}", ANVIL_ERR_FORMAT, "quant_method");
    bad("{\"quant_method\": 4}", ANVIL_ERR_FORMAT, "quant_method");
    bad("[1]", ANVIL_ERR_FORMAT, "quantization_config");
    bad("{\"quant_method\": \"gptq\", \"bits\": 3, \"group_size\": 128}", ANVIL_ERR_UNSUPPORTED,
        "quantization_config.bits 3");
    bad("{\"quant_method\": \"gptq\", \"bits\": 4, \"group_size\": 0}", ANVIL_ERR_FORMAT, "group_size 0");
    bad("{\"quant_method\": \"gptq\", \"bits\": 4, \"checkpoint_format\": \"marlin\"}", ANVIL_ERR_UNSUPPORTED,
        "checkpoint_format \"marlin\"");
    bad("{\"quant_method\": \"gptq\", \"bits\": 4, \"desc_act\": \"yes\"}", ANVIL_ERR_FORMAT, "desc_act");
    bad("{\"quant_method\": \"awq\", \"bits\": 4, \"group_size\": 128, \"version\": \"gemv\"}", ANVIL_ERR_UNSUPPORTED,
        "version \"gemv\"");
    bad("{\"quant_method\": \"awq\", \"bits\": 4, \"group_size\": 128, \"zero_point\": false}", ANVIL_ERR_UNSUPPORTED,
        "zero_point");
    bad("{\"quant_method\": \"awq\", \"bits\": 8}", ANVIL_ERR_UNSUPPORTED, "bits 8");
    bad("{\"quant_method\": \"gptq\", \"bits\": 1e300}", ANVIL_ERR_FORMAT, "bits");
    bad("{\"quant_method\": \"gptq\", \"bits\": 4, \"group_size\": -1e19}", ANVIL_ERR_FORMAT, "group_size");
    bad("{\"quant_method\": \"modelopt\", \"quant_algo\": \"NVFP4\"}", ANVIL_ERR_UNSUPPORTED, "\"NVFP4\"");
    bad("{\"quant_method\": \"modelopt\"}", ANVIL_ERR_FORMAT, "quant_algo");
    bad("{\"quant_method\": \"fp8\", \"fmt\": \"e5m2\"}", ANVIL_ERR_UNSUPPORTED, "fmt \"e5m2\"");
    bad("{\"quant_method\": \"fp8\", \"activation_scheme\": \"weird\"}", ANVIL_ERR_UNSUPPORTED, "\"weird\"");
    bad("{\"quant_method\": \"fp8\", \"weight_block_size\": [128]}", ANVIL_ERR_FORMAT, "weight_block_size");
    bad("{\"quant_method\": \"fp8\", \"modules_to_not_convert\": \"lm_head\"}", ANVIL_ERR_FORMAT,
        "modules_to_not_convert");
    bad(CT("pack-quantized", "{\"num_bits\": 3, \"type\": \"int\", \"strategy\": \"group\", \"group_size\": 128}", ""),
        ANVIL_ERR_UNSUPPORTED, "num_bits 3");
    bad(CT("pack-quantized", "{\"num_bits\": 4, \"type\": \"int\", \"strategy\": \"group\"}", ""), ANVIL_ERR_FORMAT,
        "group_size");
    bad(CT("pack-quantized", "{\"num_bits\": 4, \"type\": \"int\", \"strategy\": \"block\"}", ""),
        ANVIL_ERR_UNSUPPORTED, "strategy \"block\"");
    bad(CT("pack-quantized",
           "{\"num_bits\": 4, \"type\": \"int\", \"strategy\": \"group\", \"group_size\": 128, "
           "\"actorder\": \"group\"}",
           ""),
        ANVIL_ERR_UNSUPPORTED, "actorder \"group\"");
    bad(CT("int-quantized", "{\"num_bits\": 8, \"type\": \"int\", \"strategy\": \"channel\", \"symmetric\": false}", ""),
        ANVIL_ERR_UNSUPPORTED, "symmetric false");
    bad(CT("float-quantized", "{\"num_bits\": 8, \"type\": \"float\", \"strategy\": \"channel\"}",
           ", \"input_activations\": {\"num_bits\": 8, \"type\": \"float\", \"strategy\": \"group\", "
           "\"dynamic\": true}"),
        ANVIL_ERR_UNSUPPORTED, "input_activations.strategy \"group\"");
    bad(CT("pack-quantized", "{\"num_bits\": 4, \"type\": \"int\", \"strategy\": \"channel\"}",
           ", \"input_activations\": {\"num_bits\": 8, \"type\": \"float\", \"dynamic\": true}"),
        ANVIL_ERR_UNSUPPORTED, "only fp8 W8A8");
    bad(CT("sparse-bitmask", "{\"num_bits\": 8, \"type\": \"int\", \"strategy\": \"channel\"}", ""),
        ANVIL_ERR_UNSUPPORTED, "format \"sparse-bitmask\"");
    bad("{\"quant_method\": \"compressed-tensors\", \"format\": \"pack-quantized\", \"config_groups\": {}}",
        ANVIL_ERR_FORMAT, "config_groups");
    bad("{\"quant_method\": \"compressed-tensors\", \"format\": \"pack-quantized\", \"config_groups\": "
        "{\"a\": {\"weights\": {\"num_bits\": 4}}, \"b\": {\"weights\": {\"num_bits\": 8}}}}",
        ANVIL_ERR_UNSUPPORTED, "2 groups");
    bad("{\"quant_method\": \"compressed-tensors\", \"format\": \"pack-quantized\", \"quantization_status\": "
        "\"frozen\", \"config_groups\": {\"a\": {\"weights\": {\"num_bits\": 4}}}}",
        ANVIL_ERR_UNSUPPORTED, "quantization_status \"frozen\"");

    /* hf_quant_config.json from another producer; malformed JSON */
    anvil_quant_config qc;
    assert_status_msg(anvil_quant_config_parse("{}", "{\"producer\": {\"name\": \"other\"}}", "/m", &qc),
                      ANVIL_ERR_UNSUPPORTED, "producer \"other\"");
    assert_status_msg(anvil_quant_config_parse("{}", "{\"producer\": {\"name\": \"modelopt\"}}", "/m", &qc),
                      ANVIL_ERR_FORMAT, "\"quantization\"");
    assert_status_msg(anvil_quant_config_parse("{\"quantization_config\": {", NULL, "/m", &qc), ANVIL_ERR_FORMAT,
                      "/m/config.json");

    /* a module name too long for the descriptions */
    assert_int_equal(anvil_quant_config_parse("{}", NULL, "/m", &qc), ANVIL_OK);
    char longname[400];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    anvil_quant_linear ql;
    assert_status_msg(anvil_quant_config_linear(&qc, longname, &ql), ANVIL_ERR_INVALID_ARG, "too long");
    anvil_quant_config_free(&qc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_modelopt),        cmocka_unit_test(test_fp8),
        cmocka_unit_test(test_compressed_tensors), cmocka_unit_test(test_awq_gptq),
        cmocka_unit_test(test_plain_folder),    cmocka_unit_test(test_bad_configs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
