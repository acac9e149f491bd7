/* Pre-quantized tensors -> the canonical quantized weight
 * (builder/quant_convert.h): every linear of every fixture in
 * tests/data/quant converts, and the dequantized k_proj of layer 0 equals
 * the one the fixture script computed by the format's formula; each
 * format's packing on hand-made words; bad tensors (wrong shapes, sizes,
 * dtypes, g_idx, zero points) are clear errors. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "builder/quant_convert.h"
#include "io/quant_config.h"
#include "io/safetensors.h"
#include "testutil.h"

static const char *fixture(const char *name)
{
    static char buf[4096];
    const char *src = getenv("ANVIL_SOURCE_DIR");
    snprintf(buf, sizeof buf, "%s/tests/data/quant/%s", src ? src : ".", name);
    return buf;
}

static const char *LINEARS[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};

static const anvil_st_tensor *find(const anvil_checkpoint *ck, const char *name)
{
    return name[0] ? anvil_checkpoint_find(ck, name) : NULL;
}

static void sources(const anvil_checkpoint *ck, const anvil_quant_linear *ql, anvil_quant_sources *src)
{
    src->weight = find(ck, ql->weight);
    src->scales = find(ck, ql->scales);
    src->zeros = find(ck, ql->zeros);
    src->g_idx = find(ck, ql->g_idx);
    src->input_scale = find(ck, ql->input_scale);
    src->shape = find(ck, ql->shape);
}

typedef struct expect {
    const char *name;
    anvil_dtype dtype;
    int32_t group;
    int zeros; /* converted weights carry zero points */
    int perm;  /* ... and a permutation */
    anvil_quant_act act;
} expect;

static const expect FIXTURES[] = {
    {"modelopt-fp8", ANVIL_DTYPE_F8_E4M3, 0, 0, 0, ANVIL_QUANT_ACT_FP8_STATIC},
    {"fp8-tensor", ANVIL_DTYPE_F8_E4M3, 0, 0, 0, ANVIL_QUANT_ACT_FP8_STATIC},
    {"fp8-block", ANVIL_DTYPE_F8_E4M3, 128, 0, 0, ANVIL_QUANT_ACT_NONE},
    {"ct-fp8-static", ANVIL_DTYPE_F8_E4M3, 0, 0, 0, ANVIL_QUANT_ACT_FP8_STATIC},
    {"ct-fp8-dynamic", ANVIL_DTYPE_F8_E4M3, 0, 0, 0, ANVIL_QUANT_ACT_FP8_DYNAMIC},
    {"ct-w8a16", ANVIL_DTYPE_I8, 0, 0, 0, ANVIL_QUANT_ACT_NONE},
    {"ct-w4a16", ANVIL_DTYPE_U4, 128, 0, 0, ANVIL_QUANT_ACT_NONE},
    {"awq-gemm", ANVIL_DTYPE_U4, 128, 1, 0, ANVIL_QUANT_ACT_NONE},
    {"gptq", ANVIL_DTYPE_U4, 128, 1, 0, ANVIL_QUANT_ACT_NONE},
    {"gptq-descact", ANVIL_DTYPE_U4, 128, 1, 1, ANVIL_QUANT_ACT_NONE},
};

static void check_fixture(const expect *e)
{
    anvil_quant_config qc;
    if (anvil_quant_config_load(fixture(e->name), &qc) != ANVIL_OK)
        fail_msg("%s: %s", e->name, anvil_last_error());
    anvil_checkpoint *ck;
    if (anvil_checkpoint_open(fixture(e->name), &ck) != ANVIL_OK)
        fail_msg("%s: %s", e->name, anvil_last_error());
    char refpath[4200];
    snprintf(refpath, sizeof refpath, "%s/reference.safetensors", fixture(e->name));
    anvil_safetensors *ref;
    if (anvil_safetensors_open(refpath, &ref) != ANVIL_OK)
        fail_msg("%s: %s", e->name, anvil_last_error());

    int n_checked = 0;
    for (int layer = 0; layer < 2; layer++)
        for (size_t li = 0; li < sizeof LINEARS / sizeof LINEARS[0]; li++) {
            char module[128];
            snprintf(module, sizeof module, "model.layers.%d.%s", layer, LINEARS[li]);
            anvil_quant_linear ql;
            assert_int_equal(anvil_quant_config_linear(&qc, module, &ql), ANVIL_OK);
            assert_int_not_equal(ql.scheme, ANVIL_QSCHEME_NONE);
            anvil_quant_sources src = {0};
            sources(ck, &ql, &src);
            anvil_qweight w;
            if (anvil_quant_convert(&qc, &src, module, &w) != ANVIL_OK)
                fail_msg("%s %s: %s", e->name, module, anvil_last_error());
            assert_int_equal(w.dtype, e->dtype);
            assert_int_equal(w.quant.group, e->group);
            assert_int_equal(w.zeros != NULL, e->zeros);
            assert_int_equal(w.perm != NULL, e->perm);
            assert_int_equal(w.quant.act, e->act);
            assert_ptr_equal(w.quant.scales, w.scales);
            if (e->act == ANVIL_QUANT_ACT_FP8_STATIC)
                assert_true(w.quant.input_scale > 0);
            /* the same weight as the unquantized checkpoint's shape */
            const anvil_st_tensor *emb = anvil_checkpoint_find(ck, "model.embed_tokens.weight");
            assert_non_null(emb);
            assert_true(w.k == emb->shape[1] || w.k == 512);
            if (w.zeros)
                for (int64_t i = 0; i < w.n * w.n_groups; i++)
                    assert_true(w.zeros[i] <= 15);
            if (w.perm) {
                /* a permutation whose groups are contiguous */
                char *seen = calloc((size_t)w.k, 1);
                for (int64_t j = 0; j < w.k; j++) {
                    assert_true(w.perm[j] >= 0 && w.perm[j] < w.k);
                    assert_false(seen[w.perm[j]]);
                    seen[w.perm[j]] = 1;
                }
                free(seen);
            }

            char refname[160];
            snprintf(refname, sizeof refname, "dequant.%s", module);
            const anvil_st_tensor *want = anvil_safetensors_find(ref, refname);
            if (want) {
                assert_int_equal(want->shape[0], w.n);
                assert_int_equal(want->shape[1], w.k);
                float *got = malloc((size_t)(w.n * w.k) * sizeof(float));
                anvil_qweight_dequantize(&w, got);
                const float *wv = want->data;
                for (int64_t i = 0; i < w.n * w.k; i++)
                    if (got[i] != wv[i])
                        fail_msg("%s %s: element %lld is %.9g, the format's formula gives %.9g", e->name, module,
                                 (long long)i, (double)got[i], (double)wv[i]);
                free(got);
                n_checked++;
            }
            anvil_qweight_free(&w);
        }
    assert_int_equal(n_checked, 1);
    anvil_safetensors_close(ref);
    anvil_checkpoint_close(ck);
    anvil_quant_config_free(&qc);
}

static void test_fixtures(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof FIXTURES / sizeof FIXTURES[0]; i++)
        check_fixture(&FIXTURES[i]);
}

/* ------------------------------------------------- hand-made packed words */

static anvil_st_tensor tensor(const char *name, anvil_dtype dt, int64_t d0, int64_t d1, const void *data)
{
    anvil_st_tensor t = {0};
    t.name = name;
    t.dtype = dt;
    t.n_dims = d1 < 0 ? 1 : 2;
    t.shape[0] = d0;
    t.shape[1] = d1 < 0 ? 0 : d1;
    t.data = data;
    return t;
}

static unsigned u4_at(const anvil_qweight *w, int64_t r, int64_t c)
{
    int64_t i = r * w->k + c;
    return (((const uint8_t *)w->data)[i >> 1] >> ((i & 1) * 4)) & 15u;
}

/* AWQ: nibble i of qweight[k][j] is output 8j + (0 2 4 6 1 3 5 7)[i]. */
static void test_awq_packing(void **state)
{
    (void)state;
    anvil_quant_config qc = {.format = ANVIL_QFORMAT_AWQ, .scheme = ANVIL_QSCHEME_INT4, .bits = 4, .group = 2};
    uint32_t qw[2] = {0x76543210u, 0xfedcba98u}; /* [K 2, N/8 1]: nibble i holds i (row 0), 8 + i (row 1) */
    uint32_t qz[1] = {0x01234567u};              /* [1 group, 1]: nibble i holds 7 - i */
    uint16_t sc[8];
    for (int i = 0; i < 8; i++)
        sc[i] = anvil_f32_to_f16(0.5f * (float)(i + 1)); /* [1, N 8] */
    anvil_st_tensor tw = tensor("qweight", ANVIL_DTYPE_I32, 2, 1, qw), tz = tensor("qzeros", ANVIL_DTYPE_I32, 1, 1, qz),
                    ts = tensor("scales", ANVIL_DTYPE_F16, 1, 8, sc);
    anvil_quant_sources src = {.weight = &tw, .scales = &ts, .zeros = &tz};
    anvil_qweight w;
    assert_int_equal(anvil_quant_convert(&qc, &src, "awq", &w), ANVIL_OK);
    assert_int_equal(w.n, 8);
    assert_int_equal(w.k, 2);
    static const int order[8] = {0, 2, 4, 6, 1, 3, 5, 7};
    for (int i = 0; i < 8; i++) {
        int n = order[i];
        assert_int_equal(u4_at(&w, n, 0), i);
        assert_int_equal(u4_at(&w, n, 1), 8 + i);
        assert_int_equal(w.zeros[n], 7 - i);
        assert_true(w.scales[n] == 0.5f * (float)(n + 1));
    }
    float deq[16];
    anvil_qweight_dequantize(&w, deq);
    /* output 2 is nibble 1: q 1 (k 0), zero 6, scale 1.5 */
    assert_true(deq[2 * 2 + 0] == (1.0f - 6.0f) * 1.5f);
    anvil_qweight_free(&w);
}

/* GPTQ: qweight [K/8, N] along K; qzeros along N hold zero - 1 (v1) or
 * the zero (v2); g_idx sorts the columns into perm. */
static void test_gptq_packing(void **state)
{
    (void)state;
    anvil_quant_config qc = {.format = ANVIL_QFORMAT_GPTQ, .scheme = ANVIL_QSCHEME_INT4, .bits = 4, .group = 8,
                             .desc_act = 1};
    enum { K = 16, N = 8 };
    uint32_t qw[2 * N];
    for (int r = 0; r < 2; r++)
        for (int n = 0; n < N; n++) {
            uint32_t word = 0;
            for (int i = 0; i < 8; i++)
                word |= (uint32_t)((r * 8 + i + n) % 16) << (4 * i); /* q[k][n] = (k + n) % 16 */
            qw[r * N + n] = word;
        }
    uint32_t qz[2] = {0x66666666u, 0x22222222u}; /* v1: zeros 7 (group 0) and 3 (group 1) */
    uint16_t sc[2 * N];
    for (int i = 0; i < 2 * N; i++)
        sc[i] = anvil_f32_to_f16(1.0f + (float)i);
    int32_t g_idx[K];
    for (int k = 0; k < K; k++)
        g_idx[k] = k % 2; /* act order interleaves the two groups */
    anvil_st_tensor tw = tensor("qweight", ANVIL_DTYPE_I32, 2, N, qw), tz = tensor("qzeros", ANVIL_DTYPE_I32, 2, 1, qz),
                    ts = tensor("scales", ANVIL_DTYPE_F16, 2, N, sc), tg = tensor("g_idx", ANVIL_DTYPE_I32, K, -1, g_idx);
    anvil_quant_sources src = {.weight = &tw, .scales = &ts, .zeros = &tz, .g_idx = &tg};
    anvil_qweight w;
    assert_int_equal(anvil_quant_convert(&qc, &src, "gptq", &w), ANVIL_OK);
    assert_int_equal(w.n, N);
    assert_int_equal(w.k, K);
    assert_non_null(w.perm);
    for (int j = 0; j < K; j++)
        assert_int_equal(w.perm[j], j < 8 ? 2 * j : 2 * (j - 8) + 1);
    for (int n = 0; n < N; n++) {
        assert_int_equal(w.zeros[n * 2 + 0], 7);
        assert_int_equal(w.zeros[n * 2 + 1], 3);
        for (int j = 0; j < K; j++)
            assert_int_equal(u4_at(&w, n, j), (w.perm[j] + n) % 16);
    }
    float deq[K * N];
    anvil_qweight_dequantize(&w, deq);
    /* output 1, checkpoint column 3: group 1, q 4, zero 3, scale sc[1 * N + 1] = 10 */
    assert_true(deq[1 * K + 3] == (4.0f - 3.0f) * 10.0f);
    anvil_qweight_free(&w);

    /* v2 stores the zero itself; g_idx k / group: no perm */
    qc.gptq_v2 = 1;
    for (int k = 0; k < K; k++)
        g_idx[k] = k / 8;
    assert_int_equal(anvil_quant_convert(&qc, &src, "gptq", &w), ANVIL_OK);
    assert_null(w.perm);
    assert_int_equal(w.zeros[0], 6);
    anvil_qweight_free(&w);

    /* bad: desc_act without g_idx; a g_idx whose groups differ in size;
     * one out of range; v1's impossible zero 16 */
    qc.gptq_v2 = 0;
    src.g_idx = NULL;
    assert_status_msg(anvil_quant_convert(&qc, &src, "gptq", &w), ANVIL_ERR_FORMAT, "no g_idx");
    assert_null(w.data);
    src.g_idx = &tg;
    g_idx[0] = 1;
    assert_status_msg(anvil_quant_convert(&qc, &src, "gptq", &w), ANVIL_ERR_UNSUPPORTED, "cannot be made contiguous");
    g_idx[0] = 2;
    assert_status_msg(anvil_quant_convert(&qc, &src, "gptq", &w), ANVIL_ERR_FORMAT, "outside the 2 groups");
    g_idx[0] = 0;
    qz[1] = 0x222222f2u;
    assert_status_msg(anvil_quant_convert(&qc, &src, "gptq", &w), ANVIL_ERR_FORMAT, "zero point of 16");
    qz[1] = 0x22222222u;
    /* group 5 does not divide 16 */
    qc.group = 5;
    assert_status_msg(anvil_quant_convert(&qc, &src, "gptq", &w), ANVIL_ERR_UNSUPPORTED,
                      "group size 5 does not divide the weight's width 16");
    qc.group = 8;
    /* scales of the wrong shape */
    ts.shape[1] = N - 1;
    assert_status_msg(anvil_quant_convert(&qc, &src, "gptq", &w), ANVIL_ERR_FORMAT, "expected [2, 8]");
    ts.shape[1] = N;
    tz.dtype = ANVIL_DTYPE_I64;
    assert_status_msg(anvil_quant_convert(&qc, &src, "gptq", &w), ANVIL_ERR_FORMAT, "dtype i64");
    tz.dtype = ANVIL_DTYPE_I32;
    assert_int_equal(anvil_quant_convert(&qc, &src, "gptq", &w), ANVIL_OK);
    anvil_qweight_free(&w);
}

/* compressed-tensors pack-quantized: element c at bit 4c (8c) of its row,
 * stored q + 8 (q + 128); asymmetric zero points packed along N. */
static void test_ct_packing(void **state)
{
    (void)state;
    anvil_quant_config qc = {.format = ANVIL_QFORMAT_CT_PACKED, .scheme = ANVIL_QSCHEME_INT4, .bits = 4, .group = 8};
    enum { N = 8, K = 16 };
    uint32_t packed[N * 2];
    for (int r = 0; r < N; r++)
        for (int wd = 0; wd < 2; wd++) {
            uint32_t word = 0;
            for (int i = 0; i < 8; i++)
                word |= (uint32_t)((r + wd * 8 + i) % 16) << (4 * i);
            packed[r * 2 + wd] = word;
        }
    int64_t shape[2] = {N, K};
    float sc[N * 2];
    for (int i = 0; i < N * 2; i++)
        sc[i] = 0.25f * (float)(i + 1);
    uint32_t zp[2] = {0x76543210u, 0x89abcdefu}; /* [N/8 1, groups 2]: stored zp + 8 */
    anvil_st_tensor tp = tensor("weight_packed", ANVIL_DTYPE_I32, N, 2, packed),
                    tsh = tensor("weight_shape", ANVIL_DTYPE_I64, 2, -1, shape),
                    ts = tensor("weight_scale", ANVIL_DTYPE_F32, N, 2, sc),
                    tz = tensor("weight_zero_point", ANVIL_DTYPE_I32, 1, 2, zp);
    anvil_quant_sources src = {.weight = &tp, .scales = &ts, .shape = &tsh};
    anvil_qweight w;
    qc.symmetric = 1;
    assert_int_equal(anvil_quant_convert(&qc, &src, "ct", &w), ANVIL_OK);
    assert_null(w.zeros);
    for (int r = 0; r < N; r++)
        for (int c = 0; c < K; c++)
            assert_int_equal(u4_at(&w, r, c), (r + c) % 16);
    float deq[N * K];
    anvil_qweight_dequantize(&w, deq);
    assert_true(deq[3 * K + 9] == (float)((3 + 9) % 16 - 8) * sc[3 * 2 + 1]);
    anvil_qweight_free(&w);

    qc.symmetric = 0;
    src.zeros = &tz;
    assert_int_equal(anvil_quant_convert(&qc, &src, "ct", &w), ANVIL_OK);
    for (int r = 0; r < N; r++) {
        assert_int_equal(w.zeros[r * 2 + 0], r);
        assert_int_equal(w.zeros[r * 2 + 1], 15 - r);
    }
    anvil_qweight_free(&w);

    /* packed tensor of the wrong size; weight_shape that disagrees */
    tp.shape[1] = 3;
    assert_status_msg(anvil_quant_convert(&qc, &src, "ct", &w), ANVIL_ERR_FORMAT, "expected [8, 2]");
    tp.shape[1] = 2;
    shape[1] = 24;
    assert_status_msg(anvil_quant_convert(&qc, &src, "ct", &w), ANVIL_ERR_FORMAT, "weight_packed has shape [8, 2]");
    shape[1] = K;
    src.zeros = NULL;
    assert_status_msg(anvil_quant_convert(&qc, &src, "ct", &w), ANVIL_ERR_NOT_FOUND, "weight_zero_point");
    src.zeros = &tz;
    ts.shape[1] = 1;
    assert_status_msg(anvil_quant_convert(&qc, &src, "ct", &w), ANVIL_ERR_FORMAT, "a scale per 8 columns");
    ts.shape[1] = 2;

    /* a width that is not a whole number of words (the nibble-by-nibble path) */
    anvil_quant_config q6 = {.format = ANVIL_QFORMAT_CT_PACKED, .scheme = ANVIL_QSCHEME_INT4, .bits = 4, .symmetric = 1};
    uint32_t p6[1] = {0x00654321u};
    int64_t shape6[2] = {1, 6};
    float s6[1] = {1.0f};
    anvil_st_tensor t6 = tensor("weight_packed", ANVIL_DTYPE_I32, 1, 1, p6), tsh6 = tensor("weight_shape", ANVIL_DTYPE_I64, 2, -1, shape6),
                    ts6 = tensor("weight_scale", ANVIL_DTYPE_F32, 1, 1, s6);
    anvil_quant_sources src6 = {.weight = &t6, .scales = &ts6, .shape = &tsh6};
    assert_int_equal(anvil_quant_convert(&q6, &src6, "ct6", &w), ANVIL_OK);
    static const uint8_t want6[3] = {0x21, 0x43, 0x65};
    assert_memory_equal(w.data, want6, 3);
    anvil_qweight_free(&w);

    /* int8: byte c % 4 of word c / 4, stored q + 128 */
    anvil_quant_config q8 = {.format = ANVIL_QFORMAT_CT_PACKED, .scheme = ANVIL_QSCHEME_INT8, .bits = 8, .symmetric = 1};
    uint32_t p8[2] = {0x00ff8081u, 0x7f018000u}; /* row 0: 129 128 255 0 -> 1 0 127 -128; 0 128 1 127 */
    int64_t shape8[2] = {1, 8};
    float s8[1] = {2.0f};
    anvil_st_tensor t8 = tensor("weight_packed", ANVIL_DTYPE_I32, 1, 2, p8), tsh8 = tensor("weight_shape", ANVIL_DTYPE_I64, 2, -1, shape8),
                    ts8 = tensor("weight_scale", ANVIL_DTYPE_F32, 1, 1, s8);
    anvil_quant_sources src8 = {.weight = &t8, .scales = &ts8, .shape = &tsh8};
    assert_int_equal(anvil_quant_convert(&q8, &src8, "ct8", &w), ANVIL_OK);
    static const int8_t want8[8] = {1, 0, 127, -128, -128, 0, -127, -1};
    assert_memory_equal(w.data, want8, 8);
    anvil_qweight_free(&w);
}

/* fp8: per-tensor scale broadcast; blocks repeat over their rows; static
 * input scales checked. */
static void test_fp8_scales(void **state)
{
    (void)state;
    enum { N = 4, K = 4 };
    uint8_t w8[N * K];
    for (int i = 0; i < N * K; i++)
        w8[i] = anvil_f32_to_fp8_e4m3((float)(i - 8));
    float s1 = 0.5f, in1 = 0.25f;
    anvil_st_tensor tw = tensor("weight", ANVIL_DTYPE_F8_E4M3, N, K, w8), ts = tensor("weight_scale", ANVIL_DTYPE_F32, 1, -1, &s1),
                    ti = tensor("input_scale", ANVIL_DTYPE_F32, 1, -1, &in1);
    ts.n_dims = 0; /* a scalar, as ModelOpt writes it */
    ti.n_dims = 0;
    anvil_quant_config qc = {.format = ANVIL_QFORMAT_MODELOPT, .scheme = ANVIL_QSCHEME_FP8, .bits = 8,
                             .weight_per_tensor = 1, .act = ANVIL_QUANT_ACT_FP8_STATIC};
    anvil_quant_sources src = {.weight = &tw, .scales = &ts, .input_scale = &ti};
    anvil_qweight w;
    assert_int_equal(anvil_quant_convert(&qc, &src, "fp8", &w), ANVIL_OK);
    for (int r = 0; r < N; r++)
        assert_true(w.scales[r] == 0.5f);
    assert_true(w.quant.input_scale == 0.25f);
    assert_int_equal(w.quant.act, ANVIL_QUANT_ACT_FP8_STATIC);
    float deq[N * K];
    anvil_qweight_dequantize(&w, deq);
    for (int i = 0; i < N * K; i++)
        assert_true(deq[i] == 0.5f * (float)(i - 8));
    anvil_qweight_free(&w);

    /* bad input scales: absent, zero, not a scalar */
    src.input_scale = NULL;
    assert_status_msg(anvil_quant_convert(&qc, &src, "fp8", &w), ANVIL_ERR_NOT_FOUND, "input_scale");
    src.input_scale = &ti;
    in1 = 0;
    assert_status_msg(anvil_quant_convert(&qc, &src, "fp8", &w), ANVIL_ERR_FORMAT, "positive and finite");
    in1 = 0.25f;
    /* a per-channel scale where the config says per tensor */
    float s4[N] = {1, 2, 3, 4};
    anvil_st_tensor ts4 = tensor("weight_scale", ANVIL_DTYPE_F32, N, -1, s4);
    src.scales = &ts4;
    assert_status_msg(anvil_quant_convert(&qc, &src, "fp8", &w), ANVIL_ERR_FORMAT, "expected one value");
    /* ... which is right for per-channel configs, [N] or [N, 1] */
    qc.weight_per_tensor = 0;
    qc.act = ANVIL_QUANT_ACT_FP8_DYNAMIC;
    assert_int_equal(anvil_quant_convert(&qc, &src, "fp8", &w), ANVIL_OK);
    assert_true(w.scales[3] == 4.0f);
    anvil_qweight_free(&w);
    ts4.shape[0] = N - 1;
    assert_status_msg(anvil_quant_convert(&qc, &src, "fp8", &w), ANVIL_ERR_FORMAT, "expected [4, 1]");
    ts4.shape[0] = N;
    s4[2] = NAN;
    assert_status_msg(anvil_quant_convert(&qc, &src, "fp8", &w), ANVIL_ERR_FORMAT, "not finite");
    s4[2] = 3;
    /* the weight in the wrong dtype */
    tw.dtype = ANVIL_DTYPE_BF16;
    assert_status_msg(anvil_quant_convert(&qc, &src, "fp8", &w), ANVIL_ERR_FORMAT, "expected a 2-D f8_e4m3 weight");
    tw.dtype = ANVIL_DTYPE_F8_E4M3;

    /* blocks [2, 2]: scale_inv [2, 2], row r uses block row r / 2 */
    float blk[4] = {1, 2, 3, 4};
    anvil_st_tensor tb = tensor("weight_scale_inv", ANVIL_DTYPE_F32, 2, 2, blk);
    anvil_quant_config qb = {.format = ANVIL_QFORMAT_FP8, .scheme = ANVIL_QSCHEME_FP8, .bits = 8, .block_rows = 2,
                             .group = 2};
    anvil_quant_sources sb = {.weight = &tw, .scales = &tb};
    assert_int_equal(anvil_quant_convert(&qb, &sb, "blk", &w), ANVIL_OK);
    assert_int_equal(w.n_groups, 2);
    static const float want[8] = {1, 2, 1, 2, 3, 4, 3, 4};
    assert_memory_equal(w.scales, want, sizeof want);
    anvil_qweight_free(&w);
    tb.shape[0] = 1;
    assert_status_msg(anvil_quant_convert(&qb, &sb, "blk", &w), ANVIL_ERR_FORMAT, "expected [2, 2]");
}

static void test_bad_awq(void **state)
{
    (void)state;
    anvil_quant_config qc = {.format = ANVIL_QFORMAT_AWQ, .scheme = ANVIL_QSCHEME_INT4, .bits = 4, .group = 2};
    uint32_t qw[4] = {0}, qz[2] = {0};
    uint16_t sc[16] = {0};
    anvil_st_tensor tw = tensor("qweight", ANVIL_DTYPE_I32, 2, 1, qw), tz = tensor("qzeros", ANVIL_DTYPE_I32, 1, 1, qz),
                    ts = tensor("scales", ANVIL_DTYPE_F16, 1, 8, sc);
    anvil_quant_sources src = {.weight = &tw, .scales = &ts, .zeros = &tz};
    anvil_qweight w;
    ts.shape[1] = 16; /* scales for 16 outputs, qweight packs 8 */
    assert_status_msg(anvil_quant_convert(&qc, &src, "awq", &w), ANVIL_ERR_FORMAT, "packs 8 outputs");
    ts.shape[1] = 8;
    tz.shape[0] = 2;
    assert_status_msg(anvil_quant_convert(&qc, &src, "awq", &w), ANVIL_ERR_FORMAT, "qzeros has shape [2, 1]");
    tz.shape[0] = 1;
    tw.dtype = ANVIL_DTYPE_F32;
    assert_status_msg(anvil_quant_convert(&qc, &src, "awq", &w), ANVIL_ERR_FORMAT, "expected int32 [in, out / 8]");
    tw.dtype = ANVIL_DTYPE_I32;
    qc.group = 3;
    assert_status_msg(anvil_quant_convert(&qc, &src, "awq", &w), ANVIL_ERR_UNSUPPORTED, "does not divide");
    qc.group = 2;
    src.zeros = NULL;
    assert_status_msg(anvil_quant_convert(&qc, &src, "awq", &w), ANVIL_ERR_NOT_FOUND, "qzeros");
    anvil_quant_config none = {0};
    assert_status_msg(anvil_quant_convert(&none, &src, "plain", &w), ANVIL_ERR_INVALID_ARG, "nothing to convert");
    anvil_qweight_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixtures),     cmocka_unit_test(test_awq_packing), cmocka_unit_test(test_gptq_packing),
        cmocka_unit_test(test_ct_packing),   cmocka_unit_test(test_fp8_scales),  cmocka_unit_test(test_bad_awq),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
