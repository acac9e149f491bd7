/* One generation request in flight (a srv_job: one executor request per
 * prompt): the executor's callbacks turn its events into OpenAI-shaped SSE
 * chunks or a final body, without blocking (a short mutex only: the whole
 * batch waits for a callback). */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/server_openai.h"
#include "server/server_tools.h"

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
    srv_job *j = (srv_job *)g; /* every srv_gen is the head of a srv_job */
    anvil_grammar_free(g->grammar); /* before the model, whose vocabulary it uses */
    srv_model_release(g->model);
    pthread_mutex_destroy(&g->mu);
    json_decref(g->stop);
    json_decref(g->wire_ctx);
    free(g->text);
    free(g->chunk_head);
    free(g->rec);
    free(g->buf);
    free(g->role_sent);
    for (int32_t i = 0; g->tools_st && i < j->n_choices; i++)
        srv_tools_stream_free(g->tools_st[i]);
    free(g->tools_st);
    for (int32_t i = 0; j->echo && i < j->n_prompts; i++)
        free(j->echo[i]);
    free(j->echo);
    free(j->echo_len);
    free(j->subs);
    json_decref(j->choices);
    free(j);
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

static json_t *real_or_null(double v)
{
    return v == v && v > -1e30 ? json_real(v) : json_real(-9999.0);
}

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

/* system_fingerprint (OpenAI: "the backend configuration that the model
 * runs with", for telling when a change may affect outputs): null for the
 * weights the model was loaded with, "fp_anvil_wN" after its N-th refit
 * (for the chunk or body at hand: the weights that computed its tokens). */
static void fingerprint(uint64_t version, char *buf, size_t cap)
{
    if (version == 0)
        snprintf(buf, cap, "null");
    else
        snprintf(buf, cap, "\"fp_anvil_w%llu\"", (unsigned long long)version);
}

static json_t *envelope(const srv_gen *g, const char *object)
{
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(g->rid));
    json_object_set_new(o, "object", json_string(object));
    json_object_set_new(o, "created", json_integer(g->created));
    json_object_set_new(o, "model", json_string(g->model->name));
    char fp[48];
    fingerprint(g->fp_version, fp, sizeof fp); /* JSON text: null, or a quoted string */
    json_object_set_new(o, "system_fingerprint", g->fp_version ? json_stringn(fp + 1, strlen(fp) - 2) : json_null());
    return o;
}

static int make_chunk_head(srv_gen *g);

static json_t *usage_json(const srv_job *j)
{
    json_t *u = json_object();
    json_object_set_new(u, "prompt_tokens", json_integer(j->prompt_tokens));
    json_object_set_new(u, "completion_tokens", json_integer(j->completion_tokens));
    json_object_set_new(u, "total_tokens", json_integer(j->prompt_tokens + j->completion_tokens));
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

/* A chunk without logprobs, formatted straight into g->buf: building a
 * jansson object per token was the largest part of the server's own CPU at
 * 64 streams (bench/server_cost.py). The same JSON as the jansson path. */
static int utf8_ok(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (k == 0 || i + k > n)
            return 0;
        for (size_t j = 1; j < k; j++)
            if ((s[i + j] & 0xc0) != 0x80)
                return 0;
        i += k;
    }
    return 1;
}

static void put_escaped(srv_gen *g, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    char tmp[256];
    size_t k = 0;
    tmp[k++] = '"';
    for (size_t i = 0; i < n; i++) {
        if (k > sizeof tmp - 8) {
            srv_gen_append(g, tmp, k);
            k = 0;
        }
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            tmp[k++] = '\\';
            tmp[k++] = (char)c;
        } else if (c == '\n') {
            tmp[k++] = '\\';
            tmp[k++] = 'n';
        } else if (c < 0x20) {
            memcpy(tmp + k, "\\u00", 4);
            tmp[k + 4] = hex[c >> 4];
            tmp[k + 5] = hex[c & 15];
            k += 6;
        } else {
            tmp[k++] = (char)c;
        }
    }
    tmp[k++] = '"';
    srv_gen_append(g, tmp, k);
}

static void chunk_out(srv_gen *g, int32_t index, const char *text, size_t text_len, json_t *lp,
                      anvil_request_finish finish)
{
    if (g->wire) { /* one sample, no logprobs (the wire's mapping refuses them) */
        json_decref(lp);
        (void)index;
        g->wire->chunk(g, text, text_len, finish);
        return;
    }
    if (lp == NULL && g->chunk_head && g->head_version != g->fp_version) { /* new weights since: a new head */
        free(g->chunk_head);
        g->chunk_head = NULL;
        (void)make_chunk_head(g); /* out of memory: NULL, the jansson path */
    }
    if (lp == NULL && g->chunk_head && utf8_ok((const unsigned char *)text, text_len)) {
        srv_gen_append(g, g->chunk_head, g->chunk_head_len);
        char num[16];
        size_t k = sizeof num;
        uint32_t v = (uint32_t)index;
        do
            num[--k] = (char)('0' + v % 10);
        while ((v /= 10) > 0);
        srv_gen_append(g, num + k, sizeof num - k);
        if (g->chat) {
            srv_gen_append(g, ",\"delta\":{", 10);
            int comma = 0;
            if (!g->role_sent[index]) {
                srv_gen_append(g, "\"role\":\"assistant\"", 18);
                g->role_sent[index] = 1;
                comma = 1;
            }
            if (text_len > 0 || finish == ANVIL_REQUEST_RUNNING) {
                if (comma)
                    srv_gen_append(g, ",", 1);
                srv_gen_append(g, "\"content\":", 10);
                put_escaped(g, text, text_len);
            }
            srv_gen_append(g, "},", 2);
        } else {
            srv_gen_append(g, ",\"text\":", 8);
            put_escaped(g, text, text_len);
            srv_gen_append(g, ",", 1);
        }
        static const char *const tails[5][2] = {
            /* [finish][include_usage] */
            {"\"logprobs\":null,\"finish_reason\":null}]}\n\n",
             "\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n"},
            {"\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\n",
             "\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n"},
            {"\"logprobs\":null,\"finish_reason\":\"length\"}]}\n\n",
             "\"logprobs\":null,\"finish_reason\":\"length\"}],\"usage\":null}\n\n"},
            {"\"logprobs\":null,\"finish_reason\":\"abort\"}]}\n\n",
             "\"logprobs\":null,\"finish_reason\":\"abort\"}],\"usage\":null}\n\n"},
            {"\"logprobs\":null,\"finish_reason\":\"error\"}]}\n\n",
             "\"logprobs\":null,\"finish_reason\":\"error\"}],\"usage\":null}\n\n"},
        };
        const int f = finish == ANVIL_REQUEST_STOP        ? 1
                      : finish == ANVIL_REQUEST_LENGTH    ? 2
                      : finish == ANVIL_REQUEST_CANCELLED ? 3
                      : finish == ANVIL_REQUEST_ERROR     ? 4
                                                          : 0;
        const char *t = tails[f][g->include_usage ? 1 : 0];
        srv_gen_append(g, t, strlen(t));
        return;
    }
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

/* The tool_calls of a message: calls ({name, arguments}) with their ids. */
static json_t *tool_calls_json(const srv_gen *g, json_t *calls)
{
    json_t *a = json_array();
    size_t i;
    json_t *c;
    json_array_foreach(calls, i, c)
    {
        char id[40];
        srv_tools_call_id(g->tool_parser, id, sizeof id);
        json_t *f = json_object(), *tc = json_object();
        json_object_set(f, "name", json_object_get(c, "name"));
        json_object_set(f, "arguments", json_object_get(c, "arguments"));
        json_object_set_new(tc, "id", json_string(id));
        json_object_set_new(tc, "type", json_string("function"));
        json_object_set_new(tc, "function", f);
        json_array_append_new(a, tc);
    }
    return a;
}

/* A chat chunk of a tool-calls stream in the jansson shape: one call's
 * delta (d non-NULL: its start with id, type and name and "arguments": "",
 * or the next piece of its arguments, as OpenAI and vLLM stream them), or
 * the end with finish_reason "tool_calls". */
static void tool_chunk(srv_gen *g, int32_t index, const srv_tools_delta *d)
{
    if (d && g->wire) {
        if (g->wire->tool)
            g->wire->tool(g, d);
        return;
    }
    json_t *o = envelope(g, "chat.completion.chunk");
    json_t *c = json_object(), *delta = json_object();
    json_object_set_new(c, "index", json_integer(index));
    if (!g->role_sent[index]) {
        json_object_set_new(delta, "role", json_string("assistant"));
        g->role_sent[index] = 1;
    }
    if (d) {
        json_t *tc = json_object(), *f = json_object(), *a = json_array();
        json_object_set_new(tc, "index", json_integer(d->index));
        if (d->kind == SRV_TOOLS_DELTA_CALL) {
            char id[40];
            srv_tools_call_id(g->tool_parser, id, sizeof id);
            json_object_set_new(tc, "id", json_string(id));
            json_object_set_new(tc, "type", json_string("function"));
            json_object_set_new(f, "name", jstr(d->text, d->len));
            json_object_set_new(f, "arguments", json_string(""));
        } else {
            json_object_set_new(f, "arguments", jstr(d->text, d->len));
        }
        json_object_set_new(tc, "function", f);
        json_array_append_new(a, tc);
        json_object_set_new(delta, "tool_calls", a);
    }
    json_object_set_new(c, "delta", delta);
    json_object_set_new(c, "logprobs", json_null());
    json_object_set_new(c, "finish_reason", d ? json_null() : json_string("tool_calls"));
    json_t *choices = json_array();
    json_array_append_new(choices, c);
    json_object_set_new(o, "choices", choices);
    if (g->include_usage)
        json_object_set_new(o, "usage", json_null());
    sse(g, o);
}

/* A parser's deltas out: content as content chunks (the first carries
 * the piece's logprobs, lp), calls as tool-call chunks. *lp: taken when
 * used. */
static void deltas_out(srv_gen *g, int32_t index, const srv_tools_delta *ev, int n_ev, json_t **lp)
{
    for (int i = 0; i < n_ev; i++) {
        if (ev[i].kind == SRV_TOOLS_DELTA_CONTENT) {
            chunk_out(g, index, ev[i].text, ev[i].len, *lp, ANVIL_REQUEST_RUNNING);
            *lp = NULL;
        } else {
            tool_chunk(g, index, &ev[i]);
        }
    }
}

/* A chunk of a stream: with tools, through the choice's call parser (the
 * content that cannot be a call goes out at once; a call once its name is
 * read, then its arguments piece by piece: server_tools_stream.c). */
static void stream_chunk(srv_gen *g, int32_t index, const char *text, size_t text_len, json_t *lp,
                         anvil_request_finish finish)
{
    if (g->tools_st == NULL) {
        chunk_out(g, index, text, text_len, lp, finish);
        return;
    }
    srv_tools_stream *ts = g->tools_st[index];
    const srv_tools_delta *ev = NULL;
    int n_ev = 0;
    if (srv_tools_stream_push(ts, text, text_len, &ev, &n_ev) < 0) {
        /* out of memory: this piece as content (the parser passes the rest through) */
        srv_tools_delta d = {SRV_TOOLS_DELTA_CONTENT, 0, text, text_len};
        deltas_out(g, index, &d, 1, &lp);
    } else {
        deltas_out(g, index, ev, n_ev, &lp);
    }
    if (lp) /* logprobs of a piece that is held */
        chunk_out(g, index, "", 0, lp, ANVIL_REQUEST_RUNNING);
    if (finish == ANVIL_REQUEST_RUNNING)
        return;
    int whole = 0;
    if (srv_tools_stream_finish(ts, &ev, &n_ev, &whole) < 0)
        n_ev = 0;
    deltas_out(g, index, ev, n_ev, &lp);
    g->tools_whole = whole;
    if (whole && (finish == ANVIL_REQUEST_STOP || finish == ANVIL_REQUEST_LENGTH) && g->wire == NULL)
        tool_chunk(g, index, NULL);
    else
        chunk_out(g, index, "", 0, NULL, finish);
}

/* A stream's token events wait as records (index, finish, text) until the
 * event loop formats them (srv_gen_format_ready): the executor's thread,
 * which every stream's callback runs on, only copies the text (its
 * formatting was ~1 us a token there, 8% of a GPU step at 256 streams:
 * docs/performance.md "Server"). Everything else appended to a stream
 * formats the records first, so the chunks stay in order. */
typedef struct rec_head {
    int32_t index;
    int32_t finish;
    uint32_t len;
    uint64_t version; /* the weights that computed it */
} rec_head;

static int rec_push(srv_gen *g, int32_t index, anvil_request_finish finish, const char *text, size_t len,
                    uint64_t version)
{
    if (len > UINT32_MAX)
        return -1;
    size_t need = g->rec_len + sizeof(rec_head) + len;
    if (need > g->rec_cap) {
        size_t cap = g->rec_cap ? g->rec_cap : 1024;
        while (cap < need)
            cap *= 2;
        char *b = realloc(g->rec, cap);
        if (b == NULL)
            return -1;
        g->rec = b;
        g->rec_cap = cap;
    }
    rec_head h = {index, (int32_t)finish, (uint32_t)len, version};
    memcpy(g->rec + g->rec_len, &h, sizeof h);
    if (len)
        memcpy(g->rec + g->rec_len + sizeof h, text, len);
    g->rec_len = need;
    return 0;
}

/* Formats the records in [0, upto) into the stream's buffer (g->mu held). */
static void rec_format(srv_gen *g, size_t upto)
{
    size_t at = 0;
    while (at < upto) {
        rec_head h;
        memcpy(&h, g->rec + at, sizeof h);
        g->fp_version = h.version;
        stream_chunk(g, h.index, g->rec + at + sizeof h, h.len, NULL, (anvil_request_finish)h.finish);
        at += sizeof h + h.len;
    }
    if (at > 0) {
        memmove(g->rec, g->rec + at, g->rec_len - at);
        g->rec_len -= at;
        g->rec_ready = g->rec_ready > at ? g->rec_ready - at : 0;
    }
}

void srv_gen_format_ready(srv_gen *g)
{
    if (g->rec_ready == 0)
        return;
    rec_format(g, g->rec_ready);
    g->flush_len = g->len; /* nothing in the buffer is newer than the records (see above) */
}

/* Echo text + generated text, as one JSON string (the generated text is
 * what the executor decoded after the prompt: "The cat" + " was"). */
static json_t *choice_text(const srv_job *j, int32_t prompt, const anvil_sequence_output *sq)
{
    const char *e = j->echo ? j->echo[prompt] : NULL;
    if (e == NULL)
        return jstr(sq->text, sq->text_len);
    size_t el = j->echo_len[prompt];
    char *t = malloc(el + sq->text_len + 1);
    if (t == NULL)
        return json_string("");
    memcpy(t, e, el);
    if (sq->text_len)
        memcpy(t + el, sq->text, sq->text_len);
    json_t *o = jstr(t, el + sq->text_len);
    free(t);
    return o;
}

/* qsort_r order: the higher cumulative logprob first; ties in sample order. */
static int by_logprob(const void *a, const void *b, void *seqs)
{
    const anvil_sequence_output *sq = seqs;
    int32_t i = *(const int32_t *)a, k = *(const int32_t *)b;
    double x = sq[i].cumulative_logprob, y = sq[k].cumulative_logprob;
    if (x != y)
        return x > y ? -1 : 1;
    return i < k ? -1 : i > k;
}

/* The choices of one finished prompt into j->choices: its samples, or with
 * best_of > n the n with the highest cumulative logprob (as OpenAI and vLLM). */
static void add_choices(srv_job *j, const srv_sub *sub, const anvil_result *r)
{
    srv_gen *g = &j->g;
    int32_t k = r->n_sequences, *order = malloc((size_t)(k > 0 ? k : 1) * sizeof *order);
    if (order == NULL)
        return;
    for (int32_t i = 0; i < k; i++)
        order[i] = i;
    if (j->best_of > g->n && k > 1)
        qsort_r(order, (size_t)k, sizeof *order, by_logprob, (void *)r->sequences);
    for (int32_t rank = 0; rank < k && rank < g->n; rank++) {
        const anvil_sequence_output *sq = &r->sequences[order[rank]];
        int32_t index = sub->prompt * g->n + rank;
        int calls = 0;
        json_t *c = json_object();
        json_object_set_new(c, "index", json_integer(index));
        if (g->chat) {
            json_t *m = json_object();
            json_object_set_new(m, "role", json_string("assistant"));
            srv_tools_result tr = {0};
            if (g->tools_active &&
                srv_tools_parse(g->tool_parser, g->tools_forced, sq->text, sq->text_len, &tr) == 0 && tr.calls) {
                /* the text before the calls, or null (OpenAI's shape) */
                json_object_set_new(m, "content", tr.content_len ? jstr(tr.content, tr.content_len) : json_null());
                json_object_set_new(m, "tool_calls", tool_calls_json(g, tr.calls));
                calls = 1;
            } else {
                json_object_set_new(m, "content", jstr(sq->text, sq->text_len));
            }
            srv_tools_result_free(&tr);
            json_object_set_new(m, "refusal", json_null());
            json_object_set_new(c, "message", m);
        } else {
            json_object_set_new(c, "text", choice_text(j, sub->prompt, sq));
        }
        /* the executor counts a stopping end token among the ids; OpenAI's
         * logprobs cover the tokens of the text */
        json_object_set_new(
            c, "logprobs",
            g->logprobs >= 0 && sq->logprobs
                ? logprobs_json(g, sq->token_ids, sq->n_tokens, sq->logprobs, sq->top_logprobs, sq->n_top, 0)
                : json_null());
        json_object_set_new(c, "finish_reason", calls && (sq->finish == ANVIL_REQUEST_STOP ||
                                                          sq->finish == ANVIL_REQUEST_LENGTH)
                                                    ? json_string("tool_calls")
                                                    : finish_json(sq->finish));
        json_array_set_new(j->choices, (size_t)index, c);
    }
    free(order);
}

/* The non-streamed body once every prompt finished. */
static void final_body(srv_job *j)
{
    srv_gen *g = &j->g;
    if (j->failure == ANVIL_REQUEST_ERROR || j->failure == ANVIL_REQUEST_CANCELLED) {
        int unavailable = j->failure == ANVIL_REQUEST_CANCELLED;
        /* a request that can never fit the KV cache is the client's to change */
        int too_big = !unavailable && j->failure_status == ANVIL_ERR_CAPACITY;
        const char *msg =
            unavailable ? "the request was cancelled (the server is shutting down, or its model unloading)"
                        : j->failure_msg;
        json_t *e = srv_error_json(msg,
                                   unavailable ? "service_unavailable"
                                   : too_big   ? "invalid_request_error"
                                               : "server_error",
                                   NULL, too_big ? "kv_cache_exceeded" : NULL);
        g->http_status = unavailable ? 503 : too_big ? 400 : 500;
        if (g->wire && g->wire->error_body)
            e = g->wire->error_body(e);
        char *s = json_dumps(e, JSON_COMPACT);
        json_decref(e);
        if (s)
            srv_gen_append(g, s, strlen(s));
        free(s);
        return;
    }
    if (g->wire) {
        g->wire->body(j);
        return;
    }
    json_t *o = envelope(g, g->chat ? "chat.completion" : "text_completion");
    /* a prompt that returned fewer samples than asked leaves holes: drop them */
    json_t *choices = json_array();
    for (size_t i = 0; i < json_array_size(j->choices); i++)
        if (!json_is_null(json_array_get(j->choices, i)))
            json_array_append(choices, json_array_get(j->choices, i));
    json_object_set_new(o, "choices", choices);
    json_object_set_new(o, "usage", usage_json(j));
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

/* With g->mu held: the ids of the prompts still running that nobody
 * cancelled yet (marked cancelled now); returns how many. */
static int32_t to_cancel(srv_job *j, uint64_t *ids, int32_t cap)
{
    int32_t k = 0;
    for (int32_t i = 0; i < j->n_prompts && k < cap; i++) {
        srv_sub *s = &j->subs[i];
        if (s->enqueued && !s->finished && !s->cancel_sent) {
            s->cancel_sent = 1;
            ids[k++] = s->id;
        }
    }
    return k;
}

static void cancel_ids(srv_job *j, const uint64_t *ids, int32_t k)
{
    for (int32_t i = 0; i < k; i++)
        if (j->g.model->ex)
            anvil_executor_cancel(j->g.model->ex, ids[i]);
}

void srv_job_abort(srv_job *j)
{
    uint64_t *ids = malloc((size_t)j->n_prompts * sizeof *ids);
    pthread_mutex_lock(&j->g.mu);
    j->start_failed = 1;
    int32_t k = ids ? to_cancel(j, ids, j->n_prompts) : 0;
    pthread_mutex_unlock(&j->g.mu);
    cancel_ids(j, ids, k);
    free(ids);
}

void srv_gen_cancel(srv_gen *g)
{
    srv_job *j = (srv_job *)g; /* every srv_gen is the head of a srv_job */
    uint64_t ids[SRV_MAX_PROMPTS];
    pthread_mutex_lock(&g->mu);
    g->cancelled = 1;
    int32_t k = g->done ? 0 : to_cancel(j, ids, SRV_MAX_PROMPTS);
    pthread_mutex_unlock(&g->mu);
    cancel_ids(j, ids, k);
}

/* A streamed job's end, once every prompt finished. */
static void stream_end(srv_job *j)
{
    srv_gen *g = &j->g;
    if (g->wire) {
        g->wire->end(j);
        return;
    }
    if (g->include_usage) {
        json_t *o = envelope(g, g->chat ? "chat.completion.chunk" : "text_completion");
        json_object_set_new(o, "choices", json_array());
        json_object_set_new(o, "usage", usage_json(j));
        sse(g, o);
    }
    srv_gen_append(g, "data: [DONE]\n\n", 14);
}

/* A prompt's final event (with g->mu held). */
static void on_final(srv_sub *sub, const anvil_result *r, uint64_t version)
{
    srv_job *j = sub->job;
    srv_gen *g = &j->g;
    rec_format(g, g->rec_len); /* what follows comes after every chunk so far */
    g->fp_version = version;
    sub->finished = 1;
    j->n_finished++;
    j->prompt_tokens += r->n_prompt;
    for (int32_t i = 0; i < r->n_sequences; i++)
        j->completion_tokens += r->sequences[i].n_tokens;
    int failed = r->finish == ANVIL_REQUEST_ERROR || r->finish == ANVIL_REQUEST_CANCELLED;
    if (failed && j->failure == ANVIL_REQUEST_RUNNING) {
        j->failure = r->finish;
        j->failure_status = r->status;
        snprintf(j->failure_msg, sizeof j->failure_msg, "%s", r->error[0] ? r->error : "the request failed");
    }
    int last = j->n_finished == j->n_prompts;
    if (j->start_failed) {
        g->done = last;
        return;
    }
    if (g->stream) {
        /* a request cancelled as a whole (shutdown) tells every sample */
        if (r->finish == ANVIL_REQUEST_ERROR && !j->error_sent && g->wire) {
            g->wire->error(g, r->error[0] ? r->error : "the request failed");
            j->error_sent = 1;
        } else if (r->finish == ANVIL_REQUEST_ERROR && !j->error_sent) {
            /* srv_error_json is the whole {"error": {...}} object */
            sse(g, srv_error_json(r->error, "server_error", NULL, NULL));
            j->error_sent = 1;
        } else if (r->finish == ANVIL_REQUEST_CANCELLED) {
            for (int32_t i = 0; i < g->n; i++)
                stream_chunk(g, sub->prompt * g->n + i, "", 0, NULL, ANVIL_REQUEST_CANCELLED);
        }
        if (last)
            stream_end(j);
    } else {
        if (!failed)
            add_choices(j, sub, r);
        if (last)
            final_body(j);
    }
    g->done = last;
}

void srv_gen_on_event(void *user, const anvil_event *ev)
{
    srv_sub *sub = user;
    srv_job *j = sub->job;
    srv_gen *g = &j->g;
    /* the server's own work on the executor's thread: detokenized pieces
     * into JSON and SSE, counted apart from the executor's */
    struct anvil_server *srv = g->srv;
    /* the thread's CPU clock is a system call: one event in 8 is timed and
     * counts 8 times (the events are alike: a chunk each) */
    static _Thread_local uint32_t tick;
    const int timed = (tick++ & 7) == 0;
    const uint64_t t0 = timed ? srv_cpu_ns() : 0;
    record_metrics(g, ev, srv_now());
    uint64_t stack_ids[8], *ids = stack_ids;
    int32_t n_cancel = 0;
    if (j->n_prompts > 8 && (ids = malloc((size_t)j->n_prompts * sizeof *ids)) == NULL)
        ids = stack_ids; /* then only up to 8 now; later events cancel the rest */
    pthread_mutex_lock(&g->mu);
    if (ev->kind == ANVIL_EVENT_TOKENS) {
        int32_t index = sub->prompt * g->n + ev->index;
        if (!j->start_failed && g->stream && ev->index >= 0 && ev->index < g->n &&
            (ev->text_len > 0 || ev->finish != ANVIL_REQUEST_RUNNING || (ev->logprobs && ev->n_tokens > 0))) {
            if (g->logprobs >= 0 && ev->logprobs) {
                rec_format(g, g->rec_len); /* in order */
                g->fp_version = ev->weights_version;
                json_t *lp = logprobs_json(g, ev->token_ids, ev->n_tokens, ev->logprobs, ev->top_logprobs,
                                           ev->n_top, 0);
                stream_chunk(g, index, ev->text, ev->text_len, lp, ev->finish);
            } else if (rec_push(g, index, ev->finish, ev->text, ev->text_len, ev->weights_version) != 0) {
                rec_format(g, g->rec_len); /* out of memory: in order, formatted here */
                g->fp_version = ev->weights_version;
                stream_chunk(g, index, ev->text, ev->text_len, NULL, ev->finish);
            }
        }
    } else if (ev->kind == ANVIL_EVENT_FINAL) {
        on_final(sub, ev->result, ev->weights_version);
    }
    /* a prompt that was cancelled or failed cancels the others (the HTTP
     * side cancels them all at once: srv_gen_cancel) */
    if (j->n_prompts > 1 && (g->cancelled || j->failure != ANVIL_REQUEST_RUNNING || j->start_failed))
        n_cancel = to_cancel(j, ids, ids == stack_ids ? 8 : j->n_prompts);
    /* a non-streamed body waits for the end; a stream is woken at its
     * first chunk, then every stream_interval steps, and at its end */
    int wake = g->done;
    if (g->stream && !wake && ev->kind == ANVIL_EVENT_TOKENS && (g->len > g->flush_len || g->rec_len > g->rec_ready)) {
        wake = g->unwoken < 0 || ++g->unwoken >= g->wake_every;
    }
    if (wake) {
        g->unwoken = 0;
        /* the reader hands out this much: whole groups of steps */
        g->flush_len = g->len;
        g->rec_ready = g->rec_len;
    }
    pthread_mutex_unlock(&g->mu);
    if (wake)
        srv_wake(srv, &g->w); /* after unlocking: the loop need not wait for the lock */
    cancel_ids(j, ids, n_cancel);
    if (ids != stack_ids)
        free(ids);
    if (ev->kind == ANVIL_EVENT_FINAL)
        srv_gen_release(g); /* this prompt's executor reference */
    if (timed)
        srv_cost_add_times(srv, t0, 8);
}

/* What every chunk of a stream starts with, formatted once: the chunk
 * fast path (stream_chunk) appends it, then the index. Model names are
 * plain (anvil_server_model_name_ok); a name that would need escaping
 * leaves it NULL, and the jansson path. 0: out of memory. */
static int make_chunk_head(srv_gen *g)
{
    for (const char *p = g->model->name; *p; p++)
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20 || (unsigned char)*p >= 0x80)
            return 1;
    const char *fmt = "data: {\"id\":\"%s\",\"object\":\"%s\",\"created\":%ld,\"model\":\"%s\","
                      "\"system_fingerprint\":%s,\"choices\":[{\"index\":";
    const char *obj = g->chat ? "chat.completion.chunk" : "text_completion";
    char fp[48];
    fingerprint(g->fp_version, fp, sizeof fp);
    int n = snprintf(NULL, 0, fmt, g->rid, obj, g->created, g->model->name, fp);
    if (n < 0 || (g->chunk_head = malloc((size_t)n + 1)) == NULL)
        return 0;
    snprintf(g->chunk_head, (size_t)n + 1, fmt, g->rid, obj, g->created, g->model->name, fp);
    g->chunk_head_len = (size_t)n;
    g->head_version = g->fp_version;
    return 1;
}

static atomic_uint_fast64_t rid_counter;

srv_job *srv_job_new(struct anvil_server *s, const srv_mapped *q)
{
    srv_job *j = calloc(1, sizeof *j);
    if (j == NULL) {
        srv_model_release(q->model);
        return NULL;
    }
    srv_gen *g = &j->g;
    j->n_prompts = q->n_prompts;
    j->best_of = q->best_of;
    j->n_choices = q->n_prompts * q->n;
    j->failure = ANVIL_REQUEST_RUNNING;
    pthread_mutex_init(&g->mu, NULL);
    g->w.fd = -1;
    g->refs = 1;
    g->srv = s;
    g->model = q->model;
    g->chat = q->chat;
    g->stream = q->stream;
    g->include_usage = q->stream && q->include_usage;
    g->n = q->n;
    g->echo = q->echo;
    g->logprobs = q->logprobs;
    g->top_as_chat = q->chat;
    g->wire = q->wire;
    g->tools_active = q->tools_active && q->chat && (q->wire == NULL || q->wire->tool != NULL);
    g->tool_parser = q->tool_parser;
    g->tools_forced = q->tools_forced;
    /* its own copy: a wire may note things in it (under g->mu) while the
     * HTTP side drops the request's */
    g->wire_ctx = q->wire_ctx ? json_deep_copy(q->wire_ctx) : NULL;
    g->http_status = 200;
    g->unwoken = -1;
    g->wake_every = (s->opts.stream_interval > 1 ? s->opts.stream_interval : 1) * q->n;
    g->created = (long)time(NULL);
    const char *prefix = q->wire && q->wire->id_prefix ? q->wire->id_prefix : q->chat ? "chatcmpl" : "cmpl";
    snprintf(g->rid, sizeof g->rid, "%s%s%016" PRIx64 "%08" PRIx64, prefix, q->wire ? "_" : "-",
             (uint64_t)time(NULL) * 2654435761u ^ (uint64_t)(uintptr_t)g,
             (uint64_t)atomic_fetch_add(&rid_counter, 1));
    g->t_enqueue = srv_now();
    int ok = (q->wire_ctx == NULL || g->wire_ctx != NULL) &&
             (g->role_sent = calloc((size_t)j->n_choices, sizeof *g->role_sent)) != NULL &&
             (j->subs = calloc((size_t)j->n_prompts, sizeof *j->subs)) != NULL &&
             (g->stream || (j->choices = json_array()) != NULL);
    for (int32_t i = 0; ok && !g->stream && i < j->n_choices; i++)
        ok = json_array_append_new(j->choices, json_null()) == 0;
    if (ok && g->stream && g->tools_active) {
        ok = (g->tools_st = calloc((size_t)j->n_choices, sizeof *g->tools_st)) != NULL;
        for (int32_t i = 0; ok && i < j->n_choices; i++)
            ok = (g->tools_st[i] = srv_tools_stream_new(g->tool_parser, g->tools_forced)) != NULL;
    }
    if (ok && q->echo) {
        ok = (j->echo = calloc((size_t)j->n_prompts, sizeof *j->echo)) != NULL &&
             (j->echo_len = calloc((size_t)j->n_prompts, sizeof *j->echo_len)) != NULL;
        for (int32_t i = 0; ok && i < j->n_prompts; i++) {
            const srv_prompt *p = &q->prompts[i];
            if (p->echo == NULL)
                continue;
            ok = (j->echo[i] = malloc(p->echo_len + 1)) != NULL;
            if (ok) {
                memcpy(j->echo[i], p->echo, p->echo_len + 1);
                j->echo_len[i] = p->echo_len;
            }
        }
    }
    for (int32_t i = 0; ok && i < j->n_prompts; i++) {
        j->subs[i].job = j;
        j->subs[i].prompt = i;
    }
    if (!ok) {
        srv_gen_release(g);
        return NULL;
    }
    if (g->stream && !make_chunk_head(g)) {
        srv_gen_release(g);
        return NULL;
    }
    if (g->stream && g->wire && g->wire->start) {
        g->wire->start(g);
        g->flush_len = g->len; /* out with the response's head */
    }
    /* streamed echo: each choice starts with its prompt's text */
    for (int32_t i = 0; g->stream && j->echo && i < j->n_choices; i++)
        if (j->echo[i / g->n])
            stream_chunk(g, i, j->echo[i / g->n], j->echo_len[i / g->n], NULL, ANVIL_REQUEST_RUNNING);
    return j;
}
