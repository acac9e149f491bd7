/* POST /v1/completions and /v1/chat/completions: the OpenAI request fields
 * checked (types and ranges, as OpenAI documents them) and turned into an
 * executor request. Errors come back as an HTTP status and an OpenAI error
 * object naming the parameter. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/server_internal.h"

json_t *srv_error_json(const char *message, const char *type, const char *param, const char *code)
{
    json_t *e = json_object();
    json_object_set_new(e, "message", json_string(message ? message : "error"));
    json_object_set_new(e, "type", json_string(type));
    json_object_set_new(e, "param", param ? json_string(param) : json_null());
    json_object_set_new(e, "code", code ? json_string(code) : json_null());
    json_t *o = json_object();
    json_object_set_new(o, "error", e);
    return o;
}

typedef struct parse_ctx {
    int *status;
    json_t **err;
} parse_ctx;

static int fail(parse_ctx *c, int status, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int fail(parse_ctx *c, int status, const char *param, const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    *c->status = status;
    const char *type = status == 404   ? "invalid_request_error"
                       : status == 429 ? "rate_limit_exceeded"
                       : status >= 500 ? "server_error"
                                       : "invalid_request_error";
    *c->err = srv_error_json(msg, type, param, code);
    return -1;
}

/* 1 present, 0 absent or null, -1 failed */
static int num(parse_ctx *c, json_t *b, const char *k, double lo, double hi, double *out)
{
    json_t *v = json_object_get(b, k);
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_number(v))
        return fail(c, 400, k, "invalid_type", "'%s' must be a number", k);
    double d = json_number_value(v);
    if (!(d >= lo && d <= hi))
        return fail(c, 400, k, "invalid_value", "'%s' must be in [%g, %g], got %g", k, lo, hi, d);
    *out = d;
    return 1;
}

static int integer(parse_ctx *c, json_t *b, const char *k, int64_t lo, int64_t hi, int64_t *out)
{
    json_t *v = json_object_get(b, k);
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_integer(v))
        return fail(c, 400, k, "invalid_type", "'%s' must be an integer", k);
    int64_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return fail(c, 400, k, "invalid_value", "'%s' must be in %" PRId64 "..%" PRId64 ", got %" PRId64, k, lo,
                    hi, x);
    *out = x;
    return 1;
}

static int boolean(parse_ctx *c, json_t *b, const char *k, int *out)
{
    json_t *v = json_object_get(b, k);
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_boolean(v))
        return fail(c, 400, k, "invalid_type", "'%s' must be a boolean", k);
    *out = json_is_true(v);
    return 1;
}

static int string_field(parse_ctx *c, json_t *b, const char *k)
{
    json_t *v = json_object_get(b, k);
    if (v && !json_is_null(v) && !json_is_string(v))
        return fail(c, 400, k, "invalid_type", "'%s' must be a string", k);
    return 0;
}

/* The chat messages with content parts flattened to text (templates expect
 * strings), checked. Returns a new array or NULL (failed). */
static json_t *chat_messages(parse_ctx *c, json_t *msgs)
{
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        fail(c, 400, "messages", "invalid_type", "'messages' must be a non-empty array of messages");
        return NULL;
    }
    json_t *out = json_array();
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        json_t *role = json_object_get(m, "role");
        if (!json_is_object(m) || !json_is_string(role)) {
            fail(c, 400, "messages", "invalid_type", "messages[%zu] must be an object with a string 'role'", i);
            json_decref(out);
            return NULL;
        }
        json_t *copy = json_deep_copy(m);
        json_t *content = json_object_get(m, "content");
        if (json_is_array(content)) {
            size_t total = 0, j;
            json_t *part;
            json_array_foreach(content, j, part) total += json_string_length(json_object_get(part, "text")) + 1;
            char *text = calloc(total + 1, 1);
            size_t at = 0;
            json_array_foreach(content, j, part)
            {
                json_t *t = json_object_get(part, "text");
                json_t *ty = json_object_get(part, "type");
                if (!json_is_string(t) || (ty && !(json_is_string(ty) && strcmp(json_string_value(ty), "text") == 0))) {
                    free(text);
                    json_decref(copy);
                    json_decref(out);
                    fail(c, 400, "messages", "invalid_value", "messages[%zu]: only text content parts are supported",
                         i);
                    return NULL;
                }
                if (text) {
                    memcpy(text + at, json_string_value(t), json_string_length(t));
                    at += json_string_length(t);
                }
            }
            json_object_set_new(copy, "content", json_stringn(text ? text : "", at));
            free(text);
        } else if (content && !json_is_string(content) && !json_is_null(content)) {
            json_decref(copy);
            json_decref(out);
            fail(c, 400, "messages", "invalid_type", "messages[%zu].content must be a string or an array of parts",
                 i);
            return NULL;
        }
        json_array_append_new(out, copy);
    }
    return out;
}

static srv_model *find_model(struct anvil_server *s, json_t *body, parse_ctx *c)
{
    json_t *m = json_object_get(body, "model");
    if (m == NULL || json_is_null(m))
        return &s->models[0];
    if (!json_is_string(m)) {
        fail(c, 400, "model", "invalid_type", "'model' must be a string");
        return NULL;
    }
    for (int i = 0; i < s->n_models; i++)
        if (strcmp(s->models[i].name, json_string_value(m)) == 0)
            return &s->models[i];
    fail(c, 404, "model", "model_not_found", "The model '%s' does not exist", json_string_value(m));
    return NULL;
}

/* The prompt's token ids (*ids malloc'd). */
static int prompt_ids(parse_ctx *c, srv_model *m, json_t *body, int chat, int add_special, int32_t **ids,
                      int64_t *n)
{
    *ids = NULL;
    const char *param = chat ? "messages" : "prompt";
    char *text = NULL;
    json_t *p = json_object_get(body, "prompt");
    if (chat) {
        if (m->tmpl == NULL)
            return fail(c, 400, "messages", "no_chat_template",
                        "The model '%s' has no chat template (start the server with --chat-template FILE)",
                        m->name);
        json_t *msgs = chat_messages(c, json_object_get(body, "messages"));
        if (msgs == NULL)
            return -1;
        char *js = json_dumps(msgs, JSON_COMPACT);
        json_decref(msgs);
        anvil_chat_render_options ro = {.add_generation_prompt = 1};
        json_t *agp = json_object_get(body, "add_generation_prompt");
        if (json_is_boolean(agp))
            ro.add_generation_prompt = json_is_true(agp);
        anvil_status st = js ? anvil_chat_template_render(m->tmpl, js, &ro, &text) : ANVIL_ERR_OOM;
        free(js);
        if (st != ANVIL_OK)
            return fail(c, 400, "messages", "chat_template_error", "%s", anvil_last_error());
    } else {
        /* a string, a token array, or a list of exactly one of those */
        if (json_is_array(p) && json_array_size(p) == 1 &&
            (json_is_string(json_array_get(p, 0)) || json_is_array(json_array_get(p, 0))))
            p = json_array_get(p, 0);
        if (json_is_string(p)) {
            text = strdup(json_string_value(p));
        } else if (json_is_array(p) && json_array_size(p) > 0) {
            size_t k = json_array_size(p);
            *ids = malloc(k * sizeof **ids);
            if (*ids == NULL)
                return fail(c, 500, NULL, NULL, "out of memory");
            for (size_t i = 0; i < k; i++) {
                json_t *e = json_array_get(p, i);
                if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > INT32_MAX) {
                    free(*ids);
                    *ids = NULL;
                    return fail(c, 400, "prompt", "invalid_type",
                                "'prompt' must be a string or an array of token ids (one prompt per request)");
                }
                (*ids)[i] = (int32_t)json_integer_value(e);
            }
            *n = (int64_t)k;
            return 0;
        } else {
            return fail(c, 400, "prompt", "invalid_type",
                        "'prompt' must be a non-empty string or array of token ids (one prompt per request)");
        }
    }
    if (text == NULL)
        return fail(c, 500, NULL, NULL, "out of memory");
    if (m->tok == NULL) {
        free(text);
        return fail(c, 400, param, NULL, "The model '%s' has no tokenizer: send token ids", m->name);
    }
    anvil_status st = anvil_tokenizer_encode(m->tok, text, strlen(text), add_special, ids, n);
    free(text);
    if (st != ANVIL_OK)
        return fail(c, 400, param, NULL, "%s", anvil_last_error());
    return 0;
}

static atomic_uint_fast64_t rid_counter;

int srv_openai_generate(struct anvil_server *s, json_t *body, int chat, srv_gen **out, int *status, json_t **err)
{
    *out = NULL;
    parse_ctx pc = {status, err}, *c = &pc;
    srv_model *m = find_model(s, body, c);
    if (m == NULL)
        return -1;
    anvil_request r;
    anvil_request_init(&r);
    double d;
    int64_t v;
    int b, got, stream = 0, include_usage = 0;
    r.max_tokens = chat ? 0 : 16; /* OpenAI's defaults: 16 for completions, the context for chat */
    if (string_field(c, body, "user") || string_field(c, body, "model"))
        return -1;
#define NUM(k, lo, hi, field)                                 \
    if ((got = num(c, body, k, lo, hi, &d)) < 0)              \
        return -1;                                            \
    if (got)                                                  \
        r.field = (float)d;
#define INT(k, lo, hi, field)                                 \
    if ((got = integer(c, body, k, lo, hi, &v)) < 0)          \
        return -1;                                            \
    if (got)                                                  \
        r.field = (int32_t)v;
#define BOOL(k, field)                                        \
    if ((got = boolean(c, body, k, &b)) < 0)                  \
        return -1;                                            \
    if (got)                                                  \
        r.field = b;
    NUM("temperature", 0, 2, temperature)
    NUM("top_p", 1e-9, 1, top_p)
    NUM("presence_penalty", -2, 2, presence_penalty)
    NUM("frequency_penalty", -2, 2, frequency_penalty)
    NUM("min_p", 0, 1, min_p)
    NUM("repetition_penalty", 1e-6, 1e6, repetition_penalty)
    INT("max_tokens", 1, INT32_MAX, max_tokens)
    INT("max_completion_tokens", 1, INT32_MAX, max_tokens)
    INT("n", 1, 128, n)
    INT("top_k", -1, INT32_MAX, top_k)
    INT("min_tokens", 0, INT32_MAX, min_tokens)
    BOOL("ignore_eos", ignore_eos)
    BOOL("skip_special_tokens", skip_special_tokens)
#undef NUM
#undef INT
#undef BOOL
    if ((got = integer(c, body, "seed", INT64_MIN, INT64_MAX, &v)) < 0)
        return -1;
    if (got) {
        r.seed = (uint64_t)v;
        r.has_seed = 1;
    }
    if (boolean(c, body, "stream", &stream) < 0)
        return -1;
    json_t *so = json_object_get(body, "stream_options");
    if (so && !json_is_null(so)) {
        if (!json_is_object(so))
            return fail(c, 400, "stream_options", "invalid_type", "'stream_options' must be an object");
        if (boolean(c, so, "include_usage", &include_usage) < 0)
            return -1;
    }
    int echo = 0;
    if (boolean(c, body, "echo", &echo) < 0)
        return -1;
    if (echo)
        return fail(c, 400, "echo", "unsupported", "'echo' is not supported");
    if (chat) {
        int lp = 0;
        if (boolean(c, body, "logprobs", &lp) < 0)
            return -1;
        int64_t top = 0;
        if ((got = integer(c, body, "top_logprobs", 0, 20, &top)) < 0)
            return -1;
        if (got && !lp)
            return fail(c, 400, "top_logprobs", "invalid_value", "'top_logprobs' requires 'logprobs': true");
        r.logprobs = lp ? (int32_t)top : -1;
    } else {
        if ((got = integer(c, body, "logprobs", 0, 20, &v)) < 0)
            return -1;
        if (got)
            r.logprobs = (int32_t)v;
    }
    int add_special = !chat;
    if (boolean(c, body, "add_special_tokens", &add_special) < 0)
        return -1;

    const char *stops[16];
    json_t *stop = json_object_get(body, "stop");
    if (json_is_string(stop)) {
        stops[0] = json_string_value(stop);
        r.n_stop = 1;
    } else if (json_is_array(stop) && json_array_size(stop) <= 16) {
        for (size_t i = 0; i < json_array_size(stop); i++) {
            if (!json_is_string(json_array_get(stop, i)) || json_string_length(json_array_get(stop, i)) == 0)
                return fail(c, 400, "stop", "invalid_type", "'stop' must be a string or up to 16 non-empty strings");
            stops[i] = json_string_value(json_array_get(stop, i));
        }
        r.n_stop = (int32_t)json_array_size(stop);
    } else if (stop && !json_is_null(stop)) {
        return fail(c, 400, "stop", "invalid_type", "'stop' must be a string or up to 16 non-empty strings");
    }
    if (json_is_string(stop) && json_string_length(stop) == 0)
        r.n_stop = 0;
    r.stop = stops;

    anvil_logit_bias bias[300];
    json_t *lb = json_object_get(body, "logit_bias");
    if (json_is_object(lb)) {
        if (json_object_size(lb) > 300)
            return fail(c, 400, "logit_bias", "invalid_value", "'logit_bias' has more than 300 entries");
        const char *key;
        json_t *val;
        int32_t k = 0;
        json_object_foreach(lb, key, val)
        {
            char *end = NULL;
            long t = strtol(key, &end, 10);
            if (end == key || *end || t < 0 || t > INT32_MAX || !json_is_number(val) ||
                json_number_value(val) < -100 || json_number_value(val) > 100)
                return fail(c, 400, "logit_bias", "invalid_value",
                            "'logit_bias' maps token ids (as strings) to numbers in [-100, 100]");
            bias[k].token = (int32_t)t;
            bias[k].bias = (float)json_number_value(val);
            k++;
        }
        r.logit_bias = bias;
        r.n_logit_bias = k;
    } else if (lb && !json_is_null(lb)) {
        return fail(c, 400, "logit_bias", "invalid_type", "'logit_bias' must be an object");
    }
    if (chat && !json_object_get(body, "messages"))
        return fail(c, 400, "messages", "missing_required_parameter", "'messages' is required");
    if (!chat && !json_object_get(body, "prompt"))
        return fail(c, 400, "prompt", "missing_required_parameter", "'prompt' is required");

    int32_t *ids = NULL;
    int64_t n_ids = 0;
    if (prompt_ids(c, m, body, chat, add_special, &ids, &n_ids) < 0)
        return -1;
    if (n_ids == 0) {
        free(ids);
        return fail(c, 400, chat ? "messages" : "prompt", "invalid_value", "the prompt is empty");
    }
    if (n_ids >= m->max_seq_len || (r.max_tokens > 0 && n_ids + r.max_tokens > m->max_seq_len)) {
        free(ids);
        return fail(c, 400, chat ? "messages" : "prompt", "context_length_exceeded",
                    "This model's maximum context length is %d tokens. However, you requested %" PRId64
                    " tokens (%" PRId64 " in the prompt, %d for the completion).",
                    m->max_seq_len, n_ids + r.max_tokens, n_ids, r.max_tokens);
    }
    r.prompt_ids = ids;
    r.n_prompt_ids = (int32_t)n_ids;

    srv_gen *g = calloc(1, sizeof *g);
    if (g == NULL || (g->role_sent = calloc((size_t)r.n, sizeof *g->role_sent)) == NULL) {
        free(g);
        free(ids);
        return fail(c, 500, NULL, NULL, "out of memory");
    }
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->refs = 2;
    g->srv = s;
    g->model = m;
    g->chat = chat;
    g->stream = stream;
    g->include_usage = stream && include_usage;
    g->n = r.n;
    g->logprobs = r.logprobs;
    g->top_as_chat = chat;
    g->http_status = 200;
    g->created = (long)time(NULL);
    snprintf(g->rid, sizeof g->rid, "%s-%016" PRIx64 "%08" PRIx64, chat ? "chatcmpl" : "cmpl",
             (uint64_t)time(NULL) * 2654435761u ^ (uint64_t)(uintptr_t)g, (uint64_t)atomic_fetch_add(&rid_counter, 1));
    g->t_enqueue = srv_now();
    r.on_event = srv_gen_on_event;
    r.user = g;
    uint64_t id = 0;
    anvil_status st = anvil_executor_enqueue(m->ex, &r, &id);
    free(ids);
    if (st != ANVIL_OK) {
        g->refs = 1;
        srv_gen_release(g);
        if (st == ANVIL_ERR_CAPACITY)
            return fail(c, 429, NULL, "queue_full", "The server is busy (%s); retry later", anvil_last_error());
        return fail(c, st == ANVIL_ERR_INVALID_ARG ? 400 : 500, NULL, NULL, "%s", anvil_last_error());
    }
    pthread_mutex_lock(&g->mu);
    g->id = id;
    pthread_mutex_unlock(&g->mu);
    *out = g;
    return 0;
}
