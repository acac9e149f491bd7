/*
 * The CUDA moe op on quantized experts (docs/quantization.md, "Mixture of
 * experts"; cuda_moe.c: at most 8 tokens the quantized grouped GEMV of
 * cuda_moe_quant.cu, else the loop over experts through the quantized
 * matmuls of cuda_matmul_quant.c) against the CPU, in f32, bf16 and f16
 * activations. The stacked gate_up / down (and the shared expert's) are
 * quantized row by row as `anvil build --quantize` stores them (fp8 W8A8
 * per channel, int8 per channel, int4 in groups of 128, 32 and 16), the
 * router and shared gate dense; each expert's rows are scaled by 2^e so
 * that an expert reading another's scales or zero points is off by a
 * factor of 2 or more (f16 activations: 2^min(e, 2), since with 2^7 the
 * products silu(g) u and the outputs pass f16's 65504, and become inf where
 * the loop stores them in f16; f32 and bf16 hold the check). Two references on the host:
 *   ref_q  anvil_cpu_ref_moe on the same quantized weights (the CPU's
 *          definition: int8/int4 with activations rounded to int8 per
 *          block of 32, fp8 W8A8 with activations rounded to fp8 per row);
 *   ref_d  anvil_cpu_ref_moe on the dequantized f32 weights (the format's
 *          definition, which CUDA's weight-only paths compute).
 * Bounds, max |cuda - ref| / max |ref| over the whole output (as
 * test_cuda_moe), and the same within each token's row (so that a token
 * whose experts are the small ones is held too; looser, since a short row
 * cancels less):
 *   int8/int4: 3e-2 against ref_d (bf16/f16: the rows and products rounded
 *              to the activation dtype; f32: the int8-activation GEMV's
 *              rounding at 1-8 rows), 5e-2 against ref_q; per token 0.15
 *              against ref_d;
 *   fp8:       6e-2 against ref_q (fp8 activation codes may round the other
 *              way where the activations differ in their last bits); per
 *              token 0.3 (on the CPU the fp8 reference is up to 0.17 per
 *              token from the dequantized one at H 32).
 * Token counts 1, 5, 8 (the grouped GEMV under knob moe_loop 2, the loop
 * and its quantized GEMVs under 1, the default) and 9, 12, 33, 40 (the
 * loop under both);
 * each also under matmul_quant 7 (fp8 W8A8 experts with K a multiple of 64
 * on the streaming form, cuda_moe_quant.cu; H 1024 / I 2048 at 2 and 6
 * tokens split K).
 * Outputs are poisoned with NaN first and followed by guard bytes. Skips
 * without a GPU.
 *
 * `test_cuda_moe_quant --perf`: one Mixtral-8x7B layer's experts (H 4096,
 * I 14336, 8 experts, top 2, bf16 activations) as bf16, fp8, int8-wo and
 * int4-wo (g128) at 1, 2, 4, 8 and 64 tokens, under moe_loop 2 (`grp`: the
 * grouped GEMV at 1 to 8 tokens; bf16: the tensor-core GEMM), 1 (the loop,
 * the default for quantized experts since session 30) and,
 * fp8 at up to 6 tokens, matmul_quant 7 (`strm`: the streaming form):
 * ms per call, and the bytes of the experts read (the active experts'
 * weights and scales, as if every token picked its own) per ms.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "anvil/dtype.h"
#include "backend/backend.h"
#include "backend/cpu/cpu_reference.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_internal.h"
#include "builder/quantize.h"
#include "core/tensor.h"
#include "testutil.h"

#define GUARD_BYTES 256
#define GUARD_BYTE 0xA5

static int have_gpu(void)
{
    static int have = -1;
    if (have < 0)
        have = anvil_cuda_device_count() > 0;
    return have;
}

/* A device buffer of bytes (0xFF: NaN) followed by guard bytes. */
static void *dev_alloc(anvil_backend *be, size_t bytes)
{
    void *d = NULL;
    assert_int_equal(be->ops->alloc(be, bytes + GUARD_BYTES, &d), ANVIL_OK);
    unsigned char *h = malloc(bytes + GUARD_BYTES);
    assert_non_null(h);
    memset(h, 0xFF, bytes);
    memset(h + bytes, GUARD_BYTE, GUARD_BYTES);
    assert_int_equal(be->ops->upload(be, d, h, bytes + GUARD_BYTES), ANVIL_OK);
    free(h);
    return d;
}

static void *dev_put(anvil_backend *be, const void *h, size_t bytes)
{
    void *d = dev_alloc(be, bytes);
    assert_int_equal(be->ops->upload(be, d, h, bytes), ANVIL_OK);
    return d;
}

static void dev_check_guard(anvil_backend *be, const void *d, size_t bytes, const char *what)
{
    unsigned char g[GUARD_BYTES];
    assert_int_equal(be->ops->download(be, g, (const char *)d + bytes, GUARD_BYTES), ANVIL_OK);
    for (int i = 0; i < GUARD_BYTES; i++)
        if (g[i] != GUARD_BYTE)
            fail_msg("%s: guard byte %d after the output was overwritten", what, i);
}

/* ------------------------------------------------------------ host weights */

/* A stacked weight [rows, K] quantized row by row (kind ANVIL_DTYPE_COUNT:
 * not quantized, bf16 values), with its dequantized f32 values. */
typedef struct hmat {
    anvil_dtype kind;
    int32_t group;
    int64_t rows, K, n_scales;
    uint8_t *bytes; /* codes, or bf16 values */
    size_t n_bytes;
    float *scales;
    uint8_t *zeros;
    float *deq; /* [rows, K] */
    anvil_quant q; /* host pointers */
} hmat;

/* Rows of K values ~ 2.4 / sqrt(K), each block of rows_per_factor rows
 * times 2^min(row / rows_per_factor, max_exp). */
static void hmat_new(hmat *m, anvil_dtype kind, int32_t group, int64_t rows, int64_t K, int64_t rows_per_factor,
                     int max_exp, int with_deq, uint64_t *rng)
{
    memset(m, 0, sizeof *m);
    m->kind = kind;
    m->group = kind == ANVIL_DTYPE_U4 ? group : 0;
    m->rows = rows;
    m->K = K;
    const int quant = kind != ANVIL_DTYPE_COUNT;
    const int64_t g = kind == ANVIL_DTYPE_U4 ? K / group : 1;
    m->n_scales = quant ? rows * g : 0;
    const size_t rb = !quant ? (size_t)K * 2 : kind == ANVIL_DTYPE_U4 ? (size_t)(K / 2) : (size_t)K;
    m->n_bytes = rb * (size_t)rows;
    m->bytes = malloc(m->n_bytes);
    /* a row's worth only without with_deq (--perf: no host copy of a whole layer) */
    m->deq = malloc((size_t)((with_deq ? rows : 1) * K) * sizeof *m->deq);
    m->scales = quant ? malloc((size_t)m->n_scales * sizeof *m->scales) : NULL;
    m->zeros = kind == ANVIL_DTYPE_U4 ? malloc((size_t)m->n_scales) : NULL;
    float *x = malloc((size_t)K * sizeof *x);
    assert_true(m->bytes && m->deq && x && (!quant || m->scales) && (kind != ANVIL_DTYPE_U4 || m->zeros));
    const float unit = 2.4f / sqrtf((float)K);
    for (int64_t r = 0; r < rows; r++) {
        const int64_t e = r / rows_per_factor;
        const float f = unit * ldexpf(1.0f, (int)(e < max_exp ? e : max_exp));
        for (int64_t i = 0; i < K; i++)
            x[i] = anvil_test_randf(rng) * f;
        uint8_t *q = m->bytes + (size_t)r * rb;
        float *d = m->deq + (with_deq ? r * K : 0);
        if (!quant) {
            anvil_convert_from_f32(ANVIL_DTYPE_BF16, x, q, K);
            anvil_convert_to_f32(ANVIL_DTYPE_BF16, q, d, K);
            continue;
        }
        anvil_rtn_row(kind, m->group, x, K, q, m->scales + r * g, m->zeros ? m->zeros + r * g : NULL);
        for (int64_t i = 0; i < K; i++) {
            const int64_t gi = r * g + (kind == ANVIL_DTYPE_U4 ? i / group : 0);
            const float s = m->scales[gi];
            d[i] = kind == ANVIL_DTYPE_U4  ? ((float)((q[i / 2] >> (i % 2 ? 4 : 0)) & 15) - (float)m->zeros[gi]) * s
                   : kind == ANVIL_DTYPE_I8 ? (float)(int8_t)q[i] * s
                                            : anvil_fp8_e4m3_to_f32(q[i]) * s;
        }
    }
    free(x);
    m->q = (anvil_quant){.group = m->group, .scales = m->scales, .zeros = m->zeros,
                         .act = kind == ANVIL_DTYPE_F8_E4M3 ? ANVIL_QUANT_ACT_FP8_DYNAMIC : ANVIL_QUANT_ACT_NONE};
}

static void hmat_free(hmat *m)
{
    free(m->bytes);
    free(m->scales);
    free(m->zeros);
    free(m->deq);
}

/* The host tensor: quantized (deq 0) or its dequantized f32 values (1). */
static anvil_tensor hmat_tensor(hmat *m, int deq)
{
    if (deq || m->kind == ANVIL_DTYPE_COUNT)
        return anvil_tensor_2d(ANVIL_DTYPE_F32, m->rows, m->K, m->deq);
    anvil_tensor t = anvil_tensor_2d(m->kind, m->rows, m->K, m->bytes);
    t.quant = &m->q;
    return t;
}

/* The device copy of a weight, its anvil_quant with device pointers. */
typedef struct dmat {
    void *bytes, *scales, *zeros;
    anvil_quant q;
    anvil_tensor t;
} dmat;

static void dmat_new(dmat *d, anvil_backend *be, const hmat *m)
{
    memset(d, 0, sizeof *d);
    d->bytes = dev_put(be, m->bytes, m->n_bytes);
    if (m->kind == ANVIL_DTYPE_COUNT) {
        d->t = anvil_tensor_2d(ANVIL_DTYPE_BF16, m->rows, m->K, d->bytes);
        return;
    }
    d->scales = dev_put(be, m->scales, (size_t)m->n_scales * sizeof(float));
    if (m->zeros)
        d->zeros = dev_put(be, m->zeros, (size_t)m->n_scales);
    d->q = m->q;
    d->q.scales = d->scales;
    d->q.zeros = d->zeros;
    d->t = anvil_tensor_2d(m->kind, m->rows, m->K, d->bytes);
    d->t.quant = &d->q;
}

static void dmat_free(anvil_backend *be, dmat *d)
{
    be->ops->free(be, d->bytes);
    if (d->scales)
        be->ops->free(be, d->scales);
    if (d->zeros)
        be->ops->free(be, d->zeros);
}

/* ------------------------------------------------------------ cases */

typedef struct qcase {
    int64_t T, H;
    int32_t E, k;
    int64_t I, Is;
    anvil_dtype kind;
    int32_t group;
} qcase;

#define FP8 ANVIL_DTYPE_F8_E4M3
#define I8 ANVIL_DTYPE_I8
#define U4 ANVIL_DTYPE_U4
static const qcase qcases[] = {
    {1, 256, 8, 2, 512, 0, FP8, 0}, /* Mixtral-like decode */
    {1, 256, 8, 2, 512, 0, I8, 0},
    {1, 256, 8, 2, 512, 0, U4, 128},
    {5, 256, 8, 2, 512, 0, U4, 32},
    {8, 256, 8, 2, 512, 128, I8, 0},  /* a shared expert (Qwen2-MoE) */
    {8, 256, 8, 2, 512, 128, FP8, 0},
    {9, 256, 8, 2, 512, 0, U4, 128},  /* prefill paths */
    {40, 128, 16, 4, 192, 64, U4, 32},
    {40, 128, 16, 4, 192, 64, FP8, 0},
    {33, 96, 8, 2, 160, 48, U4, 16},  /* groups of 16, K off the GEMVs' steps */
    {4, 96, 8, 2, 160, 48, U4, 16},   /* the grouped GEMV: groups of 16, K not a multiple of 256 lanes' codes */
    {1, 96, 8, 2, 160, 0, FP8, 0},
    {7, 96, 6, 3, 40, 0, I8, 0},      /* K 40: lanes past the row's end from the start */
    {12, 96, 8, 2, 160, 0, I8, 0},
    /* the streaming form: K split (gate/up 2, down 4 at 264 blocks), 1 and 6 tokens */
    {2, 1024, 8, 2, 2048, 0, FP8, 0},
    {6, 1024, 8, 2, 2048, 0, FP8, 0},
};
#undef FP8
#undef I8
#undef U4

typedef struct hfix {
    qcase c;
    float *x, *router, *sgate;
    hmat gu, down, sgu, sdown;
} hfix;

static void hfix_new(hfix *f, const qcase *c, anvil_dtype act, uint64_t *rng)
{
    memset(f, 0, sizeof *f);
    f->c = *c;
    const int64_t T = c->T, H = c->H, E = c->E, I = c->I, Is = c->Is;
    f->x = malloc((size_t)(T * H) * sizeof *f->x);
    f->router = malloc((size_t)(E * H) * sizeof *f->router);
    assert_true(f->x && f->router);
    for (int64_t i = 0; i < T * H; i++)
        f->x[i] = anvil_test_randf(rng);
    for (int64_t i = 0; i < E * H; i++)
        f->router[i] = anvil_test_randf(rng) / sqrtf((float)H) * 4.0f;
    /* the device holds x and the router in the activation dtype, bf16: the same values here */
    uint16_t *tmp = malloc((size_t)((T > E ? T : E) * H) * 2);
    assert_non_null(tmp);
    if (act != ANVIL_DTYPE_F32) {
        anvil_convert_from_f32(act, f->x, tmp, T * H);
        anvil_convert_to_f32(act, tmp, f->x, T * H);
    }
    anvil_convert_from_f32(ANVIL_DTYPE_BF16, f->router, tmp, E * H);
    anvil_convert_to_f32(ANVIL_DTYPE_BF16, tmp, f->router, E * H);
    free(tmp);
    const int max_exp = act == ANVIL_DTYPE_F16 ? 2 : 62; /* f16: the products stay inside its range */
    hmat_new(&f->gu, c->kind, c->group, E * 2 * I, H, 2 * I, max_exp, 1, rng);
    hmat_new(&f->down, c->kind, c->group, E * H, I, H, max_exp, 1, rng);
    if (Is > 0) {
        hmat_new(&f->sgu, c->kind, c->group, 2 * Is, H, Is, max_exp, 1, rng);
        hmat_new(&f->sdown, c->kind, c->group, H, Is, H, max_exp, 1, rng);
        f->sgate = malloc((size_t)H * sizeof *f->sgate);
        uint16_t b[1];
        for (int64_t i = 0; i < H; i++) {
            float v = anvil_test_randf(rng) / sqrtf((float)H);
            anvil_convert_from_f32(ANVIL_DTYPE_BF16, &v, b, 1);
            anvil_convert_to_f32(ANVIL_DTYPE_BF16, b, &f->sgate[i], 1);
        }
    }
}

static void hfix_free(hfix *f)
{
    free(f->x);
    free(f->router);
    free(f->sgate);
    hmat_free(&f->gu);
    hmat_free(&f->down);
    if (f->c.Is > 0) {
        hmat_free(&f->sgu);
        hmat_free(&f->sdown);
    }
}

/* The host reference on the quantized (deq 0) or dequantized (1) weights. */
static float *reference(hfix *f, int deq)
{
    const qcase *c = &f->c;
    anvil_moe_scratch L;
    assert_int_equal(anvil_moe_scratch_layout(c->T, c->H, c->E, c->k, c->I, c->Is, &L), ANVIL_OK);
    float *out = malloc((size_t)(c->T * c->H) * sizeof *out);
    void *scratch = malloc(L.bytes);
    assert_true(out && scratch);
    anvil_tensor x = anvil_tensor_2d(ANVIL_DTYPE_F32, c->T, c->H, f->x);
    anvil_tensor r = anvil_tensor_2d(ANVIL_DTYPE_F32, c->E, c->H, f->router);
    anvil_tensor gu = hmat_tensor(&f->gu, deq), dn = hmat_tensor(&f->down, deq);
    anvil_tensor sgu = {0}, sdn = {0}, sg = {0};
    if (c->Is > 0) {
        sgu = hmat_tensor(&f->sgu, deq);
        sdn = hmat_tensor(&f->sdown, deq);
        sg = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, c->H, f->sgate);
    }
    anvil_tensor o = anvil_tensor_2d(ANVIL_DTYPE_F32, c->T, c->H, out);
    anvil_moe_args a = {.x = &x, .router = &r, .gate_up = &gu, .down = &dn,
                        .shared_gate_up = c->Is > 0 ? &sgu : NULL, .shared_down = c->Is > 0 ? &sdn : NULL,
                        .shared_gate = c->Is > 0 ? &sg : NULL, .out = &o, .n_experts = c->E, .top_k = c->k,
                        .inter = c->I, .shared_inter = c->Is, .norm_topk_prob = 1,
                        .scratch = scratch, .scratch_bytes = L.bytes};
    if (anvil_cpu_ref_moe(&a) != ANVIL_OK)
        fail_msg("reference: %s", anvil_last_error());
    free(scratch);
    return out;
}

/* max |got - want| / max |want|: over all of [T, H] (rows 0), or the
 * largest over the tokens of that within the token's row (rows 1: a token
 * whose experts are the small ones is held too); *worst: the element. */
static double rel_err(const float *got, const float *want, int64_t T, int64_t H, int rows, int64_t *worst)
{
    const int64_t n_rows = rows ? T : 1, len = rows ? H : T * H;
    double worst_rel = 0;
    *worst = 0;
    for (int64_t t = 0; t < n_rows; t++) {
        double max_ref = 0, max_err = 0;
        int64_t at = t * len;
        for (int64_t i = t * len; i < (t + 1) * len; i++) {
            const double err = isnan(got[i]) ? INFINITY : fabs((double)got[i] - want[i]);
            max_ref = fmax(max_ref, fabs(want[i]));
            if (err > max_err || (i == t * len && err == INFINITY)) {
                max_err = err;
                at = i;
            }
        }
        const double rel = max_err / fmax(max_ref, 1e-6);
        if (rel > worst_rel || (t == 0 && rel == INFINITY)) {
            worst_rel = rel;
            *worst = at;
        }
    }
    return worst_rel;
}

/* loop 0: the knob moe_loop 2 (the grouped GEMV); 1: moe_loop 1 (the loop,
 * also the default for quantized experts); 2: moe_loop 0 with matmul_quant 7 (the
 * streaming GEMVs: fp8 W8A8 experts on cuda_moe_quant.cu's streaming form
 * where it takes them, the shared expert's matmuls on the dense one) */
static void set_loop(anvil_backend *be, int loop)
{
    anvil_cuda_knobs k;
    memset(&k, 0, sizeof k);
    k.moe_loop = loop == 0 ? 2 : loop == 1 ? 1 : 0;
    k.matmul_quant = loop == 2 ? 7 : 0;
    assert_int_equal(anvil_cuda_set_knobs(be, &k), ANVIL_OK);
}

static void test_moe_quant_vs_cpu(void **state)
{
    (void)state;
    if (!have_gpu())
        skip();
    const anvil_dtype acts[] = {ANVIL_DTYPE_F32, ANVIL_DTYPE_BF16, ANVIL_DTYPE_F16};
    uint64_t rng = 0x9e11;
    int failed = 0;
    for (size_t ai = 0; ai < 3; ai++) {
        anvil_backend *be;
        if (anvil_backend_cuda_create(0, acts[ai], &be) != ANVIL_OK)
            fail_msg("cuda backend: %s", anvil_last_error());
        const anvil_dtype act = acts[ai];
        for (size_t ci = 0; ci < sizeof qcases / sizeof qcases[0]; ci++) {
            const qcase *c = &qcases[ci];
            hfix f;
            hfix_new(&f, c, act, &rng);
            float *ref_q = reference(&f, 0), *ref_d = reference(&f, 1);
            const int64_t n = c->T * c->H;
            /* the device copies: x in act, router and shared gate bf16 */
            void *hx = malloc((size_t)n * anvil_dtype_size(act));
            assert_non_null(hx);
            anvil_convert_from_f32(act, f.x, hx, n);
            anvil_tensor x = anvil_tensor_2d(act, c->T, c->H, dev_put(be, hx, (size_t)n * anvil_dtype_size(act)));
            free(hx);
            uint16_t *hb = malloc((size_t)(c->E * c->H) * 2);
            assert_non_null(hb);
            anvil_convert_from_f32(ANVIL_DTYPE_BF16, f.router, hb, c->E * c->H);
            anvil_tensor router =
                anvil_tensor_2d(ANVIL_DTYPE_BF16, c->E, c->H, dev_put(be, hb, (size_t)(c->E * c->H) * 2));
            anvil_tensor sgate = {0};
            if (c->Is > 0) {
                anvil_convert_from_f32(ANVIL_DTYPE_BF16, f.sgate, hb, c->H);
                sgate = anvil_tensor_2d(ANVIL_DTYPE_BF16, 1, c->H, dev_put(be, hb, (size_t)c->H * 2));
            }
            free(hb);
            dmat gu, dn, sgu, sdn;
            dmat_new(&gu, be, &f.gu);
            dmat_new(&dn, be, &f.down);
            if (c->Is > 0) {
                dmat_new(&sgu, be, &f.sgu);
                dmat_new(&sdn, be, &f.sdown);
            }
            anvil_moe_scratch L;
            assert_int_equal(anvil_moe_scratch_layout(c->T, c->H, c->E, c->k, c->I, c->Is, &L), ANVIL_OK);
            void *scratch = dev_alloc(be, L.bytes);
            const size_t out_bytes = (size_t)n * anvil_dtype_size(act);
            float *got = malloc((size_t)n * sizeof *got);
            void *hout = malloc(out_bytes);
            assert_true(got && hout);
            for (int loop = 0; loop <= 2; loop++) {
                anvil_tensor out = anvil_tensor_2d(act, c->T, c->H, dev_alloc(be, out_bytes));
                anvil_moe_args a = {.x = &x, .router = &router, .gate_up = &gu.t, .down = &dn.t,
                                    .shared_gate_up = c->Is > 0 ? &sgu.t : NULL,
                                    .shared_down = c->Is > 0 ? &sdn.t : NULL,
                                    .shared_gate = c->Is > 0 ? &sgate : NULL, .out = &out, .n_experts = c->E,
                                    .top_k = c->k, .inter = c->I, .shared_inter = c->Is, .norm_topk_prob = 1,
                                    .scratch = scratch, .scratch_bytes = L.bytes};
                set_loop(be, loop);
                char what[200];
                snprintf(what, sizeof what, "%s act %s T=%lld H=%lld E=%d k=%d I=%lld Is=%lld g%d %s",
                         anvil_dtype_name(c->kind), anvil_dtype_name(act), (long long)c->T, (long long)c->H, c->E,
                         c->k, (long long)c->I, (long long)c->Is, c->group,
                         loop == 0 ? "moe_loop 2" : loop == 1 ? "moe_loop 1" : "matmul_quant 7");
                if (be->ops->moe(be, &a) != ANVIL_OK || be->ops->synchronize(be) != ANVIL_OK)
                    fail_msg("%s: %s", what, anvil_last_error());
                assert_int_equal(be->ops->download(be, hout, out.data, out_bytes), ANVIL_OK);
                dev_check_guard(be, out.data, out_bytes, what);
                anvil_convert_to_f32(act, hout, got, n);
                int64_t wq, wd, wr;
                const int fp8 = c->kind == ANVIL_DTYPE_F8_E4M3;
                const double eq = rel_err(got, ref_q, c->T, c->H, 0, &wq), ed = rel_err(got, ref_d, c->T, c->H, 0, &wd);
                const double er = rel_err(got, fp8 ? ref_q : ref_d, c->T, c->H, 1, &wr);
                const int ok = fp8 ? eq <= 6e-2 && er <= 0.3 : (ed <= 3e-2 && eq <= 5e-2 && er <= 0.15);
                printf("%-4s %s: vs quantized reference %.2e, vs dequantized %.2e, worst token %.2e\n",
                       ok ? "ok" : "FAIL", what, eq, ed, er);
                if (!ok) {
                    printf("     worst: got %g, want %g (quantized) / %g (dequantized)\n", got[fp8 ? wq : wd],
                           ref_q[fp8 ? wq : wd], ref_d[fp8 ? wq : wd]);
                    failed++;
                }
                be->ops->free(be, out.data);
            }
            free(got);
            free(hout);
            be->ops->free(be, scratch);
            be->ops->free(be, x.data);
            be->ops->free(be, router.data);
            dmat_free(be, &gu);
            dmat_free(be, &dn);
            if (c->Is > 0) {
                be->ops->free(be, sgate.data);
                dmat_free(be, &sgu);
                dmat_free(be, &sdn);
            }
            free(ref_q);
            free(ref_d);
            hfix_free(&f);
        }
        anvil_backend_free(be);
    }
    if (failed)
        fail_msg("%d cases out of bounds", failed);
}

/* ---------------------------------------------------------------- --perf */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double time_moe(anvil_backend *be, anvil_moe_args *a, int knob, int iters)
{
    anvil_cuda_knobs kn;
    memset(&kn, 0, sizeof kn);
    kn.moe_loop = knob == 0 ? 2 : knob == 1 ? 1 : 0; /* 0: the grouped GEMV; 1: the loop (the default) */
    kn.matmul_quant = knob == 2 ? 7 : 0; /* 2: the streaming form (fp8 W8A8) */
    if (anvil_cuda_set_knobs(be, &kn) != ANVIL_OK)
        return -1;
    for (int w = 0; w < 3; w++)
        if (be->ops->moe(be, a) != ANVIL_OK)
            return -1;
    if (be->ops->synchronize(be) != ANVIL_OK)
        return -1;
    const double t0 = now_s();
    for (int it = 0; it < iters; it++)
        if (be->ops->moe(be, a) != ANVIL_OK)
            return -1;
    if (be->ops->synchronize(be) != ANVIL_OK)
        return -1;
    return (now_s() - t0) * 1e3 / iters;
}

/* One Mixtral-8x7B layer's experts in each scheme: the weights are
 * uploaded as they come (their values do not matter for the time; the
 * routing is random). */
static int perf_main(void)
{
    if (!have_gpu()) {
        fprintf(stderr, "no CUDA device\n");
        return 77;
    }
    anvil_backend *be;
    if (anvil_backend_cuda_create(0, ANVIL_DTYPE_BF16, &be) != ANVIL_OK) {
        fprintf(stderr, "%s\n", anvil_last_error());
        return 1;
    }
    const int64_t H = 4096, I = 14336, Ts[] = {1, 2, 4, 8, 64};
    const int32_t E = 8, k = 2;
    const anvil_dtype kinds[] = {ANVIL_DTYPE_COUNT, ANVIL_DTYPE_F8_E4M3, ANVIL_DTYPE_I8, ANVIL_DTYPE_U4};
    uint64_t rng = 5;
    printf("moe, one Mixtral-8x7B layer's experts (H %lld, I %lld, %d experts, top %d), bf16 activations\n",
           (long long)H, (long long)I, E, k);
    printf("%-8s %6s %-5s %10s %14s %10s\n", "weights", "tokens", "path", "ms", "expert bytes", "GB/s");
    for (size_t ki = 0; ki < sizeof kinds / sizeof kinds[0]; ki++) {
        hmat gu, dn;
        hmat_new(&gu, kinds[ki], 128, E * 2 * I, H, 2 * I, 62, 0, &rng);
        hmat_new(&dn, kinds[ki], 128, E * H, I, H, 62, 0, &rng);
        dmat dgu, ddn;
        dmat_new(&dgu, be, &gu);
        dmat_new(&ddn, be, &dn);
        const size_t expert_bytes = (gu.n_bytes + dn.n_bytes + (size_t)(gu.n_scales + dn.n_scales) * 4 +
                                     (gu.zeros ? (size_t)(gu.n_scales + dn.n_scales) : 0)) / (size_t)E;
        hmat_free(&gu);
        hmat_free(&dn);
        for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
            const int64_t T = Ts[ti];
            float *hx = malloc((size_t)(T * H) * sizeof *hx), *hr = malloc((size_t)(E * H) * sizeof *hr);
            uint16_t *b = malloc((size_t)((T > E ? T : E) * H) * 2);
            for (int64_t i = 0; i < T * H; i++)
                hx[i] = anvil_test_randf(&rng);
            for (int64_t i = 0; i < E * H; i++)
                hr[i] = anvil_test_randf(&rng) * 0.05f;
            anvil_convert_from_f32(ANVIL_DTYPE_BF16, hx, b, T * H);
            anvil_tensor x = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, H, dev_put(be, b, (size_t)(T * H) * 2));
            anvil_convert_from_f32(ANVIL_DTYPE_BF16, hr, b, E * H);
            anvil_tensor r = anvil_tensor_2d(ANVIL_DTYPE_BF16, E, H, dev_put(be, b, (size_t)(E * H) * 2));
            anvil_tensor out = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, H, dev_alloc(be, (size_t)(T * H) * 2));
            anvil_moe_scratch L;
            if (anvil_moe_scratch_layout(T, H, E, k, I, 0, &L) != ANVIL_OK)
                return 1;
            void *scratch = dev_alloc(be, L.bytes);
            anvil_moe_args a = {.x = &x, .router = &r, .gate_up = &dgu.t, .down = &ddn.t, .out = &out,
                                .n_experts = E, .top_k = k, .inter = I, .norm_topk_prob = 1, .scratch = scratch,
                                .scratch_bytes = L.bytes};
            /* the experts a step reads: at most T k of them, at most E */
            const int64_t active = T * k < E ? T * k : E;
            const double bytes = (double)expert_bytes * (double)active;
            for (int knob = 0; knob <= 2; knob++) {
                /* stream: fp8 at up to 6 tokens (8 rows of K = 14336 pass the shared memory) */
                if (knob == 2 && (kinds[ki] != ANVIL_DTYPE_F8_E4M3 || T > 6))
                    continue;
                const double ms = time_moe(be, &a, knob, 20);
                const char *kname = kinds[ki] == ANVIL_DTYPE_COUNT ? "bf16" : anvil_dtype_name(kinds[ki]);
                const char *pname = knob == 0 ? "grp" : knob == 1 ? "loop" : "strm";
                if (ms < 0)
                    printf("%-8s %6lld %-5s failed: %s\n", kname, (long long)T, pname, anvil_last_error());
                else
                    printf("%-8s %6lld %-5s %10.3f %14.0f %10.1f\n", kname, (long long)T, pname, ms, bytes,
                           bytes / ms * 1e-6);
            }
            be->ops->free(be, scratch);
            be->ops->free(be, x.data);
            be->ops->free(be, r.data);
            be->ops->free(be, out.data);
            free(hx);
            free(hr);
            free(b);
        }
        dmat_free(be, &dgu);
        dmat_free(be, &ddn);
    }
    anvil_backend_free(be);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--perf") == 0)
        return perf_main();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_moe_quant_vs_cpu),
    };
    return anvil_test_group_result(cmocka_run_group_tests(tests, NULL, NULL), sizeof tests / sizeof tests[0]);
}
