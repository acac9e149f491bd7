/*
 * Tool calls streamed (server_tools.h; docs/server.md, "Tool calls"): the
 * model's output pushed piece by piece, OpenAI's deltas handed back as
 * soon as they are certain. As vLLM's tool parsers do for the openai and
 * langchain clients: a call goes out once its name is read, then its
 * arguments as they are generated.
 *
 * The text passes three phases. SEARCH: content goes out except what may
 * start a call marker (a "<tool_call>" prefix, or for llama3_json a "{" or
 * "<|python_tag|>" at the start). BODY: after the marker, a JSON scanner
 * reads the calls' syntax byte by byte (resumable: each push scans only
 * the new bytes) and writes each call's arguments in the compact JSON the
 * whole parse returns (json_dumps JSON_COMPACT): structure as it comes,
 * strings by whole characters (re-escaped the way jansson escapes), numbers
 * and literals when they end (formatted by jansson itself). Nothing that
 * went out is taken back, so a piece goes out only when no later byte can
 * change it. CONTENT / DEAD: the marker was not a call (everything is
 * content, as the whole parse says), or a call broke after its name went
 * out (the rest is dropped; the end reports the calls as not whole).
 *
 * The end compares what went out with srv_tools_parse of the whole text:
 * the calls are whole only when they are the same, so a disagreement
 * between this scanner and jansson can never produce a "tool_calls" finish
 * for arguments that do not parse.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/server_tools.h"

enum { PH_SEARCH, PH_BODY, PH_CONTENT, PH_DEAD };

/* where the scanner is between calls (BODY) */
enum {
    O_VALUE, /* a call's JSON value comes next (after whitespace) */
    O_IN,    /* inside it */
    O_AFTER, /* after it: hermes "</tool_call>", llama3_json ";", or the end */
    O_SEEK,  /* hermes after "</tool_call>": text up to the next "<tool_call>" is dropped */
};

/* what the JSON scanner expects next inside the innermost container */
enum { E_VALUE, E_VALUE_OR_END, E_KEY_OR_END, E_KEY, E_COLON, E_COMMA_OR_END };

/* the member of a call object being read */
enum { K_NONE, K_NAME, K_ARGS, K_PARAMS, K_OTHER };

/* how a call's arguments are written */
enum { A_NONE, A_OBJECT, A_STRING, A_DONE };

#define MAX_DEPTH JSON_PARSER_MAX_DEPTH /* jansson's own limit: deeper is malformed for both */

typedef struct text {
    char *p;
    size_t len, cap;
} text;

struct srv_tools_stream {
    int parser, forced;
    int phase;
    int failed;            /* out of memory once: content only */
    int finished;
    text buf;              /* every byte pushed */
    size_t emitted;        /* bytes of buf out as content */
    size_t pos;            /* BODY: the next byte to scan */
    int outer;
    /* the JSON scanner */
    char stack[MAX_DEPTH]; /* 'o' / 'a' per open container */
    int depth, expect;
    int call_depth;        /* where call objects are: 1, or 2 inside an array of calls */
    int in_str;            /* inside a string; str_at: its first byte not decoded yet */
    size_t str_at;
    int str_stream;        /* its characters go out as they come (an argument's string) */
    /* the call being read */
    int key;               /* the call member whose value comes */
    int cur;               /* the member whose value is being read */
    int named, args;       /* its name was read; its arguments: A_* */
    int args_depth;        /* A_OBJECT: the depth of the arguments object */
    text pend;             /* arguments read before the name (sent after the call) */
    int n_calls;           /* calls out */
    json_t *sent;          /* [{name, arguments}] out, for the end's check (the last one's arguments in sent_args) */
    text sent_args;        /* the last call's arguments out so far */
    /* one push's output */
    srv_tools_delta *ev;
    int n_ev, ev_cap;
    text out;              /* their text; ev[i].text holds offsets until the push returns */
    int oom;
};

static int t_add(text *t, const char *p, size_t n)
{
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 256;
        while (cap < t->len + n + 1)
            cap *= 2;
        char *b = realloc(t->p, cap);
        if (b == NULL)
            return -1;
        t->p = b;
        t->cap = cap;
    }
    if (n)
        memcpy(t->p + t->len, p, n);
    t->len += n;
    t->p[t->len] = '\0';
    return 0;
}

srv_tools_stream *srv_tools_stream_new(int parser, int forced)
{
    srv_tools_stream *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->parser = parser;
    s->forced = forced;
    s->phase = forced ? PH_BODY : parser == SRV_TOOLS_NONE ? PH_CONTENT : PH_SEARCH;
    s->outer = O_VALUE;
    s->sent = json_array();
    if (s->sent == NULL || t_add(&s->buf, "", 0) < 0) {
        srv_tools_stream_free(s);
        return NULL;
    }
    return s;
}

void srv_tools_stream_free(srv_tools_stream *s)
{
    if (s == NULL)
        return;
    free(s->buf.p);
    free(s->pend.p);
    free(s->sent_args.p);
    free(s->out.p);
    free(s->ev);
    json_decref(s->sent);
    free(s);
}

int srv_tools_stream_calls(const srv_tools_stream *s)
{
    return s->n_calls;
}

/* ------------------------------------------------------------ output */

/* Appends a delta (the same kind and call as the last: its text grows). */
static void emit(srv_tools_stream *s, int kind, int index, const char *p, size_t n)
{
    if (s->oom || (n == 0 && kind != SRV_TOOLS_DELTA_CALL))
        return;
    srv_tools_delta *last = s->n_ev ? &s->ev[s->n_ev - 1] : NULL;
    size_t off = s->out.len;
    if (t_add(&s->out, p, n) < 0) {
        s->oom = 1;
        return;
    }
    if (last && kind != SRV_TOOLS_DELTA_CALL && last->kind == kind && last->index == index &&
        (size_t)(uintptr_t)last->text + last->len == off) {
        last->len += n;
        return;
    }
    if (s->n_ev == s->ev_cap) {
        int cap = s->ev_cap ? 2 * s->ev_cap : 8;
        srv_tools_delta *e = realloc(s->ev, (size_t)cap * sizeof *e);
        if (e == NULL) {
            s->oom = 1;
            return;
        }
        s->ev = e;
        s->ev_cap = cap;
    }
    s->ev[s->n_ev++] = (srv_tools_delta){kind, index, (const char *)(uintptr_t)off, n};
}

/* Content buf[emitted, upto). */
static void content_to(srv_tools_stream *s, size_t upto)
{
    if (upto > s->emitted) {
        emit(s, SRV_TOOLS_DELTA_CONTENT, 0, s->buf.p + s->emitted, upto - s->emitted);
        s->emitted = upto;
    }
}

/* A piece of the current call's arguments: out now, or held until its name. */
static void args_out(srv_tools_stream *s, const char *p, size_t n)
{
    if (!s->named) {
        if (t_add(&s->pend, p, n) < 0)
            s->oom = 1;
        return;
    }
    emit(s, SRV_TOOLS_DELTA_ARGS, s->n_calls - 1, p, n);
    if (t_add(&s->sent_args, p, n) < 0)
        s->oom = 1;
}

/* The last call's arguments into sent (a new call begins, or the end). */
static void args_done(srv_tools_stream *s)
{
    json_t *c = json_array_get(s->sent, (size_t)s->n_calls - 1);
    if (c == NULL)
        return;
    /* invalid UTF-8 cannot have gone out (strings are decoded by jansson) */
    json_t *a = json_stringn(s->sent_args.p ? s->sent_args.p : "", s->sent_args.len);
    if (a == NULL || json_object_set_new(c, "arguments", a) != 0)
        s->oom = 1;
    s->sent_args.len = 0;
}

/* The call's name is read: the call goes out, then what of its arguments came first. */
static void commit(srv_tools_stream *s, json_t *name)
{
    args_done(s);
    json_t *c = json_pack("{s:O, s:s}", "name", name, "arguments", "");
    if (c == NULL || json_array_append_new(s->sent, c) != 0) {
        s->oom = 1;
        return;
    }
    s->n_calls++;
    s->named = 1;
    emit(s, SRV_TOOLS_DELTA_CALL, s->n_calls - 1, json_string_value(name), json_string_length(name));
    if (s->pend.len) {
        size_t n = s->pend.len;
        s->pend.len = 0;
        args_out(s, s->pend.p, n);
    }
}

/* The calls' syntax broke: before any call went out, the whole text is
 * content (the whole parse finds no call); after, the rest is dropped. */
static void malformed(srv_tools_stream *s)
{
    if (s->n_calls == 0) {
        s->phase = PH_CONTENT;
        content_to(s, s->buf.len);
    } else {
        s->phase = PH_DEAD;
    }
}

/* ------------------------------------------------------------ scanning */

static int is_ws(char c)
{
    return c == ' ' || c == '\n' || c == '\t' || c == '\r';
}

/* 1 when buf[at, len) starts with lit; -1 when it is a proper prefix of lit
 * (more may make it); 0 otherwise. */
static int starts(const text *b, size_t at, const char *lit)
{
    size_t n = strlen(lit), have = b->len - at;
    if (have >= n)
        return memcmp(b->p + at, lit, n) == 0;
    return memcmp(b->p + at, lit, have) == 0 ? -1 : 0;
}

/* The string raw[0, n) (JSON string content, escapes included) decoded;
 * NULL when jansson refuses it (a control character, bad UTF-8, \u0000). */
static json_t *decode(const char *raw, size_t n)
{
    char *q = malloc(n + 3);
    if (q == NULL)
        return NULL;
    q[0] = '"';
    memcpy(q + 1, raw, n);
    q[n + 1] = '"';
    json_t *v = json_loadb(q, n + 2, JSON_DECODE_ANY, NULL);
    free(q);
    return v;
}

/* A decoded string piece into the arguments: escaped as json_dumps
 * escapes it (in an object), or as it is (arguments given as a string). */
static int args_string(srv_tools_stream *s, json_t *str, int quoted)
{
    if (!quoted) {
        args_out(s, json_string_value(str), json_string_length(str));
        return 0;
    }
    char *d = json_dumps(str, JSON_ENCODE_ANY | JSON_COMPACT);
    if (d == NULL)
        return -1;
    size_t n = strlen(d);
    args_out(s, d + 1, n - 2); /* less the quotes: the piece is inside the string */
    free(d);
    return 0;
}

/* Where a partial string's raw bytes [str_at, end) can be cut: not inside
 * a UTF-8 character, and not after a high surrogate's escape (its low half
 * must come with it). Escapes are whole (the scanner waits for them). */
static size_t safe_cut(const text *b, size_t from, size_t end)
{
    size_t k = end;
    /* a UTF-8 character not complete yet */
    size_t back = 0;
    while (back < 4 && k - back > from && ((unsigned char)b->p[k - back - 1] & 0xc0) == 0x80)
        back++;
    if (k - back > from) {
        unsigned c = (unsigned char)b->p[k - back - 1];
        size_t need = c >= 0xf0 ? 3 : c >= 0xe0 ? 2 : c >= 0xc0 ? 1 : 0;
        if (c >= 0xc0 && back < need)
            k -= back + 1;
    }
    /* a high surrogate \uD800-\uDBFF at the end */
    if (k - from >= 6 && b->p[k - 6] == '\\' && b->p[k - 5] == 'u' && (b->p[k - 4] == 'd' || b->p[k - 4] == 'D') &&
        strchr("89abAB", b->p[k - 3]) != NULL) {
        /* that backslash must not itself be escaped: count the ones before */
        size_t n = 0;
        while (k - 6 - n > from && b->p[k - 7 - n] == '\\')
            n++;
        if (n % 2 == 0)
            k -= 6;
    }
    return k;
}

/* Decodes and sends a streamed string's raw bytes [str_at, upto). */
static int string_piece(srv_tools_stream *s, size_t upto)
{
    if (upto <= s->str_at)
        return 0;
    /* printable ASCII without escapes decodes and re-escapes to itself:
     * no round trip through jansson (most of a piece's cost) */
    const char *raw = s->buf.p + s->str_at;
    size_t n = upto - s->str_at, i = 0;
    while (i < n && raw[i] >= 0x20 && raw[i] < 0x7f && raw[i] != '\\')
        i++;
    if (i == n) {
        args_out(s, raw, n);
        s->str_at = upto;
        return 0;
    }
    json_t *v = decode(raw, n);
    if (v == NULL)
        return -1;
    int rc = args_string(s, v, s->args == A_OBJECT);
    json_decref(v);
    s->str_at = upto;
    return rc;
}

/* A value begins at the call object's level (the member's): *ok 0 when
 * the member cannot take it. c: its first byte. */
static int member_value(srv_tools_stream *s, char c)
{
    s->cur = s->key;
    s->key = K_NONE;
    if (s->cur == K_NAME)
        return c == '"' && !s->named;
    if (s->cur == K_ARGS || s->cur == K_PARAMS) {
        if (s->args != A_NONE)
            return 0; /* arguments and parameters both (or twice): which? */
        if (c == '"') {
            s->args = A_STRING;
            return 1;
        }
        if (c == '{') {
            s->args = A_OBJECT;
            s->args_depth = s->depth + 1;
            return 1;
        }
        return c == 'n'; /* null: "{}" (checked when the literal ends) */
    }
    return 1;
}

/* In the arguments object (its braces included)? */
static int in_args(const srv_tools_stream *s)
{
    return s->args == A_OBJECT && s->depth >= s->args_depth;
}

/* After a value inside a container: what may follow. */
static void value_done(srv_tools_stream *s)
{
    if (s->depth == 0)
        s->outer = O_AFTER;
    else
        s->expect = E_COMMA_OR_END;
}

/* A whole string ended (raw bytes [from, to)). -1 malformed. */
static int string_end(srv_tools_stream *s, size_t from, size_t to, int is_key)
{
    if (s->str_stream) {
        if (string_piece(s, to) < 0)
            return -1;
        if (s->args == A_OBJECT)
            args_out(s, "\"", 1);
        else
            s->args = A_DONE; /* the arguments string */
        s->str_stream = 0;
        if (!is_key)
            value_done(s);
        return 0;
    }
    json_t *v = decode(s->buf.p + from, to - from);
    if (v == NULL)
        return -1;
    int rc = 0;
    if (is_key && s->depth == s->call_depth) {
        const char *k = json_string_value(v);
        s->key = strcmp(k, "name") == 0 ? K_NAME : strcmp(k, "arguments") == 0 ? K_ARGS
                                               : strcmp(k, "parameters") == 0 ? K_PARAMS
                                                                                : K_OTHER;
    } else if (!is_key && s->depth == s->call_depth && s->cur == K_NAME) {
        if (json_string_length(v) == 0)
            rc = -1;
        else
            commit(s, v);
    }
    json_decref(v);
    if (rc == 0 && !is_key)
        value_done(s);
    return rc;
}

/* A number or literal token ended: t[0, n). -1 malformed. */
static int literal_end(srv_tools_stream *s, const char *t, size_t n)
{
    json_t *v = json_loadb(t, n, JSON_DECODE_ANY, NULL);
    if (v == NULL || json_is_object(v) || json_is_array(v) || json_is_string(v)) {
        json_decref(v);
        return -1;
    }
    int rc = 0;
    if (in_args(s)) {
        char *d = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
        if (d)
            args_out(s, d, strlen(d));
        else
            s->oom = 1;
        free(d);
    } else if (s->depth == s->call_depth && (s->cur == K_ARGS || s->cur == K_PARAMS)) {
        if (!json_is_null(v)) {
            rc = -1;
        } else {
            args_out(s, "{}", 2);
            s->args = A_DONE;
        }
    }
    json_decref(v);
    if (rc == 0)
        value_done(s);
    return rc;
}

/* A container opens or closes. -1 malformed. */
static int open_container(srv_tools_stream *s, char c)
{
    if (s->depth == MAX_DEPTH)
        return -1;
    if (s->depth == 0) { /* the top value: a call, or (Mistral's, a forced array) an array of calls */
        int array_ok = s->parser != SRV_TOOLS_HERMES && !(s->parser == SRV_TOOLS_LLAMA3 && !s->forced);
        if (c == '[' && !array_ok)
            return -1;
        s->call_depth = c == '[' ? 2 : 1;
    }
    s->stack[s->depth++] = c == '{' ? 'o' : 'a';
    s->expect = c == '{' ? E_KEY_OR_END : E_VALUE_OR_END;
    if (s->depth == s->call_depth) { /* a call object */
        s->key = s->cur = K_NONE;
        s->named = 0;
        s->args = A_NONE;
        s->pend.len = 0;
    }
    if (in_args(s))
        args_out(s, &c, 1);
    return 0;
}

static int close_container(srv_tools_stream *s, char c)
{
    if (s->depth == 0 || s->stack[s->depth - 1] != (c == '}' ? 'o' : 'a'))
        return -1;
    if (s->depth == 1 && s->call_depth == 2 && s->expect == E_VALUE_OR_END)
        return -1; /* [] holds no call */
    int args_close = in_args(s);
    if (args_close)
        args_out(s, &c, 1);
    if (s->depth == s->call_depth) { /* a call ends */
        if (!s->named)
            return -1;
        if (s->args == A_NONE)
            args_out(s, "{}", 2);
        s->args = A_DONE;
    }
    s->depth--;
    if (args_close && s->depth < s->args_depth)
        s->args = A_DONE;
    value_done(s);
    return 0;
}

/* Scans the body from s->pos; eof: nothing more comes (a number at the
 * end is whole). -1 malformed. */
static int scan(srv_tools_stream *s, int eof)
{
    text *b = &s->buf;
    while (s->pos < b->len) {
        if (s->in_str) {
            size_t p = s->pos;
            while (p < b->len && b->p[p] != '"') {
                if ((unsigned char)b->p[p] < 0x20)
                    return -1;
                if (b->p[p] == '\\') {
                    size_t need = p + 1 < b->len && b->p[p + 1] == 'u' ? 6 : 2;
                    if (p + need > b->len)
                        break;
                    p += need;
                } else {
                    p++;
                }
            }
            s->pos = p;
            if (p >= b->len || b->p[p] != '"') { /* more to come */
                if (s->str_stream && string_piece(s, safe_cut(b, s->str_at, p)) < 0)
                    return -1;
                return 0;
            }
            s->in_str = 0;
            s->pos = p + 1;
            int is_key = s->expect == E_COLON;
            if (string_end(s, s->str_at, p, is_key) < 0)
                return -1;
            continue;
        }
        char c = b->p[s->pos];
        if (s->outer == O_SEEK) {
            const char *open = SRV_TOOLS_HERMES_OPEN;
            size_t n = strlen(open), at = s->pos;
            while (at < b->len && starts(b, at, open) == 0)
                at++;
            if (at + n > b->len) { /* none yet, or a prefix at the end */
                s->pos = at;
                return 0;
            }
            s->pos = at + n;
            s->outer = O_VALUE;
            continue;
        }
        if (is_ws(c)) {
            s->pos++;
            continue;
        }
        if (s->outer == O_AFTER) {
            if (s->parser == SRV_TOOLS_HERMES) {
                int st = starts(b, s->pos, SRV_TOOLS_HERMES_CLOSE);
                if (st < 0)
                    return 0;
                if (st == 0)
                    return -1;
                s->pos += strlen(SRV_TOOLS_HERMES_CLOSE);
                s->outer = O_SEEK;
                continue;
            }
            if (s->parser == SRV_TOOLS_LLAMA3 && !s->forced && c == ';') {
                s->pos++;
                s->outer = O_VALUE;
                continue;
            }
            return -1;
        }
        if (s->outer == O_VALUE) {
            if (c != '{' && c != '[')
                return -1;
            s->outer = O_IN;
            s->expect = E_VALUE;
        }
        int at_member = s->depth > 0 && s->depth == s->call_depth && s->stack[s->depth - 1] == 'o';
        /* an array of calls holds objects only */
        int in_calls = s->depth == 1 && s->call_depth == 2;
        if (in_calls && c != '{' && c != ']' && c != ',')
            return -1;
        switch (c) {
        case '{':
        case '[':
            if (s->expect != E_VALUE && s->expect != E_VALUE_OR_END)
                return -1;
            if (at_member && !member_value(s, c))
                return -1;
            if (open_container(s, c) < 0)
                return -1;
            s->pos++;
            continue;
        case '}':
        case ']':
            if (!(c == '}' ? s->expect == E_KEY_OR_END || s->expect == E_COMMA_OR_END
                           : s->expect == E_VALUE_OR_END || s->expect == E_COMMA_OR_END))
                return -1;
            if (close_container(s, c) < 0)
                return -1;
            s->pos++;
            continue;
        case ',':
            if (s->expect != E_COMMA_OR_END)
                return -1;
            s->expect = s->stack[s->depth - 1] == 'o' ? E_KEY : E_VALUE;
            if (in_args(s))
                args_out(s, ",", 1);
            s->pos++;
            continue;
        case ':':
            if (s->expect != E_COLON)
                return -1;
            s->expect = E_VALUE;
            if (in_args(s))
                args_out(s, ":", 1);
            s->pos++;
            continue;
        case '"':
            if (s->expect == E_KEY || s->expect == E_KEY_OR_END) {
                s->expect = E_COLON;
                s->str_stream = in_args(s);
            } else if (s->expect == E_VALUE || s->expect == E_VALUE_OR_END) {
                if (at_member && !member_value(s, c))
                    return -1;
                s->str_stream = in_args(s) || (at_member && s->args == A_STRING);
            } else {
                return -1;
            }
            if (s->str_stream && s->args == A_OBJECT)
                args_out(s, "\"", 1);
            s->in_str = 1;
            s->pos++;
            s->str_at = s->pos;
            continue;
        default:
            break;
        }
        /* a number or a literal: whole when a byte that cannot be part of it comes */
        if (s->expect != E_VALUE && s->expect != E_VALUE_OR_END)
            return -1;
        size_t end = s->pos;
        while (end < b->len && (strchr("+-.", b->p[end]) || (b->p[end] >= '0' && b->p[end] <= '9') ||
                                (b->p[end] >= 'a' && b->p[end] <= 'z') || (b->p[end] >= 'A' && b->p[end] <= 'Z')))
            end++;
        if (end == s->pos)
            return -1;
        if (end == b->len && !eof)
            return 0;
        if (at_member && !member_value(s, c))
            return -1;
        if (literal_end(s, b->p + s->pos, end - s->pos) < 0)
            return -1;
        s->pos = end;
    }
    return 0;
}

/* ------------------------------------------------------------ phases */

/* The longest suffix of buf[from, len) that is a proper prefix of lit. */
static size_t partial_suffix(const text *b, size_t from, const char *lit)
{
    size_t n = strlen(lit);
    for (size_t k = n - 1; k > 0; k--)
        if (b->len - from >= k && memcmp(b->p + b->len - k, lit, k) == 0)
            return k;
    return 0;
}

/* SEARCH: content out up to a possible marker; BODY from the marker on. */
static void search(srv_tools_stream *s)
{
    text *b = &s->buf;
    if (s->parser == SRV_TOOLS_LLAMA3) {
        /* a call only from the start: decided at the first byte other than whitespace */
        size_t at = 0;
        while (at < b->len && is_ws(b->p[at]))
            at++;
        if (at == b->len)
            return;
        int tag = starts(b, at, SRV_TOOLS_PYTHON_TAG);
        if (b->p[at] == '{' || tag == 1) {
            s->phase = PH_BODY;
            s->pos = tag == 1 ? at + strlen(SRV_TOOLS_PYTHON_TAG) : at;
        } else if (tag == 0) {
            s->phase = PH_CONTENT;
            content_to(s, b->len);
        }
        return;
    }
    const char *open = s->parser == SRV_TOOLS_HERMES ? SRV_TOOLS_HERMES_OPEN : SRV_TOOLS_MISTRAL_OPEN;
    size_t n = strlen(open);
    /* a marker cannot start before emitted - (its length - 1) */
    size_t at = s->emitted > n ? s->emitted - n : 0;
    while (at + n <= b->len && memcmp(b->p + at, open, n) != 0)
        at++;
    if (at + n <= b->len) {
        content_to(s, at);
        s->phase = PH_BODY;
        s->pos = at + n;
        s->outer = O_VALUE;
    } else {
        content_to(s, b->len - partial_suffix(b, s->emitted, open));
    }
}

static void run(srv_tools_stream *s, int eof)
{
    if (s->phase == PH_SEARCH)
        search(s);
    if (s->phase == PH_BODY && scan(s, eof) < 0)
        malformed(s);
    if (s->phase == PH_CONTENT)
        content_to(s, s->buf.len);
}

/* The deltas' offsets into out as pointers. */
static void resolve(srv_tools_stream *s, const srv_tools_delta **ev, int *n_ev)
{
    for (int i = 0; i < s->n_ev; i++)
        s->ev[i].text = s->out.p + (size_t)(uintptr_t)s->ev[i].text;
    *ev = s->ev;
    *n_ev = s->n_ev;
}

static void begin(srv_tools_stream *s, const srv_tools_delta **ev, int *n_ev)
{
    *ev = NULL;
    *n_ev = 0;
    s->n_ev = 0;
    s->out.len = 0;
}

/* Out of memory: what is held is lost, what comes passes as content. */
static int out_of_memory(srv_tools_stream *s)
{
    s->failed = 1;
    s->oom = 0;
    s->n_ev = 0;
    return -1;
}

int srv_tools_stream_push(srv_tools_stream *s, const char *p, size_t len, const srv_tools_delta **ev, int *n_ev)
{
    begin(s, ev, n_ev);
    if (s->failed || s->finished) {
        if (s->failed)
            emit(s, SRV_TOOLS_DELTA_CONTENT, 0, p, len);
        resolve(s, ev, n_ev);
        return s->oom ? out_of_memory(s) : 0;
    }
    if (t_add(&s->buf, p, len) < 0)
        return out_of_memory(s);
    if (s->phase != PH_DEAD)
        run(s, 0);
    if (s->oom)
        return out_of_memory(s);
    resolve(s, ev, n_ev);
    return 0;
}

/* The calls out equal the whole parse's (names and arguments)? */
static int same_calls(json_t *sent, json_t *whole)
{
    if (json_array_size(sent) != json_array_size(whole))
        return 0;
    for (size_t i = 0; i < json_array_size(sent); i++)
        if (!json_equal(json_array_get(sent, i), json_array_get(whole, i)))
            return 0;
    return 1;
}

int srv_tools_stream_finish(srv_tools_stream *s, const srv_tools_delta **ev, int *n_ev, int *whole)
{
    begin(s, ev, n_ev);
    *whole = 0;
    if (s->finished || s->failed) {
        s->finished = 1;
        return 0;
    }
    s->finished = 1;
    if (s->phase == PH_BODY) {
        run(s, 1);
        /* the end inside a call, or where a call must come, is a cut call */
        if (s->phase == PH_BODY && (s->outer == O_IN || s->outer == O_VALUE || s->in_str))
            malformed(s);
    }
    args_done(s);
    if (s->oom)
        return out_of_memory(s);
    srv_tools_result w;
    if (srv_tools_parse(s->parser, s->forced, s->buf.p, s->buf.len, &w) < 0)
        return out_of_memory(s);
    if (w.calls && s->n_calls == 0) {
        /* the scanner found no call where jansson did (it should not): the
         * calls whole now, as the stream sent them before it streamed */
        size_t i;
        json_t *c;
        json_array_foreach(w.calls, i, c)
        {
            emit(s, SRV_TOOLS_DELTA_CALL, (int)i, json_string_value(json_object_get(c, "name")),
                 json_string_length(json_object_get(c, "name")));
            json_t *a = json_object_get(c, "arguments");
            emit(s, SRV_TOOLS_DELTA_ARGS, (int)i, json_string_value(a), json_string_length(a));
        }
        json_decref(s->sent);
        s->sent = json_incref(w.calls);
        s->n_calls = (int)json_array_size(w.calls);
        if (w.content_len > s->emitted)
            emit(s, SRV_TOOLS_DELTA_CONTENT, 0, w.content + s->emitted, w.content_len - s->emitted);
        *whole = 1;
    } else if (s->n_calls == 0) {
        content_to(s, s->buf.len); /* no call: the whole text is content */
    } else {
        *whole = s->phase == PH_BODY && w.calls && same_calls(s->sent, w.calls);
    }
    srv_tools_result_free(&w);
    if (s->oom)
        return out_of_memory(s);
    resolve(s, ev, n_ev);
    return 0;
}
