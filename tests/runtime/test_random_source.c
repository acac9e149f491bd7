/*
 * Random weights with no file (anvil_runtime_options.random_weights): a
 * runtime loaded from a config alone gives, bit for bit, the logits of the
 * engine `anvil build --random-weights` writes for the same config, seed
 * and dtype (a Llama-style model, two MoE families; f32 and bf16; int8-wo
 * and int4-wo), a prompt and a decode step after it; another seed gives
 * other logits; the config may have any file name; bad options are
 * refused with a message. Memory: loading a ~300 MB config holds the
 * weights (the CPU computes from host memory) and chunk buffers, not a
 * second copy of the model (printed, and bounded by half the model).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/builder.h"
#include "anvil/runtime.h"
#include "testutil.h"

/* The prompt's logits (every row) and the next step's, from one runtime. */
typedef struct run_out {
    float *logits; /* [(N_PROMPT + 1) * vocab] */
    int64_t vocab;
} run_out;

#define N_PROMPT 7

static void options(anvil_runtime_options *ro, anvil_dtype dt)
{
    anvil_runtime_options_default(ro);
    ro->n_threads = 2;
    ro->max_seq_len = 64;
    ro->kv_cache_tokens = 128;
    ro->max_num_tokens = 16;
    ro->max_batch_size = 2;
    ro->max_logit_rows = 8;
    ro->weight_dtype = dt;
}

static void run(anvil_runtime *rt, run_out *out)
{
    const int64_t vocab = anvil_runtime_config(rt)->vocab_size;
    out->vocab = vocab;
    out->logits = malloc((size_t)(N_PROMPT + 1) * (size_t)vocab * sizeof(float));
    assert_non_null(out->logits);
    int32_t blocks[2];
    assert_int_equal(anvil_runtime_kv_alloc(rt, 2, blocks), ANVIL_OK);
    int32_t ids[N_PROMPT], pos[N_PROMPT], rows[N_PROMPT], starts[2] = {0, N_PROMPT};
    for (int32_t i = 0; i < N_PROMPT; i++) {
        ids[i] = (int32_t)((3 + 37 * i) % vocab);
        pos[i] = i;
        rows[i] = i;
    }
    anvil_batch b = {.n_tokens = N_PROMPT, .token_ids = ids, .positions = pos, .n_seqs = 1, .seq_starts = starts,
                     .block_tables = blocks, .max_blocks_per_seq = 2, .n_logits = N_PROMPT, .logit_rows = rows};
    if (anvil_runtime_forward(rt, &b, out->logits) != ANVIL_OK)
        fail_msg("prompt: %s", anvil_last_error());
    /* one decode step over the cache the prompt filled */
    int32_t id = 11 % (int32_t)vocab, p = N_PROMPT, row = 0, st1[2] = {0, 1};
    anvil_batch d = {.n_tokens = 1, .token_ids = &id, .positions = &p, .n_seqs = 1, .seq_starts = st1,
                     .block_tables = blocks, .max_blocks_per_seq = 2, .n_logits = 1, .logit_rows = &row};
    if (anvil_runtime_forward(rt, &d, out->logits + (size_t)N_PROMPT * (size_t)vocab) != ANVIL_OK)
        fail_msg("decode step: %s", anvil_last_error());
}

/* Builds config into an engine (seed, dtype, scheme), runs it, and runs
 * the config as random weights of the same; the logits must be equal bit
 * for bit. A second random load of seed + 1 must differ. */
static void check_config_group(const char *config, uint64_t seed, anvil_dtype dt, anvil_quantize q, int32_t group)
{
    char eng[700];
    snprintf(eng, sizeof eng, "%s/rand-%llu-%d-%d.engine", anvil_test_tmpdir(), (unsigned long long)seed, (int)dt,
             (int)q);
    anvil_build_options bo;
    anvil_build_options_default(&bo);
    bo.random_weights = 1;
    bo.seed = seed;
    bo.weight_dtype = dt;
    bo.quantize = q;
    bo.quant_group = group;
    if (anvil_build_engine(config, eng, &bo) != ANVIL_OK)
        fail_msg("build: %s", anvil_last_error());

    anvil_runtime_options ro;
    options(&ro, dt);
    anvil_runtime *a = NULL, *b = NULL, *c = NULL;
    assert_int_equal(anvil_runtime_load(eng, &ro, &a), ANVIL_OK);
    ro.random_weights = 1;
    ro.seed = seed;
    ro.quantize = q;
    ro.quant_group = group;
    if (anvil_runtime_load(config, &ro, &b) != ANVIL_OK)
        fail_msg("%s: %s", config, anvil_last_error());
    assert_int_equal(anvil_runtime_weight_bytes(a), anvil_runtime_weight_bytes(b));
    run_out ra, rb, rc;
    run(a, &ra);
    run(b, &rb);
    const size_t n = (size_t)(N_PROMPT + 1) * (size_t)ra.vocab;
    size_t differ = 0;
    for (size_t i = 0; i < n; i++)
        differ += memcmp(&ra.logits[i], &rb.logits[i], sizeof(float)) != 0;
    if (differ != 0)
        fail_msg("%s seed %llu dtype %d quantize %d: %zu of %zu logits differ from the engine's", config,
                 (unsigned long long)seed, (int)dt, (int)q, differ, n);
    ro.seed = seed + 1; /* other weights: other logits */
    assert_int_equal(anvil_runtime_load(config, &ro, &c), ANVIL_OK);
    run(c, &rc);
    differ = 0;
    for (size_t i = 0; i < n; i++)
        differ += ra.logits[i] != rc.logits[i];
    assert_true(differ > n / 2);
    free(ra.logits);
    free(rb.logits);
    free(rc.logits);
    anvil_runtime_free(a);
    anvil_runtime_free(b);
    anvil_runtime_free(c);
}

static void check_config(const char *config, uint64_t seed, anvil_dtype dt, anvil_quantize q)
{
    check_config_group(config, seed, dt, q, 0);
}

/* The config of model m under a name that is not config.json. */
static const char *config_copy(const char *m, char *out, size_t cap)
{
    char src[700];
    snprintf(src, sizeof src, "%s/config.json", anvil_test_model_dir(m));
    FILE *f = fopen(src, "rb");
    if (f == NULL)
        return NULL;
    char buf[16384];
    const size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    snprintf(out, cap, "%s/%s-shape.json", anvil_test_tmpdir(), m);
    anvil_test_write_file(out, buf, len);
    return out;
}

static void test_llama(void **st)
{
    (void)st;
    char cfg[800];
    if (config_copy("tiny-llama3", cfg, sizeof cfg) == NULL)
        skip();
    check_config(cfg, 7, ANVIL_DTYPE_COUNT, ANVIL_QUANTIZE_NONE);
    check_config(cfg, 3, ANVIL_DTYPE_BF16, ANVIL_QUANTIZE_NONE);
    check_config(cfg, 3, ANVIL_DTYPE_F32, ANVIL_QUANTIZE_NONE);
}

/* The folder form (config.json inside) as well as a file. */
static void test_moe(void **st)
{
    (void)st;
    char cfg[800];
    check_config(anvil_test_model_dir("tiny-qwen2-moe"), 5, ANVIL_DTYPE_COUNT, ANVIL_QUANTIZE_NONE);
    if (config_copy("tiny-qwen3-moe", cfg, sizeof cfg) != NULL)
        check_config(cfg, 5, ANVIL_DTYPE_BF16, ANVIL_QUANTIZE_NONE);
    if (config_copy("tiny-mixtral", cfg, sizeof cfg) != NULL) {
        check_config(cfg, 9, ANVIL_DTYPE_COUNT, ANVIL_QUANTIZE_NONE);
        check_config(cfg, 9, ANVIL_DTYPE_F32, ANVIL_QUANTIZE_NONE);
    }
}

static void test_quantized(void **st)
{
    (void)st;
    char cfg[800];
    if (config_copy("tiny-llama3", cfg, sizeof cfg) == NULL)
        skip();
    check_config(cfg, 4, ANVIL_DTYPE_BF16, ANVIL_QUANTIZE_INT8_WO);
    check_config_group(cfg, 4, ANVIL_DTYPE_BF16, ANVIL_QUANTIZE_INT4_WO, 32);
    if (config_copy("tiny-mixtral", cfg, sizeof cfg) != NULL)
        check_config(cfg, 4, ANVIL_DTYPE_BF16, ANVIL_QUANTIZE_INT8_WO);
}

static void test_errors(void **st)
{
    (void)st;
    anvil_runtime_options ro;
    options(&ro, ANVIL_DTYPE_COUNT);
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
}

/* A value of /proc/self/status in kB ("VmHWM:", "VmRSS:"); -1 if absent. */
static long status_kb(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL)
        return -1;
    char line[256];
    long v = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, strlen(key)) == 0)
            v = strtol(line + strlen(key), NULL, 10);
    fclose(f);
    return v;
}

/*
 * Peak host memory of a load from a ~300 MB config: the CPU backend keeps
 * its weights in host memory (so the weights count once), and the load
 * adds its chunk buffers (ANVIL_BUILD_CHUNK a thread), the activations and
 * the KV cache; a second copy of the model (a file read whole, an f32
 * copy) would double it. The peak is reset before the load (clear_refs 5).
 * Under the sanitizers (their shadow memory and quarantine) only printed.
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
    FILE *f = fopen("/proc/self/clear_refs", "w");
    const int reset = f != NULL && fputs("5", f) >= 0;
    if (f != NULL && fclose(f) != 0)
        fprintf(stderr, "clear_refs: not reset\n");
    const long before = status_kb(reset ? "VmHWM:" : "VmRSS:");
    anvil_runtime_options ro;
    options(&ro, ANVIL_DTYPE_COUNT);
    ro.random_weights = 1;
    ro.seed = 1;
    anvil_runtime *rt = NULL;
    if (anvil_runtime_load(cfg, &ro, &rt) != ANVIL_OK)
        fail_msg("%s", anvil_last_error());
    const long peak = status_kb("VmHWM:");
    const double weights_mb = (double)anvil_runtime_weight_bytes(rt) / 1048576.0;
    const double grew_mb = (double)(peak - before) / 1024.0;
    printf("random load of %.1f MB of bf16 weights: peak host memory grew %.1f MB (%.1f MB beyond the weights, "
           "which the CPU keeps in host memory)%s\n",
           weights_mb, grew_mb, grew_mb - weights_mb, reset ? "" : " (peak not reset: an upper bound)");
    assert_true(weights_mb > 250.0);
    if (!ANVIL_TEST_SANITIZED && reset && before > 0 && peak > 0)
        assert_true(grew_mb - weights_mb < weights_mb / 2);
    anvil_runtime_free(rt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama),
        cmocka_unit_test(test_moe),
        cmocka_unit_test(test_quantized),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_peak_memory),
    };
    return anvil_test_run_group(tests);
}
