/*
 * DeepSeek-V2 on CUDA, op by op, against the CPU's scalar references:
 *  - the mla op (cuda_mla.h: the latent cache write, then the absorbed
 *    form on tensor cores where it applies, else the reference kernels)
 *    on prefill chunks, decode rows and mixed steps over earlier cached
 *    positions (contexts 1 to 3000, tile and block edges, 12/16/20 heads)
 *    with shuffled block tables, in f32 (within 1e-4 x max|out|: the
 *    reference kernels), bf16 (2e-2: the inputs and the cache in bf16) and
 *    f16 (1e-2), each case on every path that applies: the reference
 *    (knob mla_kernel 1) and the tensor-core form with its own splits,
 *    3 and 17 (knob attn_splits); the output poisoned before each run, the
 *    cache rows written checked too;
 *  - a block id outside the cache in a table: the tensor-core form flags it;
 *  - a whole DeepSeek-V2 network at a size the tensor-core forms take
 *    (random weights, bf16): its logits on the automatic, absorbed and
 *    expanded paths against the same runtime's on the reference kernels;
 *  - ANVIL_TEST_QUICK=1 (compute-sanitizer): bf16 only, contexts up to 256;
 *  - the moe op with DeepSeek's router (cuda_moe_route_groups.cu:
 *    group-limited top-k, routed_scaling_factor) and ungated shared
 *    experts, at 5 tokens (the grouped GEMV) and 40 (the per-expert loop);
 *  - --perf: the mla op at DeepSeek-V2-Lite's shape (16 heads, rank 512,
 *    128 + 64 / 128, bf16): decode at 1, 16 and 64 sequences of 512 and
 *    4096 cached positions, and one 2048-row prefill, on both paths, ms per
 *    call against the time to read the latent rows and kv_b once at the
 *    device's memory bandwidth.
 * Each case prints PASS or FAIL with its error. Skips without a GPU.
 *
 *   build/tests/test_cuda_mla [--perf]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backend/backend.h"
#include "backend/cpu/cpu_reference.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_mla.h"
#include "anvil/runtime.h"
#include "runtime/runtime_internal.h"
#include "anvil/dtype.h"
#include "testutil.h"

static int g_perf;

static float randf(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*s >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

/* n floats rounded to dt (so that the CPU reference sees what the GPU does) */
static float *rand_rounded(uint64_t *rng, int64_t n, anvil_dtype dt)
{
    float *f = malloc((size_t)n * sizeof *f);
    assert_non_null(f);
    for (int64_t i = 0; i < n; i++) {
        f[i] = randf(rng);
        if (dt == ANVIL_DTYPE_BF16)
            f[i] = anvil_bf16_to_f32(anvil_f32_to_bf16(f[i]));
        else if (dt == ANVIL_DTYPE_F16)
            f[i] = anvil_f16_to_f32(anvil_f32_to_f16(f[i]));
    }
    return f;
}

static void *dev_put(anvil_backend *be, const float *f, int64_t n, anvil_dtype dt)
{
    const size_t bytes = (size_t)n * anvil_dtype_size(dt);
    void *h = malloc(bytes > 0 ? bytes : 1), *d = NULL;
    assert_non_null(h);
    if (dt == ANVIL_DTYPE_F32)
        memcpy(h, f, bytes);
    else
        anvil_convert_from_f32(dt, f, h, n);
    assert_int_equal(be->ops->alloc(be, bytes > 0 ? bytes : 1, &d), ANVIL_OK);
    assert_int_equal(be->ops->upload(be, d, h, bytes), ANVIL_OK);
    free(h);
    return d;
}

static void *dev_put_raw(anvil_backend *be, const void *h, size_t bytes)
{
    void *d = NULL;
    assert_int_equal(be->ops->alloc(be, bytes, &d), ANVIL_OK);
    assert_int_equal(be->ops->upload(be, d, h, bytes), ANVIL_OK);
    return d;
}

static float *dev_get(anvil_backend *be, const void *d, int64_t n, anvil_dtype dt)
{
    const size_t bytes = (size_t)n * anvil_dtype_size(dt);
    void *h = malloc(bytes);
    float *f = malloc((size_t)n * sizeof *f);
    assert_true(h && f);
    assert_int_equal(be->ops->download(be, h, d, bytes), ANVIL_OK);
    for (int64_t i = 0; i < n; i++)
        f[i] = dt == ANVIL_DTYPE_F32 ? ((float *)h)[i]
               : dt == ANVIL_DTYPE_BF16 ? anvil_bf16_to_f32(((uint16_t *)h)[i])
                                        : anvil_f16_to_f32(((uint16_t *)h)[i]);
    free(h);
    return f;
}

/* max |got - want| / max |want| */
static double rel_err(const float *got, const float *want, int64_t n)
{
    double me = 0.0, mw = 1e-30;
    for (int64_t i = 0; i < n; i++) {
        me = fmax(me, isnan(got[i]) ? INFINITY : fabs((double)got[i] - want[i]));
        mw = fmax(mw, fabs((double)want[i]));
    }
    return me / mw;
}

/* ---------------------------------------------------------------- mla */

#define MAX_SEQS 4

typedef struct mla_case {
    int32_t H, R, dn, dr, dv, bs, n_seqs;
    int32_t prior[MAX_SEQS], rows[MAX_SEQS];
    float rope_scale;
} mla_case;

static const mla_case mla_cases[] = {
    {4, 32, 16, 8, 24, 4, 1, {0}, {13}, 1.0f},                   /* the tiny models' shape, a prefill */
    {4, 32, 16, 8, 24, 4, 3, {5, 17, 9}, {1, 1, 1}, 1.0253f},    /* decode rows, an attention factor */
    {3, 24, 8, 6, 10, 16, 3, {7, 3, 0}, {1, 6, 1}, 1.0f},        /* mixed */
    {16, 512, 128, 64, 128, 32, 2, {70, 0}, {1, 40}, 1.0f},      /* DeepSeek-V2-Lite's shape */
    /* the tensor-core form's shapes (kv_rank 128/256/512, rope a multiple of 16) */
    {16, 512, 128, 64, 128, 64, 1, {0}, {1}, 1.0f},              /* context 1 */
    {20, 128, 32, 16, 48, 16, 3, {0, 130, 2999}, {37, 1, 1}, 1.0f}, /* 2 chunks of heads, mixed, context 3000 */
    {12, 256, 64, 32, 64, 7, 4, {0, 63, 64, 500}, {1, 1, 1, 1}, 1.0253f}, /* tile edges, block size 7 */
    {16, 512, 128, 64, 128, 16, 2, {190, 200}, {1, 3}, 1.0f},    /* V2-Lite: a decode row and a 3-row chunk */
};

/* The CUDA paths a case runs on: the knobs (mla_kernel, attn_splits) */
typedef struct mla_path {
    int kernel, splits;
    const char *name;
} mla_path;

static const mla_path mla_paths[] = {
    {1, 0, "reference"},
    {0, 0, "auto"},
    {2, 0, "absorbed"},
    {2, 3, "absorbed 3 splits"},
    {2, 17, "absorbed 17 splits"},
    {3, 0, "expanded"},
};

/* Whether the op takes the tensor-core forms for this case at act dtype
 * `act`: 0 none, 1 the absorbed, 2 the absorbed and the expanded */
static int mla_mma_applies(anvil_backend *gpu, anvil_dtype act, const mla_case *c, int32_t n_blocks)
{
    const anvil_cuda_mla m = {.dt = act, .rank = c->R, .rope = c->dr, .nope = c->dn, .v = c->dv,
                              .n_heads = c->H, .block_size = c->bs, .n_blocks = n_blocks};
    const size_t optin = anvil_cuda_impl(gpu)->smem_optin;
    return !anvil_cuda_mla_mma_ok(&m, optin) ? 0 : anvil_cuda_mla_xp_ok(&m, optin) ? 2 : 1;
}

static void set_mla_knobs(anvil_backend *gpu, int kernel, int splits)
{
    anvil_cuda_knobs k = anvil_cuda_impl(gpu)->knobs; /* the others as they are */
    k.mla_kernel = kernel;
    k.attn_splits = splits;
    assert_int_equal(anvil_cuda_set_knobs(gpu, &k), ANVIL_OK);
}

/* Block ids 0 .. n - 1 in a shuffled order (scattered tables) */
static void shuffled_ids(uint64_t *rng, int32_t *ids, int32_t n)
{
    for (int32_t i = 0; i < n; i++)
        ids[i] = i;
    for (int32_t i = n - 1; i > 0; i--) {
        *rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
        const int32_t j = (int32_t)((*rng >> 33) % (uint64_t)(i + 1)), x = ids[i];
        ids[i] = ids[j];
        ids[j] = x;
    }
}

/* One case on one GPU backend of act dtype `act`, on every path that
 * applies: PASS within tol x max|out|; the output of the op on each path
 * and the cache rows it wrote. Returns the number of failures. */
static int run_mla(anvil_backend *gpu, anvil_dtype act, const mla_case *c, uint64_t *rng, double tol)
{
    int32_t T = 0, most = 0, starts[MAX_SEQS + 1], lens[MAX_SEQS];
    for (int32_t s = 0; s < c->n_seqs; s++) {
        starts[s] = T;
        T += c->rows[s];
        lens[s] = c->prior[s] + c->rows[s];
        most = lens[s] > most ? lens[s] : most;
    }
    starts[c->n_seqs] = T;
    const int32_t maxb = (most + c->bs - 1) / c->bs, n_blocks = c->n_seqs * maxb + 1;
    const int64_t H = c->H, qw = H * (c->dn + c->dr), w = (int64_t)c->R + c->dr;
    const int64_t n_cache = (int64_t)n_blocks * c->bs * w, n_out = (int64_t)T * H * c->dv;
    float *q = rand_rounded(rng, T * qw, act), *cc = rand_rounded(rng, (int64_t)T * c->R, act);
    float *kpe = rand_rounded(rng, (int64_t)T * c->dr, act);
    float *kvb = rand_rounded(rng, H * (c->dn + c->dv) * c->R, ANVIL_DTYPE_BF16);
    float *cache = rand_rounded(rng, n_cache, act);
    float inv[128];
    for (int32_t i = 0; i < c->dr / 2; i++)
        inv[i] = powf(10000.0f, -(float)(2 * i) / (float)c->dr);
    int32_t *pos = malloc((size_t)T * 4), *sot = malloc((size_t)T * 4), *slots = malloc((size_t)T * 4);
    int32_t *tables = malloc((size_t)(c->n_seqs * maxb) * 4), *ids = malloc((size_t)n_blocks * 4);
    assert_true(pos && sot && slots && tables && ids);
    shuffled_ids(rng, ids, n_blocks);
    for (int32_t i = 0; i < c->n_seqs * maxb; i++)
        tables[i] = ids[i]; /* one block never used */
    for (int32_t s = 0; s < c->n_seqs; s++)
        for (int32_t t = starts[s]; t < starts[s + 1]; t++) {
            pos[t] = c->prior[s] + t - starts[s];
            sot[t] = s;
            slots[t] = tables[s * maxb + pos[t] / c->bs] * c->bs + pos[t] % c->bs;
        }
    /* the reference: f32 everything, the cache as the GPU's starts */
    float *want = calloc((size_t)n_out, sizeof *want), *want_cache = malloc((size_t)n_cache * sizeof(float));
    assert_true(want && want_cache);
    memcpy(want_cache, cache, (size_t)n_cache * sizeof(float));
    anvil_rope_freqs hf = {.inv_freq = inv, .scale = c->rope_scale};
    int32_t n_decode = 0, decode_ctx = 0; /* the leading one-row sequences, as the executor plans them */
    while (n_decode < c->n_seqs && c->rows[n_decode] == 1) {
        decode_ctx = lens[n_decode] > decode_ctx ? lens[n_decode] : decode_ctx;
        n_decode++;
    }
    anvil_step hs = {.n_tokens = T, .n_seqs = c->n_seqs, .max_blocks_per_seq = maxb, .block_size = c->bs,
                     .max_context = most, .n_decode = n_decode, .decode_max_context = decode_ctx,
                     .positions = pos, .seq_of_token = sot, .seq_starts = starts, .seq_lens = lens,
                     .block_tables = tables, .slots = slots};
    anvil_tensor tq = anvil_tensor_2d(ANVIL_DTYPE_F32, T, qw, q), tc = anvil_tensor_2d(ANVIL_DTYPE_F32, T, c->R, cc);
    anvil_tensor tk = anvil_tensor_2d(ANVIL_DTYPE_F32, T, c->dr, kpe);
    anvil_tensor tw = anvil_tensor_2d(ANVIL_DTYPE_F32, H * (c->dn + c->dv), c->R, kvb);
    anvil_tensor tout = anvil_tensor_2d(ANVIL_DTYPE_F32, T, H * c->dv, want);
    anvil_tensor tcache = {.dtype = ANVIL_DTYPE_F32, .n_dims = 4, .shape = {n_blocks, c->bs, 1, w}, .data = want_cache};
    anvil_mla_args ra = {.q = &tq, .c = &tc, .k_pe = &tk, .kv_b = &tw, .cache = &tcache, .out = &tout, .step = &hs,
                         .rope = &hf, .n_heads = c->H, .kv_rank = c->R, .nope_dim = c->dn, .rope_dim = c->dr,
                         .v_dim = c->dv, .scale = 1.0f / sqrtf((float)(c->dn + c->dr))};
    assert_int_equal(anvil_cpu_ref_mla(&ra), ANVIL_OK);

    /* the GPU: act-dtype activations and cache, bf16 kv_b */
    void *dq = dev_put(gpu, q, T * qw, act), *dc = dev_put(gpu, cc, (int64_t)T * c->R, act);
    void *dk = dev_put(gpu, kpe, (int64_t)T * c->dr, act);
    void *dw = dev_put(gpu, kvb, H * (c->dn + c->dv) * c->R, ANVIL_DTYPE_BF16);
    void *dcache = dev_put(gpu, cache, n_cache, act), *dout = NULL;
    assert_int_equal(gpu->ops->alloc(gpu, (size_t)n_out * anvil_dtype_size(act), &dout), ANVIL_OK);
    void *dpos = dev_put_raw(gpu, pos, (size_t)T * 4), *dsot = dev_put_raw(gpu, sot, (size_t)T * 4);
    void *dslots = dev_put_raw(gpu, slots, (size_t)T * 4);
    void *dtables = dev_put_raw(gpu, tables, (size_t)(c->n_seqs * maxb) * 4);
    void *dinv = dev_put_raw(gpu, inv, (size_t)(c->dr / 2) * 4);
    anvil_rope_freqs df = {.inv_freq = dinv, .scale = c->rope_scale};
    anvil_step ds = hs;
    ds.positions = dpos;
    ds.seq_of_token = dsot;
    ds.slots = dslots;
    ds.block_tables = dtables;
    ds.seq_starts = NULL; /* host only; the kernels take seq_of_token */
    ds.seq_lens = NULL;
    anvil_tensor gq = anvil_tensor_2d(act, T, qw, dq), gc = anvil_tensor_2d(act, T, c->R, dc);
    anvil_tensor gk = anvil_tensor_2d(act, T, c->dr, dk), gout = anvil_tensor_2d(act, T, H * c->dv, dout);
    anvil_tensor gw = anvil_tensor_2d(ANVIL_DTYPE_BF16, H * (c->dn + c->dv), c->R, dw);
    anvil_tensor gcache = {.dtype = act, .n_dims = 4, .shape = {n_blocks, c->bs, 1, w}, .data = dcache};
    anvil_mla_args ga = ra;
    ga.q = &gq;
    ga.c = &gc;
    ga.k_pe = &gk;
    ga.kv_b = &gw;
    ga.cache = &gcache;
    ga.out = &gout;
    ga.step = &ds;
    ga.rope = &df;
    const int mma = mla_mma_applies(gpu, act, c, n_blocks);
    int fails = 0;
    for (size_t pi = 0; pi < sizeof mla_paths / sizeof mla_paths[0]; pi++) {
        const mla_path *path = &mla_paths[pi];
        if (path->kernel != 1 && !mma)
            continue; /* the reference again */
        if (path->kernel == 3 && mma < 2)
            continue; /* the absorbed form again */
        set_mla_knobs(gpu, path->kernel, path->splits);
        /* the output poisoned first (0xff bytes: NaN), so rows left unwritten fail */
        assert_int_equal(cudaMemset(dout, 0xff, (size_t)n_out * anvil_dtype_size(act)), cudaSuccess);
        if (gpu->ops->mla(gpu, &ga) != ANVIL_OK || gpu->ops->synchronize(gpu) != ANVIL_OK)
            fail_msg("mla on %s (%s): %s", gpu->ops->name, path->name, anvil_last_error());
        float *got = dev_get(gpu, dout, n_out, act), *got_cache = dev_get(gpu, dcache, n_cache, act);
        const double e = rel_err(got, want, n_out), ec = rel_err(got_cache, want_cache, n_cache);
        const int ok = e <= tol && ec <= tol;
        fails += !ok;
        printf("  %s mla H=%d R=%d %d/%d/%d seqs=%d T=%d ctx<=%d %s %s: out %.3g, cache %.3g x max (tol %.3g)\n",
               ok ? "PASS" : "FAIL", c->H, c->R, c->dn, c->dr, c->dv, c->n_seqs, T, most, anvil_dtype_name(act),
               path->name, e, ec, tol);
        free(got), free(got_cache);
    }
    set_mla_knobs(gpu, 0, 0);
    void *dev[] = {dq, dc, dk, dw, dcache, dout, dpos, dsot, dslots, dtables, dinv};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        gpu->ops->free(gpu, dev[i]);
    free(q), free(cc), free(kpe), free(kvb), free(cache), free(pos), free(sot), free(slots), free(tables), free(ids);
    free(want), free(want_cache);
    return fails;
}

static void test_mla(void **s)
{
    (void)s;
    if (anvil_cuda_device_count() == 0)
        skip();
    uint64_t rng = 0x5eedull;
    const anvil_dtype acts[] = {ANVIL_DTYPE_BF16, ANVIL_DTYPE_F32, ANVIL_DTYPE_F16};
    const double tols[] = {2e-2, 1e-4, 1e-2};
    /* ANVIL_TEST_QUICK (the sanitizer runs): bf16, contexts up to 256 */
    const int quick = getenv("ANVIL_TEST_QUICK") != NULL;
    int fails = 0;
    for (int a = 0; a < (quick ? 1 : 3); a++) {
        anvil_backend *gpu;
        assert_int_equal(anvil_backend_cuda_create(0, acts[a], &gpu), ANVIL_OK);
        for (size_t i = 0; i < sizeof mla_cases / sizeof mla_cases[0]; i++) {
            const mla_case *c = &mla_cases[i];
            int32_t most = 0;
            for (int32_t sq = 0; sq < c->n_seqs; sq++)
                most = c->prior[sq] + c->rows[sq] > most ? c->prior[sq] + c->rows[sq] : most;
            if (quick && most > 256)
                continue;
            fails += run_mla(gpu, acts[a], c, &rng, tols[a]);
        }
        anvil_backend_free(gpu);
    }
    if (fails)
        fail_msg("mla: %d case(s) and path(s) out of tolerance", fails);
}

/* A block id outside the cache in a table: the tensor-core form flags it
 * (the op's synchronize fails) and reads nothing outside the cache */
static void test_mla_bad_block(void **s)
{
    (void)s;
    if (anvil_cuda_device_count() == 0)
        skip();
    anvil_backend *gpu;
    assert_int_equal(anvil_backend_cuda_create(0, ANVIL_DTYPE_BF16, &gpu), ANVIL_OK);
    const int32_t H = 16, R = 128, dn = 32, dr = 16, dv = 32, bs = 16, n_blocks = 4, T = 1;
    const int64_t w = R + dr;
    uint64_t rng = 3;
    float *q = rand_rounded(&rng, (int64_t)H * (dn + dr), ANVIL_DTYPE_BF16), *c = rand_rounded(&rng, R, ANVIL_DTYPE_BF16);
    float *k = rand_rounded(&rng, dr, ANVIL_DTYPE_BF16), *wb = rand_rounded(&rng, (int64_t)H * (dn + dv) * R, ANVIL_DTYPE_BF16);
    float *cache = rand_rounded(&rng, (int64_t)n_blocks * bs * w, ANVIL_DTYPE_BF16);
    float inv[8];
    for (int i = 0; i < dr / 2; i++)
        inv[i] = 1.0f / (float)(i + 1);
    const int32_t pos = 40, sot = 0, tables[3] = {2, 1000, 0}, slots = 0 * bs + 40 % bs;
    void *dq = dev_put(gpu, q, (int64_t)H * (dn + dr), ANVIL_DTYPE_BF16), *dc = dev_put(gpu, c, R, ANVIL_DTYPE_BF16);
    void *dk = dev_put(gpu, k, dr, ANVIL_DTYPE_BF16), *dw = dev_put(gpu, wb, (int64_t)H * (dn + dv) * R, ANVIL_DTYPE_BF16);
    void *dcache = dev_put(gpu, cache, (int64_t)n_blocks * bs * w, ANVIL_DTYPE_BF16), *dout = NULL;
    assert_int_equal(gpu->ops->alloc(gpu, (size_t)H * dv * 2, &dout), ANVIL_OK);
    void *dpos = dev_put_raw(gpu, &pos, 4), *dsot = dev_put_raw(gpu, &sot, 4), *dslots = dev_put_raw(gpu, &slots, 4);
    void *dtab = dev_put_raw(gpu, tables, sizeof tables), *dinv = dev_put_raw(gpu, inv, (size_t)(dr / 2) * 4);
    anvil_rope_freqs df = {.inv_freq = dinv, .scale = 1.0f};
    anvil_step ds = {.n_tokens = T, .n_seqs = 1, .max_blocks_per_seq = 3, .block_size = bs, .max_context = pos + 1,
                     .positions = dpos, .seq_of_token = dsot, .block_tables = dtab, .slots = dslots};
    anvil_tensor gq = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, (int64_t)H * (dn + dr), dq);
    anvil_tensor gc = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, R, dc), gk = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, dr, dk);
    anvil_tensor gout = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, (int64_t)H * dv, dout);
    anvil_tensor gw = anvil_tensor_2d(ANVIL_DTYPE_BF16, (int64_t)H * (dn + dv), R, dw);
    anvil_tensor gcache = {.dtype = ANVIL_DTYPE_BF16, .n_dims = 4, .shape = {n_blocks, bs, 1, w}, .data = dcache};
    anvil_mla_args ga = {.q = &gq, .c = &gc, .k_pe = &gk, .kv_b = &gw, .cache = &gcache, .out = &gout, .step = &ds,
                         .rope = &df, .n_heads = H, .kv_rank = R, .nope_dim = dn, .rope_dim = dr, .v_dim = dv,
                         .scale = 0.1f};
    const anvil_cuda_mla m = {.dt = ANVIL_DTYPE_BF16, .rank = R, .rope = dr, .nope = dn, .v = dv, .n_heads = H,
                              .block_size = bs, .n_blocks = n_blocks};
    assert_true(anvil_cuda_mla_mma_ok(&m, anvil_cuda_impl(gpu)->smem_optin));
    anvil_status st = gpu->ops->mla(gpu, &ga);
    if (st == ANVIL_OK)
        st = gpu->ops->synchronize(gpu);
    printf("  %s mla (mma) with block id 1000 of 4 in the table: %s\n", st == ANVIL_ERR_INVALID_ARG ? "PASS" : "FAIL",
           st == ANVIL_OK ? "no error" : anvil_last_error());
    assert_int_equal(st, ANVIL_ERR_INVALID_ARG);
    void *dev[] = {dq, dc, dk, dw, dcache, dout, dpos, dsot, dslots, dtab, dinv};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        gpu->ops->free(gpu, dev[i]);
    free(q), free(c), free(k), free(wb), free(cache);
    anvil_backend_free(gpu);
}

/* ---------------------------------------------------------------- a whole model */

/* DeepSeek-V2-Lite's layout at a size whose mla ops take the tensor-core
 * forms (kv_rank 128, nope 32 + rope 16, v 48, 16 heads), all layers dense
 * (a routing flip on a rounding difference would swamp the comparison) */
static const char *mla_model_config =
    "{\"architectures\": [\"DeepseekV2ForCausalLM\"], \"attention_bias\": false, \"bos_token_id\": 1,"
    " \"dtype\": \"bfloat16\", \"eos_token_id\": 2, \"first_k_dense_replace\": 3, \"head_dim\": 16,"
    " \"hidden_act\": \"silu\", \"hidden_size\": 64, \"intermediate_size\": 96, \"kv_lora_rank\": 128,"
    " \"max_position_embeddings\": 256, \"model_type\": \"deepseek_v2\", \"moe_intermediate_size\": 32,"
    " \"n_group\": 1, \"n_routed_experts\": 8, \"n_shared_experts\": 2, \"norm_topk_prob\": false,"
    " \"num_attention_heads\": 16, \"num_experts_per_tok\": 2, \"num_hidden_layers\": 3,"
    " \"num_key_value_heads\": 16, \"q_lora_rank\": null, \"qk_head_dim\": 48, \"qk_nope_head_dim\": 32,"
    " \"qk_rope_head_dim\": 16, \"rms_norm_eps\": 1e-06, \"rope_parameters\": {\"beta_fast\": 32.0, \"beta_slow\": 1.0,"
    " \"factor\": 4.0, \"mscale\": 0.707, \"mscale_all_dim\": 0.707, \"original_max_position_embeddings\": 64,"
    " \"rope_theta\": 10000.0, \"rope_type\": \"yarn\"}, \"routed_scaling_factor\": 1.0,"
    " \"tie_word_embeddings\": false, \"topk_group\": 1, \"topk_method\": \"greedy\", \"v_head_dim\": 48,"
    " \"vocab_size\": 512}";

#define MODEL_PROMPT 70

/* The prompt's logits (every row) and two decode steps' after it, on the
 * runtime's backend with knob mla_kernel = kernel */
static void mla_model_run(anvil_runtime *rt, const int32_t *blocks, int kernel, float *logits)
{
    set_mla_knobs(rt->be, kernel, 0);
    const int64_t vocab = anvil_runtime_config(rt)->vocab_size;
    int32_t ids[MODEL_PROMPT], pos[MODEL_PROMPT], rows[MODEL_PROMPT], starts[2] = {0, MODEL_PROMPT};
    for (int32_t i = 0; i < MODEL_PROMPT; i++) {
        ids[i] = (int32_t)((3 + 37 * i) % vocab);
        pos[i] = i;
        rows[i] = i;
    }
    anvil_batch b = {.n_tokens = MODEL_PROMPT, .token_ids = ids, .positions = pos, .n_seqs = 1, .seq_starts = starts,
                     .block_tables = blocks, .max_blocks_per_seq = 6, .n_logits = MODEL_PROMPT, .logit_rows = rows};
    if (anvil_runtime_forward(rt, &b, logits) != ANVIL_OK)
        fail_msg("prompt (mla_kernel %d): %s", kernel, anvil_last_error());
    for (int32_t k = 0; k < 2; k++) {
        int32_t id = (int32_t)((11 + 5 * k) % vocab), p = MODEL_PROMPT + k, row = 0, st1[2] = {0, 1};
        anvil_batch d = {.n_tokens = 1, .token_ids = &id, .positions = &p, .n_seqs = 1, .seq_starts = st1,
                         .block_tables = blocks, .max_blocks_per_seq = 6, .n_logits = 1, .logit_rows = &row};
        if (anvil_runtime_forward(rt, &d, logits + (size_t)(MODEL_PROMPT + k) * (size_t)vocab) != ANVIL_OK)
            fail_msg("decode step %d (mla_kernel %d): %s", k, kernel, anvil_last_error());
    }
}

/* The whole network with random weights on CUDA (bf16): the logits of a
 * 70-row prompt (the expanded form) and two decode steps (the absorbed
 * form) against the same runtime's with the reference kernels (knob 1):
 * only the mla op differs, so within 5e-2 x max|logit| (the tensor-core
 * forms round q_abs, P and the expanded K to bf16) */
static void test_mla_model(void **s)
{
    (void)s;
    if (anvil_cuda_device_count() == 0)
        skip();
    char dir[] = "/tmp/anvil-mla-model-XXXXXX", path[64];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(mla_model_config, f);
    fclose(f);
    anvil_runtime_options ro;
    anvil_runtime_options_default(&ro);
    ro.device = "cuda";
    ro.max_seq_len = 96;
    ro.kv_cache_tokens = 96;
    ro.kv_block_size = 16;
    ro.max_num_tokens = 80;
    ro.max_batch_size = 2;
    ro.max_logit_rows = 80;
    ro.weight_dtype = ANVIL_DTYPE_BF16;
    ro.random_weights = 1;
    anvil_runtime *rt = NULL;
    if (anvil_runtime_load(path, &ro, &rt) != ANVIL_OK)
        fail_msg("load %s: %s", path, anvil_last_error());
    int32_t blocks[6];
    assert_int_equal(anvil_runtime_kv_alloc(rt, 6, blocks), ANVIL_OK);
    const int64_t vocab = anvil_runtime_config(rt)->vocab_size, n = (int64_t)(MODEL_PROMPT + 2) * vocab;
    float *want = malloc((size_t)n * sizeof(float)), *got = malloc((size_t)n * sizeof(float));
    assert_true(want && got);
    mla_model_run(rt, blocks, 1, want);
    const int kernels[] = {0, 2, 3};
    const char *names[] = {"automatic (prompt expanded, decode absorbed)", "absorbed", "expanded"};
    int fails = 0;
    for (int k = 0; k < 3; k++) {
        mla_model_run(rt, blocks, kernels[k], got);
        const double e = rel_err(got, want, n);
        printf("  %s mla model (random weights, bf16, 16 heads, rank 128) %s vs the reference kernels: %.3g x max "
               "(tol 5e-2)\n", e <= 5e-2 ? "PASS" : "FAIL", names[k], e);
        fails += !(e <= 5e-2);
    }
    set_mla_knobs(rt->be, 0, 0);
    anvil_runtime_free(rt);
    free(want), free(got);
    remove(path);
    rmdir(dir);
    if (fails)
        fail_msg("mla model: %d path(s) out of tolerance", fails);
}

/* ---------------------------------------------------------------- moe */

/* DeepSeek's router on the GPU against the CPU reference, f32 */
static void test_moe_groups(void **s)
{
    (void)s;
    if (anvil_cuda_device_count() == 0)
        skip();
    uint64_t rng = 0xfeedull;
    anvil_backend *gpu;
    assert_int_equal(anvil_backend_cuda_create(0, ANVIL_DTYPE_F32, &gpu), ANVIL_OK);
    const int64_t H = 64, I = 32, Is = 64;
    const int32_t E = 16, k = 4;
    const int64_t Ts[] = {5, 40};
    for (int ti = 0; ti < 2; ti++) {
        const int64_t T = Ts[ti];
        float *x = rand_rounded(&rng, T * H, ANVIL_DTYPE_F32), *router = rand_rounded(&rng, E * H, ANVIL_DTYPE_F32);
        float *gu = rand_rounded(&rng, E * 2 * I * H, ANVIL_DTYPE_F32), *dn = rand_rounded(&rng, E * H * I, ANVIL_DTYPE_F32);
        float *sgu = rand_rounded(&rng, 2 * Is * H, ANVIL_DTYPE_F32), *sdn = rand_rounded(&rng, H * Is, ANVIL_DTYPE_F32);
        for (int64_t i = 0; i < E * H; i++)
            router[i] *= 3.0f; /* routing that varies from token to token */
        anvil_moe_scratch L;
        assert_int_equal(anvil_moe_scratch_layout(T, H, E, k, I, Is, &L), ANVIL_OK);
        void *hs = calloc(1, L.bytes);
        float *want = calloc((size_t)(T * H), sizeof *want);
        assert_true(hs && want);
        anvil_tensor tx = anvil_tensor_2d(ANVIL_DTYPE_F32, T, H, x), tr = anvil_tensor_2d(ANVIL_DTYPE_F32, E, H, router);
        anvil_tensor tgu = anvil_tensor_2d(ANVIL_DTYPE_F32, E * 2 * I, H, gu), tdn = anvil_tensor_2d(ANVIL_DTYPE_F32, E * H, I, dn);
        anvil_tensor tsgu = anvil_tensor_2d(ANVIL_DTYPE_F32, 2 * Is, H, sgu), tsdn = anvil_tensor_2d(ANVIL_DTYPE_F32, H, Is, sdn);
        anvil_tensor tout = anvil_tensor_2d(ANVIL_DTYPE_F32, T, H, want);
        anvil_moe_args a = {.x = &tx, .router = &tr, .gate_up = &tgu, .down = &tdn, .shared_gate_up = &tsgu,
                            .shared_down = &tsdn, .out = &tout, .n_experts = E, .top_k = k, .inter = I,
                            .shared_inter = Is, .n_group = 4, .topk_group = 2, .routed_scale = 2.5f,
                            .scratch = hs, .scratch_bytes = L.bytes};
        assert_int_equal(anvil_cpu_ref_moe(&a), ANVIL_OK);
        void *dx = dev_put(gpu, x, T * H, ANVIL_DTYPE_F32), *dr = dev_put(gpu, router, E * H, ANVIL_DTYPE_F32);
        void *dgu = dev_put(gpu, gu, E * 2 * I * H, ANVIL_DTYPE_F32), *ddn = dev_put(gpu, dn, E * H * I, ANVIL_DTYPE_F32);
        void *dsgu = dev_put(gpu, sgu, 2 * Is * H, ANVIL_DTYPE_F32), *dsdn = dev_put(gpu, sdn, H * Is, ANVIL_DTYPE_F32);
        void *dout = NULL, *dscr = NULL;
        assert_int_equal(gpu->ops->alloc(gpu, (size_t)(T * H) * 4, &dout), ANVIL_OK);
        assert_int_equal(gpu->ops->alloc(gpu, L.bytes, &dscr), ANVIL_OK);
        anvil_tensor gx = anvil_tensor_2d(ANVIL_DTYPE_F32, T, H, dx), gr = anvil_tensor_2d(ANVIL_DTYPE_F32, E, H, dr);
        anvil_tensor ggu = anvil_tensor_2d(ANVIL_DTYPE_F32, E * 2 * I, H, dgu), gdn = anvil_tensor_2d(ANVIL_DTYPE_F32, E * H, I, ddn);
        anvil_tensor gsgu = anvil_tensor_2d(ANVIL_DTYPE_F32, 2 * Is, H, dsgu), gsdn = anvil_tensor_2d(ANVIL_DTYPE_F32, H, Is, dsdn);
        anvil_tensor gout = anvil_tensor_2d(ANVIL_DTYPE_F32, T, H, dout);
        anvil_moe_args ga = a;
        ga.x = &gx, ga.router = &gr, ga.gate_up = &ggu, ga.down = &gdn, ga.shared_gate_up = &gsgu;
        ga.shared_down = &gsdn, ga.out = &gout, ga.scratch = dscr;
        if (gpu->ops->moe(gpu, &ga) != ANVIL_OK || gpu->ops->synchronize(gpu) != ANVIL_OK)
            fail_msg("moe on cuda: %s", anvil_last_error());
        float *got = dev_get(gpu, dout, T * H, ANVIL_DTYPE_F32);
        const double e = rel_err(got, want, T * H);
        printf("  %s moe groups 2 of 4, top-%d of %d, scale 2.5, ungated shared, T=%lld: %.3g x max (tol 1e-4)\n",
               e <= 1e-4 ? "PASS" : "FAIL", k, E, (long long)T, e);
        void *dev[] = {dx, dr, dgu, ddn, dsgu, dsdn, dout, dscr};
        for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
            gpu->ops->free(gpu, dev[i]);
        free(x), free(router), free(gu), free(dn), free(sgu), free(sdn), free(hs), free(want), free(got);
        if (!(e <= 1e-4))
            fail_msg("moe groups: error %.3g", e);
    }
    anvil_backend_free(gpu);
}

/* ---------------------------------------------------------------- perf */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The device's memory bandwidth ceiling in bytes/s (2 x memory clock x bus width) */
static double peak_bytes_per_s(void)
{
    int dev = 0, khz = 0, bits = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&khz, cudaDevAttrMemoryClockRate, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&bits, cudaDevAttrGlobalMemoryBusWidth, dev) != cudaSuccess)
        return 3.35e12; /* an H100 SXM's */
    return 2.0 * (double)khz * 1e3 * (double)bits / 8.0;
}

/* ms per mla call at DeepSeek-V2-Lite's shape (16 heads, rank 512, 128 +
 * 64 / 128, bf16): B sequences of `rows` rows each after `prior` cached
 * positions, on path `kernel` (the mla_kernel knob) */
static double mla_perf_ms(anvil_backend *gpu, int32_t B, int32_t prior, int32_t rows, int kernel)
{
    const int32_t H = 16, R = 512, dn = 128, dr = 64, dv = 128, bs = 64;
    const int32_t n_ctx = prior + rows, maxb = (n_ctx + bs - 1) / bs, n_blocks = B * maxb, T = B * rows;
    const int64_t w = R + dr;
    uint64_t rng = 7;
    float *q = rand_rounded(&rng, (int64_t)T * H * (dn + dr), ANVIL_DTYPE_BF16);
    float *c = rand_rounded(&rng, (int64_t)T * R, ANVIL_DTYPE_BF16), *k = rand_rounded(&rng, (int64_t)T * dr, ANVIL_DTYPE_BF16);
    float *wb = rand_rounded(&rng, (int64_t)H * (dn + dv) * R, ANVIL_DTYPE_BF16);
    float inv[32];
    for (int i = 0; i < dr / 2; i++)
        inv[i] = powf(10000.0f, -(float)(2 * i) / (float)dr);
    int32_t *pos = malloc((size_t)T * 4), *sot = malloc((size_t)T * 4), *slots = malloc((size_t)T * 4);
    int32_t *tables = malloc((size_t)n_blocks * 4);
    assert_true(pos && sot && slots && tables);
    for (int32_t i = 0; i < n_blocks; i++)
        tables[i] = i;
    for (int32_t b = 0; b < B; b++)
        for (int32_t r = 0; r < rows; r++) {
            const int32_t t = b * rows + r;
            pos[t] = prior + r;
            sot[t] = b;
            slots[t] = tables[b * maxb + pos[t] / bs] * bs + pos[t] % bs;
        }
    void *dq = dev_put(gpu, q, (int64_t)T * H * (dn + dr), ANVIL_DTYPE_BF16), *dc = dev_put(gpu, c, (int64_t)T * R, ANVIL_DTYPE_BF16);
    void *dk = dev_put(gpu, k, (int64_t)T * dr, ANVIL_DTYPE_BF16);
    void *dw = dev_put(gpu, wb, (int64_t)H * (dn + dv) * R, ANVIL_DTYPE_BF16);
    void *dcache = NULL, *dout = NULL;
    const size_t cache_bytes = (size_t)n_blocks * bs * (size_t)w * 2;
    assert_int_equal(gpu->ops->alloc(gpu, cache_bytes, &dcache), ANVIL_OK);
    /* finite latents (bf16 0x3c3c = 0.0115) without uploading them */
    assert_int_equal(cudaMemset(dcache, 0x3c, cache_bytes), cudaSuccess);
    assert_int_equal(gpu->ops->alloc(gpu, (size_t)T * H * dv * 2, &dout), ANVIL_OK);
    void *dpos = dev_put_raw(gpu, pos, (size_t)T * 4), *dsot = dev_put_raw(gpu, sot, (size_t)T * 4);
    void *dslots = dev_put_raw(gpu, slots, (size_t)T * 4), *dtab = dev_put_raw(gpu, tables, (size_t)n_blocks * 4);
    void *dinv = dev_put_raw(gpu, inv, (size_t)(dr / 2) * 4);
    anvil_rope_freqs df = {.inv_freq = dinv, .scale = 1.0f};
    anvil_step ds = {.n_tokens = T, .n_seqs = B, .max_blocks_per_seq = maxb, .block_size = bs, .max_context = n_ctx,
                     .positions = dpos, .seq_of_token = dsot, .block_tables = dtab, .slots = dslots};
    anvil_tensor gq = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, H * (dn + dr), dq), gc = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, R, dc);
    anvil_tensor gk = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, dr, dk), gout = anvil_tensor_2d(ANVIL_DTYPE_BF16, T, H * dv, dout);
    anvil_tensor gw = anvil_tensor_2d(ANVIL_DTYPE_BF16, H * (dn + dv), R, dw);
    anvil_tensor gcache = {.dtype = ANVIL_DTYPE_BF16, .n_dims = 4, .shape = {n_blocks, bs, 1, w}, .data = dcache};
    anvil_mla_args ga = {.q = &gq, .c = &gc, .k_pe = &gk, .kv_b = &gw, .cache = &gcache, .out = &gout, .step = &ds,
                         .rope = &df, .n_heads = H, .kv_rank = R, .nope_dim = dn, .rope_dim = dr, .v_dim = dv,
                         .scale = 0.07f};
    set_mla_knobs(gpu, kernel, 0);
    assert_int_equal(gpu->ops->mla(gpu, &ga), ANVIL_OK);
    assert_int_equal(gpu->ops->synchronize(gpu), ANVIL_OK);
    const int reps = rows > 1 ? 3 : 20;
    const double t0 = now_s();
    for (int r = 0; r < reps; r++)
        assert_int_equal(gpu->ops->mla(gpu, &ga), ANVIL_OK);
    assert_int_equal(gpu->ops->synchronize(gpu), ANVIL_OK);
    const double ms = (now_s() - t0) * 1e3 / reps;
    set_mla_knobs(gpu, 0, 0);
    void *dev[] = {dq, dc, dk, dw, dcache, dout, dpos, dsot, dslots, dtab, dinv};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        gpu->ops->free(gpu, dev[i]);
    free(q), free(c), free(k), free(wb), free(pos), free(sot), free(slots), free(tables);
    return ms;
}

/* DeepSeek-V2-Lite's mla op, bf16: decode at 1/16/64 sequences x 512/4096
 * cached positions and a 2048-row prefill, the reference kernels and the
 * tensor-core form, against the bytes-read ceiling (the latent rows once
 * and kv_b once: what the absorbed form must read at least) */
static void test_mla_perf(void **s)
{
    (void)s;
    if (anvil_cuda_device_count() == 0 || !g_perf)
        skip();
    anvil_backend *gpu;
    assert_int_equal(anvil_backend_cuda_create(0, ANVIL_DTYPE_BF16, &gpu), ANVIL_OK);
    const double peak = peak_bytes_per_s(), kvb_bytes = 16.0 * 256 * 512 * 2, row_bytes = 576.0 * 2;
    printf("  perf mla (V2-Lite: 16 heads, rank 512, 128 + 64 / 128, bf16), memory ceiling %.0f GB/s\n", peak / 1e9);
    const int32_t Bs[] = {1, 16, 64}, ctxs[] = {512, 4096};
    for (int bi = 0; bi < 3; bi++)
        for (int ci = 0; ci < 2; ci++) {
            const int32_t B = Bs[bi], n_ctx = ctxs[ci];
            const double bytes = (double)B * n_ctx * row_bytes + kvb_bytes, floor_ms = bytes / peak * 1e3;
            const double ref = mla_perf_ms(gpu, B, n_ctx - 1, 1, 1), mma = mla_perf_ms(gpu, B, n_ctx - 1, 1, 2);
            printf("  perf mla decode B=%2d ctx=%4d: reference %.3f ms, mma %.3f ms (%.1fx); ceiling %.3f ms "
                   "(%.1f MB): mma at %.0f%% of it\n",
                   B, n_ctx, ref, mma, ref / mma, floor_ms, bytes / 1e6, 100.0 * floor_ms / mma);
        }
    const double ref = mla_perf_ms(gpu, 1, 0, 2048, 1), ab = mla_perf_ms(gpu, 1, 0, 2048, 2);
    const double xp = mla_perf_ms(gpu, 1, 0, 2048, 3);
    /* tensor-core work a (row, key, head): absorbed (576 + 512) x 2 flops,
     * expanded (192 + 128) x 2 plus the GEMM of 2048 latents with kv_b */
    const double pairs = 16.0 * (2048.0 * 2049 / 2);
    const double f_ab = 2.0 * (576 + 512) * pairs, f_xp = 2.0 * (192 + 128) * pairs + 2.0 * 2048 * 512 * 4096;
    printf("  perf mla prefill 2048 rows: reference %.3f ms, absorbed %.3f ms (%.0f TFLOP/s), expanded %.3f ms "
           "(%.0f TFLOP/s with its GEMM)\n",
           ref, ab, f_ab / (ab * 1e-3) / 1e12, xp, f_xp / (xp * 1e-3) / 1e12);
    /* where the automatic choice switches (cuda_mla.c, expand_pays): chunks
     * of 32..512 rows at the end of a 2048 context, both forms */
    const int32_t chunks[] = {32, 64, 128, 512};
    for (int i = 0; i < 4; i++) {
        const int32_t n = chunks[i];
        const double a = mla_perf_ms(gpu, 1, 2048 - n, n, 2), e = mla_perf_ms(gpu, 1, 2048 - n, n, 3);
        printf("  perf mla chunk of %3d rows after %d: absorbed %.3f ms, expanded %.3f ms (automatic: %s)\n", n,
               2048 - n, a, e, n >= 64 && 2048 <= 32 * n ? "expanded" : "absorbed");
    }
    anvil_backend_free(gpu);
}

int main(int argc, char **argv)
{
    g_perf = argc > 1 && strcmp(argv[1], "--perf") == 0;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mla),
        cmocka_unit_test(test_mla_bad_block),
        cmocka_unit_test(test_mla_model),
        cmocka_unit_test(test_moe_groups),
        cmocka_unit_test(test_mla_perf),
    };
    return anvil_test_run_group(tests);
}
