/*
 * LongRoPE (Phi-3 128k, Phi-3.5) from config to rotated values:
 *  - the tables anvil_rope_tables computes against transformers' formula,
 *    1 / (ext_i * theta^(2i/d)), evaluated in double;
 *  - the CPU rope op (threaded and reference) against a double-precision
 *    evaluation of transformers' rotation (cos and sin times the attention
 *    factor) for tokens of a packed batch: a sequence at most
 *    original_max_position long after the step (short factors), one longer
 *    (long factors, also at its positions below the threshold), one that
 *    crosses it in this step, and a decode token at the threshold;
 *  - attention with the rope fused in (anvil_attention_args.rope) equal to
 *    the two rope ops then attention, bit for bit.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/model_config.h"
#include "backend/backend.h"
#include "backend/cpu/cpu_reference.h"
#include "runtime/rope_table.h"
#include "testutil.h"

#define HD 96 /* Phi-3 mini's head_dim */
#define HALF (HD / 2)
#define THRESHOLD 64

/* A LongRoPE config shaped like Phi-3 mini 128k's (factors rising with the
 * wavelength), original context THRESHOLD, context 32x that. */
static anvil_rope_config longrope_config(void)
{
    anvil_rope_config r = {.type = ANVIL_ROPE_LONGROPE, .theta = 10000.0, .original_max_position = THRESHOLD};
    r.factor = 32.0;
    r.attention_factor = sqrt(1.0 + log(r.factor) / log((double)THRESHOLD));
    r.n_ext_factors = HALF;
    for (int i = 0; i < HALF; i++) {
        r.short_factor[i] = 1.0f + 0.02f * (float)i;
        r.long_factor[i] = 1.0f + 1.25f * (float)i;
    }
    return r;
}

/* transformers' inverse frequency i, in double */
static double ref_inv_freq(const anvil_rope_config *r, const float *ext, int i)
{
    return 1.0 / ((double)ext[i] * pow(r->theta, (double)(2 * i) / (double)HD));
}

static void test_tables(void **s)
{
    (void)s;
    const anvil_rope_config r = longrope_config();
    float table[HD];
    int n_tables = 0;
    int32_t long_after = 0;
    float scale = 0;
    assert_int_equal(anvil_rope_tables(&r, HD, table, &n_tables, &long_after, &scale), ANVIL_OK);
    assert_int_equal(n_tables, 2);
    assert_int_equal(long_after, THRESHOLD);
    assert_true(scale == (float)r.attention_factor);
    assert_true(fabs(scale - 1.35401) < 1e-5); /* sqrt(1 + ln 32 / ln 64) */
    for (int i = 0; i < HALF; i++) {
        const double ws = ref_inv_freq(&r, r.short_factor, i), wl = ref_inv_freq(&r, r.long_factor, i);
        if (fabs(table[i] - ws) > 1e-6 * ws || fabs(table[HALF + i] - wl) > 1e-6 * wl)
            fail_msg("inv_freq %d: short %.9g (want %.9g), long %.9g (want %.9g)", i, (double)table[i], ws,
                     (double)table[HALF + i], wl);
    }
    /* anvil_rope_inv_freq gives the short table alone */
    float short_only[HALF];
    assert_int_equal(anvil_rope_inv_freq(&r, HD, short_only), ANVIL_OK);
    assert_memory_equal(short_only, table, sizeof short_only);

    /* a plain RoPE: one table, no scale */
    const anvil_rope_config d = {.type = ANVIL_ROPE_DEFAULT, .theta = 10000.0, .factor = 1.0};
    assert_int_equal(anvil_rope_tables(&d, HD, table, &n_tables, &long_after, &scale), ANVIL_OK);
    assert_int_equal(n_tables, 1);
    assert_true(scale == 1.0f);

    /* a hand-made config the tables refuse */
    anvil_rope_config bad = r;
    bad.n_ext_factors = HALF - 1;
    assert_status_msg(anvil_rope_tables(&bad, HD, table, &n_tables, &long_after, &scale), ANVIL_ERR_FORMAT,
                      "factors");
    bad = r;
    bad.long_factor[3] = NAN;
    assert_status_msg(anvil_rope_tables(&bad, HD, table, &n_tables, &long_after, &scale), ANVIL_ERR_FORMAT,
                      "factor 3");
    bad = r;
    bad.attention_factor = INFINITY;
    assert_status_msg(anvil_rope_tables(&bad, HD, table, &n_tables, &long_after, &scale), ANVIL_ERR_FORMAT,
                      "attention_factor");
}

/* The batch: sequences of
 *   0: 40 prompt tokens, positions 0..39 (40 <= THRESHOLD: short factors);
 *   1: 100 prompt tokens, 0..99 (long factors for all, 0..63 included);
 *   2: a chunk at positions 50..79 (its length after the step, 80, is past
 *      the threshold: long factors, 50..63 included);
 *   3: one decode token at position 63 (length 64: short);
 *   4: one decode token at position 64 (length 65: long). */
enum { N_SEQS = 5 };
static const int32_t seq_first[N_SEQS] = {0, 0, 50, 63, 64}, seq_n[N_SEQS] = {40, 100, 30, 1, 1};

typedef struct batch {
    int32_t T;
    int32_t *pos, *seq_of, lens[N_SEQS], starts[N_SEQS + 1];
    anvil_step step;
} batch;

/* b's step points into b: b must stay where it is */
static void make_batch(batch *b)
{
    memset(b, 0, sizeof *b);
    for (int s = 0; s < N_SEQS; s++)
        b->T += seq_n[s];
    b->pos = malloc((size_t)b->T * 4);
    b->seq_of = malloc((size_t)b->T * 4);
    assert_true(b->pos && b->seq_of);
    int32_t t = 0;
    for (int s = 0; s < N_SEQS; s++) {
        b->starts[s] = t;
        for (int32_t j = 0; j < seq_n[s]; j++, t++) {
            b->pos[t] = seq_first[s] + j;
            b->seq_of[t] = s;
        }
        b->lens[s] = seq_first[s] + seq_n[s];
    }
    b->starts[N_SEQS] = t;
    b->step = (anvil_step){.n_tokens = b->T, .n_seqs = N_SEQS, .positions = b->pos, .seq_of_token = b->seq_of,
                           .seq_starts = b->starts, .seq_lens = b->lens};
}

static void free_batch(batch *b)
{
    free(b->pos);
    free(b->seq_of);
}

/* The largest |got - transformers| over x [T, heads * HD] rotated by the
 * factors `force` (NULL: each token's own, by its sequence's length). */
static double max_err(const anvil_rope_config *r, const batch *b, const float *x0, const float *got, int heads,
                      const float *force)
{
    double worst = 0;
    for (int32_t t = 0; t < b->T; t++) {
        const float *ext = force ? force : b->lens[b->seq_of[t]] > THRESHOLD ? r->long_factor : r->short_factor;
        for (int h = 0; h < heads; h++) {
            const float *xh = x0 + ((size_t)t * heads + h) * HD, *gh = got + ((size_t)t * heads + h) * HD;
            for (int i = 0; i < HALF; i++) {
                const double angle = (double)b->pos[t] * ref_inv_freq(r, ext, i);
                const double c = cos(angle) * r->attention_factor, sn = sin(angle) * r->attention_factor;
                const double y1 = (double)xh[i] * c - (double)xh[i + HALF] * sn;
                const double y2 = (double)xh[i + HALF] * c + (double)xh[i] * sn;
                worst = fmax(worst, fmax(fabs(gh[i] - y1), fabs(gh[i + HALF] - y2)));
            }
        }
    }
    return worst;
}

static void test_rope_op_matches_transformers(void **s)
{
    (void)s;
    const anvil_rope_config r = longrope_config();
    float table[HD];
    int n_tables;
    anvil_rope_freqs f;
    assert_int_equal(anvil_rope_tables(&r, HD, table, &n_tables, &f.long_after, &f.scale), ANVIL_OK);
    f.inv_freq = table; /* the CPU backend's memory is the host's */
    f.inv_freq_long = table + HALF;

    batch b;
    make_batch(&b);
    const int heads = 4; /* 172 tokens x 384 values: the op runs threaded */
    const size_t n = (size_t)b.T * heads * HD;
    float *x0 = malloc(n * 4), *got = malloc(n * 4), *ref = malloc(n * 4);
    assert_true(x0 && got && ref);
    uint64_t rng = 7;
    for (size_t i = 0; i < n; i++)
        x0[i] = anvil_test_randf(&rng);
    memcpy(got, x0, n * 4);
    memcpy(ref, x0, n * 4);

    anvil_backend *be = NULL;
    assert_int_equal(anvil_backend_cpu_create(4, &be), ANVIL_OK);
    anvil_tensor tg = anvil_tensor_2d(ANVIL_DTYPE_F32, b.T, (int64_t)heads * HD, got);
    anvil_tensor tr = anvil_tensor_2d(ANVIL_DTYPE_F32, b.T, (int64_t)heads * HD, ref);
    assert_int_equal(be->ops->rope(be, &tg, &b.step, HD, &f), ANVIL_OK);
    assert_int_equal(anvil_cpu_ref_rope(&tr, &b.step, HD, &f), ANVIL_OK);
    assert_memory_equal(got, ref, n * 4); /* the threaded op is the reference's arithmetic */

    /* |x| < 1 and the factor is 1.35: float angles of positions < 100 keep
     * the error near 1e-5 */
    const double err = max_err(&r, &b, x0, got, heads, NULL);
    printf("  longrope rope op: max |anvil - transformers (double)| %.3g\n", err);
    assert_true(err < 1e-4);
    /* and the tables differ enough that the wrong one would be caught */
    assert_true(max_err(&r, &b, x0, got, heads, r.short_factor) > 1e-2);
    assert_true(max_err(&r, &b, x0, got, heads, r.long_factor) > 1e-2);

    /* the same tokens alone (a batch of one sequence each) give the same
     * bits: the choice is each sequence's own */
    for (int sq = 0; sq < N_SEQS; sq++) {
        const int32_t t0 = b.starts[sq], nt = b.starts[sq + 1] - t0;
        int32_t len[1] = {b.lens[sq]}, st2[2] = {0, nt};
        int32_t *sof = calloc((size_t)nt, 4);
        assert_non_null(sof);
        anvil_step one = {.n_tokens = nt, .n_seqs = 1, .positions = b.pos + t0, .seq_of_token = sof,
                          .seq_starts = st2, .seq_lens = len};
        float *alone = malloc((size_t)nt * heads * HD * 4);
        assert_non_null(alone);
        memcpy(alone, x0 + (size_t)t0 * heads * HD, (size_t)nt * heads * HD * 4);
        anvil_tensor ta = anvil_tensor_2d(ANVIL_DTYPE_F32, nt, (int64_t)heads * HD, alone);
        assert_int_equal(be->ops->rope(be, &ta, &one, HD, &f), ANVIL_OK);
        assert_memory_equal(alone, got + (size_t)t0 * heads * HD, (size_t)nt * heads * HD * 4);
        free(alone);
        free(sof);
    }

    /* two tables need the step's sequence arrays */
    anvil_step bare = b.step;
    bare.seq_lens = NULL;
    assert_status_msg(be->ops->rope(be, &tg, &bare, HD, &f), ANVIL_ERR_INVALID_ARG, "seq_lens");
    anvil_backend_free(be);
    free(x0);
    free(got);
    free(ref);
    free_batch(&b);
}

/* Attention with args.rope (the fusion plan's path) against the two rope
 * ops and attention without it: the same bits in the output and the cache. */
static void test_attention_rope_fused(void **s)
{
    (void)s;
    const anvil_rope_config r = longrope_config();
    float table[HD];
    int n_tables;
    anvil_rope_freqs f;
    assert_int_equal(anvil_rope_tables(&r, HD, table, &n_tables, &f.long_after, &f.scale), ANVIL_OK);
    f.inv_freq = table;
    f.inv_freq_long = table + HALF;

    batch b;
    make_batch(&b);
    enum { NH = 4, NKV = 2, BS = 16, MB = 8 };
    const int64_t qw = NH * HD, kw = NKV * HD;
    int32_t tables[N_SEQS * MB], *slots = malloc((size_t)b.T * 4);
    assert_non_null(slots);
    for (int sq = 0; sq < N_SEQS; sq++)
        for (int j = 0; j < MB; j++)
            tables[sq * MB + j] = sq * MB + j;
    for (int32_t t = 0; t < b.T; t++)
        slots[t] = tables[b.seq_of[t] * MB + b.pos[t] / BS] * BS + b.pos[t] % BS;
    b.step.block_tables = tables;
    b.step.max_blocks_per_seq = MB;
    b.step.block_size = BS;
    b.step.slots = slots;
    b.step.max_context = 100;
    const size_t cache_n = (size_t)N_SEQS * MB * BS * kw;
    uint64_t rng = 11;
    float *q[2], *k[2], *v = malloc((size_t)b.T * kw * 4), *out[2], *kc[2], *vc[2];
    assert_non_null(v);
    for (size_t i = 0; i < (size_t)b.T * kw; i++)
        v[i] = anvil_test_randf(&rng);
    for (int p = 0; p < 2; p++) {
        q[p] = malloc((size_t)b.T * qw * 4);
        k[p] = malloc((size_t)b.T * kw * 4);
        out[p] = malloc((size_t)b.T * qw * 4);
        kc[p] = calloc(cache_n, 4);
        vc[p] = calloc(cache_n, 4);
        assert_true(q[p] && k[p] && out[p] && kc[p] && vc[p]);
    }
    for (size_t i = 0; i < (size_t)b.T * qw; i++)
        q[0][i] = q[1][i] = anvil_test_randf(&rng);
    for (size_t i = 0; i < (size_t)b.T * kw; i++)
        k[0][i] = k[1][i] = anvil_test_randf(&rng);

    anvil_backend *be = NULL;
    assert_int_equal(anvil_backend_cpu_create(2, &be), ANVIL_OK);
    const int64_t cshape[4] = {N_SEQS * MB, BS, NKV, HD};
    anvil_tensor tq[2], tk[2], to[2], tkc[2], tvc[2];
    anvil_tensor tv = anvil_tensor_2d(ANVIL_DTYPE_F32, b.T, kw, v);
    for (int p = 0; p < 2; p++) {
        tq[p] = anvil_tensor_2d(ANVIL_DTYPE_F32, b.T, qw, q[p]);
        tk[p] = anvil_tensor_2d(ANVIL_DTYPE_F32, b.T, kw, k[p]);
        to[p] = anvil_tensor_2d(ANVIL_DTYPE_F32, b.T, qw, out[p]);
        tkc[p] = (anvil_tensor){.dtype = ANVIL_DTYPE_F32, .n_dims = 4, .data = kc[p]};
        memcpy(tkc[p].shape, cshape, sizeof cshape);
        tvc[p] = tkc[p];
        tvc[p].data = vc[p];
    }
    anvil_attention_args a = {.q = &tq[0], .k = &tk[0], .v = &tv, .k_cache = &tkc[0], .v_cache = &tvc[0],
                              .out = &to[0], .step = &b.step, .n_heads = NH, .n_kv_heads = NKV, .head_dim = HD,
                              .scale = 1.0f / sqrtf((float)HD)};
    assert_int_equal(be->ops->rope(be, &tq[0], &b.step, HD, &f), ANVIL_OK);
    assert_int_equal(be->ops->rope(be, &tk[0], &b.step, HD, &f), ANVIL_OK);
    assert_int_equal(be->ops->attention(be, &a), ANVIL_OK);
    anvil_attention_args fused = a;
    fused.q = &tq[1];
    fused.k = &tk[1];
    fused.k_cache = &tkc[1];
    fused.v_cache = &tvc[1];
    fused.out = &to[1];
    fused.rope = &f;
    assert_int_equal(be->ops->attention(be, &fused), ANVIL_OK);
    assert_memory_equal(out[0], out[1], (size_t)b.T * qw * 4);
    assert_memory_equal(kc[0], kc[1], cache_n * 4);
    assert_memory_equal(q[0], q[1], (size_t)b.T * qw * 4);

    anvil_backend_free(be);
    for (int p = 0; p < 2; p++) {
        free(q[p]);
        free(k[p]);
        free(out[p]);
        free(kc[p]);
        free(vc[p]);
    }
    free(v);
    free(slots);
    free_batch(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tables),
        cmocka_unit_test(test_rope_op_matches_transformers),
        cmocka_unit_test(test_attention_rope_fused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
