/*
 * The FP8 KV cache's scales from the checkpoint, from calibration and
 * through engines (docs/quantization.md, "FP8 KV cache"), on the CPU with
 * tests/data/quant/ct-fp8-kv: compressed-tensors FP8 weights with a
 * kv_cache_scheme and per-layer self_attn.k_scale / v_scale, whose k and v
 * reach ~1,300 (k_proj, v_proj times 256; q_proj, o_proj over 256), so an
 * fp8 cache with unit scales saturates at 448. Its reference
 * (tests/data/quant/README.md) is transformers' float32 logits with k and v
 * rounded to fp8(k / k_scale) * k_scale where attention uses them, and the
 * same with unit scales (logits_unit_kv).
 *  - the folder (kv_cache_dtype auto: fp8, as the config declares) and an
 *    engine built from it: the reference's logits within the fp8 bound,
 *    the engine's bit for bit the folder's; greedy decoding the reference's;
 *  - unit scales (the scales dropped): the unit-scale reference's logits,
 *    and an error against the scaled reference many times the scaled one;
 *  - the other names (k_proj.k_scale / v_proj.v_scale, the legacy
 *    kv_scale), scalar and bf16 tensors, an explicit f32 cache;
 *  - broken copies (written into a temporary folder): refused with
 *    ANVIL_ERR_FORMAT / ANVIL_ERR_UNSUPPORTED naming what is wrong;
 *  - calibration: anvil_build_engine with kv_cache_dtype fp8 and a
 *    calibration text on the folder without its scales: the engine's
 *    scales within 2x of the checkpoint's, its logits off the reference
 *    by no more than an fp8 cache's rounding does (NOISE_TOL), a third of
 *    unit scales' error at most.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "anvil/builder.h"
#include "anvil/dtype.h"
#include "anvil/generate.h"
#include "anvil/runtime.h"
#include "io/engine_file.h"
#include "io/quant_config.h"
#include "io/safetensors.h"
#include "testutil.h"

#define N_PROMPTS 3
#define N_GREEDY 16
/* max |logit - reference| / max |reference|: the fp8 weights, activations
 * and cache computed as the reference defines them, f32 sums in another
 * order; an element within an ulp of an fp8 rounding midpoint may round
 * the other way (test_quant_models.c's fixtures: 1e-4) */
#define FP8_TOL 1e-4
/* unit scales: k and v clipped at 448 in both, rounded alike elsewhere */
#define UNIT_TOL 1e-2
/* other scales than the reference's: each cached element rounds to another
 * of e4m3's 3-bit-mantissa values, which moves this random model's logits
 * by ~0.14 of their largest (an f32 cache against the reference: 0.138;
 * unit scales, k and v clipped: 0.71) */
#define NOISE_TOL 0.25

static const char *fixture_dir(void)
{
    static char buf[4096];
    const char *src = getenv("ANVIL_SOURCE_DIR");
    snprintf(buf, sizeof buf, "%s/tests/data/quant/ct-fp8-kv", src ? src : ".");
    return buf;
}

static anvil_status try_load(const char *dir, const char *kv_dtype, anvil_runtime **rt)
{
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.max_num_tokens = 256;
    o.max_logit_rows = 256;
    o.max_batch_size = 4;
    o.kv_block_size = 16;
    o.kv_cache_tokens = 512;
    o.kv_cache_dtype = kv_dtype;
    return anvil_runtime_load(dir, &o, rt);
}

static anvil_runtime *load(const char *dir, const char *kv_dtype)
{
    anvil_runtime *rt = NULL;
    if (try_load(dir, kv_dtype, &rt) != ANVIL_OK)
        fail_msg("load %s: %s", dir, anvil_last_error());
    return rt;
}

/* ------------------------------------------------------------ variants */

/* Sees each tensor of the copy (its buffer has room for 16 bytes at least);
 * returns 0 to leave it out. It may rename it (a name that lives on),
 * change its dtype, shape and bytes. */
typedef int (*edit_fn)(anvil_st_tensor *t, void *data);

/*
 * A copy of the fixture as the temporary folder `name`: the tokenizer
 * files linked, config.json with quantization_config.kv_cache_scheme set
 * to the JSON `scheme` (NULL: as it is), model.safetensors through edit
 * (NULL: as it is). Returns its path (static: one at a time).
 */
static const char *variant(const char *name, const char *scheme, edit_fn edit)
{
    static char out[4096];
    char src[PATH_MAX], from[PATH_MAX + 256], to[8192];
    if (realpath(fixture_dir(), src) == NULL)
        fail_msg("cannot open %s", fixture_dir());
    snprintf(out, sizeof out, "%s/%s", anvil_test_tmpdir(), name);
    if (mkdir(out, 0755) != 0 && errno != EEXIST)
        fail_msg("cannot make %s", out);
    DIR *d = opendir(src);
    assert_non_null(d);
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.' || strcmp(e->d_name, "config.json") == 0 ||
            strcmp(e->d_name, "model.safetensors") == 0)
            continue;
        snprintf(from, sizeof from, "%s/%s", src, e->d_name);
        snprintf(to, sizeof to, "%s/%s", out, e->d_name);
        unlink(to);
        if (symlink(from, to) != 0)
            fail_msg("cannot link %s", to);
    }
    closedir(d);

    json_error_t err;
    snprintf(from, sizeof from, "%s/config.json", src);
    json_t *cfg = json_load_file(from, 0, &err);
    assert_non_null(cfg);
    if (scheme != NULL) {
        json_t *s = json_loads(scheme, JSON_DECODE_ANY, &err);
        if (s == NULL)
            fail_msg("scheme %s: %s", scheme, err.text);
        json_object_set_new(json_object_get(cfg, "quantization_config"), "kv_cache_scheme", s);
    }
    snprintf(to, sizeof to, "%s/config.json", out);
    assert_int_equal(json_dump_file(cfg, to, JSON_INDENT(2)), 0);
    json_decref(cfg);

    snprintf(from, sizeof from, "%s/model.safetensors", src);
    snprintf(to, sizeof to, "%s/model.safetensors", out);
    anvil_safetensors *f = NULL;
    if (anvil_safetensors_open(from, &f) != ANVIL_OK)
        fail_msg("%s: %s", from, anvil_last_error());
    const int64_t n = anvil_safetensors_count(f);
    anvil_st_tensor *ts = calloc((size_t)n, sizeof *ts);
    void **bufs = calloc((size_t)n, sizeof *bufs);
    assert_true(ts && bufs);
    int64_t kept = 0;
    for (int64_t k = 0; k < n; k++) {
        const anvil_st_tensor *t = anvil_safetensors_at(f, k);
        anvil_st_tensor c = *t;
        void *b = calloc(1, t->nbytes > 16 ? t->nbytes : 16);
        assert_non_null(b);
        memcpy(b, t->data, t->nbytes);
        if (edit != NULL && !edit(&c, b)) {
            free(b);
            continue;
        }
        c.data = b;
        c.file = NULL;
        bufs[kept] = b;
        ts[kept++] = c;
    }
    unlink(to);
    if (anvil_safetensors_write(to, ts, kept) != ANVIL_OK)
        fail_msg("%s: %s", to, anvil_last_error());
    for (int64_t k = 0; k < kept; k++)
        free(bufs[k]);
    free(bufs);
    free(ts);
    anvil_safetensors_close(f);
    return out;
}

static int ends_with(const char *s, const char *suffix)
{
    const size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int is_scale(const anvil_st_tensor *t)
{
    return ends_with(t->name, "self_attn.k_scale") || ends_with(t->name, "self_attn.v_scale");
}

static void set_f32(anvil_st_tensor *t, void *data, float v)
{
    t->dtype = ANVIL_DTYPE_F32;
    t->n_dims = 1;
    t->shape[0] = 1;
    t->nbytes = 4;
    memcpy(data, &v, 4);
}

static float get_f32(const anvil_st_tensor *t, const void *data)
{
    assert_int_equal(t->dtype, ANVIL_DTYPE_F32);
    float v;
    memcpy(&v, data, 4);
    return v;
}

static int drop_scales(anvil_st_tensor *t, void *data)
{
    (void)data;
    return !is_scale(t);
}

static int drop_layer1(anvil_st_tensor *t, void *data)
{
    (void)data;
    return !(is_scale(t) && strstr(t->name, "layers.1."));
}

static int drop_v0(anvil_st_tensor *t, void *data)
{
    (void)data;
    return strcmp(t->name, "model.layers.0.self_attn.v_scale") != 0;
}

static int zero_k0(anvil_st_tensor *t, void *data)
{
    if (strcmp(t->name, "model.layers.0.self_attn.k_scale") == 0)
        set_f32(t, data, 0.0f);
    return 1;
}

static int nan_v1(anvil_st_tensor *t, void *data)
{
    if (strcmp(t->name, "model.layers.1.self_attn.v_scale") == 0)
        set_f32(t, data, NAN);
    return 1;
}

static int wide_k1(anvil_st_tensor *t, void *data)
{
    if (strcmp(t->name, "model.layers.1.self_attn.k_scale") == 0) {
        const float v = get_f32(t, data);
        memcpy((char *)data + 4, &v, 4);
        t->shape[0] = 2;
        t->nbytes = 8;
    }
    return 1;
}

static int int_k0(anvil_st_tensor *t, void *data)
{
    (void)data;
    if (strcmp(t->name, "model.layers.0.self_attn.k_scale") == 0)
        t->dtype = ANVIL_DTYPE_I32;
    return 1;
}

/* older ModelOpt's names: k_proj.k_scale, v_proj.v_scale; scalars */
static int modelopt_names(anvil_st_tensor *t, void *data)
{
    (void)data;
    static char names[4][64];
    for (int l = 0; l < 2; l++)
        for (int kv = 0; kv < 2; kv++) {
            char want[64];
            snprintf(want, sizeof want, "model.layers.%d.self_attn.%s_scale", l, kv ? "v" : "k");
            if (strcmp(t->name, want) == 0) {
                snprintf(names[2 * l + kv], sizeof names[0], "model.layers.%d.self_attn.%s_proj.%s_scale", l,
                         kv ? "v" : "k", kv ? "v" : "k");
                t->name = names[2 * l + kv];
                t->n_dims = 0;
            }
        }
    return 1;
}

/* the legacy single kv_scale (the larger of the two, in bf16): one scale for both */
static float legacy_scale[2];
static int legacy_kv(anvil_st_tensor *t, void *data)
{
    static char names[2][64];
    for (int l = 0; l < 2; l++) {
        char k[64], v[64];
        snprintf(k, sizeof k, "model.layers.%d.self_attn.k_scale", l);
        snprintf(v, sizeof v, "model.layers.%d.self_attn.v_scale", l);
        if (strcmp(t->name, v) == 0)
            return 0;
        if (strcmp(t->name, k) == 0) {
            const uint16_t h = anvil_f32_to_bf16(legacy_scale[l]);
            legacy_scale[l] = anvil_bf16_to_f32(h);
            snprintf(names[l], sizeof names[0], "model.layers.%d.self_attn.kv_scale", l);
            t->name = names[l];
            t->dtype = ANVIL_DTYPE_BF16;
            t->nbytes = 2;
            memcpy(data, &h, 2);
        }
    }
    return 1;
}

/* ------------------------------------------------------------ reference */

typedef struct prompt {
    int32_t n, ids[64];
    const float *logits, *logits_unit;
    int32_t greedy[N_GREEDY];
} prompt;

static void read_i64(const anvil_safetensors *ref, const char *name, int32_t *out, int32_t *n)
{
    const anvil_st_tensor *t = anvil_safetensors_find(ref, name);
    assert_non_null(t);
    assert_int_equal(t->dtype, ANVIL_DTYPE_I64);
    assert_true(t->shape[0] <= 64);
    *n = (int32_t)t->shape[0];
    for (int32_t j = 0; j < *n; j++) {
        int64_t v;
        memcpy(&v, (const char *)t->data + 8 * j, 8);
        out[j] = (int32_t)v;
    }
}

static void read_prompt(const anvil_safetensors *ref, int i, prompt *p)
{
    char name[64];
    int32_t ng;
    snprintf(name, sizeof name, "prompt%d.ids", i);
    read_i64(ref, name, p->ids, &p->n);
    snprintf(name, sizeof name, "prompt%d.greedy", i);
    read_i64(ref, name, p->greedy, &ng);
    assert_int_equal(ng, N_GREEDY);
    snprintf(name, sizeof name, "prompt%d.logits", i);
    const anvil_st_tensor *t = anvil_safetensors_find(ref, name);
    assert_non_null(t);
    assert_int_equal(t->shape[0], p->n);
    p->logits = t->data;
    snprintf(name, sizeof name, "prompt%d.logits_unit_kv", i);
    t = anvil_safetensors_find(ref, name);
    assert_non_null(t);
    p->logits_unit = t->data;
}

static anvil_safetensors *open_ref(void)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/reference.safetensors", fixture_dir());
    anvil_safetensors *ref = NULL;
    if (anvil_safetensors_open(path, &ref) != ANVIL_OK)
        fail_msg("%s", anvil_last_error());
    return ref;
}

/* One prompt's logits at every position into out [n, vocab]. */
static void forward(anvil_runtime *rt, const int32_t *ids, int32_t n, float *out)
{
    const int32_t bs = anvil_runtime_kv_block_size(rt), nb = (n + bs - 1) / bs;
    int32_t pos[64], rows[64], blocks[8], starts[2] = {0, n};
    assert_true(n <= 64 && nb <= 8);
    for (int32_t t = 0; t < n; t++)
        pos[t] = rows[t] = t;
    assert_int_equal(anvil_runtime_kv_alloc(rt, nb, blocks), ANVIL_OK);
    anvil_batch b = {.n_tokens = n, .token_ids = ids, .positions = pos, .n_seqs = 1, .seq_starts = starts,
                     .block_tables = blocks, .max_blocks_per_seq = nb, .n_logits = n, .logit_rows = rows};
    if (anvil_runtime_forward(rt, &b, out) != ANVIL_OK)
        fail_msg("forward: %s", anvil_last_error());
    anvil_runtime_kv_release(rt, nb, blocks);
}

static double max_rel(const float *got, const float *want, int64_t n)
{
    double maxw = 0, maxd = 0;
    for (int64_t j = 0; j < n; j++) {
        assert_true(isfinite(got[j]));
        maxw = fmax(maxw, fabs(want[j]));
        maxd = fmax(maxd, fabs((double)got[j] - want[j]));
    }
    return maxd / maxw;
}

/* The worst relative error of rt's logits over the prompts against the
 * scaled reference (unit: the unit-scale one); with all, every prompt's
 * logits into all [prompt][n * vocab] (for bit-for-bit comparisons). */
static double worst_vs(anvil_runtime *rt, const anvil_safetensors *ref, int unit, float **all)
{
    const int64_t vocab = anvil_runtime_config(rt)->vocab_size;
    double worst = 0;
    for (int i = 0; i < N_PROMPTS; i++) {
        prompt p;
        read_prompt(ref, i, &p);
        float *got = malloc((size_t)p.n * (size_t)vocab * sizeof *got);
        assert_non_null(got);
        forward(rt, p.ids, p.n, got);
        worst = fmax(worst, max_rel(got, unit ? p.logits_unit : p.logits, (int64_t)p.n * vocab));
        if (all)
            all[i] = got;
        else
            free(got);
    }
    return worst;
}

/* ------------------------------------------------------------ tests */

/* The folder and its engine with the checkpoint's scales. */
static void test_fixture_and_engine(void **state)
{
    (void)state;
    anvil_safetensors *ref = open_ref();
    anvil_runtime *rt = load(fixture_dir(), NULL); /* auto: the config declares an fp8 cache */
    assert_int_equal(anvil_runtime_kv_cache_dtype(rt), ANVIL_DTYPE_F8_E4M3);
    float *got[N_PROMPTS], *got_e[N_PROMPTS];
    const double rel = worst_vs(rt, ref, 0, got);
    print_message("ct-fp8-kv, the checkpoint's scales: logits vs reference %.2e (bound %.0e)\n", rel, FP8_TOL);
    assert_true(rel <= FP8_TOL);

    /* greedy decoding (decode steps reading the fp8 cache): the reference's tokens */
    for (int i = 0; i < N_PROMPTS; i++) {
        prompt p;
        read_prompt(ref, i, &p);
        anvil_generate_params gp = {.max_tokens = N_GREEDY};
        gp.sampling.temperature = 0.0f;
        gp.sampling.top_p = 1.0f;
        gp.ignore_eos = 1;
        int32_t out[N_GREEDY + 1], n_out = 0;
        if (anvil_generate(rt, p.ids, p.n, &gp, NULL, NULL, out, &n_out, NULL) != ANVIL_OK)
            fail_msg("generate: %s", anvil_last_error());
        assert_int_equal(n_out, N_GREEDY);
        for (int j = 0; j < N_GREEDY; j++)
            if (out[j] != p.greedy[j])
                fail_msg("prompt %d: greedy token %d is %d, the reference has %d", i, j, out[j], p.greedy[j]);
    }

    /* an engine: the scales in its manifest, fp8 under auto, the same logits bit for bit */
    char engine[4200];
    snprintf(engine, sizeof engine, "%s/ct-fp8-kv.anvil", anvil_test_tmpdir());
    if (anvil_build_engine(fixture_dir(), engine, NULL) != ANVIL_OK)
        fail_msg("build: %s", anvil_last_error());
    anvil_engine_file *ef = NULL;
    assert_int_equal(anvil_engine_file_open(engine, ANVIL_ST_READ, &ef), ANVIL_OK);
    const json_t *kv = json_object_get(anvil_engine_file_manifest(ef), "kv_cache");
    assert_non_null(kv);
    assert_string_equal(json_string_value(json_object_get(kv, "dtype")), "fp8");
    assert_string_equal(json_string_value(json_object_get(kv, "scales")), "checkpoint");
    assert_int_equal(json_array_size(json_object_get(kv, "k_scale")), 2);
    anvil_engine_file_close(ef);
    anvil_runtime *rte = load(engine, NULL);
    assert_int_equal(anvil_runtime_kv_cache_dtype(rte), ANVIL_DTYPE_F8_E4M3);
    worst_vs(rte, ref, 0, got_e);
    const int64_t vocab = anvil_runtime_config(rt)->vocab_size;
    for (int i = 0; i < N_PROMPTS; i++) {
        prompt p;
        read_prompt(ref, i, &p);
        assert_memory_equal(got[i], got_e[i], (size_t)p.n * (size_t)vocab * sizeof(float));
        free(got[i]);
        free(got_e[i]);
    }
    anvil_runtime_free(rte);

    /* an explicit f32 cache ignores the scales: no rounding, close to the reference still */
    anvil_runtime *r32 = load(fixture_dir(), "f32");
    assert_int_equal(anvil_runtime_kv_cache_dtype(r32), ANVIL_DTYPE_F32);
    const double rel32 = worst_vs(r32, ref, 0, NULL);
    print_message("f32 cache (scales unused): %.2e\n", rel32);
    /* this model's k and v are large and its attention sharp: the cache's
     * fp8 rounding alone moves the logits by ~0.14 of their largest */
    assert_true(rel32 > 100.0 * rel && rel32 < NOISE_TOL);
    anvil_runtime_free(r32);
    anvil_runtime_free(rt);
    anvil_safetensors_close(ref);
}

/* Without the scales an fp8 cache clips k and v at 448: the unit-scale
 * reference's logits, far from the scaled one's. */
static void test_unit_scales(void **state)
{
    (void)state;
    anvil_safetensors *ref = open_ref();
    const char *dir = variant("no-scales", "null", drop_scales);
    anvil_runtime *rt = load(dir, NULL);
    /* no scheme declared: auto is not fp8 */
    assert_int_not_equal(anvil_runtime_kv_cache_dtype(rt), ANVIL_DTYPE_F8_E4M3);
    anvil_runtime_free(rt);
    rt = load(dir, "fp8");
    const double unit = worst_vs(rt, ref, 1, NULL), vs_scaled = worst_vs(rt, ref, 0, NULL);
    anvil_runtime *rs = load(fixture_dir(), "fp8");
    const double scaled = worst_vs(rs, ref, 0, NULL);
    print_message("unit scales: vs the unit-scale reference %.2e (bound %.0e), vs the scaled reference %.2e "
                  "(the checkpoint's scales: %.2e)\n",
                  unit, UNIT_TOL, vs_scaled, scaled);
    assert_true(unit <= UNIT_TOL);
    assert_true(vs_scaled > 0.02 && vs_scaled > 20.0 * scaled);
    anvil_runtime_free(rs);
    anvil_runtime_free(rt);
    anvil_safetensors_close(ref);
}

/* The other names and dtypes give the same scales (ModelOpt's names: the
 * same logits bit for bit; the legacy single bf16 kv_scale: its own). */
static void test_other_names(void **state)
{
    (void)state;
    anvil_safetensors *ref = open_ref();
    anvil_runtime *rt = load(fixture_dir(), "fp8");
    float *a[N_PROMPTS], *b[N_PROMPTS];
    worst_vs(rt, ref, 0, a);
    anvil_runtime *rm = load(variant("modelopt-names", NULL, modelopt_names), "fp8");
    worst_vs(rm, ref, 0, b);
    const int64_t vocab = anvil_runtime_config(rt)->vocab_size;
    for (int i = 0; i < N_PROMPTS; i++) {
        prompt p;
        read_prompt(ref, i, &p);
        assert_memory_equal(a[i], b[i], (size_t)p.n * (size_t)vocab * sizeof(float));
        free(a[i]);
        free(b[i]);
    }
    anvil_runtime_free(rm);
    anvil_runtime_free(rt);

    /* one kv_scale a layer: max(k_scale, v_scale), so nothing clips */
    anvil_safetensors *ck = NULL;
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", fixture_dir());
    assert_int_equal(anvil_safetensors_open(path, &ck), ANVIL_OK);
    for (int l = 0; l < 2; l++) {
        char k[64], v[64];
        snprintf(k, sizeof k, "model.layers.%d.self_attn.k_scale", l);
        snprintf(v, sizeof v, "model.layers.%d.self_attn.v_scale", l);
        const anvil_st_tensor *tk = anvil_safetensors_find(ck, k), *tv = anvil_safetensors_find(ck, v);
        assert_true(tk && tv);
        legacy_scale[l] = fmaxf(get_f32(tk, tk->data), get_f32(tv, tv->data)) * 1.01f;
    }
    anvil_safetensors_close(ck);
    anvil_runtime *rl = load(variant("legacy-kv-scale", NULL, legacy_kv), NULL);
    assert_int_equal(anvil_runtime_kv_cache_dtype(rl), ANVIL_DTYPE_F8_E4M3);
    const double rel = worst_vs(rl, ref, 0, NULL);
    print_message("legacy kv_scale (bf16): logits vs reference %.2e\n", rel);
    /* other scales round other elements the other way: off the reference
     * by about as much as the rounding itself, nothing clipped */
    assert_true(rel > 0.0 && rel < NOISE_TOL);
    anvil_runtime_free(rl);
    anvil_safetensors_close(ref);
}

/* Broken copies: a clear error naming what is wrong, nothing loaded. */
static void test_refusals(void **state)
{
    (void)state;
    static const struct {
        const char *name, *scheme;
        edit_fn edit;
        anvil_status want;
        const char *needle;
    } cases[] = {
        {"zero-k", NULL, zero_k0, ANVIL_ERR_FORMAT, "model.layers.0.self_attn.k_scale' is 0"},
        {"nan-v", NULL, nan_v1, ANVIL_ERR_FORMAT, "model.layers.1.self_attn.v_scale' is nan"},
        {"wide-k", NULL, wide_k1, ANVIL_ERR_FORMAT, "model.layers.1.self_attn.k_scale' has 1 dimensions and 2"},
        {"int-k", NULL, int_k0, ANVIL_ERR_FORMAT, "expected f32, bf16 or f16"},
        {"no-v0", NULL, drop_v0, ANVIL_ERR_FORMAT, "no v scale beside it"},
        {"layer1-none", NULL, drop_layer1, ANVIL_ERR_FORMAT, "layer 0 has KV cache scales"},
        {"declared-none", NULL, drop_scales, ANVIL_ERR_FORMAT, "declares an fp8 KV cache"},
        {"dynamic", "{\"num_bits\": 8, \"type\": \"float\", \"strategy\": \"tensor\", \"dynamic\": true}", NULL,
         ANVIL_ERR_UNSUPPORTED, "kv_cache_scheme.dynamic true"},
        {"int8-kv", "{\"num_bits\": 8, \"type\": \"int\", \"strategy\": \"tensor\"}", NULL, ANVIL_ERR_UNSUPPORTED,
         "type int with num_bits 8"},
        {"per-head", "{\"num_bits\": 8, \"type\": \"float\", \"strategy\": \"attn_head\"}", NULL,
         ANVIL_ERR_UNSUPPORTED, "strategy \"attn_head\""},
        {"channel", "{\"num_bits\": 8, \"type\": \"float\", \"strategy\": \"channel\"}", NULL, ANVIL_ERR_UNSUPPORTED,
         "strategy \"channel\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *dir = variant(cases[i].name, cases[i].scheme, cases[i].edit);
        anvil_runtime *rt = (anvil_runtime *)1;
        const anvil_status st = try_load(dir, "fp8", &rt);
        print_message("%-14s %s\n", cases[i].name, anvil_last_error());
        assert_status_msg(st, cases[i].want, cases[i].needle);
        assert_null(rt);
        char engine[4200];
        snprintf(engine, sizeof engine, "%s/%s.anvil", anvil_test_tmpdir(), cases[i].name);
        assert_status_msg(anvil_build_engine(dir, engine, NULL), cases[i].want, cases[i].needle);
        assert_int_equal(access(engine, F_OK), -1); /* no engine left behind */
    }
}

/* ModelOpt's kv_cache_quant_algo. */
static void test_modelopt_config(void **state)
{
    (void)state;
    anvil_quant_config qc;
    assert_int_equal(anvil_quant_config_parse(NULL,
                                              "{\"producer\": {\"name\": \"modelopt\"}, \"quantization\": "
                                              "{\"quant_algo\": \"FP8\", \"kv_cache_quant_algo\": \"FP8\"}}",
                                              "m", &qc),
                     ANVIL_OK);
    assert_int_equal(qc.kv_fp8, 1);
    anvil_quant_config_free(&qc);
    assert_int_equal(anvil_quant_config_parse(NULL,
                                              "{\"quantization\": {\"quant_algo\": \"FP8\", "
                                              "\"kv_cache_quant_algo\": null}}",
                                              "m", &qc),
                     ANVIL_OK);
    assert_int_equal(qc.kv_fp8, 0);
    anvil_quant_config_free(&qc);
    assert_status_msg(anvil_quant_config_parse("{\"quantization_config\": {\"quant_method\": \"modelopt\", "
                                               "\"quant_algo\": \"FP8\", \"kv_cache_quant_algo\": \"NVFP4\"}}",
                                               NULL, "m", &qc),
                      ANVIL_ERR_UNSUPPORTED, "kv_cache_quant_algo \"NVFP4\"");
    assert_status_msg(anvil_quant_config_parse(NULL,
                                               "{\"quantization\": {\"quant_algo\": \"FP8\", "
                                               "\"kv_cache_quant_algo\": 8}}",
                                               "m", &qc),
                      ANVIL_ERR_FORMAT, "kv_cache_quant_algo must be a string");
}

/* Calibrated scales: the folder without its scales, built with an fp8 cache
 * and a calibration text (the prompts' stories): the engine's scales near
 * the checkpoint's (which are max |k|, |v| / 448 over the prompts), its
 * logits near the reference and far better than unit scales. */
static void test_calibrated(void **state)
{
    (void)state;
    anvil_safetensors *ref = open_ref();
    const char *dir = variant("calib-src", "null", drop_scales);
    char text[4200], engine[4200];
    snprintf(text, sizeof text, "%s/calib.txt", anvil_test_tmpdir());
    const char *story = "Once upon a time, there was a little dog. The little dog ran to the park and played with "
                        "a ball. Lily wanted to play too. She ran to the park and the dog was happy. ";
    char buf[4096] = "";
    for (int i = 0; i < 8; i++)
        strcat(buf, story);
    anvil_test_write_file(text, buf, strlen(buf));
    snprintf(engine, sizeof engine, "%s/calibrated.anvil", anvil_test_tmpdir());
    anvil_build_options bo;
    anvil_build_options_default(&bo);
    bo.kv_cache_dtype = "fp8";
    bo.calib_file = text;
    bo.calib_seq_len = 32;
    if (anvil_build_engine(dir, engine, &bo) != ANVIL_OK)
        fail_msg("build: %s", anvil_last_error());

    anvil_engine_file *ef = NULL;
    assert_int_equal(anvil_engine_file_open(engine, ANVIL_ST_READ, &ef), ANVIL_OK);
    const json_t *kv = json_object_get(anvil_engine_file_manifest(ef), "kv_cache");
    assert_non_null(kv);
    assert_string_equal(json_string_value(json_object_get(kv, "dtype")), "fp8");
    assert_string_equal(json_string_value(json_object_get(kv, "scales")), "calibration");
    assert_non_null(json_object_get(kv, "calib"));
    anvil_safetensors *ck = NULL;
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", fixture_dir());
    assert_int_equal(anvil_safetensors_open(path, &ck), ANVIL_OK);
    for (int l = 0; l < 2; l++)
        for (int v = 0; v < 2; v++) {
            char name[64];
            snprintf(name, sizeof name, "model.layers.%d.self_attn.%s_scale", l, v ? "v" : "k");
            const anvil_st_tensor *t = anvil_safetensors_find(ck, name);
            assert_non_null(t);
            const double want = get_f32(t, t->data);
            const double got = json_number_value(json_array_get(json_object_get(kv, v ? "v_scale" : "k_scale"), l));
            print_message("layer %d %s_scale: calibrated %.4f, the checkpoint's %.4f\n", l, v ? "v" : "k", got, want);
            assert_true(got > 0.5 * want && got < 2.0 * want);
        }
    anvil_safetensors_close(ck);
    anvil_engine_file_close(ef);

    anvil_runtime *rt = load(engine, NULL); /* auto: fp8, as built */
    assert_int_equal(anvil_runtime_kv_cache_dtype(rt), ANVIL_DTYPE_F8_E4M3);
    const double rel = worst_vs(rt, ref, 0, NULL);
    anvil_runtime *ru = load(dir, "fp8");
    const double unit = worst_vs(ru, ref, 0, NULL);
    print_message("calibrated scales: logits vs reference %.2e (unit scales %.2e)\n", rel, unit);
    assert_true(rel < NOISE_TOL && rel * 3.0 < unit);
    anvil_runtime_free(ru);
    anvil_runtime_free(rt);

    /* a build-time cache other than auto/fp8 is refused; --calib needs a use */
    bo.kv_cache_dtype = "bf16";
    assert_status_msg(anvil_build_engine(dir, engine, &bo), ANVIL_ERR_INVALID_ARG, "a build takes auto or fp8");
    bo.kv_cache_dtype = NULL;
    assert_status_msg(anvil_build_engine(dir, engine, &bo), ANVIL_ERR_INVALID_ARG, "--kv-cache-dtype fp8");
    anvil_safetensors_close(ref);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture_and_engine), cmocka_unit_test(test_unit_scales),
        cmocka_unit_test(test_other_names),        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_modelopt_config),    cmocka_unit_test(test_calibrated),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
