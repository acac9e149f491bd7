/*
 * The fused ops of backend.h on the CPU, as their separate ops in a row,
 * but for quantized matmul groups (q, k, v; gate, up of int8/int4
 * weights), which run as one job: one preparation of the activations and
 * one pass of the thread pool instead of one each (a decode step is
 * mostly such matmuls, each a few hundred microseconds). They exist so
 * that the runtime's fused path (builder/fuse_plan.c), which the GPU
 * takes, also runs in every CPU test and must give the separate ops'
 * results to the bit.
 */
#include "backend/cpu/cpu_internal.h"
#include "backend/cpu/cpu_quant.h"
#include "core/error.h"

anvil_status anvil_cpu_op_add_rmsnorm(anvil_backend *be, const anvil_tensor *a, const anvil_tensor *b,
                                      const anvil_tensor *w, float eps, anvil_tensor *sum, anvil_tensor *norm)
{
    TRY(anvil_cpu_op_add(be, a, b, sum));
    return anvil_cpu_op_rmsnorm(be, sum, w, eps, 0.0f, norm);
}

anvil_status anvil_cpu_op_matmul_multi(anvil_backend *be, const anvil_tensor *x, int n,
                                       const anvil_tensor *const *w, const anvil_tensor *const *bias,
                                       anvil_tensor *const *out)
{
    CHECK(n >= 1 && n <= ANVIL_MATMUL_MULTI_MAX, ANVIL_ERR_INVALID_ARG, "matmul_multi: %d matrices", n);
    for (int i = 0; i < n; i++)
        TRY(anvil_cpu_check_matmul(x, w[i], bias[i], out[i]));
    anvil_status st;
    if (anvil_cpu_quant_matmul_multi(anvil_cpu_impl(be), x, n, w, bias, out, &st))
        return st;
    for (int i = 0; i < n; i++)
        TRY(anvil_cpu_op_matmul(be, x, w[i], bias[i], out[i]));
    return ANVIL_OK;
}

anvil_status anvil_cpu_op_matmul_silu_mul(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *wg,
                                          const anvil_tensor *bg, const anvil_tensor *wu,
                                          const anvil_tensor *bu, anvil_tensor *gate, anvil_tensor *up,
                                          anvil_tensor *out)
{
    const anvil_tensor *w[2] = {wg, wu}, *b[2] = {bg, bu};
    anvil_tensor *o[2] = {gate, up};
    TRY(anvil_cpu_op_matmul_multi(be, x, 2, w, b, o));
    return anvil_cpu_op_silu_mul(be, gate, up, out);
}

anvil_status anvil_cpu_op_add_rmsnorm_matmul_multi(anvil_backend *be, const anvil_tensor *a, const anvil_tensor *b,
                                                  const anvil_tensor *norm_w, float eps, anvil_tensor *sum,
                                                  anvil_tensor *x, int n, const anvil_tensor *const *w,
                                                  const anvil_tensor *const *bias, anvil_tensor *const *out)
{
    TRY(anvil_cpu_op_add_rmsnorm(be, a, b, norm_w, eps, sum, x));
    return anvil_cpu_op_matmul_multi(be, x, n, w, bias, out);
}

anvil_status anvil_cpu_op_add_rmsnorm_matmul_silu_mul(anvil_backend *be, const anvil_tensor *a,
                                                     const anvil_tensor *b, const anvil_tensor *norm_w, float eps,
                                                     anvil_tensor *sum, anvil_tensor *x, const anvil_tensor *wg,
                                                     const anvil_tensor *bg, const anvil_tensor *wu,
                                                     const anvil_tensor *bu, anvil_tensor *gate, anvil_tensor *up,
                                                     anvil_tensor *out)
{
    TRY(anvil_cpu_op_add_rmsnorm(be, a, b, norm_w, eps, sum, x));
    return anvil_cpu_op_matmul_silu_mul(be, x, wg, bg, wu, bu, gate, up, out);
}

/* Attention given unrotated q and k (args->rope set): the two ropes, then
 * the attention op. */
anvil_status anvil_cpu_attention_with_rope(anvil_backend *be, const anvil_attention_args *args)
{
    CHECK(args != NULL && args->q != NULL && args->k != NULL, ANVIL_ERR_INVALID_ARG,
          "attention: missing arguments");
    anvil_tensor q = *args->q, k = *args->k;
    TRY(anvil_cpu_op_rope(be, &q, args->step, args->head_dim, args->rope));
    TRY(anvil_cpu_op_rope(be, &k, args->step, args->head_dim, args->rope));
    anvil_attention_args a = *args;
    a.rope = NULL;
    return anvil_cpu_op_attention(be, &a);
}
