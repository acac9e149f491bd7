/*
 * cpu_attention_tmpl.h: the attention work item, written once against the
 * 16-lane primitives of cpu_vec_*.h and instantiated per ISA.
 *
 * Before including, define ATTN_ENTRY (the name of the anvil_cpu_attn_fn)
 * and ATTN_DCHUNKS (16-wide chunks of head_dim per value pass; ATTN_HEAD_TILE
 * x ATTN_DCHUNKS accumulators must fit in registers).
 *
 * A work item is one token and one kv head: all the query heads of that
 * GQA group run together, so every cached key and value row is loaded once
 * for the group. Per query head and per element the arithmetic is fixed
 * (batch invariance):
 *   score_j = v_reduce(dot16(q, k_j)) * scale       for j = lo .. p
 *     (then tanhf(score_j / softcap) * softcap with a softcap: Gemma 2)
 *   m = max_j score_j; e_j = v_exp(score_j - m)
 *   sum = v_reduce(16 lanes, lane l adding e_j for j - lo = l mod 16 in order)
 *   out[d] = (fma chain over j = lo .. p of e_j * v_j[d]) / sum
 * It depends only on q, the cached rows and (lo, p), never on the batch.
 */

#define ATTN_HEAD_TILE 4

/* Rows this many positions ahead are prefetched (block tables scatter the
 * cached rows, so the hardware prefetcher cannot follow them), into L2:
 * the rows of one kv head are a power of two apart, so they share a few
 * L1 sets and prefetching that far into L1 would evict itself. */
#define ATTN_PF 32

VEC_INLINE void attn_prefetch_row(const void *base, int64_t off, int64_t bytes, int64_t esz)
{
    const char *p = (const char *)base + off * esz;
    for (int64_t b = 0; b < bytes; b += 64)
        __builtin_prefetch(p + b, 0, 2);
}

/* scores[h][j] = q_h . k_j * scale for HN heads, rows at elements off[j].
 * Blocks of 16 / HN positions x HN heads fill 16 accumulators, reduced
 * together by v_reduce16 (the same bits as one v_reduce each, a third of
 * the shuffles); the positions left over go one at a time. */
VEC_INLINE void attn_scores(const int HN, const anvil_dtype DT, const float *q, int64_t hd, const void *kc,
                            const int64_t *off, int32_t n, float scale, float *scores, int64_t ld)
{
    const int64_t esz = DT == ANVIL_DTYPE_F32 ? 4 : DT == ANVIL_DTYPE_F8_E4M3 ? 1 : 2;
    const int JB = 16 / HN;
    int32_t j = 0;
    for (; j + JB <= n; j += JB) {
        for (int jj = 0; jj < JB && j + ATTN_PF + jj < n; jj++)
            attn_prefetch_row(kc, off[j + ATTN_PF + jj], hd * esz, esz);
        vec16 acc[16];
VEC_UNROLL
        for (int i = 0; i < 16; i++)
            acc[i] = v_zero();
        int64_t d = 0;
        for (; d + 16 <= hd; d += 16) {
            vec16 qv[ATTN_HEAD_TILE];
VEC_UNROLL
            for (int h = 0; h < HN; h++)
                qv[h] = v_load(q + h * hd + d);
VEC_UNROLL
            for (int jj = 0; jj < JB; jj++) {
                vec16 kv = v_load_w(kc, off[j + jj] + d, DT);
VEC_UNROLL
                for (int h = 0; h < HN; h++)
                    acc[jj * HN + h] = v_fma(qv[h], kv, acc[jj * HN + h]);
            }
        }
        if (d < hd) {
            int r = (int)(hd - d);
            vec16 qv[ATTN_HEAD_TILE];
VEC_UNROLL
            for (int h = 0; h < HN; h++)
                qv[h] = v_load_n(q + h * hd + d, r);
VEC_UNROLL
            for (int jj = 0; jj < JB; jj++) {
                vec16 kv = v_load_w_n(kc, off[j + jj] + d, r, DT);
VEC_UNROLL
                for (int h = 0; h < HN; h++)
                    acc[jj * HN + h] = v_fma(qv[h], kv, acc[jj * HN + h]);
            }
        }
        float red[16];
        v_reduce16(acc, red);
VEC_UNROLL
        for (int jj = 0; jj < JB; jj++)
VEC_UNROLL
            for (int h = 0; h < HN; h++)
                scores[h * ld + j + jj] = red[jj * HN + h] * scale;
    }
    for (; j < n; j++) {
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

/* out_h[d] = sum_j p[h][j] * v_j[d] / sums[h], for HN heads. Positions are
 * the outer loop, so each value row is read contiguously, ATTN_DCHUNKS
 * 16-wide chunks of d per pass (the accumulators of a pass stay in
 * registers); each out[d] still sums over j in order. */
VEC_INLINE void attn_values(const int HN, const anvil_dtype DT, const float *p, int64_t ld, const float *sums,
                            const void *vc, const int64_t *off, int32_t n, int64_t hd, float *out)
{
    const int64_t esz = DT == ANVIL_DTYPE_F32 ? 4 : DT == ANVIL_DTYPE_F8_E4M3 ? 1 : 2;
    for (int64_t d0 = 0; d0 < hd; d0 += 16 * ATTN_DCHUNKS) {
        int64_t left = hd - d0;
        int nc = left >= 16 * ATTN_DCHUNKS ? ATTN_DCHUNKS : (int)((left + 15) / 16);
        int rlast = (int)(left - 16 * (nc - 1) < 16 ? left - 16 * (nc - 1) : 16);
        vec16 acc[ATTN_HEAD_TILE][ATTN_DCHUNKS];
VEC_UNROLL
        for (int h = 0; h < HN; h++)
VEC_UNROLL
            for (int c = 0; c < ATTN_DCHUNKS; c++)
                acc[h][c] = v_zero();
        for (int32_t j = 0; j < n; j++) {
            if (j + ATTN_PF < n)
                attn_prefetch_row(vc, off[j + ATTN_PF] + d0, (int64_t)nc * 16 * esz, esz);
            vec16 pv[ATTN_HEAD_TILE];
VEC_UNROLL
            for (int h = 0; h < HN; h++)
                pv[h] = v_set1(p[h * ld + j]);
VEC_UNROLL
            for (int c = 0; c < ATTN_DCHUNKS; c++) {
                if (c < nc) {
                    vec16 vv = c == nc - 1 && rlast < 16 ? v_load_w_n(vc, off[j] + d0 + 16 * c, rlast, DT)
                                                         : v_load_w(vc, off[j] + d0 + 16 * c, DT);
VEC_UNROLL
                    for (int h = 0; h < HN; h++)
                        acc[h][c] = v_fma(pv[h], vv, acc[h][c]);
                }
            }
        }
VEC_UNROLL
        for (int h = 0; h < HN; h++)
VEC_UNROLL
            for (int c = 0; c < ATTN_DCHUNKS; c++)
                if (c < nc)
                    v_store_n(out + h * hd + d0 + 16 * c, v_div(acc[h][c], v_set1(sums[h])), c == nc - 1 ? rlast : 16);
    }
}

/* Softmax numerators in place: sc[j] = exp(sc[j] - max) for j < n (v_exp);
 * returns their sum, added in 16 lanes (lane = j mod 16, in order of j) and
 * reduced by v_reduce. The row has room for n rounded up to 16. */
VEC_INLINE float attn_softmax(float *sc, int32_t n)
{
    vec16 mv = v_set1(-INFINITY);
    int32_t j = 0;
    for (; j + 16 <= n; j += 16)
        mv = v_max(mv, v_load(sc + j));
    float lanes[16];
    v_store(lanes, mv);
    float m = -INFINITY; /* the max is exact in any order */
    for (int l = 0; l < 16; l++)
        m = lanes[l] > m ? lanes[l] : m;
    for (; j < n; j++)
        m = sc[j] > m ? sc[j] : m;
    vec16 mm = v_set1(m), acc = v_zero();
    for (j = 0; j + 16 <= n; j += 16) {
        vec16 e = v_exp(v_sub(v_load(sc + j), mm));
        v_store(sc + j, e);
        acc = v_add(acc, e);
    }
    if (j < n) {
        int r = n - j;
        float tail[16];
        v_store(tail, v_exp(v_sub(v_load_n(sc + j, r), mm)));
        for (int l = r; l < 16; l++)
            tail[l] = 0.0f;
        memcpy(sc + j, tail, (size_t)r * sizeof(float));
        acc = v_add(acc, v_load(tail));
    }
    return v_reduce(acc);
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
ATTN_INST_H(fp8, ANVIL_DTYPE_F8_E4M3)

typedef void (*attn_scores_fn)(const float *q, int64_t hd, const void *kc, const int64_t *off, int32_t n, float scale,
                               float *scores, int64_t ld);
typedef void (*attn_values_fn)(const float *p, int64_t ld, const float *sums, const void *vc, const int64_t *off,
                               int32_t n, int64_t hd, float *out);

#define ATTN_ROW(KIND, DTN) {attn_##KIND##_1_##DTN, attn_##KIND##_2_##DTN, attn_##KIND##_3_##DTN, attn_##KIND##_4_##DTN}
static const attn_scores_fn attn_scores_tbl[4][ATTN_HEAD_TILE] = {ATTN_ROW(scores, f32), ATTN_ROW(scores, bf16),
                                                                   ATTN_ROW(scores, f16), ATTN_ROW(scores, fp8)};
static const attn_values_fn attn_values_tbl[4][ATTN_HEAD_TILE] = {ATTN_ROW(values, f32), ATTN_ROW(values, bf16),
                                                                   ATTN_ROW(values, f16), ATTN_ROW(values, fp8)};

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
    int di = cdt == ANVIL_DTYPE_F32 ? 0 : cdt == ANVIL_DTYPE_BF16 ? 1 : cdt == ANVIL_DTYPE_F16 ? 2 : 3;
    /* An fp8 cache's scales, applied once per score and once per output
     * (k_scale folded into the score scale, v_scale into the softmax sum)
     * instead of on every element; 1 (no change) for the other dtypes. */
    const float ks = anvil_cpu_kv_scale(cdt, a->k_scale), vs = anvil_cpu_kv_scale(cdt, a->v_scale);

    /* element offset of (slot of position j, kv head g) in either cache */
    int64_t *off = scratch;
    float *scores = (float *)(off + ((int64_t)n + 15) / 16 * 16); /* [group][ld] */
    int64_t ld = ((int64_t)n + 15) / 16 * 16;
    const int32_t *bt = st->block_tables + (int64_t)s * st->max_blocks_per_seq;
    int32_t bs = st->block_size;
    for (int32_t j = lo, blk = lo / bs, in = lo % bs; j <= p; j++) { /* no division per position */
        off[j - lo] = ((int64_t)bt[blk] * bs + in) * kw + (int64_t)g * hd;
        if (++in == bs) {
            in = 0;
            blk++;
        }
    }

    const float *q = (const float *)a->q->data + (int64_t)t * qw + (int64_t)g * group * hd;
    for (int32_t h = 0; h < group; h += ATTN_HEAD_TILE) {
        int hn = group - h < ATTN_HEAD_TILE ? group - h : ATTN_HEAD_TILE;
        attn_scores_tbl[di][hn - 1](q + h * hd, hd, a->k_cache->data, off, n, a->scale * ks, scores + h * ld, ld);
    }
    if (a->softcap > 0.0f) /* Gemma 2: tanh(s / cap) * cap, as the reference, before the softmax */
        for (int32_t h = 0; h < group; h++)
            for (int32_t j = 0; j < n; j++)
                scores[h * ld + j] = anvil_cpu_softcap_score(scores[h * ld + j], a->softcap);

    float sums[ATTN_HEAD_TILE];
    float *out = (float *)a->out->data + (int64_t)t * qw + (int64_t)g * group * hd;
    for (int32_t h = 0; h < group; h += ATTN_HEAD_TILE) {
        int hn = group - h < ATTN_HEAD_TILE ? group - h : ATTN_HEAD_TILE;
        for (int i = 0; i < hn; i++)
            sums[i] = attn_softmax(scores + (h + i) * ld, n) / vs;
        attn_values_tbl[di][hn - 1](scores + h * ld, ld, sums, a->v_cache->data, off, n, hd, out + h * hd);
    }
}
