/*
 * The fused ops of backend.h on CUDA (host side): add + rmsnorm in one
 * kernel; the matmuls of one input (q, k, v) as one GEMV launch, and gate +
 * up + silu_mul as one GEMV launch, for the 1..4 rows of small decode
 * steps. Larger steps (prefill), f32, or weights in another dtype take the
 * separate ops: there a GEMM's cost is its arithmetic, not its launch.
 * (rope + KV write is the attention op's: cuda_attention.c.)
 */
#include "backend/cuda/cuda_internal.h"

anvil_status anvil_cuda_op_add_rmsnorm(anvil_backend *be, const anvil_tensor *a, const anvil_tensor *b,
                                       const anvil_tensor *w, float eps, anvil_tensor *sum,
                                       anvil_tensor *norm)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    TRY(anvil_cuda_check_act(cb, a, "add_rmsnorm a"));
    TRY(anvil_cuda_check_act(cb, b, "add_rmsnorm b"));
    TRY(anvil_cuda_check_act(cb, sum, "add_rmsnorm sum"));
    TRY(anvil_cuda_check_act(cb, norm, "add_rmsnorm norm"));
    TRY(anvil_cuda_check_same_shape(a, b, "add_rmsnorm"));
    TRY(anvil_cuda_check_same_shape(a, sum, "add_rmsnorm sum"));
    TRY(anvil_cuda_check_same_shape(a, norm, "add_rmsnorm norm"));
    TRY(anvil_cuda_check_vector(w, a->shape[1], "add_rmsnorm weight"));
    CHECK(a->shape[0] == 0 || (norm->data != a->data && norm->data != b->data && norm->data != sum->data),
          ANVIL_ERR_INVALID_ARG, "add_rmsnorm: norm must not alias a, b or sum");
    TRY(anvil_cuda_use(cb));
    return anvil_cuda_launch_add_rmsnorm(cb->stream, cb->pdl, a->data, b->data, w->data, w->dtype, sum->data,
                                         norm->data, cb->ops.act_dtype, a->shape[0], a->shape[1], eps);
}

/* Whether x [T, K] w^T -> out can take the GEMV kernels directly. */
static int gemv_direct(const anvil_cuda_backend *cb, const anvil_tensor *x, const anvil_tensor *w,
                       const anvil_tensor *out)
{
    const anvil_dtype dt = cb->ops.act_dtype;
    return cb->knobs.matmul_gemv != 2 && !cb->knobs.matmul_simt && w != NULL && w->dtype == dt &&
           w->n_dims == 2 && w->shape[1] == x->shape[1] && out->shape[0] == x->shape[0] &&
           out->shape[1] == w->shape[0] && out->data != x->data &&
           anvil_cuda_gemv_ok(dt, x->shape[0], x->shape[1], x->data, w->data, out->data);
}

static int bias_ok(const anvil_tensor *bias, int64_t n)
{
    return bias == NULL ||
           (bias->data != NULL && anvil_cuda_is_float_dtype(bias->dtype) && anvil_tensor_numel(bias) == n);
}

anvil_status anvil_cuda_op_matmul_multi(anvil_backend *be, const anvil_tensor *x, int n,
                                        const anvil_tensor *const *w, const anvil_tensor *const *bias,
                                        anvil_tensor *const *out)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    CHECK(n >= 1 && n <= ANVIL_MATMUL_MULTI_MAX, ANVIL_ERR_INVALID_ARG, "matmul_multi: %d matrices", n);
    TRY(anvil_cuda_check_act(cb, x, "matmul_multi x"));
    int direct = 1;
    for (int i = 0; i < n; i++) {
        TRY(anvil_cuda_check_act(cb, out[i], "matmul_multi out"));
        direct = direct && gemv_direct(cb, x, w[i], out[i]) && bias_ok(bias[i], w[i]->shape[0]);
    }
    if (!direct) {
        for (int i = 0; i < n; i++)
            TRY(anvil_cuda_op_matmul(be, x, w[i], bias[i], out[i]));
        return ANVIL_OK;
    }
    const void *wp[ANVIL_MATMUL_MULTI_MAX], *bp[ANVIL_MATMUL_MULTI_MAX];
    void *op[ANVIL_MATMUL_MULTI_MAX];
    anvil_dtype bdt[ANVIL_MATMUL_MULTI_MAX];
    int64_t cols[ANVIL_MATMUL_MULTI_MAX];
    for (int i = 0; i < n; i++) {
        wp[i] = w[i]->data;
        bp[i] = bias[i] ? bias[i]->data : NULL;
        bdt[i] = bias[i] ? bias[i]->dtype : ANVIL_DTYPE_F32;
        op[i] = out[i]->data;
        cols[i] = w[i]->shape[0];
    }
    if (x->shape[0] == 0)
        return ANVIL_OK;
    TRY(anvil_cuda_use(cb));
    return anvil_cuda_launch_gemv_multi(cb->stream, cb->pdl, x->data, n, wp, bp, bdt, op, cols, cb->ops.act_dtype,
                                        x->shape[0], x->shape[1]);
}

anvil_status anvil_cuda_op_matmul_silu_mul(anvil_backend *be, const anvil_tensor *x, const anvil_tensor *wg,
                                           const anvil_tensor *bg, const anvil_tensor *wu,
                                           const anvil_tensor *bu, anvil_tensor *gate, anvil_tensor *up,
                                           anvil_tensor *out)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    TRY(anvil_cuda_check_act(cb, x, "matmul_silu_mul x"));
    TRY(anvil_cuda_check_act(cb, out, "matmul_silu_mul out"));
    if (!(gemv_direct(cb, x, wg, out) && gemv_direct(cb, x, wu, out) && bias_ok(bg, wg->shape[0]) &&
          bias_ok(bu, wu->shape[0]))) {
        TRY(anvil_cuda_op_matmul(be, x, wg, bg, gate));
        TRY(anvil_cuda_op_matmul(be, x, wu, bu, up));
        return anvil_cuda_op_silu_mul(be, gate, up, out);
    }
    if (x->shape[0] == 0)
        return ANVIL_OK;
    TRY(anvil_cuda_use(cb));
    return anvil_cuda_launch_gemv_silu_mul(cb->stream, cb->pdl, x->data, wg->data, bg ? bg->data : NULL,
                                           bg ? bg->dtype : ANVIL_DTYPE_F32, wu->data, bu ? bu->data : NULL,
                                           bu ? bu->dtype : ANVIL_DTYPE_F32, out->data, cb->ops.act_dtype,
                                           x->shape[0], x->shape[1], wg->shape[0]);
}
