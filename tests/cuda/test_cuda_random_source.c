/*
 * Random weights without a file on CUDA (anvil_runtime_options.random_weights):
 *  - the logits of a prompt and a decode step equal, bit for bit, those of
 *    the engine anvil build --random-weights writes for the same config,
 *    seed and dtype, both on the GPU (tests/random_check.c): tiny Llama-3,
 *    Qwen2-MoE and Mixtral configs in bf16 (the fast mode) and as stored,
 *    int8-wo and int4-wo (Llama), Qwen2-MoE int4-wo and Mixtral fp8 and
 *    int8-wo (quantized experts);
 *  - host memory: a 5.6 GB bf16 config loads onto the GPU with the process's
 *    peak resident size growing by the load's chunk buffers (16 MiB pieces:
 *    two pinned staging buffers and an f32 piece a thread, at most 16
 *    threads), not by the model: printed, and held under an eighth of the
 *    weights plus those buffers.
 * Skips without a device.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "anvil/runtime.h"
#include "backend/cuda/cuda_backend.h"
#include "random_check.h"
#include "testutil.h"

static void test_cuda_random_equal(void **st)
{
    (void)st;
    if (anvil_cuda_device_count() == 0)
        skip();
    char cfg[800];
    if (random_check_config_copy("tiny-llama3", cfg, sizeof cfg) != NULL) {
        random_check_config(cfg, "cuda", 7, ANVIL_DTYPE_BF16, ANVIL_QUANTIZE_NONE, 0);
        random_check_config(cfg, "cuda", 7, ANVIL_DTYPE_COUNT, ANVIL_QUANTIZE_NONE, 0);
        random_check_config(cfg, "cuda", 4, ANVIL_DTYPE_BF16, ANVIL_QUANTIZE_INT8_WO, 0);
        random_check_config(cfg, "cuda", 4, ANVIL_DTYPE_BF16, ANVIL_QUANTIZE_INT4_WO, 32);
        printf("  tiny-llama3: random source == engine on cuda (bf16, as stored, int8-wo, int4-wo)\n");
    }
    random_check_config(anvil_test_model_dir("tiny-qwen2-moe"), "cuda", 5, ANVIL_DTYPE_BF16, ANVIL_QUANTIZE_NONE, 0);
    /* quantized experts (docs/quantization.md "Mixture of experts"): the 7-token prompt and the decode step
     * take the quantized grouped GEMV (cuda_moe_quant.cu) */
    random_check_config(anvil_test_model_dir("tiny-qwen2-moe"), "cuda", 5, ANVIL_DTYPE_BF16, ANVIL_QUANTIZE_INT4_WO,
                        16);
    printf("  tiny-qwen2-moe: random source == engine on cuda (bf16, int4-wo g16)\n");
    if (random_check_config_copy("tiny-mixtral", cfg, sizeof cfg) != NULL) {
        random_check_config(cfg, "cuda", 9, ANVIL_DTYPE_BF16, ANVIL_QUANTIZE_NONE, 0);
        random_check_config(cfg, "cuda", 9, ANVIL_DTYPE_BF16, ANVIL_QUANTIZE_FP8, 0);
        random_check_config(cfg, "cuda", 9, ANVIL_DTYPE_BF16, ANVIL_QUANTIZE_INT8_WO, 0);
        printf("  tiny-mixtral: random source == engine on cuda (bf16, fp8, int8-wo)\n");
    }
}

static void test_cuda_random_host_memory(void **st)
{
    (void)st;
    if (anvil_cuda_device_count() == 0)
        skip();
    char cfg[700];
    snprintf(cfg, sizeof cfg, "%s/llama-5gb.json", anvil_test_tmpdir());
    /* 2.8e9 params: 8 layers of Llama-3-8B's, its vocabulary, an LM head of its own */
    const char *json = "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": 4096,"
                       " \"intermediate_size\": 14336, \"num_hidden_layers\": 8, \"num_attention_heads\": 32,"
                       " \"num_key_value_heads\": 8, \"vocab_size\": 128256, \"max_position_embeddings\": 256,"
                       " \"rms_norm_eps\": 1e-5, \"rope_theta\": 500000.0, \"tie_word_embeddings\": false,"
                       " \"torch_dtype\": \"bfloat16\"}";
    anvil_test_write_file(cfg, json, strlen(json));
    anvil_runtime_options ro;
    anvil_runtime_options_default(&ro);
    ro.device = "cuda";
    ro.max_seq_len = 256;
    ro.kv_cache_tokens = 256;
    ro.max_num_tokens = 64;
    ro.random_weights = 1;
    ro.seed = 1;
    /* a first load starts the CUDA context (its host memory is not the load's) */
    anvil_runtime *warm = NULL, *rt = NULL;
    assert_int_equal(anvil_runtime_load(anvil_test_model_dir("tiny-qwen2-moe"), &ro, &warm), ANVIL_OK);
    const int reset = random_check_reset_peak();
    const long before = random_check_status_kb(reset ? "VmHWM:" : "VmRSS:");
    if (anvil_runtime_load(cfg, &ro, &rt) != ANVIL_OK)
        fail_msg("%s", anvil_last_error());
    const long peak = random_check_status_kb("VmHWM:");
    const double weights_mb = (double)anvil_runtime_weight_bytes(rt) / 1048576.0;
    const double grew_mb = (double)(peak - before) / 1024.0;
    printf("  random load of %.0f MB of bf16 weights onto the GPU: peak host memory grew %.1f MB (%.1f%% of the "
           "weights)%s\n",
           weights_mb, grew_mb, 100.0 * grew_mb / weights_mb, reset ? "" : " (peak not reset: an upper bound)");
    assert_true(weights_mb > 5000.0);
    const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    const double buffers_mb = 3 * 16.0 * (double)(cpus < 1 ? 1 : cpus > 16 ? 16 : cpus);
    if (!ANVIL_TEST_SANITIZED && reset && before > 0 && peak > 0)
        assert_true(grew_mb < weights_mb / 8 + buffers_mb);
    anvil_runtime_free(rt);
    anvil_runtime_free(warm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cuda_random_equal),
        cmocka_unit_test(test_cuda_random_host_memory),
    };
    return anvil_test_run_group(tests);
}
