/*
 * POST /v2/models/{m}/infer: KServe v2 inference with tensors, as
 * tritonclient's infer() sends it to TensorRT-LLM's ensemble: BYTES
 * text_input, INT32 max_tokens, ... in JSON ("data") or in Triton's binary
 * tensor extension (a JSON header of Inference-Header-Content-Length bytes,
 * then each binary input's bytes in order: BYTES elements as a 4-byte
 * little-endian length and the bytes, numbers little-endian). The tensors
 * become the generate extension's JSON object (srv_triton_infer_map, then
 * srv_triton_map as any generate body); the answer is the text_output
 * tensor, in JSON or binary as the request asked. docs/server.md, "Triton's
 * protocol".
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/server_openai.h"

static int fail(int *status, json_t **err, const char *param, const char *msg)
{
    *status = 400;
    *err = srv_error_json(msg, "invalid_request_error", param, "invalid_tensor");
    return -1;
}

/* The elements of a "data" array, nested as the shape or flat, into out. */
static int flatten(json_t *v, json_t *out, int depth)
{
    if (!json_is_array(v)) {
        json_array_append(out, v);
        return 0;
    }
    if (depth > 8)
        return -1;
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e) if (flatten(e, out, depth + 1) < 0) return -1;
    return 0;
}

static size_t dtype_size(const char *dt)
{
    static const struct {
        const char *name;
        size_t size;
    } t[] = {{"BOOL", 1},   {"INT8", 1},   {"UINT8", 1},  {"INT16", 2},  {"UINT16", 2}, {"INT32", 4},
             {"UINT32", 4}, {"INT64", 8},  {"UINT64", 8}, {"FP32", 4},   {"FP64", 8}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (strcmp(dt, t[i].name) == 0)
            return t[i].size;
    return 0;
}

/* One little-endian number of type dt at p as JSON. */
static json_t *number_at(const char *dt, const unsigned char *p)
{
    uint64_t u = 0;
    size_t n = dtype_size(dt);
    for (size_t i = 0; i < n; i++)
        u |= (uint64_t)p[i] << (8 * i);
    if (strcmp(dt, "BOOL") == 0)
        return json_boolean(u != 0);
    if (strcmp(dt, "FP32") == 0) {
        uint32_t w = (uint32_t)u;
        float f;
        memcpy(&f, &w, sizeof f);
        return json_real(f);
    }
    if (strcmp(dt, "FP64") == 0) {
        double d;
        memcpy(&d, &u, sizeof d);
        return json_real(d);
    }
    if (dt[0] == 'U')
        return u > (uint64_t)INT64_MAX ? json_real((double)u) : json_integer((json_int_t)u);
    /* signed: sign-extend from n bytes */
    if (n < 8 && (u >> (8 * n - 1)) & 1)
        u |= ~(uint64_t)0 << (8 * n);
    return json_integer((json_int_t)(int64_t)u);
}

/* The binary bytes [p, p + size) of a tensor of type dt as a JSON array. */
static json_t *binary_elements(const char *dt, const unsigned char *p, size_t size)
{
    json_t *a = json_array();
    if (strcmp(dt, "BYTES") == 0) {
        size_t at = 0;
        while (at < size) {
            if (size - at < 4)
                goto bad;
            uint32_t n = (uint32_t)p[at] | (uint32_t)p[at + 1] << 8 | (uint32_t)p[at + 2] << 16 |
                         (uint32_t)p[at + 3] << 24;
            at += 4;
            if (n > size - at)
                goto bad;
            json_t *s = json_stringn((const char *)p + at, n);
            if (s == NULL) /* not UTF-8 */
                goto bad;
            json_array_append_new(a, s);
            at += n;
        }
        return a;
    }
    size_t es = dtype_size(dt);
    if (es == 0 || size % es != 0)
        goto bad;
    for (size_t at = 0; at < size; at += es)
        json_array_append_new(a, number_at(dt, p + at));
    return a;
bad:
    json_decref(a);
    return NULL;
}

int srv_triton_infer_map(const char *body, size_t len, size_t header_len, json_t **gen, json_t **infer,
                         int *status, json_t **err)
{
    *gen = NULL;
    *infer = NULL;
    if (header_len == 0)
        header_len = len;
    if (header_len > len)
        return fail(status, err, NULL, "Inference-Header-Content-Length is larger than the body");
    json_error_t je;
    json_t *req = json_loadb(body, header_len, 0, &je);
    if (!json_is_object(req)) {
        json_decref(req);
        char msg[300];
        snprintf(msg, sizeof msg, "The inference request must be a JSON object: %.200s", je.text);
        return fail(status, err, NULL, msg);
    }
    json_t *inputs = json_object_get(req, "inputs");
    if (!json_is_array(inputs)) {
        json_decref(req);
        return fail(status, err, "inputs", "'inputs' must be a list of tensors");
    }
    const unsigned char *bin = (const unsigned char *)body + header_len;
    size_t bin_left = len - header_len;
    json_t *g = json_object();
    size_t i;
    json_t *t;
    char msg[300];
    json_array_foreach(inputs, i, t)
    {
        const char *name = json_string_value(json_object_get(t, "name"));
        const char *dt = json_string_value(json_object_get(t, "datatype"));
        json_t *shape = json_object_get(t, "shape");
        if (name == NULL || dt == NULL || !json_is_array(shape)) {
            snprintf(msg, sizeof msg, "inputs[%zu] needs a 'name', a 'datatype' and a 'shape'", i);
            goto bad;
        }
        if (strcmp(dt, "BYTES") != 0 && dtype_size(dt) == 0) {
            snprintf(msg, sizeof msg, "input '%.64s': datatype %.16s is not supported", name, dt);
            goto bad;
        }
        json_t *bsize = json_object_get(json_object_get(t, "parameters"), "binary_data_size");
        json_t *elems;
        if (bsize) {
            json_int_t n = json_integer_value(bsize);
            if (!json_is_integer(bsize) || n < 0 || (uint64_t)n > bin_left) {
                snprintf(msg, sizeof msg, "input '%.64s': binary_data_size beyond the body", name);
                goto bad;
            }
            elems = binary_elements(dt, bin, (size_t)n);
            bin += n;
            bin_left -= (size_t)n;
        } else {
            elems = json_array();
            if (flatten(json_object_get(t, "data"), elems, 0) < 0) {
                json_decref(elems);
                elems = NULL;
            }
        }
        if (elems == NULL) {
            snprintf(msg, sizeof msg, "input '%.64s': its data do not match datatype %.16s", name, dt);
            goto bad;
        }
        /* one element: a scalar (the batch dimension of one request);
         * several (stop_words): a list */
        if (json_array_size(elems) == 1)
            json_object_set(g, name, json_array_get(elems, 0));
        else
            json_object_set(g, name, elems);
        json_decref(elems);
    }
    /* the outputs asked for: text_output only, in binary when asked */
    int binary = json_is_true(json_object_get(json_object_get(req, "parameters"), "binary_data_output"));
    json_t *outs = json_object_get(req, "outputs");
    json_array_foreach(outs, i, t)
    {
        const char *name = json_string_value(json_object_get(t, "name"));
        if (name == NULL || strcmp(name, "text_output") != 0) {
            snprintf(msg, sizeof msg,
                     "output '%.64s' is not produced: anvil's models answer text_output only (TensorRT-LLM's "
                     "log probabilities and logits are not returned)",
                     name ? name : "?");
            goto bad;
        }
        json_t *b = json_object_get(json_object_get(t, "parameters"), "binary_data");
        if (b)
            binary = json_is_true(b);
    }
    json_t *ctx = json_object();
    json_object_set_new(ctx, "binary", json_boolean(binary));
    json_t *id = json_object_get(req, "id");
    if (json_is_string(id))
        json_object_set(ctx, "id", id);
    json_decref(req);
    *gen = g;
    *infer = ctx;
    return 0;
bad:
    json_decref(g);
    json_decref(req);
    return fail(status, err, "inputs", msg);
}

/* ------------------------------------------------------------ output */

static void i_chunk(srv_gen *g, const char *text, size_t len, anvil_request_finish finish)
{
    (void)g, (void)text, (void)len, (void)finish; /* infer answers once: never streamed */
}

static void i_error(srv_gen *g, const char *msg)
{
    (void)g, (void)msg;
}

static void i_end(srv_job *j)
{
    (void)j;
}

/* The text_output tensor: [1, 1] BYTES, in JSON or binary. The binary
 * form's JSON length goes to the wire's fields ("header_length") for the
 * Inference-Header-Content-Length header. */
static void i_body(srv_job *j)
{
    srv_gen *g = &j->g;
    json_t *c = json_array_get(j->choices, 0);
    json_t *text = json_object_get(c, "text");
    const char *s = json_string_value(text);
    size_t n = json_string_length(text);
    int binary = json_is_true(json_object_get(g->wire_ctx, "binary"));
    json_t *o = json_object(), *outs = json_array(), *t = json_object(), *shape = json_array();
    json_t *id = json_object_get(g->wire_ctx, "id");
    if (id)
        json_object_set(o, "id", id);
    json_object_set_new(o, "model_name", json_string(g->model->name));
    json_object_set_new(o, "model_version", json_string("1"));
    json_array_append_new(shape, json_integer(1));
    json_array_append_new(shape, json_integer(1));
    json_object_set_new(t, "name", json_string("text_output"));
    json_object_set_new(t, "datatype", json_string("BYTES"));
    json_object_set_new(t, "shape", shape);
    if (binary) {
        json_t *p = json_object();
        json_object_set_new(p, "binary_data_size", json_integer((json_int_t)n + 4));
        json_object_set_new(t, "parameters", p);
    } else {
        json_t *data = json_array();
        json_array_append_new(data, srv_json_text(s, n));
        json_object_set_new(t, "data", data);
    }
    json_array_append_new(outs, t);
    json_object_set_new(o, "outputs", outs);
    char *js = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    g->http_status = js ? 200 : 500;
    if (js == NULL)
        return;
    srv_gen_append(g, js, strlen(js));
    if (binary) {
        json_object_set_new(g->wire_ctx, "header_length", json_integer((json_int_t)strlen(js)));
        unsigned char le[4] = {(unsigned char)n, (unsigned char)(n >> 8), (unsigned char)(n >> 16),
                               (unsigned char)(n >> 24)};
        srv_gen_append(g, (const char *)le, 4);
        srv_gen_append(g, s ? s : "", n);
    }
    free(js);
}

const srv_wire srv_triton_infer_wire = {
    .id_prefix = NULL,
    .start = NULL,
    .chunk = i_chunk,
    .error = i_error,
    .end = i_end,
    .body = i_body,
    .error_body = srv_triton_error,
};
