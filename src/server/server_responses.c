/*
 * POST /v1/responses: OpenAI's Responses API, no stored state. The body is
 * mapped to a chat body (srv_responses_map: input and instructions to
 * messages, function_call / function_call_output items to an assistant
 * turn's tool_calls and tool messages, the flat function tools to chat's
 * nested ones, max_output_tokens to max_tokens), which the chat mapping
 * checks and enqueues as any other, tool calls included (server_tools.c);
 * the answer (server_responses_wire.c) is a "response" object, or a
 * stream of its events. docs/server.md, "Responses API".
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/server_openai.h"

static const char *const renames[][2] = {
    {"max_tokens", "max_output_tokens"},
};

/* "messages[i]..." of the chat body as the client's "input[k]..." into
 * out: k is the input item message i came from (ctx's "items": -1 for the
 * instructions; without it, i less the instructions' turn); 0 when p is no
 * such path. */
static int input_path(const char *p, json_t *ctx, char *out, size_t cap)
{
    if (strncmp(p, "messages", 8) != 0)
        return 0;
    if (p[8] != '[') {
        snprintf(out, cap, "input%s", p + 8);
        return 1;
    }
    char *end;
    long i = strtol(p + 9, &end, 10);
    if (*end != ']' || i < 0)
        return 0;
    json_t *items = json_object_get(ctx, "items");
    long k = items ? (json_is_integer(json_array_get(items, (size_t)i))
                          ? (long)json_integer_value(json_array_get(items, (size_t)i))
                          : -2)
                   : i - (json_is_string(json_object_get(ctx, "instructions")) ? 1 : 0);
    if (k == -2)
        return 0;
    if (k < 0)
        snprintf(out, cap, "instructions");
    else
        snprintf(out, cap, "input[%ld]%s", k, end + 1);
    return 1;
}

/* chat's nested "tools[i].function.x" and "tool_choice.function.x" as
 * the client's flat "tools[i].x", "tool_choice.x"; 0 when p is neither. */
static int flat_path(const char *p, char *out, size_t cap)
{
    const char *f = strstr(p, ".function");
    if (f == NULL || (strncmp(p, "tools[", 6) != 0 && strncmp(p, "tool_choice.", 12) != 0) ||
        strchr(p, '.') != f)
        return 0;
    snprintf(out, cap, "%.*s%s", (int)(f - p), p, f + strlen(".function"));
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
    if (!input_path(from, ctx, to, sizeof to) && !flat_path(from, to, sizeof to))
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

/* A function_call_output's output: a string, or input_text parts (joined). */
static json_t *call_output(json_t *out)
{
    if (json_is_string(out))
        return json_incref(out);
    if (!json_is_array(out))
        return NULL;
    json_t *parts = json_array();
    size_t k;
    json_t *p;
    json_array_foreach(out, k, p)
    {
        const char *type = json_string_value(json_object_get(p, "type"));
        json_t *text = json_object_get(p, "text");
        if (type == NULL || (strcmp(type, "input_text") != 0 && strcmp(type, "output_text") != 0) ||
            !json_is_string(text)) {
            json_decref(parts);
            return NULL;
        }
        json_t *t = json_object();
        json_object_set_new(t, "type", json_string("text"));
        json_object_set(t, "text", text);
        json_array_append_new(parts, t);
    }
    return parts;
}

/* A function_call item (a past call) as a tool call of an assistant turn:
 * the turn before it when that is the assistant's (its text, or calls
 * made together), else a new one. */
static int past_call(json_t *it, size_t i, json_t *msgs, json_t *items, int *status, json_t **err)
{
    char param[64];
    static const char *const need[] = {"call_id", "name", "arguments"};
    for (size_t k = 0; k < 3; k++) {
        if (!json_is_string(get(it, need[k]))) {
            snprintf(param, sizeof param, "input[%zu].%s", i, need[k]);
            return fail(status, err, param, "invalid_value", "'%s' must be a string", param);
        }
    }
    json_t *last = json_array_get(msgs, json_array_size(msgs) - 1), *calls;
    const char *role = json_string_value(json_object_get(last, "role"));
    if (last == NULL || role == NULL || strcmp(role, "assistant") != 0) {
        last = json_pack("{s:s, s:n, s:[]}", "role", "assistant", "content", "tool_calls");
        json_array_append_new(msgs, last);
        json_array_append_new(items, json_integer((json_int_t)i));
    }
    calls = json_object_get(last, "tool_calls");
    if (calls == NULL) {
        calls = json_array();
        json_object_set_new(last, "tool_calls", calls);
    }
    json_array_append_new(calls, json_pack("{s:O, s:s, s:{s:O, s:O}}", "id", get(it, "call_id"), "type", "function",
                                           "function", "name", get(it, "name"), "arguments", get(it, "arguments")));
    return 0;
}

/* A function_call_output item as a tool message (named after its call,
 * for the templates that print the name). */
static int call_result(json_t *it, size_t i, json_t *msgs, json_t *items, int *status, json_t **err)
{
    char param[64];
    json_t *id = get(it, "call_id"), *out = get(it, "output");
    if (!json_is_string(id)) {
        snprintf(param, sizeof param, "input[%zu].call_id", i);
        return fail(status, err, param, "invalid_value", "'%s' must be a string", param);
    }
    json_t *content = call_output(out);
    if (content == NULL) {
        snprintf(param, sizeof param, "input[%zu].output", i);
        return fail(status, err, param, "invalid_value", "'%s' must be a string or a list of input_text parts",
                    param);
    }
    json_t *m = json_pack("{s:s, s:O, s:o}", "role", "tool", "tool_call_id", id, "content", content);
    size_t k;
    json_t *prev;
    json_array_foreach(msgs, k, prev)
    {
        size_t c;
        json_t *tc;
        json_array_foreach(json_object_get(prev, "tool_calls"), c, tc) if (json_equal(json_object_get(tc, "id"), id))
            json_object_set(m, "name", json_object_get(json_object_get(tc, "function"), "name"));
    }
    json_array_append_new(msgs, m);
    json_array_append_new(items, json_integer((json_int_t)i));
    return 0;
}

/* input (a string, or a list of message, function_call and
 * function_call_output items) as chat messages; items: for each message,
 * the input item it came from. */
static int input_messages(json_t *input, json_t *msgs, json_t *items, int *status, json_t **err)
{
    if (json_is_string(input)) {
        json_t *m = json_object();
        json_object_set_new(m, "role", json_string("user"));
        json_object_set(m, "content", input);
        json_array_append_new(msgs, m);
        json_array_append_new(items, json_integer(0));
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
        if (type && strcmp(type, "function_call") == 0) {
            if (past_call(it, i, msgs, items, status, err) < 0)
                return -1;
            continue;
        }
        if (type && strcmp(type, "function_call_output") == 0) {
            if (call_result(it, i, msgs, items, status, err) < 0)
                return -1;
            continue;
        }
        if (type && strcmp(type, "message") != 0)
            return fail(status, err, param, "unsupported",
                        "'%s': items of type '%s' are not supported (messages, function_call and "
                        "function_call_output only; no stored state)",
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
        json_array_append_new(items, json_integer((json_int_t)i));
    }
    return 0;
}

/* tools (flat function tools: {"type": "function", "name", "description",
 * "parameters", "strict"}) as chat's nested ones, and tool_choice's
 * function form, into the chat body o. */
static int map_tools(json_t *in, json_t *o, int *status, json_t **err)
{
    json_t *tools = get(in, "tools"), *choice = get(in, "tool_choice"), *par = get(in, "parallel_tool_calls");
    if (tools && !json_is_array(tools))
        return fail(status, err, "tools", "invalid_type", "'tools' must be a list of tools");
    json_t *chat_tools = tools ? json_array() : NULL;
    if (chat_tools)
        json_object_set_new(o, "tools", chat_tools);
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t)
    {
        char param[64];
        snprintf(param, sizeof param, "tools[%zu].type", i);
        const char *type = json_string_value(json_object_get(t, "type"));
        if (type == NULL)
            return fail(status, err, param, "invalid_value", "'%s' must be a string (\"function\")", param);
        if (strcmp(type, "function") != 0)
            return fail(status, err, param, "unsupported",
                        "'%s' '%.40s' is not supported: only function tools (the server runs no tools itself)", param,
                        type);
        json_t *name = get(t, "name"), *params = get(t, "parameters"), *desc = get(t, "description"),
               *strict = get(t, "strict");
        snprintf(param, sizeof param, "tools[%zu].name", i);
        if (!json_is_string(name) || json_string_length(name) == 0)
            return fail(status, err, param, "invalid_value", "'%s' must be a non-empty string", param);
        snprintf(param, sizeof param, "tools[%zu].parameters", i);
        if (params && !json_is_object(params))
            return fail(status, err, param, "invalid_value", "'%s' must be a JSON schema object", param);
        snprintf(param, sizeof param, "tools[%zu].description", i);
        if (desc && !json_is_string(desc))
            return fail(status, err, param, "invalid_type", "'%s' must be a string", param);
        snprintf(param, sizeof param, "tools[%zu].strict", i);
        if (strict && !json_is_boolean(strict))
            return fail(status, err, param, "invalid_type", "'%s' must be a boolean", param);
        json_t *fn = json_pack("{s:O}", "name", name);
        if (desc)
            json_object_set(fn, "description", desc);
        if (params)
            json_object_set(fn, "parameters", params);
        if (strict)
            json_object_set(fn, "strict", strict);
        json_array_append_new(chat_tools, json_pack("{s:s, s:o}", "type", "function", "function", fn));
    }
    if (json_is_object(choice)) {
        const char *type = json_string_value(json_object_get(choice, "type"));
        json_t *name = json_object_get(choice, "name");
        if (type == NULL || strcmp(type, "function") != 0)
            return fail(status, err, "tool_choice", "unsupported",
                        "'tool_choice' of type '%.40s' is not supported: \"none\", \"auto\", \"required\" or "
                        "{\"type\": \"function\", \"name\": ...}",
                        type ? type : "(none)");
        if (!json_is_string(name))
            return fail(status, err, "tool_choice", "invalid_value",
                        "'tool_choice' as an object must be {\"type\": \"function\", \"name\": ...}");
        json_object_set_new(o, "tool_choice", json_pack("{s:s, s:{s:O}}", "type", "function", "function", "name", name));
    } else if (choice) {
        json_object_set(o, "tool_choice", choice); /* the chat mapping checks it */
    }
    if (par)
        json_object_set(o, "parallel_tool_calls", par);
    return 0;
}

int srv_responses_map(json_t *in, json_t **chat, json_t **ctx, int *status, json_t **err)
{
    *chat = NULL;
    *ctx = NULL;
    if (!json_is_object(in))
        return fail(status, err, NULL, "invalid_json", "The request body must be a JSON object.");
    /* what needs state kept between requests */
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
    json_t *msgs = json_array(), *items = json_array();
    if (instr) {
        json_t *m = json_object();
        json_object_set_new(m, "role", json_string("system"));
        json_object_set(m, "content", instr);
        json_array_append_new(msgs, m);
        json_array_append_new(items, json_integer(-1));
    }
    json_t *o = json_object();
    json_object_set_new(o, "messages", msgs);
    if (input_messages(input, msgs, items, status, err) < 0 || map_tools(in, o, status, err) < 0) {
        json_decref(o);
        json_decref(items);
        return -1;
    }
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
    json_object_set_new(c, "items", items);
    json_t *tools = get(in, "tools"), *choice = get(in, "tool_choice"), *par = get(in, "parallel_tool_calls");
    json_object_set_new(c, "tools", tools ? json_incref(tools) : json_array());
    json_object_set_new(c, "tool_choice", choice ? json_incref(choice) : json_string("auto"));
    json_object_set_new(c, "parallel_tool_calls", par ? json_incref(par) : json_true());
    *chat = o;
    *ctx = c;
    return 0;
}
