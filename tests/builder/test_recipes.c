/*
 * Weight recipes (anvil/network.h) through the build plan
 * (builder/build_plan.c): small safetensors checkpoints written here, a
 * network that takes a weight by every kind of recipe, and the bytes
 * anvil_build_fill prepares, filled in chunks of 1, 3, 7 elements and
 * whole, compared with values computed here by hand from the sources:
 *   - a slice along axis 0 and along axis 1 (also of a vector);
 *   - one matrix of a stack (a 3-D source);
 *   - concatenations along axis 0 and axis 1;
 *   - every stored kind (as stored: f32, bf16, f16 sources; all converted
 *     to f32; all converted to bf16), with a value bf16 rounds.
 * Then every error a recipe can meet, with its status and message: a
 * missing source, a dtype weights cannot have, a slice or stack index past
 * the end, a concatenation that does not add up or mixes dtypes, a recipe
 * declared twice or after its weight is in use, one no op uses, bad axes
 * and starts, and fills that do not fit.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "anvil/dtype.h"
#include "anvil/network.h"
#include "builder/build_plan.h"
#include "io/safetensors.h"
#include "testutil.h"

/* ------------------------------------------------------------ sources */

/* A source tensor: its values as f32 after a round trip through its dtype
 * (what any reader sees), and its bytes in that dtype. */
typedef struct src {
    const char *name;
    anvil_dtype dtype;
    int n_dims;
    int64_t shape[3];
    int64_t n;
    float *truth;
    void *bytes;
} src;

static int64_t numel(const int64_t *shape, int n_dims)
{
    int64_t n = 1;
    for (int d = 0; d < n_dims; d++)
        n *= shape[d];
    return n;
}

/* Values k * 64 + i / 4 (exact in f32, f16 and, for small k, bf16),
 * negated on odd i so a transposed or shifted read shows. */
static void make_src(src *s, int k)
{
    s->n = numel(s->shape, s->n_dims);
    s->truth = malloc((size_t)s->n * sizeof(float));
    s->bytes = malloc((size_t)s->n * anvil_dtype_size(s->dtype));
    assert_true(s->truth && s->bytes);
    for (int64_t i = 0; i < s->n; i++)
        s->truth[i] = (float)(k * 64) + (float)i * 0.25f * (i % 2 ? -1.0f : 1.0f);
    if (s->dtype == ANVIL_DTYPE_I32) {
        for (int64_t i = 0; i < s->n; i++)
            ((int32_t *)s->bytes)[i] = (int32_t)i;
        return;
    }
    anvil_convert_from_f32(s->dtype, s->truth, s->bytes, s->n);
    anvil_convert_to_f32(s->dtype, s->bytes, s->truth, s->n);
}

static void free_srcs(src *s, int n)
{
    for (int i = 0; i < n; i++) {
        free(s[i].truth);
        free(s[i].bytes);
    }
}

/* A folder `name` under the test's temporary folder with model.safetensors of srcs. */
static const char *write_ckpt(const char *name, src *srcs, int n)
{
    static char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s", anvil_test_tmpdir(), name);
    mkdir(dir, 0755);
    char path[1100];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    anvil_st_tensor t[16];
    assert_true(n <= 16);
    for (int i = 0; i < n; i++) {
        memset(&t[i], 0, sizeof t[i]);
        t[i].name = srcs[i].name;
        t[i].dtype = srcs[i].dtype;
        t[i].n_dims = srcs[i].n_dims;
        memcpy(t[i].shape, srcs[i].shape, sizeof srcs[i].shape);
        t[i].data = srcs[i].bytes;
        t[i].nbytes = (size_t)srcs[i].n * anvil_dtype_size(srcs[i].dtype);
    }
    assert_int_equal(anvil_safetensors_write(path, t, n), ANVIL_OK);
    return dir;
}

static const src *find_src(const src *s, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (strcmp(s[i].name, name) == 0)
            return &s[i];
    fail_msg("no source %s", name);
    return NULL;
}

/* ------------------------------------------------------------ the network */

enum { V = 6, W = 5 };

/* Sources: e0 [2, W] and e1 [4, W] (f32) concatenated into the embedding
 * [V, W]; big [7, W] (bf16) sliced rows 2..4; wide [4, 9] (f32) sliced
 * columns 3..7; stack [4, 3, W] (f16) matrix 2; p [2, 2] and q [2, 3] (f32)
 * concatenated along axis 1; vec [8] (f32) sliced 1..5 for a norm. */
#define N_SRCS 8
static void good_sources(src *s)
{
    const src def[N_SRCS] = {
        {.name = "e0", .dtype = ANVIL_DTYPE_F32, .n_dims = 2, .shape = {2, W}},
        {.name = "e1", .dtype = ANVIL_DTYPE_F32, .n_dims = 2, .shape = {4, W}},
        {.name = "big", .dtype = ANVIL_DTYPE_BF16, .n_dims = 2, .shape = {7, W}},
        {.name = "wide", .dtype = ANVIL_DTYPE_F32, .n_dims = 2, .shape = {4, 9}},
        {.name = "stack", .dtype = ANVIL_DTYPE_F16, .n_dims = 3, .shape = {4, 3, W}},
        {.name = "p", .dtype = ANVIL_DTYPE_F32, .n_dims = 2, .shape = {2, 2}},
        {.name = "q", .dtype = ANVIL_DTYPE_F32, .n_dims = 2, .shape = {2, 3}},
        {.name = "vec", .dtype = ANVIL_DTYPE_F32, .n_dims = 1, .shape = {8}},
    };
    for (int i = 0; i < N_SRCS; i++) {
        s[i] = def[i];
        make_src(&s[i], i);
    }
    /* 1 + 2^-8 lies halfway between two bf16 values: bf16 rounds it to 1 (even) */
    s[3].truth[3 * 9 + 4] = 1.00390625f;
    ((float *)s[3].bytes)[3 * 9 + 4] = 1.00390625f;
}

static anvil_network *good_network(void)
{
    anvil_network *net = NULL;
    assert_int_equal(anvil_network_create(&net), ANVIL_OK);
    const char *emb_parts[2] = {"e0", "e1"}, *pq[2] = {"p", "q"};
    anvil_net_weight_concat(net, "emb", 0, emb_parts, 2);
    anvil_net_weight_slice(net, "rows", "big", 0, 2);
    anvil_net_weight_slice(net, "cols", "wide", 1, 3);
    anvil_net_weight_slice(net, "one", "stack", 0, 2);
    anvil_net_weight_concat(net, "side", 1, pq, 2);
    anvil_net_weight_slice(net, "norm", "vec", 0, 1);
    anvil_value x = anvil_net_embedding(net, "emb", V, W);
    anvil_value a = anvil_net_linear(net, x, "rows", NULL, 3);
    anvil_value b = anvil_net_linear(net, x, "cols", NULL, 4);
    anvil_value c = anvil_net_linear(net, x, "one", NULL, 3);
    anvil_value d = anvil_net_linear(net, x, "side", NULL, 2);
    anvil_value n = anvil_net_rmsnorm(net, x, "norm", 1e-5);
    (void)a, (void)b, (void)c, (void)n;
    anvil_net_set_output(net, anvil_net_logit_rows(net, d));
    assert_int_equal(anvil_network_status(net), ANVIL_OK);
    return net;
}

/* Element (r, c) of weight `name` [rows, cols], worked out from the sources. */
static float expect(const src *s, const char *name, int64_t r, int64_t c)
{
    if (strcmp(name, "emb") == 0)
        return r < 2 ? find_src(s, N_SRCS, "e0")->truth[r * W + c] : find_src(s, N_SRCS, "e1")->truth[(r - 2) * W + c];
    if (strcmp(name, "rows") == 0)
        return find_src(s, N_SRCS, "big")->truth[(r + 2) * W + c];
    if (strcmp(name, "cols") == 0)
        return find_src(s, N_SRCS, "wide")->truth[r * 9 + 3 + c];
    if (strcmp(name, "one") == 0)
        return find_src(s, N_SRCS, "stack")->truth[2 * 3 * W + r * W + c];
    if (strcmp(name, "side") == 0)
        return c < 2 ? find_src(s, N_SRCS, "p")->truth[r * 2 + c] : find_src(s, N_SRCS, "q")->truth[r * 3 + (c - 2)];
    if (strcmp(name, "norm") == 0)
        return find_src(s, N_SRCS, "vec")->truth[1 + r];
    fail_msg("no expectation for %s", name);
    return 0;
}

/* Every stored tensor of p filled in chunks of `chunk_elems`, against expect(). */
static void check_fill(const anvil_build_plan *p, const anvil_network *net, const anvil_checkpoint *ck, const src *s,
                       int64_t chunk_elems, anvil_build_scratch *sc)
{
    for (int32_t si = 0; si < p->n_stored; si++) {
        const anvil_stored *t = &p->stored[si];
        assert_int_equal(t->n, 1); /* no fusion here: one weight each */
        const anvil_net_weight *w = anvil_network_weight(net, p->members[t->first]);
        const size_t es = anvil_dtype_size(t->kind);
        const int64_t rows = w->shape[0], cols = w->n_dims == 2 ? w->shape[1] : 1, n = rows * cols;
        assert_int_equal(t->bytes, (size_t)n * es);
        unsigned char *got = malloc(t->bytes + 1), *want = malloc(t->bytes);
        float *f = malloc((size_t)n * sizeof(float));
        assert_true(got && want && f);
        got[t->bytes] = 0x5A; /* a guard byte */
        for (int64_t e = 0; e < n; e++)
            f[e] = expect(s, w->name, e / cols, e % cols);
        anvil_convert_from_f32(t->kind, f, want, n);
        const size_t chunk = (size_t)chunk_elems * es;
        for (size_t off = 0; off < t->bytes; off += chunk) {
            const size_t len = t->bytes - off < chunk ? t->bytes - off : chunk;
            if (anvil_build_fill(p, net, ck, si, off, got + off, len, sc) != ANVIL_OK)
                fail_msg("fill %s [%zu, +%zu): %s", t->name, off, len, anvil_last_error());
        }
        if (memcmp(got, want, t->bytes) != 0)
            fail_msg("%s (%s, chunks of %lld): prepared bytes differ", w->name, anvil_dtype_name(t->kind),
                     (long long)chunk_elems);
        assert_int_equal(got[t->bytes], 0x5A);
        free(got);
        free(want);
        free(f);
    }
}

static void test_recipes_fill(void **state)
{
    (void)state;
    src s[N_SRCS];
    good_sources(s);
    const char *dir = write_ckpt("good", s, N_SRCS);
    anvil_checkpoint *ck = NULL;
    assert_int_equal(anvil_checkpoint_open_ex(dir, ANVIL_ST_READ, &ck), ANVIL_OK);
    anvil_network *net = good_network();
    anvil_build_scratch *sc = NULL;
    assert_int_equal(anvil_build_scratch_create(&sc), ANVIL_OK);

    /* as stored: each weight keeps its sources' dtype */
    const anvil_dtype kinds[3] = {ANVIL_DTYPE_COUNT, ANVIL_DTYPE_F32, ANVIL_DTYPE_BF16};
    for (int k = 0; k < 3; k++) {
        anvil_plan_options o = {.weight_dtype = kinds[k]};
        anvil_build_plan *p = NULL;
        if (anvil_build_plan_make(net, ck, &o, &p) != ANVIL_OK)
            fail_msg("plan: %s", anvil_last_error());
        assert_int_equal(anvil_build_plan_check(p, net), ANVIL_OK);
        assert_int_equal(p->n_stored, 6);
        for (int32_t si = 0; si < p->n_stored; si++) {
            const anvil_stored *t = &p->stored[si];
            const anvil_net_weight *w = anvil_network_weight(net, p->members[t->first]);
            anvil_dtype want = kinds[k];
            if (want == ANVIL_DTYPE_COUNT)
                want = strcmp(w->name, "rows") == 0 ? ANVIL_DTYPE_BF16
                       : strcmp(w->name, "one") == 0 ? ANVIL_DTYPE_F16
                                                     : ANVIL_DTYPE_F32;
            assert_int_equal(t->kind, want);
            /* only a weight that is one source as it is can be copied as it is */
            assert_null(anvil_build_plain_source(p, net, ck, si));
        }
        static const int64_t chunks[4] = {1, 3, 7, 1 << 20};
        for (int c = 0; c < 4; c++)
            check_fill(p, net, ck, s, chunks[c], sc);

        /* the rounded value: f32 1 + 2^-8 at cols (3, 1) is bf16 1.0 exactly */
        const int32_t ci = anvil_network_find_weight(net, "cols");
        const anvil_stored *t = &p->stored[p->weight_stored[ci]];
        unsigned char buf[64];
        const size_t es = anvil_dtype_size(t->kind);
        assert_int_equal(anvil_build_fill(p, net, ck, p->weight_stored[ci], (size_t)(3 * 5 + 1) * es, buf, es, sc),
                         ANVIL_OK);
        if (t->kind == ANVIL_DTYPE_BF16) {
            uint16_t v;
            memcpy(&v, buf, 2);
            assert_int_equal(v, 0x3F80);
        } else {
            float v;
            memcpy(&v, buf, 4);
            assert_true(v == 1.00390625f);
        }
        /* bf16 "rows" into f32 and back: the same values */
        if (kinds[k] == ANVIL_DTYPE_F32) {
            const int32_t ri = anvil_network_find_weight(net, "rows");
            float v[W];
            assert_int_equal(anvil_build_fill(p, net, ck, p->weight_stored[ri], 0, v, sizeof v, sc), ANVIL_OK);
            uint16_t back[W];
            anvil_convert_from_f32(ANVIL_DTYPE_BF16, v, back, W);
            assert_memory_equal(back, (const uint16_t *)find_src(s, N_SRCS, "big")->bytes + 2 * W, sizeof back);
        }

        /* fills that do not fit */
        const int32_t ei = anvil_network_find_weight(net, "emb");
        const int32_t es_i = p->weight_stored[ei];
        const size_t eb = p->stored[es_i].bytes, ees = anvil_dtype_size(p->stored[es_i].kind);
        assert_status_msg(anvil_build_fill(p, net, ck, es_i, 1, buf, ees, sc), ANVIL_ERR_INVALID_ARG, "do not fit");
        assert_status_msg(anvil_build_fill(p, net, ck, es_i, eb - ees, buf, 2 * ees, sc), ANVIL_ERR_INVALID_ARG,
                          "do not fit");
        assert_status_msg(anvil_build_fill(p, net, ck, p->n_stored, 0, buf, ees, sc), ANVIL_ERR_INVALID_ARG,
                          "out of range");
        anvil_build_plan_free(p);
    }
    anvil_build_scratch_free(sc);
    anvil_network_free(net);
    anvil_checkpoint_close(ck);
    free_srcs(s, N_SRCS);
}

/* ------------------------------------------------------------ errors */

/* A plan of net over a checkpoint of srcs must fail with want and needle. */
static void expect_plan_error(const char *case_name, anvil_network *net, src *srcs, int n, anvil_status want,
                              const char *needle)
{
    assert_int_equal(anvil_network_status(net), ANVIL_OK);
    const char *dir = write_ckpt(case_name, srcs, n);
    anvil_checkpoint *ck = NULL;
    assert_int_equal(anvil_checkpoint_open_ex(dir, ANVIL_ST_READ, &ck), ANVIL_OK);
    anvil_plan_options o = {.weight_dtype = ANVIL_DTYPE_COUNT};
    anvil_build_plan *p = (anvil_build_plan *)&o; /* must come back NULL */
    printf("  %s\n", case_name);
    assert_status_msg(anvil_build_plan_make(net, ck, &o, &p), want, needle);
    assert_null(p);
    anvil_checkpoint_close(ck);
    anvil_network_free(net);
}

/* One linear [rows, cols] of an embedding [4, cols] ("emb", a tensor),
 * its weight "w" made by `declare`. */
static anvil_network *one_linear(void (*declare)(anvil_network *), int64_t rows, int64_t cols)
{
    anvil_network *net = NULL;
    assert_int_equal(anvil_network_create(&net), ANVIL_OK);
    declare(net);
    anvil_value x = anvil_net_embedding(net, "emb", 4, cols);
    anvil_net_set_output(net, anvil_net_logit_rows(net, anvil_net_linear(net, x, "w", NULL, rows)));
    return net;
}

static void slice_missing(anvil_network *net) { anvil_net_weight_slice(net, "w", "nope", 0, 0); }
static void slice_ints(anvil_network *net) { anvil_net_weight_slice(net, "w", "ints", 0, 0); }
static void slice_past_rows(anvil_network *net) { anvil_net_weight_slice(net, "w", "m", 0, 5); }
static void slice_past_cols(anvil_network *net) { anvil_net_weight_slice(net, "w", "m", 1, 2); }
static void slice_other_axis(anvil_network *net) { anvil_net_weight_slice(net, "w", "m", 0, 0); }
static void stack_past(anvil_network *net) { anvil_net_weight_slice(net, "w", "stack", 0, 4); }
static void stack_axis1(anvil_network *net) { anvil_net_weight_slice(net, "w", "stack", 1, 0); }
static void concat_short(anvil_network *net)
{
    const char *parts[2] = {"m", "m2"};
    anvil_net_weight_concat(net, "w", 0, parts, 2);
}
static void concat_mixed(anvil_network *net)
{
    const char *parts[2] = {"m", "mb"};
    anvil_net_weight_concat(net, "w", 0, parts, 2);
}
static void concat_missing(anvil_network *net)
{
    const char *parts[2] = {"m", "gone"};
    anvil_net_weight_concat(net, "w", 1, parts, 2);
}

static void error_sources(src *s)
{
    const src def[6] = {
        {.name = "emb", .dtype = ANVIL_DTYPE_F32, .n_dims = 2, .shape = {4, 4}},
        {.name = "m", .dtype = ANVIL_DTYPE_F32, .n_dims = 2, .shape = {6, 4}},
        {.name = "m2", .dtype = ANVIL_DTYPE_F32, .n_dims = 2, .shape = {1, 4}},
        {.name = "mb", .dtype = ANVIL_DTYPE_BF16, .n_dims = 2, .shape = {2, 4}},
        {.name = "stack", .dtype = ANVIL_DTYPE_F32, .n_dims = 3, .shape = {4, 3, 4}},
        {.name = "ints", .dtype = ANVIL_DTYPE_I32, .n_dims = 2, .shape = {3, 4}},
    };
    for (int i = 0; i < 6; i++) {
        s[i] = def[i];
        make_src(&s[i], i);
    }
}

static void test_plan_errors(void **state)
{
    (void)state;
    src s[6];
    error_sources(s);
    static const struct {
        const char *name;
        void (*declare)(anvil_network *);
        int64_t rows, cols;
        anvil_status want;
        const char *needle;
    } cases[] = {
        {"missing_source", slice_missing, 3, 4, ANVIL_ERR_NOT_FOUND, "missing tensor 'nope' in the checkpoint"},
        {"int_dtype", slice_ints, 3, 4, ANVIL_ERR_UNSUPPORTED, "tensor 'ints' has dtype i32"},
        /* rows 5..7 of a 6-row tensor */
        {"slice_past_rows", slice_past_rows, 3, 4, ANVIL_ERR_FORMAT, "the slice runs past the tensor"},
        /* columns 2..5 of a 4-column tensor */
        {"slice_past_cols", slice_past_cols, 6, 3, ANVIL_ERR_FORMAT, "the slice runs past the tensor"},
        /* rows of 3 columns out of a tensor of 4 */
        {"slice_other_axis", slice_other_axis, 2, 3, ANVIL_ERR_FORMAT, "the other axis differs"},
        {"stack_past", stack_past, 3, 4, ANVIL_ERR_FORMAT, "the index is past the stack"},
        {"stack_axis1", stack_axis1, 3, 4, ANVIL_ERR_FORMAT, "a stack is sliced along axis 0"},
        {"stack_shape", stack_past, 2, 4, ANVIL_ERR_FORMAT, "the stack's matrices have another shape"},
        /* 6 + 1 rows for a weight of 8 */
        {"concat_short", concat_short, 8, 4, ANVIL_ERR_FORMAT, "the parts do not add up"},
        {"concat_mixed", concat_mixed, 8, 4, ANVIL_ERR_FORMAT, "'w' concatenates tensors of dtypes f32 and bf16"},
        {"concat_missing", concat_missing, 6, 8, ANVIL_ERR_NOT_FOUND, "missing tensor 'gone'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_plan_error(cases[i].name, one_linear(cases[i].declare, cases[i].rows, cases[i].cols), s, 6,
                          cases[i].want, cases[i].needle);
    free_srcs(s, 6);
}

/* Errors of the recipe calls themselves: sticky, reported by anvil_network_status. */
static void test_declare_errors(void **state)
{
    (void)state;
    anvil_network *net = NULL;
    const char *parts[2] = {"a", "b"};

    /* declared twice */
    assert_int_equal(anvil_network_create(&net), ANVIL_OK);
    anvil_net_weight_slice(net, "w", "m", 0, 0);
    anvil_net_weight_concat(net, "w", 0, parts, 2);
    assert_status_msg(anvil_network_status(net), ANVIL_ERR_INVALID_ARG,
                      "recipe of w: the weight is already declared or in use");
    anvil_network_free(net);

    /* declared after an op named the weight (it already is the tensor "w") */
    assert_int_equal(anvil_network_create(&net), ANVIL_OK);
    anvil_value x = anvil_net_embedding(net, "emb", 4, 4);
    anvil_net_set_output(net, anvil_net_logit_rows(net, anvil_net_linear(net, x, "w", NULL, 3)));
    anvil_net_weight_slice(net, "w", "m", 0, 0);
    assert_status_msg(anvil_network_status(net), ANVIL_ERR_INVALID_ARG,
                      "recipe of w: the weight is already declared or in use");
    anvil_network_free(net);

    /* a recipe no op uses */
    assert_int_equal(anvil_network_create(&net), ANVIL_OK);
    anvil_net_weight_slice(net, "unused", "m", 0, 0);
    x = anvil_net_embedding(net, "emb", 4, 4);
    anvil_net_set_output(net, anvil_net_logit_rows(net, x));
    assert_status_msg(anvil_network_status(net), ANVIL_ERR_INVALID_ARG,
                      "weight unused has a recipe but no op uses it");
    anvil_network_free(net);

    /* bad arguments */
    struct {
        int axis;
        int64_t start;
        int32_t n;
        const char *needle;
    } bad[] = {
        {2, 0, 2, "recipe of w: axis must be 0 or 1"},
        {-1, 0, 2, "axis must be 0 or 1"},
        {0, -3, 2, "recipe of w: negative start"},
        {0, 0, 0, "a recipe needs a name and sources"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(anvil_network_create(&net), ANVIL_OK);
        if (bad[i].n == 0)
            anvil_net_weight_concat(net, "w", bad[i].axis, parts, 0);
        else
            anvil_net_weight_slice(net, "w", "m", bad[i].axis, bad[i].start);
        assert_status_msg(anvil_network_status(net), ANVIL_ERR_INVALID_ARG, bad[i].needle);
        /* sticky: what follows does nothing and the first error stays */
        anvil_value v = anvil_net_embedding(net, "emb", 4, 4);
        assert_int_equal(v, ANVIL_VALUE_NONE);
        assert_status_msg(anvil_network_status(net), ANVIL_ERR_INVALID_ARG, bad[i].needle);
        anvil_network_free(net);
    }
    /* a NULL source */
    assert_int_equal(anvil_network_create(&net), ANVIL_OK);
    const char *with_null[2] = {"a", NULL};
    anvil_net_weight_concat(net, "w", 0, with_null, 2);
    assert_status_msg(anvil_network_status(net), ANVIL_ERR_INVALID_ARG, "recipe of w: source 1 is NULL");
    anvil_network_free(net);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_recipes_fill),
        cmocka_unit_test(test_plan_errors),
        cmocka_unit_test(test_declare_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
