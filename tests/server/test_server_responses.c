/* The Responses API's answer with tool calls (server_responses_wire.c),
 * without a model or HTTP: the wire's hooks driven as the generation
 * drives them (text, a call's start, its arguments' pieces, the end), the
 * SSE events read back: their order and sequence numbers, the message item
 * opening at the first text and closing at the first call, each call an
 * item with its arguments' deltas adding up to its done event and the
 * final response's output; a call cut short is incomplete; without tools
 * the message opens at once; the whole body's output items. The server
 * tests (tests/python/test_server_responses.py) drive it end to end with
 * the openai client. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/server_openai.h"
#include "server/server_tools.h"
#include "testutil.h"

typedef struct fake {
    srv_model m;
    srv_job *j;
} fake;

/* A Responses job for body (its ctx from srv_responses_map). */
static srv_gen *fake_new(fake *f, const char *body, int tools)
{
    memset(f, 0, sizeof *f);
    json_t *in = json_loads(body, 0, NULL), *chat = NULL, *ctx = NULL, *err = NULL;
    assert_non_null(in);
    int status = 0;
    assert_int_equal(srv_responses_map(in, &chat, &ctx, &status, &err), 0);
    json_decref(in);
    json_decref(chat);
    f->m.name = "m";
    f->j = calloc(1, sizeof *f->j);
    srv_gen *g = &f->j->g;
    g->model = &f->m;
    g->wire = &srv_responses_wire;
    g->wire_ctx = ctx;
    g->tools_active = tools;
    g->tool_parser = SRV_TOOLS_HERMES;
    g->n = 1;
    snprintf(g->rid, sizeof g->rid, "resp_0123456789abcdef");
    f->j->n_choices = 1;
    f->j->prompt_tokens = 7;
    f->j->completion_tokens = 5;
    return g;
}

static void fake_free(fake *f)
{
    srv_gen *g = &f->j->g;
    free(g->buf);
    free(g->text);
    json_decref(g->wire_ctx);
    json_decref(f->j->choices);
    free(f->j);
}

/* The SSE events in g's buffer: [{"event": type, "data": {...}}]; each
 * event's name is its data's type and the sequence numbers count from 0. */
static json_t *events(const srv_gen *g)
{
    json_t *a = json_array();
    const char *p = g->buf ? g->buf : "", *end = p + g->len;
    while (p < end) {
        assert_memory_equal(p, "event: ", 7);
        const char *nl = strchr(p, '\n');
        char type[96];
        snprintf(type, sizeof type, "%.*s", (int)(nl - p - 7), p + 7);
        p = nl + 1;
        assert_memory_equal(p, "data: ", 6);
        nl = strstr(p, "\n\n");
        json_t *d = json_loadb(p + 6, (size_t)(nl - p - 6), 0, NULL);
        assert_non_null(d);
        assert_string_equal(json_string_value(json_object_get(d, "type")), type);
        assert_int_equal(json_integer_value(json_object_get(d, "sequence_number")), (json_int_t)json_array_size(a));
        json_array_append_new(a, d);
        p = nl + 2;
    }
    return a;
}

static const char *type_of(json_t *ev, size_t i)
{
    return json_string_value(json_object_get(json_array_get(ev, i), "type"));
}

/* The events' types, one string: "created in_progress item.added ...". */
static void types(json_t *ev, char *out, size_t cap)
{
    size_t k = 0;
    out[0] = '\0';
    for (size_t i = 0; i < json_array_size(ev); i++) {
        const char *t = type_of(ev, i) + strlen("response.");
        k += (size_t)snprintf(out + k, cap - k, "%s%s", i ? " " : "", t);
    }
}

static void tool(srv_gen *g, int kind, int index, const char *text)
{
    srv_tools_delta d = {kind, index, text, strlen(text)};
    srv_responses_wire.tool(g, &d);
}

#define TOOLS "\"tools\": [{\"type\": \"function\", \"name\": \"get_weather\", \"parameters\": {\"type\": \"object\"}}]"

static void test_stream_text_then_call(void **state)
{
    (void)state;
    fake f;
    srv_gen *g = fake_new(&f, "{\"input\": \"w?\", " TOOLS "}", 1);
    const srv_wire *w = &srv_responses_wire;
    w->start(g);
    w->chunk(g, "Let me ", 7, ANVIL_REQUEST_RUNNING);
    w->chunk(g, "check.", 6, ANVIL_REQUEST_RUNNING);
    tool(g, SRV_TOOLS_DELTA_CALL, 0, "get_weather");
    tool(g, SRV_TOOLS_DELTA_ARGS, 0, "{\"city\":");
    tool(g, SRV_TOOLS_DELTA_ARGS, 0, "\"Oslo\"}");
    tool(g, SRV_TOOLS_DELTA_CALL, 1, "get_weather");
    tool(g, SRV_TOOLS_DELTA_ARGS, 1, "{}");
    g->tools_whole = 1;
    w->chunk(g, "", 0, ANVIL_REQUEST_STOP);
    w->end(f.j);
    json_t *ev = events(g);
    char t[1024];
    types(ev, t, sizeof t);
    assert_string_equal(t, "created in_progress output_item.added content_part.added output_text.delta "
                           "output_text.delta output_text.done content_part.done output_item.done "
                           "output_item.added function_call_arguments.delta function_call_arguments.delta "
                           "function_call_arguments.done output_item.done output_item.added "
                           "function_call_arguments.delta function_call_arguments.done output_item.done completed");
    /* the message at 0, its text whole at its end */
    json_t *e = json_array_get(ev, 2);
    assert_string_equal(json_string_value(json_object_get(json_object_get(e, "item"), "type")), "message");
    assert_string_equal(json_string_value(json_object_get(json_array_get(ev, 6), "text")), "Let me check.");
    /* the first call: added with empty arguments at 1, deltas, done */
    e = json_array_get(ev, 9);
    json_t *item = json_object_get(e, "item");
    assert_int_equal(json_integer_value(json_object_get(e, "output_index")), 1);
    assert_string_equal(json_string_value(json_object_get(item, "type")), "function_call");
    assert_string_equal(json_string_value(json_object_get(item, "name")), "get_weather");
    assert_string_equal(json_string_value(json_object_get(item, "arguments")), "");
    assert_string_equal(json_string_value(json_object_get(item, "status")), "in_progress");
    const char *fc = json_string_value(json_object_get(item, "id"));
    const char *call_id = json_string_value(json_object_get(item, "call_id"));
    assert_memory_equal(fc, "fc_", 3);
    assert_memory_equal(call_id, "call_", 5);
    for (size_t i = 10; i <= 12; i++) {
        assert_string_equal(json_string_value(json_object_get(json_array_get(ev, i), "item_id")), fc);
        assert_int_equal(json_integer_value(json_object_get(json_array_get(ev, i), "output_index")), 1);
    }
    assert_string_equal(json_string_value(json_object_get(json_array_get(ev, 10), "delta")), "{\"city\":");
    assert_string_equal(json_string_value(json_object_get(json_array_get(ev, 12), "arguments")), "{\"city\":\"Oslo\"}");
    item = json_object_get(json_array_get(ev, 13), "item");
    assert_string_equal(json_string_value(json_object_get(item, "status")), "completed");
    assert_string_equal(json_string_value(json_object_get(item, "arguments")), "{\"city\":\"Oslo\"}");
    /* the final response: three items, completed, the tools repeated */
    json_t *r = json_object_get(json_array_get(ev, json_array_size(ev) - 1), "response");
    assert_string_equal(json_string_value(json_object_get(r, "status")), "completed");
    json_t *out = json_object_get(r, "output");
    assert_int_equal(json_array_size(out), 3);
    assert_string_equal(json_string_value(json_object_get(json_array_get(out, 1), "call_id")), call_id);
    assert_string_equal(json_string_value(json_object_get(json_array_get(out, 2), "arguments")), "{}");
    assert_string_equal(json_string_value(json_object_get(json_array_get(out, 2), "status")), "completed");
    assert_string_not_equal(json_string_value(json_object_get(json_array_get(out, 2), "id")), fc);
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(json_object_get(r, "tools"), 0), "name")), "get_weather");
    assert_string_equal(json_string_value(json_object_get(r, "tool_choice")), "auto");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(r, "usage"), "output_tokens")), 5);
    json_decref(ev);
    fake_free(&f);
}

/* A call first (no message), cut by max_output_tokens: incomplete. */
static void test_stream_call_cut(void **state)
{
    (void)state;
    fake f;
    srv_gen *g = fake_new(&f, "{\"input\": \"w?\", \"tool_choice\": \"required\", " TOOLS "}", 1);
    const srv_wire *w = &srv_responses_wire;
    w->start(g);
    tool(g, SRV_TOOLS_DELTA_CALL, 0, "get_weather");
    tool(g, SRV_TOOLS_DELTA_ARGS, 0, "{\"city\":\"Os");
    g->tools_whole = 0;
    w->chunk(g, "", 0, ANVIL_REQUEST_LENGTH);
    w->end(f.j);
    json_t *ev = events(g);
    char t[1024];
    types(ev, t, sizeof t);
    assert_string_equal(t, "created in_progress output_item.added function_call_arguments.delta "
                           "function_call_arguments.done output_item.done incomplete");
    json_t *r = json_object_get(json_array_get(ev, 6), "response");
    assert_string_equal(json_string_value(json_object_get(r, "status")), "incomplete");
    assert_string_equal(json_string_value(json_object_get(json_object_get(r, "incomplete_details"), "reason")),
                        "max_output_tokens");
    json_t *item = json_array_get(json_object_get(r, "output"), 0);
    assert_string_equal(json_string_value(json_object_get(item, "status")), "incomplete");
    assert_string_equal(json_string_value(json_object_get(item, "arguments")), "{\"city\":\"Os");
    assert_string_equal(json_string_value(json_object_get(r, "tool_choice")), "required");
    json_decref(ev);
    fake_free(&f);
    /* whole calls, then the length ran out (text after them, dropped): completed, as the body */
    g = fake_new(&f, "{\"input\": \"w?\", " TOOLS "}", 1);
    w->start(g);
    tool(g, SRV_TOOLS_DELTA_CALL, 0, "get_weather");
    tool(g, SRV_TOOLS_DELTA_ARGS, 0, "{}");
    g->tools_whole = 1;
    w->chunk(g, "", 0, ANVIL_REQUEST_LENGTH);
    w->end(f.j);
    ev = events(g);
    r = json_object_get(json_array_get(ev, json_array_size(ev) - 1), "response");
    assert_string_equal(type_of(ev, json_array_size(ev) - 1), "response.completed");
    assert_string_equal(json_string_value(json_object_get(json_array_get(json_object_get(r, "output"), 0), "status")),
                        "completed");
    json_decref(ev);
    fake_free(&f);
    /* tools, but neither text nor a call: one empty message, as the body has */
    g = fake_new(&f, "{\"input\": \"w?\", " TOOLS "}", 1);
    w->start(g);
    w->chunk(g, "", 0, ANVIL_REQUEST_STOP);
    w->end(f.j);
    ev = events(g);
    types(ev, t, sizeof t);
    assert_string_equal(t, "created in_progress output_item.added content_part.added output_text.done "
                           "content_part.done output_item.done completed");
    json_decref(ev);
    fake_free(&f);
    /* no tools: the message opens at once (before any token) */
    g = fake_new(&f, "{\"input\": \"w?\"}", 0);
    w->start(g);
    ev = events(g);
    types(ev, t, sizeof t);
    assert_string_equal(t, "created in_progress output_item.added content_part.added");
    json_decref(ev);
    fake_free(&f);
}

/* The whole body: the text before the calls as a message (none when
 * empty), each call a function_call item with the call's id. */
static void test_body(void **state)
{
    (void)state;
    static const struct {
        const char *message; /* the chat choice's */
        const char *finish;
        const char *types;   /* the output items' */
    } cases[] = {
        {"{\"content\": null, \"tool_calls\": [{\"id\": \"call_a\", \"type\": \"function\", \"function\": {\"name\": "
         "\"get_weather\", \"arguments\": \"{}\"}}, {\"id\": \"call_b\", \"type\": \"function\", \"function\": "
         "{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\":\\\"x\\\"}\"}}]}",
         "tool_calls", "function_call function_call"},
        {"{\"content\": \"Sure.\", \"tool_calls\": [{\"id\": \"call_a\", \"type\": \"function\", \"function\": "
         "{\"name\": \"get_weather\", \"arguments\": \"{}\"}}]}",
         "tool_calls", "message function_call"},
        {"{\"content\": \"\"}", "stop", "message"},
        {"{\"content\": \"<tool_call>{\\\"name\\\"\"}", "length", "message"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fake f;
        srv_gen *g = fake_new(&f, "{\"input\": \"w?\", " TOOLS "}", 1);
        json_t *c = json_object();
        json_object_set_new(c, "message", json_loads(cases[i].message, 0, NULL));
        json_object_set_new(c, "finish_reason", json_string(cases[i].finish));
        f.j->choices = json_array();
        json_array_append_new(f.j->choices, c);
        srv_responses_wire.body(f.j);
        assert_int_equal(g->http_status, 200);
        json_t *r = json_loadb(g->buf, g->len, 0, NULL);
        assert_non_null(r);
        json_t *out = json_object_get(r, "output");
        char t[256];
        size_t k = 0;
        t[0] = '\0';
        for (size_t n = 0; n < json_array_size(out); n++)
            k += (size_t)snprintf(t + k, sizeof t - k, "%s%s", n ? " " : "",
                                  json_string_value(json_object_get(json_array_get(out, n), "type")));
        assert_string_equal(t, cases[i].types);
        json_t *msg = json_loads(cases[i].message, 0, NULL), *calls = json_object_get(msg, "tool_calls");
        for (size_t n = 0; n < json_array_size(calls); n++) {
            json_t *item = json_array_get(out, json_array_size(out) - json_array_size(calls) + n);
            json_t *tc = json_array_get(calls, n), *fn = json_object_get(tc, "function");
            assert_true(json_equal(json_object_get(item, "call_id"), json_object_get(tc, "id")));
            assert_true(json_equal(json_object_get(item, "name"), json_object_get(fn, "name")));
            assert_true(json_equal(json_object_get(item, "arguments"), json_object_get(fn, "arguments")));
            assert_string_equal(json_string_value(json_object_get(item, "status")), "completed");
            assert_memory_equal(json_string_value(json_object_get(item, "id")), "fc_", 3);
        }
        json_decref(msg);
        assert_string_equal(json_string_value(json_object_get(r, "status")),
                            strcmp(cases[i].finish, "length") == 0 ? "incomplete" : "completed");
        json_decref(r);
        fake_free(&f);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stream_text_then_call),
        cmocka_unit_test(test_stream_call_cut),
        cmocka_unit_test(test_body),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
