/*
 * The fused ops of backend.h on CUDA (host side): add + rmsnorm in one
 * kernel; the matmuls of one input (q, k, v) as one GEMV launch, and gate +
 * up + silu_mul as one GEMV launch, for the 1..4 rows of small decode
 * steps. Larger steps (prefill), f32, or weights in another dtype take the
 * separate ops: there a GEMM's cost is its arithmetic, not its launch.
 * Quantized weights: the matmuls of one input as one quantized GEMV launch
 * (gate + up with the silu_mul in it) where that kernel takes them
 * (anvil_cuda_matmul_quant_multi), else the separate ops; those of fp8
 * W8A8 weights on the FP8 GEMM (prefill) share one quantization of the
 * input, which the add + rmsnorm before them makes where the op has it
 * (cuda_fp8_x.c).
 * (rope + KV write is the attention op's: cuda_attention.c.)
 */
#include <string.h>

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
    return anvil_cuda_launch_add_rmsnorm(cb->stream, anvil_cuda_pdl(cb), a->data, b->data, w->data, w->dtype, sum->data,
                                         norm->data, cb->ops.act_dtype, a->shape[0], a->shape[1], eps);
}

/* Whether the weight's matmuls quantize x to fp8 (W8A8): the shared codes
 * are worth opening for them. */
static int fp8_act(const anvil_tensor *w)
{
    return w != NULL && w->quant != NULL && w->quant->act != ANVIL_QUANT_ACT_NONE;
}

/* Whether x [T, K] w^T -> out can take the GEMV kernels directly. */
static int gemv_direct(const anvil_cuda_backend *cb, const anvil_tensor *x, const anvil_tensor *w,
                       const anvil_tensor *out)
{
    const anvil_dtype dt = cb->ops.act_dtype;
    return cb->knobs.matmul_gemv != 2 && !cb->knobs.matmul_simt && w != NULL && w->dtype == dt && w->quant == NULL &&
           w->n_dims == 2 && w->shape[1] == x->shape[1] && out->shape[0] == x->shape[0] &&
           out->shape[1] == w->shape[0] && out->data != x->data &&
           anvil_cuda_gemv_ok(dt, x->shape[0], x->shape[1], x->data, w->data, out->data);
}

static int bias_ok(const anvil_tensor *bias, int64_t n)
{
    return bias == NULL ||
           (bias->data != NULL && anvil_cuda_is_float_dtype(bias->dtype) && anvil_tensor_numel(bias) == n);
}

/* matmul_multi off the plain GEMV: the quantized GEMV's one launch where
 * it takes the group, else a matmul each (those on the FP8 GEMM read the
 * shared codes of x, if open). */
static anvil_status matmul_multi_separate(anvil_cuda_backend *cb, const anvil_tensor *x, int n,
                                          const anvil_tensor *const *w, const anvil_tensor *const *bias,
                                          anvil_tensor *const *out)
{
    if (w[0] != NULL && w[0]->quant != NULL) { /* quantized: one GEMV launch where it takes them */
        int done = 0;
        TRY(anvil_cuda_matmul_quant_multi(cb, x, n, w, bias, out, 0, &done));
        if (done)
            return ANVIL_OK;
    }
    for (int i = 0; i < n; i++)
        TRY(anvil_cuda_op_matmul(&cb->be, x, w[i], bias[i], out[i]));
    return ANVIL_OK;
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
        const int shared = fp8_act(w[0]) && anvil_cuda_fp8_x_open(cb, x);
        const anvil_status st = matmul_multi_separate(cb, x, n, w, bias, out);
        if (shared)
            anvil_cuda_fp8_x_close(cb);
        return st;
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
    return anvil_cuda_launch_gemv_multi(cb->stream, anvil_cuda_pdl(cb), x->data, n, wp, bp, bdt, op, cols, cb->ops.act_dtype,
                                        x->shape[0], x->shape[1]);
}

/* matmul_silu_mul off the plain GEMV: the quantized GEMV's one launch
 * where it takes gate and up, else matmul, matmul, silu_mul (the matmuls
 * on the FP8 GEMM read the shared codes of x, if open). */
static anvil_status silu_mul_separate(anvil_cuda_backend *cb, const anvil_tensor *x, const anvil_tensor *wg,
                                      const anvil_tensor *bg, const anvil_tensor *wu, const anvil_tensor *bu,
                                      anvil_tensor *gate, anvil_tensor *up, anvil_tensor *out)
{
    if (wg != NULL && wg->quant != NULL) { /* quantized: gate, up and silu in one GEMV launch where it takes them */
        TRY(anvil_cuda_check_act(cb, up, "matmul_silu_mul up"));
        const anvil_tensor *w2[2] = {wg, wu}, *b2[2] = {bg, bu};
        anvil_tensor *o2[2] = {out, up};
        int done = 0;
        TRY(anvil_cuda_matmul_quant_multi(cb, x, 2, w2, b2, o2, 1, &done));
        if (done)
            return ANVIL_OK;
    }
    TRY(anvil_cuda_op_matmul(&cb->be, x, wg, bg, gate));
    TRY(anvil_cuda_op_matmul(&cb->be, x, wu, bu, up));
    return anvil_cuda_op_silu_mul(&cb->be, gate, up, out);
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
        const int shared = fp8_act(wg) && anvil_cuda_fp8_x_open(cb, x);
        const anvil_status st = silu_mul_separate(cb, x, wg, bg, wu, bu, gate, up, out);
        if (shared)
            anvil_cuda_fp8_x_close(cb);
        return st;
    }
    if (x->shape[0] == 0)
        return ANVIL_OK;
    TRY(anvil_cuda_use(cb));
    return anvil_cuda_launch_gemv_silu_mul(cb->stream, anvil_cuda_pdl(cb), x->data, wg->data, bg ? bg->data : NULL,
                                           bg ? bg->dtype : ANVIL_DTYPE_F32, wu->data, bu ? bu->data : NULL,
                                           bu ? bu->dtype : ANVIL_DTYPE_F32, out->data, cb->ops.act_dtype,
                                           x->shape[0], x->shape[1], wg->shape[0]);
}

/*
 * add_rmsnorm + the matmuls of its norm. For the GEMV sizes (1..4 rows,
 * weights in the activation dtype, x fitting shared memory) one launch of
 * the norm GEMV kernel (cuda_gemv_norm.cu), which never writes x;
 * otherwise, or with the knob norm_gemv = 2, add_rmsnorm into x and then the
 * matmul group (two launches at decode sizes, today's path). Where the
 * group's first matmul is fp8 W8A8 on the FP8 GEMM (prefill), the norm
 * kernel also writes x's fp8 codes and row scales into the share the
 * group's matmuls read (cuda_fp8_x.c): no quantization launch of their own.
 */

/* add_rmsnorm into x, with x's fp8 codes into the open share where w0 (the
 * group's first weight) goes to the FP8 GEMM for these rows. */
static anvil_status norm_for_group(anvil_cuda_backend *cb, const anvil_tensor *a, const anvil_tensor *b,
                                   const anvil_tensor *norm_w, float eps, anvil_tensor *sum, anvil_tensor *x,
                                   const anvil_tensor *w0, const anvil_tensor *out0)
{
    const anvil_quant *q = w0 != NULL ? w0->quant : NULL;
    if (cb->fp8_x.x == NULL || cb->fp8_x.x != x->data || cb->fp8_x.made || q == NULL ||
        q->act == ANVIL_QUANT_ACT_NONE || q->perm != NULL || x->shape[0] == 0 || out0 == NULL ||
        !anvil_cuda_matmul_quant_on_fp8_gemm(cb, x, w0, out0))
        return anvil_cuda_op_add_rmsnorm(&cb->be, a, b, norm_w, eps, sum, x);
    TRY(anvil_cuda_use(cb)); /* (the arguments checked by the caller, check_norm_args) */
    void *codes = NULL;
    float *sx = NULL;
    TRY(anvil_cuda_fp8_x_fill(cb, q, &codes, &sx));
    return anvil_cuda_launch_add_rmsnorm_quant(cb->stream, anvil_cuda_pdl(cb), a->data, b->data, norm_w->data, norm_w->dtype,
                                               sum->data, x->data, cb->ops.act_dtype, a->shape[0], a->shape[1], eps,
                                               (int)q->act, q->input_scale, codes, sx);
}

/* The checks both ops share: shapes, dtypes and the aliasing rules. */
static anvil_status check_norm_args(anvil_cuda_backend *cb, const anvil_tensor *a, const anvil_tensor *b,
                                    const anvil_tensor *norm_w, const anvil_tensor *sum, const anvil_tensor *x)
{
    TRY(anvil_cuda_check_act(cb, a, "add_rmsnorm_matmul a"));
    TRY(anvil_cuda_check_act(cb, b, "add_rmsnorm_matmul b"));
    TRY(anvil_cuda_check_act(cb, sum, "add_rmsnorm_matmul sum"));
    TRY(anvil_cuda_check_act(cb, x, "add_rmsnorm_matmul x"));
    TRY(anvil_cuda_check_same_shape(a, b, "add_rmsnorm_matmul"));
    TRY(anvil_cuda_check_same_shape(a, sum, "add_rmsnorm_matmul sum"));
    TRY(anvil_cuda_check_same_shape(a, x, "add_rmsnorm_matmul x"));
    TRY(anvil_cuda_check_vector(norm_w, a->shape[1], "add_rmsnorm_matmul norm weight"));
    CHECK(a->shape[0] == 0 || (sum->data != a->data && sum->data != b->data && x->data != a->data &&
                               x->data != b->data && x->data != sum->data),
          ANVIL_ERR_INVALID_ARG, "add_rmsnorm_matmul: sum and x must not alias a, b or each other");
    return ANVIL_OK;
}

/* out must not alias the inputs of the op (nor x, which the fallback writes). */
static anvil_status check_out_alias(const anvil_tensor *out, const anvil_tensor *a, const anvil_tensor *b,
                                    const anvil_tensor *sum, const anvil_tensor *x)
{
    CHECK(a->shape[0] == 0 || (out->data != a->data && out->data != b->data && out->data != sum->data &&
                               out->data != x->data),
          ANVIL_ERR_INVALID_ARG, "add_rmsnorm_matmul: an output aliases a, b, sum or x");
    return ANVIL_OK;
}

/* Whether the one-launch kernel takes it; *max_blocks then its wave. */
static int norm_gemv_direct(anvil_cuda_backend *cb, const anvil_tensor *a, const anvil_tensor *b,
                            const anvil_tensor *sum, int silu, int *max_blocks)
{
    const anvil_dtype dt = cb->ops.act_dtype;
    const int64_t T = a->shape[0], K = a->shape[1];
    if (cb->knobs.norm_gemv == 2 || !anvil_cuda_norm_gemv_ok(dt, T, K, a->data, b->data, sum->data))
        return 0;
    const int di = dt == ANVIL_DTYPE_BF16 ? 0 : 1;
    int *occ = &cb->norm_gemv_occupancy[di][T - 1][silu];
    int64_t *occ_k = &cb->norm_gemv_k[di][T - 1][silu];
    if (*occ == 0 || *occ_k != K) {
        *occ = anvil_cuda_norm_gemv_per_sm(dt, T, K, silu);
        *occ_k = K;
    }
    *max_blocks = *occ * cb->n_sm;
    return 1;
}

anvil_status anvil_cuda_op_add_rmsnorm_matmul_multi(anvil_backend *be, const anvil_tensor *a, const anvil_tensor *b,
                                                   const anvil_tensor *norm_w, float eps, anvil_tensor *sum,
                                                   anvil_tensor *x, int n, const anvil_tensor *const *w,
                                                   const anvil_tensor *const *bias, anvil_tensor *const *out)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    CHECK(n >= 1 && n <= ANVIL_MATMUL_MULTI_MAX, ANVIL_ERR_INVALID_ARG, "add_rmsnorm_matmul_multi: %d matrices",
          n);
    TRY(check_norm_args(cb, a, b, norm_w, sum, x));
    int direct = 1, max_blocks = 0;
    for (int i = 0; i < n; i++) {
        TRY(anvil_cuda_check_act(cb, out[i], "add_rmsnorm_matmul_multi out"));
        TRY(check_out_alias(out[i], a, b, sum, x));
        direct = direct && gemv_direct(cb, x, w[i], out[i]) && bias_ok(bias[i], w[i]->shape[0]);
    }
    if (!direct || !norm_gemv_direct(cb, a, b, sum, 0, &max_blocks)) {
        const int shared = fp8_act(w[0]) && anvil_cuda_fp8_x_open(cb, x);
        anvil_status st = norm_for_group(cb, a, b, norm_w, eps, sum, x, w[0], out[0]);
        if (st == ANVIL_OK)
            st = anvil_cuda_op_matmul_multi(be, x, n, w, bias, out);
        if (shared)
            anvil_cuda_fp8_x_close(cb);
        return st;
    }
    anvil_cuda_norm_gemv g;
    memset(&g, 0, sizeof g);
    g.a = a->data;
    g.b = b->data;
    g.norm_w = norm_w->data;
    g.norm_w_dt = norm_w->dtype;
    g.eps = eps;
    g.sum = sum->data;
    g.n_parts = n;
    for (int i = 0; i < n; i++) {
        g.w[i] = w[i]->data;
        g.bias[i] = bias[i] ? bias[i]->data : NULL;
        g.bias_dt[i] = bias[i] ? bias[i]->dtype : ANVIL_DTYPE_F32;
        g.out[i] = out[i]->data;
        g.n[i] = w[i]->shape[0];
    }
    TRY(anvil_cuda_use(cb));
    return anvil_cuda_launch_norm_gemv(cb->stream, anvil_cuda_pdl(cb), max_blocks, &g, cb->ops.act_dtype, a->shape[0],
                                       a->shape[1]);
}

anvil_status anvil_cuda_op_add_rmsnorm_matmul_silu_mul(anvil_backend *be, const anvil_tensor *a,
                                                      const anvil_tensor *b, const anvil_tensor *norm_w, float eps,
                                                      anvil_tensor *sum, anvil_tensor *x, const anvil_tensor *wg,
                                                      const anvil_tensor *bg, const anvil_tensor *wu,
                                                      const anvil_tensor *bu, anvil_tensor *gate, anvil_tensor *up,
                                                      anvil_tensor *out)
{
    anvil_cuda_backend *cb = anvil_cuda_impl(be);
    TRY(check_norm_args(cb, a, b, norm_w, sum, x));
    TRY(anvil_cuda_check_act(cb, out, "add_rmsnorm_matmul_silu_mul out"));
    TRY(check_out_alias(out, a, b, sum, x));
    int max_blocks = 0;
    if (!(gemv_direct(cb, x, wg, out) && gemv_direct(cb, x, wu, out) && wg->shape[0] == wu->shape[0] &&
          bias_ok(bg, wg->shape[0]) && bias_ok(bu, wu->shape[0]) && norm_gemv_direct(cb, a, b, sum, 1, &max_blocks))) {
        const int shared = fp8_act(wg) && anvil_cuda_fp8_x_open(cb, x);
        anvil_status st = norm_for_group(cb, a, b, norm_w, eps, sum, x, wg, gate);
        if (st == ANVIL_OK)
            st = anvil_cuda_op_matmul_silu_mul(be, x, wg, bg, wu, bu, gate, up, out);
        if (shared)
            anvil_cuda_fp8_x_close(cb);
        return st;
    }
    anvil_cuda_norm_gemv g;
    memset(&g, 0, sizeof g);
    g.a = a->data;
    g.b = b->data;
    g.norm_w = norm_w->data;
    g.norm_w_dt = norm_w->dtype;
    g.eps = eps;
    g.sum = sum->data;
    g.silu = 1;
    g.n_parts = 2;
    g.w[0] = wg->data;
    g.w[1] = wu->data;
    g.bias[0] = bg ? bg->data : NULL;
    g.bias_dt[0] = bg ? bg->dtype : ANVIL_DTYPE_F32;
    g.bias[1] = bu ? bu->data : NULL;
    g.bias_dt[1] = bu ? bu->dtype : ANVIL_DTYPE_F32;
    g.out[0] = out->data;
    g.n[0] = wg->shape[0];
    g.n[1] = wu->shape[0];
    TRY(anvil_cuda_use(cb));
    return anvil_cuda_launch_norm_gemv(cb->stream, anvil_cuda_pdl(cb), max_blocks, &g, cb->ops.act_dtype, a->shape[0],
                                       a->shape[1]);
}
