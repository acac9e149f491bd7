/*
 * The CPU backend's mla op (backend.h, anvil_mla_args: DeepSeek-V2's
 * multi-head latent attention) against the scalar reference on
 * table-driven cases: prefill chunks (the expanded form), decode rows (the
 * absorbed form), both forced on every case (they must agree with the
 * reference and so with each other), sequences with earlier positions in
 * the cache, scattered block tables, f32/bf16/f16 weights and caches, an
 * attention factor on cos and sin, guard bytes after every output. Also:
 * the cache rows are exactly [c, rope(k_pe)] (the reference's bits), a
 * decode row gives the same bits alone and packed, and bad arguments are
 * refused.
 */
#include "cpu_testkit.h"

/* the forms sum in a different order than the reference (f32 against
 * double, q . (W c) against (W^T q) . c) */
#define MLA_ATOL 1e-5f
#define MLA_RTOL 1e-4f

#define MAX_SEQS 4

typedef struct mla_case {
    int32_t H, R, dn, dr, dv;
    anvil_dtype wdt, cdt;
    int32_t bs;
    int32_t n_seqs;
    int32_t prior[MAX_SEQS]; /* positions already cached before the step */
    int32_t rows[MAX_SEQS];  /* the step's rows of each sequence */
    float rope_scale;
} mla_case;

static const mla_case cases[] = {
    /* one prefill chunk from position 0 */
    {4, 32, 16, 8, 24, ANVIL_DTYPE_F32, ANVIL_DTYPE_F32, 4, 1, {0}, {13}, 1.0f},
    /* decode rows of three sequences */
    {4, 32, 16, 8, 24, ANVIL_DTYPE_BF16, ANVIL_DTYPE_BF16, 4, 3, {5, 17, 9}, {1, 1, 1}, 1.0f},
    /* decodes and a chunk after cached positions, f16 weights, YaRN's attention factor */
    {3, 24, 8, 6, 10, ANVIL_DTYPE_F16, ANVIL_DTYPE_F32, 16, 3, {7, 3, 0}, {1, 6, 1}, 1.0253f},
    /* wider: rank 64, rope 16, a longer chunk over two earlier blocks */
    {2, 64, 32, 16, 32, ANVIL_DTYPE_BF16, ANVIL_DTYPE_F16, 8, 2, {16, 0}, {24, 1}, 1.0f},
};

/* One case's inputs, tables and the cache before the step. */
typedef struct mla_fix {
    mla_case c;
    int32_t T, n_blocks, max_blocks;
    gbuf q, cc, kpe, kvb, cache0;
    float inv_freq[64];
    anvil_rope_freqs freqs;
    anvil_tensor tq, tc, tkpe, tkvb;
    int32_t *seq_starts, *seq_lens; /* [n_seqs + 1], [n_seqs] */
    int32_t *positions, *seq_of_token, *slots, *tables;
    anvil_step step;
} mla_fix;

static size_t cache_bytes(const mla_fix *f)
{
    return (size_t)f->n_blocks * (size_t)f->c.bs * (size_t)(f->c.R + f->c.dr) * anvil_dtype_size(f->c.cdt);
}

static anvil_tensor cache_tensor(const mla_fix *f, void *data)
{
    anvil_tensor t = {.dtype = f->c.cdt, .n_dims = 4, .data = data};
    t.shape[0] = f->n_blocks;
    t.shape[1] = f->c.bs;
    t.shape[2] = 1;
    t.shape[3] = f->c.R + f->c.dr;
    return t;
}

/* The fixture: sequence s's block j is block (n_blocks - 1 - (s * max_blocks
 * + j)) (scattered, reversed); positions before `prior` hold random rows. */
static mla_fix fix_new(const mla_case *c, uint64_t *rng)
{
    mla_fix f = {.c = *c};
    f.seq_starts = malloc((MAX_SEQS + 1) * sizeof *f.seq_starts);
    f.seq_lens = malloc(MAX_SEQS * sizeof *f.seq_lens);
    assert_true(f.seq_starts && f.seq_lens);
    int32_t most = 0;
    f.T = 0;
    for (int32_t s = 0; s < c->n_seqs; s++) {
        f.seq_starts[s] = f.T;
        f.T += c->rows[s];
        f.seq_lens[s] = c->prior[s] + c->rows[s];
        most = f.seq_lens[s] > most ? f.seq_lens[s] : most;
    }
    f.seq_starts[c->n_seqs] = f.T;
    f.max_blocks = (most + c->bs - 1) / c->bs;
    f.n_blocks = c->n_seqs * f.max_blocks + 1; /* one never used */
    const int64_t H = c->H, T = f.T, qw = H * (c->dn + c->dr);
    const size_t es = anvil_dtype_size(c->wdt);
    f.q = gbuf_new((size_t)(T * qw) * 4, 0);
    f.cc = gbuf_new((size_t)(T * c->R) * 4, 0);
    f.kpe = gbuf_new((size_t)(T * c->dr) * 4, 0);
    f.kvb = gbuf_new((size_t)(H * (c->dn + c->dv) * c->R) * es, 2);
    kit_fill_f32(f.q.data, T * qw, rng);
    kit_fill_f32(f.cc.data, T * c->R, rng);
    kit_fill_f32(f.kpe.data, T * c->dr, rng);
    kit_fill_dtype(f.kvb.data, c->wdt, H * (c->dn + c->dv) * c->R, rng);
    f.tq = anvil_tensor_2d(ANVIL_DTYPE_F32, T, qw, f.q.data);
    f.tc = anvil_tensor_2d(ANVIL_DTYPE_F32, T, c->R, f.cc.data);
    f.tkpe = anvil_tensor_2d(ANVIL_DTYPE_F32, T, c->dr, f.kpe.data);
    f.tkvb = anvil_tensor_2d(c->wdt, H * (c->dn + c->dv), c->R, f.kvb.data);
    for (int32_t i = 0; i < c->dr / 2; i++)
        f.inv_freq[i] = powf(10000.0f, -(float)(2 * i) / (float)c->dr);
    f.freqs = (anvil_rope_freqs){.inv_freq = f.inv_freq, .scale = c->rope_scale};
    /* the cache before the step: every element random (earlier positions
     * are real rows; the rest must never be read) */
    f.cache0 = gbuf_new(cache_bytes(&f), 0);
    const int64_t n_elems = (int64_t)f.n_blocks * c->bs * (c->R + c->dr);
    kit_fill_dtype(f.cache0.data, c->cdt, n_elems, rng);
    f.positions = malloc((size_t)T * 4);
    f.seq_of_token = malloc((size_t)T * 4);
    f.slots = malloc((size_t)T * 4);
    f.tables = malloc((size_t)(c->n_seqs * f.max_blocks) * 4);
    assert_true(f.positions && f.seq_of_token && f.slots && f.tables);
    for (int32_t s = 0; s < c->n_seqs; s++)
        for (int32_t j = 0; j < f.max_blocks; j++)
            f.tables[s * f.max_blocks + j] = f.n_blocks - 1 - (s * f.max_blocks + j);
    for (int32_t s = 0; s < c->n_seqs; s++)
        for (int32_t t = f.seq_starts[s]; t < f.seq_starts[s + 1]; t++) {
            const int32_t p = c->prior[s] + (t - f.seq_starts[s]);
            f.positions[t] = p;
            f.seq_of_token[t] = s;
            f.slots[t] = f.tables[s * f.max_blocks + p / c->bs] * c->bs + p % c->bs;
        }
    f.step = (anvil_step){.n_tokens = f.T, .n_seqs = c->n_seqs, .max_blocks_per_seq = f.max_blocks,
                          .block_size = c->bs, .positions = f.positions, .seq_of_token = f.seq_of_token,
                          .seq_starts = f.seq_starts, .seq_lens = f.seq_lens, .block_tables = f.tables,
                          .slots = f.slots};
    return f;
}

static void fix_free(mla_fix *f)
{
    gbuf_free(&f->q);
    gbuf_free(&f->cc);
    gbuf_free(&f->kpe);
    gbuf_free(&f->kvb);
    gbuf_free(&f->cache0);
    free(f->positions);
    free(f->seq_of_token);
    free(f->slots);
    free(f->tables);
    free(f->seq_starts);
    free(f->seq_lens);
}

static anvil_mla_args fix_args(mla_fix *f, anvil_tensor *cache, anvil_tensor *out, int form)
{
    const mla_case *c = &f->c;
    f->freqs.inv_freq = f->inv_freq; /* (the fixture was copied out of fix_new) */
    anvil_mla_args a = {
        .q = &f->tq, .c = &f->tc, .k_pe = &f->tkpe, .kv_b = &f->tkvb, .cache = cache, .out = out,
        .step = &f->step, .rope = &f->freqs, .n_heads = c->H, .kv_rank = c->R, .nope_dim = c->dn,
        .rope_dim = c->dr, .v_dim = c->dv, .scale = 1.0f / sqrtf((float)(c->dn + c->dr)), .form = form,
    };
    return a;
}

static void test_mla_vs_reference(void **state)
{
    (void)state;
    uint64_t rng = 29;
    kit_backends kb = kit_backends_new(3);
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const mla_case *c = &cases[ci];
        mla_fix f = fix_new(c, &rng);
        const int64_t n = (int64_t)f.T * c->H * c->dv;
        gbuf want = gbuf_new((size_t)n * 4, 0), want_cache = gbuf_new(cache_bytes(&f), 0);
        memcpy(want_cache.data, f.cache0.data, cache_bytes(&f));
        anvil_tensor twant = anvil_tensor_2d(ANVIL_DTYPE_F32, f.T, (int64_t)c->H * c->dv, want.data);
        anvil_tensor twc = cache_tensor(&f, want_cache.data);
        anvil_mla_args ra = fix_args(&f, &twc, &twant, 0);
        KIT_OK(anvil_cpu_ref_mla(&ra));
        for (int i = 0; i < kb.n; i++)
            for (int form = 0; form <= 2; form++) {
                char name[200];
                snprintf(name, sizeof name, "mla case %zu H=%d R=%d dims %d/%d/%d w=%s cache=%s form %d (%s)", ci,
                         c->H, c->R, c->dn, c->dr, c->dv, kit_dt(c->wdt), kit_dt(c->cdt), form,
                         kb.be[i]->ops->name);
                gbuf got = gbuf_new((size_t)n * 4, 0), cache = gbuf_new(cache_bytes(&f), 0);
                memcpy(cache.data, f.cache0.data, cache_bytes(&f));
                anvil_tensor tgot = anvil_tensor_2d(ANVIL_DTYPE_F32, f.T, (int64_t)c->H * c->dv, got.data);
                anvil_tensor tcache = cache_tensor(&f, cache.data);
                anvil_mla_args a = fix_args(&f, &tcache, &tgot, form);
                KIT_OK(kb.be[i]->ops->mla(kb.be[i], &a));
                gbuf_check(&got, name);
                gbuf_check(&cache, name);
                kit_expect_close(name, got.data, want.data, NULL, n, MLA_ATOL, MLA_RTOL);
                /* the cache rows: the reference's bits, and nothing else touched */
                kit_expect_bitwise(name, cache.data, want_cache.data, cache_bytes(&f));
                gbuf_free(&got);
                gbuf_free(&cache);
            }
        gbuf_free(&want);
        gbuf_free(&want_cache);
        fix_free(&f);
    }
    kit_backends_free(&kb);
}

/* A decode row's result is the same bits alone as packed with the others. */
static void test_mla_alone_equals_packed(void **state)
{
    (void)state;
    uint64_t rng = 31;
    const mla_case *c = &cases[1];
    mla_fix f = fix_new(c, &rng);
    anvil_backend *be;
    KIT_OK(anvil_backend_cpu_create(2, &be));
    const int64_t w = (int64_t)c->H * c->dv;
    gbuf all = gbuf_new((size_t)(f.T * w) * 4, 0), cache = gbuf_new(cache_bytes(&f), 0);
    memcpy(cache.data, f.cache0.data, cache_bytes(&f));
    anvil_tensor tall = anvil_tensor_2d(ANVIL_DTYPE_F32, f.T, w, all.data), tcache = cache_tensor(&f, cache.data);
    anvil_mla_args a = fix_args(&f, &tcache, &tall, 0);
    KIT_OK(be->ops->mla(be, &a));
    for (int32_t s = 0; s < c->n_seqs; s++) {
        const int32_t t = f.seq_starts[s];
        float one[256];
        assert_true(w <= 256);
        memcpy(cache.data, f.cache0.data, cache_bytes(&f));
        anvil_tensor q1 = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, f.tq.shape[1], (float *)f.q.data + t * f.tq.shape[1]);
        anvil_tensor c1 = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, c->R, (float *)f.cc.data + (int64_t)t * c->R);
        anvil_tensor k1 = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, c->dr, (float *)f.kpe.data + (int64_t)t * c->dr);
        anvil_tensor o1 = anvil_tensor_2d(ANVIL_DTYPE_F32, 1, w, one);
        int32_t starts[2] = {0, 1}, sot[1] = {0};
        anvil_step st1 = {.n_tokens = 1, .n_seqs = 1, .max_blocks_per_seq = f.max_blocks, .block_size = c->bs,
                          .positions = f.positions + t, .seq_of_token = sot, .seq_starts = starts,
                          .seq_lens = f.seq_lens + s, .block_tables = f.tables + s * f.max_blocks,
                          .slots = f.slots + t};
        anvil_mla_args a1 = fix_args(&f, &tcache, &o1, 0);
        a1.q = &q1;
        a1.c = &c1;
        a1.k_pe = &k1;
        a1.step = &st1;
        KIT_OK(be->ops->mla(be, &a1));
        kit_expect_bitwise("mla decode alone vs packed", one, (float *)all.data + t * w, (size_t)w * 4);
    }
    gbuf_free(&all);
    gbuf_free(&cache);
    anvil_backend_free(be);
    fix_free(&f);
}

static void test_mla_errors(void **state)
{
    (void)state;
    uint64_t rng = 37;
    mla_fix f = fix_new(&cases[0], &rng);
    const mla_case *c = &f.c;
    anvil_backend *be;
    KIT_OK(anvil_backend_cpu_create(1, &be));
    gbuf got = gbuf_new((size_t)(f.T * c->H * c->dv) * 4, 0), cache = gbuf_new(cache_bytes(&f), 0);
    anvil_tensor tgot = anvil_tensor_2d(ANVIL_DTYPE_F32, f.T, (int64_t)c->H * c->dv, got.data);
    anvil_tensor tcache = cache_tensor(&f, cache.data);
    anvil_mla_args a = fix_args(&f, &tcache, &tgot, 0);
    KIT_OK(be->ops->mla(be, &a));

    anvil_tensor fp8 = tcache; /* no fp8 latent cache */
    fp8.dtype = ANVIL_DTYPE_F8_E4M3;
    a.cache = &fp8;
    assert_int_equal(be->ops->mla(be, &a), ANVIL_ERR_UNSUPPORTED);
    assert_int_equal(anvil_cpu_ref_mla(&a), ANVIL_ERR_UNSUPPORTED);
    a.cache = &tcache;
    anvil_tensor kvb = f.tkvb; /* kv_b of the wrong height */
    kvb.shape[0] -= 1;
    a.kv_b = &kvb;
    assert_int_equal(be->ops->mla(be, &a), ANVIL_ERR_INVALID_ARG);
    a.kv_b = &f.tkvb;
    a.form = 3;
    assert_int_equal(be->ops->mla(be, &a), ANVIL_ERR_INVALID_ARG);
    a.form = 0;
    a.rope_dim = c->dr + 1; /* odd: pairs cannot rotate */
    assert_int_equal(be->ops->mla(be, &a), ANVIL_ERR_INVALID_ARG);
    a.rope_dim = c->dr;
    f.slots[2] = f.n_blocks * c->bs; /* a slot past the cache */
    assert_int_equal(be->ops->mla(be, &a), ANVIL_ERR_INVALID_ARG);
    assert_int_equal(anvil_cpu_ref_mla(&a), ANVIL_ERR_INVALID_ARG);
    gbuf_free(&got);
    gbuf_free(&cache);
    anvil_backend_free(be);
    fix_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mla_vs_reference),
        cmocka_unit_test(test_mla_alone_equals_packed),
        cmocka_unit_test(test_mla_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
