/*
 * The build plan (build_plan.h): which weights share a stored tensor, in
 * which kind, and how each stored tensor's bytes are prepared from the
 * checkpoint through the weights' recipes.
 */
#include "builder/build_plan.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/checked.h"
#include "core/error.h"
#include "builder/prequant.h"
#include "builder/quantize.h"
#include "builder/random_weights.h"

/* Members of a fused stored tensor start at multiples of this many bytes,
 * so that a view into it is as aligned as an allocation (vector loads). */
#define FUSE_ALIGN 256

struct anvil_build_scratch {
    void *src;  /* [ANVIL_BUILD_CHUNK bytes] source bytes */
    float *f32; /* [ANVIL_BUILD_CHUNK bytes] the same as f32 */
    void *rows; /* [rows_cap bytes] a converter's (anvil_build_scratch_rows) */
    size_t rows_cap;
};

/* Elements of a piece converted at once: its f32 form fills the scratch. */
#define PIECE_ELEMS ((int64_t)(ANVIL_BUILD_CHUNK / sizeof(float)))

anvil_status anvil_build_scratch_create(anvil_build_scratch **out)
{
    *out = NULL;
    anvil_build_scratch *s = calloc(1, sizeof *s);
    CHECK(s != NULL, ANVIL_ERR_OOM, "out of memory");
    s->src = malloc(ANVIL_BUILD_CHUNK);
    s->f32 = malloc(ANVIL_BUILD_CHUNK);
    if (s->src == NULL || s->f32 == NULL) {
        anvil_build_scratch_free(s);
        return ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory for the build's buffers");
    }
    *out = s;
    return ANVIL_OK;
}

void anvil_build_scratch_free(anvil_build_scratch *s)
{
    if (s == NULL)
        return;
    free(s->src);
    free(s->f32);
    free(s->rows);
    free(s);
}

void *anvil_build_scratch_rows(anvil_build_scratch *s, size_t bytes)
{
    if (bytes > 2 * ANVIL_BUILD_CHUNK)
        return NULL;
    if (s->rows_cap < bytes) {
        free(s->rows);
        s->rows_cap = 0;
        s->rows = malloc(bytes);
        if (s->rows == NULL)
            return NULL;
        s->rows_cap = bytes;
    }
    return s->rows;
}

size_t anvil_stored_kind_bytes(anvil_dtype kind, int64_t n)
{
    if (n < 0)
        return 0;
    if (kind == ANVIL_DTYPE_U4)
        return (size_t)(n / 2 + n % 2);
    size_t bytes;
    return anvil_mul_size_ok((size_t)n, anvil_dtype_size(kind), &bytes) ? bytes : 0;
}

int anvil_stored_kind_is_float(anvil_dtype kind)
{
    return kind == ANVIL_DTYPE_F32 || kind == ANVIL_DTYPE_BF16 || kind == ANVIL_DTYPE_F16;
}

int anvil_stored_kind_is_quantized(anvil_dtype kind)
{
    return kind == ANVIL_DTYPE_F8_E4M3 || kind == ANVIL_DTYPE_I8 || kind == ANVIL_DTYPE_U4;
}

void anvil_build_plan_free(anvil_build_plan *p)
{
    if (p == NULL)
        return;
    for (int32_t i = 0; i < p->n_stored; i++)
        free(p->stored[i].name);
    free(p->stored);
    free(p->members);
    free(p->weight_stored);
    free(p->weight_offset);
    free(p->fuse);
    free(p);
}

anvil_status anvil_build_plan_alloc(int32_t n_weights, int32_t n_ops, int32_t n_stored,
                                    anvil_build_plan **out)
{
    *out = NULL;
    CHECK(n_weights >= 0 && n_ops >= 0 && n_stored >= 0 && n_weights <= INT32_MAX / ANVIL_PLAN_STORED_PER_WEIGHT &&
              n_stored <= n_weights * ANVIL_PLAN_STORED_PER_WEIGHT,
          ANVIL_ERR_INVALID_ARG, "a plan of %d stored tensors for %d weights", n_stored, n_weights);
    anvil_build_plan *p = calloc(1, sizeof *p);
    CHECK(p != NULL, ANVIL_ERR_OOM, "out of memory");
    p->n_weights = n_weights;
    p->n_ops = n_ops;
    p->n_stored = n_stored;
    /* room for the most a plan can have: each weight stored alone, quantized, with every companion */
    p->stored = calloc((size_t)(n_weights ? n_weights : 1) * ANVIL_PLAN_STORED_PER_WEIGHT, sizeof *p->stored);
    p->members = calloc((size_t)(n_weights ? n_weights : 1), sizeof *p->members);
    p->weight_stored = calloc((size_t)(n_weights ? n_weights : 1), sizeof *p->weight_stored);
    p->weight_offset = calloc((size_t)(n_weights ? n_weights : 1), sizeof *p->weight_offset);
    p->fuse = calloc((size_t)(n_ops ? n_ops : 1), sizeof *p->fuse);
    if (!p->stored || !p->members || !p->weight_stored || !p->weight_offset || !p->fuse) {
        p->n_stored = 0; /* names not allocated yet */
        anvil_build_plan_free(p);
        return ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory for a plan of %d weights", n_weights);
    }
    *out = p;
    return ANVIL_OK;
}

/* ------------------------------------------------------------ recipes against the checkpoint */

static int64_t w_numel(const anvil_net_weight *w)
{
    return w->n_dims == 1 ? w->shape[0] : w->shape[0] * w->shape[1];
}

static anvil_status shape_error(const anvil_net_weight *w, const anvil_st_tensor *st, const char *why)
{
    char have[96], want[96];
    anvil_shape_str(st->shape, st->n_dims, have, sizeof have);
    anvil_shape_str(w->shape, w->n_dims, want, sizeof want);
    if (w->recipe == ANVIL_RECIPE_TENSOR)
        return ANVIL_FAIL(ANVIL_ERR_FORMAT, "tensor '%s' has shape %s but the config implies %s", st->name,
                          have, want);
    return ANVIL_FAIL(ANVIL_ERR_FORMAT, "tensor '%s' has shape %s, which cannot give '%s' of shape %s (%s)",
                      st->name, have, w->name, want, why);
}

static anvil_status find_source(const anvil_checkpoint *ck, const char *name, const anvil_st_tensor **out)
{
    const anvil_st_tensor *st = anvil_checkpoint_find(ck, name);
    CHECK(st != NULL, ANVIL_ERR_NOT_FOUND, "missing tensor '%s' in the checkpoint", name);
    CHECK(st->dtype == ANVIL_DTYPE_F32 || st->dtype == ANVIL_DTYPE_BF16 || st->dtype == ANVIL_DTYPE_F16,
          ANVIL_ERR_UNSUPPORTED, "tensor '%s' has dtype %s; weights must be f32, f16 or bf16", name,
          anvil_dtype_name(st->dtype));
    *out = st;
    return ANVIL_OK;
}

/* Checks weight w's recipe against ck; *dtype: its sources' dtype. */
static anvil_status check_recipe(const anvil_net_weight *w, const anvil_checkpoint *ck, anvil_dtype *dtype)
{
    const anvil_st_tensor *st = NULL;
    TRY(find_source(ck, w->sources[0], &st));
    *dtype = st->dtype;
    switch (w->recipe) {
    case ANVIL_RECIPE_TENSOR: {
        int same = st->n_dims == w->n_dims;
        for (int d = 0; same && d < w->n_dims; d++)
            same = st->shape[d] == w->shape[d];
        return same ? ANVIL_OK : shape_error(w, st, "");
    }
    case ANVIL_RECIPE_SLICE: {
        if (st->n_dims == w->n_dims + 1) { /* one matrix of a stack */
            if (w->axis != 0)
                return shape_error(w, st, "a stack is sliced along axis 0");
            for (int d = 0; d < w->n_dims; d++)
                if (st->shape[d + 1] != w->shape[d])
                    return shape_error(w, st, "the stack's matrices have another shape");
            if (w->start >= st->shape[0])
                return shape_error(w, st, "the index is past the stack");
            return ANVIL_OK;
        }
        if (st->n_dims != w->n_dims || w->axis >= w->n_dims)
            return shape_error(w, st, "ranks differ");
        for (int d = 0; d < w->n_dims; d++)
            if (d != w->axis && st->shape[d] != w->shape[d])
                return shape_error(w, st, "the other axis differs");
        if (w->start > st->shape[w->axis] || w->shape[w->axis] > st->shape[w->axis] - w->start)
            return shape_error(w, st, "the slice runs past the tensor");
        return ANVIL_OK;
    }
    case ANVIL_RECIPE_TRANSPOSE: {
        if (st->n_dims != 2 || w->n_dims != 2)
            return shape_error(w, st, "a transpose takes and gives a matrix");
        if (w->part_len == 0 ? st->shape[0] != w->shape[1]
                             : w->part_len != w->shape[1] || w->part_start > st->shape[0] - w->part_len)
            return shape_error(w, st, "the source's rows are the weight's columns");
        if (w->start > st->shape[1] || w->shape[0] > st->shape[1] - w->start)
            return shape_error(w, st, "the columns run past the tensor");
        return ANVIL_OK;
    }
    case ANVIL_RECIPE_CONCAT: {
        if (w->axis >= w->n_dims)
            return shape_error(w, st, "no such axis");
        int64_t sum = 0;
        if (w->part_len > 0 && (w->axis != 0 || w->part_axis >= w->n_dims))
            return shape_error(w, st, "a concatenation of parts is along axis 0, cut along an axis it has");
        for (int32_t k = 0; k < w->n_sources; k++) {
            if (k > 0)
                TRY(find_source(ck, w->sources[k], &st));
            CHECK(st->dtype == *dtype, ANVIL_ERR_FORMAT, "'%s' concatenates tensors of dtypes %s and %s",
                  w->name, anvil_dtype_name(*dtype), anvil_dtype_name(st->dtype));
            if (st->n_dims != w->n_dims)
                return shape_error(w, st, "ranks differ");
            /* each source's extent in the weight: its part along part_axis */
            int64_t ext[2] = {st->shape[0], st->n_dims == 2 ? st->shape[1] : 0};
            if (w->part_len > 0) {
                if (w->part_start > st->shape[w->part_axis] - w->part_len)
                    return shape_error(w, st, "the part runs past a source");
                ext[w->part_axis] = w->part_len;
                if (ext[0] * w->n_sources != w->shape[0]) /* (fill_member's rows a source) */
                    return shape_error(w, st, "the parts' rows differ");
            }
            for (int d = 0; d < w->n_dims; d++)
                if (d != w->axis && ext[d] != w->shape[d])
                    return shape_error(w, st, "the other axis differs");
            sum += ext[w->axis];
        }
        if (sum != w->shape[w->axis])
            return shape_error(w, st, "the parts do not add up");
        return ANVIL_OK;
    }
    }
    return ANVIL_FAIL(ANVIL_ERR_INTERNAL, "weight '%s': unknown recipe %d", w->name, (int)w->recipe);
}

/* ------------------------------------------------------------ the plan */

/* The weight of linear op i (its matrix), or -1. */
static int32_t linear_weight(const anvil_network *net, int32_t i)
{
    const anvil_net_op *op = anvil_network_op(net, i);
    return op && op->kind == ANVIL_OP_LINEAR ? op->weights[0] : -1;
}

/* The members' names as one: "model.layers.0.self_attn.{q,k,v}_proj.weight"
 * (their common prefix, up to a '.', and suffix around the parts that
 * differ); NULL when out of memory. */
static char *joined_name(const anvil_network *net, const int32_t *ws, int32_t n)
{
    const char *first = anvil_network_weight(net, ws[0])->name;
    size_t pre = strlen(first), suf = strlen(first);
    for (int32_t k = 1; k < n; k++) {
        const char *s = anvil_network_weight(net, ws[k])->name;
        size_t i = 0, ls = strlen(s), lf = strlen(first);
        while (i < pre && s[i] == first[i])
            i++;
        pre = i;
        size_t j = 0;
        while (j < suf && j < ls && j < lf && s[ls - 1 - j] == first[lf - 1 - j])
            j++;
        suf = j;
    }
    while (pre > 0 && first[pre - 1] != '.')
        pre--; /* the prefix ends at a '.' */
    size_t len = 3;
    for (int32_t k = 0; k < n; k++)
        len += strlen(anvil_network_weight(net, ws[k])->name) + 1;
    char *out = malloc(len);
    if (out == NULL)
        return NULL;
    size_t at = (size_t)snprintf(out, len, "%.*s{", (int)pre, first);
    for (int32_t k = 0; k < n; k++) {
        const char *s = anvil_network_weight(net, ws[k])->name;
        const size_t ls = strlen(s);
        const size_t mid = ls >= pre + suf ? ls - pre - suf : 0; /* suffix and prefix may overlap in s */
        at += (size_t)snprintf(out + at, len - at, "%s%.*s", k ? "," : "", (int)mid, s + pre);
    }
    snprintf(out + at, len - at, "}%s", first + strlen(first) - suf);
    return out;
}

/* Appends a stored tensor of the given members (in order, stacked along axis 0). */
static anvil_status add_stored(anvil_build_plan *p, const anvil_network *net, const int32_t *ws, int32_t n,
                               anvil_dtype kind, int32_t *n_members)
{
    anvil_stored *st = &p->stored[p->n_stored];
    memset(st, 0, sizeof *st);
    st->name = n == 1 ? strdup(anvil_network_weight(net, ws[0])->name) : joined_name(net, ws, n);
    CHECK(st->name != NULL, ANVIL_ERR_OOM, "out of memory");
    const anvil_net_weight *w0 = anvil_network_weight(net, ws[0]);
    st->kind = kind;
    st->shard = (anvil_shard){.rank = 0, .count = 1, .axis = -1};
    st->n_dims = w0->n_dims;
    st->shape[1] = w0->n_dims > 1 ? w0->shape[1] : 0;
    st->first = *n_members;
    st->n = n;
    int64_t rows = 0, elems = 0;
    for (int32_t k = 0; k < n; k++) {
        const anvil_net_weight *w = anvil_network_weight(net, ws[k]);
        p->members[(*n_members)++] = ws[k];
        p->weight_stored[ws[k]] = p->n_stored;
        p->weight_offset[ws[k]] = elems;
        rows += w->shape[0];
        elems += w_numel(w);
    }
    st->shape[0] = rows;
    st->role = ANVIL_STORED_WEIGHT;
    st->of = -1;
    st->q = (anvil_stored_quant){.scales = -1, .zeros = -1, .perm = -1};
    const size_t bytes = anvil_stored_kind_bytes(kind, elems);
    CHECK(bytes > 0, ANVIL_ERR_UNSUPPORTED, "weight '%s' is too large", st->name);
    st->bytes = bytes;
    CHECK(p->total_bytes <= SIZE_MAX - bytes, ANVIL_ERR_UNSUPPORTED, "the weights are too large");
    p->total_bytes += bytes;
    p->n_stored++;
    return ANVIL_OK;
}

/* Appends a companion of stored weight s (the last one added). */
static anvil_status add_companion(anvil_build_plan *p, int32_t s, anvil_stored_role role, anvil_dtype kind,
                                  int n_dims, int64_t d0, int64_t d1, int32_t n_members)
{
    static const char *const suffix[] = {"", ".scales", ".zeros", ".perm"};
    anvil_stored *t = &p->stored[p->n_stored];
    memset(t, 0, sizeof *t);
    const size_t len = strlen(p->stored[s].name) + 8;
    t->name = malloc(len);
    CHECK(t->name != NULL, ANVIL_ERR_OOM, "out of memory");
    snprintf(t->name, len, "%s%s", p->stored[s].name, suffix[role]);
    t->kind = kind;
    t->shard = p->stored[s].shard;
    t->n_dims = n_dims;
    t->shape[0] = d0;
    t->shape[1] = n_dims > 1 ? d1 : 0;
    t->first = n_members;
    t->n = 0;
    t->role = role;
    t->of = s;
    t->q = (anvil_stored_quant){.scales = -1, .zeros = -1, .perm = -1};
    t->conv = p->stored[s].conv;
    t->bytes = anvil_stored_kind_bytes(kind, d0 * (n_dims > 1 ? d1 : 1));
    CHECK(t->bytes > 0 && p->total_bytes <= SIZE_MAX - t->bytes, ANVIL_ERR_UNSUPPORTED, "'%s' is too large",
          t->name);
    p->total_bytes += t->bytes;
    p->n_stored++;
    return ANVIL_OK;
}

/* Makes stored weight s (just added, of a quantized kind) quantized by the
 * RTN converter: its scales (and for int4 its zero points) follow it. */
static anvil_status quantize_stored(anvil_build_plan *p, int32_t s, int32_t group, int32_t n_members)
{
    anvil_stored *t = &p->stored[s];
    const int64_t n = t->shape[0], k = t->shape[1];
    t->conv = &anvil_rtn_converter;
    t->q.group = t->kind == ANVIL_DTYPE_U4 ? group : 0;
    t->q.act = t->kind == ANVIL_DTYPE_F8_E4M3 ? ANVIL_QUANT_ACT_FP8_DYNAMIC : ANVIL_QUANT_ACT_NONE;
    const int64_t g = t->q.group ? k / t->q.group : 1;
    t->q.scales = p->n_stored;
    TRY(add_companion(p, s, ANVIL_STORED_SCALES, ANVIL_DTYPE_F32, t->q.group ? 2 : 1, n, g, n_members));
    if (t->kind == ANVIL_DTYPE_U4) {
        t->q.zeros = p->n_stored;
        TRY(add_companion(p, s, ANVIL_STORED_ZEROS, ANVIL_DTYPE_U8, 2, n, g, n_members));
    }
    return ANVIL_OK;
}

/* Makes stored weight s (just added: the pre-quantized weights ws[0..n))
 * filled by the pre-quantized converter, with the companions they have.
 * Fused static input scales take the members' largest (as vLLM does). */
static anvil_status prequant_stored(anvil_build_plan *p, int32_t s, const anvil_prequant_info *pq,
                                    const int32_t *ws, int32_t n, int32_t n_members)
{
    anvil_stored *t = &p->stored[s];
    const anvil_prequant_info *a = &pq[ws[0]];
    const int64_t rows = t->shape[0], k = t->shape[1];
    t->conv = &anvil_prequant_converter;
    t->q.group = a->group;
    t->q.act = a->act;
    for (int32_t m = 0; m < n; m++)
        if (pq[ws[m]].input_scale > t->q.input_scale)
            t->q.input_scale = pq[ws[m]].input_scale;
    const int64_t g = a->group ? k / a->group : 1;
    t->q.scales = p->n_stored;
    TRY(add_companion(p, s, ANVIL_STORED_SCALES, ANVIL_DTYPE_F32, a->group ? 2 : 1, rows, g, n_members));
    if (a->zeros) {
        t->q.zeros = p->n_stored;
        TRY(add_companion(p, s, ANVIL_STORED_ZEROS, ANVIL_DTYPE_U8, 2, rows, g, n_members));
    }
    if (a->perm) {
        t->q.perm = p->n_stored;
        TRY(add_companion(p, s, ANVIL_STORED_PERM, ANVIL_DTYPE_I32, 1, k, 0, n_members));
    }
    return ANVIL_OK;
}

/* The storage kind of a quantization scheme's weights. */
static anvil_dtype quant_kind(anvil_quantize q)
{
    return q == ANVIL_QUANTIZE_FP8       ? ANVIL_DTYPE_F8_E4M3
           : q == ANVIL_QUANTIZE_INT8_WO ? ANVIL_DTYPE_I8
           : q == ANVIL_QUANTIZE_INT4_WO ? ANVIL_DTYPE_U4
                                         : ANVIL_DTYPE_COUNT;
}

/* Whether weight k of a moe op is quantized: the stacked experts' gate_up
 * and down and the shared expert's (each row, or group, with its own scale,
 * so each expert's slice is a quantized matrix of its own); never the
 * router nor the shared expert's gate (k 0 and 5), small matrices whose
 * logits pick the experts, kept as TensorRT-LLM and vLLM keep them. */
static int moe_quantizable(int32_t k)
{
    return k >= 1 && k <= 4;
}

/* Whether weight i is quantized: a matrix that only linear ops over token
 * rows read (the q/k/v/o and MLP projections; not the LM head, whose op
 * runs over logit rows, unless lm_head, nor an embedding tied to it), or
 * with moe a moe op's expert matrices (moe_quantizable; pre-quantized
 * checkpoints' experts are not read yet). */
static int quantizable(const anvil_network *net, int32_t i, int lm_head, int moe)
{
    const anvil_net_weight *w = anvil_network_weight(net, i);
    if (w->n_dims != 2)
        return 0;
    int used = 0;
    for (int32_t o = 0; o < anvil_network_op_count(net); o++) {
        const anvil_net_op *op = anvil_network_op(net, o);
        for (int32_t k = 0; k < op->n_weights; k++) {
            if (op->weights[k] != i)
                continue;
            if (op->kind == ANVIL_OP_MOE && moe && moe_quantizable(k)) {
                used = 1;
                continue;
            }
            if (op->kind != ANVIL_OP_LINEAR || k != 0 || (op->row_kind != 0 && !lm_head))
                return 0;
            used = 1;
        }
    }
    return used;
}

/* Checks that quantized weight i can be quantized in groups of `group`. */
static anvil_status check_quant_shape(const anvil_network *net, int32_t i, anvil_quantize q, int32_t group)
{
    const anvil_net_weight *w = anvil_network_weight(net, i);
    if (q != ANVIL_QUANTIZE_INT4_WO)
        return ANVIL_OK;
    CHECK(w->shape[1] % group == 0, ANVIL_ERR_INVALID_ARG,
          "--quantize int4-wo: the group size %d does not divide the %lld columns of '%s' (choose a group size "
          "that divides it)",
          group, (long long)w->shape[1], w->name);
    CHECK(w->shape[1] % 2 == 0, ANVIL_ERR_INVALID_ARG,
          "--quantize int4-wo: '%s' has %lld columns; int4 rows are whole bytes (an even number of columns)",
          w->name, (long long)w->shape[1]);
    return ANVIL_OK;
}

/* Whether the matrices ws[0..n) can be stored as one: unstored yet, one
 * kind, one width, each a whole number of FUSE_ALIGN bytes. */
static int fusable(const anvil_build_plan *p, const anvil_network *net, const anvil_dtype *kinds,
                   const int32_t *ws, int32_t n)
{
    const anvil_net_weight *w0 = anvil_network_weight(net, ws[0]);
    for (int32_t k = 0; k < n; k++) {
        if (ws[k] < 0 || p->weight_stored[ws[k]] >= 0)
            return 0;
        for (int32_t j = 0; j < k; j++)
            if (ws[j] == ws[k])
                return 0;
        const anvil_net_weight *w = anvil_network_weight(net, ws[k]);
        if (w->n_dims != 2 || w->shape[1] != w0->shape[1] || kinds[ws[k]] != kinds[ws[0]] ||
            anvil_stored_kind_bytes(kinds[ws[k]], w_numel(w)) % FUSE_ALIGN != 0)
            return 0;
    }
    return 1;
}

/* How many ops use each weight (a weight two ops read, such as tied
 * embeddings, is never fused with another). */
static void count_uses(const anvil_network *net, int32_t *uses)
{
    for (int32_t i = 0; i < anvil_network_op_count(net); i++) {
        const anvil_net_op *op = anvil_network_op(net, i);
        for (int32_t k = 0; k < op->n_weights; k++)
            if (op->weights[k] >= 0)
                uses[op->weights[k]]++;
    }
}

anvil_status anvil_build_plan_make(const anvil_network *net, const anvil_checkpoint *ck,
                                   const anvil_plan_options *opts, anvil_build_plan **out)
{
    *out = NULL;
    const int32_t nw = anvil_network_weight_count(net), nops = anvil_network_op_count(net);
    anvil_dtype *kinds = malloc((size_t)(nw ? nw : 1) * sizeof *kinds);
    int32_t *uses = calloc((size_t)(nw ? nw : 1), sizeof *uses);
    anvil_prequant_info *pq = calloc((size_t)(nw ? nw : 1), sizeof *pq);
    anvil_build_plan *p = NULL;
    anvil_status st = ANVIL_OK;
    CHECK_GOTO(kinds && uses && pq, ANVIL_ERR_OOM, done, "out of memory");
    const anvil_quant_config *prequant =
        opts && opts->prequant && opts->prequant->format != ANVIL_QFORMAT_NONE ? opts->prequant : NULL;
    CHECK_GOTO(!prequant || opts->quantize == ANVIL_QUANTIZE_NONE, ANVIL_ERR_INVALID_ARG, done,
               "the checkpoint is quantized already (%s): --quantize takes a float checkpoint", prequant->method);
    CHECK_GOTO(ck != NULL || (opts && opts->weight_dtype != ANVIL_DTYPE_COUNT), ANVIL_ERR_INVALID_ARG, done,
               "a plan without a checkpoint needs a weight dtype");
    const anvil_quantize quant = opts ? opts->quantize : ANVIL_QUANTIZE_NONE;
    const int32_t group = opts && opts->quant_group > 0 ? opts->quant_group : 128;
    CHECK_GOTO(quant >= ANVIL_QUANTIZE_NONE && quant < ANVIL_QUANTIZE_COUNT, ANVIL_ERR_INVALID_ARG, done,
               "unknown quantization %d", (int)quant);
    CHECK_GOTO(opts == NULL || opts->quant_group >= 0, ANVIL_ERR_INVALID_ARG, done, "group size %d is negative",
               opts ? opts->quant_group : 0);
    for (int32_t i = 0; i < nw; i++) {
        anvil_dtype src = ANVIL_DTYPE_COUNT;
        if (prequant && ck != NULL && quantizable(net, i, 0, 0)) {
            TRY_GOTO(anvil_prequant_probe(prequant, net, i, ck, &pq[i]), done);
            if (pq[i].quantized) {
                kinds[i] = pq[i].kind;
                continue;
            }
        }
        if (ck != NULL) /* no checkpoint: random weights, nothing to check */
            TRY_GOTO(check_recipe(anvil_network_weight(net, i), ck, &src), done);
        kinds[i] = opts && opts->weight_dtype != ANVIL_DTYPE_COUNT ? opts->weight_dtype : src;
        if (quant != ANVIL_QUANTIZE_NONE && quantizable(net, i, opts->quantize_lm_head, 1)) {
            TRY_GOTO(check_quant_shape(net, i, quant, group), done);
            kinds[i] = quant_kind(quant);
        }
    }
    TRY_GOTO(anvil_build_plan_alloc(nw, nops, 0, &p), done);
    for (int32_t i = 0; i < nw; i++)
        p->weight_stored[i] = -1;
    if (prequant) {
        p->prequant = *prequant;
        p->prequant.ignore = NULL;
        p->prequant.n_ignore = 0;
    }
    const int no_fusion = opts == NULL || opts->no_fusion || opts->caps == NULL;
    anvil_fuse *fuse = NULL;
    const anvil_fuse_caps none = {0};
    TRY_GOTO(anvil_fuse_plan(net, no_fusion ? &none : opts->caps, no_fusion, &fuse), done);
    free(p->fuse);
    p->fuse = fuse;
    count_uses(net, uses);
    int32_t n_members = 0;
    /* the fused groups' matrices first, each group as one tensor */
    for (int32_t i = 0; i < nops && !no_fusion; i++) {
        int32_t ws[ANVIL_MATMUL_MULTI_MAX], n = 0;
        if (fuse[i].kind == ANVIL_FUSE_MATMUL_MULTI)
            for (n = 0; n < fuse[i].n; n++)
                ws[n] = linear_weight(net, i + n);
        else if (fuse[i].kind == ANVIL_FUSE_SILU_MUL)
            for (n = 0; n < 2; n++)
                ws[n] = linear_weight(net, i + n);
        if (n < 2 || !fusable(p, net, kinds, ws, n) || !anvil_prequant_fusable(pq, ws, n))
            continue;
        int once = 1;
        for (int32_t k = 0; k < n; k++)
            once &= uses[ws[k]] == 1;
        if (once) {
            TRY_GOTO(add_stored(p, net, ws, n, kinds[ws[0]], &n_members), done);
            if (pq[ws[0]].quantized)
                TRY_GOTO(prequant_stored(p, p->n_stored - 1, pq, ws, n, n_members), done);
            else if (anvil_stored_kind_is_quantized(kinds[ws[0]]))
                TRY_GOTO(quantize_stored(p, p->n_stored - 1, group, n_members), done);
        }
    }
    for (int32_t i = 0; i < nw; i++) {
        if (p->weight_stored[i] >= 0)
            continue;
        TRY_GOTO(add_stored(p, net, &i, 1, kinds[i], &n_members), done);
        if (pq[i].quantized)
            TRY_GOTO(prequant_stored(p, p->n_stored - 1, pq, &i, 1, n_members), done);
        else if (anvil_stored_kind_is_quantized(kinds[i]))
            TRY_GOTO(quantize_stored(p, p->n_stored - 1, group, n_members), done);
    }
done:
    free(kinds);
    free(uses);
    free(pq);
    if (st != ANVIL_OK) {
        anvil_build_plan_free(p);
        return st;
    }
    *out = p;
    return ANVIL_OK;
}

/* A companion: right after its quantized weight (or another of its
 * companions), named by that weight's description, of its kind and shape. */
static anvil_status check_companion(const anvil_build_plan *p, int32_t s)
{
    static const char *const what[] = {"weight", "scales", "zeros", "perm"};
    const anvil_stored *t = &p->stored[s];
    CHECK(t->role > ANVIL_STORED_WEIGHT && t->role <= ANVIL_STORED_PERM && t->n == 0 && t->of >= 0 && t->of < s,
          ANVIL_ERR_FORMAT, "stored tensor '%s' is a companion of no weight before it", t->name);
    const anvil_stored *w = &p->stored[t->of];
    const int32_t named = t->role == ANVIL_STORED_SCALES  ? w->q.scales
                          : t->role == ANVIL_STORED_ZEROS ? w->q.zeros
                                                          : w->q.perm;
    CHECK(w->role == ANVIL_STORED_WEIGHT && named == s, ANVIL_ERR_FORMAT,
          "stored tensor '%s' is not the %s of '%s'", t->name, what[t->role], w->name);
    for (int32_t k = t->of + 1; k < s; k++)
        CHECK(p->stored[k].of == t->of, ANVIL_ERR_FORMAT, "the %s '%s' does not follow its weight '%s'",
              what[t->role], t->name, w->name);
    return ANVIL_OK;
}

/* A quantized weight's description against its kind and companions: the
 * scales f32 [N] (group 0) or [N, K / group], zeros u8 of the same shape
 * (int4 only), perm i32 [K]; a group that divides K; fp8 activations only
 * on fp8 weights. */
static anvil_status check_quantized(const anvil_build_plan *p, int32_t s)
{
    const anvil_stored *t = &p->stored[s];
    const anvil_stored_quant *q = &t->q;
    CHECK(anvil_stored_kind_is_quantized(t->kind), ANVIL_ERR_FORMAT, "tensor '%s' is %s but has scales", t->name,
          anvil_dtype_name(t->kind));
    CHECK(t->n_dims == 2, ANVIL_ERR_FORMAT, "quantized tensor '%s' is not a matrix", t->name);
    const int64_t n = t->shape[0], k = t->shape[1];
    CHECK(q->group >= 0 && (q->group == 0 || k % q->group == 0), ANVIL_ERR_FORMAT,
          "quantized tensor '%s': group %d does not divide its %lld columns", t->name, q->group, (long long)k);
    CHECK(t->kind != ANVIL_DTYPE_U4 || k % 2 == 0, ANVIL_ERR_FORMAT,
          "int4 tensor '%s' has an odd number of columns (%lld)", t->name, (long long)k);
    const int64_t g = q->group ? k / q->group : 1;
    const int32_t comp[3] = {q->scales, q->zeros, q->perm};
    const anvil_dtype want[3] = {ANVIL_DTYPE_F32, ANVIL_DTYPE_U8, ANVIL_DTYPE_I32};
    static const char *const what[3] = {"scales", "zeros", "perm"};
    for (int c = 0; c < 3; c++) {
        if (comp[c] < 0)
            continue;
        CHECK(comp[c] > s && comp[c] < p->n_stored && p->stored[comp[c]].role == (anvil_stored_role)(c + 1) &&
                  p->stored[comp[c]].of == s,
              ANVIL_ERR_FORMAT, "quantized tensor '%s': its %s are not a companion stored after it", t->name,
              what[c]);
        const anvil_stored *x = &p->stored[comp[c]];
        const int64_t d0 = c == 2 ? k : n;
        const int dims = c == 2 || (c == 0 && q->group == 0) ? 1 : 2;
        const int fits = x->kind == want[c] && x->n_dims == dims && x->shape[0] == d0 && (dims == 1 || x->shape[1] == g) &&
                         x->bytes == anvil_stored_kind_bytes(x->kind, d0 * (dims == 2 ? g : 1));
        if (!fits) {
            char have[96];
            anvil_shape_str(x->shape, x->n_dims, have, sizeof have);
            return ANVIL_FAIL(ANVIL_ERR_FORMAT,
                              "quantized tensor '%s' [%lld, %lld]: its %s '%s' are %s %s, not %s [%lld%s%lld]",
                              t->name, (long long)n, (long long)k, what[c], x->name, anvil_dtype_name(x->kind), have,
                              anvil_dtype_name(want[c]), (long long)d0, dims == 2 ? ", " : "",
                              dims == 2 ? (long long)g : 0LL);
        }
    }
    CHECK(q->zeros < 0 || t->kind == ANVIL_DTYPE_U4, ANVIL_ERR_FORMAT,
          "quantized tensor '%s' is %s but has zero points (only int4 has them)", t->name, anvil_dtype_name(t->kind));
    CHECK(q->act == ANVIL_QUANT_ACT_NONE || t->kind == ANVIL_DTYPE_F8_E4M3, ANVIL_ERR_FORMAT,
          "quantized tensor '%s' is %s but rounds its activations to fp8 (only fp8 weights do)", t->name,
          anvil_dtype_name(t->kind));
    CHECK(q->act != ANVIL_QUANT_ACT_FP8_STATIC || (q->input_scale > 0.0f && isfinite(q->input_scale)),
          ANVIL_ERR_FORMAT, "quantized tensor '%s': input_scale %g is not a positive number", t->name,
          (double)q->input_scale);
    return ANVIL_OK;
}

anvil_status anvil_build_plan_check(const anvil_build_plan *p, const anvil_network *net)
{
    const int32_t nw = anvil_network_weight_count(net);
    CHECK(p->n_weights == nw && p->n_ops == anvil_network_op_count(net), ANVIL_ERR_FORMAT,
          "the plan is for %d weights and %d ops, the network has %d and %d", p->n_weights, p->n_ops, nw,
          anvil_network_op_count(net));
    int32_t seen = 0;
    for (int32_t s = 0; s < p->n_stored; s++) {
        const anvil_stored *t = &p->stored[s];
        CHECK(t->shard.count == 1 && t->shard.rank == 0, ANVIL_ERR_UNSUPPORTED,
              "stored tensor '%s' is shard %d of %d; this anvil runs whole tensors only", t->name,
              t->shard.rank, t->shard.count);
        if (t->role != ANVIL_STORED_WEIGHT) {
            TRY(check_companion(p, s));
            continue;
        }
        CHECK(t->n >= 1 && t->first >= 0 && t->first <= nw - t->n && t->first == seen, ANVIL_ERR_FORMAT,
              "stored tensor '%s': members [%d, +%d) out of order", t->name, t->first, t->n);
        CHECK(anvil_stored_kind_is_float(t->kind) || anvil_stored_kind_is_quantized(t->kind), ANVIL_ERR_UNSUPPORTED,
              "stored tensor '%s': kind %s is not a weight's", t->name, anvil_dtype_name(t->kind));
        CHECK(anvil_stored_kind_is_float(t->kind) || t->q.scales >= 0, ANVIL_ERR_FORMAT,
              "stored tensor '%s' is %s without scales (a quantized weight needs its scales tensor)", t->name,
              anvil_dtype_name(t->kind));
        if (t->q.scales >= 0)
            TRY(check_quantized(p, s));
        int64_t rows = 0, elems = 0;
        for (int32_t k = 0; k < t->n; k++) {
            const int32_t wi = p->members[t->first + k];
            CHECK(wi >= 0 && wi < nw, ANVIL_ERR_FORMAT, "stored tensor '%s': member %d is not a weight",
                  t->name, wi);
            const anvil_net_weight *w = anvil_network_weight(net, wi);
            CHECK(p->weight_stored[wi] == s && p->weight_offset[wi] == elems, ANVIL_ERR_FORMAT,
                  "weight '%s' is not where stored tensor '%s' puts it", w->name, t->name);
            CHECK(w->n_dims == t->n_dims && (t->n_dims == 1 || w->shape[1] == t->shape[1]), ANVIL_ERR_FORMAT,
                  "weight '%s' does not fit stored tensor '%s'", w->name, t->name);
            CHECK(t->n == 1 || t->n_dims == 2, ANVIL_ERR_FORMAT, "stored tensor '%s' stacks vectors",
                  t->name);
            rows += w->shape[0];
            elems += w_numel(w);
        }
        CHECK(rows == t->shape[0] && anvil_stored_kind_bytes(t->kind, elems) == t->bytes, ANVIL_ERR_FORMAT,
              "stored tensor '%s': shape or bytes do not match its members", t->name);
        seen += t->n;
    }
    CHECK(seen == nw, ANVIL_ERR_FORMAT, "%d of the network's %d weights are stored", seen, nw);
    for (int32_t i = 0; i < p->n_ops; i++) {
        const anvil_fuse *f = &p->fuse[i];
        const int span = f->kind == ANVIL_FUSE_ADD_RMSNORM    ? 2
                         : f->kind == ANVIL_FUSE_MATMUL_MULTI ? f->n
                         : f->kind == ANVIL_FUSE_SILU_MUL     ? 3
                                                              : 1;
        CHECK(f->kind >= ANVIL_FUSE_NONE && f->kind <= ANVIL_FUSE_ROPE_ATTENTION && span >= 1 &&
                  span <= ANVIL_MATMUL_MULTI_MAX && i + span <= p->n_ops,
              ANVIL_ERR_FORMAT, "the fusion plan's op %d is malformed", i);
    }
    return ANVIL_OK;
}

/* ------------------------------------------------------------ filling */

/* Source elements [first, first + n) of st, converted to `kind` at dst. */
static anvil_status copy_elems(const anvil_st_tensor *st, int64_t first, int64_t n, anvil_dtype kind,
                               void *dst, anvil_build_scratch *sc)
{
    const size_t ses = anvil_dtype_size(st->dtype), des = anvil_dtype_size(kind);
    while (n > 0) {
        const int64_t m = n < PIECE_ELEMS ? n : PIECE_ELEMS;
        if (st->dtype == kind) {
            TRY(anvil_st_read(st, (size_t)first * ses, dst, (size_t)m * ses));
        } else {
            TRY(anvil_st_read(st, (size_t)first * ses, sc->src, (size_t)m * ses));
            anvil_convert_to_f32(st->dtype, sc->src, sc->f32, m);
            anvil_convert_from_f32(kind, sc->f32, dst, m);
        }
        first += m;
        n -= m;
        dst = (char *)dst + (size_t)m * des;
    }
    return ANVIL_OK;
}

/* Elements [a, b) of a TRANSPOSE weight w [R, C] (w[r][c] = st[c][start + r])
 * in `kind` at dst: the rows of w they touch are a run of st's columns, read
 * as C contiguous pieces (one per row of st), then put in place in f32 and
 * converted at once. */
static anvil_status fill_transposed(const anvil_net_weight *w, const anvil_st_tensor *st, int64_t a, int64_t b,
                                    anvil_dtype kind, char *dst, anvil_build_scratch *sc)
{
    const int64_t C = w->shape[1], N = st->shape[1];
    const int64_t c0 = w->part_len > 0 ? w->part_start : 0; /* the source's first row (a TP cut) */
    const int64_t r0 = a / C, nr = (b - 1) / C - r0 + 1;
    float *piece = malloc((size_t)nr * sizeof *piece), *out = malloc((size_t)(b - a) * sizeof *out);
    anvil_status s = piece != NULL && out != NULL ? ANVIL_OK : ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory");
    for (int64_t c = 0; s == ANVIL_OK && c < C; c++) {
        s = copy_elems(st, (c0 + c) * N + w->start + r0, nr, ANVIL_DTYPE_F32, piece, sc);
        for (int64_t k = 0; s == ANVIL_OK && k < nr; k++) {
            const int64_t e = (r0 + k) * C + c;
            if (e >= a && e < b)
                out[e - a] = piece[k];
        }
    }
    if (s == ANVIL_OK)
        anvil_convert_from_f32(kind, out, dst, b - a);
    free(piece);
    free(out);
    return s;
}

/* Elements [a, b) of weight w (row-major in its shape), in `kind`, at dst. */
static anvil_status fill_member(const anvil_net_weight *w, const anvil_checkpoint *ck, int64_t a, int64_t b,
                                anvil_dtype kind, char *dst, anvil_build_scratch *sc)
{
    const size_t des = anvil_dtype_size(kind);
    const int64_t cols = w->n_dims == 2 ? w->shape[1] : 1;
    const anvil_st_tensor *st = NULL;
    TRY(find_source(ck, w->sources[0], &st));
    if (w->recipe == ANVIL_RECIPE_TENSOR)
        return copy_elems(st, a, b - a, kind, dst, sc);
    if (w->recipe == ANVIL_RECIPE_TRANSPOSE)
        return fill_transposed(w, st, a, b, kind, dst, sc);
    if (w->recipe == ANVIL_RECIPE_SLICE && (st->n_dims == w->n_dims + 1 || w->axis == 0)) {
        /* a stack's matrix or a run of rows: contiguous in the source */
        const int64_t base = st->n_dims == w->n_dims + 1 ? w->start * w_numel(w) : w->start * cols;
        return copy_elems(st, base + a, b - a, kind, dst, sc);
    }
    if (w->recipe == ANVIL_RECIPE_CONCAT && w->part_len > 0) {
        /* parts of sources along axis 0 (check_recipe): source k gives rows
         * [k R, (k + 1) R) of w, R its part's rows; row by row, each row's
         * stretch contiguous in its source */
        const int64_t R = w->shape[0] / w->n_sources;
        for (int64_t e = a; e < b;) {
            const int64_t row = e / cols, col = e % cols;
            const int64_t row_end = (row + 1) * cols < b ? (row + 1) * cols : b;
            TRY(find_source(ck, w->sources[row / R], &st));
            const int64_t sc1 = st->n_dims == 2 ? st->shape[1] : 1;
            const int64_t srow = w->part_axis == 0 ? w->part_start + row % R : row % R;
            const int64_t scol = w->part_axis == 1 ? w->part_start + col : col;
            TRY(copy_elems(st, srow * sc1 + scol, row_end - e, kind, dst + (size_t)(e - a) * des, sc));
            e = row_end;
        }
        return ANVIL_OK;
    }
    if (w->recipe == ANVIL_RECIPE_CONCAT && w->axis == 0) {
        int64_t at = 0; /* the first element of source k in w */
        for (int32_t k = 0; k < w->n_sources && at < b; k++) {
            if (k > 0)
                TRY(find_source(ck, w->sources[k], &st));
            const int64_t n = st->n_dims == 2 ? st->shape[0] * st->shape[1] : st->shape[0];
            const int64_t lo = a > at ? a : at, hi = b < at + n ? b : at + n;
            if (lo < hi)
                TRY(copy_elems(st, lo - at, hi - lo, kind, dst + (size_t)(lo - a) * des, sc));
            at += n;
        }
        return ANVIL_OK;
    }
    /* along axis 1 (columns): row by row, each row's pieces contiguous */
    for (int64_t e = a; e < b;) {
        const int64_t row = e / cols, col = e % cols;
        const int64_t row_end = (row + 1) * cols < b ? (row + 1) * cols : b;
        if (w->recipe == ANVIL_RECIPE_SLICE) {
            TRY(copy_elems(st, row * st->shape[1] + w->start + col, row_end - e, kind,
                           dst + (size_t)(e - a) * des, sc));
        } else { /* CONCAT along axis 1 */
            int64_t c0 = 0;
            for (int32_t k = 0; k < w->n_sources && c0 < col + (row_end - e); k++) {
                const anvil_st_tensor *sk = NULL;
                TRY(find_source(ck, w->sources[k], &sk));
                const int64_t wk = sk->shape[1];
                const int64_t lo = col > c0 ? col : c0,
                              hi = col + (row_end - e) < c0 + wk ? col + (row_end - e) : c0 + wk;
                if (lo < hi)
                    TRY(copy_elems(sk, row * wk + (lo - c0), hi - lo, kind,
                                   dst + (size_t)(e - a + lo - col) * des, sc));
                c0 += wk;
            }
        }
        e = row_end;
    }
    return ANVIL_OK;
}

/* Elements [a, b) of weight w in `kind` at dst: random values of seed. */
static void fill_random(const anvil_network *net, int32_t wi, uint64_t seed, int64_t a, int64_t b,
                        anvil_dtype kind, char *dst, anvil_build_scratch *sc)
{
    const size_t des = anvil_dtype_size(kind);
    while (a < b) {
        const int64_t m = b - a < PIECE_ELEMS ? b - a : PIECE_ELEMS;
        anvil_random_weights(net, wi, seed, a, m, sc->f32);
        anvil_convert_from_f32(kind, sc->f32, dst, m);
        a += m;
        dst += (size_t)m * des;
    }
}

/* Elements [a, b) of float stored weight tensor s in `kind` (its own, or
 * f32 for a converter) at dst, member by member. */
static anvil_status fill_members(const anvil_build_plan *p, const anvil_network *net, const anvil_checkpoint *ck,
                                 int32_t s, int64_t a, int64_t b, anvil_dtype kind, char *dst,
                                 anvil_build_scratch *sc)
{
    const anvil_stored *t = &p->stored[s];
    const size_t es = anvil_dtype_size(kind);
    for (int32_t k = 0; k < t->n; k++) {
        const int32_t wi = p->members[t->first + k];
        const anvil_net_weight *w = anvil_network_weight(net, wi);
        const int64_t m0 = p->weight_offset[wi], m1 = m0 + w_numel(w);
        const int64_t lo = a > m0 ? a : m0, hi = b < m1 ? b : m1;
        if (lo >= hi)
            continue;
        if (ck == NULL)
            fill_random(net, wi, p->seed, lo - m0, hi - m0, kind, dst + (size_t)(lo - a) * es, sc);
        else
            TRY(fill_member(w, ck, lo - m0, hi - m0, kind, dst + (size_t)(lo - a) * es, sc));
    }
    return ANVIL_OK;
}

anvil_status anvil_build_values(const anvil_build_plan *p, const anvil_network *net, const anvil_checkpoint *ck,
                                int32_t s, int64_t a, int64_t b, float *dst, anvil_build_scratch *scratch)
{
    CHECK(s >= 0 && s < p->n_stored && p->stored[s].role == ANVIL_STORED_WEIGHT, ANVIL_ERR_INVALID_ARG,
          "values of stored tensor %d: not a weight", s);
    const anvil_stored *t = &p->stored[s];
    const int64_t numel = t->shape[0] * (t->n_dims > 1 ? t->shape[1] : 1);
    CHECK(a >= 0 && a <= b && b <= numel && b - a <= PIECE_ELEMS, ANVIL_ERR_INVALID_ARG,
          "values of '%s': elements [%lld, %lld) do not fit", t->name, (long long)a, (long long)b);
    return fill_members(p, net, ck, s, a, b, ANVIL_DTYPE_F32, (char *)dst, scratch);
}

anvil_status anvil_build_fill(const anvil_build_plan *p, const anvil_network *net, const anvil_checkpoint *ck,
                              int32_t s, size_t offset, void *dst, size_t len, anvil_build_scratch *scratch)
{
    CHECK(s >= 0 && s < p->n_stored, ANVIL_ERR_INVALID_ARG, "stored tensor %d out of range", s);
    const anvil_stored *t = &p->stored[s];
    CHECK(offset <= t->bytes && len <= t->bytes - offset && len <= ANVIL_BUILD_CHUNK, ANVIL_ERR_INVALID_ARG,
          "fill of '%s': bytes [%zu, +%zu) do not fit", t->name, offset, len);
    if (t->conv != NULL)
        return t->conv->fill(p, net, ck, s, offset, dst, len, scratch);
    CHECK(t->role == ANVIL_STORED_WEIGHT && anvil_stored_kind_is_float(t->kind), ANVIL_ERR_UNSUPPORTED,
          "stored tensor '%s' (%s) has no converter to make it from a checkpoint", t->name, anvil_dtype_name(t->kind));
    const size_t es = anvil_dtype_size(t->kind);
    CHECK(offset % es == 0 && len % es == 0 && offset <= t->bytes && len <= t->bytes - offset &&
              len <= ANVIL_BUILD_CHUNK,
          ANVIL_ERR_INVALID_ARG, "fill of '%s': bytes [%zu, +%zu) do not fit", t->name, offset, len);
    const int64_t a = (int64_t)(offset / es), b = (int64_t)((offset + len) / es);
    return fill_members(p, net, ck, s, a, b, t->kind, dst, scratch);
}

const anvil_st_tensor *anvil_build_plain_source(const anvil_build_plan *p, const anvil_network *net,
                                                const anvil_checkpoint *ck, int32_t s)
{
    const anvil_stored *t = &p->stored[s];
    if (t->n != 1 || t->conv != NULL)
        return NULL;
    const anvil_net_weight *w = anvil_network_weight(net, p->members[t->first]);
    if (w->recipe != ANVIL_RECIPE_TENSOR)
        return NULL;
    const anvil_st_tensor *st = anvil_checkpoint_find(ck, w->sources[0]);
    return st && st->dtype == t->kind ? st : NULL;
}

anvil_status anvil_build_check_checkpoint(const anvil_network *net, const anvil_checkpoint *ck)
{
    for (int32_t i = 0; i < anvil_network_weight_count(net); i++) {
        anvil_dtype dt;
        TRY(check_recipe(anvil_network_weight(net, i), ck, &dt));
    }
    return ANVIL_OK;
}

int32_t anvil_build_member_at(const anvil_build_plan *p, int32_t s, int64_t elem, int64_t *at)
{
    const anvil_stored *t = &p->stored[s];
    for (int32_t k = t->n - 1; k >= 0; k--) { /* members lie in order: the last that starts at or before it */
        const int32_t wi = p->members[t->first + k];
        if (p->weight_offset[wi] <= elem) {
            *at = elem - p->weight_offset[wi];
            return wi;
        }
    }
    *at = elem;
    return p->members[t->first];
}
