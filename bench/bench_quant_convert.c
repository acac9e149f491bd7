/*
 * How long the pre-quantized converters (builder/quant_convert.h) take on
 * one Llama-3-8B MLP weight (down_proj: N 4096, K 14336), per format, from
 * host buffers of random bytes with valid shapes: what `anvil build` or a
 * load of a pre-quantized 8B folder spends per such weight (the plan's
 * probe converts each weight once, its fill once more per chunk it spans).
 *
 *   usage: bench_quant_convert [--n N] [--k K] [--reps R]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "builder/quant_convert.h"
#include "core/error.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static anvil_st_tensor tensor(const char *name, anvil_dtype dt, int64_t d0, int64_t d1, uint64_t *seed)
{
    anvil_st_tensor t = {0};
    t.name = name;
    t.dtype = dt;
    t.n_dims = d1 < 0 ? 1 : 2;
    t.shape[0] = d0;
    t.shape[1] = d1 < 0 ? 0 : d1;
    t.nbytes = (size_t)d0 * (size_t)(d1 < 0 ? 1 : d1) * anvil_dtype_size(dt);
    uint8_t *b = malloc(t.nbytes);
    for (size_t i = 0; i < t.nbytes; i++) {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        b[i] = (uint8_t)*seed;
    }
    if (dt == ANVIL_DTYPE_F16) /* finite scales: 1.0 */
        for (size_t i = 0; i < t.nbytes / 2; i++)
            ((uint16_t *)b)[i] = 0x3c00;
    if (dt == ANVIL_DTYPE_F32)
        for (size_t i = 0; i < t.nbytes / 4; i++)
            ((float *)b)[i] = 1.0f;
    t.data = b;
    return t;
}

static void run(const char *name, const anvil_quant_config *qc, const anvil_quant_sources *src, int reps,
                size_t in_bytes)
{
    double best = 1e9;
    for (int r = 0; r < reps; r++) {
        anvil_qweight w;
        const double t0 = now();
        if (anvil_quant_convert(qc, src, name, &w) != ANVIL_OK) {
            fprintf(stderr, "%s: %s\n", name, anvil_last_error());
            exit(1);
        }
        const double dt = now() - t0;
        best = dt < best ? dt : best;
        anvil_qweight_free(&w);
    }
    printf("%-22s %8.1f ms  %6.2f GB/s of checkpoint bytes\n", name, best * 1e3, (double)in_bytes / best / 1e9);
}

int main(int argc, char **argv)
{
    int64_t n = 4096, k = 14336;
    int reps = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--n") == 0)
            n = atoll(argv[i + 1]);
        else if (strcmp(argv[i], "--k") == 0)
            k = atoll(argv[i + 1]);
        else if (strcmp(argv[i], "--reps") == 0)
            reps = atoi(argv[i + 1]);
    }
    const int32_t g = 128;
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    printf("converting one [%lld, %lld] weight, best of %d\n", (long long)n, (long long)k, reps);

    anvil_st_tensor awq_w = tensor("qweight", ANVIL_DTYPE_I32, k, n / 8, &seed),
                    awq_z = tensor("qzeros", ANVIL_DTYPE_I32, k / g, n / 8, &seed),
                    awq_s = tensor("scales", ANVIL_DTYPE_F16, k / g, n, &seed);
    anvil_quant_config awq = {.format = ANVIL_QFORMAT_AWQ, .scheme = ANVIL_QSCHEME_INT4, .bits = 4, .group = g};
    anvil_quant_sources s1 = {.weight = &awq_w, .scales = &awq_s, .zeros = &awq_z};
    run("awq gemm", &awq, &s1, reps, awq_w.nbytes);

    /* GPTQ zeros: nibbles of 7 (v1's 8 - 1), never the refused 15 */
    anvil_st_tensor gq_w = tensor("qweight", ANVIL_DTYPE_I32, k / 8, n, &seed),
                    gq_z = tensor("qzeros", ANVIL_DTYPE_I32, k / g, n / 8, &seed),
                    gq_s = tensor("scales", ANVIL_DTYPE_F16, k / g, n, &seed);
    memset((void *)gq_z.data, 0x77, gq_z.nbytes);
    int32_t *gidx = malloc((size_t)k * sizeof *gidx);
    for (int64_t c = 0; c < k; c++) /* act order: groups interleaved */
        gidx[c] = (int32_t)(c % (k / g));
    anvil_st_tensor gq_g = {.name = "g_idx", .dtype = ANVIL_DTYPE_I32, .n_dims = 1, .shape = {k}, .data = gidx,
                            .nbytes = (size_t)k * 4};
    anvil_quant_config gptq = {.format = ANVIL_QFORMAT_GPTQ, .scheme = ANVIL_QSCHEME_INT4, .bits = 4, .group = g,
                               .symmetric = 1};
    anvil_quant_sources s2 = {.weight = &gq_w, .scales = &gq_s, .zeros = &gq_z};
    run("gptq", &gptq, &s2, reps, gq_w.nbytes);
    gptq.desc_act = 1;
    s2.g_idx = &gq_g;
    run("gptq desc_act", &gptq, &s2, reps, gq_w.nbytes);

    int64_t shape[2] = {n, k};
    anvil_st_tensor ct_w = tensor("weight_packed", ANVIL_DTYPE_I32, n, k / 8, &seed),
                    ct_s = tensor("weight_scale", ANVIL_DTYPE_F16, n, k / g, &seed),
                    ct_sh = {.name = "weight_shape", .dtype = ANVIL_DTYPE_I64, .n_dims = 1, .shape = {2},
                             .data = shape, .nbytes = sizeof shape};
    anvil_quant_config ct = {.format = ANVIL_QFORMAT_CT_PACKED, .scheme = ANVIL_QSCHEME_INT4, .bits = 4, .group = g,
                             .symmetric = 1};
    anvil_quant_sources s3 = {.weight = &ct_w, .scales = &ct_s, .shape = &ct_sh};
    run("compressed-tensors w4", &ct, &s3, reps, ct_w.nbytes);

    anvil_st_tensor f_w = tensor("weight", ANVIL_DTYPE_F8_E4M3, n, k, &seed),
                    f_s = tensor("weight_scale", ANVIL_DTYPE_F32, 1, -1, &seed);
    anvil_quant_config fp8 = {.format = ANVIL_QFORMAT_MODELOPT, .scheme = ANVIL_QSCHEME_FP8, .bits = 8,
                              .weight_per_tensor = 1};
    anvil_quant_sources s4 = {.weight = &f_w, .scales = &f_s};
    run("fp8 (modelopt)", &fp8, &s4, reps, f_w.nbytes);

    free((void *)awq_w.data), free((void *)awq_z.data), free((void *)awq_s.data);
    free((void *)gq_w.data), free((void *)gq_z.data), free((void *)gq_s.data), free(gidx);
    free((void *)ct_w.data), free((void *)ct_s.data), free((void *)f_w.data), free((void *)f_s.data);
    return 0;
}
