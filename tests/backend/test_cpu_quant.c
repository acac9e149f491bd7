/*
 * CPU matmul over quantized weights (fp8 e4m3, int8, int4: the canonical
 * form of docs/quantization.md): every code path against the scalar
 * reference on random shapes, groups, zero points, perms, fp8 activations
 * and biases, with guard bytes after every output; the paths bitwise equal
 * to each other and to the f32 matmul of the dequantized matrix (the
 * definition in cpu_quant.h); batch and thread-count invariance; the fused
 * ops; and the errors of bad combinations.
 */
#include "cpu_testkit.h"

#include "backend/cpu/cpu_quant.h"

/* A quantized weight and its companions, in guarded buffers. */
typedef struct qweight {
    anvil_dtype dt;
    int64_t N, K;
    gbuf w, scales, zeros, perm;
    anvil_quant q;
    anvil_tensor t;
} qweight;

typedef struct q_case {
    int64_t T, K, N;
    anvil_dtype dt;
    int group;    /* 0: per channel */
    int zeros;    /* u4: explicit zero points */
    int perm;
    anvil_quant_act act;
    int bias;     /* 0 none, 1 f32, 2 bf16 */
    size_t w_offset;
} q_case;

/* Fills *out (its tensor points at its own quant: not to be copied). */
static void qweight_init(qweight *out, const q_case *c, uint64_t *rng)
{
    qweight qw = {.dt = c->dt, .N = c->N, .K = c->K};
    const int64_t n_el = c->N * c->K;
    const size_t wbytes = c->dt == ANVIL_DTYPE_U4 ? (size_t)(n_el + 1) / 2 : (size_t)n_el;
    qw.w = gbuf_new(wbytes, c->w_offset);
    unsigned char *wb = qw.w.data;
    for (size_t i = 0; i < wbytes; i++) {
        if (c->dt == ANVIL_DTYPE_F8_E4M3) /* finite fp8 values of every magnitude */
            wb[i] = anvil_f32_to_fp8_e4m3(kit_randf(rng) * 300.0f * fabsf(kit_randf(rng)));
        else
            wb[i] = (unsigned char)(anvil_test_randf(rng) * 128.0f + 128.0f);
    }
    const int64_t G = c->group > 0 ? c->K / c->group : 1;
    qw.scales = gbuf_new((size_t)(c->N * G) * 4, 0);
    for (int64_t i = 0; i < c->N * G; i++)
        ((float *)qw.scales.data)[i] = 0.001f + 0.02f * fabsf(kit_randf(rng));
    qw.q = (anvil_quant){.group = c->group, .scales = qw.scales.data, .act = c->act};
    if (c->zeros) {
        qw.zeros = gbuf_new((size_t)(c->N * G), 0);
        for (int64_t i = 0; i < c->N * G; i++)
            ((uint8_t *)qw.zeros.data)[i] = (uint8_t)(anvil_test_randf(rng) * 8.0f + 8.0f) & 15;
        qw.q.zeros = qw.zeros.data;
    }
    if (c->perm) { /* a random permutation (Fisher-Yates) */
        qw.perm = gbuf_new((size_t)c->K * 4, 0);
        int32_t *p = qw.perm.data;
        for (int64_t k = 0; k < c->K; k++)
            p[k] = (int32_t)k;
        for (int64_t k = c->K - 1; k > 0; k--) {
            int64_t j = (int64_t)((anvil_test_randf(rng) * 0.5f + 0.5f) * (float)(k + 1)) % (k + 1);
            int32_t tmp = p[k];
            p[k] = p[j];
            p[j] = tmp;
        }
        qw.q.perm = p;
    }
    if (c->act == ANVIL_QUANT_ACT_FP8_STATIC)
        qw.q.input_scale = 1.0f / 300.0f;
    *out = qw;
    out->t = anvil_tensor_2d(c->dt, c->N, c->K, out->w.data);
    out->t.quant = &out->q;
}

static void qweight_free(qweight *qw)
{
    gbuf_free(&qw->w);
    gbuf_free(&qw->scales);
    if (qw->zeros.block != NULL)
        gbuf_free(&qw->zeros);
    if (qw->perm.block != NULL)
        gbuf_free(&qw->perm);
}

/* Runs one case on every code path: against the reference (|got - want|
 * <= 1e-6 + 2e-6 sum |products| (+|b|): f32 accumulation against double),
 * bitwise against each other and, on the f32 path, against the f32 matmul
 * of the dequantized W with the prepared x; on the int path (int8
 * activations), within the error of the activations' rounding of that
 * f32 result: |x - q d| <= d / 2 per element, so |int - f32| <= sum_k
 * d_b(k) / 2 |W_k| (+ rounding). */
static void run_case(const q_case *c, kit_backends *kb, uint64_t *rng)
{
    char name[200];
    snprintf(name, sizeof name, "qmatmul T=%lld K=%lld N=%lld %s group=%d zeros=%d perm=%d act=%d bias=%d",
             (long long)c->T, (long long)c->K, (long long)c->N, kit_dt(c->dt), c->group, c->zeros, c->perm,
             (int)c->act, c->bias);
    qweight qw;
    qweight_init(&qw, c, rng);
    gbuf x = gbuf_new((size_t)(c->T * c->K) * 4, 0);
    kit_fill_f32(x.data, c->T * c->K, rng);
    anvil_tensor tx = anvil_tensor_2d(ANVIL_DTYPE_F32, c->T, c->K, x.data);
    anvil_dtype bdt = c->bias == 2 ? ANVIL_DTYPE_BF16 : ANVIL_DTYPE_F32;
    gbuf b = gbuf_new((size_t)c->N * anvil_dtype_size(bdt), 2);
    kit_fill_dtype(b.data, bdt, c->N, rng);
    anvil_tensor tb = anvil_tensor_1d(bdt, c->N, b.data);
    const anvil_tensor *pb = c->bias ? &tb : NULL;

    gbuf want = gbuf_new((size_t)(c->T * c->N) * 4, 0);
    anvil_tensor twant = anvil_tensor_2d(ANVIL_DTYPE_F32, c->T, c->N, want.data);
    KIT_OK(anvil_cpu_ref_matmul(&tx, &qw.t, pb, &twant));
    gbuf_check(&want, name);

    /* the definition: x' and the dequantized W, through the f32 matmul */
    const anvil_cpu_qw cq = anvil_cpu_qw_of(&qw.t);
    float *xp = malloc((size_t)(c->T * c->K) * 4 + 4), *wd = malloc((size_t)(c->N * c->K) * 4 + 4);
    for (int64_t t = 0; t < c->T; t++)
        anvil_cpu_quant_prep_row(&qw.q, (float *)x.data + t * c->K, c->K, xp + t * c->K);
    anvil_cpu_quant_dequant_rows(&cq, 0, c->N, wd, c->K);
    const int ip = anvil_cpu_quant_int_path(&cq);
    float *scale = malloc((size_t)(c->T * c->N) * 4 + 4), *qerr = malloc((size_t)(c->T * c->N) * 4 + 4);
    void *q8 = malloc(anvil_cpu_q8_bytes(c->K) + 1);
    const anvil_cpu_q8 a8 = anvil_cpu_q8_at(q8, 1, c->K, 0);
    for (int64_t t = 0; t < c->T; t++) {
        if (ip)
            anvil_cpu_quant_prep_q8(&cq, (float *)x.data + t * c->K, a8);
        for (int64_t n = 0; n < c->N; n++) {
            double s = pb ? fabs(anvil_cpu_load_elem(b.data, bdt, n)) : 0.0, e = 0.0;
            for (int64_t k = 0; k < c->K; k++) {
                s += fabs((double)xp[t * c->K + k] * (double)wd[n * c->K + k]);
                if (ip) /* |q d| <= |x| + d / 2: the int products' size and the rounding's error */
                    e += (double)a8.dl[k / 32 * 8] * fabs((double)wd[n * c->K + k]);
            }
            scale[t * c->N + n] = (float)(s + e);
            qerr[t * c->N + n] = (float)(0.5 * e * 1.001);
        }
    }
    free(q8);
    gbuf deq = gbuf_new((size_t)(c->T * c->N) * 4, 0);
    anvil_tensor txp = anvil_tensor_2d(ANVIL_DTYPE_F32, c->T, c->K, xp);
    anvil_tensor twd = anvil_tensor_2d(ANVIL_DTYPE_F32, c->N, c->K, wd);
    anvil_tensor tdeq = anvil_tensor_2d(ANVIL_DTYPE_F32, c->T, c->N, deq.data);
    float *bf = malloc((size_t)c->N * 4); /* the bias as f32 (exact) for the f32 weight */
    for (int64_t n = 0; n < c->N; n++)
        bf[n] = anvil_cpu_load_elem(b.data, bdt, n);
    anvil_tensor tbf = anvil_tensor_1d(ANVIL_DTYPE_F32, c->N, bf);
    KIT_OK(kb->be[0]->ops->matmul(kb->be[0], &txp, &twd, pb != NULL ? &tbf : NULL, &tdeq));
    free(bf);

    gbuf first = {0};
    for (int i = 0; i < kb->n; i++) {
        char pname[260];
        snprintf(pname, sizeof pname, "%s [%s]", name, anvil_cpu_isa_name(kb->isa[i]));
        gbuf got = gbuf_new((size_t)(c->T * c->N) * 4, 0);
        anvil_tensor tgot = anvil_tensor_2d(ANVIL_DTYPE_F32, c->T, c->N, got.data);
        KIT_OK(kb->be[i]->ops->matmul(kb->be[i], &tx, &qw.t, pb, &tgot));
        gbuf_check(&got, pname);
        kit_expect_close(pname, got.data, want.data, scale, c->T * c->N, 1e-6f, 2e-6f);
        if (!ip)
            kit_expect_bitwise(pname, got.data, deq.data, got.bytes);
        else {
            for (int64_t e = 0; e < c->T * c->N; e++)
                qerr[e] += 1e-5f + 4e-6f * scale[e];
            kit_expect_close(pname, got.data, deq.data, qerr, c->T * c->N, 0.0f, 1.0f);
        }
        if (i == 0)
            first = got;
        else {
            kit_expect_bitwise(pname, got.data, first.data, got.bytes);
            gbuf_free(&got);
        }
    }
    gbuf_free(&first);
    free(qerr);
    gbuf_check(&qw.w, name);
    free(xp);
    free(wd);
    free(scale);
    gbuf_free(&deq);
    gbuf_free(&want);
    gbuf_free(&x);
    gbuf_free(&b);
    qweight_free(&qw);
}

static int64_t rand_in(uint64_t *rng, int64_t lo, int64_t hi)
{
    int64_t v = lo + (int64_t)((anvil_test_randf(rng) * 0.5f + 0.5f) * (float)(hi - lo + 1));
    return v > hi ? hi : v;
}

/* Random cases: K a multiple of the group, odd N, T = 1..70. */
static void test_quant_vs_reference(void **state)
{
    (void)state;
    uint64_t rng = 1234;
    kit_backends kb = kit_backends_new(2);
    static const anvil_dtype dts[] = {ANVIL_DTYPE_I8, ANVIL_DTYPE_U4, ANVIL_DTYPE_F8_E4M3};
    static const int groups[] = {0, 32, 64, 128, 16, 24};
    for (int i = 0; i < 60; i++) {
        q_case c = {0};
        c.dt = dts[i % 3];
        c.group = groups[(i / 3) % 6];
        int64_t mult = c.group > 0 ? c.group : 1;
        c.K = mult * rand_in(&rng, 1, c.group > 0 ? 640 / c.group + 1 : 700);
        if (c.group == 0 && i % 4 == 0)
            c.K |= 1; /* odd widths: u4 rows that start mid-byte (the f32 path) */
        else if (c.group == 0 && i % 4 == 2)
            c.K = 32 * rand_in(&rng, 1, 21); /* per channel on the int path */
        c.N = rand_in(&rng, 1, 80) | 1;
        c.T = i < 12 ? (i % 4) + 1 : rand_in(&rng, 1, 70);
        c.zeros = c.dt == ANVIL_DTYPE_U4 && (i / 2) % 2 == 0;
        c.perm = i % 5 == 1 || i % 7 == 3;
        if (c.dt == ANVIL_DTYPE_F8_E4M3)
            c.act = (anvil_quant_act)((i / 3) % 3);
        c.bias = i % 3 == 0 ? 0 : i % 3 == 1 ? 1 : 2;
        c.w_offset = (size_t)(i % 3);
        run_case(&c, &kb, &rng);
    }
    /* the decode shapes of a real layer, one of each kind */
    static const q_case big[] = {
        {1, 2048, 257, ANVIL_DTYPE_U4, 128, 1, 0, ANVIL_QUANT_ACT_NONE, 0, 0},
        {4, 2048, 129, ANVIL_DTYPE_I8, 0, 0, 0, ANVIL_QUANT_ACT_NONE, 1, 0},
        {3, 1024, 99, ANVIL_DTYPE_F8_E4M3, 0, 0, 0, ANVIL_QUANT_ACT_FP8_DYNAMIC, 0, 0},
        {9, 1024, 33, ANVIL_DTYPE_U4, 128, 0, 1, ANVIL_QUANT_ACT_NONE, 0, 0},
    };
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++)
        run_case(&big[i], &kb, &rng);
    kit_backends_free(&kb);
}

/* A row's result does not depend on the other rows of the batch, its place
 * in it, or the thread count. */
static void test_quant_invariance(void **state)
{
    (void)state;
    uint64_t rng = 77;
    static const q_case cs[] = {
        {70, 256, 101, ANVIL_DTYPE_U4, 64, 1, 1, ANVIL_QUANT_ACT_NONE, 1, 0},
        {70, 192, 67, ANVIL_DTYPE_I8, 0, 0, 0, ANVIL_QUANT_ACT_NONE, 0, 1},
        {70, 160, 45, ANVIL_DTYPE_F8_E4M3, 0, 0, 0, ANVIL_QUANT_ACT_FP8_DYNAMIC, 0, 0},
        {70, 96, 9, ANVIL_DTYPE_U4, 32, 1, 0, ANVIL_QUANT_ACT_NONE, 0, 0}, /* few rows: tokens split */
    };
    for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
        const q_case *c = &cs[ci];
        qweight qw;
        qweight_init(&qw, c, &rng);
        float *x = malloc((size_t)(c->T * c->K) * 4), *alone = malloc((size_t)(c->T * c->N) * 4);
        float *o = malloc((size_t)(c->T * c->N) * 4);
        kit_fill_f32(x, c->T * c->K, &rng);
        anvil_backend *be1 = NULL;
        KIT_OK(anvil_backend_cpu_create(1, &be1));
        for (int64_t t = 0; t < c->T; t++) { /* each row alone */
            anvil_tensor xr = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, c->K, x + t * c->K);
            anvil_tensor orow = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, c->N, alone + t * c->N);
            KIT_OK(be1->ops->matmul(be1, &xr, &qw.t, NULL, &orow));
        }
        static const int threads[] = {1, 2, 3};
        static const int64_t batches[] = {2, 3, 5, 8, 9, 17, 64, 70};
        for (int ti = 0; ti < 3; ti++) {
            anvil_backend *be = NULL;
            KIT_OK(anvil_backend_cpu_create(threads[ti], &be));
            for (size_t bi = 0; bi < sizeof batches / sizeof batches[0]; bi++)
                for (int64_t start = 0; start + batches[bi] <= c->T; start += c->T - batches[bi] > 0 ? (c->T - batches[bi] + 1) / 2 : 1) {
                    anvil_tensor xb = anvil_tensor_2d(ANVIL_DTYPE_F32, batches[bi], c->K, x + start * c->K);
                    anvil_tensor ob = anvil_tensor_2d(ANVIL_DTYPE_F32, batches[bi], c->N, o);
                    KIT_OK(be->ops->matmul(be, &xb, &qw.t, NULL, &ob));
                    char name[120];
                    snprintf(name, sizeof name, "%s rows %lld..%lld on %d threads", kit_dt(c->dt),
                             (long long)start, (long long)(start + batches[bi]), threads[ti]);
                    kit_expect_bitwise(name, o, alone + start * c->N, (size_t)(batches[bi] * c->N) * 4);
                    if (c->T - batches[bi] == 0)
                        break;
                }
            anvil_backend_free(be);
        }
        anvil_backend_free(be1);
        free(x);
        free(alone);
        free(o);
        qweight_free(&qw);
    }
}

/* The fused ops that take weights give the separate ops' results. */
static void test_quant_fused(void **state)
{
    (void)state;
    uint64_t rng = 5;
    anvil_backend *be = NULL;
    KIT_OK(anvil_backend_cpu_create(2, &be));
    const int64_t T = 3, K = 128, N = 33;
    q_case cg = {T, K, N, ANVIL_DTYPE_U4, 32, 1, 0, ANVIL_QUANT_ACT_NONE, 0, 0};
    q_case cu = {T, K, N, ANVIL_DTYPE_I8, 0, 0, 1, ANVIL_QUANT_ACT_NONE, 0, 0};
    qweight wg, wu;
    qweight_init(&wg, &cg, &rng);
    qweight_init(&wu, &cu, &rng);
    float x[3 * 128], g1[3 * 33], u1[3 * 33], o1[3 * 33], g2[3 * 33], u2[3 * 33], o2[3 * 33];
    kit_fill_f32(x, T * K, &rng);
    anvil_tensor tx = anvil_tensor_2d(ANVIL_DTYPE_F32, T, K, x);
    anvil_tensor tg1 = anvil_tensor_2d(ANVIL_DTYPE_F32, T, N, g1), tu1 = anvil_tensor_2d(ANVIL_DTYPE_F32, T, N, u1);
    anvil_tensor to1 = anvil_tensor_2d(ANVIL_DTYPE_F32, T, N, o1);
    anvil_tensor tg2 = anvil_tensor_2d(ANVIL_DTYPE_F32, T, N, g2), tu2 = anvil_tensor_2d(ANVIL_DTYPE_F32, T, N, u2);
    anvil_tensor to2 = anvil_tensor_2d(ANVIL_DTYPE_F32, T, N, o2);
    KIT_OK(be->ops->matmul(be, &tx, &wg.t, NULL, &tg1));
    KIT_OK(be->ops->matmul(be, &tx, &wu.t, NULL, &tu1));
    KIT_OK(be->ops->silu_mul(be, &tg1, &tu1, &to1));
    assert_non_null(be->ops->matmul_silu_mul);
    KIT_OK(be->ops->matmul_silu_mul(be, &tx, &wg.t, NULL, &wu.t, NULL, &tg2, &tu2, &to2));
    kit_expect_bitwise("matmul_silu_mul", o2, o1, sizeof o1);
    assert_non_null(be->ops->matmul_multi);
    const anvil_tensor *ws[2] = {&wg.t, &wu.t}, *bs[2] = {NULL, NULL};
    anvil_tensor *os[2] = {&tg2, &tu2};
    KIT_OK(be->ops->matmul_multi(be, &tx, 2, ws, bs, os));
    kit_expect_bitwise("matmul_multi 0", g2, g1, sizeof g1);
    kit_expect_bitwise("matmul_multi 1", u2, u1, sizeof u1);
    anvil_backend_free(be);
    qweight_free(&wg);
    qweight_free(&wu);
}

/* A fused group of int-path weights of one dtype (q, k, v; gate, up) runs
 * as one job (cpu_fused.c): each output as its matmul alone, to the bit,
 * for decode's tokens (each thread prepares its own activations) and
 * more (one shared preparation; the split over tokens past 8), a group
 * of more rows than a thread's chunk and tails that are not whole tiles,
 * on 1 to 3 threads. */
static void test_quant_multi_group(void **state)
{
    (void)state;
    enum { KQ = 128, NW = 3 };
    const int64_t Ns[NW] = {1031, 12, 9}, Ts[] = {1, 2, 5, 13};
    const anvil_dtype dts[] = {ANVIL_DTYPE_U4, ANVIL_DTYPE_I8};
    uint64_t rng = 11;
    for (int di = 0; di < 2; di++) {
        qweight w[NW];
        for (int i = 0; i < NW; i++) {
            q_case c = {1, KQ, Ns[i], dts[di], di == 0 ? 64 : 0, di == 0 && i != 1, 0, ANVIL_QUANT_ACT_NONE, 0, 0};
            qweight_init(&w[i], &c, &rng);
        }
        float bias[9]; /* the third weight's */
        kit_fill_f32(bias, Ns[2], &rng);
        const anvil_tensor tb = anvil_tensor_1d(ANVIL_DTYPE_F32, Ns[2], bias);
        for (int nth = 1; nth <= 3; nth++) {
            anvil_backend *be = NULL;
            KIT_OK(anvil_backend_cpu_create(nth, &be));
            for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
                const int64_t T = Ts[ti];
                float *x = malloc((size_t)(T * KQ) * sizeof(float));
                float *one[NW], *grp[NW];
                anvil_tensor to1[NW], to2[NW], *outs[NW];
                const anvil_tensor *ws[NW], *bs[NW];
                assert_non_null(x);
                kit_fill_f32(x, T * KQ, &rng);
                anvil_tensor tx = anvil_tensor_2d(ANVIL_DTYPE_F32, T, KQ, x);
                for (int i = 0; i < NW; i++) {
                    one[i] = calloc((size_t)(T * Ns[i]), sizeof(float));
                    grp[i] = calloc((size_t)(T * Ns[i]), sizeof(float));
                    assert_true(one[i] != NULL && grp[i] != NULL);
                    to1[i] = anvil_tensor_2d(ANVIL_DTYPE_F32, T, Ns[i], one[i]);
                    to2[i] = anvil_tensor_2d(ANVIL_DTYPE_F32, T, Ns[i], grp[i]);
                    outs[i] = &to2[i];
                    ws[i] = &w[i].t;
                    bs[i] = i == 2 ? &tb : NULL;
                    KIT_OK(be->ops->matmul(be, &tx, ws[i], bs[i], &to1[i]));
                }
                KIT_OK(be->ops->matmul_multi(be, &tx, NW, ws, bs, outs));
                for (int i = 0; i < NW; i++)
                    kit_expect_bitwise("matmul_multi group", grp[i], one[i], (size_t)(T * Ns[i]) * sizeof(float));
                /* gate, up: the second and third, and silu_mul */
                float *o1 = malloc((size_t)(T * Ns[1]) * sizeof(float)), *o2 = malloc((size_t)(T * Ns[1]) * sizeof(float));
                assert_true(o1 != NULL && o2 != NULL);
                if (Ns[1] == Ns[2]) {
                    anvil_tensor t1 = anvil_tensor_2d(ANVIL_DTYPE_F32, T, Ns[1], o1);
                    anvil_tensor t2 = anvil_tensor_2d(ANVIL_DTYPE_F32, T, Ns[1], o2);
                    KIT_OK(be->ops->silu_mul(be, &to1[1], &to1[2], &t1));
                    KIT_OK(be->ops->matmul_silu_mul(be, &tx, ws[1], bs[1], ws[2], bs[2], &to2[1], &to2[2], &t2));
                    kit_expect_bitwise("matmul_silu_mul group", o2, o1, (size_t)(T * Ns[1]) * sizeof(float));
                }
                free(o1);
                free(o2);
                for (int i = 0; i < NW; i++) {
                    free(one[i]);
                    free(grp[i]);
                }
                free(x);
            }
            anvil_backend_free(be);
        }
        for (int i = 0; i < NW; i++)
            qweight_free(&w[i]);
    }
}

/* The AVX-512 preparation of the int path's activations gives the scalar
 * one's bytes: random rows, and blocks of zeros, NaN, infinities,
 * subnormals, values at rint's ties, one huge value, for u4 (even columns
 * first) and i8 weights, an odd number of blocks. */
static void test_quant_prep_avx512(void **state)
{
    (void)state;
#if defined(__x86_64__)
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw"))
        return;
    enum { K = 7 * ANVIL_CPU_QB };
    uint64_t rng = 3;
    float x[K];
    for (int round = 0; round < 40; round++) {
        kit_fill_f32(x, K, &rng);
        for (int k = 0; k < K; k++)
            x[k] *= (float)(1 + round % 7) * (round % 2 ? 1e-3f : 10.0f);
        /* block 1 zeros, block 2 a NaN and an infinity, block 3 subnormals,
         * block 4 ties (127 / 127 * (m + 0.5)), block 5 one huge value */
        for (int p = 0; p < ANVIL_CPU_QB; p++) {
            x[ANVIL_CPU_QB + p] = round % 3 ? 0.0f : -0.0f;
            x[3 * ANVIL_CPU_QB + p] = (float)(p - 16) * 1e-40f;
            x[4 * ANVIL_CPU_QB + p] = p == 0 ? 127.0f : (float)(p - 16) + 0.5f;
            x[5 * ANVIL_CPU_QB + p] = p == round % ANVIL_CPU_QB ? 3e38f : x[5 * ANVIL_CPU_QB + p];
        }
        x[2 * ANVIL_CPU_QB + round % ANVIL_CPU_QB] = NAN;
        if (round % 4 == 1)
            x[2 * ANVIL_CPU_QB + (round + 5) % ANVIL_CPU_QB] = round % 8 == 1 ? INFINITY : -INFINITY;
        for (int di = 0; di < 2; di++) {
            anvil_quant q = {.group = 0};
            anvil_cpu_qw qw = {.dt = di ? ANVIL_DTYPE_I8 : ANVIL_DTYPE_U4, .q = &q, .K = K, .N = 1, .gs = K, .G = 1};
            unsigned char want[7 * (ANVIL_CPU_QB + 64)], got[7 * (ANVIL_CPU_QB + 64)];
            assert_int_equal(sizeof want, anvil_cpu_q8_bytes(K));
            memset(want, 0xA5, sizeof want);
            memset(got, 0x5A, sizeof got);
            anvil_cpu_quant_prep_q8(&qw, x, anvil_cpu_q8_at(want, 1, K, 0));
            anvil_cpu_quant_prep_q8_avx512(&qw, x, anvil_cpu_q8_at(got, 1, K, 0));
            kit_expect_bitwise("prep_q8 avx512", got, want, sizeof want);
        }
    }
#endif
}

/* The definition on values worked out by hand (docs/quantization.md). */
static void test_quant_values(void **state)
{
    (void)state;
    kit_backends kb = kit_backends_new(1);
    float out[1], want[1];
    anvil_tensor to = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, 1, out), tw_ = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, 1, want);
    /* u4 [1, 2, 15, 0] (low nibble first), groups of 2, zeros 8 and 3,
     * scales 0.5 and 0.25: W = [-3.5, -3, 3, -0.75] */
    uint8_t u4[2] = {0x21, 0x0F}, zeros[2] = {8, 3};
    float sc[2] = {0.5f, 0.25f}, x[4] = {1, 2, 3, 4};
    int32_t perm[4] = {3, 2, 1, 0};
    anvil_quant q = {.group = 2, .scales = sc, .zeros = zeros};
    anvil_tensor tw = anvil_tensor_2d(ANVIL_DTYPE_U4, 1, 4, u4);
    tw.quant = &q;
    anvil_tensor tx = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, 4, x);
    struct {
        const int32_t *perm;
        const uint8_t *zeros;
        float want;
    } cases[] = {
        {NULL, zeros, -3.5f - 6.0f + 9.0f - 3.0f},
        {perm, zeros, -14.0f - 9.0f + 6.0f - 0.75f},
        {NULL, NULL, (1 - 8) * 0.5f + (2 - 8) * 0.5f * 2 + (15 - 8) * 0.25f * 3 + (0 - 8) * 0.25f * 4},
    };
    for (int i = 0; i < 3; i++) {
        q.perm = cases[i].perm;
        q.zeros = cases[i].zeros;
        KIT_OK(anvil_cpu_ref_matmul(&tx, &tw, NULL, &tw_));
        assert_float_equal(want[0], cases[i].want, 1e-6);
        for (int b = 0; b < kb.n; b++) {
            KIT_OK(kb.be[b]->ops->matmul(kb.be[b], &tx, &tw, NULL, &to));
            assert_float_equal(out[0], cases[i].want, 1e-6);
        }
    }
    /* i8 [-128, 127] per channel, scale 0.5 */
    int8_t i8[2] = {-128, 127};
    float s1 = 0.5f, x2[2] = {1, 2};
    anvil_quant qi = {.scales = &s1};
    anvil_tensor ti = anvil_tensor_2d(ANVIL_DTYPE_I8, 1, 2, i8);
    ti.quant = &qi;
    anvil_tensor tx2 = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, 2, x2);
    KIT_OK(kb.be[kb.n - 1]->ops->matmul(kb.be[kb.n - 1], &tx2, &ti, NULL, &to));
    assert_float_equal(out[0], -64.0f + 127.0f, 1e-6);
    /* fp8 weights 1.0 (0x38) and 2.0 (0x40), scale 1; dynamic fp8
     * activations: x = [1, 0.3], sx = 1/448, 0.3 * 448 = 134.4 rounds to
     * 128 (fp8 steps of 16 there), so x' = [1, 128/448] */
    uint8_t f8[2] = {0x38, 0x40};
    float s8 = 1.0f, x3[2] = {1.0f, 0.3f};
    anvil_quant q8 = {.scales = &s8, .act = ANVIL_QUANT_ACT_FP8_DYNAMIC};
    anvil_tensor t8 = anvil_tensor_2d(ANVIL_DTYPE_F8_E4M3, 1, 2, f8);
    t8.quant = &q8;
    anvil_tensor tx3 = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, 2, x3);
    KIT_OK(kb.be[kb.n - 1]->ops->matmul(kb.be[kb.n - 1], &tx3, &t8, NULL, &to));
    assert_float_equal(out[0], 1.0f + 2.0f * 128.0f / 448.0f, 1e-6);
    q8.act = ANVIL_QUANT_ACT_NONE; /* weight-only: x as it is */
    KIT_OK(kb.be[kb.n - 1]->ops->matmul(kb.be[kb.n - 1], &tx3, &t8, NULL, &to));
    assert_float_equal(out[0], 1.0f + 2.0f * 0.3f, 1e-6);
    /* The int path (K a multiple of 32): x is rounded to int8 per block of
     * 32, q = rint(x / d), d = max|x| / 127. A block whose largest value
     * is 127 has d = 1: its integers stay, and 0.3 rounds to 0. u4 v_k =
     * k % 16, zero point 8, scale 0.5. */
    uint8_t w32[16];
    float x32[32], s32 = 0.5f;
    for (int i = 0; i < 16; i++)
        w32[i] = (uint8_t)(((2 * i + 1) % 16) << 4 | (2 * i) % 16);
    double want32 = 0.0;
    for (int k = 0; k < 32; k++) {
        x32[k] = k == 0 ? 127.0f : k == 5 ? 0.3f : (float)(k - 16);
        want32 += (k == 5 ? 0.0 : (double)x32[k]) * (double)(k % 16 - 8) * 0.5;
    }
    anvil_quant q32 = {.scales = &s32};
    anvil_tensor t32 = anvil_tensor_2d(ANVIL_DTYPE_U4, 1, 32, w32);
    t32.quant = &q32;
    anvil_tensor tx32 = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, 32, x32);
    KIT_OK(anvil_cpu_ref_matmul(&tx32, &t32, NULL, &tw_));
    assert_float_equal(want[0], want32, 1e-4);
    for (int b = 0; b < kb.n; b++) {
        KIT_OK(kb.be[b]->ops->matmul(kb.be[b], &tx32, &t32, NULL, &to));
        assert_float_equal(out[0], want32, 1e-4);
    }
    kit_backends_free(&kb);
}

/* The kernels' fp8 conversion equals core's on all 256 values. */
static void test_quant_fp8_exhaustive(void **state)
{
    (void)state;
    for (int q = 0; q < 256; q++) {
        const float a = anvil_cpu_fp8_to_f32((uint8_t)q), b = anvil_fp8_e4m3_to_f32((uint8_t)q);
        if (isnan(b))
            assert_true(isnan(a));
        else if (memcmp(&a, &b, sizeof a) != 0)
            fail_msg("fp8 0x%02x: %.9g, core says %.9g", q, a, b);
    }
}

static void test_quant_errors(void **state)
{
    (void)state;
    anvil_backend *be = NULL;
    KIT_OK(anvil_backend_cpu_create(2, &be));
    float x[2 * 64] = {0}, out[2 * 4], scales[4 * 2] = {1, 1, 1, 1, 1, 1, 1, 1}, fw[4 * 64] = {0};
    uint8_t w[4 * 64] = {0}, zeros[8] = {0};
    int32_t perm[64];
    for (int k = 0; k < 64; k++)
        perm[k] = k;
    anvil_tensor tx = anvil_tensor_2d(ANVIL_DTYPE_F32, 2, 64, x), to = anvil_tensor_2d(ANVIL_DTYPE_F32, 2, 4, out);
    anvil_quant q = {.group = 32, .scales = scales};
    anvil_tensor tw = anvil_tensor_2d(ANVIL_DTYPE_U4, 4, 64, w);
    /* u4 without its quantization */
    assert_status_msg(be->ops->matmul(be, &tx, &tw, NULL, &to), ANVIL_ERR_INVALID_ARG, "without");
    assert_status_msg(anvil_cpu_ref_matmul(&tx, &tw, NULL, &to), ANVIL_ERR_INVALID_ARG, "without");
    tw.quant = &q;
    KIT_OK(be->ops->matmul(be, &tx, &tw, NULL, &to));
    /* quantization on a float weight */
    anvil_tensor tf = anvil_tensor_2d(ANVIL_DTYPE_F32, 4, 64, fw);
    tf.quant = &q;
    assert_status_msg(be->ops->matmul(be, &tx, &tf, NULL, &to), ANVIL_ERR_INVALID_ARG, "f32 weight");
    /* a group that does not divide K */
    q.group = 24;
    assert_status_msg(be->ops->matmul(be, &tx, &tw, NULL, &to), ANVIL_ERR_INVALID_ARG, "group 24");
    q.group = -1;
    assert_status_msg(be->ops->matmul(be, &tx, &tw, NULL, &to), ANVIL_ERR_INVALID_ARG, "group");
    q.group = 32;
    /* no scales */
    q.scales = NULL;
    assert_status_msg(be->ops->matmul(be, &tx, &tw, NULL, &to), ANVIL_ERR_INVALID_ARG, "scales");
    q.scales = scales;
    /* zero points or fp8 activations where they do not belong */
    anvil_tensor ti8 = anvil_tensor_2d(ANVIL_DTYPE_I8, 4, 64, w);
    ti8.quant = &q;
    KIT_OK(be->ops->matmul(be, &tx, &ti8, NULL, &to));
    q.zeros = zeros;
    assert_status_msg(be->ops->matmul(be, &tx, &ti8, NULL, &to), ANVIL_ERR_INVALID_ARG, "zero points");
    q.zeros = NULL;
    q.act = ANVIL_QUANT_ACT_FP8_DYNAMIC;
    assert_status_msg(be->ops->matmul(be, &tx, &ti8, NULL, &to), ANVIL_ERR_INVALID_ARG, "fp8 activations");
    anvil_tensor tf8 = anvil_tensor_2d(ANVIL_DTYPE_F8_E4M3, 4, 64, w);
    tf8.quant = &q;
    KIT_OK(be->ops->matmul(be, &tx, &tf8, NULL, &to));
    q.act = ANVIL_QUANT_ACT_FP8_STATIC;
    q.input_scale = 0.0f;
    assert_status_msg(be->ops->matmul(be, &tx, &tf8, NULL, &to), ANVIL_ERR_INVALID_ARG, "input scale");
    q.input_scale = NAN;
    assert_status_msg(be->ops->matmul(be, &tx, &tf8, NULL, &to), ANVIL_ERR_INVALID_ARG, "input scale");
    q.act = ANVIL_QUANT_ACT_NONE;
    /* a perm entry outside [0, K) */
    perm[5] = 64;
    q.perm = perm;
    assert_status_msg(be->ops->matmul(be, &tx, &tw, NULL, &to), ANVIL_ERR_INVALID_ARG, "perm");
    perm[5] = -1;
    assert_status_msg(be->ops->matmul(be, &tx, &tw, NULL, &to), ANVIL_ERR_INVALID_ARG, "perm");
    perm[5] = 5;
    KIT_OK(be->ops->matmul(be, &tx, &tw, NULL, &to));
    anvil_backend_free(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quant_vs_reference),
        cmocka_unit_test(test_quant_invariance),
        cmocka_unit_test(test_quant_fused),
        cmocka_unit_test(test_quant_multi_group),
        cmocka_unit_test(test_quant_prep_avx512),
        cmocka_unit_test(test_quant_values),
        cmocka_unit_test(test_quant_fp8_exhaustive),
        cmocka_unit_test(test_quant_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
