/*
 * The CPU backend's moe op on quantized experts (docs/quantization.md,
 * "Mixture of experts"): the stacked gate_up / down (and the shared
 * expert's) quantized row by row as `anvil build --quantize` stores them
 * (anvil_rtn_row: fp8 W8A8 per channel, int8 per channel, int4 in groups
 * of 32 (the int path) and of 16 (the dequantizing path)), the router and
 * the shared gate dense:
 *  - against the scalar reference (anvil_cpu_ref_moe, which runs each
 *    expert's slice through anvil_cpu_ref_matmul): tight, on every ISA;
 *  - against the dense reference on the dequantized weights, within the
 *    scheme's activation rounding. Each expert's rows are scaled by a
 *    factor of their own (1, 2, 4, ...), so that an expert reading
 *    another's scales or zero points lands far outside that bound (the
 *    reference shares anvil_moe_weight_rows with the op: this check does
 *    not);
 *  - each token alone gives the bits it got in the batch;
 *  - quantized routers and shared gates are refused by name, and so are
 *    quantized experts by anvil_moe_check_args (backends without them).
 */
#include "builder/quantize.h"
#include "cpu_testkit.h"

typedef struct qcase {
    int64_t T, H;
    int32_t E, k;
    int64_t I, Is;
    anvil_dtype kind; /* F8_E4M3 (W8A8 dynamic), I8, U4 */
    int32_t group;    /* U4: columns a scale */
} qcase;

static const qcase qcases[] = {
    {1, 64, 4, 2, 96, 0, ANVIL_DTYPE_F8_E4M3, 0},  /* Mixtral-like decode */
    {9, 64, 4, 2, 96, 0, ANVIL_DTYPE_I8, 0},
    {9, 64, 4, 2, 96, 0, ANVIL_DTYPE_U4, 32},
    {33, 64, 8, 2, 32, 64, ANVIL_DTYPE_U4, 32},   /* Qwen2-MoE-like: a shared expert */
    {17, 64, 8, 3, 32, 48, ANVIL_DTYPE_U4, 16},   /* groups of 16: the dequantizing path */
    {40, 32, 8, 2, 64, 32, ANVIL_DTYPE_F8_E4M3, 0},
    {12, 32, 8, 8, 32, 32, ANVIL_DTYPE_I8, 0},    /* every expert */
};

/* A stacked weight [rows, K] quantized row by row: its bytes, scales,
 * zero points and the dequantized f32 values fl((v - z) * s). */
typedef struct qmat {
    gbuf data, deq;
    float *scales;
    uint8_t *zeros;
    anvil_quant q;
    anvil_tensor t, tdeq;
} qmat;

/* rows of K random values, each block of rows_per_factor rows times
 * 2^(row / rows_per_factor), quantized as kind. */
static void qmat_new(qmat *mp, anvil_dtype kind, int32_t group, int64_t rows, int64_t K, int64_t rows_per_factor,
                     uint64_t *rng)
{
    qmat m = {0};
    const int64_t g = kind == ANVIL_DTYPE_U4 ? K / group : 1;
    const size_t rb = kind == ANVIL_DTYPE_U4 ? (size_t)(K / 2) : (size_t)K;
    m.data = gbuf_new(rb * (size_t)rows, 0);
    m.deq = gbuf_new((size_t)(rows * K) * 4, 0);
    m.scales = malloc((size_t)(rows * g) * sizeof *m.scales);
    m.zeros = kind == ANVIL_DTYPE_U4 ? malloc((size_t)(rows * g)) : NULL;
    float *x = malloc((size_t)K * sizeof *x);
    assert_true(m.scales != NULL && x != NULL && (kind != ANVIL_DTYPE_U4 || m.zeros != NULL));
    for (int64_t r = 0; r < rows; r++) {
        const float f = ldexpf(1.0f, (int)(r / rows_per_factor));
        for (int64_t i = 0; i < K; i++)
            x[i] = kit_randf(rng) * f;
        uint8_t *q = (uint8_t *)m.data.data + (size_t)r * rb;
        anvil_rtn_row(kind, kind == ANVIL_DTYPE_U4 ? group : 0, x, K, q, m.scales + r * g,
                      m.zeros ? m.zeros + r * g : NULL);
        for (int64_t i = 0; i < K; i++) {
            const int64_t gi = r * g + (kind == ANVIL_DTYPE_U4 ? i / group : 0);
            const float s = m.scales[gi];
            float v;
            if (kind == ANVIL_DTYPE_U4)
                v = ((float)((q[i / 2] >> (i % 2 ? 4 : 0)) & 15) - (float)m.zeros[gi]) * s;
            else if (kind == ANVIL_DTYPE_I8)
                v = (float)(int8_t)q[i] * s;
            else
                v = anvil_fp8_e4m3_to_f32(q[i]) * s;
            ((float *)m.deq.data)[r * K + i] = v;
        }
    }
    free(x);
    m.q = (anvil_quant){.group = kind == ANVIL_DTYPE_U4 ? group : 0, .scales = m.scales, .zeros = m.zeros,
                        .act = kind == ANVIL_DTYPE_F8_E4M3 ? ANVIL_QUANT_ACT_FP8_DYNAMIC : ANVIL_QUANT_ACT_NONE};
    m.t = anvil_tensor_2d(kind, rows, K, m.data.data);
    m.t.quant = &m.q;
    m.tdeq = anvil_tensor_2d(ANVIL_DTYPE_F32, rows, K, m.deq.data);
    *mp = m;
    mp->t.quant = &mp->q; /* the view points into the struct: set where it lives */
}

static void qmat_free(qmat *m)
{
    if (m->data.block == NULL)
        return;
    gbuf_free(&m->data);
    gbuf_free(&m->deq);
    free(m->scales);
    free(m->zeros);
}

typedef struct qfix {
    qcase c;
    gbuf x, router, sgate, scratch;
    qmat gu, down, sgu, sdown;
    anvil_tensor tx, trouter, tsgate;
} qfix;

/* Fills *fp (which the weights' views point into). */
static void qfix_new(qfix *fp, const qcase *c, uint64_t *rng)
{
    *fp = (qfix){.c = *c};
    qfix f = *fp;
    const int64_t T = c->T, H = c->H, E = c->E, I = c->I, Is = c->Is;
    f.x = gbuf_new((size_t)(T * H) * 4, 0);
    f.router = gbuf_new((size_t)(E * H) * 4, 0);
    kit_fill_f32(f.x.data, T * H, rng);
    kit_fill_f32(f.router.data, E * H, rng);
    f.tx = anvil_tensor_2d(ANVIL_DTYPE_F32, T, H, f.x.data);
    f.trouter = anvil_tensor_2d(ANVIL_DTYPE_F32, E, H, f.router.data);
    /* expert e's gate and up rows (2I of them) and down rows (H) at 2^e */
    if (Is > 0) {
        f.sgate = gbuf_new((size_t)H * 4, 0);
        kit_fill_f32(f.sgate.data, H, rng);
        f.tsgate = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, H, f.sgate.data);
    }
    anvil_moe_scratch L;
    KIT_OK(anvil_moe_scratch_layout(T, H, c->E, c->k, I, Is, &L));
    f.scratch = gbuf_new(L.bytes, 0);
    *fp = f;
    qmat_new(&fp->gu, c->kind, c->group, E * 2 * I, H, 2 * I, rng);
    qmat_new(&fp->down, c->kind, c->group, E * H, I, H, rng);
    if (Is > 0) {
        qmat_new(&fp->sgu, c->kind, c->group, 2 * Is, H, Is, rng); /* gate 1, up 2 */
        qmat_new(&fp->sdown, c->kind, c->group, H, Is, H, rng);
    }
}

static void qfix_free(qfix *f)
{
    gbuf_free(&f->x);
    gbuf_free(&f->router);
    gbuf_free(&f->scratch);
    if (f->sgate.block != NULL)
        gbuf_free(&f->sgate);
    qmat_free(&f->gu);
    qmat_free(&f->down);
    qmat_free(&f->sgu);
    qmat_free(&f->sdown);
}

/* The op's arguments; deq: the dequantized f32 weights instead. */
static anvil_moe_args qfix_args(qfix *f, anvil_tensor *x, anvil_tensor *out, int deq)
{
    const qcase *c = &f->c;
    anvil_moe_args a = {
        .x = x, .router = &f->trouter, .gate_up = deq ? &f->gu.tdeq : &f->gu.t,
        .down = deq ? &f->down.tdeq : &f->down.t,
        .shared_gate_up = c->Is > 0 ? (deq ? &f->sgu.tdeq : &f->sgu.t) : NULL,
        .shared_down = c->Is > 0 ? (deq ? &f->sdown.tdeq : &f->sdown.t) : NULL,
        .shared_gate = c->Is > 0 ? &f->tsgate : NULL, .out = out,
        .n_experts = c->E, .top_k = c->k, .inter = c->I, .shared_inter = c->Is, .norm_topk_prob = 1,
        .scratch = f->scratch.data, .scratch_bytes = f->scratch.bytes,
    };
    return a;
}

static float max_abs(const float *v, int64_t n)
{
    float m = 0.0f;
    for (int64_t i = 0; i < n; i++)
        m = fabsf(v[i]) > m ? fabsf(v[i]) : m;
    return m;
}

static void test_moe_quant_vs_reference(void **state)
{
    (void)state;
    uint64_t rng = 29;
    kit_backends kb = kit_backends_new(2);
    for (size_t ci = 0; ci < sizeof qcases / sizeof qcases[0]; ci++) {
        const qcase *c = &qcases[ci];
        char name[160];
        snprintf(name, sizeof name, "moe quant T=%lld H=%lld E=%d k=%d I=%lld Is=%lld %s group %d", (long long)c->T,
                 (long long)c->H, c->E, c->k, (long long)c->I, (long long)c->Is, kit_dt(c->kind), c->group);
        qfix f;
        qfix_new(&f, c, &rng);
        const int64_t n = c->T * c->H;
        gbuf want = gbuf_new((size_t)n * 4, 0), dense = gbuf_new((size_t)n * 4, 0);
        anvil_tensor twant = anvil_tensor_2d(ANVIL_DTYPE_F32, c->T, c->H, want.data);
        anvil_tensor tdense = anvil_tensor_2d(ANVIL_DTYPE_F32, c->T, c->H, dense.data);
        anvil_moe_args ra = qfix_args(&f, &f.tx, &twant, 0);
        KIT_OK(anvil_cpu_ref_moe(&ra));
        anvil_moe_args da = qfix_args(&f, &f.tx, &tdense, 1);
        KIT_OK(anvil_cpu_ref_moe(&da));
        /* the quantized reference near the dense one of the same values: the
         * activations' rounding (int8 per block of 32 on the int path, fp8
         * per row for W8A8) only; a slice reading another expert's scales
         * is off by a factor of 2 or more */
        const float big = max_abs(dense.data, n);
        kit_expect_close(name, want.data, dense.data, NULL, n, (c->kind == ANVIL_DTYPE_F8_E4M3 ? 0.08f : 0.03f) * big,
                         0.0f);
        /* and per token, so that a token whose experts are the small ones is
         * held too (fp8 looser: its activations' rounding, up to 1/16 of an
         * element, cancels less in a short row) */
        for (int64_t t = 0; t < c->T; t++) {
            const float *wr = (const float *)want.data + t * c->H, *dr = (const float *)dense.data + t * c->H;
            kit_expect_close(name, wr, dr, NULL, c->H,
                             (c->kind == ANVIL_DTYPE_F8_E4M3 ? 0.3f : 0.03f) * max_abs(dr, c->H), 0.0f);
        }
        for (int i = 0; i < kb.n; i++) {
            gbuf got = gbuf_new((size_t)n * 4, 0);
            anvil_tensor tgot = anvil_tensor_2d(ANVIL_DTYPE_F32, c->T, c->H, got.data);
            anvil_moe_args a = qfix_args(&f, &f.tx, &tgot, 0);
            KIT_OK(kb.be[i]->ops->moe(kb.be[i], &a));
            gbuf_check(&got, name);
            gbuf_check(&f.scratch, name);
            /* f32 sums against double ones: a few ulps of the row's sums */
            kit_expect_close(name, got.data, want.data, NULL, n, 1e-5f * big, 1e-4f);
            for (int64_t t = 0; t < c->T; t += c->T > 8 ? 7 : 1) {
                gbuf one = gbuf_new((size_t)c->H * 4, 0);
                anvil_tensor x1 = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, c->H, (float *)f.x.data + t * c->H);
                anvil_tensor o1 = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, c->H, one.data);
                anvil_moe_args a1 = qfix_args(&f, &x1, &o1, 0);
                KIT_OK(kb.be[i]->ops->moe(kb.be[i], &a1));
                kit_expect_bitwise(name, one.data, (float *)got.data + t * c->H, (size_t)c->H * 4);
                gbuf_free(&one);
            }
            gbuf_free(&got);
        }
        gbuf_free(&want);
        gbuf_free(&dense);
        qfix_free(&f);
    }
    kit_backends_free(&kb);
}

static void test_moe_quant_errors(void **state)
{
    (void)state;
    uint64_t rng = 3;
    const qcase c = {3, 64, 4, 2, 32, 32, ANVIL_DTYPE_U4, 32};
    qfix f;
    qfix_new(&f, &c, &rng);
    gbuf got = gbuf_new((size_t)(c.T * c.H) * 4, 0);
    anvil_tensor tgot = anvil_tensor_2d(ANVIL_DTYPE_F32, c.T, c.H, got.data);
    anvil_backend *be;
    KIT_OK(anvil_backend_cpu_create(1, &be));
    anvil_moe_scratch L;
    anvil_moe_args a = qfix_args(&f, &f.tx, &tgot, 0);
    /* a backend that checks with anvil_moe_check_args takes no quantized experts */
    assert_int_equal(anvil_moe_check_args(&a, &L), ANVIL_ERR_UNSUPPORTED);
    assert_non_null(strstr(anvil_last_error(), "quantized"));
    KIT_OK(anvil_moe_check_args_quant(&a, &L));
    /* the router stays dense */
    qmat qr;
    qmat_new(&qr, ANVIL_DTYPE_I8, 0, c.E, c.H, c.E, &rng);
    a.router = &qr.t;
    assert_int_equal(be->ops->moe(be, &a), ANVIL_ERR_INVALID_ARG);
    assert_non_null(strstr(anvil_last_error(), "router"));
    assert_int_equal(anvil_cpu_ref_moe(&a), ANVIL_ERR_INVALID_ARG);
    /* scales missing */
    a = qfix_args(&f, &f.tx, &tgot, 0);
    anvil_quant nos = f.down.q;
    nos.scales = NULL;
    anvil_tensor down = f.down.t;
    down.quant = &nos;
    a.down = &down;
    assert_int_equal(be->ops->moe(be, &a), ANVIL_ERR_INVALID_ARG);
    assert_non_null(strstr(anvil_last_error(), "down"));
    /* a group that does not divide the columns */
    nos = f.down.q;
    nos.group = 24;
    assert_int_equal(be->ops->moe(be, &a), ANVIL_ERR_INVALID_ARG);
    /* zero points on int8 */
    qmat q8;
    qmat_new(&q8, ANVIL_DTYPE_I8, 0, c.E * 2 * c.I, c.H, 2 * c.I, &rng);
    q8.q.zeros = f.gu.zeros;
    a = qfix_args(&f, &f.tx, &tgot, 0);
    a.gate_up = &q8.t;
    assert_int_equal(be->ops->moe(be, &a), ANVIL_ERR_INVALID_ARG);
    assert_non_null(strstr(anvil_last_error(), "zero points"));
    for (size_t i = 0; i < got.bytes; i++)
        assert_int_equal(((unsigned char *)got.data)[i], GUARD_BYTE);
    q8.q.zeros = NULL;
    anvil_backend_free(be);
    qmat_free(&qr);
    qmat_free(&q8);
    gbuf_free(&got);
    qfix_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_moe_quant_vs_reference),
        cmocka_unit_test(test_moe_quant_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
