/*
 * Random weights with no file (anvil_runtime_options.random_weights): a
 * runtime loaded from a config alone gives, bit for bit, the logits of the
 * engine `anvil build --random-weights` writes for the same config, seed
 * and dtype (a Llama-style model, three MoE families, every other golden
 * family; f32 and bf16; int8-wo and int4-wo), a prompt and a decode step
 * after it; another seed gives other logits; the config may have any file
 * name; bad options are refused with a message. Memory: loading a ~300 MB config holds the
 * weights (the CPU computes from host memory) and chunk buffers, not a
 * second copy of the model (printed, and bounded by half the model).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "anvil/builder.h"
#include "anvil/runtime.h"
#include "random_check.h"
#include "testutil.h"

static void test_llama(void **st)
{
    (void)st;
    char cfg[800];
    if (random_check_config_copy("tiny-llama3", cfg, sizeof cfg) == NULL)
        skip();
    random_check_config(cfg, "cpu", 7, ANVIL_DTYPE_COUNT, ANVIL_QUANTIZE_NONE, 0);
    random_check_config(cfg, "cpu", 3, ANVIL_DTYPE_BF16, ANVIL_QUANTIZE_NONE, 0);
    random_check_config(cfg, "cpu", 3, ANVIL_DTYPE_F32, ANVIL_QUANTIZE_NONE, 0);
}

/* Every other family the builder makes random weights for, from the
 * model folders (the config.json inside; their safetensors unread). */
static void test_families(void **st)
{
    (void)st;
    static const char *const models[] = {"stories260K", "tinycode",   "tiny-qwen2", "tiny-mistral",
                                         "tiny-qwen3",  "tiny-phi3",  "tiny-gemma2", "tiny-gpt2"};
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        char path[800];
        snprintf(path, sizeof path, "%s/config.json", anvil_test_model_dir(models[i]));
        if (access(path, F_OK) != 0)
            continue;
        random_check_config(anvil_test_model_dir(models[i]), "cpu", 11, ANVIL_DTYPE_COUNT, ANVIL_QUANTIZE_NONE, 0);
    }
}

/* The folder form (config.json inside) as well as a file. */
static void test_moe(void **st)
{
    (void)st;
    char cfg[800];
    random_check_config(anvil_test_model_dir("tiny-qwen2-moe"), "cpu", 5, ANVIL_DTYPE_COUNT, ANVIL_QUANTIZE_NONE, 0);
    if (random_check_config_copy("tiny-qwen3-moe", cfg, sizeof cfg) != NULL)
        random_check_config(cfg, "cpu", 5, ANVIL_DTYPE_BF16, ANVIL_QUANTIZE_NONE, 0);
    if (random_check_config_copy("tiny-mixtral", cfg, sizeof cfg) != NULL) {
        random_check_config(cfg, "cpu", 9, ANVIL_DTYPE_COUNT, ANVIL_QUANTIZE_NONE, 0);
        random_check_config(cfg, "cpu", 9, ANVIL_DTYPE_F32, ANVIL_QUANTIZE_NONE, 0);
    }
}

static void test_quantized(void **st)
{
    (void)st;
    char cfg[800];
    if (random_check_config_copy("tiny-llama3", cfg, sizeof cfg) == NULL)
        skip();
    random_check_config(cfg, "cpu", 4, ANVIL_DTYPE_BF16, ANVIL_QUANTIZE_INT8_WO, 0);
    random_check_config(cfg, "cpu", 4, ANVIL_DTYPE_BF16, ANVIL_QUANTIZE_INT4_WO, 32);
    /* the LM head quantized too: the engine's bytes and logits, bit for bit */
    random_check_config_head(cfg, "cpu", 4, ANVIL_DTYPE_BF16, ANVIL_QUANTIZE_INT8_WO, 0, 1);
    random_check_config_head(cfg, "cpu", 4, ANVIL_DTYPE_BF16, ANVIL_QUANTIZE_FP8, 0, 1);
    if (random_check_config_copy("tiny-mixtral", cfg, sizeof cfg) != NULL)
        random_check_config(cfg, "cpu", 4, ANVIL_DTYPE_BF16, ANVIL_QUANTIZE_INT8_WO, 0);
}

/* Small sizes for a load that must fail. */
static void options(anvil_runtime_options *ro)
{
    anvil_runtime_options_default(ro);
    ro->n_threads = 2;
    ro->max_seq_len = 64;
    ro->kv_cache_tokens = 128;
    ro->max_num_tokens = 16;
}

static void test_errors(void **st)
{
    (void)st;
    anvil_runtime_options ro;
    options(&ro);
    anvil_runtime *rt = (anvil_runtime *)&ro; /* set to NULL on failure */
    char missing[700];
    snprintf(missing, sizeof missing, "%s/no-such-config.json", anvil_test_tmpdir());
    ro.random_weights = 1;
    assert_status_msg(anvil_runtime_load(missing, &ro, &rt), ANVIL_ERR_NOT_FOUND, "no-such-config.json");
    assert_null(rt);
    char bad[700];
    snprintf(bad, sizeof bad, "%s/not-json.json", anvil_test_tmpdir());
    anvil_test_write_file(bad, "{\"hidden_size\": ", 16);
    assert_status_msg(anvil_runtime_load(bad, &ro, &rt), ANVIL_ERR_FORMAT, "not-json.json");
    /* quantizing at load is for random weights; a folder is quantized by anvil build */
    ro.random_weights = 0;
    ro.quantize = ANVIL_QUANTIZE_INT8_WO;
    assert_status_msg(anvil_runtime_load(anvil_test_model_dir("tiny-qwen2-moe"), &ro, &rt), ANVIL_ERR_INVALID_ARG,
                      "goes with random weights");
    ro.random_weights = 1;
    ro.quantize = ANVIL_QUANTIZE_INT8_WO;
    ro.quant_group = 64;
    assert_status_msg(anvil_runtime_load(anvil_test_model_dir("tiny-qwen2-moe"), &ro, &rt), ANVIL_ERR_INVALID_ARG,
                      "int4-wo");
    assert_null(rt);
    /* the LM head quantized: with a quantization only, and not where it is the embedding table */
    ro.quant_group = 0;
    ro.quantize = ANVIL_QUANTIZE_NONE;
    ro.quantize_lm_head = 1;
    assert_status_msg(anvil_runtime_load(anvil_test_model_dir("tiny-qwen2-moe"), &ro, &rt), ANVIL_ERR_INVALID_ARG,
                      "goes with a quantization");
    ro.quantize = ANVIL_QUANTIZE_INT8_WO;
    assert_status_msg(anvil_runtime_load(anvil_test_model_dir("tinycode"), &ro, &rt), ANVIL_ERR_UNSUPPORTED, "tied");
    assert_null(rt);
}

/*
 * Peak host memory of a load from a ~300 MB config: the CPU backend keeps
 * its weights in host memory (so the weights count once), and the load
 * adds its chunk buffers (ANVIL_BUILD_CHUNK a thread), the activations and
 * the KV cache; a second copy of the model (a file read whole, an f32
 * copy) would double it. The peak is reset before the load (clear_refs 5).
 * Held under half the model beyond the weights, plus a 16 MiB piece per
 * load thread (a machine of many cores has many). Under the sanitizers
 * (their shadow memory and quarantine) only printed.
 */
static void test_peak_memory(void **st)
{
    (void)st;
    char cfg[700];
    snprintf(cfg, sizeof cfg, "%s/llama-300mb.json", anvil_test_tmpdir());
    const char *json = "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": 1024,"
                       " \"intermediate_size\": 2816, \"num_hidden_layers\": 8, \"num_attention_heads\": 16,"
                       " \"num_key_value_heads\": 4, \"vocab_size\": 32000, \"max_position_embeddings\": 256,"
                       " \"rms_norm_eps\": 1e-5, \"rope_theta\": 10000.0, \"tie_word_embeddings\": false,"
                       " \"torch_dtype\": \"bfloat16\"}";
    anvil_test_write_file(cfg, json, strlen(json));
    const int reset = random_check_reset_peak();
    const long before = random_check_status_kb(reset ? "VmHWM:" : "VmRSS:");
    anvil_runtime_options ro;
    options(&ro);
    ro.random_weights = 1;
    ro.seed = 1;
    anvil_runtime *rt = NULL;
    if (anvil_runtime_load(cfg, &ro, &rt) != ANVIL_OK)
        fail_msg("%s", anvil_last_error());
    const long peak = random_check_status_kb("VmHWM:");
    const double weights_mb = (double)anvil_runtime_weight_bytes(rt) / 1048576.0;
    const double grew_mb = (double)(peak - before) / 1024.0;
    printf("random load of %.1f MB of bf16 weights: peak host memory grew %.1f MB (%.1f MB beyond the weights, "
           "which the CPU keeps in host memory)%s\n",
           weights_mb, grew_mb, grew_mb - weights_mb, reset ? "" : " (peak not reset: an upper bound)");
    assert_true(weights_mb > 250.0);
    /* each load thread (one a CPU, at most 16) fills its chunks through a 16 MiB f32 piece */
    const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    const double pieces_mb = 16.0 * (double)(cpus < 1 ? 1 : cpus > 16 ? 16 : cpus);
    if (!ANVIL_TEST_SANITIZED && reset && before > 0 && peak > 0)
        assert_true(grew_mb - weights_mb < weights_mb / 2 + pieces_mb);
    anvil_runtime_free(rt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama),
        cmocka_unit_test(test_moe),
        cmocka_unit_test(test_families),
        cmocka_unit_test(test_quantized),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_peak_memory),
    };
    return anvil_test_run_group(tests);
}
