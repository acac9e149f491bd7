/* Tool calls without a model or HTTP (server_tools.c): every family's
 * output parsed whole and streamed in pieces split at every byte offset
 * (the content streamed out, put together, and the calls are the whole
 * parse's); malformed calls fall back to content; the forcing grammar of
 * each family accepts a valid call and refuses a wrong one (a tool with
 * $defs included); the parser read from real chat templates; requests
 * mapped (srv_openai_map, no executor) with tinycode's tokenizer and the
 * real templates: the prompt ends with the call's opening marker when a
 * call is forced, a past call and the tool's answer are rendered (the
 * arguments as an object), refusals name their field. The server
 * tests (tests/python/test_server_tools.py) drive it end to end. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anvil/chat_template.h"
#include "anvil/grammar.h"
#include "server/server_guided.h"
#include "server/server_openai.h"
#include "server/server_tools.h"
#include "testutil.h"

typedef struct tcase {
    int parser, forced;
    const char *text;
    const char *content; /* the whole parse's content */
    const char *calls;   /* JSON array of {name, arguments}, or NULL: none */
} tcase;

static const tcase CASES[] = {
    /* hermes (Qwen2.5 / Qwen3) */
    {SRV_TOOLS_HERMES, 0,
     "Let me look.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
     "Let me look.", "[{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\":\\\"Paris\\\"}\"}]"},
    {SRV_TOOLS_HERMES, 0,
     "<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", "
     "\"arguments\": {\"x\": [1, 2]}}\n</tool_call>",
     "", "[{\"name\":\"a\",\"arguments\":\"{}\"},{\"name\":\"b\",\"arguments\":\"{\\\"x\\\":[1,2]}\"}]"},
    {SRV_TOOLS_HERMES, 0, "<tool_call>{\"name\": \"a\", \"arguments\": {\"k\": \"v\"}}", "",
     "[{\"name\":\"a\",\"arguments\":\"{\\\"k\\\":\\\"v\\\"}\"}]"}, /* the close never came */
    {SRV_TOOLS_HERMES, 0, "<tool_call>{\"name\": \"a\", \"arguments\": {\"k\": ", /* cut short */
     "<tool_call>{\"name\": \"a\", \"arguments\": {\"k\": ", NULL},
    {SRV_TOOLS_HERMES, 0, "x <tool_call>{\"arguments\": {}}</tool_call>", /* no name */
     "x <tool_call>{\"arguments\": {}}</tool_call>", NULL},
    {SRV_TOOLS_HERMES, 0, "a < b and <tool_ is not a call <tool", "a < b and <tool_ is not a call <tool", NULL},
    {SRV_TOOLS_HERMES, 0, "caf\xc3\xa9 \xe2\x82\xac", "caf\xc3\xa9 \xe2\x82\xac", NULL},
    {SRV_TOOLS_HERMES, 0, "", "", NULL},
    {SRV_TOOLS_HERMES, 0, "<tool_call>{\"name\": \"a\", \"arguments\": \"{\\\"s\\\": 1}\"}</tool_call> trailing", "",
     "[{\"name\":\"a\",\"arguments\":\"{\\\"s\\\": 1}\"}]"}, /* arguments as a string stay as they are */
    {SRV_TOOLS_HERMES, 1, "{\"name\": \"f\", \"arguments\": {\"n\": 3}}", "",
     "[{\"name\":\"f\",\"arguments\":\"{\\\"n\\\":3}\"}]"},
    /* llama3_json */
    {SRV_TOOLS_LLAMA3, 0, "{\"name\": \"f\", \"parameters\": {\"q\": \"x\"}}", "",
     "[{\"name\":\"f\",\"arguments\":\"{\\\"q\\\":\\\"x\\\"}\"}]"},
    {SRV_TOOLS_LLAMA3, 0, " \n<|python_tag|>{\"name\": \"f\", \"parameters\": {}}; {\"name\": \"g\", \"arguments\": {}}",
     "", "[{\"name\":\"f\",\"arguments\":\"{}\"},{\"name\":\"g\",\"arguments\":\"{}\"}]"},
    {SRV_TOOLS_LLAMA3, 0, "Sure: {\"name\": \"f\", \"parameters\": {}}", "Sure: {\"name\": \"f\", \"parameters\": {}}",
     NULL}, /* a call only at the start */
    {SRV_TOOLS_LLAMA3, 0, "{\"answer\": 42}", "{\"answer\": 42}", NULL},
    {SRV_TOOLS_LLAMA3, 0, "{\"name\": \"f\", \"parameters\": {}} and more", "{\"name\": \"f\", \"parameters\": {}} and more",
     NULL},
    {SRV_TOOLS_LLAMA3, 0, "<|python", "<|python", NULL},
    {SRV_TOOLS_LLAMA3, 0, "  ", "  ", NULL},
    {SRV_TOOLS_LLAMA3, 1, "{\"name\": \"f\", \"parameters\": {\"a\": true}}", "",
     "[{\"name\":\"f\",\"arguments\":\"{\\\"a\\\":true}\"}]"},
    /* mistral */
    {SRV_TOOLS_MISTRAL, 0,
     "Checking. [TOOL_CALLS][{\"name\": \"f\", \"arguments\": {\"a\": 1}}, {\"name\": \"g\", \"arguments\": "
     "\"{\\\"b\\\": 2}\"}]",
     "Checking. ", "[{\"name\":\"f\",\"arguments\":\"{\\\"a\\\":1}\"},{\"name\":\"g\",\"arguments\":\"{\\\"b\\\": 2}\"}]"},
    {SRV_TOOLS_MISTRAL, 0, "[TOOL_CALLS] [{\"name\": \"f\", \"arguments\": {}}]", "",
     "[{\"name\":\"f\",\"arguments\":\"{}\"}]"},
    {SRV_TOOLS_MISTRAL, 0, "[1, 2] [TOOL_CALLS", "[1, 2] [TOOL_CALLS", NULL},
    {SRV_TOOLS_MISTRAL, 0, "[TOOL_CALLS][{\"name\": 3}]", "[TOOL_CALLS][{\"name\": 3}]", NULL},
    {SRV_TOOLS_MISTRAL, 0, "[TOOL_CALLS][]", "[TOOL_CALLS][]", NULL},
    {SRV_TOOLS_MISTRAL, 1, "[{\"name\": \"f\", \"arguments\": {\"u\": null}}]", "",
     "[{\"name\":\"f\",\"arguments\":\"{\\\"u\\\":null}\"}]"},
    /* none: never parsed, except a forced array */
    {SRV_TOOLS_NONE, 0, "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>",
     "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>", NULL},
    {SRV_TOOLS_NONE, 1, "[{\"name\": \"f\", \"parameters\": {\"z\": 1.5}}]", "",
     "[{\"name\":\"f\",\"arguments\":\"{\\\"z\\\":1.5}\"}]"},
    {SRV_TOOLS_NONE, 1, "[{\"name\": \"f\", \"param", "[{\"name\": \"f\", \"param", NULL}, /* max_tokens */
};

static void check_result(const tcase *c, const char *content, size_t content_len, json_t *calls, const char *how)
{
    if (content_len != strlen(c->content) || memcmp(content, c->content, content_len) != 0)
        fail_msg("%s of [%s]: content [%.*s], want [%s]", how, c->text, (int)content_len, content, c->content);
    if (c->calls == NULL) {
        if (calls != NULL)
            fail_msg("%s of [%s]: calls where none are", how, c->text);
        return;
    }
    json_t *want = json_loads(c->calls, 0, NULL);
    assert_non_null(want);
    if (calls == NULL || !json_equal(calls, want)) {
        char *got = calls ? json_dumps(calls, JSON_COMPACT) : NULL;
        fail_msg("%s of [%s]: calls %s, want %s", how, c->text, got ? got : "(none)", c->calls);
    }
    json_decref(want);
}

static void test_parse_whole(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        const tcase *c = &CASES[i];
        srv_tools_result r;
        assert_int_equal(srv_tools_parse(c->parser, c->forced, c->text, strlen(c->text), &r), 0);
        check_result(c, r.content, r.content_len, r.calls, "whole parse");
        srv_tools_result_free(&r);
    }
}

/* What a stream handed out, put together: its content, its calls
 * ({name, arguments} as the pieces add up), whether the end said whole. */
typedef struct streamed {
    char *content;
    size_t content_len;
    json_t *calls;
    int whole;
    int early; /* argument pieces out before the end */
} streamed;

static void add_deltas(streamed *o, const srv_tools_delta *ev, int n_ev, int at_end)
{
    for (int i = 0; i < n_ev; i++) {
        const srv_tools_delta *d = &ev[i];
        if (d->kind == SRV_TOOLS_DELTA_CONTENT) {
            /* content only before the first call */
            assert_int_equal(json_array_size(o->calls), 0);
            o->content = realloc(o->content, o->content_len + d->len + 1);
            memcpy(o->content + o->content_len, d->text, d->len);
            o->content_len += d->len;
        } else if (d->kind == SRV_TOOLS_DELTA_CALL) {
            /* calls in order, each once */
            assert_int_equal(d->index, (int)json_array_size(o->calls));
            assert_true(d->len > 0);
            json_array_append_new(o->calls, json_pack("{s:s%, s:s}", "name", d->text, d->len, "arguments", ""));
        } else {
            /* pieces of the last call only: a call's arguments are whole before the next begins */
            assert_int_equal(d->kind, SRV_TOOLS_DELTA_ARGS);
            assert_int_equal(d->index, (int)json_array_size(o->calls) - 1);
            assert_true(d->len > 0);
            json_t *c = json_array_get(o->calls, (size_t)d->index);
            const char *a = json_string_value(json_object_get(c, "arguments"));
            char *b = malloc(strlen(a) + d->len + 1);
            memcpy(b, a, strlen(a));
            memcpy(b + strlen(a), d->text, d->len);
            json_object_set_new(c, "arguments", json_stringn(b, strlen(a) + d->len));
            free(b);
            o->early |= !at_end;
        }
    }
}

/* Streams text cut at the given offsets (n_cuts of them, ascending). */
static streamed stream_run(int parser, int forced, const char *text, const size_t *cuts, int n_cuts)
{
    size_t len = strlen(text), at = 0;
    streamed o = {malloc(1), 0, json_array(), 0, 0};
    srv_tools_stream *s = srv_tools_stream_new(parser, forced);
    assert_non_null(s);
    const srv_tools_delta *ev;
    int n_ev;
    for (int k = 0; k <= n_cuts; k++) {
        size_t to = k < n_cuts ? cuts[k] : len;
        assert_int_equal(srv_tools_stream_push(s, text + at, to - at, &ev, &n_ev), 0);
        add_deltas(&o, ev, n_ev, 0);
        at = to;
    }
    assert_int_equal(srv_tools_stream_finish(s, &ev, &n_ev, &o.whole), 0);
    add_deltas(&o, ev, n_ev, 1);
    assert_int_equal(srv_tools_stream_calls(s), (int)json_array_size(o.calls));
    /* a second end (a cancel after it) gives nothing */
    int whole2 = 1;
    assert_int_equal(srv_tools_stream_finish(s, &ev, &n_ev, &whole2), 0);
    assert_int_equal(n_ev, 0);
    assert_int_equal(whole2, 0);
    srv_tools_stream_free(s);
    return o;
}

static void streamed_free(streamed *o)
{
    free(o->content);
    json_decref(o->calls);
}

static int streamed_equal(const streamed *a, const streamed *b)
{
    return a->content_len == b->content_len && memcmp(a->content, b->content, a->content_len) == 0 &&
           json_equal(a->calls, b->calls) && a->whole == b->whole;
}

/*
 * Streams text cut in two at every offset and a byte at a time. Each gives
 * what the text pushed whole gives. When the whole parse finds calls, the
 * stream's content and calls (the pieces put together) are the parse's and
 * the end says whole; when it finds none and no call went out, the content
 * is the whole text; a call that went out and then broke is not whole
 * (want_calls: what went out, JSON; NULL: no check).
 */
static void stream_check(int parser, int forced, const char *text, const char *want_calls)
{
    size_t len = strlen(text);
    streamed one = stream_run(parser, forced, text, NULL, 0);
    srv_tools_result r;
    assert_int_equal(srv_tools_parse(parser, forced, text, len, &r), 0);
    if (r.calls) {
        if (!one.whole || one.content_len != r.content_len || memcmp(one.content, r.content, r.content_len) != 0 ||
            !json_equal(one.calls, r.calls)) {
            char *got = json_dumps(one.calls, JSON_COMPACT), *want = json_dumps(r.calls, JSON_COMPACT);
            fail_msg("stream of [%s]: content [%.*s] calls %s whole %d, want [%s] %s", text, (int)one.content_len,
                     one.content, got, one.whole, r.content, want);
        }
    } else if (json_array_size(one.calls) == 0) {
        assert_false(one.whole);
        if (one.content_len != len || memcmp(one.content, text, len) != 0)
            fail_msg("stream of [%s]: content [%.*s], want the whole text", text, (int)one.content_len, one.content);
    } else {
        assert_false(one.whole); /* a call broke after it went out */
    }
    if (want_calls) {
        json_t *w = json_loads(want_calls, 0, NULL);
        assert_non_null(w);
        if (!json_equal(w, one.calls)) {
            char *got = json_dumps(one.calls, JSON_COMPACT);
            fail_msg("stream of [%s]: calls %s, want %s", text, got, want_calls);
        }
        json_decref(w);
    }
    srv_tools_result_free(&r);
    size_t *every = malloc((len + 1) * sizeof *every);
    for (size_t k = 0; k <= len; k++) {
        streamed two = stream_run(parser, forced, text, &k, 1);
        if (!streamed_equal(&one, &two))
            fail_msg("stream of [%s] cut at %zu differs from it whole", text, k);
        streamed_free(&two);
        every[k] = k + 1;
    }
    streamed bytes = stream_run(parser, forced, text, every, len > 0 ? (int)len - 1 : 0);
    if (!streamed_equal(&one, &bytes))
        fail_msg("stream of [%s] a byte at a time differs from it whole", text);
    streamed_free(&bytes);
    free(every);
    streamed_free(&one);
}

static void test_parse_streamed(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++)
        stream_check(CASES[i].parser, CASES[i].forced, CASES[i].text, NULL);
}

/* Arguments whose compact text differs from what the model wrote: escapes,
 * characters, numbers jansson writes its own way, nesting; arguments as a
 * string; arguments before the name; several calls. Streamed equals whole. */
static void test_stream_arguments(void **state)
{
    (void)state;
    static const struct {
        int parser, forced;
        const char *text;
    } cases[] = {
        {SRV_TOOLS_HERMES, 0,
         "Sure.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"s\": \"a\\\"b\\\\c\\n\\t\\u00e9\\u20ac "
         "caf\xc3\xa9 \xf0\x9f\x98\x80 \\ud83d\\ude00 \\/ \\u001f\", \"n\": [1, -2, 3.50, 1e3, -0, 0.1, 1E-7], "
         "\"b\": [true, false, null], \"o\": {\"x\": {}, \"y\": [], \"z\": [[{\"q\": \"\"}]]}}}\n</tool_call>"},
        {SRV_TOOLS_HERMES, 0,
         "<tool_call>{\"arguments\": {\"city\": \"Oslo\"}, \"name\": \"get_weather\"}</tool_call> between "
         "<tool_call>{\"name\": \"g\", \"id\": 7, \"arguments\": \"{\\\"raw\\\": [1,2]}\", \"extra\": [{\"a\": "
         "1}]}</tool_call>\ntrailing"},
        {SRV_TOOLS_HERMES, 0, "<tool_call>{\"name\": \"p\"}</tool_call><tool_call>{\"name\": \"q\", \"arguments\": "
                              "null}</tool_call>"},
        {SRV_TOOLS_MISTRAL, 0,
         "[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {\"v\": 1.25e2}}, {\"name\": \"b\", \"arguments\": {\"w\": "
         "\"\\u00fcber\"}}, {\"name\": \"c\", \"arguments\": {}}]"},
        {SRV_TOOLS_MISTRAL, 0, "[TOOL_CALLS]{\"name\": \"a\", \"arguments\": {\"k\": [{}, {\"l\": 0}]}}"},
        {SRV_TOOLS_LLAMA3, 0,
         "<|python_tag|>{\"name\": \"f\", \"parameters\": {\"q\": \"x y\"}}; {\"name\": \"g\", \"parameters\": "
         "{\"n\": 42}}"},
        {SRV_TOOLS_LLAMA3, 1, "{\"name\": \"f\", \"parameters\": {\"deep\": {\"a\": {\"b\": {\"c\": [0.5]}}}}}"},
        {SRV_TOOLS_NONE, 1, "[{\"name\": \"f\", \"parameters\": {\"a\": 1}}, {\"name\": \"g\", \"parameters\": {}}]"},
        {SRV_TOOLS_MISTRAL, 1, "[{\"name\": \"f\", \"arguments\": {\"a\": \"\xe2\x82\xac\"}}]"},
        {SRV_TOOLS_HERMES, 1, "{\"name\": \"f\", \"arguments\": {\"n\": 123456789012}}\n</tool_call>"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        srv_tools_result r;
        assert_int_equal(srv_tools_parse(cases[i].parser, cases[i].forced, cases[i].text, strlen(cases[i].text), &r),
                         0);
        if (r.calls == NULL)
            fail_msg("case %zu: the whole parse finds no call", i);
        srv_tools_result_free(&r);
        stream_check(cases[i].parser, cases[i].forced, cases[i].text, NULL);
    }
}

/* A small deterministic generator (xorshift) for random arguments. */
static uint64_t rng_next(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static json_t *random_value(uint64_t *x, int depth)
{
    static const char *const strs[] = {"Oslo", "a \"quoted\" \\ word", "line\nbreak\ttab", "caf\xc3\xa9 \xe2\x82\xac",
                                       "\xf0\x9f\x98\x80 emoji", "ctl \x01\x1f", "", "slash / and <tag>"};
    static const double reals[] = {1.5, -0.25, 1e-7, 2.5e10, 3.0, 0.1};
    int kind = (int)(rng_next(x) % (depth < 3 ? 8 : 5));
    switch (kind) {
    case 0:
        return json_string(strs[rng_next(x) % 8]);
    case 1:
        return json_integer((json_int_t)(rng_next(x) % 2000000) - 1000000);
    case 2:
        return json_real(reals[rng_next(x) % 6]);
    case 3:
        return rng_next(x) % 2 ? json_true() : json_false();
    case 4:
        return json_null();
    case 5:
    case 6: {
        json_t *o = json_object();
        int n = (int)(rng_next(x) % 4);
        for (int i = 0; i < n; i++)
            json_object_set_new(o, strs[rng_next(x) % 8], random_value(x, depth + 1));
        return o;
    }
    default: {
        json_t *a = json_array();
        int n = (int)(rng_next(x) % 4);
        for (int i = 0; i < n; i++)
            json_array_append_new(a, random_value(x, depth + 1));
        return a;
    }
    }
}

/* Random arguments (every JSON kind, escapes, characters outside the BMP)
 * written the ways models and json.dumps write them (compact, indented,
 * spaced, \u-escaped): streamed at every cut equals the whole parse. */
static void test_stream_random(void **state)
{
    (void)state;
    static const size_t flags[] = {JSON_COMPACT, JSON_INDENT(2), 0, JSON_ENSURE_ASCII, JSON_ENSURE_ASCII | JSON_COMPACT};
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 30; i++) {
        json_t *args = json_object();
        int n = 1 + (int)(rng_next(&x) % 3);
        for (int k = 0; k < n; k++) {
            char key[16];
            snprintf(key, sizeof key, "k%d", k);
            json_object_set_new(args, key, random_value(&x, 1));
        }
        json_t *call = json_pack("{s:s, s:o}", "name", "tool_x", i % 3 == 2 ? "parameters" : "arguments", args);
        char *body = json_dumps(call, flags[i % 5]);
        json_decref(call);
        char text[4096];
        int parser = i % 3 == 0 ? SRV_TOOLS_HERMES : i % 3 == 1 ? SRV_TOOLS_MISTRAL : SRV_TOOLS_LLAMA3;
        if (parser == SRV_TOOLS_HERMES)
            snprintf(text, sizeof text, "Text first. <tool_call>\n%s\n</tool_call>", body);
        else if (parser == SRV_TOOLS_MISTRAL)
            snprintf(text, sizeof text, "[TOOL_CALLS][%s, %s]", body, body);
        else
            snprintf(text, sizeof text, "<|python_tag|>%s", body);
        free(body);
        srv_tools_result r;
        assert_int_equal(srv_tools_parse(parser, 0, text, strlen(text), &r), 0);
        if (r.calls == NULL)
            fail_msg("random case %d does not parse: %s", i, text);
        srv_tools_result_free(&r);
        stream_check(parser, 0, text, NULL);
    }
    /* deep arguments (300 levels; jansson takes 2048) */
    char deep[2048];
    int k = snprintf(deep, sizeof deep, "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": ");
    for (int i = 0; i < 300; i++)
        deep[k++] = '[';
    deep[k++] = '1';
    for (int i = 0; i < 300; i++)
        deep[k++] = ']';
    snprintf(deep + k, sizeof deep - (size_t)k, "}}</tool_call>");
    srv_tools_result r;
    assert_int_equal(srv_tools_parse(SRV_TOOLS_HERMES, 0, deep, strlen(deep), &r), 0);
    assert_non_null(r.calls);
    srv_tools_result_free(&r);
    stream_check(SRV_TOOLS_HERMES, 0, deep, NULL);
}

/* A call that breaks after its name went out: what went out stays (the
 * arguments so far), the end says not whole; a marker that is no call,
 * and a call object broken before its name, are content. */
static void test_stream_broken(void **state)
{
    (void)state;
    static const struct {
        int parser, forced;
        const char *text, *calls; /* what went out */
    } cases[] = {
        /* max_tokens cut inside the arguments: the number at the end is whole at the end */
        {SRV_TOOLS_HERMES, 0, "<tool_call>{\"name\": \"f\", \"arguments\": {\"k\": \"v\", \"n\": 12",
         "[{\"name\": \"f\", \"arguments\": \"{\\\"k\\\":\\\"v\\\",\\\"n\\\":12\"}]"},
        {SRV_TOOLS_HERMES, 1, "{\"name\": \"f\", \"arguments\": {\"k\": \"caf\xc3",
         "[{\"name\": \"f\", \"arguments\": \"{\\\"k\\\":\\\"caf\"}]"},
        {SRV_TOOLS_NONE, 1, "[{\"name\": \"f\", \"param", "[{\"name\": \"f\", \"arguments\": \"\"}]"},
        {SRV_TOOLS_MISTRAL, 0, "[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {}}, {\"name\": \"b\", \"argu",
         "[{\"name\": \"a\", \"arguments\": \"{}\"}, {\"name\": \"b\", \"arguments\": \"\"}]"},
        /* malformed after the name: True is no JSON; a second block that is no call; text after llama's call */
        {SRV_TOOLS_HERMES, 0, "<tool_call>{\"name\": \"f\", \"arguments\": {\"ok\": True}}</tool_call>",
         "[{\"name\": \"f\", \"arguments\": \"{\\\"ok\\\":\"}]"},
        {SRV_TOOLS_HERMES, 0, "<tool_call>{\"name\": \"f\"}</tool_call><tool_call>oops</tool_call>",
         "[{\"name\": \"f\", \"arguments\": \"{}\"}]"},
        {SRV_TOOLS_LLAMA3, 0, "{\"name\": \"f\", \"parameters\": {}} and more", "[{\"name\": \"f\", \"arguments\": \"{}\"}]"},
        /* a key twice, arguments and parameters both: which value? */
        {SRV_TOOLS_HERMES, 0, "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1, \"a\": 2}}</tool_call>",
         "[{\"name\": \"f\", \"arguments\": \"{\\\"a\\\":1,\\\"a\\\":2}\"}]"},
        {SRV_TOOLS_HERMES, 0, "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}, \"parameters\": {}}</tool_call>",
         "[{\"name\": \"f\", \"arguments\": \"{\\\"a\\\":1}\"}]"},
        /* no call went out: content, whole */
        {SRV_TOOLS_HERMES, 0, "Hi <tool_call> not a call", "[]"},
        {SRV_TOOLS_HERMES, 0, "<tool_call>{\"arguments\": {\"a\": 1}, \"id\": 3}</tool_call> text", "[]"},
        {SRV_TOOLS_HERMES, 0, "<tool_call>{\"name\": 5, \"arguments\": {}}</tool_call>", "[]"},
        {SRV_TOOLS_HERMES, 0, "<tool_call>[{\"name\": \"f\"}]</tool_call>", "[]"},
        {SRV_TOOLS_MISTRAL, 0, "ok [TOOL_CALLS] sorry", "[]"},
        {SRV_TOOLS_MISTRAL, 0, "[TOOL_CALLS][\"f\"]", "[]"},
        {SRV_TOOLS_LLAMA3, 0, "<|python_tag|>print(1)", "[]"},
        {SRV_TOOLS_LLAMA3, 0, "{\"x\": 1, \"name\": \"", "[]"},
        {SRV_TOOLS_HERMES, 0, "<tool_call>{\"name\": \"a\\u0000\"}</tool_call>", "[]"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        stream_check(cases[i].parser, cases[i].forced, cases[i].text, cases[i].calls);
}

/* Pieces go out as they come: content before a call at once, a partial
 * marker held, the call at its name, the arguments as generated, a number
 * held until it ends, a string by whole characters. */
static int push(srv_tools_stream *s, const char *t, const srv_tools_delta **ev, int *n)
{
    return srv_tools_stream_push(s, t, strlen(t), ev, n);
}

static void test_stream_pieces(void **state)
{
    (void)state;
    srv_tools_stream *s = srv_tools_stream_new(SRV_TOOLS_HERMES, 0);
    const srv_tools_delta *ev;
    int n;
    assert_int_equal(push(s, "Hello <tool", &ev, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(ev[0].kind, SRV_TOOLS_DELTA_CONTENT);
    assert_memory_equal(ev[0].text, "Hello ", 6);
    assert_int_equal(ev[0].len, 6);
    assert_int_equal(push(s, "_call>\n{\"name\": \"get_wea", &ev, &n), 0);
    assert_int_equal(n, 0); /* the name is not whole yet */
    assert_int_equal(push(s, "ther\", \"arguments\": {\"city\": \"Par", &ev, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(ev[0].kind, SRV_TOOLS_DELTA_CALL);
    assert_int_equal(ev[0].index, 0);
    assert_int_equal(ev[0].len, 11);
    assert_memory_equal(ev[0].text, "get_weather", 11);
    assert_int_equal(ev[1].kind, SRV_TOOLS_DELTA_ARGS);
    assert_int_equal(ev[1].len, 12);
    assert_memory_equal(ev[1].text, "{\"city\":\"Par", 12);
    assert_int_equal(push(s, "is \xe2\x82", &ev, &n), 0); /* half a character */
    assert_int_equal(n, 1);
    assert_int_equal(ev[0].len, 3);
    assert_memory_equal(ev[0].text, "is ", 3);
    assert_int_equal(push(s, "\xac\", \"days\": 1", &ev, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(ev[0].len, 12); /* the 1 may go on: held */
    assert_memory_equal(ev[0].text, "\xe2\x82\xac\",\"days\":", 12);
    assert_int_equal(push(s, "0}", &ev, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(ev[0].len, 3);
    assert_memory_equal(ev[0].text, "10}", 3);
    assert_int_equal(push(s, "}\n</tool_call>", &ev, &n), 0);
    assert_int_equal(n, 0);
    int whole = 0;
    assert_int_equal(srv_tools_stream_finish(s, &ev, &n, &whole), 0);
    assert_int_equal(n, 0);
    assert_true(whole);
    srv_tools_stream_free(s);
    /* llama3_json: not a call, everything at once */
    s = srv_tools_stream_new(SRV_TOOLS_LLAMA3, 0);
    assert_int_equal(push(s, " Paris", &ev, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(ev[0].len, 6);
    srv_tools_stream_free(s);
    srv_tools_stream_free(NULL);
}

static void test_call_ids(void **state)
{
    (void)state;
    char a[40], b[40];
    srv_tools_call_id(SRV_TOOLS_HERMES, a, sizeof a);
    srv_tools_call_id(SRV_TOOLS_HERMES, b, sizeof b);
    assert_int_equal(strlen(a), 29);
    assert_memory_equal(a, "call_", 5);
    assert_string_not_equal(a + 5 + 12, b + 5 + 12); /* the tails differ too */
    srv_tools_call_id(SRV_TOOLS_MISTRAL, a, sizeof a);
    assert_int_equal(strlen(a), 9); /* Mistral's templates take 9 letters and digits */
    for (int i = 0; i < 9; i++)
        assert_true((a[i] >= 'a' && a[i] <= 'z') || (a[i] >= 'A' && a[i] <= 'Z') || (a[i] >= '0' && a[i] <= '9'));
    assert_int_equal(srv_tools_parser_from_name("hermes"), SRV_TOOLS_HERMES);
    assert_int_equal(srv_tools_parser_from_name(NULL), SRV_TOOLS_AUTO);
    assert_int_equal(srv_tools_parser_from_name("auto"), SRV_TOOLS_AUTO);
    assert_int_equal(srv_tools_parser_from_name("pythonic"), -2);
    assert_string_equal(srv_tools_parser_name(SRV_TOOLS_MISTRAL), "mistral");
}

/* A vocabulary of the 256 single bytes and a stop token. */
static anvil_grammar_vocab *byte_vocab(void)
{
    const char *bytes[257];
    size_t lens[257];
    static char b[256];
    for (int i = 0; i < 256; i++) {
        b[i] = (char)i;
        bytes[i] = &b[i];
        lens[i] = 1;
    }
    bytes[256] = NULL;
    lens[256] = 0;
    int32_t stop = 256;
    anvil_grammar_vocab *v = NULL;
    assert_int_equal(anvil_grammar_vocab_create(257, bytes, lens, &stop, 1, &v), ANVIL_OK);
    return v;
}

static int accepts(const anvil_grammar *g, const char *text)
{
    anvil_grammar_matcher *m;
    assert_int_equal(anvil_grammar_matcher_create(g, &m), ANVIL_OK);
    int ok = anvil_grammar_matcher_accept_bytes(m, text, strlen(text)) == ANVIL_OK && anvil_grammar_matcher_can_end(m);
    anvil_grammar_matcher_free(m);
    return ok;
}

static void test_forcing_grammar(void **state)
{
    (void)state;
    anvil_grammar_vocab *v = byte_vocab();
    json_t *tools = json_loads(
        "[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": {\"type\": \"object\", "
        "\"properties\": {\"city\": {\"type\": \"string\"}, \"unit\": {\"enum\": [\"c\", \"f\"]}}, \"required\": "
        "[\"city\", \"unit\"]}}},"
        " {\"type\": \"function\", \"function\": {\"name\": \"ping\"}},"
        " {\"type\": \"function\", \"function\": {\"name\": \"put\", \"parameters\": {\"$defs\": {\"P\": {\"type\": "
        "\"object\", \"properties\": {\"x\": {\"type\": \"integer\"}}, \"required\": [\"x\"]}}, \"type\": \"object\", "
        "\"properties\": {\"p\": {\"$ref\": \"#/$defs/P\"}}, \"required\": [\"p\"]}}}]",
        0, NULL);
    assert_non_null(tools);
    anvil_grammar_options o;
    anvil_grammar_options_default(&o);
    o.max_whitespace = -1;
    static const struct {
        int parser;
        const char *tail, *good, *good2, *bad;
    } fam[] = {
        {SRV_TOOLS_HERMES, "<tool_call>\n", "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"unit\": \"c\"}}",
         "{\"name\": \"put\", \"arguments\": {\"p\": {\"x\": 7}}}",
         "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"unit\": \"k\"}}"},
        {SRV_TOOLS_LLAMA3, "", "{\"name\": \"ping\", \"parameters\": {}}",
         "{\"name\": \"put\", \"parameters\": {\"p\": {\"x\": -2}}}", "{\"name\": \"pong\", \"parameters\": {}}"},
        {SRV_TOOLS_MISTRAL, "[TOOL_CALLS]", "[{\"name\": \"ping\", \"arguments\": {}}]",
         "[{\"name\": \"ping\", \"arguments\": {}}, {\"name\": \"put\", \"arguments\": {\"p\": {\"x\": 1}}}]",
         "[]"},
        {SRV_TOOLS_NONE, "", "[{\"name\": \"ping\", \"parameters\": {}}]",
         "[{\"name\": \"get_weather\", \"parameters\": {\"city\": \"\", \"unit\": \"f\"}}]",
         "[{\"name\": \"put\", \"parameters\": {\"p\": {\"x\": \"1\"}}}]"},
    };
    for (size_t i = 0; i < sizeof fam / sizeof fam[0]; i++) {
        anvil_grammar *g = NULL;
        const char *tail;
        int status = 0;
        char msg[256];
        if (srv_tools_force(v, &o, fam[i].parser, tools, NULL, 1, &g, &tail, &status, msg, sizeof msg) != 0)
            fail_msg("%s: %s", srv_tools_parser_name(fam[i].parser), msg);
        assert_string_equal(tail, fam[i].tail);
        if (!accepts(g, fam[i].good) || !accepts(g, fam[i].good2))
            fail_msg("%s refuses a valid call", srv_tools_parser_name(fam[i].parser));
        assert_false(accepts(g, fam[i].bad));
        /* what the grammar makes, the parser reads back as calls */
        srv_tools_result r;
        assert_int_equal(srv_tools_parse(fam[i].parser, 1, fam[i].good2, strlen(fam[i].good2), &r), 0);
        assert_non_null(r.calls);
        assert_int_equal(r.content_len, 0);
        srv_tools_result_free(&r);
        anvil_grammar_free(g);
        /* a named function: only it */
        assert_int_equal(srv_tools_force(v, &o, fam[i].parser, tools, "ping", 0, &g, &tail, &status, msg, sizeof msg), 0);
        const char *ping = fam[i].parser == SRV_TOOLS_HERMES ? "{\"name\": \"ping\", \"arguments\": {}}"
                           : fam[i].parser == SRV_TOOLS_MISTRAL ? "[{\"name\": \"ping\", \"arguments\": {}}]"
                                                                 : fam[i].good;
        assert_true(accepts(g, ping));
        assert_false(accepts(g, fam[i].good2)); /* another tool, or two calls with parallel off */
        anvil_grammar_free(g);
    }
    /* a schema the engine refuses is the client's 400 */
    json_t *bad = json_loads("[{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": {\"type\": "
                             "\"object\", \"properties\": {\"a\": {\"not\": {}}}}}}]",
                             0, NULL);
    anvil_grammar *g = NULL;
    const char *tail;
    int status = 0;
    char msg[256];
    assert_int_equal(srv_tools_force(v, &o, SRV_TOOLS_HERMES, bad, NULL, 1, &g, &tail, &status, msg, sizeof msg), -1);
    assert_int_equal(status, 400);
    assert_non_null(strstr(msg, "not"));
    assert_null(g);
    json_decref(bad);
    json_decref(tools);
    anvil_grammar_vocab_free(v);
}

static void test_detect_from_templates(void **state)
{
    (void)state;
    static const struct {
        const char *file;
        int parser;
    } want[] = {
        {"Qwen-Qwen2.5-7B-Instruct.jinja", SRV_TOOLS_HERMES},
        {"meta-llama-Llama-3.1-8B-Instruct.jinja", SRV_TOOLS_LLAMA3},
        {"meta-llama-Llama-3.2-3B-Instruct.jinja", SRV_TOOLS_LLAMA3},
        {"mistralai-Mistral-Nemo-Instruct-2407.jinja", SRV_TOOLS_MISTRAL},
        {"microsoft-Phi-3.5-mini-instruct.jinja", SRV_TOOLS_NONE},
        {"google-gemma-2-2b-it.jinja", SRV_TOOLS_NONE},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        char rel[256];
        snprintf(rel, sizeof rel, "chat_templates/%s", want[i].file);
        FILE *f = fopen(anvil_test_shared_path(rel), "rb");
        assert_non_null(f);
        static char src[1 << 16];
        size_t n = fread(src, 1, sizeof src - 1, f);
        fclose(f);
        src[n] = '\0';
        anvil_chat_template *t = NULL;
        assert_int_equal(anvil_chat_template_parse(src, &t), ANVIL_OK);
        int p = srv_tools_detect(t, NULL);
        if (p != want[i].parser)
            fail_msg("%s: parser %s, want %s", want[i].file, srv_tools_parser_name(p),
                     srv_tools_parser_name(want[i].parser));
        anvil_chat_template_free(t);
    }
    assert_int_equal(srv_tools_detect(NULL, NULL), SRV_TOOLS_NONE);
}

static char *read_all(const char *path)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    assert_int_equal(fread(b, 1, (size_t)n, f), (size_t)n);
    b[n] = '\0';
    fclose(f);
    return b;
}

/* A model without an executor (as the fuzz target's): tinycode's
 * tokenizer, a real template, the server's parser choice "auto". */
typedef struct fake {
    struct anvil_server srv;
    srv_model m;
} fake;

static void fake_init(fake *f, const char *template_file)
{
    memset(f, 0, sizeof *f);
    char rel[256];
    snprintf(rel, sizeof rel, "chat_templates/%s", template_file);
    char *src = read_all(anvil_test_shared_path(rel));
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", anvil_test_shared_path("models/tinycode"));
    assert_int_equal(anvil_tokenizer_load(dir, &f->m.tok), ANVIL_OK);
    assert_int_equal(anvil_chat_template_load_source(dir, src, &f->m.tmpl), ANVIL_OK);
    free(src);
    f->srv.tool_parser = SRV_TOOLS_AUTO;
    f->m.srv = &f->srv;
    f->m.name = "tinycode";
    f->m.max_seq_len = 1024;
    pthread_mutex_init(&f->m.mu, NULL);
    pthread_mutex_init(&f->m.guided_mu, NULL);
}

static void fake_free(fake *f)
{
    srv_guided_model_free(&f->m);
    anvil_chat_template_free(f->m.tmpl);
    anvil_tokenizer_free(f->m.tok);
    pthread_mutex_destroy(&f->m.mu);
    pthread_mutex_destroy(&f->m.guided_mu);
}

/* The mapped request's prompt as text (malloc'd); NULL with *status and
 * *param when refused. */
static char *map_prompt(fake *f, const char *body, srv_mapped **out, int *status, char *param, size_t cap)
{
    json_t *b = json_loads(body, 0, NULL);
    assert_non_null(b);
    json_t *err = NULL;
    srv_mapped *q = NULL;
    int rc = srv_openai_map(&f->m, b, 1, &q, status, &err);
    json_decref(b);
    if (rc < 0) {
        const char *pm = json_string_value(json_object_get(json_object_get(err, "error"), "param"));
        snprintf(param, cap, "%s", pm ? pm : "");
        json_decref(err);
        *out = NULL;
        return NULL;
    }
    char *text = NULL;
    size_t n = 0;
    assert_int_equal(anvil_tokenizer_decode(f->m.tok, q->prompts[0].ids, q->prompts[0].n_ids, 0, &text, &n),
                     ANVIL_OK);
    *out = q;
    return text;
}

static int ends_with(const char *s, const char *tail)
{
    size_t a = strlen(s), b = strlen(tail);
    return a >= b && strcmp(s + a - b, tail) == 0;
}

#define TOOLS_JSON                                                                                              \
    "[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": {\"type\": \"object\", "     \
    "\"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"]}}}]"

static void test_map_requests(void **state)
{
    (void)state;
    static const struct {
        const char *file;
        int parser;
        const char *tail;   /* the forced prompt's end */
        const char *answer; /* how the template shows the tool's answer */
    } fam[] = {
        {"Qwen-Qwen2.5-7B-Instruct.jinja", SRV_TOOLS_HERMES, "<|im_start|>assistant\n<tool_call>\n",
         "<tool_response>\nsunny-17\n</tool_response>"},
        {"meta-llama-Llama-3.1-8B-Instruct.jinja", SRV_TOOLS_LLAMA3,
         "<|start_header_id|>assistant<|end_header_id|>\n\n", "ipython<|end_header_id|>\n\n"},
        {"mistralai-Mistral-Nemo-Instruct-2407.jinja", SRV_TOOLS_MISTRAL, "[/INST][TOOL_CALLS]",
         "[TOOL_RESULTS]{\"content\": sunny-17"},
    };
    for (size_t i = 0; i < sizeof fam / sizeof fam[0]; i++) {
        fake f;
        fake_init(&f, fam[i].file);
        srv_mapped *q;
        int status = 0;
        char param[64];
        /* required: the grammar, the marker at the prompt's end */
        char *text = map_prompt(&f,
                                "{\"messages\": [{\"role\": \"user\", \"content\": \"Weather in Oslo?\"}], \"tools\": " TOOLS_JSON
                                ", \"tool_choice\": \"required\"}",
                                &q, &status, param, sizeof param);
        assert_non_null(text);
        assert_true(q->tools_active && q->tools_forced);
        assert_int_equal(q->tool_parser, fam[i].parser);
        assert_non_null(q->grammar);
        assert_ptr_equal(q->req.grammar, q->grammar);
        if (!ends_with(text, fam[i].tail))
            fail_msg("%s: the forced prompt ends [%s]", fam[i].file, text + (strlen(text) > 80 ? strlen(text) - 80 : 0));
        assert_non_null(strstr(text, "get_weather")); /* the template showed the tool */
        /* Llama's and Mistral's markers are special tokens: kept in the text */
        assert_int_equal(q->req.skip_special_tokens, fam[i].parser == SRV_TOOLS_HERMES);
        free(text);
        srv_mapped_free(q);
        /* auto: no grammar, the prompt as the template ends it */
        text = map_prompt(&f, "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], \"tools\": " TOOLS_JSON "}", &q,
                          &status, param, sizeof param);
        assert_non_null(text);
        assert_true(q->tools_active && !q->tools_forced);
        assert_null(q->grammar);
        free(text);
        srv_mapped_free(q);
        /* a call and its answer go back through the template; the
         * arguments string as the object it holds */
        text = map_prompt(
            &f,
            "{\"messages\": [{\"role\": \"user\", \"content\": \"Weather in Oslo?\"}, {\"role\": \"assistant\", "
            "\"content\": null, \"tool_calls\": [{\"id\": \"Ab3dE6gH9\", \"type\": \"function\", \"function\": {\"name\": "
            "\"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"Oslo\\\"}\"}}]}, {\"role\": \"tool\", \"tool_call_id\": "
            "\"Ab3dE6gH9\", \"content\": \"sunny-17\"}], \"tools\": " TOOLS_JSON "}",
            &q, &status, param, sizeof param);
        if (text == NULL)
            fail_msg("%s: the round trip is refused (%d, %s)", fam[i].file, status, param);
        if (strstr(text, fam[i].answer) == NULL || strstr(text, "\"city\": \"Oslo\"") == NULL ||
            strstr(text, "\\\"city") != NULL)
            fail_msg("%s: the past call or the answer is not rendered as expected:\n%s", fam[i].file, text);
        free(text);
        srv_mapped_free(q);
        /* refusals name their field */
        static const struct {
            const char *extra, *param;
        } bad[] = {
            {"\"tool_choice\": {\"type\": \"function\", \"function\": {\"name\": \"nope\"}}", "tool_choice"},
            {"\"tool_choice\": \"required\", \"guided_regex\": \"a+\"", "tool_choice"},
            {"\"function_call\": {\"name\": \"get_weather\"}", "function_call"},
        };
        for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
            char body[1024];
            snprintf(body, sizeof body, "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], \"tools\": %s, %s}",
                     TOOLS_JSON, bad[k].extra);
            assert_null(map_prompt(&f, body, &q, &status, param, sizeof param));
            assert_int_equal(status, 400);
            assert_string_equal(param, bad[k].param);
        }
        fake_free(&f);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_whole),      cmocka_unit_test(test_parse_streamed),
        cmocka_unit_test(test_stream_arguments), cmocka_unit_test(test_stream_random),
        cmocka_unit_test(test_stream_broken),
        cmocka_unit_test(test_stream_pieces),    cmocka_unit_test(test_call_ids),
        cmocka_unit_test(test_forcing_grammar),  cmocka_unit_test(test_detect_from_templates),
        cmocka_unit_test(test_map_requests),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
