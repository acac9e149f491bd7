/*
 * JSON both ways: the caller's variables (jansson) become values, and the
 * tojson filter writes values exactly as Python's json.dumps does with
 * transformers' arguments (ensure_ascii=False by default, indent,
 * separators, sort_keys): ", " and ": " separators, floats as repr(),
 * NaN / Infinity, "\u00XX" for control characters.
 */
#include <stdio.h>
#include <string.h>

#include "jinja/jinja_internal.h"

jv jjson_to_value(jctx *c, const json_t *j)
{
    if (++c->vdepth > 2100)
        jfail(c, JE_LIMIT, "JSON nested too deeply");
    jv r;
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        r = jv_dict(c);
        const char *key;
        json_t *val;
        /* jansson keeps insertion order, as Python's dict does */
        json_object_foreach((json_t *)j, key, val)
        {
            jv k = jv_cstr(c, key);
            jdict_set(c, r.u.d, k, jjson_to_value(c, val));
        }
        break;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        r = jv_list(c, n);
        for (size_t i = 0; i < n; i++)
            r.u.l->v[i] = jjson_to_value(c, json_array_get(j, i));
        r.u.l->n = n;
        break;
    }
    case JSON_STRING: {
        const char *s = json_string_value(j);
        size_t n = json_string_length(j);
        r = jv_str(c, s, n);
        break;
    }
    case JSON_INTEGER:
        r = jv_int((int64_t)json_integer_value(j));
        break;
    case JSON_REAL:
        r = jv_float(json_real_value(j));
        break;
    case JSON_TRUE:
        r = jv_bool(1);
        break;
    case JSON_FALSE:
        r = jv_bool(0);
        break;
    default:
        r = jv_none();
        break;
    }
    c->vdepth--;
    return r;
}

static void dump_string(jctx *c, jbuf *b, const char *s, size_t len, int ensure_ascii)
{
    jbuf_putc(c, b, '"');
    size_t i = 0;
    while (i < len) {
        size_t start = i;
        /* a run of characters that need no escape */
        while (i < len) {
            unsigned char ch = (unsigned char)s[i];
            if (ch == '"' || ch == '\\' || ch < 0x20 || (ensure_ascii && ch >= 0x80))
                break;
            i++;
        }
        jbuf_put(c, b, s + start, i - start);
        if (i >= len)
            break;
        unsigned char ch = (unsigned char)s[i];
        char esc[16];
        if (ch >= 0x80) {
            uint32_t cp = ju8_next(s, len, &i);
            if (cp >= 0x10000) {
                uint32_t v = cp - 0x10000;
                snprintf(esc, sizeof esc, "\\u%04x\\u%04x", 0xd800 + (v >> 10), 0xdc00 + (v & 0x3ff));
            } else {
                snprintf(esc, sizeof esc, "\\u%04x", cp);
            }
            jbuf_puts(c, b, esc);
            continue;
        }
        i++;
        switch (ch) {
        case '"':
            jbuf_put(c, b, "\\\"", 2);
            break;
        case '\\':
            jbuf_put(c, b, "\\\\", 2);
            break;
        case '\n':
            jbuf_put(c, b, "\\n", 2);
            break;
        case '\r':
            jbuf_put(c, b, "\\r", 2);
            break;
        case '\t':
            jbuf_put(c, b, "\\t", 2);
            break;
        case '\b':
            jbuf_put(c, b, "\\b", 2);
            break;
        case '\f':
            jbuf_put(c, b, "\\f", 2);
            break;
        default:
            snprintf(esc, sizeof esc, "\\u%04x", ch);
            jbuf_puts(c, b, esc);
            break;
        }
    }
    jbuf_putc(c, b, '"');
}

static void dump_float(jctx *c, jbuf *b, double f)
{
    char tmp[32];
    if (f != f)
        jbuf_puts(c, b, "NaN");
    else if (f > 1.7976931348623157e308)
        jbuf_puts(c, b, "Infinity");
    else if (f < -1.7976931348623157e308)
        jbuf_puts(c, b, "-Infinity");
    else {
        jpy_float_repr(f, tmp);
        jbuf_puts(c, b, tmp);
    }
}

static void newline_indent(jctx *c, jbuf *b, const jjson_opts *o, int level)
{
    jbuf_putc(c, b, '\n');
    for (int k = 0; k < level; k++)
        jbuf_put(c, b, o->indent, o->indent_len);
}

static void dump(jctx *c, jbuf *b, jv v, const jjson_opts *o, int level);

/* A dict key as json.dumps converts it. */
static void dump_key(jctx *c, jbuf *b, jv k, const jjson_opts *o)
{
    char tmp[64];
    switch ((jkind)k.k) {
    case JK_STR:
        dump_string(c, b, k.u.s->s, k.u.s->len, o->ensure_ascii);
        return;
    case JK_INT:
        snprintf(tmp, sizeof tmp, "\"%lld\"", (long long)k.u.i);
        jbuf_puts(c, b, tmp);
        return;
    case JK_BOOL:
        jbuf_puts(c, b, k.u.i ? "\"true\"" : "\"false\"");
        return;
    case JK_NONE:
        jbuf_puts(c, b, "\"null\"");
        return;
    case JK_FLOAT: {
        jbuf t = {0};
        dump_float(c, &t, k.u.f);
        jbuf_putc(c, b, '"');
        jbuf_put(c, b, t.p, t.n);
        jbuf_putc(c, b, '"');
        return;
    }
    default:
        jfail(c, JE_TYPE, "keys must be str, int, float, bool or None, not %s", jv_type_name(k));
    }
}

/* Stable merge sort of dict positions by key (sort_keys). */
static void sort_positions(jctx *c, const jdict *d, size_t *idx, size_t *tmp, size_t n)
{
    if (n < 2)
        return;
    size_t h = n / 2;
    sort_positions(c, d, idx, tmp, h);
    sort_positions(c, d, idx + h, tmp, n - h);
    size_t i = 0, j = h, o = 0;
    while (i < h && j < n) {
        if (jv_lt(c, d->k[idx[j]], d->k[idx[i]]))
            tmp[o++] = idx[j++];
        else
            tmp[o++] = idx[i++];
    }
    while (i < h)
        tmp[o++] = idx[i++];
    while (j < n)
        tmp[o++] = idx[j++];
    memcpy(idx, tmp, n * sizeof(size_t));
}

static void dump_dict(jctx *c, jbuf *b, const jdict *d, const jjson_opts *o, int level)
{
    if (d->n == 0) {
        jbuf_puts(c, b, "{}");
        return;
    }
    size_t *order = jalloc(c, d->n * sizeof(size_t));
    for (size_t i = 0; i < d->n; i++)
        order[i] = i;
    if (o->sort_keys) {
        size_t *tmp = jalloc(c, d->n * sizeof(size_t));
        sort_positions(c, d, order, tmp, d->n);
    }
    jbuf_putc(c, b, '{');
    for (size_t i = 0; i < d->n; i++) {
        if (i)
            jbuf_puts(c, b, o->item_sep);
        if (o->indent)
            newline_indent(c, b, o, level + 1);
        dump_key(c, b, d->k[order[i]], o);
        jbuf_puts(c, b, o->key_sep);
        dump(c, b, d->v[order[i]], o, level + 1);
    }
    if (o->indent)
        newline_indent(c, b, o, level);
    jbuf_putc(c, b, '}');
}

static void dump(jctx *c, jbuf *b, jv v, const jjson_opts *o, int level)
{
    char tmp[32];
    if (++c->vdepth > 1000)
        jfail(c, JE_RECURSION, "maximum recursion depth exceeded while encoding a JSON object");
    jstep(c);
    switch ((jkind)v.k) {
    case JK_NONE:
        jbuf_puts(c, b, "null");
        break;
    case JK_BOOL:
        jbuf_puts(c, b, v.u.i ? "true" : "false");
        break;
    case JK_INT:
        snprintf(tmp, sizeof tmp, "%lld", (long long)v.u.i);
        jbuf_puts(c, b, tmp);
        break;
    case JK_FLOAT:
        dump_float(c, b, v.u.f);
        break;
    case JK_STR:
        dump_string(c, b, v.u.s->s, v.u.s->len, o->ensure_ascii);
        break;
    case JK_LIST:
    case JK_TUPLE: {
        const jlist *l = v.u.l;
        if (l->n == 0) {
            jbuf_puts(c, b, "[]");
            break;
        }
        jbuf_putc(c, b, '[');
        for (size_t i = 0; i < l->n; i++) {
            if (i)
                jbuf_puts(c, b, o->item_sep);
            if (o->indent)
                newline_indent(c, b, o, level + 1);
            dump(c, b, l->v[i], o, level + 1);
        }
        if (o->indent)
            newline_indent(c, b, o, level);
        jbuf_putc(c, b, ']');
        break;
    }
    case JK_DICT:
        dump_dict(c, b, v.u.d, o, level);
        break;
    default:
        jfail(c, JE_TYPE, "Object of type %s is not JSON serializable", jv_type_name(v));
    }
    c->vdepth--;
}

void jjson_dump(jctx *c, jbuf *b, jv v, const jjson_opts *o)
{
    dump(c, b, v, o, 0);
}
