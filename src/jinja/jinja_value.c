/*
 * Values with Python semantics: construction, truth, equality, ordering,
 * len() and iteration (generators included).
 */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "jinja/jinja_internal.h"

#define MAX_VALUE_DEPTH 1000

/* ------------------------------------------------------------------ values */

jv jv_str(jctx *c, const char *s, size_t len)
{
    return jv_strv(jstr_new(c, s, len));
}

jv jv_cstr(jctx *c, const char *s)
{
    return jv_str(c, s, strlen(s));
}

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

int jdict_get(jctx *c, const jdict *d, jv k, jv *out)
{
    for (size_t i = 0; i < d->n; i++) {
        if (jv_eq(c, d->k[i], k)) {
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
        if (jv_eq(c, d->k[i], k)) {
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
    case JK_UNDEF:
        return "Undefined";
    case JK_NONE:
        return "NoneType";
    case JK_BOOL:
        return "bool";
    case JK_INT:
        return "int";
    case JK_FLOAT:
        return "float";
    case JK_STR:
        return "str";
    case JK_LIST:
        return "list";
    case JK_TUPLE:
        return "tuple";
    case JK_DICT:
        return "dict";
    case JK_NS:
        return "Namespace";
    case JK_LOOP:
        return "LoopContext";
    case JK_MACRO:
        return "Macro";
    case JK_FUNC:
        return "function";
    case JK_METHOD:
        return "builtin_function_or_method";
    case JK_GEN:
        return v.u.l->gen_type ? v.u.l->gen_type : "generator";
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
    case JK_NONE:
        return 0;
    case JK_BOOL:
    case JK_INT:
        return v.u.i != 0;
    case JK_FLOAT:
        return v.u.f != 0.0;
    case JK_STR:
        return v.u.s->len != 0;
    case JK_LIST:
    case JK_TUPLE:
        return v.u.l->n != 0;
    case JK_DICT:
        return v.u.d->n != 0;
    default:
        return 1;
    }
}

static int is_num(jv v)
{
    return v.k == JK_BOOL || v.k == JK_INT || v.k == JK_FLOAT;
}

/* Python compares an int and a float exactly. */
static int int_eq_float(int64_t i, double f)
{
    if (!isfinite(f) || f != floor(f) || f < -9223372036854775808.0 || f >= 9223372036854775808.0)
        return 0;
    return (int64_t)f == i;
}

static int eq_rec(jctx *c, jv a, jv b, int depth)
{
    /* values a template nests itself ({% set ns.x = [ns.x] %}) can be deep */
    if (depth > MAX_VALUE_DEPTH)
        jfail(c, JE_RECURSION, "maximum recursion depth exceeded in comparison");
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
    case JK_NONE:
        return 1;
    case JK_STR:
        return a.u.s->len == b.u.s->len && memcmp(a.u.s->s, b.u.s->s, a.u.s->len) == 0;
    case JK_LIST:
    case JK_TUPLE:
        if (a.u.l == b.u.l)
            return 1; /* CPython compares an object with itself as equal without looking inside */
        if (a.u.l->n != b.u.l->n)
            return 0;
        for (size_t i = 0; i < a.u.l->n; i++)
            if (!eq_rec(c, a.u.l->v[i], b.u.l->v[i], depth + 1))
                return 0;
        return 1;
    case JK_DICT:
        if (a.u.d == b.u.d)
            return 1;
        if (a.u.d->n != b.u.d->n)
            return 0;
        for (size_t i = 0; i < a.u.d->n; i++) {
            jv other;
            if (!jdict_get(c, b.u.d, a.u.d->k[i], &other) || !eq_rec(c, a.u.d->v[i], other, depth + 1))
                return 0;
        }
        return 1;
    case JK_NS:
        return a.u.d == b.u.d;
    case JK_LOOP:
        return a.u.loop == b.u.loop;
    case JK_MACRO:
        return a.u.m == b.u.m;
    case JK_FUNC:
        return a.u.fn == b.u.fn;
    case JK_METHOD:
        return a.u.mt == b.u.mt;
    case JK_GEN:
        return a.u.l == b.u.l;
    default:
        return 0;
    }
}

int jv_eq(jctx *c, jv a, jv b)
{
    return eq_rec(c, a, b, 0);
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
    case OP_LT:
        return "<";
    case OP_LTEQ:
        return "<=";
    case OP_GT:
        return ">";
    case OP_GTEQ:
        return ">=";
    default:
        return "?";
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
            if (!jv_eq(c, a.u.l->v[i], b.u.l->v[i])) {
                if (++c->vdepth > MAX_VALUE_DEPTH)
                    jfail(c, JE_RECURSION, "maximum recursion depth exceeded in comparison");
                int r = ordered(c, op, a.u.l->v[i], b.u.l->v[i]);
                c->vdepth--;
                return r;
            }
        }
        return a.u.l->n < b.u.l->n ? -1 : a.u.l->n > b.u.l->n;
    }
    unorderable(c, op, a, b);
    return 0;
}

int jv_lt(jctx *c, jv a, jv b)
{
    return ordered(c, OP_LT, a, b) < 0;
}

int jv_cmp_op(jctx *c, int op, jv a, jv b)
{
    switch (op) {
    case OP_EQ:
        return jv_eq(c, a, b);
    case OP_NE:
        return !jv_eq(c, a, b);
    case OP_LT:
        return ordered(c, op, a, b) < 0;
    case OP_LTEQ: {
        /* NaN compares false both ways, as in Python */
        if (a.k == JK_FLOAT && isnan(a.u.f))
            return 0;
        if (b.k == JK_FLOAT && isnan(b.u.f))
            return 0;
        return ordered(c, op, a, b) <= 0;
    }
    case OP_GT:
        return ordered(c, op, a, b) > 0;
    case OP_GTEQ: {
        if (a.k == JK_FLOAT && isnan(a.u.f))
            return 0;
        if (b.k == JK_FLOAT && isnan(b.u.f))
            return 0;
        return ordered(c, op, a, b) >= 0;
    }
    case OP_IN:
        return jop_contains(c, b, a);
    case OP_NOTIN:
        return !jop_contains(c, b, a);
    }
    return 0;
}

/* ------------------------------------------------------------------ len and iteration */

int64_t jv_len(jctx *c, jv v)
{
    switch ((jkind)v.k) {
    case JK_UNDEF:
        return 0;
    case JK_STR:
        return jstr_ncp(v.u.s);
    case JK_LIST:
    case JK_TUPLE:
        return (int64_t)v.u.l->n;
    case JK_DICT:
        return (int64_t)v.u.d->n;
    case JK_LOOP:
        return v.u.loop->length;
    default:
        jfail(c, JE_TYPE, "object of type '%s' has no len()", jv_type_name(v));
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
    case JK_UNDEF:
        return jv_list(c, 0).u.l;
    case JK_GEN: {
        jv_gen_check(c, v);
        jlist *rest = jalloc(c, sizeof *rest);
        rest->n = rest->cap = v.u.l->n - v.u.l->pos;
        rest->v = rest->n ? v.u.l->v + v.u.l->pos : NULL;
        v.u.l->pos = v.u.l->n;
        return rest;
    }
    case JK_LIST:
    case JK_TUPLE:
        return v.u.l;
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
            ju8_next(s->s, s->len, &i);
            jv ch = jv_str(c, s->s + start, i - start);
            ch.u.s->ncp = 1;
            jlist_push(c, r.u.l, ch);
        }
        return r.u.l;
    }
    default:
        jfail(c, JE_TYPE, "'%s' object is not iterable", jv_type_name(v));
    }
}
