/* Random-weight model folders for benchmarks: the weight list comes from the
 * architecture's own network, so every registered model type works. */
#include "anvil/builder.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/network.h"
#include "core/error.h"
#include "core/fileutil.h"
#include "io/safetensors.h"
#include "builder/random_weights.h"

typedef struct fill_ctx {
    const anvil_network *net;
    anvil_dtype dtype;
    uint64_t seed;
    float *tmp;
    size_t tmp_cap; /* elements */
} fill_ctx;

static int is_norm(const char *name) { return strstr(name, "norm") != NULL; }

/* Counter-based random numbers: element i of weight w is the same whatever
 * the chunking, so files are reproducible from the seed. */
static float rand_at(uint64_t seed, int64_t w, int64_t i)
{
    uint64_t z = seed ^ ((uint64_t)w * 0x9e3779b97f4a7c15ull) ^ ((uint64_t)i * 0xbf58476d1ce4e5b9ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    /* uniform in [-a, a) with a = 0.02 * sqrt(3): standard deviation 0.02 */
    return (float)((double)(z >> 11) * 0x1.0p-53 * 2.0 - 1.0) * 0.034641f;
}

void anvil_random_weights(const anvil_network *net, int32_t weight, uint64_t seed, int64_t first, int64_t n,
                          float *out)
{
    const int norm = is_norm(anvil_network_weight(net, weight)->name);
    for (int64_t i = 0; i < n; i++)
        out[i] = norm ? 1.0f : rand_at(seed, weight, first + i);
}

static anvil_status fill(void *user, int64_t index, void *buf, size_t offset, size_t len)
{
    fill_ctx *c = user;
    const size_t es = anvil_dtype_size(c->dtype);
    const int64_t first = (int64_t)(offset / es), n = (int64_t)(len / es);
    if ((size_t)n > c->tmp_cap) {
        float *p = realloc(c->tmp, (size_t)n * sizeof *p);
        CHECK(p != NULL, ANVIL_ERR_OOM, "out of memory");
        c->tmp = p;
        c->tmp_cap = (size_t)n;
    }
    anvil_random_weights(c->net, (int32_t)index, c->seed, first, n, c->tmp);
    anvil_convert_from_f32(c->dtype, c->tmp, buf, n);
    return ANVIL_OK;
}

anvil_status anvil_write_random_model(const char *dir, const char *config_json, uint64_t seed)
{
    anvil_model_config cfg;
    TRY(anvil_model_config_parse(config_json, &cfg));
    CHECK(cfg.dtype == ANVIL_DTYPE_F32 || cfg.dtype == ANVIL_DTYPE_BF16 || cfg.dtype == ANVIL_DTYPE_F16,
          ANVIL_ERR_UNSUPPORTED, "random weights in %s are not supported", anvil_dtype_name(cfg.dtype));
    anvil_network *net = NULL;
    TRY(anvil_model_build_network(&cfg, &net));

    anvil_status st = ANVIL_OK;
    char path[4096];
    anvil_st_tensor *ts = NULL;
    fill_ctx ctx = {.net = net, .dtype = cfg.dtype, .seed = seed};
    TRY_GOTO(anvil_path_join(path, sizeof path, dir, "config.json"), done);
    FILE *f = fopen(path, "wb");
    CHECK_GOTO(f != NULL, ANVIL_ERR_IO, done, "cannot write %s", path);
    size_t len = strlen(config_json);
    int ok = fwrite(config_json, 1, len, f) == len;
    ok &= fclose(f) == 0;
    CHECK_GOTO(ok, ANVIL_ERR_IO, done, "cannot write %s", path);

    const int32_t n = anvil_network_weight_count(net);
    ts = calloc((size_t)n, sizeof *ts);
    CHECK_GOTO(ts != NULL, ANVIL_ERR_OOM, done, "out of memory");
    for (int32_t i = 0; i < n; i++) {
        const anvil_net_weight *w = anvil_network_weight(net, i);
        ts[i].name = w->name;
        ts[i].dtype = cfg.dtype;
        ts[i].n_dims = w->n_dims;
        ts[i].shape[0] = w->shape[0];
        ts[i].shape[1] = w->shape[1];
        ts[i].nbytes = (size_t)w->shape[0] * (size_t)(w->n_dims > 1 ? w->shape[1] : 1) *
                       anvil_dtype_size(cfg.dtype);
    }
    TRY_GOTO(anvil_path_join(path, sizeof path, dir, "model.safetensors"), done);
    TRY_GOTO(anvil_safetensors_write_stream(path, ts, n, fill, &ctx), done);
done:
    free(ctx.tmp);
    free(ts);
    anvil_network_free(net);
    return st;
}
