/*
 * The Responses API's answer (POST /v1/responses; the request side is
 * server_responses.c): a "response" object whose output is a list of
 * items, a "message" (the text, with one output_text part) and a
 * "function_call" per tool call ({"id": "fc_...", "call_id", "name",
 * "arguments", "status"}); or, streamed, that object's events, each with
 * its type and sequence_number, as OpenAI sends them:
 *
 *   response.created, response.in_progress
 *   response.output_item.added (message), response.content_part.added,
 *     response.output_text.delta ..., response.output_text.done,
 *     response.content_part.done, response.output_item.done
 *   response.output_item.added (function_call), response.function_call_arguments.delta ...,
 *     response.function_call_arguments.done, response.output_item.done   (per call)
 *   response.completed (or response.incomplete, response.failed)
 *
 * Calls come from the chat path's parsers (server_tools.c), streamed
 * through the same deltas as chat's tool_calls. With tools the message
 * item opens at the first text (a call may come first: no empty message);
 * without, at once. docs/server.md, "Responses API".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/server_openai.h"
#include "server/server_tools.h"

static json_t *msg_id(const srv_gen *g)
{
    return json_sprintf("msg_%s", g->rid + 5);
}

/* A message item (text NULL: no part yet). */
static json_t *item_json(const srv_gen *g, const char *status, const char *text, size_t len)
{
    json_t *item = json_object(), *content = json_array();
    json_object_set_new(item, "id", msg_id(g));
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

/* A function_call item. */
static json_t *call_json(const srv_gen *g, int index, const char *call_id, json_t *name, json_t *args,
                         const char *status)
{
    json_t *o = json_object();
    json_object_set_new(o, "id", json_sprintf("fc_%s_%d", g->rid + 5, index));
    json_object_set_new(o, "type", json_string("function_call"));
    json_object_set_new(o, "status", json_string(status));
    json_object_set_new(o, "call_id", json_string(call_id));
    json_object_set_new(o, "name", name);
    json_object_set_new(o, "arguments", args);
    return o;
}

/* The response object: status "in_progress", "completed", "incomplete" or
 * "failed"; output: its items (taken; NULL: none yet). */
static json_t *response_json(const srv_gen *g, const char *status, json_t *output, const char *incomplete,
                             const char *error_code, const char *error_msg, const srv_job *usage)
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
    json_object_set_new(o, "output", output ? output : json_array());
    json_object_set(o, "parallel_tool_calls", json_object_get(ctx, "parallel_tool_calls"));
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
    json_object_set(o, "tool_choice", json_object_get(ctx, "tool_choice"));
    json_object_set(o, "tools", json_object_get(ctx, "tools"));
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

/* ------------------------------------------------------------ streamed */

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

/* The stream's items so far (wire_ctx "out"): done ones, and the open one
 * last ("open": "message" or "call"). */
static json_t *items(srv_gen *g)
{
    json_t *out = json_object_get(g->wire_ctx, "out");
    if (out == NULL) {
        out = json_array();
        json_object_set_new(g->wire_ctx, "out", out);
    }
    return out;
}

static const char *open_kind(const srv_gen *g)
{
    return json_string_value(json_object_get(g->wire_ctx, "open"));
}

static size_t open_index(srv_gen *g)
{
    return json_array_size(items(g)) - 1;
}

/* item_id, output_index (, content_index): where an item's event belongs. */
static json_t *at_item(srv_gen *g, int text)
{
    json_t *o = json_object(), *item = json_array_get(items(g), open_index(g));
    json_object_set(o, "item_id", json_object_get(item, "id"));
    json_object_set_new(o, "output_index", json_integer((json_int_t)open_index(g)));
    if (text)
        json_object_set_new(o, "content_index", json_integer(0));
    return o;
}

static void msg_open(srv_gen *g)
{
    json_array_append_new(items(g), item_json(g, "in_progress", NULL, 0));
    json_object_set_new(g->wire_ctx, "open", json_string("message"));
    json_t *o = with("item", item_json(g, "in_progress", NULL, 0));
    json_object_set_new(o, "output_index", json_integer((json_int_t)open_index(g)));
    event(g, "response.output_item.added", o);
    o = at_item(g, 1);
    json_t *part = json_object();
    json_object_set_new(part, "type", json_string("output_text"));
    json_object_set_new(part, "text", json_string(""));
    json_object_set_new(part, "annotations", json_array());
    json_object_set_new(part, "logprobs", json_array());
    json_object_set_new(o, "part", part);
    event(g, "response.content_part.added", o);
}

static void msg_close(srv_gen *g, const char *status)
{
    const char *text = g->text ? g->text : "";
    json_t *o = at_item(g, 1);
    json_object_set_new(o, "text", srv_json_text(text, g->text_len));
    json_object_set_new(o, "logprobs", json_array());
    event(g, "response.output_text.done", o);
    o = at_item(g, 1);
    json_t *item = item_json(g, "completed", text, g->text_len);
    json_object_set(o, "part", json_array_get(json_object_get(item, "content"), 0));
    event(g, "response.content_part.done", o);
    json_object_set_new(item, "status", json_string(status));
    json_array_set(items(g), open_index(g), item);
    o = with("item", item);
    json_object_set_new(o, "output_index", json_integer((json_int_t)open_index(g)));
    event(g, "response.output_item.done", o);
    json_object_del(g->wire_ctx, "open");
}

static void call_close(srv_gen *g, const char *status)
{
    json_t *item = json_array_get(items(g), open_index(g));
    json_t *o = at_item(g, 0);
    json_object_set(o, "name", json_object_get(item, "name"));
    json_object_set(o, "arguments", json_object_get(item, "arguments"));
    event(g, "response.function_call_arguments.done", o);
    json_object_set_new(item, "status", json_string(status));
    o = with("item", json_deep_copy(item));
    json_object_set_new(o, "output_index", json_integer((json_int_t)open_index(g)));
    event(g, "response.output_item.done", o);
    json_object_del(g->wire_ctx, "open");
}

/* The open item closed (status: how). */
static void close_open(srv_gen *g, const char *status)
{
    const char *k = open_kind(g);
    if (k && strcmp(k, "message") == 0)
        msg_close(g, status);
    else if (k)
        call_close(g, status);
}

static void r_start(srv_gen *g)
{
    event(g, "response.created", with("response", response_json(g, "in_progress", NULL, NULL, NULL, NULL, NULL)));
    event(g, "response.in_progress", with("response", response_json(g, "in_progress", NULL, NULL, NULL, NULL, NULL)));
    if (!g->tools_active) /* text only: the message at once */
        msg_open(g);
}

static void r_chunk(srv_gen *g, const char *text, size_t len, anvil_request_finish finish)
{
    if (finish != ANVIL_REQUEST_RUNNING)
        json_object_set_new(g->wire_ctx, "finish", json_integer(finish));
    if (len == 0)
        return;
    if (open_kind(g) == NULL)
        msg_open(g); /* content comes only before the calls */
    srv_gen_text_add(g, text, len);
    json_t *o = at_item(g, 1);
    json_object_set_new(o, "delta", srv_json_text(text, len));
    json_object_set_new(o, "logprobs", json_array());
    event(g, "response.output_text.delta", o);
}

/* A call begins (its item added), or the next piece of its arguments. */
static void r_tool(srv_gen *g, const srv_tools_delta *d)
{
    if (d->kind == SRV_TOOLS_DELTA_CALL) {
        close_open(g, "completed");
        char id[40];
        srv_tools_call_id(g->tool_parser, id, sizeof id);
        json_t *item = call_json(g, (int)json_array_size(items(g)), id, srv_json_text(d->text, d->len),
                                 json_string(""), "in_progress");
        json_array_append_new(items(g), item);
        json_object_set_new(g->wire_ctx, "open", json_string("call"));
        json_t *o = with("item", json_deep_copy(item));
        json_object_set_new(o, "output_index", json_integer((json_int_t)open_index(g)));
        event(g, "response.output_item.added", o);
        return;
    }
    const char *k = open_kind(g);
    if (d->kind != SRV_TOOLS_DELTA_ARGS || k == NULL || strcmp(k, "call") != 0)
        return;
    json_t *item = json_array_get(items(g), open_index(g));
    json_t *a = json_object_get(item, "arguments");
    size_t n = json_string_length(a);
    char *b = malloc(n + d->len + 1);
    if (b) {
        memcpy(b, json_string_value(a), n);
        memcpy(b + n, d->text, d->len);
        json_object_set_new(item, "arguments", srv_json_text(b, n + d->len));
        free(b);
    }
    json_t *o = at_item(g, 0);
    json_object_set_new(o, "delta", srv_json_text(d->text, d->len));
    event(g, "response.function_call_arguments.delta", o);
}

static void r_error(srv_gen *g, const char *msg)
{
    event(g, "response.failed",
          with("response", response_json(g, "failed", NULL, NULL, "server_error", msg, NULL)));
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
              with("response", response_json(g, "failed", NULL, NULL, "cancelled",
                                             "the request was cancelled (the server is shutting down, or its "
                                             "model unloading)",
                                             j)));
        return;
    }
    /* whole calls are completed, also when the length ended the text after
     * them (the body's finish_reason is then "tool_calls"); a call cut
     * short or broken is incomplete */
    const char *incomplete = f == ANVIL_REQUEST_LENGTH && !g->tools_whole ? "max_output_tokens" : NULL;
    const char *k = open_kind(g);
    int call = k && strcmp(k, "call") == 0;
    if (json_array_size(items(g)) == 0)
        msg_open(g); /* no text and no call: an empty message, as the body has */
    close_open(g, call ? (g->tools_whole ? "completed" : "incomplete") : incomplete ? "incomplete" : "completed");
    event(g, incomplete ? "response.incomplete" : "response.completed",
          with("response", response_json(g, incomplete ? "incomplete" : "completed", json_deep_copy(items(g)),
                                         incomplete, NULL, NULL, j)));
}

/* ------------------------------------------------------------ whole */

static void r_body(srv_job *j)
{
    srv_gen *g = &j->g;
    json_t *c = json_array_get(j->choices, 0), *m = json_object_get(c, "message");
    json_t *content = json_object_get(m, "content"), *calls = json_object_get(m, "tool_calls");
    const char *f = json_string_value(json_object_get(c, "finish_reason"));
    const char *incomplete = f && strcmp(f, "length") == 0 ? "max_output_tokens" : NULL;
    json_t *output = json_array();
    /* the text before the calls (none: no message), or the whole text */
    if (json_string_length(content) > 0 || json_array_size(calls) == 0)
        json_array_append_new(output, item_json(g, incomplete ? "incomplete" : "completed",
                                                json_string_value(content) ? json_string_value(content) : "",
                                                json_string_length(content)));
    size_t i;
    json_t *tc;
    json_array_foreach(calls, i, tc)
    {
        json_t *fn = json_object_get(tc, "function");
        json_array_append_new(output, call_json(g, (int)json_array_size(output),
                                                json_string_value(json_object_get(tc, "id")),
                                                json_incref(json_object_get(fn, "name")),
                                                json_incref(json_object_get(fn, "arguments")), "completed"));
    }
    json_t *o = response_json(g, incomplete ? "incomplete" : "completed", output, incomplete, NULL, NULL, j);
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
    .tool = r_tool,
};
