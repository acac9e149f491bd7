/*
 * jinja2's filters, each with jinja2's signature (positional or keyword
 * arguments) and Python semantics: the ones on strings and numbers, tojson,
 * and the table of all of them (those over sequences are in
 * jinja_filters_seq.c).
 *
 * The filters that jinja2 has and anvil does not implement are still known
 * (so that a template using them parses as in jinja2) and fail when run.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jinja/jinja_internal.h"

typedef jv (*filter_fn)(jctx *c, jv v, jargs *a, const char *name);

static int arg(jctx *c, jargs *a, int idx, const char *name, jv *out)
{
    return jargs_take(c, a, idx, name, out);
}

static jstr *soft_str(jctx *c, jv v)
{
    return jv_to_jstr(c, v);
}

static int64_t int_arg(jctx *c, jv v, const char *what)
{
    if (v.k == JK_INT || v.k == JK_BOOL)
        return v.u.i;
    jv_check_defined(c, v);
    jfail(c, JE_TYPE, "%s must be an integer, not %s", what, jv_type_name(v));
}

/* ------------------------------------------------------------------ filters */

static jv f_abs(jctx *c, jv v, jargs *a, const char *name)
{
    jargs_done(c, a, name, 0);
    if (v.k == JK_FLOAT)
        return jv_float(fabs(v.u.f));
    if (v.k == JK_INT || v.k == JK_BOOL) {
        if (v.u.i == INT64_MIN)
            jfail(c, JE_OVERFLOW, "integer result does not fit in 64 bits");
        return jv_int(v.u.i < 0 ? -v.u.i : v.u.i);
    }
    jfail(c, JE_TYPE, "bad operand type for abs(): '%s'", jv_type_name(v));
}

static jv f_attr(jctx *c, jv v, jargs *a, const char *name)
{
    jv n;
    if (!arg(c, a, 0, "name", &n))
        jfail(c, JE_TYPE, "attr() missing required argument 'name'");
    jargs_done(c, a, name, 1);
    if (n.k != JK_STR)
        jfail(c, JE_TYPE, "attribute name must be a string");
    if (v.k == JK_DICT) {
        /* attributes of a dict are its methods only, never its items */
        jv m;
        if (jmethod_lookup(c, v, n.u.s, &m))
            return m;
        return jv_undef_attr(c, v, n.u.s);
    }
    return jop_getattr(c, v, n.u.s);
}

static jv f_case(jctx *c, jv v, jargs *a, const char *name)
{
    jargs_done(c, a, name, 0);
    jstr *s = soft_str(c, v);
    if (!strcmp(name, "lower"))
        return jv_strv(jpy_case(c, s, 0));
    if (!strcmp(name, "upper"))
        return jv_strv(jpy_case(c, s, 1));
    if (!strcmp(name, "capitalize"))
        return jv_strv(jpy_case(c, s, 3));
    /* title: jinja2 splits at [-\s({\[<]+ and makes each piece
     * piece[0].upper() + piece[1:].lower() */
    jbuf b = {0};
    size_t i = 0;
    while (i < s->len) {
        size_t start = i, k = i;
        uint32_t cp = ju8_next(s->s, s->len, &k);
        int delim = jpy_isspace(cp) || cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<';
        if (delim) {
            jbuf_put(c, &b, s->s + start, k - start);
            i = k;
            continue;
        }
        size_t end = k;
        while (end < s->len) {
            size_t e2 = end;
            uint32_t c2 = ju8_next(s->s, s->len, &e2);
            if (jpy_isspace(c2) || c2 == '-' || c2 == '(' || c2 == '{' || c2 == '[' || c2 == '<')
                break;
            end = e2;
        }
        jstr *head = jpy_case(c, jstr_new(c, s->s + start, k - start), 1);
        jstr *rest = jpy_case(c, jstr_new(c, s->s + k, end - k), 0);
        jbuf_put(c, &b, head->s, head->len);
        jbuf_put(c, &b, rest->s, rest->len);
        i = end;
    }
    return b.p ? jv_strv(jbuf_str(c, &b)) : jv_str(c, "", 0);
}

static jv f_center(jctx *c, jv v, jargs *a, const char *name)
{
    jv w = jv_int(80), m;
    arg(c, a, 0, "width", &w);
    jargs_done(c, a, name, 1);
    jv s = jv_strv(soft_str(c, v));
    jmethod_lookup(c, s, jstr_new(c, "center", 6), &m);
    jargs ca = {0};
    ca.pos = &w;
    ca.npos = 1;
    return jmethod_call(c, m.u.mt, &ca);
}

static jv f_length(jctx *c, jv v, jargs *a, const char *name)
{
    jargs_done(c, a, name, 0);
    return jv_int(jv_len(c, v));
}

static jv f_default(jctx *c, jv v, jargs *a, const char *name)
{
    jv dflt = jv_str(c, "", 0), boolean = jv_bool(0);
    arg(c, a, 0, "default_value", &dflt);
    arg(c, a, 1, "boolean", &boolean);
    jargs_done(c, a, name, 2);
    if (v.k == JK_UNDEF || (jv_truthy(boolean) && !jv_truthy(v)))
        return dflt;
    return v;
}

static jv f_escape(jctx *c, jv v, jargs *a, const char *name)
{
    jargs_done(c, a, name, 0);
    jstr *s = soft_str(c, v);
    jbuf b = {0};
    for (size_t i = 0; i < s->len; i++) {
        switch (s->s[i]) {
        case '&':
            jbuf_puts(c, &b, "&amp;");
            break;
        case '<':
            jbuf_puts(c, &b, "&lt;");
            break;
        case '>':
            jbuf_puts(c, &b, "&gt;");
            break;
        case '"':
            jbuf_puts(c, &b, "&#34;");
            break;
        case '\'':
            jbuf_puts(c, &b, "&#39;");
            break;
        default:
            jbuf_putc(c, &b, s->s[i]);
            break;
        }
    }
    return b.p ? jv_strv(jbuf_str(c, &b)) : jv_str(c, "", 0);
}

/* Python's float(str): optional whitespace, sign, digits with single _,
 * inf / nan; 0 when it does not parse. */
static int parse_py_float(const jstr *s, double *out)
{
    jstr *t = NULL;
    (void)t;
    size_t a = 0, b = s->len;
    while (a < b && jpy_isspace((unsigned char)s->s[a]))
        a++;
    while (b > a && jpy_isspace((unsigned char)s->s[b - 1]))
        b--;
    if (a == b || b - a > 400)
        return 0;
    char buf[420];
    size_t n = 0;
    for (size_t i = a; i < b; i++) {
        char ch = s->s[i];
        if (ch == '_') {
            if (i == a || i + 1 == b || !(s->s[i - 1] >= '0' && s->s[i - 1] <= '9') ||
                !(s->s[i + 1] >= '0' && s->s[i + 1] <= '9'))
                return 0;
            continue;
        }
        if (!((ch >= '0' && ch <= '9') || ch == '.' || ch == 'e' || ch == 'E' || ch == '+' || ch == '-' ||
              (ch | 0x20) == 'i' || (ch | 0x20) == 'n' || (ch | 0x20) == 'f' || (ch | 0x20) == 't' ||
              (ch | 0x20) == 'y' || (ch | 0x20) == 'a'))
            return 0;
        buf[n++] = ch;
    }
    buf[n] = '\0';
    /* strtod accepts hex and "infinity"/"nan(...)" forms; Python accepts inf, infinity, nan */
    const char *p = buf + ((buf[0] == '+' || buf[0] == '-') ? 1 : 0);
    if (strchr(p, 'x') || strchr(p, 'X') || strchr(p, '('))
        return 0;
    char *end;
    double f = strtod(buf, &end);
    if (*end != '\0' || end == buf)
        return 0;
    *out = f;
    return 1;
}

static jv f_float(jctx *c, jv v, jargs *a, const char *name)
{
    jv dflt = jv_float(0.0);
    arg(c, a, 0, "default", &dflt);
    jargs_done(c, a, name, 1);
    double f;
    jv_check_defined(c, v); /* float(Undefined) raises */
    if (v.k == JK_FLOAT)
        return v;
    if (v.k == JK_INT || v.k == JK_BOOL)
        return jv_float((double)v.u.i);
    if (v.k == JK_STR && parse_py_float(v.u.s, &f))
        return jv_float(f);
    return dflt;
}

static jv f_int(jctx *c, jv v, jargs *a, const char *name)
{
    jv dflt = jv_int(0), base = jv_int(10);
    arg(c, a, 0, "default", &dflt);
    arg(c, a, 1, "base", &base);
    jargs_done(c, a, name, 2);
    jv_check_defined(c, v); /* int(Undefined) raises */
    if (v.k == JK_INT)
        return v;
    if (v.k == JK_BOOL)
        return jv_int(v.u.i);
    if (v.k == JK_FLOAT) {
        if (!isfinite(v.u.f) || fabs(v.u.f) >= 9.2e18)
            return dflt;
        return jv_int((int64_t)v.u.f);
    }
    if (v.k == JK_STR) {
        int64_t b = int_arg(c, base, "base");
        /* int(s, base): whitespace, sign, optional 0x/0o/0b prefix for base 0 or the matching base, _
         * separators */
        const jstr *s = v.u.s;
        size_t i = 0, e = s->len;
        while (i < e && jpy_isspace((unsigned char)s->s[i]))
            i++;
        while (e > i && jpy_isspace((unsigned char)s->s[e - 1]))
            e--;
        int neg = 0;
        if (i < e && (s->s[i] == '+' || s->s[i] == '-'))
            neg = s->s[i++] == '-';
        if (e - i >= 2 && s->s[i] == '0') {
            char p = (char)(s->s[i + 1] | 0x20);
            int pb = p == 'x' ? 16 : p == 'o' ? 8 : p == 'b' ? 2 : 0;
            if (pb && (b == pb || b == 0)) {
                b = pb;
                i += 2;
                if (i < e && s->s[i] == '_')
                    i++;
            }
        }
        if (b == 0)
            b = 10;
        int ok = i < e && b >= 2 && b <= 36;
        uint64_t acc = 0;
        for (size_t k = i; ok && k < e; k++) {
            char ch = s->s[k];
            if (ch == '_' && k > i && k + 1 < e && s->s[k - 1] != '_')
                continue;
            int d = ch >= '0' && ch <= '9'                     ? ch - '0'
                    : (ch | 0x20) >= 'a' && (ch | 0x20) <= 'z' ? (ch | 0x20) - 'a' + 10
                                                               : 99;
            if (d >= b || acc > (uint64_t)INT64_MAX / (uint64_t)b) {
                ok = 0;
                break;
            }
            acc = acc * (uint64_t)b + (uint64_t)d;
            if (acc > (uint64_t)INT64_MAX)
                ok = 0;
        }
        if (ok)
            return jv_int(neg ? -(int64_t)acc : (int64_t)acc);
        double f;
        if (parse_py_float(s, &f) && isfinite(f) && fabs(f) < 9.2e18)
            return jv_int((int64_t)f);
    }
    return dflt;
}

static jv f_format(jctx *c, jv v, jargs *a, const char *name)
{
    (void)name;
    if (a->npos && a->nkw)
        jfail(c, JE_FILTER_ARG, "can't handle positional and keyword arguments at the same time");
    jv args;
    if (a->nkw) {
        args = jv_dict(c);
        for (int i = 0; i < a->nkw; i++)
            jdict_set(c, args.u.d, jv_strv(a->kwn[i]), a->kwv[i]);
    } else {
        args = jv_tuple(c, (size_t)a->npos);
        for (int i = 0; i < a->npos; i++)
            args.u.l->v[i] = a->pos[i];
        args.u.l->n = (size_t)a->npos;
    }
    return jop_percent_format(c, soft_str(c, v), args);
}

static jv f_indent(jctx *c, jv v, jargs *a, const char *name)
{
    jv width = jv_int(4), first = jv_bool(0), blank = jv_bool(0);
    arg(c, a, 0, "width", &width);
    arg(c, a, 1, "first", &first);
    arg(c, a, 2, "blank", &blank);
    jargs_done(c, a, name, 3);
    jstr *ind;
    if (width.k == JK_STR) {
        ind = width.u.s;
    } else {
        int64_t w = int_arg(c, width, "width");
        if (w < 0)
            w = 0;
        if (w > 4096)
            jfail(c, JE_LIMIT, "indent wider than 4096");
        ind = jstr_new(c, NULL, (size_t)w);
        memset(ind->s, ' ', (size_t)w);
    }
    /* jinja2 appends "\n" to the value itself: only strings work */
    if (v.k != JK_STR) {
        jv_check_defined(c, v);
        jfail(c, JE_TYPE, "unsupported operand type(s) for +=: '%s' and 'str'", jv_type_name(v));
    }
    jstr *s = jstr_cat(c, v.u.s, jstr_new(c, "\n", 1));
    jlist *lines = jpy_splitlines(c, s, 0).u.l;
    jbuf b = {0};
    if (jv_truthy(first))
        jbuf_put(c, &b, ind->s, ind->len);
    for (size_t i = 0; i < lines->n; i++) {
        const jstr *line = lines->v[i].u.s;
        if (i > 0) {
            jbuf_putc(c, &b, '\n');
            if (jv_truthy(blank) || line->len)
                jbuf_put(c, &b, ind->s, ind->len);
        }
        jbuf_put(c, &b, line->s, line->len);
    }
    return b.p ? jv_strv(jbuf_str(c, &b)) : jv_str(c, "", 0);
}

static jv f_replace(jctx *c, jv v, jargs *a, const char *name)
{
    jv old, new_, count = jv_none();
    if (!arg(c, a, 0, "old", &old) || !arg(c, a, 1, "new", &new_))
        jfail(c, JE_TYPE, "replace() missing required arguments 'old' and 'new'");
    arg(c, a, 2, "count", &count);
    jargs_done(c, a, name, 3);
    int64_t n = count.k == JK_NONE ? -1 : int_arg(c, count, "count");
    return jv_strv(jpy_replace(c, soft_str(c, v), soft_str(c, old), soft_str(c, new_), n));
}

static jv f_round(jctx *c, jv v, jargs *a, const char *name)
{
    jv prec = jv_int(0), method = jv_none();
    arg(c, a, 0, "precision", &prec);
    arg(c, a, 1, "method", &method);
    jargs_done(c, a, name, 2);
    int64_t p = int_arg(c, prec, "precision");
    const char *m = method.k == JK_STR ? method.u.s->s : "common";
    if (strcmp(m, "common") && strcmp(m, "ceil") && strcmp(m, "floor"))
        jfail(c, JE_FILTER_ARG, "method must be common, ceil or floor");
    if (v.k != JK_FLOAT && v.k != JK_INT && v.k != JK_BOOL)
        jfail(c, JE_TYPE, "type %s doesn't define __round__ method", jv_type_name(v));
    if (p < -308 || p > 308)
        jfail(c, JE_UNSUPPORTED, "round() precision out of range");
    if (!strcmp(m, "common")) {
        if (v.k != JK_FLOAT)
            return p >= 0 ? jv_int(v.u.i) : jv_float(round((double)v.u.i));
        if (!isfinite(v.u.f) || p < 0)
            return jv_float(p < 0 ? round(v.u.f / pow(10.0, (double)-p)) * pow(10.0, (double)-p) : v.u.f);
        /* Python rounds the exact binary value half to even: printf does the same */
        char buf[400];
        snprintf(buf, sizeof buf, "%.*f", (int)p, v.u.f);
        return jv_float(strtod(buf, NULL));
    }
    double x = v.k == JK_FLOAT ? v.u.f : (double)v.u.i, scale = pow(10.0, (double)p);
    double r = !strcmp(m, "ceil") ? ceil(x * scale) : floor(x * scale);
    return jv_float(r / scale);
}

static jv f_string(jctx *c, jv v, jargs *a, const char *name)
{
    jargs_done(c, a, name, 0);
    return jv_strv(soft_str(c, v));
}

static jv f_trim(jctx *c, jv v, jargs *a, const char *name)
{
    jv chars = jv_none();
    arg(c, a, 0, "chars", &chars);
    jargs_done(c, a, name, 1);
    if (chars.k != JK_NONE && chars.k != JK_STR)
        jfail(c, JE_TYPE, "strip arg must be None or str");
    return jv_strv(jpy_strip(c, soft_str(c, v), chars.k == JK_STR ? chars.u.s : NULL, 1, 1));
}

static jv f_truncate(jctx *c, jv v, jargs *a, const char *name)
{
    jv length = jv_int(255), killwords = jv_bool(0), end = jv_none(), leeway = jv_int(5);
    arg(c, a, 0, "length", &length);
    arg(c, a, 1, "killwords", &killwords);
    arg(c, a, 2, "end", &end);
    arg(c, a, 3, "leeway", &leeway);
    jargs_done(c, a, name, 4);
    jstr *e = end.k == JK_NONE ? jstr_new(c, "...", 3) : soft_str(c, end);
    int64_t len = int_arg(c, length, "length"), lw = leeway.k == JK_NONE ? 5 : int_arg(c, leeway, "leeway");
    if (len < jstr_ncp(e))
        jfail(c, JE_RUNTIME, "expected length >= %lld, got %lld", (long long)jstr_ncp(e), (long long)len);
    if (lw < 0)
        jfail(c, JE_RUNTIME, "expected leeway >= 0, got %lld", (long long)lw);
    jstr *s = soft_str(c, v);
    if (jstr_ncp(s) <= len + lw)
        return jv_strv(s);
    jv head = jop_slice(c, jv_strv(s), jv_none(), jv_int(len - jstr_ncp(e)), jv_none());
    if (!jv_truthy(killwords))
        head = jpy_split(c, head.u.s, jstr_new(c, " ", 1), 1, 1).u.l->v[0];
    return jv_strv(jstr_cat(c, head.u.s, e));
}

static jv f_wordcount(jctx *c, jv v, jargs *a, const char *name)
{
    jargs_done(c, a, name, 0);
    jstr *s = soft_str(c, v);
    /* \w+ runs: letters, digits, underscore */
    jv m;
    int64_t n = 0, in_word = 0;
    size_t i = 0;
    (void)m;
    while (i < s->len) {
        size_t st = i;
        uint32_t cp = ju8_next(s->s, s->len, &i);
        jstr *ch = jstr_new(c, s->s + st, i - st);
        jv chv = jv_strv(ch), meth;
        int word = cp == '_';
        if (!word && jmethod_lookup(c, chv, jstr_new(c, "isalnum", 7), &meth)) {
            jargs none = {0};
            word = jv_truthy(jmethod_call(c, meth.u.mt, &none));
        }
        if (word && !in_word)
            n++;
        in_word = word;
    }
    return jv_int(n);
}

static jv f_tojson(jctx *c, jv v, jargs *a, const char *name)
{
    jv ensure_ascii = jv_bool(0), indent = jv_none(), seps = jv_none(), sort_keys = jv_bool(0);
    arg(c, a, 0, "ensure_ascii", &ensure_ascii);
    arg(c, a, 1, "indent", &indent);
    arg(c, a, 2, "separators", &seps);
    arg(c, a, 3, "sort_keys", &sort_keys);
    jargs_done(c, a, name, 4);
    jjson_opts o = {0};
    o.ensure_ascii = jv_truthy(ensure_ascii);
    o.sort_keys = jv_truthy(sort_keys);
    if (indent.k == JK_STR) {
        o.indent = indent.u.s->s;
        o.indent_len = indent.u.s->len;
    } else if (indent.k == JK_INT || indent.k == JK_BOOL) {
        int64_t w = indent.u.i < 0 ? 0 : indent.u.i;
        if (w > 4096)
            jfail(c, JE_LIMIT, "tojson indent wider than 4096");
        char *sp = jalloc(c, (size_t)w + 1);
        memset(sp, ' ', (size_t)w);
        o.indent = sp;
        o.indent_len = (size_t)w;
    } else if (indent.k != JK_NONE) {
        jfail(c, JE_TYPE, "can't multiply sequence by non-int of type '%s'", jv_type_name(indent));
    }
    o.item_sep = o.indent ? "," : ", ";
    o.key_sep = ": ";
    if (seps.k != JK_NONE) {
        jlist *l = jv_iter_list(c, seps);
        if (l->n != 2 || l->v[0].k != JK_STR || l->v[1].k != JK_STR)
            jfail(c, JE_VALUE, "separators must be a pair of strings");
        o.item_sep = l->v[0].u.s->s;
        o.key_sep = l->v[1].u.s->s;
    }
    jbuf b = {0};
    jjson_dump(c, &b, v, &o);
    return jv_strv(jbuf_str(c, &b));
}

static jv f_safe(jctx *c, jv v, jargs *a, const char *name)
{
    jargs_done(c, a, name, 0);
    return jv_strv(soft_str(c, v));
}

/* ------------------------------------------------------------------ table */

static const struct {
    const char *name;
    filter_fn fn; /* NULL: a jinja2 filter anvil does not implement */
} filters[] = {
    {"abs", f_abs},
    {"attr", f_attr},
    {"batch", jf_batch},
    {"capitalize", f_case},
    {"center", f_center},
    {"count", f_length},
    {"d", f_default},
    {"default", f_default},
    {"dictsort", jf_dictsort},
    {"e", f_escape},
    {"escape", f_escape},
    {"filesizeformat", NULL},
    {"first", jf_first_last},
    {"float", f_float},
    {"forceescape", f_escape},
    {"format", f_format},
    {"groupby", jf_groupby},
    {"indent", f_indent},
    {"int", f_int},
    {"items", jf_items},
    {"join", jf_join},
    {"last", jf_first_last},
    {"length", f_length},
    {"list", jf_list},
    {"lower", f_case},
    {"map", jf_map},
    {"max", jf_minmax},
    {"min", jf_minmax},
    {"pprint", NULL}, /* pformat sorts and wraps: not implemented */
    {"random", NULL},
    {"reject", jf_select},
    {"rejectattr", jf_select},
    {"replace", f_replace},
    {"reverse", jf_reverse},
    {"round", f_round},
    {"safe", f_safe},
    {"select", jf_select},
    {"selectattr", jf_select},
    {"slice", NULL},
    {"sort", jf_sort},
    {"string", f_string},
    {"striptags", NULL},
    {"sum", jf_sum},
    {"title", f_case},
    {"tojson", f_tojson},
    {"trim", f_trim},
    {"truncate", f_truncate},
    {"unique", jf_unique},
    {"upper", f_case},
    {"urlencode", NULL},
    {"urlize", NULL},
    {"wordcount", f_wordcount},
    {"wordwrap", NULL},
    {"xmlattr", NULL},
};

int jfilter_find(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof filters / sizeof filters[0]; i++)
        if (strlen(filters[i].name) == len && memcmp(filters[i].name, name, len) == 0)
            return (int)i;
    return -1;
}

jv jfilter_apply(jctx *c, int fid, jv v, jargs *a)
{
    if (filters[fid].fn == NULL)
        jfail(c, JE_UNSUPPORTED, "the '%s' filter is not supported by anvil", filters[fid].name);
    return filters[fid].fn(c, v, a, filters[fid].name);
}
