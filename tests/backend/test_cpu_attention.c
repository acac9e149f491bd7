/*
 * CPU attention: every code path against the scalar reference on
 * table-driven steps (head_dim 8..128 and off multiples of 16, GQA ratios
 * 1/2/3/4/6/7/8, odd block sizes, scattered block tables, sequence lengths off
 * the block size, sliding windows smaller than the context, several packed
 * sequences mixing prefill chunks and decode tokens, f32/bf16/f16/fp8
 * caches, fp8 with scales);
 * the caches written exactly as the reference writes them; guard bytes;
 * the code paths bitwise equal; and the error paths.
 */
#include "cpu_attn_fixture.h"

/* Tolerance on out: ATOL + RTOL * |want|. out is a convex combination of
 * value rows in [-1, 1]; both sides read the same (already rounded) cache
 * values, so the error is fp32 rounding of the dot products and sums, and
 * the same for every cache dtype. */
static const struct {
    anvil_dtype dt;
    float atol, rtol;
} tolerances[] = {
    {ANVIL_DTYPE_F32, 3e-6f, 1e-5f},
    {ANVIL_DTYPE_BF16, 3e-6f, 1e-5f},
    {ANVIL_DTYPE_F16, 3e-6f, 1e-5f},
    {ANVIL_DTYPE_F8_E4M3, 3e-6f, 1e-5f},
};

static const attn_case cases[] = {
    /* hd  H   KV  bs  win  cache              scale  n  (cached, new)... */
    {8, 2, 1, 4, 0, ANVIL_DTYPE_F32, 0, 1, {{0, 5}}},
    {16, 4, 2, 16, 0, ANVIL_DTYPE_F32, 0, 3, {{10, 1}, {0, 7}, {33, 3}}},
    {32, 8, 1, 8, 5, ANVIL_DTYPE_F32, 0, 2, {{20, 1}, {3, 9}}},
    {64, 8, 8, 16, 0, ANVIL_DTYPE_F32, 0, 3, {{100, 1}, {37, 1}, {0, 40}}},
    {128, 4, 1, 32, 50, ANVIL_DTYPE_F32, 0, 2, {{200, 1}, {60, 10}}},
    {80, 6, 3, 5, 0, ANVIL_DTYPE_F32, 0, 3, {{12, 4}, {0, 1}, {7, 1}}},
    {64, 12, 2, 16, 0, ANVIL_DTYPE_BF16, 0, 2, {{50, 1}, {0, 20}}},
    {64, 8, 2, 16, 0, ANVIL_DTYPE_F16, 0, 2, {{31, 2}, {64, 1}}},
    {16, 4, 1, 4, 1, ANVIL_DTYPE_F32, 0, 1, {{9, 3}}},
    {32, 16, 2, 7, 20, ANVIL_DTYPE_BF16, 0, 4, {{70, 1}, {5, 30}, {0, 1}, {44, 6}}},
    {24, 3, 3, 3, 0, ANVIL_DTYPE_F32, 0, 1, {{0, 1}}},
    {128, 2, 1, 64, 0, ANVIL_DTYPE_F32, 1.0f, 1, {{300, 1}}},
    {16, 8, 4, 2, 3, ANVIL_DTYPE_F16, 0, 5, {{0, 2}, {1, 1}, {2, 2}, {17, 1}, {6, 4}}},
    {8, 4, 4, 1, 0, ANVIL_DTYPE_F32, 0, 2, {{5, 2}, {0, 3}}},
    {128, 32, 8, 16, 0, ANVIL_DTYPE_F32, 0, 3, {{70, 1}, {0, 23}, {129, 1}}},
    {32, 6, 2, 8, 0, ANVIL_DTYPE_F32, 0, 2, {{37, 1}, {0, 21}}},             /* group 3 */
    {48, 7, 1, 16, 40, ANVIL_DTYPE_BF16, 0, 2, {{90, 1}, {15, 18}}},         /* group 7 = 4 + 3 */
    /* fp8 caches, each run with every pair of fp8_scales */
    {64, 8, 2, 16, 0, ANVIL_DTYPE_F8_E4M3, 0, 3, {{40, 1}, {0, 19}, {129, 1}}},
    {128, 8, 1, 32, 0, ANVIL_DTYPE_F8_E4M3, 0, 2, {{200, 1}, {60, 10}}},
    {80, 6, 3, 5, 9, ANVIL_DTYPE_F8_E4M3, 0, 3, {{12, 4}, {0, 1}, {7, 1}}},
    {24, 7, 1, 7, 0, ANVIL_DTYPE_F8_E4M3, 0, 2, {{33, 1}, {5, 9}}},
};

/* (k_scale, v_scale) of the fp8 cases: none (0 means 1), 1, scaled so that
 * k / k_scale fills e4m3's range, uneven, and a k_scale so small that
 * k / k_scale saturates at 448 */
static const float fp8_scales[][2] = {{0, 0}, {1, 1}, {1.0f / 448, 1.0f / 448}, {0.25f, 2.0f}, {1.0f / 1000, 3.0f}};

static void case_name(const attn_case *c, char *buf, size_t cap)
{
    int n = snprintf(buf, cap, "attention hd=%d H=%d KV=%d bs=%d win=%d cache=%s seqs=", c->head_dim, c->n_heads,
                     c->n_kv_heads, c->block_size, c->window, kit_dt(c->cache_dt));
    for (int s = 0; s < c->n_seqs && n > 0 && (size_t)n < cap; s++)
        n += snprintf(buf + n, cap - (size_t)n, "(%d+%d)", c->seqs[s].cached, c->seqs[s].n_new);
}

static void test_attention_vs_reference(void **state)
{
    (void)state;
    uint64_t rng = 1234;
    kit_backends kb = kit_backends_new(2);
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
      const int fp8 = cases[ci].cache_dt == ANVIL_DTYPE_F8_E4M3;
      /* fp8 cases: each pair of scales; the others: without and with a
       * soft cap on the scores (Gemma 2), one that bends them (|q.k *
       * scale| reaches a few here), and fp8's last pair with it too */
      const size_t n_runs = fp8 ? sizeof fp8_scales / sizeof fp8_scales[0] + 1 : 2;
      for (size_t si = 0; si < n_runs; si++) {
        char name[300];
        case_name(&cases[ci], name, sizeof name - 80);
        attn_fixture f;
        attn_fixture_build(&f, &cases[ci], &rng);
        const size_t n_scales = sizeof fp8_scales / sizeof fp8_scales[0];
        if (fp8) {
            f.k_scale = fp8_scales[si < n_scales ? si : n_scales - 1][0];
            f.v_scale = fp8_scales[si < n_scales ? si : n_scales - 1][1];
            snprintf(name + strlen(name), 40, " scales %g %g", (double)f.k_scale, (double)f.v_scale);
        }
        if (si == n_runs - 1 && (!fp8 || si == n_scales)) {
            f.softcap = 0.75f;
            snprintf(name + strlen(name), 40, " softcap %g", (double)f.softcap);
        }
        attn_result want = attn_fixture_run(&f, NULL);
        float atol = 0, rtol = 0;
        for (size_t i = 0; i < sizeof tolerances / sizeof tolerances[0]; i++)
            if (tolerances[i].dt == f.c.cache_dt) {
                atol = tolerances[i].atol;
                rtol = tolerances[i].rtol;
            }
        /* the step wrote something: every new token's rows differ from before */
        assert_true(memcmp(want.kc.data, f.kc0, f.cache_bytes) != 0);
        attn_result first = {0};
        for (int i = 0; i < kb.n; i++) {
            char pname[340];
            snprintf(pname, sizeof pname, "%s [%s]", name, anvil_cpu_isa_name(kb.isa[i]));
            attn_result got = attn_fixture_run(&f, kb.be[i]);
            kit_expect_bitwise(pname, got.kc.data, want.kc.data, f.cache_bytes);
            kit_expect_bitwise(pname, got.vc.data, want.vc.data, f.cache_bytes);
            kit_expect_close(pname, got.out.data, want.out.data, NULL, (int64_t)(got.out.bytes / 4), atol, rtol);
            if (i == 0)
                first = got;
            else {
                kit_expect_bitwise(pname, got.out.data, first.out.data, got.out.bytes);
                attn_result_free(&got);
            }
        }
        attn_result_free(&first);
        attn_result_free(&want);
        attn_fixture_free(&f);
      }
    }
    kit_backends_free(&kb);
}

/* A half-precision KV cache (the runtime's kv_cache_dtype) against the f32
 * reference on the same keys and values: the only difference is the
 * rounding of the cached rows, so the tolerance is the dtype's: out is a
 * convex combination of values in [-1, 1] (a value's error is at most half
 * an ulp: 2^-9 for bf16, 2^-12 for f16) weighted by a softmax whose scores
 * move by about as much. The caches the step writes are the f32
 * reference's, rounded to nearest even. */
static void test_attention_half_cache_vs_f32(void **state)
{
    (void)state;
    static const struct {
        anvil_dtype dt;
        float atol;
    } half[] = {{ANVIL_DTYPE_BF16, 1.5e-2f}, {ANVIL_DTYPE_F16, 2e-3f}};
    static const attn_case hc[] = {
        {64, 32, 8, 32, 0, ANVIL_DTYPE_F32, 0, 2, {{300, 1}, {0, 40}}}, /* the Llama-3.2-1B head shape */
        {128, 8, 2, 16, 0, ANVIL_DTYPE_F32, 0, 3, {{100, 1}, {17, 9}, {0, 1}}},
        {80, 6, 3, 5, 30, ANVIL_DTYPE_F32, 0, 2, {{70, 1}, {3, 12}}},
    };
    uint64_t rng = 99;
    kit_backends kb = kit_backends_new(2);
    for (size_t ci = 0; ci < sizeof hc / sizeof hc[0]; ci++) {
        attn_fixture f;
        attn_fixture_build(&f, &hc[ci], &rng);
        attn_result want = attn_fixture_run(&f, NULL);
        const int64_t elems = (int64_t)(f.cache_bytes / 4);
        for (size_t di = 0; di < sizeof half / sizeof half[0]; di++) {
            const anvil_dtype dt = half[di].dt;
            attn_fixture h = f; /* shares f's arrays; only the caches are its own */
            h.c.cache_dt = dt;
            h.cache_bytes = (size_t)elems * 2;
            h.kc0 = fix_calloc(h.cache_bytes, 1);
            h.vc0 = fix_calloc(h.cache_bytes, 1);
            anvil_convert_from_f32(dt, f.kc0, h.kc0, elems);
            anvil_convert_from_f32(dt, f.vc0, h.vc0, elems);
            uint16_t *kc_want = fix_calloc(h.cache_bytes, 1), *vc_want = fix_calloc(h.cache_bytes, 1);
            anvil_convert_from_f32(dt, want.kc.data, kc_want, elems);
            anvil_convert_from_f32(dt, want.vc.data, vc_want, elems);
            for (int i = 0; i < kb.n; i++) {
                char name[160];
                snprintf(name, sizeof name, "half cache case %zu %s [%s]", ci, kit_dt(dt), anvil_cpu_isa_name(kb.isa[i]));
                attn_result got = attn_fixture_run(&h, kb.be[i]);
                kit_expect_bitwise(name, got.kc.data, kc_want, h.cache_bytes);
                kit_expect_bitwise(name, got.vc.data, vc_want, h.cache_bytes);
                kit_expect_close(name, got.out.data, want.out.data, NULL, (int64_t)(got.out.bytes / 4),
                                 half[di].atol, 0.0f);
                /* the rounding is there: not every output equals the f32 one */
                assert_true(memcmp(got.out.data, want.out.data, got.out.bytes) != 0);
                attn_result_free(&got);
            }
            free(kc_want);
            free(vc_want);
            free(h.kc0);
            free(h.vc0);
        }
        attn_result_free(&want);
        attn_fixture_free(&f);
    }
    kit_backends_free(&kb);
}

/* An fp8 cache (the runtime's kv_cache_dtype "fp8") against the f32
 * reference on the same keys and values. e4m3 keeps 3 bits of mantissa: a
 * cached value in [-1, 1] moves by at most half an ulp, 2^-5 of its
 * magnitude (2^-10 absolute among the subnormals at scale 1), so out, a
 * convex combination of values, moves by up to ~0.03 from the values and a
 * little more from the scores (each a sum of head_dim products whose
 * rounding errors partly cancel). Measured on these cases (3 cases x 2
 * scales): 0.041 at most; the bound is 0.06, well under the spread of the
 * outputs themselves (values uniform in [-1, 1]). With k_scale = v_scale = 1/448 (max |x| /
 * 448, what a calibration picks) the values use e4m3's whole range. The
 * caches the step writes are the f32 reference's divided by the scale and
 * rounded to e4m3. */
static void test_attention_fp8_cache_vs_f32(void **state)
{
    (void)state;
    static const attn_case fc[] = {
        {64, 32, 8, 32, 0, ANVIL_DTYPE_F32, 0, 2, {{300, 1}, {0, 40}}}, /* the Llama-3.2-1B head shape */
        {128, 8, 2, 16, 0, ANVIL_DTYPE_F32, 0, 3, {{100, 1}, {17, 9}, {0, 1}}},
        {80, 6, 3, 5, 30, ANVIL_DTYPE_F32, 0, 2, {{70, 1}, {3, 12}}},
    };
    static const float scales[][2] = {{1.0f, 1.0f}, {1.0f / 448, 1.0f / 448}};
    const float bound = 0.06f;
    uint64_t rng = 4242;
    float worst = 0.0f;
    kit_backends kb = kit_backends_new(2);
    for (size_t ci = 0; ci < sizeof fc / sizeof fc[0]; ci++) {
        attn_fixture f;
        attn_fixture_build(&f, &fc[ci], &rng);
        attn_result want = attn_fixture_run(&f, NULL);
        const int64_t elems = (int64_t)(f.cache_bytes / 4);
        for (size_t si = 0; si < sizeof scales / sizeof scales[0]; si++) {
            const float ks = scales[si][0], vs = scales[si][1];
            attn_fixture h = f; /* shares f's arrays; only the caches are its own */
            h.c.cache_dt = ANVIL_DTYPE_F8_E4M3;
            h.k_scale = ks;
            h.v_scale = vs;
            h.cache_bytes = (size_t)elems;
            uint8_t *kc0 = fix_calloc(h.cache_bytes, 1), *vc0 = fix_calloc(h.cache_bytes, 1);
            uint8_t *kc_want = fix_calloc(h.cache_bytes, 1), *vc_want = fix_calloc(h.cache_bytes, 1);
            const float *kf0 = f.kc0, *vf0 = f.vc0, *kfw = want.kc.data, *vfw = want.vc.data;
            for (int64_t i = 0; i < elems; i++) {
                kc0[i] = anvil_f32_to_fp8_e4m3(kf0[i] / ks);
                vc0[i] = anvil_f32_to_fp8_e4m3(vf0[i] / vs);
                kc_want[i] = anvil_f32_to_fp8_e4m3(kfw[i] / ks);
                vc_want[i] = anvil_f32_to_fp8_e4m3(vfw[i] / vs);
            }
            h.kc0 = kc0;
            h.vc0 = vc0;
            attn_result ref = attn_fixture_run(&h, NULL);
            kit_expect_bitwise("fp8 reference k", ref.kc.data, kc_want, h.cache_bytes);
            kit_expect_bitwise("fp8 reference v", ref.vc.data, vc_want, h.cache_bytes);
            for (int i = 0; i < kb.n; i++) {
                char name[160];
                snprintf(name, sizeof name, "fp8 cache case %zu scales %g %g [%s]", ci, (double)ks, (double)vs,
                         anvil_cpu_isa_name(kb.isa[i]));
                attn_result got = attn_fixture_run(&h, kb.be[i]);
                kit_expect_bitwise(name, got.kc.data, kc_want, h.cache_bytes);
                kit_expect_bitwise(name, got.vc.data, vc_want, h.cache_bytes);
                kit_expect_close(name, got.out.data, want.out.data, NULL, (int64_t)(got.out.bytes / 4), bound, 0.0f);
                /* the rounding is there: not every output equals the f32 one */
                assert_true(memcmp(got.out.data, want.out.data, got.out.bytes) != 0);
                const float *o = got.out.data, *w = want.out.data;
                for (int64_t j = 0; j < (int64_t)(got.out.bytes / 4); j++)
                    worst = fmaxf(worst, fabsf(o[j] - w[j]));
                attn_result_free(&got);
            }
            attn_result_free(&ref);
            free(kc_want);
            free(vc_want);
            free(kc0);
            free(vc0);
        }
        attn_result_free(&want);
        attn_fixture_free(&f);
    }
    printf("fp8 cache against f32: largest |out| error %.4f (bound %.2f)\n", (double)worst, (double)bound);
    kit_backends_free(&kb);
}

/* The reference itself, on a case small enough to check by hand: one head,
 * head_dim 2, three cached positions; out = softmax-weighted mean of v. */
static void test_attention_reference_by_hand(void **state)
{
    (void)state;
    attn_case c = {2, 1, 1, 2, 0, ANVIL_DTYPE_F32, 1.0f, 1, {{2, 1}}};
    uint64_t rng = 5;
    attn_fixture f;
    attn_fixture_build(&f, &c, &rng);
    /* q = (1, 0); keys at positions 0, 1, 2 = (0, 0), (1, 0), (2, 0) -> scores 0, 1, 2 */
    f.q[0] = 1.0f;
    f.q[1] = 0.0f;
    f.k[0] = 2.0f;
    f.k[1] = 0.0f;
    f.v[0] = 3.0f;
    f.v[1] = -1.0f;
    float *kc = f.kc0, *vc = f.vc0;
    const int32_t *bt = f.block_tables;
    for (int p = 0; p < 2; p++) {
        int64_t slot = (int64_t)bt[p / 2] * 2 + p % 2;
        kc[slot * 2] = (float)p;
        kc[slot * 2 + 1] = 0.0f;
        vc[slot * 2] = (float)p + 1.0f;
        vc[slot * 2 + 1] = -1.0f;
    }
    attn_result r = attn_fixture_run(&f, NULL);
    double e0 = 1.0, e1 = exp(1.0), e2 = exp(2.0), z = e0 + e1 + e2;
    float *out = r.out.data;
    assert_float_equal(out[0], (float)((1.0 * e0 + 2.0 * e1 + 3.0 * e2) / z), 1e-6);
    assert_float_equal(out[1], -1.0f, 1e-6);
    attn_result_free(&r);
    /* soft-capped scores (Gemma 2): c(s) = 1.5 tanh(s / 1.5) before the softmax */
    f.softcap = 1.5f;
    r = attn_fixture_run(&f, NULL);
    double c1 = exp(1.5 * tanh(1.0 / 1.5)), c2 = exp(1.5 * tanh(2.0 / 1.5)), zc = 1.0 + c1 + c2;
    out = r.out.data;
    assert_float_equal(out[0], (float)((1.0 + 2.0 * c1 + 3.0 * c2) / zc), 1e-6);
    assert_true(fabsf(out[0] - (float)((1.0 * e0 + 2.0 * e1 + 3.0 * e2) / z)) > 1e-2); /* the cap moved it */
    attn_result_free(&r);
    attn_fixture_free(&f);
}

static anvil_status run_args(anvil_backend *be, anvil_attention_args a)
{
    return be->ops->attention(be, &a);
}

static void test_attention_errors(void **state)
{
    (void)state;
    uint64_t rng = 77;
    attn_case c = {16, 4, 2, 4, 0, ANVIL_DTYPE_F32, 0, 2, {{5, 2}, {0, 3}}};
    attn_fixture f;
    attn_fixture_build(&f, &c, &rng);
    anvil_backend *be = NULL;
    KIT_OK(anvil_backend_cpu_create(2, &be));
    int64_t qw = 64, kw = 32;
    float *out = calloc((size_t)(f.T * qw), 4);
    void *kc = calloc(f.cache_bytes, 1), *vc = calloc(f.cache_bytes, 1);
    anvil_tensor tq = anvil_tensor_2d(ANVIL_DTYPE_F32, f.T, qw, f.q);
    anvil_tensor tk = anvil_tensor_2d(ANVIL_DTYPE_F32, f.T, kw, f.k);
    anvil_tensor tv = anvil_tensor_2d(ANVIL_DTYPE_F32, f.T, kw, f.v);
    anvil_tensor to = anvil_tensor_2d(ANVIL_DTYPE_F32, f.T, qw, out);
    anvil_tensor tkc = {.dtype = ANVIL_DTYPE_F32, .n_dims = 4, .shape = {f.n_blocks, 4, 2, 16}, .data = kc};
    anvil_tensor tvc = tkc;
    tvc.data = vc;
    anvil_attention_args good = {.q = &tq, .k = &tk, .v = &tv, .k_cache = &tkc, .v_cache = &tvc, .out = &to,
                                 .step = &f.step, .n_heads = 4, .n_kv_heads = 2, .head_dim = 16, .scale = 0.25f};
    KIT_OK(run_args(be, good));

    anvil_attention_args a = good;
    a.n_kv_heads = 3;
    assert_status_msg(run_args(be, a), ANVIL_ERR_INVALID_ARG, "n_kv_heads");

    /* a slot outside the cache */
    int32_t saved = f.slots[1];
    f.slots[1] = f.n_blocks * 4;
    assert_status_msg(run_args(be, good), ANVIL_ERR_INVALID_ARG, "slot");
    f.slots[1] = -1;
    assert_status_msg(run_args(be, good), ANVIL_ERR_INVALID_ARG, "slot");
    f.slots[1] = saved;

    /* a block table entry that a query reads is out of range */
    saved = f.block_tables[0];
    f.block_tables[0] = f.n_blocks;
    assert_status_msg(run_args(be, good), ANVIL_ERR_INVALID_ARG, "block table");
    f.block_tables[0] = -1;
    assert_status_msg(run_args(be, good), ANVIL_ERR_INVALID_ARG, "block table");
    f.block_tables[0] = saved;

    /* a position beyond the block table */
    saved = f.positions[0];
    f.positions[0] = f.max_blocks * 4;
    assert_status_msg(run_args(be, good), ANVIL_ERR_INVALID_ARG, "position");
    f.positions[0] = saved;

    /* seq_of_token disagrees with seq_starts */
    f.seq_of_token[0] = 1;
    assert_status_msg(run_args(be, good), ANVIL_ERR_INVALID_ARG, "seq_of_token");
    f.seq_of_token[0] = 0;

    /* cache shape and dtype */
    anvil_tensor bad_kc = tkc;
    bad_kc.shape[1] = 8;
    a = good;
    a.k_cache = &bad_kc;
    assert_status_msg(run_args(be, a), ANVIL_ERR_INVALID_ARG, "k_cache");
    anvil_tensor int_kc = tkc, int_vc = tvc;
    int_kc.dtype = int_vc.dtype = ANVIL_DTYPE_I32;
    a.k_cache = &int_kc;
    a.v_cache = &int_vc;
    assert_status_msg(run_args(be, a), ANVIL_ERR_UNSUPPORTED, "dtype");

    /* an fp8 cache's scales: positive and finite (0 means 1) */
    anvil_tensor f8_kc = tkc, f8_vc = tvc;
    f8_kc.dtype = f8_vc.dtype = ANVIL_DTYPE_F8_E4M3;
    a = good;
    a.k_cache = &f8_kc;
    a.v_cache = &f8_vc;
    KIT_OK(run_args(be, a));
    a.k_scale = -1.0f;
    assert_status_msg(run_args(be, a), ANVIL_ERR_INVALID_ARG, "fp8 KV cache scales k -1");
    assert_status_msg(anvil_cpu_ref_attention(&a), ANVIL_ERR_INVALID_ARG, "fp8 KV cache scales");
    a.k_scale = 1.0f;
    a.v_scale = NAN;
    assert_status_msg(run_args(be, a), ANVIL_ERR_INVALID_ARG, "fp8 KV cache scales");
    a.v_scale = INFINITY;
    assert_status_msg(run_args(be, a), ANVIL_ERR_INVALID_ARG, "fp8 KV cache scales");
    /* an f32 cache ignores them */
    a = good;
    a.k_scale = -1.0f;
    KIT_OK(run_args(be, a));

    /* a soft cap: 0 (none) or positive and finite */
    a = good;
    a.softcap = -1.0f;
    assert_status_msg(run_args(be, a), ANVIL_ERR_INVALID_ARG, "softcap -1");
    assert_status_msg(anvil_cpu_ref_attention(&a), ANVIL_ERR_INVALID_ARG, "softcap");
    a.softcap = NAN;
    assert_status_msg(run_args(be, a), ANVIL_ERR_INVALID_ARG, "softcap");
    a.softcap = INFINITY;
    assert_status_msg(run_args(be, a), ANVIL_ERR_INVALID_ARG, "softcap");
    a.softcap = 30.0f;
    KIT_OK(run_args(be, a));
    a.scale = 0.0f; /* the cap applies to scaled scores */
    assert_status_msg(run_args(be, a), ANVIL_ERR_INVALID_ARG, "positive scale");

    /* and the reference refuses the same calls */
    a = good;
    a.n_heads = 5;
    assert_status_msg(anvil_cpu_ref_attention(&a), ANVIL_ERR_INVALID_ARG, "n_heads");

    /* the good call still works after all that */
    KIT_OK(run_args(be, good));
    free(out);
    free(kc);
    free(vc);
    anvil_backend_free(be);
    attn_fixture_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attention_reference_by_hand),
        cmocka_unit_test(test_attention_vs_reference),
        cmocka_unit_test(test_attention_half_cache_vs_f32),
        cmocka_unit_test(test_attention_fp8_cache_vs_f32),
        cmocka_unit_test(test_attention_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
