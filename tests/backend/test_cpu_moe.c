/*
 * The CPU backend's moe op (backend.h, anvil_moe_args) against the scalar
 * reference on table-driven shapes (experts, top-k, with and without a
 * shared expert and renormalisation, weight dtypes) with guard bytes; a
 * token's result the same bits alone and in a batch; the routing checked
 * by hand (ties go to the lower expert, as torch.topk; DeepSeek-V2's
 * group-limited top-k, scaled weights and ungated shared experts); the
 * error paths.
 */
#include "cpu_testkit.h"

/* The op's matmuls sum in f32 (the reference in double): a few ulps of the
 * sums of H or I products. */
#define MOE_ATOL 2e-5f
#define MOE_RTOL 2e-4f

typedef struct moe_case {
    int64_t T, H;
    int32_t E, k;
    int64_t I, Is;
    int norm;
    anvil_dtype wdt;
    int32_t groups, keep; /* DeepSeek's group_limited_greedy (0: plain top-k) */
    float scale;          /* routed_scaling_factor (0: none) */
    int ungated;          /* the shared expert without its sigmoid gate (DeepSeek) */
} moe_case;

static const moe_case cases[] = {
    {1, 16, 4, 2, 24, 0, 1, ANVIL_DTYPE_BF16, 0, 0, 0.0f, 0},   /* Mixtral-like decode */
    {7, 32, 8, 2, 40, 0, 0, ANVIL_DTYPE_F32, 0, 0, 0.0f, 0},
    {33, 64, 8, 2, 48, 32, 0, ANVIL_DTYPE_BF16, 0, 0, 0.0f, 0}, /* Qwen2-MoE-like: a shared expert */
    {70, 17, 8, 3, 13, 9, 1, ANVIL_DTYPE_F16, 0, 0, 0.0f, 0},   /* odd sizes */
    {5, 8, 4, 4, 8, 0, 1, ANVIL_DTYPE_F32, 0, 0, 0.0f, 0},      /* every expert */
    {19, 24, 16, 1, 16, 0, 0, ANVIL_DTYPE_BF16, 0, 0, 0.0f, 0}, /* top-1 */
    /* DeepSeek-V2-like: 4 of 16 experts from 2 of 4 groups, weights x 2.5, an ungated shared expert */
    {40, 32, 16, 4, 24, 16, 0, ANVIL_DTYPE_BF16, 4, 2, 2.5f, 1},
    {9, 24, 8, 3, 16, 32, 0, ANVIL_DTYPE_F32, 0, 0, 16.0f, 1},   /* V2-Lite-like: greedy, scaled, ungated */
    {12, 16, 12, 2, 8, 0, 0, ANVIL_DTYPE_F16, 6, 1, 0.0f, 0},    /* one group of 2 kept: both its experts */
};

/* The weights and activations of one case. */
typedef struct moe_fix {
    moe_case c;
    gbuf x, router, gate_up, down, sgu, sdown, sgate, scratch;
    anvil_tensor tx, trouter, tgu, tdown, tsgu, tsdown, tsgate;
} moe_fix;

static moe_fix fix_new(const moe_case *c, uint64_t *rng)
{
    moe_fix f = {.c = *c};
    const size_t es = anvil_dtype_size(c->wdt);
    const int64_t T = c->T, H = c->H, E = c->E, I = c->I, Is = c->Is;
    f.x = gbuf_new((size_t)(T * H) * 4, 0);
    f.router = gbuf_new((size_t)(E * H) * es, 2);
    f.gate_up = gbuf_new((size_t)(E * 2 * I * H) * es, 2);
    f.down = gbuf_new((size_t)(E * H * I) * es, 2);
    kit_fill_f32(f.x.data, T * H, rng);
    kit_fill_dtype(f.router.data, c->wdt, E * H, rng);
    kit_fill_dtype(f.gate_up.data, c->wdt, E * 2 * I * H, rng);
    kit_fill_dtype(f.down.data, c->wdt, E * H * I, rng);
    f.tx = anvil_tensor_2d(ANVIL_DTYPE_F32, T, H, f.x.data);
    f.trouter = anvil_tensor_2d(c->wdt, E, H, f.router.data);
    f.tgu = anvil_tensor_2d(c->wdt, E * 2 * I, H, f.gate_up.data);
    f.tdown = anvil_tensor_2d(c->wdt, E * H, I, f.down.data);
    if (Is > 0) {
        f.sgu = gbuf_new((size_t)(2 * Is * H) * es, 2);
        f.sdown = gbuf_new((size_t)(H * Is) * es, 2);
        f.sgate = gbuf_new((size_t)H * es, 2);
        kit_fill_dtype(f.sgu.data, c->wdt, 2 * Is * H, rng);
        kit_fill_dtype(f.sdown.data, c->wdt, H * Is, rng);
        kit_fill_dtype(f.sgate.data, c->wdt, H, rng);
        f.tsgu = anvil_tensor_2d(c->wdt, 2 * Is, H, f.sgu.data);
        f.tsdown = anvil_tensor_2d(c->wdt, H, Is, f.sdown.data);
        f.tsgate = anvil_tensor_2d(c->wdt, 1, H, f.sgate.data);
        if (c->ungated)
            gbuf_free(&f.sgate);
    }
    anvil_moe_scratch L;
    KIT_OK(anvil_moe_scratch_layout(T, H, c->E, c->k, I, Is, &L));
    f.scratch = gbuf_new(L.bytes, 0);
    return f;
}

static void fix_free(moe_fix *f)
{
    gbuf *all[] = {&f->x, &f->router, &f->gate_up, &f->down, &f->sgu, &f->sdown, &f->sgate, &f->scratch};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (all[i]->block != NULL)
            gbuf_free(all[i]);
}

/* The op's arguments over rows [t0, t0 + n) of the fixture's x into out. */
static anvil_moe_args fix_args(moe_fix *f, anvil_tensor *x, anvil_tensor *out)
{
    const moe_case *c = &f->c;
    anvil_moe_args a = {
        .x = x, .router = &f->trouter, .gate_up = &f->tgu, .down = &f->tdown,
        .shared_gate_up = c->Is > 0 ? &f->tsgu : NULL, .shared_down = c->Is > 0 ? &f->tsdown : NULL,
        .shared_gate = c->Is > 0 && !c->ungated ? &f->tsgate : NULL, .out = out,
        .n_experts = c->E, .top_k = c->k, .inter = c->I, .shared_inter = c->Is, .norm_topk_prob = c->norm,
        .n_group = c->groups, .topk_group = c->keep, .routed_scale = c->scale,
        .scratch = f->scratch.data, .scratch_bytes = f->scratch.bytes,
    };
    return a;
}

static void test_moe_vs_reference(void **state)
{
    (void)state;
    uint64_t rng = 17;
    kit_backends kb = kit_backends_new(2);
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const moe_case *c = &cases[ci];
        char name[160];
        snprintf(name, sizeof name, "moe T=%lld H=%lld E=%d k=%d I=%lld Is=%lld norm=%d w=%s groups=%d/%d scale=%g%s",
                 (long long)c->T, (long long)c->H, c->E, c->k, (long long)c->I, (long long)c->Is, c->norm,
                 kit_dt(c->wdt), c->keep, c->groups, (double)c->scale, c->ungated ? " ungated" : "");
        moe_fix f = fix_new(c, &rng);
        const int64_t n = c->T * c->H;
        gbuf want = gbuf_new((size_t)n * 4, 0);
        anvil_tensor twant = anvil_tensor_2d(ANVIL_DTYPE_F32, c->T, c->H, want.data);
        anvil_moe_args ra = fix_args(&f, &f.tx, &twant);
        KIT_OK(anvil_cpu_ref_moe(&ra));
        for (int i = 0; i < kb.n; i++) {
            gbuf got = gbuf_new((size_t)n * 4, 0);
            anvil_tensor tgot = anvil_tensor_2d(ANVIL_DTYPE_F32, c->T, c->H, got.data);
            anvil_moe_args a = fix_args(&f, &f.tx, &tgot);
            KIT_OK(kb.be[i]->ops->moe(kb.be[i], &a));
            gbuf_check(&got, name);
            gbuf_check(&f.scratch, name);
            kit_expect_close(name, got.data, want.data, NULL, n, MOE_ATOL, MOE_RTOL);
            /* each token alone gives the bits it got in the batch */
            for (int64_t t = 0; t < c->T; t += c->T > 8 ? 7 : 1) {
                gbuf one = gbuf_new((size_t)c->H * 4, 0);
                anvil_tensor x1 = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, c->H, (float *)f.x.data + t * c->H);
                anvil_tensor o1 = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, c->H, one.data);
                anvil_moe_args a1 = fix_args(&f, &x1, &o1);
                KIT_OK(kb.be[i]->ops->moe(kb.be[i], &a1));
                kit_expect_bitwise(name, one.data, (float *)got.data + t * c->H, (size_t)c->H * 4);
                gbuf_free(&one);
            }
            gbuf_free(&got);
        }
        gbuf_free(&want);
        fix_free(&f);
    }
    kit_backends_free(&kb);
}

/*
 * Routing by hand: H 1, x 1, three experts whose router rows are 0, 0 and
 * -1 (probabilities e/(2e+1)... : p0 = p1 = 1 / (2 + e^-1), p2 = e^-1 / (2 +
 * e^-1)). Expert e's MLP with I 1 and gate = up = 1, down = e + 1 gives
 * silu(1) * 1 * (e + 1). Top-1 ties between 0 and 1 and takes 0; top-2 takes
 * 0 and 1.
 */
static void test_moe_routing_by_hand(void **state)
{
    (void)state;
    float x = 1.0f, router[3] = {0.0f, 0.0f, -1.0f}, gate_up[6] = {1, 1, 1, 1, 1, 1}, down[3] = {1, 2, 3};
    float out = 0.0f;
    unsigned char scratch[8192];
    anvil_tensor tx = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, 1, &x), tr = anvil_tensor_2d(ANVIL_DTYPE_F32, 3, 1, router);
    anvil_tensor tgu = anvil_tensor_2d(ANVIL_DTYPE_F32, 6, 1, gate_up), td = anvil_tensor_2d(ANVIL_DTYPE_F32, 3, 1, down);
    anvil_tensor to = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, 1, &out);
    const float silu1 = 1.0f / (1.0f + expf(-1.0f));
    const float p01 = 1.0f / (2.0f + expf(-1.0f));
    anvil_backend *be;
    KIT_OK(anvil_backend_cpu_create(1, &be));
    struct {
        int32_t k;
        int norm;
        float want;
    } rows[] = {
        {1, 0, p01 * silu1 * 1.0f},                 /* the tie: expert 0 */
        {1, 1, silu1 * 1.0f},                       /* renormalised: weight 1 */
        {2, 0, p01 * silu1 * 1.0f + p01 * silu1 * 2.0f},
        {2, 1, 0.5f * silu1 * 1.0f + 0.5f * silu1 * 2.0f},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        anvil_moe_args a = {.x = &tx, .router = &tr, .gate_up = &tgu, .down = &td, .out = &to, .n_experts = 3,
                            .top_k = rows[i].k, .inter = 1, .norm_topk_prob = rows[i].norm,
                            .scratch = scratch, .scratch_bytes = sizeof scratch};
        KIT_OK(be->ops->moe(be, &a));
        assert_float_equal(out, rows[i].want, 1e-6f);
        KIT_OK(anvil_cpu_ref_moe(&a));
        assert_float_equal(out, rows[i].want, 1e-6f);
    }
    /* a shared expert: gate logit 0 (sigmoid 1/2), its MLP silu(1) * 1 * 4 */
    float sgu[2] = {1, 1}, sdown[1] = {4}, sgate[1] = {0};
    anvil_tensor tsgu = anvil_tensor_2d(ANVIL_DTYPE_F32, 2, 1, sgu), tsd = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, 1, sdown);
    anvil_tensor tsg = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, 1, sgate);
    anvil_moe_args a = {.x = &tx, .router = &tr, .gate_up = &tgu, .down = &td, .shared_gate_up = &tsgu,
                        .shared_down = &tsd, .shared_gate = &tsg, .out = &to, .n_experts = 3, .top_k = 1,
                        .inter = 1, .shared_inter = 1, .norm_topk_prob = 1,
                        .scratch = scratch, .scratch_bytes = sizeof scratch};
    KIT_OK(be->ops->moe(be, &a));
    assert_float_equal(out, silu1 + 0.5f * silu1 * 4.0f, 1e-6f);
    anvil_backend_free(be);
}

/*
 * DeepSeek's router by hand: H 1, x 1, four experts in two groups {0, 1},
 * {2, 3} with router rows 0, 0, 1, -5. Keeping one group takes {2, 3}
 * (its best, expert 2, beats the other group's best), so top-2 is experts
 * 2 and 3 although expert 0 outscores 3; plain top-2 takes 2 and 0.
 * Expert e's MLP gives silu(1) (e + 1); the weights are the softmax
 * probabilities over all four, times the scale; an ungated shared expert
 * adds silu(1) * 4 as it is.
 */
static void test_moe_groups_by_hand(void **state)
{
    (void)state;
    float x = 1.0f, router[4] = {0.0f, 0.0f, 1.0f, -5.0f}, gate_up[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    float down[4] = {1, 2, 3, 4}, sgu[2] = {1, 1}, sdown[1] = {4}, out = 0.0f;
    unsigned char scratch[8192];
    anvil_tensor tx = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, 1, &x), tr = anvil_tensor_2d(ANVIL_DTYPE_F32, 4, 1, router);
    anvil_tensor tgu = anvil_tensor_2d(ANVIL_DTYPE_F32, 8, 1, gate_up), td = anvil_tensor_2d(ANVIL_DTYPE_F32, 4, 1, down);
    anvil_tensor tsgu = anvil_tensor_2d(ANVIL_DTYPE_F32, 2, 1, sgu), tsd = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, 1, sdown);
    anvil_tensor to = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, 1, &out);
    const float silu1 = 1.0f / (1.0f + expf(-1.0f));
    const float z = 2.0f + expf(1.0f) + expf(-5.0f);
    const float p0 = 1.0f / z, p2 = expf(1.0f) / z, p3 = expf(-5.0f) / z;
    anvil_backend *be;
    KIT_OK(anvil_backend_cpu_create(1, &be));
    struct {
        int32_t groups, keep;
        float scale;
        int shared;
        float want;
    } rows[] = {
        {2, 1, 0.0f, 0, p2 * silu1 * 3.0f + p3 * silu1 * 4.0f},          /* group {2, 3} alone */
        {0, 0, 0.0f, 0, p0 * silu1 * 1.0f + p2 * silu1 * 3.0f},          /* plain top-2: 0 and 2 */
        {2, 2, 0.0f, 0, p0 * silu1 * 1.0f + p2 * silu1 * 3.0f},          /* both groups kept: plain */
        {2, 1, 2.5f, 0, 2.5f * (p2 * silu1 * 3.0f) + 2.5f * (p3 * silu1 * 4.0f)}, /* scaled */
        {2, 1, 2.5f, 1, 2.5f * (p2 * silu1 * 3.0f) + 2.5f * (p3 * silu1 * 4.0f) + silu1 * 4.0f},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        anvil_moe_args a = {.x = &tx, .router = &tr, .gate_up = &tgu, .down = &td, .out = &to, .n_experts = 4,
                            .top_k = 2, .inter = 1, .n_group = rows[i].groups, .topk_group = rows[i].keep,
                            .routed_scale = rows[i].scale, .scratch = scratch, .scratch_bytes = sizeof scratch};
        if (rows[i].shared) {
            a.shared_gate_up = &tsgu;
            a.shared_down = &tsd;
            a.shared_inter = 1;
        }
        KIT_OK(be->ops->moe(be, &a));
        assert_float_equal(out, rows[i].want, 1e-6f);
        KIT_OK(anvil_cpu_ref_moe(&a));
        assert_float_equal(out, rows[i].want, 1e-6f);
    }
    /* a group count that does not divide the experts, a keep past it, too few experts kept */
    anvil_moe_args bad = {.x = &tx, .router = &tr, .gate_up = &tgu, .down = &td, .out = &to, .n_experts = 4,
                          .top_k = 2, .inter = 1, .n_group = 3, .topk_group = 1, .scratch = scratch,
                          .scratch_bytes = sizeof scratch};
    assert_int_equal(be->ops->moe(be, &bad), ANVIL_ERR_INVALID_ARG);
    bad.n_group = 2;
    bad.topk_group = 3;
    assert_int_equal(be->ops->moe(be, &bad), ANVIL_ERR_INVALID_ARG);
    bad.n_group = 4;
    bad.topk_group = 1; /* one group of one expert for top-2 */
    assert_int_equal(be->ops->moe(be, &bad), ANVIL_ERR_INVALID_ARG);
    anvil_backend_free(be);
}

static void test_moe_errors(void **state)
{
    (void)state;
    uint64_t rng = 5;
    const moe_case c = {3, 8, 4, 2, 8, 4, 1, ANVIL_DTYPE_F32, 0, 0, 0.0f, 0};
    moe_fix f = fix_new(&c, &rng);
    gbuf got = gbuf_new((size_t)(c.T * c.H) * 4, 0);
    anvil_tensor tgot = anvil_tensor_2d(ANVIL_DTYPE_F32, c.T, c.H, got.data);
    anvil_backend *be;
    KIT_OK(anvil_backend_cpu_create(1, &be));
    anvil_moe_args a = fix_args(&f, &f.tx, &tgot);
    a.scratch_bytes -= 1;
    assert_int_equal(be->ops->moe(be, &a), ANVIL_ERR_INVALID_ARG);
    assert_non_null(strstr(anvil_last_error(), "scratch"));
    a = fix_args(&f, &f.tx, &tgot);
    a.top_k = 5;
    assert_int_equal(be->ops->moe(be, &a), ANVIL_ERR_INVALID_ARG);
    a = fix_args(&f, &f.tx, &tgot);
    a.inter = 7; /* gate_up's rows no longer E * 2I */
    assert_int_equal(be->ops->moe(be, &a), ANVIL_ERR_INVALID_ARG);
    assert_non_null(strstr(anvil_last_error(), "gate_up"));
    a = fix_args(&f, &f.tx, &tgot);
    a.shared_gate_up = NULL; /* shared_inter without its weights */
    assert_int_equal(be->ops->moe(be, &a), ANVIL_ERR_INVALID_ARG);
    a = fix_args(&f, &f.tx, &f.tx); /* out aliasing x */
    assert_int_equal(be->ops->moe(be, &a), ANVIL_ERR_INVALID_ARG);
    assert_int_equal(anvil_cpu_ref_moe(&a), ANVIL_ERR_INVALID_ARG);
    /* nothing was written on a refused call: out still holds gbuf_new's pattern */
    for (size_t i = 0; i < got.bytes; i++)
        assert_int_equal(((unsigned char *)got.data)[i], GUARD_BYTE);
    gbuf_check(&got, "errors");
    anvil_backend_free(be);
    gbuf_free(&got);
    fix_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_moe_routing_by_hand),
        cmocka_unit_test(test_moe_groups_by_hand),
        cmocka_unit_test(test_moe_vs_reference),
        cmocka_unit_test(test_moe_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
