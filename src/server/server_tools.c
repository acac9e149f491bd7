/*
 * Tool calls (docs/server.md, "Tool calls"): the model writes its calls in
 * its family's syntax, parsed here into OpenAI's tool_calls:
 *
 *   llama3_json  {"name": "f", "parameters": {...}}; {...}   (optionally after <|python_tag|>;
 *                only when the output starts with it, as vLLM's parser)
 *   hermes       text <tool_call>{"name": "f", "arguments": {...}}</tool_call> ...   (Qwen2.5, Qwen3)
 *   mistral      text [TOOL_CALLS][{"name": "f", "arguments": {...}}, ...]
 *
 * An output whose calls do not parse is content, whole (vLLM's fallback).
 * Streams: server_tools_stream.c.
 *
 * With tool_choice "required" or a named function the call is forced: the
 * prompt ends with the family's opening marker and a JSON schema grammar
 * makes the rest a call object (an array of them for Mistral) whose
 * arguments follow the tool's parameters.
 */
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/server_guided.h"
#include "server/server_tools.h"

static const char HERMES_OPEN[] = SRV_TOOLS_HERMES_OPEN;
static const char HERMES_CLOSE[] = SRV_TOOLS_HERMES_CLOSE;
static const char MISTRAL_OPEN[] = SRV_TOOLS_MISTRAL_OPEN;
static const char PYTHON_TAG[] = SRV_TOOLS_PYTHON_TAG;

static const char *const NAMES[] = {"none", "llama3_json", "hermes", "mistral"};

int srv_tools_parser_from_name(const char *name)
{
    if (name == NULL || strcmp(name, "auto") == 0)
        return SRV_TOOLS_AUTO;
    for (int i = 0; i < 4; i++)
        if (strcmp(name, NAMES[i]) == 0)
            return i;
    return -2;
}

const char *srv_tools_parser_name(int parser)
{
    return parser >= 0 && parser < 4 ? NAMES[parser] : "auto";
}

/* ------------------------------------------------------------ detection */

static int marker_parser(const char *text)
{
    if (text == NULL)
        return -1;
    if (strstr(text, HERMES_OPEN))
        return SRV_TOOLS_HERMES;
    if (strstr(text, MISTRAL_OPEN) || strstr(text, "[AVAILABLE_TOOLS]"))
        return SRV_TOOLS_MISTRAL;
    if (strstr(text, PYTHON_TAG) || (strstr(text, "<|start_header_id|>") && strstr(text, "\"parameters\"")))
        return SRV_TOOLS_LLAMA3;
    return -1;
}

/* Templates keep their syntax in the text they print: the tools' prompt
 * (Qwen's shows <tool_call>, Llama 3.1's the "parameters" JSON, Mistral's
 * [AVAILABLE_TOOLS]) and a past call (Mistral's [TOOL_CALLS]). Rendering is the one way to read
 * a parsed template; a template that raises on a probe tells nothing. */
int srv_tools_detect(const anvil_chat_template *t, const anvil_tokenizer *tok)
{
    static const char *const probes[] = {
        "[{\"role\":\"user\",\"content\":\"x\"}]",
        "[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":"
        "\"abcdefghi\",\"type\":\"function\",\"function\":{\"name\":\"probe\",\"arguments\":{\"a\":1}}}]},"
        "{\"role\":\"tool\",\"tool_call_id\":\"abcdefghi\",\"name\":\"probe\",\"content\":\"1\"},"
        "{\"role\":\"user\",\"content\":\"y\"}]",
    };
    static const char tools[] = "[{\"type\":\"function\",\"function\":{\"name\":\"probe\",\"description\":\"p\","
                                "\"parameters\":{\"type\":\"object\",\"properties\":{\"a\":{\"type\":"
                                "\"integer\"}}}}}]";
    for (size_t i = 0; t && i < sizeof probes / sizeof probes[0]; i++) {
        anvil_chat_render_options ro = {.add_generation_prompt = 1, .tools_json = tools};
        char *text = NULL;
        if (anvil_chat_template_render(t, probes[i], &ro, &text) == ANVIL_OK) {
            int p = marker_parser(text);
            free(text);
            if (p >= 0)
                return p;
        }
    }
    if (tok) {
        if (anvil_tokenizer_token_id(tok, HERMES_OPEN) >= 0)
            return SRV_TOOLS_HERMES;
        if (anvil_tokenizer_token_id(tok, MISTRAL_OPEN) >= 0)
            return SRV_TOOLS_MISTRAL;
        if (anvil_tokenizer_token_id(tok, PYTHON_TAG) >= 0)
            return SRV_TOOLS_LLAMA3;
    }
    return SRV_TOOLS_NONE;
}

/* ------------------------------------------------------------ parsing */

void srv_tools_result_free(srv_tools_result *r)
{
    free(r->content);
    json_decref(r->calls);
    r->content = NULL;
    r->content_len = 0;
    r->calls = NULL;
}

static int is_ws(char c)
{
    return c == ' ' || c == '\n' || c == '\t' || c == '\r';
}

static size_t skip_ws(const char *t, size_t len, size_t at)
{
    while (at < len && is_ws(t[at]))
        at++;
    return at;
}

static int starts(const char *t, size_t len, size_t at, const char *lit)
{
    size_t n = strlen(lit);
    return len - at >= n && memcmp(t + at, lit, n) == 0;
}

/* The first place of lit in t[at, len), or len. */
static size_t find(const char *t, size_t len, size_t at, const char *lit)
{
    size_t n = strlen(lit);
    for (size_t i = at; i + n <= len; i++)
        if (memcmp(t + i, lit, n) == 0)
            return i;
    return len;
}

/* One JSON value (object or array) at t[at]: *end past it. NULL when none.
 * A key twice in an object is malformed: a stream sends a call's
 * arguments as they come and cannot take the first value back. */
static json_t *json_at(const char *t, size_t len, size_t at, size_t *end)
{
    if (at >= len || (t[at] != '{' && t[at] != '['))
        return NULL;
    json_error_t e;
    json_t *v = json_loadb(t + at, len - at, JSON_DISABLE_EOF_CHECK | JSON_REJECT_DUPLICATES, &e);
    if (v)
        *end = at + (size_t)e.position;
    return v;
}

/* A call object {"name": s, "arguments" | "parameters": object | string}
 * appended to calls as {"name", "arguments": JSON text}. 0, -1 malformed,
 * -2 out of memory. */
static int add_call(json_t *calls, json_t *o)
{
    json_t *name = json_object_get(o, "name");
    if (!json_is_object(o) || !json_is_string(name) || json_string_length(name) == 0)
        return -1;
    json_t *args = json_object_get(o, "arguments");
    if (args == NULL)
        args = json_object_get(o, "parameters");
    else if (json_object_get(o, "parameters")) /* which one? (a stream may have sent the first) */
        return -1;
    json_t *text;
    if (args == NULL || json_is_null(args)) {
        text = json_string("{}");
    } else if (json_is_string(args)) {
        text = json_copy(args);
    } else if (json_is_object(args)) {
        char *s = json_dumps(args, JSON_COMPACT);
        text = s ? json_string(s) : NULL;
        free(s);
    } else {
        return -1;
    }
    json_t *c = json_object();
    if (text == NULL || c == NULL || json_object_set(c, "name", name) != 0 ||
        json_object_set_new(c, "arguments", text) != 0 || json_array_append_new(calls, c) != 0) {
        json_decref(c);
        return -2;
    }
    return 0;
}

/* A call object, or an array of them (Mistral's, or a forced array). */
static int add_calls(json_t *calls, json_t *v)
{
    if (json_is_object(v))
        return add_call(calls, v);
    if (!json_is_array(v) || json_array_size(v) == 0)
        return -1;
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e)
    {
        int rc = add_call(calls, e);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* The calls of t[at, len) in parser's syntax after its opening marker (or
 * from the start for llama3_json). 0 parsed, -1 not calls, -2 memory. */
static int parse_calls(int parser, int forced, const char *t, size_t len, size_t at, json_t *calls)
{
    size_t end;
    json_t *v;
    int rc;
    if (parser == SRV_TOOLS_HERMES) {
        /* blocks <tool_call> JSON </tool_call>; the last may lack its close
         * (the model stopped there); text between blocks is dropped (vLLM) */
        for (;;) {
            at = skip_ws(t, len, at);
            if ((v = json_at(t, len, at, &end)) == NULL)
                return -1;
            rc = add_call(calls, v);
            json_decref(v);
            if (rc < 0)
                return rc;
            at = skip_ws(t, len, end);
            if (at == len)
                return 0;
            if (!starts(t, len, at, HERMES_CLOSE))
                return -1;
            at = find(t, len, at + strlen(HERMES_CLOSE), HERMES_OPEN);
            if (at == len)
                return 0;
            at += strlen(HERMES_OPEN);
        }
    }
    if (parser == SRV_TOOLS_LLAMA3 && !forced) {
        /* objects separated by ';', nothing but whitespace after */
        for (;;) {
            at = skip_ws(t, len, at);
            if (at >= len || t[at] != '{' || (v = json_at(t, len, at, &end)) == NULL)
                return -1;
            rc = add_call(calls, v);
            json_decref(v);
            if (rc < 0)
                return rc;
            at = skip_ws(t, len, end);
            if (at == len)
                return 0;
            if (t[at] != ';')
                return -1;
            at++;
        }
    }
    /* Mistral's array (or object), a forced object or array: one value,
     * then only whitespace */
    at = skip_ws(t, len, at);
    if ((v = json_at(t, len, at, &end)) == NULL)
        return -1;
    rc = add_calls(calls, v);
    json_decref(v);
    if (rc < 0)
        return rc;
    return skip_ws(t, len, end) == len ? 0 : -1;
}

/* Where the calls' marker starts (len: none) and where their syntax
 * starts, after the marker. */
static size_t call_start(int parser, int forced, const char *t, size_t len, size_t *body)
{
    if (forced) {
        *body = 0;
        return 0;
    }
    size_t at;
    switch (parser) {
    case SRV_TOOLS_HERMES:
        at = find(t, len, 0, HERMES_OPEN);
        *body = at + (at < len ? strlen(HERMES_OPEN) : 0);
        return at;
    case SRV_TOOLS_MISTRAL:
        at = find(t, len, 0, MISTRAL_OPEN);
        *body = at + (at < len ? strlen(MISTRAL_OPEN) : 0);
        return at;
    case SRV_TOOLS_LLAMA3:
        at = skip_ws(t, len, 0);
        if (starts(t, len, at, PYTHON_TAG)) {
            *body = at + strlen(PYTHON_TAG);
            return 0;
        }
        *body = at;
        return at < len && t[at] == '{' ? 0 : len;
    default:
        *body = len;
        return len;
    }
}

static int set_content(srv_tools_result *out, const char *t, size_t n)
{
    out->content = malloc(n + 1);
    if (out->content == NULL)
        return -1;
    if (n)
        memcpy(out->content, t, n);
    out->content[n] = '\0';
    out->content_len = n;
    return 0;
}

int srv_tools_parse(int parser, int forced, const char *text, size_t len, srv_tools_result *out)
{
    memset(out, 0, sizeof *out);
    size_t body, at = parser == SRV_TOOLS_NONE && !forced ? len : call_start(parser, forced, text, len, &body);
    if (at < len || (forced && len > 0)) {
        json_t *calls = json_array();
        if (calls == NULL)
            return -1;
        int rc = parse_calls(parser, forced, text, len, body, calls);
        if (rc == -2) {
            json_decref(calls);
            return -1;
        }
        if (rc == 0 && json_array_size(calls) > 0) {
            out->calls = calls;
            if (set_content(out, text, at) == 0)
                return 0;
            srv_tools_result_free(out);
            return -1;
        }
        json_decref(calls);
    }
    return set_content(out, text, len);
}

/* ------------------------------------------------------------ ids */

static atomic_uint_fast64_t id_counter;

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

void srv_tools_call_id(int parser, char *buf, size_t cap)
{
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = mix((uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec) ^
                 mix((uint64_t)atomic_fetch_add(&id_counter, 1) + (uint64_t)(uintptr_t)&id_counter);
    int n = parser == SRV_TOOLS_MISTRAL ? 9 : 24;
    size_t k = 0;
    if (parser != SRV_TOOLS_MISTRAL)
        for (const char *p = "call_"; *p && k + 1 < cap; p++)
            buf[k++] = *p;
    uint64_t r = 0;
    for (int i = 0; i < n && k + 1 < cap; i++) {
        if (i % 10 == 0) /* 10 letters of 62 take 60 bits */
            r = mix(x + (uint64_t)i);
        buf[k++] = al[r % 62];
        r /= 62;
    }
    buf[k] = '\0';
}

/* ------------------------------------------------------------ forcing */

/* A tool's parameters as a subschema placed at path in the forcing schema:
 * its "$ref": "#..." pointers are moved under that path, so $defs travel
 * with it (pydantic's tools have them). Takes nothing; returns a new value. */
static json_t *rebase(json_t *v, const char *path)
{
    if (json_is_array(v)) {
        json_t *a = json_array();
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) json_array_append_new(a, rebase(e, path));
        return a;
    }
    if (!json_is_object(v))
        return json_deep_copy(v);
    json_t *o = json_object();
    const char *k;
    json_t *e;
    json_object_foreach(v, k, e)
    {
        const char *ref = json_string_value(e);
        if (strcmp(k, "$ref") == 0 && ref && ref[0] == '#') {
            size_t n = strlen(path) + strlen(ref);
            char *r = malloc(n + 1);
            if (r) {
                snprintf(r, n + 1, "%s%s", path, ref + 1);
                json_object_set_new(o, k, json_string(r));
                free(r);
            }
        } else {
            json_object_set_new(o, k, rebase(e, path));
        }
    }
    return o;
}

/* The call object schema of one tool; at: its JSON pointer. */
static json_t *call_schema(int parser, json_t *fn, const char *at)
{
    const char *key = parser == SRV_TOOLS_HERMES || parser == SRV_TOOLS_MISTRAL ? "arguments" : "parameters";
    json_t *params = json_object_get(fn, "parameters");
    char path[256];
    snprintf(path, sizeof path, "%s/properties/%s", at, key);
    json_t *args = json_is_object(params) && json_object_size(params) > 0
                       ? rebase(params, path)
                       : json_pack("{s:s, s:{}, s:b}", "type", "object", "properties", "additionalProperties", 0);
    return json_pack("{s:s, s:{s:{s:O}, s:o}, s:[s, s], s:b}", "type", "object", "properties", "name", "const",
                     json_object_get(fn, "name"), key, args, "required", "name", key, "additionalProperties",
                     0);
}

char *srv_tools_force_schema(int parser, json_t *tools, const char *name, int parallel)
{
    /* Mistral's calls and the parser-less form are an array; the others one object */
    int array = parser == SRV_TOOLS_MISTRAL || parser == SRV_TOOLS_NONE;
    const char *base = array ? "#/items" : "#";
    json_t *alts = json_array();
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t)
    {
        json_t *fn = json_object_get(t, "function");
        if (name && strcmp(json_string_value(json_object_get(fn, "name")), name) != 0)
            continue;
        char at[64];
        snprintf(at, sizeof at, "%s/anyOf/%zu", base, json_array_size(alts));
        json_array_append_new(alts, call_schema(parser, fn, at));
    }
    json_t *one = json_pack("{s:o}", "anyOf", alts);
    json_t *root = one;
    if (array) {
        root = json_pack("{s:s, s:o, s:i}", "type", "array", "items", one, "minItems", 1);
        if (root && (!parallel || name)) /* a named function is one call (OpenAI's, vLLM's) */
            json_object_set_new(root, "maxItems", json_integer(1));
    }
    char *s = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    return s;
}

static int force(struct srv_gcache *cache, const anvil_grammar_vocab *v, const anvil_grammar_options *opts,
                 int parser, json_t *tools, const char *name, int parallel, anvil_grammar **out, const char **tail,
                 int *status, char *msg, size_t cap)
{
    *out = NULL;
    *tail = parser == SRV_TOOLS_HERMES ? "<tool_call>\n" : parser == SRV_TOOLS_MISTRAL ? MISTRAL_OPEN : "";
    char *schema = srv_tools_force_schema(parser, tools, name, parallel);
    if (schema == NULL) {
        *status = 500;
        snprintf(msg, cap, "out of memory");
        return -1;
    }
    /* agents send the same tools on every request: the cache compiles them once */
    anvil_status st = opts ? anvil_grammar_compile_json_schema(v, schema, strlen(schema), opts, out)
                           : srv_guided_compile(cache, v, SRV_GUIDED_JSON, schema, strlen(schema), out);
    free(schema);
    if (st == ANVIL_OK)
        return 0;
    *status = st == ANVIL_ERR_OOM ? 500 : 400;
    snprintf(msg, cap, "%s", st == ANVIL_ERR_OOM ? "out of memory compiling the tools' grammar" : anvil_last_error());
    return -1;
}

int srv_tools_force(const anvil_grammar_vocab *v, const anvil_grammar_options *opts, int parser, json_t *tools,
                    const char *name, int parallel, anvil_grammar **out, const char **tail, int *status,
                    char *msg, size_t cap)
{
    return force(NULL, v, opts, parser, tools, name, parallel, out, tail, status, msg, cap);
}

int srv_tools_force_cached(struct srv_gcache *cache, const anvil_grammar_vocab *v, int parser, json_t *tools,
                           const char *name, int parallel, anvil_grammar **out, const char **tail, int *status,
                           char *msg, size_t cap)
{
    return force(cache, v, NULL, parser, tools, name, parallel, out, tail, status, msg, cap);
}
