/* The layout of a moe op's scratch (backend.h, anvil_moe_scratch), shared by
 * the backends so that the runtime can size it once at load. */
#include "backend/backend.h"

#include <math.h>

#include "core/checked.h"
#include "core/error.h"

/* Appends `n` elements of 4 bytes at a 256-byte boundary; 0 on overflow. */
static int piece(size_t *at, size_t *field, int64_t n)
{
    size_t bytes;
    if (n < 0 || !anvil_mul_size_ok((size_t)n, 4, &bytes) || *at > SIZE_MAX - bytes - 256)
        return 0;
    *field = *at;
    *at = (*at + bytes + 255) / 256 * 256;
    return 1;
}

anvil_status anvil_moe_scratch_layout(int64_t n_tokens, int64_t hidden, int32_t n_experts, int32_t top_k,
                                      int64_t inter, int64_t shared_inter, anvil_moe_scratch *out)
{
    *out = (anvil_moe_scratch){0};
    CHECK(n_tokens >= 0 && hidden > 0 && n_experts > 0 && top_k > 0 && top_k <= n_experts && inter > 0 &&
              shared_inter >= 0,
          ANVIL_ERR_INVALID_ARG, "moe scratch: bad sizes");
    int64_t tk, tkh, tki, te, tis, th;
    int ok = anvil_mul_i64_ok(n_tokens, top_k, &tk) && anvil_mul_i64_ok(tk, hidden, &tkh) &&
             anvil_mul_i64_ok(tk, inter, &tki) && anvil_mul_i64_ok(n_tokens, n_experts, &te) &&
             anvil_mul_i64_ok(n_tokens, shared_inter, &tis) && anvil_mul_i64_ok(n_tokens, hidden, &th);
    size_t at = 0;
    ok = ok && piece(&at, &out->logits, te) && piece(&at, &out->topk_ids, tk) && piece(&at, &out->topk_w, tk) &&
         piece(&at, &out->offsets, (int64_t)n_experts + 1) && piece(&at, &out->active, (int64_t)n_experts + 1) &&
         piece(&at, &out->tiles, (int64_t)n_experts + 1) &&
         piece(&at, &out->order, tk) && piece(&at, &out->row_of, tk) && piece(&at, &out->xs, tkh) &&
         piece(&at, &out->g, tki) && piece(&at, &out->u, tki) && piece(&at, &out->a, tki) &&
         piece(&at, &out->y, tkh) && piece(&at, &out->sg, tis) && piece(&at, &out->su, tis) &&
         piece(&at, &out->sa, tis) && piece(&at, &out->sy, shared_inter > 0 ? th : 0) &&
         piece(&at, &out->sgate, n_tokens);
    CHECK(ok, ANVIL_ERR_UNSUPPORTED, "moe scratch: %lld tokens x %d experts of %lld overflow", (long long)n_tokens,
          n_experts, (long long)inter);
    out->bytes = at;
    return ANVIL_OK;
}

/* A weight of shape [d0, d1]: dense f32/bf16/f16, or with quant_ok 1
 * quantized in the canonical form (docs/quantization.md: fp8, int8 or int4
 * with per-row or per-group scales), whole rows per expert. */
static anvil_status check_weight(const anvil_tensor *w, int64_t d0, int64_t d1, const char *what, int quant_ok)
{
    CHECK(w != NULL && w->data != NULL && w->n_dims == 2 && w->shape[0] == d0 && w->shape[1] == d1,
          ANVIL_ERR_INVALID_ARG, "moe: %s must be a [%lld, %lld] weight", what, (long long)d0, (long long)d1);
    if (w->quant == NULL) {
        CHECK(w->dtype == ANVIL_DTYPE_F32 || w->dtype == ANVIL_DTYPE_BF16 || w->dtype == ANVIL_DTYPE_F16,
              ANVIL_ERR_UNSUPPORTED, "moe: %s of dtype %s (f32, bf16 or f16, or quantized with scales)", what,
              anvil_dtype_name(w->dtype));
        return ANVIL_OK;
    }
    /* quant_ok -1: a weight that stays unquantized (the router, the shared gate) */
    CHECK(quant_ok >= 0, ANVIL_ERR_INVALID_ARG,
          "moe: %s is quantized (%s): the router and the shared expert's gate stay unquantized", what,
          anvil_dtype_name(w->dtype));
    CHECK(quant_ok > 0, ANVIL_ERR_UNSUPPORTED, "moe: %s is quantized (%s), which this backend's moe op does not take",
          what, anvil_dtype_name(w->dtype));
    const anvil_quant *q = w->quant;
    CHECK(w->dtype == ANVIL_DTYPE_F8_E4M3 || w->dtype == ANVIL_DTYPE_I8 || w->dtype == ANVIL_DTYPE_U4,
          ANVIL_ERR_INVALID_ARG, "moe: %s has scales but is %s (fp8, int8 or int4)", what,
          anvil_dtype_name(w->dtype));
    CHECK(q->scales != NULL && q->group >= 0 && (q->group == 0 || d1 % q->group == 0), ANVIL_ERR_INVALID_ARG,
          "moe: %s [%lld, %lld]: scales missing or group %d not dividing its columns", what, (long long)d0,
          (long long)d1, q->group);
    /* an expert's rows of int4 start on a byte */
    CHECK(w->dtype != ANVIL_DTYPE_U4 || d1 % 2 == 0, ANVIL_ERR_INVALID_ARG,
          "moe: %s is int4 of %lld columns (an even number: whole bytes per row)", what, (long long)d1);
    CHECK(q->zeros == NULL || w->dtype == ANVIL_DTYPE_U4, ANVIL_ERR_INVALID_ARG,
          "moe: %s has zero points but is %s (only int4 has them)", what, anvil_dtype_name(w->dtype));
    return ANVIL_OK;
}

anvil_tensor anvil_moe_weight_rows(const anvil_tensor *w, int64_t row0, int64_t rows, anvil_quant *q)
{
    const int64_t K = w->shape[1];
    const size_t row_bytes = w->dtype == ANVIL_DTYPE_U4 ? (size_t)(K / 2) : (size_t)K * anvil_dtype_size(w->dtype);
    anvil_tensor t = anvil_tensor_2d(w->dtype, rows, K, (char *)w->data + (size_t)row0 * row_bytes);
    if (w->quant != NULL) {
        const int64_t g = w->quant->group > 0 ? K / w->quant->group : 1; /* scales a row */
        *q = *w->quant;
        q->scales = w->quant->scales + row0 * g;
        q->zeros = w->quant->zeros != NULL ? w->quant->zeros + row0 * g : NULL;
        t.quant = q;
    }
    return t;
}

static anvil_status check_args(const anvil_moe_args *a, anvil_moe_scratch *layout, int quant_ok);

anvil_status anvil_moe_check_args(const anvil_moe_args *a, anvil_moe_scratch *layout)
{
    return check_args(a, layout, 0);
}

anvil_status anvil_moe_check_args_quant(const anvil_moe_args *a, anvil_moe_scratch *layout)
{
    return check_args(a, layout, 1);
}

static anvil_status check_args(const anvil_moe_args *a, anvil_moe_scratch *layout, int quant_ok)
{
    CHECK(a != NULL && a->x != NULL && a->out != NULL && a->x->n_dims == 2 && a->out->n_dims == 2 &&
              a->x->shape[0] == a->out->shape[0] && a->x->shape[1] == a->out->shape[1] && a->x->data != NULL &&
              a->out->data != NULL && a->out->data != a->x->data,
          ANVIL_ERR_INVALID_ARG, "moe: x and out must be distinct [T, H] activations");
    const int64_t T = a->x->shape[0], H = a->x->shape[1], E = a->n_experts, I = a->inter, Is = a->shared_inter;
    CHECK(T >= 0 && H > 0 && E > 0 && a->top_k > 0 && a->top_k <= E && I > 0 && Is >= 0 &&
              (a->norm_topk_prob == 0 || a->norm_topk_prob == 1),
          ANVIL_ERR_INVALID_ARG, "moe: top_k %d of %lld experts, intermediate %lld", a->top_k, (long long)E,
          (long long)I);
    TRY(anvil_moe_scratch_layout(T, H, a->n_experts, a->top_k, I, Is, layout));
    int64_t e2i, eh;
    CHECK(anvil_mul_i64_ok(E, 2 * I, &e2i) && anvil_mul_i64_ok(E, H, &eh), ANVIL_ERR_INVALID_ARG,
          "moe: stacked sizes overflow");
    TRY(check_weight(a->router, E, H, "the router", -quant_ok));
    TRY(check_weight(a->gate_up, e2i, H, "gate_up", quant_ok));
    TRY(check_weight(a->down, eh, I, "down", quant_ok));
    CHECK((Is > 0) == (a->shared_gate_up != NULL), ANVIL_ERR_INVALID_ARG,
          "moe: shared_inter %lld with%s shared weights", (long long)Is, a->shared_gate_up ? "" : "out");
    if (Is > 0) {
        TRY(check_weight(a->shared_gate_up, 2 * Is, H, "the shared expert's gate_up", quant_ok));
        TRY(check_weight(a->shared_down, H, Is, "the shared expert's down", quant_ok));
        if (a->shared_gate != NULL) /* NULL: ungated (DeepSeek) */
            TRY(check_weight(a->shared_gate, 1, H, "the shared expert's gate", -quant_ok));
    }
    const int32_t groups = a->n_group > 1 ? a->n_group : 1;
    CHECK(E % groups == 0 &&
              (groups == 1 || (a->topk_group >= 1 && a->topk_group <= groups &&
                               (int64_t)a->topk_group * (E / groups) >= a->top_k)) &&
              isfinite(a->routed_scale) && a->routed_scale >= 0.0f,
          ANVIL_ERR_INVALID_ARG, "moe: %d groups keeping %d for top-%d of %lld experts, scale %g", a->n_group,
          a->topk_group, a->top_k, (long long)E, (double)a->routed_scale);
    CHECK(T == 0 || (a->scratch != NULL && a->scratch_bytes >= layout->bytes), ANVIL_ERR_INVALID_ARG,
          "moe: %zu scratch bytes for %lld tokens need %zu", a->scratch_bytes, (long long)T, layout->bytes);
    return ANVIL_OK;
}
