/*
 * The grammar engine's entry points: options, the compile functions (each
 * runs its front end into a builder, then gb_finish) and the compiled
 * grammar's lifetime.
 */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "grammar/gram_internal.h"

void anvil_grammar_options_default(anvil_grammar_options *o)
{
    if (!o)
        return;
    memset(o, 0, sizeof *o);
    o->max_whitespace = 16;
    o->max_schema_depth = 64;
    o->max_enum = 16384;
    o->max_repeat = 4096;
    o->max_elements = 1 << 20;
    o->max_input = 1 << 20;
    o->max_stack_depth = 512;
    o->max_stacks = 2048;
    o->cache_frames = 4;
    o->max_cache_bytes = (int64_t)64 << 20;
}

static anvil_status check_opts(const anvil_grammar_vocab *v, const anvil_grammar_options *in,
                               anvil_grammar_options *o, anvil_grammar **out)
{
    CHECK(out != NULL, ANVIL_ERR_INVALID_ARG, "out must not be NULL");
    *out = NULL;
    CHECK(v != NULL, ANVIL_ERR_INVALID_ARG, "vocabulary must not be NULL");
    if (in)
        *o = *in;
    else
        anvil_grammar_options_default(o);
    CHECK(o->max_schema_depth > 0 && o->max_enum > 0 && o->max_repeat >= 0 && o->max_elements > 0 &&
              o->max_input > 0 && o->max_stack_depth > 1 && o->max_stacks > 0 && o->cache_frames >= 0 &&
              o->max_whitespace >= -1,
          ANVIL_ERR_INVALID_ARG, "bad grammar options");
    return ANVIL_OK;
}

anvil_status gram_compiled_new(const anvil_grammar_vocab *v, const anvil_grammar_options *o, gram_builder *b,
                               int32_t root, anvil_grammar **out)
{
    anvil_grammar *g = calloc(1, sizeof *g);
    CHECK(g, ANVIL_ERR_OOM, "out of memory");
    anvil_status st = gb_finish(b, root, &g->g);
    if (st != ANVIL_OK) {
        free(g);
        return st;
    }
    g->v = v;
    g->o = *o;
    atomic_init(&g->refs, 1);
    if (pthread_mutex_init(&g->lock, NULL) != 0) {
        gram_free(&g->g);
        free(g);
        CHECK(0, ANVIL_ERR_OOM, "cannot create a lock");
    }
    if (pthread_cond_init(&g->done, NULL) != 0) {
        pthread_mutex_destroy(&g->lock);
        gram_free(&g->g);
        free(g);
        CHECK(0, ANVIL_ERR_OOM, "cannot create a condition variable");
    }
    /* the start state must be reachable: a grammar that matches nothing is an error now, not at the first step */
    anvil_grammar_matcher *m = NULL;
    st = anvil_grammar_matcher_create(g, &m);
    if (st == ANVIL_OK && !anvil_grammar_matcher_can_end(m) && anvil_grammar_matcher_is_done(m))
        st = ANVIL_FAIL(ANVIL_ERR_INVALID_ARG, "the grammar matches no output (nesting over max_stack_depth?)");
    anvil_grammar_matcher_free(m);
    if (st != ANVIL_OK) {
        anvil_grammar_free(g);
        return st;
    }
    *out = g;
    return ANVIL_OK;
}

const anvil_grammar_vocab *anvil_grammar_get_vocab(const anvil_grammar *g)
{
    return g ? g->v : NULL;
}

anvil_grammar *anvil_grammar_retain(anvil_grammar *g)
{
    if (g)
        atomic_fetch_add_explicit(&g->refs, 1, memory_order_relaxed);
    return g;
}

void anvil_grammar_free(anvil_grammar *g)
{
    /* the last reference frees: acq_rel so the freeing thread sees every
     * other holder's writes (the mask cache) */
    if (!g || atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) != 1)
        return;
    gram_mask_cache_free(g);
    pthread_cond_destroy(&g->done);
    pthread_mutex_destroy(&g->lock);
    gram_free(&g->g);
    free(g);
}

/* What a front end reads (each uses some of the fields). */
typedef struct front_arg {
    const char *text;
    size_t len;
    const char *root_rule;
    const char *const *choices;
    const size_t *lens;
    int n;
} front_arg;

typedef anvil_status (*front_fn)(gram_builder *b, const front_arg *a, int32_t *root);

/* Runs a front end into a fresh builder and compiles its root. */
static anvil_status compile(const anvil_grammar_vocab *v, const anvil_grammar_options *opts, front_fn f,
                            const front_arg *a, anvil_grammar **out)
{
    anvil_grammar_options o;
    TRY(check_opts(v, opts, &o, out));
    gram_builder b;
    gb_init(&b, &o);
    int32_t root = 0;
    anvil_status st = f(&b, a, &root);
    if (st == ANVIL_OK)
        st = gram_compiled_new(v, &o, &b, root, out);
    gb_free(&b);
    return st;
}

static anvil_status check_input(const gram_builder *b, const char *what, const char *s, size_t len)
{
    CHECK(s != NULL || len == 0, ANVIL_ERR_INVALID_ARG, "%s must not be NULL", what);
    CHECK((int64_t)len <= b->o.max_input, ANVIL_ERR_INVALID_ARG,
          "%s of %zu bytes is over the limit of %lld bytes (max_input)", what, len, (long long)b->o.max_input);
    return ANVIL_OK;
}

static anvil_status schema_front(gram_builder *b, const front_arg *a, int32_t *root)
{
    TRY(check_input(b, "JSON schema", a->text, a->len));
    return gram_json_schema(b, a->text, a->len, root);
}

static anvil_status object_front(gram_builder *b, const front_arg *a, int32_t *root)
{
    (void)a;
    return gram_json_any_object(b, root);
}

anvil_status anvil_grammar_compile_json_schema(const anvil_grammar_vocab *v, const char *schema, size_t len,
                                               const anvil_grammar_options *opts, anvil_grammar **out)
{
    front_arg a = {.text = schema, .len = len};
    return compile(v, opts, schema_front, &a, out);
}

anvil_status anvil_grammar_compile_json_object(const anvil_grammar_vocab *v, const anvil_grammar_options *opts,
                                               anvil_grammar **out)
{
    front_arg a = {0};
    return compile(v, opts, object_front, &a, out);
}

static anvil_status regex_front(gram_builder *b, const front_arg *a, int32_t *root)
{
    TRY(check_input(b, "regular expression", a->text, a->len));
    int32_t e;
    TRY(gram_regex_parse(b, a->text, a->len, 0, &e));
    TRY(gb_rule_new(b, "root", root));
    TRY(gb_alt(b, *root));
    return gb_elem(b, *root, e);
}

anvil_status anvil_grammar_compile_regex(const anvil_grammar_vocab *v, const char *regex, size_t len,
                                         const anvil_grammar_options *opts, anvil_grammar **out)
{
    front_arg a = {.text = regex, .len = len};
    return compile(v, opts, regex_front, &a, out);
}

static anvil_status ebnf_front(gram_builder *b, const front_arg *a, int32_t *root)
{
    TRY(check_input(b, "grammar", a->text, a->len));
    return gram_ebnf_parse(b, a->text, a->len, a->root_rule ? a->root_rule : "root", root);
}

anvil_status anvil_grammar_compile_ebnf(const anvil_grammar_vocab *v, const char *grammar, size_t len,
                                        const char *root_rule, const anvil_grammar_options *opts,
                                        anvil_grammar **out)
{
    front_arg a = {.text = grammar, .len = len, .root_rule = root_rule};
    return compile(v, opts, ebnf_front, &a, out);
}

static anvil_status choice_front(gram_builder *b, const front_arg *a, int32_t *root)
{
    const char *const *choices = a->choices;
    const size_t *lens = a->lens;
    int n = a->n;
    CHECK(n > 0 && choices && lens, ANVIL_ERR_INVALID_ARG, "choice needs at least one string");
    int64_t total = 0;
    for (int i = 0; i < n; i++) {
        CHECK(choices[i] || lens[i] == 0, ANVIL_ERR_INVALID_ARG, "choice %d is NULL", i);
        total += (int64_t)lens[i];
    }
    CHECK(total <= b->o.max_input, ANVIL_ERR_INVALID_ARG,
          "choices of %lld bytes are over the limit of %lld bytes (max_input)", (long long)total,
          (long long)b->o.max_input);
    return gb_literals(b, choices, lens, n, root);
}

anvil_status anvil_grammar_compile_choice(const anvil_grammar_vocab *v, const char *const *choices,
                                          const size_t *lens, int n, const anvil_grammar_options *opts,
                                          anvil_grammar **out)
{
    front_arg a = {.choices = choices, .lens = lens, .n = n};
    return compile(v, opts, choice_front, &a, out);
}
