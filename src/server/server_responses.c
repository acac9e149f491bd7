/*
 * POST /v1/responses: OpenAI's Responses API, text in and text out, no
 * stored state. The body is mapped to a chat body (input and instructions
 * to messages, max_output_tokens to max_tokens: srv_responses_map), which
 * the chat mapping checks and enqueues as any other; the answer is a
 * "response" object, or a stream of its events (response.created,
 * response.output_text.delta, ..., response.completed), each with its type
 * and sequence_number. docs/server.md, "Responses API".
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/server_openai.h"

static const char *const renames[][2] = {
    {"max_tokens", "max_output_tokens"},
};

/* "messages[i]..." of the chat body as the client's "input[i - offset]..."
 * (offset 1: the instructions are messages[0]) into out; 0 when p is no
 * such path. */
static int input_path(const char *p, int offset, char *out, size_t cap)
{
    if (strncmp(p, "messages", 8) != 0)
        return 0;
    if (p[8] != '[') {
        snprintf(out, cap, "input%s", p + 8);
        return 1;
    }
    char *end;
    long i = strtol(p + 9, &end, 10);
    if (*end != ']')
        return 0;
    if (i < offset)
        snprintf(out, cap, "instructions");
    else
        snprintf(out, cap, "input[%ld]%s", i - offset, end + 1);
    return 1;
}

void srv_responses_rename(json_t *err, json_t *ctx)
{
    srv_error_rename(err, renames, sizeof renames / sizeof renames[0], 1);
    json_t *e = json_object_get(err, "error");
    const char *param = json_string_value(json_object_get(e, "param"));
    char from[96], to[96];
    if (param == NULL || strlen(param) >= sizeof from)
        return;
    snprintf(from, sizeof from, "%s", param);
    int offset = json_is_string(json_object_get(ctx, "instructions"));
    if (!input_path(from, offset, to, sizeof to))
        return;
    json_object_set_new(e, "param", json_string(to));
    const char *const names[][2] = {{from, to}};
    srv_error_rename(err, names, 1, 0); /* the message's messages[1].role */
}

static int fail(int *status, json_t **err, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int fail(int *status, json_t **err, const char *param, const char *code, const char *fmt, ...)
{
    char msg[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    *status = 400;
    *err = srv_error_json(msg, "invalid_request_error", param, code);
    return -1;
}

static json_t *get(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_null(v) ? NULL : v;
}

/* One input item's content as chat content (a string, or text parts). */
static int item_content(json_t *content, size_t i, json_t **out, int *status, json_t **err)
{
    char param[64];
    snprintf(param, sizeof param, "input[%zu].content", i);
    if (json_is_string(content)) {
        *out = json_incref(content);
        return 0;
    }
    if (!json_is_array(content))
        return fail(status, err, param, "invalid_type", "'%s' must be a string or a list of input_text parts",
                    param);
    json_t *parts = json_array();
    size_t k;
    json_t *p;
    json_array_foreach(content, k, p)
    {
        const char *type = json_string_value(json_object_get(p, "type"));
        json_t *text = json_object_get(p, "text");
        snprintf(param, sizeof param, "input[%zu].content[%zu]", i, k);
        if (type && (strcmp(type, "input_text") == 0 || strcmp(type, "output_text") == 0 ||
                     strcmp(type, "text") == 0) && json_is_string(text)) {
            json_t *t = json_object();
            json_object_set_new(t, "type", json_string("text"));
            json_object_set(t, "text", text);
            json_array_append_new(parts, t);
            continue;
        }
        json_decref(parts);
        if (type && (strcmp(type, "input_image") == 0 || strcmp(type, "input_file") == 0 ||
                     strcmp(type, "input_audio") == 0))
            return fail(status, err, param, "unsupported", "'%s': only text parts are supported, not %s", param,
                        type);
        return fail(status, err, param, "invalid_value",
                    "'%s' must be {\"type\": \"input_text\", \"text\": \"...\"}", param);
    }
    *out = parts;
    return 0;
}

/* input (a string or a list of message items) as chat messages. */
static int input_messages(json_t *input, json_t *msgs, int *status, json_t **err)
{
    if (json_is_string(input)) {
        json_t *m = json_object();
        json_object_set_new(m, "role", json_string("user"));
        json_object_set(m, "content", input);
        json_array_append_new(msgs, m);
        return 0;
    }
    if (!json_is_array(input) || json_array_size(input) == 0)
        return fail(status, err, "input", json_is_array(input) ? "invalid_value" : "invalid_type",
                    "'%s' must be a string or a non-empty list of messages", "input");
    size_t i;
    json_t *it;
    json_array_foreach(input, i, it)
    {
        char param[48];
        snprintf(param, sizeof param, "input[%zu]", i);
        if (!json_is_object(it))
            return fail(status, err, param, "invalid_type", "'%s' must be a message object", param);
        const char *type = json_string_value(get(it, "type"));
        if (type && strcmp(type, "message") != 0)
            return fail(status, err, param, "unsupported",
                        "'%s': items of type '%s' are not supported (messages only; no tools, no stored state)",
                        param, type);
        json_t *role = get(it, "role"), *content = get(it, "content");
        if (!json_is_string(role) || content == NULL)
            return fail(status, err, param, "invalid_value", "'%s' needs a 'role' and a 'content'", param);
        json_t *c = NULL;
        if (item_content(content, i, &c, status, err) < 0)
            return -1;
        json_t *m = json_object();
        json_object_set(m, "role", role); /* the chat mapping checks it */
        json_object_set_new(m, "content", c);
        json_array_append_new(msgs, m);
    }
    return 0;
}

int srv_responses_map(json_t *in, json_t **chat, json_t **ctx, int *status, json_t **err)
{
    *chat = NULL;
    *ctx = NULL;
    if (!json_is_object(in))
        return fail(status, err, NULL, "invalid_json", "The request body must be a JSON object.");
    /* what needs state kept between requests, or tools */
    static const char *const stateful[] = {"previous_response_id", "conversation", "prompt"};
    for (size_t i = 0; i < sizeof stateful / sizeof stateful[0]; i++)
        if (get(in, stateful[i]))
            return fail(status, err, stateful[i], "unsupported",
                        "'%s' is not supported: the server keeps no state between requests; send the whole "
                        "conversation in 'input'",
                        stateful[i]);
    json_t *bg = get(in, "background");
    if (bg && !json_is_false(bg))
        return fail(status, err, "background", "unsupported", "'background' is not supported");
    json_t *tools = get(in, "tools");
    if (tools && !(json_is_array(tools) && json_array_size(tools) == 0))
        return fail(status, err, "tools", "unsupported", "'tools' are not supported (text in, text out)");
    json_t *tlp = get(in, "top_logprobs");
    if (tlp && !(json_is_integer(tlp) && json_integer_value(tlp) == 0))
        return fail(status, err, "top_logprobs", "unsupported",
                    "'top_logprobs' is not supported here (use /v1/chat/completions)");
    json_t *text = get(in, "text"), *fmt = text ? get(text, "format") : NULL;
    if (text && !json_is_object(text))
        return fail(status, err, "text", "invalid_type", "'text' must be an object");
    /* text.format: "text", or structured output as chat's response_format
     * (json_schema's name / schema / strict sit in the format itself here;
     * made below, once nothing else can be refused) */
    const char *ft = NULL;
    if (fmt) {
        ft = json_is_object(fmt) ? json_string_value(get(fmt, "type")) : NULL;
        if (ft == NULL)
            return fail(status, err, "text.format", "invalid_value",
                        "'text.format' must be an object with a 'type': \"text\", \"json_object\" or \"json_schema\"");
        if (strcmp(ft, "json_schema") == 0 && !json_is_object(get(fmt, "schema")))
            return fail(status, err, "text.format.schema", "invalid_value",
                        "'text.format.schema' must be a JSON schema object");
        if (strcmp(ft, "text") != 0 && strcmp(ft, "json_object") != 0 && strcmp(ft, "json_schema") != 0)
            return fail(status, err, "text.format", "invalid_value",
                        "'text.format' of type '%.40s': use \"text\", \"json_object\" or \"json_schema\"", ft);
        if (strcmp(ft, "text") == 0)
            ft = NULL;
    }
    json_t *instr = get(in, "instructions");
    if (instr && !json_is_string(instr))
        return fail(status, err, "instructions", "invalid_type", "'instructions' must be a string");
    json_t *meta = get(in, "metadata");
    if (meta && !json_is_object(meta))
        return fail(status, err, "metadata", "invalid_type", "'metadata' must be an object");
    json_t *input = get(in, "input");
    if (input == NULL)
        return fail(status, err, "input", "missing_required_parameter",
                    "'input' is required: a string, or a list of messages");
    json_t *msgs = json_array();
    if (instr) {
        json_t *m = json_object();
        json_object_set_new(m, "role", json_string("system"));
        json_object_set(m, "content", instr);
        json_array_append_new(msgs, m);
    }
    if (input_messages(input, msgs, status, err) < 0) {
        json_decref(msgs);
        return -1;
    }
    json_t *o = json_object();
    json_object_set_new(o, "messages", msgs);
    if (ft) { /* compiled by the chat mapping's structured output */
        json_t *rf = json_object();
        json_object_set_new(rf, "type", json_string(ft));
        if (strcmp(ft, "json_schema") == 0) {
            json_t *js = json_object(), *name = get(fmt, "name"), *strict = get(fmt, "strict");
            json_object_set_new(js, "name", name ? json_incref(name) : json_string("response"));
            json_object_set(js, "schema", get(fmt, "schema"));
            if (strict)
                json_object_set(js, "strict", strict);
            json_object_set_new(rf, "json_schema", js);
        }
        json_object_set_new(o, "response_format", rf);
    }
    /* the fields the chat mapping checks; vLLM's extensions pass through */
    static const char *const same[] = {"model", "temperature", "top_p", "stream", "user", "seed", "top_k",
                                       "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty",
                                       "stop"};
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++) {
        json_t *v = json_object_get(in, same[i]);
        if (v)
            json_object_set(o, same[i], v);
    }
    json_t *mot = json_object_get(in, "max_output_tokens");
    if (mot)
        json_object_set(o, "max_tokens", mot);
    /* the response object repeats these */
    json_t *c = json_object();
    json_object_set(c, "instructions", instr ? instr : json_null());
    json_object_set(c, "max_output_tokens", mot ? mot : json_null());
    json_t *t = get(in, "temperature"), *p = get(in, "top_p");
    json_object_set_new(c, "temperature", t ? json_incref(t) : json_real(1.0));
    json_object_set_new(c, "top_p", p ? json_incref(p) : json_real(1.0));
    json_object_set_new(c, "metadata", meta ? json_incref(meta) : json_object());
    json_object_set(c, "user", get(in, "user") ? get(in, "user") : json_null());
    if (ft)
        json_object_set(c, "text_format", fmt); /* the response repeats it */
    *chat = o;
    *ctx = c;
    return 0;
}

/* ------------------------------------------------------------ output */

/* The response object: status "in_progress", "completed", "incomplete" or
 * "failed"; text NULL: no output item yet. */
static json_t *response_json(const srv_gen *g, const char *status, const char *text, size_t len,
                             const char *incomplete, const char *error_code, const char *error_msg,
                             const srv_job *usage)
{
    json_t *o = json_object(), *ctx = g->wire_ctx;
    json_object_set_new(o, "id", json_string(g->rid));
    json_object_set_new(o, "object", json_string("response"));
    json_object_set_new(o, "created_at", json_integer(g->created));
    json_object_set_new(o, "status", json_string(status));
    json_object_set_new(o, "background", json_false());
    if (error_code) {
        json_t *e = json_object();
        json_object_set_new(e, "code", json_string(error_code));
        json_object_set_new(e, "message", json_string(error_msg));
        json_object_set_new(o, "error", e);
    } else {
        json_object_set_new(o, "error", json_null());
    }
    if (incomplete) {
        json_t *d = json_object();
        json_object_set_new(d, "reason", json_string(incomplete));
        json_object_set_new(o, "incomplete_details", d);
    } else {
        json_object_set_new(o, "incomplete_details", json_null());
    }
    json_object_set(o, "instructions", json_object_get(ctx, "instructions"));
    json_object_set(o, "max_output_tokens", json_object_get(ctx, "max_output_tokens"));
    json_object_set_new(o, "model", json_string(g->model->name));
    json_t *output = json_array();
    if (text) {
        json_t *item = json_object(), *content = json_array(), *part = json_object();
        json_object_set_new(part, "type", json_string("output_text"));
        json_object_set_new(part, "text", srv_json_text(text, len));
        json_object_set_new(part, "annotations", json_array());
        json_object_set_new(part, "logprobs", json_array());
        json_array_append_new(content, part);
        json_object_set_new(item, "type", json_string("message"));
        json_object_set_new(item, "id", json_sprintf("msg_%s", g->rid + 5));
        json_object_set_new(item, "status", json_string(incomplete ? "incomplete" : "completed"));
        json_object_set_new(item, "role", json_string("assistant"));
        json_object_set_new(item, "content", content);
        json_array_append_new(output, item);
    }
    json_object_set_new(o, "output", output);
    json_object_set_new(o, "parallel_tool_calls", json_true());
    json_object_set_new(o, "previous_response_id", json_null());
    json_t *reasoning = json_object();
    json_object_set_new(reasoning, "effort", json_null());
    json_object_set_new(reasoning, "summary", json_null());
    json_object_set_new(o, "reasoning", reasoning);
    json_object_set_new(o, "store", json_false()); /* nothing is kept */
    json_object_set(o, "temperature", json_object_get(ctx, "temperature"));
    json_t *tf = json_object(), *f = json_object_get(ctx, "text_format");
    if (f) {
        json_object_set(tf, "format", f);
    } else {
        f = json_object();
        json_object_set_new(f, "type", json_string("text"));
        json_object_set_new(tf, "format", f);
    }
    json_object_set_new(o, "text", tf);
    json_object_set_new(o, "tool_choice", json_string("none"));
    json_object_set_new(o, "tools", json_array());
    json_object_set(o, "top_p", json_object_get(ctx, "top_p"));
    json_object_set_new(o, "truncation", json_string("disabled"));
    if (usage) {
        json_t *u = json_object(), *in = json_object(), *out = json_object();
        json_object_set_new(u, "input_tokens", json_integer(usage->prompt_tokens));
        json_object_set_new(in, "cached_tokens", json_integer(0));
        json_object_set_new(u, "input_tokens_details", in);
        json_object_set_new(u, "output_tokens", json_integer(usage->completion_tokens));
        json_object_set_new(out, "reasoning_tokens", json_integer(0));
        json_object_set_new(u, "output_tokens_details", out);
        json_object_set_new(u, "total_tokens", json_integer(usage->prompt_tokens + usage->completion_tokens));
        json_object_set_new(o, "usage", u);
    } else {
        json_object_set_new(o, "usage", json_null());
    }
    json_object_set(o, "user", json_object_get(ctx, "user"));
    json_object_set(o, "metadata", json_object_get(ctx, "metadata"));
    return o;
}

/* One streamed event: {"type": type, "sequence_number": n, ...o} (takes o). */
static void event(srv_gen *g, const char *type, json_t *o)
{
    json_object_set_new(o, "type", json_string(type));
    json_object_set_new(o, "sequence_number", json_integer(g->seq++));
    srv_gen_sse(g, type, o);
}

static json_t *with(const char *key, json_t *v)
{
    json_t *o = json_object();
    json_object_set_new(o, key, v);
    return o;
}

/* item_id, output_index, content_index: where a text event belongs. */
static json_t *at_text(const srv_gen *g)
{
    json_t *o = json_object();
    json_object_set_new(o, "item_id", json_sprintf("msg_%s", g->rid + 5));
    json_object_set_new(o, "output_index", json_integer(0));
    json_object_set_new(o, "content_index", json_integer(0));
    return o;
}

static json_t *item_json(const srv_gen *g, const char *status, const char *text, size_t len)
{
    json_t *item = json_object(), *content = json_array();
    json_object_set_new(item, "id", json_sprintf("msg_%s", g->rid + 5));
    json_object_set_new(item, "type", json_string("message"));
    json_object_set_new(item, "status", json_string(status));
    json_object_set_new(item, "role", json_string("assistant"));
    if (text) {
        json_t *part = json_object();
        json_object_set_new(part, "type", json_string("output_text"));
        json_object_set_new(part, "text", srv_json_text(text, len));
        json_object_set_new(part, "annotations", json_array());
        json_object_set_new(part, "logprobs", json_array());
        json_array_append_new(content, part);
    }
    json_object_set_new(item, "content", content);
    return item;
}

static void r_start(srv_gen *g)
{
    event(g, "response.created", with("response", response_json(g, "in_progress", NULL, 0, NULL, NULL, NULL, NULL)));
    event(g, "response.in_progress",
          with("response", response_json(g, "in_progress", NULL, 0, NULL, NULL, NULL, NULL)));
    json_t *o = with("item", item_json(g, "in_progress", NULL, 0));
    json_object_set_new(o, "output_index", json_integer(0));
    event(g, "response.output_item.added", o);
    o = at_text(g);
    json_t *part = json_object();
    json_object_set_new(part, "type", json_string("output_text"));
    json_object_set_new(part, "text", json_string(""));
    json_object_set_new(part, "annotations", json_array());
    json_object_set_new(part, "logprobs", json_array());
    json_object_set_new(o, "part", part);
    event(g, "response.content_part.added", o);
}

static void r_chunk(srv_gen *g, const char *text, size_t len, anvil_request_finish finish)
{
    if (finish != ANVIL_REQUEST_RUNNING)
        json_object_set_new(g->wire_ctx, "finish", json_integer(finish));
    if (len == 0)
        return;
    srv_gen_text_add(g, text, len);
    json_t *o = at_text(g);
    json_object_set_new(o, "delta", srv_json_text(text, len));
    json_object_set_new(o, "logprobs", json_array());
    event(g, "response.output_text.delta", o);
}

static void r_error(srv_gen *g, const char *msg)
{
    event(g, "response.failed",
          with("response", response_json(g, "failed", NULL, 0, NULL, "server_error", msg, NULL)));
    g->wire_failed = 1;
}

static void r_end(srv_job *j)
{
    srv_gen *g = &j->g;
    if (g->wire_failed)
        return;
    json_int_t f = json_integer_value(json_object_get(g->wire_ctx, "finish"));
    if (f == ANVIL_REQUEST_CANCELLED || f == ANVIL_REQUEST_ERROR) {
        event(g, "response.failed",
              with("response", response_json(g, "failed", NULL, 0, NULL, "cancelled",
                                             "the request was cancelled (the server is shutting down, or its "
                                             "model unloading)",
                                             j)));
        return;
    }
    const char *text = g->text ? g->text : "";
    const char *incomplete = f == ANVIL_REQUEST_LENGTH ? "max_output_tokens" : NULL;
    json_t *o = at_text(g);
    json_object_set_new(o, "text", srv_json_text(text, g->text_len));
    json_object_set_new(o, "logprobs", json_array());
    event(g, "response.output_text.done", o);
    o = at_text(g);
    json_t *item = item_json(g, "completed", text, g->text_len);
    json_object_set(o, "part", json_array_get(json_object_get(item, "content"), 0));
    event(g, "response.content_part.done", o);
    json_object_set_new(item, "status", json_string(incomplete ? "incomplete" : "completed"));
    o = with("item", item);
    json_object_set_new(o, "output_index", json_integer(0));
    event(g, "response.output_item.done", o);
    event(g, incomplete ? "response.incomplete" : "response.completed",
          with("response", response_json(g, incomplete ? "incomplete" : "completed", text, g->text_len,
                                         incomplete, NULL, NULL, j)));
}

static void r_body(srv_job *j)
{
    srv_gen *g = &j->g;
    json_t *c = json_array_get(j->choices, 0);
    json_t *content = json_object_get(json_object_get(c, "message"), "content");
    const char *f = json_string_value(json_object_get(c, "finish_reason"));
    const char *incomplete = f && strcmp(f, "length") == 0 ? "max_output_tokens" : NULL;
    json_t *o = response_json(g, incomplete ? "incomplete" : "completed",
                              json_string_value(content) ? json_string_value(content) : "",
                              json_string_length(content), incomplete, NULL, NULL, j);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    g->http_status = s ? 200 : 500;
    if (s)
        srv_gen_append(g, s, strlen(s));
    free(s);
}

const srv_wire srv_responses_wire = {
    .id_prefix = "resp",
    .start = r_start,
    .chunk = r_chunk,
    .error = r_error,
    .end = r_end,
    .body = r_body,
    .error_body = NULL,
};
