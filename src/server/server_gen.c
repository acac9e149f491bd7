/* One generation request in flight: the executor's callbacks turn its events
 * into OpenAI-shaped SSE chunks or a final body, without blocking (a short
 * mutex only: the whole batch waits for a callback). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/server_internal.h"

double srv_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Drops one reference; the last frees. */
void srv_gen_release(srv_gen *g)
{
    if (g == NULL)
        return;
    pthread_mutex_lock(&g->mu);
    int left = --g->refs;
    pthread_mutex_unlock(&g->mu);
    if (left > 0)
        return;
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->cv);
    json_decref(g->stop);
    free(g->buf);
    free(g->role_sent);
    free(g);
}

int srv_gen_append(srv_gen *g, const char *s, size_t n)
{
    if (g->len + n + 1 > g->cap) {
        size_t cap = g->cap ? g->cap : 1024;
        while (cap < g->len + n + 1)
            cap *= 2;
        char *b = realloc(g->buf, cap);
        if (b == NULL)
            return -1;
        g->buf = b;
        g->cap = cap;
    }
    memcpy(g->buf + g->len, s, n);
    g->len += n;
    g->buf[g->len] = '\0';
    return 0;
}

/* A JSON string from bytes that may not be valid UTF-8 (a lone byte token):
 * then OpenAI's "bytes:\xNN" spelling. */
static json_t *jstr(const char *s, size_t n)
{
    json_t *j = json_stringn(s ? s : "", s ? n : 0);
    if (j)
        return j;
    char *b = malloc(6 + 4 * n + 1);
    if (b == NULL)
        return json_string("");
    size_t k = (size_t)sprintf(b, "bytes:");
    for (size_t i = 0; i < n; i++)
        k += (size_t)sprintf(b + k, "\\x%02x", (unsigned char)s[i]);
    j = json_string(b);
    free(b);
    return j ? j : json_string("");
}

static json_t *token_json(const anvil_tokenizer *tok, int32_t id)
{
    char *t = NULL;
    size_t n = 0;
    if (tok == NULL || anvil_tokenizer_decode(tok, &id, 1, 0, &t, &n) != ANVIL_OK)
        return json_sprintf("token_id:%d", id);
    /* SentencePiece decoders drop the word-start space of a text's first
     * token; a token on its own is not a text's start */
    const char *raw = anvil_tokenizer_token_text(tok, id);
    if (raw && strncmp(raw, "\xe2\x96\x81", 3) == 0 && (n == 0 || t[0] != ' ')) {
        char *u = malloc(n + 2);
        if (u) {
            u[0] = ' ';
            memcpy(u + 1, t, n + 1);
            free(t);
            t = u;
            n++;
        }
    }
    json_t *j = jstr(t, n);
    free(t);
    return j;
}

static json_t *bytes_json(json_t *tokstr)
{
    json_t *a = json_array();
    const char *s = json_string_value(tokstr);
    for (size_t i = 0; s && i < json_string_length(tokstr); i++)
        json_array_append_new(a, json_integer((unsigned char)s[i]));
    return a;
}

static json_t *real_or_null(double v) { return v == v && v > -1e30 ? json_real(v) : json_real(-9999.0); }

/* logprobs of n tokens, in the shape of the endpoint; offset: the text
 * offset of the first (completions' text_offset). */
static json_t *logprobs_json(const srv_gen *g, const int32_t *ids, int32_t n, const float *lp,
                             const anvil_token_logprob *top, int32_t n_top, size_t offset)
{
    const anvil_tokenizer *tok = g->model->tok;
    if (g->top_as_chat) {
        json_t *content = json_array();
        for (int32_t i = 0; i < n; i++) {
            json_t *e = json_object(), *ts = token_json(tok, ids[i]);
            json_object_set_new(e, "bytes", bytes_json(ts));
            json_object_set_new(e, "token", ts);
            json_object_set_new(e, "logprob", real_or_null(lp[i]));
            json_t *alts = json_array();
            for (int32_t k = 0; top && k < n_top; k++) {
                const anvil_token_logprob *t = &top[(size_t)i * (size_t)n_top + (size_t)k];
                json_t *a = json_object(), *as = token_json(tok, t->token);
                json_object_set_new(a, "bytes", bytes_json(as));
                json_object_set_new(a, "token", as);
                json_object_set_new(a, "logprob", real_or_null(t->logprob));
                json_array_append_new(alts, a);
            }
            json_object_set_new(e, "top_logprobs", alts);
            json_array_append_new(content, e);
        }
        json_t *o = json_object();
        json_object_set_new(o, "content", content);
        json_object_set_new(o, "refusal", json_null());
        return o;
    }
    json_t *tokens = json_array(), *tlp = json_array(), *tops = json_array(), *offs = json_array();
    for (int32_t i = 0; i < n; i++) {
        json_t *ts = token_json(tok, ids[i]);
        json_array_append_new(offs, json_integer((json_int_t)offset));
        offset += json_string_length(ts);
        json_array_append_new(tokens, ts);
        json_array_append_new(tlp, real_or_null(lp[i]));
        json_t *d = json_object();
        for (int32_t k = 0; top && k < n_top; k++) {
            const anvil_token_logprob *t = &top[(size_t)i * (size_t)n_top + (size_t)k];
            json_t *as = token_json(tok, t->token);
            json_object_set_new(d, json_string_value(as), real_or_null(t->logprob));
            json_decref(as);
        }
        json_array_append_new(tops, d);
    }
    json_t *o = json_object();
    json_object_set_new(o, "tokens", tokens);
    json_object_set_new(o, "token_logprobs", tlp);
    json_object_set_new(o, "top_logprobs", tops);
    json_object_set_new(o, "text_offset", offs);
    return o;
}

static json_t *finish_json(anvil_request_finish f)
{
    switch (f) {
    case ANVIL_REQUEST_STOP:
        return json_string("stop");
    case ANVIL_REQUEST_LENGTH:
        return json_string("length");
    case ANVIL_REQUEST_CANCELLED:
        return json_string("abort");
    case ANVIL_REQUEST_ERROR:
        return json_string("error");
    default:
        return json_null();
    }
}

static json_t *envelope(const srv_gen *g, const char *object)
{
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(g->rid));
    json_object_set_new(o, "object", json_string(object));
    json_object_set_new(o, "created", json_integer(g->created));
    json_object_set_new(o, "model", json_string(g->model->name));
    json_object_set_new(o, "system_fingerprint", json_null());
    return o;
}

static json_t *usage_json(const anvil_result *r)
{
    int64_t completion = 0;
    for (int32_t i = 0; i < r->n_sequences; i++)
        completion += r->sequences[i].n_tokens;
    json_t *u = json_object();
    json_object_set_new(u, "prompt_tokens", json_integer(r->n_prompt));
    json_object_set_new(u, "completion_tokens", json_integer(completion));
    json_object_set_new(u, "total_tokens", json_integer(r->n_prompt + completion));
    return u;
}

/* Appends "data: <json>\n\n" (takes o). */
static void sse(srv_gen *g, json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (s == NULL)
        return;
    srv_gen_append(g, "data: ", 6);
    srv_gen_append(g, s, strlen(s));
    srv_gen_append(g, "\n\n", 2);
    free(s);
}

static void stream_chunk(srv_gen *g, int32_t index, const char *text, size_t text_len, json_t *lp,
                         anvil_request_finish finish)
{
    json_t *o = envelope(g, g->chat ? "chat.completion.chunk" : "text_completion");
    json_t *c = json_object();
    json_object_set_new(c, "index", json_integer(index));
    if (g->chat) {
        json_t *delta = json_object();
        if (!g->role_sent[index]) {
            json_object_set_new(delta, "role", json_string("assistant"));
            g->role_sent[index] = 1;
        }
        if (text_len > 0 || finish == ANVIL_REQUEST_RUNNING)
            json_object_set_new(delta, "content", jstr(text, text_len));
        json_object_set_new(c, "delta", delta);
    } else {
        json_object_set_new(c, "text", jstr(text, text_len));
    }
    json_object_set_new(c, "logprobs", lp ? lp : json_null());
    json_object_set_new(c, "finish_reason", finish_json(finish));
    json_t *choices = json_array();
    json_array_append_new(choices, c);
    json_object_set_new(o, "choices", choices);
    if (g->include_usage)
        json_object_set_new(o, "usage", json_null());
    sse(g, o);
}

/* The non-streamed body of a finished request. */
static void final_body(srv_gen *g, const anvil_result *r)
{
    if (r->finish == ANVIL_REQUEST_ERROR || r->finish == ANVIL_REQUEST_CANCELLED) {
        int unavailable = r->finish == ANVIL_REQUEST_CANCELLED;
        json_t *e = srv_error_json(unavailable ? "the request was cancelled (server shutting down)" : r->error,
                                   unavailable ? "service_unavailable" : "server_error", NULL, NULL);
        g->http_status = unavailable ? 503 : 500;
        char *s = json_dumps(e, JSON_COMPACT);
        json_decref(e);
        if (s)
            srv_gen_append(g, s, strlen(s));
        free(s);
        return;
    }
    json_t *o = envelope(g, g->chat ? "chat.completion" : "text_completion");
    json_t *choices = json_array();
    for (int32_t i = 0; i < r->n_sequences; i++) {
        const anvil_sequence_output *sq = &r->sequences[i];
        json_t *c = json_object();
        json_object_set_new(c, "index", json_integer(i));
        if (g->chat) {
            json_t *m = json_object();
            json_object_set_new(m, "role", json_string("assistant"));
            json_object_set_new(m, "content", jstr(sq->text, sq->text_len));
            json_object_set_new(m, "refusal", json_null());
            json_object_set_new(c, "message", m);
        } else {
            json_object_set_new(c, "text", jstr(sq->text, sq->text_len));
        }
        /* the executor counts a stopping end token among the ids; OpenAI's
         * logprobs cover the tokens of the text */
        json_object_set_new(c, "logprobs",
                            sq->logprobs ? logprobs_json(g, sq->token_ids, sq->n_tokens, sq->logprobs,
                                                         sq->top_logprobs, sq->n_top, 0)
                                         : json_null());
        json_object_set_new(c, "finish_reason", finish_json(sq->finish));
        json_array_append_new(choices, c);
    }
    json_object_set_new(o, "choices", choices);
    json_object_set_new(o, "usage", usage_json(r));
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    g->http_status = s ? 200 : 500;
    if (s)
        srv_gen_append(g, s, strlen(s));
    free(s);
}

static void record_metrics(srv_gen *g, const anvil_event *ev, double now)
{
    srv_model *m = g->model;
    pthread_mutex_lock(&m->mu);
    if (ev->kind == ANVIL_EVENT_TOKENS && ev->n_tokens > 0) {
        if (!g->got_first) {
            srv_hist_add(&m->ttft, now - g->t_enqueue);
            g->got_first = 1;
        } else {
            double per = (now - g->t_last) / ev->n_tokens;
            for (int32_t i = 0; i < ev->n_tokens; i++)
                srv_hist_add(&m->itl, per);
        }
        g->t_last = now;
    } else if (ev->kind == ANVIL_EVENT_FINAL) {
        const anvil_result *r = ev->result;
        m->prompt_tokens += (uint64_t)r->n_prompt;
        for (int32_t i = 0; i < r->n_sequences; i++)
            m->generated_tokens += (uint64_t)r->sequences[i].n_tokens;
        if ((unsigned)r->finish < 5)
            m->finished[r->finish]++;
        srv_hist_add(&m->e2e, now - g->t_enqueue);
    }
    pthread_mutex_unlock(&m->mu);
}

void srv_gen_on_event(void *user, const anvil_event *ev)
{
    srv_gen *g = user;
    record_metrics(g, ev, srv_now());
    pthread_mutex_lock(&g->mu);
    if (ev->kind == ANVIL_EVENT_TOKENS && g->stream && ev->index >= 0 && ev->index < g->n) {
        if (ev->text_len > 0 || ev->finish != ANVIL_REQUEST_RUNNING || (ev->logprobs && ev->n_tokens > 0)) {
            json_t *lp = ev->logprobs ? logprobs_json(g, ev->token_ids, ev->n_tokens, ev->logprobs,
                                                      ev->top_logprobs, ev->n_top, 0)
                                      : NULL;
            stream_chunk(g, ev->index, ev->text, ev->text_len, lp, ev->finish);
        }
    } else if (ev->kind == ANVIL_EVENT_FINAL) {
        const anvil_result *r = ev->result;
        if (g->stream) {
            /* a request cancelled as a whole (shutdown) tells every sample */
            if (r->finish == ANVIL_REQUEST_ERROR) {
                json_t *e = json_object();
                json_object_set_new(e, "error", srv_error_json(r->error, "server_error", NULL, NULL));
                sse(g, e);
            } else if (r->finish == ANVIL_REQUEST_CANCELLED) {
                for (int32_t i = 0; i < g->n; i++)
                    stream_chunk(g, i, "", 0, NULL, ANVIL_REQUEST_CANCELLED);
            }
            if (g->include_usage) {
                json_t *o = envelope(g, g->chat ? "chat.completion.chunk" : "text_completion");
                json_object_set_new(o, "choices", json_array());
                json_object_set_new(o, "usage", usage_json(r));
                sse(g, o);
            }
            srv_gen_append(g, "data: [DONE]\n\n", 14);
        } else {
            final_body(g, r);
        }
        g->done = 1;
    }
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    if (ev->kind == ANVIL_EVENT_FINAL)
        srv_gen_release(g); /* the executor's reference */
}
