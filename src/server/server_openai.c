/* POST /v1/completions and /v1/chat/completions: the OpenAI request fields
 * checked (types and ranges, as OpenAI documents them) and mapped to
 * executor requests (srv_openai_map, no executor needed), then enqueued, one
 * executor request per prompt (srv_openai_generate). Errors come back as an
 * HTTP status and an OpenAI error object naming the parameter. */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/server_guided.h"
#include "server/server_openai.h"
#include "server/server_tools.h"

/* Cuts s (NUL-terminated) after its last complete UTF-8 sequence: a message
 * cut by snprintf must stay valid UTF-8 for json_string. */
static void utf8_trim(char *s)
{
    size_t n = strlen(s), i = n;
    while (i > 0 && ((unsigned char)s[i - 1] & 0xC0) == 0x80)
        i--;
    if (i == 0)
        return;
    unsigned char lead = (unsigned char)s[i - 1];
    size_t want = lead < 0x80 ? 1 : lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
    if (n - (i - 1) < want)
        s[i - 1] = '\0';
}

json_t *srv_error_json(const char *message, const char *type, const char *param, const char *code)
{
    json_t *e = json_object();
    json_t *msg = json_string(message ? message : "error");
    json_object_set_new(e, "message", msg ? msg : json_string("invalid request"));
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
    utf8_trim(msg);
    *c->status = status;
    const char *type = status == 429   ? "rate_limit_exceeded"
                       : status == 503 ? "service_unavailable"
                       : status >= 500 ? "server_error"
                                       : "invalid_request_error";
    *c->err = srv_error_json(msg, type, param, code);
    return -1;
}

/* A client's string for a message: at most 64 bytes, cut at a character. */
static const char *clip(const char *s, char buf[80])
{
    size_t n = strlen(s);
    if (n <= 64)
        return s;
    memcpy(buf, s, 64);
    buf[64] = '\0';
    utf8_trim(buf);
    strcat(buf, "...");
    return buf;
}

/* A field's value; NULL when absent or null (OpenAI treats null as absent). */
static json_t *get(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_null(v) ? NULL : v;
}

static int has_nul(json_t *str)
{
    return strlen(json_string_value(str)) != json_string_length(str);
}

/* 1 present, 0 absent or null, -1 failed. open_lo: lo itself is out, and
 * so is what rounds to it as a float (1e-300 would be a top_p of 0). */
static int num(parse_ctx *c, json_t *b, const char *k, double lo, double hi, int open_lo, double *out)
{
    json_t *v = get(b, k);
    if (v == NULL)
        return 0;
    if (!json_is_number(v))
        return fail(c, 400, k, "invalid_type", "'%s' must be a number", k);
    double d = json_number_value(v);
    if (!(open_lo ? (float)d > (float)lo : d >= lo) || !(d <= hi))
        return fail(c, 400, k, "invalid_value", "'%s' must be in %c%g, %g], got %g", k, open_lo ? '(' : '[',
                    lo, hi, d);
    *out = d;
    return 1;
}

/* An integer; an integral real (3.0) counts, as it does for OpenAI's own
 * validation. */
static int integer_v(parse_ctx *c, json_t *v, const char *k, int64_t lo, int64_t hi, int64_t *out)
{
    int64_t x;
    if (json_is_integer(v)) {
        x = json_integer_value(v);
    } else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v))) {
        double d = json_real_value(v);
        /* beyond 2^53 a double is no exact integer, and beyond 2^63 the cast is undefined */
        if (!(fabs(d) < 0x1p53))
            return fail(c, 400, k, "invalid_value", "'%s' must be in %" PRId64 "..%" PRId64 ", got %g", k, lo,
                        hi, d);
        x = (int64_t)d;
    } else {
        return fail(c, 400, k, "invalid_type", "'%s' must be an integer", k);
    }
    if (x < lo || x > hi)
        return fail(c, 400, k, "invalid_value", "'%s' must be in %" PRId64 "..%" PRId64 ", got %" PRId64, k,
                    lo, hi, x);
    *out = x;
    return 1;
}

static int integer(parse_ctx *c, json_t *b, const char *k, int64_t lo, int64_t hi, int64_t *out)
{
    json_t *v = get(b, k);
    return v ? integer_v(c, v, k, lo, hi, out) : 0;
}

static int boolean(parse_ctx *c, json_t *b, const char *k, int *out)
{
    json_t *v = get(b, k);
    if (v == NULL)
        return 0;
    if (!json_is_boolean(v))
        return fail(c, 400, k, "invalid_type", "'%s' must be a boolean", k);
    *out = json_is_true(v);
    return 1;
}

static int string_field(parse_ctx *c, json_t *b, const char *k)
{
    json_t *v = get(b, k);
    if (v && !json_is_string(v))
        return fail(c, 400, k, "invalid_type", "'%s' must be a string", k);
    if (v && has_nul(v))
        return fail(c, 400, k, "invalid_value", "'%s' must not contain a NUL character", k);
    return 0;
}

/* 1 when a string inside v (a chat message, the tools: what a chat template
 * gets) holds a NUL, with its place appended to path (cap bytes): the
 * rendered prompt is a C string, which a NUL would cut short. */
static int nul_inside(json_t *v, char *path, size_t cap)
{
    size_t at = strlen(path);
    if (json_is_string(v))
        return has_nul(v);
    size_t i;
    const char *k;
    json_t *e;
    if (json_is_array(v)) {
        json_array_foreach(v, i, e)
        {
            snprintf(path + at, cap - at, "[%zu]", i);
            if (nul_inside(e, path, cap))
                return 1;
        }
    } else if (json_is_object(v)) {
        json_object_foreach(v, k, e)
        {
            snprintf(path + at, cap - at, ".%s", k);
            utf8_trim(path); /* a key cut short must stay UTF-8 (the param is a JSON string) */
            if (nul_inside(e, path, cap))
                return 1;
        }
    }
    path[at] = '\0';
    return 0;
}

int srv_openai_model_name(json_t *body, const char **name, int *status, json_t **err)
{
    parse_ctx pc = {status, err}, *c = &pc;
    *name = NULL;
    json_t *m = get(body, "model");
    if (m == NULL)
        return 0;
    if (!json_is_string(m))
        return fail(c, 400, "model", "invalid_type", "'model' must be a string");
    if (has_nul(m))
        return fail(c, 400, "model", "invalid_value", "'model' must not contain a NUL character");
    *name = json_string_value(m);
    return 0;
}

void srv_mapped_free(srv_mapped *q)
{
    if (q == NULL)
        return;
    for (int i = 0; i < SRV_MAX_STOP; i++)
        free(q->stop[i]);
    free(q->bias);
    for (int32_t i = 0; i < q->n_prompts; i++) {
        free(q->prompts[i].ids);
        free(q->prompts[i].echo);
    }
    free(q->prompts);
    anvil_grammar_free(q->grammar);
    free(q);
}

static int64_t model_vocab(const srv_model *m)
{
    if (m->rt)
        return anvil_runtime_config(m->rt)->vocab_size;
    return m->tok ? anvil_tokenizer_vocab_size(m->tok) : INT32_MAX;
}

/* ------------------------------------------------------------ chat messages */

static const char *const ROLES[] = {"system", "developer", "user", "assistant", "tool", "function"};

/* A message's content as one string: a string, or a list of text parts
 * (joined with newlines, as vLLM does). NULL (after fail) otherwise. */
static json_t *content_text(parse_ctx *c, json_t *content, size_t i)
{
    char param[64];
    snprintf(param, sizeof param, "messages[%zu].content", i);
    if (json_is_string(content)) {
        if (has_nul(content))
            return fail(c, 400, param, "invalid_value", "%s must not contain a NUL character", param), NULL;
        return json_incref(content);
    }
    if (!json_is_array(content))
        return fail(c, 400, param, "invalid_type", "%s must be a string or an array of content parts", param),
               NULL;
    size_t total = 1, j;
    json_t *part;
    json_array_foreach(content, j, part)
    {
        json_t *t = json_object_get(part, "text"), *ty = json_object_get(part, "type");
        snprintf(param, sizeof param, "messages[%zu].content[%zu]", i, j);
        if (!json_is_object(part))
            return fail(c, 400, param, "invalid_type", "%s must be a content part object", param), NULL;
        if (json_is_string(ty) && has_nul(ty))
            return fail(c, 400, param, "invalid_value", "%s.type must not contain a NUL character", param), NULL;
        if (ty && !(json_is_string(ty) && strcmp(json_string_value(ty), "text") == 0))
            return fail(c, 400, param, "invalid_value", "%s: only text content parts are supported", param),
                   NULL;
        if (!json_is_string(t))
            return fail(c, 400, param, "invalid_type", "%s must have a string 'text'", param), NULL;
        if (has_nul(t))
            return fail(c, 400, param, "invalid_value", "%s must not contain a NUL character", param), NULL;
        total += json_string_length(t) + 1;
    }
    char *text = malloc(total);
    if (text == NULL)
        return fail(c, 500, NULL, NULL, "out of memory"), NULL;
    size_t at = 0;
    json_array_foreach(content, j, part)
    {
        json_t *t = json_object_get(part, "text");
        if (j > 0)
            text[at++] = '\n';
        memcpy(text + at, json_string_value(t), json_string_length(t));
        at += json_string_length(t);
    }
    json_t *s = json_stringn(text, at);
    free(text);
    if (s == NULL)
        fail(c, 500, NULL, NULL, "out of memory");
    return s;
}

/* The chat messages checked (roles, content) with content parts flattened
 * to text (templates expect strings). Returns a new array or NULL (failed). */
static int args_as_objects(json_t *msg);

static json_t *chat_messages(parse_ctx *c, json_t *msgs)
{
    if (msgs == NULL)
        return fail(c, 400, "messages", "missing_required_parameter", "'messages' is required"), NULL;
    if (!json_is_array(msgs))
        return fail(c, 400, "messages", "invalid_type", "'messages' must be an array of messages"), NULL;
    if (json_array_size(msgs) == 0)
        return fail(c, 400, "messages", "invalid_value", "'messages' must not be empty"), NULL;
    json_t *out = json_array();
    size_t i;
    json_t *m;
    char param[64], cbuf[80];
    json_array_foreach(msgs, i, m)
    {
        snprintf(param, sizeof param, "messages[%zu]", i);
        if (!json_is_object(m)) {
            fail(c, 400, param, "invalid_type", "%s must be an object", param);
            goto fail;
        }
        json_t *role = json_object_get(m, "role");
        snprintf(param, sizeof param, "messages[%zu].role", i);
        if (role == NULL || json_is_null(role)) {
            fail(c, 400, param, "missing_required_parameter", "%s is required", param);
            goto fail;
        }
        if (!json_is_string(role)) {
            fail(c, 400, param, "invalid_type", "%s must be a string", param);
            goto fail;
        }
        if (has_nul(role)) {
            fail(c, 400, param, "invalid_value", "%s must not contain a NUL character", param);
            goto fail;
        }
        size_t r = 0;
        while (r < sizeof ROLES / sizeof ROLES[0] && strcmp(json_string_value(role), ROLES[r]) != 0)
            r++;
        if (r == sizeof ROLES / sizeof ROLES[0]) {
            fail(c, 400, param, "invalid_value",
                 "Invalid value '%s' for %s: supported roles are system, developer, user, assistant, tool, "
                 "function",
                 clip(json_string_value(role), cbuf), param);
            goto fail;
        }
        json_t *copy = json_deep_copy(m);
        if (copy == NULL || json_array_append_new(out, copy) != 0)
            goto oom;
        if (args_as_objects(copy) < 0)
            goto oom;
        json_t *content = get(m, "content");
        if (content == NULL) {
            /* an assistant turn may carry tool calls instead (OpenAI's rule) */
            if (strcmp(ROLES[r], "assistant") != 0) {
                snprintf(param, sizeof param, "messages[%zu].content", i);
                fail(c, 400, param, "missing_required_parameter", "%s is required for role '%s'", param,
                     ROLES[r]);
                goto fail;
            }
            /* templates print content: without tool calls (none, null or []), an empty turn */
            if (json_array_size(json_object_get(m, "tool_calls")) == 0 &&
                json_object_set_new(copy, "content", json_string("")))
                goto oom;
            continue;
        }
        json_t *text = content_text(c, content, i);
        if (text == NULL)
            goto fail;
        json_object_set_new(copy, "content", text);
    }
    json_array_foreach(msgs, i, m)
    {
        char path[128];
        snprintf(path, sizeof path, "messages[%zu]", i);
        if (nul_inside(m, path, sizeof path)) {
            fail(c, 400, path, "invalid_value", "%s must not contain a NUL character", path);
            goto fail;
        }
    }
    return out;
oom:
    fail(c, 500, NULL, NULL, "out of memory");
fail:
    json_decref(out);
    return NULL;
}

/* A past call's arguments (a JSON string, as OpenAI sends them) as the
 * object they hold: templates print them with tojson (Llama 3.1, Qwen2.5,
 * Mistral), which would quote the string again. vLLM does the same. */
static int args_as_objects(json_t *msg)
{
    size_t i;
    json_t *tc;
    json_array_foreach(json_object_get(msg, "tool_calls"), i, tc)
    {
        json_t *f = json_object_get(tc, "function");
        json_t *a = json_object_get(f, "arguments");
        if (!json_is_string(a))
            continue;
        json_t *o = json_loadb(json_string_value(a), json_string_length(a), 0, NULL);
        if (json_is_object(o)) {
            if (json_object_set_new(f, "arguments", o) != 0)
                return -1;
        } else {
            json_decref(o);
        }
    }
    return 0;
}

/* The model's tool-call syntax: --tool-call-parser, else what its template
 * and tokenizer show (read once, under guided_mu). */
static int model_tool_parser(srv_model *m)
{
    if (m->srv && m->srv->tool_parser != SRV_TOOLS_AUTO)
        return m->srv->tool_parser;
    pthread_mutex_lock(&m->guided_mu);
    if (m->tool_parser == 0)
        m->tool_parser = srv_tools_detect(m->tmpl, m->tok) + 1;
    int p = m->tool_parser - 1;
    pthread_mutex_unlock(&m->guided_mu);
    return p;
}

/* tools / tool_choice / parallel_tool_calls / functions (docs/server.md,
 * "Tool calls"): checked; with a tool_choice other than none the outputs
 * are parsed for calls (q->tools_active), and with "required" or a named
 * function a grammar forces one (q->grammar) after the prompt's *tail.
 * tools_json (malloc'd, may stay NULL) is what the chat template sees. */
static int chat_tools(parse_ctx *c, srv_mapped *q, json_t *body, char **tools_json, const char **tail)
{
    *tools_json = NULL;
    *tail = "";
    json_t *tools = get(body, "tools"), *choice = get(body, "tool_choice"), *fns = get(body, "functions");
    if (tools && !json_is_array(tools))
        return fail(c, 400, "tools", "invalid_type", "'tools' must be an array of tools");
    size_t i;
    json_t *t;
    char path[128] = "tools";
    json_array_foreach(tools, i, t)
    {
        json_t *f = json_object_get(t, "function"), *ty = json_object_get(t, "type");
        if (!json_is_object(t) || !json_is_string(ty) || strcmp(json_string_value(ty), "function") != 0 ||
            !json_is_object(f) || !json_is_string(json_object_get(f, "name")))
            return fail(c, 400, "tools", "invalid_value",
                        "tools[%zu] must be {\"type\": \"function\", \"function\": {\"name\": ...}}", i);
        json_t *params = get(f, "parameters");
        if (params && !json_is_object(params))
            return fail(c, 400, "tools", "invalid_value",
                        "tools[%zu].function.parameters must be a JSON schema object", i);
    }
    if (tools && nul_inside(tools, path, sizeof path))
        return fail(c, 400, path, "invalid_value", "%s must not contain a NUL character", path);
    const char *ch = NULL, *named = NULL;
    if (choice) {
        if (json_is_string(choice))
            ch = json_string_value(choice);
        else if (!json_is_object(choice))
            return fail(c, 400, "tool_choice", "invalid_type", "'tool_choice' must be a string or an object");
        if (ch && has_nul(choice))
            return fail(c, 400, "tool_choice", "invalid_value", "'tool_choice' must not contain a NUL character");
        if (ch && strcmp(ch, "none") != 0 && strcmp(ch, "auto") != 0 && strcmp(ch, "required") != 0)
            return fail(c, 400, "tool_choice", "invalid_value",
                        "'tool_choice' must be \"none\", \"auto\", \"required\" or a function");
        if (ch == NULL) {
            json_t *ty = json_object_get(choice, "type"), *f = json_object_get(choice, "function");
            json_t *name = json_object_get(f, "name");
            if (!json_is_string(ty) || strcmp(json_string_value(ty), "function") != 0 || !json_is_string(name))
                return fail(c, 400, "tool_choice", "invalid_value",
                            "'tool_choice' as an object must be {\"type\": \"function\", \"function\": "
                            "{\"name\": ...}}");
            char cpath[128] = "tool_choice";
            if (nul_inside(choice, cpath, sizeof cpath))
                return fail(c, 400, "tool_choice", "invalid_value", "%s must not contain a NUL character", cpath);
            named = json_string_value(name);
        }
    }
    size_t n_tools = tools ? json_array_size(tools) : 0;
    if (n_tools == 0 && choice && !(ch && (strcmp(ch, "none") == 0 || strcmp(ch, "auto") == 0)))
        return fail(c, 400, "tool_choice", "invalid_value", "'tool_choice' needs 'tools'");
    if (named) {
        for (i = 0; i < n_tools; i++) {
            t = json_object_get(json_array_get(tools, i), "function");
            if (strcmp(json_string_value(json_object_get(t, "name")), named) == 0)
                break;
        }
        char buf[80];
        if (i == n_tools)
            return fail(c, 400, "tool_choice", "invalid_value",
                        "'tool_choice' names the function '%s', which is not in 'tools'", clip(named, buf));
    }
    int parallel = 1;
    if (boolean(c, body, "parallel_tool_calls", &parallel) < 0)
        return -1;
    if (fns && !(json_is_array(fns) && json_array_size(fns) == 0))
        return fail(c, 400, "functions", "unsupported",
                    "legacy function calling ('functions') is not supported: use 'tools'");
    if (get(body, "function_call"))
        return fail(c, 400, "function_call", "unsupported",
                    "legacy function calling ('function_call') is not supported: use 'tool_choice'");
    if (n_tools == 0)
        return 0;
    /* the model sees the tools, with tool_choice none too (vLLM's default) */
    *tools_json = json_dumps(tools, JSON_COMPACT);
    if (*tools_json == NULL)
        return fail(c, 500, NULL, NULL, "out of memory");
    if (ch && strcmp(ch, "none") == 0)
        return 0;
    q->tools_active = 1;
    q->tool_parser = model_tool_parser(q->model);
    q->tools_forced = named != NULL || (ch && strcmp(ch, "required") == 0);
    /* the markers of Llama's and Mistral's calls are special tokens: kept
     * in the text (as vLLM does) unless the client says otherwise */
    if ((q->tool_parser == SRV_TOOLS_LLAMA3 || q->tool_parser == SRV_TOOLS_MISTRAL) &&
        get(body, "skip_special_tokens") == NULL)
        q->req.skip_special_tokens = 0;
    if (!q->tools_forced)
        return 0;
    if (q->grammar)
        return fail(c, 400, "tool_choice", "invalid_value",
                    "'tool_choice' \"required\" or a named function cannot be combined with 'response_format' or "
                    "guided_* (both constrain the output)");
    srv_guided_err e;
    const anvil_grammar_vocab *v;
    if (srv_guided_vocab(q->model, &v, "tool_choice", &e) < 0)
        return fail(c, e.status, e.param, e.status == 400 ? "invalid_value" : NULL, "%s", e.msg);
    int st = 0;
    char msg[512];
    if (srv_tools_force_cached(srv_guided_cache(q->model), v, q->tool_parser, tools, named, parallel, &q->grammar,
                               tail, &st, msg, sizeof msg) < 0)
        return fail(c, st, st == 400 ? "tools" : NULL, st == 400 ? "invalid_value" : NULL,
                    "the tools' parameters: %s", msg);
    q->req.grammar = q->grammar;
    return 0;
}

static int response_format(parse_ctx *c, json_t *body)
{
    json_t *rf = get(body, "response_format");
    if (rf == NULL)
        return 0;
    json_t *t = json_object_get(rf, "type");
    if (!json_is_object(rf) || !json_is_string(t))
        return fail(c, 400, "response_format", "invalid_type",
                    "'response_format' must be an object with a 'type'");
    if (has_nul(t))
        return fail(c, 400, "response_format", "invalid_value",
                    "'response_format.type' must not contain a NUL character");
    const char *ty = json_string_value(t);
    if (strcmp(ty, "text") == 0)
        return 0;
    if (strcmp(ty, "json_object") == 0 || strcmp(ty, "json_schema") == 0)
        return 0; /* compiled by structured_output() */
    char buf[80];
    return fail(c, 400, "response_format", "invalid_value",
                "'response_format.type' must be \"text\", \"json_object\" or \"json_schema\", got '%s'",
                clip(ty, buf));
}

/* response_format / guided_*: the grammar the request's samples follow. */
static int structured_output(parse_ctx *c, srv_mapped *q, json_t *body)
{
    srv_guided_err e;
    if (srv_guided_map(q->model, body, &q->grammar, &e) < 0)
        return fail(c, e.status, e.param, e.status == 400 ? "invalid_value" : NULL, "%s", e.msg);
    q->req.grammar = q->grammar;
    return 0;
}

/* ------------------------------------------------------------ prompts */

static int add_ids(parse_ctx *c, srv_prompt *p, int64_t n, const char *param)
{
    if (n == 0)
        return fail(c, 400, param, "invalid_value", "the prompt is empty");
    if (n >= INT32_MAX)
        return fail(c, 400, param, "context_length_exceeded", "the prompt is too long");
    p->n_ids = (int32_t)n;
    return 0;
}

static int tokenize(parse_ctx *c, const srv_model *m, const char *text, size_t len, int add_special,
                    srv_prompt *p, const char *param)
{
    if (m->tok == NULL)
        return fail(c, 400, param, NULL, "The model '%s' has no tokenizer: send token ids", m->name);
    int64_t n = 0;
    if (anvil_tokenizer_encode(m->tok, text, len, add_special, &p->ids, &n) != ANVIL_OK)
        return fail(c, 400, param, "invalid_value", "%s", anvil_last_error());
    return add_ids(c, p, n, param);
}

/* A list of token ids (checked against the vocabulary) as prompt p. */
static int token_prompt(parse_ctx *c, const srv_model *m, json_t *a, srv_prompt *p)
{
    size_t k = json_array_size(a);
    if (k == 0)
        return fail(c, 400, "prompt", "invalid_value", "the prompt is empty");
    if (k >= INT32_MAX)
        return fail(c, 400, "prompt", "context_length_exceeded", "the prompt is too long");
    p->ids = malloc(k * sizeof *p->ids);
    if (p->ids == NULL)
        return fail(c, 500, NULL, NULL, "out of memory");
    int64_t vocab = model_vocab(m);
    for (size_t i = 0; i < k; i++) {
        json_t *e = json_array_get(a, i);
        if (!json_is_integer(e))
            return fail(
                c, 400, "prompt", "invalid_type",
                "'prompt' must be a string, an array of token ids, or an array of either (token %zu is "
                "not an integer)",
                i);
        json_int_t t = json_integer_value(e);
        if (t < 0 || t >= vocab)
            return fail(c, 400, "prompt", "invalid_value",
                        "prompt token %" PRId64 " (at %zu) is outside the vocabulary (0..%" PRId64 ")",
                        (int64_t)t, i, vocab - 1);
        p->ids[i] = (int32_t)t;
    }
    return add_ids(c, p, (int64_t)k, "prompt");
}

/* The prompts of a completions request: a string, a list of token ids, a
 * list of strings, or a list of token-id lists (OpenAI's four forms). */
static int completion_prompts(parse_ctx *c, srv_mapped *q, json_t *p, int add_special)
{
    if (p == NULL)
        return fail(c, 400, "prompt", "missing_required_parameter", "'prompt' is required");
    if (!json_is_string(p) && !json_is_array(p))
        return fail(c, 400, "prompt", "invalid_type",
                    "'prompt' must be a string, an array of token ids, or an array of either");
    if (json_is_array(p) && json_array_size(p) == 0)
        return fail(c, 400, "prompt", "invalid_value", "'prompt' must not be empty");
    json_t *first = json_is_array(p) ? json_array_get(p, 0) : p;
    int single = json_is_string(p) || json_is_number(first);
    size_t k = single ? 1 : json_array_size(p);
    if (k > SRV_MAX_PROMPTS)
        return fail(c, 400, "prompt", "invalid_value", "'prompt' holds %zu prompts; at most %d are allowed",
                    k, SRV_MAX_PROMPTS);
    int strings = json_is_string(first);
    if (!single && !strings && !json_is_array(first))
        return fail(c, 400, "prompt", "invalid_type",
                    "'prompt' must be a string, an array of token ids, or an array of either");
    q->prompts = calloc(k, sizeof *q->prompts);
    if (q->prompts == NULL)
        return fail(c, 500, NULL, NULL, "out of memory");
    q->n_prompts = (int32_t)k;
    for (size_t i = 0; i < k; i++) {
        json_t *e = single ? p : json_array_get(p, i);
        srv_prompt *sp = &q->prompts[i];
        if (!single && (strings ? !json_is_string(e) : !json_is_array(e)))
            return fail(
                c, 400, "prompt", "invalid_type",
                "'prompt' as a list must hold only strings or only token-id lists (element %zu differs)", i);
        if (json_is_string(e)) {
            /* allowed by JSON, but a NUL in a prompt is far likelier a client's bug */
            if (has_nul(e))
                return fail(c, 400, "prompt", "invalid_value", "'prompt' must not contain a NUL character");
            if (tokenize(c, q->model, json_string_value(e), json_string_length(e), add_special, sp,
                         "prompt") < 0)
                return -1;
            if (q->echo) {
                sp->echo = malloc(json_string_length(e) + 1);
                if (sp->echo == NULL)
                    return fail(c, 500, NULL, NULL, "out of memory");
                memcpy(sp->echo, json_string_value(e), json_string_length(e) + 1);
                sp->echo_len = json_string_length(e);
            }
        } else {
            if (token_prompt(c, q->model, e, sp) < 0)
                return -1;
            if (q->echo && q->model->tok &&
                anvil_tokenizer_decode(q->model->tok, sp->ids, sp->n_ids, q->req.skip_special_tokens,
                                       &sp->echo, &sp->echo_len) != ANVIL_OK)
                return fail(c, 500, NULL, NULL, "%s", anvil_last_error());
        }
    }
    return 0;
}

/* The chat prompt: the messages rendered with the model's template, tokenized. */
static int chat_prompt(parse_ctx *c, srv_mapped *q, json_t *body, int add_special)
{
    const srv_model *m = q->model;
    json_t *msgs = chat_messages(c, get(body, "messages"));
    if (msgs == NULL)
        return -1;
    anvil_chat_render_options ro = {.add_generation_prompt = 1};
    int agp = 1;
    char *tools = NULL;
    const char *tail = "";
    if (boolean(c, body, "add_generation_prompt", &agp) < 0 || chat_tools(c, q, body, &tools, &tail) < 0) {
        json_decref(msgs);
        free(tools); /* a tools refusal after they were written out */
        return -1;
    }
    if (m->tmpl == NULL) {
        json_decref(msgs);
        free(tools);
        return fail(c, 400, "messages", "no_chat_template",
                    "The model '%s' has no chat template (start the server with --chat-template FILE)",
                    m->name);
    }
    ro.add_generation_prompt = agp;
    ro.tools_json = tools;
    char *js = json_dumps(msgs, JSON_COMPACT), *text = NULL;
    json_decref(msgs);
    anvil_status st = js ? anvil_chat_template_render(m->tmpl, js, &ro, &text) : ANVIL_ERR_OOM;
    free(js);
    free(tools);
    if (st == ANVIL_ERR_OOM)
        return fail(c, 500, NULL, NULL, "out of memory");
    if (st != ANVIL_OK)
        return fail(c, 400, "messages", "chat_template_error", "%s", anvil_last_error());
    q->prompts = calloc(1, sizeof *q->prompts);
    if (q->prompts == NULL) {
        free(text);
        return fail(c, 500, NULL, NULL, "out of memory");
    }
    q->n_prompts = 1;
    if (tail[0]) { /* a forced call: the prompt ends with its opening marker */
        size_t n = strlen(text);
        char *t2 = realloc(text, n + strlen(tail) + 1);
        if (t2 == NULL) {
            free(text);
            return fail(c, 500, NULL, NULL, "out of memory");
        }
        text = t2;
        memcpy(text + n, tail, strlen(tail) + 1);
    }
    int r = tokenize(c, m, text, strlen(text), add_special, &q->prompts[0], "messages");
    free(text);
    return r;
}

/* ------------------------------------------------------------ the other fields */

static int stop_strings(parse_ctx *c, srv_mapped *q, json_t *body)
{
    json_t *stop = get(body, "stop");
    if (stop == NULL || (json_is_string(stop) && json_string_length(stop) == 0))
        return 0;
    json_t *one[1] = {stop};
    size_t k = 1;
    if (json_is_array(stop)) {
        k = json_array_size(stop);
        if (k > SRV_MAX_STOP)
            return fail(c, 400, "stop", "invalid_value", "'stop' has %zu strings; at most %d are allowed", k,
                        SRV_MAX_STOP);
    } else if (!json_is_string(stop)) {
        return fail(c, 400, "stop", "invalid_type", "'stop' must be a string or an array of up to %d strings",
                    SRV_MAX_STOP);
    }
    for (size_t i = 0; i < k; i++) {
        json_t *s = json_is_array(stop) ? json_array_get(stop, i) : one[0];
        if (!json_is_string(s))
            return fail(c, 400, "stop", "invalid_type",
                        "'stop' must be a string or an array of up to %d strings", SRV_MAX_STOP);
        if (json_string_length(s) == 0)
            return fail(c, 400, "stop", "invalid_value", "stop string %zu is empty", i);
        if (has_nul(s))
            return fail(c, 400, "stop", "invalid_value", "stop string %zu contains a NUL character", i);
        q->stop[i] = strdup(json_string_value(s));
        if (q->stop[i] == NULL)
            return fail(c, 500, NULL, NULL, "out of memory");
    }
    q->req.stop = (const char *const *)q->stop;
    q->req.n_stop = (int32_t)k;
    return 0;
}

static int logit_bias(parse_ctx *c, srv_mapped *q, json_t *body)
{
    json_t *lb = get(body, "logit_bias");
    if (lb == NULL)
        return 0;
    if (!json_is_object(lb))
        return fail(c, 400, "logit_bias", "invalid_type", "'logit_bias' must be an object");
    size_t k = json_object_size(lb);
    if (k > SRV_MAX_LOGIT_BIAS)
        return fail(c, 400, "logit_bias", "invalid_value",
                    "'logit_bias' has %zu entries; at most %d are allowed", k, SRV_MAX_LOGIT_BIAS);
    if (k == 0)
        return 0;
    q->bias = calloc(k, sizeof *q->bias);
    if (q->bias == NULL)
        return fail(c, 500, NULL, NULL, "out of memory");
    int64_t vocab = model_vocab(q->model);
    const char *key;
    size_t key_len;
    json_t *val;
    int32_t n = 0;
    char buf[80];
    json_object_keylen_foreach(lb, key, key_len, val)
    {
        /* a token id in decimal, nothing else (no sign, space or exponent) */
        int64_t t = 0;
        size_t i = 0;
        while (i < key_len && i < 11 && key[i] >= '0' && key[i] <= '9')
            t = t * 10 + (key[i++] - '0');
        if (i == 0 || i != key_len)
            return fail(c, 400, "logit_bias", "invalid_value",
                        "'logit_bias' keys must be token ids, got '%s'", clip(key, buf));
        if (t >= vocab)
            return fail(c, 400, "logit_bias", "invalid_value",
                        "'logit_bias': token %s is outside the vocabulary (0..%" PRId64 ")", clip(key, buf),
                        vocab - 1);
        if (!json_is_number(val))
            return fail(c, 400, "logit_bias", "invalid_type", "'logit_bias' values must be numbers");
        double d = json_number_value(val);
        if (!(d >= -100 && d <= 100))
            return fail(c, 400, "logit_bias", "invalid_value",
                        "'logit_bias' values must be in [-100, 100], got %g", d);
        q->bias[n].token = (int32_t)t;
        q->bias[n].bias = (float)d;
        n++;
    }
    q->req.logit_bias = q->bias;
    q->req.n_logit_bias = n;
    return 0;
}

/* Sampling and stopping fields into q->req. */
static int sampling(parse_ctx *c, srv_mapped *q, json_t *body)
{
    anvil_request *r = &q->req;
    double d;
    int64_t v;
    int b = 0, got;
#define NUM(k, lo, hi, open_lo, field)                                                                       \
    if ((got = num(c, body, k, lo, hi, open_lo, &d)) < 0)                                                    \
        return -1;                                                                                           \
    if (got)                                                                                                 \
        r->field = (float)d;
#define INT(k, lo, hi, field)                                                                                \
    if ((got = integer(c, body, k, lo, hi, &v)) < 0)                                                         \
        return -1;                                                                                           \
    if (got)                                                                                                 \
        r->field = (int32_t)v;
#define BOOL(k, field)                                                                                       \
    if ((got = boolean(c, body, k, &b)) < 0)                                                                 \
        return -1;                                                                                           \
    if (got)                                                                                                 \
        r->field = b;
    NUM("temperature", 0, 2, 0, sampling.temperature)
    NUM("top_p", 0, 1, 1, sampling.top_p)
    NUM("presence_penalty", -2, 2, 0, presence_penalty)
    NUM("frequency_penalty", -2, 2, 0, frequency_penalty)
    NUM("min_p", 0, 1, 0, sampling.min_p)
    NUM("repetition_penalty", 0, 1e6, 1, repetition_penalty)
    INT("max_tokens", 1, INT32_MAX, max_tokens)
    INT("max_completion_tokens", 1, INT32_MAX, max_tokens)
    INT("top_k", -1, INT32_MAX, sampling.top_k)
    INT("min_tokens", 0, INT32_MAX, min_tokens)
    BOOL("ignore_eos", ignore_eos)
    BOOL("skip_special_tokens", skip_special_tokens)
#undef NUM
#undef INT
#undef BOOL
    if ((got = integer(c, body, "seed", INT64_MIN, INT64_MAX, &v)) < 0)
        return -1;
    if (got) {
        r->sampling.seed = (uint64_t)v;
        r->has_seed = 1;
    }
    const char *mt = get(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
    if (r->max_tokens >= q->model->max_seq_len)
        return fail(c, 400, mt, "invalid_value",
                    "'%s' is too large: %d. This model's context holds %d tokens, the prompt included", mt,
                    r->max_tokens, q->model->max_seq_len);
    if (r->max_tokens > 0 && r->min_tokens > r->max_tokens)
        return fail(c, 400, "min_tokens", "invalid_value", "'min_tokens' (%d) exceeds 'max_tokens' (%d)",
                    r->min_tokens, r->max_tokens);
    if (stop_strings(c, q, body) < 0 || logit_bias(c, q, body) < 0)
        return -1;
    return 0;
}

/* n, best_of, echo, logprobs, stream. */
static int choices(parse_ctx *c, srv_mapped *q, json_t *body)
{
    int64_t v;
    int got;
    if (integer(c, body, "n", 1, SRV_MAX_N, &v) < 0)
        return -1;
    q->n = (int32_t)(get(body, "n") ? v : 1);
    if ((got = integer(c, body, "best_of", 1, SRV_MAX_N, &v)) < 0)
        return -1;
    q->best_of = got ? (int32_t)v : q->n;
    if (q->best_of < q->n)
        return fail(c, 400, "best_of", "invalid_value", "'best_of' (%d) must be at least 'n' (%d)",
                    q->best_of, q->n);
    if (boolean(c, body, "stream", &q->stream) < 0)
        return -1;
    json_t *so = get(body, "stream_options");
    if (so) {
        if (!json_is_object(so))
            return fail(c, 400, "stream_options", "invalid_type", "'stream_options' must be an object");
        json_t *iu = get(so, "include_usage");
        if (iu && !json_is_boolean(iu))
            return fail(c, 400, "stream_options", "invalid_type",
                        "'stream_options.include_usage' must be a boolean");
        q->include_usage = q->stream && json_is_true(iu);
    }
    if (q->stream && q->best_of > q->n)
        return fail(c, 400, "best_of", "invalid_value",
                    "'best_of' greater than 'n' cannot be streamed (the best are known only at the end)");
    if (boolean(c, body, "echo", &q->echo) < 0)
        return -1;
    if (q->echo && q->chat)
        return fail(c, 400, "echo", "unsupported", "'echo' is not supported for chat completions");
    q->logprobs = -1;
    if (q->chat) {
        int lp = 0;
        int64_t top = 0;
        if (boolean(c, body, "logprobs", &lp) < 0)
            return -1;
        if ((got = integer(c, body, "top_logprobs", 0, SRV_MAX_LOGPROBS, &top)) < 0)
            return -1;
        if (got && !lp)
            return fail(c, 400, "top_logprobs", "invalid_value", "'top_logprobs' requires 'logprobs': true");
        q->logprobs = lp ? (int32_t)top : -1;
    } else {
        if ((got = integer(c, body, "logprobs", 0, SRV_MAX_LOGPROBS, &v)) < 0)
            return -1;
        if (got)
            q->logprobs = (int32_t)v;
    }
    if (q->echo && q->logprobs >= 0)
        return fail(
            c, 400, "echo", "unsupported",
            "'echo' with 'logprobs' is not supported (the server does not compute the prompt's logprobs)");
    q->req.n = q->best_of;
    /* best_of ranks the samples by cumulative logprob, which needs logprobs */
    q->req.logprobs = q->best_of > q->n && q->logprobs < 0 ? 0 : q->logprobs;
    return 0;
}

int srv_openai_map(srv_model *m, json_t *body, int chat, srv_mapped **out, int *status, json_t **err)
{
    *out = NULL;
    parse_ctx pc = {status, err}, *c = &pc;
    srv_mapped *q = calloc(1, sizeof *q);
    if (q == NULL)
        return fail(c, 500, NULL, NULL, "out of memory");
    q->model = m;
    q->chat = chat;
    anvil_request_init(&q->req);
    q->req.max_tokens = chat ? 0 : 16; /* OpenAI's defaults: 16 for completions, the context for chat */
    int add_special = !chat;
    if (string_field(c, body, "user") < 0 || sampling(c, q, body) < 0 || choices(c, q, body) < 0 ||
        boolean(c, body, "add_special_tokens", &add_special) < 0 || response_format(c, body) < 0 ||
        structured_output(c, q, body) < 0)
        goto fail;
    if (!chat) {
        json_t *sfx = get(body, "suffix");
        if (sfx && !json_is_string(sfx)) {
            fail(c, 400, "suffix", "invalid_type", "'suffix' must be a string");
            goto fail;
        }
        if (sfx && json_string_length(sfx) > 0) {
            fail(c, 400, "suffix", "unsupported", "'suffix' is not supported");
            goto fail;
        }
    }
    if ((chat ? chat_prompt(c, q, body, add_special)
              : completion_prompts(c, q, get(body, "prompt"), add_special)) < 0)
        goto fail;
    const anvil_request *r = &q->req;
    for (int32_t i = 0; i < q->n_prompts; i++) {
        int64_t n = q->prompts[i].n_ids;
        const char *param = chat ? "messages" : "prompt";
        if (n >= m->max_seq_len || (r->max_tokens > 0 && n + r->max_tokens > m->max_seq_len)) {
            fail(c, 400, param, "context_length_exceeded",
                 "This model's maximum context length is %d tokens. However, you requested %" PRId64
                 " tokens (%" PRId64
                 " in the prompt%s, %d for the completion). Please reduce the length of the "
                 "prompt or the completion.",
                 m->max_seq_len, n + r->max_tokens, n, q->n_prompts > 1 ? " that is the longest" : "",
                 r->max_tokens);
            goto fail;
        }
        if (r->min_tokens > (r->max_tokens > 0 ? r->max_tokens : m->max_seq_len - n)) {
            fail(c, 400, "min_tokens", "invalid_value",
                 "'min_tokens' (%d) exceeds the %" PRId64 " tokens the context leaves", r->min_tokens,
                 m->max_seq_len - n);
            goto fail;
        }
    }
    *out = q;
    return 0;
fail:
    srv_mapped_free(q);
    return -1;
}

/* ------------------------------------------------------------ enqueue */

/* The model a request names, with a reference (srv_model_acquire). */
static srv_model *find_model(struct anvil_server *s, const char *name, parse_ctx *c)
{
    srv_model *m = srv_model_acquire(s, name);
    if (m == NULL) {
        char buf[80];
        fail(c, 404, "model", "model_not_found", "The model '%s' does not exist or is not loaded",
             name ? clip(name, buf) : "(default)");
    }
    return m;
}

/* The parameter an executor's refusal names (its messages start with it). */
static const char *refused_param(const char *msg, const srv_mapped *q)
{
    static const struct {
        const char *prefix, *param;
    } known[] = {{"n must", "n"},
                 {"logprobs", "logprobs"},
                 {"min_tokens", "min_tokens"},
                 {"logit_bias", "logit_bias"},
                 {"stop", "stop"},
                 {"the prompt", "prompt"},
                 {"prompt", "prompt"}};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strncmp(msg, known[i].prefix, strlen(known[i].prefix)) == 0) {
            const char *p = known[i].param;
            if (strcmp(p, "n") == 0 && q->best_of > q->n)
                return "best_of";
            if (strcmp(p, "prompt") == 0 && q->chat)
                return "messages";
            if (strcmp(p, "logprobs") == 0 && q->chat)
                return "top_logprobs";
            return p;
        }
    return NULL;
}

/* The request's mapping and enqueue (on the event loop, whose CPU time is
 * the server's: the executor's part, the enqueue, is taken out). */
static int generate(struct anvil_server *s, json_t *body, int chat, const srv_wire *wire, json_t *wire_ctx,
                    srv_gen **out, parse_ctx *c)
{
    const char *name;
    if (srv_openai_model_name(body, &name, c->status, c->err) < 0)
        return -1;
    srv_model *m = find_model(s, name, c);
    if (m == NULL)
        return -1;
    srv_mapped *q;
    if (srv_openai_map(m, body, chat, &q, c->status, c->err) < 0) {
        srv_model_release(m);
        return -1;
    }
    q->wire = wire;
    q->wire_ctx = wire_ctx;
    srv_job *j = srv_job_new(s, q); /* takes the model reference */
    if (j == NULL) {
        srv_mapped_free(q);
        return fail(c, 500, NULL, NULL, "out of memory");
    }
    j->g.grammar = q->grammar; /* the job's now: freed after the last final event */
    q->grammar = NULL;
    srv_gen *g = &j->g;
    anvil_request r = q->req;
    r.on_event = srv_gen_on_event;
    for (int32_t i = 0; i < q->n_prompts; i++) {
        r.prompt_ids = q->prompts[i].ids;
        r.n_prompt_ids = q->prompts[i].n_ids;
        r.user = &j->subs[i];
        pthread_mutex_lock(&g->mu);
        g->refs++; /* the executor's, dropped by the final event */
        pthread_mutex_unlock(&g->mu);
        uint64_t id = 0, t0 = srv_cpu_ns();
        anvil_status st = anvil_executor_enqueue(m->ex, &r, &id);
        srv_cost_exempt(s, t0); /* the executor's work */
        pthread_mutex_lock(&g->mu);
        if (st != ANVIL_OK) {
            g->refs--; /* no event comes for a refused request */
        } else {
            j->subs[i].id = id;
            j->subs[i].enqueued = 1;
        }
        pthread_mutex_unlock(&g->mu);
        if (st != ANVIL_OK) {
            char msg[256];
            snprintf(msg, sizeof msg, "%s", anvil_last_error());
            const char *param = refused_param(msg, q);
            srv_job_abort(j);
            srv_gen_release(g);
            srv_mapped_free(q);
            if (st == ANVIL_ERR_CAPACITY)
                return fail(c, 429, NULL, "queue_full", "The server is busy (%s); retry later", msg);
            if (strstr(msg, "shutting down"))
                return fail(c, 503, NULL, NULL, "The server is shutting down");
            if (st == ANVIL_ERR_INVALID_ARG)
                return fail(c, 400, param, "invalid_value", "%s", msg);
            return fail(c, 500, NULL, NULL, "%s", msg);
        }
    }
    srv_mapped_free(q);
    *out = g;
    return 0;
}

int srv_openai_generate(struct anvil_server *s, json_t *body, int chat, srv_gen **out, int *status,
                        json_t **err)
{
    return srv_openai_generate_wire(s, body, chat, NULL, NULL, out, status, err);
}

int srv_openai_generate_wire(struct anvil_server *s, json_t *body, int chat, const srv_wire *wire,
                             json_t *wire_ctx, srv_gen **out, int *status, json_t **err)
{
    *out = NULL;
    parse_ctx pc = {status, err};
    return generate(s, body, chat, wire, wire_ctx, out, &pc);
}
