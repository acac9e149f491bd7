/*
 * GPT-2's CPU ops (layernorm with a bias, gelu_tanh, pos_embedding) against
 * the scalar reference on table-driven shapes and dtypes, with guard bytes
 * after every output, out aliasing the input, values by hand, and the error
 * paths (a position past the table, a bad eps or bias).
 */
#include "cpu_testkit.h"

/* layernorm sums in another order than the reference (f32 16 lanes, two
 * passes, vs double); gelu_tanh and pos_embedding compute each element as
 * the reference does and must match it to the bit. */
#define LN_ATOL 2e-6f
#define LN_RTOL 4e-6f

static const int64_t widths[] = {1, 3, 16, 17, 64, 129, 768, 1600};
static const int64_t row_counts[] = {1, 2, 7, 33};
static const anvil_dtype wdts[] = {ANVIL_DTYPE_F32, ANVIL_DTYPE_BF16, ANVIL_DTYPE_F16};

static void test_layernorm(void **state)
{
    (void)state;
    uint64_t rng = 21;
    kit_backends kb = kit_backends_new(2);
    for (size_t wi = 0; wi < sizeof widths / sizeof widths[0]; wi++)
        for (size_t ri = 0; ri < sizeof row_counts / sizeof row_counts[0]; ri++) {
            const int64_t D = widths[wi], T = row_counts[ri], n = T * D;
            const anvil_dtype wdt = wdts[(wi + ri) % 3];
            char name[128];
            snprintf(name, sizeof name, "layernorm T=%lld D=%lld w=%s", (long long)T, (long long)D, kit_dt(wdt));
            gbuf x = gbuf_new((size_t)n * 4, 0), w = gbuf_new((size_t)D * anvil_dtype_size(wdt), 2),
                 b = gbuf_new((size_t)D * anvil_dtype_size(wdt), 2);
            kit_fill_f32(x.data, n, &rng);
            float *xv = x.data;
            for (int64_t i = 0; i < n; i++)
                xv[i] = 3.0f * xv[i] + 5.0f; /* a mean far from 0: the two-pass variance matters */
            kit_fill_dtype(w.data, wdt, D, &rng);
            kit_fill_dtype(b.data, wdt, D, &rng);
            gbuf want = gbuf_new((size_t)n * 4, 0);
            anvil_tensor tx = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, x.data), tw = anvil_tensor_1d(wdt, D, w.data),
                         tb = anvil_tensor_1d(wdt, D, b.data), twant = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, want.data);
            KIT_OK(anvil_cpu_ref_layernorm(&tx, &tw, &tb, 1e-5f, &twant));
            /* a fixed scale (outputs are about |w| x 2 + |b| <= 3): values near 0, where the
             * bias cancels the normalized x, get no tighter bound than the rest */
            float *scale = malloc((size_t)n * 4);
            assert_non_null(scale);
            for (int64_t i = 0; i < n; i++)
                scale[i] = 4.0f;
            for (int i = 0; i < kb.n; i++) {
                gbuf got = gbuf_new((size_t)n * 4, 0);
                anvil_tensor tgot = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, got.data);
                KIT_OK(kb.be[i]->ops->layernorm(kb.be[i], &tx, &tw, &tb, 1e-5f, &tgot));
                gbuf_check(&got, name);
                kit_expect_close(name, got.data, want.data, scale, n, LN_ATOL, LN_RTOL);
                gbuf inplace = gbuf_new((size_t)n * 4, 0);
                memcpy(inplace.data, x.data, (size_t)n * 4);
                anvil_tensor tin = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, inplace.data);
                KIT_OK(kb.be[i]->ops->layernorm(kb.be[i], &tin, &tw, &tb, 1e-5f, &tin));
                kit_expect_bitwise(name, inplace.data, got.data, got.bytes);
                gbuf_free(&inplace);
                gbuf_free(&got);
            }
            free(scale);
            gbuf_free(&want);
            gbuf_free(&x);
            gbuf_free(&w);
            gbuf_free(&b);
        }
    kit_backends_free(&kb);
}

/* [1, 2, 3, 4]: mean 2.5, variance 1.25; w 2, b 1: 2 (x - 2.5) / sqrt(1.25 + eps) + 1. */
static void test_layernorm_by_hand(void **state)
{
    (void)state;
    float x[4] = {1, 2, 3, 4}, w[4] = {2, 2, 2, 2}, b[4] = {1, 1, 1, 1}, want[4], got[4];
    anvil_tensor tx = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, 4, x), tw = anvil_tensor_1d(ANVIL_DTYPE_F32, 4, w),
                 tb = anvil_tensor_1d(ANVIL_DTYPE_F32, 4, b), tgot = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, 4, got);
    for (int i = 0; i < 4; i++)
        want[i] = (float)(2.0 * (x[i] - 2.5) / sqrt(1.25 + 1e-5) + 1.0);
    KIT_OK(anvil_cpu_ref_layernorm(&tx, &tw, &tb, 1e-5f, &tgot));
    for (int i = 0; i < 4; i++)
        assert_float_equal(got[i], want[i], 1e-6);
    anvil_backend *be = NULL;
    KIT_OK(anvil_backend_cpu_create(1, &be));
    memset(got, 0, sizeof got);
    KIT_OK(be->ops->layernorm(be, &tx, &tw, &tb, 1e-5f, &tgot));
    for (int i = 0; i < 4; i++)
        assert_float_equal(got[i], want[i], 1e-6);
    /* a constant row: every value the bias (the variance 0, eps keeps it finite) */
    float c[4] = {7, 7, 7, 7};
    anvil_tensor tc = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, 4, c);
    KIT_OK(be->ops->layernorm(be, &tc, &tw, &tb, 1e-5f, &tgot));
    for (int i = 0; i < 4; i++)
        assert_float_equal(got[i], 1.0f, 0.0);
    anvil_backend_free(be);
}

static void test_gelu_tanh(void **state)
{
    (void)state;
    uint64_t rng = 22;
    kit_backends kb = kit_backends_new(2);
    static const int64_t shapes[][2] = {{1, 1}, {1, 17}, {3, 100}, {7, 3072}, {33, 1024}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int64_t T = shapes[si][0], D = shapes[si][1], n = T * D;
        char name[96];
        snprintf(name, sizeof name, "gelu_tanh [%lld, %lld]", (long long)T, (long long)D);
        gbuf x = gbuf_new((size_t)n * 4, 0), want = gbuf_new((size_t)n * 4, 0);
        kit_fill_f32(x.data, n, &rng);
        float *xv = x.data;
        for (int64_t i = 0; i < n; i++)
            xv[i] *= 6.0f; /* both tails and the bend */
        xv[0] = 30.0f;
        if (n > 2) {
            xv[1] = -30.0f;
            xv[2] = 0.0f;
        }
        anvil_tensor tx = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, x.data), tw = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, want.data);
        KIT_OK(anvil_cpu_ref_gelu_tanh(&tx, &tw));
        /* it is gelu_tanh_mul with up = 1 */
        gbuf ones = gbuf_new((size_t)n * 4, 0), viamul = gbuf_new((size_t)n * 4, 0);
        for (int64_t i = 0; i < n; i++)
            ((float *)ones.data)[i] = 1.0f;
        anvil_tensor to = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, ones.data),
                     tm = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, viamul.data);
        KIT_OK(anvil_cpu_ref_gelu_tanh_mul(&tx, &to, &tm));
        kit_expect_bitwise(name, viamul.data, want.data, want.bytes);
        const float *wv = want.data;
        assert_float_equal(wv[0], 30.0f, 1e-5);
        if (n > 2) {
            assert_float_equal(wv[1], 0.0f, 1e-9);
            assert_float_equal(wv[2], 0.0f, 0.0);
        }
        for (int i = 0; i < kb.n; i++) {
            gbuf got = gbuf_new((size_t)n * 4, 0);
            anvil_tensor tg = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, got.data);
            KIT_OK(kb.be[i]->ops->gelu_tanh(kb.be[i], &tx, &tg));
            gbuf_check(&got, name);
            kit_expect_bitwise(name, got.data, want.data, got.bytes);
            memcpy(got.data, x.data, x.bytes); /* in place */
            KIT_OK(kb.be[i]->ops->gelu_tanh(kb.be[i], &tg, &tg));
            kit_expect_bitwise(name, got.data, want.data, got.bytes);
            gbuf_free(&got);
        }
        gbuf_free(&ones);
        gbuf_free(&viamul);
        gbuf_free(&x);
        gbuf_free(&want);
    }
    kit_backends_free(&kb);
}

static void test_pos_embedding(void **state)
{
    (void)state;
    uint64_t rng = 23;
    kit_backends kb = kit_backends_new(2);
    for (size_t wi = 0; wi < sizeof widths / sizeof widths[0]; wi++)
        for (size_t ri = 0; ri < sizeof row_counts / sizeof row_counts[0]; ri++) {
            const int64_t D = widths[wi], T = row_counts[ri], n = T * D, P = 40;
            const anvil_dtype tdt = wdts[(wi + ri) % 3];
            char name[128];
            snprintf(name, sizeof name, "pos_embedding T=%lld D=%lld table=%s", (long long)T, (long long)D,
                     kit_dt(tdt));
            int32_t pos[33];
            for (int64_t t = 0; t < T; t++) /* two sequences' positions, one restarting */
                pos[t] = (int32_t)(t < T / 2 ? t : P - 1 - (t - T / 2));
            gbuf x = gbuf_new((size_t)n * 4, 0), tab = gbuf_new((size_t)(P * D) * anvil_dtype_size(tdt), 2);
            kit_fill_f32(x.data, n, &rng);
            kit_fill_dtype(tab.data, tdt, P * D, &rng);
            gbuf want = gbuf_new((size_t)n * 4, 0);
            anvil_tensor tx = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, x.data), tt = anvil_tensor_2d(tdt, P, D, tab.data),
                         tw = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, want.data);
            anvil_step st = {.n_tokens = (int32_t)T, .positions = pos};
            KIT_OK(anvil_cpu_ref_pos_embedding(&tx, &tt, &st, &tw));
            /* by hand: row t is x[t] + table[pos[t]] */
            const float *xv = x.data, *wv = want.data;
            for (int64_t t = 0; t < T; t++)
                for (int64_t i = 0; i < D; i++)
                    assert_float_equal(wv[t * D + i],
                                       xv[t * D + i] + anvil_cpu_load_elem(tab.data, tdt, pos[t] * D + i), 0.0);
            for (int i = 0; i < kb.n; i++) {
                gbuf got = gbuf_new((size_t)n * 4, 0);
                anvil_tensor tg = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, got.data);
                KIT_OK(kb.be[i]->ops->pos_embedding(kb.be[i], &tx, &tt, &st, &tg));
                gbuf_check(&got, name);
                kit_expect_bitwise(name, got.data, want.data, got.bytes);
                memcpy(got.data, x.data, x.bytes);
                KIT_OK(kb.be[i]->ops->pos_embedding(kb.be[i], &tg, &tt, &st, &tg));
                kit_expect_bitwise(name, got.data, want.data, got.bytes);
                gbuf_free(&got);
            }
            gbuf_free(&x);
            gbuf_free(&tab);
            gbuf_free(&want);
        }
    kit_backends_free(&kb);
}

/* Bad calls come back as statuses naming what is wrong, and write nothing. */
static void test_gpt2_op_errors(void **state)
{
    (void)state;
    anvil_backend *be = NULL;
    KIT_OK(anvil_backend_cpu_create(1, &be));
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8}, w[4] = {1, 1, 1, 1}, b[4] = {0}, out[8], tab[12] = {0};
    const float before = -123.0f;
    for (int i = 0; i < 8; i++)
        out[i] = before;
    anvil_tensor tx = anvil_tensor_2d(ANVIL_DTYPE_F32, 2, 4, x), tw = anvil_tensor_1d(ANVIL_DTYPE_F32, 4, w),
                 tb = anvil_tensor_1d(ANVIL_DTYPE_F32, 4, b), to = anvil_tensor_2d(ANVIL_DTYPE_F32, 2, 4, out);
    anvil_tensor tb3 = anvil_tensor_1d(ANVIL_DTYPE_F32, 3, b);
    assert_status_msg(be->ops->layernorm(be, &tx, &tw, &tb, 0.0f, &to), ANVIL_ERR_INVALID_ARG, "eps");
    assert_status_msg(anvil_cpu_ref_layernorm(&tx, &tw, &tb, -1.0f, &to), ANVIL_ERR_INVALID_ARG, "eps");
    assert_status_msg(be->ops->layernorm(be, &tx, &tw, &tb3, 1e-5f, &to), ANVIL_ERR_INVALID_ARG, "bias");
    anvil_tensor tab3 = anvil_tensor_2d(ANVIL_DTYPE_F32, 3, 4, tab);
    int32_t pos[2] = {0, 3};
    anvil_step st = {.n_tokens = 2, .positions = pos};
    assert_status_msg(be->ops->pos_embedding(be, &tx, &tab3, &st, &to), ANVIL_ERR_INVALID_ARG, "position 3");
    assert_status_msg(anvil_cpu_ref_pos_embedding(&tx, &tab3, &st, &to), ANVIL_ERR_INVALID_ARG, "position 3");
    pos[1] = -1;
    assert_status_msg(be->ops->pos_embedding(be, &tx, &tab3, &st, &to), ANVIL_ERR_INVALID_ARG, "position -1");
    anvil_step st1 = {.n_tokens = 1, .positions = pos};
    assert_status_msg(be->ops->pos_embedding(be, &tx, &tab3, &st1, &to), ANVIL_ERR_INVALID_ARG, "rows");
    anvil_tensor tnarrow = anvil_tensor_2d(ANVIL_DTYPE_F32, 4, 2, tab);
    pos[1] = 1;
    assert_status_msg(be->ops->pos_embedding(be, &tx, &tnarrow, &st, &to), ANVIL_ERR_INVALID_ARG, "width");
    anvil_tensor to7 = anvil_tensor_2d(ANVIL_DTYPE_F32, 2, 3, out);
    assert_status_msg(be->ops->gelu_tanh(be, &tx, &to7), ANVIL_ERR_INVALID_ARG, "shape");
    for (int i = 0; i < 8; i++)
        assert_float_equal(out[i], before, 0.0);
    anvil_backend_free(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layernorm_by_hand), cmocka_unit_test(test_layernorm),
        cmocka_unit_test(test_gelu_tanh),         cmocka_unit_test(test_pos_embedding),
        cmocka_unit_test(test_gpt2_op_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
