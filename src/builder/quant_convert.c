/*
 * Checkpoint quantization formats -> the canonical quantized weight
 * (quant_convert.h). Every format's quirks end here:
 *   - AWQ GEMM: qweight [K, N/8] packs 8 output columns an int32 in the
 *     order 0 2 4 6 1 3 5 7 (nibble i holds column 8j + AWQ_ORDER[i]);
 *     qzeros the same; scales [K/g, N]; W = (q - z) * s.
 *   - GPTQ: qweight [K/8, N] packs 8 input rows an int32 (nibble i: row
 *     8r + i); qzeros [K/g, N/8] along N; scales [K/g, N]; the v1 format
 *     (checkpoint_format "gptq", what AutoGPTQ and GPTQModel save) stores
 *     zero - 1, gptq_v2 the zero itself; g_idx [K] names each column's
 *     group, and act order (desc_act) makes them interleave: the columns
 *     are sorted by group into perm.
 *   - compressed-tensors pack-quantized: weight_packed [N, ceil(K*b/32)],
 *     element c at bit b*c of its row, stored as q + 2^(b-1); zero points
 *     (asymmetric) packed the same way along N; weight_shape [2] = [N, K].
 *   - fp8: per-tensor scales become per-channel ones; fp8 blocks of
 *     [rows, cols] become groups of cols along K (each row repeats its
 *     block's scales).
 */
#include "builder/quant_convert.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

static const int AWQ_ORDER[8] = {0, 2, 4, 6, 1, 3, 5, 7};

void anvil_qweight_free(anvil_qweight *w)
{
    if (!w)
        return;
    free(w->data);
    free(w->scales);
    free(w->zeros);
    free(w->perm);
    memset(w, 0, sizeof *w);
}

/* -------------------------------------------------------------- checks */

static void shape_str(const anvil_st_tensor *t, char *buf, size_t cap)
{
    anvil_shape_str(t->shape, t->n_dims, buf, cap);
}

static int64_t numel(const anvil_st_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->n_dims; i++)
        n *= t->shape[i];
    return n;
}

static anvil_status need(const anvil_st_tensor *t, const char *role, const char *what)
{
    CHECK(t, ANVIL_ERR_NOT_FOUND, "%s: the checkpoint has no %s tensor for this quantized weight", what, role);
    CHECK(t->data, ANVIL_ERR_INVALID_ARG, "%s: tensor %s has no bytes in memory", what, t->name ? t->name : role);
    return ANVIL_OK;
}

static int is_float(anvil_dtype dt)
{
    return dt == ANVIL_DTYPE_F32 || dt == ANVIL_DTYPE_F16 || dt == ANVIL_DTYPE_BF16;
}

/* t is exactly [d0, d1] (d1 < 0: 1-D [d0]). */
static anvil_status need_shape(const anvil_st_tensor *t, anvil_dtype dt, int64_t d0, int64_t d1, const char *what)
{
    char got[64];
    shape_str(t, got, sizeof got);
    int ok_dt = dt == ANVIL_DTYPE_COUNT ? is_float(t->dtype) : t->dtype == dt;
    CHECK(ok_dt, ANVIL_ERR_FORMAT, "%s: tensor %s has dtype %s, expected %s", what, t->name,
          anvil_dtype_name(t->dtype), dt == ANVIL_DTYPE_COUNT ? "f32, f16 or bf16" : anvil_dtype_name(dt));
    int ok = d1 < 0 ? (t->n_dims == 1 && t->shape[0] == d0)
                    : (t->n_dims == 2 && t->shape[0] == d0 && t->shape[1] == d1);
    if (!ok) {
        if (d1 < 0)
            return ANVIL_FAIL(ANVIL_ERR_FORMAT, "%s: tensor %s has shape %s, expected [%lld]", what, t->name, got,
                              (long long)d0);
        return ANVIL_FAIL(ANVIL_ERR_FORMAT, "%s: tensor %s has shape %s, expected [%lld, %lld]", what, t->name,
                          got, (long long)d0, (long long)d1);
    }
    return ANVIL_OK;
}

static uint32_t word_at(const anvil_st_tensor *t, int64_t i)
{
    uint32_t w;
    memcpy(&w, (const uint8_t *)t->data + (size_t)i * 4, 4);
    return w;
}

/* The whole-row group count, and the group checked against k. */
static anvil_status groups_of(int32_t group, int64_t k, const char *what, int32_t *g, int64_t *n_groups)
{
    if (group == -1)
        group = (int32_t)k;
    if (group == 0) {
        *g = 0;
        *n_groups = 1;
        return ANVIL_OK;
    }
    CHECK(k % group == 0, ANVIL_ERR_UNSUPPORTED, "%s: group size %d does not divide the weight's width %lld", what,
          (int)group, (long long)k);
    *g = group;
    *n_groups = k / group;
    return ANVIL_OK;
}

static anvil_status alloc_out(anvil_qweight *w, anvil_dtype dt, int64_t n, int64_t k, int32_t group,
                              int64_t n_groups, int with_zeros)
{
    w->dtype = dt;
    w->n = n;
    w->k = k;
    w->nbytes = dt == ANVIL_DTYPE_U4 ? (size_t)(n * k / 2) : (size_t)(n * k);
    w->n_groups = n_groups;
    w->data = calloc(w->nbytes ? w->nbytes : 1, 1);
    w->scales = malloc((size_t)(n * n_groups) * sizeof(float));
    if (with_zeros)
        w->zeros = malloc((size_t)(n * n_groups));
    CHECK(w->data && w->scales && (!with_zeros || w->zeros), ANVIL_ERR_OOM, "out of memory for a %lld x %lld weight",
          (long long)n, (long long)k);
    w->quant.group = group;
    return ANVIL_OK;
}

static void set_u4(uint8_t *data, int64_t i, unsigned v)
{
    data[i >> 1] |= (uint8_t)((v & 15u) << ((i & 1) * 4));
}

static unsigned get_u4(const uint8_t *data, int64_t i)
{
    return (data[i >> 1] >> ((i & 1) * 4)) & 15u;
}

/* Scales for [n, k] from a tensor that is one value (per_tensor), [n] or
 * [n, 1] (group 0), or [n, k / group]. */
static anvil_status read_scales(const anvil_st_tensor *t, int per_tensor, int64_t n, int64_t k, int32_t group,
                                const char *what, float *out)
{
    TRY(need(t, "scale", what));
    char got[64];
    shape_str(t, got, sizeof got);
    CHECK(is_float(t->dtype), ANVIL_ERR_FORMAT, "%s: tensor %s has dtype %s, expected f32, f16 or bf16", what, t->name,
          anvil_dtype_name(t->dtype));
    int64_t m = numel(t);
    if (per_tensor) {
        CHECK(m == 1, ANVIL_ERR_FORMAT, "%s: tensor %s has shape %s, expected one value (a per-tensor scale)", what,
              t->name, got);
        float s;
        anvil_convert_to_f32(t->dtype, t->data, &s, 1);
        for (int64_t r = 0; r < n; r++)
            out[r] = s;
    } else if (group == 0) {
        CHECK((t->n_dims == 1 && t->shape[0] == n) || (t->n_dims == 2 && t->shape[0] == n && t->shape[1] == 1),
              ANVIL_ERR_FORMAT, "%s: tensor %s has shape %s, expected [%lld, 1] (a scale per channel)", what, t->name,
              got, (long long)n);
        anvil_convert_to_f32(t->dtype, t->data, out, n);
    } else {
        int64_t g = k / group;
        CHECK(t->n_dims == 2 && t->shape[0] == n && t->shape[1] == g, ANVIL_ERR_FORMAT,
              "%s: tensor %s has shape %s, expected [%lld, %lld] (a scale per %d columns)", what, t->name, got,
              (long long)n, (long long)g, (int)group);
        anvil_convert_to_f32(t->dtype, t->data, out, n * g);
    }
    for (int64_t i = 0; i < (per_tensor ? 1 : m); i++)
        CHECK(isfinite(out[i]), ANVIL_ERR_FORMAT, "%s: tensor %s holds a scale that is not finite (%g)", what, t->name,
              (double)out[i]);
    return ANVIL_OK;
}

static anvil_status read_act(const anvil_quant_config *qc, const anvil_quant_sources *src, const char *what,
                             anvil_qweight *w)
{
    w->quant.act = qc->act;
    if (qc->act != ANVIL_QUANT_ACT_FP8_STATIC)
        return ANVIL_OK;
    const anvil_st_tensor *t = src->input_scale;
    TRY(need(t, "input_scale", what));
    char got[64];
    shape_str(t, got, sizeof got);
    CHECK(is_float(t->dtype) && numel(t) == 1, ANVIL_ERR_FORMAT,
          "%s: tensor %s (%s %s) must be one f32, f16 or bf16 value", what, t->name, anvil_dtype_name(t->dtype), got);
    float s;
    anvil_convert_to_f32(t->dtype, t->data, &s, 1);
    CHECK(isfinite(s) && s > 0, ANVIL_ERR_FORMAT, "%s: tensor %s is %g; an input scale must be positive and finite",
          what, t->name, (double)s);
    w->quant.input_scale = s;
    return ANVIL_OK;
}

/* ----------------------------------------------------------------- fp8, i8 */

static anvil_status convert_plain(const anvil_quant_config *qc, const anvil_quant_sources *src, const char *what,
                                  anvil_qweight *w)
{
    const anvil_st_tensor *t = src->weight;
    TRY(need(t, "weight", what));
    anvil_dtype dt = qc->scheme == ANVIL_QSCHEME_FP8 ? ANVIL_DTYPE_F8_E4M3 : ANVIL_DTYPE_I8;
    char got[64];
    shape_str(t, got, sizeof got);
    CHECK(t->dtype == dt && t->n_dims == 2, ANVIL_ERR_FORMAT, "%s: tensor %s is %s %s, expected a 2-D %s weight", what,
          t->name, anvil_dtype_name(t->dtype), got, anvil_dtype_name(dt));
    int64_t n = t->shape[0], k = t->shape[1];
    int32_t group = 0;
    int64_t ng = 1;
    if (qc->block_rows) {
        /* fp8 blocks [br, bc]: scale_inv [ceil(n / br), ceil(k / bc)] */
        TRY(groups_of(qc->group, k, what, &group, &ng));
        const anvil_st_tensor *s = src->scales;
        TRY(need(s, "weight_scale_inv", what));
        int64_t br = qc->block_rows, rb = (n + br - 1) / br;
        TRY(need_shape(s, ANVIL_DTYPE_COUNT, rb, ng, what));
        TRY(alloc_out(w, dt, n, k, group, ng, 0));
        float *blk = malloc((size_t)(rb * ng) * sizeof(float));
        CHECK(blk, ANVIL_ERR_OOM, "out of memory");
        anvil_convert_to_f32(s->dtype, s->data, blk, rb * ng);
        for (int64_t i = 0; i < rb * ng; i++) {
            if (!isfinite(blk[i])) {
                free(blk);
                return ANVIL_FAIL(ANVIL_ERR_FORMAT, "%s: tensor %s holds a scale that is not finite", what, s->name);
            }
        }
        for (int64_t r = 0; r < n; r++)
            memcpy(w->scales + r * ng, blk + (r / br) * ng, (size_t)ng * sizeof(float));
        free(blk);
    } else {
        TRY(groups_of(qc->group, k, what, &group, &ng));
        TRY(alloc_out(w, dt, n, k, group, ng, 0));
        TRY(read_scales(src->scales, qc->weight_per_tensor, n, k, group, what, w->scales));
    }
    memcpy(w->data, t->data, w->nbytes);
    return read_act(qc, src, what, w);
}

/* ------------------------------------------------ compressed-tensors packed */

static anvil_status convert_ct_packed(const anvil_quant_config *qc, const anvil_quant_sources *src,
                                      const char *what, anvil_qweight *w)
{
    const anvil_st_tensor *sh = src->shape, *p = src->weight;
    TRY(need(sh, "weight_shape", what));
    TRY(need(p, "weight_packed", what));
    CHECK((sh->dtype == ANVIL_DTYPE_I64 || sh->dtype == ANVIL_DTYPE_I32) && numel(sh) == 2, ANVIL_ERR_FORMAT,
          "%s: tensor %s must be two integers [out, in]", what, sh->name);
    int64_t dims[2];
    for (int i = 0; i < 2; i++) {
        if (sh->dtype == ANVIL_DTYPE_I64) {
            memcpy(&dims[i], (const uint8_t *)sh->data + 8 * i, 8);
        } else {
            int32_t v;
            memcpy(&v, (const uint8_t *)sh->data + 4 * i, 4);
            dims[i] = v;
        }
    }
    int64_t n = dims[0], k = dims[1];
    CHECK(n > 0 && k > 0 && n <= (1 << 24) && k <= (1 << 24), ANVIL_ERR_FORMAT,
          "%s: tensor %s says [%lld, %lld]: not a weight's shape", what, sh->name, (long long)n, (long long)k);
    int bits = qc->bits;
    int per_word = 32 / bits;
    TRY(need_shape(p, ANVIL_DTYPE_I32, n, (k + per_word - 1) / per_word, what));
    int32_t group = 0;
    int64_t ng = 1;
    TRY(groups_of(qc->group, k, what, &group, &ng));
    if (bits == 4) {
        CHECK(k % 2 == 0, ANVIL_ERR_UNSUPPORTED, "%s: an int4 weight of odd width %lld is not supported", what,
              (long long)k);
        TRY(alloc_out(w, ANVIL_DTYPE_U4, n, k, group, ng, !qc->symmetric));
        TRY(read_scales(src->scales, 0, n, k, group, what, w->scales));
        uint8_t *d = w->data;
        int64_t row_words = p->shape[1];
        if (k % 8 == 0) {
            /* stored q + 8 is the canonical u4 itself, and the words' bytes
             * (little-endian, element c at bit 4c) are its bytes */
            for (int64_t r = 0; r < n; r++)
                memcpy(d + r * (k / 2), (const uint8_t *)p->data + (size_t)(r * row_words) * 4, (size_t)(k / 2));
        } else {
            for (int64_t r = 0; r < n; r++)
                for (int64_t c = 0; c < k; c++)
                    set_u4(d, r * k + c, (word_at(p, r * row_words + c / 8) >> (4 * (c % 8))) & 15u);
        }
        if (!qc->symmetric) {
            const anvil_st_tensor *z = src->zeros;
            TRY(need(z, "weight_zero_point", what));
            if (z->dtype == ANVIL_DTYPE_I32) {
                /* packed along the output dimension: [ceil(n / 8), n_groups] */
                TRY(need_shape(z, ANVIL_DTYPE_I32, (n + 7) / 8, ng, what));
                for (int64_t r = 0; r < n; r++)
                    for (int64_t g = 0; g < ng; g++)
                        w->zeros[r * ng + g] = (uint8_t)((word_at(z, (r / 8) * ng + g) >> (4 * (r % 8))) & 15u);
            } else {
                /* unpacked int8 zero points in -8..7 (older writers) */
                TRY(need_shape(z, ANVIL_DTYPE_I8, n, ng, what));
                for (int64_t i = 0; i < n * ng; i++) {
                    int v = ((const int8_t *)z->data)[i];
                    CHECK(v >= -8 && v <= 7, ANVIL_ERR_FORMAT, "%s: tensor %s holds zero point %d outside -8..7",
                          what, z->name, v);
                    w->zeros[i] = (uint8_t)(v + 8);
                }
            }
        }
    } else {
        TRY(alloc_out(w, ANVIL_DTYPE_I8, n, k, group, ng, 0));
        TRY(read_scales(src->scales, qc->weight_per_tensor, n, k, group, what, w->scales));
        int8_t *d = w->data;
        int64_t row_words = p->shape[1];
        for (int64_t r = 0; r < n; r++)
            for (int64_t c = 0; c < k; c++)
                d[r * k + c] = (int8_t)((int)((word_at(p, r * row_words + c / 4) >> (8 * (c % 4))) & 255u) - 128);
    }
    return ANVIL_OK;
}

/* -------------------------------------------------------------------- awq */

static anvil_status convert_awq(const anvil_quant_config *qc, const anvil_quant_sources *src, const char *what,
                                anvil_qweight *w)
{
    const anvil_st_tensor *qw = src->weight;
    TRY(need(qw, "qweight", what));
    TRY(need(src->zeros, "qzeros", what));
    TRY(need(src->scales, "scales", what));
    char got[64];
    shape_str(qw, got, sizeof got);
    CHECK(qw->dtype == ANVIL_DTYPE_I32 && qw->n_dims == 2, ANVIL_ERR_FORMAT,
          "%s: tensor %s is %s %s, expected int32 [in, out / 8]", what, qw->name, anvil_dtype_name(qw->dtype), got);
    int64_t k = qw->shape[0], n = qw->shape[1] * 8;
    /* scales [K / g, N] carry N; qweight's columns must agree */
    CHECK(src->scales->n_dims == 2 && src->scales->shape[1] == n, ANVIL_ERR_FORMAT,
          "%s: tensor %s has %lld columns, but %s packs %lld outputs (8 an int32)", what, src->scales->name,
          src->scales->n_dims == 2 ? (long long)src->scales->shape[1] : -1LL, qw->name, (long long)n);
    CHECK(k % 2 == 0, ANVIL_ERR_UNSUPPORTED, "%s: an int4 weight of odd width %lld is not supported", what, (long long)k);
    int32_t group = 0;
    int64_t ng = 1;
    TRY(groups_of(qc->group, k, what, &group, &ng));
    TRY(need_shape(src->scales, ANVIL_DTYPE_COUNT, ng, n, what));
    TRY(need_shape(src->zeros, ANVIL_DTYPE_I32, ng, n / 8, what));
    TRY(alloc_out(w, ANVIL_DTYPE_U4, n, k, group, ng, 1));
    float *s = malloc((size_t)(ng * n) * sizeof(float));
    CHECK(s, ANVIL_ERR_OOM, "out of memory");
    anvil_convert_to_f32(src->scales->dtype, src->scales->data, s, ng * n);
    for (int64_t g = 0; g < ng; g++)
        for (int64_t c = 0; c < n; c++)
            w->scales[c * ng + g] = s[g * n + c];
    free(s);
    uint8_t *d = w->data;
    /* two input rows at a time: each output's byte of columns r, r + 1 */
    for (int64_t r = 0; r < k; r += 2)
        for (int64_t j = 0; j < n / 8; j++) {
            const uint32_t w0 = word_at(qw, r * (n / 8) + j), w1 = word_at(qw, (r + 1) * (n / 8) + j);
            for (int i = 0; i < 8; i++)
                d[(8 * j + AWQ_ORDER[i]) * (k / 2) + r / 2] =
                    (uint8_t)(((w0 >> (4 * i)) & 15u) | (((w1 >> (4 * i)) & 15u) << 4));
        }
    for (int64_t g = 0; g < ng; g++)
        for (int64_t j = 0; j < n / 8; j++) {
            uint32_t word = word_at(src->zeros, g * (n / 8) + j);
            for (int i = 0; i < 8; i++)
                w->zeros[(8 * j + AWQ_ORDER[i]) * ng + g] = (uint8_t)((word >> (4 * i)) & 15u);
        }
    return ANVIL_OK;
}

/* ------------------------------------------------------------------- gptq */

/* perm (NULL when the columns are already in group order) from g_idx:
 * the columns sorted by group, stably; every group must hold exactly
 * `group` columns so that the sorted groups are contiguous. */
static anvil_status gptq_perm(const anvil_st_tensor *gi, int64_t k, int32_t group, int64_t ng, const char *what,
                              int32_t **perm_out)
{
    *perm_out = NULL;
    CHECK((gi->dtype == ANVIL_DTYPE_I32 || gi->dtype == ANVIL_DTYPE_I64) && gi->n_dims == 1 && gi->shape[0] == k,
          ANVIL_ERR_FORMAT, "%s: tensor %s must be int32 [%lld] (each input column's group)", what, gi->name,
          (long long)k);
    int64_t *count = calloc((size_t)ng + 1, sizeof *count);
    int32_t *gid = malloc((size_t)k * sizeof *gid);
    anvil_status st = ANVIL_OK;
    CHECK_GOTO(count && gid, ANVIL_ERR_OOM, done, "out of memory");
    int trivial = 1;
    for (int64_t c = 0; c < k; c++) {
        int64_t v;
        if (gi->dtype == ANVIL_DTYPE_I64) {
            memcpy(&v, (const uint8_t *)gi->data + 8 * c, 8);
        } else {
            int32_t v32;
            memcpy(&v32, (const uint8_t *)gi->data + 4 * c, 4);
            v = v32;
        }
        CHECK_GOTO(v >= 0 && v < ng, ANVIL_ERR_FORMAT, done, "%s: tensor %s[%lld] is %lld, outside the %lld groups",
                   what, gi->name, (long long)c, (long long)v, (long long)ng);
        gid[c] = (int32_t)v;
        count[v]++;
        if (v != c / group)
            trivial = 0;
    }
    for (int64_t g = 0; g < ng; g++)
        CHECK_GOTO(count[g] == group, ANVIL_ERR_UNSUPPORTED, done,
                   "%s: tensor %s gives group %lld %lld columns, not %d: its groups cannot be made contiguous", what,
                   gi->name, (long long)g, (long long)count[g], (int)group);
    if (!trivial) {
        int32_t *perm = malloc((size_t)k * sizeof *perm);
        CHECK_GOTO(perm, ANVIL_ERR_OOM, done, "out of memory");
        /* counting sort: the next free slot of each group */
        for (int64_t g = 0; g < ng; g++)
            count[g] = g * group;
        for (int64_t c = 0; c < k; c++)
            perm[count[gid[c]]++] = (int32_t)c;
        *perm_out = perm;
    }
done:
    free(count);
    free(gid);
    return st;
}

static anvil_status convert_gptq(const anvil_quant_config *qc, const anvil_quant_sources *src, const char *what,
                                 anvil_qweight *w)
{
    const anvil_st_tensor *qw = src->weight;
    TRY(need(qw, "qweight", what));
    TRY(need(src->zeros, "qzeros", what));
    TRY(need(src->scales, "scales", what));
    char got[64];
    shape_str(qw, got, sizeof got);
    CHECK(qw->dtype == ANVIL_DTYPE_I32 && qw->n_dims == 2, ANVIL_ERR_FORMAT,
          "%s: tensor %s is %s %s, expected int32 [in / 8, out]", what, qw->name, anvil_dtype_name(qw->dtype), got);
    int64_t k = qw->shape[0] * 8, n = qw->shape[1];
    CHECK(n % 8 == 0, ANVIL_ERR_UNSUPPORTED, "%s: %lld outputs: GPTQ's qzeros pack 8 an int32", what, (long long)n);
    int32_t group = 0;
    int64_t ng = 1;
    TRY(groups_of(qc->group, k, what, &group, &ng));
    TRY(need_shape(src->scales, ANVIL_DTYPE_COUNT, ng, n, what));
    TRY(need_shape(src->zeros, ANVIL_DTYPE_I32, ng, n / 8, what));
    CHECK(src->g_idx || !qc->desc_act, ANVIL_ERR_FORMAT,
          "%s: desc_act is true but the checkpoint has no g_idx for this weight (act order needs it)", what);
    TRY(alloc_out(w, ANVIL_DTYPE_U4, n, k, group, ng, 1));
    if (src->g_idx)
        TRY(gptq_perm(src->g_idx, k, group, ng, what, &w->perm));
    w->quant.perm = w->perm;
    float *s = malloc((size_t)(ng * n) * sizeof(float));
    CHECK(s, ANVIL_ERR_OOM, "out of memory");
    anvil_convert_to_f32(src->scales->dtype, src->scales->data, s, ng * n);
    for (int64_t g = 0; g < ng; g++)
        for (int64_t c = 0; c < n; c++)
            w->scales[c * ng + g] = s[g * n + c];
    free(s);
    for (int64_t g = 0; g < ng; g++)
        for (int64_t j = 0; j < n / 8; j++) {
            uint32_t word = word_at(src->zeros, g * (n / 8) + j);
            for (int i = 0; i < 8; i++) {
                unsigned z = (word >> (4 * i)) & 15u;
                if (!qc->gptq_v2) {
                    /* v1 stores zero - 1: 15 would be a zero of 16, which
                     * no 4-bit quantizer makes (it is the wrapped -1 of a
                     * zero of 0, a known corruption of v1 writers) */
                    CHECK(z != 15, ANVIL_ERR_FORMAT,
                          "%s: tensor %s holds 15 (a zero point of 16 in the gptq v1 format): not a 4-bit zero point",
                          what, src->zeros->name);
                    z += 1;
                }
                w->zeros[(8 * j + i) * ng + g] = (uint8_t)z;
            }
        }
    uint8_t *d = w->data;
    if (w->perm == NULL) {
        /* a word holds input rows 8j .. 8j + 7 of one output, low nibble
         * first: its 4 bytes are that output's canonical bytes */
        for (int64_t j = 0; j < k / 8; j++)
            for (int64_t r = 0; r < n; r++)
                memcpy(d + r * (k / 2) + j * 4, (const uint8_t *)qw->data + (size_t)(j * n + r) * 4, 4);
    } else {
        for (int64_t j = 0; j < k; j += 2) {
            const int64_t c0 = w->perm[j], c1 = w->perm[j + 1]; /* checkpoint columns of canonical j, j + 1 */
            for (int64_t r = 0; r < n; r++)
                d[r * (k / 2) + j / 2] = (uint8_t)(((word_at(qw, (c0 / 8) * n + r) >> (4 * (c0 % 8))) & 15u) |
                                                   (((word_at(qw, (c1 / 8) * n + r) >> (4 * (c1 % 8))) & 15u) << 4));
        }
    }
    return ANVIL_OK;
}

/* ------------------------------------------------------------------ entry */

anvil_status anvil_quant_convert(const anvil_quant_config *qc, const anvil_quant_sources *src, const char *what,
                                 anvil_qweight *out)
{
    memset(out, 0, sizeof *out);
    anvil_status st;
    switch (qc->format) {
    case ANVIL_QFORMAT_MODELOPT:
    case ANVIL_QFORMAT_FP8:
    case ANVIL_QFORMAT_CT_FLOAT:
    case ANVIL_QFORMAT_CT_INT: st = convert_plain(qc, src, what, out); break;
    case ANVIL_QFORMAT_CT_PACKED: st = convert_ct_packed(qc, src, what, out); break;
    case ANVIL_QFORMAT_AWQ: st = convert_awq(qc, src, what, out); break;
    case ANVIL_QFORMAT_GPTQ: st = convert_gptq(qc, src, what, out); break;
    default:
        return ANVIL_FAIL(ANVIL_ERR_INVALID_ARG, "%s: the checkpoint's quantization format is %s: nothing to convert",
                          what, anvil_qformat_name(qc->format));
    }
    if (st != ANVIL_OK) {
        anvil_qweight_free(out);
        return st;
    }
    out->quant.scales = out->scales;
    out->quant.zeros = out->zeros;
    out->quant.perm = out->perm;
    return ANVIL_OK;
}

void anvil_qweight_dequantize(const anvil_qweight *w, float *out)
{
    int64_t n = w->n, k = w->k, ng = w->n_groups;
    int32_t group = w->quant.group;
    for (int64_t r = 0; r < n; r++)
        for (int64_t j = 0; j < k; j++) {
            int64_t g = group ? j / group : 0;
            float s = w->scales[r * ng + g];
            float v;
            if (w->dtype == ANVIL_DTYPE_F8_E4M3) {
                v = anvil_fp8_e4m3_to_f32(((const uint8_t *)w->data)[r * k + j]);
            } else if (w->dtype == ANVIL_DTYPE_I8) {
                v = (float)((const int8_t *)w->data)[r * k + j];
            } else {
                int z = w->zeros ? w->zeros[r * ng + g] : 8;
                v = (float)((int)get_u4(w->data, r * k + j) - z);
            }
            out[r * k + (w->perm ? w->perm[j] : j)] = v * s;
        }
}
