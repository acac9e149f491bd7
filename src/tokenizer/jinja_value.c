/*
 * Values with Python semantics: construction, truth, equality, ordering,
 * str() and repr() (byte-exact with CPython's, floats included), len() and
 * iteration. Plus the arena-backed strings and buffers they are made of.
 */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tokenizer/jinja_internal.h"

static const char *const kind_names[] = {
    [JE_TEMPLATE] = "TemplateError",     [JE_UNDEFINED] = "UndefinedError",
    [JE_TYPE] = "TypeError",             [JE_VALUE] = "ValueError",
    [JE_ZERODIV] = "ZeroDivisionError",  [JE_OVERFLOW] = "OverflowError",
    [JE_SECURITY] = "SecurityError",     [JE_RUNTIME] = "TemplateRuntimeError",
    [JE_SYNTAX] = "TemplateSyntaxError", [JE_ASSERTION] = "TemplateAssertionError",
    [JE_KEY] = "KeyError",               [JE_INDEX] = "IndexError",
    [JE_LIMIT] = "LimitError",           [JE_UNSUPPORTED] = "UnsupportedError",
    [JE_ATTRIBUTE] = "AttributeError",        [JE_FILTER_ARG] = "FilterArgumentError",
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

uint32_t u8_next(const char *s, size_t len, size_t *i)
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
    return ((c & 0x07) << 18) | ((uint32_t)(p[1] & 0x3f) << 12) | ((uint32_t)(p[2] & 0x3f) << 6) | (p[3] & 0x3f);
}

size_t u8_encode(uint32_t cp, char out[4])
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

int u8_valid(const char *s, size_t len)
{
    utf8proc_int32_t cp;
    size_t i = 0;
    while (i < len) {
        if ((unsigned char)s[i] < 0x80) {
            i++;
            continue;
        }
        utf8proc_ssize_t n = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(len - i), &cp);
        if (n <= 0)
            return 0;
        i += (size_t)n;
    }
    return 1;
}

/* str.isspace() of CPython */
int py_isspace(uint32_t cp)
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

void jbuf_putc(jctx *c, jbuf *b, char ch) { jbuf_put(c, b, &ch, 1); }

void jbuf_puts(jctx *c, jbuf *b, const char *s) { jbuf_put(c, b, s, strlen(s)); }

void jbuf_put_cp(jctx *c, jbuf *b, uint32_t cp)
{
    char tmp[4];
    jbuf_put(c, b, tmp, u8_encode(cp, tmp));
}

jstr *jbuf_str(jctx *c, const jbuf *b) { return jstr_new(c, b->p, b->n); }

/* ------------------------------------------------------------------ values */

jv jv_str(jctx *c, const char *s, size_t len) { return jv_strv(jstr_new(c, s, len)); }

jv jv_cstr(jctx *c, const char *s) { return jv_str(c, s, strlen(s)); }

jv jv_undef_plain(void)
{
    jv v = {.k = JK_UNDEF, .sub = JE_UNDEFINED};
    v.u.s = NULL;
    return v;
}

jv jv_undef(jctx *c, const char *fmt, ...)
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
    jv v = jv_undef_plain();
    v.u.s = jstr_new(c, tmp, (size_t)n);
    return v;
}

/* jinja2's object_type_repr: "dict object", "None", ... */
static const char *object_type_repr(jv obj, char *buf, size_t cap)
{
    if (obj.k == JK_NONE)
        return "None";
    snprintf(buf, cap, "%s object", jv_type_name(obj));
    return buf;
}

jv jv_undef_attr(jctx *c, jv obj, const jstr *name)
{
    char tb[64];
    return jv_undef(c, "'%s' has no attribute '%.200s'", object_type_repr(obj, tb, sizeof tb), name->s);
}

jv jv_undef_item(jctx *c, jv obj, jv key)
{
    char tb[64];
    const char *t = object_type_repr(obj, tb, sizeof tb);
    if (key.k == JK_STR)
        return jv_undef(c, "'%s' has no attribute '%.200s'", t, key.u.s->s);
    jbuf b = {0};
    jv_repr_into(c, &b, key);
    return jv_undef(c, "%s has no element %.200s", t, b.p ? b.p : "");
}

jv jv_list(jctx *c, size_t cap)
{
    jv v = {.k = JK_LIST};
    v.u.l = jalloc(c, sizeof(jlist));
    if (cap) {
        if (cap > SIZE_MAX / sizeof(jv))
            jfail(c, JE_LIMIT, "list too long");
        v.u.l->v = jalloc(c, cap * sizeof(jv));
        v.u.l->cap = cap;
    }
    return v;
}

jv jv_tuple(jctx *c, size_t n)
{
    jv v = jv_list(c, n);
    v.k = JK_TUPLE;
    return v;
}

jv jv_dict(jctx *c)
{
    jv v = {.k = JK_DICT};
    v.u.d = jalloc(c, sizeof(jdict));
    return v;
}

void jlist_push(jctx *c, jlist *l, jv v)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        if (cap > SIZE_MAX / sizeof(jv))
            jfail(c, JE_LIMIT, "list too long");
        jv *nv = jarena_grow(&c->arena, l->v, l->cap * sizeof(jv), cap * sizeof(jv));
        if (nv == NULL)
            jfail(c, JE_LIMIT, "the template used more than %zu bytes of memory", c->lim.max_memory);
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = v;
}

int jdict_get(const jdict *d, jv k, jv *out)
{
    for (size_t i = 0; i < d->n; i++) {
        if (jv_eq(d->k[i], k)) {
            if (out)
                *out = d->v[i];
            return 1;
        }
    }
    return 0;
}

int jdict_get_str(const jdict *d, const char *k, size_t klen, jv *out)
{
    for (size_t i = 0; i < d->n; i++) {
        const jv *key = &d->k[i];
        if (key->k == JK_STR && key->u.s->len == klen && memcmp(key->u.s->s, k, klen) == 0) {
            if (out)
                *out = d->v[i];
            return 1;
        }
    }
    return 0;
}

void jdict_set(jctx *c, jdict *d, jv k, jv v)
{
    for (size_t i = 0; i < d->n; i++) {
        if (jv_eq(d->k[i], k)) {
            d->v[i] = v;
            return;
        }
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 8;
        if (cap > SIZE_MAX / sizeof(jv))
            jfail(c, JE_LIMIT, "dict too large");
        jv *nk = jarena_grow(&c->arena, d->k, d->cap * sizeof(jv), cap * sizeof(jv));
        jv *nv = nk ? jarena_grow(&c->arena, d->v, d->cap * sizeof(jv), cap * sizeof(jv)) : NULL;
        if (nv == NULL)
            jfail(c, JE_LIMIT, "the template used more than %zu bytes of memory", c->lim.max_memory);
        d->k = nk;
        d->v = nv;
        d->cap = cap;
    }
    d->k[d->n] = k;
    d->v[d->n] = v;
    d->n++;
}

const char *jv_type_name(jv v)
{
    switch ((jkind)v.k) {
    case JK_UNDEF: return "Undefined";
    case JK_NONE: return "NoneType";
    case JK_BOOL: return "bool";
    case JK_INT: return "int";
    case JK_FLOAT: return "float";
    case JK_STR: return "str";
    case JK_LIST: return "list";
    case JK_TUPLE: return "tuple";
    case JK_DICT: return "dict";
    case JK_NS: return "Namespace";
    case JK_LOOP: return "LoopContext";
    case JK_MACRO: return "Macro";
    case JK_FUNC: return "function";
    case JK_METHOD: return "builtin_function_or_method";
    case JK_GEN: return v.u.l->gen_type ? v.u.l->gen_type : "generator";
    }
    return "object";
}

void jv_check_defined(jctx *c, jv v)
{
    if (v.k == JK_UNDEF) {
        if (v.u.s != NULL)
            jfail(c, v.sub, "%s", v.u.s->s);
        jfail(c, JE_UNDEFINED, "value is undefined");
    }
}

int jv_truthy(jv v)
{
    switch ((jkind)v.k) {
    case JK_UNDEF:
    case JK_NONE: return 0;
    case JK_BOOL:
    case JK_INT: return v.u.i != 0;
    case JK_FLOAT: return v.u.f != 0.0;
    case JK_STR: return v.u.s->len != 0;
    case JK_LIST:
    case JK_TUPLE: return v.u.l->n != 0;
    case JK_DICT: return v.u.d->n != 0;
    default: return 1;
    }
}

static int is_num(jv v) { return v.k == JK_BOOL || v.k == JK_INT || v.k == JK_FLOAT; }

/* Python compares an int and a float exactly. */
static int int_eq_float(int64_t i, double f)
{
    if (!isfinite(f) || f != floor(f) || f < -9223372036854775808.0 || f >= 9223372036854775808.0)
        return 0;
    return (int64_t)f == i;
}

int jv_eq(jv a, jv b)
{
    if (is_num(a) && is_num(b)) {
        if (a.k == JK_FLOAT && b.k == JK_FLOAT)
            return a.u.f == b.u.f;
        if (a.k == JK_FLOAT)
            return int_eq_float(b.u.i, a.u.f);
        if (b.k == JK_FLOAT)
            return int_eq_float(a.u.i, b.u.f);
        return a.u.i == b.u.i;
    }
    if (a.k != b.k)
        return 0;
    switch ((jkind)a.k) {
    case JK_UNDEF:
    case JK_NONE: return 1;
    case JK_STR: return a.u.s->len == b.u.s->len && memcmp(a.u.s->s, b.u.s->s, a.u.s->len) == 0;
    case JK_LIST:
    case JK_TUPLE:
        if (a.u.l->n != b.u.l->n)
            return 0;
        for (size_t i = 0; i < a.u.l->n; i++)
            if (!jv_eq(a.u.l->v[i], b.u.l->v[i]))
                return 0;
        return 1;
    case JK_DICT:
        if (a.u.d->n != b.u.d->n)
            return 0;
        for (size_t i = 0; i < a.u.d->n; i++) {
            jv other;
            if (!jdict_get(b.u.d, a.u.d->k[i], &other) || !jv_eq(a.u.d->v[i], other))
                return 0;
        }
        return 1;
    case JK_NS: return a.u.d == b.u.d;
    case JK_LOOP: return a.u.loop == b.u.loop;
    case JK_MACRO: return a.u.m == b.u.m;
    case JK_FUNC: return a.u.fn == b.u.fn;
    case JK_METHOD: return a.u.mt == b.u.mt;
    case JK_GEN: return a.u.l == b.u.l;
    default: return 0;
    }
}

static int num_lt(jv a, jv b)
{
    if (a.k == JK_FLOAT || b.k == JK_FLOAT) {
        double x = a.k == JK_FLOAT ? a.u.f : (double)a.u.i;
        double y = b.k == JK_FLOAT ? b.u.f : (double)b.u.i;
        return x < y;
    }
    return a.u.i < b.u.i;
}

static int str_cmp(const jstr *a, const jstr *b)
{
    /* UTF-8 byte order is code point order */
    size_t n = a->len < b->len ? a->len : b->len;
    int r = memcmp(a->s, b->s, n);
    if (r != 0)
        return r;
    return a->len < b->len ? -1 : a->len > b->len;
}

static const char *op_symbol(int op)
{
    switch (op) {
    case OP_LT: return "<";
    case OP_LTEQ: return "<=";
    case OP_GT: return ">";
    case OP_GTEQ: return ">=";
    default: return "?";
    }
}

static void unorderable(jctx *c, int op, jv a, jv b)
{
    jv_check_defined(c, a);
    jv_check_defined(c, b);
    jfail(c, JE_TYPE, "'%s' not supported between instances of '%s' and '%s'", op_symbol(op), jv_type_name(a),
          jv_type_name(b));
}

/* Python ordering: -1, 0, 1; seq_op is the operator for error messages. */
static int ordered(jctx *c, int op, jv a, jv b)
{
    if (is_num(a) && is_num(b)) {
        if (num_lt(a, b))
            return -1;
        return num_lt(b, a) ? 1 : 0;
    }
    if (a.k == JK_STR && b.k == JK_STR) {
        int r = str_cmp(a.u.s, b.u.s);
        return r < 0 ? -1 : r > 0;
    }
    if ((a.k == JK_LIST && b.k == JK_LIST) || (a.k == JK_TUPLE && b.k == JK_TUPLE)) {
        size_t n = a.u.l->n < b.u.l->n ? a.u.l->n : b.u.l->n;
        for (size_t i = 0; i < n; i++) {
            if (!jv_eq(a.u.l->v[i], b.u.l->v[i]))
                return ordered(c, op, a.u.l->v[i], b.u.l->v[i]);
        }
        return a.u.l->n < b.u.l->n ? -1 : a.u.l->n > b.u.l->n;
    }
    unorderable(c, op, a, b);
    return 0;
}

int jv_lt(jctx *c, jv a, jv b) { return ordered(c, OP_LT, a, b) < 0; }

int jv_cmp_op(jctx *c, int op, jv a, jv b)
{
    switch (op) {
    case OP_EQ: return jv_eq(a, b);
    case OP_NE: return !jv_eq(a, b);
    case OP_LT: return ordered(c, op, a, b) < 0;
    case OP_LTEQ: {
        /* NaN compares false both ways, as in Python */
        if (a.k == JK_FLOAT && isnan(a.u.f))
            return 0;
        if (b.k == JK_FLOAT && isnan(b.u.f))
            return 0;
        return ordered(c, op, a, b) <= 0;
    }
    case OP_GT: return ordered(c, op, a, b) > 0;
    case OP_GTEQ: {
        if (a.k == JK_FLOAT && isnan(a.u.f))
            return 0;
        if (b.k == JK_FLOAT && isnan(b.u.f))
            return 0;
        return ordered(c, op, a, b) >= 0;
    }
    case OP_IN: return jop_contains(c, b, a);
    case OP_NOTIN: return !jop_contains(c, b, a);
    }
    return 0;
}

/* ------------------------------------------------------------------ printing */

/* repr(float): the shortest digits that round-trip, laid out as CPython's
 * float_repr_style 'short' does (exponent form below 1e-4 and from 1e16). */
void py_float_repr(double f, char out[32])
{
    if (isnan(f)) {
        strcpy(out, "nan");
        return;
    }
    if (isinf(f)) {
        strcpy(out, f < 0 ? "-inf" : "inf");
        return;
    }
    char tmp[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, f);
        if (strtod(tmp, NULL) == f)
            break;
    }
    /* tmp: [-]d.ddde[+-]xx */
    char digits[24];
    int nd = 0;
    const char *p = tmp;
    int neg = 0;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9')
            digits[nd++] = *p;
    int exp10 = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = '\0';
    int decpt = exp10 + 1; /* digits d1 d2 ... with the point after decpt of them */
    char *o = out;
    if (neg)
        *o++ = '-';
    if (decpt > 16 || decpt < -3) {
        *o++ = digits[0];
        if (nd > 1) {
            *o++ = '.';
            memcpy(o, digits + 1, (size_t)nd - 1);
            o += nd - 1;
        }
        snprintf(o, 8, "e%c%02d", exp10 < 0 ? '-' : '+', (exp10 < 0 ? -exp10 : exp10) % 1000);
        return;
    }
    if (decpt <= 0) {
        *o++ = '0';
        *o++ = '.';
        for (int i = 0; i < -decpt; i++)
            *o++ = '0';
        memcpy(o, digits, (size_t)nd);
        o += nd;
    } else if (decpt >= nd) {
        memcpy(o, digits, (size_t)nd);
        o += nd;
        for (int i = nd; i < decpt; i++)
            *o++ = '0';
        *o++ = '.';
        *o++ = '0';
    } else {
        memcpy(o, digits, (size_t)decpt);
        o += decpt;
        *o++ = '.';
        memcpy(o, digits + decpt, (size_t)(nd - decpt));
        o += nd - decpt;
    }
    *o = '\0';
}

/* str.isprintable() of one code point */
static int py_isprintable(uint32_t cp)
{
    if (cp == ' ')
        return 1;
    if (cp < 0x20 || cp == 0x7f)
        return 0;
    if (cp < 0x7f)
        return 1;
    switch (utf8proc_category((utf8proc_int32_t)cp)) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
    case UTF8PROC_CATEGORY_ZS: return 0;
    default: return 1;
    }
}

void py_str_repr_into(jctx *c, jbuf *b, const char *s, size_t len)
{
    int has_sq = memchr(s, '\'', len) != NULL, has_dq = memchr(s, '"', len) != NULL;
    char q = (has_sq && !has_dq) ? '"' : '\'';
    jbuf_putc(c, b, q);
    size_t i = 0;
    while (i < len) {
        size_t start = i;
        uint32_t cp = u8_next(s, len, &i);
        char esc[16];
        if (cp == (uint32_t)q || cp == '\\') {
            esc[0] = '\\';
            esc[1] = (char)cp;
            jbuf_put(c, b, esc, 2);
        } else if (cp == '\n') {
            jbuf_put(c, b, "\\n", 2);
        } else if (cp == '\r') {
            jbuf_put(c, b, "\\r", 2);
        } else if (cp == '\t') {
            jbuf_put(c, b, "\\t", 2);
        } else if (!py_isprintable(cp)) {
            if (cp < 0x100)
                snprintf(esc, sizeof esc, "\\x%02x", cp);
            else if (cp < 0x10000)
                snprintf(esc, sizeof esc, "\\u%04x", cp);
            else
                snprintf(esc, sizeof esc, "\\U%08x", cp);
            jbuf_puts(c, b, esc);
        } else {
            jbuf_put(c, b, s + start, i - start);
        }
    }
    jbuf_putc(c, b, q);
}

static void seq_repr(jctx *c, jbuf *b, jv v)
{
    const jlist *l = v.u.l;
    jbuf_putc(c, b, v.k == JK_TUPLE ? '(' : '[');
    for (size_t i = 0; i < l->n; i++) {
        if (i)
            jbuf_put(c, b, ", ", 2);
        jv_repr_into(c, b, l->v[i]);
    }
    if (v.k == JK_TUPLE && l->n == 1)
        jbuf_putc(c, b, ',');
    jbuf_putc(c, b, v.k == JK_TUPLE ? ')' : ']');
}

static void dict_repr(jctx *c, jbuf *b, const jdict *d)
{
    jbuf_putc(c, b, '{');
    for (size_t i = 0; i < d->n; i++) {
        if (i)
            jbuf_put(c, b, ", ", 2);
        jv_repr_into(c, b, d->k[i]);
        jbuf_put(c, b, ": ", 2);
        jv_repr_into(c, b, d->v[i]);
    }
    jbuf_putc(c, b, '}');
}

void jv_repr_into(jctx *c, jbuf *b, jv v)
{
    if (++c->vdepth > 1000)
        jfail(c, JE_LIMIT, "value nested too deeply to print");
    switch ((jkind)v.k) {
    case JK_STR: py_str_repr_into(c, b, v.u.s->s, v.u.s->len); break;
    case JK_UNDEF: jbuf_puts(c, b, "Undefined"); break;
    case JK_LIST:
    case JK_TUPLE: seq_repr(c, b, v); break;
    case JK_DICT: dict_repr(c, b, v.u.d); break;
    default: jv_str_into(c, b, v); break;
    }
    c->vdepth--;
}

void jv_str_into(jctx *c, jbuf *b, jv v)
{
    char tmp[64];
    switch ((jkind)v.k) {
    case JK_UNDEF: break;
    case JK_NONE: jbuf_puts(c, b, "None"); break;
    case JK_BOOL: jbuf_puts(c, b, v.u.i ? "True" : "False"); break;
    case JK_INT:
        snprintf(tmp, sizeof tmp, "%" PRId64, v.u.i);
        jbuf_puts(c, b, tmp);
        break;
    case JK_FLOAT:
        py_float_repr(v.u.f, tmp);
        jbuf_puts(c, b, tmp);
        break;
    case JK_STR: jbuf_put(c, b, v.u.s->s, v.u.s->len); break;
    case JK_LIST:
    case JK_TUPLE:
    case JK_DICT: jv_repr_into(c, b, v); break;
    case JK_NS:
        jbuf_puts(c, b, "<Namespace ");
        dict_repr(c, b, v.u.d);
        jbuf_putc(c, b, '>');
        break;
    case JK_LOOP:
        snprintf(tmp, sizeof tmp, "<LoopContext %" PRId64 "/%" PRId64 ">", v.u.loop->index0 + 1, v.u.loop->length);
        jbuf_puts(c, b, tmp);
        break;
    case JK_MACRO:
        jbuf_puts(c, b, "<Macro '");
        if (v.u.m->node->str)
            jbuf_put(c, b, v.u.m->node->str->s, v.u.m->node->str->len);
        else
            jbuf_puts(c, b, "caller");
        jbuf_puts(c, b, "'>");
        break;
    case JK_FUNC:
        jbuf_puts(c, b, "<function ");
        jbuf_puts(c, b, jglobal_name(v.u.fn));
        jbuf_putc(c, b, '>');
        break;
    case JK_METHOD: jbuf_puts(c, b, "<built-in method>"); break;
    case JK_GEN: /* Python adds the address */
        jbuf_putc(c, b, '<');
        jbuf_puts(c, b, jv_type_name(v));
        jbuf_puts(c, b, " object>");
        break;
    }
}

jstr *jv_to_jstr(jctx *c, jv v)
{
    if (v.k == JK_STR)
        return v.u.s;
    jbuf b = {0};
    jv_str_into(c, &b, v);
    return jstr_new(c, b.p, b.n);
}

/* ------------------------------------------------------------------ len and iteration */

int64_t jv_len(jctx *c, jv v)
{
    switch ((jkind)v.k) {
    case JK_UNDEF: return 0;
    case JK_STR: return jstr_ncp(v.u.s);
    case JK_LIST:
    case JK_TUPLE: return (int64_t)v.u.l->n;
    case JK_DICT: return (int64_t)v.u.d->n;
    case JK_LOOP: return v.u.loop->length;
    default: jfail(c, JE_TYPE, "object of type '%s' has no len()", jv_type_name(v));
    }
}

jv jv_gen(jlist *l)
{
    jv g = {.k = JK_GEN};
    g.u.l = l;
    return g;
}

jv jv_gen_failing(jctx *c, int kind, const char *message)
{
    jv g = jv_gen(jv_list(c, 0).u.l);
    g.u.l->err = jstr_new(c, message, strlen(message));
    g.u.l->err_kind = kind;
    return g;
}

void jv_gen_check(jctx *c, jv g)
{
    if (g.k == JK_GEN && g.u.l->err != NULL)
        jfail(c, g.u.l->err_kind, "%s", g.u.l->err->s);
}

jlist *jv_iter_list(jctx *c, jv v)
{
    switch ((jkind)v.k) {
    case JK_UNDEF: return jv_list(c, 0).u.l;
    case JK_GEN: {
        jv_gen_check(c, v);
        jlist *rest = jalloc(c, sizeof *rest);
        rest->n = rest->cap = v.u.l->n - v.u.l->pos;
        rest->v = rest->n ? v.u.l->v + v.u.l->pos : NULL;
        v.u.l->pos = v.u.l->n;
        return rest;
    }
    case JK_LIST:
    case JK_TUPLE: return v.u.l;
    case JK_DICT: {
        jv r = jv_list(c, v.u.d->n);
        for (size_t i = 0; i < v.u.d->n; i++)
            r.u.l->v[i] = v.u.d->k[i];
        r.u.l->n = v.u.d->n;
        return r.u.l;
    }
    case JK_STR: {
        jstr *s = v.u.s;
        jv r = jv_list(c, (size_t)jstr_ncp(s));
        size_t i = 0;
        while (i < s->len) {
            size_t start = i;
            u8_next(s->s, s->len, &i);
            jv ch = jv_str(c, s->s + start, i - start);
            ch.u.s->ncp = 1;
            jlist_push(c, r.u.l, ch);
        }
        return r.u.l;
    }
    default: jfail(c, JE_TYPE, "'%s' object is not iterable", jv_type_name(v));
    }
}
