/*
 * Triton's HTTP protocol (KServe v2 and Triton's generate extension) as
 * TensorRT-LLM's Triton users call it: the request of
 * POST /v2/models/{m}/generate[_stream] (TensorRT-LLM's ensemble and BLS
 * field names: text_input, max_tokens, stop_words, ...) mapped to an OpenAI
 * completions body, which the OpenAI mapping then checks and enqueues as
 * any other (srv_triton_map); the answer in Triton's shape ({"model_name",
 * "model_version", "text_output"}, SSE "data: {...}" events for a stream);
 * errors as {"error": "text"}; and the metadata, readiness, configuration
 * and statistics bodies. docs/server.md, "Triton's protocol", has the
 * table of fields.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/server_openai.h"

/* The error names of the OpenAI mapping, as the client spelled them. */
static const char *const renames[][2] = {
    {"prompt", "text_input"}, {"stop", "stop_words"},         {"seed", "random_seed"},
    {"min_tokens", "min_length"}, {"echo", "exclude_input_in_output"},
};

json_t *srv_triton_error(json_t *openai_error)
{
    json_t *e = json_object_get(openai_error, "error");
    json_t *o = json_object();
    const char *msg = json_string_value(json_object_get(e, "message"));
    json_object_set_new(o, "error", json_string(msg ? msg : "error"));
    /* anvil's machine-readable code beside Triton's text (Triton's clients
     * read "error" only) */
    json_t *code = json_object_get(e, "code");
    if (json_is_string(code))
        json_object_set(o, "code", code);
    json_t *param = json_object_get(e, "param");
    if (json_is_string(param))
        json_object_set(o, "param", param);
    json_decref(openai_error);
    return o;
}

static int fail(int *status, json_t **err, int st, const char *param, const char *code, const char *msg)
{
    *status = st;
    *err = srv_error_json(msg, "invalid_request_error", param, code);
    return -1;
}

/* A Triton input's value: a scalar, or a tensor of one element written as
 * [x] or [[x]] (shape [1] or [1, 1], as tritonclient builds them). */
static json_t *scalar(json_t *v)
{
    for (int i = 0; i < 2 && json_is_array(v) && json_array_size(v) == 1; i++)
        v = json_array_get(v, 0);
    return json_is_null(v) ? NULL : v;
}

/* Copies field `from` (a scalar after scalar()) as `to`; 0 absent. */
static void copy_as(json_t *in, const char *from, json_t *out, const char *to)
{
    json_t *v = scalar(json_object_get(in, from));
    if (v)
        json_object_set(out, to, v);
}

/* TensorRT-LLM's word lists: "" or [] (none), a string, or a list of
 * strings (empty ones dropped). 1: some, 0: none, -1: malformed. */
static int word_list(json_t *v, json_t **out)
{
    *out = NULL;
    if (v == NULL || json_is_null(v))
        return 0;
    if (json_is_string(v)) {
        if (json_string_length(v) == 0)
            return 0;
        *out = json_array();
        json_array_append(*out, v);
        return 1;
    }
    if (!json_is_array(v))
        return -1;
    /* tritonclient sends a [1, k] tensor: [["a", "b"]] */
    if (json_array_size(v) == 1 && json_is_array(json_array_get(v, 0)))
        v = json_array_get(v, 0);
    json_t *a = json_array();
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e)
    {
        if (!json_is_string(e)) {
            json_decref(a);
            return -1;
        }
        if (json_string_length(e) > 0)
            json_array_append(a, e);
    }
    if (json_array_size(a) == 0) {
        json_decref(a);
        return 0;
    }
    *out = a;
    return 1;
}

/* A field that anvil does not have, refused unless it holds its "off"
 * value: false, 0, 1 (want_one), "" or an empty list. */
static int off_value(json_t *v, int want_one)
{
    v = scalar(v);
    if (v == NULL || json_is_false(v))
        return 1;
    if (json_is_string(v))
        return json_string_length(v) == 0;
    if (json_is_array(v))
        return json_array_size(v) == 0;
    if (json_is_number(v))
        return json_number_value(v) == (want_one ? 1.0 : 0.0);
    return 0;
}

int srv_triton_map(json_t *in, const char *model, int stream_endpoint, json_t **oai, json_t **ctx, int *status,
                   json_t **err)
{
    *oai = NULL;
    *ctx = NULL;
    if (!json_is_object(in))
        return fail(status, err, 400, NULL, "invalid_json", "The request body must be a JSON object.");
    static const struct {
        const char *name;
        int want_one;
        const char *why;
    } refused[] = {
        {"return_log_probs", 0, "log probabilities are not returned by Triton's generate here (use /v1/completions with logprobs)"},
        {"return_context_logits", 0, "context logits are not returned"},
        {"return_generation_logits", 0, "generation logits are not returned"},
        {"return_kv_cache_reuse_stats", 0, "KV cache reuse statistics are not returned"},
        {"beam_width", 1, "beam search is not supported (beam_width must be 1)"},
        {"num_return_sequences", 1, "one sequence per request (num_return_sequences must be 1; /v1/completions has n)"},
        {"bad_words", 0, "bad_words is not supported (no banned token sequences; /v1/completions has logit_bias)"},
        {"embedding_bias_words", 0, "embedding_bias_words is not supported (/v1/completions has logit_bias)"},
        {"embedding_bias_weights", 0, "embedding_bias_weights is not supported"},
        {"lora_task_id", 0, "LoRA adapters are not supported"},
        {"lora_weights", 0, "LoRA adapters are not supported"},
        {"lora_config", 0, "LoRA adapters are not supported"},
        {"prompt_embedding_table", 0, "prompt tuning is not supported"},
        {"prompt_vocab_size", 0, "prompt tuning is not supported"},
        {"guided_decoding_guide_type", 0, "guided decoding is not supported"},
        {"guided_decoding_guide", 0, "guided decoding is not supported"},
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        json_t *v = json_object_get(in, refused[i].name);
        if (v && !off_value(v, refused[i].want_one)) {
            char msg[256];
            snprintf(msg, sizeof msg, "'%s': %s", refused[i].name, refused[i].why);
            return fail(status, err, 400, refused[i].name, "unsupported", msg);
        }
    }
    json_t *text = scalar(json_object_get(in, "text_input"));
    if (text == NULL)
        return fail(status, err, 400, "text_input", "missing_required_parameter",
                    "'text_input' is required: the prompt, a string");
    if (!json_is_string(text))
        return fail(status, err, 400, "text_input", "invalid_type", "'text_input' must be a string");
    json_t *st = scalar(json_object_get(in, "stream"));
    if (st && !json_is_boolean(st))
        return fail(status, err, 400, "stream", "invalid_type", "'stream' must be a boolean");
    if (!stream_endpoint && json_is_true(st))
        return fail(status, err, 400, "stream", "invalid_value",
                    "'stream': true needs POST /v2/models/{model}/generate_stream (generate answers once)");
    json_t *ex = scalar(json_object_get(in, "exclude_input_in_output"));
    if (ex && !json_is_boolean(ex))
        return fail(status, err, 400, "exclude_input_in_output", "invalid_type",
                    "'exclude_input_in_output' must be a boolean");
    json_t *id = json_object_get(in, "id");
    if (id && !json_is_string(id))
        return fail(status, err, 400, "id", "invalid_type", "'id' must be a string");
    json_t *stop = NULL;
    if (word_list(json_object_get(in, "stop_words"), &stop) < 0)
        return fail(status, err, 400, "stop_words", "invalid_type",
                    "'stop_words' must be a string or a list of strings");

    json_t *o = json_object();
    json_object_set_new(o, "model", json_string(model));
    json_object_set(o, "prompt", text);
    if (stop)
        json_object_set_new(o, "stop", stop);
    copy_as(in, "max_tokens", o, "max_tokens");
    copy_as(in, "temperature", o, "temperature");
    copy_as(in, "repetition_penalty", o, "repetition_penalty");
    copy_as(in, "presence_penalty", o, "presence_penalty");
    copy_as(in, "frequency_penalty", o, "frequency_penalty");
    copy_as(in, "min_length", o, "min_tokens");
    copy_as(in, "min_tokens", o, "min_tokens");
    copy_as(in, "random_seed", o, "seed");
    copy_as(in, "seed", o, "seed");
    /* TensorRT-LLM: top_k 0 and top_p 0 mean "no limit", and a request
     * with neither limit decodes greedily (its top_k of 1) */
    json_t *tk = scalar(json_object_get(in, "top_k")), *tp = scalar(json_object_get(in, "top_p"));
    int has_k = tk && !(json_is_number(tk) && json_number_value(tk) == 0);
    int has_p = tp && !(json_is_number(tp) && json_number_value(tp) == 0);
    if (has_k)
        json_object_set(o, "top_k", tk);
    if (has_p)
        json_object_set(o, "top_p", tp);
    if (!has_k && !has_p)
        json_object_set_new(o, "top_k", json_integer(1));
    /* TensorRT-LLM's streams carry the new tokens only; a whole answer
     * has the prompt in front when exclude_input_in_output is false */
    if (ex && json_is_false(ex))
        json_object_set_new(o, "echo", json_true());
    json_object_set_new(o, "stream", json_boolean(stream_endpoint));
    json_t *c = json_object();
    if (id)
        json_object_set(c, "id", id);
    /* generate_stream with "stream": false: one event with the whole text */
    json_object_set_new(c, "whole", json_boolean(stream_endpoint && st && json_is_false(st)));
    json_object_set_new(c, "echo", json_boolean(ex && json_is_false(ex)));
    *oai = o;
    *ctx = c;
    return 0;
}

void srv_triton_rename(json_t *err, json_t *ctx)
{
    (void)ctx;
    srv_error_rename(err, renames, sizeof renames / sizeof renames[0], 1);
}

/* ------------------------------------------------------------ output */

static json_t *envelope(const srv_gen *g)
{
    json_t *o = json_object();
    json_t *id = json_object_get(g->wire_ctx, "id");
    if (id)
        json_object_set(o, "id", id);
    json_object_set_new(o, "model_name", json_string(g->model->name));
    json_object_set_new(o, "model_version", json_string("1"));
    return o;
}

static const char *finish_name(anvil_request_finish f)
{
    return f == ANVIL_REQUEST_STOP ? "stop" : f == ANVIL_REQUEST_LENGTH ? "length" : "abort";
}

static void t_chunk(srv_gen *g, const char *text, size_t len, anvil_request_finish finish)
{
    int whole = json_is_true(json_object_get(g->wire_ctx, "whole"));
    if (whole) { /* one event at the end */
        srv_gen_text_add(g, text, len);
        if (finish == ANVIL_REQUEST_RUNNING)
            return;
        text = g->text ? g->text : "";
        len = g->text_len;
    }
    if (len == 0 && finish == ANVIL_REQUEST_RUNNING)
        return;
    json_t *o = envelope(g);
    json_object_set_new(o, "text_output", srv_json_text(text, len));
    if (finish != ANVIL_REQUEST_RUNNING)
        json_object_set_new(o, "finish_reason", json_string(finish_name(finish)));
    srv_gen_sse(g, NULL, o);
}

static void t_error(srv_gen *g, const char *msg)
{
    json_t *o = json_object();
    json_object_set_new(o, "error", json_string(msg));
    srv_gen_sse(g, NULL, o);
    g->wire_failed = 1;
}

static void t_end(srv_job *j)
{
    (void)j; /* Triton's stream simply ends */
}

static void t_body(srv_job *j)
{
    srv_gen *g = &j->g;
    json_t *c = json_array_get(j->choices, 0);
    json_t *o = envelope(g);
    json_t *t = json_object_get(c, "text");
    json_object_set(o, "text_output", t ? t : json_string(""));
    json_t *f = json_object_get(c, "finish_reason");
    if (f)
        json_object_set(o, "finish_reason", f);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    g->http_status = s ? 200 : 500;
    if (s)
        srv_gen_append(g, s, strlen(s));
    free(s);
}

const srv_wire srv_triton_wire = {
    .id_prefix = NULL,
    .start = NULL,
    .chunk = t_chunk,
    .error = t_error,
    .end = t_end,
    .body = t_body,
    .error_body = srv_triton_error,
};

/* ------------------------------------------------------------ metadata */

int srv_triton_path(const char *rest, char *name, size_t cap, const char **verb)
{
    /* rest: after "/v2/models/": NAME[/versions/V][/VERB] */
    const char *slash = strchr(rest, '/');
    size_t n = slash ? (size_t)(slash - rest) : strlen(rest);
    if (n == 0 || n >= cap)
        return -1;
    memcpy(name, rest, n);
    name[n] = '\0';
    const char *p = slash ? slash : "";
    if (strncmp(p, "/versions/", 10) == 0) {
        const char *v = p + 10, *e = strchr(v, '/');
        size_t vn = e ? (size_t)(e - v) : strlen(v);
        /* every model has version "1" */
        if (vn != 1 || v[0] != '1')
            return -2;
        p = v + vn;
    }
    if (*p == '\0') {
        *verb = "";
        return 0;
    }
    p++;
    static const char *const verbs[] = {"ready", "config", "stats", "generate", "generate_stream", "infer"};
    for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++)
        if (strcmp(p, verbs[i]) == 0) {
            *verb = verbs[i];
            return 0;
        }
    return -1;
}

json_t *srv_triton_server_metadata(void)
{
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string("anvil"));
    json_object_set_new(o, "version", json_string(ANVIL_VERSION_STRING));
    json_t *x = json_array();
    json_array_append_new(x, json_string("model_repository"));
    json_array_append_new(x, json_string("model_configuration"));
    json_array_append_new(x, json_string("statistics"));
    json_array_append_new(x, json_string("generate"));
    json_array_append_new(x, json_string("binary_tensor_data"));
    json_object_set_new(o, "extensions", x);
    return o;
}

static json_t *tensor(const char *name, const char *dtype, int rank, int json_config)
{
    json_t *o = json_object(), *shape = json_array();
    for (int i = 0; i < rank; i++)
        json_array_append_new(shape, json_integer(-1));
    json_object_set_new(o, "name", json_string(name));
    /* the metadata says BYTES, the configuration TYPE_STRING (Triton's two spellings) */
    if (json_config) {
        json_object_set_new(o, "data_type", json_string(dtype));
        json_object_set_new(o, "dims", shape);
    } else {
        json_object_set_new(o, "datatype", json_string(dtype));
        json_object_set_new(o, "shape", shape);
    }
    return o;
}

/* The inputs anvil reads (the rest of TensorRT-LLM's are refused or ignored:
 * docs/server.md). */
static const struct {
    const char *name, *meta, *config;
} inputs[] = {
    {"text_input", "BYTES", "TYPE_STRING"},     {"max_tokens", "INT32", "TYPE_INT32"},
    {"stream", "BOOL", "TYPE_BOOL"},            {"temperature", "FP32", "TYPE_FP32"},
    {"top_k", "INT32", "TYPE_INT32"},           {"top_p", "FP32", "TYPE_FP32"},
    {"stop_words", "BYTES", "TYPE_STRING"},     {"repetition_penalty", "FP32", "TYPE_FP32"},
    {"presence_penalty", "FP32", "TYPE_FP32"},  {"frequency_penalty", "FP32", "TYPE_FP32"},
    {"min_length", "INT32", "TYPE_INT32"},      {"random_seed", "UINT64", "TYPE_UINT64"},
    {"exclude_input_in_output", "BOOL", "TYPE_BOOL"},
};

json_t *srv_triton_model_metadata(const srv_model *m)
{
    json_t *o = json_object(), *v = json_array(), *in = json_array(), *out = json_array();
    json_array_append_new(v, json_string("1"));
    for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++)
        json_array_append_new(in, tensor(inputs[i].name, inputs[i].meta, 2, 0));
    json_array_append_new(out, tensor("text_output", "BYTES", 2, 0));
    json_object_set_new(o, "name", json_string(m->name));
    json_object_set_new(o, "versions", v);
    json_object_set_new(o, "platform", json_string("anvil"));
    json_object_set_new(o, "inputs", in);
    json_object_set_new(o, "outputs", out);
    return o;
}

json_t *srv_triton_model_config(const srv_model *m, int32_t max_batch_size)
{
    json_t *o = json_object(), *in = json_array(), *out = json_array(), *params = json_object();
    for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
        json_t *t = tensor(inputs[i].name, inputs[i].config, 1, 1);
        json_object_set_new(t, "optional", json_boolean(i != 0));
        json_array_append_new(in, t);
    }
    json_array_append_new(out, tensor("text_output", "TYPE_STRING", 1, 1));
    json_object_set_new(o, "name", json_string(m->name));
    json_object_set_new(o, "platform", json_string("anvil"));
    json_object_set_new(o, "backend", json_string("anvil"));
    /* the executor's limit: its own, or the runtime's when it has none or a larger one */
    const anvil_runtime_options *ro = m->rt ? anvil_runtime_options_get(m->rt) : NULL;
    int32_t rt_max = ro ? ro->max_batch_size : 0;
    if (max_batch_size <= 0 || (rt_max > 0 && max_batch_size > rt_max))
        max_batch_size = rt_max;
    json_object_set_new(o, "max_batch_size", json_integer(max_batch_size));
    json_object_set_new(o, "input", in);
    json_object_set_new(o, "output", out);
    /* streams answer many responses per request (Triton's decoupled models) */
    json_t *policy = json_object();
    json_object_set_new(policy, "decoupled", json_true());
    json_object_set_new(o, "model_transaction_policy", policy);
    json_t *msl = json_object();
    json_object_set_new(msl, "string_value", json_sprintf("%d", m->max_seq_len));
    json_object_set_new(params, "max_seq_len", msl);
    json_object_set_new(o, "parameters", params);
    return o;
}

static json_t *count_ns(uint64_t count, double seconds)
{
    json_t *o = json_object();
    json_object_set_new(o, "count", json_integer((json_int_t)count));
    json_object_set_new(o, "ns", json_integer((json_int_t)(seconds * 1e9)));
    return o;
}

json_t *srv_triton_model_stats(srv_model *const *ms, int n)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++) {
        srv_model *m = ms[i];
        pthread_mutex_lock(&m->mu);
        uint64_t ok = m->finished[ANVIL_REQUEST_STOP] + m->finished[ANVIL_REQUEST_LENGTH];
        uint64_t bad = m->finished[ANVIL_REQUEST_ERROR] + m->finished[ANVIL_REQUEST_CANCELLED];
        double e2e = m->e2e.sum;
        uint64_t gen = m->generated_tokens, prompt = m->prompt_tokens;
        pthread_mutex_unlock(&m->mu);
        json_t *s = json_object(), *is = json_object();
        json_object_set_new(s, "name", json_string(m->name));
        json_object_set_new(s, "version", json_string("1"));
        json_object_set_new(s, "inference_count", json_integer((json_int_t)(ok + bad)));
        json_object_set_new(s, "execution_count", json_integer((json_int_t)(ok + bad)));
        /* success: requests that ended with their text, the time from
         * their enqueue to their end; fail: errors and cancellations */
        json_object_set_new(is, "success", count_ns(ok, e2e));
        json_object_set_new(is, "fail", count_ns(bad, 0));
        json_object_set_new(s, "inference_stats", is);
        json_object_set_new(s, "prompt_tokens", json_integer((json_int_t)prompt));
        json_object_set_new(s, "generated_tokens", json_integer((json_int_t)gen));
        json_object_set_new(s, "batch_stats", json_array());
        json_array_append_new(a, s);
    }
    json_t *o = json_object();
    json_object_set_new(o, "model_stats", a);
    return o;
}
