/*
 * The runtime's fused path (builder/fuse_plan.c) against the separate ops. On
 * the CPU the fused ops are the separate ops in a row, so every logit must
 * be equal to the bit, for every model family: what this checks is the
 * plan (which ops group, which buffers they read and write, their
 * lifetimes). The planner finds the groups it should in a Llama network
 * and only those the backend offers.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/model_config.h"
#include "anvil/network.h"
#include "backend/backend.h"
#include "fusion_check.h"
#include "builder/fuse_plan.h"
#include "runtime/runtime_plan.h"
#include "testutil.h"

static void check_model(const char *name)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/models/%s", anvil_test_shared_dir(), name);
    for (int norm_gemv = 0; norm_gemv < 2; norm_gemv++) { /* the default, and the opt-in norm groups */
        anvil_runtime_options o;
        anvil_runtime_options_default(&o);
        o.n_threads = 2;
        o.norm_gemv = norm_gemv;
        fusion_diff d;
        anvil_status st = fusion_compare(dir, &o, 6, &d);
        if (st != ANVIL_OK)
            print_error("%s: %s\n", name, anvil_last_error());
        assert_int_equal(st, ANVIL_OK);
        assert_int_equal(d.rows, 3 * 7);
        if (d.max_abs != 0.0)
            print_error("%s (norm_gemv %d): fused logits differ by up to %g\n", name, norm_gemv, d.max_abs);
        assert_true(d.max_abs == 0.0);
        assert_int_equal(d.greedy_differ, 0);
    }
}

static void test_fused_equals_separate(void **s)
{
    (void)s;
    const char *models[] = {"stories260K", "tinycode",     "tiny-llama3",
                            "tiny-qwen2",  "tiny-mistral", "tiny-qwen3"};
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++)
        check_model(models[i]);
}

static anvil_status dummy_add_rmsnorm(anvil_backend *be, const anvil_tensor *a, const anvil_tensor *b,
                                      const anvil_tensor *w, float eps, anvil_tensor *sum, anvil_tensor *norm)
{
    (void)be, (void)a, (void)b, (void)w, (void)eps, (void)sum, (void)norm;
    return ANVIL_OK;
}

static anvil_status dummy_multi(anvil_backend *be, const anvil_tensor *x, int n, const anvil_tensor *const *w,
                                const anvil_tensor *const *bias, anvil_tensor *const *out)
{
    (void)be, (void)x, (void)n, (void)w, (void)bias, (void)out;
    return ANVIL_OK;
}

static anvil_status dummy_silu(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *wg,
                               const anvil_tensor *bg, const anvil_tensor *wu, const anvil_tensor *bu,
                               anvil_tensor *gate, anvil_tensor *up, anvil_tensor *out)
{
    (void)be, (void)x, (void)wg, (void)bg, (void)wu, (void)bu, (void)gate, (void)up, (void)out;
    return ANVIL_OK;
}

static anvil_status dummy_norm_multi(anvil_backend *be, const anvil_tensor *a, const anvil_tensor *b,
                                     const anvil_tensor *nw, float eps, anvil_tensor *sum, anvil_tensor *x, int n,
                                     const anvil_tensor *const *w, const anvil_tensor *const *bias,
                                     anvil_tensor *const *out)
{
    (void)be, (void)a, (void)b, (void)nw, (void)eps, (void)sum, (void)x, (void)n, (void)w, (void)bias, (void)out;
    return ANVIL_OK;
}

static anvil_status dummy_norm_silu(anvil_backend *be, const anvil_tensor *a, const anvil_tensor *b,
                                    const anvil_tensor *nw, float eps, anvil_tensor *sum, anvil_tensor *x,
                                    const anvil_tensor *wg, const anvil_tensor *bg, const anvil_tensor *wu,
                                    const anvil_tensor *bu, anvil_tensor *gate, anvil_tensor *up, anvil_tensor *out)
{
    (void)be, (void)a, (void)b, (void)nw, (void)eps, (void)sum, (void)x, (void)wg, (void)bg, (void)wu, (void)bu,
        (void)gate, (void)up, (void)out;
    return ANVIL_OK;
}

/* The plan of a model for a backend with ops (anvil_fuse_plan, then
 * anvil_fuse_merge_norm as the runtime does unless merge is 0), its
 * counts, checked for consistency: every group's members are marked
 * skipped and nothing else is; a NORM group is an add, its rmsnorm and the
 * matmuls that alone read the norm. */
static void plan_counts_merge(const char *model, const anvil_backend_ops *ops, int disabled, int merge,
                              int32_t c[ANVIL_FUSE_KINDS], int64_t *layers)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/models/%s", anvil_test_shared_dir(), model);
    anvil_model_config cfg;
    assert_int_equal(anvil_model_config_load(dir, &cfg), ANVIL_OK);
    anvil_network *net = NULL;
    assert_int_equal(anvil_model_build_network(&cfg, &net), ANVIL_OK);
    anvil_fuse *f = NULL;
    const anvil_fuse_caps caps = anvil_fuse_caps_of(ops);
    assert_int_equal(anvil_fuse_plan(net, &caps, disabled, &f), ANVIL_OK);
    if (merge && !disabled)
        anvil_fuse_merge_norm(net, &caps, f);
    anvil_fuse_counts(f, anvil_network_op_count(net), c);
    /* every group's members are marked skipped; nothing else is */
    int32_t skipped = c[ANVIL_FUSE_ADD_RMSNORM] + 2 * c[ANVIL_FUSE_ROPE_ATTENTION] + 2 * c[ANVIL_FUSE_SILU_MUL] +
                      4 * c[ANVIL_FUSE_NORM_SILU];
    for (int32_t i = 0; i < anvil_network_op_count(net); i++) {
        if (f[i].kind == ANVIL_FUSE_MATMUL_MULTI)
            skipped += f[i].n - 1;
        if (f[i].kind == ANVIL_FUSE_NORM_MULTI)
            skipped += f[i].n + 1;
        if (f[i].kind != ANVIL_FUSE_NORM_MULTI && f[i].kind != ANVIL_FUSE_NORM_SILU)
            continue;
        const int32_t span = anvil_fuse_span(&f[i]);
        assert_true(f[i].kind == ANVIL_FUSE_NORM_SILU ? span == 5 : f[i].n >= 1 && span == f[i].n + 2);
        assert_int_equal(anvil_network_op(net, i)->kind, ANVIL_OP_ADD);
        assert_int_equal(anvil_network_op(net, i + 1)->kind, ANVIL_OP_RMSNORM);
        assert_int_equal(anvil_network_op(net, i + 1)->inputs[0], i);
        const int32_t n_lin = f[i].kind == ANVIL_FUSE_NORM_SILU ? 2 : f[i].n;
        for (int32_t j = 1; j < span; j++)
            assert_int_equal(f[i + j].kind, ANVIL_FUSE_SKIP);
        for (int32_t j = 0; j < n_lin; j++) {
            assert_int_equal(anvil_network_op(net, i + 2 + j)->kind, ANVIL_OP_LINEAR);
            assert_int_equal(anvil_network_op(net, i + 2 + j)->inputs[0], i + 1);
        }
        if (f[i].kind == ANVIL_FUSE_NORM_SILU)
            assert_int_equal(anvil_network_op(net, i + 4)->kind, ANVIL_OP_SILU_MUL);
        /* nothing after the group reads the norm */
        for (int32_t j = i + span; j < anvil_network_op_count(net); j++)
            for (int k = 0; k < 3; k++)
                assert_int_not_equal(anvil_network_op(net, j)->inputs[k], i + 1);
    }
    assert_int_equal(c[ANVIL_FUSE_SKIP], skipped);
    *layers = cfg.n_layers;
    free(f);
    anvil_network_free(net);
}

static void plan_counts(const char *model, const anvil_backend_ops *ops, int disabled, int32_t c[ANVIL_FUSE_KINDS],
                        int64_t *layers)
{
    plan_counts_merge(model, ops, disabled, 1, c, layers);
}

static void test_plan_groups(void **s)
{
    (void)s;
    anvil_backend_ops ops;
    memset(&ops, 0, sizeof ops);
    int32_t c[ANVIL_FUSE_KINDS];
    int64_t L = 0;
    plan_counts("tiny-qwen3", &ops, 0, c, &L); /* a backend without fused ops: nothing */
    for (int k = ANVIL_FUSE_SKIP; k < ANVIL_FUSE_KINDS; k++)
        assert_int_equal(c[k], 0);

    ops.add_rmsnorm = dummy_add_rmsnorm;
    plan_counts("tiny-qwen3", &ops, 0, c, &L);
    assert_int_equal(c[ANVIL_FUSE_ADD_RMSNORM], 2 * L - 1); /* the last add feeds the logit rows */
    assert_int_equal(c[ANVIL_FUSE_MATMUL_MULTI] + c[ANVIL_FUSE_SILU_MUL] + c[ANVIL_FUSE_ROPE_ATTENTION], 0);

    ops.matmul_multi = dummy_multi;
    ops.matmul_silu_mul = dummy_silu;
    ops.attention_rope = 1;
    plan_counts("tiny-qwen3", &ops, 0, c, &L); /* q/k norms between the matmuls and the ropes */
    assert_int_equal(c[ANVIL_FUSE_ADD_RMSNORM], 2 * L - 1);
    assert_int_equal(c[ANVIL_FUSE_MATMUL_MULTI], L);
    assert_int_equal(c[ANVIL_FUSE_SILU_MUL], L);
    assert_int_equal(c[ANVIL_FUSE_ROPE_ATTENTION], L);

    ops.matmul_silu_mul = NULL; /* then gate and up are a matmul group of two */
    plan_counts("tiny-qwen2", &ops, 0, c, &L);
    assert_int_equal(c[ANVIL_FUSE_MATMUL_MULTI], 2 * L);
    assert_int_equal(c[ANVIL_FUSE_SILU_MUL], 0);

    plan_counts("tiny-qwen2", &ops, 1, c, &L); /* disabled */
    for (int k = ANVIL_FUSE_SKIP; k < ANVIL_FUSE_KINDS; k++)
        assert_int_equal(c[k], 0);
}

/* The add + rmsnorm + matmuls groups: where the backend has the ops, every
 * layer's add before the MLP joins its gate/up + silu group and every layer
 * but the first (no add before its input norm) joins its q/k/v group (the
 * final norm reads the logit rows, after the last add); without the
 * merge (an engine's plan, or the runtime's default, without norm_gemv) the plan is
 * today's. */
static void test_plan_norm_groups(void **s)
{
    (void)s;
    anvil_backend_ops ops;
    memset(&ops, 0, sizeof ops);
    ops.add_rmsnorm = dummy_add_rmsnorm;
    ops.matmul_multi = dummy_multi;
    ops.matmul_silu_mul = dummy_silu;
    ops.attention_rope = 1;
    int32_t c[ANVIL_FUSE_KINDS], c0[ANVIL_FUSE_KINDS];
    int64_t L = 0;
    const char *models[] = {"tiny-llama3", "tiny-qwen2", "tiny-qwen3", "stories260K"};
    for (size_t m = 0; m < sizeof models / sizeof models[0]; m++) {
        /* the NORM ops missing: nothing merges */
        plan_counts(models[m], &ops, 0, c, &L);
        assert_int_equal(c[ANVIL_FUSE_NORM_MULTI] + c[ANVIL_FUSE_NORM_SILU], 0);
        assert_int_equal(c[ANVIL_FUSE_ADD_RMSNORM], 2 * L - 1);

        ops.add_rmsnorm_matmul_multi = dummy_norm_multi;
        ops.add_rmsnorm_matmul_silu_mul = dummy_norm_silu;
        plan_counts(models[m], &ops, 0, c, &L);
        assert_int_equal(c[ANVIL_FUSE_NORM_SILU], L);
        assert_int_equal(c[ANVIL_FUSE_NORM_MULTI], L - 1);
        assert_int_equal(c[ANVIL_FUSE_ADD_RMSNORM], 0);  /* all merged (the final norm follows the logit rows) */
        assert_int_equal(c[ANVIL_FUSE_MATMUL_MULTI], 1); /* the first layer's q/k/v */
        assert_int_equal(c[ANVIL_FUSE_SILU_MUL], 0);
        assert_int_equal(c[ANVIL_FUSE_ROPE_ATTENTION], L);
        plan_counts_merge(models[m], &ops, 0, 0, c0, &L); /* not merged: as before */
        assert_int_equal(c0[ANVIL_FUSE_NORM_MULTI] + c0[ANVIL_FUSE_NORM_SILU], 0);
        assert_int_equal(c0[ANVIL_FUSE_ADD_RMSNORM], 2 * L - 1);
        plan_counts(models[m], &ops, 1, c, &L); /* disabled */
        for (int k = ANVIL_FUSE_SKIP; k < ANVIL_FUSE_KINDS; k++)
            assert_int_equal(c[k], 0);

        /* one of the two: only its groups */
        ops.add_rmsnorm_matmul_multi = NULL;
        plan_counts(models[m], &ops, 0, c, &L);
        assert_int_equal(c[ANVIL_FUSE_NORM_MULTI], 0);
        assert_int_equal(c[ANVIL_FUSE_NORM_SILU], L);
        assert_int_equal(c[ANVIL_FUSE_MATMUL_MULTI], L);
        ops.add_rmsnorm_matmul_multi = dummy_norm_multi;
        ops.add_rmsnorm_matmul_silu_mul = NULL;
        plan_counts(models[m], &ops, 0, c, &L);
        assert_int_equal(c[ANVIL_FUSE_NORM_MULTI], L - 1);
        assert_int_equal(c[ANVIL_FUSE_NORM_SILU], 0);
        assert_int_equal(c[ANVIL_FUSE_SILU_MUL], L);
        /* without matmul_silu_mul, gate and up are a matmul group of two,
         * which the norm joins as a NORM_MULTI group */
        ops.matmul_silu_mul = NULL;
        plan_counts(models[m], &ops, 0, c, &L);
        assert_int_equal(c[ANVIL_FUSE_NORM_MULTI], 2 * L - 1);
        assert_int_equal(c[ANVIL_FUSE_NORM_SILU] + c[ANVIL_FUSE_SILU_MUL], 0);
        ops.matmul_silu_mul = dummy_silu;
        ops.add_rmsnorm_matmul_multi = NULL;
        ops.add_rmsnorm_matmul_silu_mul = NULL;
    }
}

/*
 * The activation plan of a network with n_layers layers: the total bytes,
 * after checking that no two values alive at once share a buffer (a
 * value lives from its op to its last reader, a fused group's inputs to
 * the group's last op; a rope's result is its input's buffer).
 */
static size_t plan_bytes(const char *model, const anvil_backend_ops *ops, int64_t n_layers)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/models/%s", anvil_test_shared_dir(), model);
    anvil_model_config cfg;
    assert_int_equal(anvil_model_config_load(dir, &cfg), ANVIL_OK);
    cfg.n_layers = n_layers;
    anvil_network *net = NULL;
    assert_int_equal(anvil_model_build_network(&cfg, &net), ANVIL_OK);
    anvil_fuse *f = NULL;
    const anvil_fuse_caps caps = anvil_fuse_caps_of(ops);
    assert_int_equal(anvil_fuse_plan(net, &caps, 0, &f), ANVIL_OK);
    anvil_fuse_merge_norm(net, &caps, f);
    const int32_t n = anvil_network_op_count(net);
    int32_t *vb = calloc((size_t)n, sizeof *vb), *last = calloc((size_t)n, sizeof *last);
    int32_t *first = calloc((size_t)n, sizeof *first);
    size_t *bb = calloc((size_t)n, sizeof *bb), total = 0;
    assert_non_null(vb && last && first && bb);
    int32_t n_buf = 0;
    assert_int_equal(anvil_plan_activations(net, f, 64, 8, 4, vb, bb, &n_buf, &total), ANVIL_OK);

    for (int32_t i = 0; i < n; i++)
        last[i] = first[i] = i;
    for (int32_t i = 0; i < n; i++) {
        const anvil_net_op *op = anvil_network_op(net, i);
        for (int k = 0; k < 3; k++)
            if (op->inputs[k] != ANVIL_VALUE_NONE)
                last[op->inputs[k]] = i;
    }
    last[anvil_network_output(net)] = n;
    anvil_fuse_extend_lives(net, f, last);
    for (int32_t i = 0; i < n; i++) { /* a rope's result continues its input's life */
        const anvil_net_op *op = anvil_network_op(net, i);
        if (op->kind == ANVIL_OP_ROPE) {
            first[i] = first[op->inputs[0]];
            last[op->inputs[0]] = -1; /* counted in the result */
        }
    }
    for (int32_t a = 0; a < n; a++)
        for (int32_t b = a + 1; b < n; b++) {
            if (last[a] < 0 || last[b] < 0 || vb[a] != vb[b])
                continue;
            const int overlap = first[a] <= last[b] && first[b] <= last[a];
            if (overlap)
                print_error("%s: values %d [%d, %d] and %d [%d, %d] share buffer %d\n", model, a, first[a], last[a],
                            b, first[b], last[b], vb[a]);
            assert_false(overlap);
        }
    free(vb);
    free(last);
    free(first);
    free(bb);
    free(f);
    anvil_network_free(net);
    return total;
}

/* A layer's activations die in the layer: the plan for a deep model is the
 * plan for a shallow one (it grew with the depth when a fused group's
 * inputs, kept to the group's end, were never given back: 27 GB for an
 * 8B model's 8192-token step). */
static void test_activations_reused(void **s)
{
    (void)s;
    anvil_backend_ops ops;
    memset(&ops, 0, sizeof ops);
    const char *models[] = {"tinycode", "tiny-qwen3", "tiny-phi3", "stories260K"};
    for (int fused = 0; fused < 2; fused++) {
        if (fused) {
            ops.add_rmsnorm = dummy_add_rmsnorm;
            ops.matmul_multi = dummy_multi;
            ops.matmul_silu_mul = dummy_silu;
            ops.attention_rope = 1;
            ops.add_rmsnorm_matmul_multi = dummy_norm_multi;
            ops.add_rmsnorm_matmul_silu_mul = dummy_norm_silu;
        }
        for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
            const size_t two = plan_bytes(models[i], &ops, 2), twelve = plan_bytes(models[i], &ops, 12);
            if (two != twelve)
                print_error("%s (fused %d): %zu bytes of activations for 2 layers, %zu for 12\n", models[i], fused,
                            two, twelve);
            assert_true(two == twelve);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_groups),
        cmocka_unit_test(test_plan_norm_groups),
        cmocka_unit_test(test_activations_reused),
        cmocka_unit_test(test_fused_equals_separate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
