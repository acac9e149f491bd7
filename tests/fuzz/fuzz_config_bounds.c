/*
 * libFuzzer target for config.json bounds: the input is config.json text
 * (seeds: the shared models' configs; the dictionary holds the keys and the
 * numbers that broke loads before: 2^31, 2^32 + 512, 2^61, 2^63 - 1, 1e-30,
 * 1e300). Whatever parses must satisfy every bound (anvil_model_config_check
 * agrees with the parser), and then the network is built and every size
 * the runtime would allocate is planned (anvil_runtime_plan_sizes) under
 * options picked from the input's hash, without allocating any of it: UBSan
 * catches an overflow on the way, -rss_limit_mb an allocation that grew
 * with a config value, and the checks below a plan whose numbers disagree.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/model_config.h"
#include "anvil/runtime.h"
#include "runtime/runtime_plan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t fnv(const uint8_t *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

/* Options a user could give, from plain defaults to the CLI's extremes. */
static void pick_options(uint64_t h, anvil_runtime_options *o, anvil_dtype *act)
{
    static const int32_t seq[] = {0, 0, 0, 1, 4096, ANVIL_MAX_CONTEXT, ANVIL_MAX_CONTEXT + 1, INT32_MAX};
    static const int32_t block[] = {32, 16, 1, 4096, 0, 4097};
    static const int32_t tokens[] = {512, 1, 8192, 1 << 24, INT32_MAX};
    static const int32_t batch[] = {64, 1, 256, 65536, INT32_MAX};
    static const int64_t kv[] = {0, 0, 1, 1 << 20, (int64_t)1 << 40, INT64_MAX};
    static const anvil_dtype acts[] = {ANVIL_DTYPE_F32, ANVIL_DTYPE_BF16, ANVIL_DTYPE_F16};
    anvil_runtime_options_default(o);
    o->max_seq_len = seq[h % 8];
    h /= 8;
    o->kv_block_size = block[h % 6];
    h /= 6;
    o->max_num_tokens = tokens[h % 5];
    h /= 5;
    o->max_batch_size = batch[h % 5];
    h /= 5;
    o->kv_cache_tokens = kv[h % 6];
    h /= 6;
    o->kv_cache_fraction = h % 4 == 0 ? 0.25 : 0.0;
    h /= 4;
    *act = acts[h % 3];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 16)
        return 0;
    char *text = malloc(size + 1);
    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    anvil_model_config c;
    anvil_status st = anvil_model_config_parse(text, &c);
    free(text);
    if (st != ANVIL_OK) {
        if (anvil_last_error()[0] == '\0')
            __builtin_trap(); /* every refusal says why */
        return 0;
    }
    /* what parses is within every bound */
    if (anvil_model_config_check(&c) != ANVIL_OK)
        __builtin_trap();
    if (c.n_layers < 1 || c.n_layers > ANVIL_MAX_LAYERS || c.n_heads > ANVIL_MAX_HEADS ||
        c.head_dim > ANVIL_MAX_HEAD_DIM || c.max_position_embeddings > ANVIL_MAX_CONTEXT ||
        c.vocab_size > ANVIL_MAX_VOCAB_SIZE || c.hidden_size > ANVIL_MAX_HIDDEN_SIZE ||
        c.intermediate_size > ANVIL_MAX_INTERMEDIATE_SIZE || !(c.rope.theta >= ANVIL_MIN_ROPE_THETA) ||
        !(c.rms_norm_eps >= ANVIL_MIN_RMS_NORM_EPS))
        __builtin_trap();

    anvil_runtime_options o;
    anvil_dtype act;
    pick_options(fnv(data, size), &o, &act);
    anvil_runtime_sizes z;
    st = anvil_runtime_plan_sizes(&c, &o, act, 0, &z);
    if (st != ANVIL_OK) {
        /* refused options or an unknown architecture; never a bug, never silent */
        if (st == ANVIL_ERR_INTERNAL || anvil_last_error()[0] == '\0')
            __builtin_trap();
        return 0;
    }
    /* the plan agrees with the config and the options */
    const int64_t want_seq = o.max_seq_len > 0 ? o.max_seq_len : c.max_position_embeddings;
    if (z.max_seq_len != want_seq || z.max_seq_len > ANVIL_MAX_CONTEXT || z.n_kv_layers != c.n_layers)
        __builtin_trap();
    /* the KV cache's dtype: f16 for a half model on the CPU, else as the activations */
    const int half = c.dtype == ANVIL_DTYPE_BF16 || c.dtype == ANVIL_DTYPE_F16;
    if (z.kv_dtype != (half ? ANVIL_DTYPE_F16 : act))
        __builtin_trap();
    const size_t es = anvil_dtype_size(z.kv_dtype);
    if (z.kv_bytes_per_token != 2 * (size_t)c.n_layers * (size_t)c.n_kv_heads * (size_t)c.head_dim * es)
        __builtin_trap();
    if (z.kv_cache_tokens > 0) {
        const uint64_t blocks =
            ((uint64_t)z.kv_cache_tokens + (uint64_t)o.kv_block_size - 1) / o.kv_block_size;
        if (blocks >= INT32_MAX || z.kv_bytes != blocks * o.kv_block_size * z.kv_bytes_per_token + blocks * 5)
            __builtin_trap();
    } else if (z.kv_bytes != 0 || o.kv_cache_fraction <= 0.0) {
        __builtin_trap();
    }
    if (z.n_act_buffers < 1 || z.act_bytes == 0 || z.step_bytes == 0)
        __builtin_trap();
    return 0;
}
