/*
 * Pre-quantized linear weights in the build plan (prequant.h). A member
 * weight is converted whole (builder/quant_convert.c) each time a chunk of
 * its stored tensor or of a companion needs its bytes: chunks come in any
 * order and on any thread, so nothing is cached between them. A chunk
 * converts only the members it overlaps.
 */
#include "builder/prequant.h"

#include <stdlib.h>
#include <string.h>

#include "builder/quant_convert.h"
#include "core/error.h"

/* "<module>.weight" -> module, for a weight read from one whole tensor;
 * 0 when the weight is not that. */
static int module_of(const anvil_net_weight *w, char *buf, size_t cap)
{
    if (w->recipe != ANVIL_RECIPE_TENSOR || w->n_sources != 1 || w->n_dims != 2)
        return 0;
    const char *src = w->sources[0];
    const size_t n = strlen(src);
    if (n <= 7 || strcmp(src + n - 7, ".weight") != 0 || n - 7 >= cap)
        return 0;
    memcpy(buf, src, n - 7);
    buf[n - 7] = 0;
    return 1;
}

/* The tensors ql names, with their bytes in memory (read into bufs[] when
 * the checkpoint is not mapped); absent tensors are NULL. */
typedef struct member_sources {
    anvil_st_tensor t[6];
    const anvil_st_tensor *found[6];
    void *bufs[6];
} member_sources;

static void sources_free(member_sources *m)
{
    for (int i = 0; i < 6; i++)
        free(m->bufs[i]);
}

static anvil_status sources_read(const anvil_checkpoint *ck, const anvil_quant_linear *ql, member_sources *m,
                                 anvil_quant_sources *src)
{
    memset(m, 0, sizeof *m);
    const char *names[6] = {ql->weight, ql->scales, ql->zeros, ql->g_idx, ql->input_scale, ql->shape};
    for (int i = 0; i < 6; i++) {
        if (!names[i][0])
            continue;
        const anvil_st_tensor *st = anvil_checkpoint_find(ck, names[i]);
        if (st == NULL)
            continue;
        m->t[i] = *st;
        if (st->data == NULL) {
            m->bufs[i] = malloc(st->nbytes ? st->nbytes : 1);
            CHECK(m->bufs[i] != NULL, ANVIL_ERR_OOM, "out of memory for tensor '%s'", st->name);
            TRY(anvil_st_read(st, 0, m->bufs[i], st->nbytes));
            m->t[i].data = m->bufs[i];
        }
        m->found[i] = &m->t[i];
    }
    *src = (anvil_quant_sources){.weight = m->found[0], .scales = m->found[1], .zeros = m->found[2],
                                 .g_idx = m->found[3], .input_scale = m->found[4], .shape = m->found[5]};
    return ANVIL_OK;
}

/* Converts network weight wi (module `module`, described by ql) and checks
 * it against the shape the config implies. */
static anvil_status convert_member(const anvil_quant_config *qc, const anvil_net_weight *w, const char *module,
                                   const anvil_quant_linear *ql, const anvil_checkpoint *ck, anvil_qweight *out)
{
    member_sources m;
    anvil_quant_sources src;
    anvil_status st = sources_read(ck, ql, &m, &src);
    if (st == ANVIL_OK)
        st = anvil_quant_convert(qc, &src, module, out);
    sources_free(&m);
    TRY(st);
    if (out->n != w->shape[0] || out->k != w->shape[1]) {
        const long long n = (long long)out->n, k = (long long)out->k;
        anvil_qweight_free(out);
        return ANVIL_FAIL(ANVIL_ERR_FORMAT, "pre-quantized '%s' holds a [%lld, %lld] weight but the config implies [%lld, %lld]",
                          module, n, k, (long long)w->shape[0], (long long)w->shape[1]);
    }
    return ANVIL_OK;
}

static int is_float(anvil_dtype dt)
{
    return dt == ANVIL_DTYPE_F32 || dt == ANVIL_DTYPE_F16 || dt == ANVIL_DTYPE_BF16;
}

anvil_status anvil_prequant_probe(const anvil_quant_config *qc, const anvil_network *net, int32_t i,
                                  const anvil_checkpoint *ck, anvil_prequant_info *out)
{
    memset(out, 0, sizeof *out);
    if (qc == NULL || qc->format == ANVIL_QFORMAT_NONE || ck == NULL)
        return ANVIL_OK;
    const anvil_net_weight *w = anvil_network_weight(net, i);
    char module[ANVIL_QNAME_MAX];
    if (!module_of(w, module, sizeof module)) {
        /* a slice or stack of checkpoint tensors: fine while they are
         * plain (check_recipe says otherwise where they are not) */
        return ANVIL_OK;
    }
    anvil_quant_linear ql;
    TRY(anvil_quant_config_linear(qc, module, &ql));
    if (ql.scheme == ANVIL_QSCHEME_NONE)
        return ANVIL_OK;
    const anvil_st_tensor *plain = anvil_checkpoint_find(ck, w->sources[0]);
    if (anvil_checkpoint_find(ck, ql.scales) == NULL && plain != NULL && is_float(plain->dtype))
        return ANVIL_OK; /* left unquantized without being listed as ignored */
    anvil_qweight q;
    TRY(convert_member(qc, w, module, &ql, ck, &q));
    out->quantized = 1;
    out->kind = q.dtype;
    out->group = q.quant.group;
    out->zeros = q.zeros != NULL;
    out->perm = q.perm != NULL;
    out->act = q.quant.act;
    out->input_scale = q.quant.input_scale;
    anvil_qweight_free(&q);
    return ANVIL_OK;
}

int anvil_prequant_fusable(const anvil_prequant_info *info, const int32_t *ws, int32_t n)
{
    const anvil_prequant_info *a = &info[ws[0]];
    for (int32_t k = 0; k < n; k++) {
        const anvil_prequant_info *b = &info[ws[k]];
        if (b->quantized != a->quantized)
            return 0;
        if (!a->quantized)
            continue;
        if (b->kind != a->kind || b->group != a->group || b->act != a->act || b->perm || b->zeros != a->zeros)
            return 0;
    }
    return 1;
}

/* ------------------------------------------------------------ the converter */

/* Bytes per row of stored tensor t's role, for a weight of k columns and
 * g scales a row. */
static size_t row_bytes(const anvil_stored *t, const anvil_stored *w, int64_t g)
{
    switch (t->role) {
    case ANVIL_STORED_WEIGHT: return anvil_stored_kind_bytes(w->kind, w->shape[1]);
    case ANVIL_STORED_SCALES: return (size_t)g * sizeof(float);
    case ANVIL_STORED_ZEROS: return (size_t)g;
    case ANVIL_STORED_PERM: return 0;
    }
    return 0;
}

static anvil_status prequant_fill(const anvil_build_plan *p, const anvil_network *net, const anvil_checkpoint *ck,
                                  int32_t s, size_t offset, void *dst, size_t len, anvil_build_scratch *scratch)
{
    (void)scratch;
    CHECK(ck != NULL, ANVIL_ERR_INVALID_ARG, "pre-quantized weights need their checkpoint");
    const anvil_stored *t = &p->stored[s];
    const int32_t ws = t->role == ANVIL_STORED_WEIGHT ? s : t->of;
    const anvil_stored *w = &p->stored[ws];
    const int64_t k = w->shape[1], g = w->q.group ? k / w->q.group : 1;
    const size_t rb = row_bytes(t, w, g);
    CHECK(t->role != ANVIL_STORED_PERM || w->n == 1, ANVIL_ERR_INTERNAL,
          "'%s': a permutation of %d fused weights", t->name, w->n);
    int64_t row0 = 0;
    for (int32_t m = 0; m < w->n; m++) {
        const anvil_net_weight *nw = anvil_network_weight(net, p->members[w->first + m]);
        const int64_t rows = nw->shape[0];
        const size_t a = t->role == ANVIL_STORED_PERM ? 0 : (size_t)row0 * rb;
        const size_t b = t->role == ANVIL_STORED_PERM ? (size_t)k * sizeof(int32_t) : (size_t)(row0 + rows) * rb;
        row0 += rows;
        if (b <= offset || a >= offset + len)
            continue;
        char module[ANVIL_QNAME_MAX];
        CHECK(module_of(nw, module, sizeof module), ANVIL_ERR_INTERNAL, "'%s' is not one checkpoint tensor",
              nw->name);
        anvil_quant_linear ql;
        TRY(anvil_quant_config_linear(&p->prequant, module, &ql));
        anvil_qweight q;
        TRY(convert_member(&p->prequant, nw, module, &ql, ck, &q));
        const void *from = t->role == ANVIL_STORED_WEIGHT   ? q.data
                           : t->role == ANVIL_STORED_SCALES ? (const void *)q.scales
                           : t->role == ANVIL_STORED_ZEROS  ? (const void *)q.zeros
                                                            : (const void *)q.perm;
        if (from == NULL || (t->role == ANVIL_STORED_SCALES && q.n_groups != g)) {
            anvil_qweight_free(&q);
            return ANVIL_FAIL(ANVIL_ERR_FORMAT, "pre-quantized '%s' converts differently than when the plan was made",
                              module);
        }
        const size_t lo = a > offset ? a : offset, hi = b < offset + len ? b : offset + len;
        memcpy((char *)dst + (lo - offset), (const char *)from + (lo - a), hi - lo);
        anvil_qweight_free(&q);
    }
    return ANVIL_OK;
}

const anvil_stored_converter anvil_prequant_converter = {.method = "prequantized", .fill = prequant_fill};
