/*
 * anvil build --quantize (docs/quantization.md), on tinycode (bf16, hidden
 * 384, intermediate 1024: groups of 128 divide):
 *  - the stored bytes of every quantized weight (fused q/k/v and gate/up
 *    included) and of its scales and zero points equal a straightforward
 *    re-quantization of the checkpoint's rows written here, and dequantize
 *    to within each scheme's rounding bound; embeddings, norms and the LM
 *    head stay bf16; random weights quantize the same way;
 *  - a quantized engine loads and runs: its logits on the golden prompts
 *    stay close to the bf16 engine's (top-1 agreement and error bounds per
 *    scheme), greedy generation runs;
 *  - bad input is refused with a message: a group size that does not
 *    divide a width, a group size without int4, malformed quantized
 *    entries (scales missing or of the wrong shape, zero points on int8,
 *    a group that does not divide, fp8 activations on int4, zero points
 *    above 15); anvil inspect shows the quantization and --verify catches
 *    bad zero points;
 *  - refit quantizes the new weights again: on disk the bytes of a build
 *    of them, live (read and mapped) the logits of that engine.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/builder.h"
#include "anvil/generate.h"
#include "anvil/runtime.h"
#include "builder/build_plan.h"
#include "builder/random_weights.h"
#include "golden.h"
#include "io/engine_file.h"
#include "io/safetensors.h"
#include "testutil.h"

enum { NONE, FP8, INT8, INT4, N_SCHEMES };
static const anvil_quantize schemes[N_SCHEMES] = {ANVIL_QUANTIZE_NONE, ANVIL_QUANTIZE_FP8, ANVIL_QUANTIZE_INT8_WO,
                                                  ANVIL_QUANTIZE_INT4_WO};
static char engines[N_SCHEMES][600];
/* The heaviest cases (filling in pieces, refit) run int4 alone under the
 * sanitizers (its packing and zero points are the most to get wrong). */
#define FIRST_HEAVY (ANVIL_TEST_SANITIZED ? INT4 : FP8)
static char model_dir[600];

static int setup(void **st)
{
    (void)st;
    snprintf(model_dir, sizeof model_dir, "%s/models/tinycode", anvil_test_shared_dir());
    for (int q = 0; q < N_SCHEMES; q++) {
        snprintf(engines[q], sizeof engines[q], "%s/tc-%s.engine", anvil_test_tmpdir(), anvil_quantize_name(schemes[q]));
        anvil_build_options o;
        anvil_build_options_default(&o);
        o.quantize = schemes[q];
        o.n_threads = 2;
        if (anvil_build_engine(model_dir, engines[q], &o) != ANVIL_OK) {
            fprintf(stderr, "build %s: %s\n", engines[q], anvil_last_error());
            return -1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------ the reference */

static float clampf(float v, float lo, float hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* Row x [k] by docs/quantization.md's rules, written out plainly: codes
 * [k] (one a byte, int4 unpacked), scales and zeros [k / group]. */
static void ref_row(int q, const float *x, int64_t k, int64_t group, uint8_t *codes, float *s, uint8_t *z)
{
    for (int64_t g = 0; g < k / group; g++) {
        const float *xg = x + g * group;
        float lo = 0, hi = 0, amax = 0;
        for (int64_t i = 0; i < group; i++) {
            lo = fminf(lo, xg[i]);
            hi = fmaxf(hi, xg[i]);
            amax = fmaxf(amax, fabsf(xg[i]));
        }
        if (q == INT4) {
            s[g] = (hi - lo) / 15.0f;
            z[g] = s[g] > 0 ? (uint8_t)clampf(nearbyintf(-lo / s[g]), 0, 15) : 0;
        } else {
            s[g] = amax / (q == FP8 ? 448.0f : 127.0f);
        }
        for (int64_t i = 0; i < group; i++) {
            uint8_t c = 0;
            if (s[g] > 0 && q == INT4)
                c = (uint8_t)clampf(nearbyintf(xg[i] / s[g]) + z[g], 0, 15);
            else if (s[g] > 0 && q == INT8)
                c = (uint8_t)(int8_t)clampf(nearbyintf(xg[i] / s[g]), -127, 127);
            else if (s[g] > 0)
                c = anvil_f32_to_fp8_e4m3(xg[i] / s[g]);
            codes[g * group + i] = c;
        }
    }
}

/* The value a code stands for, and how far from x it may lie. */
static float dequant(int q, uint8_t c, float s, uint8_t z)
{
    return q == INT4 ? ((float)c - (float)z) * s : q == INT8 ? (float)(int8_t)c * s : anvil_fp8_e4m3_to_f32(c) * s;
}

static float bound(int q, float x, float s)
{
    /* int8: half a step; int4: a step (the zero point's rounding can push
     * the group's ends one step in); fp8: half a unit of its 3-bit
     * mantissa, or of its smallest subnormal (2^-9) */
    const float tiny = 1e-5f * (s + fabsf(x)); /* the float rounding of (c - z) * s */
    return q == INT8 ? 0.5f * s + tiny : q == INT4 ? s + tiny : fabsf(x) / 16.0f + s / 1024.0f + tiny;
}

/* The f32 rows of a stored tensor's members (tinycode's weights are
 * checkpoint tensors of their own names), stacked: [n, k], malloc'd. */
static float *member_rows(const anvil_checkpoint *ck, const json_t *members, int64_t n, int64_t k)
{
    float *x = malloc((size_t)(n * k) * sizeof *x);
    int64_t at = 0;
    size_t i;
    const json_t *m;
    json_array_foreach(members, i, m)
    {
        const anvil_st_tensor *t = anvil_checkpoint_find(ck, json_string_value(m));
        assert_non_null(t);
        const int64_t e = t->shape[0] * t->shape[1];
        assert_true(at + e <= n * k && t->shape[1] == k);
        uint16_t *raw = malloc((size_t)e * 2);
        assert_int_equal(t->dtype, ANVIL_DTYPE_BF16);
        assert_int_equal(anvil_st_read(t, 0, raw, (size_t)e * 2), ANVIL_OK);
        anvil_convert_to_f32(ANVIL_DTYPE_BF16, raw, x + at, e);
        free(raw);
        at += e;
    }
    assert_int_equal(at, n * k);
    return x;
}

static void *tensor_bytes(const anvil_engine_file *f, const char *name, anvil_engine_kind kind)
{
    const anvil_engine_tensor *t = anvil_engine_file_find(f, name);
    assert_non_null(t);
    assert_int_equal(t->kind, kind);
    void *b = malloc(t->bytes);
    assert_int_equal(anvil_engine_file_read(f, t->index, 0, b, t->bytes), ANVIL_OK);
    return b;
}

/* Checks quantized stored tensor `name` [n, k] of engine f against rows x. */
static void check_stored(int q, const anvil_engine_file *f, const anvil_engine_tensor *t, const float *x)
{
    const int64_t n = t->shape[0], k = t->shape[1], group = q == INT4 ? 128 : k, ng = k / group;
    const json_t *sc = json_object_get(t->entry, "scales");
    assert_true(json_is_object(sc));
    assert_int_equal(json_integer_value(json_object_get(sc, "group")), q == INT4 ? 128 : 0);
    assert_true((json_object_get(sc, "zeros") != NULL) == (q == INT4));
    assert_true((json_object_get(sc, "act") != NULL) == (q == FP8));
    const uint8_t *w = tensor_bytes(f, t->name, t->kind);
    const float *s = tensor_bytes(f, json_string_value(json_object_get(sc, "tensor")), ANVIL_ENGINE_KIND_F32);
    const uint8_t *z = q == INT4 ? tensor_bytes(f, json_string_value(json_object_get(sc, "zeros")), ANVIL_ENGINE_KIND_U8)
                                 : NULL;
    uint8_t *codes = malloc((size_t)k), zr[64];
    float sr[64];
    for (int64_t r = 0; r < n; r++) {
        ref_row(q, x + r * k, k, group, codes, sr, zr);
        for (int64_t g = 0; g < ng; g++) {
            assert_memory_equal(&s[r * ng + g], &sr[g], sizeof(float));
            if (z)
                assert_int_equal(z[r * ng + g], zr[g]);
        }
        for (int64_t i = 0; i < k; i++) {
            const uint8_t c = q == INT4 ? (uint8_t)((w[(r * k + i) / 2] >> (i % 2 ? 4 : 0)) & 15) : w[r * k + i];
            if (c != codes[i])
                fail_msg("%s: row %lld column %lld: code %u, the re-quantization gives %u", t->name, (long long)r,
                         (long long)i, c, codes[i]);
            const float sv = s[r * ng + i / group], d = dequant(q, c, sv, z ? z[r * ng + i / group] : 0);
            if (!(fabsf(d - x[r * k + i]) <= bound(q, x[r * k + i], sv)))
                fail_msg("%s [%lld, %lld]: %g stands for %g (scale %g)", t->name, (long long)r, (long long)i, (double)d,
                         (double)x[r * k + i], (double)sv);
        }
    }
    free(codes);
    free((void *)w);
    free((void *)s);
    free((void *)z);
}

static void test_stored_bytes(void **st)
{
    (void)st;
    anvil_checkpoint *ck = NULL;
    assert_int_equal(anvil_checkpoint_open_ex(model_dir, ANVIL_ST_READ, &ck), ANVIL_OK);
    static const anvil_engine_kind kinds[N_SCHEMES] = {ANVIL_ENGINE_KIND_BF16, ANVIL_ENGINE_KIND_FP8_E4M3,
                                                       ANVIL_ENGINE_KIND_INT8, ANVIL_ENGINE_KIND_INT4};
    for (int q = FP8; q < N_SCHEMES; q++) {
        anvil_engine_file *f = NULL;
        assert_int_equal(anvil_engine_file_open(engines[q], ANVIL_ST_READ, &f), ANVIL_OK);
        const json_t *m = anvil_engine_file_manifest(f);
        const json_t *bq = json_object_get(json_object_get(m, "build"), "quantization");
        assert_string_equal(json_string_value(json_object_get(bq, "scheme")), anvil_quantize_name(schemes[q]));
        assert_string_equal(json_string_value(json_object_get(bq, "method")), "rtn");
        const json_t *stored = json_object_get(json_object_get(m, "plan"), "stored");
        int n_quant = 0, n_fused = 0;
        const char *last = NULL; /* the last weight's name */
        for (int64_t i = 0; i < anvil_engine_file_count(f); i++) {
            const anvil_engine_tensor *t = anvil_engine_file_tensor(f, i);
            const json_t *e = json_array_get(stored, (size_t)i);
            const json_t *members = json_object_get(e, "members");
            if (json_object_get(e, "role") != NULL) { /* a companion: right after its weight */
                assert_true(json_array_size(members) == 0 && last != NULL);
                assert_true(strncmp(t->name, last, strlen(last)) == 0);
                continue;
            }
            last = t->name;
            const char *first = json_string_value(json_array_get(members, 0));
            const int linear = strstr(first, "_proj.weight") != NULL;
            if (!linear) { /* embedding, norms, LM head: as stored */
                assert_int_equal(t->kind, ANVIL_ENGINE_KIND_BF16);
                assert_null(json_object_get(t->entry, "scales"));
                continue;
            }
            assert_int_equal(t->kind, kinds[q]);
            float *x = member_rows(ck, members, t->shape[0], t->shape[1]);
            check_stored(q, f, t, x);
            free(x);
            n_quant++;
            n_fused += json_array_size(members) > 1;
        }
        assert_int_equal(n_quant, 24); /* 6 layers: q/k/v, o, gate/up, down */
        assert_int_equal(n_fused, 12); /* q/k/v and gate/up fused, scales and all */
        anvil_engine_file_close(f);
    }
    anvil_checkpoint_close(ck);
}

/* Random weights quantize as a checkpoint's do: the first quantized
 * tensor of a random int4 build against anvil_random_weights' values. */
static void test_random_weights(void **st)
{
    (void)st;
    char cfg[700], eng[700];
    snprintf(cfg, sizeof cfg, "%s/config.json", model_dir);
    snprintf(eng, sizeof eng, "%s/random-int4.engine", anvil_test_tmpdir());
    anvil_build_options o;
    anvil_build_options_default(&o);
    o.random_weights = 1;
    o.seed = 7;
    o.quantize = ANVIL_QUANTIZE_INT4_WO;
    o.no_fusion = 1;
    assert_int_equal(anvil_build_engine(cfg, eng, &o), ANVIL_OK);
    anvil_engine_file *f = NULL;
    assert_int_equal(anvil_engine_file_open(eng, ANVIL_ST_READ, &f), ANVIL_OK);
    anvil_model_config c;
    assert_int_equal(anvil_model_config_load(eng, &c), ANVIL_OK);
    anvil_network *net = NULL;
    assert_int_equal(anvil_model_build_network(&c, &net), ANVIL_OK);
    int checked = 0;
    for (int64_t i = 0; i < anvil_engine_file_count(f) && !checked; i++) {
        const anvil_engine_tensor *t = anvil_engine_file_tensor(f, i);
        if (t->kind != ANVIL_ENGINE_KIND_INT4)
            continue;
        const int32_t wi = anvil_network_find_weight(net, t->name);
        assert_true(wi >= 0);
        float *x = malloc((size_t)(t->shape[0] * t->shape[1]) * sizeof *x);
        anvil_random_weights(net, wi, 7, 0, t->shape[0] * t->shape[1], x);
        check_stored(INT4, f, t, x);
        free(x);
        checked = 1;
    }
    assert_true(checked);
    anvil_network_free(net);
    anvil_engine_file_close(f);
    anvil_runtime_options ro;
    anvil_runtime_options_default(&ro);
    ro.n_threads = 2;
    ro.max_seq_len = 64;
    ro.kv_cache_tokens = 64;
    anvil_runtime *rt = NULL;
    assert_int_equal(anvil_runtime_load(eng, &ro, &rt), ANVIL_OK);
    anvil_runtime_free(rt);
}

/* The build fills a tensor in 16 MiB chunks on several threads, which on
 * tinycode never split a row: here every stored tensor of each quantized
 * plan is filled in odd pieces (rows and groups cut anywhere, last piece
 * first) and must give the engine's bytes. */
static void test_fill_in_pieces(void **st)
{
    (void)st;
    anvil_model_config c;
    assert_int_equal(anvil_model_config_load(model_dir, &c), ANVIL_OK);
    anvil_network *net = NULL;
    assert_int_equal(anvil_model_build_network(&c, &net), ANVIL_OK);
    anvil_checkpoint *ck = NULL;
    assert_int_equal(anvil_checkpoint_open_ex(model_dir, ANVIL_ST_READ, &ck), ANVIL_OK);
    anvil_build_scratch *sc = NULL;
    assert_int_equal(anvil_build_scratch_create(&sc), ANVIL_OK);
    const anvil_fuse_caps caps = anvil_fuse_caps_all();
    for (int q = FIRST_HEAVY; q < N_SCHEMES; q++) {
        const anvil_plan_options po = {.weight_dtype = ANVIL_DTYPE_COUNT, .caps = &caps, .quantize = schemes[q]};
        anvil_build_plan *p = NULL;
        assert_int_equal(anvil_build_plan_make(net, ck, &po, &p), ANVIL_OK);
        assert_int_equal(anvil_build_plan_check(p, net), ANVIL_OK);
        anvil_engine_file *f = NULL;
        assert_int_equal(anvil_engine_file_open(engines[q], ANVIL_ST_READ, &f), ANVIL_OK);
        assert_int_equal(anvil_engine_file_count(f), p->n_stored);
        for (int32_t s = 0; s < p->n_stored; s++) {
            const anvil_stored *t = &p->stored[s];
            if (t->conv == NULL)
                continue; /* the float tensors' fill is test_recipes' */
            const anvil_engine_tensor *et = anvil_engine_file_tensor(f, s);
            assert_string_equal(et->name, t->name);
            assert_int_equal(et->bytes, t->bytes);
            uint8_t *want = malloc(t->bytes), *got = malloc(t->bytes);
            assert_int_equal(anvil_engine_file_read(f, s, 0, want, t->bytes), ANVIL_OK);
            memset(got, 0xa5, t->bytes);
            const size_t piece = 777 * 4; /* not a row's bytes of any tensor here */
            for (size_t end = t->bytes; end > 0;) {
                const size_t off = end > piece ? end - piece : 0;
                assert_int_equal(anvil_build_fill(p, net, ck, s, off, got + off, end - off, sc), ANVIL_OK);
                end = off;
            }
            if (memcmp(got, want, t->bytes) != 0)
                fail_msg("%s: filled in pieces, its bytes differ from the engine's", t->name);
            free(want);
            free(got);
        }
        anvil_engine_file_close(f);
        anvil_build_plan_free(p);
    }
    anvil_build_scratch_free(sc);
    anvil_checkpoint_close(ck);
    anvil_network_free(net);
}

/* ------------------------------------------------------------ running */

static anvil_runtime *load(const char *path)
{
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.n_threads = 2;
    o.max_num_tokens = 512;
    o.max_batch_size = 1;
    o.max_logit_rows = 512;
    o.kv_cache_tokens = 1024;
    o.max_seq_len = 1024;
    anvil_runtime *rt = NULL;
    if (anvil_runtime_load(path, &o, &rt) != ANVIL_OK)
        fail_msg("load %s: %s", path, anvil_last_error());
    return rt;
}

static float *logits_of(anvil_runtime *rt, const golden_case *gc, int32_t n)
{
    const int64_t V = anvil_runtime_config(rt)->vocab_size;
    int32_t *pos = malloc((size_t)n * sizeof *pos), blocks[64], starts[2] = {0, n};
    const int32_t nb = (n + 31) / 32;
    assert_int_equal(anvil_runtime_kv_alloc(rt, nb, blocks), ANVIL_OK);
    for (int32_t i = 0; i < n; i++)
        pos[i] = i;
    float *out = malloc((size_t)n * (size_t)V * sizeof *out);
    anvil_batch b = {.n_tokens = n, .token_ids = gc->ids, .positions = pos, .n_seqs = 1, .seq_starts = starts,
                     .block_tables = blocks, .max_blocks_per_seq = nb, .n_logits = n, .logit_rows = pos};
    if (anvil_runtime_forward(rt, &b, out) != ANVIL_OK)
        fail_msg("forward: %s", anvil_last_error());
    anvil_runtime_kv_release(rt, nb, blocks);
    free(pos);
    return out;
}

static int64_t argmax(const float *x, int64_t n)
{
    int64_t b = 0;
    for (int64_t i = 1; i < n; i++)
        b = x[i] > x[b] ? i : b;
    return b;
}

/* Every golden prompt's logits at every position, each quantized engine
 * against the bf16 engine: the share of positions whose top token agrees,
 * and the largest logit error relative to the row's largest |logit|. The
 * bounds hold with room for each scheme (int8's rounding is 16x finer than
 * int4's) and fail for a wrong scale, zero point or layout. */
static void test_logits_close(void **st)
{
    (void)st;
    golden g;
    golden_load("tinycode", &g);
    anvil_runtime *base = load(engines[NONE]);
    const int64_t V = anvil_runtime_config(base)->vocab_size;
    static const double min_agree[N_SCHEMES] = {1, 0.92, 0.94, 0.8}, max_err[N_SCHEMES] = {0, 0.15, 0.06, 0.4};
    for (int q = FP8; q < N_SCHEMES; q++) {
        anvil_runtime *rt = load(engines[q]);
        int64_t agree = 0, rows = 0;
        double worst = 0;
        for (int c = 0; c < g.n_cases; c++) {
            const int32_t n = g.cases[c].n_ids < 512 ? g.cases[c].n_ids : 512;
            float *a = logits_of(base, &g.cases[c], n), *b = logits_of(rt, &g.cases[c], n);
            for (int32_t r = 0; r < n; r++) {
                const float *x = a + (int64_t)r * V, *y = b + (int64_t)r * V;
                double amax = 0, err = 0;
                for (int64_t v = 0; v < V; v++) {
                    assert_true(isfinite(y[v]));
                    amax = fmax(amax, fabs(x[v]));
                    err = fmax(err, fabs((double)x[v] - y[v]));
                }
                worst = fmax(worst, err / amax);
                agree += argmax(x, V) == argmax(y, V);
                rows++;
            }
            free(a);
            free(b);
        }
        const double share = (double)agree / (double)rows;
        printf("%-8s top-1 agreement %.3f over %lld positions, largest relative logit error %.4f\n",
               anvil_quantize_name(schemes[q]), share, (long long)rows, worst);
        assert_true(share >= min_agree[q]);
        assert_true(worst <= max_err[q]);
        assert_true(worst > 0); /* it is quantized */
        anvil_runtime_free(rt);
    }
    anvil_runtime_free(base);
    golden_free(&g);
}

/* Greedy generation runs on each quantized engine (fused and mapped). */
static void test_generate(void **st)
{
    (void)st;
    for (int q = FP8; q < N_SCHEMES; q++) {
        anvil_runtime_options o;
        anvil_runtime_options_default(&o);
        o.n_threads = 2;
        o.max_seq_len = 128;
        o.kv_cache_tokens = 128;
        o.use_mmap = q == INT4;
        anvil_runtime *rt = NULL;
        assert_int_equal(anvil_runtime_load(engines[q], &o, &rt), ANVIL_OK);
        const int32_t prompt[] = {0, 328, 285, 636, 264, 5090, 74, 599, 325};
        anvil_generate_params p = {.max_tokens = 16, .ignore_eos = 1};
        anvil_sampling_params_default(&p.sampling);
        p.sampling.temperature = 0; /* greedy */
        int32_t out[16], n = 0;
        anvil_finish_reason why;
        if (anvil_generate(rt, prompt, 9, &p, NULL, NULL, out, &n, &why) != ANVIL_OK)
            fail_msg("generate on %s: %s", engines[q], anvil_last_error());
        assert_int_equal(n, 16);
        for (int i = 0; i < n; i++)
            assert_true(out[i] >= 0 && out[i] < anvil_runtime_config(rt)->vocab_size);
        anvil_runtime_free(rt);
    }
}

/* ------------------------------------------------------------ bad input */

typedef void (*mutate_fn)(json_t *tensors);

typedef struct rw_ctx {
    anvil_engine_file *src;
    json_t *tensors;       /* the new entries */
    const char *poison;    /* a tensor whose bytes become 0xff, or NULL */
} rw_ctx;

static anvil_status rw_fill(void *user, int64_t index, size_t offset, void *dst, size_t len)
{
    rw_ctx *c = user;
    const char *name = json_string_value(json_object_get(json_array_get(c->tensors, (size_t)index), "name"));
    const anvil_engine_tensor *t = anvil_engine_file_find(c->src, name);
    if (c->poison && strcmp(name, c->poison) == 0)
        memset(dst, 0xff, len);
    else if (t != NULL && offset + len <= t->bytes)
        return anvil_engine_file_read(c->src, t->index, offset, dst, len);
    else
        memset(dst, 0, len); /* a tensor whose size the case changed */
    return ANVIL_OK;
}

/* dst = src with its weight table's entries passed through mutate (kinds,
 * shapes, "scales" objects), the bytes copied where sizes allow. */
static void rewrite(const char *src, const char *dst, mutate_fn mutate, const char *poison)
{
    anvil_engine_file *f = NULL;
    assert_int_equal(anvil_engine_file_open(src, ANVIL_ST_READ, &f), ANVIL_OK);
    json_t *m = json_deep_copy(anvil_engine_file_manifest(f));
    json_t *tensors = json_object_get(m, "tensors");
    if (mutate)
        mutate(tensors);
    anvil_engine_writer *w = NULL;
    assert_int_equal(anvil_engine_writer_create(dst, &w), ANVIL_OK);
    size_t i;
    json_t *e;
    json_array_foreach(tensors, i, e)
    {
        anvil_engine_kind k;
        assert_int_equal(anvil_engine_kind_parse(json_string_value(json_object_get(e, "kind")), &k), 0);
        int64_t shape[4];
        const json_t *sh = json_object_get(e, "shape");
        for (size_t d = 0; d < json_array_size(sh); d++)
            shape[d] = json_integer_value(json_array_get(sh, d));
        assert_int_equal(anvil_engine_writer_add_tensor(w, json_string_value(json_object_get(e, "name")), k,
                                                        (int)json_array_size(sh), shape, NULL),
                         ANVIL_OK);
    }
    json_array_foreach(tensors, i, e)
    {
        json_t *sc = json_object_get(e, "scales");
        if (sc == NULL)
            continue;
        const char *sn = json_string_value(json_object_get(sc, "tensor"));
        size_t j;
        json_t *x;
        json_array_foreach(tensors, j, x) if (strcmp(json_string_value(json_object_get(x, "name")), sn) == 0) break;
        assert_true(j < json_array_size(tensors));
        assert_int_equal(anvil_engine_writer_set_scales(w, (int64_t)i, (int64_t)j), ANVIL_OK);
        json_t *info = json_deep_copy(sc);
        json_object_del(info, "tensor");
        assert_int_equal(anvil_engine_writer_set_scales_info(w, (int64_t)i, info), ANVIL_OK);
        json_decref(info);
    }
    rw_ctx c = {.src = f, .tensors = json_incref(tensors), .poison = poison};
    assert_int_equal(anvil_engine_writer_finish(w, m, rw_fill, &c, 1, NULL, NULL), ANVIL_OK);
    json_decref(c.tensors);
    json_decref(m);
    anvil_engine_file_close(f);
}

static json_t *first_quantized(json_t *tensors)
{
    return json_array_get(tensors, 0); /* layer 0's q/k/v, quantized in every scheme */
}
static void no_scales(json_t *t)
{
    json_object_del(first_quantized(t), "scales");
}
static void scales_are_zeros(json_t *t)
{
    json_t *sc = json_object_get(first_quantized(t), "scales");
    json_object_set(sc, "tensor", json_object_get(sc, "zeros"));
}
static void group_100(json_t *t)
{
    json_object_set_new(json_object_get(first_quantized(t), "scales"), "group", json_integer(100));
}
static void scales_shape(json_t *t)
{
    json_array_set_new(json_object_get(json_array_get(t, 1), "shape"), 1, json_integer(2));
}
static void int8_with_zeros(json_t *t)
{
    json_object_set_new(first_quantized(t), "kind", json_string("int8"));
}
static void act_on_int4(json_t *t)
{
    json_object_set_new(json_object_get(first_quantized(t), "scales"), "act", json_string("fp8_dynamic"));
}
static void act_unknown(json_t *t)
{
    json_object_set_new(json_object_get(first_quantized(t), "scales"), "act", json_string("int8_dynamic"));
}
static void zeros_missing(json_t *t)
{
    json_object_set_new(json_object_get(first_quantized(t), "scales"), "zeros", json_string("nowhere"));
}

static void expect_refused(const char *path, anvil_status want, const char *needle)
{
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.n_threads = 1;
    o.max_seq_len = 64;
    o.kv_cache_tokens = 64;
    anvil_runtime *rt = (anvil_runtime *)1;
    assert_status_msg(anvil_runtime_load(path, &o, &rt), want, needle);
    assert_null(rt);
}

static void test_malformed_engines(void **st)
{
    (void)st;
    char bad[700];
    snprintf(bad, sizeof bad, "%s/bad.engine", anvil_test_tmpdir());
    static const struct {
        mutate_fn f;
        const char *poison;
        anvil_status st;
        const char *needle;
    } cases[] = {
        {no_scales, NULL, ANVIL_ERR_FORMAT, "is u4 without scales"},
        {scales_are_zeros, NULL, ANVIL_ERR_FORMAT, "its scales are not a companion stored after it"},
        {group_100, NULL, ANVIL_ERR_FORMAT, "group 100 does not divide its 384 columns"},
        {scales_shape, NULL, ANVIL_ERR_FORMAT, "are f32 [640, 2], not f32 [640, 3]"},
        {int8_with_zeros, NULL, ANVIL_ERR_FORMAT, "is i8 but has zero points (only int4 has them)"},
        {act_on_int4, NULL, ANVIL_ERR_FORMAT, "rounds its activations to fp8 (only fp8 weights do)"},
        {act_unknown, NULL, ANVIL_ERR_FORMAT, "\"act\" is not fp8_dynamic or fp8_static"},
        {zeros_missing, NULL, ANVIL_ERR_FORMAT, "its zeros tensor 'nowhere' is not in the table"},
        {NULL, "model.layers.0.self_attn.{q,k,v}_proj.weight.zeros", ANVIL_ERR_FORMAT, "a zero point above 15"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rewrite(engines[INT4], bad, cases[i].f, cases[i].poison);
        expect_refused(bad, cases[i].st, cases[i].needle);
    }
    /* an unchanged rewrite loads: the cases fail for their change alone */
    rewrite(engines[INT4], bad, NULL, NULL);
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.max_seq_len = 64;
    o.kv_cache_tokens = 64;
    anvil_runtime *rt = NULL;
    assert_int_equal(anvil_runtime_load(bad, &o, &rt), ANVIL_OK);
    anvil_runtime_free(rt);
}

static void test_bad_options(void **st)
{
    (void)st;
    char out[700];
    snprintf(out, sizeof out, "%s/never.engine", anvil_test_tmpdir());
    anvil_build_options o;
    anvil_build_options_default(&o);
    o.quantize = ANVIL_QUANTIZE_INT4_WO;
    o.quant_group = 100;
    assert_status_msg(anvil_build_engine(model_dir, out, &o), ANVIL_ERR_INVALID_ARG,
                      "the group size 100 does not divide the 384 columns of 'model.layers.0.self_attn.q_proj.weight'");
    o.quant_group = 256; /* divides 1024 (down_proj), not 384 */
    assert_status_msg(anvil_build_engine(model_dir, out, &o), ANVIL_ERR_INVALID_ARG, "256 does not divide the 384");
    o.quantize = ANVIL_QUANTIZE_INT8_WO;
    o.quant_group = 128;
    assert_status_msg(anvil_build_engine(model_dir, out, &o), ANVIL_ERR_INVALID_ARG, "int4-wo quantization only");
    o.quant_group = 0;
    o.quantize = (anvil_quantize)9;
    assert_status_msg(anvil_build_engine(model_dir, out, &o), ANVIL_ERR_INVALID_ARG, "unknown quantization 9");
    FILE *f = fopen(out, "rb");
    assert_null(f); /* nothing written */
    anvil_quantize q;
    assert_int_equal(anvil_quantize_parse("int4-wo", &q), 0);
    assert_int_equal(q, ANVIL_QUANTIZE_INT4_WO);
    assert_int_equal(anvil_quantize_parse("int4", &q), -1);
    /* refit from an engine of other kinds: refused, nothing written */
    assert_status_msg(anvil_refit_engine(engines[INT8], engines[INT4], out, NULL), ANVIL_ERR_INVALID_ARG,
                      "stores 86 tensors, the model 62");
    f = fopen(out, "rb");
    assert_null(f);
}

/* Every stored tensor of two engines: the same names, kinds, shapes,
 * "scales" objects and bytes. */
static void assert_same_tensors(const char *a, const char *b)
{
    anvil_engine_file *fa = NULL, *fb = NULL;
    assert_int_equal(anvil_engine_file_open(a, ANVIL_ST_MMAP, &fa), ANVIL_OK);
    assert_int_equal(anvil_engine_file_open(b, ANVIL_ST_MMAP, &fb), ANVIL_OK);
    assert_int_equal(anvil_engine_file_count(fa), anvil_engine_file_count(fb));
    for (int64_t i = 0; i < anvil_engine_file_count(fa); i++) {
        const anvil_engine_tensor *x = anvil_engine_file_tensor(fa, i), *y = anvil_engine_file_tensor(fb, i);
        assert_string_equal(x->name, y->name);
        assert_int_equal(x->kind, y->kind);
        assert_int_equal(x->bytes, y->bytes);
        assert_true(json_equal(json_object_get(x->entry, "scales"), json_object_get(y->entry, "scales")) ||
                    (json_object_get(x->entry, "scales") == NULL && json_object_get(y->entry, "scales") == NULL));
        if (memcmp(x->data, y->data, x->bytes) != 0)
            fail_msg("tensor '%s' differs between %s and %s", x->name, a, b);
    }
    anvil_engine_file_close(fa);
    anvil_engine_file_close(fb);
}

/* Refit of an RTN-quantized engine with new weights quantizes them again
 * through the engine's plan: on disk it gives the engine a build of the new
 * weights gives, byte for byte; live (read, and mapped: the scales move
 * with the weights) the logits of that engine, bit for bit. */
static void test_refit(void **st)
{
    (void)st;
    char ft[700], want[700], out[700];
    anvil_test_perturbed_model("tinycode", "tc-ft", 0.05, NULL, NULL, ft, sizeof ft);
    for (int q = FIRST_HEAVY; q < N_SCHEMES; q++) {
        anvil_build_options o;
        anvil_build_options_default(&o);
        o.quantize = schemes[q];
        o.n_threads = 2;
        snprintf(want, sizeof want, "%s/ft-%d.engine", anvil_test_tmpdir(), q);
        snprintf(out, sizeof out, "%s/refit-%d.engine", anvil_test_tmpdir(), q);
        assert_int_equal(anvil_build_engine(ft, want, &o), ANVIL_OK);
        if (anvil_refit_engine(engines[q], ft, out, NULL) != ANVIL_OK)
            fail_msg("refit %s: %s", engines[q], anvil_last_error());
        assert_same_tensors(want, out);
        if (q != INT4)
            continue;
        golden g;
        golden_load("tinycode", &g);
        anvil_runtime *ref = load(want);
        float *a = logits_of(ref, &g.cases[0], g.cases[0].n_ids);
        for (int mmap = 0; mmap < 2; mmap++) {
            anvil_runtime_options ro;
            anvil_runtime_options_default(&ro);
            ro.n_threads = 2;
            ro.max_num_tokens = 512;
            ro.max_batch_size = 1;
            ro.max_logit_rows = 512;
            ro.kv_cache_tokens = 1024;
            ro.max_seq_len = 1024;
            ro.use_mmap = mmap;
            anvil_runtime *rt = NULL;
            assert_int_equal(anvil_runtime_load(engines[q], &ro, &rt), ANVIL_OK);
            if (anvil_runtime_refit(rt, ft, NULL) != ANVIL_OK)
                fail_msg("live refit: %s", anvil_last_error());
            float *b = logits_of(rt, &g.cases[0], g.cases[0].n_ids);
            const size_t n = (size_t)g.cases[0].n_ids * (size_t)anvil_runtime_config(rt)->vocab_size;
            assert_memory_equal(a, b, n * sizeof *a);
            free(b);
            anvil_runtime_free(rt);
        }
        free(a);
        anvil_runtime_free(ref);
        golden_free(&g);
    }
}

/* anvil inspect --json --verify: the quantization of each weight and the summary. */
static void test_inspect(void **st)
{
    (void)st;
    const char *bin = getenv("ANVIL_BIN");
    if (bin == NULL)
        skip();
    char cmd[2000];
    snprintf(cmd, sizeof cmd, "%s inspect --json --verify %s", bin, engines[INT4]);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    json_error_t err;
    json_t *r = json_loadf(p, 0, &err);
    assert_int_equal(pclose(p), 0);
    assert_non_null(r);
    const json_t *q = json_object_get(r, "quantization");
    assert_string_equal(json_string_value(json_object_get(q, "scheme")), "int4-wo");
    assert_int_equal(json_integer_value(json_object_get(q, "group")), 128);
    assert_int_equal(json_integer_value(json_object_get(q, "quantized_tensors")), 24);
    assert_int_equal(json_integer_value(json_object_get(q, "companion_tensors")), 48);
    const json_t *w0 = json_object_get(json_array_get(json_object_get(r, "weights"), 0), "quantization");
    assert_string_equal(json_string_value(json_object_get(w0, "scheme")), "int4");
    assert_int_equal(json_integer_value(json_object_get(w0, "group")), 128);
    assert_true(json_is_true(json_object_get(r, "verified")));
    json_decref(r);
    char bad[700];
    snprintf(bad, sizeof bad, "%s/bad-zeros.engine", anvil_test_tmpdir());
    rewrite(engines[INT4], bad, NULL, "model.layers.0.self_attn.{q,k,v}_proj.weight.zeros");
    snprintf(cmd, sizeof cmd, "%s inspect --verify %s 2>&1", bin, bad);
    p = popen(cmd, "r");
    char buf[4096] = "";
    size_t n = fread(buf, 1, sizeof buf - 1, p);
    buf[n] = 0;
    assert_int_not_equal(pclose(p), 0);
    assert_non_null(strstr(buf, "a zero point above 15"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stored_bytes),    cmocka_unit_test(test_random_weights),
        cmocka_unit_test(test_fill_in_pieces),
        cmocka_unit_test(test_logits_close),    cmocka_unit_test(test_generate),
        cmocka_unit_test(test_malformed_engines), cmocka_unit_test(test_bad_options),
        cmocka_unit_test(test_refit),           cmocka_unit_test(test_inspect),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
