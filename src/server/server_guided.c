/*
 * Structured output fields of an OpenAI request → a compiled grammar
 * (anvil/grammar.h): response_format {type: text | json_object |
 * json_schema {name, schema, strict}} and vLLM's guided_json (an object or
 * a string), guided_regex, guided_choice (strings) and guided_grammar
 * (GBNF). At most one of them may constrain a request (vLLM's rule).
 *
 * The model's grammar vocabulary is built once, on its first constrained
 * request (about 0.5 s for a 128k vocabulary), under the model's guided_mu,
 * and freed with the model. A request's grammar comes from the model's
 * compiled-grammar cache (server_grammar_cache.c: the same kind and text
 * compile once) or is compiled and put there; the request holds a
 * reference, dropped with its srv_gen after its last final event.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/grammar.h"
#include "core/error.h"
#include "server/server_guided.h"

static int refuse(srv_guided_err *e, int status, const char *param, const char *fmt, const char *arg)
{
    e->status = status;
    e->param = param;
    snprintf(e->msg, sizeof e->msg, fmt, arg ? arg : "");
    return -1;
}

/* JSON as Python's json.dumps writes it (", " and ": ", no other
 * whitespace): a weak model at a high temperature cannot spend its tokens
 * on whitespace (the engine's default allows 16 bytes between two tokens),
 * as vLLM's disable-any-whitespace and llama.cpp's schema grammars bound it. */
static void json_opts(anvil_grammar_options *o)
{
    anvil_grammar_options_default(o);
    o->max_whitespace = -1;
}

/* The model's vocabulary, built on first use. */
static int vocab(srv_model *m, const anvil_grammar_vocab **out, const char *param, srv_guided_err *e)
{
    if (m->tok == NULL)
        return refuse(e, 400, param, "structured output needs the model's tokenizer (this model has none)%s",
                      NULL);
    pthread_mutex_lock(&m->guided_mu);
    if (m->gcache == NULL) /* out of memory: requests compile uncached; atomic: /metrics reads it unlocked */
        __atomic_store_n(&m->gcache,
                         srv_gcache_create(m->srv ? m->srv->opts.grammar_cache_entries : SRV_GCACHE_DEFAULT),
                         __ATOMIC_RELEASE);
    if (m->guided_vocab == NULL) {
        const anvil_model_config *cfg = m->rt ? anvil_runtime_config(m->rt) : NULL;
        anvil_status st = anvil_grammar_vocab_from_tokenizer(
            m->tok, cfg ? (int32_t)cfg->vocab_size : 0, cfg ? cfg->eos_token_ids : NULL,
            cfg ? cfg->n_eos_token_ids : 0, &m->guided_vocab);
        if (st != ANVIL_OK) {
            pthread_mutex_unlock(&m->guided_mu);
            return refuse(e, 500, NULL, "the model's vocabulary for structured output: %s", anvil_last_error());
        }
    }
    *out = m->guided_vocab;
    pthread_mutex_unlock(&m->guided_mu);
    return 0;
}

int srv_guided_vocab(srv_model *m, const anvil_grammar_vocab **out, const char *param, srv_guided_err *e)
{
    return vocab(m, out, param, e);
}

void srv_guided_json_options(anvil_grammar_options *o)
{
    json_opts(o);
}

/* kind + text: the key, and the compile on a miss */
anvil_status srv_guided_compile(srv_gcache *cache, const anvil_grammar_vocab *v, char kind, const char *text,
                                size_t len, anvil_grammar **out)
{
    if (kind == SRV_GUIDED_OBJECT)
        len = 0;
    char *key = malloc(len + 1);
    if (key == NULL)
        return ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory");
    key[0] = kind;
    if (len)
        memcpy(key + 1, text, len);
    *out = srv_gcache_get(cache, key, len + 1);
    if (*out != NULL) {
        free(key);
        return ANVIL_OK;
    }
    anvil_grammar_options o;
    json_opts(&o);
    anvil_status st;
    switch (kind) {
    case SRV_GUIDED_JSON: st = anvil_grammar_compile_json_schema(v, text, len, &o, out); break;
    case SRV_GUIDED_OBJECT: st = anvil_grammar_compile_json_object(v, &o, out); break;
    case SRV_GUIDED_REGEX: st = anvil_grammar_compile_regex(v, text, len, NULL, out); break;
    default: st = anvil_grammar_compile_ebnf(v, text, len, NULL, NULL, out); break;
    }
    if (st == ANVIL_OK)
        srv_gcache_put(cache, key, len + 1, *out);
    free(key);
    return st;
}

/* guided_choice: its strings, each after its length, as one key */
static anvil_status compile_choice(srv_gcache *cache, const anvil_grammar_vocab *v, const char *const *ch,
                                   const size_t *lens, int n, anvil_grammar **out)
{
    size_t len = 1;
    for (int i = 0; i < n; i++)
        len += 21 + lens[i];
    char *key = malloc(len);
    if (key == NULL)
        return ANVIL_FAIL(ANVIL_ERR_OOM, "out of memory");
    size_t k = 0;
    key[k++] = 'c';
    for (int i = 0; i < n; i++) {
        k += (size_t)snprintf(key + k, len - k, "%zu:", lens[i]);
        memcpy(key + k, ch[i], lens[i]);
        k += lens[i];
    }
    *out = srv_gcache_get(cache, key, k);
    anvil_status st = ANVIL_OK;
    if (*out == NULL) {
        st = anvil_grammar_compile_choice(v, ch, lens, n, NULL, out);
        if (st == ANVIL_OK)
            srv_gcache_put(cache, key, k, *out);
    }
    free(key);
    return st;
}

/* Not under guided_mu, which a vocabulary build holds for up to 0.5 s:
 * /metrics must not wait for it. Set once, freed with the model. */
srv_gcache *srv_guided_cache(srv_model *m)
{
    return __atomic_load_n(&m->gcache, __ATOMIC_ACQUIRE);
}

void srv_guided_cache_stats(srv_model *m, srv_gcache_stats *out)
{
    srv_gcache_get_stats(srv_guided_cache(m), out);
}

/* The engine's verdict on a compile: a refused schema or grammar is the
 * client's (400, the engine's message), memory the server's. */
static int compiled(anvil_status st, const char *param, srv_guided_err *e)
{
    if (st == ANVIL_OK)
        return 0;
    if (st == ANVIL_ERR_OOM)
        return refuse(e, 500, NULL, "out of memory compiling the grammar%s", NULL);
    return refuse(e, 400, param, "%s", anvil_last_error());
}

static int json_schema_text(json_t *schema, const char *param, srv_guided_err *e, char **out)
{
    *out = json_dumps(schema, JSON_COMPACT | JSON_ENCODE_ANY);
    if (*out == NULL)
        return refuse(e, 500, NULL, "out of memory%s", NULL);
    (void)param;
    return 0;
}

static int from_response_format(srv_model *m, json_t *rf, anvil_grammar **out, srv_guided_err *e)
{
    const char *ty = json_string_value(json_object_get(rf, "type"));
    if (ty == NULL || strcmp(ty, "text") == 0)
        return 0; /* the caller checked the type */
    const anvil_grammar_vocab *v;
    if (strcmp(ty, "json_object") == 0) {
        if (vocab(m, &v, "response_format", e) < 0)
            return -1;
        return compiled(srv_guided_compile(srv_guided_cache(m), v, SRV_GUIDED_OBJECT, NULL, 0, out),
                        "response_format", e);
    }
    /* json_schema: {name, schema, strict, description}; always strict */
    json_t *js = json_object_get(rf, "json_schema");
    if (!json_is_object(js))
        return refuse(e, 400, "response_format.json_schema",
                      "'response_format' of type 'json_schema' needs a 'json_schema' object%s", NULL);
    json_t *name = json_object_get(js, "name"), *strict = json_object_get(js, "strict");
    if (name && !json_is_string(name))
        return refuse(e, 400, "response_format.json_schema.name", "'json_schema.name' must be a string%s", NULL);
    if (strict && !json_is_boolean(strict) && !json_is_null(strict))
        return refuse(e, 400, "response_format.json_schema.strict", "'json_schema.strict' must be a boolean%s",
                      NULL);
    json_t *schema = json_object_get(js, "schema");
    if (schema != NULL && !json_is_object(schema) && !json_is_boolean(schema))
        return refuse(e, 400, "response_format.json_schema.schema", "'json_schema.schema' must be an object%s",
                      NULL);
    if (vocab(m, &v, "response_format.json_schema.schema", e) < 0)
        return -1;
    srv_gcache *cache = srv_guided_cache(m);
    if (schema == NULL) /* no schema: any JSON object */
        return compiled(srv_guided_compile(cache, v, SRV_GUIDED_OBJECT, NULL, 0, out), "response_format", e);
    char *text;
    if (json_schema_text(schema, "response_format.json_schema.schema", e, &text) < 0)
        return -1;
    int rc = compiled(srv_guided_compile(cache, v, SRV_GUIDED_JSON, text, strlen(text), out),
                      "response_format.json_schema.schema", e);
    free(text);
    return rc;
}

static int from_guided(srv_model *m, const char *field, json_t *val, anvil_grammar **out, srv_guided_err *e)
{
    const anvil_grammar_vocab *v;
    if (strcmp(field, "guided_json") == 0) {
        const char *s;
        size_t len;
        char *text = NULL;
        if (json_is_string(val)) {
            s = json_string_value(val);
            len = json_string_length(val);
        } else if (json_is_object(val) || json_is_boolean(val)) {
            if (json_schema_text(val, field, e, &text) < 0)
                return -1;
            s = text;
            len = strlen(text);
        } else {
            return refuse(e, 400, "guided_json", "'guided_json' must be a JSON schema (an object or a string)%s",
                          NULL);
        }
        int rc = vocab(m, &v, field, e);
        if (rc == 0)
            rc = compiled(srv_guided_compile(srv_guided_cache(m), v, SRV_GUIDED_JSON, s, len, out), field, e);
        free(text);
        return rc;
    }
    if (strcmp(field, "guided_regex") == 0 || strcmp(field, "guided_grammar") == 0) {
        if (!json_is_string(val))
            return refuse(e, 400, field, "'%s' must be a string", field);
        if (vocab(m, &v, field, e) < 0)
            return -1;
        const char *s = json_string_value(val);
        const size_t len = json_string_length(val);
        return compiled(srv_guided_compile(srv_guided_cache(m), v, field[7] == 'r' ? SRV_GUIDED_REGEX : SRV_GUIDED_EBNF,
                                           s, len, out),
                        field, e);
    }
    /* guided_choice */
    if (!json_is_array(val) || json_array_size(val) == 0)
        return refuse(e, 400, field, "'guided_choice' must be a non-empty array of strings%s", NULL);
    const size_t n = json_array_size(val);
    if (n > 65536)
        return refuse(e, 400, field, "'guided_choice' has too many choices%s", NULL);
    const char **ch = malloc(n * sizeof *ch);
    size_t *lens = malloc(n * sizeof *lens);
    int rc = 0;
    if (ch == NULL || lens == NULL)
        rc = refuse(e, 500, NULL, "out of memory%s", NULL);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        json_t *c = json_array_get(val, i);
        if (!json_is_string(c))
            rc = refuse(e, 400, field, "'guided_choice' must be a non-empty array of strings%s", NULL);
        else {
            ch[i] = json_string_value(c);
            lens[i] = json_string_length(c);
        }
    }
    if (rc == 0)
        rc = vocab(m, &v, field, e);
    if (rc == 0)
        rc = compiled(compile_choice(srv_guided_cache(m), v, ch, lens, (int)n, out), field, e);
    free(ch);
    free(lens);
    return rc;
}

int srv_guided_map(srv_model *m, json_t *body, anvil_grammar **out, srv_guided_err *e)
{
    *out = NULL;
    static const char *const fields[] = {"guided_json", "guided_regex", "guided_choice", "guided_grammar"};
    const char *which = NULL;
    json_t *val = NULL;
    json_t *rf = json_object_get(body, "response_format");
    const char *ty = json_string_value(json_object_get(rf, "type"));
    if (ty && strcmp(ty, "text") != 0)
        which = "response_format";
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        json_t *f = json_object_get(body, fields[i]);
        if (f == NULL || json_is_null(f))
            continue;
        if (which != NULL)
            return refuse(e, 400, fields[i],
                          "only one kind of structured output per request ('response_format' or one guided_*: "
                          "'%s' comes with another)",
                          fields[i]);
        which = fields[i];
        val = f;
    }
    if (which == NULL)
        return 0;
    if (val == NULL)
        return from_response_format(m, rf, out, e);
    return from_guided(m, which, val, out, e);
}

void srv_guided_model_free(srv_model *m)
{
    srv_gcache_free(m->gcache); /* its grammars use the vocabulary */
    m->gcache = NULL;
    anvil_grammar_vocab_free(m->guided_vocab);
    m->guided_vocab = NULL;
}
