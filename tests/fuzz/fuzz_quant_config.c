/*
 * libFuzzer target for pre-quantized checkpoints' configs and converters
 * (io/quant_config.h, builder/quant_convert.h). The input is config.json
 * text, a NUL, optionally hf_quant_config.json text, a NUL, then bytes for
 * one weight's tensors (seeds: the fixtures' configs in
 * tests/data/quant). Whatever config parses is described for a few module
 * names (every name must fit and a quantized one must name its weight),
 * then its format's tensors are made with shapes picked from the bytes
 * (right or off by a little) and contents from the rest, and converted:
 * an error is fine, a crash, a leak or UB is not, and a converted weight
 * must have the shape and the companions its description says.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "builder/quant_convert.h"
#include "io/quant_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const MODULES[] = {"model.layers.0.self_attn.q_proj", "model.layers.3.mlp.down_proj", "lm_head",
                                      "model.embed_tokens"};

/* Fills a tensor of the given shape from the input's bytes (cycled). */
static anvil_st_tensor make(const char *name, anvil_dtype dt, int64_t d0, int64_t d1, const uint8_t *bytes,
                            size_t n_bytes, void **buf)
{
    anvil_st_tensor t = {0};
    t.name = name;
    t.dtype = dt;
    t.n_dims = d1 < 0 ? 1 : 2;
    t.shape[0] = d0;
    t.shape[1] = d1 < 0 ? 0 : d1;
    size_t es = anvil_dtype_size(dt);
    t.nbytes = (size_t)d0 * (size_t)(d1 < 0 ? 1 : d1) * es;
    uint8_t *b = malloc(t.nbytes ? t.nbytes : 1);
    for (size_t i = 0; i < t.nbytes; i++)
        b[i] = n_bytes ? bytes[i % n_bytes] : 0;
    t.data = b;
    *buf = b;
    return t;
}

static void convert(const anvil_quant_config *qc, const uint8_t *p, size_t n)
{
    if (n < 4)
        return;
    const int64_t N = 8 * (1 + p[0] % 4), K = 32 * (1 + p[1] % 4);
    const int off = (p[2] % 4 == 0) ? (int)(p[3] % 3) - 1 : 0; /* a shape off by one, a quarter of the time */
    const int32_t g = qc->group > 0 ? qc->group : (qc->group < 0 ? (int32_t)K : 1);
    const int64_t G = qc->group ? K / g : 1;
    p += 4;
    n -= 4;
    void *bufs[6] = {0};
    anvil_st_tensor t[6];
    anvil_quant_sources src = {0};
    const anvil_dtype fdt = n && (p[0] & 1) ? ANVIL_DTYPE_F16 : ANVIL_DTYPE_F32;
    switch (qc->format) {
    case ANVIL_QFORMAT_MODELOPT:
    case ANVIL_QFORMAT_FP8:
    case ANVIL_QFORMAT_CT_FLOAT:
    case ANVIL_QFORMAT_CT_INT:
        t[0] = make("w", qc->scheme == ANVIL_QSCHEME_FP8 ? ANVIL_DTYPE_F8_E4M3 : ANVIL_DTYPE_I8, N, K + off, p, n,
                    &bufs[0]);
        if (qc->block_rows)
            t[1] = make("s", fdt, (N + qc->block_rows - 1) / qc->block_rows, G, p, n, &bufs[1]);
        else if (qc->weight_per_tensor)
            t[1] = make("s", fdt, 1, -1, p, n, &bufs[1]);
        else
            t[1] = make("s", fdt, N, qc->group ? G : 1, p, n, &bufs[1]);
        t[4] = make("i", fdt, 1, -1, p, n, &bufs[4]);
        src = (anvil_quant_sources){.weight = &t[0], .scales = &t[1], .input_scale = &t[4]};
        break;
    case ANVIL_QFORMAT_CT_PACKED: {
        int64_t shape[2] = {N, K + off};
        t[5] = make("shape", ANVIL_DTYPE_I64, 2, -1, (const uint8_t *)shape, sizeof shape, &bufs[5]);
        t[0] = make("w", ANVIL_DTYPE_I32, N, K / (32 / qc->bits), p, n, &bufs[0]);
        t[1] = make("s", fdt, N, qc->group ? G : 1, p, n, &bufs[1]);
        t[2] = make("z", ANVIL_DTYPE_I32, (N + 7) / 8, G, p, n, &bufs[2]);
        src = (anvil_quant_sources){.weight = &t[0], .scales = &t[1], .zeros = &t[2], .shape = &t[5]};
        break;
    }
    case ANVIL_QFORMAT_AWQ:
        t[0] = make("qw", ANVIL_DTYPE_I32, K, N / 8 + off, p, n, &bufs[0]);
        t[1] = make("s", fdt, G, N, p, n, &bufs[1]);
        t[2] = make("qz", ANVIL_DTYPE_I32, G, N / 8, p, n, &bufs[2]);
        src = (anvil_quant_sources){.weight = &t[0], .scales = &t[1], .zeros = &t[2]};
        break;
    case ANVIL_QFORMAT_GPTQ: {
        t[0] = make("qw", ANVIL_DTYPE_I32, K / 8, N + off, p, n, &bufs[0]);
        t[1] = make("s", fdt, G, N, p, n, &bufs[1]);
        t[2] = make("qz", ANVIL_DTYPE_I32, G, N / 8, p, n, &bufs[2]);
        int32_t *gi = malloc((size_t)K * sizeof *gi);
        for (int64_t k = 0; k < K; k++) /* a grouping, permuted by the bytes */
            gi[k] = (int32_t)(k / g);
        for (int64_t k = K - 1; k > 0; k--) {
            int64_t j = n ? p[k % n] % (k + 1) : 0;
            int32_t x = gi[k];
            gi[k] = gi[j];
            gi[j] = x;
        }
        t[3] = make("g", ANVIL_DTYPE_I32, K, -1, (const uint8_t *)gi, (size_t)K * sizeof *gi, &bufs[3]);
        free(gi);
        src = (anvil_quant_sources){.weight = &t[0], .scales = &t[1], .zeros = &t[2], .g_idx = &t[3]};
        break;
    }
    default: return;
    }
    anvil_qweight w;
    if (anvil_quant_convert(qc, &src, "fuzz", &w) == ANVIL_OK) {
        if (w.n <= 0 || w.k <= 0 || w.scales == NULL || (w.dtype == ANVIL_DTYPE_U4) != (qc->bits == 4))
            abort();
        float *out = malloc((size_t)(w.n * w.k) * sizeof *out);
        anvil_qweight_dequantize(&w, out);
        free(out);
        anvil_qweight_free(&w);
    }
    for (int i = 0; i < 6; i++)
        free(bufs[i]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *z1 = memchr(data, 0, size);
    size_t l1 = z1 ? (size_t)(z1 - data) : size;
    const uint8_t *rest = z1 ? z1 + 1 : data + size;
    size_t left = z1 ? size - l1 - 1 : 0;
    const uint8_t *z2 = memchr(rest, 0, left);
    size_t l2 = z2 ? (size_t)(z2 - rest) : left;
    char *cfg = malloc(l1 + 1), *hfq = malloc(l2 + 1);
    memcpy(cfg, data, l1);
    cfg[l1] = 0;
    memcpy(hfq, rest, l2);
    hfq[l2] = 0;
    anvil_quant_config qc;
    if (anvil_quant_config_parse(cfg, l2 ? hfq : NULL, "/fuzz", &qc) == ANVIL_OK) {
        for (size_t i = 0; i < sizeof MODULES / sizeof MODULES[0]; i++) {
            anvil_quant_linear ql;
            if (anvil_quant_config_linear(&qc, MODULES[i], &ql) != ANVIL_OK)
                abort(); /* every name here fits */
            if (ql.weight[0] == 0 || (ql.scheme != ANVIL_QSCHEME_NONE && ql.scales[0] == 0))
                abort();
        }
        if (z2)
            convert(&qc, z2 + 1, left - l2 - 1);
        anvil_quant_config_free(&qc);
    }
    free(cfg);
    free(hfq);
    return 0;
}
