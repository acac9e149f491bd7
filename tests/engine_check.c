/* engine_check.h: an engine's logits against its folder's. */
#include "engine_check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/builder.h"
#include "anvil/runtime.h"
#include "golden.h"
#include "testutil.h"

int engine_model_present(const char *m)
{
    char path[600];
    snprintf(path, sizeof path, "%s/config.json", anvil_test_model_dir(m));
    FILE *f = fopen(path, "r");
    if (f)
        fclose(f);
    return f != NULL;
}

static anvil_runtime *load(const char *path, const char *device, anvil_dtype dt, int mmap)
{
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.device = device;
    o.n_threads = 2;
    o.max_num_tokens = 512;
    o.max_batch_size = 1;
    o.max_logit_rows = 512; /* every position's logits */
    o.kv_cache_tokens = 1024;
    o.max_seq_len = 1024;
    /* no further than the model's positions go (GPT-2's learned table:
     * a longer context is refused at load) */
    anvil_model_config cfg;
    if (anvil_model_config_load(path, &cfg) == ANVIL_OK && cfg.max_position_embeddings < o.max_seq_len)
        o.max_seq_len = (int32_t)cfg.max_position_embeddings;
    o.weight_dtype = dt;
    o.use_mmap = mmap;
    anvil_runtime *rt = NULL;
    if (anvil_runtime_load(path, &o, &rt) != ANVIL_OK)
        fail_msg("load %s: %s", path, anvil_last_error());
    return rt;
}

/* The logits of every position of a prompt (one prefill of up to 512 tokens). */
static float *logits_of(anvil_runtime *rt, const golden_case *gc)
{
    const int64_t V = anvil_runtime_config(rt)->vocab_size;
    const int32_t n = gc->n_ids < 512 ? gc->n_ids : 512;
    int32_t *pos = malloc((size_t)n * sizeof *pos), *rows = malloc((size_t)n * sizeof *rows);
    int32_t blocks[64], starts[2] = {0, n};
    const int32_t nb = (n + 31) / 32;
    assert_true(nb <= 64);
    assert_int_equal(anvil_runtime_kv_alloc(rt, nb, blocks), ANVIL_OK);
    for (int32_t i = 0; i < n; i++)
        pos[i] = rows[i] = i;
    float *out = malloc((size_t)n * (size_t)V * sizeof *out);
    anvil_batch b = {.n_tokens = n, .token_ids = gc->ids, .positions = pos, .n_seqs = 1, .seq_starts = starts,
                     .block_tables = blocks, .max_blocks_per_seq = nb, .n_logits = n, .logit_rows = rows};
    if (anvil_runtime_forward(rt, &b, out) != ANVIL_OK)
        fail_msg("forward: %s", anvil_last_error());
    anvil_runtime_kv_release(rt, nb, blocks);
    free(pos);
    free(rows);
    return out;
}

void engine_check_model(const char *m, const char *device, anvil_dtype dt)
{
    char dir[600], engine[700];
    snprintf(dir, sizeof dir, "%s", anvil_test_model_dir(m));
    snprintf(engine, sizeof engine, "%s/%s-%s.engine", anvil_test_tmpdir(), m,
             dt == ANVIL_DTYPE_COUNT ? "auto" : anvil_dtype_name(dt));
    anvil_build_options bo;
    anvil_build_options_default(&bo);
    bo.weight_dtype = dt;
    bo.n_threads = 2;
    if (anvil_build_engine(dir, engine, &bo) != ANVIL_OK)
        fail_msg("build %s: %s", m, anvil_last_error());
    golden g;
    golden_load(m, &g);
    anvil_runtime *folder = load(dir, device, dt, 0), *read = load(engine, device, ANVIL_DTYPE_COUNT, 0),
                  *mapped = load(engine, device, ANVIL_DTYPE_COUNT, 1);
    const int64_t V = anvil_runtime_config(folder)->vocab_size;
    assert_int_equal(anvil_runtime_weight_bytes(read), anvil_runtime_weight_bytes(folder));
    assert_int_equal(anvil_runtime_compute_dtype(read), anvil_runtime_compute_dtype(folder));
    for (int c = 0; c < g.n_cases; c++) {
        const golden_case *gc = &g.cases[c];
        float *want = logits_of(folder, gc), *a = logits_of(read, gc), *b = logits_of(mapped, gc);
        const size_t bytes = (size_t)(gc->n_ids < 512 ? gc->n_ids : 512) * (size_t)V * sizeof(float);
        if (memcmp(want, a, bytes) != 0 || memcmp(want, b, bytes) != 0)
            fail_msg("%s on %s (%s) %s: the engine's logits differ from the folder's", m, device,
                     dt == ANVIL_DTYPE_COUNT ? "auto" : anvil_dtype_name(dt), gc->name);
        free(want);
        free(a);
        free(b);
    }
    anvil_runtime_free(folder);
    anvil_runtime_free(read);
    anvil_runtime_free(mapped);
    golden_free(&g);
}

