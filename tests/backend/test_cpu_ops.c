/*
 * The CPU backend's light ops (embedding, rmsnorm, head_rmsnorm, rope,
 * silu_mul, add, gather_rows, and Gemma's gelu_tanh_mul, scale, softcap and
 * rmsnorm weight offset) against the scalar reference on
 * table-driven shapes and dtypes with guard bytes; the reference itself on
 * values checked by hand; memory ops; and the error paths.
 */
#include "cpu_testkit.h"

/* Tolerances (ATOL + RTOL * |want|) per op. The norms sum squares in a
 * different order than the reference (fp32 16 lanes vs double); rope,
 * silu_mul, add, embedding and gather compute each element exactly as the
 * reference does, so they must match bit for bit. */
#define NORM_ATOL 1e-6f
#define NORM_RTOL 2e-6f

static const int64_t widths[] = {1, 3, 8, 16, 17, 64, 100, 129, 896, 2048};
static const int64_t row_counts[] = {1, 2, 7, 33, 70};
static const anvil_dtype wdts[] = {ANVIL_DTYPE_F32, ANVIL_DTYPE_BF16, ANVIL_DTYPE_F16};

static void test_rmsnorm(void **state)
{
    (void)state;
    uint64_t rng = 11;
    kit_backends kb = kit_backends_new(2);
    for (size_t wi = 0; wi < sizeof widths / sizeof widths[0]; wi++)
        for (size_t ri = 0; ri < sizeof row_counts / sizeof row_counts[0]; ri++) {
            int64_t D = widths[wi], T = row_counts[ri];
            anvil_dtype wdt = wdts[(wi + ri) % 3];
            /* every other shape with Gemma's (1 + w) */
            const float off = (wi + ri) % 2 ? 1.0f : 0.0f;
            char name[128];
            snprintf(name, sizeof name, "rmsnorm T=%lld D=%lld w=%s w_offset=%g", (long long)T, (long long)D,
                     kit_dt(wdt), (double)off);
            gbuf x = gbuf_new((size_t)(T * D) * 4, 0), w = gbuf_new((size_t)D * anvil_dtype_size(wdt), 2);
            kit_fill_f32(x.data, T * D, &rng);
            kit_fill_dtype(w.data, wdt, D, &rng);
            gbuf want = gbuf_new((size_t)(T * D) * 4, 0);
            anvil_tensor tx = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, x.data), tw = anvil_tensor_1d(wdt, D, w.data);
            anvil_tensor twant = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, want.data);
            KIT_OK(anvil_cpu_ref_rmsnorm(&tx, &tw, 1e-5f, off, &twant));
            for (int i = 0; i < kb.n; i++) {
                gbuf got = gbuf_new((size_t)(T * D) * 4, 0);
                anvil_tensor tgot = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, got.data);
                KIT_OK(kb.be[i]->ops->rmsnorm(kb.be[i], &tx, &tw, 1e-5f, off, &tgot));
                gbuf_check(&got, name);
                kit_expect_close(name, got.data, want.data, NULL, T * D, NORM_ATOL, NORM_RTOL);
                /* in place gives the same bits */
                gbuf inplace = gbuf_new((size_t)(T * D) * 4, 0);
                memcpy(inplace.data, x.data, (size_t)(T * D) * 4);
                anvil_tensor tin = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, inplace.data);
                KIT_OK(kb.be[i]->ops->rmsnorm(kb.be[i], &tin, &tw, 1e-5f, off, &tin));
                kit_expect_bitwise(name, inplace.data, got.data, got.bytes);
                gbuf_free(&inplace);
                gbuf_free(&got);
            }
            gbuf_free(&want);
            gbuf_free(&x);
            gbuf_free(&w);
        }
    kit_backends_free(&kb);
}

static void test_head_rmsnorm(void **state)
{
    (void)state;
    uint64_t rng = 12;
    kit_backends kb = kit_backends_new(2);
    static const int32_t head_dims[] = {8, 16, 32, 64, 128};
    static const int32_t n_heads[] = {1, 3, 8};
    for (size_t hi = 0; hi < 5; hi++)
        for (size_t ni = 0; ni < 3; ni++)
            for (size_t ri = 0; ri < sizeof row_counts / sizeof row_counts[0]; ri++) {
                int64_t hd = head_dims[hi], D = hd * n_heads[ni], T = row_counts[ri];
                anvil_dtype wdt = wdts[(hi + ri) % 3];
                char name[128];
                snprintf(name, sizeof name, "head_rmsnorm T=%lld hd=%lld heads=%d w=%s", (long long)T,
                         (long long)hd, n_heads[ni], kit_dt(wdt));
                gbuf x = gbuf_new((size_t)(T * D) * 4, 0), w = gbuf_new((size_t)hd * anvil_dtype_size(wdt), 2);
                kit_fill_f32(x.data, T * D, &rng);
                kit_fill_dtype(w.data, wdt, hd, &rng);
                gbuf want = gbuf_new((size_t)(T * D) * 4, 0);
                anvil_tensor tx = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, x.data);
                anvil_tensor tw = anvil_tensor_1d(wdt, hd, w.data);
                anvil_tensor twant = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, want.data);
                KIT_OK(anvil_cpu_ref_head_rmsnorm(&tx, &tw, (int32_t)hd, 1e-6f, &twant));
                /* each head normalized on its own: the reference agrees with a
                 * row-wise norm of one head's slice */
                anvil_tensor slice_x = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, hd, (float *)x.data + D - hd);
                float *slice_o = malloc((size_t)hd * 4);
                anvil_tensor slice_t = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, hd, slice_o);
                KIT_OK(anvil_cpu_ref_rmsnorm(&slice_x, &tw, 1e-6f, 0.0f, &slice_t));
                kit_expect_bitwise(name, slice_o, (float *)want.data + D - hd, (size_t)hd * 4);
                free(slice_o);
                for (int i = 0; i < kb.n; i++) {
                    gbuf got = gbuf_new((size_t)(T * D) * 4, 0);
                    anvil_tensor tgot = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, got.data);
                    KIT_OK(kb.be[i]->ops->head_rmsnorm(kb.be[i], &tx, &tw, (int32_t)hd, 1e-6f, &tgot));
                    gbuf_check(&got, name);
                    kit_expect_close(name, got.data, want.data, NULL, T * D, NORM_ATOL, NORM_RTOL);
                    gbuf_free(&got);
                }
                gbuf_free(&want);
                gbuf_free(&x);
                gbuf_free(&w);
            }
    kit_backends_free(&kb);
}

static void test_rmsnorm_reference_by_hand(void **state)
{
    (void)state;
    float x[4] = {1, 2, 3, 4}, w[4] = {1, 0.5f, 2, -1}, out[4];
    anvil_tensor tx = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, 4, x), tw = anvil_tensor_1d(ANVIL_DTYPE_F32, 4, w);
    anvil_tensor to = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, 4, out);
    KIT_OK(anvil_cpu_ref_rmsnorm(&tx, &tw, 0.0f, 0.0f, &to));
    float inv = 1.0f / sqrtf(7.5f); /* mean(1, 4, 9, 16) = 7.5 */
    assert_float_equal(out[0], 1 * inv * 1, 1e-7);
    assert_float_equal(out[1], 2 * inv * 0.5f, 1e-7);
    assert_float_equal(out[2], 3 * inv * 2, 1e-7);
    assert_float_equal(out[3], 4 * inv * -1, 1e-7);
}

/* A step that only carries token ids / positions / logit rows. */
static anvil_step tokens_step(int32_t T, const int32_t *ids, const int32_t *pos)
{
    anvil_step st = {.n_tokens = T, .token_ids = ids, .positions = pos};
    return st;
}

static void test_rope(void **state)
{
    (void)state;
    uint64_t rng = 13;
    kit_backends kb = kit_backends_new(2);
    static const int32_t head_dims[] = {8, 16, 32, 64, 128, 2, 6};
    static const int32_t n_heads[] = {1, 2, 7, 32};
    for (size_t hi = 0; hi < sizeof head_dims / sizeof head_dims[0]; hi++)
        for (size_t ni = 0; ni < 4; ni++) {
            int32_t hd = head_dims[hi], T = (int32_t)row_counts[(hi + ni) % 5];
            int64_t D = (int64_t)hd * n_heads[ni];
            char name[128];
            snprintf(name, sizeof name, "rope T=%d hd=%d heads=%d", T, hd, n_heads[ni]);
            float *inv_freq = malloc((size_t)hd / 2 * 4);
            for (int32_t i = 0; i < hd / 2; i++)
                inv_freq[i] = powf(10000.0f, -2.0f * (float)i / (float)hd);
            int32_t *pos = malloc((size_t)T * 4);
            for (int32_t t = 0; t < T; t++) /* scattered positions, some large */
                pos[t] = (int32_t)(anvil_test_rand(&rng) % 40000);
            anvil_step st = tokens_step(T, NULL, pos);
            gbuf want = gbuf_new((size_t)(T * D) * 4, 0);
            kit_fill_f32(want.data, T * D, &rng);
            gbuf orig = gbuf_new((size_t)(T * D) * 4, 0);
            memcpy(orig.data, want.data, want.bytes);
            anvil_tensor tw = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, want.data);
            const anvil_rope_freqs f = {.inv_freq = inv_freq};
            KIT_OK(anvil_cpu_ref_rope(&tw, &st, hd, &f));
            for (int i = 0; i < kb.n; i++) {
                gbuf got = gbuf_new((size_t)(T * D) * 4, 0);
                memcpy(got.data, orig.data, orig.bytes);
                anvil_tensor tg = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, got.data);
                KIT_OK(kb.be[i]->ops->rope(kb.be[i], &tg, &st, hd, &f));
                gbuf_check(&got, name);
                kit_expect_bitwise(name, got.data, want.data, got.bytes);
                gbuf_free(&got);
            }
            gbuf_free(&orig);
            gbuf_free(&want);
            free(pos);
            free(inv_freq);
        }
    kit_backends_free(&kb);
}

/* Rotate-half by hand: head_dim 4, pairs (x0, x2) and (x1, x3). */
static void test_rope_reference_by_hand(void **state)
{
    (void)state;
    float x[4] = {1, 2, 3, 4}, inv_freq[2] = {1.0f, 0.5f};
    int32_t pos[1] = {3};
    anvil_step st = tokens_step(1, NULL, pos);
    anvil_tensor tx = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, 4, x);
    const anvil_rope_freqs f = {.inv_freq = inv_freq};
    KIT_OK(anvil_cpu_ref_rope(&tx, &st, 4, &f));
    float c0 = cosf(3.0f), s0 = sinf(3.0f), c1 = cosf(1.5f), s1 = sinf(1.5f);
    assert_float_equal(x[0], 1 * c0 - 3 * s0, 1e-6);
    assert_float_equal(x[2], 3 * c0 + 1 * s0, 1e-6);
    assert_float_equal(x[1], 2 * c1 - 4 * s1, 1e-6);
    assert_float_equal(x[3], 4 * c1 + 2 * s1, 1e-6);
}

static void test_elementwise(void **state)
{
    (void)state;
    uint64_t rng = 14;
    kit_backends kb = kit_backends_new(2);
    static const int64_t shapes[][2] = {{1, 1}, {1, 17}, {3, 100}, {7, 2048}, {33, 8192}, {70, 129}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int64_t T = shapes[si][0], D = shapes[si][1], n = T * D;
        char name[128];
        gbuf a = gbuf_new((size_t)n * 4, 0), b = gbuf_new((size_t)n * 4, 0);
        kit_fill_f32(a.data, n, &rng);
        kit_fill_f32(b.data, n, &rng);
        ((float *)a.data)[0] = 30.0f; /* silu far from 0 both ways */
        if (n > 1)
            ((float *)a.data)[1] = -30.0f;
        anvil_tensor ta = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, a.data), tb = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, b.data);
        gbuf want_s = gbuf_new((size_t)n * 4, 0), want_a = gbuf_new((size_t)n * 4, 0);
        anvil_tensor tws = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, want_s.data);
        anvil_tensor twa = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, want_a.data);
        KIT_OK(anvil_cpu_ref_silu_mul(&ta, &tb, &tws));
        KIT_OK(anvil_cpu_ref_add(&ta, &tb, &twa));
        for (int i = 0; i < kb.n; i++) {
            gbuf got = gbuf_new((size_t)n * 4, 0);
            anvil_tensor tg = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, got.data);
            snprintf(name, sizeof name, "silu_mul [%lld, %lld]", (long long)T, (long long)D);
            KIT_OK(kb.be[i]->ops->silu_mul(kb.be[i], &ta, &tb, &tg));
            gbuf_check(&got, name);
            kit_expect_bitwise(name, got.data, want_s.data, got.bytes);
            snprintf(name, sizeof name, "add [%lld, %lld]", (long long)T, (long long)D);
            KIT_OK(kb.be[i]->ops->add(kb.be[i], &ta, &tb, &tg));
            gbuf_check(&got, name);
            kit_expect_bitwise(name, got.data, want_a.data, got.bytes);
            /* out aliasing a */
            memcpy(got.data, a.data, a.bytes);
            KIT_OK(kb.be[i]->ops->add(kb.be[i], &tg, &tb, &tg));
            kit_expect_bitwise(name, got.data, want_a.data, got.bytes);
            gbuf_free(&got);
        }
        /* by hand: silu(30) * u ~ 30 u, silu(-30) * u ~ 0 */
        assert_float_equal(((float *)want_s.data)[0], 30.0f * ((float *)b.data)[0], 1e-4);
        if (n > 1)
            assert_float_equal(((float *)want_s.data)[1], 0.0f, 1e-9);
        assert_float_equal(((float *)want_a.data)[0], 30.0f + ((float *)b.data)[0], 0);
        gbuf_free(&want_s);
        gbuf_free(&want_a);
        gbuf_free(&a);
        gbuf_free(&b);
    }
    kit_backends_free(&kb);
}

/* Gemma's elementwise ops against the reference, to the bit (the same
 * expression per element), out aliasing the input, and values by hand. */
static void test_gemma_elementwise(void **state)
{
    (void)state;
    uint64_t rng = 15;
    kit_backends kb = kit_backends_new(2);
    static const int64_t shapes[][2] = {{1, 1}, {1, 17}, {3, 100}, {7, 2048}, {33, 8192}, {70, 129}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int64_t T = shapes[si][0], D = shapes[si][1], n = T * D;
        char name[128];
        gbuf a = gbuf_new((size_t)n * 4, 0), b = gbuf_new((size_t)n * 4, 0);
        kit_fill_f32(a.data, n, &rng);
        kit_fill_f32(b.data, n, &rng);
        float *av = a.data;
        for (int64_t i = 0; i < n; i++)
            av[i] *= 8.0f; /* past the caps and GELU's bend */
        av[0] = 30.0f;
        if (n > 1)
            av[1] = -30.0f;
        anvil_tensor ta = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, a.data), tb = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, b.data);
        gbuf want_g = gbuf_new((size_t)n * 4, 0), want_s = gbuf_new((size_t)n * 4, 0), want_c = gbuf_new((size_t)n * 4, 0);
        anvil_tensor twg = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, want_g.data);
        anvil_tensor tws = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, want_s.data);
        anvil_tensor twc = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, want_c.data);
        KIT_OK(anvil_cpu_ref_gelu_tanh_mul(&ta, &tb, &twg));
        KIT_OK(anvil_cpu_ref_scale(&ta, 6.5f, &tws));
        KIT_OK(anvil_cpu_ref_softcap(&ta, 5.0f, &twc));
        for (int i = 0; i < kb.n; i++) {
            gbuf got = gbuf_new((size_t)n * 4, 0);
            anvil_tensor tg = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, got.data);
            snprintf(name, sizeof name, "gelu_tanh_mul [%lld, %lld]", (long long)T, (long long)D);
            KIT_OK(kb.be[i]->ops->gelu_tanh_mul(kb.be[i], &ta, &tb, &tg));
            gbuf_check(&got, name);
            kit_expect_bitwise(name, got.data, want_g.data, got.bytes);
            snprintf(name, sizeof name, "scale [%lld, %lld]", (long long)T, (long long)D);
            KIT_OK(kb.be[i]->ops->scale(kb.be[i], &ta, 6.5f, &tg));
            gbuf_check(&got, name);
            kit_expect_bitwise(name, got.data, want_s.data, got.bytes);
            memcpy(got.data, a.data, a.bytes); /* in place */
            KIT_OK(kb.be[i]->ops->scale(kb.be[i], &tg, 6.5f, &tg));
            kit_expect_bitwise(name, got.data, want_s.data, got.bytes);
            snprintf(name, sizeof name, "softcap [%lld, %lld]", (long long)T, (long long)D);
            KIT_OK(kb.be[i]->ops->softcap(kb.be[i], &ta, 5.0f, &tg));
            gbuf_check(&got, name);
            kit_expect_bitwise(name, got.data, want_c.data, got.bytes);
            memcpy(got.data, a.data, a.bytes);
            KIT_OK(kb.be[i]->ops->softcap(kb.be[i], &tg, 5.0f, &tg));
            kit_expect_bitwise(name, got.data, want_c.data, got.bytes);
            gbuf_free(&got);
        }
        /* by hand: gelu(30) u = 30 u, gelu(-30) u = 0; 30 capped at 5 is
         * 5 tanh(6), -30 its negative; every capped value inside (-5, 5) */
        const float *bv = b.data, *g = want_g.data, *s = want_s.data, *c = want_c.data;
        assert_float_equal(g[0], 30.0f * bv[0], 1e-4);
        assert_float_equal(c[0], 5.0f * tanhf(6.0f), 1e-6);
        if (n > 1) {
            assert_float_equal(g[1], 0.0f, 1e-9);
            assert_float_equal(c[1], -5.0f * tanhf(6.0f), 1e-6);
        }
        for (int64_t i = 0; i < n; i++) {
            assert_true(fabsf(c[i]) <= 5.0f && fabsf(c[i]) <= fabsf(av[i]) * (1 + 1e-6f) && c[i] * av[i] >= 0);
            assert_true(s[i] == av[i] * 6.5f);
        }
        gbuf_free(&want_g);
        gbuf_free(&want_s);
        gbuf_free(&want_c);
        gbuf_free(&a);
        gbuf_free(&b);
    }
    /* gelu_tanh by hand: 0 at 0, 0.5 (1 + tanh(sqrt(2/pi) 1.044715)) at 1
     * (PyTorch: 0.841192), odd part g - gelu(g) = gelu(-g) */
    assert_float_equal(anvil_cpu_gelu_tanh(0.0f), 0.0f, 0);
    assert_float_equal(anvil_cpu_gelu_tanh(1.0f), 0.841192f, 1e-6);
    assert_float_equal(anvil_cpu_gelu_tanh(-1.0f), 0.841192f - 1.0f, 1e-6);
    kit_backends_free(&kb);
}

/* The (1 + w) norm by hand: w = 0 with offset 1 is the plain norm with w = 1. */
static void test_rmsnorm_offset_by_hand(void **state)
{
    (void)state;
    float x[4] = {1, 2, 3, 4}, w0[4] = {0, 0, 0, 0}, w1[4] = {1, 1, 1, 1}, wh[4] = {0.5f, -1, 0, 2};
    float a[4], b[4], c[4];
    anvil_tensor tx = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, 4, x), ta = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, 4, a);
    anvil_tensor tb = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, 4, b), tc = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, 4, c);
    anvil_tensor tw0 = anvil_tensor_1d(ANVIL_DTYPE_F32, 4, w0), tw1 = anvil_tensor_1d(ANVIL_DTYPE_F32, 4, w1);
    anvil_tensor twh = anvil_tensor_1d(ANVIL_DTYPE_F32, 4, wh);
    KIT_OK(anvil_cpu_ref_rmsnorm(&tx, &tw0, 1e-6f, 1.0f, &ta));
    KIT_OK(anvil_cpu_ref_rmsnorm(&tx, &tw1, 1e-6f, 0.0f, &tb));
    assert_memory_equal(a, b, sizeof a);
    KIT_OK(anvil_cpu_ref_rmsnorm(&tx, &twh, 1e-6f, 1.0f, &tc));
    const float inv = 1.0f / sqrtf(7.5f + 1e-6f); /* mean of 1, 4, 9, 16 */
    for (int i = 0; i < 4; i++)
        assert_float_equal(c[i], x[i] * inv * (1.0f + wh[i]), 1e-6);
    anvil_backend *be = NULL;
    KIT_OK(anvil_backend_cpu_create(1, &be));
    assert_status_msg(be->ops->rmsnorm(be, &tx, &tw0, 1e-6f, NAN, &ta), ANVIL_ERR_INVALID_ARG, "weight offset");
    /* the scalar ops' errors: a cap that is not positive, shapes that differ */
    assert_status_msg(be->ops->softcap(be, &tx, 0.0f, &ta), ANVIL_ERR_INVALID_ARG, "cap");
    assert_status_msg(be->ops->softcap(be, &tx, -3.0f, &ta), ANVIL_ERR_INVALID_ARG, "cap");
    assert_status_msg(anvil_cpu_ref_softcap(&tx, NAN, &ta), ANVIL_ERR_INVALID_ARG, "cap");
    anvil_tensor t22 = anvil_tensor_2d(ANVIL_DTYPE_F32, 2, 2, a);
    assert_status_msg(be->ops->scale(be, &tx, 2.0f, &t22), ANVIL_ERR_INVALID_ARG, "shape");
    assert_status_msg(be->ops->gelu_tanh_mul(be, &tx, &tx, &t22), ANVIL_ERR_INVALID_ARG, "shape");
    anvil_backend_free(be);
}

static void test_embedding_and_gather(void **state)
{
    (void)state;
    uint64_t rng = 15;
    kit_backends kb = kit_backends_new(2);
    static const int64_t shapes[][3] = {{1, 5, 3}, {7, 100, 17}, {70, 1000, 64}, {40, 50, 2048}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int d = 0; d < 3; d++) {
            int32_t T = (int32_t)shapes[si][0];
            int64_t V = shapes[si][1], D = shapes[si][2];
            anvil_dtype dt = wdts[d];
            char name[128];
            snprintf(name, sizeof name, "embedding T=%d V=%lld D=%lld %s", T, (long long)V, (long long)D, kit_dt(dt));
            gbuf table = gbuf_new((size_t)(V * D) * anvil_dtype_size(dt), 2);
            kit_fill_dtype(table.data, dt, V * D, &rng);
            int32_t *ids = malloc((size_t)T * 4), *rows = malloc((size_t)T * 4);
            for (int32_t t = 0; t < T; t++) {
                ids[t] = (int32_t)(anvil_test_rand(&rng) % (uint64_t)V);
                rows[t] = (int32_t)(anvil_test_rand(&rng) % (uint64_t)T);
            }
            ids[0] = (int32_t)V - 1;
            anvil_step st = tokens_step(T, ids, NULL);
            st.n_logits = T > 1 ? T - 1 : 1;
            st.logit_rows = rows;
            anvil_tensor ttab = anvil_tensor_2d(dt, V, D, table.data);
            gbuf want = gbuf_new((size_t)(T * D) * 4, 0);
            anvil_tensor tw = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, want.data);
            KIT_OK(anvil_cpu_ref_embedding(&ttab, &st, &tw));
            /* by hand: row 0 is the last table row */
            for (int64_t i = 0; i < D; i++)
                assert_true(((float *)want.data)[i] == anvil_cpu_load_elem(table.data, dt, (V - 1) * D + i));
            gbuf want_g = gbuf_new((size_t)(st.n_logits * D) * 4, 0);
            anvil_tensor twg = anvil_tensor_2d(ANVIL_DTYPE_F32, st.n_logits, D, want_g.data);
            KIT_OK(anvil_cpu_ref_gather_rows(&tw, &st, &twg));
            for (int i = 0; i < kb.n; i++) {
                gbuf got = gbuf_new((size_t)(T * D) * 4, 0);
                anvil_tensor tg = anvil_tensor_2d(ANVIL_DTYPE_F32, T, D, got.data);
                KIT_OK(kb.be[i]->ops->embedding(kb.be[i], &ttab, &st, &tg));
                gbuf_check(&got, name);
                kit_expect_bitwise(name, got.data, want.data, got.bytes);
                gbuf got_g = gbuf_new((size_t)(st.n_logits * D) * 4, 0);
                anvil_tensor tgg = anvil_tensor_2d(ANVIL_DTYPE_F32, st.n_logits, D, got_g.data);
                KIT_OK(kb.be[i]->ops->gather_rows(kb.be[i], &tg, &st, &tgg));
                gbuf_check(&got_g, "gather_rows");
                kit_expect_bitwise("gather_rows", got_g.data, want_g.data, got_g.bytes);
                /* a vocabulary slice (tensor parallelism): the table as
                 * ids [V/2, V/2 + V); a lower id is another rank's: zeros */
                const int64_t first = V / 2;
                KIT_OK(kb.be[i]->ops->embedding_part(kb.be[i], &ttab, first, &st, &tg));
                gbuf_check(&got, "embedding_part");
                for (int32_t t = 0; t < T; t++)
                    for (int64_t k = 0; k < D; k++) {
                        const float w = ids[t] < first ? 0.0f
                                                       : anvil_cpu_load_elem(table.data, dt, (ids[t] - first) * D + k);
                        if (((float *)got.data)[(int64_t)t * D + k] != w)
                            fail_msg("%s: embedding_part row %d (id %d, first %lld) [%lld]", name, t, ids[t],
                                     (long long)first, (long long)k);
                    }
                gbuf_free(&got_g);
                gbuf_free(&got);
            }
            gbuf_free(&want_g);
            gbuf_free(&want);
            gbuf_free(&table);
            free(ids);
            free(rows);
        }
    kit_backends_free(&kb);
}

static void test_op_errors(void **state)
{
    (void)state;
    anvil_backend *be = NULL;
    KIT_OK(anvil_backend_cpu_create(2, &be));
    float table[12] = {0}, out[8] = {0}, x[8] = {0}, w[4] = {1, 1, 1, 1};
    int32_t ids[2] = {1, 3}, rows[2] = {0, 2};
    anvil_tensor ttab = anvil_tensor_2d(ANVIL_DTYPE_F32, 3, 4, table);
    anvil_tensor to = anvil_tensor_2d(ANVIL_DTYPE_F32, 2, 4, out);
    anvil_step st = tokens_step(2, ids, NULL);

    /* a token id outside the vocabulary: a status, nothing written */
    assert_status_msg(be->ops->embedding(be, &ttab, &st, &to), ANVIL_ERR_INVALID_ARG, "token id 3");
    assert_status_msg(anvil_cpu_ref_embedding(&ttab, &st, &to), ANVIL_ERR_INVALID_ARG, "token id 3");
    ids[1] = -1;
    assert_status_msg(be->ops->embedding(be, &ttab, &st, &to), ANVIL_ERR_INVALID_ARG, "token id -1");
    ids[1] = 2;
    KIT_OK(be->ops->embedding(be, &ttab, &st, &to));
    /* rows that do not match the step */
    st.n_tokens = 1;
    assert_status_msg(be->ops->embedding(be, &ttab, &st, &to), ANVIL_ERR_INVALID_ARG, "rows");
    st.n_tokens = 2;
    anvil_tensor i32_tab = anvil_tensor_2d(ANVIL_DTYPE_I32, 3, 4, table);
    assert_status_msg(be->ops->embedding(be, &i32_tab, &st, &to), ANVIL_ERR_UNSUPPORTED, "i32");

    /* gather_rows: a row outside x */
    st.n_logits = 2;
    st.logit_rows = rows;
    anvil_tensor tx = anvil_tensor_2d(ANVIL_DTYPE_F32, 2, 4, x);
    assert_status_msg(be->ops->gather_rows(be, &tx, &st, &to), ANVIL_ERR_INVALID_ARG, "row 2");
    rows[1] = 1;
    KIT_OK(be->ops->gather_rows(be, &tx, &st, &to));

    /* norms: weight length, head_dim not dividing the row */
    anvil_tensor tw3 = anvil_tensor_1d(ANVIL_DTYPE_F32, 3, w);
    assert_status_msg(be->ops->rmsnorm(be, &tx, &tw3, 1e-5f, 0.0f, &to), ANVIL_ERR_INVALID_ARG, "weight");
    anvil_tensor tw2 = anvil_tensor_1d(ANVIL_DTYPE_F32, 3, w);
    assert_status_msg(be->ops->head_rmsnorm(be, &tx, &tw2, 3, 1e-5f, &to), ANVIL_ERR_INVALID_ARG, "multiple");

    /* rope: odd head_dim */
    int32_t pos[2] = {0, 1};
    anvil_step rs = tokens_step(2, NULL, pos);
    float inv[2] = {1, 1};
    const anvil_rope_freqs rf = {.inv_freq = inv};
    assert_status_msg(be->ops->rope(be, &tx, &rs, 3, &rf), ANVIL_ERR_INVALID_ARG, "even");

    /* elementwise: shape mismatch */
    anvil_tensor t14 = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, 4, x);
    assert_status_msg(be->ops->add(be, &tx, &t14, &to), ANVIL_ERR_INVALID_ARG, "shape");
    assert_status_msg(be->ops->silu_mul(be, &tx, &tx, &t14), ANVIL_ERR_INVALID_ARG, "shape");
    anvil_backend_free(be);
}

static void test_memory_ops(void **state)
{
    (void)state;
    anvil_backend *be = NULL;
    anvil_backend_config c;
    anvil_backend_config_default(&c); /* 0 threads: one per CPU */
    c.act_dtype = ANVIL_DTYPE_BF16;   /* a wish the CPU ignores */
    KIT_OK(anvil_backend_create("cpu", &c, &be));
    assert_string_equal(be->ops->name, "cpu");
    assert_int_equal(be->ops->act_dtype, ANVIL_DTYPE_F32);
    assert_int_equal(be->ops->weights_in_host_memory, 1);
    assert_int_equal(anvil_cpu_impl(be)->n_threads, anvil_cpu_count());
    static const size_t sizes[] = {0, 1, 63, 64, 65, 4096, 1 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        void *p = NULL;
        KIT_OK(be->ops->alloc(be, sizes[i], &p));
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % 64, 0);
        unsigned char src[256], dst[256];
        size_t n = sizes[i] < sizeof src ? sizes[i] : sizeof src;
        for (size_t k = 0; k < n; k++)
            src[k] = (unsigned char)(k * 7 + 1);
        KIT_OK(be->ops->upload(be, p, src, n));
        KIT_OK(be->ops->synchronize(be));
        memset(dst, 0, sizeof dst);
        KIT_OK(be->ops->download(be, dst, p, n));
        assert_memory_equal(dst, src, n);
        be->ops->free(be, p);
    }
    be->ops->free(be, NULL);
    void *huge = (void *)1;
    assert_status_msg(be->ops->alloc(be, SIZE_MAX - 8, &huge), ANVIL_ERR_OOM, "alloc");
    assert_null(huge);
    size_t avail = 0;
    KIT_OK(be->ops->mem_available(be, &avail));
    assert_true(avail > (size_t)16 << 20); /* this machine has far more than 16 MiB free */
    anvil_backend_free(be);
    anvil_backend_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rmsnorm_reference_by_hand),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_head_rmsnorm),
        cmocka_unit_test(test_rope_reference_by_hand),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_elementwise),
        cmocka_unit_test(test_gemma_elementwise),
        cmocka_unit_test(test_rmsnorm_offset_by_hand),
        cmocka_unit_test(test_embedding_and_gather),
        cmocka_unit_test(test_op_errors),
        cmocka_unit_test(test_memory_ops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
