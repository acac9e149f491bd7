/* The request mappings of the other wire formats, without a model or HTTP:
 * Triton's generate body (srv_triton_map) and the Responses API's
 * (srv_responses_map) into the OpenAI bodies the server then checks, and
 * KServe's infer tensors (srv_triton_infer_map) into a generate body; the
 * /v2/models/ paths (srv_triton_path); the CORS origin list
 * (srv_cors_allowed); errors renamed to the client's fields and Triton's
 * error shape. The server tests (tests/python/test_server_triton.py,
 * test_server_responses.py, test_server_browser.py) drive them end to end. */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "server/server_openai.h"
#include "testutil.h"

static json_t *parse(const char *text)
{
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    if (j == NULL)
        fail_msg("bad test JSON %s: %s", text, je.text);
    return j;
}

/* The OpenAI body of a Triton body (NULL: refused, with *param the field
 * the error names). */
static json_t *triton(const char *body, int stream, json_t **ctx, char *param, size_t cap)
{
    json_t *in = parse(body), *oai = NULL, *err = NULL;
    int status = 0;
    int r = srv_triton_map(in, "m", stream, &oai, ctx, &status, &err);
    json_decref(in);
    if (r == 0) {
        assert_null(err);
        return oai;
    }
    assert_int_equal(status, 400);
    assert_null(oai);
    json_t *e = json_object_get(err, "error");
    const char *p = json_string_value(json_object_get(e, "param"));
    snprintf(param, cap, "%s", p ? p : "");
    /* the message names the field too */
    assert_non_null(strstr(json_string_value(json_object_get(e, "message")), param));
    json_decref(err);
    return NULL;
}

static void test_triton_fields(void **state)
{
    (void)state;
    json_t *ctx = NULL;
    char param[64];
    json_t *o = triton("{\"text_input\": \"hi\", \"max_tokens\": 20, \"temperature\": 0.5, \"top_k\": 40, "
                       "\"top_p\": 0.9, \"stop_words\": [\"a\", \"\", \"b\"], \"random_seed\": 9, \"min_length\": 2, "
                       "\"repetition_penalty\": 1.1, \"presence_penalty\": 0.5, \"frequency_penalty\": 0.25, "
                       "\"id\": \"x1\", \"bad_words\": \"\", \"end_id\": 2, \"pad_id\": 2}",
                       0, &ctx, param, sizeof param);
    assert_non_null(o);
    json_t *want = parse("{\"model\": \"m\", \"prompt\": \"hi\", \"max_tokens\": 20, \"temperature\": 0.5, "
                         "\"top_k\": 40, \"top_p\": 0.9, \"stop\": [\"a\", \"b\"], \"seed\": 9, \"min_tokens\": 2, "
                         "\"repetition_penalty\": 1.1, \"presence_penalty\": 0.5, \"frequency_penalty\": 0.25, "
                         "\"stream\": false}");
    assert_true(json_equal(o, want));
    assert_string_equal(json_string_value(json_object_get(ctx, "id")), "x1");
    assert_true(json_is_false(json_object_get(ctx, "whole")));
    json_decref(want);
    json_decref(o);
    json_decref(ctx);
    /* no top_k, no top_p: TensorRT-LLM decodes greedily; tensor shapes unwrapped */
    o = triton("{\"text_input\": [\"hi\"], \"max_tokens\": [[3]], \"top_k\": 0, \"top_p\": 0.0, "
               "\"stop_words\": [[\"x\"]], \"exclude_input_in_output\": false}",
               0, &ctx, param, sizeof param);
    assert_non_null(o);
    want = parse("{\"model\": \"m\", \"prompt\": \"hi\", \"max_tokens\": 3, \"top_k\": 1, \"stop\": [\"x\"], "
                 "\"echo\": true, \"stream\": false}");
    assert_true(json_equal(o, want));
    json_decref(want);
    json_decref(o);
    json_decref(ctx);
    /* generate_stream: stream true unless it says false (then one event) */
    o = triton("{\"text_input\": \"hi\"}", 1, &ctx, param, sizeof param);
    assert_true(json_is_true(json_object_get(o, "stream")));
    assert_true(json_is_false(json_object_get(ctx, "whole")));
    json_decref(o);
    json_decref(ctx);
    o = triton("{\"text_input\": \"hi\", \"stream\": false}", 1, &ctx, param, sizeof param);
    assert_true(json_is_true(json_object_get(o, "stream")));
    assert_true(json_is_true(json_object_get(ctx, "whole")));
    json_decref(o);
    json_decref(ctx);
}

static void test_triton_refusals(void **state)
{
    (void)state;
    static const struct {
        const char *body;
        const char *param;
    } cases[] = {
        {"{}", "text_input"},
        {"{\"text_input\": 3}", "text_input"},
        {"{\"text_input\": [\"a\", \"b\"]}", "text_input"}, /* a batch: one prompt per request */
        {"{\"text_input\": \"a\", \"stream\": true}", "stream"},
        {"{\"text_input\": \"a\", \"stream\": \"yes\"}", "stream"},
        {"{\"text_input\": \"a\", \"stop_words\": 5}", "stop_words"},
        {"{\"text_input\": \"a\", \"stop_words\": [\"a\", 1]}", "stop_words"},
        {"{\"text_input\": \"a\", \"bad_words\": [\"no\"]}", "bad_words"},
        {"{\"text_input\": \"a\", \"beam_width\": 4}", "beam_width"},
        {"{\"text_input\": \"a\", \"num_return_sequences\": 2}", "num_return_sequences"},
        {"{\"text_input\": \"a\", \"return_log_probs\": true}", "return_log_probs"},
        {"{\"text_input\": \"a\", \"return_generation_logits\": [[true]]}", "return_generation_logits"},
        {"{\"text_input\": \"a\", \"lora_task_id\": 3}", "lora_task_id"},
        {"{\"text_input\": \"a\", \"exclude_input_in_output\": 1}", "exclude_input_in_output"},
        {"{\"text_input\": \"a\", \"id\": 5}", "id"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *ctx = (json_t *)&ctx;
        char param[64] = "";
        json_t *o = triton(cases[i].body, 0, &ctx, param, sizeof param);
        if (o != NULL || strcmp(param, cases[i].param) != 0)
            fail_msg("%s: got param '%s', want '%s'", cases[i].body, param, cases[i].param);
        assert_null(ctx);
    }
    /* not an object */
    json_t *a = json_array(), *o = NULL, *ctx = NULL, *err = NULL;
    int status = 0;
    assert_int_equal(srv_triton_map(a, "m", 0, &o, &ctx, &status, &err), -1);
    assert_int_equal(status, 400);
    json_decref(a);
    json_decref(err);
}

/* The OpenAI mapping's errors in the client's names, then Triton's shape. */
static void test_triton_errors(void **state)
{
    (void)state;
    json_t *e = srv_error_json("'seed' must be an integer; 'seeds' and 'stop' are fine", "invalid_request_error",
                               "seed", "invalid_type");
    srv_triton_rename(e, NULL);
    json_t *t = srv_triton_error(e);
    assert_string_equal(json_string_value(json_object_get(t, "error")),
                        "'random_seed' must be an integer; 'seeds' and 'stop_words' are fine");
    assert_string_equal(json_string_value(json_object_get(t, "code")), "invalid_type");
    assert_string_equal(json_string_value(json_object_get(t, "param")), "random_seed");
    json_decref(t);
}

static void test_triton_paths(void **state)
{
    (void)state;
    static const struct {
        const char *rest, *name, *verb;
        int r;
    } cases[] = {
        {"m", "m", "", 0},
        {"m/ready", "m", "ready", 0},
        {"m/versions/1", "m", "", 0},
        {"m/versions/1/generate_stream", "m", "generate_stream", 0},
        {"m/config", "m", "config", 0},
        {"m/stats", "m", "stats", 0},
        {"m/generate", "m", "generate", 0},
        {"m/versions/2/ready", "m", NULL, -2},
        {"m/versions/12", "m", NULL, -2},
        {"m/infer", "m", "infer", 0},
        {"m/explain", NULL, NULL, -1},
        {"m/ready/x", NULL, NULL, -1},
        {"", NULL, NULL, -1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char name[130] = "";
        const char *verb = NULL;
        int r = srv_triton_path(cases[i].rest, name, sizeof name, &verb);
        if (r != cases[i].r)
            fail_msg("%s: %d, want %d", cases[i].rest, r, cases[i].r);
        if (r == 0) {
            assert_string_equal(name, cases[i].name);
            assert_string_equal(verb, cases[i].verb);
        }
    }
    char small[4];
    const char *verb;
    assert_int_equal(srv_triton_path("longname/ready", small, sizeof small, &verb), -1);
}

static json_t *responses(const char *body, json_t **ctx, char *param, size_t cap)
{
    json_t *in = parse(body), *chat = NULL, *err = NULL;
    int status = 0;
    int r = srv_responses_map(in, &chat, ctx, &status, &err);
    json_decref(in);
    if (r == 0)
        return chat;
    assert_int_equal(status, 400);
    json_t *e = json_object_get(err, "error");
    snprintf(param, cap, "%s", json_string_value(json_object_get(e, "param")));
    json_decref(err);
    return NULL;
}

static void test_responses_map(void **state)
{
    (void)state;
    json_t *ctx = NULL;
    char param[64];
    json_t *o = responses("{\"model\": \"m\", \"input\": \"hi\", \"instructions\": \"be nice\", "
                          "\"max_output_tokens\": 9, \"temperature\": 0.2, \"stream\": true, \"store\": true, "
                          "\"metadata\": {\"a\": \"b\"}, \"reasoning\": {}}",
                          &ctx, param, sizeof param);
    assert_non_null(o);
    json_t *want = parse("{\"model\": \"m\", \"messages\": [{\"role\": \"system\", \"content\": \"be nice\"}, "
                         "{\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": 9, \"temperature\": 0.2, "
                         "\"stream\": true}");
    assert_true(json_equal(o, want));
    assert_string_equal(json_string_value(json_object_get(json_object_get(ctx, "metadata"), "a")), "b");
    assert_int_equal(json_integer_value(json_object_get(ctx, "max_output_tokens")), 9);
    json_decref(want);
    json_decref(o);
    json_decref(ctx);
    o = responses("{\"input\": [{\"role\": \"user\", \"content\": [{\"type\": \"input_text\", \"text\": \"a\"}]}, "
                  "{\"type\": \"message\", \"role\": \"assistant\", \"content\": [{\"type\": \"output_text\", "
                  "\"text\": \"b\"}]}]}",
                  &ctx, param, sizeof param);
    assert_non_null(o);
    want = parse("{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"a\"}]}, "
                 "{\"role\": \"assistant\", \"content\": [{\"type\": \"text\", \"text\": \"b\"}]}]}");
    assert_true(json_equal(o, want));
    json_decref(want);
    json_decref(o);
    json_decref(ctx);
    /* text.format: json_schema's flat fields become chat's response_format, the response repeats the format */
    o = responses("{\"input\": \"x\", \"text\": {\"format\": {\"type\": \"json_schema\", \"name\": \"p\", "
                  "\"schema\": {\"type\": \"object\"}, \"strict\": true}}}",
                  &ctx, param, sizeof param);
    assert_non_null(o);
    want = parse("{\"type\": \"json_schema\", \"json_schema\": {\"name\": \"p\", \"schema\": {\"type\": \"object\"}, "
                 "\"strict\": true}}");
    assert_true(json_equal(json_object_get(o, "response_format"), want));
    assert_string_equal(json_string_value(json_object_get(json_object_get(ctx, "text_format"), "name")), "p");
    json_decref(want);
    json_decref(o);
    json_decref(ctx);
    o = responses("{\"input\": \"x\", \"text\": {\"format\": {\"type\": \"json_object\"}}}", &ctx, param,
                  sizeof param);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(json_object_get(o, "response_format"), "type")),
                        "json_object");
    json_decref(o);
    json_decref(ctx);
    o = responses("{\"input\": \"x\", \"text\": {\"format\": {\"type\": \"text\"}}}", &ctx, param, sizeof param);
    assert_non_null(o);
    assert_null(json_object_get(o, "response_format"));
    assert_null(json_object_get(ctx, "text_format"));
    json_decref(o);
    json_decref(ctx);
    static const struct {
        const char *body, *param;
    } refused[] = {
        {"{}", "input"},
        {"{\"input\": 3}", "input"},
        {"{\"input\": []}", "input"},
        {"{\"input\": [5]}", "input[0]"},
        {"{\"input\": [{\"role\": \"user\"}]}", "input[0]"},
        {"{\"input\": [{\"type\": \"function_call\", \"name\": \"f\"}]}", "input[0].call_id"},
        {"{\"input\": [{\"type\": \"function_call\", \"call_id\": \"c\", \"name\": \"f\", \"arguments\": {}}]}",
         "input[0].arguments"},
        {"{\"input\": [{\"type\": \"function_call_output\", \"call_id\": \"c\", \"output\": 3}]}",
         "input[0].output"},
        {"{\"input\": [{\"type\": \"function_call_output\", \"output\": \"x\"}]}", "input[0].call_id"},
        {"{\"input\": [{\"type\": \"reasoning\", \"summary\": []}]}", "input[0]"},
        {"{\"input\": \"x\", \"tools\": {}}", "tools"},
        {"{\"input\": \"x\", \"tools\": [{\"type\": \"web_search\"}]}", "tools[0].type"},
        {"{\"input\": \"x\", \"tools\": [{\"type\": \"function\", \"name\": \"f\"}, {\"type\": \"file_search\"}]}",
         "tools[1].type"},
        {"{\"input\": \"x\", \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\"}}]}",
         "tools[0].name"},
        {"{\"input\": \"x\", \"tools\": [{\"type\": \"function\", \"name\": \"f\", \"parameters\": 1}]}",
         "tools[0].parameters"},
        {"{\"input\": \"x\", \"tools\": [{\"type\": \"function\", \"name\": \"f\", \"strict\": 1}]}",
         "tools[0].strict"},
        {"{\"input\": \"x\", \"tool_choice\": {\"type\": \"file_search\"}}", "tool_choice"},
        {"{\"input\": \"x\", \"tool_choice\": {\"type\": \"function\"}}", "tool_choice"},
        {"{\"input\": [{\"role\": \"user\", \"content\": [{\"type\": \"input_image\"}]}]}", "input[0].content[0]"},
        {"{\"input\": \"x\", \"previous_response_id\": \"resp_1\"}", "previous_response_id"},
        {"{\"input\": \"x\", \"conversation\": \"c\"}", "conversation"},
        {"{\"input\": \"x\", \"background\": true}", "background"},
        {"{\"input\": \"x\", \"tools\": [{}]}", "tools[0].type"},
        {"{\"input\": \"x\", \"top_logprobs\": 2}", "top_logprobs"},
        {"{\"input\": \"x\", \"text\": {\"format\": {\"type\": \"json_schema\"}}}", "text.format.schema"},
        {"{\"input\": \"x\", \"text\": {\"format\": {\"type\": \"yaml\"}}}", "text.format"},
        {"{\"input\": \"x\", \"text\": {\"format\": \"json\"}}", "text.format"},
        {"{\"input\": \"x\", \"text\": 3}", "text"},
        {"{\"input\": \"x\", \"instructions\": 5}", "instructions"},
        {"{\"input\": \"x\", \"metadata\": []}", "metadata"},
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        char p[64] = "";
        json_t *c2 = NULL;
        json_t *r = responses(refused[i].body, &c2, p, sizeof p);
        if (r != NULL || strcmp(p, refused[i].param) != 0)
            fail_msg("%s: param '%s', want '%s'", refused[i].body, p, refused[i].param);
    }
}

/* Function tools (flat) as chat's nested ones, tool_choice's function
 * form, and past calls and their outputs as an assistant turn's tool_calls
 * and tool messages; the response repeats tools, tool_choice and
 * parallel_tool_calls; each chat message knows its input item. */
static void test_responses_tools(void **state)
{
    (void)state;
    json_t *ctx = NULL;
    char param[64];
    json_t *o = responses(
        "{\"input\": [{\"role\": \"user\", \"content\": \"w?\"}, {\"type\": \"message\", \"role\": \"assistant\", "
        "\"content\": [{\"type\": \"output_text\", \"text\": \"Looking.\"}]}, {\"type\": \"function_call\", \"id\": "
        "\"fc_1\", \"call_id\": \"call_1\", \"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\":\\\"Oslo\\\"}\", "
        "\"status\": \"completed\"}, {\"type\": \"function_call\", \"call_id\": \"call_2\", \"name\": \"ping\", "
        "\"arguments\": \"{}\"}, {\"type\": \"function_call_output\", \"call_id\": \"call_1\", \"output\": \"sunny\"}, "
        "{\"type\": \"function_call_output\", \"call_id\": \"call_2\", \"output\": [{\"type\": \"input_text\", "
        "\"text\": \"pong\"}]}, {\"type\": \"function_call\", \"call_id\": \"call_3\", \"name\": \"ping\", "
        "\"arguments\": \"{}\"}], \"instructions\": \"sys\", \"tools\": [{\"type\": \"function\", \"name\": "
        "\"get_weather\", \"description\": \"d\", \"parameters\": {\"type\": \"object\"}, \"strict\": true}, "
        "{\"type\": \"function\", \"name\": \"ping\"}], \"tool_choice\": {\"type\": \"function\", \"name\": "
        "\"ping\"}, \"parallel_tool_calls\": false}",
        &ctx, param, sizeof param);
    if (o == NULL)
        fail_msg("refused: %s", param);
    json_t *want = parse(
        "{\"messages\": [{\"role\": \"system\", \"content\": \"sys\"}, {\"role\": \"user\", \"content\": \"w?\"}, "
        "{\"role\": \"assistant\", \"content\": [{\"type\": \"text\", \"text\": \"Looking.\"}], \"tool_calls\": [{\"id\": "
        "\"call_1\", \"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"arguments\": "
        "\"{\\\"city\\\":\\\"Oslo\\\"}\"}}, {\"id\": \"call_2\", \"type\": \"function\", \"function\": {\"name\": "
        "\"ping\", \"arguments\": \"{}\"}}]}, {\"role\": \"tool\", \"tool_call_id\": \"call_1\", \"content\": \"sunny\", "
        "\"name\": \"get_weather\"}, {\"role\": \"tool\", \"tool_call_id\": \"call_2\", \"content\": [{\"type\": "
        "\"text\", \"text\": \"pong\"}], \"name\": \"ping\"}, {\"role\": \"assistant\", \"content\": null, "
        "\"tool_calls\": [{\"id\": \"call_3\", \"type\": \"function\", \"function\": {\"name\": \"ping\", "
        "\"arguments\": \"{}\"}}]}], \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", "
        "\"description\": \"d\", \"parameters\": {\"type\": \"object\"}, \"strict\": true}}, {\"type\": \"function\", "
        "\"function\": {\"name\": \"ping\"}}], \"tool_choice\": {\"type\": \"function\", \"function\": {\"name\": "
        "\"ping\"}}, \"parallel_tool_calls\": false}");
    if (!json_equal(o, want)) {
        char *got = json_dumps(o, JSON_COMPACT);
        fail_msg("mapped to %s", got);
    }
    json_decref(want);
    want = parse("[-1, 0, 1, 4, 5, 6]"); /* each message's input item */
    assert_true(json_equal(json_object_get(ctx, "items"), want));
    json_decref(want);
    assert_string_equal(json_string_value(json_object_get(json_array_get(json_object_get(ctx, "tools"), 1), "name")),
                        "ping");
    assert_true(json_is_false(json_object_get(ctx, "parallel_tool_calls")));
    assert_string_equal(json_string_value(json_object_get(json_object_get(ctx, "tool_choice"), "type")), "function");
    /* a chat error on messages[4] names input[5] */
    json_t *e = srv_error_json("bad messages[4].content", "invalid_request_error", "messages[4].content", NULL);
    srv_responses_rename(e, ctx);
    assert_string_equal(json_string_value(json_object_get(json_object_get(e, "error"), "param")), "input[5].content");
    assert_string_equal(json_string_value(json_object_get(json_object_get(e, "error"), "message")),
                        "bad input[5].content");
    json_decref(e);
    json_decref(o);
    json_decref(ctx);
    /* the defaults the response repeats; "required" passes to the chat mapping */
    o = responses("{\"input\": \"x\", \"tools\": [{\"type\": \"function\", \"name\": \"f\"}], \"tool_choice\": "
                  "\"required\"}",
                  &ctx, param, sizeof param);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "tool_choice")), "required");
    assert_true(json_is_true(json_object_get(ctx, "parallel_tool_calls")));
    json_decref(o);
    json_decref(ctx);
    o = responses("{\"input\": \"x\"}", &ctx, param, sizeof param);
    assert_null(json_object_get(o, "tools"));
    assert_string_equal(json_string_value(json_object_get(ctx, "tool_choice")), "auto");
    assert_int_equal(json_array_size(json_object_get(ctx, "tools")), 0);
    json_decref(o);
    json_decref(ctx);
}

/* The chat mapping's messages[i] is the client's input[i - 1] after
 * instructions, and instructions itself at 0. */
static void test_responses_rename(void **state)
{
    (void)state;
    json_t *ctx = parse("{\"instructions\": \"x\"}");
    json_t *e = srv_error_json("Invalid value 'w' for messages[2].role", "invalid_request_error",
                               "messages[2].role", "invalid_value");
    srv_responses_rename(e, ctx);
    json_t *in = json_object_get(e, "error");
    assert_string_equal(json_string_value(json_object_get(in, "param")), "input[1].role");
    assert_string_equal(json_string_value(json_object_get(in, "message")), "Invalid value 'w' for input[1].role");
    json_decref(e);
    e = srv_error_json("bad", "invalid_request_error", "messages[0].content", NULL);
    srv_responses_rename(e, ctx);
    assert_string_equal(json_string_value(json_object_get(json_object_get(e, "error"), "param")), "instructions");
    json_decref(e);
    /* chat's nested tool fields as the flat ones the client sent */
    e = srv_error_json("tools[1].function.name must not contain a NUL character", "invalid_request_error",
                       "tools[1].function.name", NULL);
    srv_responses_rename(e, ctx);
    in = json_object_get(e, "error");
    assert_string_equal(json_string_value(json_object_get(in, "param")), "tools[1].name");
    assert_string_equal(json_string_value(json_object_get(in, "message")), "tools[1].name must not contain a NUL character");
    json_decref(e);
    e = srv_error_json("x", "invalid_request_error", "tool_choice.function.name", NULL);
    srv_responses_rename(e, ctx);
    assert_string_equal(json_string_value(json_object_get(json_object_get(e, "error"), "param")), "tool_choice.name");
    json_decref(e);
    e = srv_error_json("'max_tokens' is too large", "invalid_request_error", "max_tokens", NULL);
    srv_responses_rename(e, NULL);
    in = json_object_get(e, "error");
    assert_string_equal(json_string_value(json_object_get(in, "param")), "max_output_tokens");
    assert_string_equal(json_string_value(json_object_get(in, "message")), "'max_output_tokens' is too large");
    json_decref(e);
    json_decref(ctx);
}

/* KServe tensors (JSON data or binary) as a generate body. */
static void test_infer_tensors(void **state)
{
    (void)state;
    json_t *gen = NULL, *ctx = NULL, *err = NULL;
    int status = 0;
    const char *js = "{\"id\": \"q\", \"inputs\": [{\"name\": \"text_input\", \"datatype\": \"BYTES\", "
                     "\"shape\": [1, 1], \"data\": [[\"hi\"]]}, {\"name\": \"max_tokens\", \"datatype\": "
                     "\"INT32\", \"shape\": [1, 1], \"data\": [7]}, {\"name\": \"stop_words\", \"datatype\": "
                     "\"BYTES\", \"shape\": [1, 2], \"data\": [\"a\", \"b\"]}], \"outputs\": [{\"name\": "
                     "\"text_output\"}]}";
    assert_int_equal(srv_triton_infer_map(js, strlen(js), 0, &gen, &ctx, &status, &err), 0);
    json_t *want = parse("{\"text_input\": \"hi\", \"max_tokens\": 7, \"stop_words\": [\"a\", \"b\"]}");
    assert_true(json_equal(gen, want));
    assert_true(json_is_false(json_object_get(ctx, "binary")));
    assert_string_equal(json_string_value(json_object_get(ctx, "id")), "q");
    json_decref(want);
    json_decref(gen);
    json_decref(ctx);
    /* binary: BYTES "hey" (4-byte length first), INT32 -2, FP32 0.5, BOOL true */
    const char *head = "{\"inputs\": [{\"name\": \"text_input\", \"datatype\": \"BYTES\", \"shape\": [1, 1], "
                       "\"parameters\": {\"binary_data_size\": 7}}, {\"name\": \"max_tokens\", \"datatype\": "
                       "\"INT32\", \"shape\": [1], \"parameters\": {\"binary_data_size\": 4}}, {\"name\": "
                       "\"temperature\", \"datatype\": \"FP32\", \"shape\": [1], \"parameters\": "
                       "{\"binary_data_size\": 4}}, {\"name\": \"stream\", \"datatype\": \"BOOL\", \"shape\": [1], "
                       "\"parameters\": {\"binary_data_size\": 1}}], \"parameters\": {\"binary_data_output\": true}}";
    const unsigned char bin[] = {3, 0, 0, 0, 'h', 'e', 'y', 0xfe, 0xff, 0xff, 0xff, 0, 0, 0, 0x3f, 1};
    size_t hl = strlen(head);
    char body[1024];
    memcpy(body, head, hl);
    memcpy(body + hl, bin, sizeof bin);
    assert_int_equal(srv_triton_infer_map(body, hl + sizeof bin, hl, &gen, &ctx, &status, &err), 0);
    want = parse("{\"text_input\": \"hey\", \"max_tokens\": -2, \"temperature\": 0.5, \"stream\": true}");
    assert_true(json_equal(gen, want));
    assert_true(json_is_true(json_object_get(ctx, "binary")));
    json_decref(want);
    json_decref(gen);
    json_decref(ctx);
    /* each damaged form refused, never read past the body */
    for (size_t cut = 0; cut < sizeof bin; cut++) {
        gen = ctx = err = NULL;
        assert_int_equal(srv_triton_infer_map(body, hl + cut, hl, &gen, &ctx, &status, &err), -1);
        assert_int_equal(status, 400);
        assert_null(gen);
        json_decref(err);
    }
    static const char *const bad[] = {
        "[]",
        "{\"inputs\": 5}",
        "{\"inputs\": [{\"name\": \"text_input\", \"shape\": [1]}]}",
        "{\"inputs\": [{\"name\": \"x\", \"datatype\": \"FP16\", \"shape\": [1], \"data\": [1]}]}",
        "{\"inputs\": [], \"outputs\": [{\"name\": \"output_log_probs\"}]}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        gen = ctx = err = NULL;
        if (srv_triton_infer_map(bad[i], strlen(bad[i]), 0, &gen, &ctx, &status, &err) != -1)
            fail_msg("accepted %s", bad[i]);
        json_decref(err);
    }
    /* a header length past the body; BYTES that are not UTF-8 */
    assert_int_equal(srv_triton_infer_map(js, strlen(js), strlen(js) + 1, &gen, &ctx, &status, &err), -1);
    json_decref(err);
    const unsigned char notutf8[] = {2, 0, 0, 0, 0xc3, 0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    memcpy(body + hl, notutf8, sizeof notutf8);
    assert_int_equal(srv_triton_infer_map(body, hl + sizeof notutf8, hl, &gen, &ctx, &status, &err), -1);
    json_decref(err);
}

static void test_cors_list(void **state)
{
    (void)state;
    const char *list = "https://a.example, http://localhost:3000 ,https://B.example";
    assert_true(srv_cors_allowed(list, "https://a.example"));
    assert_true(srv_cors_allowed(list, "http://localhost:3000"));
    assert_true(srv_cors_allowed(list, "https://b.example")); /* host names are case-insensitive */
    assert_false(srv_cors_allowed(list, "https://a.example.evil"));
    assert_false(srv_cors_allowed(list, "https://a.exampl"));
    assert_false(srv_cors_allowed(list, "http://localhost:30001"));
    assert_false(srv_cors_allowed(list, ""));
    assert_false(srv_cors_allowed(NULL, "https://a.example"));
    assert_true(srv_cors_allowed("*", "https://anything.example"));
    assert_true(srv_cors_allowed("https://x.example,*", "null"));
    assert_false(srv_cors_allowed(",, ,", "https://a.example"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_triton_fields),    cmocka_unit_test(test_triton_refusals),
        cmocka_unit_test(test_triton_errors),    cmocka_unit_test(test_triton_paths),
        cmocka_unit_test(test_responses_map),    cmocka_unit_test(test_responses_rename),
        cmocka_unit_test(test_responses_tools),
        cmocka_unit_test(test_cors_list),        cmocka_unit_test(test_infer_tensors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
