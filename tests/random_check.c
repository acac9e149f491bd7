/* random_check.h: random weights without a file against the built engine. */
#include "random_check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/runtime.h"
#include "testutil.h"

#define N_PROMPT 7

/* The prompt's logits (every row), then the decode step's. */
typedef struct run_out {
    float *logits; /* [(N_PROMPT + 1) * vocab] */
    int64_t vocab;
} run_out;

static void options(anvil_runtime_options *ro, const char *device, anvil_dtype dt)
{
    anvil_runtime_options_default(ro);
    ro->device = device;
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
    int32_t id = (int32_t)(11 % vocab), p = N_PROMPT, row = 0, st1[2] = {0, 1};
    anvil_batch d = {.n_tokens = 1, .token_ids = &id, .positions = &p, .n_seqs = 1, .seq_starts = st1,
                     .block_tables = blocks, .max_blocks_per_seq = 2, .n_logits = 1, .logit_rows = &row};
    if (anvil_runtime_forward(rt, &d, out->logits + (size_t)N_PROMPT * (size_t)vocab) != ANVIL_OK)
        fail_msg("decode step: %s", anvil_last_error());
}

void random_check_config(const char *config, const char *device, uint64_t seed, anvil_dtype dt, anvil_quantize q,
                         int32_t group)
{
    random_check_config_head(config, device, seed, dt, q, group, 0);
}

void random_check_config_head(const char *config, const char *device, uint64_t seed, anvil_dtype dt,
                              anvil_quantize q, int32_t group, int lm_head)
{
    char eng[700];
    snprintf(eng, sizeof eng, "%s/rand-%llu-%d-%d-%d%s.engine", anvil_test_tmpdir(), (unsigned long long)seed,
             (int)dt, (int)q, (int)group, lm_head ? "-lmhead" : "");
    anvil_build_options bo;
    anvil_build_options_default(&bo);
    bo.random_weights = 1;
    bo.seed = seed;
    bo.weight_dtype = dt;
    bo.quantize = q;
    bo.quant_group = group;
    bo.quantize_lm_head = lm_head;
    if (anvil_build_engine(config, eng, &bo) != ANVIL_OK)
        fail_msg("build: %s", anvil_last_error());

    anvil_runtime_options ro;
    options(&ro, device, dt);
    anvil_runtime *a = NULL, *b = NULL, *c = NULL;
    if (anvil_runtime_load(eng, &ro, &a) != ANVIL_OK)
        fail_msg("%s: %s", eng, anvil_last_error());
    ro.random_weights = 1;
    ro.seed = seed;
    ro.quantize = q;
    ro.quant_group = group;
    ro.quantize_lm_head = lm_head;
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
        fail_msg("%s on %s, seed %llu, dtype %d, quantize %s: %zu of %zu logits differ from the engine's", config,
                 device, (unsigned long long)seed, (int)dt, anvil_quantize_name(q), differ, n);
    ro.seed = seed + 1; /* other weights: other logits */
    if (anvil_runtime_load(config, &ro, &c) != ANVIL_OK)
        fail_msg("%s: %s", config, anvil_last_error());
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

const char *random_check_config_copy(const char *m, char *out, size_t cap)
{
    char src[700];
    snprintf(src, sizeof src, "%s/config.json", anvil_test_model_dir(m));
    FILE *f = fopen(src, "rb");
    if (f == NULL)
        return NULL;
    char buf[16384];
    const size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    assert_true(len < sizeof buf);
    snprintf(out, cap, "%s/%s-shape.json", anvil_test_tmpdir(), m);
    anvil_test_write_file(out, buf, len);
    return out;
}

long random_check_status_kb(const char *key)
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

int random_check_reset_peak(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (f == NULL)
        return 0;
    const int ok = fputs("5", f) >= 0;
    return fclose(f) == 0 && ok;
}
