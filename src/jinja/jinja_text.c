/*
 * The ground floor of the interpreter: failing with a Python-style error,
 * counting steps, arena allocation, UTF-8, immutable strings and the growing
 * buffers output and string building go through.
 */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "jinja/jinja_internal.h"

static const char *const kind_names[] = {
    [JE_TEMPLATE] = "TemplateError",
    [JE_UNDEFINED] = "UndefinedError",
    [JE_TYPE] = "TypeError",
    [JE_VALUE] = "ValueError",
    [JE_ZERODIV] = "ZeroDivisionError",
    [JE_OVERFLOW] = "OverflowError",
    [JE_SECURITY] = "SecurityError",
    [JE_RUNTIME] = "TemplateRuntimeError",
    [JE_SYNTAX] = "TemplateSyntaxError",
    [JE_ASSERTION] = "TemplateAssertionError",
    [JE_KEY] = "KeyError",
    [JE_INDEX] = "IndexError",
    [JE_LIMIT] = "LimitError",
    [JE_UNSUPPORTED] = "UnsupportedError",
    [JE_ATTRIBUTE] = "AttributeError",
    [JE_FILTER_ARG] = "FilterArgumentError",
    [JE_RECURSION] = "RecursionError",
};

void jfail(jctx *c, int kind, const char *fmt, ...)
{
    int n = snprintf(c->err, sizeof c->err, "%s: ", kind_names[kind]);
    if (n < 0 || (size_t)n >= sizeof c->err)
        n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err + n, sizeof c->err - (size_t)n, fmt, ap);
    va_end(ap);
    c->err_kind = kind;
    longjmp(c->jb, 1);
}

void jstep(jctx *c)
{
    if (++c->steps > c->lim.max_steps)
        jfail(c, JE_LIMIT, "the template ran more than %" PRId64 " steps", c->lim.max_steps);
}

void *jalloc(jctx *c, size_t n)
{
    void *p = jarena_alloc(&c->arena, n);
    if (p == NULL)
        jfail(c, JE_LIMIT, "the template used more than %zu bytes of memory", c->lim.max_memory);
    return p;
}

/* ------------------------------------------------------------------ UTF-8 */

uint32_t ju8_next(const char *s, size_t len, size_t *i)
{
    const unsigned char *p = (const unsigned char *)s + *i;
    size_t left = len - *i;
    uint32_t c = p[0];
    if (c < 0x80 || left < 2) {
        *i += 1;
        return c;
    }
    if (c < 0xe0) {
        *i += 2;
        return ((c & 0x1f) << 6) | (p[1] & 0x3f);
    }
    if (c < 0xf0 || left < 4) {
        if (left < 3) {
            *i += 1;
            return c;
        }
        *i += 3;
        return ((c & 0x0f) << 12) | ((uint32_t)(p[1] & 0x3f) << 6) | (p[2] & 0x3f);
    }
    *i += 4;
    return ((c & 0x07) << 18) | ((uint32_t)(p[1] & 0x3f) << 12) | ((uint32_t)(p[2] & 0x3f) << 6) |
           (p[3] & 0x3f);
}

size_t ju8_encode(uint32_t cp, char out[4])
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

int ju8_valid(const char *s, size_t len)
{
    utf8proc_int32_t cp;
    size_t i = 0;
    while (i < len) {
        if ((unsigned char)s[i] < 0x80) {
            i++;
            continue;
        }
        utf8proc_ssize_t n =
            utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(len - i), &cp);
        if (n <= 0)
            return 0;
        i += (size_t)n;
    }
    return 1;
}

/* str.isspace() of CPython */
int jpy_isspace(uint32_t cp)
{
    return (cp >= 9 && cp <= 13) || (cp >= 0x1c && cp <= 0x20) || cp == 0x85 || cp == 0xa0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f || cp == 0x205f ||
           cp == 0x3000;
}

/* ------------------------------------------------------------------ strings */

jstr *jstr_new(jctx *c, const char *s, size_t len)
{
    if (len > SIZE_MAX - sizeof(jstr) - 1)
        jfail(c, JE_LIMIT, "string too long");
    jstr *r = jalloc(c, sizeof *r + len + 1);
    r->len = len;
    r->ncp = -1;
    if (len && s)
        memcpy(r->s, s, len);
    r->s[len] = '\0';
    return r;
}

jstr *jstr_cat(jctx *c, const jstr *a, const jstr *b)
{
    if (a->len > SIZE_MAX / 2 || b->len > SIZE_MAX / 2)
        jfail(c, JE_LIMIT, "string too long");
    jstr *r = jstr_new(c, NULL, a->len + b->len);
    memcpy(r->s, a->s, a->len);
    memcpy(r->s + a->len, b->s, b->len);
    if (a->ncp >= 0 && b->ncp >= 0)
        r->ncp = a->ncp + b->ncp;
    return r;
}

int64_t jstr_ncp(jstr *s)
{
    if (s->ncp < 0) {
        int64_t n = 0;
        for (size_t i = 0; i < s->len; i++)
            n += ((unsigned char)s->s[i] & 0xc0) != 0x80;
        s->ncp = n;
    }
    return s->ncp;
}

jstr *jstr_fmt(jctx *c, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof tmp)
        n = sizeof tmp - 1;
    return jstr_new(c, tmp, (size_t)n);
}

void jbuf_put(jctx *c, jbuf *b, const char *s, size_t n)
{
    if (n == 0)
        return;
    if (n > c->lim.max_output || b->n > c->lim.max_output - n)
        jfail(c, JE_LIMIT, "the template output exceeds %zu bytes", c->lim.max_output);
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = jarena_grow(&c->arena, b->p, b->cap, cap);
        if (p == NULL)
            jfail(c, JE_LIMIT, "the template used more than %zu bytes of memory", c->lim.max_memory);
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

void jbuf_putc(jctx *c, jbuf *b, char ch)
{
    jbuf_put(c, b, &ch, 1);
}

void jbuf_puts(jctx *c, jbuf *b, const char *s)
{
    jbuf_put(c, b, s, strlen(s));
}

void jbuf_put_cp(jctx *c, jbuf *b, uint32_t cp)
{
    char tmp[4];
    jbuf_put(c, b, tmp, ju8_encode(cp, tmp));
}

jstr *jbuf_str(jctx *c, const jbuf *b)
{
    return jstr_new(c, b->p, b->n);
}
