/*
 * cpu_attention_tmpl.h: the attention work item, written once against the
 * 16-lane primitives of cpu_vec_*.h and instantiated per ISA.
 *
 * Before including, define ATTN_ENTRY (the name of the anvil_cpu_attn_fn).
 *
 * A work item is one token and one kv head: all the query heads of that
 * GQA group run together, so every cached key and value row is loaded once
 * for the group. Per query head and per element the arithmetic is fixed
 * (batch invariance):
 *   score_j = v_reduce(dot16(q, k_j)) * scale       for j = lo .. p
 *   m = max_j score_j; e_j = expf(score_j - m); sum = e_lo + ... + e_p (in order)
 *   out[d] = (fma chain over j = lo .. p of e_j * v_j[d]) / sum
 * It depends only on q, the cached rows and (lo, p), never on the batch.
 */

#define ATTN_HEAD_TILE 4

/* scores[h][j] = q_h . k_j * scale for HN heads, rows at elements off[j]. */
VEC_INLINE void attn_scores(const int HN, const anvil_dtype DT, const float *q, int64_t hd, const void *kc,
                            const int64_t *off, int32_t n, float scale, float *scores, int64_t ld)
{
    for (int32_t j = 0; j < n; j++) {
        vec16 acc[ATTN_HEAD_TILE];
VEC_UNROLL
        for (int h = 0; h < HN; h++)
            acc[h] = v_zero();
        int64_t d = 0;
        for (; d + 16 <= hd; d += 16) {
            vec16 kv = v_load_w(kc, off[j] + d, DT);
VEC_UNROLL
            for (int h = 0; h < HN; h++)
                acc[h] = v_fma(v_load(q + h * hd + d), kv, acc[h]);
        }
        if (d < hd) {
            int r = (int)(hd - d);
            vec16 kv = v_load_w_n(kc, off[j] + d, r, DT);
VEC_UNROLL
            for (int h = 0; h < HN; h++)
                acc[h] = v_fma(v_load_n(q + h * hd + d, r), kv, acc[h]);
        }
VEC_UNROLL
        for (int h = 0; h < HN; h++)
            scores[h * ld + j] = v_reduce(acc[h]) * scale;
    }
}

/* out_h[d] = sum_j p[h][j] * v_j[d] / sums[h], for HN heads. */
VEC_INLINE void attn_values(const int HN, const anvil_dtype DT, const float *p, int64_t ld, const float *sums,
                            const void *vc, const int64_t *off, int32_t n, int64_t hd, float *out)
{
    for (int64_t d = 0; d < hd; d += 16) {
        int r = hd - d < 16 ? (int)(hd - d) : 16;
        vec16 acc[ATTN_HEAD_TILE];
VEC_UNROLL
        for (int h = 0; h < HN; h++)
            acc[h] = v_zero();
        if (r == 16) {
            for (int32_t j = 0; j < n; j++) {
                vec16 vv = v_load_w(vc, off[j] + d, DT);
VEC_UNROLL
                for (int h = 0; h < HN; h++)
                    acc[h] = v_fma(v_set1(p[h * ld + j]), vv, acc[h]);
            }
        } else {
            for (int32_t j = 0; j < n; j++) {
                vec16 vv = v_load_w_n(vc, off[j] + d, r, DT);
VEC_UNROLL
                for (int h = 0; h < HN; h++)
                    acc[h] = v_fma(v_set1(p[h * ld + j]), vv, acc[h]);
            }
        }
VEC_UNROLL
        for (int h = 0; h < HN; h++)
            v_store_n(out + h * hd + d, v_div(acc[h], v_set1(sums[h])), r);
    }
}

#define ATTN_INST(HN, DTN, DT)                                                                                  \
    static VEC_FN void attn_scores_##HN##_##DTN(const float *q, int64_t hd, const void *kc, const int64_t *off, \
                                                int32_t n, float scale, float *scores, int64_t ld)              \
    {                                                                                                           \
        attn_scores(HN, DT, q, hd, kc, off, n, scale, scores, ld);                                             \
    }                                                                                                           \
    static VEC_FN void attn_values_##HN##_##DTN(const float *p, int64_t ld, const float *sums, const void *vc,   \
                                                const int64_t *off, int32_t n, int64_t hd, float *out)          \
    {                                                                                                           \
        attn_values(HN, DT, p, ld, sums, vc, off, n, hd, out);                                                  \
    }
#define ATTN_INST_H(DTN, DT) ATTN_INST(1, DTN, DT) ATTN_INST(2, DTN, DT) ATTN_INST(3, DTN, DT) ATTN_INST(4, DTN, DT)
ATTN_INST_H(f32, ANVIL_DTYPE_F32)
ATTN_INST_H(bf16, ANVIL_DTYPE_BF16)
ATTN_INST_H(f16, ANVIL_DTYPE_F16)

typedef void (*attn_scores_fn)(const float *q, int64_t hd, const void *kc, const int64_t *off, int32_t n, float scale,
                               float *scores, int64_t ld);
typedef void (*attn_values_fn)(const float *p, int64_t ld, const float *sums, const void *vc, const int64_t *off,
                               int32_t n, int64_t hd, float *out);

#define ATTN_ROW(KIND, DTN) {attn_##KIND##_1_##DTN, attn_##KIND##_2_##DTN, attn_##KIND##_3_##DTN, attn_##KIND##_4_##DTN}
static const attn_scores_fn attn_scores_tbl[3][ATTN_HEAD_TILE] = {ATTN_ROW(scores, f32), ATTN_ROW(scores, bf16),
                                                                   ATTN_ROW(scores, f16)};
static const attn_values_fn attn_values_tbl[3][ATTN_HEAD_TILE] = {ATTN_ROW(values, f32), ATTN_ROW(values, bf16),
                                                                   ATTN_ROW(values, f16)};

static VEC_FN void ATTN_ENTRY(const anvil_attention_args *a, int32_t t, int32_t g, void *scratch)
{
    const anvil_step *st = a->step;
    int64_t hd = a->head_dim;
    int32_t group = a->n_heads / a->n_kv_heads;
    int64_t kw = (int64_t)a->n_kv_heads * hd, qw = (int64_t)a->n_heads * hd;
    int32_t s = st->seq_of_token[t], p = st->positions[t];
    int32_t lo = anvil_cpu_window_lo(p, a->sliding_window);
    int32_t n = p - lo + 1;
    anvil_dtype cdt = a->k_cache->dtype;
    int di = cdt == ANVIL_DTYPE_F32 ? 0 : cdt == ANVIL_DTYPE_BF16 ? 1 : 2;

    /* element offset of (slot of position j, kv head g) in either cache */
    int64_t *off = scratch;
    float *scores = (float *)(off + ((int64_t)n + 15) / 16 * 16); /* [group][ld] */
    int64_t ld = ((int64_t)n + 15) / 16 * 16;
    const int32_t *bt = st->block_tables + (int64_t)s * st->max_blocks_per_seq;
    for (int32_t j = lo; j <= p; j++)
        off[j - lo] = ((int64_t)bt[j / st->block_size] * st->block_size + j % st->block_size) * kw + (int64_t)g * hd;

    const float *q = (const float *)a->q->data + (int64_t)t * qw + (int64_t)g * group * hd;
    for (int32_t h = 0; h < group; h += ATTN_HEAD_TILE) {
        int hn = group - h < ATTN_HEAD_TILE ? group - h : ATTN_HEAD_TILE;
        attn_scores_tbl[di][hn - 1](q + h * hd, hd, a->k_cache->data, off, n, a->scale, scores + h * ld, ld);
    }

    float sums[ATTN_HEAD_TILE];
    float *out = (float *)a->out->data + (int64_t)t * qw + (int64_t)g * group * hd;
    for (int32_t h = 0; h < group; h += ATTN_HEAD_TILE) {
        int hn = group - h < ATTN_HEAD_TILE ? group - h : ATTN_HEAD_TILE;
        for (int i = 0; i < hn; i++) {
            float *sc = scores + (h + i) * ld;
            float m = -INFINITY;
            for (int32_t j = 0; j < n; j++)
                m = sc[j] > m ? sc[j] : m;
            float sum = 0.0f;
            for (int32_t j = 0; j < n; j++) {
                sc[j] = expf(sc[j] - m);
                sum += sc[j];
            }
            sums[i] = sum;
        }
        attn_values_tbl[di][hn - 1](scores + h * ld, ld, sums, a->v_cache->data, off, n, hd, out + h * hd);
    }
}
