/*
 * The runtime joins an add + rmsnorm to the matmuls after it by default
 * where those matmuls round their input to fp8 (W8A8), so that the backend
 * can make the fp8 activations in the norm (docs/cuda-backend.md, "Quantized
 * weights"; on CUDA cuda_fp8_x.c, tested on a GPU by test_cuda_fp8_norm):
 *   the plan: anvil_fuse_merge_norm_where merges a group only when every
 *     linear of it is allowed (none, all, all but one of a q/k/v group);
 *   the runtime: tinycode built with --quantize fp8 has every norm group
 *     merged (5 q/k/v, 6 gate/up: the first layer's norm has no add), one
 *     built with --quantize int8-wo none (weight-only: nothing to share),
 *     and on the CPU the fused fp8 run equals the separate ops to the bit
 *     (tests/fusion_check.c: a 33-token prefill and 6 decode steps).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/builder.h"
#include "anvil/model_config.h"
#include "anvil/network.h"
#include "anvil/runtime.h"
#include "builder/fuse_plan.h"
#include "fusion_check.h"
#include "runtime/runtime_internal.h"
#include "testutil.h"

static void tinycode_dir(char *dir, size_t cap)
{
    snprintf(dir, cap, "%s/models/tinycode", anvil_test_shared_dir());
}

/* tinycode's plan for a backend with every fused op, then merged where
 * linear_ok allows; c its counts. */
static void plan_where(const anvil_network *net, const uint8_t *linear_ok, anvil_fuse **f, int32_t c[ANVIL_FUSE_KINDS])
{
    const anvil_fuse_caps caps = anvil_fuse_caps_all();
    assert_int_equal(anvil_fuse_plan(net, &caps, 0, f), ANVIL_OK);
    anvil_fuse_merge_norm_where(net, &caps, *f, linear_ok);
    anvil_fuse_counts(*f, anvil_network_op_count(net), c);
}

static void test_merge_where(void **s)
{
    (void)s;
    char dir[512];
    tinycode_dir(dir, sizeof dir);
    anvil_model_config cfg;
    assert_int_equal(anvil_model_config_load(dir, &cfg), ANVIL_OK);
    anvil_network *net = NULL;
    assert_int_equal(anvil_model_build_network(&cfg, &net), ANVIL_OK);
    const int32_t n = anvil_network_op_count(net), L = (int32_t)cfg.n_layers;
    uint8_t *ok = calloc((size_t)n, 1);
    assert_non_null(ok);
    anvil_fuse *f = NULL;
    int32_t c[ANVIL_FUSE_KINDS];

    plan_where(net, ok, &f, c); /* nothing allowed: nothing merged */
    assert_int_equal(c[ANVIL_FUSE_NORM_MULTI] + c[ANVIL_FUSE_NORM_SILU], 0);
    assert_int_equal(c[ANVIL_FUSE_ADD_RMSNORM], 2 * L - 1);
    free(f);

    for (int32_t i = 0; i < n; i++)
        ok[i] = anvil_network_op(net, i)->kind == ANVIL_OP_LINEAR;
    plan_where(net, ok, &f, c); /* every linear: every group, as anvil_fuse_merge_norm */
    assert_int_equal(c[ANVIL_FUSE_NORM_MULTI], L - 1);
    assert_int_equal(c[ANVIL_FUSE_NORM_SILU], L);
    anvil_fuse *all = NULL;
    int32_t ca[ANVIL_FUSE_KINDS];
    plan_where(net, NULL, &all, ca);
    assert_memory_equal(f, all, (size_t)n * sizeof *f);
    free(all);

    /* the first q/k/v group after an add + rmsnorm with its v not allowed: that group stays apart */
    int32_t first = -1;
    for (int32_t i = 0; i + 2 < n && first < 0; i++)
        if (f[i].kind == ANVIL_FUSE_NORM_MULTI)
            first = i;
    assert_true(first >= 0);
    assert_int_equal(f[first].n, 3);
    free(f);
    ok[first + 4] = 0;
    plan_where(net, ok, &f, c);
    assert_int_equal(c[ANVIL_FUSE_NORM_MULTI], L - 2);
    assert_int_equal(c[ANVIL_FUSE_NORM_SILU], L);
    assert_int_equal(f[first].kind, ANVIL_FUSE_ADD_RMSNORM);
    assert_int_equal(f[first + 2].kind, ANVIL_FUSE_MATMUL_MULTI);
    assert_int_equal(f[first + 2].n, 3);
    free(f);
    free(ok);
    anvil_network_free(net);
}

static void build(const char *engine, anvil_quantize scheme)
{
    char dir[512];
    tinycode_dir(dir, sizeof dir);
    anvil_build_options bo;
    anvil_build_options_default(&bo);
    bo.quantize = scheme;
    bo.n_threads = 2;
    if (anvil_build_engine(dir, engine, &bo) != ANVIL_OK)
        fail_msg("build %s: %s", engine, anvil_last_error());
}

/* The runtime's fused groups for an engine on the CPU (default options). */
static void runtime_counts(const char *engine, int32_t c[ANVIL_FUSE_KINDS])
{
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.n_threads = 2;
    o.max_num_tokens = 64;
    o.kv_cache_tokens = 1024;
    anvil_runtime *rt = NULL;
    if (anvil_runtime_load(engine, &o, &rt) != ANVIL_OK)
        fail_msg("load %s: %s", engine, anvil_last_error());
    anvil_fuse_counts(rt->fuse, anvil_network_op_count(rt->net), c);
    anvil_runtime_free(rt);
}

static void test_runtime_fp8(void **s)
{
    (void)s;
    char fp8[600], int8[600];
    snprintf(fp8, sizeof fp8, "%s/tc-fuse-fp8.engine", anvil_test_tmpdir());
    snprintf(int8, sizeof int8, "%s/tc-fuse-int8.engine", anvil_test_tmpdir());
    build(fp8, ANVIL_QUANTIZE_FP8);
    build(int8, ANVIL_QUANTIZE_INT8_WO);
    int32_t c[ANVIL_FUSE_KINDS];
    runtime_counts(fp8, c);
    assert_int_equal(c[ANVIL_FUSE_NORM_MULTI], 5); /* tinycode: 6 layers */
    assert_int_equal(c[ANVIL_FUSE_NORM_SILU], 6);
    assert_int_equal(c[ANVIL_FUSE_ADD_RMSNORM], 0);
    runtime_counts(int8, c);
    assert_int_equal(c[ANVIL_FUSE_NORM_MULTI] + c[ANVIL_FUSE_NORM_SILU], 0);
    assert_int_equal(c[ANVIL_FUSE_ADD_RMSNORM], 11);

    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.n_threads = 2;
    fusion_diff d;
    anvil_status st = fusion_compare(fp8, &o, 6, &d);
    if (st != ANVIL_OK)
        print_error("fusion_compare: %s\n", anvil_last_error());
    assert_int_equal(st, ANVIL_OK);
    assert_int_equal(d.rows, 3 * 7);
    assert_true(d.max_abs == 0.0);
    assert_int_equal(d.greedy_differ, 0);
    remove(fp8);
    remove(int8);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_merge_where),
        cmocka_unit_test(test_runtime_fp8),
    };
    return anvil_test_run_group(tests);
}
