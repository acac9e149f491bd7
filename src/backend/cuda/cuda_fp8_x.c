/*
 * Shared fp8 activations (docs/cuda-backend.md, "Quantized weights"): the
 * fp8 codes and row scales of one x [T, K] that several W8A8 matmuls on
 * cuBLASLt's FP8 GEMM read (q/k/v; gate/up), made once instead of once a
 * matmul, and where an add + rmsnorm comes before them, made by the norm
 * kernel itself (cuda_add_rmsnorm.cu) with no launch of their own.
 *
 * The fused ops of cuda_fused.c open a share for x around the matmuls of x
 * they run and close it after; it never outlives the op call, since x's
 * buffer belongs to the runtime's plan and a later op rewrites it. Inside,
 * the first matmul that takes the FP8 GEMM (cuda_matmul_quant.c, path 2)
 * quantizes x into the share with the launch it would otherwise make into
 * its own scratch, and the others read those codes; or the norm filled it
 * before any matmul ran. Either way the codes are the ones each matmul
 * would have made (the same kernel arithmetic on the same x), so results
 * equal the unshared path's to the bit (tests/cuda/test_cuda_fp8_norm.c);
 * the knob fp8_act_share = 2 keeps the share closed for comparisons.
 *
 * A matmul of the group with another quantization of x (another act
 * scheme, static scale or perm) does not match the share and makes its
 * own codes. The share's buffer is separate from q_scratch, which other
 * paths of the same group (the dequantizing fallback) overwrite.
 */
#include <string.h>

#include "backend/cuda/cuda_internal.h"

int anvil_cuda_fp8_x_open(anvil_cuda_backend *cb, const anvil_tensor *x)
{
    anvil_cuda_fp8_x *s = &cb->fp8_x;
    if (cb->knobs.fp8_act_share == 2 || s->x != NULL || x == NULL || x->data == NULL || x->n_dims != 2)
        return 0;
    memset(s, 0, sizeof *s);
    s->x = x->data;
    s->T = x->shape[0];
    s->K = x->shape[1];
    return 1;
}

void anvil_cuda_fp8_x_close(anvil_cuda_backend *cb)
{
    memset(&cb->fp8_x, 0, sizeof cb->fp8_x);
}

/* Whether the share is open for x [T, K]. */
static int holds(const anvil_cuda_fp8_x *s, const anvil_tensor *x)
{
    return s->x != NULL && s->x == x->data && x->n_dims == 2 && s->T == x->shape[0] && s->K == x->shape[1];
}

/* Whether codes made under the share's quantization are q's. */
static int same_quant(const anvil_cuda_fp8_x *s, const anvil_quant *q)
{
    return s->act == (int)q->act && s->perm == q->perm &&
           (q->act != ANVIL_QUANT_ACT_FP8_STATIC || s->input_scale == q->input_scale);
}

/* The share's buffer for [T, K]: codes, then the row scales 256 bytes on. */
static anvil_status reserve(anvil_cuda_backend *cb)
{
    anvil_cuda_fp8_x *s = &cb->fp8_x;
    const size_t codes = ((size_t)(s->T * s->K) + 255) / 256 * 256;
    TRY(anvil_cuda_reserve(cb, &cb->fp8_x_buf, &cb->fp8_x_bytes, codes + (size_t)s->T * sizeof(float),
                           "matmul: shared fp8 activations buffer"));
    s->codes = cb->fp8_x_buf;
    s->sx = (float *)(void *)((char *)cb->fp8_x_buf + codes);
    return ANVIL_OK;
}

static void mark_made(anvil_cuda_fp8_x *s, const anvil_quant *q)
{
    s->made = 1;
    s->act = (int)q->act;
    s->input_scale = q->input_scale;
    s->perm = q->perm;
}

anvil_status anvil_cuda_fp8_x_get(anvil_cuda_backend *cb, const anvil_tensor *x, const anvil_quant *q,
                                  const void **codes, const float **sx)
{
    anvil_cuda_fp8_x *s = &cb->fp8_x;
    *codes = NULL;
    *sx = NULL;
    if (!holds(s, x) || q->act == ANVIL_QUANT_ACT_NONE || s->T <= 0 || s->K <= 0)
        return ANVIL_OK;
    if (s->made) {
        if (same_quant(s, q)) {
            *codes = s->codes;
            *sx = s->sx;
            cb->fp8_x_reused++;
        }
        return ANVIL_OK;
    }
    TRY(reserve(cb));
    TRY(anvil_cuda_launch_quant_act(cb->stream, anvil_cuda_pdl(cb), x->data, cb->ops.act_dtype, q->perm, (int)q->act,
                                    q->input_scale, s->T, s->K, s->codes, ANVIL_DTYPE_F8_E4M3, s->sx, cb->d_err));
    mark_made(s, q);
    *codes = s->codes;
    *sx = s->sx;
    cb->fp8_x_quant_made++;
    return ANVIL_OK;
}

anvil_status anvil_cuda_fp8_x_fill(anvil_cuda_backend *cb, const anvil_quant *q, void **codes, float **sx)
{
    anvil_cuda_fp8_x *s = &cb->fp8_x;
    CHECK(s->x != NULL && !s->made && s->T > 0 && s->K > 0 && q->act != ANVIL_QUANT_ACT_NONE, ANVIL_ERR_INTERNAL,
          "shared fp8 activations: nothing open to fill");
    TRY(reserve(cb));
    mark_made(s, q);
    *codes = s->codes;
    *sx = s->sx;
    cb->fp8_x_norm_made++;
    return ANVIL_OK;
}
