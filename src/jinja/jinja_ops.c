/*
 * Python operators on values (+ - * / // % ** in, unary minus) and jinja2's
 * sandboxed attribute and item access: `x.name` tries an attribute (a method)
 * first and then the item, `x[key]` the item first and then the attribute; a
 * miss gives an undefined value, not an error, and methods that mutate
 * (list.append, dict.update, ...) are refused as the ImmutableSandbox does.
 */
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "jinja/jinja_internal.h"

/* ------------------------------------------------------------------ access */

static int is_int_like(jv v)
{
    return v.k == JK_INT || v.k == JK_BOOL;
}

static const char *const mutating_list[] = {"append",  "extend", "insert", "pop", "remove",
                                            "reverse", "sort",   "clear",  NULL};
static const char *const mutating_dict[] = {"clear", "pop", "popitem", "setdefault", "update", NULL};

static int in_names(const char *const *names, const jstr *name)
{
    for (int i = 0; names[i]; i++)
        if (strcmp(names[i], name->s) == 0)
            return 1;
    return 0;
}

static jv unsafe(jctx *c, jv obj, const jstr *name)
{
    jv u = jv_undef(c, "access to attribute '%.100s' of '%s' object is unsafe.", name->s, jv_type_name(obj));
    u.sub = JE_SECURITY;
    return u;
}

/* The attribute `name` of obj as Python's getattr would find it (methods,
 * loop fields, namespace attributes); 0 when there is none. */
static int attribute(jctx *c, jv obj, const jstr *name, jv *out)
{
    if (name->len >= 2 && name->s[0] == '_' && name->s[1] == '_' && obj.k != JK_DICT && obj.k != JK_NS) {
        *out = unsafe(c, obj, name);
        return 1;
    }
    if ((obj.k == JK_LIST && in_names(mutating_list, name)) ||
        (obj.k == JK_DICT && in_names(mutating_dict, name))) {
        *out = unsafe(c, obj, name);
        return 1;
    }
    if (obj.k == JK_NS)
        return jdict_get_str(obj.u.d, name->s, name->len, out);
    if (obj.k == JK_LOOP) {
        const jloop *lp = obj.u.loop;
        const char *n = name->s;
        if (!strcmp(n, "index0"))
            *out = jv_int(lp->index0);
        else if (!strcmp(n, "index"))
            *out = jv_int(lp->index0 + 1);
        else if (!strcmp(n, "revindex"))
            *out = jv_int(lp->length - lp->index0);
        else if (!strcmp(n, "revindex0"))
            *out = jv_int(lp->length - lp->index0 - 1);
        else if (!strcmp(n, "first"))
            *out = jv_bool(lp->index0 == 0);
        else if (!strcmp(n, "last"))
            *out = jv_bool(lp->index0 == lp->length - 1);
        else if (!strcmp(n, "length"))
            *out = jv_int(lp->length);
        else if (!strcmp(n, "depth"))
            *out = jv_int(lp->depth0 + 1);
        else if (!strcmp(n, "depth0"))
            *out = jv_int(lp->depth0);
        else if (!strcmp(n, "previtem"))
            *out = lp->index0 > 0 ? lp->items->v[lp->index0 - 1] : jv_undef(c, "there is no previous item");
        else if (!strcmp(n, "nextitem"))
            *out = lp->index0 + 1 < lp->length ? lp->items->v[lp->index0 + 1]
                                               : jv_undef(c, "there is no next item");
        else
            return jmethod_lookup(c, obj, name, out);
        return 1;
    }
    return jmethod_lookup(c, obj, name, out);
}

jv jop_getattr(jctx *c, jv obj, const jstr *name)
{
    jv_check_defined(c, obj);
    jv v;
    if (attribute(c, obj, name, &v))
        return v;
    if (obj.k == JK_DICT && jdict_get_str(obj.u.d, name->s, name->len, &v))
        return v;
    return jv_undef_attr(c, obj, name);
}

/* Python's index normalisation: -1 is the last element; 0 if out of range. */
static int norm_index(int64_t i, int64_t n, int64_t *out)
{
    if (i < 0)
        i += n;
    if (i < 0 || i >= n)
        return 0;
    *out = i;
    return 1;
}

/* Byte offset of code point cp_index in s (cp_index <= ncp). */
static size_t cp_offset(const jstr *s, int64_t cp_index)
{
    size_t i = 0;
    for (int64_t k = 0; k < cp_index && i < s->len; k++)
        ju8_next(s->s, s->len, &i);
    return i;
}

jv jop_getitem(jctx *c, jv obj, jv key)
{
    jv_check_defined(c, obj);
    jv v;
    int64_t idx;
    switch ((jkind)obj.k) {
    case JK_DICT:
        if (jdict_get(c, obj.u.d, key, &v))
            return v;
        break;
    case JK_LIST:
    case JK_TUPLE:
        if (is_int_like(key)) {
            if (norm_index(key.u.i, (int64_t)obj.u.l->n, &idx))
                return obj.u.l->v[idx];
            return jv_undef_item(c, obj, key);
        }
        break;
    case JK_STR:
        if (is_int_like(key)) {
            jstr *s = obj.u.s;
            if (norm_index(key.u.i, jstr_ncp(s), &idx)) {
                size_t a = cp_offset(s, idx), b = a;
                ju8_next(s->s, s->len, &b);
                jv ch = jv_str(c, s->s + a, b - a);
                ch.u.s->ncp = 1;
                return ch;
            }
            return jv_undef_item(c, obj, key);
        }
        break;
    default:
        break;
    }
    if (key.k == JK_STR && attribute(c, obj, key.u.s, &v))
        return v;
    return jv_undef_item(c, obj, key);
}

static int64_t slice_arg(jctx *c, jv v, int64_t dflt)
{
    if (v.k == JK_NONE)
        return dflt;
    if (!is_int_like(v))
        jfail(c, JE_TYPE, "slice indices must be integers or None or have an __index__ method");
    return v.u.i;
}

/* PySlice_AdjustIndices: the start, stop and step for a sequence of n. */
static int64_t adjust(jctx *c, int64_t n, jv vstart, jv vstop, jv vstep, int64_t *start, int64_t *step)
{
    int64_t st = slice_arg(c, vstep, 1);
    if (st == 0)
        jfail(c, JE_VALUE, "slice step cannot be zero");
    if (st == INT64_MIN)
        st = -INT64_MAX;
    /* the defaults of PySlice_Unpack, then PySlice_AdjustIndices */
    int64_t lo = slice_arg(c, vstart, st > 0 ? 0 : INT64_MAX);
    int64_t hi = slice_arg(c, vstop, st > 0 ? INT64_MAX : INT64_MIN);
    if (lo < 0) {
        lo += n;
        if (lo < 0)
            lo = st < 0 ? -1 : 0;
    } else if (lo >= n) {
        lo = st < 0 ? n - 1 : n;
    }
    if (hi < 0) {
        hi += n;
        if (hi < 0)
            hi = st < 0 ? -1 : 0;
    } else if (hi >= n) {
        hi = st < 0 ? n - 1 : n;
    }
    *start = lo;
    *step = st;
    if (st < 0)
        return hi < lo ? (lo - hi - 1) / (-st) + 1 : 0;
    return lo < hi ? (hi - lo - 1) / st + 1 : 0;
}

jv jop_slice(jctx *c, jv obj, jv vstart, jv vstop, jv vstep)
{
    jv_check_defined(c, obj);
    int64_t start, step, count;
    if (obj.k == JK_LIST || obj.k == JK_TUPLE) {
        count = adjust(c, (int64_t)obj.u.l->n, vstart, vstop, vstep, &start, &step);
        jv r = obj.k == JK_LIST ? jv_list(c, (size_t)count) : jv_tuple(c, (size_t)count);
        for (int64_t k = 0; k < count; k++)
            r.u.l->v[k] = obj.u.l->v[start + k * step];
        r.u.l->n = (size_t)count;
        return r;
    }
    if (obj.k == JK_STR) {
        jstr *s = obj.u.s;
        int64_t n = jstr_ncp(s);
        count = adjust(c, n, vstart, vstop, vstep, &start, &step);
        if (step == 1) {
            size_t a = cp_offset(s, start), b = a;
            for (int64_t k = 0; k < count; k++)
                ju8_next(s->s, s->len, &b);
            jv r = jv_str(c, s->s + a, b - a);
            r.u.s->ncp = count;
            return r;
        }
        /* byte offsets of every code point, then pick */
        size_t *offs = jalloc(c, (size_t)(n + 1) * sizeof(size_t));
        size_t i = 0;
        for (int64_t k = 0; k < n; k++) {
            offs[k] = i;
            ju8_next(s->s, s->len, &i);
        }
        offs[n] = s->len;
        jbuf b = {0};
        for (int64_t k = 0; k < count; k++) {
            int64_t j = start + k * step;
            jbuf_put(c, &b, s->s + offs[j], offs[j + 1] - offs[j]);
        }
        return jv_strv(jbuf_str(c, &b));
    }
    /* jinja2 compiles a slice to a plain Python subscription: no undefined here */
    if (obj.k == JK_DICT)
        jfail(c, JE_TYPE, "unhashable type: 'slice'");
    jfail(c, JE_TYPE, "'%s' object is not subscriptable", jv_type_name(obj));
}

/* ------------------------------------------------------------------ operators */

static int is_num(jv v)
{
    return v.k == JK_BOOL || v.k == JK_INT || v.k == JK_FLOAT;
}

static double as_f(jv v)
{
    return v.k == JK_FLOAT ? v.u.f : (double)v.u.i;
}

static const char *op_name(int op)
{
    switch (op) {
    case OP_ADD:
        return "+";
    case OP_SUB:
        return "-";
    case OP_MUL:
        return "*";
    case OP_DIV:
        return "/";
    case OP_FLOORDIV:
        return "//";
    case OP_MOD:
        return "%";
    case OP_POW:
        return "** or pow()";
    default:
        return "?";
    }
}

static void unsupported(jctx *c, int op, jv a, jv b)
{
    jfail(c, JE_TYPE, "unsupported operand type(s) for %s: '%s' and '%s'", op_name(op), jv_type_name(a),
          jv_type_name(b));
}

static void overflow(jctx *c)
{
    jfail(c, JE_OVERFLOW, "integer result does not fit in 64 bits");
}

static jv repeat(jctx *c, jv seq, int64_t times)
{
    if (times < 0)
        times = 0;
    if (seq.k == JK_STR && (seq.u.s->len == 0 || times == 0))
        return jv_str(c, "", 0);
    if (seq.k != JK_STR && (seq.u.l->n == 0 || times == 0))
        return seq.k == JK_LIST ? jv_list(c, 0) : jv_tuple(c, 0);
    if (seq.k == JK_STR) {
        jstr *s = seq.u.s;
        if (s->len && (uint64_t)times > c->lim.max_memory / s->len)
            jfail(c, JE_LIMIT, "the template used more than %zu bytes of memory", c->lim.max_memory);
        jstr *r = jstr_new(c, NULL, s->len * (size_t)times);
        for (int64_t k = 0; k < times; k++)
            memcpy(r->s + (size_t)k * s->len, s->s, s->len);
        return jv_strv(r);
    }
    size_t n = seq.u.l->n;
    if (n && (uint64_t)times > c->lim.max_memory / (n * sizeof(jv)))
        jfail(c, JE_LIMIT, "the template used more than %zu bytes of memory", c->lim.max_memory);
    jv r = seq.k == JK_LIST ? jv_list(c, n * (size_t)times) : jv_tuple(c, n * (size_t)times);
    for (int64_t k = 0; k < times; k++)
        memcpy(r.u.l->v + (size_t)k * n, seq.u.l->v, n * sizeof(jv));
    r.u.l->n = n * (size_t)times;
    return r;
}

/* CPython's float floor division and modulo */
static double jpy_fmod(double a, double b)
{
    double m = fmod(a, b);
    if (m != 0.0) {
        if ((b < 0) != (m < 0))
            m += b;
    } else {
        m = copysign(0.0, b);
    }
    return m;
}

static double jpy_floordiv(double a, double b)
{
    double m = fmod(a, b);
    double div = (a - m) / b;
    if (m != 0.0 && ((b < 0) != (m < 0)))
        div -= 1.0;
    if (div != 0.0) {
        double fl = floor(div);
        if (div - fl > 0.5)
            fl += 1.0;
        return fl;
    }
    return copysign(0.0, a / b);
}

static jv int_pow(jctx *c, int64_t base, int64_t e)
{
    if (e < 0)
        return jv_float(pow((double)base, (double)e));
    int64_t r = 1, b = base;
    while (e > 0) {
        if (e & 1) {
            if (__builtin_mul_overflow(r, b, &r))
                overflow(c);
        }
        e >>= 1;
        if (e > 0 && __builtin_mul_overflow(b, b, &b))
            overflow(c);
    }
    return jv_int(r);
}

static jv arith(jctx *c, int op, jv a, jv b)
{
    int ints = a.k != JK_FLOAT && b.k != JK_FLOAT;
    int64_t x = a.u.i, y = b.u.i, r;
    switch (op) {
    case OP_ADD:
        if (!ints)
            return jv_float(as_f(a) + as_f(b));
        if (__builtin_add_overflow(x, y, &r))
            overflow(c);
        return jv_int(r);
    case OP_SUB:
        if (!ints)
            return jv_float(as_f(a) - as_f(b));
        if (__builtin_sub_overflow(x, y, &r))
            overflow(c);
        return jv_int(r);
    case OP_MUL:
        if (!ints)
            return jv_float(as_f(a) * as_f(b));
        if (__builtin_mul_overflow(x, y, &r))
            overflow(c);
        return jv_int(r);
    case OP_DIV:
        if (as_f(b) == 0.0)
            jfail(c, JE_ZERODIV, ints ? "division by zero" : "float division by zero");
        return jv_float(as_f(a) / as_f(b));
    case OP_FLOORDIV:
        if (!ints) {
            if (as_f(b) == 0.0)
                jfail(c, JE_ZERODIV, "float floor division by zero");
            return jv_float(jpy_floordiv(as_f(a), as_f(b)));
        }
        if (y == 0)
            jfail(c, JE_ZERODIV, "integer division or modulo by zero");
        if (x == INT64_MIN && y == -1)
            overflow(c);
        r = x / y;
        if ((x % y != 0) && ((x < 0) != (y < 0)))
            r--;
        return jv_int(r);
    case OP_MOD:
        if (!ints) {
            if (as_f(b) == 0.0)
                jfail(c, JE_ZERODIV, "float modulo");
            return jv_float(jpy_fmod(as_f(a), as_f(b)));
        }
        if (y == 0)
            jfail(c, JE_ZERODIV, "integer modulo by zero");
        if (y == -1)
            return jv_int(0);
        r = x % y;
        if (r != 0 && ((r < 0) != (y < 0)))
            r += y;
        return jv_int(r);
    case OP_POW:
        if (ints)
            return int_pow(c, x, y);
        if (as_f(a) == 0.0 && as_f(b) < 0)
            jfail(c, JE_ZERODIV, "0.0 cannot be raised to a negative power");
        {
            double p = pow(as_f(a), as_f(b));
            if (isinf(p) && isfinite(as_f(a)) && isfinite(as_f(b)))
                jfail(c, JE_OVERFLOW, "(34, 'Numerical result out of range')");
            if (isnan(p) && !isnan(as_f(a)) && !isnan(as_f(b)))
                jfail(c, JE_VALUE, "complex results are not supported by anvil");
            return jv_float(p);
        }
    }
    unsupported(c, op, a, b);
    return jv_none();
}

jv jop_binary(jctx *c, int op, jv a, jv b)
{
    jv_check_defined(c, a);
    jv_check_defined(c, b);
    if (is_num(a) && is_num(b))
        return arith(c, op, a, b);
    switch (op) {
    case OP_ADD:
        if (a.k == JK_STR && b.k == JK_STR)
            return jv_strv(jstr_cat(c, a.u.s, b.u.s));
        if ((a.k == JK_LIST && b.k == JK_LIST) || (a.k == JK_TUPLE && b.k == JK_TUPLE)) {
            size_t n = a.u.l->n + b.u.l->n;
            jv r = a.k == JK_LIST ? jv_list(c, n) : jv_tuple(c, n);
            if (a.u.l->n)
                memcpy(r.u.l->v, a.u.l->v, a.u.l->n * sizeof(jv));
            if (b.u.l->n)
                memcpy(r.u.l->v + a.u.l->n, b.u.l->v, b.u.l->n * sizeof(jv));
            r.u.l->n = n;
            return r;
        }
        if (a.k == JK_STR || a.k == JK_LIST || a.k == JK_TUPLE)
            jfail(c, JE_TYPE, "can only concatenate %s (not \"%s\") to %s", jv_type_name(a), jv_type_name(b),
                  jv_type_name(a));
        break;
    case OP_MUL: {
        int a_seq = a.k == JK_STR || a.k == JK_LIST || a.k == JK_TUPLE;
        int b_seq = b.k == JK_STR || b.k == JK_LIST || b.k == JK_TUPLE;
        if (a_seq && is_int_like(b))
            return repeat(c, a, b.u.i);
        if (b_seq && is_int_like(a))
            return repeat(c, b, a.u.i);
        if (a_seq || b_seq)
            jfail(c, JE_TYPE, "can't multiply sequence by non-int of type '%s'", jv_type_name(a_seq ? b : a));
        break;
    }
    case OP_MOD:
        if (a.k == JK_STR)
            return jop_percent_format(c, a.u.s, b);
        break;
    default:
        break;
    }
    unsupported(c, op, a, b);
    return jv_none();
}

jv jop_neg(jctx *c, jv a)
{
    jv_check_defined(c, a);
    if (a.k == JK_FLOAT)
        return jv_float(-a.u.f);
    if (is_int_like(a)) {
        if (a.u.i == INT64_MIN)
            overflow(c);
        return jv_int(-a.u.i);
    }
    jfail(c, JE_TYPE, "bad operand type for unary -: '%s'", jv_type_name(a));
}

jv jop_pos(jctx *c, jv a)
{
    jv_check_defined(c, a);
    if (a.k == JK_FLOAT || a.k == JK_INT)
        return a;
    if (a.k == JK_BOOL)
        return jv_int(a.u.i);
    jfail(c, JE_TYPE, "bad operand type for unary +: '%s'", jv_type_name(a));
}

int jop_contains(jctx *c, jv container, jv item)
{
    switch ((jkind)container.k) {
    case JK_STR:
        if (item.k != JK_STR)
            jfail(c, JE_TYPE, "'in <string>' requires string as left operand, not %s", jv_type_name(item));
        if (item.u.s->len == 0)
            return 1;
        return memmem(container.u.s->s, container.u.s->len, item.u.s->s, item.u.s->len) != NULL;
    case JK_LIST:
    case JK_TUPLE:
        for (size_t i = 0; i < container.u.l->n; i++)
            if (jv_eq(c, container.u.l->v[i], item))
                return 1;
        return 0;
    case JK_DICT:
        if (item.k == JK_LIST || item.k == JK_DICT)
            jfail(c, JE_TYPE, "unhashable type: '%s'", jv_type_name(item));
        return jdict_get(c, container.u.d, item, NULL);
    case JK_GEN: {
        /* `in` consumes an iterator up to the match */
        jv_gen_check(c, container);
        jlist *l = container.u.l;
        while (l->pos < l->n)
            if (jv_eq(c, l->v[l->pos++], item))
                return 1;
        return 0;
    }
    case JK_UNDEF:
        return 0;
    default:
        jfail(c, JE_TYPE, "argument of type '%s' is not iterable", jv_type_name(container));
    }
}
