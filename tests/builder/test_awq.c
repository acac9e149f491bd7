/*
 * AWQ at build time (anvil build --quantize int4-wo --calib FILE,
 * docs/quantization.md "AWQ"):
 *  - the scale search on a small random model (n_heads == n_kv_heads, so
 *    that every group folds) fed synthetic activations whose channel 7 is
 *    100x larger than the others: every folded group picks alpha > 0, gives
 *    channel 7 the largest scale, and its error, recomputed here from the
 *    checkpoint's rows, the scales and the RTN quantizer, is below RTN's;
 *  - the fold is exact: an f32 build with random scales folded into the
 *    norms, v_proj's and up_proj's rows (and multiplied into the columns;
 *    the small model, and tiny-gemma2 for (1 + w) norms and GELU),
 *    unquantized, gives the plain build's logits up to f32 rounding (the
 *    scales, up to 4x either way, change every folded tensor);
 *  - determinism: two AWQ builds of the small model (1 and 2 threads) have
 *    the same bytes in every tensor;
 *  - end to end: int4-wo and int8-wo AWQ engines of tinycode, calibrated on
 *    Python source (this repository's scripts), record their calibration,
 *    load and stay close to the bf16 engine on the golden prompts;
 *  - --quantize-lm-head: tinycode's tied embedding stays bf16 and the LM
 *    head gets an int4 copy of its own (build.untied_lm_head), which loads,
 *    runs and refits from the folder to the same bytes; an untied model's
 *    lm_head.weight is quantized itself;
 *  - bad input: a missing, empty or non-UTF-8 calibration file, --calib with fp8 or
 *    without quantization, with random weights, a text shorter than one
 *    window: clear errors, no engine left.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "anvil/builder.h"
#include "anvil/runtime.h"
#include "builder/awq.h"
#include "builder/build_plan.h"
#include "builder/quantize.h"
#include "golden.h"
#include "io/engine_file.h"
#include "io/safetensors.h"
#include "testutil.h"

/* ------------------------------------------------------------ a small random model */

/* hidden 256 (two int4 groups), n_heads == n_kv_heads: q/k/v, o, gate/up
 * and down all fold; tinycode's vocabulary, whose tokenizer it borrows so
 * that it calibrates (a quick stand-in for tinycode where only bytes count) */
static const char *small_config =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": 256,"
    " \"intermediate_size\": 512, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
    " \"num_key_value_heads\": 4, \"vocab_size\": 8192, \"max_position_embeddings\": 256,"
    " \"rms_norm_eps\": 1e-5, \"rope_theta\": 10000.0, \"tie_word_embeddings\": false,"
    " \"torch_dtype\": \"float32\"}";

static char small_dir[600], calib_file[600], tc_dir[600];

static int setup(void **st)
{
    (void)st;
    snprintf(small_dir, sizeof small_dir, "%s/small", anvil_test_tmpdir());
    snprintf(tc_dir, sizeof tc_dir, "%s/models/tinycode", anvil_test_shared_dir());
    char cmd[2200];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", small_dir);
    if (system(cmd) != 0 || anvil_write_random_model(small_dir, small_config, 5) != ANVIL_OK) {
        fprintf(stderr, "small model: %s\n", anvil_last_error());
        return -1;
    }
    snprintf(cmd, sizeof cmd, "ln -s '%s/tokenizer.json' '%s/tokenizer_config.json' '%s/'", tc_dir, tc_dir, small_dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "small model: %s\n", anvil_last_error());
        return -1;
    }
    /* calibration text: Python source that is not the accuracy corpus */
    const char *src = getenv("ANVIL_SOURCE_DIR");
    snprintf(calib_file, sizeof calib_file, "%s/calib.txt", anvil_test_tmpdir());
    snprintf(cmd, sizeof cmd, "cat '%s/scripts/quant_corpus.py' '%s/scripts/make_quant_fixtures.py' > '%s'",
             src ? src : "..", src ? src : "..", calib_file);
    return system(cmd) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------ the search */

/* x [rows, k] with channel `big` 100x larger; deterministic */
static void synthetic_rows(float *x, int64_t rows, int64_t k, int64_t big, uint64_t seed)
{
    uint64_t r = seed;
    for (int64_t i = 0; i < rows * k; i++)
        x[i] = anvil_test_randf(&r) * (i % k == big ? 100.0f : 1.0f);
}

/* || x (Q(W s) / s - W)^T ||^2 computed plainly (s NULL: 1). */
static double group_err(const float *x, int64_t rows, const float *w, int64_t n, int64_t k, const float *s)
{
    float *row = malloc((size_t)k * sizeof *row), *d = malloc((size_t)(n * k) * sizeof *d);
    uint8_t *q = malloc((size_t)k);
    float scales[16];
    uint8_t zeros[16];
    for (int64_t r = 0; r < n; r++) {
        for (int64_t c = 0; c < k; c++)
            row[c] = w[r * k + c] * (s ? s[c] : 1.0f);
        anvil_rtn_row(ANVIL_DTYPE_U4, 128, row, k, q, scales, zeros);
        for (int64_t c = 0; c < k; c++) {
            const int v = c % 2 ? q[c / 2] >> 4 : q[c / 2] & 15;
            d[r * k + c] = (float)(v - zeros[c / 128]) * scales[c / 128] / (s ? s[c] : 1.0f) - w[r * k + c];
        }
    }
    double e = 0;
    for (int64_t t = 0; t < rows; t++)
        for (int64_t r = 0; r < n; r++) {
            double y = 0;
            for (int64_t c = 0; c < k; c++)
                y += (double)x[t * k + c] * d[r * k + c];
            e += y * y;
        }
    free(row);
    free(d);
    free(q);
    return e;
}

static void test_search_protects_outlier(void **st)
{
    (void)st;
    anvil_model_config cfg;
    char path[700];
    snprintf(path, sizeof path, "%s", small_dir);
    assert_int_equal(anvil_model_config_load(path, &cfg), ANVIL_OK);
    anvil_network *net = NULL;
    anvil_checkpoint *ck = NULL;
    anvil_build_plan *plan = NULL;
    anvil_awq *a = NULL;
    assert_int_equal(anvil_model_build_network(&cfg, &net), ANVIL_OK);
    assert_int_equal(anvil_checkpoint_open_ex(path, ANVIL_ST_READ, &ck), ANVIL_OK);
    const anvil_fuse_caps caps = anvil_fuse_caps_all();
    const anvil_plan_options po = {.weight_dtype = ANVIL_DTYPE_COUNT, .caps = &caps, .quantize = ANVIL_QUANTIZE_INT4_WO};
    assert_int_equal(anvil_build_plan_make(net, ck, &po, &plan), ANVIL_OK);
    enum { ROWS = 64, BIG = 7 };
    assert_int_equal(anvil_awq_create(net, plan, ANVIL_DTYPE_U4, 128, ROWS, ROWS, &a), ANVIL_OK);
    assert_int_equal(a->n_groups, 8); /* 2 layers x (qkv, o, gate/up, down) */
    float *x = malloc((size_t)ROWS * 512 * sizeof *x);
    for (int32_t j = 0; j < a->n_groups; j++) {
        assert_int_not_equal(a->groups[j].fold, ANVIL_AWQ_FOLD_NONE);
        synthetic_rows(x, ROWS, a->groups[j].k, BIG, 11 + (uint64_t)j);
        assert_int_equal(anvil_awq_observe(a, a->groups[j].input, x, ROWS, a->groups[j].k, 0), ANVIL_OK);
    }
    assert_int_equal(anvil_awq_search(a, plan, net, ck, 0, 2), ANVIL_OK);
    for (int32_t j = 0; j < a->n_groups; j++) {
        const anvil_awq_group *g = &a->groups[j];
        assert_true(g->alpha > 0.0f);
        for (int64_t c = 0; c < g->k; c++)
            assert_true(c == BIG || g->scales[c] < g->scales[BIG]);
        /* the errors again, from the checkpoint's rows: the group's first linear */
        const anvil_net_weight *w = anvil_network_weight(net, g->weights[0]);
        const int64_t n = w->shape[0], k = w->shape[1];
        float *wv = malloc((size_t)(n * k) * sizeof *wv);
        const anvil_st_tensor *t = anvil_checkpoint_find(ck, w->sources[0]);
        assert_non_null(t);
        assert_int_equal(t->dtype, ANVIL_DTYPE_F32);
        assert_int_equal(anvil_st_read(t, 0, wv, (size_t)(n * k) * 4), ANVIL_OK);
        synthetic_rows(x, ROWS, k, BIG, 11 + (uint64_t)j);
        const double rtn = group_err(x, ROWS, wv, n, k, NULL), awq = group_err(x, ROWS, wv, n, k, g->scales);
        printf("group %d (%s): alpha %.2f, error %.4g (RTN %.4g), the search's %.4g of %.4g\n", j, w->name,
               (double)g->alpha, awq, rtn, g->err_awq, g->err_rtn);
        assert_true(awq < 0.8 * rtn);
        free(wv);
    }
    free(x);
    anvil_awq_free(a);
    anvil_build_plan_free(plan);
    anvil_checkpoint_close(ck);
    anvil_network_free(net);
}

/* ------------------------------------------------------------ the fold */

typedef struct fold_user {
    uint64_t seed;
    int n_folded, n_offset; /* groups folded; into a norm with a weight offset (Gemma's 1 + w) */
} fold_user;

/* Random scales in [1/4, 4] for every folded group. */
static void random_scales(void *user, anvil_awq *a, const anvil_network *net)
{
    (void)net;
    fold_user *u = user;
    for (int32_t j = 0; j < a->n_groups; j++) {
        if (a->groups[j].fold == ANVIL_AWQ_FOLD_NONE)
            continue;
        u->n_folded++;
        u->n_offset += a->groups[j].fold == ANVIL_AWQ_FOLD_NORM && a->groups[j].fold_offset != 0.0f;
        for (int64_t c = 0; c < a->groups[j].k; c++)
            a->groups[j].scales[c] = exp2f(2.0f * anvil_test_randf(&u->seed));
    }
}

static anvil_runtime *load(const char *path)
{
    anvil_runtime_options o;
    anvil_runtime_options_default(&o);
    o.n_threads = 2;
    o.max_num_tokens = 128;
    o.max_batch_size = 1;
    o.max_logit_rows = 128;
    o.kv_cache_tokens = 256;
    o.max_seq_len = 256;
    anvil_runtime *rt = NULL;
    if (anvil_runtime_load(path, &o, &rt) != ANVIL_OK)
        fail_msg("load %s: %s", path, anvil_last_error());
    return rt;
}

static float *logits_of(anvil_runtime *rt, const int32_t *ids, int32_t n)
{
    const int64_t V = anvil_runtime_config(rt)->vocab_size;
    int32_t *pos = malloc((size_t)n * sizeof *pos), blocks[16], starts[2] = {0, n};
    const int32_t nb = (n + 31) / 32;
    assert_int_equal(anvil_runtime_kv_alloc(rt, nb, blocks), ANVIL_OK);
    for (int32_t i = 0; i < n; i++)
        pos[i] = i;
    float *out = malloc((size_t)n * (size_t)V * sizeof *out);
    anvil_batch b = {.n_tokens = n, .token_ids = ids, .positions = pos, .n_seqs = 1, .seq_starts = starts,
                     .block_tables = blocks, .max_blocks_per_seq = nb, .n_logits = n, .logit_rows = pos};
    if (anvil_runtime_forward(rt, &b, out) != ANVIL_OK)
        fail_msg("forward: %s", anvil_last_error());
    anvil_runtime_kv_release(rt, nb, blocks);
    free(pos);
    return out;
}

/* The largest |a - b| over n values, relative to the largest |a|. */
static double rel_diff(const float *a, const float *b, int64_t n)
{
    double amax = 0, err = 0;
    for (int64_t i = 0; i < n; i++) {
        amax = fmax(amax, fabs(a[i]));
        err = fmax(err, fabs((double)a[i] - b[i]));
    }
    return err / amax;
}

/* An f32 build of model with random scales folded against its plain f32
 * build: the same logits up to rounding; u says what was folded. */
static void fold_exact(const char *model, const char *name, fold_user *u)
{
    char plain[700], folded[700];
    snprintf(plain, sizeof plain, "%s/%s-f32.engine", anvil_test_tmpdir(), name);
    snprintf(folded, sizeof folded, "%s/%s-folded.engine", anvil_test_tmpdir(), name);
    anvil_build_options o;
    anvil_build_options_default(&o);
    o.weight_dtype = ANVIL_DTYPE_F32;
    o.n_threads = 2;
    assert_int_equal(anvil_build_engine(model, plain, &o), ANVIL_OK);
    assert_int_equal(anvil_build_engine_awq(model, folded, &o, random_scales, u), ANVIL_OK);
    /* the weights did change: a norm weight and v_proj differ */
    anvil_engine_file *fa = NULL, *fb = NULL;
    assert_int_equal(anvil_engine_file_open(plain, ANVIL_ST_READ, &fa), ANVIL_OK);
    assert_int_equal(anvil_engine_file_open(folded, ANVIL_ST_READ, &fb), ANVIL_OK);
    int64_t differ = 0;
    for (int64_t i = 0; i < anvil_engine_file_count(fa); i++)
        differ += anvil_engine_file_tensor(fa, i)->xxh64 != anvil_engine_file_tensor(fb, i)->xxh64;
    printf("%s: %lld of %lld tensors changed by the fold\n", name, (long long)differ,
           (long long)anvil_engine_file_count(fa));
    assert_true(differ >= u->n_folded); /* at least each folded group's linears */
    anvil_engine_file_close(fa);
    anvil_engine_file_close(fb);

    int32_t ids[64];
    uint64_t r = 9;
    for (int i = 0; i < 64; i++)
        ids[i] = (int32_t)(anvil_test_rand(&r) % 512);
    anvil_runtime *ra = load(plain), *rb = load(folded);
    const int64_t V = anvil_runtime_config(ra)->vocab_size;
    float *la = logits_of(ra, ids, 64), *lb = logits_of(rb, ids, 64);
    const double d = rel_diff(la, lb, 64 * V);
    printf("%s: folded vs plain logits (f32): largest difference %.3g of the largest logit\n", name, d);
    assert_true(d < 1e-4);
    free(la);
    free(lb);
    anvil_runtime_free(ra);
    anvil_runtime_free(rb);
}

static void test_fold_exact(void **st)
{
    (void)st;
    fold_user u = {.seed = 3};
    fold_exact(small_dir, "small", &u);
    assert_int_equal(u.n_folded, 8); /* norms (q/k/v, gate/up), v_proj rows (o), up_proj rows (down) */
    assert_int_equal(u.n_offset, 0);
    /* Gemma 2: (1 + w) norms, gelu_tanh(gate) * up; GQA, so o_proj is not folded */
    char gemma[700];
    snprintf(gemma, sizeof gemma, "%s/models/tiny-gemma2", anvil_test_shared_dir());
    fold_user ug = {.seed = 4};
    fold_exact(gemma, "gemma2", &ug);
    assert_int_equal(ug.n_folded, 3 * 3); /* 3 layers: q/k/v, gate/up, down */
    assert_int_equal(ug.n_offset, 3 * 2);
}

/* ------------------------------------------------------------ tinycode end to end */

static void awq_options(anvil_build_options *o, anvil_quantize q, int threads)
{
    anvil_build_options_default(o);
    o->quantize = q;
    o->n_threads = threads;
    o->calib_file = calib_file;
    o->calib_seq_len = 128;
    o->calib_tokens = ANVIL_TEST_SANITIZED ? 256 : 512;
    o->calib_rows = 64;
}

static void test_deterministic(void **st)
{
    (void)st;
    char a[700], b[700];
    snprintf(a, sizeof a, "%s/small-awq-1.engine", anvil_test_tmpdir());
    snprintf(b, sizeof b, "%s/small-awq-2.engine", anvil_test_tmpdir());
    anvil_build_options o;
    awq_options(&o, ANVIL_QUANTIZE_INT4_WO, 1);
    assert_int_equal(anvil_build_engine(small_dir, a, &o), ANVIL_OK);
    awq_options(&o, ANVIL_QUANTIZE_INT4_WO, 2);
    assert_int_equal(anvil_build_engine(small_dir, b, &o), ANVIL_OK);
    anvil_engine_file *fa = NULL, *fb = NULL;
    assert_int_equal(anvil_engine_file_open(a, ANVIL_ST_READ, &fa), ANVIL_OK);
    assert_int_equal(anvil_engine_file_open(b, ANVIL_ST_READ, &fb), ANVIL_OK);
    assert_int_equal(anvil_engine_file_count(fa), anvil_engine_file_count(fb));
    for (int64_t i = 0; i < anvil_engine_file_count(fa); i++) {
        const anvil_engine_tensor *ta = anvil_engine_file_tensor(fa, i), *tb = anvil_engine_file_tensor(fb, i);
        assert_string_equal(ta->name, tb->name);
        assert_int_equal(ta->bytes, tb->bytes);
        if (ta->xxh64 != tb->xxh64)
            fail_msg("'%s' differs between two AWQ builds", ta->name);
    }
    anvil_engine_file_close(fa);
    anvil_engine_file_close(fb);
}

static int64_t argmax(const float *x, int64_t n)
{
    int64_t b = 0;
    for (int64_t i = 1; i < n; i++)
        b = x[i] > x[b] ? i : b;
    return b;
}

static void test_end_to_end(void **st)
{
    (void)st;
    golden g;
    golden_load("tinycode", &g);
    char bf16[700];
    snprintf(bf16, sizeof bf16, "%s/tc-bf16.engine", anvil_test_tmpdir());
    anvil_build_options o;
    anvil_build_options_default(&o);
    o.n_threads = 2;
    assert_int_equal(anvil_build_engine(tc_dir, bf16, &o), ANVIL_OK);
    anvil_runtime *base = load(bf16);
    const int64_t V = anvil_runtime_config(base)->vocab_size;
    static const anvil_quantize qs[2] = {ANVIL_QUANTIZE_INT4_WO, ANVIL_QUANTIZE_INT8_WO};
    /* int4 with 256-512 calibration tokens: 0.76-0.81 (RTN 0.87; a broken fold gives noise) */
    static const double min_agree[2] = {0.7, 0.94}, max_err[2] = {0.4, 0.06};
    for (int qi = 0; qi < (ANVIL_TEST_SANITIZED ? 1 : 2); qi++) {
        char path[700];
        snprintf(path, sizeof path, "%s/tc-awq-%s.engine", anvil_test_tmpdir(), anvil_quantize_name(qs[qi]));
        awq_options(&o, qs[qi], 2);
        assert_int_equal(anvil_build_engine(tc_dir, path, &o), ANVIL_OK);
        anvil_engine_file *f = NULL;
        assert_int_equal(anvil_engine_file_open(path, ANVIL_ST_READ, &f), ANVIL_OK);
        const json_t *q = json_object_get(json_object_get(anvil_engine_file_manifest(f), "build"), "quantization");
        assert_string_equal(json_string_value(json_object_get(q, "method")), "awq");
        assert_string_equal(json_string_value(json_object_get(q, "scheme")), anvil_quantize_name(qs[qi]));
        const json_t *c = json_object_get(q, "calib");
        assert_string_equal(json_string_value(json_object_get(c, "file")), "calib.txt");
        assert_int_equal(json_integer_value(json_object_get(c, "tokens")), o.calib_tokens);
        assert_int_equal(json_integer_value(json_object_get(c, "seq_len")), 128);
        assert_int_equal(strlen(json_string_value(json_object_get(c, "xxh64"))), 16);
        assert_true(json_integer_value(json_object_get(c, "text_tokens")) >= o.calib_tokens);
        anvil_engine_file_close(f);
        anvil_runtime *rt = load(path);
        int64_t agree = 0, rows = 0;
        double worst = 0;
        for (int ci = 0; ci < g.n_cases; ci++) {
            const int32_t n = g.cases[ci].n_ids < 128 ? g.cases[ci].n_ids : 128;
            float *a = logits_of(base, g.cases[ci].ids, n), *b = logits_of(rt, g.cases[ci].ids, n);
            for (int32_t r = 0; r < n; r++) {
                const float *x = a + (int64_t)r * V, *y = b + (int64_t)r * V;
                for (int64_t v = 0; v < V; v++)
                    assert_true(isfinite(y[v]));
                worst = fmax(worst, rel_diff(x, y, V));
                agree += argmax(x, V) == argmax(y, V);
                rows++;
            }
            free(a);
            free(b);
        }
        const double share = (double)agree / (double)rows;
        printf("%s AWQ: top-1 agreement with bf16 %.3f over %lld positions, largest relative logit error %.4f\n",
               anvil_quantize_name(qs[qi]), share, (long long)rows, worst);
        assert_true(share >= min_agree[qi]);
        assert_true(worst <= max_err[qi] && worst > 0);
        anvil_runtime_free(rt);
    }
    anvil_runtime_free(base);
    golden_free(&g);
}

/* ------------------------------------------------------------ --quantize-lm-head */

/* The kind of tensor `name` in engine `path` ("" when absent). */
static const char *kind_of(const char *path, const char *name, char *buf, size_t cap)
{
    anvil_engine_file *f = NULL;
    assert_int_equal(anvil_engine_file_open(path, ANVIL_ST_READ, &f), ANVIL_OK);
    const anvil_engine_tensor *t = anvil_engine_file_find(f, name);
    snprintf(buf, cap, "%s", t ? anvil_engine_kind_name(t->kind) : "");
    anvil_engine_file_close(f);
    return buf;
}

static void test_lm_head(void **st)
{
    (void)st;
    char path[700], refit[700], k[32];
    snprintf(path, sizeof path, "%s/tc-int4-lm.engine", anvil_test_tmpdir());
    anvil_build_options o;
    anvil_build_options_default(&o);
    o.n_threads = 2;
    o.quantize = ANVIL_QUANTIZE_INT4_WO;
    o.quantize_lm_head = 1;
    assert_int_equal(anvil_build_engine(tc_dir, path, &o), ANVIL_OK);
    /* tied: the embedding stays bf16, the LM head is an int4 matrix of its own */
    assert_string_equal(kind_of(path, "model.embed_tokens.weight", k, sizeof k), "bf16");
    assert_string_equal(kind_of(path, "lm_head.weight", k, sizeof k), "int4");
    assert_string_equal(kind_of(path, "lm_head.weight.scales", k, sizeof k), "f32");
    anvil_engine_file *f = NULL;
    assert_int_equal(anvil_engine_file_open(path, ANVIL_ST_READ, &f), ANVIL_OK);
    const json_t *b = json_object_get(anvil_engine_file_manifest(f), "build");
    assert_string_equal(json_string_value(json_object_get(b, "untied_lm_head")), "lm_head.weight");
    assert_true(json_is_true(json_object_get(json_object_get(b, "quantization"), "lm_head")));
    anvil_engine_file_close(f);
    /* it runs, close to bf16 (int4 on every matrix, the LM head's 8192 rows included) */
    golden g;
    golden_load("tinycode", &g);
    anvil_runtime *rt = load(path);
    const int64_t V = anvil_runtime_config(rt)->vocab_size;
    int64_t agree = 0, rows = 0;
    for (int ci = 0; ci < g.n_cases; ci++) {
        const int32_t n = g.cases[ci].n_ids < 128 ? g.cases[ci].n_ids : 128;
        float *y = logits_of(rt, g.cases[ci].ids, n);
        for (int32_t r = 0; r < n; r++) {
            agree += argmax(y + (int64_t)r * V, V) == argmax(g.cases[ci].logits + (int64_t)r * V, V);
            rows++;
        }
        free(y);
    }
    printf("int4-wo with the LM head: top-1 agreement with transformers %.3f over %lld positions\n",
           (double)agree / (double)rows, (long long)rows);
    assert_true((double)agree / (double)rows >= 0.75);
    anvil_runtime_free(rt);
    golden_free(&g);
    /* a refit from the folder quantizes the LM head's copy again: the same bytes */
    snprintf(refit, sizeof refit, "%s/tc-int4-lm-refit.engine", anvil_test_tmpdir());
    assert_int_equal(anvil_refit_engine(path, tc_dir, refit, NULL), ANVIL_OK);
    anvil_engine_file *fa = NULL, *fb = NULL;
    assert_int_equal(anvil_engine_file_open(path, ANVIL_ST_READ, &fa), ANVIL_OK);
    assert_int_equal(anvil_engine_file_open(refit, ANVIL_ST_READ, &fb), ANVIL_OK);
    for (int64_t i = 0; i < anvil_engine_file_count(fa); i++)
        assert_true(anvil_engine_file_tensor(fa, i)->xxh64 == anvil_engine_file_tensor(fb, i)->xxh64);
    anvil_engine_file_close(fa);
    anvil_engine_file_close(fb);
    /* untied (the small model): lm_head.weight itself is quantized, nothing untied */
    snprintf(path, sizeof path, "%s/small-int8-lm.engine", anvil_test_tmpdir());
    o.quantize = ANVIL_QUANTIZE_INT8_WO;
    assert_int_equal(anvil_build_engine(small_dir, path, &o), ANVIL_OK);
    assert_string_equal(kind_of(path, "lm_head.weight", k, sizeof k), "int8");
    assert_string_equal(kind_of(path, "model.embed_tokens.weight", k, sizeof k), "f32");
    assert_int_equal(anvil_engine_file_open(path, ANVIL_ST_READ, &f), ANVIL_OK);
    assert_null(json_object_get(json_object_get(anvil_engine_file_manifest(f), "build"), "untied_lm_head"));
    anvil_engine_file_close(f);
    rt = load(path);
    anvil_runtime_free(rt);
    /* and without a scheme it is refused */
    o.quantize = ANVIL_QUANTIZE_NONE;
    assert_status_msg(anvil_build_engine(small_dir, path, &o), ANVIL_ERR_INVALID_ARG, "needs a scheme");
}

/* ------------------------------------------------------------ bad input */

static void expect_refused(const anvil_build_options *o, const char *model, anvil_status want, const char *needle)
{
    char out[700];
    snprintf(out, sizeof out, "%s/refused.engine", anvil_test_tmpdir());
    unlink(out);
    assert_status_msg(anvil_build_engine(model, out, o), want, needle);
    assert_int_equal(access(out, F_OK), -1); /* nothing written */
}

static void test_bad_input(void **st)
{
    (void)st;
    anvil_build_options o;
    char path[700];
    awq_options(&o, ANVIL_QUANTIZE_INT4_WO, 2);
    snprintf(path, sizeof path, "%s/no-such-calib.txt", anvil_test_tmpdir());
    o.calib_file = path;
    expect_refused(&o, small_dir, ANVIL_ERR_IO, "no-such-calib.txt");
    snprintf(path, sizeof path, "%s/empty-calib.txt", anvil_test_tmpdir());
    anvil_test_write_file(path, "", 0);
    expect_refused(&o, small_dir, ANVIL_ERR_INVALID_ARG, "is empty");
    snprintf(path, sizeof path, "%s/latin1-calib.txt", anvil_test_tmpdir());
    anvil_test_write_file(path, "caf\xe9 = 1\n", 9);
    expect_refused(&o, small_dir, ANVIL_ERR_INVALID_ARG, "tokenizing the calibration file");
    snprintf(path, sizeof path, "%s/short-calib.txt", anvil_test_tmpdir());
    anvil_test_write_file(path, "def f(x):\n    return x\n", 23);
    expect_refused(&o, small_dir, ANVIL_ERR_INVALID_ARG, "fewer than one window of 128");
    awq_options(&o, ANVIL_QUANTIZE_FP8, 2);
    expect_refused(&o, small_dir, ANVIL_ERR_INVALID_ARG, "goes with int4-wo or int8-wo");
    awq_options(&o, ANVIL_QUANTIZE_NONE, 2);
    expect_refused(&o, small_dir, ANVIL_ERR_INVALID_ARG, "goes with int4-wo or int8-wo");
    awq_options(&o, ANVIL_QUANTIZE_INT4_WO, 2);
    o.calib_tokens = 100; /* below one window of 128 */
    expect_refused(&o, small_dir, ANVIL_ERR_INVALID_ARG, "fewer than one window");
    awq_options(&o, ANVIL_QUANTIZE_INT4_WO, 2);
    o.random_weights = 1;
    snprintf(path, sizeof path, "%s/config.json", small_dir);
    expect_refused(&o, path, ANVIL_ERR_INVALID_ARG, "needs a model folder");
    /* the command's usage errors (exit 2) */
    const char *bin = getenv("ANVIL_BIN");
    if (bin == NULL)
        return;
    static const char *const bad[] = {
        "--quantize int4-wo --calib-tokens 1024",      /* a calibration flag without --calib */
        "--quantize fp8 --calib CALIB",                /* AWQ is for int4-wo and int8-wo */
        "--calib CALIB",                               /* and needs --quantize */
        "--quantize int4-wo --calib CALIB --calib-seq-len 512 --calib-tokens 100",
        "--quantize-lm-head",                          /* needs --quantize */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char args[300], cmd[2000];
        snprintf(args, sizeof args, "%s", bad[i]);
        char *c = strstr(args, "CALIB");
        if (c != NULL)
            *c = '\0';
        snprintf(cmd, sizeof cmd, "'%s' build --model '%s' --output '%s/cli.engine' %s%s%s 2>/dev/null", bin, small_dir,
                 anvil_test_tmpdir(), args, c ? calib_file : "", c ? c + 5 : "");
        const int rc = system(cmd);
        if (!WIFEXITED(rc) || WEXITSTATUS(rc) != 2)
            fail_msg("'%s' exited %d, not 2", bad[i], WIFEXITED(rc) ? WEXITSTATUS(rc) : -1);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_search_protects_outlier),
        cmocka_unit_test(test_fold_exact),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_end_to_end),
        cmocka_unit_test(test_lm_head),
        cmocka_unit_test(test_bad_input),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
